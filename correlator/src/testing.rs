//! Test helpers shared with other crates' tests (feature `test-util`): a real OTLP/gRPC trace
//! receiver on a loopback port, and a builder of realistic sessions.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clovisor_proto::common::v1::{PointKind, Side};
use clovisor_proto::session::v1::{
    Counters, Dns, DnsTransport, Endpoint, Http, Observation, Protocol, Session, TraceContext,
    TraceFormat,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span};
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;

use crate::error::{Error, Result};

/// Start of every [`SessionBuilder`] session: 2023-11-14T22:13:20.123456789Z.
pub const FIXTURE_START_NANOS: u64 = 1_700_000_000_123_456_789;
/// Duration of every [`SessionBuilder`] session.
pub const FIXTURE_DURATION_NANOS: u64 = 3_000_000;

#[derive(Default)]
struct Received {
    resource_spans: Vec<ResourceSpans>,
    requests: usize,
    /// Answer the next this-many requests with this error instead of accepting them.
    fail: Option<(tonic::Code, usize)>,
}

#[derive(Clone)]
struct Collecting(Arc<Mutex<Received>>);

#[tonic::async_trait]
impl TraceService for Collecting {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((code, left)) = state.fail.as_mut() {
            if *left > 0 {
                *left -= 1;
                return Err(tonic::Status::new(*code, "injected failure"));
            }
        }
        state.requests += 1;
        state
            .resource_spans
            .extend(request.into_inner().resource_spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A real OTLP/gRPC trace receiver (opentelemetry-proto's `TraceService`) on loopback TCP that
/// keeps every `ResourceSpans` it is sent. Stops when dropped or [`OtlpReceiver::stop`]ped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    state: Arc<Mutex<Received>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Starts on a free loopback port.
    pub async fn start() -> Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts on `addr`, e.g. the address of a receiver stopped earlier, to test recovery.
    pub async fn start_on(addr: SocketAddr) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let state = Arc::new(Mutex::new(Received::default()));
        let (stop, stopped) = oneshot::channel::<()>();
        let svc = TraceServiceServer::new(Collecting(Arc::clone(&state)));
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "test OTLP receiver failed");
            }
        });
        Ok(Self {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its URL for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers the next `times` export requests with `code` instead of accepting them.
    pub fn fail_next(&self, code: tonic::Code, times: usize) {
        self.lock().fail = Some((code, times));
    }

    /// Every `ResourceSpans` received so far.
    pub fn resource_spans(&self) -> Vec<ResourceSpans> {
        self.lock().resource_spans.clone()
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<Span> {
        self.lock()
            .resource_spans
            .iter()
            .flat_map(|rs| rs.scope_spans.iter())
            .flat_map(|ss| ss.spans.iter().cloned())
            .collect()
    }

    /// Export requests accepted so far.
    pub fn requests(&self) -> usize {
        self.lock().requests
    }

    /// Waits until at least `n` spans arrived or `timeout` passed; returns what arrived.
    pub async fn wait_for_spans(&self, n: usize, timeout: Duration) -> Vec<Span> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if spans.len() >= n || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops serving and waits until the port is closed.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // Open HTTP/2 connections keep a graceful shutdown waiting; bound it and abort.
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Builds realistic HTTP/1.1 sessions: `GET /index.html?q=1` from `10.0.0.1:40000` (pod
/// `client-0`) to `10.0.0.2:8080` (pod `web-0`), 200 OK, observed at the server pod's veth,
/// starting at [`FIXTURE_START_NANOS`] and lasting [`FIXTURE_DURATION_NANOS`].
#[derive(Debug, Clone)]
pub struct SessionBuilder {
    session: Session,
}

impl SessionBuilder {
    /// A session with id `id`.
    pub fn new(id: &str) -> Self {
        let start = FIXTURE_START_NANOS;
        let end = start + FIXTURE_DURATION_NANOS;
        Self {
            session: Session {
                id: id.to_owned(),
                protocol: Protocol::Http1 as i32,
                client: Some(Endpoint {
                    ip: vec![10, 0, 0, 1].into(),
                    port: 40000,
                    pod: "client-0".into(),
                    namespace: "default".into(),
                    node: "node-a".into(),
                    workload: "client".into(),
                    service: String::new(),
                }),
                server: Some(Endpoint {
                    ip: vec![10, 0, 0, 2].into(),
                    port: 8080,
                    pod: "web-0".into(),
                    namespace: "default".into(),
                    node: "node-b".into(),
                    workload: String::new(),
                    service: String::new(),
                }),
                observations: vec![Observation {
                    kind: PointKind::Pod as i32,
                    interface: "veth-web0".into(),
                    node: "node-b".into(),
                    probe_id: "probe-b".into(),
                    side: Side::Server as i32,
                    request_start_unix_nanos: start,
                    request_end_unix_nanos: start + 100_000,
                    response_start_unix_nanos: end - 200_000,
                    response_end_unix_nanos: end,
                    request_tcp_seq: 1000,
                    response_tcp_seq: 2000,
                    request_bytes: 120,
                    response_bytes: 612,
                    request_packets: 1,
                    response_packets: 2,
                    retransmits: 0,
                    ..Observation::default()
                }],
                start_unix_nanos: start,
                end_unix_nanos: end,
                bytes: Some(Counters {
                    request: 120,
                    response: 612,
                }),
                packets: Some(Counters {
                    request: 1,
                    response: 2,
                }),
                http: Some(Http {
                    method: "GET".into(),
                    target: "/index.html?q=1".into(),
                    host: "web:8080".into(),
                    user_agent: "curl/8.5.0".into(),
                    status_code: 200,
                    version: "HTTP/1.1".into(),
                    reason: "OK".into(),
                    ..Default::default()
                }),
                trace: None,
                incomplete: false,
                attributes: Default::default(),
                // Protocol parts other than HTTP (grpc, dns, database, …) unset.
                ..Session::default()
            },
        }
    }

    /// Makes the session a gRPC call of `service`/`method` over HTTP/2 that ended with
    /// `status` (and `message`).
    pub fn grpc(mut self, service: &str, method: &str, status: u32, message: &str) -> Self {
        self.session.protocol = Protocol::Grpc as i32;
        let http = self.http();
        http.method = "POST".into();
        http.target = format!("/{service}/{method}");
        http.version = "2".into();
        http.reason.clear();
        self.session.grpc = Some(Box::new(clovisor_proto::session::v1::Grpc {
            service: service.into(),
            method: method.into(),
            status_code: Some(status),
            message: message.into(),
        }));
        self
    }

    /// Makes the session a DNS exchange over UDP on port 53: `name` of type `qtype` answered
    /// with `rcode` and `addresses` (4 or 16 bytes each) as its answers.
    pub fn dns(mut self, name: &str, qtype: u32, rcode: u32, addresses: &[&[u8]]) -> Self {
        let s = &mut self.session;
        s.protocol = Protocol::Dns as i32;
        s.http = None;
        if let Some(server) = s.server.as_mut() {
            server.port = 53;
        }
        for o in &mut s.observations {
            o.request_tcp_seq = 0;
            o.response_tcp_seq = 0;
        }
        s.dns = Some(Box::new(Dns {
            id: 0x1234,
            question_name: name.to_owned(),
            question_type: qtype,
            question_class: 1,
            response_code: rcode,
            answer_count: addresses.len() as u32,
            transport: DnsTransport::Udp as i32,
            answer_addresses: addresses.iter().map(|a| a.to_vec()).collect(),
            recursion_desired: true,
            recursion_available: true,
            question_count: 1,
            ..Dns::default()
        }));
        self
    }

    fn http(&mut self) -> &mut Http {
        self.session.http.get_or_insert_with(Http::default)
    }

    /// Sets the request method.
    pub fn method(mut self, method: &str) -> Self {
        self.http().method = method.to_owned();
        self
    }

    /// Sets the request target (path and query).
    pub fn target(mut self, target: &str) -> Self {
        self.http().target = target.to_owned();
        self
    }

    /// Sets the response status code.
    pub fn status(mut self, code: u32) -> Self {
        self.http().status_code = code;
        self
    }

    /// Sets the `x-request-id`.
    pub fn request_id(mut self, id: &str) -> Self {
        self.http().request_id = id.to_owned();
        self
    }

    /// Sets the client and server pod names.
    pub fn pods(mut self, client: &str, server: &str) -> Self {
        if let Some(c) = self.session.client.as_mut() {
            c.pod = client.to_owned();
        }
        if let Some(s) = self.session.server.as_mut() {
            s.pod = server.to_owned();
        }
        self
    }

    /// Sets the client and server namespaces.
    pub fn namespaces(mut self, client: &str, server: &str) -> Self {
        if let Some(c) = self.session.client.as_mut() {
            c.namespace = client.to_owned();
        }
        if let Some(s) = self.session.server.as_mut() {
            s.namespace = server.to_owned();
        }
        self
    }

    /// Sets the server's namespace and workload.
    pub fn server_workload(mut self, namespace: &str, workload: &str) -> Self {
        if let Some(s) = self.session.server.as_mut() {
            s.namespace = namespace.to_owned();
            s.workload = workload.to_owned();
        }
        self
    }

    /// Sets the Kubernetes Service of the client and of the server (empty: none).
    pub fn services(mut self, client: &str, server: &str) -> Self {
        if let Some(c) = self.session.client.as_mut() {
            c.service = client.to_owned();
        }
        if let Some(s) = self.session.server.as_mut() {
            s.service = server.to_owned();
        }
        self
    }

    /// Adds a W3C trace context with this trace id and caller span id.
    pub fn trace(mut self, trace_id: [u8; 16], parent_span_id: [u8; 8]) -> Self {
        self.session.trace = Some(TraceContext {
            format: TraceFormat::W3c as i32,
            trace_id: trace_id.to_vec(),
            parent_span_id: parent_span_id.to_vec(),
            sampled: true,
            tracestate: String::new(),
        });
        self
    }

    /// Sets which side every observation sits at.
    pub fn side(mut self, side: Side) -> Self {
        for o in &mut self.session.observations {
            o.side = side as i32;
        }
        self
    }

    /// Gives both endpoints IPv6 addresses.
    pub fn ipv6(mut self) -> Self {
        if let Some(c) = self.session.client.as_mut() {
            c.ip = "fd00::1"
                .parse::<std::net::Ipv6Addr>()
                .map(|a| a.octets().to_vec().into())
                .unwrap_or_default();
        }
        if let Some(s) = self.session.server.as_mut() {
            s.ip = "fd00::2"
                .parse::<std::net::Ipv6Addr>()
                .map(|a| a.octets().to_vec().into())
                .unwrap_or_default();
        }
        self
    }

    /// Marks the session incomplete (no response seen).
    pub fn incomplete(mut self) -> Self {
        self.session.incomplete = true;
        if let Some(h) = self.session.http.as_mut() {
            h.status_code = 0;
        }
        self
    }

    /// Changes the session in ways the builder has no method for.
    pub fn with(mut self, f: impl FnOnce(&mut Session)) -> Self {
        f(&mut self.session);
        self
    }

    /// Makes it a database exchange of `system` (`redis`, `postgresql`, `mysql`): no HTTP
    /// part, `database` filled by `f` from the system alone.
    pub fn database(
        mut self,
        system: &str,
        f: impl FnOnce(&mut clovisor_proto::session::v1::Database),
    ) -> Self {
        self.session.protocol = match system {
            "redis" => Protocol::Redis,
            "postgresql" => Protocol::Postgresql,
            "mysql" => Protocol::Mysql,
            _ => Protocol::Unspecified,
        } as i32;
        self.session.http = None;
        let mut d = clovisor_proto::session::v1::Database {
            system: system.to_owned(),
            ..Default::default()
        };
        f(&mut d);
        self.session.database = Some(Box::new(d));
        self
    }

    /// Makes it an exchange of the user analyzer `name` with `fields`: no HTTP part.
    pub fn analyzer(mut self, name: &str, fields: &[(&str, &str)]) -> Self {
        self.session.protocol = Protocol::Analyzer as i32;
        self.session.http = None;
        self.session.analyzer = Some(Box::new(clovisor_proto::session::v1::Analyzer {
            name: name.to_owned(),
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }));
        self
    }

    /// Makes it a Kafka exchange of `api_key` on port 9092, `f` filling the Kafka fields.
    pub fn kafka(
        mut self,
        api_key: u32,
        f: impl FnOnce(&mut clovisor_proto::session::v1::Kafka),
    ) -> Self {
        self.session.protocol = Protocol::Kafka as i32;
        self.session.http = None;
        if let Some(server) = self.session.server.as_mut() {
            server.port = 9092;
        }
        let mut k = clovisor_proto::session::v1::Kafka {
            api_key,
            ..Default::default()
        };
        f(&mut k);
        self.session.kafka = Some(Box::new(k));
        self
    }

    /// The session.
    pub fn build(self) -> Session {
        self.session
    }
}

/// The string attribute `key` of the resource of `rs`, empty when absent.
pub fn resource_attribute(rs: &ResourceSpans, key: &str) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    rs.resource
        .iter()
        .flat_map(|r| r.attributes.iter())
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .and_then(|v| match v {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// The string value of `span`'s attribute `key`, if it has one.
pub fn string_attribute(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .and_then(|v| match v {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}
