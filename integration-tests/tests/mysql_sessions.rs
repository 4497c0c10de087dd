//! MySQL protocol end to end, for real: MariaDB (`mariadbd` with a temporary data directory) in
//! one namespace pod, the `mariadb` client and a prepared-statement client in another,
//! `clovisor all-in-one` tracing the server pod with real BPF programs. Queries and prepared
//! statements come out of the REST API as sessions with their operation, sanitized statement,
//! rows and error; literals never appear.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clovisor_integration_tests::databases::{
    mariadb, mysql_prepared, wait_for_db_count, Mariadb, MYSQL_DATABASE, MYSQL_PORT, MYSQL_USER,
};
use clovisor_integration_tests::{wait_for, AllInOne, Lab};
use serde_json::Value;

const SECRET_EMAIL: &str = "alice.e2e@example.com";

fn find<'a>(sessions: &'a [Value], operation: &str, statement: &str) -> Option<&'a Value> {
    sessions.iter().find(|s| {
        s["database"]["statement"] == statement && s["database"]["operation"] == operation
    })
}

#[test]
fn mysql_queries_and_prepared_statements_become_sessions_end_to_end() -> Result<()> {
    let mut lab = Lab::new()?;
    let client = lab.pod("mcli")?;
    let server = lab.pod("msrv")?;
    let db = Mariadb::start(&server)?;
    let clovisor = AllInOne::start_without_export(
        &["--netns", &server.netns],
        &[&server.host_veth],
        "clovisor-mysql-e2e",
    )?;

    let traced = wait_for("a traced query", Duration::from_secs(20), || {
        mariadb(&client, &server, &["-e", "SELECT 42"])?;
        std::thread::sleep(Duration::from_millis(200));
        Ok(find(&clovisor.sessions()?, "SELECT", "SELECT ?").is_some())
    });
    if let Err(e) = traced {
        bail!(
            "{e:#}\nlog:\n{}\nserver log:\n{}",
            clovisor.proc.log_text(),
            db.log_text()
        );
    }

    mariadb(
        &client,
        &server,
        &[
            "-e",
            &format!(
                "CREATE TABLE e2e_users (id int, email text); \
                 INSERT INTO e2e_users VALUES (1, '{SECRET_EMAIL}'), (2, 'bob@example.com'); \
                 SELECT id FROM e2e_users WHERE email = '{SECRET_EMAIL}';"
            ),
        ],
    )?;
    // A failing statement: the client exits non-zero, the exchange is still a session.
    let _ = mariadb(&client, &server, &["-e", "SELECT * FROM e2e_missing"]);
    mysql_prepared(
        &client,
        &server,
        "SELECT email FROM e2e_users WHERE id = ?",
        &[2],
    )?;

    let expect = [
        // (operation, statement, rows, error code, SQLSTATE)
        (
            "CREATE",
            "CREATE TABLE e2e_users (id int, email text)",
            Some(0),
            None,
            None,
        ),
        (
            "INSERT",
            "INSERT INTO e2e_users VALUES (?, ?), (?, ?)",
            Some(2),
            None,
            None,
        ),
        (
            "SELECT",
            "SELECT id FROM e2e_users WHERE email = ?",
            Some(1),
            None,
            None,
        ),
        (
            "SELECT",
            "SELECT * FROM e2e_missing",
            None,
            Some("1146"),
            Some("42S02"),
        ),
        (
            "PREPARE",
            "SELECT email FROM e2e_users WHERE id = ?",
            None,
            None,
            None,
        ),
        // The execution: the prepared statement's text, remembered by its id.
        (
            "SELECT",
            "SELECT email FROM e2e_users WHERE id = ?",
            Some(1),
            None,
            None,
        ),
    ];
    let mut seen = Vec::new();
    let all = wait_for("the MySQL sessions", Duration::from_secs(20), || {
        seen = clovisor.sessions()?;
        Ok(expect
            .iter()
            .all(|(op, st, ..)| find(&seen, op, st).is_some()))
    });
    if let Err(e) = all {
        bail!(
            "{e:#}\nsessions: {seen:#?}\nlog:\n{}",
            clovisor.proc.log_text()
        );
    }
    for (operation, statement, rows, error, state) in expect {
        let s = find(&seen, operation, statement).context("checked above")?;
        let d = &s["database"];
        assert_eq!(s["protocol"], "mysql", "{s:#}");
        assert_eq!(d["system"], "mysql", "{s:#}");
        assert_eq!(d["rows"].as_u64(), rows, "{s:#}");
        assert_eq!(d["error_code"].as_str(), error, "{s:#}");
        assert_eq!(d["sql_state"].as_str(), state, "{s:#}");
        assert_eq!(d["namespace"], MYSQL_DATABASE, "{s:#}");
        assert_eq!(d["user"], MYSQL_USER, "{s:#}");
        assert_eq!(s["server"]["port"], MYSQL_PORT, "{s:#}");
        assert_eq!(s["incomplete"], false, "{s:#}");
    }
    let text = serde_json::to_string(&seen)?;
    assert!(
        !text.contains(SECRET_EMAIL) && !text.contains("bob@"),
        "a literal or a value left the collector: {text}"
    );

    wait_for_db_count(&clovisor, "mysql", "SELECT", "error")?;
    Ok(())
}
