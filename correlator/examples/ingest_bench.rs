//! Correlator ingest cost and memory, printed as one JSON object (for `scripts/bench.sh`, and for
//! profiling the correlator without a pipeline in front of it).
//!
//! The traffic is what the end-to-end benchmark makes: HTTP/1.1 exchanges over many keep-alive
//! connections into one server pod, each seen at two observation points — the server pod's veth
//! and the server's socket — so it reaches the correlator as two sessions (same client address
//! and port, same request TCP sequence number, same HTTP fields, endpoints with pod, namespace,
//! node and workload), a quarter of them carrying W3C trace context and an `x-request-id`. The
//! two views of an exchange arrive in either order, a few sessions apart. They are framed into
//! encoded `SessionBatch`es of the collector's batch size.
//!
//! Default mode (`--seconds S`, default 5): batch after batch, does what the correlator's gRPC
//! service does — protobuf-decode the batch, [`IngestService::accept_batch_at`] (duplicate
//! check, join, store, metrics), [`IngestService::tick_at`] every tick interval (join windows
//! close: RED metrics, span building) — and, unless `--export none`, takes the spans as the
//! exporter's worker would and encodes each full export batch into its OTLP request (which the
//! worker would send; here it is dropped). Time is simulated: the exchanges arrive at `--rate`
//! per second (default 15,000, the end-to-end benchmark's rate), so the join holds what it holds
//! in a real run (open for the 1 s window, retained 30 s up to `CLOVISOR_JOIN_MAX_ENTRIES`).
//! Only the correlator's work is timed, in CPU time of this thread (`CLOCK_THREAD_CPUTIME_ID`):
//! making and encoding the batches is not. Not included: HTTP/2 and gRPC framing, the tokio tasks
//! between the stream and the service, and the network send of the spans.
//!
//! `--client outside`: the client is no pod of ours (no pod, namespace or workload), as in the
//! end-to-end benchmark, where wrk runs in an untraced network namespace. With `--views merged`
//! nothing else can see such an exchange, so the correlator holds each session as it arrived
//! until its window closes (see `correlator/src/join/head.rs`); with the default client (a pod
//! on another node) it decodes each on arrival, since that node's probe may send its view.
//!
//! `--views merged`: each exchange arrives as one session holding both views, as the collector's
//! local join sends what one probe saw (the default, `separate`, sends each view on its own, as
//! two probes' collectors would).
//!
//! `--mesh-sampled PERCENT`: every exchange carries a W3C trace context, as behind a mesh that
//! injects one into every request, and PERCENT % of them say sampled (Istio's default is 1) —
//! the correlator's default sampler exports those only (`export/sampler.rs`).
//!
//! `--open N`: N distinct exchanges opened in the join and the store at once (both sized for N,
//! a window that does not close), first with one view each, then with both; reports the
//! process's resident memory before and after each (`VmRSS`), in MiB.
//!
//! ```text
//! cargo run --release -p clovisor-correlator --example ingest_bench -- --seconds 5
//! cargo run --release -p clovisor-correlator --example ingest_bench -- --open 100000
//! ```

/// As in the correlator's binary: the allocator is part of what is measured.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clovisor_correlator::export::otlp::{export_request, ExportHandle, QueuedSpan};
use clovisor_correlator::export::span::resource;
use clovisor_correlator::ingest::IngestService;
use clovisor_correlator::join::{Eviction, JoinConfig, Outcome};
use clovisor_correlator::metrics::Metrics;
use clovisor_correlator::store::Store;
use clovisor_correlator::Config;
use clovisor_proto::common::v1::{PointKind, Side};
use clovisor_proto::hops::encode_session_batch;
use clovisor_proto::session::v1::{
    Counters, Endpoint, Http, Observation, Protocol, Session, SessionBatch, TraceContext,
    TraceFormat,
};
use clovisor_runtime::process_metrics::thread_cpu_time as thread_cpu;
use prost::Message as _;
use tokio::sync::mpsc;

