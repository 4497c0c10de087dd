//! DNS over UDP and TCP (RFC 1035, RFC 7766): detected by a plausible header and question in a
//! flow's first message; each query is paired with the answer of the same id and question, not
//! by alternation (a client sends its A and AAAA queries back to back on one UDP flow).
//!
//! - [`parse`]: header, first question and first A/AAAA answers of one DNS message; the TCP
//!   framing (several length-prefixed messages in one flow message).
//! - [`pairing`]: the per-flow state that pairs queries with answers into
//!   [`Exchange`](super::Exchange)s.
//!
//! Over UDP a flow message is one datagram (the probe's contract for UDP flows: one client
//! address and port with one server address and port, one message per datagram, ended as idle).
//! Over TCP a message is everything one side sent before the other answered, and may hold
//! several DNS messages (pipelined queries, a zone transfer's answers).

pub mod pairing;
pub mod parse;

pub use pairing::DnsFlow;
pub use parse::{message, split_tcp, DnsMessage, Header, ParseError, Question};

use clovisor_proto::capture::v1::Transport;

use super::{CaptureNeeds, Decoder, Detection, Direction, FlowDecoder, FlowInfo, Message, Within};

/// Bytes of a message DNS makes use of: the header and question always fit (a name is at most
/// 255 bytes), the first answers mostly.
pub const USEFUL_PREFIX: u32 = 512;

/// The well-known port: a tiebreaker for messages that are plausible but unusual.
pub const PORT: u32 = 53;
/// Multicast DNS (RFC 6762) speaks the same messages.
pub const MDNS_PORT: u32 = 5353;

/// The DNS [`Decoder`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Dns;

/// How plausible a message is as DNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Plausible {
    No,
    /// Well-formed, but unusual: claimed only on the DNS ports.
    Maybe,
    /// A query (or answer) as resolvers send them.
    Yes,
}

/// Judges one DNS message in the direction it went.
fn plausible(payload: &[u8], direction: Direction) -> Plausible {
    let Ok(m) = parse::message(payload) else {
        return Plausible::No;
    };
    let h = m.header;
    let from_client = direction == Direction::ClientToServer;
    // QUERY, NOTIFY, UPDATE; queries come from the client, answers from the server.
    if h.response == from_client || h.z || !matches!(h.opcode, 0 | 4 | 5) {
        return Plausible::No;
    }
    let Some(q) = &m.question else {
        return Plausible::No;
    };
    if !matches!(q.qclass, 1 | 3 | 4 | 254 | 255) || q.qtype == 0 {
        return Plausible::No;
    }
    // An answer first (the query was missed) is unusual too.
    let usual = from_client
        && h.opcode == 0
        && h.qdcount == 1
        && h.ancount == 0
        && h.nscount == 0
        && h.arcount <= 2
        && h.rcode == 0;
    if usual && m.exact {
        Plausible::Yes
    } else {
        // Cut at snaplen, something trailing, or an unusual shape: only a DNS port makes it DNS.
        Plausible::Maybe
    }
}

impl Decoder for Dns {
    fn name(&self) -> &'static str {
        "dns"
    }

    fn capture_needs(&self) -> CaptureNeeds {
        CaptureNeeds {
            prefix: USEFUL_PREFIX,
            within: Within::Nothing,
        }
    }

    /// A query with one question, no records but EDNS's, read exactly to its end (over TCP: the
    /// first behind its length prefix) claims the flow whatever the port. Other well-formed DNS
    /// (an answer first, when the query was missed; NOTIFY, UPDATE; a message cut at snaplen)
    /// claims it only when the server port is 53 or 5353.
    fn detect(&self, flow: &FlowInfo<'_>, first: &Message<'_>) -> Detection {
        let verdict = if flow.key.transport == Transport::Tcp as i32 {
            // A message cut at snaplen is not `exact`, so at most `Maybe`.
            match parse::split_tcp(first.payload).next() {
                Some(Ok(m)) => plausible(m, first.direction),
                _ => Plausible::No,
            }
        } else {
            plausible(first.payload, first.direction)
        };
        let dns_port = matches!(flow.key.server_port, PORT | MDNS_PORT);
        match verdict {
            Plausible::Yes => Detection::Claim,
            Plausible::Maybe if dns_port => Detection::Claim,
            _ => Detection::No,
        }
    }

    fn new_flow(&self, flow: &FlowInfo<'_>) -> Box<dyn FlowDecoder> {
        Box::new(DnsFlow::new(flow.key.transport == Transport::Tcp as i32))
    }
}

#[cfg(test)]
mod tests;
