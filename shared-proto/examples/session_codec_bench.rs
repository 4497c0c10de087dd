//! Nanoseconds per encoding and per decoding of a typical session (an HTTP/1 exchange seen at a
//! pod's veth and socket, as the collector sends it): prost's, and ours (`session::encode` as
//! the collector's `SessionEncoder` runs it, `session::decode`), in alternating rounds. See
//! docs/benchmarks.md.
//!
//!   cargo run --release -p clovisor-proto --example session_codec_bench [ROUNDS]

use std::time::Instant;

use bytes::BytesMut;
use clovisor_proto::hops::SessionEncoder;
use clovisor_proto::session::v1::{Counters, Endpoint, Http, Observation, Session};
use prost::Message;

fn observation(kind: i32, interface: &str) -> Observation {
    Observation {
        kind,
        interface: interface.into(),
        node: "node-a".into(),
        probe_id: "0123456789abcdef".into(),
        side: 2,
        request_start_unix_nanos: 1_700_000_000_000_000_000,
        request_end_unix_nanos: 1_700_000_000_000_100_000,
        response_start_unix_nanos: 1_700_000_000_000_200_000,
        response_end_unix_nanos: 1_700_000_000_000_300_000,
        request_tcp_seq: 123_456_789,
        response_tcp_seq: 987_654_321,
        request_bytes: 40,
        response_bytes: 240,
        request_packets: 1,
        response_packets: 1,
        pid: 1234,
        comm: "nginx".into(),
        netns_inode: 4_026_532_000,
        ..Observation::default()
    }
}

fn typical() -> Session {
    Session {
        id: "0123456789abcdef/1f/42".into(),
        protocol: 1,
        client: Some(Endpoint {
            ip: vec![10, 251, 0, 2].into(),
            port: 40000,
            ..Endpoint::default()
        }),
        server: Some(Endpoint {
            ip: vec![10, 251, 0, 3].into(),
            port: 80,
            pod: "web-7d4b9c-x2x9q".into(),
            namespace: "shop".into(),
            node: "node-a".into(),
            workload: "web".into(),
            service: "web".into(),
        }),
        observations: vec![observation(1, "veth3f2a"), observation(3, "")],
        start_unix_nanos: 1_700_000_000_000_000_000,
        end_unix_nanos: 1_700_000_000_000_300_000,
        bytes: Some(Counters {
            request: 40,
            response: 240,
        }),
        packets: Some(Counters {
            request: 1,
            response: 1,
        }),
        http: Some(Http {
            method: "GET".into(),
            target: "/".into(),
            host: "web.shop".into(),
            status_code: 200,
            version: "HTTP/1.1".into(),
            reason: "OK".into(),
            response_content_length: 100,
            ..Http::default()
        }),
        merged_ids: vec!["0123456789abcdef/2a/42".into()],
        ..Session::default()
    }
}

fn per_call<T>(n: u32, mut f: impl FnMut() -> T) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(f());
    }
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

#[allow(clippy::print_stdout)] // a benchmark: its output is the result
fn main() {
    let rounds: u32 = std::env::args()
        .nth(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let session = typical();
    let bytes = session.encode_to_vec();
    let ours = clovisor_proto::session::decode(&bytes).expect("our own encoding decodes");
    assert_eq!(ours, session, "the decoders agree");
    let mut encoder = SessionEncoder::new();
    assert_eq!(
        encoder.encode(&session).session_bytes(),
        &bytes[..],
        "the encoders agree"
    );
    println!("a session of {} bytes", bytes.len());
    let n = 1_000_000;
    let mut buf = BytesMut::new();
    for _ in 0..rounds {
        let prost_encode = per_call(n, || {
            buf.reserve(bytes.len());
            session.encode_raw(&mut buf);
            buf.split().freeze()
        });
        let ours_encode = per_call(n, || encoder.encode(&session));
        let prost_decode = per_call(n, || Session::decode(bytes.as_slice()).unwrap_or_default());
        let ours_decode = per_call(n, || {
            clovisor_proto::session::decode(&bytes).unwrap_or_default()
        });
        println!(
            "encode: prost {prost_encode:.0} ns, ours {ours_encode:.0} ns ({:.2}x); \
             decode: prost {prost_decode:.0} ns, ours {ours_decode:.0} ns ({:.2}x)",
            ours_encode / prost_encode,
            ours_decode / prost_decode
        );
    }
}
