//! Loads the capture programs, keeps their maps in step with what to trace, attaches them
//! to pod veths and turns their ring buffer into [`Record`]s.

pub mod abi;
pub mod assembler;
pub mod egress;
mod object;
pub mod raw;
pub mod socket;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::Ebpf;
use clovisor_proto::capture::v1::{PointKind, ProtocolHint, Record};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc::{self, error::TrySendError};

use self::assembler::{
    Assembler, AssemblerStats, AttachedInterface, InterfaceNames, ConnectionSource,
};
use self::raw::{Event, MsgStart, RawConnection, RawConnectionKey, ConnectionState};
use crate::error::{Error, Result};
use crate::hooks::node_iface;
use crate::hooks::pod_veth::{self, PodVethHook, PROGRAMS};

pub use crate::hooks::pod_veth::{AttachMode, AttachPolicy};

/// The compiled BPF object (built by `build.rs`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc_capture.bpf.o"));

const MAPS: object::ObjectMaps = object::ObjectMaps {
    events: "events",
    connections: "connections",
    stats: "stats",
    config: "config",
    traced_ports: "traced_ports",
};
const MAP_MONITORED_IPS: &str = "monitored_ips";
/// Events handled before yielding to send records and check shutdown.
const DRAIN_BATCH: usize = 4096;
/// How often the boot -> Unix clock offset is resampled.
const CLOCK_RESYNC: Duration = Duration::from_secs(60);

/// Names of the kernel counters, by `stats` index.
const STAT_NAMES: [(u32, &str); abi::CLOVISOR_STAT_COUNT as usize] = [
    (abi::CLOVISOR_STAT_PACKETS_SEEN, "packets_seen"),
    (abi::CLOVISOR_STAT_PACKETS_TRACED, "packets_traced"),
    (abi::CLOVISOR_STAT_EVENTS_EMITTED, "events_emitted"),
    (abi::CLOVISOR_STAT_RINGBUF_FULL, "ringbuf_full_drops"),
    (
        abi::CLOVISOR_STAT_CONN_UPDATE_FAILED,
        "connection_update_failed",
    ),
    (abi::CLOVISOR_STAT_PARSE_FAILED, "parse_failed"),
    (abi::CLOVISOR_STAT_CONNS_CREATED, "connections_created"),
    (abi::CLOVISOR_STAT_CONNS_ENDED, "connections_ended"),
    (abi::CLOVISOR_STAT_RETRANSMIT_PACKETS, "retransmit_packets"),
    (abi::CLOVISOR_STAT_SNAP_LOAD_FAILED, "snap_load_failed"),
    (abi::CLOVISOR_STAT_UNPARSED_IP, "unparsed_ip"),
];

/// How the capture is sized and labelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// First bytes of each message copied (1..=2048).
    pub snaplen: u32,
    /// Ring buffer size: a power of two, at least one page.
    pub ring_buffer_bytes: u32,
    /// Connections tracked at once (LRU beyond that), also the bound of pending messages.
    pub max_connections: u32,
    /// Quiet time after which a message is emitted with the kernel's current counters.
    pub idle_flush: Duration,
    /// Node name put in every observation point.
    pub node: String,
    /// TCX with legacy fallback (default), or legacy tc filters only.
    pub attach: AttachPolicy,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            snaplen: abi::CLOVISOR_DEFAULT_SNAPLEN,
            ring_buffer_bytes: 4 << 20,
            max_connections: 65_536,
            idle_flush: Duration::from_millis(200),
            node: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default(),
            attach: AttachPolicy::Auto,
        }
    }
}

impl CaptureConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::Config { reason });
        if self.snaplen == 0 || self.snaplen > abi::CLOVISOR_MAX_SNAPLEN {
            return bad(format!(
                "snaplen {} not in 1..={}",
                self.snaplen,
                abi::CLOVISOR_MAX_SNAPLEN
            ));
        }
        if !self.ring_buffer_bytes.is_power_of_two() || self.ring_buffer_bytes < 4096 {
            return bad(format!(
                "ring_buffer_bytes {} must be a power of two ≥ 4096",
                self.ring_buffer_bytes
            ));
        }
        if self.max_connections == 0 {
            return bad("max_connections must be > 0".into());
        }
        if self.idle_flush.is_zero() {
            return bad("idle_flush must be > 0".into());
        }
        Ok(())
    }
}

