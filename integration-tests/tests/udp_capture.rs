//! UDP at a pod veth, for real: dnsmasq in a server pod answers DNS queries a client pod sends
//! over UDP; the tc programs send each datagram on its own and the probe's assembler makes them
//! one UDP flow (its `FlowStart` says UDP) with one message per datagram, in order, both queries
//! before both answers.
//!
//! Run: `cargo test -p clovisor-integration-tests --test udp_capture -- --nocapture` (root).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use clovisor_integration_tests::capture::{flows_of, Recorder};
use clovisor_integration_tests::dns::{self, Dnsmasq};
use clovisor_integration_tests::{require_root, Lab};
use clovisor_probe::capture::{Capture, CaptureConfig};
use clovisor_probe::discovery;
use clovisor_proto::capture::v1::{Direction, ProtocolHint, Transport};

#[test]
fn dns_over_udp_is_one_flow_of_datagrams_at_a_pod_veth() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new()?;
    let server = lab.pod("usrv")?;
    let client = lab.pod("ucli")?;
    let _dnsmasq = Dnsmasq::start(&server)?;

    let veth = discovery::host_veth(&server.netns)?;
    let mut capture = Capture::load(&CaptureConfig {
        snaplen: 256,
        ring_buffer_bytes: 1 << 20,
        max_connections: 4096,
        idle_flush: Duration::from_millis(200),
        node: "udp-capture-test".into(),
        ..CaptureConfig::default()
    })?;
    // The port is traced for both transports: dnsmasq serves DNS on TCP 53 as well.
    capture.set_traced_ports(&BTreeMap::from([(53, ProtocolHint::Tcp)]))?;
    capture.attach_pod_veth(&veth.name)?;
    let recorder = Recorder::start(&mut capture, 1000)?;

    // dnsmasq may need a moment to bind: retry the first lookup.
    let mut answers = String::new();
    for _ in 0..20 {
        match dns::query(&client, &server, dns::NAME, &["1", "28"]) {
            Ok(out) => {
                answers = out;
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    ensure!(
        answers.lines().count() == 2,
        "two answers expected, got {answers:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let (stats, records) = recorder.stop()?;
    drop(capture);

    let flows = flows_of(&records, &client.ipv4.octets());
    let retried = flows.len().saturating_sub(1);
    let (_, flow) = flows.iter().last().context("no UDP flow from the client")?;
    let start = flow.start.clone().unwrap_or_default();
    let key = start.flow.unwrap_or_default();
    assert_eq!(
        (key.transport, key.server_port),
        (Transport::Udp as i32, 53),
        "a UDP flow to port 53 (flows before it: {retried} retried lookups)"
    );
    let dirs: Vec<(u32, i32, u64)> = flow
        .messages
        .values()
        .map(|m| (m.index, m.direction, m.packets as u64))
        .collect();
    let c2s = Direction::ClientToServer as i32;
    let s2c = Direction::ServerToClient as i32;
    assert_eq!(
        dirs,
        [(0, c2s, 1), (1, c2s, 1), (2, s2c, 1), (3, s2c, 1)],
        "two queries, then two answers, each datagram one message"
    );
    for m in flow.messages.values() {
        assert_eq!(
            m.bytes,
            m.payload.len() as u64,
            "a small datagram is captured whole"
        );
        assert_eq!(m.tcp_seq, 0);
    }
    // Each answer carries the id of one of the queries (DNS pairs by id).
    let id = |i: u32| flow.messages[&i].payload.get(..2).map(<[u8]>::to_vec);
    let mut queries = vec![id(0), id(1)];
    let mut replies = vec![id(2), id(3)];
    queries.sort();
    replies.sort();
    assert_eq!(queries, replies, "answers carry the queries' ids");
    assert!(
        stats.assembler.datagrams >= 4,
        "datagrams counted: {:?}",
        stats.assembler
    );
    Ok(())
}
