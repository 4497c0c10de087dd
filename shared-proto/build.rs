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
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
