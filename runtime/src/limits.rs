//! Bounds on what input from outside the process can make a process keep in its metrics, as
//! flags every service binary accepts ([`LimitArgs`], in [`crate::process::ServiceArgs`]).
//! Applied once at start, before any metric is made.

/// Environment variable of `--max-series-per-family`.
pub const ENV_MAX_SERIES_PER_FAMILY: &str = "CLOVISOR_MAX_SERIES_PER_FAMILY";
/// Environment variable of `--max-label-values`.
pub const ENV_MAX_LABEL_VALUES: &str = "CLOVISOR_MAX_LABEL_VALUES";
/// Environment variable of `--max-label-value-bytes`.
pub const ENV_MAX_LABEL_VALUE_BYTES: &str = "CLOVISOR_MAX_LABEL_VALUE_BYTES";

/// The metric bounds (docs/configuration.md, "Every binary").
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Series a metric family whose labels come from outside the process holds at most, its
    /// overflow series included; beyond, new label sets count into the overflow series
    /// (`clovisor_metric_series_overflow_total{metric}`).
    #[arg(
        long,
        env = ENV_MAX_SERIES_PER_FAMILY,
        default_value_t = crate::series::MAX_SERIES_PER_FAMILY,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=10_000_000)
    )]
    pub max_series_per_family: usize,
    /// Distinct values a free-form label (namespace, workload) takes at most; beyond, new values
    /// read `other` (`clovisor_metric_label_values_folded_total`).
    #[arg(
        long,
        env = ENV_MAX_LABEL_VALUES,
        default_value_t = crate::workloads::MAX_LABEL_VALUES,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000)
    )]
    pub max_label_values: usize,
    /// Bytes a label value from outside the process has at most; longer ones read `other`
    /// (counted likewise).
    #[arg(
        long,
        env = ENV_MAX_LABEL_VALUE_BYTES,
        default_value_t = crate::series::MAX_LABEL_VALUE_BYTES,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65_536)
    )]
    pub max_label_value_bytes: usize,
}

impl Default for LimitArgs {
    fn default() -> Self {
        Self {
            max_series_per_family: crate::series::MAX_SERIES_PER_FAMILY,
            max_label_values: crate::workloads::MAX_LABEL_VALUES,
            max_label_value_bytes: crate::series::MAX_LABEL_VALUE_BYTES,
        }
    }
}

impl LimitArgs {
    /// Makes these the process's bounds for the metrics made from now on.
    pub fn apply(&self) {
        crate::series::set_max_series_per_family(self.max_series_per_family);
        crate::workloads::set_max_label_values(self.max_label_values);
        crate::series::set_max_label_value_bytes(self.max_label_value_bytes);
    }
}
