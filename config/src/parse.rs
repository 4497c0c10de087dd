//! One parser per Redis key, and [`build`], which turns what Redis holds into a [`LiveConfig`]
//! plus the entries it rejected. A bad entry never spoils the others.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::keys;
use crate::model::{
    EgressRule, EgressTarget, LabelSelector, LiveConfig, DEFAULT_REDACTED_HEADERS, OTLP_GRPC_PORT,
};

/// Largest snaplen the kernel side accepts (`CLOVISOR_MAX_SNAPLEN` in `bpf/include/clovisor_abi.h`).
pub const MAX_SNAPLEN: u32 = 2048;

/// Why an entry was rejected; the message is written for the operator who typed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// Nothing but blanks.
    #[error("empty entry")]
    Empty,
    /// Wrong number of `:`-separated fields.
    #[error("expected {expected}")]
    Shape {
        /// The format the key takes.
        expected: &'static str,
    },
    /// A field is malformed.
    #[error("invalid {field} {value:?}: {why}")]
    Field {
        /// Which field (`namespace`, `port`, …).
        field: &'static str,
        /// What was given.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// The key holds a Redis type other than the one it is documented as.
    #[error("key holds a Redis {found}, expected a {expected}")]
    WrongType {
        /// Documented type (`list`, `string`, `hash`).
        expected: &'static str,
        /// Type found.
        found: String,
    },
    /// The entry's bytes are not UTF-8 text.
    #[error("not UTF-8 text")]
    NotUtf8,
    /// Well-formed, but outside what the operator allows (`CLOVISOR_ALLOWED_*`).
    #[error("{what} {value:?} is not in {allow_list}")]
    NotAllowed {
        /// What it is (`namespace`, `OTLP endpoint`).
        what: &'static str,
        /// The value.
        value: String,
        /// The allow-list's environment variable.
        allow_list: &'static str,
    },
}

impl Reject {
    /// Every value [`Reject::label`] takes.
    pub const LABELS: [&'static str; 6] = [
        "empty",
        "shape",
        "invalid_field",
        "wrong_type",
        "not_utf8",
        "not_allowed",
    ];

    /// The reason as a metric label: a fixed set.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Shape { .. } => "shape",
            Self::Field { .. } => "invalid_field",
            Self::WrongType { .. } => "wrong_type",
            Self::NotUtf8 => "not_utf8",
            Self::NotAllowed { .. } => "not_allowed",
        }
    }
}

/// Environment variable listing the namespaces `clovisor_labels` may select (comma-separated;
/// unset: any).
pub const ENV_ALLOWED_NAMESPACES: &str = "CLOVISOR_ALLOWED_NAMESPACES";
/// Environment variable listing the OTLP endpoints Redis may point span export at
/// (comma-separated URLs; unset: any).
pub const ENV_ALLOWED_OTLP_ENDPOINTS: &str = "CLOVISOR_ALLOWED_OTLP_ENDPOINTS";

/// What the operator allows the live configuration to ask for, set outside Redis (flags or
/// environment of the process): whoever can write Redis cannot widen it. `None`: no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Namespaces `clovisor_labels` entries may name.
    pub namespaces: Option<BTreeSet<String>>,
    /// OTLP endpoints (normalised as [`parse_otlp_endpoint`] makes them) span export may be
    /// pointed at.
    pub otlp_endpoints: Option<BTreeSet<String>>,
}

/// An allow-list that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {entry:?}: {why}")]
pub struct PolicyError {
    /// The environment variable.
    pub variable: &'static str,
    /// The entry.
    pub entry: String,
    /// What is wrong.
    pub why: Reject,
}

