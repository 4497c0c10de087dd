//! HTTP/1.x request and response heads from the first bytes of a message.
//!
//! Only an allow-list of headers is kept. Credentials (`Authorization`, `Cookie`, `Set-Cookie`,
//! `Proxy-Authorization`) are never copied out of the capture buffer, whatever else happens.
//! Input may be cut anywhere (the probe captures a prefix of each message) and is never trusted:
//! every failure is a [`ParseError`], never a panic.

use std::borrow::Cow;
use std::mem::MaybeUninit;

use clovisor_proto::session::v1::TraceContext;

use crate::decode::trace_context::{TraceContextError, TraceHeaders};

/// Why a head could not be decoded. Bounded, so it can label a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
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

impl ParseError {
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
    Request,
    /// Starts with `HTTP/1.`.
    Response,
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
        return Sniffed::Response;
    }
    if METHODS.iter().any(|m| payload.starts_with(m)) {
        return Sniffed::Request;
    }
    Sniffed::Unknown
}

/// Headers per head at most; beyond that the head is rejected as [`ParseError::TooManyHeaders`].
pub const MAX_HEADERS: usize = 128;

/// Pipelined messages decoded from one capture at most, so a hostile payload of tiny requests
/// cannot make one message arbitrarily expensive.
pub const MAX_PIPELINED: usize = 64;

/// The decoded head of one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestHead {
    /// Request method, e.g. `GET`.
    pub method: String,
    /// Request target as sent (path and query, or absolute form).
    pub target: String,
    /// `HTTP/1.0` or `HTTP/1.1`; empty when the capture ended inside the request line.
    pub version: &'static str,
    /// `Host`
    pub host: Option<String>,
    /// `User-Agent`
    pub user_agent: Option<String>,
    /// `x-request-id` (Envoy)
    pub request_id: Option<String>,
    /// `x-envoy-decorator-operation`
    pub envoy_decorator: Option<String>,
    /// `Content-Length`, when present and valid.
    pub content_length: Option<u64>,
    /// `Transfer-Encoding` ends with `chunked`.
    pub chunked: bool,
    /// `Upgrade` offers `h2c` (HTTP/2 over cleartext): a `101` answer switches the flow to it.
    pub upgrade_h2c: bool,
    /// Trace context found in the headers, W3C preferred over B3 single over B3 multi.
    pub trace: Option<TraceContext>,
    /// Why a trace header present in the request was rejected.
    pub trace_error: Option<TraceContextError>,
    /// The capture ended inside the headers: fields after the cut are unknown.
    pub truncated: bool,
    /// Bytes of the head, including the blank line (the captured part when truncated).
    pub head_len: usize,
}

/// The decoded head of one response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: &'static str,
    /// `Content-Length`, when present and valid.
    pub content_length: Option<u64>,
    /// `Transfer-Encoding` ends with `chunked`.
    pub chunked: bool,
    /// The capture ended inside the headers.
    pub truncated: bool,
    /// Bytes of the head, including the blank line (the captured part when truncated).
    pub head_len: usize,
}

