//! Clovisor-rs collector: receives raw capture records from probes, reassembles each flow's
//! messages into request/response exchanges, decodes them (HTTP/1.x for now) and emits
//! `clovisor.session.v1.Session`s.
//!
//! Pipeline: [`server::CaptureService`] (gRPC ingest, acks, dedupe) -> [`flows::FlowTable`]
//! (ordering, pairing, bounded state) -> [`decode`] (protocol decoders) -> a channel of sessions
//! that [`forward`] sends to the correlator. [`replay::pcap`] turns capture files into the same
//! records a probe sends.
#![forbid(unsafe_code)]

pub mod decode;
pub mod error;
pub mod flows;
pub mod forward;
pub mod metrics;
pub mod replay;
pub mod server;

pub use error::{Error, Result};
pub use metrics::CollectorMetrics;
