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

mod endpoints;
mod flow;
mod session;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clovisor_proto::capture::v1::{self as capture, record, ProtocolHint};
use clovisor_proto::common::v1::PointKind;
use clovisor_proto::session::v1::Session;
use clovisor_runtime::workloads::is_loopback;
use rustc_hash::FxHashMap;

use crate::decode::{Decoders, Direction};
use crate::metrics::{CollectorMetrics, RecordKind};
use endpoints::{Endpoints, Ends, SeriesCache};
use flow::{Ctx, Flow};

pub use endpoints::EndpointMeta;

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

/// What the table keeps per probe. Its maps hash with FxHash rather than SipHash: their keys
/// (flow ids, addresses, probe ids) come from our own authenticated probes, so the flooding SipHash
/// guards against is not a concern, and SipHash was a tenth of the per-exchange instructions.
#[derive(Debug, Default)]
struct ProbeState {
    node: String,
    flows: FxHashMap<u64, Flow>,
    endpoints: Endpoints,
}

/// Reassembles flows of many probes into sessions; see the module documentation.
#[derive(Debug)]
pub struct FlowTable {
    config: FlowTableConfig,
    metrics: Arc<CollectorMetrics>,
    decoders: Decoders,
    probes: FxHashMap<Arc<str>, ProbeState>,
    /// Activity order: tick -> flow, oldest first.
    lru: BTreeMap<u64, (Arc<str>, u64)>,
    next_tick: u64,
    /// Flow metric series by pair of ends and point.
    series: SeriesCache,
}

/// Counts a connection end between workloads, where it was seen. Loopback connections (an app
/// and its sidecar inside one pod) are no flow between workloads and are left out.
fn observe_connection(
    metrics: &CollectorMetrics,
    series: &mut SeriesCache,
    endpoints: &Endpoints,
    key: &capture::FlowKey,
    e: &capture::FlowEnd,
    reason: &'static str,
) {
    if !matches!(reason, "fin" | "rst") || is_loopback(&key.client_ip) {
        return;
    }
    let ends = Ends::of(endpoints, key);
    let unknown = capture::ObservationPoint::default();
    let point = e.point.as_ref().unwrap_or(&unknown);
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
    if bytes == [0, 0] || is_loopback(&flow.key().client_ip) {
        return;
    }
    let ends = Ends::of(endpoints, flow.key());
    let s = series.get(&metrics.connections, ends, ends.observed_at(flow.point()));
    metrics.connections.bytes_at(s, bytes);
}

