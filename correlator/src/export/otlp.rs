//! The OTLP/gRPC trace exporter: a bounded queue, a worker that batches by size or time, retries
//! transient failures with exponential backoff, and `flush`/`shutdown` that deliver what is
//! queued.
//!
//! Memory is bounded by the queue plus one batch in the worker: when the endpoint is slow or
//! gone, the queue fills and new spans are dropped and counted (`clovisor_dropped_total{stage=
//! "export",reason="queue_full"}`) instead of piling up; a batch that cannot be delivered within
//! the retry budget is dropped and counted too (`retries_exhausted`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut as _, Bytes};
use clovisor_proto::tls::ClientTransport;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::transport::Channel;

use crate::config::ExportConfig;
use crate::error::{Error, Result};
use crate::export::sampler::Sampler;
use crate::export::span::ServiceKey;
use crate::export::{span, wire};
use crate::metrics::{DropReason, Metrics};
use crate::record::CorrelatedSession;

/// Semantic conventions version our attribute names follow.
pub const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.26.0";

enum Control {
    /// Export everything queued now; reply when done.
    Flush {
        deadline: Instant,
        done: oneshot::Sender<()>,
    },
    /// Export everything queued, then stop.
    Shutdown {
        deadline: Instant,
        done: oneshot::Sender<()>,
    },
}

/// A span waiting for export: protobuf-encoded ([`span::encode_span`]), with the service it is
/// reported under.
#[derive(Debug)]
pub struct QueuedSpan {
    /// Its resource's service; empty: the exporter's own.
    pub service: ServiceKey,
    /// The encoded OTLP `Span`.
    pub bytes: Vec<u8>,
}

/// Enqueues spans for export; cheap to clone, never blocks. Spans wait protobuf-encoded
/// ([`span::encode_span`]), and a batch is sent as their bytes.
#[derive(Clone, Debug)]
pub struct ExportHandle {
    tx: mpsc::Sender<QueuedSpan>,
    metrics: Arc<Metrics>,
    /// Which exchanges' spans are queued at all.
    sampler: Sampler,
}

impl ExportHandle {
    /// Queues `span`; when the queue is full the span is dropped, counted, and `false` returned.
    pub fn enqueue(&self, span: Span) -> bool {
        self.enqueue_encoded(span.encode_to_vec())
    }

    /// Queues the span of `rec`, like [`ExportHandle::enqueue`], when the sampler keeps its
    /// trace (else counts it unsampled, encoding nothing). Also queues the calling side's CLIENT
    /// span when the exchange was seen at both ends ([`span::client_span_id`]); `false` when a
    /// span was dropped.
    pub fn enqueue_session(&self, rec: &CorrelatedSession) -> bool {
        if !self.sampler.samples(rec) {
            let caller = u64::from(span::client_span_id(rec).is_some());
            self.metrics.spans_unsampled(1 + caller);
            return true;
        }
        let caller = match span::caller_span(rec) {
            Some((service, bytes)) => self.enqueue_queued(QueuedSpan { service, bytes }),
            None => true,
        };
        let exchange = self.enqueue_queued(QueuedSpan {
            service: span::service_of(rec),
            bytes: span::span_bytes(rec),
        });
        caller && exchange
    }

    /// Queues a span already encoded (an OTLP `Span` message) under the exporter's own
    /// resource, like [`ExportHandle::enqueue`].
    pub fn enqueue_encoded(&self, span: Vec<u8>) -> bool {
        self.enqueue_queued(QueuedSpan {
            service: ServiceKey::default(),
            bytes: span,
        })
    }

    fn enqueue_queued(&self, span: QueuedSpan) -> bool {
        self.metrics.span_offered();
        let queued = match self.tx.try_send(span) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.dropped_spans(DropReason::QueueFull, 1);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics.dropped_spans(DropReason::Shutdown, 1);
                false
            }
        };
        self.metrics.export_queue(self.queued());
        queued
    }

    /// Spans waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// A handle whose spans wait in the returned receiver instead of going to a worker: for
    /// benchmarks and tests that take the spans themselves.
    #[cfg(any(test, feature = "test-util"))]
    pub fn detached(capacity: usize, metrics: Arc<Metrics>) -> (Self, mpsc::Receiver<QueuedSpan>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let sampler = Sampler::default();
        (
            Self {
                tx,
                metrics,
                sampler,
            },
            rx,
        )
    }
}

/// The exporter: owns the worker task. Create inside a Tokio runtime.
#[derive(Debug)]
pub struct OtlpExporter {
    handle: ExportHandle,
    control: mpsc::Sender<Control>,
    task: tokio::task::JoinHandle<()>,
    /// Spans the worker has taken from the queue and not yet delivered or dropped.
    in_worker: Arc<AtomicU64>,
    shutdown_timeout: Duration,
    switch: EndpointSwitch,
    endpoint: String,
}

