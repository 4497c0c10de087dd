//! A tc attachment: a pair of the capture's classifiers (ingress and egress) attached to one
//! interface — a pod's host-side veth ([`super::pod_veth`]) or a node interface
//! ([`super::node_iface`]) — and detached again.
//!
//! TCX links first (kernel ≥ 6.6): they need no qdisc and die with the process, so a
//! crash leaks nothing. When the kernel refuses TCX, legacy netlink filters on a clsact
//! qdisc; then exactly our filters are removed on detach, and the clsact only if we added
//! it and nobody else put a filter on it since. [`cleanup_leftovers`] removes legacy
//! filters a crashed run left behind.

use aya::programs::tc::{self, NlOptions, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::Ebpf;

use super::{node_iface, pod_veth};
use crate::error::{Error, Result};
use crate::netlink;

/// How the programs were attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// BPF links on the TCX hooks.
    Tcx,
    /// Legacy tc filters on a clsact qdisc (netlink).
    Netlink {
        /// Whether we added the clsact qdisc (and so may remove it).
        added_clsact: bool,
    },
}

/// Which attach method to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachPolicy {
    /// TCX links; legacy clsact filters when the kernel refuses TCX.
    #[default]
    Auto,
    /// Legacy clsact filters only (old kernels, other tools that expect tc filters, tests
    /// of the fallback).
    Netlink,
}

/// What one attach created on one interface (a pod veth or a node interface).
#[derive(Debug)]
pub struct TcAttachment {
    /// Interface name.
    pub interface: String,
    /// Interface index at attach time (a recreated veth gets a new one).
    pub ifindex: u32,
    /// How.
    pub mode: AttachMode,
    links: Vec<(&'static str, aya::programs::tc::SchedClassifierLinkId)>,
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier> {
    let prog = ebpf.program_mut(name).ok_or(Error::Program {
        program: name,
        what: "missing from the object",
        source: aya::programs::ProgramError::NotLoaded,
    })?;
    prog.try_into().map_err(|source| Error::Program {
        program: name,
        what: "is not a tc classifier",
        source,
    })
}

/// Interface index of `name` in this namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name).map_err(|_| Error::NoSuchInterface {
        interface: name.to_owned(),
    })
}

