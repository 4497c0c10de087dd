//! Bounded in-memory store of recent sessions, for the REST API.
//!
//! Sessions are kept in arrival order; when full, the oldest is evicted (and counted). Queries
//! walk from the newest, so "newest first" means most recently stored first.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::broadcast;

use crate::analytics::query::parse_duration;
use crate::analytics::{end_name, protocol_label, Analytics};
use crate::error::{Error, Result};
use crate::ids::TraceId;
use crate::join::{JoinConfig, Joiner};
use crate::record::CorrelatedSession;
use crate::view::split_target;

/// The query parameters [`SessionFilter::from_query`] reads; any other is refused.
pub const FILTER_NAMES: &[&str] = &[
    "trace_id",
    "request_id",
    "pod",
    "namespace",
    "status",
    "service",
    "method",
    "path_prefix",
    "protocol",
    "min_duration",
    "since",
    "until",
    "limit",
    "cursor",
];

/// Results per query unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// Results per query at most.
pub const MAX_LIMIT: usize = 1000;

/// Sessions the live feed holds for its slowest follower ([`Store::subscribe`]): a follower
/// further behind loses the oldest and is told how many.
pub const FEED_CAPACITY: usize = 1024;

/// Where the next page of a session query starts: opaque to clients (`c1` and the arrival
/// number of the last session returned, in hex), valid with the same filters however many
/// sessions arrived meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(u64);

impl Cursor {
    /// Parses a cursor made by [`Cursor::encode`].
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix("c1")?;
        if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        u64::from_str_radix(hex, 16).ok().map(Self)
    }

    /// The cursor's text.
    pub fn encode(self) -> String {
        format!("c1{:016x}", self.0)
    }
}

/// One page of a session query.
#[derive(Debug, Default)]
pub struct Page {
    /// Sessions passing the filter, newest first.
    pub sessions: Vec<Arc<CorrelatedSession>>,
    /// Where the next page starts; `None` when this one is the last.
    pub next: Option<Cursor>,
}

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
    /// The serving Kubernetes Service (else workload, else pod, else address), as the
    /// analytics name it.
    pub service: Option<String>,
    /// The request method (case-insensitive).
    pub method: Option<String>,
    /// The start of the request path (query excluded).
    pub path_prefix: Option<String>,
    /// The protocol name (`http1`, …) as the analytics name it.
    pub protocol: Option<String>,
    /// The shortest duration, nanoseconds.
    pub min_duration_ns: Option<u64>,
    /// Requests started at or after, Unix nanoseconds.
    pub since_ns: Option<u64>,
    /// Requests started before, Unix nanoseconds.
    pub until_ns: Option<u64>,
    /// Results at most, 1..=[`MAX_LIMIT`].
    pub limit: usize,
    /// Sessions older than the previous page's last.
    pub cursor: Option<Cursor>,
}

