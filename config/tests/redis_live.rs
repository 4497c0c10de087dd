//! The Redis source against a real `redis-server` (Debian package), started by each test on a
//! free port in a temporary directory and killed at the end.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::bail;
use clovisor_config::testing::RedisServer;
use clovisor_config::{keys, ConfigMetrics, EgressTarget, LiveConfig, RedisSource};
use redis::AsyncCommands;
use tokio::sync::watch;

async fn connect(server: &RedisServer) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(server.url())?
        .get_multiplexed_async_connection()
        .await?)
}

/// Waits until the published configuration satisfies `pred`; returns how long it took.
async fn wait_for(
    rx: &mut watch::Receiver<LiveConfig>,
    within: Duration,
    what: &str,
    pred: impl Fn(&LiveConfig) -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let outcome = tokio::time::timeout(within, rx.wait_for(|c| pred(c)))
        .await
        .map(|r| r.map(|_| ()));
    match outcome {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(_)) => bail!("source ended while waiting for {what}"),
        Err(_) => bail!(
            "{what} not applied within {within:?}; config is {:?}",
            *rx.borrow()
        ),
    }
}

async fn wait_until(within: Duration, what: &str, pred: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !pred() {
        if Instant::now() > deadline {
            bail!("{what} not true within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn has_rule(c: &LiveConfig, ip: [u8; 4], port: u16) -> bool {
    let want = EgressTarget {
        ip: Some(IpAddr::V4(Ipv4Addr::from(ip))),
        port,
    };
    c.egress.iter().any(|r| r.target == want)
}

#[tokio::test]
async fn writes_apply_within_two_seconds_without_any_other_action() -> anyhow::Result<()> {
    let server = RedisServer::start()?;
    let metrics = ConfigMetrics::default();
    let (mut rx, _task) =
        RedisSource::new(&server.url(), metrics.clone())?.spawn(std::future::pending());
    wait_until(Duration::from_secs(5), "redis up", || metrics.is_up()).await?;
    assert_eq!(
        *rx.borrow(),
        LiveConfig::default(),
        "empty Redis = defaults"
    );

    let mut conn = connect(&server).await?;
    let _: () = conn.lpush(keys::EGRESS_MATCH, "10.0.0.7:80").await?;
    let took = wait_for(&mut rx, Duration::from_secs(2), "egress rule", |c| {
        has_rule(c, [10, 0, 0, 7], 80)
    })
    .await?;
    eprintln!("egress rule applied {took:?} after the write");

    let _: () = conn.set(keys::SNAPLEN, "256").await?;
    let _: () = conn.lpush(keys::LABELS, "shop:app:web").await?;
    let _: () = conn.set(keys::JAEGER_AGENT, "jaeger-agent:6831").await?;
    let _: () = conn
        .hset(keys::PROTO_CFG, "redis", "redis-analyzer")
        .await?;
    let _: () = conn.lpush(keys::REDACT_HEADERS, "X-Internal-Token").await?;
    // The misspelled key is read too, its rules added to the others.
    let _: () = conn
        .lpush(keys::EGRESS_MATCH_MISSPELLED, "10.0.0.8:8080")
        .await?;
    wait_for(&mut rx, Duration::from_secs(2), "every key", |c| {
        c.snaplen == Some(256)
            && c.labels.len() == 1
            && c.labels[0].namespace == "shop"
            && c.otlp_endpoint.as_deref() == Some("http://jaeger-agent:4317")
            && c.proto_cfg.get("redis").map(String::as_str) == Some("redis-analyzer")
            && c.is_redacted("x-internal-token")
            && has_rule(c, [10, 0, 0, 7], 80)
            && has_rule(c, [10, 0, 0, 8], 8080)
    })
    .await?;
    // A plugin reload request reaches the services as a new reload count (the collector then
    // re-reads its analyzers' modules), the rest unchanged, and stays counted across polls.
    let before = rx.borrow().proto_reloads;
    let _: () = conn.publish(keys::PROTO_PLUGIN_CHANNEL, "redis").await?;
    wait_for(&mut rx, Duration::from_secs(2), "reload requested", |c| {
        c.proto_reloads == before + 1
            && c.proto_cfg.get("redis").map(String::as_str) == Some("redis-analyzer")
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        rx.borrow().proto_reloads,
        before + 1,
        "a poll does not undo the reload count"
    );

    // Removing entries applies too.
    let _: () = conn
        .del(&[keys::EGRESS_MATCH, keys::EGRESS_MATCH_MISSPELLED])
        .await?;
    wait_for(&mut rx, Duration::from_secs(2), "rules removed", |c| {
        c.egress.is_empty()
    })
    .await?;
    assert!(
        metrics.reload_count() >= 3,
        "reloads {}",
        metrics.reload_count()
    );
    assert_eq!(metrics.rejected_count(keys::EGRESS_MATCH), 0);
    Ok(())
}

#[tokio::test]
async fn bad_entries_are_rejected_once_and_counted_while_good_ones_apply() -> anyhow::Result<()> {
    let server = RedisServer::start()?;
    let metrics = ConfigMetrics::default();
    let (mut rx, _task) = RedisSource::new(&server.url(), metrics.clone())?
        .with_poll_interval(Duration::from_millis(200))
        .spawn(std::future::pending());
    let mut conn = connect(&server).await?;
    let _: () = conn
        .rpush(
            keys::EGRESS_MATCH,
            &["10.0.0.7:80", "not-a-rule", "2001:db8::1:80"],
        )
        .await?;
    let _: () = conn.rpush(keys::LABELS, &["Bad Namespace", "shop"]).await?;
    let _: () = conn.set(keys::SNAPLEN, "99999").await?;
    wait_for(&mut rx, Duration::from_secs(2), "good entries", |c| {
        has_rule(c, [10, 0, 0, 7], 80) && c.labels.len() == 1 && c.labels[0].namespace == "shop"
    })
    .await?;
    assert_eq!(rx.borrow().egress.len(), 1, "only the good rule");
    assert_eq!(rx.borrow().snaplen, None, "bad snaplen ignored");
    // Many polls later each bad entry is still counted once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counts = |m: &ConfigMetrics| {
        (
            m.rejected_count(keys::EGRESS_MATCH),
            m.rejected_count(keys::LABELS),
            m.rejected_count(keys::SNAPLEN),
        )
    };
    assert_eq!(
        counts(&metrics),
        (2, 1, 1),
        "(egress, labels, snaplen) rejections"
    );

    // A key of the wrong type is rejected as such.
    let _: () = conn.del(keys::SNAPLEN).await?;
    let _: () = conn.rpush(keys::SNAPLEN, "512").await?;
    wait_until(Duration::from_secs(2), "wrong type counted", || {
        metrics.rejected_count(keys::SNAPLEN) == 2
    })
    .await?;

    // Fixing the entry clears it; writing it again is a new change, counted again.
    let _: () = conn.lrem(keys::EGRESS_MATCH, 0, "not-a-rule").await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let _: () = conn.rpush(keys::EGRESS_MATCH, "not-a-rule").await?;
    wait_until(Duration::from_secs(2), "re-added entry counted", || {
        metrics.rejected_count(keys::EGRESS_MATCH) == 3
    })
    .await?;
    assert!(has_rule(&rx.borrow(), [10, 0, 0, 7], 80), "good rule kept");
    Ok(())
}

#[tokio::test]
async fn redis_lost_keeps_the_last_good_config_and_a_restart_reconnects() -> anyhow::Result<()> {
    let server = RedisServer::start()?;
    let metrics = ConfigMetrics::default();
    let (mut rx, task) =
        RedisSource::new(&server.url(), metrics.clone())?.spawn(std::future::pending());
    let mut conn = connect(&server).await?;
    let _: () = conn.lpush(keys::EGRESS_MATCH, "10.0.0.7:80").await?;
    wait_for(&mut rx, Duration::from_secs(2), "rule", |c| {
        has_rule(c, [10, 0, 0, 7], 80)
    })
    .await?;

    let (port, dir) = server.kill()?;
    wait_until(Duration::from_secs(5), "redis down noticed", || {
        !metrics.is_up()
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        has_rule(&rx.borrow(), [10, 0, 0, 7], 80),
        "last good config kept: {:?}",
        *rx.borrow()
    );
    assert!(
        !task.is_finished(),
        "the source must survive Redis going away"
    );

    // A new, empty Redis on the same address: the source reconnects, the (empty) store is the
    // truth again, and new writes apply within 2 s.
    let server = RedisServer::start_at(port, dir)?;
    wait_until(Duration::from_secs(10), "reconnected", || metrics.is_up()).await?;
    let mut conn = connect(&server).await?;
    let _: () = conn.lpush(keys::EGRESS_MATCH, "10.0.0.9:443").await?;
    wait_for(
        &mut rx,
        Duration::from_secs(2),
        "write after restart",
        |c| has_rule(c, [10, 0, 0, 9], 443) && !has_rule(c, [10, 0, 0, 7], 80),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn unreachable_at_start_traces_nothing_then_connects() -> anyhow::Result<()> {
    let port = clovisor_config::testing::free_port()?;
    let metrics = ConfigMetrics::default();
    let (mut rx, task) = RedisSource::new(&format!("redis://127.0.0.1:{port}"), metrics.clone())?
        .spawn(std::future::pending());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!metrics.is_up());
    assert_eq!(
        *rx.borrow(),
        LiveConfig::unanswered(),
        "fails closed: no pod selected until Redis answers"
    );
    assert!(rx.borrow().labels.is_empty());
    assert!(!task.is_finished());

    let server = RedisServer::start_at(port, tempfile::tempdir()?)?;
    let mut conn = connect(&server).await?;
    let _: () = conn.set(keys::SNAPLEN, "128").await?;
    // Backoff is at most 5 s (+25 % jitter), then one poll.
    wait_for(&mut rx, Duration::from_secs(8), "snaplen", |c| {
        c.snaplen == Some(128)
    })
    .await?;
    assert!(metrics.is_up());
    Ok(())
}

#[test]
fn a_bad_url_is_an_error_that_hides_the_password() {
    let err =
        RedisSource::new("nope://:hunter2@x", ConfigMetrics::default()).expect_err("bad scheme");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[tokio::test]
async fn a_password_protected_redis_is_read_with_the_password_and_refuses_without(
) -> anyhow::Result<()> {
    let server = RedisServer::start_with_password("c0nfig-pw")?;
    let without = ConfigMetrics::default();
    let (rx_without, _t1) = RedisSource::new(&server.url_without_password(), without.clone())?
        .spawn(std::future::pending());
    let with = ConfigMetrics::default();
    let (mut rx, _t2) =
        RedisSource::new(&server.url(), with.clone())?.spawn(std::future::pending());
    wait_until(Duration::from_secs(5), "redis up with the password", || {
        with.is_up()
    })
    .await?;

    let mut conn = connect(&server).await?;
    let _: () = conn.lpush(keys::EGRESS_MATCH, "10.0.0.9:80").await?;
    wait_for(&mut rx, Duration::from_secs(2), "egress rule", |c| {
        has_rule(c, [10, 0, 0, 9], 80)
    })
    .await?;
    assert!(!without.is_up(), "no password: never up");
    assert_eq!(
        *rx_without.borrow(),
        LiveConfig::unanswered(),
        "no password: never answered, nothing traced"
    );
    assert!(
        server.cli(&["LLEN", keys::EGRESS_MATCH])?.trim() == "1",
        "redis-cli with REDISCLI_AUTH reads it"
    );
    Ok(())
}

#[tokio::test]
async fn entries_that_are_not_utf8_are_rejected_one_by_one_and_never_freeze_the_rest(
) -> anyhow::Result<()> {
    let server = RedisServer::start_with_password("utf8-pw")?;
    let metrics = ConfigMetrics::default();
    let (mut rx, _task) = RedisSource::new(&server.url(), metrics.clone())?
        .with_poll_interval(Duration::from_millis(200))
        .spawn(std::future::pending());
    let mut conn = connect(&server).await?;
    let bad = b"\xff\xfe not text".to_vec();
    // The snaplen first: the configuration waited for below is complete only after it.
    let _: () = conn.set(keys::SNAPLEN, bad.clone()).await?;
    let _: () = conn
        .rpush(
            keys::EGRESS_MATCH,
            vec![
                b"10.0.0.7:80".to_vec(),
                bad.clone(),
                b"10.0.0.8:80".to_vec(),
            ],
        )
        .await?;
    let _: () = conn
        .rpush(keys::LABELS, vec![bad.clone(), b"shop".to_vec()])
        .await?;
    let _: () = conn
        .hset_multiple(
            keys::PROTO_CFG,
            &[
                (b"http".to_vec(), b"http-analyzer".to_vec()),
                (b"redis".to_vec(), bad.clone()),
            ],
        )
        .await?;
    wait_for(&mut rx, Duration::from_secs(3), "the good entries", |c| {
        has_rule(c, [10, 0, 0, 7], 80)
            && has_rule(c, [10, 0, 0, 8], 80)
            && c.labels.len() == 1
            && c.labels[0].namespace == "shop"
            && c.proto_cfg.get("http").map(String::as_str) == Some("http-analyzer")
    })
    .await?;
    assert_eq!(
        rx.borrow().snaplen,
        None,
        "a snaplen that is not text is ignored"
    );
    assert_eq!(
        rx.borrow().proto_cfg.len(),
        1,
        "{:?}",
        rx.borrow().proto_cfg
    );
    for key in [
        keys::EGRESS_MATCH,
        keys::LABELS,
        keys::PROTO_CFG,
        keys::SNAPLEN,
    ] {
        assert_eq!(
            metrics.rejected_for(key, "not_utf8"),
            1,
            "one not-UTF-8 rejection counted for {key}"
        );
    }
    // Live configuration keeps following Redis: a later write applies.
    let _: () = conn.rpush(keys::EGRESS_MATCH, "10.0.0.9:443").await?;
    wait_for(
        &mut rx,
        Duration::from_secs(2),
        "a write after the bad entries",
        |c| has_rule(c, [10, 0, 0, 9], 443),
    )
    .await?;
    assert_eq!(
        metrics.rejected_for(keys::EGRESS_MATCH, "not_utf8"),
        1,
        "still counted once, not once per poll"
    );
    Ok(())
}

#[tokio::test]
async fn the_operators_allow_list_holds_whatever_redis_says() -> anyhow::Result<()> {
    let server = RedisServer::start_with_password("policy-pw")?;
    let metrics = ConfigMetrics::default();
    let policy = clovisor_config::Policy::parse(Some("shop"), Some("https://jaeger.tracing:4317"))?;
    let (mut rx, _task) = RedisSource::new(&server.url(), metrics.clone())?
        .with_poll_interval(Duration::from_millis(200))
        .with_policy(policy)
        .spawn(std::future::pending());
    wait_until(Duration::from_secs(5), "redis up", || metrics.is_up()).await?;
    assert!(
        rx.borrow().labels.is_empty(),
        "namespace default is not allowed: nothing traced, got {:?}",
        rx.borrow().labels
    );
    let mut conn = connect(&server).await?;
    let _: () = conn.rpush(keys::LABELS, &["kube-system", "shop"]).await?;
    let _: () = conn
        .set(keys::OTLP_ENDPOINT, "http://collector.attacker:4317")
        .await?;
    wait_for(&mut rx, Duration::from_secs(2), "shop traced", |c| {
        c.labels.len() == 1 && c.labels[0].namespace == "shop"
    })
    .await?;
    wait_until(Duration::from_secs(2), "both refusals counted", || {
        metrics.rejected_for(keys::LABELS, "not_allowed") == 1
            && metrics.rejected_for(keys::OTLP_ENDPOINT, "not_allowed") == 1
    })
    .await?;
    assert_eq!(rx.borrow().otlp_endpoint, None, "export stays where it was");
    Ok(())
}

#[tokio::test]
async fn rediss_is_read_over_tls_verified_against_the_given_ca() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-certs.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(certs.path())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "make-certs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The correlator's server certificate names localhost: Redis wears it here.
    let dir = certs.path().join("correlator");
    let tls = clovisor_config::testing::ServerTls {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        ca: dir.join("ca.crt"),
    };
    let server = RedisServer::start_tls("tls-pw", &tls)?;
    let ca = std::fs::read(&tls.ca)?;
    assert!(server.url().starts_with("rediss://"), "{}", server.url());

    let with_ca = ConfigMetrics::default();
    let (mut rx, _t1) = RedisSource::with_ca(&server.url(), Some(ca.clone()), with_ca.clone())?
        .with_poll_interval(Duration::from_millis(200))
        .spawn(std::future::pending());
    let system_roots = ConfigMetrics::default();
    let (_rx2, _t2) =
        RedisSource::new(&server.url(), system_roots.clone())?.spawn(std::future::pending());
    let plaintext = ConfigMetrics::default();
    let (_rx3, _t3) = RedisSource::new(
        &server.url().replacen("rediss://", "redis://", 1),
        plaintext.clone(),
    )?
    .spawn(std::future::pending());
    wait_until(Duration::from_secs(5), "up over TLS", || with_ca.is_up()).await?;

    let mut conn = redis::Client::build_with_tls(
        server.url(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca),
        },
    )?
    .get_multiplexed_async_connection()
    .await?;
    let _: () = conn.lpush(keys::EGRESS_MATCH, "10.0.0.5:80").await?;
    wait_for(
        &mut rx,
        Duration::from_secs(2),
        "egress rule over TLS",
        |c| has_rule(c, [10, 0, 0, 5], 80),
    )
    .await?;
    assert!(
        !system_roots.is_up(),
        "a certificate from a CA the system does not know is refused"
    );
    assert!(
        !plaintext.is_up(),
        "plaintext to the TLS port never answers"
    );
    Ok(())
}
