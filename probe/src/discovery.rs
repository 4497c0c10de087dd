//! CNI-agnostic discovery of pods' network plumbing, without exec rights: named network
//! namespaces (`/run/netns/*`, as `ip netns` creates them) with their listening TCP ports,
//! inode and host-side veth — by entering the namespace on a short-lived thread — and a pod's
//! host-side veth from its IPs ([`host_veths_of_pods`]: namespace scan, then the host route).

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use crate::error::{Error, Result};
use crate::netlink;

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The host side of a namespace's veth.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostVeth {
    /// Host-side interface index.
    pub ifindex: u32,
    /// Host-side interface name.
    pub name: String,
    /// Global addresses on the namespace side of the veth (the "pod IPs").
    pub pod_ips: Vec<IpAddr>,
}

/// Names of the namespaces in [`NETNS_DIR`], sorted; none if the directory is missing.
pub fn named() -> Result<Vec<String>> {
    let dir = Path::new(NETNS_DIR);
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Read {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Read {
            path: dir.to_owned(),
            source,
        })?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn ns_path(name: &str) -> Result<PathBuf> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(Error::Netns {
            name: name.to_owned(),
            what: "invalid name",
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    }
    Ok(Path::new(NETNS_DIR).join(name))
}

/// Runs `f` on a new thread inside namespace `name`; the thread ends with `f`, so the
/// caller's threads never change namespace.
fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    in_netns_at(&ns_path(name)?, name, f)
}

/// [`in_netns`] for the namespace file at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`);
/// `label` names it in errors.
fn in_netns_at<T: Send + 'static>(
    path: &Path,
    label: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let owned = label.to_owned();
    let file = File::open(path).map_err(|source| Error::Netns {
        name: owned.clone(),
        what: "open",
        source,
    })?;
    let handle = std::thread::Builder::new()
        .name("clovisor-netns".into())
        .spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Netns {
                name: owned,
                what: "setns",
                source: std::io::Error::from(e),
            })?;
            f()
        })
        .map_err(|source| Error::Netns {
            name: label.to_owned(),
            what: "spawn thread",
            source,
        })?;
    handle.join().unwrap_or_else(|_| {
        Err(Error::Netns {
            name: label.to_owned(),
            what: "namespace thread panicked",
            source: std::io::Error::other("panic"),
        })
    })
}

/// The inode of the named namespace: what the kernel reports as a task's network namespace
/// (`/proc/PID/ns/net`), so the socket program can tell its processes apart.
pub fn inode(name: &str) -> Result<u32> {
    use std::os::unix::fs::MetadataExt;
    let path = Path::new(NETNS_DIR).join(name);
    let meta = std::fs::metadata(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    // Namespace inodes are allocated from the kernel's 32-bit proc inode numbers.
    u32::try_from(meta.ino()).map_err(|_| Error::Netns {
        name: name.to_owned(),
        what: "inode beyond 32 bits",
        source: std::io::Error::from(std::io::ErrorKind::InvalidData),
    })
}

/// TCP ports listening in namespace `name` on a non-loopback address (IPv4 and IPv6): asked of
/// the kernel through sock_diag, which lists listeners only; `/proc/net/tcp{,6}` (every socket
/// of the namespace) where sock_diag is not available.
pub fn listening_tcp_ports(name: &str) -> Result<BTreeSet<u16>> {
    in_netns(name, || {
        match crate::netlink::Socket::open_sock_diag().and_then(|mut s| s.listening_tcp()) {
            Ok(listeners) => {
                return Ok(listeners
                    .into_iter()
                    .filter(|(ip, _)| !is_loopback_listener(ip))
                    .map(|(_, port)| port)
                    .collect())
            }
            Err(e) => tracing::debug!(error = %e, "sock_diag unavailable; reading /proc/net/tcp"),
        }
        let mut ports = BTreeSet::new();
        // thread-self: /proc/self/net follows the main thread's namespace, not ours.
        for file in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
            let path = Path::new(file);
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                // No IPv6 in this kernel: nothing listens there.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(Error::Read {
                        path: path.to_owned(),
                        source,
                    })
                }
            };
            for l in parse_proc_net_tcp(path, &text)? {
                if l.listening && !l.local.is_loopback() {
                    ports.insert(l.port);
                }
            }
        }
        Ok(ports)
    })
}

