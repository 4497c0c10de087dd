//! Test helpers: a real `redis-server` (Debian package) of the test's own, on a free loopback
//! port in a temporary directory, killed when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
}

impl RedisServer {
    /// Starts a server on a free port.
    pub fn start() -> Result<Self, ServerError> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Self::start_at(port, tempfile::tempdir()?)
    }

    /// Starts a server on `port`, its files in `dir` (persistence off).
    pub fn start_at(port: u16, dir: tempfile::TempDir) -> Result<Self, ServerError> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let server = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(ServerError::NotListening { port });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>`
    pub fn url(&self) -> String {
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
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
