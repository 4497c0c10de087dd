//! Replay across a collector restart, with the three standalone binaries over TCP on loopback:
//! `clovisor-probe` traces a server pod, `clovisor-collector` decodes, `clovisor-correlator`
//! (export off) stores. While a client pod makes requests, one connection each, the collector is
//! killed with SIGKILL and restarted on the same port a moment later.
//!
//! The probe keeps every record the collector has not acknowledged and re-sends it to the new
//! collector; the collector acknowledges a batch only once the sessions made before it are
//! acknowledged by the correlator; the correlator drops a session whose id it already stores. So:
//! - no request appears twice;
//! - every request appears, except one whose exchange was split by the kill: its request record
//!   was acknowledged by the old collector (which held the open exchange in memory) and its
//!   response reached the new one, which cannot pair it. Each such loss is counted at the new
//!   collector (`clovisor_collector_messages_dropped_total{reason="response_without_request"}`),
//!   and it can only happen to requests in flight around the kill; the test checks both.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clovisor_integration_tests::api;
use clovisor_integration_tests::http_client::Curl;
use clovisor_integration_tests::{
    cargo_build, our_programs_complete_on, start_service, wait_for, Lab, Nginx, PipelineAddrs, Proc,
};

/// How long the client makes requests.
const TRAFFIC: Duration = Duration::from_secs(7);
/// When, into the traffic, the collector is killed.
const KILL_AFTER: Duration = Duration::from_millis(2500);
/// How long the collector stays dead.
const DEAD_FOR: Duration = Duration::from_millis(1500);
/// Requests that ended this long before the kill must have been delivered.
const SAFE_BEFORE_KILL: Duration = Duration::from_secs(1);

fn log_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("clovisor-replay-{name}-{}.log", std::process::id()))
}

/// Starts a process and waits until its metrics port answers `/healthz`.
fn start(name: &str, cmd: Command, metrics: &str) -> Result<Proc> {
    start_service(name, cmd, metrics, log_path(name))
}

/// The value of one sample of `/metrics`, 0 when absent.
fn sample(text: &str, series: &str) -> u64 {
    api::sample(text, series).map_or(0, |v| v as u64)
}

/// Request number -> how many stored sessions carry it.
fn stored(api: &str) -> Result<BTreeMap<u64, usize>> {
    let mut seen = BTreeMap::new();
    for s in api::sessions(api)? {
        let query = s["http"]["query"].as_str().unwrap_or_default();
        if let Some(n) = query
            .strip_prefix("replay=")
            .and_then(|n| n.parse::<u64>().ok())
        {
            *seen.entry(n).or_insert(0) += 1;
        }
    }
    Ok(seen)
}

/// One request the client made.
#[derive(Debug, Clone, Copy)]
struct Made {
    start: Instant,
    end: Instant,
    ok: bool,
}