/// A listener only reachable from inside its namespace: 127.0.0.0/8, ::1 or a v4-mapped
/// loopback address.
fn is_loopback_listener(ip: &std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The host side of namespace `name`'s veth: the namespace's veth (`eth0` preferred)
/// whose peer (IFLA_LINK) is a veth in the caller's namespace.
pub fn host_veth(name: &str) -> Result<HostVeth> {
    let (inside, addrs) = in_netns(name, dump_links_and_addrs)?;
    host_peer(name, &inside, &addrs)
}

fn dump_links_and_addrs() -> Result<(Vec<netlink::Link>, Vec<netlink::Addr>)> {
    let mut s = netlink::Socket::open()?;
    Ok((s.links()?, s.addrs()?))
}

/// The host peer of the best pod-side veth among `inside` (links of namespace `label`).
fn host_peer(label: &str, inside: &[netlink::Link], addrs: &[netlink::Addr]) -> Result<HostVeth> {
    let host_links = netlink::Socket::open()?.links()?;
    let mut candidates: Vec<&netlink::Link> = inside
        .iter()
        .filter(|l| l.kind.as_deref() == Some("veth") && l.link.is_some())
        .collect();
    // eth0 first: what CNIs name the pod side.
    candidates.sort_by_key(|l| (l.name != "eth0", l.index));
    for pod_side in candidates {
        let Some(peer) = pod_side.link else { continue };
        let Some(host) = host_links.iter().find(|h| {
            h.index == peer && h.kind.as_deref() == Some("veth") && h.link == Some(pod_side.index)
        }) else {
            continue;
        };
        let pod_ips = addrs
            .iter()
            .filter(|a| a.index == pod_side.index && a.scope == 0)
            .map(|a| a.ip)
            .collect();
        return Ok(HostVeth {
            ifindex: host.index,
            name: host.name.clone(),
            pod_ips,
        });
    }
    Err(Error::NoHostVeth {
        name: label.to_owned(),
    })
}

/// How [`host_veth_of_ips`] found a pod's veth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VethMethod {
    /// The pod's namespace is a named one (`/run/netns/NAME`, containerd and CRI-O sandboxes).
    NamedNetns(String),
    /// The pod's namespace is that of a process (`/proc/PID/ns/net`).
    ProcessNetns(u32),
    /// The host route to the pod IP goes out through a veth (Calico, Cilium and other
    /// routed CNIs).
    HostRoute,
}

impl std::fmt::Display for VethMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NamedNetns(n) => write!(f, "named netns {n}"),
            Self::ProcessNetns(pid) => write!(f, "netns of pid {pid}"),
            Self::HostRoute => f.write_str("host route"),
        }
    }
}

/// A pod's network namespace as found from its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundPod {
    /// Its host-side veth.
    pub veth: HostVeth,
    /// How it was found.
    pub method: VethMethod,
    /// The namespace's inode (what the socket point filters processes on); `None` when found
    /// through the host route, which does not tell the namespace.
    pub netns_inode: Option<u32>,
}

/// The host-side veth of the pod carrying one of `ips`, found without exec rights and
/// whatever the CNI: first the network namespace holding one of the addresses (named
/// namespaces, then those of the processes this probe can see), whose `eth0` peer is the
/// host veth; failing that, the interface of the host route to the pod IP when it is a veth.
pub fn host_veth_of_ips(ips: &[IpAddr]) -> Result<FoundPod> {
    host_veths_of_pods(&[ips.to_vec()])
        .pop()
        .unwrap_or_else(|| {
            Err(Error::NoHostVeth {
                name: "(no pod)".to_owned(),
            })
        })
}

