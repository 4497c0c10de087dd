//! Oracle test for HTTP/2 and gRPC: the real captures of `tests/data/http2/` (see its README)
//! replayed through the probe-equivalent record builder and the flow table must yield the
//! requests, `:status` codes and `grpc-status` codes tshark's `http2` dissector reads from the
//! same files — with the whole messages, and with the probe's default 1024-byte capture. The
//! upgrade capture goes through the HTTP/1 decoder's hand-over to HTTP/2 in the flow table.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clovisor_collector::flows::{FlowTable, FlowTableConfig};
use clovisor_collector::replay::pcap::{replay_file, ReplayConfig};
use clovisor_collector::CollectorMetrics;
use clovisor_proto::session::v1::Session;

/// (capture, traced port, how tshark is told to read the port).
const FILES: &[(&str, u16, &str)] = &[
    ("h2c_prior.pcapng", 8080, "http2"),
    ("grpc_unary.pcapng", 50051, "http2"),
    ("h2c_upgrade.pcapng", 8082, "http"),
];

/// What both sides are compared on, each a sorted multiset.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    /// `METHOD PATH`
    requests: Vec<String>,
    /// `:status`
    statuses: Vec<u32>,
    /// `grpc-status`
    grpc_statuses: Vec<u32>,
}

impl Seen {
    fn sorted(mut self) -> Self {
        self.requests.sort();
        self.statuses.sort_unstable();
        self.grpc_statuses.sort_unstable();
        self
    }
}

fn file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/http2")
        .join(name)
}

/// What tshark reads from `path`, the traced port dissected as `as_proto` (`http2` for prior
/// knowledge; `http` for an upgrade, HTTP/2 following the `101`). An HTTP/1.1 request counts as
/// a request; HTTP/1.1 statuses are not read (the upgrade's `101` is no exchange's status).
fn tshark(path: &Path, port: u16, as_proto: &str) -> anyhow::Result<Seen> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(path)
        .args(["-d", &format!("tcp.port=={port},{as_proto}"), "-Y", "http or http2"])
        .args(["-T", "fields", "-E", "separator=\t", "-E", "aggregator=\u{1f}"])
        .args(["-e", "http2.headers.method", "-e", "http2.headers.path"])
        .args(["-e", "http2.headers.status"])
        .args(["-e", "http2.header.name", "-e", "http2.header.value"])
        .args(["-e", "http.request.method", "-e", "http.request.uri"])
        .output()
        .context("tshark is required for this oracle test (Debian package `tshark`, installed by scripts/install-deps.sh)")?;
    if !out.status.success() {
        bail!("tshark failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut seen = Seen::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let cols: Vec<Vec<&str>> = line
            .split('\t')
            .map(|c| c.split('\u{1f}').filter(|s| !s.is_empty()).collect())
            .collect();
        let col = |i: usize| cols.get(i).cloned().unwrap_or_default();
        for (m, p) in col(0).iter().zip(col(1).iter()) {
            seen.requests.push(format!("{m} {p}"));
        }
        for s in col(2) {
            seen.statuses.push(s.parse().context("status")?);
        }
        for (m, p) in col(5).iter().zip(col(6).iter()) {
            seen.requests.push(format!("{m} {p}"));
        }
        for (n, v) in col(3).iter().zip(col(4).iter()) {
            if *n == "grpc-status" {
                seen.grpc_statuses.push(v.parse().context("grpc-status")?);
            }
        }
    }
    Ok(seen.sorted())
}

fn ours(path: &Path, port: u16, snaplen: u32) -> anyhow::Result<(Seen, Vec<Session>)> {
    let cfg = ReplayConfig {
        traced_ports: [port].into_iter().collect(),
        snaplen,
        ..ReplayConfig::default()
    };
    let replay = replay_file(path, &cfg)?;
    let mut table = FlowTable::new(
        FlowTableConfig::default(),
        Arc::new(CollectorMetrics::new()),
    );
    let mut sessions = Vec::new();
    for r in replay.records {
        table.ingest("replay", r, Instant::now(), &mut sessions);
    }
    let sessions: Vec<_> = sessions
        .into_iter()
        .map(clovisor_collector::flows::Collected::into_session)
        .collect();
    let mut seen = Seen::default();
    for s in &sessions {
        if let Some(h) = &s.http {
            seen.requests.push(format!("{} {}", h.method, h.target));
            if h.status_code != 0 {
                seen.statuses.push(h.status_code);
            }
        }
        if let Some(code) = s.grpc.as_ref().and_then(|g| g.status_code) {
            seen.grpc_statuses.push(code);
        }
    }
    Ok((seen.sorted(), sessions))
}

#[test]
fn http2_and_grpc_sessions_match_tshark_on_real_captures() -> anyhow::Result<()> {
    for (name, port, as_proto) in FILES {
        let path = file(name);
        let want = tshark(&path, *port, as_proto)?;
        anyhow::ensure!(
            !want.requests.is_empty(),
            "tshark found no HTTP/2 request in {name}"
        );
        for snaplen in [65_535, 1024] {
            let (got, sessions) = ours(&path, *port, snaplen)?;
            assert_eq!(
                got, want,
                "{name} at snaplen {snaplen} (left: ours, right: tshark)"
            );
            assert!(
                sessions.iter().all(|s| !s.incomplete),
                "{name}: every stream ended: {sessions:#?}"
            );
        }
    }
    Ok(())
}
