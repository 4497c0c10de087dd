use std::net::SocketAddr;

use super::*;
use crate::export::span::build_span;
use crate::record::CorrelatedSession;
use crate::testing::{OtlpReceiver, SessionBuilder};

fn config(endpoint: String) -> ExportConfig {
    ExportConfig {
        endpoint,
        batch_size: 3,
        batch_timeout: Duration::from_millis(100),
        queue_capacity: 64,
        request_timeout: Duration::from_secs(2),
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        retry_max_elapsed: Duration::from_millis(300),
        shutdown_timeout: Duration::from_secs(5),
        sampler: Sampler::default(),
    }
}

fn start(cfg: &ExportConfig) -> anyhow::Result<(OtlpExporter, Arc<Metrics>)> {
    let metrics = Arc::new(Metrics::new());
    let exporter = OtlpExporter::start(
        cfg,
        span::resource("test-service", None),
        Arc::clone(&metrics),
    )?;
    Ok((exporter, metrics))
}

fn spans(n: usize) -> Vec<Span> {
    (0..n)
        .map(|i| {
            build_span(&CorrelatedSession::new(SessionBuilder::new(&format!("s{i}")).build()).0)
        })
        .collect()
}

/// A loopback address nothing listens on (bound, then released).
async fn dead_addr() -> anyhow::Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?)
}

async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn batches_by_size_and_by_timeout() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let (exporter, metrics) = start(&config(receiver.endpoint()))?;
    let handle = exporter.handle();
    for s in spans(7) {
        assert!(handle.enqueue(s), "queue of 64 must take 7 spans");
    }
    let got = receiver.wait_for_spans(7, Duration::from_secs(5)).await;
    assert_eq!(
        got.len(),
        7,
        "all spans must arrive without a flush (timeout batching)"
    );
    assert_eq!(
        receiver.requests(),
        3,
        "7 spans in batches of 3 make 3 requests"
    );
    let rs = receiver.resource_spans();
    assert_eq!(rs[0].scope_spans[0].spans.len(), 3, "a full batch first");
    assert_eq!(rs[0].scope_spans[0].schema_url, SCHEMA_URL);
    wait_until("exported counter", Duration::from_secs(1), || {
        metrics.exported_count() == 7
    })
    .await;
    exporter.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn shutdown_delivers_everything_queued() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let mut cfg = config(receiver.endpoint());
    cfg.batch_size = 16;
    cfg.batch_timeout = Duration::from_secs(3600); // nothing leaves on its own
    let (exporter, metrics) = start(&cfg)?;
    let handle = exporter.handle();
    for s in spans(50) {
        handle.enqueue(s);
    }
    // Full batches of 16 may leave early; the rest only on shutdown.
    exporter.shutdown().await?;
    assert_eq!(
        receiver.spans().len(),
        50,
        "shutdown must flush every queued span"
    );
    assert_eq!(metrics.exported_count(), 50);
    assert!(
        !handle.enqueue(spans(1).remove(0)),
        "after shutdown nothing is queued"
    );
    assert_eq!(
        metrics.dropped_count(DropReason::Shutdown),
        1,
        "late span counted as dropped"
    );
    Ok(())
}

/// An exchange whose trace context came on the wire, sampled or not by the mesh.
fn traced_exchange(id: &str, trace: u8, sampled: bool) -> CorrelatedSession {
    let b = SessionBuilder::new(id)
        .trace([trace; 16], [9; 8])
        .with(|s| {
            if let Some(t) = s.trace.as_mut() {
                t.sampled = sampled;
            }
        });
    CorrelatedSession::new(b.build()).0
}