impl Policy {
    /// Parses the two allow-lists (comma-separated; `None` or blank: no limit). Every entry
    /// must be valid: an operator's typo is an error at start, not a silently wider list.
    pub fn parse(
        namespaces: Option<&str>,
        otlp_endpoints: Option<&str>,
    ) -> Result<Self, PolicyError> {
        fn list<T>(
            variable: &'static str,
            value: Option<&str>,
            parse: impl Fn(&str) -> Result<T, Reject>,
        ) -> Result<Option<BTreeSet<T>>, PolicyError>
        where
            T: Ord,
        {
            let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
                return Ok(None);
            };
            value
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(|e| {
                    parse(e).map_err(|why| PolicyError {
                        variable,
                        entry: e.to_owned(),
                        why,
                    })
                })
                .collect::<Result<BTreeSet<T>, _>>()
                .map(Some)
        }
        Ok(Self {
            namespaces: list(ENV_ALLOWED_NAMESPACES, namespaces, |e| {
                check_dns_label(e).map_err(|why| field("namespace", e, why))?;
                Ok(e.to_owned())
            })?,
            otlp_endpoints: list(
                ENV_ALLOWED_OTLP_ENDPOINTS,
                otlp_endpoints,
                parse_otlp_endpoint,
            )?,
        })
    }

    /// The allow-lists from [`ENV_ALLOWED_NAMESPACES`] and [`ENV_ALLOWED_OTLP_ENDPOINTS`].
    pub fn from_env() -> Result<Self, PolicyError> {
        let var = |name| std::env::var(name).ok();
        Self::parse(
            var(ENV_ALLOWED_NAMESPACES).as_deref(),
            var(ENV_ALLOWED_OTLP_ENDPOINTS).as_deref(),
        )
    }

    fn allows_namespace(&self, namespace: &str) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|allowed| allowed.contains(namespace))
    }

    fn allows_otlp(&self, endpoint: &str) -> bool {
        self.otlp_endpoints
            .as_ref()
            .is_none_or(|allowed| allowed.contains(endpoint))
    }
}

fn field(field: &'static str, value: &str, why: impl Into<String>) -> Reject {
    Reject::Field {
        field,
        value: value.to_owned(),
        why: why.into(),
    }
}

/// An entry that did not make it into the configuration.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rejection {
    /// Redis key it came from.
    pub key: &'static str,
    /// The entry as written (`field=value` for a hash).
    pub entry: String,
    /// Why, rendered.
    pub reason: String,
    /// Why, as a metric label ([`Reject::label`]).
    pub label: &'static str,
}

impl Rejection {
    /// `entry` of `key`, rejected for `why`.
    pub fn new(key: &'static str, entry: &str, why: &Reject) -> Self {
        Self {
            key,
            entry: entry.to_owned(),
            reason: why.to_string(),
            label: why.label(),
        }
    }
}

/// Longest part of a rejected entry written to the log.
const MAX_LOGGED_ENTRY: usize = 256;

/// Bytes of a Redis entry as text: valid UTF-8 as it is, anything else rejected
/// ([`Reject::NotUtf8`], the entry logged with its bytes escaped and cut) and left out.
pub fn text(key: &'static str, bytes: Vec<u8>, rejected: &mut Vec<Rejection>) -> Option<String> {
    match String::from_utf8(bytes) {
        Ok(s) => Some(s),
        Err(e) => {
            let bytes = e.as_bytes();
            let shown = &bytes[..bytes.len().min(MAX_LOGGED_ENTRY)];
            rejected.push(Rejection::new(
                key,
                &shown.escape_ascii().to_string(),
                &Reject::NotUtf8,
            ));
            None
        }
    }
}

/// What the Redis keys hold, unparsed. `None`/empty = key absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `clovisor_labels`
    pub labels: Vec<String>,
    /// `clovisor_egress_match`
    pub egress: Vec<String>,
    /// `clovior_egress_match` (historical misspelling)
    pub egress_misspelled: Vec<String>,
    /// `clovisor_jaeger_collector`
    pub jaeger_collector: Option<String>,
    /// `clovisor_jaeger_agent`
    pub jaeger_agent: Option<String>,
    /// `clovisor_otlp_endpoint`
    pub otlp_endpoint: Option<String>,
    /// `clovisor_snaplen`
    pub snaplen: Option<String>,
    /// `clovisor_redact_headers`
    pub redact_headers: Vec<String>,
    /// `clovisor_proto_cfg`
    pub proto_cfg: Vec<(String, String)>,
    /// Keys that hold the wrong Redis type, and entries that are not text.
    pub wrong_types: Vec<Rejection>,
}

