//! TLS between test pods: a self-signed certificate and stunnel tunnels, so that applications
//! speak plaintext over loopback while the veths carry only TLS (what the socket point is for).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{run, Pod, Proc};

/// A CA and the components' certificates in `dir` (`ca.crt`, and `probe/`, `collector/`,
/// `correlator/`, … each with `tls.crt`, `tls.key`, `ca.crt`), by `scripts/make-certs.sh`.
pub fn make_certs(dir: &Path) -> Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-certs.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(dir)
        .output()
        .context("running make-certs.sh")?;
    if !out.status.success() {
        bail!(
            "make-certs.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A self-signed certificate and its key (`cert.pem`, `key.pem` in `dir`), for one day.
pub fn self_signed(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=clovisor-test",
            "-keyout",
            &key.display().to_string(),
            "-out",
            &cert.display().to_string(),
        ],
    )?;
    Ok((cert, key))
}

/// stunnel in a pod, stopped on drop.
pub struct Stunnel {
    _proc: Proc,
}

impl Stunnel {
    /// Starts stunnel in `pod` with configuration `conf` (written to `dir/<name>.conf`, its log
    /// beside it).
    pub fn start(pod: &Pod, dir: &Path, name: &str, conf: &str) -> Result<Self> {
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, conf)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pod.netns, "stunnel4"])
            .arg(&path);
        let log = dir.join(format!("{name}.log"));
        let proc = Proc::spawn(cmd, log)?;
        Ok(Self { _proc: proc })
    }

    /// A TLS server in `pod` on `accept`, passing plaintext to `connect`.
    pub fn server(
        pod: &Pod,
        dir: &Path,
        (cert, key): (&Path, &Path),
        accept: &str,
        connect: &str,
    ) -> Result<Self> {
        let conf = format!(
            "foreground = yes\npid =\ncert = {}\nkey = {}\n[tunnel]\naccept = {accept}\nconnect = {connect}\n",
            cert.display(),
            key.display()
        );
        Self::start(pod, dir, "server", &conf)
    }

    /// A TLS client in `pod`: plaintext accepted on `accept`, TLS to `connect`.
    pub fn client(pod: &Pod, dir: &Path, accept: &str, connect: &str) -> Result<Self> {
        let conf = format!(
            "foreground = yes\npid =\n[tunnel]\nclient = yes\naccept = {accept}\nconnect = {connect}\n"
        );
        Self::start(pod, dir, "client", &conf)
    }
}
