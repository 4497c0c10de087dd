use super::*;
use crate::flows::{CounterView, Origin, ProbeNames};
use clovisor_proto::common::v1::{PointKind, Side};
use clovisor_proto::join::merge::PointView;
use clovisor_proto::session::v1::{Endpoint, Http, Observation, Protocol};

/// One point's view of `GET /a` from 10.0.0.1:40000 to 10.0.0.2:80, request at sequence
/// number `seq`, as the flow table makes it.
fn view(id: &str, kind: PointKind, side: Side, interface: &str, seq: u32) -> Session {
    let endpoint = |ip: [u8; 4], port: u32, pod: &str| Endpoint {
        ip: ip.to_vec().into(),
        port,
        pod: pod.into(),
        namespace: "demo".into(),
        node: "node-a".into(),
        ..Endpoint::default()
    };
    Session {
        id: id.into(),
        protocol: Protocol::Http1 as i32,
        client: Some(endpoint([10, 0, 0, 1], 40000, "client-0")),
        server: Some(endpoint([10, 0, 0, 2], 80, "web-0")),
        observations: vec![Observation {
            kind: kind as i32,
            interface: interface.into(),
            node: "node-a".into(),
            probe_id: "probe-1".into(),
            side: side as i32,
            request_start_unix_nanos: 1_000,
            request_end_unix_nanos: 2_000,
            response_start_unix_nanos: 3_000,
            response_end_unix_nanos: 4_000,
            request_tcp_seq: seq,
            netns_inode: if kind == PointKind::Socket {
                4026532001
            } else {
                0
            },
            ..Observation::default()
        }],
        start_unix_nanos: 1_000,
        end_unix_nanos: 4_000,
        http: Some(Http {
            method: "GET".into(),
            target: "/a".into(),
            status_code: 200,
            version: "1.1".into(),
            ..Http::default()
        }),
        ..Session::default()
    }
}

fn server_veth(id: &str, seq: u32) -> Session {
    view(id, PointKind::Pod, Side::Server, "veth-web", seq)
}

fn server_socket(id: &str, seq: u32) -> Session {
    view(id, PointKind::Socket, Side::Server, "", seq)
}

/// Offers `sessions` (their ends' names in them, none beside them); returns what left, as the
/// correlator receives it.
fn offer(j: &mut LocalJoin, sessions: Vec<Session>) -> (Vec<Session>, Merged) {
    offer_collected(j, sessions.into_iter().map(Collected::bare).collect())
}

fn offer_collected(j: &mut LocalJoin, sessions: Vec<Collected>) -> (Vec<Session>, Merged) {
    let mut out = Vec::new();
    let merged = j.offer(sessions, Instant::now(), |s| {
        out.push(s.clone().into_session())
    });
    (out, merged)
}

fn kinds(s: &Session) -> Vec<(PointKind, Side)> {
    s.observations
        .iter()
        .map(|o| (o.kind(), o.side()))
        .collect()
}

#[test]
fn the_veth_and_socket_views_of_one_exchange_in_one_batch_leave_as_one_session() {
    let mut j = LocalJoin::new(Duration::ZERO);
    let (out, merged) = offer(
        &mut j,
        vec![
            server_veth("p/1/0", 7),
            server_veth("p/1/1", 8),
            server_socket("p/9/0", 7),
        ],
    );
    assert_eq!(merged.views, 1);
    assert_eq!(out.len(), 2, "{out:#?}");
    let both = out
        .iter()
        .find(|s| s.id == "p/1/0")
        .unwrap_or_else(|| panic!("first view's id kept: {out:#?}"));
    assert_eq!(both.merged_ids, vec!["p/9/0".to_owned()]);
    assert_eq!(
        kinds(both),
        vec![
            (PointKind::Pod, Side::Server),
            (PointKind::Socket, Side::Server)
        ]
    );
    let alone = out.iter().find(|s| s.id == "p/1/1");
    assert!(
        alone.is_some_and(|s| s.merged_ids.is_empty() && s.observations.len() == 1),
        "the other exchange is untouched: {out:#?}"
    );
    assert!(!j.is_holding(), "a zero hold keeps nothing");
}

