//! End to end, for real: two namespace pods on a bridge, nginx in one, curl in the other,
//! `clovisor all-in-one` tracing the server pod with real BPF programs, an OTLP receiver speaking
//! the real protocol standing in for Jaeger. Checks the REST sessions, the spans and their
//! parents, the request metrics, and that nothing of ours is left in the kernel after SIGTERM or
//! after a crash.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clovisor_correlator::testing::OtlpReceiver;
use clovisor_integration_tests::http_client::{curl, curl_keep_alive, http_get, Curl};
use clovisor_integration_tests::{
    our_programs_on, wait_for, AllInOne, Lab, Nginx, Pod, Proc, BIG_BYTES,
};
use serde_json::Value;

const W3C_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const W3C_PARENT: &str = "00f067aa0ba902b7";
const B3_TRACE: &str = "463ac35c9f6413ad48485a3953bb6124";
const B3_PARENT: &str = "a2fb4a1d1a96d312";
const REQUEST_ID: &str = "9f1c2a7e-e2e-request";
/// A trace the caller did not sample (W3C flags 00): traced, counted, listed, not exported.
const UNSAMPLED_TRACE: &str = "5ce0e9a56015fec5aadfa328ae398115";

fn start_clovisor(server: &Pod, otlp: &str, log_name: &str) -> Result<AllInOne> {
    AllInOne::start(
        &["--netns", &server.netns],
        otlp,
        &[&server.host_veth],
        log_name,
    )
}

/// The request target as sent: `http.path` plus `?` and `http.query` when there is one.
fn target(s: &Value) -> String {
    let path = s["http"]["path"].as_str().unwrap_or_default();
    match s["http"]["query"].as_str() {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_owned(),
    }
}

