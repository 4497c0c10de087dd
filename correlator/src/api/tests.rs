use axum::body::Body;
use axum::http::Request;
use serde_json::Value;
use tower::ServiceExt;

use super::*;
use crate::ingest::IngestService;
use crate::metrics::Metrics;
use crate::testing::SessionBuilder;
use clovisor_proto::common::v1::Side;

fn state_with(sessions: Vec<SessionBuilder>) -> ApiState {
    let store = Arc::new(Store::new(100));
    let ingest = IngestService::new(Arc::clone(&store), Arc::new(Metrics::new()), None);
    for s in sessions {
        ingest.accept(s.build());
    }
    ApiState::new(store)
}

async fn get_json(app: Router, uri: &str) -> (StatusCode, Value) {
    send(app, "GET", uri).await
}

fn ids(v: &Value) -> Vec<String> {
    v["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("expected a sessions array, saw {v}"))
        .iter()
        .map(|s| s["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn lists_newest_first_with_filters() {
    let app = app(state_with(vec![
        SessionBuilder::new("a").status(200),
        SessionBuilder::new("b").status(502).pods("c", "api-0"),
        SessionBuilder::new("c").status(404),
    ]));
    let (status, body) = get_json(app.clone(), "/api/v1/sessions").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&body), ["c", "b", "a"], "newest first");
    let (_, body) = get_json(app.clone(), "/api/v1/sessions?status=5xx").await;
    assert_eq!(ids(&body), ["b"]);
    let (_, body) = get_json(app.clone(), "/api/v1/sessions?pod=api-0&limit=5").await;
    assert_eq!(ids(&body), ["b"]);
    let (_, body) = get_json(app, "/api/v1/sessions?limit=2").await;
    assert_eq!(ids(&body), ["c", "b"]);
}

#[tokio::test]
async fn bad_filter_is_a_json_400() {
    let app = app(state_with(vec![]));
    for uri in [
        "/api/v1/sessions?status=7xx",
        "/api/v1/sessions?limit=5000",
        "/api/v1/sessions?trace_id=nothex",
        "/api/v1/sessions?colour=red",
    ] {
        let (status, body) = get_json(app.clone(), uri).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{uri} should be refused, body {body}"
        );
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("bad filter")),
            "{uri}: error body should explain, saw {body}"
        );
    }
}

#[tokio::test]
async fn session_json_shape() {
    let state = state_with(vec![SessionBuilder::new("s-1")
        .trace([0xAB; 16], [0xCD; 8])
        .request_id("rid-1")
        .target("/cart?token=secret&item=3")]);
    let (status, s) = get_json(app(state), "/api/v1/sessions/s-1").await;
    assert_eq!(status, StatusCode::OK, "body {s}");
    assert_eq!(s["id"], "s-1");
    assert_eq!(s["protocol"], "http/1.1");
    assert_eq!(
        s["start_time"], "2023-11-14T22:13:20.123456789Z",
        "RFC 3339 with nanoseconds"
    );
    assert_eq!(s["end_time"], "2023-11-14T22:13:20.126456789Z");
    assert_eq!(s["duration_ns"], 3_000_000);
    assert_eq!(s["client"]["ip"], "10.0.0.1");
    assert_eq!(s["client"]["port"], 40000);
    assert_eq!(s["server"]["pod"], "web-0");
    assert_eq!(s["server"]["namespace"], "default");
    assert_eq!(s["server"]["node"], "node-b");
    let obs = &s["observations"][0];
    assert_eq!(obs["point"], "pod");
    assert_eq!(obs["interface"], "veth-web0");
    assert_eq!(obs["side"], "server");
    assert_eq!(obs["request_start"], "2023-11-14T22:13:20.123456789Z");
    assert_eq!(s["http"]["method"], "GET");
    assert_eq!(s["http"]["path"], "/cart");
    assert_eq!(s["http"]["query"], "token=REDACTED&item=3");
    assert_eq!(s["http"]["host"], "web:8080");
    assert_eq!(
        s["http"]["version"], "1.1",
        "bare version, as the decoder's HTTP/1.1"
    );
    assert_eq!(s["http"]["status_code"], 200);
    assert_eq!(s["http"]["request_id"], "rid-1");
    assert_eq!(s["bytes"]["request"], 120);
    assert_eq!(s["packets"]["response"], 2);
    assert_eq!(
        s["trace"]["trace_id"], "abababababababababababababababab",
        "lowercase hex"
    );
    assert_eq!(s["trace"]["parent_span_id"], "cdcdcdcdcdcdcdcd");
    assert_eq!(s["trace"]["format"], "w3c");
    assert_eq!(s["trace"]["span_id"].as_str().map(str::len), Some(16));
    assert_eq!(s["incomplete"], false);
    assert!(s["grpc"].is_null(), "no gRPC part for HTTP/1.1: {s}");
}

