//! Collector decode throughput for `scripts/bench.sh`, printed as one JSON object.
//!
//! Two phases, both on this one thread, timed in CPU time of the thread (so "per CPU second" is
//! "per core") and in wall time:
//!
//! - `records`: the collector's own work from what a probe sends. The captures are replayed once,
//!   untimed, into the records a probe would have sent and framed into encoded `RecordBatch`es of
//!   the probe's batch size. Each round then does what the collector's gRPC service does with every
//!   batch: protobuf-decode it (from `Bytes`, as tonic hands it over, so payloads are slices of
//!   it) and feed every record to the real [`FlowTable`] (reassembly,
//!   request/response pairing, HTTP/1.x decoding, session building, metrics). Not included: HTTP/2
//!   and gRPC framing, and encoding the sessions for the correlator.
//! - `pcap`: the same, but each round starts from the capture bytes (pcap parsing and TCP tracking
//!   into records, then the flow table): the input tshark gets, for the like-for-like comparison.
//!
//! Every round runs under fresh flow ids (an integer added to each record's flow id), so each round
//! is new traffic to the flow table, and must yield exactly the sessions of the first, untimed
//! round — a round that decoded less would stop the benchmark with an error.
//!
//! ```text
//! cargo run --release -p clovisor-collector --example decode_bench -- \
//!     --seconds 5 ../shared/testdata/pcap/http_espn.pcapng ../shared/testdata/pcap/http_post.pcapng
//! ```
//!
//! Each phase runs whole rounds until `--seconds` (default 5) of wall time have passed;
//! `--phase records` or `--phase pcap` runs only that one (for profiling).
//!
//! The allocator is the collector binary's (mimalloc), so the figures are the binary's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clovisor_collector::flows::{FlowTable, FlowTableConfig};
use clovisor_collector::replay::pcap::{replay_bytes, ReplayConfig};
use clovisor_collector::CollectorMetrics;
use clovisor_proto::capture::v1::{record, Record, RecordBatch};
use clovisor_proto::delivery::DeliveryConfig;
use nix::time::{clock_gettime, ClockId};
use prost::Message as _;

/// The collector binary's allocator: per-exchange allocation is much of what is measured.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The probe's default snaplen (`clovisor-probe --snaplen`).
const PROBE_SNAPLEN: u32 = 1024;

/// CPU time this thread has used (`CLOCK_THREAD_CPUTIME_ID`: exact, not sampled at ticks).
fn thread_cpu() -> anyhow::Result<Duration> {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).context("thread CPU clock")?;
    Ok(Duration::from(t))
}

/// Moves a record's flow into another id space.
fn shift(r: &mut Record, by: u64) {
    match r.kind.as_mut() {
        Some(record::Kind::Message(m)) => m.flow_id += by,
        Some(record::Kind::FlowEnd(e)) => e.flow_id += by,
        _ => {}
    }
}

