//! The flow table: each flow's messages put in order and handed to the decoder that claimed
//! the flow ([`crate::decode`]), whose exchanges become [`Session`]s with the flow's endpoint
//! metadata.
//!
//! A flow is one connection instance at one observation point, keyed by (probe id, flow id).
//! Its key (addresses and ports) and observation point are set once, when the flow is created;
//! the per-message path never reads them again. Messages carry their index in the flow and are
//! taken in that order: one that arrives early waits (at most
//! [`FlowTableConfig::reorder_window`] of them, for [`FlowTableConfig::reorder_timeout`]) before
//! the gap is skipped. A message the probe flushed early (`partial`) may be held for its final
//! counters when its decoder asks to, for at most [`FlowTableConfig::partial_grace`]. State is
//! bounded: at most [`FlowTableConfig::max_flows`] flows (least recently active evicted first)
//! and flows idle for [`FlowTableConfig::idle_timeout`] are dropped, both counted.

mod activity;
mod addresses;
mod counters;
mod endpoints;
mod flow;
mod session;
mod tally;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clovisor_proto::capture::v1::{self as capture, record, ProtocolHint};
use clovisor_proto::common::v1::PointKind;

use rustc_hash::FxHashMap;

use crate::decode::{Decoders, Direction};
use crate::metrics::{CollectorMetrics, RecordKind};
use activity::Activity;
use endpoints::{Endpoints, Ends, SeriesCache};
use flow::{Ctx, Flow, Identity};
use tally::Tally;

pub use endpoints::EndpointMeta;
pub use session::{Collected, CounterView, Origin, ProbeNames};

/// Limits of a [`FlowTable`].
#[derive(Debug, Clone)]
pub struct FlowTableConfig {
    /// Flows tracked at most, over all probes.
    pub max_flows: usize,
    /// A flow without records for this long is dropped (its open request emitted incomplete).
    pub idle_timeout: Duration,
    /// Out-of-order messages buffered per flow at most before the gap is skipped.
    pub reorder_window: usize,
    /// How long a missing message is waited for before the gap is skipped.
    pub reorder_timeout: Duration,
    /// How long a response flushed early by the probe (`partial`) may still be updated before
    /// the exchange is emitted with it.
    pub partial_grace: Duration,
    /// Endpoint metadata entries per probe at most.
    pub max_endpoints_per_probe: usize,
}

impl Default for FlowTableConfig {
    fn default() -> Self {
        Self {
            max_flows: 65_536,
            idle_timeout: Duration::from_secs(120),
            reorder_window: 16,
            reorder_timeout: Duration::from_secs(2),
            partial_grace: Duration::from_secs(2),
            max_endpoints_per_probe: 65_536,
        }
    }
}

/// A probe as the table numbers it: an index given when its id is first seen, never reused.
type ProbeIndex = u32;

/// A flow's key in the table: its probe and the probe's flow id.
type FlowRef = (ProbeIndex, u64);

/// What the table keeps per probe.
#[derive(Debug)]
struct ProbeState {
    id: Arc<str>,
    /// Its id and node as its sessions name them (shared with each).
    names: Arc<ProbeNames>,
    endpoints: Endpoints,
}

/// Reassembles flows of many probes into sessions; see the module documentation.
///
/// Its maps hash with FxHash rather than SipHash: their keys (probe ids, flow ids, addresses)
/// come from our own authenticated probes, so the flooding SipHash guards against is not a
/// concern here, and SipHash was a tenth of the instructions per exchange.
#[derive(Debug)]
pub struct FlowTable {
    config: FlowTableConfig,
    metrics: Arc<CollectorMetrics>,
    decoders: Decoders,
    probe_index: FxHashMap<Arc<str>, ProbeIndex>,
    probes: FxHashMap<ProbeIndex, ProbeState>,
    next_probe: ProbeIndex,
    /// The probe looked up last: a batch's records all name the same one.
    last_probe: Option<(Arc<str>, ProbeIndex)>,
    flows: FxHashMap<FlowRef, Flow>,
    /// Activity order of `flows`, least recent first.
    activity: Activity<FlowRef>,
    /// Flow metric series by pair of ends and point.
    series: SeriesCache,
    /// Identities of flows whose state was dropped (idle, or to make room) while their probe may
    /// still have them open: a probe announces a flow once, so its next message names only its id.
    dormant: Dormant,
    /// Counters-only views made since the caller last took them, when it asked for them apart
    /// ([`FlowTable::keep_counter_views_apart`]); `None`: each is made a session.
    counter_views: Option<Vec<CounterView>>,
    /// The counts of records and exchanges not yet published ([`FlowTable::publish_counts`]).
    tally: Tally,
}

