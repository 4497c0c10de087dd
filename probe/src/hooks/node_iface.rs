//! The node-interface observation point: the same capture on the node's uplinks, both
//! directions, restricted in the kernel to packets to or from a monitored pod's address.
//!
//! A second pair of programs (`clovisor_node_in` / `clovisor_node_out`) rather than a
//! per-attachment mode read from a map: the restriction is a compile-time branch of the one
//! shared handler, so pod veths pay nothing for it and node interfaces pay two hash lookups
//! after the parse. Attach, detach and crash cleanup are those of pod veths
//! ([`super::tc_attach`]): TCX links first, a clsact only removed when we added it and it is
//! empty.

use std::collections::BTreeSet;

use aya::programs::TcAttachType;
use aya::Ebpf;

use super::tc_attach::{self, AttachPolicy, TcAttachment};
use crate::error::Result;
use crate::netlink;

/// Program for node interface ingress: packets arriving at the node.
pub const NODE_IN: &str = "clovisor_node_in";
/// Program for node interface egress: packets leaving the node.
pub const NODE_OUT: &str = "clovisor_node_out";
/// Both programs with their hook.
pub const PROGRAMS: [(&str, TcAttachType); 2] = [
    (NODE_IN, TcAttachType::Ingress),
    (NODE_OUT, TcAttachType::Egress),
];

/// Which node interfaces to trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NodeInterfaces {
    /// The interfaces that carry routes off the node (see [`uplinks`]).
    #[default]
    Auto,
    /// None: only pod veths.
    None,
    /// Exactly these.
    Named(Vec<String>),
}

/// Attaches both node programs to `interface`.
pub fn attach(ebpf: &mut Ebpf, interface: &str, policy: AttachPolicy) -> Result<TcAttachment> {
    tc_attach::attach(ebpf, interface, policy, PROGRAMS)
}

/// The interfaces that carry routes off the node: output interfaces of the main table's
/// default routes and routes through a gateway (IPv4 and IPv6), except loopback and the
/// interfaces in `pod_veths`. Sorted, without duplicates.
pub fn uplinks(pod_veths: &BTreeSet<String>) -> Result<Vec<String>> {
    let mut s = netlink::Socket::open()?;
    let links = s.links()?;
    let routes = s.routes()?;
    Ok(uplinks_of(&links, &routes, pod_veths))
}

fn uplinks_of(
    links: &[netlink::Link],
    routes: &[netlink::Route],
    pod_veths: &BTreeSet<String>,
) -> Vec<String> {
    let off_node: BTreeSet<u32> = routes
        .iter()
        .filter(|r| r.gateway || r.dst_len == 0)
        .flat_map(|r| r.oifs.iter().copied())
        .collect();
    let mut out: Vec<String> = links
        .iter()
        .filter(|l| off_node.contains(&l.index))
        .filter(|l| l.name != "lo" && !pod_veths.contains(&l.name))
        .map(|l| l.name.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Resolves `wanted` to interface names now.
pub fn resolve(wanted: &NodeInterfaces, pod_veths: &BTreeSet<String>) -> Result<Vec<String>> {
    match wanted {
        NodeInterfaces::Auto => uplinks(pod_veths),
        NodeInterfaces::None => Ok(Vec::new()),
        NodeInterfaces::Named(names) => Ok(names.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink::{Link, Route};

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.to_owned(),
            link: None,
            kind: None,
        }
    }

    #[test]
    fn uplinks_are_gateway_and_default_route_interfaces_but_not_pods() {
        let links = [
            link(1, "lo"),
            link(2, "eth0"),
            link(3, "veth-pod"),
            link(4, "flannel.1"),
            link(5, "eth1"),
        ];
        let routes = [
            Route {
                dst_len: 0,
                gateway: true,
                oifs: vec![2],
            },
            // A pod route: directly connected, not off the node.
            Route {
                dst_len: 32,
                gateway: false,
                oifs: vec![3],
            },
            // Another node's pod subnet through an overlay.
            Route {
                dst_len: 24,
                gateway: true,
                oifs: vec![4],
            },
            // A pod veth a gateway route happens to use is still a pod veth.
            Route {
                dst_len: 16,
                gateway: true,
                oifs: vec![3, 2],
            },
            // A connected subnet only: not an uplink.
            Route {
                dst_len: 24,
                gateway: false,
                oifs: vec![5],
            },
        ];
        let pods: BTreeSet<String> = ["veth-pod".to_owned()].into();
        assert_eq!(uplinks_of(&links, &routes, &pods), ["eth0", "flannel.1"]);
    }

    #[test]
    fn this_hosts_uplinks_can_be_read() {
        // Needs no privilege: route and link dumps work for any user. A host with network has
        // a default route; the test only checks the dump parses and excludes loopback.
        let found = uplinks(&BTreeSet::new()).unwrap_or_else(|e| panic!("route dump: {e}"));
        assert!(
            !found.iter().any(|n| n == "lo"),
            "lo is never an uplink: {found:?}"
        );
    }
}
