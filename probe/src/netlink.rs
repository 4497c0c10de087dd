//! A minimal netlink client: the few rtnetlink dumps and requests the probe needs (links,
//! addresses, tc filters, deleting a clsact qdisc) and one sock_diag dump (listening TCP
//! sockets), safe code over `nix` sockets.
//!
//! Messages are built and parsed here by hand because the layouts are tiny and stable
//! uapi; every length read from the kernel is checked before use.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::error::{Error, Result};

const NLMSG_HDR: usize = 16;
const RECV_TIMEOUT_SECS: i64 = 5;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_DELQDISC: u16 = 37;
const RTM_NEWTFILTER: u16 = 44;
const RTM_GETTFILTER: u16 = 46;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_MULTIPATH: u16 = 9;
const RTA_TABLE: u16 = 15;
const RTA_VIA: u16 = 18;
const RT_TABLE_MAIN: u32 = 254;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const TCP_LISTEN: u32 = 10;
const RTN_UNICAST: u8 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_NAME: u16 = 7;
/// `TC_H_CLSACT`, the parent of the clsact qdisc.
pub const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
/// clsact ingress / egress hook parents (`TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS|EGRESS)`).
pub const CLSACT_INGRESS: u32 = 0xFFFF_FFF2;
/// See [`CLSACT_INGRESS`].
pub const CLSACT_EGRESS: u32 = 0xFFFF_FFF3;

/// A network interface as rtnetlink describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// `IFLA_LINK`: for a veth, the peer's ifindex (in the peer's namespace).
    pub link: Option<u32>,
    /// `IFLA_INFO_KIND` (`veth`, `bridge`, …).
    pub kind: Option<String>,
}

/// An address on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    /// Interface index.
    pub index: u32,
    /// The address.
    pub ip: IpAddr,
    /// `RT_SCOPE_*` (0 = universe/global).
    pub scope: u8,
}

/// A unicast route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Prefix length of the destination (0 for a default route).
    pub dst_len: u8,
    /// Whether it goes through a gateway (off this host's links).
    pub gateway: bool,
    /// Output interfaces (several for a multipath route).
    pub oifs: Vec<u32>,
}

/// One rtnetlink socket in the calling thread's network namespace.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

fn io(what: &'static str) -> impl Fn(nix::Error) -> Error {
    move |e| Error::Netlink {
        what,
        source: std::io::Error::from(e),
    }
}

fn malformed(what: &'static str, reason: impl Into<String>) -> Error {
    Error::NetlinkMalformed {
        what,
        reason: reason.into(),
    }
}

impl Socket {
    /// Opens an rtnetlink socket in the current thread's network namespace.
    pub fn open() -> Result<Self> {
        Self::open_protocol(SockProtocol::NetlinkRoute)
    }

    /// Opens a sock_diag socket in the current thread's network namespace.
    pub fn open_sock_diag() -> Result<Self> {
        Self::open_protocol(SockProtocol::NetlinkSockDiag)
    }

