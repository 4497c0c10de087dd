//! One OpenTelemetry span per session, named and attributed per the HTTP semantic conventions,
//! the RPC ones for gRPC, the database ones for Redis, PostgreSQL and MySQL sessions, DNS's
//! ([`dns_attributes`]) for a DNS session, and the messaging ones ([`kafka_attributes`]) for a
//! Kafka session.
//!
//! [`encode_span`] writes the span's protobuf bytes (OTLP `Span`) directly, from one small
//! function per attribute group: HTTP ([`http_attributes`]) or database ([`db_attributes`],
//! [`db_status`]), network and endpoints
//! ([`network_attributes`]), Kubernetes ([`k8s_attributes`]), Clovisor's own
//! ([`clovisor_attributes`]), the status ([`status`]) and one event per observation boundary
//! ([`observation_events`]). The values REST shows too (addresses, path and query, version) come
//! from [`crate::view`]. [`build_span`] is the same span decoded, for tests and readers that want
//! the struct; the exporter sends the bytes (see [`super::wire`] for why).
//!
//! Only the header values the conventions and Clovisor's historical tags name are copied:
//! `Host` (as `server.address`/`server.port`), `User-Agent`, `x-request-id` and the Envoy
//! decorator. Query values under well-known credential keys are replaced by `REDACTED`, and
//! the session's free-form attributes never reach a span, because either may carry secrets. A
//! user analyzer's fields do ([`analyzer_attributes`]), under `clovisor.analyzer.<name>.`: the
//! operator chose to load it and its author chose what it returns (docs/analyzers.md).

use std::net::IpAddr;

use clovisor_proto::common::v1::PointKind;
use clovisor_proto::dns::{class_label, rcode_label, type_label};
use clovisor_proto::kafka::{api_label, error_label, messaging_operation};
use clovisor_proto::session::v1::{
    Analyzer, Database, Dns, DnsTransport, Endpoint, Grpc, Http, Kafka, Observation, Session,
};
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{Span, SpanFlags};
use prost::Message as _;

use super::wire::{self, Attributes};
use crate::ids::SpanId;
use crate::record::CorrelatedSession;
use crate::view::{
    db_error_type, db_operation_label, endpoint_ip, http_version, observed_at_server, redact_query,
    split_host, split_target,
};

/// Name of the instrumentation scope and of `telemetry.sdk.name`.
pub const SCOPE_NAME: &str = "clovisor";

const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Fields of OTLP's `Span`, `Event` and `Status`.
mod field {
    pub const TRACE_ID: u32 = 1;
    pub const SPAN_ID: u32 = 2;
    pub const TRACE_STATE: u32 = 3;
    pub const PARENT_SPAN_ID: u32 = 4;
    pub const NAME: u32 = 5;
    pub const KIND: u32 = 6;
    pub const START: u32 = 7;
    pub const END: u32 = 8;
    pub const ATTRIBUTES: u32 = 9;
    pub const EVENTS: u32 = 11;
    pub const STATUS: u32 = 15;
    pub const FLAGS: u32 = 16;
    pub const EVENT_TIME: u32 = 1;
    pub const EVENT_NAME: u32 = 2;
    pub const EVENT_ATTRIBUTES: u32 = 3;
    pub const STATUS_CODE: u32 = 3;
}

fn s(key: &str, value: impl Into<String>) -> KeyValue {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::common::v1::AnyValue;
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// A counter as an attribute value (OTLP integers are signed).
fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The resource every span is reported under.
pub fn resource(service_name: &str, node_name: Option<&str>) -> Resource {
    let mut attributes = vec![
        s("service.name", service_name),
        s("telemetry.sdk.name", SCOPE_NAME),
        s("telemetry.sdk.language", "rust"),
        s("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
    ];
    if let Some(node) = node_name {
        attributes.push(s("k8s.node.name", node));
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

/// The service a span is reported under: its resource's `service.name` and
/// `service.namespace`. Empty: the exporter's own resource (`OTEL_SERVICE_NAME`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// `service.name`: the Kubernetes Service (else the workload, else the pod, else the
    /// address) of the end the span represents.
    pub name: String,
    /// `service.namespace`: its Kubernetes namespace; empty when unknown.
    pub namespace: String,
}

/// The name a service map gives `e`: its Kubernetes Service, else its workload, else its pod,
/// else its address; `None` when nothing is known of it.
fn service_name(e: &Endpoint) -> Option<String> {
    if !e.service.is_empty() {
        Some(e.service.clone())
    } else if !e.workload.is_empty() {
        Some(e.workload.clone())
    } else if !e.pod.is_empty() {
        Some(e.pod.clone())
    } else {
        endpoint_ip(e).map(|ip| ip.to_string())
    }
}

/// The service `rec`'s exchange span is reported under: the end it represents (the server for
/// a SERVER span, the client for a CLIENT span), so Jaeger lists one service per Kubernetes
/// Service (else workload) as the original Clovisor's one tracer per service did.
pub fn service_of(rec: &CorrelatedSession) -> ServiceKey {
    service_of_end(Ends::of(&rec.session).this())
}

fn service_of_end(e: &Endpoint) -> ServiceKey {
    match service_name(e) {
        Some(name) => ServiceKey {
            name,
            namespace: e.namespace.clone(),
        },
        None => ServiceKey::default(),
    }
}

/// Which of an exchange's spans to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanRole {
    /// The exchange's span: SERVER when a point at the server saw it, else CLIENT; its id is
    /// the session's.
    Exchange,
    /// The calling side's CLIENT span of an exchange seen at both ends ([`client_span_id`]):
    /// under the client's service, parent of the SERVER span, child of the caller's span on
    /// the wire.
    Caller,
}

/// The id of the calling side's CLIENT span, when the exchange was seen at the server and also
/// at a client-side point of a known pod — then Jaeger shows the call from one service to the
/// other (its dependency graph links services through parent and child spans). Derived from
/// the exchange's own span id, so it is stable for the exchange.
pub fn client_span_id(rec: &CorrelatedSession) -> Option<SpanId> {
    let session = &rec.session;
    let client = session.client.as_ref()?;
    let seen_at_client = session
        .observations
        .iter()
        .any(|o| o.side() == clovisor_proto::common::v1::Side::Client);
    if !(observed_at_server(session) && seen_at_client && !client.pod.is_empty()) {
        return None;
    }
    let mut id = rec.span_id.0;
    id[0] ^= 0x80;
    if id == [0; 8] {
        id[7] ^= 0x01;
    }
    Some(SpanId(id))
}

/// `base` (the exporter's resource) reporting for `service`: its `service.name` replaced, and
/// `service.namespace` added when known; `base` itself for the empty key.
pub fn service_resource(base: &Resource, service: &ServiceKey) -> Resource {
    if service.name.is_empty() {
        return base.clone();
    }
    let mut attributes: Vec<KeyValue> = base
        .attributes
        .iter()
        .filter(|kv| kv.key != "service.name")
        .cloned()
        .collect();
    attributes.insert(0, s("service.name", service.name.clone()));
    if !service.namespace.is_empty() {
        attributes.insert(1, s("service.namespace", service.namespace.clone()));
    }
    Resource {
        attributes,
        ..base.clone()
    }
}

/// The instrumentation scope of our spans.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Default::default()
    }
}

