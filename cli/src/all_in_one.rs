//! `clovisor all-in-one`: probe, collector and correlator in one process on one Linux host,
//! tracing named network namespaces as pods. The three exchange the same messages under the
//! same delivery protocol as in a cluster, handed over directly (no gRPC transport between
//! them).
//!
//! Shutdown runs the pipeline dry in order: the probe detaches and drains its ring buffer, the
//! uplink delivers what it holds, the collector finishes, the forwarder delivers, and the
//! correlator flushes its spans — then the HTTP servers stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clovisor_collector::server::CaptureService;
use clovisor_correlator::{Config as CorrelatorConfig, Correlator};
use clovisor_probe::agent;
use clovisor_probe::cli::ProbeArgs;
use clovisor_probe::metrics::ProbeMetrics;
use clovisor_proto::hops::{CaptureConnector, SessionConnector};
use clovisor_proto::tls::{TlsArgs, TlsStats};
use clovisor_runtime::process::{start, Started};
use clovisor_runtime::LogArgs;
use tokio::sync::mpsc;

/// How long each stage may take to finish at shutdown before the next one stops anyway.
const STAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The fewest runtime workers all-in-one runs with, whatever the core count.
///
/// It does three services' work in one process: the probe's ring readers, the collector and the
/// correlator, each with work arriving on its own. With one worker per core on a 2-core node the
/// rings wait whenever both workers are in a collector's or correlator's batch, and where the
/// load saturates the cores (the benchmark's wrk against nginx) the one process gets the share of
/// two threads against the split pipeline's five: its rings filled and it dropped exchanges
/// (counted) where the split pipeline traced every one. With three the drops all but went, at
/// no more CPU per exchange (docs/benchmarks.md, nineteenth round).
pub const MIN_RUNTIME_WORKERS: usize = 3;

/// How many runtime workers all-in-one runs: `TOKIO_WORKER_THREADS` when set (as the runtime
/// itself reads it), else one per core and at least [`MIN_RUNTIME_WORKERS`].
pub fn runtime_workers() -> anyhow::Result<usize> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    workers_for(std::env::var("TOKIO_WORKER_THREADS").ok().as_deref(), cores)
}

fn workers_for(env: Option<&str>, cores: usize) -> anyhow::Result<usize> {
    match env {
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => anyhow::bail!("TOKIO_WORKER_THREADS must be a number above 0, not {v:?}"),
        },
        None => Ok(cores.max(MIN_RUNTIME_WORKERS)),
    }
}

/// Flags of `clovisor all-in-one`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    probe: ProbeArgs,
    /// REST API address.
    #[arg(long, env = "CLOVISOR_API_LISTEN", default_value = "127.0.0.1:9800")]
    api_listen: SocketAddr,
    /// Prometheus metrics address.
    #[arg(
        long,
        env = "CLOVISOR_METRICS_LISTEN",
        default_value = "127.0.0.1:9801"
    )]
    metrics_listen: SocketAddr,
    /// Redis holding the live configuration (egress rules select namespaces by name prefix;
    /// snaplen, OTLP endpoint, header redaction). Without it: flags and defaults.
    #[arg(long, env = clovisor_config::ENV_REDIS, value_name = "URL")]
    redis: Option<String>,
    /// File holding the bearer token the REST API and /metrics require (`/healthz`, `/readyz`
    /// stay open); none: open.
    #[arg(long, env = clovisor_runtime::auth::ENV_API_TOKEN_FILE)]
    api_token_file: Option<std::path::PathBuf>,
    /// TLS for the one hop that leaves the process, spans to the OTLP endpoint (the probe ->
    /// collector -> correlator hops are in-process and need none).
    #[command(flatten)]
    tls: TlsArgs,
    /// Bounds on the metrics' series and label values, as every service binary has.
    #[command(flatten)]
    limits: clovisor_runtime::limits::LimitArgs,
    /// Caps on the strings and maps of each session, as the collector has.
    #[command(flatten)]
    field_limits: clovisor_collector::decode::limits::FieldLimitArgs,
    /// The join's candidate cap and the analyzer label cap, as the correlator has.
    #[command(flatten)]
    correlator_bounds: clovisor_correlator::config::BoundArgs,
}

