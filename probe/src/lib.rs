//! Clovisor-rs probe: BPF capture on pod veths, streamed as raw capture records.
//!
//! - [`capture`]: loads the BPF objects (tc programs, socket point), keeps their maps in step,
//!   reads their ring buffers and assembles `Message` / `FlowEnd` records.
//! - [`hooks`]: attaching to interfaces (pod host veths, node interfaces) and to socket hooks.
//! - [`api`]: `GET /api/v1/probe` (the socket point's hook choice).
//! - [`discovery`]: a pod's host veth, IPs and listening ports, found CNI-agnostically.
//! - [`clock`]: kernel boot time to Unix time.
//! - [`agent`], [`targets`], [`uplink`]: the probe as a service (the lead's).
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod discovery;
pub mod error;
pub mod hooks;
pub mod metrics;
mod netlink;
pub mod targets;
pub mod uplink;

pub use capture::{
    cleanup_leftovers, AttachMode, AttachPolicy, Capture, CaptureConfig, EventLoop, EventLoopStats,
};
pub use error::{Error, Result};
