//! Typed configuration, read from the environment through a seam tests can fill.
//!
//! The OpenTelemetry variables keep their standard names and meanings
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, the batch span processor's `OTEL_BSP_*`),
//! so an operator's existing knowledge and manifests carry over.

use std::collections::HashMap;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::export::sampler::{Sampler, ENV_TRACES_SAMPLER, ENV_TRACES_SAMPLER_ARG};
use crate::join::JoinConfig;

/// Ceilings of the join settings, so a typo cannot hold spans for hours or unbounded memory.
const MAX_JOIN_WINDOW_MS: usize = 60_000;
const MAX_JOIN_RETENTION_S: usize = 3600;
const MAX_JOIN_ENTRIES: usize = 10_000_000;

/// OTLP endpoint for all signals (gRPC), e.g. `http://otel-collector:4317`.
pub const ENV_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// OTLP endpoint for traces only; wins over [`ENV_OTLP_ENDPOINT`] as the OTel spec says.
pub const ENV_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// Per-request export timeout in milliseconds.
pub const ENV_OTLP_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
/// `service.name` of the exported resource.
pub const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// `otlp` (default) or `none` to switch span export off.
pub const ENV_TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
/// Spans per export request at most.
pub const ENV_BSP_MAX_EXPORT_BATCH_SIZE: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";
/// Milliseconds a partial batch waits before it is sent.
pub const ENV_BSP_SCHEDULE_DELAY: &str = "OTEL_BSP_SCHEDULE_DELAY";
/// Spans waiting for export at most; beyond it new spans are dropped and counted.
pub const ENV_BSP_MAX_QUEUE_SIZE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
/// Sessions kept in memory for the REST API.
pub const ENV_STORE_CAPACITY: &str = "CLOVISOR_STORE_CAPACITY";
/// Milliseconds one batch is retried at most before it is dropped and counted.
pub const ENV_EXPORT_RETRY_MAX_ELAPSED: &str = "CLOVISOR_EXPORT_RETRY_MAX_ELAPSED_MS";
/// Milliseconds an exchange waits for other points' observations before its span is exported.
pub const ENV_JOIN_WINDOW: &str = "CLOVISOR_JOIN_WINDOW_MS";
/// Seconds after export during which late observations are still appended to the stored session.
pub const ENV_JOIN_RETENTION: &str = "CLOVISOR_JOIN_RETENTION_S";
/// Exchanges the join holds at most (open and retained).
pub const ENV_JOIN_MAX_ENTRIES: &str = "CLOVISOR_JOIN_MAX_ENTRIES";
/// Environment variable of `--join-max-time-candidates` ([`BoundArgs`]).
pub const ENV_JOIN_MAX_TIME_CANDIDATES: &str = "CLOVISOR_JOIN_MAX_TIME_CANDIDATES";
/// Environment variable of `--max-analyzer-labels` ([`BoundArgs`]).
pub const ENV_MAX_ANALYZER_LABELS: &str = "CLOVISOR_MAX_ANALYZER_LABELS";
/// Node the correlator runs on (Downward API), exported as the resource's `k8s.node.name`.
pub const ENV_NODE_NAME: &str = "CLOVISOR_NODE_NAME";
/// Largest session batch (gRPC message) a collector may send, in bytes.
pub const ENV_MAX_MESSAGE_BYTES: &str = "CLOVISOR_MAX_MESSAGE_BYTES";
/// The smallest `CLOVISOR_MAX_MESSAGE_BYTES` taken: one large session must still fit.
const MIN_MESSAGE_BYTES: usize = 64 << 10;
/// The largest `CLOVISOR_MAX_MESSAGE_BYTES` taken.
const MAX_MESSAGE_BYTES_CEILING: usize = 256 << 20;

/// Default OTLP/gRPC endpoint, as in the OTel spec.
pub const DEFAULT_OTLP_ENDPOINT: &str = "http://localhost:4317";
/// Default `service.name`.
pub const DEFAULT_SERVICE_NAME: &str = "clovisor";

/// Hard ceiling on the store, so a typo cannot ask for unbounded memory.
const MAX_STORE_CAPACITY: usize = 10_000_000;

