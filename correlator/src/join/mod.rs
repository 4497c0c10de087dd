//! The join: what every observation point saw of one exchange becomes one session.
//!
//! Each session from a collector is one point's view of one exchange. The [`Joiner`] finds the
//! exchange it belongs to by [`key::WireKey`] (client address and port, TCP sequence number of
//! the request's first byte, pipeline position) or — for points without sequence numbers — by
//! client address and time overlap when exactly one candidate fits, and merges it
//! ([`merge::merge`]). Nothing is merged when any decoded field disagrees
//! ([`merge::compatible`]) or when the same point would appear twice in one exchange.
//!
//! An exchange stays *open* for the join window after its first observation; then it is
//! *ready*: its span is exported and its RED metrics counted, once. It is remembered for the
//! retention time afterwards so a late observation is still appended to the stored session
//! (the REST API shows it; the span, already sent, does not). State is bounded: beyond
//! `max_entries` the oldest retained exchange is forgotten, or, when all are open, the oldest
//! open one is made ready early — both counted.

pub mod key;
pub mod merge;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clovisor_proto::session::v1::Session;

use crate::record::{ContextIssue, CorrelatedSession};
use key::{interval, overlaps, wire_key, ClientAddr, WireKey};

/// How the join holds exchanges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinConfig {
    /// How long an exchange waits for more observations before its span is exported.
    pub window: Duration,
    /// How long after export a late observation is still appended to the stored session.
    pub retention: Duration,
    /// Exchanges held at most (open and retained).
    pub max_entries: usize,
}

impl Default for JoinConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(1000),
            retention: Duration::from_secs(30),
            max_entries: 65_536,
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
}

#[derive(Debug)]
struct Entry {
    /// Shared with the store and the exporter: only a change copies it (`Arc::make_mut`), and
    /// only while an older version is still held elsewhere.
    rec: Arc<CorrelatedSession>,
    client: Option<ClientAddr>,
    keys: Vec<WireKey>,
    ids: Vec<String>,
    ready: bool,
}

/// The join state. Not thread-safe by itself; the ingest service holds it behind a mutex.
#[derive(Debug)]
pub struct Joiner {
    config: JoinConfig,
    entries: HashMap<u64, Entry>,
    next: u64,
    wire: HashMap<WireKey, u64>,
    /// Every held exchange by client address (for sequence-less views).
    clients: HashMap<ClientAddr, BTreeSet<u64>>,
    /// Held exchanges no sequence-carrying point has seen yet, by client address: the only
    /// ones a keyed view with an unknown key can join. Kept apart so that such a view — the
    /// first view of nearly every exchange — does not scan a busy keep-alive client's history.
    unkeyed: HashMap<ClientAddr, BTreeSet<u64>>,
    ids: HashMap<String, u64>,
    /// Open exchanges by the end of their window; the window is fixed, so arrival order is
    /// deadline order.
    open: VecDeque<(Instant, u64)>,
    /// Ready exchanges by the end of their retention.
    retained: VecDeque<(Instant, u64)>,
}

