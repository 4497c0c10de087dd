//! MySQL client/server protocol framing: packets (`<length:u24 LE><sequence:u8><payload>`), the
//! server's greeting, the client's handshake response, and the generic response packets (OK,
//! ERR, EOF, a result set's column count). Lengths from the wire are checked; a packet running
//! past the captured bytes is returned as far as captured.

use crate::decode::sql::clip;

/// One packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    pub seq: u8,
    /// The payload as captured.
    pub payload: &'a [u8],
    /// Whether the payload was captured whole.
    pub whole: bool,
}

/// The packet at the start of `b` and the bytes it takes in the stream; `None` when the bytes
/// end inside its header.
pub fn packet(b: &[u8]) -> Option<(Packet<'_>, usize)> {
    let header = b.get(..4)?;
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    let total = len.checked_add(4)?;
    let end = total.min(b.len());
    Some((
        Packet {
            seq: header[3],
            payload: &b[4..end],
            whole: end == total,
        },
        total,
    ))
}

/// The packets of `b`, in order, the last one maybe cut.
pub fn packets(b: &[u8]) -> impl Iterator<Item = Packet<'_>> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let (p, took) = packet(b.get(at..)?)?;
        at = at.saturating_add(took);
        Some(p)
    })
}

/// A length-encoded integer at the start of `b`, and the bytes it takes.
pub fn lenenc(b: &[u8]) -> Option<(u64, usize)> {
    let le = |n: usize| -> Option<u64> {
        let bytes = b.get(1..=n)?;
        Some(
            bytes
                .iter()
                .rev()
                .fold(0u64, |acc, &x| acc << 8 | u64::from(x)),
        )
    };
    match *b.first()? {
        x @ 0..=0xfa => Some((u64::from(x), 1)),
        0xfc => Some((le(2)?, 3)),
        0xfd => Some((le(3)?, 4)),
        0xfe => Some((le(8)?, 9)),
        _ => None,
    }
}

/// The NUL-terminated string at the start of `b` and the rest after it.
fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let p = b.iter().position(|c| *c == 0)?;
    Some((&b[..p], &b[p + 1..]))
}

/// Capability flags that matter here.
pub mod caps {
    pub const CONNECT_WITH_DB: u32 = 0x0000_0008;
    pub const PROTOCOL_41: u32 = 0x0000_0200;
    pub const SSL: u32 = 0x0000_0800;
    pub const SECURE_CONNECTION: u32 = 0x0000_8000;
    pub const PLUGIN_AUTH_LENENC_DATA: u32 = 0x0020_0000;
    pub const DEPRECATE_EOF: u32 = 0x0100_0000;
}

/// Whether `payload` is a server greeting (HandshakeV10): protocol 10 and a printable,
/// NUL-terminated version.
pub fn is_greeting(payload: &[u8]) -> bool {
    payload.first() == Some(&10)
        && cstr(&payload[1..]).is_some_and(|(v, _)| {
            (1..=64).contains(&v.len()) && v.iter().all(|c| c.is_ascii_graphic() || *c == b' ')
        })
}

/// What the client's handshake response says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Login {
    pub capabilities: u32,
    pub user: String,
    pub database: String,
    /// An SSLRequest: TLS follows.
    pub tls: bool,
}

/// The client's HandshakeResponse41 (or SSLRequest); the auth data is skipped, never read.
pub fn login(payload: &[u8]) -> Option<Login> {
    let capabilities = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?);
    if capabilities & caps::PROTOCOL_41 == 0 {
        return None;
    }
    let mut login = Login {
        capabilities,
        ..Login::default()
    };
    if capabilities & caps::SSL != 0 && payload.len() == 32 {
        login.tls = true;
        return Some(login);
    }
    let (user, rest) = cstr(payload.get(32..)?)?;
    login.user = clip(&String::from_utf8_lossy(user), 128).to_owned();
    let rest = if capabilities & caps::PLUGIN_AUTH_LENENC_DATA != 0 {
        let (n, took) = lenenc(rest)?;
        rest.get(took.checked_add(usize::try_from(n).ok()?)?..)?
    } else if capabilities & caps::SECURE_CONNECTION != 0 {
        let n = usize::from(*rest.first()?);
        rest.get(1 + n..)?
    } else {
        cstr(rest)?.1
    };
    if capabilities & caps::CONNECT_WITH_DB != 0 {
        if let Some((db, _)) = cstr(rest) {
            login.database = clip(&String::from_utf8_lossy(db), 128).to_owned();
        }
    }
    Some(login)
}

/// The first packet of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// OK: rows affected.
    Ok { affected: Option<u64> },
    /// ERR: code, SQLSTATE, message.
    Err {
        code: u16,
        sql_state: String,
        message: String,
    },
    /// A result set of this many columns.
    ResultSet { columns: u64 },
    /// LOCAL INFILE request, or anything else.
    Other,
}

/// The first packet of a response to a command.
pub fn head(payload: &[u8]) -> Head {
    match payload.first() {
        Some(0x00) => Head::Ok {
            affected: payload.get(1..).and_then(lenenc).map(|(n, _)| n),
        },
        Some(0xff) => {
            let code = payload
                .get(1..3)
                .map_or(0, |c| u16::from_le_bytes([c[0], c[1]]));
            let (sql_state, message) = match payload.get(3..) {
                Some([b'#', rest @ ..]) => {
                    let state = rest.get(..5).unwrap_or(rest);
                    (state, rest.get(5..).unwrap_or_default())
                }
                Some(rest) => (&[][..], rest),
                None => (&[][..], &[][..]),
            };
            Head::Err {
                code,
                sql_state: String::from_utf8_lossy(sql_state).into_owned(),
                message: clip(&String::from_utf8_lossy(message), 256).to_owned(),
            }
        }
        Some(0xfb) | None => Head::Other,
        // MariaDB may add one byte after the count (its metadata-caching extension).
        Some(_) => match lenenc(payload) {
            Some((columns, took)) if payload.len() <= took + 1 && columns > 0 => {
                Head::ResultSet { columns }
            }
            _ => Head::Other,
        },
    }
}

/// Whether `payload` ends a result set's part: an EOF packet, or with `DEPRECATE_EOF` the OK
/// packet that replaces it (both start with `0xfe` and are short).
pub fn is_eof(payload: &[u8]) -> bool {
    payload.first() == Some(&0xfe) && payload.len() < 9
}
