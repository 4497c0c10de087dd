//! Every metric the correlator exposes, named in one place.
//!
//! Label cardinality is bounded by construction:
//! - `method`: the nine standard HTTP methods, else `OTHER`;
//! - `status_code`: `100`-`599`, else `invalid` (incomplete exchanges have none and are
//!   labelled `invalid` too);
//! - `protocol`: the session's protocol (`http1`, `http2`, `grpc`, `unknown`);
//! - `namespace`: the server's namespace — bounded by the cluster's namespaces;
//! - `workload`: the server's workload (Deployment, StatefulSet, …), else its pod name. Pod names
//!   churn with every rollout, so the fallback can grow; both `namespace` and `workload` are
//!   therefore capped at [`MAX_LABEL_VALUES`] distinct values each for the life of the process,
//!   after which new values are reported as `other` (see [`clovisor_runtime::workloads`], shared
//!   with the collector's flow metrics).
//!
//! - `question_type` (DNS): the type's mnemonic for the common types (A, AAAA, CNAME, MX, NS,
//!   PTR, SOA, SRV, TXT, ANY, AXFR, IXFR, HTTPS, SVCB, CAA, DS, DNSKEY), else `other`;
//! - `response_code` (DNS): the 4-bit RCODE's name or `RCODE<n>` (16 values), `none` when no
//!   answer was seen. The name asked about is never a label.
//!
//! The label caps alone would allow 10 methods x 501 codes x 1000 namespaces x 1000 workloads
//! series of `clovisor_http_*`; every family with a namespace, workload or analyzer label is
//! therefore bounded in series too ([`clovisor_runtime::series`]): beyond the bound, new label
//! sets count into the family's `overflow` series and in
//! `clovisor_metric_series_overflow_total{metric}`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::hash::Hasher;
use std::sync::{Mutex, OnceLock};

use clovisor_proto::session::v1::Endpoint;
use clovisor_runtime::drops::Drops;
use clovisor_runtime::series::{max_label_value_bytes, BoundedFamily, SeriesHandle, OVERFLOW};
use rustc_hash::{FxHashMap, FxHasher};

use crate::record::CorrelatedSession;

/// Loss-accounting stage of session ingest: sessions received = stored + duplicates dropped.
pub const STAGE_CORRELATOR: &str = "correlator";
/// Loss-accounting stage of the join: views (sessions) stored and offered to the join = views
/// in exchanges made ready (exported, counted in the metrics) + merged late (`late`: in the
/// REST API, not in the exchange's span nor metrics) + in exchanges still open.
pub const STAGE_JOIN: &str = "join";
/// Loss-accounting stage of span export: spans offered = exported + dropped + queued.
pub const STAGE_EXPORT: &str = "export";

use crate::equal::same;
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
    /// The session's protocol: `http1`, `http2`, `grpc`, else `unknown`.
    pub protocol: &'static str,
}

/// Labels of the database RED metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DbLabels {
    /// `redis`, `postgresql`, `mysql`.
    pub system: &'static str,
    /// A known operation (`SELECT`, `GET`, ...), `_OTHER`, or empty when none was decoded.
    pub operation: &'static str,
    /// `ok`, `error` (the server answered with an error) or `incomplete` (no answer seen).
    pub outcome: &'static str,
    /// Server namespace, `unknown` or `other`.
    pub namespace: String,
    /// Server workload or pod, `unknown` or `other`.
    pub workload: String,
}

/// Labels of the user analyzers' RED metrics. The analyzer's fields are never labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnalyzerLabels {
    /// The analyzer's protocol name; past [`MAX_ANALYZER_LABELS`] names, `other`.
    pub analyzer: String,
    /// `ok` (a response was seen) or `incomplete`.
    pub outcome: &'static str,
    /// Server namespace, `unknown` or `other`.
    pub namespace: String,
    /// Server workload or pod, `unknown` or `other`.
    pub workload: String,
}

/// Analyzer names that get their own label value by default (`CLOVISOR_MAX_ANALYZER_LABELS`);
/// later ones are `other`.
pub const MAX_ANALYZER_LABELS: usize = 32;

/// Labels of the DNS RED metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// A common type's mnemonic or `other`.
    pub question_type: &'static str,
    /// `NOERROR`, `NXDOMAIN`, …, `RCODE<n>`, or `none`.
    pub response_code: String,
    /// Server namespace, `unknown` or `other`.
    pub namespace: String,
    /// Server workload or pod, `unknown` or `other`.
    pub workload: String,
}

/// Labels of the Kafka RED metrics: never a topic or client id (chosen by applications).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KafkaLabels {
    /// The API's name (`Produce`, `Fetch`, …), `other` outside the named ones.
    pub api: &'static str,
    /// The error's name (`NONE`, `UNKNOWN_TOPIC_OR_PARTITION`, …), `other` outside the named
    /// ones, `unknown` when not read, `incomplete` without a response.
    pub error: &'static str,
    /// Server namespace, `unknown` or `other`.
    pub namespace: String,
    /// Server workload or pod, `unknown` or `other`.
    pub workload: String,
}

/// Question types that get their own `question_type` label value.
const DNS_LABELLED_TYPES: [u32; 17] = [
    1, 2, 5, 6, 12, 15, 16, 28, 33, 255, 252, 251, 65, 64, 257, 43, 48,
];

/// The `question_type` label: a common type's mnemonic, else `other`.
pub fn dns_type_label(qtype: u32) -> &'static str {
    if DNS_LABELLED_TYPES.contains(&qtype) {
        clovisor_proto::dns::type_name(qtype).unwrap_or("other")
    } else {
        "other"
    }
}

/// Labels of `clovisor_correlator_ingest_batches_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BatchLabels {
    /// `processed`, `duplicate` or `too_large`.
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
fn end_of(e: &Endpoint) -> End<'_> {
    End {
        pod: &e.pod,
        namespace: &e.namespace,
        workload: &e.workload,
    }
}