/// Identities of flows dropped from the table but not ended, at most as many as the table holds
/// flows; the longest kept go first when full.
#[derive(Debug, Default)]
struct Dormant {
    identities: FxHashMap<FlowRef, Identity>,
    /// Order of arrival; entries of flows revived or ended meanwhile are skipped.
    order: std::collections::VecDeque<FlowRef>,
}

impl Dormant {
    fn keep(&mut self, f: FlowRef, identity: Identity, max: usize) {
        while self.identities.len() >= max.max(1) {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.identities.remove(&old);
        }
        if self.order.len() > self.identities.len().saturating_mul(2).saturating_add(64) {
            let identities = &self.identities;
            self.order.retain(|k| identities.contains_key(k));
        }
        self.identities.insert(f, identity);
        self.order.push_back(f);
    }

    fn take(&mut self, f: &FlowRef) -> Option<Identity> {
        self.identities.remove(f)
    }

    fn forget_probe(&mut self, p: ProbeIndex) {
        self.identities.retain(|&(fp, _), _| fp != p);
    }
}

/// Whether the flow's client is a loopback address (then it is no flow between workloads).
fn is_loopback(key: &capture::FlowKey) -> bool {
    key.client_addr().is_some_and(|a| a.is_loopback())
}

/// Counts a connection end between workloads, where it was seen. Loopback connections (an app
/// and its sidecar inside one pod) are no flow between workloads and are left out.
fn observe_connection(
    metrics: &CollectorMetrics,
    series: &mut SeriesCache,
    endpoints: &Endpoints,
    key: &capture::FlowKey,
    point: Option<&capture::ObservationPoint>,
    e: &capture::FlowEnd,
    reason: &'static str,
) {
    if !matches!(reason, "fin" | "rst") || is_loopback(key) {
        return;
    }
    let ends = Ends::of(endpoints, key);
    let unknown = capture::ObservationPoint::default();
    let point = point.unwrap_or(&unknown);
    let s = series.get(&metrics.connections, ends, ends.observed_at(point));
    metrics
        .connections
        .ended_at(s, reason, e.srtt_us, e.total_retransmits);
}

/// Counts the bytes `flow` took in since it last did, between workloads, where it was seen.
fn publish_bytes(
    metrics: &CollectorMetrics,
    series: &mut SeriesCache,
    endpoints: &Endpoints,
    flow: &mut Flow,
) {
    let bytes = flow.unpublished_bytes();
    let loopback = is_loopback(flow.key());
    let ends = Ends::of(endpoints, flow.key());
    if bytes != [0, 0] && !loopback {
        let s = series.get(&metrics.connections, ends, ends.observed_at(flow.point()));
        metrics.connections.bytes_at(s, bytes);
    }
    // The bytes its pod's veth counted, carried in its messages: the veth's own flow has none.
    if let Some((point, bytes)) = flow.unpublished_wire_bytes() {
        if bytes != [0, 0] && !loopback {
            let s = series.get(&metrics.connections, ends, ends.observed_at(point));
            metrics.connections.bytes_at(s, bytes);
        }
    }
}

impl Drop for FlowTable {
    /// What it counted and has not published yet is not lost with it.
    fn drop(&mut self) {
        self.publish_counts();
    }
}

