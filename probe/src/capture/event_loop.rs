//! The event loop: waits on a capture object's ring buffer, turns each kernel event into
//! records through the [`Assembler`] and hands them to the uplink's queue without ever
//! waiting for room in it.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use clovisor_proto::capture::v1::Record;
use clovisor_proto::hops::{ChunkBuilder, RecordChunk};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc::{self, error::TrySendError};

use super::assembler::{Assembler, AssemblerStats, ConnectionSource};
use super::held::{HeldHeads, Take, ORPHAN_AFTER};
use super::raw::Event;
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
        // The kernel wakes this loop only when the ring is an eighth full (a wakeup costs
        // more than the programs themselves); below that, it is drained on this timer.
        let mut poll = tokio::time::interval(RING_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_resync = Instant::now();
        let mut last_sweep = Instant::now();
        let mut stats = EventLoopStats::default();
        let mut records = Vec::new();
        let mut chunks = ChunkBuilder::new();
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
            let open = send_now(&out, &mut records, &mut chunks, &mut stats);
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
        for chunk in encode(&mut records, &mut chunks) {
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

/// Encodes `records` (emptied, its allocation kept) into chunks of at most [`CHUNK_RECORDS`].
fn encode(records: &mut Vec<Record>, chunks: &mut ChunkBuilder) -> Vec<RecordChunk> {
    let mut out = Vec::new();
    for record in records.drain(..) {
        chunks.push(&record);
        if chunks.len() >= CHUNK_RECORDS as u64 {
            out.push(chunks.take());
        }
    }
    if !chunks.is_empty() {
        out.push(chunks.take());
    }
    out
}

/// Encodes `records` and hands them to `out` in chunks without waiting; returns false once `out`
/// is closed.
fn send_now(
    out: &mpsc::Sender<RecordChunk>,
    records: &mut Vec<Record>,
    chunks: &mut ChunkBuilder,
    stats: &mut EventLoopStats,
) -> bool {
    if records.is_empty() {
        return true;
    }
    for chunk in encode(records, chunks) {
        let n = chunk.len();
        match out.try_send(chunk) {
            Ok(()) => stats.records_sent += n,
            Err(TrySendError::Full(c)) => stats.records_dropped_full += c.len(),
            Err(TrySendError::Closed(_)) => return false,
        }
    }
    true
}
