use prost::Message as _;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use clovisor_proto::common::v1::{PointKind, Side};
use clovisor_proto::session::v1::Session;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::testing::{SessionBuilder, FIXTURE_START_NANOS};

/// One point's view: `kind` at `interface` on `side`, of the request from client port `port`
/// with first sequence number `seq`, request at `start` ns after the fixture start, 1 ms long.
#[derive(Clone)]
struct View {
    id: String,
    kind: PointKind,
    interface: &'static str,
    side: Side,
    port: u32,
    seq: u32,
    start: u64,
    target: String,
    /// A socket view that read its socket's sequence number.
    socket_seq: bool,
    /// Client address (default 10.0.0.1) and, for sockets, the namespace inode.
    client_ip: Option<[u8; 4]>,
    netns_inode: u64,
}

impl View {
    fn new(id: &str, kind: PointKind, interface: &'static str, side: Side) -> Self {
        Self {
            id: id.to_owned(),
            kind,
            interface,
            side,
            port: 40000,
            seq: 1000,
            start: 0,
            target: "/".to_owned(),
            socket_seq: false,
            client_ip: None,
            netns_inode: 0,
        }
    }

    /// A socket view that read the sequence number `seq` from its socket.
    fn keyed(mut self, seq: u32) -> Self {
        self.seq = seq;
        self.socket_seq = true;
        self
    }

    /// A loopback connection inside the namespace with inode `netns`.
    fn loopback(mut self, netns: u64) -> Self {
        self.client_ip = Some([127, 0, 0, 1]);
        self.netns_inode = netns;
        self
    }

    fn port(mut self, port: u32) -> Self {
        self.port = port;
        self
    }

    fn seq(mut self, seq: u32) -> Self {
        self.seq = seq;
        self
    }

    fn at(mut self, start: u64) -> Self {
        self.start = start;
        self
    }

    fn target(mut self, target: &str) -> Self {
        self.target = target.to_owned();
        self
    }

    fn build(&self) -> Session {
        let v = self.clone();
        SessionBuilder::new(&v.id)
            .target(&v.target)
            .with(move |s| {
                let start = FIXTURE_START_NANOS + v.start;
                let end = start + 1_000_000;
                if let Some(c) = s.client.as_mut() {
                    c.port = v.port;
                    if let Some(ip) = v.client_ip {
                        c.ip = ip.to_vec().into();
                    }
                }
                s.start_unix_nanos = start;
                s.end_unix_nanos = end;
                for o in &mut s.observations {
                    o.kind = v.kind as i32;
                    o.interface = v.interface.to_owned();
                    o.side = v.side as i32;
                    o.request_tcp_seq = if v.kind == PointKind::Socket && !v.socket_seq {
                        0
                    } else {
                        v.seq
                    };
                    o.netns_inode = v.netns_inode;
                    o.request_start_unix_nanos = start;
                    o.request_end_unix_nanos = start + 100_000;
                    o.response_start_unix_nanos = end - 100_000;
                    o.response_end_unix_nanos = end;
                }
            })
            .build()
    }
}

fn client_veth(id: &str) -> View {
    View::new(id, PointKind::Pod, "veth-client", Side::Client)
}

fn server_veth(id: &str) -> View {
    View::new(id, PointKind::Pod, "veth-server", Side::Server)
}

fn uplink(id: &str) -> View {
    View::new(id, PointKind::Node, "uplink0", Side::Unspecified)
}

fn socket(id: &str, side: Side) -> View {
    View::new(id, PointKind::Socket, "", side)
}

fn joiner(window_ms: u64) -> Joiner {
    Joiner::new(JoinConfig {
        window: Duration::from_millis(window_ms),
        retention: Duration::from_secs(30),
        max_entries: 1000,
        ..JoinConfig::default()
    })
}

/// A join of `window` and `retention` holding at most `max_entries`, with a REST store of
/// `store` exchanges.
fn stored_joiner(
    window: Duration,
    retention: Duration,
    max_entries: usize,
    store: usize,
) -> Joiner {
    Joiner::with_store(
        JoinConfig {
            window,
            retention,
            max_entries,
            ..JoinConfig::default()
        },
        store,
    )
}

