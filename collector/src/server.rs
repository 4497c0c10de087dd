//! The gRPC ingest service probes stream their records to.
//!
//! Per stream: a `Hello` first, then numbered batches. The highest processed batch number is
//! remembered per probe id across streams, so batches a reconnecting probe re-sends are
//! acknowledged without being processed twice. Sessions are handed to the output channel with
//! `send().await` *before* the batch is acknowledged, so a slow consumer slows the probe's stream
//! instead of growing memory here.
//!
//! With [`CaptureService::ack_after_downstream`], a batch is acknowledged only once every session
//! handed to the output before it was acknowledged by the correlator: a collector killed with
//! sessions still in its forwarder then loses none of them, because the probe re-sends the batches
//! they came from (the correlator drops the re-made sessions by id).
//!
//! Who may speak for which probe id and node, and how far a batch number may jump, is
//! [`admission`]'s business: the `Hello` is checked against the connection's TLS client
//! certificate before anything is kept for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use clovisor_config::LiveConfig;
use clovisor_proto::capture::v1::{
    collector_message, Ack, CollectorMessage, FlowTable as OpenFlows, Hello,
};
use clovisor_proto::delivery::{DeliveryStats, Opening};
use clovisor_proto::hops::{
    CaptureHop, DirectReceiver, EncodedSession, HopMessage, SessionEncoder,
};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use clovisor_proto::tls::PeerIdentity;

use self::admission::{AdmissionConfig, AdmittedToken, Recheck, Refused, StreamEnd};
use self::inbound::{Batch, Inbound};
use crate::decode::redact;
use crate::flows::{Collected, CounterView, FlowTable, FlowTableConfig};
use crate::local_join::LocalJoin;
use crate::metrics::CollectorMetrics;

/// Tuning of a [`CaptureService`].
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Limits of the flow table.
    pub flows: FlowTableConfig,
    /// How often idle flows, reordering gaps and early-flushed responses are looked at.
    pub flush_interval: Duration,
    /// Who may speak for which probe, and the bounds on what a probe makes the collector keep.
    pub admission: AdmissionConfig,
    /// Query parameters redacted in request targets besides the built-in ones.
    pub redact_query_keys: Vec<String>,
    /// How long a session waits for the other views its probe sent of the same exchange
    /// ([`crate::local_join`]); zero merges within a batch only.
    pub local_join_hold: Duration,
    /// What a session's strings and attribute maps are capped to as it leaves.
    pub field_limits: crate::decode::limits::FieldLimits,
    /// Largest probe message decoded (bytes).
    pub max_message_bytes: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            flows: FlowTableConfig::default(),
            flush_interval: Duration::from_secs(1),
            admission: AdmissionConfig::default(),
            redact_query_keys: Vec::new(),
            local_join_hold: crate::local_join::DEFAULT_HOLD,
            field_limits: crate::decode::limits::FieldLimits::default(),
            max_message_bytes: clovisor_proto::hops::MAX_MESSAGE_BYTES,
        }
    }
}

struct State {
    table: FlowTable,
    /// Highest processed batch number per probe id.
    last_seq: HashMap<String, u64>,
    /// Current probe id per node, to notice restarts.
    node_probe: HashMap<String, String>,
    /// The certificate identity ([`PeerIdentity::key`], empty without one) each probe id is
    /// bound to.
    owners: HashMap<String, String>,
}

/// Aborts the flusher when the service goes away.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Inner {
    state: Mutex<State>,
    out: mpsc::Sender<EncodedSession>,
    metrics: Arc<CollectorMetrics>,
    flush_interval: Duration,
    local_join_hold: Duration,
    admission: AdmissionConfig,
    query_redaction: Arc<clovisor_runtime::redact::QueryRedaction>,
    field_limits: crate::decode::limits::FieldLimits,
    max_message_bytes: usize,
    flusher: OnceLock<AbortOnDrop>,
    /// Sessions handed to `out` so far.
    sent: AtomicU64,
    /// The forwarder's counters, when acks wait for the correlator's.
    downstream: OnceLock<Arc<DeliveryStats>>,
    /// The live configuration (header redaction list); the defaults until one is given.
    live: OnceLock<watch::Receiver<LiveConfig>>,
}

/// How often a held-back acknowledgement looks at the forwarder's progress.
const DOWNSTREAM_POLL: Duration = Duration::from_millis(5);

