//! The order in which flows were last active: the least recently active one is evicted first
//! when the table is full, and idle flows are found from the front.

use std::collections::VecDeque;

/// Flows in the order of their last activity. Touching a flow appends an entry stamped with a
/// new tick, which becomes the flow's; its older entries stay behind, stale, and are skipped when
/// met (an entry is live while its tick is still its flow's) or dropped by a compaction once
/// they outnumber the flows. So a touch is one push, where an ordered map keyed by tick cost a
/// removal and an insertion per message.
#[derive(Debug)]
pub(super) struct Activity<K> {
    queue: VecDeque<(u64, K)>,
    next_tick: u64,
}

impl<K> Default for Activity<K> {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            next_tick: 0,
        }
    }
}

impl<K: Copy> Activity<K> {
    /// Records activity of `key` now; returns the tick that is the flow's from now on.
    pub fn touch(&mut self, key: K) -> u64 {
        let tick = self.next_tick;
        self.next_tick += 1;
        self.queue.push_back((tick, key));
        tick
    }

    /// The least recently active flow still live; `tick_of` gives a flow's current tick, `None`
    /// once it is gone. Stale entries in front of it are dropped.
    pub fn oldest(&mut self, tick_of: impl Fn(&K) -> Option<u64>) -> Option<K> {
        while let Some(&(tick, key)) = self.queue.front() {
            if tick_of(&key) == Some(tick) {
                return Some(key);
            }
            self.queue.pop_front();
        }
        None
    }

    /// Drops stale entries once they outnumber the `live` flows (amortised O(1) per touch).
    pub fn compact(&mut self, live: usize, tick_of: impl Fn(&K) -> Option<u64>) {
        if self.queue.len() <= live.saturating_mul(2).saturating_add(64) {
            return;
        }
        self.queue.retain(|(tick, key)| tick_of(key) == Some(*tick));
    }

    /// Entries held, stale ones included.
    #[cfg(test)]
    pub fn entries(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn the_least_recently_touched_live_flow_comes_first_and_stale_entries_stay_bounded() {
        let mut a = Activity::default();
        let mut ticks: HashMap<u32, u64> = HashMap::new();
        for k in [1, 2, 3, 1, 2, 1] {
            ticks.insert(k, a.touch(k));
        }
        assert_eq!(a.oldest(|k| ticks.get(k).copied()), Some(3));
        ticks.remove(&3);
        assert_eq!(
            a.oldest(|k| ticks.get(k).copied()),
            Some(2),
            "a removed flow's entries are skipped"
        );
        for _ in 0..1000 {
            ticks.insert(7, a.touch(7));
            a.compact(ticks.len(), |k| ticks.get(k).copied());
        }
        assert!(
            a.entries() <= 2 * ticks.len() + 65,
            "stale entries are compacted: {} for {} flows",
            a.entries(),
            ticks.len()
        );
        assert_eq!(a.oldest(|k| ticks.get(k).copied()), Some(2));
        ticks.clear();
        assert_eq!(a.oldest(|k| ticks.get(k).copied()), None);
    }
}
