//! TLS and mutual authentication on the gRPC hops (probe -> collector, collector -> correlator,
//! correlator -> OTLP), with rustls and the ring provider.
//!
//! - Certificates come from PEM files named as cert-manager and `kubectl create secret tls` name
//!   them (`tls.crt`, `tls.key`, `ca.crt`), given one by one or as the directory a Secret is
//!   mounted on ([`TlsArgs`]). They are re-read on a timer ([`reload`]): when a Kubernetes
//!   Secret volume swaps its `..data` symlink, new connections use the new certificate and CA
//!   without a restart; a rotation that does not parse keeps the last good one (logged,
//!   counted).
//! - Servers ([`server::incoming`]) terminate TLS themselves and hand tonic the established
//!   streams; with a CA configured they require a client certificate signed by it, and can
//!   further require one of a list of names in it ([`PeerNames`]). Refusals are counted
//!   (`clovisor_tls_refused_total`). The peer's certificate reaches the services in each
//!   request's extensions ([`identity::PeerIdentity`]).
//! - Clients ([`ClientTransport::lazy_channel`]) refuse, at start, an `https://` URL without
//!   TLS configured, and a plaintext `http://` URL to anything but a loopback address unless
//!   plaintext was explicitly allowed ([`TlsArgs::insecure_plaintext`]): a hop is never
//!   silently downgraded.

use std::path::PathBuf;
use std::time::Duration;

pub mod client;
pub mod identity;
pub mod material;
pub mod reload;
pub mod server;
pub mod stats;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
#[cfg(test)]
mod tests;

pub use client::{ClientTls, ClientTransport};
pub use identity::{PeerIdentity, PeerNames};
pub use server::ServerTls;
pub use stats::TlsStats;

/// Errors of TLS set-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate, key or CA file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not the PEM it should be.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: &'static str,
    },
    /// rustls refused the certificate, key or CA.
    #[error("TLS configuration from {path}")]
    Rustls {
        /// The certificate (or CA) file the configuration was made from.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The CA bundle cannot verify clients.
    #[error("client verifier from {path}")]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// A setting that needs another one is missing.
    #[error("{what}")]
    Incomplete {
        /// What is missing.
        what: &'static str,
    },
    /// An `https://` URL with no TLS configured: refused rather than downgraded.
    #[error("{url}: https:// needs TLS configured (--tls-dir, or --tls-ca and the rest)")]
    HttpsWithoutTls {
        /// The URL.
        url: String,
    },
    /// Plaintext to a non-loopback address without the explicit opt-in.
    #[error(
        "{url}: plaintext http:// to a non-loopback address is refused; use https:// with TLS \
         configured, or pass --insecure-plaintext"
    )]
    PlaintextRefused {
        /// The URL.
        url: String,
    },
    /// Not a usable `http(s)://host:port` URL.
    #[error("{url}: not a valid http(s)://host:port URL")]
    InvalidUrl {
        /// The URL.
        url: String,
    },
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Default period of the certificate re-read.
pub const DEFAULT_RELOAD: Duration = Duration::from_secs(30);

/// Environment variable: the directory holding `tls.crt`, `tls.key` and `ca.crt`.
pub const ENV_TLS_DIR: &str = "CLOVISOR_TLS_DIR";
/// Environment variable: this process's certificate chain (PEM).
pub const ENV_TLS_CERT: &str = "CLOVISOR_TLS_CERT";
/// Environment variable: this process's private key (PEM).
pub const ENV_TLS_KEY: &str = "CLOVISOR_TLS_KEY";
/// Environment variable: the CA bundle peers are verified against (PEM).
pub const ENV_TLS_CA: &str = "CLOVISOR_TLS_CA";
/// Environment variable: names a peer's certificate must carry (comma-separated).
pub const ENV_TLS_PEER_NAMES: &str = "CLOVISOR_TLS_PEER_NAMES";
/// Environment variable: the name the server's certificate is checked against.
pub const ENV_TLS_SERVER_NAME: &str = "CLOVISOR_TLS_SERVER_NAME";
/// Environment variable: allow plaintext `http://` to non-loopback addresses.
pub const ENV_INSECURE_PLAINTEXT: &str = "CLOVISOR_INSECURE_PLAINTEXT";