/// The two ends of the exchange, and which of them this span represents.
struct Ends<'a> {
    client: &'a Endpoint,
    server: &'a Endpoint,
    /// Observed at the server's end: a SERVER span, representing the server.
    server_side: bool,
}

/// An endpoint with nothing known.
static NO_ENDPOINT: Endpoint = Endpoint {
    ip: bytes::Bytes::new(),
    port: 0,
    pod: String::new(),
    namespace: String::new(),
    node: String::new(),
    workload: String::new(),
    service: String::new(),
};

/// No HTTP fields decoded.
static NO_HTTP: Http = Http {
    method: String::new(),
    target: String::new(),
    host: String::new(),
    user_agent: String::new(),
    status_code: 0,
    version: String::new(),
    request_id: String::new(),
    envoy_decorator: String::new(),
    reason: String::new(),
    request_content_length: 0,
    response_content_length: 0,
    response_chunked: false,
};

impl<'a> Ends<'a> {
    fn of(session: &'a Session) -> Self {
        Self {
            client: session.client.as_ref().unwrap_or(&NO_ENDPOINT),
            server: session.server.as_ref().unwrap_or(&NO_ENDPOINT),
            server_side: observed_at_server(session),
        }
    }

    /// The end this span describes (`k8s.*`).
    fn this(&self) -> &Endpoint {
        if self.server_side {
            self.server
        } else {
            self.client
        }
    }

    /// The other end (`network.peer.*`, `clovisor.peer.*`).
    fn other(&self) -> &Endpoint {
        if self.server_side {
            self.client
        } else {
            self.server
        }
    }
}

/// The span's name: the method when it is a known one, else `HTTP`.
fn span_name(http: &Http) -> &str {
    if KNOWN_METHODS.contains(&http.method.as_str()) {
        &http.method
    } else {
        "HTTP"
    }
}

/// A database span's name: its operation when a known one (`SELECT`, `GET`), else the system.
fn db_span_name(d: &Database) -> &str {
    match db_operation_label(&d.operation) {
        "" | "_OTHER" => &d.system,
        op => op,
    }
}

/// `db.*`: the database semantic conventions. The statement was sanitized in the collector
/// (literals are `?`, Redis values absent).
fn db_attributes(attrs: &mut Attributes<'_>, d: &Database, incomplete: bool) {
    attrs.str("db.system", &d.system);
    attrs.str("db.system.name", &d.system);
    for (key, value) in [
        ("db.operation.name", &d.operation),
        ("db.query.text", &d.statement),
        ("db.namespace", &d.namespace),
        ("clovisor.db.key", &d.key),
        ("clovisor.db.user", &d.user),
        ("clovisor.db.reply_type", &d.reply_type),
        ("clovisor.db.sql_state", &d.sql_state),
        ("clovisor.db.error_message", &d.error_message),
    ] {
        if !value.is_empty() {
            attrs.str(key, value);
        }
    }
    if !incomplete && !d.error_code.is_empty() {
        attrs.str("db.response.status_code", &d.error_code);
    }
    if let Some(rows) = d.rows {
        attrs.int("db.response.returned_rows", count(rows));
    }
    if d.statement_truncated {
        attrs.bool("clovisor.db.statement_truncated", true);
    }
    if d.response_truncated {
        attrs.bool("clovisor.db.response_truncated", true);
    }
}

/// A database span's status: an error when the server answered with one (`error.type` its
/// code), whichever end the span represents.
fn db_status(attrs: &mut Attributes<'_>, d: &Database) -> StatusCode {
    match db_error_type(d) {
        Some(t) => {
            attrs.str("error.type", t);
            StatusCode::Error
        }
        None => StatusCode::Unset,
    }
}

/// `http.*`, `url.*` and `user_agent.original`: the request line, the status, the client
/// software.
fn http_attributes(attrs: &mut Attributes<'_>, http: &Http, incomplete: bool) {
    if KNOWN_METHODS.contains(&http.method.as_str()) {
        attrs.str("http.request.method", &http.method);
    } else {
        attrs.str("http.request.method", "_OTHER");
        if !http.method.is_empty() {
            attrs.str("http.request.method_original", &http.method);
        }
    }
    if !http.target.is_empty() {
        let (path, query) = split_target(&http.target);
        attrs.str("url.path", path);
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            attrs.str("url.query", &redact_query(q));
        }
    }
    if (100..600).contains(&http.status_code) && !incomplete {
        attrs.int("http.response.status_code", i64::from(http.status_code));
    }
    if !http.user_agent.is_empty() {
        attrs.str("user_agent.original", &http.user_agent);
    }
}

/// A DNS span's name: `DNS` and the question's type (`DNS AAAA`). The name asked about is an
/// attribute (`dns.question.name`), not part of the name: span names stay low-cardinality, as
/// the OpenTelemetry conventions ask.
fn dns_span_name(dns: &Dns) -> String {
    format!("DNS {}", type_label(dns.question_type))
}

/// `dns.*` (OTel's `dns.question.name` and `dns.answers`, and Clovisor's type, class, response
/// code, counts and flags under the same prefix) and the network a DNS exchange went over.
fn dns_attributes(attrs: &mut Attributes<'_>, dns: &Dns, incomplete: bool, ends: &Ends<'_>) {
    attrs.str("dns.question.name", &dns.question_name);
    attrs.str("dns.question.type", &type_label(dns.question_type));
    attrs.str("dns.question.class", &class_label(dns.question_class));
    attrs.int("dns.id", i64::from(dns.id));
    if !incomplete {
        attrs.str("dns.response_code", &rcode_label(dns.response_code));
        attrs.int("dns.answer_count", i64::from(dns.answer_count));
        let answers: Vec<String> = dns.answers().map(|a| a.to_string()).collect();
        if !answers.is_empty() {
            let answers: Vec<&str> = answers.iter().map(String::as_str).collect();
            attrs.strings("dns.answers", &answers);
        }
        if dns.truncated {
            attrs.bool("dns.truncated", true);
        }
    }
    address_attributes(attrs, ends);
    attrs.str("network.protocol.name", "dns");
    if let Some(t) = DnsTransport::try_from(dns.transport)
        .ok()
        .and_then(DnsTransport::short_name)
    {
        attrs.str("network.transport", t);
    }
    network_type(attrs, ends);
}

