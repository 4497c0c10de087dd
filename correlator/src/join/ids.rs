//! The join's index of session ids: every id of every exchange held (its own and those of the
//! sessions merged into it) to the exchange's slot.
//!
//! The ids themselves are not copied into the index: each exchange holds its ids already, so
//! the index keeps only `(hash, slot)` and asks the caller whether a slot's exchange holds the
//! id looked for. Each id indexed would otherwise be a string allocated when the exchange
//! opens and freed when it is forgotten, for every exchange.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

/// Session id → slot, without copies of the ids; see the module documentation.
#[derive(Debug, Default)]
pub(super) struct IdIndex {
    table: HashTable<(u64, u64)>,
}

fn hash(id: &str) -> u64 {
    FxBuildHasher.hash_one(id)
}

impl IdIndex {
    /// An empty index with room for `n` ids.
    pub(super) fn with_capacity(n: usize) -> Self {
        Self {
            table: HashTable::with_capacity(n),
        }
    }

    /// The slot indexed under `id`; `holds(slot)` says whether the slot's exchange has that id.
    pub(super) fn get(&self, id: &str, holds: impl Fn(u64) -> bool) -> Option<u64> {
        let h = hash(id);
        self.table
            .find(h, |&(eh, slot)| eh == h && holds(slot))
            .map(|&(_, slot)| slot)
    }

    /// Indexes `id` at `slot`, where no slot is indexed under `id` yet (the join checked: a
    /// session with an id it holds is a duplicate).
    pub(super) fn insert_new(&mut self, id: &str, slot: u64) {
        let h = hash(id);
        self.table.insert_unique(h, (h, slot), |&(eh, _)| eh);
    }

    /// Indexes `id` at `slot`, in place of the slot it was indexed at if any (`holds(slot)`
    /// says whether a slot's exchange has that id).
    pub(super) fn insert(&mut self, id: &str, slot: u64, holds: impl Fn(u64) -> bool) {
        let h = hash(id);
        match self.table.find_mut(h, |&(eh, s)| eh == h && holds(s)) {
            Some(entry) => entry.1 = slot,
            None => {
                self.table.insert_unique(h, (h, slot), |&(eh, _)| eh);
            }
        }
    }

    /// Takes `id` out of the index if it is indexed at `slot` (an id indexed at a newer slot
    /// since stays). Called for every id of the slot's exchange as it goes.
    pub(super) fn remove(&mut self, id: &str, slot: u64) {
        let h = hash(id);
        if let Ok(entry) = self.table.find_entry(h, |&(eh, s)| eh == h && s == slot) {
            entry.remove();
        }
    }

    /// Ids indexed.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.table.len()
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
        let mut index = IdIndex::with_capacity(4);
        index.insert_new("a", 0);
        index.insert_new("b", 0);
        index.insert_new("c", 1);
        assert_eq!(index.get("a", holds("a")), Some(0));
        assert_eq!(index.get("c", holds("c")), Some(1));
        assert_eq!(index.get("d", holds("d")), None);
        // A newer exchange (slot 2) with id "a" takes it over.
        index.insert("a", 2, holds("a"));
        assert_eq!(index.get("a", holds("a")), Some(2));
        assert_eq!(index.len(), 3);
        // Slot 0 going removes only what is still indexed at slot 0.
        index.remove("a", 0);
        index.remove("b", 0);
        assert_eq!(index.get("a", holds("a")), Some(2));
        assert_eq!(index.get("b", holds("b")), None);
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn an_index_entry_needs_the_exchange_to_hold_the_id() {
        let mut index = IdIndex::default();
        index.insert_new("x", 7);
        // The slot's exchange no longer holds "x" (e.g. the slot was reused): not found.
        assert_eq!(index.get("x", |_| false), None);
        assert_eq!(index.get("x", |slot| slot == 7), Some(7));
    }
}
