//! Replaying capture files as probe records.

pub mod pcap;
