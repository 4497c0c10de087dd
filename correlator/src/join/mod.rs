//! The join: what every observation point saw of one exchange becomes one session.
//!
//! Each session from a collector is one point's view of one exchange. The [`Joiner`] finds the
//! exchange it belongs to by [`key::WireKey`] (client address and port, TCP sequence number of
//! the request's first byte, pipeline position) or — for points without sequence numbers — by
//! client address and time overlap when exactly one candidate fits, and merges it
//! ([`merge::merge`]). Nothing is merged when any decoded field disagrees
//! ([`merge::compatible`]) or when the same point would appear twice in one exchange.
//!
//! A view that opens an exchange and expects no other — what a collector's local join sends of an
//! exchange its probe saw whole — is read by its head only ([`head`]) and held as it arrived,
//! encoded, until its window closes; then it is decoded whole, once. Any other view is decoded
//! on arrival.
//!
//! An exchange stays *open* for the join window after its first observation; then it is
//! *ready*: its span is exported and its RED metrics counted, once (made ready by the next
//! offer, at most [`Joiner::READY_PER_OFFER`] an offer, or by the next [`Joiner::expire`]). It
//! is remembered for the retention time afterwards so a late observation is still appended to
//! the stored session (the REST API shows it; the span, already sent, does not). State is bounded: beyond
//! `max_entries` the oldest retained exchange is forgotten, or, when all are open, the oldest
//! open one is made ready early — both counted.

pub mod head;
mod packed;
mod slots;
pub use clovisor_proto::join::{key, merge};
use head::Head;
#[cfg(test)]
mod merge_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clovisor_proto::session::decode as session_decode;
use clovisor_proto::session::v1::Session;
use rustc_hash::FxHashMap;

use crate::record::{constituents, ContextIssue, CorrelatedSession};
use key::{interval, overlaps, wire_key, ClientAddr, WireKey};
use packed::Packed;
use slots::{hash, IdHashes, SlotIndex};

/// How the join holds exchanges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinConfig {
    /// How long an exchange waits for more observations before its span is exported.
    pub window: Duration,
    /// How long after export a late observation is still appended to the stored session.
    pub retention: Duration,
    /// Exchanges held at most (open and retained).
    pub max_entries: usize,
    /// Candidates a sequence-less view is compared with at most ([`MAX_TIME_CANDIDATES`] by
    /// default).
    pub max_time_candidates: usize,
}

impl Default for JoinConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(1000),
            retention: Duration::from_secs(30),
            max_entries: 65_536,
            max_time_candidates: MAX_TIME_CANDIDATES,
        }
    }
}

/// What became of one offered observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The first observation of a new exchange.
    Opened,
    /// Merged into an open exchange.
    Joined,
    /// Merged into an exchange whose span was already exported.
    Late,
    /// Its key matched an exchange that disagreed on a decoded field or already had this
    /// point: kept as an exchange of its own.
    Conflict,
    /// Without a sequence number, more than one exchange could have been it: kept on its own.
    Ambiguous,
    /// The same session id was offered before (a collector re-sent it): dropped.
    Duplicate,
}

impl Outcome {
    /// Every outcome, in [`Outcome::index`] order.
    pub const ALL: [Self; 6] = [
        Self::Opened,
        Self::Joined,
        Self::Late,
        Self::Conflict,
        Self::Ambiguous,
        Self::Duplicate,
    ];

    /// Its place in [`Outcome::ALL`] (its declaration order).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Opened => "opened",
            Self::Joined => "joined",
            Self::Late => "late",
            Self::Conflict => "conflict",
            Self::Ambiguous => "ambiguous",
            Self::Duplicate => "duplicate",
        }
    }
}

/// Why an exchange left the join state before its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Eviction {
    /// Made ready (span exported) before its join window closed, and not retained.
    OpenEarly,
    /// Forgotten before its retention ended; later observations open a new exchange.
    RetainedEarly,
}

impl Eviction {
    /// Every reason, in [`Eviction::index`] order.
    pub const ALL: [Self; 2] = [Self::OpenEarly, Self::RetainedEarly];

    /// Its place in [`Eviction::ALL`] (its declaration order).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::OpenEarly => "open_early",
            Self::RetainedEarly => "retained_early",
        }
    }
}

/// The result of [`Joiner::offer`].
#[derive(Debug)]
pub struct Offered {
    /// What happened.
    pub outcome: Outcome,
    /// The exchange as it stands now, to store (replacing its previous version).
    pub record: Arc<CorrelatedSession>,
    /// Problems with the offered session's trace context.
    pub issues: Vec<ContextIssue>,
    /// Exchanges that became ready meanwhile: export and count each once.
    pub ready: Vec<Arc<CorrelatedSession>>,
    /// Evictions this offer caused.
    pub evictions: Vec<Eviction>,
    /// Exchanges that left the full REST store to make room for this one.
    pub store_evicted: usize,
}

/// The result of [`Joiner::offer_head`]: as [`Offered`], without the exchange (a view offered
/// by its head is not decoded to hand it out).
#[derive(Debug)]
pub struct Placed {
    /// What happened.
    pub outcome: Outcome,
    /// Problems with the offered session's trace context.
    pub issues: Vec<ContextIssue>,
    /// Exchanges that became ready meanwhile: export and count each once.
    pub ready: Vec<Arc<CorrelatedSession>>,
    /// Evictions this offer caused.
    pub evictions: Vec<Eviction>,
    /// Exchanges that left the full REST store to make room for this one.
    pub store_evicted: usize,
}

impl From<Offered> for Placed {
    fn from(o: Offered) -> Self {
        Self {
            outcome: o.outcome,
            issues: o.issues,
            ready: o.ready,
            evictions: o.evictions,
            store_evicted: o.store_evicted,
        }
    }
}

