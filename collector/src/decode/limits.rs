//! Length caps on the strings a session keeps, applied as it leaves the collector (with
//! redaction, `server.rs`).
//!
//! Most fields are short because the probe captures a bounded prefix of each message (its
//! snaplen, 64 KiB at most for a message captured call by call), but a record from the wire can
//! carry up to the gRPC message limit (4 MiB), and a decoder copies what it reads: one request
//! target, Redis key or SQL statement of megabytes would be stored by the correlator, exported in
//! every span and listed by the REST API. Every free-form string field is therefore cut to a
//! documented limit ([`FIELD_LIMITS`], sized by [`FieldLimits`]: `--max-field-bytes`,
//! `--max-long-field-bytes`, `--max-attribute-name-bytes`); a cut value ends with
//! [`TRUNCATION_MARK`] (the result, mark included, is at most the limit) and is counted in
//! `clovisor_collector_fields_truncated_total{field}`. Cuts fall on character boundaries.
//!
//! The attributes a session carries, and an analyzer's fields, are capped in number too
//! (`--max-attributes`, `--max-analyzer-fields`): beyond, the entries whose names sort last are
//! dropped, each counted under `field="attributes"` or `field="analyzer.fields"`.

use std::collections::HashMap;

use clovisor_proto::session::v1::Session;

/// What a cut value ends with.
pub const TRUNCATION_MARK: &str = "…";

/// Default bytes of a request target or a database statement at most (the common 8 KiB of HTTP
/// servers' request-line limits).
pub const MAX_LONG_FIELD_BYTES: usize = 8192;
/// Default bytes of any other kept string at most: names, header values, keys, messages.
pub const MAX_FIELD_BYTES: usize = 1024;
/// Default bytes of an attribute's (or analyzer field's) name at most.
pub const MAX_ATTRIBUTE_NAME_BYTES: usize = 256;
/// Default attributes one session carries at most.
pub const MAX_ATTRIBUTES: usize = 64;
/// Default fields one analyzer result carries at most.
pub const MAX_ANALYZER_FIELDS: usize = 64;

/// Label of the attributes dropped beyond [`FieldLimits::attributes`].
pub const ATTRIBUTES_DROPPED: &str = "attributes";
/// Label of the analyzer fields dropped beyond [`FieldLimits::analyzer_fields`].
pub const ANALYZER_FIELDS_DROPPED: &str = "analyzer.fields";

/// The [`FieldLimits`] as flags (and environment variables): the collector's and
/// `clovisor all-in-one`'s.
#[derive(Debug, Clone, clap::Args)]
pub struct FieldLimitArgs {
    /// Bytes of a request target or database statement a session keeps at most; longer ones
    /// are cut (`clovisor_collector_fields_truncated_total{field}`).
    #[arg(long, env = "CLOVISOR_MAX_LONG_FIELD_BYTES", default_value_t = MAX_LONG_FIELD_BYTES,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(16..=1 << 20))]
    pub max_long_field_bytes: usize,
    /// Bytes of every other string a session keeps from the wire at most (hosts, user agents,
    /// header values, keys, messages, names).
    #[arg(long, env = "CLOVISOR_MAX_FIELD_BYTES", default_value_t = MAX_FIELD_BYTES,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(16..=1 << 20))]
    pub max_field_bytes: usize,
    /// Bytes of an attribute's or analyzer field's name at most.
    #[arg(long, env = "CLOVISOR_MAX_ATTRIBUTE_NAME_BYTES", default_value_t = MAX_ATTRIBUTE_NAME_BYTES,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(16..=65_536))]
    pub max_attribute_name_bytes: usize,
    /// Attributes one session carries at most; beyond, those whose names sort last are dropped
    /// (`clovisor_collector_fields_truncated_total{field="attributes"}`).
    #[arg(long, env = "CLOVISOR_MAX_ATTRIBUTES", default_value_t = MAX_ATTRIBUTES,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=65_536))]
    pub max_attributes: usize,
    /// Fields one analyzer result carries at most (`field="analyzer.fields"` when dropped).
    #[arg(long, env = "CLOVISOR_MAX_ANALYZER_FIELDS", default_value_t = MAX_ANALYZER_FIELDS,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=65_536))]
    pub max_analyzer_fields: usize,
}

impl FieldLimitArgs {
    /// The limits these flags set.
    pub fn limits(&self) -> FieldLimits {
        FieldLimits {
            long_field_bytes: self.max_long_field_bytes,
            field_bytes: self.max_field_bytes,
            attribute_name_bytes: self.max_attribute_name_bytes,
            attributes: self.max_attributes,
            analyzer_fields: self.max_analyzer_fields,
        }
    }
}