#[tokio::test]
async fn grpc_session_json_shape() {
    let state = state_with(vec![SessionBuilder::new("g-1").grpc(
        "helloworld.Greeter",
        "SayHello",
        3,
        "name: required",
    )]);
    let (status, s) = get_json(app(state), "/api/v1/sessions/g-1").await;
    assert_eq!(status, StatusCode::OK, "body {s}");
    assert_eq!(s["protocol"], "grpc");
    assert_eq!(s["http"]["version"], "2");
    assert_eq!(s["http"]["method"], "POST");
    assert_eq!(s["http"]["path"], "/helloworld.Greeter/SayHello");
    assert_eq!(s["grpc"]["service"], "helloworld.Greeter");
    assert_eq!(s["grpc"]["method"], "SayHello");
    assert_eq!(s["grpc"]["status_code"], 3);
    assert_eq!(s["grpc"]["message"], "name: required");
}

#[tokio::test]
async fn database_session_json_shape() {
    let state = state_with(vec![
        SessionBuilder::new("pg-1").database("postgresql", |d| {
            d.operation = "INSERT".into();
            d.statement = "INSERT INTO users VALUES (?, ?)".into();
            d.namespace = "shop".into();
            d.user = "app".into();
            d.rows = Some(2);
        }),
        SessionBuilder::new("r-1").database("redis", |d| {
            d.operation = "LPUSH".into();
            d.statement = "LPUSH user:42 ?".into();
            d.key = "user:42".into();
            d.reply_type = "error".into();
            d.error_code = "WRONGTYPE".into();
            d.error_message = "Operation against a key holding the wrong kind of value".into();
        }),
    ]);
    let (status, s) = get_json(app(state.clone()), "/api/v1/sessions/pg-1").await;
    assert_eq!(status, StatusCode::OK, "body {s}");
    assert_eq!(s["protocol"], "postgresql");
    assert!(s["http"].is_null(), "no HTTP part: {s}");
    let d = &s["database"];
    assert_eq!(d["system"], "postgresql");
    assert_eq!(d["operation"], "INSERT");
    assert_eq!(d["statement"], "INSERT INTO users VALUES (?, ?)");
    assert_eq!(d["namespace"], "shop");
    assert_eq!(d["user"], "app");
    assert_eq!(d["rows"], 2);
    assert!(d["error_code"].is_null());
    let (_, s) = get_json(app(state), "/api/v1/sessions/r-1").await;
    assert_eq!(s["protocol"], "redis");
    let d = &s["database"];
    assert_eq!(
        (
            d["operation"].as_str(),
            d["key"].as_str(),
            d["reply_type"].as_str()
        ),
        (Some("LPUSH"), Some("user:42"), Some("error"))
    );
    assert_eq!(d["error_code"], "WRONGTYPE");
    assert!(d["rows"].is_null());
}

#[tokio::test]
async fn analyzer_session_json_shape() {
    let state =
        state_with(vec![SessionBuilder::new("line-1")
            .analyzer("line", &[("command", "FETCH"), ("status", "OK")])]);
    let (status, s) = get_json(app(state.clone()), "/api/v1/sessions/line-1").await;
    assert_eq!(status, StatusCode::OK, "body {s}");
    assert_eq!(s["protocol"], "line", "the analyzer's name: {s}");
    assert!(s["http"].is_null(), "no HTTP part: {s}");
    assert_eq!(s["analyzer"]["name"], "line");
    assert_eq!(s["analyzer"]["fields"]["command"], "FETCH");
    assert_eq!(s["analyzer"]["fields"]["status"], "OK");
    let (_, list) = get_json(app(state), "/api/v1/sessions?protocol=line").await;
    assert_eq!(
        list["sessions"].as_array().map(Vec::len),
        Some(1),
        "filtered by the analyzer's name: {list}"
    );
}