/// One exchange as the correlator holds it: in the join (open or retained), in the REST
/// store's order, or both. Held once; the join's indexes and the store's order refer to it by
/// its slot number.
#[derive(Debug)]
struct Entry {
    /// Handed out (REST, export) by reference count; only a change copies it
    /// (`Arc::make_mut`), and only while a reader still holds the older version.
    rec: Held,
    client: Option<ClientAddr>,
    /// From the earliest start to the latest end of its observations: where the client's
    /// time index ([`ByTime`]) files it.
    span: (u64, u64),
    /// Its wire key, when it had one first (a colliding key stays with the exchange that had
    /// it first). An exchange gains a key only while it has none: a view joins a keyed
    /// exchange only through that key.
    key: Option<WireKey>,
    /// Its window has closed: span exported, metrics counted.
    ready: bool,
    /// Held by the join (open or retained).
    joined: bool,
    /// Its arrival number in the store's order, while the store lists it.
    stored: Option<u64>,
    /// Views merged into it before it was ready (late ones are counted apart).
    views: u64,
    /// The session's encoding as it arrived (copied out of its batch, which is freed with the
    /// batch), while the exchange is that one session unchanged (no view merged into it here):
    /// packing keeps it instead of encoding the session again.
    arrival: Option<Box<[u8]>>,
    /// The hashes its ids are indexed under (see [`slots`]).
    id_hashes: IdHashes,
}

/// Views (sessions, one point's each) as the join accounted for them: every view offered and
/// not a duplicate is in an open exchange, in one made ready, or merged late.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinViews {
    /// Views in exchanges still open now.
    pub open: u64,
    /// Views in exchanges made ready (exported when export is on, counted in the metrics), ever.
    pub ready: u64,
    /// Views merged into an exchange already made ready, ever: the REST API shows them, its
    /// span and metrics do not.
    pub late: u64,
    /// Views of exchanges held as they arrived ([`Joiner::offer_head`]) that did not decode
    /// when their window closed, ever: neither exported nor counted in the metrics.
    pub malformed: u64,
}

/// What [`Joiner::open`] files an exchange of one view under.
struct Opening {
    held: Held,
    /// See [`Entry::arrival`].
    arrival: Option<Box<[u8]>>,
    client: Option<ClientAddr>,
    key: Option<WireKey>,
    span: (u64, u64),
    /// Whether a point with sequence numbers saw it.
    keyed: bool,
}

/// How an entry holds its exchange.
#[derive(Debug)]
enum Held {
    /// As REST, spans and merging read it.
    Live(Arc<CorrelatedSession>),
    /// A ready exchange only the join holds any more (for late views and duplicates), its
    /// session protobuf-encoded: a fraction of the decoded size, for the retention time. A
    /// view that joins it unpacks it.
    Packed(Packed),
}

impl Held {
    /// A word of what it points to, read (see [`Joiner::forget_group`]).
    fn touch(&self) -> u64 {
        match self {
            Self::Live(rec) => rec.span_id.0[0].into(),
            Self::Packed(p) => p.first_byte().into(),
        }
    }

    /// The exchange (a decoded copy when packed).
    fn shared(&self) -> Arc<CorrelatedSession> {
        match self {
            Self::Live(rec) => Arc::clone(rec),
            Self::Packed(p) => Arc::new(p.unpack()),
        }
    }

    /// The exchange, decoded when packed; `None` when it was held as it arrived and does not
    /// decode (only its head was read on arrival). It is then emptied: later readers get its
    /// ids and no fields.
    ///
    /// A packed exchange is decoded into one of `spares` (exchanges finished with, each held
    /// nowhere else) when there is one: its blocks written over instead of allocated again.
    fn try_shared(
        &mut self,
        spares: &mut Vec<Arc<CorrelatedSession>>,
    ) -> Option<Arc<CorrelatedSession>> {
        match self {
            Self::Live(rec) => Some(Arc::clone(rec)),
            Self::Packed(p) => {
                let unpacked = match spares.pop() {
                    Some(mut spare) => match Arc::get_mut(&mut spare) {
                        Some(rec) => p.try_unpack_into(rec).map(|()| spare),
                        None => p.try_unpack().map(Arc::new),
                    },
                    None => p.try_unpack().map(Arc::new),
                };
                match unpacked {
                    Ok(rec) => Some(rec),
                    Err(_) => {
                        p.empty_session();
                        None
                    }
                }
            }
        }
    }

    /// The exchange, unpacked in place if it was packed.
    fn live(&mut self) -> &mut Arc<CorrelatedSession> {
        if let Self::Packed(p) = self {
            *self = Self::Live(Arc::new(p.unpack()));
        }
        match self {
            Self::Live(rec) => rec,
            // Unpacked just above.
            Self::Packed(_) => unreachable!("unpacked above"),
        }
    }

    /// Packs the exchange, which is kept only for the join's decisions now: `arrival` is its
    /// session's encoding as it arrived, when unchanged since (else it is encoded). Stays
    /// as it is in the rare case it does not fit a packing ([`Packed::of`]).
    fn pack(&mut self, arrival: Option<Box<[u8]>>) {
        if let Self::Live(rec) = self {
            if let Some(packed) = Packed::of(rec, arrival.as_deref()) {
                *self = Self::Packed(packed);
            }
        }
    }

    /// The exchange's id and those of the sessions merged into it (each once).
    fn ids(&self) -> impl Iterator<Item = &str> {
        let (own, rest) = match self {
            Self::Live(rec) => (rec.id.as_str(), Ids::Live(rec.constituents.iter())),
            Self::Packed(p) => {
                let mut ids = p.ids();
                (ids.next().unwrap_or_default(), Ids::Packed(ids))
            }
        };
        std::iter::once(own).chain(rest.filter(move |c| *c != own))
    }

    /// Whether `id` is one of [`Held::ids`].
    fn has_id(&self, id: &str) -> bool {
        match self {
            Self::Live(rec) => rec.id == id || rec.constituents.iter().any(|c| c == id),
            Self::Packed(p) => p.ids().any(|c| c == id),
        }
    }
}

/// The constituents' ids of a [`Held`] exchange.
enum Ids<'a, P> {
    Live(std::slice::Iter<'a, String>),
    Packed(P),
}

impl<'a, P: Iterator<Item = &'a str>> Iterator for Ids<'a, P> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        match self {
            Self::Live(i) => i.next().map(String::as_str),
            Self::Packed(i) => i.next(),
        }
    }
}

/// Exchanges the tables are sized for up front, at most.
const RESERVED_MAX: usize = 1 << 16;

/// The REST store's part: the most recent exchanges in arrival order, at most `capacity`.
#[derive(Debug, Default)]
struct StoreOrder {
    /// 0 when there is no store (a join on its own).
    capacity: usize,
    /// Slots, oldest first; arrival numbers are consecutive, ending at `next - 1`.
    order: VecDeque<u64>,
    next: u64,
    evicted: u64,
}

