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

use super::{error, ApiState};
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

/// The window asked for, in buckets, and its length in seconds.
fn window(analytics: &Analytics, params: &Params) -> Result<(usize, u64), BadRequest> {
    let (text, window) = match params.get("window") {
        Some(w) => (w.as_str(), query::parse_duration(w)),
        None => ("", Some(DEFAULT_WINDOW)),
    };
    let buckets = window
        .and_then(|w| analytics.buckets_for(w))
        .ok_or_else(|| {
            bad(
                "window",
                text,
                &format!(
                    "expected a duration like 30s, 5m or 1h, at most {}s",
                    analytics.config().retention().as_secs()
                ),
            )
        })?;
    let seconds = analytics
        .config()
        .bucket
        .as_secs()
        .saturating_mul(buckets as u64);
    Ok((buckets, seconds))
}

#[derive(Debug, Serialize)]
struct ServicesBody {
    window_seconds: u64,
    services: Vec<Service>,
}

async fn services(
    State(state): State<ApiState>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Response, BadRequest> {
    let analytics = state.store.analytics();
    let (buckets, window_seconds) = window(analytics, &params(query, &["window"])?)?;
    let cells = analytics.window_at(buckets, now_unix_nanos());
    Ok(Json(ServicesBody {
        window_seconds,
        services: query::services(&cells),
    })
    .into_response())
}

#[derive(Debug, Serialize)]
struct StatsBody {
    window_seconds: u64,
    group_by: Vec<&'static str>,
    order: String,
    /// Groups in all, before the limit.
    total_groups: usize,
    groups: Vec<Group>,
}

fn field_names() -> String {
    Field::ALL
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

async fn stats(
    State(state): State<ApiState>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Response, BadRequest> {
    let analytics = state.store.analytics();
    let p = params(query, &["window", "group_by", "order", "limit"])?;
    let (buckets, window_seconds) = window(analytics, &p)?;
    let group_by = p.get("group_by").map_or("service", String::as_str);
    let mut fields = Vec::new();
    for name in group_by.split(',').map(str::trim) {
        match Field::parse(name) {
            Some(f) if !fields.contains(&f) => fields.push(f),
            Some(_) => return Err(bad("group_by", group_by, "a field is named twice")),
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

#[derive(Debug, Serialize)]
struct ValuesBody {
    field: &'static str,
    window_seconds: u64,
    values: Vec<String>,
}

async fn values(
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
    let (buckets, window_seconds) = window(analytics, &params(query, &["window"])?)?;
    let cells = analytics.window_at(buckets, now_unix_nanos());
    Ok(Json(ValuesBody {
        field: f.name(),
        window_seconds,
        values: query::values(&cells, f),
    })
    .into_response())
}

#[derive(Debug, Serialize)]
struct AnalyticsJson {
    keys: usize,
    max_keys: usize,
    folded_into_other: u64,
    bucket_seconds: u64,
    retention_seconds: u64,
}

#[derive(Debug, Serialize)]
struct SystemBody {
    sessions_stored: usize,
    store_capacity: usize,
    sessions_evicted: u64,
    exchanges_finished: u64,
    per_protocol: BTreeMap<String, u64>,
    analytics: AnalyticsJson,
}

async fn system(State(state): State<ApiState>) -> Response {
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
    })
    .into_response()
}

#[derive(Debug, Serialize)]
struct ClearedBody {
    sessions_cleared: usize,
}

/// `DELETE /api/v1/sessions`: empties the store and the analytics.
pub async fn clear(State(state): State<ApiState>) -> Response {
    Json(ClearedBody {
        sessions_cleared: state.store.clear(),
    })
    .into_response()
}
