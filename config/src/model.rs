//! The typed live configuration every service reads from Redis.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// Header names whose values never leave the collector, whatever Redis says: the configured
/// list (`clovisor_redact_headers`) adds to these, it cannot remove them.
pub const DEFAULT_REDACTED_HEADERS: [&str; 5] = [
    "authorization",
    "cookie",
    "set-cookie",
    "proxy-authorization",
    "x-api-key",
];

/// Namespace traced when `clovisor_labels` has no valid entry (Clovisor's default).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Port of an OTLP/gRPC receiver, put in place of a legacy Jaeger address's port.
pub const OTLP_GRPC_PORT: u16 = 4317;

/// One `clovisor_labels` entry: pods of `namespace`, optionally only those carrying `label`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelSelector {
    /// Kubernetes namespace.
    pub namespace: String,
    /// `(key, value)` the pod must carry; `None` selects every pod of the namespace.
    pub label: Option<(String, String)>,
}

impl LabelSelector {
    /// Every pod of `namespace`.
    pub fn namespace(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            label: None,
        }
    }

    /// Whether a pod of `namespace` with `labels` is selected.
    pub fn matches<'a>(
        &self,
        namespace: &str,
        mut labels: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> bool {
        self.namespace == namespace
            && match &self.label {
                None => true,
                Some((k, v)) => labels.any(|(lk, lv)| lk == k && lv == v),
            }
    }
}

/// One `clovisor_egress_match` entry: outbound calls of selected pods to `ip:port` are traced at
/// the pod's veth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EgressTarget {
    /// Destination address; `None` = any (written `0`).
    pub ip: Option<IpAddr>,
    /// Destination TCP port (never 0).
    pub port: u16,
}

/// An egress rule with the pods it selects.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EgressRule {
    /// Where the calls go.
    pub target: EgressTarget,
    /// Pods whose name starts with this (in all-in-one: namespaces whose name does); `None` =
    /// every traced pod.
    pub pod_prefix: Option<String>,
}

impl EgressRule {
    /// Whether the rule applies to the pod (or all-in-one namespace) `pod_name`.
    pub fn selects(&self, pod_name: &str) -> bool {
        self.pod_prefix
            .as_deref()
            .is_none_or(|prefix| pod_name.starts_with(prefix))
    }
}

/// The whole live configuration. `Default` is what applies without Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConfig {
    /// Which pods to trace (entries OR-ed). Empty — nothing traced — only until the configured
    /// source first answers ([`LiveConfig::unanswered`]) or when the operator's allow-list
    /// excludes every entry and the default namespace.
    pub labels: Vec<LabelSelector>,
    /// Outbound calls to trace, sorted and without duplicates.
    pub egress: Vec<EgressRule>,
    /// OTLP/gRPC endpoint for spans; `None` = the process's own setting (env/flags).
    pub otlp_endpoint: Option<String>,
    /// Bytes copied from each message; `None` = the process's own setting (flag).
    pub snaplen: Option<u32>,
    /// Lower-case header names whose values never leave the collector: the defaults plus
    /// the configured ones, sorted.
    pub redacted_headers: Vec<String>,
    /// `clovisor_proto_cfg`: protocol → analyzer module (an absolute path or the module in
    /// base64; the collector runs them, docs/analyzers.md).
    pub proto_cfg: BTreeMap<String, String>,
    /// Messages seen on `clovisor_proto_plugin_cfg_chan`: each one asks the services to
    /// reload their analyzers (re-read the modules) even when the hash did not change.
    pub proto_reloads: u64,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            labels: vec![LabelSelector::namespace(DEFAULT_NAMESPACE)],
            egress: Vec::new(),
            otlp_endpoint: None,
            snaplen: None,
            redacted_headers: DEFAULT_REDACTED_HEADERS
                .iter()
                .map(|h| (*h).to_owned())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
            proto_cfg: BTreeMap::new(),
            proto_reloads: 0,
        }
    }
}

impl LiveConfig {
    /// What applies while the configured source has not answered yet: the defaults, but no
    /// pod selected (nothing is traced until the operator's configuration is known).
    pub fn unanswered() -> Self {
        Self {
            labels: Vec::new(),
            ..Self::default()
        }
    }

    /// Whether the header `name` (any case) must be redacted.
    pub fn is_redacted(&self, name: &str) -> bool {
        self.redacted_headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
    }
}
