//! The `clovisor` binary against a real correlator (its REST API served on a loopback port,
//! sessions ingested through its ingest service): what scripts and people see.

use std::net::SocketAddr;
use std::process::{Command, Output};

use clovisor_correlator::config::Config;
use clovisor_correlator::testing::SessionBuilder;
use clovisor_correlator::Correlator;

/// A correlator serving its REST API on a loopback port, with `sessions` finished.
struct Server {
    addr: SocketAddr,
    correlator: Correlator,
    _runtime: tokio::runtime::Runtime,
}

fn serve(sessions: Vec<SessionBuilder>) -> Server {
    serve_with(sessions, None)
}

/// Like [`serve`], the API behind `token` as `--api-token-file` puts it.
fn serve_with(sessions: Vec<SessionBuilder>, token: Option<&str>) -> Server {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let (correlator, addr) = runtime.block_on(async {
        let correlator = Correlator::new(Config {
            export: None,
            ..Config::default()
        })
        .expect("a correlator without export");
        for s in sessions {
            correlator.ingest().accept(s.build());
        }
        correlator.ingest().drain();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let app = match token {
            Some(t) => {
                clovisor_runtime::auth::BearerToken::from_value(t).protect(correlator.api_router())
            }
            None => correlator.api_router(),
        };
        tokio::spawn(async move { axum::serve(listener, app).await });
        (correlator, addr)
    });
    Server {
        addr,
        correlator,
        _runtime: runtime,
    }
}