/// Attaches a pair of classifiers (`programs`: name and hook) to `interface`: TCX first, legacy
/// netlink when refused (or when `policy` asks for it).
pub(crate) fn attach(
    ebpf: &mut Ebpf,
    interface: &str,
    policy: AttachPolicy,
    programs: [(&'static str, TcAttachType); 2],
) -> Result<TcAttachment> {
    let ifindex = ifindex(interface)?;
    let mut links = Vec::new();
    let mut tcx_error = None;
    for (name, hook) in programs {
        if policy == AttachPolicy::Netlink {
            break;
        }
        let opts = TcAttachOptions::TcxOrder(LinkOrder::default());
        match classifier(ebpf, name)?.attach_with_options(interface, hook, opts) {
            Ok(id) => links.push((name, id)),
            Err(e) => {
                tcx_error = Some(e);
                break;
            }
        }
    }
    match (policy, tcx_error) {
        (AttachPolicy::Auto, None) => {
            return Ok(TcAttachment {
                interface: interface.to_owned(),
                ifindex,
                mode: AttachMode::Tcx,
                links,
            })
        }
        (_, Some(e)) => {
            tracing::info!(interface, error = %e, "TCX attach refused; using clsact filters")
        }
        (AttachPolicy::Netlink, None) => {}
    }
    for (name, id) in links.drain(..) {
        if let Err(e) = classifier(ebpf, name)?.detach(id) {
            tracing::warn!(interface, program = name, error = %e, "undoing partial TCX attach failed");
        }
    }
    // An existing clsact (someone else's) makes this fail: then it is not ours to remove.
    let added_clsact = tc::qdisc_add_clsact(interface).is_ok();
    let mut attachment = TcAttachment {
        interface: interface.to_owned(),
        ifindex,
        mode: AttachMode::Netlink { added_clsact },
        links,
    };
    for (name, attach_type) in programs {
        let opts = TcAttachOptions::Netlink(NlOptions::default());
        match classifier(ebpf, name)?.attach_with_options(interface, attach_type, opts) {
            Ok(id) => attachment.links.push((name, id)),
            Err(source) => {
                let err = Error::Tc {
                    interface: interface.to_owned(),
                    what: "attaching a clsact filter",
                    source,
                };
                if let Err(e) = detach(ebpf, attachment) {
                    tracing::warn!(interface, error = %e, "undoing partial attach failed");
                }
                return Err(err);
            }
        }
    }
    Ok(attachment)
}

/// Removes exactly what `attachment` created.
pub fn detach(ebpf: &mut Ebpf, attachment: TcAttachment) -> Result<()> {
    let mut first_err = None;
    for (name, id) in attachment.links {
        if let Err(source) = classifier(ebpf, name)?.detach(id) {
            // The interface may be gone already (pod deleted): its hooks went with it.
            if ifindex(&attachment.interface).ok() == Some(attachment.ifindex) {
                first_err.get_or_insert(Error::Tc {
                    interface: attachment.interface.clone(),
                    what: "detaching",
                    source,
                });
            }
        }
    }
    if let AttachMode::Netlink { added_clsact: true } = attachment.mode {
        if ifindex(&attachment.interface).ok() == Some(attachment.ifindex) {
            let mut s = netlink::Socket::open()?;
            let others = s
                .filters(attachment.ifindex, netlink::CLSACT_INGRESS)?
                .len()
                + s.filters(attachment.ifindex, netlink::CLSACT_EGRESS)?.len();
            if others == 0 {
                s.delete_clsact(attachment.ifindex)?;
            } else {
                tracing::info!(interface = %attachment.interface, others, "leaving our clsact: others added filters to it");
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Our programs attached to `interface`, by TCX links or legacy tc filters, as the kernel
/// reports them (`direction:name`, e.g. `ingress:clovisor_from_p`; the kernel keeps 15
/// characters of a program name). Independent of bpftool, whose older versions cannot
/// show TCX links.
pub fn programs_on(interface: &str) -> Result<Vec<String>> {
    let index = ifindex(interface)?;
    let mut out = Vec::new();
    for (dir, hook, parent) in [
        ("ingress", TcAttachType::Ingress, netlink::CLSACT_INGRESS),
        ("egress", TcAttachType::Egress, netlink::CLSACT_EGRESS),
    ] {
        match SchedClassifier::query_tcx(interface, hook) {
            Ok((_, progs)) => out.extend(
                progs
                    .iter()
                    .filter_map(|p| p.name_as_str())
                    .filter(|n| n.starts_with("clovisor"))
                    .map(|n| format!("{dir}:{n}")),
            ),
            // A kernel without TCX has nothing attached that way.
            Err(e) => tracing::debug!(interface, error = %e, "TCX query failed"),
        }
        // No clsact qdisc: the dump fails, and there are no filters.
        if let Ok(names) = netlink::Socket::open()?.filters(index, parent) {
            out.extend(
                names
                    .iter()
                    .filter(|n| n.starts_with("clovisor"))
                    .map(|n| format!("{dir}:{n}")),
            );
        }
    }
    Ok(out)
}

/// Removes legacy tc filters of ours left on any interface by a run that crashed, and
/// returns how many (interface, hook) pairs had some. TCX links need no cleanup: they die
/// with the process that held them.
pub fn cleanup_leftovers() -> Result<usize> {
    let mut removed = 0;
    for link in netlink::Socket::open()?.links()? {
        for (name, attach_type) in pod_veth::PROGRAMS.into_iter().chain(node_iface::PROGRAMS) {
            match tc::qdisc_detach_program(&link.name, attach_type, name) {
                Ok(()) => {
                    tracing::info!(interface = %link.name, program = name, "removed leftover filter");
                    removed += 1;
                }
                // NotFound: none of ours; other errors: no clsact here at all.
                Err(e) => {
                    tracing::trace!(interface = %link.name, program = name, error = %e, "no leftover")
                }
            }
        }
    }
    Ok(removed)
}
