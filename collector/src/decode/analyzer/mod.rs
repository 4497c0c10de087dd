//! User protocol analyzers: WebAssembly modules, sandboxed, one more [`Decoder`] each
//! (docs/analyzers.md).
//!
//! An [`Analyzer`] is a compiled module ([`runtime::Module`]) with one running instance. It
//! claims a flow by its server port (`clovisor_port`, tried before the built-in decoders) or
//! by its first bytes (`clovisor_detect`, tried only when no built-in decoder claimed the flow,
//! so an analyzer never costs the built-in protocols a call). Its [`AnalyzerFlow`] hands each
//! message of the flow to `clovisor_parse`, once per request or response found in it
//! ([`abi`]), and pairs requests with responses in order, as the original Clovisor's
//! `Parse(session_key, is_req, data)` did.
//!
//! Failures are contained: a trap, a call out of fuel, memory past the cap or a result that
//! breaks the ABI is counted (`clovisor_analyzer_errors_total{analyzer,reason}`), the instance
//! is replaced by a fresh one, and the exchange is still reported, without the analyzer's
//! fields. After [`MAX_CONSECUTIVE_FAILURES`] failed calls with no successful parse between
//! them the analyzer is switched off, with one log line, and its flows go back to detection.
//!
//! The set of analyzers ([`Analyzers`]) changes while flows run ([`live`]): a flow takes the
//! current version of its analyzer at each exchange boundary (when no request of it is
//! waiting for its response), so an exchange is parsed by one version whole, and no flow is
//! dropped by a swap.

pub mod abi;
pub mod live;
pub mod runtime;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use clovisor_proto::session::v1::{Analyzer as AnalyzerFields, Protocol};

use self::runtime::{CallError, Instance, LoadError, Module};
use super::{
    CaptureNeeds, Decoder, Detection, Direction, Exchange, Fields, FlowDecoder, FlowInfo, Message,
    MessageStats, Output, Step,
};
use crate::metrics::AnalyzerMetrics;

/// Failed calls after which an analyzer is switched off, counted since its last successful
/// parse.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 3;
/// Most requests (or responses) parsed out of one message (pipelining).
const MAX_ITEMS_PER_MESSAGE: usize = 16;
/// Most requests of one flow waiting for their responses; the oldest goes out incomplete.
const MAX_PENDING: usize = 64;
/// Span attribute (and session attribute) naming the protocol of bytes an analyzer left over.
pub const LEFTOVER_ATTRIBUTE: &str = "clovisor.analyzer.leftover_protocol";

/// `name` as a `&'static str` (the [`Decoder::name`] and the decode metrics' label): each
/// distinct analyzer name is kept once for the life of the process, however often it is
/// reloaded — as many as the operator ever configured.
fn intern(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(n) = names.get(name) {
        return n;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// A 64-bit FNV-1a digest of a module's bytes: whether a reload brings anything new.
fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether a successful call ends a run of failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ends {
    /// A parse that succeeded: the analyzer works.
    FailureRun,
    /// A detect: it may claim flows and still fail every parse.
    Nothing,
}

/// One loaded analyzer: its module, its running instance, its failure count.
pub struct Analyzer {
    name: &'static str,
    digest: u64,
    module: Module,
    port: Option<u16>,
    has_detect: bool,
    /// `None` after a failure, until the next call makes a fresh instance.
    instance: Mutex<Option<Instance>>,
    failures: AtomicU32,
    off: AtomicBool,
    metrics: AnalyzerMetrics,
    set: Weak<SetInner>,
}

impl std::fmt::Debug for Analyzer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analyzer")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("has_detect", &self.has_detect)
            .field("off", &self.is_off())
            .finish_non_exhaustive()
    }
}

impl Analyzer {
    fn load(
        name: &str,
        bytes: &[u8],
        metrics: AnalyzerMetrics,
        set: Weak<SetInner>,
    ) -> Result<Arc<Self>, LoadError> {
        let module = Module::compile(bytes)?;
        let mut instance = module.instantiate()?;
        let port = instance
            .port()
            .map_err(|e| LoadError::Instantiate(format!("clovisor_port: {e}")))?;
        let has_detect = instance.has_detect();
        Ok(Arc::new(Self {
            name: intern(name),
            digest: digest(bytes),
            module,
            port,
            has_detect,
            instance: Mutex::new(Some(instance)),
            failures: AtomicU32::new(0),
            off: AtomicBool::new(false),
            metrics,
            set,
        }))
    }