/// The join state, and the REST store's order over the same exchanges. Not thread-safe by
/// itself; [`crate::store::Store`] holds it behind a lock.
#[derive(Debug)]
pub struct Joiner {
    config: JoinConfig,
    entries: Slab,
    /// Exchanges the join holds (open or retained); the rest are only in the store.
    held: usize,
    /// Held exchanges by wire key: each entry's `key`.
    wire: SlotIndex,
    /// Every exchange the join holds, by client address and time: kept only while
    /// sequence-less views come ([`ByClient`]).
    clients: ByClient,
    /// Held exchanges no sequence-carrying point has seen yet, by client address: the only
    /// ones a keyed view with an unknown key can join. Kept apart so that such a view — the
    /// first view of nearly every exchange — does not scan a busy keep-alive client's history.
    unkeyed: FxHashMap<ClientAddr, ByTime>,
    /// Every id of every exchange held (join or store): the id the REST API finds it by and
    /// the ids of the sessions merged into it.
    ids: SlotIndex,
    /// Open exchanges by the end of their window; the window is fixed, so arrival order is
    /// deadline order.
    open: VecDeque<(Instant, u64)>,
    /// Ready exchanges by the end of their retention.
    retained: VecDeque<(Instant, u64)>,
    store: StoreOrder,
    /// Candidates a sequence-less view was compared with, ever (the cost of time joins).
    time_candidates: u64,
    views: JoinViews,
    heads: HeadSampling,
    /// Exchanges finished with, to decode ready ones into ([`Joiner::restock`]).
    spares: Vec<Arc<CorrelatedSession>>,
    /// The slots [`Joiner::forget_group`] takes, kept for its capacity.
    group: Vec<u64>,
}

/// Which views [`Joiner::offer_head`] reads the head of. Reading a head costs a fraction of a
/// whole decoding and pays only when the view is held as it arrived; where views seldom are (a
/// cluster whose traffic crosses nodes, each exchange awaiting the other node's view), it reads
/// one head in [`HeadSampling::SKIP`] once [`HeadSampling::PATIENCE`] heads in a row were not
/// held, and all again from the first that is.
#[derive(Debug, Default)]
struct HeadSampling {
    not_held_in_a_row: u32,
    skipped: u32,
}

impl HeadSampling {
    const PATIENCE: u32 = 64;
    const SKIP: u32 = 16;

    /// Whether to read the next view's head.
    fn read_next(&mut self) -> bool {
        if self.not_held_in_a_row < Self::PATIENCE {
            return true;
        }
        self.skipped += 1;
        if self.skipped < Self::SKIP {
            return false;
        }
        self.skipped = 0;
        true
    }

    /// The view whose head was read was held as it arrived (`held`) or not.
    fn saw(&mut self, held: bool) {
        self.not_held_in_a_row = if held {
            0
        } else {
            self.not_held_in_a_row.saturating_add(1)
        };
    }
}

/// Candidates a sequence-less view is compared with at most, by default
/// ([`JoinConfig::max_time_candidates`]): beyond, it is ambiguous (kept on its own). Bounds the
/// join's work per view whatever one client sends.
pub const MAX_TIME_CANDIDATES: usize = 64;

/// One client's exchanges by the start of their span, and the longest span among them: an
/// exchange overlapping `(start, end)` starts within `[start - longest, end]`, so a view is
/// compared with the exchanges of its own time rather than with the client's whole history.
#[derive(Debug, Default)]
struct ByTime {
    by_start: BTreeSet<(u64, u64)>,
    /// Never shrinks while the client has exchanges (a cheap, safe over-estimate).
    longest: u64,
}

impl ByTime {
    fn insert(&mut self, span: (u64, u64), slot: u64) {
        self.by_start.insert((span.0, slot));
        self.longest = self.longest.max(span.1.saturating_sub(span.0));
    }

    /// The slots that may overlap `span`, earliest first.
    fn around(&self, span: (u64, u64)) -> impl Iterator<Item = u64> + '_ {
        let from = span.0.saturating_sub(self.longest);
        self.by_start
            .range((from, 0)..=(span.1, u64::MAX))
            .map(|&(_, slot)| slot)
    }
}

/// Every exchange the join holds by client address and time, for views without a sequence
/// number (a socket point that could not read one) to find the exchange they belong to — kept
/// only while such views come. Filing every exchange in a client's ordered set and taking it
/// out again when it is forgotten cost the correlator about 7 % of its time under load
/// (docs/benchmarks.md), for a view most clusters never send. The first sequence-less view
/// builds the index from the exchanges held (a pass over at most `max_entries`, then the same
/// index as if it had always been kept); it is kept up to date from then on, and let go of
/// once no such view came for [`ByClient::IDLE`].
#[derive(Debug, Default)]
struct ByClient {
    /// `Some` while kept.
    index: Option<FxHashMap<ClientAddr, ByTime>>,
    /// When a sequence-less view last wanted it.
    wanted: Option<Instant>,
}

impl ByClient {
    /// How long the index is kept after the last view that wanted it.
    const IDLE: Duration = Duration::from_secs(600);

    /// The index, to keep up to date, while it is kept.
    fn kept_mut(&mut self) -> Option<&mut FxHashMap<ClientAddr, ByTime>> {
        self.index.as_mut()
    }

    /// The index, built from the exchanges the join holds if it was not kept.
    fn build(&mut self, entries: &Slab, now: Instant) -> &FxHashMap<ClientAddr, ByTime> {
        self.wanted = Some(now);
        self.index.get_or_insert_with(|| {
            let mut index: FxHashMap<ClientAddr, ByTime> = FxHashMap::default();
            for (slot, e) in entries.iter() {
                if let (true, Some(c)) = (e.joined, e.client) {
                    index.entry(c).or_default().insert(e.span, slot);
                }
            }
            index
        })
    }

    /// Lets the index go when no view wanted it for [`ByClient::IDLE`].
    fn let_go_if_idle(&mut self, now: Instant) {
        if self.index.is_some()
            && self
                .wanted
                .is_some_and(|at| now.saturating_duration_since(at) >= Self::IDLE)
        {
            self.index = None;
        }
    }

    /// Whether the index is kept (tests).
    #[cfg(test)]
    fn is_kept(&self) -> bool {
        self.index.is_some()
    }
}

/// Takes `slot` (filed at `start`) out of `client`'s index, dropping the index once empty.
fn remove_slot(
    index: &mut FxHashMap<ClientAddr, ByTime>,
    client: ClientAddr,
    start: u64,
    slot: u64,
) {
    if let Some(v) = index.get_mut(&client) {
        v.by_start.remove(&(start, slot));
        if v.by_start.is_empty() {
            index.remove(&client);
        }
    }
}

