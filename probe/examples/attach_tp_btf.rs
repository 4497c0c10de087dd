//! Benchmark helper: loads a BPF object and attaches each of its `tp_btf` programs to a
//! tracepoint, then holds them until SIGTERM or SIGINT (the links go with the process).
//! `scripts/bench.sh` uses it to put empty programs on the socket point's hooks, as a baseline for
//! the probe's own (`bpftool` 7.1 cannot attach tracing programs by itself).
//!
//! Usage: `attach_tp_btf OBJECT.bpf.o PROGRAM=TRACEPOINT...`

use anyhow::{bail, Context, Result};
use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf};

// It tells scripts/bench.sh on stdout what it attached.
#[allow(clippy::print_stdout)]
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        bail!("usage: attach_tp_btf OBJECT.bpf.o PROGRAM=TRACEPOINT...");
    };
    let wanted: Vec<(String, String)> = args
        .map(|a| {
            a.split_once('=')
                .map(|(p, t)| (p.to_owned(), t.to_owned()))
                .with_context(|| format!("{a}: expected PROGRAM=TRACEPOINT"))
        })
        .collect::<Result<_>>()?;
    if wanted.is_empty() {
        bail!("no PROGRAM=TRACEPOINT given");
    }
    let object = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    let mut ebpf = Ebpf::load(&object).with_context(|| format!("loading {path}"))?;
    let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
    let mut links = Vec::new();
    for (name, tracepoint) in &wanted {
        let prog: &mut BtfTracePoint = ebpf
            .program_mut(name)
            .with_context(|| format!("{name}: not in {path}"))?
            .try_into()
            .with_context(|| format!("{name} is no tp_btf program"))?;
        prog.load(tracepoint, &btf)
            .with_context(|| format!("{name}: verifier"))?;
        links.push(prog.attach().with_context(|| format!("{name}: attach"))?);
        println!("attached {name} to {tracepoint}");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(links);
    Ok(())
}
