//! The same traffic decoded live and from a capture: nginx and dnsmasq in one namespace pod,
//! curl (three requests on one keep-alive connection, and a fourth alone) and a resolver's UDP
//! queries (A and AAAA back to back, an unknown name) from another, `clovisor all-in-one` tracing
//! the server pod with real BPF programs while dumpcap captures the server pod's veth. Then
//! `clovisor decode` on the capture must print the exchanges the REST API holds for that time:
//! the same protocol, ends, HTTP or DNS fields, completeness, and at the veth the same byte and
//! packet counts, TCP sequence numbers and (within the clocks' agreement) times.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use clovisor_integration_tests::decode::{assert_same_exchanges, decode_capture, started_since};
use clovisor_integration_tests::dns::{self, Dnsmasq, MISSING, NAME};
use clovisor_integration_tests::dumpcap::Dumpcap;
use clovisor_integration_tests::http_client::{curl, Curl};
use clovisor_integration_tests::{wait_for, AllInOne, Lab, Nginx};

#[test]
fn a_capture_decodes_to_the_exchanges_traced_live() -> Result<()> {
    let mut lab = Lab::new()?;
    let client = lab.pod("dlcli")?;
    let server = lab.pod("dlsrv")?;
    let _nginx = Nginx::start(&server)?;
    let _dnsmasq = Dnsmasq::start(&server)?;
    let clovisor = AllInOne::start_without_export(
        &["--netns", &server.netns],
        &[&server.host_veth],
        "clovisor-decode-live",
    )?;
    let base = format!("http://{}", server.ipv4);

    // Until both ports are traced (the probe finds them listening).
    let traced = wait_for("traced HTTP and DNS", Duration::from_secs(20), || {
        let _ = curl(&client, &format!("{base}/?warm"));
        let _ = dns::query(&client, &server, NAME, &["1"]);
        std::thread::sleep(Duration::from_millis(300));
        let seen = clovisor.sessions()?;
        Ok(seen.iter().any(|s| s["protocol"] == "http/1.1")
            && seen.iter().any(|s| s["protocol"] == "dns"))
    });
    if let Err(e) = traced {
        bail!("{e:#}\nlog:\n{}", clovisor.proc.log_text());
    }

    let dir = tempfile::tempdir()?;
    let pcap = dir.path().join("live.pcapng");
    let capture = Dumpcap::start(&server.host_veth, &pcap, &dir.path().join("dumpcap.log"))?;
    // Warm-up exchanges still on their way are over by now; everything after is in the capture.
    std::thread::sleep(Duration::from_millis(300));
    let since = i128::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos())?;
    Curl::new().run(
        &client,
        &[
            format!("{base}/index.html"),
            format!("{base}/missing"),
            format!("{base}/big.bin"),
        ],
    )?;
    Curl::new()
        .args(&[
            "-X",
            "POST",
            "-d",
            "sku=42",
            "-H",
            "x-request-id: decode-live-1",
        ])
        .run(&client, &[format!("{base}/api/orders")])?;
    dns::query(&client, &server, NAME, &["1", "28"])?;
    dns::query(&client, &server, MISSING, &["1"])?;
    std::thread::sleep(Duration::from_millis(300));
    capture.stop()?;

    let mut live = Vec::new();
    let all = wait_for("the live sessions", Duration::from_secs(20), || {
        live = started_since(&clovisor.sessions()?, since);
        let http = live.iter().filter(|s| s["protocol"] == "http/1.1").count();
        let dns = live.iter().filter(|s| s["protocol"] == "dns").count();
        Ok(http >= 4 && dns >= 3)
    });
    if let Err(e) = all {
        bail!(
            "{e:#}\nsessions: {live:#?}\nlog:\n{}",
            clovisor.proc.log_text()
        );
    }

    let (decoded, summary) = decode_capture(&pcap, "80,53")?;
    let decoded = started_since(&decoded, since);
    let compared = assert_same_exchanges(&live, &server.host_veth, &decoded, "live.pcapng")
        .map_err(|e| e.context(summary.clone()))?;
    assert_eq!(compared, 7, "4 HTTP and 3 DNS exchanges\n{summary}");
    Ok(())
}
