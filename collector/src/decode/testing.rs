//! Helpers for decoder tests: an [`Output`] that records, messages made from bytes.

use super::{Direction, Exchange, Message, MessageStats, Output};

/// What a flow decoder reported, in order.
#[derive(Debug, Default)]
pub struct Recorded {
    pub exchanges: Vec<Exchange>,
    pub errors: Vec<&'static str>,
    pub unpaired: Vec<&'static str>,
    pub desyncs: Vec<&'static str>,
}

impl Output for Recorded {
    fn exchange(&mut self, exchange: Exchange) {
        self.exchanges.push(exchange);
    }
    fn decode_error(&mut self, reason: &'static str) {
        self.errors.push(reason);
    }
    fn unpaired(&mut self, reason: &'static str) {
        self.unpaired.push(reason);
    }
    fn desync(&mut self, reason: &'static str) {
        self.desyncs.push(reason);
    }
}

/// Message `index` of a flow, all of `payload`, with made-up timings.
pub fn message(index: u32, direction: Direction, payload: &[u8]) -> Message<'_> {
    Message {
        direction,
        stats: MessageStats {
            index,
            start: u64::from(index) * 10,
            end: u64::from(index) * 10 + 5,
            tcp_seq: 100 + index,
            bytes: payload.len() as u64,
            packets: 1,
            retransmits: 0,
        },
        payload,
        partial: false,
    }
}
