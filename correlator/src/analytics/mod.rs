//! Visibility analytics: what the REST API's `/services`, `/stats` and `/values` answer from.
//!
//! Every exchange the correlator finishes (where the RED metrics are counted) is counted under a
//! key — server service (its Kubernetes Service, else workload, else pod, else address) and
//! namespace, client service (named alike) and namespace, protocol, method, path (no query), status and user agent — in the time bucket
//! of the moment it finished (30 s buckets, the last 15 min kept). Each (key, bucket) cell holds
//! requests, errors and a mergeable latency summary ([`latency::Latency`]).
//!
//! Bounded: at most `max_keys` distinct keys live at once (a key lives while a kept bucket
//! holds it); an exchange with a new key beyond that is counted under one `(other)` key and in
//! [`Totals::folded`]. Strings in a key are cut to `max_field_len` bytes. So the memory is at
//! most `buckets × (max_keys + 1)` cells (a cell is 100–200 bytes in its map plus 8–16 per
//! distinct latency bucket it saw, at most 249) and `max_keys` keys (docs/api.md has the
//! figures). An answer merges the cells of the buckets in its window:
//! it costs at most `window buckets × (max_keys + 1)` cell merges, whatever the traffic.

pub mod latency;
pub mod query;

use crate::equal::same;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};

use hashbrown::{Equivalent, HashMap as RawMap};
use rustc_hash::{FxBuildHasher, FxHashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clovisor_proto::session::v1::{Endpoint, Protocol, Session};

use crate::record::CorrelatedSession;
use crate::view::{endpoint_ip, split_target};
use latency::Latency;

/// The name every field of the overflow key carries.
pub const OTHER: &str = "(other)";

/// How much the analytics keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnalyticsConfig {
    /// Width of one time bucket.
    pub bucket: Duration,
    /// Buckets kept (the retention is `bucket × buckets`).
    pub buckets: usize,
    /// Distinct keys alive at once at most; more are folded into `(other)`.
    pub max_keys: usize,
    /// Bytes kept of each string of a key (path, user agent, names).
    pub max_field_len: usize,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        Self {
            bucket: Duration::from_secs(30),
            buckets: 30,
            max_keys: 2000,
            max_field_len: 200,
        }
    }
}

impl AnalyticsConfig {
    /// How far back the analytics see.
    pub fn retention(&self) -> Duration {
        self.bucket
            .saturating_mul(u32::try_from(self.buckets).unwrap_or(u32::MAX))
    }
}

/// What an exchange is counted under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The serving Kubernetes Service (else workload, else pod, else address).
    pub service: String,
    /// The server's namespace.
    pub namespace: String,
    /// The calling Kubernetes Service (else workload, else pod, else address).
    pub client: String,
    /// The client's namespace.
    pub client_namespace: String,
    /// `http1`, … (the protocol enum's name, lower case).
    pub protocol: String,
    /// Request method, empty when the protocol has none.
    pub method: String,
    /// Request path without query, empty when the protocol has none.
    pub path: String,
    /// Response status, 0 when none was seen.
    pub status: u32,
    /// `User-Agent`, empty when absent.
    pub user_agent: String,
}

impl Key {
    fn other() -> Self {
        Self {
            service: OTHER.to_owned(),
            namespace: OTHER.to_owned(),
            client: OTHER.to_owned(),
            client_namespace: OTHER.to_owned(),
            protocol: OTHER.to_owned(),
            method: OTHER.to_owned(),
            path: OTHER.to_owned(),
            status: 0,
            user_agent: OTHER.to_owned(),
        }
    }
}

/// A [`Key`] borrowed from the session it describes: an exchange whose key is already live is
/// counted without copying a string (most exchanges: a key is a service pair, a path and a
/// status). Hashes exactly as the owned key does (`&str` and `String` hash alike).
#[derive(Debug, Hash)]
struct KeyRef<'a> {
    service: Label<'a>,
    namespace: &'a str,
    client: Label<'a>,
    client_namespace: &'a str,
    protocol: Cow<'a, str>,
    method: &'a str,
    path: &'a str,
    status: u32,
    user_agent: &'a str,
}

impl KeyRef<'_> {
    fn to_owned_key(&self) -> Key {
        Key {
            service: self.service.as_str().to_owned(),
            namespace: self.namespace.to_owned(),
            client: self.client.as_str().to_owned(),
            client_namespace: self.client_namespace.to_owned(),
            protocol: self.protocol.clone().into_owned(),
            method: self.method.to_owned(),
            path: self.path.to_owned(),
            status: self.status,
            user_agent: self.user_agent.to_owned(),
        }
    }
}