/// The three files, as a Secret mounted on a directory names them.
pub const CERT_FILE: &str = "tls.crt";
/// See [`CERT_FILE`].
pub const KEY_FILE: &str = "tls.key";
/// See [`CERT_FILE`].
pub const CA_FILE: &str = "ca.crt";

/// TLS flags every service binary accepts (flattened into its arguments).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Directory holding `tls.crt`, `tls.key` and `ca.crt` (a mounted Kubernetes Secret of type
    /// kubernetes.io/tls, as cert-manager writes it). The files named by --tls-cert, --tls-key
    /// and --tls-ca win over it.
    #[arg(long, env = ENV_TLS_DIR)]
    pub tls_dir: Option<PathBuf>,
    /// This process's certificate chain (PEM), presented as server and as client.
    #[arg(long, env = ENV_TLS_CERT)]
    pub tls_cert: Option<PathBuf>,
    /// This process's private key (PEM).
    #[arg(long, env = ENV_TLS_KEY)]
    pub tls_key: Option<PathBuf>,
    /// CA bundle (PEM) peers are verified against: servers require client certificates it
    /// signed, clients require it of servers.
    #[arg(long, env = ENV_TLS_CA)]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate must carry one of these DNS names (subject alternative names);
    /// `*.suffix` matches any name ending in `.suffix`. Empty: any certificate the CA signed.
    #[arg(long, env = ENV_TLS_PEER_NAMES, value_delimiter = ',')]
    pub tls_peer_names: Vec<String>,
    /// The DNS name the server's certificate is checked against, when not the URL's host.
    #[arg(long, env = ENV_TLS_SERVER_NAME)]
    pub tls_server_name: Option<String>,
    /// How often the files are re-read to pick up a rotation.
    #[arg(long, env = "CLOVISOR_TLS_RELOAD", default_value = "30s", value_parser = parse_duration)]
    pub tls_reload: Duration,
    /// Allow plaintext http:// to non-loopback addresses (refused otherwise).
    #[arg(long, env = ENV_INSECURE_PLAINTEXT)]
    pub insecure_plaintext: bool,
}

/// `30s`, `500ms`, `2m` or plain seconds.
fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(format!("not a duration: {s:?} (ms, s or m)")),
    }
}

/// Where a process's certificate, key and CA are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain (PEM); `None` for a client that presents none.
    pub cert: Option<PathBuf>,
    /// Private key (PEM); with `cert`.
    pub key: Option<PathBuf>,
    /// CA bundle (PEM).
    pub ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The three files of a mounted Secret directory.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            cert: Some(dir.join(CERT_FILE)),
            key: Some(dir.join(KEY_FILE)),
            ca: Some(dir.join(CA_FILE)),
        }
    }
}

impl TlsArgs {
    /// The files these flags name; `None` when TLS is not configured at all.
    pub fn files(&self) -> Option<TlsFiles> {
        let base = self.tls_dir.as_ref().map(TlsFiles::in_dir);
        let pick = |own: &Option<PathBuf>, from_dir: Option<&Option<PathBuf>>| {
            own.clone().or_else(|| from_dir.cloned().flatten())
        };
        let files = TlsFiles {
            cert: pick(&self.tls_cert, base.as_ref().map(|b| &b.cert)),
            key: pick(&self.tls_key, base.as_ref().map(|b| &b.key)),
            ca: pick(&self.tls_ca, base.as_ref().map(|b| &b.ca)),
        };
        (files.cert.is_some() || files.key.is_some() || files.ca.is_some()).then_some(files)
    }

    /// The server side: `None` when TLS is not configured. Must be called inside a Tokio
    /// runtime (the re-read runs on it).
    pub fn server(&self, stats: &TlsStats) -> Result<Option<ServerTls>> {
        let Some(files) = self.files() else {
            return Ok(None);
        };
        ServerTls::new(
            files,
            PeerNames::new(self.tls_peer_names.clone()),
            self.tls_reload,
            stats.clone(),
        )
        .map(Some)
    }

    /// The client side of the hops this process dials. Must be called inside a Tokio runtime.
    pub fn client(&self, stats: &TlsStats) -> Result<ClientTransport> {
        let tls = match self.files() {
            Some(files) => Some(ClientTls::new(
                files,
                self.tls_server_name.clone(),
                self.tls_reload,
                stats.clone(),
            )?),
            None => None,
        };
        Ok(ClientTransport::new(tls, self.insecure_plaintext))
    }
}
