//! Redis end to end, for real: `redis-server` in one namespace pod, `redis-cli` in another,
//! `clovisor all-in-one` tracing the server pod with real BPF programs. The commands come out of
//! the REST API as sessions with their command, first key, reply type and error, pipelined
//! commands one session each; values and `AUTH` arguments never appear; spans follow the
//! database conventions; the RED metrics count by command.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clovisor_correlator::testing::{string_attribute, OtlpReceiver};
use clovisor_integration_tests::databases::{
    redis_cli, wait_for_db_count, RedisServer, REDIS_PORT,
};
use clovisor_integration_tests::{run_in, wait_for, AllInOne, Lab};
use serde_json::Value;

const SECRET_VALUE: &str = "s3cret-e2e-value";
const SECRET_PASSWORD: &str = "hunter2-e2e";

fn database(s: &Value) -> &Value {
    &s["database"]
}

fn find<'a>(sessions: &'a [Value], operation: &str, key: &str) -> Option<&'a Value> {
    sessions.iter().find(|s| {
        database(s)["operation"] == operation && database(s)["key"].as_str().unwrap_or("") == key
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_commands_become_sessions_end_to_end() -> Result<()> {
    let otlp = OtlpReceiver::start().await?;
    let mut lab = Lab::new()?;
    let client = lab.pod("rcli")?;
    let server = lab.pod("rsrv")?;
    let _redis = RedisServer::start(&server)?;
    let clovisor = AllInOne::start(
        &["--netns", &server.netns],
        &otlp.endpoint(),
        &[&server.host_veth],
        "clovisor-redis-e2e",
    )?;

    // The port is traced once the probe's scan has found it listening: ping until one shows.
    let traced = wait_for("a traced PING", Duration::from_secs(15), || {
        redis_cli(&client, &server, &["PING"])?;
        std::thread::sleep(Duration::from_millis(200));
        Ok(find(&clovisor.sessions()?, "PING", "").is_some())
    });
    if let Err(e) = traced {
        bail!("{e:#}\nlog:\n{}", clovisor.proc.log_text());
    }

    redis_cli(&client, &server, &["SET", "e2e:user", SECRET_VALUE])?;
    redis_cli(&client, &server, &["GET", "e2e:user"])?;
    redis_cli(&client, &server, &["LPUSH", "e2e:user", "x"])?;
    redis_cli(&client, &server, &["AUTH", SECRET_PASSWORD])?;
    // Three commands in one message, their replies in one message.
    let pipeline = "*3\\r\\n$3\\r\\nSET\\r\\n$8\\r\\ne2e:pipe\\r\\n$1\\r\\n1\\r\\n\
                    *2\\r\\n$4\\r\\nINCR\\r\\n$8\\r\\ne2e:pipe\\r\\n\
                    *2\\r\\n$3\\r\\nGET\\r\\n$8\\r\\ne2e:pipe\\r\\n";
    let host = server.ipv4.to_string();
    run_in(
        &client.netns,
        &[
            "sh",
            "-c",
            &format!("printf '{pipeline}' | redis-cli -h {host} -p {REDIS_PORT} --pipe"),
        ],
    )?;

    let mut seen = Vec::new();
    let all = wait_for("the Redis sessions", Duration::from_secs(15), || {
        seen = clovisor.sessions()?;
        Ok(["SET", "GET", "LPUSH", "AUTH", "INCR"]
            .iter()
            .all(|op| seen.iter().any(|s| database(s)["operation"] == *op))
            && find(&seen, "GET", "e2e:pipe").is_some())
    });
    if let Err(e) = all {
        bail!(
            "{e:#}\nsessions: {seen:#?}\nlog:\n{}",
            clovisor.proc.log_text()
        );
    }

    for (op, key, statement, reply, error) in [
        ("SET", "e2e:user", "SET e2e:user ?", "simple_string", None),
        ("GET", "e2e:user", "GET e2e:user", "bulk_string", None),
        (
            "LPUSH",
            "e2e:user",
            "LPUSH e2e:user ?",
            "error",
            Some("WRONGTYPE"),
        ),
        ("AUTH", "", "AUTH", "error", Some("ERR")),
        ("SET", "e2e:pipe", "SET e2e:pipe ?", "simple_string", None),
        ("INCR", "e2e:pipe", "INCR e2e:pipe", "integer", None),
        ("GET", "e2e:pipe", "GET e2e:pipe", "bulk_string", None),
    ] {
        let s = find(&seen, op, key).with_context(|| format!("no {op} {key} in {seen:#?}"))?;
        let d = database(s);
        assert_eq!(s["protocol"], "redis", "{s:#}");
        assert_eq!(d["system"], "redis", "{s:#}");
        assert_eq!(d["statement"], statement, "{s:#}");
        assert_eq!(d["reply_type"], reply, "{s:#}");
        assert_eq!(d["error_code"].as_str(), error, "{s:#}");
        assert_eq!(s["server"]["pod"], server.netns.as_str(), "{s:#}");
        assert_eq!(s["server"]["port"], REDIS_PORT, "{s:#}");
        assert_eq!(s["incomplete"], false, "{s:#}");
        assert!(s["duration_ns"].as_u64().unwrap_or(0) > 0, "{s:#}");
    }
    // The pipelined commands came in one message: one session each, by position.
    let ids: Vec<&str> = ["SET", "INCR", "GET"]
        .iter()
        .filter_map(|op| find(&seen, op, "e2e:pipe")?["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 3, "{seen:#?}");
    assert!(
        ids[1].ends_with(".1") && ids[2].ends_with(".2"),
        "pipelined commands are positions of one message: {ids:?}"
    );
    let text = serde_json::to_string(&seen)?;
    assert!(
        !text.contains(SECRET_VALUE) && !text.contains(SECRET_PASSWORD),
        "a value or a password left the collector: {text}"
    );

    // Metrics: by system, bounded command and outcome.
    wait_for_db_count(&clovisor, "redis", "LPUSH", "error")?;

    // Spans: named by the command, with the database attributes.
    let spans = otlp.wait_for_spans(8, Duration::from_secs(15)).await;
    let lpush = spans
        .iter()
        .find(|s| s.name == "LPUSH")
        .with_context(|| format!("no LPUSH span in {spans:#?}"))?;
    assert_eq!(
        string_attribute(lpush, "db.system").as_deref(),
        Some("redis")
    );
    assert_eq!(
        string_attribute(lpush, "db.query.text").as_deref(),
        Some("LPUSH e2e:user ?")
    );
    assert_eq!(
        string_attribute(lpush, "error.type").as_deref(),
        Some("WRONGTYPE")
    );
    assert!(
        !format!("{spans:?}").contains(SECRET_VALUE),
        "a value reached a span"
    );
    otlp.stop().await;
    Ok(())
}
