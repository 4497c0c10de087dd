//! The BPF programs' own counters: the per-CPU `stats` / `sock_stats` arrays, summed over CPUs
//! and named. The names are the `counter` label values of `clovisor_probe_kernel_total`
//! (docs/metrics.md).

use std::collections::BTreeMap;

use aya::maps::{MapData, PerCpuArray};

use super::abi;
use super::maps::map_err;
use crate::error::Result;

/// Names of a program's kernel counters, by index of its per-CPU stats map.
pub(crate) type StatNames = &'static [(u32, &'static str)];

/// Names of the tc programs' counters, by `stats` index.
pub(crate) const TC_STAT_NAMES: [(u32, &str); abi::CLOVISOR_STAT_COUNT as usize] = [
    (abi::CLOVISOR_STAT_PACKETS_SEEN, "packets_seen"),
    (abi::CLOVISOR_STAT_PACKETS_TRACED, "packets_traced"),
    (abi::CLOVISOR_STAT_EVENTS_EMITTED, "events_emitted"),
    (abi::CLOVISOR_STAT_RINGBUF_FULL, "ringbuf_full_drops"),
    (
        abi::CLOVISOR_STAT_CONN_UPDATE_FAILED,
        "connection_update_failed",
    ),
    (abi::CLOVISOR_STAT_PARSE_FAILED, "parse_failed"),
    (abi::CLOVISOR_STAT_CONNS_CREATED, "connections_created"),
    (abi::CLOVISOR_STAT_CONNS_ENDED, "connections_ended"),
    (abi::CLOVISOR_STAT_RETRANSMIT_PACKETS, "retransmit_packets"),
    (abi::CLOVISOR_STAT_SNAP_LOAD_FAILED, "snap_load_failed"),
    (abi::CLOVISOR_STAT_UNPARSED_IP, "unparsed_ip"),
    (abi::CLOVISOR_STAT_HEAD_NOT_HELD, "head_not_held"),
    (abi::CLOVISOR_STAT_HEAD_LOST, "head_lost"),
];

/// Names of the socket program's counters, by `sock_stats` index; `socket_` keeps them apart
/// from the tc programs' in `clovisor_probe_kernel_total{counter}`.
pub(crate) const SOCKET_STAT_NAMES: [(u32, &str); abi::CLOVISOR_SOCK_STAT_COUNT as usize] = [
    (abi::CLOVISOR_SOCK_STAT_TCP_CALLS, "socket_tcp_calls"),
    (abi::CLOVISOR_SOCK_STAT_CALLS_TRACED, "socket_calls_traced"),
    (
        abi::CLOVISOR_SOCK_STAT_EVENTS_EMITTED,
        "socket_events_emitted",
    ),
    (
        abi::CLOVISOR_SOCK_STAT_RINGBUF_FULL,
        "socket_ringbuf_full_drops",
    ),
    (
        abi::CLOVISOR_SOCK_STAT_CONN_UPDATE_FAILED,
        "socket_connection_update_failed",
    ),
    (
        abi::CLOVISOR_SOCK_STAT_NO_USER_BUFFER,
        "socket_no_user_buffer",
    ),
    (
        abi::CLOVISOR_SOCK_STAT_CONNS_CREATED,
        "socket_connections_created",
    ),
    (
        abi::CLOVISOR_SOCK_STAT_CONNS_ENDED,
        "socket_connections_ended",
    ),
    (
        abi::CLOVISOR_SOCK_STAT_SNAP_LOAD_FAILED,
        "socket_snap_load_failed",
    ),
    (
        abi::CLOVISOR_SOCK_STAT_HEAD_NOT_HELD,
        "socket_head_not_held",
    ),
    (abi::CLOVISOR_SOCK_STAT_HEAD_LOST, "socket_head_lost"),
    (
        abi::CLOVISOR_SOCK_STAT_EACH_CALL_CONNS,
        "socket_each_call_connections",
    ),
    (
        abi::CLOVISOR_SOCK_STAT_SEGMENTS_EMITTED,
        "socket_segments_emitted",
    ),
    (
        abi::CLOVISOR_SOCK_STAT_SEGMENTS_LOST,
        "socket_segments_lost",
    ),
    (
        abi::CLOVISOR_SOCK_STAT_CALL_BYTES_SKIPPED,
        "socket_call_bytes_skipped",
    ),
    (
        abi::CLOVISOR_SOCK_STAT_PEER_COVERED_CONNS,
        "socket_peer_covered_connections",
    ),
    (abi::CLOVISOR_SOCK_STAT_WIRE_CARRIED, "socket_wire_carried"),
    (abi::CLOVISOR_SOCK_STAT_WIRE_MISSED, "socket_wire_missed"),
];

/// A BPF object's per-CPU counters.
pub struct KernelStats {
    map: PerCpuArray<MapData, u64>,
    map_name: &'static str,
    names: StatNames,
}

impl std::fmt::Debug for KernelStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelStats").finish_non_exhaustive()
    }
}

impl KernelStats {
    /// The counters in `map` (the object's map `map_name`), named by `names`.
    pub(crate) fn new(
        map: PerCpuArray<MapData, u64>,
        map_name: &'static str,
        names: StatNames,
    ) -> Self {
        Self {
            map,
            map_name,
            names,
        }
    }

    /// Every counter summed over CPUs, by name.
    pub fn read(&self) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for (idx, name) in self.names {
            let values = self
                .map
                .get(idx, 0)
                .map_err(map_err(self.map_name, "read"))?;
            out.insert(
                (*name).to_owned(),
                values.iter().copied().fold(0u64, u64::wrapping_add),
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_kernel_counter_has_a_distinct_name_at_its_index() {
        for (i, (idx, _)) in TC_STAT_NAMES.iter().enumerate() {
            assert_eq!(
                *idx as usize, i,
                "TC_STAT_NAMES[{i}] must hold index {i}, holds {idx}"
            );
        }
        let names: BTreeSet<&str> = TC_STAT_NAMES.iter().map(|(_, n)| *n).collect();
        assert_eq!(
            names.len(),
            TC_STAT_NAMES.len(),
            "counter names must be unique"
        );
    }

    #[test]
    fn every_socket_counter_has_a_distinct_name_at_its_index() {
        for (i, (idx, name)) in SOCKET_STAT_NAMES.iter().enumerate() {
            assert_eq!(
                *idx as usize, i,
                "SOCKET_STAT_NAMES[{i}] ({name}) must hold index {i}"
            );
            assert!(
                name.starts_with("socket_"),
                "{name} must be prefixed socket_ to stay apart from the tc counters"
            );
        }
        let names: BTreeSet<&str> = SOCKET_STAT_NAMES.iter().map(|(_, n)| *n).collect();
        assert_eq!(
            names.len(),
            SOCKET_STAT_NAMES.len(),
            "counter names must be unique"
        );
    }
}
