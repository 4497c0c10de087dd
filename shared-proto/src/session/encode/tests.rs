use super::*;
use crate::session::arb::{arb_session, full};
use proptest::prelude::*;
use prost::Message;

fn ours(s: &Session) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_raw(s, &mut buf);
    buf.to_vec()
}

#[test]
fn a_full_session_is_encoded_as_prost_encodes_it() {
    let s = full();
    assert_eq!(ours(&s), s.encode_to_vec());
    assert_eq!(ours(&Session::default()), Vec::<u8>::new());
}

#[test]
fn negative_enums_and_empty_repeated_strings_are_written_as_prost_writes_them() {
    let s = Session {
        protocol: -1,
        observations: vec![Observation {
            side: i32::MIN,
            ..Observation::default()
        }],
        merged_ids: vec![String::new()],
        client: Some(Endpoint::default()),
        ..Session::default()
    };
    assert_eq!(ours(&s), s.encode_to_vec());
}

fn named(s: &Session, names: &SessionNames<'_>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_raw_named(s, names, &mut buf, &mut Vec::new());
    buf.to_vec()
}

#[test]
fn names_given_beside_a_session_are_written_where_its_ends_leave_them_empty() {
    let mut s = full();
    let client = s.client.get_or_insert_with(Endpoint::default);
    client.pod.clear();
    client.service.clear();
    s.server = Some(Endpoint {
        ip: vec![10, 0, 0, 2].into(),
        port: 80,
        ..Endpoint::default()
    });
    let names = SessionNames {
        client: EndpointNames {
            pod: "client-pod",
            namespace: "not-written",
            service: "client-svc",
            ..EndpointNames::default()
        },
        server: EndpointNames {
            pod: "server-pod",
            namespace: "shop",
            node: "node-1",
            workload: "server",
            service: "server-svc",
        },
        ..SessionNames::default()
    };
    let filled = names.applied_to(s.clone());
    let c = filled.client.as_ref().expect("client");
    assert_eq!(c.pod, "client-pod");
    assert_eq!(c.service, "client-svc");
    assert_eq!(
        c.namespace,
        full().client.expect("client").namespace,
        "the session's own name stays"
    );
    assert_eq!(filled.server.as_ref().expect("server").workload, "server");
    assert_eq!(named(&s, &names), filled.encode_to_vec());
    // No end, no names: nothing is made up.
    let bare = Session::default();
    assert_eq!(named(&bare, &names), Vec::<u8>::new());
}

fn arb_names() -> impl Strategy<Value = [String; 5]> {
    [
        "[a-z]{0,3}",
        "[a-z]{0,3}",
        "[a-z]{0,3}",
        "[a-z]{0,3}",
        "[a-z]{0,3}",
    ]
}

fn names_of(n: &[String; 5]) -> EndpointNames<'_> {
    EndpointNames {
        pod: &n[0],
        namespace: &n[1],
        node: &n[2],
        workload: &n[3],
        service: &n[4],
    }
}

#[test]
fn an_id_and_probe_names_given_beside_a_session_are_written_where_it_leaves_them_empty() {
    let mut s = full();
    s.id.clear();
    s.observations.truncate(1);
    let mut own = s.observations[0].clone();
    own.probe_id = "other-probe".into();
    own.node = "other-node".into();
    s.observations[0].probe_id.clear();
    s.observations[0].node.clear();
    s.observations.push(own);
    let names = SessionNames {
        id: Some(IdParts {
            prefix: "probe-1/1f/",
            index: 4,
            position: 2,
        }),
        observations: ObservationNames {
            probe_id: "probe-1",
            node: "node-1",
        },
        ..SessionNames::default()
    };
    let filled = names.applied_to(s.clone());
    assert_eq!(filled.id, "probe-1/1f/4.2");
    assert_eq!(
        (
            filled.observations[0].probe_id.as_str(),
            filled.observations[0].node.as_str()
        ),
        ("probe-1", "node-1")
    );
    assert_eq!(
        (
            filled.observations[1].probe_id.as_str(),
            filled.observations[1].node.as_str()
        ),
        ("other-probe", "other-node"),
        "an observation's own names stay"
    );
    assert_eq!(named(&s, &names), filled.encode_to_vec());
    // A session's own id stays; the first exchange of a message has no position.
    s.id = "own".into();
    assert_eq!(names.applied_to(s.clone()).id, "own");
    assert_eq!(named(&s, &names), names.applied_to(s).encode_to_vec());
    let first = IdParts {
        prefix: "p/0/",
        index: 0,
        position: 0,
    };
    assert_eq!(first.to_text(), "p/0/0");
    let last = IdParts {
        prefix: "",
        index: u32::MAX,
        position: u32::MAX,
    };
    assert_eq!(last.to_text(), format!("{}.{}", u32::MAX, u32::MAX));
}

fn arb_id() -> impl Strategy<Value = Option<(String, u32, u32)>> {
    proptest::option::of((
        "[a-z0-9/]{0,6}",
        any::<u32>(),
        prop_oneof![Just(0), any::<u32>()],
    ))
}

proptest! {
    #[test]
    fn any_session_is_encoded_as_prost_encodes_it(s in arb_session()) {
        prop_assert_eq!(ours(&s), s.encode_to_vec());
    }

    #[test]
    fn any_session_with_names_beside_it_is_encoded_as_prost_encodes_it_with_them_applied(
        s in arb_session(),
        client in arb_names(),
        server in arb_names(),
        id in arb_id(),
        probe in ["[a-z]{0,3}", "[a-z]{0,3}"],
    ) {
        let names = SessionNames {
            client: names_of(&client),
            server: names_of(&server),
            id: id.as_ref().map(|(prefix, index, position)| IdParts {
                prefix,
                index: *index,
                position: *position,
            }),
            observations: ObservationNames { probe_id: &probe[0], node: &probe[1] },
        };
        prop_assert_eq!(named(&s, &names), names.applied_to(s.clone()).encode_to_vec());
    }
}

#[test]
fn without_measured_lengths_the_write_pass_measures_each_message_itself() {
    let s = full();
    let expected = s.encode_to_vec();
    let mut lens = Vec::new();
    let mut len = Len {
        total: 0,
        lens: &mut lens,
    };
    head(&s, &SessionNames::default(), &mut len);
    assert!(len.lens.len() > 5, "every message measured: {:?}", len.lens);
    let mut out = vec![0; expected.len()];
    let mut w = Write {
        out: Out::new(&mut out),
        lens: [].iter(),
    };
    head(&s, &SessionNames::default(), &mut w);
    let at = w.out.written();
    assert_eq!(
        out.get(..at),
        expected.get(..at),
        "the fields before the attributes"
    );
}
