//! Collector decode throughput for `scripts/bench.sh`, printed as one JSON object.
//!
//! The captures are replayed exactly as `clovisor decode` replays them
//! (`clovisor_collector::replay`: its default server ports unless `--port`, the protocol found from
//! the content, the probe's snaplen of 1024) into the records a probe would have sent, and
//! decoded by the flow table `clovisor decode` uses ([`Sessions`]: the collector's own
//! `FlowTable` with every decoder). Three phases, all on this one thread, timed in CPU time of the
//! thread (so "per CPU second" is "per core") and in wall time:
//!
//! - `records`: the collector's own work from what a probe sends. The records are framed untimed
//!   into encoded `RecordBatch`es of the probe's batch size. Each round then does what the
//!   collector's gRPC service does with every batch: read its framing and protobuf-decode its
//!   records one at a time (`server::inbound::Batch`, from `Bytes`, as tonic hands it over, so
//!   payloads are slices of it) and feed every record to the flow table
//!   (reassembly, protocol detection, decoding, request/response pairing, session building,
//!   metrics). Not included: encoding the sessions for the correlator.
//! - `pcap`: the same, but each round starts from the capture bytes (pcap parsing and TCP tracking
//!   into records, then the flow table): the input tshark gets, for the like-for-like comparison.
//! - `protocols`: the `records` phase once per protocol (`replay::by_protocol`: HTTP/1, HTTP/2,
//!   gRPC, DNS over UDP and over TCP, Redis, PostgreSQL, MySQL, Kafka), each on the records of the
//!   flows that decoded to it alone, so each protocol's rate is its own decoders' cost.
//!
//! Every round runs under fresh flow ids (an integer added to each record's flow id), so each round
//! is new traffic to the flow table, and must yield exactly the sessions of the first, untimed
//! round (per protocol: exactly that protocol's exchanges of it) — a round that decoded less would
//! stop the benchmark with an error.
//!
//! ```text
//! cargo run --release -p clovisor-collector --example decode_bench -- \
//!     --seconds 5 ../shared/testdata/pcap/http_espn.pcapng collector/testdata/db/redis.pcapng
//! ```
//!
//! Each phase (each protocol's) runs whole rounds until `--seconds` (default 5) of wall time have
//! passed, or exactly `--rounds N` rounds when given (for counting instructions under
//! `valgrind --tool=callgrind`, which are the same from run to run while seconds are not);
//! `--phase records`, `pcap` or `protocols` (repeatable) runs only those (for profiling, and
//! `scripts/bench.sh`).
//!
//! The allocator is the collector binary's (mimalloc), so the figures are the binary's.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clovisor_collector::replay::pcap::{replay_bytes, ReplayConfig};
use clovisor_collector::replay::{by_protocol, Sessions};
use clovisor_collector::server::inbound::Batch;
use clovisor_proto::capture::v1::{record, Record, RecordBatch};
use clovisor_proto::delivery::DeliveryConfig;
use clovisor_proto::session::v1::Session;
use clovisor_runtime::process_metrics::thread_cpu_time as thread_cpu;
use prost::Message as _;

/// The collector binary's allocator: per-exchange allocation is much of what is measured.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The probe's default snaplen (`clovisor-probe --snaplen`).
const PROBE_SNAPLEN: u32 = 1024;

