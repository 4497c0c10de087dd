//! Bounded workload labels, shared by the flow metrics of the collector (connections, RTT) and
//! the correlator (exchanges, bytes, retransmits), so both name a pair of workloads alike.
//!
//! Namespaces and workloads are free-form: each is capped at [`max_label_values`] distinct
//! values (default [`MAX_LABEL_VALUES`]) for the life of the process, beyond which new values
//! read `other`; a value longer than [`crate::series::max_label_value_bytes`] (default
//! [`MAX_LABEL_VALUE_BYTES`]) reads `other` too — each counted in
//! `clovisor_metric_label_values_folded_total`; an empty value reads `unknown`; an end that is
//! not a monitored pod reads [`OUTSIDE`]. The families these labels go into are bounded in
//! series as well ([`crate::series`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;

pub use crate::series::MAX_LABEL_VALUE_BYTES;

/// Label value of a flow's end that is not a monitored pod.
pub const OUTSIDE: &str = "outside";

/// Distinct values a free-form label (`namespace`, `workload`) may take by default
/// ([`max_label_values`], `--max-label-values`).
pub const MAX_LABEL_VALUES: usize = 1000;

static LABEL_VALUES_LIMIT: AtomicUsize = AtomicUsize::new(MAX_LABEL_VALUES);

/// Values read `other` because their label had its most distinct values or the value was too
/// long: `clovisor_metric_label_values_folded_total` (registered with the loss accounting).
static FOLDED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Distinct values a free-form label may take in caps made from now on.
pub fn max_label_values() -> usize {
    LABEL_VALUES_LIMIT.load(Ordering::Relaxed)
}

/// Sets [`max_label_values`] (at least 1); call it at start, before any metric is made.
pub fn set_max_label_values(limit: usize) {
    LABEL_VALUES_LIMIT.store(limit.max(1), Ordering::Relaxed);
}

/// The process's count of label values read `other` (see [`LabelCap::admit`]).
pub fn label_values_folded() -> Counter {
    FOLDED.clone()
}

/// Caps the distinct values of one label.
#[derive(Debug)]
pub struct LabelCap {
    seen: Mutex<HashSet<String>>,
    limit: usize,
    value_bytes: usize,
}

impl Default for LabelCap {
    /// A cap at the process's limits as they are now ([`max_label_values`],
    /// [`crate::series::max_label_value_bytes`]).
    fn default() -> Self {
        Self {
            seen: Mutex::default(),
            limit: max_label_values(),
            value_bytes: crate::series::max_label_value_bytes(),
        }
    }
}

impl LabelCap {
    /// `value` while fewer than the cap's most values were seen (or it was seen before), else
    /// `other`; `other` too when longer than its most bytes; `unknown` when empty. Every
    /// `other` is counted ([`label_values_folded`]).
    pub fn admit(&self, value: &str) -> String {
        if value.is_empty() {
            return "unknown".to_owned();
        }
        if value.len() > self.value_bytes {
            FOLDED.inc();
            return "other".to_owned();
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() < self.limit {
            seen.insert(value.to_owned());
            return value.to_owned();
        }
        FOLDED.inc();
        "other".to_owned()
    }
}

/// One end of a flow as the metadata knows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct End<'a> {
    /// Pod name; empty when the address is no monitored pod.
    pub pod: &'a str,
    /// Kubernetes namespace.
    pub namespace: &'a str,
    /// Owning workload; empty when the pod has none (the pod name stands in).
    pub workload: &'a str,
}

/// Labels of the workload-to-workload flow metrics (`clovisor_flow_*`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    /// Client namespace, `outside` when the client is not a monitored pod.
    pub client_namespace: String,
    /// Client workload (else pod), `outside` when not a monitored pod.
    pub client_workload: String,
    /// Server namespace, `outside` when the server is not a monitored pod.
    pub server_namespace: String,
    /// Server workload (else pod), `outside` when not a monitored pod.
    pub server_workload: String,
}

/// The capped namespace and workload label values of one process.
#[derive(Debug, Default)]
pub struct Workloads {
    namespaces: LabelCap,
    workloads: LabelCap,
}

impl Workloads {
    /// A namespace label value.
    pub fn namespace(&self, namespace: &str) -> String {
        self.namespaces.admit(namespace)
    }

    /// A workload label value: the workload, else the pod.
    pub fn workload(&self, end: End<'_>) -> String {
        self.workloads.admit(if end.workload.is_empty() {
            end.pod
        } else {
            end.workload
        })
    }

    /// `(namespace, workload)` of one end; [`OUTSIDE`] twice when it is no monitored pod.
    pub fn end(&self, end: Option<End<'_>>) -> (String, String) {
        match end {
            Some(e) if !e.pod.is_empty() => (self.namespace(e.namespace), self.workload(e)),
            _ => (OUTSIDE.to_owned(), OUTSIDE.to_owned()),
        }
    }

    /// The labels of the flow from `client` to `server`.
    pub fn flow(&self, client: Option<End<'_>>, server: Option<End<'_>>) -> FlowLabels {
        let (client_namespace, client_workload) = self.end(client);
        let (server_namespace, server_workload) = self.end(server);
        FlowLabels {
            client_namespace,
            client_workload,
            server_namespace,
            server_workload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_form_labels_are_capped() {
        let cap = LabelCap::default();
        for i in 0..MAX_LABEL_VALUES {
            assert_eq!(cap.admit(&format!("w{i}")), format!("w{i}"));
        }
        assert_eq!(
            cap.admit("one-too-many"),
            "other",
            "beyond the cap values fold to other"
        );
        assert_eq!(cap.admit("w5"), "w5", "known values stay");
        let fresh = LabelCap::default();
        let long = "x".repeat(MAX_LABEL_VALUE_BYTES + 1);
        assert_eq!(
            fresh.admit(&long),
            "other",
            "an over-long value is no label"
        );
        let longest = "y".repeat(MAX_LABEL_VALUE_BYTES);
        assert_eq!(
            fresh.admit(&longest),
            longest,
            "the longest allowed is kept"
        );
        assert_eq!(cap.admit(""), "unknown");
    }

    #[test]
    fn ends_are_workloads_pods_or_outside() {
        let w = Workloads::default();
        let cart = End {
            pod: "cart-7d9f",
            namespace: "shop",
            workload: "cart",
        };
        let bare = End {
            pod: "debug",
            namespace: "",
            workload: "",
        };
        let labels = w.flow(Some(cart), Some(bare));
        assert_eq!(
            (
                labels.client_namespace.as_str(),
                labels.client_workload.as_str()
            ),
            ("shop", "cart")
        );
        assert_eq!(
            (
                labels.server_namespace.as_str(),
                labels.server_workload.as_str()
            ),
            ("unknown", "debug"),
            "no owner: the pod names it"
        );
        let out = w.flow(Some(cart), None);
        assert_eq!(out.server_workload, OUTSIDE);
        assert_eq!(w.end(Some(End::default())).0, OUTSIDE, "no pod: outside");
    }
}
