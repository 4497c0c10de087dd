//! Which pods to trace: the `clovisor_labels` selection (`namespace[:label-key:label-value]`
//! entries, OR-ed). The live Redis config produces it; this module only evaluates it.

use std::collections::BTreeMap;

/// One selection entry: every pod of `namespace`, or only those carrying `label`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodSelector {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Label key and value the pod must carry, if any.
    pub label: Option<(String, String)>,
}

impl PodSelector {
    /// Every pod of `namespace`.
    pub fn namespace(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            label: None,
        }
    }

    /// Pods of `namespace` labelled `key=value`.
    pub fn labelled(
        namespace: impl Into<String>,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            label: Some((key.into(), value.into())),
        }
    }

    /// Whether a pod of `namespace` with `labels` is selected by this entry.
    pub fn matches(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespace == namespace
            && self
                .label
                .as_ref()
                .is_none_or(|(k, v)| labels.get(k) == Some(v))
    }
}

/// The pods to trace: those matching any entry. No entry selects nothing; the default (no
/// configuration at all) is the whole `default` namespace, as in Clovisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSelection {
    /// Entries, OR-ed.
    pub selectors: Vec<PodSelector>,
}

impl From<&[clovisor_config::LabelSelector]> for PodSelection {
    /// The `clovisor_labels` entries of the live configuration (which already falls back to
    /// namespace `default` when it has no valid entry).
    fn from(labels: &[clovisor_config::LabelSelector]) -> Self {
        Self {
            selectors: labels
                .iter()
                .map(|l| PodSelector {
                    namespace: l.namespace.clone(),
                    label: l.label.clone(),
                })
                .collect(),
        }
    }
}

/// Follows the live configuration's `clovisor_labels` as a pod selection: the returned
/// receiver changes only when the selection does, until `live`'s source is gone.
pub fn follow_labels(
    mut live: tokio::sync::watch::Receiver<clovisor_config::LiveConfig>,
) -> tokio::sync::watch::Receiver<PodSelection> {
    let initial = PodSelection::from(live.borrow_and_update().labels.as_slice());
    let (tx, rx) = tokio::sync::watch::channel(initial);
    tokio::spawn(async move {
        while live.changed().await.is_ok() {
            let next = PodSelection::from(live.borrow_and_update().labels.as_slice());
            tx.send_if_modified(|current| {
                let changed = *current != next;
                if changed {
                    *current = next.clone();
                }
                changed
            });
            if tx.is_closed() {
                break;
            }
        }
    });
    rx
}

impl Default for PodSelection {
    fn default() -> Self {
        Self {
            selectors: vec![PodSelector::namespace("default")],
        }
    }
}

impl PodSelection {
    /// Whether a pod of `namespace` with `labels` is to be traced.
    pub fn matches(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.selectors.iter().any(|s| s.matches(namespace, labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn default_selects_the_default_namespace_only() {
        let s = PodSelection::default();
        assert!(s.matches("default", &labels(&[])), "default namespace");
        assert!(!s.matches("kube-system", &labels(&[])), "other namespace");
    }

    #[test]
    fn entries_are_ored_and_labels_must_match_exactly() {
        let s = PodSelection {
            selectors: vec![
                PodSelector::labelled("shop", "app", "cart"),
                PodSelector::namespace("blog"),
            ],
        };
        assert!(
            s.matches("shop", &labels(&[("app", "cart"), ("x", "y")])),
            "label entry"
        );
        assert!(
            !s.matches("shop", &labels(&[("app", "carts")])),
            "other value"
        );
        assert!(
            !s.matches("shop", &labels(&[("APP", "cart")])),
            "keys are case-sensitive"
        );
        assert!(!s.matches("shop", &labels(&[])), "label missing");
        assert!(s.matches("blog", &labels(&[])), "namespace entry");
        assert!(
            !s.matches("default", &labels(&[])),
            "default no longer implied"
        );
    }

    #[test]
    fn an_empty_selection_selects_nothing() {
        let s = PodSelection { selectors: vec![] };
        assert!(!s.matches("default", &labels(&[])), "nothing selected");
    }
}
