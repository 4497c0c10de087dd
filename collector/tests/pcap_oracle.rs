//! Oracle test: real captures (Chris Sanders' packets collection, github.com/chrissanders/packets,
//! via `shared/testdata/pcap/`) replayed through the probe-equivalent record builder and the flow
//! table must yield the HTTP methods, URIs and status codes tshark dissects from the same files,
//! and the DNS questions, types, response codes and answer counts (over UDP and TCP).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use clovisor_collector::replay::{
    self,
    pcap::{replay_file, ReplayConfig},
};
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
    replay_sessions(
        file,
        &ReplayConfig {
            snaplen,
            ..ReplayConfig::default()
        },
    )
}

fn replay_sessions(file: &Path, cfg: &ReplayConfig) -> anyhow::Result<Vec<Session>> {
    Ok(replay::sessions(replay_file(file, cfg)?.records))
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

const DNS_FILES: &[&str] = &[
    "dns_query_response.pcapng",
    "dns_query_nonexistent.pcapng",
    "dns_reverse_lookup.pcapng",
    "dns_lab.pcapng",
    "dns_tcp.pcapng",
    "dns_axfr.pcapng",
    "udp_dnsrequest.pcapng",
];

/// One DNS exchange as both sides describe it: id, question name and type, and the answer's
/// response code and answer count when answered.
type DnsRow = (u32, String, u32, Option<(u32, u32)>);

/// The exchanges tshark's DNS dissector shows: every query, with the answer of the same id and
/// name when there is one.
fn tshark_dns(file: &Path) -> anyhow::Result<Vec<DnsRow>> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(["-Y", "dns", "-T", "fields", "-E", "separator=\t"])
        .args(["-E", "aggregator=\u{1f}"])
        .args(["-e", "dns.flags.response", "-e", "dns.qry.name", "-e", "dns.qry.type"])
        .args(["-e", "dns.flags.rcode", "-e", "dns.count.answers", "-e", "dns.id"])
        .output()
        .context("tshark is required for this oracle test (Debian package `tshark`, installed by scripts/install-deps.sh) but could not be run")?;
    anyhow::ensure!(
        out.status.success(),
        "tshark failed on {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut queries: Vec<DnsRow> = Vec::new();
    let mut answers: Vec<DnsRow> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let cols: Vec<Vec<&str>> = line
            .split('\t')
            .map(|c| c.split('\u{1f}').collect())
            .collect();
        let field = |c: usize, i: usize| cols.get(c).and_then(|v| v.get(i)).copied().unwrap_or("");
        // Several DNS messages in one TCP segment: one value each, in order.
        for i in 0..cols.first().map_or(0, Vec::len) {
            let num = |c: usize| -> anyhow::Result<u32> {
                let v = field(c, i);
                Ok(match v.strip_prefix("0x") {
                    Some(hex) => u32::from_str_radix(hex, 16)?,
                    None => v.parse()?,
                })
            };
            let row = (num(5)?, field(1, i).to_owned(), num(2)?, None);
            if field(0, i) == "1" {
                answers.push((row.0, row.1, row.2, Some((num(3)?, num(4)?))));
            } else {
                queries.push(row);
            }
        }
    }
    for q in &mut queries {
        if let Some(i) = answers
            .iter()
            .position(|a| a.0 == q.0 && a.1.eq_ignore_ascii_case(&q.1) && a.2 == q.2)
        {
            q.3 = answers.remove(i).3;
        }
    }
    queries.sort();
    Ok(queries)
}

#[test]
fn dns_exchanges_match_tshark_on_real_captures() -> anyhow::Result<()> {
    let dir = testdata().join("pcap");
    let cfg = ReplayConfig {
        traced_ports: [53].into_iter().collect(),
        snaplen: 4096,
        hint: clovisor_proto::capture::v1::ProtocolHint::Unspecified,
        ..ReplayConfig::default()
    };
    let mut transports = std::collections::BTreeSet::new();
    for name in DNS_FILES {
        let file = dir.join(name);
        anyhow::ensure!(
            file.exists(),
            "missing test capture {} (set CLOVISOR_TESTDATA)",
            file.display()
        );
        let want = tshark_dns(&file)?;
        anyhow::ensure!(!want.is_empty(), "tshark found no DNS query in {name}");
        let got_sessions = replay_sessions(&file, &cfg)?;
        let mut got: Vec<DnsRow> = got_sessions
            .iter()
            .filter_map(|s| {
                let d = s.dns.as_ref()?;
                transports.insert(d.transport);
                let answer = (!s.incomplete).then_some((d.response_code, d.answer_count));
                Some((d.id, d.question_name.clone(), d.question_type, answer))
            })
            .collect();
        got.sort();
        assert_eq!(
            got, want,
            "{name}: DNS exchanges (left: ours, right: tshark)"
        );
        assert!(
            got_sessions
                .iter()
                .all(|s| s.protocol == clovisor_proto::session::v1::Protocol::Dns as i32),
            "{name}: every session is DNS"
        );
    }
    assert_eq!(transports.len(), 2, "both UDP and TCP were decoded");
    Ok(())
}
