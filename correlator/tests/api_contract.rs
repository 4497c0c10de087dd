//! The REST API's contract, held against a live `clovisor-correlator` process: schemathesis
//! (PyPI, installed by scripts/install-deps.sh into target/contract-venv) reads the OpenAPI
//! document the process serves, sends every operation valid and malformed requests, and
//! checks every answer against the document — no 5xx, only documented status codes, content
//! types and bodies of the documented shape. Once with the API open and once behind a bearer
//! token (then also that a request without the token is refused). The correlator holds real
//! sessions, pushed over its gRPC ingest as a collector would.
//!
//! The live feed (`/api/v1/sessions/stream`) never ends a 200 answer, which a request-response
//! fuzzer cannot read: it is left out of the fuzzing and its refusals are checked here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clovisor_correlator::testing::SessionBuilder;
use clovisor_proto::session::v1::session_ingest_client::SessionIngestClient;
use clovisor_proto::session::v1::SessionBatch;

/// The schemathesis the project installs; `CLOVISOR_SCHEMATHESIS` names another.
fn schemathesis() -> PathBuf {
    std::env::var_os("CLOVISOR_SCHEMATHESIS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/contract-venv/bin/schemathesis"),
        PathBuf::from,
    )
}

fn free_port() -> u16 {
    clovisor_config::testing::free_port().expect("a free loopback port")
}

