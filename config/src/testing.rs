//! Test helpers: a real `redis-server` (Debian package) of the test's own, on a free loopback
//! port in a temporary directory, killed when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago, never the same twice in one process: the kernel
/// may hand a port just released to the next `bind(0)`, and two servers of one test given the
/// same port collide. For every crate's tests (`test-util`).
pub fn free_port() -> std::io::Result<u16> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..64 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no loopback port not handed out before in 64 tries",
    ))
}

/// Why the server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Spawning or preparing failed.
    #[error("starting redis-server (apt-get install redis-server; scripts/install-deps.sh)")]
    Io(#[from] std::io::Error),
    /// It never listened.
    #[error("redis-server did not listen on port {port} within 10 s")]
    NotListening {
        /// The port asked for.
        port: u16,
    },
}

/// A running `redis-server`; SIGKILLed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    password: Option<String>,
    /// Whether `port` speaks TLS only.
    tls: bool,
}

/// A server certificate, its key and the CA that signed it (PEM files), for a TLS server.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// `tls.crt`
    pub cert: std::path::PathBuf,
    /// `tls.key`
    pub key: std::path::PathBuf,
    /// `ca.crt`
    pub ca: std::path::PathBuf,
}

impl RedisServer {
    /// Starts a server on a free port.
    pub fn start() -> Result<Self, ServerError> {
        let port = free_port()?;
        Self::start_at(port, tempfile::tempdir()?)
    }

    /// Starts a server on a free port that requires `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> Result<Self, ServerError> {
        let port = free_port()?;
        Self::launch(port, tempfile::tempdir()?, Some(password.to_owned()))
    }

    /// Starts a server on a free port with `extra` configuration arguments (ACL `--user`
    /// directives, …); [`RedisServer::url_as`] names a user.
    pub fn start_with_args(extra: &[String]) -> Result<Self, ServerError> {
        let port = free_port()?;
        Self::launch_full(port, tempfile::tempdir()?, None, None, extra)
    }

    /// `redis://USER:PASSWORD@127.0.0.1:<port>` (plaintext servers).
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// Starts a server on `port`, its files in `dir` (persistence off).
    pub fn start_at(port: u16, dir: tempfile::TempDir) -> Result<Self, ServerError> {
        Self::launch(port, dir, None)
    }

    /// Starts a server on a free port that speaks only TLS with `tls` (clients need no
    /// certificate) and requires `password`.
    pub fn start_tls(password: &str, tls: &ServerTls) -> Result<Self, ServerError> {
        let port = free_port()?;
        Self::launch_with(
            port,
            tempfile::tempdir()?,
            Some(password.to_owned()),
            Some(tls),
        )
    }

    fn launch(
        port: u16,
        dir: tempfile::TempDir,
        password: Option<String>,
    ) -> Result<Self, ServerError> {
        Self::launch_with(port, dir, password, None)
    }

    fn launch_with(
        port: u16,
        dir: tempfile::TempDir,
        password: Option<String>,
        tls: Option<&ServerTls>,
    ) -> Result<Self, ServerError> {
        Self::launch_full(port, dir, password, tls, &[])
    }

    fn launch_full(
        port: u16,
        dir: tempfile::TempDir,
        password: Option<String>,
        tls: Option<&ServerTls>,
        extra: &[String],
    ) -> Result<Self, ServerError> {
        let mut cmd = Command::new("redis-server");
        match tls {
            None => cmd.args(["--port", &port.to_string()]),
            Some(t) => cmd
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(&t.cert)
                .arg("--tls-key-file")
                .arg(&t.key)
                .arg("--tls-ca-cert-file")
                .arg(&t.ca)
                .args(["--tls-auth-clients", "no"]),
        };
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path());
        if let Some(pw) = &password {
            cmd.args(["--requirepass", pw]);
        }
        cmd.args(extra);
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        let server = Self {
            child,
            port,
            dir,
            password,
            tls: tls.is_some(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(ServerError::NotListening { port });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>` (`rediss://localhost:<port>` for a TLS server, the name its
    /// certificate carries), with the password when the server requires one.
    pub fn url(&self) -> String {
        let (scheme, host) = if self.tls {
            ("rediss", "localhost")
        } else {
            ("redis", "127.0.0.1")
        };
        match &self.password {
            Some(pw) => format!("{scheme}://:{pw}@{host}:{}", self.port),
            None => format!("{scheme}://{host}:{}", self.port),
        }
    }

    /// `redis://127.0.0.1:<port>` without any password.
    pub fn url_without_password(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL: no goodbye to clients) and hands back its port and
    /// directory for a restart.
    pub fn kill(mut self) -> Result<(u16, tempfile::TempDir), ServerError> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir()?);
        Ok((self.port, dir))
    }

    /// Runs `redis-cli` against it with `args`; returns its output.
    pub fn cli(&self, args: &[&str]) -> Result<String, ServerError> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string()]);
        if let Some(pw) = &self.password {
            cmd.env("REDISCLI_AUTH", pw);
        }
        let out = cmd.args(args).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
