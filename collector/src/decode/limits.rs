//! Length caps on the strings a session keeps, applied as it leaves the collector (with
//! redaction, `server.rs`).
//!
//! Most fields are short because the probe captures a bounded prefix of each message (its
//! snaplen, 64 KiB at most for a message captured call by call), but a record from the wire can
//! carry up to the gRPC message limit (4 MiB), and a decoder copies what it reads: one request
//! target, Redis key or SQL statement of megabytes would be stored by the correlator, exported in
//! every span and listed by the REST API. Every free-form string field is therefore cut to a
//! documented limit ([`FIELD_LIMITS`]); a cut value ends with [`TRUNCATION_MARK`] (the result,
//! mark included, is at most the limit) and is counted in
//! `clovisor_collector_fields_truncated_total{field}`. Cuts fall on character boundaries.

use std::collections::HashMap;

use clovisor_proto::session::v1::Session;

/// What a cut value ends with.
pub const TRUNCATION_MARK: &str = "…";

/// Bytes of a request target or a database statement at most (the common 8 KiB of HTTP
/// servers' request-line limits).
pub const MAX_LONG_FIELD_BYTES: usize = 8192;
/// Bytes of any other kept string at most: names, header values, keys, messages.
pub const MAX_FIELD_BYTES: usize = 1024;
/// Bytes of an attribute's (or analyzer field's) name at most.
pub const MAX_ATTRIBUTE_NAME_BYTES: usize = 256;

/// `(field label, limit)` of every capped field, as `clovisor_collector_fields_truncated_total`
/// names them.
pub const FIELD_LIMITS: [(&str, usize); 33] = [
    ("http.method", MAX_FIELD_BYTES),
    ("http.target", MAX_LONG_FIELD_BYTES),
    ("http.host", MAX_FIELD_BYTES),
    ("http.user_agent", MAX_FIELD_BYTES),
    ("http.version", MAX_FIELD_BYTES),
    ("http.request_id", MAX_FIELD_BYTES),
    ("http.envoy_decorator", MAX_FIELD_BYTES),
    ("http.reason", MAX_FIELD_BYTES),
    ("trace.tracestate", MAX_FIELD_BYTES),
    ("grpc.service", MAX_FIELD_BYTES),
    ("grpc.method", MAX_FIELD_BYTES),
    ("grpc.message", MAX_FIELD_BYTES),
    ("dns.question_name", MAX_FIELD_BYTES),
    ("db.system", MAX_FIELD_BYTES),
    ("db.operation", MAX_FIELD_BYTES),
    ("db.statement", MAX_LONG_FIELD_BYTES),
    ("db.key", MAX_FIELD_BYTES),
    ("db.namespace", MAX_FIELD_BYTES),
    ("db.user", MAX_FIELD_BYTES),
    ("db.error_code", MAX_FIELD_BYTES),
    ("db.error_message", MAX_FIELD_BYTES),
    ("db.sql_state", MAX_FIELD_BYTES),
    ("db.reply_type", MAX_FIELD_BYTES),
    ("kafka.client_id", MAX_FIELD_BYTES),
    ("kafka.topic", MAX_FIELD_BYTES),
    ("analyzer.name", MAX_FIELD_BYTES),
    ("analyzer.field_name", MAX_ATTRIBUTE_NAME_BYTES),
    ("analyzer.field_value", MAX_FIELD_BYTES),
    ("attribute.name", MAX_ATTRIBUTE_NAME_BYTES),
    ("attribute.value", MAX_FIELD_BYTES),
    ("observation.interface", MAX_FIELD_BYTES),
    ("observation.comm", MAX_FIELD_BYTES),
    ("observation.node", MAX_FIELD_BYTES),
];

/// Cuts `value` to at most `limit` bytes, mark included, on a character boundary; `true` when
/// it was cut.
pub fn cap(value: &mut String, limit: usize) -> bool {
    if value.len() <= limit {
        return false;
    }
    let mut end = limit.saturating_sub(TRUNCATION_MARK.len());
    while end > 0 && !value.is_char_boundary(end) {
        end -= 1;
    }
    value.truncate(end);
    value.push_str(TRUNCATION_MARK);
    true
}