/// A correlator process, killed on drop.
struct Live {
    child: Child,
    api: String,
    grpc: String,
    log: PathBuf,
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Live {
    fn start(dir: &Path, token_file: Option<&Path>) -> Self {
        let api = format!("127.0.0.1:{}", free_port());
        let grpc = format!("127.0.0.1:{}", free_port());
        let metrics = format!("127.0.0.1:{}", free_port());
        let log = dir.join(format!("correlator-{}.log", free_port()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_clovisor-correlator"));
        cmd.args(["--grpc-listen", &grpc, "--api-listen", &api])
            .args(["--metrics-listen", &metrics, "--redis", ""])
            .env("OTEL_TRACES_EXPORTER", "none")
            // The join window: sessions are finished (and in the analytics) soon.
            .env("CLOVISOR_JOIN_WINDOW_MS", "100")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        if let Some(f) = token_file {
            cmd.arg("--api-token-file").arg(f);
        }
        let child = cmd.spawn().expect("clovisor-correlator starts");
        let live = Self {
            child,
            api,
            grpc,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&live.api).is_err() {
            assert!(
                Instant::now() < deadline,
                "the correlator's API did not listen within 20 s; log:\n{}",
                live.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        live
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Pushes `sessions` over gRPC as a collector does, and waits for the acknowledgement.
    fn push(&self, sessions: Vec<SessionBuilder>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let url = format!("http://{}", self.grpc);
        runtime.block_on(async {
            let mut client = SessionIngestClient::connect(url)
                .await
                .expect("gRPC ingest reachable");
            let sessions: Vec<_> = sessions.into_iter().map(SessionBuilder::build).collect();
            let batch = SessionBatch::of(1, "contract-test", &sessions);
            let mut acks = client
                .push(futures::stream::iter([batch]))
                .await
                .expect("push accepted")
                .into_inner();
            let ack = tokio::time::timeout(Duration::from_secs(10), acks.message())
                .await
                .expect("ack within 10 s")
                .expect("ack stream")
                .expect("an ack");
            assert_eq!(ack.seq, 1, "the batch is acknowledged");
        });
    }
}

fn sessions() -> Vec<SessionBuilder> {
    let mut v = Vec::new();
    for (i, (path, status)) in [("/items", 200), ("/items", 503), ("/cart?token=x", 200)]
        .into_iter()
        .cycle()
        .take(12)
        .enumerate()
    {
        v.push(
            SessionBuilder::new(&format!("contract-{i}"))
                .pods("frontend-0", "api-0")
                .server_workload("shop", "api")
                .target(path)
                .status(status),
        );
    }
    v.push(SessionBuilder::new("contract-grpc").grpc("helloworld.Greeter", "SayHello", 0, ""));
    v.push(SessionBuilder::new("contract-open").incomplete());
    v
}

/// `curl`-free GET: status and body.
fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Runs schemathesis on the document `live` serves (fetched with `token`), bounded in time.
fn fuzz(live: &Live, dir: &Path, token: Option<&str>) {
    let (status, doc) = get(&live.api, "/api/v1/openapi.json", token);
    assert_eq!(status, 200, "the document is served: {doc}");
    let schema = dir.join(format!("openapi-{}.json", free_port()));
    std::fs::write(&schema, &doc).expect("schema file");
    let st = schemathesis();
    assert!(
        st.exists(),
        "{} is missing: run scripts/install-deps.sh",
        st.display()
    );
    let junit = dir.join(format!("junit-{}.xml", free_port()));
    let mut cmd = Command::new(&st);
    cmd.arg("run")
        .arg(&schema)
        .args(["--url", &format!("http://{}", live.api)])
        .args(["--checks", "all"])
        // Object-level authorization needs two users; the API has one token.
        .args(["--exclude-checks", "object_level_authorization"])
        .args(["--exclude-path", "/api/v1/sessions/stream"])
        .args(["--max-examples", "15", "--max-time", "25"])
        .args(["--request-timeout", "5", "--workers", "2"])
        .args(["--seed", "14", "--generation-database", "none"])
        .args(["--no-color", "--warnings", "off"])
        .args(["--report", "junit", "--report-junit-path"])
        .arg(&junit)
        .current_dir(dir);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let started = Instant::now();
    let out = cmd.output().expect("schemathesis runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found contract violations (token: {}):\n{text}\ncorrelator log:\n{}",
        token.is_some(),
        live.log_text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "each run is bounded (two under a minute), took {:?}",
        started.elapsed()
    );
    // Every operation was exercised: the report has a test case for each.
    let report = std::fs::read_to_string(&junit).expect("the JUnit report");
    for op in [
        "GET /api/v1/sessions",
        "DELETE /api/v1/sessions",
        "GET /api/v1/sessions/{id}",
        "GET /api/v1/services",
        "GET /api/v1/stats",
        "GET /api/v1/values/{field}",
        "GET /api/v1/system",
    ] {
        assert!(
            report.contains(&format!("name=\"{op}\"")),
            "{op} was not tested:\n{report}"
        );
    }
}

fn stream_refuses_malformed_requests(live: &Live, token: Option<&str>) {
    for query in [
        "limit=3",
        "cursor=zz",
        "status=6xx",
        "since=yesterday",
        "x=1",
        "trace_id=%ff",
    ] {
        let (status, body) = get(
            &live.api,
            &format!("/api/v1/sessions/stream?{query}"),
            token,
        );
        assert_eq!(status, 400, "stream?{query} must be a 400: {body}");
    }
}

#[test]
fn the_live_api_keeps_its_openapi_contract_open_and_behind_a_token() {
    let dir = tempfile::tempdir().expect("temp dir");

    let open = Live::start(dir.path(), None);
    open.push(sessions());
    let (status, body) = get(&open.api, "/api/v1/sessions?limit=1000", None);
    assert_eq!(status, 200);
    assert!(
        body.contains("contract-11"),
        "the pushed sessions are served: {body}"
    );
    stream_refuses_malformed_requests(&open, None);
    fuzz(&open, dir.path(), None);
    drop(open);

    let token = "contract-t0ken";
    let token_file = dir.path().join("api-token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    let closed = Live::start(dir.path(), Some(&token_file));
    closed.push(sessions());
    let (status, _) = get(&closed.api, "/api/v1/openapi.json", None);
    assert_eq!(status, 401, "the document too is behind the token");
    let (status, doc) = get(&closed.api, "/api/v1/openapi.json", Some(token));
    assert_eq!(status, 200);
    assert!(
        doc.contains("\"securitySchemes\""),
        "the document requires the token the process requires: {doc}"
    );
    stream_refuses_malformed_requests(&closed, Some(token));
    fuzz(&closed, dir.path(), Some(token));
}
