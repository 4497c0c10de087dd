//! Follows named network namespaces (`/run/netns/*`) as pods, for all-in-one mode and hosts
//! without Kubernetes: attaches the capture to each namespace's host-side veth, traces the TCP
//! ports listening inside it, and tells the collector which addresses belong to which "pod".
//! Namespaces that appear, disappear or change their listening ports are followed live.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clovisor_proto::capture::v1::ProtocolHint;

use super::reconcile::{Desired, PodMeta, Reconciler, Target};
use crate::discovery::{self, HostVeth};

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
pub const ENDPOINT_REFRESH: Duration = Duration::from_secs(10);

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

/// Keeps `reconciler` in step with the namespaces until `shutdown` resolves, then detaches
/// everything it attached and gives the capture back.
pub async fn follow(
    targets: NetnsTargets,
    mut reconciler: Reconciler,
    shutdown: impl std::future::Future<Output = ()>,
) -> crate::capture::Capture {
    tokio::pin!(shutdown);
    let mut last_refresh = tokio::time::Instant::now();
    let mut interval = tokio::time::interval(targets.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = interval.tick() => {}
            _ = reconciler.live_changed() => {}
        }
        let names = targets.names.clone();
        let scan = match tokio::task::spawn_blocking(move || scan(&names)).await {
            Ok(scan) => scan,
            Err(e) => {
                tracing::error!(error = %e, "namespace scan task failed");
                continue;
            }
        };
        reconciler.apply(desired(scan), BTreeMap::new()).await;
        // A restarted collector has forgotten pod metadata: repeat it now and then.
        if last_refresh.elapsed() >= ENDPOINT_REFRESH {
            last_refresh = tokio::time::Instant::now();
            reconciler.refresh_endpoints().await;
        }
    }
    reconciler.finish()
}

/// Namespaces as pods: the namespace name is the pod, its workload and its identity.
fn desired(scan: Scan) -> Desired {
    scan.into_iter()
        .map(|(name, f)| {
            let target = Target {
                instance: name.clone(),
                meta: PodMeta {
                    pod: name.clone(),
                    namespace: String::new(),
                    workload: name.clone(),
                    services: Vec::new(),
                },
                ips: f.veth.pod_ips.clone(),
                netns_inode: f.inode,
                veth: f.veth,
                ports: f.ports.iter().map(|p| (*p, hint_for_port(*p))).collect(),
            };
            (name, target)
        })
        .collect()
}

/// Reads every wanted namespace; namespaces that cannot be read are logged and left out, so
/// they are detached like namespaces that went away.
fn scan(names: &[String]) -> Scan {
    let names = if names.is_empty() {
        match discovery::named() {
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
        let veth = match discovery::host_veth(&name) {
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
        let ports = match discovery::listening_tcp_ports(&name) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(netns = %name, error = %e, "cannot read listening ports");
                BTreeSet::new()
            }
        };
        let inode = match discovery::inode(&name) {
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

/// Without Kubernetes there is no service-port name to say what a port speaks; the collector
/// sniffs the protocol, so discovered ports are plain TCP unless they are well-known HTTP ports.
pub fn hint_for_port(port: u16) -> ProtocolHint {
    match port {
        80 | 8000 | 8080 | 8888 => ProtocolHint::Http,
        _ => ProtocolHint::Tcp,
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
