//! Bounded in-memory store of recent sessions, for the REST API.
//!
//! Sessions are kept in arrival order; when full, the oldest is evicted (and counted). Queries
//! walk from the newest, so "newest first" means most recently stored first.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::error::{Error, Result};
use crate::ids::TraceId;
use crate::record::CorrelatedSession;

/// Results per query unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// Results per query at most.
pub const MAX_LIMIT: usize = 1000;

/// Which response codes a query wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Exactly this code, e.g. `404`.
    Exact(u16),
    /// Any code of this class, e.g. `5` for `5xx`.
    Class(u8),
}

impl StatusFilter {
    /// Parses `404` or `5xx` (`5XX` too).
    pub fn parse(text: &str) -> Option<Self> {
        let lower = text.to_ascii_lowercase();
        if let Some(class) = lower.strip_suffix("xx") {
            return match class.parse::<u8>() {
                Ok(c @ 1..=5) if class.len() == 1 => Some(Self::Class(c)),
                _ => None,
            };
        }
        match lower.parse::<u16>() {
            Ok(code @ 100..=599) if lower.len() == 3 => Some(Self::Exact(code)),
            _ => None,
        }
    }

    fn matches(self, code: u32) -> bool {
        match self {
            Self::Exact(want) => code == u32::from(want),
            Self::Class(class) => code / 100 == u32::from(class) && (100..600).contains(&code),
        }
    }
}

/// A query on the store; every set field must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFilter {
    /// The trace the session belongs to.
    pub trace_id: Option<TraceId>,
    /// The `x-request-id` seen on the wire.
    pub request_id: Option<String>,
    /// The client's or the server's pod name.
    pub pod: Option<String>,
    /// The client's or the server's namespace.
    pub namespace: Option<String>,
    /// The response code.
    pub status: Option<StatusFilter>,
    /// Results at most, 1..=[`MAX_LIMIT`].
    pub limit: usize,
}

impl Default for SessionFilter {
    fn default() -> Self {
        Self {
            trace_id: None,
            request_id: None,
            pod: None,
            namespace: None,
            status: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

impl SessionFilter {
    /// Builds a filter from query parameters; unknown names and malformed values are errors, so a
    /// typo does not silently return everything.
    pub fn from_query(params: &HashMap<String, String>) -> Result<Self> {
        let mut filter = Self::default();
        for (name, value) in params {
            let bad = |reason| Error::BadFilter {
                name: name.clone(),
                value: value.clone(),
                reason,
            };
            match name.as_str() {
                "trace_id" => {
                    filter.trace_id = Some(
                        TraceId::from_hex(value)
                            .ok_or_else(|| bad("expected 32 hex digits, not all zero"))?,
                    )
                }
                "request_id" => filter.request_id = Some(value.clone()),
                "pod" => filter.pod = Some(value.clone()),
                "namespace" => filter.namespace = Some(value.clone()),
                "status" => {
                    filter.status = Some(
                        StatusFilter::parse(value)
                            .ok_or_else(|| bad("expected a code 100-599 or a class like 5xx"))?,
                    )
                }
                "limit" => {
                    filter.limit = match value.parse::<usize>() {
                        Ok(n @ 1..=MAX_LIMIT) => n,
                        _ => return Err(bad("expected a number from 1 to 1000")),
                    }
                }
                _ => return Err(bad("unknown filter")),
            }
        }
        Ok(filter)
    }

    /// Whether `rec` passes every set field.
    pub fn matches(&self, rec: &CorrelatedSession) -> bool {
        let s = &rec.session;
        let http = s.http.as_ref();
        let either =
            |want: &Option<String>, pick: fn(&clovisor_proto::session::v1::Endpoint) -> &str| {
                want.as_ref().is_none_or(|w| {
                    [s.client.as_ref(), s.server.as_ref()]
                        .into_iter()
                        .flatten()
                        .any(|e| pick(e) == w)
                })
            };
        self.trace_id.is_none_or(|t| rec.trace_id == t)
            && self
                .request_id
                .as_ref()
                .is_none_or(|r| http.is_some_and(|h| &h.request_id == r))
            && either(&self.pod, |e| &e.pod)
            && either(&self.namespace, |e| &e.namespace)
            && self
                .status
                .is_none_or(|st| http.is_some_and(|h| st.matches(h.status_code)))
    }
}

struct Inner {
    /// Arrival order, oldest at the front, each with its arrival number.
    sessions: VecDeque<(u64, Arc<CorrelatedSession>)>,
    /// Session id -> arrival number of the newest session with that id.
    by_id: HashMap<String, u64>,
    next: u64,
}

/// The session's own id and those of the sessions merged into it.
fn ids_of(rec: &CorrelatedSession) -> impl Iterator<Item = &str> {
    std::iter::once(rec.id.as_str()).chain(
        rec.constituents
            .iter()
            .map(String::as_str)
            .filter(move |c| *c != rec.id),
    )
}

/// Where the session known by `id` sits in the deque.
fn position(inner: &Inner, id: &str) -> Option<usize> {
    let n = *inner.by_id.get(id)?;
    let front = inner.sessions.front()?.0;
    // Arrival numbers are consecutive, so the position is an offset from the front.
    let idx = usize::try_from(n.checked_sub(front)?).ok()?;
    inner
        .sessions
        .get(idx)
        .filter(|(m, _)| *m == n)
        .map(|_| idx)
}

/// The store; share it behind an `Arc`.
pub struct Store {
    capacity: usize,
    inner: RwLock<Inner>,
    evicted: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl Store {
    /// A store keeping `capacity` sessions at most (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            inner: RwLock::new(Inner {
                sessions: VecDeque::with_capacity(capacity.min(1 << 16)),
                by_id: HashMap::new(),
                next: 0,
            }),
            evicted: AtomicU64::new(0),
        }
    }

