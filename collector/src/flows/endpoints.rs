//! Endpoint metadata: which pod an address is, as the probe reported it, and what that says
//! about where an observation point sits.

use std::sync::Arc;

use clovisor_proto::capture::v1 as capture;
use clovisor_proto::common::v1::{PointKind, Side};
use clovisor_proto::session::encode::EndpointNames;
use clovisor_runtime::workloads::End;
use rustc_hash::FxHashMap;

use crate::metrics::{ConnectionMetrics, FlowSeries};

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
    /// The Kubernetes Service: the first by name of those selecting the pod, or the one
    /// whose ClusterIP this address is; empty when none.
    pub service: String,
}

impl EndpointMeta {
    /// The metadata of an update record.
    pub fn of(u: capture::EndpointUpdate) -> Self {
        Self {
            service: u.services.into_iter().next().unwrap_or_default(),
            pod: u.pod,
            namespace: u.namespace,
            node: u.node,
            workload: u.workload,
            ifindex: u.ifindex,
            interface: u.interface,
        }
    }

    /// The names a session's end carries ([`super::Collected`]).
    pub fn names(&self) -> EndpointNames<'_> {
        EndpointNames {
            pod: &self.pod,
            namespace: &self.namespace,
            node: &self.node,
            workload: &self.workload,
            service: &self.service,
        }
    }

    /// This metadata with `names` instead of its own (its veth kept).
    pub fn with_names(&self, names: EndpointNames<'_>) -> Self {
        Self {
            pod: names.pod.to_owned(),
            namespace: names.namespace.to_owned(),
            node: names.node.to_owned(),
            workload: names.workload.to_owned(),
            service: names.service.to_owned(),
            ifindex: self.ifindex,
            interface: self.interface.clone(),
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

/// One probe's endpoint metadata, by IP address (4 or 16 bytes, as on the wire), shared with
/// the metric series made for it.
pub(super) type Endpoints = FxHashMap<Vec<u8>, Arc<EndpointMeta>>;

/// The metadata of both ends of a flow.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Ends<'a> {
    pub client: Option<&'a Arc<EndpointMeta>>,
    pub server: Option<&'a Arc<EndpointMeta>>,
}

impl<'a> Ends<'a> {
    /// Both ends of `key` in `endpoints`.
    pub fn of(endpoints: &'a Endpoints, key: &capture::FlowKey) -> Self {
        Self {
            client: endpoints.get(&key.client_ip),
            server: endpoints.get(&key.server_ip),
        }
    }

    pub fn client_meta(&self) -> Option<&'a EndpointMeta> {
        self.client.map(|m| &**m)
    }

    pub fn server_meta(&self) -> Option<&'a EndpointMeta> {
        self.server.map(|m| &**m)
    }

    /// Which end the point sits at: a socket knows (the probe reports it); a veth is the end of
    /// its pod.
    pub fn side(&self, point: &capture::ObservationPoint) -> Side {
        if point.kind() == PointKind::Socket {
            point.side()
        } else if owns_veth(point, self.server_meta()) {
            Side::Server
        } else if owns_veth(point, self.client_meta()) {
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
            _ if owns_veth(point, self.server_meta()) => "server_veth",
            _ if owns_veth(point, self.client_meta()) => "client_veth",
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

/// Entries a [`SeriesCache`] holds at most before it starts again empty.
const SERIES_CACHE_MAX: usize = 4096;

/// The flow metric series of each pair of ends at each point, made once per pair rather than
/// once per connection: making one caps and hashes four workload labels. Keyed by the identity
/// of the ends' metadata, which each entry keeps alive, so a key is never reused for other
/// metadata; new metadata for an address is a new key.
#[derive(Debug, Default)]
pub(super) struct SeriesCache {
    entries: FxHashMap<(usize, usize, &'static str), CachedSeries>,
}

#[derive(Debug)]
struct CachedSeries {
    _ends: (Option<Arc<EndpointMeta>>, Option<Arc<EndpointMeta>>),
    series: FlowSeries,
}

impl SeriesCache {
    /// The series of `ends` seen at `observed_at`.
    pub fn get(
        &mut self,
        metrics: &ConnectionMetrics,
        ends: Ends<'_>,
        observed_at: &'static str,
    ) -> &FlowSeries {
        let id = |m: Option<&Arc<EndpointMeta>>| m.map_or(0, |m| Arc::as_ptr(m) as usize);
        let key = (id(ends.client), id(ends.server), observed_at);
        if self.entries.len() >= SERIES_CACHE_MAX && !self.entries.contains_key(&key) {
            self.entries.clear();
        }
        &self
            .entries
            .entry(key)
            .or_insert_with(|| CachedSeries {
                _ends: (ends.client.cloned(), ends.server.cloned()),
                series: metrics.series(
                    ends.client_meta().map(EndpointMeta::end),
                    ends.server_meta().map(EndpointMeta::end),
                    observed_at,
                ),
            })
            .series
    }
}
