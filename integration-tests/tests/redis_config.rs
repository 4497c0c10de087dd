//! Live configuration from Redis, end to end with real BPF: `clovisor all-in-one` traces only a
//! client namespace (nothing listens in it), the server namespace is not traced, and an egress
//! rule pushed into a real `redis-server` makes the client's outbound calls appear in the REST
//! API within seconds. A bad entry pushed beside it is rejected and counted while the good rule
//! keeps working; killing Redis changes nothing that was applied.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clovisor_config::testing::RedisServer;
use clovisor_integration_tests::api::{metric, sessions};
use clovisor_integration_tests::http_client::{http_get, Curl};
use clovisor_integration_tests::{
    clovisor_bin, free_port, our_programs_complete_on, our_programs_on, run, wait_for, Lab, Nginx,
    Pod, Proc,
};
use serde_json::Value;

const SIGTERM: i32 = 15;

/// Paths of the sessions the REST API holds.
fn paths(api: &str) -> Result<Vec<String>> {
    Ok(sessions(api)?
        .iter()
        .filter_map(|s| s["http"]["path"].as_str().map(str::to_owned))
        .collect())
}

/// The value of one sample (`name{labels}`) of the metrics at `metrics`, 0 when absent.
fn sample(metrics: &str, series: &str) -> Result<f64> {
    Ok(metric(metrics, series)?.unwrap_or(0.0))
}

/// One request from `client`, bounded to 5 s (calls are repeated until one is traced).
fn curl(client: &Pod, url: &str) -> Result<()> {
    Curl::new().max_time(5).run(client, &[url])
}

/// Calls `url_of(i)` from the client until its session appears; returns how long after
/// `since` the first one did.
fn first_traced_call(
    client: &Pod,
    api: &str,
    since: Instant,
    within: Duration,
    url_of: impl Fn(usize) -> (String, String),
) -> Result<Duration> {
    let mut i = 0;
    let mut sent = Vec::new();
    wait_for("an outbound call in the REST API", within, || {
        i += 1;
        let (url, path) = url_of(i);
        curl(client, &url)?;
        sent.push(path);
        std::thread::sleep(Duration::from_millis(150));
        let seen = paths(api)?;
        Ok(sent.iter().any(|p| seen.contains(p)))
    })?;
    Ok(since.elapsed())
}