#[test]
fn views_a_batch_apart_are_merged_and_the_held_ones_leave_with_the_next_batch() {
    let mut j = LocalJoin::new(Duration::from_millis(30));
    let (out, _) = offer(
        &mut j,
        vec![server_veth("p/1/0", 7), server_veth("p/1/1", 8)],
    );
    assert!(out.is_empty(), "held for the next batch: {out:#?}");
    assert!(j.is_holding() && j.deadline().is_some());

    let (out, merged) = offer(
        &mut j,
        vec![server_socket("p/9/0", 7), server_socket("p/9/1", 9)],
    );
    assert_eq!(merged.views, 1);
    let ids: Vec<&str> = out.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["p/1/0", "p/1/1"], "last batch's sessions leave now");
    assert_eq!(out[0].observations.len(), 2);
    assert_eq!(out[0].merged_ids, ["p/9/0"]);

    // The socket view of exchange 9 found no partner: it waits one batch, then leaves alone.
    let (out, _) = offer(&mut j, Vec::new());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].id, "p/9/1");
    assert!(!j.is_holding() && j.deadline().is_none());
}

#[test]
fn all_four_points_of_a_single_host_become_one_session() {
    let mut j = LocalJoin::new(Duration::from_millis(30));
    let client_veth = view("p/3/0", PointKind::Pod, Side::Client, "veth-client", 7);
    let client_socket = view("p/4/0", PointKind::Socket, Side::Client, "", 7);
    let (out, first) = offer(&mut j, vec![client_socket, server_veth("p/1/0", 7)]);
    assert!(out.is_empty());
    let (mut out, second) = offer(&mut j, vec![client_veth, server_socket("p/9/0", 7)]);
    j.flush(|s| out.push(s.clone().into_session()));
    assert_eq!(first.views + second.views, 3);
    assert_eq!(out.len(), 1, "{out:#?}");
    let s = &out[0];
    assert_eq!(
        kinds(s),
        vec![
            (PointKind::Socket, Side::Client),
            (PointKind::Pod, Side::Client),
            (PointKind::Pod, Side::Server),
            (PointKind::Socket, Side::Server)
        ],
        "in path order"
    );
    let mut ids = s.merged_ids.clone();
    ids.sort();
    assert_eq!(ids, ["p/1/0", "p/3/0", "p/9/0"]);
}

#[test]
fn views_that_disagree_or_repeat_a_point_are_not_merged() {
    let mut j = LocalJoin::new(Duration::ZERO);
    let mut other_target = server_socket("p/9/0", 7);
    if let Some(h) = other_target.http.as_mut() {
        h.target = "/b".into();
    }
    let (out, merged) = offer(
        &mut j,
        vec![
            server_veth("p/1/0", 7),
            other_target,
            // The same point again with the same key: a different exchange.
            server_veth("p/1/5", 7),
        ],
    );
    assert_eq!(merged.views, 0);
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|s| s.merged_ids.is_empty()));
}

#[test]
fn sessions_without_a_wire_key_pass_straight_through() {
    let mut j = LocalJoin::new(Duration::from_millis(30));
    // A socket whose sequence number could not be read reports 0.
    let (out, merged) = offer(&mut j, vec![server_socket("p/9/0", 0)]);
    assert_eq!(merged.views, 0);
    assert_eq!(out.len(), 1, "not held");
    assert!(!j.is_holding());
}

#[test]
fn a_flush_sends_everything_held() {
    let mut j = LocalJoin::new(Duration::from_secs(5));
    let (out, _) = offer(&mut j, vec![server_veth("p/1/0", 7)]);
    assert!(out.is_empty());
    let mut out = Vec::new();
    j.flush(|s| out.push(s.clone().into_session()));
    assert_eq!(out.len(), 1);
    assert!(!j.is_holding() && j.deadline().is_none());
}