/// A DNS answer's status: ERROR for any response code but NOERROR (a lookup that did not
/// resolve), with `error.type` the code's name.
fn dns_status(attrs: &mut Attributes<'_>, dns: &Dns, incomplete: bool) -> StatusCode {
    if incomplete || dns.response_code == 0 {
        return StatusCode::Unset;
    }
    attrs.str("error.type", &rcode_label(dns.response_code));
    StatusCode::Error
}

/// `server.*`, `client.*` and `network.peer.*` from the two ends' addresses (protocols without a
/// `Host` header to name the server).
fn address_attributes(attrs: &mut Attributes<'_>, ends: &Ends<'_>) {
    endpoint_attrs(attrs, ("server.address", "server.port"), ends.server);
    endpoint_attrs(attrs, ("client.address", "client.port"), ends.client);
    endpoint_attrs(
        attrs,
        ("network.peer.address", "network.peer.port"),
        ends.other(),
    );
}

/// A Kafka span's name, as the messaging conventions name spans: the operation and the topic
/// (`send orders`, `poll orders`), the operation alone without a topic; an API that is no
/// messaging operation by its name (`Metadata`, `ApiVersions`). Topic names are chosen by the
/// application, but bounded by the cluster's topics, as the conventions accept.
fn kafka_span_name(k: &Kafka) -> String {
    match messaging_operation(k.api_key) {
        Some((op, _)) if !k.topic.is_empty() => format!("{op} {}", k.topic),
        Some((op, _)) => op.to_owned(),
        None => api_label(k.api_key),
    }
}

/// `messaging.*` (OpenTelemetry's messaging and Kafka conventions), Clovisor's own
/// `clovisor.kafka.*` (the API, its version, the correlation id, the error code) and the network
/// the exchange went over.
fn kafka_attributes(attrs: &mut Attributes<'_>, k: &Kafka, ends: &Ends<'_>) {
    attrs.str("messaging.system", "kafka");
    if let Some((name, kind)) = messaging_operation(k.api_key) {
        attrs.str("messaging.operation.name", name);
        attrs.str("messaging.operation.type", kind);
    }
    if !k.topic.is_empty() {
        attrs.str("messaging.destination.name", &k.topic);
    }
    if !k.client_id.is_empty() {
        attrs.str("messaging.client.id", &k.client_id);
    }
    attrs.int("clovisor.kafka.api_key", i64::from(k.api_key));
    attrs.str("clovisor.kafka.api_name", &api_label(k.api_key));
    attrs.int("clovisor.kafka.api_version", i64::from(k.api_version));
    attrs.int("clovisor.kafka.correlation_id", i64::from(k.correlation_id));
    if let Some(code) = k.error_code {
        attrs.int("clovisor.kafka.error_code", i64::from(code));
    }
    if k.request_truncated {
        attrs.bool("clovisor.kafka.request_truncated", true);
    }
    if k.response_truncated {
        attrs.bool("clovisor.kafka.response_truncated", true);
    }
    address_attributes(attrs, ends);
    attrs.str("network.protocol.name", "kafka");
    attrs.str("network.transport", "tcp");
    network_type(attrs, ends);
}

/// A Kafka response's status: ERROR for a non-zero error code, with `error.type` its name.
fn kafka_status(attrs: &mut Attributes<'_>, k: &Kafka) -> StatusCode {
    match k.error_code {
        Some(code) if code != 0 => {
            attrs.str("error.type", &error_label(code));
            StatusCode::Error
        }
        _ => StatusCode::Unset,
    }
}

/// `network.type` from the server's (else the client's) address.
fn network_type(attrs: &mut Attributes<'_>, ends: &Ends<'_>) {
    match endpoint_ip(ends.server).or_else(|| endpoint_ip(ends.client)) {
        Some(IpAddr::V4(_)) => attrs.str("network.type", "ipv4"),
        Some(IpAddr::V6(_)) => attrs.str("network.type", "ipv6"),
        None => {}
    }
}

/// `{prefix}.address` and `{prefix}.port` of an endpoint, under the two keys given.
fn endpoint_attrs(attrs: &mut Attributes<'_>, keys: (&str, &str), e: &Endpoint) {
    if let Some(ip) = endpoint_ip(e) {
        attrs.ip(keys.0, ip);
    }
    if e.port != 0 {
        attrs.int(keys.1, i64::from(e.port));
    }
}

/// `server.*`, `client.*`, `network.*`: where the exchange went, over what.
/// `protocol` is `network.protocol.name` and `.version` (none for a database: its wire
/// protocol's version is not decoded).
fn network_attributes(
    attrs: &mut Attributes<'_>,
    http: &Http,
    ends: &Ends<'_>,
    protocol: (&str, Option<&str>),
) {
    // server.address is the logical name the client asked for (Host), as semconv prefers; the
    // server's IP is still there as network.peer.address on client spans.
    let (host, host_port) = split_host(&http.host);
    if !host.is_empty() {
        attrs.str("server.address", host);
    } else if let Some(ip) = endpoint_ip(ends.server) {
        attrs.ip("server.address", ip);
    }
    match host_port {
        Some(p) => attrs.int("server.port", i64::from(p)),
        None if ends.server.port != 0 => attrs.int("server.port", i64::from(ends.server.port)),
        None => {}
    }
    endpoint_attrs(attrs, ("client.address", "client.port"), ends.client);
    endpoint_attrs(
        attrs,
        ("network.peer.address", "network.peer.port"),
        ends.other(),
    );
    attrs.str("network.protocol.name", protocol.0);
    if let Some(version) = protocol.1 {
        attrs.str("network.protocol.version", version);
    }
    attrs.str("network.transport", "tcp");
    network_type(attrs, ends);
}

/// `k8s.*`: the pod this span represents.
fn k8s_attributes(attrs: &mut Attributes<'_>, this_end: &Endpoint) {
    if !this_end.pod.is_empty() {
        attrs.str("k8s.pod.name", &this_end.pod);
    }
    if !this_end.namespace.is_empty() {
        attrs.str("k8s.namespace.name", &this_end.namespace);
    }
    if !this_end.node.is_empty() {
        attrs.str("k8s.node.name", &this_end.node);
    }
}