impl Inner {
    /// Counts the counters-only views among sessions leaving without the local join (the
    /// table's timed flush, a re-announced flow table).
    fn count_counters_only(&self, sessions: &[Collected]) {
        let n = sessions
            .iter()
            .filter(|s| clovisor_proto::join::merge::counters_only(&s.session))
            .count();
        self.metrics
            .counter_views_unmatched
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Applies the header redaction list to sessions about to leave the collector, worked out
    /// once for all of them, and caps their strings' lengths (`decode::limits`).
    fn redact(&self, sessions: &mut [Collected]) {
        if sessions.is_empty() {
            return;
        }
        let redaction = self.redaction();
        for s in sessions {
            self.finish(&redaction, s);
        }
    }

    /// The redaction of the live configuration now, worked out once per batch.
    fn redaction(&self) -> redact::Redaction {
        match self.live.get() {
            Some(live) => redact::Redaction::new(&live.borrow().redacted_headers),
            None => redact::Redaction::new(&LiveConfig::default().redacted_headers),
        }
        .with_query((*self.query_redaction).clone())
    }

    /// Redacts and caps a session about to leave: the last step before it is encoded, so that a
    /// single host's exchange is done once, merged, rather than once per point's view (and a
    /// merge cannot take its attributes past their limit).
    fn finish(&self, redaction: &redact::Redaction, Collected { session: s, .. }: &mut Collected) {
        redaction.apply(s);
        // After redaction: a cut must not leave half a credential-carrying key unmatched.
        crate::decode::limits::cap_session(s, &self.field_limits, |field| {
            self.metrics.field_truncated(field);
        });
    }

    /// Hands `sessions` to the output (see [`Inner::deliver_encoded`]), each encoded here,
    /// once: the forwarder only frames the bytes, and probe streams encode side by side.
    async fn deliver(&self, sessions: Vec<Collected>) -> Result<(), mpsc::error::SendError<()>> {
        let mut encoder = SessionEncoder::new();
        let encoded = sessions.iter().map(|s| s.encode(&mut encoder)).collect();
        self.deliver_encoded(encoded).await
    }

    /// Hands encoded sessions to the output, in order, waiting for room: as many slots as fit
    /// taken at once rather than one wait per session.
    async fn deliver_encoded(
        &self,
        sessions: Vec<EncodedSession>,
    ) -> Result<(), mpsc::error::SendError<()>> {
        let room = self.out.max_capacity().max(1);
        let mut sessions = sessions.into_iter();
        while sessions.len() > 0 {
            let n = sessions.len().min(room);
            let permits = self.out.reserve_many(n).await?;
            for (permit, s) in permits.zip(&mut sessions) {
                permit.send(s);
            }
            self.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the table worse than a lost batch.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the periodic flush once a runtime is available.
    fn ensure_flusher(self: &Arc<Self>) {
        if self.flusher.get().is_some() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        let period = self.flush_interval;
        let _ = self
            .flusher
            .set(AbortOnDrop(handle.spawn(flush_loop(weak, period))));
    }

    /// Counts and logs a refusal; the status for the probe.
    fn refuse(&self, why: Refused, hello: &Hello) -> Status {
        self.metrics
            .probes_refused
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: why.as_label(),
            })
            .inc();
        tracing::warn!(reason = why.as_label(), probe = %hello.probe_id.chars().take(64).collect::<String>(),
            node = %hello.node.chars().take(64).collect::<String>(), "probe stream refused");
        why.status()
    }

    /// Counts a message refused for its size (`--max-message-bytes`; tonic ends the stream with
    /// `out of range`) as `clovisor_collector_probes_refused_total{reason="message_too_large"}`.
    /// Whether it was one.
    fn count_oversized(&self, status: &Status) -> bool {
        let oversized = status.code() == tonic::Code::OutOfRange;
        if oversized {
            self.metrics
                .probes_refused
                .get_or_create(&crate::metrics::ReasonLabel {
                    reason: "message_too_large",
                })
                .inc();
        }
        oversized
    }

    /// Admits a probe's `Hello` from `peer` (see [`admission`]) and registers it; a new probe id
    /// for a known node makes its previous probe's state go.
    fn hello(
        &self,
        hello: &Hello,
        peer: Option<&PeerIdentity>,
        token_node: Option<&str>,
    ) -> Result<(), Refused> {
        let owner = self
            .admission
            .check_hello(&hello.probe_id, &hello.node, peer, token_node)?;
        let mut st = self.lock();
        match st.owners.get(&hello.probe_id) {
            Some(o) if *o != owner => return Err(Refused::ProbeIdOwned),
            Some(_) => {}
            None if st.owners.len() >= self.admission.max_probes => {
                return Err(Refused::TooManyProbes)
            }
            None => {}
        }
        if !hello.node.is_empty() {
            let current = st.node_probe.get(&hello.node);
            if current.is_some_and(|p| st.owners.get(p).is_some_and(|o| *o != owner)) {
                return Err(Refused::NodeOwned);
            }
            if let Some(old) = st
                .node_probe
                .insert(hello.node.clone(), hello.probe_id.clone())
            {
                if old != hello.probe_id {
                    tracing::info!(node = %hello.node, old = %old, new = %hello.probe_id,
                        "probe restarted; forgetting its previous flows");
                    self.metrics.probe_restarts.inc();
                    st.table.forget_probe(&old);
                    st.last_seq.remove(&old);
                    st.owners.remove(&old);
                }
            }
        }
        st.owners.insert(hello.probe_id.clone(), owner);
        st.table.register_probe(&hello.probe_id, &hello.node);
        Ok(())
    }

    /// Applies a probe's table of open flows; returns the sessions of flows ended to make room.
    fn flows(&self, probe_id: &str, table: OpenFlows) -> Vec<Collected> {
        let mut st = self.lock();
        let now = Instant::now();
        let mut out = Vec::new();
        for start in table.flows {
            st.table.start_flow(probe_id, start, now, &mut out);
        }
        st.table.take_counter_views_as_sessions(&mut out);
        st.table.publish_counts();
        out
    }

    /// Processes a batch unless already processed; returns the sessions it completed. A batch
    /// number more than `max_seq_jump` past the last one processed is refused.
    fn batch(
        &self,
        probe_id: &str,
        batch: &Batch,
        spare_views: Vec<CounterView>,
        room: Vec<Collected>,
    ) -> Result<Option<Made>, Refused> {
        let mut st = self.lock();
        let last = st.last_seq.get(probe_id).copied();
        let seq = batch.seq();
        if seq <= last.unwrap_or(0) {
            self.metrics.batches_duplicate.inc();
            return Ok(None);
        }
        // The first batch a collector sees of a probe sets where it stands (the probe may have
        // been up for long before this collector started).
        if last.is_some_and(|last| seq - last > self.admission.max_seq_jump) {
            return Err(Refused::SeqJump);
        }
        let now = Instant::now();
        // About a session per record (a point that pairs request and response sends one record
        // per exchange): room for all of the batch's, most of the time without a growth step, in
        // the room the local join let go of (`LocalJoin::take_spare`).
        let mut out = room;
        out.clear();
        out.reserve(batch.len() + 1);
        // Each record decoded from its bytes into one place as the table takes it (see
        // `inbound`).
        let mut records = batch.records();
        let mut slot = clovisor_proto::capture::v1::Record::default();
        while let Some(decoded) = records.next_into(&mut slot) {
            match decoded {
                Ok(()) => st.table.ingest_in_place(probe_id, &mut slot, now, &mut out),
                Err(_) => st.table.malformed_record(),
            }
        }
        // The batch's counts, made in plain integers, into the shared counters at once.
        st.table.publish_counts();
        match st.last_seq.get_mut(probe_id) {
            Some(last) => *last = seq,
            None => {
                st.last_seq.insert(probe_id.to_owned(), seq);
            }
        }
        // Swapped with the table's (`take_counter_views`): the table makes the next batch's
        // views in the room this stream's last batch left.
        let mut views = spare_views;
        views.clear();
        st.table.take_counter_views(&mut views);
        self.metrics.batches_processed.inc();
        Ok(Some(Made {
            sessions: out,
            views,
        }))
    }
}

/// What one batch made: sessions, and the counters-only views the flow table kept apart for
/// the local join.
#[derive(Debug, Default)]
struct Made {
    sessions: Vec<Collected>,
    views: Vec<CounterView>,
}

async fn flush_loop(weak: Weak<Inner>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let mut out = Vec::new();
        {
            let mut st = inner.lock();
            st.table.flush(Instant::now(), &mut out);
            st.table.take_counter_views_as_sessions(&mut out);
        }
        inner.count_counters_only(&out);
        inner.redact(&mut out);
        if inner.deliver(out).await.is_err() {
            return;
        }
    }
}

