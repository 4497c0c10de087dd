//! Readiness that tells the truth: `GET /readyz` answers 200 only while every check the
//! process registered holds (BPF programs loaded, the Kubernetes watch listed and streaming, the
//! uplink connected, …), else 503 naming what does not. Checks are read when asked, from the
//! state the components keep anyway, never from a flag someone forgot to clear.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;

/// A readiness check: `Ok(())` when it holds, else why not.
type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The checks of one process; clones share them.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<Vec<(&'static str, Check)>>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.lock().iter().map(|(n, _)| *n).collect();
        f.debug_struct("Readiness").field("checks", &names).finish()
    }
}

/// A condition one component sets and clears (e.g. "the watch has listed and streams").
#[derive(Debug, Clone, Default)]
pub struct Flag(Arc<AtomicBool>);

impl Flag {
    /// Sets it to `up`.
    pub fn set(&self, up: bool) {
        self.0.store(up, Ordering::Relaxed);
    }

    /// Whether it is up.
    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Readiness {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(&'static str, Check)>> {
        self.checks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds check `name`, evaluated at every `/readyz`.
    pub fn add(
        &self,
        name: &'static str,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        self.lock().push((name, Arc::new(check)));
    }

    /// Adds check `name` that holds while `flag` is up; `why` says what it means when down.
    pub fn add_flag(&self, name: &'static str, flag: &Flag, why: &'static str) {
        let flag = flag.clone();
        self.add(name, move || {
            if flag.is_up() {
                Ok(())
            } else {
                Err(why.to_owned())
            }
        });
    }

    /// Every check, evaluated now: `(name, Ok | Err(why))`, in the order they were added.
    pub fn evaluate(&self) -> Vec<(&'static str, Result<(), String>)> {
        // Cloned out first: a check never runs under the lock.
        let checks: Vec<(&'static str, Check)> = self.lock().clone();
        checks.into_iter().map(|(n, c)| (n, c())).collect()
    }

    /// `GET /readyz`: 200 and one `name: ok` line per check while all hold, else 503 with
    /// `name: why` for those that do not.
    pub fn router(&self) -> axum::Router {
        let me = self.clone();
        axum::Router::new().route(
            "/readyz",
            axum::routing::get(move || {
                let me = me.clone();
                async move { me.answer() }
            }),
        )
    }

    fn answer(&self) -> (StatusCode, String) {
        let results = self.evaluate();
        let ready = results.iter().all(|(_, r)| r.is_ok());
        let mut body = String::from(if ready { "ready\n" } else { "not ready\n" });
        for (name, r) in &results {
            match r {
                Ok(()) => body.push_str(&format!("{name}: ok\n")),
                Err(why) => body.push_str(&format!("{name}: {why}\n")),
            }
        }
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt as _;

    async fn get(router: &axum::Router) -> (StatusCode, String) {
        let res = router
            .clone()
            .oneshot(
                axum::http::Request::get("/readyz")
                    .body(Body::empty())
                    .unwrap_or_else(|e| panic!("request: {e}")),
            )
            .await
            .unwrap_or_else(|e| match e {});
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap_or_else(|e| panic!("body: {e}"));
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn ready_only_while_every_check_holds_and_says_which_does_not() {
        let r = Readiness::default();
        let bpf = Flag::default();
        let uplink = Flag::default();
        r.add_flag("bpf", &bpf, "programs not loaded");
        r.add_flag("uplink", &uplink, "not connected to the collector");
        let router = r.router();
        let (status, body) = get(&router).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("bpf: programs not loaded"), "{body}");
        bpf.set(true);
        uplink.set(true);
        let (status, body) = get(&router).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, "ready\nbpf: ok\nuplink: ok\n");
        uplink.set(false);
        let (status, body) = get(&router).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            body.contains("uplink: not connected to the collector") && body.contains("bpf: ok"),
            "{body}"
        );
    }
}
