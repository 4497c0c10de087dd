//! MySQL: real MariaDB 10.11 traffic (`collector/testdata/db/mysql.txt`, see
//! `collector/testdata/db/README.md`): the mariadb client's text queries and a prepared
//! statement through the binary protocol; cut and hostile input.

use super::*;
use crate::decode::testing::{self, fixture, Connection, Recorded, Rng};
use crate::decode::{Exchange, MessageStats};
use clovisor_proto::capture::v1::{FlowKey, ProtocolHint};
use clovisor_proto::session::v1::{Database, Protocol};

fn db(e: &Exchange) -> &Database {
    testing::database(e)
}

fn decode(messages: &Connection, snaplen: usize) -> Recorded {
    testing::decode_flow(&Mysql, messages, snaplen)
}

/// (operation, statement, rows, error code, SQLSTATE) of each exchange.
fn summary(r: &Recorded) -> Vec<(String, String, Option<u64>, String, String)> {
    r.exchanges
        .iter()
        .map(|e| {
            let d = db(e);
            (
                d.operation.clone(),
                d.statement.clone(),
                d.rows,
                d.error_code.clone(),
                d.sql_state.clone(),
            )
        })
        .collect()
}

fn row(
    op: &str,
    st: &str,
    rows: Option<u64>,
    code: &str,
    state: &str,
) -> (String, String, Option<u64>, String, String) {
    (op.into(), st.into(), rows, code.into(), state.into())
}

#[test]
fn mariadb_client_queries_after_the_greeting_and_login() {
    let conns = fixture("mysql.txt");
    assert_eq!(conns.len(), 2, "connections in the fixture");
    let r = decode(&conns[0], 1024);
    assert_eq!(
        summary(&r),
        [
            row(
                "CREATE",
                "CREATE TABLE IF NOT EXISTS users (id int, email text)",
                Some(0),
                "",
                ""
            ),
            row(
                "INSERT",
                "INSERT INTO users VALUES (?, ?), (?, ?)",
                Some(2),
                "",
                ""
            ),
            // The table held the rows of two earlier runs too: three alices.
            row(
                "SELECT",
                "SELECT id, email FROM users WHERE email = ?",
                Some(3),
                "",
                ""
            ),
            row("SELECT", "SELECT * FROM missing", None, "1146", "42S02"),
        ]
    );
    assert_eq!(
        db(&r.exchanges[3]).error_message,
        "Table 'shop.missing' doesn't exist"
    );
    for e in &r.exchanges {
        let d = db(e);
        assert_eq!(
            (d.system.as_str(), d.user.as_str(), d.namespace.as_str()),
            ("mysql", "app", "shop")
        );
        assert_eq!(e.protocol, Protocol::Mysql);
        assert!(!e.incomplete && !d.response_truncated, "{e:?}");
    }
    assert!(
        r.errors.is_empty() && r.unpaired.is_empty() && r.desyncs.is_empty(),
        "{r:?}"
    );
    assert!(!format!("{r:?}").contains("example.com"));
}

#[test]
fn a_prepared_statement_is_remembered_for_its_executions() {
    let conns = fixture("mysql.txt");
    let r = decode(&conns[1], 1024);
    assert_eq!(
        summary(&r),
        [
            row(
                "PREPARE",
                "SELECT email FROM users WHERE id = ?",
                None,
                "",
                ""
            ),
            row(
                "SELECT",
                "SELECT email FROM users WHERE id = ?",
                Some(3),
                "",
                ""
            ),
        ]
    );
    assert!(r.errors.is_empty() && r.unpaired.is_empty(), "{r:?}");
    // The execution's parameter (2) and the row's value never leave.
    assert!(!format!("{r:?}").contains("bob@"));
}

#[test]
fn a_result_beyond_the_capture_has_no_row_count() {
    let conns = fixture("mysql.txt");
    // The SELECT's response is 200-odd bytes: cut it.
    let r = decode(&conns[0], 150);
    let select = r
        .exchanges
        .iter()
        .find(|e| db(e).statement == "SELECT id, email FROM users WHERE email = ?")
        .unwrap_or_else(|| panic!("no SELECT in {r:?}"));
    assert_eq!(db(select).rows, None);
    assert!(db(select).response_truncated);
    assert!(r.errors.contains(&"mysql_response_cut"), "{r:?}");
}

#[test]
fn detection_by_greeting_or_by_a_lone_query() {
    let key = FlowKey::default();
    let info = FlowInfo {
        probe_id: "p",
        flow_id: 1,
        key: &key,
        hint: ProtocolHint::Tcp,
    };
    let detect = |direction, payload: &[u8]| {
        Mysql.detect(
            &info,
            &Message {
                direction,
                stats: MessageStats {
                    bytes: payload.len() as u64,
                    ..MessageStats::default()
                },
                payload,
                partial: false,
                later: &[],
            },
        )
    };
    let conns = fixture("mysql.txt");
    assert_eq!(
        detect(Direction::ServerToClient, &conns[0][0].1),
        Detection::Claim,
        "greeting"
    );
    assert_eq!(
        detect(Direction::ClientToServer, &conns[0][3].1),
        Detection::Claim,
        "a query, mid-way"
    );
    assert_eq!(
        detect(Direction::ClientToServer, &conns[0][1].1),
        Detection::No,
        "a login is not claimed alone"
    );
    assert_eq!(
        detect(Direction::ClientToServer, b"GET / HTTP/1.1\r\n\r\n"),
        Detection::No
    );
    assert_eq!(
        detect(Direction::ClientToServer, &[0, 0, 0, 8, 4, 210, 22, 47]),
        Detection::No,
        "PostgreSQL's SSLRequest"
    );
    assert_eq!(detect(Direction::ServerToClient, b"+OK\r\n"), Detection::No);
}

#[test]
fn tls_ends_decoding() {
    let conns = fixture("mysql.txt");
    let greeting = conns[0][0].1.clone();
    // An SSLRequest: capabilities with SSL and PROTOCOL_41, 32 bytes.
    let mut ssl = vec![32, 0, 0, 1];
    ssl.extend((0x0000_0a00u32 | 0x8000).to_le_bytes());
    ssl.extend([0; 28]);
    let conn: Connection = vec![
        (Direction::ServerToClient, greeting),
        (Direction::ClientToServer, ssl),
        (Direction::ServerToClient, b"\x16\x03\x03".to_vec()),
    ];
    let r = decode(&conn, 1024);
    assert_eq!(r.steps.last(), Some(&crate::decode::Step::Stop));
    assert!(r.exchanges.is_empty());
}

#[test]
fn garbage_and_cuts_anywhere_never_panic() {
    let conns = fixture("mysql.txt");
    let mut rng = Rng(0xda94_2042_e4dd_58b5);
    for round in 0..3000 {
        let mut conn = conns[round % conns.len()].clone();
        for (_, bytes) in conn.iter_mut() {
            match rng.below(4) {
                0 if !bytes.is_empty() => {
                    let i = rng.below(bytes.len());
                    bytes[i] = rng.next_u64() as u8;
                }
                1 => bytes.truncate(rng.below(bytes.len() + 1)),
                2 => bytes.extend((0..rng.below(12)).map(|_| rng.next_u64() as u8)),
                _ => {}
            }
        }
        let r = decode(&conn, 1 + rng.below(300));
        let bytes: usize = conn.iter().map(|(_, b)| b.len()).sum();
        assert!(r.exchanges.len() <= bytes, "more exchanges than bytes");
    }
}
