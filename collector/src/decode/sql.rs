//! What the SQL decoders (PostgreSQL, MySQL) share: statement sanitizing and the statement's
//! operation.
//!
//! Statements carry customer data and secrets in their literals (`WHERE email = 'a@b.c'`,
//! `ALTER USER x PASSWORD 'hunter2'`). Following OpenTelemetry's advice for `db.query.text`,
//! every string, numeric, hexadecimal and dollar-quoted literal becomes `?`, and comments are
//! dropped, before a statement leaves the decoder; there is no switch to keep them. A statement
//! cut at the capture limit is sanitized the same way: an unterminated literal at the end is a
//! `?` too.

/// Longest sanitized statement kept, in bytes (a statement is at most the snaplen anyway).
pub const MAX_STATEMENT: usize = 4096;

/// How a dialect quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL: `"..."` is an identifier, `$tag$...$tag$` a string, `E'...'` an escaped string.
    Postgres,
    /// MySQL: `"..."` is a string (without `ANSI_QUOTES`), `` `...` `` an identifier, backslash escapes.
    MySql,
}

/// `statement` with its literals replaced by `?` and its comments removed.
pub fn sanitize(statement: &str, dialect: Dialect) -> String {
    let b = statement.as_bytes();
    let mut out = String::with_capacity(statement.len().min(MAX_STATEMENT));
    let mut i = 0;
    while i < b.len() && out.len() < MAX_STATEMENT {
        let c = b[i];
        match c {
            b'\'' => {
                i = skip_quoted(b, i + 1, b'\'', dialect == Dialect::MySql);
                out.push('?');
            }
            b'"' if dialect == Dialect::MySql => {
                i = skip_quoted(b, i + 1, b'"', true);
                out.push('?');
            }
            b'"' | b'`' => {
                // An identifier: kept as written.
                let end = skip_quoted(b, i + 1, c, false);
                out.push_str(&statement[i..end]);
                i = end;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&x| x == b'\n')
                    .map_or(b.len(), |p| i + p + 1);
                out.push(' ');
            }
            b'#' if dialect == Dialect::MySql => {
                i = b[i..]
                    .iter()
                    .position(|&x| x == b'\n')
                    .map_or(b.len(), |p| i + p + 1);
                out.push(' ');
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = find(b, i + 2, b"*/").map_or(b.len(), |p| p + 2);
                out.push(' ');
            }
            b'$' if dialect == Dialect::Postgres => {
                // `$1` is a parameter, `$tag$` or `$$` opens a dollar-quoted string.
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|&x| !(x.is_ascii_alphanumeric() || x == b'_'))
                    .map(|p| i + 1 + p);
                match tag_end {
                    Some(t)
                        if b[t] == b'$' && !b[i + 1..t].first().is_some_and(u8::is_ascii_digit) =>
                    {
                        let tag = &b[i..=t];
                        i = find(b, t + 1, tag).map_or(b.len(), |p| p + tag.len());
                        out.push('?');
                    }
                    _ => {
                        let end = tag_end.unwrap_or(b.len());
                        out.push_str(&statement[i..end]);
                        i = end;
                    }
                }
            }
            b'0'..=b'9' | b'.'
                if !prev_is_word(b, i)
                    && (c != b'.' || b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                i = skip_number(b, i);
                out.push('?');
            }
            b'x' | b'X' | b'b' | b'B' | b'e' | b'E' | b'n' | b'N'
                if b.get(i + 1) == Some(&b'\'') && !prev_is_word(b, i) =>
            {
                // X'ff', B'01', E'..', N'..': a prefixed string literal.
                let backslash = dialect == Dialect::MySql || matches!(c, b'e' | b'E');
                i = skip_quoted(b, i + 2, b'\'', backslash);
                out.push('?');
            }
            _ => {
                // Copy one whole character (statements are UTF-8; `i` is on a boundary).
                let len = utf8_len(c);
                let end = (i + len).min(b.len());
                out.push_str(statement.get(i..end).unwrap_or(""));
                i = end;
            }
        }
    }
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

fn prev_is_word(b: &[u8], i: usize) -> bool {
    i > 0
        && b.get(i - 1)
            .is_some_and(|&p| p.is_ascii_alphanumeric() || p == b'_' || p == b'$' || p >= 0x80)
}

