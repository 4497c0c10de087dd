//! What the two capture objects — the tc programs (`tc_capture.bpf.c`) and the socket point
//! (`socket_capture.bpf.c`) — share: the same kinds of maps under their own names, loaded and
//! sized alike, written alike and drained by the same [`EventLoop`].

use std::collections::BTreeMap;
use std::sync::Arc;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::{Ebpf, EbpfLoader};
use clovisor_proto::capture::v1::ProtocolHint;

use super::assembler::{Assembler, ConnectionSource, InterfaceNames};
use super::kernel_stats::{KernelStats, StatNames};
use super::maps::{map_err, replace_map};
use super::{abi, raw, CaptureConfig, EventLoop};
use crate::clock::BootClock;
use crate::error::{Error, Result};

/// The names of one object's maps of each kind.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ObjectMaps {
    /// Ring buffer of events, sized `ring_buffer_bytes`.
    pub events: &'static str,
    /// LRU connection map, sized `max_connections`.
    pub connections: &'static str,
    /// Per-CPU counters.
    pub stats: &'static str,
    /// `u32` settings array (`CLOVISOR_CONFIG_*`).
    pub config: &'static str,
    /// Port -> protocol hint.
    pub traced_ports: &'static str,
}

/// Loads `object` with its ring buffer and connection map sized from `cfg`, and takes its
/// counters out (named by `names`) so they can be read while the object is in use.
pub(crate) fn load(
    object: &[u8],
    maps: &ObjectMaps,
    names: StatNames,
    cfg: &CaptureConfig,
) -> Result<(Ebpf, Arc<KernelStats>)> {
    cfg.validate()?;
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(maps.events, cfg.ring_buffer_bytes)
        .map_max_entries(maps.connections, cfg.max_connections)
        .load(object)
        .map_err(|source| Error::Load { source })?;
    let stats = PerCpuArray::try_from(
        ebpf.take_map(maps.stats)
            .ok_or(Error::MissingMap { map: maps.stats })?,
    )
    .map_err(map_err(maps.stats, "open"))?;
    let stats = Arc::new(KernelStats::new(stats, maps.stats, names));
    Ok((ebpf, stats))
}

/// Checks `snaplen` against `cfg` and writes it to the object's config array; `cfg` records it.
pub(crate) fn set_snaplen(
    ebpf: &mut Ebpf,
    maps: &ObjectMaps,
    cfg: &mut CaptureConfig,
    snaplen: u32,
) -> Result<()> {
    CaptureConfig {
        snaplen,
        ..cfg.clone()
    }
    .validate()?;
    set_config_value(ebpf, maps, abi::CLOVISOR_CONFIG_SNAPLEN, snaplen)?;
    cfg.snaplen = snaplen;
    Ok(())
}

/// Writes one slot of the object's config array.
pub(crate) fn set_config_value(
    ebpf: &mut Ebpf,
    maps: &ObjectMaps,
    index: abi::clovisor_config_index,
    value: u32,
) -> Result<()> {
    let mut config: Array<_, u32> = Array::try_from(
        ebpf.map_mut(maps.config)
            .ok_or(Error::MissingMap { map: maps.config })?,
    )
    .map_err(map_err(maps.config, "open"))?;
    config
        .set(index, value, 0)
        .map_err(map_err(maps.config, "set"))
}

/// Makes the object's traced-ports map hold exactly `ports`.
pub(crate) fn set_traced_ports(
    ebpf: &mut Ebpf,
    maps: &ObjectMaps,
    ports: &BTreeMap<u16, ProtocolHint>,
) -> Result<()> {
    let max = abi::CLOVISOR_MAX_TRACED_PORTS as usize;
    if ports.len() > max {
        return Err(Error::Config {
            reason: format!("{} traced ports, at most {max}", ports.len()),
        });
    }
    let wanted: BTreeMap<u16, u8> = ports
        .iter()
        .map(|(p, h)| (*p, raw::hint_value(*h)))
        .collect();
    replace_map(ebpf, maps.traced_ports, &wanted)
}

/// Takes the ring buffer and the connection map out of the object into an [`EventLoop`] (once
/// only); `connections` wraps the connection map for the loop's idle-flush lookups.
pub(crate) fn take_event_loop<K, V, S>(
    ebpf: &mut Ebpf,
    maps: &ObjectMaps,
    cfg: &CaptureConfig,
    interfaces: InterfaceNames,
    connections: impl FnOnce(BpfHashMap<MapData, K, V>) -> S,
) -> Result<EventLoop>
where
    K: aya::Pod,
    V: aya::Pod,
    S: ConnectionSource + Send + 'static,
{
    let events = ebpf.take_map(maps.events).ok_or(Error::EventLoopTaken)?;
    let ring = RingBuf::try_from(events).map_err(map_err(maps.events, "open"))?;
    let map = ebpf.take_map(maps.connections).ok_or(Error::MissingMap {
        map: maps.connections,
    })?;
    let map = BpfHashMap::try_from(map).map_err(map_err(maps.connections, "open"))?;
    let assembler = Assembler::new(
        cfg.idle_flush,
        usize::try_from(cfg.max_connections).unwrap_or(usize::MAX),
        cfg.node.clone(),
        BootClock::now(),
        interfaces,
    );
    Ok(EventLoop::new(
        ring,
        Box::new(connections(map)),
        assembler,
        cfg.idle_flush,
    ))
}
