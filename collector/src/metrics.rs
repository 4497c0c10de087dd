//! Every metric the collector exports, in one place. Labels are bounded enums of `&'static str`,
//! never addresses, probe ids or URLs.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clovisor_proto::capture::v1::FlowEndReason;
use clovisor_proto::common::v1::PointKind;
use clovisor_proto::delivery::DeliveryStats;
use clovisor_runtime::drops::Drops;
use clovisor_runtime::series::{BoundedFamily, SeriesHandle, OVERFLOW};
use clovisor_runtime::workloads::{End, FlowLabels, Workloads};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Bucket bounds of `clovisor_flow_rtt_seconds`, 50 µs to 1 s.
pub const RTT_BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Labels of the per-connection flow metrics: the workloads, and where the connection was seen.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObservedLabels {
    /// The workloads.
    #[prometheus(flatten)]
    pub flow: FlowLabels,
    /// `client_socket`, `client_veth`, `node`, `server_veth`, `server_socket`, or `veth` for a pod
    /// veth whose pod is neither end.
    pub observed_at: &'static str,
}

/// Labels of `clovisor_flow_connections_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// The workloads and the point.
    #[prometheus(flatten)]
    pub observed: ObservedLabels,
    /// `fin` or `rst`.
    pub reason: &'static str,
}

/// Labels of `clovisor_flow_connection_bytes_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    /// The workloads and the point.
    #[prometheus(flatten)]
    pub observed: ObservedLabels,
    /// `client_to_server` or `server_to_client`.
    pub direction: &'static str,
}

/// Connections between workloads and their TCP health, as each observation point saw them end.
/// Every point that sees a connection counts it, so the label `observed_at` is part of every
/// series: pick one point per question (`server_veth` for connections into traced servers,
/// `client_socket` for RTT as the caller's kernel measured it).
#[derive(Debug)]
pub struct ConnectionMetrics {
    workloads: Workloads,
    connections: BoundedFamily<ConnectionLabels, Counter>,
    retransmits: BoundedFamily<ObservedLabels, Counter>,
    rtt: BoundedFamily<ObservedLabels, Histogram, fn() -> Histogram>,
    bytes: BoundedFamily<BytesLabels, Counter>,
}

impl Default for ConnectionMetrics {
    fn default() -> Self {
        Self::with_drops(&Drops::default())
    }
}

/// The overflow label set of the flow metrics (`clovisor_runtime::series`).
fn overflow_observed() -> ObservedLabels {
    ObservedLabels {
        flow: FlowLabels {
            client_namespace: OVERFLOW.to_owned(),
            client_workload: OVERFLOW.to_owned(),
            server_namespace: OVERFLOW.to_owned(),
            server_workload: OVERFLOW.to_owned(),
        },
        observed_at: OVERFLOW,
    }
}

fn rtt_histogram() -> Histogram {
    Histogram::new(RTT_BUCKETS)
}

/// One connection end, as [`ConnectionMetrics::ended`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionEnd<'a> {
    /// The client end (`None`: not a monitored pod).
    pub client: Option<End<'a>>,
    /// The server end.
    pub server: Option<End<'a>>,
    /// Where it was seen.
    pub observed_at: &'static str,
    /// `fin` or `rst`.
    pub reason: &'static str,
    /// The kernel's smoothed RTT at close, µs; 0 when the point does not know it.
    pub srtt_us: u32,
    /// Segments the connection retransmitted over its life (socket point only).
    pub retransmits: u32,
}

impl ConnectionMetrics {
    /// Fresh metrics, counting the label sets their families fold (bounded in series) into
    /// `drops`' `clovisor_metric_series_overflow_total`.
    pub fn with_drops(drops: &Drops) -> Self {
        Self {
            workloads: Workloads::default(),
            connections: BoundedFamily::new(
                Family::default(),
                ConnectionLabels {
                    observed: overflow_observed(),
                    reason: OVERFLOW,
                },
                drops.series_overflow("clovisor_flow_connections_total"),
            ),
            retransmits: BoundedFamily::new(
                Family::default(),
                overflow_observed(),
                drops.series_overflow("clovisor_flow_connection_retransmits_total"),
            ),
            rtt: BoundedFamily::new(
                Family::new_with_constructor(rtt_histogram),
                overflow_observed(),
                drops.series_overflow("clovisor_flow_rtt_seconds"),
            ),
            bytes: BoundedFamily::new(
                Family::default(),
                BytesLabels {
                    observed: overflow_observed(),
                    direction: OVERFLOW,
                },
                drops.series_overflow("clovisor_flow_connection_bytes_total"),
            ),
        }
    }
}

/// The flow metric series of one pair of workloads seen at one point. The workload labels are
/// capped and hashed once, when it is made ([`ConnectionMetrics::series`]); each series is looked
/// up in its family the first time it is counted, and kept.
#[derive(Debug)]
pub struct FlowSeries {
    observed: ObservedLabels,
    bytes: [OnceLock<SeriesHandle<Counter>>; 2],
    ends: [OnceLock<SeriesHandle<Counter>>; 2],
    retransmits: OnceLock<SeriesHandle<Counter>>,
    rtt: OnceLock<SeriesHandle<Histogram>>,
}

/// Directions of `clovisor_flow_connection_bytes_total`, in the order of the byte arrays.
const DIRECTIONS: [&str; 2] = ["client_to_server", "server_to_client"];