    /// The protocol name it was loaded under.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The server port it claims, if any.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Whether it was switched off after failing [`MAX_CONSECUTIVE_FAILURES`] times in a row.
    pub fn is_off(&self) -> bool {
        self.off.load(Ordering::Relaxed)
    }

    fn claims_port(&self, flow: &FlowInfo<'_>) -> bool {
        !self.is_off()
            && self
                .port
                .is_some_and(|p| u32::from(p) == flow.key.server_port)
    }

    fn claims_content(&self, flow: &FlowInfo<'_>, first: &Message<'_>) -> bool {
        if !self.has_detect || self.is_off() || first.direction != Direction::ClientToServer {
            return false;
        }
        let port = u16::try_from(flow.key.server_port).unwrap_or(0);
        self.call(Ends::Nothing, |i| i.detect(port, first.payload))
            .unwrap_or(false)
    }

    /// Runs `f` on the instance (a fresh one after a failure). A failure is counted, drops
    /// the instance, and switches the analyzer off when it is the last straw; `None` then. A
    /// success ends a run of failures only when `ends` says so: a detect that claims says
    /// nothing about whether the analyzer can parse.
    fn call<T>(
        &self,
        ends: Ends,
        f: impl FnOnce(&mut Instance) -> Result<T, CallError>,
    ) -> Option<T> {
        if self.is_off() {
            return None;
        }
        let mut slot = self.instance.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            match self.module.instantiate() {
                Ok(i) => *slot = Some(i),
                Err(e) => {
                    // Instantiation ran the same module successfully at load; failing now is
                    // the start function's doing (fuel, memory, a trap).
                    self.failed(&CallError::Trap(e.to_string()));
                    return None;
                }
            }
        }
        let instance = slot.as_mut()?;
        match f(instance) {
            Ok(v) => {
                if ends == Ends::FailureRun {
                    self.failures.store(0, Ordering::Relaxed);
                }
                Some(v)
            }
            Err(e) => {
                // What a trapped instance left in its memory is not to be trusted.
                *slot = None;
                drop(slot);
                self.failed(&e);
                None
            }
        }
    }

    fn failed(&self, e: &CallError) {
        self.metrics.error(self.name, e.reason());
        let n = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        tracing::debug!(analyzer = self.name, reason = e.reason(), error = %e, "analyzer call failed");
        if n >= MAX_CONSECUTIVE_FAILURES && !self.off.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                analyzer = self.name,
                failures = n,
                reason = e.reason(),
                error = %e,
                "analyzer switched off after failing {n} times in a row; its flows go back to the built-in decoders. Load a fixed module (HSET clovisor_proto_cfg + PUBLISH) to run it again"
            );
            self.metrics.load(self.name, "switched_off");
            if let Some(set) = self.set.upgrade() {
                self.metrics.set_running(set.running());
            }
        }
    }

    fn parse(&self, flow: &[u8], direction: i32, data: &[u8]) -> Option<abi::ParseResult> {
        self.call(Ends::FailureRun, |i| i.parse(flow, direction, data))
    }
}

impl Decoder for Analyzer {
    fn name(&self) -> &'static str {
        self.name
    }

    fn capture_needs(&self) -> CaptureNeeds {
        CaptureNeeds::default()
    }

    fn detect(&self, flow: &FlowInfo<'_>, first: &Message<'_>) -> Detection {
        if self.claims_port(flow) || self.claims_content(flow, first) {
            Detection::Claim
        } else {
            Detection::No
        }
    }

    fn new_flow(&self, flow: &FlowInfo<'_>) -> Box<dyn FlowDecoder> {
        Box::new(AnalyzerFlow {
            name: self.name,
            analyzer: None,
            set: self.set.clone(),
            session_key: format!("{}/{}", flow.probe_id, flow.flow_id).into_bytes(),
            pending: VecDeque::new(),
        })
    }
}

/// A request waiting for its response.
#[derive(Debug)]
struct Pending {
    stats: MessageStats,
    position: u32,
    fields: HashMap<String, String>,
    leftover: Option<String>,
}

/// An analyzer's state for one flow: the requests waiting for their responses.
#[derive(Debug)]
pub struct AnalyzerFlow {
    name: &'static str,
    /// The version parsing the flow's current exchange: kept while one of its requests waits
    /// for a response, even when a newer version was loaded meanwhile.
    analyzer: Option<Arc<Analyzer>>,
    set: Weak<SetInner>,
    /// `probe_id/flow_id`: the flow's identity, given to every parse (the original's session
    /// key).
    session_key: Vec<u8>,
    pending: VecDeque<Pending>,
}