/// A lazily connecting channel to `endpoint` (`http(s)://host:port`), over TLS for `https://`.
fn lazy_channel(
    transport: &ClientTransport,
    endpoint: &str,
    request_timeout: Duration,
) -> Result<Channel> {
    transport
        .lazy_channel_with(endpoint, |e| {
            e.connect_timeout(request_timeout.min(Duration::from_secs(5)))
                .timeout(request_timeout)
        })
        .map_err(|source| Error::ExportEndpoint {
            endpoint: endpoint.to_owned(),
            source,
        })
}

/// Re-points a running exporter (live configuration): queued spans and a batch being retried
/// go to the new endpoint from the next attempt on; nothing in flight is dropped for it.
#[derive(Clone, Debug)]
pub struct EndpointSwitch {
    tx: Arc<watch::Sender<Channel>>,
    request_timeout: Duration,
    transport: ClientTransport,
}

impl EndpointSwitch {
    /// Sends spans to `endpoint` from now on; an unusable endpoint is an error and changes
    /// nothing.
    pub fn set(&self, endpoint: &str) -> Result<()> {
        let channel = lazy_channel(&self.transport, endpoint, self.request_timeout)?;
        self.tx.send_replace(channel);
        Ok(())
    }
}

impl OtlpExporter {
    /// Starts the worker; connects lazily, so a dead endpoint is not an error here. Plaintext to
    /// loopback only: see [`OtlpExporter::start_with`].
    pub fn start(config: &ExportConfig, resource: Resource, metrics: Arc<Metrics>) -> Result<Self> {
        Self::start_with(config, resource, metrics, ClientTransport::loopback())
    }

    /// Like [`OtlpExporter::start`], dialing with `transport` (TLS, plaintext policy) — also
    /// for endpoints set later through [`EndpointSwitch::set`].
    pub fn start_with(
        config: &ExportConfig,
        resource: Resource,
        metrics: Arc<Metrics>,
        transport: ClientTransport,
    ) -> Result<Self> {
        let channel = lazy_channel(&transport, &config.endpoint, config.request_timeout)?;
        let (endpoint_tx, endpoint_rx) = watch::channel(channel.clone());
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let (control, control_rx) = mpsc::channel(4);
        let in_worker = Arc::new(AtomicU64::new(0));
        let worker = Worker {
            client: tonic::client::Grpc::new(channel),
            endpoint: endpoint_rx,
            rx,
            control: control_rx,
            resource,
            config: config.clone(),
            metrics: Arc::clone(&metrics),
            in_worker: Arc::clone(&in_worker),
        };
        let task = tokio::spawn(worker.run());
        Ok(Self {
            handle: ExportHandle {
                tx,
                metrics,
                sampler: config.sampler,
            },
            control,
            task,
            in_worker,
            shutdown_timeout: config.shutdown_timeout,
            switch: EndpointSwitch {
                tx: Arc::new(endpoint_tx),
                request_timeout: config.request_timeout,
                transport,
            },
            endpoint: config.endpoint.clone(),
        })
    }

    /// The endpoint it was started with.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A handle that re-points the exporter at another endpoint while it runs.
    pub fn endpoint_switch(&self) -> EndpointSwitch {
        self.switch.clone()
    }

    /// A handle producers queue spans through.
    pub fn handle(&self) -> ExportHandle {
        self.handle.clone()
    }

    /// Delivers everything queued before the call (bounded by the shutdown timeout).
    pub async fn flush(&self) -> Result<()> {
        let (done, wait) = oneshot::channel();
        let deadline = Instant::now() + self.shutdown_timeout;
        self.control
            .send(Control::Flush { deadline, done })
            .await
            .map_err(|_| Error::ExporterStopped)?;
        // The worker gives up at `deadline`; the grace covers one request in flight.
        match tokio::time::timeout_at(deadline + Duration::from_secs(1), wait).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::ExporterStopped),
            Err(_) => Err(Error::ExporterTimeout {
                timeout: self.shutdown_timeout,
            }),
        }
    }

    /// Delivers everything queued, then stops the worker. Spans still undelivered when the
    /// shutdown timeout passes are dropped and counted.
    pub async fn shutdown(self) -> Result<()> {
        let (done, wait) = oneshot::channel();
        let deadline = Instant::now() + self.shutdown_timeout;
        let sent = self
            .control
            .send(Control::Shutdown { deadline, done })
            .await
            .is_ok();
        let finished = sent
            && tokio::time::timeout_at(deadline + Duration::from_secs(1), wait)
                .await
                .is_ok_and(|r| r.is_ok());
        if !finished {
            self.task.abort();
            let lost = self.handle.queued() as u64 + self.in_worker.load(Ordering::Relaxed);
            self.handle
                .metrics
                .dropped_spans(DropReason::Shutdown, lost);
            tracing::warn!(
                spans = lost,
                "span exporter did not drain in time; spans dropped"
            );
            return Err(Error::ExporterTimeout {
                timeout: self.shutdown_timeout,
            });
        }
        match self.task.await {
            Ok(()) => Ok(()),
            Err(source) => Err(Error::ExporterJoin { source }),
        }
    }
}

