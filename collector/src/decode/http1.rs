//! HTTP/1.x request and response heads from the first bytes of a message.
//!
//! Only an allow-list of headers is kept. Credentials (`Authorization`, `Cookie`, `Set-Cookie`,
//! `Proxy-Authorization`) are never copied out of the capture buffer, whatever else happens.

use clovisor_proto::session::v1::TraceContext;

use super::trace_context::{parse_b3_single, parse_traceparent, B3Multi, TraceContextError};
use super::DecodeError;

/// Headers per head at most; beyond that the head is rejected as [`DecodeError::TooManyHeaders`].
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
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: String,
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
    pub version: String,
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

fn map_err(e: httparse::Error) -> DecodeError {
    match e {
        httparse::Error::TooManyHeaders => DecodeError::TooManyHeaders,
        httparse::Error::HeaderName => DecodeError::Malformed("header name"),
        httparse::Error::HeaderValue => DecodeError::Malformed("header value"),
        httparse::Error::NewLine => DecodeError::Malformed("new line"),
        httparse::Error::Status => DecodeError::Malformed("status"),
        httparse::Error::Token => DecodeError::Malformed("token"),
        httparse::Error::Version => DecodeError::Malformed("version"),
    }
}

fn version(v: Option<u8>) -> String {
    match v {
        Some(0) => "HTTP/1.0".to_owned(),
        _ => "HTTP/1.1".to_owned(),
    }
}

fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value).trim().to_owned()
}

fn is_chunked(value: &[u8]) -> bool {
    // The last transfer coding decides how the body is framed.
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| text(last).eq_ignore_ascii_case("chunked"))
}

fn content_length(value: &[u8]) -> Option<u64> {
    let t = text(value);
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
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
    parse: impl Fn(&[u8]) -> Result<Option<T>, DecodeError>,
) -> Result<Parsed<T>, DecodeError> {
    if buf.is_empty() {
        return Err(DecodeError::Empty);
    }
    if let Some(head) = parse(buf)? {
        return Ok(Parsed::Complete(head));
    }
    let Some(last_nl) = memchr::memrchr(b'\n', buf) else {
        return Err(DecodeError::TruncatedStartLine);
    };
    let mut cut = Vec::with_capacity(last_nl + 3);
    cut.extend_from_slice(&buf[..=last_nl]);
    cut.extend_from_slice(b"\r\n");
    match parse(&cut)? {
        Some(head) => Ok(Parsed::Truncated(head)),
        None => Err(DecodeError::Malformed("incomplete head")),
    }
}