impl Equivalent<Arc<Key>> for KeyRef<'_> {
    fn equivalent(&self, key: &Arc<Key>) -> bool {
        self.status == key.status
            && same(self.service.as_str(), &key.service)
            && same(self.namespace, &key.namespace)
            && same(self.client.as_str(), &key.client)
            && same(self.client_namespace, &key.client_namespace)
            && same(&self.protocol, &key.protocol)
            && same(self.method, &key.method)
            && same(self.path, &key.path)
            && same(self.user_agent, &key.user_agent)
    }
}

/// Requests, errors and latency of one key in one bucket (or merged over several).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cell {
    /// Exchanges counted.
    pub requests: u64,
    /// Of which errors: a 5xx status or no response at all.
    pub errors: u64,
    /// Latency of the exchanges that had a response.
    pub latency: Latency,
}

impl Cell {
    /// Adds `other` to this cell.
    pub fn merge(&mut self, other: &Self) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.latency.merge(&other.latency);
    }
}

/// Counts since the start (not windowed; `clear` does not reset them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Exchanges counted.
    pub exchanges: u64,
    /// Exchanges counted under `(other)` because `max_keys` keys were alive.
    pub folded: u64,
    /// Exchanges per protocol name.
    pub per_protocol: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct Bucket {
    /// Start of the bucket in bucket widths since the Unix epoch.
    epoch: u64,
    cells: FxHashMap<Live, Cell>,
}

/// A live key as a bucket's cells know it: by the address of its one `Arc`, hashed and compared
/// without reading its strings. Sound because a key has one `Arc` while it is live (in
/// [`Inner::keys`], or [`Inner::other`]), and a key leaves `keys` only once every bucket that
/// holds it is gone: a key made again later is a new `Arc` and finds no cell of the old one.
#[derive(Debug, Clone)]
struct Live(Arc<Key>);

impl PartialEq for Live {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Live {}

impl std::hash::Hash for Live {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state);
    }
}

#[derive(Debug)]
struct Inner {
    /// Every live key, with the newest bucket epoch that holds it.
    keys: RawMap<Arc<Key>, u64, FxBuildHasher>,
    ring: VecDeque<Bucket>,
    other: Arc<Key>,
    totals: Totals,
}

/// The analytics; share behind an `Arc`.
#[derive(Debug)]
pub struct Analytics {
    config: AnalyticsConfig,
    inner: Mutex<Inner>,
}

impl Default for Analytics {
    fn default() -> Self {
        Self::new(AnalyticsConfig::default())
    }
}

/// Unix nanoseconds now.
pub fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The protocol's name as the analytics and the session filters show it (`http1`, …; a user
/// analyzer's name for its sessions), borrowed from the session or static.
pub fn protocol_label(session: &Session) -> Cow<'_, str> {
    if let (Ok(Protocol::Analyzer), Some(a)) =
        (Protocol::try_from(session.protocol), &session.analyzer)
    {
        return Cow::Borrowed(&a.name);
    }
    // The enum's names without `PROTOCOL_`, in lower case (a test holds them to that).
    Cow::Borrowed(match Protocol::try_from(session.protocol) {
        Ok(Protocol::Unspecified) | Err(_) => "unspecified",
        Ok(Protocol::Http1) => "http1",
        Ok(Protocol::Http2) => "http2",
        Ok(Protocol::Grpc) => "grpc",
        Ok(Protocol::Dns) => "dns",
        Ok(Protocol::Redis) => "redis",
        Ok(Protocol::Postgresql) => "postgresql",
        Ok(Protocol::Mysql) => "mysql",
        Ok(Protocol::Kafka) => "kafka",
        Ok(Protocol::Analyzer) => "analyzer",
    })
}

/// How an end is named: its Kubernetes Service, else its workload, else its pod, else its
/// address (as its spans' `service.name`).
pub fn end_name(e: Option<&Endpoint>) -> String {
    end_label(e).as_str().to_owned()
}

/// [`end_name`], borrowed from the endpoint unless it is an address.
fn end_label(e: Option<&Endpoint>) -> Label<'_> {
    let Some(e) = e else {
        return Label::Name("unknown");
    };
    if !e.service.is_empty() {
        Label::Name(&e.service)
    } else if !e.workload.is_empty() {
        Label::Name(&e.workload)
    } else if !e.pod.is_empty() {
        Label::Name(&e.pod)
    } else {
        endpoint_ip(e).map_or(Label::Name("unknown"), |ip| Label::Addr(AddrText::of(ip)))
    }
}

/// An end's label as a [`KeyRef`] holds it: borrowed from the endpoint, or its address written
/// out in place. A client known only by its address (anything outside the traced pods) is common:
/// its label, written into a string for every exchange, was 4 % of the correlator's time.
#[derive(Debug)]
enum Label<'a> {
    Name(&'a str),
    Addr(AddrText),
}

