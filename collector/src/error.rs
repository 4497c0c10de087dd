//! The collector library's error type.

#[cfg(feature = "replay")]
use std::path::PathBuf;

use crate::decode::http1::ParseError;

/// Everything that can go wrong in the collector library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An HTTP/1.x head could not be decoded.
    #[error("decoding failed")]
    Decode {
        /// Why.
        #[source]
        source: ParseError,
    },
    /// A capture file could not be read.
    #[cfg(feature = "replay")]
    #[error("reading capture {path}")]
    CaptureIo {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// A capture file is not valid pcap/pcapng.
    #[cfg(feature = "replay")]
    #[error(
        "capture is not valid pcap/pcapng at byte {offset} (after {packets} packets): {detail}"
    )]
    CaptureFormat {
        /// Where in the file the damage starts.
        offset: u64,
        /// Packets read before it.
        packets: u64,
        /// What is wrong.
        detail: String,
    },
    /// The session channel closed: nobody consumes decoded sessions any more.
    #[error("session output channel closed")]
    OutputClosed,
}

/// Result with the collector's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<ParseError> for Error {
    fn from(source: ParseError) -> Self {
        Self::Decode { source }
    }
}