#[test]
fn egress_rules_from_redis_trace_outbound_calls_live() -> Result<()> {
    let redis = RedisServer::start()?;
    let mut lab = Lab::new()?;
    let client = lab.pod("egc")?;
    let server = lab.pod("egs")?;
    let _nginx = Nginx::start(&server)?;

    let api = format!("127.0.0.1:{}", free_port()?);
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let mut cmd = Command::new(clovisor_bin()?);
    cmd.args(["all-in-one", "--netns", &client.netns, "--redis"])
        .arg(redis.url())
        .args(["--api-listen", &api, "--metrics-listen", &metrics])
        .env("OTEL_TRACES_EXPORTER", "none")
        .env("RUST_LOG", "info");
    let log = std::env::temp_dir().join(format!("clovisor-redis-{}.log", std::process::id()));
    let mut clovisor = Proc::spawn(cmd, log)?;
    let ready = wait_for(
        "clovisor attached to the client veth",
        Duration::from_secs(20),
        || {
            if !clovisor.running() {
                bail!("clovisor exited early");
            }
            Ok(http_get(&format!("http://{api}/readyz")).is_ok()
                && our_programs_complete_on(&client.host_veth)?
                && sample(&metrics, "clovisor_config_redis_up")? == 1.0)
        },
    );
    if let Err(e) = ready {
        bail!("{e:#}\nlog:\n{}", clovisor.log_text());
    }
    assert!(
        our_programs_on(&server.host_veth)?.is_empty(),
        "the server namespace must not be traced"
    );

    // No rule: the client's calls to the untraced server are not traced.
    let v4 = server.ipv4;
    for i in 0..3 {
        curl(&client, &format!("http://{v4}/?before-rule={i}"))?;
    }
    std::thread::sleep(Duration::from_millis(1500));
    let seen = paths(&api)?;
    assert!(seen.is_empty(), "traced without any rule: {seen:?}");

    // The rule and a bad entry, in one write each; nothing else is done.
    let pushed = Instant::now();
    redis.cli(&[
        "LPUSH",
        "clovisor_egress_match",
        &format!("{v4}:80"),
        "not-a-rule",
    ])?;
    let took = first_traced_call(&client, &api, pushed, Duration::from_secs(10), |i| {
        (
            format!("http://{v4}/after-rule-{i}"),
            format!("/after-rule-{i}"),
        )
    });
    let took = match took {
        Ok(t) => t,
        Err(e) => bail!("{e:#}\nlog:\n{}", clovisor.log_text()),
    };
    eprintln!("egress rule traced a call {took:?} after the LPUSH");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let rejected = r#"clovisor_config_rejected_total{key="clovisor_egress_match",reason="shape"}"#;
    wait_for("the bad entry counted", Duration::from_secs(5), || {
        Ok(sample(&metrics, rejected)? == 1.0)
    })?;
    let log = clovisor.log_text();
    assert!(
        log.contains("configuration entry rejected") && log.contains("not-a-rule"),
        "the rejection must be logged with the entry:\n{log}"
    );

    // IPv6, written in brackets, through the misspelled key Clovisor users may still have.
    let v6 = server.ipv6;
    let pushed = Instant::now();
    redis.cli(&["LPUSH", "clovior_egress_match", &format!("[{v6}]:80")])?;
    first_traced_call(&client, &api, pushed, Duration::from_secs(10), |i| {
        (format!("http://[{v6}]/v6-{i}"), format!("/v6-{i}"))
    })?;

    // Snaplen, live: with 24 bytes the kernel copies only the start of the request line, so the
    // collector sees a cut target.
    redis.cli(&["SET", "clovisor_snaplen", "24"])?;
    let long = "/snaplen-".to_owned() + &"x".repeat(40);
    let mut i = 0;
    wait_for("a request cut at 24 bytes", Duration::from_secs(10), || {
        i += 1;
        curl(&client, &format!("http://{v4}{long}{i}"))?;
        std::thread::sleep(Duration::from_millis(150));
        Ok(paths(&api)?
            .iter()
            .any(|p| p.starts_with("/snaplen-") && p.len() == 24 - "GET ".len()))
    })?;

    // Redis killed: the applied rules stay, tracing continues, the bad entry is still counted
    // once.
    let (_port, _dir) = redis.kill()?;
    wait_for("redis down noticed", Duration::from_secs(10), || {
        Ok(sample(&metrics, "clovisor_config_redis_up")? == 0.0)
    })?;
    let since = Instant::now();
    first_traced_call(&client, &api, since, Duration::from_secs(10), |i| {
        (
            format!("http://{v4}/redis-gone-{i}"),
            format!("/redis-gone-{i}"),
        )
    })?;
    assert_eq!(sample(&metrics, rejected)?, 1.0, "counted once per change");
    assert!(clovisor.running(), "clovisor must survive Redis going away");

    // The client namespace goes away: its egress entries leave the kernel maps with it.
    let before = egress_entries(clovisor.pid())?;
    assert_eq!(
        before, 3,
        "(veth, port) + two (veth, address, port) entries"
    );
    run("ip", &["netns", "del", &client.netns])?;
    wait_for("egress entries removed", Duration::from_secs(10), || {
        Ok(egress_entries(clovisor.pid())? == 0)
    })?;

    let status = clovisor.stop(SIGTERM, Duration::from_secs(30))?;
    assert!(status.success(), "exit status {status}");
    Ok(())
}

/// Entries in the `egress_ports` and `egress_hosts` maps of process `pid` (found through its
/// file descriptors, so other probes running on the machine are never counted).
fn egress_entries(pid: u32) -> Result<usize> {
    let mut total = 0;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let info = std::fs::read_to_string(fd?.path()).unwrap_or_default();
        let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .map(str::trim)
        else {
            continue;
        };
        let show: Value =
            serde_json::from_slice(&run("bpftool", &["-j", "map", "show", "id", id])?.stdout)?;
        if matches!(show["name"].as_str(), Some("egress_ports" | "egress_hosts")) {
            let dump: Value =
                serde_json::from_slice(&run("bpftool", &["-j", "map", "dump", "id", id])?.stdout)?;
            total += dump.as_array().map_or(0, Vec::len);
        }
    }
    Ok(total)
}
