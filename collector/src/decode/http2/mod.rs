//! HTTP/2 and gRPC: detected by the client's connection preface (h2c with prior knowledge, or
//! TLS seen in plaintext at the socket point), or handed over by the HTTP/1.x decoder after an
//! accepted `Upgrade: h2c`. One exchange per stream; a stream whose request is
//! `content-type: application/grpc*` is a gRPC call.
//!
//! - [`frame`]: the preface and frame headers.
//! - [`hpack`]: header blocks, with a dynamic table per connection and direction.
//! - [`headers`]: what an exchange keeps of a header list (an allow-list).
//! - [`grpc`]: service, method and status of a call.
//! - [`flow`]: the per-connection state that walks frames and assembles streams.
//!
//! The probe captures a prefix of each message: see `docs/protocols.md` for what is lost
//! beyond it and how the decoder stays truthful (out-of-step HPACK, incomplete streams).

pub mod flow;
pub mod frame;
pub mod grpc;
pub mod headers;
pub mod hpack;

pub use flow::Http2Flow;

use clovisor_proto::capture::v1::ProtocolHint;

use super::{CaptureNeeds, Decoder, Detection, Direction, FlowDecoder, FlowInfo, Message, Within};

/// Bytes of a message HTTP/2 makes use of: the frames at its start (a request's `HEADERS` and
/// the start of its `DATA`). The probe's default snaplen.
pub const USEFUL_PREFIX: u32 = 1024;

/// The HTTP/2 (and gRPC) [`Decoder`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Http2;

impl Decoder for Http2 {
    fn name(&self) -> &'static str {
        "http2"
    }

    /// The prefix, and every frame header inside a message: frames past the prefix are where
    /// streams end and where later header blocks are (see `docs/protocols.md`).
    fn capture_needs(&self) -> CaptureNeeds {
        CaptureNeeds {
            prefix: USEFUL_PREFIX,
            within: Within::FrameHeaders {
                bytes: frame::HEADER_LEN as u16,
            },
        }
    }

    /// The client's connection preface claims the flow (all of it, or as much as was captured
    /// when that is at least its first line). A flow picked up mid-way (no preface) is not
    /// claimed: its HPACK state is unknown. A port named for HTTP/2 or gRPC whose client sends
    /// something else is a mismatch (`not_http2`) unless another decoder claims it (HTTP/1.1
    /// with `Upgrade: h2c`).
    fn detect(&self, flow: &FlowInfo<'_>, first: &Message<'_>) -> Detection {
        if first.direction != Direction::ClientToServer {
            return Detection::No;
        }
        if is_preface(first.payload) {
            Detection::Claim
        } else if matches!(flow.hint, ProtocolHint::Http2 | ProtocolHint::Grpc) {
            Detection::HintMismatch {
                reason: "not_http2",
            }
        } else {
            Detection::No
        }
    }

    fn new_flow(&self, _: &FlowInfo<'_>) -> Box<dyn FlowDecoder> {
        Box::new(Http2Flow::default())
    }
}

/// Whether `payload` starts with the connection preface, or is a capture of at least its
/// first line.
pub fn is_preface(payload: &[u8]) -> bool {
    payload.starts_with(frame::PREFACE)
        || (payload.len() >= frame::PREFACE_START.len() && frame::PREFACE.starts_with(payload))
}

#[cfg(test)]
mod tests;
