//! Redis: real `redis-cli` traffic (`collector/testdata/db/redis.txt`, captured from
//! redis-server 7.0 on loopback, see `collector/testdata/db/README.md`), pipelining, RESP3,
//! cut and hostile input.

use super::resp::{self, Parsed};
use super::*;
use crate::decode::testing::{self, cut_message, fixture, Connection, Recorded, Rng};
use crate::decode::{Exchange, MessageStats, Step};
use clovisor_proto::capture::v1::FlowKey;
use clovisor_proto::session::v1::{Database, Protocol};

fn db(e: &Exchange) -> &Database {
    testing::database(e)
}

fn decode(messages: &Connection, snaplen: usize) -> Recorded {
    testing::decode_flow(&Redis, messages, snaplen)
}

fn info(hint: ProtocolHint, key: &FlowKey) -> FlowInfo<'_> {
    FlowInfo {
        probe_id: "p",
        flow_id: 1,
        key,
        hint,
    }
}

/// (command, key, statement, reply type, error code) of each exchange.
fn summary(r: &Recorded) -> Vec<(String, String, String, String, String)> {
    r.exchanges
        .iter()
        .map(|e| {
            let d = db(e);
            (
                d.operation.clone(),
                d.key.clone(),
                d.statement.clone(),
                d.reply_type.clone(),
                d.error_code.clone(),
            )
        })
        .collect()
}

fn row(
    op: &str,
    key: &str,
    statement: &str,
    reply: &str,
    error: &str,
) -> (String, String, String, String, String) {
    (
        op.into(),
        key.into(),
        statement.into(),
        reply.into(),
        error.into(),
    )
}

#[test]
fn redis_cli_commands_pair_with_their_replies_and_values_stay_behind() {
    let conns = fixture("redis.txt");
    assert_eq!(conns.len(), 7, "connections in the fixture");
    let all: Vec<_> = conns[..4].iter().map(|c| decode(c, 1024)).collect();
    let got: Vec<_> = all.iter().flat_map(summary).collect();
    assert_eq!(
        got,
        [
            row("SET", "user:42", "SET user:42 ?", "simple_string", ""),
            row("GET", "user:42", "GET user:42", "bulk_string", ""),
            row("HGETALL", "nokey", "HGETALL nokey", "array", ""),
            row("LPUSH", "user:42", "LPUSH user:42 ?", "error", "WRONGTYPE"),
        ]
    );
    let lpush = db(&all[3].exchanges[0]);
    assert_eq!(
        lpush.error_message,
        "Operation against a key holding the wrong kind of value"
    );
    for r in &all {
        assert!(
            r.errors.is_empty() && r.unpaired.is_empty() && r.desyncs.is_empty(),
            "{r:?}"
        );
        let e = &r.exchanges[0];
        assert_eq!(e.protocol, Protocol::Redis);
        assert!(!e.incomplete && e.response.is_some());
        assert_eq!(db(e).system, "redis");
    }
    let dump = format!("{all:?}");
    assert!(
        !dump.contains("secret-value"),
        "a value left the decoder: {dump}"
    );
}

#[test]
fn a_pipeline_yields_one_exchange_per_command_in_order() {
    let conns = fixture("redis.txt");
    let r = decode(&conns[4], 4096);
    assert_eq!(
        summary(&r)[..4],
        [
            row("SET", "a", "SET a ?", "simple_string", ""),
            row("INCR", "a", "INCR a", "integer", ""),
            row("GET", "a", "GET a", "bulk_string", ""),
            row("NOSUCHC", "", "NOSUCHC", "error", "ERR"),
        ]
    );
    // redis-cli --pipe ends with an ECHO of a random marker: its argument is not kept.
    assert_eq!(summary(&r)[4].2, "ECHO ?");
    let positions: Vec<u32> = r.exchanges.iter().map(|e| e.position).collect();
    assert_eq!(positions, [0, 1, 2, 3, 4]);
    let err = db(&r.exchanges[3]);
    assert_eq!(
        err.error_message, "unknown command 'NOSUCHC'",
        "the echoed arguments are cut off"
    );
}

#[test]
fn resp3_replies_are_typed() {
    let conns = fixture("redis.txt");
    let got: Vec<_> = conns[5..]
        .iter()
        .flat_map(|c| summary(&decode(c, 1024)))
        .collect();
    assert_eq!(
        got,
        [
            row("HELLO", "", "HELLO", "map", ""),
            row("HSET", "h", "HSET h ? ?", "integer", ""),
            row("HELLO", "", "HELLO", "map", ""),
            row("HGETALL", "h", "HGETALL h", "map", ""),
        ]
    );
}

