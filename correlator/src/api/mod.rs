//! The REST API (`/api/v1/sessions`, the analytics of `services.rs`, health) and the metrics endpoint, each an axum `Router`
//! built by a function so tests can drive it with `oneshot`.

pub mod json;
pub mod services;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Serialize;

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
}

impl ApiState {
    /// State serving `store`, ready from the start.
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            ready: Arc::new(AtomicBool::new(true)),
        }
    }
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorBody { error: message })).into_response()
}

#[derive(Debug, Serialize)]
struct SessionsBody {
    sessions: Vec<SessionJson>,
}

/// The REST API router.
pub fn app(state: ApiState) -> Router {
    Router::new()
        .route(
            "/api/v1/sessions",
            get(list_sessions).delete(services::clear),
        )
        .route("/api/v1/sessions/{id}", get(get_session))
        .merge(services::routes())
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn list_sessions(
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
    let sessions = state
        .store
        .query(&filter)
        .iter()
        .map(|s| SessionJson::from(s.as_ref()))
        .collect();
    Json(SessionsBody { sessions }).into_response()
}

async fn get_session(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
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