/// `VmHWM` and `VmRSS` of this process, in KiB.
fn rss_kib() -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} missing from /proc/self/status"))?;
        line.split_whitespace()
            .nth(1)
            .context("malformed status line")?
            .parse()
            .with_context(|| format!("{name} value"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// splitmix64: a deterministic, well-mixed value per input.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Unix time of the first exchange.
const START_UNIX_NANOS: u64 = 1_760_000_000_000_000_000;
const PROBE_ID: &str = "3f2a9c1b7d4e5f60";
const NODE: &str = "node-a";
const VETH: &str = "veth3a9f2c1e";
const SEQ_STRIDE: u64 = 256;

/// The traffic: exchange `i` is a pure function of `i`, so any exchange can be made again.
struct Traffic {
    connections: u64,
    /// Every exchange carries a trace context, this share (0–10,000 in ten-thousandths) of
    /// them sampled; `None`: a quarter carry one, all sampled.
    mesh_sampled: Option<u64>,
    /// Nanoseconds between exchanges.
    gap: u64,
    client: Endpoint,
    server: Endpoint,
}

impl Traffic {
    fn new(connections: u64, rate: f64, client_outside: bool) -> Self {
        let mut traffic = Self {
            connections: connections.max(1),
            mesh_sampled: None,
            gap: (1e9 / rate).max(1.0) as u64,
            client: Endpoint {
                ip: vec![10, 244, 1, 5].into(),
                port: 0,
                pod: "wrk-7d9f8b6c5-x2x4k".into(),
                namespace: "bench".into(),
                node: "node-b".into(),
                workload: "wrk".into(),
                service: String::new(),
            },
            server: Endpoint {
                ip: vec![10, 244, 0, 9].into(),
                port: 80,
                pod: "nginx-5f7b9c8d4-q8zlm".into(),
                namespace: "bench".into(),
                node: NODE.into(),
                workload: "nginx".into(),
                service: String::new(),
            },
        };
        if client_outside {
            traffic.client.pod.clear();
            traffic.client.namespace.clear();
            traffic.client.workload.clear();
        }
        traffic
    }

    /// Simulated offset of exchange `i` from the start.
    fn at(&self, i: u64) -> Duration {
        Duration::from_nanos(i * self.gap)
    }

    /// The two views of exchange `i`: the server pod's veth, then the server's socket.
    fn exchange(&self, i: u64) -> [Session; 2] {
        let conn = i % self.connections;
        let nth = i / self.connections;
        let r = mix(i);
        let target = match r % 4 {
            0 => "/".to_owned(),
            1 | 2 => "/index.html".to_owned(),
            _ => format!("/api/v1/items?id={}", r % 10_000),
        };
        let request_bytes = 96 + target.len() as u64;
        let response_bytes = 338u64;
        // Sequence numbers advance by a fixed stride (at least any request's length), so two
        // requests of one connection never share one.
        let request_seq = (mix(conn + 1) as u32).wrapping_add((nth * SEQ_STRIDE) as u32);
        let response_seq = (mix(conn + 7) as u32).wrapping_add((nth * SEQ_STRIDE * 4) as u32);
        let traced = self.mesh_sampled.is_some() || r.is_multiple_of(4);
        let sampled = self
            .mesh_sampled
            .is_none_or(|share| mix(r + 5) % 10_000 < share);
        let trace = traced.then(|| TraceContext {
            format: TraceFormat::W3c as i32,
            trace_id: [mix(r).to_be_bytes(), mix(r + 1).to_be_bytes()].concat(),
            parent_span_id: mix(r + 2).to_be_bytes().to_vec(),
            sampled,
            tracestate: String::new(),
        });
        let request_id = if traced {
            let (a, b) = (mix(r + 3), mix(r + 4));
            format!(
                "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
                a >> 32,
                a & 0xffff,
                b & 0xfff,
                (b >> 12) & 0xfff,
                b >> 16
            )
        } else {
            String::new()
        };
        let start = START_UNIX_NANOS + i * self.gap;
        let mut client = self.client.clone();
        client.port = 20_000 + conn as u32;
        let http = Http {
            method: "GET".into(),
            target,
            host: "nginx.bench.svc.cluster.local".into(),
            user_agent: "wrk/4.1.0".into(),
            status_code: 200,
            version: "HTTP/1.1".into(),
            request_id,
            envoy_decorator: String::new(),
            reason: "OK".into(),
            request_content_length: 0,
            response_content_length: 100,
            response_chunked: false,
        };
        let index = nth * 2;
        let view = |id: String, observation: Observation| Session {
            id,
            protocol: Protocol::Http1 as i32,
            client: Some(client.clone()),
            server: Some(self.server.clone()),
            start_unix_nanos: observation.request_start_unix_nanos,
            end_unix_nanos: observation.response_end_unix_nanos,
            bytes: Some(Counters {
                request: request_bytes,
                response: response_bytes,
            }),
            packets: Some(Counters {
                request: observation.request_packets,
                response: observation.response_packets,
            }),
            http: Some(http.clone()),
            trace: trace.clone(),
            incomplete: false,
            attributes: Default::default(),
            observations: vec![observation],
            ..Session::default()
        };
        let veth = Observation {
            kind: PointKind::Pod as i32,
            interface: VETH.into(),
            node: NODE.into(),
            probe_id: PROBE_ID.into(),
            side: Side::Server as i32,
            request_start_unix_nanos: start,
            request_end_unix_nanos: start + 1_500,
            response_start_unix_nanos: start + 41_000,
            response_end_unix_nanos: start + 43_000,
            request_tcp_seq: request_seq,
            response_tcp_seq: response_seq,
            request_bytes,
            response_bytes,
            request_packets: 1,
            response_packets: 1,
            ..Default::default()
        };
        let socket = Observation {
            kind: PointKind::Socket as i32,
            interface: String::new(),
            node: NODE.into(),
            probe_id: PROBE_ID.into(),
            side: Side::Server as i32,
            request_start_unix_nanos: start + 9_000,
            request_end_unix_nanos: start + 9_000,
            response_start_unix_nanos: start + 36_000,
            response_end_unix_nanos: start + 36_000,
            request_tcp_seq: request_seq,
            response_tcp_seq: response_seq,
            request_bytes,
            response_bytes,
            pid: 4242 + (conn % 2) as u32,
            comm: "nginx".into(),
            netns_inode: 4_026_532_801,
            ..Default::default()
        };
        [
            view(format!("{PROBE_ID}/{:x}/{index}", 0x1000 + conn), veth),
            view(
                format!("{PROBE_ID}/{:x}/{index}", 0x1000 + self.connections + conn),
                socket,
            ),
        ]
    }
}

/// Frames sessions into encoded batches as the collector's forwarder does.
struct Batcher {
    size: usize,
    seq: u64,
    pending: Vec<Session>,
}

impl Batcher {
    fn new() -> Self {
        let size = clovisor_proto::hops::session_delivery_config()
            .max_batch_items
            .max(1);
        Self {
            size,
            seq: 0,
            pending: Vec::with_capacity(size),
        }
    }

    /// The encoded batch once `size` sessions are pending (or `flush` asks for what there is).
    fn push(&mut self, s: Session, out: &mut Vec<u8>) -> bool {
        self.pending.push(s);
        self.pending.len() >= self.size && self.take(out)
    }

    fn take(&mut self, out: &mut Vec<u8>) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        self.seq += 1;
        // Framed as the collector frames it.
        let batch = encode_session_batch(self.seq, "collector-7b5d9c-0", &self.pending);
        out.clear();
        out.extend_from_slice(&batch);
        // The vector is reused: a fresh one per batch would take fresh pages, and their
        // clearing would show in a profile of the correlator.
        self.pending.clear();
        true
    }
}

/// The two views of every exchange, in arrival order: the views of one exchange come in either
/// order, the second up to 63 sessions after the first.
struct Arrivals<'a> {
    traffic: &'a Traffic,
    /// Each exchange as one session of both views, as the collector's local join sends it.
    merged: bool,
    next: u64,
    /// Second views waiting, with the session count at which each arrives.
    delayed: std::collections::VecDeque<(u64, Session)>,
    sent: u64,
}