/// `clovisor.*`: what Clovisor tagged (counters, request id, Envoy decorator), the points that
/// saw the exchange, the session, and the peer pod.
fn clovisor_attributes(
    attrs: &mut Attributes<'_>,
    rec: &CorrelatedSession,
    http: &Http,
    ends: &Ends<'_>,
) {
    let session = &rec.session;
    let bytes = session.bytes.unwrap_or_default();
    let packets = session.packets.unwrap_or_default();
    attrs.int("clovisor.request.bytes", count(bytes.request));
    attrs.int("clovisor.response.bytes", count(bytes.response));
    attrs.int("clovisor.request.packets", count(packets.request));
    attrs.int("clovisor.response.packets", count(packets.response));
    if !http.request_id.is_empty() {
        attrs.str("clovisor.request_id", &http.request_id);
    }
    if !http.envoy_decorator.is_empty() {
        attrs.str("clovisor.envoy.decorator", &http.envoy_decorator);
    }
    // At most the four point kinds, in order of first appearance.
    let mut points: [&str; 4] = [""; 4];
    let mut n = 0;
    for p in session.observations.iter().map(|o| o.kind().short_name()) {
        if !points[..n].contains(&p) && n < points.len() {
            points[n] = p;
            n += 1;
        }
    }
    attrs.strings("clovisor.observation_points", &points[..n]);
    let nodes = session
        .observations
        .iter()
        .filter(|o| o.kind() == PointKind::Node && !o.interface.is_empty());
    if nodes.clone().next().is_some() {
        let mut node_interfaces: Vec<&str> = nodes.map(|o| o.interface.as_str()).collect();
        node_interfaces.sort_unstable();
        node_interfaces.dedup();
        attrs.strings("clovisor.node.interfaces", &node_interfaces);
    }
    attrs.str("clovisor.session.id", &rec.id);
    if session.incomplete {
        attrs.bool("clovisor.incomplete", true);
    }
    // Peer pods: the other end's identity is useful and bounded to our own metadata.
    let other_end = ends.other();
    // The other end's service, as Jaeger's dependency graph links services by it; an address
    // alone names no service.
    if !other_end.service.is_empty() {
        attrs.str("peer.service", &other_end.service);
    } else if !other_end.workload.is_empty() {
        attrs.str("peer.service", &other_end.workload);
    } else if !other_end.pod.is_empty() {
        attrs.str("peer.service", &other_end.pod);
    }
    if !other_end.pod.is_empty() {
        attrs.str("clovisor.peer.pod", &other_end.pod);
    }
    if !other_end.namespace.is_empty() {
        attrs.str("clovisor.peer.namespace", &other_end.namespace);
    }
}

/// The span status code (ERROR for 5xx on a server span, 4xx and 5xx on a client span), with
/// `error.type` added to `attrs` when it is an error.
fn status(attrs: &mut Attributes<'_>, kind: SpanKind, status_code: u32) -> StatusCode {
    let error = match kind {
        SpanKind::Server => status_code >= 500,
        _ => status_code >= 400,
    } && (100..600).contains(&status_code);
    if error {
        attrs.display("error.type", status_code);
        StatusCode::Error
    } else {
        StatusCode::Unset
    }
}

/// A user analyzer's fields, each as `clovisor.analyzer.<name>.<key>`, in key order.
fn analyzer_attributes(attrs: &mut Attributes<'_>, a: &Analyzer) {
    let mut fields: Vec<(&String, &String)> = a.fields.iter().collect();
    fields.sort_unstable();
    let mut key = String::with_capacity(64);
    for (k, v) in fields {
        key.clear();
        key.push_str("clovisor.analyzer.");
        key.push_str(&a.name);
        key.push('.');
        key.push_str(k);
        attrs.str(&key, v);
    }
}

/// `rpc.*` of a gRPC call.
fn grpc_attributes(attrs: &mut Attributes<'_>, g: &Grpc) {
    attrs.str("rpc.system", "grpc");
    if !g.service.is_empty() {
        attrs.str("rpc.service", &g.service);
        attrs.str("rpc.method", &g.method);
    }
    if let Some(code) = g.status_code {
        attrs.int("rpc.grpc.status_code", i64::from(code));
    }
}

/// The span status of a gRPC call: on a client span every non-OK code is an error; on a server
/// span only the codes that mean the server failed (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
/// INTERNAL, UNAVAILABLE, DATA_LOSS), as the RPC semantic conventions say.
fn grpc_status(attrs: &mut Attributes<'_>, kind: SpanKind, code: u32) -> StatusCode {
    let error = match kind {
        SpanKind::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
        _ => code != 0,
    };
    if error {
        attrs.display("error.type", code);
        StatusCode::Error
    } else {
        StatusCode::Unset
    }
}

const EVENT_NAMES: [&str; 4] = [
    "request.start",
    "request.end",
    "response.start",
    "response.end",
];

/// One event at the start and end of the request and the response as each point saw them, in
/// time order (ties in path order).
fn observation_events(buf: &mut Vec<u8>, session: &Session) {
    // What each event of an observation repeats (where it was seen, by which process) is
    // written once per observation and copied into its events.
    let mut common = Vec::with_capacity(160 * session.observations.len());
    let mut ranges = Vec::with_capacity(session.observations.len());
    for o in &session.observations {
        let from = common.len();
        observation_attributes(&mut common, o);
        ranges.push(from..common.len());
    }
    let mut events: Vec<(u64, &Observation, &[u8], usize)> =
        Vec::with_capacity(4 * session.observations.len());
    for (o, range) in session.observations.iter().zip(ranges) {
        let attrs = common.get(range).unwrap_or_default();
        let times = [
            o.request_start_unix_nanos,
            o.request_end_unix_nanos,
            o.response_start_unix_nanos,
            o.response_end_unix_nanos,
        ];
        for (name, at) in times.into_iter().enumerate() {
            if at != 0 {
                events.push((at, o, attrs, name));
            }
        }
    }
    events.sort_by_key(|(at, _, _, _)| *at);
    for (at, o, attrs, name) in events {
        // An event is a few hundred bytes: two bytes of length.
        wire::message_sized(buf, field::EVENTS, 2, |buf| {
            event(buf, EVENT_NAMES[name], at, attrs, o)
        });
    }
}

/// The attributes every event of observation `o` carries: where it was seen, and by which
/// process at the socket point.
fn observation_attributes(buf: &mut Vec<u8>, o: &Observation) {
    let mut attrs = Attributes::new(buf, field::EVENT_ATTRIBUTES);
    attrs.str("clovisor.observation.point", o.kind().short_name());
    if !o.interface.is_empty() {
        attrs.str("clovisor.observation.interface", &o.interface);
    }
    if !o.node.is_empty() {
        attrs.str("k8s.node.name", &o.node);
    }
    if let Some(side) = o.side().short_name() {
        attrs.str("clovisor.observation.side", side);
    }
    // Socket point: the application's process (OTel process semantic conventions).
    if o.pid != 0 {
        attrs.int("process.pid", i64::from(o.pid));
    }
    if !o.comm.is_empty() {
        attrs.str("process.command", &o.comm);
    }
}

