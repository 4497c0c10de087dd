//! Egress rules in the kernel: which outbound calls of which traced pod's veth are traced
//! (`egress_ports` and `egress_hosts` in `bpf/tc_capture.bpf.c`, layouts in `clovisor_abi.h`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use clovisor_proto::capture::v1::ProtocolHint;
use zerocopy::{FromBytes, FromZeros};

use super::maps::replace_map;
use super::{abi, raw, Capture};
use crate::error::{Error, Result};

const MAP_EGRESS_PORTS: &str = "egress_ports";
const MAP_EGRESS_HOSTS: &str = "egress_hosts";
/// `max_entries` of the two maps in the object.
const MAX_EGRESS_PORTS: usize = abi::CLOVISOR_MAX_EGRESS_PORTS as usize;
const MAX_EGRESS_HOSTS: usize = abi::CLOVISOR_MAX_EGRESS_HOSTS as usize;

type PortKey = [u8; std::mem::size_of::<abi::clovisor_egress_port_key>()];
type PortValue = [u8; std::mem::size_of::<abi::clovisor_egress_port>()];
type HostKey = [u8; std::mem::size_of::<abi::clovisor_egress_host_key>()];

/// One traced destination of one pod: calls from the pod behind `ifindex` to `ip:port`
/// (`ip` `None` = any address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EgressEntry {
    /// The pod's host-side veth.
    pub ifindex: u32,
    /// Destination address; `None` = any.
    pub ip: Option<IpAddr>,
    /// Destination port.
    pub port: u16,
}

/// The contents of both maps for a set of entries.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    ports: BTreeMap<PortKey, PortValue>,
    hosts: BTreeMap<HostKey, u8>,
}

fn plan(entries: &BTreeMap<EgressEntry, ProtocolHint>) -> Plan {
    let mut plan = Plan::default();
    for (e, hint) in entries {
        let mut pk = abi::clovisor_egress_port_key::new_zeroed();
        pk.ifindex = e.ifindex;
        pk.port = e.port;
        let pk: PortKey = zerocopy::transmute!(pk);
        let value = plan.ports.entry(pk).or_insert_with(|| {
            let mut v = abi::clovisor_egress_port::new_zeroed();
            v.protocol = raw::hint_value(*hint);
            let v: PortValue = zerocopy::transmute!(v);
            v
        });
        match e.ip {
            None => {
                if let Ok(v) = abi::clovisor_egress_port::mut_from_bytes(value) {
                    v.any_ip = 1;
                    v.protocol = raw::hint_value(*hint);
                }
            }
            Some(ip) => {
                let mut hk = abi::clovisor_egress_host_key::new_zeroed();
                hk.ip = raw::ip16(ip);
                hk.ifindex = e.ifindex;
                hk.port = e.port;
                let hk: HostKey = zerocopy::transmute!(hk);
                plan.hosts.insert(hk, raw::hint_value(*hint));
            }
        }
    }
    // An address-specific entry under a port that matches any address is never looked up.
    plan.hosts.retain(|hk, _| {
        abi::clovisor_egress_host_key::ref_from_bytes(hk).is_ok_and(|hk| {
            let mut pk = abi::clovisor_egress_port_key::new_zeroed();
            pk.ifindex = hk.ifindex;
            pk.port = hk.port;
            let pk: PortKey = zerocopy::transmute!(pk);
            plan.ports
                .get(&pk)
                .and_then(|v| abi::clovisor_egress_port::ref_from_bytes(v).ok())
                .is_some_and(|v| v.any_ip == 0)
        })
    });
    plan
}

impl Capture {
    /// Replaces the egress rules: exactly `entries` are traced from now on; entries of
    /// interfaces that went away must simply be left out.
    pub fn set_egress(&mut self, entries: &BTreeMap<EgressEntry, ProtocolHint>) -> Result<()> {
        let plan = plan(entries);
        if plan.ports.len() > MAX_EGRESS_PORTS || plan.hosts.len() > MAX_EGRESS_HOSTS {
            return Err(Error::Config {
                reason: format!(
                    "{} egress (interface, port) pairs and {} (interface, address, port) triples; at most {MAX_EGRESS_PORTS} and {MAX_EGRESS_HOSTS}",
                    plan.ports.len(),
                    plan.hosts.len()
                ),
            });
        }
        // Hosts before ports on the way in, so a port entry never points at missing hosts
        // for longer than necessary; the count last, so the kernel skips the lookup only
        // once nothing is left.
        replace_map(&mut self.ebpf, MAP_EGRESS_HOSTS, &plan.hosts)?;
        replace_map(&mut self.ebpf, MAP_EGRESS_PORTS, &plan.ports)?;
        self.set_config_value(
            abi::CLOVISOR_CONFIG_EGRESS_PORTS,
            u32::try_from(plan.ports.len()).unwrap_or(u32::MAX),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ifindex: u32, ip: Option<&str>, port: u16) -> (EgressEntry, ProtocolHint) {
        (
            EgressEntry {
                ifindex,
                ip: ip.map(|s| s.parse().expect("literal")),
                port,
            },
            ProtocolHint::Http,
        )
    }

    fn port_value(plan: &Plan, ifindex: u32, port: u16) -> Option<(u8, u8)> {
        let mut pk = abi::clovisor_egress_port_key::new_zeroed();
        pk.ifindex = ifindex;
        pk.port = port;
        let pk: PortKey = zerocopy::transmute!(pk);
        let v = abi::clovisor_egress_port::ref_from_bytes(plan.ports.get(&pk)?).ok()?;
        Some((v.any_ip, v.protocol))
    }

    #[test]
    fn any_address_wins_over_exact_ones_on_the_same_port() {
        let plan = plan(&BTreeMap::from([
            entry(7, Some("10.0.0.1"), 80),
            entry(7, None, 80),
            entry(7, Some("fd00::1"), 8080),
            entry(9, Some("10.0.0.1"), 80),
        ]));
        assert_eq!(port_value(&plan, 7, 80), Some((1, 1)), "(any_ip, protocol)");
        assert_eq!(port_value(&plan, 7, 8080), Some((0, 1)));
        assert_eq!(port_value(&plan, 9, 80), Some((0, 1)));
        assert_eq!(plan.ports.len(), 3);
        assert_eq!(
            plan.hosts.len(),
            2,
            "7/10.0.0.1/80 is covered by the any-address entry"
        );
        let hosts: Vec<(u32, u16, [u8; 16])> = plan
            .hosts
            .keys()
            .filter_map(|k| abi::clovisor_egress_host_key::ref_from_bytes(k).ok())
            .map(|k| (k.ifindex, k.port, k.ip))
            .collect();
        let v4: IpAddr = "10.0.0.1".parse().expect("literal");
        assert!(
            hosts.contains(&(9, 80, raw::ip16(v4))),
            "IPv4 stored v4-mapped: {hosts:?}"
        );
    }
}