/// A covered veth's counters-only view of the exchange at `seq`: timings and counters, no
/// protocol, no other pod's metadata (as the flow table builds it).
fn counters_view(kind_side: (PointKind, Side), interface: &str, seq: u32) -> Session {
    let mut s = view(
        &format!("c/{interface}/{seq}"),
        kind_side.0,
        kind_side.1,
        interface,
        seq,
    );
    s.protocol = Protocol::Unspecified as i32;
    s.http = None;
    s.incomplete = false;
    if let Some(c) = s.client.as_mut() {
        c.pod.clear();
    }
    s.observations[0].request_bytes = 77;
    s.bytes = Some(clovisor_proto::session::v1::Counters {
        request: 77,
        response: 300,
    });
    s
}

#[test]
fn a_counters_only_view_joins_the_decoded_view_whichever_comes_first_and_leaves_no_id() {
    for counters_first in [true, false] {
        let mut j = LocalJoin::new(Duration::from_millis(30));
        let veth = counters_view((PointKind::Pod, Side::Server), "veth-web", 7);
        let socket = server_socket("p/2/0", 7);
        let (first, second) = if counters_first {
            (veth, socket)
        } else {
            (socket, veth)
        };
        let (out, _) = offer(&mut j, vec![first]);
        assert!(out.is_empty(), "a keyed view waits for the next batch");
        let (out, merged) = offer(&mut j, vec![second]);
        assert_eq!(merged.views, 1);
        assert_eq!(merged.unmatched_counters, 0);
        let mut rest = Vec::new();
        j.flush(|s| rest.push(s.clone().into_session()));
        let all: Vec<_> = out.into_iter().chain(rest).collect();
        assert_eq!(
            all.len(),
            1,
            "one session leaves (counters first: {counters_first})"
        );
        let s = &all[0];
        assert_eq!(s.id, "p/2/0", "the decoded view names the exchange");
        assert!(s.merged_ids.is_empty(), "the counters view leaves no id");
        assert_eq!(s.protocol, Protocol::Http1 as i32);
        assert_eq!(s.http.as_ref().map(|h| h.status_code), Some(200));
        assert_eq!(
            kinds(s),
            [
                (PointKind::Pod, Side::Server),
                (PointKind::Socket, Side::Server)
            ]
        );
        assert_eq!(
            s.client.as_ref().map(|c| c.pod.as_str()),
            Some("client-0"),
            "the decoded view's metadata stays"
        );
    }
}

#[test]
fn a_counters_only_view_without_a_decoded_view_leaves_alone_and_is_counted() {
    let mut j = LocalJoin::new(Duration::from_millis(30));
    let (out, merged) = offer(
        &mut j,
        vec![
            counters_view((PointKind::Pod, Side::Server), "veth-web", 7),
            server_socket("p/2/0", 8),
        ],
    );
    assert!(out.is_empty());
    assert_eq!(merged.unmatched_counters, 0);
    // Next batch: neither found its other view; both leave, for the correlator's join.
    let (out, merged) = offer(&mut j, vec![]);
    assert_eq!(
        out.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["c/veth-web/7", "p/2/0"]
    );
    assert_eq!(merged.unmatched_counters, 1);
    // Without a key (no sequence number) it cannot join anything here: it leaves at once.
    let mut keyless = counters_view((PointKind::Pod, Side::Server), "veth-web", 9);
    keyless.client = None;
    let (out, merged) = offer(&mut j, vec![keyless]);
    assert_eq!(out.len(), 1);
    assert_eq!(merged.unmatched_counters, 1);
    // Held until a flush: counted there.
    let (_, merged) = offer(
        &mut j,
        vec![counters_view(
            (PointKind::Pod, Side::Server),
            "veth-web",
            11,
        )],
    );
    assert_eq!(merged.unmatched_counters, 0);
    let mut flushed = 0;
    assert_eq!(j.flush(|_| flushed += 1), 1);
    assert_eq!(flushed, 1);
}

