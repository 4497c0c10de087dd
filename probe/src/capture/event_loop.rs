//! The event loop: waits on a capture object's ring buffer, turns each kernel event into
//! records through the [`Assembler`] and hands them to the uplink's queue without ever
//! waiting for room in it. The assembler's records are encoded as it emits them, into chunks of
//! at most [`CHUNK_RECORDS`]: a `Message` straight from its pending message (no `Record` built,
//! its payload copied from there into the chunk), the rest through prost.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use bytes::Bytes;
use clovisor_proto::capture::v1::{Record, Segment as SegmentRecord};
use clovisor_proto::hops::{ChunkBuilder, RecordChunk};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc::{self, error::TrySendError};

use super::assembler::{Assembler, AssemblerStats, ConnectionSource, RecordSink};
use super::held::{HeldHeads, Take, ORPHAN_AFTER};
use super::raw::{Event, MsgCounters, MsgStart};
use crate::clock::BootClock;
use crate::error::{Error, Result};
use crate::uplink::CHUNK_RECORDS;

/// Events handled before yielding to send records and check shutdown.
const DRAIN_BATCH: usize = 4096;
/// How often the boot -> Unix clock offset is resampled.
const CLOCK_RESYNC: Duration = Duration::from_secs(60);

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
    /// Held requests whose connection vanished from the kernel without an end, sent alone.
    pub held_orphans: u64,
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
        self.held_orphans += other.held_orphans;
        self.assembler.add(&other.assembler);
    }
}

