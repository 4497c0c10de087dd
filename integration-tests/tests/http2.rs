//! HTTP/2 and gRPC end to end, for real: nghttpd (h2c, prior knowledge), nghttpx in front of it
//! (h2c by HTTP/1.1 `Upgrade`) and a tonic gRPC server (`grpc_pod`) in one namespace pod,
//! nghttp, curl and the tonic client in another,
//! `clovisor all-in-one` tracing the server pod with real BPF programs and an OTLP receiver
//! standing in for Jaeger. The REST API must show each stream as one session with its method,
//! path, status (and for gRPC its service, method, status code and message), parented by the
//! trace context the client sent; spans follow the RPC conventions; the RED metrics carry the
//! protocol.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clovisor_correlator::testing::OtlpReceiver;
use clovisor_integration_tests::tls::{self_signed, Stunnel};
use clovisor_integration_tests::{api, run_in, wait_for, AllInOne, Lab, Pod, Proc};
use serde_json::Value;

const H2_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const H2_PARENT: &str = "00f067aa0ba902b7";
const GRPC_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const GRPC_PARENT: &str = "b7ad6b7169203331";
const SHARED_TRACE: &str = "5b8efff798038103d269b633813fc60c";
const GRPC_SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
const GRPC_PORT: u16 = 50051;
const H2_PORT: u16 = 8080;
const UPGRADE_PORT: u16 = 8082;

/// `program args…` run in `pod` as a process killed at the end of the test.
fn serve_in(pod: &Pod, program: &str, args: &[&str], log_name: &str) -> Result<Proc> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &pod.netns, program]).args(args);
    let log = std::env::temp_dir().join(format!("{log_name}-{}.log", std::process::id()));
    Proc::spawn(cmd, log)
}

/// The sessions of the measured traffic: those of the client pod (not nghttpx's own calls to
/// its backend), not of the warm-up's connections.
fn measured(all: Vec<Value>, client: &Pod, warm_ports: &[Value]) -> Vec<Value> {
    let ip = client.ipv4.to_string();
    all.into_iter()
        .filter(|s| s["client"]["ip"] == ip.as_str())
        .filter(|s| !warm_ports.contains(&s["client"]["port"]))
        .collect()
}