impl Label<'_> {
    fn as_str(&self) -> &str {
        match self {
            Self::Name(s) => s,
            Self::Addr(a) => a.as_str(),
        }
    }

    /// At most `max` bytes of it ([`cut`]).
    fn cut(self, max: usize) -> Self {
        match self {
            Self::Name(s) => Self::Name(cut(s, max)),
            Self::Addr(a) => Self::Addr(a.cut(max)),
        }
    }
}

/// Hashes as the text does, so a [`KeyRef`] hashes as the owned [`Key`] it stands for.
impl std::hash::Hash for Label<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

/// An IP address as text, inline: at most 45 bytes (IPv6 with an IPv4 tail), all ASCII.
#[derive(Debug, Clone, Copy)]
struct AddrText {
    buf: [u8; AddrText::CAPACITY],
    len: usize,
}

impl AddrText {
    const CAPACITY: usize = 48;

    fn of(ip: std::net::IpAddr) -> Self {
        use std::io::Write as _;
        let mut buf = [0u8; Self::CAPACITY];
        let mut rest = &mut buf[..];
        // Never fails: the longest address fits. An IPv4 address (nearly every one) is written
        // octet by octet: through `Display` it cost several times as much.
        let _ = match ip {
            std::net::IpAddr::V4(v4) => {
                let mut digits = itoa::Buffer::new();
                v4.octets().iter().enumerate().try_for_each(|(i, octet)| {
                    if i > 0 {
                        rest.write_all(b".")?;
                    }
                    rest.write_all(digits.format(*octet).as_bytes())
                })
            }
            std::net::IpAddr::V6(_) => write!(rest, "{ip}"),
        };
        let len = Self::CAPACITY - rest.len();
        Self { buf, len }
    }

    fn as_str(&self) -> &str {
        self.buf
            .get(..self.len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }

    fn cut(self, max: usize) -> Self {
        Self {
            len: self.len.min(max),
            ..self
        }
    }
}

/// Counts exchanges into the analytics, holding its lock ([`Analytics::observer_at`]).
pub struct Observer<'a> {
    analytics: &'a Analytics,
    inner: MutexGuard<'a, Inner>,
    epoch: u64,
}

impl Observer<'_> {
    /// Counts the finished exchange `rec`.
    pub fn observe(&mut self, rec: &CorrelatedSession) {
        let key = self.analytics.key_of(&rec.session);
        self.analytics
            .observe_locked(&mut self.inner, &rec.session, &key, self.epoch);
    }
}

/// Whether the exchange counts as an error: no response, or a 5xx status.
pub fn is_error(s: &Session) -> bool {
    s.incomplete || s.http.as_ref().is_some_and(|h| h.status_code >= 500)
}

/// The exchange's latency, when it had a response and both times are known.
pub fn latency_ns(s: &Session) -> Option<u64> {
    (!s.incomplete && s.start_unix_nanos > 0 && s.end_unix_nanos >= s.start_unix_nanos)
        .then(|| s.end_unix_nanos - s.start_unix_nanos)
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut at = max;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    &s[..at]
}

impl Analytics {
    /// Empty analytics keeping what `config` says.
    pub fn new(config: AnalyticsConfig) -> Self {
        let config = AnalyticsConfig {
            bucket: config.bucket.max(Duration::from_millis(1)),
            buckets: config.buckets.max(1),
            ..config
        };
        Self {
            config,
            inner: Mutex::new(Inner {
                keys: RawMap::default(),
                ring: VecDeque::new(),
                other: Arc::new(Key::other()),
                totals: Totals::default(),
            }),
        }
    }

    /// What the analytics keep.
    pub fn config(&self) -> &AnalyticsConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Poisoned only if a thread panicked mid-update of plain counters: keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bucket_nanos(&self) -> u64 {
        u64::try_from(self.config.bucket.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The key `rec` is counted under (before the bound on keys).
    fn key_of<'a>(&self, s: &'a Session) -> KeyRef<'a> {
        let max = self.config.max_field_len;
        let http = s.http.as_ref();
        let path = http.map_or("", |h| split_target(&h.target).0);
        let namespace = |e: Option<&'a Endpoint>| e.map_or("", |e| cut(&e.namespace, max));
        KeyRef {
            service: end_label(s.server.as_ref()).cut(max),
            namespace: namespace(s.server.as_ref()),
            client: end_label(s.client.as_ref()).cut(max),
            client_namespace: namespace(s.client.as_ref()),
            protocol: protocol_label(s),
            method: http.map_or("", |h| cut(&h.method, max)),
            path: cut(path, max),
            status: if s.incomplete {
                0
            } else {
                http.map_or(0, |h| h.status_code)
            },
            user_agent: http.map_or("", |h| cut(&h.user_agent, max)),
        }
    }

    /// Counts a finished exchange now.
    pub fn observe(&self, rec: &CorrelatedSession) {
        self.observe_at(rec, now_unix_nanos());
    }

