//! Replaying capture files as probe records.

pub mod pcap;

use std::sync::Arc;
use std::time::Instant;

use clovisor_proto::capture::v1::Record;
use clovisor_proto::session::v1::Session;

use crate::flows::{FlowTable, FlowTableConfig};
use crate::CollectorMetrics;

/// The sessions a collector with the default flow table and decoders makes of `records` (one
/// probe's, in order): what a capture decodes to.
pub fn sessions(records: Vec<Record>) -> Vec<Session> {
    let mut table = FlowTable::new(
        FlowTableConfig::default(),
        Arc::new(CollectorMetrics::new()),
    );
    let mut out = Vec::new();
    let now = Instant::now();
    for r in records {
        table.ingest("replay", r, now, &mut out);
    }
    out
}
