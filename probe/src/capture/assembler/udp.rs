//! UDP flows. The kernel sends each traced datagram on its own and keeps no state for UDP
//! (`CLOVISOR_EV_DATAGRAM`): this table gives the datagrams of one client/server pair at one
//! interface a flow id and contiguous positions, and says when a flow went quiet, so that the
//! assembler can announce it (`FlowStart`, transport UDP) and end it (`FlowEnd`, idle).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::super::raw::{ConnectionKey, MsgCounters};

/// A UDP flow ends after this long without a datagram.
pub const UDP_IDLE: Duration = Duration::from_secs(10);

/// UDP flow ids have a top byte of 0; the kernel's carry the CPU + 1 there (tc) or bit 63
/// (the socket point). Only a tc flow made on CPU 255 of a node with more than 255 CPUs can
/// share one.
const UDP_FLOW_ID_MASK: u64 = (1 << 56) - 1;

/// One UDP flow.
#[derive(Debug, Clone, Copy)]
pub struct UdpFlow {
    /// Its id, as announced.
    pub flow_id: u64,
    /// Position of its next datagram.
    next_index: u32,
    /// When its last datagram was taken in.
    last_seen: Instant,
    /// Counters of its last datagram.
    pub last: MsgCounters,
}

/// UDP flows by key, at most `max` of them.
#[derive(Debug)]
pub struct UdpFlows {
    flows: FxHashMap<ConnectionKey, UdpFlow>,
    /// Keys in the order their flows were last seen, oldest first; an entry whose flow was seen
    /// again since (or ended) is stale and skipped.
    order: VecDeque<(ConnectionKey, Instant)>,
    next_id: u64,
    max: usize,
}

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// Its flow's id.
    pub flow_id: u64,
    /// Its position in the flow.
    pub index: u32,
    /// The flow is new: announce it first.
    pub new: bool,
}

impl UdpFlows {
    /// An empty table of at most `max` flows.
    pub fn new(max: usize) -> Self {
        Self {
            flows: FxHashMap::default(),
            order: VecDeque::new(),
            next_id: 0,
            max: max.max(1),
        }
    }

    /// Flows open now.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is open.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Places datagram `msg` of `key`, taken in at `now`. When a new flow finds the table full,
    /// the flow seen least recently is ended to make room and returned.
    pub fn place(
        &mut self,
        key: ConnectionKey,
        msg: &MsgCounters,
        now: Instant,
    ) -> (Placed, Option<(ConnectionKey, UdpFlow)>) {
        let mut evicted = None;
        if !self.flows.contains_key(&key) && self.flows.len() >= self.max {
            evicted = self.pop_oldest(|_| true);
        }
        let placed = match self.flows.get_mut(&key) {
            Some(f) => {
                let index = f.next_index;
                f.next_index = f.next_index.wrapping_add(1);
                f.last_seen = now;
                f.last = MsgCounters { index, ..*msg };
                Placed {
                    flow_id: f.flow_id,
                    index,
                    new: false,
                }
            }
            None => {
                self.next_id = self.next_id.wrapping_add(1) & UDP_FLOW_ID_MASK;
                let flow_id = self.next_id.max(1);
                self.flows.insert(
                    key,
                    UdpFlow {
                        flow_id,
                        next_index: 1,
                        last_seen: now,
                        last: MsgCounters { index: 0, ..*msg },
                    },
                );
                Placed {
                    flow_id,
                    index: 0,
                    new: true,
                }
            }
        };
        self.order.push_back((key, now));
        if self.order.len() > self.flows.len().saturating_mul(4).saturating_add(64) {
            let flows = &self.flows;
            self.order
                .retain(|(k, seen)| flows.get(k).is_some_and(|f| f.last_seen == *seen));
        }
        (placed, evicted)
    }

    /// Removes and returns the flows idle for `idle` at `now`, oldest first.
    pub fn take_idle(&mut self, now: Instant, idle: Duration) -> Vec<(ConnectionKey, UdpFlow)> {
        let mut ended = Vec::new();
        while let Some(f) = self.pop_oldest(|seen| now.saturating_duration_since(seen) >= idle) {
            ended.push(f);
        }
        ended
    }

    /// Removes the least recently seen flow if `due(its last seen)`.
    fn pop_oldest(&mut self, due: impl Fn(Instant) -> bool) -> Option<(ConnectionKey, UdpFlow)> {
        while let Some(&(key, seen)) = self.order.front() {
            let current = self.flows.get(&key).is_some_and(|f| f.last_seen == seen);
            if !current {
                self.order.pop_front();
                continue;
            }
            if !due(seen) {
                return None;
            }
            self.order.pop_front();
            return self.flows.remove(&key).map(|f| (key, f));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::raw::testing::{counters, v4_key};
    use clovisor_proto::capture::v1::Direction;

    fn other_key() -> ConnectionKey {
        let mut k = v4_key();
        k.client.set_port(k.client.port().wrapping_add(1));
        k
    }

    #[test]
    fn datagrams_of_one_pair_are_one_flow_numbered_in_order() {
        let mut t = UdpFlows::new(8);
        let t0 = Instant::now();
        let q = counters(0, Direction::ClientToServer, 40);
        let a = counters(0, Direction::ServerToClient, 120);
        let (p0, _) = t.place(v4_key(), &q, t0);
        let (p1, _) = t.place(v4_key(), &q, t0);
        let (p2, _) = t.place(v4_key(), &a, t0);
        let (o0, _) = t.place(other_key(), &q, t0);
        assert_eq!(
            [(p0.index, p0.new), (p1.index, p1.new), (p2.index, p2.new)],
            [(0, true), (1, false), (2, false)]
        );
        assert_eq!((p0.flow_id, p1.flow_id), (p2.flow_id, p2.flow_id));
        assert!(
            o0.new && o0.flow_id != p0.flow_id,
            "another client port, another flow"
        );
        assert_eq!(p0.flow_id >> 56, 0, "top byte 0: never a kernel flow id");
    }

    #[test]
    fn quiet_flows_end_and_a_full_table_ends_the_oldest() {
        let mut t = UdpFlows::new(2);
        let t0 = Instant::now();
        let q = counters(0, Direction::ClientToServer, 40);
        t.place(v4_key(), &q, t0);
        t.place(other_key(), &q, t0 + Duration::from_secs(5));
        // The first flow speaks again: the second is now the least recently seen.
        t.place(v4_key(), &q, t0 + Duration::from_secs(6));
        let mut third = v4_key();
        third.client.set_port(9);
        let (placed, evicted) = t.place(third, &q, t0 + Duration::from_secs(7));
        assert!(placed.new);
        assert_eq!(evicted.map(|(k, _)| k), Some(other_key()));
        let idle = t.take_idle(t0 + Duration::from_secs(16), UDP_IDLE);
        assert_eq!(
            idle.iter()
                .map(|(k, f)| (*k, f.last.index))
                .collect::<Vec<_>>(),
            [(v4_key(), 1)],
            "only the flow quiet for 10 s, with its last datagram's position"
        );
        assert_eq!(t.len(), 1);
    }
}