impl AnalyzerFlow {
    /// At an exchange boundary, the analyzer's current version (none once unloaded); while a
    /// request waits, the version that parsed it.
    fn current(&mut self) -> Option<Arc<Analyzer>> {
        if self.pending.is_empty() || self.analyzer.is_none() {
            self.analyzer = self.set.upgrade().and_then(|s| s.get(self.name));
        }
        self.analyzer.clone()
    }

    /// The items (requests or responses) of one message: each parse takes one, from where the
    /// previous one ended. The first parse always yields an item, with no fields when the
    /// call failed, so the exchange is kept. A result naming another loaded analyzer as the
    /// protocol of what it left over (stacking) hands the rest of the message to it, once:
    /// its fields join the item's as `<its name>.<key>`.
    fn items(
        &self,
        analyzer: &Analyzer,
        direction: i32,
        payload: &[u8],
    ) -> Vec<(HashMap<String, String>, Option<String>)> {
        let mut items = Vec::new();
        let mut rest = payload;
        while items.len() < MAX_ITEMS_PER_MESSAGE {
            let Some(r) = analyzer.parse(&self.session_key, direction, rest) else {
                if items.is_empty() {
                    items.push((HashMap::new(), None));
                }
                break;
            };
            let more = r.complete && r.consumed > 0 && r.consumed < rest.len();
            let mut fields: HashMap<String, String> = r.fields.into_iter().collect();
            let leftover = rest.get(r.consumed..).filter(|l| !l.is_empty());
            let stacked = r
                .next
                .as_deref()
                .filter(|n| *n != self.name)
                .and_then(|n| self.set.upgrade()?.get(n));
            if let (Some(inner), Some(leftover)) = (stacked, leftover) {
                // One level: the inner analyzer's own leftover protocol is not followed.
                if let Some(inner_result) = inner.parse(&self.session_key, direction, leftover) {
                    for (k, v) in inner_result.fields {
                        fields.insert(format!("{}.{k}", inner.name), v);
                    }
                }
                items.push((fields, r.next));
                break;
            }
            if r.complete || items.is_empty() {
                items.push((fields, r.next));
            }
            if !more {
                break;
            }
            rest = rest.get(r.consumed..).unwrap_or_default();
        }
        items
    }

    fn emit(
        &self,
        p: Pending,
        response: Option<(MessageStats, HashMap<String, String>)>,
        out: &mut dyn Output,
    ) {
        let mut fields = p.fields;
        let incomplete = response.is_none();
        let response = response.map(|(stats, resp)| {
            fields.extend(resp);
            stats
        });
        let mut attributes = HashMap::new();
        if let Some(next) = p.leftover {
            attributes.insert(LEFTOVER_ATTRIBUTE.to_owned(), next);
        }
        out.exchange(Exchange {
            protocol: Protocol::Analyzer,
            request: p.stats,
            response,
            position: p.position,
            incomplete,
            fields: Fields::Analyzer(AnalyzerFields {
                name: self.name.to_owned(),
                fields,
            }),
            trace: None,
            attributes,
        });
    }

    fn flush(&mut self, out: &mut dyn Output) {
        while let Some(p) = self.pending.pop_front() {
            self.emit(p, None, out);
        }
    }
}

impl FlowDecoder for AnalyzerFlow {
    fn on_message(&mut self, message: &Message<'_>, out: &mut dyn Output) -> Step {
        let Some(analyzer) = self.current().filter(|a| !a.is_off()) else {
            // Unloaded or switched off: what waits goes out as it is, and the built-in
            // decoders get the flow back.
            self.flush(out);
            return Step::Redetect;
        };
        match message.direction {
            Direction::ClientToServer => {
                let items = self.items(&analyzer, abi::REQUEST, message.payload);
                for (position, (fields, leftover)) in (0u32..).zip(items) {
                    if self.pending.len() >= MAX_PENDING {
                        if let Some(old) = self.pending.pop_front() {
                            self.emit(old, None, out);
                        }
                    }
                    self.pending.push_back(Pending {
                        stats: message.stats,
                        position,
                        fields,
                        leftover,
                    });
                }
            }
            Direction::ServerToClient => {
                let items = self.items(&analyzer, abi::RESPONSE, message.payload);
                let mut first = true;
                for (fields, leftover) in items {
                    let Some(mut p) = self.pending.pop_front() else {
                        out.unpaired("response_without_request");
                        break;
                    };
                    if p.leftover.is_none() {
                        p.leftover = leftover;
                    }
                    // Counters cannot be split between pipelined responses: the first carries
                    // the message's.
                    let stats = if first {
                        message.stats
                    } else {
                        MessageStats {
                            bytes: 0,
                            packets: 0,
                            retransmits: 0,
                            ..message.stats
                        }
                    };
                    first = false;
                    self.emit(p, Some((stats, fields)), out);
                }
            }
        }
        Step::Continue
    }

