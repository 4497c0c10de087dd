//! RESP2 and RESP3 framing: commands (arrays of bulk strings, or inline) from a client message,
//! replies from a server message. Everything from the wire is bounds-checked; a value that
//! runs past the captured bytes is [`Parsed::Incomplete`], not an error.

/// Deepest nesting of aggregates followed; deeper is malformed (a real reply is rarely beyond 4).
pub const MAX_DEPTH: usize = 16;
/// Longest key kept, in bytes.
pub const MAX_KEY: usize = 256;
/// Longest error message kept, in bytes.
pub const MAX_ERROR: usize = 256;

/// The outcome of parsing one value at the start of a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// A whole value, and the bytes it took.
    Done(T, usize),
    /// The bytes end inside the value.
    Incomplete,
    /// Not RESP.
    Malformed,
}

/// One command: what the decoder keeps of it (never its values).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Command {
    /// The command's name, upper case (`GET`); a known subcommand is not part of it.
    pub name: String,
    /// The subcommand (`CONFIG GET` → `GET`) of commands that have them, upper case.
    pub subcommand: Option<String>,
    /// The first key, for commands whose first argument is a key.
    pub key: Option<String>,
    /// Arguments after the name (and subcommand, and key).
    pub more_args: usize,
    /// The command was cut at the capture limit: only its start was read.
    pub truncated: bool,
}

/// The RESP type of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyType {
    SimpleString,
    Error,
    Integer,
    BulkString,
    Array,
    Null,
    Double,
    Boolean,
    BlobError,
    VerbatimString,
    BigNumber,
    Map,
    Set,
    /// RESP3 out-of-band data (pub/sub messages, invalidations): not a reply to a command.
    Push,
}

impl ReplyType {
    /// The name in sessions (`simple_string`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SimpleString => "simple_string",
            Self::Error => "error",
            Self::Integer => "integer",
            Self::BulkString => "bulk_string",
            Self::Array => "array",
            Self::Null => "null",
            Self::Double => "double",
            Self::Boolean => "boolean",
            Self::BlobError => "blob_error",
            Self::VerbatimString => "verbatim_string",
            Self::BigNumber => "big_number",
            Self::Map => "map",
            Self::Set => "set",
            Self::Push => "push",
        }
    }
}

/// One reply: its type, and the error when it is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: ReplyType,
    /// The error's prefix (`ERR`, `WRONGTYPE`, ...) and message, for error replies.
    pub error: Option<(String, String)>,
}

/// The line at the start of `b` without its CRLF, and the bytes up to after the CRLF.
fn line(b: &[u8]) -> Option<(&[u8], usize)> {
    let end = b.windows(2).position(|w| w == b"\r\n")?;
    Some((&b[..end], end + 2))
}

/// A RESP length or integer (`-1` for null).
fn number(digits: &[u8]) -> Option<i64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A bulk string's payload (`$<n>\r\n<n bytes>\r\n`) whose header is at `b`: its bytes (`None`
/// for a null), the bytes taken.
fn bulk(b: &[u8]) -> Parsed<Option<&[u8]>> {
    let Some((head, at)) = line(b) else {
        return Parsed::Incomplete;
    };
    let Some(n) = head.get(1..).and_then(number) else {
        return Parsed::Malformed;
    };
    if n == -1 {
        return Parsed::Done(None, at);
    }
    let Ok(n) = usize::try_from(n) else {
        return Parsed::Malformed;
    };
    let Some(end) = at.checked_add(n).and_then(|e| e.checked_add(2)) else {
        return Parsed::Malformed;
    };
    match b.get(at..end) {
        Some(v) if v.ends_with(b"\r\n") => Parsed::Done(Some(&v[..n]), end),
        Some(_) => Parsed::Malformed,
        None => Parsed::Incomplete,
    }
}

