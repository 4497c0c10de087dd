//! The Clovisor-rs correlator: takes decoded sessions from collectors, places each in its trace,
//! keeps recent ones for the REST API, exports one OpenTelemetry span per session over OTLP/gRPC
//! and counts RED metrics for Prometheus.
//!
//! [`Correlator`] owns the pieces; the binary serves [`Correlator::ingest_server`] (gRPC),
//! [`Correlator::api_router`] and [`Correlator::metrics_router`] (HTTP, separate ports), and
//! calls [`Correlator::shutdown`] on SIGTERM so queued spans are delivered.

pub mod analytics;
pub mod api;
pub mod config;
mod equal;
pub mod error;
pub mod export;
pub mod ids;
pub mod ingest;
pub mod join;
pub mod metrics;
pub mod record;
pub mod store;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod view;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use clovisor_proto::session::v1::session_ingest_server::SessionIngestServer;
use clovisor_proto::tls::ClientTransport;
use clovisor_runtime::drops::Drops;
use prometheus_client::registry::Registry;

pub use config::Config;
pub use error::{Error, Result};

use api::ApiState;
use export::otlp::OtlpExporter;
use ingest::IngestService;
use metrics::Metrics;
use store::Store;

/// The correlator: store, metrics, exporter and the services in front of them.
#[derive(Debug)]
pub struct Correlator {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    exporter: Option<OtlpExporter>,
    ingest: IngestService,
    api: ApiState,
    ticker: tokio::task::JoinHandle<()>,
}

impl Correlator {
    /// Builds everything from `config` and starts the span exporter (unless export is off).
    /// Must be called inside a Tokio runtime; connects to the OTLP endpoint lazily.
    pub fn new(config: Config) -> Result<Self> {
        let drops = Drops::default();
        let mut registry = Registry::default();
        drops.register(&mut registry);
        Self::with_registry(config, registry, drops)
    }

    /// Like [`Correlator::new`], serving `registry` — which may already hold other components'
    /// metrics (all-in-one mode) — with the correlator's metrics added, and counting losses in
    /// `drops`, which the caller has registered in `registry` (the process start-up,
    /// `clovisor_runtime::process::start`, does).
    pub fn with_registry(config: Config, registry: Registry, drops: Drops) -> Result<Self> {
        Self::with_registry_and_transport(config, registry, drops, ClientTransport::loopback())
    }

