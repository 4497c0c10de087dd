//! Clovisor-rs probe: BPF capture on pod veths, streamed as raw capture records.
//!
//! - [`capture`]: loads the tc programs, keeps their maps in step, reads their ring buffer
//!   and assembles `Message` / `FlowEnd` records.
//! - [`hooks`]: attaching to interfaces (pod host veths) and to socket hooks.
//! - [`api`]: `GET /api/v1/probe` (the socket point's hook choice).
//! - [`netns`]: named network namespaces as pods (ports, host veth, IPs).
//! - [`clock`]: kernel boot time to Unix time.
//! - [`agent`], [`targets`], [`uplink`]: the probe as a service (the lead's).
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod error;
pub mod hooks;
pub mod metrics;
mod netlink;
pub mod netns;
pub mod targets;
pub mod uplink;

pub use capture::{
    cleanup_leftovers, AttachMode, AttachPolicy, Capture, CaptureConfig, EventLoop, EventLoopStats,
};
pub use error::{Error, Result};
