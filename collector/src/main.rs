//! `clovisor-collector`: receives raw session records from probes, decodes them into sessions and
//! forwards those to a correlator.

/// mimalloc: the pipeline allocates and frees a record, a batch and a session per message; with
/// glibc malloc that was over half of the all-in-one process's CPU under load (perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::builder::RangedU64ValueParser;
use clap::Parser;
use clovisor_collector::decode::limits;
use clovisor_collector::forward::Forwarder;
use clovisor_collector::server::admission::{
    AdmissionConfig, ProbeIdentity, DEFAULT_NODE_SUFFIX, DEFAULT_PROBE_TOKEN_AUDIENCE,
    DEFAULT_PROBE_TOKEN_IDENTITY,
};
use clovisor_collector::server::{CaptureService, ServiceConfig};
use clovisor_collector::CollectorMetrics;
use clovisor_proto::tls::{self, TlsArgs, TlsStats};
use clovisor_runtime::auth::token_review::TokenReviewer;
use clovisor_runtime::process::{start, ServiceArgs};
use clovisor_runtime::StopFlag;

#[derive(Debug, Parser)]
#[command(name = "clovisor-collector", version, about)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
    /// gRPC address probes stream records to.
    #[arg(long, env = "CLOVISOR_GRPC_LISTEN", default_value = "0.0.0.0:50051")]
    grpc_listen: SocketAddr,
    /// Correlator gRPC URL (`https://` needs the TLS flags; plaintext `http://` only to loopback
    /// unless --insecure-plaintext).
    #[arg(
        long,
        env = "CLOVISOR_CORRELATOR",
        default_value = "https://clovisor-correlator.clovisor.svc:50052"
    )]
    correlator: String,
    #[command(flatten)]
    tls: TlsArgs,
    /// What a probe must prove: `any` (nothing), `certificate` (a client certificate signed by
    /// the CA; probe ids and nodes stay with the certificate that claimed them), `node` (the
    /// certificate's DNS names include the node, as `NODE` or `NODE.<suffix>`) or `token` (a
    /// certificate, and its pod's service account token for --probe-token-audience, which the
    /// API server must vouch for as one of --probe-token-identities on the node the probe
    /// claims). Default: `certificate` when TLS with a CA is configured, `any` otherwise.
    #[arg(long, env = "CLOVISOR_PROBE_IDENTITY")]
    probe_identity: Option<ProbeIdentity>,
    /// Audience the probes' service account tokens must be minted for (`--probe-identity
    /// token`; the probe's projected token volume names it).
    #[arg(long, env = "CLOVISOR_PROBE_TOKEN_AUDIENCE", default_value = DEFAULT_PROBE_TOKEN_AUDIENCE)]
    probe_token_audience: String,
    /// Identities whose tokens may speak for a probe (`--probe-identity token`): user names
    /// (`system:serviceaccount:NS:NAME`) or `group:NAME`, comma-separated.
    #[arg(
        long,
        env = "CLOVISOR_PROBE_TOKEN_IDENTITIES",
        value_delimiter = ',',
        default_value = DEFAULT_PROBE_TOKEN_IDENTITY
    )]
    probe_token_identities: Vec<String>,
    /// Seconds between reviews of an admitted probe stream's token (`--probe-identity token`):
    /// a token the API server no longer accepts ends its stream within this (the probe
    /// reconnects with its current token).
    #[arg(long, env = "CLOVISOR_PROBE_TOKEN_RECHECK_SECS", default_value_t = 300,
        value_parser = RangedU64ValueParser::<u64>::new().range(1..=86_400))]
    probe_token_recheck_secs: u64,
    /// Seconds a probe stream admitted with a token that carries no `exp` may run
    /// (`--probe-identity token`); a token's `exp` ends its stream otherwise.
    #[arg(long, env = "CLOVISOR_PROBE_TOKEN_MAX_STREAM_AGE_SECS", default_value_t = 3600,
        value_parser = RangedU64ValueParser::<u64>::new().range(1..=604_800))]
    probe_token_max_stream_age_secs: u64,
    /// DNS suffix of per-node probe certificates (`--probe-identity node`).
    #[arg(long, env = "CLOVISOR_PROBE_NODE_SUFFIX", default_value = DEFAULT_NODE_SUFFIX)]
    probe_node_suffix: String,
    /// Probe ids kept at most; Hellos with new ids beyond are refused (counted).
    #[arg(long, env = "CLOVISOR_MAX_PROBES", default_value_t = 8192)]
    max_probes: usize,
    /// Query parameters whose values are redacted in request targets before sessions leave the
    /// collector, besides the built-in ones (SigV4, OAuth, tokens, keys; docs/security.md).
    /// Comma-separated, any case, matched after percent-decoding.
    #[arg(long, env = "CLOVISOR_REDACT_QUERY_KEYS", value_delimiter = ',')]
    redact_query_keys: Vec<String>,
    /// Flows tracked at most, over all probes; beyond, the least recently active flow is ended
    /// (its open exchange emitted incomplete, counted in
    /// `clovisor_collector_flows_evicted_total{reason="capacity"}`).
    #[arg(long, env = "CLOVISOR_MAX_FLOWS", default_value_t = 65_536)]
    max_flows: usize,
    /// Endpoint metadata entries (pod addresses and Service addresses a probe announces) kept
    /// per probe; beyond, new ones are dropped (`clovisor_collector_endpoints_dropped_total`).
    #[arg(long, env = "CLOVISOR_MAX_ENDPOINTS_PER_PROBE", default_value_t = 65_536,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..=16_777_216))]
    max_endpoints_per_probe: usize,
    /// Decoded sessions queued for the correlator; when full, probes' streams are slowed down.
    #[arg(long, env = "CLOVISOR_SESSION_QUEUE", default_value_t = 4096)]
    session_queue: usize,
    /// Caps on the strings and maps of each session.
    #[command(flatten)]
    field_limits: limits::FieldLimitArgs,
    /// Largest gRPC message decoded from a probe, in bytes (a probe's batches are 1 MiB at
    /// most); a larger one ends its stream
    /// (`clovisor_collector_probes_refused_total{reason="message_too_large"}`).
    #[arg(long, env = "CLOVISOR_MAX_MESSAGE_BYTES", default_value_t = clovisor_proto::hops::MAX_MESSAGE_BYTES,
        value_parser = RangedU64ValueParser::<usize>::new().range(1 << 16..=64 << 20))]
    max_message_bytes: usize,
    /// Milliseconds a decoded session waits for the other views its probe sent of the same
    /// exchange (the pod's veth and the socket of one connection), to leave as one session;
    /// 0 merges only the views of one batch. Longer than the probe's 20 ms batch flush, so that
    /// a quiet probe's next batch still comes within it.
    #[arg(long, env = "CLOVISOR_LOCAL_JOIN_HOLD_MS", default_value_t = 30)]
    local_join_hold_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before any metric is made: the families take their bounds when made.
    args.service.limits.apply();
    let mut process = start(&args.service.log, Some(&args.service.redis))?;
    let metrics = Arc::new(CollectorMetrics::with_drops(process.drops.clone()));
    metrics.register(&mut process.registry);
    let tls_stats = TlsStats::default();
    tls_stats.register(&mut process.registry);
    let token = args
        .service
        .api_token(&mut process.registry)
        .await
        .context("API token")?;
    process.servers.require_token(token);
    let server_tls = args.tls.server(&tls_stats).context("TLS")?;
    let client = args.tls.client(&tls_stats).context("TLS")?;
    let probe_identity = args.probe_identity.unwrap_or(
        if server_tls
            .as_ref()
            .is_some_and(|t| t.requires_client_certificates())
        {
            ProbeIdentity::Certificate
        } else {
            ProbeIdentity::Any
        },
    );
    let token_review = if probe_identity == ProbeIdentity::Token {
        if !server_tls
            .as_ref()
            .is_some_and(|t| t.requires_client_certificates())
        {
            anyhow::bail!("--probe-identity token needs TLS with a CA (probes' certificates, and a channel their tokens do not leak from)");
        }
        let identities: Vec<String> = args
            .probe_token_identities
            .iter()
            .map(|i| i.trim().to_owned())
            .filter(|i| !i.is_empty())
            .collect();
        if identities.is_empty() || args.probe_token_audience.trim().is_empty() {
            anyhow::bail!(
                "--probe-identity token needs --probe-token-identities and --probe-token-audience"
            );
        }
        let reviewer = TokenReviewer::from_environment(
            identities,
            vec![args.probe_token_audience.trim().to_owned()],
        )
        .await
        .context("probes' token review")?;
        Some(Arc::new(reviewer))
    } else {
        None
    };
    if server_tls.is_none() && !args.grpc_listen.ip().is_loopback() {
        tracing::warn!(addr = %args.grpc_listen, "gRPC served without TLS: probes' records (payload prefixes with their headers) cross the network in clear and any peer can claim to be a probe");
    }

    let (sessions_tx, sessions_rx) = tokio::sync::mpsc::channel(args.session_queue);
    let channel = client
        .lazy_channel(&args.correlator)
        .context("correlator URL")?;
    let forwarder = Forwarder::new(
        format!("collector-{:016x}", rand::random::<u64>()),
        clovisor_proto::hops::SessionConnector::new(channel),
        clovisor_proto::hops::session_delivery_config(),
    );
    let forwarder_stats = forwarder.stats();
    {
        let stats = Arc::clone(&forwarder_stats);
        process.readiness.add("correlator", move || {
            if stats.connected.load(std::sync::atomic::Ordering::Relaxed) {
                Ok(())
            } else {
                Err("no stream to the correlator".to_owned())
            }
        });
    }
    let forwarder_accounting = metrics.track_forwarder(Arc::clone(&forwarder_stats));
    let forwarder = tokio::spawn(forwarder.run(sessions_rx, std::future::pending()));

    let stop_grpc = StopFlag::default();
    let registry = Arc::new(process.registry);
    process
        .servers
        .serve(
            args.service.metrics_listen,
            clovisor_runtime::metrics_router(registry).merge(process.readiness.router()),
        )
        .await?;
    let listener = tokio::net::TcpListener::bind(args.grpc_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.grpc_listen))?;
    tracing::info!(addr = %args.grpc_listen, correlator = %args.correlator,
        tls = server_tls.is_some(), probe_identity = ?probe_identity, "gRPC listening");
    let service_config = ServiceConfig {
        admission: AdmissionConfig {
            identity: probe_identity,
            token_review,
            node_suffix: args.probe_node_suffix.clone(),
            max_probes: args.max_probes,
            token_recheck: Duration::from_secs(args.probe_token_recheck_secs),
            max_token_stream_age: Duration::from_secs(args.probe_token_max_stream_age_secs),
            ..AdmissionConfig::default()
        },
        redact_query_keys: args.redact_query_keys.clone(),
        local_join_hold: std::time::Duration::from_millis(args.local_join_hold_ms),
        field_limits: args.field_limits.limits(),
        max_message_bytes: args.max_message_bytes,
        flows: clovisor_collector::flows::FlowTableConfig {
            max_flows: args.max_flows,
            max_endpoints_per_probe: args.max_endpoints_per_probe,
            ..Default::default()
        },
        ..ServiceConfig::default()
    };
    let capture = CaptureService::with_config(sessions_tx, Arc::clone(&metrics), service_config)
        // A killed collector loses no session its forwarder still held.
        .ack_after_downstream(forwarder_stats)
        .with_live_config(process.live.clone());
    let _analyzers = capture.follow_analyzers(process.live, Some(process.config_metrics));
    let grpc = tokio::spawn(
        clovisor_proto::hops::server_builder()
            .add_service(capture.into_server())
            .serve_with_incoming_shutdown(
                tls::server::incoming(listener, server_tls),
                stop_grpc.wait(),
            ),
    );

    process.shutdown.await;
    stop_grpc.raise();
    // Probes hold their streams open; what they have not had acknowledged they will re-send to
    // the next collector, so waiting long gains nothing.
    let grpc_abort = grpc.abort_handle();
    if tokio::time::timeout(Duration::from_secs(5), grpc)
        .await
        .is_err()
    {
        tracing::warn!("probe streams still open after 5 s; closing them");
        // Dropping the service closes the session channel, which lets the forwarder drain.
        grpc_abort.abort();
    }
    if tokio::time::timeout(Duration::from_secs(10), forwarder)
        .await
        .is_err()
    {
        tracing::warn!("correlator did not acknowledge everything in 10 s");
    }
    forwarder_accounting.abort();
    process.servers.stop().await.context("HTTP servers")?;
    Ok(())
}