/// Caps every free-form string of `session`, calling `cut` with the field's label for each value
/// cut.
pub fn cap_session(session: &mut Session, mut cut: impl FnMut(&'static str)) {
    let mut f = |field: &'static str, value: &mut String| {
        let limit = FIELD_LIMITS
            .iter()
            .find(|(name, _)| *name == field)
            .map_or(MAX_FIELD_BYTES, |(_, limit)| *limit);
        if cap(value, limit) {
            cut(field);
        }
    };
    if let Some(h) = session.http.as_mut() {
        f("http.method", &mut h.method);
        f("http.target", &mut h.target);
        f("http.host", &mut h.host);
        f("http.user_agent", &mut h.user_agent);
        f("http.version", &mut h.version);
        f("http.request_id", &mut h.request_id);
        f("http.envoy_decorator", &mut h.envoy_decorator);
        f("http.reason", &mut h.reason);
    }
    if let Some(t) = session.trace.as_mut() {
        f("trace.tracestate", &mut t.tracestate);
    }
    if let Some(g) = session.grpc.as_mut() {
        f("grpc.service", &mut g.service);
        f("grpc.method", &mut g.method);
        f("grpc.message", &mut g.message);
    }
    if let Some(d) = session.dns.as_mut() {
        f("dns.question_name", &mut d.question_name);
    }
    if let Some(d) = session.database.as_mut() {
        f("db.system", &mut d.system);
        f("db.operation", &mut d.operation);
        f("db.statement", &mut d.statement);
        f("db.key", &mut d.key);
        f("db.namespace", &mut d.namespace);
        f("db.user", &mut d.user);
        f("db.error_code", &mut d.error_code);
        f("db.error_message", &mut d.error_message);
        f("db.sql_state", &mut d.sql_state);
        f("db.reply_type", &mut d.reply_type);
    }
    if let Some(k) = session.kafka.as_mut() {
        f("kafka.client_id", &mut k.client_id);
        f("kafka.topic", &mut k.topic);
    }
    if let Some(a) = session.analyzer.as_mut() {
        f("analyzer.name", &mut a.name);
        cap_map(
            &mut a.fields,
            "analyzer.field_name",
            "analyzer.field_value",
            &mut f,
        );
    }
    cap_map(
        &mut session.attributes,
        "attribute.name",
        "attribute.value",
        &mut f,
    );
    for o in &mut session.observations {
        f("observation.interface", &mut o.interface);
        f("observation.comm", &mut o.comm);
        f("observation.node", &mut o.node);
    }
}

