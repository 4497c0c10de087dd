//! Measures reassembly + HTTP/1.x decoding throughput: replays the HTTP captures in
//! `shared/testdata/pcap` (Chris Sanders' packets collection) into records once, then feeds them
//! through a `FlowTable` repeatedly (each round under fresh flow ids) and reports exchanges/s.
//!
//! `cargo run --release -p clovisor-collector --example decode_throughput [rounds]`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clovisor_collector::flows::{FlowTable, FlowTableConfig};
use clovisor_collector::replay::pcap::{replay_file, ReplayConfig};
use clovisor_collector::CollectorMetrics;
use clovisor_proto::capture::v1::record;

// The measured rate on stdout is this example's output.
#[allow(clippy::print_stdout)]
fn main() -> anyhow::Result<()> {
    let rounds: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2000);
    let dir = std::env::var_os("CLOVISOR_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"))
        .join("pcap");
    let mut records = Vec::new();
    for f in ["http_post", "http_google", "http_espn", "http_ip4and6"] {
        let r = replay_file(&dir.join(format!("{f}.pcapng")), &ReplayConfig::default())?;
        records.extend(r.records);
    }
    let metrics = Arc::new(CollectorMetrics::new());
    let mut table = FlowTable::new(FlowTableConfig::default(), Arc::clone(&metrics));
    let mut sessions = 0u64;
    let mut out = Vec::new();
    let start = Instant::now();
    for round in 0..rounds {
        for r in &records {
            let mut r = r.clone();
            // Fresh flow ids per round, so every round is new traffic.
            match r.kind.as_mut() {
                Some(record::Kind::Message(m)) => m.flow_id += round << 20,
                Some(record::Kind::FlowEnd(e)) => e.flow_id += round << 20,
                _ => {}
            }
            table.ingest("bench", r, start, &mut out);
        }
        sessions += out.len() as u64;
        out.clear();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} records x {rounds} rounds: {sessions} exchanges in {secs:.3}s = {:.0} exchanges/s ({:.0} records/s)",
        records.len(),
        sessions as f64 / secs,
        (records.len() as u64 * rounds) as f64 / secs
    );
    Ok(())
}
