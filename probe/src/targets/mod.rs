//! Sources of what to trace: named network namespaces ([`netns`]) or the pods of this node
//! followed through the Kubernetes API ([`kube`]); both hand a desired set of pods to the
//! shared [`reconcile::Reconciler`].
pub mod egress_rules;
pub mod kube;
pub mod netns;
pub mod reconcile;
