//! How a session reads to people: the values derived from a session that the REST API
//! (`api/json.rs`) and the spans (`export/span.rs`) both show — endpoint addresses, which end
//! observed the exchange, the request target split into path and query with credentials
//! redacted, the bare HTTP version, the `Host` header split into host and port. One home, so the
//! API and the spans cannot disagree (and the API cannot be a way around the spans' redaction).

use std::net::IpAddr;

use clovisor_proto::common::v1::Side;
use clovisor_proto::session::v1::{Database, Endpoint, Session};

/// An endpoint's address, IPv4-mapped IPv6 shown as IPv4 (dual-stack sockets report IPv4 peers
/// as `::ffff:a.b.c.d`).
pub fn endpoint_ip(e: &Endpoint) -> Option<IpAddr> {
    e.addr()
}

/// Whether the exchange was observed at the server's end, which makes the span a SERVER span.
pub fn observed_at_server(session: &Session) -> bool {
    session
        .observations
        .iter()
        .any(|o| o.side() == Side::Server)
}

/// Splits a request target into path and query, dropping any scheme, authority (with its
/// userinfo) and fragment of an absolute-form target.
pub fn split_target(target: &str) -> (&str, Option<&str>) {
    let mut rest = target;
    // An origin-form target (`/path?query`, nearly all) has no scheme: whatever `://` it holds
    // follows its leading `/`, which no scheme contains. Not searched for then: the substring
    // search was nearly half of what splitting a short target cost (513 -> 286 instructions a
    // call, counted in `ingest_bench`), once per exchange counted.
    let absolute = !target.starts_with('/');
    if let Some(pos) = absolute.then(|| rest.find("://")).flatten() {
        if rest[..pos].bytes().all(|b| b.is_ascii_alphabetic()) {
            let after = &rest[pos + 3..];
            rest = after.find('/').map_or("/", |p| &after[p..]);
            // An authority with no path but a query: `http://h?x` -> "?x"
            if let Some(q) = after
                .find('?')
                .filter(|q| after.find('/').is_none_or(|p| *q < p))
            {
                rest = &after[q..];
            }
        }
    }
    let rest = rest.split('#').next().unwrap_or(rest);
    match rest.split_once('?') {
        Some((path, query)) => (if path.is_empty() { "/" } else { path }, Some(query)),
        None => (rest, None),
    }
}

/// Replaces the values of credential-carrying query keys by `REDACTED` (the built-in keys of
/// `clovisor_runtime::redact`: case-insensitive, percent-decoded, `&` and `;` separators). The
/// collector already redacted the target with the operator's extra keys; this holds whatever
/// reaches the correlator to the built-in ones.
pub fn redact_query(query: &str) -> String {
    clovisor_runtime::redact::redact_query(query).into_owned()
}

/// The bare HTTP version (`1.1`) from what the decoder reported (`HTTP/1.1` or `1.1`); `1.1`
/// when unknown, since only HTTP/1.x is decoded today.
pub fn http_version(reported: &str) -> &str {
    let bare = match reported.get(..5) {
        Some(prefix) if prefix.eq_ignore_ascii_case("HTTP/") => &reported[5..],
        _ => reported,
    };
    if bare.is_empty() {
        "1.1"
    } else {
        bare
    }
}

/// Splits a `Host` header value into host and explicit port (IPv6 literals in brackets).
pub fn split_host(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((addr, tail)) = rest.split_once(']') {
            return (addr, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (host, None),
        },
        _ => (host, None),
    }
}

