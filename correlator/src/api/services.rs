//! The analytics endpoints: `/api/v1/services`, `/api/v1/stats`, `/api/v1/values/{field}`,
//! `/api/v1/system`, and `DELETE /api/v1/sessions` (see [`crate::analytics`]).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::openapi::{FieldPath, StatsQuery, WindowQuery};
use super::{error, ApiState, ErrorBody};
use crate::analytics::query::{self, Field, Group, Order, Service};
use crate::analytics::{now_unix_nanos, Analytics};
use crate::store::MAX_LIMIT;

/// The window when `window=` is not given.
const DEFAULT_WINDOW: Duration = Duration::from_secs(300);

/// The analytics routes (merged into [`super::app`]).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/services", get(services))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/values/{field}", get(values))
        .route("/api/v1/system", get(system))
}

type Params = HashMap<String, String>;

/// A query the API cannot answer: a JSON 400.
#[derive(Debug)]
pub struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, self.0)
    }
}

fn bad(name: &str, value: &str, reason: &str) -> BadRequest {
    BadRequest(format!("bad parameter {name}={value:?}: {reason}"))
}

fn params(
    query: Result<Query<Params>, QueryRejection>,
    allowed: &[&str],
) -> Result<Params, BadRequest> {
    let Query(params) = query.map_err(|r| BadRequest(r.body_text()))?;
    match params.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        Some((k, v)) => Err(bad(
            k,
            v,
            &format!("unknown parameter (expected one of {})", allowed.join(", ")),
        )),
        None => Ok(params),
    }
}

/// The window asked for, in buckets, and its length in seconds; one longer than the
/// retention is the retention.
fn window(analytics: &Analytics, params: &Params) -> Result<(usize, u64), BadRequest> {
    let (text, window) = match params.get("window") {
        // No leading zero, as the document's pattern says.
        Some(w) if w.starts_with('0') => (w.as_str(), None),
        Some(w) => (w.as_str(), query::parse_duration(w)),
        None => ("", Some(DEFAULT_WINDOW)),
    };
    let retention = analytics.config().retention();
    let buckets = window
        .and_then(|w| analytics.buckets_for(w.min(retention)))
        .ok_or_else(|| bad("window", text, "expected a duration like 30s, 5m or 1h"))?;
    let seconds = analytics
        .config()
        .bucket
        .as_secs()
        .saturating_mul(buckets as u64);
    Ok((buckets, seconds))
}

/// Parameters of `/api/v1/services` and `/api/v1/values/{field}`.
pub const WINDOW_PARAMS: &[&str] = &["window"];
/// Parameters of `/api/v1/stats`.
pub const STATS_PARAMS: &[&str] = &["window", "group_by", "order", "limit"];

/// Services seen over a window.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServicesBody {
    /// The window's length.
    window_seconds: u64,
    /// Every service seen serving or calling, busiest first.
    services: Vec<Service>,
}

/// Every service and workload seen, with request counts, error rates, latency and the
/// services it calls and is called by.
#[utoipa::path(
    get,
    path = "/api/v1/services",
    tag = "analytics",
    params(WindowQuery),
    responses(
        (status = 200, description = "The services", body = ServicesBody),
        (status = 400, description = "A parameter is unknown or malformed", body = ErrorBody),
        (status = 401, description = "A bearer token is required", body = String),
    )
)]
pub(crate) async fn services(
    State(state): State<ApiState>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Response, BadRequest> {
    let analytics = state.store.analytics();
    let (buckets, window_seconds) = window(analytics, &params(query, WINDOW_PARAMS)?)?;
    let cells = analytics.window_at(buckets, now_unix_nanos());
    Ok(Json(ServicesBody {
        window_seconds,
        services: query::services(&cells),
    })
    .into_response())
}

/// Grouped counts over a window.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsBody {
    /// The window's length.
    window_seconds: u64,
    /// The fields grouped by, in the order asked.
    #[schema(value_type = Vec<String>)]
    group_by: Vec<&'static str>,
    /// What the groups are ordered by.
    order: String,
    /// Groups in all, before the limit.
    total_groups: usize,
    /// The first groups.
    groups: Vec<Group>,
}

