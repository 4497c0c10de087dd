//! At-least-once delivery of record batches over a bidirectional gRPC stream.
//!
//! Both hops of the pipeline (probe -> collector, collector -> correlator) speak the same
//! protocol: the sender numbers its batches, the receiver acknowledges the highest number it has
//! processed, and the sender keeps every unacknowledged batch in a bounded replay buffer that is
//! re-sent, in order, after a reconnect. The receiver drops numbers it has already processed, so a
//! restart of either side inside the replay window loses and duplicates nothing.
//!
//! Flow control: at most [`DeliveryConfig::window`] batches are in flight on a stream. When the
//! replay buffer is full the sender stops taking items from its input channel, so pressure reaches
//! the producer, which decides whether to wait (collector) or to count a drop (probe).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_stream::wrappers::ReceiverStream;

/// How one hop frames items into batches and reads acknowledgements.
pub trait BatchContract: Send + 'static {
    /// What producers hand to the sender.
    type Item: Send + 'static;
    /// What travels from sender to receiver.
    type Outbound: Clone + Send + Sync + 'static;
    /// What travels back.
    type Inbound: Send + 'static;

    /// The messages opening every stream (none when the hop has no greeting), sent in order
    /// before the batches.
    fn hello(&self) -> Vec<Self::Outbound>;
    /// Frames `items` as batch number `seq`.
    fn batch(&self, seq: u64, items: Vec<Self::Item>) -> Self::Outbound;
    /// Encoded size of an outbound message, used to bound the replay buffer.
    fn size(msg: &Self::Outbound) -> usize;
    /// The sequence number an inbound message acknowledges, if it is an acknowledgement.
    fn ack(msg: &Self::Inbound) -> Option<u64>;
    /// How many records an item stands for (an item may carry several, already encoded):
    /// what batches are sized by and what the counters count.
    fn count(_item: &Self::Item) -> u64 {
        1
    }
    /// About how many bytes an item adds to its batch's encoding: what batches are also
    /// bounded by ([`DeliveryConfig::max_batch_bytes`]), so that no batch outgrows what the
    /// receiver decodes. 0 (the default) leaves batches bounded by their item count only.
    fn item_bytes(_item: &Self::Item) -> usize {
        0
    }
    /// Sees every item as it is taken in; it will travel in batch number `seq`. A hop that
    /// keeps state for its greeting keeps it here.
    fn observe(&mut self, _item: &Self::Item, _seq: u64) {}
    /// Every batch numbered up to `seq` has been acknowledged.
    fn acked(&mut self, _seq: u64) {}
}

/// The stream a [`Connector`] opens.
pub type Inbound<C> = Pin<
    Box<dyn futures::Stream<Item = Result<<C as BatchContract>::Inbound, tonic::Status>> + Send>,
>;

/// A stream being opened ([`Connector::open`]), living as long as `'a`.
pub type Opening<'a, C> =
    Pin<Box<dyn Future<Output = Result<Inbound<C>, tonic::Status>> + Send + 'a>>;

/// Opens one stream to the receiver, sending everything `outbound` yields.
pub trait Connector<C: BatchContract>: Send + 'static {
    /// Opens the stream; the returned stream yields the receiver's messages.
    fn open(&mut self, outbound: ReceiverStream<C::Outbound>) -> Opening<'_, C>;
}

/// Tuning of a [`Sender`].
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Items per batch at most.
    pub max_batch_items: usize,
    /// A batch is sealed once its items' bytes ([`BatchContract::item_bytes`]) reach this, well
    /// below what the receiver decodes (`hops::MAX_MESSAGE_BYTES`): large items (sessions with
    /// long targets or many attributes) make smaller batches instead of one the receiver
    /// refuses. An item larger than this travels alone.
    pub max_batch_bytes: usize,
    /// A partial batch is sent after this long.
    pub flush_interval: Duration,
    /// Unacknowledged batches on the wire at most.
    pub window: usize,
    /// Bytes of unacknowledged batches kept for replay at most.
    pub replay_bytes: usize,
    /// First reconnect delay; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// How long opening a stream may take.
    pub connect_timeout: Duration,
    /// How long shutdown waits for the receiver to acknowledge what is buffered.
    pub drain_timeout: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            max_batch_items: 256,
            max_batch_bytes: 1 << 20,
            flush_interval: Duration::from_millis(50),
            window: 32,
            replay_bytes: 32 << 20,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// How often a sender whose replay buffer is full (so that it does not read its input) looks