    /// Stores `rec`; returns how many sessions were evicted to make room (0 or 1). It is found
    /// by its id and by the ids of the sessions merged into it.
    pub fn insert(&self, rec: Arc<CorrelatedSession>) -> usize {
        // A poisoned lock only means another thread panicked mid-update of plain data; the
        // structure is still consistent enough to keep serving.
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let mut evicted = 0;
        while inner.sessions.len() >= self.capacity {
            if let Some((n, old)) = inner.sessions.pop_front() {
                for id in ids_of(&old) {
                    if inner.by_id.get(id) == Some(&n) {
                        inner.by_id.remove(id);
                    }
                }
                evicted += 1;
            }
        }
        let n = inner.next;
        inner.next += 1;
        for id in ids_of(&rec) {
            inner.by_id.insert(id.to_owned(), n);
        }
        inner.sessions.push_back((n, rec));
        self.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
        evicted
    }

    /// Replaces the stored session with `rec`'s id in place (an exchange that gained an
    /// observation), keeping its position; stores `rec` as new when it is not held (any more).
    /// Returns how many sessions were evicted to make room.
    pub fn upsert(&self, rec: Arc<CorrelatedSession>) -> usize {
        {
            let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
            if let Some(idx) = position(&inner, &rec.id) {
                let n = inner.sessions[idx].0;
                for id in ids_of(&rec) {
                    inner.by_id.insert(id.to_owned(), n);
                }
                inner.sessions[idx].1 = rec;
                return 0;
            }
        }
        self.insert(rec)
    }

