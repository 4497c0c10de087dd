//! Building a [`Session`] from a paired exchange.

use clovisor_proto::capture::v1 as capture;
use clovisor_proto::common::v1::{PointKind, Side};
use clovisor_proto::session::v1::{Counters, Endpoint, Http, Observation, Protocol, Session};

use super::{Ctx, Flow, MessageStats};
use crate::decode::{RequestHead, ResponseHead};

/// Pod metadata of one IP, as the probe reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointMeta {
    /// Pod name.
    pub pod: String,
    /// Pod namespace.
    pub namespace: String,
    /// Node the pod runs on.
    pub node: String,
    /// Owning workload (Deployment, StatefulSet, ...).
    pub workload: String,
    /// Host-side veth ifindex of the pod, when traced.
    pub ifindex: u32,
    /// Host-side veth name of the pod, when traced.
    pub interface: String,
}

/// Everything one session is made of.
pub(super) struct Parts<'a> {
    pub request: MessageStats,
    pub response: Option<MessageStats>,
    pub head: &'a RequestHead,
    pub response_head: Option<&'a ResponseHead>,
    /// Position of this request among those pipelined in one message.
    pub position: usize,
    /// How many requests the message held.
    pub pipelined: usize,
    pub incomplete: bool,
}

fn endpoint(ip: &[u8], port: u32, meta: Option<&EndpointMeta>) -> Endpoint {
    let meta = meta.cloned().unwrap_or_default();
    Endpoint {
        ip: ip.to_vec(),
        port,
        pod: meta.pod,
        namespace: meta.namespace,
        node: meta.node,
        workload: meta.workload,
    }
}

/// At a pod veth, the side is the end whose pod owns that veth.
pub(super) fn owns_veth(point: &capture::ObservationPoint, meta: Option<&EndpointMeta>) -> bool {
    if point.kind() != PointKind::Pod {
        return false;
    }
    meta.is_some_and(|m| {
        (point.ifindex != 0 && m.ifindex == point.ifindex)
            || (!point.interface.is_empty() && m.interface == point.interface)
    })
}

/// Builds the session for `p` and appends it to the context's output.
pub(super) fn emit(ctx: &mut Ctx<'_>, flow: &Flow, p: Parts<'_>) {
    let key = &flow.key;
    let client_meta = ctx.endpoints.get(&key.client_ip);
    let server_meta = ctx.endpoints.get(&key.server_ip);
    let kind = flow.point.kind();
    // A socket knows which end it is (the probe reports it); a veth is the end of its pod.
    let side = if kind == PointKind::Socket {
        flow.point.side()
    } else if owns_veth(&flow.point, server_meta) {
        Side::Server
    } else if owns_veth(&flow.point, client_meta) {
        Side::Client
    } else {
        Side::Unspecified
    };
    let resp = p.response.unwrap_or_default();
    let id = if p.position == 0 {
        format!("{}/{:x}/{}", ctx.probe_id, ctx.flow_id, p.request.index)
    } else {
        format!(
            "{}/{:x}/{}.{}",
            ctx.probe_id, ctx.flow_id, p.request.index, p.position
        )
    };
    // Counters cannot be split between pipelined exchanges: the first carries the message's.
    let (req_bytes, req_packets, resp_bytes, resp_packets) = if p.position == 0 {
        (p.request.bytes, p.request.packets, resp.bytes, resp.packets)
    } else {
        (0, 0, 0, 0)
    };
    let node = if flow.point.node.is_empty() {
        ctx.node.to_owned()
    } else {
        flow.point.node.clone()
    };
    let h = p.head;
    let r = p.response_head;
    let mut attributes = std::collections::HashMap::new();
    if h.truncated {
        attributes.insert(
            "clovisor.http.request_truncated".to_owned(),
            "true".to_owned(),
        );
    }
    if r.is_some_and(|r| r.truncated) {
        attributes.insert(
            "clovisor.http.response_truncated".to_owned(),
            "true".to_owned(),
        );
    }
    if p.pipelined > 1 {
        attributes.insert(
            "clovisor.http.pipeline_position".to_owned(),
            p.position.to_string(),
        );
    }
    if !p.incomplete && r.is_none() {
        attributes.insert(
            "clovisor.http.response_undecoded".to_owned(),
            "true".to_owned(),
        );
    }
    let session = Session {
        id,
        protocol: Protocol::Http1 as i32,
        client: Some(endpoint(&key.client_ip, key.client_port, client_meta)),
        server: Some(endpoint(&key.server_ip, key.server_port, server_meta)),
        observations: vec![Observation {
            kind: kind as i32,
            interface: flow.point.interface.clone(),
            node,
            probe_id: ctx.probe_id.to_owned(),
            side: side as i32,
            request_start_unix_nanos: p.request.start,
            request_end_unix_nanos: p.request.end,
            response_start_unix_nanos: resp.start,
            response_end_unix_nanos: resp.end,
            request_tcp_seq: p.request.tcp_seq,
            response_tcp_seq: resp.tcp_seq,
            request_bytes: req_bytes,
            response_bytes: resp_bytes,
            request_packets: u64::from(req_packets),
            response_packets: u64::from(resp_packets),
            retransmits: if p.position == 0 {
                p.request.retransmits.saturating_add(resp.retransmits)
            } else {
                0
            },
            pid: flow.point.pid,
            comm: flow.point.comm.clone(),
            netns_inode: flow.point.netns_inode,
        }],
        start_unix_nanos: p.request.start,
        end_unix_nanos: if p.response.is_some() {
            resp.end
        } else {
            p.request.end
        },
        bytes: Some(Counters {
            request: req_bytes,
            response: resp_bytes,
        }),
        packets: Some(Counters {
            request: u64::from(req_packets),
            response: u64::from(resp_packets),
        }),
        http: Some(Http {
            method: h.method.clone(),
            target: h.target.clone(),
            host: h.host.clone().unwrap_or_default(),
            user_agent: h.user_agent.clone().unwrap_or_default(),
            status_code: r.map(|r| u32::from(r.status)).unwrap_or_default(),
            version: h.version.clone(),
            request_id: h.request_id.clone().unwrap_or_default(),
            envoy_decorator: h.envoy_decorator.clone().unwrap_or_default(),
            reason: r.map(|r| r.reason.clone()).unwrap_or_default(),
            request_content_length: h.content_length.unwrap_or_default(),
            response_content_length: r.and_then(|r| r.content_length).unwrap_or_default(),
            response_chunked: r.is_some_and(|r| r.chunked),
        }),
        trace: h.trace.clone(),
        incomplete: p.incomplete,
        attributes,
    };
    let outcome = if p.incomplete {
        "incomplete"
    } else {
        "complete"
    };
    ctx.metrics
        .sessions_emitted
        .get_or_create(&crate::metrics::OutcomeLabel { outcome })
        .inc();
    ctx.out.push(session);
}