impl ConnectionMetrics {
    /// The series of connections from `client` to `server` seen at `observed_at`.
    pub fn series(
        &self,
        client: Option<End<'_>>,
        server: Option<End<'_>>,
        observed_at: &'static str,
    ) -> FlowSeries {
        FlowSeries {
            observed: ObservedLabels {
                flow: self.workloads.flow(client, server),
                observed_at,
            },
            bytes: Default::default(),
            ends: Default::default(),
            retransmits: OnceLock::new(),
            rtt: OnceLock::new(),
        }
    }

    /// Counts one connection end.
    pub fn ended(&self, c: ConnectionEnd<'_>) {
        let series = self.series(c.client, c.server, c.observed_at);
        self.ended_at(&series, c.reason, c.srtt_us, c.retransmits);
    }

    /// Counts one connection end of `series`: `reason` (`fin`, `rst`), and the socket's RTT and
    /// retransmits when known (an RTT is non-zero where the point reads the socket's state).
    pub fn ended_at(
        &self,
        series: &FlowSeries,
        reason: &'static str,
        srtt_us: u32,
        retransmits: u32,
    ) {
        if srtt_us > 0 {
            series
                .rtt
                .get_or_init(|| self.rtt.handle(&series.observed))
                .record()
                .observe(f64::from(srtt_us) / 1e6);
        }
        // A point that knows the RTT (a socket) knows the retransmits too, zero included: the
        // series exists from its first connection, so a rate over it reads 0, not "no data".
        if retransmits > 0 || srtt_us > 0 {
            series
                .retransmits
                .get_or_init(|| self.retransmits.handle(&series.observed))
                .record()
                .inc_by(u64::from(retransmits));
        }
        let resolve = || {
            self.connections.handle(&ConnectionLabels {
                observed: series.observed.clone(),
                reason,
            })
        };
        match reason {
            "fin" => series.ends[0].get_or_init(resolve).record().inc(),
            "rst" => series.ends[1].get_or_init(resolve).record().inc(),
            _ => resolve().record().inc(),
        };
    }

    /// Counts payload bytes a connection between workloads carried, per direction
    /// (`[client to server, server to client]`), as the point `observed_at` saw them, whatever
    /// its protocol and whether any decoder understood it.
    pub fn bytes(
        &self,
        client: Option<End<'_>>,
        server: Option<End<'_>>,
        observed_at: &'static str,
        bytes: [u64; 2],
    ) {
        self.bytes_at(&self.series(client, server, observed_at), bytes);
    }

    /// Counts payload bytes of `series` per direction (see [`ConnectionMetrics::bytes`]).
    pub fn bytes_at(&self, series: &FlowSeries, bytes: [u64; 2]) {
        for ((slot, direction), n) in series.bytes.iter().zip(DIRECTIONS).zip(bytes) {
            if n > 0 {
                slot.get_or_init(|| {
                    self.bytes.handle(&BytesLabels {
                        observed: series.observed.clone(),
                        direction,
                    })
                })
                .record()
                .inc_by(n);
            }
        }
    }

    /// Registers `clovisor_flow_connections_total`, `clovisor_flow_connection_retransmits_total`,
    /// `clovisor_flow_rtt_seconds` and `clovisor_flow_connection_bytes_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "clovisor_flow_connections",
            "Connections between workloads that ended, by where they were seen and how (fin, rst)",
            self.connections.family(),
        );
        registry.register(
            "clovisor_flow_connection_retransmits",
            "Segments retransmitted by connections between workloads, as their sockets counted them at close",
            self.retransmits.family(),
        );
        registry.register(
            "clovisor_flow_rtt_seconds",
            "Smoothed round-trip time of connections between workloads at close, as the socket's kernel measured it",
            self.rtt.family(),
        );
        registry.register(
            "clovisor_flow_connection_bytes",
            "Payload bytes carried by connections between workloads, whatever their protocol, by where they were seen and direction",
            self.bytes.family(),
        );
    }
}

/// A label set with one bounded label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Record kind: `message`, `flow_end`, `endpoint`, `stats`, `flow_start`, `empty`,
    /// `malformed`.
    pub kind: &'static str,
}

/// What a record from a probe is, as `records_received{kind}` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A message.
    Message,
    /// A flow's end.
    FlowEnd,
    /// Endpoint metadata.
    Endpoint,
    /// Kernel counters.
    Stats,
    /// A flow's identity, once.
    FlowStart,
    /// A record without a kind.
    Empty,
    /// A record whose bytes did not decode (dropped at the door, reason `malformed`).
    Malformed,
}

impl RecordKind {
    /// The label value.
    pub fn as_label(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::FlowEnd => "flow_end",
            Self::Endpoint => "endpoint",
            Self::Stats => "stats",
            Self::FlowStart => "flow_start",
            Self::Empty => "empty",
            Self::Malformed => "malformed",
        }
    }

    /// Its place among the kinds, `0..RecordKind::COUNT`.
    pub fn slot(self) -> usize {
        self as usize
    }

    /// How many kinds there are.
    pub const COUNT: usize = 7;

    /// Every kind, in slot order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::Message,
        Self::FlowEnd,
        Self::Endpoint,
        Self::Stats,
        Self::FlowStart,
        Self::Empty,
        Self::Malformed,
    ];
}