/// Whether the flow's first client bytes look like a RESP command: `*<n>\r\n$`.
pub fn looks_like_command(b: &[u8]) -> bool {
    let Some(rest) = b.strip_prefix(b"*") else {
        return false;
    };
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    (1..=7).contains(&digits) && rest.get(digits..digits + 3) == Some(b"\r\n$")
}

/// Commands without a key as their first argument.
const KEYLESS: &[&str] = &[
    "AUTH",
    "HELLO",
    "PING",
    "ECHO",
    "SELECT",
    "INFO",
    "QUIT",
    "RESET",
    "FLUSHDB",
    "FLUSHALL",
    "DBSIZE",
    "MULTI",
    "EXEC",
    "DISCARD",
    "UNWATCH",
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "SSUBSCRIBE",
    "UNSUBSCRIBE",
    "PUNSUBSCRIBE",
    "SUNSUBSCRIBE",
    "PUBLISH",
    "SPUBLISH",
    "SCAN",
    "KEYS",
    "EVAL",
    "EVALSHA",
    "EVAL_RO",
    "EVALSHA_RO",
    "FCALL",
    "FCALL_RO",
    "XREAD",
    "XREADGROUP",
    "MONITOR",
    "SAVE",
    "BGSAVE",
    "BGREWRITEAOF",
    "TIME",
    "LASTSAVE",
    "WAIT",
    "WAITAOF",
    "SHUTDOWN",
    "SWAPDB",
    "ROLE",
    "REPLICAOF",
    "SLAVEOF",
    "SYNC",
    "PSYNC",
    "FAILOVER",
    "LOLWUT",
    "READONLY",
    "READWRITE",
    "RANDOMKEY",
    "MIGRATE",
    "ASKING",
    "REPLCONF",
];

/// Commands whose first argument is a subcommand (`CONFIG GET`), and none a key.
const WITH_SUBCOMMAND: &[&str] = &[
    "CONFIG", "CLIENT", "CLUSTER", "COMMAND", "SCRIPT", "FUNCTION", "ACL", "MEMORY", "OBJECT",
    "SLOWLOG", "LATENCY", "MODULE", "PUBSUB", "XINFO", "XGROUP", "DEBUG", "SENTINEL",
];

/// The command at the start of `b` (a RESP array of bulk strings, or an inline command).
/// `cut`: the bytes end at the capture limit, so a command running past them is kept as far
/// as it was read ([`Command::truncated`]) instead of being [`Parsed::Incomplete`].
pub fn command(b: &[u8], cut: bool) -> Parsed<Command> {
    match b.first() {
        Some(b'*') => array_command(b, cut),
        Some(c) if c.is_ascii_alphabetic() => inline_command(b, cut),
        Some(_) => Parsed::Malformed,
        None => Parsed::Incomplete,
    }
}

fn array_command(b: &[u8], cut: bool) -> Parsed<Command> {
    let Some((head, mut at)) = line(b) else {
        return Parsed::Incomplete;
    };
    let Some(n) = head.get(1..).and_then(number) else {
        return Parsed::Malformed;
    };
    let Ok(n) = usize::try_from(n) else {
        return Parsed::Malformed;
    };
    if n == 0 {
        return Parsed::Malformed;
    }
    let mut args: Vec<&[u8]> = Vec::with_capacity(n.min(3));
    let mut read = 0usize;
    while read < n {
        let rest = &b[at..];
        if rest.first() != Some(&b'$') {
            return if rest.is_empty() {
                incomplete_command(&args, n, cut, b.len())
            } else {
                Parsed::Malformed
            };
        }
        match bulk(rest) {
            Parsed::Done(Some(v), took) => {
                if args.len() < 3 {
                    args.push(v);
                }
                at += took;
            }
            Parsed::Done(None, _) | Parsed::Malformed => return Parsed::Malformed,
            Parsed::Incomplete => return incomplete_command(&args, n, cut, b.len()),
        }
        read += 1;
    }
    Parsed::Done(build(&args, n, false), at)
}