/// The `clovisor.capture.v1.Capture` service.
#[derive(Clone)]
pub struct CaptureService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CaptureService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureService").finish_non_exhaustive()
    }
}

impl CaptureService {
    /// A service sending decoded sessions to `out`, with default limits.
    pub fn new(out: mpsc::Sender<EncodedSession>, metrics: Arc<CollectorMetrics>) -> Self {
        Self::with_config(out, metrics, ServiceConfig::default())
    }

    /// A service with explicit limits.
    pub fn with_config(
        out: mpsc::Sender<EncodedSession>,
        metrics: Arc<CollectorMetrics>,
        config: ServiceConfig,
    ) -> Self {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                table: {
                    // Counters-only views go to the local join as they are (`Made::views`).
                    let mut table = FlowTable::new(config.flows, Arc::clone(&metrics));
                    table.keep_counter_views_apart();
                    table
                },
                last_seq: HashMap::new(),
                node_probe: HashMap::new(),
                owners: HashMap::new(),
            }),
            out,
            metrics,
            flush_interval: config.flush_interval,
            local_join_hold: config.local_join_hold,
            admission: config.admission,
            query_redaction: Arc::new(clovisor_runtime::redact::QueryRedaction::new(
                &config.redact_query_keys,
            )),
            field_limits: config.field_limits,
            max_message_bytes: config.max_message_bytes,
            flusher: OnceLock::new(),
            sent: AtomicU64::new(0),
            downstream: OnceLock::new(),
            live: OnceLock::new(),
        });
        inner.ensure_flusher();
        Self { inner }
    }

    /// Acknowledges each batch only once the forwarder whose counters are `forwarder` has had
    /// every session handed to it so far acknowledged (see the module documentation). Call
    /// before serving; a second call is ignored.
    pub fn ack_after_downstream(self, forwarder: Arc<DeliveryStats>) -> Self {
        let _ = self.inner.downstream.set(forwarder);
        self
    }

    /// Follows the live configuration `live` (the header redaction list) instead of the
    /// defaults. Call before serving; a second call is ignored.
    pub fn with_live_config(self, live: watch::Receiver<LiveConfig>) -> Self {
        let _ = self.inner.live.set(live);
        self
    }

    /// Runs the user analyzers `clovisor_proto_cfg` names in `live` (docs/analyzers.md),
    /// loading, replacing and unloading them as it changes, until `live`'s sender goes away;
    /// modules that do not load are counted in `config_metrics`. Call inside a Tokio runtime.
    pub fn follow_analyzers(
        &self,
        live: watch::Receiver<LiveConfig>,
        config_metrics: Option<clovisor_config::ConfigMetrics>,
    ) -> tokio::task::JoinHandle<()> {
        let analyzers = self.inner.lock().table.decoders().analyzers().clone();
        tokio::spawn(crate::decode::analyzer::live::follow(
            analyzers,
            live,
            config_metrics,
        ))
    }

    /// Wraps the service for a tonic server.
    pub fn into_server(self) -> CaptureServer {
        CaptureServer { service: self }
    }
}

