//! The tc capture object (`bpf/tc_capture.bpf.c`): loading its programs, writing its maps
//! (snaplen, traced ports, monitored pod addresses) and handing out its counters and its
//! [`EventLoop`]. Attaching it to interfaces is in `attach.rs`, its egress-rule maps in
//! `egress_maps.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::Ebpf;
use clovisor_proto::capture::v1::ProtocolHint;

use super::assembler::{ConnectionSource, InterfaceNames};
use super::kernel_stats::{KernelStats, TC_STAT_NAMES};
use super::maps::{map_err, replace_map};
use super::raw::{ConnectionState, MsgStart, RawConnection, RawConnectionKey};
use super::shared::SharedPin;
use super::{abi, object, raw, CaptureConfig, EventLoop};
use crate::error::{Error, Result};
use crate::hooks::node_iface;
use crate::hooks::pod_veth;
use crate::hooks::tc_attach::TcAttachment;

/// The compiled BPF object (built by `build.rs`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc_capture.bpf.o"));

const MAPS: object::ObjectMaps = object::ObjectMaps {
    events: "events",
    connections: "connections",
    stats: "stats",
    config: "config",
    traced_ports: "traced_ports",
};
const MAP_MONITORED_IPS: &str = "monitored_ips";
const MAP_COVERED_IFACES: &str = "covered_ifaces";

