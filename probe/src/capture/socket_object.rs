//! The socket observation point: loads `bpf/socket_capture.bpf.c`, attaches the best hook set
//! the kernel offers (see [`crate::hooks::socket`]), keeps its maps in step with what is traced
//! (network namespaces, ports, snaplen) and hands out an [`EventLoop`] over its ring buffer.
//!
//! It is a BPF object of its own, with its own ring buffer, connection map and counters: a flood of
//! syscalls cannot crowd the veth capture's events out, and either point can be off. Its flow
//! ids carry `CLOVISOR_SOCK_FLOW_ID_BIT`, so they never collide with the tc programs' ids in the
//! collector's flow table (keyed by probe id and flow id).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::Ebpf;
use clovisor_proto::capture::v1::ProtocolHint;

use super::assembler::{ConnectionSource, InterfaceNames};
use super::kernel_stats::{KernelStats, SOCKET_STAT_NAMES};
use super::maps::replace_map;
use super::raw::{ConnectionState, MsgStart, RawSockConnection};
use super::shared::SharedPin;
use super::{abi, object, CaptureConfig, EventLoop, SocketPayload};
use crate::error::{Error, Result};
use crate::hooks::socket::{self as hooks, HookAttempt, SocketHookKind, SocketHooks};

/// The compiled BPF object (built by `build.rs`).
static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/socket_capture.bpf.o"));

const MAPS: object::ObjectMaps = object::ObjectMaps {
    events: "sock_events",
    connections: "sock_connections",
    stats: "sock_stats",
    config: "sock_config",
    traced_ports: "traced_ports",
};
const MAP_NETNS: &str = "monitored_netns";
const MAP_NETNS_VETH: &str = "netns_veth";
/// The tc object's connection map, as this object names it.
const MAP_TC_CONNECTIONS: &str = "tc_connections";
/// `max_entries` of `monitored_netns` in the object.
const MAX_NETNS: usize = abi::CLOVISOR_MAX_MONITORED_NETNS as usize;

/// The loaded and attached socket point.
pub struct SocketCapture {
    ebpf: Ebpf,
    hooks: Option<SocketHooks>,
    stats: Arc<KernelStats>,
    cfg: CaptureConfig,
    /// What the maps hold, so unchanged updates cost nothing.
    netns: Option<BTreeSet<u32>>,
    /// Changes of `netns` so far: the programs' monitored-namespace generation.
    netns_generation: u32,
    ports: Option<BTreeMap<u16, ProtocolHint>>,
    /// What `netns_veth` holds.
    carried: BTreeMap<u32, u32>,
    /// Loaded with the tc object's connection map ([`Self::load_sharing`]).
    shares_tc_connections: bool,
}

impl std::fmt::Debug for SocketCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketCapture")
            .field("hooks", &self.hooks)
            .finish_non_exhaustive()
    }
}

impl SocketCapture {
    /// Loads the object, sizes its maps like the tc capture's and attaches the first hook set
    /// that works. Nothing is traced until [`Self::set_monitored_netns`] names namespaces.
    pub fn load(cfg: &CaptureConfig) -> Result<Self> {
        Self::load_sharing(cfg, None)
    }

    /// [`Self::load`], with the tc object's connection map pinned at `pin`
    /// ([`super::Capture::load_sharing`]): the veths of the pods named by
    /// [`Self::set_carried_veths`] can then be carried.
    pub fn load_sharing(cfg: &CaptureConfig, pin: Option<&SharedPin>) -> Result<Self> {
        // The loader parses the kernel's BTF for the CO-RE relocations and drops it; the
        // tracepoints' attach targets are looked up in a second parse, made only after the
        // first is gone (one parsed copy at a time: each is about 20 MiB).
        let shared = pin.map(|p| (MAP_TC_CONNECTIONS, p.path()));
        let (ebpf, stats) = object::load(OBJECT, &MAPS, &SOCKET_STAT_NAMES, cfg, true, shared)?;
        let mut capture = Self {
            ebpf,
            hooks: None,
            stats,
            cfg: cfg.clone(),
            netns: None,
            netns_generation: 0,
            ports: None,
            carried: BTreeMap::new(),
            shares_tc_connections: pin.is_some(),
        };
        capture.set_snaplen(cfg.snaplen)?;
        object::set_config_value(
            &mut capture.ebpf,
            &MAPS,
            abi::CLOVISOR_CONFIG_PEER_COVERED,
            u32::from(cfg.socket_payload == SocketPayload::Uncovered),
        )?;
        let btf = aya::Btf::from_sys_fs().map_err(|source| Error::Btf { source })?;
        capture.hooks = Some(hooks::attach(&mut capture.ebpf, &btf)?);
        Ok(capture)
    }

    /// The hook set in use.
    pub fn hook(&self) -> Option<SocketHookKind> {
        self.hooks.as_ref().map(|h| h.kind)
    }

