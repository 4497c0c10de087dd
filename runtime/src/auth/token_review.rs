//! Kubernetes TokenReview: a caller's bearer token (a service account's, or any token the API
//! server authenticates) is sent to the API server, which says whose it is; the identity must
//! then be on the operator's allow-list (a user name, or `group:NAME`). Answers are cached
//! briefly so a Prometheus scraping every 15 s costs one review a minute, not one per scrape.
//! An API server that cannot be reached refuses (fails closed).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};

/// How long an accepted token is trusted without asking again.
pub const ACCEPTED_TTL: Duration = Duration::from_secs(60);
/// How long a refused token is refused without asking again (a flood of bad tokens costs the
/// API server one review per token per this).
pub const REFUSED_TTL: Duration = Duration::from_secs(5);
/// Tokens remembered at most; the cache starts afresh beyond.
const MAX_CACHED: usize = 1024;

/// Reviews tokens with the API server behind `client`.
pub struct TokenReviewer {
    client: kube::Client,
    allowed: BTreeSet<String>,
    audiences: Vec<String>,
    cache: Mutex<HashMap<String, (Instant, bool)>>,
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
    /// `group:NAME`); `audiences` are passed on in each review (empty: the API server's).
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
        }
    }

    /// Whether `token` belongs to an allowed identity.
    pub async fn accepts(&self, token: &str) -> bool {
        if token.is_empty() {
            return false;
        }
        let now = Instant::now();
        if let Some((until, ok)) = self.lock().get(token) {
            if *until > now {
                return *ok;
            }
        }
        let ok = self.review(token).await;
        let ttl = if ok { ACCEPTED_TTL } else { REFUSED_TTL };
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (until, _)| *until > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(token.to_owned(), (now + ttl, ok));
        ok
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, bool)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn review(&self, token: &str) -> bool {
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
                tracing::warn!(error = %e, "TokenReview failed; refusing the request");
                return false;
            }
        };
        if status.authenticated != Some(true) {
            return false;
        }
        let Some(user) = status.user else {
            return false;
        };
        let name_allowed = user
            .username
            .as_ref()
            .is_some_and(|u| self.allowed.contains(u));
        let group_allowed = user
            .groups
            .unwrap_or_default()
            .iter()
            .any(|g| self.allowed.contains(&format!("group:{g}")));
        if !(name_allowed || group_allowed) {
            tracing::info!(user = ?user.username, "authenticated by TokenReview but not allowed (--api-allowed-identities)");
        }
        name_allowed || group_allowed
    }
}
