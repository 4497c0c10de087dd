//! `clovisor`: the all-in-one tracer for one Linux host (`all-in-one`), and a look at what of
//! ours is attached to this host's interfaces (`inspect`). Sessions of a running correlator are
//! queried over its REST API (`GET /api/v1/sessions`), not through this command.

/// mimalloc: the pipeline allocates and frees a record, a batch and a session per message; with
/// glibc malloc that was over half of the all-in-one process's CPU under load (perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod all_in_one;
mod inspect;

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect(args) => {
            clovisor_runtime::init_logging(&cli.log);
            inspect::run(&args)
        }
        Command::AllInOne(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(all_in_one::run(*args, &cli.log))
        }
    }
}
