//! The Redis source: polls every key once per poll interval (1 s; keyspace notifications are off
//! by default in Redis, polling needs nothing from the server), publishes each changed
//! configuration on a `watch` channel, subscribes to the protocol-plugin channel, and survives
//! Redis going away: the last good configuration stays, reconnects back off up to 5 s, and
//! nothing here ever ends the process.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::keys;
use crate::metrics::ConfigMetrics;
use crate::model::LiveConfig;
use crate::parse::{build, text, Policy, Reject, Rejection, Snapshot};
use crate::{Error, Result};

/// How often the keys are read when nothing else asks.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Bound of one connect or one poll round trip.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// First reconnect delay; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The documented type of each key, in the order they are read.
const KEY_TYPES: [(&str, &str); 9] = [
    (keys::LABELS, "list"),
    (keys::EGRESS_MATCH, "list"),
    (keys::EGRESS_MATCH_MISSPELLED, "list"),
    (keys::JAEGER_COLLECTOR, "string"),
    (keys::JAEGER_AGENT, "string"),
    (keys::OTLP_ENDPOINT, "string"),
    (keys::SNAPLEN, "string"),
    (keys::REDACT_HEADERS, "list"),
    (keys::PROTO_CFG, "hash"),
];

/// Reads the live configuration from one Redis server.
#[derive(Debug, Clone)]
pub struct RedisSource {
    client: redis::Client,
    /// Address for logs, without credentials.
    addr: String,
    metrics: ConfigMetrics,
    poll_interval: Duration,
    policy: Policy,
}

impl RedisSource {
    /// A source for `url` (`redis://host:port[/db]`, or `rediss://` for TLS verified against
    /// the system's roots), counting into `metrics`. Only the URL's syntax is checked here: an
    /// unreachable server is not an error.
    pub fn new(url: &str, metrics: ConfigMetrics) -> Result<Self> {
        Self::with_ca(url, None, metrics)
    }

    /// As [`RedisSource::new`]; a `rediss://` server's certificate is verified against the PEM
    /// CA certificates `ca` when given (rustls), the system's roots otherwise.
    pub fn with_ca(url: &str, ca: Option<Vec<u8>>, metrics: ConfigMetrics) -> Result<Self> {
        let bad_url = |source| Error::Url {
            url: redact_url(url),
            source,
        };
        if url.trim_start().starts_with("rediss://") {
            // The redis crate builds its rustls configuration with the process's default
            // provider: ring, as on the gRPC hops (a provider already installed stays).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = match ca {
            Some(root_cert) if url.trim_start().starts_with("rediss://") => {
                redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                )
                .map_err(bad_url)?
            }
            _ => redis::Client::open(url).map_err(bad_url)?,
        };
        let addr = client.get_connection_info().addr.to_string();
        Ok(Self {
            client,
            addr,
            metrics,
            poll_interval: DEFAULT_POLL_INTERVAL,
            policy: Policy::default(),
        })
    }

    /// Polls every `interval` instead of every second.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Bounds what Redis may ask for by the operator's allow-lists.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Starts following Redis until `shutdown` resolves. Until Redis first answers, the
    /// receiver holds [`LiveConfig::unanswered`]: nothing is traced (fails closed), the rest is
    /// the defaults.
    pub fn spawn(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> (watch::Receiver<LiveConfig>, JoinHandle<()>) {
        let (tx, rx) = watch::channel(LiveConfig::unanswered());
        let handle = tokio::spawn(self.run(tx, shutdown));
        (rx, handle)
    }

    async fn run(self, tx: watch::Sender<LiveConfig>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let (plugin_tx, mut plugin_rx) = mpsc::channel::<String>(16);
        let subscriber = tokio::spawn(subscribe(self.clone(), plugin_tx));
        let mut poller = Poller {
            source: &self,
            conn: None,
            backoff: BACKOFF_MIN,
            ever_connected: false,
            rejected: BTreeSet::new(),
        };
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let plugin = tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => None,
                Some(protocol) = plugin_rx.recv() => Some(protocol),
            };
            if let Some(delay) = poller.poll(&tx).await {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
            if let Some(protocol) = plugin {
                let analyzer = tx
                    .borrow()
                    .proto_cfg
                    .get(&protocol.to_ascii_lowercase())
                    .map(|v| describe_analyzer(v));
                tracing::info!(
                    channel = keys::PROTO_PLUGIN_CHANNEL,
                    %protocol,
                    analyzer = analyzer.as_deref().unwrap_or("(none configured: unload)"),
                    "protocol analyzers reload requested"
                );
                tx.send_modify(|c| c.proto_reloads = c.proto_reloads.wrapping_add(1));
            }
        }
        subscriber.abort();
    }
}

/// The polling side's connection state.
struct Poller<'a> {
    source: &'a RedisSource,
    conn: Option<MultiplexedConnection>,
    backoff: Duration,
    ever_connected: bool,
    /// Rejections of the previous successful poll: only new ones are logged and counted.
    rejected: BTreeSet<Rejection>,
}