/// From the earliest start to the latest end of `session`'s observations.
fn span_of(session: &Session) -> (u64, u64) {
    span_over(session.observations.iter().map(interval))
}

/// From the earliest start to the latest end of `intervals`.
fn span_over(intervals: impl Iterator<Item = (u64, u64)>) -> (u64, u64) {
    intervals
        .reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)))
        .unwrap_or((0, 0))
}

/// The session's own id and those of the sessions merged into it.
pub(crate) fn ids_of(rec: &CorrelatedSession) -> impl Iterator<Item = &str> {
    ids_from(&rec.id, &rec.constituents)
}

/// `id`, then those of `constituents` that are not `id`.
fn ids_from<'a>(id: &'a str, constituents: &'a [String]) -> impl Iterator<Item = &'a str> {
    std::iter::once(id).chain(
        constituents
            .iter()
            .map(String::as_str)
            .filter(move |c| *c != id),
    )
}

/// The entries by slot number; a freed slot is reused. Nothing refers to a slot once its
/// entry is gone: the join lets go of it (queues popped, indexes removed) and the store's
/// order pops it before the entry is removed.
#[derive(Debug, Default)]
struct Slab {
    slots: Vec<Option<Entry>>,
    free: Vec<u64>,
    len: usize,
}

impl Slab {
    /// The slot the next [`Slab::insert`] fills.
    fn vacant(&self) -> u64 {
        self.free.last().copied().unwrap_or(self.slots.len() as u64)
    }

    /// Fills `slot`, which [`Slab::vacant`] returned.
    fn insert(&mut self, slot: u64, entry: Entry) {
        if self.free.last() == Some(&slot) {
            self.free.pop();
        }
        let i = slot as usize;
        if i == self.slots.len() {
            self.slots.push(None);
        }
        if let Some(s) = self.slots.get_mut(i) {
            if s.is_none() {
                self.len += 1;
            }
            *s = Some(entry);
        }
    }

    fn get(&self, slot: &u64) -> Option<&Entry> {
        self.slots.get(*slot as usize)?.as_ref()
    }

    fn get_mut(&mut self, slot: &u64) -> Option<&mut Entry> {
        self.slots.get_mut(*slot as usize)?.as_mut()
    }

    fn remove(&mut self, slot: &u64) -> Option<Entry> {
        let e = self.slots.get_mut(*slot as usize)?.take()?;
        self.len -= 1;
        self.free.push(*slot);
        Some(e)
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[cfg(test)]
    fn values(&self) -> impl Iterator<Item = &Entry> {
        self.slots.iter().flatten()
    }

    /// Every entry with its slot.
    fn iter(&self) -> impl Iterator<Item = (u64, &Entry)> {
        (0u64..)
            .zip(&self.slots)
            .filter_map(|(slot, e)| e.as_ref().map(|e| (slot, e)))
    }
}

enum Found {
    One(u64),
    Many,
    None,
}

impl Joiner {
    /// An empty join state.
    pub fn new(config: JoinConfig) -> Self {
        Self {
            config: JoinConfig {
                max_entries: config.max_entries.max(1),
                ..config
            },
            entries: Slab::default(),
            held: 0,
            wire: SlotIndex::default(),
            clients: ByClient::default(),
            unkeyed: FxHashMap::default(),
            ids: SlotIndex::default(),
            open: VecDeque::new(),
            retained: VecDeque::new(),
            store: StoreOrder::default(),
            time_candidates: 0,
            views: JoinViews::default(),
            heads: HeadSampling::default(),
            spares: Vec::new(),
            group: Vec::new(),
        }
    }

    /// An empty join state that also keeps the `store_capacity` most recent exchanges for the
    /// REST store, whether the join still holds them or not.
    pub fn with_store(config: JoinConfig, store_capacity: usize) -> Self {
        let mut j = Self::new(config);
        j.store.capacity = store_capacity;
        j.store.order = VecDeque::with_capacity(store_capacity.min(RESERVED_MAX));
        j.reserve();
        j
    }

    /// Re-configures the join; only while nothing is held.
    pub fn set_config(&mut self, config: JoinConfig) {
        if self.entries.is_empty() {
            self.config = JoinConfig {
                max_entries: config.max_entries.max(1),
                ..config
            };
            self.reserve();
        }
    }

    /// Sizes the tables for what the join and the store hold when full (up to a bound), while
    /// nothing is held: grown step by step under load, each step would hold the old table and
    /// the new one at once (a peak of memory) and copy every entry.
    fn reserve(&mut self) {
        if !self.entries.is_empty() {
            return;
        }
        // The store lists mostly exchanges the join holds too (the most recent).
        let n = self
            .config
            .max_entries
            .max(self.store.capacity)
            .min(RESERVED_MAX);
        self.entries = Slab {
            slots: Vec::with_capacity(n),
            ..Slab::default()
        };
        // Two views' ids per exchange.
        self.ids = SlotIndex::with_capacity(2 * n);
        self.wire = SlotIndex::with_capacity(n);
        self.open = VecDeque::with_capacity(n);
        self.retained = VecDeque::with_capacity(n);
    }

    /// The join's configuration.
    pub fn config(&self) -> JoinConfig {
        self.config
    }

    /// Exchanges still waiting for their window to close.
    pub fn open_len(&self) -> usize {
        self.open.len()
    }

    /// Exchanges finished with, at most, kept to decode ready ones into: about as many as a
    /// batch makes ready (about 2 MiB: see [`Joiner::SPARE_BYTES_MAX`]).
    pub const SPARES_MAX: usize = 1024;

    /// Exchanges an offer makes ready at most, of those whose window has closed: each is
    /// decoded whole then, and counted and exported by the caller after the offer
    /// ([`crate::ingest`] does so every few offers). Uncapped, the first offer of a batch made
    /// ready every exchange due since the last batch — hundreds, a megabyte decoded — and those
    /// decoded first had left the cache again when they were counted. An offer adds at most one
    /// open exchange, so the due ones never pile up; a due exchange waits at most until the next
    /// offer or tick, and a view arriving meanwhile still joins it.
    pub const READY_PER_OFFER: usize = 32;

