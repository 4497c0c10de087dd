//! HTTP/1.x: parsing heads (including hostile and cut input) and pairing them on a flow.

use super::*;
use crate::decode::testing::{message, Recorded};
use crate::decode::{Direction, TraceContextError};
use crate::decode::{Exchange, Fields, FlowDecoder, Message, Step};
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
    let h =
        req("GET / HTTP/1.1\r\nb3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1\r\n\r\n");
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
        format!(
            "HTTP/1.1 200 OK\r\nSet-Cookie: sid={secret}; HttpOnly\r\nContent-Length: 0\r\n\r\n"
        )
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
    assert_eq!(decode_request(b"GET "), Err(ParseError::TruncatedStartLine));
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
        Err(ParseError::TruncatedStartLine)
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
    assert_eq!(decode_request(b""), Err(ParseError::Empty));
    // An invalid header line is skipped, not fatal: real clients send such junk.
    let h = decode_request(b"GET / HTTP/1.1\r\nBad\x01: x\r\nHost: h\r\n\r\n")
        .expect("invalid header lines are ignored");
    assert_eq!(h.host.as_deref(), Some("h"));
    assert_eq!(decode_response(b"\x16\x03\x01"), Err(ParseError::NotHttp));
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
        Err(ParseError::TooManyHeaders)
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
        h.content_length,
        Some(u64::MAX),
        "overflow must not panic, nor pass for \"no body\" (the rest would be a smuggled request)"
    );
}

#[test]
fn sniffing() {
    assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniffed::Request);
    assert_eq!(sniff(b"PATCH /x HTTP/1.1\r\n"), Sniffed::Request);
    assert_eq!(sniff(b"HTTP/1.0 200 OK\r\n"), Sniffed::Response);
    assert_eq!(sniff(b"GETX / HTTP/1.1"), Sniffed::Unknown);
    assert_eq!(
        sniff(b"PRI * HTTP/2.0\r\n"),
        Sniffed::Unknown,
        "h2 preface is not h1"
    );
    assert_eq!(sniff(b"*1\r\n$4\r\nPING\r\n"), Sniffed::Unknown);
    assert_eq!(sniff(b""), Sniffed::Unknown);
}

