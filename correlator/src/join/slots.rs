//! The join's indexes by hash: every id of every exchange held (its own and those of the
//! sessions merged into it) and every wire key, each to the exchange's slot.
//!
//! Neither the ids nor the keys are copied into an index: each exchange holds its own already,
//! so an index keeps only `(hash, slot)` — 16 bytes a bucket, where a wire key's would be 48 —
//! and asks the caller whether a slot's exchange holds what is looked for. Taking an exchange
//! out needs only its hashes and its slot, which its entry keeps ([`IdHashes`]): forgetting the
//! oldest retained exchange, once for every exchange opened when the join is full, then reads
//! neither its ids nor its key, only the index buckets.
//!
//! At the join's sizes (tens of thousands of exchanges, megabytes of index) nearly every
//! look-up, insertion and removal is a cache miss, a few per exchange. The index is therefore
//! one flat array of buckets probed linearly ([`SlotIndex`]): the hash compared is in the bucket,
//! so a probe reads one cache line (four buckets), where a table with its control bytes apart
//! from its buckets (hashbrown's) reads two.

use std::hash::{BuildHasher, Hash};

use rustc_hash::FxBuildHasher;

/// A bucket no slot is indexed in: `slot` is never `u64::MAX` (slots index a vector).
const EMPTY: (u64, u64) = (0, u64::MAX);

/// Hash → slot, without copies of what is hashed; see the module documentation. Open
/// addressing with linear probing, at most half full, removal by shifting the following
/// buckets back (no tombstones: a table that is written to forever never degrades).
#[derive(Debug)]
pub(super) struct SlotIndex {
    buckets: Box<[(u64, u64)]>,
    /// `buckets.len() - 1`; the length is a power of two.
    mask: usize,
    /// log2 of `buckets.len()`.
    bits: u32,
    len: usize,
}

impl Default for SlotIndex {
    fn default() -> Self {
        Self::with_buckets(Self::MIN_BUCKETS)
    }
}

/// The hash an index files `value` under (a session id as `&str`, a wire key).
pub(super) fn hash<T: Hash + ?Sized>(value: &T) -> u64 {
    FxBuildHasher.hash_one(value)
}

impl SlotIndex {
    const MIN_BUCKETS: usize = 16;

    /// An empty index with room for `n` entries.
    pub(super) fn with_capacity(n: usize) -> Self {
        let buckets = n
            .saturating_mul(2)
            .checked_next_power_of_two()
            .unwrap_or(1 << (usize::BITS - 1));
        Self::with_buckets(buckets.max(Self::MIN_BUCKETS))
    }

    fn with_buckets(n: usize) -> Self {
        Self {
            buckets: vec![EMPTY; n].into_boxed_slice(),
            mask: n - 1,
            bits: n.trailing_zeros(),
            len: 0,
        }
    }