    fn open_protocol(protocol: SockProtocol) -> Result<Self> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            protocol,
        )
        .map_err(io("socket"))?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(io("bind"))?;
        // The kernel always answers rtnetlink requests; the timeout only keeps a wedged
        // kernel from hanging the caller forever.
        setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &TimeVal::seconds(RECV_TIMEOUT_SECS),
        )
        .map_err(io("setsockopt"))?;
        Ok(Self { fd, seq: 0 })
    }

    /// Sends `body` as a `ty` request and collects the answers (payloads of messages of
    /// type `want`) until DONE (dumps) or the ACK (plain requests).
    fn request(
        &mut self,
        what: &'static str,
        ty: u16,
        flags: u16,
        body: &[u8],
        want: u16,
    ) -> Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let len = u32::try_from(NLMSG_HDR + body.len())
            .map_err(|_| malformed(what, "request too large"))?;
        let mut msg = Vec::with_capacity(NLMSG_HDR + body.len());
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        send(self.fd.as_raw_fd(), &msg, MsgFlags::empty()).map_err(io(what))?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answers = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(io(what))?;
            let mut rest = buf.get(..n).ok_or_else(|| malformed(what, "recv length"))?;
            while rest.len() >= NLMSG_HDR {
                let mlen = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let mty = u16::from_ne_bytes([rest[4], rest[5]]);
                let mseq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
                if mlen < NLMSG_HDR || mlen > rest.len() {
                    return Err(malformed(
                        what,
                        format!("message length {mlen} of {}", rest.len()),
                    ));
                }
                let payload = &rest[NLMSG_HDR..mlen];
                if mseq == seq {
                    match mty {
                        NLMSG_DONE => return Ok(answers),
                        NLMSG_ERROR => {
                            let code = payload
                                .get(..4)
                                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                                .ok_or_else(|| malformed(what, "short error message"))?;
                            if code == 0 {
                                if !dump {
                                    return Ok(answers);
                                }
                            } else {
                                return Err(Error::Netlink {
                                    what,
                                    source: std::io::Error::from_raw_os_error(-code),
                                });
                            }
                        }
                        t if t == want => answers.push(payload.to_vec()),
                        _ => {}
                    }
                }
                let aligned = (mlen + 3) & !3;
                rest = rest.get(aligned..).unwrap_or(&[]);
            }
        }
    }

    /// Local addresses and ports of the TCP sockets listening in the namespace, of both
    /// families (a sock_diag socket). The kernel filters by state, so a namespace with many
    /// connections costs no more than its listeners (unlike reading `/proc/net/tcp`).
    pub fn listening_tcp(&mut self) -> Result<Vec<(IpAddr, u16)>> {
        let mut out = Vec::new();
        for family in [AF_INET, AF_INET6] {
            // struct inet_diag_req_v2: family, protocol, ext, pad, states, then a zero sockid.
            let mut req = [0u8; 56];
            req[0] = family;
            req[1] = IPPROTO_TCP;
            req[4..8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
            for msg in self.request(
                "sock_diag",
                SOCK_DIAG_BY_FAMILY,
                NLM_F_DUMP,
                &req,
                SOCK_DIAG_BY_FAMILY,
            )? {
                // struct inet_diag_msg: family, state, timer, retrans, then the sockid:
                // sport (network order) at 4, the source address at 8 (4 or 16 bytes).
                let Some(head) = msg.get(..24) else {
                    return Err(malformed("sock_diag", "short inet_diag_msg"));
                };
                let port = u16::from_be_bytes([head[4], head[5]]);
                let ip = match head[0] {
                    AF_INET => IpAddr::V4(Ipv4Addr::new(head[8], head[9], head[10], head[11])),
                    AF_INET6 => {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(&head[8..24]);
                        IpAddr::V6(Ipv6Addr::from(a))
                    }
                    _ => continue,
                };
                out.push((ip, port));
            }
        }
        Ok(out)
    }

    /// Every interface of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        const WHAT: &str = "link dump";
        let body = [0u8; 16]; // struct ifinfomsg, AF_UNSPEC
        let mut links = Vec::new();
        for p in self.request(WHAT, RTM_GETLINK, NLM_F_DUMP, &body, RTM_NEWLINK)? {
            let hdr = p
                .get(..16)
                .ok_or_else(|| malformed(WHAT, "short ifinfomsg"))?;
            let index = i32::from_ne_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
            let mut link = Link {
                index: u32::try_from(index).map_err(|_| malformed(WHAT, "negative ifindex"))?,
                name: String::new(),
                link: None,
                kind: None,
            };
            for (ty, val) in attrs(&p[16..]) {
                match ty {
                    IFLA_IFNAME => link.name = c_string(val),
                    IFLA_LINK if val.len() >= 4 => {
                        link.link = Some(u32::from_ne_bytes([val[0], val[1], val[2], val[3]]));
                    }
                    IFLA_LINKINFO => {
                        link.kind = attrs(val)
                            .find(|(t, _)| *t == IFLA_INFO_KIND)
                            .map(|(_, v)| c_string(v));
                    }
                    _ => {}
                }
            }
            links.push(link);
        }
        Ok(links)
    }

    /// Every address of the namespace.
    pub fn addrs(&mut self) -> Result<Vec<Addr>> {
        const WHAT: &str = "address dump";
        let body = [0u8; 8]; // struct ifaddrmsg, AF_UNSPEC
        let mut out = Vec::new();
        for p in self.request(WHAT, RTM_GETADDR, NLM_F_DUMP, &body, RTM_NEWADDR)? {
            let hdr = p
                .get(..8)
                .ok_or_else(|| malformed(WHAT, "short ifaddrmsg"))?;
            let family = i32::from(hdr[0]);
            let scope = hdr[3];
            let index = u32::from_ne_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
            let mut address = None;
            let mut local = None;
            for (ty, val) in attrs(&p[8..]) {
                let ip = match (family, val.len()) {
                    (libc::AF_INET, 4) => {
                        Some(IpAddr::V4(Ipv4Addr::new(val[0], val[1], val[2], val[3])))
                    }
                    (libc::AF_INET6, 16) => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(val);
                        Some(IpAddr::V6(Ipv6Addr::from(b)))
                    }
                    _ => None,
                };
                match ty {
                    IFA_ADDRESS => address = ip,
                    IFA_LOCAL => local = ip,
                    _ => {}
                }
            }
            // IFA_LOCAL is the interface's own address on point-to-point links.
            if let Some(ip) = local.or(address) {
                out.push(Addr { index, ip, scope });
            }
        }
        Ok(out)
    }

    /// The interface the kernel would send a packet to `ip` through (`ip route get`), if
    /// it has a route.
    pub fn route_output(&mut self, ip: IpAddr) -> Result<Option<u32>> {
        const WHAT: &str = "route get";
        let (family, dst, bits): (u8, Vec<u8>, u8) = match ip {
            IpAddr::V4(v4) => (libc::AF_INET as u8, v4.octets().to_vec(), 32),
            IpAddr::V6(v6) => (libc::AF_INET6 as u8, v6.octets().to_vec(), 128),
        };
        // struct rtmsg (12 bytes) then RTA_DST.
        let mut body = vec![0u8; 12];
        body[0] = family;
        body[1] = bits;
        let attr_len = u16::try_from(4 + dst.len()).map_err(|_| malformed(WHAT, "address"))?;
        body.extend_from_slice(&attr_len.to_ne_bytes());
        body.extend_from_slice(&RTA_DST.to_ne_bytes());
        body.extend_from_slice(&dst);
        let answers = match self.request(WHAT, RTM_GETROUTE, NLM_F_ACK, &body, RTM_NEWROUTE) {
            Ok(a) => a,
            // No route at all (ENETUNREACH / EHOSTUNREACH): no answer, not a failure.
            Err(Error::Netlink { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH)
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        for p in answers {
            let attrs_buf = p.get(12..).ok_or_else(|| malformed(WHAT, "short rtmsg"))?;
            if let Some((_, v)) = attrs(attrs_buf).find(|(t, v)| *t == RTA_OIF && v.len() >= 4) {
                return Ok(Some(u32::from_ne_bytes([v[0], v[1], v[2], v[3]])));
            }
        }
        Ok(None)
    }

    /// The unicast routes of the main table, IPv4 and IPv6.
    pub fn routes(&mut self) -> Result<Vec<Route>> {
        const WHAT: &str = "route dump";
        let mut out = Vec::new();
        for family in [libc::AF_INET, libc::AF_INET6] {
            // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
            let mut body = [0u8; 12];
            body[0] = u8::try_from(family).map_err(|_| malformed(WHAT, "family"))?;
            for p in self.request(WHAT, RTM_GETROUTE, NLM_F_DUMP, &body, RTM_NEWROUTE)? {
                let hdr = p.get(..12).ok_or_else(|| malformed(WHAT, "short rtmsg"))?;
                let mut table = u32::from(hdr[4]);
                let kind = hdr[7];
                let mut route = Route {
                    dst_len: hdr[1],
                    gateway: false,
                    oifs: Vec::new(),
                };
                for (ty, val) in attrs(&p[12..]) {
                    match ty {
                        RTA_TABLE if val.len() >= 4 => {
                            table = u32::from_ne_bytes([val[0], val[1], val[2], val[3]]);
                        }
                        RTA_OIF if val.len() >= 4 => route
                            .oifs
                            .push(u32::from_ne_bytes([val[0], val[1], val[2], val[3]])),
                        RTA_GATEWAY | RTA_VIA => route.gateway = true,
                        RTA_MULTIPATH => route.oifs.extend(next_hops(val)),
                        _ => {}
                    }
                }
                if table == RT_TABLE_MAIN && kind == RTN_UNICAST {
                    out.push(route);
                }
            }
        }
        Ok(out)
    }

    /// Names of the BPF programs of the tc filters under `parent` on `ifindex` (empty
    /// for filters that are not BPF or carry no name).
    pub fn filters(&mut self, ifindex: u32, parent: u32) -> Result<Vec<String>> {
        const WHAT: &str = "filter dump";
        let body = tcmsg(ifindex, 0, parent);
        let mut out = Vec::new();
        for p in self.request(WHAT, RTM_GETTFILTER, NLM_F_DUMP, &body, RTM_NEWTFILTER)? {
            let attrs_buf = p.get(20..).ok_or_else(|| malformed(WHAT, "short tcmsg"))?;
            // The kernel lists a chain/priority head without options too: skip those.
            let Some((_, options)) = attrs(attrs_buf).find(|(t, _)| *t == TCA_OPTIONS) else {
                continue;
            };
            let name = attrs(options)
                .find(|(t, _)| *t == TCA_BPF_NAME)
                .map(|(_, v)| c_string(v))
                .unwrap_or_default();
            out.push(name);
        }
        Ok(out)
    }

    /// Deletes the clsact qdisc of `ifindex` (and with it any filter left on it).
    pub fn delete_clsact(&mut self, ifindex: u32) -> Result<()> {
        let body = tcmsg(ifindex, 0xFFFF_0000, TC_H_CLSACT);
        self.request("clsact delete", RTM_DELQDISC, NLM_F_ACK, &body, 0)?;
        Ok(())
    }
}

/// `struct tcmsg` (20 bytes), AF_UNSPEC.
fn tcmsg(ifindex: u32, handle: u32, parent: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    b[8..12].copy_from_slice(&handle.to_ne_bytes());
    b[12..16].copy_from_slice(&parent.to_ne_bytes());
    b
}

/// Output interfaces of an `RTA_MULTIPATH` list of `struct rtnexthop` (len u16, flags u8,
/// hops u8, ifindex i32, then attributes).
fn next_hops(mut buf: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    while buf.len() >= 8 {
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        if len < 8 {
            break;
        }
        out.push(u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]));
        let aligned = (len + 3) & !3;
        buf = buf.get(aligned..).unwrap_or(&[]);
    }
    out
}

