//! Every metric the probe exposes, named in one place. Kernel counters and the event loop's and
//! uplink's counters are cumulative sources read periodically; [`ProbeMetrics::update`] turns
//! their growth into Prometheus counter increments. Losses go to the shared
//! `clovisor_dropped_total{stage,reason}` family.
//!
//! Labels are bounded: `counter` takes the fixed kernel counter names.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use clovisor_proto::delivery::DeliveryStats;
use clovisor_runtime::drops::Drops;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::capture::EventLoopStats;
use crate::hooks::socket::{HookAttempt, SocketHookKind};

/// Stage of the kernel programs writing events into the ring buffer.
pub const STAGE_RING_BUFFER: &str = "ring_buffer";
/// Stage of the event loop decoding ring buffer records.
pub const STAGE_DECODE: &str = "probe_decode";
/// Stage of the queue between the event loop and the uplink.
pub const STAGE_QUEUE: &str = "probe_queue";
/// Stage of pod metadata (endpoint update records) handed to the uplink, beside the event
/// loop's records: the uplink takes in `probe_queue` + `probe_endpoints` emitted.
pub const STAGE_ENDPOINTS: &str = "probe_endpoints";
/// Stage of the uplink delivering records to the collector.
pub const STAGE_UPLINK: &str = "uplink";

/// Labels of `clovisor_probe_kernel_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KernelLabels {
    /// One of the kernel's fixed counter names (`packets_seen`, `ringbuf_full_drops`, …).
    pub counter: String,
}

/// Labels of `clovisor_probe_uplink_batches_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BatchLabels {
    /// `sent` or `resent`.
    pub kind: &'static str,
}

/// Labels of `clovisor_probe_kube_watch_errors_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    /// `pods` or `services`.
    pub resource: &'static str,
}

/// Labels of `clovisor_probe_socket_hook_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    /// `fentry`, `kprobe`, `tp_btf`, or `none` when the socket point does not run.
    pub hook: &'static str,
}

/// What the socket point runs on, for `GET /api/v1/probe`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SocketPointStatus {
    /// The hook set in use, `None` when the socket point does not run.
    pub hook: Option<SocketHookKind>,
    /// Every hook set tried at start, with why it was passed over.
    pub attempts: Vec<HookAttempt>,
    /// Why the socket point does not run, when it was wanted.
    pub error: Option<String>,
}

/// Where each cumulative source stood at the last update.
#[derive(Debug, Default)]
struct Last {
    values: BTreeMap<&'static str, u64>,
    kernel: BTreeMap<String, u64>,
}

/// The probe's metrics; share behind an `Arc`.
#[derive(Debug)]
pub struct ProbeMetrics {
    kernel: Family<KernelLabels, Counter>,
    ring_events: Counter,
    records_sent: Counter,
    messages_partial: Counter,
    udp_datagrams: Counter,
    udp_flows_evicted: Counter,
    uplink_records_acked: Counter,
    uplink_batches: Family<BatchLabels, Counter>,
    uplink_connects: Counter,
    uplink_disconnects: Counter,
    uplink_replay_bytes: Gauge,
    attached_interfaces: Gauge,
    kube_watch_errors: Family<WatchLabels, Counter>,
    node_interfaces: Gauge,
    monitored_ips: Gauge,
    covered_veths: Gauge,
    socket_hook: Family<HookLabels, Gauge>,
    socket_status: Mutex<SocketPointStatus>,
    drops: Drops,
    last: Mutex<Last>,
}

impl ProbeMetrics {
    /// Metrics counting losses into `drops` (shared with other stages of the process).
    pub fn new(drops: Drops) -> Self {
        Self {
            kernel: Family::default(),
            ring_events: Counter::default(),
            records_sent: Counter::default(),
            messages_partial: Counter::default(),
            udp_datagrams: Counter::default(),
            udp_flows_evicted: Counter::default(),
            uplink_records_acked: Counter::default(),
            uplink_batches: Family::default(),
            uplink_connects: Counter::default(),
            uplink_disconnects: Counter::default(),
            uplink_replay_bytes: Gauge::default(),
            attached_interfaces: Gauge::default(),
            kube_watch_errors: Family::default(),
            node_interfaces: Gauge::default(),
            monitored_ips: Gauge::default(),
            covered_veths: Gauge::default(),
            socket_hook: Family::default(),
            socket_status: Mutex::new(SocketPointStatus::default()),
            drops,
            last: Mutex::new(Last::default()),
        }
    }

