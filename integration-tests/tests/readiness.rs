//! `/readyz` tells the truth, between real processes: the probe is ready only once its BPF
//! programs are loaded and its stream to the collector is open; the collector only while its
//! stream to the correlator is open. Each peer is started late and killed again, and the
//! answer follows (503 naming what is missing, 200 once everything holds).

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};
use clovisor_integration_tests::http_client::http_status;
use clovisor_integration_tests::{
    cargo_build, collector_command, correlator_command, start_service, wait_for, Lab,
    PipelineAddrs, Proc,
};

fn log(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("clovisor-ready-{name}-{}.log", std::process::id()))
}

/// `GET /readyz` at `metrics`: status and body (the body also on 503).
fn readyz(metrics: &str) -> Result<(u16, String)> {
    let url = format!("http://{metrics}/readyz");
    let status = http_status(&url, &[])?;
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", &url])
        .output()?;
    Ok((status, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Waits until `/readyz` at `metrics` answers `status` with `line` in its body.
fn wait_ready(what: &str, metrics: &str, status: u16, line: &str, procs: &[&Proc]) -> Result<()> {
    let mut last = (0, String::new());
    let waited = wait_for(what, Duration::from_secs(20), || {
        last = readyz(metrics)?;
        Ok(last.0 == status && last.1.contains(line))
    });
    if let Err(e) = waited {
        let logs: Vec<String> = procs.iter().map(|p| p.log_text()).collect();
        bail!(
            "{e:#}: last answer {} {:?}\nlogs:\n{}",
            last.0,
            last.1,
            logs.join("\n---\n")
        );
    }
    Ok(())
}

#[test]
fn readyz_follows_bpf_and_every_uplink_as_peers_come_and_go() -> Result<()> {
    let bin = cargo_build(&[
        "clovisor-probe",
        "clovisor-collector",
        "clovisor-correlator",
    ])?;
    let mut lab = Lab::new()?;
    let server = lab.pod("rdy")?;

    let PipelineAddrs {
        correlator_grpc,
        correlator_api: _,
        correlator_metrics,
        collector_grpc,
        collector_metrics,
        probe_metrics,
    } = PipelineAddrs::new()?;

    // The probe first: its collector is not there yet.
    let mut cmd = Command::new(bin.join("clovisor-probe"));
    cmd.args([
        "--netns",
        &server.netns,
        "--collector",
        &format!("http://{collector_grpc}"),
        "--metrics-listen",
        &probe_metrics,
        "--redis",
        "",
    ]);
    let probe = start_service("probe", cmd, &probe_metrics, log("probe"))?;
    wait_ready(
        "probe: BPF loaded, no collector",
        &probe_metrics,
        503,
        "bpf: ok",
        &[&probe],
    )?;
    let (_, body) = readyz(&probe_metrics)?;
    assert!(
        body.contains("uplink: no stream to the collector"),
        "not ready without a collector: {body:?}"
    );

    // The collector, its correlator not there yet.
    let collector_cmd =
        || collector_command(&bin, &collector_grpc, &correlator_grpc, &collector_metrics);
    let mut collector = start_service(
        "collector",
        collector_cmd(),
        &collector_metrics,
        log("collector"),
    )?;
    wait_ready(
        "collector: no correlator",
        &collector_metrics,
        503,
        "correlator: no stream to the correlator",
        &[&collector],
    )?;
    wait_ready(
        "probe: connected",
        &probe_metrics,
        200,
        "uplink: ok",
        &[&probe, &collector],
    )?;

    let cmd = correlator_command(&bin, &correlator_grpc, &correlator_metrics)?;
    let correlator = start_service("correlator", cmd, &correlator_metrics, log("correlator"))?;
    wait_ready(
        "collector: connected",
        &collector_metrics,
        200,
        "correlator: ok",
        &[&collector, &correlator],
    )?;

    // The collector goes away: the probe is not ready until it is back.
    collector.stop(9, Duration::from_secs(5))?;
    wait_ready(
        "probe: collector lost",
        &probe_metrics,
        503,
        "uplink: no stream to the collector",
        &[&probe],
    )?;
    let collector = start_service(
        "collector-again",
        collector_cmd(),
        &collector_metrics,
        log("collector2"),
    )?;
    wait_ready(
        "probe: collector back",
        &probe_metrics,
        200,
        "ready",
        &[&probe, &collector],
    )?;
    Ok(())
}
