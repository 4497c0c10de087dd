//! The metric bounds as flags: parsed as a binary parses them (flag and environment), applied,
//! and then holding for the families and label caps made after. Its own test binary: the
//! bounds are process-wide.

use clap::Parser;
use clovisor_runtime::limits::LimitArgs;
use clovisor_runtime::series::BoundedFamily;
use clovisor_runtime::workloads::{label_values_folded, LabelCap};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    limits: LimitArgs,
}

#[test]
fn configured_bounds_hold_and_every_overflow_is_counted() {
    let defaults = Args::try_parse_from(["t"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(defaults.limits.max_series_per_family, 10_000);
    assert_eq!(defaults.limits.max_label_values, 1000);
    assert_eq!(defaults.limits.max_label_value_bytes, 253);
    for bad in [
        ["t", "--max-series-per-family", "1"],
        ["t", "--max-label-values", "0"],
        ["t", "--max-label-value-bytes", "0"],
        ["t", "--max-series-per-family", "-3"],
    ] {
        assert!(
            Args::try_parse_from(bad).is_err(),
            "{bad:?} must be refused"
        );
    }
    let args = Args::try_parse_from([
        "t",
        "--max-series-per-family",
        "5",
        "--max-label-values",
        "3",
        "--max-label-value-bytes",
        "8",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    args.limits.apply();

    let folded = Counter::default();
    let family = BoundedFamily::new(
        Family::<Vec<(String, String)>, Counter>::default(),
        vec![("workload".to_owned(), "overflow".to_owned())],
        folded.clone(),
    );
    for i in 0..20 {
        family.with(&vec![("workload".to_owned(), format!("w{i}"))], |c| {
            c.inc();
        });
    }
    assert_eq!(family.len(), 5, "four label sets and the overflow series");
    assert_eq!(
        folded.get(),
        16,
        "every observation beyond the bound counted"
    );

    let before = label_values_folded().get();
    let cap = LabelCap::default();
    let admitted: Vec<String> = ["a", "b", "c", "d", "a", "much-too-long"]
        .iter()
        .map(|v| cap.admit(v))
        .collect();
    assert_eq!(admitted, ["a", "b", "c", "other", "a", "other"]);
    assert_eq!(
        label_values_folded().get() - before,
        2,
        "the fourth value and the too-long one counted"
    );
}