#[test]
fn two_counters_views_and_two_decoded_views_of_one_exchange_leave_as_one_session() {
    // All-in-one tracing both pods: both veths covered, both sockets decoded.
    let mut j = LocalJoin::new(Duration::ZERO);
    let (out, merged) = offer(
        &mut j,
        vec![
            counters_view((PointKind::Pod, Side::Client), "veth-client", 7),
            counters_view((PointKind::Pod, Side::Server), "veth-web", 7),
            view("p/3/0", PointKind::Socket, Side::Client, "", 7),
            server_socket("p/4/0", 7),
        ],
    );
    assert_eq!(merged.views, 3);
    assert_eq!(merged.unmatched_counters, 0);
    assert_eq!(out.len(), 1);
    let s = &out[0];
    assert_eq!(s.id, "p/3/0");
    assert_eq!(s.merged_ids, ["p/4/0"]);
    assert_eq!(s.protocol, Protocol::Http1 as i32);
    assert_eq!(
        kinds(s),
        [
            (PointKind::Socket, Side::Client),
            (PointKind::Pod, Side::Client),
            (PointKind::Pod, Side::Server),
            (PointKind::Socket, Side::Server)
        ]
    );
    assert_eq!(
        s.bytes.as_ref().map(|b| b.request),
        Some(77),
        "the client veth's counters are the session's"
    );
}

fn meta(pod: &str, workload: &str, service: &str) -> Arc<EndpointMeta> {
    Arc::new(EndpointMeta {
        pod: pod.into(),
        namespace: if pod.is_empty() { "" } else { "demo" }.into(),
        workload: workload.into(),
        service: service.into(),
        ..EndpointMeta::default()
    })
}

/// A view as the flow table now makes it: its ends' names beside it, not in it.
fn without_names(mut s: Session) -> Session {
    for e in [s.client.as_mut(), s.server.as_mut()].into_iter().flatten() {
        *e = Endpoint {
            ip: std::mem::take(&mut e.ip),
            port: e.port,
            ..Endpoint::default()
        };
    }
    s
}

#[test]
fn the_names_beside_merged_views_follow_the_ends_the_merge_keeps() {
    // The client's socket saw the Service's address (10.96.0.10), known only by its Service;
    // the server's veth (counters only) saw the pod behind it, whose metadata names no Service.
    let client = meta("client-0", "client", "");
    let mut decoded = without_names(view("p/4/0", PointKind::Socket, Side::Client, "", 7));
    if let Some(s) = decoded.server.as_mut() {
        s.ip = vec![10, 96, 0, 10].into();
    }
    let decoded = Collected {
        session: decoded,
        client_meta: Some(Arc::clone(&client)),
        server_meta: Some(meta("", "", "web")),
        origin: None,
    };
    let veth = Collected {
        session: without_names(counters_view((PointKind::Pod, Side::Server), "veth-web", 7)),
        client_meta: None,
        server_meta: Some(meta("web-0", "web", "")),
        origin: None,
    };
    let mut j = LocalJoin::new(Duration::ZERO);
    let (out, merged) = offer_collected(&mut j, vec![veth, decoded]);
    assert_eq!((merged.views, out.len()), (1, 1), "{out:#?}");
    let s = &out[0];
    let server = s.server.as_ref().expect("server");
    assert_eq!(
        (
            &server.ip[..],
            server.pod.as_str(),
            server.workload.as_str()
        ),
        ([10, 0, 0, 2].as_slice(), "web-0", "web"),
        "the pod the server's veth saw, named by its metadata"
    );
    assert_eq!(
        server.service, "web",
        "the name it lacked, from the Service's"
    );
    assert_eq!(server.namespace, "demo");
    let c = s.client.as_ref().expect("client");
    assert_eq!(
        (c.pod.as_str(), c.workload.as_str()),
        ("client-0", "client")
    );
}

#[test]
fn metadata_of_one_address_stays_shared_through_a_merge() {
    let m = meta("web-0", "web", "web");
    let kept = filled(Some(Arc::clone(&m)), Some(Arc::clone(&m))).expect("kept");
    assert!(Arc::ptr_eq(&kept, &m), "no copy when nothing is missing");
    let other = meta("web-0", "web", "web");
    let kept = filled(Some(Arc::clone(&m)), Some(other)).expect("kept");
    assert!(Arc::ptr_eq(&kept, &m), "an equal one adds nothing either");
    assert!(filled(None, None).is_none());
    let only = filled(None, Some(Arc::clone(&m))).expect("the other's");
    assert!(Arc::ptr_eq(&only, &m));
}

