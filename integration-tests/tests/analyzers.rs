//! User protocol analyzers end to end, for real: the example line-protocol analyzer
//! (`analyzers/line/line.wat`) loaded into a running `clovisor all-in-one` through a real
//! `redis-server` with `HSET clovisor_proto_cfg` + `PUBLISH clovisor_proto_plugin_cfg_chan`, a
//! real line server and client between two traced namespace pods, the exchanges in the REST API
//! and as spans; a second version loaded mid-traffic on one connection without losing an
//! exchange; an invalid module rejected while the running one stays; the analyzer unloaded;
//! and three hostile modules (a trap, an endless loop, a memory hog) each contained, counted
//! and switched off while HTTP/1 through nginx keeps being decoded. The first exchanges, captured
//! on the server's veth, decode offline with `clovisor decode --analyzer line=MODULE` to the
//! same exchanges.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clovisor_config::testing::RedisServer;
use clovisor_correlator::testing::{string_attribute, OtlpReceiver};
use clovisor_integration_tests::api::sample;
use clovisor_integration_tests::decode::{assert_same_exchanges, decode_capture_with, point};
use clovisor_integration_tests::dumpcap::Dumpcap;
use clovisor_integration_tests::http_client::curl;
use clovisor_integration_tests::line_proto::{
    ask, ask_in_background, example_analyzer, LineServer, LINE_PORT,
};
use clovisor_integration_tests::{run, wait_for, AllInOne, Lab, Nginx};
use serde_json::Value;

const PROTO_CFG: &str = "clovisor_proto_cfg";
const CHANNEL: &str = "clovisor_proto_plugin_cfg_chan";

/// The `argument` field of a line session (the request's `FETCH <argument>`).
fn argument(s: &Value) -> &str {
    s["analyzer"]["fields"]["argument"].as_str().unwrap_or("")
}

fn line_sessions(sessions: &[Value]) -> Vec<&Value> {
    sessions
        .iter()
        .filter(|s| s["protocol"] == "line")
        .collect()
}