fn ack(seq: u64) -> CollectorMessage {
    CollectorMessage {
        kind: Some(collector_message::Kind::Ack(Ack { seq })),
    }
}

/// Says when an admitted stream's token no longer holds: at its `exp` (or maximum age), or when
/// a review every [`AdmissionConfig::token_recheck`] refuses it. A review the API server does
/// not answer leaves the stream running.
async fn guard_token(inner: Arc<Inner>, token: AdmittedToken, end: oneshot::Sender<StreamEnd>) {
    let every = inner.admission.token_recheck;
    loop {
        let check_at = Instant::now().checked_add(every);
        if check_at.is_none_or(|at| at >= token.until) {
            tokio::time::sleep_until(token.until.into()).await;
            let _ = end.send(token.ends_as);
            return;
        }
        if let Some(at) = check_at {
            tokio::time::sleep_until(at.into()).await;
        }
        let result = inner.admission.recheck(&token).await;
        inner
            .metrics
            .probe_token_rechecks
            .get_or_create(&crate::metrics::ResultLabel {
                result: result.as_label(),
            })
            .inc();
        match result {
            Recheck::Accepted => {}
            Recheck::Unreachable => {
                tracing::warn!(node = %token.node, "the API server did not answer a probe token's review; the stream goes on");
            }
            Recheck::Refused => {
                let _ = end.send(StreamEnd::TokenRevoked);
                return;
            }
        }
    }
}