/// One line per session: what the assertions look at.
fn summary(sessions: &[Value]) -> String {
    sessions
        .iter()
        .map(|s| {
            let points: Vec<String> = s["observations"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|o| format!("{}:{}", o["point"], o["comm"]))
                .collect();
            format!(
                "{} :{} {} {} {} {} {} incomplete={} grpc={} trace={}/{} points={points:?}",
                s["id"],
                s["client"]["port"],
                s["protocol"],
                s["http"]["method"],
                s["http"]["path"],
                s["http"]["status_code"],
                s["http"]["host"],
                s["incomplete"],
                s["grpc"],
                s["trace"]["trace_id"],
                s["trace"]["parent_span_id"],
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn str_attr<'a>(
    span: &'a opentelemetry_proto::tonic::trace::v1::Span,
    key: &str,
) -> Option<&'a str> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

fn int_attr(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<i64> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::IntValue(i) => Some(*i),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_real_h2c_and_grpc_between_namespace_pods() -> Result<()> {
    let otlp = OtlpReceiver::start().await?;
    let mut lab = Lab::new()?;
    let client = lab.pod("h2cli")?;
    let server = lab.pod("h2srv")?;

    let www = tempfile::tempdir().context("nghttpd document root")?;
    std::fs::write(www.path().join("index.html"), "hello over h2c\n")?;
    let root = www.path().display().to_string();
    let port = H2_PORT.to_string();
    let _nghttpd = serve_in(
        &server,
        "nghttpd",
        &["--no-tls", "-d", &root, &port],
        "nghttpd",
    )?;
    // nghttpx in front of nghttpd accepts HTTP/1.1 `Upgrade: h2c`.
    let frontend = format!("--frontend=0.0.0.0,{UPGRADE_PORT};no-tls");
    let backend = format!("--backend=127.0.0.1,{H2_PORT};;proto=h2");
    let _nghttpx = serve_in(
        &server,
        "nghttpx",
        &[&frontend, &backend, "--workers=1", "--conf=/dev/null"],
        "nghttpx",
    )?;
    let grpc_pod = env!("CARGO_BIN_EXE_grpc_pod");
    let listen = format!("0.0.0.0:{GRPC_PORT}");
    let _grpc = serve_in(&server, grpc_pod, &["serve", &listen], "grpc-server")?;
    let h2_base = format!("http://{}:{H2_PORT}", server.ipv4);
    let grpc_url = format!("http://{}:{GRPC_PORT}", server.ipv4);
    let ready = format!("{h2_base}/index.html");
    let upgrade_url = format!(
        "http://{}:{UPGRADE_PORT}/index.html?via=upgrade",
        server.ipv4
    );
    let upgrade = || {
        run_in(
            &client.netns,
            &[
                "curl",
                "-sS",
                "--fail",
                "--http2",
                "-o",
                "/dev/null",
                "-H",
                "x-request-id: req-upgrade",
                &upgrade_url,
            ],
        )
    };
    wait_for(
        "nghttpd, nghttpx and the gRPC server to answer",
        Duration::from_secs(10),
        || {
            Ok(run_in(&client.netns, &["nghttp", "-n", &ready]).is_ok()
                && upgrade().is_ok()
                && run_in(&client.netns, &[grpc_pod, "call", &grpc_url, "0"]).is_ok())
        },
    )?;

    let mut clovisor = AllInOne::start(
        &["--netns", &server.netns],
        &otlp.endpoint(),
        &[&server.host_veth],
        "clovisor-http2",
    )?;

    // Warm-up until both servers' flows are seen: what follows is then traced from its first
    // byte. Its sessions are left out below (by client port).
    let warm_up = format!("{h2_base}/warm-up");
    wait_for(
        "warm-up sessions on both ports",
        Duration::from_secs(20),
        || {
            run_in(&client.netns, &["nghttp", "-n", &warm_up])?;
            run_in(&client.netns, &[grpc_pod, "call", &grpc_url, "0"])?;
            upgrade()?;
            std::thread::sleep(Duration::from_millis(500));
            let s = clovisor.sessions()?;
            let on = |port: u16| s.iter().any(|x| x["server"]["port"] == port);
            Ok(on(H2_PORT) && on(GRPC_PORT) && on(UPGRADE_PORT))
        },
    )?;
    let warm_ports: Vec<Value> = clovisor
        .sessions()?
        .iter()
        .map(|s| s["client"]["port"].clone())
        .collect();

    // Two streams multiplexed on one prior-knowledge h2c connection.
    let traceparent = format!("traceparent: 00-{H2_TRACE}-{H2_PARENT}-01");
    run_in(
        &client.netns,
        &[
            "nghttp",
            "-n",
            "-H",
            &traceparent,
            &format!("{h2_base}/index.html"),
            &format!("{h2_base}/missing?token=secret&q=1"),
        ],
    )?;
    // HTTP/1.1 `Upgrade: h2c`, answered 101 and then over HTTP/2 (curl).
    upgrade()?;
    // Three unary calls, each on a connection of its own: two succeed, the last fails
    // (INVALID_ARGUMENT, a trailers-only response).
    let grpc_traceparent = format!("00-{GRPC_TRACE}-{GRPC_PARENT}-01");
    run_in(
        &client.netns,
        &[grpc_pod, "call-fresh", &grpc_url, "2", &grpc_traceparent],
    )?;
    // The same three calls multiplexed on one connection, under another trace.
    let shared_traceparent = format!("00-{SHARED_TRACE}-{GRPC_PARENT}-01");
    run_in(
        &client.netns,
        &[grpc_pod, "call", &grpc_url, "2", &shared_traceparent],
    )?;

    // What the probe captures of each message is its start only (at a pod veth, of its first
    // packet), so a connection's later calls may lose header fields, and calls right at a
    // connection's start may be missed (docs/protocols.md). Waited for: both HTTP/2 streams
    // whole, a gRPC call seen whole with its trace context, and the failed call's status.
    let mut seen: Vec<Value> = Vec::new();
    let whole =
        |s: &Value| s["http"]["status_code"].is_u64() && !s["incomplete"].as_bool().unwrap_or(true);
    let traced =
        |s: &Value| s["trace"]["trace_id"] == GRPC_TRACE || s["trace"]["trace_id"] == SHARED_TRACE;
    let failed = |s: &Value| s["grpc"]["status_code"] == 3;
    let all = wait_for(
        "two HTTP/2 sessions, a whole traced gRPC call and the failed call in the REST API",
        Duration::from_secs(20),
        || {
            seen = measured(clovisor.sessions()?, &client, &warm_ports);
            let h2 = seen
                .iter()
                .filter(|s| s["protocol"] == "http/2" && s["server"]["port"] == H2_PORT);
            let upgraded = seen
                .iter()
                .filter(|s| s["server"]["port"] == UPGRADE_PORT)
                .any(|s| s["protocol"] == "http/2");
            Ok(h2.clone().count() == 2
                && h2.clone().all(whole)
                && upgraded
                && seen
                    .iter()
                    .any(|s| whole(s) && traced(s) && s["grpc"]["status_code"] == 0)
                && seen.iter().any(failed))
        },
    );
    if let Err(e) = all {
        bail!(
            "{e:#}\nsessions seen:\n{}\nlog:\n{}",
            summary(&seen),
            clovisor.proc.log_text()
        );
    }
    // Late views arrive by now too.
    std::thread::sleep(Duration::from_secs(2));
    seen = measured(clovisor.sessions()?, &client, &warm_ports);
    let sessions = seen.len();
    assert!(
        sessions <= 3 + 6,
        "one session per stream at most:\n{}",
        summary(&seen)
    );

    let h2: Vec<&Value> = seen
        .iter()
        .filter(|s| s["protocol"] == "http/2" && s["server"]["port"] == H2_PORT)
        .collect();
    let find = |path: &str| {
        h2.iter()
            .find(|s| s["http"]["path"] == path)
            .with_context(|| format!("no HTTP/2 session for {path} in\n{}", summary(&seen)))
    };
    let index = find("/index.html")?;
    assert_eq!(index["http"]["method"], "GET", "{index:#}");
    assert_eq!(index["http"]["status_code"], 200, "{index:#}");
    assert_eq!(index["http"]["version"], "2", "{index:#}");
    assert_eq!(
        index["http"]["host"],
        format!("{}:{H2_PORT}", server.ipv4),
        "{index:#}"
    );
    let missing = find("/missing")?;
    assert_eq!(missing["http"]["status_code"], 404, "{missing:#}");
    assert_eq!(
        missing["http"]["query"], "token=REDACTED&q=1",
        "query redacted as for HTTP/1: {missing:#}"
    );
    for s in [index, missing] {
        assert_eq!(s["trace"]["trace_id"], H2_TRACE, "{s:#}");
        assert_eq!(s["trace"]["parent_span_id"], H2_PARENT, "{s:#}");
        assert_eq!(s["server"]["port"], H2_PORT, "{s:#}");
    }
    assert_eq!(
        index["client"]["port"], missing["client"]["port"],
        "both streams on one connection"
    );

    let upgraded: Vec<&Value> = seen
        .iter()
        .filter(|s| s["server"]["port"] == UPGRADE_PORT)
        .collect();
    assert_eq!(upgraded.len(), 1, "{}", summary(&seen));
    let up = upgraded[0];
    assert_eq!(up["protocol"], "http/2", "{up:#}");
    assert_eq!(up["http"]["method"], "GET", "{up:#}");
    assert_eq!(up["http"]["path"], "/index.html", "{up:#}");
    assert_eq!(up["http"]["query"], "via=upgrade", "{up:#}");
    assert_eq!(up["http"]["request_id"], "req-upgrade", "{up:#}");
    // The response is HTTP/2 on stream 1; when nghttpx sends it in the same burst as the `101`
    // it lies past the capture and the stream is reported incomplete, never wrong.
    assert!(
        up["http"]["status_code"] == 200
            || (up["http"]["status_code"].is_null() && up["incomplete"] == true),
        "{up:#}"
    );

    let calls: Vec<&Value> = seen
        .iter()
        .filter(|s| s["server"]["port"] == GRPC_PORT)
        .collect();
    let path = format!("/{GRPC_SERVICE}/Export");
    let mut statuses = Vec::new();
    for s in &calls {
        // Every field reported is one that was sent.
        assert_eq!(s["protocol"], "grpc", "{s:#}");
        assert_eq!(s["http"]["method"], "POST", "{s:#}");
        assert_eq!(s["http"]["version"], "2", "{s:#}");
        assert!(
            s["http"]["path"].is_null() || s["http"]["path"] == path,
            "{s:#}"
        );
        for (field, want) in [("service", GRPC_SERVICE), ("method", "Export")] {
            let got = &s["grpc"][field];
            assert!(got.is_null() || *got == want, "{field}: {s:#}");
        }
        let host = &s["http"]["host"];
        assert!(
            host.is_null() || *host == format!("{}:{GRPC_PORT}", server.ipv4),
            "{s:#}"
        );
        if !s["trace"]["format"].is_null() {
            assert!(traced(s), "{s:#}");
            assert_eq!(s["trace"]["parent_span_id"], GRPC_PARENT, "{s:#}");
        }
        if let Some(code) = s["grpc"]["status_code"].as_u64() {
            statuses.push(code);
        }
    }
    assert!(
        statuses.iter().filter(|c| **c == 0).count() <= 4
            && statuses.iter().filter(|c| **c == 3).count() <= 2
            && statuses.iter().all(|c| *c == 0 || *c == 3),
        "never a status that was not sent: {statuses:?}"
    );
    let ok = calls
        .iter()
        .find(|s| whole(s) && traced(s) && s["grpc"]["status_code"] == 0)
        .context("a whole traced call")?;
    assert_eq!(ok["grpc"]["service"], GRPC_SERVICE, "{ok:#}");
    assert_eq!(ok["grpc"]["method"], "Export", "{ok:#}");
    assert_eq!(ok["http"]["path"], path, "{ok:#}");
    assert_eq!(ok["http"]["status_code"], 200, "{ok:#}");
    assert_eq!(ok["http"]["host"], format!("{}:{GRPC_PORT}", server.ipv4));
    assert_eq!(ok["trace"]["parent_span_id"], GRPC_PARENT, "{ok:#}");
    let bad = calls
        .iter()
        .find(|s| failed(s))
        .context("the failed call")?;
    assert_eq!(
        bad["grpc"]["message"], "no spans: nothing to export",
        "grpc-message, percent-decoded: {bad:#}"
    );

    // RED metrics by protocol: every stream counted once, gRPC calls as gRPC.
    let count = |metrics: &str, protocol: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("clovisor_http_requests_total{"))
            .filter(|l| l.contains(&format!("protocol=\"{protocol}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // The warm-up's sessions are counted too.
    let everything = clovisor.sessions()?.len();
    let mut metrics = String::new();
    let _ = wait_for("every stream counted", Duration::from_secs(10), || {
        metrics = clovisor.metrics_text()?;
        Ok(count(&metrics, "grpc") + count(&metrics, "http2") >= everything as f64)
    });
    assert_eq!(
        count(&metrics, "grpc") + count(&metrics, "http2"),
        everything as f64,
        "{metrics}"
    );
    assert!(count(&metrics, "grpc") >= calls.len() as f64, "{metrics}");
    assert!(count(&metrics, "http2") >= 3.0, "{metrics}");

    // Spans: the gRPC calls named and attributed by the RPC conventions. Every session's span,
    // the warm-up's included (counting only the measured sessions returned as soon as the
    // warm-up's spans made up the number, before the last call's span had come), and the whole
    // call's span in particular: its window closes last.
    let want = everything.max(sessions);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut spans = otlp.wait_for_spans(want, Duration::from_secs(15)).await;
    while !spans
        .iter()
        .any(|s| hex(&s.trace_id) == ok["trace"]["trace_id"])
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        spans = otlp.spans();
    }
    let grpc_spans: Vec<_> = spans
        .iter()
        .filter(|s| s.name == format!("{GRPC_SERVICE}/Export"))
        .collect();
    assert!(!grpc_spans.is_empty(), "{spans:#?}");
    for s in &grpc_spans {
        assert_eq!(str_attr(s, "rpc.system"), Some("grpc"));
        assert_eq!(str_attr(s, "rpc.service"), Some(GRPC_SERVICE));
        assert_eq!(str_attr(s, "rpc.method"), Some("Export"));
    }
    let ok_span = grpc_spans
        .iter()
        .find(|s| hex(&s.trace_id) == ok["trace"]["trace_id"])
        .context("the whole call's span")?;
    assert_eq!(hex(&ok_span.parent_span_id), GRPC_PARENT);
    assert_eq!(int_attr(ok_span, "rpc.grpc.status_code"), Some(0));
    assert!(
        grpc_spans
            .iter()
            .any(|s| int_attr(s, "rpc.grpc.status_code") == Some(3)),
        "{grpc_spans:#?}"
    );

    let status = clovisor.proc.stop(15, Duration::from_secs(15))?;
    assert!(status.success(), "clean exit: {}", clovisor.proc.log_text());
    Ok(())
}

/// gRPC behind TLS: the tonic client and server speak h2c over loopback to stunnel in their
/// pods, stunnel carries TLS over the veths. The server pod's socket point sees the plaintext
/// leg (stunnel -> the server) and decodes it with the same code; the veths see TLS only, which
/// no decoder claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_behind_tls_is_decoded_at_the_socket_point() -> Result<()> {
    let mut lab = Lab::new()?;
    let client = lab.pod("gtcli")?;
    let server = lab.pod("gtsrv")?;
    let grpc_pod = env!("CARGO_BIN_EXE_grpc_pod");
    let listen = format!("127.0.0.1:{GRPC_PORT}");
    let _grpc = serve_in(&server, grpc_pod, &["serve", &listen], "grpc-tls-server")?;
    let dir = tempfile::tempdir()?;
    let (cert, key) = self_signed(dir.path())?;
    let _tls_server = Stunnel::server(&server, dir.path(), (&cert, &key), "8443", &listen)?;
    let _tls_client = Stunnel::client(
        &client,
        dir.path(),
        &listen,
        &format!("{}:8443", server.ipv4),
    )?;
    let url = format!("http://127.0.0.1:{GRPC_PORT}");
    wait_for(
        "gRPC through the TLS tunnel",
        Duration::from_secs(10),
        || Ok(run_in(&client.netns, &[grpc_pod, "call", &url, "0"]).is_ok()),
    )?;

    // The server's loopback port is named: ports found listening are those on the pod's
    // addresses.
    let port = GRPC_PORT.to_string();
    let clovisor = AllInOne::start_without_export(
        &["--netns", &server.netns, "--port", &port],
        &[&server.host_veth],
        "clovisor-http2-tls",
    )?;
    let traceparent = format!("00-{GRPC_TRACE}-{GRPC_PARENT}-01");
    let mut seen: Vec<Value> = Vec::new();
    let found = wait_for(
        "a whole traced gRPC call seen at the server's socket",
        Duration::from_secs(20),
        || {
            // Repeated until traced from its first byte (the socket point starts with clovisor).
            // Two traced calls on the connection: the first one's HEADERS may follow the
            // client's SETTINGS ACK in the same message, past the part the socket point keeps
            // (its first write); the second follows the server's answer, a message of its own.
            run_in(&client.netns, &[grpc_pod, "call", &url, "2", &traceparent])?;
            seen = clovisor.sessions()?;
            Ok(seen
                .iter()
                .any(|s| s["trace"]["trace_id"] == GRPC_TRACE && s["grpc"]["status_code"] == 0)
                && seen.iter().any(|s| s["grpc"]["status_code"] == 3))
        },
    );
    if let Err(e) = found {
        bail!(
            "{e:#}\nsessions seen:\n{}\nlog:\n{}",
            summary(&seen),
            clovisor.proc.log_text()
        );
    }
    let call = seen
        .iter()
        .find(|s| s["trace"]["trace_id"] == GRPC_TRACE && s["grpc"]["status_code"] == 0)
        .context("the call")?;
    assert_eq!(call["protocol"], "grpc", "{call:#}");
    assert_eq!(call["grpc"]["service"], GRPC_SERVICE, "{call:#}");
    assert_eq!(call["grpc"]["method"], "Export", "{call:#}");
    assert_eq!(call["trace"]["parent_span_id"], GRPC_PARENT, "{call:#}");
    assert_eq!(
        call["server"]["port"], GRPC_PORT,
        "the plaintext leg: {call:#}"
    );
    let points: Vec<(String, String)> = call["observations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            (
                o["point"].as_str().unwrap_or_default().to_owned(),
                o["comm"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        points.iter().any(|(point, _)| point == "socket"),
        "decoded from the plaintext at a socket point: {points:?}"
    );
    // The server's own socket sees the call too, but the socket point keeps the first read of a
    // message: when grpc_pod's first read of a new connection takes only the preface, that
    // connection's first HEADERS frame is not captured at its socket (stunnel's single write is).
    // So some call, not necessarily the traced one, must carry grpc_pod's socket view.
    let at_server_socket = seen.iter().any(|s| {
        s["observations"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|o| o["point"] == "socket" && o["comm"] == "grpc_pod")
    });
    assert!(
        at_server_socket,
        "a call seen at the gRPC server's socket\nsessions seen:\n{}",
        summary(&seen)
    );
    assert!(
        seen.iter().all(|s| s["server"]["port"] != 8443),
        "TLS on the veths decodes nothing: {}",
        summary(&seen)
    );

    // Many streams at once on one connection: their HEADERS share the HPACK tables and ride in
    // the same writes, after the first write of a message. The socket point captures such a
    // connection call by call: every call is seen at the server's own socket with its
    // `x-request-id` (a literal the encoder indexes: lost with the table's step), and no HTTP/2
    // table falls out of step (only the socket point decodes HTTP/2 here: the veths carry TLS).
    const CONCURRENT: u32 = 40;
    let concurrent = CONCURRENT.to_string();
    run_in(
        &client.netns,
        &[grpc_pod, "call-concurrent", &url, &concurrent],
    )?;
    let mux = |s: &Value| {
        s["http"]["request_id"]
            .as_str()
            .and_then(|id| id.strip_prefix("mux-"))
            .and_then(|i| i.parse::<u32>().ok())
    };
    let at_grpc_pod = |s: &Value| {
        s["observations"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|o| o["point"] == "socket" && o["comm"] == "grpc_pod")
    };
    let all_seen = wait_for(
        "every multiplexed call at the gRPC server's socket",
        Duration::from_secs(20),
        || {
            seen = clovisor.sessions()?;
            let mut ids: Vec<u32> = seen
                .iter()
                .filter(|s| at_grpc_pod(s) && s["incomplete"] == false)
                .filter_map(mux)
                .collect();
            ids.sort_unstable();
            ids.dedup();
            Ok(ids.len() == CONCURRENT as usize)
        },
    );
    if let Err(e) = all_seen {
        let metrics = clovisor.metrics_text().unwrap_or_default();
        let counters: Vec<&str> = metrics
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                [
                    "kernel_total",
                    "dropped",
                    "desync",
                    "decode_error",
                    "messages",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .collect();
        bail!(
            "{e:#}\nsessions seen:\n{}\ncounters:\n{}\nlog:\n{}",
            summary(&seen),
            counters.join("\n"),
            clovisor.proc.log_text()
        );
    }
    for i in 0..CONCURRENT {
        let s = seen
            .iter()
            .find(|s| mux(s) == Some(i) && at_grpc_pod(s))
            .with_context(|| format!("call mux-{i}"))?;
        assert_eq!(s["protocol"], "grpc", "{s:#}");
        assert_eq!(s["grpc"]["service"], GRPC_SERVICE, "{s:#}");
        assert_eq!(s["grpc"]["method"], "Export", "{s:#}");
        let status = if i % 5 == 4 { 3 } else { 0 };
        assert_eq!(s["grpc"]["status_code"], status, "{s:#}");
    }
    let metrics = clovisor.metrics_text()?;
    let desyncs: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("clovisor_collector_decoder_desyncs_total{"))
        .filter(|l| l.contains("protocol=\"http2\""))
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert!(
        desyncs.is_empty(),
        "no HTTP/2 table out of step at the socket point: {desyncs:?}"
    );
    let each_call = api::sample(
        &metrics,
        "clovisor_probe_kernel_total{counter=\"socket_each_call_connections\"}",
    );
    assert!(
        each_call.is_some_and(|n| n >= 2.0),
        "both ends of the plaintext leg captured call by call: {each_call:?}"
    );
    Ok(())
}
