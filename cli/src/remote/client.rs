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
    /// `--token-file` could not be read or holds no token.
    #[error("token file {path}: {reason}")]
    Token {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
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
    /// `Authorization` header value, when a token was given; never printed.
    authorization: Option<http::HeaderValue>,
    http: Client<HttpConnector, Empty<Bytes>>,
}

impl ApiClient {
    /// A client of the correlator at `server` (`http://host:port`, a bare `host:port` too),
    /// sending the bearer token in `token_file` (surrounding white space ignored) if one is named.
    pub fn new(server: &str, token_file: Option<&std::path::Path>) -> Result<Self, ClientError> {
        let authorization = match token_file {
            None => None,
            Some(path) => {
                let bad = |reason: String| ClientError::Token {
                    path: path.display().to_string(),
                    reason,
                };
                let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(bad("empty".to_owned()));
                }
                let mut value = http::HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| bad("not a valid header value".to_owned()))?;
                value.set_sensitive(true);
                Some(value)
            }
        };
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
            authorization,
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

    fn url(&self, path: &str, query: &[(&str, String)]) -> String {
        let mut url = format!("{}{path}", self.base);
        if !query.is_empty() {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in query {
                q.append_pair(k, v);
            }
            url.push('?');
            url.push_str(&q.finish());
        }
        url
    }

    /// Sends the request and waits for the answer's head.
    async fn request(
        &self,
        method: http::Method,
        url: &str,
        accept: &str,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            url: url.to_owned(),
            reason,
        };
        let mut builder = http::Request::builder()
            .method(method)
            .uri(url)
            .header(http::header::ACCEPT, accept);
        if let Some(auth) = &self.authorization {
            builder = builder.header(http::header::AUTHORIZATION, auth.clone());
        }
        let request = builder
            .body(Empty::new())
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::time::timeout(TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))?
            .map_err(|e| unreachable(error_chain(&e)))
    }

    /// `GET path?query` of a server-sent event stream: calls `on_event(event, data)` for each
    /// event until it returns false or the server ends the stream. Silence longer than
    /// `silence` (no event, no heartbeat) is a lost server.
    pub async fn follow(
        &self,
        path: &str,
        query: &[(&str, String)],
        silence: Duration,
        mut on_event: impl FnMut(&str, &str) -> bool,
    ) -> Result<(), ClientError> {
        let url = self.url(path, query);
        let response = self
            .request(http::Method::GET, &url, "text/event-stream")
            .await?;
        if !response.status().is_success() {
            return Err(self.failure(url, response).await);
        }
        let mut body = response.into_body();
        let mut events = SseParser::default();
        loop {
            let frame = match tokio::time::timeout(silence, body.frame()).await {
                Err(_) => {
                    return Err(ClientError::Unreachable {
                        url,
                        reason: format!("nothing heard for {silence:?}, not even a heartbeat"),
                    })
                }
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => {
                    return Err(ClientError::Unreachable {
                        url,
                        reason: error_chain(&e),
                    })
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if events.feed(&data).map_err(|reason| ClientError::Server {
                url: url.clone(),
                message: reason,
            })? {
                for (event, data) in events.drain() {
                    if !on_event(&event, &data) {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The error an unsuccessful answer means.
    async fn failure(
        &self,
        url: String,
        response: http::Response<hyper::body::Incoming>,
    ) -> ClientError {
        let status = response.status();
        let body = match tokio::time::timeout(
            TIMEOUT,
            Limited::new(response.into_body(), MAX_BODY).collect(),
        )
        .await
        {
            Ok(Ok(b)) => b.to_bytes(),
            _ => Bytes::new(),
        };
        let message = match serde_json::from_slice::<Value>(&body) {
            Ok(v) => v["error"]
                .as_str()
                .map_or_else(|| v.to_string(), str::to_owned),
            Err(_) => String::from_utf8_lossy(&body).trim().to_owned(),
        };
        if status.is_client_error() {
            ClientError::Refused {
                url,
                status: status.as_u16(),
                message,
            }
        } else {
            ClientError::Server {
                url,
                message: format!("{status}: {message}"),
            }
        }
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Value, ClientError> {
        let url = self.url(path, query);
        let unreachable = |reason: String| ClientError::Unreachable {
            url: url.clone(),
            reason,
        };
        let response = self.request(method, &url, "application/json").await?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.failure(url, response).await);
        }
        let body = tokio::time::timeout(
            TIMEOUT,
            Limited::new(response.into_body(), MAX_BODY).collect(),
        )
        .await
        .map_err(|_| unreachable(format!("body not received within {TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
        serde_json::from_slice(&body).map_err(|e| ClientError::Server {
            url: url.clone(),
            message: format!("answer is not JSON: {e}"),
        })
    }
}

/// A server-sent event stream's lines, cut into events (`event:` and `data:` fields; comments
/// such as heartbeats skipped). Bounded: an event longer than [`MAX_BODY`] is an error.
#[derive(Debug, Default)]
pub struct SseParser {
    pending: Vec<u8>,
    ready: Vec<(String, String)>,
}

impl SseParser {
    /// Takes more bytes; true when events are ready.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<bool, String> {
        self.pending.extend_from_slice(bytes);
        while let Some(end) = find_blank_line(&self.pending) {
            let block: Vec<u8> = self.pending.drain(..end).collect();
            let text = String::from_utf8_lossy(&block);
            let mut event = String::from("message");
            let mut data: Vec<&str> = Vec::new();
            for line in text.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => event = value.to_owned(),
                    "data" => data.push(value),
                    _ => {} // comments (heartbeats), ids, retry
                }
            }
            if !data.is_empty() {
                self.ready.push((event, data.join("\n")));
            }
        }
        if self.pending.len() > MAX_BODY {
            return Err(format!("an event longer than {MAX_BODY} bytes"));
        }
        Ok(!self.ready.is_empty())
    }

    /// The events ready, oldest first.
    pub fn drain(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.ready)
    }
}

/// Where the first event ends (past its blank line), if one has.
fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
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

#[cfg(test)]
mod tests {
    use super::SseParser;

    #[test]
    fn events_are_cut_at_blank_lines_across_chunks_and_comments_skipped() {
        let mut p = SseParser::default();
        assert!(!p
            .feed(b": heartbeat\n\nevent: session\ndata: {\"id\"")
            .expect("ok"));
        assert!(p.feed(b":1}\n\ndata: x\ndata: y\r\n\r\n").expect("ok"));
        assert_eq!(
            p.drain(),
            [
                ("session".to_owned(), "{\"id\":1}".to_owned()),
                ("message".to_owned(), "x\ny".to_owned())
            ]
        );
        assert!(p.drain().is_empty());
    }
}
