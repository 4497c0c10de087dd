//! The pcap replay (`clovisor_collector::replay::pcap`, feature `replay`) is a second copy of
//! the tc program's message rules, used by the decoder-vs-tshark test, the benchmark and the
//! examples. This test keeps the copies from drifting apart: the same traffic on a pod's host
//! veth goes through the real BPF program (the probe's capture) and, captured on that veth by
//! dumpcap, through the replay; both must make the same message records — flow key, direction,
//! index, byte, packet and retransmit counts, first TCP sequence number, payload snippet — and
//! end the same flows the same way. Timestamps are not compared (the kernel's clock and the
//! capture's differ).
//!
//! The traffic: keep-alive HTTP over IPv4 and IPv6 and a POST between namespace pods (curl and
//! nginx), and hand-made segments for what real traffic on a quiet machine rarely shows: a
//! response in several segments, one of them retransmitted, one overtaken by the next, one
//! partly re-sent.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clovisor_collector::replay::pcap::{replay_file, ReplayConfig};
use clovisor_integration_tests::capture::{attach, inject, Recorder};
use clovisor_integration_tests::dumpcap::Dumpcap;
use clovisor_integration_tests::http_client::{curl, curl_keep_alive, Curl};
use clovisor_integration_tests::{require_root, Lab, Nginx};
use clovisor_probe::capture::CaptureConfig;
use clovisor_probe::discovery;
use clovisor_proto::capture::v1::{record, FlowEndReason, ProtocolHint, Record};

const SNAPLEN: u32 = 256;
/// The port of the hand-made segments (nothing listens on it).
const INJECTED_PORT: u16 = 8181;

/// A connection as both sides name it: client and server address and port.
type Conn = (IpAddr, u32, IpAddr, u32);

/// What both copies must agree on about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    direction: i32,
    to_pod: bool,
    tcp_seq: u32,
    bytes: u64,
    packets: u32,
    retransmits: u32,
    protocol: i32,
    payload: Vec<u8>,
}

/// Messages by connection and index (a later record for an index supersedes an earlier one, as
/// the probe's final counters supersede an idle flush), and flow ends (reason, messages) by
/// connection.
#[derive(Debug, Default)]
struct Records {
    messages: BTreeMap<(Conn, u32), Msg>,
    ends: BTreeMap<Conn, (i32, u32)>,
}

fn ip(bytes: &[u8]) -> Result<IpAddr> {
    Ok(match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes)?),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes)?),
        n => bail!("an address of {n} bytes"),
    })
}

fn conn(key: Option<&clovisor_proto::capture::v1::FlowKey>) -> Result<Conn> {
    let k = key.context("a record without a flow key")?;
    Ok((
        ip(&k.client_ip)?,
        k.client_port,
        ip(&k.server_ip)?,
        k.server_port,
    ))
}

/// Groups `records` by connection, failing if one connection shows as two flows (the
/// comparison matches flows by their connection, since the two copies number flows apart).
fn group(records: &[Record], what: &str) -> Result<Records> {
    let mut out = Records::default();
    let mut flow_of: BTreeMap<Conn, u64> = BTreeMap::new();
    // A flow's connection and protocol come in its FlowStart (or, from the replay, with each
    // message).
    let mut started: BTreeMap<u64, (Conn, i32)> = BTreeMap::new();
    for r in records {
        if let Some(record::Kind::FlowStart(s)) = &r.kind {
            started.insert(s.flow_id, (conn(s.flow.as_ref())?, s.protocol));
        }
    }
    let of =
        |flow: Option<&clovisor_proto::capture::v1::FlowKey>, id: u64| -> Result<(Conn, i32)> {
            match (flow, started.get(&id)) {
                (Some(f), _) => Ok((conn(Some(f))?, 0)),
                (None, Some(known)) => Ok(*known),
                (None, None) => bail!("{what}: flow {id:x} without a FlowStart"),
            }
        };
    for r in records {
        let (c, flow_id, protocol) = match &r.kind {
            Some(record::Kind::Message(m)) => {
                let (c, p) = of(m.flow.as_ref(), m.flow_id)?;
                (c, m.flow_id, if m.flow.is_some() { m.protocol } else { p })
            }
            Some(record::Kind::FlowEnd(e)) => {
                let (c, _) = of(e.flow.as_ref(), e.flow_id)?;
                (c, e.flow_id, 0)
            }
            _ => continue,
        };
        if *flow_of.entry(c).or_insert(flow_id) != flow_id {
            bail!("{what}: connection {c:?} seen as two flows");
        }
        match &r.kind {
            Some(record::Kind::Message(m)) => {
                out.messages.insert(
                    (c, m.index),
                    Msg {
                        direction: m.direction,
                        to_pod: m.to_pod,
                        tcp_seq: m.tcp_seq,
                        bytes: m.bytes,
                        packets: m.packets,
                        retransmits: m.retransmits,
                        protocol,
                        payload: m.payload.to_vec(),
                    },
                );
            }
            Some(record::Kind::FlowEnd(e)) => {
                out.ends.insert(c, (e.reason, e.messages));
            }
            _ => {}
        }
    }
    Ok(out)
}

