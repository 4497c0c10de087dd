//! Answers over a window of the analytics: services with their edges, group-by statistics and
//! distinct values — plain data the REST API serialises.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{Cell, Key};

/// A field of a key, for grouping and for distinct values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// `namespace/service` of the server.
    Service,
    /// `namespace/workload` of the client.
    Client,
    /// The server's namespace.
    Namespace,
    /// Request path without query.
    Path,
    /// Response status (`0`: none seen).
    Status,
    /// Request method.
    Method,
    /// `User-Agent`.
    UserAgent,
    /// Protocol name.
    Protocol,
}

impl Field {
    /// Every field, by name.
    pub const ALL: [(&'static str, Field); 8] = [
        ("service", Field::Service),
        ("client", Field::Client),
        ("namespace", Field::Namespace),
        ("path", Field::Path),
        ("status", Field::Status),
        ("method", Field::Method),
        ("user_agent", Field::UserAgent),
        ("protocol", Field::Protocol),
    ];

    /// The field called `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("", |(n, _)| n)
    }

    /// Its value in `key`.
    pub fn of(self, key: &Key) -> String {
        match self {
            Field::Service => qualified(&key.namespace, &key.service),
            Field::Client => qualified(&key.client_namespace, &key.client),
            Field::Namespace => key.namespace.clone(),
            Field::Path => key.path.clone(),
            Field::Status => key.status.to_string(),
            Field::Method => key.method.clone(),
            Field::UserAgent => key.user_agent.clone(),
            Field::Protocol => key.protocol.clone(),
        }
    }
}

fn qualified(namespace: &str, name: &str) -> String {
    if namespace.is_empty() || namespace == super::OTHER {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    }
}

/// Parses a duration like `90s`, `5m`, `1h`, `250ms` (one number, one unit).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let digits = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let per = match unit {
        "ns" => Duration::from_nanos(1),
        "us" | "µs" => Duration::from_micros(1),
        "ms" => Duration::from_millis(1),
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return None,
    };
    per.checked_mul(u32::try_from(n).ok()?)
}

/// Latency figures in milliseconds; absent when no exchange had a response.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct LatencyMs {
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub avg: f64,
    /// Largest.
    pub max: f64,
    /// Median (histogram: within 6.25 %).
    pub p50: f64,
    /// 90th percentile (within 6.25 %).
    pub p90: f64,
    /// 99th percentile (within 6.25 %).
    pub p99: f64,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Requests, errors and latency, as answered.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Figures {
    /// Exchanges.
    pub requests: u64,
    /// Of which errors (5xx or no response).
    pub errors: u64,
    /// `errors / requests`.
    pub error_rate: f64,
    /// Latency of the exchanges with a response.
    pub latency_ms: Option<LatencyMs>,
}

impl From<&Cell> for Figures {
    fn from(c: &Cell) -> Self {
        let l = &c.latency;
        let latency_ms = match (l.min_ns(), l.avg_ns(), l.max_ns()) {
            (Some(min), Some(avg), Some(max)) => Some(LatencyMs {
                min: ms(min),
                avg: ms(avg),
                max: ms(max),
                p50: ms(l.quantile_ns(0.5).unwrap_or(max)),
                p90: ms(l.quantile_ns(0.9).unwrap_or(max)),
                p99: ms(l.quantile_ns(0.99).unwrap_or(max)),
            }),
            _ => None,
        };
        Self {
            requests: c.requests,
            errors: c.errors,
            error_rate: if c.requests == 0 {
                0.0
            } else {
                c.errors as f64 / c.requests as f64
            },
            latency_ms,
        }
    }
}

/// One end of a service-map edge.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Peer {
    /// Kubernetes Service (else workload, else pod, else address).
    pub name: String,
    /// Namespace, empty when unknown.
    pub namespace: String,
    /// Exchanges on the edge.
    pub requests: u64,
    /// Of which errors.
    pub errors: u64,
}

/// A service (or workload) seen serving or calling.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Service {
    /// Kubernetes Service (else workload, else pod, else address).
    pub name: String,
    /// Namespace, empty when unknown.
    pub namespace: String,
    /// Protocols it served.
    pub protocols: Vec<String>,
    /// What it served (zero requests when only seen calling).
    #[serde(flatten)]
    pub figures: Figures,
    /// Who called it.
    pub callers: Vec<Peer>,
    /// Whom it called.
    pub callees: Vec<Peer>,
}

type Id = (String, String);