    fn on_close(&mut self, out: &mut dyn Output) {
        self.flush(out);
    }
}

/// The analyzers of one process, shared by its flow tables and the loader that follows
/// `clovisor_proto_cfg`; clone freely.
#[derive(Debug, Clone, Default)]
pub struct Analyzers {
    inner: Arc<SetInner>,
}

#[derive(Debug, Default)]
struct SetInner {
    list: RwLock<Arc<[Arc<Analyzer>]>>,
    metrics: AnalyzerMetrics,
}

impl SetInner {
    fn snapshot(&self) -> Arc<[Arc<Analyzer>]> {
        Arc::clone(&self.list.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn get(&self, name: &str) -> Option<Arc<Analyzer>> {
        self.snapshot().iter().find(|a| a.name == name).cloned()
    }

    fn running(&self) -> usize {
        self.snapshot().iter().filter(|a| !a.is_off()).count()
    }
}

/// What [`Analyzers::load`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// A new analyzer.
    New,
    /// A new version of a loaded one.
    Replaced,
    /// The same module as loaded (and not switched off): nothing changed.
    Unchanged,
}

impl Analyzers {
    /// An empty set counting into `metrics`.
    pub fn new(metrics: AnalyzerMetrics) -> Self {
        Self {
            inner: Arc::new(SetInner {
                list: RwLock::default(),
                metrics,
            }),
        }
    }

    /// Compiles `module` (`.wasm` or `.wat`) and runs it as the analyzer of `name`, in place
    /// of the one loaded under that name. On error the set is unchanged.
    pub fn load(&self, name: &str, module: &[u8]) -> Result<Loaded, LoadError> {
        if let Some(current) = self.inner.get(name) {
            if current.digest == digest(module) && !current.is_off() {
                return Ok(Loaded::Unchanged);
            }
        }
        let analyzer = Analyzer::load(
            name,
            module,
            self.inner.metrics.clone(),
            Arc::downgrade(&self.inner),
        )?;
        let mut list = self.inner.list.write().unwrap_or_else(|e| e.into_inner());
        let mut next: Vec<Arc<Analyzer>> = list.iter().cloned().collect();
        let loaded = match next.iter_mut().find(|a| a.name == analyzer.name) {
            Some(slot) => {
                *slot = analyzer;
                Loaded::Replaced
            }
            None => {
                next.push(analyzer);
                Loaded::New
            }
        };
        *list = next.into();
        drop(list);
        self.inner.metrics.set_running(self.inner.running());
        Ok(loaded)
    }

    /// Stops running the analyzer of `name`; whether there was one.
    pub fn unload(&self, name: &str) -> bool {
        let mut list = self.inner.list.write().unwrap_or_else(|e| e.into_inner());
        let before = list.len();
        let next: Vec<Arc<Analyzer>> = list.iter().filter(|a| a.name != name).cloned().collect();
        let removed = next.len() != before;
        *list = next.into();
        drop(list);
        self.inner.metrics.set_running(self.inner.running());
        removed
    }

    /// The analyzer loaded under `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Analyzer>> {
        self.inner.get(name)
    }

    /// The names loaded, in load order.
    pub fn names(&self) -> Vec<&'static str> {
        self.inner.snapshot().iter().map(|a| a.name).collect()
    }

    /// The metrics the analyzers count into.
    pub fn metrics(&self) -> &AnalyzerMetrics {
        &self.inner.metrics
    }

    /// The analyzer that claims the flow by its server port.
    pub(crate) fn by_port(&self, flow: &FlowInfo<'_>) -> Option<Arc<Analyzer>> {
        let list = self.inner.snapshot();
        list.iter().find(|a| a.claims_port(flow)).cloned()
    }

    /// The analyzer that claims the flow from its first bytes (`clovisor_detect`).
    pub(crate) fn by_content(
        &self,
        flow: &FlowInfo<'_>,
        first: &Message<'_>,
    ) -> Option<Arc<Analyzer>> {
        let list = self.inner.snapshot();
        list.iter().find(|a| a.claims_content(flow, first)).cloned()
    }
}
