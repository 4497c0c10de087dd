//! `clovisor all-in-one`: probe, collector and correlator in one process on one Linux host,
//! tracing named network namespaces as pods. The three talk the same gRPC contracts as in a
//! cluster, over in-process pipes.
//!
//! Shutdown runs the pipeline dry in order: the probe detaches and drains its ring buffer, the
//! uplink delivers what it holds, the collector finishes, the forwarder delivers, and the
//! correlator flushes its spans — then the HTTP servers stop.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clovisor_collector::server::CaptureService;
use clovisor_correlator::{Config as CorrelatorConfig, Correlator};
use clovisor_probe::agent::{self, AgentConfig};
use clovisor_probe::capture::CaptureConfig;
use clovisor_probe::targets::netns::NetnsTargets;
use clovisor_proto::delivery::DeliveryConfig;
use clovisor_runtime::{serve_http, shutdown_signal, StopFlag};
use tokio::sync::mpsc;

use crate::inproc;

/// How long each stage may take to finish at shutdown before the next one stops anyway.
const STAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags of `clovisor all-in-one`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Trace this named network namespace (`/run/netns/NAME`) as a pod, through the host end of
    /// its veth; repeatable. Without it, every named network namespace is traced.
    #[arg(long = "netns", value_name = "NAME")]
    netns: Vec<String>,
    /// Also trace this TCP port (the ports listening inside traced namespaces are found and
    /// followed automatically); repeatable.
    #[arg(long = "port", value_name = "PORT")]
    ports: Vec<u16>,
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
    /// Bytes of each message copied from the kernel (the start of the request or response).
    #[arg(long, env = "CLOVISOR_SNAPLEN", default_value_t = CaptureConfig::default().snaplen)]
    snaplen: u32,
    /// Node name reported in sessions and spans (default: the host name).
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// How often namespaces and their listening ports are re-read.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    scan_interval: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        _ => Err(format!("not a duration (use ms or s): {s:?}")),
    }
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    let node = args.node.clone().unwrap_or_else(hostname);

    // Correlator: sessions in, spans and metrics out.
    let mut correlator_config = CorrelatorConfig::from_env().context("correlator configuration")?;
    correlator_config
        .node_name
        .get_or_insert_with(|| node.clone());
    // One registry serves every component's metrics on the one metrics port.
    let mut registry = prometheus_client::registry::Registry::default();
    let collector_metrics = std::sync::Arc::new(clovisor_collector::CollectorMetrics::default());
    collector_metrics.register(&mut registry);
    let correlator = Correlator::with_registry(correlator_config, registry)
        .context("starting the correlator")?;

    // Collector: raw records in, sessions out.
    let (sessions_tx, sessions_rx) = mpsc::channel(4096);
    let capture_service =
        CaptureService::new(sessions_tx, std::sync::Arc::clone(&collector_metrics));

    let stop_collector = StopFlag::default();
    let stop_correlator = StopFlag::default();
    let stop_http = StopFlag::default();

    let (collector_channel, collector_incoming) = inproc::pair();
    let collector_server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(capture_service.into_server())
            .serve_with_incoming_shutdown(collector_incoming, stop_collector.wait()),
    );
    let (correlator_channel, correlator_incoming) = inproc::pair();
    let correlator_server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(correlator.ingest_server())
            .serve_with_incoming_shutdown(correlator_incoming, stop_correlator.wait()),
    );
    let forwarder = clovisor_collector::forward::Forwarder::new(
        format!("all-in-one-collector-{}", std::process::id()),
        correlator_channel,
        DeliveryConfig::default(),
    );
    let forwarder = tokio::spawn(forwarder.run(sessions_rx, std::future::pending()));

    // HTTP: REST API and metrics, each on its own port; bound before the probe starts so a port
    // clash fails fast, before anything is attached.
    let api = serve_http(args.api_listen, correlator.api_router(), stop_http.wait()).await?;
    let metrics = serve_http(
        args.metrics_listen,
        correlator.metrics_router(),
        stop_http.wait(),
    )
    .await?;
    let api = tokio::spawn(api);
    let metrics = tokio::spawn(metrics);

    // Probe: runs until the signal, then drains into the collector.
    let probe_config = AgentConfig {
        capture: CaptureConfig {
            snaplen: args.snaplen,
            node: node.clone(),
            ..CaptureConfig::default()
        },
        targets: NetnsTargets {
            names: args.netns.clone(),
            extra_ports: args.ports.iter().copied().collect::<BTreeSet<u16>>(),
            interval: args.scan_interval,
            node: node.clone(),
        },
        delivery: DeliveryConfig::default(),
        record_queue: 16 * 1024,
    };
    let probe_result = agent::run(probe_config, collector_channel, shutdown, |_| {}).await;

    // The pipeline runs dry stage by stage.
    stop_collector.raise();
    await_stage("collector", collector_server).await;
    await_stage("forwarder", forwarder).await;
    stop_correlator.raise();
    await_stage("correlator ingest", correlator_server).await;
    if let Err(e) = correlator.shutdown().await {
        tracing::error!(error = %e, "span export did not finish cleanly");
    }
    stop_http.raise();
    await_stage("REST API", api).await;
    await_stage("metrics", metrics).await;
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("1h").is_err());
    }
}