/// The correlator's metrics; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    http_requests: BoundedFamily<HttpLabels, Counter>,
    http_duration: BoundedFamily<HttpLabels, Histogram, fn() -> Histogram>,
    db_requests: BoundedFamily<DbLabels, Counter>,
    db_duration: BoundedFamily<DbLabels, Histogram, fn() -> Histogram>,
    dns_requests: BoundedFamily<DnsLabels, Counter>,
    dns_duration: BoundedFamily<DnsLabels, Histogram, fn() -> Histogram>,
    analyzer_requests: BoundedFamily<AnalyzerLabels, Counter>,
    analyzer_duration: BoundedFamily<AnalyzerLabels, Histogram, fn() -> Histogram>,
    /// The analyzer names admitted as label values.
    analyzer_names: Mutex<std::collections::BTreeSet<String>>,
    /// Analyzer names kept in `analyzer_names` at most.
    max_analyzer_labels: usize,
    kafka_requests: BoundedFamily<KafkaLabels, Counter>,
    kafka_duration: BoundedFamily<KafkaLabels, Histogram, fn() -> Histogram>,
    sessions_received: Counter,
    counter_views_unjoined: Counter,
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
    flow_exchanges: BoundedFamily<FlowLabels, Counter>,
    flow_bytes: BoundedFamily<FlowBytesLabels, Counter>,
    flow_retransmits: BoundedFamily<FlowLabels, Counter>,
    spans_exported: Counter,
    spans_unsampled: Counter,
    export_failures: Counter,
    export_queue: Gauge,
    dropped: Drops,
    /// `clovisor_received_total` / `clovisor_emitted_total` of the correlator stage, kept.
    correlator_received: Counter,
    correlator_emitted: Counter,
    /// The join stage's input and output, and where the join's own counts stood when last
    /// copied (ready views, late views).
    join_received: Counter,
    join_emitted: Counter,
    join_seen: [std::sync::atomic::AtomicU64; 3],
    workloads: Workloads,
    /// Series handles of the label sets seen, so an exchange costs no label strings and no
    /// family look-up (see [`LabelCache`]).
    red: LabelCache<RedKey, RedHandles>,
    flows: LabelCache<FlowKey, FlowHandles>,
    outcomes: [OnceLock<Counter>; OUTCOMES],
    points: [OnceLock<Counter>; 6],
}

/// What offers to the join did, counted in plain integers while the join is locked and added to
/// the shared counters once for all of them ([`Metrics::offered`]): each count a shared counter
/// took one at a time was an atomic read-modify-write (and an eviction's a label look-up), about
/// ten per session, where a batch's sessions now make a dozen together.
#[derive(Debug, Default)]
pub struct Offers {
    received: u64,
    stored: u64,
    evicted: u64,
    store_len: Option<usize>,
    outcomes: [u64; OUTCOMES],
    evictions: [u64; crate::join::Eviction::ALL.len()],
}

impl Offers {
    /// A session arrived (decoded, or read by its head).
    pub fn received(&mut self) {
        self.received += 1;
    }

    /// A session was stored — on its own or merged into its exchange — making `evicted`
    /// exchanges leave the store, which holds `len` now.
    pub fn stored(&mut self, evicted: usize, len: usize) {
        self.stored += 1;
        self.evicted = self.evicted.saturating_add(evicted as u64);
        self.store_len = Some(len);
    }

    /// What the join did with a session.
    pub fn outcome(&mut self, outcome: crate::join::Outcome) {
        self.outcomes[outcome.index()] += 1;
    }

    /// An exchange left the join before its time.
    pub fn eviction(&mut self, eviction: crate::join::Eviction) {
        self.evictions[eviction.index()] += 1;
    }
}

/// Label sets whose handles are cached at most; beyond, the cache starts over (the series stay).
const MAX_CACHED_LABEL_SETS: usize = 4096;
/// Join outcomes (`crate::join::Outcome`).
const OUTCOMES: usize = crate::join::Outcome::ALL.len();

/// Handles of series, found by the raw values that decide their labels: the FxHash of the raw
/// values finds the entry and the values themselves confirm it, so a hit allocates nothing. A
/// miss (or a hash shared by two label sets) takes the family look-up; the label values a raw
/// value maps to never change (capped values stay admitted, `other` stays `other`), so a
/// cached handle is always the series the look-up would find.
#[derive(Debug)]
struct LabelCache<K, H> {
    map: Mutex<FxHashMap<u64, (K, H)>>,
}

impl<K, H> Default for LabelCache<K, H> {
    fn default() -> Self {
        Self {
            map: Mutex::new(FxHashMap::default()),
        }
    }
}

impl<K: PartialEq, H> LabelCache<K, H> {
    /// `count` applied to the cached handles of the label set `matches` confirms, under the
    /// cache's lock; `count` back when there are none. The handles are used where they are,
    /// not cloned out and dropped again: each handle is a reference count, and an exchange
    /// counted into half a dozen series made as many atomic increments and decrements of them.
    fn with<R, F: FnOnce(&H) -> R>(
        &self,
        hash: u64,
        matches: impl FnOnce(&K) -> bool,
        count: F,
    ) -> Result<R, F> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&hash).filter(|(k, _)| matches(k)) {
            Some((_, h)) => Ok(count(h)),
            None => Err(count),
        }
    }

    fn put(&self, hash: u64, key: K, handles: H) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_CACHED_LABEL_SETS {
            map.clear();
        }
        map.entry(hash).or_insert((key, handles));
    }
}

/// The `protocol` label of a session's protocol (bounded by the enum).
fn protocol_label(protocol: i32) -> &'static str {
    use clovisor_proto::session::v1::Protocol;
    match Protocol::try_from(protocol) {
        Ok(Protocol::Http1) => "http1",
        Ok(Protocol::Http2) => "http2",
        Ok(Protocol::Grpc) => "grpc",
        _ => "unknown",
    }
}

/// What decides the RED labels of an exchange.
#[derive(Debug, PartialEq)]
struct RedKey {
    method: &'static str,
    protocol: &'static str,
    status: u32,
    namespace: String,
    workload: String,
}

#[derive(Debug, Clone)]
struct RedHandles {
    requests: SeriesHandle<Counter>,
    duration: SeriesHandle<Histogram>,
}

/// What decides the flow labels of an exchange: each end's pod, namespace and workload
/// (`None`: no endpoint).
#[derive(Debug, PartialEq)]
struct FlowKey {
    client: Option<[String; 3]>,
    server: Option<[String; 3]>,
}

#[derive(Debug, Clone)]
struct FlowHandles {
    exchanges: SeriesHandle<Counter>,
    request_bytes: SeriesHandle<Counter>,
    response_bytes: SeriesHandle<Counter>,
    retransmits: SeriesHandle<Counter>,
}

fn fx(parts: &[&str], n: u64) -> u64 {
    let mut h = FxHasher::default();
    for p in parts {
        h.write(p.as_bytes());
        h.write_u8(0xff);
    }
    h.write_u64(n);
    h.finish()
}