impl Poller<'_> {
    /// One poll: connect if needed, read, apply. Returns how long to wait before the next
    /// attempt when Redis could not be reached.
    async fn poll(&mut self, tx: &watch::Sender<LiveConfig>) -> Option<Duration> {
        let addr = &self.source.addr;
        let metrics = &self.source.metrics;
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => match tokio::time::timeout(
                IO_TIMEOUT,
                self.source.client.get_multiplexed_async_connection(),
            )
            .await
            {
                Ok(Ok(c)) => {
                    metrics.connected();
                    tracing::info!(redis = %addr, "connected to the configuration store");
                    self.ever_connected = true;
                    c
                }
                Ok(Err(e)) => return Some(self.failed(&e.to_string())),
                Err(_) => return Some(self.failed("connect timed out")),
            },
        };
        let snap = match tokio::time::timeout(IO_TIMEOUT, read_snapshot(&mut conn)).await {
            Ok(Ok(snap)) => snap,
            Ok(Err(e)) if is_disconnect(&e) => return Some(self.failed(&e.to_string())),
            Ok(Err(e)) => {
                // The server answered but not as expected (e.g. a key changed type between
                // the two round trips): keep the connection, try again next tick.
                tracing::warn!(redis = %addr, error = %e, "configuration read failed; keeping the current configuration");
                self.conn = Some(conn);
                return None;
            }
            Err(_) => return Some(self.failed("read timed out")),
        };
        self.conn = Some(conn);
        self.backoff = BACKOFF_MIN;
        metrics.set_up(true);
        let (config, rejected) = build(&snap, &self.source.policy);
        let rejected: BTreeSet<Rejection> = rejected.into_iter().collect();
        for r in rejected.difference(&self.rejected) {
            tracing::warn!(key = r.key, entry = %r.entry, reason = %r.reason, "configuration entry rejected");
            metrics.rejected(r.key, r.label);
        }
        self.rejected = rejected;
        apply(tx, config, metrics);
        None
    }

    /// Redis did not answer: drop the connection, keep the configuration, back off.
    fn failed(&mut self, error: &str) -> Duration {
        let metrics = &self.source.metrics;
        let was_up = metrics.is_up();
        metrics.set_up(false);
        self.conn = None;
        if was_up {
            tracing::warn!(redis = %self.source.addr, error, "configuration store lost; keeping the last good configuration");
        } else if !self.ever_connected && self.backoff == BACKOFF_MIN {
            tracing::warn!(redis = %self.source.addr, error, "configuration store unreachable; running on defaults until it answers");
        } else {
            tracing::debug!(redis = %self.source.addr, error, "configuration store still unreachable");
        }
        let delay = jitter(self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        delay
    }
}

/// How an analyzer value shows in logs: a path as it is, an inline module by its size only
/// (a module is no log line).
pub fn describe_analyzer(value: &str) -> String {
    if value.starts_with('/') {
        value.to_owned()
    } else {
        format!("(inline module, {} base64 characters)", value.len())
    }
}

/// Publishes `config` if it differs from the current one.
fn apply(tx: &watch::Sender<LiveConfig>, mut config: LiveConfig, metrics: &ConfigMetrics) {
    let changed = tx.send_if_modified(|current| {
        // Reload requests are counted by the subscriber, not read from Redis.
        config.proto_reloads = current.proto_reloads;
        if *current == config {
            return false;
        }
        if current.proto_cfg != config.proto_cfg {
            let protocols: std::collections::BTreeMap<&str, String> = config
                .proto_cfg
                .iter()
                .map(|(p, v)| (p.as_str(), describe_analyzer(v)))
                .collect();
            tracing::info!(
                key = keys::PROTO_CFG,
                ?protocols,
                "protocol analyzers configured"
            );
        }
        *current = config.clone();
        true
    });
    if changed {
        metrics.reloaded();
        let egress: Vec<String> = config
            .egress
            .iter()
            .map(|r| {
                let ip = r
                    .target
                    .ip
                    .map_or_else(|| "any".to_owned(), |ip| ip.to_string());
                match &r.pod_prefix {
                    Some(p) => format!("{ip} port {} (pods {p}*)", r.target.port),
                    None => format!("{ip} port {}", r.target.port),
                }
            })
            .collect();
        tracing::info!(
            labels = ?config.labels,
            ?egress,
            otlp_endpoint = ?config.otlp_endpoint,
            snaplen = ?config.snaplen,
            redacted_headers = ?config.redacted_headers,
            "live configuration applied"
        );
    }
}