/// Handles on the series counted for every record or session, each looked up once (on first use,
/// so a series appears when it is first counted, as with a look-up): a label look-up hashes the
/// label set and takes a lock, more than the count itself.
#[derive(Debug, Default)]
struct Handles {
    records_received: [OnceLock<Counter>; RecordKind::COUNT],
    sessions_emitted: [OnceLock<Counter>; 2],
    stage_received: OnceLock<Counter>,
    stage_emitted: OnceLock<Counter>,
    flow_received: OnceLock<Counter>,
    flow_emitted: OnceLock<Counter>,
    flow_buffered: OnceLock<Gauge>,
    /// `connections_ended{point, reason}` by point kind and end reason (their protobuf numbers,
    /// four of each): looked up once, not at every connection's end (on short connections
    /// that is every exchange or two).
    connections_ended: [OnceLock<Counter>; 16],
}

/// A label set naming a bounded reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why something happened; one of a fixed set per metric.
    pub reason: &'static str,
}

/// Labels of `clovisor_collector_connections_ended_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionEndLabels {
    /// Observation point that saw the end: `pod`, `node`, `socket` or `unspecified`.
    pub point: &'static str,
    /// `fin`, `rst`, `idle` or `unspecified`.
    pub reason: &'static str,
}

/// Labels of `clovisor_collector_decoder_desyncs_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DesyncLabels {
    /// The decoder's name (`http1`, ...).
    pub protocol: &'static str,
    /// Why it lost step, one of a fixed set per decoder.
    pub reason: &'static str,
}

/// Labels of `clovisor_collector_fields_truncated_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FieldLabel {
    /// The session field (`http.target`, …: `decode::limits::FIELD_LIMITS`).
    pub field: &'static str,
}

/// A label set for emitted sessions.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `complete` or `incomplete`.
    pub outcome: &'static str,
}

/// A label set for reviews of admitted probes' tokens.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `accepted`, `refused` or `unreachable`.
    pub result: &'static str,
}

/// The collector's metrics, shared by the service, the flow table and the flusher.
#[derive(Debug)]
pub struct CollectorMetrics {
    /// Records received, by kind.
    pub records_received: Family<KindLabel, Counter>,
    /// Sessions emitted, by outcome.
    pub sessions_emitted: Family<OutcomeLabel, Counter>,
    /// Messages that could not be decoded, by reason (see `decode::http1::ParseError::as_label`).
    pub decode_errors: Family<ReasonLabel, Counter>,
    /// Flows dropped from the table before they ended, by reason (`capacity`, `idle`,
    /// `probe_restart`).
    pub flows_evicted: Family<ReasonLabel, Counter>,
    /// Connection ends the probes reported, by point and reason (resets are TCP health).
    pub connections_ended: Family<ConnectionEndLabels, Counter>,
    /// The same ends between workloads, with RTT and retransmits where the point knows them.
    pub connections: ConnectionMetrics,
    /// Batches received again after a reconnect and acknowledged without processing.
    pub batches_duplicate: Counter,
    /// Batches processed.
    pub batches_processed: Counter,
    /// Sessions merged into another view of their exchange from the same probe before leaving
    /// the collector (`local_join`): sessions emitted = sessions forwarded + views merged.
    pub views_merged: Counter,
    /// Pod veth views that came inside their socket's messages (`FlowStart.wire_point`,
    /// `Message.wire`) and were added to its sessions: views without a session of their own,
    /// not counted in the sessions emitted.
    pub veth_views_carried: Counter,
    /// Counters-only views (a covered pod veth's timings, `FlowStart.counters_only`) that left
    /// without a decoded view of their exchange (not within the local join's hold): forwarded
    /// alone, for the correlator's join. Part of the sessions forwarded.
    pub counter_views_unmatched: Counter,
    /// Messages dropped before pairing, by reason (`duplicate`, `no_direction`, `no_flow_key`,
    /// `response_without_request`, `gap`).
    pub messages_dropped: Family<ReasonLabel, Counter>,
    /// Flows no decoder claimed (their protocol is not decoded).
    pub flows_unsupported: Counter,
    /// Decoders that lost step with their flow, by protocol and reason.
    pub decoder_desyncs: Family<DesyncLabels, Counter>,
    /// User analyzers' failures and loaded set (`decode::analyzer`).
    pub analyzers: AnalyzerMetrics,
    /// Probes that restarted (a new probe id for a known node).
    pub probe_restarts: Counter,
    /// Endpoint updates ignored because the per-probe table was full.
    pub endpoints_dropped: Counter,
    /// Endpoint updates refused as no probe makes them (`bad_ip`, `too_long`,
    /// `bad_service_address`).
    pub endpoints_rejected: Family<ReasonLabel, Counter>,
    /// Probe streams refused by admission (`server::admission::Refused`), by reason.
    pub probes_refused: Family<ReasonLabel, Counter>,
    /// Admitted probe streams the collector ended because of their token
    /// (`server::admission::StreamEnd`), by reason.
    pub probe_streams_ended: Family<ReasonLabel, Counter>,
    /// Reviews of admitted probe streams' tokens, by result.
    pub probe_token_rechecks: Family<ResultLabel, Counter>,
    /// Session string fields cut to their limit (`decode::limits`), by field.
    pub fields_truncated: Family<FieldLabel, Counter>,
    /// Shared loss accounting (stages `collector` and `forwarder`).
    pub drops: Drops,
    handles: Handles,
}

