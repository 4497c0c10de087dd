//! DNS: parsing (compression, hostile and cut input), detection against HTTP/1, pairing by id.

use super::*;
use crate::decode::http1::Http1;
use crate::decode::{Exchange, Fields, MessageStats, Output, Step};
use clovisor_proto::capture::v1::{FlowKey, ProtocolHint};
use clovisor_proto::session::v1::{Dns as DnsFields, DnsTransport};

/// Builds a DNS message: header fields, one question, answers as (type, rdata) under a pointer
/// to the question's name.
fn dns(id: u16, flags: u16, name: &str, qtype: u16, answers: &[(u16, &[u8])]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    for (rtype, data) in answers {
        m.extend_from_slice(&[0xc0, 12]);
        m.extend_from_slice(&rtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&300u32.to_be_bytes());
        m.extend_from_slice(&(data.len() as u16).to_be_bytes());
        m.extend_from_slice(data);
    }
    m
}

const QUERY: u16 = 0x0100; // RD
const ANSWER: u16 = 0x8180; // QR RD RA, NOERROR
const NXDOMAIN: u16 = 0x8183;

fn framed(msgs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        out.extend_from_slice(&(m.len() as u16).to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

/// Everything a decoder reported, in order.
#[derive(Debug, Default)]
struct Seen {
    exchanges: Vec<Exchange>,
    other: Vec<(&'static str, &'static str)>,
}

impl Output for Seen {
    fn exchange(&mut self, exchange: Exchange) {
        self.exchanges.push(exchange);
    }
    fn decode_error(&mut self, reason: &'static str) {
        self.other.push(("error", reason));
    }
    fn unpaired(&mut self, reason: &'static str) {
        self.other.push(("unpaired", reason));
    }
    fn desync(&mut self, reason: &'static str) {
        self.other.push(("desync", reason));
    }
}

fn msg(index: u32, direction: Direction, payload: &[u8]) -> Message<'_> {
    Message {
        direction,
        stats: MessageStats {
            index,
            start: 1_000 * u64::from(index),
            end: 1_000 * u64::from(index) + 1,
            tcp_seq: 0,
            bytes: payload.len() as u64,
            packets: 1,
            retransmits: 0,
            wire: None,
        },
        payload,
        partial: false,
        later: &[],
    }
}

fn key(transport: Transport, server_port: u32) -> FlowKey {
    FlowKey {
        client_ip: vec![10, 0, 0, 1],
        server_ip: vec![10, 0, 0, 2],
        client_port: 40000,
        server_port,
        transport: transport as i32,
    }
}

fn detect_with(d: &dyn Decoder, key: &FlowKey, m: &Message<'_>) -> Detection {
    let flow = FlowInfo {
        probe_id: "p",
        flow_id: 1,
        key,
        hint: ProtocolHint::Unspecified,
    };
    d.detect(&flow, m)
}

fn fields(e: &Exchange) -> &DnsFields {
    match &e.fields {
        Fields::Dns(d) => d,
        other => panic!("not DNS: {other:?}"),
    }
}

#[test]
fn a_query_and_its_answer_with_addresses() {
    let q = dns(0x1234, QUERY, "example.org", 1, &[]);
    let m = message(&q).expect("query");
    assert_eq!(m.header.id, 0x1234);
    assert!(!m.header.response && m.header.recursion_desired && m.exact);
    let question = m.question.expect("question");
    assert_eq!(
        (question.name.as_str(), question.qtype, question.qclass),
        ("example.org", 1, 1)
    );

    let a = dns(
        0x1234,
        ANSWER,
        "example.org",
        1,
        &[(1, &[93, 184, 216, 34]), (5, b"\x00"), (1, &[1, 2, 3, 4])],
    );
    let m = message(&a).expect("answer");
    assert!(m.header.response && m.exact);
    assert_eq!(m.header.ancount, 3);
    assert_eq!(m.addresses, [vec![93, 184, 216, 34], vec![1, 2, 3, 4]]);
}

#[test]
fn names_follow_pointers_backwards_only() {
    // Question "a.b" then an answer whose name is "x" + pointer to "b" (offset 14).
    let mut m = dns(1, ANSWER, "a.b", 1, &[]);
    m[7] = 1; // ANCOUNT 1
    m.extend_from_slice(&[1, b'x', 0xc0, 14, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 9, 9, 9, 9]);
    assert_eq!(message(&m).expect("valid").addresses, [vec![9, 9, 9, 9]]);

    // A pointer to itself, and one pointing forward.
    let mut looped = dns(1, QUERY, "", 1, &[]);
    looped.truncate(12);
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(message(&looped), Err(ParseError::BadPointer));
    let mut forward = looped.clone();
    forward[13] = 14;
    assert_eq!(message(&forward), Err(ParseError::BadPointer));
    // Two pointers pointing at each other (12 -> 14 is forward, so rejected first).
    let mut pair = looped[..12].to_vec();
    pair.extend_from_slice(&[1, b'a', 0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(message(&pair), Err(ParseError::BadPointer));

    // Reserved label types, and a name over 255 bytes.
    let mut reserved = looped[..12].to_vec();
    reserved.extend_from_slice(&[0x41, 0, 0, 1, 0, 1]);
    assert_eq!(message(&reserved), Err(ParseError::BadLabel));
    let long = ["abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz"; 5].join(".");
    assert_eq!(
        message(&dns(1, QUERY, &long, 1, &[])),
        Err(ParseError::NameTooLong)
    );
}

#[test]
fn odd_bytes_in_labels_are_escaped() {
    let mut m = dns(1, QUERY, "", 1, &[]);
    m.truncate(12);
    m.extend_from_slice(&[3, b'a', b'.', 0xff, 0, 0, 16, 0, 1]);
    let q = message(&m).expect("valid").question.expect("question");
    assert_eq!(q.name, "a\\046\\255");
    assert_eq!(q.qtype, 16);
}

#[test]
fn cut_input_reads_what_is_there() {
    let a = dns(
        7,
        ANSWER,
        "example.org",
        28,
        &[(
            28,
            &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        )],
    );
    for cut in 0..a.len() {
        match message(&a[..cut]) {
            Ok(m) => {
                assert!(!m.exact, "cut at {cut} is not exact");
                assert_eq!(m.question.map(|q| q.name), Some("example.org".to_owned()));
                assert!(m.addresses.is_empty(), "the address is cut at {cut}");
            }
            Err(e) => assert!(
                matches!(e, ParseError::ShortHeader | ParseError::ShortQuestion),
                "cut at {cut}: {e:?}"
            ),
        }
    }
    assert!(message(&a).expect("whole").exact);
}

#[test]
fn tcp_framing_splits_and_keeps_a_cut_tail() {
    let one = dns(1, QUERY, "a.example", 1, &[]);
    let two = dns(2, QUERY, "a.example", 28, &[]);
    let both = framed(&[one.clone(), two.clone()]);
    let got: Vec<_> = split_tcp(&both).collect();
    assert_eq!(got, [Ok(&one[..]), Ok(&two[..])]);
    let got: Vec<_> = split_tcp(&both[..both.len() - 3]).collect();
    assert_eq!(got, [Ok(&one[..]), Ok(&two[..two.len() - 3])]);
    assert_eq!(
        split_tcp(&[0, 3, 1, 2, 3]).collect::<Vec<_>>(),
        [Err(ParseError::BadLength)]
    );
    assert_eq!(
        split_tcp(&[0]).collect::<Vec<_>>(),
        [Err(ParseError::ShortHeader)]
    );
}

#[test]
fn detection_is_by_content_and_the_port_only_breaks_ties() {
    let udp_any = key(Transport::Udp, 5300);
    let udp_53 = key(Transport::Udp, 53);
    let q = dns(9, QUERY, "svc.cluster.local", 33, &[]);
    let c = |p| msg(0, Direction::ClientToServer, p);
    assert_eq!(
        detect_with(&Dns, &udp_any, &c(&q)),
        Detection::Claim,
        "a clean query, any port"
    );
    let a = dns(9, ANSWER, "svc.cluster.local", 33, &[]);
    let s = msg(0, Direction::ServerToClient, &a);
    assert_eq!(
        detect_with(&Dns, &udp_any, &s),
        Detection::No,
        "an answer first: port decides"
    );
    assert_eq!(detect_with(&Dns, &udp_53, &s), Detection::Claim);
    assert_eq!(
        detect_with(&Dns, &udp_53, &c(&a)),
        Detection::No,
        "an answer from the client"
    );

    // A query cut at snaplen: only on a DNS port.
    let cut = &q[..q.len() - 2];
    assert_eq!(detect_with(&Dns, &udp_any, &c(cut)), Detection::No);
    // ... (its question is cut too: not even there)
    assert_eq!(detect_with(&Dns, &udp_53, &c(cut)), Detection::No);

    // Over TCP, behind the length prefix.
    let tcp = key(Transport::Tcp, 8053);
    let framed_q = framed(std::slice::from_ref(&q));
    assert_eq!(detect_with(&Dns, &tcp, &c(&framed_q)), Detection::Claim);
    assert_eq!(
        detect_with(&Dns, &tcp, &c(&q)),
        Detection::No,
        "no length prefix"
    );

    // HTTP/1 is not DNS, DNS is not HTTP/1, on either port.
    let tcp53 = key(Transport::Tcp, 53);
    for http in [
        &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"POST /x HTTP/1.0\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(
            detect_with(&Dns, &tcp53, &c(http)),
            Detection::No,
            "{http:?}"
        );
        assert_eq!(
            detect_with(&Dns, &udp_53, &c(http)),
            Detection::No,
            "{http:?}"
        );
    }
    for d in [&q, &framed_q] {
        assert_eq!(detect_with(&Http1, &tcp53, &c(d)), Detection::No);
    }
    // TLS, an HTTP/2 preface, zeros.
    for other in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        &[0u8; 40],
    ] {
        assert_eq!(
            detect_with(&Dns, &udp_53, &c(other)),
            Detection::No,
            "{other:?}"
        );
        assert_eq!(
            detect_with(&Dns, &tcp53, &c(other)),
            Detection::No,
            "{other:?}"
        );
    }
}

#[test]
fn queries_pair_by_id_and_question_not_by_order() {
    let mut flow = DnsFlow::new(false);
    let mut out = Seen::default();
    let qa = dns(10, QUERY, "Example.org", 1, &[]);
    let qaaaa = dns(11, QUERY, "example.org", 28, &[]);
    let raaaa = dns(11, ANSWER, "example.org", 28, &[]);
    let ra = dns(10, ANSWER, "example.ORG", 1, &[(1, &[10, 1, 2, 3])]);
    let stray = dns(99, ANSWER, "other.org", 1, &[]);
    for (i, (d, p)) in [
        (Direction::ClientToServer, &qa),
        (Direction::ClientToServer, &qaaaa),
        (Direction::ServerToClient, &raaaa),
        (Direction::ServerToClient, &stray),
        (Direction::ServerToClient, &ra),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(
            flow.on_message(&msg(i as u32, d, p), &mut out),
            Step::Continue
        );
    }
    flow.on_close(&mut out);
    assert_eq!(out.other, [("unpaired", "response_without_request")]);
    let got: Vec<_> = out
        .exchanges
        .iter()
        .map(|e| {
            (
                e.request.index,
                e.response.map(|r| r.index),
                fields(e).question_type,
                e.incomplete,
            )
        })
        .collect();
    assert_eq!(got, [(1, Some(2), 28, false), (0, Some(4), 1, false)]);
    let a = fields(&out.exchanges[1]);
    assert_eq!(a.answer_addresses, [vec![10, 1, 2, 3]]);
    assert_eq!(
        (a.answer_count, a.response_code, a.transport),
        (1, 0, DnsTransport::Udp as i32)
    );
    assert_eq!(
        out.exchanges[1].protocol,
        clovisor_proto::session::v1::Protocol::Dns
    );
}

#[test]
fn a_query_without_answer_is_incomplete_and_a_retry_reports_the_first() {
    let mut flow = DnsFlow::new(false);
    let mut out = Seen::default();
    let q = dns(5, QUERY, "gone.example", 1, &[]);
    flow.on_message(&msg(0, Direction::ClientToServer, &q), &mut out);
    flow.on_message(&msg(1, Direction::ClientToServer, &q), &mut out);
    let nx = dns(5, NXDOMAIN, "gone.example", 1, &[]);
    flow.on_message(&msg(2, Direction::ServerToClient, &nx), &mut out);
    let lost = dns(6, QUERY, "lost.example", 1, &[]);
    flow.on_message(&msg(3, Direction::ClientToServer, &lost), &mut out);
    assert_eq!(out.exchanges.len(), 2);
    flow.on_close(&mut out);
    let got: Vec<_> = out
        .exchanges
        .iter()
        .map(|e| (e.request.index, e.incomplete, fields(e).response_code))
        .collect();
    assert_eq!(got, [(0, true, 0), (1, false, 3), (3, true, 0)]);
}

#[test]
fn tcp_pipelined_queries_and_a_zone_transfer_spanning_messages() {
    let mut flow = DnsFlow::new(true);
    let mut out = Seen::default();
    let q1 = dns(1, QUERY, "a.example", 1, &[]);
    let q2 = dns(2, QUERY, "a.example", 28, &[]);
    let both = framed(&[q1, q2]);
    flow.on_message(&msg(0, Direction::ClientToServer, &both), &mut out);
    let r2 = dns(2, ANSWER, "a.example", 28, &[]);
    let r1 = dns(1, ANSWER, "a.example", 1, &[(1, &[1, 1, 1, 1])]);
    flow.on_message(
        &msg(1, Direction::ServerToClient, &framed(&[r2, r1])),
        &mut out,
    );
    let got: Vec<_> = out
        .exchanges
        .iter()
        .map(|e| (e.position, fields(e).question_type, fields(e).transport))
        .collect();
    let tcp = DnsTransport::Tcp as i32;
    assert_eq!(got, [(1, 28, tcp), (0, 1, tcp)]);

    let axfr = dns(3, QUERY, "zone.example", 252, &[]);
    flow.on_message(
        &msg(2, Direction::ClientToServer, &framed(&[axfr])),
        &mut out,
    );
    let first = dns(
        3,
        0x8400,
        "zone.example",
        252,
        &[(6, b"soa"), (1, &[1, 2, 3, 4])],
    );
    let mut rest = dns(3, 0x8400, "", 0, &[(1, &[5, 6, 7, 8]), (6, b"soa")]);
    rest[5] = 0; // QDCOUNT 0
    rest.drain(12..17); // drop the question (root name, type, class)
                        // The answers' pointers named offset 12, now the first answer itself: make them root names.
    let rest = {
        let mut r = rest[..12].to_vec();
        for (t, d) in [(1u16, &[5u8, 6, 7, 8][..]), (6, b"soa")] {
            r.push(0);
            r.extend_from_slice(&t.to_be_bytes());
            r.extend_from_slice(&[0, 1, 0, 0, 0, 1]);
            r.extend_from_slice(&(d.len() as u16).to_be_bytes());
            r.extend_from_slice(d);
        }
        r
    };
    assert!(message(&rest).expect("valid").exact);
    flow.on_message(
        &msg(3, Direction::ServerToClient, &framed(&[first, rest])),
        &mut out,
    );
    flow.on_close(&mut out);
    assert!(out.other.is_empty(), "{:?}", out.other);
    let x = fields(&out.exchanges[2]);
    assert_eq!(
        (x.question_type, x.answer_count, x.authoritative),
        (252, 4, true)
    );
    assert_eq!(out.exchanges.len(), 3);
}

#[test]
fn garbage_on_a_claimed_flow_is_counted_not_fatal() {
    let mut flow = DnsFlow::new(true);
    let mut out = Seen::default();
    flow.on_message(&msg(0, Direction::ClientToServer, &[0, 2, 1, 2]), &mut out);
    let mut udp = DnsFlow::new(false);
    udp.on_message(&msg(0, Direction::ServerToClient, b"short"), &mut out);
    let q = dns(1, QUERY, "x", 1, &[]);
    udp.on_message(&msg(1, Direction::ServerToClient, &q), &mut out);
    assert_eq!(
        out.other,
        [
            ("error", "dns_bad_length"),
            ("error", "dns_short_header"),
            ("error", "dns_query_from_server")
        ]
    );
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[test]
fn random_and_mutated_bytes_never_panic() {
    let seeds = [
        dns(1, QUERY, "example.org", 1, &[]),
        dns(
            1,
            ANSWER,
            "example.org",
            28,
            &[(28, &[0; 16]), (1, &[1, 2, 3, 4])],
        ),
        framed(&[dns(2, QUERY, "a.b.c", 252, &[]), dns(3, QUERY, "x", 1, &[])]),
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut flows = [DnsFlow::new(false), DnsFlow::new(true)];
    let mut out = Seen::default();
    let keys = [key(Transport::Udp, 53), key(Transport::Tcp, 53)];
    for i in 0..20_000u32 {
        let r = xorshift(&mut x);
        let mut buf = seeds[(r % 3) as usize].clone();
        // Flip, set to pointer-ish bytes, cut, or replace with pure noise.
        match (r >> 8) % 4 {
            0 => {
                for _ in 0..(r >> 16) % 6 {
                    let n = xorshift(&mut x);
                    let at = (n as usize) % buf.len();
                    buf[at] = if n & 0x100 == 0 {
                        n as u8
                    } else {
                        0xc0 | (n as u8 & 0x3f)
                    };
                }
            }
            1 => buf.truncate((r >> 16) as usize % (buf.len() + 1)),
            2 => {
                buf = (0..(r >> 16) % 300)
                    .map(|_| xorshift(&mut x) as u8)
                    .collect();
            }
            _ => {
                let n = xorshift(&mut x);
                buf.extend((0..n % 64).map(|_| 0xc0));
            }
        }
        let _ = message(&buf);
        let _ = split_tcp(&buf).count();
        let dir = if r & 1 == 0 {
            Direction::ClientToServer
        } else {
            Direction::ServerToClient
        };
        let m = msg(i, dir, &buf);
        let f = (r >> 40) as usize % 2;
        let _ = detect_with(&Dns, &keys[f], &m);
        flows[f].on_message(&m, &mut out);
        if i % 501 == 0 {
            flows[f].on_close(&mut out);
            assert_eq!(flows[f].open_queries(), 0);
        }
        assert!(flows[f].open_queries() <= pairing::MAX_OPEN);
        out.exchanges.clear();
    }
}
