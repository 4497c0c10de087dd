//! The collector's local join alone, on a single host's views: per exchange one decoded view (the
//! client's socket) and three counters-only views (both veths and the server's socket), as
//! `clovisor all-in-one` tracing both pods sends them. Prints CPU time per exchange (this thread's,
//! `CLOCK_THREAD_CPUTIME_ID`) and checks that every exchange left as one session of four
//! observations.
//!
//! ```text
//! cargo run --release -p clovisor-collector --example local_join_bench -- --seconds 5
//! ```
//!
//! `--batches N` stops after N batches instead (a fixed amount of work, for `perf stat`).
//!
//! Batches hold 1024 exchanges (4096 views, the probe's batch size); the views of half the
//! exchanges come counters-only first, of the other half decoded first, and a quarter of each
//! batch's decoded views come one batch late (the two ring buffers drained apart), so every path
//! of the join is taken: merges within a batch, into a held view, and the other way round. Only
//! `LocalJoin::offer` is timed; the views are cloned from templates outside the timed part, and
//! the sessions handed on are only counted, not encoded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clovisor_collector::flows::{Collected, Origin, ProbeNames};
use clovisor_collector::local_join::LocalJoin;
use clovisor_proto::common::v1::{PointKind, Side};
use clovisor_proto::session::v1::{Counters, Endpoint, Http, Observation, Protocol, Session};
use clovisor_runtime::process_metrics::thread_cpu_time as thread_cpu;

/// The collector binary's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXCHANGES_PER_BATCH: u32 = 1024;

fn endpoint(last: u8, port: u32) -> Endpoint {
    Endpoint {
        ip: Bytes::from(vec![
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, last,
        ]),
        port,
        ..Endpoint::default()
    }
}

fn observation(kind: PointKind, side: Side, interface: &str, comm: &str, seq: u32) -> Observation {
    Observation {
        kind: kind as i32,
        side: side as i32,
        interface: interface.to_owned(),
        comm: comm.to_owned(),
        pid: if comm.is_empty() { 0 } else { 4242 },
        request_start_unix_nanos: 1_000,
        request_end_unix_nanos: 1_100,
        response_start_unix_nanos: 2_000,
        response_end_unix_nanos: 2_200,
        request_tcp_seq: seq,
        response_tcp_seq: seq.wrapping_add(7),
        request_bytes: 78,
        response_bytes: 850,
        request_packets: 1,
        response_packets: 1,
        ..Observation::default()
    }
}

/// One view of exchange `seq` on client port `port`, as the flow table builds it.
fn view(decoded: bool, o: Observation, port: u32, probe: &Arc<ProbeNames>) -> Collected {
    let session = Session {
        protocol: if decoded {
            Protocol::Http1 as i32
        } else {
            Protocol::Unspecified as i32
        },
        client: Some(endpoint(2, port)),
        server: Some(endpoint(3, 80)),
        start_unix_nanos: o.request_start_unix_nanos,
        end_unix_nanos: o.response_end_unix_nanos,
        bytes: Some(Counters {
            request: o.request_bytes,
            response: o.response_bytes,
        }),
        packets: Some(Counters {
            request: 1,
            response: 1,
        }),
        http: decoded.then(|| Http {
            method: "GET".into(),
            target: "/index.html".into(),
            host: "10.0.0.3".into(),
            user_agent: "wrk".into(),
            version: "1.1".into(),
            status_code: 200,
            reason: "OK".into(),
            response_content_length: 615,
            ..Http::default()
        }),
        observations: {
            let mut v = Vec::with_capacity(if decoded { 2 } else { 1 });
            v.push(o);
            v
        },
        ..Session::default()
    };
    Collected {
        session,
        client_meta: None,
        server_meta: None,
        origin: Some(Origin {
            id_prefix: Arc::from("probe/1f/"),
            index: 0,
            position: 0,
            probe: Arc::clone(probe),
        }),
    }
}

