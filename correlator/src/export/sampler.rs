//! Which exchanges' spans are exported: OpenTelemetry's standard samplers, chosen as an SDK
//! chooses them (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
//!
//! The default, `parentbased_always_on`, follows the mesh: an exchange that carried a trace
//! context on the wire (W3C `traceparent`, B3) is exported when that context says sampled, so
//! when Envoy or an application samples a trace our spans join it, and when it does not we add
//! no orphan spans under a parent Jaeger never receives — nor pay for encoding and sending them.
//! An exchange without a context starts its own trace and is exported (`always_on` at the root).
//! The decision is the trace's: both spans of an exchange (its own and the caller's CLIENT span)
//! share it, and a ratio decision depends on the trace id alone, so every correlator replica
//! decides alike. Metrics, the REST API and the analytics see every exchange whatever the sampler
//! says; spans it leaves out are counted (`clovisor_correlator_spans_unsampled_total`).

use crate::ids::TraceId;
use crate::record::CorrelatedSession;

/// The sampler's name variable, as in the OpenTelemetry SDK configuration.
pub const ENV_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
/// The sampler's argument: the ratio of the `traceidratio` samplers.
pub const ENV_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";

/// What decides a trace without a parent context (and, for `always_*` and `traceidratio`
/// without `parentbased_`, every trace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    On,
    Off,
    /// Sampled when the trace id's last 8 bytes, big-endian, are below this.
    Below(u64),
}

/// A sampling decision rule for exported spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampler {
    root: Root,
    /// Whether a parent context from the wire decides instead of `root`.
    parent_based: bool,
}

impl Default for Sampler {
    /// `parentbased_always_on`, the OpenTelemetry default.
    fn default() -> Self {
        Self {
            root: Root::On,
            parent_based: true,
        }
    }
}

/// Why a sampler setting was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SamplerError {
    /// `OTEL_TRACES_SAMPLER` names no sampler this exporter has.
    #[error(
        "{ENV_TRACES_SAMPLER}={0}: expected always_on, always_off, traceidratio, \
         parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
    )]
    Unknown(String),
    /// `OTEL_TRACES_SAMPLER_ARG` is not a ratio.
    #[error("{ENV_TRACES_SAMPLER_ARG}={0}: expected a number from 0 to 1")]
    Ratio(String),
}

impl Sampler {
    /// Exports every span.
    pub const ALWAYS_ON: Self = Self {
        root: Root::On,
        parent_based: false,
    };

    /// The sampler `name` (`OTEL_TRACES_SAMPLER`) with `arg` (`OTEL_TRACES_SAMPLER_ARG`; the
    /// ratio of the `traceidratio` samplers, 1 when absent, ignored by the others).
    pub fn from_setting(name: &str, arg: Option<&str>) -> Result<Self, SamplerError> {
        let ratio = || match arg {
            None => Ok(Root::On),
            Some(a) => ratio_root(a),
        };
        let (root, parent_based) = match name {
            "always_on" => (Root::On, false),
            "always_off" => (Root::Off, false),
            "traceidratio" => (ratio()?, false),
            "parentbased_always_on" => (Root::On, true),
            "parentbased_always_off" => (Root::Off, true),
            "parentbased_traceidratio" => (ratio()?, true),
            other => return Err(SamplerError::Unknown(other.to_owned())),
        };
        Ok(Self { root, parent_based })
    }

    /// Whether `rec`'s spans are exported.
    pub fn samples(&self, rec: &CorrelatedSession) -> bool {
        if self.parent_based {
            if let Some(parent) = rec.wire_trace() {
                return parent.sampled;
            }
        }
        self.root_samples(&rec.trace_id)
    }

    fn root_samples(&self, trace_id: &TraceId) -> bool {
        match self.root {
            Root::On => true,
            Root::Off => false,
            Root::Below(bound) => {
                let mut low = [0u8; 8];
                low.copy_from_slice(&trace_id.0[8..]);
                u64::from_be_bytes(low) < bound
            }
        }
    }
}

