//! Turns a pcap/pcapng capture into the records a probe would have sent for it.
//!
//! Same semantics as the probe's tc program (`bpf/tc_capture.bpf.c`), which is the reference:
//! the server is the side whose port is traced; a message is every payload byte one side sent
//! before the other side sent any; bytes are counted in sequence space (how far a segment moves
//! the highest sequence number seen in its direction, so an overtaken segment is covered by the
//! one that overtook it), `packets` counts segments that moved it, `retransmits` those that did
//! not (or only partly); FIN or RST ends the flow. Flows still open at the end of the file end
//! as idle. Timestamps come from the capture.
//!
//! Differences kept on purpose (each pinned by a test here): the kernel copies the first
//! `snaplen` bytes of a message's *first packet*, the replay continues the snippet into the
//! message's later packets in sequence order (a segment that overtook another is held until the
//! gap fills, as TCP reassembly would) until it holds `snaplen` bytes; a retransmission moves
//! the kernel's end time of the message, not the replay's; after FIN or RST the replay ignores
//! the connection until a new SYN, where the kernel would start a new flow with any later
//! payload. `integration-tests/tests/replay_matches_kernel.rs` runs the same traffic through
//! both and requires the same records.
//!
//! As the probe does, a TCP connection is announced by a `FlowStart` (its key, the point, the
//! port's hint) before its first message; its messages and its end name it by flow id only.
//!
//! UDP on a traced port follows the probe's contract for datagrams: a flow is one client address
//! and port with one server address and port, announced by a `FlowStart`; each datagram is one
//! message (named by its flow id only, `bytes` its payload length, one packet, no sequence
//! number, its first `snaplen` bytes); the flow ends as idle after [`ReplayConfig::udp_idle_nanos`]
//! without a datagram, or at the end of the file.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::io::Read;
use std::path::Path;

use clovisor_proto::capture::v1::{
    record, Direction, FlowEnd, FlowEndReason, FlowKey, FlowStart, Message, ObservationPoint,
    ProtocolHint, Record, Transport,
};
use clovisor_proto::common::v1::PointKind;
use pcap_parser::traits::PcapNGPacketBlock;
use pcap_parser::{Block, Linktype, PcapBlockOwned, PcapError};

use crate::error::{Error, Result};

/// How to interpret a capture.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// A TCP port in this set marks its side as the server.
    pub traced_ports: BTreeSet<u16>,
    /// Payload bytes kept per message at most.
    pub snaplen: u32,
    /// Observation point stamped on every record.
    pub point: ObservationPoint,
    /// Protocol hint stamped on every message (what the traced port is configured for).
    pub hint: ProtocolHint,
    /// A UDP flow without a datagram for this long ends (as idle) before the next one.
    pub udp_idle_nanos: u64,
    /// Flows (TCP connections and UDP address pairs) open at once at most: a new one beyond
    /// this ends the least recently active ones first (as idle), as the probe's LRU maps do.
    pub max_flows: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            traced_ports: [80, 8080].into_iter().collect(),
            snaplen: 512,
            point: ObservationPoint {
                kind: PointKind::Node as i32,
                ifindex: 0,
                interface: "pcap".to_owned(),
                node: "replay".to_owned(),
                ..ObservationPoint::default()
            },
            hint: ProtocolHint::Http,
            udp_idle_nanos: 30_000_000_000,
            max_flows: 65_536,
        }
    }
}

/// What the replay saw and skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Packets read.
    pub packets: u64,
    /// TCP segments on a traced port.
    pub tcp_segments: u64,
    /// UDP datagrams on a traced port.
    pub udp_datagrams: u64,
    /// Packets that are not IPv4/IPv6 TCP or UDP, or too short to be.
    pub skipped_not_tcp: u64,
    /// pcapng packets naming an interface the file did not describe (their link type unknown).
    pub skipped_no_interface: u64,
    /// IP fragments (the probe does not reassemble them either).
    pub skipped_fragments: u64,
    /// TCP segments and UDP datagrams on no traced port.
    pub skipped_untraced: u64,
    /// Segments carrying only bytes already seen.
    pub retransmits: u64,
    /// Flows (connections with payload, UDP address pairs) seen.
    pub flows: u64,
    /// Flows ended early to keep at most [`ReplayConfig::max_flows`] open.
    pub evicted_flows: u64,
    /// The file ended inside a block.
    pub truncated_file: bool,
}

