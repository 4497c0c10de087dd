//! What every target source shares: keeping the capture's attachments, its traced-ports map
//! and the collector's pod metadata in step with a *desired set* of pods. A source computes
//! the whole set it wants each time (from a namespace scan, from the Kubernetes stores) and
//! hands it to [`Reconciler::apply`], which is idempotent: applying the same set twice
//! changes nothing, so a relist or a rescan can never duplicate or lose an attachment.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use clovisor_config::LiveConfig;
use clovisor_proto::capture::v1::{record, EndpointUpdate, ProtocolHint, Record};
use clovisor_proto::hops::{ChunkBuilder, RecordChunk};
use tokio::sync::{mpsc, watch};

use crate::capture::egress_maps::EgressEntry;
use crate::capture::socket_object::SocketCapture;
use crate::capture::Capture;
use crate::discovery::HostVeth;
use crate::hooks::node_iface::{self, NodeInterfaces};
use crate::hooks::socket::VethPayload;
use crate::metrics::ProbeMetrics;

/// Who a traced pod is, as the collector is told.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodMeta {
    /// Pod name.
    pub pod: String,
    /// Kubernetes namespace (empty outside Kubernetes).
    pub namespace: String,
    /// Owning workload (Deployment, StatefulSet, …; the pod itself when it has no owner).
    pub workload: String,
    /// The Kubernetes Services selecting it, sorted by name (empty outside Kubernetes).
    pub services: Vec<String>,
}

/// The Service a ClusterIP belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceRef {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
}

/// Service addresses (ClusterIPs) and their Service.
pub type ServiceAddresses = BTreeMap<IpAddr, ServiceRef>;

/// One pod to trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Identity of this pod instance (Kubernetes UID, netns name): a new instance under the
    /// same key is detached and attached again.
    pub instance: String,
    /// Metadata sent with its addresses.
    pub meta: PodMeta,
    /// Its host-side veth.
    pub veth: HostVeth,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// Inode of its network namespace: its processes are traced at the socket point. `None`
    /// when it is not known (the pod was found through a host route), and then they are not.
    pub netns_inode: Option<u32>,
    /// Server ports it exposes and what they speak.
    pub ports: BTreeMap<u16, ProtocolHint>,
}

/// The pods to trace, by a key unique per pod (`namespace/name`, netns name).
pub type Desired = BTreeMap<String, Target>;

/// What is traced right now, for tests and diagnostics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetsStatus {
    /// Traced pods: key → host veth name.
    pub attached: BTreeMap<String, String>,
    /// The traced-ports map as read back from the kernel.
    pub traced_ports: BTreeMap<u16, ProtocolHint>,
    /// Pods seen but not traced: key → why.
    pub skipped: BTreeMap<String, String>,
    /// Number of completed reconciliations.
    pub generation: u64,
}

/// Keeps the capture in step with the desired set; see the module docs.
#[derive(Debug)]
pub struct Reconciler {
    capture: Capture,
    out: mpsc::Sender<RecordChunk>,
    metrics: Arc<ProbeMetrics>,
    node: String,
    extra_ports: BTreeMap<u16, ProtocolHint>,
    current: Desired,
    traced: BTreeMap<u16, ProtocolHint>,
    status: watch::Sender<TargetsStatus>,
    /// The live configuration (snaplen, egress rules).
    live: watch::Receiver<LiveConfig>,
    /// False once the configuration source is gone (its last configuration stays applied).
    live_open: bool,
    /// Snaplen from flags, used while the live configuration sets none.
    base_snaplen: u32,
    /// Egress entries in the kernel now.
    egress: BTreeMap<EgressEntry, ProtocolHint>,
    /// Node interfaces (uplinks) to trace the traced pods' traffic on.
    node_interfaces: NodeInterfaces,
    /// Pod addresses the node-interface programs filter on now.
    monitored_ips: BTreeSet<IpAddr>,
    /// Node interfaces an attach failed on, warned about once.
    node_failures: BTreeSet<String>,
    /// The socket point, when it runs.
    socket: Option<SocketCapture>,
    /// What pod veths capture where the socket point covers their pod.
    veth_payload: VethPayload,
    /// Pod veths (ifindex) whose new connections carry counters only, as in the kernel now.
    covered: BTreeSet<u32>,
    /// Service addresses the collector was told of.
    service_addresses: ServiceAddresses,
    /// The queue to the uplink stayed full the last time endpoint updates waited for room: the
    /// next are dropped (counted) without waiting, until one finds room.
    endpoints_blocked: AtomicBool,
}