#[tokio::test]
async fn missing_session_is_404_and_health_answers() {
    let state = state_with(vec![]);
    let (status, body) = get_json(app(state.clone()), "/api/v1/sessions/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "body {body}");
    for (uri, want) in [("/healthz", StatusCode::OK), ("/readyz", StatusCode::OK)] {
        let r = app(state.clone())
            .oneshot(Request::get(uri).body(Body::empty()).expect("valid"))
            .await
            .expect("infallible");
        assert_eq!(r.status(), want, "{uri}");
    }
    state.ready.store(false, Ordering::Relaxed);
    let r = app(state)
        .oneshot(Request::get("/readyz").body(Body::empty()).expect("valid"))
        .await
        .expect("infallible");
    assert_eq!(
        r.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready while shutting down"
    );
}

#[tokio::test]
async fn metrics_endpoint_serves_openmetrics() {
    let metrics = Metrics::new();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let r = metrics_app(Arc::new(registry))
        .oneshot(
            Request::get("/metrics")
                .header("accept", "application/openmetrics-text; version=1.0.0")
                .body(Body::empty())
                .expect("valid"),
        )
        .await
        .expect("infallible");
    assert_eq!(r.status(), StatusCode::OK);
    let ctype = r
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        ctype.starts_with("application/openmetrics-text"),
        "content type {ctype}"
    );
    let body = axum::body::to_bytes(r.into_body(), 1 << 20)
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("# TYPE clovisor_correlator_sessions_received counter"),
        "{text}"
    );
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF: {text}"
    );
}

/// Two points' views of one exchange: listed once, found by either view's id, with both
/// observations and their own counters.
#[tokio::test]
async fn a_merged_exchange_is_listed_once_with_every_observation() {
    let app = app(state_with(vec![
        SessionBuilder::new("p/1/0")
            .side(Side::Client)
            .with(|s| s.observations[0].interface = "veth-client".into()),
        SessionBuilder::new("p/2/0").side(Side::Server),
    ]));
    let (status, body) = get_json(app.clone(), "/api/v1/sessions").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&body), ["p/1/0"], "one exchange, shown once");
    let (status, one) = get_json(app, "/api/v1/sessions/p%2F2%2F0").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the second view's id finds it: {one}"
    );
    assert_eq!(one["id"], "p/1/0");
    let obs = one["observations"]
        .as_array()
        .unwrap_or_else(|| panic!("observations array expected: {one}"));
    let seen: Vec<(&str, &str, u64)> = obs
        .iter()
        .map(|o| {
            (
                o["interface"].as_str().unwrap_or_default(),
                o["side"].as_str().unwrap_or_default(),
                o["response_bytes"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("veth-client", "client", 612), ("veth-web0", "server", 612)]
    );
}

#[tokio::test]
async fn dns_session_json_shape() {
    let state = state_with(vec![
        SessionBuilder::new("d-1").dns(
            "example.org",
            28,
            0,
            &[&[0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]],
        ),
        SessionBuilder::new("d-2")
            .dns("gone.example", 1, 3, &[])
            .incomplete(),
    ]);
    let (status, s) = get_json(app(state.clone()), "/api/v1/sessions/d-1").await;
    assert_eq!(status, StatusCode::OK, "body {s}");
    assert_eq!(s["protocol"], "dns");
    assert!(s["http"].is_null(), "no HTTP part: {s}");
    let d = &s["dns"];
    assert_eq!(d["question_name"], "example.org");
    assert_eq!(d["question_type"], "AAAA");
    assert_eq!(d["question_class"], "IN");
    assert_eq!(d["response_code"], "NOERROR");
    assert_eq!(d["answer_count"], 1);
    assert_eq!(d["answers"], serde_json::json!(["2001:db8::1"]));
    assert_eq!(d["transport"], "udp");
    assert_eq!(s["server"]["port"], 53);
    let (_, s) = get_json(app(state), "/api/v1/sessions/d-2").await;
    assert_eq!(s["incomplete"], true);
    assert!(
        s["dns"]["response_code"].is_null() && s["dns"]["answer_count"].is_null(),
        "no answer, no answer fields: {s}"
    );
    assert_eq!(s["dns"]["question_type"], "A");
}

/// A state whose sessions have all finished (their join windows closed), so the analytics
/// counted them.
fn finished(sessions: Vec<SessionBuilder>) -> ApiState {
    let store = Arc::new(Store::new(100));
    let ingest = IngestService::new(Arc::clone(&store), Arc::new(Metrics::new()), None);
    for s in sessions {
        ingest.accept(s.build());
    }
    ingest.drain();
    ApiState::new(store)
}

async fn send(app: Router, method: &str, uri: &str) -> (StatusCode, Value) {
    let response = app
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .expect("static request is valid"),
        )
        .await
        .expect("router is infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body fits 1 MiB");
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{uri}: not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    (status, json)
}

