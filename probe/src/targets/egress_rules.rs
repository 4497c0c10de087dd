//! Egress rules (`clovisor_egress_match`) applied to the traced pods: which (veth, address,
//! port) triples the kernel traces as the pod's outbound calls. Shared by every source of
//! pods: named namespaces (the namespace name plays the pod name) and Kubernetes pods.

use std::collections::BTreeMap;

use clovisor_config::EgressRule;
use clovisor_proto::capture::v1::ProtocolHint;

use crate::capture::egress_maps::EgressEntry;

/// The kernel entries for `pods` (pod name, host veth ifindex) under `rules`: a rule with a
/// pod-name prefix selects the pods whose name starts with it, one without selects them all.
pub fn entries<'a>(
    pods: impl IntoIterator<Item = (&'a str, u32)>,
    rules: &[EgressRule],
) -> BTreeMap<EgressEntry, ProtocolHint> {
    let mut out = BTreeMap::new();
    for (name, ifindex) in pods {
        for rule in rules.iter().filter(|r| r.selects(name)) {
            out.insert(
                EgressEntry {
                    ifindex,
                    ip: rule.target.ip,
                    port: rule.target.port,
                },
                super::netns::hint_for_port(rule.target.port),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clovisor_config::parse::parse_egress;

    #[test]
    fn prefixes_select_pods_and_bare_rules_select_all() {
        let rules: Vec<EgressRule> = ["10.0.0.7:80", "0:6379:cache-client"]
            .into_iter()
            .map(|r| parse_egress(r).expect("valid rule"))
            .collect();
        let got = entries([("web-1", 11), ("cache-client-x", 12)], &rules);
        let got: Vec<(u32, Option<String>, u16, ProtocolHint)> = got
            .into_iter()
            .map(|(e, h)| (e.ifindex, e.ip.map(|ip| ip.to_string()), e.port, h))
            .collect();
        assert_eq!(
            got,
            vec![
                (11, Some("10.0.0.7".into()), 80, ProtocolHint::Http),
                (12, None, 6379, ProtocolHint::Tcp),
                (12, Some("10.0.0.7".into()), 80, ProtocolHint::Http),
            ]
        );
        assert!(entries([("web-1", 11)], &[]).is_empty());
    }
}
