//! The collector's local join: the views one probe sent of one exchange leave the collector as
//! one session.
//!
//! A probe sees an exchange at every point it traces on its path: the pod's veth and the
//! application's socket on the server's node, and on a single host (all-in-one tracing both
//! pods) both veths and both sockets. Each point's records make a session of its own in the flow
//! table; sent as they are, the correlator would receive, decode, index and merge two to four
//! sessions per exchange. Here the sessions a probe's consecutive batches make are merged by the
//! correlator's own rules ([`clovisor_proto::join`]: the same wire key — client address and port,
//! request sequence number, pipeline position — every decoded field compatible, no point twice)
//! before they are forwarded; the correlator still joins what other probes saw, and knows the
//! exchange by every merged view's id (`Session.merged_ids`).
//!
//! The points' records reach the collector through different ring buffers, so the views of one
//! exchange may be a batch apart: a keyed session is held until the probe's next batch (or for
//! the hold time, whichever comes first), then sent, merged or not — unless it is complete
//! before: every side of it this probe traces seen at both the pod's veth and its socket (a
//! side is traced when it was seen, or when its pod's metadata names a veth of this probe). A
//! complete exchange leaves as its last view joins it (or as it comes, when one view holds it
//! all: a socket's view carrying its pod veth's counters), while its session is still in the
//! cache.
//! Sessions without a wire key (datagrams, sockets whose sequence number could not be read) pass
//! straight through, as do the incomplete sessions of ended flows: the correlator's time join
//! handles them.
//!
//! A counters-only view (a covered pod veth's timings and counters, no payload:
//! [`merge::counters_only`]) is merged into the decoded view of its exchange, and adds no id to
//! it (the exchange is known by the decoded view's). One that finds none here leaves alone and
//! is counted ([`Merged::unmatched_counters`]); the correlator's join may still find its view
//! (one that came later than the hold) and does not export an exchange nothing decoded. The
//! collector's service has the flow table keep these views apart ([`CounterView`]: an
//! observation, counters, times and the wire key, not a session) and offers them beside the
//! batch's sessions ([`LocalJoin::offer_with_views`]): most are added to their decoded view
//! without ever being made a session, which with three such views to each decoded one on a
//! single host was a tenth of all-in-one's time; one that finds no view to join is made its
//! session then and taken as any other, so what leaves is the same either way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clovisor_proto::common::v1::{PointKind, Side};
use clovisor_proto::join::key::{wire_key, ClientAddr, WireKey};
use clovisor_proto::join::merge;
use clovisor_proto::session::v1::Session;
use rustc_hash::FxHashMap;

use crate::flows::{Collected, CounterView, EndpointMeta};

/// How long a session waits at most for the other views of its exchange, by default: the
/// probe's ring buffers are drained every 10 ms.
pub const DEFAULT_HOLD: Duration = Duration::from_millis(30);

/// One probe stream's held sessions.
///
/// Sessions are never moved to be held or handed on: a batch's vector is kept as it came
/// (sessions merged away or already handed on are marked, not removed) and what leaves is lent
/// to the caller (`emit`), which redacts, caps and encodes it. A session is about 800 bytes;
/// moving each into a holding vector, out of it and into an output vector was half of this
/// join's cost.
#[derive(Debug)]
pub struct LocalJoin {
    hold: Duration,
    /// Sessions of the last batch, waiting for the next one.
    held: Batch,
    /// `held` by wire key.
    index: FxHashMap<WireKey, usize>,
    /// The batch being taken, and its index: kept between batches only for their capacity.
    taking_index: FxHashMap<WireKey, usize>,
    /// When the held sessions must be sent even without another batch.
    deadline: Option<Instant>,
    /// The vector of the last batch let go of, emptied, for the next batch's sessions
    /// ([`LocalJoin::take_spare`]).
    spare: Vec<Collected>,
}

/// A batch's sessions as they came, and which are still waiting (neither merged into another
/// view nor handed on).
#[derive(Debug, Default)]
struct Batch {
    sessions: Vec<Collected>,
    waiting: Vec<bool>,
}

