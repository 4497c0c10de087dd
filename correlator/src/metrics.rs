//! Every metric the correlator exposes, named in one place.
//!
//! Label cardinality is bounded by construction:
//! - `method`: the nine standard HTTP methods, else `OTHER`;
//! - `status_code`: `100`-`599`, else `invalid` (incomplete exchanges have none and are
//!   labelled `invalid` too);
//! - `namespace`: the server's namespace — bounded by the cluster's namespaces;
//! - `workload`: the server's workload (Deployment, StatefulSet, …), else its pod name. Pod names
//!   churn with every rollout, so the fallback can grow; both `namespace` and `workload` are
//!   therefore capped at [`MAX_LABEL_VALUES`] distinct values each for the life of the process,
//!   after which new values are reported as `other` (see [`clovisor_runtime::workloads`], shared
//!   with the collector's flow metrics).
//!
//! Series of `clovisor_http_*` are at most 10 methods x 501 codes x 1000 namespaces x 1000
//! workloads in theory; in practice a workload answers with a handful of codes and methods.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use clovisor_runtime::drops::Drops;

use crate::record::CorrelatedSession;

/// Loss-accounting stage of session ingest: sessions received = stored + duplicates dropped.
pub const STAGE_CORRELATOR: &str = "correlator";
/// Loss-accounting stage of span export: spans offered = exported + dropped + queued.
pub const STAGE_EXPORT: &str = "export";

use clovisor_runtime::workloads::{End, Workloads};
pub use clovisor_runtime::workloads::{FlowLabels, MAX_LABEL_VALUES, OUTSIDE};

/// Bucket bounds of `clovisor_http_request_duration_seconds`, 0.5 ms to 10 s.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Labels of the RED metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Standard method or `OTHER`.
    pub method: String,
    /// `100`-`599` or `invalid`.
    pub status_code: String,
    /// Server namespace, `unknown` or `other`.
    pub namespace: String,
    /// Server workload or pod, `unknown` or `other`.
    pub workload: String,
}

/// Labels of `clovisor_correlator_ingest_batches_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BatchLabels {
    /// `processed` or `duplicate`.
    pub result: &'static str,
}

/// Labels of `clovisor_flow_bytes_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowBytesLabels {
    /// The workloads.
    #[prometheus(flatten)]
    pub flow: FlowLabels,
    /// `request` (client to server) or `response`.
    pub direction: &'static str,
}

/// Labels of `clovisor_correlator_join_observations_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JoinLabels {
    /// `opened`, `joined`, `late`, `conflict`, `ambiguous` or `duplicate`.
    pub outcome: &'static str,
}

/// Labels of `clovisor_correlator_join_evictions_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EvictionLabels {
    /// `open_early` or `retained_early`.
    pub reason: &'static str,
}

/// Labels of `clovisor_correlator_exchange_points_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PointsLabels {
    /// Observations the exported exchange had: `1` to `5`, or `more`.
    pub points: &'static str,
}

/// Labels of `clovisor_correlator_invalid_trace_context_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContextLabels {
    /// `trace_id` or `parent_span_id`.
    pub field: &'static str,
}

/// Why a span was dropped before reaching the OTLP endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The export queue was full.
    QueueFull,
    /// The endpoint kept failing with transient errors for longer than allowed.
    RetriesExhausted,
    /// The endpoint refused the batch with a permanent error.
    Rejected,
    /// Shutdown's deadline passed with the span still queued.
    Shutdown,
}

impl DropReason {
    fn label(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::RetriesExhausted => "retries_exhausted",
            Self::Rejected => "rejected",
            Self::Shutdown => "shutdown",
        }
    }
}

/// A session endpoint as a flow end.
fn end_of(e: &clovisor_proto::session::v1::Endpoint) -> End<'_> {
    End {
        pod: &e.pod,
        namespace: &e.namespace,
        workload: &e.workload,
    }
}

