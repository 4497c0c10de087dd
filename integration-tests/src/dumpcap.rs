//! dumpcap (package tshark) writing every packet of an interface to a capture file: the same
//! traffic a probe traces, for the replay and the decoders to read offline.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::{wait_for, Proc};

/// dumpcap writing every packet of an interface to a file until stopped.
pub struct Dumpcap {
    proc: Proc,
}

impl Dumpcap {
    /// Starts capturing `ifname` into `file` (pcapng), its output in `log`; returns once it
    /// captures.
    pub fn start(ifname: &str, file: &Path, log: &Path) -> Result<Self> {
        let mut cmd = Command::new("dumpcap");
        cmd.args(["-i", ifname, "-q", "-w"]).arg(file);
        let mut proc = Proc::spawn(cmd, log.to_owned())?;
        let ready = wait_for("dumpcap to capture", Duration::from_secs(10), || {
            if !proc.running() {
                bail!("dumpcap exited:\n{}", proc.log_text());
            }
            Ok(proc.log_text().contains("Capturing on"))
        });
        if let Err(e) = ready {
            bail!(
                "{e:#}\ndumpcap (package tshark, scripts/install-deps.sh) log:\n{}",
                proc.log_text()
            );
        }
        Ok(Self { proc })
    }

    /// Stops it (SIGINT: it writes out what it holds) and waits for it.
    pub fn stop(mut self) -> Result<()> {
        let status = self.proc.stop(2, Duration::from_secs(10))?;
        if !status.success() {
            bail!("dumpcap exited with {status}:\n{}", self.proc.log_text());
        }
        Ok(())
    }
}
