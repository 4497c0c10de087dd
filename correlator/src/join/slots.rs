//! The join's indexes by hash: every id of every exchange held (its own and those of the
//! sessions merged into it) and every wire key, each to the exchange's slot.
//!
//! Neither the ids nor the keys are copied into an index: each exchange holds its own already,
//! so an index keeps only `(hash, slot)` — 16 bytes a bucket, where a wire key's would be 48 —
//! and asks the caller whether a slot's exchange holds what is looked for. Taking an exchange
//! out needs only its hashes and its slot, which its entry keeps ([`IdHashes`]): forgetting the
//! oldest retained exchange, once for every exchange opened when the join is full, then reads
//! neither its ids nor its key, only the index buckets (cache misses at these table sizes
//! either way).

use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

/// Hash → slot, without copies of what is hashed; see the module documentation.
#[derive(Debug, Default)]
pub(super) struct SlotIndex {
    table: HashTable<(u64, u64)>,
}

/// The hash an index files `value` under (a session id as `&str`, a wire key).
pub(super) fn hash<T: Hash + ?Sized>(value: &T) -> u64 {
    FxBuildHasher.hash_one(value)
}

impl SlotIndex {
    /// An empty index with room for `n` entries.
    pub(super) fn with_capacity(n: usize) -> Self {
        Self {
            table: HashTable::with_capacity(n),
        }
    }

    /// The slot indexed under hash `h` whose exchange `holds(slot)` what is looked for.
    pub(super) fn get(&self, h: u64, holds: impl Fn(u64) -> bool) -> Option<u64> {
        self.table
            .find(h, |&(eh, slot)| eh == h && holds(slot))
            .map(|&(_, slot)| slot)
    }

    /// Indexes `slot` under `h`, where no slot is indexed for the same value yet (the caller
    /// checked).
    pub(super) fn insert_new(&mut self, h: u64, slot: u64) {
        self.table.insert_unique(h, (h, slot), |&(eh, _)| eh);
    }

    /// Indexes `slot` under `h`, in place of the slot whose exchange `holds` the same value
    /// if any.
    pub(super) fn insert(&mut self, h: u64, slot: u64, holds: impl Fn(u64) -> bool) {
        match self.table.find_mut(h, |&(eh, s)| eh == h && holds(s)) {
            Some(entry) => entry.1 = slot,
            None => self.insert_new(h, slot),
        }
    }

    /// Takes `slot` out from under `h` if it is indexed there (a value indexed at a newer slot
    /// since stays).
    pub(super) fn remove(&mut self, h: u64, slot: u64) {
        if let Ok(entry) = self.table.find_entry(h, |&(eh, s)| eh == h && s == slot) {
            entry.remove();
        }
    }

    /// Entries indexed.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }
}

/// The hashes an exchange's ids are indexed under, kept in its entry so that taking it out of
/// the index does not read its ids: the first [`IdHashes::INLINE`] (an exchange of one or two
/// views has as many ids); beyond, its ids are read again when it goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct IdHashes {
    inline: [u64; IdHashes::INLINE],
    /// Ids indexed, counting those beyond the inline ones.
    len: usize,
}

impl IdHashes {
    const INLINE: usize = 2;

    /// Notes one more id, indexed under `h`.
    pub(super) fn push(&mut self, h: u64) {
        if let Some(slot) = self.inline.get_mut(self.len) {
            *slot = h;
        }
        self.len += 1;
    }

    /// All the hashes, when they fit inline; `None` when the ids must be read again.
    pub(super) fn all(&self) -> Option<&[u64]> {
        self.inline.get(..self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_found_replaced_and_removed_by_slot() {
        // Slot → the ids its exchange holds.
        let held: Vec<Vec<&str>> = vec![vec!["a", "b"], vec!["c"], vec!["a"]];
        let holds = |id: &'static str| {
            let held = held.clone();
            move |slot: u64| held.get(slot as usize).is_some_and(|ids| ids.contains(&id))
        };
        let mut index = SlotIndex::with_capacity(4);
        index.insert_new(hash("a"), 0);
        index.insert_new(hash("b"), 0);
        index.insert_new(hash("c"), 1);
        assert_eq!(index.get(hash("a"), holds("a")), Some(0));
        assert_eq!(index.get(hash("c"), holds("c")), Some(1));
        assert_eq!(index.get(hash("d"), holds("d")), None);
        // A newer exchange (slot 2) with id "a" takes it over.
        index.insert(hash("a"), 2, holds("a"));
        assert_eq!(index.get(hash("a"), holds("a")), Some(2));
        assert_eq!(index.len(), 3);
        // Slot 0 going removes only what is still indexed at slot 0.
        index.remove(hash("a"), 0);
        index.remove(hash("b"), 0);
        assert_eq!(index.get(hash("a"), holds("a")), Some(2));
        assert_eq!(index.get(hash("b"), holds("b")), None);
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn an_index_entry_needs_the_exchange_to_hold_the_value() {
        let mut index = SlotIndex::default();
        index.insert_new(hash("x"), 7);
        // The slot's exchange no longer holds "x" (e.g. the slot was reused): not found.
        assert_eq!(index.get(hash("x"), |_| false), None);
        assert_eq!(index.get(hash("x"), |slot| slot == 7), Some(7));
    }

    #[test]
    fn id_hashes_kept_inline_up_to_two_then_read_again() {
        let mut h = IdHashes::default();
        assert_eq!(h.all(), Some(&[][..]));
        h.push(1);
        h.push(2);
        assert_eq!(h.all(), Some(&[1, 2][..]));
        h.push(3);
        assert_eq!(h.all(), None, "a third id: the ids are read again");
    }
}
