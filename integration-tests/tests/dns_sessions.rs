//! DNS end to end, live: dnsmasq in one namespace pod, a client sending real DNS queries over UDP
//! (A and AAAA back to back from one socket, as a resolver does, and a name dnsmasq does not know)
//! from another, `clovisor all-in-one` tracing the server pod with real BPF programs. The queries
//! come out of the REST API as DNS sessions, each with its own answer: the probe's UDP capture
//! (one message per datagram), the collector's DNS decoder and the correlator, together.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clovisor_correlator::testing::OtlpReceiver;
use clovisor_integration_tests::dns::{self, Dnsmasq, MISSING, NAME, NAME_V4, NAME_V6};
use clovisor_integration_tests::{wait_for, AllInOne, Lab};
use serde_json::Value;

fn part(s: &Value) -> &Value {
    &s["dns"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_queries_over_udp_become_sessions_end_to_end() -> Result<()> {
    let otlp = OtlpReceiver::start().await?;
    let mut lab = Lab::new()?;
    let client = lab.pod("dcli")?;
    let server = lab.pod("dsrv")?;
    let _dnsmasq = Dnsmasq::start(&server)?;
    // dnsmasq listens on TCP 53 too: the probe's scan finds the port, traced for both transports.
    let clovisor = AllInOne::start(
        &["--netns", &server.netns],
        &otlp.endpoint(),
        &[&server.host_veth],
        "clovisor-dns-e2e",
    )?;

    let query = |name: &str, types: &[&str]| dns::query(&client, &server, name, types);

    // Queries until the port is traced (the probe's scan finds it listening).
    let traced = wait_for("a traced DNS query", Duration::from_secs(20), || {
        let _ = query(NAME, &["1"]);
        std::thread::sleep(Duration::from_millis(300));
        Ok(clovisor
            .sessions()?
            .iter()
            .any(|s| s["protocol"] == "dns" && part(s)["question_name"] == NAME))
    });
    if let Err(e) = traced {
        bail!("{e:#}\nlog:\n{}", clovisor.proc.log_text());
    }

    let answers = query(NAME, &["1", "28"])?;
    let nx = query(MISSING, &["1"])?;
    let mut seen = Vec::new();
    let all = wait_for("the DNS sessions", Duration::from_secs(20), || {
        seen = clovisor.sessions()?;
        let of_type = |t: &str| {
            seen.iter()
                .filter(|s| part(s)["question_name"] == NAME && part(s)["question_type"] == t)
                .count()
        };
        Ok(of_type("A") >= 2
            && of_type("AAAA") >= 1
            && seen.iter().any(|s| part(s)["question_name"] == MISSING))
    });
    let summary = || {
        seen.iter()
            .map(|s| format!("{} {} {}", s["id"], s["protocol"], s["dns"]))
            .collect::<Vec<_>>()
            .join("\n")
    };
    if let Err(e) = all {
        bail!(
            "{e:#}\nanswers: {answers:?} {nx:?}\nsessions:\n{}\nlog:\n{}",
            summary(),
            clovisor.proc.log_text()
        );
    }
    let aaaa = seen
        .iter()
        .find(|s| part(s)["question_name"] == NAME && part(s)["question_type"] == "AAAA")
        .context("the AAAA query")?;
    assert_eq!(aaaa["protocol"], "dns", "{aaaa:#}");
    assert_eq!(aaaa["incomplete"], false, "answered: {aaaa:#}");
    assert_eq!(part(aaaa)["transport"], "udp", "{aaaa:#}");
    assert_eq!(aaaa["server"]["port"], 53, "{aaaa:#}");
    let a = seen
        .iter()
        .find(|s| part(s)["question_name"] == NAME && part(s)["question_type"] == "A")
        .context("an A query")?;
    assert_eq!(part(a)["response_code"], "NOERROR", "{a:#}");
    assert_eq!(part(a)["answers"], serde_json::json!([NAME_V4]), "{a:#}");
    let gone = seen
        .iter()
        .find(|s| part(s)["question_name"] == MISSING)
        .context("the unknown name")?;
    assert_eq!(
        part(gone)["response_code"],
        "NXDOMAIN",
        "{gone:#}\n{}",
        summary()
    );
    // Each session is one query with its own answer: the A and AAAA sent back to back did not
    // pair with each other's answers.
    for s in seen.iter().filter(|s| part(s)["question_name"] == NAME) {
        let want = if part(s)["question_type"] == "AAAA" {
            NAME_V6
        } else {
            NAME_V4
        };
        assert_eq!(
            part(s)["answers"],
            serde_json::json!([want]),
            "{s:#}\n{}",
            summary()
        );
    }
    Ok(())
}