/// The root decision of ratio `arg`: all of 2^64 scaled by it (0 and 1 exactly: never, always).
fn ratio_root(arg: &str) -> Result<Root, SamplerError> {
    let ratio: f64 = arg
        .trim()
        .parse()
        .map_err(|_| SamplerError::Ratio(arg.to_owned()))?;
    if !(0.0..=1.0).contains(&ratio) {
        return Err(SamplerError::Ratio(arg.to_owned()));
    }
    Ok(if ratio >= 1.0 {
        Root::On
    } else if ratio <= 0.0 {
        Root::Off
    } else {
        // Below 2^64 since ratio < 1; `as` saturates at the ends it cannot reach here.
        Root::Below((ratio * 18_446_744_073_709_551_616.0) as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SessionBuilder;
    use rand::{Rng as _, SeedableRng as _};

    fn exchange(trace: Option<bool>) -> CorrelatedSession {
        let b = SessionBuilder::new("s");
        let b = match trace {
            Some(sampled) => b.trace([7; 16], [3; 8]).with(|s| {
                if let Some(t) = s.trace.as_mut() {
                    t.sampled = sampled;
                }
            }),
            None => b,
        };
        CorrelatedSession::new(b.build()).0
    }

    #[test]
    fn settings_parse_as_the_sdk_spec_names_them() {
        let s = |name, arg| Sampler::from_setting(name, arg);
        assert_eq!(s("parentbased_always_on", None), Ok(Sampler::default()));
        assert_eq!(s("always_on", None), Ok(Sampler::ALWAYS_ON));
        assert_eq!(
            s("traceidratio", Some("0.25")),
            Ok(Sampler {
                root: Root::Below(1 << 62),
                parent_based: false
            })
        );
        assert_eq!(
            s("parentbased_traceidratio", None),
            Ok(Sampler::default()),
            "no ratio: 1"
        );
        assert_eq!(
            s("parentbased_traceidratio", Some("0")).map(|s| s.root),
            Ok(Root::Off)
        );
        assert_eq!(s("traceidratio", Some("1")).map(|s| s.root), Ok(Root::On));
        assert_eq!(
            s("always_off", Some("nonsense")).map(|s| s.root),
            Ok(Root::Off),
            "the argument is the ratio samplers' only"
        );
        for bad in ["1.5", "-0.1", "half", "NaN", ""] {
            assert_eq!(
                s("traceidratio", Some(bad)),
                Err(SamplerError::Ratio(bad.to_owned())),
                "{bad}"
            );
        }
        assert_eq!(
            s("jaeger_remote", None),
            Err(SamplerError::Unknown("jaeger_remote".to_owned()))
        );
    }

    #[test]
    fn parent_based_follows_the_wire_and_samples_new_traces() {
        let default = Sampler::default();
        assert!(default.samples(&exchange(Some(true))));
        assert!(
            !default.samples(&exchange(Some(false))),
            "the mesh did not sample it"
        );
        assert!(default.samples(&exchange(None)), "a trace of its own");
        let off = Sampler::from_setting("parentbased_always_off", None).unwrap_or_default();
        assert!(off.samples(&exchange(Some(true))));
        assert!(!off.samples(&exchange(None)));
        assert!(Sampler::ALWAYS_ON.samples(&exchange(Some(false))));
        let never = Sampler::from_setting("always_off", None).unwrap_or_default();
        assert!(!never.samples(&exchange(Some(true))));
    }

    #[test]
    fn a_ratio_keeps_its_share_of_traces_decided_by_the_id_alone() {
        let quarter = Sampler::from_setting("traceidratio", Some("0.25")).unwrap_or_default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        let ids: Vec<TraceId> = (0..20_000).map(|_| TraceId(rng.random())).collect();
        let kept = ids.iter().filter(|id| quarter.root_samples(id)).count();
        // A fixed seed: the same ids every run, about a quarter of them below the bound.
        assert!((4_600..=5_400).contains(&kept), "{kept} of 20000");
        for id in &ids[..100] {
            assert_eq!(quarter.root_samples(id), quarter.root_samples(id));
        }
        // The exchange's own context from the wire decides nothing without `parentbased_`.
        let rec = exchange(Some(true));
        assert_eq!(quarter.samples(&rec), quarter.root_samples(&rec.trace_id));
    }
}
