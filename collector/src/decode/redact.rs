//! Header redaction: the values of listed headers never leave the collector.
//!
//! The HTTP decoder already reads only an allow-list of headers (credentials are never
//! copied out of the capture buffer); this is the operator's list on top of that
//! (`clovisor_redact_headers` in Redis, plus defaults that cannot be removed, see
//! `clovisor_config::model::DEFAULT_REDACTED_HEADERS`). A listed header that fills a session
//! field has the field replaced by [`REDACTED`] (trace context is dropped, as it cannot be
//! partly kept), and free-form attributes named after a listed header
//! (`<name>` or `http.request.header.<name>` / `http.response.header.<name>`) are removed. A
//! listed `grpc-message` replaces a gRPC call's message.
//!
//! The request target is redacted here too, before it leaves the collector: the values of
//! credential-carrying query parameters (`clovisor_runtime::redact`'s built-in keys plus the
//! operator's `--redact-query-keys`) and the user-info of an absolute-form target.

use clovisor_proto::session::v1::{Session, TraceFormat};
use clovisor_runtime::redact::QueryRedaction;

/// What a redacted value is replaced by.
pub const REDACTED: &str = "REDACTED";

const B3_MULTI: [&str; 5] = [
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// Redacts `session` for the lower-case header names in `headers`; returns how many values
/// were removed.
pub fn redact(session: &mut Session, headers: &[String]) -> usize {
    Redaction::new(headers).apply(session)
}

/// What a list of header names means for a session, worked out once per list rather than once
/// per session: which fields it empties, which trace formats it drops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redaction {
    host: bool,
    user_agent: bool,
    request_id: bool,
    envoy_decorator: bool,
    traceparent: bool,
    b3: bool,
    b3_multi: bool,
    tracestate: bool,
    grpc_message: bool,
    /// The list itself, for attributes named after a header.
    listed: Vec<String>,
    /// Query parameters redacted in the request target.
    query: QueryRedaction,
}

impl Redaction {
    /// The redaction for the lower-case header names in `headers`.
    pub fn new(headers: &[String]) -> Self {
        let listed = |name: &str| headers.iter().any(|h| h == name);
        Self {
            host: listed("host"),
            user_agent: listed("user-agent"),
            request_id: listed("x-request-id"),
            envoy_decorator: listed("x-envoy-decorator-operation"),
            traceparent: listed("traceparent"),
            b3: listed("b3"),
            b3_multi: B3_MULTI.iter().any(|h| listed(h)),
            tracestate: listed("tracestate"),
            grpc_message: listed("grpc-message"),
            listed: headers.to_vec(),
            query: QueryRedaction::default(),
        }
    }

    /// The same, redacting the query parameters `query` names in request targets (besides the
    /// built-in ones, which always are).
    pub fn with_query(mut self, query: QueryRedaction) -> Self {
        self.query = query;
        self
    }

