//! `clovisor-probe`: loads the capture programs on this node, follows what to trace and streams
//! raw capture records to a collector.

/// mimalloc: the pipeline allocates and frees a record, a batch and a session per message; with
/// glibc malloc that was over half of the all-in-one process's CPU under load (perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use clovisor_probe::cli::ProbeArgs;
use clovisor_probe::metrics::ProbeMetrics;
use clovisor_runtime::drops::Drops;
use clovisor_runtime::{serve_http, shutdown_signal, LogArgs, StopFlag};
use prometheus_client::registry::Registry;

#[derive(Debug, Parser)]
#[command(name = "clovisor-probe", version, about)]
struct Args {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    probe: ProbeArgs,
    /// Collector gRPC URL.
    #[arg(
        long,
        env = "CLOVISOR_COLLECTOR",
        default_value = "http://clovisor-collector.clovisor.svc:50051"
    )]
    collector: String,
    /// Prometheus metrics address.
    #[arg(long, env = "CLOVISOR_METRICS_LISTEN", default_value = "0.0.0.0:9801")]
    metrics_listen: SocketAddr,
    /// Redis holding the live configuration (empty: none, run on flags and defaults).
    #[arg(long, env = clovisor_config::ENV_REDIS, default_value = clovisor_config::DEFAULT_CLUSTER_REDIS)]
    redis: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    clovisor_runtime::init_logging(&args.log);
    let shutdown = shutdown_signal()?;

    let drops = Drops::default();
    let metrics = Arc::new(ProbeMetrics::new(drops.clone()));
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    drops.register(&mut registry);
    let stop_config = StopFlag::default();
    let live = clovisor_config::follow(Some(&args.redis), &mut registry, stop_config.wait())?;
    let stop_http = StopFlag::default();
    let metrics_server = tokio::spawn(
        serve_http(
            args.metrics_listen,
            clovisor_runtime::metrics_router(Arc::new(registry))
                .merge(clovisor_probe::api::router(Arc::clone(&metrics))),
            stop_http.wait(),
        )
        .await?,
    );

    let channel = clovisor_proto::hops::lazy_channel(&args.collector)?;
    let result =
        clovisor_probe::agent::run(args.probe.agent_config(), live, channel, shutdown, metrics)
            .await
            .context("probe");
    stop_config.raise();
    stop_http.raise();
    metrics_server.await.context("metrics task")??;
    result
}
