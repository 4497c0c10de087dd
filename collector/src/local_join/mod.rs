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
//! the hold time, whichever comes first), then sent, merged or not. Sessions without a wire key
//! (datagrams, sockets whose sequence number could not be read) pass straight through, as do the
//! incomplete sessions of ended flows: the correlator's time join handles them.

use std::time::{Duration, Instant};

use clovisor_proto::join::key::{wire_key, ClientAddr, WireKey};
use clovisor_proto::join::merge;
use clovisor_proto::session::v1::Session;
use rustc_hash::FxHashMap;

/// How long a session waits at most for the other views of its exchange, by default: the
/// probe's ring buffers are drained every 10 ms.
pub const DEFAULT_HOLD: Duration = Duration::from_millis(30);

/// One probe stream's held sessions.
#[derive(Debug)]
pub struct LocalJoin {
    hold: Duration,
    /// Sessions of the last batch, waiting for the next one (`None` once merged into a later
    /// view).
    held: Vec<Option<Session>>,
    /// `held` by wire key.
    index: FxHashMap<WireKey, usize>,
    /// The batch being taken, and its index: kept between batches only for their capacity.
    taking: Vec<Option<Session>>,
    taking_index: FxHashMap<WireKey, usize>,
    /// When the held sessions must be sent even without another batch.
    deadline: Option<Instant>,
}

/// What one [`LocalJoin::offer`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Merged {
    /// Views merged into another view of their exchange.
    pub views: u64,
}

impl LocalJoin {
    /// A local join holding sessions up to `hold`; a zero hold merges within a batch only.
    pub fn new(hold: Duration) -> Self {
        Self {
            hold,
            held: Vec::new(),
            index: FxHashMap::default(),
            taking: Vec::new(),
            taking_index: FxHashMap::default(),
            deadline: None,
        }
    }

    /// Whether sessions are held.
    pub fn is_holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// When the held sessions are due, if any are held.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Takes one batch's sessions at `now`: merges each into a held view of its exchange or an
    /// earlier one of the same batch where it fits; puts into `out` the sessions held from the
    /// previous batch, those without a wire key, and — with a zero hold — all the rest.
    pub fn offer(
        &mut self,
        sessions: Vec<Session>,
        now: Instant,
        out: &mut Vec<Session>,
    ) -> Merged {
        let mut merged = Merged::default();
        for s in sessions {
            let Some(key) = key_of(&s) else {
                out.push(s);
                continue;
            };
            let held = self.index.get(&key).and_then(|&i| self.held.get_mut(i));
            let taking = self
                .taking_index
                .get(&key)
                .and_then(|&i| self.taking.get_mut(i));
            let into = [held, taking]
                .into_iter()
                .flatten()
                .filter_map(Option::as_mut)
                .find(|into| merge::fits(into, &s));
            match into {
                Some(into) => {
                    merge_into(into, s);
                    merged.views += 1;
                }
                None => {
                    self.taking_index.entry(key).or_insert(self.taking.len());
                    self.taking.push(Some(s));
                }
            }
        }
        out.extend(self.held.drain(..).flatten());
        self.index.clear();
        if self.hold.is_zero() {
            out.extend(self.taking.drain(..).flatten());
            self.taking_index.clear();
        } else {
            std::mem::swap(&mut self.held, &mut self.taking);
            std::mem::swap(&mut self.index, &mut self.taking_index);
        }
        self.deadline = (!self.held.is_empty()).then(|| now + self.hold);
        merged
    }

    /// Puts every held session into `out`.
    pub fn flush(&mut self, out: &mut Vec<Session>) {
        out.extend(self.held.drain(..).flatten());
        self.index.clear();
        self.deadline = None;
    }
}

/// The wire key of a session, if it has one.
fn key_of(s: &Session) -> Option<WireKey> {
    let client = ClientAddr::of(s)?;
    wire_key(s, client)
}

/// Merges `add` into `into` (which [`merge::fits`] allowed), remembering `add`'s ids.
fn merge_into(into: &mut Session, mut add: Session) {
    let extra = std::mem::take(&mut add.merged_ids);
    let id = merge::merge(into, add);
    into.merged_ids.push(id);
    into.merged_ids.extend(extra);
}

#[cfg(test)]
mod tests;