impl Reconciler {
    /// Takes over `capture`; endpoint updates go to `out`, reported with `node`.
    /// `extra_ports` are traced whatever the pods expose; `live` supplies snaplen and egress
    /// rules, applied with every reconciliation and by [`Self::apply_live`].
    pub fn new(
        capture: Capture,
        out: mpsc::Sender<RecordChunk>,
        metrics: Arc<ProbeMetrics>,
        node: String,
        extra_ports: BTreeMap<u16, ProtocolHint>,
        live: watch::Receiver<LiveConfig>,
    ) -> Self {
        Self {
            base_snaplen: capture.config().snaplen,
            live,
            live_open: true,
            egress: BTreeMap::new(),
            node_interfaces: NodeInterfaces::None,
            monitored_ips: BTreeSet::new(),
            node_failures: BTreeSet::new(),
            socket: None,
            veth_payload: VethPayload::Always,
            covered: BTreeSet::new(),
            service_addresses: ServiceAddresses::new(),
            endpoints_blocked: AtomicBool::new(false),
            capture,
            out,
            metrics,
            node,
            extra_ports,
            current: Desired::new(),
            traced: BTreeMap::new(),
            status: watch::Sender::new(TargetsStatus::default()),
        }
    }

    /// Also traces the traced pods' traffic on these node interfaces (default: none).
    pub fn with_node_interfaces(mut self, node_interfaces: NodeInterfaces) -> Self {
        self.node_interfaces = node_interfaces;
        self
    }

    /// Also keeps the socket point in step: the traced pods' namespaces, the traced ports and
    /// the snaplen; `veth_payload` says whether the veths of pods it covers still copy payload.
    pub fn with_socket_point(
        mut self,
        socket: Option<SocketCapture>,
        veth_payload: VethPayload,
    ) -> Self {
        self.socket = socket;
        self.veth_payload = veth_payload;
        self
    }

    /// Follows what is traced after each reconciliation.
    pub fn subscribe(&self) -> watch::Receiver<TargetsStatus> {
        self.status.subscribe()
    }

    /// The pods traced now.
    pub fn current(&self) -> &Desired {
        &self.current
    }

