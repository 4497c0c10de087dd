//! Exchanges counted by protocol, as the decode benchmark (`collector/examples/decode_bench.rs`)
//! reports them: one row per protocol, DNS split by transport, HTTP/1.0 and 1.1 together.
//!
//! The benchmark times each protocol on its own by replaying only the records of the flows that
//! protocol decoded ([`split`]); `cli/tests/decode.rs` holds these counts to what `clovisor
//! decode` prints for the same captures.

use std::collections::BTreeMap;

use clovisor_proto::capture::v1::{record, Record};
use clovisor_proto::session::v1::{DnsTransport, Protocol, Session};

/// The row of the flows no decoder made an exchange of (still replayed: the flow table's cost
/// of them is part of the total).
pub const UNDECODED: &str = "undecoded";

/// A session's row: `http/1`, `http/2`, `grpc`, `dns/udp`, `dns/tcp`, `redis`, `postgresql`,
/// `mysql`, `kafka`, `analyzer`, or `unknown`.
pub fn row(s: &Session) -> &'static str {
    match Protocol::try_from(s.protocol) {
        Ok(Protocol::Http1) => "http/1",
        Ok(Protocol::Http2) => "http/2",
        Ok(Protocol::Grpc) => "grpc",
        Ok(Protocol::Dns) => match s.dns.as_ref().map(|d| DnsTransport::try_from(d.transport)) {
            Some(Ok(DnsTransport::Tcp)) => "dns/tcp",
            _ => "dns/udp",
        },
        Ok(Protocol::Redis) => "redis",
        Ok(Protocol::Postgresql) => "postgresql",
        Ok(Protocol::Mysql) => "mysql",
        Ok(Protocol::Kafka) => "kafka",
        Ok(Protocol::Analyzer) => "analyzer",
        Ok(Protocol::Unspecified) | Err(_) => "unknown",
    }
}

/// Exchanges of one row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    /// Sessions (exchanges), with or without a response.
    pub exchanges: u64,
    /// Those with their response (not `incomplete`).
    pub complete: u64,
}

impl Count {
    /// Adds `other`'s exchanges.
    pub fn add(&mut self, other: Count) {
        self.exchanges += other.exchanges;
        self.complete += other.complete;
    }
}

/// `sessions` counted by [`row`].
pub fn count<'a>(sessions: impl IntoIterator<Item = &'a Session>) -> BTreeMap<&'static str, Count> {
    let mut rows: BTreeMap<&'static str, Count> = BTreeMap::new();
    for s in sessions {
        let c = rows.entry(row(s)).or_default();
        c.exchanges += 1;
        c.complete += u64::from(!s.incomplete);
    }
    rows
}

/// The flow a session was made from: its id is `<probe id>/<flow id in hex>/<position>`.
fn flow_of(session: &Session) -> Option<u64> {
    let mut parts = session.id.rsplitn(3, '/');
    let _position = parts.next()?;
    u64::from_str_radix(parts.next()?, 16).ok()
}

fn flow_id(r: &Record) -> Option<u64> {
    match r.kind.as_ref() {
        Some(record::Kind::Message(m)) => Some(m.flow_id),
        Some(record::Kind::FlowEnd(e)) => Some(e.flow_id),
        Some(record::Kind::FlowStart(f)) => Some(f.flow_id),
        _ => None,
    }
}

/// `records` (one probe's, in order) grouped by the row of the first session `sessions` (what
/// they decoded to) has from their flow, in their order; the flows without a session, and
/// records of no flow, under [`UNDECODED`]. Replayed alone, each group yields that row's
/// exchanges (a flow's exchanges depend on its own records only).
pub fn split(records: Vec<Record>, sessions: &[Session]) -> BTreeMap<&'static str, Vec<Record>> {
    let mut flows: BTreeMap<u64, &'static str> = BTreeMap::new();
    for s in sessions {
        if let Some(f) = flow_of(s) {
            flows.entry(f).or_insert_with(|| row(s));
        }
    }
    let mut groups: BTreeMap<&'static str, Vec<Record>> = BTreeMap::new();
    for r in records {
        let name = flow_id(&r)
            .and_then(|f| flows.get(&f).copied())
            .unwrap_or(UNDECODED);
        groups.entry(name).or_default().push(r);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use clovisor_proto::capture::v1::{FlowEnd, Message};
    use clovisor_proto::session::v1::Dns;

    fn session(id: &str, protocol: Protocol, dns: Option<DnsTransport>) -> Session {
        Session {
            id: id.to_owned(),
            protocol: protocol as i32,
            dns: dns.map(|t| {
                Dns {
                    transport: t as i32,
                    ..Dns::default()
                }
                .into()
            }),
            ..Session::default()
        }
    }

    fn message(flow_id: u64) -> Record {
        Record {
            kind: Some(record::Kind::Message(Message {
                flow_id,
                ..Message::default()
            })),
        }
    }

    #[test]
    fn rows_split_dns_by_transport() {
        let s = [
            session("p/1/0", Protocol::Dns, Some(DnsTransport::Udp)),
            session("p/2/0", Protocol::Dns, Some(DnsTransport::Tcp)),
            session("p/3/0", Protocol::Http1, None),
            Session {
                incomplete: true,
                ..session("p/3/2", Protocol::Http1, None)
            },
        ];
        let c = count(&s);
        assert_eq!(
            c.keys().copied().collect::<Vec<_>>(),
            ["dns/tcp", "dns/udp", "http/1"]
        );
        assert_eq!(
            c["http/1"],
            Count {
                exchanges: 2,
                complete: 1
            }
        );
    }

    #[test]
    fn split_groups_flows_by_their_first_session() {
        // Flow 0x1a made a Redis exchange, flow 2 none; an end record follows its flow.
        let sessions = [
            session("replay/1a/0", Protocol::Redis, None),
            session("replay/1a/2.1", Protocol::Redis, None),
        ];
        let end = Record {
            kind: Some(record::Kind::FlowEnd(FlowEnd {
                flow_id: 0x1a,
                ..FlowEnd::default()
            })),
        };
        let g = split(vec![message(0x1a), message(2), end.clone()], &sessions);
        assert_eq!(g["redis"], vec![message(0x1a), end]);
        assert_eq!(g[UNDECODED], vec![message(2)]);
        assert_eq!(g.len(), 2);
    }
}