impl Batch {
    fn new(sessions: Vec<Collected>) -> Self {
        let waiting = vec![true; sessions.len()];
        Self { sessions, waiting }
    }

    fn is_waiting(&self, i: usize) -> bool {
        self.waiting.get(i).copied().unwrap_or(false)
    }

    /// Lends every waiting session to `emit`, then lets go of all; returns how many of them
    /// were counters-only views that found no decoded view here.
    fn hand_on(&mut self, emit: &mut impl FnMut(&mut Collected)) -> u64 {
        let mut unmatched = 0;
        for (s, waiting) in self.sessions.iter_mut().zip(&self.waiting) {
            if *waiting {
                unmatched += u64::from(merge::counters_only(&s.session));
                leave(s, emit);
            }
        }
        self.sessions.clear();
        self.waiting.clear();
        unmatched
    }

    /// Adds a session, waiting; returns its place.
    fn push(&mut self, session: Collected) -> usize {
        self.sessions.push(session);
        self.waiting.push(true);
        self.sessions.len() - 1
    }

    fn any_waiting(&self) -> bool {
        self.waiting.iter().any(|w| *w)
    }
}

/// What one [`LocalJoin::offer`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Merged {
    /// Views merged into another view of their exchange.
    pub views: u64,
    /// Counters-only views ([`merge::counters_only`]) handed on without a decoded view: the
    /// correlator's join may still find theirs.
    pub unmatched_counters: u64,
}

impl LocalJoin {
    /// A local join holding sessions up to `hold`; a zero hold merges within a batch only.
    pub fn new(hold: Duration) -> Self {
        Self {
            hold,
            held: Batch::default(),
            index: FxHashMap::default(),
            taking_index: FxHashMap::default(),
            deadline: None,
            spare: Vec::new(),
        }
    }

    /// Sessions a spare vector is kept for at most (about 7 MiB of room): a batch's vector is
    /// sized for its records, and one outsized batch should not pin its room for good.
    pub const SPARE_MAX: usize = 8192;

    /// An empty vector to make the next batch's sessions in: the last one let go of, whose room
    /// was written a batch ago. A fresh one each batch (room for a session per record, hundreds
    /// of kilobytes) came as new pages from the allocator, a page fault for each page written.
    pub fn take_spare(&mut self) -> Vec<Collected> {
        std::mem::take(&mut self.spare)
    }

    /// Keeps `sessions`' room for [`LocalJoin::take_spare`] (they have all been handed on).
    fn keep_spare(&mut self, mut sessions: Vec<Collected>) {
        sessions.clear();
        if sessions.capacity() <= Self::SPARE_MAX && sessions.capacity() >= self.spare.capacity() {
            self.spare = sessions;
        }
    }

    /// Whether sessions are held.
    pub fn is_holding(&self) -> bool {
        self.deadline.is_some()
    }

    /// When the held sessions are due, if any are held.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Takes one batch's sessions at `now`: merges each into a held view of its exchange or an
    /// earlier one of the same batch where it fits; lends to `emit` the sessions without a wire
    /// key and each exchange as it becomes complete ([`complete`]) as they come, then those
    /// held from the previous batch, and — with a zero hold — all the rest.
    pub fn offer(
        &mut self,
        sessions: Vec<Collected>,
        now: Instant,
        emit: impl FnMut(&mut Collected),
    ) -> Merged {
        self.offer_with_views(sessions, Vec::new(), now, emit)
    }

