//! Generates Rust types and tonic services from `proto/`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/clovisor/common/v1/point.proto",
        "proto/clovisor/capture/v1/capture.proto",
        "proto/clovisor/session/v1/session.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        // Payloads decode as slices of the received buffer (no copy) and are shared, not cloned.
        .bytes(".clovisor.capture.v1.Message.payload")
        .bytes(".clovisor.capture.v1.Segment.payload")
        // Each session's encoding as it arrived: the correlator keeps it for retained exchanges.
        .bytes(".clovisor.session.v1.SessionBatch.sessions")
        // An end's address is the flow's, shared by every session of the flow (a reference
        // count) instead of copied into each: two allocations fewer per view in the collector.
        .bytes(".clovisor.session.v1.Endpoint.ip")
        // A session carries one protocol's part at most: the others stay a pointer wide, so a
        // session (moved through every stage) is about half the size it would be.
        .boxed(".clovisor.session.v1.Session.grpc")
        .boxed(".clovisor.session.v1.Session.dns")
        .boxed(".clovisor.session.v1.Session.database")
        .boxed(".clovisor.session.v1.Session.kafka")
        .boxed(".clovisor.session.v1.Session.analyzer")
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
