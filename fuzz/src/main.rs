//! `clovisor-fuzz`: runs the stable-Rust mutation fuzzer ([`clovisor_fuzz`]) on one target or
//! all, for a time or a number of inputs, and reports inputs per second (and, built with
//! `scripts/fuzz-coverage.sh`, the edges reached). A panic's input is written to `--crashes`
//! and the run exits non-zero.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use clovisor_fuzz::{fuzz_with, Feedback, Target};

#[derive(Debug, Parser)]
#[command(name = "clovisor-fuzz", about)]
struct Args {
    /// Targets to run (all when none is named).
    #[arg(value_enum)]
    targets: Vec<Target>,
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Inputs per target at most.
    #[arg(long, default_value_t = u64::MAX)]
    inputs: u64,
    /// Seed of the random mutations (a run is reproducible from it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where a panicking input is written.
    #[arg(long, default_value = "fuzz-crashes")]
    crashes: PathBuf,
    /// Ignore coverage when choosing inputs (an instrumented build still measures it): the
    /// coverage-free random walk, to compare with.
    #[arg(long)]
    no_feedback: bool,
}

#[allow(clippy::print_stdout, reason = "the report is the command's output")]
fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let targets = if args.targets.is_empty() {
        Target::ALL.to_vec()
    } else {
        args.targets.clone()
    };
    let mut total = 0u64;
    for target in targets {
        let feedback = if args.no_feedback {
            Feedback::None
        } else {
            Feedback::Coverage
        };
        let report = fuzz_with(
            target,
            args.seed,
            args.inputs,
            Duration::from_secs(args.seconds),
            feedback,
        );
        total += report.inputs;
        let coverage = match report.edges {
            Some((edges, counters)) => format!(
                ", {edges} of {counters} edges, {} inputs kept ({})",
                report.kept,
                if args.no_feedback {
                    "no feedback"
                } else {
                    "coverage-guided"
                }
            ),
            None => ", no coverage (not built with scripts/fuzz-coverage.sh)".to_owned(),
        };
        println!(
            "{target:?}: {} inputs in {:.1} s, {:.0} inputs/s{coverage}",
            report.inputs,
            report.elapsed.as_secs_f64(),
            report.rate()
        );
        if let Some((input, message)) = report.crash {
            std::fs::create_dir_all(&args.crashes)
                .with_context(|| format!("creating {}", args.crashes.display()))?;
            let path = args
                .crashes
                .join(format!("{target:?}-seed{}.bin", args.seed).to_lowercase());
            std::fs::write(&path, &input)?;
            bail!(
                "{target:?} panicked: {message}; input ({} bytes) written to {}",
                input.len(),
                path.display()
            );
        }
    }
    println!("total: {total} inputs, no panic");
    Ok(())
}
