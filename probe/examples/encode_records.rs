//! Microbenchmark of the probe's per-record user-space work: small HTTP/1 exchanges as the tc
//! programs send them (one EXCHANGE ring record per request and the start of its response, 4
//! keep-alive connections in turn) read from kernel-shaped bytes, assembled and encoded into
//! chunks of 256 records, two ways, alternated:
//!
//! - `records`: the assembler's records collected in a `Vec<Record>`, then each encoded by prost
//!   (its `encoded_len`, then `encode`) — the event loop's path before the hand-written encoder;
//! - `direct`: the assembler encodes its records as it makes them, `Message`s by hand
//!   (`ChunkBuilder` as its `RecordSink`) — the event loop's path now.
//!
//! Prints ns per exchange (min / median / max over the rounds) and checks that both ways make
//! the same bytes. Usage: `encode_records [EXCHANGES_PER_ROUND] [ROUNDS]`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use clovisor_probe::capture::abi;
use clovisor_probe::capture::assembler::{Assembler, AttachedInterface};
use clovisor_probe::capture::raw::{ConnectionKey, Event};
use clovisor_probe::clock::BootClock;
use clovisor_proto::capture::v1::Record;
use clovisor_proto::common::v1::PointKind;
use clovisor_proto::hops::ChunkBuilder;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 10.252.0.3\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 30 Nov 2026 16:00:00 GMT\r\n\
Content-Type: text/html\r\nContent-Length: 100\r\nLast-Modified: Mon, 30 Nov 2026 15:00:00 GMT\r\n\
Connection: keep-alive\r\nETag: \"65f1a2b3-64\"\r\nAccept-Ranges: bytes\r\n\r\n\
xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
const CONNECTIONS: u64 = 4;
const CHUNK_RECORDS: u64 = 256;
/// Ring records read per turn of the event loop (at this rate, a wakeup finds many).
const TURN: usize = 1024;

fn msg(index: u32, direction: u32, bytes: u64, at: u64) -> abi::clovisor_msg {
    let mut m = abi::clovisor_msg::new_zeroed();
    m.start_ns = at;
    m.last_ns = at + 20_000;
    m.bytes = bytes;
    m.packets = 1;
    m.tcp_seq = 1_000_000 + index * 400;
    m.index = index;
    m.direction = direction as u8;
    m.to_pod = u8::from(direction == abi::CLOVISOR_DIR_CLIENT_TO_SERVER);
    m
}

/// The EXCHANGE record of request `n` on connection `flow_id`, as the kernel writes it.
fn exchange(flow_id: u64, n: u32) -> Result<Vec<u8>> {
    let key = ConnectionKey {
        client: format!("10.252.0.2:{}", 40_000 + flow_id).parse()?,
        server: "10.252.0.3:80".parse()?,
        ifindex: 7,
    };
    let mut r = abi::clovisor_exchange::new_zeroed();
    r.hdr.kind = abi::CLOVISOR_EVENT_EXCHANGE;
    r.hdr.point = abi::CLOVISOR_POINT_TC as u8;
    r.hdr.protocol = 1;
    r.hdr.flow_id = flow_id;
    r.hdr.key = abi::clovisor_conn_key::read_from_bytes(&key.to_raw()[..])
        .map_err(|_| anyhow::anyhow!("connection key layout"))?;
    let at = 1_000_000_000 + u64::from(n) * 100_000;
    if n > 0 {
        r.hdr.flags = abi::CLOVISOR_EV_HAS_PREV as u8;
        r.before = msg(
            2 * n - 1,
            abi::CLOVISOR_DIR_SERVER_TO_CLIENT,
            340,
            at - 50_000,
        );
    }
    r.request = msg(2 * n, abi::CLOVISOR_DIR_CLIENT_TO_SERVER, 40, at);
    r.response = msg(
        2 * n + 1,
        abi::CLOVISOR_DIR_SERVER_TO_CLIENT,
        340,
        at + 30_000,
    );
    r.request_len = REQUEST.len() as u32;
    r.response_len = RESPONSE.len() as u32;
    let (q, p) = (REQUEST.len(), RESPONSE.len());
    r.payload[..q].copy_from_slice(REQUEST);
    r.payload[q..q + p].copy_from_slice(RESPONSE);
    let header = std::mem::offset_of!(abi::clovisor_exchange, payload);
    Ok(r.as_bytes()[..header + q + p].to_vec())
}