/// The OTLP trace service's export method.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The encoded `ExportTraceServiceRequest` that exports `spans`: one `ResourceSpans` per
/// service (in the order the services first appear; `resource` made that service's by
/// [`span::service_resource`]), each with one `ScopeSpans`.
pub fn export_request(resource: &Resource, spans: &[QueuedSpan]) -> Bytes {
    let mut services: Vec<(&ServiceKey, Vec<&[u8]>)> = Vec::new();
    for s in spans {
        match services.iter_mut().find(|(k, _)| *k == &s.service) {
            Some((_, group)) => group.push(&s.bytes),
            None => services.push((&s.service, vec![&s.bytes])),
        }
    }
    let mut buf = Vec::new();
    for (service, group) in services {
        resource_spans(&mut buf, &span::service_resource(resource, service), &group);
    }
    Bytes::from(buf)
}

/// Appends one `ResourceSpans` field of an `ExportTraceServiceRequest`: `spans` (each an
/// encoded `Span`) under `resource`, in one `ScopeSpans`.
fn resource_spans(buf: &mut Vec<u8>, resource: &Resource, spans: &[&[u8]]) {
    // Fields of ExportTraceServiceRequest, ResourceSpans and ScopeSpans.
    const RESOURCE_SPANS: u32 = 1;
    const RESOURCE: u32 = 1;
    const SCOPE_SPANS: u32 = 2;
    const SCOPE: u32 = 1;
    const SPANS: u32 = 2;
    const SCHEMA: u32 = 3;
    let resource = resource.encode_to_vec();
    let scope = span::scope().encode_to_vec();
    let scope_spans = wire::len_field_size(scope.len())
        + spans
            .iter()
            .map(|s| wire::len_field_size(s.len()))
            .sum::<usize>()
        + wire::len_field_size(SCHEMA_URL.len());
    let resource_spans = wire::len_field_size(resource.len()) + wire::len_field_size(scope_spans);
    buf.reserve(wire::len_field_size(resource_spans));
    wire::head(buf, RESOURCE_SPANS, resource_spans);
    wire::bytes(buf, RESOURCE, &resource);
    wire::head(buf, SCOPE_SPANS, scope_spans);
    wire::bytes(buf, SCOPE, &scope);
    for s in spans {
        wire::bytes(buf, SPANS, s);
    }
    wire::bytes(buf, SCHEMA, SCHEMA_URL.as_bytes());
}

/// gRPC codec of an export request already encoded ([`export_request`]).
#[derive(Debug, Clone, Copy, Default)]
struct EncodedRequest;

impl Codec for EncodedRequest {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = EncodedRequest;
    type Decoder = tonic_prost::ProstDecoder<ExportTraceServiceResponse>;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedRequest
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

impl Encoder for EncodedRequest {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

struct Worker {
    client: tonic::client::Grpc<Channel>,
    /// Where to export; changes when the live configuration re-points the exporter.
    endpoint: watch::Receiver<Channel>,
    rx: mpsc::Receiver<QueuedSpan>,
    control: mpsc::Receiver<Control>,
    resource: Resource,
    config: ExportConfig,
    metrics: Arc<Metrics>,
    in_worker: Arc<AtomicU64>,
}

/// What the OTLP spec calls retryable, plus `Unknown`, which tonic reports when it could not
/// reach the endpoint at all ("Service was not ready").
fn retryable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Cancelled
            | DeadlineExceeded
            | ResourceExhausted
            | Aborted
            | OutOfRange
            | Unavailable
            | DataLoss
            | Unknown
    )
}

impl Worker {
    /// Takes a new endpoint if one was set since the last look.
    fn follow_endpoint(&mut self) {
        if self.endpoint.has_changed().unwrap_or(false) {
            let channel = self.endpoint.borrow_and_update().clone();
            self.client = tonic::client::Grpc::new(channel);
            tracing::debug!("span exporter re-pointed");
        }
    }

