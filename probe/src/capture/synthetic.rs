//! Synthetic traffic for the tc programs run through the kernel's `BPF_PROG_TEST_RUN`
//! ([`crate::Capture::test_run`]): Ethernet frames of IPv4 TCP segments, and the keep-alive HTTP
//! exchanges of a set of connections built from them. For the microbenchmark of the programs
//! alone (`probe/examples/tc_test_run.rs`) and its test.

use std::net::Ipv4Addr;

/// An Ethernet frame of one IPv4 TCP segment (ACK and PSH set, no options) carrying `payload`
/// bytes of `a`, from `src:sport` to `dst:dport` with sequence number `seq`. Checksums are left
/// zero: the programs do not read them.
pub fn tcp_frame(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    seq: u32,
    payload: usize,
) -> Vec<u8> {
    const HEADERS: usize = 20 + 20;
    let ip_len = u16::try_from(HEADERS + payload).unwrap_or(u16::MAX);
    let mut f = Vec::with_capacity(14 + HEADERS + payload);
    f.extend_from_slice(&[0; 12]); // destination and source MAC
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f.extend_from_slice(&[0x45, 0]); // version 4, 20-byte header; DSCP
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]); // id; DF; TTL; TCP; checksum
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&1u32.to_be_bytes()); // acknowledgment number
    f.extend_from_slice(&[0x50, 0x18]); // 20-byte header; ACK and PSH
    f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, checksum, urgent pointer
    f.resize(f.len() + payload, b'a');
    f
}

/// Keep-alive exchanges on `connections` connections from one client address to one server
/// port, each connection's sequence numbers moving on by what it sent.
#[derive(Debug, Clone)]
pub struct KeepAlive {
    client: Ipv4Addr,
    server: Ipv4Addr,
    server_port: u16,
    request_bytes: u16,
    response_bytes: u16,
    client_seq: Vec<u32>,
    server_seq: Vec<u32>,
}

/// The first client port; connection `c` uses the next `c`-th.
const FIRST_CLIENT_PORT: u16 = 40_000;

impl KeepAlive {
    /// Exchanges of `request_bytes` and `response_bytes` on `connections` connections (at most
    /// 25,535: the client ports above 40,000) from 10.0.0.2 to 10.0.0.1:`server_port`.
    pub fn new(
        connections: u16,
        server_port: u16,
        request_bytes: u16,
        response_bytes: u16,
    ) -> Self {
        let n = connections.min(u16::MAX - FIRST_CLIENT_PORT);
        Self {
            client: Ipv4Addr::new(10, 0, 0, 2),
            server: Ipv4Addr::new(10, 0, 0, 1),
            server_port,
            request_bytes,
            response_bytes,
            client_seq: (0..u32::from(n)).map(|c| 1_000 + c).collect(),
            server_seq: (0..u32::from(n)).map(|c| 5_000_000 + c).collect(),
        }
    }

    /// How many connections there are.
    pub fn connections(&self) -> usize {
        self.client_seq.len()
    }

    /// The next exchange on connection `c % connections`: its request's frame (client to server)
    /// and its response's (server to client).
    pub fn exchange(&mut self, c: usize) -> (Vec<u8>, Vec<u8>) {
        let c = c % self.connections().max(1);
        let port = FIRST_CLIENT_PORT.saturating_add(u16::try_from(c).unwrap_or(0));
        let (Some(cs), Some(ss)) = (self.client_seq.get_mut(c), self.server_seq.get_mut(c)) else {
            return (Vec::new(), Vec::new());
        };
        let request = tcp_frame(
            self.client,
            self.server,
            port,
            self.server_port,
            *cs,
            usize::from(self.request_bytes),
        );
        let response = tcp_frame(
            self.server,
            self.client,
            self.server_port,
            port,
            *ss,
            usize::from(self.response_bytes),
        );
        *cs = cs.wrapping_add(u32::from(self.request_bytes));
        *ss = ss.wrapping_add(u32::from(self.response_bytes));
        (request, response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_an_ipv4_tcp_segment_of_its_payload() {
        let f = tcp_frame(
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 1),
            40_000,
            80,
            7,
            100,
        );
        assert_eq!(f.len(), 14 + 20 + 20 + 100);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 140, "IP total length");
        assert_eq!(f[23], 6, "TCP");
        assert_eq!(&f[26..30], &[10, 0, 0, 2]);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 80, "destination port");
        assert_eq!(
            u32::from_be_bytes([f[38], f[39], f[40], f[41]]),
            7,
            "sequence"
        );
        assert_eq!(f[46] >> 4, 5, "data offset");
        assert!(f[54..].iter().all(|b| *b == b'a'));
    }

    #[test]
    fn each_connection_moves_its_own_sequence_numbers_on() {
        let mut k = KeepAlive::new(2, 80, 100, 300);
        let seq = |f: &[u8]| u32::from_be_bytes([f[38], f[39], f[40], f[41]]);
        let (q0, r0) = k.exchange(0);
        let (q1, _) = k.exchange(1);
        let (q2, r2) = k.exchange(2); // connection 0 again
        assert_eq!(seq(&q2), seq(&q0) + 100);
        assert_eq!(seq(&r2), seq(&r0) + 300);
        assert_ne!(q0[34..36], q1[34..36], "another client port");
        assert_eq!(q0[34..36], q2[34..36]);
    }
}