fn find<'a>(sessions: &'a [Value], method: &str, path: &str) -> Option<&'a Value> {
    sessions
        .iter()
        .find(|s| s["http"]["method"] == method && target(s) == path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_real_http_between_namespace_pods_end_to_end() -> Result<()> {
    let otlp = OtlpReceiver::start().await?;
    let mut lab = Lab::new()?;
    let client = lab.pod("cli")?;
    let server = lab.pod("srv")?;
    let _nginx = Nginx::start(&server)?;

    let mut clovisor = start_clovisor(&server, &otlp.endpoint(), "clovisor-e2e")?;
    let base = format!("http://{}", server.ipv4);

    // Every request below is told apart by its path.
    curl(&client, &format!("{base}/?case=plain"))?;
    Curl::new()
        .args(&[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-H",
            &format!("traceparent: 00-{W3C_TRACE}-{W3C_PARENT}-01"),
            "-d",
            r#"{"sku":42,"qty":1}"#,
        ])
        .run(&client, &[format!("{base}/api/orders")])?;
    Curl::new()
        .args(&[
            "-H",
            &format!("X-B3-TraceId: {B3_TRACE}"),
            "-H",
            &format!("X-B3-SpanId: {B3_PARENT}"),
            "-H",
            "X-B3-Sampled: 1",
        ])
        .run(&client, &[format!("{base}/missing?case=b3")])?;
    Curl::new()
        .args(&[
            "-H",
            &format!("traceparent: 00-{UNSAMPLED_TRACE}-{W3C_PARENT}-00"),
        ])
        .run(&client, &[format!("{base}/?case=unsampled")])?;
    Curl::new()
        .args(&["-H", &format!("x-request-id: {REQUEST_ID}")])
        .run(&client, &[format!("{base}/boom")])?;
    curl(&client, &format!("{base}/big.bin"))?;
    curl(&client, &format!("http://[{}]/?case=ipv6", server.ipv6))?;
    // Three requests on one keep-alive connection.
    curl_keep_alive(
        &client,
        &[
            format!("{base}/index.html?ka=1"),
            format!("{base}/index.html?ka=2"),
            format!("{base}/missing?ka=3"),
        ],
    )?;
    // A keep-alive client that stays connected and quiet after its response: no FIN ends the
    // message, so the probe's idle flush and the collector's check that the response is whole
    // must bring the session out while the connection is still open.
    let idle_client = format!(
        "import http.client, time\n\
         c = http.client.HTTPConnection('{}', 80, timeout=5)\n\
         c.request('GET', '/?case=idle')\n\
         c.getresponse().read()\n\
         time.sleep(6)\n",
        server.ipv4
    );
    let mut idle = Command::new("ip");
    idle.args([
        "netns",
        "exec",
        &client.netns,
        "python3",
        "-c",
        &idle_client,
    ]);
    let idle_log = std::env::temp_dir().join(format!("idle-client-{}.log", std::process::id()));
    let mut idle = Proc::spawn(idle, idle_log)?;
    const REQUESTS: usize = 11;

    // Each exchange is seen at the server pod's veth and at nginx's socket; the REST API shows
    // it from its first view on and adds the second when it arrives.
    let at_both = |s: &Value| {
        let obs = s["observations"].as_array().cloned().unwrap_or_default();
        obs.iter().any(|o| o["point"] == "pod")
            && obs
                .iter()
                .any(|o| o["point"] == "socket" && o["comm"] == "nginx")
    };
    let mut seen = Vec::new();
    let all_seen = wait_for(
        "all 11 sessions in the REST API, each seen at the veth and the socket",
        Duration::from_secs(15),
        || {
            seen = clovisor.sessions()?;
            Ok(seen.len() >= REQUESTS && seen.iter().all(at_both))
        },
    );
    if let Err(e) = all_seen {
        bail!(
            "{e:#}\nsessions seen: {}\nlog:\n{}",
            serde_json::to_string_pretty(&seen)?,
            clovisor.proc.log_text()
        );
    }
    assert!(
        idle.running(),
        "the idle session must be reported while its connection is still open"
    );
    assert_eq!(
        seen.len(),
        REQUESTS,
        "one session per request, no duplicates: {seen:#?}"
    );

    let expect = [
        ("GET", "/?case=plain", 200),
        ("POST", "/api/orders", 201),
        ("GET", "/missing?case=b3", 404),
        ("GET", "/boom", 503),
        ("GET", "/big.bin", 200),
        ("GET", "/?case=ipv6", 200),
        ("GET", "/index.html?ka=1", 200),
        ("GET", "/index.html?ka=2", 200),
        ("GET", "/missing?ka=3", 404),
        ("GET", "/?case=idle", 200),
        ("GET", "/?case=unsampled", 200),
    ];
    for (method, path, status) in expect {
        let s = find(&seen, method, path)
            .with_context(|| format!("no session for {method} {path} in {seen:#?}"))?;
        assert_eq!(s["http"]["status_code"], status, "{method} {path}: {s:#}");
        assert_eq!(s["protocol"], "http/1.1", "{method} {path}: {s:#}");
        assert_eq!(
            s["server"]["pod"],
            server.netns.as_str(),
            "server pod: {s:#}"
        );
        assert_eq!(s["server"]["port"], 80, "server port: {s:#}");
        let duration = s["duration_ns"].as_u64().unwrap_or(0);
        assert!(
            duration > 0,
            "{method} {path}: duration must be real, saw {s:#}"
        );
        assert!(
            s["start_time"]
                .as_str()
                .is_some_and(|t| t.starts_with("20")),
            "RFC 3339 start time: {s:#}"
        );
        assert!(
            s["bytes"]["request"].as_u64().unwrap_or(0) > 0,
            "request bytes: {s:#}"
        );
        assert!(
            at_both(s),
            "observed at the pod veth and at nginx's socket: {s:#}"
        );
    }

    let big = find(&seen, "GET", "/big.bin").context("big")?;
    let big_bytes = big["bytes"]["response"].as_u64().unwrap_or(0);
    assert!(
        big_bytes >= BIG_BYTES as u64,
        "the 1 MiB response is one exchange counting all its bytes; saw {big_bytes}"
    );
    assert!(
        big["packets"]["response"].as_u64().unwrap_or(0) > 10,
        "a 1 MiB response spans many packets: {big:#}"
    );

    let post = find(&seen, "POST", "/api/orders").context("post")?;
    assert_eq!(
        post["trace"]["trace_id"], W3C_TRACE,
        "W3C trace id: {post:#}"
    );
    assert_eq!(
        post["trace"]["parent_span_id"], W3C_PARENT,
        "W3C parent: {post:#}"
    );
    let b3 = find(&seen, "GET", "/missing?case=b3").context("b3")?;
    assert_eq!(b3["trace"]["trace_id"], B3_TRACE, "B3 trace id: {b3:#}");
    assert_eq!(
        b3["trace"]["parent_span_id"], B3_PARENT,
        "B3 parent: {b3:#}"
    );
    let boom = find(&seen, "GET", "/boom").context("boom")?;
    assert_eq!(
        boom["trace"]["request_id"], REQUEST_ID,
        "x-request-id: {boom:#}"
    );
    assert_eq!(
        boom["http"]["request_id"], REQUEST_ID,
        "x-request-id: {boom:#}"
    );

    // Keep-alive: the three requests share one client port, in order.
    let ka: Vec<&Value> = ["/index.html?ka=1", "/index.html?ka=2", "/missing?ka=3"]
        .iter()
        .filter_map(|p| seen.iter().find(|s| target(s) == *p))
        .collect();
    assert_eq!(ka.len(), 3);
    assert!(
        ka.iter()
            .all(|s| s["client"]["port"] == ka[0]["client"]["port"]),
        "keep-alive requests share a connection: {ka:#?}"
    );
    assert!(
        ka[0]["start_time"].as_str() < ka[1]["start_time"].as_str()
            && ka[1]["start_time"].as_str() < ka[2]["start_time"].as_str(),
        "keep-alive requests in order: {ka:#?}"
    );

    // REST filters.
    let by_trace = http_get(&format!(
        "http://{}/api/v1/sessions?trace_id={W3C_TRACE}",
        clovisor.api
    ))?;
    let by_trace: Value = serde_json::from_str(&by_trace)?;
    assert_eq!(
        by_trace["sessions"].as_array().map(Vec::len),
        Some(1),
        "{by_trace:#}"
    );
    let errors: Value = serde_json::from_str(&http_get(&format!(
        "http://{}/api/v1/sessions?status=5xx",
        clovisor.api
    ))?)?;
    assert_eq!(
        errors["sessions"].as_array().map(Vec::len),
        Some(1),
        "{errors:#}"
    );

    // Metrics: every request counted once, when its join window has closed.
    let counted_in = |metrics: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("clovisor_http_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let mut metrics = String::new();
    let _ = wait_for("every request counted", Duration::from_secs(5), || {
        metrics = clovisor.metrics_text()?;
        Ok(counted_in(&metrics) as usize >= REQUESTS)
    });
    let counted = counted_in(&metrics);
    assert_eq!(
        counted as usize, REQUESTS,
        "clovisor_http_requests_total:\n{metrics}"
    );
    assert!(
        metrics.contains("clovisor_http_request_duration_seconds_bucket"),
        "duration histogram exported:\n{metrics}"
    );
    // The caller did not sample one trace: its span is left out (the OpenTelemetry default
    // sampler, parentbased_always_on), and counted.
    assert!(
        metrics
            .lines()
            .any(|l| l == "clovisor_correlator_spans_unsampled_total 1"),
        "one span left out by the sampler:\n{metrics}"
    );
    // The kernel's own counters are visible too (refreshed every second).
    wait_for(
        "kernel counters in /metrics",
        Duration::from_secs(5),
        || {
            let m = clovisor.metrics_text()?;
            Ok(m.lines().any(|l| {
                l.starts_with(r#"clovisor_probe_kernel_total{counter="events_emitted"}"#)
                    && !l.ends_with(" 0")
            }))
        },
    )?;

    // SIGTERM: clean exit, spans flushed, nothing of ours left on the veth.
    let status = clovisor.proc.stop(15, Duration::from_secs(15))?;
    assert!(
        status.success(),
        "clean exit on SIGTERM, saw {status:?}\n{}",
        clovisor.proc.log_text()
    );
    // The pipeline ran dry stage by stage, each stage ending as its input closed (the services
    // hand their messages to each other directly: nothing but their own streams ends them).
    let log = clovisor.proc.log_text();
    assert!(
        log.contains("all-in-one stopped")
            && !log.contains("did not finish in time")
            && !log.contains("stage task failed"),
        "every stage drained in order on SIGTERM:\n{log}"
    );
    let left = our_programs_on(&server.host_veth)?;
    assert!(
        left.is_empty(),
        "BPF programs left on {}: {left:?}",
        server.host_veth
    );

    // Spans: one per request the sampler kept (all but the unsampled trace's); those with wire
    // context sit in the caller's trace under its span.
    let spans = otlp.spans();
    assert_eq!(
        spans.len(),
        REQUESTS - 1,
        "one span per sampled request: {spans:#?}"
    );
    let by_trace: BTreeMap<String, _> = spans.iter().map(|s| (hex(&s.trace_id), s)).collect();
    assert!(
        !by_trace.contains_key(UNSAMPLED_TRACE),
        "the unsampled trace exported: {spans:#?}"
    );
    for (trace, parent, rest) in [(W3C_TRACE, W3C_PARENT, post), (B3_TRACE, B3_PARENT, b3)] {
        let span = by_trace
            .get(trace)
            .with_context(|| format!("no span in trace {trace}: {spans:#?}"))?;
        assert_eq!(
            hex(&span.parent_span_id),
            parent,
            "parented on the caller's span"
        );
        assert_eq!(
            rest["trace"]["span_id"].as_str(),
            Some(hex(&span.span_id).as_str()),
            "REST reports our span id"
        );
        assert!(
            span.end_time_unix_nano > span.start_time_unix_nano && span.start_time_unix_nano > 0,
            "real start time and duration: {span:#?}"
        );
    }
    let post_span = by_trace.get(W3C_TRACE).context("post span")?;
    assert_eq!(post_span.name, "POST", "semconv span name");
    let attrs: BTreeMap<&str, String> = post_span
        .attributes
        .iter()
        .map(|kv| (kv.key.as_str(), format!("{:?}", kv.value)))
        .collect();
    for key in [
        "http.request.method",
        "url.path",
        "http.response.status_code",
        "server.address",
        "server.port",
        "client.address",
        "client.port",
        "network.protocol.version",
        "user_agent.original",
        "k8s.pod.name",
    ] {
        assert!(
            attrs.contains_key(key),
            "span attribute {key} missing: {attrs:#?}"
        );
    }

    // A crash leaves nothing behind either (TCX links die with the process), and a new start
    // after it works.
    let mut again = start_clovisor(&server, &otlp.endpoint(), "clovisor-e2e-crash")?;
    again.proc.stop(9, Duration::from_secs(5))?;
    wait_for(
        "the kernel to release a killed probe's links",
        Duration::from_secs(5),
        || Ok(our_programs_on(&server.host_veth)?.is_empty()),
    )?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
