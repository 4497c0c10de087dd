//! `clovisor-probe`: loads the capture programs on this node, follows what to trace and streams
//! raw capture records to a collector.

/// mimalloc: the pipeline allocates and frees a record, a batch and a session per message; with
/// glibc malloc that was over half of the all-in-one process's CPU under load (perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use clovisor_probe::cli::ProbeArgs;
use clovisor_probe::metrics::ProbeMetrics;
use clovisor_runtime::process::{start, ServiceArgs, Started};

#[derive(Debug, Parser)]
#[command(name = "clovisor-probe", version, about)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
    #[command(flatten)]
    probe: ProbeArgs,
    /// Collector gRPC URL.
    #[arg(
        long,
        env = "CLOVISOR_COLLECTOR",
        default_value = "http://clovisor-collector.clovisor.svc:50051"
    )]
    collector: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let Started {
        shutdown,
        drops,
        mut registry,
        live,
        mut servers,
    } = start(&args.service.log, Some(&args.service.redis))?;
    let metrics = Arc::new(ProbeMetrics::new(drops));
    metrics.register(&mut registry);
    servers
        .serve(
            args.service.metrics_listen,
            clovisor_runtime::metrics_router(Arc::new(registry))
                .merge(clovisor_probe::api::router(Arc::clone(&metrics))),
        )
        .await?;

    let channel = clovisor_proto::hops::lazy_channel(&args.collector)?;
    let result =
        clovisor_probe::agent::run(args.probe.agent_config(), live, channel, shutdown, metrics)
            .await
            .context("probe");
    servers.stop().await.context("HTTP servers")?;
    result
}