/// whether its producers have all gone, at most.
const CLOSED_POLL: Duration = Duration::from_millis(100);

/// Counters of one sender, cumulative. Items are counted once each, however often re-sent.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Items taken from the input channel.
    pub items_received: AtomicU64,
    /// Items whose batch the receiver acknowledged.
    pub items_acked: AtomicU64,
    /// Items given up at shutdown because the receiver did not acknowledge them in time.
    pub items_dropped_shutdown: AtomicU64,
    /// Batches sent, including re-sends.
    pub batches_sent: AtomicU64,
    /// Batches re-sent after a reconnect.
    pub batches_resent: AtomicU64,
    /// Streams opened successfully.
    pub connects: AtomicU64,
    /// Failed attempts to open a stream, and streams that broke.
    pub disconnects: AtomicU64,
    /// Bytes currently held for replay.
    pub replay_bytes: AtomicU64,
    /// Items taken in and neither acknowledged nor dropped yet (batched or still pending), so
    /// `items_received = items_acked + items_dropped_shutdown + items_buffered` at all times.
    pub items_buffered: AtomicU64,
    /// Whether a stream to the receiver is open now (it answered the last open).
    pub connected: std::sync::atomic::AtomicBool,
}

impl DeliveryStats {
    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

struct Entry<O> {
    seq: u64,
    msg: O,
    bytes: usize,
    items: u64,
}

struct Stream<C: BatchContract> {
    tx: mpsc::Sender<C::Outbound>,
    inbound: Inbound<C>,
    /// Highest seq written to this stream.
    sent_upto: u64,
}

/// Sends batches of `C::Item` reliably; see the module documentation.
pub struct Sender<C: BatchContract, K: Connector<C>> {
    contract: C,
    connector: K,
    config: DeliveryConfig,
    stats: Arc<DeliveryStats>,
}

impl<C: BatchContract, K: Connector<C>> Sender<C, K> {
    /// A sender framing with `contract` and connecting with `connector`.
    pub fn new(contract: C, connector: K, config: DeliveryConfig) -> Self {
        Self {
            contract,
            connector,
            config,
            stats: Arc::new(DeliveryStats::default()),
        }
    }

    /// Shared counters, readable while [`Sender::run`] runs.
    pub fn stats(&self) -> Arc<DeliveryStats> {
        Arc::clone(&self.stats)
    }