/// `s` as the flow table makes it: its id and its observations' probe id and node left to its
/// origin (`p/<flow>/` and the message index parsed from its id, and `probe`).
fn originated(s: Session, probe: &Arc<ProbeNames>) -> Collected {
    let (prefix, index) = s.id.rsplit_once('/').expect("p/<flow>/<index>");
    let origin = Origin {
        id_prefix: format!("{prefix}/").into(),
        index: index.parse().expect("index"),
        position: 0,
        probe: Arc::clone(probe),
    };
    let mut session = s;
    session.id.clear();
    for o in &mut session.observations {
        if o.probe_id == probe.id {
            o.probe_id.clear();
        }
        if o.node == probe.node {
            o.node.clear();
        }
    }
    Collected {
        session,
        origin: Some(origin),
        ..Collected::default()
    }
}

#[test]
fn views_whose_names_are_left_to_their_origin_leave_named_after_a_merge() {
    let probe = Arc::new(ProbeNames {
        id: "probe-1".into(),
        node: "node-a".into(),
    });
    // Two decoded views (the merged one's id is remembered) and a counters-only one (adds none).
    // The client's veth is one of the probe's (the flow table names it beside every view), so
    // the server's two views wait for the client's.
    let veth = |id, seq| client_traced(originated(server_veth(id, seq), &probe));
    let socket = client_traced(originated(server_socket("p/9/0", 7), &probe));
    let counters = originated(
        counters_view((PointKind::Pod, Side::Client), "veth-c", 7),
        &probe,
    );
    let mut j = LocalJoin::new(Duration::ZERO);
    let (out, merged) = offer_collected(
        &mut j,
        vec![veth("p/1/0", 7), veth("p/1/1", 8), socket, counters],
    );
    assert_eq!(merged.views, 2, "{out:#?}");
    let both = out
        .iter()
        .find(|s| s.id == "p/1/0")
        .unwrap_or_else(|| panic!("first view's id written in: {out:#?}"));
    assert_eq!(both.merged_ids, ["p/9/0"], "the socket view's, written in");
    assert_eq!(both.observations.len(), 3);
    assert!(
        both.observations
            .iter()
            .all(|o| (o.probe_id.as_str(), o.node.as_str()) == ("probe-1", "node-a")),
        "{both:#?}"
    );
    assert!(out.iter().any(|s| s.id == "p/1/1"), "{out:#?}");

    // A view another probe made keeps its names when merged into one that leaves its own to
    // its origin (not a local join's case — one stream, one probe — but never misnamed).
    let other = Arc::new(ProbeNames {
        id: "probe-2".into(),
        node: "node-b".into(),
    });
    let mut socket = originated(server_socket("p/9/0", 7), &other);
    socket.session.observations[0].probe_id.clear();
    socket.session.observations[0].node.clear();
    let (out, merged) = offer_collected(&mut j, vec![veth("p/1/0", 7), socket]);
    assert_eq!((merged.views, out.len()), (1, 1), "{out:#?}");
    let names: Vec<_> = out[0]
        .observations
        .iter()
        .map(|o| (o.kind(), o.probe_id.as_str(), o.node.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            (PointKind::Pod, "probe-1", "node-a"),
            (PointKind::Socket, "probe-2", "node-b")
        ]
    );
}

fn end(e: Option<&Endpoint>) -> (bytes::Bytes, u32) {
    let e = e.expect("an end");
    (e.ip.clone(), e.port)
}

