//! The JSON shape of a session in the REST API.

use clovisor_proto::dns::{class_label, rcode_label, type_label};
use clovisor_proto::kafka::{api_label, error_label};
use clovisor_proto::session::v1::{
    Dns, DnsTransport, Endpoint, Kafka, Observation, Protocol, TraceFormat,
};
use serde::Serialize;
use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::record::CorrelatedSession;
use crate::view::{endpoint_ip, http_version, redact_query, split_target};

/// RFC 3339 in UTC with all nine fractional digits, so ordering by string is ordering by time.
const RFC3339_NANOS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");

/// Formats Unix nanoseconds as RFC 3339; `None` for 0 (not observed).
pub fn rfc3339(nanos: u64) -> Option<String> {
    if nanos == 0 {
        return None;
    }
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .ok()?
        .format(RFC3339_NANOS)
        .ok()
}

/// One end of the exchange.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointJson {
    /// IPv4 or IPv6 address.
    pub ip: Option<String>,
    /// TCP port.
    pub port: u32,
    /// Pod name, when known.
    pub pod: Option<String>,
    /// Namespace, when known.
    pub namespace: Option<String>,
    /// Node, when known.
    pub node: Option<String>,
    /// Owning workload (Deployment, StatefulSet, …), when known.
    pub workload: Option<String>,
    /// The Kubernetes Service: the one selecting the pod (the first by name when several
    /// do), or the one whose ClusterIP the address is; absent when none.
    pub service: Option<String>,
}

/// What one observation point saw.
#[derive(Debug, Serialize, ToSchema)]
pub struct ObservationJson {
    /// `pod`, `node` or `socket`.
    pub point: &'static str,
    /// Interface the point is attached to.
    pub interface: Option<String>,
    /// Node of the point.
    pub node: Option<String>,
    /// `client` or `server` end, when known.
    pub side: Option<String>,
    /// First request byte seen.
    pub request_start: Option<String>,
    /// Last request byte seen.
    pub request_end: Option<String>,
    /// First response byte seen.
    pub response_start: Option<String>,
    /// Last response byte seen.
    pub response_end: Option<String>,
    /// Request payload bytes this point counted.
    pub request_bytes: u64,
    /// Response payload bytes this point counted.
    pub response_bytes: u64,
    /// Request packets this point counted (0 at a socket).
    pub request_packets: u64,
    /// Response packets this point counted (0 at a socket).
    pub response_packets: u64,
    /// Retransmitted segments this point saw.
    pub retransmits: u32,
    /// TCP sequence number of the first request byte (the same at every point of one exchange).
    pub request_tcp_seq: u32,
    /// TCP sequence number of the first response byte.
    pub response_tcp_seq: u32,
    /// Socket point: the process id of the application.
    pub pid: Option<u32>,
    /// Socket point: the application's command name.
    pub comm: Option<String>,
    /// Socket point: inode of the application's network namespace.
    pub netns_inode: Option<u64>,
}

/// Decoded HTTP fields.
#[derive(Debug, Serialize, ToSchema)]
pub struct HttpJson {
    /// Request method.
    pub method: String,
    /// Path of the request target.
    pub path: String,
    /// Query of the request target, when present.
    pub query: Option<String>,
    /// `Host` header.
    pub host: Option<String>,
    /// `User-Agent` header.
    pub user_agent: Option<String>,
    /// Response status code; `None` when no response was seen.
    pub status_code: Option<u32>,
    /// HTTP version, e.g. `1.1`.
    pub version: Option<String>,
    /// `x-request-id` header.
    pub request_id: Option<String>,
    /// Envoy decorator (`x-envoy-decorator-operation`).
    pub envoy_decorator: Option<String>,
}

