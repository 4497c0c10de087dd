//! Chooses and attaches the socket observation point's hooks.
//!
//! Hook sets are tried in order of preference, the first that loads and attaches wins:
//! fentry/fexit, kprobes, then BTF tracepoints (`tp_btf` `sock_send_length`/`sock_recv_length`
//! for the payload, `inet_sock_set_state` for the end of a connection) — hooks that run for
//! socket I/O only, never for the node's other syscalls. This build implements the
//! tracepoint set only — the one that loads where kprobes are compiled out and fentry is
//! refused — so the first two are reported as not built and passed over; the choice and the
//! reasons are kept in [`SocketHooks::attempts`] for the log line, the metric and the API.

use aya::programs::{BtfTracePoint, ProgramError};
use aya::{Btf, Ebpf};

use crate::error::{Error, Result};

/// A set of hooks able to feed the socket point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketHookKind {
    /// fentry/fexit on the kernel's TCP send and receive functions.
    Fentry,
    /// kprobes/kretprobes on the same functions.
    Kprobe,
    /// BTF tracepoints: `sock_send_length`, `sock_recv_length`, `inet_sock_set_state`.
    TpBtf,
}

impl SocketHookKind {
    /// Preference order.
    pub const ORDER: [SocketHookKind; 3] = [Self::Fentry, Self::Kprobe, Self::TpBtf];

    /// The label value of `clovisor_probe_socket_hook_info{hook}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
            Self::TpBtf => "tp_btf",
        }
    }
}

/// Whether to run the socket point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SocketHookPolicy {
    /// The best hook set the kernel offers; without one the probe runs on without the
    /// socket point (logged, and `hook="none"` in the metric).
    #[default]
    Auto,
    /// No socket point.
    Off,
}

/// What a pod veth captures of connections whose payload the pod's socket point captures too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum VethPayload {
    /// Payload only where the socket point does not cover the pod; where it does, the veth
    /// sends timings and counters alone (one record per exchange, no bytes copied), which the
    /// collector adds to the socket's decoded view as the veth's observation.
    #[default]
    Uncovered,
    /// Payload at every veth, whatever the socket point captures: each exchange is decoded
    /// twice (a fallback when the socket point misses bytes, e.g. `sendfile`).
    Always,
}

/// One hook set tried at start.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HookAttempt {
    /// The hook set.
    pub hook: SocketHookKind,
    /// Why it was not chosen; `None` for the chosen one.
    pub error: Option<String>,
}

/// The `tp_btf` programs of `socket_capture.bpf.c`: (program, tracepoint).
pub const TP_BTF_PROGRAMS: [(&str, &str); 3] = [
    ("clovisor_sock_send", "sock_send_length"),
    ("clovisor_sock_recv", "sock_recv_length"),
    ("clovisor_sock_state", "inet_sock_set_state"),
];

/// The attached hooks; detached by [`detach`] (and by the kernel when the programs'
/// file descriptors close, so a crash leaks nothing).
#[derive(Debug)]
pub struct SocketHooks {
    /// The hook set in use.
    pub kind: SocketHookKind,
    /// Every set tried, in order, with why it was passed over.
    pub attempts: Vec<HookAttempt>,
    links: Vec<(&'static str, aya::programs::tp_btf::BtfTracePointLinkId)>,
}

/// Tries the hook sets in preference order and attaches the first that works.
pub fn attach(ebpf: &mut Ebpf, btf: &Btf) -> Result<SocketHooks> {
    let mut attempts = Vec::new();
    for kind in SocketHookKind::ORDER {
        let result = match kind {
            SocketHookKind::Fentry | SocketHookKind::Kprobe => Err(format!(
                "no {} data path in this build; tracepoints are used instead",
                kind.as_str()
            )),
            SocketHookKind::TpBtf => attach_tp_btf(ebpf, btf).map_err(|e| error_chain(&e)),
        };
        match result {
            Ok(links) => {
                attempts.push(HookAttempt {
                    hook: kind,
                    error: None,
                });
                return Ok(SocketHooks {
                    kind,
                    attempts,
                    links,
                });
            }
            Err(error) => attempts.push(HookAttempt {
                hook: kind,
                error: Some(error),
            }),
        }
    }
    Err(Error::NoSocketHooks {
        attempts: attempts
            .iter()
            .map(|a| format!("{}: {}", a.hook.as_str(), a.error.as_deref().unwrap_or("")))
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// Detaches every hook; the first error is returned after trying all.
pub fn detach(ebpf: &mut Ebpf, hooks: SocketHooks) -> Result<()> {
    let mut first = None;
    for (name, link) in hooks.links {
        let result = tp_btf_program(ebpf, name).and_then(|p| {
            p.detach(link).map_err(|source| Error::Program {
                program: name,
                what: "detach",
                source,
            })
        });
        if let Err(e) = result {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

fn tp_btf_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut BtfTracePoint> {
    ebpf.program_mut(name)
        .ok_or(Error::Program {
            program: name,
            what: "missing from the object",
            source: ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| Error::Program {
            program: name,
            what: "is not a tp_btf program",
            source,
        })
}

type TpBtfLinks = Vec<(&'static str, aya::programs::tp_btf::BtfTracePointLinkId)>;

/// Loads and attaches the tracepoint set; on a failure detaches what it attached.
fn attach_tp_btf(ebpf: &mut Ebpf, btf: &Btf) -> Result<TpBtfLinks> {
    let mut links: TpBtfLinks = Vec::new();
    let mut outcome = Ok(());
    for (name, tracepoint) in TP_BTF_PROGRAMS {
        let step = tp_btf_program(ebpf, name).and_then(|p| {
            p.load(tracepoint, btf).map_err(|source| Error::Program {
                program: name,
                what: "verifier",
                source,
            })?;
            p.attach().map_err(|source| Error::Program {
                program: name,
                what: "attach",
                source,
            })
        });
        match step {
            Ok(link) => links.push((name, link)),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    match outcome {
        Ok(()) => Ok(links),
        Err(e) => {
            let partial = SocketHooks {
                kind: SocketHookKind::TpBtf,
                attempts: Vec::new(),
                links,
            };
            if let Err(d) = detach(ebpf, partial) {
                tracing::warn!(error = %d, "detaching a partly attached hook set failed");
            }
            Err(e)
        }
    }
}

/// `error: cause: cause`, for one log line or API field.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}
