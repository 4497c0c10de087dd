//! Requests the kernel holds: a request's first bytes wait in the `held_heads` map until its
//! response starts, so the pair travels as one record (`EXCHANGE`). Two cases never see that
//! response, and this module sends those requests alone instead of losing them:
//!
//! - the probe stops: every held request is sent (with the message before it, which the
//!   kernel keeps in the connection until then);
//! - the connection vanished from the kernel's connection map without an end (LRU eviction
//!   under a flood of connections): a sweep sends requests held longer than
//!   [`ORPHAN_AFTER`] whose connection no longer holds them, and frees their slots.

use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData};
use zerocopy::FromBytes;

use super::abi;
use super::assembler::ConnectionSource;
use super::raw::{ConnectionKey, MsgCounters, MsgStart, SocketOwner};
use crate::error::Result;

/// How long a request may be held before the sweep checks that its connection still holds
/// it. Longer than any response a client waits for on a live connection is not needed: a
/// live connection still holding it keeps it.
pub const ORPHAN_AFTER: Duration = Duration::from_secs(30);

/// Size of a `held_heads` value.
pub const HELD_LEN: usize = std::mem::size_of::<abi::clovisor_held>();
/// Raw `held_heads` value.
pub type RawHeld = [u8; HELD_LEN];

/// Bytes of a `held_heads` value before its data.
const HELD_HEADER: usize = std::mem::offset_of!(abi::clovisor_held, data);

/// The kernel's `held_heads` map of one capture object.
pub struct HeldHeads(pub(crate) BpfHashMap<MapData, u64, RawHeld>);

impl std::fmt::Debug for HeldHeads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldHeads").finish_non_exhaustive()
    }
}

/// What to take out of the map.
#[derive(Debug, Clone, Copy)]
pub enum Take {
    /// Every held request (the programs are detached: nothing will answer them).
    All,
    /// Requests held since before `boot_ns` whose connection no longer holds them.
    OrphansBefore {
        /// Boot-clock nanoseconds.
        boot_ns: u64,
    },
}

impl HeldHeads {
    /// The held requests `take` selects, as the message starts they stand for; orphans are
    /// removed from the map. Entries that cannot be read are skipped.
    pub fn take(
        &mut self,
        take: Take,
        connections: &(impl ConnectionSource + ?Sized),
    ) -> Result<Vec<MsgStart>> {
        let mut out = Vec::new();
        let mut orphans = Vec::new();
        for entry in self.0.iter() {
            let Ok((flow_id, raw)) = entry else { continue };
            let Some(mut start) = parse(flow_id, &raw) else {
                continue;
            };
            // Whether the connection still holds this request, and the message before it.
            let state = connections
                .lookup(&start)
                .filter(|s| s.flow_id == flow_id)
                .filter(|s| s.cur.is_some_and(|c| c.index == start.msg.index));
            match take {
                Take::All => {
                    start.prev = state.and_then(|s| s.before);
                    out.push(start);
                }
                Take::OrphansBefore { boot_ns } => {
                    if state.is_none() && start.msg.start_ns < boot_ns {
                        orphans.push(flow_id);
                        out.push(start);
                    }
                }
            }
        }
        for flow_id in orphans {
            // Gone already (the kernel's LRU, or its response after all): nothing to do.
            let _ = self.0.remove(&flow_id);
        }
        Ok(out)
    }
}

/// The held request in a raw value; `None` for an empty slot or one that makes no sense.
fn parse(flow_id: u64, raw: &RawHeld) -> Option<MsgStart> {
    let (held, _) = abi::clovisor_held::read_from_prefix(&raw[..]).ok()?;
    if u32::from(held.msg.direction) == abi::CLOVISOR_DIR_NONE {
        return None;
    }
    let len = usize::try_from(held.len).ok()?;
    let data = raw.get(HELD_HEADER..HELD_HEADER.checked_add(len)?)?;
    let socket = match u32::from(held.point) {
        abi::CLOVISOR_POINT_SOCKET => Some(SocketOwner::try_from(&held.owner).ok()?),
        _ => None,
    };
    Some(MsgStart {
        key: ConnectionKey::try_from(&held.key).ok()?,
        flow_id,
        msg: MsgCounters::try_from(&held.msg).ok()?,
        prev: None,
        protocol: super::raw::protocol_hint(held.protocol),
        payload: bytes::Bytes::copy_from_slice(data),
        socket,
        counters_only: false,
        wire: None,
    })
}
