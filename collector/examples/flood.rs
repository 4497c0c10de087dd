//! Synthetic probe load for `scripts/bench.sh`'s memory section: speaks the real probe ->
//! collector protocol (`CaptureHop` over `CaptureConnector`, delivered by the shared `Sender`, as
//! the probe's uplink does) to a running `clovisor-collector`, and prints one JSON object once
//! every record it sent has been acknowledged.
//!
//! Two modes, each a distinct flow per id:
//!
//! - `exchanges`: per flow a `FlowStart`, a request `Message`, its response `Message` and a
//!   `FlowEnd`: the collector emits one session per flow and forgets the flow, so the
//!   correlator downstream ends up holding `--flows` exchanges in its join and store.
//! - `open`: per flow a `FlowStart` and a request `Message`, no response and no end: the
//!   collector holds `--flows` open flows, each with a request waiting for its response.
//!
//! Each message carries the flow's key, point and protocol as well as its `FlowStart` (a
//! collector reading either works). The collector acknowledges a batch only once the sessions it
//! produced were acknowledged downstream, so "all acknowledged" means they reached the correlator.
//!
//! A collector forgets the flows of the previous probe of a node when a new probe id greets it
//! for that node: give each run its own `--node`. Flows of a stream that ends stay in the
//! collector (until its idle timeout), so this exits once everything is acknowledged.
//!
//! ```text
//! cargo run --release -p clovisor-collector --example flood -- \
//!     --collector http://127.0.0.1:50051 --mode open --flows 100000 --node flood-open
//! ```
//!
//! Never part of a production binary: an example, built only by the benchmark.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clovisor_proto::capture::v1::{
    record, Direction, FlowEnd, FlowEndReason, FlowKey, FlowStart, Hello, Message,
    ObservationPoint, ProtocolHint, Record, Transport,
};
use clovisor_proto::common::v1::PointKind;
use clovisor_proto::delivery::{DeliveryConfig, DeliveryStats, Sender};
use clovisor_proto::hops::{CaptureConnector, CaptureHop, ChunkBuilder, RecordChunk};
use clovisor_proto::tls::ClientTransport;
use tokio::sync::mpsc;

/// Records per chunk handed to the sender, as the probe's uplink does (`CHUNK_RECORDS`).
const CHUNK_RECORDS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Exchanges,
    Open,
}

struct Args {
    collector: String,
    mode: Mode,
    flows: u64,
    node: String,
    /// Added to every flow id and address, so two runs never share a flow.
    base: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut collector = None;
    let mut mode = None;
    let mut flows = 100_000u64;
    let mut node = None;
    let mut base = 0u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--collector" => collector = Some(value()?),
            "--mode" => {
                mode = Some(match value()?.as_str() {
                    "exchanges" => Mode::Exchanges,
                    "open" => Mode::Open,
                    other => bail!("--mode exchanges|open, not {other:?}"),
                })
            }
            "--flows" => flows = value()?.parse().context("--flows")?,
            "--node" => node = Some(value()?),
            "--base" => base = value()?.parse().context("--base")?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    let usage =
        "usage: flood --collector URL --mode exchanges|open [--flows N] [--node NAME] [--base N]";
    let (Some(collector), Some(mode)) = (collector, mode) else {
        bail!(usage);
    };
    if flows == 0 || flows > 1 << 24 {
        bail!("--flows must be 1 to 16777216");
    }
    let node = node.unwrap_or_else(|| {
        format!(
            "flood-{}",
            if mode == Mode::Open {
                "open"
            } else {
                "exchanges"
            }
        )
    });
    Ok(Args {
        collector,
        mode,
        flows,
        node,
        base,
    })
}