/// Runs until SIGTERM or SIGINT, logging as `log` says.
pub async fn run(args: Args, log: &LogArgs) -> anyhow::Result<()> {
    // Before any metric is made: the families take their bounds when made.
    args.limits.apply();
    // One registry serves every component's metrics on the one metrics port, and one loss
    // accounting counts every stage's drops.
    let Started {
        shutdown,
        drops,
        mut registry,
        live,
        config_metrics,
        // The REST port's `/readyz` (the correlator's) is all-in-one's readiness.
        readiness: _,
        mut servers,
    } = start(log, args.redis.as_deref()).context("start-up")?;
    let node = args.probe.node_name();

    // Correlator: sessions in, spans and metrics out.
    let mut correlator_config = CorrelatorConfig::from_env().context("correlator configuration")?;
    args.correlator_bounds.apply(&mut correlator_config);
    correlator_config
        .node_name
        .get_or_insert_with(|| node.clone());
    let probe_metrics = Arc::new(ProbeMetrics::new(drops.clone()));
    probe_metrics.register(&mut registry);
    let collector_metrics = Arc::new(clovisor_collector::CollectorMetrics::with_drops(
        drops.clone(),
    ));
    collector_metrics.register(&mut registry);
    let tls_stats = TlsStats::default();
    tls_stats.register(&mut registry);
    let token = clovisor_runtime::process::api_token(args.api_token_file.as_deref(), &mut registry)
        .context("API token")?;
    servers.require_token(token);
    let otlp_transport = args.tls.client(&tls_stats).context("TLS")?;
    let correlator =
        Correlator::with_registry_and_transport(correlator_config, registry, drops, otlp_transport)
            .context("starting the correlator")?;
    let endpoint_follower = correlator.follow_live_config(live.clone());

    // Collector: raw records in, sessions out.
    let (sessions_tx, sessions_rx) = mpsc::channel(4096);
    let capture_service = CaptureService::with_config(
        sessions_tx,
        Arc::clone(&collector_metrics),
        clovisor_collector::server::ServiceConfig {
            field_limits: args.field_limits.limits(),
            ..Default::default()
        },
    )
    .with_live_config(live.clone());
    let analyzers = capture_service.follow_analyzers(live.clone(), Some(config_metrics));

    // The services call each other directly (`DirectReceiver`): the hops' own messages and
    // delivery protocol (numbered batches, acknowledgements), without a transport between them —
    // no HTTP/2 framing, no copies into pipes and out, no connection tasks (about a tenth of
    // this process's CPU under load when they spoke gRPC over in-memory pipes).
    let collector_link = CaptureConnector::direct(Arc::new(capture_service));
    let forwarder = clovisor_collector::forward::Forwarder::new(
        format!("all-in-one-collector-{}", std::process::id()),
        SessionConnector::direct(Arc::new(correlator.ingest().clone())),
        clovisor_proto::hops::session_delivery_config(),
    );
    let forwarder_accounting = collector_metrics.track_forwarder(forwarder.stats());
    let forwarder = tokio::spawn(forwarder.run(sessions_rx, std::future::pending()));

    // HTTP: REST API and metrics, each on its own port; bound before the probe starts so a port
    // clash fails fast, before anything is attached.
    // The probe's own status (`GET /api/v1/probe`: the socket point's hooks) sits beside the
    // correlator's REST API.
    let api_router = correlator
        .api_router()
        .merge(clovisor_probe::api::router(Arc::clone(&probe_metrics)));
    servers.serve(args.api_listen, api_router).await?;
    servers
        .serve(args.metrics_listen, correlator.metrics_router())
        .await?;

    // Probe: runs until the signal, then drains into the collector.
    let probe_config = args.probe.agent_config();
    let probe_result =
        agent::run(probe_config, live, collector_link, shutdown, probe_metrics).await;

    // The pipeline runs dry stage by stage: the probe's streams end with it, and the collector's
    // with them, which closes the forwarder's input once they have handed on all they made; the
    // forwarder ends when the correlator has acknowledged (taken in) all of it.
    await_stage("forwarder", forwarder).await;
    if let Err(e) = correlator.shutdown().await {
        tracing::error!(error = %e, "span export did not finish cleanly");
    }
    forwarder_accounting.abort();
    analyzers.abort();
    if let Some(follower) = endpoint_follower {
        follower.abort();
    }
    match tokio::time::timeout(STAGE_TIMEOUT, servers.stop()).await {
        Ok(Ok(())) => tracing::debug!("HTTP servers stopped"),
        Ok(Err(e)) => tracing::error!(error = %e, "HTTP servers did not stop cleanly"),
        Err(_) => tracing::error!("HTTP servers did not stop in time"),
    }
    probe_result.context("probe")?;
    tracing::info!("all-in-one stopped");
    Ok(())
}

async fn await_stage<T: std::fmt::Debug>(name: &str, task: tokio::task::JoinHandle<T>) {
    match tokio::time::timeout(STAGE_TIMEOUT, task).await {
        Ok(Ok(result)) => tracing::debug!(stage = name, ?result, "stage finished"),
        Ok(Err(e)) => tracing::error!(stage = name, error = %e, "stage task failed"),
        Err(_) => tracing::error!(stage = name, "stage did not finish in time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn runs_at_least_three_workers_unless_told_otherwise() {
        let w = |env, cores| workers_for(env, cores).ok();
        assert_eq!(w(None, 1), Some(3));
        assert_eq!(w(None, 2), Some(3), "a 2-core node: one per stage");
        assert_eq!(w(None, 8), Some(8), "one per core above that");
        assert_eq!(
            w(Some("1"), 8),
            Some(1),
            "the environment wins, as for the services"
        );
        assert_eq!(w(Some(" 2 "), 1), Some(2));
        assert_eq!(
            w(Some("0"), 2),
            None,
            "refused, not a runtime without workers"
        );
        assert_eq!(w(Some("many"), 2), None);
    }

    #[test]
    fn takes_the_metric_bounds_and_session_caps_of_the_service_binaries() {
        let cli = Cli::try_parse_from([
            "all-in-one",
            "--netns",
            "pod-a",
            "--max-series-per-family",
            "500",
            "--max-attributes",
            "3",
            "--max-long-field-bytes",
            "2048",
            "--join-max-time-candidates",
            "16",
            "--max-analyzer-labels",
            "8",
        ])
        .unwrap_or_else(|e| panic!("flags parse: {e}"));
        assert_eq!(cli.args.limits.max_series_per_family, 500);
        let mut correlator = CorrelatorConfig::default();
        cli.args.correlator_bounds.apply(&mut correlator);
        assert_eq!(
            (
                correlator.join.max_time_candidates,
                correlator.max_analyzer_labels
            ),
            (16, 8),
            "the correlator's bounds"
        );
        let caps = cli.args.field_limits.limits();
        assert_eq!((caps.attributes, caps.long_field_bytes), (3, 2048));
        assert_eq!(
            caps.field_bytes,
            clovisor_collector::decode::limits::MAX_FIELD_BYTES,
            "unset caps keep the collector's defaults"
        );
        assert!(
            Cli::try_parse_from(["all-in-one", "--max-series-per-family", "1"]).is_err(),
            "out of range is refused, as by the collector"
        );
    }
}