#[tokio::test]
async fn the_default_sampler_exports_what_the_mesh_sampled_and_counts_the_rest(
) -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let cfg = config(receiver.endpoint());
    let (exporter, metrics) = start(&cfg)?;
    let handle = exporter.handle();
    assert!(handle.enqueue_session(&traced_exchange("kept", 1, true)));
    assert!(handle.enqueue_session(&traced_exchange("unsampled", 2, false)));
    assert!(handle.enqueue_session(&CorrelatedSession::new(SessionBuilder::new("own").build()).0));
    exporter.flush().await?;
    let got = receiver.spans();
    assert_eq!(
        got.len(),
        2,
        "the sampled trace's span and the new trace's: {got:?}"
    );
    assert!(got.iter().any(|s| s.trace_id == vec![1; 16]));
    assert!(got.iter().all(|s| s.trace_id != vec![2; 16]));
    assert_eq!(metrics.unsampled_count(), 1);
    assert_eq!(metrics.exported_count(), 2);
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    assert!(
        crate::metrics::encode(&registry).contains("clovisor_correlator_spans_unsampled_total 1"),
        "the counter is exposed"
    );
    exporter.shutdown().await?;

    // `always_on` exports every exchange, the mesh's decision carried in the span's flags.
    let mut cfg = config(receiver.endpoint());
    cfg.sampler = Sampler::ALWAYS_ON;
    let (exporter, metrics) = start(&cfg)?;
    assert!(exporter
        .handle()
        .enqueue_session(&traced_exchange("unsampled", 3, false)));
    exporter.flush().await?;
    let got = receiver.spans();
    let span = got.iter().find(|s| s.trace_id == vec![3; 16]);
    assert_eq!(
        span.map(|s| s.flags & 1),
        Some(0),
        "sent, flagged not sampled"
    );
    assert_eq!(metrics.unsampled_count(), 0);
    exporter.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn flush_delivers_partial_batch() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let mut cfg = config(receiver.endpoint());
    cfg.batch_timeout = Duration::from_secs(3600);
    cfg.batch_size = 100;
    let (exporter, _) = start(&cfg)?;
    for s in spans(2) {
        exporter.handle().enqueue(s);
    }
    exporter.flush().await?;
    assert_eq!(
        receiver.spans().len(),
        2,
        "flush must deliver the partial batch"
    );
    exporter.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn transient_errors_are_retried_permanent_ones_dropped() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let (exporter, metrics) = start(&config(receiver.endpoint()))?;
    receiver.fail_next(tonic::Code::Unavailable, 2);
    for s in spans(3) {
        exporter.handle().enqueue(s);
    }
    exporter.flush().await?;
    assert_eq!(
        receiver.spans().len(),
        3,
        "a batch failing twice transiently must still arrive"
    );
    assert_eq!(
        metrics.export_failure_count(),
        2,
        "both failed attempts counted"
    );

    receiver.fail_next(tonic::Code::InvalidArgument, 1);
    for s in spans(3) {
        exporter.handle().enqueue(s);
    }
    exporter.flush().await?;
    assert_eq!(
        receiver.spans().len(),
        3,
        "a permanently refused batch is not retried"
    );
    assert_eq!(
        metrics.dropped_count(DropReason::Rejected),
        3,
        "refused spans counted"
    );
    exporter.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn dead_endpoint_drops_are_counted_and_bounded_then_recovers() -> anyhow::Result<()> {
    let addr = dead_addr().await?;
    let mut cfg = config(format!("http://{addr}"));
    cfg.queue_capacity = 8;
    cfg.batch_size = 4;
    cfg.shutdown_timeout = Duration::from_millis(500);
    let (exporter, metrics) = start(&cfg)?;
    let handle = exporter.handle();
    let offered = 200u64;
    let mut max_queued = 0;
    for s in spans(offered as usize) {
        handle.enqueue(s);
        max_queued = max_queued.max(handle.queued());
    }
    assert!(
        max_queued <= 8,
        "queue must stay within its bound, peaked at {max_queued}"
    );
    let full = metrics.dropped_count(DropReason::QueueFull);
    assert!(
        full >= offered - 8 - 4,
        "most spans must be dropped as queue_full, saw {full}"
    );

    // Everything offered is accounted for: dropped for a full queue or after retries.
    wait_until(
        "every span to be accounted for",
        Duration::from_secs(10),
        || {
            metrics.dropped_count(DropReason::QueueFull)
                + metrics.dropped_count(DropReason::RetriesExhausted)
                == offered
        },
    )
    .await;
    assert_eq!(
        metrics.exported_count(),
        0,
        "nothing can be exported to a dead endpoint"
    );
    assert!(
        metrics.export_failure_count() > 0,
        "failed attempts must be counted"
    );

    // The receiver comes back on the same address; new spans get through.
    let receiver = OtlpReceiver::start_on(addr).await?;
    for s in spans(5) {
        assert!(
            handle.enqueue(s),
            "the queue drained, so it must take new spans"
        );
    }
    exporter.flush().await?;
    let got = receiver.wait_for_spans(5, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 5, "spans after recovery must arrive");
    exporter.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn shutdown_against_dead_endpoint_is_bounded_and_counted() -> anyhow::Result<()> {
    let addr = dead_addr().await?;
    let mut cfg = config(format!("http://{addr}"));
    cfg.retry_max_elapsed = Duration::from_secs(60);
    cfg.shutdown_timeout = Duration::from_millis(300);
    cfg.batch_timeout = Duration::from_secs(3600);
    cfg.batch_size = 100;
    let (exporter, metrics) = start(&cfg)?;
    for s in spans(10) {
        exporter.handle().enqueue(s);
    }
    let started = Instant::now();
    let _ = exporter.shutdown().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "shutdown must respect its timeout, took {took:?}"
    );
    assert_eq!(
        metrics.dropped_count(DropReason::Shutdown),
        10,
        "undeliverable spans at shutdown are counted"
    );
    Ok(())
}