#[test]
fn auth_arguments_never_leave() {
    let conn: Connection = vec![
        (
            Direction::ClientToServer,
            b"*3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n$7\r\nhunter2\r\n".to_vec(),
        ),
        (
            Direction::ServerToClient,
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n".to_vec(),
        ),
        (
            Direction::ClientToServer,
            b"*5\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n$7\r\nhunter2\r\n"
                .to_vec(),
        ),
    ];
    let r = decode(&conn, 1024);
    assert_eq!(r.exchanges.len(), 2);
    let d = db(&r.exchanges[0]);
    assert_eq!(
        (d.statement.as_str(), d.key.as_str(), d.error_code.as_str()),
        ("AUTH", "", "WRONGPASS")
    );
    assert!(
        r.exchanges[1].incomplete,
        "HELLO had no reply before the flow closed"
    );
    let dump = format!("{r:?}");
    assert!(
        !dump.contains("hunter2") && !dump.contains("alice"),
        "{dump}"
    );
}

#[test]
fn replies_spread_over_messages_pair_in_order() {
    let conn: Connection = vec![
        (
            Direction::ClientToServer,
            b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$3\r\nGET\r\n$1\r\nb\r\n".to_vec(),
        ),
        (Direction::ServerToClient, b"$1\r\n1\r\n".to_vec()),
        (
            Direction::ClientToServer,
            b"*2\r\n$4\r\nINCR\r\n$1\r\nc\r\n".to_vec(),
        ),
        // A RESP3 push between replies answers nothing.
        (
            Direction::ServerToClient,
            b"$-1\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\na\r\n:7\r\n".to_vec(),
        ),
        (Direction::ServerToClient, b":8\r\n".to_vec()),
    ];
    let r = decode(&conn, 1024);
    let got: Vec<_> = r
        .exchanges
        .iter()
        .map(|e| {
            (
                db(e).key.as_str(),
                db(e).reply_type.as_str(),
                e.request.index,
                e.position,
                e.response.map(|s| s.index),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("a", "bulk_string", 0, 0, Some(1)),
            ("b", "null", 0, 1, Some(3)),
            ("c", "integer", 2, 0, Some(3)),
        ]
    );
    assert_eq!(
        r.unpaired,
        ["response_without_request"],
        "the last reply answers nothing"
    );
}

#[test]
fn subscribing_ends_decoding() {
    let conn: Connection = vec![
        (
            Direction::ClientToServer,
            b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\n".to_vec(),
        ),
        (
            Direction::ServerToClient,
            b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n".to_vec(),
        ),
        (
            Direction::ServerToClient,
            b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n".to_vec(),
        ),
    ];
    let r = decode(&conn, 1024);
    assert_eq!(r.steps, [Step::Continue, Step::Stop]);
    assert_eq!(
        summary(&r),
        [row("SUBSCRIBE", "", "SUBSCRIBE ?", "array", "")]
    );
}

#[test]
fn cut_messages_keep_what_was_read_and_are_counted() {
    let value = "v".repeat(2000);
    let set = format!(
        "*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n{value}\r\n*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n",
        value.len()
    );
    let get_reply = format!("+OK\r\n${}\r\n{value}\r\n", value.len());
    let conn: Connection = vec![
        (Direction::ClientToServer, set.into_bytes()),
        (Direction::ServerToClient, get_reply.into_bytes()),
    ];
    let r = decode(&conn, 1024);
    // The GET beyond the capture is unknown: one exchange, for SET, cut.
    assert_eq!(
        summary(&r),
        [row("SET", "big", "SET big ?", "simple_string", "")]
    );
    let d = db(&r.exchanges[0]);
    assert!(d.statement_truncated && !d.response_truncated, "{d:?}");
    assert_eq!(r.errors, ["redis_request_cut", "redis_response_cut"]);
    assert_eq!(r.unpaired, Vec::<&str>::new());

    // A reply cut inside answers its command, and those after it, as far as read.
    let conn: Connection = vec![
        (
            Direction::ClientToServer,
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n".to_vec(),
        ),
        (
            Direction::ServerToClient,
            format!("-ERR {}\r\n+PONG\r\n", "e".repeat(100)).into_bytes(),
        ),
    ];
    let r = decode(&conn, 40);
    assert_eq!(
        summary(&r),
        [
            row("GET", "k", "GET k", "error", "ERR"),
            row("PING", "", "PING", "", "")
        ]
    );
    assert!(r
        .exchanges
        .iter()
        .all(|e| db(e).response_truncated && !e.incomplete));
}

#[test]
fn detection_is_by_content_and_the_hint_explains_a_mismatch() {
    let key = FlowKey::default();
    let m = |direction, payload: &'static [u8]| Message {
        direction,
        stats: MessageStats::default(),
        payload,
        partial: false,
        later: &[],
    };
    let c2s = Direction::ClientToServer;
    assert_eq!(
        Redis.detect(
            &info(ProtocolHint::Tcp, &key),
            &m(c2s, b"*1\r\n$4\r\nPING\r\n")
        ),
        Detection::Claim
    );
    assert_eq!(
        Redis.detect(
            &info(ProtocolHint::Tcp, &key),
            &m(Direction::ServerToClient, b"*1\r\n$4\r\nPING\r\n")
        ),
        Detection::No
    );
    assert_eq!(
        Redis.detect(
            &info(ProtocolHint::Tcp, &key),
            &m(c2s, b"GET / HTTP/1.1\r\n")
        ),
        Detection::No
    );
    assert_eq!(
        Redis.detect(&info(ProtocolHint::Tcp, &key), &m(c2s, b"PING\r\n")),
        Detection::No,
        "inline commands claim nothing"
    );
    assert_eq!(
        Redis.detect(&info(ProtocolHint::Redis, &key), &m(c2s, b"\x16\x03\x01")),
        Detection::HintMismatch {
            reason: "not_redis"
        }
    );
    // Once claimed, an inline command is decoded.
    assert!(
        matches!(resp::command(b"set k v\r\n", false), Parsed::Done(c, 9) if c.name == "SET" && c.key.as_deref() == Some("k"))
    );
}

