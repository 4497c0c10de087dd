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
use clovisor_proto::tls::{self, TlsArgs, TlsStats};
use clovisor_runtime::process::{start, ServiceArgs};
use clovisor_runtime::StopFlag;

#[derive(Debug, Parser)]
#[command(name = "clovisor-correlator", version, about)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
    /// gRPC address collectors push sessions to.
    #[arg(long, env = "CLOVISOR_GRPC_LISTEN", default_value = "0.0.0.0:50052")]
    grpc_listen: SocketAddr,
    /// REST API address.
    #[arg(long, env = "CLOVISOR_API_LISTEN", default_value = "0.0.0.0:9800")]
    api_listen: SocketAddr,
    #[command(flatten)]
    tls: TlsArgs,
    /// The join's candidate cap and the analyzer label cap.
    #[command(flatten)]
    bounds: clovisor_correlator::config::BoundArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before any metric is made: the families take their bounds when made.
    args.service.limits.apply();
    let mut process = start(&args.service.log, Some(&args.service.redis))?;
    let mut config = Config::from_env().context("configuration")?;
    args.bounds.apply(&mut config);
    let tls_stats = TlsStats::default();
    tls_stats.register(&mut process.registry);
    let token = args
        .service
        .api_token(&mut process.registry)
        .await
        .context("API token")?;
    let bearer_auth = token.is_some();
    process.servers.require_token(token);
    let server_tls = args.tls.server(&tls_stats).context("TLS")?;
    let client = args.tls.client(&tls_stats).context("TLS")?;
    if server_tls.is_none() && !args.grpc_listen.ip().is_loopback() {
        tracing::warn!(addr = %args.grpc_listen, "gRPC served without TLS: any peer can push sessions");
    }
    let mut correlator =
        Correlator::with_registry_and_transport(config, process.registry, process.drops, client)?;
    correlator.set_bearer_auth(bearer_auth);
    let _endpoint_follower = correlator.follow_live_config(process.live);

    let stop_grpc = StopFlag::default();
    let servers = &mut process.servers;
    servers
        .serve(args.api_listen, correlator.api_router())
        .await?;
    servers
        .serve(args.service.metrics_listen, correlator.metrics_router())
        .await?;
    let grpc_listener = tokio::net::TcpListener::bind(args.grpc_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.grpc_listen))?;
    tracing::info!(addr = %args.grpc_listen, tls = server_tls.is_some(), "gRPC listening");
    let grpc = tokio::spawn(
        clovisor_proto::hops::server_builder()
            .add_service(correlator.ingest_server())
            .serve_with_incoming_shutdown(
                tls::server::incoming(grpc_listener, server_tls),
                stop_grpc.wait(),
            ),
    );

    process.shutdown.await;
    stop_grpc.raise();
    // Collectors hold their streams open; give them a moment to see the GOAWAY, then go on.
    match tokio::time::timeout(std::time::Duration::from_secs(5), grpc).await {
        Ok(joined) => joined.context("gRPC task")?.context("gRPC server")?,
        Err(_) => tracing::warn!("collector streams still open after 5 s; closing them"),
    }
    correlator.shutdown().await.context("flushing spans")?;
    process.servers.stop().await.context("HTTP servers")?;
    Ok(())
}