#[tokio::test]
async fn re_pointing_moves_queued_and_retried_spans_to_the_new_endpoint() -> anyhow::Result<()> {
    let dead = dead_addr().await?;
    let mut cfg = config(format!("http://{dead}"));
    // Long enough that the batch is still being retried when the endpoint changes.
    cfg.retry_max_elapsed = Duration::from_secs(20);
    let (exporter, metrics) = start(&cfg)?;
    let handle = exporter.handle();
    for s in spans(5) {
        assert!(handle.enqueue(s));
    }
    wait_until(
        "failed attempts on the dead endpoint",
        Duration::from_secs(5),
        || metrics.export_failure_count() >= 2,
    )
    .await;

    let receiver = OtlpReceiver::start().await?;
    exporter.endpoint_switch().set(&receiver.endpoint())?;
    let got = receiver.wait_for_spans(5, Duration::from_secs(5)).await;
    assert_eq!(
        got.len(),
        5,
        "every span, including the batch in retry, reaches the new endpoint"
    );
    for reason in [
        DropReason::RetriesExhausted,
        DropReason::QueueFull,
        DropReason::Rejected,
    ] {
        assert_eq!(metrics.dropped_count(reason), 0, "{reason:?} drops");
    }
    assert!(
        exporter.endpoint_switch().set("not a url").is_err(),
        "an unusable endpoint is refused"
    );
    for s in spans(2) {
        handle.enqueue(s);
    }
    assert_eq!(
        receiver
            .wait_for_spans(7, Duration::from_secs(5))
            .await
            .len(),
        7,
        "a refused endpoint changes nothing"
    );
    exporter.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn the_live_endpoint_wins_and_its_removal_restores_the_configured_one() -> anyhow::Result<()>
{
    let configured = OtlpReceiver::start().await?;
    let live_receiver = OtlpReceiver::start().await?;
    let correlator = crate::Correlator::new(crate::Config {
        export: Some(config(configured.endpoint())),
        ..crate::Config::default()
    })?;
    let (tx, rx) = tokio::sync::watch::channel(clovisor_config::LiveConfig::default());
    let follower = correlator.follow_live_config(rx);
    assert!(follower.is_some(), "export is on");
    let handle = correlator
        .exporter
        .as_ref()
        .map(OtlpExporter::handle)
        .ok_or_else(|| anyhow::anyhow!("no exporter"))?;

    tx.send_modify(|c| c.otlp_endpoint = Some(live_receiver.endpoint()));
    // The follower applies the change asynchronously: send until the live endpoint gets one.
    let deadline = Instant::now() + Duration::from_secs(5);
    while live_receiver.spans().is_empty() {
        assert!(Instant::now() < deadline, "live endpoint never used");
        handle.enqueue(spans(1).remove(0));
        correlator.flush().await?;
    }
    let before = configured.spans().len();
    tx.send_modify(|c| c.otlp_endpoint = None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while configured.spans().len() == before {
        assert!(
            Instant::now() < deadline,
            "configured endpoint never restored"
        );
        handle.enqueue(spans(1).remove(0));
        correlator.flush().await?;
    }
    drop(tx);
    correlator.shutdown().await?;
    Ok(())
}
