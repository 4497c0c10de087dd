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

use crate::capture::Capture;
use crate::hooks::node_iface::{self, NodeInterfaces};
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
    /// Node interfaces (uplinks) to trace monitored pods' traffic on.
    pub node_interfaces: NodeInterfaces,
}

/// How often the metadata of every followed namespace is sent again.
const ENDPOINT_REFRESH: Duration = Duration::from_secs(10);

/// One followed namespace.
#[derive(Debug, Clone, PartialEq)]
struct Followed {
    veth: HostVeth,
    ports: BTreeSet<u16>,
}

/// What one scan found: namespace -> its veth and listening ports, and the node interfaces.
#[derive(Debug, Default)]
struct Scan {
    pods: BTreeMap<String, Followed>,
    node_interfaces: Vec<String>,
}

/// What the follower has applied so far.
#[derive(Debug, Default)]
struct State {
    pods: BTreeMap<String, Followed>,
    traced_ports: BTreeMap<u16, ProtocolHint>,
    monitored_ips: BTreeSet<IpAddr>,
    /// Node interfaces an attach failed on, warned about once.
    node_failures: BTreeSet<String>,
}

/// Keeps `capture` in step with the namespaces until `shutdown` resolves, then detaches
/// everything it attached.
pub async fn follow(
    targets: NetnsTargets,
    mut capture: Capture,
    out: mpsc::Sender<Record>,
    metrics: Arc<ProbeMetrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Capture {
    tokio::pin!(shutdown);
    let mut state = State::default();
    let mut last_refresh = tokio::time::Instant::now();
    let mut interval = tokio::time::interval(targets.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = interval.tick() => {}
        }
        let names = targets.names.clone();
        let wanted_nodes = targets.node_interfaces.clone();
        let scan = match tokio::task::spawn_blocking(move || scan(&names, &wanted_nodes)).await {
            Ok(scan) => scan,
            Err(e) => {
                tracing::error!(error = %e, "namespace scan task failed");
                continue;
            }
        };
        apply(&targets, &mut capture, &out, &metrics, &mut state, scan).await;
        // A restarted collector has forgotten pod metadata: repeat it now and then.
        if last_refresh.elapsed() >= ENDPOINT_REFRESH {
            last_refresh = tokio::time::Instant::now();
            for (name, f) in &state.pods {
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
    if let Err(e) = capture.detach_all() {
        tracing::error!(error = %e, "detaching on shutdown failed");
    }
    metrics.set_attached(capture.attached().len());
    metrics.set_node_point(0, state.monitored_ips.len());
    capture
}

/// Reads every wanted namespace; namespaces that cannot be read are logged and left out, so
/// they are detached like namespaces that went away.
fn scan(names: &[String], node_interfaces: &NodeInterfaces) -> Scan {
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
    let mut scan = Scan::default();
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
        scan.pods.insert(name, Followed { veth, ports });
    }
    let pod_veths: BTreeSet<String> = scan.pods.values().map(|f| f.veth.name.clone()).collect();
    scan.node_interfaces = match node_iface::resolve(node_interfaces, &pod_veths) {
        Ok(found) => found
            .into_iter()
            .filter(|n| !pod_veths.contains(n))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot find the node's uplink interfaces");
            Vec::new()
        }
    };
    scan
}

async fn apply(
    targets: &NetnsTargets,
    capture: &mut Capture,
    out: &mpsc::Sender<Record>,
    metrics: &ProbeMetrics,
    state: &mut State,
    scan: Scan,
) {
    let current = &mut state.pods;
    // Gone or changed veth: detach and retract the endpoints.
    let gone: Vec<String> = current
        .iter()
        .filter(|(name, f)| scan.pods.get(*name).map(|n| &n.veth) != Some(&f.veth))
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
    for (name, found) in &scan.pods {
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
    for (name, found) in &scan.pods {
        if let Some(f) = current.get_mut(name) {
            f.ports.clone_from(&found.ports);
        }
    }
    let wanted: BTreeMap<u16, ProtocolHint> = current
        .values()
        .flat_map(|f| f.ports.iter().copied())
        .chain(targets.extra_ports.iter().copied())
        .map(|p| (p, hint_for_port(p)))
        .collect();
    if wanted != state.traced_ports {
        match capture.set_traced_ports(&wanted) {
            Ok(()) => {
                tracing::info!(ports = ?wanted.keys().collect::<Vec<_>>(), "traced ports");
                state.traced_ports = wanted;
            }
            Err(e) => tracing::error!(error = %e, "cannot update traced ports"),
        }
    }
    apply_node_point(capture, metrics, state, &scan.node_interfaces);
}

/// Keeps the node-interface point in step: the monitored pod addresses its programs filter on,
/// and the uplinks they are attached to.
fn apply_node_point(
    capture: &mut Capture,
    metrics: &ProbeMetrics,
    state: &mut State,
    wanted: &[String],
) {
    let ips: BTreeSet<IpAddr> = state
        .pods
        .values()
        .flat_map(|f| f.veth.pod_ips.iter().copied())
        .collect();
    if ips != state.monitored_ips {
        match capture.set_monitored_ips(&ips) {
            Ok(()) => state.monitored_ips = ips,
            Err(e) => tracing::error!(error = %e, "cannot update the monitored pod addresses"),
        }
    }
    let attached = capture.node_interfaces();
    for name in attached.iter().filter(|a| !wanted.contains(a)) {
        match capture.detach(name) {
            Ok(()) => {
                tracing::info!(interface = %name, "node interface no longer wanted; detached")
            }
            Err(e) => tracing::warn!(interface = %name, error = %e, "detach failed"),
        }
    }
    for name in wanted {
        match capture.attach_node_interface(name) {
            Ok(mode) => {
                if !attached.contains(name) {
                    tracing::info!(interface = %name, ?mode, "tracing node interface");
                }
                state.node_failures.remove(name);
            }
            Err(e) if state.node_failures.insert(name.clone()) => {
                tracing::warn!(interface = %name, error = %e, "cannot attach to node interface; retrying every scan");
            }
            Err(e) => {
                tracing::debug!(interface = %name, error = %e, "node interface attach failed again")
            }
        }
    }
    metrics.set_attached(capture.attached().len());
    metrics.set_node_point(capture.node_interfaces().len(), state.monitored_ips.len());
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
