//! Wire contracts between the probe, the collector and the correlator, and the delivery protocol
//! both hops share.
//!
//! One package per contract and version: `capture::v1` (probe -> collector raw records) and
//! `session::v1` (collector -> correlator decoded sessions), both speaking of observation points
//! in the vocabulary of `common::v1` (point kinds, sides). The addresses they carry as bytes are
//! read through accessors ([`addr`]).

pub mod common {
    /// `clovisor.common.v1`
    pub mod v1 {
        #![allow(clippy::doc_markdown)]
        tonic::include_proto!("clovisor.common.v1");

        impl PointKind {
            /// The point's name as the REST API, span attributes and metric labels show it:
            /// `pod`, `node`, `socket`, or `unspecified`.
            pub fn short_name(self) -> &'static str {
                match self {
                    Self::Pod => "pod",
                    Self::Node => "node",
                    Self::Socket => "socket",
                    Self::Unspecified => "unspecified",
                }
            }
        }

        impl Side {
            /// `client` or `server` as the REST API and span attributes show it; `None` when
            /// unspecified.
            pub fn short_name(self) -> Option<&'static str> {
                match self {
                    Self::Client => Some("client"),
                    Self::Server => Some("server"),
                    Self::Unspecified => None,
                }
            }
        }
    }
}

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

    #[cfg(test)]
    pub(crate) mod arb;
    pub mod decode;
    pub mod encode;
    pub use decode::{decode, DecodeError};
}

pub mod addr;
pub mod delivery;
pub mod dns;
pub mod hops;
pub mod inproc;
pub mod join;
pub mod kafka;
pub mod tls;
pub mod wire;