/// A command running past the bytes: kept, as far as read, when they end at the capture limit
/// and its name was read; it then takes all `len` bytes.
fn incomplete_command(args: &[&[u8]], n: usize, cut: bool, len: usize) -> Parsed<Command> {
    if cut && !args.is_empty() {
        Parsed::Done(build(args, n, true), len)
    } else {
        Parsed::Incomplete
    }
}

fn inline_command(b: &[u8], cut: bool) -> Parsed<Command> {
    let (text, took, truncated) = match line(b) {
        Some((l, took)) => (l, took, false),
        None if cut => (b, b.len(), true),
        None => return Parsed::Incomplete,
    };
    if text.iter().any(|&c| c < 0x20 && c != b'\t') {
        return Parsed::Malformed;
    }
    let words: Vec<&[u8]> = text
        .split(|c| *c == b' ' || *c == b'\t')
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return Parsed::Malformed;
    }
    let first3: Vec<&[u8]> = words.iter().take(3).copied().collect();
    Parsed::Done(build(&first3, words.len(), truncated), took)
}

/// A command from its first (up to three) arguments and its argument count.
fn build(args: &[&[u8]], n: usize, truncated: bool) -> Command {
    let name = args
        .first()
        .map(|a| String::from_utf8_lossy(&a[..a.len().min(32)]).to_ascii_uppercase())
        .unwrap_or_default();
    let mut cmd = Command {
        truncated,
        ..Command::default()
    };
    let mut taken = 1;
    if WITH_SUBCOMMAND.contains(&name.as_str()) {
        if let Some(sub) = args
            .get(1)
            .filter(|s| s.len() <= 32 && s.iter().all(|c| c.is_ascii_alphabetic() || *c == b'-'))
        {
            cmd.subcommand = Some(String::from_utf8_lossy(sub).to_ascii_uppercase());
            taken = 2;
        }
    } else if !KEYLESS.contains(&name.as_str()) {
        if let Some(key) = args.get(1) {
            cmd.key = Some(String::from_utf8_lossy(&key[..key.len().min(MAX_KEY)]).into_owned());
            taken = 2;
        }
    }
    cmd.more_args = n.saturating_sub(taken);
    cmd.name = name;
    cmd
}

impl Command {
    /// The statement as it may leave the collector: the name, the subcommand, the key, and a
    /// `?` for each further argument (at most 8, then `...`). `AUTH` and `HELLO` show no
    /// argument at all: not even their number.
    pub fn statement(&self) -> String {
        let mut s = self.name.clone();
        if matches!(self.name.as_str(), "AUTH" | "HELLO") {
            return s;
        }
        for part in [&self.subcommand, &self.key].into_iter().flatten() {
            s.push(' ');
            s.push_str(part);
        }
        for _ in 0..self.more_args.min(8) {
            s.push_str(" ?");
        }
        if self.more_args > 8 {
            s.push_str(" ...");
        }
        s
    }
}

/// The reply at the start of `b`.
pub fn reply(b: &[u8]) -> Parsed<Reply> {
    let mut at = 0;
    // RESP3 attributes (`|`) come before the reply they describe: skip them.
    while b.get(at) == Some(&b'|') {
        match skip(&b[at..], 0) {
            Parsed::Done((), took) => at += took,
            Parsed::Incomplete => return Parsed::Incomplete,
            Parsed::Malformed => return Parsed::Malformed,
        }
    }
    let rest = &b[at..];
    let Some(&t) = rest.first() else {
        return Parsed::Incomplete;
    };
    let kind = match t {
        b'+' => ReplyType::SimpleString,
        b'-' => ReplyType::Error,
        b':' => ReplyType::Integer,
        b'$' if rest.starts_with(b"$-1\r\n") => ReplyType::Null,
        b'$' => ReplyType::BulkString,
        b'*' if rest.starts_with(b"*-1\r\n") => ReplyType::Null,
        b'*' => ReplyType::Array,
        b'_' => ReplyType::Null,
        b',' => ReplyType::Double,
        b'#' => ReplyType::Boolean,
        b'!' => ReplyType::BlobError,
        b'=' => ReplyType::VerbatimString,
        b'(' => ReplyType::BigNumber,
        b'%' => ReplyType::Map,
        b'~' => ReplyType::Set,
        b'>' => ReplyType::Push,
        _ => return Parsed::Malformed,
    };
    let error = match kind {
        ReplyType::Error => line(rest).map(|(l, _)| l.get(1..).unwrap_or_default()),
        ReplyType::BlobError => match bulk(rest) {
            Parsed::Done(v, _) => v,
            _ => None,
        },
        _ => None,
    }
    .map(split_error);
    match skip(rest, 0) {
        Parsed::Done((), took) => Parsed::Done(Reply { kind, error }, at + took),
        Parsed::Incomplete => Parsed::Incomplete,
        Parsed::Malformed => Parsed::Malformed,
    }
}