#[test]
fn a_collector_killed_mid_traffic_stores_every_request_once_but_split_exchanges() -> Result<()> {
    let bin = cargo_build(&[
        "clovisor-probe",
        "clovisor-collector",
        "clovisor-correlator",
    ])?;
    let mut lab = Lab::new()?;
    let client = lab.pod("rcl")?;
    let server = lab.pod("rsv")?;
    let _nginx = Nginx::start(&server)?;

    let PipelineAddrs {
        correlator_grpc,
        correlator_api: api,
        correlator_metrics,
        collector_grpc,
        collector_metrics,
        probe_metrics,
    } = PipelineAddrs::new()?;

    let mut cmd = Command::new(bin.join("clovisor-correlator"));
    cmd.args([
        "--grpc-listen",
        &correlator_grpc,
        "--api-listen",
        &api,
        "--metrics-listen",
        &correlator_metrics,
    ])
    .env("OTEL_TRACES_EXPORTER", "none");
    let mut correlator = start("correlator", cmd, &correlator_metrics)?;

    let collector_cmd = || {
        let mut cmd = Command::new(bin.join("clovisor-collector"));
        cmd.args([
            "--grpc-listen",
            &collector_grpc,
            "--correlator",
            &format!("http://{correlator_grpc}"),
            "--metrics-listen",
            &collector_metrics,
        ]);
        cmd
    };
    let mut collector = start("collector", collector_cmd(), &collector_metrics)?;

    let mut cmd = Command::new(bin.join("clovisor-probe"));
    cmd.args([
        "--netns",
        &server.netns,
        "--collector",
        &format!("http://{collector_grpc}"),
        "--metrics-listen",
        &probe_metrics,
    ]);
    let mut probe = start("probe", cmd, &probe_metrics)?;
    if let Err(e) = wait_for("probe attached", Duration::from_secs(20), || {
        our_programs_complete_on(&server.host_veth)
    }) {
        bail!("{e:#}\nprobe log:\n{}", probe.log_text());
    }

    // Traffic: one connection per request, numbered, for TRAFFIC.
    let url = format!("http://{}/", server.ipv4);
    let pod = client.clone();
    let traffic = std::thread::spawn(move || {
        let began = Instant::now();
        let mut made = Vec::new();
        let mut n = 0u64;
        while began.elapsed() < TRAFFIC {
            let start = Instant::now();
            let target = format!("{url}?replay={n}");
            let ok = Curl::new().fail().max_time(5).run(&pod, &[&target]).is_ok();
            made.push(Made {
                start,
                end: Instant::now(),
                ok,
            });
            n += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        made
    });

    std::thread::sleep(KILL_AFTER);
    let killed_at = Instant::now();
    collector.stop(9, Duration::from_secs(5))?;
    std::thread::sleep(DEAD_FOR);
    let mut collector = start("collector-again", collector_cmd(), &collector_metrics)?;
    let restarted_at = Instant::now();
    let made = traffic
        .join()
        .map_err(|_| anyhow::anyhow!("traffic thread panicked"))?;
    // The REST API returns at most 1000 sessions: more requests could not be checked.
    assert!(
        made.len() < 1000,
        "expected fewer than 1000 requests, made {}",
        made.len()
    );
    let failed: Vec<usize> = (0..made.len()).filter(|i| !made[*i].ok).collect();
    assert!(
        failed.is_empty(),
        "nginx must answer every request, these failed: {failed:?}"
    );

    // Settle: the probe has nothing left to replay and the store stops growing.
    let mut last = stored(&api)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = stored(&api)?;
        let probe_text = api::metrics_text(&probe_metrics)?;
        let buffered = sample(&probe_text, r#"clovisor_buffered{stage="uplink"}"#);
        if now == last && buffered == 0 {
            break now;
        }
        if Instant::now() >= deadline {
            bail!(
                "not settled after 30 s: {} sessions, {buffered} records buffered in the probe",
                now.len()
            );
        }
        last = now;
    };

    let probe_text = api::metrics_text(&probe_metrics)?;
    let collector_text = api::metrics_text(&collector_metrics)?;
    let correlator_text = api::metrics_text(&correlator_metrics)?;
    let re_made = sample(
        &correlator_text,
        r#"clovisor_dropped_total{stage="correlator",reason="duplicate"}"#,
    );
    let dups: Vec<(u64, usize)> = seen
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, c)| (*n, *c))
        .collect();
    let window_start = killed_at.checked_sub(SAFE_BEFORE_KILL).unwrap_or(killed_at);
    let mut lost_outside = Vec::new();
    let mut in_window = 0;
    let mut lost_in_window: Vec<u64> = Vec::new();
    for (n, m) in made.iter().enumerate() {
        let n = n as u64;
        let must = m.end < window_start || m.start > killed_at;
        let present = seen.contains_key(&n);
        if must && !present {
            lost_outside.push(n);
        }
        if !must {
            in_window += 1;
            if !present {
                lost_in_window.push(n);
            }
        }
    }
    let resent = sample(
        &probe_text,
        r#"clovisor_probe_uplink_batches_total{kind="resent"}"#,
    );
    let ring_drops = sample(
        &probe_text,
        r#"clovisor_dropped_total{stage="ring_buffer",reason="full"}"#,
    );
    let no_request = sample(
        &collector_text,
        r#"clovisor_collector_messages_dropped_total{reason="response_without_request"}"#,
    );
    eprintln!(
        "{} requests; collector killed {:?} after the start, back {:?} later; {} stored; \
         {in_window} requests in the kill window, lost there: {lost_in_window:?}; \
         batches re-sent by the probe: {resent}; responses without request at the new collector: \
         {no_request}; re-made sessions dropped by the correlator: {re_made}; \
         ring buffer drops: {ring_drops}",
        made.len(),
        KILL_AFTER,
        restarted_at - killed_at,
        seen.len(),
    );

    assert!(
        dups.is_empty(),
        "expected every request at most once, these appear more than once (request, times): {dups:?}"
    );
    assert_eq!(
        ring_drops, 0,
        "the kernel lost events, so this run says nothing about replay"
    );
    assert!(
        lost_outside.is_empty(),
        "expected every request outside the kill window stored, missing: {lost_outside:?} \
         (of {}; window lost {lost_in_window:?})\ncollector log:\n{}",
        made.len(),
        collector.log_text()
    );
    assert!(
        lost_in_window.len() as u64 <= no_request,
        "every request lost in the kill window must be a split exchange counted as a response \
         without request at the new collector: lost {lost_in_window:?}, counted {no_request}"
    );
    assert!(
        resent > 0,
        "expected the probe to re-send batches to the new collector, saw none"
    );

    for (name, p) in [
        ("probe", &mut probe),
        ("collector", &mut collector),
        ("correlator", &mut correlator),
    ] {
        let status = p.stop(15, Duration::from_secs(30))?;
        assert!(
            status.success(),
            "{name} must exit cleanly on SIGTERM, got {status}\n{}",
            p.log_text()
        );
    }
    Ok(())
}
