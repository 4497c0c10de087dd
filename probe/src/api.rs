//! The probe's own HTTP API, served beside `/metrics` on the metrics port:
//! `GET /api/v1/probe` says which hooks feed the socket observation point and why others were
//! passed over.

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};

use crate::metrics::{ProbeMetrics, SocketPointStatus};

/// Body of `GET /api/v1/probe`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProbeStatus {
    /// The socket observation point.
    pub socket: SocketPointStatus,
}

/// The API routes, to merge into the metrics port's router.
pub fn router(metrics: Arc<ProbeMetrics>) -> Router {
    Router::new().route(
        "/api/v1/probe",
        get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                Json(ProbeStatus {
                    socket: metrics.socket_status(),
                })
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use clovisor_runtime::drops::Drops;
    use tower::ServiceExt;

    use super::*;
    use crate::hooks::socket::{HookAttempt, SocketHookKind};

    #[tokio::test]
    async fn probe_status_reports_the_hook_choice() {
        let metrics = Arc::new(ProbeMetrics::new(Drops::default()));
        metrics.set_socket_hooks(
            Some(SocketHookKind::TpBtf),
            vec![
                HookAttempt {
                    hook: SocketHookKind::Fentry,
                    error: Some("refused".into()),
                },
                HookAttempt {
                    hook: SocketHookKind::TpBtf,
                    error: None,
                },
            ],
            None,
        );
        let resp = router(metrics)
            .oneshot(
                Request::get("/api/v1/probe")
                    .body(Body::empty())
                    .unwrap_or_else(|e| panic!("request: {e}")),
            )
            .await
            .unwrap_or_else(|e| panic!("router: {e}"));
        assert_eq!(resp.status(), 200, "GET /api/v1/probe must answer 200");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap_or_else(|e| panic!("body: {e}"));
        let v: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or_else(|e| panic!("JSON: {e}"));
        assert_eq!(v["socket"]["hook"], "tp_btf", "chosen hook in {v}");
        assert_eq!(
            v["socket"]["attempts"][0]["hook"], "fentry",
            "first attempt listed in {v}"
        );
        assert_eq!(
            v["socket"]["attempts"][0]["error"], "refused",
            "why fentry was passed over, in {v}"
        );
    }
}