/// The loaded tc capture object: programs, maps and the interfaces they are attached to.
pub struct Capture {
    pub(super) ebpf: Ebpf,
    stats: Arc<KernelStats>,
    pub(super) cfg: CaptureConfig,
    /// What attaching to each interface created, by interface name.
    pub(super) attachments: BTreeMap<String, TcAttachment>,
    /// The attached interfaces by ifindex, shared with the event loop's assembler.
    pub(super) interfaces: InterfaceNames,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("cfg", &self.cfg)
            .field("attached", &self.attachments.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// One run of loaded classifier `prog` on `frame` (an Ethernet frame) through the kernel's
/// `BPF_PROG_TEST_RUN`, on this CPU; the kernel's timing of it. [`Capture::test_run`]'s, and the
/// microbenchmark's for a program that is not the probe's (its empty floor).
pub fn test_run_classifier(
    prog: &aya::programs::SchedClassifier,
    frame: &[u8],
) -> std::result::Result<std::time::Duration, aya::programs::ProgramError> {
    use aya::programs::{TestRun, TestRunOptions};
    let opts = TestRunOptions {
        data_in: Some(frame),
        ..TestRunOptions::new()
    };
    Ok(prog.test_run(opts)?.duration)
}

impl Capture {
    /// Loads and verifies the programs and sizes the maps; attaches nothing yet.
    pub fn load(cfg: &CaptureConfig) -> Result<Self> {
        Self::load_sharing(cfg, None)
    }

    /// [`Capture::load`], its connection map pinned at `pin` (or the one pinned there) for the
    /// socket point to load too ([`super::socket_object::SocketCapture::load_sharing`]).
    pub fn load_sharing(cfg: &CaptureConfig, pin: Option<&SharedPin>) -> Result<Self> {
        // The tc programs read only packets: no CO-RE relocations, no kernel BTF to parse.
        let shared = pin.map(|p| (MAPS.connections, p.path()));
        let (ebpf, stats) = object::load(OBJECT, &MAPS, &TC_STAT_NAMES, cfg, false, shared)?;
        let mut capture = Self {
            ebpf,
            stats,
            cfg: cfg.clone(),
            attachments: BTreeMap::new(),
            interfaces: Arc::new(RwLock::new(BTreeMap::new())),
        };
        for (name, _) in pod_veth::PROGRAMS.into_iter().chain(node_iface::PROGRAMS) {
            let prog: &mut aya::programs::SchedClassifier = capture
                .ebpf
                .program_mut(name)
                .ok_or(Error::Program {
                    program: name,
                    what: "missing from the object",
                    source: aya::programs::ProgramError::NotLoaded,
                })?
                .try_into()
                .map_err(|source| Error::Program {
                    program: name,
                    what: "is not a tc classifier",
                    source,
                })?;
            prog.load().map_err(|source| Error::Program {
                program: name,
                what: "verifier",
                source,
            })?;
        }
        capture.set_snaplen(cfg.snaplen)?;
        Ok(capture)
    }

    /// Changes how many first bytes of each message the kernel copies (1..=2048); takes
    /// effect for messages that start from now on.
    pub fn set_snaplen(&mut self, snaplen: u32) -> Result<()> {
        object::set_snaplen(&mut self.ebpf, &MAPS, &mut self.cfg, snaplen)
    }

    /// Writes one slot of the kernel's `config` array.
    pub(super) fn set_config_value(
        &mut self,
        index: abi::clovisor_config_index,
        value: u32,
    ) -> Result<()> {
        object::set_config_value(&mut self.ebpf, &MAPS, index, value)
    }

    /// Whether a new connection at a covered veth is *carried*: its counters read by the socket
    /// point, which loaded this object's connection map ([`Capture::load_sharing`]) and reads
    /// it for the pods [`super::socket_object::SocketCapture::set_carried_veths`] names; the
    /// veth then sends no per-message records of its own (`CLOVISOR_CONFIG_CARRY_WIRE`).
    pub fn set_carry_wire(&mut self, on: bool) -> Result<()> {
        self.set_config_value(abi::CLOVISOR_CONFIG_CARRY_WIRE, u32::from(on))
    }

    /// The attached interfaces' names, shared with whoever names them (the socket point's
    /// assembler names the veths it carries).
    pub fn interface_names(&self) -> InterfaceNames {
        Arc::clone(&self.interfaces)
    }

    /// The configuration it was loaded with.
    pub fn config(&self) -> &CaptureConfig {
        &self.cfg
    }

    /// Replaces the traced ports (server ports and what they speak).
    pub fn set_traced_ports(&mut self, ports: &BTreeMap<u16, ProtocolHint>) -> Result<()> {
        object::set_traced_ports(&mut self.ebpf, &MAPS, ports)
    }

    /// The traced ports as the kernel map holds them now.
    pub fn traced_ports(&self) -> Result<BTreeMap<u16, ProtocolHint>> {
        let map: BpfHashMap<_, u16, u8> =
            BpfHashMap::try_from(self.ebpf.map(MAPS.traced_ports).ok_or(Error::MissingMap {
                map: MAPS.traced_ports,
            })?)
            .map_err(map_err(MAPS.traced_ports, "open"))?;
        map.iter()
            .map(|entry| {
                entry
                    .map(|(port, hint)| (port, raw::protocol_hint(hint)))
                    .map_err(map_err(MAPS.traced_ports, "read"))
            })
            .collect()
    }

    /// Replaces the addresses of monitored pods, which the node-interface programs restrict
    /// themselves to.
    pub fn set_monitored_ips(&mut self, ips: &BTreeSet<std::net::IpAddr>) -> Result<()> {
        let max = abi::CLOVISOR_MAX_MONITORED_IPS as usize;
        if ips.len() > max {
            return Err(Error::Config {
                reason: format!("{} monitored pod addresses, at most {max}", ips.len()),
            });
        }
        // Keyed by the 16 address bytes of `struct clovisor_ip`.
        let wanted: BTreeMap<[u8; 16], u8> = ips.iter().map(|ip| (raw::ip16(*ip), 1)).collect();
        replace_map(&mut self.ebpf, MAP_MONITORED_IPS, &wanted)
    }

    /// Replaces the pod veths (by ifindex) whose pod the socket point covers: new connections
    /// there carry timings and counters only.
    pub fn set_covered_interfaces(&mut self, ifindexes: &BTreeSet<u32>) -> Result<()> {
        let max = abi::CLOVISOR_MAX_COVERED_IFACES as usize;
        if ifindexes.len() > max {
            return Err(Error::Config {
                reason: format!("{} covered pod veths, at most {max}", ifindexes.len()),
            });
        }
        let wanted: BTreeMap<u32, u8> = ifindexes.iter().map(|i| (*i, 1)).collect();
        replace_map(&mut self.ebpf, MAP_COVERED_IFACES, &wanted)
    }

    /// Kernel counters summed over CPUs, by name.
    pub fn kernel_stats(&self) -> Result<BTreeMap<String, u64>> {
        self.stats.read()
    }

    /// A reader of the kernel counters that outlives moves of the capture (for metrics).
    pub fn kernel_stats_handle(&self) -> Arc<KernelStats> {
        Arc::clone(&self.stats)
    }

    /// Runs the loaded program `program` (a [`pod_veth::PROGRAMS`] or [`node_iface::PROGRAMS`]
    /// name) once on `frame`, an Ethernet frame, through the kernel's `BPF_PROG_TEST_RUN`: as if
    /// it passed the loopback device of the caller's network namespace, on this CPU. Returns the
    /// kernel's timing of the run. For the microbenchmark of the programs alone
    /// (`probe/examples/tc_test_run.rs`); what the run writes to the ring stays there until
    /// [`Capture::drain_ring`].
    pub fn test_run(&self, program: &'static str, frame: &[u8]) -> Result<std::time::Duration> {
        let prog: &aya::programs::SchedClassifier = self
            .ebpf
            .program(program)
            .ok_or(Error::Program {
                program,
                what: "missing from the object",
                source: aya::programs::ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| Error::Program {
                program,
                what: "is not a tc classifier",
                source,
            })?;
        test_run_classifier(prog, frame).map_err(|source| Error::Program {
            program,
            what: "test run",
            source,
        })
    }

    /// Takes every record in the ring, parsed (the microbenchmark's and its test's reader, in
    /// place of the [`EventLoop`]). Fails once the ring is taken, or on a record that does not
    /// parse.
    pub fn drain_ring(&mut self) -> Result<Vec<raw::Event>> {
        let map = self
            .ebpf
            .map_mut(MAPS.events)
            .ok_or(Error::MissingMap { map: MAPS.events })?;
        let mut ring = aya::maps::RingBuf::try_from(map).map_err(map_err(MAPS.events, "open"))?;
        let mut events = Vec::new();
        while let Some(record) = ring.next() {
            events.push(raw::Event::try_from(&*record)?);
        }
        Ok(events)
    }

    /// Takes the ring buffer and the connection map into an [`EventLoop`]; once only.
    pub fn take_event_loop(&mut self) -> Result<EventLoop> {
        object::take_event_loop(
            &mut self.ebpf,
            &MAPS,
            &self.cfg,
            Arc::clone(&self.interfaces),
            KernelConnections,
        )
    }
}

struct KernelConnections(BpfHashMap<MapData, RawConnectionKey, RawConnection>);

impl ConnectionSource for KernelConnections {
    fn lookup(&self, start: &MsgStart) -> Option<ConnectionState> {
        let raw = self.0.get(&start.key.to_raw(), 0).ok()?;
        ConnectionState::try_from(&raw[..]).ok()
    }
}
