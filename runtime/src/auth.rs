//! Bearer-token authentication of the HTTP read side (the correlator's REST API, every
//! component's `/metrics`, the probe's `/api/v1/probe`). Liveness and readiness (`/healthz`,
//! `/readyz`) stay open for the kubelet.
//!
//! The token is read from a file (a mounted Secret) and re-read every
//! [`TOKEN_RELOAD`] so a rotated Secret applies without a restart. Callers send
//! `Authorization: Bearer <token>` (Prometheus: `authorization.credentials_file`). A missing or
//! wrong token is `401` and counted (`clovisor_http_unauthorized_total`).
//!
//! In a cluster, tokens can instead (or also) be checked by the API server ([`token_review`]):
//! a service account's token is accepted when the API server authenticates it and its identity
//! is on the operator's allow-list.

pub mod token_review;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use crate::{Error, Result};

/// Environment variable: the file holding the bearer token.
pub const ENV_API_TOKEN_FILE: &str = "CLOVISOR_API_TOKEN_FILE";

/// Paths served without a token: the kubelet's probes.
pub const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// How often the token file is re-read.
pub const TOKEN_RELOAD: Duration = Duration::from_secs(30);

/// What the HTTP servers accept as a bearer token: a static token, tokens the Kubernetes API
/// server vouches for ([`token_review::TokenReviewer`]), or either; cheap to clone.
#[derive(Debug, Clone)]
pub struct BearerToken {
    current: Arc<RwLock<Vec<u8>>>,
    review: Option<Arc<token_review::TokenReviewer>>,
    refused: Counter,
}

impl BearerToken {
    /// The token in `path` (surrounding white space ignored), re-read every [`TOKEN_RELOAD`] on
    /// the current Tokio runtime. A missing or empty file is an error.
    pub fn from_file(path: &Path) -> Result<Self> {
        let token = read_token(path)?;
        let this = Self::from_value(&token);
        let weak = Arc::downgrade(&this.current);
        let path = path.to_owned();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TOKEN_RELOAD);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(current) = weak.upgrade() else {
                    return;
                };
                match read_token(&path) {
                    Ok(t) => *current.write().unwrap_or_else(|e| e.into_inner()) = t.into_bytes(),
                    Err(e) => {
                        tracing::warn!(error = %e, "API token file not readable; keeping the current token")
                    }
                }
            }
        });
        Ok(this)
    }

    /// A fixed token (tests).
    pub fn from_value(token: &str) -> Self {
        Self {
            current: Arc::new(RwLock::new(token.trim().as_bytes().to_vec())),
            review: None,
            refused: Counter::default(),
        }
    }

    /// Tokens `reviewer` accepts, and no static one.
    pub fn review_only(reviewer: token_review::TokenReviewer) -> Self {
        Self::from_value("").with_review(reviewer)
    }

    /// Also accepts the tokens `reviewer` accepts.
    pub fn with_review(mut self, reviewer: token_review::TokenReviewer) -> Self {
        self.review = Some(Arc::new(reviewer));
        self
    }

    /// Registers `clovisor_http_unauthorized_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "clovisor_http_unauthorized",
            "HTTP requests refused for a missing or wrong bearer token",
            self.refused.clone(),
        );
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.get()
    }

    /// Whether `authorization` carries the static token.
    pub fn accepts(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(presented) = presented(authorization) else {
            return false;
        };
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        constant_time_eq(presented.as_bytes(), &current)
    }

    /// Whether `authorization` carries the static token or one the API server vouches for.
    pub async fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        if self.accepts(authorization) {
            return true;
        }
        match (&self.review, presented(authorization)) {
            (Some(review), Some(token)) => review.accepts(token).await,
            _ => false,
        }
    }

    /// `router` with every path but [`OPEN_PATHS`] behind the token.
    pub fn protect(&self, router: axum::Router) -> axum::Router {
        router.layer(axum::middleware::from_fn_with_state(self.clone(), check))
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn presented(authorization: Option<&HeaderValue>) -> Option<&str> {
    authorization.and_then(|v| v.to_str().ok()).and_then(bearer)
}

/// The token of an `Authorization` value `Bearer <token>` (HTTP header or gRPC metadata);
/// none for another scheme or an empty token.
pub fn bearer(value: &str) -> Option<&str> {
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

async fn check(State(token): State<BearerToken>, request: Request, next: Next) -> Response {
    if OPEN_PATHS.contains(&request.uri().path())
        || token
            .admits(request.headers().get(header::AUTHORIZATION))
            .await
    {
        return next.run(request).await;
    }
    token.refused.inc();
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a bearer token is required\n",
    )
        .into_response()
}

fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::TokenFile {
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(Error::EmptyToken {
            path: PathBuf::from(path),
        });
    }
    Ok(token)
}

/// Compares without stopping at the first difference (the time taken does not tell how much of
/// a guess was right).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() || b.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt as _;

    async fn status(router: &axum::Router, path: &str, auth: Option<&str>) -> StatusCode {
        let mut req = Request::builder().uri(path);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let req = req
            .body(Body::empty())
            .unwrap_or_else(|e| panic!("request: {e}"));
        router
            .clone()
            .oneshot(req)
            .await
            .map(|r| r.status())
            .unwrap_or_else(|e| match e {})
    }

    #[tokio::test]
    async fn everything_but_health_needs_the_token() {
        let token = BearerToken::from_value("s3cret\n");
        let router = token.protect(
            axum::Router::new()
                .route("/healthz", axum::routing::get(|| async { "ok" }))
                .route("/readyz", axum::routing::get(|| async { "ok" }))
                .route("/metrics", axum::routing::get(|| async { "m" }))
                .route("/api/v1/sessions", axum::routing::get(|| async { "[]" })),
        );
        assert_eq!(status(&router, "/healthz", None).await, StatusCode::OK);
        assert_eq!(status(&router, "/readyz", None).await, StatusCode::OK);
        assert_eq!(
            status(&router, "/api/v1/sessions", None).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(&router, "/metrics", Some("Bearer nope")).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(&router, "/metrics", Some("Basic czNjcmV0")).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(&router, "/metrics", Some("Bearer s3cre")).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(&router, "/api/v1/sessions", Some("Bearer s3cret")).await,
            StatusCode::OK
        );
        assert_eq!(
            status(&router, "/metrics", Some("Bearer s3cret")).await,
            StatusCode::OK
        );
        assert_eq!(token.refused(), 4);
    }

    #[tokio::test]
    async fn the_token_file_must_hold_a_token() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("token");
        assert!(matches!(
            BearerToken::from_file(&path),
            Err(Error::TokenFile { .. })
        ));
        std::fs::write(&path, " \n").unwrap_or_else(|e| panic!("write: {e}"));
        assert!(matches!(
            BearerToken::from_file(&path),
            Err(Error::EmptyToken { .. })
        ));
        std::fs::write(&path, "abc\n").unwrap_or_else(|e| panic!("write: {e}"));
        let token = BearerToken::from_file(&path).unwrap_or_else(|e| panic!("token: {e}"));
        assert!(token.accepts(Some(&HeaderValue::from_static("Bearer abc"))));
    }
}
