//! DNS from a real server and client, through the replay and the decoder: dnsmasq in one pod,
//! dig in another, over UDP and TCP, the traffic captured on the server pod's veth by dumpcap and
//! replayed (one message per datagram, the probe's UDP contract) through the flow table. Every
//! query dig made must come out as one DNS session with the question dig asked and the status
//! and answers dig printed: a name that resolves (A and AAAA), one that does not (NXDOMAIN), and
//! the same name over TCP.
//!
//! The live path (the probe tracing UDP) is the lead's part of issue 12; this test holds the
//! decoder to real servers and clients until then.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clovisor_collector::replay::{
    self,
    pcap::{replay_file, ReplayConfig},
};
use clovisor_integration_tests::dns::Dnsmasq;
use clovisor_integration_tests::dumpcap::Dumpcap;
use clovisor_integration_tests::{require_root, run_in, wait_for, Lab, Pod};
use clovisor_proto::capture::v1::ProtocolHint;
use clovisor_proto::session::v1::{DnsTransport, Session};

/// What dig said about one query: its status and the addresses in its answer section.
#[derive(Debug, PartialEq)]
struct Dig {
    status: String,
    answers: Vec<IpAddr>,
}

fn dig(client: &Pod, server: &Pod, name: &str, qtype: &str, tcp: bool) -> Result<Dig> {
    let at = format!("@{}", server.ipv4);
    let mut args = vec![
        "dig",
        &at,
        name,
        qtype,
        "+tries=1",
        "+time=3",
        "+noall",
        "+comments",
        "+answer",
    ];
    if tcp {
        args.push("+tcp");
    }
    let out = run_in(&client.netns, &args)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .with_context(|| format!("no status in dig's output:\n{text}"))?
        .to_owned();
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    Ok(Dig { status, answers })
}

fn sessions(pcap: &std::path::Path) -> Result<Vec<Session>> {
    let cfg = ReplayConfig {
        traced_ports: [53].into_iter().collect(),
        snaplen: 512,
        hint: ProtocolHint::Unspecified,
        ..ReplayConfig::default()
    };
    Ok(replay::sessions(replay_file(pcap, &cfg)?.records))
}

#[test]
fn dnsmasq_answers_to_dig_decode_as_dig_saw_them() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new()?;
    let server = lab.pod("dsrv")?;
    let client = lab.pod("dcli")?;
    let dir = tempfile::tempdir()?;
    let mut dns = Dnsmasq::start(&server)?;
    wait_for("dnsmasq to answer", Duration::from_secs(10), || {
        anyhow::ensure!(dns.running(), "dnsmasq exited:\n{}", dns.log_text());
        Ok(dig(&client, &server, "api.shop.test", "A", false).is_ok_and(|d| d.status == "NOERROR"))
    })?;

    let pcap = dir.path().join("dns.pcapng");
    let capture = Dumpcap::start(&server.host_veth, &pcap, &dir.path().join("dumpcap.log"))?;
    let queries = [
        ("api.shop.test", "A", false, 1),
        ("api.shop.test", "AAAA", false, 28),
        ("nowhere.shop.test", "A", false, 1),
        ("api.shop.test", "A", true, 1),
    ];
    let mut asked = Vec::new();
    for (name, qtype, tcp, number) in queries {
        asked.push((name, number, tcp, dig(&client, &server, name, qtype, tcp)?));
    }
    // dumpcap writes what it holds on SIGINT; give the last packets time to reach it.
    std::thread::sleep(Duration::from_millis(300));
    capture.stop()?;
    dns.stop(15, Duration::from_secs(5))?;

    assert_eq!(asked[0].3.answers, ["10.9.8.6".parse::<IpAddr>()?]);
    assert_eq!(
        asked[2].3.status, "NXDOMAIN",
        "the failure case is a failure"
    );
    let got = sessions(&pcap)?;
    let dns_sessions: Vec<&Session> = got.iter().filter(|s| s.dns.is_some()).collect();
    assert_eq!(
        dns_sessions.len(),
        queries.len(),
        "one session per query: {got:#?}"
    );
    for (name, number, tcp, seen) in &asked {
        let transport = if *tcp {
            DnsTransport::Tcp
        } else {
            DnsTransport::Udp
        } as i32;
        let s = dns_sessions
            .iter()
            .find(|s| {
                s.dns.as_ref().is_some_and(|d| {
                    d.question_name == *name
                        && d.question_type == *number
                        && d.transport == transport
                })
            })
            .with_context(|| format!("no session for {name} type {number} tcp={tcp}: {got:#?}"))?;
        let d = s.dns.as_ref().context("dns part")?;
        assert!(!s.incomplete, "{name}: answered");
        assert_eq!(
            clovisor_proto::dns::rcode_label(d.response_code),
            seen.status,
            "{name}"
        );
        assert_eq!(
            d.answers().collect::<Vec<_>>(),
            seen.answers,
            "{name} {number}"
        );
        assert_eq!(
            d.answer_count as usize,
            seen.answers.len(),
            "{name} {number}"
        );
        assert!(
            s.end_unix_nanos > s.start_unix_nanos,
            "{name}: latency from the query to the answer"
        );
    }
    Ok(())
}
