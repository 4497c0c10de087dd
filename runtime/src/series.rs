//! Bounds on the number of series of a metric family whose label values come from outside the
//! process (the wire, the Kubernetes API, Redis configuration).
//!
//! Capping each label's values ([`crate::workloads`]) bounds a family only by the product of the
//! caps, which for four free labels is far beyond what Prometheus holds. A [`BoundedFamily`]
//! admits at most [`MAX_SERIES_PER_FAMILY`] series, the last one reserved for the family's
//! overflow label set (every free label `overflow`): a new label set arriving when the family is
//! full is counted into that series instead, and each such observation is counted in
//! `clovisor_metric_series_overflow_total{metric}` ([`crate::drops::Drops::series_overflow`]).
//!
//! The check runs only when a label set has no series yet: an existing series is found with the
//! family's read lock and no allocation, as before.

use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};

/// Series a bounded family holds at most, its overflow series included, unless the process set
/// another bound ([`set_max_series_per_family`], `--max-series-per-family`).
pub const MAX_SERIES_PER_FAMILY: usize = 10_000;

static SERIES_LIMIT: AtomicUsize = AtomicUsize::new(MAX_SERIES_PER_FAMILY);
static LABEL_VALUE_BYTES_LIMIT: AtomicUsize = AtomicUsize::new(MAX_LABEL_VALUE_BYTES);

/// The series bound of families made from now on (at least 2: one series and the overflow).
pub fn max_series_per_family() -> usize {
    SERIES_LIMIT.load(Ordering::Relaxed)
}

/// Sets the series bound of the families made from now on (at least 2); call it at start,
/// before any metric is made.
pub fn set_max_series_per_family(limit: usize) {
    SERIES_LIMIT.store(limit.max(2), Ordering::Relaxed);
}

/// Bytes a label value from outside the process may have (default [`MAX_LABEL_VALUE_BYTES`]).
pub fn max_label_value_bytes() -> usize {
    LABEL_VALUE_BYTES_LIMIT.load(Ordering::Relaxed)
}

/// Sets [`max_label_value_bytes`] (at least 1); call it at start.
pub fn set_max_label_value_bytes(limit: usize) {
    LABEL_VALUE_BYTES_LIMIT.store(limit.max(1), Ordering::Relaxed);
}

/// Label value of the overflow series' free labels.
pub const OVERFLOW: &str = "overflow";

/// Bytes a label value from outside the process may have by default ([`max_label_value_bytes`]);
/// longer values are not admitted ([`crate::workloads::LabelCap`] reads them `other`).
/// Kubernetes names are at most 253.
pub const MAX_LABEL_VALUE_BYTES: usize = 253;

/// One series of a [`BoundedFamily`], to keep and count into.
#[derive(Debug, Clone)]
pub struct SeriesHandle<M> {
    metric: M,
    /// The overflow counter, when this handle stands for a label set folded into the overflow
    /// series.
    folded: Option<Counter>,
}

impl<M> SeriesHandle<M> {
    /// The series to count into; when the label set was folded into the overflow series, the
    /// observation is counted as folded too.
    pub fn record(&self) -> &M {
        if let Some(folded) = &self.folded {
            folded.inc();
        }
        &self.metric
    }

    /// Whether the label set was folded into the overflow series.
    pub fn is_folded(&self) -> bool {
        self.folded.is_some()
    }
}

#[derive(Debug, Default)]
struct Created {
    series: usize,
    overflow: bool,
}

/// A metric family holding at most [`max_series_per_family`] series (as it was when made).
#[derive(Debug)]
pub struct BoundedFamily<S, M, C = fn() -> M> {
    family: Family<S, M, C>,
    overflow: S,
    folded: Counter,
    limit: usize,
    /// Series created through this handle (the overflow series included), under a lock so the
    /// count checked is the count created.
    created: Mutex<Created>,
}