    /// The bucket where `h`'s probe starts: the top bits of the hash times the golden ratio
    /// (every bit of `h` moves them).
    fn home(&self, h: u64) -> usize {
        (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - self.bits)) as usize
    }

    /// The first bucket of `h`'s probe, read and returned as it is (its slot, or the empty
    /// slot). A caller about to take several slots out reads each one's first bucket before it
    /// takes any out, so that the cache misses overlap instead of following one another.
    pub(super) fn first_bucket(&self, h: u64) -> u64 {
        self.buckets.get(self.home(h)).map_or(EMPTY.1, |b| b.1)
    }

    /// The slot indexed under hash `h` whose exchange `holds(slot)` what is looked for.
    pub(super) fn get(&self, h: u64, holds: impl Fn(u64) -> bool) -> Option<u64> {
        self.find(h, holds)
            .and_then(|i| self.buckets.get(i))
            .map(|&(_, slot)| slot)
    }

    /// The bucket holding `h` with a slot `matches` accepts.
    fn find(&self, h: u64, matches: impl Fn(u64) -> bool) -> Option<usize> {
        let mut i = self.home(h);
        loop {
            let &(eh, slot) = self.buckets.get(i)?;
            if slot == EMPTY.1 {
                return None;
            }
            if eh == h && matches(slot) {
                return Some(i);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Indexes `slot` under `h`, where no slot is indexed for the same value yet (the caller
    /// checked).
    pub(super) fn insert_new(&mut self, h: u64, slot: u64) {
        debug_assert_ne!(slot, EMPTY.1, "slot u64::MAX is the empty bucket");
        if (self.len + 1) * 2 > self.buckets.len() {
            self.grow();
        }
        let mut i = self.home(h);
        while let Some(b) = self.buckets.get_mut(i) {
            if b.1 == EMPTY.1 {
                *b = (h, slot);
                self.len += 1;
                return;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Indexes `slot` under `h`, in place of the slot whose exchange `holds` the same value
    /// if any.
    pub(super) fn insert(&mut self, h: u64, slot: u64, holds: impl Fn(u64) -> bool) {
        match self.find(h, holds).and_then(|i| self.buckets.get_mut(i)) {
            Some(b) => b.1 = slot,
            None => self.insert_new(h, slot),
        }
    }

    /// Takes `slot` out from under `h` if it is indexed there (a value indexed at a newer slot
    /// since stays).
    pub(super) fn remove(&mut self, h: u64, slot: u64) {
        let Some(mut hole) = self.find(h, |s| s == slot) else {
            return;
        };
        self.len -= 1;
        // Each following bucket up to the next empty one moves into the hole unless its own
        // probe starts after the hole (then it is found where it is without crossing it).
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            let Some(&b) = self.buckets.get(j) else {
                return;
            };
            if b.1 == EMPTY.1 {
                break;
            }
            // How far `b` is from its home, and the hole from the same home, going forward.
            let home = self.home(b.0);
            let from_home = j.wrapping_sub(home) & self.mask;
            let hole_from_home = hole.wrapping_sub(home) & self.mask;
            if hole_from_home <= from_home {
                if let Some(h) = self.buckets.get_mut(hole) {
                    *h = b;
                }
                hole = j;
            }
        }
        if let Some(h) = self.buckets.get_mut(hole) {
            *h = EMPTY;
        }
    }

    /// Twice the buckets, every entry filed again.
    fn grow(&mut self) {
        let bigger = Self::with_buckets(self.buckets.len().saturating_mul(2));
        let old = std::mem::replace(self, bigger);
        for &(h, slot) in old.buckets.iter().filter(|b| b.1 != EMPTY.1) {
            self.insert_new(h, slot);
        }
    }

    /// Entries indexed.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
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
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// What is done to an index and to its model: values 0..16, filed under one of four hashes
    /// (so that probes collide, run into each other and wrap around the table's end).
    #[derive(Debug, Clone)]
    enum Op {
        /// Index value `v` at a new slot, when it is not indexed yet.
        InsertNew(u8),
        /// Index value `v` at a new slot, in place of its slot if it has one.
        Replace(u8),
        /// Take value `v`'s slot out.
        Remove(u8),
        /// Take out a slot never indexed.
        RemoveUnknown(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..16).prop_map(Op::InsertNew),
            1 => (0u8..16).prop_map(Op::Replace),
            2 => (0u8..16).prop_map(Op::Remove),
            1 => (0u8..16).prop_map(Op::RemoveUnknown),
        ]
    }

    proptest! {
        /// Every value is found at the slot its model has, or not found when it has none, after
        /// every step; the count agrees. Growth from the smallest table is part of every run.
        #[test]
        fn the_index_finds_what_a_map_would(
            ops in prop::collection::vec(op(), 1..400),
            hashes in prop::array::uniform4(any::<u64>()),
        ) {
            let h = |v: u8| hashes[usize::from(v) % 4];
            let mut index = SlotIndex::default();
            // The model: value → slot, and each slot's value (what `holds` asks).
            let mut model: HashMap<u8, u64> = HashMap::new();
            let mut value_of: HashMap<u64, u8> = HashMap::new();
            let mut next_slot = 0u64;
            for op in ops {
                match op {
                    Op::InsertNew(v) if !model.contains_key(&v) => {
                        index.insert_new(h(v), next_slot);
                        model.insert(v, next_slot);
                        value_of.insert(next_slot, v);
                        next_slot += 1;
                    }
                    Op::InsertNew(_) => {}
                    Op::Replace(v) => {
                        let holds = |s: u64| value_of.get(&s) == Some(&v);
                        index.insert(h(v), next_slot, holds);
                        model.insert(v, next_slot);
                        value_of.insert(next_slot, v);
                        next_slot += 1;
                    }
                    Op::Remove(v) => {
                        if let Some(slot) = model.remove(&v) {
                            index.remove(h(v), slot);
                        }
                    }
                    Op::RemoveUnknown(v) => index.remove(h(v), u64::MAX - 1),
                }
                for v in 0..16u8 {
                    let holds = |s: u64| value_of.get(&s) == Some(&v);
                    prop_assert_eq!(index.get(h(v), holds), model.get(&v).copied(), "value {}", v);
                }
                prop_assert_eq!(index.len(), model.len());
            }
        }
    }

    #[test]
    fn removals_across_the_end_of_the_table_keep_the_rest_found() {
        // 16 buckets; hashes whose probes start in the last bucket, so that they wrap.
        let mut index = SlotIndex::default();
        let last = (0u64..)
            .find(|&h| index.home(h) == index.mask)
            .unwrap_or_default();
        for slot in 0..5 {
            index.insert_new(last, slot);
        }
        index.remove(last, 0);
        index.remove(last, 3);
        for slot in [1, 2, 4] {
            assert_eq!(index.get(last, |s| s == slot), Some(slot));
        }
        assert_eq!(index.get(last, |s| s == 0), None);
        assert_eq!(index.get(last, |s| s == 3), None);
        assert_eq!(index.len(), 3);
    }

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