/// Reads every key in two round trips: their types, then the values of those of the right type.
async fn read_snapshot(conn: &mut MultiplexedConnection) -> redis::RedisResult<Snapshot> {
    let mut types = redis::pipe();
    for (key, _) in KEY_TYPES {
        types.cmd("TYPE").arg(key);
    }
    let types: Vec<String> = types.query_async(conn).await?;
    let mut snap = Snapshot::default();
    let mut values = redis::pipe();
    let mut wanted = Vec::new();
    for ((key, expected), found) in KEY_TYPES.iter().zip(&types) {
        if found == "none" {
            continue;
        }
        if found != expected {
            snap.wrong_types.push(Rejection::new(
                key,
                "",
                &Reject::WrongType {
                    expected,
                    found: found.clone(),
                },
            ));
            continue;
        }
        match *expected {
            "list" => values.cmd("LRANGE").arg(*key).arg(0).arg(-1),
            "string" => values.cmd("GET").arg(*key),
            _ => values.cmd("HGETALL").arg(*key),
        };
        wanted.push(*key);
    }
    if wanted.is_empty() {
        return Ok(snap);
    }
    let values: Vec<Value> = values.query_async(conn).await?;
    // Entries are read as bytes and made text one by one: one that is not UTF-8 is rejected
    // on its own instead of failing the whole read (which would freeze the configuration).
    let rejected = &mut snap.wrong_types;
    let mut parsed = Snapshot::default();
    fn list(
        key: &'static str,
        value: &Value,
        rejected: &mut Vec<Rejection>,
    ) -> redis::RedisResult<Vec<String>> {
        Ok(Vec::<Vec<u8>>::from_redis_value(value)?
            .into_iter()
            .filter_map(|b| text(key, b, rejected))
            .collect())
    }
    fn string(
        key: &'static str,
        value: &Value,
        rejected: &mut Vec<Rejection>,
    ) -> redis::RedisResult<Option<String>> {
        Ok(Option::<Vec<u8>>::from_redis_value(value)?.and_then(|b| text(key, b, rejected)))
    }
    for (key, value) in wanted.into_iter().zip(values) {
        match key {
            keys::LABELS => parsed.labels = list(key, &value, rejected)?,
            keys::EGRESS_MATCH => parsed.egress = list(key, &value, rejected)?,
            keys::EGRESS_MATCH_MISSPELLED => {
                parsed.egress_misspelled = list(key, &value, rejected)?
            }
            keys::REDACT_HEADERS => parsed.redact_headers = list(key, &value, rejected)?,
            keys::JAEGER_COLLECTOR => parsed.jaeger_collector = string(key, &value, rejected)?,
            keys::JAEGER_AGENT => parsed.jaeger_agent = string(key, &value, rejected)?,
            keys::OTLP_ENDPOINT => parsed.otlp_endpoint = string(key, &value, rejected)?,
            keys::SNAPLEN => parsed.snaplen = string(key, &value, rejected)?,
            _ => {
                parsed.proto_cfg = Vec::<(Vec<u8>, Vec<u8>)>::from_redis_value(&value)?
                    .into_iter()
                    .filter_map(|(field, value)| {
                        Some((text(key, field, rejected)?, text(key, value, rejected)?))
                    })
                    .collect()
            }
        }
    }
    parsed.wrong_types = std::mem::take(&mut snap.wrong_types);
    Ok(parsed)
}

/// Follows `clovisor_proto_plugin_cfg_chan`, reconnecting with backoff; each message (a
/// protocol name) is handed to the poller, which re-reads the hash and logs it.
async fn subscribe(source: RedisSource, out: mpsc::Sender<String>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let pubsub = tokio::time::timeout(IO_TIMEOUT, source.client.get_async_pubsub()).await;
        let mut pubsub = match pubsub {
            Ok(Ok(p)) => p,
            _ => {
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if let Err(e) = pubsub.subscribe(keys::PROTO_PLUGIN_CHANNEL).await {
            tracing::debug!(error = %e, "subscribing to the plugin channel failed");
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        }
        backoff = BACKOFF_MIN;
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            match msg.get_payload::<String>() {
                Ok(protocol) => {
                    tracing::info!(channel = keys::PROTO_PLUGIN_CHANNEL, %protocol, "protocol plugin reload requested");
                    if out.try_send(protocol).is_err() {
                        tracing::debug!("plugin reloads already pending; coalesced");
                    }
                }
                Err(e) => {
                    tracing::warn!(channel = keys::PROTO_PLUGIN_CHANNEL, error = %e, "message that is not text ignored")
                }
            }
        }
        // The stream ended: the connection is gone.
        tokio::time::sleep(jitter(backoff)).await;
    }
}

fn is_disconnect(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// `d` plus up to 25 % so many services do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    d + d.mul_f64(rand::random::<f64>() * 0.25)
}

/// `url` without a password, for error messages.
fn redact_url(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_error_messages() {
        assert_eq!(
            redact_url("redis://:s3cret@redis:6379/0"),
            "redis://***@redis:6379/0"
        );
        assert_eq!(redact_url("redis://redis:6379"), "redis://redis:6379");
    }

    #[test]
    fn backoff_jitter_stays_within_a_quarter() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(4));
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(5),
                "{d:?} outside [4 s, 5 s]"
            );
        }
    }
}
