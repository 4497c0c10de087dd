//! Flow reassembly: orders each flow's messages, pairs requests with responses and builds
//! [`Session`]s.
//!
//! A flow is one connection instance at one observation point, keyed by (probe id, flow id).
//! Messages alternate direction by construction (a message is everything one side sent before
//! the other replied), so a client->server message followed by the next server->client message
//! is one exchange; keep-alive connections carry many. State is bounded: at most
//! [`FlowTableConfig::max_flows`] flows (least recently active evicted first) and flows idle for
//! [`FlowTableConfig::idle_timeout`] are dropped, both counted.

mod session;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clovisor_proto::capture::v1::{self as capture, record, Direction, ProtocolHint};
use clovisor_proto::common::v1::{PointKind, Side};
use clovisor_proto::session::v1::Session;

use crate::decode::{self, RequestHead, ResponseHead, Sniffed};
use crate::metrics::{CollectorMetrics, ConnectionEnd};
use clovisor_runtime::workloads::{is_loopback, End};

pub use session::EndpointMeta;

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

/// Timings and counters of one message: what is kept of it once its payload is decoded.
#[derive(Debug, Clone, Copy, Default)]
struct MessageStats {
    index: u32,
    start: u64,
    end: u64,
    tcp_seq: u32,
    bytes: u64,
    packets: u32,
    retransmits: u32,
}

impl MessageStats {
    fn of(m: &capture::Message) -> Self {
        Self {
            index: m.index,
            start: m.start_unix_nanos,
            end: m.end_unix_nanos,
            tcp_seq: m.tcp_seq,
            bytes: m.bytes,
            packets: m.packets,
            retransmits: m.retransmits,
        }
    }

    /// Extends `self` by a later message of the same side (request body after `100 Continue`).
    fn extend(&mut self, m: &capture::Message) {
        self.end = self.end.max(m.end_unix_nanos);
        self.bytes = self.bytes.saturating_add(m.bytes);
        self.packets = self.packets.saturating_add(m.packets);
        self.retransmits = self.retransmits.saturating_add(m.retransmits);
    }
}

/// A request waiting for its response.
#[derive(Debug)]
struct Exchange {
    request: MessageStats,
    requests: Vec<RequestHead>,
    /// An interim `100 Continue` was seen: the next client message is the request body.
    awaiting_body: bool,
    /// Response bytes seen so far in interim responses.
    interim: Option<MessageStats>,
    /// A response the probe flushed early, kept until updated, superseded or timed out.
    provisional: Option<(capture::Message, Instant)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowProtocol {
    Unknown,
    Http1,
    Unsupported,
}

#[derive(Debug)]
struct Flow {
    tick: u64,
    last_seen: Instant,
    next_index: u32,
    pending: BTreeMap<u32, (capture::Message, Instant)>,
    protocol: FlowProtocol,
    exchange: Option<Exchange>,
    key: capture::FlowKey,
    point: capture::ObservationPoint,
}

#[derive(Debug, Default)]
struct ProbeState {
    node: String,
    flows: HashMap<u64, Flow>,
    endpoints: HashMap<Vec<u8>, EndpointMeta>,
}

/// Reassembles flows of many probes into sessions; see the module documentation.
#[derive(Debug)]
pub struct FlowTable {
    config: FlowTableConfig,
    metrics: Arc<CollectorMetrics>,
    probes: HashMap<Arc<str>, ProbeState>,
    /// Activity order: tick -> flow, oldest first.
    lru: BTreeMap<u64, (Arc<str>, u64)>,
    next_tick: u64,
}

/// Counts a connection end between workloads, where it was seen. Loopback connections (an app
/// and its sidecar inside one pod) are no flow between workloads and are left out.
fn observe_connection(
    metrics: &CollectorMetrics,
    state: &ProbeState,
    key: &capture::FlowKey,
    e: &capture::FlowEnd,
    reason: &'static str,
) {
    if !matches!(reason, "fin" | "rst") || is_loopback(&key.client_ip) {
        return;
    }
    let client = state.endpoints.get(&key.client_ip);
    let server = state.endpoints.get(&key.server_ip);
    let unknown = capture::ObservationPoint::default();
    let point = e.point.as_ref().unwrap_or(&unknown);
    let observed_at = match point.kind() {
        PointKind::Socket => match point.side() {
            Side::Client => "client_socket",
            Side::Server => "server_socket",
            Side::Unspecified => "socket",
        },
        PointKind::Node => "node",
        _ if session::owns_veth(point, server) => "server_veth",
        _ if session::owns_veth(point, client) => "client_veth",
        _ => "veth",
    };
    metrics.connections.ended(ConnectionEnd {
        client: client.map(end),
        server: server.map(end),
        observed_at,
        reason,
        srtt_us: e.srtt_us,
        retransmits: e.total_retransmits,
    });
}

fn end(m: &EndpointMeta) -> End<'_> {
    End {
        pod: &m.pod,
        namespace: &m.namespace,
        workload: &m.workload,
    }
}

