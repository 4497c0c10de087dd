//! The REST API (`/api/v1/sessions` paged by cursor, its live feed in `stream.rs`, the
//! analytics of `services.rs`, the OpenAPI document of `openapi.rs`, health) and the metrics
//! endpoint, each an axum `Router` built by a function so tests can drive it with `oneshot`.

pub mod json;
pub mod openapi;
pub mod services;
pub mod stream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clovisor_runtime::drops::Drops;
use clovisor_runtime::StopFlag;
use prometheus_client::registry::Registry;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::Error;
use crate::store::{SessionFilter, Store};
use json::SessionJson;

/// What the REST handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// Recent sessions.
    pub store: Arc<Store>,
    /// Cleared when shutting down, so load balancers stop sending queries first.
    pub ready: Arc<AtomicBool>,
    /// Raised when shutting down: live feeds end, so the HTTP server can stop.
    pub closing: StopFlag,
    /// Where live followers' losses are counted.
    pub drops: Drops,
    /// How the live feed behaves.
    pub stream: stream::StreamConfig,
    /// Whether the process requires a bearer token (`--api-token-file`): the OpenAPI
    /// document then says so.
    pub bearer_auth: bool,
}

impl ApiState {
    /// State serving `store`, ready from the start, counting losses into unregistered drops.
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            ready: Arc::new(AtomicBool::new(true)),
            closing: StopFlag::default(),
            drops: Drops::default(),
            stream: stream::StreamConfig::default(),
            bearer_auth: false,
        }
    }

    /// The same, counting the live followers' losses into `drops`.
    pub fn with_drops(mut self, drops: Drops) -> Self {
        self.drops = drops;
        self
    }
}

/// Why a request was refused.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What was wrong, for people.
    error: String,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorBody { error: message })).into_response()
}

/// A page of sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionsBody {
    /// Newest first.
    sessions: Vec<SessionJson>,
    /// Pass as `cursor` (with the same filters) for the next, older page; `null` on the last.
    next_cursor: Option<String>,
}

/// The REST API router.
pub fn app(state: ApiState) -> Router {
    Router::new()
        .route(
            "/api/v1/sessions",
            get(list_sessions).delete(services::clear),
        )
        .route("/api/v1/sessions/stream", get(stream::follow))
        .route("/api/v1/sessions/{id}", get(get_session))
        .route("/api/v1/openapi.json", get(openapi::serve))
        .merge(services::routes())
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Recent sessions, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/sessions",
    tag = "sessions",
    params(openapi::SessionQuery, openapi::PageQuery),
    responses(
        (status = 200, description = "A page of sessions", body = SessionsBody),
        (status = 400, description = "A filter is unknown or malformed", body = ErrorBody),
        (status = 401, description = "A bearer token is required", body = String),
    )
)]
pub(crate) async fn list_sessions(
    State(state): State<ApiState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let Query(params) = match query {
        Ok(q) => q,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    let filter = match SessionFilter::from_query(&params) {
        Ok(f) => f,
        Err(e @ Error::BadFilter { .. }) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => {
            tracing::error!(error = %e, "unexpected error parsing filters");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error".to_owned(),
            );
        }
    };
    let page = state.store.page(&filter);
    Json(SessionsBody {
        sessions: page
            .sessions
            .iter()
            .map(|s| SessionJson::from(s.as_ref()))
            .collect(),
        next_cursor: page.next.map(|c| c.encode()),
    })
    .into_response()
}

/// One session by its id (or the id of any view merged into it).
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = String, Path, description = "The session's id")),
    responses(
        (status = 200, description = "The session", body = SessionJson),
        (status = 404, description = "No stored session has this id", body = ErrorBody),
        (status = 401, description = "A bearer token is required", body = String),
    )
)]
pub(crate) async fn get_session(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    match state.store.get(&id) {
        Some(s) => Json(SessionJson::from(s.as_ref())).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no session {id:?}")),
    }
}

async fn readyz(State(state): State<ApiState>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    }
}

/// The `/metrics` router (OpenMetrics text), for its own port.
pub fn metrics_app(registry: Arc<Registry>) -> Router {
    clovisor_runtime::metrics_router(registry)
}

#[cfg(test)]
mod tests;