fn end_matches(key: &Option<[String; 3]>, end: Option<&Endpoint>) -> bool {
    match (key, end) {
        (None, None) => true,
        (Some([p, n, w]), Some(e)) => {
            same(p, &e.pod) && same(n, &e.namespace) && same(w, &e.workload)
        }
        _ => false,
    }
}

fn end_key(end: Option<&Endpoint>) -> Option<[String; 3]> {
    end.map(|e| [e.pod.clone(), e.namespace.clone(), e.workload.clone()])
}

fn end_parts(end: Option<&Endpoint>) -> [&str; 4] {
    match end {
        Some(e) => ["+", &e.pod, &e.namespace, &e.workload],
        None => ["-", "", "", ""],
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn durations<S: Clone + std::hash::Hash + Eq>() -> Family<S, Histogram, fn() -> Histogram> {
    Family::new_with_constructor(duration_histogram)
}

/// `family` bounded in series, its folded observations counted under `metric`.
fn bounded<S, M, C>(
    family: Family<S, M, C>,
    overflow: S,
    drops: &Drops,
    metric: &'static str,
) -> BoundedFamily<S, M, C>
where
    S: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    BoundedFamily::new(family, overflow, drops.series_overflow(metric))
}

fn overflow_http() -> HttpLabels {
    HttpLabels {
        method: OVERFLOW.to_owned(),
        status_code: OVERFLOW.to_owned(),
        namespace: OVERFLOW.to_owned(),
        workload: OVERFLOW.to_owned(),
        protocol: OVERFLOW,
    }
}

fn overflow_db() -> DbLabels {
    DbLabels {
        system: OVERFLOW,
        operation: OVERFLOW,
        outcome: OVERFLOW,
        namespace: OVERFLOW.to_owned(),
        workload: OVERFLOW.to_owned(),
    }
}

fn overflow_analyzer() -> AnalyzerLabels {
    AnalyzerLabels {
        analyzer: OVERFLOW.to_owned(),
        outcome: OVERFLOW,
        namespace: OVERFLOW.to_owned(),
        workload: OVERFLOW.to_owned(),
    }
}

fn overflow_dns() -> DnsLabels {
    DnsLabels {
        question_type: OVERFLOW,
        response_code: OVERFLOW.to_owned(),
        namespace: OVERFLOW.to_owned(),
        workload: OVERFLOW.to_owned(),
    }
}

fn overflow_kafka() -> KafkaLabels {
    KafkaLabels {
        api: OVERFLOW,
        error: OVERFLOW,
        namespace: OVERFLOW.to_owned(),
        workload: OVERFLOW.to_owned(),
    }
}

fn overflow_flow() -> FlowLabels {
    FlowLabels {
        client_namespace: OVERFLOW.to_owned(),
        client_workload: OVERFLOW.to_owned(),
        server_namespace: OVERFLOW.to_owned(),
        server_workload: OVERFLOW.to_owned(),
    }
}

impl Metrics {
    /// Fresh, unregistered metrics.
    pub fn new() -> Self {
        Self::with_drops(Drops::default())
    }

    /// These metrics, giving at most `n` analyzer names a label value of their own (later ones
    /// are `other`).
    pub fn with_max_analyzer_labels(mut self, n: usize) -> Self {
        self.max_analyzer_labels = n;
        self
    }

    /// Fresh, unregistered metrics counting losses into `drops`, shared with other stages.
    pub fn with_drops(drops: Drops) -> Self {
        Self {
            http_requests: bounded(
                Family::default(),
                overflow_http(),
                &drops,
                "clovisor_http_requests_total",
            ),
            http_duration: bounded(
                durations(),
                overflow_http(),
                &drops,
                "clovisor_http_request_duration_seconds",
            ),
            db_requests: bounded(
                Family::default(),
                overflow_db(),
                &drops,
                "clovisor_db_requests_total",
            ),
            db_duration: bounded(
                durations(),
                overflow_db(),
                &drops,
                "clovisor_db_request_duration_seconds",
            ),
            analyzer_requests: bounded(
                Family::default(),
                overflow_analyzer(),
                &drops,
                "clovisor_analyzer_requests_total",
            ),
            analyzer_duration: bounded(
                durations(),
                overflow_analyzer(),
                &drops,
                "clovisor_analyzer_request_duration_seconds",
            ),
            analyzer_names: Mutex::default(),
            max_analyzer_labels: MAX_ANALYZER_LABELS,
            dns_requests: bounded(
                Family::default(),
                overflow_dns(),
                &drops,
                "clovisor_dns_requests_total",
            ),
            dns_duration: bounded(
                durations(),
                overflow_dns(),
                &drops,
                "clovisor_dns_request_duration_seconds",
            ),
            kafka_requests: bounded(
                Family::default(),
                overflow_kafka(),
                &drops,
                "clovisor_kafka_requests_total",
            ),
            kafka_duration: bounded(
                durations(),
                overflow_kafka(),
                &drops,
                "clovisor_kafka_request_duration_seconds",
            ),
            sessions_received: Counter::default(),
            counter_views_unjoined: Counter::default(),
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
            flow_exchanges: bounded(
                Family::default(),
                overflow_flow(),
                &drops,
                "clovisor_flow_exchanges_total",
            ),
            flow_bytes: bounded(
                Family::default(),
                FlowBytesLabels {
                    flow: overflow_flow(),
                    direction: OVERFLOW,
                },
                &drops,
                "clovisor_flow_bytes_total",
            ),
            flow_retransmits: bounded(
                Family::default(),
                overflow_flow(),
                &drops,
                "clovisor_flow_retransmits_total",
            ),
            spans_exported: Counter::default(),
            spans_unsampled: Counter::default(),
            export_failures: Counter::default(),
            export_queue: Gauge::default(),
            correlator_received: drops.received_counter(STAGE_CORRELATOR),
            correlator_emitted: drops.emitted_counter(STAGE_CORRELATOR),
            join_received: drops.received_counter(STAGE_JOIN),
            join_emitted: drops.emitted_counter(STAGE_JOIN),
            join_seen: Default::default(),
            dropped: drops,
            workloads: Workloads::default(),
            red: LabelCache::default(),
            flows: LabelCache::default(),
            outcomes: Default::default(),
            points: Default::default(),
        }
    }

    /// Adds every metric to `registry` (counters get their `_total` suffix there), except the
    /// loss accounting shared with other stages, which the process registers once.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "clovisor_http_requests",
            "HTTP exchanges observed, by server",
            self.http_requests.family(),
        );
        registry.register(
            "clovisor_http_request_duration_seconds",
            "HTTP exchange duration from request start to response end",
            self.http_duration.family(),
        );
        registry.register(
            "clovisor_db_requests",
            "Database exchanges observed (Redis, PostgreSQL, MySQL), by server",
            self.db_requests.family(),
        );
        registry.register(
            "clovisor_db_request_duration_seconds",
            "Database exchange duration: first request byte to last response byte",
            self.db_duration.family(),
        );
        registry.register(
            "clovisor_analyzer_requests",
            "User analyzer exchanges observed, by analyzer and server",
            self.analyzer_requests.family(),
        );
        registry.register(
            "clovisor_analyzer_request_duration_seconds",
            "User analyzer exchange duration: first request byte to last response byte",
            self.analyzer_duration.family(),
        );
        registry.register(
            "clovisor_dns_requests",
            "DNS queries observed, by question type, response code and server",
            self.dns_requests.family(),
        );
        registry.register(
            "clovisor_dns_request_duration_seconds",
            "DNS query duration from the query to the end of its answer",
            self.dns_duration.family(),
        );
        registry.register(
            "clovisor_kafka_requests",
            "Kafka requests observed, by API, error and server",
            self.kafka_requests.family(),
        );
        registry.register(
            "clovisor_kafka_request_duration_seconds",
            "Kafka request duration from the request to the end of its response",
            self.kafka_duration.family(),
        );
        registry.register(
            "clovisor_correlator_sessions_received",
            "Sessions received from collectors",
            self.sessions_received.clone(),
        );
        registry.register(
            "clovisor_correlator_payloadless_views_unjoined",
            "Exchanges whose join window closed with only counters-only views (a covered pod veth's timings, no payload) and no decoded view (an opaque protocol, or an exchange the socket point missed): not exported as spans, not counted in the RED metrics, not listed by the REST API",
            self.counter_views_unjoined.clone(),
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
            self.flow_exchanges.family(),
        );
        registry.register(
            "clovisor_flow_bytes",
            "Payload bytes of exchanges between workloads, by direction",
            self.flow_bytes.family(),
        );
        registry.register(
            "clovisor_flow_retransmits",
            "TCP retransmissions seen in exchanges between workloads (the most any one point saw)",
            self.flow_retransmits.family(),
        );
        registry.register(
            "clovisor_correlator_spans_exported",
            "Spans accepted by the OTLP endpoint",
            self.spans_exported.clone(),
        );
        registry.register(
            "clovisor_correlator_spans_unsampled",
            "Spans not exported because the sampler (OTEL_TRACES_SAMPLER) left their trace out: by \
             default, exchanges whose trace context on the wire said not sampled",
            self.spans_unsampled.clone(),
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
        self.correlator_received.inc();
    }

    /// Adds what `offers` counted to the shared counters, and empties it: once for all the
    /// sessions a batch offers while the join is locked (see [`Offers`]).
    pub fn offered(&self, offers: &mut Offers) {
        let o = std::mem::take(offers);
        if o.received > 0 {
            self.sessions_received.inc_by(o.received);
            self.correlator_received.inc_by(o.received);
        }
        if o.stored > 0 {
            self.sessions_stored.inc_by(o.stored);
            // Every session received is stored (evictions make room; they are not losses of
            // the pipeline, which has delivered the session by then).
            self.correlator_emitted.inc_by(o.stored);
            self.join_received.inc_by(o.stored);
        }
        if o.evicted > 0 {
            self.sessions_evicted.inc_by(o.evicted);
        }
        if let Some(len) = o.store_len {
            self.store_sessions
                .set(i64::try_from(len).unwrap_or(i64::MAX));
        }
        for (outcome, n) in crate::join::Outcome::ALL.into_iter().zip(o.outcomes) {
            if n > 0 {
                self.outcomes[outcome.index()]
                    .get_or_init(|| {
                        self.join_observations
                            .get_or_create(&JoinLabels {
                                outcome: outcome.label(),
                            })
                            .clone()
                    })
                    .inc_by(n);
            }
        }
        for (eviction, n) in crate::join::Eviction::ALL.into_iter().zip(o.evictions) {
            if n > 0 {
                self.join_evictions
                    .get_or_create(&EvictionLabels {
                        reason: eviction.label(),
                    })
                    .inc_by(n);
            }
        }
    }

    /// Copies the join's own view counts into the `join` stage's accounting: views made ready
    /// and merged late since the last copy, views open now. Called with the join locked, so
    /// copies follow one another in order.
    pub fn join_views(&self, views: crate::join::JoinViews) {
        use std::sync::atomic::Ordering;
        let ready = self.join_seen[0].swap(views.ready, Ordering::Relaxed);
        self.join_emitted.inc_by(views.ready.saturating_sub(ready));
        let late = self.join_seen[1].swap(views.late, Ordering::Relaxed);
        self.dropped
            .count(STAGE_JOIN, "late", views.late.saturating_sub(late));
        let malformed = self.join_seen[2].swap(views.malformed, Ordering::Relaxed);
        self.dropped.count(
            STAGE_JOIN,
            "malformed",
            views.malformed.saturating_sub(malformed),
        );
        self.dropped.set_buffered(STAGE_JOIN, views.open);
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

    /// Early evictions counted so far for `eviction` (for tests and logs).
    pub fn eviction_count(&self, eviction: crate::join::Eviction) -> u64 {
        self.join_evictions
            .get_or_create(&EvictionLabels {
                reason: eviction.label(),
            })
            .get()
    }

    /// Counts the RED metrics of one exchange, once, when its join window has closed.
    pub fn observe_session(&self, rec: &CorrelatedSession) {
        let (i, points) = match rec.session.observations.len() {
            0 | 1 => (0, "1"),
            2 => (1, "2"),
            3 => (2, "3"),
            4 => (3, "4"),
            5 => (4, "5"),
            _ => (5, "more"),
        };
        self.points[i]
            .get_or_init(|| {
                self.exchange_points
                    .get_or_create(&PointsLabels { points })
                    .clone()
            })
            .inc();
        let s = &rec.session;
        if let Some(d) = s.database.as_ref() {
            self.observe_db(s, d);
            self.observe_flow(s);
            return;
        }
        if let Some(a) = s.analyzer.as_ref() {
            self.observe_analyzer(s, &a.name);
            self.observe_flow(s);
            return;
        }
        let count = |red: &RedHandles| {
            red.requests.record().inc();
            if let Some(secs) = exchange_seconds(s) {
                red.duration.record().observe(secs);
            }
        };
        match (&s.dns, &s.kafka) {
            (Some(dns), _) => count(&self.dns_handles(s, dns)),
            (None, Some(kafka)) => count(&self.kafka_handles(s, kafka)),
            (None, None) => self.with_red_handles(s, count),
        }
        self.observe_flow(s);
    }

    /// The analyzer RED metrics of one exchange.
    fn observe_analyzer(&self, s: &clovisor_proto::session::v1::Session, name: &str) {
        let analyzer = {
            let mut names = self
                .analyzer_names
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if names.contains(name) {
                name.to_owned()
            } else if names.len() < self.max_analyzer_labels
                && name.len() <= max_label_value_bytes()
            {
                names.insert(name.to_owned());
                name.to_owned()
            } else {
                "other".to_owned()
            }
        };
        let (namespace, workload) = self.server_labels(s);
        let labels = AnalyzerLabels {
            analyzer,
            outcome: if s.incomplete { "incomplete" } else { "ok" },
            namespace,
            workload,
        };
        self.analyzer_requests.with(&labels, |c| {
            c.inc();
        });
        if let Some(secs) = exchange_seconds(s) {
            self.analyzer_duration.with(&labels, |h| h.observe(secs));
        }
    }

    /// The `namespace` and `workload` labels of `s`'s server, bounded.
    fn server_labels(&self, s: &clovisor_proto::session::v1::Session) -> (String, String) {
        let server = s.server.as_ref();
        (
            self.workloads
                .namespace(server.map_or("", |e| e.namespace.as_str())),
            self.workloads
                .workload(server.map(end_of).unwrap_or_default()),
        )
    }

    /// The database RED metrics of one exchange. (Not cached like HTTP's handles: a label set
    /// is looked up per exchange.)
    fn observe_db(
        &self,
        s: &clovisor_proto::session::v1::Session,
        d: &clovisor_proto::session::v1::Database,
    ) {
        let outcome = if s.incomplete {
            "incomplete"
        } else if crate::view::db_error_type(d).is_some() {
            "error"
        } else {
            "ok"
        };
        let (namespace, workload) = self.server_labels(s);
        let labels = DbLabels {
            system: crate::view::db_system_label(&d.system),
            operation: crate::view::db_operation_label(&d.operation),
            outcome,
            namespace,
            workload,
        };
        self.db_requests.with(&labels, |c| {
            c.inc();
        });
        if let Some(secs) = exchange_seconds(s) {
            self.db_duration.with(&labels, |h| h.observe(secs));
        }
    }

    /// `count` applied to the RED series of `s`'s labels.
    fn with_red_handles(
        &self,
        s: &clovisor_proto::session::v1::Session,
        count: impl FnOnce(&RedHandles),
    ) {
        let http = s.http.as_ref();
        let server = s.server.as_ref();
        let method = method_label(http.map_or("", |h| h.method.as_str()));
        let status = if s.incomplete {
            0
        } else {
            http.map_or(0, |h| h.status_code)
        };
        let status = if (100..600).contains(&status) {
            status
        } else {
            0
        };
        let namespace = server.map_or("", |e| e.namespace.as_str());
        let workload = server.map_or("", |e| {
            if e.workload.is_empty() {
                e.pod.as_str()
            } else {
                e.workload.as_str()
            }
        });
        let protocol = protocol_label(s.protocol);
        let hash = fx(&[method, protocol, namespace, workload], u64::from(status));
        let hit = self.red.with(
            hash,
            |k| {
                same(k.method, method)
                    && same(k.protocol, protocol)
                    && k.status == status
                    && same(&k.namespace, namespace)
                    && same(&k.workload, workload)
            },
            count,
        );
        let Err(count) = hit else {
            return;
        };
        let labels = HttpLabels {
            method: method.to_owned(),
            status_code: status_label(status),
            namespace: self.workloads.namespace(namespace),
            workload: self
                .workloads
                .workload(server.map(end_of).unwrap_or_default()),
            protocol,
        };
        let handles = RedHandles {
            requests: self.http_requests.handle(&labels),
            duration: self.http_duration.handle(&labels),
        };
        let key = RedKey {
            method,
            protocol,
            status,
            namespace: namespace.to_owned(),
            workload: workload.to_owned(),
        };
        count(&handles);
        self.red.put(hash, key, handles);
    }

    /// The DNS RED series of `s`'s labels. Not cached like HTTP's: a label set is built per
    /// exchange (DNS exchanges are small and few next to HTTP's).
    fn dns_handles(
        &self,
        s: &clovisor_proto::session::v1::Session,
        dns: &clovisor_proto::session::v1::Dns,
    ) -> RedHandles {
        let (namespace, workload) = self.server_labels(s);
        let labels = DnsLabels {
            question_type: dns_type_label(dns.question_type),
            response_code: if s.incomplete {
                "none".to_owned()
            } else {
                clovisor_proto::dns::rcode_label(dns.response_code & 0x0f)
            },
            namespace,
            workload,
        };
        RedHandles {
            requests: self.dns_requests.handle(&labels),
            duration: self.dns_duration.handle(&labels),
        }
    }

    /// The Kafka RED series of `s`'s labels, built per exchange as DNS's are.
    fn kafka_handles(
        &self,
        s: &clovisor_proto::session::v1::Session,
        kafka: &clovisor_proto::session::v1::Kafka,
    ) -> RedHandles {
        let (namespace, workload) = self.server_labels(s);
        let labels = KafkaLabels {
            api: clovisor_proto::kafka::api_name(kafka.api_key).unwrap_or("other"),
            error: match kafka.error_code {
                _ if s.incomplete => "incomplete",
                Some(code) => clovisor_proto::kafka::error_name(code).unwrap_or("other"),
                None => "unknown",
            },
            namespace,
            workload,
        };
        RedHandles {
            requests: self.kafka_requests.handle(&labels),
            duration: self.kafka_duration.handle(&labels),
        }
    }

    /// `count` applied to the flow series of `s`'s two ends.
    fn with_flow_handles(
        &self,
        s: &clovisor_proto::session::v1::Session,
        count: impl FnOnce(&FlowHandles),
    ) {
        let (client, server) = (s.client.as_ref(), s.server.as_ref());
        let [a, b, c, d] = end_parts(client);
        let [e, f, g, h] = end_parts(server);
        let hash = fx(&[a, b, c, d, e, f, g, h], 0);
        let hit = self.flows.with(
            hash,
            |k| end_matches(&k.client, client) && end_matches(&k.server, server),
            count,
        );
        let Err(count) = hit else {
            return;
        };
        let flow = self.workloads.flow(client.map(end_of), server.map(end_of));
        let bytes = |direction| {
            self.flow_bytes.handle(&FlowBytesLabels {
                flow: flow.clone(),
                direction,
            })
        };
        let handles = FlowHandles {
            exchanges: self.flow_exchanges.handle(&flow),
            request_bytes: bytes("request"),
            response_bytes: bytes("response"),
            retransmits: self.flow_retransmits.handle(&flow),
        };
        let key = FlowKey {
            client: end_key(client),
            server: end_key(server),
        };
        count(&handles);
        self.flows.put(hash, key, handles);
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
        let bytes = s.bytes.unwrap_or_default();
        // Every point on the path sees a retransmitted segment: the most any one saw, not the sum.
        let retransmits = s
            .observations
            .iter()
            .map(|o| o.retransmits)
            .max()
            .unwrap_or(0);
        self.with_flow_handles(s, |flow| {
            flow.exchanges.record().inc();
            if bytes.request > 0 {
                flow.request_bytes.record().inc_by(bytes.request);
            }
            if bytes.response > 0 {
                flow.response_bytes.record().inc_by(bytes.response);
            }
            if retransmits > 0 {
                flow.retransmits.record().inc_by(u64::from(retransmits));
            }
        });
    }

    /// Counts a session of a batch that did not decode: received and dropped (the rest of its
    /// batch is kept).
    pub fn malformed_session(&self) {
        self.received_session();
        self.dropped.count(STAGE_CORRELATOR, "malformed", 1);
    }

    /// Counts exchanges finished with nothing decoded: only counters-only views joined them.
    pub fn counter_views_unjoined(&self, n: usize) {
        self.counter_views_unjoined
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Counts a session received again (same id as a stored one) and dropped.
    pub fn duplicate_session(&self) {
        self.dropped.count(STAGE_CORRELATOR, "duplicate", 1);
    }

    /// Counts a received batch, `duplicate` when it had been processed before.
    pub fn batch(&self, duplicate: bool) {
        let result = if duplicate { "duplicate" } else { "processed" };
        self.batches.get_or_create(&BatchLabels { result }).inc();
    }

    /// Counts a batch refused for its size (over `CLOVISOR_MAX_MESSAGE_BYTES`): its stream ends
    /// and the collector sends it again on a new one.
    pub fn batch_too_large(&self) {
        self.batches
            .get_or_create(&BatchLabels {
                result: "too_large",
            })
            .inc();
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

    /// Counts spans the sampler left out (never handed to the exporter).
    pub fn spans_unsampled(&self, n: u64) {
        self.spans_unsampled.inc_by(n);
    }

    /// Spans the sampler left out so far.
    pub fn unsampled_count(&self) -> u64 {
        self.spans_unsampled.get()
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

/// How long a complete exchange took, first request byte to last response byte; `None` when
/// incomplete or its times are missing.
fn exchange_seconds(s: &clovisor_proto::session::v1::Session) -> Option<f64> {
    (!s.incomplete && s.end_unix_nanos >= s.start_unix_nanos && s.start_unix_nanos > 0)
        .then(|| (s.end_unix_nanos - s.start_unix_nanos) as f64 / 1e9)
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

    /// Label sets more than a bounded family holds: each server a new (namespace, workload).
    const FLOOD: usize = clovisor_runtime::series::MAX_SERIES_PER_FAMILY + 300;

    /// A session of the `i`th server of a flood.
    fn flooding(i: usize, kind: &str) -> SessionBuilder {
        let b = SessionBuilder::new(&format!("{kind}{i}"))
            .server_workload(&format!("n{}", i % 100), &format!("w{}", i / 100));
        match kind {
            "dns" => b.dns("a.example", 1, 0, &[]),
            "kafka" => b.kafka(0, |k| k.error_code = Some(0)),
            "db" => b.database("redis", |d| d.operation = "GET".into()),
            "analyzer" => b.analyzer("line", &[]),
            _ => b.method("GET").status(200),
        }
    }

    #[test]
    fn offers_counted_apart_reach_every_series_once() {
        use crate::join::{Eviction, Outcome};
        let m = Metrics::new();
        let mut offers = Offers::default();
        for _ in 0..5 {
            offers.received();
        }
        offers.stored(0, 1);
        offers.stored(2, 3);
        offers.stored(1, 2);
        for (i, outcome) in Outcome::ALL.into_iter().enumerate() {
            for _ in 0..=i {
                offers.outcome(outcome);
            }
        }
        offers.eviction(Eviction::RetainedEarly);
        offers.eviction(Eviction::RetainedEarly);
        offers.eviction(Eviction::OpenEarly);
        m.offered(&mut offers);
        m.offered(&mut offers);
        let mut reg = Registry::default();
        m.register(&mut reg);
        m.dropped.register(&mut reg);
        let text = encode(&reg);
        let mut want = vec![
            "clovisor_correlator_sessions_received_total 5".to_owned(),
            "clovisor_correlator_sessions_stored_total 3".to_owned(),
            "clovisor_correlator_sessions_evicted_total 3".to_owned(),
            "clovisor_correlator_store_sessions 2".to_owned(),
            r#"clovisor_received_total{stage="correlator"} 5"#.to_owned(),
            r#"clovisor_emitted_total{stage="correlator"} 3"#.to_owned(),
            r#"clovisor_received_total{stage="join"} 3"#.to_owned(),
            r#"clovisor_correlator_join_evictions_total{reason="retained_early"} 2"#.to_owned(),
            r#"clovisor_correlator_join_evictions_total{reason="open_early"} 1"#.to_owned(),
        ];
        for (i, outcome) in Outcome::ALL.into_iter().enumerate() {
            want.push(format!(
                "clovisor_correlator_join_observations_total{{outcome=\"{}\"}} {}",
                outcome.label(),
                i + 1
            ));
        }
        for line in want {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }

    /// Lines of `family`'s series (`family{...} value`) in the text.
    fn series_lines(text: &str, family: &str) -> usize {
        let prefix = format!("{family}{{");
        text.lines().filter(|l| l.starts_with(&prefix)).count()
    }

    #[test]
    fn every_bounded_family_stays_at_its_bound_under_a_flood_and_counts_what_it_folds() {
        use clovisor_runtime::series::MAX_SERIES_PER_FAMILY;
        for (kind, requests, duration) in [
            (
                "http",
                "clovisor_http_requests_total",
                "clovisor_http_request_duration_seconds",
            ),
            (
                "dns",
                "clovisor_dns_requests_total",
                "clovisor_dns_request_duration_seconds",
            ),
            (
                "kafka",
                "clovisor_kafka_requests_total",
                "clovisor_kafka_request_duration_seconds",
            ),
            (
                "db",
                "clovisor_db_requests_total",
                "clovisor_db_request_duration_seconds",
            ),
            (
                "analyzer",
                "clovisor_analyzer_requests_total",
                "clovisor_analyzer_request_duration_seconds",
            ),
        ] {
            let m = Metrics::new();
            let mut reg = Registry::default();
            m.register(&mut reg);
            m.dropped.register(&mut reg);
            for i in 0..FLOOD {
                observe(&m, flooding(i, kind));
            }
            // Seen again, an admitted label set still counts in its own series.
            observe(&m, flooding(0, kind));
            let text = encode(&reg);
            let folded = FLOOD - (MAX_SERIES_PER_FAMILY - 1);
            for family in [requests, &format!("{duration}_count")] {
                assert_eq!(
                    series_lines(&text, family),
                    MAX_SERIES_PER_FAMILY,
                    "{kind}: series of {family}"
                );
            }
            for metric in [requests, duration] {
                let want = format!(
                    r#"clovisor_metric_series_overflow_total{{metric="{metric}"}} {folded}"#
                );
                assert!(text.contains(&want), "{kind}: lacks {want}");
            }
            let first = r#"namespace="n0",workload="w0""#;
            assert!(
                text.lines()
                    .any(|l| l.starts_with(requests) && l.contains(first) && l.ends_with(" 2")),
                "{kind}: the first server's series counts both its exchanges"
            );
            assert!(
                text.lines().any(|l| l.starts_with(requests)
                    && l.contains(r#"namespace="overflow",workload="overflow""#)
                    && l.ends_with(&format!(" {folded}"))),
                "{kind}: the folded exchanges land in the overflow series"
            );
            // The flows between workloads, by the same servers, are bounded alike.
            for family in [
                "clovisor_flow_exchanges_total",
                "clovisor_flow_bytes_total",
                "clovisor_flow_retransmits_total",
            ] {
                assert_eq!(
                    series_lines(&text, family),
                    MAX_SERIES_PER_FAMILY,
                    "{kind}: series of {family}"
                );
                assert!(
                    text.contains(&format!(
                        r#"clovisor_metric_series_overflow_total{{metric="{family}"}}"#
                    )),
                    "{kind}: {family}'s folds are counted"
                );
            }
        }
    }

    #[test]
    fn analyzer_exchanges_count_by_analyzer_with_a_bounded_name_set() {
        let m = Metrics::new();
        let mut reg = Registry::default();
        m.register(&mut reg);
        observe(
            &m,
            SessionBuilder::new("a")
                .analyzer("line", &[("command", "FETCH")])
                .server_workload("shop", "kv"),
        );
        observe_analyzers(&m, MAX_ANALYZER_LABELS + 3);
        let text = encode(&reg);
        for want in [
            r#"clovisor_analyzer_requests_total{analyzer="line",outcome="ok",namespace="shop",workload="kv"} 1"#,
            r#"clovisor_analyzer_requests_total{analyzer="other",outcome="ok",namespace="shop",workload="kv"} 4"#,
        ] {
            assert!(text.contains(want), "missing {want} in:\n{text}");
        }
        assert!(
            !text.contains("FETCH"),
            "a field value became a label:\n{text}"
        );
        assert!(
            !text.contains("clovisor_http_requests_total{"),
            "an analyzer exchange is no HTTP request:\n{text}"
        );
    }

    /// One exchange each of analyzers `proto0` to `proto{n-1}`, served by `shop/kv`.
    fn observe_analyzers(m: &Metrics, n: usize) {
        for i in 0..n {
            observe(
                m,
                SessionBuilder::new(&format!("n{i}"))
                    .analyzer(&format!("proto{i}"), &[])
                    .server_workload("shop", "kv"),
            );
        }
    }

    #[test]
    fn the_analyzer_name_cap_is_configurable() {
        let m = Metrics::new().with_max_analyzer_labels(2);
        let mut reg = Registry::default();
        m.register(&mut reg);
        observe_analyzers(&m, 5);
        let text = encode(&reg);
        let series = |name: &str, n: u32| {
            format!(
                r#"clovisor_analyzer_requests_total{{analyzer="{name}",outcome="ok",namespace="shop",workload="kv"}} {n}"#
            )
        };
        let wants = [series("proto0", 1), series("proto1", 1), series("other", 3)];
        let missing: Vec<&String> = wants
            .iter()
            .filter(|w| !text.contains(w.as_str()))
            .collect();
        assert!(missing.is_empty(), "missing {missing:?} in:\n{text}");
        assert!(
            !text.contains("proto2"),
            "a third name past a cap of 2:\n{text}"
        );
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
            r#"clovisor_http_requests_total{method="GET",status_code="200",namespace="shop",workload="web",protocol="http1"} 1"#,
            r#"clovisor_http_requests_total{method="OTHER",status_code="invalid",namespace="shop",workload="web",protocol="http1"} 1"#,
            r#"clovisor_http_request_duration_seconds_bucket{le="0.0005",method="GET",status_code="200",namespace="shop",workload="web",protocol="http1"}"#,
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
    fn database_exchanges_count_by_system_bounded_operation_and_outcome() {
        let m = Metrics::new();
        let mut reg = Registry::default();
        m.register(&mut reg);
        let db = |id: &str, system: &str, op: &str, error: &str| {
            let (op, error) = (op.to_owned(), error.to_owned());
            SessionBuilder::new(id)
                .server_workload("shop", "cache")
                .database(system, move |d| {
                    d.operation = op;
                    d.error_code = error;
                })
        };
        observe(&m, db("a", "redis", "GET", ""));
        observe(&m, db("b", "redis", "GET", ""));
        observe(&m, db("c", "postgresql", "CREATE TABLE", "42P07"));
        observe(&m, db("d", "redis", "X-SECRET-CMD-1234", ""));
        let text = encode(&reg);
        for want in [
            r#"clovisor_db_requests_total{system="redis",operation="GET",outcome="ok",namespace="shop",workload="cache"} 2"#,
            r#"clovisor_db_requests_total{system="postgresql",operation="CREATE",outcome="error",namespace="shop",workload="cache"} 1"#,
            r#"clovisor_db_requests_total{system="redis",operation="_OTHER",outcome="ok",namespace="shop",workload="cache"} 1"#,
            r#"clovisor_db_request_duration_seconds_bucket{le="0.0005",system="redis",operation="GET",outcome="ok",namespace="shop",workload="cache"}"#,
        ] {
            assert!(
                text.contains(want),
                "metrics text lacks {want:?}; got:\n{text}"
            );
        }
        assert!(
            !text.contains("SECRET"),
            "an unknown command became a label:\n{text}"
        );
        assert!(
            !text.contains("clovisor_http_requests_total{"),
            "database exchanges are not HTTP requests:\n{text}"
        );
    }

    #[test]
    fn kafka_exchanges_count_by_api_and_error_never_by_topic() {
        let m = Metrics::new();
        let mut reg = Registry::default();
        m.register(&mut reg);
        let kafka = |id: &str, key: u32, error: Option<i32>| {
            SessionBuilder::new(id)
                .kafka(key, |k| {
                    k.topic = "secret-topic".into();
                    k.client_id = "secret-client".into();
                    k.error_code = error;
                })
                .server_workload("streams", "broker")
        };
        observe(&m, kafka("a", 0, Some(0)));
        observe(&m, kafka("b", 0, Some(0)));
        observe(&m, kafka("c", 0, Some(3)));
        observe(&m, kafka("d", 99, Some(4242)));
        observe(&m, kafka("e", 1, None).incomplete());
        observe(&m, kafka("f", 12, None));
        let text = encode(&reg);
        for want in [
            r#"clovisor_kafka_requests_total{api="Produce",error="NONE",namespace="streams",workload="broker"} 2"#,
            r#"clovisor_kafka_requests_total{api="Produce",error="UNKNOWN_TOPIC_OR_PARTITION",namespace="streams",workload="broker"} 1"#,
            r#"clovisor_kafka_requests_total{api="other",error="other",namespace="streams",workload="broker"} 1"#,
            r#"clovisor_kafka_requests_total{api="Fetch",error="incomplete",namespace="streams",workload="broker"} 1"#,
            r#"clovisor_kafka_requests_total{api="Heartbeat",error="unknown",namespace="streams",workload="broker"} 1"#,
            r#"clovisor_kafka_request_duration_seconds_count{api="Produce",error="NONE",namespace="streams",workload="broker"} 2"#,
        ] {
            assert!(
                text.contains(want),
                "metrics text lacks {want:?}; got:\n{text}"
            );
        }
        assert!(
            !text.contains("secret"),
            "topics and client ids are never labels:\n{text}"
        );
        assert!(
            !text.contains("clovisor_http_requests_total{"),
            "Kafka is not counted as HTTP:\n{text}"
        );
    }

    #[test]
    fn dns_exchanges_count_by_type_and_response_code_never_by_name() {
        let m = Metrics::new();
        let mut reg = Registry::default();
        m.register(&mut reg);
        let dns = |id: &str, name: &str, qtype: u32, rcode: u32| {
            SessionBuilder::new(id)
                .dns(name, qtype, rcode, &[])
                .server_workload("kube-system", "coredns")
        };
        observe(&m, dns("a", "secret-host.example", 1, 0));
        observe(&m, dns("b", "other.example", 1, 0));
        observe(&m, dns("c", "gone.example", 28, 3));
        observe(&m, dns("d", "x.example", 65280, 2));
        observe(&m, dns("e", "y.example", 1, 0).incomplete());
        let text = encode(&reg);
        for want in [
            r#"clovisor_dns_requests_total{question_type="A",response_code="NOERROR",namespace="kube-system",workload="coredns"} 2"#,
            r#"clovisor_dns_requests_total{question_type="AAAA",response_code="NXDOMAIN",namespace="kube-system",workload="coredns"} 1"#,
            r#"clovisor_dns_requests_total{question_type="other",response_code="SERVFAIL",namespace="kube-system",workload="coredns"} 1"#,
            r#"clovisor_dns_requests_total{question_type="A",response_code="none",namespace="kube-system",workload="coredns"} 1"#,
            r#"clovisor_dns_request_duration_seconds_count{question_type="A",response_code="NOERROR",namespace="kube-system",workload="coredns"} 2"#,
        ] {
            assert!(
                text.contains(want),
                "metrics text lacks {want:?}; got:\n{text}"
            );
        }
        assert!(!text.contains("example"), "names are never labels:\n{text}");
        assert!(
            !text.contains("clovisor_http_requests_total{"),
            "DNS is not counted as HTTP:\n{text}"
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
                r#"clovisor_http_request_duration_seconds_bucket{{le="{le}",method="GET",status_code="200",namespace="ns",workload="w",protocol="http1"}} "#
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

    /// The cached series handles count into the same series the labels name, whether the
    /// label set was seen before or not, and capped values stay capped.
    #[test]
    fn cached_handles_count_into_the_labelled_series() {
        let m = Metrics::new();
        let mut reg = Registry::default();
        m.register(&mut reg);
        for _ in 0..3 {
            observe(&m, SessionBuilder::new("a").server_workload("shop", "web"));
        }
        // No workload: the pod names it; the same raw values again hit the cache.
        for _ in 0..2 {
            observe(
                &m,
                SessionBuilder::new("b").with(|s| {
                    if let Some(srv) = s.server.as_mut() {
                        srv.workload.clear();
                        srv.pod = "debug-pod".into();
                    }
                }),
            );
        }
        for i in 0..MAX_LABEL_VALUES + 2 {
            observe(
                &m,
                SessionBuilder::new("c").server_workload("many", &format!("w{i}")),
            );
        }
        observe(&m, SessionBuilder::new("d").server_workload("many", "w0"));
        let text = encode(&reg);
        let count = |labels: &str| {
            let want = format!("clovisor_http_requests_total{{{labels}}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(want.as_str()))
                .and_then(|v| v.parse::<u64>().ok())
        };
        assert_eq!(
            count(
                r#"method="GET",status_code="200",namespace="shop",workload="web",protocol="http1""#
            ),
            Some(3)
        );
        assert_eq!(
            count(
                r#"method="GET",status_code="200",namespace="default",workload="debug-pod",protocol="http1""#
            ),
            Some(2)
        );
        assert_eq!(
            count(
                r#"method="GET",status_code="200",namespace="many",workload="w0",protocol="http1""#
            ),
            Some(2),
            "an admitted value stays admitted"
        );
        // "web", "debug-pod", the client's workload (flow metrics share the cap) and w0..w996
        // took the cap's 1000 values; w997..w1001 read "other".
        assert_eq!(
            count(
                r#"method="GET",status_code="200",namespace="many",workload="other",protocol="http1""#
            ),
            Some(5)
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
