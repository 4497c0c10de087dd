//! The pod observation point: the capture's pair of programs on a pod's host-side veth, named
//! relative to the pod. Attached, detached and cleaned up after a crash as any
//! [`TcAttachment`](super::tc_attach::TcAttachment).

use aya::programs::TcAttachType;
use aya::Ebpf;

use super::tc_attach::{self, AttachPolicy, TcAttachment};
use crate::error::Result;

/// Program for host veth ingress: packets the pod sent.
pub const FROM_POD: &str = "clovisor_from_pod";
/// Program for host veth egress: packets towards the pod.
pub const TO_POD: &str = "clovisor_to_pod";
/// Both programs with their hook.
pub const PROGRAMS: [(&str, TcAttachType); 2] = [
    (FROM_POD, TcAttachType::Ingress),
    (TO_POD, TcAttachType::Egress),
];

/// Attaches both pod programs to the host-side veth `interface`.
pub fn attach(ebpf: &mut Ebpf, interface: &str, policy: AttachPolicy) -> Result<TcAttachment> {
    tc_attach::attach(ebpf, interface, policy, PROGRAMS)
}