    /// Every hook set tried at load, with why the others were passed over.
    pub fn hook_attempts(&self) -> Vec<HookAttempt> {
        self.hooks
            .as_ref()
            .map(|h| h.attempts.clone())
            .unwrap_or_default()
    }

    /// The bytes copied from the start of each message now.
    pub fn snaplen(&self) -> u32 {
        self.cfg.snaplen
    }

    /// Changes the bytes copied from the start of each message (1..=2048).
    pub fn set_snaplen(&mut self, snaplen: u32) -> Result<()> {
        object::set_snaplen(&mut self.ebpf, &MAPS, &mut self.cfg, snaplen)
    }

    /// Replaces the network namespaces (by inode) whose processes are traced.
    pub fn set_monitored_netns(&mut self, inodes: &BTreeSet<u32>) -> Result<()> {
        if inodes.len() > MAX_NETNS {
            return Err(Error::Config {
                reason: format!("{} monitored namespaces, at most {MAX_NETNS}", inodes.len()),
            });
        }
        if self.netns.as_ref() == Some(inodes) {
            return Ok(());
        }
        let wanted: BTreeMap<u32, u8> = inodes.iter().map(|i| (*i, 1)).collect();
        replace_map(&mut self.ebpf, MAP_NETNS, &wanted)?;
        self.netns = Some(inodes.clone());
        // After the set: the sockets the programs found untraced under the old one
        // (`sock_untraced`) are checked again on their next call.
        self.netns_generation = self.netns_generation.wrapping_add(1);
        object::set_config_value(
            &mut self.ebpf,
            &MAPS,
            abi::CLOVISOR_CONFIG_NETNS_GENERATION,
            self.netns_generation,
        )
    }

    /// Whether it loaded the tc object's connection map, so that veths can be carried.
    pub fn shares_tc_connections(&self) -> bool {
        self.shares_tc_connections
    }

    /// Replaces the pods whose veth is carried: network namespace inode -> the veth's ifindex
    /// (host side). A connection first traced in such a namespace carries the veth's counters of
    /// its messages in its records (`CLOVISOR_EV_HAS_WIRE`). Written before the tc object's
    /// covered veths, so that every connection a covered veth carries finds its socket's
    /// namespace here.
    pub fn set_carried_veths(&mut self, veths: &BTreeMap<u32, u32>) -> Result<()> {
        if veths.len() > MAX_NETNS {
            return Err(Error::Config {
                reason: format!("{} carried veths, at most {MAX_NETNS}", veths.len()),
            });
        }
        if !self.shares_tc_connections || *veths == self.carried {
            return Ok(());
        }
        replace_map(&mut self.ebpf, MAP_NETNS_VETH, veths)?;
        self.carried = veths.clone();
        Ok(())
    }

    /// Replaces the traced ports (the same set the tc programs trace).
    pub fn set_traced_ports(&mut self, ports: &BTreeMap<u16, ProtocolHint>) -> Result<()> {
        if self.ports.as_ref() == Some(ports) {
            return Ok(());
        }
        object::set_traced_ports(&mut self.ebpf, &MAPS, ports)?;
        self.ports = Some(ports.clone());
        Ok(())
    }

    /// A reader of the socket program's counters (for metrics).
    pub fn kernel_stats_handle(&self) -> Arc<KernelStats> {
        Arc::clone(&self.stats)
    }

    /// Takes the ring buffer and the connection map into an [`EventLoop`]; once only. Sockets
    /// have no interface to name; the veths they carry are named from `interfaces` (the tc
    /// object's, [`super::Capture::interface_names`]).
    pub fn take_event_loop(&mut self, interfaces: Option<InterfaceNames>) -> Result<EventLoop> {
        let interfaces = interfaces.unwrap_or_else(|| Arc::new(RwLock::new(BTreeMap::new())));
        object::take_event_loop(
            &mut self.ebpf,
            &MAPS,
            &self.cfg,
            interfaces,
            KernelSockConnections,
        )
    }

    /// Detaches every hook (idempotent); the programs stop seeing syscalls at once.
    pub fn detach(&mut self) -> Result<()> {
        match self.hooks.take() {
            Some(h) => hooks::detach(&mut self.ebpf, h),
            None => Ok(()),
        }
    }
}

impl Drop for SocketCapture {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            tracing::warn!(error = %e, "detaching the socket hooks on drop failed");
        }
    }
}

struct KernelSockConnections(BpfHashMap<MapData, u64, RawSockConnection>);

impl ConnectionSource for KernelSockConnections {
    fn lookup(&self, start: &MsgStart) -> Option<ConnectionState> {
        let sock = start.socket.as_ref()?.sock_id;
        let raw = self.0.get(&sock, 0).ok()?;
        ConnectionState::from_sock_connection(&raw[..]).ok()
    }
}
