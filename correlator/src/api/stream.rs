//! `GET /api/v1/sessions/stream`: sessions as they finish, as server-sent events, with the
//! filters of `GET /api/v1/sessions`.
//!
//! Every follower reads the store's feed ([`crate::store::Store::subscribe`]) at its own pace
//! and filters it itself, so the ingest does no per-follower work. A follower more than
//! [`crate::store::FEED_CAPACITY`] sessions behind loses the oldest: they are counted in
//! `clovisor_dropped_total{stage="api_stream",reason="follower_lagged"}` and the follower is
//! sent a `dropped` event saying how many. A comment line every [`StreamConfig::heartbeat`]
//! keeps idle connections (and proxies) open and lets the client notice a dead server.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use super::json::SessionJson;
use super::{error, ApiState, ErrorBody};
use crate::store::SessionFilter;

/// Loss-accounting stage of the live feed.
pub const STAGE_API_STREAM: &str = "api_stream";
/// The reason a follower lost sessions: it read more slowly than they finished.
pub const REASON_LAGGED: &str = "follower_lagged";

/// How the live feed behaves.
#[derive(Debug, Clone, Copy)]
pub struct StreamConfig {
    /// A comment line this often when no session passes.
    pub heartbeat: Duration,
    /// Followers at once, at most; more are refused (429).
    pub max_followers: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
            max_followers: 64,
        }
    }
}

/// Sessions as they finish, as server-sent events: `session` events carrying a session's
/// JSON (the shape of `GET /api/v1/sessions/{id}`), `dropped` events carrying
/// `{"dropped": n}` when this follower fell behind and lost `n`, and a comment line as a
/// heartbeat.
#[utoipa::path(
    get,
    path = "/api/v1/sessions/stream",
    tag = "sessions",
    params(super::openapi::SessionQuery),
    responses(
        (status = 200, description = "An endless text/event-stream of `session` and `dropped` events",
            content_type = "text/event-stream", body = String),
        (status = 400, description = "A filter is unknown or malformed (`limit` and `cursor` page; they do not apply here)",
            body = ErrorBody),
        (status = 401, description = "A bearer token is required", body = String),
        (status = 429, description = "Too many followers already", body = ErrorBody),
    )
)]
pub(crate) async fn follow(
    State(state): State<ApiState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let Query(params) = match query {
        Ok(q) => q,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    if let Some(name) = ["limit", "cursor"]
        .into_iter()
        .find(|n| params.contains_key(*n))
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("bad parameter {name}: a live feed has no pages"),
        );
    }
    let filter = match SessionFilter::from_query(&params) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if state.store.followers() >= state.stream.max_followers {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} followers already; try again later",
                state.stream.max_followers
            ),
        );
    }
    let drops = state.drops.clone();
    let events = BroadcastStream::new(state.store.subscribe())
        .filter_map(move |item| {
            let event = match item {
                Ok(rec) if filter.matches(&rec) => {
                    match Event::default()
                        .event("session")
                        .json_data(SessionJson::from(rec.as_ref()))
                    {
                        Ok(e) => Some(e),
                        Err(e) => {
                            tracing::error!(error = %e, "session not encodable as JSON");
                            None
                        }
                    }
                }
                Ok(_) => None,
                Err(BroadcastStreamRecvError::Lagged(n)) => {
                    drops.count(STAGE_API_STREAM, REASON_LAGGED, n);
                    Some(
                        Event::default()
                            .event("dropped")
                            .data(format!("{{\"dropped\":{n}}}")),
                    )
                }
            };
            std::future::ready(event.map(Ok::<_, Infallible>))
        })
        .take_until(state.closing.wait());
    Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(state.stream.heartbeat)
                .text("heartbeat"),
        )
        .into_response()
}