/// Reads the ring buffer and emits records; see [`EventLoop::run`].
pub struct EventLoop {
    ring: RingBuf<MapData>,
    connections: Box<dyn ConnectionSource + Send>,
    held: HeldHeads,
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
        held: HeldHeads,
        assembler: Assembler,
        idle_flush: Duration,
    ) -> Self {
        Self {
            ring,
            connections,
            held,
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
        out: mpsc::Sender<RecordChunk>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<EventLoopStats> {
        let Self {
            ring,
            connections,
            mut held,
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
        // The kernel wakes this loop only when the ring is an eighth full, once until it has
        // read again (a wakeup costs more than the programs themselves); below that, and for a
        // wakeup lost to two programs racing, it is drained on this timer.
        let mut poll = tokio::time::interval(RING_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_resync = Instant::now();
        let mut last_sweep = Instant::now();
        let mut stats = EventLoopStats::default();
        let mut records = Chunks::default();
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
                    if last_sweep.elapsed() >= HELD_SWEEP {
                        last_sweep = Instant::now();
                        let before = BootClock::boot_now_ns()
                            .saturating_sub(u64::try_from(ORPHAN_AFTER.as_nanos()).unwrap_or(u64::MAX));
                        let orphans = held
                            .take(Take::OrphansBefore { boot_ns: before }, &*connections)
                            .unwrap_or_default();
                        stats.held_orphans += orphans.len() as u64;
                        for start in orphans {
                            assembler.on_event(Event::MsgStart(start), Instant::now(), &mut records);
                        }
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
        // Final drain: what the kernel wrote before the programs were detached, then the
        // requests it still holds (nothing will answer them now).
        while drain(fd.get_mut(), &mut assembler, &mut stats, &mut records) == DRAIN_BATCH {}
        for start in held.take(Take::All, &*connections).unwrap_or_default() {
            assembler.on_event(Event::MsgStart(start), Instant::now(), &mut records);
        }
        assembler.flush_all(&*connections, &mut records);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_SEND_BUDGET;
        for chunk in records.take() {
            let n = chunk.len();
            match tokio::time::timeout_at(deadline, out.send(chunk)).await {
                Ok(Ok(())) => stats.records_sent += n,
                // Closed or out of time: what is left is lost, and counted.
                _ => stats.records_dropped_full += n,
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

/// How often held requests are checked for a vanished connection.
pub const HELD_SWEEP: Duration = Duration::from_secs(10);

/// How long the shutdown waits for room in the output channel.
pub const SHUTDOWN_SEND_BUDGET: Duration = Duration::from_secs(2);

/// Reads up to [`DRAIN_BATCH`] ring buffer records into the assembler; returns how many.
fn drain(
    ring: &mut RingBuf<MapData>,
    assembler: &mut Assembler,
    stats: &mut EventLoopStats,
    records: &mut Chunks,
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

/// The assembler's records, encoded as they come into chunks of at most [`CHUNK_RECORDS`]:
/// `Message`s straight from the pending message ([`ChunkBuilder::push_message`]), without a
/// `Record` in between; the rest through prost.
#[derive(Debug, Default)]
struct Chunks {
    building: ChunkBuilder,
    full: Vec<RecordChunk>,
}

impl Chunks {
    fn pushed(&mut self) {
        if self.building.len() >= CHUNK_RECORDS as u64 {
            self.full.push(self.building.take());
        }
    }

    fn is_empty(&self) -> bool {
        self.full.is_empty() && self.building.is_empty()
    }

    /// The chunks made since the last call, the last one possibly short.
    fn take(&mut self) -> Vec<RecordChunk> {
        if !self.building.is_empty() {
            self.full.push(self.building.take());
        }
        std::mem::take(&mut self.full)
    }
}

impl RecordSink for Chunks {
    fn record(&mut self, record: Record) {
        self.building.record(record);
        self.pushed();
    }

    fn message(
        &mut self,
        start: &MsgStart,
        payload: &Bytes,
        segments: &[SegmentRecord],
        counters: (&MsgCounters, Option<&MsgCounters>),
        partial: bool,
        clock: &BootClock,
    ) {
        self.building
            .message(start, payload, segments, counters, partial, clock);
        self.pushed();
    }
}

/// Hands the chunks made so far to `out` without waiting; returns false once `out` is closed.
fn send_now(
    out: &mpsc::Sender<RecordChunk>,
    records: &mut Chunks,
    stats: &mut EventLoopStats,
) -> bool {
    if records.is_empty() {
        return true;
    }
    for chunk in records.take() {
        let n = chunk.len();
        match out.try_send(chunk) {
            Ok(()) => stats.records_sent += n,
            Err(TrySendError::Full(c)) => stats.records_dropped_full += c.len(),
            Err(TrySendError::Closed(_)) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::RwLock;

    use clovisor_proto::capture::v1::{Direction, FlowEndReason, ProtocolHint};
    use clovisor_proto::common::v1::PointKind;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::capture::assembler::{records, AttachedInterface, InterfaceNames};
    use crate::capture::raw::testing::{owner, v4_key, v6_key};
    use crate::capture::raw::{ConnectionState, FlowEnd, Segment, SocketSide};

    /// A value at the edges of its type or of a varint's byte counts, or anything up to `max`.
    fn edgy(rng: &mut StdRng, max: u64) -> u64 {
        match rng.random_range(0..6) {
            0 => 0,
            1 => max,
            2 => 1,
            3 => {
                let bits = rng.random_range(1..=63u32);
                ((1u64 << bits) - u64::from(rng.random_bool(0.5))).min(max)
            }
            _ => rng.random_range(0..=max),
        }
    }

    fn edgy32(rng: &mut StdRng) -> u32 {
        u32::try_from(edgy(rng, u64::from(u32::MAX))).unwrap_or(u32::MAX)
    }

    fn bytes(rng: &mut StdRng) -> Bytes {
        let len = match rng.random_range(0..4) {
            0 => 0,
            1 => rng.random_range(126..=129),
            2 => rng.random_range(16_380..=16_390),
            _ => rng.random_range(0..600),
        };
        (0..len).map(|_| rng.random::<u8>()).collect()
    }

    fn counters(rng: &mut StdRng) -> MsgCounters {
        MsgCounters {
            start_ns: edgy(rng, u64::MAX),
            last_ns: edgy(rng, u64::MAX),
            bytes: edgy(rng, u64::MAX),
            packets: edgy32(rng),
            retransmits: edgy32(rng),
            tcp_seq: edgy32(rng),
            index: edgy32(rng),
            direction: [
                Direction::ClientToServer,
                Direction::ServerToClient,
                Direction::Unspecified,
            ][rng.random_range(0..3)],
            to_pod: rng.random(),
        }
    }

    fn msg_start(rng: &mut StdRng) -> MsgStart {
        MsgStart {
            key: if rng.random() { v4_key() } else { v6_key() },
            flow_id: edgy(rng, u64::MAX),
            msg: counters(rng),
            prev: None,
            protocol: ProtocolHint::Http,
            payload: bytes(rng),
            socket: rng.random::<bool>().then(|| owner(SocketSide::Client)),
            counters_only: false,
            wire: None,
        }
    }

    /// The records a `Chunks` sink encoded, decoded, in order, with the records per chunk.
    fn decoded(chunks: &mut Chunks) -> (Vec<Record>, Vec<u64>) {
        let mut records = Vec::new();
        let mut sizes = Vec::new();
        for chunk in chunks.take() {
            sizes.push(chunk.len());
            match chunk.decode() {
                Ok(r) => records.extend(r),
                Err(e) => panic!("a chunk must decode: {e}"),
            }
        }
        (records, sizes)
    }

    #[test]
    fn encoded_messages_decode_to_the_records_the_assembler_would_build() {
        let seed: u64 = rand::random();
        let mut rng = StdRng::seed_from_u64(seed);
        for case in 0..2000 {
            let start = msg_start(&mut rng);
            let fin = counters(&mut rng);
            let wire = rng.random_bool(0.5).then(|| counters(&mut rng));
            let segments: Vec<SegmentRecord> = (0..rng.random_range(0..4usize))
                .map(|_| SegmentRecord {
                    offset: edgy(&mut rng, u64::MAX),
                    payload: bytes(&mut rng),
                })
                .collect();
            let partial = rng.random();
            let offset =
                [0, -1, i128::from(u64::MAX), 1_700_000_000_000_000_000][rng.random_range(0..4)];
            let clock = BootClock::with_offset(offset);
            let expected = records::message(
                &start,
                start.payload.clone(),
                segments.clone(),
                (&fin, wire.as_ref()),
                partial,
                &clock,
            );
            let mut chunks = Chunks::default();
            RecordSink::message(
                &mut chunks,
                &start,
                &start.payload,
                &segments,
                (&fin, wire.as_ref()),
                partial,
                &clock,
            );
            let (got, _) = decoded(&mut chunks);
            assert_eq!(
                got,
                vec![expected],
                "case {case} (seed {seed}): {start:?} with {fin:?}, partial {partial}"
            );
        }
    }

    /// No connection is known: idle flushes send what they have.
    struct NoConnections;

    impl ConnectionSource for NoConnections {
        fn lookup(&self, _: &MsgStart) -> Option<ConnectionState> {
            None
        }
    }

    fn assembler() -> Assembler {
        let mut names = BTreeMap::new();
        names.insert(
            7,
            AttachedInterface {
                name: "veth-test".to_owned(),
                kind: PointKind::Pod,
            },
        );
        let names: InterfaceNames = Arc::new(RwLock::new(names));
        Assembler::new(
            Duration::from_millis(200),
            64,
            "node-a".into(),
            BootClock::with_offset(1_000_000),
            names,
        )
    }

    #[test]
    fn the_chunks_hold_the_records_in_order_and_at_most_chunk_records_each() {
        let seed: u64 = rand::random();
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut to_vec, mut to_chunks) = (assembler(), assembler());
        let mut records: Vec<Record> = Vec::new();
        let mut chunks = Chunks::default();
        let mut next_index: HashMap<u64, u32> = HashMap::new();
        let now = Instant::now();
        for _ in 0..2000 {
            let flow_id = rng.random_range(1..40u64);
            let index = next_index.entry(flow_id).or_default();
            let mut start = msg_start(&mut rng);
            start.flow_id = flow_id;
            start.msg.index = *index;
            start.socket = None;
            let event = match rng.random_range(0..10) {
                0 => {
                    next_index.remove(&flow_id);
                    Event::FlowEnd(FlowEnd {
                        key: start.key,
                        flow_id,
                        reason: FlowEndReason::Fin,
                        ts_ns: start.msg.start_ns,
                        last: Some(start.msg),
                        socket: None,
                        tcp: None,
                        wire: None,
                    })
                }
                1 => Event::Segment(Segment {
                    flow_id,
                    index: index.saturating_sub(1),
                    offset: edgy(&mut rng, u64::MAX),
                    bytes: bytes(&mut rng),
                }),
                _ => {
                    if *index > 0 {
                        start.prev = Some(MsgCounters {
                            index: *index - 1,
                            ..counters(&mut rng)
                        });
                    }
                    *index += 1;
                    Event::MsgStart(start)
                }
            };
            to_vec.on_event(event.clone(), now, &mut records);
            to_chunks.on_event(event, now, &mut chunks);
        }
        to_vec.flush_all(&NoConnections, &mut records);
        to_chunks.flush_all(&NoConnections, &mut chunks);
        let (got, sizes) = decoded(&mut chunks);
        assert!(
            records.len() > CHUNK_RECORDS,
            "the script makes more than one chunk of records: {}",
            records.len()
        );
        assert_eq!(
            got, records,
            "seed {seed}: the chunks hold what a Vec collects"
        );
        let full = records.len() / CHUNK_RECORDS;
        assert!(
            sizes[..full].iter().all(|&n| n == CHUNK_RECORDS as u64)
                && sizes[full..].iter().all(|&n| n < CHUNK_RECORDS as u64)
                && sizes.len() <= full + 1,
            "chunks of {CHUNK_RECORDS} records then the rest: {sizes:?}"
        );
        assert!(chunks.is_empty(), "taken");
    }
}
