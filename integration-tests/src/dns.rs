//! DNS in test pods: dnsmasq answering one small zone, and a client sending real queries over UDP.

use std::process::Command;

use anyhow::{Context, Result};

use crate::{run_in, Pod, Proc};

/// The zone the test server answers for.
pub const ZONE: &str = "shop.test";
/// A name of the zone with an IPv4 and an IPv6 address.
pub const NAME: &str = "api.shop.test";
/// The IPv4 address of [`NAME`].
pub const NAME_V4: &str = "10.9.8.6";
/// The IPv6 address of [`NAME`].
pub const NAME_V6: &str = "fd00::6";
/// A name of the zone that does not exist (NXDOMAIN).
pub const MISSING: &str = "nowhere.shop.test";

/// dnsmasq in a pod on port 53 (UDP and TCP), answering for [`ZONE`] only; killed on drop.
pub struct Dnsmasq {
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq in `pod`, bound to the pod's IPv4 address.
    pub fn start(pod: &Pod) -> Result<Self> {
        let dir = tempfile::tempdir().context("dnsmasq dir")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pod.netns, "dnsmasq", "--no-daemon"])
            .args([
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--user=root",
            ])
            .arg(format!("--listen-address={}", pod.ipv4))
            .arg(format!(
                "--pid-file={}",
                dir.path().join("dnsmasq.pid").display()
            ))
            .args(["--port=53", &format!("--local=/{ZONE}/"), "--log-queries"])
            .arg(format!("--host-record={NAME},{NAME_V4},{NAME_V6}"));
        let proc = Proc::spawn(cmd, dir.path().join("dnsmasq.log"))
            .context("dnsmasq (package dnsmasq-base, scripts/install-deps.sh)")?;
        Ok(Self { proc, _dir: dir })
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.proc.running()
    }

    /// Sends `signal` and waits up to `timeout` for it to exit.
    pub fn stop(
        &mut self,
        signal: i32,
        timeout: std::time::Duration,
    ) -> Result<std::process::ExitStatus> {
        self.proc.stop(signal, timeout)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

/// Sends one query per type in `types` (by number: 1 A, 28 AAAA) for `name` from `client` to
/// `server` over UDP, all from one socket and all before reading any answer, as a resolver asking
/// for A and AAAA at once does; returns one line per answer, `<id> <rcode>`.
pub fn query(client: &Pod, server: &Pod, name: &str, types: &[&str]) -> Result<String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dns_query.py");
    let script = script.display().to_string();
    let server_ip = server.ipv4.to_string();
    let mut args = vec!["python3", script.as_str(), server_ip.as_str(), name];
    args.extend_from_slice(types);
    let out = run_in(&client.netns, &args)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