#[test]
fn the_replay_makes_the_records_the_kernel_makes() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new()?;
    let server = lab.pod("rsrv")?;
    let client = lab.pod("rcli")?;
    let _nginx = Nginx::start(&server)?;
    let veth = discovery::host_veth(&server.netns)?;

    let traced = [80, INJECTED_PORT];
    let config = CaptureConfig {
        snaplen: SNAPLEN,
        ring_buffer_bytes: 1 << 20,
        max_connections: 4096,
        idle_flush: Duration::from_millis(200),
        node: "replay-vs-kernel".into(),
        ..CaptureConfig::default()
    };
    let mut capture = attach(&config, &veth.name, &traced)?;
    let recorder = Recorder::start(&mut capture, 10_000)?;
    let dir = tempfile::tempdir()?;
    let pcap = dir.path().join("veth.pcapng");
    let dumpcap = Dumpcap::start(&veth.name, &pcap, &dir.path().join("dumpcap.log"))?;

    // Real traffic: small messages, one segment each, so no segment can overtake another.
    let v4 = |p: &str| format!("http://{}{p}", server.ipv4);
    curl_keep_alive(
        &client,
        &[v4("/index.html?n=1"), v4("/index.html?n=2"), v4("/missing")],
    )?;
    Curl::new()
        .args(&["-X", "POST", "-d", "sku=42&qty=1"])
        .run(&client, &[v4("/api/orders")])?;
    curl(&client, &format!("http://[{}]/index.html", server.ipv6))?;

    // Hand-made segments towards the pod (on the host veth, our egress program) and from it
    // (on the pod's eth0, our ingress program), one connection per case.
    let srv = format!("{}:{INJECTED_PORT}", server.ipv4);
    let request = r"GET /injected HTTP/1.1\r\nHost: t\r\n\r\n";
    let request_len = request.replace(r"\r\n", "\r\n").len() as u32;
    let head = r"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n";
    let head_len = head.replace(r"\r\n", "\r\n").len() as u32;
    // (client port, response segments as `offset:payload` after the response's first byte)
    let cases: [(u16, Vec<(u32, String)>); 3] = [
        // In order, a short head first, then the second segment retransmitted.
        (
            40001,
            vec![
                (0, head.to_owned()),
                (head_len, "@100".to_owned()),
                (head_len + 100, "@100".to_owned()),
                (head_len + 100, "@100".to_owned()),
                (head_len + 200, "@100".to_owned()),
            ],
        ),
        // The third segment overtakes the second.
        (
            40002,
            vec![
                (0, head.to_owned()),
                (head_len + 100, "@100".to_owned()),
                (head_len, "@100".to_owned()),
                (head_len + 200, "@100".to_owned()),
            ],
        ),
        // A segment re-sends 50 bytes already seen with 100 new ones.
        (
            40003,
            vec![
                (0, head.to_owned()),
                (head_len, "@100".to_owned()),
                (head_len + 50, "@150".to_owned()),
                (head_len + 150, "@150".to_owned()),
            ],
        ),
    ];
    // A request from client port `port` whose first byte is `seq`, towards the pod.
    let request_from = |port: u16, seq: u32| {
        inject(
            None,
            &[
                veth.name.clone(),
                format!("192.0.2.10:{port}"),
                srv.clone(),
                format!("{seq}:{request}"),
            ],
        )
    };
    for (port, response) in &cases {
        request_from(*port, 1000)?;
        let mut segments = vec!["eth0".to_owned(), srv.clone(), format!("192.0.2.10:{port}")];
        segments.extend(
            response
                .iter()
                .map(|(offset, payload)| format!("{}:{payload}", 5000 + offset)),
        );
        inject(Some(&server.netns), &segments)?;
        // The next request closes the response.
        request_from(*port, 1000 + request_len)?;
    }

    // Let FIN events arrive and idle flushes run, then stop both.
    std::thread::sleep(Duration::from_millis(800));
    dumpcap.stop()?;
    let (_, records) = recorder.stop()?;
    capture.detach_all()?;

    let kernel = group(&records, "kernel")?;
    let replay = replay_file(
        &pcap,
        &ReplayConfig {
            traced_ports: traced.into_iter().collect(),
            snaplen: SNAPLEN,
            hint: ProtocolHint::Http,
            ..ReplayConfig::default()
        },
    )?;
    let replayed = group(&replay.records, "replay")?;
    eprintln!(
        "kernel: {} messages, {} flow ends; replay: {} messages, {} flow ends; {:?}",
        kernel.messages.len(),
        kernel.ends.len(),
        replayed.messages.len(),
        replayed.ends.len(),
        replay.stats
    );

    // Not vacuous: every connection made above, in both.
    let v4_conns = kernel
        .messages
        .keys()
        .filter(|((c, ..), _)| *c == IpAddr::V4(client.ipv4))
        .count();
    let v6_conns = kernel
        .messages
        .keys()
        .filter(|((c, ..), _)| *c == IpAddr::V6(client.ipv6))
        .count();
    let injected = kernel
        .messages
        .keys()
        .filter(|((_, _, _, port), _)| *port == u32::from(INJECTED_PORT))
        .count();
    assert_eq!(
        (v4_conns, v6_conns, injected),
        (8, 2, 9),
        "messages the kernel saw (IPv4 keep-alive + POST, IPv6, hand-made): {:#?}",
        kernel.messages.keys().collect::<Vec<_>>()
    );

    let keys = |r: &Records| r.messages.keys().copied().collect::<Vec<_>>();
    assert_eq!(
        keys(&replayed),
        keys(&kernel),
        "the same messages (connection, index) from the replay as from the kernel"
    );
    for (key, k) in &kernel.messages {
        let r = &replayed.messages[key];
        // The kernel copies its snippet from a message's first packet, the replay continues it
        // into later packets: the kernel's is a prefix of the replay's, the same when the first
        // packet was the whole message or filled the snippet.
        let whole = k.packets == 1 || k.payload.len() == SNAPLEN as usize;
        let snippets_agree = if whole {
            r.payload == k.payload
        } else {
            r.payload.starts_with(&k.payload)
        };
        assert!(
            snippets_agree,
            "message {key:?}: payload snippets differ\nkernel: {:?}\nreplay: {:?}",
            String::from_utf8_lossy(&k.payload),
            String::from_utf8_lossy(&r.payload)
        );
        assert_eq!(
            Msg {
                payload: Vec::new(),
                ..r.clone()
            },
            Msg {
                payload: Vec::new(),
                ..k.clone()
            },
            "message {key:?}: replay (left) and kernel (right) disagree"
        );
    }
    for (c, end) in &kernel.ends {
        assert_eq!(
            replayed.ends.get(c),
            Some(end),
            "flow end (reason, messages) of {c:?}: replay (left), kernel (right)"
        );
    }
    for (c, end) in &replayed.ends {
        if !kernel.ends.contains_key(c) {
            assert_eq!(
                end.0,
                FlowEndReason::Idle as i32,
                "the replay ends {c:?} ({end:?}) where the kernel saw no end: only a flow still \
                 open when the capture stopped may end so (idle)"
            );
        }
    }
    Ok(())
}