/// The key of flow `n`: a client address and port of its own (10.64.0.0/10 for clients, 2^24
/// addresses, one port each) against one server, 10.255.255.1:80.
fn flow_key(n: u64) -> FlowKey {
    let client = Ipv4Addr::from(0x0a40_0000u32 | (n as u32 & 0x00ff_ffff));
    FlowKey {
        client_ip: client.octets().to_vec(),
        server_ip: Ipv4Addr::new(10, 255, 255, 1).octets().to_vec(),
        client_port: 1024 + (n % 60_000) as u32,
        server_port: 80,
        transport: Transport::Tcp as i32,
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The records of flow `n`.
fn flow_records(n: u64, mode: Mode, node: &str, out: &mut Vec<Record>) {
    let key = flow_key(n);
    let point = ObservationPoint {
        kind: PointKind::Pod as i32,
        ifindex: 1,
        interface: "flood0".into(),
        node: node.to_owned(),
        ..Default::default()
    };
    let flow_id = n + 1;
    let protocol = ProtocolHint::Http as i32;
    let t0 = now_ns();
    out.push(Record {
        kind: Some(record::Kind::FlowStart(FlowStart {
            flow_id,
            flow: Some(key.clone()),
            point: Some(point.clone()),
            protocol,
            counters_only: false,
            wire_point: None,
        })),
    });
    let request = format!(
        "GET /flood/{n} HTTP/1.1\r\nHost: flood.bench\r\nUser-Agent: clovisor-flood\r\nAccept: */*\r\n\r\n"
    )
    .into_bytes();
    out.push(Record {
        kind: Some(record::Kind::Message(Message {
            flow: Some(key.clone()),
            point: Some(point.clone()),
            flow_id,
            index: 0,
            direction: Direction::ClientToServer as i32,
            to_pod: true,
            start_unix_nanos: t0,
            end_unix_nanos: t0,
            tcp_seq: 1,
            bytes: request.len() as u64,
            packets: 1,
            retransmits: 0,
            payload: request.into(),
            protocol,
            partial: false,
            wire: None,
            segments: Vec::new(),
        })),
    });
    if mode == Mode::Open {
        return;
    }
    let response: &'static [u8] =
        b"HTTP/1.1 200 OK\r\nServer: flood\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
    out.push(Record {
        kind: Some(record::Kind::Message(Message {
            flow: Some(key.clone()),
            point: Some(point.clone()),
            flow_id,
            index: 1,
            direction: Direction::ServerToClient as i32,
            to_pod: false,
            start_unix_nanos: t0 + 20_000,
            end_unix_nanos: t0 + 20_000,
            tcp_seq: 1,
            bytes: response.len() as u64,
            packets: 1,
            retransmits: 0,
            payload: response.into(),
            protocol,
            partial: false,
            wire: None,
            segments: Vec::new(),
        })),
    });
    out.push(Record {
        kind: Some(record::Kind::FlowEnd(FlowEnd {
            flow: Some(key),
            point: Some(point),
            flow_id,
            reason: FlowEndReason::Fin as i32,
            unix_nanos: t0 + 40_000,
            messages: 2,
            srtt_us: 0,
            total_retransmits: 0,
        })),
    });
}

// The JSON report on stdout is this example's output: scripts/bench.sh reads it.
#[allow(clippy::print_stdout)]
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    // A load generator for this host's collector: plaintext to loopback only.
    let channel = ClientTransport::loopback().lazy_channel(&args.collector)?;
    let hello = Hello {
        probe_id: format!("flood-{:016x}", rand::random::<u64>()),
        node: args.node.clone(),
        snaplen: 1024,
    };
    let config = DeliveryConfig {
        // The collector acknowledges after its correlator did: give the tail time to drain.
        drain_timeout: Duration::from_secs(120),
        ..DeliveryConfig::default()
    };
    // No flow ends in `open` mode: the greeting's flow table need not remember them.
    let sender = Sender::new(
        CaptureHop::new(&hello, 1),
        CaptureConnector::new(channel),
        config,
    );
    let stats = sender.stats();
    let (tx, rx) = mpsc::channel::<RecordChunk>(64);
    let started = Instant::now();
    let run = tokio::spawn(sender.run(rx, std::future::pending()));
    // Encoded as the probe does: records into chunks as they are made.
    let mut records = Vec::with_capacity(CHUNK_RECORDS + 4);
    let mut chunks = ChunkBuilder::new();
    for n in args.base..args.base + args.flows {
        flow_records(n, args.mode, &args.node, &mut records);
        for r in records.drain(..) {
            chunks.push(&r);
        }
        if chunks.len() >= CHUNK_RECORDS as u64 {
            tx.send(chunks.take()).await.context("the sender stopped")?;
        }
    }
    if !chunks.is_empty() {
        tx.send(chunks.take()).await.context("the sender stopped")?;
    }
    drop(tx);
    run.await.context("the sender panicked")?;
    let get = DeliveryStats::get;
    let report = serde_json::json!({
        "mode": if args.mode == Mode::Open { "open" } else { "exchanges" },
        "flows": args.flows,
        "node": args.node,
        "probe_id": hello.probe_id,
        "records": get(&stats.items_received),
        "acked": get(&stats.items_acked),
        "dropped": get(&stats.items_dropped_shutdown),
        "batches": get(&stats.batches_sent),
        "reconnects": get(&stats.disconnects),
        "seconds": started.elapsed().as_secs_f64(),
    });
    println!("{report}");
    if get(&stats.items_acked) != get(&stats.items_received) {
        bail!("not every record was acknowledged: {report}");
    }
    Ok(())
}
