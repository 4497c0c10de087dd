//! Wire contracts between the probe, the collector and the correlator, and the delivery protocol
//! both hops share.
//!
//! One package per contract and version: `capture::v1` (probe -> collector raw records) and
//! `session::v1` (collector -> correlator decoded sessions).
#![forbid(unsafe_code)]

pub mod capture {
    /// `clovisor.capture.v1`
    pub mod v1 {
        #![allow(clippy::doc_markdown, clippy::large_enum_variant)]
        tonic::include_proto!("clovisor.capture.v1");
    }
}

pub mod session {
    /// `clovisor.session.v1`
    pub mod v1 {
        #![allow(clippy::doc_markdown, clippy::large_enum_variant)]
        tonic::include_proto!("clovisor.session.v1");
    }
}

pub mod delivery;
pub mod hops;