/// The correlator's metrics; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<HttpLabels, Histogram>,
    sessions_received: Counter,
    sessions_stored: Counter,
    sessions_evicted: Counter,
    store_sessions: Gauge,
    batches: Family<BatchLabels, Counter>,
    invalid_context: Family<ContextLabels, Counter>,
    join_observations: Family<JoinLabels, Counter>,
    join_evictions: Family<EvictionLabels, Counter>,
    join_open: Gauge,
    join_held: Gauge,
    exchange_points: Family<PointsLabels, Counter>,
    flow_exchanges: Family<FlowLabels, Counter>,
    flow_bytes: Family<FlowBytesLabels, Counter>,
    flow_retransmits: Family<FlowLabels, Counter>,
    spans_exported: Counter,
    export_failures: Counter,
    export_queue: Gauge,
    dropped: Drops,
    workloads: Workloads,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

impl Metrics {
    /// Fresh, unregistered metrics.
    pub fn new() -> Self {
        Self::with_drops(Drops::default())
    }

    /// Fresh, unregistered metrics counting losses into `drops`, shared with other stages.
    pub fn with_drops(drops: Drops) -> Self {
        Self {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(duration_histogram),
            sessions_received: Counter::default(),
            sessions_stored: Counter::default(),
            sessions_evicted: Counter::default(),
            store_sessions: Gauge::default(),
            batches: Family::default(),
            invalid_context: Family::default(),
            join_observations: Family::default(),
            join_evictions: Family::default(),
            join_open: Gauge::default(),
            join_held: Gauge::default(),
            exchange_points: Family::default(),
            flow_exchanges: Family::default(),
            flow_bytes: Family::default(),
            flow_retransmits: Family::default(),
            spans_exported: Counter::default(),
            export_failures: Counter::default(),
            export_queue: Gauge::default(),
            dropped: drops,
            workloads: Workloads::default(),
        }
    }

