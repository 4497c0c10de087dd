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
use clovisor_proto::tls::{TlsArgs, TlsStats};
use clovisor_runtime::process::{start, ServiceArgs};

#[derive(Debug, Parser)]
#[command(name = "clovisor-probe", version, about)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
    #[command(flatten)]
    probe: ProbeArgs,
    /// Collector gRPC URL (`https://` needs the TLS flags; plaintext `http://` only to loopback
    /// unless --insecure-plaintext).
    #[arg(
        long,
        env = "CLOVISOR_COLLECTOR",
        default_value = "https://clovisor-collector.clovisor.svc:50051"
    )]
    collector: String,
    /// File holding the token presented to the collector on every stream (`authorization:
    /// Bearer`): in a cluster, the pod's projected service account token minted for the
    /// collector's audience, which proves the node this probe runs on (the collector's
    /// `--probe-identity token`). Re-read at every connect.
    #[arg(long, env = "CLOVISOR_COLLECTOR_TOKEN_FILE")]
    collector_token_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// One worker thread: the probe's tasks (two ring readers, the uplink, the target follower)
/// hand work to each other all the time, and on one thread that costs no cross-CPU wake-ups;
/// blocking work (namespace scans) runs on tokio's blocking pool. The probe must use a small
/// fraction of one core, so a second worker buys nothing.
#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before any metric is made: the families take their bounds when made.
    args.service.limits.apply();
    let mut process = start(&args.service.log, Some(&args.service.redis))?;
    let metrics = Arc::new(ProbeMetrics::new(process.drops.clone()));
    metrics.register(&mut process.registry);
    let tls_stats = TlsStats::default();
    tls_stats.register(&mut process.registry);
    let token = args
        .service
        .api_token(&mut process.registry)
        .await
        .context("API token")?;
    process.servers.require_token(token);
    // Checked before anything is attached: a bad URL or certificate fails at start.
    let channel = args
        .tls
        .client(&tls_stats)
        .context("TLS")?
        .lazy_channel(&args.collector)
        .context("collector URL")?;
    let mut config = args.probe.agent_config();
    config.collector_token_file = args.collector_token_file.clone();
    config.health.register(&process.readiness, &config.targets);
    // The probe's own status (`GET /api/v1/probe`) and readiness beside its metrics.
    let router = clovisor_runtime::metrics_router(Arc::new(process.registry))
        .merge(clovisor_probe::api::router(Arc::clone(&metrics)))
        .merge(process.readiness.router());
    process
        .servers
        .serve(args.service.metrics_listen, router)
        .await?;

    let result = clovisor_probe::agent::run(
        config,
        process.live,
        clovisor_proto::hops::CaptureConnector::new(channel),
        process.shutdown,
        metrics,
    )
    .await
    .context("probe");
    process.servers.stop().await.context("HTTP servers")?;
    result
}