impl ResponseHead {
    /// An interim (1xx) response, which a final response follows; `101` is final.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

fn config() -> httparse::ParserConfig {
    let mut c = httparse::ParserConfig::default();
    // Real servers and clients send slightly broken heads; tolerate what is unambiguous.
    c.allow_multiple_spaces_in_request_line_delimiters(true)
        .allow_multiple_spaces_in_response_status_delimiters(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .allow_spaces_after_header_name_in_responses(true)
        .ignore_invalid_headers_in_requests(true)
        .ignore_invalid_headers_in_responses(true);
    c
}

fn map_err(e: httparse::Error) -> ParseError {
    match e {
        httparse::Error::TooManyHeaders => ParseError::TooManyHeaders,
        httparse::Error::HeaderName => ParseError::Malformed("header name"),
        httparse::Error::HeaderValue => ParseError::Malformed("header value"),
        httparse::Error::NewLine => ParseError::Malformed("new line"),
        httparse::Error::Status => ParseError::Malformed("status"),
        httparse::Error::Token => ParseError::Malformed("token"),
        httparse::Error::Version => ParseError::Malformed("version"),
    }
}

fn version(v: Option<u8>) -> &'static str {
    match v {
        Some(0) => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

/// A header value as trimmed text: borrowed from the capture when it is valid UTF-8 (nearly
/// always), else with the invalid bytes replaced. The ASCII whitespace at either end is cut
/// from the bytes first, so only what is kept is checked (the same text: `str::trim` would cut
/// it too, and cutting ASCII bytes from the ends keeps valid UTF-8 valid).
fn trimmed(value: &[u8]) -> Cow<'_, str> {
    let value = value.trim_ascii();
    match std::str::from_utf8(value) {
        Ok(s) => Cow::Borrowed(s.trim()),
        Err(_) => Cow::Owned(String::from_utf8_lossy(value).trim().to_owned()),
    }
}

fn text(value: &[u8]) -> String {
    trimmed(value).into_owned()
}

fn is_chunked(value: &[u8]) -> bool {
    // The last transfer coding decides how the body is framed.
    let Some(last) = value.rsplit(|&b| b == b',').next() else {
        return false;
    };
    // `chunked` between ASCII spaces; otherwise as text (which trims Unicode spaces too, the
    // vertical tab among them).
    last.trim_ascii().eq_ignore_ascii_case(b"chunked")
        || trimmed(last).eq_ignore_ascii_case("chunked")
}

fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) {
        return Some(decimal(digits));
    }
    // Otherwise as text, which trims Unicode spaces too (the vertical tab among them).
    let t = trimmed(value);
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(decimal(t.as_bytes()))
}

/// The value of ASCII digits. Digits beyond u64: a body longer than anything captured, never
/// "no body" (which would let the bytes after the head pass for a second, smuggled message).
fn decimal(digits: &[u8]) -> u64 {
    digits
        .iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?
                .checked_add(u64::from(d.wrapping_sub(b'0')))
        })
        .unwrap_or(u64::MAX)
}

/// The request headers the decoder reads. Every other header is never read, credentials
/// (`Authorization`, `Cookie`, `Proxy-Authorization`) above all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Host,
    UserAgent,
    RequestId,
    EnvoyDecorator,
    ContentLength,
    TransferEncoding,
    Upgrade,
    Traceparent,
    Tracestate,
    B3,
    B3TraceId,
    B3SpanId,
    B3ParentSpanId,
    B3Sampled,
    B3Flags,
}

/// Which wanted header `name` is, case-insensitively; by length first, so that most headers
/// are passed over after one comparison at most.
fn wanted(name: &str) -> Option<Wanted> {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    let w = match name.len() {
        2 if is("b3") => Wanted::B3,
        4 if is("host") => Wanted::Host,
        7 if is("upgrade") => Wanted::Upgrade,
        10 if is("user-agent") => Wanted::UserAgent,
        10 if is("tracestate") => Wanted::Tracestate,
        10 if is("x-b3-flags") => Wanted::B3Flags,
        11 if is("traceparent") => Wanted::Traceparent,
        11 if is("x-b3-spanid") => Wanted::B3SpanId,
        12 if is("x-request-id") => Wanted::RequestId,
        12 if is("x-b3-traceid") => Wanted::B3TraceId,
        12 if is("x-b3-sampled") => Wanted::B3Sampled,
        14 if is("content-length") => Wanted::ContentLength,
        17 if is("transfer-encoding") => Wanted::TransferEncoding,
        17 if is("x-b3-parentspanid") => Wanted::B3ParentSpanId,
        27 if is("x-envoy-decorator-operation") => Wanted::EnvoyDecorator,
        _ => return None,
    };
    Some(w)
}

/// Room for a head's headers, left uninitialised: httparse writes what it finds.
fn header_room<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Where a head ends in `buf`, and whether the capture cut it.
enum Parsed<T> {
    Complete(T),
    Truncated(T),
}

