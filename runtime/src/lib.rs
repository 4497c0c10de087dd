//! Process plumbing every Clovisor-rs binary shares: structured logging, shutdown signals,
//! serving an axum router with graceful shutdown, and the start-up every process repeats
//! ([`process::start`]).

use std::future::Future;
use std::net::SocketAddr;

pub mod auth;
pub mod drops;
pub mod health;
pub mod limits;
pub mod process;
pub mod process_metrics;
pub mod redact;
pub mod series;
pub mod workloads;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("HTTP server on {addr} failed")]
    Serve {
        /// Where it listened.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    /// The live configuration cannot be followed.
    #[error("live configuration")]
    Config {
        /// Why.
        #[source]
        source: clovisor_config::Error,
    },
    /// TokenReview was asked for with no API server to ask (neither a kubeconfig nor the
    /// in-cluster configuration).
    #[error("TokenReview needs an API server (in cluster, or KUBECONFIG): {why}")]
    TokenReview {
        /// Why the client could not be configured.
        why: String,
    },
    /// An operator allow-list (`CLOVISOR_ALLOWED_*`) does not parse.
    #[error("allow-list")]
    Policy {
        /// Which entry, and why.
        #[source]
        source: clovisor_config::PolicyError,
    },
    /// The API token file could not be read.
    #[error("cannot read the API token file {path}")]
    TokenFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The API token file holds no token.
    #[error("the API token file {path} is empty")]
    EmptyToken {
        /// The file.
        path: std::path::PathBuf,
    },
    /// A server task panicked or was cancelled.
    #[error("server task failed")]
    Task {
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging flags every binary accepts.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "CLOVISOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Installs the global `tracing` subscriber; the level comes from `RUST_LOG` (default `info`).
pub fn init_logging(args: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Resolves on the first SIGTERM or SIGINT.
pub fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(Error::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Signals)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
        }
    })
}

/// Binds `addr` now (so a port clash fails at start) and returns a future serving `router`
/// until `shutdown` resolves.
pub async fn serve_http(
    addr: SocketAddr,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<impl Future<Output = Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %bound, "HTTP listening");
    Ok(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| Error::Serve {
                addr: bound,
                source,
            })
    })
}

/// A one-shot stop flag that several tasks can wait on; used to stop pipeline stages in order.
#[derive(Debug, Clone)]
pub struct StopFlag(tokio::sync::watch::Sender<bool>);

impl Default for StopFlag {
    fn default() -> Self {
        Self(tokio::sync::watch::channel(false).0)
    }
}

impl StopFlag {
    /// Raises the flag; every waiter resolves.
    pub fn raise(&self) {
        self.0.send_replace(true);
    }

    /// A future resolving once the flag is raised (at once if it already is).
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|raised| *raised).await;
        }
    }
}

/// Renders `registry` as OpenMetrics text.
pub fn encode_metrics(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an error here would be a bug in prometheus-client, and
    // an empty scrape is the honest answer to it.
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        tracing::error!("encoding metrics failed");
        out.clear();
    }
    out
}

/// A router serving `registry` at `/metrics`, for a port of its own, with `/healthz` beside it
/// for liveness probes. OpenMetrics text to clients that accept it (Prometheus asks for it),
/// else the same samples in the Prometheus text format 0.0.4 (curl, `promtool check metrics`,
/// older scrapers), as the Go client library negotiates.
pub fn metrics_router(
    registry: std::sync::Arc<prometheus_client::registry::Registry>,
) -> axum::Router {
    axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/metrics",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let registry = std::sync::Arc::clone(&registry);
                async move {
                    let openmetrics = headers
                        .get_all(axum::http::header::ACCEPT)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .any(|v| v.contains("application/openmetrics-text"));
                    let text = encode_metrics(&registry);
                    if openmetrics {
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            text,
                        )
                    } else {
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )],
                            prometheus_text(&text),
                        )
                    }
                }
            }),
        )
}