/// Caps the names and values of a string map; names are taken out and put back only when one
/// is too long, so a map within its limits costs no allocation.
fn cap_map(
    map: &mut HashMap<String, String>,
    name_field: &'static str,
    value_field: &'static str,
    f: &mut impl FnMut(&'static str, &mut String),
) {
    for value in map.values_mut() {
        f(value_field, value);
    }
    if map.keys().any(|k| k.len() > MAX_ATTRIBUTE_NAME_BYTES) {
        let entries: Vec<(String, String)> = map.drain().collect();
        for (mut name, value) in entries {
            f(name_field, &mut name);
            map.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clovisor_proto::session::v1::Observation;

    /// A session with every capped field present and short.
    fn full_session() -> Session {
        Session {
            http: Some(Default::default()),
            trace: Some(Default::default()),
            grpc: Some(Default::default()),
            dns: Some(Default::default()),
            database: Some(Default::default()),
            kafka: Some(Default::default()),
            analyzer: Some(Default::default()),
            observations: vec![Observation::default()],
            ..Session::default()
        }
    }

    /// Sets `field` of `s` to `value`; for a map's name field, a name `value` with value `v`.
    fn set(s: &mut Session, field: &str, value: String) {
        let h = s.http.as_mut().expect("http");
        let d = s.database.as_mut().expect("database");
        let slot = match field {
            "http.method" => &mut h.method,
            "http.target" => &mut h.target,
            "http.host" => &mut h.host,
            "http.user_agent" => &mut h.user_agent,
            "http.version" => &mut h.version,
            "http.request_id" => &mut h.request_id,
            "http.envoy_decorator" => &mut h.envoy_decorator,
            "http.reason" => &mut h.reason,
            "trace.tracestate" => &mut s.trace.as_mut().expect("trace").tracestate,
            "grpc.service" => &mut s.grpc.as_mut().expect("grpc").service,
            "grpc.method" => &mut s.grpc.as_mut().expect("grpc").method,
            "grpc.message" => &mut s.grpc.as_mut().expect("grpc").message,
            "dns.question_name" => &mut s.dns.as_mut().expect("dns").question_name,
            "db.system" => &mut d.system,
            "db.operation" => &mut d.operation,
            "db.statement" => &mut d.statement,
            "db.key" => &mut d.key,
            "db.namespace" => &mut d.namespace,
            "db.user" => &mut d.user,
            "db.error_code" => &mut d.error_code,
            "db.error_message" => &mut d.error_message,
            "db.sql_state" => &mut d.sql_state,
            "db.reply_type" => &mut d.reply_type,
            "kafka.client_id" => &mut s.kafka.as_mut().expect("kafka").client_id,
            "kafka.topic" => &mut s.kafka.as_mut().expect("kafka").topic,
            "analyzer.name" => &mut s.analyzer.as_mut().expect("analyzer").name,
            "analyzer.field_name" => {
                let fields = &mut s.analyzer.as_mut().expect("analyzer").fields;
                fields.insert(value, "v".into());
                return;
            }
            "analyzer.field_value" => s
                .analyzer
                .as_mut()
                .expect("analyzer")
                .fields
                .entry("f".into())
                .or_default(),
            "attribute.name" => {
                s.attributes.insert(value, "v".into());
                return;
            }
            "attribute.value" => s.attributes.entry("a".into()).or_default(),
            "observation.interface" => &mut s.observations[0].interface,
            "observation.comm" => &mut s.observations[0].comm,
            "observation.node" => &mut s.observations[0].node,
            other => panic!("no setter for {other}"),
        };
        *slot = value;
    }

    /// Every string of `s`, map names and values included.
    fn strings(s: &Session) -> Vec<String> {
        let mut all = vec![format!("{s:?}")];
        all.extend(s.attributes.keys().cloned());
        if let Some(a) = &s.analyzer {
            all.extend(a.fields.keys().cloned());
        }
        all
    }

    #[test]
    fn every_field_is_cut_to_its_limit_marked_and_counted() {
        for (field, limit) in FIELD_LIMITS {
            // At the limit: kept as is, nothing counted.
            let mut s = full_session();
            let at_limit = "x".repeat(limit);
            set(&mut s, field, at_limit.clone());
            let mut cuts = Vec::new();
            cap_session(&mut s, |f| cuts.push(f));
            assert!(cuts.is_empty(), "{field}: {limit} bytes cut: {cuts:?}");
            assert!(
                strings(&s).iter().any(|v| v.contains(&at_limit)),
                "{field}: a value at the limit was changed"
            );
            // Beyond: cut, marked, counted once under its name. A multi-byte character across
            // the cut must not split.
            let mut s = full_session();
            let long = format!("{}é{}", "y".repeat(limit - 4), "z".repeat(limit));
            set(&mut s, field, long);
            let mut cuts = Vec::new();
            cap_session(&mut s, |f| cuts.push(f));
            assert_eq!(cuts, vec![field], "{field}: one cut counted");
            let kept = kept_value(&s).unwrap_or_else(|| panic!("{field}: value missing"));
            assert!(
                kept.len() <= limit,
                "{field}: {} > {limit} bytes",
                kept.len()
            );
            assert!(kept.ends_with(TRUNCATION_MARK), "{field}: unmarked cut");
            assert!(!kept.contains('z'), "{field}: bytes past the cut kept");
        }
    }

    /// The value starting `yyy`: a map's name, else the field's value as printed.
    fn kept_value(s: &Session) -> Option<String> {
        let mut names = s.attributes.keys().cloned().collect::<Vec<_>>();
        if let Some(a) = &s.analyzer {
            names.extend(a.fields.keys().cloned());
        }
        if let Some(name) = names.into_iter().find(|n| n.starts_with("yyy")) {
            return Some(name);
        }
        let debug = format!("{s:?}");
        let rest = &debug[debug.find("yyy")?..];
        Some(rest[..rest.find('"')?].to_owned())
    }

    #[test]
    fn a_session_within_its_limits_is_left_alone() {
        let mut s = full_session();
        set(&mut s, "http.target", "/cart?id=1".into());
        set(&mut s, "attribute.name", "http.request.header.x-id".into());
        let before = s.clone();
        let mut cuts = 0;
        cap_session(&mut s, |_| cuts += 1);
        assert_eq!((s, cuts), (before, 0));
    }

    #[test]
    fn cap_is_exact_at_the_boundaries() {
        for (input, limit, want) in [
            ("abcdef", 6, "abcdef"),
            ("abcdefg", 6, "abc…"),
            ("ééé", 5, "é…"),
            ("ééé", 4, "…"),
            ("abcdefg", 0, "…"),
        ] {
            let mut v = input.to_owned();
            cap(&mut v, limit);
            assert_eq!(v, want, "cap({input:?}, {limit})");
        }
    }
}
