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
    ) {
        let names = SessionNames { client: names_of(&client), server: names_of(&server) };
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
        out: &mut out,
        at: 0,
        lens: [].iter(),
    };
    head(&s, &SessionNames::default(), &mut w);
    let at = w.at;
    assert_eq!(
        out.get(..at),
        expected.get(..at),
        "the fields before the attributes"
    );
}