/// A counters-only view as the flow table keeps it apart ([`CounterView`]), from the session
/// it would otherwise have made (one observation, an origin).
fn apart(c: Collected) -> CounterView {
    let Collected {
        session,
        client_meta,
        server_meta,
        origin,
    } = c;
    assert!(merge::counters_only(&session) && session.observations.len() == 1);
    let view = CounterView {
        view: PointView {
            observation: session.observations[0].clone(),
            client: end(session.client.as_ref()),
            server: end(session.server.as_ref()),
            bytes: session.bytes.unwrap_or_default(),
            packets: session.packets.unwrap_or_default(),
            start_unix_nanos: session.start_unix_nanos,
            end_unix_nanos: session.end_unix_nanos,
            incomplete: session.incomplete,
        },
        key: key_of(&session),
        client_meta,
        server_meta,
        origin: origin.expect("an origin"),
        wire: None,
    };
    assert_eq!(
        view.clone().into_collected().session,
        session,
        "the view makes its session"
    );
    view
}

#[test]
fn counters_only_views_kept_apart_leave_exactly_as_their_sessions_would() {
    let probe = Arc::new(ProbeNames {
        id: "probe-1".into(),
        node: "node-a".into(),
    });
    let counters = |kind_side, interface: &str, seq| {
        let mut c = originated(
            without_names(counters_view(kind_side, interface, seq)),
            &probe,
        );
        c.server_meta = Some(meta("web-0", "web", ""));
        // As the flow table counts them: always.
        c.session.packets = Some(clovisor_proto::session::v1::Counters::default());
        c
    };
    let decoded = |id: &str, side, seq| {
        let mut d = originated(
            without_names(view(id, PointKind::Socket, side, "", seq)),
            &probe,
        );
        d.client_meta = Some(meta("client-0", "client", ""));
        // Not the pod the server's veth names: which end's names a merge keeps shows.
        d.server_meta = Some(meta("proxy-0", "", "web"));
        d
    };
    let client_veth = (PointKind::Pod, Side::Client);
    let server_veth = (PointKind::Pod, Side::Server);
    let keyless = || {
        let mut c = counters(server_veth, "veth-web", 11);
        if let Some(client) = c.session.client.as_mut() {
            client.port = 0;
        }
        c
    };
    let hold = Duration::from_millis(30);
    // Batches of (decoded views, counters-only views) through a join with this hold.
    type Batches = Vec<(Vec<Collected>, Vec<Collected>)>;
    let cases: Vec<(Duration, Batches)> = vec![
        // All-in-one: both sockets decoded, both veths covered, one batch.
        (
            Duration::ZERO,
            vec![(
                vec![
                    decoded("p/3/0", Side::Client, 7),
                    decoded("p/4/0", Side::Server, 7),
                ],
                vec![
                    counters(client_veth, "veth-c", 7),
                    counters(server_veth, "veth-web", 7),
                ],
            )],
        ),
        // A view a batch before its decoded twin, and one a batch after.
        (
            hold,
            vec![
                (vec![], vec![counters(server_veth, "veth-web", 7)]),
                (
                    vec![decoded("p/4/0", Side::Server, 7)],
                    vec![counters(client_veth, "veth-c", 8)],
                ),
                (
                    vec![decoded("p/3/0", Side::Client, 8)],
                    vec![counters(client_veth, "veth-c", 7)],
                ),
                (vec![], vec![]),
            ],
        ),
        // No twin; the same point twice; a view without a wire key.
        (
            Duration::ZERO,
            vec![(
                vec![decoded("p/4/0", Side::Server, 8)],
                vec![
                    counters(server_veth, "veth-web", 7),
                    counters(server_veth, "veth-web", 8),
                    counters(server_veth, "veth-web", 8),
                    keyless(),
                ],
            )],
        ),
        // Only counters-only views of an exchange: merged with each other, left unmatched.
        (
            hold,
            vec![
                (
                    vec![],
                    vec![
                        counters(client_veth, "veth-c", 9),
                        counters(server_veth, "veth-web", 9),
                    ],
                ),
                (vec![], vec![counters(client_veth, "veth-c", 9)]),
            ],
        ),
    ];
    for (n, (hold, batches)) in cases.into_iter().enumerate() {
        let (mut as_sessions, mut kept_apart) = (LocalJoin::new(hold), LocalJoin::new(hold));
        let (mut want, mut got) = (Vec::new(), Vec::new());
        let (mut want_merged, mut got_merged) = (Merged::default(), Merged::default());
        for (sessions, views) in batches {
            let now = Instant::now();
            let mut all = sessions.clone();
            all.extend(views.iter().cloned());
            let m = as_sessions.offer(all, now, |s| want.push(s.clone().into_session()));
            want_merged.views += m.views;
            want_merged.unmatched_counters += m.unmatched_counters;
            let views = views.into_iter().map(apart);
            let m = kept_apart
                .offer_with_views(sessions, views, now, |s| got.push(s.clone().into_session()));
            got_merged.views += m.views;
            got_merged.unmatched_counters += m.unmatched_counters;
        }
        want_merged.unmatched_counters +=
            as_sessions.flush(|s| want.push(s.clone().into_session()));
        got_merged.unmatched_counters += kept_apart.flush(|s| got.push(s.clone().into_session()));
        assert_eq!(got, want, "case {n}");
        assert_eq!(got_merged, want_merged, "case {n}");
        assert!(want_merged.views > 0 || n == 2, "case {n} merges something");
    }
}

