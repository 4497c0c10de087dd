//! Pairing DNS queries with their answers on one flow.
//!
//! An answer pairs with the oldest open query of the same id and the same question (the name
//! compared without case); an answer without a question (later messages of a zone transfer) by
//! id alone. Order does not matter: over UDP a client sends its A and AAAA queries back to back
//! and the answers come in any order. Over TCP the answers a server message holds after the first
//! one for a query, with the same id, continue it (a zone transfer's answer spans messages): their
//! answer counts add up. A query asked again with the same id and question before any answer (a
//! client's retry) reports the first as incomplete. Queries still open when the flow ends are
//! reported incomplete; at most [`MAX_OPEN`] are held, the oldest reported incomplete first.

use std::collections::VecDeque;

use clovisor_proto::session::v1::{Dns, DnsTransport, Protocol};

use super::parse::{self, DnsMessage, Question};
use crate::decode::{
    Direction, Exchange, Fields, FlowDecoder, Message, MessageStats, Output, Step,
};

/// Open queries held per flow at most.
pub const MAX_OPEN: usize = 256;

/// A query waiting for its answer.
#[derive(Debug)]
struct Open {
    request: MessageStats,
    position: u32,
    id: u16,
    question: Option<Question>,
    qdcount: u16,
    recursion_desired: bool,
}

/// The DNS state of one flow.
#[derive(Debug)]
pub struct DnsFlow {
    tcp: bool,
    open: VecDeque<Open>,
}

impl DnsFlow {
    /// State for a flow over TCP (length-prefixed messages) or UDP (one message per datagram).
    pub fn new(tcp: bool) -> Self {
        Self {
            tcp,
            open: VecDeque::new(),
        }
    }

    /// Queries waiting for their answer.
    pub fn open_queries(&self) -> usize {
        self.open.len()
    }

    fn transport(&self) -> DnsTransport {
        if self.tcp {
            DnsTransport::Tcp
        } else {
            DnsTransport::Udp
        }
    }

    /// The DNS messages of a flow message; a framing error is reported and ends the list.
    fn messages(&self, m: &Message<'_>, out: &mut dyn Output) -> Vec<DnsMessage> {
        let mut found = Vec::new();
        if self.tcp {
            for framed in parse::split_tcp(m.payload) {
                match framed.and_then(parse::message) {
                    Ok(d) => found.push(d),
                    Err(e) => {
                        out.decode_error(e.as_label());
                        break;
                    }
                }
            }
        } else {
            match parse::message(m.payload) {
                Ok(d) => found.push(d),
                Err(e) => out.decode_error(e.as_label()),
            }
        }
        found
    }

    fn on_queries(&mut self, m: &Message<'_>, out: &mut dyn Output) {
        let mut position = 0u32;
        for d in self.messages(m, out) {
            if d.header.response {
                out.decode_error("dns_answer_from_client");
                continue;
            }
            // A retry of an open query: the first went unanswered.
            if let Some(i) = self.open.iter().position(|o| {
                o.id == d.header.id
                    && match (&o.question, &d.question) {
                        (Some(a), Some(b)) => a.same(b),
                        (None, None) => true,
                        _ => false,
                    }
            }) {
                if let Some(o) = self.open.remove(i) {
                    out.exchange(self.incomplete(o));
                }
            }
            if self.open.len() >= MAX_OPEN {
                if let Some(o) = self.open.pop_front() {
                    out.exchange(self.incomplete(o));
                }
            }
            self.open.push_back(Open {
                request: m.stats,
                position,
                id: d.header.id,
                question: d.question,
                qdcount: d.header.qdcount,
                recursion_desired: d.header.recursion_desired,
            });
            position = position.saturating_add(1);
        }
    }

    fn on_answers(&mut self, m: &Message<'_>, out: &mut dyn Output) {
        // Exchanges of this server message, held so that a zone transfer's later messages can
        // add to them.
        let mut done: Vec<Exchange> = Vec::new();
        for d in self.messages(m, out) {
            if !d.header.response {
                out.decode_error("dns_query_from_server");
                continue;
            }
            let i = self.open.iter().position(|o| {
                o.id == d.header.id
                    && match (&o.question, &d.question) {
                        (Some(a), Some(b)) => a.same(b),
                        _ => true,
                    }
            });
            if let Some(o) = i.and_then(|i| self.open.remove(i)) {
                done.push(self.answered(o, &d, m.stats));
                continue;
            }
            let continued = done.iter_mut().rev().find(|e| match &e.fields {
                Fields::Dns(dns) => {
                    dns.id == u32::from(d.header.id)
                        && d.question.as_ref().is_none_or(|q| {
                            dns.question_name.eq_ignore_ascii_case(&q.name)
                                && dns.question_type == u32::from(q.qtype)
                        })
                }
                _ => false,
            });
            match continued {
                Some(Exchange {
                    fields: Fields::Dns(dns),
                    ..
                }) => {
                    dns.answer_count = dns.answer_count.saturating_add(u32::from(d.header.ancount));
                    dns.truncated |= d.header.truncated;
                    if d.header.rcode != 0 && dns.response_code == 0 {
                        dns.response_code = u32::from(d.header.rcode);
                    }
                }
                _ => out.unpaired("response_without_request"),
            }
        }
        for e in done {
            out.exchange(e);
        }
    }

    fn fields(&self, o: &Open) -> Dns {
        let (question_name, question_type, question_class) = match &o.question {
            Some(q) => (q.name.clone(), u32::from(q.qtype), u32::from(q.qclass)),
            None => (String::new(), 0, 0),
        };
        Dns {
            id: u32::from(o.id),
            question_name,
            question_type,
            question_class,
            transport: self.transport() as i32,
            recursion_desired: o.recursion_desired,
            question_count: u32::from(o.qdcount),
            ..Dns::default()
        }
    }

    fn incomplete(&self, o: Open) -> Exchange {
        let dns = self.fields(&o);
        exchange(o.request, None, o.position, dns)
    }

    fn answered(&self, o: Open, d: &DnsMessage, response: MessageStats) -> Exchange {
        let mut dns = self.fields(&o);
        dns.response_code = u32::from(d.header.rcode);
        dns.answer_count = u32::from(d.header.ancount);
        dns.truncated = d.header.truncated;
        dns.recursion_available = d.header.recursion_available;
        dns.authoritative = d.header.authoritative;
        dns.answer_addresses.clone_from(&d.addresses);
        exchange(o.request, Some(response), o.position, dns)
    }
}

fn exchange(
    request: MessageStats,
    response: Option<MessageStats>,
    position: u32,
    dns: Dns,
) -> Exchange {
    Exchange {
        protocol: Protocol::Dns,
        incomplete: response.is_none(),
        request,
        response,
        position,
        fields: Fields::Dns(dns),
        trace: None,
        attributes: Default::default(),
    }
}

impl FlowDecoder for DnsFlow {
    fn on_message(&mut self, m: &Message<'_>, out: &mut dyn Output) -> Step {
        match m.direction {
            Direction::ClientToServer => self.on_queries(m, out),
            Direction::ServerToClient => self.on_answers(m, out),
        }
        Step::Continue
    }

    fn on_close(&mut self, out: &mut dyn Output) {
        while let Some(o) = self.open.pop_front() {
            out.exchange(self.incomplete(o));
        }
    }
}
