//! Tests of the merge rules shared with the collector (`clovisor_proto::join::merge`), here
//! where the session builder is.

use crate::testing::SessionBuilder;
use clovisor_proto::common::v1::Side;
use clovisor_proto::join::merge::*;
use clovisor_proto::session::v1::Protocol;

#[test]
fn server_veth_endpoint_wins_and_counters_come_from_the_client_veth() {
    let mut client_side = SessionBuilder::new("c")
        .side(Side::Client)
        .with(|s| {
            if let Some(srv) = s.server.as_mut() {
                // A service address, as seen before DNAT.
                srv.ip = vec![10, 96, 0, 10].into();
                srv.port = 80;
                srv.pod.clear();
            }
            s.bytes.get_or_insert_with(Default::default).request = 7;
        })
        .build();
    let server_side = SessionBuilder::new("s").side(Side::Server).build();
    merge(&mut client_side, server_side);
    let srv = client_side.server.clone().unwrap_or_default();
    assert_eq!(
        (srv.ip.to_vec(), srv.port, srv.pod.as_str()),
        (vec![10, 0, 0, 2], 8080, "web-0"),
        "the server endpoint must be the pod the server veth saw"
    );
    assert_eq!(
        client_side.bytes.map(|b| b.request),
        Some(7),
        "counters stay those of the client veth"
    );
    assert_eq!(client_side.observations.len(), 2);
}

#[test]
fn a_response_seen_elsewhere_completes_the_exchange() {
    let mut a = SessionBuilder::new("a").incomplete().build();
    let b = SessionBuilder::new("b").status(503).build();
    merge(&mut a, b);
    assert!(!a.incomplete);
    assert_eq!(a.http.map(|h| h.status_code), Some(503));
}

#[test]
fn a_point_that_told_a_grpc_call_apart_completes_one_that_could_not() {
    let call = SessionBuilder::new("socket").grpc("helloworld.Greeter", "SayHello", 5, "no");
    let mut veth = call.clone().build();
    veth.protocol = Protocol::Http2 as i32;
    veth.grpc = None;
    let call = call.build();
    assert!(compatible(&veth, &call) && compatible(&call, &veth));
    merge(&mut veth, call);
    assert_eq!(veth.protocol, Protocol::Grpc as i32);
    assert_eq!(veth.grpc.and_then(|g| g.status_code), Some(5));
    let mut http1 = SessionBuilder::new("h1").build();
    http1.protocol = Protocol::Http1 as i32;
    let call = SessionBuilder::new("c").grpc("a.B", "C", 0, "").build();
    assert!(!compatible(&http1, &call), "HTTP/1 is never a gRPC call");
}

#[test]
fn conflicting_fields_are_incompatible() {
    let base = SessionBuilder::new("a");
    let a = base.clone().request_id("r1").trace([9; 16], [2; 8]).build();
    assert!(
        compatible(&a, &base.clone().build()),
        "fields one side lacks never conflict"
    );
    for (what, other) in [
        ("method", base.clone().method("POST")),
        ("target", base.clone().target("/other")),
        ("request id", base.clone().request_id("r2")),
        ("status", base.clone().status(500)),
        ("trace id", base.clone().trace([1; 16], [2; 8])),
    ] {
        assert!(
            !compatible(&a, &other.build()),
            "a different {what} must never be merged"
        );
    }
}

#[test]
fn a_whole_database_result_completes_one_cut_at_the_capture() {
    use clovisor_proto::session::v1::Database;
    let db = |rows: Option<u64>, cut: bool| {
        Box::new(Database {
            system: "postgresql".into(),
            operation: "SELECT".into(),
            statement: "SELECT generate_series(?, ?)".into(),
            rows,
            response_truncated: cut,
            ..Database::default()
        })
    };
    let mut veth = SessionBuilder::new("veth").build();
    veth.protocol = Protocol::Postgresql as i32;
    veth.http = None;
    veth.database = Some(db(None, true));
    let mut socket = veth.clone();
    socket.database = Some(db(Some(5000), false));
    assert!(compatible(&veth, &socket));
    let mut cut_first = veth.clone();
    merge(&mut cut_first, socket.clone());
    assert_eq!(cut_first.database, Some(db(Some(5000), false)));
    // The whole one first: the cut one adds nothing.
    let mut whole_first = socket;
    merge(&mut whole_first, veth);
    assert_eq!(whole_first.database, Some(db(Some(5000), false)));
}
