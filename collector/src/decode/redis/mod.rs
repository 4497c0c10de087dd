//! Redis (RESP2 and RESP3): detected by a RESP command array at the start of a client message
//! (`*<n>\r\n$`); each command is paired with the next reply of the flow, in order, across
//! messages (pipelining).
//!
//! - [`resp`]: commands and replies from a message's bytes, cut anywhere.
//! - [`flow`]: the per-flow queue that pairs them into [`Exchange`](super::Exchange)s.
//!
//! What leaves the collector of a command is its name, its subcommand, its first key and the
//! number of its other arguments ([`resp::Command::statement`]): values never do, and `AUTH` /
//! `HELLO` not even their number.

pub mod flow;
pub mod resp;

pub use flow::RedisFlow;

use clovisor_proto::capture::v1::ProtocolHint;

use super::{CaptureNeeds, Decoder, Detection, Direction, FlowDecoder, FlowInfo, Message, Within};

/// Bytes of a message Redis makes use of: the first commands or replies of a pipeline.
pub const USEFUL_PREFIX: u32 = 1024;

/// The Redis [`Decoder`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Redis;

impl Decoder for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn capture_needs(&self) -> CaptureNeeds {
        CaptureNeeds {
            prefix: USEFUL_PREFIX,
            within: Within::Nothing,
        }
    }

    /// A client message starting with a RESP command array claims the flow. Inline commands
    /// (`PING\r\n`, as typed into telnet) are decoded once claimed but claim nothing: any text
    /// protocol looks like one. A port named `redis` whose client sends something else is a
    /// mismatch (`not_redis`).
    fn detect(&self, flow: &FlowInfo<'_>, first: &Message<'_>) -> Detection {
        if first.direction != Direction::ClientToServer {
            return Detection::No;
        }
        if resp::looks_like_command(first.payload) {
            Detection::Claim
        } else if flow.hint == ProtocolHint::Redis {
            Detection::HintMismatch {
                reason: "not_redis",
            }
        } else {
            Detection::No
        }
    }

    fn new_flow(&self, _: &FlowInfo<'_>) -> Box<dyn FlowDecoder> {
        Box::new(RedisFlow::default())
    }
}

#[cfg(test)]
mod tests;
