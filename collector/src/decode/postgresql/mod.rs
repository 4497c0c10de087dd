//! PostgreSQL (wire protocol 3): detected by the client's opening packet (startup, SSLRequest,
//! GSSENCRequest), or, on a flow picked up mid-way, by a client message made of whole
//! frontend messages starting with a query (`Q`) or Parse (`P`).
//!
//! - [`wire`]: the packets and typed messages, cut anywhere.
//! - [`flow`]: the per-connection state — opening, named statements and portals, requests
//!   waiting for results — and what an exchange is (see there).
//!
//! Statements leave the collector sanitized ([`crate::decode::sql::sanitize`]): literals become
//! `?`. Passwords and Bind parameters are never read.

pub mod flow;
pub mod wire;

pub use flow::PostgresqlFlow;

use super::{CaptureNeeds, Decoder, Detection, Direction, FlowDecoder, FlowInfo, Message, Within};

/// Bytes of a message PostgreSQL makes use of: a statement, or the start of a result up to its
/// command tag when the result is small.
pub const USEFUL_PREFIX: u32 = 1024;

/// The PostgreSQL [`Decoder`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Postgresql;

/// Tags of the messages a client sends once logged in.
const FRONTEND_TAGS: &[u8] = b"QPBEDSCHXpdcfF";

impl Decoder for Postgresql {
    fn name(&self) -> &'static str {
        "postgresql"
    }

    /// Results hold one frame per row: the CommandComplete of a large result is beyond the
    /// prefix, hence the frame headers (not yet captured by the probe: see docs/protocols.md).
    fn capture_needs(&self) -> CaptureNeeds {
        CaptureNeeds {
            prefix: USEFUL_PREFIX,
            within: Within::FrameHeaders { bytes: 5 },
        }
    }

    fn detect(&self, _: &FlowInfo<'_>, first: &Message<'_>) -> Detection {
        if first.direction != Direction::ClientToServer {
            return Detection::No;
        }
        if is_opening(first) || is_query(first) {
            Detection::Claim
        } else {
            Detection::No
        }
    }

    fn new_flow(&self, _: &FlowInfo<'_>) -> Box<dyn FlowDecoder> {
        Box::new(PostgresqlFlow::default())
    }
}

/// An opening packet that is the whole message.
fn is_opening(m: &Message<'_>) -> bool {
    let Some(len) = m.payload.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
        return false;
    };
    let whole = m
        .stats
        .bytes
        .max(u64::try_from(m.payload.len()).unwrap_or(u64::MAX));
    u64::from(u32::from_be_bytes(len)) == whole && wire::opening(m.payload).is_some()
}

/// Whole frontend messages up to the end of the capture, the first a query or Parse.
fn is_query(m: &Message<'_>) -> bool {
    if !matches!(m.payload.first(), Some(b'Q' | b'P')) {
        return false;
    }
    let mut at = 0;
    while at < m.payload.len() {
        match wire::frame(&m.payload[at..]) {
            wire::Next::Frame(f, took) if FRONTEND_TAGS.contains(&f.tag) => {
                if !f.whole {
                    return m.is_cut();
                }
                at = at.saturating_add(took);
            }
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests;
