use super::*;
use crate::session::arb::{arb_session, full};
use proptest::prelude::*;

/// Both decoders on the same bytes: equal sessions, or both refusing; and the decoding without
/// merged ids the same but for them.
fn agree(bytes: &[u8]) -> std::result::Result<(), TestCaseError> {
    let ours = decode(bytes);
    let theirs = Session::decode(bytes);
    let without = decode_without_merged_ids(bytes);
    match (ours, theirs, without) {
        (Ok(a), Ok(b), Ok(mut c)) => {
            prop_assert!(c.merged_ids.is_empty());
            c.merged_ids.clone_from(&a.merged_ids);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a, c);
        }
        (Err(_), Err(_), Err(_)) => {}
        (a, b, c) => prop_assert!(false, "ours {:?}, prost's {:?}, without ids {:?}", a, b, c),
    }
    Ok(())
}

#[test]
fn a_full_session_decodes_as_prost_decodes_it() {
    let s = full();
    let bytes = s.encode_to_vec();
    assert_eq!(decode(&bytes).expect("decodes"), s);
    assert_eq!(decode(&[]).expect("empty"), Session::default());
}

#[test]
fn a_message_field_given_twice_is_merged_and_a_scalar_given_twice_is_the_last() {
    let first = Session {
        id: "a".into(),
        client: Some(Endpoint {
            ip: vec![1, 2, 3, 4].into(),
            pod: "p".into(),
            ..Endpoint::default()
        }),
        ..Session::default()
    };
    let second = Session {
        id: "b".into(),
        client: Some(Endpoint {
            port: 9,
            ..Endpoint::default()
        }),
        ..Session::default()
    };
    let mut bytes = first.encode_to_vec();
    bytes.extend(second.encode_to_vec());
    let s = decode(&bytes).expect("decodes");
    assert_eq!(s, Session::decode(bytes.as_slice()).expect("prost decodes"));
    assert_eq!(s.id, "b");
    let client = s.client.expect("client");
    assert_eq!(
        (client.ip.to_vec(), client.port, client.pod.as_str()),
        (vec![1, 2, 3, 4], 9, "p")
    );
}

#[test]
fn unknown_and_reserved_fields_are_skipped_and_bad_bytes_refused() {
    // Observation field 5 (reserved) and 99 (unknown), a session field 30 (unknown), a group.
    let mut obs = vec![0x28, 0x01]; // 5: varint 1
    obs.extend([0x98, 0x06, 0x02]); // 99: varint 2
    obs.extend([0x1a, 0x01, b'n']); // 3 (node): "n"
    let mut bytes = vec![0x2a, obs.len() as u8];
    bytes.extend(&obs);
    bytes.extend([0xf2, 0x01, 0x00]); // 30: empty bytes
    bytes.extend([0xa3, 0x02, 0x08, 0x01, 0xa4, 0x02]); // 36: a group holding a varint
    let s = decode(&bytes).expect("decodes");
    assert_eq!(s, Session::decode(bytes.as_slice()).expect("prost decodes"));
    assert_eq!(s.observations.first().map(|o| o.node.as_str()), Some("n"));

    for bad in [
        &[0x0a, 0x02, 0xff, 0xfe][..], // id: not UTF-8
        &[0x08, 0x01],                 // id as a varint
        &[0x31, 0x01],                 // start: cut short
        &[0x2a, 0x05, 0x08],           // an observation past the end
        &[0x2a, 0x02, 0x12, 0x05],     // an observation's string past its message
        &[0x00],                       // field 0
        &[0x72, 0x02, 0x0a, 0xff],     // grpc (prost's part): cut short
    ] {
        assert!(decode(bad).is_err(), "{bad:x?}");
        assert!(Session::decode(bad).is_err(), "{bad:x?}");
    }
}

#[test]
fn a_session_decoded_over_a_full_one_keeps_nothing_of_it() {
    let mut s = full();
    decode_into(&[], &mut s, true).expect("empty");
    assert_eq!(s, Session::default());
    // And back: everything the full session has is given again, over an empty one's blocks.
    let bytes = full().encode_to_vec();
    decode_into(&bytes, &mut s, true).expect("decodes");
    assert_eq!(s, full());
    // Fewer observations and merged ids than before: the surplus goes.
    let mut fewer = full();
    fewer.observations.truncate(1);
    fewer.merged_ids.clear();
    fewer.http = None;
    decode_into(&fewer.encode_to_vec(), &mut s, true).expect("decodes");
    assert_eq!(s, fewer);
}