/// A connection end's reason as the metrics and the flow table name it: `fin`, `rst`, `idle`
/// or `unspecified`.
pub fn end_reason_label(reason: FlowEndReason) -> &'static str {
    match reason {
        FlowEndReason::Fin => "fin",
        FlowEndReason::Rst => "rst",
        FlowEndReason::Idle => "idle",
        FlowEndReason::Unspecified => "unspecified",
    }
}

/// Loss-accounting stage of the collector's door: records of new batches = records taken into
/// the flow table + records rejected there (`duplicate`, `no_direction`, `no_flow_key`,
/// `malformed`).
pub const STAGE_COLLECTOR: &str = "collector";
/// Loss-accounting stage of the forwarder: sessions in = acknowledged by the correlator +
/// dropped at shutdown + buffered.
pub const STAGE_FORWARDER: &str = "forwarder";

/// Loss-accounting stage of the flow table: message records taken into a flow = handed on (to
/// the flow's decoder, or counted as bytes of a flow no decoder claims) + lost in the table
/// (`response_without_request`, `hint_mismatch`, `duplicate`, `probe_restart`, `no_probe`) +
/// waiting in it (out of order, or held for their final counters).
pub const STAGE_FLOW_TABLE: &str = "flow_table";
/// Detected losses, outside any balance: messages a flow skipped because they never arrived
/// (reason `gap`, one per missing message).
pub const STAGE_FLOW_ORDER: &str = "flow_order";
/// Detected losses, outside any balance: messages handed to a decoder that it could not pair
/// into an exchange (the decoder's reason, e.g. `response_without_request`).
pub const STAGE_DECODER: &str = "decoder";

/// Message drop reasons that reject a record as it arrives (so they belong to the
/// `collector` stage's balance); the others (`gap`, `response_without_request`) concern
/// messages missing upstream or already taken in.
const DOOR_REASONS: [&str; 4] = ["duplicate", "no_direction", "no_flow_key", "malformed"];

/// How often the forwarder's counters are copied into the loss accounting.
pub const FORWARDER_ACCOUNTING_INTERVAL: Duration = Duration::from_millis(500);

impl Default for CollectorMetrics {
    fn default() -> Self {
        Self::with_drops(Drops::default())
    }
}

impl CollectorMetrics {
    /// Fresh, zeroed metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fresh metrics counting losses (and the label sets the bounded families fold) into
    /// `drops`, shared with other stages of the process.
    pub fn with_drops(drops: Drops) -> Self {
        Self {
            records_received: Family::default(),
            sessions_emitted: Family::default(),
            decode_errors: Family::default(),
            flows_evicted: Family::default(),
            connections_ended: Family::default(),
            connections: ConnectionMetrics::with_drops(&drops),
            batches_duplicate: Counter::default(),
            batches_processed: Counter::default(),
            views_merged: Counter::default(),
            veth_views_carried: Counter::default(),
            counter_views_unmatched: Counter::default(),
            messages_dropped: Family::default(),
            flows_unsupported: Counter::default(),
            decoder_desyncs: Family::default(),
            analyzers: AnalyzerMetrics::with_drops(&drops),
            probe_restarts: Counter::default(),
            endpoints_dropped: Counter::default(),
            endpoints_rejected: Family::default(),
            probes_refused: Family::default(),
            probe_streams_ended: Family::default(),
            probe_token_rechecks: Family::default(),
            fields_truncated: Family::default(),
            drops,
            handles: Handles::default(),
        }
    }

    /// Counts `n` records of new batches arriving, of one kind.
    pub fn count_records_received(&self, kind: RecordKind, n: u64) {
        self.handles.records_received[kind.slot()]
            .get_or_init(|| {
                self.records_received
                    .get_or_create(&KindLabel {
                        kind: kind.as_label(),
                    })
                    .clone()
            })
            .inc_by(n);
        self.handles
            .stage_received
            .get_or_init(|| self.drops.received_counter(STAGE_COLLECTOR))
            .inc_by(n);
    }

    /// Counts `n` records taken into the flow table (not rejected at the door).
    pub fn count_records_accepted(&self, n: u64) {
        self.handles
            .stage_emitted
            .get_or_init(|| self.drops.emitted_counter(STAGE_COLLECTOR))
            .inc_by(n);
    }

    /// Counts `n` message records taken into a flow (the `flow_table` stage's input).
    pub fn count_flow_messages_in(&self, n: u64) {
        self.handles
            .flow_received
            .get_or_init(|| self.drops.received_counter(STAGE_FLOW_TABLE))
            .inc_by(n);
    }

    /// Counts `n` messages the flow table handed on: to their flow's decoder, merged into their
    /// final version, or counted as bytes of a flow no decoder claims.
    pub fn count_flow_messages_out(&self, n: u64) {
        self.handles
            .flow_emitted
            .get_or_init(|| self.drops.emitted_counter(STAGE_FLOW_TABLE))
            .inc_by(n);
    }

    /// Counts `n` messages taken into a flow and lost there, for `reason`.
    pub fn flow_messages_lost(&self, reason: &'static str, n: u64) {
        self.drops.count(STAGE_FLOW_TABLE, reason, n);
    }

    /// Moves the count of messages waiting in flows (out of order or held) by `delta`.
    pub fn flow_buffered(&self, delta: i64) {
        let g = self
            .handles
            .flow_buffered
            .get_or_init(|| self.drops.buffered_gauge(STAGE_FLOW_TABLE));
        if delta >= 0 {
            g.inc_by(delta);
        } else {
            g.dec_by(delta.saturating_neg());
        }
    }