/// The records of one capture.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    /// Records in the order a probe would have emitted them.
    pub records: Vec<Record>,
    /// Counters.
    pub stats: ReplayStats,
}

/// Reads a capture file, holding all its records in memory (tests, benchmarks); see
/// [`replay_reader`] to stream them.
pub fn replay_file(path: &Path, config: &ReplayConfig) -> Result<Replay> {
    let file = std::fs::File::open(path).map_err(|source| Error::CaptureIo {
        path: path.to_owned(),
        source,
    })?;
    collect(file, config)
}

/// Reads a capture held in memory.
pub fn replay_bytes(data: &[u8], config: &ReplayConfig) -> Result<Replay> {
    collect(data, config)
}

fn collect<R: Read + Send>(input: R, config: &ReplayConfig) -> Result<Replay> {
    let mut records = Vec::new();
    let stats = replay_reader(input, config, |r| records.push(r))?;
    Ok(Replay { records, stats })
}

/// The read buffer: a block must fit in it, so it grows (up to [`MAX_BLOCK_BYTES`]) for a block
/// that does not.
const READ_BUFFER_BYTES: usize = 1 << 20;

/// The largest block read: pcapng allows any size, writers keep packets far below this
/// (dumpcap's snaplen is 256 KiB), and the buffer never holds more.
pub const MAX_BLOCK_BYTES: usize = 16 << 20;

struct Interface {
    linktype: Linktype,
    /// Timestamp units per second (never 0).
    resolution: u64,
    /// Seconds added to every timestamp.
    offset: i64,
}

impl Interface {
    /// A packet's time in Unix nanoseconds, from the block's 64-bit count of `resolution` units
    /// (computed here, checked: the file says what the resolution and offset are).
    fn unix_nanos(&self, high: u32, low: u32) -> u64 {
        let units = (u128::from(high) << 32) | u128::from(low);
        let resolution = u128::from(self.resolution);
        let nanos =
            units / resolution * 1_000_000_000 + units % resolution * 1_000_000_000 / resolution;
        let offset = i128::from(self.offset) * 1_000_000_000;
        u64::try_from((nanos as i128).saturating_add(offset).max(0)).unwrap_or(u64::MAX)
    }
}