/// Database fields (Redis, PostgreSQL, MySQL). The statement was sanitized in the collector.
#[derive(Debug, Serialize, ToSchema)]
pub struct DatabaseJson {
    /// `redis`, `postgresql`, `mysql`.
    pub system: String,
    /// The command or SQL operation (`GET`, `SELECT`, `CREATE TABLE`).
    pub operation: Option<String>,
    /// The statement, literals replaced by `?` (Redis: command, key, a `?` per argument).
    pub statement: Option<String>,
    /// The statement was cut at the capture limit.
    pub statement_truncated: bool,
    /// Redis: the first key.
    pub key: Option<String>,
    /// The database (PostgreSQL, MySQL).
    pub namespace: Option<String>,
    /// The user the connection logged in as.
    pub user: Option<String>,
    /// Rows returned or affected, when the response said.
    pub rows: Option<u64>,
    /// SQLSTATE (PostgreSQL), error number (MySQL), error prefix (Redis).
    pub error_code: Option<String>,
    /// The server's error message.
    pub error_message: Option<String>,
    /// MySQL: the SQLSTATE of an error.
    pub sql_state: Option<String>,
    /// Redis: the reply's RESP type.
    pub reply_type: Option<String>,
    /// The response was cut at the capture limit before what it says was read.
    pub response_truncated: bool,
}

/// What a user analyzer found (docs/analyzers.md).
#[derive(Debug, Serialize, ToSchema)]
pub struct AnalyzerJson {
    /// The analyzer's protocol name (also the session's `protocol`).
    pub name: String,
    /// The fields it returned for the request and the response, by key.
    pub fields: std::collections::BTreeMap<String, String>,
}

/// Decoded gRPC fields.
#[derive(Debug, Serialize, ToSchema)]
pub struct GrpcJson {
    /// Fully qualified service, e.g. `helloworld.Greeter`.
    pub service: String,
    /// Method, e.g. `SayHello`.
    pub method: String,
    /// `grpc-status`; `None` when no status was seen.
    pub status_code: Option<u32>,
    /// `grpc-message`, decoded.
    pub message: Option<String>,
}

/// Decoded DNS fields.
#[derive(Debug, Serialize, ToSchema)]
pub struct DnsJson {
    /// Message id shared by the query and its answer.
    pub id: u32,
    /// The name asked about, without the trailing dot.
    pub question_name: String,
    /// `A`, `AAAA`, `PTR`, …, or `TYPE<n>` for a type without a mnemonic.
    pub question_type: String,
    /// `IN`, …, or `CLASS<n>`.
    pub question_class: String,
    /// `NOERROR`, `NXDOMAIN`, `SERVFAIL`, …, or `RCODE<n>`; `None` when no answer was seen.
    pub response_code: Option<String>,
    /// Records in the answer section; `None` when no answer was seen.
    pub answer_count: Option<u32>,
    /// Addresses of the first A/AAAA answers.
    pub answers: Vec<String>,
    /// The answer was truncated (TC): the client retries over TCP.
    pub truncated: bool,
    /// `udp` or `tcp`.
    pub transport: Option<&'static str>,
    /// The query asked for recursion.
    pub recursion_desired: bool,
    /// The answer offered recursion.
    pub recursion_available: bool,
    /// The answer was authoritative.
    pub authoritative: bool,
}

fn dns(d: &Dns, incomplete: bool) -> DnsJson {
    DnsJson {
        id: d.id,
        question_name: d.question_name.clone(),
        question_type: type_label(d.question_type),
        question_class: class_label(d.question_class),
        response_code: (!incomplete).then(|| rcode_label(d.response_code)),
        answer_count: (!incomplete).then_some(d.answer_count),
        answers: d.answers().map(|a| a.to_string()).collect(),
        truncated: d.truncated,
        transport: DnsTransport::try_from(d.transport)
            .ok()
            .and_then(DnsTransport::short_name),
        recursion_desired: d.recursion_desired,
        recursion_available: d.recursion_available,
        authoritative: d.authoritative,
    }
}

/// Decoded Kafka fields.
#[derive(Debug, Serialize, ToSchema)]
pub struct KafkaJson {
    /// The request's API key (0 Produce, 1 Fetch, 3 Metadata, …).
    pub api_key: u32,
    /// Its name (`Produce`, …, or `ApiKey<n>`).
    pub api_name: String,
    /// The request's version of the API.
    pub api_version: u32,
    /// Pairs the request with its response.
    pub correlation_id: i32,
    /// The client's `client.id`.
    pub client_id: Option<String>,
    /// Produce, Fetch, Metadata: the first topic named.
    pub topic: Option<String>,
    /// How many topics the request names, when read.
    pub topic_count: Option<u32>,
    /// The response's error code; `None` when not seen or not read for this API.
    pub error_code: Option<i32>,
    /// Its name (`NONE`, `UNKNOWN_TOPIC_OR_PARTITION`, …, or `ERROR<n>`).
    pub error_name: Option<String>,
    /// The request was cut at the capture limit before its topic.
    pub request_truncated: bool,
    /// The response was cut at the capture limit before its error code.
    pub response_truncated: bool,
}

