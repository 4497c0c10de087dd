//! Queries against a running clovisor: its REST sessions and its metrics, read the way every
//! test reads them.

use anyhow::{Context, Result};
use serde_json::Value;

use crate::http_client::{http_get, http_get_with};

/// Every session the REST API at `api` (`host:port`) holds (up to 1000), newest first.
pub fn sessions(api: &str) -> Result<Vec<Value>> {
    sessions_with(api, &[])
}

/// Like [`sessions`], sending `headers` (`Authorization: Bearer ...`).
pub fn sessions_with(api: &str, headers: &[&str]) -> Result<Vec<Value>> {
    let body = http_get_with(&format!("http://{api}/api/v1/sessions?limit=1000"), headers)?;
    let json: Value = serde_json::from_str(&body).context("sessions JSON")?;
    Ok(json["sessions"].as_array().cloned().unwrap_or_default())
}

/// One observation of a REST session, as the tests compare them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// `pod`, `node` or `socket`.
    pub kind: String,
    /// Where: the interface of a veth or node interface, the command of a socket's process.
    pub at: String,
    /// `client`, `server`, or empty when unknown.
    pub side: String,
}

impl Point {
    /// The point `kind` at `at` on `side`.
    pub fn new(kind: &str, at: &str, side: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            at: at.to_owned(),
            side: side.to_owned(),
        }
    }
}

/// The observations of a REST session, in path order.
pub fn points(session: &Value) -> Vec<Point> {
    session["observations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            let f = |k: &str| o[k].as_str().unwrap_or_default();
            let at = if f("point") == "socket" {
                f("comm")
            } else {
                f("interface")
            };
            Point::new(f("point"), at, f("side"))
        })
        .collect()
}

/// The metrics text served at `addr` (`host:port`).
pub fn metrics_text(addr: &str) -> Result<String> {
    http_get(&format!("http://{addr}/metrics"))
}

/// The value of the sample `series` (`name` or `name{labels}`, exactly as exposed) in metrics
/// text; `None` when it is absent.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The value of the sample `series` served at `addr` now; `None` when it is absent.
pub fn metric(addr: &str, series: &str) -> Result<Option<f64>> {
    Ok(sample(&metrics_text(addr)?, series))
}