#[test]
fn garbage_and_cuts_anywhere_never_panic() {
    let conns = fixture("redis.txt");
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for round in 0..3000 {
        let base = &conns[round % conns.len()];
        let mut conn = base.clone();
        for (_, bytes) in conn.iter_mut() {
            match rng.below(4) {
                0 if !bytes.is_empty() => {
                    let i = rng.below(bytes.len());
                    bytes[i] = rng.next_u64() as u8;
                }
                1 => bytes.truncate(rng.below(bytes.len() + 1)),
                2 => bytes.extend((0..rng.below(16)).map(|_| {
                    *b"*$:+-\r\n0123456789%>|_"
                        .get(rng.below(22))
                        .unwrap_or(&b'x')
                })),
                _ => {}
            }
        }
        let snaplen = 1 + rng.below(200);
        let r = decode(&conn, snaplen);
        let commands: usize = conn
            .iter()
            .filter(|(d, _)| *d == Direction::ClientToServer)
            .map(|(_, b)| b.len())
            .sum();
        assert!(
            r.exchanges.len() <= commands,
            "more exchanges than command bytes"
        );
    }
    // Pure noise too.
    for _ in 0..2000 {
        let len = rng.below(64);
        let noise: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let mut cmd = b"*2\r\n$3\r\nGET\r\n".to_vec();
        cmd.extend(&noise);
        let conn: Connection = vec![
            (Direction::ClientToServer, cmd),
            (Direction::ServerToClient, noise),
        ];
        let _ = decode(&conn, 1 + rng.below(80));
        let _ = cut_message(0, Direction::ClientToServer, &conn[0].1, 4);
    }
}

#[test]
fn replies_beyond_a_capture_ending_on_a_boundary_answer_the_waiting_commands() {
    let snaplen = 7; // the first reply only
                     // The commands whole, the replies cut on a boundary.
    let mut flow = RedisFlow::default();
    let mut out = Recorded::default();
    let cmds = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$3\r\nGET\r\n$1\r\nb\r\n";
    let replies = b"$1\r\n1\r\n$1\r\n2\r\n";
    flow.on_message(
        &cut_message(0, Direction::ClientToServer, cmds, 1024),
        &mut out,
    );
    flow.on_message(
        &cut_message(1, Direction::ServerToClient, replies, snaplen),
        &mut out,
    );
    flow.on_message(
        &cut_message(2, Direction::ClientToServer, b"*1\r\n$4\r\nPING\r\n", 1024),
        &mut out,
    );
    flow.on_message(
        &cut_message(3, Direction::ServerToClient, b"+PONG\r\n", 1024),
        &mut out,
    );
    let got: Vec<_> = out
        .exchanges
        .iter()
        .map(|e| {
            (
                db(e).statement.as_str(),
                db(e).reply_type.as_str(),
                db(e).response_truncated,
                e.response.map(|s| s.index),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("GET a", "bulk_string", false, Some(1)),
            ("GET b", "", true, Some(1)),
            ("PING", "simple_string", false, Some(3)),
        ]
    );
    assert_eq!(out.errors, ["redis_response_cut"]);
}
