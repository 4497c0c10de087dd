//! Where the BPF programs attach: a tc attachment on an interface ([`tc_attach`]), used for
//! pod veths ([`pod_veth`]) and node interfaces ([`node_iface`]); the socket point's hooks
//! ([`socket`]).

pub mod node_iface;
pub mod pod_veth;
pub mod socket;
pub mod tc_attach;
