//! Query-string redaction shared by the collector (which redacts a request's target before the
//! session leaves it, with the operator's extra keys) and the correlator (which redacts again,
//! with the built-in keys, whatever reaches it).
//!
//! A parameter is sensitive when its key, percent-decoded (`+` as space) and compared without
//! regard to case, is one of [`SENSITIVE_QUERY_KEYS`] or of the configured extra keys.
//! Parameters are separated by `&` or `;`; separators and the order of parameters are kept, the
//! value of a sensitive one becomes [`REDACTED`].

use std::borrow::Cow;

/// What a redacted value is replaced by.
pub const REDACTED: &str = "REDACTED";

/// Query keys whose values are never shown, lower case: OpenTelemetry's semantic-convention
/// defaults (`AWSAccessKeyId`, `Signature`, `sig`, `X-Goog-Signature`), AWS SigV4 presigned URLs,
/// OAuth 2.0 (the authorization `code`, tokens, client secrets and assertions) and common
/// credential carriers.
pub const SENSITIVE_QUERY_KEYS: [&str; 22] = [
    "awsaccesskeyid",
    "signature",
    "sig",
    "x-goog-signature",
    "x-goog-credential",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "access_token",
    "token",
    "id_token",
    "refresh_token",
    "code",
    "client_secret",
    "client_assertion",
    "api_key",
    "apikey",
    "key",
    "password",
    "passwd",
    "secret",
    "session_token",
];

/// The built-in keys and an operator's extra ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryRedaction {
    extra: Vec<String>,
}

impl QueryRedaction {
    /// Built-in keys plus `extra` (any case; blank ones ignored).
    pub fn new(extra: &[String]) -> Self {
        Self {
            extra: extra
                .iter()
                .map(|k| k.trim().to_ascii_lowercase())
                .filter(|k| !k.is_empty())
                .collect(),
        }
    }

    /// Whether the raw (possibly percent-encoded) `key` names a sensitive parameter.
    pub fn is_sensitive(&self, key: &str) -> bool {
        let key = percent_decoded_lower(key);
        let key = key.trim();
        SENSITIVE_QUERY_KEYS.contains(&key) || self.extra.iter().any(|k| k == key)
    }

    /// `query` with the values of sensitive parameters replaced; borrowed when nothing was.
    pub fn redact_query<'a>(&self, query: &'a str) -> Cow<'a, str> {
        let mut out = String::new();
        let mut copied = 0;
        let mut start = 0;
        for (end, _) in query
            .match_indices(['&', ';'])
            .chain(std::iter::once((query.len(), "")))
        {
            let pair = &query[start..end];
            if let Some((key, value)) = pair.split_once('=') {
                if !value.is_empty() && value != REDACTED && self.is_sensitive(key) {
                    let value_at = start + key.len() + 1;
                    out.push_str(&query[copied..value_at]);
                    out.push_str(REDACTED);
                    copied = end;
                }
            }
            start = end + 1;
        }
        if copied == 0 {
            return Cow::Borrowed(query);
        }
        out.push_str(&query[copied..]);
        Cow::Owned(out)
    }

    /// A request target (origin or absolute form) with its query redacted and any user-info
    /// of an absolute-form authority replaced; borrowed when nothing was.
    pub fn redact_target<'a>(&self, target: &'a str) -> Cow<'a, str> {
        let (before_fragment, fragment) = match target.find('#') {
            Some(i) => target.split_at(i),
            None => (target, ""),
        };
        let (head, query) = match before_fragment.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (before_fragment, None),
        };
        let head_redacted = redact_userinfo(head);
        let query_redacted = query.map(|q| self.redact_query(q));
        let changed =
            matches!(head_redacted, Cow::Owned(_)) || matches!(query_redacted, Some(Cow::Owned(_)));
        if !changed {
            return Cow::Borrowed(target);
        }
        let mut out = head_redacted.into_owned();
        if let Some(q) = query_redacted {
            out.push('?');
            out.push_str(&q);
        }
        out.push_str(fragment);
        Cow::Owned(out)
    }
}

