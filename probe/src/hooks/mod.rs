//! Where the BPF programs attach.

pub mod pod_veth;
pub mod socket;