/// Runs `parse` on `buf`; when the capture cut the headers, re-runs it on the complete lines
/// terminated by an artificial blank line, so the fields before the cut are still known.
fn parse_head<T>(
    buf: &[u8],
    parse: impl Fn(&[u8]) -> Result<Option<T>, ParseError>,
) -> Result<Parsed<T>, ParseError> {
    if buf.is_empty() {
        return Err(ParseError::Empty);
    }
    if let Some(head) = parse(buf)? {
        return Ok(Parsed::Complete(head));
    }
    let Some(last_nl) = memchr::memrchr(b'\n', buf) else {
        return Err(ParseError::TruncatedStartLine);
    };
    let mut cut = Vec::with_capacity(last_nl + 3);
    cut.extend_from_slice(&buf[..=last_nl]);
    cut.extend_from_slice(b"\r\n");
    match parse(&cut)? {
        Some(head) => Ok(Parsed::Truncated(head)),
        None => Err(ParseError::Malformed("incomplete head")),
    }
}

fn request_once(buf: &[u8]) -> Result<Option<RequestHead>, ParseError> {
    let mut headers = header_room();
    let mut req = httparse::Request::new(&mut []);
    let n = match config()
        .parse_request_with_uninit_headers(&mut req, buf, &mut headers)
        .map_err(map_err)?
    {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let mut head = RequestHead {
        method: req.method.unwrap_or_default().to_owned(),
        target: req.path.unwrap_or_default().to_owned(),
        version: version(req.version),
        head_len: n,
        ..RequestHead::default()
    };
    let mut trace = TraceHeaders::default();
    for h in req.headers.iter() {
        let Some(w) = wanted(h.name) else {
            continue;
        };
        let v = h.value;
        match w {
            Wanted::Host => {
                head.host.get_or_insert_with(|| text(v));
            }
            Wanted::UserAgent => {
                head.user_agent.get_or_insert_with(|| text(v));
            }
            Wanted::RequestId => {
                head.request_id.get_or_insert_with(|| text(v));
            }
            Wanted::EnvoyDecorator => {
                head.envoy_decorator.get_or_insert_with(|| text(v));
            }
            Wanted::ContentLength => {
                if head.content_length.is_none() {
                    head.content_length = content_length(v);
                }
            }
            Wanted::TransferEncoding => head.chunked = is_chunked(v),
            Wanted::Upgrade => {
                head.upgrade_h2c |= v
                    .split(|&b| b == b',')
                    .any(|t| trimmed(t).eq_ignore_ascii_case("h2c"));
            }
            Wanted::Traceparent => {
                trace.traceparent.get_or_insert_with(|| trimmed(v));
            }
            Wanted::Tracestate => {
                trace.tracestate.get_or_insert_with(|| trimmed(v));
            }
            Wanted::B3 => {
                trace.b3_single.get_or_insert_with(|| trimmed(v));
            }
            Wanted::B3TraceId => {
                trace.b3.trace_id.get_or_insert_with(|| trimmed(v));
            }
            Wanted::B3SpanId => {
                trace.b3.span_id.get_or_insert_with(|| trimmed(v));
            }
            Wanted::B3ParentSpanId => {
                trace.b3.parent_span_id.get_or_insert_with(|| trimmed(v));
            }
            Wanted::B3Sampled => {
                trace.b3.sampled.get_or_insert_with(|| trimmed(v));
            }
            Wanted::B3Flags => {
                trace.b3.flags.get_or_insert_with(|| trimmed(v));
            }
        }
    }
    // First valid format wins; the first rejection is remembered for the metrics.
    (head.trace, head.trace_error) = trace.pick();
    Ok(Some(head))
}

fn response_once(buf: &[u8]) -> Result<Option<ResponseHead>, ParseError> {
    let mut headers = header_room();
    let mut resp = httparse::Response::new(&mut []);
    let n = match config()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut headers)
        .map_err(map_err)?
    {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let mut head = ResponseHead {
        status: resp.code.unwrap_or_default(),
        reason: resp.reason.unwrap_or_default().to_owned(),
        version: version(resp.version),
        head_len: n,
        ..ResponseHead::default()
    };
    for h in resp.headers.iter() {
        // Set-Cookie is never read, like every header not named here.
        if h.name.eq_ignore_ascii_case("content-length") {
            if head.content_length.is_none() {
                head.content_length = content_length(h.value);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = is_chunked(h.value);
        }
    }
    Ok(Some(head))
}

/// Decodes one request head at the start of `buf`.
pub fn decode_request(buf: &[u8]) -> Result<RequestHead, ParseError> {
    if buf.is_empty() {
        return Err(ParseError::Empty);
    }
    if !matches!(sniff(buf), Sniffed::Request) && !looks_like_token(buf) {
        return Err(ParseError::NotHttp);
    }
    let parsed = match parse_head(buf, request_once) {
        Err(ParseError::TruncatedStartLine) => return cut_request_line(buf),
        other => other?,
    };
    Ok(match parsed {
        Parsed::Complete(h) => h,
        Parsed::Truncated(mut h) => {
            h.truncated = true;
            h.head_len = buf.len();
            h
        }
    })
}

/// Decodes one response head at the start of `buf`.
pub fn decode_response(buf: &[u8]) -> Result<ResponseHead, ParseError> {
    if !buf.is_empty() && !buf.starts_with(b"HTTP/") && !b"HTTP/".starts_with(buf) {
        return Err(ParseError::NotHttp);
    }
    if buf.len() < 12 && !buf.contains(&b'\n') {
        return Err(ParseError::TruncatedStartLine);
    }
    Ok(match parse_head(buf, response_once)? {
        Parsed::Complete(h) => h,
        Parsed::Truncated(mut h) => {
            h.truncated = true;
            h.head_len = buf.len();
            h
        }
    })
}

/// The capture ended inside the request line: keep the method and the start of the target
/// when they look sane, marked truncated, since a long URL is common and still informative.
fn cut_request_line(buf: &[u8]) -> Result<RequestHead, ParseError> {
    let sp = memchr::memchr(b' ', buf).ok_or(ParseError::TruncatedStartLine)?;
    let method = &buf[..sp];
    let rest = &buf[sp + 1..];
    let target = match memchr::memchr(b' ', rest) {
        Some(end) => &rest[..end],
        None => rest,
    };
    let visible = |b: &u8| b.is_ascii_graphic();
    if method.is_empty()
        || !method.iter().all(u8::is_ascii_uppercase)
        || target.is_empty()
        || !target.iter().all(visible)
    {
        return Err(ParseError::TruncatedStartLine);
    }
    Ok(RequestHead {
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
        truncated: true,
        head_len: buf.len(),
        ..RequestHead::default()
    })
}

/// An uncommon method is still a token followed by a space; anything else is not a request.
fn looks_like_token(buf: &[u8]) -> bool {
    let end = buf.iter().position(|&b| b == b' ').unwrap_or(0);
    end > 0 && end <= 20 && buf[..end].iter().all(|b| b.is_ascii_uppercase())
}

/// Length of a message body starting at `body`, when the captured bytes allow knowing it.
fn body_len(body: &[u8], content_length: Option<u64>, chunked: bool) -> Option<usize> {
    if chunked {
        return chunked_len(body);
    }
    match content_length {
        Some(n) => usize::try_from(n).ok(),
        None => Some(0),
    }
}

/// Walks a chunked body; `None` when it runs past the captured bytes or is malformed.
fn chunked_len(body: &[u8]) -> Option<usize> {
    let mut pos = 0usize;
    loop {
        let (skip, size) = match httparse::parse_chunk_size(body.get(pos..)?) {
            Ok(httparse::Status::Complete(v)) => v,
            _ => return None,
        };
        pos = pos.checked_add(skip)?;
        if size == 0 {
            // Trailer section: header lines until an empty line.
            loop {
                let rest = body.get(pos..)?;
                let nl = memchr::memchr(b'\n', rest)?;
                let line_empty = rest[..nl].iter().all(|&b| b == b'\r');
                pos += nl + 1;
                if line_empty {
                    return Some(pos);
                }
            }
        }
        pos = pos
            .checked_add(usize::try_from(size).ok()?)?
            .checked_add(2)?;
        if pos > body.len() {
            return None;
        }
    }
}

/// The request heads of one message: one, without a vector of its own, unless pipelined (as
/// [`ResponseHeads`]: a request message is nearly always one request).
pub type RequestHeads = smallvec::SmallVec<[RequestHead; 1]>;

/// Decodes every request head in `buf` (pipelining), as far as body lengths allow.
///
/// The first head must decode; later ones stop the walk quietly when the capture ends, since a
/// cut is expected there.
pub fn decode_requests(buf: &[u8]) -> Result<RequestHeads, ParseError> {
    let first = decode_request(buf)?;
    let mut out = RequestHeads::new();
    let mut pos = 0usize;
    let mut head = first;
    loop {
        let stop = head.truncated;
        let next = pos
            .checked_add(head.head_len)
            .and_then(|p| {
                let body = buf.get(p..)?;
                // Checked: a Content-Length near u64::MAX must end the walk, not wrap around.
                p.checked_add(body_len(body, head.content_length, head.chunked)?)
            })
            .filter(|&p| p < buf.len());
        out.push(head);
        let Some(next) = next.filter(|_| !stop && out.len() < MAX_PIPELINED) else {
            break;
        };
        let rest = &buf[next..];
        if !matches!(sniff(rest), Sniffed::Request) {
            break;
        }
        match decode_request(rest) {
            Ok(h) => {
                head = h;
                pos = next;
            }
            Err(_) => break,
        }
    }
    Ok(out)
}

/// The response heads of one message: one, without a vector of its own, unless pipelined (an
/// allocation per exchange fewer; the heads are read and let go at once).
pub type ResponseHeads = smallvec::SmallVec<[ResponseHead; 1]>;

/// Decodes every response head in `buf`, pairing lengths with `requests` (a response to `HEAD`
/// has no body whatever its `Content-Length`). Interim (1xx) responses are returned too.
pub fn decode_responses(buf: &[u8], requests: &[RequestHead]) -> Result<ResponseHeads, ParseError> {
    let mut head = decode_response(buf)?;
    let mut out = ResponseHeads::new();
    let mut pos = 0usize;
    let mut finals = 0usize;
    loop {
        let stop = head.truncated;
        let req_method = requests.get(finals).map(|r| r.method.as_str());
        let no_body = head.status < 200
            || head.status == 204
            || head.status == 304
            || req_method == Some("HEAD");
        let body = if no_body {
            Some(0)
        } else if head.content_length.is_none() && !head.chunked {
            // Delimited by connection close: nothing can follow.
            None
        } else {
            pos.checked_add(head.head_len)
                .and_then(|p| buf.get(p..))
                .and_then(|b| body_len(b, head.content_length, head.chunked))
        };
        if !head.is_interim() {
            finals += 1;
        }
        let next = body
            .and_then(|b| pos.checked_add(head.head_len)?.checked_add(b))
            .filter(|&p| p < buf.len());
        out.push(head);
        let Some(next) = next.filter(|_| !stop && out.len() < MAX_PIPELINED) else {
            break;
        };
        let rest = &buf[next..];
        if !rest.starts_with(b"HTTP/1.") {
            break;
        }
        match decode_response(rest) {
            Ok(h) => {
                head = h;
                pos = next;
            }
            Err(_) => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod value_tests {
    //! Header values read from their bytes give what reading them as trimmed text gave.

    use proptest::prelude::*;

    /// The reading before bytes were trimmed first: the whole value as text, trimmed.
    fn text_trimmed(value: &[u8]) -> String {
        String::from_utf8_lossy(value).trim().to_owned()
    }

    const PIECES: &[&[u8]] = &[
        b" ",
        b"\t",
        b"\x0b",
        b"\x0c",
        b"\r",
        b"\n",
        b"\xc2\xa0",
        b"\xe3\x80\x80",
        b"\xff",
        b"0",
        b"7",
        b"18446744073709551616",
        b"chunked",
        b"CHUNKED",
        b",",
        b"gzip",
        b"x",
    ];

    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(PIECES), 0..8).prop_map(|p| p.concat())
    }

    proptest! {
        #[test]
        fn values_read_from_bytes_are_read_as_from_trimmed_text(v in value()) {
            let t = text_trimmed(&v);
            prop_assert_eq!(super::text(&v), t.clone());
            let length = (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                .then(|| t.parse().unwrap_or(u64::MAX));
            prop_assert_eq!(super::content_length(&v), length);
            let chunked = v
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| text_trimmed(last).eq_ignore_ascii_case("chunked"));
            prop_assert_eq!(super::is_chunked(&v), chunked);
        }
    }
}
