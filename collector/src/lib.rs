//! Clovisor-rs collector: receives raw capture records from probes, reassembles each flow's
//! messages into request/response exchanges, decodes them (HTTP/1.x for now) and emits
//! `clovisor.session.v1.Session`s.
//!
//! Pipeline: [`server::CaptureService`] (gRPC ingest, acks, dedupe) -> [`flows::FlowTable`]
//! (ordering, endpoint metadata, bounded state) -> [`decode`] (the protocol seam: a decoder per
//! protocol detects its flows and pairs their messages into exchanges) -> sessions, on a channel
//! that [`forward`] sends to the correlator.
//!
//! With the `replay` feature, `replay::pcap` turns capture files into the records a probe would
//! have sent for them: a copy of the kernel's message rules for tests, benchmarks and examples,
//! kept out of the production collector (integration-tests/tests/replay_matches_kernel.rs holds
//! the copy to the BPF program).

pub mod decode;
pub mod error;
pub mod flows;
pub mod forward;
pub mod local_join;
pub mod metrics;
#[cfg(feature = "replay")]
pub mod replay;
pub mod server;

pub use error::{Error, Result};
pub use metrics::CollectorMetrics;
