//! IP addresses as the contracts carry them (`bytes`, 4 or 16 in network order), typed once here
//! through accessors on the messages that hold them, so no stage parses them again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{capture, session};

/// The address `bytes` hold: IPv4 from 4 bytes, IPv6 from 16. An IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`, how a dual-stack socket reports an IPv4 peer) reads as the IPv4 address,
/// so both spellings are one address. `None` for any other length.
pub fn ip(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::V4(Ipv4Addr::from(v4)));
    }
    let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
    Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
}

impl capture::v1::FlowKey {
    /// The client's address (see [`ip`]).
    pub fn client_addr(&self) -> Option<IpAddr> {
        ip(&self.client_ip)
    }

    /// The server's address (see [`ip`]).
    pub fn server_addr(&self) -> Option<IpAddr> {
        ip(&self.server_ip)
    }
}

impl capture::v1::EndpointUpdate {
    /// The address the metadata is about (see [`ip`]).
    pub fn addr(&self) -> Option<IpAddr> {
        ip(&self.ip)
    }
}

impl session::v1::Dns {
    /// The answers' addresses (see [`ip`]); bytes of another length are skipped.
    pub fn answers(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.answer_addresses.iter().filter_map(|a| ip(a))
    }
}

impl session::v1::Endpoint {
    /// The endpoint's address (see [`ip`]).
    pub fn addr(&self) -> Option<IpAddr> {
        ip(&self.ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_and_sixteen_bytes_are_addresses_and_mapped_ipv4_is_ipv4() {
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(ip(&[10, 0, 0, 1]), Some(v4));
        assert_eq!(
            ip(&Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped().octets()),
            Some(v4),
            "::ffff:10.0.0.1 is 10.0.0.1"
        );
        assert_eq!(
            ip(&Ipv6Addr::LOCALHOST.octets()),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        assert_eq!(ip(&[]), None);
        assert_eq!(ip(&[1, 2, 3]), None);
        assert_eq!(ip(&[0; 17]), None);
        let key = capture::v1::FlowKey {
            client_ip: vec![127, 0, 0, 1],
            server_ip: vec![1; 5],
            ..Default::default()
        };
        assert!(key.client_addr().is_some_and(|a| a.is_loopback()));
        assert_eq!(key.server_addr(), None, "five bytes are no address");
    }
}
