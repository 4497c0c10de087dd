//! The REST API's OpenAPI 3.1 document, `GET /api/v1/openapi.json`, derived from the handlers'
//! annotations and the JSON types they answer with, so it cannot drift from them. The query
//! parameters are declared here; `tests.rs` checks that each one is the one the handler reads
//! and that no other is accepted.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::{IntoParams, OpenApi};

use super::ApiState;

/// The filters of `GET /api/v1/sessions` and of its live feed; every one given must match.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Declares the parameters; the handlers read them from the query string.
pub struct SessionQuery {
    /// The trace: 32 hex digits (all zero matches nothing).
    #[param(pattern = "^[0-9a-fA-F]{32}$")]
    trace_id: Option<String>,
    /// The `x-request-id` seen on the wire.
    request_id: Option<String>,
    /// The client's or the server's pod.
    pod: Option<String>,
    /// The client's or the server's namespace.
    namespace: Option<String>,
    /// A response code (`404`) or class (`5xx`).
    #[param(pattern = "^[1-5]([0-9][0-9]|[xX][xX])$")]
    status: Option<String>,
    /// The serving Kubernetes Service (else workload, else pod, else address), as
    /// `/api/v1/services` names it.
    service: Option<String>,
    /// The request method, any case.
    method: Option<String>,
    /// The start of the request path (the query excluded).
    path_prefix: Option<String>,
    /// The protocol as the analytics name it: `http1`, `http2`, `grpc`, `dns`, `redis`,
    /// `postgresql`, `mysql`.
    protocol: Option<String>,
    /// The shortest duration: `250ms`, `2s`, `1m`.
    #[param(pattern = "^[0-9]{1,9}(ns|us|µs|ms|s|m|h)$")]
    min_duration: Option<String>,
    /// Requests started at or after this RFC 3339 time (any time before 1970: all).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Requests started before this RFC 3339 time (any time before 1970: none).
    #[param(format = DateTime)]
    until: Option<String>,
}

/// Paging of `GET /api/v1/sessions`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Declares the parameters; the handler reads them from the query string.
pub struct PageQuery {
    /// Sessions per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The previous page's `next_cursor`: the page of older sessions that follows it. Give the
    /// same filters; sessions arriving meanwhile do not shift the pages.
    #[param(pattern = "^c1[0-9a-f]{16}$")]
    cursor: Option<String>,
}

/// The window of the analytics.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Declares the parameters; the handlers read them from the query string.
pub struct WindowQuery {
    /// How far back: `30s`, `5m`, `1h` (default 5m; a longer one than the retention is the
    /// retention, as `window_seconds` says).
    #[param(pattern = "^[1-9][0-9]{0,8}(ns|us|µs|ms|s|m|h)$")]
    window: Option<String>,
}

/// Grouping of `GET /api/v1/stats`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Declares the parameters; the handler reads them from the query string.
pub struct StatsQuery {
    /// How far back: `30s`, `5m`, `1h` (default 5m; a longer one than the retention is the
    /// retention, as `window_seconds` says).
    #[param(pattern = "^[1-9][0-9]{0,8}(ns|us|µs|ms|s|m|h)$")]
    window: Option<String>,
    /// Fields, comma-separated (a field named twice counts once): service, client, namespace,
    /// path, status, method, user_agent, protocol (default service).
    #[param(
        pattern = "^ *(service|client|namespace|path|status|method|user_agent|protocol) *(, *(service|client|namespace|path|status|method|user_agent|protocol) *)*$"
    )]
    group_by: Option<String>,
    /// requests, errors, error_rate, avg, max or p99, largest first (default requests).
    #[param(pattern = "^(requests|errors|error_rate|avg|max|p99)$")]
    order: Option<String>,
    /// Groups at most, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// The field of `GET /api/v1/values/{field}`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Declares the parameter; the handler reads it from the path.
pub struct FieldPath {
    /// service, client, namespace, path, status, method, user_agent or protocol.
    #[param(pattern = "^(service|client|namespace|path|status|method|user_agent|protocol)$")]
    field: String,
}

/// The REST API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Clovisor correlator REST API",
        description = "Sessions the correlator joined, their live feed, and the analytics over them. \
            See docs/api.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        super::list_sessions,
        super::get_session,
        super::stream::follow,
        super::services::services,
        super::services::stats,
        super::services::values,
        super::services::system,
        super::services::clear,
        serve,
    ),
    tags(
        (name = "sessions", description = "Sessions, newest first, and their live feed"),
        (name = "analytics", description = "Services, grouped counts and latency over a window"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

/// The security scheme's name in the document.
pub const BEARER: &str = "bearer";

/// The document; with `bearer_auth`, every operation requires a bearer token (as the process
/// does when started with `--api-token-file`).
pub fn document(bearer_auth: bool) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    if bearer_auth {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        doc.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
    }
    doc
}

/// This document, OpenAPI 3.1.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object),
        (status = 401, description = "A bearer token is required", body = String),
    )
)]
pub(crate) async fn serve(State(state): State<ApiState>) -> Response {
    Json(document(state.bearer_auth)).into_response()
}
