//! The tc programs alone, timed by the kernel: `scripts/bench.sh`'s section a runs this beside the
//! live figure, and prints one JSON object.
//!
//! The probe's own tc object is loaded as the probe loads it ([`Capture::load`], the default
//! configuration, port 80 traced as HTTP/1.x) but attached nowhere; each packet of keep-alive HTTP
//! exchanges is handed to its program through the kernel's `BPF_PROG_TEST_RUN`, on this one CPU,
//! and the kernel's timing of each run is summed: requests to the pod through `clovisor_to_pod`,
//! responses through `clovisor_from_pod`, as on a pod's host-side veth, round-robin over
//! `--connections` connections (a 100-byte request and a 300-byte response each, sequence numbers
//! moving on). Two arms, each its own loaded object:
//!
//! - `covered`: the veth is listed as covered by the socket point (the loopback device, which
//!   the runs pass), so its connections keep timings and counters only — the benchmark's pipeline;
//! - `copying`: not covered, so each exchange's record carries the first bytes of both messages —
//!   a pod whose processes the socket point does not trace;
//!
//! and, with `--empty OBJECT`, the same packets through that object's `bench_empty` program (an
//! empty classifier): the floor any program pays, the test run's own cost included.
//!
//! What this leaves out is what the live figure (kernel BPF run statistics under wrk) adds:
//! state shared with the other CPU (the connection entry, written by a request on one CPU and its
//! response on the other), caches that nginx and the kernel's network stack cleared meanwhile. Its
//! runs move with the machine's state as the live figure does: compare a changed program with the
//! unchanged one in alternating rounds of one run, not figures of two runs.
//!
//! The arms alternate round by round; the first round of each is not counted (it creates the
//! connections). Every exchange must leave exactly one record in the ring (drained untimed every
//! 256 exchanges), or the run fails: a path that dropped its records would read as cheaper.
//!
//! ```text
//! cargo run --release -p clovisor-probe --example tc_test_run -- --rounds 5 --exchanges 50000
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aya::programs::SchedClassifier;
use aya::Ebpf;
use clovisor_probe::capture::synthetic::KeepAlive;
use clovisor_probe::capture::test_run_classifier;
use clovisor_probe::hooks::pod_veth::{FROM_POD, TO_POD};
use clovisor_probe::hooks::tc_attach;
use clovisor_probe::{Capture, CaptureConfig};
use clovisor_proto::capture::v1::ProtocolHint;

const REQUEST_BYTES: u16 = 100;
const RESPONSE_BYTES: u16 = 300;
const SERVER_PORT: u16 = 80;
const DRAIN_EVERY: u64 = 256;

struct Args {
    rounds: u32,
    exchanges: u64,
    connections: u16,
    empty: Option<String>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        rounds: 5,
        exchanges: 50_000,
        connections: 64,
        empty: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => a.rounds = value()?.parse().context("--rounds")?,
            "--exchanges" => a.exchanges = value()?.parse().context("--exchanges")?,
            "--connections" => a.connections = value()?.parse().context("--connections")?,
            "--empty" => a.empty = Some(value()?),
            other => bail!("unknown argument {other}"),
        }
    }
    if a.rounds < 2 || a.exchanges == 0 || a.connections == 0 || a.connections > 4096 {
        bail!("--rounds ≥ 2, --exchanges ≥ 1 and --connections 1..=4096");
    }
    Ok(a)
}

/// What one round of one arm measured.
#[derive(Default, Clone, Copy)]
struct Round {
    request: Duration,
    response: Duration,
    exchanges: u64,
}

impl Round {
    fn ns_per_packet(&self) -> f64 {
        (self.request + self.response).as_nanos() as f64 / (2 * self.exchanges) as f64
    }
}

/// An arm: the probe's object (with its ring to drain), or an empty program.
enum Arm {
    Probe(Box<Capture>),
    Empty(Ebpf),
}