/// `n` GETs of `path` from `client` to `server` answered with `status` after `ms` ms.
fn calls(
    n: usize,
    client: &str,
    server: &str,
    path: &str,
    status: u32,
    ms: u64,
) -> Vec<SessionBuilder> {
    (0..n)
        .map(|i| {
            SessionBuilder::new(&format!("{client}-{server}-{path}-{status}-{ms}-{i}"))
                .pods(&format!("{client}-0"), &format!("{server}-0"))
                .server_workload("shop", server)
                .target(&format!("{path}?token=secret"))
                .status(status)
                .with(|s| {
                    if let Some(c) = s.client.as_mut() {
                        c.workload = client.to_owned();
                        c.namespace = "shop".to_owned();
                    }
                    s.end_unix_nanos = s.start_unix_nanos + ms * 1_000_000;
                })
        })
        .collect()
}

#[tokio::test]
async fn services_name_each_workload_with_latency_and_edges() {
    let mut sessions = calls(8, "frontend", "api", "/items", 200, 10);
    sessions.extend(calls(2, "frontend", "api", "/items", 503, 40));
    sessions.extend(calls(5, "api", "db", "/query", 200, 2));
    let app = app(finished(sessions));
    let (status, body) = get_json(app, "/api/v1/services?window=5m").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["window_seconds"], 300);
    let services = body["services"].as_array().expect("services array");
    let api = services
        .iter()
        .find(|s| s["name"] == "api")
        .unwrap_or_else(|| panic!("api not among {body}"));
    assert_eq!(api["namespace"], "shop");
    assert_eq!(api["protocols"], serde_json::json!(["http1"]));
    assert_eq!(api["requests"], 10);
    assert_eq!(api["errors"], 2);
    assert_eq!(api["error_rate"], 0.2);
    let l = &api["latency_ms"];
    assert_eq!(
        (l["min"].as_f64(), l["max"].as_f64()),
        (Some(10.0), Some(40.0))
    );
    assert_eq!(l["avg"].as_f64(), Some(16.0), "(8×10 + 2×40) / 10");
    let p50 = l["p50"].as_f64().unwrap_or_default();
    assert!((p50 - 10.0).abs() <= 0.625, "p50 ≈ 10 ms, got {p50}");
    let p99 = l["p99"].as_f64().unwrap_or_default();
    assert!(
        (p99 - 40.0).abs() <= 2.5,
        "p99 ≈ 40 ms (within 6.25 %), got {p99}"
    );
    assert_eq!(api["callers"][0]["name"], "frontend");
    assert_eq!(api["callers"][0]["requests"], 10);
    assert_eq!(api["callees"][0]["name"], "db");
    assert_eq!(api["callees"][0]["requests"], 5);
}

