//! Protocol detection and decoding of captured message prefixes.
//!
//! Decoders see only the first `snaplen` bytes of each message, so every decoder must cope with
//! input cut anywhere, and must never panic on what the network sent.

pub mod http1;
pub mod redact;
pub mod trace_context;

pub use http1::{decode_requests, decode_responses, RequestHead, ResponseHead};
pub use trace_context::TraceContextError;

/// Why a message could not be decoded. Bounded, so it can label a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No bytes to decode.
    #[error("empty payload")]
    Empty,
    /// The capture ended inside the start line, so not even the method/status is known.
    #[error("start line cut by the capture")]
    TruncatedStartLine,
    /// The start line or a header is not valid HTTP/1.x.
    #[error("malformed HTTP/1.x head: {0}")]
    Malformed(&'static str),
    /// More headers than the decoder accepts.
    #[error("too many headers")]
    TooManyHeaders,
    /// The bytes do not start like an HTTP/1.x message at all.
    #[error("not HTTP/1.x")]
    NotHttp,
}

impl DecodeError {
    /// Stable metric label for this reason.
    pub fn as_label(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TruncatedStartLine => "truncated_start_line",
            Self::Malformed(_) => "malformed",
            Self::TooManyHeaders => "too_many_headers",
            Self::NotHttp => "not_http",
        }
    }
}

/// What a message's first bytes look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// Starts with an HTTP/1.x request line (a known method and a space).
    Http1Request,
    /// Starts with `HTTP/1.`.
    Http1Response,
    /// Anything else.
    Unknown,
}

const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
    b"PROPFIND ",
    b"PROPPATCH ",
    b"MKCOL ",
    b"COPY ",
    b"MOVE ",
    b"LOCK ",
    b"UNLOCK ",
    b"REPORT ",
    b"PURGE ",
];

/// Classifies a message by its first bytes.
pub fn sniff(payload: &[u8]) -> Sniffed {
    if payload.starts_with(b"HTTP/1.") {
        return Sniffed::Http1Response;
    }
    if METHODS.iter().any(|m| payload.starts_with(m)) {
        return Sniffed::Http1Request;
    }
    Sniffed::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniffed::Http1Request);
        assert_eq!(sniff(b"PATCH /x HTTP/1.1\r\n"), Sniffed::Http1Request);
        assert_eq!(sniff(b"HTTP/1.0 200 OK\r\n"), Sniffed::Http1Response);
        assert_eq!(sniff(b"GETX / HTTP/1.1"), Sniffed::Unknown);
        assert_eq!(
            sniff(b"PRI * HTTP/2.0\r\n"),
            Sniffed::Unknown,
            "h2 preface is not h1"
        );
        assert_eq!(sniff(b"*1\r\n$4\r\nPING\r\n"), Sniffed::Unknown);
        assert_eq!(sniff(b""), Sniffed::Unknown);
    }
}