    /// The newest session with this id.
    pub fn get(&self, id: &str) -> Option<Arc<CorrelatedSession>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let idx = position(&inner, id)?;
        inner.sessions.get(idx).map(|(_, s)| Arc::clone(s))
    }

    /// Sessions passing `filter`, newest first, at most `filter.limit`.
    pub fn query(&self, filter: &SessionFilter) -> Vec<Arc<CorrelatedSession>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner
            .sessions
            .iter()
            .rev()
            .filter(|(_, s)| filter.matches(s))
            .take(filter.limit.min(MAX_LIMIT))
            .map(|(_, s)| Arc::clone(s))
            .collect()
    }

    /// Sessions held now.
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .sessions
            .len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions evicted since the start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// The configured capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SessionBuilder;

    fn rec(b: SessionBuilder) -> Arc<CorrelatedSession> {
        Arc::new(CorrelatedSession::new(b.build()).0)
    }

    fn ids(v: &[Arc<CorrelatedSession>]) -> Vec<&str> {
        v.iter().map(|s| s.id.as_str()).collect()
    }

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn evicts_oldest_and_counts() {
        let store = Store::new(3);
        for i in 0..5 {
            store.insert(rec(SessionBuilder::new(&format!("s{i}"))));
        }
        assert_eq!(store.len(), 3, "capacity bounds the store");
        assert_eq!(store.evicted(), 2, "two sessions had to go");
        let all = store.query(&SessionFilter::default());
        assert_eq!(
            ids(&all),
            ["s4", "s3", "s2"],
            "newest first, oldest evicted"
        );
        assert!(
            store.get("s0").is_none(),
            "evicted session must not be found by id"
        );
        assert_eq!(store.get("s3").map(|s| s.id.clone()).as_deref(), Some("s3"));
    }

    #[test]
    fn duplicate_id_keeps_newest_reachable_after_eviction_of_older() {
        let store = Store::new(2);
        store.insert(rec(SessionBuilder::new("a").method("GET")));
        store.insert(rec(SessionBuilder::new("a").method("POST")));
        store.insert(rec(SessionBuilder::new("b")));
        let a = store.get("a").expect("newest 'a' must still be there");
        assert_eq!(
            a.session.http.as_ref().map(|h| h.method.as_str()),
            Some("POST")
        );
    }

    #[test]
    fn filters_match_each_field() {
        let store = Store::new(100);
        store.insert(rec(SessionBuilder::new("ok")
            .status(200)
            .pods("client-1", "web-1")
            .namespaces("default", "shop")
            .request_id("rid-1")
            .trace([0x11; 16], [0x22; 8])));
        store.insert(rec(SessionBuilder::new("missing")
            .status(404)
            .pods("client-2", "api-1")));
        store.insert(rec(SessionBuilder::new("boom")
            .status(503)
            .pods("client-1", "api-1")));

        let q = |pairs: &[(&str, &str)]| {
            let f = SessionFilter::from_query(&params(pairs)).expect("valid filter");
            ids(&store.query(&f))
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(q(&[("status", "5xx")]), ["boom"]);
        assert_eq!(q(&[("status", "404")]), ["missing"]);
        assert_eq!(q(&[("status", "2XX")]), ["ok"]);
        assert_eq!(
            q(&[("pod", "client-1")]),
            ["boom", "ok"],
            "client pod matches"
        );
        assert_eq!(
            q(&[("pod", "api-1")]),
            ["boom", "missing"],
            "server pod matches"
        );
        assert_eq!(q(&[("namespace", "shop")]), ["ok"]);
        assert_eq!(q(&[("request_id", "rid-1")]), ["ok"]);
        assert_eq!(
            q(&[("trace_id", "11111111111111111111111111111111")]),
            ["ok"]
        );
        assert_eq!(
            q(&[("pod", "api-1"), ("status", "4xx")]),
            ["missing"],
            "filters AND"
        );
        assert_eq!(q(&[("limit", "1")]), ["boom"], "limit keeps the newest");
    }

    #[test]
    fn bad_filters_are_refused() {
        for (k, v) in [
            ("status", "6xx"),
            ("status", "abc"),
            ("status", "99"),
            ("status", "1000"),
            ("limit", "0"),
            ("limit", "1001"),
            ("limit", "x"),
            ("trace_id", "xyz"),
            ("podd", "a"),
        ] {
            let err = SessionFilter::from_query(&params(&[(k, v)]));
            assert!(
                matches!(err, Err(Error::BadFilter { ref name, .. }) if name == k),
                "{k}={v} must be refused as a bad filter, got {err:?}"
            );
        }
    }
}