impl<'a> Arrivals<'a> {
    fn new(traffic: &'a Traffic, merged: bool) -> Self {
        Self {
            traffic,
            merged,
            next: 0,
            delayed: Default::default(),
            sent: 0,
        }
    }

    /// The next session and the exchange number it belongs to (for the clock).
    fn next(&mut self) -> (Session, u64) {
        self.sent += 1;
        if self
            .delayed
            .front()
            .is_some_and(|(due, _)| *due <= self.sent)
        {
            if let Some((_, s)) = self.delayed.pop_front() {
                return (s, self.next);
            }
        }
        let i = self.next;
        self.next += 1;
        let [mut veth, socket] = self.traffic.exchange(i);
        if self.merged {
            let id = clovisor_proto::join::merge::merge(&mut veth, socket);
            veth.merged_ids.push(id);
            return (veth, i);
        }
        let r = mix(i ^ 0x5555);
        let (first, second) = if r.is_multiple_of(2) {
            (veth, socket)
        } else {
            (socket, veth)
        };
        let due = (self.sent + (r >> 8) % 64).max(self.delayed.back().map_or(0, |(d, _)| *d));
        self.delayed.push_back((due, second));
        (first, i)
    }
}

/// The exporter's worker, minus the network: collects the encoded spans into batches of the
/// export batch size and makes each batch's OTLP request.
struct Export {
    rx: mpsc::Receiver<QueuedSpan>,
    resource: opentelemetry_proto::tonic::resource::v1::Resource,
    batch: Vec<QueuedSpan>,
    size: usize,
    spans: u64,
    requests: u64,
    bytes: u64,
}

