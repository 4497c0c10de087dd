//! `SessionIngest`: receives session batches from collectors, joins each session with the other
//! points' views of the same exchange ([`crate::join`]), stores the merged exchange — then
//! acknowledges the batch. Spans and RED metrics follow when an exchange's join window closes
//! ([`IngestService::tick`]).
//!
//! Delivery is at-least-once (see `clovisor_proto::delivery`): a re-sent batch keeps its number,
//! so a batch numbered at or below the last one processed for its sender is acknowledged again
//! but not processed twice.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clovisor_proto::delivery::Opening;
use clovisor_proto::hops::{DirectReceiver, HopMessage, SessionHop};
use clovisor_proto::session::v1::session_ingest_server::{SessionIngest, SessionIngestServer};
use clovisor_proto::session::v1::{Session, SessionAck, SessionBatch};
use futures::{Stream, StreamExt};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::export::otlp::ExportHandle;
use crate::join::{JoinConfig, Joiner, Outcome, Placed};
use crate::metrics::{Metrics, Offers};
use crate::record::{ContextIssue, CorrelatedSession};
use crate::store::Store;

/// Senders remembered for deduplication at most; each collector process is one sender, so this
/// only matters across very many collector restarts. The least recently seen is forgotten.
const MAX_SENDERS: usize = 4096;

/// Exchanges made ready that a batch's offers gather before they are counted and exported
/// ([`IngestService::accept_batch_at`]): about a hundred kilobytes of decoded sessions, which
/// the cache still holds when they are read again.
const READY_CHUNK: usize = 64;

#[derive(Debug)]
struct SenderState {
    last_seq: u64,
    seen: Instant,
}

/// The ingest service and the in-process entry point [`IngestService::accept`].
#[derive(Debug, Clone)]
pub struct IngestService {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    export: Option<ExportHandle>,
    senders: Arc<Mutex<HashMap<String, Arc<Mutex<SenderState>>>>>,
    window: Duration,
    max_message_bytes: usize,
    /// Exchanges finished with since the join was last locked, which it decodes the next ready
    /// ones into ([`Joiner::restock`]): most exchanges are decoded once, when their window
    /// closes, and dropped once counted, and their blocks — some twenty strings and vectors
    /// each — are written over instead of freed and allocated again.
    finished: Arc<Mutex<Vec<Arc<CorrelatedSession>>>>,
}