    /// Counts `n` messages a flow skipped because they never arrived.
    pub fn messages_skipped(&self, n: u64) {
        self.messages_dropped
            .get_or_create(&ReasonLabel { reason: "gap" })
            .inc_by(n);
        self.drops.count(STAGE_FLOW_ORDER, "gap", n);
    }

    /// Counts a message a decoder could not pair, for `reason`.
    pub fn unpaired(&self, reason: &'static str) {
        self.messages_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc();
        self.drops.count(STAGE_DECODER, reason, 1);
    }

    /// Copies the forwarder's cumulative counters into the `forwarder` stage's accounting,
    /// every [`FORWARDER_ACCOUNTING_INTERVAL`] until the returned task is aborted or the
    /// runtime stops.
    pub fn track_forwarder(&self, stats: Arc<DeliveryStats>) -> tokio::task::JoinHandle<()> {
        let drops = self.drops.clone();
        tokio::spawn(async move {
            let mut last = ForwarderSeen::default();
            let mut tick = tokio::time::interval(FORWARDER_ACCOUNTING_INTERVAL);
            loop {
                tick.tick().await;
                last.update(&drops, &stats);
            }
        })
    }

    /// Registers every metric (`clovisor_collector_*`) and the connection flow metrics
    /// (`clovisor_flow_*`), each named here in full.
    pub fn register(&self, registry: &mut Registry) {
        self.connections.register(registry);
        self.analyzers.register(registry);
        registry.register(
            "clovisor_collector_records_received",
            "Records received from probes, by kind",
            self.records_received.clone(),
        );
        registry.register(
            "clovisor_collector_sessions_emitted",
            "Decoded sessions emitted, by outcome",
            self.sessions_emitted.clone(),
        );
        registry.register(
            "clovisor_collector_decode_errors",
            "Messages that could not be decoded, by reason",
            self.decode_errors.clone(),
        );
        registry.register(
            "clovisor_collector_flows_evicted",
            "Flows dropped before their end, by reason",
            self.flows_evicted.clone(),
        );
        registry.register(
            "clovisor_collector_connections_ended",
            "Traced connections that ended (FIN, RST), as each observation point saw them",
            self.connections_ended.clone(),
        );
        registry.register(
            "clovisor_collector_batches_duplicate",
            "Re-sent batches acknowledged without processing",
            self.batches_duplicate.clone(),
        );
        registry.register(
            "clovisor_collector_batches_processed",
            "Record batches processed",
            self.batches_processed.clone(),
        );
        registry.register(
            "clovisor_collector_views_merged",
            "Sessions merged into another view of the same exchange seen by the same probe (the local join): sent as one session",
            self.views_merged.clone(),
        );
        registry.register(
            "clovisor_collector_veth_views_carried",
            "Pod veth views carried in their socket's messages and added to the socket's sessions (the probe's covered veths, carried): no session of their own",
            self.veth_views_carried.clone(),
        );
        registry.register(
            "clovisor_collector_payloadless_views_unmatched",
            "Counters-only views of covered pod veths forwarded without a decoded view of their exchange (not found within the local join's hold): the correlator's join may still find it",
            self.counter_views_unmatched.clone(),
        );
        registry.register(
            "clovisor_collector_messages_dropped",
            "Messages dropped before pairing, by reason",
            self.messages_dropped.clone(),
        );
        registry.register(
            "clovisor_collector_flows_unsupported",
            "Flows no decoder claimed: their protocol is not decoded",
            self.flows_unsupported.clone(),
        );
        registry.register(
            "clovisor_collector_decoder_desyncs",
            "Decoders that lost step with their flow, by protocol and reason",
            self.decoder_desyncs.clone(),
        );
        registry.register(
            "clovisor_collector_probe_restarts",
            "Probes seen restarting (new probe id for a known node)",
            self.probe_restarts.clone(),
        );
        registry.register(
            "clovisor_collector_endpoints_rejected",
            "Endpoint updates refused: an address neither IPv4 nor IPv6, or a name longer than Kubernetes allows",
            self.endpoints_rejected.clone(),
        );
        registry.register(
            "clovisor_collector_probes_refused",
            "Probe streams refused: identity not matching the certificate, another peer's probe id or node, too many probes, an over-long id, a batch number jumping too far",
            self.probes_refused.clone(),
        );
        registry.register(
            "clovisor_collector_probe_streams_ended",
            "Admitted probe streams ended by the collector because of their service account token: its exp passed, no exp and the maximum age reached, or a later review refused it",
            self.probe_streams_ended.clone(),
        );
        registry.register(
            "clovisor_collector_probe_token_rechecks",
            "Reviews of admitted probe streams' tokens by the API server, by result (unreachable: the stream goes on)",
            self.probe_token_rechecks.clone(),
        );
        registry.register(
            "clovisor_collector_fields_truncated",
            "Session string fields cut to their length limit before leaving the collector, by field",
            self.fields_truncated.clone(),
        );
        registry.register(
            "clovisor_collector_endpoints_dropped",
            "Endpoint updates ignored because the table was full",
            self.endpoints_dropped.clone(),
        );
    }

    /// Counts a session field cut to its length limit.
    pub fn field_truncated(&self, field: &'static str) {
        self.fields_truncated
            .get_or_create(&FieldLabel { field })
            .inc();
    }

