//! Endpoint metadata: which pod an address is, as the probe reported it, and what that says
//! about where an observation point sits.

use clovisor_proto::capture::v1 as capture;
use clovisor_proto::common::v1::{PointKind, Side};
use clovisor_runtime::workloads::End;
use rustc_hash::FxHashMap;

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

impl EndpointMeta {
    /// The metadata of an update record.
    pub fn of(u: capture::EndpointUpdate) -> Self {
        Self {
            pod: u.pod,
            namespace: u.namespace,
            node: u.node,
            workload: u.workload,
            ifindex: u.ifindex,
            interface: u.interface,
        }
    }

    /// This end as the workload labels name it.
    pub fn end(&self) -> End<'_> {
        End {
            pod: &self.pod,
            namespace: &self.namespace,
            workload: &self.workload,
        }
    }
}

/// One probe's endpoint metadata, by IP address (4 or 16 bytes, as on the wire).
pub(super) type Endpoints = FxHashMap<Vec<u8>, EndpointMeta>;

/// The metadata of both ends of a flow.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Ends<'a> {
    pub client: Option<&'a EndpointMeta>,
    pub server: Option<&'a EndpointMeta>,
}

impl<'a> Ends<'a> {
    /// Both ends of `key` in `endpoints`.
    pub fn of(endpoints: &'a Endpoints, key: &capture::FlowKey) -> Self {
        Self {
            client: endpoints.get(&key.client_ip),
            server: endpoints.get(&key.server_ip),
        }
    }

    /// Which end the point sits at: a socket knows (the probe reports it); a veth is the end of
    /// its pod.
    pub fn side(&self, point: &capture::ObservationPoint) -> Side {
        if point.kind() == PointKind::Socket {
            point.side()
        } else if owns_veth(point, self.server) {
            Side::Server
        } else if owns_veth(point, self.client) {
            Side::Client
        } else {
            Side::Unspecified
        }
    }

    /// The `observed_at` label of the flow metrics for `point`.
    pub fn observed_at(&self, point: &capture::ObservationPoint) -> &'static str {
        match point.kind() {
            PointKind::Socket => match point.side() {
                Side::Client => "client_socket",
                Side::Server => "server_socket",
                Side::Unspecified => "socket",
            },
            PointKind::Node => "node",
            _ if owns_veth(point, self.server) => "server_veth",
            _ if owns_veth(point, self.client) => "client_veth",
            _ => "veth",
        }
    }
}

/// At a pod veth, the side is the end whose pod owns that veth.
fn owns_veth(point: &capture::ObservationPoint, meta: Option<&EndpointMeta>) -> bool {
    if point.kind() != PointKind::Pod {
        return false;
    }
    meta.is_some_and(|m| {
        (point.ifindex != 0 && m.ifindex == point.ifindex)
            || (!point.interface.is_empty() && m.interface == point.interface)
    })
}