/// Reads a capture from `input` block by block and hands `sink` each record as soon as the
/// packets make it, in the order a probe would have sent them. Memory stays bounded by the read
/// buffer and [`ReplayConfig::max_flows`], whatever the capture's length.
///
/// A capture whose end is cut (a writer killed mid-block) ends where it is cut, noted in
/// [`ReplayStats::truncated_file`]; a damaged block is an [`Error::CaptureFormat`] saying where,
/// after the records of the packets before it were handed to `sink`.
pub fn replay_reader<R: Read + Send>(
    input: R,
    config: &ReplayConfig,
    mut sink: impl FnMut(Record),
) -> Result<ReplayStats> {
    let mut reader =
        pcap_parser::create_reader(READ_BUFFER_BYTES, input).map_err(|e| Error::CaptureFormat {
            offset: 0,
            packets: 0,
            detail: describe(&e),
        })?;
    let mut state = Tracker::new(config);
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut legacy: Option<(Linktype, bool)> = None;
    let mut buffer = READ_BUFFER_BYTES;
    let damage = loop {
        let at = reader.consumed();
        let damaged = |detail: String, stats: &ReplayStats| Error::CaptureFormat {
            offset: at as u64,
            packets: stats.packets,
            detail,
        };
        match reader.next() {
            Ok((offset, block)) => {
                match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        legacy = Some((h.network, h.is_nanosecond_precision()));
                    }
                    PcapBlockOwned::Legacy(b) => {
                        let (lt, nanos) = legacy.unwrap_or((Linktype::ETHERNET, false));
                        let frac = if nanos {
                            u64::from(b.ts_usec)
                        } else {
                            u64::from(b.ts_usec) * 1_000
                        };
                        let ts = u64::from(b.ts_sec) * 1_000_000_000 + frac;
                        state.packet(lt, ts, b.data);
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => interfaces.clear(),
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        interfaces.push(Interface {
                            linktype: idb.linktype,
                            resolution: idb.ts_resolution().unwrap_or(1_000_000).max(1),
                            offset: idb.ts_offset(),
                        });
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        match usize::try_from(epb.if_id)
                            .ok()
                            .and_then(|i| interfaces.get(i))
                        {
                            Some(ifc) => {
                                let ts = ifc.unix_nanos(epb.ts_high, epb.ts_low);
                                state.packet(ifc.linktype, ts, epb.packet_data());
                            }
                            None => {
                                state.stats.packets += 1;
                                state.stats.skipped_no_interface += 1;
                            }
                        }
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                        let lt = interfaces
                            .first()
                            .map(|i| i.linktype)
                            .unwrap_or(Linktype::ETHERNET);
                        state.packet(lt, 0, spb.packet_data());
                    }
                    PcapBlockOwned::NG(_) => {}
                }
                reader.consume(offset);
                state.drain(&mut sink);
            }
            Err(PcapError::Eof) => break None,
            Err(PcapError::UnexpectedEof) => {
                state.stats.truncated_file = true;
                break None;
            }
            Err(PcapError::Incomplete(_)) => {
                if reader.reader_exhausted() {
                    state.stats.truncated_file = true;
                    break None;
                }
                if let Err(e) = reader.refill() {
                    break Some(damaged(describe(&e), &state.stats));
                }
            }
            Err(PcapError::BufferTooSmall) => {
                if buffer >= MAX_BLOCK_BYTES || !reader.grow(buffer * 2) {
                    break Some(damaged(
                        format!("a block larger than {MAX_BLOCK_BYTES} bytes"),
                        &state.stats,
                    ));
                }
                buffer *= 2;
                if let Err(e) = reader.refill() {
                    break Some(damaged(describe(&e), &state.stats));
                }
            }
            Err(e) => break Some(damaged(describe(&e), &state.stats)),
        }
    };
    // What the packets before any damage made is handed on, their flows ended.
    state.finish();
    state.drain(&mut sink);
    match damage {
        Some(e) => Err(e),
        None => Ok(state.stats),
    }
}

/// What is wrong with a capture, in words (never the bytes the parser holds).
fn describe<I>(e: &PcapError<I>) -> String {
    match e {
        PcapError::Eof | PcapError::Incomplete(_) | PcapError::UnexpectedEof => {
            "the file is empty or ends inside its header".to_owned()
        }
        PcapError::HeaderNotRecognized => "no pcap or pcapng header: not a capture file".to_owned(),
        PcapError::ReadError => "the file could not be read".to_owned(),
        PcapError::BufferTooSmall => format!("a block larger than {MAX_BLOCK_BYTES} bytes"),
        PcapError::NomError(_, kind) | PcapError::OwnedNomError(_, kind) => {
            format!("a malformed block ({})", kind.description())
        }
    }
}

/// A TCP segment's addressing and flags.
struct Segment<'a> {
    src: Vec<u8>,
    dst: Vec<u8>,
    sport: u16,
    dport: u16,
    seq: u32,
    fin: bool,
    syn: bool,
    rst: bool,
    payload: &'a [u8],
}

/// A UDP datagram's addressing.
struct Datagram<'a> {
    src: Vec<u8>,
    dst: Vec<u8>,
    sport: u16,
    dport: u16,
    payload: &'a [u8],
}