    /// [`LocalJoin::offer`] of a batch whose counters-only views the flow table kept apart
    /// ([`CounterView`]): each is added to a held view or one of the batch's sessions where it
    /// fits, as its session would be, without being made one; one that fits none is made its
    /// session and taken as one.
    pub fn offer_with_views(
        &mut self,
        sessions: Vec<Collected>,
        views: impl IntoIterator<Item = CounterView>,
        now: Instant,
        mut emit: impl FnMut(&mut Collected),
    ) -> Merged {
        let mut merged = Merged::default();
        let mut taking = Batch::new(sessions);
        for i in 0..taking.sessions.len() {
            self.take(&mut taking, i, &mut merged, &mut emit);
        }
        for view in views {
            let at = view.key.and_then(|key| {
                find(
                    (&self.index, &self.held),
                    (&self.taking_index, &taking.sessions, &taking.waiting),
                    key,
                    |into| merge::fits_point(&into.session, &view.view.observation),
                )
            });
            let into = at.and_then(|at| at.get(&mut self.held.sessions, &mut taking.sessions));
            match (at, into) {
                (Some(at), Some(into)) => {
                    merge_view(into, view);
                    merged.views += 1;
                    let waiting = (&mut self.held.waiting[..], &mut taking.waiting[..]);
                    at.leave_if_complete(into, waiting, &mut emit);
                }
                _ => {
                    let i = taking.push(view.into_collected());
                    self.take(&mut taking, i, &mut merged, &mut emit);
                }
            }
        }
        merged.unmatched_counters += self.held.hand_on(&mut emit);
        self.index.clear();
        if self.hold.is_zero() {
            merged.unmatched_counters += taking.hand_on(&mut emit);
            self.taking_index.clear();
            self.keep_spare(taking.sessions);
        } else {
            let done = std::mem::replace(&mut self.held, taking);
            self.keep_spare(done.sessions);
            std::mem::swap(&mut self.index, &mut self.taking_index);
        }
        self.deadline = self.held.any_waiting().then(|| now + self.hold);
        merged
    }

    /// Takes the batch's session `i`: merges it into a held view of its exchange or an earlier
    /// one of the batch where it fits, else indexes it — unless it is [`complete`] already or
    /// has no wire key: then it is lent to `emit` at once.
    fn take(
        &mut self,
        taking: &mut Batch,
        i: usize,
        merged: &mut Merged,
        emit: &mut impl FnMut(&mut Collected),
    ) {
        let (earlier, rest) = taking.sessions.split_at_mut(i);
        let Some(s) = rest.first_mut() else {
            return;
        };
        let Some(key) = key_of(&s.session) else {
            merged.unmatched_counters += u64::from(merge::counters_only(&s.session));
            leave(s, emit);
            taking.waiting[i] = false;
            return;
        };
        let at = find(
            (&self.index, &self.held),
            (&self.taking_index, earlier, &taking.waiting),
            key,
            |into| merge::fits(&into.session, &s.session),
        );
        let into = at.and_then(|at| at.get(&mut self.held.sessions, earlier));
        match (at, into) {
            (Some(at), Some(into)) => {
                merge_into(into, s);
                taking.waiting[i] = false;
                merged.views += 1;
                let waiting = (&mut self.held.waiting[..], &mut taking.waiting[..]);
                at.leave_if_complete(into, waiting, emit);
            }
            // Complete as it came (a socket's view carrying its pod veth's counters): it leaves
            // now, while it is in the cache, rather than a batch later.
            _ if complete_as_it_comes(s) => {
                leave(s, emit);
                taking.waiting[i] = false;
            }
            _ => {
                self.taking_index.entry(key).or_insert(i);
            }
        }
    }

    /// Lends every held session to `emit` and lets go of them; returns how many were
    /// counters-only views that found no decoded view here.
    pub fn flush(&mut self, mut emit: impl FnMut(&mut Collected)) -> u64 {
        let unmatched = self.held.hand_on(&mut emit);
        self.index.clear();
        self.deadline = None;
        unmatched
    }
}

/// Lends `s` to `emit` as it leaves the join, then lets go of it at once — its strings and
/// vectors freed while they are in the cache, for the next views' allocations to take warm —
/// rather than with its batch's vector a batch later, when freeing each of its blocks missed
/// the cache (a batch is some hundreds of sessions: more than a core's cache) and the
/// allocator handed the next batch's views blocks as cold. Its place keeps an empty session
/// until the batch goes; nothing reads it (it is no longer waiting).
fn leave(s: &mut Collected, emit: &mut impl FnMut(&mut Collected)) {
    emit(s);
    drop(std::mem::take(s));
}

