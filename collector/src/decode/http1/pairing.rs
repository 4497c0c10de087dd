//! Pairing HTTP/1.x requests with responses on one flow.
//!
//! Messages alternate direction by construction, so the request heads of a client message pair
//! with the response heads of the next server message, one to one in order (pipelining). An
//! interim `100 Continue` makes the next client message the request's body rather than a new
//! request. Two requests in a row mean a response went missing: the first is reported
//! incomplete.

use std::collections::HashMap;

use clovisor_proto::session::v1::{Http, Protocol};

use super::parse::{
    decode_requests, decode_response, decode_responses, RequestHead, RequestHeads, ResponseHead,
    ResponseHeads,
};
use crate::decode::http2::{Http2, Http2Flow};
use crate::decode::{
    Decoder, Direction, Exchange, Fields, FlowDecoder, Message, MessageStats, Output, Step,
};

/// A request message waiting for its response.
#[derive(Debug)]
struct Open {
    request: MessageStats,
    /// Its request heads (several when pipelined); empty when none decoded, in which case the
    /// response is consumed without an exchange (the error is already counted).
    requests: RequestHeads,
    /// An interim `100 Continue` was seen: the next client message is the request body.
    awaiting_body: bool,
    /// Response bytes seen so far in interim responses.
    interim: Option<MessageStats>,
}

/// The HTTP/1.x state of one flow.
#[derive(Debug, Default)]
pub struct Http1Flow {
    open: Option<Open>,
    /// The HTTP/2 decoder the flow switched to (`Upgrade: h2c` accepted).
    upgraded: Option<Box<dyn FlowDecoder>>,
}

impl FlowDecoder for Http1Flow {
    fn on_message(&mut self, m: &Message<'_>, out: &mut dyn Output) -> Step {
        match m.direction {
            Direction::ClientToServer => self.on_request(m, out),
            Direction::ServerToClient => self.on_response(m, out),
        }
        if self.upgraded.is_some() {
            Step::Handover
        } else {
            Step::Continue
        }
    }

    fn successor(&mut self) -> Option<(&'static str, Box<dyn FlowDecoder>)> {
        self.upgraded.take().map(|f| (Http2.name(), f))
    }

    /// Waits for the final counters of an early-flushed response unless its head says how long
    /// its body is and its byte count says all of it arrived.
    fn awaits_final(&self, m: &Message<'_>) -> bool {
        m.direction == Direction::ServerToClient
            && self
                .open
                .as_ref()
                .is_some_and(|o| !response_is_whole(m, &o.requests))
    }

    fn on_close(&mut self, out: &mut dyn Output) {
        self.close(out);
    }
}

impl Http1Flow {
    fn on_request(&mut self, m: &Message<'_>, out: &mut dyn Output) {
        if let Some(open) = self.open.as_mut() {
            if open.awaiting_body {
                open.request.extend(&m.stats);
                open.awaiting_body = false;
                return;
            }
            // Two requests in a row means a response went missing.
            self.close(out);
        }
        let requests = match decode_requests(m.payload) {
            Ok(r) => r,
            Err(e) => {
                out.decode_error(e.as_label());
                RequestHeads::new()
            }
        };
        for r in &requests {
            if let Some(e) = r.trace_error {
                out.decode_error(e.as_label());
            }
        }
        self.open = Some(Open {
            request: m.stats,
            requests,
            awaiting_body: false,
            interim: None,
        });
    }

    fn on_response(&mut self, m: &Message<'_>, out: &mut dyn Output) {
        let Some(mut open) = self.open.take() else {
            out.unpaired("response_without_request");
            return;
        };
        if open.requests.is_empty() {
            // The request was not decodable (already counted); its response is of no use.
            return;
        }
        let responses = match decode_responses(m.payload, &open.requests) {
            Ok(r) => r,
            Err(e) => {
                out.decode_error(e.as_label());
                ResponseHeads::new()
            }
        };
        if let ([request], Some(first)) = (open.requests.as_slice(), responses.first()) {
            if first.status == 101 && request.upgrade_h2c {
                let head_len = first.head_len;
                self.upgrade(open, head_len, m);
                return;
            }
        }
        let mut response = m.stats;
        if let Some(interim) = open.interim {
            response.start = interim.start;
            response.bytes = response.bytes.saturating_add(interim.bytes);
            response.packets = response.packets.saturating_add(interim.packets);
            response.tcp_seq = interim.tcp_seq;
        }
        if !responses.is_empty() && responses.iter().all(ResponseHead::is_interim) {
            // Only `100 Continue`: the request body and the final response are still to come.
            // `response` already includes earlier interim responses.
            open.interim = Some(response);
            open.awaiting_body = true;
            self.open = Some(open);
            return;
        }
        let pipelined = open.requests.len();
        let mut finals = responses.into_iter().filter(|r| !r.is_interim());
        for (position, head) in open.requests.into_iter().enumerate() {
            out.exchange(exchange(Pair {
                request: open.request,
                response: Some(response),
                head,
                response_head: finals.next(),
                position,
                pipelined,
                incomplete: false,
            }));
        }
    }