impl Export {
    fn run(&mut self, all: bool) {
        while let Ok(span) = self.rx.try_recv() {
            self.batch.push(span);
            if self.batch.len() >= self.size {
                self.send();
            }
        }
        if all && !self.batch.is_empty() {
            self.send();
        }
    }

    fn send(&mut self) {
        let spans = std::mem::take(&mut self.batch);
        self.spans += spans.len() as u64;
        let request = export_request(&self.resource, &spans);
        self.bytes += request.len() as u64;
        self.requests += 1;
    }
}

fn service(
    store_capacity: usize,
    join: JoinConfig,
    export: bool,
) -> (IngestService, Arc<Metrics>, Arc<Store>, Option<Export>) {
    let config = Config::default();
    let metrics = Arc::new(Metrics::new());
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let store = Arc::new(Store::new(store_capacity));
    let (handle, export) = match config.export.as_ref().filter(|_| export) {
        Some(e) => {
            let (handle, rx) = ExportHandle::detached(e.queue_capacity, Arc::clone(&metrics));
            let worker = Export {
                rx,
                resource: resource(&config.service_name, Some(NODE)),
                batch: Vec::with_capacity(e.batch_size),
                size: e.batch_size.max(1),
                spans: 0,
                requests: 0,
                bytes: 0,
            };
            (Some(handle), Some(worker))
        }
        None => (None, None),
    };
    let svc = IngestService::with_join(Arc::clone(&store), Arc::clone(&metrics), handle, join);
    (svc, metrics, store, export)
}

fn outcomes(m: &Metrics) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    for outcome in [
        Outcome::Opened,
        Outcome::Joined,
        Outcome::Late,
        Outcome::Conflict,
        Outcome::Ambiguous,
        Outcome::Duplicate,
    ] {
        o.insert(outcome.label().into(), m.join_count(outcome).into());
    }
    o.into()
}

