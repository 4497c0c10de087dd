//! Every metric the collector exports, in one place. Labels are bounded enums of `&'static str`,
//! never addresses, probe ids or URLs.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// A label set with one bounded label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Record kind: `message`, `flow_end`, `endpoint`, `stats`, `empty`.
    pub kind: &'static str,
}

/// A label set naming a bounded reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why something happened; one of a fixed set per metric.
    pub reason: &'static str,
}

/// A label set for emitted sessions.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `complete` or `incomplete`.
    pub outcome: &'static str,
}

/// The collector's metrics, shared by the service, the flow table and the flusher.
#[derive(Debug, Default)]
pub struct CollectorMetrics {
    /// Records received, by kind.
    pub records_received: Family<KindLabel, Counter>,
    /// Sessions emitted, by outcome.
    pub sessions_emitted: Family<OutcomeLabel, Counter>,
    /// Messages that could not be decoded, by reason (see `DecodeError::as_label`).
    pub decode_errors: Family<ReasonLabel, Counter>,
    /// Flows dropped from the table before they ended, by reason (`capacity`, `idle`,
    /// `probe_restart`).
    pub flows_evicted: Family<ReasonLabel, Counter>,
    /// Batches received again after a reconnect and acknowledged without processing.
    pub batches_duplicate: Counter,
    /// Batches processed.
    pub batches_processed: Counter,
    /// Messages dropped before pairing, by reason (`duplicate`, `no_direction`, `no_flow_key`,
    /// `response_without_request`, `gap`).
    pub messages_dropped: Family<ReasonLabel, Counter>,
    /// Flows not decoded because their protocol is not supported yet.
    pub flows_unsupported: Counter,
    /// Probes that restarted (a new probe id for a known node).
    pub probe_restarts: Counter,
    /// Endpoint updates ignored because the per-probe table was full.
    pub endpoints_dropped: Counter,
}

impl CollectorMetrics {
    /// Fresh, zeroed metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers every metric under the `clovisor_collector_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("clovisor_collector");
        r.register(
            "records_received",
            "Records received from probes, by kind",
            self.records_received.clone(),
        );
        r.register(
            "sessions_emitted",
            "Decoded sessions emitted, by outcome",
            self.sessions_emitted.clone(),
        );
        r.register(
            "decode_errors",
            "Messages that could not be decoded, by reason",
            self.decode_errors.clone(),
        );
        r.register(
            "flows_evicted",
            "Flows dropped before their end, by reason",
            self.flows_evicted.clone(),
        );
        r.register(
            "batches_duplicate",
            "Re-sent batches acknowledged without processing",
            self.batches_duplicate.clone(),
        );
        r.register(
            "batches_processed",
            "Record batches processed",
            self.batches_processed.clone(),
        );
        r.register(
            "messages_dropped",
            "Messages dropped before pairing, by reason",
            self.messages_dropped.clone(),
        );
        r.register(
            "flows_unsupported",
            "Flows skipped because their protocol is not decoded yet",
            self.flows_unsupported.clone(),
        );
        r.register(
            "probe_restarts",
            "Probes seen restarting (new probe id for a known node)",
            self.probe_restarts.clone(),
        );
        r.register(
            "endpoints_dropped",
            "Endpoint updates ignored because the table was full",
            self.endpoints_dropped.clone(),
        );
    }

    /// Counts a decode error.
    pub fn decode_error(&self, reason: &'static str) {
        self.decode_errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a dropped message.
    pub fn message_dropped(&self, reason: &'static str) {
        self.messages_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts an evicted flow.
    pub fn flow_evicted(&self, reason: &'static str) {
        self.flows_evicted
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Current value of `decode_errors{reason}`.
    pub fn decode_errors_for(&self, reason: &'static str) -> u64 {
        self.decode_errors
            .get_or_create(&ReasonLabel { reason })
            .get()
    }

    /// Current value of `flows_evicted{reason}`.
    pub fn flows_evicted_for(&self, reason: &'static str) -> u64 {
        self.flows_evicted
            .get_or_create(&ReasonLabel { reason })
            .get()
    }

    /// Current value of `messages_dropped{reason}`.
    pub fn messages_dropped_for(&self, reason: &'static str) -> u64 {
        self.messages_dropped
            .get_or_create(&ReasonLabel { reason })
            .get()
    }

    /// Current value of `sessions_emitted{outcome}`.
    pub fn sessions_emitted_for(&self, outcome: &'static str) -> u64 {
        self.sessions_emitted
            .get_or_create(&OutcomeLabel { outcome })
            .get()
    }

    /// Current value of `records_received{kind}`.
    pub fn records_received_for(&self, kind: &'static str) -> u64 {
        self.records_received
            .get_or_create(&KindLabel { kind })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_names_are_prefixed() {
        let m = CollectorMetrics::new();
        m.decode_error("malformed");
        m.batches_duplicate.inc();
        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).expect("encoding to a String");
        assert!(
            text.contains("clovisor_collector_decode_errors_total{reason=\"malformed\"} 1"),
            "decode error counter missing from:\n{text}"
        );
        assert!(
            text.contains("clovisor_collector_batches_duplicate_total 1"),
            "duplicate counter missing from:\n{text}"
        );
    }
}