enum Parsed<'a> {
    Tcp(Segment<'a>),
    Udp(Datagram<'a>),
    Fragment,
    Other,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

/// Strips the link layer; returns the IP packet.
fn link(lt: Linktype, data: &[u8]) -> Option<&[u8]> {
    match lt {
        Linktype::ETHERNET => {
            let mut off = 12;
            let mut ethertype = be16(data, off)?;
            while ethertype == 0x8100 || ethertype == 0x88a8 {
                off += 4;
                ethertype = be16(data, off)?;
            }
            matches!(ethertype, 0x0800 | 0x86dd).then(|| data.get(off + 2..))?
        }
        Linktype::LINUX_SLL => data.get(16..),
        Linktype::LINUX_SLL2 => data.get(20..),
        Linktype::NULL | Linktype::LOOP => data.get(4..),
        Linktype::RAW | Linktype::IPV4 | Linktype::IPV6 => Some(data),
        _ => None,
    }
}

fn parse(lt: Linktype, data: &[u8]) -> Parsed<'_> {
    let Some(ip) = link(lt, data) else {
        return Parsed::Other;
    };
    let Some(&first) = ip.first() else {
        return Parsed::Other;
    };
    let (src, dst, proto, l4) = match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0x0f) * 4;
            let (Some(total), Some(frag)) = (be16(ip, 2), be16(ip, 6)) else {
                return Parsed::Other;
            };
            let Some(&proto) = ip.get(9) else {
                return Parsed::Other;
            };
            if ihl < 20 || !matches!(proto, 6 | 17) {
                return Parsed::Other;
            }
            if frag & 0x3fff != 0 {
                return Parsed::Fragment;
            }
            // Ethernet pads short frames: trust the IP length, not the frame length.
            let end = usize::from(total).min(ip.len());
            let (Some(src), Some(dst), Some(l4)) =
                (ip.get(12..16), ip.get(16..20), ip.get(ihl..end))
            else {
                return Parsed::Other;
            };
            (src.to_vec(), dst.to_vec(), proto, l4)
        }
        6 => {
            let (Some(plen), Some(src), Some(dst)) = (be16(ip, 4), ip.get(8..24), ip.get(24..40))
            else {
                return Parsed::Other;
            };
            let end = (40 + usize::from(plen)).min(ip.len());
            let Some(mut next) = ip.get(6).copied() else {
                return Parsed::Other;
            };
            let mut off = 40;
            loop {
                match next {
                    6 | 17 => break,
                    0 | 43 | 60 => {
                        let (Some(&nh), Some(&len)) = (ip.get(off), ip.get(off + 1)) else {
                            return Parsed::Other;
                        };
                        next = nh;
                        off += (usize::from(len) + 1) * 8;
                    }
                    51 => {
                        let (Some(&nh), Some(&len)) = (ip.get(off), ip.get(off + 1)) else {
                            return Parsed::Other;
                        };
                        next = nh;
                        off += (usize::from(len) + 2) * 4;
                    }
                    44 => return Parsed::Fragment,
                    _ => return Parsed::Other,
                }
            }
            let Some(l4) = ip.get(off..end) else {
                return Parsed::Other;
            };
            (src.to_vec(), dst.to_vec(), next, l4)
        }
        _ => return Parsed::Other,
    };
    if proto == 17 {
        let (Some(sport), Some(dport), Some(payload)) = (be16(l4, 0), be16(l4, 2), l4.get(8..))
        else {
            return Parsed::Other;
        };
        return Parsed::Udp(Datagram {
            src,
            dst,
            sport,
            dport,
            payload,
        });
    }
    let (Some(sport), Some(dport), Some(seq), Some(&doff), Some(&flags)) = (
        be16(l4, 0),
        be16(l4, 2),
        be32(l4, 4),
        l4.get(12),
        l4.get(13),
    ) else {
        return Parsed::Other;
    };
    let hlen = usize::from(doff >> 4) * 4;
    let Some(payload) = l4.get(hlen.max(20)..) else {
        return Parsed::Other;
    };
    Parsed::Tcp(Segment {
        src,
        dst,
        sport,
        dport,
        seq,
        fin: flags & 0x01 != 0,
        syn: flags & 0x02 != 0,
        rst: flags & 0x04 != 0,
        payload,
    })
}

type ConnKey = (Vec<u8>, u16, Vec<u8>, u16);

struct Pending {
    direction: Direction,
    start: u64,
    end: u64,
    tcp_seq: u32,
    bytes: u64,
    packets: u32,
    retransmits: u32,
    payload: Vec<u8>,
    /// Sequence number right after the snippet's last byte: the snippet grows in sequence
    /// order, by a segment that reaches it.
    snippet_end: u32,
    /// Segments of the snippet's window that came before the bytes preceding them (reordered
    /// on the way): held until the gap fills, at most [`MAX_HELD`] of them.
    held: Vec<(u32, Vec<u8>)>,
}

/// Out-of-order pieces held per message at most (each within the snippet's window, so at most
/// `MAX_HELD` × snaplen bytes per open flow).
const MAX_HELD: usize = 8;

