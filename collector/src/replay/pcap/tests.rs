use super::*;

/// Builds a legacy pcap (Ethernet) from (timestamp µs, frame) pairs.
fn pcap(frames: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    f.extend_from_slice(&0i32.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&65535u32.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    for (us, frame) in frames {
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&us.to_le_bytes());
        f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        f.extend_from_slice(frame);
    }
    f
}

/// An Ethernet/IPv4/TCP frame.
fn tcp(sport: u16, dport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let (src, dst) = if dport == 80 {
        ([10, 0, 0, 1], [10, 0, 0, 2])
    } else {
        ([10, 0, 0, 2], [10, 0, 0, 1])
    };
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00]);
    let total = 20 + 20 + payload.len();
    f.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        6,
        0,
        0,
    ]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&0u32.to_be_bytes());
    f.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

const ACK: u8 = 0x10;
const FIN: u8 = 0x11;

fn messages(r: &Replay) -> Vec<&Message> {
    r.records
        .iter()
        .filter_map(|r| match &r.kind {
            Some(record::Kind::Message(m)) => Some(m),
            _ => None,
        })
        .collect()
}

#[test]
fn messages_follow_direction_switches_with_counters_and_snaplen() {
    let file = pcap(&[
        (1, tcp(40000, 80, 100, 0x02, b"")),
        (2, tcp(40000, 80, 101, ACK, b"GET / HTTP/1.1\r\n")),
        (3, tcp(40000, 80, 117, ACK, b"Host: a\r\n\r\n")),
        // A retransmission of the second segment.
        (4, tcp(40000, 80, 117, ACK, b"Host: a\r\n\r\n")),
        (
            5,
            tcp(
                80,
                40000,
                500,
                ACK,
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n",
            ),
        ),
        (6, tcp(80, 40000, 538, ACK, b"body")),
        (7, tcp(40000, 80, 128, FIN, b"")),
    ]);
    let cfg = ReplayConfig {
        snaplen: 20,
        ..ReplayConfig::default()
    };
    let r = replay_bytes(&file, &cfg).expect("valid pcap");
    let ms = messages(&r);
    assert_eq!(ms.len(), 2, "one request, one response: {ms:#?}");
    let (req, resp) = (ms[0], ms[1]);
    assert_eq!(req.direction, Direction::ClientToServer as i32);
    assert_eq!(req.bytes, 27, "retransmitted bytes are not counted twice");
    assert_eq!(req.packets, 2);
    assert_eq!(req.retransmits, 1);
    assert_eq!(
        req.payload,
        b"GET / HTTP/1.1\r\nHost".to_vec(),
        "first snaplen bytes"
    );
    assert_eq!(req.tcp_seq, 101);
    assert_eq!(req.start_unix_nanos, 1_000_002_000);
    assert_eq!(
        req.end_unix_nanos, 1_000_003_000,
        "a retransmission does not extend the message"
    );
    assert_eq!(
        (resp.index, resp.bytes, resp.packets),
        (1, 42, 2),
        "a response spanning packets counts all"
    );
    assert_eq!(resp.direction, Direction::ServerToClient as i32);
    let flow = req.flow.as_ref().expect("flow key");
    assert_eq!((flow.client_port, flow.server_port), (40000, 80));
    match &r.records.last().and_then(|r| r.kind.as_ref()) {
        Some(record::Kind::FlowEnd(e)) => {
            assert_eq!(e.reason, FlowEndReason::Fin as i32);
            assert_eq!(e.messages, 2);
        }
        other => panic!("last record must be FlowEnd, got {other:?}"),
    }
    assert_eq!(r.stats.flows, 1);
}

#[test]
fn untraced_ports_and_garbage_are_skipped() {
    let file = pcap(&[(1, tcp(1234, 5678, 1, ACK, b"hello")), (2, vec![0u8; 5])]);
    let r = replay_bytes(&file, &ReplayConfig::default()).expect("valid pcap");
    assert!(r.records.is_empty());
    assert_eq!(r.stats.skipped_untraced, 1);
    assert_eq!(r.stats.skipped_not_tcp, 1);
    assert!(replay_bytes(b"not a capture at all", &ReplayConfig::default()).is_err());
}