/// Feeds `messages` in order to a fresh HTTP/1.x flow, then closes it.
fn pair(messages: &[Message<'_>]) -> Recorded {
    let mut flow = Http1Flow::default();
    let mut out = Recorded::default();
    for m in messages {
        assert_eq!(
            flow.on_message(m, &mut out),
            Step::Continue,
            "HTTP/1.x never gives up a flow"
        );
    }
    flow.on_close(&mut out);
    out
}

fn http(e: &Exchange) -> (&str, &str, u32) {
    match &e.fields {
        Fields::Http(h) => (h.method.as_str(), h.target.as_str(), h.status_code),
        other => panic!("expected HTTP fields, got {other:?}"),
    }
}

#[test]
fn pairs_pipelined_requests_in_order_and_closes_the_open_one_incomplete() {
    let out = pair(&[
        message(0, Direction::ClientToServer, b"GET /1 HTTP/1.1\r\n\r\nHEAD /2 HTTP/1.1\r\n\r\n"),
        message(
            1,
            Direction::ServerToClient,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 404 No\r\nContent-Length: 9\r\n\r\n",
        ),
        message(2, Direction::ClientToServer, b"GET /3 HTTP/1.1\r\n\r\n"),
    ]);
    let got: Vec<_> = out
        .exchanges
        .iter()
        .map(|e| (http(e), e.position, e.incomplete, e.request.index))
        .collect();
    assert_eq!(
        got,
        [
            (("GET", "/1", 200), 0, false, 0),
            (("HEAD", "/2", 404), 1, false, 0),
            (("GET", "/3", 0), 0, true, 2),
        ]
    );
    assert_eq!(
        out.exchanges[1]
            .attributes
            .get("clovisor.http.pipeline_position")
            .map(String::as_str),
        Some("1")
    );
    assert!(out.errors.is_empty() && out.unpaired.is_empty() && out.desyncs.is_empty());
}

#[test]
fn continue_makes_the_next_client_message_the_body() {
    let out = pair(&[
        message(
            0,
            Direction::ClientToServer,
            b"PUT /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
        ),
        message(
            1,
            Direction::ServerToClient,
            b"HTTP/1.1 100 Continue\r\n\r\n",
        ),
        message(2, Direction::ClientToServer, b"data"),
        message(
            3,
            Direction::ServerToClient,
            b"HTTP/1.1 201 Created\r\n\r\n",
        ),
    ]);
    let [e] = out.exchanges.as_slice() else {
        panic!("one exchange expected: {out:#?}");
    };
    assert_eq!(http(e), ("PUT", "/up", 201));
    assert_eq!(
        (e.request.end, e.response.map(|r| (r.start, r.tcp_seq))),
        (25, Some((10, 101))),
        "the request ends with its body, the response starts with the interim one"
    );
}

#[test]
fn a_response_without_request_is_unpaired_and_a_bad_request_counted() {
    let out = pair(&[
        message(0, Direction::ServerToClient, b"HTTP/1.1 200 OK\r\n\r\n"),
        message(1, Direction::ClientToServer, b"GET /x HTTP/7.0\r\n\r\n"),
        message(2, Direction::ServerToClient, b"HTTP/1.1 400 Bad\r\n\r\n"),
    ]);
    assert_eq!(out.unpaired, ["response_without_request"]);
    assert_eq!(out.errors, ["malformed"]);
    assert!(
        out.exchanges.is_empty(),
        "an undecodable request yields nothing: {out:#?}"
    );
}

#[test]
fn an_early_flushed_response_is_awaited_unless_its_head_says_it_is_whole() {
    let mut flow = Http1Flow::default();
    let mut out = Recorded::default();
    let resp: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let mut partial = message(1, Direction::ServerToClient, resp);
    partial.partial = true;
    assert!(
        !flow.awaits_final(&partial),
        "nothing open: nothing to wait for"
    );
    flow.on_message(
        &message(0, Direction::ClientToServer, b"GET / HTTP/1.1\r\n\r\n"),
        &mut out,
    );
    assert!(!flow.awaits_final(&partial), "head + body == bytes: whole");
    partial.stats.bytes -= 1;
    assert!(flow.awaits_final(&partial), "one byte short: wait");
    partial.stats.bytes = u64::MAX;
    assert!(
        flow.awaits_final(&partial),
        "an absurd count neither overflows nor passes"
    );
    let chunked = message(
        1,
        Direction::ServerToClient,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert!(
        flow.awaits_final(&chunked),
        "chunked: wait for the counters"
    );
}

#[test]
fn random_messages_never_panic_the_pairing() {
    let mut x: u64 = 0x2545f4914f6cdd1d;
    let pieces: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n",
        b"POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nxGET /b HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 204 No\r\n\r\nHTTP/1.1 304 No\r\n\r\n",
        b"\x00\xff",
        b"",
    ];
    let mut flow = Http1Flow::default();
    let mut out = Recorded::default();
    for i in 0..5000u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let payload = pieces[(x % pieces.len() as u64) as usize];
        let dir = if x & 64 == 0 {
            Direction::ClientToServer
        } else {
            Direction::ServerToClient
        };
        let mut m = message(i, dir, payload);
        m.stats.bytes = x >> 3;
        m.partial = x & 128 == 0;
        let _ = flow.awaits_final(&m);
        flow.on_message(&m, &mut out);
        if x.is_multiple_of(97) {
            flow.on_close(&mut out);
        }
    }
    flow.on_close(&mut out);
    assert!(
        out.exchanges
            .iter()
            .all(|e| e.protocol == clovisor_proto::session::v1::Protocol::Http1),
        "every exchange is HTTP/1"
    );
}

#[test]
fn a_content_length_at_the_numeric_boundaries_neither_overflows_nor_splits_a_request() {
    for cl in [
        "18446744073709551615",
        "18446744073709551614",
        "9223372036854775808",
        "18446744073709551616",
    ] {
        let req = format!(
            "POST /up HTTP/1.1\r\nContent-Length: {cl}\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"
        );
        let heads = super::parse::decode_requests(req.as_bytes())
            .unwrap_or_else(|e| panic!("Content-Length {cl}: the head must decode, got {e:?}"));
        assert_eq!(
            heads.iter().map(|h| h.target.as_str()).collect::<Vec<_>>(),
            ["/up"],
            "Content-Length {cl}: one request whose body runs past the capture, not two"
        );
        let resp =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {cl}\r\n\r\nHTTP/1.1 200 OK\r\n\r\n");
        let heads = super::parse::decode_responses(resp.as_bytes(), &[])
            .unwrap_or_else(|e| panic!("Content-Length {cl}: the response must decode, got {e:?}"));
        assert_eq!(heads.len(), 1, "Content-Length {cl}: one response");
    }
}