/// Where a flow's sessions go, and what they need to know about the probe.
struct Ctx<'a> {
    probe_id: &'a str,
    node: &'a str,
    flow_id: u64,
    endpoints: &'a HashMap<Vec<u8>, EndpointMeta>,
    metrics: &'a CollectorMetrics,
    out: &'a mut Vec<Session>,
}

impl FlowTable {
    /// An empty table.
    pub fn new(config: FlowTableConfig, metrics: Arc<CollectorMetrics>) -> Self {
        Self {
            config,
            metrics,
            probes: HashMap::new(),
            lru: BTreeMap::new(),
            next_tick: 0,
        }
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
        if let Some(state) = self.probes.remove(probe_id) {
            for flow in state.flows.values() {
                self.lru.remove(&flow.tick);
                self.metrics.flow_evicted("probe_restart");
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
            Some(record::Kind::Message(_)) => "message",
            Some(record::Kind::FlowEnd(_)) => "flow_end",
            Some(record::Kind::Endpoint(_)) => "endpoint",
            Some(record::Kind::Stats(_)) => "stats",
            Some(record::Kind::FlowStart(_)) => "flow_start",
            None => "empty",
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
        state.endpoints.insert(
            u.ip,
            EndpointMeta {
                pod: u.pod,
                namespace: u.namespace,
                node: u.node,
                workload: u.workload,
                ifindex: u.ifindex,
                interface: u.interface,
            },
        );
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

    fn on_message(
        &mut self,
        probe_id: &str,
        m: capture::Message,
        now: Instant,
        out: &mut Vec<Session>,
    ) -> bool {
        let Some(key) = m.flow.clone() else {
            self.metrics.message_dropped("no_flow_key");
            return false;
        };
        if !matches!(
            Direction::try_from(m.direction),
            Ok(Direction::ClientToServer | Direction::ServerToClient)
        ) {
            self.metrics.message_dropped("no_direction");
            return false;
        }
        let flow_id = m.flow_id;
        let exists = self
            .probes
            .get(probe_id)
            .is_some_and(|p| p.flows.contains_key(&flow_id));
        if !exists {
            while self.lru.len() >= self.config.max_flows.max(1) {
                let Some((_, (p, f))) = self.lru.pop_first() else {
                    break;
                };
                self.metrics.flow_evicted("capacity");
                self.end_flow(&p, f, out);
            }
        }
        let (probe, _) = match self.probes.get_key_value(probe_id) {
            Some((k, _)) => (Arc::clone(k), ()),
            None => {
                let k: Arc<str> = Arc::from(probe_id);
                self.probes.insert(Arc::clone(&k), ProbeState::default());
                (k, ())
            }
        };
        let old_tick = self
            .probes
            .get(&probe)
            .and_then(|p| p.flows.get(&flow_id))
            .map(|f| f.tick);
        let tick = self.touch(&probe, flow_id, old_tick);
        let cfg = self.config.clone();
        let metrics = Arc::clone(&self.metrics);
        let Some(state) = self.probes.get_mut(&probe) else {
            return true;
        };
        let flow = state.flows.entry(flow_id).or_insert_with(|| Flow {
            tick,
            last_seen: now,
            next_index: 0,
            pending: BTreeMap::new(),
            protocol: FlowProtocol::Unknown,
            exchange: None,
            key,
            point: m.point.clone().unwrap_or_default(),
        });
        flow.tick = tick;
        flow.last_seen = now;
        let mut ctx = Ctx {
            probe_id: &probe,
            node: &state.node,
            flow_id,
            endpoints: &state.endpoints,
            metrics: &metrics,
            out,
        };

        // A partial response re-sent with its final counters replaces the provisional one.
        let is_update = flow
            .exchange
            .as_ref()
            .and_then(|e| e.provisional.as_ref())
            .is_some_and(|(p, _)| p.index == m.index);
        if is_update {
            flow.process(m, now, &mut ctx);
            return true;
        }
        if m.index < flow.next_index {
            metrics.message_dropped("duplicate");
            return false;
        }
        if m.index > flow.next_index {
            flow.pending.insert(m.index, (m, now));
            if flow.pending.len() > cfg.reorder_window {
                flow.skip_gap(&mut ctx, now);
            }
            return true;
        }
        flow.process(m, now, &mut ctx);
        flow.next_index = flow.next_index.saturating_add(1);
        flow.drain_pending(&mut ctx, now);
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
            observe_connection(&self.metrics, state, key, e, reason);
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
            metrics: &metrics,
            out,
        };
        let now = Instant::now();
        while !flow.pending.is_empty() {
            flow.skip_gap(&mut ctx, now);
        }
        flow.close_exchange(&mut ctx);
    }

    /// Time-driven work: skips reordering gaps waited on too long, emits exchanges whose early
    /// flushed response was not updated in time, and drops idle flows.
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
        let cfg = self.config.clone();
        let metrics = Arc::clone(&self.metrics);
        for (probe_id, state) in self.probes.iter_mut() {
            for (&flow_id, flow) in state.flows.iter_mut() {
                let mut ctx = Ctx {
                    probe_id,
                    node: &state.node,
                    flow_id,
                    endpoints: &state.endpoints,
                    metrics: &metrics,
                    out: &mut *out,
                };
                while flow.pending.first_key_value().is_some_and(|(_, (_, at))| {
                    now.saturating_duration_since(*at) >= cfg.reorder_timeout
                }) {
                    flow.skip_gap(&mut ctx, now);
                }
                let stale = flow
                    .exchange
                    .as_ref()
                    .and_then(|e| e.provisional.as_ref())
                    .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= cfg.partial_grace);
                if stale {
                    flow.finish_provisional(&mut ctx);
                }
            }
        }
    }
}