impl Pending {
    /// Takes `bytes` at sequence number `seq` into the snippet, in sequence order: what
    /// continues it is appended (and then whatever held piece the gap closing now reaches), what
    /// lies beyond a gap but within the first `snaplen` bytes of the message is held.
    fn absorb(&mut self, seq: u32, bytes: &[u8], snaplen: usize) {
        if self.payload.len() >= snaplen {
            self.held.clear();
            return;
        }
        if seq_before(self.snippet_end, seq) {
            let window_end = self.tcp_seq.wrapping_add(snaplen as u32);
            if self.held.len() < MAX_HELD && seq_before(seq, window_end) {
                let keep = (window_end.wrapping_sub(seq) as usize).min(bytes.len());
                self.held.push((seq, bytes[..keep].to_vec()));
            }
            return;
        }
        self.extend(seq, bytes, snaplen);
        // Held pieces the snippet now reaches, in any order they came.
        while let Some(i) = self
            .held
            .iter()
            .position(|(s, _)| !seq_before(self.snippet_end, *s))
        {
            let (s, b) = self.held.swap_remove(i);
            self.extend(s, &b, snaplen);
        }
    }

    /// Appends the part of `bytes` (at `seq`, not after the snippet's end) past the snippet's
    /// end, up to `snaplen` bytes in all.
    fn extend(&mut self, seq: u32, bytes: &[u8], snaplen: usize) {
        let skip = self.snippet_end.wrapping_sub(seq) as usize;
        let fresh = bytes.get(skip..).unwrap_or_default();
        let take = fresh.len().min(snaplen.saturating_sub(self.payload.len()));
        self.payload.extend_from_slice(&fresh[..take]);
        self.snippet_end = self.snippet_end.wrapping_add(take as u32);
    }
}

struct Conn {
    flow_id: u64,
    index: u32,
    /// Time of its last segment with payload.
    last: u64,
    current: Option<Pending>,
    /// Highest sequence number seen per direction (client->server, server->client).
    next_seq: [Option<u32>; 2],
}

/// A UDP flow: its id, next message index and last datagram's time.
struct UdpFlow {
    flow_id: u64,
    index: u32,
    last: u64,
}

struct Tracker<'c> {
    config: &'c ReplayConfig,
    conns: HashMap<ConnKey, Conn>,
    udp: HashMap<ConnKey, UdpFlow>,
    /// Connections ended by FIN or RST whose later segments are ignored (until a new SYN), at
    /// most [`ReplayConfig::max_flows`], the longest closed forgotten first.
    closed: HashSet<ConnKey>,
    closed_order: VecDeque<ConnKey>,
    /// Capture time UDP flows were last checked for idleness.
    udp_swept: u64,
    next_flow_id: u64,
    /// Records made by the last packet, not yet handed on ([`Tracker::drain`]).
    records: Vec<Record>,
    stats: ReplayStats,
}