fn field_names() -> String {
    Field::ALL
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Request counts and latency grouped by fields, ordered and limited.
#[utoipa::path(
    get,
    path = "/api/v1/stats",
    tag = "analytics",
    params(StatsQuery),
    responses(
        (status = 200, description = "The groups", body = StatsBody),
        (status = 400, description = "A parameter is unknown or malformed", body = ErrorBody),
        (status = 401, description = "A bearer token is required", body = String),
    )
)]
pub(crate) async fn stats(
    State(state): State<ApiState>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Response, BadRequest> {
    let analytics = state.store.analytics();
    let p = params(query, STATS_PARAMS)?;
    let (buckets, window_seconds) = window(analytics, &p)?;
    let group_by = p.get("group_by").map_or("service", String::as_str);
    let mut fields = Vec::new();
    for name in group_by.split(',').map(str::trim) {
        match Field::parse(name) {
            Some(f) if !fields.contains(&f) => fields.push(f),
            Some(_) => {} // named twice: counts once
            None => {
                return Err(bad(
                    "group_by",
                    group_by,
                    &format!("expected fields among {}", field_names()),
                ))
            }
        }
    }
    let order_name = p.get("order").map_or("requests", String::as_str);
    let order = Order::parse(order_name).ok_or_else(|| {
        bad(
            "order",
            order_name,
            &format!("expected one of {}", Order::NAMES),
        )
    })?;
    let limit = match p.get("limit").map(|l| (l, l.parse::<usize>())) {
        None => 100,
        Some((_, Ok(n @ 1..=MAX_LIMIT))) => n,
        Some((l, _)) => return Err(bad("limit", l, "expected a number from 1 to 1000")),
    };
    let cells = analytics.window_at(buckets, now_unix_nanos());
    let (groups, total_groups) = query::stats(&cells, &fields, order, limit);
    Ok(Json(StatsBody {
        window_seconds,
        group_by: fields.iter().map(|f| f.name()).collect(),
        order: order_name.to_owned(),
        total_groups,
        groups,
    })
    .into_response())
}

/// The distinct values of a field over a window.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValuesBody {
    /// The field.
    #[schema(value_type = String)]
    field: &'static str,
    /// The window's length.
    window_seconds: u64,
    /// Its values, sorted.
    values: Vec<String>,
}

/// The distinct values a field had: user agents, paths, status codes, methods, ...
#[utoipa::path(
    get,
    path = "/api/v1/values/{field}",
    tag = "analytics",
    params(FieldPath, WindowQuery),
    responses(
        (status = 200, description = "The values", body = ValuesBody),
        (status = 400, description = "A parameter is unknown or malformed", body = ErrorBody),
        (status = 404, description = "No such field", body = ErrorBody),
        (status = 401, description = "A bearer token is required", body = String),
    )
)]
pub(crate) async fn values(
    State(state): State<ApiState>,
    Path(field): Path<String>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Response, BadRequest> {
    let analytics = state.store.analytics();
    let Some(f) = Field::parse(&field) else {
        return Ok(error(
            StatusCode::NOT_FOUND,
            format!("no field {field:?} (fields: {})", field_names()),
        ));
    };
    let (buckets, window_seconds) = window(analytics, &params(query, WINDOW_PARAMS)?)?;
    let cells = analytics.window_at(buckets, now_unix_nanos());
    Ok(Json(ValuesBody {
        field: f.name(),
        window_seconds,
        values: query::values(&cells, f),
    })
    .into_response())
}

/// The analytics' own bounds.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnalyticsJson {
    /// Keys (service x client x path x ... combinations) held now.
    keys: usize,
    /// Keys at most; more are folded into `(other)`.
    max_keys: usize,
    /// Exchanges counted under `(other)` since the start.
    folded_into_other: u64,
    /// Length of one bucket.
    bucket_seconds: u64,
    /// How far back the buckets go.
    retention_seconds: u64,
}

/// System counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct SystemBody {
    /// Sessions the store holds now.
    sessions_stored: usize,
    /// Sessions the store holds at most.
    store_capacity: usize,
    /// Sessions evicted from the full store since the start.
    sessions_evicted: u64,
    /// Exchanges finished (joined, counted, exported) since the start or the last clear.
    exchanges_finished: u64,
    /// The same per protocol.
    per_protocol: BTreeMap<String, u64>,
    /// The analytics' bounds.
    analytics: AnalyticsJson,
    /// Clients following the live feed now.
    stream_followers: usize,
}

/// Counts of the correlator itself.
#[utoipa::path(
    get,
    path = "/api/v1/system",
    tag = "analytics",
    responses(
        (status = 200, description = "The counts", body = SystemBody),
        (status = 401, description = "A bearer token is required", body = String),
    )
)]
pub(crate) async fn system(State(state): State<ApiState>) -> Response {
    let analytics = state.store.analytics();
    let totals = analytics.totals();
    let config = analytics.config();
    Json(SystemBody {
        sessions_stored: state.store.len(),
        store_capacity: state.store.capacity(),
        sessions_evicted: state.store.evicted(),
        exchanges_finished: totals.exchanges,
        per_protocol: totals.per_protocol,
        analytics: AnalyticsJson {
            keys: analytics.live_keys(),
            max_keys: config.max_keys,
            folded_into_other: totals.folded,
            bucket_seconds: config.bucket.as_secs(),
            retention_seconds: config.retention().as_secs(),
        },
        stream_followers: state.store.followers(),
    })
    .into_response()
}

/// What a clear removed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClearedBody {
    /// Sessions the store held.
    sessions_cleared: usize,
}

/// Empties the store and the analytics.
#[utoipa::path(
    delete,
    path = "/api/v1/sessions",
    tag = "sessions",
    responses(
        (status = 200, description = "Cleared", body = ClearedBody),
        (status = 401, description = "A bearer token is required", body = String),
    )
)]
pub(crate) async fn clear(State(state): State<ApiState>) -> Response {
    Json(ClearedBody {
        sessions_cleared: state.store.clear(),
    })
    .into_response()
}