proptest! {
    /// A session decoded into one that held another (and into one a refused decoding left
    /// half-written) is the session a fresh decoding gives: nothing of the earlier one remains.
    #[test]
    fn a_session_decoded_into_another_is_as_if_decoded_afresh(
        a in arb_session(),
        b in arb_session(),
        damaged in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let bytes = b.encode_to_vec();
        let fail = |e: DecodeError| TestCaseError::fail(e.to_string());
        let mut s = a.clone();
        decode_into(&bytes, &mut s, true).map_err(fail)?;
        prop_assert_eq!(&s, &b);
        let mut s = a.clone();
        decode_into(&bytes, &mut s, false).map_err(fail)?;
        prop_assert_eq!(&s, &decode_without_merged_ids(&bytes).map_err(fail)?);
        let mut s = a;
        let mut garbled = bytes.clone();
        garbled.extend_from_slice(&damaged);
        let _ = decode_into(&garbled, &mut s, true);
        decode_into(&bytes, &mut s, true).map_err(fail)?;
        prop_assert_eq!(s, b);
    }

    /// The same over a session that shares some of the new one's strings and addresses (the
    /// common case: the same pods, services and methods as the session decoded there before),
    /// each kept, changed, emptied or left out: those kept are not written again, and nothing
    /// of the earlier session remains where the new one differs.
    #[test]
    fn a_session_decoded_into_one_sharing_some_of_its_strings_is_as_if_decoded_afresh(
        a in arb_session(),
        b in arb_session(),
        picks in any::<u64>(),
    ) {
        let b = sharing(&a, b, picks);
        let bytes = b.encode_to_vec();
        let mut s = a;
        decode_into(&bytes, &mut s, true).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(s, b);
    }

    #[test]
    fn any_session_decodes_as_prost_decodes_it(s in arb_session()) {
        let bytes = s.encode_to_vec();
        prop_assert_eq!(decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?, s);
    }

    #[test]
    fn damaged_sessions_are_refused_or_decoded_as_prost_does(
        s in arb_session(),
        cut in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut bytes = s.encode_to_vec();
        for (at, byte) in flips {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
        }
        agree(&bytes)?;
        let end = cut.index(bytes.len() + 1);
        agree(&bytes[..end])?;
    }

    #[test]
    fn any_bytes_are_refused_or_decoded_as_prost_does(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        agree(&bytes)?;
    }
}

/// `b` with some of its strings and addresses taken from `a`: for each, a bit of `picks` says
/// whether `b` keeps its own or has `a`'s (where both have the message that holds it).
fn sharing(a: &Session, mut b: Session, picks: u64) -> Session {
    let mut bit = 0u32;
    let mut pick = || {
        let p = picks.rotate_right(bit) & 1 == 1;
        bit = (bit + 1) % 64;
        p
    };
    let mut take = |from: &String, into: &mut String| {
        if pick() {
            into.clone_from(from);
        }
    };
    let mut ips = Vec::new();
    for (from, into) in [(&a.client, &mut b.client), (&a.server, &mut b.server)] {
        if let (Some(f), Some(i)) = (from, into.as_mut()) {
            ips.push(f.ip.clone());
            take(&f.pod, &mut i.pod);
            take(&f.namespace, &mut i.namespace);
            take(&f.node, &mut i.node);
            take(&f.workload, &mut i.workload);
            take(&f.service, &mut i.service);
        }
    }
    for (f, i) in a.observations.iter().zip(b.observations.iter_mut()) {
        take(&f.interface, &mut i.interface);
        take(&f.node, &mut i.node);
        take(&f.probe_id, &mut i.probe_id);
        take(&f.comm, &mut i.comm);
    }
    if let (Some(f), Some(i)) = (&a.http, b.http.as_mut()) {
        take(&f.method, &mut i.method);
        take(&f.target, &mut i.target);
        take(&f.host, &mut i.host);
        take(&f.user_agent, &mut i.user_agent);
        take(&f.version, &mut i.version);
        take(&f.request_id, &mut i.request_id);
        take(&f.envoy_decorator, &mut i.envoy_decorator);
        take(&f.reason, &mut i.reason);
    }
    if let (Some(f), Some(i)) = (&a.trace, b.trace.as_mut()) {
        take(&f.tracestate, &mut i.tracestate);
    }
    // The addresses: each end's from `a` when the picks' top bits say so.
    for (n, (ip, end)) in ips
        .into_iter()
        .zip([&mut b.client, &mut b.server])
        .enumerate()
    {
        if let Some(e) = end.as_mut() {
            if picks >> (62 + n) & 1 == 1 {
                e.ip = ip;
            }
        }
    }
    b
}