impl IngestService {
    /// A service storing into `store`, counting into `metrics` and exporting through `export`
    /// (none when span export is off).
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>, export: Option<ExportHandle>) -> Self {
        Self::with_join(store, metrics, export, JoinConfig::default())
    }

    /// Like [`IngestService::new`] with the join configured by `join`.
    pub fn with_join(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        export: Option<ExportHandle>,
        join: JoinConfig,
    ) -> Self {
        // The join and the store hold each exchange once, under one lock.
        store.configure_join(join);
        Self {
            store,
            metrics,
            export,
            senders: Arc::new(Mutex::new(HashMap::new())),
            window: join.window,
            max_message_bytes: clovisor_proto::hops::MAX_MESSAGE_BYTES,
            finished: Arc::default(),
        }
    }

    /// Accepts session batches of up to `bytes` (`CLOVISOR_MAX_MESSAGE_BYTES`); a larger one
    /// ends its stream and is counted (`clovisor_correlator_ingest_batches_total{result="too_large"}`).
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// How often [`IngestService::tick`] should run: often enough that a span leaves soon after
    /// its window closes, rarely enough to cost nothing.
    pub fn tick_interval(&self) -> Duration {
        (self.window / 4).clamp(Duration::from_millis(10), Duration::from_millis(250))
    }

    /// Exports and counts the exchanges whose join window has closed.
    pub fn tick(&self) {
        self.tick_at(Instant::now());
    }

    /// [`IngestService::tick`] as if it were `now` (benchmarks and tests drive the clock).
    pub fn tick_at(&self, now: Instant) {
        self.release(now, |joiner, now| joiner.expire(now));
    }

    /// Exports and counts every exchange still open, without waiting for its window (shutdown).
    pub fn drain(&self) {
        self.release(Instant::now(), |joiner, now| joiner.drain(now));
    }

    /// Takes the exchanges `pick` makes ready out of the join, then exports and counts them
    /// (outside the lock).
    fn release(
        &self,
        now: Instant,
        pick: impl FnOnce(&mut Joiner, Instant) -> Vec<Arc<CorrelatedSession>>,
    ) {
        let ready = {
            let mut joiner = self.join();
            let ready = pick(&mut joiner, now);
            self.join_gauges(&joiner);
            ready
        };
        self.finish(ready);
    }

    /// The join, locked for writing, given the exchanges finished with since it was last
    /// locked.
    fn join(&self) -> std::sync::RwLockWriteGuard<'_, Joiner> {
        let mut joiner = self.store.write();
        let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        joiner.restock(&mut finished);
        joiner
    }

    fn finish(&self, mut ready: Vec<Arc<CorrelatedSession>>) {
        if ready.is_empty() {
            return;
        }
        // One pass over the exchanges, each counted while it is in the cache (a pass per
        // reader read each again from memory). An exchange only counters-only views saw (a
        // covered veth's timings whose decoded view never came) has no protocol, method or
        // status: no span, no RED metrics, not listed by the REST API (which finds it by id);
        // counted.
        let mut unjoined = 0;
        {
            let mut analytics = self
                .store
                .analytics()
                .observer_at(crate::analytics::now_unix_nanos());
            ready.retain(|r| {
                if clovisor_proto::join::merge::counters_only(&r.session) {
                    unjoined += 1;
                    return false;
                }
                analytics.observe(r);
                self.metrics.observe_session(r);
                true
            });
        }
        if unjoined > 0 {
            self.metrics.counter_views_unjoined(unjoined);
        }
        self.store.publish(&ready);
        if let Some(export) = &self.export {
            for rec in &ready {
                export.enqueue_session(rec);
            }
        }
        // For the join to decode the next ones into (those the REST API's feed or the exporter
        // still hold are skipped there).
        let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        if finished.len() < Joiner::SPARES_MAX {
            finished.append(&mut ready);
        }
    }

    /// Exchanges in the join now: (open, held — open and retained).
    pub fn join_len(&self) -> (usize, usize) {
        let joiner = self.store.read();
        (joiner.open_len(), joiner.len())
    }

    /// Wraps the service for a tonic server.
    pub fn into_server(self) -> SessionIngestServer<Self> {
        let max = self.max_message_bytes;
        SessionIngestServer::new(self).max_decoding_message_size(max)
    }

    /// Takes one point's view of one exchange: joins it with what other points saw of the same
    /// exchange, stores the merged exchange (replacing its previous version) and counts it.
    /// Returns the exchange as stored.
    ///
    /// A session whose id was seen before is the same view made again (a collector restarted and
    /// re-decoded records its predecessor had already turned into sessions): it is counted as
    /// `clovisor_dropped_total{stage="correlator",reason="duplicate"}` and the stored exchange
    /// returned.
    pub fn accept(&self, session: Session) -> Arc<CorrelatedSession> {
        self.accept_at(session, Instant::now())
    }

    /// [`IngestService::accept`] as if it were `now`.
    pub fn accept_at(&self, session: Session, now: Instant) -> Arc<CorrelatedSession> {
        let (record, ready) = {
            let mut joiner = self.join();
            let mut offers = Offers::default();
            let offered = self.offer(&mut joiner, session, now, &mut offers);
            self.metrics.offered(&mut offers);
            self.join_gauges(&joiner);
            offered
        };
        self.finish(ready);
        record
    }

    /// Copies the join's size and view counts (cumulative) into the metrics: once per batch,
    /// with the join still locked.
    fn join_gauges(&self, joiner: &Joiner) {
        self.metrics.join_state(joiner.open_len(), joiner.len());
        self.metrics.join_views(joiner.views());
    }

    /// Offers `session` to the join (locked by the caller) and counts what happened, but for
    /// [`IngestService::join_gauges`], which the caller copies once it has offered its sessions;
    /// returns the exchange as stored and the exchanges that became ready meanwhile, to finish
    /// once the lock is released.
    fn offer(
        &self,
        joiner: &mut Joiner,
        session: Session,
        now: Instant,
        offers: &mut Offers,
    ) -> (Arc<CorrelatedSession>, Vec<Arc<CorrelatedSession>>) {
        offers.received();
        let offered = joiner.offer_encoded(session, None, now);
        let record = Arc::clone(&offered.record);
        (record, self.count(joiner, Placed::from(offered), offers))
    }

    /// [`IngestService::offer`] of a session as it arrived in a batch: by its head
    /// ([`crate::join::head`]), decoded whole only when the join needs it. Returns the exchanges
    /// that became ready meanwhile.
    fn offer_encoded(
        &self,
        joiner: &mut Joiner,
        encoded: Bytes,
        now: Instant,
        offers: &mut Offers,
    ) -> Vec<Arc<CorrelatedSession>> {
        match joiner.offer_head(encoded, now) {
            Ok(placed) => {
                offers.received();
                self.count(joiner, placed, offers)
            }
            Err(e) => {
                tracing::debug!(error = %e, "a session of a batch did not decode");
                self.metrics.malformed_session();
                Vec::new()
            }
        }
    }

    /// Counts what one offer did (into `offers`, but for what is rare); returns the exchanges
    /// that became ready.
    fn count(
        &self,
        joiner: &Joiner,
        placed: Placed,
        offers: &mut Offers,
    ) -> Vec<Arc<CorrelatedSession>> {
        // A session id the join or the store holds is a duplicate (the join checks).
        if placed.outcome != Outcome::Duplicate {
            offers.stored(placed.store_evicted, joiner.store_len());
        }
        for issue in &placed.issues {
            self.metrics.invalid_context(match issue {
                ContextIssue::InvalidTraceId => "trace_id",
                ContextIssue::InvalidParentSpanId => "parent_span_id",
            });
        }
        offers.outcome(placed.outcome);
        if placed.outcome == Outcome::Duplicate {
            self.metrics.duplicate_session();
        }
        for e in &placed.evictions {
            offers.eviction(*e);
        }
        placed.ready
    }

    /// Processes `batch` unless its number was already processed for its sender; returns whether
    /// it was processed. Either way the batch may be acknowledged afterwards.
    pub fn accept_batch(&self, batch: SessionBatch) -> bool {
        self.accept_batch_at(batch, Instant::now())
    }

    /// [`IngestService::accept_batch`] as if it were `now`: every session of the batch arrives
    /// at `now` (one clock read per batch).
    pub fn accept_batch_at(&self, batch: SessionBatch, now: Instant) -> bool {
        let state = self.sender(&batch.sender, now);
        // Held while storing so that a second stream of the same sender (a reconnect racing the
        // old one) cannot acknowledge this number before it is stored.
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        state.seen = now;
        if batch.seq <= state.last_seq {
            self.metrics.batch(true);
            return false;
        }
        // Spans and metrics of what became ready, after the offers that made it ready: every
        // [`READY_CHUNK`] exchanges or so, while their decoded sessions are still in the cache
        // (the join made at most `Joiner::READY_PER_OFFER` ready per offer), and the join's lock
        // released meanwhile.
        let mut sessions = batch.sessions.into_iter().peekable();
        while sessions.peek().is_some() {
            let mut ready = Vec::new();
            {
                let mut joiner = self.join();
                let mut offers = Offers::default();
                for encoded in sessions.by_ref() {
                    ready.extend(self.offer_encoded(&mut joiner, encoded, now, &mut offers));
                    if ready.len() >= READY_CHUNK {
                        break;
                    }
                }
                self.metrics.offered(&mut offers);
                self.join_gauges(&joiner);
            }
            self.finish(ready);
        }
        state.last_seq = batch.seq;
        self.metrics.batch(false);
        true
    }

    fn sender(&self, sender: &str, now: Instant) -> Arc<Mutex<SenderState>> {
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = senders.get(sender) {
            return Arc::clone(s);
        }
        if senders.len() >= MAX_SENDERS {
            let oldest = senders
                .iter()
                .min_by_key(|(_, s)| {
                    s.lock()
                        .map(|s| s.seen)
                        .unwrap_or_else(|p| p.into_inner().seen)
                })
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                senders.remove(&k);
            }
        }
        let state = Arc::new(Mutex::new(SenderState {
            last_seq: 0,
            seen: now,
        }));
        senders.insert(sender.to_owned(), Arc::clone(&state));
        state
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<SessionAck, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl SessionIngest for IngestService {
    type PushStream = AckStream;

    async fn push(
        &self,
        request: tonic::Request<tonic::Streaming<SessionBatch>>,
    ) -> Result<tonic::Response<Self::PushStream>, tonic::Status> {
        Ok(tonic::Response::new(self.serve(request.into_inner())))
    }
}