/// Largest flow id in `records` (0 when none).
fn max_flow_id(records: &[Record]) -> u64 {
    records
        .iter()
        .filter_map(|r| match r.kind.as_ref() {
            Some(record::Kind::Message(m)) => Some(m.flow_id),
            Some(record::Kind::FlowEnd(e)) => Some(e.flow_id),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Sessions one round produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Yield {
    sessions: u64,
    complete: u64,
}

/// What one timed phase measured.
struct Phase {
    rounds: u64,
    out: Yield,
    wall: Duration,
    cpu: Duration,
}

impl Phase {
    fn json(&self) -> serde_json::Value {
        let wall = self.wall.as_secs_f64();
        let cpu = self.cpu.as_secs_f64();
        serde_json::json!({
            "rounds": self.rounds,
            "sessions": self.out.sessions,
            "complete_exchanges": self.out.complete,
            "wall_s": wall,
            "cpu_s": cpu,
            "complete_exchanges_per_wall_s": self.out.complete as f64 / wall,
            "complete_exchanges_per_cpu_s": self.out.complete as f64 / cpu,
        })
    }
}

/// Runs `round` (numbered from 1) until `budget` has passed; each must yield `expected`.
fn timed(
    budget: Duration,
    expected: Yield,
    mut round: impl FnMut(u64) -> anyhow::Result<Yield>,
) -> anyhow::Result<Phase> {
    let cpu0 = thread_cpu()?;
    let start = Instant::now();
    let mut rounds = 0u64;
    let mut total = Yield::default();
    while rounds == 0 || start.elapsed() < budget {
        rounds += 1;
        let got = round(rounds)?;
        if got != expected {
            bail!("round {rounds} yielded {got:?}, the first round {expected:?}");
        }
        total.sessions += got.sessions;
        total.complete += got.complete;
    }
    let wall = start.elapsed();
    let cpu = thread_cpu()?.saturating_sub(cpu0);
    Ok(Phase {
        rounds,
        out: total,
        wall,
        cpu,
    })
}

/// A flow table and what it emitted, fed the way the collector's service feeds it.
struct Collector {
    table: FlowTable,
    now: Instant,
    out: Vec<clovisor_proto::session::v1::Session>,
}

impl Collector {
    fn ingest(&mut self, records: impl Iterator<Item = Record>) {
        for r in records {
            self.table.ingest("bench", r, self.now, &mut self.out);
        }
    }

    /// Sessions emitted since the last call.
    fn take(&mut self) -> Yield {
        let y = Yield {
            sessions: self.out.len() as u64,
            complete: self.out.iter().filter(|s| !s.incomplete).count() as u64,
        };
        self.out.clear();
        y
    }
}

// The JSON report on stdout is this example's output: scripts/bench.sh reads it.
#[allow(clippy::print_stdout)]
fn main() -> anyhow::Result<()> {
    let mut seconds = 5.0f64;
    let mut phases = (true, true);
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                let v = args.next().context("--seconds needs a value")?;
                seconds = v.parse().with_context(|| format!("--seconds {v}"))?;
            }
            "--phase" => {
                phases = match args.next().as_deref() {
                    Some("records") => (true, false),
                    Some("pcap") => (false, true),
                    other => bail!("--phase records|pcap, not {other:?}"),
                };
            }
            _ => files.push(PathBuf::from(a)),
        }
    }
    if files.is_empty() || !(seconds > 0.0 && seconds.is_finite()) {
        bail!("usage: decode_bench [--seconds S] [--phase records|pcap] CAPTURE.pcap[ng]...");
    }
    let budget = Duration::from_secs_f64(seconds);
    let config = ReplayConfig {
        snaplen: PROBE_SNAPLEN,
        ..ReplayConfig::default()
    };

    // Untimed: captures into records, flow ids made unique over all files, framed and encoded
    // into batches as the probe's uplink sends them.
    let mut captures = Vec::new();
    let mut records: Vec<Record> = Vec::new();
    let mut packets = 0u64;
    for f in &files {
        let data = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let mut replay =
            replay_bytes(&data, &config).with_context(|| format!("replaying {}", f.display()))?;
        packets += replay.stats.packets;
        let base = max_flow_id(&records);
        let span = max_flow_id(&replay.records);
        for r in &mut replay.records {
            shift(r, base);
        }
        records.extend(replay.records);
        captures.push((data, base, span));
    }
    // One round's flow ids are 1..=span; round n uses n * span + 1 ..= (n + 1) * span.
    let span = max_flow_id(&records).max(1);
    let batch_items = DeliveryConfig::default().max_batch_items.max(1);
    // Kept as `Bytes`, as tonic hands the service a received message: payloads decode as slices
    // of it, not copies.
    let batches: Vec<Bytes> = records
        .chunks(batch_items)
        .zip(1u64..)
        .map(|(chunk, seq)| {
            RecordBatch {
                seq,
                records: chunk.to_vec(),
            }
            .encode_to_vec()
            .into()
        })
        .collect();

    let metrics = Arc::new(CollectorMetrics::new());
    let mut c = Collector {
        table: FlowTable::new(FlowTableConfig::default(), Arc::clone(&metrics)),
        now: Instant::now(),
        out: Vec::new(),
    };

    let records_round = |c: &mut Collector, round: u64| -> anyhow::Result<Yield> {
        for bytes in &batches {
            let batch = RecordBatch::decode(bytes.clone()).context("decoding a batch")?;
            c.ingest(batch.records.into_iter().map(|mut r| {
                shift(&mut r, round * span);
                r
            }));
        }
        Ok(c.take())
    };
    // Untimed first round: allocations, page faults, and the yield every round must match.
    let expected = records_round(&mut c, 0)?;
    if expected.complete == 0 {
        bail!("the captures yield no complete HTTP exchange on ports 80/8080");
    }
    let records_phase = if phases.0 {
        Some(timed(budget, expected, |round| {
            records_round(&mut c, round)
        })?)
    } else {
        None
    };

    let first_pcap_round = records_phase.as_ref().map_or(0, |p| p.rounds) + 1;
    let pcap_round = |round: u64| -> anyhow::Result<Yield> {
        let by = (first_pcap_round + round) * span;
        for (data, base, _) in &captures {
            let replay = replay_bytes(data, &config)?;
            c.ingest(replay.records.into_iter().map(|mut r| {
                shift(&mut r, base + by);
                r
            }));
        }
        Ok(c.take())
    };
    let pcap_phase = if phases.1 {
        Some(timed(budget, expected, pcap_round)?)
    } else {
        None
    };
    if !c.table.is_empty() {
        bail!(
            "{} flows still open after the last round: the captures' flows must all end",
            c.table.len()
        );
    }

    let report = serde_json::json!({
        "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "snaplen": PROBE_SNAPLEN,
        "packets_per_round": packets,
        "capture_bytes_per_round": captures.iter().map(|(d, _, _)| d.len()).sum::<usize>(),
        "records_per_round": records.len(),
        "batches_per_round": batches.len(),
        "batch_bytes_per_round": batches.iter().map(Bytes::len).sum::<usize>(),
        "sessions_per_round": expected.sessions,
        "complete_exchanges_per_round": expected.complete,
        "records": records_phase.as_ref().map(Phase::json),
        "pcap": pcap_phase.as_ref().map(Phase::json),
    });
    println!("{report}");
    Ok(())
}