/// Parses every key of `snap` within `policy`; returns the configuration made of the valid,
/// allowed entries and the rejected ones.
pub fn build(snap: &Snapshot, policy: &Policy) -> (LiveConfig, Vec<Rejection>) {
    let mut rejected = snap.wrong_types.clone();
    let mut reject = |key: &'static str, entry: &str, why: Reject| {
        rejected.push(Rejection::new(key, entry, &why));
    };
    let mut cfg = LiveConfig::default();

    let labels: BTreeSet<LabelSelector> = snap
        .labels
        .iter()
        .filter_map(|e| {
            parse_label(e)
                .and_then(|l| {
                    if policy.allows_namespace(&l.namespace) {
                        Ok(l)
                    } else {
                        Err(Reject::NotAllowed {
                            what: "namespace",
                            value: l.namespace,
                            allow_list: ENV_ALLOWED_NAMESPACES,
                        })
                    }
                })
                .map_err(|why| reject(keys::LABELS, e, why))
                .ok()
        })
        .collect();
    if !labels.is_empty() {
        cfg.labels = labels.into_iter().collect();
    } else {
        // Clovisor's default, only where the operator allows it: else nothing is traced.
        cfg.labels.retain(|l| policy.allows_namespace(&l.namespace));
    }

    let egress: BTreeSet<EgressRule> = [
        (keys::EGRESS_MATCH, &snap.egress),
        (keys::EGRESS_MATCH_MISSPELLED, &snap.egress_misspelled),
    ]
    .into_iter()
    .flat_map(|(key, entries)| entries.iter().map(move |e| (key, e)))
    .filter_map(|(key, e)| parse_egress(e).map_err(|why| reject(key, e, why)).ok())
    .collect();
    cfg.egress = egress.into_iter().collect();

    // The OTLP key wins over the legacy collector address, which wins over the agent's.
    let mut endpoint =
        |key: &'static str, value: &Option<String>, parse: fn(&str) -> Result<String, Reject>| {
            value.as_deref().and_then(|v| {
                parse(v)
                    .and_then(|url| {
                        if policy.allows_otlp(&url) {
                            Ok(url)
                        } else {
                            Err(Reject::NotAllowed {
                                what: "OTLP endpoint",
                                value: url,
                                allow_list: ENV_ALLOWED_OTLP_ENDPOINTS,
                            })
                        }
                    })
                    .map_err(|why| reject(key, v, why))
                    .ok()
            })
        };
    let otlp = endpoint(
        keys::OTLP_ENDPOINT,
        &snap.otlp_endpoint,
        parse_otlp_endpoint,
    );
    let collector = endpoint(keys::JAEGER_COLLECTOR, &snap.jaeger_collector, parse_jaeger);
    let agent = endpoint(keys::JAEGER_AGENT, &snap.jaeger_agent, parse_jaeger);
    cfg.otlp_endpoint = otlp.or(collector).or(agent);

    cfg.snaplen = snap.snaplen.as_deref().and_then(|v| {
        parse_snaplen(v)
            .map_err(|why| reject(keys::SNAPLEN, v, why))
            .ok()
    });

    let mut redacted: BTreeSet<String> = DEFAULT_REDACTED_HEADERS
        .iter()
        .map(|h| (*h).to_owned())
        .collect();
    for e in &snap.redact_headers {
        match parse_header_name(e) {
            Ok(h) => {
                redacted.insert(h);
            }
            Err(why) => reject(keys::REDACT_HEADERS, e, why),
        }
    }
    cfg.redacted_headers = redacted.into_iter().collect();

    let mut proto_cfg = BTreeMap::new();
    for (protocol, analyzer) in &snap.proto_cfg {
        match parse_proto_entry(protocol, analyzer) {
            Ok((p, a)) => {
                proto_cfg.insert(p, a);
            }
            Err(why) => reject(
                keys::PROTO_CFG,
                &format!("{protocol}={}", crate::source::describe_analyzer(analyzer)),
                why,
            ),
        }
    }
    cfg.proto_cfg = proto_cfg;

    rejected.sort();
    rejected.dedup();
    (cfg, rejected)
}

const LABELS_SHAPE: &str = "`namespace` or `namespace:label-key:label-value`";
const EGRESS_SHAPE: &str =
    "`ip:port` or `ip:port:pod-name-prefix` (ip `0` = any; IPv6 in brackets: `[2001:db8::1]:80`)";

