//! Metrics of the live configuration, named in one place. The `key` label only ever takes one
//! of the fixed key names in [`crate::keys::ALL`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `clovisor_config_rejected_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    /// The Redis key the rejected entry came from.
    pub key: &'static str,
    /// Why ([`crate::parse::Reject::label`]: `empty`, `shape`, `invalid_field`, `wrong_type`,
    /// `not_utf8`, `not_allowed`).
    pub reason: &'static str,
}

/// The configuration source's metrics; clone freely (they share their values).
#[derive(Debug, Clone, Default)]
pub struct ConfigMetrics {
    rejected: Family<KeyLabels, Counter>,
    reloads: Counter,
    redis_up: Gauge,
    connects: Counter,
}

impl ConfigMetrics {
    /// Adds the metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "clovisor_config_rejected",
            "Configuration entries rejected (counted once per appearance, not per poll)",
            self.rejected.clone(),
        );
        registry.register(
            "clovisor_config_reloads",
            "Changed configurations applied",
            self.reloads.clone(),
        );
        registry.register(
            "clovisor_config_redis_up",
            "1 while the configuration store answers, else 0",
            self.redis_up.clone(),
        );
        registry.register(
            "clovisor_config_redis_connects",
            "Connections to the configuration store opened",
            self.connects.clone(),
        );
    }

    pub(crate) fn rejected(&self, key: &'static str, reason: &'static str) {
        self.rejected
            .get_or_create(&KeyLabels { key, reason })
            .inc();
    }

    /// Counts an entry of `key` rejected by the service that uses it, past what the parser
    /// checks (a `clovisor_proto_cfg` module the collector cannot load), with the reason
    /// [`REJECTED_BY_SERVICE`].
    pub fn reject(&self, key: &'static str) {
        self.rejected(key, REJECTED_BY_SERVICE);
    }

    pub(crate) fn reloaded(&self) {
        self.reloads.inc();
    }

    pub(crate) fn set_up(&self, up: bool) {
        self.redis_up.set(i64::from(up));
    }

    pub(crate) fn connected(&self) {
        self.connects.inc();
    }

    /// Rejections counted for `key` so far, whatever the reason.
    pub fn rejected_count(&self, key: &'static str) -> u64 {
        crate::parse::Reject::LABELS
            .iter()
            .chain(&[REJECTED_BY_SERVICE])
            .filter_map(|&reason| {
                self.rejected
                    .get(&KeyLabels { key, reason })
                    .map(|c| c.get())
            })
            .sum()
    }

    /// Rejections counted for `key` and `reason` so far.
    pub fn rejected_for(&self, key: &'static str, reason: &'static str) -> u64 {
        self.rejected
            .get_or_create(&KeyLabels { key, reason })
            .get()
    }

    /// Reloads applied so far.
    pub fn reload_count(&self) -> u64 {
        self.reloads.get()
    }

    /// Whether Redis answered the last poll.
    pub fn is_up(&self) -> bool {
        self.redis_up.get() == 1
    }
}

/// The `reason` of an entry the parser took but the service using it could not (a
/// `clovisor_proto_cfg` module that does not load as WebAssembly).
pub const REJECTED_BY_SERVICE: &str = "invalid_module";
