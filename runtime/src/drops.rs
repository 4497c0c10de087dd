//! Loss accounting shared by every stage of the pipeline.
//!
//! - `clovisor_dropped_total{stage,reason}`: the one family every stage counts its losses in,
//!   so a user finds every drop in one place;
//! - `clovisor_received_total{stage}` / `clovisor_emitted_total{stage}`: what a stage took in and
//!   passed on;
//! - `clovisor_buffered{stage}`: what a stage holds right now (unacknowledged items).
//!
//! For every stage that counts `received`, once traffic has settled:
//! `received = emitted + sum(dropped{stage}) + buffered` exactly (see `docs/metrics.md`, Loss).
//! Register once per registry; clones share the counts.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `clovisor_dropped_total`; both values come from fixed sets in the code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// Pipeline stage that dropped (`ring_buffer`, `probe_queue`, `uplink`, `export`, …).
    pub stage: &'static str,
    /// Why (`full`, `shutdown`, `queue_full`, …).
    pub reason: &'static str,
}

/// Labels of `clovisor_received_total`, `clovisor_emitted_total` and `clovisor_buffered`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// Pipeline stage; a fixed name from the code.
    pub stage: &'static str,
}

/// Labels of `clovisor_metric_series_overflow_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetricLabel {
    /// The bounded family's name as exposed (`clovisor_http_requests_total`, …).
    pub metric: &'static str,
}

/// Handle on the shared loss accounting.
#[derive(Debug, Clone, Default)]
pub struct Drops {
    dropped: Family<DropLabels, Counter>,
    series_overflow: Family<MetricLabel, Counter>,
    received: Family<StageLabels, Counter>,
    emitted: Family<StageLabels, Counter>,
    buffered: Family<StageLabels, Gauge>,
}

impl Drops {
    /// Adds `n` drops of `stage` for `reason`.
    pub fn count(&self, stage: &'static str, reason: &'static str, n: u64) {
        if n > 0 {
            self.dropped
                .get_or_create(&DropLabels { stage, reason })
                .inc_by(n);
        }
    }

    /// Adds `n` items taken in by `stage`.
    pub fn received(&self, stage: &'static str, n: u64) {
        self.received
            .get_or_create(&StageLabels { stage })
            .inc_by(n);
    }

    /// The counter of items `stage` takes in, to keep and add to without a look-up per item
    /// (it counts into the same series as [`Drops::received`]).
    pub fn received_counter(&self, stage: &'static str) -> Counter {
        self.received.get_or_create(&StageLabels { stage }).clone()
    }

    /// The counter of items `stage` passes on, like [`Drops::received_counter`].
    pub fn emitted_counter(&self, stage: &'static str) -> Counter {
        self.emitted.get_or_create(&StageLabels { stage }).clone()
    }

    /// Adds `n` items passed on by `stage`.
    pub fn emitted(&self, stage: &'static str, n: u64) {
        self.emitted.get_or_create(&StageLabels { stage }).inc_by(n);
    }

    /// The gauge of items `stage` holds now, to move up and down as items come and go rather
    /// than set (it is the series [`Drops::set_buffered`] sets).
    pub fn buffered_gauge(&self, stage: &'static str) -> Gauge {
        self.buffered.get_or_create(&StageLabels { stage }).clone()
    }

    /// Items `stage` holds now.
    pub fn buffered_count(&self, stage: &'static str) -> i64 {
        self.buffered.get_or_create(&StageLabels { stage }).get()
    }

    /// Sets the items `stage` holds now (neither passed on nor dropped yet).
    pub fn set_buffered(&self, stage: &'static str, n: u64) {
        self.buffered
            .get_or_create(&StageLabels { stage })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The counter of observations a bounded metric family (`crate::series`) folded into its
    /// overflow series because it was full: `clovisor_metric_series_overflow_total{metric}`.
    pub fn series_overflow(&self, metric: &'static str) -> Counter {
        self.series_overflow
            .get_or_create(&MetricLabel { metric })
            .clone()
    }

    /// Drops counted so far for `stage` and `reason`.
    pub fn get(&self, stage: &'static str, reason: &'static str) -> u64 {
        self.dropped
            .get_or_create(&DropLabels { stage, reason })
            .get()
    }

    /// Items `stage` received so far.
    pub fn received_count(&self, stage: &'static str) -> u64 {
        self.received.get_or_create(&StageLabels { stage }).get()
    }

    /// Items `stage` emitted so far.
    pub fn emitted_count(&self, stage: &'static str) -> u64 {
        self.emitted.get_or_create(&StageLabels { stage }).get()
    }

    /// Registers the four families and `clovisor_metric_series_overflow_total` in `registry`;
    /// do it once per registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "clovisor_metric_label_values_folded",
            "Label values from outside the process read `other` because their label had its most distinct values (--max-label-values) or the value was too long (--max-label-value-bytes)",
            crate::workloads::label_values_folded(),
        );
        registry.register(
            "clovisor_metric_series_overflow",
            "Observations folded into a metric family's overflow series because the family held its most series",
            self.series_overflow.clone(),
        );
        registry.register(
            "clovisor_dropped",
            "Data dropped, by pipeline stage and reason",
            self.dropped.clone(),
        );
        registry.register(
            "clovisor_received",
            "Items taken in, by pipeline stage",
            self.received.clone(),
        );
        registry.register(
            "clovisor_emitted",
            "Items passed on, by pipeline stage",
            self.emitted.clone(),
        );
        registry.register(
            "clovisor_buffered",
            "Items a pipeline stage holds now, neither passed on nor dropped",
            self.buffered.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_four_families_are_registered_with_their_stage() {
        let d = Drops::default();
        d.received("uplink", 5);
        d.emitted("uplink", 3);
        d.count("uplink", "shutdown", 1);
        d.set_buffered("uplink", 1);
        let mut registry = Registry::default();
        d.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for line in [
            r#"clovisor_received_total{stage="uplink"} 5"#,
            r#"clovisor_emitted_total{stage="uplink"} 3"#,
            r#"clovisor_dropped_total{stage="uplink",reason="shutdown"} 1"#,
            r#"clovisor_buffered{stage="uplink"} 1"#,
        ] {
            assert!(text.contains(line), "expected {line:?} in:\n{text}");
        }
        assert_eq!(
            (d.received_count("uplink"), d.emitted_count("uplink")),
            (5, 3),
            "received/emitted getters"
        );
        d.received_counter("uplink").inc();
        d.emitted_counter("uplink").inc_by(2);
        assert_eq!(
            (d.received_count("uplink"), d.emitted_count("uplink")),
            (6, 5),
            "handles count into the same series"
        );
    }
}
