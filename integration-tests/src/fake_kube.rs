//! A fake Kubernetes API server for the probe's watch: real list and watch semantics over
//! HTTP on loopback, serving real object JSON (k8s-openapi types serialized with serde).
//!
//! - `GET /api/v1/{pods,services,namespaces}` lists, with `metadata.resourceVersion`;
//!   `fieldSelector` (`a.b=c[,…]`, `!=` too) filters.
//! - `?watch=true&resourceVersion=N` streams newline-delimited watch events (`ADDED`,
//!   `MODIFIED`, `DELETED`) after version N, a `BOOKMARK` when asked for, and stays open for
//!   new changes. A version older than the kept history is answered, as a real server does,
//!   with an `ERROR` event carrying a 410 `Status` (`Expired`), which makes clients relist.
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews` answers a `TokenReview` as the API
//!   server does: `status.authenticated` and `status.user` for the tokens the test registered
//!   ([`FakeKube::add_token`]), `authenticated: false` with an error for any other. A token
//!   is valid for the audiences it was minted for ([`FakeKube::add_bound_token`]; by default
//!   the API server's own, [`API_AUDIENCE`]): a review asking for others does not authenticate
//!   it; `status.audiences` holds the ones in common and `status.user.extra` what the kubelet
//!   binds a pod's token to (its pod's and node's names). A token can expire
//!   ([`FakeKube::expire_token_at`]) or be revoked ([`FakeKube::revoke_token`]): from then on
//!   it does not authenticate.
//! - The test can cut every open watch stream ([`FakeKube::cut_watches`]), expire the
//!   history ([`FakeKube::expire_history`]) and count the requests ([`FakeKube::requests`]).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State as AxumState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{broadcast, oneshot};

/// Resources served, by URL segment.
const RESOURCES: [(&str, &str); 3] = [
    ("pods", "Pod"),
    ("services", "Service"),
    ("namespaces", "Namespace"),
];

/// One stored change.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    resource: String,
    kind: &'static str,
    object: Value,
}

/// What open watch streams are told.
#[derive(Debug, Clone)]
enum Signal {
    Change(Arc<Change>),
    Cut,
}

#[derive(Debug, Default)]
struct Store {
    rv: u64,
    /// (resource, namespace, name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    history: Vec<Arc<Change>>,
    /// Watches from a version below this are answered 410 Gone.
    oldest: u64,
    /// (resource, "list" | "watch" | "create") → count.
    requests: BTreeMap<(String, &'static str), u32>,
    /// Token → whose it is, for TokenReviews.
    tokens: HashMap<String, TokenInfo>,
}

/// What the fake API server knows of a token.
#[derive(Debug, Clone)]
struct TokenInfo {
    user: String,
    groups: Vec<String>,
    /// Audiences the token was minted for.
    audiences: Vec<String>,
    /// `status.user.extra`.
    extra: BTreeMap<String, Vec<String>>,
    /// When the token stops authenticating (its `exp`), if ever.
    expires: Option<std::time::SystemTime>,
}

/// The audience of tokens not minted for another one, as the API server calls itself.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

#[derive(Clone)]
struct Shared {
    store: Arc<Mutex<Store>>,
    signals: broadcast::Sender<Signal>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running fake server; stopped on drop.
pub struct FakeKube {
    addr: SocketAddr,
    shared: Shared,
    stop: Option<oneshot::Sender<()>>,
}

impl FakeKube {
    /// Starts a server on a free loopback port (inside the current tokio runtime).
    pub async fn start() -> Result<Self> {
        let shared = Shared {
            store: Arc::new(Mutex::new(Store {
                rv: 1,
                ..Store::default()
            })),
            signals: broadcast::channel(1024).0,
        };
        let app = Router::new()
            .route("/api/v1/{resource}", get(serve))
            .route(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                axum::routing::post(token_review),
            )
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the fake API server")?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            shared,
            stop: Some(stop),
        })
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig pointing at this server into `dir`; returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> Result<PathBuf> {
        // JSON is YAML: kubeconfig readers take it as is.
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url()}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        });
        let path = dir.join("kubeconfig");
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        Ok(path)
    }

    /// Creates or replaces `object` (an `ADDED` or `MODIFIED` event); returns its new version.
    pub fn apply<K>(&self, object: &K) -> Result<u64>
    where
        K: k8s_openapi::Resource + serde::Serialize,
    {
        let mut value = serde_json::to_value(object).context("serialize object")?;
        let namespace = value["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = value["metadata"]["name"]
            .as_str()
            .context("object without a name")?
            .to_owned();
        let key = (K::URL_PATH_SEGMENT.to_owned(), namespace, name);
        let mut store = self.shared.lock();
        store.rv += 1;
        let rv = store.rv;
        value["metadata"]["resourceVersion"] = json!(rv.to_string());
        let kind = if store.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        store.objects.insert(key, value.clone());
        self.record(&mut store, K::URL_PATH_SEGMENT, kind, value);
        Ok(rv)
    }

    /// Deletes an object (a `DELETED` event); returns whether it existed.
    pub fn delete<K: k8s_openapi::Resource>(&self, namespace: &str, name: &str) -> bool {
        let key = (
            K::URL_PATH_SEGMENT.to_owned(),
            namespace.to_owned(),
            name.to_owned(),
        );
        let mut store = self.shared.lock();
        let Some(mut value) = store.objects.remove(&key) else {
            return false;
        };
        store.rv += 1;
        value["metadata"]["resourceVersion"] = json!(store.rv.to_string());
        self.record(&mut store, K::URL_PATH_SEGMENT, "DELETED", value);
        true
    }

    fn record(&self, store: &mut Store, resource: &str, kind: &'static str, object: Value) {
        let change = Arc::new(Change {
            rv: store.rv,
            resource: resource.to_owned(),
            kind,
            object,
        });
        store.history.push(Arc::clone(&change));
        // Sent under the lock so a watch being opened sees it once: in its history or live.
        let _ = self.shared.signals.send(Signal::Change(change));
    }

    /// Ends every open watch stream (as a load balancer or an API server restart would).
    pub fn cut_watches(&self) {
        let _store = self.shared.lock();
        let _ = self.shared.signals.send(Signal::Cut);
    }

    /// Forgets the history (as etcd compaction does) and cuts the open streams: a client
    /// resuming from its last version gets 410 Gone and must relist.
    pub fn expire_history(&self) {
        let mut store = self.shared.lock();
        store.history.clear();
        store.oldest = store.rv + 1;
        let _ = self.shared.signals.send(Signal::Cut);
    }

    /// Makes `token` authenticate as `user` in `groups` in TokenReviews.
    /// The token is valid for the API server's own audience ([`API_AUDIENCE`]).
    pub fn add_token(&self, token: &str, user: &str, groups: &[&str]) {
        self.add_bound_token(token, user, groups, &[API_AUDIENCE], &[]);
    }

    /// Makes `token` authenticate as `user` in `groups` for the reviews asking for one of
    /// `audiences`, with `extra` in its `status.user.extra` — as the kubelet's projected,
    /// audience-bound token of a pod: `authentication.kubernetes.io/pod-name`, `node-name`, ….
    pub fn add_bound_token(
        &self,
        token: &str,
        user: &str,
        groups: &[&str],
        audiences: &[&str],
        extra: &[(&str, &str)],
    ) {
        let mut extras: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in extra {
            extras
                .entry((*k).to_owned())
                .or_default()
                .push((*v).to_owned());
        }
        self.shared.lock().tokens.insert(
            token.to_owned(),
            TokenInfo {
                user: user.to_owned(),
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
                extra: extras,
                expires: None,
            },
        );
    }

    /// Makes `token` (added before) stop authenticating at `when`, as the API server refuses
    /// a token past its `exp`.
    pub fn expire_token_at(&self, token: &str, when: std::time::SystemTime) {
        if let Some(info) = self.shared.lock().tokens.get_mut(token) {
            info.expires = Some(when);
        }
    }

    /// Makes `token` stop authenticating from now on: what the API server answers once the
    /// pod a token is bound to is deleted, or its service account.
    pub fn revoke_token(&self, token: &str) {
        self.shared.lock().tokens.remove(token);
    }

    /// How many `verb` (`list`, `watch`, `create`) requests `resource` got.
    pub fn requests(&self, resource: &str, verb: &'static str) -> u32 {
        self.shared
            .lock()
            .requests
            .get(&(resource.to_owned(), verb))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.cut_watches();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `POST .../tokenreviews`: the review of `spec.token`, as the API server writes it.
async fn token_review(AxumState(shared): AxumState<Shared>, body: axum::body::Bytes) -> Response {
    let Ok(review) = serde_json::from_slice::<Value>(&body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            r#"{"kind":"Status","status":"Failure"}"#,
        );
    };
    let token = review
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let audiences = review
        .pointer("/spec/audiences")
        .cloned()
        .unwrap_or(json!([]));
    // No audiences asked: the API server's own.
    let wanted: Vec<String> = match audiences.as_array().map(Vec::as_slice) {
        Some([]) | None => vec![API_AUDIENCE.to_owned()],
        Some(list) => list
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
    };
    let found = {
        let mut store = shared.lock();
        *store
            .requests
            .entry(("tokenreviews".to_owned(), "create"))
            .or_default() += 1;
        store.tokens.get(token).cloned()
    };
    let now = std::time::SystemTime::now();
    let found = found.filter(|info| info.expires.is_none_or(|exp| exp > now));
    let status = match found {
        Some(info) => {
            let common: Vec<&String> = wanted
                .iter()
                .filter(|a| info.audiences.contains(a))
                .collect();
            if common.is_empty() {
                // What the API server says of a token minted for another audience.
                json!({"authenticated": false, "error": "[invalid bearer token, token audiences [...] is invalid for the target audiences [...]]"})
            } else {
                json!({
                    "authenticated": true,
                    "user": {"username": info.user, "uid": "0000-fake", "groups": info.groups,
                        "extra": info.extra},
                    "audiences": common,
                })
            }
        }
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    let answer = json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": {"token": token, "audiences": audiences},
        "status": status,
    });
    json_response(StatusCode::CREATED, answer.to_string())
}

/// `a.b=c,d!=e` against an object's JSON.
fn field_selector_matches(selector: &str, object: &Value) -> bool {
    selector
        .split(',')
        .filter(|term| !term.is_empty())
        .all(|term| {
            let (path, want, equal) = match term.split_once("!=") {
                Some((p, v)) => (p, v, false),
                None => match term.split_once("==").or_else(|| term.split_once('=')) {
                    Some((p, v)) => (p, v, true),
                    None => return false,
                },
            };
            let got = path
                .split('.')
                .try_fold(object, |v, part| v.get(part))
                .and_then(Value::as_str)
                .unwrap_or_default();
            (got == want) == equal
        })
}

async fn serve(
    AxumState(shared): AxumState<Shared>,
    UrlPath(resource): UrlPath<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some((_, kind)) = RESOURCES.iter().find(|(r, _)| *r == resource) else {
        return (StatusCode::NOT_FOUND, "unknown resource").into_response();
    };
    let selector = params.get("fieldSelector").cloned().unwrap_or_default();
    let watch = params.get("watch").is_some_and(|w| w == "true" || w == "1");
    if !watch {
        return list(&shared, &resource, kind, &selector);
    }
    let from: u64 = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = params
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    watch_stream(&shared, &resource, kind, selector, from, bookmarks)
}

fn list(shared: &Shared, resource: &str, kind: &str, selector: &str) -> Response {
    let mut store = shared.lock();
    *store
        .requests
        .entry((resource.to_owned(), "list"))
        .or_default() += 1;
    let items: Vec<&Value> = store
        .objects
        .iter()
        .filter(|((r, _, _), v)| r == resource && field_selector_matches(selector, v))
        .map(|(_, v)| v)
        .collect();
    let body = json!({
        "apiVersion": "v1",
        "kind": format!("{kind}List"),
        "metadata": {"resourceVersion": store.rv.to_string()},
        "items": items,
    });
    json_response(StatusCode::OK, body.to_string())
}

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn event_line(kind: &str, object: &Value) -> String {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    line
}

fn watch_stream(
    shared: &Shared,
    resource: &str,
    kind: &str,
    selector: String,
    from: u64,
    bookmarks: bool,
) -> Response {
    let store = {
        let mut store = shared.lock();
        *store
            .requests
            .entry((resource.to_owned(), "watch"))
            .or_default() += 1;
        store
    };
    if from != 0 && from < store.oldest {
        let gone = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": format!("too old resource version: {from} ({})", store.oldest),
            "reason": "Expired",
            "code": 410,
        });
        return json_response(StatusCode::OK, event_line("ERROR", &gone));
    }
    let mut first: Vec<String> = if from == 0 {
        // "Any version": the current objects as ADDED, then what follows.
        store
            .objects
            .iter()
            .filter(|((r, _, _), v)| r == resource && field_selector_matches(&selector, v))
            .map(|(_, v)| event_line("ADDED", v))
            .collect()
    } else {
        store
            .history
            .iter()
            .filter(|c| c.rv > from && c.resource == resource)
            .filter(|c| field_selector_matches(&selector, &c.object))
            .map(|c| event_line(c.kind, &c.object))
            .collect()
    };
    if bookmarks {
        let mark = json!({
            "kind": kind,
            "apiVersion": "v1",
            "metadata": {"resourceVersion": store.rv.to_string()},
        });
        first.push(event_line("BOOKMARK", &mark));
    }
    let signals = shared.signals.subscribe();
    drop(store);
    let resource = resource.to_owned();
    let live = futures::stream::unfold(
        (signals, resource, selector),
        |(mut signals, resource, selector)| async move {
            loop {
                match signals.recv().await {
                    Ok(Signal::Change(c))
                        if c.resource == resource
                            && field_selector_matches(&selector, &c.object) =>
                    {
                        let line = event_line(c.kind, &c.object);
                        return Some((
                            Ok::<_, std::convert::Infallible>(line),
                            (signals, resource, selector),
                        ));
                    }
                    Ok(Signal::Change(_)) => {}
                    // Cut, or this watcher fell behind: end the stream; the client resumes.
                    Ok(Signal::Cut) | Err(_) => return None,
                }
            }
        },
    );
    let stream = futures::StreamExt::chain(
        futures::stream::iter(first.into_iter().map(Ok::<_, std::convert::Infallible>)),
        live,
    );
    json_response(StatusCode::OK, Body::from_stream(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_selectors_match_dotted_paths() {
        let pod = json!({"spec": {"nodeName": "n1"}, "metadata": {"name": "a"}});
        assert!(field_selector_matches("spec.nodeName=n1", &pod), "=");
        assert!(field_selector_matches("spec.nodeName==n1", &pod), "==");
        assert!(
            !field_selector_matches("spec.nodeName=n2", &pod),
            "other node"
        );
        assert!(field_selector_matches("spec.nodeName!=n2", &pod), "!=");
        assert!(
            field_selector_matches("spec.nodeName=n1,metadata.name=a", &pod),
            "conjunction"
        );
        assert!(field_selector_matches("", &pod), "empty selects all");
    }
}