impl<S, M, C> BoundedFamily<S, M, C>
where
    S: Clone + Hash + Eq,
    M: Clone,
    C: MetricConstructor<M>,
{
    /// Bounds `family`: label sets beyond the bound count into `overflow`, each observation of
    /// them into `folded` (from [`crate::drops::Drops::series_overflow`]).
    pub fn new(family: Family<S, M, C>, overflow: S, folded: Counter) -> Self {
        Self {
            family,
            overflow,
            folded,
            limit: max_series_per_family(),
            created: Mutex::default(),
        }
    }

    /// The series of `labels`, or the overflow series when `labels` has none and the family is
    /// full. Finding an existing series allocates nothing.
    pub fn handle(&self, labels: &S) -> SeriesHandle<M> {
        if let Some(metric) = self.family.get(labels) {
            return SeriesHandle {
                metric: metric.clone(),
                folded: None,
            };
        }
        let mut created = self.created.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(metric) = self.family.get(labels) {
            return SeriesHandle {
                metric: metric.clone(),
                folded: None,
            };
        }
        let is_overflow = *labels == self.overflow;
        // One slot stays free for the overflow series until it exists.
        let room = if created.overflow {
            self.limit
        } else {
            self.limit.saturating_sub(1)
        };
        if is_overflow || created.series < room {
            created.series += 1;
            created.overflow |= is_overflow;
            return SeriesHandle {
                metric: self.family.get_or_create_owned(labels),
                folded: None,
            };
        }
        if !created.overflow {
            created.series += 1;
            created.overflow = true;
        }
        SeriesHandle {
            metric: self.family.get_or_create_owned(&self.overflow),
            folded: Some(self.folded.clone()),
        }
    }

    /// Counts into the series of `labels` (see [`BoundedFamily::handle`]) with `f`.
    pub fn with(&self, labels: &S, f: impl FnOnce(&M)) {
        f(self.handle(labels).record());
    }

    /// The family, to register (clones share the series).
    pub fn family(&self) -> Family<S, M, C>
    where
        C: Clone,
    {
        self.family.clone()
    }

    /// Series created so far (the overflow series included).
    pub fn len(&self) -> usize {
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .series
    }

    /// Whether no series was created yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Observations folded into the overflow series so far.
    pub fn folded(&self) -> u64 {
        self.folded.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::EncodeLabelSet;

    #[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Labels {
        value: String,
    }

    #[test]
    fn a_flood_of_label_sets_stays_at_the_bound_and_is_counted() {
        let folded = Counter::default();
        let family = BoundedFamily::new(
            Family::<Labels, Counter>::default(),
            Labels {
                value: OVERFLOW.to_owned(),
            },
            folded.clone(),
        );
        let flood = MAX_SERIES_PER_FAMILY + 500;
        for i in 0..flood {
            family.with(
                &Labels {
                    value: format!("v{i}"),
                },
                |c| {
                    c.inc();
                },
            );
        }
        assert_eq!(
            family.len(),
            MAX_SERIES_PER_FAMILY,
            "series beyond the bound"
        );
        // The bound less the overflow series' slot were admitted; the rest folded.
        let folded_sets = (flood - (MAX_SERIES_PER_FAMILY - 1)) as u64;
        assert_eq!(family.folded(), folded_sets);
        assert_eq!(folded.get(), folded_sets, "the shared counter counts them");
        let overflow = Labels {
            value: OVERFLOW.to_owned(),
        };
        let handle = family.handle(&Labels {
            value: "v0".to_owned(),
        });
        assert!(!handle.is_folded(), "an admitted set keeps its series");
        let late = family.handle(&Labels {
            value: "late".to_owned(),
        });
        assert!(late.is_folded(), "a new set beyond the bound is folded");
        late.record().inc();
        assert_eq!(family.folded(), folded_sets + 1, "each observation counts");
        assert_eq!(
            family.family().get_or_create(&overflow).get(),
            folded_sets + 1,
            "folded observations land in the overflow series"
        );
        assert_eq!(family.len(), MAX_SERIES_PER_FAMILY);
    }
}