#[tokio::test]
async fn stats_group_order_and_limit() {
    let mut sessions = calls(3, "frontend", "api", "/items", 200, 10);
    sessions.extend(calls(2, "frontend", "api", "/items", 503, 40));
    sessions.extend(calls(4, "frontend", "api", "/cart", 200, 5));
    let app = app(finished(sessions));
    let (status, body) =
        get_json(app.clone(), "/api/v1/stats?group_by=path,status&window=1m").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let groups: Vec<(String, String, u64)> = body["groups"]
        .as_array()
        .expect("groups array")
        .iter()
        .map(|g| {
            (
                g["key"]["path"].as_str().unwrap_or_default().to_owned(),
                g["key"]["status"].as_str().unwrap_or_default().to_owned(),
                g["requests"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        groups,
        [
            ("/cart".to_owned(), "200".to_owned(), 4),
            ("/items".to_owned(), "200".to_owned(), 3),
            ("/items".to_owned(), "503".to_owned(), 2)
        ],
        "ordered by requests, the query never part of the path"
    );
    let (_, body) = get_json(app.clone(), "/api/v1/stats?group_by=path&order=p99&limit=1").await;
    assert_eq!(body["total_groups"], 2);
    assert_eq!(body["groups"][0]["key"]["path"], "/items", "slowest first");
    assert_eq!(body["groups"].as_array().map(Vec::len), Some(1));
    let (_, body) = get_json(app, "/api/v1/values/user_agent").await;
    assert_eq!(body["values"], serde_json::json!(["curl/8.5.0"]));
}

#[tokio::test]
async fn bad_analytics_parameters_are_json_400s() {
    let app = app(finished(vec![]));
    for uri in [
        "/api/v1/services?window=5x",
        "/api/v1/services?window=0s",
        "/api/v1/services?window=05m",
        "/api/v1/services?windw=5m",
        "/api/v1/stats?group_by=colour",
        "/api/v1/stats?group_by=path,,path",
        "/api/v1/stats?order=fastest",
        "/api/v1/stats?limit=0",
        "/api/v1/stats?limit=x",
        "/api/v1/values/path?window=-1m",
    ] {
        let (status, body) = get_json(app.clone(), uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(
            body["error"].is_string(),
            "{uri}: JSON error expected, saw {body}"
        );
    }
    let (status, body) = get_json(app.clone(), "/api/v1/services?window=2h").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["window_seconds"], 900,
        "a longer window is the retention"
    );
    let (status, body) = get_json(app.clone(), "/api/v1/stats?group_by=path,%20path").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["group_by"],
        serde_json::json!(["path"]),
        "named twice counts once"
    );
    let (status, body) = get_json(app, "/api/v1/values/colour").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn delete_clears_the_store_and_the_analytics() {
    let app = app(finished(calls(3, "frontend", "api", "/items", 200, 10)));
    let (_, system) = get_json(app.clone(), "/api/v1/system").await;
    assert_eq!(system["sessions_stored"], 3, "{system}");
    assert_eq!(system["exchanges_finished"], 3);
    assert_eq!(system["per_protocol"]["http1"], 3);
    assert_eq!(system["analytics"]["keys"], 1);
    let (status, body) = send(app.clone(), "DELETE", "/api/v1/sessions").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["sessions_cleared"], 3);
    let (_, body) = get_json(app.clone(), "/api/v1/sessions").await;
    assert_eq!(ids(&body), Vec::<String>::new(), "store emptied");
    let (_, body) = get_json(app.clone(), "/api/v1/services").await;
    assert_eq!(body["services"], serde_json::json!([]), "analytics emptied");
    let (_, system) = get_json(app, "/api/v1/system").await;
    assert_eq!(system["sessions_stored"], 0);
    assert_eq!(system["analytics"]["keys"], 0);
    assert_eq!(
        system["exchanges_finished"], 3,
        "totals since the start stay"
    );
}

#[tokio::test]
async fn kafka_session_json_shape() {
    let app = app(state_with(vec![SessionBuilder::new("k").kafka(19, |k| {
        k.api_version = 3;
        k.correlation_id = 4;
        k.client_id = "clv-admin".into();
        k.topic = "orders".into();
        k.topic_count = Some(1);
        k.error_code = Some(36);
    })]));
    let (status, s) = get_json(app, "/api/v1/sessions/k").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s["protocol"], "kafka");
    let k = &s["kafka"];
    assert_eq!(
        (
            &k["api_key"],
            &k["api_name"],
            &k["api_version"],
            &k["correlation_id"]
        ),
        (
            &Value::from(19),
            &Value::from("CreateTopics"),
            &Value::from(3),
            &Value::from(4)
        ),
        "{s:#}"
    );
    assert_eq!(k["client_id"], "clv-admin");
    assert_eq!(k["topic"], "orders");
    assert_eq!(k["topic_count"], 1);
    assert_eq!(k["error_code"], 36);
    assert_eq!(k["error_name"], "TOPIC_ALREADY_EXISTS");
    assert!(s["http"].is_null() && s.get("database").is_none(), "{s:#}");
}

/// The names of the query parameters the document declares for `method path`.
fn documented_params(doc: &Value, method: &str, path: &str) -> Vec<String> {
    let mut names: Vec<String> = doc["paths"][path][method]["parameters"]
        .as_array()
        .unwrap_or_else(|| panic!("{method} {path}: no parameters in the document"))
        .iter()
        .filter(|p| p["in"] == "query")
        .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    names
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn openapi_document_is_served_and_matches_the_handlers() {
    let (status, doc) = get_json(app(state_with(vec![])), "/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "body {doc}");
    assert_eq!(doc["openapi"], "3.1.0", "an OpenAPI 3.1 document");
    let mut paths: Vec<&String> = doc["paths"]
        .as_object()
        .expect("paths object")
        .keys()
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/api/v1/openapi.json",
            "/api/v1/services",
            "/api/v1/sessions",
            "/api/v1/sessions/stream",
            "/api/v1/sessions/{id}",
            "/api/v1/stats",
            "/api/v1/system",
            "/api/v1/values/{field}",
        ],
        "every route of app() and no other"
    );
    assert!(doc["paths"]["/api/v1/sessions"]["delete"].is_object());
    assert!(doc["security"].is_null(), "open API: no security required");

    // The parameters are the ones the handlers read: each documented one is known to the
    // parser, and the parser knows no other.
    assert_eq!(
        documented_params(&doc, "get", "/api/v1/sessions"),
        sorted(crate::store::FILTER_NAMES)
    );
    for name in crate::store::FILTER_NAMES {
        let params = HashMap::from([((*name).to_owned(), "\u{1}".to_owned())]);
        if let Err(Error::BadFilter { reason, .. }) = SessionFilter::from_query(&params) {
            assert!(
                reason != "filter not implemented" && reason != "unknown filter",
                "{name} is documented but not read: {reason}"
            );
        }
    }
    let mut stream: Vec<&str> = crate::store::FILTER_NAMES.to_vec();
    stream.retain(|n| !["limit", "cursor"].contains(n));
    assert_eq!(
        documented_params(&doc, "get", "/api/v1/sessions/stream"),
        sorted(&stream)
    );
    assert_eq!(
        documented_params(&doc, "get", "/api/v1/stats"),
        sorted(services::STATS_PARAMS)
    );
    for path in ["/api/v1/services", "/api/v1/values/{field}"] {
        assert_eq!(
            documented_params(&doc, "get", path),
            sorted(services::WINDOW_PARAMS)
        );
    }
    // The session's JSON is described field by field.
    let session = &doc["components"]["schemas"]["SessionJson"]["properties"];
    for field in [
        "id",
        "protocol",
        "start_time",
        "client",
        "http",
        "trace",
        "incomplete",
    ] {
        assert!(
            session[field].is_object(),
            "SessionJson.{field} undocumented: {session}"
        );
    }
}

#[tokio::test]
async fn openapi_document_requires_the_token_the_process_requires() {
    let mut state = state_with(vec![]);
    state.bearer_auth = true;
    let (_, doc) = get_json(app(state), "/api/v1/openapi.json").await;
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer",
        "the bearer scheme is declared: {doc}"
    );
    assert_eq!(doc["security"][0]["bearer"], serde_json::json!([]));
}