    /// Runs until `input` is closed or `shutdown` resolves, then drains what is buffered for at
    /// most [`DeliveryConfig::drain_timeout`].
    pub async fn run(
        mut self,
        mut input: mpsc::Receiver<C::Item>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let cfg = self.config.clone();
        let mut buffer: VecDeque<Entry<C::Outbound>> = VecDeque::new();
        let mut buffered_bytes = 0usize;
        let mut pending: Vec<C::Item> = Vec::new();
        // Records in `pending` (an item may stand for several), and their bytes.
        let mut pending_count = 0u64;
        let mut pending_bytes = 0usize;
        let mut next_seq = 1u64;
        let mut acked = 0u64;
        let mut stream: Option<Stream<C>> = None;
        let mut backoff = cfg.min_backoff;
        let mut reconnect_at = Instant::now();
        let mut flush_at = Instant::now() + cfg.flush_interval;
        let mut closing_since: Option<Instant> = None;
        let mut input_open = true;
        tokio::pin!(shutdown);

        loop {
            // Seal a full or due batch.
            let due = !pending.is_empty()
                && (pending_count >= cfg.max_batch_items as u64
                    || pending_bytes >= cfg.max_batch_bytes
                    || Instant::now() >= flush_at
                    || closing_since.is_some());
            if due {
                let items = std::mem::take(&mut pending);
                let count = std::mem::take(&mut pending_count);
                pending_bytes = 0;
                let msg = self.contract.batch(next_seq, items);
                let bytes = C::size(&msg);
                buffered_bytes += bytes;
                buffer.push_back(Entry {
                    seq: next_seq,
                    msg,
                    bytes,
                    items: count,
                });
                next_seq += 1;
                self.stats
                    .replay_bytes
                    .store(buffered_bytes as u64, Ordering::Relaxed);
            }
            if pending.is_empty() {
                flush_at = Instant::now() + cfg.flush_interval;
            }

            if let Some(since) = closing_since {
                if buffer.is_empty() && pending.is_empty() {
                    break;
                }
                if since.elapsed() >= cfg.drain_timeout {
                    let lost: u64 = buffer.iter().map(|e| e.items).sum::<u64>() + pending_count;
                    self.stats
                        .items_dropped_shutdown
                        .fetch_add(lost, Ordering::Relaxed);
                    self.stats.items_buffered.fetch_sub(lost, Ordering::Relaxed);
                    tracing::warn!(
                        items = lost,
                        "receiver did not acknowledge everything before shutdown; items dropped"
                    );
                    break;
                }
            }

            // Open a stream when due.
            if stream.is_none() && Instant::now() >= reconnect_at {
                match self.open().await {
                    Ok(s) => {
                        backoff = cfg.min_backoff;
                        self.stats.connects.fetch_add(1, Ordering::Relaxed);
                        self.stats.connected.store(true, Ordering::Relaxed);
                        let resend = buffer.iter().filter(|e| e.seq > acked).count() as u64;
                        self.stats
                            .batches_resent
                            .fetch_add(resend, Ordering::Relaxed);
                        stream = Some(s);
                    }
                    Err(status) => {
                        self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
                        self.stats.connected.store(false, Ordering::Relaxed);
                        tracing::debug!(error = %status, ?backoff, "could not open stream; retrying");
                        reconnect_at = Instant::now() + jitter(backoff);
                        backoff = (backoff * 2).min(cfg.max_backoff);
                    }
                }
            }

            // Write what the window allows.
            if let Some(s) = stream.as_mut() {
                let mut broken = false;
                let from = s.sent_upto;
                for entry in buffer.iter().filter(|e| e.seq > from) {
                    if entry.seq.saturating_sub(acked) > cfg.window as u64 {
                        break;
                    }
                    if s.tx.try_send(entry.msg.clone()).is_err() {
                        broken = s.tx.is_closed();
                        break;
                    }
                    s.sent_upto = entry.seq;
                    self.stats.batches_sent.fetch_add(1, Ordering::Relaxed);
                }
                if broken {
                    stream = None;
                    self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
                    self.stats.connected.store(false, Ordering::Relaxed);
                    reconnect_at = Instant::now() + jitter(backoff);
                }
            }

            let room = buffered_bytes < cfg.replay_bytes;
            // With the replay buffer full the input is not read, so its producers all going away
            // would go unseen (and, with no receiver to make room, the sender would wait for
            // ever): look for it here, woken at least every `CLOSED_POLL`.
            if !room && input_open && closing_since.is_none() && input.is_closed() {
                input_open = false;
                closing_since = Some(Instant::now());
                self.take_queued(
                    &mut input,
                    next_seq,
                    &mut pending,
                    &mut pending_count,
                    &mut pending_bytes,
                );
                continue;
            }
            let wait_flush = !pending.is_empty();
            let wake_reconnect = stream.is_none();
            let drain_deadline = closing_since.map(|s| s + cfg.drain_timeout);
            tokio::select! {
                item = input.recv(), if input_open && room && closing_since.is_none() => {
                    match item {
                        Some(item) => {
                            // And whatever else waits, up to a batch: one turn of this loop
                            // (its clock reads and timers) per burst rather than per item.
                            let mut next = Some(item);
                            while let Some(item) = next.take() {
                                pending_bytes = pending_bytes.saturating_add(C::item_bytes(&item));
                                self.take(item, next_seq, &mut pending, &mut pending_count);
                                if pending_count < cfg.max_batch_items as u64
                                    && pending_bytes < cfg.max_batch_bytes
                                {
                                    next = input.try_recv().ok();
                                }
                            }
                        }
                        None => {
                            input_open = false;
                            closing_since = Some(Instant::now());
                        }
                    }
                }
                msg = next_inbound(&mut stream) => {
                    match msg {
                        Some(Ok(msg)) => {
                            if let Some(seq) = C::ack(&msg) {
                                acked = acked.max(seq);
                                self.contract.acked(acked);
                                while buffer.front().is_some_and(|e| e.seq <= acked) {
                                    if let Some(e) = buffer.pop_front() {
                                        buffered_bytes -= e.bytes;
                                        self.stats.items_buffered.fetch_sub(e.items, Ordering::Relaxed);
                                        self.stats.items_acked.fetch_add(e.items, Ordering::Relaxed);
                                    }
                                }
                                self.stats.replay_bytes.store(buffered_bytes as u64, Ordering::Relaxed);
                            }
                        }
                        Some(Err(status)) => {
                            tracing::info!(error = %status, "stream broke; reconnecting");
                            stream = None;
                            self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
                            self.stats.connected.store(false, Ordering::Relaxed);
                            reconnect_at = Instant::now() + jitter(backoff);
                        }
                        None => {
                            tracing::info!("receiver closed the stream; reconnecting");
                            stream = None;
                            self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
                            self.stats.connected.store(false, Ordering::Relaxed);
                            reconnect_at = Instant::now() + jitter(backoff);
                        }
                    }
                }
                _ = sleep_until(flush_at), if wait_flush => {}
                _ = sleep_until(reconnect_at), if wake_reconnect => {}
                _ = sleep_until(drain_deadline.unwrap_or_else(Instant::now)), if drain_deadline.is_some() => {}
                _ = sleep(CLOSED_POLL), if input_open && !room && closing_since.is_none() => {}
                _ = &mut shutdown, if closing_since.is_none() => {
                    closing_since = Some(Instant::now());
                    self.take_queued(&mut input, next_seq, &mut pending, &mut pending_count, &mut pending_bytes);
                }
            }
        }
    }