    /// Counts a finished exchange at `now` (Unix nanoseconds).
    pub fn observe_at(&self, rec: &CorrelatedSession, now: u64) {
        self.observe_all_at(std::slice::from_ref(&rec), now);
    }

    /// Counts finished exchanges at `now` (Unix nanoseconds), under one lock.
    pub fn observe_all_at<R: std::ops::Deref<Target = CorrelatedSession>>(
        &self,
        recs: &[R],
        now: u64,
    ) {
        if recs.is_empty() {
            return;
        }
        let mut observer = self.observer_at(now);
        for rec in recs {
            observer.observe(rec);
        }
    }

    /// Counts finished exchanges at `now` (Unix nanoseconds) one by one, under one lock held
    /// until the observer is dropped: the correlator counts what a batch made ready in the
    /// same pass as its metrics, each exchange while it is in the cache — in a pass of its own
    /// over a batch's exchanges, reading each again was a cache miss.
    pub fn observer_at(&self, now: u64) -> Observer<'_> {
        let mut inner = self.lock();
        let epoch = self.advance(&mut inner, now / self.bucket_nanos());
        Observer {
            analytics: self,
            inner,
            epoch,
        }
    }

    fn observe_locked(&self, inner: &mut Inner, s: &Session, key: &KeyRef<'_>, epoch: u64) {
        inner.totals.exchanges = inner.totals.exchanges.saturating_add(1);
        match inner.totals.per_protocol.get_mut(&*key.protocol) {
            Some(n) => *n = n.saturating_add(1),
            None => {
                inner
                    .totals
                    .per_protocol
                    .insert(key.protocol.clone().into_owned(), 1);
            }
        }
        // One look-up by the key's strings; the bucket finds its cell by the key's address.
        let room = inner.keys.len() < self.config.max_keys;
        let key = match inner.keys.get_key_value_mut(key) {
            Some((k, last)) => {
                *last = epoch;
                Arc::clone(k)
            }
            None if room => {
                let k = Arc::new(key.to_owned_key());
                inner.keys.insert(Arc::clone(&k), epoch);
                k
            }
            None => {
                inner.totals.folded = inner.totals.folded.saturating_add(1);
                Arc::clone(&inner.other)
            }
        };
        let Some(bucket) = inner.ring.back_mut() else {
            return;
        };
        let cell = bucket.cells.entry(Live(key)).or_default();
        cell.requests = cell.requests.saturating_add(1);
        if is_error(s) {
            cell.errors = cell.errors.saturating_add(1);
        }
        if let Some(ns) = latency_ns(s) {
            cell.latency.record(ns);
        }
    }

    /// Makes the newest bucket the one of `epoch` (or keeps the newest if the clock went back),
    /// dropping buckets and keys that fell out of the retention; returns the bucket's epoch.
    fn advance(&self, inner: &mut Inner, epoch: u64) -> u64 {
        match inner.ring.back() {
            Some(b) if b.epoch >= epoch => return b.epoch,
            _ => {}
        }
        inner.ring.push_back(Bucket {
            epoch,
            cells: FxHashMap::default(),
        });
        let keep = self.config.buckets as u64;
        let oldest = epoch.saturating_sub(keep - 1);
        while inner.ring.front().is_some_and(|b| b.epoch < oldest) {
            inner.ring.pop_front();
        }
        inner.keys.retain(|_, last| *last >= oldest);
        epoch
    }

    /// Forgets every bucket and key (the totals since the start stay).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.ring.clear();
        inner.keys.clear();
    }

    /// Counts since the start.
    pub fn totals(&self) -> Totals {
        self.lock().totals.clone()
    }

    /// Keys alive now.
    pub fn live_keys(&self) -> usize {
        self.lock().keys.len()
    }

    /// Every key's cells merged over the last `buckets` buckets up to `now`.
    pub fn window_at(&self, buckets: usize, now: u64) -> Vec<(Arc<Key>, Cell)> {
        let epoch = now / self.bucket_nanos();
        let first = epoch.saturating_sub((buckets.max(1) as u64).saturating_sub(1));
        let inner = self.lock();
        let mut merged: HashMap<Arc<Key>, Cell> = HashMap::new();
        for bucket in inner
            .ring
            .iter()
            .filter(|b| b.epoch >= first && b.epoch <= epoch)
        {
            for (k, c) in &bucket.cells {
                merged.entry(Arc::clone(&k.0)).or_default().merge(c);
            }
        }
        merged.into_iter().collect()
    }

    /// Buckets a window of `window` covers (rounded up), refused beyond the retention.
    pub fn buckets_for(&self, window: Duration) -> Option<usize> {
        if window.is_zero() || window > self.config.retention() {
            return None;
        }
        let n = window.as_nanos().div_ceil(self.config.bucket.as_nanos());
        usize::try_from(n).ok()
    }
}

#[cfg(test)]
mod tests;
