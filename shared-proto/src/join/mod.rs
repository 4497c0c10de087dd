//! What makes two sessions views of one exchange, and how they merge: the rules the correlator's
//! join applies across probes, and the collector's local join applies to the views one probe
//! sent (its pod veth and the socket of the same connection) before they leave the collector.

pub mod key;
pub mod merge;
