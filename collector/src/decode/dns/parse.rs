//! DNS messages (RFC 1035 §4) from a message's first bytes: the header, the first question, the
//! first A/AAAA answers. Everything read is bounds-checked; names follow compression pointers
//! only backwards (so no loop can form) and stop at RFC 1035's 255 bytes.

use thiserror::Error;

/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 12;
/// Longest name on the wire (RFC 1035 §2.3.4), length octets included.
pub const MAX_NAME_WIRE: usize = 255;
/// Compression pointers followed in one name at most (they only go backwards, so this is a
/// bound on work, not on correctness).
pub const MAX_POINTERS: usize = 64;
/// A/AAAA answer addresses kept per answer.
pub const MAX_ADDRESSES: usize = 4;

/// Why a DNS message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ParseError {
    /// Shorter than a header.
    #[error("shorter than a DNS header")]
    ShortHeader,
    /// The question runs past the captured bytes.
    #[error("question cut short")]
    ShortQuestion,
    /// A label with the reserved 0x40/0x80 prefix.
    #[error("label of a reserved type")]
    BadLabel,
    /// A compression pointer that does not point strictly backwards, or too many of them.
    #[error("compression pointer loop or forward pointer")]
    BadPointer,
    /// A name longer than 255 bytes.
    #[error("name longer than 255 bytes")]
    NameTooLong,
    /// A TCP length prefix below a header's length.
    #[error("TCP length prefix shorter than a DNS header")]
    BadLength,
}

impl ParseError {
    /// Label of `clovisor_collector_decode_errors_total`.
    pub fn as_label(self) -> &'static str {
        match self {
            Self::ShortHeader => "dns_short_header",
            Self::ShortQuestion => "dns_short_question",
            Self::BadLabel => "dns_bad_label",
            Self::BadPointer => "dns_bad_pointer",
            Self::NameTooLong => "dns_name_too_long",
            Self::BadLength => "dns_bad_length",
        }
    }
}

/// The fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    /// QR: a response.
    pub response: bool,
    pub opcode: u8,
    pub authoritative: bool,
    pub truncated: bool,
    pub recursion_desired: bool,
    pub recursion_available: bool,
    /// The Z bit, zero in every sane message.
    pub z: bool,
    pub rcode: u8,
    pub qdcount: u16,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
}

/// The first question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Dotted, no trailing dot, `\DDD` escapes for bytes outside printable ASCII, `.` and `\`.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

impl Question {
    /// Same question, names compared without case (resolvers randomise it, "0x20 encoding").
    pub fn same(&self, other: &Question) -> bool {
        self.qtype == other.qtype
            && self.qclass == other.qclass
            && self.name.eq_ignore_ascii_case(&other.name)
    }
}

/// What is read of one DNS message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsMessage {
    pub header: Header,
    /// The first question; `None` when QDCOUNT is 0 (later messages of a zone transfer).
    pub question: Option<Question>,
    /// Addresses of the first A (4 bytes) and AAAA (16 bytes) answers, as far as captured.
    pub addresses: Vec<Vec<u8>>,
    /// Every section was read to its end and the message ends there: nothing cut, nothing
    /// left over. Detection trusts such a message more.
    pub exact: bool,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let end = at.checked_add(2)?;
    let s = b.get(at..end)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// Reads the header.
pub fn header(msg: &[u8]) -> Result<Header, ParseError> {
    let h = msg.get(..HEADER_LEN).ok_or(ParseError::ShortHeader)?;
    let (f1, f2) = (h[2], h[3]);
    Ok(Header {
        id: u16::from_be_bytes([h[0], h[1]]),
        response: f1 & 0x80 != 0,
        opcode: (f1 >> 3) & 0x0f,
        authoritative: f1 & 0x04 != 0,
        truncated: f1 & 0x02 != 0,
        recursion_desired: f1 & 0x01 != 0,
        recursion_available: f2 & 0x80 != 0,
        z: f2 & 0x40 != 0,
        rcode: f2 & 0x0f,
        qdcount: u16::from_be_bytes([h[4], h[5]]),
        ancount: u16::from_be_bytes([h[6], h[7]]),
        nscount: u16::from_be_bytes([h[8], h[9]]),
        arcount: u16::from_be_bytes([h[10], h[11]]),
    })
}