fn assembler() -> Assembler {
    let mut names = BTreeMap::new();
    names.insert(
        7,
        AttachedInterface {
            name: "vprof-s".to_owned(),
            kind: PointKind::Pod,
        },
    );
    Assembler::new(
        Duration::from_millis(200),
        16_384,
        "node".into(),
        BootClock::with_offset(1_700_000_000_000_000_000),
        Arc::new(RwLock::new(names)),
    )
}

/// The ring records of `exchanges` exchanges, connections in turn.
fn script(exchanges: u32) -> Result<Vec<Vec<u8>>> {
    (0..exchanges)
        .map(|i| exchange(u64::from(i) % CONNECTIONS + 1, i / CONNECTIONS as u32))
        .collect()
}

/// Bytes of output kept to compare the two paths.
const COMPARED: usize = 256 << 10;

/// Keeps the first [`COMPARED`] bytes of `chunk` in `sink`; the rest is dropped, as a chunk is
/// once its batch is acknowledged.
fn keep(sink: &mut Vec<u8>, chunk: &[u8]) {
    if sink.len() < COMPARED {
        sink.extend_from_slice(chunk);
    }
}

/// Before: records collected over a turn of the loop, then each encoded by prost.
fn run_records(ring: &[Vec<u8>], sink: &mut Vec<u8>) -> Result<Duration> {
    let mut a = assembler();
    let mut records: Vec<Record> = Vec::new();
    let mut buf = BytesMut::new();
    let mut in_chunk = 0;
    let now = Instant::now();
    let t = Instant::now();
    for turn in ring.chunks(TURN) {
        for raw in turn {
            let ev = Event::try_from(&raw[..]).context("a well-formed ring record")?;
            a.on_event(ev, now, &mut records);
        }
        for r in records.drain(..) {
            let len = prost::encoding::message::encoded_len(2, &r);
            if buf.capacity() - buf.len() < len {
                buf.reserve(len.max(64 << 10));
            }
            prost::encoding::message::encode(2, &r, &mut buf);
            in_chunk += 1;
            if in_chunk == CHUNK_RECORDS {
                in_chunk = 0;
                keep(sink, &buf.split().freeze());
            }
        }
    }
    let elapsed = t.elapsed();
    keep(sink, &buf.split());
    Ok(elapsed)
}

/// Now: records encoded as the assembler makes them.
fn run_direct(ring: &[Vec<u8>], sink: &mut Vec<u8>) -> Result<Duration> {
    let mut a = assembler();
    let mut chunks = ChunkBuilder::new();
    let now = Instant::now();
    let t = Instant::now();
    for turn in ring.chunks(TURN) {
        for raw in turn {
            let ev = Event::try_from(&raw[..]).context("a well-formed ring record")?;
            a.on_event(ev, now, &mut chunks);
            if chunks.len() >= CHUNK_RECORDS {
                keep(sink, chunks.take().body());
            }
        }
    }
    let elapsed = t.elapsed();
    keep(sink, chunks.take().body());
    Ok(elapsed)
}

fn stats(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "min {:.0} / median {:.0} / max {:.0} ns per exchange",
        v[0],
        v[v.len() / 2],
        v[v.len() - 1]
    )
}

// It reports its measurements on stdout.
#[allow(clippy::print_stdout)]
fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let exchanges: u32 = args.next().map_or(Ok(200_000), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(5), |a| a.parse())?;
    let ring = script(exchanges)?;
    let (mut before, mut now) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        before.push(run_records(&ring, &mut a)?.as_nanos() as f64 / f64::from(exchanges));
        now.push(run_direct(&ring, &mut b)?.as_nanos() as f64 / f64::from(exchanges));
        let n = a.len().min(b.len());
        if n < COMPARED || a[..n] != b[..n] {
            bail!("the two paths encoded different bytes");
        }
    }
    println!("records, then prost: {}", stats(before));
    println!("encoded directly:    {}", stats(now));
    Ok(())
}