impl FlowTable {
    /// An empty table decoding every built-in protocol.
    pub fn new(config: FlowTableConfig, metrics: Arc<CollectorMetrics>) -> Self {
        Self::with_decoders(config, metrics, Decoders::default())
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
            probes: FxHashMap::default(),
            lru: BTreeMap::new(),
            next_tick: 0,
            series: SeriesCache::default(),
        }
    }

    /// The decoders flows are offered to.
    pub fn decoders(&self) -> &Decoders {
        &self.decoders
    }

    /// Flows currently tracked.
    pub fn len(&self) -> usize {
        self.lru.len()
    }

    /// Whether no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }

    /// Declares a probe (from its `Hello`); `node` fills observations that lack one.
    pub fn register_probe(&mut self, probe_id: &str, node: &str) {
        let state = self.probe_mut(probe_id);
        if state.node.is_empty() {
            state.node = node.to_owned();
        }
    }

    /// Forgets everything kept for `probe_id` (a restarted probe); open requests are dropped.
    pub fn forget_probe(&mut self, probe_id: &str) {
        if let Some(mut state) = self.probes.remove(probe_id) {
            for flow in state.flows.values_mut() {
                self.lru.remove(&flow.tick);
                self.metrics.flow_evicted("probe_restart");
                publish_bytes(&self.metrics, &mut self.series, &state.endpoints, flow);
            }
        }
    }

    fn probe_mut(&mut self, probe_id: &str) -> &mut ProbeState {
        self.probes.entry(Arc::from(probe_id)).or_default()
    }

    /// Applies one record from `probe_id`, appending finished sessions to `out`.
    pub fn ingest(
        &mut self,
        probe_id: &str,
        record: capture::Record,
        now: Instant,
        out: &mut Vec<Session>,
    ) {
        let kind = match &record.kind {
            Some(record::Kind::Message(_)) => RecordKind::Message,
            Some(record::Kind::FlowEnd(_)) => RecordKind::FlowEnd,
            Some(record::Kind::Endpoint(_)) => RecordKind::Endpoint,
            Some(record::Kind::Stats(_)) => RecordKind::Stats,
            Some(record::Kind::FlowStart(_)) => RecordKind::FlowStart,
            None => RecordKind::Empty,
        };
        self.metrics.record_received(kind);
        let accepted = match record.kind {
            Some(record::Kind::Message(m)) => self.on_message(probe_id, m, now, out),
            Some(record::Kind::FlowEnd(e)) => {
                self.on_flow_end(probe_id, &e, out);
                true
            }
            Some(record::Kind::Endpoint(u)) => {
                self.on_endpoint(probe_id, u);
                true
            }
            // Kernel counters are exported by the probe itself. A flow's key and point come
            // with its messages too (every probe still sends them there).
            Some(record::Kind::Stats(_)) | Some(record::Kind::FlowStart(_)) | None => true,
        };
        if accepted {
            self.metrics.record_accepted();
        }
    }

    fn on_endpoint(&mut self, probe_id: &str, u: capture::EndpointUpdate) {
        let max = self.config.max_endpoints_per_probe;
        let metrics = Arc::clone(&self.metrics);
        let state = self.probe_mut(probe_id);
        if u.removed {
            state.endpoints.remove(&u.ip);
            return;
        }
        if state.endpoints.len() >= max && !state.endpoints.contains_key(&u.ip) {
            metrics.endpoints_dropped.inc();
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

    fn touch(&mut self, probe: &Arc<str>, flow_id: u64, old_tick: Option<u64>) -> u64 {
        if let Some(t) = old_tick {
            self.lru.remove(&t);
        }
        let tick = self.next_tick;
        self.next_tick += 1;
        self.lru.insert(tick, (Arc::clone(probe), flow_id));
        tick
    }

    /// The probe's shared id, registering the probe if it is new.
    fn probe_key(&mut self, probe_id: &str) -> Arc<str> {
        match self.probes.get_key_value(probe_id) {
            Some((k, _)) => Arc::clone(k),
            None => {
                let k: Arc<str> = Arc::from(probe_id);
                self.probes.insert(Arc::clone(&k), ProbeState::default());
                k
            }
        }
    }

    fn on_message(
        &mut self,
        probe_id: &str,
        mut m: capture::Message,
        now: Instant,
        out: &mut Vec<Session>,
    ) -> bool {
        let flow_id = m.flow_id;
        let old_tick = self
            .probes
            .get(probe_id)
            .and_then(|p| p.flows.get(&flow_id))
            .map(|f| f.tick);
        // A new flow's identity comes with its first message.
        if old_tick.is_none() && m.flow.is_none() {
            self.metrics.message_dropped("no_flow_key");
            return false;
        }
        if Direction::from_wire(m.direction).is_none() {
            self.metrics.message_dropped("no_direction");
            return false;
        }
        if old_tick.is_none() {
            let Some(key) = m.flow.take() else {
                return false;
            };
            while self.lru.len() >= self.config.max_flows.max(1) {
                let Some((_, (p, f))) = self.lru.pop_first() else {
                    break;
                };
                self.metrics.flow_evicted("capacity");
                self.end_flow(&p, f, out);
            }
            let probe = self.probe_key(probe_id);
            let tick = self.touch(&probe, flow_id, None);
            let hint = ProtocolHint::try_from(m.protocol).unwrap_or(ProtocolHint::Unspecified);
            let flow = Flow::new((probe_id, flow_id), tick, now, key, m.point.take(), hint);
            if let Some(state) = self.probes.get_mut(&probe) {
                state.flows.insert(flow_id, flow);
            }
        } else {
            let probe = self.probe_key(probe_id);
            let tick = self.touch(&probe, flow_id, old_tick);
            if let Some(flow) = self
                .probes
                .get_mut(&probe)
                .and_then(|p| p.flows.get_mut(&flow_id))
            {
                flow.tick = tick;
                flow.last_seen = now;
            }
        }
        let reorder_window = self.config.reorder_window;
        let metrics = Arc::clone(&self.metrics);
        let Some(state) = self.probes.get_mut(probe_id) else {
            return true;
        };
        let Some(flow) = state.flows.get_mut(&flow_id) else {
            return true;
        };
        flow.learn_point(&mut m);
        let mut ctx = Ctx {
            probe_id,
            node: &state.node,
            flow_id,
            endpoints: &state.endpoints,
            decoders: &self.decoders,
            metrics: &metrics,
            out,
        };
        // A message re-sent with its final counters replaces the one held for them.
        if flow.holds(m.index) {
            flow.update_held(m, now, &mut ctx);
            return true;
        }
        if m.index < flow.next_index() {
            metrics.message_dropped("duplicate");
            return false;
        }
        if m.index > flow.next_index() {
            flow.buffer(m, now);
            if flow.pending_len() > reorder_window {
                flow.skip_gap(now, &mut ctx);
            }
            return true;
        }
        flow.take_next(m, now, &mut ctx);
        true
    }

    fn on_flow_end(&mut self, probe_id: &str, e: &capture::FlowEnd, out: &mut Vec<Session>) {
        let point = e
            .point
            .as_ref()
            .map_or(PointKind::Unspecified, capture::ObservationPoint::kind)
            .short_name();
        let reason = match capture::FlowEndReason::try_from(e.reason) {
            Ok(capture::FlowEndReason::Fin) => "fin",
            Ok(capture::FlowEndReason::Rst) => "rst",
            Ok(capture::FlowEndReason::Idle) => "idle",
            _ => "unspecified",
        };
        self.metrics.connection_ended(point, reason);
        if let (Some(state), Some(key)) = (self.probes.get(probe_id), e.flow.as_ref()) {
            observe_connection(
                &self.metrics,
                &mut self.series,
                &state.endpoints,
                key,
                e,
                reason,
            );
        }
        let tick = self
            .probes
            .get(probe_id)
            .and_then(|p| p.flows.get(&e.flow_id))
            .map(|f| f.tick);
        if let Some(t) = tick {
            self.lru.remove(&t);
            self.end_flow(probe_id, e.flow_id, out);
        }
    }

    /// Removes a flow, processing what it buffered and emitting its open request incomplete.
    fn end_flow(&mut self, probe_id: &str, flow_id: u64, out: &mut Vec<Session>) {
        let metrics = Arc::clone(&self.metrics);
        let Some(state) = self.probes.get_mut(probe_id) else {
            return;
        };
        let Some(mut flow) = state.flows.remove(&flow_id) else {
            return;
        };
        let mut ctx = Ctx {
            probe_id,
            node: &state.node,
            flow_id,
            endpoints: &state.endpoints,
            decoders: &self.decoders,
            metrics: &metrics,
            out,
        };
        flow.close(Instant::now(), &mut ctx);
        publish_bytes(&metrics, &mut self.series, &state.endpoints, &mut flow);
    }

    /// Time-driven work: skips reordering gaps waited on too long, emits exchanges whose early
    /// flushed response was not updated in time, drops idle flows, and counts the bytes flows
    /// took in.
    pub fn flush(&mut self, now: Instant, out: &mut Vec<Session>) {
        // Idle flows, oldest first: activity order is time order.
        while let Some((&tick, (probe, flow_id))) = self.lru.first_key_value() {
            let idle = self
                .probes
                .get(probe)
                .and_then(|p| p.flows.get(flow_id))
                .is_none_or(|f| {
                    now.saturating_duration_since(f.last_seen) >= self.config.idle_timeout
                });
            if !idle {
                break;
            }
            let (probe, flow_id) = (Arc::clone(probe), *flow_id);
            self.lru.remove(&tick);
            self.metrics.flow_evicted("idle");
            self.end_flow(&probe, flow_id, out);
        }
        let cfg = &self.config;
        let metrics = Arc::clone(&self.metrics);
        for (probe_id, state) in self.probes.iter_mut() {
            for (&flow_id, flow) in state.flows.iter_mut() {
                let mut ctx = Ctx {
                    probe_id,
                    node: &state.node,
                    flow_id,
                    endpoints: &state.endpoints,
                    decoders: &self.decoders,
                    metrics: &metrics,
                    out: &mut *out,
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
                publish_bytes(&metrics, &mut self.series, &state.endpoints, flow);
            }
        }
    }
}

#[cfg(test)]
mod tests;