fn c_string(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// Iterates over `(type, value)` of a run of netlink attributes; stops at the first
/// malformed one rather than reading past it.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            buf = &[];
            return None;
        }
        let val = &buf[4..len];
        buf = buf.get((len + 3) & !3..).unwrap_or(&[]);
        Some((ty, val))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, val: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&u16::try_from(4 + val.len()).unwrap_or(0).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(val);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn attributes_are_walked_with_padding_and_nesting() {
        let mut buf = attr(IFLA_IFNAME, b"veth0\0");
        buf.extend(attr(IFLA_LINK, &9u32.to_ne_bytes()));
        buf.extend(attr(
            IFLA_LINKINFO | 0x8000,
            &attr(IFLA_INFO_KIND, b"veth\0"),
        ));
        let got: Vec<(u16, Vec<u8>)> = attrs(&buf).map(|(t, v)| (t, v.to_vec())).collect();
        assert_eq!(got.len(), 3, "three attributes expected, got {got:?}");
        assert_eq!(c_string(&got[0].1), "veth0", "name");
        assert_eq!(got[2].0, IFLA_LINKINFO, "nested flag must be masked off");
        let kind: Vec<String> = attrs(&got[2].1).map(|(_, v)| c_string(v)).collect();
        assert_eq!(kind, vec!["veth".to_owned()], "nested kind");
    }

    #[test]
    fn truncated_attributes_stop_the_walk() {
        let mut buf = attr(IFLA_IFNAME, b"eth0\0");
        buf.extend_from_slice(&[200, 0, 3, 0, 1, 2]); // claims 200 bytes, has 6
        assert_eq!(
            attrs(&buf).count(),
            1,
            "the malformed attribute must not be returned"
        );
        assert_eq!(attrs(&[1, 0]).count(), 0, "2 bytes are no attribute");
    }

    #[test]
    fn listening_sockets_are_found_by_sock_diag() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("a test listener must bind: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        let found = Socket::open_sock_diag()
            .and_then(|mut s| s.listening_tcp())
            .unwrap_or_else(|e| panic!("sock_diag dump must work: {e}"));
        assert!(
            found.contains(&(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
            "the listener on 127.0.0.1:{port} must be listed: {found:?}"
        );
    }

    #[test]
    fn loopback_is_found_in_this_namespace() {
        // Needs no privilege: a link dump works for any user.
        let mut s = Socket::open().unwrap_or_else(|e| panic!("netlink socket: {e}"));
        let links = s.links().unwrap_or_else(|e| panic!("link dump: {e}"));
        assert!(
            links.iter().any(|l| l.name == "lo" && l.index == 1),
            "lo with index 1 expected in {links:?}"
        );
        let addrs = s.addrs().unwrap_or_else(|e| panic!("addr dump: {e}"));
        assert!(
            addrs
                .iter()
                .any(|a| a.ip == IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "127.0.0.1 expected in {addrs:?}"
        );
    }
}