impl FlowTable {
    /// An empty table decoding every built-in protocol, and the user analyzers loaded into
    /// [`Decoders::analyzers`] (none at first).
    pub fn new(config: FlowTableConfig, metrics: Arc<CollectorMetrics>) -> Self {
        let analyzers = crate::decode::analyzer::Analyzers::new(metrics.analyzers.clone());
        Self::with_decoders(
            config,
            metrics,
            Decoders::default().with_analyzers(analyzers),
        )
    }

    /// An empty table decoding with `decoders`.
    pub fn with_decoders(
        config: FlowTableConfig,
        metrics: Arc<CollectorMetrics>,
        decoders: Decoders,
    ) -> Self {
        Self {
            config,
            metrics,
            decoders,
            probe_index: FxHashMap::default(),
            probes: FxHashMap::default(),
            next_probe: 0,
            last_probe: None,
            flows: FxHashMap::default(),
            activity: Activity::default(),
            series: SeriesCache::default(),
            dormant: Dormant::default(),
            counter_views: None,
            tally: Tally::default(),
        }
    }

    /// From now on, makes each counters-only view ([`CounterView`]: a covered pod veth's
    /// timings and counters of an exchange) a view apart, for the caller to take
    /// ([`FlowTable::take_counter_views`]) with the sessions of the same calls, rather than a
    /// session: for a caller that hands them to the local join, which adds most of them to the
    /// decoded view of their exchange without ever making them sessions.
    pub fn keep_counter_views_apart(&mut self) {
        self.counter_views.get_or_insert_with(Vec::new);
    }

    /// Moves the counters-only views made since the last call into `into` (none unless kept
    /// apart). A caller that keeps them apart takes them after every call that may make
    /// sessions, with those sessions.
    pub fn take_counter_views(&mut self, into: &mut Vec<CounterView>) {
        if let Some(views) = &mut self.counter_views {
            if into.is_empty() {
                // Handed over, not copied: the next calls' views go into `into`'s block.
                std::mem::swap(into, views);
            } else {
                into.append(views);
            }
        }
    }

    /// [`FlowTable::take_counter_views`] made sessions, into `into`: for a caller whose sessions
    /// do not go through the local join.
    pub fn take_counter_views_as_sessions(&mut self, into: &mut Vec<Collected>) {
        if let Some(views) = &mut self.counter_views {
            into.extend(views.drain(..).map(CounterView::into_collected));
        }
    }

    /// The decoders flows are offered to.
    pub fn decoders(&self) -> &Decoders {
        &self.decoders
    }

    /// Flows currently tracked.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Declares a probe (from its `Hello`); `node` fills observations that lack one.
    pub fn register_probe(&mut self, probe_id: &str, node: &str) {
        let p = self.probe(probe_id);
        if let Some(state) = self.probes.get_mut(&p) {
            if state.names.node.is_empty() && !node.is_empty() {
                // Sessions made until now keep naming the probe as they did.
                state.names = Arc::new(ProbeNames {
                    id: state.id.to_string(),
                    node: node.to_owned(),
                });
            }
        }
    }

    /// Forgets everything kept for `probe_id` (a restarted probe): what waits in its flows and
    /// the requests their decoders hold open are dropped, each counted with reason
    /// `probe_restart` (the waiting messages in stage `flow_table`, the open requests in stage
    /// `decoder`).
    pub fn forget_probe(&mut self, probe_id: &str) {
        let Some(p) = self.probe_index.remove(probe_id) else {
            return;
        };
        self.last_probe = None;
        self.dormant.forget_probe(p);
        let Some(state) = self.probes.remove(&p) else {
            return;
        };
        let (metrics, series) = (&self.metrics, &mut self.series);
        self.flows.retain(|&(fp, _), flow| {
            if fp != p {
                return true;
            }
            metrics.flow_evicted("probe_restart");
            flow.abandon(metrics, "probe_restart");
            publish_bytes(metrics, series, &state.endpoints, flow);
            false
        });
    }