    /// Brings attachments, traced ports and the collector's metadata to `desired`; `skipped`
    /// (pods deliberately not traced, with why) is only reported. A pod whose attach fails is
    /// left out and tried again by the next call.
    pub async fn apply(&mut self, desired: Desired, skipped: BTreeMap<String, String>) {
        // Ports and namespaces first: by the time a new pod's veth is attached, its ports are
        // traced and its processes watched, so its first exchange is not missed.
        self.update_traced_ports(&desired);
        self.apply_socket_point(&desired);
        // Gone, or a new instance or veth under the same key: detach, retract its addresses.
        let gone: Vec<String> = self
            .current
            .iter()
            .filter(|(key, t)| {
                desired
                    .get(*key)
                    .is_none_or(|d| d.veth != t.veth || d.instance != t.instance)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            if let Some(t) = self.current.remove(&key) {
                match self.capture.detach(&t.veth.name) {
                    Ok(()) => {
                        tracing::info!(pod = %key, interface = %t.veth.name, "pod gone; detached")
                    }
                    // The veth usually went with the pod; the hook is forgotten either way.
                    Err(e) => {
                        tracing::info!(pod = %key, interface = %t.veth.name, error = %e, "pod gone; detach found nothing to remove")
                    }
                }
                for ip in &t.ips {
                    self.send_endpoint(&t, *ip, true).await;
                }
            }
        }
        for (key, want) in desired {
            if let Some(have) = self.current.get(&key) {
                if have.ips != want.ips || have.meta != want.meta {
                    for ip in have.ips.iter().filter(|ip| !want.ips.contains(ip)) {
                        self.send_endpoint(have, *ip, true).await;
                    }
                    for ip in &want.ips {
                        self.send_endpoint(&want, *ip, false).await;
                    }
                }
                self.current.insert(key, want);
                continue;
            }
            // The collector learns who the pod is before its first record can reach it.
            for ip in &want.ips {
                self.send_endpoint(&want, *ip, false).await;
            }
            match self.capture.attach_pod_veth(&want.veth.name) {
                Ok(mode) => {
                    tracing::info!(pod = %key, interface = %want.veth.name, ?mode, ips = ?want.ips, "tracing pod");
                    self.current.insert(key, want);
                }
                Err(e) => {
                    tracing::warn!(pod = %key, interface = %want.veth.name, error = %e, "attach failed; retrying");
                    for ip in &want.ips {
                        self.send_endpoint(&want, *ip, true).await;
                    }
                }
            }
        }
        self.apply_live();
        self.apply_covered();
        self.apply_node_point();
        self.metrics.set_attached(self.capture.attached().len());
        let traced_ports = self.capture.traced_ports().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read back the traced ports");
            BTreeMap::new()
        });
        let attached = self
            .current
            .iter()
            .map(|(k, t)| (k.clone(), t.veth.name.clone()))
            .collect();
        self.status.send_modify(|s| {
            s.attached = attached;
            s.traced_ports = traced_ports;
            s.skipped = skipped;
            s.generation += 1;
        });
    }

    /// The union of every wanted pod's ports and the extra ports; a port two pods declare
    /// differently gets the more specific protocol.
    fn update_traced_ports(&mut self, desired: &Desired) {
        let mut wanted = self.extra_ports.clone();
        for t in desired.values() {
            for (port, hint) in &t.ports {
                let e = wanted.entry(*port).or_insert(*hint);
                *e = more_specific(*e, *hint);
            }
        }
        if wanted == self.traced {
            return;
        }
        match self.capture.set_traced_ports(&wanted) {
            Ok(()) => {
                tracing::info!(ports = ?wanted, "traced ports");
                self.traced = wanted;
            }
            Err(e) => tracing::error!(error = %e, "cannot update traced ports"),
        }
    }

    /// Keeps the node-interface point in step: the traced pods' addresses its programs filter
    /// on, and the uplinks they are attached to.
    fn apply_node_point(&mut self) {
        let ips: BTreeSet<IpAddr> = self
            .current
            .values()
            .flat_map(|t| t.ips.iter().copied())
            .collect();
        if ips != self.monitored_ips {
            match self.capture.set_monitored_ips(&ips) {
                Ok(()) => self.monitored_ips = ips,
                Err(e) => tracing::error!(error = %e, "cannot update the monitored pod addresses"),
            }
        }
        let pod_veths: BTreeSet<String> =
            self.current.values().map(|t| t.veth.name.clone()).collect();
        let wanted: Vec<String> = match node_iface::resolve(&self.node_interfaces, &pod_veths) {
            Ok(found) => found
                .into_iter()
                .filter(|n| !pod_veths.contains(n))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot find the node's uplink interfaces");
                return;
            }
        };
        let attached = self.capture.node_interfaces();
        for name in attached.iter().filter(|a| !wanted.contains(a)) {
            match self.capture.detach(name) {
                Ok(()) => {
                    tracing::info!(interface = %name, "node interface no longer wanted; detached")
                }
                Err(e) => tracing::warn!(interface = %name, error = %e, "detach failed"),
            }
        }
        for name in &wanted {
            match self.capture.attach_node_interface(name) {
                Ok(mode) => {
                    if !attached.contains(name) {
                        tracing::info!(interface = %name, ?mode, "tracing node interface");
                    }
                    self.node_failures.remove(name);
                }
                Err(e) if self.node_failures.insert(name.clone()) => {
                    tracing::warn!(interface = %name, error = %e, "cannot attach to node interface; retrying every reconciliation");
                }
                Err(e) => {
                    tracing::debug!(interface = %name, error = %e, "node interface attach failed again")
                }
            }
        }
        self.metrics.set_node_point(
            self.capture.node_interfaces().len(),
            self.monitored_ips.len(),
        );
    }

    /// Keeps the kernel's covered veths in step: the veths of traced pods whose processes the
    /// socket point traces (their namespace is known), unless `--veth-payload always`. Runs
    /// after the socket point's namespaces were updated and the veths attached, so a veth is
    /// covered only once the socket point watches its pod.
    fn apply_covered(&mut self) {
        let wanted: BTreeSet<u32> =
            if self.socket.is_some() && self.veth_payload == VethPayload::Uncovered {
                self.current
                    .values()
                    .filter(|t| t.netns_inode.is_some())
                    .map(|t| t.veth.ifindex)
                    .collect()
            } else {
                BTreeSet::new()
            };
        if wanted == self.covered {
            return;
        }
        // The socket point learns which veth each covered pod has before the veth is covered:
        // a connection the veth carries then always finds its socket's namespace there.
        if let Some(socket) = self.socket.as_mut() {
            let carried: BTreeMap<u32, u32> = self
                .current
                .values()
                .filter(|t| wanted.contains(&t.veth.ifindex))
                .filter_map(|t| Some((t.netns_inode?, t.veth.ifindex)))
                .collect();
            if let Err(e) = socket.set_carried_veths(&carried) {
                tracing::error!(error = %e, "cannot update the socket point's carried veths");
            }
        }
        match self.capture.set_covered_interfaces(&wanted) {
            Ok(()) => self.covered = wanted,
            Err(e) => tracing::error!(error = %e, "cannot update the covered pod veths"),
        }
        self.metrics.set_covered_veths(self.covered.len());
    }

    /// Keeps the socket point in step: the processes of the wanted pods' namespaces, on the
    /// traced ports. Both updates are skipped when nothing changed.
    fn apply_socket_point(&mut self, desired: &Desired) {
        let Some(socket) = self.socket.as_mut() else {
            return;
        };
        let inodes: BTreeSet<u32> = desired.values().filter_map(|t| t.netns_inode).collect();
        if let Err(e) = socket.set_monitored_netns(&inodes) {
            tracing::error!(error = %e, "cannot update the socket point's namespaces");
        }
        if let Err(e) = socket.set_traced_ports(&self.traced) {
            tracing::error!(error = %e, "cannot update the socket point's traced ports");
        }
    }

    /// Resolves when the live configuration changes; never once its source is gone.
    /// Cancel-safe, for `select!`.
    pub async fn live_changed(&mut self) {
        if self.live_open && self.live.changed().await.is_ok() {
            return;
        }
        self.live_open = false;
        std::future::pending::<()>().await;
    }

    /// Applies the live configuration's snaplen, and its egress rules to the pods traced now
    /// (a rule's name prefix selects pods by name; the entries of a pod that went away go
    /// with it).
    pub fn apply_live(&mut self) {
        let config = self.live.borrow_and_update().clone();
        let snaplen = config.snaplen.unwrap_or(self.base_snaplen);
        if snaplen != self.capture.config().snaplen {
            match self.capture.set_snaplen(snaplen) {
                Ok(()) => tracing::info!(snaplen, "snaplen changed"),
                Err(e) => tracing::error!(snaplen, error = %e, "cannot change snaplen"),
            }
        }
        if let Some(socket) = self.socket.as_mut() {
            if snaplen != socket.snaplen() {
                if let Err(e) = socket.set_snaplen(snaplen) {
                    tracing::error!(snaplen, error = %e, "cannot change the socket point's snaplen");
                }
            }
        }
        let wanted = super::egress_rules::entries(
            self.current
                .values()
                .map(|t| (t.meta.pod.as_str(), t.veth.ifindex)),
            &config.egress,
        );
        if wanted != self.egress {
            match self.capture.set_egress(&wanted) {
                Ok(()) => {
                    tracing::info!(
                        entries = wanted.len(),
                        "egress rules applied to traced pods"
                    );
                    self.egress = wanted;
                }
                Err(e) => tracing::error!(error = %e, "cannot update egress rules"),
            }
        }
    }

    /// Tells the collector which Service each ClusterIP is: new and changed addresses sent,
    /// addresses of deleted Services (or moved ones) retracted. Idempotent like [`Self::apply`].
    pub async fn apply_service_addresses(&mut self, wanted: ServiceAddresses) {
        if wanted == self.service_addresses {
            return;
        }
        let gone = self
            .service_addresses
            .iter()
            .filter(|(ip, _)| !wanted.contains_key(ip))
            .map(|(ip, svc)| service_address_update(*ip, svc, true));
        let new = wanted
            .iter()
            .filter(|(ip, svc)| self.service_addresses.get(ip) != Some(svc))
            .map(|(ip, svc)| service_address_update(*ip, svc, false));
        let updates: Vec<EndpointUpdate> = gone.chain(new).collect();
        tracing::debug!(
            addresses = wanted.len(),
            updates = updates.len(),
            "service addresses changed"
        );
        self.send_all(updates).await;
        self.service_addresses = wanted;
    }

    /// Sends the metadata of every traced pod and Service address again (a restarted
    /// collector forgot it).
    pub async fn refresh_endpoints(&self) {
        for t in self.current.values() {
            for ip in &t.ips {
                self.send_endpoint(t, *ip, false).await;
            }
        }
        let addresses = self
            .service_addresses
            .iter()
            .map(|(ip, svc)| service_address_update(*ip, svc, false))
            .collect();
        self.send_all(addresses).await;
    }

    /// Detaches everything (the socket point's hooks too) and gives the capture back.
    pub fn finish(mut self) -> Capture {
        if let Err(e) = self.capture.detach_all() {
            tracing::error!(error = %e, "detaching on shutdown failed");
        }
        if let Some(mut socket) = self.socket.take() {
            if let Err(e) = socket.detach() {
                tracing::error!(error = %e, "detaching the socket hooks on shutdown failed");
            }
        }
        self.metrics.set_attached(self.capture.attached().len());
        self.metrics.set_node_point(0, 0);
        self.capture
    }

    async fn send_endpoint(&self, t: &Target, ip: IpAddr, removed: bool) {
        let update = EndpointUpdate {
            ip: ip_bytes(ip),
            pod: t.meta.pod.clone(),
            namespace: t.meta.namespace.clone(),
            node: self.node.clone(),
            workload: t.meta.workload.clone(),
            ifindex: t.veth.ifindex,
            interface: t.veth.name.clone(),
            removed,
            services: t.meta.services.clone(),
            service_address: false,
        };
        self.send(update).await;
    }

    async fn send(&self, update: EndpointUpdate) {
        self.send_all(vec![update]).await;
    }

    /// Sends `updates`, [`ENDPOINT_CHUNK`] to a chunk: a cluster's ClusterIPs are thousands of
    /// records, resent every refresh.
    async fn send_all(&self, updates: Vec<EndpointUpdate>) {
        let records: Vec<Record> = updates
            .into_iter()
            .map(|u| Record {
                kind: Some(record::Kind::Endpoint(u)),
            })
            .collect();
        for chunk in records.chunks(ENDPOINT_CHUNK) {
            let n = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
            match self.hand_on(ChunkBuilder::chunk_of(chunk)).await {
                Handed::Sent => self.metrics.endpoint_records_sent(n),
                Handed::Full => self.metrics.endpoint_records_dropped(n),
                Handed::Closed => {
                    tracing::debug!("record channel closed; endpoint updates not sent");
                    return;
                }
            }
        }
    }

    /// Hands one chunk of endpoint updates to the uplink's queue. Metadata is rare and small,
    /// so it waits for room — but at most [`ENDPOINT_SEND_WAIT`], and not at all while the
    /// queue has stayed full since the last wait ran out: a collector that does not take the
    /// probe's records (unreachable, or slower than the node) must not stop the follower from
    /// attaching new pods, detaching gone ones, or letting the probe stop. What is dropped is
    /// counted; the current pods' metadata is sent again every [`ENDPOINT_REFRESH`].
    ///
    /// [`ENDPOINT_REFRESH`]: super::netns::ENDPOINT_REFRESH
    async fn hand_on(&self, chunk: RecordChunk) -> Handed {
        let chunk = match self.out.try_send(chunk) {
            Ok(()) => return self.handed(),
            Err(mpsc::error::TrySendError::Closed(_)) => return Handed::Closed,
            Err(mpsc::error::TrySendError::Full(_)) if self.endpoints_blocked.load(Relaxed) => {
                return Handed::Full
            }
            Err(mpsc::error::TrySendError::Full(chunk)) => chunk,
        };
        match tokio::time::timeout(ENDPOINT_SEND_WAIT, self.out.send(chunk)).await {
            Ok(Ok(())) => self.handed(),
            Ok(Err(_)) => Handed::Closed,
            Err(_) => {
                self.endpoints_blocked.store(true, Relaxed);
                tracing::warn!(
                    wait = ?ENDPOINT_SEND_WAIT,
                    "the queue to the uplink stayed full: pod metadata is dropped (counted) until \
                     it has room again, and sent again with the next refresh"
                );
                Handed::Full
            }
        }
    }

    fn handed(&self) -> Handed {
        if self.endpoints_blocked.swap(false, Relaxed) {
            tracing::info!("the queue to the uplink has room again: pod metadata is sent");
        }
        Handed::Sent
    }
}