/// `clovisor_labels` entry: `namespace[:label-key:label-value]`.
pub fn parse_label(entry: &str) -> Result<LabelSelector, Reject> {
    let entry = entry.trim();
    if entry.is_empty() {
        return Err(Reject::Empty);
    }
    let parts: Vec<&str> = entry.split(':').collect();
    let (namespace, label) = match parts.as_slice() {
        [ns] => (*ns, None),
        [ns, k, v] => (*ns, Some((*k, *v))),
        _ => {
            return Err(Reject::Shape {
                expected: LABELS_SHAPE,
            })
        }
    };
    check_dns_label(namespace).map_err(|why| field("namespace", namespace, why))?;
    let label = match label {
        None => None,
        Some((k, v)) => {
            check_label_key(k).map_err(|why| field("label key", k, why))?;
            if !v.is_empty() {
                check_label_name(v).map_err(|why| field("label value", v, why))?;
            }
            Some((k.to_owned(), v.to_owned()))
        }
    };
    Ok(LabelSelector {
        namespace: namespace.to_owned(),
        label,
    })
}

/// RFC 1123 label, as Kubernetes namespaces are.
fn check_dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("only lower-case letters, digits and '-' are allowed".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// Kubernetes label key: `[prefix/]name`, prefix a DNS subdomain.
fn check_label_key(s: &str) -> Result<(), String> {
    let name = match s.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() || prefix.len() > 253 {
                return Err("prefix must be 1 to 253 characters".into());
            }
            for part in prefix.split('.') {
                check_dns_label(part).map_err(|why| format!("prefix {prefix:?}: {why}"))?;
            }
            name
        }
        None => s,
    };
    check_label_name(name)
}

/// Label name or non-empty value: up to 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn check_label_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("only letters, digits, '-', '_' and '.' are allowed".into());
    }
    let alnum_end = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if !alnum_end(s.bytes().next()) || !alnum_end(s.bytes().last()) {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// `clovisor_egress_match` entry: `ip:port[:pod-name-prefix]`, IPv6 as `[addr]:port[:prefix]`,
/// ip `0` (or an unspecified address, `0.0.0.0`, `[::]`) = any destination.
pub fn parse_egress(entry: &str) -> Result<EgressRule, Reject> {
    let entry = entry.trim();
    if entry.is_empty() {
        return Err(Reject::Empty);
    }
    let (ip_text, rest) = if let Some(after) = entry.strip_prefix('[') {
        let (ip, rest) = after
            .split_once(']')
            .ok_or_else(|| field("address", entry, "'[' without a closing ']'".to_owned()))?;
        let rest = rest.strip_prefix(':').ok_or(Reject::Shape {
            expected: EGRESS_SHAPE,
        })?;
        (ip, rest)
    } else {
        let (ip, rest) = entry.split_once(':').ok_or(Reject::Shape {
            expected: EGRESS_SHAPE,
        })?;
        // An unbracketed IPv6 address: say how to write it rather than "bad port".
        if entry.contains("::") || rest.matches(':').count() > 1 {
            return Err(field(
                "address",
                entry,
                "IPv6 addresses are written in brackets, e.g. [2001:db8::1]:80",
            ));
        }
        (ip, rest)
    };
    let (port_text, prefix) = match rest.split_once(':') {
        Some((port, prefix)) => (port, Some(prefix)),
        None => (rest, None),
    };
    let ip = if ip_text == "0" {
        None
    } else {
        let ip: IpAddr = ip_text.parse().map_err(|_| {
            field(
                "address",
                ip_text,
                "not an IPv4 or IPv6 address (or 0 for any)",
            )
        })?;
        let ip = ip.to_canonical();
        (!ip.is_unspecified()).then_some(ip)
    };
    let port = match port_text.parse::<u16>() {
        Ok(0) | Err(_) => return Err(field("port", port_text, "must be 1 to 65535")),
        Ok(p) => p,
    };
    let pod_prefix = match prefix {
        None => None,
        Some("") => return Err(field("pod-name prefix", "", "empty after ':'")),
        Some(p) if p.len() > 253 => return Err(field("pod-name prefix", p, "longer than 253")),
        Some(p) if p.chars().any(|c| c.is_whitespace() || c == ':') => {
            return Err(field("pod-name prefix", p, "contains a blank or ':'"))
        }
        Some(p) => Some(p.to_owned()),
    };
    Ok(EgressRule {
        target: EgressTarget { ip, port },
        pod_prefix,
    })
}

/// `[scheme://]host[:port][/path]` taken apart; the host keeps IPv6 brackets.
struct Address<'a> {
    scheme: Option<&'a str>,
    host: &'a str,
    port: Option<u16>,
    path: &'a str,
}