    /// `Upgrade: h2c` was accepted: the request becomes stream 1 of an HTTP/2 connection whose
    /// server frames follow the `101` head (`head_len` bytes) in `m`. Its exchange is reported
    /// by the HTTP/2 decoder, with the final response.
    fn upgrade(&mut self, open: Open, head_len: usize, m: &Message<'_>) {
        let Some(head) = open.requests.into_iter().next() else {
            return;
        };
        let mut h2 = Http2Flow::upgraded(&head, open.request);
        let consumed = u64::try_from(head_len).unwrap_or(u64::MAX);
        let rest = Message {
            direction: m.direction,
            stats: MessageStats {
                // A head is within the capture, far below 2^32 bytes.
                tcp_seq: m
                    .stats
                    .tcp_seq
                    .wrapping_add(u32::try_from(head_len).unwrap_or(0)),
                bytes: m.stats.bytes.saturating_sub(consumed),
                ..m.stats
            },
            payload: m.payload.get(head_len..).unwrap_or_default(),
            partial: m.partial,
            // An upgrade is seen at the start of a connection captured by its first bytes.
            later: &[],
        };
        if rest.stats.bytes > 0 || !rest.payload.is_empty() {
            // Decoded by the HTTP/2 decoder once it has the flow, so that what they report
            // (a desync) is counted as HTTP/2's.
            h2.take_over_with(&rest);
        }
        self.upgraded = Some(Box::new(h2));
    }

    /// Reports the open request(s), if any, as incomplete.
    fn close(&mut self, out: &mut dyn Output) {
        let Some(open) = self.open.take() else {
            return;
        };
        let pipelined = open.requests.len();
        for (position, head) in open.requests.into_iter().enumerate() {
            out.exchange(exchange(Pair {
                request: open.request,
                response: open.interim,
                head,
                response_head: None,
                position,
                pipelined,
                incomplete: true,
            }));
        }
    }
}

/// One request head, its response head if any, and where they sit.
struct Pair {
    request: MessageStats,
    response: Option<MessageStats>,
    head: RequestHead,
    response_head: Option<ResponseHead>,
    /// Position of this request among those pipelined in one message.
    position: usize,
    /// How many requests the message held.
    pipelined: usize,
    incomplete: bool,
}

fn exchange(p: Pair) -> Exchange {
    let h = p.head;
    let r = p.response_head;
    let mut attributes = HashMap::new();
    if h.truncated {
        attributes.insert(
            "clovisor.http.request_truncated".to_owned(),
            "true".to_owned(),
        );
    }
    if r.as_ref().is_some_and(|r| r.truncated) {
        attributes.insert(
            "clovisor.http.response_truncated".to_owned(),
            "true".to_owned(),
        );
    }
    if p.pipelined > 1 {
        attributes.insert(
            "clovisor.http.pipeline_position".to_owned(),
            p.position.to_string(),
        );
    }
    if !p.incomplete && r.is_none() {
        attributes.insert(
            "clovisor.http.response_undecoded".to_owned(),
            "true".to_owned(),
        );
    }
    let (status_code, reason, response_content_length, response_chunked) = match r {
        Some(r) => (
            u32::from(r.status),
            r.reason,
            r.content_length.unwrap_or_default(),
            r.chunked,
        ),
        None => (0, String::new(), 0, false),
    };
    Exchange {
        protocol: Protocol::Http1,
        request: p.request,
        response: p.response,
        position: u32::try_from(p.position).unwrap_or(u32::MAX),
        incomplete: p.incomplete,
        fields: Fields::Http(Http {
            method: h.method,
            target: h.target,
            host: h.host.unwrap_or_default(),
            user_agent: h.user_agent.unwrap_or_default(),
            status_code,
            version: h.version.to_owned(),
            request_id: h.request_id.unwrap_or_default(),
            envoy_decorator: h.envoy_decorator.unwrap_or_default(),
            reason,
            request_content_length: h.content_length.unwrap_or_default(),
            response_content_length,
            response_chunked,
        }),
        trace: h.trace,
        attributes,
    }
}

/// Whether a response the probe flushed early (`partial`) already holds all its bytes: a single
/// response whose head says how long its body is, and whose byte count says all of it arrived.
/// Such a response needs no grace period; chunked or unsized ones wait for the final counters.
fn response_is_whole(m: &Message<'_>, requests: &[RequestHead]) -> bool {
    let [request] = requests else {
        return false;
    };
    let Ok(head) = decode_response(m.payload) else {
        return false;
    };
    if head.truncated || head.is_interim() {
        return false;
    }
    let body = if request.method == "HEAD" || matches!(head.status, 204 | 304) {
        0
    } else if head.chunked {
        return false;
    } else {
        match head.content_length {
            Some(n) => n,
            None => return false,
        }
    };
    u64::try_from(head.head_len)
        .ok()
        .and_then(|h| h.checked_add(body))
        .is_some_and(|total| m.stats.bytes == total)
}