    /// The index of `probe_id`, registering the probe if it is new.
    fn probe(&mut self, probe_id: &str) -> ProbeIndex {
        if let Some((id, p)) = &self.last_probe {
            if **id == *probe_id {
                return *p;
            }
        }
        if let Some((id, &p)) = self.probe_index.get_key_value(probe_id) {
            self.last_probe = Some((Arc::clone(id), p));
            return p;
        }
        let p = self.next_probe;
        self.next_probe = self.next_probe.wrapping_add(1);
        let id: Arc<str> = Arc::from(probe_id);
        self.probe_index.insert(Arc::clone(&id), p);
        self.probes.insert(
            p,
            ProbeState {
                names: Arc::new(ProbeNames {
                    id: id.to_string(),
                    node: String::new(),
                }),
                id,
                endpoints: Endpoints::default(),
            },
        );
        p
    }

    /// Applies one record from `probe_id`, appending finished sessions to `out`.
    pub fn ingest(
        &mut self,
        probe_id: &str,
        mut record: capture::Record,
        now: Instant,
        out: &mut Vec<Collected>,
    ) {
        self.ingest_in_place(probe_id, &mut record, now, out);
        self.publish_counts();
    }

    /// Adds the counts made for every record and exchange since the last time to the shared
    /// counters ([`tally`]): [`FlowTable::ingest_in_place`] only notes them, so that a batch's
    /// records make a few atomic additions rather than several each; its caller publishes once
    /// it has taken the batch. [`FlowTable::ingest`] and [`FlowTable::flush`] publish
    /// themselves, and so does the table when dropped.
    pub fn publish_counts(&self) {
        self.tally.publish(&self.metrics);
    }

    /// [`FlowTable::ingest`] of a record the caller keeps: what the table keeps of it is taken
    /// out of it, the rest left. A message (a few hundred bytes) is then never moved on its way
    /// to its decoder, and the caller can decode the next record into the same place.
    /// The counts it makes wait for [`FlowTable::publish_counts`].
    pub fn ingest_in_place(
        &mut self,
        probe_id: &str,
        record: &mut capture::Record,
        now: Instant,
        out: &mut Vec<Collected>,
    ) {
        let kind = match &record.kind {
            Some(record::Kind::Message(_)) => RecordKind::Message,
            Some(record::Kind::FlowEnd(_)) => RecordKind::FlowEnd,
            Some(record::Kind::Endpoint(_)) => RecordKind::Endpoint,
            Some(record::Kind::Stats(_)) => RecordKind::Stats,
            Some(record::Kind::FlowStart(_)) => RecordKind::FlowStart,
            None => RecordKind::Empty,
        };
        self.tally.record_received(kind);
        let accepted = match &mut record.kind {
            Some(record::Kind::Message(m)) => self.on_message(probe_id, m, now, out),
            Some(record::Kind::FlowEnd(e)) => {
                self.on_flow_end(probe_id, e, out);
                true
            }
            Some(record::Kind::Endpoint(u)) => {
                self.on_endpoint(probe_id, std::mem::take(u));
                true
            }
            Some(record::Kind::FlowStart(start)) => {
                let usable = self.start_flow(probe_id, std::mem::take(start), now, out);
                if !usable {
                    self.metrics.message_dropped("no_flow_key");
                }
                usable
            }
            // Kernel counters are exported by the probe itself.
            Some(record::Kind::Stats(_)) | None => true,
        };
        if accepted {
            self.tally.record_accepted();
        }
    }

    /// Counts a record of a batch whose own bytes did not decode: received, and rejected at the
    /// door (reason `malformed`).
    pub fn malformed_record(&self) {
        self.tally.record_received(RecordKind::Malformed);
        self.metrics.message_dropped("malformed");
    }