#[tokio::test]
async fn pages_follow_the_cursor_to_the_end() {
    let state = state_with(
        (0..7)
            .map(|i| SessionBuilder::new(&format!("p{i}")))
            .collect(),
    );
    let app = app(state);
    let mut uri = "/api/v1/sessions?limit=3".to_owned();
    let mut seen = Vec::new();
    loop {
        let (status, body) = get_json(app.clone(), &uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        seen.extend(ids(&body));
        match body["next_cursor"].as_str() {
            Some(c) => uri = format!("/api/v1/sessions?limit=3&cursor={c}"),
            None => {
                assert!(body["next_cursor"].is_null(), "last page: next_cursor null");
                break;
            }
        }
    }
    assert_eq!(seen, ["p6", "p5", "p4", "p3", "p2", "p1", "p0"]);
    let (status, body) = get_json(app, "/api/v1/sessions?cursor=p3").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a forged cursor: {body}");
}

/// Reads the SSE body until `want` events (not comments) came, or panics after 5 s.
async fn events(body: &mut axum::body::BodyDataStream, want: usize) -> Vec<(String, Value)> {
    use futures::StreamExt as _;
    let mut text = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while out.len() < want {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .unwrap_or_else(|_| panic!("expected {want} events within 5 s, saw {out:?}"))
            .expect("the stream stays open")
            .expect("body chunk");
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut event = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if !event.is_empty() {
                out.push((
                    event,
                    serde_json::from_str(&data).expect("event data is JSON"),
                ));
            }
        }
    }
    out
}