/// A collector in this process (`clovisor all-in-one`) streams to the service directly: its
/// batches decoded from the bytes it encoded them into, as the gRPC codec decodes a frame.
impl DirectReceiver<SessionHop> for IngestService {
    fn open(&self, outbound: ReceiverStream<HopMessage>) -> Opening<'static, SessionHop> {
        let inbound = outbound.map(|m| {
            SessionBatch::decode(m.to_bytes()).map_err(|e| tonic::Status::internal(e.to_string()))
        });
        let acks = self.serve(inbound);
        Box::pin(async move { Ok(acks) })
    }
}

impl IngestService {
    /// One collector's stream of batches, however it came: each accepted in turn and
    /// acknowledged, on a task of its own.
    fn serve(
        &self,
        mut inbound: impl Stream<Item = Result<SessionBatch, tonic::Status>> + Send + Unpin + 'static,
    ) -> AckStream {
        // Acks are tiny; the bound only matters if the collector stops reading them, and then
        // waiting here is the right back-pressure.
        let (tx, rx) = mpsc::channel(64);
        let service = self.clone();
        tokio::spawn(async move {
            while let Some(next) = inbound.next().await {
                let batch = match next {
                    Ok(batch) => batch,
                    Err(status) => {
                        // tonic refuses a message over the size limit with `out of range`.
                        if status.code() == tonic::Code::OutOfRange {
                            service.metrics.batch_too_large();
                            tracing::warn!(error = %status, limit = service.max_message_bytes,
                                "session batch over CLOVISOR_MAX_MESSAGE_BYTES: stream ended");
                        } else {
                            tracing::debug!(error = %status, "session stream ended with an error");
                        }
                        break;
                    }
                };
                let seq = batch.seq;
                let processed = service.accept_batch(batch);
                tracing::trace!(seq, processed, "session batch");
                if tx.send(Ok(SessionAck { seq })).await.is_err() {
                    break;
                }
            }
        });
        ReceiverStream::new(rx).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::span::build_span;
    use crate::testing::SessionBuilder;
    use clovisor_proto::inproc;
    use clovisor_proto::session::v1::session_ingest_client::SessionIngestClient;
    use std::time::Duration;
    use tonic::transport::Server;

    fn service() -> IngestService {
        IngestService::new(Arc::new(Store::new(100)), Arc::new(Metrics::new()), None)
    }

    /// Connects a client to `svc` over the in-process transport.
    async fn client(
        svc: IngestService,
    ) -> anyhow::Result<SessionIngestClient<tonic::transport::Channel>> {
        let (channel, incoming) = inproc::pair();
        tokio::spawn(async move {
            let _ = Server::builder()
                .add_service(svc.into_server())
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(SessionIngestClient::new(channel))
    }

    /// The ids of the sessions `store` lists, sorted.
    fn stored_ids(store: &Store) -> Vec<String> {
        let mut ids: Vec<String> = store
            .query(&Default::default())
            .iter()
            .map(|s| s.id.clone())
            .collect();
        ids.sort();
        ids
    }

    fn batch(sender: &str, seq: u64, ids: &[&str]) -> SessionBatch {
        let sessions: Vec<Session> = ids
            .iter()
            .map(|id| SessionBuilder::new(id).build())
            .collect();
        SessionBatch::of(seq, sender, &sessions)
    }

    #[tokio::test]
    async fn duplicates_are_acked_but_stored_once() -> anyhow::Result<()> {
        let svc = service();
        let store = Arc::clone(&svc.store);
        let mut client = client(svc).await?;
        let batches = vec![
            batch("collector-a", 1, &["s1", "s2"]),
            batch("collector-a", 2, &["s3"]),
            batch("collector-a", 1, &["s1", "s2"]), // re-sent after a reconnect
            batch("collector-b", 1, &["t1"]),       // another sender has its own numbers
            batch("collector-a", 2, &["s3"]),
            batch("collector-a", 3, &["s4"]),
        ];
        let mut acks = client.push(tokio_stream::iter(batches)).await?.into_inner();
        let mut seen = Vec::new();
        while let Some(ack) = tokio::time::timeout(Duration::from_secs(5), acks.next()).await? {
            seen.push(ack?.seq);
        }
        assert_eq!(
            seen,
            [1, 2, 1, 1, 2, 3],
            "every batch must be acknowledged, in order"
        );
        let ids = stored_ids(&store);
        assert_eq!(
            ids,
            ["s1", "s2", "s3", "s4", "t1"],
            "each session stored exactly once"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_collector_in_this_process_pushes_directly_with_the_same_numbering(
    ) -> anyhow::Result<()> {
        use clovisor_proto::delivery::Connector as _;
        use clovisor_proto::hops::SessionConnector;
        use prost::Message as _;
        let svc = service();
        let store = Arc::clone(&svc.store);
        let mut connector = SessionConnector::direct(Arc::new(svc));
        let (tx, rx) = mpsc::channel::<HopMessage>(8);
        for b in [
            batch("collector-a", 1, &["s1", "s2"]),
            batch("collector-a", 2, &["s3"]),
            batch("collector-a", 1, &["s1", "s2"]), // re-sent after a reconnect
        ] {
            tx.send(Bytes::from(b.encode_to_vec()).into()).await?;
        }
        drop(tx);
        let mut acks = connector.open(ReceiverStream::new(rx)).await?;
        let mut seen = Vec::new();
        while let Some(ack) = tokio::time::timeout(Duration::from_secs(5), acks.next()).await? {
            seen.push(ack?.seq);
        }
        assert_eq!(seen, [1, 2, 1], "every batch acknowledged, in order");
        let ids = stored_ids(&store);
        assert_eq!(ids, ["s1", "s2", "s3"], "each session stored exactly once");
        Ok(())
    }

    #[tokio::test]
    async fn a_batch_over_the_message_limit_ends_its_stream_and_is_counted() -> anyhow::Result<()> {
        let svc = service().with_max_message_bytes(64 << 10);
        let metrics = Arc::clone(&svc.metrics);
        let store = Arc::clone(&svc.store);
        let mut client = client(svc).await?;
        let small = batch("c", 1, &["s1"]);
        let ids: Vec<String> = (0..2000).map(|i| format!("big-{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let big = batch("c", 2, &ids);
        assert!(big.encoded_len() > 64 << 10, "the batch is over the limit");
        let mut acks = client
            .push(tokio_stream::iter(vec![small, big]))
            .await?
            .into_inner();
        let mut seen = Vec::new();
        while let Some(ack) = tokio::time::timeout(Duration::from_secs(5), acks.next()).await? {
            match ack {
                Ok(ack) => seen.push(ack.seq),
                Err(_) => break,
            }
        }
        assert_eq!(seen, [1], "the batch under the limit only is acknowledged");
        assert!(store.get("s1").is_some() && store.get("big-0").is_none());
        let mut reg = prometheus_client::registry::Registry::default();
        metrics.register(&mut reg);
        let text = crate::metrics::encode(&reg);
        assert!(
            text.contains("clovisor_correlator_ingest_batches_total{result=\"too_large\"} 1"),
            "the refusal is counted: {text}"
        );
        Ok(())
    }

    #[test]
    fn accept_assigns_ids_and_counts() {
        let svc = service();
        let rec = svc.accept(SessionBuilder::new("x").trace([3; 16], [4; 8]).build());
        assert_eq!(rec.trace_id.0, [3; 16]);
        assert_eq!(rec.parent_span_id.map(|p| p.0), Some([4; 8]));
        assert!(
            svc.store.get("x").is_some(),
            "accepted session must be stored"
        );
        assert!(
            svc.accept_batch(batch("c", 5, &["y"])),
            "first batch 5 is processed"
        );
        assert!(
            !svc.accept_batch(batch("c", 5, &["y"])),
            "second batch 5 is not"
        );
        assert!(
            !svc.accept_batch(batch("c", 4, &["z"])),
            "older numbers are not"
        );
        assert!(
            svc.store.get("z").is_none(),
            "a duplicate's sessions are not stored"
        );
    }

    /// The correlator stage's loss accounting: received, emitted, and dropped for `reason`.
    fn correlator_stage(svc: &IngestService, reason: &'static str) -> (u64, u64, u64) {
        let drops = svc.metrics.drops();
        (
            drops.received_count("correlator"),
            drops.emitted_count("correlator"),
            drops.get("correlator", reason),
        )
    }

    #[test]
    fn a_session_made_again_by_a_restarted_collector_is_dropped_by_id() {
        let svc = service();
        let first = svc.accept(SessionBuilder::new("p/9/0").build());
        // Same exchange, new batch from a new sender (a restarted collector).
        assert!(svc.accept_batch(batch("collector-2", 1, &["p/9/0", "p/9/2"])));
        assert_eq!(
            svc.store.len(),
            2,
            "expected p/9/0 once and p/9/2, saw {} sessions",
            svc.store.len()
        );
        let again = svc.accept(SessionBuilder::new("p/9/0").build());
        assert!(
            Arc::ptr_eq(&first, &again),
            "the stored record is returned for a duplicate"
        );
        assert_eq!(
            correlator_stage(&svc, "duplicate"),
            (4, 2, 2),
            "(received, stored, duplicates) of the correlator stage"
        );
    }

    #[test]
    fn a_malformed_session_is_dropped_alone_and_counted() {
        let svc = service();
        let mut b = batch("c", 1, &["a", "b"]);
        // A length-delimited field whose length runs past the session's end.
        b.sessions
            .insert(1, bytes::Bytes::from_static(&[0x0a, 0x7f, b'x']));
        assert!(svc.accept_batch(b));
        assert!(svc.store.get("a").is_some() && svc.store.get("b").is_some());
        assert_eq!(
            correlator_stage(&svc, "malformed"),
            (3, 2, 1),
            "(received, stored, malformed) of the correlator stage"
        );
    }

    /// A service joining views within 30 ms.
    fn joining_service() -> IngestService {
        IngestService::with_join(
            Arc::new(Store::new(100)),
            Arc::new(Metrics::new()),
            None,
            JoinConfig {
                window: Duration::from_millis(30),
                ..JoinConfig::default()
            },
        )
    }

    /// One exchange's views at the client's veth, a node interface and the server's veth.
    fn three_points() -> [Session; 3] {
        use clovisor_proto::common::v1::{PointKind, Side};
        let client = SessionBuilder::new("p/1/0")
            .side(Side::Client)
            .with(|s| s.observations[0].interface = "veth-client".into())
            .build();
        let uplink = SessionBuilder::new("p/2/0")
            .side(Side::Unspecified)
            .with(|s| {
                s.observations[0].kind = PointKind::Node as i32;
                s.observations[0].interface = "uplink0".into();
            })
            .build();
        let server = SessionBuilder::new("p/3/0").side(Side::Server).build();
        [client, uplink, server]
    }

    /// Two points' views of one exchange are stored once, found by either id, counted once
    /// when the window closes.
    #[test]
    fn views_of_one_exchange_are_stored_and_counted_once() {
        let svc = joining_service();
        let [client, uplink, server] = three_points();
        svc.accept(client);
        svc.accept(uplink);
        let merged = svc.accept(server);
        assert_eq!(svc.store.len(), 1, "one exchange, stored once");
        assert_eq!(merged.session.observations.len(), 3);
        for id in ["p/1/0", "p/2/0", "p/3/0"] {
            assert_eq!(
                svc.store.get(id).map(|r| r.id.clone()).as_deref(),
                Some("p/1/0"),
                "{id} must find the merged exchange"
            );
        }
        let span = build_span(&merged);
        let starts = span
            .events
            .iter()
            .filter(|e| e.name == "request.start")
            .count();
        assert_eq!(starts, 3, "one request.start event per point");
        assert!(
            format!("{:?}", span.attributes).contains("uplink0"),
            "the node interface is on the span: {:?}",
            span.attributes
        );
        std::thread::sleep(Duration::from_millis(40));
        svc.tick();
        let m = &svc.metrics;
        assert_eq!(
            (m.join_count(Outcome::Opened), m.join_count(Outcome::Joined)),
            (1, 2)
        );
        let drops = m.drops();
        assert_eq!(
            (
                drops.received_count("correlator"),
                drops.emitted_count("correlator")
            ),
            (3, 3),
            "every view is received and passed on (merged), none lost"
        );
    }

    /// A covered veth's counters-only view (no protocol, nothing decoded) that reached the
    /// correlator alone: joined by the decoded view of its exchange, which gives the exchange
    /// its protocol and fields; left alone, no span and no RED metrics, but counted.
    #[test]
    fn a_counters_only_view_joins_its_decoded_view_and_alone_makes_no_metrics() {
        use clovisor_proto::common::v1::Side;
        use clovisor_proto::session::v1::Protocol;
        let counters_only = |id: &str, seq: u32| {
            SessionBuilder::new(id)
                .side(Side::Server)
                .with(move |s| {
                    s.protocol = Protocol::Unspecified as i32;
                    s.http = None;
                    s.trace = None;
                    s.observations[0].request_tcp_seq = seq;
                })
                .build()
        };
        let svc = joining_service();
        let t0 = Instant::now();
        // Joined: the counters view first, the socket's decoded view after it.
        let decoded = SessionBuilder::new("p/socket/0")
            .side(Side::Server)
            .with(|s| {
                s.observations[0].kind = clovisor_proto::common::v1::PointKind::Socket as i32;
                s.observations[0].interface.clear();
                s.observations[0].request_tcp_seq = 1000;
            })
            .build();
        svc.accept_at(counters_only("p/veth/0", 1000), t0);
        let merged = svc.accept_at(decoded, t0);
        assert_eq!(
            merged.session.observations.len(),
            2,
            "one exchange, two views"
        );
        assert_eq!(merged.session.protocol, Protocol::Http1 as i32);
        assert!(merged.session.http.is_some());
        // Alone: another client port, nothing joins it.
        svc.accept_at(
            {
                let mut s = counters_only("p/veth/1", 2000);
                if let Some(c) = s.client.as_mut() {
                    c.port = 41000;
                }
                s
            },
            t0,
        );
        svc.tick_at(t0 + Duration::from_millis(40));
        let mut reg = prometheus_client::registry::Registry::default();
        svc.metrics.register(&mut reg);
        let text = crate::metrics::encode(&reg);
        let line = |name: &str| {
            text.lines()
                .filter(|l| l.starts_with(name))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            line("clovisor_correlator_payloadless_views_unjoined_total"),
            ["clovisor_correlator_payloadless_views_unjoined_total 1"]
        );
        let requests: f64 = line("clovisor_http_requests_total{")
            .iter()
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(requests, 1.0, "only the decoded exchange counts:\n{text}");
        assert!(
            svc.store.get("p/veth/1").is_some(),
            "the REST API finds the lone view by its id"
        );
        let listed: Vec<String> = svc
            .store
            .query(&Default::default())
            .iter()
            .map(|r| r.id.clone())
            .collect();
        assert_eq!(listed, ["p/veth/0"], "but does not list it");
    }

    /// A view merged after its exchange's window closed misses the span and the metrics: the
    /// join stage counts it lost (`late`); the views still open are buffered; the balance holds
    /// from the join's own counts, not from the ingest's.
    #[test]
    fn a_late_view_is_counted_lost_by_the_join_and_the_join_stage_balances() {
        use crate::metrics::STAGE_JOIN;
        let svc = joining_service();
        let t0 = Instant::now();
        let [client, uplink, server] = three_points();
        svc.accept_at(client, t0);
        svc.accept_at(uplink, t0);
        let drops = svc.metrics.drops();
        let stage = || {
            (
                drops.received_count(STAGE_JOIN),
                drops.emitted_count(STAGE_JOIN),
                drops.get(STAGE_JOIN, "late"),
                drops.buffered_count(STAGE_JOIN),
            )
        };
        assert_eq!(stage(), (2, 0, 0, 2), "two views wait in one open exchange");
        svc.tick_at(t0 + Duration::from_millis(40));
        assert_eq!(stage(), (2, 2, 0, 0), "the window closed: both views ready");
        let merged = svc.accept_at(server, t0 + Duration::from_millis(50));
        assert_eq!(
            merged.session.observations.len(),
            3,
            "the late view is merged for REST"
        );
        assert_eq!(
            stage(),
            (3, 2, 1, 0),
            "the late view is counted lost to the span and metrics"
        );
        assert_eq!(svc.metrics.join_count(Outcome::Late), 1);
    }

    /// RED requests counted so far.
    fn red_requests(svc: &IngestService) -> f64 {
        let mut reg = prometheus_client::registry::Registry::default();
        svc.metrics.register(&mut reg);
        crate::metrics::encode(&reg)
            .lines()
            .filter(|l| l.starts_with("clovisor_http_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// What a collector's local join sends of an exchange its probe saw whole: the server's
    /// veth and socket merged, a client that is no pod of ours (nothing else will see it).
    fn seen_whole(id: &str) -> Session {
        SessionBuilder::new(id).with(whole).build()
    }

    /// Makes `s` a view nothing else will join (its client outside the cluster).
    fn whole(s: &mut Session) {
        if let Some(c) = s.client.as_mut() {
            c.pod.clear();
            c.workload.clear();
        }
    }

    /// `s` from its own client address and connection: another exchange than the others.
    fn apart(s: &mut Session, n: u8) {
        if let Some(c) = s.client.as_mut() {
            c.ip = vec![10, 1, 0, n].into();
            c.port = 41000 + u32::from(n);
        }
        for o in &mut s.observations {
            o.request_tcp_seq = 1000 * u32::from(n);
        }
    }

    /// A view nothing else will join is held as it arrived (its head read, the rest not
    /// decoded) and decoded whole once, when its window closes: the REST API reads it whole
    /// meanwhile, and its metrics are those of a view decoded on arrival.
    #[test]
    fn a_view_nothing_will_join_is_decoded_whole_when_its_window_closes() {
        let svc = joining_service();
        let t0 = Instant::now();
        let b = SessionBatch::of(1, "c", &[seen_whole("p/1/0")]);
        assert!(svc.accept_batch_at(b, t0));
        let open = svc.store.get("p/1/0").map(|r| r.session.clone());
        assert_eq!(open, Some(seen_whole("p/1/0")), "read whole while open");
        assert_eq!(red_requests(&svc), 0.0, "nothing counted while open");
        svc.tick_at(t0 + Duration::from_millis(40));
        assert_eq!(red_requests(&svc), 1.0);
        let stored = svc.store.get("p/1/0").map(|r| r.session.clone());
        assert_eq!(stored, Some(seen_whole("p/1/0")), "and once ready");
        assert_eq!(svc.metrics.join_count(Outcome::Opened), 1);
    }

    /// Exchanges finished with are decoded into again as the next windows close: what they
    /// count, export and publish is the new exchange, with nothing of the one before.
    #[test]
    fn exchanges_decoded_into_finished_ones_carry_nothing_of_them() {
        let svc = joining_service();
        let t0 = Instant::now();
        // Rich exchanges first: more observations, HTTP fields, a trace context.
        let rich: Vec<Session> = (0..4u8)
            .map(|i| {
                SessionBuilder::new(&format!("p/1/{i}"))
                    .with(|s| {
                        s.observations[0].comm = "nginx".into();
                        s.merged_ids = vec![format!("p/9/{i}"), format!("p/8/{i}")];
                        let o = s.observations[0].clone();
                        s.observations.push(o.clone());
                        s.observations.push(o);
                        s.attributes.insert("k".into(), "v".into());
                        whole(s);
                        apart(s, i);
                    })
                    .build()
            })
            .collect();
        assert!(svc.accept_batch_at(SessionBatch::of(1, "c", &rich), t0));
        svc.tick_at(t0 + Duration::from_millis(40));
        assert_eq!(svc.finished.lock().map(|f| f.len()).unwrap_or(0), 4);
        // Then plain ones, followed (held by the feed, so published as decoded).
        let mut feed = svc.store.subscribe();
        let plain: Vec<Session> = (0..4u8)
            .map(|i| {
                SessionBuilder::new(&format!("q/2/{i}"))
                    .with(|s| {
                        s.http = None;
                        s.trace = None;
                        if let Some(o) = s.observations.first_mut() {
                            o.comm.clear();
                            o.interface = "eth1".into();
                        }
                        whole(s);
                        apart(s, 10 + i);
                    })
                    .build()
            })
            .collect();
        let t1 = t0 + Duration::from_millis(50);
        assert!(svc.accept_batch_at(SessionBatch::of(2, "c", &plain), t1));
        assert_eq!(
            svc.store.read().spare_count(),
            4,
            "the finished ones were handed to the join"
        );
        svc.tick_at(t1 + Duration::from_millis(40));
        assert_eq!(svc.store.read().spare_count(), 0, "and decoded into");
        let mut held = Vec::new();
        for want in &plain {
            let got = feed.try_recv().expect("published");
            assert_eq!(&got.session, want);
            assert_eq!(got.id, want.id);
            assert!(got.constituents.iter().all(|c| c.starts_with("q/")));
            held.push(got);
        }
        assert_eq!(svc.finished.lock().map(|f| f.len()).unwrap_or(0), 4);
        drop(svc.join());
        assert_eq!(
            svc.store.read().spare_count(),
            0,
            "held elsewhere: not reused"
        );
        assert_eq!(held.len(), 4);
    }

    /// A view that joins an exchange held as it arrived merges as into one decoded on arrival.
    #[test]
    fn a_view_joins_an_exchange_held_as_it_arrived() {
        use clovisor_proto::common::v1::{PointKind, Side};
        let svc = joining_service();
        let t0 = Instant::now();
        assert!(svc.accept_batch_at(SessionBatch::of(1, "c", &[seen_whole("p/1/0")]), t0));
        // The client's own node saw it too (another probe's collector).
        let client_view = SessionBuilder::new("q/7/0")
            .side(Side::Client)
            .with(|s| {
                s.observations[0].kind = PointKind::Pod as i32;
                s.observations[0].interface = "veth-client".into();
                s.observations[0].node = "node-a".into();
                s.observations[0].probe_id = "probe-a".into();
            })
            .build();
        assert!(svc.accept_batch_at(SessionBatch::of(1, "d", &[client_view]), t0));
        assert_eq!(svc.metrics.join_count(Outcome::Joined), 1);
        let merged = svc.store.get("q/7/0");
        assert_eq!(
            merged
                .as_ref()
                .map(|r| (r.id.as_str(), r.session.observations.len())),
            Some(("p/1/0", 2)),
            "one exchange of both views"
        );
        assert_eq!(
            merged.and_then(|r| r.session.http.as_ref().map(|h| h.method.clone())),
            Some("GET".to_owned())
        );
        svc.tick_at(t0 + Duration::from_millis(40));
        assert_eq!(red_requests(&svc), 1.0, "counted once");
    }

    /// A view held as it arrived whose whole decoding fails (only its head was read) is
    /// dropped when its window closes and counted; nothing else of its batch is lost.
    #[test]
    fn a_view_held_as_it_arrived_that_does_not_decode_is_dropped_and_counted() {
        use crate::metrics::STAGE_JOIN;
        let svc = joining_service();
        let t0 = Instant::now();
        let mut bad = seen_whole("p/1/0");
        if let Some(h) = bad.http.as_mut() {
            h.target = "/MARK".into();
        }
        let mut bad = bad.encode_to_vec();
        let at = bad.windows(5).position(|w| w == b"/MARK");
        let Some(at) = at else {
            unreachable!("the target is in the encoding")
        };
        // Not UTF-8: a string the head does not read.
        bad[at + 1] = 0xff;
        let mut good = seen_whole("p/2/0");
        if let Some(c) = good.client.as_mut() {
            c.port = 40001;
        }
        let good = good.encode_to_vec();
        let b = SessionBatch {
            seq: 1,
            sender: "c".into(),
            sessions: vec![bad.into(), good.into()],
        };
        assert!(svc.accept_batch_at(b, t0));
        svc.tick_at(t0 + Duration::from_millis(40));
        assert_eq!(red_requests(&svc), 1.0, "the other view is counted");
        let drops = svc.metrics.drops();
        assert_eq!(
            (
                drops.received_count(STAGE_JOIN),
                drops.emitted_count(STAGE_JOIN),
                drops.get(STAGE_JOIN, "malformed"),
                drops.buffered_count(STAGE_JOIN),
            ),
            (2, 1, 1, 0),
            "(received, emitted, malformed, buffered) of the join stage"
        );
        assert!(
            svc.store
                .get("p/1/0")
                .is_some_and(|r| r.session.http.is_none()),
            "found by its id, with nothing decoded"
        );
    }
}