    fn on_endpoint(&mut self, probe_id: &str, u: capture::EndpointUpdate) {
        let max = self.config.max_endpoints_per_probe;
        let p = self.probe(probe_id);
        let Some(state) = self.probes.get_mut(&p) else {
            return;
        };
        if u.removed {
            state.endpoints.remove(&u.ip);
            return;
        }
        if let Err(reason) = endpoint_within_bounds(&u) {
            self.metrics
                .endpoints_rejected
                .get_or_create(&crate::metrics::ReasonLabel { reason })
                .inc();
            return;
        }
        if state.endpoints.len() >= max && !state.endpoints.contains_key(&u.ip) {
            self.metrics.endpoints_dropped.inc();
            return;
        }
        let ip = u.ip.clone();
        let meta = EndpointMeta::of(u);
        // Probes re-send their metadata periodically: unchanged, it keeps its identity (and
        // the metric series made for it).
        if state.endpoints.get(&ip).is_some_and(|old| **old == meta) {
            return;
        }
        state.endpoints.insert(ip, Arc::new(meta));
    }

    /// Records activity of flow `f` now: its new tick, and a compaction of the activity order
    /// when stale entries pile up.
    fn touch(&mut self, f: FlowRef) -> u64 {
        // Compacted before the push: a new flow is not in `flows` yet, so its entry would read
        // as stale.
        let flows = &self.flows;
        self.activity
            .compact(flows.len(), |k| flows.get(k).map(|fl| fl.tick));
        self.activity.touch(f)
    }

    fn on_message(
        &mut self,
        probe_id: &str,
        m: &mut capture::Message,
        now: Instant,
        out: &mut Vec<Collected>,
    ) -> bool {
        let p = self.probe(probe_id);
        let f = (p, m.flow_id);
        let exists = self.flows.contains_key(&f);
        // A flow not known (nor announced by a `FlowStart`) needs its identity from the message.
        if !exists && m.flow.is_none() && !self.dormant.identities.contains_key(&f) {
            self.metrics.message_dropped("no_flow_key");
            return false;
        }
        if Direction::from_wire(m.direction).is_none() {
            self.metrics.message_dropped("no_direction");
            return false;
        }
        let tick = if exists {
            Some(self.touch(f))
        } else {
            let identity = match (self.dormant.take(&f), m.flow.take()) {
                // A probe before `FlowStart`: the first message brings the flow's identity.
                (_, Some(key)) => Identity {
                    key,
                    point: m.point.take(),
                    hint: ProtocolHint::try_from(m.protocol).unwrap_or(ProtocolHint::Unspecified),
                    counters_only: false,
                    wire_point: None,
                },
                (Some(identity), None) => identity,
                (None, None) => {
                    self.metrics.message_dropped("no_flow_key");
                    return false;
                }
            };
            self.create_flow((probe_id, f), identity, now, out);
            None
        };
        let (Some(state), Some(flow)) = (self.probes.get(&p), self.flows.get_mut(&f)) else {
            self.tally.flow_message_in();
            self.metrics.flow_messages_lost("no_probe", 1);
            return true;
        };
        if let Some(tick) = tick {
            flow.tick = tick;
            flow.last_seen = now;
        }
        flow.learn_point(m);
        let mut ctx = Ctx {
            probe: &state.names,
            flow_id: f.1,
            endpoints: &state.endpoints,
            decoders: &self.decoders,
            metrics: &self.metrics,
            tally: &self.tally,
            out,
            counter_views: self.counter_views.as_mut(),
        };
        // A message re-sent with its final counters replaces the one held for them.
        if flow.holds(m.index) {
            self.tally.flow_message_in();
            flow.update_held(m, now, &mut ctx);
            return true;
        }
        // A message taken early-flushed, grown since: its decoder goes on with the growth.
        if flow.continues(m.index) {
            self.tally.flow_message_in();
            flow.take_growth(m, now, &mut ctx);
            return true;
        }
        if m.index < flow.next_index() {
            self.metrics.message_dropped("duplicate");
            return false;
        }
        self.tally.flow_message_in();
        if m.index > flow.next_index() {
            flow.buffer(std::mem::take(m), now, &self.metrics);
            if flow.pending_len() > self.config.reorder_window {
                flow.skip_gap(now, &mut ctx);
            }
            return true;
        }
        flow.take_next(m, now, &mut ctx);
        true
    }

