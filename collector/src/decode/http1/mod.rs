//! HTTP/1.x: detected by a request line at the start of a client message; each request head is
//! paired with the next response head of the flow (keep-alive, pipelining, `100 Continue`).
//!
//! - [`parse`]: request and response heads from a message's first bytes.
//! - [`pairing`]: the per-flow state that pairs them into [`Exchange`](super::Exchange)s.

pub mod pairing;
pub mod parse;

pub use pairing::Http1Flow;
pub use parse::{
    decode_request, decode_requests, decode_response, decode_responses, sniff, ParseError,
    RequestHead, ResponseHead, Sniffed, MAX_HEADERS, MAX_PIPELINED,
};

use clovisor_proto::capture::v1::ProtocolHint;

use super::{CaptureNeeds, Decoder, Detection, Direction, FlowDecoder, FlowInfo, Message, Within};

/// Bytes of a message HTTP/1.x makes use of: the head (request line, the headers that matter,
/// status line), and the start of a pipelined successor. The probe's default snaplen.
pub const USEFUL_PREFIX: u32 = 1024;

/// The HTTP/1.x [`Decoder`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Http1;

impl Decoder for Http1 {
    fn name(&self) -> &'static str {
        "http1"
    }

    fn capture_needs(&self) -> CaptureNeeds {
        CaptureNeeds {
            prefix: USEFUL_PREFIX,
            within: Within::Nothing,
        }
    }

    /// A request line of a known method claims the flow, whatever the port. A server's message
    /// claims nothing: a flow picked up mid-way is decided by its next request, as a server
    /// would. A port named for HTTP whose client sends something else is a mismatch
    /// (`not_http`), and the flow stays undecided.
    fn detect(&self, flow: &FlowInfo<'_>, first: &Message<'_>) -> Detection {
        if first.direction != Direction::ClientToServer {
            return Detection::No;
        }
        if sniff(first.payload) == Sniffed::Request {
            Detection::Claim
        } else if flow.hint == ProtocolHint::Http {
            Detection::HintMismatch {
                reason: ParseError::NotHttp.as_label(),
            }
        } else {
            Detection::No
        }
    }

    fn new_flow(&self, _: &FlowInfo<'_>) -> Box<dyn FlowDecoder> {
        Box::new(Http1Flow::default())
    }
}

#[cfg(test)]
mod tests;
