//! The `capture.v1` records the assembler emits, built from the typed kernel events of
//! [`crate::capture::raw`]: flow keys, observation points, `FlowStart`, `Message` and `FlowEnd`.

use std::net::IpAddr;

use bytes::Bytes;
use clovisor_proto::capture::v1::{
    record, FlowEnd as FlowEndRecord, FlowKey, FlowStart, ObservationPoint, ProtocolHint, Record,
    Segment, Transport, WireCounters,
};
use clovisor_proto::common::v1::{PointKind, Side};
use clovisor_proto::hops::MessageFields;

use crate::capture::raw::{ConnectionKey, FlowEnd, MsgCounters, MsgStart, SocketOwner};
use crate::clock::BootClock;

/// The flow key of the wire contract.
pub fn flow_key(key: &ConnectionKey, transport: Transport) -> FlowKey {
    FlowKey {
        client_ip: ip_bytes(key.client.ip()),
        server_ip: ip_bytes(key.server.ip()),
        client_port: u32::from(key.client.port()),
        server_port: u32::from(key.server.port()),
        transport: transport as i32,
    }
}

/// 4 bytes for IPv4, 16 for IPv6, in network order.
fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// A socket observation point.
pub fn socket_point(owner: &SocketOwner, node: &str) -> ObservationPoint {
    ObservationPoint {
        kind: PointKind::Socket as i32,
        node: node.to_owned(),
        pid: owner.pid,
        comm: owner.comm.to_string_lossy(),
        netns_inode: u64::from(owner.netns),
        side: Side::from(owner.side) as i32,
        ..ObservationPoint::default()
    }
}

/// A tc observation point (pod veth or node interface).
pub fn interface_point(
    kind: PointKind,
    ifindex: u32,
    interface: &str,
    node: &str,
) -> ObservationPoint {
    ObservationPoint {
        kind: kind as i32,
        ifindex,
        interface: interface.to_owned(),
        node: node.to_owned(),
        ..ObservationPoint::default()
    }
}

/// What a flow is, beside its connection and point: announced once, in its `FlowStart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowTraits {
    /// What its port is configured for.
    pub protocol: ProtocolHint,
    /// TCP or UDP.
    pub transport: Transport,
    /// A covered veth's view: timings and counters only, no payload.
    pub counters_only: bool,
    /// A socket's flow whose pod veth is carried: the veth's ifindex (`FlowStart.wire_point`).
    pub wire_ifindex: Option<u32>,
}

/// The `FlowStart` of flow `flow_id`: its connection, where it is observed (and where the
/// counters its messages carry besides their own were, `wire_point`), and its traits.
pub fn flow_start(
    flow_id: u64,
    key: &ConnectionKey,
    point: ObservationPoint,
    wire_point: Option<ObservationPoint>,
    traits: FlowTraits,
) -> Record {
    Record {
        kind: Some(record::Kind::FlowStart(FlowStart {
            flow_id,
            flow: Some(flow_key(key, traits.transport)),
            point: Some(point),
            protocol: traits.protocol as i32,
            counters_only: traits.counters_only,
            wire_point,
        })),
    }
}

/// The record of message `start` with its final (or current) counters `fin` and its pod veth's
/// (`wire`, when its socket carries them); `payload` is `start`'s. It names its flow by id only:
/// the flow's key, point and protocol hint went out once, in the flow's `FlowStart`.
pub fn message(
    start: &MsgStart,
    payload: Bytes,
    segments: Vec<Segment>,
    counters: (&MsgCounters, Option<&MsgCounters>),
    partial: bool,
    clock: &BootClock,
) -> Record {
    // The fields as the encoder reads them, with the owned payload and segments in place of
    // the (empty) borrowed ones: one mapping from the pending message to the record.
    let mut m = message_fields(start, &[], &[], counters, partial, clock).to_message();
    m.payload = payload;
    m.segments = segments;
    Record {
        kind: Some(record::Kind::Message(m)),
    }
}

/// The fields of [`message`]'s record, borrowed from `start`, `payload` and `segments`: what the
/// event loop encodes straight into its chunk ([`clovisor_proto::hops::ChunkBuilder::push_message`])
/// without building the record.
pub fn message_fields<'a>(
    start: &MsgStart,
    payload: &'a [u8],
    segments: &'a [Segment],
    (fin, wire): (&MsgCounters, Option<&MsgCounters>),
    partial: bool,
    clock: &BootClock,
) -> MessageFields<'a> {
    MessageFields {
        flow_id: start.flow_id,
        index: start.msg.index,
        direction: start.msg.direction as i32,
        to_pod: start.msg.to_pod,
        start_unix_nanos: clock.to_unix_ns(start.msg.start_ns),
        end_unix_nanos: clock.to_unix_ns(fin.last_ns.max(start.msg.start_ns)),
        tcp_seq: start.msg.tcp_seq,
        bytes: fin.bytes,
        packets: fin.packets,
        retransmits: fin.retransmits,
        payload,
        partial,
        wire: wire.map(|w| WireCounters {
            start_unix_nanos: clock.to_unix_ns(w.start_ns),
            end_unix_nanos: clock.to_unix_ns(w.last_ns.max(w.start_ns)),
            tcp_seq: w.tcp_seq,
            bytes: w.bytes,
            packets: w.packets,
            retransmits: w.retransmits,
        }),
        segments,
    }
}

/// The record of the end of a flow, named by its id as in [`message`].
pub fn flow_end(end: &FlowEnd, clock: &BootClock) -> Record {
    Record {
        kind: Some(record::Kind::FlowEnd(FlowEndRecord {
            flow: None,
            point: None,
            flow_id: end.flow_id,
            reason: end.reason as i32,
            unix_nanos: clock.to_unix_ns(end.ts_ns),
            messages: end.last.map_or(0, |l| l.index.saturating_add(1)),
            srtt_us: end.tcp.map_or(0, |t| t.srtt_us),
            total_retransmits: end.tcp.map_or(0, |t| t.total_retransmits),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::raw::testing::{owner, v4_key, v6_key};
    use crate::capture::raw::SocketSide;

    #[test]
    fn flow_keys_carry_four_or_sixteen_address_bytes() {
        let fk = flow_key(&v6_key(), Transport::Tcp);
        assert_eq!(fk.client_ip.len(), 16, "IPv6 flow key carries 16 bytes");
        assert_eq!(
            flow_key(&v4_key(), Transport::Tcp).server_ip,
            vec![10, 0, 0, 1],
            "IPv4 flow key carries 4 bytes"
        );
    }

    #[test]
    fn socket_point_fields() {
        let p = socket_point(&owner(SocketSide::Server), "node-a");
        assert_eq!(
            (
                p.kind,
                p.pid,
                p.comm.as_str(),
                p.netns_inode,
                p.side(),
                p.node.as_str()
            ),
            (
                PointKind::Socket as i32,
                4242,
                "nginx",
                4_026_532_001,
                Side::Server,
                "node-a"
            ),
            "socket point fields: {p:?}"
        );
        assert_eq!(p.ifindex, 0, "a socket point has no interface");
    }
}
