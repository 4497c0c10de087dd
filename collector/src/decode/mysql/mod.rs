//! MySQL and MariaDB (client/server protocol 4.1): detected by the server's greeting (the
//! server speaks first), or, on a flow picked up mid-way, by a client message that is one
//! `COM_QUERY` or `COM_STMT_PREPARE` packet.
//!
//! - [`wire`]: packets, greeting, handshake response, OK/ERR/result-set heads.
//! - [`flow`]: the per-connection state — handshake, prepared statements, commands waiting for
//!   responses — and what an exchange is (see there).
//!
//! Statements leave the collector sanitized ([`crate::decode::sql::sanitize`], MySQL quoting):
//! literals become `?`. Auth data and `COM_STMT_EXECUTE` parameter values are never read.

pub mod flow;
pub mod wire;

pub use flow::MysqlFlow;

use super::{CaptureNeeds, Decoder, Detection, Direction, FlowDecoder, FlowInfo, Message, Within};

/// Bytes of a message MySQL makes use of: a statement, or a response's first packets.
pub const USEFUL_PREFIX: u32 = 1024;

/// The MySQL [`Decoder`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Mysql;

impl Decoder for Mysql {
    fn name(&self) -> &'static str {
        "mysql"
    }

    /// Results hold one packet per row: a result's end is beyond the prefix when it is large,
    /// hence the packet headers (not yet captured by the probe: see docs/protocols.md).
    fn capture_needs(&self) -> CaptureNeeds {
        CaptureNeeds {
            prefix: USEFUL_PREFIX,
            within: Within::FrameHeaders { bytes: 4 },
        }
    }

    fn detect(&self, _: &FlowInfo<'_>, first: &Message<'_>) -> Detection {
        let Some((packet, took)) = wire::packet(first.payload) else {
            return Detection::No;
        };
        let claims = match first.direction {
            Direction::ServerToClient => packet.seq == 0 && wire::is_greeting(packet.payload),
            Direction::ClientToServer => {
                packet.seq == 0
                    && matches!(packet.payload.first(), Some(0x03 | 0x16))
                    && u64::try_from(took).is_ok_and(|t| t == first.stats.bytes)
                    && packet.payload[1..]
                        .iter()
                        .all(|c| *c >= 0x20 || c.is_ascii_whitespace())
            }
        };
        if claims {
            Detection::Claim
        } else {
            Detection::No
        }
    }

    fn new_flow(&self, _: &FlowInfo<'_>) -> Box<dyn FlowDecoder> {
        Box::new(MysqlFlow::default())
    }
}

#[cfg(test)]
mod tests;