impl Default for SessionFilter {
    fn default() -> Self {
        Self {
            trace_id: None,
            request_id: None,
            pod: None,
            namespace: None,
            status: None,
            service: None,
            method: None,
            path_prefix: None,
            protocol: None,
            min_duration_ns: None,
            since_ns: None,
            until_ns: None,
            limit: DEFAULT_LIMIT,
            cursor: None,
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
            if !FILTER_NAMES.contains(&name.as_str()) {
                return Err(bad("unknown filter"));
            }
            match name.as_str() {
                "trace_id" => {
                    // All zero is no trace's id: such a filter matches nothing.
                    filter.trace_id = Some(
                        TraceId::from_hex_or_zero(value)
                            .ok_or_else(|| bad("expected 32 hex digits"))?,
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
                "service" => filter.service = Some(value.clone()),
                "method" => filter.method = Some(value.clone()),
                "path_prefix" => filter.path_prefix = Some(value.clone()),
                "protocol" => filter.protocol = Some(value.clone()),
                "min_duration" => {
                    let d = Some(value)
                        .filter(|v| v.chars().take_while(char::is_ascii_digit).count() <= 9)
                        .and_then(|v| parse_duration(v))
                        .ok_or_else(|| bad("expected a duration like 100ms, 2s or 1m"))?;
                    filter.min_duration_ns = Some(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                }
                "since" => {
                    filter.since_ns =
                        Some(unix_nanos(value).ok_or_else(|| bad("expected an RFC 3339 time"))?)
                }
                "until" => {
                    filter.until_ns =
                        Some(unix_nanos(value).ok_or_else(|| bad("expected an RFC 3339 time"))?)
                }
                "limit" => {
                    filter.limit = match value.parse::<usize>() {
                        Ok(n @ 1..=MAX_LIMIT) => n,
                        _ => return Err(bad("expected a number from 1 to 1000")),
                    }
                }
                "cursor" => {
                    filter.cursor = Some(
                        Cursor::parse(value)
                            .ok_or_else(|| bad("expected the next_cursor of a previous page"))?,
                    )
                }
                // A name in FILTER_NAMES without its arm here (the API tests look for one).
                _ => return Err(bad("filter not implemented")),
            }
        }
        Ok(filter)
    }

    /// Whether `rec` passes every set field. An exchange only counters-only views saw so far (a
    /// covered veth's timings, no payload, waiting for the socket's decoded view) is never
    /// listed: it has no protocol, and on its own — the socket saw an opaque protocol, or missed
    /// the exchange — it is not one. `GET /api/v1/sessions/{id}` still finds it.
    pub fn matches(&self, rec: &CorrelatedSession) -> bool {
        let s = &rec.session;
        if clovisor_proto::join::merge::counters_only(s) {
            return false;
        }
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
            && self
                .service
                .as_ref()
                .is_none_or(|w| &end_name(s.server.as_ref()) == w)
            && self
                .method
                .as_ref()
                .is_none_or(|m| http.is_some_and(|h| h.method.eq_ignore_ascii_case(m)))
            && self.path_prefix.as_ref().is_none_or(|p| {
                http.is_some_and(|h| split_target(&h.target).0.starts_with(p.as_str()))
            })
            && self
                .protocol
                .as_ref()
                .is_none_or(|p| protocol_label(s) == p.as_str())
            && self
                .min_duration_ns
                .is_none_or(|d| s.end_unix_nanos.saturating_sub(s.start_unix_nanos) >= d)
            && self.since_ns.is_none_or(|t| s.start_unix_nanos >= t)
            && self.until_ns.is_none_or(|t| s.start_unix_nanos < t)
    }
}

/// Unix nanoseconds of an RFC 3339 time (0 before 1970, when no exchange starts); `None` when
/// malformed.
fn unix_nanos(text: &str) -> Option<u64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(u64::try_from(t.unix_timestamp_nanos().max(0)).unwrap_or(u64::MAX))
}

/// The store; share it behind an `Arc`. It is a view of the join's state
/// ([`crate::join::Joiner`]): each exchange is held once, by the join while it can still gain
/// views and by the store's order while it is among the `capacity` most recent, and the REST
/// API reads it under the same lock the ingest writes it.
pub struct Store {
    capacity: usize,
    state: Arc<RwLock<Joiner>>,
    /// The analytics over the exchanges finished; cleared with the store.
    analytics: Arc<Analytics>,
    /// Exchanges as they finish, to the REST API's live followers.
    feed: broadcast::Sender<Arc<CorrelatedSession>>,
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
    /// A store keeping `capacity` sessions at most (at least one), over a join configured by
    /// default (see [`Store::configure_join`]).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            state: Arc::new(RwLock::new(Joiner::with_store(
                JoinConfig::default(),
                capacity,
            ))),
            analytics: Arc::new(Analytics::default()),
            feed: broadcast::Sender::new(FEED_CAPACITY),
        }
    }

    /// Follows the exchanges finished from now on (`GET /api/v1/sessions/stream`). The
    /// receiver lags by [`FEED_CAPACITY`] at most: past that it loses the oldest (it is told
    /// how many).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<CorrelatedSession>> {
        self.feed.subscribe()
    }

    /// Followers now.
    pub fn followers(&self) -> usize {
        self.feed.receiver_count()
    }

    /// Hands finished exchanges to the live followers, if any (nothing is kept otherwise).
    pub fn publish(&self, finished: &[Arc<CorrelatedSession>]) {
        if self.feed.receiver_count() == 0 {
            return;
        }
        for rec in finished {
            // Fails only when the last follower left meanwhile.
            let _ = self.feed.send(Arc::clone(rec));
        }
    }

    /// The analytics over the exchanges finished (fed by the ingest, read by the REST API).
    pub fn analytics(&self) -> &Arc<Analytics> {
        &self.analytics
    }

    /// Forgets every stored session and the analytics (`DELETE /api/v1/sessions`); exchanges
    /// still in their join window stay in the join. Returns how many sessions were dropped.
    pub fn clear(&self) -> usize {
        let cleared = self.write().store_clear();
        self.analytics.clear();
        cleared
    }

    /// Configures the join behind the store; only before anything is stored.
    pub fn configure_join(&self, config: JoinConfig) {
        self.write().set_config(config);
    }

    /// The join state and the store's order, for writing (the ingest service).
    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Joiner> {
        // A poisoned lock only means another thread panicked mid-update of plain data; the
        // structure is still consistent enough to keep serving.
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Joiner> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `rec` on its own (not through the join); returns how many sessions were evicted
    /// to make room (0 or 1). It is found by its id and by the ids of the sessions merged into
    /// it.
    pub fn insert(&self, rec: Arc<CorrelatedSession>) -> usize {
        self.write().store_insert(rec)
    }

    /// The newest session with this id.
    pub fn get(&self, id: &str) -> Option<Arc<CorrelatedSession>> {
        self.read().store_get(id)
    }

    /// Sessions passing `filter`, newest first, at most `filter.limit`.
    pub fn query(&self, filter: &SessionFilter) -> Vec<Arc<CorrelatedSession>> {
        self.page(filter).sessions
    }

    /// The page of sessions passing `filter` that starts at `filter.cursor` (the newest when
    /// none), at most `filter.limit`, newest first.
    pub fn page(&self, filter: &SessionFilter) -> Page {
        let limit = filter.limit.clamp(1, MAX_LIMIT);
        let joiner = self.read();
        let mut matching = joiner
            .stored_before(filter.cursor.map(|c| c.0))
            .filter(|(_, s)| filter.matches(s));
        let mut page = Page::default();
        let mut last = None;
        for (n, s) in matching.by_ref().take(limit) {
            page.sessions.push(s);
            last = Some(n);
        }
        if matching.next().is_some() {
            page.next = last.map(Cursor);
        }
        page
    }

    /// Sessions held now.
    pub fn len(&self) -> usize {
        self.read().store_len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions evicted since the start.
    pub fn evicted(&self) -> u64 {
        self.read().store_evicted()
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
        assert_eq!(q(&[("service", "api-1"), ("status", "5xx")]), ["boom"]);
        assert_eq!(q(&[("method", "get"), ("protocol", "http1")]).len(), 3);
        assert_eq!(q(&[("protocol", "grpc")]), Vec::<String>::new());
        assert_eq!(q(&[("path_prefix", "/index")]).len(), 3);
        assert_eq!(
            q(&[("path_prefix", "/index.html?q")]),
            Vec::<String>::new(),
            "query excluded"
        );
        assert_eq!(q(&[("min_duration", "1h")]), Vec::<String>::new());
        assert_eq!(q(&[("min_duration", "1ms")]).len(), 3);
        assert_eq!(q(&[("since", "1970-01-01T00:00:00Z")]).len(), 3);
        assert_eq!(
            q(&[("until", "1970-01-01T00:00:00Z")]),
            Vec::<String>::new()
        );
        assert_eq!(
            q(&[("until", "1969-12-31T23:59:59Z")]),
            Vec::<String>::new(),
            "before 1970: before every exchange"
        );
        assert_eq!(q(&[("since", "0001-01-01T00:00:00Z")]).len(), 3);
        assert_eq!(
            q(&[("trace_id", "00000000000000000000000000000000")]),
            Vec::<String>::new(),
            "no trace has the all-zero id"
        );
    }

    #[test]
    fn pages_cover_every_session_once_while_more_arrive() {
        let store = Store::new(100);
        for i in 0..10 {
            store.insert(rec(SessionBuilder::new(&format!("s{i}")).status(200)));
        }
        let mut filter = SessionFilter {
            limit: 3,
            ..SessionFilter::default()
        };
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let page = store.page(&filter);
            pages += 1;
            seen.extend(page.sessions.iter().map(|s| s.id.clone()));
            // Newer sessions arriving between pages must not shift the pages.
            store.insert(rec(SessionBuilder::new(&format!("new{pages}")).status(404)));
            match page.next {
                Some(c) => {
                    let text = c.encode();
                    filter.cursor = Some(Cursor::parse(&text).expect("own cursor parses"));
                }
                None => break,
            }
        }
        let want: Vec<String> = (0..10).rev().map(|i| format!("s{i}")).collect();
        assert_eq!(
            seen, want,
            "each session once, newest first, over {pages} pages"
        );
        assert_eq!(pages, 4, "3 + 3 + 3 + 1");

        // A filtered page stops where nothing more matches: no cursor to an empty page.
        let f = SessionFilter::from_query(&params(&[("status", "200"), ("limit", "10")]))
            .expect("valid filter");
        let page = store.page(&f);
        assert_eq!(page.sessions.len(), 10);
        assert!(page.next.is_none(), "the 10 matching sessions fit one page");
    }

    #[test]
    fn a_cursor_past_evicted_sessions_ends_the_listing() {
        let store = Store::new(3);
        for i in 0..3 {
            store.insert(rec(SessionBuilder::new(&format!("s{i}"))));
        }
        let first = store.page(&SessionFilter {
            limit: 1,
            ..SessionFilter::default()
        });
        let cursor = first.next.expect("more than one page");
        for i in 3..10 {
            store.insert(rec(SessionBuilder::new(&format!("s{i}"))));
        }
        let next = store.page(&SessionFilter {
            limit: 1,
            cursor: Some(cursor),
            ..SessionFilter::default()
        });
        assert!(
            next.sessions.is_empty() && next.next.is_none(),
            "everything older than the cursor was evicted, got {:?}",
            ids(&next.sessions)
        );
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
            ("min_duration", "fast"),
            ("since", "yesterday"),
            ("cursor", "12"),
            ("cursor", "c10000000000000000A"),
            ("min_duration", "0000000001ms"),
            ("cursor", "c1zz00000000000000"),
            ("cursor", "c100000000000000001"),
        ] {
            let err = SessionFilter::from_query(&params(&[(k, v)]));
            assert!(
                matches!(err, Err(Error::BadFilter { ref name, .. }) if name == k),
                "{k}={v} must be refused as a bad filter, got {err:?}"
            );
        }
    }
}
