//! Attach bookkeeping of the tc capture: which interfaces (pod veths, node interfaces) its
//! programs are attached to, as which observation point, and detaching them again — on
//! request, when the capture is dropped, and after a crashed run.

use clovisor_proto::common::v1::PointKind;

use super::assembler::AttachedInterface;
use super::Capture;
use crate::error::Result;
use crate::hooks::tc_attach::{self, AttachMode};
use crate::hooks::{node_iface, pod_veth};

impl Capture {
    /// Attaches both programs to the host-side veth `ifname`. Idempotent: attaching an
    /// interface already attached (same ifindex) does nothing.
    pub fn attach_pod_veth(&mut self, ifname: &str) -> Result<AttachMode> {
        self.attach_point(ifname, PointKind::Pod)
    }

    /// Attaches the node-interface programs to `ifname` (an uplink): both directions, only
    /// monitored pods' traffic ([`Capture::set_monitored_ips`]). Idempotent like
    /// [`Capture::attach_pod_veth`].
    pub fn attach_node_interface(&mut self, ifname: &str) -> Result<AttachMode> {
        self.attach_point(ifname, PointKind::Node)
    }

    fn attach_point(&mut self, ifname: &str, kind: PointKind) -> Result<AttachMode> {
        let current = tc_attach::ifindex(ifname)?;
        if let Some(a) = self.attachments.get(ifname) {
            if a.ifindex == current && self.kind_of(a.ifindex) == Some(kind) {
                return Ok(a.mode);
            }
        }
        // Same name, new ifindex: the old veth is gone; forget its attachment.
        if let Some(old) = self.attachments.remove(ifname) {
            if let Err(e) = tc_attach::detach(&mut self.ebpf, old) {
                tracing::debug!(interface = ifname, error = %e, "stale hook cleanup");
            }
        }
        // Named before the programs run: the event loop may read the interface's first
        // events before the attach returns.
        let previous = self.interfaces.write().ok().and_then(|mut names| {
            names.insert(
                current,
                AttachedInterface {
                    name: ifname.to_owned(),
                    kind,
                },
            )
        });
        let attached = match kind {
            PointKind::Node => node_iface::attach(&mut self.ebpf, ifname, self.cfg.attach),
            _ => pod_veth::attach(&mut self.ebpf, ifname, self.cfg.attach),
        };
        let attachment = match attached {
            Ok(attachment) => attachment,
            Err(e) => {
                if let Ok(mut names) = self.interfaces.write() {
                    match previous {
                        Some(p) => names.insert(current, p),
                        None => names.remove(&current),
                    };
                }
                return Err(e);
            }
        };
        let mode = attachment.mode;
        self.attachments.insert(ifname.to_owned(), attachment);
        Ok(mode)
    }

    fn kind_of(&self, ifindex: u32) -> Option<PointKind> {
        self.interfaces
            .read()
            .ok()
            .and_then(|m| m.get(&ifindex).map(|i| i.kind))
    }

    /// Node interfaces currently attached.
    pub fn node_interfaces(&self) -> Vec<String> {
        self.attachments
            .values()
            .filter(|a| self.kind_of(a.ifindex) == Some(PointKind::Node))
            .map(|a| a.interface.clone())
            .collect()
    }

    /// Interfaces currently attached, with their index and mode.
    pub fn attached(&self) -> Vec<(String, u32, AttachMode)> {
        self.attachments
            .values()
            .map(|a| (a.interface.clone(), a.ifindex, a.mode))
            .collect()
    }

    /// Detaches from `ifname`; nothing to do if it is not attached.
    pub fn detach(&mut self, ifname: &str) -> Result<()> {
        match self.attachments.remove(ifname) {
            Some(attachment) => tc_attach::detach(&mut self.ebpf, attachment),
            None => Ok(()),
        }
    }

    /// Detaches from every interface; the first error is returned after trying all.
    pub fn detach_all(&mut self) -> Result<()> {
        let mut first = None;
        let names: Vec<String> = self.attachments.keys().cloned().collect();
        for name in names {
            if let Err(e) = self.detach(&name) {
                tracing::warn!(interface = %name, error = %e, "detach failed");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Err(e) = self.detach_all() {
            tracing::warn!(error = %e, "detaching on drop failed");
        }
    }
}

/// Removes legacy tc filters of ours left by a crashed run; see [`tc_attach::cleanup_leftovers`].
pub fn cleanup_leftovers() -> Result<usize> {
    tc_attach::cleanup_leftovers()
}