/// The first reply at the start of `b` even though its end was not captured: its type and,
/// for an error, as much of the message as there is.
pub fn reply_start(b: &[u8]) -> Option<Reply> {
    let kind = match b.first()? {
        b'+' => ReplyType::SimpleString,
        b'-' => ReplyType::Error,
        b'$' => ReplyType::BulkString,
        b'*' => ReplyType::Array,
        b'%' => ReplyType::Map,
        b'~' => ReplyType::Set,
        b'=' => ReplyType::VerbatimString,
        _ => return None,
    };
    let error =
        (kind == ReplyType::Error).then(|| split_error(line(b).map_or(&b[1..], |(l, _)| &l[1..])));
    Some(Reply { kind, error })
}

/// `ERR unknown command 'x', with args beginning with: 'secret'` → (`ERR`, `unknown command
/// 'x'`): the prefix (an upper-case first word) and the message, without the arguments Redis
/// echoes back.
fn split_error(text: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(text);
    let (code, msg) = match text.split_once(' ') {
        Some((w, rest))
            if !w.is_empty() && w.bytes().all(|c| c.is_ascii_uppercase() || c == b'_') =>
        {
            (w.to_owned(), rest)
        }
        _ => (String::new(), text.as_ref()),
    };
    let msg = msg
        .split(", with args beginning with")
        .next()
        .unwrap_or_default();
    (code, crate::decode::sql::clip(msg, MAX_ERROR).to_owned())
}

/// Skips one whole value at the start of `b`.
fn skip(b: &[u8], depth: usize) -> Parsed<()> {
    if depth > MAX_DEPTH {
        return Parsed::Malformed;
    }
    let Some(&t) = b.first() else {
        return Parsed::Incomplete;
    };
    match t {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => match line(b) {
            Some((_, took)) => Parsed::Done((), took),
            None => Parsed::Incomplete,
        },
        b'$' | b'!' | b'=' => match bulk(b) {
            Parsed::Done(_, took) => Parsed::Done((), took),
            Parsed::Incomplete => Parsed::Incomplete,
            Parsed::Malformed => Parsed::Malformed,
        },
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let Some((head, mut at)) = line(b) else {
                return Parsed::Incomplete;
            };
            let Some(n) = head.get(1..).and_then(number) else {
                return Parsed::Malformed;
            };
            if n == -1 && t == b'*' {
                return Parsed::Done((), at);
            }
            let Ok(n) = u64::try_from(n) else {
                return Parsed::Malformed;
            };
            // Maps and attributes hold pairs.
            let Some(n) = n.checked_mul(if matches!(t, b'%' | b'|') { 2 } else { 1 }) else {
                return Parsed::Malformed;
            };
            // Every element takes at least 3 bytes: a count beyond that cannot be in `b`.
            for _ in 0..n {
                match skip(&b[at..], depth + 1) {
                    Parsed::Done((), took) => at += took,
                    other => return other,
                }
            }
            Parsed::Done((), at)
        }
        _ => Parsed::Malformed,
    }
}