async fn open_stream(app: Router, uri: &str) -> axum::body::BodyDataStream {
    let response = app
        .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
        .await
        .expect("router is infallible");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[http::header::CONTENT_TYPE],
        "text/event-stream"
    );
    response.into_body().into_data_stream()
}

#[tokio::test]
async fn stream_follows_finished_sessions_with_the_filters() {
    let store = Arc::new(Store::new(100));
    let ingest = IngestService::new(Arc::clone(&store), Arc::new(Metrics::new()), None);
    let state = ApiState::new(Arc::clone(&store));
    let _server = state.clone();
    let app = app(state);
    let mut body = open_stream(app.clone(), "/api/v1/sessions/stream?status=5xx").await;
    for (id, code) in [("ok", 200), ("bad", 503), ("worse", 500)] {
        ingest.accept(SessionBuilder::new(id).status(code).build());
    }
    ingest.drain();
    let got = events(&mut body, 2).await;
    let names: Vec<(&str, &str)> = got
        .iter()
        .map(|(e, d)| (e.as_str(), d["id"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(names, [("session", "bad"), ("session", "worse")]);

    for uri in [
        "/api/v1/sessions/stream?limit=5",
        "/api/v1/sessions/stream?cursor=c10000000000000000",
        "/api/v1/sessions/stream?status=9xx",
        "/api/v1/sessions/stream?colour=red",
    ] {
        let (status, body) = get_json(app.clone(), uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
    }
}

#[tokio::test]
async fn a_slow_follower_loses_the_oldest_and_is_told_and_counted() {
    let store = Arc::new(Store::new(10));
    let metrics = Arc::new(Metrics::new());
    let ingest = IngestService::new(Arc::clone(&store), Arc::clone(&metrics), None);
    let state = ApiState::new(Arc::clone(&store)).with_drops(metrics.drops());
    let drops = state.drops.clone();
    // The state lives as long as the server's router does (oneshot drops its copy).
    let _server = state.clone();
    let app = app(state);
    let mut body = open_stream(app, "/api/v1/sessions/stream").await;
    let extra = 20;
    for i in 0..crate::store::FEED_CAPACITY + extra {
        ingest.accept(SessionBuilder::new(&format!("s{i}")).build());
        ingest.drain();
    }
    let got = events(&mut body, 2).await;
    assert_eq!(got[0].0, "dropped", "first the loss: {got:?}");
    assert_eq!(got[0].1["dropped"], extra, "the oldest {extra} lost");
    assert_eq!(got[1].1["id"], format!("s{extra}"), "then the oldest kept");
    assert_eq!(
        drops.get(stream::STAGE_API_STREAM, stream::REASON_LAGGED),
        extra as u64,
        "counted in clovisor_dropped_total"
    );
}

#[tokio::test]
async fn stream_sends_heartbeats_and_ends_when_closing() {
    use futures::StreamExt as _;
    let mut state = state_with(vec![]);
    state.stream.heartbeat = std::time::Duration::from_millis(50);
    let closing = state.closing.clone();
    let _server = state.clone();
    let mut body = open_stream(app(state), "/api/v1/sessions/stream").await;
    let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), body.next())
        .await
        .expect("a heartbeat within 5 s")
        .expect("open")
        .expect("chunk");
    assert_eq!(&chunk[..], b": heartbeat\n\n");
    closing.raise();
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while body.next().await.is_some() {}
    })
    .await;
    assert!(
        end.is_ok(),
        "the stream must end once the correlator closes"
    );
}
