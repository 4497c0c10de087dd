//! `clovisor inspect`: what of ours is attached in this host's network namespace — the check an
//! operator runs after uninstalling, or after a crash. bpftool before 7.3 cannot show TCX links,
//! so this asks the kernel directly. `--cleanup` removes tc filters a crashed probe left behind
//! (TCX links need no cleanup: the kernel drops them with the process).

use anyhow::Context;
use clovisor_probe::hooks::tc_attach;

/// Flags of `clovisor inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Remove tc filters of ours left by a probe that crashed, then report.
    #[arg(long)]
    cleanup: bool,
}

/// Prints every interface carrying one of our programs; exits non-zero when some are found
/// after `--cleanup` was asked for.
// The report is the command's output (stdout), an interface it cannot read a note beside it.
#[allow(clippy::print_stdout, clippy::print_stderr)]
pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.cleanup {
        let removed = clovisor_probe::cleanup_leftovers().context("cleaning up")?;
        println!("removed leftover tc filters on {removed} interface hook(s)");
    }
    let mut found = 0;
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .context("listing interfaces")?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in names {
        match tc_attach::programs_on(&name) {
            Ok(progs) if !progs.is_empty() => {
                found += progs.len();
                println!("{name}\t{}", progs.join(" "));
            }
            Ok(_) => {}
            Err(e) => eprintln!("{name}: cannot inspect: {e}"),
        }
    }
    println!("{found} clovisor program attachment(s) in this network namespace");
    if args.cleanup && found > 0 {
        anyhow::bail!("{found} attachment(s) remain: a running probe holds them");
    }
    Ok(())
}