fn points(rec: &CorrelatedSession) -> Vec<(&str, &str)> {
    rec.session
        .observations
        .iter()
        .map(|o| {
            (
                o.kind().short_name(),
                o.side().short_name().unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn both_veths_and_the_uplink_become_one_exchange() {
    let mut j = joiner(1000);
    let now = Instant::now();
    let a = j.offer(client_veth("c").build(), now);
    let b = j.offer(uplink("n").at(20_000).build(), now);
    let c = j.offer(server_veth("s").at(50_000).build(), now);
    assert_eq!(
        [a.outcome, b.outcome, c.outcome],
        [Outcome::Opened, Outcome::Joined, Outcome::Joined]
    );
    assert_eq!(c.record.id, "c", "the exchange keeps its first id");
    assert_eq!(c.record.constituents, ["c", "n", "s"]);
    assert_eq!(
        points(&c.record),
        [("pod", "client"), ("node", ""), ("pod", "server")],
        "observations in path order"
    );
    assert_eq!(
        c.record.span_id, a.record.span_id,
        "one exchange, one span id"
    );
    assert!(
        j.expire(now).is_empty(),
        "nothing is ready inside the window"
    );
    let ready = j.expire(now + Duration::from_millis(1001));
    assert_eq!(ready.len(), 1, "exactly one exchange becomes ready");
    assert_eq!(ready[0].session.observations.len(), 3);
}

#[test]
fn keep_alive_and_interleaved_clients_never_cross_merge() {
    let mut j = joiner(1000);
    let now = Instant::now();
    // Two clients, three requests each on one keep-alive connection, all with the same path;
    // the server veth's views arrive interleaved and in reverse.
    let mut views = Vec::new();
    for client in [40000u32, 40001] {
        for n in 0..3u32 {
            let seq = 1000 + n * 100; // both clients happen to use the same sequence numbers
            let at = u64::from(n) * 5_000_000;
            views.push(
                client_veth(&format!("c{client}-{n}"))
                    .port(client)
                    .seq(seq)
                    .at(at),
            );
            views.push(
                server_veth(&format!("s{client}-{n}"))
                    .port(client)
                    .seq(seq)
                    .at(at + 30_000),
            );
        }
    }
    let (clients, servers): (Vec<_>, Vec<_>) =
        views.into_iter().partition(|v| v.side == Side::Client);
    for v in clients.iter().chain(servers.iter().rev()) {
        j.offer(v.build(), now);
    }
    let ready = j.drain(now);
    assert_eq!(ready.len(), 6, "six exchanges, each once");
    for rec in ready {
        let [c, s] = rec.constituents.as_slice() else {
            panic!(
                "expected client and server views, saw {:?}",
                rec.constituents
            );
        };
        assert_eq!(
            c.replacen('c', "s", 1),
            *s,
            "a client view joined with another exchange's server view"
        );
    }
}

#[test]
fn ipv4_mapped_and_plain_ipv4_are_one_client_and_ipv6_joins() {
    let mut j = joiner(1000);
    let now = Instant::now();
    let mapped = client_veth("c").build();
    let mut mapped = mapped;
    if let Some(c) = mapped.client.as_mut() {
        let mut ip = vec![0u8; 10];
        ip.extend([0xff, 0xff, 10, 0, 0, 1]);
        c.ip = ip.into();
    }
    j.offer(mapped, now);
    assert_eq!(
        j.offer(server_veth("s").build(), now).outcome,
        Outcome::Joined
    );

    let v6 = |v: View| {
        let mut s = v.build();
        let b = SessionBuilder::new("x").ipv6().build();
        s.client = b.client;
        s.server = b.server;
        s
    };
    assert_eq!(
        j.offer(v6(client_veth("c6").seq(7)), now).outcome,
        Outcome::Opened
    );
    let r = j.offer(v6(server_veth("s6").seq(7)), now);
    assert_eq!(r.outcome, Outcome::Joined, "IPv6 views join too");
    assert_eq!(r.record.constituents, ["c6", "s6"]);
}

#[test]
fn conflicts_and_repeated_points_stay_apart() {
    let mut j = joiner(1000);
    let now = Instant::now();
    j.offer(client_veth("a").target("/a").build(), now);
    let r = j.offer(server_veth("b").target("/b").build(), now);
    assert_eq!(
        r.outcome,
        Outcome::Conflict,
        "same key, different request: never merged"
    );
    // The same point twice with one key: a reused port whose new sequence number collided.
    let r = j.offer(client_veth("a2").target("/a").build(), now);
    assert_eq!(r.outcome, Outcome::Conflict);
    assert_eq!(j.drain(now).len(), 3);
}

#[test]
fn socket_views_join_only_when_unambiguous() {
    let mut j = joiner(1000);
    let now = Instant::now();
    // Socket first (it sees the request before the veth does), then the veth.
    assert_eq!(
        j.offer(socket("sock-c", Side::Client).build(), now).outcome,
        Outcome::Opened
    );
    let r = j.offer(client_veth("veth-c").at(10_000).build(), now);
    assert_eq!(
        r.outcome,
        Outcome::Joined,
        "veth joins the socket-only exchange"
    );
    let r = j.offer(server_veth("veth-s").at(30_000).build(), now);
    assert_eq!(r.outcome, Outcome::Joined);
    let r = j.offer(socket("sock-s", Side::Server).at(40_000).build(), now);
    assert_eq!(
        r.outcome,
        Outcome::Joined,
        "server socket joins by client and time"
    );
    assert_eq!(
        points(&r.record),
        [
            ("socket", "client"),
            ("pod", "client"),
            ("pod", "server"),
            ("socket", "server")
        ]
    );

    // A later exchange of the same client, not overlapping: a socket view joins only it.
    j.offer(client_veth("veth-c2").seq(2000).at(5_000_000).build(), now);
    let r = j.offer(socket("sock-c2", Side::Client).at(4_990_000).build(), now);
    assert_eq!(r.outcome, Outcome::Joined);
    assert_eq!(r.record.constituents, ["veth-c2", "sock-c2"]);

    // Two exchanges of one client overlapping in time (two connections from one port cannot
    // exist, but a socket view without a port match must still not guess).
    let mut j = joiner(1000);
    j.offer(client_veth("x").seq(1).build(), now);
    j.offer(client_veth("y").seq(2).at(500_000).build(), now);
    let r = j.offer(socket("sock", Side::Client).at(600_000).build(), now);
    assert_eq!(r.outcome, Outcome::Ambiguous, "two candidates: no guess");
    assert_eq!(r.record.constituents, ["sock"]);
}

#[test]
fn socket_views_with_sequence_numbers_join_by_key_where_time_cannot_tell() {
    let mut j = joiner(1000);
    let now = Instant::now();
    // Two requests of one client port overlapping in time (pipelined): by time alone a socket
    // view could be either; its sequence number says which.
    j.offer(client_veth("veth-1").seq(1000).build(), now);
    j.offer(
        client_veth("veth-2")
            .seq(1100)
            .at(200_000)
            .target("/two")
            .build(),
        now,
    );
    let r = j.offer(
        socket("sock-2", Side::Client)
            .keyed(1100)
            .at(190_000)
            .target("/two")
            .build(),
        now,
    );
    assert_eq!(r.outcome, Outcome::Joined, "joined by key, not refused");
    assert_eq!(r.record.constituents, ["veth-2", "sock-2"]);
    let r = j.offer(
        socket("sock-s1", Side::Server)
            .keyed(1000)
            .at(50_000)
            .build(),
        now,
    );
    assert_eq!(r.outcome, Outcome::Joined);
    assert_eq!(r.record.constituents, ["veth-1", "sock-s1"]);

    // All four points of one exchange, socket first: one session in path order.
    let mut j = joiner(1000);
    let views = [
        server_veth("veth-s").seq(7).at(30_000),
        socket("sock-c", Side::Client).keyed(7),
        socket("sock-s", Side::Server).keyed(7).at(40_000),
        client_veth("veth-c").seq(7).at(10_000),
    ];
    let mut last = None;
    for v in views {
        last = Some(j.offer(v.build(), now));
    }
    let r = last.expect("offered");
    assert_eq!(r.outcome, Outcome::Joined);
    assert_eq!(
        points(&r.record),
        [
            ("socket", "client"),
            ("pod", "client"),
            ("pod", "server"),
            ("socket", "server")
        ]
    );
    // A socket view with another sequence number is another exchange, even at the same time.
    let r = j.offer(socket("sock-x", Side::Client).keyed(8).build(), now);
    assert_eq!(r.outcome, Outcome::Opened);
}

#[test]
fn loopback_connections_join_only_within_one_namespace() {
    let mut j = joiner(1000);
    let now = Instant::now();
    // An app and its local tunnel (or sidecar) in one pod: both ends of one loopback connection.
    j.offer(
        socket("app", Side::Client)
            .keyed(5)
            .loopback(4026531001)
            .build(),
        now,
    );
    let r = j.offer(
        socket("tunnel", Side::Server)
            .keyed(5)
            .loopback(4026531001)
            .build(),
        now,
    );
    assert_eq!(r.outcome, Outcome::Joined);
    // Another pod's loopback connection with the same port and sequence number: apart.
    let r = j.offer(
        socket("other-pod", Side::Server)
            .keyed(5)
            .loopback(4026531002)
            .build(),
        now,
    );
    assert_eq!(r.outcome, Outcome::Opened, "another namespace's loopback");
    // A loopback view without its namespace joins nothing.
    let r = j.offer(
        socket("unscoped", Side::Client)
            .keyed(5)
            .loopback(0)
            .build(),
        now,
    );
    assert_eq!(r.outcome, Outcome::Opened);
    assert_eq!(r.record.constituents, ["unscoped"]);
}

#[test]
fn late_views_are_appended_without_a_second_span() {
    let mut j = joiner(100);
    let t0 = Instant::now();
    j.offer(client_veth("c").build(), t0);
    let ready = j.expire(t0 + Duration::from_millis(150));
    assert_eq!(ready.len(), 1);
    let r = j.offer(server_veth("s").build(), t0 + Duration::from_millis(200));
    assert_eq!(r.outcome, Outcome::Late);
    assert_eq!(
        r.record.session.observations.len(),
        2,
        "stored version gains the view"
    );
    assert!(r.ready.is_empty(), "no second export");
    assert!(j.drain(t0 + Duration::from_millis(300)).is_empty());
    // After retention the exchange is forgotten: a very late view opens its own.
    let r = j.offer(uplink("n").build(), t0 + Duration::from_secs(31));
    assert_eq!(r.outcome, Outcome::Opened);
}

#[test]
fn an_offer_makes_at_most_a_chunk_of_due_exchanges_ready_oldest_first_and_none_is_lost() {
    let mut j = joiner(100);
    let t0 = Instant::now();
    let n = Joiner::READY_PER_OFFER * 3 + 5;
    for i in 0..n {
        let port = 40_000 + u32::try_from(i).unwrap_or_default();
        j.offer(client_veth(&format!("e{i}")).port(port).build(), t0);
    }
    let due = t0 + Duration::from_millis(150);
    let first = j.offer(client_veth("new-1").port(1).build(), due);
    let second = j.offer(client_veth("new-2").port(2).build(), due);
    assert_eq!(first.ready.len(), Joiner::READY_PER_OFFER);
    assert_eq!(second.ready.len(), Joiner::READY_PER_OFFER);
    let rest = j.expire(due);
    assert_eq!(
        rest.len(),
        n - 2 * Joiner::READY_PER_OFFER,
        "a tick takes all due"
    );
    let ids: Vec<String> = [first.ready, second.ready, rest]
        .concat()
        .iter()
        .map(|r| r.id.clone())
        .collect();
    let expected: Vec<String> = (0..n).map(|i| format!("e{i}")).collect();
    assert_eq!(ids, expected, "in deadline order, each once");
    assert_eq!(j.open_len(), 2, "only the two newcomers are open");
}

#[test]
fn bounded_state_evicts_oldest_and_says_so() {
    let mut j = Joiner::new(JoinConfig {
        window: Duration::from_secs(10),
        retention: Duration::from_secs(30),
        max_entries: 2,
        ..JoinConfig::default()
    });
    let now = Instant::now();
    j.offer(client_veth("a").seq(1).build(), now);
    j.offer(client_veth("b").seq(2).build(), now);
    let r = j.offer(client_veth("c").seq(3).build(), now);
    assert_eq!(r.evictions, [Eviction::OpenEarly]);
    assert_eq!(
        r.ready.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["a"],
        "the oldest open exchange is exported early, not lost"
    );
    assert_eq!(j.len(), 2);
    // b's window closes; it is retained. The next newcomer pushes it out, not the open c.
    let later = now + Duration::from_secs(10);
    let ready = j.expire(later);
    assert_eq!(ready.len(), 2, "b and c become ready");
    let r = j.offer(client_veth("d").seq(4).build(), later);
    assert_eq!(
        r.evictions,
        [Eviction::RetainedEarly],
        "a retained exchange goes before an open one"
    );
    assert!(r.ready.is_empty());
    assert_eq!(j.len(), 2);
}

#[test]
fn a_large_full_join_forgets_its_oldest_retained_exchanges_a_group_at_a_time() {
    // 8192 entries: a group of 4 (a 2048th), so the order and the counts can be told apart.
    let max = 8192;
    let mut j = Joiner::new(JoinConfig {
        window: Duration::from_secs(1),
        retention: Duration::from_secs(30),
        max_entries: max,
        ..JoinConfig::default()
    });
    let now = Instant::now();
    for i in 0..max {
        j.offer(client_veth(&format!("e{i}")).seq(i as u32 + 1).build(), now);
    }
    let later = now + Duration::from_secs(2);
    assert_eq!(j.expire(later).len(), max, "all are ready, and retained");
    assert_eq!(j.len(), max);

    let r = j.offer(client_veth("new0").seq(1 << 20).build(), later);
    assert_eq!(r.outcome, Outcome::Opened);
    assert_eq!(
        r.evictions,
        [Eviction::RetainedEarly; 4],
        "one group, each counted"
    );
    assert_eq!(j.len(), max - 3, "the group made room for three more");
    for k in 1..=3 {
        let r = j.offer(
            client_veth(&format!("new{k}")).seq((1 << 20) + k).build(),
            later,
        );
        assert!(
            r.evictions.is_empty(),
            "room was left: nothing more is forgotten"
        );
    }
    assert_eq!(j.len(), max);
    // The four oldest are forgotten, the fifth is still held: its id is a duplicate, theirs
    // open new exchanges.
    let fifth = j.offer(client_veth("e4").seq(5).build(), later);
    assert_eq!(fifth.outcome, Outcome::Duplicate, "e4 is still retained");
    for i in 0..4 {
        let again = j.offer(client_veth(&format!("e{i}")).seq(i + 1).build(), later);
        assert_eq!(again.outcome, Outcome::Opened, "e{i} was forgotten");
    }

    // Retention ending forgets every due exchange, in groups as well.
    let gone = later + Duration::from_secs(60);
    j.expire(gone);
    j.expire(gone + Duration::from_secs(60));
    assert_eq!(j.len(), 0, "nothing is left held once retention ended");
}

#[test]
fn duplicates_and_zero_window() {
    let mut j = joiner(0);
    let now = Instant::now();
    let r = j.offer(client_veth("c").build(), now);
    assert_eq!(r.ready.len(), 1, "a zero window exports at once");
    assert_eq!(
        j.offer(client_veth("c").build(), now).outcome,
        Outcome::Duplicate
    );
    assert_eq!(
        j.offer(server_veth("s").build(), now).outcome,
        Outcome::Late,
        "with no window every further view is late"
    );
}

/// Property: over random traffic with colliding ports and sequence numbers, views arriving in
/// random order, every exchange the join makes holds views of one wire key only, and every
/// view is in exactly one exchange.
#[test]
fn never_merges_views_with_different_keys() {
    for seed in 0..200u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut j = joiner(1000);
        let now = Instant::now();
        let mut truth: HashMap<String, (u32, u32)> = HashMap::new();
        let mut views = Vec::new();
        for n in 0..rng.random_range(1..30) {
            let port = 40000 + rng.random_range(0..3u32);
            let seq = rng.random_range(0..4u32);
            let target = format!("/{}", rng.random_range(0..2u32));
            let at = rng.random_range(0..3u64) * 1_000_000;
            let mk = [client_veth as fn(&str) -> View, server_veth, uplink];
            for (p, make) in mk.iter().enumerate() {
                if rng.random_bool(0.7) {
                    let id = format!("x{n}-{p}");
                    truth.insert(id.clone(), (port, seq));
                    views.push(make(&id).port(port).seq(seq).target(&target).at(at));
                }
            }
        }
        for i in (1..views.len()).rev() {
            views.swap(i, rng.random_range(0..=i));
        }
        for v in &views {
            j.offer(v.build(), now);
        }
        let ready = j.drain(now);
        let mut seen = 0;
        for rec in &ready {
            let keys: Vec<_> = rec.constituents.iter().map(|id| truth[id]).collect();
            assert!(
                keys.windows(2).all(|w| w[0] == w[1]),
                "seed {seed}: one exchange holds views of different keys: {:?} {keys:?}",
                rec.constituents
            );
            let targets: Vec<_> = rec.session.observations.iter().map(|o| o.side).collect();
            let mut dedup = targets.clone();
            dedup.sort();
            dedup.dedup();
            assert_eq!(
                dedup.len(),
                targets.len(),
                "seed {seed}: a point appears twice in one exchange"
            );
            seen += rec.constituents.len();
        }
        assert_eq!(
            seen,
            views.len(),
            "seed {seed}: every view lands exactly once"
        );
    }
}

/// A ready exchange the store no longer lists is kept packed (encoded) by the join; a late
/// view, a sequence-less view and a re-sent one still find it, and the late one brings the whole
/// exchange back to the store.
#[test]
fn packed_exchanges_still_join_and_come_back_whole() {
    let mut j = stored_joiner(Duration::from_millis(100), Duration::from_secs(30), 1000, 1);
    let t0 = Instant::now();
    let first = j.offer(client_veth("c").build(), t0).record;
    j.offer(server_veth("s").build(), t0);
    // Another exchange takes the store's only place; the first's window closes.
    j.offer(client_veth("other").port(41000).build(), t0);
    assert_eq!(j.expire(t0 + Duration::from_millis(150)).len(), 2);
    assert!(j.store_get("c").is_none(), "the store let go of the first");
    assert!(
        matches!(
            j.entries
                .values()
                .find(|e| e.rec.has_id("c"))
                .map(|e| &e.rec),
            Some(Held::Packed(_))
        ),
        "the join keeps it packed"
    );
    assert_eq!(
        j.offer(client_veth("c").build(), t0).outcome,
        Outcome::Duplicate,
        "a re-sent view is known by its id"
    );
    let late = t0 + Duration::from_millis(200);
    let r = j.offer(uplink("n").at(20_000).build(), late);
    assert_eq!(r.outcome, Outcome::Late);
    assert_eq!(
        points(&r.record),
        [("pod", "client"), ("node", ""), ("pod", "server")]
    );
    assert_eq!(
        (r.record.span_id, r.record.trace_id, r.record.id.as_str()),
        (first.span_id, first.trace_id, "c"),
        "the same span, unpacked"
    );
    assert_eq!(r.record.constituents, ["c", "s", "n"]);
    let stored = j
        .store_get("s")
        .expect("back in the store, found by any of its ids");
    assert_eq!(stored.session.observations.len(), 3);
    // Pushed out of the store again, packed again; a socket view without sequence number
    // joins it by time (it is the client's only exchange overlapping it).
    j.offer(client_veth("other2").port(42000).build(), late);
    let r = j.offer(socket("sock", Side::Client).at(10_000).build(), late);
    assert_eq!(r.outcome, Outcome::Late);
    assert_eq!(r.record.session.observations.len(), 4);
}

/// An exchange that arrived as one session (the collector merged its views) is packed from the
/// encoding it arrived in: unpacked, it is the session as it was decoded, with the collector's
/// merged ids among its constituents only; a late view still joins it, and from then on the
/// merged exchange (no longer the arrival) is what is packed.
#[test]
fn exchanges_packed_from_their_arrival_encoding_come_back_as_decoded() {
    let mut j = joiner(100);
    let t0 = Instant::now();
    let mut merged = client_veth("c").build();
    let server = server_veth("s").build();
    merge::merge(&mut merged, server);
    merged.merged_ids = vec!["s".to_owned()];
    let encoded = bytes::Bytes::from(merged.encode_to_vec());
    let opened = j.offer_encoded(merged.clone(), Some(encoded), t0);
    assert_eq!(opened.outcome, Outcome::Opened);
    assert_eq!(j.expire(t0 + Duration::from_millis(150)).len(), 1);
    let packed = j
        .entries
        .values()
        .find_map(|e| match &e.rec {
            Held::Packed(p) => Some(p),
            Held::Live(_) => None,
        })
        .expect("packed once ready");
    assert_eq!(
        Session::decode(packed.session()).ok(),
        Some(merged.clone()),
        "packed from the bytes it arrived in"
    );
    let back = j.get("s").expect("found by a merged id");
    let mut expected = merged.clone();
    expected.merged_ids.clear();
    assert_eq!(
        back.session, expected,
        "unpacked as decoded, merged ids moved"
    );
    assert_eq!(back.constituents, ["c", "s"]);
    assert_eq!(back.span_id, opened.record.span_id);

    let late = j.offer(
        uplink("n").at(20_000).build(),
        t0 + Duration::from_millis(200),
    );
    assert_eq!(late.outcome, Outcome::Late);
    assert_eq!(late.record.constituents, ["c", "s", "n"]);
    // Pushed out of the store (capacity 0 here: the join alone) it is packed again, now by
    // encoding the merged exchange.
    let again = j.get("n").expect("held");
    assert_eq!(again.session.observations.len(), 3);
}

/// A view of a DNS exchange over UDP (no sequence number at any point): query `id` for
/// `example.org` of type `qtype`.
fn dns_view(v: View, qtype: u32, id: u32) -> Session {
    let mut s = v.seq(0).build();
    let d = SessionBuilder::new("dns")
        .dns("example.org", qtype, 0, &[])
        .build();
    s.protocol = d.protocol;
    s.http = None;
    s.dns = d.dns.map(|mut d| {
        d.id = id;
        d
    });
    s
}

#[test]
fn udp_dns_views_join_by_query_not_by_a_shared_zero_sequence() {
    let mut j = joiner(1000);
    let now = Instant::now();
    // A client sends its A and AAAA queries back to back from one port; both veths see both.
    let outcomes: Vec<Outcome> = [
        dns_view(client_veth("c-a"), 1, 7),
        dns_view(client_veth("c-aaaa").at(10_000), 28, 8),
        dns_view(server_veth("s-aaaa").at(20_000), 28, 8),
        dns_view(server_veth("s-a").at(30_000), 1, 7),
    ]
    .into_iter()
    .map(|s| j.offer(s, now).outcome)
    .collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Opened,
            Outcome::Opened,
            Outcome::Joined,
            Outcome::Joined
        ]
    );
    let mut ready = j.expire(now + Duration::from_millis(1001));
    ready.sort_by_key(|r| r.session.dns.as_ref().map(|d| d.question_type));
    let got: Vec<_> = ready
        .iter()
        .map(|r| {
            (
                r.constituents.clone(),
                r.session.dns.as_ref().map(|d| d.question_type),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (vec!["c-a".to_owned(), "s-a".to_owned()], Some(1)),
            (vec!["c-aaaa".to_owned(), "s-aaaa".to_owned()], Some(28)),
        ],
        "each query joins its own views"
    );
}

#[test]
fn sequence_less_views_are_compared_with_their_time_neighbours_not_a_client_history() {
    // One keep-alive client's socket views without sequence numbers, 2 ms apart, 1 ms long:
    // each overlaps none of the others. A scan of the client's history would compare the
    // n-th with n-1 earlier ones (n²/2 = 8·10⁶ comparisons for 4096 views).
    const VIEWS: u64 = 4096;
    let mut j = Joiner::new(JoinConfig {
        window: Duration::from_secs(60),
        retention: Duration::from_secs(30),
        max_entries: 2 * VIEWS as usize,
        ..JoinConfig::default()
    });
    let now = Instant::now();
    for i in 0..VIEWS {
        let r = j.offer(
            socket(&format!("s{i}"), Side::Client)
                .at(i * 2_000_000)
                .build(),
            now,
        );
        assert_eq!(
            r.outcome,
            Outcome::Opened,
            "view {i} is an exchange of its own"
        );
    }
    assert!(
        j.time_candidates() <= 2 * VIEWS,
        "comparisons must grow with the views, not their square: {} for {VIEWS} views",
        j.time_candidates()
    );
    // The index still finds the one exchange a view belongs to.
    let r = j.offer(
        client_veth("veth").at(100 * 2_000_000 + 10_000).build(),
        now,
    );
    assert_eq!(
        r.outcome,
        Outcome::Joined,
        "the veth's view joins the socket's at its time"
    );
    assert_eq!(r.record.constituents, ["s100", "veth"]);
}

/// Offers `n` exchanges of one client at one instant (a flood of forged views), then a view
/// overlapping them all and matching none; what became of that view, and how many candidates
/// it was compared with.
fn flood_then_a_stranger(j: &mut Joiner, n: u64) -> (Outcome, u64) {
    let now = Instant::now();
    for i in 0..n {
        j.offer(
            socket(&format!("f{i}"), Side::Client)
                .target(&format!("/{i}"))
                .build(),
            now,
        );
    }
    let before = j.time_candidates();
    let r = j.offer(socket("probe", Side::Server).target("/unique").build(), now);
    (r.outcome, j.time_candidates() - before)
}

#[test]
fn a_view_overlapping_too_many_exchanges_is_ambiguous_after_a_bounded_scan() {
    let mut j = joiner(60_000);
    let (outcome, compared) = flood_then_a_stranger(&mut j, MAX_TIME_CANDIDATES as u64 * 4);
    assert_eq!(
        outcome,
        Outcome::Ambiguous,
        "too many candidates: kept on its own, counted"
    );
    assert!(
        compared <= MAX_TIME_CANDIDATES as u64,
        "at most {MAX_TIME_CANDIDATES} comparisons for one view, saw {compared}"
    );
}

/// A session the collector's local join made of two views (the server's veth and socket):
/// joins the client's veth from another probe by its wire key, and a view of it re-sent on its
/// own (a collector restarted before the merge) is a duplicate, found by its merged id.
#[test]
fn a_session_the_collector_merged_joins_by_key_and_knows_every_merged_id() {
    let mut j = joiner(1000);
    let now = Instant::now();
    let mut merged = server_veth("p/1/0").at(50_000).build();
    let socket_view = socket("p/9/0", Side::Server).keyed(1000).at(60_000).build();
    merge::merge(&mut merged, socket_view.clone());
    merged.merged_ids = vec!["p/9/0".to_owned()];

    let a = j.offer(merged, now);
    assert_eq!(a.outcome, Outcome::Opened);
    assert_eq!(a.record.constituents, ["p/1/0", "p/9/0"]);
    let b = j.offer(client_veth("q/3/0").build(), now);
    assert_eq!(
        b.outcome,
        Outcome::Joined,
        "joined by the merged session's key"
    );
    assert_eq!(
        points(&b.record),
        [("pod", "client"), ("pod", "server"), ("socket", "server")]
    );
    let again = j.offer(socket_view, now);
    assert_eq!(again.outcome, Outcome::Duplicate);
    assert_eq!(
        j.get("p/9/0").map(|r| r.id.clone()).as_deref(),
        Some("p/1/0"),
        "the merged view's id finds the exchange"
    );
}

/// A merged session joining an open exchange brings its merged ids along.
#[test]
fn a_merged_session_joining_later_adds_all_its_ids() {
    let mut j = joiner(1000);
    let now = Instant::now();
    j.offer(client_veth("q/3/0").build(), now);
    let mut merged = server_veth("p/1/0").at(50_000).build();
    merge::merge(
        &mut merged,
        socket("p/9/0", Side::Server).keyed(1000).at(60_000).build(),
    );
    merged.merged_ids = vec!["p/9/0".to_owned()];
    let b = j.offer(merged, now);
    assert_eq!(b.outcome, Outcome::Joined);
    assert_eq!(b.record.constituents, ["q/3/0", "p/1/0", "p/9/0"]);
    assert!(j.get("p/9/0").is_some());
}

#[test]
fn the_candidate_cap_is_configurable() {
    // Twenty exchanges of one client at one instant; a view matching none of them.
    let run = |cap: usize| {
        let mut j = Joiner::new(JoinConfig {
            window: Duration::from_secs(60),
            max_time_candidates: cap,
            ..JoinConfig::default()
        });
        flood_then_a_stranger(&mut j, 20)
    };
    let (outcome, compared) = run(8);
    assert_eq!(
        outcome,
        Outcome::Ambiguous,
        "more candidates than a cap of 8"
    );
    assert!(compared <= 8, "at most 8 comparisons, saw {compared}");
    let (outcome, compared) = run(MAX_TIME_CANDIDATES);
    assert_eq!(
        outcome,
        Outcome::Opened,
        "the default cap compares all twenty and finds none"
    );
    assert_eq!(compared, 20);
}

/// The way the join holds an open exchange, by the slot's entry: held as it arrived (`true`)
/// or decoded.
fn held_as_arrived(j: &Joiner) -> Vec<bool> {
    j.entries
        .values()
        .map(|e| matches!(e.rec, Held::Packed(_)))
        .collect()
}

/// Offered by its head: a view that expects no company is held as it arrived until its window
/// closes, then made ready decoded whole, as one decoded on arrival would be; a view that may
/// have company (its client is a pod no observation saw from the client's side) is decoded on
/// arrival.
#[test]
fn views_offered_by_their_head_are_held_as_they_arrived_only_when_alone() -> anyhow::Result<()> {
    use prost::Message as _;
    let mut j = joiner(30);
    let t0 = Instant::now();
    let alone = SessionBuilder::new("p/1/0")
        .with(|s| {
            if let Some(c) = s.client.as_mut() {
                c.pod.clear();
            }
        })
        .build();
    let placed = j.offer_head(alone.encode_to_vec().into(), t0)?;
    assert_eq!(placed.outcome, Outcome::Opened);
    assert_eq!(held_as_arrived(&j), [true]);
    let awaited = SessionBuilder::new("p/2/0")
        .with(|s| {
            if let Some(c) = s.client.as_mut() {
                c.port = 40002;
            }
        })
        .build();
    j.offer_head(awaited.encode_to_vec().into(), t0)?;
    assert_eq!(held_as_arrived(&j), [true, false]);
    let ready = j.expire(t0 + Duration::from_millis(40));
    let sessions: Vec<&Session> = ready.iter().map(|r| &r.session).collect();
    assert_eq!(sessions, [&alone, &awaited], "both made ready whole");
    assert_eq!(
        ready
            .iter()
            .map(|r| r.constituents.clone())
            .collect::<Vec<_>>(),
        [vec!["p/1/0".to_owned()], vec!["p/2/0".to_owned()]]
    );
    // A duplicate of the one held as it arrived is found by its id.
    let again = j.offer_head(alone.encode_to_vec().into(), t0)?;
    assert_eq!(again.outcome, Outcome::Duplicate);
    assert!(j
        .offer_head(bytes::Bytes::from_static(&[0x0a, 0x7f, b'x']), t0)
        .is_err());
    Ok(())
}

/// A view held as it arrived is known by the ids a decoded one would be: its own, those the
/// collector merged into it (empty ones left out), or its span id when it came without an id;
/// its session, made ready, lists no merged ids (the exchange's constituents hold them).
#[test]
fn a_view_held_as_it_arrived_is_known_by_its_own_and_its_merged_ids() -> anyhow::Result<()> {
    use prost::Message as _;
    let mut j = joiner(30);
    let t0 = Instant::now();
    let alone = |id: &str, merged: &str, port: u32| {
        SessionBuilder::new(id)
            .with(|s| {
                if let Some(c) = s.client.as_mut() {
                    c.pod.clear();
                    c.port = port;
                }
                s.merged_ids = vec![merged.into(), String::new()];
            })
            .build()
    };
    j.offer_head(alone("p/1/0", "p/1/1", 40001).encode_to_vec().into(), t0)?;
    j.offer_head(alone("", "p/2/1", 40002).encode_to_vec().into(), t0)?;
    assert_eq!(held_as_arrived(&j), [true, true]);
    let ready = j.expire(t0 + Duration::from_millis(40));
    let [named, unnamed] = ready.as_slice() else {
        anyhow::bail!("two ready, not {}", ready.len());
    };
    assert_eq!(named.id, "p/1/0");
    assert_eq!(named.constituents, ["p/1/0", "p/1/1"]);
    assert!(named.session.merged_ids.is_empty());
    assert_eq!(unnamed.id, unnamed.span_id.to_string());
    assert_eq!(unnamed.constituents, ["p/2/1"]);
    assert!(j.get(&unnamed.id).is_some(), "found by its span id");
    assert!(j.get("p/1/1").is_some() && j.get("p/2/1").is_some());
    Ok(())
}

/// Whatever way exchanges came and went — one view, views merged here, sessions the collector
/// merged, three ids and more, held as they arrived, stored for the REST API only, forgotten at
/// the end of their retention or pushed out when the join is full — once none is held, neither
/// index keeps anything of them: an exchange's entry keeps the hashes it is indexed under, and
/// taking it out must clear each.
#[test]
fn exchanges_gone_leave_nothing_in_the_indexes() -> anyhow::Result<()> {
    use prost::Message as _;
    let mut j = stored_joiner(Duration::from_millis(10), Duration::from_millis(100), 8, 4);
    let t0 = Instant::now();
    for round in 0..4u32 {
        let at = t0 + Duration::from_millis(u64::from(round) * 50);
        let port = 41000 + round * 10;
        let id = |n: u32| format!("r{round}/{n}");
        // One view; then a second one joining it.
        j.offer(client_veth(&id(1)).port(port).build(), at);
        j.offer(server_veth(&id(2)).port(port).build(), at);
        // A session the collector merged, joined by a third view: three ids.
        let mut merged = server_veth(&id(3)).port(port + 1).at(50_000).build();
        merge::merge(
            &mut merged,
            socket(&id(4), Side::Server)
                .keyed(1000)
                .port(port + 1)
                .at(60_000)
                .build(),
        );
        merged.merged_ids = vec![id(4)];
        j.offer(merged, at);
        j.offer(client_veth(&id(5)).port(port + 1).build(), at);
        // Held as it arrived.
        let alone = SessionBuilder::new(&id(6))
            .with(|s| {
                if let Some(c) = s.client.as_mut() {
                    c.pod.clear();
                    c.port = port + 2;
                }
            })
            .build();
        j.offer_head(alone.encode_to_vec().into(), at)?;
        // For the REST API only.
        let (stored, _) = CorrelatedSession::new(client_veth(&id(7)).port(port + 3).build());
        j.store_insert(Arc::new(stored));
        // Many more than the join holds: the oldest are pushed out.
        for n in 0..12 {
            j.offer(
                client_veth(&id(100 + n))
                    .port(port + 4)
                    .seq(5000 + n)
                    .build(),
                at,
            );
        }
    }
    assert!(j.ids.len() > 0 && j.wire.len() > 0);
    j.drain(t0 + Duration::from_secs(1));
    j.expire(t0 + Duration::from_secs(2));
    j.store_clear();
    assert!(j.is_empty() && j.entries.is_empty());
    assert_eq!((j.ids.len(), j.wire.len()), (0, 0));
    Ok(())
}

/// Kept to decode into: exchanges held nowhere else, of a modest size, up to the most kept.
#[test]
fn only_modest_exchanges_held_nowhere_else_are_kept_to_decode_into() {
    let mut j = Joiner::new(JoinConfig::default());
    let record = |s: Session| Arc::new(CorrelatedSession::new(s).0);
    let small = record(SessionBuilder::new("p/1/0").build());
    let shared = record(SessionBuilder::new("p/2/0").build());
    let elsewhere = Arc::clone(&shared);
    let long_url = "/a".repeat(Joiner::SPARE_BYTES_MAX);
    let big = record(SessionBuilder::new("p/3/0").target(&long_url).build());
    let mut finished = vec![small, shared, big];
    j.restock(&mut finished);
    assert!(finished.is_empty());
    assert_eq!(j.spare_count(), 1, "the small one alone");
    let mut many: Vec<_> = (0..Joiner::SPARES_MAX + 5)
        .map(|i| record(SessionBuilder::new(&format!("q/{i}/0")).build()))
        .collect();
    j.restock(&mut many);
    assert_eq!(j.spare_count(), Joiner::SPARES_MAX);
    assert_eq!(Arc::strong_count(&elsewhere), 1, "dropped here, held there");
}

/// The client time index is kept only while sequence-less views come: keyed exchanges opened
/// before the first such view are found by it all the same (the index is built from what the
/// join holds), exchanges forgotten meanwhile are not, and once no such view came for a while
/// the index is let go and built again for the next.
#[test]
fn the_client_time_index_is_built_when_a_sequence_less_view_first_needs_it() {
    let mut j = joiner(100);
    let t0 = Instant::now();
    // Keyed views only: no index.
    for (i, port) in [40000, 40001, 40002].into_iter().enumerate() {
        let r = j.offer(server_veth(&format!("v{i}")).port(port).build(), t0);
        assert_eq!(r.outcome, Outcome::Opened);
    }
    assert!(
        !j.clients.is_kept(),
        "keyed views alone keep no client time index"
    );
    // A socket view without a sequence number finds the keyed exchange of its client and time.
    let r = j.offer(socket("s1", Side::Server).port(40001).build(), t0);
    assert_eq!(r.outcome, Outcome::Joined);
    assert_eq!(r.record.constituents, ["v1", "s1"]);
    assert!(j.clients.is_kept());
    // Kept up to date while kept: an exchange opened now is found too.
    j.offer(server_veth("v3").port(40003).build(), t0);
    let r = j.offer(socket("s3", Side::Server).port(40003).build(), t0);
    assert_eq!(r.outcome, Outcome::Joined);
    assert_eq!(r.record.constituents, ["v3", "s3"]);
    // Their windows close; no sequence-less view for the idle time: let go of at the next
    // offer, which also forgets them (past their retention).
    assert_eq!(j.expire(t0 + Duration::from_millis(200)).len(), 4);
    let later = t0 + ByClient::IDLE;
    j.offer(server_veth("v4").port(40004).build(), later);
    assert!(!j.clients.is_kept(), "let go of once idle");
    // Built again for the next: the exchange opened while it was not kept is in it; those
    // forgotten are not.
    let r = j.offer(socket("s4", Side::Server).port(40004).build(), later);
    assert_eq!(r.outcome, Outcome::Joined);
    assert_eq!(r.record.constituents, ["v4", "s4"]);
    let r = j.offer(socket("s0", Side::Server).port(40000).build(), later);
    assert_eq!(
        r.outcome,
        Outcome::Opened,
        "the first exchange was forgotten after its retention: nothing to join"
    );
}
