//! `clovisor`: the all-in-one tracer for one Linux host (`all-in-one`), a look at what of ours
//! is attached to this host's interfaces (`inspect`), and queries of a running correlator's REST
//! API (`get sessions`, `get services`, `stats`, `observe`, `clear`; see `remote`), and the offline
//! decoding of a capture file (`decode`).

/// mimalloc: the pipeline allocates and frees a record, a batch and a session per message; with
/// glibc malloc that was over half of the all-in-one process's CPU under load (perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod all_in_one;
mod decode;
mod inspect;
mod remote;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "clovisor", version, about = "Clovisor-rs network tracer")]
struct Cli {
    #[command(flatten)]
    log: clovisor_runtime::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Probe, collector and correlator in one process, tracing network namespaces as pods.
    AllInOne(Box<all_in_one::Args>),
    /// List the BPF programs of ours attached on this host; optionally clean up after a crash.
    Inspect(inspect::Args),
    /// Show sessions or services of a running correlator.
    Get(remote::GetArgs),
    /// Request counts, error rates and latency of a running correlator, grouped.
    Stats(remote::StatsArgs),
    /// Follow a running correlator's sessions as they finish.
    Observe(remote::ObserveArgs),
    /// Empty a running correlator's sessions and analytics.
    Clear(remote::ClearArgs),
    /// Decode a pcap or pcapng capture offline (no root, no BPF): one JSON line per exchange.
    Decode(decode::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let done = match cli.command {
        Command::Get(args) => return remote::get(args),
        Command::Stats(args) => return remote::stats(args),
        Command::Observe(args) => return remote::observe(args),
        Command::Clear(args) => return remote::clear(args),
        Command::Decode(args) => return decode::run(&args),
        Command::Inspect(args) => {
            clovisor_runtime::init_logging(&cli.log);
            inspect::run(&args)
        }
        Command::AllInOne(args) => all_in_one::runtime_workers()
            .and_then(|workers| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
            })
            .and_then(|runtime| runtime.block_on(all_in_one::run(*args, &cli.log))),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}