/// [`host_veth_of_ips`] for several pods (each a list of its IPs) at once: every namespace is
/// entered once whatever the number of pods, and the scan stops when all are found. Results
/// are in the order of `pods`.
pub fn host_veths_of_pods(pods: &[Vec<IpAddr>]) -> Vec<Result<FoundPod>> {
    let mut found: Vec<Option<Result<FoundPod>>> =
        std::iter::repeat_with(|| None).take(pods.len()).collect();
    if let Err(e) = scan_namespaces(pods, &mut found) {
        tracing::warn!(error = %e, "cannot scan network namespaces for pod IPs");
    }
    let route = |ips: &[IpAddr]| -> Result<FoundPod> {
        let mut s = netlink::Socket::open()?;
        let links = s.links()?;
        for ip in ips {
            let Some(oif) = s.route_output(*ip)? else {
                continue;
            };
            if let Some(l) = links
                .iter()
                .find(|l| l.index == oif && l.kind.as_deref() == Some("veth"))
            {
                let veth = HostVeth {
                    ifindex: l.index,
                    name: l.name.clone(),
                    pod_ips: ips.to_vec(),
                };
                return Ok(FoundPod {
                    veth,
                    method: VethMethod::HostRoute,
                    netns_inode: None,
                });
            }
        }
        Err(Error::NoHostVeth {
            name: ips
                .first()
                .map_or_else(|| "(no pod IP)".to_owned(), IpAddr::to_string),
        })
    };
    pods.iter()
        .zip(found)
        .map(|(ips, f)| match f {
            Some(Ok(v)) => Ok(v),
            // Not in any namespace we can see, or its namespace has no veth to the host
            // (another kind of interface): the host route may still know it.
            Some(Err(_)) | None => route(ips),
        })
        .collect()
}

/// Enters each distinct namespace once — the named ones, then (only if some pod is still
/// missing) those of the processes — and records, for every pod not found yet, the host peer
/// of the namespace holding one of its IPs.
fn scan_namespaces(pods: &[Vec<IpAddr>], found: &mut [Option<Result<FoundPod>>]) -> Result<()> {
    // Ours never: the host has no pod IP to find.
    let mut seen: BTreeSet<(u64, u64)> =
        ns_id(Path::new("/proc/self/ns/net")).into_iter().collect();
    let named: Vec<(PathBuf, VethMethod)> = named()?
        .into_iter()
        .map(|n| (Path::new(NETNS_DIR).join(&n), VethMethod::NamedNetns(n)))
        .collect();
    scan_some(named, &mut seen, pods, found);
    if found.iter().any(Option::is_none) {
        scan_some(process_netns(), &mut seen, pods, found);
    }
    Ok(())
}

fn scan_some(
    candidates: Vec<(PathBuf, VethMethod)>,
    seen: &mut BTreeSet<(u64, u64)>,
    pods: &[Vec<IpAddr>],
    found: &mut [Option<Result<FoundPod>>],
) {
    for (path, method) in candidates {
        if found.iter().all(Option::is_some) {
            return;
        }
        // Each namespace once.
        let Some(id) = ns_id(&path) else { continue };
        if !seen.insert(id) {
            continue;
        }
        let label = method.to_string();
        let (links, addrs) = match in_netns_at(&path, &label, dump_links_and_addrs) {
            Ok(d) => d,
            // A process that exited meanwhile, a namespace we may not enter: not a pod here.
            Err(e) => {
                tracing::trace!(error = %e, "namespace skipped");
                continue;
            }
        };
        for (ips, slot) in pods.iter().zip(found.iter_mut()) {
            if slot.is_none() && addrs.iter().any(|a| ips.contains(&a.ip)) {
                *slot = Some(host_peer(&label, &links, &addrs).map(|veth| FoundPod {
                    veth,
                    method: method.clone(),
                    // Namespace inodes are the kernel's 32-bit proc inode numbers.
                    netns_inode: u32::try_from(id.1).ok(),
                }));
            }
        }
    }
}

/// Device and inode of a namespace file: equal for two handles on the same namespace.
fn ns_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// `/proc/PID/ns/net` of every process in `/proc` (as many as this process can see).
fn process_netns() -> Vec<(PathBuf, VethMethod)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, VethMethod)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .map(|pid| {
            (
                PathBuf::from(format!("/proc/{pid}/ns/net")),
                VethMethod::ProcessNetns(pid),
            )
        })
        .collect();
    out.sort_by_key(|(_, m)| match m {
        VethMethod::ProcessNetns(pid) => *pid,
        _ => 0,
    });
    out
}