/// How spans leave the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    /// OTLP/gRPC endpoint (`http://host:port`).
    pub endpoint: String,
    /// Spans per request at most.
    pub batch_size: usize,
    /// A partial batch is sent after this long.
    pub batch_timeout: Duration,
    /// Spans waiting for export at most.
    pub queue_capacity: usize,
    /// Timeout of one export request.
    pub request_timeout: Duration,
    /// First retry delay; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// How long one batch is retried before it is dropped.
    pub retry_max_elapsed: Duration,
    /// How long [`crate::Correlator::shutdown`] waits for queued spans to be delivered.
    pub shutdown_timeout: Duration,
    /// Which exchanges' spans are exported (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
    pub sampler: Sampler,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            endpoint: DEFAULT_OTLP_ENDPOINT.to_owned(),
            batch_size: 512,
            batch_timeout: Duration::from_millis(1000),
            queue_capacity: 4096,
            request_timeout: Duration::from_secs(10),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            retry_max_elapsed: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            sampler: Sampler::default(),
        }
    }
}

/// The correlator's bounds on what its input makes it do or keep, as flags (and environment
/// variables): the correlator's and `clovisor all-in-one`'s.
#[derive(Debug, Clone, clap::Args)]
pub struct BoundArgs {
    /// Held exchanges a view without a TCP sequence number is compared with at most in the
    /// join; beyond, the view is `ambiguous` and kept on its own (bounds the work one client's
    /// flood of views costs under the join's lock).
    #[arg(long, env = ENV_JOIN_MAX_TIME_CANDIDATES, default_value_t = crate::join::MAX_TIME_CANDIDATES,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub join_max_time_candidates: usize,
    /// Analyzer names that get a value of their own in the analyzer metrics' `analyzer` label;
    /// later ones read `other`.
    #[arg(long, env = ENV_MAX_ANALYZER_LABELS, default_value_t = crate::metrics::MAX_ANALYZER_LABELS,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub max_analyzer_labels: usize,
}

impl BoundArgs {
    /// Sets these bounds in `config`.
    pub fn apply(&self, config: &mut Config) {
        config.join.max_time_candidates = self.join_max_time_candidates;
        config.max_analyzer_labels = self.max_analyzer_labels;
    }
}

/// Everything the correlator library needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Sessions kept for the REST API; the oldest is evicted beyond it.
    pub store_capacity: usize,
    /// `service.name` of exported spans.
    pub service_name: String,
    /// The correlator's own node, when known.
    pub node_name: Option<String>,
    /// Span export; `None` when switched off with `OTEL_TRACES_EXPORTER=none`.
    pub export: Option<ExportConfig>,
    /// The multi-point join.
    pub join: JoinConfig,
    /// Largest session batch accepted from a collector; a larger one ends its stream
    /// (`out of range`) and is counted.
    pub max_message_bytes: usize,
    /// Analyzer names with a label value of their own; later ones are `other`.
    pub max_analyzer_labels: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            store_capacity: 10_000,
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            node_name: None,
            export: Some(ExportConfig::default()),
            join: JoinConfig::default(),
            max_message_bytes: clovisor_proto::hops::MAX_MESSAGE_BYTES,
            max_analyzer_labels: crate::metrics::MAX_ANALYZER_LABELS,
        }
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_env_map(&std::env::vars().collect())
    }

    /// Reads `env` as if it were the environment; empty values count as unset.
    pub fn from_env_map(env: &HashMap<String, String>) -> Result<Self> {
        let get = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let defaults = Config::default();
        let store_capacity = match get(ENV_STORE_CAPACITY) {
            Some(v) => positive(ENV_STORE_CAPACITY, v)?,
            None => defaults.store_capacity,
        };
        if store_capacity > MAX_STORE_CAPACITY {
            return Err(Error::EnvValue {
                name: ENV_STORE_CAPACITY,
                value: store_capacity.to_string(),
                reason: "must be at most 10000000",
            });
        }
        let export = match get(ENV_TRACES_EXPORTER) {
            None | Some("otlp") => Some(export_from(&get)?),
            Some("none") => None,
            Some(other) => {
                return Err(Error::EnvValue {
                    name: ENV_TRACES_EXPORTER,
                    value: other.to_owned(),
                    reason: "expected `otlp` or `none`",
                })
            }
        };
        let mut join = defaults.join;
        if let Some(v) = get(ENV_JOIN_WINDOW) {
            let ms = number(ENV_JOIN_WINDOW, v)?;
            let ms = at_most(
                ENV_JOIN_WINDOW,
                ms,
                MAX_JOIN_WINDOW_MS,
                "must be at most 60000",
            )?;
            join.window = Duration::from_millis(ms as u64);
        }
        if let Some(v) = get(ENV_JOIN_RETENTION) {
            let secs = number(ENV_JOIN_RETENTION, v)?;
            join.retention = Duration::from_secs(at_most(
                ENV_JOIN_RETENTION,
                secs,
                MAX_JOIN_RETENTION_S,
                "must be at most 3600",
            )? as u64);
        }
        if let Some(v) = get(ENV_JOIN_MAX_ENTRIES) {
            let n = positive(ENV_JOIN_MAX_ENTRIES, v)?;
            join.max_entries = at_most(
                ENV_JOIN_MAX_ENTRIES,
                n,
                MAX_JOIN_ENTRIES,
                "must be at most 10000000",
            )?;
        }
        let max_message_bytes = match get(ENV_MAX_MESSAGE_BYTES) {
            Some(v) => {
                let n = number(ENV_MAX_MESSAGE_BYTES, v)?;
                if n < MIN_MESSAGE_BYTES {
                    return Err(Error::EnvValue {
                        name: ENV_MAX_MESSAGE_BYTES,
                        value: v.to_owned(),
                        reason: "must be at least 65536",
                    });
                }
                at_most(
                    ENV_MAX_MESSAGE_BYTES,
                    n,
                    MAX_MESSAGE_BYTES_CEILING,
                    "must be at most 268435456",
                )?
            }
            None => defaults.max_message_bytes,
        };
        Ok(Self {
            join,
            max_message_bytes,
            max_analyzer_labels: defaults.max_analyzer_labels,
            store_capacity,
            service_name: get(ENV_SERVICE_NAME)
                .unwrap_or(DEFAULT_SERVICE_NAME)
                .to_owned(),
            node_name: get(ENV_NODE_NAME).map(str::to_owned),
            export,
        })
    }
}

