//! Follows named network namespaces (`/run/netns/*`) as pods, for all-in-one mode and hosts
//! without Kubernetes: attaches the capture to each namespace's host-side veth, traces the TCP
//! ports listening inside it, and tells the collector which addresses belong to which "pod".
//! Namespaces that appear, disappear or change their listening ports are followed live.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use clovisor_proto::capture::v1::{record, EndpointUpdate, ProtocolHint, Record};
use tokio::sync::mpsc;

use crate::capture::socket::SocketCapture;
use crate::capture::Capture;
use crate::metrics::ProbeMetrics;
use crate::netns::{self, HostVeth};

/// What to follow.
#[derive(Debug, Clone)]
pub struct NetnsTargets {
    /// Namespaces to trace; empty = every named namespace.
    pub names: Vec<String>,
    /// Ports traced in addition to the ones found listening.
    pub extra_ports: BTreeSet<u16>,
    /// How often namespaces and their listening ports are re-read.
    pub interval: Duration,
    /// Reported as the node of every endpoint.
    pub node: String,
}

/// How often the metadata of every followed namespace is sent again.
const ENDPOINT_REFRESH: Duration = Duration::from_secs(10);

/// One followed namespace.
#[derive(Debug, Clone, PartialEq)]
struct Followed {
    veth: HostVeth,
    ports: BTreeSet<u16>,
    /// Network namespace inode, for the socket point; `None` if it could not be read.
    inode: Option<u32>,
}

/// What one scan found: namespace -> its veth and listening ports.
type Scan = BTreeMap<String, Followed>;

/// What the follower keeps in step: the veth capture and, when it runs, the socket point.
#[derive(Debug)]
pub struct Points {
    /// tc on pod veths.
    pub veth: Capture,
    /// The application sockets of the followed namespaces' processes.
    pub socket: Option<SocketCapture>,
}

/// Keeps `points` in step with the namespaces until `shutdown` resolves, then detaches
/// everything it attached.
pub async fn follow(
    targets: NetnsTargets,
    mut points: Points,
    out: mpsc::Sender<Record>,
    metrics: Arc<ProbeMetrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Points {
    tokio::pin!(shutdown);
    let mut current: Scan = BTreeMap::new();
    let mut traced_ports: BTreeMap<u16, ProtocolHint> = BTreeMap::new();
    let mut last_refresh = tokio::time::Instant::now();
    let mut interval = tokio::time::interval(targets.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = interval.tick() => {}
        }
        let names = targets.names.clone();
        let scan = match tokio::task::spawn_blocking(move || scan(&names)).await {
            Ok(scan) => scan,
            Err(e) => {
                tracing::error!(error = %e, "namespace scan task failed");
                continue;
            }
        };
        apply(
            &targets,
            &mut points,
            &out,
            &metrics,
            &mut current,
            &mut traced_ports,
            scan,
        )
        .await;
        // A restarted collector has forgotten pod metadata: repeat it now and then.
        if last_refresh.elapsed() >= ENDPOINT_REFRESH {
            last_refresh = tokio::time::Instant::now();
            for (name, f) in &current {
                for ip in &f.veth.pod_ips {
                    send_endpoint(
                        &out,
                        &metrics,
                        endpoint(&targets, name, &f.veth, *ip, false),
                    )
                    .await;
                }
            }
        }
    }
    if let Err(e) = points.veth.detach_all() {
        tracing::error!(error = %e, "detaching on shutdown failed");
    }
    if let Some(socket) = points.socket.as_mut() {
        if let Err(e) = socket.detach() {
            tracing::error!(error = %e, "detaching the socket hooks on shutdown failed");
        }
    }
    metrics.set_attached(points.veth.attached().len());
    points
}

/// Reads every wanted namespace; namespaces that cannot be read are logged and left out, so
/// they are detached like namespaces that went away.
fn scan(names: &[String]) -> Scan {
    let names = if names.is_empty() {
        match netns::named() {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list named network namespaces");
                Vec::new()
            }
        }
    } else {
        names.to_vec()
    };
    let mut scan = Scan::new();
    for name in names {
        let veth = match netns::host_veth(&name) {
            Ok(v) => v,
            // A namespace without a veth to the host is not a pod: quietly skipped. Anything
            // else (no right to enter it, netlink failing) is worth an operator's attention.
            Err(e @ crate::error::Error::NoHostVeth { .. }) => {
                tracing::debug!(netns = %name, error = %e, "no host veth for namespace");
                continue;
            }
            Err(e) => {
                tracing::warn!(netns = %name, error = %e, "cannot inspect namespace; not traced");
                continue;
            }
        };
        let ports = match netns::listening_tcp_ports(&name) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(netns = %name, error = %e, "cannot read listening ports");
                BTreeSet::new()
            }
        };
        let inode = match netns::inode(&name) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(netns = %name, error = %e, "cannot read namespace inode; its sockets are not traced");
                None
            }
        };
        scan.insert(name, Followed { veth, ports, inode });
    }
    scan
}

