//! What an exchange keeps of a stream's header lists: an allow-list, as for HTTP/1.x.
//! Credentials (`authorization`, `cookie`, `set-cookie`, `proxy-authorization`) are never
//! copied out of the HPACK decoder, whatever else happens.

use std::borrow::Cow;

use crate::decode::trace_context::TraceHeaders;

/// Bytes kept of one header value at most (a path, a `grpc-message`).
pub const MAX_VALUE: usize = 2048;

fn text(v: &[u8]) -> String {
    let v = &v[..v.len().min(MAX_VALUE)];
    String::from_utf8_lossy(v).trim().to_owned()
}

fn number(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// The request header list of a stream, as far as known.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestHeaders {
    /// `:method`
    pub method: Option<String>,
    /// `:path` (path and query)
    pub path: Option<String>,
    /// `:authority`, or `host`
    pub authority: Option<String>,
    /// `:scheme`
    pub scheme: Option<String>,
    /// `user-agent`
    pub user_agent: Option<String>,
    /// `content-type`
    pub content_type: Option<String>,
    /// `x-request-id`
    pub request_id: Option<String>,
    /// `x-envoy-decorator-operation`
    pub envoy_decorator: Option<String>,
    /// `content-length`
    pub content_length: Option<u64>,
    /// Trace headers.
    pub trace: TraceHeaders<'static>,
    /// Some fields could not be known (a reference into a dynamic table out of step, or a
    /// block cut by the capture).
    pub incomplete: bool,
}

impl RequestHeaders {
    /// Takes one field of the request's header list, if it is one kept.
    pub fn take(&mut self, name: &[u8], value: &[u8]) {
        let slot = match name {
            b":method" => &mut self.method,
            b":path" => &mut self.path,
            b":authority" | b"host" => &mut self.authority,
            b":scheme" => &mut self.scheme,
            b"user-agent" => &mut self.user_agent,
            b"content-type" => &mut self.content_type,
            b"x-request-id" => &mut self.request_id,
            b"x-envoy-decorator-operation" => &mut self.envoy_decorator,
            b"content-length" => {
                self.content_length = self.content_length.or_else(|| number(value));
                return;
            }
            _ => {
                self.trace.offer(name, || Cow::Owned(text(value)));
                return;
            }
        };
        slot.get_or_insert_with(|| text(value));
    }

    /// Whether the request is a gRPC call (`content-type: application/grpc[+proto|…]`).
    pub fn is_grpc(&self) -> bool {
        self.content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/grpc"))
    }
}

/// The response header list of a stream (headers and trailers together), as far as known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseHeaders {
    /// `:status`
    pub status: Option<u16>,
    /// `content-length`
    pub content_length: Option<u64>,
    /// `content-type`
    pub content_type: Option<String>,
    /// `grpc-status`
    pub grpc_status: Option<u32>,
    /// `grpc-message` as sent (percent-encoded).
    pub grpc_message: Option<String>,
    /// Some fields could not be known.
    pub incomplete: bool,
}

impl ResponseHeaders {
    /// Whether the response is a gRPC one (its `content-type`, or a `grpc-status`): what tells a
    /// call apart when the request's `content-type` could not be known.
    pub fn is_grpc(&self) -> bool {
        self.grpc_status.is_some()
            || self
                .content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("application/grpc"))
    }

    /// Takes one field of the response's headers or trailers, if it is one kept.
    pub fn take(&mut self, name: &[u8], value: &[u8]) {
        match name {
            b":status" => {
                self.status = self
                    .status
                    .or_else(|| number(value).and_then(|n| u16::try_from(n).ok()))
            }
            b"content-length" => {
                self.content_length = self.content_length.or_else(|| number(value))
            }
            b"grpc-status" => {
                self.grpc_status = self
                    .grpc_status
                    .or_else(|| number(value).and_then(|n| u32::try_from(n).ok()))
            }
            b"grpc-message" => {
                self.grpc_message.get_or_insert_with(|| text(value));
            }
            _ => {}
        }
    }
}