/// Takes `slot` out of `client`'s set in `index`, dropping the set once empty.
fn remove_slot(index: &mut HashMap<ClientAddr, BTreeSet<u64>>, client: ClientAddr, slot: u64) {
    if let Some(v) = index.get_mut(&client) {
        v.remove(&slot);
        if v.is_empty() {
            index.remove(&client);
        }
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
            entries: HashMap::new(),
            next: 0,
            wire: HashMap::new(),
            clients: HashMap::new(),
            unkeyed: HashMap::new(),
            ids: HashMap::new(),
            open: VecDeque::new(),
            retained: VecDeque::new(),
        }
    }

    /// Exchanges still waiting for their window to close.
    pub fn open_len(&self) -> usize {
        self.open.len()
    }

    /// Exchanges held, open or retained.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The exchange a session id was merged into, if it is still held.
    pub fn get(&self, id: &str) -> Option<Arc<CorrelatedSession>> {
        let slot = self.ids.get(id)?;
        self.entries.get(slot).map(|e| Arc::clone(&e.rec))
    }

    /// Takes one point's view of one exchange at `now`.
    pub fn offer(&mut self, session: Session, now: Instant) -> Offered {
        let mut ready = Vec::new();
        let mut evictions = Vec::new();
        self.expire_into(now, &mut ready);

        if let Some(slot) = self.ids.get(&session.id).copied() {
            if let Some(e) = self.entries.get(&slot) {
                return Offered {
                    outcome: Outcome::Duplicate,
                    record: Arc::clone(&e.rec),
                    issues: Vec::new(),
                    ready,
                    evictions,
                };
            }
        }

        let (rec, issues) = CorrelatedSession::new(session);
        let client = ClientAddr::of(&rec.session);
        let key = client.and_then(|c| wire_key(&rec.session, c));
        let found = match (key, client) {
            (Some(k), _) => match self.wire.get(&k) {
                Some(slot) => Found::One(*slot),
                // A sequence-less exchange (socket only so far) may be this one.
                None => self.find_by_time(client, &rec.session, true),
            },
            (None, Some(_)) => self.find_by_time(client, &rec.session, false),
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
                    return Offered {
                        outcome,
                        record,
                        issues,
                        ready,
                        evictions,
                    }
                }
                Err(back) => {
                    rec = back;
                    refused = Some(Outcome::Conflict);
                }
            }
        }

        self.make_room(now, &mut ready, &mut evictions);
        let slot = self.next;
        self.next += 1;
        let mut rec = *rec;
        let mut ids = Vec::new();
        if !rec.session.id.is_empty() {
            ids.push(rec.session.id.clone());
            self.ids.insert(rec.session.id.clone(), slot);
        }
        rec.constituents = ids.clone();
        let mut entry = Entry {
            client,
            keys: Vec::new(),
            ids,
            ready: false,
            rec: Arc::new(rec),
        };
        if let Some(k) = key {
            // A conflicting key stays with the exchange that had it first.
            if let std::collections::hash_map::Entry::Vacant(v) = self.wire.entry(k) {
                v.insert(slot);
                entry.keys.push(k);
            }
        }
        if let Some(c) = client {
            self.clients.entry(c).or_default().insert(slot);
            if !entry.rec.session.observations.iter().any(key::has_tcp_seq) {
                self.unkeyed.entry(c).or_default().insert(slot);
            }
        }
        let record = Arc::clone(&entry.rec);
        self.entries.insert(slot, entry);
        self.open.push_back((now + self.config.window, slot));
        // A zero window makes it ready at once.
        self.expire_into(now, &mut ready);
        Offered {
            outcome: refused.unwrap_or(Outcome::Opened),
            record,
            issues,
            ready,
            evictions,
        }
    }

    /// Exchanges of `client` overlapping `session` in time and agreeing with it; with
    /// `unkeyed_only`, only those no sequence-carrying point has seen yet.
    fn find_by_time(
        &self,
        client: Option<ClientAddr>,
        session: &Session,
        unkeyed_only: bool,
    ) -> Found {
        let index = if unkeyed_only {
            &self.unkeyed
        } else {
            &self.clients
        };
        let Some(slots) = client.and_then(|c| index.get(&c)) else {
            return Found::None;
        };
        let Some(span) = session.observations.first().map(interval) else {
            return Found::None;
        };
        let mut found = None;
        for slot in slots {
            let Some(e) = self.entries.get(slot) else {
                continue;
            };
            if unkeyed_only && e.rec.session.observations.iter().any(key::has_tcp_seq) {
                continue;
            }
            let overlapping = e
                .rec
                .session
                .observations
                .iter()
                .any(|o| overlaps(interval(o), span));
            let fits = overlapping
                && merge::compatible(&e.rec.session, session)
                && !session
                    .observations
                    .iter()
                    .any(|o| merge::has_point(&e.rec.session, o));
            if fits {
                if found.is_some() {
                    return Found::Many;
                }
                found = Some(*slot);
            }
        }
        found.map_or(Found::None, Found::One)
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
        let fits = merge::compatible(&e.rec.session, &rec.session)
            && !rec
                .session
                .observations
                .iter()
                .any(|o| merge::has_point(&e.rec.session, o));
        if !fits {
            return Err(rec);
        }
        let id = rec.session.id.clone();
        let gains_seq = rec.session.observations.iter().any(key::has_tcp_seq);
        let merged = Arc::make_mut(&mut e.rec);
        merge::merge(&mut merged.session, rec.session);
        if gains_seq {
            if let Some(c) = e.client {
                remove_slot(&mut self.unkeyed, c, slot);
            }
        }
        if !e.ready {
            // A context first seen by this point (e.g. a socket's plaintext) places the span.
            merged.adopt_wire_context();
        }
        if !id.is_empty() {
            e.ids.push(id.clone());
            self.ids.insert(id, slot);
        }
        if let Some(k) = key {
            if let std::collections::hash_map::Entry::Vacant(v) = self.wire.entry(k) {
                v.insert(slot);
                e.keys.push(k);
            }
        }
        merged.constituents = e.ids.clone();
        let outcome = if e.ready {
            Outcome::Late
        } else {
            Outcome::Joined
        };
        Ok((outcome, Arc::clone(&e.rec)))
    }

    fn make_room(
        &mut self,
        now: Instant,
        ready: &mut Vec<Arc<CorrelatedSession>>,
        evictions: &mut Vec<Eviction>,
    ) {
        while self.entries.len() >= self.config.max_entries {
            if let Some((_, slot)) = self.retained.pop_front() {
                self.forget(slot);
                evictions.push(Eviction::RetainedEarly);
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
        e.ready = true;
        self.retained.push_back((now + self.config.retention, slot));
        Some(Arc::clone(&e.rec))
    }

    fn forget(&mut self, slot: u64) {
        let Some(e) = self.entries.remove(&slot) else {
            return;
        };
        for k in &e.keys {
            if self.wire.get(k) == Some(&slot) {
                self.wire.remove(k);
            }
        }
        for id in &e.ids {
            if self.ids.get(id) == Some(&slot) {
                self.ids.remove(id);
            }
        }
        if let Some(c) = e.client {
            remove_slot(&mut self.clients, c, slot);
            remove_slot(&mut self.unkeyed, c, slot);
        }
    }

    fn expire_into(&mut self, now: Instant, ready: &mut Vec<Arc<CorrelatedSession>>) {
        while self.open.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, slot)) = self.open.pop_front() {
                if let Some(rec) = self.make_ready(slot, now) {
                    ready.push(rec);
                }
            }
        }
        while self.retained.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, slot)) = self.retained.pop_front() {
                self.forget(slot);
            }
        }
    }

    /// Exchanges whose window has closed by `now`: export and count each once.
    pub fn expire(&mut self, now: Instant) -> Vec<Arc<CorrelatedSession>> {
        let mut ready = Vec::new();
        self.expire_into(now, &mut ready);
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
}