/// OpenMetrics text as the Prometheus text format 0.0.4: a counter's `HELP` and `TYPE` name
/// its samples (`_total`), `unknown` is `untyped`, an info metric is a gauge named `_info`, and
/// `UNIT` and `EOF` lines go. Samples are the same in both.
pub fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut lines = openmetrics.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            // The TYPE line follows (after a UNIT line, if any) and says what the samples are called.
            let kind = lines
                .clone()
                .filter(|l| !l.starts_with("# UNIT "))
                .find_map(|l| l.strip_prefix("# TYPE "))
                .and_then(|t| t.split_once(' '))
                .filter(|(n, _)| *n == name)
                .map_or("", |(_, k)| k);
            out.push_str(&format!("# HELP {}{} {help}\n", name, suffix(kind)));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind_04 = match kind {
                "counter" => "counter",
                "gauge" | "info" | "stateset" => "gauge",
                "histogram" | "gaugehistogram" => "histogram",
                "summary" => "summary",
                _ => "untyped",
            };
            out.push_str(&format!("# TYPE {}{} {kind_04}\n", name, suffix(kind)));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// What OpenMetrics appends to a family's name in its samples, for the types that do.
fn suffix(kind: &str) -> &'static str {
    match kind {
        "counter" => "_total",
        "info" => "_info",
        _ => "",
    }
}

/// Parses a duration flag such as `250ms`, `2s` or `3` (seconds).
pub fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" => Ok(std::time::Duration::from_secs(n)),
        _ => Err(format!("not a duration (use ms or s): {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn openmetrics_becomes_the_prometheus_text_format() {
        let om = "# HELP reqs Requests.\n# TYPE reqs counter\nreqs_total{a=\"b\"} 3\n\
                  # HELP up_seconds Up.\n# TYPE up_seconds gauge\n# UNIT up_seconds seconds\nup_seconds 1.5\n\
                  # HELP build Build.\n# TYPE build info\nbuild_info{v=\"1\"} 1\n\
                  # HELP lat Latency.\n# TYPE lat histogram\nlat_bucket{le=\"+Inf\"} 1\nlat_sum 0.1\nlat_count 1\n# EOF\n";
        assert_eq!(
            prometheus_text(om),
            "# HELP reqs_total Requests.\n# TYPE reqs_total counter\nreqs_total{a=\"b\"} 3\n\
             # HELP up_seconds Up.\n# TYPE up_seconds gauge\nup_seconds 1.5\n\
             # HELP build_info Build.\n# TYPE build_info gauge\nbuild_info{v=\"1\"} 1\n\
             # HELP lat Latency.\n# TYPE lat histogram\nlat_bucket{le=\"+Inf\"} 1\nlat_sum 0.1\nlat_count 1\n"
        );
    }

    #[tokio::test]
    async fn metrics_are_negotiated() {
        use tower::ServiceExt as _;
        let mut registry = prometheus_client::registry::Registry::default();
        let c = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register("things", "Things.", c);
        let router = metrics_router(std::sync::Arc::new(registry));
        for (accept, ctype, family) in [
            (
                "application/openmetrics-text; version=1.0.0",
                "application/openmetrics-text",
                "# TYPE things counter",
            ),
            (
                "*/*",
                "text/plain; version=0.0.4",
                "# TYPE things_total counter",
            ),
        ] {
            let r = router
                .clone()
                .oneshot(
                    axum::http::Request::get("/metrics")
                        .header("accept", accept)
                        .body(axum::body::Body::empty())
                        .expect("request"),
                )
                .await
                .expect("infallible");
            let got = r.headers()["content-type"]
                .to_str()
                .unwrap_or_default()
                .to_owned();
            assert!(got.starts_with(ctype), "{accept}: {got}");
            let body = axum::body::to_bytes(r.into_body(), 1 << 16)
                .await
                .expect("body");
            let text = String::from_utf8_lossy(&body);
            assert!(
                text.contains(family) && text.contains("things_total 0"),
                "{accept}: {text}"
            );
        }
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("1h").is_err());
    }

    #[tokio::test]
    async fn a_stop_flag_releases_every_waiter() {
        let flag = StopFlag::default();
        let a = tokio::spawn(flag.wait());
        let b = tokio::spawn(flag.wait());
        flag.raise();
        a.await.expect("first waiter");
        b.await.expect("second waiter");
        // Raised already: resolves at once.
        flag.wait().await;
    }
}
