//! Sources of what to trace: named network namespaces now, Kubernetes pods later.
pub mod egress;
pub mod netns;