    /// Counts a decode error.
    pub fn decode_error(&self, reason: &'static str) {
        self.decode_errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts `n` emitted sessions, complete or not.
    pub fn count_sessions_emitted(&self, incomplete: bool, n: u64) {
        let outcome = if incomplete { "incomplete" } else { "complete" };
        self.handles.sessions_emitted[usize::from(incomplete)]
            .get_or_init(|| {
                self.sessions_emitted
                    .get_or_create(&OutcomeLabel { outcome })
                    .clone()
            })
            .inc_by(n);
    }

    /// Counts a decoder losing step with its flow.
    pub fn desync(&self, protocol: &'static str, reason: &'static str) {
        self.decoder_desyncs
            .get_or_create(&DesyncLabels { protocol, reason })
            .inc();
    }

    /// Counts a dropped message; reasons that reject an arriving record also count in
    /// `clovisor_dropped_total{stage="collector"}`.
    pub fn message_dropped(&self, reason: &'static str) {
        self.messages_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc();
        if let Some(door) = DOOR_REASONS.iter().find(|r| **r == reason) {
            self.drops.count(STAGE_COLLECTOR, door, 1);
        }
    }

    /// Counts an evicted flow.
    pub fn flow_evicted(&self, reason: &'static str) {
        self.flows_evicted
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a connection end seen at `point` for `reason`.
    pub fn connection_ended(&self, point: PointKind, reason: FlowEndReason) {
        let labels = || ConnectionEndLabels {
            point: point.short_name(),
            reason: end_reason_label(reason),
        };
        match self
            .handles
            .connections_ended
            .get(point as usize * 4 + reason as usize)
        {
            Some(handle) => handle
                .get_or_init(|| self.connections_ended.get_or_create(&labels()).clone())
                .inc(),
            None => self.connections_ended.get_or_create(&labels()).inc(),
        };
    }

    /// Current value of `connections_ended{point, reason}`.
    pub fn connections_ended_for(&self, point: &'static str, reason: &'static str) -> u64 {
        self.connections_ended
            .get_or_create(&ConnectionEndLabels { point, reason })
            .get()
    }

    /// Current value of `decoder_desyncs{protocol, reason}`.
    pub fn desyncs_for(&self, protocol: &'static str, reason: &'static str) -> u64 {
        self.decoder_desyncs
            .get_or_create(&DesyncLabels { protocol, reason })
            .get()
    }

    /// Current value of `decode_errors{reason}`.
    pub fn decode_errors_for(&self, reason: &'static str) -> u64 {
        self.decode_errors
            .get_or_create(&ReasonLabel { reason })
            .get()
    }

    /// Current value of `flows_evicted{reason}`.
    pub fn flows_evicted_for(&self, reason: &'static str) -> u64 {
        self.flows_evicted
            .get_or_create(&ReasonLabel { reason })
            .get()
    }

    /// Current value of `messages_dropped{reason}`.
    pub fn messages_dropped_for(&self, reason: &'static str) -> u64 {
        self.messages_dropped
            .get_or_create(&ReasonLabel { reason })
            .get()
    }

    /// Current value of `sessions_emitted{outcome}`.
    pub fn sessions_emitted_for(&self, outcome: &'static str) -> u64 {
        self.sessions_emitted
            .get_or_create(&OutcomeLabel { outcome })
            .get()
    }

    /// Current value of `records_received{kind}`.
    pub fn records_received_for(&self, kind: &'static str) -> u64 {
        self.records_received
            .get_or_create(&KindLabel { kind })
            .get()
    }
}

/// Where the forwarder's cumulative counters stood at the last copy.
#[derive(Debug, Default)]
struct ForwarderSeen {
    received: u64,
    acked: u64,
    dropped: u64,
}

impl ForwarderSeen {
    fn update(&mut self, drops: &Drops, stats: &DeliveryStats) {
        let received = DeliveryStats::get(&stats.items_received);
        let acked = DeliveryStats::get(&stats.items_acked);
        let dropped = DeliveryStats::get(&stats.items_dropped_shutdown);
        drops.received(STAGE_FORWARDER, received.saturating_sub(self.received));
        drops.emitted(STAGE_FORWARDER, acked.saturating_sub(self.acked));
        drops.count(
            STAGE_FORWARDER,
            "shutdown",
            dropped.saturating_sub(self.dropped),
        );
        drops.set_buffered(STAGE_FORWARDER, DeliveryStats::get(&stats.items_buffered));
        *self = Self {
            received,
            acked,
            dropped,
        };
    }
}

/// Labels of `clovisor_analyzer_errors_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnalyzerErrorLabels {
    /// The analyzer's protocol name: one of the names configured in `clovisor_proto_cfg`, so as
    /// bounded as that hash.
    pub analyzer: String,
    /// `trap`, `timeout`, `memory` or `malformed`.
    pub reason: &'static str,
}

/// Labels of `clovisor_analyzer_loads_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnalyzerLoadLabels {
    /// The analyzer's protocol name.
    pub analyzer: String,
    /// `loaded`, `replaced`, `unloaded`, `rejected` or `switched_off`.
    pub outcome: &'static str,
}

/// The user analyzers' metrics; clone freely (they share their values). The `analyzer` label
/// comes from the Redis configuration: its families are bounded in series
/// (`clovisor_runtime::series`).
#[derive(Debug, Clone)]
pub struct AnalyzerMetrics {
    errors: Arc<BoundedFamily<AnalyzerErrorLabels, Counter>>,
    loads: Arc<BoundedFamily<AnalyzerLoadLabels, Counter>>,
    running: prometheus_client::metrics::gauge::Gauge,
}

