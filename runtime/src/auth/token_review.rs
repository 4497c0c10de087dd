//! Kubernetes TokenReview: a caller's bearer token (a service account's, or any token the API
//! server authenticates) is sent to the API server, which says whose it is; the identity must
//! then be on the operator's allow-list (a user name, or `group:NAME`). Answers are cached
//! briefly so a Prometheus scraping every 15 s costs one review a minute, not one per scrape.
//! An API server that cannot be reached refuses (fails closed).
//!
//! [`TokenReviewer::review`] also hands back what the API server said about the token
//! ([`Reviewed`]): for a token the kubelet minted for a pod (a projected, audience-bound service
//! account token), the pod and — Kubernetes 1.30 and later — the node it runs on. The collector
//! binds a probe's node to that.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};

/// How long an accepted token is trusted without asking again.
pub const ACCEPTED_TTL: Duration = Duration::from_secs(60);
/// How long a refused token is refused without asking again (a flood of bad tokens costs the
/// API server one review per token per this).
pub const REFUSED_TTL: Duration = Duration::from_secs(5);
/// Tokens remembered at most; the cache starts afresh beyond.
const MAX_CACHED: usize = 1024;
/// Reviews in flight at most: a flood of new tokens waits here instead of flooding the API
/// server.
pub const MAX_CONCURRENT_REVIEWS: usize = 16;

/// `status.user.extra` key of the node a pod-bound token's pod runs on (Kubernetes 1.30+).
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
/// `status.user.extra` key of the pod a pod-bound token belongs to.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";

/// What the API server said about an accepted token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reviewed {
    /// `status.user.username`, e.g. `system:serviceaccount:NS:NAME`.
    pub username: String,
    /// `status.user.groups`.
    pub groups: Vec<String>,
    /// `status.user.extra`: for a pod-bound token, the pod's and node's names and uids.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Reviewed {
    /// The single value of `extra[key]`; none when absent, empty or ambiguous.
    pub fn extra_value(&self, key: &str) -> Option<&str> {
        match self.extra.get(key).map(Vec::as_slice) {
            Some([one]) if !one.is_empty() => Some(one.as_str()),
            _ => None,
        }
    }

    /// The node of the pod the token was minted for ([`EXTRA_NODE_NAME`]).
    pub fn node_name(&self) -> Option<&str> {
        self.extra_value(EXTRA_NODE_NAME)
    }

    /// The pod the token was minted for ([`EXTRA_POD_NAME`]).
    pub fn pod_name(&self) -> Option<&str> {
        self.extra_value(EXTRA_POD_NAME)
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAccepted {
    /// Empty, or the API server does not authenticate it (unknown, expired, wrong audience).
    Unauthenticated,
    /// Authenticated, but its identity is not on the allow-list.
    NotAllowed,
    /// The API server could not be asked (fails closed).
    Unreachable,
}

type Answer = Result<Arc<Reviewed>, NotAccepted>;

/// Reviews tokens with the API server behind `client`.
pub struct TokenReviewer {
    client: kube::Client,
    allowed: BTreeSet<String>,
    audiences: Vec<String>,
    cache: Mutex<HashMap<String, (Instant, Answer)>>,
    in_flight: tokio::sync::Semaphore,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("allowed", &self.allowed)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer asking through `client`, admitting the identities in `allowed` (user names
    /// as the API server reports them, e.g. `system:serviceaccount:monitoring:prometheus`, or
    /// `group:NAME`); `audiences` are passed on in each review (empty: the API server's), so
    /// a token minted for another audience is not authenticated.
    pub fn new(
        client: kube::Client,
        allowed: impl IntoIterator<Item = String>,
        audiences: Vec<String>,
    ) -> Self {
        Self {
            client,
            allowed: allowed.into_iter().collect(),
            audiences,
            cache: Mutex::new(HashMap::new()),
            in_flight: tokio::sync::Semaphore::new(MAX_CONCURRENT_REVIEWS),
        }
    }

    /// A reviewer asking the API server the environment names: `KUBECONFIG` (or
    /// `~/.kube/config`) when there is one, else the in-cluster service account's.
    pub async fn from_environment(
        allowed: impl IntoIterator<Item = String>,
        audiences: Vec<String>,
    ) -> crate::Result<Self> {
        let config = kube::Config::infer()
            .await
            .map_err(|e| crate::Error::TokenReview { why: e.to_string() })?;
        let client = kube::Client::try_from(config)
            .map_err(|e| crate::Error::TokenReview { why: e.to_string() })?;
        Ok(Self::new(client, allowed, audiences))
    }

    /// Whether `token` belongs to an allowed identity.
    pub async fn accepts(&self, token: &str) -> bool {
        self.review(token).await.is_ok()
    }

    /// What the API server says about `token`, if it authenticates it and its identity is
    /// allowed. Answers are cached ([`ACCEPTED_TTL`], [`REFUSED_TTL`]; an unreachable API
    /// server is not remembered).
    pub async fn review(&self, token: &str) -> Answer {
        self.review_with(token, true).await
    }

    /// What the API server says about `token` now, whatever was cached: for a credential
    /// already in use (a probe's open stream), so that a revoked token is noticed at once. The
    /// answer replaces the cached one, so a refusal also refuses the token's next
    /// [`Self::review`].
    pub async fn review_now(&self, token: &str) -> Answer {
        self.review_with(token, false).await
    }

    async fn review_with(&self, token: &str, cached: bool) -> Answer {
        if token.is_empty() {
            return Err(NotAccepted::Unauthenticated);
        }
        let now = Instant::now();
        if cached {
            if let Some((until, answer)) = self.lock().get(token) {
                if *until > now {
                    return answer.clone();
                }
            }
        }
        let answer = match self.in_flight.acquire().await {
            Ok(_permit) => self.ask(token).await.map(Arc::new),
            Err(_) => Err(NotAccepted::Unreachable),
        };
        let ttl = match answer {
            Ok(_) => ACCEPTED_TTL,
            Err(NotAccepted::Unreachable) => return answer,
            Err(_) => REFUSED_TTL,
        };
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (until, _)| *until > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(token.to_owned(), (now + ttl, answer.clone()));
        answer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Answer)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn ask(&self, token: &str) -> Result<Reviewed, NotAccepted> {
        let api = kube::Api::<TokenReview>::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let status = match api.create(&kube::api::PostParams::default(), &review).await {
            Ok(r) => r.status.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "TokenReview failed; refusing the token");
                return Err(NotAccepted::Unreachable);
            }
        };
        if status.authenticated != Some(true) {
            return Err(NotAccepted::Unauthenticated);
        }
        // The API server answers with the audiences the token is valid for among those asked:
        // none in common means it was minted for someone else.
        if !self.audiences.is_empty()
            && !status
                .audiences
                .unwrap_or_default()
                .iter()
                .any(|a| self.audiences.contains(a))
        {
            return Err(NotAccepted::Unauthenticated);
        }
        let Some(user) = status.user else {
            return Err(NotAccepted::Unauthenticated);
        };
        let username = user.username.unwrap_or_default();
        let groups = user.groups.unwrap_or_default();
        let name_allowed = !username.is_empty() && self.allowed.contains(&username);
        let group_allowed = groups
            .iter()
            .any(|g| self.allowed.contains(&format!("group:{g}")));
        if !(name_allowed || group_allowed) {
            tracing::info!(user = %username, "authenticated by TokenReview but not allowed");
            return Err(NotAccepted::NotAllowed);
        }
        Ok(Reviewed {
            username,
            groups,
            extra: user.extra.unwrap_or_default(),
        })
    }
}
