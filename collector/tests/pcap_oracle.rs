//! Oracle test: real captures (Chris Sanders' packets collection, github.com/chrissanders/packets,
//! via `shared/testdata/pcap/`) replayed through the probe-equivalent record builder and the flow
//! table must yield the HTTP methods, URIs and status codes tshark dissects from the same files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clovisor_collector::flows::{FlowTable, FlowTableConfig};
use clovisor_collector::replay::pcap::{replay_file, ReplayConfig};
use clovisor_collector::CollectorMetrics;
use clovisor_proto::session::v1::Session;

const FILES: &[&str] = &[
    "http_post.pcapng",
    "http_google.pcapng",
    "http_espn.pcapng",
    "http_ip4and6.pcapng",
];

fn testdata() -> PathBuf {
    match std::env::var_os("CLOVISOR_TESTDATA") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"),
    }
}

/// (requests as "METHOD URI", status codes) according to tshark, as sorted multisets.
///
/// Requests come from tshark's reassembled view. Status codes come from a second pass with TCP
/// reassembly off: with it on, tshark only reports a response whose whole body is captured
/// (http_espn has one whose body lost segments), while a head decoder rightly sees its status.
fn tshark(file: &Path) -> anyhow::Result<(Vec<String>, Vec<u32>)> {
    let (reqs, _) = tshark_pass(file, &[])?;
    let (_, codes) = tshark_pass(file, &["-o", "tcp.desegment_tcp_streams:FALSE"])?;
    Ok((reqs, codes))
}

fn tshark_pass(file: &Path, extra: &[&str]) -> anyhow::Result<(Vec<String>, Vec<u32>)> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(extra)
        .args(["-Y", "http", "-T", "fields", "-E", "separator=\t"])
        .args(["-E", "aggregator=\u{1f}"])
        .args(["-e", "http.request.method", "-e", "http.request.uri", "-e", "http.response.code"])
        .output()
        .context("tshark is required for this oracle test (Debian package `tshark`, installed by scripts/install-deps.sh) but could not be run")?;
    if !out.status.success() {
        bail!(
            "tshark failed on {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut reqs = Vec::new();
    let mut codes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        let get = |i: usize| cols.get(i).copied().unwrap_or("");
        let methods: Vec<&str> = get(0).split('\u{1f}').filter(|s| !s.is_empty()).collect();
        let uris: Vec<&str> = get(1).split('\u{1f}').filter(|s| !s.is_empty()).collect();
        for (m, u) in methods.iter().zip(uris.iter()) {
            reqs.push(format!("{m} {u}"));
        }
        for c in get(2).split('\u{1f}').filter(|s| !s.is_empty()) {
            codes.push(c.parse().with_context(|| format!("status code {c:?}"))?);
        }
    }
    reqs.sort();
    codes.sort();
    Ok((reqs, codes))
}

fn sessions(file: &Path, snaplen: u32) -> anyhow::Result<Vec<Session>> {
    let cfg = ReplayConfig {
        snaplen,
        ..ReplayConfig::default()
    };
    let replay = replay_file(file, &cfg)?;
    let mut table = FlowTable::new(
        FlowTableConfig::default(),
        Arc::new(CollectorMetrics::new()),
    );
    let mut out = Vec::new();
    let now = Instant::now();
    for r in replay.records {
        table.ingest("replay", r, now, &mut out);
    }
    Ok(out)
}

#[test]
fn sessions_match_tshark_on_real_captures() -> anyhow::Result<()> {
    let dir = testdata().join("pcap");
    for name in FILES {
        let file = dir.join(name);
        anyhow::ensure!(
            file.exists(),
            "missing test capture {} (set CLOVISOR_TESTDATA)",
            file.display()
        );
        let (want_reqs, want_codes) = tshark(&file)?;
        anyhow::ensure!(
            !want_reqs.is_empty(),
            "tshark found no HTTP request in {name}"
        );
        let got = sessions(&file, 4096)?;
        let mut got_reqs: Vec<String> = got
            .iter()
            .filter_map(|s| {
                s.http
                    .as_ref()
                    .map(|h| format!("{} {}", h.method, h.target))
            })
            .collect();
        got_reqs.sort();
        let mut got_codes: Vec<u32> = got
            .iter()
            .filter_map(|s| s.http.as_ref().map(|h| h.status_code))
            .filter(|&c| c != 0)
            .collect();
        got_codes.sort();
        assert_eq!(
            got_reqs, want_reqs,
            "{name}: requests (left: ours, right: tshark)"
        );
        assert_eq!(
            got_codes, want_codes,
            "{name}: status codes (left: ours, right: tshark)"
        );
        let incomplete = got.iter().filter(|s| s.incomplete).count();
        assert_eq!(
            incomplete,
            want_reqs.len() - want_codes.len(),
            "{name}: requests tshark saw without response must be exactly our incomplete ones"
        );
    }
    Ok(())
}

#[test]
fn small_snaplen_keeps_methods_and_target_prefixes() -> anyhow::Result<()> {
    let file = testdata().join("pcap/http_espn.pcapng");
    let (want, _) = tshark(&file)?;
    let got = sessions(&file, 96)?;
    assert_eq!(
        got.len(),
        want.len(),
        "one session per request even when heads are cut"
    );
    let mut by_method: BTreeMap<String, usize> = BTreeMap::new();
    for s in &got {
        let h = s.http.clone().unwrap_or_default();
        *by_method.entry(h.method.clone()).or_default() += 1;
        assert!(
            want.iter()
                .any(|w| w.starts_with(&format!("{} {}", h.method, h.target))),
            "target {:?} is not a prefix of any tshark URI",
            h.target
        );
    }
    let mut want_methods: BTreeMap<String, usize> = BTreeMap::new();
    for w in &want {
        *want_methods
            .entry(w.split(' ').next().unwrap_or("").to_owned())
            .or_default() += 1;
    }
    assert_eq!(by_method, want_methods);
    Ok(())
}