impl Default for AnalyzerMetrics {
    fn default() -> Self {
        Self::with_drops(&Drops::default())
    }
}

impl AnalyzerMetrics {
    /// Fresh metrics, counting folded label sets into `drops`.
    pub fn with_drops(drops: &Drops) -> Self {
        Self {
            errors: Arc::new(BoundedFamily::new(
                Family::default(),
                AnalyzerErrorLabels {
                    analyzer: OVERFLOW.to_owned(),
                    reason: OVERFLOW,
                },
                drops.series_overflow("clovisor_analyzer_errors_total"),
            )),
            loads: Arc::new(BoundedFamily::new(
                Family::default(),
                AnalyzerLoadLabels {
                    analyzer: OVERFLOW.to_owned(),
                    outcome: OVERFLOW,
                },
                drops.series_overflow("clovisor_analyzer_loads_total"),
            )),
            running: prometheus_client::metrics::gauge::Gauge::default(),
        }
    }
}

impl AnalyzerMetrics {
    /// Registers `clovisor_analyzer_errors_total`, `clovisor_analyzer_loads_total` and
    /// `clovisor_analyzers_running`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "clovisor_analyzer_errors",
            "Calls into a user analyzer that failed (trap, timeout, memory, malformed), by analyzer",
            self.errors.family(),
        );
        registry.register(
            "clovisor_analyzer_loads",
            "User analyzer changes: loaded, replaced, unloaded, rejected, switched_off",
            self.loads.family(),
        );
        registry.register(
            "clovisor_analyzers_running",
            "User analyzers loaded and not switched off",
            self.running.clone(),
        );
    }

    /// Counts a failed call of `analyzer`.
    pub fn error(&self, analyzer: &str, reason: &'static str) {
        self.errors.with(
            &AnalyzerErrorLabels {
                analyzer: analyzer.to_owned(),
                reason,
            },
            |c| {
                c.inc();
            },
        );
    }

    /// Failed calls of `analyzer` for `reason` so far.
    pub fn error_count(&self, analyzer: &str, reason: &'static str) -> u64 {
        self.errors
            .family()
            .get(&AnalyzerErrorLabels {
                analyzer: analyzer.to_owned(),
                reason,
            })
            .map_or(0, |c| c.get())
    }

    /// Counts a change of `analyzer`.
    pub fn load(&self, analyzer: &str, outcome: &'static str) {
        self.loads.with(
            &AnalyzerLoadLabels {
                analyzer: analyzer.to_owned(),
                outcome,
            },
            |c| {
                c.inc();
            },
        );
    }

    /// Sets how many analyzers run.
    pub fn set_running(&self, n: usize) {
        self.running.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
impl CollectorMetrics {
    /// Every series, with the drop accounting's, in the text exposition format.
    pub(crate) fn exposition(&self) -> String {
        let mut reg = Registry::default();
        self.register(&mut reg);
        self.drops.register(&mut reg);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).expect("encoding to a String");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Label sets more than a bounded family holds.
    const FLOOD: usize = clovisor_runtime::series::MAX_SERIES_PER_FAMILY + 250;

    fn text_of(m: &CollectorMetrics) -> String {
        m.exposition()
    }

    fn series_lines(text: &str, family: &str) -> usize {
        let prefix = format!("{family}{{");
        text.lines().filter(|l| l.starts_with(&prefix)).count()
    }

    /// `family` holds exactly its bound of series in `text`, and `metric`'s overflow series
    /// counted `folded` observations.
    fn assert_bounded(text: &str, family: &str, metric: &str, folded: u64) {
        use clovisor_runtime::series::MAX_SERIES_PER_FAMILY;
        assert_eq!(
            series_lines(text, family),
            MAX_SERIES_PER_FAMILY,
            "series of {family}"
        );
        assert_eq!(
            overflow_line(text, metric),
            Some(folded),
            "folded observations of {metric}"
        );
    }

    fn overflow_line(text: &str, metric: &str) -> Option<u64> {
        let prefix = format!(r#"clovisor_metric_series_overflow_total{{metric="{metric}"}} "#);
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn flow_families_stay_at_their_bound_under_a_flood_of_workloads() {
        use clovisor_runtime::series::MAX_SERIES_PER_FAMILY;
        let m = CollectorMetrics::new();
        for i in 0..FLOOD {
            let (namespace, workload) = (format!("n{}", i % 100), format!("w{}", i / 100));
            let server = End {
                pod: "p",
                namespace: &namespace,
                workload: &workload,
            };
            let series = m.connections.series(None, Some(server), "server_socket");
            m.connections.ended_at(&series, "fin", 250, 1);
            m.connections.bytes_at(&series, [10, 20]);
        }
        let text = text_of(&m);
        let folded = (FLOOD - (MAX_SERIES_PER_FAMILY - 1)) as u64;
        for (family, metric, want_folded) in [
            (
                "clovisor_flow_connections_total",
                "clovisor_flow_connections_total",
                folded,
            ),
            (
                "clovisor_flow_connection_retransmits_total",
                "clovisor_flow_connection_retransmits_total",
                folded,
            ),
            (
                "clovisor_flow_rtt_seconds_count",
                "clovisor_flow_rtt_seconds",
                folded,
            ),
            // Two directions a connection: the family fills at half the connections.
            (
                "clovisor_flow_connection_bytes_total",
                "clovisor_flow_connection_bytes_total",
                (2 * FLOOD - (MAX_SERIES_PER_FAMILY - 1)) as u64,
            ),
        ] {
            assert_bounded(&text, family, metric, want_folded);
        }
        assert!(
            text.lines()
                .any(|l| l.starts_with("clovisor_flow_connections_total{")
                    && l.contains(r#"server_workload="overflow""#)
                    && l.ends_with(&format!(" {folded}"))),
            "the folded connection ends are counted in the overflow series"
        );
    }

    #[test]
    fn analyzer_families_stay_at_their_bound_under_a_flood_of_names() {
        use clovisor_runtime::series::MAX_SERIES_PER_FAMILY;
        let m = CollectorMetrics::new();
        for i in 0..FLOOD {
            m.analyzers.error(&format!("a{i}"), "trap");
            m.analyzers.load(&format!("a{i}"), "loaded");
        }
        m.analyzers.error("a0", "trap");
        assert_eq!(
            m.analyzers.error_count("a0", "trap"),
            2,
            "an admitted name keeps its series"
        );
        let text = text_of(&m);
        let folded = (FLOOD - (MAX_SERIES_PER_FAMILY - 1)) as u64;
        for family in [
            "clovisor_analyzer_errors_total",
            "clovisor_analyzer_loads_total",
        ] {
            assert_bounded(&text, family, family, folded);
        }
    }

    #[test]
    fn connection_ends_count_into_their_series_cached_or_not() {
        let m = CollectorMetrics::new();
        for _ in 0..3 {
            m.connection_ended(PointKind::Pod, FlowEndReason::Fin);
        }
        m.connection_ended(PointKind::Socket, FlowEndReason::Rst);
        assert_eq!(m.connections_ended_for("pod", "fin"), 3);
        assert_eq!(m.connections_ended_for("socket", "rst"), 1);
        assert_eq!(m.connections_ended_for("node", "fin"), 0);
        // Every point and reason has a series of its own (no two share a cached handle).
        let points = [
            PointKind::Unspecified,
            PointKind::Pod,
            PointKind::Node,
            PointKind::Socket,
        ];
        let reasons = [
            FlowEndReason::Unspecified,
            FlowEndReason::Fin,
            FlowEndReason::Rst,
            FlowEndReason::Idle,
        ];
        let m = CollectorMetrics::new();
        for (i, p) in points.iter().enumerate() {
            for (j, r) in reasons.iter().enumerate() {
                for _ in 0..=(i * 4 + j) {
                    m.connection_ended(*p, *r);
                }
            }
        }
        for (i, p) in points.iter().enumerate() {
            for (j, r) in reasons.iter().enumerate() {
                assert_eq!(
                    m.connections_ended_for(p.short_name(), end_reason_label(*r)),
                    (i * 4 + j + 1) as u64
                );
            }
        }
        let text = text_of(&m);
        assert!(
            text.contains(r#"point="pod",reason="fin"} 6"#),
            "the cached handle is the exported series: {text}"
        );
    }

    #[test]
    fn registered_names_are_prefixed() {
        let m = CollectorMetrics::new();
        m.decode_error("malformed");
        m.batches_duplicate.inc();
        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).expect("encoding to a String");
        assert!(
            text.contains("clovisor_collector_decode_errors_total{reason=\"malformed\"} 1"),
            "decode error counter missing from:\n{text}"
        );
        assert!(
            text.contains("clovisor_collector_batches_duplicate_total 1"),
            "duplicate counter missing from:\n{text}"
        );
    }

    #[test]
    fn door_drops_balance_the_collector_stage() {
        let m = CollectorMetrics::new();
        for _ in 0..3 {
            m.count_records_received(RecordKind::Message, 1);
        }
        m.count_records_accepted(1);
        m.message_dropped("duplicate");
        m.message_dropped("no_flow_key");
        // Not a rejection at the door: stays out of the stage's balance.
        m.message_dropped("gap");
        let d = &m.drops;
        let dropped = d.get(STAGE_COLLECTOR, "duplicate")
            + d.get(STAGE_COLLECTOR, "no_flow_key")
            + d.get(STAGE_COLLECTOR, "gap");
        assert_eq!(
            (
                d.received_count(STAGE_COLLECTOR),
                d.emitted_count(STAGE_COLLECTOR),
                dropped
            ),
            (3, 1, 2),
            "(received, emitted, dropped) of the collector stage"
        );
    }

    #[test]
    fn forwarder_counters_are_copied_as_increments() {
        use std::sync::atomic::Ordering;
        let drops = Drops::default();
        let stats = DeliveryStats::default();
        let mut seen = ForwarderSeen::default();
        stats.items_received.store(5, Ordering::Relaxed);
        stats.items_acked.store(3, Ordering::Relaxed);
        stats.items_buffered.store(2, Ordering::Relaxed);
        seen.update(&drops, &stats);
        stats.items_received.store(7, Ordering::Relaxed);
        stats.items_acked.store(6, Ordering::Relaxed);
        stats.items_dropped_shutdown.store(1, Ordering::Relaxed);
        stats.items_buffered.store(0, Ordering::Relaxed);
        seen.update(&drops, &stats);
        assert_eq!(
            (
                drops.received_count(STAGE_FORWARDER),
                drops.emitted_count(STAGE_FORWARDER),
                drops.get(STAGE_FORWARDER, "shutdown")
            ),
            (7, 6, 1),
            "(received, acked, dropped) of the forwarder stage"
        );
    }
}