/// The default mode: steady ingest at a simulated rate, timed.
fn ingest(
    seconds: f64,
    connections: u64,
    rate: f64,
    export: bool,
    merged: bool,
    client_outside: bool,
    mesh_sampled: Option<u64>,
) -> anyhow::Result<serde_json::Value> {
    let config = Config::default();
    let (svc, metrics, store, mut exporter) = service(config.store_capacity, config.join, export);
    let mut traffic = Traffic::new(connections, rate, client_outside);
    traffic.mesh_sampled = mesh_sampled;
    let mut arrivals = Arrivals::new(&traffic, merged);
    let mut batcher = Batcher::new();
    let tick = svc.tick_interval();
    let t0 = Instant::now();
    let mut next_tick = t0 + tick;
    let mut bytes = Vec::new();
    let mut cpu = Duration::ZERO;
    let mut decode = Duration::ZERO;
    let mut batches = 0u64;
    let mut batch_bytes = 0u64;
    let budget = Duration::from_secs_f64(seconds);
    let wall = Instant::now();
    let mut now = t0;
    while wall.elapsed() < budget {
        let (session, i) = arrivals.next();
        if !batcher.push(session, &mut bytes) {
            continue;
        }
        now = t0 + traffic.at(i);
        batches += 1;
        batch_bytes += bytes.len() as u64;
        let c0 = thread_cpu()?;
        let batch = SessionBatch::decode(bytes::Bytes::copy_from_slice(&bytes))
            .context("decoding a batch")?;
        let c1 = thread_cpu()?;
        decode += c1.saturating_sub(c0);
        if !svc.accept_batch_at(batch, now) {
            bail!("batch {} refused as a duplicate", batcher.seq);
        }
        while next_tick <= now {
            svc.tick_at(next_tick);
            next_tick += tick;
        }
        if let Some(e) = exporter.as_mut() {
            e.run(false);
        }
        cpu += thread_cpu()?.saturating_sub(c0);
    }
    let wall = wall.elapsed();
    let (hwm, rss) = rss_kib()?;
    let sessions = batches * batcher.size as u64;
    // Every exchange has two views; the views still in flight make it a hair more than half.
    let (views, exchanges) = if merged {
        (2 * sessions, sessions as f64)
    } else {
        (sessions, sessions as f64 / 2.0)
    };
    let opened = metrics.join_count(Outcome::Opened);
    let joined = metrics.join_count(Outcome::Joined) + metrics.join_count(Outcome::Late);
    let odd = metrics.join_count(Outcome::Conflict)
        + metrics.join_count(Outcome::Ambiguous)
        + metrics.join_count(Outcome::Duplicate);
    if odd != 0 || opened == 0 || (!merged && joined + 64 < opened) {
        bail!(
            "the join did not join the two views of every exchange: {}",
            outcomes(&metrics)
        );
    }
    let cpu_s = cpu.as_secs_f64();
    let (_, held_join) = svc.join_len();
    Ok(serde_json::json!({
        "mode": "ingest",
        "export": if export { "encoded, not sent" } else { "none" },
        "mesh_sampled_percent": mesh_sampled.map(|s| s as f64 / 100.0),
        "spans_unsampled": metrics.unsampled_count(),
        "views_per_session": if merged { 2 } else { 1 },
        "client": if client_outside { "outside" } else { "pod" },
        "connections": connections,
        "rate_per_s": rate,
        "batch_sessions": batcher.size,
        "batches": batches,
        "batch_bytes_mean": batch_bytes as f64 / batches.max(1) as f64,
        "views": views,
        "exchanges": exchanges,
        "simulated_s": now.duration_since(t0).as_secs_f64(),
        "wall_s": wall.as_secs_f64(),
        "cpu_s": cpu_s,
        "exchanges_per_cpu_s": exchanges / cpu_s,
        "decode_cpu_s": decode.as_secs_f64(),
        "us_per_exchange": cpu_s * 1e6 / exchanges,
        "us_per_view": cpu_s * 1e6 / views as f64,
        "peak_rss_mib": mib(hwm),
        "final_rss_mib": mib(rss),
        "join_outcomes": outcomes(&metrics),
        "join_evictions": {
            "open_early": metrics.eviction_count(Eviction::OpenEarly),
            "retained_early": metrics.eviction_count(Eviction::RetainedEarly),
        },
        "join_held_at_end": held_join,
        "store_held_at_end": store.len(),
        "spans": exporter.as_ref().map(|e| e.spans + e.batch.len() as u64),
        "export_requests": exporter.as_ref().map(|e| e.requests),
        "export_bytes": exporter.as_ref().map(|e| e.bytes),
    }))
}