    /// Redacts `session`; returns how many values were removed.
    pub fn apply(&self, session: &mut Session) -> usize {
        let mut n = 0;
        if let Some(http) = session.http.as_mut() {
            for (on, field) in [
                (self.host, &mut http.host),
                (self.user_agent, &mut http.user_agent),
                (self.request_id, &mut http.request_id),
                (self.envoy_decorator, &mut http.envoy_decorator),
            ] {
                if on && !field.is_empty() {
                    REDACTED.clone_into(field);
                    n += 1;
                }
            }
            if let std::borrow::Cow::Owned(target) = self.query.redact_target(&http.target) {
                http.target = target;
                n += 1;
            }
        }
        if let Some(grpc) = session.grpc.as_mut() {
            if self.grpc_message && !grpc.message.is_empty() {
                REDACTED.clone_into(&mut grpc.message);
                n += 1;
            }
        }
        if let Some(trace) = session.trace.as_mut() {
            let from_listed_header = match TraceFormat::try_from(trace.format) {
                Ok(TraceFormat::W3c) => self.traceparent,
                Ok(TraceFormat::B3Single) => self.b3,
                Ok(TraceFormat::B3Multi) => self.b3_multi,
                _ => false,
            };
            if from_listed_header {
                session.trace = None;
                n += 1;
            } else if self.tracestate && !trace.tracestate.is_empty() {
                trace.tracestate.clear();
                n += 1;
            }
        }
        if session.attributes.is_empty() {
            return n;
        }
        let before = session.attributes.len();
        session.attributes.retain(|key, _| {
            let key = key.to_ascii_lowercase();
            let name = key
                .strip_prefix("http.request.header.")
                .or_else(|| key.strip_prefix("http.response.header."))
                .unwrap_or(&key);
            !self.listed.iter().any(|h| h == name)
        });
        n + (before - session.attributes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clovisor_proto::session::v1::{Http, TraceContext};

    fn session() -> Session {
        Session {
            http: Some(Http {
                host: "shop.internal".into(),
                user_agent: "curl/8".into(),
                request_id: "req-1".into(),
                ..Http::default()
            }),
            trace: Some(TraceContext {
                format: TraceFormat::W3c as i32,
                trace_id: vec![1; 16],
                parent_span_id: vec![2; 8],
                sampled: true,
                tracestate: "vendor=secret".into(),
            }),
            attributes: [
                ("authorization".to_owned(), "Bearer hunter2".to_owned()),
                ("http.request.header.x-api-key".to_owned(), "k".to_owned()),
                ("db.system".to_owned(), "redis".to_owned()),
            ]
            .into_iter()
            .collect(),
            ..Session::default()
        }
    }

    fn defaults() -> Vec<String> {
        clovisor_config::LiveConfig::default().redacted_headers
    }

    #[test]
    fn defaults_remove_credential_attributes_and_keep_the_rest() {
        let mut s = session();
        assert_eq!(redact(&mut s, &defaults()), 2);
        let dump = format!("{s:?}");
        assert!(
            !dump.contains("hunter2") && !dump.contains("x-api-key"),
            "{dump}"
        );
        assert_eq!(s.attributes.len(), 1, "db.system kept");
        assert_eq!(
            s.http.as_ref().map(|h| h.host.as_str()),
            Some("shop.internal")
        );
        assert!(s.trace.is_some());
    }

    #[test]
    fn a_listed_grpc_message_is_replaced() {
        let mut s = session();
        s.grpc = Some(Box::new(clovisor_proto::session::v1::Grpc {
            service: "a.B".into(),
            method: "C".into(),
            status_code: Some(16),
            message: "token abc expired".into(),
        }));
        assert_eq!(redact(&mut s, &defaults()), 2, "not listed by default");
        assert_eq!(
            s.grpc.as_ref().map(|g| g.message.as_str()),
            Some("token abc expired")
        );
        let mut list = defaults();
        list.push("grpc-message".into());
        assert_eq!(redact(&mut s, &list), 1);
        assert_eq!(s.grpc.as_ref().map(|g| g.message.as_str()), Some(REDACTED));
    }

    #[test]
    fn listed_fields_are_replaced_and_trace_context_dropped() {
        let mut s = session();
        let mut list = defaults();
        list.extend(["host", "x-request-id", "tracestate"].map(String::from));
        assert_eq!(redact(&mut s, &list), 5);
        let http = s.http.as_ref().expect("http kept");
        assert_eq!(
            (http.host.as_str(), http.request_id.as_str()),
            (REDACTED, REDACTED)
        );
        assert_eq!(http.user_agent, "curl/8");
        assert_eq!(s.trace.as_ref().map(|t| t.tracestate.as_str()), Some(""));
        list.push("traceparent".into());
        let mut s = session();
        redact(&mut s, &list);
        assert!(s.trace.is_none(), "W3C context came from a redacted header");
        // A B3 context is not affected by redacting traceparent.
        let mut s = session();
        if let Some(t) = s.trace.as_mut() {
            t.format = TraceFormat::B3Single as i32;
        }
        redact(&mut s, &list);
        assert!(s.trace.is_some());
    }

    #[test]
    fn the_target_leaves_the_collector_with_credentials_in_its_query_redacted() {
        let mut s = session();
        if let Some(http) = s.http.as_mut() {
            http.target = "/b/o?X-Amz-Credential=AKIA&X-Amz-Signature=abc&Tenant=t1&page=2".into();
        }
        let n = Redaction::new(&[])
            .with_query(QueryRedaction::new(&["tenant".to_owned()]))
            .apply(&mut s);
        assert_eq!(
            s.http.as_ref().map(|h| h.target.as_str()),
            Some("/b/o?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED&Tenant=REDACTED&page=2")
        );
        assert_eq!(n, 1, "one field rewritten");
        let mut plain = session();
        if let Some(http) = plain.http.as_mut() {
            http.target = "/b/o?page=2".into();
        }
        assert_eq!(Redaction::new(&[]).apply(&mut plain), 0);
        assert_eq!(plain.http.map(|h| h.target), Some("/b/o?page=2".to_owned()));
    }
}
