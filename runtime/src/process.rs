//! The start-up and shut-down every Clovisor-rs process repeats, in one place: logging, signal
//! handlers, the loss accounting its stages share, one metrics registry, the live configuration
//! followed from Redis, and HTTP servers that stop together at the end.
//!
//! ```text
//! let Started { shutdown, drops, mut registry, live, mut servers, .. } = start(&args.log, redis)?;
//! // components register their metrics in `registry` and count losses in `drops`
//! servers.serve(metrics_addr, metrics_router(Arc::new(registry))).await?;
//! // ... run until `shutdown` resolves, drain the pipeline ...
//! servers.stop().await?;
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use clovisor_config::LiveConfig;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::drops::Drops;
use crate::{serve_http, shutdown_signal, Error, LogArgs, Result, StopFlag};

/// Flags every service binary accepts: logging, its metrics address, the Redis of the live
/// configuration. (All-in-one has its own: it listens on loopback and needs no Redis.)
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub log: LogArgs,
    /// Prometheus metrics address.
    #[arg(long, env = "CLOVISOR_METRICS_LISTEN", default_value = "0.0.0.0:9801")]
    pub metrics_listen: SocketAddr,
    /// Redis holding the live configuration (empty: none; flags, environment and defaults
    /// apply).
    #[arg(long, env = clovisor_config::ENV_REDIS, default_value = clovisor_config::DEFAULT_CLUSTER_REDIS)]
    pub redis: String,
    /// File holding the bearer token every HTTP request but `/healthz` and `/readyz` must
    /// carry (`Authorization: Bearer ...`); re-read every 30 s. None: the HTTP side is open.
    #[arg(long, env = crate::auth::ENV_API_TOKEN_FILE)]
    pub api_token_file: Option<std::path::PathBuf>,
    /// Identities whose Kubernetes tokens the HTTP side accepts, checked with a TokenReview by
    /// the API server (in cluster): user names (`system:serviceaccount:NS:NAME`) or
    /// `group:NAME`, comma-separated. None: no TokenReview. Works beside --api-token-file.
    #[arg(long, env = ENV_API_ALLOWED_IDENTITIES, value_delimiter = ',')]
    pub api_allowed_identities: Vec<String>,
    /// Bounds on metric series and label values from outside the process.
    #[command(flatten)]
    pub limits: crate::limits::LimitArgs,
}

/// Environment variable of `--api-allowed-identities`.
pub const ENV_API_ALLOWED_IDENTITIES: &str = "CLOVISOR_API_ALLOWED_IDENTITIES";

impl ServiceArgs {
    /// What the HTTP side accepts: the token `--api-token-file` names and/or, with
    /// `--api-allowed-identities`, tokens the in-cluster API server vouches for (counted in
    /// `registry`). The API server is the in-cluster one, or `KUBECONFIG`'s. Must be called
    /// inside a Tokio runtime.
    pub async fn api_token(
        &self,
        registry: &mut Registry,
    ) -> Result<Option<crate::auth::BearerToken>> {
        let identities: Vec<String> = self
            .api_allowed_identities
            .iter()
            .map(|i| i.trim().to_owned())
            .filter(|i| !i.is_empty())
            .collect();
        if identities.is_empty() {
            return api_token(self.api_token_file.as_deref(), registry);
        }
        let reviewer =
            crate::auth::token_review::TokenReviewer::from_environment(identities, Vec::new())
                .await?;
        let token = match &self.api_token_file {
            Some(file) => crate::auth::BearerToken::from_file(file)?.with_review(reviewer),
            None => crate::auth::BearerToken::review_only(reviewer),
        };
        token.register(registry);
        Ok(Some(token))
    }
}

/// The token in `file`, if one is named, its refusals counted in `registry`. Must be called
/// inside a Tokio runtime.
pub fn api_token(
    file: Option<&std::path::Path>,
    registry: &mut Registry,
) -> Result<Option<crate::auth::BearerToken>> {
    let Some(file) = file else {
        return Ok(None);
    };
    let token = crate::auth::BearerToken::from_file(file)?;
    token.register(registry);
    Ok(Some(token))
}