/// Database operations that may name a span and label a metric as they are; any other is
/// `_OTHER` (OpenTelemetry's word for a value outside a bounded set). SQL command tags count by
/// their first word (`CREATE TABLE` → `CREATE`).
const DB_OPERATIONS: [&str; 116] = [
    // SQL
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "UPSERT",
    "REPLACE",
    "BEGIN",
    "START",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "CREATE",
    "DROP",
    "ALTER",
    "TRUNCATE",
    "SHOW",
    "COPY",
    "PREPARE",
    "DEALLOCATE",
    "CALL",
    "WITH",
    "EXPLAIN",
    "ANALYZE",
    "VACUUM",
    "GRANT",
    "REVOKE",
    "LOCK",
    "LISTEN",
    "NOTIFY",
    "FETCH",
    "MOVE",
    "DECLARE",
    "CLOSE",
    "DISCARD",
    "USE",
    "DESCRIBE",
    "DO",
    "VALUES",
    "TABLE",
    "RESET",
    "SET",
    "PING",
    "QUIT",
    "STATISTICS",
    // Redis
    "GET",
    "MGET",
    "MSET",
    "GETDEL",
    "GETEX",
    "SETEX",
    "SETNX",
    "DEL",
    "UNLINK",
    "EXISTS",
    "EXPIRE",
    "PEXPIRE",
    "TTL",
    "PTTL",
    "PERSIST",
    "INCR",
    "INCRBY",
    "DECR",
    "DECRBY",
    "APPEND",
    "STRLEN",
    "HGET",
    "HSET",
    "HMGET",
    "HMSET",
    "HGETALL",
    "HDEL",
    "HINCRBY",
    "HEXISTS",
    "HKEYS",
    "HLEN",
    "LPUSH",
    "RPUSH",
    "LPOP",
    "RPOP",
    "LRANGE",
    "LLEN",
    "BLPOP",
    "BRPOP",
    "SADD",
    "SREM",
    "SMEMBERS",
    "SISMEMBER",
    "SCARD",
    "ZADD",
    "ZREM",
    "ZRANGE",
    "ZSCORE",
    "ZINCRBY",
    "ZCARD",
    "XADD",
    "XREAD",
    "XRANGE",
    "XACK",
    "PUBLISH",
    "SUBSCRIBE",
    "AUTH",
    "HELLO",
    "INFO",
    "MULTI",
    "EXEC",
    "WATCH",
    "EVAL",
    "EVALSHA",
    "SCAN",
    "KEYS",
    "TYPE",
    "CLIENT",
    "CONFIG",
    "COMMAND",
];

/// The operation as a bounded value: its first word when a known one, else `_OTHER` (or `""`
/// when there is none).
pub fn db_operation_label(operation: &str) -> &'static str {
    let word = operation.split(' ').next().unwrap_or_default();
    if word.is_empty() {
        return "";
    }
    DB_OPERATIONS
        .iter()
        .find(|op| **op == word)
        .copied()
        .unwrap_or("_OTHER")
}

/// The database system as a bounded value.
pub fn db_system_label(system: &str) -> &'static str {
    match system {
        "redis" => "redis",
        "postgresql" => "postgresql",
        "mysql" => "mysql",
        _ => "other_sql",
    }
}

/// What `error.type` says of a failed database exchange: the server's code (SQLSTATE, MySQL
/// error number, Redis error prefix), or `_OTHER` for an error without one; `None` when it did
/// not fail.
pub fn db_error_type(d: &Database) -> Option<&str> {
    if !d.error_code.is_empty() {
        Some(&d.error_code)
    } else if !d.error_message.is_empty() || matches!(d.reply_type.as_str(), "error" | "blob_error")
    {
        Some("_OTHER")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_and_host_parsing() {
        assert_eq!(split_target("/a/b?x=1"), ("/a/b", Some("x=1")));
        assert_eq!(split_target("/a"), ("/a", None));
        assert_eq!(split_target("*"), ("*", None));
        assert_eq!(split_target("http://h:80"), ("/", None));
        assert_eq!(split_target("http://h?x=1"), ("/", Some("x=1")));
        // `://` in an origin-form target is part of its path or query.
        assert_eq!(
            split_target("/a?x=http://b/c"),
            ("/a", Some("x=http://b/c"))
        );
        assert_eq!(split_target("/s://h/p#f"), ("/s://h/p", None));
        assert_eq!(split_host("web:8080"), ("web", Some(8080)));
        assert_eq!(split_host("web"), ("web", None));
        assert_eq!(split_host("[::1]:443"), ("::1", Some(443)));
        assert_eq!(split_host("::1"), ("::1", None));
        assert_eq!(http_version("HTTP/1.0"), "1.0");
        assert_eq!(http_version("1.1"), "1.1");
        assert_eq!(http_version(""), "1.1");
    }
}