    async fn run(mut self) {
        let mut batch: Vec<QueuedSpan> = Vec::with_capacity(self.config.batch_size);
        let mut batch_due = Instant::now();
        loop {
            let waiting = !batch.is_empty();
            tokio::select! {
                biased;
                ctl = self.control.recv() => {
                    let (deadline, done, stop) = match ctl {
                        Some(Control::Flush { deadline, done }) => (deadline, Some(done), false),
                        Some(Control::Shutdown { deadline, done }) => (deadline, Some(done), true),
                        // The exporter was dropped without shutdown: deliver what we can.
                        None => (Instant::now() + self.config.shutdown_timeout, None, true),
                    };
                    self.drain(std::mem::take(&mut batch), deadline).await;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    if stop {
                        return;
                    }
                }
                span = self.rx.recv() => match span {
                    Some(span) => {
                        if batch.is_empty() {
                            batch_due = Instant::now() + self.config.batch_timeout;
                        }
                        batch.push(span);
                        self.in_worker.fetch_add(1, Ordering::Relaxed);
                        if batch.len() >= self.config.batch_size {
                            self.export(std::mem::take(&mut batch), None).await;
                        }
                    }
                    None => {
                        let deadline = Instant::now() + self.config.shutdown_timeout;
                        self.drain(std::mem::take(&mut batch), deadline).await;
                        return;
                    }
                },
                _ = tokio::time::sleep_until(batch_due), if waiting => {
                    self.export(std::mem::take(&mut batch), None).await;
                }
            }
            self.metrics.export_queue(self.rx.len());
        }
    }

    /// Exports `batch` and everything queued now, giving up at `deadline`.
    async fn drain(&mut self, mut batch: Vec<QueuedSpan>, deadline: Instant) {
        loop {
            while batch.len() < self.config.batch_size {
                match self.rx.try_recv() {
                    Ok(span) => {
                        batch.push(span);
                        self.in_worker.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            self.export(std::mem::take(&mut batch), Some(deadline))
                .await;
        }
        self.metrics.export_queue(self.rx.len());
    }

    /// Sends `request` (an encoded `ExportTraceServiceRequest`) once.
    async fn send(
        &mut self,
        request: tonic::Request<Bytes>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        // As the generated client reports an endpoint it cannot reach (`Unknown`, retried).
        self.client
            .ready()
            .await
            .map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
        self.client
            .unary(
                request,
                http::uri::PathAndQuery::from_static(EXPORT_PATH),
                EncodedRequest,
            )
            .await
    }

    /// Sends one batch, retrying transient failures until the retry budget or `deadline` runs
    /// out; counts what was delivered and what was dropped.
    async fn export(&mut self, spans: Vec<QueuedSpan>, deadline: Option<Instant>) {
        let n = spans.len() as u64;
        if n == 0 {
            return;
        }
        let request = export_request(&self.resource, &spans);
        drop(spans);
        let budget_end = Instant::now() + self.config.retry_max_elapsed;
        let give_up_at = deadline.map_or(budget_end, |d| d.min(budget_end));
        let mut backoff = self.config.min_backoff;
        loop {
            // A batch retried against a dead endpoint moves to a new one at once.
            self.follow_endpoint();
            let mut req = tonic::Request::new(request.clone());
            req.set_timeout(self.config.request_timeout);
            let attempt = tokio::time::timeout(self.config.request_timeout, self.send(req)).await;
            let status = match attempt {
                Ok(Ok(response)) => {
                    let rejected = response
                        .into_inner()
                        .partial_success
                        .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
                        .min(n);
                    if rejected > 0 {
                        tracing::warn!(rejected, "OTLP endpoint rejected part of a batch");
                        self.metrics.dropped_spans(DropReason::Rejected, rejected);
                    }
                    self.metrics.spans_exported(n - rejected);
                    break;
                }
                Ok(Err(status)) => status,
                Err(_) => tonic::Status::deadline_exceeded("export request timed out"),
            };
            self.metrics.export_failure();
            if !retryable(status.code()) {
                tracing::warn!(error = %status, spans = n, "OTLP endpoint refused a batch; dropped");
                self.metrics.dropped_spans(DropReason::Rejected, n);
                break;
            }
            let wait = jitter(backoff);
            if Instant::now() + wait >= give_up_at {
                let reason = if deadline.is_some_and(|d| d < budget_end) {
                    DropReason::Shutdown
                } else {
                    DropReason::RetriesExhausted
                };
                tracing::warn!(error = %status, spans = n, ?reason, "OTLP export kept failing; batch dropped");
                self.metrics.dropped_spans(reason, n);
                break;
            }
            tracing::debug!(error = %status, ?wait, "OTLP export failed; retrying");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
        self.in_worker.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Up to +-25% so many correlators do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    let spread = d.as_nanos() as u64 / 2;
    if spread == 0 {
        return d;
    }
    let offset = rand::random::<u64>() % spread;
    Duration::from_nanos(d.as_nanos() as u64 - spread / 2 + offset)
}

#[cfg(test)]
mod tests;