    /// Adds the probe's metrics to `registry` (not `clovisor_dropped_total`, which whoever owns
    /// the [`Drops`] registers once).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "clovisor_probe_kernel",
            "Counters of the BPF programs, summed over CPUs",
            self.kernel.clone(),
        );
        registry.register(
            "clovisor_probe_ring_events",
            "Events read from the BPF ring buffer",
            self.ring_events.clone(),
        );
        registry.register(
            "clovisor_probe_records",
            "Records handed to the uplink",
            self.records_sent.clone(),
        );
        registry.register(
            "clovisor_probe_messages_partial",
            "Messages sent before they were over (idle flush)",
            self.messages_partial.clone(),
        );
        registry.register(
            "clovisor_probe_udp_datagrams",
            "UDP datagrams captured (each one message)",
            self.udp_datagrams.clone(),
        );
        registry.register(
            "clovisor_probe_udp_flows_evicted",
            "UDP flows ended early to make room for a new one (their next datagram starts a new flow)",
            self.udp_flows_evicted.clone(),
        );
        registry.register(
            "clovisor_probe_uplink_records_acked",
            "Records the collector acknowledged",
            self.uplink_records_acked.clone(),
        );
        registry.register(
            "clovisor_probe_uplink_batches",
            "Batches written to the collector stream, by first send or re-send",
            self.uplink_batches.clone(),
        );
        registry.register(
            "clovisor_probe_uplink_connects",
            "Streams to the collector opened",
            self.uplink_connects.clone(),
        );
        registry.register(
            "clovisor_probe_uplink_disconnects",
            "Failed attempts to open a collector stream, and streams that broke",
            self.uplink_disconnects.clone(),
        );
        registry.register(
            "clovisor_probe_uplink_replay_bytes",
            "Bytes of unacknowledged batches held for replay",
            self.uplink_replay_bytes.clone(),
        );
        registry.register(
            "clovisor_probe_attached_interfaces",
            "Interfaces the capture programs are attached to",
            self.attached_interfaces.clone(),
        );
        registry.register(
            "clovisor_probe_kube_watch_errors",
            "Kubernetes list/watch requests that failed (each is retried; a 410 Gone relists)",
            self.kube_watch_errors.clone(),
        );
        registry.register(
            "clovisor_probe_node_interfaces",
            "Node interfaces (uplinks) the node-interface programs are attached to",
            self.node_interfaces.clone(),
        );
        registry.register(
            "clovisor_probe_monitored_ips",
            "Monitored pod addresses the node-interface programs restrict themselves to",
            self.monitored_ips.clone(),
        );
        registry.register(
            "clovisor_probe_covered_veths",
            "Pod veths whose pod the socket point covers: their new connections carry timings and counters only, no payload (--veth-payload uncovered)",
            self.covered_veths.clone(),
        );
        registry.register(
            "clovisor_probe_socket_hook_info",
            "The hook set feeding the socket observation point (1 for the one in use; \"none\" when it does not run)",
            self.socket_hook.clone(),
        );
    }

    /// Counts a failed list or watch of `resource`.
    pub fn kube_watch_error(&self, resource: &'static str) {
        self.kube_watch_errors
            .get_or_create(&WatchLabels { resource })
            .inc();
    }

    /// Records the socket point's hook choice: the info metric and [`Self::socket_status`].
    pub fn set_socket_hooks(
        &self,
        hook: Option<SocketHookKind>,
        attempts: Vec<HookAttempt>,
        error: Option<String>,
    ) {
        let label = hook.map_or("none", SocketHookKind::as_str);
        self.socket_hook.clear();
        self.socket_hook
            .get_or_create(&HookLabels { hook: label })
            .set(1);
        let mut status = self.socket_status.lock().unwrap_or_else(|p| p.into_inner());
        *status = SocketPointStatus {
            hook,
            attempts,
            error,
        };
    }

    /// The socket point's hook choice, as last recorded.
    pub fn socket_status(&self) -> SocketPointStatus {
        self.socket_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counts `n` endpoint updates handed to the uplink.
    pub fn endpoint_records_sent(&self, n: u64) {
        self.drops.received(STAGE_ENDPOINTS, n);
        self.drops.emitted(STAGE_ENDPOINTS, n);
    }

    /// Counts `n` endpoint updates dropped because the queue to the uplink stayed full
    /// ([`crate::targets::reconcile::ENDPOINT_SEND_WAIT`]).
    pub fn endpoint_records_dropped(&self, n: u64) {
        self.drops.received(STAGE_ENDPOINTS, n);
        self.drops.count(STAGE_ENDPOINTS, "full", n);
    }

    /// Sets the number of attached interfaces.
    pub fn set_attached(&self, n: usize) {
        self.attached_interfaces.set(n as i64);
    }

    /// Sets the number of attached node interfaces and of monitored pod addresses.
    pub fn set_node_point(&self, interfaces: usize, ips: usize) {
        self.node_interfaces.set(interfaces as i64);
        self.monitored_ips.set(ips as i64);
    }

    /// Sets the number of pod veths whose pod the socket point covers.
    pub fn set_covered_veths(&self, n: usize) {
        self.covered_veths.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Brings the counters up to the cumulative sources' current values.
    pub fn update(
        &self,
        kernel: Option<&BTreeMap<String, u64>>,
        events: &EventLoopStats,
        uplink: &DeliveryStats,
    ) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kernel) = kernel {
            for (name, value) in kernel {
                let before = last.kernel.insert(name.clone(), *value).unwrap_or(0);
                let grown = value.saturating_sub(before);
                if grown == 0 {
                    continue;
                }
                self.kernel
                    .get_or_create(&KernelLabels {
                        counter: name.clone(),
                    })
                    .inc_by(grown);
                match name.as_str() {
                    // Every event the programs tried to write is either in the ring buffer
                    // or counted full: received = emitted + dropped.
                    "events_emitted" | "socket_events_emitted" | "socket_segments_emitted" => {
                        self.drops.received(STAGE_RING_BUFFER, grown);
                        self.drops.emitted(STAGE_RING_BUFFER, grown);
                    }
                    "ringbuf_full_drops" | "socket_ringbuf_full_drops" => {
                        self.drops.received(STAGE_RING_BUFFER, grown);
                        self.drops.count(STAGE_RING_BUFFER, "full", grown)
                    }
                    // A call's bytes of a connection captured call by call: the collector
                    // sees a gap in the message.
                    "socket_segments_lost" => {
                        self.drops.received(STAGE_RING_BUFFER, grown);
                        self.drops.count(STAGE_RING_BUFFER, "segment_full", grown)
                    }
                    // Bytes in the middle of a long call (past what is copied of one call,
                    // before its last bytes): not captured.
                    "socket_call_bytes_skipped" => {
                        self.drops
                            .count("socket_capture", "call_bytes_skipped", grown)
                    }
                    "connection_update_failed" => {
                        self.drops.count("connection_map", "update_failed", grown)
                    }
                    "socket_connection_update_failed" => {
                        self.drops
                            .count("socket_connection_map", "update_failed", grown)
                    }
                    // A request whose held first bytes were evicted before its response
                    // came: its record goes on without them.
                    "head_lost" | "socket_head_lost" => {
                        self.drops.count("held_heads", "evicted", grown)
                    }
                    _ => {}
                }
            }
        }
        let mut delta = |key: &'static str, value: u64| {
            let before = last.values.insert(key, value).unwrap_or(0);
            value.saturating_sub(before)
        };
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let read = delta("events", events.events);
        self.ring_events.inc_by(read);
        // Decode: events read = decoded + bad.
        let bad = delta("bad_events", events.bad_events);
        self.drops.received(STAGE_DECODE, read);
        self.drops.emitted(STAGE_DECODE, read.saturating_sub(bad));
        self.drops.count(STAGE_DECODE, "bad_event", bad);
        // Queue: records the assembler made = handed to the uplink + dropped full.
        let sent = delta("records_sent", events.records_sent);
        let full = delta("dropped_full", events.records_dropped_full);
        self.records_sent.inc_by(sent);
        self.drops.received(STAGE_QUEUE, sent + full);
        self.drops.emitted(STAGE_QUEUE, sent);
        self.drops.count(STAGE_QUEUE, "full", full);
        self.messages_partial
            .inc_by(delta("partial", events.assembler.partial_flushes));
        self.udp_datagrams
            .inc_by(delta("datagrams", events.assembler.datagrams));
        self.udp_flows_evicted.inc_by(delta(
            "udp_flows_evicted",
            events.assembler.udp_flows_evicted,
        ));
        self.drops.count(
            "probe_assembler",
            "lost_message",
            delta("lost_messages", events.assembler.lost_messages),
        );
        self.drops.count(
            "probe_assembler",
            "segment_orphan",
            delta("segments_orphaned", events.assembler.segments_orphaned),
        );
        self.drops.count(
            "probe_assembler",
            "segment_over_bound",
            delta("segments_over_bound", events.assembler.segments_over_bound),
        );
        self.drops.count(
            "probe_assembler",
            "expired",
            delta("pending_expired", events.assembler.pending_expired),
        );
        let acked = delta("acked", load(&uplink.items_acked));
        self.uplink_records_acked.inc_by(acked);
        // Uplink: records in = acknowledged + dropped at shutdown + buffered.
        self.drops.received(
            STAGE_UPLINK,
            delta("uplink_in", load(&uplink.items_received)),
        );
        self.drops.emitted(STAGE_UPLINK, acked);
        self.uplink_batches
            .get_or_create(&BatchLabels { kind: "sent" })
            .inc_by(delta("batches_sent", load(&uplink.batches_sent)));
        self.uplink_batches
            .get_or_create(&BatchLabels { kind: "resent" })
            .inc_by(delta("batches_resent", load(&uplink.batches_resent)));
        self.uplink_connects
            .inc_by(delta("connects", load(&uplink.connects)));
        self.uplink_disconnects
            .inc_by(delta("disconnects", load(&uplink.disconnects)));
        self.drops.count(
            STAGE_UPLINK,
            "shutdown",
            delta("dropped_shutdown", load(&uplink.items_dropped_shutdown)),
        );
        self.drops
            .set_buffered(STAGE_UPLINK, load(&uplink.items_buffered));
        self.uplink_replay_bytes
            .set(load(&uplink.replay_bytes).min(i64::MAX as u64) as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(m: &ProbeMetrics, drops: &Drops) -> String {
        let mut registry = Registry::default();
        m.register(&mut registry);
        drops.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
        out
    }

    #[test]
    fn cumulative_sources_become_counter_increments_and_drops() {
        let drops = Drops::default();
        let m = ProbeMetrics::new(drops.clone());
        let uplink = DeliveryStats::default();
        let mut events = EventLoopStats {
            events: 10,
            records_dropped_full: 2,
            ..EventLoopStats::default()
        };
        let mut kernel = BTreeMap::from([
            ("packets_seen".to_owned(), 100),
            ("ringbuf_full_drops".to_owned(), 3),
        ]);
        m.update(Some(&kernel), &events, &uplink);
        events.events = 15;
        kernel.insert("ringbuf_full_drops".to_owned(), 4);
        m.update(Some(&kernel), &events, &uplink);
        // A read that failed (None) changes nothing kernel-side.
        m.update(None, &events, &uplink);

        let text = encode(&m, &drops);
        for line in [
            "clovisor_probe_ring_events_total 15",
            r#"clovisor_probe_kernel_total{counter="packets_seen"} 100"#,
            r#"clovisor_probe_kernel_total{counter="ringbuf_full_drops"} 4"#,
            r#"clovisor_dropped_total{stage="ring_buffer",reason="full"} 4"#,
            r#"clovisor_dropped_total{stage="probe_queue",reason="full"} 2"#,
            r#"clovisor_received_total{stage="ring_buffer"} 4"#,
            r#"clovisor_received_total{stage="probe_decode"} 15"#,
            r#"clovisor_emitted_total{stage="probe_decode"} 15"#,
            r#"clovisor_received_total{stage="probe_queue"} 2"#,
            r#"clovisor_emitted_total{stage="probe_queue"} 0"#,
        ] {
            assert!(text.contains(line), "expected {line:?} in:\n{text}");
        }
    }
}