fn hostile(name: &str) -> String {
    format!(
        "{}/../collector/testdata/analyzers/{name}.wat",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The value of one metrics sample of `clovisor`, 0 when absent.
fn metric(clovisor: &AllInOne, series: &str) -> Result<f64> {
    Ok(sample(&clovisor.metrics_text()?, series).unwrap_or(0.0))
}

/// Waits up to 5 s for the sample `series` of `clovisor` to be 1.
fn wait_for_one(clovisor: &AllInOne, series: &str) -> Result<()> {
    wait_for(series, Duration::from_secs(5), || {
        Ok(metric(clovisor, series)? == 1.0)
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\nclovisor log:\n{}", clovisor.proc.log_text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyzers_load_swap_unload_and_contain_failures_live() -> Result<()> {
    let redis = RedisServer::start()?;
    let otlp = OtlpReceiver::start().await?;
    let mut lab = Lab::new()?;
    let client = lab.pod("azc")?;
    let server = lab.pod("azs")?;
    let line = LineServer::start(&server)?;
    let _nginx = Nginx::start(&server)?;
    let redis_url = redis.url();
    let clovisor = AllInOne::start(
        &["--netns", &server.netns, "--redis", &redis_url],
        &otlp.endpoint(),
        &[&server.host_veth],
        "clovisor-analyzers-e2e",
    )?;
    let fail = |e: anyhow::Error, what: &str| -> anyhow::Error {
        anyhow::anyhow!(
            "{e:#}\n{what}\nclovisor log:\n{}\nline server log:\n{}",
            clovisor.proc.log_text(),
            line.log_text()
        )
    };

    // HTTP is decoded (and the ports are traced) before any analyzer exists.
    let v4 = server.ipv4;
    let http_paths = |clovisor: &AllInOne| -> Result<Vec<String>> {
        Ok(clovisor
            .sessions()?
            .iter()
            .filter_map(|s| s["http"]["path"].as_str().map(str::to_owned))
            .collect())
    };
    let mut n = 0;
    wait_for("a traced HTTP call", Duration::from_secs(15), || {
        n += 1;
        curl(&client, &format!("http://{v4}/before-{n}"))?;
        std::thread::sleep(Duration::from_millis(150));
        Ok(http_paths(&clovisor)?
            .iter()
            .any(|p| p.starts_with("/before-")))
    })
    .map_err(|e| fail(e, "HTTP never traced"))?;
    // Without an analyzer the line protocol is opaque: no sessions.
    ask(&client, &server, 3, 0, "opaque")?;
    std::thread::sleep(Duration::from_millis(1500));
    let sessions = clovisor.sessions()?;
    assert!(
        sessions.iter().all(|s| s["server"]["port"] != LINE_PORT),
        "line exchanges decoded before any analyzer: {sessions:#?}"
    );

    // Load v1 by path; it claims its port within two seconds of the PUBLISH.
    let path = example_analyzer().canonicalize()?.display().to_string();
    redis.cli(&["HSET", PROTO_CFG, "line", &path])?;
    let published = Instant::now();
    redis.cli(&["PUBLISH", CHANNEL, "line"])?;
    wait_for_one(
        &clovisor,
        r#"clovisor_analyzer_loads_total{analyzer="line",outcome="loaded"}"#,
    )?;
    let loaded_after = published.elapsed();
    eprintln!("analyzer loaded {loaded_after:?} after the PUBLISH");
    assert!(
        loaded_after < Duration::from_secs(2),
        "loaded {loaded_after:?} after the PUBLISH, 2 s allowed"
    );
    // The first exchanges are captured too: `clovisor decode --analyzer` must find them
    // offline as the live pipeline did.
    let dir = tempfile::tempdir()?;
    let pcap = dir.path().join("line.pcapng");
    let capture = Dumpcap::start(&server.host_veth, &pcap, &dir.path().join("dumpcap.log"))?;
    let answers = ask(&client, &server, 3, 50, "first")?;
    assert_eq!(answers, ["OK first-0", "OK first-1", "OK first-2"]);
    let mut seen = Vec::new();
    // Each with the server veth's view joined too (it may reach the join after the socket's):
    // the offline decoding below is compared with what the veth saw.
    wait_for("the first line sessions", Duration::from_secs(10), || {
        seen = clovisor.sessions()?;
        Ok(line_sessions(&seen)
            .iter()
            .filter(|s| argument(s).starts_with("first-") && point(s, &server.host_veth).is_some())
            .count()
            == 3)
    })
    .map_err(|e| fail(e, &format!("sessions: {seen:#?}")))?;
    // dumpcap writes what it read before it stops; give it the time to read the last packets
    // (as decode_matches_live.rs does).
    std::thread::sleep(Duration::from_millis(300));
    capture.stop()?;
    let live: Vec<Value> = line_sessions(&seen)
        .into_iter()
        .filter(|s| argument(s).starts_with("first-"))
        .cloned()
        .collect();
    let module = format!("line={path}");
    let (decoded, summary) =
        decode_capture_with(&pcap, &LINE_PORT.to_string(), &["--analyzer", &module])?;
    let n = assert_same_exchanges(&live, &server.host_veth, &decoded, "line.pcapng")
        .map_err(|e| anyhow::anyhow!("{e:#}\nclovisor decode: {summary}"))?;
    assert_eq!(n, 3, "the three exchanges, offline as live");
    let first = line_sessions(&seen)
        .into_iter()
        .find(|s| argument(s) == "first-1")
        .context("first-1")?;
    let fields = &first["analyzer"]["fields"];
    assert_eq!(first["analyzer"]["name"], "line", "{first:#}");
    assert_eq!(fields["command"], "FETCH", "{first:#}");
    assert_eq!(fields["status"], "OK", "{first:#}");
    assert_eq!(fields["message"], "first-1", "{first:#}");
    assert_eq!(fields["version"], "1", "{first:#}");
    assert_eq!(first["server"]["pod"], server.netns.as_str(), "{first:#}");
    assert_eq!(first["server"]["port"], LINE_PORT, "{first:#}");
    assert_eq!(first["incomplete"], false, "{first:#}");
    assert!(first["duration_ns"].as_u64().unwrap_or(0) > 0, "{first:#}");

    // v2 (the same module reporting version 2), inline in base64, while one connection asks
    // every 100 ms: every exchange is there, v1's first, then v2's.
    let v2 = std::fs::read_to_string(&path)?.replace(
        r#"(data (i32.const 80) "1")"#,
        r#"(data (i32.const 80) "2")"#,
    );
    let dir = tempfile::tempdir()?;
    let v2_path = dir.path().join("line-v2.wat");
    std::fs::write(&v2_path, v2)?;
    let v2_b64 =
        String::from_utf8(run("base64", &["-w0", &v2_path.display().to_string()])?.stdout)?;
    const ASKED: u32 = 40;
    let mut talk = ask_in_background(
        &client,
        &server,
        ASKED,
        100,
        "swap",
        dir.path().join("client.log"),
    )?;
    std::thread::sleep(Duration::from_millis(1500));
    redis.cli(&["HSET", PROTO_CFG, "line", v2_b64.trim()])?;
    redis.cli(&["PUBLISH", CHANNEL, "line"])?;
    wait_for("the client to finish", Duration::from_secs(20), || {
        Ok(!talk.running())
    })?;
    let answered = talk
        .log_text()
        .lines()
        .filter(|l| l.starts_with("OK swap-"))
        .count();
    assert_eq!(answered, ASKED as usize, "client log:\n{}", talk.log_text());
    let mut swap: Vec<(u32, String)> = Vec::new();
    wait_for("every swap exchange", Duration::from_secs(10), || {
        seen = clovisor.sessions()?;
        swap = line_sessions(&seen)
            .iter()
            .filter_map(|s| {
                let i = argument(s).strip_prefix("swap-")?.parse().ok()?;
                let version = s["analyzer"]["fields"]["version"].as_str()?.to_owned();
                Some((i, version))
            })
            .collect();
        Ok(swap.len() == ASKED as usize)
    })
    .map_err(|e| fail(e, &format!("swap exchanges seen: {swap:?}")))?;
    swap.sort();
    let versions: Vec<&str> = swap.iter().map(|(_, v)| v.as_str()).collect();
    let switch = versions.iter().position(|v| *v == "2");
    assert!(
        switch.is_some_and(|at| at > 0 && versions[at..].iter().all(|v| *v == "2")),
        "one connection: v1's exchanges, then only v2's: {versions:?}"
    );
    assert_eq!(
        metric(
            &clovisor,
            r#"clovisor_analyzer_loads_total{analyzer="line",outcome="replaced"}"#
        )?,
        1.0
    );

    // Spans carry the fields under the analyzer's prefix; RED metrics count by analyzer.
    let spans = otlp.wait_for_spans(40, Duration::from_secs(15)).await;
    let span = spans
        .iter()
        .find(|s| {
            string_attribute(s, "clovisor.analyzer.line.argument").as_deref() == Some("first-1")
        })
        .with_context(|| format!("no span of first-1 among {} spans", spans.len()))?;
    assert_eq!(span.name, "line");
    assert_eq!(
        string_attribute(span, "clovisor.analyzer.line.command").as_deref(),
        Some("FETCH")
    );
    assert_eq!(
        string_attribute(span, "network.protocol.name").as_deref(),
        Some("line")
    );
    let text = clovisor.metrics_text()?;
    assert!(
        text.lines()
            .any(|l| l
                .starts_with("clovisor_analyzer_requests_total{analyzer=\"line\",outcome=\"ok\"")),
        "no analyzer RED series in:\n{text}"
    );

    // An invalid module is rejected with its reason; version 2 keeps running.
    redis.cli(&["HSET", PROTO_CFG, "line", "bm90IGEgbW9kdWxl"])?;
    redis.cli(&["PUBLISH", CHANNEL, "line"])?;
    wait_for_one(
        &clovisor,
        r#"clovisor_config_rejected_total{key="clovisor_proto_cfg",reason="invalid_module"}"#,
    )?;
    assert!(
        clovisor.proc.log_text().contains("analyzer rejected"),
        "no rejection in the log"
    );
    ask(&client, &server, 1, 0, "kept")?;
    wait_for("v2 still decoding", Duration::from_secs(10), || {
        seen = clovisor.sessions()?;
        Ok(line_sessions(&seen)
            .iter()
            .any(|s| argument(s) == "kept-0" && s["analyzer"]["fields"]["version"] == "2"))
    })
    .map_err(|e| fail(e, &format!("sessions: {seen:#?}")))?;

    // Unloaded: the line protocol is opaque again.
    redis.cli(&["HDEL", PROTO_CFG, "line"])?;
    redis.cli(&["PUBLISH", CHANNEL, "line"])?;
    wait_for_one(
        &clovisor,
        r#"clovisor_analyzer_loads_total{analyzer="line",outcome="unloaded"}"#,
    )?;
    ask(&client, &server, 2, 50, "gone")?;
    std::thread::sleep(Duration::from_millis(1500));
    let after: Vec<String> = line_sessions(&clovisor.sessions()?)
        .iter()
        .map(|s| argument(s).to_owned())
        .filter(|a| a.starts_with("gone-"))
        .collect();
    assert!(after.is_empty(), "decoded after unloading: {after:?}");

    // Hostile modules: each claims the (now unclaimed) line flows by content, fails, is counted
    // and switched off; HTTP keeps being decoded all along.
    for name in ["loop", "memory", "trap"] {
        redis.cli(&["HSET", PROTO_CFG, name, &hostile(name)])?;
    }
    redis.cli(&["PUBLISH", CHANNEL, "loop"])?;
    let mut round = 0;
    wait_for("every hostile analyzer switched off", Duration::from_secs(30), || {
        round += 1;
        ask(&client, &server, 2, 20, &format!("hostile{round}"))?;
        curl(&client, &format!("http://{v4}/during-{round}"))?;
        let mut off = 0.0;
        for name in ["loop", "memory", "trap"] {
            off += metric(
                &clovisor,
                &format!(r#"clovisor_analyzer_loads_total{{analyzer="{name}",outcome="switched_off"}}"#),
            )?;
        }
        Ok(off == 3.0)
    })
    .map_err(|e| fail(e, "hostile analyzers still on"))?;
    for (name, reason) in [("loop", "timeout"), ("memory", "memory"), ("trap", "trap")] {
        let errors = metric(
            &clovisor,
            &format!(r#"clovisor_analyzer_errors_total{{analyzer="{name}",reason="{reason}"}}"#),
        )?;
        assert_eq!(
            errors, 3.0,
            "{name}: three {reason} errors, then switched off"
        );
        assert!(
            clovisor
                .proc
                .log_text()
                .lines()
                .any(|l| l.contains("analyzer switched off") && l.contains(name)),
            "{name}: no switch-off line in the log"
        );
    }
    assert_eq!(metric(&clovisor, "clovisor_analyzers_running")?, 0.0);
    let mut during = Vec::new();
    wait_for(
        "HTTP decoded during the failures",
        Duration::from_secs(10),
        || {
            curl(&client, &format!("http://{v4}/after-hostile"))?;
            during = http_paths(&clovisor)?;
            Ok(during.iter().any(|p| p == "/after-hostile")
                && (1..=round).all(|r| during.contains(&format!("/during-{r}"))))
        },
    )
    .map_err(|e| fail(e, &format!("HTTP paths: {during:?}")))?;
    Ok(())
}
