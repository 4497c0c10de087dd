//! Finding a pod's host veth from its IP alone, without exec and whatever the CNI: in a named
//! network namespace (containerd, CRI-O), in the namespace of a process (no bind mount), and
//! through the host route when the namespace cannot be found (routed CNIs).

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use clovisor_integration_tests::{require_root, run, wait_for, Lab, Proc};
use clovisor_probe::discovery::{self, host_veth_of_ips, host_veths_of_pods, VethMethod};

/// Deletes a host interface on drop.
struct Link(String);

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

/// An address of 10.252.0.0/16 unique to this process and `n`.
fn unique_ip(n: u8) -> Ipv4Addr {
    let pid = std::process::id();
    Ipv4Addr::new(10, 252, (pid % 250) as u8, n)
}

#[test]
fn a_pod_in_a_named_netns_is_found_by_its_ip() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new()?;
    let pod = lab.pod("lkn")?;
    for ip in [IpAddr::V4(pod.ipv4), IpAddr::V6(pod.ipv6)] {
        let found = host_veth_of_ips(&[ip])?;
        assert_eq!(found.veth.name, pod.host_veth, "host veth of {ip}");
        assert_eq!(
            found.method,
            VethMethod::NamedNetns(pod.netns.clone()),
            "found through the named netns"
        );
        assert!(
            found.veth.pod_ips.contains(&ip),
            "{ip} in {:?}",
            found.veth.pod_ips
        );
        assert_eq!(
            found.netns_inode,
            Some(discovery::inode(&pod.netns)?),
            "the namespace's inode, for the socket point"
        );
    }

    // Several pods in one pass, answered in order; an unknown address is an error in its slot.
    let other = lab.pod("lko")?;
    let found = host_veths_of_pods(&[
        vec![IpAddr::V4(other.ipv4)],
        vec![IpAddr::V4(unique_ip(13))],
        vec![IpAddr::V6(pod.ipv6), IpAddr::V4(pod.ipv4)],
    ]);
    let names: Vec<Option<String>> = found
        .iter()
        .map(|r| r.as_ref().ok().map(|f| f.veth.name.clone()))
        .collect();
    assert_eq!(
        names,
        vec![
            Some(other.host_veth.clone()),
            None,
            Some(pod.host_veth.clone())
        ],
        "one result per pod, in order"
    );
    Ok(())
}

#[test]
fn a_pod_in_an_unnamed_process_netns_is_found_by_its_ip() -> Result<()> {
    require_root()?;
    let tag = format!("{}", std::process::id() % 100_000);
    // A "sandbox" process with a namespace of its own that `ip netns` does not know.
    let log = std::env::temp_dir().join(format!("clv-lookup-{tag}.log"));
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "sleep", "60"]);
    let mut sandbox = Proc::spawn(cmd, log)?;
    let pid = sandbox.pid().to_string();
    // unshare execs sleep once the namespace exists.
    wait_for("the sandbox namespace", Duration::from_secs(5), || {
        let own = std::fs::read_link("/proc/self/ns/net")?;
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net"))?;
        Ok(own != theirs)
    })?;
    let host = format!("clvu{tag}");
    let link = Link(host.clone());
    run(
        "ip",
        &[
            "link", "add", &link.0, "type", "veth", "peer", "name", "eth0", "netns", &pid,
        ],
    )?;
    run("ip", &["link", "set", &host, "up"])?;
    let ip = unique_ip(7);
    let cidr = format!("{ip}/32");
    run(
        "nsenter",
        &["-t", &pid, "-n", "ip", "addr", "add", &cidr, "dev", "eth0"],
    )?;
    run(
        "nsenter",
        &["-t", &pid, "-n", "ip", "link", "set", "eth0", "up"],
    )?;

    let found = host_veth_of_ips(&[IpAddr::V4(ip)]);
    sandbox.stop(9, Duration::from_secs(5))?;
    let found = found.context("lookup in a process namespace")?;
    assert_eq!(found.veth.name, host, "host veth of the sandbox");
    assert!(found.netns_inode.is_some(), "the sandbox namespace's inode");
    match found.method {
        VethMethod::ProcessNetns(_) => {}
        other => panic!("expected the process-namespace method, got {other}"),
    }
    Ok(())
}

#[test]
fn the_host_route_through_a_veth_is_the_fallback() -> Result<()> {
    require_root()?;
    let tag = format!("{}", std::process::id() % 100_000);
    // A routed CNI's shape: a /32 route to the pod over the host veth; the pod side (here
    // left in the host namespace, without the address) cannot be found by the namespace scan.
    let host = format!("clvr{tag}");
    let peer = format!("clvq{tag}");
    let link = Link(host.clone());
    run(
        "ip",
        &[
            "link", "add", &link.0, "type", "veth", "peer", "name", &peer,
        ],
    )?;
    run("ip", &["link", "set", &host, "up"])?;
    run("ip", &["link", "set", &peer, "up"])?;
    let ip = unique_ip(9);
    let cidr = format!("{ip}/32");
    run("ip", &["route", "add", &cidr, "dev", &host])?;
    let found = host_veth_of_ips(&[IpAddr::V4(ip)])?;
    assert_eq!(found.veth.name, host, "the route's output veth");
    assert_eq!(
        found.netns_inode, None,
        "a route does not tell the namespace"
    );
    assert_eq!(
        found.method,
        VethMethod::HostRoute,
        "found through the host route"
    );

    // A pod IP routed through no veth (here: no route at all) is an error, not a guess.
    let nowhere = IpAddr::V4(unique_ip(11));
    let _ = Command::new("ip")
        .args(["route", "del", &format!("{nowhere}/32")])
        .output();
    assert!(
        host_veth_of_ips(&[nowhere]).is_err(),
        "an address behind no veth must not resolve"
    );
    Ok(())
}