/// The loaded capture: programs, maps and the interfaces they are attached to.
pub struct Capture {
    ebpf: Ebpf,
    stats: Arc<KernelStats>,
    cfg: CaptureConfig,
    hooks: BTreeMap<String, PodVethHook>,
    interfaces: InterfaceNames,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("cfg", &self.cfg)
            .field("attached", &self.hooks.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

pub(crate) fn map_err(
    map: &'static str,
    what: &'static str,
) -> impl Fn(aya::maps::MapError) -> Error {
    move |source| Error::Map { map, what, source }
}

impl Capture {
    /// Loads and verifies the programs and sizes the maps; attaches nothing yet.
    pub fn load(cfg: &CaptureConfig) -> Result<Self> {
        let (ebpf, stats) = object::load(OBJECT, &MAPS, &STAT_NAMES, cfg)?;
        let mut capture = Self {
            ebpf,
            stats,
            cfg: cfg.clone(),
            hooks: BTreeMap::new(),
            interfaces: Arc::new(RwLock::new(BTreeMap::new())),
        };
        for (name, _) in PROGRAMS.into_iter().chain(node_iface::PROGRAMS) {
            let prog: &mut aya::programs::SchedClassifier = capture
                .ebpf
                .program_mut(name)
                .ok_or(Error::Program {
                    program: name,
                    what: "missing from the object",
                    source: aya::programs::ProgramError::NotLoaded,
                })?
                .try_into()
                .map_err(|source| Error::Program {
                    program: name,
                    what: "is not a tc classifier",
                    source,
                })?;
            prog.load().map_err(|source| Error::Program {
                program: name,
                what: "verifier",
                source,
            })?;
        }
        capture.set_snaplen(cfg.snaplen)?;
        Ok(capture)
    }

    /// Changes how many first bytes of each message the kernel copies (1..=2048); takes
    /// effect for messages that start from now on.
    pub fn set_snaplen(&mut self, snaplen: u32) -> Result<()> {
        object::set_snaplen(&mut self.ebpf, &MAPS, &mut self.cfg, snaplen)
    }

    /// Writes one slot of the kernel's `config` array.
    fn set_config_value(&mut self, index: abi::clovisor_config_index, value: u32) -> Result<()> {
        object::set_config_value(&mut self.ebpf, &MAPS, index, value)
    }

    /// The configuration it was loaded with.
    pub fn config(&self) -> &CaptureConfig {
        &self.cfg
    }

    /// Replaces the traced ports (server ports and what they speak).
    pub fn set_traced_ports(&mut self, ports: &BTreeMap<u16, ProtocolHint>) -> Result<()> {
        object::set_traced_ports(&mut self.ebpf, &MAPS, ports)
    }

    /// The traced ports as the kernel map holds them now.
    pub fn traced_ports(&self) -> Result<BTreeMap<u16, ProtocolHint>> {
        let map: BpfHashMap<_, u16, u8> =
            BpfHashMap::try_from(self.ebpf.map(MAPS.traced_ports).ok_or(Error::MissingMap {
                map: MAPS.traced_ports,
            })?)
            .map_err(map_err(MAPS.traced_ports, "open"))?;
        map.iter()
            .map(|entry| {
                entry
                    .map(|(port, hint)| (port, raw::protocol_hint(hint)))
                    .map_err(map_err(MAPS.traced_ports, "read"))
            })
            .collect()
    }

    /// Replaces the addresses of monitored pods, which the node-interface programs restrict
    /// themselves to.
    pub fn set_monitored_ips(&mut self, ips: &BTreeSet<std::net::IpAddr>) -> Result<()> {
        let max = abi::CLOVISOR_MAX_MONITORED_IPS as usize;
        if ips.len() > max {
            return Err(Error::Config {
                reason: format!("{} monitored pod addresses, at most {max}", ips.len()),
            });
        }
        // Keyed by the 16 address bytes of `struct clovisor_ip`.
        let wanted: BTreeMap<[u8; 16], u8> = ips.iter().map(|ip| (raw::ip16(*ip), 1)).collect();
        replace_map(&mut self.ebpf, MAP_MONITORED_IPS, &wanted)
    }

    /// Attaches both programs to the host-side veth `ifname`. Idempotent: attaching an
    /// interface already attached (same ifindex) does nothing.
    pub fn attach_pod_veth(&mut self, ifname: &str) -> Result<AttachMode> {
        self.attach_point(ifname, PointKind::Pod)
    }

    /// Attaches the node-interface programs to `ifname` (an uplink): both directions, only
    /// monitored pods' traffic ([`Capture::set_monitored_ips`]). Idempotent like
    /// [`Capture::attach_pod_veth`].
    pub fn attach_node_interface(&mut self, ifname: &str) -> Result<AttachMode> {
        self.attach_point(ifname, PointKind::Node)
    }

    fn attach_point(&mut self, ifname: &str, kind: PointKind) -> Result<AttachMode> {
        let current = pod_veth::ifindex(ifname)?;
        if let Some(h) = self.hooks.get(ifname) {
            if h.ifindex == current && self.kind_of(h.ifindex) == Some(kind) {
                return Ok(h.mode);
            }
        }
        // Same name, new ifindex: the old veth is gone; forget its hooks.
        if let Some(old) = self.hooks.remove(ifname) {
            if let Err(e) = pod_veth::detach(&mut self.ebpf, old) {
                tracing::debug!(interface = ifname, error = %e, "stale hook cleanup");
            }
        }
        // Named before the programs run: the event loop may read the interface's first
        // events before the attach returns.
        let previous = self.interfaces.write().ok().and_then(|mut names| {
            names.insert(
                current,
                AttachedInterface {
                    name: ifname.to_owned(),
                    kind,
                },
            )
        });
        let attached = match kind {
            PointKind::Node => node_iface::attach(&mut self.ebpf, ifname, self.cfg.attach),
            _ => pod_veth::attach(&mut self.ebpf, ifname, self.cfg.attach),
        };
        let hook = match attached {
            Ok(hook) => hook,
            Err(e) => {
                if let Ok(mut names) = self.interfaces.write() {
                    match previous {
                        Some(p) => names.insert(current, p),
                        None => names.remove(&current),
                    };
                }
                return Err(e);
            }
        };
        let mode = hook.mode;
        self.hooks.insert(ifname.to_owned(), hook);
        Ok(mode)
    }

    fn kind_of(&self, ifindex: u32) -> Option<PointKind> {
        self.interfaces
            .read()
            .ok()
            .and_then(|m| m.get(&ifindex).map(|i| i.kind))
    }

    /// Node interfaces currently attached.
    pub fn node_interfaces(&self) -> Vec<String> {
        self.hooks
            .values()
            .filter(|h| self.kind_of(h.ifindex) == Some(PointKind::Node))
            .map(|h| h.interface.clone())
            .collect()
    }

    /// Interfaces currently attached, with their index and mode.
    pub fn attached(&self) -> Vec<(String, u32, AttachMode)> {
        self.hooks
            .values()
            .map(|h| (h.interface.clone(), h.ifindex, h.mode))
            .collect()
    }

    /// Detaches from `ifname`; nothing to do if it is not attached.
    pub fn detach(&mut self, ifname: &str) -> Result<()> {
        match self.hooks.remove(ifname) {
            Some(hook) => pod_veth::detach(&mut self.ebpf, hook),
            None => Ok(()),
        }
    }

    /// Detaches from every interface; the first error is returned after trying all.
    pub fn detach_all(&mut self) -> Result<()> {
        let mut first = None;
        let names: Vec<String> = self.hooks.keys().cloned().collect();
        for name in names {
            if let Err(e) = self.detach(&name) {
                tracing::warn!(interface = %name, error = %e, "detach failed");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Kernel counters summed over CPUs, by name.
    pub fn kernel_stats(&self) -> Result<BTreeMap<String, u64>> {
        self.stats.read()
    }

    /// A reader of the kernel counters that outlives moves of the capture (for metrics).
    pub fn kernel_stats_handle(&self) -> Arc<KernelStats> {
        Arc::clone(&self.stats)
    }

    /// Takes the ring buffer and the connection map into an [`EventLoop`]; once only.
    pub fn take_event_loop(&mut self) -> Result<EventLoop> {
        object::take_event_loop(
            &mut self.ebpf,
            &MAPS,
            &self.cfg,
            Arc::clone(&self.interfaces),
            KernelConnections,
        )
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Err(e) = self.detach_all() {
            tracing::warn!(error = %e, "detaching on drop failed");
        }
    }
}

/// Makes the hash map `name` hold exactly `wanted`: inserts first, so an entry kept across the
/// update is never missing, then removes the rest.
pub(crate) fn replace_map<K, V>(
    ebpf: &mut Ebpf,
    name: &'static str,
    wanted: &BTreeMap<K, V>,
) -> Result<()>
where
    K: aya::Pod + Ord,
    V: aya::Pod,
{
    let mut map: BpfHashMap<_, K, V> =
        BpfHashMap::try_from(ebpf.map_mut(name).ok_or(Error::MissingMap { map: name })?)
            .map_err(map_err(name, "open"))?;
    let present: BTreeSet<K> = map.keys().filter_map(|k| k.ok()).collect();
    for (k, v) in wanted {
        map.insert(k, v, 0).map_err(map_err(name, "insert"))?;
    }
    for k in present.iter().filter(|k| !wanted.contains_key(k)) {
        map.remove(k).map_err(map_err(name, "remove"))?;
    }
    Ok(())
}

/// Removes legacy tc filters of ours left by a crashed run; see [`pod_veth::cleanup_leftovers`].
pub fn cleanup_leftovers() -> Result<usize> {
    pod_veth::cleanup_leftovers()
}

/// Counters of the event loop, cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventLoopStats {
    /// Ring buffer records read.
    pub events: u64,
    /// Records that could not be decoded (skipped).
    pub bad_events: u64,
    /// Records handed to the output channel.
    pub records_sent: u64,
    /// Records dropped because the output channel was full.
    pub records_dropped_full: u64,
    /// The assembler's counters.
    pub assembler: AssemblerStats,
}

impl EventLoopStats {
    /// Adds `other` (another event loop feeding the same queue) to these counters.
    pub fn add(&mut self, other: &Self) {
        self.events += other.events;
        self.bad_events += other.bad_events;
        self.records_sent += other.records_sent;
        self.records_dropped_full += other.records_dropped_full;
        self.assembler.add(&other.assembler);
    }
}

struct KernelConnections(BpfHashMap<MapData, RawConnectionKey, RawConnection>);

impl ConnectionSource for KernelConnections {
    fn lookup(&self, start: &MsgStart) -> Option<ConnectionState> {
        let raw = self.0.get(&start.key.to_raw(), 0).ok()?;
        ConnectionState::try_from(&raw[..]).ok()
    }
}

/// Names of a program's kernel counters, by index of its per-CPU stats map.
pub(crate) type StatNames = &'static [(u32, &'static str)];

/// A BPF object's per-CPU counters.
pub struct KernelStats {
    map: PerCpuArray<MapData, u64>,
    map_name: &'static str,
    names: StatNames,
}

impl std::fmt::Debug for KernelStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelStats").finish_non_exhaustive()
    }
}