impl Arm {
    fn probe(covered: bool) -> Result<Self> {
        let mut capture =
            Capture::load(&CaptureConfig::default()).context("loading the tc object")?;
        capture.set_traced_ports(&BTreeMap::from([(SERVER_PORT, ProtocolHint::Http)]))?;
        if covered {
            capture.set_covered_interfaces(&BTreeSet::from([tc_attach::ifindex("lo")?]))?;
        }
        Ok(Self::Probe(Box::new(capture)))
    }

    fn empty(path: &str) -> Result<Self> {
        let object = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        let mut ebpf = Ebpf::load(&object).with_context(|| format!("loading {path}"))?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut("bench_empty")
            .with_context(|| format!("no bench_empty in {path}"))?
            .try_into()?;
        prog.load().context("bench_empty: verifier")?;
        Ok(Self::Empty(ebpf))
    }

    fn run(&self, program: &'static str, frame: &[u8]) -> Result<Duration> {
        match self {
            Self::Probe(c) => Ok(c.test_run(program, frame)?),
            Self::Empty(ebpf) => {
                let prog: &SchedClassifier = ebpf
                    .program("bench_empty")
                    .context("bench_empty")?
                    .try_into()?;
                Ok(test_run_classifier(prog, frame)?)
            }
        }
    }

    /// Records in the ring since the last drain (none for the empty program).
    fn drain(&mut self) -> Result<u64> {
        match self {
            Self::Probe(c) => Ok(c.drain_ring()?.len() as u64),
            Self::Empty(_) => Ok(0),
        }
    }

    fn round(&mut self, traffic: &mut KeepAlive, exchanges: u64) -> Result<Round> {
        let mut r = Round::default();
        let mut records = 0;
        let connections = traffic.connections() as u64;
        for i in 0..exchanges {
            let (request, response) = traffic.exchange(usize::try_from(i % connections)?);
            r.request += self.run(TO_POD, &request)?;
            r.response += self.run(FROM_POD, &response)?;
            r.exchanges += 1;
            if (i + 1) % DRAIN_EVERY == 0 {
                records += self.drain()?;
            }
        }
        records += self.drain()?;
        if matches!(self, Self::Probe(_)) && records != exchanges {
            bail!("{exchanges} exchanges left {records} records in the ring, not one each");
        }
        Ok(r)
    }
}

/// Each arm's own connections, from their first exchange on.
fn traffic(a: &Args) -> KeepAlive {
    KeepAlive::new(a.connections, SERVER_PORT, REQUEST_BYTES, RESPONSE_BYTES)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn summary(rounds: &[Round]) -> serde_json::Value {
    let per = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    serde_json::json!({
        "ns_per_packet": per(&|r| r.ns_per_packet()),
        "request_ns": per(&|r| r.request.as_nanos() as f64 / r.exchanges as f64),
        "response_ns": per(&|r| r.response.as_nanos() as f64 / r.exchanges as f64),
        "ns_per_packet_by_round": rounds.iter().map(Round::ns_per_packet).collect::<Vec<_>>(),
    })
}

// The JSON on stdout is this example's output.
#[allow(clippy::print_stdout)]
fn main() -> Result<()> {
    let a = args()?;
    let mut arms = vec![
        ("covered", Arm::probe(true)?, traffic(&a)),
        ("copying", Arm::probe(false)?, traffic(&a)),
    ];
    if let Some(path) = &a.empty {
        arms.push(("empty", Arm::empty(path)?, traffic(&a)));
    }
    let mut measured: Vec<Vec<Round>> = vec![Vec::new(); arms.len()];
    for round in 0..a.rounds {
        for (i, (_, arm, traffic)) in arms.iter_mut().enumerate() {
            let r = arm.round(traffic, a.exchanges)?;
            if round > 0 {
                measured[i].push(r);
            }
        }
    }
    let mut out = serde_json::Map::new();
    out.insert("rounds".into(), (a.rounds - 1).into());
    out.insert("exchanges_per_round".into(), a.exchanges.into());
    out.insert("connections".into(), a.connections.into());
    for ((name, _, _), rounds) in arms.iter().zip(&measured) {
        out.insert((*name).into(), summary(rounds));
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