/// What became of a chunk of endpoint updates ([`Reconciler::hand_on`]).
enum Handed {
    Sent,
    /// Dropped: the queue stayed full.
    Full,
    /// The uplink is gone.
    Closed,
}

/// How long a chunk of endpoint updates waits for room in the queue to the uplink at most.
pub const ENDPOINT_SEND_WAIT: Duration = Duration::from_secs(1);

/// Endpoint updates sent in one chunk at most (about 60 bytes each).
const ENDPOINT_CHUNK: usize = 256;

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// The update saying that `ip` is (or, `removed`, no longer is) the ClusterIP of `svc`.
fn service_address_update(ip: IpAddr, svc: &ServiceRef, removed: bool) -> EndpointUpdate {
    EndpointUpdate {
        ip: ip_bytes(ip),
        namespace: svc.namespace.clone(),
        services: vec![svc.name.clone()],
        service_address: true,
        removed,
        ..EndpointUpdate::default()
    }
}

/// Of two protocols declared for one port, the one that says more (HTTP over plain TCP over
/// unspecified); ties go to the lower enum value so the choice is stable.
fn more_specific(a: ProtocolHint, b: ProtocolHint) -> ProtocolHint {
    let rank = |h: ProtocolHint| match h {
        ProtocolHint::Unspecified => 0,
        ProtocolHint::Tcp => 1,
        _ => 2,
    };
    match rank(a).cmp(&rank(b)) {
        std::cmp::Ordering::Greater => a,
        std::cmp::Ordering::Less => b,
        std::cmp::Ordering::Equal => std::cmp::min_by_key(a, b, |h| *h as i32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_protocol_wins_over_tcp_and_unspecified() {
        use ProtocolHint::*;
        assert_eq!(more_specific(Tcp, Http), Http, "http over tcp");
        assert_eq!(
            more_specific(Grpc, Unspecified),
            Grpc,
            "grpc over unspecified"
        );
        assert_eq!(more_specific(Unspecified, Tcp), Tcp, "tcp over unspecified");
        assert_eq!(
            more_specific(Grpc, Http),
            more_specific(Http, Grpc),
            "a tie is decided the same way in either order"
        );
    }
}