impl KernelStats {
    /// Every counter summed over CPUs, by name.
    pub fn read(&self) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for (idx, name) in self.names {
            let values = self
                .map
                .get(idx, 0)
                .map_err(map_err(self.map_name, "read"))?;
            out.insert(
                (*name).to_owned(),
                values.iter().copied().fold(0u64, u64::wrapping_add),
            );
        }
        Ok(out)
    }
}

/// Reads the ring buffer and emits records; see [`EventLoop::run`].
pub struct EventLoop {
    ring: RingBuf<MapData>,
    connections: Box<dyn ConnectionSource + Send>,
    assembler: Assembler,
    idle_flush: Duration,
    stats: Arc<Mutex<EventLoopStats>>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("idle_flush", &self.idle_flush)
            .finish_non_exhaustive()
    }
}

impl EventLoop {
    /// A loop over `ring`, whose connections are read through `connections` for idle flushes.
    pub(crate) fn new(
        ring: RingBuf<MapData>,
        connections: Box<dyn ConnectionSource + Send>,
        assembler: Assembler,
        idle_flush: Duration,
    ) -> Self {
        Self {
            ring,
            connections,
            assembler,
            idle_flush,
            stats: Arc::new(Mutex::new(EventLoopStats::default())),
        }
    }

    /// A handle on the live counters (updated after every batch).
    pub fn stats_handle(&self) -> Arc<Mutex<EventLoopStats>> {
        Arc::clone(&self.stats)
    }