/// The limits a session's strings and maps are capped to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldLimits {
    /// Bytes of a request target or database statement.
    pub long_field_bytes: usize,
    /// Bytes of every other free-form string.
    pub field_bytes: usize,
    /// Bytes of an attribute's or analyzer field's name.
    pub attribute_name_bytes: usize,
    /// Attributes of one session.
    pub attributes: usize,
    /// Fields of one analyzer result.
    pub analyzer_fields: usize,
}

impl Default for FieldLimits {
    fn default() -> Self {
        Self {
            long_field_bytes: MAX_LONG_FIELD_BYTES,
            field_bytes: MAX_FIELD_BYTES,
            attribute_name_bytes: MAX_ATTRIBUTE_NAME_BYTES,
            attributes: MAX_ATTRIBUTES,
            analyzer_fields: MAX_ANALYZER_FIELDS,
        }
    }
}

/// Which of [`FieldLimits`]' byte limits a field has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldClass {
    /// [`FieldLimits::long_field_bytes`].
    Long,
    /// [`FieldLimits::field_bytes`].
    Short,
    /// [`FieldLimits::attribute_name_bytes`].
    Name,
}

impl FieldLimits {
    /// The byte limit of a field of `class`.
    pub fn bytes(&self, class: FieldClass) -> usize {
        match class {
            FieldClass::Long => self.long_field_bytes,
            FieldClass::Short => self.field_bytes,
            FieldClass::Name => self.attribute_name_bytes,
        }
    }

    /// The byte limit of `field` (a [`FIELD_LIMITS`] label).
    pub fn of(&self, field: &str) -> usize {
        FIELD_LIMITS
            .iter()
            .find(|(name, _)| *name == field)
            .map_or(self.field_bytes, |(_, class)| self.bytes(*class))
    }
}

use FieldClass::{Long, Name, Short};