    /// The most a spare may hold in the blocks decoded into (strings and vectors, by capacity;
    /// a typical HTTP exchange seen at two points holds about 1 KiB): one that grew larger for a
    /// big exchange (a long URL, say) is dropped rather than kept. With
    /// [`Joiner::SPARES_MAX`] (each spare about 1 KiB itself), the spares hold at most about
    /// 5 MiB in all, typically 2.
    pub const SPARE_BYTES_MAX: usize = 4096;

    /// Exchanges kept to decode ready ones into.
    pub fn spare_count(&self) -> usize {
        self.spares.len()
    }

    /// Takes exchanges the caller has finished with to decode exchanges into as their windows
    /// close, up to [`Joiner::SPARES_MAX`]: those held elsewhere too, or holding more than
    /// [`Joiner::SPARE_BYTES_MAX`], and the surplus are dropped. `finished` is left empty.
    pub fn restock(&mut self, finished: &mut Vec<Arc<CorrelatedSession>>) {
        let room = Self::SPARES_MAX.saturating_sub(self.spares.len());
        self.spares.extend(
            finished
                .drain(..)
                .filter_map(|mut rec| {
                    let reusable = Arc::get_mut(&mut rec).is_some_and(|r| {
                        let ids = r.id.capacity()
                            + r.constituents.iter().map(String::capacity).sum::<usize>();
                        ids + session_decode::reused_capacity(&r.session) <= Self::SPARE_BYTES_MAX
                    });
                    reusable.then_some(rec)
                })
                .take(room),
        );
    }

