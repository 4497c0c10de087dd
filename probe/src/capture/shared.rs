//! The one map the two capture objects share: the tc object's `connections`, which the socket
//! point reads as its `tc_connections` to carry a covered veth's counters in its own records
//! (`CLOVISOR_CONFIG_CARRY_WIRE`, `struct clovisor_wire`).
//!
//! The loader (aya) shares a map between objects only through a pin in a BPF filesystem: the
//! first object loaded with [`SharedPin::path`] creates and pins the map, the second finds the
//! pin and uses the same map. The pin lives only while both load — [`SharedPin`] removes it on
//! drop; the map then lives as long as either object holds it. Where `/sys/fs/bpf` is no BPF
//! filesystem (a container without it mounted), a private one is mounted for the moment and
//! unmounted on drop. A pin left by a probe that died between the two loads is removed by the
//! next probe ([`SharedPin::new`]): a pinned map outlives its process.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statfs::{statfs, BPF_FS_MAGIC};

use crate::error::{Error, Result};

/// Where BPF filesystems are usually mounted.
const BPF_FS: &str = "/sys/fs/bpf";
/// Prefix of a probe's pin directory under a BPF filesystem, followed by its pid and a number
/// of its own (two in one process never meet).
const PIN_DIR_PREFIX: &str = "clovisor-share-";
/// Where a private BPF filesystem is mounted when `/sys/fs/bpf` is none.
const PRIVATE_MOUNT_PREFIX: &str = "/run/clovisor-bpffs-";
/// The pinned map's file name.
const PIN_NAME: &str = "connections";

/// A pin path for the shared connection map, removed (and its private mount unmounted) on drop.
#[derive(Debug)]
pub struct SharedPin {
    dir: PathBuf,
    path: PathBuf,
    /// A private BPF filesystem mounted at `dir`'s parent for this pin.
    mounted: Option<PathBuf>,
}

impl SharedPin {
    /// A fresh pin path for this process, in `/sys/fs/bpf` when that is a BPF filesystem, else in
    /// a private one mounted for it. Pins of probes that are gone are removed first.
    pub fn new() -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (base, mounted) = if is_bpf_fs(Path::new(BPF_FS)) {
            remove_stale(Path::new(BPF_FS));
            (PathBuf::from(BPF_FS), None)
        } else {
            let at = PathBuf::from(format!("{PRIVATE_MOUNT_PREFIX}{pid}-{n}"));
            std::fs::create_dir_all(&at).map_err(|e| shared_err(&at, "mkdir", e))?;
            mount(
                Some("bpf"),
                &at,
                Some("bpf"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .map_err(|e| {
                let _ = std::fs::remove_dir(&at);
                shared_err(&at, "mount bpffs", std::io::Error::from(e))
            })?;
            (at.clone(), Some(at))
        };
        let dir = base.join(format!("{PIN_DIR_PREFIX}{pid}-{n}"));
        let pin = Self {
            path: dir.join(PIN_NAME),
            dir,
            mounted,
        };
        // A pin of an earlier process with this pid (a restarted container) would be taken for
        // the map: start clean.
        let _ = std::fs::remove_file(&pin.path);
        std::fs::create_dir_all(&pin.dir).map_err(|e| shared_err(&pin.dir, "mkdir", e))?;
        Ok(pin)
    }

    /// The path both objects pin the shared map at.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SharedPin {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
        if let Some(at) = &self.mounted {
            if let Err(e) = umount2(at.as_path(), MntFlags::MNT_DETACH) {
                tracing::warn!(path = %at.display(), error = %e, "cannot unmount the private BPF filesystem");
            }
            let _ = std::fs::remove_dir(at);
        }
    }
}

fn is_bpf_fs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// Removes the pin directories under `base` of probes no longer running.
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PIN_DIR_PREFIX))
            .and_then(|p| p.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        let _ = std::fs::remove_file(dir.join(PIN_NAME));
        match std::fs::remove_dir(&dir) {
            Ok(()) => {
                tracing::info!(path = %dir.display(), "removed the map pin of a probe that is gone")
            }
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove a stale map pin")
            }
        }
    }
}

fn shared_err(path: &Path, what: &'static str, source: std::io::Error) -> Error {
    Error::SharedMap {
        path: path.to_path_buf(),
        what,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_path_is_its_own_and_goes_with_it() {
        // Needs a BPF filesystem or the right to mount one (root); elsewhere nothing to check.
        let Ok(pin) = SharedPin::new() else {
            return;
        };
        let dir = pin.path().parent().map(Path::to_path_buf);
        assert!(pin
            .path()
            .to_string_lossy()
            .contains(&format!("{PIN_DIR_PREFIX}{}-", std::process::id())));
        assert!(
            dir.as_ref().is_some_and(|d| d.is_dir()),
            "its directory exists"
        );
        drop(pin);
        assert!(!dir.is_some_and(|d| d.exists()), "and goes with it");
    }

    #[test]
    fn the_pin_of_a_probe_that_is_gone_is_removed_at_the_next_start() {
        // Needs a BPF filesystem at /sys/fs/bpf; elsewhere nothing to check.
        if !is_bpf_fs(Path::new(BPF_FS)) {
            return;
        }
        // No process has this id (above the kernel's pid_max).
        let stale = Path::new(BPF_FS).join(format!("{PIN_DIR_PREFIX}4000000000-0"));
        if std::fs::create_dir(&stale).is_err() {
            return;
        }
        let pin = SharedPin::new();
        assert!(!stale.exists(), "the stale pin directory is removed");
        drop(pin);
    }
}