impl Flow {
    /// Gives up on the next missing index: continues at the first buffered message.
    fn skip_gap(&mut self, ctx: &mut Ctx<'_>, now: Instant) {
        if let Some((&idx, _)) = self.pending.first_key_value() {
            if idx > self.next_index {
                ctx.metrics.message_dropped("gap");
                self.next_index = idx;
            }
        }
        self.drain_pending(ctx, now);
    }

    fn drain_pending(&mut self, ctx: &mut Ctx<'_>, now: Instant) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.next_index {
                break;
            }
            let (m, _) = entry.remove();
            self.process(m, now, ctx);
            self.next_index = self.next_index.saturating_add(1);
        }
    }

    /// Handles one message in order.
    fn process(&mut self, m: capture::Message, now: Instant, ctx: &mut Ctx<'_>) {
        if self.point == capture::ObservationPoint::default() {
            self.point = m.point.clone().unwrap_or_default();
        }
        if m.direction == Direction::ClientToServer as i32 {
            self.on_request(m, ctx);
        } else {
            self.on_response(m, now, ctx);
        }
    }

    fn on_request(&mut self, m: capture::Message, ctx: &mut Ctx<'_>) {
        if let Some(ex) = self.exchange.as_mut() {
            if ex.provisional.is_some() {
                self.finish_provisional(ctx);
            } else if ex.awaiting_body {
                ex.request.extend(&m);
                ex.awaiting_body = false;
                return;
            } else {
                // Two requests in a row means a response went missing.
                self.close_exchange(ctx);
            }
        }
        if self.protocol == FlowProtocol::Unknown {
            let sniffed = decode::sniff(&m.payload);
            let hint = ProtocolHint::try_from(m.protocol).unwrap_or(ProtocolHint::Unspecified);
            self.protocol = match (sniffed, hint) {
                (Sniffed::Http1Request, _) => FlowProtocol::Http1,
                // The port says HTTP but the bytes do not (yet): decode and count the error.
                (_, ProtocolHint::Http) => FlowProtocol::Unknown,
                _ => {
                    ctx.metrics.flows_unsupported.inc();
                    FlowProtocol::Unsupported
                }
            };
            if self.protocol == FlowProtocol::Unknown {
                ctx.metrics
                    .decode_error(decode::DecodeError::NotHttp.as_label());
                return;
            }
        }
        if self.protocol != FlowProtocol::Http1 {
            return;
        }
        let requests = match decode::decode_requests(&m.payload) {
            Ok(r) => r,
            Err(e) => {
                ctx.metrics.decode_error(e.as_label());
                Vec::new()
            }
        };
        for r in &requests {
            if let Some(e) = r.trace_error {
                ctx.metrics.decode_error(e.as_label());
            }
        }
        self.exchange = Some(Exchange {
            request: MessageStats::of(&m),
            requests,
            awaiting_body: false,
            interim: None,
            provisional: None,
        });
    }

    fn on_response(&mut self, m: capture::Message, now: Instant, ctx: &mut Ctx<'_>) {
        let Some(ex) = self.exchange.as_mut() else {
            if self.protocol != FlowProtocol::Unsupported {
                ctx.metrics.message_dropped("response_without_request");
            }
            return;
        };
        if m.partial && !response_is_whole(&m, &ex.requests) {
            ex.provisional = Some((m, now));
            return;
        }
        ex.provisional = None;
        self.complete(m, ctx);
    }

    fn finish_provisional(&mut self, ctx: &mut Ctx<'_>) {
        if let Some((m, _)) = self.exchange.as_mut().and_then(|e| e.provisional.take()) {
            self.complete(m, ctx);
        }
    }

    /// Pairs the open request(s) with response message `m` and emits the sessions.
    fn complete(&mut self, m: capture::Message, ctx: &mut Ctx<'_>) {
        let Some(mut ex) = self.exchange.take() else {
            return;
        };
        if ex.requests.is_empty() {
            // The request was not decodable (already counted); its response is of no use.
            return;
        }
        let responses = match decode::decode_responses(&m.payload, &ex.requests) {
            Ok(r) => r,
            Err(e) => {
                ctx.metrics.decode_error(e.as_label());
                Vec::new()
            }
        };
        let mut response = MessageStats::of(&m);
        if let Some(interim) = ex.interim {
            response.start = interim.start;
            response.bytes = response.bytes.saturating_add(interim.bytes);
            response.packets = response.packets.saturating_add(interim.packets);
            response.tcp_seq = interim.tcp_seq;
        }
        let finals: Vec<&ResponseHead> = responses.iter().filter(|r| !r.is_interim()).collect();
        if finals.is_empty() && !responses.is_empty() {
            // Only `100 Continue`: the request body and the final response are still to come.
            // `response` already includes earlier interim responses.
            ex.interim = Some(response);
            ex.awaiting_body = true;
            self.exchange = Some(ex);
            return;
        }
        self.emit_exchange(ctx, &ex, Some(response), &finals, false);
    }

    /// Emits one session per request of `ex` (several when pipelined), the `k`-th paired with
    /// the `k`-th of `finals`.
    fn emit_exchange(
        &self,
        ctx: &mut Ctx<'_>,
        ex: &Exchange,
        response: Option<MessageStats>,
        finals: &[&ResponseHead],
        incomplete: bool,
    ) {
        let n = ex.requests.len();
        for (k, req) in ex.requests.iter().enumerate() {
            session::emit(
                ctx,
                self,
                session::Parts {
                    request: ex.request,
                    response,
                    head: req,
                    response_head: finals.get(k).copied(),
                    position: k,
                    pipelined: n,
                    incomplete,
                },
            );
        }
    }

    /// Emits the open request (if any) as incomplete.
    fn close_exchange(&mut self, ctx: &mut Ctx<'_>) {
        if self
            .exchange
            .as_ref()
            .is_some_and(|e| e.provisional.is_some())
        {
            self.finish_provisional(ctx);
            return;
        }
        let Some(ex) = self.exchange.take() else {
            return;
        };
        self.emit_exchange(ctx, &ex, ex.interim, &[], true);
    }
}

#[cfg(test)]
mod tests;

/// Whether a response the probe flushed early (`partial`) already holds all its bytes: a single
/// response whose head says how long its body is, and whose byte count says all of it arrived.
/// Such a response needs no grace period; chunked or unsized ones wait for the final counters.
fn response_is_whole(m: &capture::Message, requests: &[RequestHead]) -> bool {
    let [request] = requests else {
        return false;
    };
    let Ok(head) = decode::http1::decode_response(&m.payload) else {
        return false;
    };
    if head.truncated || head.is_interim() {
        return false;
    }
    let body = if request.method == "HEAD" || matches!(head.status, 204 | 304) {
        0
    } else if head.chunked {
        return false;
    } else {
        match head.content_length {
            Some(n) => n,
            None => return false,
        }
    };
    m.bytes == head.head_len as u64 + body
}
