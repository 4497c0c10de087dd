//! PostgreSQL: real psql and pgbench traffic (`collector/testdata/db/pg.txt`, PostgreSQL 15 on
//! loopback, see `collector/testdata/db/README.md`), the extended protocol, TLS, cut and hostile
//! input.

use super::*;
use crate::decode::testing::{self, fixture, Connection, Recorded, Rng};
use crate::decode::{Exchange, MessageStats, Step};
use clovisor_proto::capture::v1::{FlowKey, ProtocolHint};
use clovisor_proto::session::v1::{Database, Protocol};

fn db(e: &Exchange) -> &Database {
    testing::database(e)
}

fn decode(messages: &Connection, snaplen: usize) -> Recorded {
    testing::decode_flow(&Postgresql, messages, snaplen)
}

/// (operation, statement, rows, error code) of each exchange.
fn summary(r: &Recorded) -> Vec<(String, String, Option<u64>, String)> {
    r.exchanges
        .iter()
        .map(|e| {
            let d = db(e);
            (
                d.operation.clone(),
                d.statement.clone(),
                d.rows,
                d.error_code.clone(),
            )
        })
        .collect()
}

fn row(
    op: &str,
    statement: &str,
    rows: Option<u64>,
    error: &str,
) -> (String, String, Option<u64>, String) {
    (op.into(), statement.into(), rows, error.into())
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend(
        u32::try_from(body.len() + 4)
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    f.extend(body);
    f
}

#[test]
fn psql_simple_queries_after_an_ssl_request_answered_n() {
    let conns = fixture("pg.txt");
    assert_eq!(conns.len(), 4, "connections in the fixture");
    let r = decode(&conns[0], 1024);
    assert_eq!(
        summary(&r),
        [
            row(
                "CREATE TABLE",
                "CREATE TABLE users (id int, email text)",
                None,
                ""
            ),
            row(
                "INSERT",
                "INSERT INTO users VALUES (?, ?), (?, ?)",
                Some(2),
                ""
            ),
            row(
                "SELECT",
                "SELECT id, email FROM users WHERE email = ?",
                Some(1),
                ""
            ),
            row("SELECT", "SELECT * FROM nosuchtable", None, "42P01"),
        ]
    );
    let error = db(&r.exchanges[3]);
    assert_eq!(
        error.error_message,
        "relation \"nosuchtable\" does not exist"
    );
    for e in &r.exchanges {
        let d = db(e);
        assert_eq!(
            (d.system.as_str(), d.namespace.as_str(), d.user.as_str()),
            ("postgresql", "postgres", "postgres")
        );
        assert_eq!(e.protocol, Protocol::Postgresql);
        assert!(
            !e.incomplete && !d.statement_truncated && !d.response_truncated,
            "{e:?}"
        );
        assert_eq!(e.response.map(|s| s.index), Some(e.request.index + 1));
    }
    assert!(
        r.errors.is_empty() && r.unpaired.is_empty() && r.desyncs.is_empty(),
        "{r:?}"
    );
    let dump = format!("{r:?}");
    assert!(
        !dump.contains("example.com"),
        "a literal left the decoder: {dump}"
    );
}

#[test]
fn a_result_beyond_the_capture_answers_its_query_without_rows() {
    let conns = fixture("pg.txt");
    let whole = decode(&conns[1], 1 << 20);
    assert_eq!(
        summary(&whole),
        [row("SELECT", "SELECT generate_series(?, ?)", Some(300), "")]
    );
    assert!(whole.errors.is_empty());
    let cut = decode(&conns[1], 1024);
    assert_eq!(
        summary(&cut),
        [row("SELECT", "SELECT generate_series(?, ?)", None, "")]
    );
    assert!(db(&cut.exchanges[0]).response_truncated);
    assert_eq!(cut.errors, ["postgresql_response_cut"]);
}

#[test]
fn pgbench_prepared_statements_one_exchange_per_execute() {
    let conns = fixture("pg.txt");
    assert!(
        decode(&conns[2], 1024).exchanges.is_empty(),
        "pgbench's first connection only logs in"
    );
    let r = decode(&conns[3], 1024);
    assert_eq!(
        summary(&r),
        [
            row(
                "SELECT",
                "SELECT email FROM users WHERE id = $1;",
                Some(1),
                ""
            ),
            row(
                "UPDATE",
                "UPDATE users SET email = ? WHERE id = $1;",
                Some(1),
                ""
            ),
            row("SELECT", "SELECT ?/?;", None, "22012"),
        ]
    );
    assert_eq!(db(&r.exchanges[2]).error_message, "division by zero");
    // The Execute's message is the request, the result's message the response.
    for e in &r.exchanges {
        assert_eq!(e.response.map(|s| s.index), Some(e.request.index + 1));
    }
    assert!(
        r.errors.is_empty() && r.unpaired.is_empty() && r.desyncs.is_empty(),
        "{r:?}"
    );
}

#[test]
fn tls_ends_decoding_and_a_batch_after_an_error_is_skipped() {
    let ssl: Connection = vec![
        (Direction::ClientToServer, vec![0, 0, 0, 8, 4, 210, 22, 47]),
        (Direction::ServerToClient, b"S".to_vec()),
        (Direction::ClientToServer, b"\x16\x03\x01\x02\x00".to_vec()),
    ];
    let r = decode(&ssl, 1024);
    assert_eq!(r.steps, [Step::Continue, Step::Stop]);

    let mut batch = Vec::new();
    for (stmt, sql) in [(&b"a\0"[..], &b"SELECT 1/0\0"[..]), (b"b\0", b"SELECT 2\0")] {
        batch.extend(frame(b'P', &[stmt, sql, &[0, 0]].concat()));
        batch.extend(frame(b'B', &[b"\0", stmt, &[0, 0, 0, 0, 0, 0]].concat()));
        batch.extend(frame(b'E', b"\0\0\0\0\0"));
    }
    batch.extend(frame(b'S', b""));
    let mut reply = frame(b'1', b"");
    reply.extend(frame(b'2', b""));
    reply.extend(frame(b'E', b"SERROR\0C22012\0Mdivision by zero\0\0"));
    reply.extend(frame(b'Z', b"I"));
    let conn: Connection = vec![
        (Direction::ClientToServer, batch),
        (Direction::ServerToClient, reply),
    ];
    let r = decode(&conn, 1024);
    assert_eq!(summary(&r), [row("SELECT", "SELECT ?/?", None, "22012")]);
    assert_eq!(r.unpaired, ["postgresql_skipped_after_error"]);
}

#[test]
fn a_cut_request_is_one_exchange_up_to_ready_for_query() {
    let long = format!(
        "SELECT * FROM t WHERE note = '{}' AND id = 7\0",
        "x".repeat(3000)
    );
    let mut batch = frame(b'P', &[b"\0", long.as_bytes(), &[0, 0]].concat());
    batch.extend(frame(b'B', b"\0\0\0\0\0\0\0\0"));
    batch.extend(frame(b'E', b"\0\0\0\0\0"));
    batch.extend(frame(b'S', b""));
    let mut reply = frame(b'1', b"");
    reply.extend(frame(b'2', b""));
    reply.extend(frame(b'C', b"SELECT 0\0"));
    reply.extend(frame(b'Z', b"I"));
    let conn: Connection = vec![
        (Direction::ClientToServer, batch),
        (Direction::ServerToClient, reply),
    ];
    let r = decode(&conn, 1024);
    assert_eq!(
        summary(&r),
        [row("SELECT", "SELECT * FROM t WHERE note = ?", Some(0), "")]
    );
    assert!(db(&r.exchanges[0]).statement_truncated);
    assert_eq!(r.errors, ["postgresql_request_cut"]);
}

#[test]
fn detection_by_opening_or_by_whole_frontend_messages() {
    let key = FlowKey::default();
    let info = FlowInfo {
        probe_id: "p",
        flow_id: 1,
        key: &key,
        hint: ProtocolHint::Tcp,
    };
    let detect = |direction, payload: &[u8]| {
        Postgresql.detect(
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
    let conns = fixture("pg.txt");
    let c2s = Direction::ClientToServer;
    assert_eq!(detect(c2s, &conns[0][0].1), Detection::Claim, "SSLRequest");
    assert_eq!(detect(c2s, &conns[0][2].1), Detection::Claim, "startup");
    assert_eq!(
        detect(c2s, &conns[0][4].1),
        Detection::Claim,
        "a query, mid-way"
    );
    assert_eq!(
        detect(c2s, &conns[3][4].1),
        Detection::Claim,
        "Parse/Sync, mid-way"
    );
    assert_eq!(
        detect(Direction::ServerToClient, &conns[0][1].1),
        Detection::No
    );
    assert_eq!(detect(c2s, b"GET / HTTP/1.1\r\n\r\n"), Detection::No);
    assert_eq!(detect(c2s, b"*1\r\n$4\r\nPING\r\n"), Detection::No);
    assert_eq!(
        detect(c2s, b"Q\0\0\0\x09abc"),
        Detection::No,
        "a frame longer than the message"
    );
}

#[test]
fn garbage_and_cuts_anywhere_never_panic() {
    let conns = fixture("pg.txt");
    let mut rng = Rng(0x853c_49e6_748f_ea9b);
    for round in 0..3000 {
        let mut conn = conns[round % conns.len()].clone();
        for (_, bytes) in conn.iter_mut() {
            match rng.below(4) {
                0 if !bytes.is_empty() => {
                    for _ in 0..1 + rng.below(3) {
                        let i = rng.below(bytes.len());
                        bytes[i] = rng.next_u64() as u8;
                    }
                }
                1 => bytes.truncate(rng.below(bytes.len() + 1)),
                2 => bytes.extend((0..rng.below(12)).map(|_| rng.next_u64() as u8)),
                _ => {}
            }
        }
        let snaplen = 1 + rng.below(300);
        let r = decode(&conn, snaplen);
        let frames: usize = conn.iter().map(|(_, b)| b.len()).sum();
        assert!(r.exchanges.len() <= frames, "more exchanges than bytes");
    }
}

#[test]
fn an_error_whose_ready_for_query_is_beyond_the_capture_still_answers_its_query() {
    // PostgreSQL flushes an ErrorResponse by itself: its ReadyForQuery comes in the next packet,
    // and the probe keeps the start of a message's first packet only.
    let error = frame(
        b'E',
        b"SERROR\0VERROR\0C42P01\0Mrelation \"e2e_missing\" does not exist\0\0",
    );
    let mut response = error.clone();
    response.extend(frame(b'Z', b"I"));
    let conn: Connection = vec![
        (
            Direction::ClientToServer,
            frame(b'Q', b"SELECT * FROM e2e_missing\0"),
        ),
        (Direction::ServerToClient, response),
        (Direction::ClientToServer, frame(b'Q', b"SELECT 1\0")),
        (
            Direction::ServerToClient,
            [frame(b'C', b"SELECT 1\0"), frame(b'Z', b"I")].concat(),
        ),
    ];
    let r = decode(&conn, error.len());
    assert_eq!(
        summary(&r),
        [
            row("SELECT", "SELECT * FROM e2e_missing", None, "42P01"),
            row("SELECT", "SELECT ?", Some(1), ""),
        ]
    );
    assert!(!r.exchanges[0].incomplete && db(&r.exchanges[0]).response_truncated);
    assert_eq!(r.errors, ["postgresql_response_cut"]);
}

/// A pg frame: tag, length, body.
fn pg_frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// A result of 3000 rows in 8192-byte writes, as the server sends it, captured call by call
/// with gaps (each write's first and last 256 bytes: the socket point copies 16 snaplens of a
/// call, then its last; one here, to make gaps, as a message past the probe's 64 KiB has): its
/// command tag is read from the last write's end although the frames in between were not
/// captured. From the first 256
/// bytes of the message alone, it is cut and says so.
#[test]
fn a_multi_write_result_captured_call_by_call_keeps_its_command_tag() {
    let mut response = pg_frame(
        b'T',
        b"\x00\x01n\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00",
    );
    for i in 0..3000u32 {
        let v = i.to_string();
        let mut body = 1u16.to_be_bytes().to_vec();
        body.extend_from_slice(&(v.len() as u32).to_be_bytes());
        body.extend_from_slice(v.as_bytes());
        response.extend(pg_frame(b'D', &body));
    }
    response.extend(pg_frame(b'C', b"SELECT 3000\0"));
    response.extend(pg_frame(b'Z', b"I"));
    let query = pg_frame(b'Q', b"SELECT generate_series(1, 3000) AS n\0");
    let key = FlowKey::default();
    let info = FlowInfo {
        probe_id: "p",
        flow_id: 1,
        key: &key,
        hint: ProtocolHint::Tcp,
    };
    let stats = |index, bytes: usize| MessageStats {
        index,
        bytes: bytes as u64,
        ..MessageStats::default()
    };
    let run = |snaplen: usize, call_by_call: bool| {
        let mut segments = Vec::new();
        for start in (0..response.len()).step_by(8192) {
            let end = (start + 8192).min(response.len());
            let head = (end - start).min(snaplen);
            segments.push(clovisor_proto::capture::v1::Segment {
                offset: start as u64,
                payload: response[start..start + head].to_vec().into(),
            });
            let tail = (end - start - head).min(snaplen);
            if call_by_call && tail > 0 {
                segments.push(clovisor_proto::capture::v1::Segment {
                    offset: (end - tail) as u64,
                    payload: response[end - tail..end].to_vec().into(),
                });
            }
            if !call_by_call {
                break;
            }
        }
        let captured = crate::decode::Captured::stitch(&[], &segments);
        let later = captured.later();
        let mut flow = Postgresql.new_flow(&info);
        let mut out = Recorded::default();
        let q = Message {
            direction: Direction::ClientToServer,
            stats: stats(0, query.len()),
            payload: &query,
            partial: false,
            later: &[],
        };
        assert_eq!(flow.on_message(&q, &mut out), Step::Continue);
        let r = Message {
            direction: Direction::ServerToClient,
            stats: stats(1, response.len()),
            payload: captured.first(),
            partial: false,
            later: &later,
        };
        assert_eq!(flow.on_message(&r, &mut out), Step::Continue);
        flow.on_close(&mut out);
        out
    };
    let whole = run(256, true);
    assert_eq!(whole.desyncs, Vec::<&str>::new());
    assert_eq!(whole.errors, Vec::<&str>::new());
    assert_eq!(
        summary(&whole),
        [row(
            "SELECT",
            "SELECT generate_series(?, ?) AS n",
            Some(3000),
            ""
        )]
    );
    assert!(!db(&whole.exchanges[0]).response_truncated);
    let first = run(256, false);
    assert_eq!(first.exchanges.len(), 1);
    assert_eq!(db(&first.exchanges[0]).rows, None, "{:?}", first.exchanges);
    assert!(db(&first.exchanges[0]).response_truncated);
}