    /// Makes flow `f` known by its identity, making room first when the table is full (the least
    /// recently active flow is ended, its identity kept).
    fn create_flow(
        &mut self,
        (probe_id, f): (&str, FlowRef),
        identity: Identity,
        now: Instant,
        out: &mut Vec<Collected>,
    ) {
        while self.flows.len() >= self.config.max_flows.max(1) {
            let flows = &self.flows;
            let Some(oldest) = self.activity.oldest(|k| flows.get(k).map(|fl| fl.tick)) else {
                break;
            };
            self.metrics.flow_evicted("capacity");
            self.drop_flow(oldest, out);
        }
        let tick = self.touch(f);
        let flow = Flow::new((probe_id, f.1), tick, now, identity);
        self.flows.insert(f, flow);
    }

    /// A flow announced by its probe (`FlowStart`, or the probe's table of open flows after a
    /// reconnect): known from now on by its key, point and protocol, so its messages need not
    /// carry them. A flow already known keeps what it has; announcing it again changes nothing.
    /// Returns whether the announcement was usable (it names a key).
    pub fn start_flow(
        &mut self,
        probe_id: &str,
        start: capture::FlowStart,
        now: Instant,
        out: &mut Vec<Collected>,
    ) -> bool {
        let Some(key) = start.flow else {
            return false;
        };
        let p = self.probe(probe_id);
        let f = (p, start.flow_id);
        if !self.flows.contains_key(&f) {
            self.dormant.take(&f);
            let identity = Identity {
                key,
                point: start.point,
                hint: ProtocolHint::try_from(start.protocol).unwrap_or(ProtocolHint::Unspecified),
                counters_only: start.counters_only,
                wire_point: start.wire_point.map(Box::new),
            };
            self.create_flow((probe_id, f), identity, now, out);
        }
        true
    }

    fn on_flow_end(&mut self, probe_id: &str, e: &capture::FlowEnd, out: &mut Vec<Collected>) {
        let end = capture::FlowEndReason::try_from(e.reason)
            .unwrap_or(capture::FlowEndReason::Unspecified);
        let reason = crate::metrics::end_reason_label(end);
        let p = self.probe_index.get(probe_id).copied();
        let f = p.map(|p| (p, e.flow_id));
        // The end names its flow by id: its key and point are the flow's (announced by its
        // FlowStart), or the dormant identity of a flow dropped before its end. A probe older
        // than FlowStart sends them in the end itself.
        let dormant = f.and_then(|f| self.dormant.take(&f));
        let live = f.and_then(|f| self.flows.get(&f));
        let key = e
            .flow
            .as_ref()
            .or(live.map(Flow::key))
            .or(dormant.as_ref().map(|d| &d.key));
        let point = e
            .point
            .as_ref()
            .or(live.map(Flow::point))
            .or(dormant.as_ref().and_then(|d| d.point.as_ref()));
        let kind = point.map_or(PointKind::Unspecified, capture::ObservationPoint::kind);
        self.metrics.connection_ended(kind, end);
        let Some(f) = f else {
            return;
        };
        if let (Some(state), Some(key)) = (self.probes.get(&f.0), key) {
            observe_connection(
                &self.metrics,
                &mut self.series,
                &state.endpoints,
                key,
                point,
                e,
                reason,
            );
        }
        self.end_flow(f, out);
    }

    /// Drops a flow's state before its end (idle, or to make room), emitting what it holds as
    /// [`FlowTable::end_flow`] does, and keeps its identity for its next records.
    fn drop_flow(&mut self, f: FlowRef, out: &mut Vec<Collected>) {
        if let Some(flow) = self.end_flow(f, out) {
            let max = self.config.max_flows;
            self.dormant.keep(f, flow.into_identity(), max);
        }
    }

