//! Database servers in a pod and their command-line clients in another: real `redis-server`
//! and `redis-cli`, PostgreSQL (`initdb` / `pg_ctl` as the `postgres` user, which the Debian
//! package creates) and `psql` / `pgbench`. Each server keeps its files in a temporary directory
//! and is stopped on drop, also when the test fails.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{run, run_in, wait_for, Pod, Proc};

/// Port the servers listen on in their pod.
pub const REDIS_PORT: u16 = 6379;
/// Port PostgreSQL listens on in its pod.
pub const POSTGRES_PORT: u16 = 5432;

/// `redis-server` in a pod on [`REDIS_PORT`], persistence off. Killed on drop.
pub struct RedisServer {
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts it in `pod` and waits until it answers.
    pub fn start(pod: &Pod) -> Result<Self> {
        let dir = tempfile::tempdir().context("redis work dir")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pod.netns, "redis-server"])
            .args(["--port", &REDIS_PORT.to_string(), "--bind", "0.0.0.0"])
            // Clients come from another pod: no password, so protected mode would refuse them.
            .args(["--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path());
        let proc = Proc::spawn(cmd, dir.path().join("redis.log"))?;
        let mut answer = String::new();
        let up = wait_for("redis-server to answer", Duration::from_secs(10), || {
            answer = redis_cli(pod, pod, &["PING"]).unwrap_or_else(|e| format!("{e:#}"));
            Ok(answer.trim() == "PONG")
        });
        if let Err(e) = up {
            bail!(
                "{e:#}: last answer {answer:?}\nserver log:\n{}",
                proc.log_text()
            );
        }
        Ok(Self {
            _proc: proc,
            _dir: dir,
        })
    }
}

/// Runs `redis-cli` in `client` against the server in `server`; its output.
pub fn redis_cli(client: &Pod, server: &Pod, args: &[&str]) -> Result<String> {
    let host = server.ipv4.to_string();
    let port = REDIS_PORT.to_string();
    let mut all = vec!["redis-cli", "-h", &host, "-p", &port];
    all.extend(args);
    let out = run_in(&client.netns, &all)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The directory of the newest PostgreSQL server binaries installed (`/usr/lib/postgresql/<n>/bin`).
fn postgres_bin() -> Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (scripts/install-deps.sh installs it)")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!("no pg_ctl under /usr/lib/postgresql/*/bin"),
    }
}

/// A PostgreSQL cluster in a temporary directory, run by the `postgres` user in a pod on
/// [`POSTGRES_PORT`], trust authentication. Stopped (immediate mode) on drop.
pub struct Postgres {
    netns: String,
    pg_ctl: PathBuf,
    data: PathBuf,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// Creates the cluster, starts it in `pod` and waits until it accepts connections.
    pub fn start(pod: &Pod) -> Result<Self> {
        let bin = postgres_bin()?;
        let dir = tempfile::tempdir().context("postgres work dir")?;
        let root = dir.path().display().to_string();
        run("chown", &["postgres:postgres", &root])?;
        let data = dir.path().join("data");
        let data_arg = data.display().to_string();
        let initdb = bin.join("initdb").display().to_string();
        run(
            "runuser",
            &[
                "-u", "postgres", "--", &initdb, "-D", &data_arg, "-U", "postgres",
            ],
        )?;
        run(
            "sh",
            &[
                "-c",
                &format!("echo 'host all all 0.0.0.0/0 trust' > {data_arg}/pg_hba.conf"),
            ],
        )?;
        let pg_ctl = bin.join("pg_ctl");
        let server = Self {
            netns: pod.netns.clone(),
            pg_ctl,
            data,
            dir,
        };
        let options = format!(
            "-p {POSTGRES_PORT} -c listen_addresses=* -k {root} -c fsync=off -c shared_buffers=16MB"
        );
        let log = format!("{root}/postgres.log");
        let pg_ctl = server.pg_ctl.display().to_string();
        let started = run_in(
            &server.netns,
            &[
                "runuser", "-u", "postgres", "--", &pg_ctl, "-D", &data_arg, "-l", &log, "-o",
                &options, "-w", "-t", "30", "start",
            ],
        );
        if let Err(e) = started {
            bail!("{e:#}\nserver log:\n{}", server.log_text());
        }
        Ok(server)
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "runuser",
                "-u",
                "postgres",
                "--",
            ])
            .arg(&self.pg_ctl)
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// Runs `psql` in `client` against the server in `server` as `postgres` on database
/// `postgres`, with `args` (e.g. `-c`, a statement); its output.
pub fn psql(client: &Pod, server: &Pod, args: &[&str]) -> Result<String> {
    let host = server.ipv4.to_string();
    let port = POSTGRES_PORT.to_string();
    let mut all = vec![
        "env",
        "PGCONNECT_TIMEOUT=5",
        "psql",
        "-X",
        "-h",
        &host,
        "-p",
        &port,
        "-U",
        "postgres",
        "-d",
        "postgres",
    ];
    all.extend(args);
    let out = run_in(&client.netns, &all)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs the pgbench script `script` once (one transaction) from `client` in prepared mode
/// (the extended query protocol: Parse, Bind, Execute, Sync); its output.
pub fn pgbench_prepared(client: &Pod, server: &Pod, script: &str) -> Result<String> {
    let bin = postgres_bin()?;
    let file = tempfile::NamedTempFile::new().context("pgbench script")?;
    std::fs::write(file.path(), script)?;
    let host = server.ipv4.to_string();
    let port = POSTGRES_PORT.to_string();
    let pgbench = bin.join("pgbench").display().to_string();
    let path = file.path().display().to_string();
    let out = run_in(
        &client.netns,
        &[
            &pgbench, "-h", &host, "-p", &port, "-U", "postgres", "-n", "-t", "1", "-M",
            "prepared", "-f", &path, "postgres",
        ],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
