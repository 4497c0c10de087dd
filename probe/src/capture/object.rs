//! What the two capture objects — the tc programs (`tc_capture.bpf.c`) and the socket point
//! (`socket_capture.bpf.c`) — share: the same kinds of maps under their own names, loaded and
//! sized alike, written alike and drained by the same [`EventLoop`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::{Ebpf, EbpfLoader};
use clovisor_proto::capture::v1::ProtocolHint;

use super::assembler::{Assembler, ConnectionSource, InterfaceNames};
use super::held::HeldHeads;
use super::kernel_stats::{KernelStats, StatNames};
use super::maps::map_err;
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

/// The held-request-heads LRU map both objects have (`bpf/include/clovisor_common.bpf.h`).
const HELD_HEADS: &str = "held_heads";
/// The traced-port bitmap both objects have.
const TRACED_PORT_BITS: &str = "traced_port_bits";

/// Loads `object` with its ring buffer and connection map sized from `cfg`, and takes its
/// counters out (named by `names`) so they can be read while the object is in use.
///
/// With `core`, the object's CO-RE relocations are made against the kernel's type information,
/// which the loader parses from `/sys/kernel/btf/vmlinux` (about 20 MiB while it is held) and
/// drops with itself once the object is loaded. Without, the loader parses it all the same
/// (aya's `EbpfLoader::new` always does) and drops it at once. Either way nothing else holds a
/// parsed copy meanwhile: two at once were the probe's peak of memory.
///
/// With `shared` (a map name and a pin path, [`super::shared::SharedPin`]), that map is the one
/// pinned there, created and pinned if none is: how the tc object's connection map reaches the
/// socket point.
pub(crate) fn load(
    object: &[u8],
    maps: &ObjectMaps,
    names: StatNames,
    cfg: &CaptureConfig,
    core: bool,
    shared: Option<(&'static str, &std::path::Path)>,
) -> Result<(Ebpf, Arc<KernelStats>)> {
    cfg.validate()?;
    let mut loader = EbpfLoader::new();
    if !core {
        loader.btf(None);
    }
    if let Some((name, path)) = shared {
        loader
            .map_pin_path(name, path)
            .map_max_entries(name, cfg.max_connections);
    }
    let mut ebpf = loader
        .map_max_entries(maps.events, cfg.ring_buffer_bytes)
        .map_max_entries(maps.connections, cfg.max_connections)
        .map_max_entries(HELD_HEADS, cfg.held_requests)
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

/// Makes the object's traced ports exactly `ports`: the port -> hint map and the bitmap the
/// programs test first. A port kept across the update is never untraced: new ports go into the
/// map before their bit is set, gone ports lose their bit before they leave the map.
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
    let name = maps.traced_ports;
    let mut hints: BpfHashMap<_, u16, u8> =
        BpfHashMap::try_from(ebpf.map_mut(name).ok_or(Error::MissingMap { map: name })?)
            .map_err(map_err(name, "open"))?;
    let present: BTreeSet<u16> = hints.keys().filter_map(|k| k.ok()).collect();
    for (port, hint) in ports {
        hints
            .insert(port, raw::hint_value(*hint), 0)
            .map_err(map_err(name, "insert"))?;
    }
    // Every bitmap word a wanted or a present port lives in, with its new value.
    let mut words: BTreeMap<u32, u64> = present
        .iter()
        .chain(ports.keys())
        .map(|p| (u32::from(*p) / 64, 0))
        .collect();
    for port in ports.keys() {
        if let Some(w) = words.get_mut(&(u32::from(*port) / 64)) {
            *w |= 1u64 << (port % 64);
        }
    }
    let mut bits: Array<_, u64> =
        Array::try_from(ebpf.map_mut(TRACED_PORT_BITS).ok_or(Error::MissingMap {
            map: TRACED_PORT_BITS,
        })?)
        .map_err(map_err(TRACED_PORT_BITS, "open"))?;
    for (index, value) in &words {
        bits.set(*index, value, 0)
            .map_err(map_err(TRACED_PORT_BITS, "set"))?;
    }
    let mut hints: BpfHashMap<_, u16, u8> =
        BpfHashMap::try_from(ebpf.map_mut(name).ok_or(Error::MissingMap { map: name })?)
            .map_err(map_err(name, "open"))?;
    for port in present.iter().filter(|p| !ports.contains_key(p)) {
        hints.remove(port).map_err(map_err(name, "remove"))?;
    }
    Ok(())
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
    let held = ebpf
        .take_map(HELD_HEADS)
        .ok_or(Error::MissingMap { map: HELD_HEADS })?;
    let held = HeldHeads(BpfHashMap::try_from(held).map_err(map_err(HELD_HEADS, "open"))?);
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
        held,
        assembler,
        cfg.idle_flush,
    ))
}