async fn apply(
    targets: &NetnsTargets,
    points: &mut Points,
    out: &mpsc::Sender<Record>,
    metrics: &ProbeMetrics,
    current: &mut Scan,
    traced_ports: &mut BTreeMap<u16, ProtocolHint>,
    scan: Scan,
) {
    let capture = &mut points.veth;
    // Gone or changed veth: detach and retract the endpoints.
    let gone: Vec<String> = current
        .iter()
        .filter(|(name, f)| scan.get(*name).map(|n| &n.veth) != Some(&f.veth))
        .map(|(name, _)| name.clone())
        .collect();
    for name in gone {
        if let Some(f) = current.remove(&name) {
            if let Err(e) = capture.detach(&f.veth.name) {
                tracing::warn!(netns = %name, interface = %f.veth.name, error = %e, "detach failed");
            } else {
                tracing::info!(netns = %name, interface = %f.veth.name, "namespace gone; detached");
            }
            for ip in &f.veth.pod_ips {
                send_endpoint(out, metrics, endpoint(targets, &name, &f.veth, *ip, true)).await;
            }
        }
    }
    for (name, found) in &scan {
        if current.get(name).map(|f| &f.veth) == Some(&found.veth) {
            continue;
        }
        match capture.attach_pod_veth(&found.veth.name) {
            Ok(mode) => {
                tracing::info!(netns = %name, interface = %found.veth.name, ?mode, ips = ?found.veth.pod_ips, "tracing namespace");
                for ip in &found.veth.pod_ips {
                    send_endpoint(
                        out,
                        metrics,
                        endpoint(targets, name, &found.veth, *ip, false),
                    )
                    .await;
                }
                current.insert(name.clone(), found.clone());
            }
            Err(e) => {
                tracing::warn!(netns = %name, interface = %found.veth.name, error = %e, "attach failed; retrying next scan");
            }
        }
    }
    for (name, found) in &scan {
        if let Some(f) = current.get_mut(name) {
            f.ports.clone_from(&found.ports);
            f.inode = found.inode;
        }
    }
    let wanted: BTreeMap<u16, ProtocolHint> = current
        .values()
        .flat_map(|f| f.ports.iter().copied())
        .chain(targets.extra_ports.iter().copied())
        .map(|p| (p, hint_for_port(p)))
        .collect();
    if let Some(socket) = points.socket.as_mut() {
        // Idempotent: the socket capture skips updates that change nothing.
        let inodes: BTreeSet<u32> = current.values().filter_map(|f| f.inode).collect();
        if let Err(e) = socket.set_monitored_netns(&inodes) {
            tracing::error!(error = %e, "cannot update the socket point's namespaces");
        }
        if let Err(e) = socket.set_traced_ports(&wanted) {
            tracing::error!(error = %e, "cannot update the socket point's traced ports");
        }
    }
    if &wanted != traced_ports {
        match points.veth.set_traced_ports(&wanted) {
            Ok(()) => {
                tracing::info!(ports = ?wanted.keys().collect::<Vec<_>>(), "traced ports");
                *traced_ports = wanted;
            }
            Err(e) => tracing::error!(error = %e, "cannot update traced ports"),
        }
    }
}

/// Without Kubernetes there is no service-port name to say what a port speaks; the collector
/// sniffs the protocol, so discovered ports are plain TCP unless they are well-known HTTP ports.
fn hint_for_port(port: u16) -> ProtocolHint {
    match port {
        80 | 8000 | 8080 | 8888 => ProtocolHint::Http,
        _ => ProtocolHint::Tcp,
    }
}

fn endpoint(
    targets: &NetnsTargets,
    name: &str,
    veth: &HostVeth,
    ip: IpAddr,
    removed: bool,
) -> EndpointUpdate {
    EndpointUpdate {
        ip: match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        },
        pod: name.to_owned(),
        namespace: String::new(),
        node: targets.node.clone(),
        workload: name.to_owned(),
        ifindex: veth.ifindex,
        interface: veth.name.clone(),
        removed,
    }
}

async fn send_endpoint(out: &mpsc::Sender<Record>, metrics: &ProbeMetrics, update: EndpointUpdate) {
    // Metadata is rare and small: wait for room rather than lose it.
    let record = Record {
        kind: Some(record::Kind::Endpoint(update)),
    };
    match out.send(record).await {
        Ok(()) => metrics.endpoint_record_sent(),
        Err(_) => tracing::debug!("record channel closed; endpoint update not sent"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_http_ports_are_hinted_http_others_tcp() {
        assert_eq!(hint_for_port(80), ProtocolHint::Http);
        assert_eq!(hint_for_port(8080), ProtocolHint::Http);
        assert_eq!(hint_for_port(6379), ProtocolHint::Tcp);
    }
}