/// What ends a stream on the collector's side, once its token no longer holds; never, without
/// a token (or once the guard is gone).
async fn token_ended(
    token_end: &mut Option<(AbortOnDrop, oneshot::Receiver<StreamEnd>)>,
) -> StreamEnd {
    if let Some((_, end)) = token_end {
        match end.await {
            Ok(why) => return why,
            Err(_) => *token_end = None,
        }
    }
    std::future::pending().await
}

async fn run_stream(
    inner: Arc<Inner>,
    hello: Hello,
    mut inbound: impl futures::Stream<Item = Result<Inbound, Status>> + Unpin,
    tx: mpsc::Sender<Result<CollectorMessage, Status>>,
    mut token_end: Option<(AbortOnDrop, oneshot::Receiver<StreamEnd>)>,
) {
    // Batch number and how many sessions must be acknowledged downstream before it may be.
    let acks = inner.downstream.get().map(|forwarder| {
        let (marks, rx) = mpsc::channel::<(u64, u64)>(1024);
        tokio::spawn(ack_when_delivered(Arc::clone(forwarder), rx, tx.clone()));
        marks
    });
    let join = LocalJoin::new(inner.local_join_hold);
    let mut stream = Stream {
        inner,
        tx,
        acks,
        join,
        encoder: SessionEncoder::new(),
        deferred: None,
        spare_views: Vec::new(),
    };
    let probe_id = hello.probe_id.as_str();
    loop {
        let due = stream.join.deadline();
        let next = tokio::select! {
            msg = inbound.next() => Some(msg.transpose()),
            () = sleep_until_some(due) => None,
            why = token_ended(&mut token_end) => {
                stream.end(why, &hello).await;
                return;
            }
        };
        let msg = match next {
            // The held sessions are due: no batch came to pair them with.
            None => {
                if stream.release().await.is_err() {
                    return;
                }
                continue;
            }
            Some(Ok(Some(msg))) => msg,
            Some(Ok(None)) => {
                let _ = stream.release().await;
                return;
            }
            Some(Err(status)) => {
                tracing::debug!(probe = %probe_id, error = %status, "probe stream ended");
                let _ = stream.release().await;
                if stream.inner.count_oversized(&status) {
                    // The probe learns why (it would otherwise re-send the batch unaware).
                    let _ = stream.tx.send(Err(status)).await;
                }
                return;
            }
        };
        match msg {
            Inbound::Batch(batch) => {
                let seq = batch.seq();
                let spare = std::mem::take(&mut stream.spare_views);
                let room = stream.join.take_spare();
                let made = match stream.inner.batch(probe_id, &batch, spare, room) {
                    Ok(made) => made.unwrap_or_default(),
                    Err(why) => {
                        let _ = stream.release().await;
                        let _ = stream.tx.send(Err(stream.inner.refuse(why, &hello))).await;
                        return;
                    }
                };
                if stream.batch_done(seq, made).await.is_err() {
                    return;
                }
            }
            Inbound::Hello(_) => {
                let _ = stream.release().await;
                let _ = stream
                    .tx
                    .send(Err(Status::invalid_argument(
                        "Hello is only valid as the first message",
                    )))
                    .await;
                return;
            }
            // The probe's open flows, re-announced after every Hello, so that flows this
            // collector does not know yet (it restarted) are known by their identity again.
            Inbound::Flows(table) => {
                let mut out = stream.inner.flows(probe_id, table);
                stream.inner.count_counters_only(&out);
                stream.inner.redact(&mut out);
                if stream.inner.deliver(out).await.is_err() {
                    return;
                }
            }
            Inbound::Empty => {}
        }
    }
}

/// Why a probe stream stops: the output or the probe went away.
struct Gone;

/// One probe stream's sending side: the local join between its batches and the output, and
/// the acknowledgements, which wait until every session of a batch has left the local join.
struct Stream {
    inner: Arc<Inner>,
    tx: mpsc::Sender<Result<CollectorMessage, Status>>,
    acks: Option<mpsc::Sender<(u64, u64)>>,
    join: LocalJoin,
    /// Encodes what leaves the local join (its buffer is reused across batches).
    encoder: SessionEncoder,
    /// The last batch whose sessions are (some of them) held, not yet acknowledged.
    deferred: Option<u64>,
    /// The last batch's counters-only views' vector, emptied: its room is reused.
    spare_views: Vec<CounterView>,
}

