//! The flow decoder of a counters-only view: a pod veth's view of a connection whose payload the
//! pod's socket point captures (`FlowStart.counters_only`). Its messages carry timings and
//! counters, no bytes: each request message and the response message after it make one
//! exchange with no protocol fields, which the local join adds to the socket point's decoded
//! view of the same exchange (same wire key: client address and port, request sequence number)
//! as the veth's observation.
//!
//! A response the probe flushed early (its counters read on idle, `partial`) is taken as it is:
//! its decoded twin at the socket does not wait for final counters when its head says the
//! response is whole, and a view that waited here would reach the local join after its twin had
//! left. The veth's response counters are then those read at the flush (all of a response that
//! went quiet).

use clovisor_proto::session::v1::Protocol;

use crate::decode::{
    Direction, Exchange, Fields, FlowDecoder, Message, MessageStats, Output, Step,
};

/// Name of the decoder (the metrics' `protocol` label for what it reports).
pub const NAME: &str = "counters_only";

/// A counters-only flow's state: the request message waiting for its response.
#[derive(Debug, Default)]
pub struct CountersOnly {
    request: Option<MessageStats>,
}

impl CountersOnly {
    fn emit(out: &mut dyn Output, request: MessageStats, response: Option<MessageStats>) {
        out.exchange(Exchange {
            protocol: Protocol::Unspecified,
            request,
            incomplete: response.is_none(),
            response,
            position: 0,
            fields: Fields::None,
            trace: None,
            attributes: Default::default(),
        });
    }
}

impl FlowDecoder for CountersOnly {
    fn on_message(&mut self, message: &Message<'_>, out: &mut dyn Output) -> Step {
        match (message.direction, self.request.take()) {
            (Direction::ClientToServer, earlier) => {
                // A request after a request: the response to the first was never seen.
                if let Some(earlier) = earlier {
                    Self::emit(out, earlier, None);
                }
                self.request = Some(message.stats);
            }
            (Direction::ServerToClient, Some(request)) => {
                Self::emit(out, request, Some(message.stats));
            }
            (Direction::ServerToClient, None) => out.unpaired("response_without_request"),
        }
        Step::Continue
    }

    fn on_close(&mut self, out: &mut dyn Output) {
        if let Some(request) = self.request.take() {
            Self::emit(out, request, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::testing::Recorded;

    fn msg(direction: Direction, index: u32, tcp_seq: u32, bytes: u64) -> Message<'static> {
        Message {
            direction,
            stats: MessageStats {
                index,
                start: 1_000 + u64::from(index),
                end: 2_000 + u64::from(index),
                tcp_seq,
                bytes,
                packets: 1,
                retransmits: 0,
                wire: None,
            },
            payload: &[],
            partial: false,
            later: &[],
        }
    }

    #[test]
    fn each_request_and_its_response_make_one_exchange_without_fields() {
        let mut flow = CountersOnly::default();
        let mut seen = Recorded::default();
        for m in [
            msg(Direction::ServerToClient, 0, 7, 10),
            msg(Direction::ClientToServer, 1, 100, 80),
            msg(Direction::ServerToClient, 2, 900, 300),
            msg(Direction::ClientToServer, 3, 180, 80),
            msg(Direction::ClientToServer, 4, 260, 80),
        ] {
            assert_eq!(flow.on_message(&m, &mut seen), Step::Continue);
        }
        flow.on_close(&mut seen);
        assert_eq!(seen.unpaired, ["response_without_request"]);
        let got: Vec<_> = seen
            .exchanges
            .iter()
            .map(|e| {
                (
                    e.request.tcp_seq,
                    e.request.bytes,
                    e.response.map(|r| r.bytes),
                    e.incomplete,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (100, 80, Some(300), false),
                (180, 80, None, true),
                (260, 80, None, true)
            ]
        );
        assert!(seen
            .exchanges
            .iter()
            .all(|e| e.protocol == Protocol::Unspecified
                && e.fields == Fields::None
                && e.position == 0
                && e.trace.is_none()));
    }

    #[test]
    fn a_response_flushed_early_is_taken_as_it_is() {
        // Its decoded twin does not wait (its head says the response is whole): held here for
        // final counters, this view would come after the twin had left the local join.
        let flow = CountersOnly::default();
        let mut m = msg(Direction::ServerToClient, 1, 1, 1);
        m.partial = true;
        assert!(!flow.awaits_final(&m));
    }
}
