//! Database servers in a pod and their command-line clients in another: real `redis-server`
//! and `redis-cli`, PostgreSQL (`initdb` / `pg_ctl` as the `postgres` user, which the Debian
//! package creates) and `psql` / `pgbench`, MariaDB (`mariadb-install-db`, `mariadbd` as the
//! `mysql` user) and the `mariadb` client. Each server keeps its files in a temporary directory
//! and is stopped on drop, also when the test fails.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{run, run_in, wait_for, AllInOne, Pod, Proc};

/// Port the servers listen on in their pod.
pub const REDIS_PORT: u16 = 6379;
/// Port PostgreSQL listens on in its pod.
pub const POSTGRES_PORT: u16 = 5432;
/// Port MariaDB listens on in its pod.
pub const MYSQL_PORT: u16 = 3306;
/// The MariaDB user the tests log in as (password [`MYSQL_PASSWORD`]), and its database.
pub const MYSQL_USER: &str = "app";
/// [`MYSQL_USER`]'s password.
pub const MYSQL_PASSWORD: &str = "app-e2e-pw";
/// The database [`Mariadb::start`] creates.
pub const MYSQL_DATABASE: &str = "shop";

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

/// The server's InnoDB sizes, the same for the data directory's creation and the server: a
/// 4 MiB redo log instead of the default 96 MiB, which `mariadb-install-db` preallocates (on a
/// machine whose disk is nearly full it failed with ENOSPC), and a 16 MiB buffer pool.
const MARIADB_INNODB: [&str; 2] = ["--innodb-log-file-size=4M", "--innodb-buffer-pool-size=16M"];

/// `mariadbd` in a pod on [`MYSQL_PORT`], its data in a temporary directory, with a user
/// [`MYSQL_USER`] (password authentication) and a database [`MYSQL_DATABASE`]. Killed on drop.
pub struct Mariadb {
    proc: Proc,
    dir: tempfile::TempDir,
}

impl Mariadb {
    /// Creates the data directory, starts the server in `pod` and creates the user.
    pub fn start(pod: &Pod) -> Result<Self> {
        let dir = tempfile::tempdir().context("mariadb work dir")?;
        let root = dir.path().display().to_string();
        run("chown", &["mysql:mysql", &root])?;
        let data = format!("{root}/data");
        run(
            "mariadb-install-db",
            &[
                "--user=mysql",
                &format!("--datadir={data}"),
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                MARIADB_INNODB[0],
                MARIADB_INNODB[1],
            ],
        )?;
        let socket = format!("{root}/mysqld.sock");
        let mut cmd = Command::new("ip");
        // `ip netns exec` execs mariadbd, which drops to `mysql` itself: the pid is the server's.
        cmd.args([
            "netns",
            "exec",
            &pod.netns,
            "mariadbd",
            "--no-defaults",
            "--user=mysql",
        ])
        .arg(format!("--datadir={data}"))
        .arg(format!("--socket={socket}"))
        .arg(format!("--pid-file={root}/mysqld.pid"))
        .args([&format!("--port={MYSQL_PORT}"), "--bind-address=0.0.0.0"])
        .arg("--skip-name-resolve")
        .args(MARIADB_INNODB);
        let proc = Proc::spawn(cmd, dir.path().join("mariadbd.log"))?;
        let server = Self { proc, dir };
        let setup = format!(
            "CREATE USER '{MYSQL_USER}'@'%' IDENTIFIED BY '{MYSQL_PASSWORD}'; \
             GRANT ALL ON *.* TO '{MYSQL_USER}'@'%'; CREATE DATABASE {MYSQL_DATABASE};"
        );
        let mut last = String::new();
        let up = wait_for(
            "mariadbd to accept connections",
            Duration::from_secs(30),
            || match run(
                "mariadb",
                &[
                    "--no-defaults",
                    &format!("--socket={socket}"),
                    "-uroot",
                    "-e",
                    "SELECT 1",
                ],
            ) {
                Ok(_) => Ok(true),
                Err(e) => {
                    last = format!("{e:#}");
                    Ok(false)
                }
            },
        );
        if let Err(e) = up {
            bail!("{e:#}: {last}\nserver log:\n{}", server.proc.log_text());
        }
        run(
            "mariadb",
            &[
                "--no-defaults",
                &format!("--socket={socket}"),
                "-uroot",
                "-e",
                &setup,
            ],
        )?;
        Ok(server)
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        let _ = &self.dir;
        self.proc.log_text()
    }
}

/// Runs the `mariadb` client in `client` against the server in `server` as [`MYSQL_USER`] on
/// [`MYSQL_DATABASE`], without TLS, with `args` (e.g. `-e`, statements); its output.
pub fn mariadb(client: &Pod, server: &Pod, args: &[&str]) -> Result<String> {
    let host = server.ipv4.to_string();
    let port = MYSQL_PORT.to_string();
    let password = format!("-p{MYSQL_PASSWORD}");
    let mut all = vec![
        "mariadb",
        "--no-defaults",
        "--skip-ssl",
        "-h",
        &host,
        "-P",
        &port,
        "-u",
        MYSQL_USER,
        &password,
        MYSQL_DATABASE,
    ];
    all.extend(args);
    let out = run_in(&client.netns, &all)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Prepares `statement` and executes it with the integer `params` through the binary protocol
/// (`COM_STMT_PREPARE`, `COM_STMT_EXECUTE`), from `client`: the minimal client that made the
/// collector's fixture (`collector/testdata/db/mysql_prepared.py`); its output.
pub fn mysql_prepared(
    client: &Pod,
    server: &Pod,
    statement: &str,
    params: &[i64],
) -> Result<String> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../collector/testdata/db/mysql_prepared.py"
    );
    let host = server.ipv4.to_string();
    let port = MYSQL_PORT.to_string();
    let params: Vec<String> = params.iter().map(i64::to_string).collect();
    let mut all = vec![
        "timeout",
        "10",
        "python3",
        script,
        &host,
        &port,
        MYSQL_USER,
        MYSQL_PASSWORD,
        MYSQL_DATABASE,
        statement,
    ];
    all.extend(params.iter().map(String::as_str));
    let out = run_in(&client.netns, &all)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until `clovisor` has counted an exchange of `system`, `operation` and `outcome` in
/// `clovisor_db_requests_total` (whatever the server's workload labels); fails with the
/// database series it saw.
pub fn wait_for_db_count(
    clovisor: &AllInOne,
    system: &str,
    operation: &str,
    outcome: &str,
) -> Result<()> {
    let series = format!(
        "clovisor_db_requests_total{{system=\"{system}\",operation=\"{operation}\",outcome=\"{outcome}\","
    );
    let mut metrics = String::new();
    let counted = wait_for(
        &format!("{series} counted"),
        Duration::from_secs(15),
        || {
            metrics = clovisor.metrics_text()?;
            Ok(metrics
                .lines()
                .any(|l| l.starts_with(&series) && !l.ends_with(" 0")))
        },
    );
    if let Err(e) = counted {
        let db: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("clovisor_db_"))
            .collect();
        bail!("{e:#}\n{db:#?}");
    }
    Ok(())
}