/// `a` is before `b` in sequence space.
fn seq_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl<'c> Tracker<'c> {
    fn new(config: &'c ReplayConfig) -> Self {
        Self {
            config,
            conns: HashMap::new(),
            udp: HashMap::new(),
            closed: HashSet::new(),
            closed_order: VecDeque::new(),
            udp_swept: 0,
            next_flow_id: 1,
            records: Vec::new(),
            stats: ReplayStats::default(),
        }
    }

    /// Hands the records made so far to `sink`.
    fn drain(&mut self, sink: &mut impl FnMut(Record)) {
        for r in self.records.drain(..) {
            sink(r);
        }
    }

    fn packet(&mut self, lt: Linktype, ts: u64, data: &[u8]) {
        self.stats.packets += 1;
        self.sweep_udp(ts);
        let seg = match parse(lt, data) {
            Parsed::Tcp(s) => s,
            Parsed::Udp(d) => {
                self.datagram(ts, &d);
                return;
            }
            Parsed::Fragment => {
                self.stats.skipped_fragments += 1;
                return;
            }
            Parsed::Other => {
                self.stats.skipped_not_tcp += 1;
                return;
            }
        };
        let Some((key, direction)) = self.orient((&seg.src, seg.sport), (&seg.dst, seg.dport))
        else {
            self.stats.skipped_untraced += 1;
            return;
        };
        self.stats.tcp_segments += 1;
        if seg.syn {
            // A new connection may reuse the 4-tuple of a closed one.
            if self.closed.remove(&key) {
                self.closed_order.retain(|k| k != &key);
            }
        } else if self.closed.contains(&key) {
            return;
        }
        if !seg.payload.is_empty() {
            self.data(&key, direction, ts, &seg);
        }
        if seg.fin || seg.rst {
            let reason = if seg.rst {
                FlowEndReason::Rst
            } else {
                FlowEndReason::Fin
            };
            self.end(&key, reason, ts);
        }
    }

    fn data(&mut self, key: &ConnKey, direction: Direction, ts: u64, seg: &Segment<'_>) {
        let snaplen = self.config.snaplen as usize;
        if !self.conns.contains_key(key) {
            self.make_room();
            self.stats.flows += 1;
            self.conns.insert(
                key.clone(),
                Conn {
                    flow_id: self.next_flow_id,
                    index: 0,
                    last: ts,
                    current: None,
                    next_seq: [None, None],
                },
            );
            self.next_flow_id += 1;
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.last = ts;
        let d = usize::from(direction == Direction::ServerToClient);
        let len = seg.payload.len() as u32;
        let end = seg.seq.wrapping_add(len);
        let same_message =
            |c: &Option<Pending>| c.as_ref().is_some_and(|c| c.direction == direction);
        // As the kernel does: bytes count by how far the segment moves the highest sequence
        // number seen in its direction.
        let mut new_bytes = len;
        if let Some(next) = conn.next_seq[d] {
            if !seq_before(next, end) {
                // Nothing beyond what was seen: a retransmission or an overtaken segment. It
                // never starts a message, even after a direction switch.
                self.stats.retransmits += 1;
                if let Some(cur) = conn.current.as_mut().filter(|c| c.direction == direction) {
                    cur.retransmits += 1;
                    // An overtaken segment still fills its place in the snippet.
                    cur.absorb(seg.seq, seg.payload, snaplen);
                }
                return;
            }
            new_bytes = end.wrapping_sub(next);
            if seq_before(seg.seq, next) && same_message(&conn.current) {
                // Partly seen before: only the new bytes count.
                if let Some(cur) = conn.current.as_mut() {
                    cur.retransmits += 1;
                }
            }
        }
        conn.next_seq[d] = Some(end);
        if !same_message(&conn.current) {
            // First payload of the flow, or a direction switch: a new message starts here, its
            // snippet from the start of this segment.
            if let Some(done) = conn.current.take() {
                push_message(&mut self.records, self.config, key, conn, done);
            }
            let take = seg.payload.len().min(snaplen);
            conn.current = Some(Pending {
                direction,
                start: ts,
                end: ts,
                tcp_seq: seg.seq,
                bytes: u64::from(new_bytes),
                packets: 1,
                retransmits: 0,
                payload: seg.payload[..take].to_vec(),
                snippet_end: seg.seq.wrapping_add(take as u32),
                held: Vec::new(),
            });
            return;
        }
        let Some(cur) = conn.current.as_mut() else {
            return;
        };
        cur.end = ts;
        cur.bytes += u64::from(new_bytes);
        cur.packets += 1;
        // The snippet continues with this segment's bytes past its end; across a gap they wait
        // for the segment that fills it.
        cur.absorb(seg.seq, seg.payload, snaplen);
    }

    /// Which end of a packet between `src:sport` and `dst:dport` is the server (the traced
    /// port's): the flow's key (client first) and the packet's direction; `None` when neither
    /// port is traced.
    fn orient(
        &self,
        (src, sport): (&[u8], u16),
        (dst, dport): (&[u8], u16),
    ) -> Option<(ConnKey, Direction)> {
        let ports = &self.config.traced_ports;
        if ports.contains(&dport) {
            Some((
                (src.to_vec(), sport, dst.to_vec(), dport),
                Direction::ClientToServer,
            ))
        } else if ports.contains(&sport) {
            Some((
                (dst.to_vec(), dport, src.to_vec(), sport),
                Direction::ServerToClient,
            ))
        } else {
            None
        }
    }

    /// One datagram: one message of its flow, announced by a `FlowStart` when the flow is new
    /// (or was idle for longer than the probe keeps it).
    fn datagram(&mut self, ts: u64, d: &Datagram<'_>) {
        let Some((key, direction)) = self.orient((&d.src, d.sport), (&d.dst, d.dport)) else {
            self.stats.skipped_untraced += 1;
            return;
        };
        self.stats.udp_datagrams += 1;
        let idle = self
            .udp
            .get(&key)
            .is_some_and(|f| ts.saturating_sub(f.last) > self.config.udp_idle_nanos);
        if idle {
            self.end_udp(&key);
        }
        if !self.udp.contains_key(&key) {
            self.make_room();
            self.stats.flows += 1;
            let flow_id = self.next_flow_id;
            self.next_flow_id += 1;
            self.records.push(Record {
                kind: Some(record::Kind::FlowStart(FlowStart {
                    flow_id,
                    flow: Some(flow_key(&key, Transport::Udp)),
                    point: Some(self.config.point.clone()),
                    protocol: self.config.hint as i32,
                    counters_only: false,
                    wire_point: None,
                })),
            });
            self.udp.insert(
                key.clone(),
                UdpFlow {
                    flow_id,
                    index: 0,
                    last: ts,
                },
            );
        }
        let Some(flow) = self.udp.get_mut(&key) else {
            return;
        };
        let take = d.payload.len().min(self.config.snaplen as usize);
        self.records.push(Record {
            kind: Some(record::Kind::Message(Message {
                flow: None,
                point: None,
                flow_id: flow.flow_id,
                index: flow.index,
                direction: direction as i32,
                to_pod: direction == Direction::ClientToServer,
                start_unix_nanos: ts,
                end_unix_nanos: ts,
                tcp_seq: 0,
                bytes: d.payload.len() as u64,
                packets: 1,
                retransmits: 0,
                payload: d.payload[..take].to_vec().into(),
                protocol: ProtocolHint::Unspecified as i32,
                partial: false,
                wire: None,
                segments: Vec::new(),
            })),
        });
        flow.index += 1;
        flow.last = ts;
    }

    /// Ends a UDP flow as idle, at its last datagram's time.
    fn end_udp(&mut self, key: &ConnKey) {
        let Some(flow) = self.udp.remove(key) else {
            return;
        };
        self.records.push(Record {
            kind: Some(record::Kind::FlowEnd(FlowEnd {
                flow: None,
                point: None,
                flow_id: flow.flow_id,
                reason: FlowEndReason::Idle as i32,
                unix_nanos: flow.last,
                messages: flow.index,
                srtt_us: 0,
                total_retransmits: 0,
            })),
        });
    }

    fn end(&mut self, key: &ConnKey, reason: FlowEndReason, ts: u64) {
        let Some(mut conn) = self.conns.remove(key) else {
            return;
        };
        if let Some(done) = conn.current.take() {
            push_message(&mut self.records, self.config, key, &mut conn, done);
        }
        // A flow that sent messages was announced by a `FlowStart`: its end names it by id, as
        // the probe's does; one that never did brings its key (nothing announced it).
        let announced = conn.index > 0;
        self.records.push(Record {
            kind: Some(record::Kind::FlowEnd(FlowEnd {
                flow: (!announced).then(|| flow_key(key, Transport::Tcp)),
                point: (!announced).then(|| self.config.point.clone()),
                flow_id: conn.flow_id,
                reason: reason as i32,
                unix_nanos: ts,
                messages: conn.index,
                // A capture file has no socket to ask.
                srtt_us: 0,
                total_retransmits: 0,
            })),
        });
        // A flow ended as idle (evicted, or the capture's end) may still send: the probe starts
        // a new flow with its next payload, and so does the replay.
        if reason != FlowEndReason::Idle && self.closed.insert(key.clone()) {
            self.closed_order.push_back(key.clone());
        }
        while self.closed_order.len() > self.config.max_flows {
            if let Some(k) = self.closed_order.pop_front() {
                self.closed.remove(&k);
            }
        }
    }

    /// Ends the UDP flows idle at `ts`, at most once per idle time of capture time (flows are
    /// otherwise only ended by their next datagram: a capture of many short-lived flows would
    /// hold them all).
    fn sweep_udp(&mut self, ts: u64) {
        let idle = self.config.udp_idle_nanos;
        if ts.saturating_sub(self.udp_swept) <= idle {
            return;
        }
        self.udp_swept = ts;
        let mut done: Vec<(u64, ConnKey)> = self
            .udp
            .iter()
            .filter(|(_, f)| ts.saturating_sub(f.last) > idle)
            .map(|(k, f)| (f.flow_id, k.clone()))
            .collect();
        done.sort_by_key(|(id, _)| *id);
        for (_, key) in done {
            self.end_udp(&key);
        }
    }

    /// Before a new flow: when [`ReplayConfig::max_flows`] are open, ends the least recently
    /// active eighth of them (at least one), as idle.
    fn make_room(&mut self) {
        let open = self.conns.len() + self.udp.len();
        if open < self.config.max_flows.max(1) {
            return;
        }
        let mut by_age: Vec<(u64, u64, ConnKey, bool)> = self
            .conns
            .iter()
            .map(|(k, c)| (c.last, c.flow_id, k.clone(), true))
            .chain(
                self.udp
                    .iter()
                    .map(|(k, f)| (f.last, f.flow_id, k.clone(), false)),
            )
            .collect();
        by_age.sort_by_key(|(last, id, _, _)| (*last, *id));
        for (last, _, key, tcp) in by_age.into_iter().take((open / 8).max(1)) {
            self.stats.evicted_flows += 1;
            if tcp {
                self.end(&key, FlowEndReason::Idle, last);
            } else {
                self.end_udp(&key);
            }
        }
    }

    /// Ends every flow still open (the capture is over).
    fn finish(&mut self) {
        let mut open: Vec<(ConnKey, u64, u64)> = self
            .conns
            .iter()
            .map(|(k, c)| {
                let end = c.current.as_ref().map(|p| p.end).unwrap_or_default();
                (k.clone(), c.flow_id, end)
            })
            .collect();
        open.sort_by_key(|(_, id, _)| *id);
        for (key, _, ts) in open {
            self.end(&key, FlowEndReason::Idle, ts);
        }
        let mut udp: Vec<(ConnKey, u64)> = self
            .udp
            .iter()
            .map(|(k, f)| (k.clone(), f.flow_id))
            .collect();
        udp.sort_by_key(|(_, id)| *id);
        for (key, _) in udp {
            self.end_udp(&key);
        }
    }
}

fn flow_key(key: &ConnKey, transport: Transport) -> FlowKey {
    FlowKey {
        client_ip: key.0.clone(),
        server_ip: key.2.clone(),
        client_port: u32::from(key.1),
        server_port: u32::from(key.3),
        transport: transport as i32,
    }
}

/// Appends the message `p` of TCP connection `conn`, announced by a `FlowStart` when it is the
/// connection's first (as the probe announces a flow once, and names it by id from then on).
fn push_message(
    records: &mut Vec<Record>,
    config: &ReplayConfig,
    key: &ConnKey,
    conn: &mut Conn,
    p: Pending,
) {
    if conn.index == 0 {
        records.push(Record {
            kind: Some(record::Kind::FlowStart(FlowStart {
                flow_id: conn.flow_id,
                flow: Some(flow_key(key, Transport::Tcp)),
                point: Some(config.point.clone()),
                protocol: config.hint as i32,
                counters_only: false,
                wire_point: None,
            })),
        });
    }
    records.push(message(conn.flow_id, conn.index, p));
    conn.index += 1;
}

fn message(flow_id: u64, index: u32, p: Pending) -> Record {
    Record {
        kind: Some(record::Kind::Message(Message {
            flow: None,
            point: None,
            flow_id,
            index,
            direction: p.direction as i32,
            // As if observed at the server pod's veth: requests travel towards the pod.
            to_pod: p.direction == Direction::ClientToServer,
            start_unix_nanos: p.start,
            end_unix_nanos: p.end,
            tcp_seq: p.tcp_seq,
            bytes: p.bytes,
            packets: p.packets,
            retransmits: p.retransmits,
            payload: p.payload.into(),
            // The flow's hint travels in its `FlowStart`.
            protocol: ProtocolHint::Unspecified as i32,
            partial: false,
            wire: None,
            segments: Vec::new(),
        })),
    }
}

#[cfg(test)]
mod tests;
