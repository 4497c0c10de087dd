//! A small HTTP/1.1 client for the correlator's REST API: JSON in, typed errors out.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Answers larger than this are refused (the API's largest, 1000 sessions, is far below).
const MAX_BODY: usize = 64 << 20;
/// How long one request may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `--server` is not an `http://host:port` URL.
    #[error("server {server:?} is not an http://host:port URL")]
    BadServer {
        /// What was given.
        server: String,
    },
    /// The correlator could not be reached or the exchange broke.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The request.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The correlator refused the request (4xx): the query is wrong.
    #[error("{url}: {status}: {message}")]
    Refused {
        /// The request.
        url: String,
        /// The status.
        status: u16,
        /// The API's error message.
        message: String,
    },
    /// The correlator failed (5xx) or answered something that is not JSON.
    #[error("{url}: server error: {message}")]
    Server {
        /// The request.
        url: String,
        /// What it said.
        message: String,
    },
}

/// A client of one correlator.
pub struct ApiClient {
    base: String,
    http: Client<HttpConnector, Empty<Bytes>>,
}

impl ApiClient {
    /// A client of the correlator at `server` (`http://host:port`, a bare `host:port` too).
    pub fn new(server: &str) -> Result<Self, ClientError> {
        let base = if server.contains("://") {
            server.trim_end_matches('/').to_owned()
        } else {
            format!("http://{}", server.trim_end_matches('/'))
        };
        let ok = base
            .parse::<http::Uri>()
            .is_ok_and(|u| u.scheme_str() == Some("http") && u.host().is_some());
        if !ok {
            return Err(ClientError::BadServer {
                server: server.to_owned(),
            });
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(TIMEOUT));
        Ok(Self {
            base,
            http: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// `GET path?query`.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, ClientError> {
        self.send(http::Method::GET, path, query).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.send(http::Method::DELETE, path, &[]).await
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Value, ClientError> {
        let mut url = format!("{}{path}", self.base);
        if !query.is_empty() {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in query {
                q.append_pair(k, v);
            }
            url.push('?');
            url.push_str(&q.finish());
        }
        let unreachable = |reason: String| ClientError::Unreachable {
            url: url.clone(),
            reason,
        };
        let request = http::Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| unreachable(e.to_string()))?;
        let response = tokio::time::timeout(TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))?
            .map_err(|e| unreachable(error_chain(&e)))?;
        let status = response.status();
        let body = tokio::time::timeout(
            TIMEOUT,
            Limited::new(response.into_body(), MAX_BODY).collect(),
        )
        .await
        .map_err(|_| unreachable(format!("body not received within {TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
        let json: Result<Value, _> = serde_json::from_slice(&body);
        let message = || match &json {
            Ok(v) => v["error"]
                .as_str()
                .map_or_else(|| v.to_string(), str::to_owned),
            Err(_) => String::from_utf8_lossy(&body).trim().to_owned(),
        };
        if status.is_client_error() {
            return Err(ClientError::Refused {
                url,
                status: status.as_u16(),
                message: message(),
            });
        }
        if !status.is_success() {
            return Err(ClientError::Server {
                url,
                message: format!("{status}: {}", message()),
            });
        }
        json.map_err(|e| ClientError::Server {
            url: url.clone(),
            message: format!("answer is not JSON: {e}"),
        })
    }
}

/// An error and its sources, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
