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

proptest! {
    #[test]
    fn any_session_is_encoded_as_prost_encodes_it(s in arb_session()) {
        prop_assert_eq!(ours(&s), s.encode_to_vec());
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
    head(&s, &mut len);
    assert!(len.lens.len() > 5, "every message measured: {:?}", len.lens);
    let mut out = vec![0; expected.len()];
    let mut w = Write {
        out: &mut out,
        at: 0,
        lens: [].iter(),
    };
    head(&s, &mut w);
    let at = w.at;
    assert_eq!(
        out.get(..at),
        expected.get(..at),
        "the fields before the attributes"
    );
}
