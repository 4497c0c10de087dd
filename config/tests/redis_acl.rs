//! The components' Redis ACL users, as manifests/base/redis.yaml declares them, against a real
//! `redis-server` and the real Redis source (the redis crate's handshake, the polls, the
//! plugin channel's subscription): a component's user reads every configuration key and gets
//! reload requests, and cannot write any of them; the operator's user writes them.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clovisor_config::testing::RedisServer;
use clovisor_config::{keys, ConfigMetrics, LiveConfig, RedisSource};
use redis::AsyncCommands;
use tokio::sync::watch;

const ADMIN_PW: &str = "admin-pw";

/// The `--user` directives of the Redis container's command line in the manifest, with each
/// `$(REDIS_*_PASSWORD)` replaced by `<component>-pw` (`admin-pw` for the operator's).
fn manifest_users() -> anyhow::Result<Vec<String>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/base/redis.yaml");
    let text = std::fs::read_to_string(path).context("read redis.yaml")?;
    // The args list: `- value` lines after `- redis-server`, up to the container's `env:`.
    let mut args = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let t = line.trim();
        if t == "- redis-server" {
            inside = true;
            continue;
        }
        if inside && t == "env:" {
            break;
        }
        if let (true, Some(v)) = (inside, t.strip_prefix("- ")) {
            args.push(v.trim_matches('"').to_owned());
        }
    }
    let mut users = Vec::new();
    let mut in_user = false;
    for a in args {
        if a.starts_with("--") {
            in_user = a == "--user";
        }
        if in_user {
            let a = a
                .replace("$(REDIS_PROBE_PASSWORD)", "probe-pw")
                .replace("$(REDIS_COLLECTOR_PASSWORD)", "collector-pw")
                .replace("$(REDIS_CORRELATOR_PASSWORD)", "correlator-pw")
                .replace("$(REDIS_ADMIN_PASSWORD)", ADMIN_PW);
            if a.contains("$(") {
                bail!("an argument this test does not expand: {a}");
            }
            users.push(a);
        }
    }
    if users.iter().filter(|a| *a == "--user").count() < 5 {
        bail!("expected the default, three component and one operator user, found {users:?}");
    }
    Ok(users)
}

async fn wait_for(
    rx: &mut watch::Receiver<LiveConfig>,
    what: &str,
    pred: impl Fn(&LiveConfig) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pred(&rx.borrow_and_update()) {
        if Instant::now() > deadline {
            bail!("{what}: not within 5 s; have {:?}", *rx.borrow());
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
    }
    Ok(())
}

#[tokio::test]
async fn each_component_reads_all_configuration_and_writes_none() -> anyhow::Result<()> {
    let server = RedisServer::start_with_args(&manifest_users()?)?;
    let mut admin = redis::Client::open(server.url_as("clovisor-admin", ADMIN_PW))?
        .get_multiplexed_async_connection()
        .await?;
    let _: () = admin.rpush(keys::LABELS, "shop").await?;
    let _: () = admin.rpush(keys::EGRESS_MATCH, "10.0.0.7:80").await?;
    let _: () = admin
        .rpush(keys::EGRESS_MATCH_MISSPELLED, "10.0.0.8:80")
        .await?;
    let _: () = admin.set(keys::SNAPLEN, "256").await?;
    let _: () = admin
        .set(keys::OTLP_ENDPOINT, "http://127.0.0.1:4317")
        .await?;
    let _: () = admin.rpush(keys::REDACT_HEADERS, "x-secret").await?;
    let _: () = admin.hset(keys::PROTO_CFG, "kafka", "builtin").await?;

    for user in [
        "clovisor-probe",
        "clovisor-collector",
        "clovisor-correlator",
    ] {
        let password = format!("{}-pw", user.trim_start_matches("clovisor-"));
        let url = server.url_as(user, &password);
        let metrics = ConfigMetrics::default();
        let (mut rx, task) = RedisSource::new(&url, metrics.clone())?.spawn(std::future::pending());
        wait_for(&mut rx, &format!("{user}: every key read"), |c| {
            c.labels.len() == 1
                && c.egress.len() == 2
                && c.snaplen == Some(256)
                && c.otlp_endpoint.as_deref() == Some("http://127.0.0.1:4317")
                && c.is_redacted("x-secret")
                && c.proto_cfg.get("kafka").map(String::as_str) == Some("builtin")
        })
        .await?;
        assert!(metrics.is_up(), "{user}: the source is up");
        // The plugin channel: a reload request reaches the component (its subscription
        // is allowed). Published until seen: the subscription starts beside the first poll.
        let before = rx.borrow().proto_reloads;
        let deadline = Instant::now() + Duration::from_secs(5);
        while rx.borrow().proto_reloads == before {
            if Instant::now() > deadline {
                bail!("{user}: no reload request arrived");
            }
            let _: () = admin.publish(keys::PROTO_PLUGIN_CHANNEL, "kafka").await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Its own connection cannot write anything.
        let mut conn = redis::Client::open(url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        let set: redis::RedisResult<()> = conn
            .set(keys::OTLP_ENDPOINT, "https://evil.example:4317")
            .await;
        let push: redis::RedisResult<()> = conn.rpush(keys::LABELS, "kube-system").await;
        let publish: redis::RedisResult<()> =
            conn.publish(keys::PROTO_PLUGIN_CHANNEL, "http").await;
        for (what, result) in [("SET", set), ("RPUSH", push), ("PUBLISH", publish)] {
            let err = result.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                err.contains("NOPERM"),
                "{user}: {what} must be refused, got {err:?}"
            );
        }
        task.abort();
    }
    let endpoint: String = admin.get(keys::OTLP_ENDPOINT).await?;
    assert_eq!(endpoint, "http://127.0.0.1:4317");
    Ok(())
}