/// A future resolving on the first SIGTERM or SIGINT.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What [`start`] set up, for the process to take apart.
pub struct Started {
    /// Resolves on the first SIGTERM or SIGINT.
    pub shutdown: Shutdown,
    /// Loss accounting shared by every stage of the process, already in `registry`.
    pub drops: Drops,
    /// The process's one metrics registry: the loss accounting and the live configuration's
    /// metrics are in it; components add theirs.
    pub registry: Registry,
    /// The live configuration (defaults when there is no Redis).
    pub live: watch::Receiver<LiveConfig>,
    /// The live configuration's metrics (already in `registry`), for entries a service
    /// rejects itself.
    pub config_metrics: clovisor_config::ConfigMetrics,
    /// What `/readyz` checks; components add theirs and serve [`Readiness::router`].
    pub readiness: crate::health::Readiness,
    /// The HTTP servers, and what stops the configuration source at the end.
    pub servers: Servers,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("drops", &self.drops)
            .field("live", &self.live)
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

/// Installs logging from `log` (once per process), then [`start_without_logging`].
pub fn start(log: &LogArgs, redis: Option<&str>) -> Result<Started> {
    crate::init_logging(log);
    start_without_logging(redis)
}

/// Installs the signal handlers, makes the loss accounting and the metrics registry (with the
/// losses registered), and follows the live configuration from `redis` (none or empty: the
/// defaults). Must be called inside a Tokio runtime.
pub fn start_without_logging(redis: Option<&str>) -> Result<Started> {
    let shutdown: Shutdown = Box::pin(shutdown_signal()?);
    let drops = Drops::default();
    let mut registry = Registry::default();
    drops.register(&mut registry);
    crate::process_metrics::ProcessCollector::register(&mut registry);
    let stop_config = StopFlag::default();
    let policy = clovisor_config::Policy::from_env().map_err(|source| Error::Policy { source })?;
    let (live, config_metrics) =
        clovisor_config::follow_counted(redis, policy, &mut registry, stop_config.wait())
            .map_err(|source| Error::Config { source })?;
    Ok(Started {
        shutdown,
        drops,
        registry,
        live,
        config_metrics,
        readiness: crate::health::Readiness::default(),
        servers: Servers {
            stop_config,
            stop_http: StopFlag::default(),
            http: Vec::new(),
            auth: None,
        },
    })
}

/// The process's HTTP servers (metrics, REST) and the configuration source, stopped together by
/// [`Servers::stop`].
#[derive(Debug)]
pub struct Servers {
    stop_config: StopFlag,
    stop_http: StopFlag,
    http: Vec<JoinHandle<Result<()>>>,
    auth: Option<crate::auth::BearerToken>,
}

impl Servers {
    /// Binds `addr` now (so a port clash fails at start) and serves `router` on it until
    /// [`Servers::stop`].
    pub async fn serve(&mut self, addr: SocketAddr, router: axum::Router) -> Result<()> {
        let router = match &self.auth {
            Some(token) => token.protect(router),
            None => router,
        };
        let server = serve_http(addr, router, self.stop_http.wait()).await?;
        self.http.push(tokio::spawn(server));
        Ok(())
    }

    /// Puts every router served from now on behind `token` (none: open); `/healthz` and
    /// `/readyz` stay open.
    pub fn require_token(&mut self, token: Option<crate::auth::BearerToken>) {
        self.auth = token;
    }

    /// Stops following the configuration, then stops the HTTP servers gracefully and waits for
    /// them; the first server error, if any.
    pub async fn stop(self) -> Result<()> {
        self.stop_config.raise();
        self.stop_http.raise();
        let mut result = Ok(());
        for task in self.http {
            let outcome = task.await.map_err(|source| Error::Task { source });
            if let Err(e) = outcome.and_then(|served| served) {
                tracing::error!(error = %e, "HTTP server");
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }
}