    /// Like [`Correlator::with_registry`], exporting spans through `transport` (TLS to the OTLP
    /// endpoint; plaintext to loopback only unless it allows more).
    pub fn with_registry_and_transport(
        config: Config,
        mut registry: Registry,
        drops: Drops,
        transport: ClientTransport,
    ) -> Result<Self> {
        let store = Arc::new(Store::new(config.store_capacity));
        let metrics = Arc::new(
            Metrics::with_drops(drops).with_max_analyzer_labels(config.max_analyzer_labels),
        );
        metrics.register(&mut registry);
        let exporter = match &config.export {
            Some(export) => Some(OtlpExporter::start_with(
                export,
                export::span::resource(&config.service_name, config.node_name.as_deref()),
                Arc::clone(&metrics),
                transport,
            )?),
            None => None,
        };
        let ingest = IngestService::with_join(
            Arc::clone(&store),
            Arc::clone(&metrics),
            exporter.as_ref().map(OtlpExporter::handle),
            config.join,
        )
        .with_max_message_bytes(config.max_message_bytes);
        // Closes join windows: exports each exchange once no more observations are expected.
        let ticker = {
            let ingest = ingest.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(ingest.tick_interval());
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    ingest.tick();
                }
            })
        };
        Ok(Self {
            ticker,
            api: ApiState::new(Arc::clone(&store)).with_drops(metrics.drops()),
            store,
            metrics,
            registry: Arc::new(registry),
            exporter,
            ingest,
        })
    }

    /// The `SessionIngest` gRPC service for a tonic server.
    pub fn ingest_server(&self) -> SessionIngestServer<IngestService> {
        self.ingest.clone().into_server()
    }

    /// The ingest service itself, for in-process use ([`IngestService::accept`]).
    pub fn ingest(&self) -> &IngestService {
        &self.ingest
    }

    /// The REST API router.
    pub fn api_router(&self) -> axum::Router {
        api::app(self.api.clone())
    }

    /// Says that the REST API is served behind a bearer token (`--api-token-file`), so its
    /// OpenAPI document requires one; before [`Correlator::api_router`].
    pub fn set_bearer_auth(&mut self, on: bool) {
        self.api.bearer_auth = on;
    }

    /// How the live feed behaves; before [`Correlator::api_router`].
    pub fn set_stream_config(&mut self, config: api::stream::StreamConfig) {
        self.api.stream = config;
    }

    /// The `/metrics` router, for its own port.
    pub fn metrics_router(&self) -> axum::Router {
        api::metrics_app(Arc::clone(&self.registry))
    }

    /// The session store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The metrics registry, for adding the binary's own metrics before serving.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Follows the live configuration's OTLP endpoint (`clovisor_otlp_endpoint`, or a legacy
    /// Jaeger key mapped onto it); when it has none, the endpoint from the environment applies.
    /// Nothing to follow when span export is off. The task ends with the configuration source.
    pub fn follow_live_config(
        &self,
        mut live: tokio::sync::watch::Receiver<clovisor_config::LiveConfig>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let exporter = self.exporter.as_ref()?;
        let switch = exporter.endpoint_switch();
        let base = exporter.endpoint().to_owned();
        Some(tokio::spawn(async move {
            let mut current = base.clone();
            loop {
                let wanted = live
                    .borrow_and_update()
                    .otlp_endpoint
                    .clone()
                    .unwrap_or_else(|| base.clone());
                if wanted != current {
                    match switch.set(&wanted) {
                        Ok(()) => {
                            tracing::info!(endpoint = %wanted, previous = %current, "span export re-pointed");
                            current = wanted;
                        }
                        Err(e) => {
                            tracing::error!(endpoint = %wanted, error = %e, "cannot re-point span export; keeping the current endpoint")
                        }
                    }
                }
                if live.changed().await.is_err() {
                    return;
                }
            }
        }))
    }

    /// Delivers every span queued so far (exchanges still in their join window are not spans
    /// yet; see [`Correlator::shutdown`]).
    pub async fn flush(&self) -> Result<()> {
        match &self.exporter {
            Some(e) => e.flush().await,
            None => Ok(()),
        }
    }

    /// Marks the service not ready and delivers queued spans (bounded by the export shutdown
    /// timeout). Stop the gRPC server first so no new sessions arrive meanwhile.
    pub async fn shutdown(self) -> Result<()> {
        self.api.ready.store(false, Ordering::Relaxed);
        // Live feeds end, or the HTTP server would wait for them forever.
        self.api.closing.raise();
        self.ticker.abort();
        // The aborted task's only outcome is its cancellation; awaiting it drops its handle.
        let _ = self.ticker.await;
        // Exchanges still in their join window become spans now rather than never.
        self.ingest.drain();
        // The ingest service holds an export handle; drop ours so only the exporter's own
        // bookkeeping keeps the queue alive.
        drop(self.ingest);
        match self.exporter {
            Some(e) => e.shutdown().await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{OtlpReceiver, SessionBuilder};
    use std::time::Duration;

    #[tokio::test]
    async fn end_to_end_session_to_span_and_api() -> anyhow::Result<()> {
        let receiver = OtlpReceiver::start().await?;
        let mut config = Config::default();
        if let Some(e) = config.export.as_mut() {
            e.endpoint = receiver.endpoint();
            e.batch_timeout = Duration::from_secs(60); // only shutdown's flush may deliver
        }
        config.node_name = Some("node-c".into());
        let correlator = Correlator::new(config)?;
        correlator
            .ingest()
            .accept(SessionBuilder::new("e2e").trace([5; 16], [6; 8]).build());
        assert_eq!(correlator.store().len(), 1);
        correlator.shutdown().await?;
        let rs = receiver.resource_spans();
        assert_eq!(rs.len(), 1, "one export request expected, saw {rs:?}");
        let spans = receiver.spans();
        assert_eq!(spans.len(), 1, "shutdown must deliver the queued span");
        assert_eq!(spans[0].trace_id, vec![5; 16]);
        let resource = format!("{:?}", rs[0].resource);
        for want in [
            "service.name",
            "clovisor",
            "k8s.node.name",
            "node-c",
            "telemetry.sdk.name",
        ] {
            assert!(resource.contains(want), "resource lacks {want}: {resource}");
        }
        Ok(())
    }

    /// A traced pod's flood of servers through ingest, the join and `/metrics`: every RED and
    /// flow family stops at its bound, the rest is counted folded into the overflow series.
    #[tokio::test]
    async fn a_flood_of_label_sets_is_bounded_in_the_served_metrics() -> anyhow::Result<()> {
        use axum::body::Body;
        use axum::http::Request;
        use clovisor_runtime::series::MAX_SERIES_PER_FAMILY;
        use tower::ServiceExt;
        let config = Config {
            export: None,
            ..Config::default()
        };
        let correlator = Correlator::new(config)?;
        let flood = MAX_SERIES_PER_FAMILY + 100;
        for i in 0..flood {
            correlator.ingest().accept(
                SessionBuilder::new(&format!("f{i}"))
                    .server_workload(&format!("n{}", i % 100), &format!("w{}", i / 100))
                    .build(),
            );
        }
        // Close every join window.
        correlator
            .ingest()
            .tick_at(std::time::Instant::now() + Duration::from_secs(3600));
        let response = correlator
            .metrics_router()
            .oneshot(Request::get("/metrics").body(Body::empty())?)
            .await?;
        let body = axum::body::to_bytes(response.into_body(), 64 << 20).await?;
        let text = String::from_utf8(body.to_vec())?;
        let folded = flood - (MAX_SERIES_PER_FAMILY - 1);
        for family in [
            "clovisor_http_requests_total",
            "clovisor_flow_exchanges_total",
        ] {
            let prefix = format!("{family}{{");
            let series = text.lines().filter(|l| l.starts_with(&prefix)).count();
            assert_eq!(series, MAX_SERIES_PER_FAMILY, "series of {family} served");
            let want =
                format!(r#"clovisor_metric_series_overflow_total{{metric="{family}"}} {folded}"#);
            assert!(text.contains(&want), "/metrics lacks {want}");
        }
        Ok(())
    }

    /// Spans of two workloads arrive at a real OTLP receiver under two services (one
    /// `ResourceSpans` each), and an exchange seen at both ends also as the caller's CLIENT
    /// span, parent of the SERVER span, under the caller's service.
    #[tokio::test]
    async fn spans_arrive_under_one_service_per_workload() -> anyhow::Result<()> {
        use clovisor_proto::common::v1::{PointKind, Side};
        use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
        let receiver = OtlpReceiver::start().await?;
        let mut config = Config::default();
        if let Some(e) = config.export.as_mut() {
            e.endpoint = receiver.endpoint();
            e.batch_timeout = Duration::from_secs(60);
        }
        let correlator = Correlator::new(config)?;
        correlator.ingest().accept(
            SessionBuilder::new("to-api")
                .pods("frontend-0", "api-0")
                .server_workload("shop", "api")
                .build(),
        );
        // A pod selected by a Kubernetes Service: named by the Service, not its workload.
        correlator.ingest().accept(
            SessionBuilder::new("to-checkout")
                .pods("frontend-0", "checkout-v2-0")
                .server_workload("shop", "checkout-v2")
                .services("frontend", "checkout")
                .build(),
        );
        // Seen at the server's veth and at the client's socket: two views of one exchange.
        correlator.ingest().accept(
            SessionBuilder::new("to-web")
                .with(|s| {
                    let mut at_client = s.observations[0].clone();
                    at_client.kind = PointKind::Socket as i32;
                    at_client.side = Side::Client as i32;
                    at_client.interface.clear();
                    s.observations.push(at_client);
                })
                .build(),
        );
        correlator.ingest().drain();
        correlator.shutdown().await?;

        let mut by_service: Vec<(String, String, Vec<String>)> = receiver
            .resource_spans()
            .iter()
            .map(|rs| {
                let names = rs
                    .scope_spans
                    .iter()
                    .flat_map(|ss| ss.spans.iter())
                    .map(|s| format!("{:?}", SpanKind::try_from(s.kind).unwrap_or_default()))
                    .collect();
                (
                    crate::testing::resource_attribute(rs, "service.name"),
                    crate::testing::resource_attribute(rs, "service.namespace"),
                    names,
                )
            })
            .collect();
        by_service.sort();
        assert_eq!(
            by_service,
            [
                ("api".into(), "shop".into(), vec!["Server".into()]),
                ("checkout".into(), "shop".into(), vec!["Server".into()]),
                ("client".into(), "default".into(), vec!["Client".into()]),
                ("web-0".into(), "default".into(), vec!["Server".into()]),
            ],
            "one ResourceSpans per service: the Kubernetes Service, else the workload, else the pod"
        );
        let checkout = receiver
            .spans()
            .into_iter()
            .find(|s| {
                crate::testing::string_attribute(s, "k8s.pod.name").as_deref()
                    == Some("checkout-v2-0")
            })
            .expect("the span of checkout-v2-0");
        assert_eq!(
            crate::testing::string_attribute(&checkout, "peer.service").as_deref(),
            Some("frontend"),
            "peer.service is the caller's Kubernetes Service"
        );
        let spans = receiver.spans();
        let server = spans
            .iter()
            .find(|s| {
                s.kind == SpanKind::Server as i32
                    && crate::testing::string_attribute(s, "k8s.pod.name").as_deref()
                        == Some("web-0")
            })
            .expect("the SERVER span of web-0");
        let client = spans
            .iter()
            .find(|s| s.kind == SpanKind::Client as i32)
            .expect("the CLIENT span");
        assert_eq!(
            server.parent_span_id, client.span_id,
            "the caller's span is the parent"
        );
        assert_eq!(server.trace_id, client.trace_id);
        assert_ne!(server.span_id, client.span_id);
        assert_eq!(
            crate::testing::string_attribute(server, "peer.service").as_deref(),
            Some("client"),
            "the server span names the calling service"
        );
        assert_eq!(
            crate::testing::string_attribute(client, "peer.service").as_deref(),
            Some("web-0"),
            "the client span names the called service"
        );
        Ok(())
    }

    /// The collector's real delivery sender talks to our ingest server over loopback TCP.
    #[tokio::test]
    async fn collector_delivery_sender_is_acked_and_stored() -> anyhow::Result<()> {
        use clovisor_proto::delivery::{DeliveryConfig, DeliveryStats, Sender};
        use clovisor_proto::hops::{EncodedSession, SessionConnector, SessionHop};
        use clovisor_proto::tls::ClientTransport;

        let correlator = Correlator::new(Config {
            export: None,
            ..Config::default()
        })?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(correlator.ingest_server())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let sender = Sender::new(
            SessionHop {
                sender: "collector-test".into(),
            },
            SessionConnector::new(
                ClientTransport::loopback().lazy_channel(&format!("http://{addr}"))?,
            ),
            DeliveryConfig {
                max_batch_items: 4,
                flush_interval: Duration::from_millis(10),
                ..DeliveryConfig::default()
            },
        );
        let stats = sender.stats();
        let (tx, rx) = tokio::sync::mpsc::channel(32);
        for i in 0..10 {
            tx.send(EncodedSession::of(
                &SessionBuilder::new(&format!("d{i}")).build(),
            ))
            .await?;
        }
        drop(tx);
        tokio::time::timeout(
            Duration::from_secs(10),
            sender.run(rx, std::future::pending()),
        )
        .await?;
        server.abort();
        assert_eq!(
            DeliveryStats::get(&stats.items_acked),
            10,
            "every delivered session must be acknowledged"
        );
        assert_eq!(correlator.store().len(), 10, "every session stored once");
        Ok(())
    }
}
