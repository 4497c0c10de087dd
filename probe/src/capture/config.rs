//! How the capture is sized and labelled ([`CaptureConfig`]), shared by both capture objects.

use std::time::Duration;

use super::abi;
use crate::error::{Error, Result};
use crate::hooks::tc_attach::AttachPolicy;

/// How the capture is sized and labelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// First bytes of each message copied (1..=2048).
    pub snaplen: u32,
    /// Ring buffer size: a power of two, at least one page.
    pub ring_buffer_bytes: u32,
    /// Connections tracked at once (LRU beyond that), also the bound of pending messages.
    pub max_connections: u32,
    /// Requests whose first bytes the kernel holds at once until their response starts (so
    /// the pair travels as one record); beyond that a request is sent alone.
    pub held_requests: u32,
    /// Quiet time after which a message is emitted with the kernel's current counters.
    pub idle_flush: Duration,
    /// Node name put in every observation point.
    pub node: String,
    /// TCX with legacy fallback (default), or legacy tc filters only.
    pub attach: AttachPolicy,
    /// What the socket point's server sockets capture where their client is a socket it
    /// traces too.
    pub socket_payload: SocketPayload,
}

/// What a server socket captures of a connection whose client socket the socket point traces
/// too (a client and a server pod on one node, reached without a NAT between them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SocketPayload {
    /// Payload only where the client is not traced here; where it is (a plain HTTP/1.x
    /// connection), the server's socket sends timings and counters alone, which the collector
    /// adds to the client socket's decoded view as the server's observation.
    #[default]
    Uncovered,
    /// Payload at both ends: each such exchange is decoded twice.
    Always,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            snaplen: abi::CLOVISOR_DEFAULT_SNAPLEN,
            // One record per exchange: 2 MiB hold thousands, drained every 10 ms; the ring is
            // mapped into the probe (twice, by the kernel's design), so it counts in its RSS.
            ring_buffer_bytes: 2 << 20,
            max_connections: 65_536,
            held_requests: 4096,
            idle_flush: Duration::from_millis(200),
            node: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default(),
            attach: AttachPolicy::Auto,
            socket_payload: SocketPayload::Uncovered,
        }
    }
}

impl CaptureConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::Config { reason });
        if self.snaplen == 0 || self.snaplen > abi::CLOVISOR_MAX_SNAPLEN {
            return bad(format!(
                "snaplen {} not in 1..={}",
                self.snaplen,
                abi::CLOVISOR_MAX_SNAPLEN
            ));
        }
        if !self.ring_buffer_bytes.is_power_of_two() || self.ring_buffer_bytes < 4096 {
            return bad(format!(
                "ring_buffer_bytes {} must be a power of two ≥ 4096",
                self.ring_buffer_bytes
            ));
        }
        if self.max_connections == 0 {
            return bad("max_connections must be > 0".into());
        }
        if self.held_requests == 0 {
            return bad("held_requests must be > 0".into());
        }
        if self.idle_flush.is_zero() {
            return bad("idle_flush must be > 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_rejects_unworkable_sizes() {
        let ok = CaptureConfig::default();
        assert!(
            ok.validate().is_ok(),
            "default config must be valid: {ok:?}"
        );
        for (cfg, what) in [
            (
                CaptureConfig {
                    snaplen: 0,
                    ..ok.clone()
                },
                "snaplen 0",
            ),
            (
                CaptureConfig {
                    snaplen: 4096,
                    ..ok.clone()
                },
                "snaplen above MAX_SNAPLEN",
            ),
            (
                CaptureConfig {
                    ring_buffer_bytes: 3 * 4096,
                    ..ok.clone()
                },
                "ring not a power of two",
            ),
            (
                CaptureConfig {
                    ring_buffer_bytes: 1024,
                    ..ok.clone()
                },
                "ring below a page",
            ),
            (
                CaptureConfig {
                    max_connections: 0,
                    ..ok.clone()
                },
                "no connections",
            ),
            (
                CaptureConfig {
                    idle_flush: Duration::ZERO,
                    ..ok.clone()
                },
                "zero idle flush",
            ),
        ] {
            assert!(cfg.validate().is_err(), "{what} must be rejected");
        }
    }
}