fn peers(map: HashMap<Id, (u64, u64)>) -> Vec<Peer> {
    let mut v: Vec<Peer> = map
        .into_iter()
        .map(|((namespace, name), (requests, errors))| Peer {
            name,
            namespace,
            requests,
            errors,
        })
        .collect();
    v.sort_by(|a, b| {
        b.requests
            .cmp(&a.requests)
            .then_with(|| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
    });
    v
}

/// Every service seen in `cells`, sorted by namespace and name.
pub fn services(cells: &[(Arc<Key>, Cell)]) -> Vec<Service> {
    #[derive(Default)]
    struct Acc {
        protocols: BTreeSet<String>,
        served: Cell,
        callers: HashMap<Id, (u64, u64)>,
        callees: HashMap<Id, (u64, u64)>,
    }
    let mut acc: BTreeMap<Id, Acc> = BTreeMap::new();
    for (k, c) in cells {
        let server = (k.namespace.clone(), k.service.clone());
        let client = (k.client_namespace.clone(), k.client.clone());
        let s = acc.entry(server.clone()).or_default();
        s.protocols.insert(k.protocol.clone());
        s.served.merge(c);
        let edge = s.callers.entry(client.clone()).or_default();
        edge.0 = edge.0.saturating_add(c.requests);
        edge.1 = edge.1.saturating_add(c.errors);
        let edge = acc
            .entry(client)
            .or_default()
            .callees
            .entry(server)
            .or_default();
        edge.0 = edge.0.saturating_add(c.requests);
        edge.1 = edge.1.saturating_add(c.errors);
    }
    acc.into_iter()
        .map(|((namespace, name), a)| Service {
            name,
            namespace,
            protocols: a.protocols.into_iter().collect(),
            figures: Figures::from(&a.served),
            callers: peers(a.callers),
            callees: peers(a.callees),
        })
        .collect()
}

/// What to order groups by (always largest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Exchanges.
    Requests,
    /// Errors.
    Errors,
    /// Error rate.
    ErrorRate,
    /// Mean latency.
    Avg,
    /// Largest latency.
    Max,
    /// 99th percentile latency.
    P99,
}

impl Order {
    /// Names accepted by `order=`.
    pub const NAMES: &'static str = "requests, errors, error_rate, avg, max, p99";

    /// The order called `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "requests" => Self::Requests,
            "errors" => Self::Errors,
            "error_rate" => Self::ErrorRate,
            "avg" => Self::Avg,
            "max" => Self::Max,
            "p99" => Self::P99,
            _ => return None,
        })
    }

    fn value(self, f: &Figures) -> f64 {
        let l = f.latency_ms.as_ref();
        match self {
            Self::Requests => f.requests as f64,
            Self::Errors => f.errors as f64,
            Self::ErrorRate => f.error_rate,
            Self::Avg => l.map_or(-1.0, |l| l.avg),
            Self::Max => l.map_or(-1.0, |l| l.max),
            Self::P99 => l.map_or(-1.0, |l| l.p99),
        }
    }
}

/// One group of `/stats`.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Group {
    /// The group's value of each field grouped by.
    #[schema(value_type = BTreeMap<String, String>)]
    pub key: BTreeMap<&'static str, String>,
    /// Its figures.
    #[serde(flatten)]
    pub figures: Figures,
}

/// `cells` grouped by `fields`, ordered by `order` (ties by key), the first `limit`; also
/// returns how many groups there were in all.
pub fn stats(
    cells: &[(Arc<Key>, Cell)],
    fields: &[Field],
    order: Order,
    limit: usize,
) -> (Vec<Group>, usize) {
    let mut groups: HashMap<Vec<String>, Cell> = HashMap::new();
    for (k, c) in cells {
        let key = fields.iter().map(|f| f.of(k)).collect();
        groups.entry(key).or_default().merge(c);
    }
    let total = groups.len();
    let mut v: Vec<(Vec<String>, Figures)> = groups
        .into_iter()
        .map(|(k, c)| (k, Figures::from(&c)))
        .collect();
    v.sort_by(|a, b| {
        order
            .value(&b.1)
            .total_cmp(&order.value(&a.1))
            .then_with(|| a.0.cmp(&b.0))
    });
    let groups = v
        .into_iter()
        .take(limit)
        .map(|(k, figures)| Group {
            key: fields.iter().map(|f| f.name()).zip(k).collect(),
            figures,
        })
        .collect();
    (groups, total)
}

/// The distinct values of `field` in `cells`, sorted.
pub fn values(cells: &[(Arc<Key>, Cell)], field: Field) -> Vec<String> {
    cells
        .iter()
        .map(|(k, _)| field.of(k))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}
