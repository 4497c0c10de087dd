//! Wire contracts between the probe, the collector and the correlator.
//!
//! One package per contract and version: `capture::v1` (probe -> collector raw records) and
//! `session::v1` (collector -> correlator decoded sessions).
#![forbid(unsafe_code)]

pub mod capture {
    pub mod v1 {
        #![allow(clippy::doc_markdown, clippy::large_enum_variant)]
        tonic::include_proto!("clovisor.capture.v1");
    }
}

pub mod session {
    pub mod v1 {
        #![allow(clippy::doc_markdown, clippy::large_enum_variant)]
        tonic::include_proto!("clovisor.session.v1");
    }
}