/// `c` with the client's pod named as one whose veth this probe traces.
fn client_traced(mut c: Collected) -> Collected {
    c.client_meta = Some(Arc::new(EndpointMeta {
        interface: "veth-client".into(),
        ifindex: 5,
        ..EndpointMeta::default()
    }));
    c
}

#[test]
fn an_exchange_whose_every_traced_side_is_seen_at_veth_and_socket_leaves_at_once() {
    let mut j = LocalJoin::new(Duration::from_millis(30));
    // The server's veth and socket in one batch, the client not traced here: complete.
    let (out, merged) = offer(
        &mut j,
        vec![server_veth("p/1/0", 7), server_socket("p/9/0", 7)],
    );
    assert_eq!(merged.views, 1);
    assert_eq!(out.len(), 1, "left with its batch, not held: {out:#?}");
    assert_eq!(out[0].observations.len(), 2);
    assert!(!j.is_holding(), "nothing waits");

    // A batch apart: the held veth view leaves as its socket view joins it.
    let (out, _) = offer(&mut j, vec![server_veth("p/1/1", 8)]);
    assert!(out.is_empty());
    let (out, _) = offer(&mut j, vec![server_socket("p/9/1", 8)]);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].merged_ids, ["p/9/1"]);
    assert!(!j.is_holding());

    // Only a veth (socket hooks off): waits for the next batch as before.
    let (out, _) = offer(&mut j, vec![server_veth("p/1/2", 9)]);
    assert!(out.is_empty() && j.is_holding());
    let (out, _) = offer(&mut j, Vec::new());
    assert_eq!(out.len(), 1);
}

/// A socket's view that carries its pod veth's counters (the veth's observation merged in when
/// the view was made) is complete as it comes: it leaves in its own batch, indexed nowhere, and
/// a later view of its exchange leaves alone; with a traced client it still waits.
#[test]
fn a_view_complete_as_it_comes_leaves_at_once() {
    let mut j = LocalJoin::new(Duration::from_millis(30));
    let carried = |id: &str, seq: u32| {
        let mut s = server_socket(id, seq);
        s.observations
            .extend(server_veth("unused", seq).observations);
        s
    };
    let (out, merged) = offer(&mut j, vec![carried("p/9/0", 7)]);
    assert_eq!(merged.views, 0);
    assert_eq!(out.len(), 1, "left with its batch: {out:#?}");
    assert_eq!(
        kinds(&out[0]),
        [
            (PointKind::Socket, Side::Server),
            (PointKind::Pod, Side::Server)
        ]
    );
    assert!(!j.is_holding(), "nothing waits");
    // Nothing of it was kept to merge into: another view of its exchange leaves alone.
    let (out, _) = offer(&mut j, vec![server_veth("p/1/0", 7)]);
    assert!(out.is_empty() && j.is_holding());
    let (out, _) = offer(&mut j, Vec::new());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].id, "p/1/0");

    // The client's pod traced here: its views are still to come.
    let (out, _) = offer_collected(
        &mut j,
        vec![client_traced(Collected::bare(carried("p/9/1", 8)))],
    );
    assert!(out.is_empty(), "{out:#?}");
    assert!(j.is_holding());
    let (out, _) = offer(&mut j, Vec::new());
    assert_eq!(out.len(), 1);

    // A point at no side (a veth whose pod is not known yet) is no part of a complete view:
    // the view waits its batch for the views it may merge with.
    let mut unplaced = carried("p/9/2", 9);
    if let Some(o) = unplaced.observations.get_mut(1) {
        o.side = Side::Unspecified as i32;
    }
    let (out, _) = offer(&mut j, vec![unplaced]);
    assert!(out.is_empty() && j.is_holding(), "{out:#?}");
}