/// Where a name ends in the message, and optionally its text.
fn name(msg: &[u8], start: usize, mut text: Option<&mut String>) -> Result<usize, ParseError> {
    let mut pos = start;
    // Where the name ends in the message: after its first pointer, or its root label.
    let mut end = None;
    // Pointers must land strictly before every byte of the name read so far.
    let mut floor = start;
    let mut pointers = 0usize;
    let mut wire = 0usize;
    loop {
        let len = *msg.get(pos).ok_or(ParseError::ShortQuestion)?;
        match len & 0xc0 {
            0x00 => {
                wire += 1;
                if len == 0 {
                    return Ok(end.unwrap_or(pos + 1));
                }
                let from = pos + 1;
                let to = from + usize::from(len);
                let label = msg.get(from..to).ok_or(ParseError::ShortQuestion)?;
                wire += label.len();
                if wire > MAX_NAME_WIRE {
                    return Err(ParseError::NameTooLong);
                }
                if let Some(t) = text.as_deref_mut() {
                    if !t.is_empty() {
                        t.push('.');
                    }
                    for &b in label {
                        if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                            t.push(char::from(b));
                        } else {
                            t.push('\\');
                            t.push_str(&format!("{b:03}"));
                        }
                    }
                }
                pos = to;
            }
            0xc0 => {
                let low = *msg.get(pos + 1).ok_or(ParseError::ShortQuestion)?;
                let target = usize::from(len & 0x3f) << 8 | usize::from(low);
                pointers += 1;
                if target >= floor || pointers > MAX_POINTERS {
                    return Err(ParseError::BadPointer);
                }
                end.get_or_insert(pos + 2);
                floor = target;
                pos = target;
            }
            _ => return Err(ParseError::BadLabel),
        }
    }
}

/// A resource record's place and the parts of it that are read.
struct Record<'a> {
    /// Offset right after it.
    end: usize,
    rtype: u16,
    class: u16,
    data: &'a [u8],
}

/// Skips one resource record; `Ok(None)` when it runs past the captured bytes.
fn record(msg: &[u8], at: usize) -> Result<Option<Record<'_>>, ParseError> {
    let after_name = match name(msg, at, None) {
        Ok(n) => n,
        Err(ParseError::ShortQuestion) => return Ok(None),
        Err(e) => return Err(e),
    };
    let (Some(rtype), Some(class), Some(rdlen)) = (
        be16(msg, after_name),
        be16(msg, after_name + 2),
        be16(msg, after_name + 8),
    ) else {
        return Ok(None);
    };
    let data_start = after_name + 10;
    let data_end = data_start + usize::from(rdlen);
    match msg.get(data_start..data_end) {
        Some(data) => Ok(Some(Record {
            end: data_end,
            rtype,
            class,
            data,
        })),
        None => Ok(None),
    }
}

/// Reads one DNS message (its captured prefix). The header and the first question must be
/// there; the answers are read as far as captured.
pub fn message(msg: &[u8]) -> Result<DnsMessage, ParseError> {
    let header = header(msg)?;
    let mut pos = HEADER_LEN;
    let mut question = None;
    for i in 0..header.qdcount {
        let mut text = String::new();
        let after = match name(msg, pos, (i == 0).then_some(&mut text)) {
            Ok(a) => a,
            Err(ParseError::ShortQuestion) if i > 0 => {
                return Ok(partial(header, question, Vec::new()))
            }
            Err(e) => return Err(e),
        };
        let (Some(qtype), Some(qclass)) = (be16(msg, after), be16(msg, after + 2)) else {
            if i == 0 {
                return Err(ParseError::ShortQuestion);
            }
            return Ok(partial(header, question, Vec::new()));
        };
        if i == 0 {
            question = Some(Question {
                name: text,
                qtype,
                qclass,
            });
        }
        pos = after + 4;
    }
    let mut addresses = Vec::new();
    let records = u32::from(header.ancount) + u32::from(header.nscount) + u32::from(header.arcount);
    for i in 0..records {
        let Some(Record {
            end,
            rtype,
            class,
            data,
        }) = record(msg, pos)?
        else {
            return Ok(partial(header, question, addresses));
        };
        let answer = i < u32::from(header.ancount);
        if answer
            && class == 1
            && addresses.len() < MAX_ADDRESSES
            && matches!((rtype, data.len()), (1, 4) | (28, 16))
        {
            addresses.push(data.to_vec());
        }
        pos = end;
    }
    Ok(DnsMessage {
        header,
        question,
        addresses,
        exact: pos == msg.len(),
    })
}

fn partial(header: Header, question: Option<Question>, addresses: Vec<Vec<u8>>) -> DnsMessage {
    DnsMessage {
        header,
        question,
        addresses,
        exact: false,
    }
}

/// The DNS messages of a TCP message: each behind a 2-byte length (RFC 1035 §4.2.2). The last
/// may be cut (its prefix is returned). An error ends the split: the framing is lost.
pub fn split_tcp(payload: &[u8]) -> impl Iterator<Item = Result<&[u8], ParseError>> + '_ {
    let mut rest = Some(payload);
    std::iter::from_fn(move || {
        let r = rest?;
        if r.is_empty() {
            rest = None;
            return None;
        }
        let Some(len) = be16(r, 0) else {
            // A lone byte: the length itself was cut at snaplen.
            rest = None;
            return Some(Err(ParseError::ShortHeader));
        };
        let len = usize::from(len);
        if len < HEADER_LEN {
            rest = None;
            return Some(Err(ParseError::BadLength));
        }
        let body = &r[2..];
        if body.len() <= len {
            rest = None;
            Some(Ok(&body[..len.min(body.len())]))
        } else {
            rest = Some(&body[len..]);
            Some(Ok(&body[..len]))
        }
    })
}