fn split_address(s: &str) -> Result<Address<'_>, Reject> {
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, s),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = if authority.starts_with('[') {
        let end = authority
            .find(']')
            .ok_or_else(|| field("host", authority, "'[' without a closing ']'"))?;
        let host = &authority[..=end];
        match &authority[end + 1..] {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').unwrap_or(p))),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(field("host", s, "missing"));
    }
    if host.contains(char::is_whitespace) || host.contains('@') {
        return Err(field("host", host, "contains a blank or '@'"));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(field("port", p, "must be 1 to 65535")),
            Ok(p) => Some(p),
        },
    };
    Ok(Address {
        scheme,
        host,
        port,
        path,
    })
}

/// `clovisor_otlp_endpoint`: an OTLP/gRPC URL, `http(s)://host[:port]` (port 4317 when left
/// out; a bare `host[:port]` means `http://`).
pub fn parse_otlp_endpoint(value: &str) -> Result<String, Reject> {
    let value = value.trim();
    if value.is_empty() {
        return Err(Reject::Empty);
    }
    let Address {
        scheme,
        host,
        port,
        path,
    } = split_address(value)?;
    let scheme = scheme.unwrap_or("http");
    if scheme != "http" && scheme != "https" {
        return Err(field("scheme", scheme, "must be http or https"));
    }
    if !path.is_empty() && path != "/" {
        return Err(field("path", path, "an OTLP/gRPC endpoint has no path"));
    }
    Ok(format!(
        "{scheme}://{host}:{}",
        port.unwrap_or(OTLP_GRPC_PORT)
    ))
}

/// `clovisor_jaeger_collector` / `clovisor_jaeger_agent`: a legacy Jaeger address in any of its
/// usual forms (`http://jaeger-collector:14268/api/traces`, `jaeger-agent:6831`, `host`). Only
/// the host is kept: spans go to `http://<host>:4317`, Jaeger's OTLP/gRPC receiver.
pub fn parse_jaeger(value: &str) -> Result<String, Reject> {
    let value = value.trim();
    if value.is_empty() {
        return Err(Reject::Empty);
    }
    let host = split_address(value)?.host;
    Ok(format!("http://{host}:{OTLP_GRPC_PORT}"))
}

/// `clovisor_snaplen`: bytes of each message copied, 1 to 2048.
pub fn parse_snaplen(value: &str) -> Result<u32, Reject> {
    let value = value.trim();
    match value.parse::<u32>() {
        Ok(n) if (1..=MAX_SNAPLEN).contains(&n) => Ok(n),
        _ => Err(field(
            "snaplen",
            value,
            format!("must be a whole number from 1 to {MAX_SNAPLEN}"),
        )),
    }
}

/// `clovisor_redact_headers` entry: an HTTP header name (RFC 9110 token), any case.
pub fn parse_header_name(entry: &str) -> Result<String, Reject> {
    let entry = entry.trim();
    if entry.is_empty() {
        return Err(Reject::Empty);
    }
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !entry.bytes().all(token) {
        return Err(field(
            "header name",
            entry,
            "only letters, digits and !#$%&'*+-.^_`|~ are allowed",
        ));
    }
    Ok(entry.to_ascii_lowercase())
}

/// Longest `clovisor_proto_cfg` value: a module of 1 MiB (the collector's cap) in base64.
pub const MAX_ANALYZER_VALUE: usize = 4 * (1024 * 1024_usize).div_ceil(3);

/// `clovisor_proto_cfg` field: protocol name → analyzer module (an absolute path, or the
/// module in base64).
pub fn parse_proto_entry(protocol: &str, analyzer: &str) -> Result<(String, String), Reject> {
    let protocol = protocol.trim();
    let analyzer = analyzer.trim();
    if analyzer.len() > MAX_ANALYZER_VALUE {
        return Err(field(
            "analyzer",
            &format!("({} characters)", analyzer.len()),
            format!("longer than {MAX_ANALYZER_VALUE} characters (a 1 MiB module in base64)"),
        ));
    }
    if protocol.is_empty()
        || protocol.len() > 63
        || !protocol
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(field(
            "protocol",
            protocol,
            "must be a name of 1 to 63 letters, digits, '-', '_', '.'",
        ));
    }
    if analyzer.is_empty() || analyzer.contains(char::is_whitespace) {
        return Err(field(
            "analyzer",
            &crate::source::describe_analyzer(analyzer),
            "must be non-empty, without blanks",
        ));
    }
    Ok((protocol.to_ascii_lowercase(), analyzer.to_owned()))
}

#[cfg(test)]
mod tests;