/// Sleeps until `due`; for ever without one.
async fn sleep_until_some(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

impl Stream {
    /// Ends the stream because its token no longer holds: what is held is delivered and
    /// acknowledged first, the end counted, and the probe told why (it reconnects with its
    /// current token and re-sends whatever was not acknowledged).
    async fn end(&mut self, why: StreamEnd, hello: &Hello) {
        let _ = self.release().await;
        self.inner
            .metrics
            .probe_streams_ended
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: why.as_label(),
            })
            .inc();
        tracing::info!(reason = why.as_label(), probe = %hello.probe_id, node = %hello.node,
            "probe stream ended: its token no longer holds");
        let _ = self.tx.send(Err(why.status())).await;
    }

    /// A batch's sessions through the local join to the output; then acknowledges what may be.
    async fn batch_done(&mut self, seq: u64, made: Made) -> Result<(), Gone> {
        let Made {
            sessions,
            mut views,
        } = made;
        let mut out = Vec::with_capacity(sessions.len() + 16);
        let encoder = &mut self.encoder;
        let (inner, redaction) = (&self.inner, self.inner.redaction());
        let merged = self
            .join
            .offer_with_views(sessions, views.drain(..), Instant::now(), |s| {
                inner.finish(&redaction, s);
                out.push(s.encode(encoder));
            });
        self.spare_views = views;
        self.inner.metrics.views_merged.inc_by(merged.views);
        self.inner
            .metrics
            .counter_views_unmatched
            .inc_by(merged.unmatched_counters);
        self.deliver(out).await?;
        // Acknowledgements are cumulative: the previous batch's sessions have all left now.
        if self.join.is_holding() {
            if let Some(prev) = self.deferred.replace(seq) {
                self.ack(prev).await?;
            }
            Ok(())
        } else {
            self.deferred = None;
            self.ack(seq).await
        }
    }

    /// Sends every held session and acknowledges the batch they came from.
    async fn release(&mut self) -> Result<(), Gone> {
        let mut out = Vec::new();
        let encoder = &mut self.encoder;
        let (inner, redaction) = (&self.inner, self.inner.redaction());
        let unmatched = self.join.flush(|s| {
            inner.finish(&redaction, s);
            out.push(s.encode(encoder));
        });
        self.inner.metrics.counter_views_unmatched.inc_by(unmatched);
        self.deliver(out).await?;
        match self.deferred.take() {
            Some(seq) => self.ack(seq).await,
            None => Ok(()),
        }
    }

    async fn deliver(&self, sessions: Vec<EncodedSession>) -> Result<(), Gone> {
        if self.inner.deliver_encoded(sessions).await.is_err() {
            let _ = self
                .tx
                .send(Err(Status::unavailable("collector is shutting down")))
                .await;
            return Err(Gone);
        }
        Ok(())
    }

    /// Acknowledges batch `seq` — at once, or once the forwarder has delivered every session
    /// handed to the output so far.
    async fn ack(&self, seq: u64) -> Result<(), Gone> {
        let sent = match &self.acks {
            // Everything counted is in the channel already, which the forwarder delivers in
            // order: once it has acknowledged `mark` items, ours are in.
            Some(marks) => marks
                .send((seq, self.inner.sent.load(Ordering::Relaxed)))
                .await
                .is_ok(),
            None => self.tx.send(Ok(ack(seq))).await.is_ok(),
        };
        if sent {
            Ok(())
        } else {
            Err(Gone)
        }
    }
}

/// Sends each batch's acknowledgement once the forwarder has acknowledged its mark.
async fn ack_when_delivered(
    forwarder: Arc<DeliveryStats>,
    mut marks: mpsc::Receiver<(u64, u64)>,
    tx: mpsc::Sender<Result<CollectorMessage, Status>>,
) {
    while let Some((seq, mark)) = marks.recv().await {
        while DeliveryStats::get(&forwarder.items_acked) < mark {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(DOWNSTREAM_POLL) => {}
            }
        }
        if tx.send(Ok(ack(seq))).await.is_err() {
            return;
        }
    }
}

impl CaptureService {
    /// One probe stream: its `Hello` admitted, then its messages taken by a task of their own.
    async fn stream(
        &self,
        request: Request<Streaming<Inbound>>,
    ) -> Result<Response<ReceiverStream<Result<CollectorMessage, Status>>>, Status> {
        let peer = PeerIdentity::of(&request).cloned();
        let token = bearer_token(request.metadata());
        self.accept(peer, token, request.into_inner())
            .await
            .map(Response::new)
    }