    /// Exchanges held, open or retained.
    pub fn len(&self) -> usize {
        self.held
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// The slot of the exchange holding session id `id`.
    fn slot_of(&self, id: &str) -> Option<u64> {
        self.ids.get(hash(id), |slot| {
            self.entries.get(&slot).is_some_and(|e| e.rec.has_id(id))
        })
    }

    /// The slot of the exchange holding wire key `k`.
    fn wire_slot(&self, k: &WireKey) -> Option<u64> {
        self.wire.get(hash(k), |slot| {
            self.entries.get(&slot).is_some_and(|e| e.key == Some(*k))
        })
    }

    /// The exchange a session id was merged into, if it is still held (by the join or the
    /// store).
    pub fn get(&self, id: &str) -> Option<Arc<CorrelatedSession>> {
        let slot = self.slot_of(id)?;
        self.entries.get(&slot).map(|e| e.rec.shared())
    }

    /// Takes one point's view of one exchange at `now`.
    pub fn offer(&mut self, session: Session, now: Instant) -> Offered {
        self.offer_encoded(session, None, now)
    }

    /// [`Joiner::offer`] of a session decoded from `encoded`, which the join keeps (and, once
    /// the exchange is ready, copies instead of encoding the session again) while no other
    /// view is merged into it.
    pub fn offer_encoded(
        &mut self,
        session: Session,
        encoded: Option<Bytes>,
        now: Instant,
    ) -> Offered {
        let mut ready = Vec::new();
        let mut evictions = Vec::new();
        self.expire_into(now, &mut ready);

        let known = std::iter::once(&session.id)
            .chain(&session.merged_ids)
            .find_map(|id| self.slot_of(id));
        if let Some(slot) = known {
            if let Some(e) = self.entries.get(&slot) {
                return Offered {
                    outcome: Outcome::Duplicate,
                    record: e.rec.shared(),
                    issues: Vec::new(),
                    ready,
                    evictions,
                    store_evicted: 0,
                };
            }
        }

        let (rec, issues) = CorrelatedSession::new(session);
        let client = ClientAddr::of(&rec.session);
        let key = client.and_then(|c| wire_key(&rec.session, c));
        let found = match (key, client) {
            (Some(k), _) => match self.wire_slot(&k) {
                Some(slot) => Found::One(slot),
                // A sequence-less exchange (socket only so far) may be this one.
                None => self.find_by_time(client, &rec.session, true, now),
            },
            (None, Some(_)) => self.find_by_time(client, &rec.session, false, now),
            (None, None) => Found::None,
        };
        let (candidate, mut refused) = match found {
            Found::One(slot) => (Some(slot), None),
            Found::Many => (None, Some(Outcome::Ambiguous)),
            Found::None => (None, None),
        };
        let mut rec = Box::new(rec);
        if let Some(slot) = candidate {
            match self.try_join(slot, rec, key) {
                Ok((outcome, record)) => {
                    let store_evicted = self.store_upsert(slot);
                    return Offered {
                        outcome,
                        record,
                        issues,
                        ready,
                        evictions,
                        store_evicted,
                    };
                }
                Err(back) => {
                    rec = back;
                    refused = Some(Outcome::Conflict);
                }
            }
        }

        let mut rec = *rec;
        // Views the collector merged already are constituents from the start.
        let merged_ids = std::mem::take(&mut rec.session.merged_ids);
        rec.constituents = constituents(&rec.session.id, merged_ids);
        let span = span_of(&rec.session);
        let keyed = rec.session.observations.iter().any(key::has_tcp_seq);
        let record = Arc::new(rec);
        let arrival = encoded.map(|b| Box::from(&b[..]));
        let opening = Opening {
            held: Held::Live(Arc::clone(&record)),
            arrival,
            client,
            key,
            span,
            keyed,
        };
        let store_evicted = self.open(opening, now, &mut ready, &mut evictions);
        Offered {
            outcome: refused.unwrap_or(Outcome::Opened),
            record,
            issues,
            ready,
            evictions,
            store_evicted,
        }
    }

    /// [`Joiner::offer_encoded`] of the session encoded in `encoded`, read by its head first
    /// ([`head`]). A view that opens an exchange of its own and expects no other
    /// ([`Head::awaits_views`]) — what a collector's local join sends of an exchange its probe
    /// saw whole — is held as it arrived and decoded whole when its window closes; any other (a
    /// view that may have company, one whose wire key an exchange holds, one whose client has
    /// exchanges no sequence number placed, a duplicate, one without a wire key) is decoded
    /// whole now and offered as such. Fails when it must be decoded now and does not decode.
    pub fn offer_head(
        &mut self,
        encoded: Bytes,
        now: Instant,
    ) -> Result<Placed, session_decode::DecodeError> {
        if self.heads.read_next() {
            let placed = Head::read(&encoded).and_then(|h| self.open_alone(&h, &encoded, now));
            self.heads.saw(placed.is_some());
            if let Some(placed) = placed {
                return Ok(placed);
            }
        }
        let session = session_decode::decode(&encoded)?;
        Ok(Placed::from(self.offer_encoded(
            session,
            Some(encoded),
            now,
        )))
    }

    /// Opens an exchange held as it arrived for the view of head `h` (encoded in `encoded`),
    /// unless the view may join or be joined ([`Joiner::offer_head`]).
    fn open_alone(&mut self, h: &Head<'_>, encoded: &[u8], now: Instant) -> Option<Placed> {
        if h.awaits_views() {
            return None;
        }
        let client = h.client()?;
        let key = h.wire_key(client)?;
        if self.wire_slot(&key).is_some()
            || self.unkeyed.contains_key(&client)
            || std::iter::once(&h.id())
                .chain(h.merged_ids())
                .any(|id| self.slot_of(id).is_some())
        {
            return None;
        }
        let (packed, issues) = Packed::arrived(h, encoded)?;
        let mut ready = Vec::new();
        let mut evictions = Vec::new();
        self.expire_into(now, &mut ready);
        let span = span_over(packed.intervals());
        let opening = Opening {
            keyed: packed.keyed(),
            held: Held::Packed(packed),
            arrival: None,
            client: Some(client),
            key: Some(key),
            span,
        };
        let store_evicted = self.open(opening, now, &mut ready, &mut evictions);
        Some(Placed {
            outcome: Outcome::Opened,
            issues,
            ready,
            evictions,
            store_evicted,
        })
    }

    /// Opens an exchange of one view, making room first; returns how many exchanges left the
    /// store for it.
    fn open(
        &mut self,
        opening: Opening,
        now: Instant,
        ready: &mut Vec<Arc<CorrelatedSession>>,
        evictions: &mut Vec<Eviction>,
    ) -> usize {
        self.make_room(now, ready, evictions);
        let slot = self.entries.vacant();
        let Opening {
            held,
            arrival,
            client,
            key,
            span,
            keyed,
        } = opening;
        let mut entry_key = None;
        if let Some(k) = key {
            // A conflicting key stays with the exchange that had it first.
            if self.wire_slot(&k).is_none() {
                self.wire.insert_new(hash(&k), slot);
                entry_key = Some(k);
            }
        }
        if let Some(c) = client {
            if let Some(clients) = self.clients.kept_mut() {
                clients.entry(c).or_default().insert(span, slot);
            }
            if !keyed {
                self.unkeyed.entry(c).or_default().insert(span, slot);
            }
        }
        // None of its ids is indexed: it would have been a duplicate.
        let mut id_hashes = IdHashes::default();
        for id in held.ids() {
            let h = hash(id);
            self.ids.insert_new(h, slot);
            id_hashes.push(h);
        }
        self.entries.insert(
            slot,
            Entry {
                client,
                span,
                key: entry_key,
                ready: false,
                joined: true,
                stored: None,
                views: 1,
                rec: held,
                arrival,
                id_hashes,
            },
        );
        self.views.open += 1;
        self.held += 1;
        self.open.push_back((now + self.config.window, slot));
        let store_evicted = self.store_upsert(slot);
        // A zero window makes it ready at once (the offer expired the others due already).
        if self.config.window.is_zero() {
            self.expire_into(now, ready);
        }
        store_evicted
    }

    /// Exchanges of `client` overlapping `session` in time and agreeing with it; with
    /// `unkeyed_only`, only those no sequence-carrying point has seen yet.
    fn find_by_time(
        &mut self,
        client: Option<ClientAddr>,
        session: &Session,
        unkeyed_only: bool,
        now: Instant,
    ) -> Found {
        let index = if unkeyed_only {
            &self.unkeyed
        } else {
            self.clients.build(&self.entries, now)
        };
        let Some(by_time) = client.and_then(|c| index.get(&c)) else {
            return Found::None;
        };
        let Some(span) = session.observations.first().map(interval) else {
            return Found::None;
        };
        let mut found = None;
        let mut compared = 0usize;
        for slot in by_time.around(span) {
            if compared >= self.config.max_time_candidates {
                self.time_candidates += compared as u64;
                return Found::Many;
            }
            compared += 1;
            let Some(e) = self.entries.get(&slot) else {
                continue;
            };
            let (keyed, overlapping) = match &e.rec {
                Held::Live(rec) => (
                    rec.session.observations.iter().any(key::has_tcp_seq),
                    rec.session
                        .observations
                        .iter()
                        .any(|o| overlaps(interval(o), span)),
                ),
                Held::Packed(p) => (p.keyed(), p.intervals().any(|i| overlaps(i, span))),
            };
            if (unkeyed_only && keyed) || !overlapping {
                continue;
            }
            let rec = e.rec.shared();
            if merge::fits(&rec.session, session) {
                if found.is_some() {
                    self.time_candidates += compared as u64;
                    return Found::Many;
                }
                found = Some(slot);
            }
        }
        self.time_candidates += compared as u64;
        found.map_or(Found::None, Found::One)
    }

    /// Where the views offered so far are: open, made ready, merged late.
    pub fn views(&self) -> JoinViews {
        self.views
    }

    /// Candidates sequence-less views were compared with so far: grows with the views' own
    /// time neighbourhoods, never with a client's whole history (at most
    /// [`JoinConfig::max_time_candidates`] per view).
    pub fn time_candidates(&self) -> u64 {
        self.time_candidates
    }

    /// Merges `rec` into exchange `slot` when they agree and the point is new to it; otherwise
    /// gives `rec` back.
    fn try_join(
        &mut self,
        slot: u64,
        rec: Box<CorrelatedSession>,
        key: Option<WireKey>,
    ) -> Result<(Outcome, Arc<CorrelatedSession>), Box<CorrelatedSession>> {
        let Some(e) = self.entries.get_mut(&slot) else {
            return Err(rec);
        };
        let live = e.rec.live();
        if !merge::fits(&live.session, &rec.session) {
            return Err(rec);
        }
        let CorrelatedSession { mut session, .. } = *rec;
        let merged_ids = std::mem::take(&mut session.merged_ids);
        let gains_seq = session.observations.iter().any(key::has_tcp_seq);
        let merged = Arc::make_mut(live);
        let id = merge::merge(&mut merged.session, session);
        e.arrival = None;
        let old_span = e.span;
        let new_span = span_of(&merged.session);
        if let Some(c) = e.client {
            if gains_seq {
                remove_slot(&mut self.unkeyed, c, old_span.0, slot);
            }
            if new_span != old_span {
                e.span = new_span;
                let clients = self.clients.kept_mut();
                for index in clients.into_iter().chain([&mut self.unkeyed]) {
                    if let Some(v) = index.get_mut(&c) {
                        if v.by_start.remove(&(old_span.0, slot)) {
                            v.insert(new_span, slot);
                        }
                    }
                }
            }
        }
        if !e.ready {
            // A context first seen by this point (e.g. a socket's plaintext) places the span.
            merged.adopt_wire_context();
        }
        for id in std::iter::once(id).chain(merged_ids) {
            if !id.is_empty() {
                // Not indexed yet: the view would have been a duplicate.
                let h = hash(id.as_str());
                self.ids.insert_new(h, slot);
                e.id_hashes.push(h);
                merged.constituents.push(id);
            }
        }
        let gains_key = key.filter(|_| e.key.is_none());
        let outcome = if e.ready {
            self.views.late += 1;
            Outcome::Late
        } else {
            e.views += 1;
            self.views.open += 1;
            Outcome::Joined
        };
        let record = e.rec.shared();
        if let Some(k) = gains_key {
            if self.wire_slot(&k).is_none() {
                self.wire.insert_new(hash(&k), slot);
                if let Some(e) = self.entries.get_mut(&slot) {
                    e.key = Some(k);
                }
            }
        }
        Ok((outcome, record))
    }

    fn make_room(
        &mut self,
        now: Instant,
        ready: &mut Vec<Arc<CorrelatedSession>>,
        evictions: &mut Vec<Eviction>,
    ) {
        while self.held >= self.config.max_entries {
            if !self.retained.is_empty() {
                let over = self.held + 1 - self.config.max_entries;
                let n = over.max(self.forget_group_len()).min(self.retained.len());
                let forgotten = self.forget_oldest_retained(n);
                evictions.extend(std::iter::repeat_n(Eviction::RetainedEarly, forgotten));
            } else if let Some((_, slot)) = self.open.pop_front() {
                // Exported now and not retained: it frees its place at once.
                if let Some(rec) = self.make_ready(slot, now) {
                    ready.push(rec);
                }
                self.retained.retain(|(_, s)| *s != slot);
                self.forget(slot);
                evictions.push(Eviction::OpenEarly);
            } else {
                break;
            }
        }
    }

    fn make_ready(&mut self, slot: u64, now: Instant) -> Option<Arc<CorrelatedSession>> {
        let e = self.entries.get_mut(&slot)?;
        let was_ready = e.ready;
        e.ready = true;
        self.retained.push_back((now + self.config.retention, slot));
        // An exchange held as it arrived is decoded whole here, once.
        let rec = e.rec.try_shared(&mut self.spares);
        if !was_ready {
            self.views.open = self.views.open.saturating_sub(e.views);
            match rec {
                Some(_) => self.views.ready += e.views,
                None => self.views.malformed += e.views,
            }
        }
        let rec = rec?;
        // Packed whether the store lists it or not: REST reads (rare) unpack a copy, and the
        // join, holding it for the retention time, keeps a fraction of the decoded size. From
        // the encoding it arrived in, packing is a copy.
        e.rec.pack(e.arrival.take());
        Some(rec)
    }

    /// The join lets go of `slot`; the exchange stays while the store lists it.
    fn forget(&mut self, slot: u64) {
        let Some(e) = self.entries.get_mut(&slot) else {
            return;
        };
        if !e.joined {
            return;
        }
        e.joined = false;
        self.held -= 1;
        if let Some(k) = e.key.take() {
            self.wire.remove(hash(&k), slot);
        }
        if let Some(c) = e.client {
            if let Some(clients) = self.clients.kept_mut() {
                remove_slot(clients, c, e.span.0, slot);
            }
            remove_slot(&mut self.unkeyed, c, e.span.0, slot);
        }
        if e.stored.is_none() {
            self.remove(slot);
        }
    }

    /// Drops `slot` and the ids that find it.
    fn remove(&mut self, slot: u64) {
        let Some(e) = self.entries.remove(&slot) else {
            return;
        };
        match e.id_hashes.all() {
            Some(hashes) => {
                for h in hashes {
                    self.ids.remove(*h, slot);
                }
            }
            None => {
                for id in e.rec.ids() {
                    self.ids.remove(hash(id), slot);
                }
            }
        }
    }

    /// Makes ready the exchanges whose window has closed by `now`, at most
    /// [`Joiner::READY_PER_OFFER`] of them (the oldest) when an offer does it — the rest on the
    /// next offers or the next [`Joiner::expire`] — and forgets those retained long enough.
    fn expire_into(&mut self, now: Instant, ready: &mut Vec<Arc<CorrelatedSession>>) {
        self.expire_at_most(now, Self::READY_PER_OFFER, ready);
    }

    fn expire_at_most(
        &mut self,
        now: Instant,
        most: usize,
        ready: &mut Vec<Arc<CorrelatedSession>>,
    ) {
        self.clients.let_go_if_idle(now);
        let mut made = 0;
        while made < most && self.open.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, slot)) = self.open.pop_front() {
                made += 1;
                if let Some(rec) = self.make_ready(slot, now) {
                    ready.push(rec);
                }
            }
        }
        loop {
            let due = self
                .retained
                .iter()
                .take(Self::FORGET_GROUP)
                .take_while(|(at, _)| *at <= now)
                .count();
            if due == 0 {
                break;
            }
            self.forget_oldest_retained(due);
        }
    }

    /// Retained exchanges forgotten together at most ([`Joiner::forget_group`]).
    const FORGET_GROUP: usize = 32;

    /// How many retained exchanges a full join forgets at once: a 2048th of its size, at
    /// least one and at most [`Joiner::FORGET_GROUP`] (32 at the default 65,536). Forgetting
    /// them together is cheaper ([`Joiner::forget_group`]) and frees room for as many
    /// newcomers; retained exchanges are forgotten at most that many exchanges early.
    fn forget_group_len(&self) -> usize {
        (self.config.max_entries / 2048).clamp(1, Self::FORGET_GROUP)
    }

    /// Forgets the `n` oldest retained exchanges; returns how many were taken off the queue.
    fn forget_oldest_retained(&mut self, n: usize) -> usize {
        let mut group = std::mem::take(&mut self.group);
        group.clear();
        group.extend(
            self.retained
                .drain(..n.min(self.retained.len()))
                .map(|(_, s)| s),
        );
        self.forget_group(&group);
        let taken = group.len();
        self.group = group;
        taken
    }

    /// [`Joiner::forget`] of each of `slots`, after reading what forgetting each will read.
    ///
    /// The oldest retained exchanges were last touched seconds ago: forgetting one reads its
    /// entry, the index buckets of its wire key and of each of its ids, and its packed block
    /// (freeing it writes into it), nearly all of them cache misses, and each waits for the
    /// one before (the bucket for the entry, the next step for the branch). Read here first —
    /// every entry, then every bucket and block, loads that depend on nothing else — the misses
    /// of a group overlap; the forgetting that follows finds them cached.
    fn forget_group(&mut self, slots: &[u64]) {
        let mut seen = 0u64;
        for slot in slots {
            if let Some(e) = self.entries.get(slot) {
                seen ^= e.span.0;
            }
        }
        for slot in slots {
            if let Some(e) = self.entries.get(slot) {
                if let Some(k) = &e.key {
                    seen ^= self.wire.first_bucket(hash(k));
                }
                for h in e.id_hashes.all().unwrap_or_default() {
                    seen ^= self.ids.first_bucket(*h);
                }
                seen ^= e.rec.touch();
            }
        }
        std::hint::black_box(seen);
        for slot in slots {
            self.forget(*slot);
        }
    }

    /// Exchanges whose window has closed by `now`: export and count each once.
    pub fn expire(&mut self, now: Instant) -> Vec<Arc<CorrelatedSession>> {
        let mut ready = Vec::new();
        self.expire_at_most(now, usize::MAX, &mut ready);
        ready
    }

    /// Makes every open exchange ready at once (shutdown).
    pub fn drain(&mut self, now: Instant) -> Vec<Arc<CorrelatedSession>> {
        let mut ready = Vec::new();
        while let Some((_, slot)) = self.open.pop_front() {
            if let Some(rec) = self.make_ready(slot, now) {
                ready.push(rec);
            }
        }
        ready
    }

    /// Lists `slot` in the store's order unless it is there already (then it keeps its place:
    /// the REST API shows the exchange updated in place); returns how many exchanges left the
    /// store to make room.
    fn store_upsert(&mut self, slot: u64) -> usize {
        if self.store.capacity == 0 {
            return 0;
        }
        match self.entries.get(&slot) {
            Some(e) if e.stored.is_none() => {}
            _ => return 0,
        }
        let mut evicted = 0;
        while self.store.order.len() >= self.store.capacity && self.unstore_oldest() {
            evicted += 1;
        }
        let n = self.store.next;
        self.store.next += 1;
        self.store.order.push_back(slot);
        if let Some(e) = self.entries.get_mut(&slot) {
            e.stored = Some(n);
        }
        self.store.evicted += evicted as u64;
        evicted
    }

    /// Takes the oldest exchange out of the store's order (and out of memory unless the join
    /// still holds it); false when the store is empty.
    fn unstore_oldest(&mut self) -> bool {
        let Some(old) = self.store.order.pop_front() else {
            return false;
        };
        if let Some(e) = self.entries.get_mut(&old) {
            e.stored = None;
            if !e.joined {
                self.remove(old);
            } else if e.ready {
                e.rec.pack(e.arrival.take());
            }
        }
        true
    }

    /// Empties the store (not counted as evictions); the join keeps the exchanges it holds.
    /// Returns how many exchanges the store listed.
    pub fn store_clear(&mut self) -> usize {
        let mut cleared = 0;
        while self.unstore_oldest() {
            cleared += 1;
        }
        cleared
    }

    /// Stores `rec` for the REST API only (the join does not see it); it is found by its id
    /// and the ids of the sessions merged into it, the newest record of an id winning. Returns
    /// how many exchanges left the store to make room.
    pub fn store_insert(&mut self, rec: Arc<CorrelatedSession>) -> usize {
        let slot = self.entries.vacant();
        let entries = &self.entries;
        let mut id_hashes = IdHashes::default();
        for id in ids_of(&rec) {
            let h = hash(id);
            self.ids.insert(h, slot, |s| {
                entries.get(&s).is_some_and(|e| e.rec.has_id(id))
            });
            id_hashes.push(h);
        }
        self.entries.insert(
            slot,
            Entry {
                rec: Held::Live(rec),
                client: None,
                span: (0, 0),
                key: None,
                ready: true,
                joined: false,
                stored: None,
                views: 0,
                arrival: None,
                id_hashes,
            },
        );
        let evicted = self.store_upsert(slot);
        if self.entries.get(&slot).is_some_and(|e| e.stored.is_none()) {
            // No store to keep it.
            self.remove(slot);
        }
        evicted
    }

    /// The stored exchange with this id (the newest, if several had it).
    pub fn store_get(&self, id: &str) -> Option<Arc<CorrelatedSession>> {
        let slot = self.slot_of(id)?;
        self.entries
            .get(&slot)
            .filter(|e| e.stored.is_some())
            .map(|e| e.rec.shared())
    }

    /// Stored exchanges, newest first.
    pub fn stored(&self) -> impl Iterator<Item = Arc<CorrelatedSession>> + '_ {
        self.store
            .order
            .iter()
            .rev()
            .filter_map(|slot| self.entries.get(slot).map(|e| e.rec.shared()))
    }

    /// Stored exchanges with their arrival numbers, newest first, from just below arrival
    /// number `before` (all when `None`). Arrival numbers never change and are consecutive
    /// in the store's order, so a page that ends at one goes on from it however many
    /// exchanges arrived meanwhile.
    pub fn stored_before(
        &self,
        before: Option<u64>,
    ) -> impl Iterator<Item = (u64, Arc<CorrelatedSession>)> + '_ {
        let len = self.store.order.len();
        let first = self.store.next.saturating_sub(len as u64);
        let end = before.map_or(len, |b| {
            usize::try_from(b.saturating_sub(first)).map_or(len, |n| n.min(len))
        });
        self.store
            .order
            .range(..end)
            .rev()
            .zip((first..first + end as u64).rev())
            .filter_map(|(slot, n)| self.entries.get(slot).map(|e| (n, e.rec.shared())))
    }

    /// Exchanges the store lists now.
    pub fn store_len(&self) -> usize {
        self.store.order.len()
    }

    /// Exchanges evicted from the full store since the start.
    pub fn store_evicted(&self) -> u64 {
        self.store.evicted
    }

    /// The store's capacity (0: no store).
    pub fn store_capacity(&self) -> usize {
        self.store.capacity
    }
}