fn export_from<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<ExportConfig> {
    let mut cfg = ExportConfig::default();
    if let Some(endpoint) = get(ENV_OTLP_TRACES_ENDPOINT).or_else(|| get(ENV_OTLP_ENDPOINT)) {
        // Refuse what tonic could never connect to now, not at the first export.
        endpoint
            .parse::<http::Uri>()
            .map_err(|source| Error::Endpoint {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(Error::EnvValue {
                name: ENV_OTLP_ENDPOINT,
                value: endpoint.to_owned(),
                reason: "expected an http:// or https:// URL",
            });
        }
        cfg.endpoint = endpoint.to_owned();
    }
    if let Some(v) = get(ENV_BSP_MAX_EXPORT_BATCH_SIZE) {
        cfg.batch_size = positive(ENV_BSP_MAX_EXPORT_BATCH_SIZE, v)?;
    }
    if let Some(v) = get(ENV_BSP_MAX_QUEUE_SIZE) {
        cfg.queue_capacity = positive(ENV_BSP_MAX_QUEUE_SIZE, v)?;
    }
    if let Some(v) = get(ENV_BSP_SCHEDULE_DELAY) {
        cfg.batch_timeout = Duration::from_millis(positive(ENV_BSP_SCHEDULE_DELAY, v)? as u64);
    }
    if let Some(v) = get(ENV_OTLP_TIMEOUT) {
        cfg.request_timeout = Duration::from_millis(positive(ENV_OTLP_TIMEOUT, v)? as u64);
    }
    if let Some(v) = get(ENV_EXPORT_RETRY_MAX_ELAPSED) {
        cfg.retry_max_elapsed =
            Duration::from_millis(number(ENV_EXPORT_RETRY_MAX_ELAPSED, v)? as u64);
    }
    if let Some(name) = get(ENV_TRACES_SAMPLER) {
        cfg.sampler = Sampler::from_setting(name, get(ENV_TRACES_SAMPLER_ARG))?;
    }
    // The spec says a batch larger than the queue is clamped to it.
    cfg.batch_size = cfg.batch_size.min(cfg.queue_capacity);
    Ok(cfg)
}

/// `value` of `name` when it is at most `max`; else the error saying so (`reason`).
fn at_most(name: &'static str, value: usize, max: usize, reason: &'static str) -> Result<usize> {
    if value > max {
        return Err(Error::EnvValue {
            name,
            value: value.to_string(),
            reason,
        });
    }
    Ok(value)
}

fn number(name: &'static str, value: &str) -> Result<usize> {
    value.parse::<usize>().map_err(|source| Error::EnvNumber {
        name,
        value: value.to_owned(),
        source,
    })
}

fn positive(name: &'static str, value: &str) -> Result<usize> {
    match number(name, value)? {
        0 => Err(Error::EnvValue {
            name,
            value: value.to_owned(),
            reason: "must be greater than zero",
        }),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_follow_the_otel_spec() {
        let cfg = Config::from_env_map(&HashMap::new()).expect("empty env must be valid");
        let export = cfg.export.expect("export is on by default");
        assert_eq!(export.endpoint, "http://localhost:4317", "default endpoint");
        assert_eq!(cfg.service_name, "clovisor", "default service name");
        assert_eq!(cfg.store_capacity, 10_000, "default store capacity");
    }

    #[test]
    fn reads_standard_variables() {
        let cfg = Config::from_env_map(&env(&[
            (ENV_OTLP_ENDPOINT, "http://jaeger:4317"),
            (ENV_SERVICE_NAME, "tracer"),
            (ENV_BSP_MAX_EXPORT_BATCH_SIZE, "64"),
            (ENV_BSP_SCHEDULE_DELAY, "250"),
            (ENV_BSP_MAX_QUEUE_SIZE, "128"),
            (ENV_STORE_CAPACITY, "42"),
            (ENV_NODE_NAME, "node-a"),
        ]))
        .expect("valid env");
        let export = cfg.export.expect("export on");
        assert_eq!(export.endpoint, "http://jaeger:4317");
        assert_eq!(export.batch_size, 64);
        assert_eq!(export.batch_timeout, Duration::from_millis(250));
        assert_eq!(export.queue_capacity, 128);
        assert_eq!(cfg.service_name, "tracer");
        assert_eq!(cfg.store_capacity, 42);
        assert_eq!(cfg.node_name.as_deref(), Some("node-a"));
    }

    #[test]
    fn join_settings_are_read_and_bounded() {
        let cfg = Config::from_env_map(&env(&[
            (ENV_JOIN_WINDOW, "250"),
            (ENV_JOIN_RETENTION, "5"),
            (ENV_JOIN_MAX_ENTRIES, "100"),
        ]))
        .expect("valid env");
        assert_eq!(
            cfg.join,
            JoinConfig {
                window: Duration::from_millis(250),
                retention: Duration::from_secs(5),
                max_entries: 100,
                ..JoinConfig::default()
            }
        );
        assert_eq!(Config::default().join, JoinConfig::default());
        for (name, value) in [
            (ENV_JOIN_WINDOW, "60001"),
            (ENV_JOIN_WINDOW, "soon"),
            (ENV_JOIN_RETENTION, "3601"),
            (ENV_JOIN_MAX_ENTRIES, "0"),
        ] {
            let err = Config::from_env_map(&env(&[(name, value)]));
            assert!(
                err.as_ref().is_err_and(|e| e.to_string().contains(name)),
                "{name}={value} must be refused naming the variable, got {err:?}"
            );
        }
    }

    #[test]
    fn the_message_limit_is_read_and_bounded() {
        let default = Config::from_env_map(&HashMap::new()).expect("defaults");
        assert_eq!(default.max_message_bytes, 4 << 20);
        let cfg = Config::from_env_map(&env(&[(ENV_MAX_MESSAGE_BYTES, "8388608")]))
            .expect("8 MiB is taken");
        assert_eq!(cfg.max_message_bytes, 8 << 20);
        for bad in ["1000", "1073741824", "lots"] {
            assert!(
                Config::from_env_map(&env(&[(ENV_MAX_MESSAGE_BYTES, bad)])).is_err(),
                "{bad} is refused"
            );
        }
    }

    #[test]
    fn traces_endpoint_wins_and_none_disables() {
        let cfg = Config::from_env_map(&env(&[
            (ENV_OTLP_ENDPOINT, "http://a:4317"),
            (ENV_OTLP_TRACES_ENDPOINT, "http://b:4317"),
        ]))
        .expect("valid env");
        assert_eq!(
            cfg.export.map(|e| e.endpoint).as_deref(),
            Some("http://b:4317"),
            "the traces-specific endpoint must win"
        );
        let off = Config::from_env_map(&env(&[(ENV_TRACES_EXPORTER, "none")])).expect("valid");
        assert!(
            off.export.is_none(),
            "OTEL_TRACES_EXPORTER=none must disable export"
        );
    }

    #[test]
    fn rejects_bad_values_with_the_variable_name() {
        for (name, value) in [
            (ENV_STORE_CAPACITY, "lots"),
            (ENV_STORE_CAPACITY, "0"),
            (ENV_BSP_MAX_QUEUE_SIZE, "-1"),
            (ENV_OTLP_ENDPOINT, "localhost:4317"),
            (ENV_TRACES_EXPORTER, "jaeger"),
        ] {
            let err = Config::from_env_map(&env(&[(name, value)]))
                .expect_err("a bad value must be refused");
            let text = err.to_string();
            assert!(
                text.contains(value) && (text.contains(name) || text.contains("endpoint")),
                "error for {name}={value} should name both, got: {text}"
            );
        }
    }

    #[test]
    fn the_sampler_is_read_as_the_sdk_reads_it() {
        let sampler = |pairs: &[(&str, &str)]| {
            Config::from_env_map(&env(pairs)).map(|c| c.export.map(|e| e.sampler))
        };
        assert_eq!(sampler(&[]).ok().flatten(), Some(Sampler::default()));
        assert_eq!(
            sampler(&[(ENV_TRACES_SAMPLER, "always_on")]).ok().flatten(),
            Some(Sampler::ALWAYS_ON)
        );
        assert_eq!(
            sampler(&[
                (ENV_TRACES_SAMPLER, "parentbased_traceidratio"),
                (ENV_TRACES_SAMPLER_ARG, "0.1"),
            ])
            .ok()
            .flatten(),
            Sampler::from_setting("parentbased_traceidratio", Some("0.1")).ok()
        );
        for (name, value) in [
            (ENV_TRACES_SAMPLER, "jaeger_remote"),
            (ENV_TRACES_SAMPLER_ARG, "2"),
        ] {
            let mut pairs = vec![(name, value)];
            if name == ENV_TRACES_SAMPLER_ARG {
                pairs.push((ENV_TRACES_SAMPLER, "traceidratio"));
            }
            let err = Config::from_env_map(&env(&pairs)).expect_err("refused");
            let text = err.to_string();
            assert!(
                text.contains(name) && text.contains(value),
                "names {name} and {value}: {text}"
            );
        }
    }

    #[test]
    fn batch_is_clamped_to_queue() {
        let cfg = Config::from_env_map(&env(&[
            (ENV_BSP_MAX_EXPORT_BATCH_SIZE, "1000"),
            (ENV_BSP_MAX_QUEUE_SIZE, "10"),
        ]))
        .expect("valid env");
        assert_eq!(cfg.export.map(|e| e.batch_size), Some(10));
    }

    #[test]
    fn the_bound_flags_set_the_join_and_analyzer_caps_within_their_ranges() {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bounds: BoundArgs,
        }
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("correlator").chain(args.iter().copied())).map(
                |cli| {
                    let mut config = Config::default();
                    cli.bounds.apply(&mut config);
                    (config.join.max_time_candidates, config.max_analyzer_labels)
                },
            )
        };
        assert_eq!(
            parse(&[]).expect("defaults"),
            (
                crate::join::MAX_TIME_CANDIDATES,
                crate::metrics::MAX_ANALYZER_LABELS
            )
        );
        assert_eq!(
            parse(&[
                "--join-max-time-candidates",
                "8",
                "--max-analyzer-labels",
                "100"
            ])
            .expect("in range"),
            (8, 100)
        );
        for bad in [
            ["--join-max-time-candidates", "0"],
            ["--join-max-time-candidates", "4097"],
            ["--join-max-time-candidates", "-1"],
            ["--max-analyzer-labels", "0"],
            ["--max-analyzer-labels", "1001"],
            ["--max-analyzer-labels", "many"],
        ] {
            assert!(parse(&bad).is_err(), "{bad:?} must be refused");
        }
    }
}