/// `--open N`: N exchanges held open at once; resident memory for them.
fn open(n: u64, connections: u64) -> anyhow::Result<serde_json::Value> {
    let n_usize = usize::try_from(n).context("--open")?;
    let join = JoinConfig {
        window: Duration::from_secs(60),
        retention: Duration::from_secs(30),
        max_entries: n_usize,
        ..JoinConfig::default()
    };
    // Before the service: the tables it sizes for `n` count too.
    let (_, rss0) = rss_kib()?;
    let (svc, metrics, store, _) = service(n_usize, join, false);
    let traffic = Traffic::new(connections, 15_000.0, false);
    let now = Instant::now();
    let mut batcher = Batcher::new();
    let mut bytes = Vec::new();
    let mut feed = |view: usize| -> anyhow::Result<u64> {
        for i in 0..n {
            let [veth, socket] = traffic.exchange(i);
            let s = if view == 0 { veth } else { socket };
            if batcher.push(s, &mut bytes) || (i + 1 == n && batcher.take(&mut bytes)) {
                let batch = SessionBatch::decode(bytes::Bytes::copy_from_slice(&bytes))
                    .context("decoding a batch")?;
                svc.accept_batch_at(batch, now);
            }
        }
        Ok(rss_kib()?.1)
    };
    let rss1 = feed(0)?;
    let rss2 = feed(1)?;
    let (open_now, _) = svc.join_len();
    if metrics.join_count(Outcome::Opened) != n || metrics.join_count(Outcome::Joined) != n {
        bail!(
            "expected {n} exchanges opened and joined: {}",
            outcomes(&metrics)
        );
    }
    if open_now != n_usize || store.len() != n_usize {
        bail!(
            "expected {n} exchanges open and stored, saw {open_now} open, {} stored",
            store.len()
        );
    }
    let per = |kib: u64| kib as f64 * 1024.0 / n as f64;
    let (hwm, _) = rss_kib()?;
    Ok(serde_json::json!({
        "mode": "open",
        "exchanges": n,
        "rss_before_mib": mib(rss0),
        "one_view": {
            "mib": mib(rss1.saturating_sub(rss0)),
            "bytes_per_exchange": per(rss1.saturating_sub(rss0)),
        },
        "two_views": {
            "mib": mib(rss2.saturating_sub(rss0)),
            "bytes_per_exchange": per(rss2.saturating_sub(rss0)),
        },
        "peak_rss_mib": mib(hwm),
        "final_rss_mib": mib(rss2),
    }))
}

// The JSON report on stdout is this example's output: scripts/bench.sh reads it.
#[allow(clippy::print_stdout)]
fn main() -> anyhow::Result<()> {
    let mut seconds = 5.0f64;
    let mut connections = 1024u64;
    let mut rate = 15_000.0f64;
    let mut export = true;
    let mut open_n: Option<u64> = None;
    let mut merged = false;
    let mut client_outside = false;
    let mut mesh_sampled = None;
    let mut args = std::env::args().skip(1);
    let usage = "usage: ingest_bench [--seconds S] [--rate EXCHANGES_PER_S] [--connections N] \
                 [--export none|encode] [--views separate|merged] [--client pod|outside] \
                 [--mesh-sampled PERCENT] | --open N";
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--seconds" => seconds = value()?.parse().context("--seconds")?,
            "--rate" => rate = value()?.parse().context("--rate")?,
            "--connections" => connections = value()?.parse().context("--connections")?,
            "--open" => open_n = Some(value()?.parse().context("--open")?),
            "--export" => {
                export = match value()?.as_str() {
                    "none" => false,
                    "encode" => true,
                    other => bail!("--export {other}: {usage}"),
                }
            }
            "--views" => {
                merged = match value()?.as_str() {
                    "separate" => false,
                    "merged" => true,
                    other => bail!("--views {other}: {usage}"),
                }
            }
            "--client" => {
                client_outside = match value()?.as_str() {
                    "pod" => false,
                    "outside" => true,
                    other => bail!("--client {other}: {usage}"),
                }
            }
            "--mesh-sampled" => {
                let percent: f64 = value()?.parse().context("--mesh-sampled")?;
                if !(0.0..=100.0).contains(&percent) {
                    bail!("--mesh-sampled {percent}: {usage}");
                }
                mesh_sampled = Some((percent * 100.0).round() as u64);
            }
            _ => bail!("{usage}"),
        }
    }
    if !(seconds > 0.0 && seconds.is_finite() && rate > 0.0 && rate.is_finite()) {
        bail!("{usage}");
    }
    let report = match open_n {
        Some(n) if n > 0 => open(n, connections)?,
        Some(_) => bail!("{usage}"),
        None => ingest(
            seconds,
            connections,
            rate,
            export,
            merged,
            client_outside,
            mesh_sampled,
        )?,
    };
    println!("{report}");
    Ok(())
}