    /// Runs until `shutdown` resolves or `out` closes. Waits on the ring buffer's fd (no
    /// polling); a full `out` drops records and counts them rather than stalling the kernel.
    ///
    /// On shutdown (detach first, so nothing new arrives) it drains what the ring buffer
    /// still holds and emits every pending message with the kernel's current counters
    /// (`partial`), waiting up to [`SHUTDOWN_SEND_BUDGET`] for room in `out`.
    pub async fn run(
        self,
        out: mpsc::Sender<Record>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<EventLoopStats> {
        let Self {
            ring,
            connections,
            mut assembler,
            idle_flush,
            stats: shared,
        } = self;
        // The deprecation is about registering an fd the wrapper does not own; here the
        // ring buffer owns its map fd and AsyncFd owns the ring buffer, so the fd outlives
        // the registration — and the crate stays free of `unsafe`.
        #[allow(deprecated)]
        let mut fd = AsyncFd::with_interest(ring, Interest::READABLE)
            .map_err(|source| Error::RingWait { source })?;
        let mut tick = tokio::time::interval((idle_flush / 2).max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The kernel wakes this loop only when the ring is an eighth full (a wakeup costs
        // more than the programs themselves); below that, it is drained on this timer.
        let mut poll = tokio::time::interval(RING_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_resync = Instant::now();
        let mut stats = EventLoopStats::default();
        let mut records = Vec::new();
        tokio::pin!(shutdown);
        loop {
            let mut polled = false;
            tokio::select! {
                _ = &mut shutdown => break,
                _ = poll.tick() => polled = true,
                guard = fd.readable_mut() => {
                    let mut guard = guard.map_err(|source| Error::RingWait { source })?;
                    let n = drain(guard.get_inner_mut(), &mut assembler, &mut stats, &mut records);
                    // A full batch may have left records behind: stay ready so the next
                    // turn reads on without waiting for a new wakeup.
                    if n < DRAIN_BATCH {
                        guard.clear_ready();
                    }
                }
                _ = tick.tick() => {
                    assembler.flush_idle(Instant::now(), &*connections, &mut records);
                    if last_resync.elapsed() >= CLOCK_RESYNC {
                        assembler.resync_clock();
                        last_resync = Instant::now();
                    }
                }
            }
            if polled {
                while drain(fd.get_mut(), &mut assembler, &mut stats, &mut records) == DRAIN_BATCH {
                }
            }
            let open = send_now(&out, &mut records, &mut stats);
            stats.assembler = assembler.stats();
            if let Ok(mut s) = shared.lock() {
                *s = stats;
            }
            if !open {
                return Ok(stats);
            }
        }
        // Final drain: what the kernel wrote before the programs were detached.
        while drain(fd.get_mut(), &mut assembler, &mut stats, &mut records) == DRAIN_BATCH {}
        assembler.flush_all(&*connections, &mut records);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_SEND_BUDGET;
        for record in records.drain(..) {
            match tokio::time::timeout_at(deadline, out.send(record)).await {
                Ok(Ok(())) => stats.records_sent += 1,
                // Closed or out of time: what is left is lost, and counted.
                _ => stats.records_dropped_full += 1,
            }
        }
        stats.assembler = assembler.stats();
        if let Ok(mut s) = shared.lock() {
            *s = stats;
        }
        Ok(stats)
    }
}

/// How often the ring buffer is drained without a wakeup from the kernel: the most a record
/// waits in the ring while the ring is less than an eighth full.
pub const RING_POLL: Duration = Duration::from_millis(10);

/// How long the shutdown waits for room in the output channel.
pub const SHUTDOWN_SEND_BUDGET: Duration = Duration::from_secs(2);

/// Reads up to [`DRAIN_BATCH`] ring buffer records into the assembler; returns how many.
fn drain(
    ring: &mut RingBuf<MapData>,
    assembler: &mut Assembler,
    stats: &mut EventLoopStats,
    records: &mut Vec<Record>,
) -> usize {
    let now = Instant::now();
    let mut n = 0;
    while n < DRAIN_BATCH {
        let Some(item) = ring.next() else { break };
        n += 1;
        stats.events += 1;
        let parsed = Event::try_from(&*item);
        drop(item);
        match parsed {
            Ok(ev) => assembler.on_event(ev, now, records),
            Err(e) => {
                stats.bad_events += 1;
                tracing::debug!(error = %e, "skipping bad ring buffer record");
            }
        }
    }
    n
}

/// Hands `records` to `out` without waiting; returns false once `out` is closed.
fn send_now(
    out: &mpsc::Sender<Record>,
    records: &mut Vec<Record>,
    stats: &mut EventLoopStats,
) -> bool {
    for record in records.drain(..) {
        match out.try_send(record) {
            Ok(()) => stats.records_sent += 1,
            Err(TrySendError::Full(_)) => stats.records_dropped_full += 1,
            Err(TrySendError::Closed(_)) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_rejects_unworkable_sizes() {
        let ok = CaptureConfig::default();
        assert!(
            ok.validate().is_ok(),
            "default config must be valid: {ok:?}"
        );
        for (cfg, what) in [
            (
                CaptureConfig {
                    snaplen: 0,
                    ..ok.clone()
                },
                "snaplen 0",
            ),
            (
                CaptureConfig {
                    snaplen: 4096,
                    ..ok.clone()
                },
                "snaplen above MAX_SNAPLEN",
            ),
            (
                CaptureConfig {
                    ring_buffer_bytes: 3 * 4096,
                    ..ok.clone()
                },
                "ring not a power of two",
            ),
            (
                CaptureConfig {
                    ring_buffer_bytes: 1024,
                    ..ok.clone()
                },
                "ring below a page",
            ),
            (
                CaptureConfig {
                    max_connections: 0,
                    ..ok.clone()
                },
                "no connections",
            ),
            (
                CaptureConfig {
                    idle_flush: Duration::ZERO,
                    ..ok.clone()
                },
                "zero idle flush",
            ),
        ] {
            assert!(cfg.validate().is_err(), "{what} must be rejected");
        }
    }

    #[test]
    fn every_kernel_counter_has_a_distinct_name_at_its_index() {
        for (i, (idx, _)) in STAT_NAMES.iter().enumerate() {
            assert_eq!(
                *idx as usize, i,
                "STAT_NAMES[{i}] must hold index {i}, holds {idx}"
            );
        }
        let names: BTreeSet<&str> = STAT_NAMES.iter().map(|(_, n)| *n).collect();
        assert_eq!(
            names.len(),
            STAT_NAMES.len(),
            "counter names must be unique"
        );
    }
}