/// An event of observation `o`: `common` (its [`observation_attributes`], encoded), and on the
/// `*.end` events what the point counted.
fn event(buf: &mut Vec<u8>, name: &str, at: u64, common: &[u8], o: &Observation) {
    wire::fixed64(buf, field::EVENT_TIME, at);
    wire::bytes(buf, field::EVENT_NAME, name.as_bytes());
    buf.extend_from_slice(common);
    let mut attrs = Attributes::new(buf, field::EVENT_ATTRIBUTES);
    // What the point counted, on the event closing each direction.
    match name {
        "request.end" => {
            attrs.int("clovisor.observation.bytes", count(o.request_bytes));
            attrs.int("clovisor.observation.packets", count(o.request_packets));
        }
        "response.end" => {
            attrs.int("clovisor.observation.bytes", count(o.response_bytes));
            attrs.int("clovisor.observation.packets", count(o.response_packets));
            if o.retransmits > 0 {
                attrs.int("clovisor.observation.retransmits", i64::from(o.retransmits));
            }
        }
        _ => {}
    }
}

/// W3C trace flags: the parent is remote when it came from the wire; sampled unless the wire
/// said otherwise.
fn span_flags(rec: &CorrelatedSession, remote_parent: bool) -> u32 {
    let trace = rec.wire_trace();
    let mut flags = SpanFlags::ContextHasIsRemoteMask as u32;
    if remote_parent {
        flags |= SpanFlags::ContextIsRemoteMask as u32;
    }
    if trace.is_none_or(|t| t.sampled) {
        flags |= SpanFlags::TraceFlagsMask as u32 & 0x01;
    }
    flags
}

/// Appends the span for `rec`, protobuf-encoded (an OTLP `Span` message), to `buf`.
pub fn encode_span(rec: &CorrelatedSession, buf: &mut Vec<u8>) {
    encode_span_as(rec, SpanRole::Exchange, buf);
}

/// Appends `rec`'s span of `role`, protobuf-encoded, to `buf`.
pub fn encode_span_as(rec: &CorrelatedSession, role: SpanRole, buf: &mut Vec<u8>) {
    let session = &rec.session;
    let mut ends = Ends::of(session);
    let caller = client_span_id(rec);
    let (span_id, parent, remote_parent) = match (role, caller) {
        (SpanRole::Caller, Some(id)) => {
            ends.server_side = false;
            (id, rec.parent_span_id, rec.parent_span_id.is_some())
        }
        (_, Some(id)) => (rec.span_id, Some(id), false),
        (_, None) => (
            rec.span_id,
            rec.parent_span_id,
            rec.parent_span_id.is_some(),
        ),
    };
    let kind = if ends.server_side {
        SpanKind::Server
    } else {
        SpanKind::Client
    };
    let http = session.http.as_ref().unwrap_or(&NO_HTTP);
    let start = session.start_unix_nanos;
    let end = session.end_unix_nanos.max(start);
    let trace = rec.wire_trace();

    wire::bytes(buf, field::TRACE_ID, &rec.trace_id.0);
    wire::bytes(buf, field::SPAN_ID, &span_id.0);
    if let Some(state) = trace
        .map(|t| t.tracestate.as_str())
        .filter(|s| !s.is_empty())
    {
        wire::bytes(buf, field::TRACE_STATE, state.as_bytes());
    }
    if let Some(parent) = parent {
        wire::bytes(buf, field::PARENT_SPAN_ID, &parent.0);
    }
    let database = session.database.as_deref();
    let grpc = session.grpc.as_deref();
    let dns = session.dns.as_deref();
    let analyzer = session.analyzer.as_deref();
    let kafka = session.kafka.as_deref();
    if let Some(k) = kafka {
        wire::bytes(buf, field::NAME, kafka_span_name(k).as_bytes());
    } else {
        span_name_of(buf, http, database, dns, grpc, analyzer);
    }
    wire::uint(buf, field::KIND, kind as u64);
    if start != 0 {
        wire::fixed64(buf, field::START, start);
    }
    if end != 0 {
        wire::fixed64(buf, field::END, end);
    }
    let code = {
        let mut attrs = Attributes::new(buf, field::ATTRIBUTES);
        match (kafka, database, dns, analyzer) {
            (Some(k), _, _, _) => kafka_attributes(&mut attrs, k, &ends),
            (None, Some(d), _, _) => {
                db_attributes(&mut attrs, d, session.incomplete);
                network_attributes(&mut attrs, http, &ends, (&d.system, None));
            }
            (None, None, Some(d), _) => dns_attributes(&mut attrs, d, session.incomplete, &ends),
            (None, None, None, Some(a)) => {
                analyzer_attributes(&mut attrs, a);
                network_attributes(&mut attrs, http, &ends, (&a.name, None));
            }
            (None, None, None, None) => {
                http_attributes(&mut attrs, http, session.incomplete);
                let version = http_version(&http.version);
                network_attributes(&mut attrs, http, &ends, ("http", Some(version)));
            }
        }
        k8s_attributes(&mut attrs, ends.this());
        clovisor_attributes(&mut attrs, rec, http, &ends);
        if let Some(g) = grpc {
            grpc_attributes(&mut attrs, g);
        }
        match (kafka, database, dns, grpc.and_then(|g| g.status_code)) {
            (Some(k), _, _, _) => kafka_status(&mut attrs, k),
            (None, Some(d), _, _) => db_status(&mut attrs, d),
            (None, None, Some(d), _) => dns_status(&mut attrs, d, session.incomplete),
            (None, None, None, Some(code)) => grpc_status(&mut attrs, kind, code),
            (None, None, None, None) => status(&mut attrs, kind, http.status_code),
        }
    };
    observation_events(buf, session);
    wire::message(buf, field::STATUS, |buf| {
        if code != StatusCode::Unset {
            wire::uint(buf, field::STATUS_CODE, code as u64);
        }
    });
    wire::fixed32(buf, field::FLAGS, span_flags(rec, remote_parent));
}

/// The name of a span that is not Kafka's: the database operation, the DNS question type, the
/// gRPC method, the user analyzer's name, else the HTTP method.
fn span_name_of(
    buf: &mut Vec<u8>,
    http: &Http,
    database: Option<&Database>,
    dns: Option<&Dns>,
    grpc: Option<&Grpc>,
    analyzer: Option<&Analyzer>,
) {
    match (database, dns, grpc.filter(|g| !g.service.is_empty())) {
        (Some(d), _, _) => wire::bytes(buf, field::NAME, db_span_name(d).as_bytes()),
        (None, Some(d), _) => wire::bytes(buf, field::NAME, dns_span_name(d).as_bytes()),
        // gRPC: `package.Service/Method`, as the RPC semantic conventions name spans.
        (None, None, Some(g)) => wire::bytes(
            buf,
            field::NAME,
            format!("{}/{}", g.service, g.method).as_bytes(),
        ),
        (None, None, None) => {
            let name = analyzer.map_or_else(|| span_name(http), |a| a.name.as_str());
            wire::bytes(buf, field::NAME, name.as_bytes())
        }
    }
}