/// Where a held or taken view is: its place in the held batch or in the batch being taken.
#[derive(Debug, Clone, Copy)]
enum At {
    Held(usize),
    Taking(usize),
}

impl At {
    fn get<'a>(
        self,
        held: &'a mut [Collected],
        taking: &'a mut [Collected],
    ) -> Option<&'a mut Collected> {
        match self {
            Self::Held(h) => held.get_mut(h),
            Self::Taking(t) => taking.get_mut(t),
        }
    }

    /// Lends `into` (the view at this place, just merged into) to `emit` if it is [`complete`],
    /// and marks it no longer waiting.
    fn leave_if_complete(
        self,
        into: &mut Collected,
        (held_waiting, taking_waiting): (&mut [bool], &mut [bool]),
        emit: &mut impl FnMut(&mut Collected),
    ) {
        if !complete(into) {
            return;
        }
        leave(into, emit);
        let waiting = match self {
            Self::Held(h) => held_waiting.get_mut(h),
            Self::Taking(t) => taking_waiting.get_mut(t),
        };
        if let Some(w) = waiting {
            *w = false;
        }
    }
}

/// Where the view of exchange `key` a view may merge into is: the held one (by the held batch's
/// index), else the taking batch's among `sessions` (by its index; a prefix of the batch where
/// only earlier sessions may be merged into), if still waiting and `fits` it.
fn find(
    (index, held): (&FxHashMap<WireKey, usize>, &Batch),
    (taking_index, sessions, waiting): (&FxHashMap<WireKey, usize>, &[Collected], &[bool]),
    key: WireKey,
    fits: impl Fn(&Collected) -> bool,
) -> Option<At> {
    let held = index
        .get(&key)
        .copied()
        .filter(|&h| held.is_waiting(h))
        .filter(|&h| held.sessions.get(h).is_some_and(&fits))
        .map(At::Held);
    held.or_else(|| {
        taking_index
            .get(&key)
            .copied()
            .filter(|&t| waiting.get(t).copied().unwrap_or(false))
            .filter(|&t| sessions.get(t).is_some_and(&fits))
            .map(At::Taking)
    })
}

/// Whether a decoded view holds every view of its exchange this probe can send, so that it may
/// leave at once instead of waiting for the next batch (cold by then: capping, redacting,
/// encoding and dropping held sessions was a tenth of the collector's time). Every side it
/// saw, and every side whose pod this probe traces (its metadata names the pod's veth), must
/// show both the pod's veth and its socket — what a probe sees of a traced pod when the socket
/// point covers it. Where a side never has both (socket hooks off, a process the socket point
/// does not see), the view waits as before. A view that does leave early and is then followed
/// by one more of its exchange (a node interface's, say) loses nothing: that one leaves alone
/// and the correlator joins it.
fn complete(c: &Collected) -> bool {
    if merge::counters_only(&c.session) {
        return false;
    }
    let traced = |m: &Option<Arc<EndpointMeta>>| {
        m.as_ref()
            .is_some_and(|m| m.ifindex != 0 || !m.interface.is_empty())
    };
    [
        (Side::Client, traced(&c.client_meta)),
        (Side::Server, traced(&c.server_meta)),
    ]
    .into_iter()
    .all(|(side, traced)| {
        let seen = |kind: PointKind| {
            c.session
                .observations
                .iter()
                .any(|o| o.side == side as i32 && o.kind == kind as i32)
        };
        let (veth, socket) = (seen(PointKind::Pod), seen(PointKind::Socket));
        if traced || veth || socket {
            veth && socket
        } else {
            true
        }
    })
}

/// Whether a view that merged nothing here is [`complete`] as it came — a socket's view carrying
/// its pod veth's counters — and places each of its points at a side. A point at no side (a
/// veth whose pod's metadata is not known yet, a node interface) is none of the views
/// [`complete`] counts, so a view of such points alone would look complete: it waits its batch
/// for the views it may merge with, as before.
fn complete_as_it_comes(c: &Collected) -> bool {
    c.session
        .observations
        .iter()
        .all(|o| o.side != Side::Unspecified as i32)
        && complete(c)
}

