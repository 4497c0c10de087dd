//! The example analyzer's line protocol (`analyzers/line/`) between two pods: a real server
//! (`scripts/line_proto.py serve`) and a client that keeps one connection and asks at a pace.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{run_in, wait_for, Pod, Proc};

/// Port the example analyzer claims (`clovisor_port` in `analyzers/line/line.wat`).
pub const LINE_PORT: u16 = 7070;

fn script() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/line_proto.py")
        .display()
        .to_string()
}

/// The example analyzer's module in the repository (`analyzers/line/line.wat`).
pub fn example_analyzer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../analyzers/line/line.wat")
}

/// The line server in a pod on [`LINE_PORT`]. Killed on drop.
pub struct LineServer {
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl LineServer {
    /// Starts it in `pod` and waits until it answers.
    pub fn start(pod: &Pod) -> Result<Self> {
        let dir = tempfile::tempdir().context("line server dir")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pod.netns, "python3", &script(), "serve"])
            .arg(LINE_PORT.to_string());
        let proc = Proc::spawn(cmd, dir.path().join("line.log"))?;
        let up = wait_for("the line server to answer", Duration::from_secs(10), || {
            Ok(ask(pod, pod, 1, 0, "up").is_ok())
        });
        if let Err(e) = up {
            bail!("{e:#}\nserver log:\n{}", proc.log_text());
        }
        Ok(Self { proc, _dir: dir })
    }

    /// The server's log.
    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

/// From `client`, one connection to the line server in `server`: `count` requests
/// `FETCH <prefix>-<i>`, each after the previous answer and `interval_ms`; the answers.
pub fn ask(
    client: &Pod,
    server: &Pod,
    count: u32,
    interval_ms: u32,
    prefix: &str,
) -> Result<Vec<String>> {
    let out = run_in(
        &client.netns,
        &[
            "python3",
            &script(),
            "ask",
            &server.ipv4.to_string(),
            &LINE_PORT.to_string(),
            &count.to_string(),
            &interval_ms.to_string(),
            prefix,
        ],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// [`ask`] in the background: the client process, killed on drop; its answers are in its log.
pub fn ask_in_background(
    client: &Pod,
    server: &Pod,
    count: u32,
    interval_ms: u32,
    prefix: &str,
    log: PathBuf,
) -> Result<Proc> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &client.netns, "python3", &script(), "ask"])
        .arg(server.ipv4.to_string())
        .arg(LINE_PORT.to_string())
        .arg(count.to_string())
        .arg(interval_ms.to_string())
        .arg(prefix);
    Proc::spawn(cmd, log)
}
