//! Attach bookkeeping of the tc capture: which interfaces (pod veths, node interfaces) its
//! programs are attached to, as which observation point, and detaching them again — on
//! request, when the capture is dropped, and after a crashed run.

use clovisor_proto::capture::v1::PointKind;

use super::assembler::AttachedInterface;
use super::Capture;
use crate::error::Result;
use crate::hooks::node_iface;
use crate::hooks::pod_veth::{self, AttachMode};

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
        let current = pod_veth::ifindex(ifname)?;
        if let Some(h) = self.hooks.get(ifname) {
            if h.ifindex == current && self.kind_of(h.ifindex) == Some(kind) {
                return Ok(h.mode);
            }
        }
        // Same name, new ifindex: the old veth is gone; forget its hooks.
        if let Some(old) = self.hooks.remove(ifname) {
            if let Err(e) = pod_veth::detach(&mut self.ebpf, old) {
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
        let hook = match attached {
            Ok(hook) => hook,
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
        let mode = hook.mode;
        self.hooks.insert(ifname.to_owned(), hook);
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
        self.hooks
            .values()
            .filter(|h| self.kind_of(h.ifindex) == Some(PointKind::Node))
            .map(|h| h.interface.clone())
            .collect()
    }

    /// Interfaces currently attached, with their index and mode.
    pub fn attached(&self) -> Vec<(String, u32, AttachMode)> {
        self.hooks
            .values()
            .map(|h| (h.interface.clone(), h.ifindex, h.mode))
            .collect()
    }

    /// Detaches from `ifname`; nothing to do if it is not attached.
    pub fn detach(&mut self, ifname: &str) -> Result<()> {
        match self.hooks.remove(ifname) {
            Some(hook) => pod_veth::detach(&mut self.ebpf, hook),
            None => Ok(()),
        }
    }

    /// Detaches from every interface; the first error is returned after trying all.
    pub fn detach_all(&mut self) -> Result<()> {
        let mut first = None;
        let names: Vec<String> = self.hooks.keys().cloned().collect();
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

/// Removes legacy tc filters of ours left by a crashed run; see [`pod_veth::cleanup_leftovers`].
pub fn cleanup_leftovers() -> Result<usize> {
    pod_veth::cleanup_leftovers()
}
