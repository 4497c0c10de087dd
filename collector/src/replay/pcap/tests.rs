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
    assert!(
        req.flow.is_none() && resp.flow.is_none(),
        "messages name their flow by id only"
    );
    let Some(record::Kind::FlowStart(start)) = &r.records[0].kind else {
        panic!("the flow is announced first, got {:?}", r.records[0]);
    };
    let flow = start.flow.as_ref().expect("flow key");
    assert_eq!((flow.client_port, flow.server_port), (40000, 80));
    assert_eq!(start.flow_id, req.flow_id);
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

/// An Ethernet/IPv4/UDP frame between 10.0.0.1 (client) and 10.0.0.2 (server, port 53).
fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let (src, dst) = if dport == 53 {
        ([10, 0, 0, 1], [10, 0, 0, 2])
    } else {
        ([10, 0, 0, 2], [10, 0, 0, 1])
    };
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00]);
    let total = 20 + 8 + payload.len();
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
        17,
        0,
        0,
    ]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

#[test]
fn each_udp_datagram_is_one_message_of_a_flow_announced_and_ended_as_idle() {
    let file = pcap(&[
        (1, udp(40000, 53, b"query-a")),
        (2, udp(40000, 53, b"query-aaaa")),
        (3, udp(53, 40000, b"answer-aaaa-long")),
        (4, udp(40001, 9999, b"untraced")),
        // Past the idle time: a new flow of the same address pair.
        (900, udp(40000, 53, b"later")),
    ]);
    let mut cfg = ReplayConfig {
        traced_ports: [53].into_iter().collect(),
        snaplen: 12,
        udp_idle_nanos: 100_000,
        ..ReplayConfig::default()
    };
    let r = replay_bytes(&file, &cfg).expect("valid pcap");
    let kinds: Vec<_> = r
        .records
        .iter()
        .map(|r| match &r.kind {
            Some(record::Kind::FlowStart(s)) => format!("start {}", s.flow_id),
            Some(record::Kind::Message(m)) => format!("message {} {}", m.flow_id, m.index),
            Some(record::Kind::FlowEnd(e)) => format!("end {} {}", e.flow_id, e.messages),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "start 1",
            "message 1 0",
            "message 1 1",
            "message 1 2",
            "end 1 3",
            "start 2",
            "message 2 0",
            "end 2 1"
        ]
    );
    let Some(record::Kind::FlowStart(start)) = &r.records[0].kind else {
        panic!("a flow start first");
    };
    let key = start.flow.as_ref().expect("key");
    assert_eq!((key.client_port, key.server_port), (40000, 53));
    assert_eq!(key.transport, Transport::Udp as i32);
    let ms = messages(&r);
    let m = |i: usize| (ms[i].direction, ms[i].bytes, ms[i].packets, ms[i].tcp_seq);
    assert_eq!(
        m(1),
        (Direction::ClientToServer as i32, 10, 1, 0),
        "back to back: two messages"
    );
    assert_eq!(m(2), (Direction::ServerToClient as i32, 16, 1, 0));
    assert_eq!(ms[2].payload, b"answer-aaaa-".to_vec(), "cut at snaplen");
    assert!(ms.iter().all(|m| m.flow.is_none()), "named by flow id only");
    assert_eq!(
        (
            r.stats.udp_datagrams,
            r.stats.skipped_untraced,
            r.stats.flows
        ),
        (4, 1, 2)
    );
    match &r.records[4].kind {
        Some(record::Kind::FlowEnd(e)) => {
            assert_eq!(e.reason, FlowEndReason::Idle as i32);
            assert_eq!(e.unix_nanos, 1_000_003_000, "at its last datagram");
        }
        other => panic!("{other:?}"),
    }
    // Without the idle split, one flow.
    cfg.udp_idle_nanos = u64::MAX;
    let r = replay_bytes(&file, &cfg).expect("valid pcap");
    assert_eq!(r.stats.flows, 1);
}

#[test]
fn beyond_max_flows_the_least_recently_active_flow_ends_first() {
    let file = pcap(&[
        (1, tcp(40000, 80, 100, ACK, b"GET /a HTTP/1.1\r\n\r\n")),
        (2, tcp(40001, 80, 200, ACK, b"GET /b HTTP/1.1\r\n\r\n")),
        (3, tcp(40001, 80, 219, ACK, b"more")),
        // A third connection: the first, idle the longest, makes room.
        (4, tcp(40002, 80, 300, ACK, b"GET /c HTTP/1.1\r\n\r\n")),
        // The first sends again: a new flow, as the probe's LRU maps would make it.
        (5, tcp(40000, 80, 119, ACK, b"GET /d HTTP/1.1\r\n\r\n")),
    ]);
    let cfg = ReplayConfig {
        max_flows: 2,
        ..ReplayConfig::default()
    };
    let r = replay_bytes(&file, &cfg).expect("valid pcap");
    let kinds: Vec<String> = r
        .records
        .iter()
        .map(|r| match &r.kind {
            Some(record::Kind::FlowStart(s)) => format!("start {}", s.flow_id),
            Some(record::Kind::Message(m)) => format!("message {}", m.flow_id),
            Some(record::Kind::FlowEnd(e)) => format!("end {} {}", e.flow_id, e.reason),
            other => format!("{other:?}"),
        })
        .collect();
    let idle = FlowEndReason::Idle as i32;
    assert_eq!(
        &kinds[..3],
        [
            "start 1".to_owned(),
            "message 1".to_owned(),
            format!("end 1 {idle}")
        ],
        "flow 1 ends before flow 3 starts: {kinds:?}"
    );
    assert_eq!(r.stats.flows, 4, "{kinds:?}");
    assert!(r.stats.evicted_flows >= 2, "{:?}", r.stats);
}

