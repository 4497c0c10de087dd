//! Kafka in test pods: a broker in one (Tansu, a Kafka-compatible broker, memory storage;
//! Apache Kafka's jars are not installable here, see scripts/install-deps.sh) and kafka-python
//! (Debian `python3-kafka`) in another, running `scripts/kafka_client.py`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{run_in, wait_for, Pod, Proc};

/// Port the broker listens on in its pod.
pub const KAFKA_PORT: u16 = 9092;

/// Where scripts/install-deps.sh installs the broker.
pub const TANSU: &str = "/usr/local/lib/clovisor/tansu";

/// The broker in a pod on [`KAFKA_PORT`], advertising the pod's address. Killed on drop.
pub struct Broker {
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts it in `pod` and waits until it listens.
    pub fn start(pod: &Pod) -> Result<Self> {
        let dir = tempfile::tempdir().context("broker dir")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pod.netns, TANSU, "broker"])
            .arg(format!("--listener-url=tcp://0.0.0.0:{KAFKA_PORT}"))
            .arg(format!(
                "--advertised-listener-url=tcp://{}:{KAFKA_PORT}",
                pod.ipv4
            ))
            .arg("--storage-engine=memory://tansu/");
        let mut proc = Proc::spawn(cmd, dir.path().join("broker.log"))
            .context("the Kafka broker (scripts/install-deps.sh installs it)")?;
        let listening = format!("{}:{KAFKA_PORT}", pod.ipv4);
        let up = wait_for(
            "the Kafka broker to listen",
            Duration::from_secs(15),
            || {
                if !proc.running() {
                    bail!("the broker exited:\n{}", proc.log_text());
                }
                let out = run_in(&pod.netns, &["ss", "-ltnH"])?;
                Ok(String::from_utf8_lossy(&out.stdout).contains(&format!(":{KAFKA_PORT} ")))
            },
        );
        if let Err(e) = up {
            bail!("{e:#} ({listening})\nlog:\n{}", proc.log_text());
        }
        Ok(Self { proc, _dir: dir })
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

/// Runs `scripts/kafka_client.py` in `client` against the broker in `server` with `topic`:
/// creates it, produces a record, reads it back, creates it again (failing); returns its
/// output, one `<step> ok|<error>` line per step.
pub fn client_session(client: &Pod, server: &Pod, topic: &str) -> Result<String> {
    let script: PathBuf =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka_client.py");
    let script = script.display().to_string();
    let broker = format!("{}:{KAFKA_PORT}", server.ipv4);
    // Debian's python3, where python3-kafka is installed.
    let out = run_in(
        &client.netns,
        &["timeout", "60", "/usr/bin/python3", &script, &broker, topic],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