/// The four views of exchange `i` of a batch: decoded first, then the three counters-only views.
fn exchange_views(i: u32, probe: &Arc<ProbeNames>) -> [Collected; 4] {
    // Odd multiplier: a different sequence number for each of 2^32 exchanges (and 0, which a
    // socket reports when it could not read it, only for one of them far from here).
    let seq = i.wrapping_mul(997).wrapping_add(1);
    let port = 30_000 + i % EXCHANGES_PER_BATCH;
    [
        (PointKind::Socket, Side::Client, "", "wrk"),
        (PointKind::Pod, Side::Client, "veth-client", ""),
        (PointKind::Pod, Side::Server, "veth-server", ""),
        (PointKind::Socket, Side::Server, "", "nginx"),
    ]
    .map(|(kind, side, interface, comm)| {
        // The client's socket decodes; the other three points send counters only.
        let decoded = kind == PointKind::Socket && side == Side::Client;
        view(
            decoded,
            observation(kind, side, interface, comm, seq),
            port,
            probe,
        )
    })
}

/// Batch `n`'s views: this batch's exchanges (decoded views of every fourth one held back for the
/// next batch), with the previous batch's held-back decoded views at the end.
fn batch(n: u32, probe: &Arc<ProbeNames>, late: &mut Vec<Collected>) -> Vec<Collected> {
    let mut out = Vec::with_capacity(4 * EXCHANGES_PER_BATCH as usize + late.len());
    let mut next_late = Vec::new();
    for i in 0..EXCHANGES_PER_BATCH {
        // Distinct exchanges across batches: the sequence number's high bits count batches.
        let [decoded, a, b, c] = exchange_views(n.wrapping_mul(EXCHANGES_PER_BATCH) + i, probe);
        if i % 4 == 3 {
            next_late.push(decoded);
            out.extend([a, b, c]);
        } else if i % 2 == 0 {
            out.extend([decoded, a, b, c]);
        } else {
            out.extend([a, b, c, decoded]);
        }
    }
    out.append(late);
    *late = next_late;
    out
}

// The JSON line on stdout is this example's output.
#[allow(clippy::print_stdout)]
fn main() -> anyhow::Result<()> {
    let mut seconds = 5.0f64;
    let mut batches = u32::MAX;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .context("--seconds needs a value")?
                    .parse()
                    .context("--seconds")?
            }
            "--batches" => {
                batches = args
                    .next()
                    .context("--batches needs a value")?
                    .parse()
                    .context("--batches")?
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let probe = Arc::new(ProbeNames {
        id: "probe".into(),
        node: "node".into(),
    });
    let mut join = LocalJoin::new(Duration::from_millis(30));
    let mut late = Vec::new();
    let (mut cpu, mut exchanges, mut left, mut observations) = (Duration::ZERO, 0u64, 0u64, 0u64);
    let started = Instant::now();
    let mut n = 0u32;
    while started.elapsed().as_secs_f64() < seconds && n < batches {
        let views = batch(n, &probe, &mut late);
        n += 1;
        let t0 = thread_cpu()?;
        join.offer(views, Instant::now(), |s| {
            left += 1;
            observations += s.session.observations.len() as u64;
        });
        cpu += thread_cpu()? - t0;
        exchanges += u64::from(EXCHANGES_PER_BATCH);
    }
    // The last batch's held-back decoded views, then what is still held.
    join.offer(std::mem::take(&mut late), Instant::now(), |s| {
        left += 1;
        observations += s.session.observations.len() as u64;
    });
    join.flush(|s| {
        left += 1;
        observations += s.session.observations.len() as u64;
    });
    if left != exchanges || observations != 4 * exchanges {
        bail!("{exchanges} exchanges left as {left} sessions of {observations} observations");
    }
    println!(
        "{{\"exchanges\": {exchanges}, \"cpu_ns_per_exchange\": {:.1}}}",
        cpu.as_nanos() as f64 / exchanges as f64
    );
    Ok(())
}
