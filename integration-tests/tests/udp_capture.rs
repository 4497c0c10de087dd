//! UDP at a pod veth, for real: dnsmasq in a server pod answers DNS queries a client pod sends
//! over UDP; the tc programs send each datagram on its own and the probe's assembler makes them
//! one UDP flow (its `FlowStart` says UDP) with one message per datagram, in order; each answer
//! carries the id of one of the two queries.
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
    // Each datagram one message, numbered in order; the server may answer the first query
    // before the second one is sent, so only the counts per direction are fixed.
    let indexes: Vec<u32> = flow.messages.keys().copied().collect();
    assert_eq!(indexes, [0, 1, 2, 3], "four datagrams, four messages");
    let c2s = Direction::ClientToServer as i32;
    let count = |d: i32| flow.messages.values().filter(|m| m.direction == d).count();
    assert_eq!(
        (count(c2s), count(Direction::ServerToClient as i32)),
        (2, 2),
        "two queries and two answers: {:?}",
        flow.messages
            .values()
            .map(|m| m.direction)
            .collect::<Vec<_>>()
    );
    assert_eq!(flow.messages[&0].direction, c2s, "a query comes first");
    assert!(flow.messages.values().all(|m| m.packets == 1));
    for m in flow.messages.values() {
        assert_eq!(
            m.bytes,
            m.payload.len() as u64,
            "a small datagram is captured whole"
        );
        assert_eq!(m.tcp_seq, 0);
    }
    // Each answer carries the id of one of the queries (DNS pairs by id).
    let ids = |d: i32| {
        let mut v: Vec<Option<Vec<u8>>> = flow
            .messages
            .values()
            .filter(|m| m.direction == d)
            .map(|m| m.payload.get(..2).map(<[u8]>::to_vec))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        ids(c2s),
        ids(Direction::ServerToClient as i32),
        "answers carry the queries' ids"
    );
    assert!(
        stats.assembler.datagrams >= 4,
        "datagrams counted: {:?}",
        stats.assembler
    );
    Ok(())
}