fn request_once(buf: &[u8]) -> Result<Option<RequestHead>, DecodeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match config().parse_request(&mut req, buf).map_err(map_err)? {
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
    let mut traceparent = None;
    let mut tracestate = None;
    let mut b3_single = None;
    let mut b3 = B3Multi::default();
    for h in req.headers.iter() {
        let name = h.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        // Credentials are deliberately absent from this match: their values are never read.
        if is("host") {
            head.host.get_or_insert_with(|| text(h.value));
        } else if is("user-agent") {
            head.user_agent.get_or_insert_with(|| text(h.value));
        } else if is("x-request-id") {
            head.request_id.get_or_insert_with(|| text(h.value));
        } else if is("x-envoy-decorator-operation") {
            head.envoy_decorator.get_or_insert_with(|| text(h.value));
        } else if is("content-length") {
            if head.content_length.is_none() {
                head.content_length = content_length(h.value);
            }
        } else if is("transfer-encoding") {
            head.chunked = is_chunked(h.value);
        } else if is("traceparent") {
            traceparent.get_or_insert_with(|| text(h.value));
        } else if is("tracestate") {
            tracestate.get_or_insert_with(|| text(h.value));
        } else if is("b3") {
            b3_single.get_or_insert_with(|| text(h.value));
        } else if is("x-b3-traceid") {
            b3.trace_id.get_or_insert_with(|| text(h.value));
        } else if is("x-b3-spanid") {
            b3.span_id.get_or_insert_with(|| text(h.value));
        } else if is("x-b3-parentspanid") {
            b3.parent_span_id.get_or_insert_with(|| text(h.value));
        } else if is("x-b3-sampled") {
            b3.sampled.get_or_insert_with(|| text(h.value));
        } else if is("x-b3-flags") {
            b3.flags.get_or_insert_with(|| text(h.value));
        }
    }
    // First valid format wins; the first rejection is remembered for the metrics.
    let mut first_err = None;
    if let Some(tp) = traceparent {
        match parse_traceparent(&tp, tracestate.as_deref()) {
            Ok(tc) => head.trace = Some(tc),
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    if head.trace.is_none() {
        if let Some(v) = b3_single {
            match parse_b3_single(&v) {
                Ok(tc) => head.trace = tc,
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
    }
    if head.trace.is_none() && !b3.is_empty() {
        match b3.parse() {
            Ok(tc) => head.trace = tc,
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    head.trace_error = first_err;
    Ok(Some(head))
}

fn response_once(buf: &[u8]) -> Result<Option<ResponseHead>, DecodeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match config().parse_response(&mut resp, buf).map_err(map_err)? {
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
pub fn decode_request(buf: &[u8]) -> Result<RequestHead, DecodeError> {
    if buf.is_empty() {
        return Err(DecodeError::Empty);
    }
    if !matches!(super::sniff(buf), super::Sniffed::Http1Request) && !looks_like_token(buf) {
        return Err(DecodeError::NotHttp);
    }
    let parsed = match parse_head(buf, request_once) {
        Err(DecodeError::TruncatedStartLine) => return cut_request_line(buf),
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
pub fn decode_response(buf: &[u8]) -> Result<ResponseHead, DecodeError> {
    if !buf.is_empty() && !buf.starts_with(b"HTTP/") && !b"HTTP/".starts_with(buf) {
        return Err(DecodeError::NotHttp);
    }
    if buf.len() < 12 && !buf.contains(&b'\n') {
        return Err(DecodeError::TruncatedStartLine);
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
fn cut_request_line(buf: &[u8]) -> Result<RequestHead, DecodeError> {
    let sp = memchr::memchr(b' ', buf).ok_or(DecodeError::TruncatedStartLine)?;
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
        return Err(DecodeError::TruncatedStartLine);
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

/// Decodes every request head in `buf` (pipelining), as far as body lengths allow.
///
/// The first head must decode; later ones stop the walk quietly when the capture ends, since a
/// cut is expected there.
pub fn decode_requests(buf: &[u8]) -> Result<Vec<RequestHead>, DecodeError> {
    let first = decode_request(buf)?;
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut head = first;
    loop {
        let stop = head.truncated;
        let next = pos
            .checked_add(head.head_len)
            .and_then(|p| {
                let body = buf.get(p..)?;
                Some(p + body_len(body, head.content_length, head.chunked)?)
            })
            .filter(|&p| p < buf.len());
        out.push(head);
        let Some(next) = next.filter(|_| !stop && out.len() < MAX_PIPELINED) else {
            break;
        };
        let rest = &buf[next..];
        if !matches!(super::sniff(rest), super::Sniffed::Http1Request) {
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

/// Decodes every response head in `buf`, pairing lengths with `requests` (a response to `HEAD`
/// has no body whatever its `Content-Length`). Interim (1xx) responses are returned too.
pub fn decode_responses(
    buf: &[u8],
    requests: &[RequestHead],
) -> Result<Vec<ResponseHead>, DecodeError> {
    let mut head = decode_response(buf)?;
    let mut out = Vec::new();
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
mod tests {
    use super::*;
    use clovisor_proto::session::v1::TraceFormat;

    fn req(s: &str) -> RequestHead {
        decode_request(s.as_bytes()).unwrap_or_else(|e| panic!("decoding {s:?} failed: {e}"))
    }

    #[test]
    fn curl_get() {
        let h = req("GET /api/v1/items?id=7 HTTP/1.1\r\nHost: shop.example:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n");
        assert_eq!(h.method, "GET");
        assert_eq!(h.target, "/api/v1/items?id=7");
        assert_eq!(h.version, "HTTP/1.1");
        assert_eq!(h.host.as_deref(), Some("shop.example:8080"));
        assert_eq!(h.user_agent.as_deref(), Some("curl/8.5.0"));
        assert!(!h.truncated, "a complete head must not be marked truncated");
        assert_eq!(h.content_length, None);
        assert!(h.trace.is_none());
    }

    #[test]
    fn browser_http10_and_case_insensitive_names() {
        let h = req("GET / HTTP/1.0\r\nHOST: www.google.com\r\nuser-agent: Mozilla/5.0 (X11; U; Linux i686; en-US; rv:1.9.2.3) Gecko/20100401 Firefox/3.6.3\r\nAccept-Encoding: gzip,deflate\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(h.version, "HTTP/1.0");
        assert_eq!(h.host.as_deref(), Some("www.google.com"));
        assert!(
            h.user_agent
                .as_deref()
                .is_some_and(|u| u.contains("Firefox/3.6.3")),
            "user agent: {:?}",
            h.user_agent
        );
    }

    #[test]
    fn envoy_headers_and_w3c() {
        let h = req("POST /checkout HTTP/1.1\r\nhost: checkout\r\nx-request-id: 9f1c0a7e-1111-2222-3333-444455556666\r\nx-envoy-decorator-operation: checkout.default.svc.cluster.local:80/*\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntracestate: rojo=00f067aa0ba902b7\r\nx-b3-traceid: 463ac35c9f6413ad\r\nx-b3-spanid: a2fb4a1d1a96d312\r\ncontent-length: 5\r\n\r\nhello");
        assert_eq!(
            h.request_id.as_deref(),
            Some("9f1c0a7e-1111-2222-3333-444455556666")
        );
        assert_eq!(
            h.envoy_decorator.as_deref(),
            Some("checkout.default.svc.cluster.local:80/*")
        );
        assert_eq!(h.content_length, Some(5));
        let tc = h.trace.expect("trace context");
        assert_eq!(tc.format, TraceFormat::W3c as i32, "W3C wins over B3");
        assert_eq!(tc.tracestate, "rojo=00f067aa0ba902b7");
    }

    #[test]
    fn b3_single_and_multi_and_bad_traceparent_falls_back() {
        let h = req(
            "GET / HTTP/1.1\r\nb3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1\r\n\r\n",
        );
        assert_eq!(
            h.trace.map(|t| t.format),
            Some(TraceFormat::B3Single as i32)
        );

        let h = req("GET / HTTP/1.1\r\ntraceparent: 00-zz-00f067aa0ba902b7-01\r\nX-B3-TraceId: 463ac35c9f6413ad\r\nX-B3-SpanId: a2fb4a1d1a96d312\r\nX-B3-Sampled: 1\r\n\r\n");
        let tc = h.trace.expect("falls back to B3 multi");
        assert_eq!(tc.format, TraceFormat::B3Multi as i32);
        assert!(tc.sampled);
        assert_eq!(
            h.trace_error,
            Some(TraceContextError::MalformedTraceparent),
            "the rejected traceparent is reported"
        );
    }

    #[test]
    fn credentials_are_never_kept() {
        let secret = "c2VjcmV0LXBhc3N3b3Jk";
        let h = req(&format!("GET /admin HTTP/1.1\r\nHost: a\r\nAuthorization: Basic {secret}\r\nCookie: session={secret}\r\nProxy-Authorization: Bearer {secret}\r\n\r\n"));
        let dump = format!("{h:?}");
        assert!(
            !dump.contains(secret),
            "a credential leaked into the decoded request: {dump}"
        );
        let r = decode_response(
            format!("HTTP/1.1 200 OK\r\nSet-Cookie: sid={secret}; HttpOnly\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        )
        .expect("valid response");
        let dump = format!("{r:?}");
        assert!(!dump.contains(secret), "Set-Cookie leaked: {dump}");
    }

    #[test]
    fn truncated_head_keeps_fields_before_cut() {
        let full = "GET /index.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Mozilla/5.0\r\nx-request-id: abc\r\nAccept: text/html\r\n\r\n";
        let cut = &full.as_bytes()[..full.find("x-request-id").expect("marker") + 5];
        let h = decode_request(cut).expect("truncated head still decodes");
        assert!(h.truncated, "must be marked truncated");
        assert_eq!(h.host.as_deref(), Some("example.com"));
        assert_eq!(h.user_agent.as_deref(), Some("Mozilla/5.0"));
        assert_eq!(h.request_id, None, "the cut header must not be guessed");
        assert_eq!(h.target, "/index.html");

        // Cut right after the request line.
        let h = decode_request(b"GET /x HTTP/1.1\r\nHo").expect("request line complete");
        assert!(h.truncated);
        assert_eq!(h.target, "/x");

        // Cut inside the request line: method and target prefix survive, marked.
        let h = decode_request(b"GET /very/long/pa").expect("method and target prefix");
        assert_eq!(
            (h.method.as_str(), h.target.as_str(), h.truncated),
            ("GET", "/very/long/pa", true)
        );
        assert_eq!(h.version, "", "the version was not seen");
        assert_eq!(
            decode_request(b"GET "),
            Err(DecodeError::TruncatedStartLine)
        );
        assert!(
            decode_request(b"GET /a\x01b").is_err(),
            "control bytes in a target are rejected"
        );

        let r = decode_response(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/ht")
            .expect("status line complete");
        assert!(r.truncated);
        assert_eq!(r.status, 404);
        assert_eq!(r.reason, "Not Found");
        assert_eq!(
            decode_response(b"HTTP/1.1 40"),
            Err(DecodeError::TruncatedStartLine)
        );
    }

    #[test]
    fn malformed_and_garbage_are_typed_errors() {
        let cases: &[&[u8]] = &[
            b"",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"\x00\x00\x00\x00\x00\x00",
            b"GET / HTTP/9.9\r\n\r\n",
            b"GET\x00/ HTTP/1.1\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ];
        for c in cases {
            let got = decode_request(c);
            assert!(got.is_err(), "garbage {c:?} must not decode, got {got:?}");
        }
        assert_eq!(decode_request(b""), Err(DecodeError::Empty));
        // An invalid header line is skipped, not fatal: real clients send such junk.
        let h = decode_request(b"GET / HTTP/1.1\r\nBad\x01: x\r\nHost: h\r\n\r\n")
            .expect("invalid header lines are ignored");
        assert_eq!(h.host.as_deref(), Some("h"));
        assert_eq!(decode_response(b"\x16\x03\x01"), Err(DecodeError::NotHttp));
        assert!(decode_response(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        // Deterministic xorshift: many shapes of junk, including HTTP-looking prefixes.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let prefixes: &[&[u8]] = &[b"", b"GET ", b"HTTP/1.1 ", b"GET / HTTP/1.1\r\n"];
        for i in 0..4000 {
            let mut buf = prefixes[i % prefixes.len()].to_vec();
            let len = (i * 7) % 300;
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(if x.is_multiple_of(3) {
                    b"\r\n: "[(x % 4) as usize]
                } else {
                    x as u8
                });
            }
            let _ = decode_requests(&buf);
            let _ = decode_responses(&buf, &[]);
        }
    }

    #[test]
    fn huge_headers() {
        let mut s = String::from("GET / HTTP/1.1\r\n");
        for i in 0..(MAX_HEADERS + 10) {
            s.push_str(&format!("X-Filler-{i}: {i}\r\n"));
        }
        s.push_str("\r\n");
        assert_eq!(
            decode_request(s.as_bytes()),
            Err(DecodeError::TooManyHeaders)
        );

        let big = "a".repeat(64 * 1024);
        let h = req(&format!("GET /{big} HTTP/1.1\r\nUser-Agent: {big}\r\n\r\n"));
        assert_eq!(h.target.len(), big.len() + 1, "long target kept whole");
    }

    #[test]
    fn pipelined_requests() {
        let buf = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyzPUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nDELETE /d HTTP/1.1\r\n\r\n";
        let hs = decode_requests(buf).expect("pipelined requests decode");
        let got: Vec<(&str, &str)> = hs
            .iter()
            .map(|h| (h.method.as_str(), h.target.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("GET", "/a"),
                ("POST", "/b"),
                ("PUT", "/c"),
                ("DELETE", "/d")
            ],
            "all four pipelined requests"
        );
        assert!(hs[2].chunked);

        // The body runs past the capture: stop after the first.
        let hs = decode_requests(b"POST /a HTTP/1.1\r\nContent-Length: 1000\r\n\r\nabc")
            .expect("first decodes");
        assert_eq!(hs.len(), 1);
    }

    #[test]
    fn responses_chunked_and_pipelined() {
        let buf = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\nHTTP/1.0 404 Not Found\r\n\r\n";
        let rs = decode_responses(buf, &[]).expect("responses decode");
        let got: Vec<u16> = rs.iter().map(|r| r.status).collect();
        assert_eq!(got, vec![100, 200, 304, 404]);
        assert!(rs[0].is_interim() && !rs[1].is_interim());
        assert!(rs[1].chunked, "gzip, chunked ends with chunked");
        assert_eq!(rs[2].content_length, Some(99));
        assert_eq!(rs[3].version, "HTTP/1.0");

        // A response to HEAD has no body despite Content-Length.
        let head = RequestHead {
            method: "HEAD".into(),
            ..RequestHead::default()
        };
        let get = RequestHead {
            method: "GET".into(),
            ..RequestHead::default()
        };
        let rs = decode_responses(
            b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            &[head, get],
        )
        .expect("decodes");
        assert_eq!(rs.len(), 2, "HEAD response has no body: {rs:?}");
    }

    #[test]
    fn invalid_content_length_is_ignored() {
        let h = req("POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n");
        assert_eq!(h.content_length, None);
        let h = req("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n");
        assert_eq!(
            h.content_length, None,
            "overflow must not panic nor be trusted"
        );
    }
}
