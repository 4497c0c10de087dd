//! Where the BPF programs attach.

pub mod node_iface;
pub mod pod_veth;
pub mod socket;
