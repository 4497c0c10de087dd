//! `clovisor-correlator`: receives decoded sessions from collectors, exports OTLP spans, serves
//! Prometheus metrics and the REST API.

/// mimalloc: the pipeline allocates and frees a record, a batch and a session per message; with
/// glibc malloc that was over half of the all-in-one process's CPU under load (perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use clovisor_correlator::{Config, Correlator};
use clovisor_runtime::{serve_http, shutdown_signal, LogArgs, StopFlag};

#[derive(Debug, Parser)]
#[command(name = "clovisor-correlator", version, about)]
struct Args {
    #[command(flatten)]
    log: LogArgs,
    /// gRPC address collectors push sessions to.
    #[arg(long, env = "CLOVISOR_GRPC_LISTEN", default_value = "0.0.0.0:50052")]
    grpc_listen: SocketAddr,
    /// REST API address.
    #[arg(long, env = "CLOVISOR_API_LISTEN", default_value = "0.0.0.0:9800")]
    api_listen: SocketAddr,
    /// Prometheus metrics address.
    #[arg(long, env = "CLOVISOR_METRICS_LISTEN", default_value = "0.0.0.0:9801")]
    metrics_listen: SocketAddr,
    /// Redis holding the live configuration (empty: none, run on the environment's settings).
    #[arg(long, env = clovisor_config::ENV_REDIS, default_value = clovisor_config::DEFAULT_CLUSTER_REDIS)]
    redis: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    clovisor_runtime::init_logging(&args.log);
    let shutdown = shutdown_signal()?;
    let mut registry = prometheus_client::registry::Registry::default();
    let stop_config = StopFlag::default();
    let live = clovisor_config::follow(Some(&args.redis), &mut registry, stop_config.wait())?;
    let correlator = Correlator::with_registry(
        Config::from_env().context("configuration")?,
        registry,
        clovisor_runtime::drops::Drops::default(),
    )?;
    let _endpoint_follower = correlator.follow_live_config(live);

    let stop_grpc = StopFlag::default();
    let stop_http = StopFlag::default();
    let api =
        tokio::spawn(serve_http(args.api_listen, correlator.api_router(), stop_http.wait()).await?);
    let metrics = tokio::spawn(
        serve_http(
            args.metrics_listen,
            correlator.metrics_router(),
            stop_http.wait(),
        )
        .await?,
    );
    let grpc_listener = tokio::net::TcpListener::bind(args.grpc_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.grpc_listen))?;
    tracing::info!(addr = %args.grpc_listen, "gRPC listening");
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(correlator.ingest_server())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                stop_grpc.wait(),
            ),
    );

    shutdown.await;
    stop_grpc.raise();
    // Collectors hold their streams open; give them a moment to see the GOAWAY, then go on.
    match tokio::time::timeout(std::time::Duration::from_secs(5), grpc).await {
        Ok(joined) => joined.context("gRPC task")?.context("gRPC server")?,
        Err(_) => tracing::warn!("collector streams still open after 5 s; closing them"),
    }
    stop_config.raise();
    correlator.shutdown().await.context("flushing spans")?;
    stop_http.raise();
    api.await.context("API task")??;
    metrics.await.context("metrics task")??;
    Ok(())
}
