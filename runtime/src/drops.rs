//! `clovisor_dropped_total{stage,reason}`: the one family every stage counts its losses in, so a
//! user finds every drop in one place. Register it once per registry; clones share the counts.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of `clovisor_dropped_total`; both values come from fixed sets in the code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// Pipeline stage that dropped (`ring_buffer`, `probe_queue`, `uplink`, `export`, …).
    pub stage: &'static str,
    /// Why (`full`, `shutdown`, `queue_full`, …).
    pub reason: &'static str,
}

/// Handle on the shared drop counters.
#[derive(Debug, Clone, Default)]
pub struct Drops(Family<DropLabels, Counter>);

impl Drops {
    /// Adds `n` drops of `stage` for `reason`.
    pub fn count(&self, stage: &'static str, reason: &'static str, n: u64) {
        if n > 0 {
            self.0
                .get_or_create(&DropLabels { stage, reason })
                .inc_by(n);
        }
    }

    /// Drops counted so far for `stage` and `reason`.
    pub fn get(&self, stage: &'static str, reason: &'static str) -> u64 {
        self.0.get_or_create(&DropLabels { stage, reason }).get()
    }

    /// Registers `clovisor_dropped_total` in `registry`; do it once per registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "clovisor_dropped",
            "Data dropped, by pipeline stage and reason",
            self.0.clone(),
        );
    }
}