/// `(field label, limit class)` of every capped field, as
/// `clovisor_collector_fields_truncated_total` names them.
pub const FIELD_LIMITS: [(&str, FieldClass); 33] = [
    ("http.method", Short),
    ("http.target", Long),
    ("http.host", Short),
    ("http.user_agent", Short),
    ("http.version", Short),
    ("http.request_id", Short),
    ("http.envoy_decorator", Short),
    ("http.reason", Short),
    ("trace.tracestate", Short),
    ("grpc.service", Short),
    ("grpc.method", Short),
    ("grpc.message", Short),
    ("dns.question_name", Short),
    ("db.system", Short),
    ("db.operation", Short),
    ("db.statement", Long),
    ("db.key", Short),
    ("db.namespace", Short),
    ("db.user", Short),
    ("db.error_code", Short),
    ("db.error_message", Short),
    ("db.sql_state", Short),
    ("db.reply_type", Short),
    ("kafka.client_id", Short),
    ("kafka.topic", Short),
    ("analyzer.name", Short),
    ("analyzer.field_name", Name),
    ("analyzer.field_value", Short),
    ("attribute.name", Name),
    ("attribute.value", Short),
    ("observation.interface", Short),
    ("observation.comm", Short),
    ("observation.node", Short),
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

/// Caps every free-form string of `session` and the number of its attributes and analyzer
/// fields to `limits`, calling `cut` with the field's label for each value cut or entry dropped.
pub fn cap_session(session: &mut Session, limits: &FieldLimits, mut cut: impl FnMut(&'static str)) {
    // A value no longer than the smallest limit fits whatever its field: most do, and skip
    // the look-up of their field's limit.
    let fits_any = limits
        .long_field_bytes
        .min(limits.field_bytes)
        .min(limits.attribute_name_bytes);
    let mut f = |field: &'static str, value: &mut String| {
        if value.len() > fits_any && cap(value, limits.of(field)) {
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
    let mut fields_dropped = 0;
    if let Some(a) = session.analyzer.as_mut() {
        f("analyzer.name", &mut a.name);
        fields_dropped = cap_map(
            &mut a.fields,
            ("analyzer.field_name", "analyzer.field_value"),
            (limits.attribute_name_bytes, limits.analyzer_fields),
            &mut f,
        );
    }
    let attributes_dropped = cap_map(
        &mut session.attributes,
        ("attribute.name", "attribute.value"),
        (limits.attribute_name_bytes, limits.attributes),
        &mut f,
    );
    for o in &mut session.observations {
        f("observation.interface", &mut o.interface);
        f("observation.comm", &mut o.comm);
        f("observation.node", &mut o.node);
    }
    for _ in 0..attributes_dropped {
        cut(ATTRIBUTES_DROPPED);
    }
    for _ in 0..fields_dropped {
        cut(ANALYZER_FIELDS_DROPPED);
    }
}

/// Caps the number of entries of a string map (those whose names sort last go), then the
/// names and values; names are taken out and put back only when one is too long, so a map
/// within its limits costs no allocation. Returns how many entries were dropped.
fn cap_map(
    map: &mut HashMap<String, String>,
    (name_field, value_field): (&'static str, &'static str),
    (name_bytes, max_entries): (usize, usize),
    f: &mut impl FnMut(&'static str, &mut String),
) -> usize {
    let mut dropped = 0;
    if map.len() > max_entries {
        let mut names: Vec<&String> = map.keys().collect();
        names.sort_unstable();
        let gone: Vec<String> = names[max_entries..].iter().map(|n| (*n).clone()).collect();
        for name in gone {
            map.remove(&name);
            dropped += 1;
        }
    }
    for value in map.values_mut() {
        f(value_field, value);
    }
    if map.keys().any(|k| k.len() > name_bytes) {
        let entries: Vec<(String, String)> = map.drain().collect();
        for (mut name, value) in entries {
            f(name_field, &mut name);
            map.insert(name, value);
        }
    }
    dropped
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
        for (field, class) in FIELD_LIMITS {
            let limit = FieldLimits::default().bytes(class);
            // At the limit: kept as is, nothing counted.
            let mut s = full_session();
            let at_limit = "x".repeat(limit);
            set(&mut s, field, at_limit.clone());
            let mut cuts = Vec::new();
            cap_session(&mut s, &FieldLimits::default(), |f| cuts.push(f));
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
            cap_session(&mut s, &FieldLimits::default(), |f| cuts.push(f));
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
        cap_session(&mut s, &FieldLimits::default(), |_| cuts += 1);
        assert_eq!((s, cuts), (before, 0));
    }

    #[test]
    fn configured_limits_apply_to_every_class() {
        let limits = FieldLimits {
            long_field_bytes: 40,
            field_bytes: 20,
            attribute_name_bytes: 10,
            ..FieldLimits::default()
        };
        for (field, class) in FIELD_LIMITS {
            let limit = limits.bytes(class);
            let mut s = full_session();
            set(&mut s, field, "y".repeat(limit));
            let mut cuts = Vec::new();
            cap_session(&mut s, &limits, |f| cuts.push(f));
            assert!(cuts.is_empty(), "{field}: {limit} bytes cut");
            let mut s = full_session();
            set(&mut s, field, "y".repeat(limit + 1));
            cap_session(&mut s, &limits, |f| cuts.push(f));
            assert_eq!(cuts, vec![field], "{field}: one byte past {limit} cut");
            let kept = kept_value(&s).unwrap_or_else(|| panic!("{field}: value missing"));
            assert!(kept.len() <= limit, "{field}: {} > {limit}", kept.len());
        }
    }

    #[test]
    fn attributes_and_analyzer_fields_are_capped_in_number_and_counted() {
        let limits = FieldLimits {
            attributes: 3,
            analyzer_fields: 2,
            ..FieldLimits::default()
        };
        let mut s = full_session();
        for i in 0..10 {
            s.attributes.insert(format!("a{i}"), "v".into());
            s.analyzer
                .as_mut()
                .map(|a| a.fields.insert(format!("f{i}"), "v".into()));
        }
        let mut cuts = Vec::new();
        cap_session(&mut s, &limits, |f| cuts.push(f));
        let mut names: Vec<&String> = s.attributes.keys().collect();
        names.sort();
        assert_eq!(
            names,
            ["a0", "a1", "a2"],
            "the first names kept, alike every time"
        );
        let fields = s.analyzer.as_ref().map_or(0, |a| a.fields.len());
        assert_eq!(fields, 2);
        assert_eq!(cuts.iter().filter(|f| **f == ATTRIBUTES_DROPPED).count(), 7);
        assert_eq!(
            cuts.iter()
                .filter(|f| **f == ANALYZER_FIELDS_DROPPED)
                .count(),
            8
        );
        // At the cap: nothing dropped.
        let before = s.clone();
        cuts.clear();
        cap_session(&mut s, &limits, |f| cuts.push(f));
        assert_eq!((s, cuts), (before, Vec::new()));
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