    /// One probe stream, however it came (gRPC, or a probe in this process: [`DirectReceiver`]):
    /// its `Hello` admitted, with the peer's identity and token when it has them, then its
    /// messages taken by a task of their own; returns the answers for the probe.
    async fn accept(
        &self,
        peer: Option<PeerIdentity>,
        token: Option<String>,
        mut inbound: impl futures::Stream<Item = Result<Inbound, Status>> + Unpin + Send + 'static,
    ) -> Result<ReceiverStream<Result<CollectorMessage, Status>>, Status> {
        self.inner.ensure_flusher();
        let first = inbound.next().await.transpose().inspect_err(|status| {
            self.inner.count_oversized(status);
        })?;
        let hello = match first {
            Some(Inbound::Hello(h)) => h,
            _ => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        let admitted = match self.inner.admission.verify_token(token.as_deref()).await {
            Ok(token) => self
                .inner
                .hello(
                    &hello,
                    peer.as_ref(),
                    token.as_ref().map(|t| t.node.as_str()),
                )
                .map(|()| token),
            Err(why) => Err(why),
        };
        let token = match admitted {
            Ok(token) => token,
            Err(why) => return Err(self.inner.refuse(why, &hello)),
        };
        let (tx, rx) = mpsc::channel(32);
        // The token bounds the stream: a task of its own says when it no longer holds.
        let token_end = token.map(|token| {
            let (end_tx, end_rx) = oneshot::channel();
            let guard = tokio::spawn(guard_token(Arc::clone(&self.inner), token, end_tx));
            (AbortOnDrop(guard), end_rx)
        });
        tokio::spawn(run_stream(
            Arc::clone(&self.inner),
            hello,
            inbound,
            tx,
            token_end,
        ));
        Ok(ReceiverStream::new(rx))
    }
}

/// A probe in this process (`clovisor all-in-one`) streams to the service directly: its
/// messages decoded from the bytes it encoded them into, as the gRPC codec decodes a frame
/// ([`inbound::ProbeCodec`]), and admitted as a stream without a peer identity or token.
impl DirectReceiver<CaptureHop> for CaptureService {
    fn open(&self, outbound: ReceiverStream<HopMessage>) -> Opening<'static, CaptureHop> {
        let service = self.clone();
        Box::pin(async move {
            let inbound = outbound.map(|m| {
                Inbound::decode(m.to_bytes()).map_err(|e| Status::internal(e.to_string()))
            });
            let answers = service.accept(None, None, inbound).await?;
            Ok(answers.boxed())
        })
    }
}

/// The `clovisor.capture.v1.Capture` service for a tonic server: the generated server's routing,
/// with the service's own codec ([`inbound::ProbeCodec`]: batches decoded record by record).
#[derive(Debug, Clone)]
pub struct CaptureServer {
    service: CaptureService,
}

impl tonic::server::NamedService for CaptureServer {
    const NAME: &'static str = clovisor_proto::capture::v1::capture_server::SERVICE_NAME;
}

/// The `Stream` method, as tonic's streaming handler calls it.
struct StreamMethod(CaptureService);

impl tonic::server::StreamingService<Inbound> for StreamMethod {
    type Response = CollectorMessage;
    type ResponseStream = ReceiverStream<Result<CollectorMessage, Status>>;
    type Future = tonic::codegen::BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<Inbound>>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.stream(request).await })
    }
}

impl<B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for CaptureServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        if req.uri().path() != STREAM_PATH {
            return Box::pin(
                async move { Ok(Status::unimplemented("no such method").into_http()) },
            );
        }
        let method = StreamMethod(self.service.clone());
        let max = self.service.inner.max_message_bytes;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(inbound::ProbeCodec)
                .apply_max_message_size_config(Some(max), None);
            Ok(grpc.streaming(method, req).await)
        })
    }
}

/// The path of `Capture.Stream`.
const STREAM_PATH: &str = "/clovisor.capture.v1.Capture/Stream";

/// The token of the stream's `authorization: Bearer …` metadata.
fn bearer_token(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    clovisor_runtime::auth::bearer(value).map(str::to_owned)
}

pub mod admission;
pub mod inbound;
#[cfg(test)]
mod tests;