fn clovisor(server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clovisor"))
        .args(args)
        .env("CLOVISOR_SERVER", server)
        .output()
        .expect("the clovisor binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(o: Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "expected success; stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(&o)
}

/// `n` requests from `client` to `server` (namespace shop) of `path`, answered `status`.
fn calls(n: usize, client: &str, server: &str, path: &str, status: u32) -> Vec<SessionBuilder> {
    (0..n)
        .map(|i| {
            SessionBuilder::new(&format!("{client}-{server}-{path}-{status}-{i}"))
                .pods(&format!("{client}-0"), &format!("{server}-0"))
                .server_workload("shop", server)
                .target(path)
                .status(status)
        })
        .collect()
}

fn demo() -> Server {
    let mut s = calls(4, "frontend", "api", "/items", 200);
    s.extend(calls(1, "frontend", "api", "/items", 503));
    s.extend(calls(2, "frontend", "api", "/cart", 200));
    serve(s)
}

#[test]
fn get_sessions_filters_and_formats() {
    let server = demo();
    let url = format!("http://{}", server.addr);
    let table = ok(clovisor(&url, &["get", "sessions", "--status", "5xx"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "header and the one 5xx session:\n{table}");
    assert!(lines[0].starts_with("START "), "{table}");
    assert!(
        lines[1].contains("/items") && lines[1].contains("503"),
        "{table}"
    );
    assert!(!table.contains("\x1b["), "no colour when not on a terminal");
    // Columns line up: every header starts where its values start.
    let col = lines[0].find("PATH").expect("a PATH column");
    assert_eq!(&lines[1][col..col + 6], "/items", "{table}");

    let wide = ok(clovisor(
        &url,
        &["get", "sessions", "-o", "wide", "--limit", "1"],
    ));
    assert!(
        wide.lines().next().is_some_and(|h| h.contains("TRACE-ID")),
        "{wide}"
    );

    let json = ok(clovisor(
        &url,
        &["get", "sessions", "--path-prefix", "/cart", "-o", "json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&json).expect("-o json is JSON");
    assert_eq!(v["sessions"].as_array().map(Vec::len), Some(2), "{json}");

    let yaml = ok(clovisor(
        &url,
        &["get", "sessions", "--limit", "1", "-o", "yaml"],
    ));
    assert!(yaml.contains("\n\"sessions\":\n- "), "{yaml}");

    // Paging: each page's next_cursor gives the next, to the end.
    let mut ids = Vec::new();
    let mut args = vec!["get", "sessions", "--limit", "3", "-o", "json"];
    let mut cursor;
    loop {
        let page: serde_json::Value =
            serde_json::from_str(&ok(clovisor(&url, &args))).expect("-o json is JSON");
        for s in page["sessions"].as_array().into_iter().flatten() {
            ids.push(s["id"].as_str().unwrap_or_default().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => {
                cursor = c.to_owned();
                args = vec![
                    "get", "sessions", "--limit", "3", "-o", "json", "--cursor", &cursor,
                ];
            }
            None => break,
        }
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        (ids.len(), unique.len()),
        (7, 7),
        "every session once: {ids:?}"
    );
}

#[test]
fn get_services_and_stats_match_what_was_sent() {
    let server = demo();
    let url = format!("http://{}", server.addr);
    let services = ok(clovisor(&url, &["get", "services", "-o", "wide"]));
    let api = services
        .lines()
        .find(|l| l.contains(" api "))
        .unwrap_or_else(|| panic!("no api row in\n{services}"));
    let cells: Vec<&str> = api.split_whitespace().collect();
    // NAMESPACE NAME PROTOCOLS REQUESTS ERRORS MIN AVG MAX P50 P90 P99 CALLERS CALLEES
    assert_eq!(
        &cells[..5],
        ["shop", "api", "http1", "7", "14.3%"],
        "{services}"
    );
    assert_eq!(cells[5], "3.00ms", "fixture sessions last 3 ms: {services}");
    assert_eq!(cells[11], "default/client", "{services}");

    let stats = ok(clovisor(&url, &["stats", "--group-by", "path,status"]));
    let rows: Vec<Vec<&str>> = stats
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().take(3).collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["/items", "200", "4"],
            vec!["/cart", "200", "2"],
            vec!["/items", "503", "1"]
        ],
        "{stats}"
    );
}

#[test]
fn clear_empties_the_correlator() {
    let server = demo();
    let url = format!("http://{}", server.addr);
    let out = ok(clovisor(&url, &["clear"]));
    assert_eq!(out, "cleared 7 sessions and the analytics\n");
    let table = ok(clovisor(&url, &["get", "sessions"]));
    assert_eq!(table.lines().count(), 1, "only the header left:\n{table}");
    let services = ok(clovisor(&url, &["get", "services"]));
    assert_eq!(services.lines().count(), 1, "{services}");
}

#[test]
fn exit_codes_scripts_can_rely_on() {
    let server = demo();
    let url = format!("http://{}", server.addr);
    let refused = clovisor(&url, &["stats", "--group-by", "colour"]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "a query the API refuses is a usage error"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("colour"),
        "the API's reason is shown"
    );
    let usage = clovisor(&url, &["get", "sessions", "-o", "xml"]);
    assert_eq!(usage.status.code(), Some(2), "bad flags are a usage error");
    // A port nothing listens on: bind one, then let it go.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a loopback port");
    let down = clovisor(&format!("http://{closed}"), &["get", "services"]);
    assert_eq!(
        down.status.code(),
        Some(1),
        "an unreachable correlator is 1"
    );
    let bad = clovisor("ftp://x", &["get", "services"]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a malformed --server is a usage error"
    );
}

/// Waits until the correlator has `n` live followers.
fn wait_for_followers(server: &Server, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.correlator.store().followers() != n {
        assert!(
            std::time::Instant::now() < deadline,
            "expected {n} followers within 10 s, have {}",
            server.correlator.store().followers()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn observe_shows_sessions_as_they_finish() {
    let server = serve(Vec::new());
    let url = format!("http://{}", server.addr);
    let spawn = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_clovisor"))
            .args(args)
            .env("CLOVISOR_SERVER", &url)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the clovisor binary runs")
    };
    let json = spawn(&["observe", "--status", "5xx", "--count", "2", "-o", "json"]);
    let table = spawn(&["observe", "--path-prefix", "/items", "--count", "3"]);
    wait_for_followers(&server, 2);
    let ingest = server.correlator.ingest();
    for s in calls(2, "frontend", "api", "/items", 200)
        .into_iter()
        .chain(calls(2, "frontend", "api", "/cart", 503))
        .chain(calls(1, "frontend", "api", "/items", 500))
    {
        ingest.accept(s.build());
    }
    ingest.drain();

    let out = json.wait_with_output().expect("observe ends after --count");
    let text = ok(out);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let seen: Vec<(&str, u64)> = lines
        .iter()
        .map(|s| {
            (
                s["http"]["path"].as_str().unwrap_or_default(),
                s["http"]["status_code"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("/cart", 503), ("/cart", 503)],
        "the first two 5xx:\n{text}"
    );

    let text = ok(table
        .wait_with_output()
        .expect("observe ends after --count"));
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 4, "a header and three lines:\n{text}");
    assert_eq!(rows[0][..3], ["START", "CLIENT", "SERVER"], "{text}");
    let cells: Vec<(&str, &str)> = rows[1..].iter().map(|r| (r[5], r[6])).collect();
    assert_eq!(
        cells,
        [("/items", "200"), ("/items", "200"), ("/items", "500")],
        "path and status of each /items session in order:\n{text}"
    );
    // The columns line up: each line's STATUS starts where the header's does.
    let at = text
        .lines()
        .next()
        .and_then(|h| h.find("STATUS"))
        .expect("STATUS header");
    for line in text.lines().skip(1) {
        assert!(
            line[at..].starts_with(|c: char| c.is_ascii_digit()),
            "status column misaligned:\n{text}"
        );
    }
    wait_for_followers(&server, 0);
}

#[test]
fn observe_refuses_a_bad_filter_and_reports_a_lost_correlator() {
    let server = demo();
    let url = format!("http://{}", server.addr);
    let refused = clovisor(&url, &["observe", "--status", "6xx"]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "a refused filter is a usage error"
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a loopback port");
    let down = clovisor(&format!("http://{closed}"), &["observe"]);
    assert_eq!(
        down.status.code(),
        Some(1),
        "an unreachable correlator is 1"
    );
}

#[test]
fn a_token_file_opens_a_correlator_behind_a_token() {
    let server = serve_with(
        calls(2, "frontend", "api", "/items", 200),
        Some("s3cret-t0ken"),
    );
    let url = format!("http://{}", server.addr);
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("good");
    std::fs::write(&good, "s3cret-t0ken\n").expect("token file");
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "guess").expect("token file");

    let refused = clovisor(&url, &["get", "services"]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "no token: refused (401) is a usage error"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_clovisor"))
        .args(["get", "sessions", "--token-file"])
        .arg(&wrong)
        .env("CLOVISOR_SERVER", &url)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "a wrong token is refused");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("guess"),
        "the token is never printed"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_clovisor"))
        .args(["get", "sessions"])
        .env("CLOVISOR_SERVER", &url)
        .env("CLOVISOR_TOKEN_FILE", &good)
        .output()
        .expect("runs");
    let table = ok(out);
    assert_eq!(
        table.lines().count(),
        3,
        "a header and the two sessions:\n{table}"
    );
    let missing = clovisor(
        &url,
        &["get", "services", "--token-file", "/nonexistent/token"],
    );
    assert_eq!(
        missing.status.code(),
        Some(2),
        "an unreadable token file is a usage error"
    );
}