    /// Adds every metric to `registry` (counters get their `_total` suffix there), except the
    /// loss accounting shared with other stages, which the process registers once.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "clovisor_http_requests",
            "HTTP exchanges observed, by server",
            self.http_requests.clone(),
        );
        registry.register(
            "clovisor_http_request_duration_seconds",
            "HTTP exchange duration from request start to response end",
            self.http_duration.clone(),
        );
        registry.register(
            "clovisor_correlator_sessions_received",
            "Sessions received from collectors",
            self.sessions_received.clone(),
        );
        registry.register(
            "clovisor_correlator_sessions_stored",
            "Sessions stored for the REST API",
            self.sessions_stored.clone(),
        );
        registry.register(
            "clovisor_correlator_sessions_evicted",
            "Sessions evicted from the full store",
            self.sessions_evicted.clone(),
        );
        registry.register(
            "clovisor_correlator_store_sessions",
            "Sessions held in the store now",
            self.store_sessions.clone(),
        );
        registry.register(
            "clovisor_correlator_ingest_batches",
            "Session batches received, processed or acknowledged as duplicates",
            self.batches.clone(),
        );
        registry.register(
            "clovisor_correlator_invalid_trace_context",
            "Sessions whose wire trace context had a malformed id, which was ignored",
            self.invalid_context.clone(),
        );
        registry.register(
            "clovisor_correlator_join_observations",
            "Sessions (one point's view of an exchange) offered to the join, by outcome",
            self.join_observations.clone(),
        );
        registry.register(
            "clovisor_correlator_join_evictions",
            "Exchanges that left the join state early because it was full",
            self.join_evictions.clone(),
        );
        registry.register(
            "clovisor_correlator_join_open",
            "Exchanges waiting for their join window to close",
            self.join_open.clone(),
        );
        registry.register(
            "clovisor_correlator_join_held",
            "Exchanges held by the join (open, or retained for late observations)",
            self.join_held.clone(),
        );
        registry.register(
            "clovisor_correlator_exchange_points",
            "Exchanges made ready, by the number of observations merged into each",
            self.exchange_points.clone(),
        );
        registry.register(
            "clovisor_flow_exchanges",
            "Request/response exchanges between workloads",
            self.flow_exchanges.clone(),
        );
        registry.register(
            "clovisor_flow_bytes",
            "Payload bytes of exchanges between workloads, by direction",
            self.flow_bytes.clone(),
        );
        registry.register(
            "clovisor_flow_retransmits",
            "TCP retransmissions seen in exchanges between workloads (the most any one point saw)",
            self.flow_retransmits.clone(),
        );
        registry.register(
            "clovisor_correlator_spans_exported",
            "Spans accepted by the OTLP endpoint",
            self.spans_exported.clone(),
        );
        registry.register(
            "clovisor_correlator_export_failures",
            "Failed OTLP export attempts, retried or not",
            self.export_failures.clone(),
        );
        registry.register(
            "clovisor_correlator_export_queue_spans",
            "Spans waiting for export",
            self.export_queue.clone(),
        );
    }

    /// Counts one session received from a collector.
    pub fn received_session(&self) {
        self.sessions_received.inc();
        self.dropped.received(STAGE_CORRELATOR, 1);
    }

    /// Counts what the join did with one session.
    pub fn join_outcome(&self, outcome: crate::join::Outcome) {
        self.join_observations
            .get_or_create(&JoinLabels {
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Counts an early eviction from the join state.
    pub fn join_eviction(&self, eviction: crate::join::Eviction) {
        self.join_evictions
            .get_or_create(&EvictionLabels {
                reason: eviction.label(),
            })
            .inc();
    }

    /// Records the join state's size.
    pub fn join_state(&self, open: usize, held: usize) {
        self.join_open.set(i64::try_from(open).unwrap_or(i64::MAX));
        self.join_held.set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    /// Joins counted so far with `outcome` (for tests and logs).
    pub fn join_count(&self, outcome: crate::join::Outcome) -> u64 {
        self.join_observations
            .get_or_create(&JoinLabels {
                outcome: outcome.label(),
            })
            .get()
    }

    /// Counts the RED metrics of one exchange, once, when its join window has closed.
    pub fn observe_session(&self, rec: &CorrelatedSession) {
        let points = match rec.session.observations.len() {
            0 | 1 => "1",
            2 => "2",
            3 => "3",
            4 => "4",
            5 => "5",
            _ => "more",
        };
        self.exchange_points
            .get_or_create(&PointsLabels { points })
            .inc();
        let s = &rec.session;
        let http = s.http.as_ref();
        let server = s.server.as_ref();
        let labels = HttpLabels {
            method: method_label(http.map_or("", |h| h.method.as_str())).to_owned(),
            status_code: status_label(if s.incomplete {
                0
            } else {
                http.map_or(0, |h| h.status_code)
            }),
            namespace: self
                .workloads
                .namespace(server.map_or("", |e| e.namespace.as_str())),
            workload: self
                .workloads
                .workload(server.map(end_of).unwrap_or_default()),
        };
        self.http_requests.get_or_create(&labels).inc();
        if !s.incomplete && s.end_unix_nanos >= s.start_unix_nanos && s.start_unix_nanos > 0 {
            let secs = (s.end_unix_nanos - s.start_unix_nanos) as f64 / 1e9;
            self.http_duration.get_or_create(&labels).observe(secs);
        }
        self.observe_flow(s);
    }

    /// The workload-to-workload metrics of one exchange.
    fn observe_flow(&self, s: &clovisor_proto::session::v1::Session) {
        // An app talking to its sidecar over loopback inside one pod: no flow between workloads.
        if s.client
            .as_ref()
            .and_then(clovisor_proto::session::v1::Endpoint::addr)
            .is_some_and(|a| a.is_loopback())
        {
            return;
        }
        let flow = self
            .workloads
            .flow(s.client.as_ref().map(end_of), s.server.as_ref().map(end_of));
        self.flow_exchanges.get_or_create(&flow).inc();
        let bytes = s.bytes.unwrap_or_default();
        for (direction, n) in [("request", bytes.request), ("response", bytes.response)] {
            if n > 0 {
                self.flow_bytes
                    .get_or_create(&FlowBytesLabels {
                        flow: flow.clone(),
                        direction,
                    })
                    .inc_by(n);
            }
        }
        // Every point on the path sees a retransmitted segment: the most any one saw, not the sum.
        let retransmits = s
            .observations
            .iter()
            .map(|o| o.retransmits)
            .max()
            .unwrap_or(0);
        if retransmits > 0 {
            self.flow_retransmits
                .get_or_create(&flow)
                .inc_by(u64::from(retransmits));
        }
    }

    /// Counts a session received again (same id as a stored one) and dropped.
    pub fn duplicate_session(&self) {
        self.dropped.count(STAGE_CORRELATOR, "duplicate", 1);
    }

    /// Counts a session stored — on its own or merged into the exchange it belongs to — and the
    /// evictions it caused; `len` is the store's size now.
    pub fn stored(&self, evicted: usize, len: usize) {
        self.sessions_stored.inc();
        // Every session received is stored (evictions make room; they are not losses of
        // the pipeline, which has delivered the session by then).
        self.dropped.emitted(STAGE_CORRELATOR, 1);
        self.sessions_evicted.inc_by(evicted as u64);
        self.store_sessions
            .set(i64::try_from(len).unwrap_or(i64::MAX));
    }

    /// Counts a received batch, `duplicate` when it had been processed before.
    pub fn batch(&self, duplicate: bool) {
        let result = if duplicate { "duplicate" } else { "processed" };
        self.batches.get_or_create(&BatchLabels { result }).inc();
    }

    /// Counts a malformed wire trace context field.
    pub fn invalid_context(&self, field: &'static str) {
        self.invalid_context
            .get_or_create(&ContextLabels { field })
            .inc();
    }

    /// Counts spans the endpoint accepted.
    pub fn spans_exported(&self, n: u64) {
        self.spans_exported.inc_by(n);
        self.dropped.emitted(STAGE_EXPORT, n);
    }

    /// Counts a failed export attempt.
    pub fn export_failure(&self) {
        self.export_failures.inc();
    }

    /// Records the export queue's length.
    pub fn export_queue(&self, len: usize) {
        self.export_queue
            .set(i64::try_from(len).unwrap_or(i64::MAX));
        self.dropped
            .set_buffered(STAGE_EXPORT, u64::try_from(len).unwrap_or(u64::MAX));
    }

    /// Counts a span handed to the exporter (queued or dropped at once).
    pub fn span_offered(&self) {
        self.dropped.received(STAGE_EXPORT, 1);
    }

    /// Counts spans dropped by the exporter.
    pub fn dropped_spans(&self, reason: DropReason, n: u64) {
        self.dropped.count("export", reason.label(), n);
    }

    /// Spans dropped so far for `reason` (for tests and logs).
    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.dropped.get("export", reason.label())
    }

    /// The shared `clovisor_dropped_total` family, for other stages in the same process.
    pub fn drops(&self) -> Drops {
        self.dropped.clone()
    }

    /// Spans exported so far.
    pub fn exported_count(&self) -> u64 {
        self.spans_exported.get()
    }

    /// Failed export attempts so far.
    pub fn export_failure_count(&self) -> u64 {
        self.export_failures.get()
    }
}

/// The `method` label: a standard method, else `OTHER`.
pub fn method_label(method: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("OTHER")
}

/// The `status_code` label: `100`-`599`, else `invalid`.
pub fn status_label(code: u32) -> String {
    if (100..600).contains(&code) {
        code.to_string()
    } else {
        "invalid".to_owned()
    }
}

/// Renders `registry` as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    clovisor_runtime::encode_metrics(registry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SessionBuilder;

    fn observe(m: &Metrics, b: SessionBuilder) {
        m.received_session();
        m.observe_session(&CorrelatedSession::new(b.build()).0);
    }

    #[test]
    fn exposes_red_series_with_bounded_labels() {
        let m = Metrics::new();
        let mut reg = Registry::default();
        m.register(&mut reg);
        // The process registers the loss accounting its stages share.
        m.dropped.register(&mut reg);
        observe(
            &m,
            SessionBuilder::new("a")
                .method("GET")
                .status(200)
                .server_workload("shop", "web"),
        );
        observe(
            &m,
            SessionBuilder::new("b")
                .method("BREW")
                .status(999)
                .server_workload("shop", "web"),
        );
        m.dropped_spans(DropReason::QueueFull, 3);
        let text = encode(&reg);
        for want in [
            r#"clovisor_http_requests_total{method="GET",status_code="200",namespace="shop",workload="web"} 1"#,
            r#"clovisor_http_requests_total{method="OTHER",status_code="invalid",namespace="shop",workload="web"} 1"#,
            r#"clovisor_http_request_duration_seconds_bucket{le="0.0005",method="GET",status_code="200",namespace="shop",workload="web"}"#,
            "clovisor_correlator_sessions_received_total 2",
            r#"clovisor_dropped_total{stage="export",reason="queue_full"} 3"#,
            "# EOF",
        ] {
            assert!(
                text.contains(want),
                "metrics text lacks {want:?}; got:\n{text}"
            );
        }
        assert!(
            !text.contains("BREW"),
            "raw unknown method must not become a label:\n{text}"
        );
    }

    #[test]
    fn flows_between_workloads_and_to_the_outside() {
        let m = Metrics::new();
        let mut reg = Registry::default();
        m.register(&mut reg);
        observe(
            &m,
            SessionBuilder::new("a")
                .namespaces("shop", "shop")
                .server_workload("shop", "web")
                .with(|s| {
                    if let Some(c) = s.client.as_mut() {
                        c.workload = "cart".into();
                    }
                    s.observations[0].retransmits = 2;
                    let mut second = s.observations[0].clone();
                    second.retransmits = 3;
                    s.observations.push(second);
                }),
        );
        observe(
            &m,
            SessionBuilder::new("b").with(|s| {
                if let Some(srv) = s.server.as_mut() {
                    srv.pod.clear();
                    srv.namespace.clear();
                }
            }),
        );
        let text = encode(&reg);
        for want in [
            r#"clovisor_flow_exchanges_total{client_namespace="shop",client_workload="cart",server_namespace="shop",server_workload="web"} 1"#,
            r#"clovisor_flow_bytes_total{client_namespace="shop",client_workload="cart",server_namespace="shop",server_workload="web",direction="request"} 120"#,
            r#"clovisor_flow_bytes_total{client_namespace="shop",client_workload="cart",server_namespace="shop",server_workload="web",direction="response"} 612"#,
            r#"clovisor_flow_retransmits_total{client_namespace="shop",client_workload="cart",server_namespace="shop",server_workload="web"} 3"#,
            r#"clovisor_flow_exchanges_total{client_namespace="default",client_workload="client",server_namespace="outside",server_workload="outside"} 1"#,
        ] {
            assert!(
                text.contains(want),
                "metrics text lacks {want:?}; got:\n{text}"
            );
        }
    }

    #[test]
    fn duration_lands_in_the_right_bucket() {
        let m = Metrics::new();
        let mut reg = Registry::default();
        m.register(&mut reg);
        // Builder sessions last 3 ms.
        observe(
            &m,
            SessionBuilder::new("a")
                .method("GET")
                .status(200)
                .server_workload("ns", "w"),
        );
        let text = encode(&reg);
        let bucket = |le: &str| {
            format!(
                r#"clovisor_http_request_duration_seconds_bucket{{le="{le}",method="GET",status_code="200",namespace="ns",workload="w"}} "#
            )
        };
        assert!(
            text.contains(&(bucket("0.0025") + "0")),
            "3 ms is above 2.5 ms:\n{text}"
        );
        assert!(
            text.contains(&(bucket("0.005") + "1")),
            "3 ms is below 5 ms:\n{text}"
        );
    }

    #[test]
    fn label_helpers() {
        assert_eq!(method_label("PATCH"), "PATCH");
        assert_eq!(method_label("get"), "OTHER", "methods are case-sensitive");
        assert_eq!(status_label(599), "599");
        assert_eq!(status_label(600), "invalid");
        assert_eq!(status_label(0), "invalid");
    }
}