/// The wire key of a session, if it has one.
fn key_of(s: &Session) -> Option<WireKey> {
    let client = ClientAddr::of(s)?;
    wire_key(s, client)
}

/// Merges `add` into `into` (which [`merge::fits`] allowed), remembering `add`'s ids; `add`'s
/// place in its batch is left holding an empty session until the batch goes. A counters-only
/// view always goes into the decoded one, whichever came first, and adds no id: the view is
/// known to nobody else (it was never sent alone), and the correlator indexes every id it
/// receives. (Re-sent after a probe reconnects, it joins again the same way, or arrives alone
/// and is recognised as part of the exchange by its wire key.) It gives up only what it adds
/// ([`merge::merge_counters`]) and the rest is let go at once: three of the four views of a
/// single host's exchange are counters-only, and moving each session of nearly a kilobyte out of
/// its batch and into the merge cost more than what it adds.
///
/// The ends' metadata beside the sessions follows the ends [`merge::merge`] keeps: the server's
/// from the view that takes it, each name it lacks from the other's.
fn merge_into(into: &mut Collected, add: &mut Collected) {
    if merge::counters_only(&into.session) && !merge::counters_only(&add.session) {
        std::mem::swap(into, add);
    }
    // `into`'s origin is kept, `add`'s let go: what it would have written into `add` is written
    // now — its id, which `into` remembers, and its probe's names unless they are `into`'s.
    let add_counters_only = merge::counters_only(&add.session);
    let same_probe = into.same_probe(add);
    add.write_origin(!add_counters_only, !same_probe);
    into.client_meta = filled(into.client_meta.take(), add.client_meta.take());
    into.server_meta = if merge::takes_server_from(&into.session, &add.session) {
        filled(add.server_meta.take(), into.server_meta.take())
    } else {
        filled(into.server_meta.take(), add.server_meta.take())
    };
    if add_counters_only {
        merge::merge_counters(&mut into.session, &mut add.session);
        // Let go of what is left of it while it is in the cache.
        drop(std::mem::take(&mut add.session));
        return;
    }
    let mut add = std::mem::take(&mut add.session);
    let into = &mut into.session;
    let extra = std::mem::take(&mut add.merged_ids);
    let id = merge::merge(into, add);
    into.merged_ids.push(id);
    into.merged_ids.extend(extra);
}

/// Adds counters-only view `view` to `into` (which [`merge::fits_point`] allowed), as
/// [`merge_into`] adds its session: it adds no id, its probe's names are written into its
/// observation unless they are `into`'s, and the ends' metadata follows the ends kept.
fn merge_view(into: &mut Collected, mut view: CounterView) {
    if !into
        .origin
        .as_ref()
        .is_some_and(|o| o.same_probe(&view.origin))
    {
        view.write_probe_names();
    }
    into.client_meta = filled(into.client_meta.take(), view.client_meta);
    into.server_meta = if view.view.takes_server_from(&into.session) {
        filled(view.server_meta, into.server_meta.take())
    } else {
        filled(into.server_meta.take(), view.server_meta)
    };
    merge::merge_point(&mut into.session, view.view);
    if let Some(wire) = view.wire {
        merge::merge_point(&mut into.session, *wire);
    }
}

/// One end's metadata after a merge: `kept`'s, with each name it lacks from `other`'s (shared
/// as it is when it lacks none, the common case: both views name the same address).
fn filled(
    kept: Option<Arc<EndpointMeta>>,
    other: Option<Arc<EndpointMeta>>,
) -> Option<Arc<EndpointMeta>> {
    match (kept, other) {
        (Some(k), Some(o)) if !Arc::ptr_eq(&k, &o) => {
            let names = k.names().or(o.names());
            let grown = (names != k.names()).then(|| k.with_names(names));
            Some(grown.map_or(k, Arc::new))
        }
        (Some(k), _) => Some(k),
        (None, o) => o,
    }
}

#[cfg(test)]
mod tests;
