//! Replaying capture files as probe records, and decoding them offline (`clovisor decode`).
//!
//! [`pcap`] turns a capture's packets into the records a probe would have sent; [`Sessions`]
//! runs records through the collector's own flow table and decoders, so a capture decodes
//! exactly as the same traffic traced live does.

pub mod by_protocol;
pub mod pcap;

use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use std::collections::BTreeSet;

use clovisor_proto::capture::v1::{ObservationPoint, ProtocolHint, Record};
use clovisor_proto::common::v1::PointKind;
use clovisor_proto::session::v1::Session;

use crate::error::Result;
use crate::flows::{Collected, FlowTable, FlowTableConfig};
use crate::server::inbound::Batch;
use crate::CollectorMetrics;
use pcap::{ReplayConfig, ReplayStats};

/// The probe id replayed records are ingested under (the first part of a session id).
pub const PROBE_ID: &str = "replay";

/// Server ports `clovisor decode` traces when none are given: the usual ports of the protocols
/// the collector decodes.
pub const DECODE_PORTS: [u16; 12] = [
    53, 80, 3000, 3306, 5000, 5432, 6379, 8000, 8080, 8888, 9092, 50051,
];

impl ReplayConfig {
    /// How `clovisor decode` replays a capture (and so the decode benchmark): a packet to or from
    /// one of `ports` ([`DECODE_PORTS`] when empty) is traced, that end being the server; content
    /// decides the protocol, as live for a port without an Istio name (no hint); each message
    /// keeps `snaplen` bytes; the points are node points named `interface`.
    pub fn decode(ports: &[u16], snaplen: u32, interface: String) -> Self {
        let traced_ports: BTreeSet<u16> = if ports.is_empty() {
            DECODE_PORTS.into_iter().collect()
        } else {
            ports.iter().copied().collect()
        };
        Self {
            traced_ports,
            snaplen,
            point: ObservationPoint {
                kind: PointKind::Node as i32,
                interface,
                ..ObservationPoint::default()
            },
            hint: ProtocolHint::Unspecified,
            ..Self::default()
        }
    }
}

/// A collector's flow table with the default limits and decoders, taking one probe's records in
/// order and handing on each session as soon as it is made.
#[derive(Debug)]
pub struct Sessions {
    table: FlowTable,
    metrics: Arc<CollectorMetrics>,
    out: Vec<Collected>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new()
    }
}

impl Sessions {
    /// An empty table.
    pub fn new() -> Self {
        let metrics = Arc::new(CollectorMetrics::new());
        Self {
            table: FlowTable::new(FlowTableConfig::default(), Arc::clone(&metrics)),
            metrics,
            out: Vec::new(),
        }
    }

    /// Loads the user analyzer `module` (`.wasm` or `.wat` bytes) under the protocol name
    /// `name`, as `clovisor_proto_cfg` does live (`clovisor decode --analyzer NAME=MODULE`).
    pub fn load_analyzer(
        &self,
        name: &str,
        module: &[u8],
    ) -> std::result::Result<(), crate::decode::analyzer::runtime::LoadError> {
        self.table
            .decoders()
            .analyzers()
            .load(name, module)
            .map(|_| ())
    }

    /// Applies `record`, handing `emit` the sessions it finished.
    pub fn record(&mut self, record: Record, emit: &mut impl FnMut(Session)) {
        self.table
            .ingest(PROBE_ID, record, Instant::now(), &mut self.out);
        for s in self.out.drain(..) {
            emit(s.into_session());
        }
    }

    /// Applies the records of an encoded batch as the collector's service does: decoded one at
    /// a time into one place, at one instant; `adjust` sees each record before the table does.
    /// Stops at the first record that does not decode.
    pub fn batch(
        &mut self,
        batch: &Batch,
        mut adjust: impl FnMut(&mut Record),
        emit: &mut impl FnMut(Session),
    ) -> std::result::Result<(), crate::server::inbound::RecordError> {
        let now = Instant::now();
        let mut records = batch.records();
        let mut slot = Record::default();
        let mut taken = Ok(());
        while let Some(decoded) = records.next_into(&mut slot) {
            if let Err(e) = decoded {
                taken = Err(e);
                break;
            }
            adjust(&mut slot);
            self.table
                .ingest_in_place(PROBE_ID, &mut slot, now, &mut self.out);
            for s in self.out.drain(..) {
                emit(s.into_session());
            }
        }
        self.table.publish_counts();
        taken
    }

    /// Flows open in the table (a capture whose flows all ended leaves none).
    pub fn open_flows(&self) -> usize {
        self.table.len()
    }

    /// The collector's counters (decode errors, unsupported flows, desyncs, drops).
    pub fn metrics(&self) -> &CollectorMetrics {
        &self.metrics
    }
}

/// The sessions a collector with the default flow table and decoders makes of `records` (one
/// probe's, in order): what a capture decodes to.
pub fn sessions(records: Vec<Record>) -> Vec<Session> {
    let mut table = Sessions::new();
    let mut out = Vec::new();
    for r in records {
        table.record(r, &mut |s| out.push(s));
    }
    out
}

/// Decodes the capture read from `input` as [`pcap::replay_reader`] reads it, through `table`
/// (e.g. [`Sessions::new`], with analyzers loaded), handing `emit` each session as soon as the
/// capture's packets complete it: memory stays bounded by the replay's and the flow table's
/// limits, whatever the capture's length. Returns the replay's counters and the flow table (for
/// its counters).
pub fn decode_reader<R: Read + Send>(
    input: R,
    config: &ReplayConfig,
    mut table: Sessions,
    mut emit: impl FnMut(Session),
) -> Result<(ReplayStats, Sessions)> {
    let stats = pcap::replay_reader(input, config, |r| table.record(r, &mut emit))?;
    Ok((stats, table))
}