/// Moves a record's flow into another id space.
fn shift(r: &mut Record, by: u64) {
    match r.kind.as_mut() {
        Some(record::Kind::Message(m)) => m.flow_id += by,
        Some(record::Kind::FlowEnd(e)) => e.flow_id += by,
        Some(record::Kind::FlowStart(f)) => f.flow_id += by,
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
            Some(record::Kind::FlowStart(f)) => Some(f.flow_id),
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

/// How long a phase runs: whole rounds until a wall-time budget has passed, or a fixed count.
#[derive(Clone, Copy)]
enum Budget {
    Wall(Duration),
    Rounds(u64),
}

impl Budget {
    /// Whether another round is due after `rounds` rounds that took `elapsed`.
    fn more(self, rounds: u64, elapsed: Duration) -> bool {
        match self {
            Budget::Wall(d) => rounds == 0 || elapsed < d,
            Budget::Rounds(n) => rounds < n,
        }
    }
}

/// Runs `round` (numbered from 1) until `budget` is spent; each must yield `expected`.
fn timed(
    budget: Budget,
    expected: Yield,
    mut round: impl FnMut(u64) -> anyhow::Result<Yield>,
) -> anyhow::Result<Phase> {
    let cpu0 = thread_cpu()?;
    let start = Instant::now();
    let mut rounds = 0u64;
    let mut total = Yield::default();
    while budget.more(rounds, start.elapsed()) {
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

/// The flow table `clovisor decode` replays into, and what it emitted since the last round.
struct Collector {
    table: Sessions,
    out: Vec<Session>,
}

impl Collector {
    fn ingest(&mut self, records: impl Iterator<Item = Record>) {
        let out = &mut self.out;
        for r in records {
            self.table.record(r, &mut |s| out.push(s));
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

/// Records framed and encoded into `RecordBatch`es as the probe's uplink sends them, kept as
/// `Bytes`, as tonic hands the service a received message (payloads decode as slices of it).
fn batches(records: &[Record]) -> Vec<Bytes> {
    let batch_items = DeliveryConfig::default().max_batch_items.max(1);
    records
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
        .collect()
}

/// The records of an encoded batch, decoded one at a time as the service decodes them.
fn decoded(bytes: &Bytes) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Record>>> {
    let batch = Batch::decode(bytes.clone()).context("decoding a batch's framing")?;
    Ok(batch.records().map(|r| r.context("decoding a record")))
}

/// One round of the `records` phase: every batch protobuf-decoded and its records fed to the
/// table as the service feeds them, under flow ids moved by `by`.
fn records_round(c: &mut Collector, batches: &[Bytes], by: u64) -> anyhow::Result<Yield> {
    for bytes in batches {
        let batch = Batch::decode(bytes.clone()).context("decoding a batch's framing")?;
        let out = &mut c.out;
        c.table
            .batch(&batch, |r| shift(r, by), &mut |s| out.push(s))
            .context("decoding a record")?;
    }
    Ok(c.take())
}

/// One protocol's row: its exchanges per round, and its records phase run alone.
fn protocol_json(count: by_protocol::Count, phase: Option<&Phase>) -> serde_json::Value {
    serde_json::json!({
        "exchanges_per_round": count.exchanges,
        "complete_exchanges_per_round": count.complete,
        "records": phase.map(Phase::json),
    })
}

// The JSON report on stdout is this example's output: scripts/bench.sh reads it.
#[allow(clippy::print_stdout)]
fn main() -> anyhow::Result<()> {
    let mut seconds = 5.0f64;
    let mut fixed_rounds: Option<u64> = None;
    // The phases asked for by `--phase` (repeatable); all three when none is.
    let mut asked: Option<(bool, bool, bool)> = None;
    let mut ports: Vec<u16> = Vec::new();
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                let v = args.next().context("--seconds needs a value")?;
                seconds = v.parse().with_context(|| format!("--seconds {v}"))?;
            }
            "--rounds" => {
                let v = args.next().context("--rounds needs a value")?;
                let n: u64 = v.parse().with_context(|| format!("--rounds {v}"))?;
                if n == 0 {
                    bail!("--rounds must be at least 1");
                }
                fixed_rounds = Some(n);
            }
            "--port" | "-p" => {
                let v = args.next().context("--port needs a value")?;
                for p in v.split(',') {
                    ports.push(p.parse().with_context(|| format!("--port {p}"))?);
                }
            }
            "--phase" => {
                let p = asked.get_or_insert((false, false, false));
                match args.next().as_deref() {
                    Some("records") => p.0 = true,
                    Some("pcap") => p.1 = true,
                    Some("protocols") => p.2 = true,
                    other => bail!("--phase records|pcap|protocols, not {other:?}"),
                }
            }
            _ => files.push(PathBuf::from(a)),
        }
    }
    if files.is_empty() || !(seconds > 0.0 && seconds.is_finite()) {
        bail!(
            "usage: decode_bench [--seconds S | --rounds N] [--port P[,P...]] [--phase records|pcap|protocols] \
             CAPTURE.pcap[ng]..."
        );
    }
    let phases = asked.unwrap_or((true, true, true));
    let budget = match fixed_rounds {
        Some(n) => Budget::Rounds(n),
        None => Budget::Wall(Duration::from_secs_f64(seconds)),
    };
    // As `clovisor decode` replays (its default ports unless --port, content detection).
    let config = ReplayConfig::decode(&ports, PROBE_SNAPLEN, "bench".to_owned());

    // Untimed: captures into records, flow ids made unique over all files.
    let mut captures = Vec::new();
    let mut records: Vec<Record> = Vec::new();
    let mut packets = 0u64;
    for f in &files {
        let data = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let mut replay =
            replay_bytes(&data, &config).with_context(|| format!("replaying {}", f.display()))?;
        packets += replay.stats.packets;
        let base = max_flow_id(&records);
        for r in &mut replay.records {
            shift(r, base);
        }
        records.extend(replay.records);
        captures.push((data, base));
    }
    // One round's flow ids are 1..=span; round n uses n * span + 1 ..= (n + 1) * span.
    let span = max_flow_id(&records).max(1);
    let all_batches = batches(&records);

    let mut c = Collector {
        table: Sessions::new(),
        out: Vec::new(),
    };
    // Untimed first round: allocations, page faults, the yield every round must match, and
    // which protocol each flow decoded to.
    let first = {
        let mut sessions = Vec::new();
        for bytes in &all_batches {
            let out = &mut sessions;
            for r in decoded(bytes)? {
                c.table.record(r?, &mut |s| out.push(s));
            }
        }
        sessions
    };
    let expected = Yield {
        sessions: first.len() as u64,
        complete: first.iter().filter(|s| !s.incomplete).count() as u64,
    };
    if expected.complete == 0 {
        bail!("the captures yield no complete exchange");
    }
    let counts = by_protocol::count(&first);
    let mut next_round = 1u64;

    let records_phase = if phases.0 {
        let p = timed(budget, expected, |round| {
            records_round(&mut c, &all_batches, (next_round + round) * span)
        })?;
        next_round += p.rounds + 1;
        Some(p)
    } else {
        None
    };

    let pcap_phase = if phases.1 {
        let first_round = next_round;
        let p = timed(budget, expected, |round| {
            let by = (first_round + round) * span;
            for (data, base) in &captures {
                let replay = replay_bytes(data, &config)?;
                c.ingest(replay.records.into_iter().map(|mut r| {
                    shift(&mut r, base + by);
                    r
                }));
            }
            Ok(c.take())
        })?;
        next_round += p.rounds + 1;
        Some(p)
    } else {
        None
    };

    // Each protocol alone: the records of the flows it decoded, each round yielding exactly that
    // protocol's exchanges of the first round.
    let mut protocols = serde_json::Map::new();
    for (name, group) in by_protocol::split(records.clone(), &first) {
        let want = counts.get(name).copied().unwrap_or_default();
        let group_batches = batches(&group);
        let mut rows = std::collections::BTreeMap::new();
        let mut got = Yield::default();
        for bytes in &group_batches {
            let out = &mut c.out;
            for r in decoded(bytes)? {
                let mut r = r?;
                shift(&mut r, next_round * span);
                c.table.record(r, &mut |s| out.push(s));
            }
        }
        for (row, n) in by_protocol::count(&c.out) {
            rows.insert(row, n);
        }
        got.sessions = c.out.len() as u64;
        got.complete = c.out.iter().filter(|s| !s.incomplete).count() as u64;
        c.out.clear();
        next_round += 1;
        let alone = rows.get(name).copied().unwrap_or_default();
        if alone != want || rows.keys().any(|r| *r != name) {
            bail!("the flows of {name} replayed alone yielded {rows:?}, not {want:?} of {name}");
        }
        let phase = if phases.2 && got.complete > 0 {
            let first_round = next_round;
            let p = timed(budget, got, |round| {
                records_round(&mut c, &group_batches, (first_round + round) * span)
            })?;
            next_round += p.rounds + 1;
            Some(p)
        } else {
            None
        };
        let mut row = protocol_json(want, phase.as_ref());
        if let Some(o) = row.as_object_mut() {
            o.insert("records_per_round".to_owned(), group.len().into());
        }
        protocols.insert(name.to_owned(), row);
    }
    if c.table.open_flows() != 0 {
        bail!(
            "{} flows still open after the last round: the captures' flows must all end",
            c.table.open_flows()
        );
    }

    let report = serde_json::json!({
        "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "ports": config.traced_ports,
        "snaplen": PROBE_SNAPLEN,
        "packets_per_round": packets,
        "capture_bytes_per_round": captures.iter().map(|(d, _)| d.len()).sum::<usize>(),
        "records_per_round": records.len(),
        "batches_per_round": all_batches.len(),
        "batch_bytes_per_round": all_batches.iter().map(Bytes::len).sum::<usize>(),
        "sessions_per_round": expected.sessions,
        "complete_exchanges_per_round": expected.complete,
        "records": records_phase.as_ref().map(Phase::json),
        "pcap": pcap_phase.as_ref().map(Phase::json),
        "protocols": protocols,
    });
    println!("{report}");
    Ok(())
}
