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
