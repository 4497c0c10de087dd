//! Pairing Redis commands with replies on one flow.
//!
//! Redis answers every command in order, so commands go into a queue as client messages come
//! and each reply takes the oldest: pipelined commands in one message, and replies spread over
//! several messages, pair up. RESP3 push data (`>`) answers no command and is skipped. A
//! subscribing command (`SUBSCRIBE`, `PSUBSCRIBE`, `SSUBSCRIBE`) or `MONITOR` turns the
//! connection into a stream of messages that answer nothing: its reply is the flow's last
//! exchange, and decoding stops there.
//!
//! Cut messages (the capture keeps only the first snaplen bytes): a command cut after its name
//! is kept, marked `statement_truncated`, and what follows it in the message is unknown; a reply
//! cut in the middle pairs with its command (its type, and an error's start, are read), and the
//! commands still waiting are answered by the rest of that message, which was not captured:
//! they pair with it, marked `response_truncated`. Each cut message is counted
//! (`decode_errors_total{reason="redis_request_cut"|"redis_response_cut"}`).

use std::collections::{HashMap, VecDeque};

use clovisor_proto::session::v1::{Database, Protocol};

use super::resp::{self, Command, Parsed, Reply, ReplyType};
use crate::decode::{
    Direction, Exchange, Fields, FlowDecoder, Message, MessageStats, Output, Step,
};

/// Commands waiting for replies at most; beyond, the oldest is given up (incomplete).
pub const MAX_PENDING: usize = 256;

#[derive(Debug)]
struct Pending {
    request: MessageStats,
    /// Position among the commands of its message.
    position: u32,
    command: Command,
}

/// The Redis state of one flow.
#[derive(Debug, Default)]
pub struct RedisFlow {
    pending: VecDeque<Pending>,
}

impl FlowDecoder for RedisFlow {
    fn on_message(&mut self, m: &Message<'_>, out: &mut dyn Output) -> Step {
        match m.direction {
            Direction::ClientToServer => {
                self.on_commands(m, out);
                Step::Continue
            }
            Direction::ServerToClient => self.on_replies(m, out),
        }
    }

    fn on_close(&mut self, out: &mut dyn Output) {
        while let Some(p) = self.pending.pop_front() {
            out.exchange(exchange(p, None, None, false));
        }
    }
}

impl RedisFlow {
    fn on_commands(&mut self, m: &Message<'_>, out: &mut dyn Output) {
        let cut = m.is_cut();
        let mut at = 0;
        let mut position = 0u32;
        loop {
            // Redis skips empty lines between commands (`redis-cli --pipe` sends one).
            at += m.payload[at..]
                .iter()
                .take_while(|c| matches!(c, b'\r' | b'\n'))
                .count();
            if at >= m.payload.len() {
                break;
            }
            match resp::command(&m.payload[at..], cut) {
                Parsed::Done(command, took) => {
                    if command.truncated {
                        out.decode_error("redis_request_cut");
                    }
                    if self.pending.len() >= MAX_PENDING {
                        if let Some(oldest) = self.pending.pop_front() {
                            out.exchange(exchange(oldest, None, None, false));
                        }
                    }
                    self.pending.push_back(Pending {
                        request: m.stats,
                        position,
                        command,
                    });
                    position = position.saturating_add(1);
                    at = at.saturating_add(took);
                }
                Parsed::Incomplete if cut => {
                    out.decode_error("redis_request_cut");
                    return;
                }
                Parsed::Incomplete => {
                    out.decode_error("redis_incomplete_command");
                    return;
                }
                Parsed::Malformed => {
                    out.decode_error("redis_malformed");
                    return;
                }
            }
        }
        if cut && !self.pending.back().is_some_and(|p| p.command.truncated) {
            // Cut on a command boundary (the probe keeps the start of a message's first
            // packet): the commands beyond are unknown.
            out.decode_error("redis_request_cut");
        }
    }

    fn on_replies(&mut self, m: &Message<'_>, out: &mut dyn Output) -> Step {
        let mut at = 0;
        while at < m.payload.len() {
            match resp::reply(&m.payload[at..]) {
                Parsed::Done(reply, took) => {
                    at = at.saturating_add(took);
                    if reply.kind == ReplyType::Push {
                        continue;
                    }
                    let Some(p) = self.pending.pop_front() else {
                        out.unpaired("response_without_request");
                        continue;
                    };
                    let stops = matches!(
                        p.command.name.as_str(),
                        "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "MONITOR"
                    ) && reply.kind != ReplyType::Error;
                    out.exchange(exchange(p, Some(m.stats), Some(reply), false));
                    if stops {
                        self.on_close(out);
                        return Step::Stop;
                    }
                }
                Parsed::Incomplete if m.is_cut() => {
                    out.decode_error("redis_response_cut");
                    let first = resp::reply_start(&m.payload[at..]);
                    self.answer_all(m.stats, first, out);
                    return Step::Continue;
                }
                Parsed::Incomplete => {
                    out.decode_error("redis_incomplete_reply");
                    return Step::Continue;
                }
                Parsed::Malformed => {
                    out.desync("malformed_reply");
                    self.answer_all(m.stats, None, out);
                    return Step::Continue;
                }
            }
        }
        if m.is_cut() && !self.pending.is_empty() {
            // Cut on a reply boundary: the replies beyond answer the commands still waiting.
            out.decode_error("redis_response_cut");
            self.answer_all(m.stats, None, out);
        }
        Step::Continue
    }

    /// Pairs every waiting command with `response`, whose replies were not all read: the
    /// first with `first` if its start was.
    fn answer_all(
        &mut self,
        response: MessageStats,
        mut first: Option<Reply>,
        out: &mut dyn Output,
    ) {
        while let Some(p) = self.pending.pop_front() {
            out.exchange(exchange(p, Some(response), first.take(), true));
        }
    }
}

fn exchange(
    p: Pending,
    response: Option<MessageStats>,
    reply: Option<Reply>,
    cut: bool,
) -> Exchange {
    let (error_code, error_message) = reply
        .as_ref()
        .and_then(|r| r.error.clone())
        .unwrap_or_default();
    Exchange {
        protocol: Protocol::Redis,
        request: p.request,
        incomplete: response.is_none(),
        response,
        position: p.position,
        fields: Fields::Database(Database {
            system: "redis".to_owned(),
            statement: p.command.statement(),
            statement_truncated: p.command.truncated,
            operation: p.command.name,
            key: p.command.key.unwrap_or_default(),
            reply_type: reply
                .map(|r| r.kind.as_str().to_owned())
                .unwrap_or_default(),
            error_code,
            error_message,
            response_truncated: cut,
            ..Database::default()
        }),
        trace: None,
        attributes: HashMap::new(),
    }
}