#[test]
fn a_traced_client_keeps_the_exchange_waiting_until_its_veth_and_socket_join() {
    let mut j = LocalJoin::new(Duration::from_millis(30));
    let client = |s: Session| client_traced(Collected::bare(s));
    let (out, _) = offer_collected(
        &mut j,
        vec![
            client(server_veth("p/1/0", 7)),
            client(server_socket("p/9/0", 7)),
        ],
    );
    assert!(
        out.is_empty(),
        "the client's views are still to come: {out:#?}"
    );
    let client_veth = view("p/3/0", PointKind::Pod, Side::Client, "veth-client", 7);
    let client_socket = view("p/4/0", PointKind::Socket, Side::Client, "", 7);
    let (out, merged) = offer_collected(&mut j, vec![client(client_socket), client(client_veth)]);
    assert_eq!(merged.views, 2);
    assert_eq!(out.len(), 1, "all four seen: {out:#?}");
    assert_eq!(out[0].observations.len(), 4);
    assert!(!j.is_holding());

    // One of the client's views missing: it waits its batch and leaves with the next.
    let (out, _) = offer_collected(
        &mut j,
        vec![
            client(server_veth("p/1/1", 8)),
            client(server_socket("p/9/1", 8)),
            client(view("p/4/1", PointKind::Socket, Side::Client, "", 8)),
        ],
    );
    assert!(out.is_empty(), "{out:#?}");
    let (out, _) = offer_collected(&mut j, Vec::new());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].observations.len(), 3);
}

#[test]
fn the_room_of_a_batch_let_go_of_is_lent_to_the_next_and_an_outsized_one_is_not_kept() {
    let batch = |n: usize, first_seq: u32| -> Vec<Collected> {
        let mut v = Vec::with_capacity(n);
        v.extend((0..n).map(|i| {
            let seq = first_seq + u32::try_from(i).unwrap_or_default();
            Collected::bare(server_socket(&format!("s{seq}"), seq))
        }));
        v
    };
    let mut j = LocalJoin::new(DEFAULT_HOLD);
    assert_eq!(j.take_spare().capacity(), 0, "nothing let go of yet");
    offer_collected(&mut j, batch(100, 1));
    assert_eq!(
        j.take_spare().capacity(),
        0,
        "the first batch is held, not let go of"
    );
    let (left, _) = offer_collected(&mut j, batch(50, 1_000));
    assert_eq!(left.len(), 100, "the first batch's sessions left");
    let room = j.take_spare();
    assert!(room.is_empty());
    assert_eq!(room.capacity(), 100, "the first batch's vector, emptied");
    assert_eq!(j.take_spare().capacity(), 0, "lent once");

    // With no hold, the batch itself is let go of at once.
    let mut j = LocalJoin::new(Duration::ZERO);
    let (left, _) = offer_collected(&mut j, batch(30, 1));
    assert_eq!(left.len(), 30);
    assert_eq!(j.take_spare().capacity(), 30);

    // An outsized batch's room is not kept.
    let (left, _) = offer_collected(&mut j, batch(LocalJoin::SPARE_MAX + 1, 1));
    assert_eq!(left.len(), LocalJoin::SPARE_MAX + 1);
    assert_eq!(j.take_spare().capacity(), 0);
}