/// The span for `rec`, protobuf-encoded.
pub fn span_bytes(rec: &CorrelatedSession) -> Vec<u8> {
    span_bytes_as(rec, SpanRole::Exchange)
}

/// `rec`'s span of `role`, protobuf-encoded.
pub fn span_bytes_as(rec: &CorrelatedSession, role: SpanRole) -> Vec<u8> {
    let mut buf = Vec::with_capacity(3072);
    encode_span_as(rec, role, &mut buf);
    buf
}

/// The calling side's CLIENT span of `rec` under its service, when there is one
/// ([`client_span_id`]).
pub fn caller_span(rec: &CorrelatedSession) -> Option<(ServiceKey, Vec<u8>)> {
    let client = rec.session.client.as_ref()?;
    client_span_id(rec)?;
    Some((service_of_end(client), span_bytes_as(rec, SpanRole::Caller)))
}

/// The span for `rec` as a struct: [`encode_span`]'s bytes decoded.
pub fn build_span(rec: &CorrelatedSession) -> Span {
    // What encode_span writes decodes; an empty span would show in every test if it did not.
    Span::decode(span_bytes(rec).as_slice()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{SpanId, TraceId};
    use crate::testing::{SessionBuilder, FIXTURE_DURATION_NANOS, FIXTURE_START_NANOS};
    use clovisor_proto::common::v1::Side;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::trace::v1::span::Event;

    fn span_of(b: SessionBuilder) -> (CorrelatedSession, Span) {
        let rec = CorrelatedSession::new(b.build()).0;
        let span = build_span(&rec);
        (rec, span)
    }

    fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    fn str_attr<'a>(span: &'a Span, key: &str) -> &'a str {
        match attr(span, key) {
            Some(Value::StringValue(v)) => v,
            other => panic!("attribute {key} should be a string, saw {other:?}"),
        }
    }

    fn int_attr(span: &Span, key: &str) -> i64 {
        match attr(span, key) {
            Some(Value::IntValue(v)) => *v,
            other => panic!("attribute {key} should be an int, saw {other:?}"),
        }
    }

    #[test]
    fn analyzer_spans_carry_its_fields_under_its_prefix() {
        let (_, span) = span_of(
            SessionBuilder::new("l").analyzer("line", &[("command", "FETCH"), ("status", "OK")]),
        );
        assert_eq!(span.name, "line");
        assert_eq!(str_attr(&span, "clovisor.analyzer.line.command"), "FETCH");
        assert_eq!(str_attr(&span, "clovisor.analyzer.line.status"), "OK");
        assert_eq!(str_attr(&span, "network.protocol.name"), "line");
        assert!(attr(&span, "http.request.method").is_none());
        assert_eq!(span.status.as_ref().map(|s| s.code), Some(0));
    }

    #[test]
    fn kafka_spans_follow_the_messaging_conventions() {
        let (_, span) = span_of(SessionBuilder::new("k1").kafka(0, |k| {
            k.api_version = 9;
            k.correlation_id = 7;
            k.client_id = "rdkafka".into();
            k.topic = "orders".into();
            k.error_code = Some(3);
        }));
        assert_eq!(span.name, "send orders");
        for (key, want) in [
            ("messaging.system", "kafka"),
            ("messaging.operation.name", "send"),
            ("messaging.operation.type", "send"),
            ("messaging.destination.name", "orders"),
            ("messaging.client.id", "rdkafka"),
            ("clovisor.kafka.api_name", "Produce"),
            ("error.type", "UNKNOWN_TOPIC_OR_PARTITION"),
            ("network.protocol.name", "kafka"),
        ] {
            assert_eq!(str_attr(&span, key), want, "{key}");
        }
        assert_eq!(int_attr(&span, "clovisor.kafka.correlation_id"), 7);
        assert_eq!(int_attr(&span, "clovisor.kafka.error_code"), 3);
        assert_eq!(
            span.status.as_ref().map(|s| s.code),
            Some(StatusCode::Error as i32)
        );
        assert!(
            attr(&span, "http.request.method").is_none(),
            "no HTTP attributes"
        );

        let (_, meta) = span_of(SessionBuilder::new("k2").kafka(3, |k| {
            k.error_code = Some(0);
        }));
        assert_eq!(
            meta.name, "Metadata",
            "an API that is no messaging operation"
        );
        assert!(attr(&meta, "messaging.operation.name").is_none());
        assert!(attr(&meta, "error.type").is_none());
        assert_ne!(
            meta.status.as_ref().map(|s| s.code),
            Some(StatusCode::Error as i32)
        );
    }

    #[test]
    fn database_spans_follow_the_db_conventions() {
        let (_, span) = span_of(SessionBuilder::new("pg").database("postgresql", |d| {
            d.operation = "SELECT".into();
            d.statement = "SELECT * FROM nosuchtable WHERE id = ?".into();
            d.namespace = "shop".into();
            d.error_code = "42P01".into();
            d.error_message = "relation \"nosuchtable\" does not exist".into();
        }));
        assert_eq!(span.name, "SELECT");
        assert_eq!(str_attr(&span, "db.system"), "postgresql");
        assert_eq!(str_attr(&span, "db.operation.name"), "SELECT");
        assert_eq!(
            str_attr(&span, "db.query.text"),
            "SELECT * FROM nosuchtable WHERE id = ?"
        );
        assert_eq!(str_attr(&span, "db.namespace"), "shop");
        assert_eq!(str_attr(&span, "db.response.status_code"), "42P01");
        assert_eq!(str_attr(&span, "error.type"), "42P01");
        assert_eq!(str_attr(&span, "network.protocol.name"), "postgresql");
        assert!(attr(&span, "http.request.method").is_none());
        assert_eq!(
            span.status.as_ref().map(|s| s.code),
            Some(StatusCode::Error as i32)
        );

        let (_, span) = span_of(SessionBuilder::new("r").database("redis", |d| {
            d.operation = "GET".into();
            d.statement = "GET user:42".into();
            d.key = "user:42".into();
            d.reply_type = "bulk_string".into();
        }));
        assert_eq!(span.name, "GET");
        assert_eq!(str_attr(&span, "clovisor.db.key"), "user:42");
        assert!(attr(&span, "error.type").is_none());
        assert_eq!(span.status.as_ref().map(|s| s.code), Some(0));

        let (_, span) = span_of(SessionBuilder::new("odd").database("redis", |d| {
            d.operation = "NOSUCHC".into();
            d.reply_type = "error".into();
            d.error_message = "unknown command".into();
        }));
        assert_eq!(
            span.name, "redis",
            "an unknown command does not name the span"
        );
        assert_eq!(str_attr(&span, "error.type"), "_OTHER");
    }

    #[test]
    fn a_dns_exchange_is_named_by_its_type_and_attributed_per_the_dns_conventions() {
        let (_, span) = span_of(SessionBuilder::new("d").dns(
            "example.org",
            1,
            0,
            &[&[93, 184, 216, 34], &[1, 2, 3, 4]],
        ));
        assert_eq!(span.name, "DNS A");
        assert_eq!(str_attr(&span, "dns.question.name"), "example.org");
        assert_eq!(str_attr(&span, "dns.question.type"), "A");
        assert_eq!(str_attr(&span, "dns.question.class"), "IN");
        assert_eq!(str_attr(&span, "dns.response_code"), "NOERROR");
        assert_eq!(int_attr(&span, "dns.answer_count"), 2);
        match attr(&span, "dns.answers") {
            Some(Value::ArrayValue(a)) => {
                let got: Vec<_> = a
                    .values
                    .iter()
                    .filter_map(|v| match &v.value {
                        Some(Value::StringValue(s)) => Some(s.as_str()),
                        _ => None,
                    })
                    .collect();
                assert_eq!(got, ["93.184.216.34", "1.2.3.4"]);
            }
            other => panic!("dns.answers should be an array, saw {other:?}"),
        }
        assert_eq!(str_attr(&span, "network.protocol.name"), "dns");
        assert_eq!(str_attr(&span, "network.transport"), "udp");
        assert_eq!(int_attr(&span, "server.port"), 53);
        assert!(
            attr(&span, "http.request.method").is_none(),
            "no HTTP attributes"
        );
        assert!(attr(&span, "error.type").is_none());
        assert_eq!(span.status.map(|s| s.code), Some(StatusCode::Unset as i32));

        let (_, span) = span_of(SessionBuilder::new("nx").dns("gone.example", 28, 3, &[]));
        assert_eq!(span.name, "DNS AAAA");
        assert_eq!(str_attr(&span, "dns.response_code"), "NXDOMAIN");
        assert_eq!(str_attr(&span, "error.type"), "NXDOMAIN");
        assert_eq!(span.status.map(|s| s.code), Some(StatusCode::Error as i32));

        let (_, span) = span_of(
            SessionBuilder::new("q")
                .dns("slow.example", 65280, 0, &[])
                .incomplete(),
        );
        assert_eq!(span.name, "DNS TYPE65280", "unknown types by number");
        assert!(attr(&span, "dns.response_code").is_none(), "no answer seen");
        assert_eq!(span.status.map(|s| s.code), Some(StatusCode::Unset as i32));
    }

    #[test]
    fn ids_and_parent_come_from_the_wire() {
        let (rec, span) = span_of(SessionBuilder::new("s").trace([0xab; 16], [0xcd; 8]));
        assert_eq!(span.trace_id, vec![0xab; 16], "trace id from the wire");
        assert_eq!(
            span.parent_span_id,
            vec![0xcd; 8],
            "parent is the caller's span id"
        );
        assert_eq!(span.span_id, rec.span_id.0.to_vec(), "span id is ours");
        assert_ne!(span.span_id, vec![0xcd; 8]);
        assert_eq!(span.flags & 0x1, 1, "sampled flag carried over");
        assert_eq!(span.flags & 0x300, 0x300, "parent is marked remote");
    }

    #[test]
    fn without_context_a_root_span_in_a_new_trace() {
        let (rec, span) = span_of(SessionBuilder::new("s"));
        assert!(span.parent_span_id.is_empty(), "no parent expected");
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(TraceId::from_bytes(&span.trace_id), Some(rec.trace_id));
        assert_eq!(SpanId::from_bytes(&span.span_id), Some(rec.span_id));
    }

    #[test]
    fn server_span_has_semconv_attributes_and_real_times() {
        let (_, span) = span_of(SessionBuilder::new("sess-1").request_id("rid-9").with(|s| {
            if let Some(h) = s.http.as_mut() {
                h.envoy_decorator = "web.default.svc:8080/*".into();
                h.version = "HTTP/1.0".into();
            }
        }));
        assert_eq!(span.name, "GET");
        assert_eq!(
            span.kind,
            SpanKind::Server as i32,
            "observed at the server side"
        );
        assert_eq!(span.start_time_unix_nano, FIXTURE_START_NANOS);
        assert_eq!(
            span.end_time_unix_nano - span.start_time_unix_nano,
            FIXTURE_DURATION_NANOS,
            "span must have the real duration"
        );
        assert_eq!(str_attr(&span, "http.request.method"), "GET");
        assert_eq!(str_attr(&span, "url.path"), "/index.html");
        assert_eq!(str_attr(&span, "url.query"), "q=1");
        assert_eq!(int_attr(&span, "http.response.status_code"), 200);
        assert_eq!(str_attr(&span, "server.address"), "web");
        assert_eq!(int_attr(&span, "server.port"), 8080);
        assert_eq!(str_attr(&span, "client.address"), "10.0.0.1");
        assert_eq!(int_attr(&span, "client.port"), 40000);
        assert_eq!(
            str_attr(&span, "network.peer.address"),
            "10.0.0.1",
            "peer of a server is the client"
        );
        assert_eq!(str_attr(&span, "network.protocol.name"), "http");
        assert_eq!(
            str_attr(&span, "network.protocol.version"),
            "1.0",
            "decoder's HTTP/1.0 becomes the bare version"
        );
        assert_eq!(str_attr(&span, "network.transport"), "tcp");
        assert_eq!(str_attr(&span, "network.type"), "ipv4");
        assert_eq!(str_attr(&span, "user_agent.original"), "curl/8.5.0");
        assert_eq!(str_attr(&span, "k8s.pod.name"), "web-0");
        assert_eq!(str_attr(&span, "k8s.namespace.name"), "default");
        assert_eq!(str_attr(&span, "k8s.node.name"), "node-b");
        assert_eq!(int_attr(&span, "clovisor.request.bytes"), 120);
        assert_eq!(int_attr(&span, "clovisor.response.bytes"), 612);
        assert_eq!(int_attr(&span, "clovisor.request.packets"), 1);
        assert_eq!(int_attr(&span, "clovisor.response.packets"), 2);
        assert_eq!(str_attr(&span, "clovisor.request_id"), "rid-9");
        assert_eq!(
            str_attr(&span, "clovisor.envoy.decorator"),
            "web.default.svc:8080/*"
        );
        assert_eq!(str_attr(&span, "clovisor.session.id"), "sess-1");
        match attr(&span, "clovisor.observation_points") {
            Some(Value::ArrayValue(a)) => assert_eq!(a.values.len(), 1, "one point: {a:?}"),
            other => panic!("observation points should be an array, saw {other:?}"),
        }
        let names: Vec<&str> = span.events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "request.start",
                "request.end",
                "response.start",
                "response.end"
            ]
        );
        assert_eq!(
            span.status.as_ref().map(|s| s.code),
            Some(StatusCode::Unset as i32),
            "200 is not an error"
        );
    }

    #[test]
    fn socket_events_name_the_process() {
        let (_, span) = span_of(SessionBuilder::new("s").with(|s| {
            let mut socket = s.observations[0].clone();
            socket.kind = PointKind::Socket as i32;
            socket.interface.clear();
            socket.pid = 4242;
            socket.comm = "nginx".into();
            socket.request_start_unix_nanos += 1_000;
            s.observations.push(socket);
        }));
        let process = |e: &Event| {
            let get = |k: &str| {
                e.attributes
                    .iter()
                    .find(|kv| kv.key == k)
                    .and_then(|kv| kv.value.as_ref())
                    .and_then(|v| v.value.clone())
            };
            (
                get("clovisor.observation.point"),
                get("process.pid"),
                get("process.command"),
            )
        };
        let at_socket: Vec<_> = span
            .events
            .iter()
            .map(process)
            .filter(|(p, _, _)| *p == Some(Value::StringValue("socket".into())))
            .collect();
        assert_eq!(
            at_socket.len(),
            4,
            "four events at the socket: {:?}",
            span.events
        );
        for (_, pid, comm) in at_socket {
            assert_eq!(pid, Some(Value::IntValue(4242)));
            assert_eq!(comm, Some(Value::StringValue("nginx".into())));
        }
        let veth_with_process = span
            .events
            .iter()
            .map(process)
            .filter(|(p, pid, _)| *p == Some(Value::StringValue("pod".into())) && pid.is_some())
            .count();
        assert_eq!(veth_with_process, 0, "a veth names no process");
    }

    #[test]
    fn status_error_depends_on_kind() {
        let (_, server_404) = span_of(SessionBuilder::new("a").status(404));
        let (_, server_503) = span_of(SessionBuilder::new("b").status(503));
        let (_, client_404) = span_of(SessionBuilder::new("c").status(404).side(Side::Client));
        let code = |s: &Span| s.status.as_ref().map(|st| st.code);
        assert_eq!(
            code(&server_404),
            Some(StatusCode::Unset as i32),
            "4xx is the client's fault"
        );
        assert_eq!(
            code(&server_503),
            Some(StatusCode::Error as i32),
            "5xx on a server span"
        );
        assert_eq!(client_404.kind, SpanKind::Client as i32);
        assert_eq!(
            code(&client_404),
            Some(StatusCode::Error as i32),
            "4xx on a client span"
        );
        assert_eq!(
            str_attr(&client_404, "network.peer.address"),
            "10.0.0.2",
            "peer of a client is the server"
        );
        assert_eq!(str_attr(&client_404, "k8s.pod.name"), "client-0");
    }

    #[test]
    fn grpc_calls_follow_the_rpc_conventions() {
        let svc = "helloworld.Greeter";
        let (_, ok) = span_of(SessionBuilder::new("a").grpc(svc, "SayHello", 0, ""));
        assert_eq!(ok.name, "helloworld.Greeter/SayHello");
        assert_eq!(str_attr(&ok, "rpc.system"), "grpc");
        assert_eq!(str_attr(&ok, "rpc.service"), svc);
        assert_eq!(str_attr(&ok, "rpc.method"), "SayHello");
        assert_eq!(int_attr(&ok, "rpc.grpc.status_code"), 0);
        assert_eq!(str_attr(&ok, "network.protocol.version"), "2");
        assert_eq!(str_attr(&ok, "url.path"), "/helloworld.Greeter/SayHello");
        let code = |s: &Span| s.status.as_ref().map(|st| st.code);
        assert_eq!(code(&ok), Some(StatusCode::Unset as i32));
        // NOT_FOUND is the caller's business on the server, an error for the client.
        let (_, server_nf) = span_of(SessionBuilder::new("b").grpc(svc, "SayHello", 5, "no"));
        assert_eq!(code(&server_nf), Some(StatusCode::Unset as i32));
        let (_, client_nf) = span_of(
            SessionBuilder::new("c")
                .grpc(svc, "SayHello", 5, "no")
                .side(Side::Client),
        );
        assert_eq!(code(&client_nf), Some(StatusCode::Error as i32));
        assert_eq!(str_attr(&client_nf, "error.type"), "5");
        let (_, server_unavailable) =
            span_of(SessionBuilder::new("d").grpc(svc, "SayHello", 14, "down"));
        assert_eq!(code(&server_unavailable), Some(StatusCode::Error as i32));
    }

    #[test]
    fn unknown_method_and_ipv6() {
        let (_, span) = span_of(SessionBuilder::new("a").method("BREW").ipv6());
        assert_eq!(span.name, "HTTP");
        assert_eq!(str_attr(&span, "http.request.method"), "_OTHER");
        assert_eq!(str_attr(&span, "http.request.method_original"), "BREW");
        assert_eq!(str_attr(&span, "network.type"), "ipv6");
        assert_eq!(str_attr(&span, "client.address"), "fd00::1");
    }

    #[test]
    fn no_credentials_reach_the_span() {
        let (_, span) = span_of(
            SessionBuilder::new("a")
                .target("http://user:hunter2@web/login?user=bob&password=hunter2&Token=abc#frag")
                .with(|s| {
                    s.attributes
                        .insert("authorization".into(), "Bearer hunter2".into());
                    s.attributes
                        .insert("cookie".into(), "session=hunter2".into());
                }),
        );
        assert_eq!(str_attr(&span, "url.path"), "/login");
        assert_eq!(
            str_attr(&span, "url.query"),
            "user=bob&password=REDACTED&Token=REDACTED"
        );
        let dump = format!("{span:?}");
        for secret in ["hunter2", "abc", "Bearer", "frag"] {
            assert!(!dump.contains(secret), "span leaks {secret:?}: {dump}");
        }
    }

    #[test]
    fn incomplete_span_has_no_status_code() {
        let (_, span) = span_of(SessionBuilder::new("a").incomplete());
        assert!(
            attr(&span, "http.response.status_code").is_none(),
            "no response, no code"
        );
        assert!(matches!(
            attr(&span, "clovisor.incomplete"),
            Some(Value::BoolValue(true))
        ));
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    }
}
