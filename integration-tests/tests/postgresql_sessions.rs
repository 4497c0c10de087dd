//! PostgreSQL end to end, for real: a cluster made by `initdb` and run by `pg_ctl` in one
//! namespace pod, `psql` and `pgbench` in another, `clovisor all-in-one` tracing the server pod
//! with real BPF programs. Simple queries (after psql's SSLRequest, answered `N`) and prepared
//! statements (the extended protocol) come out of the REST API as sessions with their
//! operation, sanitized statement, rows and SQLSTATE; literals never appear; a result larger
//! than the capture and sent in several writes keeps its rows (the socket point captures a
//! PostgreSQL connection call by call), while the veth's view of it, cut, has none; spans follow
//! the database conventions.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clovisor_correlator::testing::{string_attribute, OtlpReceiver};
use clovisor_integration_tests::databases::{
    pgbench_prepared, psql, wait_for_db_count, Postgres, POSTGRES_PORT,
};
use clovisor_integration_tests::{wait_for, AllInOne, Lab};
use serde_json::Value;

const SECRET_EMAIL: &str = "alice.e2e@example.com";

fn find<'a>(sessions: &'a [Value], statement: &str) -> Option<&'a Value> {
    sessions
        .iter()
        .find(|s| s["database"]["statement"] == statement)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_queries_become_sessions_end_to_end() -> Result<()> {
    let otlp = OtlpReceiver::start().await?;
    let mut lab = Lab::new()?;
    let client = lab.pod("pcli")?;
    let server = lab.pod("psrv")?;
    let pg = Postgres::start(&server)?;
    let clovisor = AllInOne::start(
        &["--netns", &server.netns],
        &otlp.endpoint(),
        &[&server.host_veth],
        "clovisor-pg-e2e",
    )?;

    let traced = wait_for("a traced query", Duration::from_secs(15), || {
        psql(&client, &server, &["-c", "SELECT 42"])?;
        std::thread::sleep(Duration::from_millis(200));
        Ok(find(&clovisor.sessions()?, "SELECT ?").is_some())
    });
    if let Err(e) = traced {
        bail!(
            "{e:#}\nlog:\n{}\nserver log:\n{}",
            clovisor.proc.log_text(),
            pg.log_text()
        );
    }

    psql(
        &client,
        &server,
        &[
            "-c",
            "CREATE TABLE e2e_users (id int, email text)",
            "-c",
            &format!("INSERT INTO e2e_users VALUES (1, '{SECRET_EMAIL}'), (2, 'bob@example.com')"),
            "-c",
            &format!("SELECT id FROM e2e_users WHERE email = '{SECRET_EMAIL}'"),
            "-c",
            "SELECT generate_series(1, 500)",
            "-c",
            "SELECT generate_series(1, 5000) AS n",
        ],
    )?;
    // A failing statement: psql exits non-zero, the exchange is still a session.
    let _ = psql(&client, &server, &["-c", "SELECT * FROM e2e_missing"]);
    pgbench_prepared(
        &client,
        &server,
        "\\set id 2\nSELECT email FROM e2e_users WHERE id = :id;\nUPDATE e2e_users SET email = 'carol@example.com' WHERE id = :id;\n",
    )?;

    let expect = [
        // (statement, operation, rows, error code)
        (
            "CREATE TABLE e2e_users (id int, email text)",
            "CREATE TABLE",
            None,
            None,
        ),
        (
            "INSERT INTO e2e_users VALUES (?, ?), (?, ?)",
            "INSERT",
            Some(2),
            None,
        ),
        (
            "SELECT id FROM e2e_users WHERE email = ?",
            "SELECT",
            Some(1),
            None,
        ),
        // 500 rows do not fit the 1024 bytes captured of the response's first packet at the
        // veth; the server's socket keeps the end of its write, the command tag with it.
        ("SELECT generate_series(?, ?)", "SELECT", Some(500), None),
        // 5000 rows: the server sends them in several 8 KiB writes; the last one ends with the
        // command tag.
        (
            "SELECT generate_series(?, ?) AS n",
            "SELECT",
            Some(5000),
            None,
        ),
        ("SELECT * FROM e2e_missing", "SELECT", None, Some("42P01")),
        // pgbench -M prepared: Parse, then Bind/Execute; $1 is a parameter, not a literal.
        (
            "SELECT email FROM e2e_users WHERE id = $1;",
            "SELECT",
            Some(1),
            None,
        ),
        (
            "UPDATE e2e_users SET email = ? WHERE id = $1;",
            "UPDATE",
            Some(1),
            None,
        ),
    ];
    let mut seen = Vec::new();
    let all = wait_for("the PostgreSQL sessions", Duration::from_secs(15), || {
        seen = clovisor.sessions()?;
        Ok(expect.iter().all(|(st, ..)| find(&seen, st).is_some()))
    });
    if let Err(e) = all {
        bail!(
            "{e:#}\nsessions: {seen:#?}\nlog:\n{}",
            clovisor.proc.log_text()
        );
    }
    for (statement, operation, rows, error) in expect {
        let s = find(&seen, statement).context("checked above")?;
        let d = &s["database"];
        assert_eq!(s["protocol"], "postgresql", "{s:#}");
        assert_eq!(d["system"], "postgresql", "{s:#}");
        assert_eq!(d["operation"], operation, "{s:#}");
        assert_eq!(d["rows"].as_u64(), rows, "{s:#}");
        assert_eq!(d["error_code"].as_str(), error, "{s:#}");
        assert_eq!(d["namespace"], "postgres", "{s:#}");
        assert_eq!(d["user"], "postgres", "{s:#}");
        assert_eq!(s["server"]["port"], POSTGRES_PORT, "{s:#}");
        assert_eq!(s["incomplete"], false, "{s:#}");
    }
    for statement in [
        "SELECT generate_series(?, ?)",
        "SELECT generate_series(?, ?) AS n",
    ] {
        let series = find(&seen, statement).context("checked above")?;
        assert_eq!(
            series["database"]["response_truncated"], false,
            "{series:#}"
        );
        let points: Vec<&Value> = series["observations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| &o["point"])
            .collect();
        assert!(
            points.iter().any(|p| *p == "socket") && points.iter().any(|p| *p == "pod"),
            "seen at the server's socket and its veth: {series:#}"
        );
    }
    let missing = find(&seen, "SELECT * FROM e2e_missing").context("checked above")?;
    assert_eq!(
        missing["database"]["error_message"],
        "relation \"e2e_missing\" does not exist"
    );
    let text = serde_json::to_string(&seen)?;
    assert!(
        !text.contains(SECRET_EMAIL) && !text.contains("carol@"),
        "a literal left the collector: {text}"
    );

    let spans = otlp
        .wait_for_spans(expect.len(), Duration::from_secs(15))
        .await;
    let failed = spans
        .iter()
        .find(|s| {
            string_attribute(s, "db.query.text").as_deref() == Some("SELECT * FROM e2e_missing")
        })
        .with_context(|| format!("no span for the failing query in {spans:#?}"))?;
    assert_eq!(failed.name, "SELECT");
    assert_eq!(
        string_attribute(failed, "db.system").as_deref(),
        Some("postgresql")
    );
    assert_eq!(
        string_attribute(failed, "db.namespace").as_deref(),
        Some("postgres")
    );
    assert_eq!(
        string_attribute(failed, "db.response.status_code").as_deref(),
        Some("42P01")
    );
    assert_eq!(
        string_attribute(failed, "error.type").as_deref(),
        Some("42P01")
    );
    assert!(
        !format!("{spans:?}").contains(SECRET_EMAIL),
        "a literal reached a span"
    );

    wait_for_db_count(&clovisor, "postgresql", "INSERT", "ok")?;
    otlp.stop().await;
    Ok(())
}