fn kafka(k: &Kafka) -> KafkaJson {
    KafkaJson {
        api_key: k.api_key,
        api_name: api_label(k.api_key),
        api_version: k.api_version,
        correlation_id: k.correlation_id,
        client_id: opt(&k.client_id),
        topic: opt(&k.topic),
        topic_count: k.topic_count,
        error_code: k.error_code,
        error_name: k.error_code.map(error_label),
        request_truncated: k.request_truncated,
        response_truncated: k.response_truncated,
    }
}

/// A request/response pair of counters.
#[derive(Debug, Serialize, ToSchema)]
pub struct CountersJson {
    /// Client to server.
    pub request: u64,
    /// Server to client.
    pub response: u64,
}

/// Where the session sits in a trace.
#[derive(Debug, Serialize, ToSchema)]
pub struct TraceJson {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// Our span's id, 16 lowercase hex digits.
    pub span_id: String,
    /// The caller's span id seen on the wire.
    pub parent_span_id: Option<String>,
    /// `x-request-id`, when present.
    pub request_id: Option<String>,
    /// `w3c`, `b3`, `b3-single`, or `None` when the trace was started here.
    pub format: Option<&'static str>,
}

/// A session as the REST API returns it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionJson {
    /// Session id.
    pub id: String,
    /// `http/1.1`, `http/2`, `grpc`, `dns`, `redis`, …
    pub protocol: String,
    /// Request start.
    pub start_time: Option<String>,
    /// Response end (or last activity when incomplete).
    pub end_time: Option<String>,
    /// `end - start` in nanoseconds.
    pub duration_ns: u64,
    /// Client end.
    pub client: Option<EndpointJson>,
    /// Server end.
    pub server: Option<EndpointJson>,
    /// Every point that saw the exchange.
    pub observations: Vec<ObservationJson>,
    /// HTTP fields, when decoded.
    pub http: Option<HttpJson>,
    /// Database fields, when decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseJson>,
    /// gRPC fields, for a gRPC call.
    pub grpc: Option<GrpcJson>,
    /// DNS fields, when decoded.
    pub dns: Option<DnsJson>,
    /// A user analyzer's fields, for its protocol.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analyzer: Option<AnalyzerJson>,
    /// Kafka fields, when decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaJson>,
    /// Byte counts.
    pub bytes: CountersJson,
    /// Packet counts.
    pub packets: CountersJson,
    /// Trace placement.
    pub trace: TraceJson,
    /// No response was seen.
    pub incomplete: bool,
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn endpoint(e: &Endpoint) -> EndpointJson {
    EndpointJson {
        ip: endpoint_ip(e).map(|ip| ip.to_string()),
        port: e.port,
        pod: opt(&e.pod),
        namespace: opt(&e.namespace),
        node: opt(&e.node),
        workload: opt(&e.workload),
        service: opt(&e.service),
    }
}

fn observation(o: &Observation) -> ObservationJson {
    ObservationJson {
        point: o.kind().short_name(),
        interface: opt(&o.interface),
        node: opt(&o.node),
        side: o.side().short_name().map(str::to_owned),
        request_start: rfc3339(o.request_start_unix_nanos),
        request_end: rfc3339(o.request_end_unix_nanos),
        response_start: rfc3339(o.response_start_unix_nanos),
        response_end: rfc3339(o.response_end_unix_nanos),
        request_bytes: o.request_bytes,
        response_bytes: o.response_bytes,
        request_packets: o.request_packets,
        response_packets: o.response_packets,
        retransmits: o.retransmits,
        request_tcp_seq: o.request_tcp_seq,
        response_tcp_seq: o.response_tcp_seq,
        pid: (o.pid != 0).then_some(o.pid),
        comm: opt(&o.comm),
        netns_inode: (o.netns_inode != 0).then_some(o.netns_inode),
    }
}

