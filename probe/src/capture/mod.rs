//! The capture: the two BPF objects (tc programs on interfaces, the socket point), their maps
//! kept in step with what to trace, and their ring buffers turned into [`Record`]s.
//!
//! | file | what |
//! | --- | --- |
//! | [`config`] | [`CaptureConfig`]: sizes, snaplen, node name, attach policy |
//! | [`object`] | what both objects share: loading and sizing, snaplen and traced-ports writes |
//! | [`tc_object`] | the tc object: [`Capture`], its programs and maps |
//! | [`attach`] | which interfaces the tc programs are attached to, detaching, crash cleanup |
//! | [`egress`] | the tc object's egress-rule maps |
//! | [`socket`] | the socket object: [`socket::SocketCapture`] |
//! | [`maps`] | map errors, replacing a hash map's contents |
//! | [`kernel_stats`] | the programs' counters and their names |
//! | [`event_loop`] | ring buffer → [`raw`] events → [`assembler`] → records → uplink queue |
//! | [`raw`] | ring buffer and map bytes → typed events (the one place that reads kernel bytes) |
//! | [`assembler`] | events → complete `Message` / `FlowEnd` records |
//!
//! [`Record`]: clovisor_proto::capture::v1::Record

pub mod abi;
pub mod assembler;
mod attach;
mod config;
pub mod egress;
mod event_loop;
mod kernel_stats;
mod maps;
mod object;
pub mod raw;
pub mod socket;
mod tc_object;

pub use self::attach::cleanup_leftovers;
pub use self::config::CaptureConfig;
pub use self::event_loop::{EventLoop, EventLoopStats, RING_POLL, SHUTDOWN_SEND_BUDGET};
pub use self::kernel_stats::KernelStats;
pub use self::tc_object::Capture;
pub use crate::hooks::tc_attach::{AttachMode, AttachPolicy};