    /// Removes a flow, processing what it buffered and emitting its open request incomplete;
    /// returns what is left of it.
    fn end_flow(&mut self, f: FlowRef, out: &mut Vec<Collected>) -> Option<Flow> {
        let mut flow = self.flows.remove(&f)?;
        let Some(state) = self.probes.get(&f.0) else {
            flow.discard(&self.metrics, "no_probe");
            return Some(flow);
        };
        let mut ctx = Ctx {
            probe: &state.names,
            flow_id: f.1,
            endpoints: &state.endpoints,
            decoders: &self.decoders,
            metrics: &self.metrics,
            tally: &self.tally,
            out,
            counter_views: self.counter_views.as_mut(),
        };
        flow.close(Instant::now(), &mut ctx);
        publish_bytes(&self.metrics, &mut self.series, &state.endpoints, &mut flow);
        Some(flow)
    }

    /// Time-driven work: skips reordering gaps waited on too long, emits exchanges whose early
    /// flushed response was not updated in time, drops idle flows, and counts the bytes flows
    /// took in.
    pub fn flush(&mut self, now: Instant, out: &mut Vec<Collected>) {
        // Idle flows, oldest first: activity order is time order.
        loop {
            let flows = &self.flows;
            let Some(oldest) = self.activity.oldest(|k| flows.get(k).map(|fl| fl.tick)) else {
                break;
            };
            let idle = flows.get(&oldest).is_none_or(|fl| {
                now.saturating_duration_since(fl.last_seen) >= self.config.idle_timeout
            });
            if !idle {
                break;
            }
            self.metrics.flow_evicted("idle");
            self.drop_flow(oldest, out);
        }
        let cfg = &self.config;
        for (&(p, flow_id), flow) in self.flows.iter_mut() {
            let Some(state) = self.probes.get(&p) else {
                continue;
            };
            let mut ctx = Ctx {
                probe: &state.names,
                flow_id,
                endpoints: &state.endpoints,
                decoders: &self.decoders,
                metrics: &self.metrics,
                tally: &self.tally,
                out: &mut *out,
                counter_views: self.counter_views.as_mut(),
            };
            while flow
                .oldest_pending()
                .is_some_and(|at| now.saturating_duration_since(at) >= cfg.reorder_timeout)
            {
                flow.skip_gap(now, &mut ctx);
            }
            if flow
                .held_since()
                .is_some_and(|at| now.saturating_duration_since(at) >= cfg.partial_grace)
            {
                flow.release_held(&mut ctx);
            }
            publish_bytes(&self.metrics, &mut self.series, &state.endpoints, flow);
        }
        self.publish_counts();
    }
}

/// Longest name an endpoint update may carry (a Kubernetes object name's limit, 253); the
/// interface name is a kernel one (15).
pub const MAX_ENDPOINT_NAME_BYTES: usize = 253;

/// Whether an endpoint update is one a probe could have made: an IPv4 or IPv6 address and names
/// no longer than Kubernetes and the kernel allow. Names become metric labels and span
/// attributes, so an oversized one is refused, not kept. Of the Services only the first is
/// kept (the one sessions name), so only it is measured; a Service address names exactly one.
fn endpoint_within_bounds(u: &capture::EndpointUpdate) -> Result<(), &'static str> {
    if u.ip.len() != 4 && u.ip.len() != 16 {
        return Err("bad_ip");
    }
    if u.service_address && u.services.len() != 1 {
        return Err("bad_service_address");
    }
    let service = u.services.first().map_or("", String::as_str);
    let too_long = [&u.pod, &u.namespace, &u.node, &u.workload]
        .iter()
        .any(|n| n.len() > MAX_ENDPOINT_NAME_BYTES)
        || service.len() > MAX_ENDPOINT_NAME_BYTES
        || u.interface.len() > 15;
    if too_long {
        return Err("too_long");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