#[test]
fn a_cut_file_ends_where_it_is_cut_and_a_damaged_one_says_where() {
    let first = tcp(40000, 80, 100, ACK, b"GET / HTTP/1.1\r\n\r\n");
    let file = pcap(&[
        (1, first.clone()),
        (2, tcp(80, 40000, 500, ACK, b"HTTP/1.1 200 OK\r\n\r\n")),
    ]);
    let cut = replay_bytes(&file[..file.len() - 3], &ReplayConfig::default()).expect("cut pcap");
    assert!(cut.stats.truncated_file);
    assert_eq!(
        messages(&cut).len(),
        1,
        "the packet before the cut is replayed"
    );

    // A record claiming more than the file holds reads as a cut file too.
    let mut lying = file.clone();
    let second = 24 + 16 + first.len();
    lying[second + 8..second + 12].copy_from_slice(&(1u32 << 30).to_le_bytes());
    let r = replay_bytes(&lying, &ReplayConfig::default()).expect("read up to the lie");
    assert!(r.stats.truncated_file);
    assert_eq!(r.stats.packets, 1);

    // pcapng whose packet block has a length no block can have: damaged, at that block.
    let mut ng = Vec::new();
    for w in [
        0x0a0d_0d0au32,
        28,
        0x1a2b_3c4d,
        1,
        0xffff_ffff,
        0xffff_ffff,
        28,
    ] {
        ng.extend_from_slice(&w.to_le_bytes());
    }
    for w in [1u32, 20, 1, 0, 20] {
        ng.extend_from_slice(&w.to_le_bytes());
    }
    let block = ng.len();
    for w in [6u32, 7, 0, 0, 0, 0, 0, 0, 0] {
        ng.extend_from_slice(&w.to_le_bytes());
    }
    let mut seen = Vec::new();
    let err =
        replay_reader(&ng[..], &ReplayConfig::default(), |r| seen.push(r)).expect_err("damaged");
    match err {
        Error::CaptureFormat {
            offset, packets, ..
        } => assert_eq!((offset, packets), (block as u64, 0), "{err}"),
        other => panic!("{other:?}"),
    }
    let foreign = replay_bytes(b"GET / HTTP/1.1\r\n\r\n", &ReplayConfig::default())
        .expect_err("not a capture");
    assert!(
        foreign.to_string().contains("not a capture file"),
        "{foreign}"
    );
}

#[test]
fn a_segment_overtaken_on_the_way_takes_its_place_in_the_snippet() {
    let file = pcap(&[
        (1, tcp(40000, 80, 100, ACK, b"GET /reordered")),
        // The third segment overtakes the second.
        (2, tcp(40000, 80, 125, ACK, b"Host: a\r\n\r\n")),
        (3, tcp(40000, 80, 114, ACK, b" HTTP/1.1\r\n")),
        (4, tcp(80, 40000, 500, ACK, b"HTTP/1.1 200 OK\r\n\r\n")),
        (5, tcp(40000, 80, 136, FIN, b"")),
    ]);
    let r = replay_bytes(&file, &ReplayConfig::default()).expect("valid pcap");
    let ms = messages(&r);
    assert_eq!(
        ms[0].payload,
        b"GET /reordered HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        "the request in sequence order"
    );
    assert_eq!(
        (ms[0].bytes, ms[0].packets, ms[0].retransmits),
        (36, 2, 1),
        "counted as the kernel counts: the overtaken segment moved nothing"
    );
    let sessions = crate::replay::sessions(r.records);
    let http = sessions[0].http.as_ref().expect("decoded");
    assert_eq!(
        (http.target.as_str(), http.host.as_str()),
        ("/reordered", "a")
    );

    // Past the snaplen nothing is held: the snippet ends at the snaplen.
    let cfg = ReplayConfig {
        snaplen: 16,
        ..ReplayConfig::default()
    };
    let r = replay_bytes(&file, &cfg).expect("valid pcap");
    assert_eq!(messages(&r)[0].payload, b"GET /reordered H".to_vec());
}