impl From<&CorrelatedSession> for SessionJson {
    fn from(rec: &CorrelatedSession) -> Self {
        let s = &rec.session;
        let protocol = match Protocol::try_from(s.protocol) {
            Ok(Protocol::Http1) => {
                let v = s.http.as_ref().map_or("", |h| h.version.as_str());
                format!("http/{}", http_version(v))
            }
            Ok(Protocol::Http2) => "http/2".to_owned(),
            Ok(Protocol::Grpc) => "grpc".to_owned(),
            Ok(Protocol::Redis) => "redis".to_owned(),
            Ok(Protocol::Postgresql) => "postgresql".to_owned(),
            Ok(Protocol::Mysql) => "mysql".to_owned(),
            Ok(Protocol::Dns) => "dns".to_owned(),
            Ok(Protocol::Analyzer) => s
                .analyzer
                .as_ref()
                .map_or_else(|| "analyzer".to_owned(), |a| a.name.clone()),
            Ok(Protocol::Kafka) => "kafka".to_owned(),
            _ => "unknown".to_owned(),
        };
        let database = s.database.as_ref().map(|d| DatabaseJson {
            system: d.system.clone(),
            operation: opt(&d.operation),
            statement: opt(&d.statement),
            statement_truncated: d.statement_truncated,
            key: opt(&d.key),
            namespace: opt(&d.namespace),
            user: opt(&d.user),
            rows: d.rows,
            error_code: opt(&d.error_code),
            error_message: opt(&d.error_message),
            sql_state: opt(&d.sql_state),
            reply_type: opt(&d.reply_type),
            response_truncated: d.response_truncated,
        });
        let http = s.http.as_ref().map(|h| {
            let (path, query) = split_target(&h.target);
            HttpJson {
                method: h.method.clone(),
                path: path.to_owned(),
                // Same redaction as spans: the API must not be a way around it.
                query: query.map(redact_query),
                host: opt(&h.host),
                user_agent: opt(&h.user_agent),
                status_code: (h.status_code != 0).then_some(h.status_code),
                version: opt(&h.version).map(|v| http_version(&v).to_owned()),
                request_id: opt(&h.request_id),
                envoy_decorator: opt(&h.envoy_decorator),
            }
        });
        let format = rec
            .wire_trace()
            .and_then(|t| match TraceFormat::try_from(t.format) {
                Ok(TraceFormat::W3c) => Some("w3c"),
                Ok(TraceFormat::B3Multi) => Some("b3"),
                Ok(TraceFormat::B3Single) => Some("b3-single"),
                _ => None,
            });
        let bytes = s.bytes.unwrap_or_default();
        let packets = s.packets.unwrap_or_default();
        Self {
            id: rec.id.clone(),
            protocol,
            start_time: rfc3339(s.start_unix_nanos),
            end_time: rfc3339(s.end_unix_nanos),
            duration_ns: s.end_unix_nanos.saturating_sub(s.start_unix_nanos),
            client: s.client.as_ref().map(endpoint),
            server: s.server.as_ref().map(endpoint),
            observations: s.observations.iter().map(observation).collect(),
            http,
            database,
            grpc: s.grpc.as_ref().map(|g| GrpcJson {
                service: g.service.clone(),
                method: g.method.clone(),
                status_code: g.status_code,
                message: opt(&g.message),
            }),
            dns: s.dns.as_ref().map(|d| dns(d, s.incomplete)),
            analyzer: s.analyzer.as_ref().map(|a| AnalyzerJson {
                name: a.name.clone(),
                fields: a
                    .fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            }),
            kafka: s.kafka.as_deref().map(kafka),
            bytes: CountersJson {
                request: bytes.request,
                response: bytes.response,
            },
            packets: CountersJson {
                request: packets.request,
                response: packets.response,
            },
            trace: TraceJson {
                trace_id: rec.trace_id.to_string(),
                span_id: rec.span_id.to_string(),
                parent_span_id: rec.parent_span_id.map(|p| p.to_string()),
                request_id: s.http.as_ref().and_then(|h| opt(&h.request_id)),
                format,
            },
            incomplete: s.incomplete,
        }
    }
}