/// One row of `/proc/net/tcp{,6}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcTcpRow {
    /// Local address.
    pub local: IpAddr,
    /// Local port.
    pub port: u16,
    /// State is TCP_LISTEN (0x0A).
    pub listening: bool,
}

/// Parses a `/proc/net/tcp` or `/proc/net/tcp6` table. Addresses there are the kernel's
/// in-memory words printed in hex: each 32-bit word is in host byte order.
pub fn parse_proc_net_tcp(path: &Path, text: &str) -> Result<Vec<ProcTcpRow>> {
    let bad = |line: &str| Error::ProcNetParse {
        path: path.to_owned(),
        line: line.to_owned(),
    };
    let mut rows = Vec::new();
    for line in text.lines().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let _slot = fields.next();
        let local = fields.next().ok_or_else(|| bad(line))?;
        let _remote = fields.next().ok_or_else(|| bad(line))?;
        let state = fields.next().ok_or_else(|| bad(line))?;
        let (addr_hex, port_hex) = local.split_once(':').ok_or_else(|| bad(line))?;
        let port = u16::from_str_radix(port_hex, 16).map_err(|_| bad(line))?;
        let local = parse_hex_addr(addr_hex).ok_or_else(|| bad(line))?;
        let state = u8::from_str_radix(state, 16).map_err(|_| bad(line))?;
        rows.push(ProcTcpRow {
            local,
            port,
            listening: state == 0x0A,
        });
    }
    Ok(rows)
}

fn parse_hex_addr(hex: &str) -> Option<IpAddr> {
    if !hex.is_ascii() {
        return None;
    }
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    match hex.len() {
        8 => {
            let b = word(0)?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(b);
            // A v4-mapped listener (dual-stack socket bound to a v4 address).
            Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real rows (x86_64, little endian) captured from /proc/net/tcp{,6}.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 100 0 0 10 0
   2: 0200000A:1F90 0100000A:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 12347 1 0000000000000000 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1A0B 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 000000FD000000000000000001000000:0050 000000FD000000000000000002000000:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn ipv4_rows_parse_with_host_order_words() {
        let rows = parse_proc_net_tcp(Path::new("tcp"), TCP).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rows.len(), 3, "three rows expected, got {rows:?}");
        assert_eq!(
            rows[0],
            ProcTcpRow {
                local: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                port: 8080,
                listening: true
            },
            "0.0.0.0:8080 LISTEN"
        );
        assert_eq!(
            rows[1].local,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            "0100007F is 127.0.0.1 on little endian"
        );
        assert_eq!(
            rows[2].local,
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            "0200000A is 10.0.0.2"
        );
        assert!(
            !rows[2].listening,
            "state 01 (ESTABLISHED) is not listening"
        );
    }

    #[test]
    fn ipv6_rows_parse() {
        let rows = parse_proc_net_tcp(Path::new("tcp6"), TCP6).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            rows[0].local,
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            ":: listener"
        );
        assert_eq!(rows[0].port, 80, "port 0x50");
        assert_eq!(
            rows[1].local,
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            "::1 listener"
        );
        assert_eq!(
            rows[2].local,
            "fd00::1"
                .parse::<IpAddr>()
                .unwrap_or_else(|e| panic!("{e}")),
            "fd00::1"
        );
    }

    #[test]
    fn garbage_lines_are_errors() {
        for text in [
            "hdr\n 0: zz:1F90 0:0 0A",
            "hdr\n 0: 00000000",
            "hdr\n 0: 0000000:1F90 00:00 0A",
            "hdr\n 0: 00000000:FFFFF 0:0 0A",
        ] {
            assert!(
                parse_proc_net_tcp(Path::new("t"), text).is_err(),
                "{text:?} must be rejected"
            );
        }
    }

    #[test]
    fn names_with_slashes_are_refused() {
        for bad in ["", ".", "..", "a/b", "../etc"] {
            assert!(ns_path(bad).is_err(), "netns name {bad:?} must be refused");
        }
        assert!(ns_path("pod-a").is_ok(), "plain name accepted");
    }
}
