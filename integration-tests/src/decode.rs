//! `clovisor decode` as the offline oracle of the live tests: the traffic a test traced live,
//! captured by dumpcap on the server pod's veth, decoded from the capture, must make the
//! exchanges the REST API holds.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::clovisor_bin;

/// The exchanges `clovisor decode` prints for `pcap` with server ports `ports` (`80,53`), and
/// its summary.
pub fn decode_capture(pcap: &Path, ports: &str) -> Result<(Vec<Value>, String)> {
    decode_capture_with(pcap, ports, &[])
}

/// [`decode_capture`] with more arguments (e.g. `--analyzer NAME=MODULE`).
pub fn decode_capture_with(
    pcap: &Path,
    ports: &str,
    args: &[&str],
) -> Result<(Vec<Value>, String)> {
    let out = Command::new(clovisor_bin()?)
        .arg("decode")
        .arg(pcap)
        .args(["--port", ports])
        .args(args)
        .output()
        .context("clovisor decode")?;
    let summary = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(out.status.success(), "clovisor decode failed: {summary}");
    let decoded = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("JSON lines")?;
    Ok((decoded, summary))
}

/// Sessions of `seen` that started at or after `since` (Unix nanoseconds).
pub fn started_since(seen: &[Value], since: i128) -> Vec<Value> {
    seen.iter()
        .filter(|s| {
            s["start_time"]
                .as_str()
                .and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .is_some_and(|t| t.unix_timestamp_nanos() >= since)
        })
        .cloned()
        .collect()
}

/// The observation of `s` at interface `at`.
pub fn point<'a>(s: &'a Value, at: &str) -> Option<&'a Value> {
    s["observations"]
        .as_array()?
        .iter()
        .find(|o| o["interface"] == at)
}

/// What of an exchange a live view and a decoded one must agree on, keyed by what tells it apart:
/// its protocol, client port and its protocol's fields. `at` names the observation compared (the
/// server's veth live, the capture file offline). Packet counts are left out: the probe counts a
/// GSO packet's segments, a capture on the veth shows it as one frame.
pub fn comparable(s: &Value, at: &str) -> Result<(String, Value)> {
    let o = point(s, at).with_context(|| format!("no observation at {at}: {s:#}"))?;
    let key = format!(
        "{} {} {} {} {} {} {}",
        s["protocol"],
        s["client"]["port"],
        s["http"],
        s["dns"],
        s["database"],
        s["kafka"],
        s["analyzer"]
    );
    // A capture has no pod metadata: the ends are compared by address.
    let end = |e: &Value| serde_json::json!({"ip": e["ip"], "port": e["port"]});
    let view = serde_json::json!({
        "protocol": s["protocol"],
        "client": end(&s["client"]),
        "server": end(&s["server"]),
        "http": s["http"],
        "dns": s["dns"],
        "database": s["database"],
        "kafka": s["kafka"],
        "analyzer": s["analyzer"],
        "incomplete": s["incomplete"],
        "request_bytes": o["request_bytes"],
        "response_bytes": o["response_bytes"],
        "request_tcp_seq": o["request_tcp_seq"],
        "response_tcp_seq": o["response_tcp_seq"],
    });
    Ok((key, view))
}

/// Asserts that `decoded` (from the capture file `file`) holds exactly the exchanges of `live`
/// (seen at the server's veth `veth`), each with the same fields, counters, sequence numbers and,
/// within the clocks' agreement (20 ms), request start; returns how many.
pub fn assert_same_exchanges(
    live: &[Value],
    veth: &str,
    decoded: &[Value],
    file: &str,
) -> Result<usize> {
    let by_key = |sessions: &[Value], at: &str| -> Result<BTreeMap<String, (Value, Value)>> {
        sessions
            .iter()
            .map(|s| {
                let (k, v) = comparable(s, at)?;
                Ok((k, (v, s.clone())))
            })
            .collect()
    };
    let want = by_key(live, veth)?;
    let got = by_key(decoded, file)?;
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the exchanges (left: clovisor decode, right: live)"
    );
    for (key, (theirs, live_session)) in &want {
        let (ours, decoded_session) = &got[key];
        assert_eq!(ours, theirs, "{key} (left: clovisor decode, right: live)");
        // The kernel's clock and dumpcap's agree closely.
        let start = |s: &Value, at: &str| {
            point(s, at).and_then(|o| {
                time::OffsetDateTime::parse(
                    o["request_start"].as_str()?,
                    &time::format_description::well_known::Rfc3339,
                )
                .ok()
            })
        };
        let (Some(a), Some(b)) = (start(decoded_session, file), start(live_session, veth)) else {
            anyhow::bail!("request start missing: {decoded_session:#} {live_session:#}");
        };
        assert!(
            (a - b).abs() < time::Duration::milliseconds(20),
            "{key}: request start {a} from the capture, {b} live"
        );
    }
    Ok(want.len())
}
