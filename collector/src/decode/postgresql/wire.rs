//! PostgreSQL wire protocol (version 3) framing: the untyped packets a connection opens with
//! (startup, SSLRequest, GSSENCRequest, CancelRequest) and the typed messages after them
//! (`<tag:u8><length:u32 BE, itself included><body>`). Lengths from the wire are checked; a
//! message running past the captured bytes is returned as far as it was captured.

use crate::decode::sql::clip;

/// Protocol version 3.0 in a startup packet.
pub const PROTOCOL_3: u32 = 196_608;
/// The code of an SSLRequest.
pub const SSL_REQUEST: u32 = 80_877_103;
/// The code of a GSSENCRequest.
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// The code of a CancelRequest.
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// Longest startup packet accepted (the server's own limit is 10000 bytes).
pub const MAX_STARTUP: u32 = 10_000;

/// The packet a connection opens with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// A startup packet: who logs in to what.
    Startup {
        user: Option<String>,
        database: Option<String>,
    },
    /// The client asks for TLS; the server answers one byte, `S` (TLS follows) or `N`.
    SslRequest,
    /// The client asks for GSSAPI encryption; the server answers `G` or `N`.
    GssEncRequest,
    /// A request to cancel a query running on another connection.
    CancelRequest,
}

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// The opening packet at the start of `b`, if it is one (a startup packet may be cut: the
/// parameters read are kept).
pub fn opening(b: &[u8]) -> Option<Opening> {
    let len = be32(b)?;
    let code = be32(b.get(4..)?)?;
    match (len, code) {
        (8, SSL_REQUEST) => Some(Opening::SslRequest),
        (8, GSSENC_REQUEST) => Some(Opening::GssEncRequest),
        (16, CANCEL_REQUEST) => Some(Opening::CancelRequest),
        (9..=MAX_STARTUP, PROTOCOL_3) => {
            let end = usize::try_from(len).ok()?.min(b.len());
            let mut user = None;
            let mut database = None;
            let mut fields = b.get(8..end)?.split(|c| *c == 0);
            while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
                if k.is_empty() {
                    break;
                }
                let v = String::from_utf8_lossy(&v[..v.len().min(128)]).into_owned();
                match k {
                    b"user" => user = Some(v),
                    b"database" => database = Some(v),
                    _ => {}
                }
            }
            Some(Opening::Startup { user, database })
        }
        _ => None,
    }
}

/// One typed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub tag: u8,
    /// The body as captured.
    pub body: &'a [u8],
    /// Whether the body was captured whole.
    pub whole: bool,
}

/// The next typed message at the start of `b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next<'a> {
    /// A message (maybe cut: [`Frame::whole`]) and the bytes it takes in the stream.
    Frame(Frame<'a>, usize),
    /// The bytes end inside a message's header.
    Short,
    /// Not a message: the length is below 4.
    Bad,
}

/// The typed message at the start of `b`.
pub fn frame(b: &[u8]) -> Next<'_> {
    let (Some(&tag), Some(len)) = (b.first(), b.get(1..).and_then(be32)) else {
        return Next::Short;
    };
    if len < 4 || !tag.is_ascii_graphic() {
        return Next::Bad;
    }
    let Some(total) = usize::try_from(len).ok().and_then(|l| l.checked_add(1)) else {
        return Next::Bad;
    };
    let end = total.min(b.len());
    Next::Frame(
        Frame {
            tag,
            body: &b[5..end],
            whole: end == total,
        },
        total,
    )
}

/// The messages that close a server's answer at the very end of `b`, when `b` is the end of a
/// message whose middle was not captured: `ReadyForQuery` (the last 6 bytes) and, before it,
/// a whole `CommandComplete`, `EmptyQueryResponse` or `ErrorResponse` whose length ends exactly
/// where `ReadyForQuery` starts (the nearest such; checked, not assumed). `None` unless `b`
/// ends with a `ReadyForQuery`.
pub fn closing_frames(b: &[u8]) -> Option<[Option<Frame<'_>>; 2]> {
    let z = b.len().checked_sub(6)?;
    let ready = match frame(&b[z..]) {
        Next::Frame(f, 6) if f.tag == b'Z' && f.whole && matches!(f.body, [b'I' | b'T' | b'E']) => {
            f
        }
        _ => return None,
    };
    // The nearest start whose message ends at `z`: tags with a NUL-terminated body.
    let before = (0..z.saturating_sub(4)).rev().find_map(|q| {
        let tag = b[q];
        if !matches!(tag, b'C' | b'E' | b'I') {
            return None;
        }
        match frame(&b[q..z]) {
            Next::Frame(f, took) if f.whole && took == z - q => {
                let nul_ended = f.body.last() == Some(&0);
                let fits = match tag {
                    b'I' => f.body.is_empty(),
                    _ => nul_ended,
                };
                fits.then_some(f)
            }
            _ => None,
        }
    });
    Some([before, Some(ready)])
}

/// The NUL-terminated string at the start of `b`, and the rest after it; without a NUL (cut),
/// all of `b` and nothing.
pub fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|c| *c == 0) {
        Some(p) => (&b[..p], &b[p + 1..]),
        None => (b, &[]),
    }
}

/// An ErrorResponse's SQLSTATE code (`C`) and message (`M`), as far as captured.
pub fn error_fields(body: &[u8]) -> (String, String) {
    let mut code = String::new();
    let mut message = String::new();
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let (value, next) = cstr(after);
        match field {
            b'C' => code = clip(&String::from_utf8_lossy(value), 5).to_owned(),
            b'M' => message = clip(&String::from_utf8_lossy(value), 256).to_owned(),
            _ => {}
        }
        rest = next;
    }
    (code, message)
}

/// A CommandComplete tag's command and row count: `SELECT 3` → (`SELECT`, 3), `INSERT 0 5` →
/// (`INSERT`, 5), `CREATE TABLE` → (`CREATE TABLE`, none).
pub fn command_tag(tag: &[u8]) -> (String, Option<u64>) {
    let tag = String::from_utf8_lossy(cstr(tag).0);
    let mut words: Vec<&str> = tag.split(' ').filter(|w| !w.is_empty()).collect();
    let rows = match words.last().map(|w| w.parse::<u64>()) {
        Some(Ok(n)) => {
            words.pop();
            // INSERT's tag is `INSERT <oid> <rows>`.
            while words.last().is_some_and(|w| w.parse::<u64>().is_ok()) {
                words.pop();
            }
            Some(n)
        }
        _ => None,
    };
    let command = words.join(" ");
    (clip(&command, 64).to_owned(), rows)
}