/// The index after the closing `quote` (doubled quotes, and backslash escapes when
/// `backslash`, stay inside); the end when the literal is unterminated (cut).
fn skip_quoted(b: &[u8], mut i: usize, quote: u8, backslash: bool) -> usize {
    while i < b.len() {
        let c = b[i];
        if backslash && c == b'\\' {
            i += 2;
        } else if c == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// The index after a numeric literal starting at `i` (`42`, `3.14`, `1e-5`, `0x1F`).
fn skip_number(b: &[u8], mut i: usize) -> usize {
    if b.get(i) == Some(&b'0') && matches!(b.get(i + 1), Some(b'x' | b'X')) {
        i += 2;
        while b.get(i).is_some_and(u8::is_ascii_hexdigit) {
            i += 1;
        }
        return i;
    }
    while let Some(&c) = b.get(i) {
        if c.is_ascii_digit() || c == b'.' {
            i += 1;
        } else if matches!(c, b'e' | b'E')
            && (b.get(i + 1).is_some_and(u8::is_ascii_digit)
                || (matches!(b.get(i + 1), Some(b'+' | b'-'))
                    && b.get(i + 2).is_some_and(u8::is_ascii_digit)))
        {
            i += 2;
        } else {
            break;
        }
    }
    i
}

fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

/// The statement's operation: its first keyword, upper case (`select` → `SELECT`), after
/// comments and an opening parenthesis; `None` when it does not start with a word.
pub fn operation(statement: &str) -> Option<String> {
    let mut s = statement.trim_start();
    loop {
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else if let Some(rest) = s.strip_prefix('(') {
            s = rest.trim_start();
        } else {
            break;
        }
    }
    let word: String = s
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .take(32)
        .collect();
    (!word.is_empty()).then(|| word.to_ascii_uppercase())
}

/// The longest start of `s` of at most `max` bytes that ends on a character boundary.
pub fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Text of a statement from the wire: UTF-8 (lossy), without the NUL terminator.
pub fn text(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_become_placeholders_and_identifiers_stay() {
        let cases = [
            (
                "SELECT * FROM users WHERE email = 'a@b.c' AND id = 42",
                "SELECT * FROM users WHERE email = ? AND id = ?",
            ),
            (
                "ALTER USER bob PASSWORD 'hunter2'",
                "ALTER USER bob PASSWORD ?",
            ),
            (
                "select \"Col1\", t2.x from t2 where y in (1, 2.5, -3e10)",
                "select \"Col1\", t2.x from t2 where y in (?, ?, -?)",
            ),
            (
                "SELECT 'it''s' -- secret comment\nFROM t",
                "SELECT ?  FROM t",
            ),
            (
                "SELECT $1, $body$ secret $x$ $body$, $$x$$ /* c */ FROM t1",
                "SELECT $1, ?, ?   FROM t1",
            ),
            (
                "SELECT E'a\\'b', X'ff', B'01' FROM tab9",
                "SELECT ?, ?, ? FROM tab9",
            ),
            (
                "INSERT INTO t VALUES ('unterminated",
                "INSERT INTO t VALUES (?",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                sanitize(input, Dialect::Postgres),
                want,
                "sanitizing {input:?}"
            );
        }
        assert_eq!(
            sanitize(
                "SELECT \"secret\", `col` FROM t # note\nWHERE a = 0x1F AND b = 'x\\'y'",
                Dialect::MySql
            ),
            "SELECT ?, `col` FROM t  WHERE a = ? AND b = ?"
        );
    }

    #[test]
    fn operation_is_the_first_keyword() {
        assert_eq!(operation("  select 1").as_deref(), Some("SELECT"));
        assert_eq!(
            operation("/* app */ -- x\n(SELECT 1)").as_deref(),
            Some("SELECT")
        );
        assert_eq!(operation("123"), None);
        assert_eq!(operation(""), None);
    }

    #[test]
    fn any_input_is_sanitized_without_panicking() {
        let mut rng = crate::decode::testing::Rng(0x9e37_79b9_7f4a_7c15);
        let alphabet = "ab1'\"`$-/*#\\.eEx\n é€0";
        let chars: Vec<char> = alphabet.chars().collect();
        for _ in 0..5000 {
            let len = rng.below(40);
            let s: String = (0..len).map(|_| chars[rng.below(chars.len())]).collect();
            let out = sanitize(&s, Dialect::Postgres);
            if !s.contains(['"', '`']) {
                assert!(!out.contains('\''), "a quote left in {out:?} from {s:?}");
            }
            let _ = sanitize(&s, Dialect::MySql);
        }
    }
}
