//! The counts the flow table makes for every record and every exchange, kept in plain integers
//! while a batch is taken and added to the shared counters once for the batch
//! ([`super::FlowTable::publish_counts`]).
//!
//! Each shared counter is an atomic that a scrape reads from another thread: counted one record
//! at a time, the five or six of a record were as many locked read-modify-writes of lines the
//! allocator put wherever it liked, and in the collector's profile of the split pipeline about
//! one sample in twenty landed on one of them (docs/benchmarks.md, fourteenth round). Counted
//! here, a batch of a thousand records makes a dozen.
//!
//! What is counted here becomes visible when the table publishes it: at the end of each batch,
//! and whenever the table flushes, ticks or is dropped. Between two batches every count is
//! exact. Rare counts (drops, errors, evictions) still go to the shared counters at once.

use std::cell::Cell;

use crate::metrics::{CollectorMetrics, RecordKind};

/// Counts not yet added to the shared counters.
#[derive(Debug, Default)]
pub(super) struct Tally {
    records_received: [Cell<u64>; RecordKind::COUNT],
    records_accepted: Cell<u64>,
    flow_messages_in: Cell<u64>,
    flow_messages_out: Cell<u64>,
    /// Complete, then incomplete.
    sessions_emitted: [Cell<u64>; 2],
}

fn bump(c: &Cell<u64>) {
    c.set(c.get().saturating_add(1));
}

impl Tally {
    /// A record of `kind` arrived.
    pub fn record_received(&self, kind: RecordKind) {
        if let Some(c) = self.records_received.get(kind.slot()) {
            bump(c);
        }
    }

    /// A record was taken into the table.
    pub fn record_accepted(&self) {
        bump(&self.records_accepted);
    }

    /// A message record was taken into a flow.
    pub fn flow_message_in(&self) {
        bump(&self.flow_messages_in);
    }

    /// A message was handed on by its flow.
    pub fn flow_message_out(&self) {
        bump(&self.flow_messages_out);
    }

    /// A session was emitted.
    pub fn session_emitted(&self, incomplete: bool) {
        bump(&self.sessions_emitted[usize::from(incomplete)]);
    }

    /// Adds everything counted since the last time to `metrics`' counters, and starts again.
    pub fn publish(&self, metrics: &CollectorMetrics) {
        for (kind, c) in RecordKind::ALL.into_iter().zip(&self.records_received) {
            if let Some(n) = taken(c) {
                metrics.count_records_received(kind, n);
            }
        }
        if let Some(n) = taken(&self.records_accepted) {
            metrics.count_records_accepted(n);
        }
        if let Some(n) = taken(&self.flow_messages_in) {
            metrics.count_flow_messages_in(n);
        }
        if let Some(n) = taken(&self.flow_messages_out) {
            metrics.count_flow_messages_out(n);
        }
        for (incomplete, c) in [false, true].into_iter().zip(&self.sessions_emitted) {
            if let Some(n) = taken(c) {
                metrics.count_sessions_emitted(incomplete, n);
            }
        }
    }
}

/// `c`'s count, if any, leaving it zero.
fn taken(c: &Cell<u64>) -> Option<u64> {
    let n = c.take();
    (n > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_counts_are_the_counts_made_and_are_made_once() {
        let metrics = CollectorMetrics::default();
        let tally = Tally::default();
        for kind in RecordKind::ALL {
            for _ in 0..=kind.slot() {
                tally.record_received(kind);
            }
        }
        for _ in 0..3 {
            tally.record_accepted();
            tally.flow_message_in();
        }
        tally.flow_message_out();
        tally.session_emitted(false);
        tally.session_emitted(false);
        tally.session_emitted(true);
        assert_eq!(
            metrics.records_received_for("message"),
            0,
            "nothing shows before it is published"
        );
        tally.publish(&metrics);
        tally.publish(&metrics);
        for kind in RecordKind::ALL {
            assert_eq!(
                metrics.records_received_for(kind.as_label()),
                kind.slot() as u64 + 1,
                "{kind:?}"
            );
        }
        assert_eq!(metrics.sessions_emitted_for("complete"), 2);
        assert_eq!(metrics.sessions_emitted_for("incomplete"), 1);
        let text = metrics.exposition();
        for (series, want) in [
            ("clovisor_received_total{stage=\"collector\"}", 28),
            ("clovisor_emitted_total{stage=\"collector\"}", 3),
            ("clovisor_received_total{stage=\"flow_table\"}", 3),
            ("clovisor_emitted_total{stage=\"flow_table\"}", 1),
        ] {
            assert!(
                text.lines().any(|l| l == format!("{series} {want}")),
                "{series} {want} in:\n{text}"
            );
        }
    }
}