    /// Takes what producers already queued, room or not: it was accepted, so it is owed (the
    /// drain that follows delivers it or counts it dropped).
    fn take_queued(
        &mut self,
        input: &mut mpsc::Receiver<C::Item>,
        seq: u64,
        pending: &mut Vec<C::Item>,
        pending_count: &mut u64,
        pending_bytes: &mut usize,
    ) {
        while let Ok(item) = input.try_recv() {
            *pending_bytes = pending_bytes.saturating_add(C::item_bytes(&item));
            self.take(item, seq, pending, pending_count);
        }
    }

    /// Takes `item` from the input into the batch being filled, which will be number `seq`.
    fn take(
        &mut self,
        item: C::Item,
        seq: u64,
        pending: &mut Vec<C::Item>,
        pending_count: &mut u64,
    ) {
        let n = C::count(&item);
        self.stats.items_buffered.fetch_add(n, Ordering::Relaxed);
        self.stats.items_received.fetch_add(n, Ordering::Relaxed);
        self.contract.observe(&item, seq);
        *pending_count += n;
        pending.push(item);
    }

    async fn open(&mut self) -> Result<Stream<C>, tonic::Status> {
        let hello = self.contract.hello();
        // Room for the greeting and a full window of batches, so neither ever waits.
        let (tx, rx) = mpsc::channel(self.config.window + 2 + hello.len());
        for msg in hello {
            tx.try_send(msg)
                .map_err(|_| tonic::Status::internal("hello did not fit the stream"))?;
        }
        let inbound = tokio::time::timeout(
            self.config.connect_timeout,
            self.connector.open(ReceiverStream::new(rx)),
        )
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("opening the stream timed out"))??;
        Ok(Stream {
            tx,
            inbound,
            sent_upto: 0,
        })
    }
}

async fn next_inbound<C: BatchContract>(
    stream: &mut Option<Stream<C>>,
) -> Option<Result<C::Inbound, tonic::Status>> {
    match stream {
        Some(s) => s.inbound.next().await,
        None => std::future::pending().await,
    }
}

/// Spreads reconnects of many senders over time.
fn jitter(d: Duration) -> Duration {
    let nanos = d.as_nanos() as u64;
    let spread = nanos / 4;
    if spread == 0 {
        return d;
    }
    let offset = rand_u64() % spread;
    Duration::from_nanos(nanos - spread / 2 + offset)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests;
