//! The capture: the two BPF objects (tc programs on interfaces, the socket point), their maps
//! kept in step with what to trace, and their ring buffers turned into [`Record`]s.
//!
//! | file | what |
//! | --- | --- |
//! | `abi.rs` | the bindgen view of `bpf/include/clovisor_abi.h` |
//! | `config.rs` | [`CaptureConfig`]: sizes, snaplen, node name, attach policy, what covered server sockets copy |
//! | `object.rs` | what both objects share: loading and sizing, snaplen and traced-ports writes |
//! | `tc_object.rs` | the tc object ([`Capture`]): its programs, maps and counters |
//! | `attach.rs` | which interfaces the tc programs are attached to; detaching; crash cleanup |
//! | `egress_maps.rs` | the tc object's egress-rule maps |
//! | `socket_object.rs` | the socket object ([`socket_object::SocketCapture`]) |
//! | `shared.rs` | the pin through which both objects load the tc object's connection map ([`shared::SharedPin`]) |
//! | `maps.rs` | map errors; replacing a hash map's contents |
//! | `kernel_stats.rs` | the programs' counters and their names |
//! | `event_loop.rs` | ring buffer → `raw` events → `assembler` → records encoded into chunks → the uplink's queue |
//! | `raw.rs` | kernel bytes ↔ typed values (the one place that reads what the kernel wrote) |
//! | `held.rs` | requests the kernel holds for their response: sent alone at shutdown or when their connection vanished |
//! | `assembler/` | events → complete `Message` / `FlowEnd` records, into a `RecordSink` (built in `records.rs`, or encoded without being built) |
//!
//! [`Record`]: clovisor_proto::capture::v1::Record

pub mod abi;
pub mod assembler;
mod attach;
mod config;
pub mod egress_maps;
mod event_loop;
pub mod held;
mod kernel_stats;
mod maps;
mod object;
pub mod raw;
pub mod shared;
pub mod socket_object;
pub mod synthetic;
mod tc_object;

pub use self::attach::cleanup_leftovers;
pub use self::config::{CaptureConfig, SocketPayload};
pub use self::event_loop::{EventLoop, EventLoopStats, RING_POLL, SHUTDOWN_SEND_BUDGET};
pub use self::kernel_stats::KernelStats;
pub use self::tc_object::{test_run_classifier, Capture};
pub use crate::hooks::tc_attach::{AttachMode, AttachPolicy};
