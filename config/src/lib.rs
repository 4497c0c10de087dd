//! Clovisor-rs live configuration: the typed model ([`LiveConfig`]), one parser per Redis key
//! ([`parse`]) and the Redis source ([`RedisSource`]) that publishes changes on a
//! `tokio::sync::watch` channel. Every service (probe, collector, correlator, all-in-one) reads
//! the same keys and takes the part that concerns it.

pub mod keys;
pub mod metrics;
pub mod model;
pub mod parse;
pub mod source;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

use std::future::Future;

use tokio::sync::watch;

pub use metrics::ConfigMetrics;
pub use model::{EgressRule, EgressTarget, LabelSelector, LiveConfig};
pub use parse::{Policy, PolicyError};
pub use source::RedisSource;

/// Environment variable naming the Redis URL (flag `--redis`).
pub const ENV_REDIS: &str = "CLOVISOR_REDIS";
/// Environment variable naming the PEM file of the CA that signed a `rediss://` server's
/// certificate (none: the system's roots).
pub const ENV_REDIS_CA: &str = "CLOVISOR_REDIS_CA";
/// The in-cluster Redis of the manifests (Service `redis` in namespace `clovisor`).
pub const DEFAULT_CLUSTER_REDIS: &str = "redis://redis.clovisor.svc:6379";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Redis URL is not one.
    #[error("invalid Redis URL {url}")]
    Url {
        /// The URL, password hidden.
        url: String,
        /// Why.
        #[source]
        source: redis::RedisError,
    },
    /// The Redis CA file cannot be read.
    #[error("cannot read the Redis CA file {path}")]
    Ca {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Follows Redis at `url` when there is one (an empty URL counts as none) within the
/// operator's `policy`, with its metrics registered in `registry`; without one the receiver
/// holds the defaults (within `policy`) and its sender is dropped (`changed()` then fails:
/// nothing will ever change).
pub fn follow(
    url: Option<&str>,
    policy: Policy,
    registry: &mut prometheus_client::registry::Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<watch::Receiver<LiveConfig>> {
    follow_counted(url, policy, registry, shutdown).map(|(rx, _)| rx)
}

/// [`follow`], also giving the metrics it counts into, for the services that reject entries
/// of their own (the collector, analyzer modules it cannot load).
pub fn follow_counted(
    url: Option<&str>,
    policy: Policy,
    registry: &mut prometheus_client::registry::Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(watch::Receiver<LiveConfig>, ConfigMetrics)> {
    let metrics = ConfigMetrics::default();
    metrics.register(registry);
    match url.map(str::trim).filter(|u| !u.is_empty()) {
        Some(url) => {
            let ca = match std::env::var_os(ENV_REDIS_CA).filter(|p| !p.is_empty()) {
                Some(path) => Some(std::fs::read(&path).map_err(|source| Error::Ca {
                    path: path.into(),
                    source,
                })?),
                None => None,
            };
            let (rx, _task) = RedisSource::with_ca(url, ca, metrics.clone())?
                .with_policy(policy)
                .spawn(shutdown);
            Ok((rx, metrics))
        }
        None => Ok((
            watch::channel(parse::build(&parse::Snapshot::default(), &policy).0).1,
            metrics,
        )),
    }
}