/// `scheme://user:pass@host/...` with the user-info replaced.
fn redact_userinfo(head: &str) -> Cow<'_, str> {
    // The first `://`, found from its colons (a byte search) rather than by `str::find`'s
    // substring searcher, whose set-up alone cost more than the search of a short path (once
    // per exchange leaving the collector).
    let Some(scheme_end) = head
        .match_indices(':')
        .map(|(i, _)| i)
        .find(|&i| head.as_bytes().get(i + 1..i + 3) == Some(b"//"))
    else {
        return Cow::Borrowed(head);
    };
    let authority_start = scheme_end + 3;
    let rest = &head[authority_start..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => Cow::Owned(format!(
            "{}{REDACTED}{}",
            &head[..authority_start],
            &rest[at..]
        )),
        None => Cow::Borrowed(head),
    }
}

/// `key` percent-decoded (`+` as space), lower case; undecodable escapes are kept as written.
fn percent_decoded_lower(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                    std::str::from_utf8(h)
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                });
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

/// `query` redacted with the built-in keys.
pub fn redact_query(query: &str) -> Cow<'_, str> {
    QueryRedaction::default().redact_query(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigv4_oauth_key_and_configured_names_are_redacted_case_and_encoding_blind() {
        let r = QueryRedaction::new(&["Session".to_owned(), " ".to_owned()]);
        let cases = [
            (
                "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20261130&X-Amz-Signature=abc&X-Amz-Security-Token=tok&X-Amz-Expires=60",
                "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED&X-Amz-Security-Token=REDACTED&X-Amz-Expires=60",
            ),
            ("code=4/0Ab&state=xyz", "code=REDACTED&state=xyz"),
            ("key=AIzaSy&q=maps", "key=REDACTED&q=maps"),
            ("a=1;token=t;b=2", "a=1;token=REDACTED;b=2"),
            ("x%2Damz%2Dsignature=s&%74oken=t", "x%2Damz%2Dsignature=REDACTED&%74oken=REDACTED"),
            ("ACCESS_TOKEN=t", "ACCESS_TOKEN=REDACTED"),
            ("session=s&sessions=2", "session=REDACTED&sessions=2"),
            ("keyword=rust&monkey=1", "keyword=rust&monkey=1"),
            ("token&token=&=x", "token&token=&=x"),
            ("", ""),
        ];
        for (query, want) in cases {
            assert_eq!(r.redact_query(query), want, "query {query:?}");
        }
        assert!(
            matches!(r.redact_query("a=1&b=2"), Cow::Borrowed(_)),
            "nothing to redact: no copy"
        );
        assert_eq!(
            redact_query("session=s"),
            "session=s",
            "extra keys only where configured"
        );
    }

    #[test]
    fn targets_keep_their_path_and_fragment_and_lose_user_info() {
        let r = QueryRedaction::default();
        assert_eq!(
            r.redact_target("/p?sig=1&x=2#frag"),
            "/p?sig=REDACTED&x=2#frag"
        );
        assert_eq!(
            r.redact_target("http://user:pw@h:80/a?token=t"),
            "http://REDACTED@h:80/a?token=REDACTED"
        );
        assert_eq!(
            r.redact_target("http://h/a@b?x=1"),
            "http://h/a@b?x=1",
            "an @ in the path is not user-info"
        );
        assert!(matches!(r.redact_target("/plain?x=1"), Cow::Borrowed(_)));
    }

    #[test]
    fn user_info_follows_the_first_scheme_separator_whatever_colons_come_before() {
        for (head, want) in [
            ("http://u:p@h/x", "http://REDACTED@h/x"),
            ("a:b://u@h/x", "a:b://REDACTED@h/x"),
            (":/:://u@h", ":/:://REDACTED@h"),
            ("h:80/a:/b://u@h", "h:80/a:/b://REDACTED@h"),
            ("://@", "://REDACTED@"),
            ("x:/", "x:/"),
            ("x:", "x:"),
            ("x://", "x://"),
            ("é:ü://ü@h", "é:ü://REDACTED@h"),
        ] {
            assert_eq!(redact_userinfo(head), want, "{head}");
        }
    }
}
