//! The analyzer ABI, version 1 (docs/analyzers.md): the names of the exports a module provides
//! and the layout of the result record `clovisor_parse` leaves in its memory. Everything here
//! reads bytes a user's module wrote: every length is checked against what is left, every
//! string must be UTF-8 of a bounded size, and nothing panics.

use std::collections::BTreeMap;

/// The module's linear memory.
pub const MEMORY: &str = "memory";
/// `clovisor_alloc(len: i32) -> i32`: where the host may write `len` bytes.
pub const ALLOC: &str = "clovisor_alloc";
/// `clovisor_parse(flow_ptr, flow_len, direction, data_ptr, data_len: i32) -> i64`: parses one
/// request or response at the start of the data; returns `result_ptr << 32 | result_len`.
pub const PARSE: &str = "clovisor_parse";
/// Optional `clovisor_port() -> i32`: a server port whose flows the analyzer claims (0: none).
pub const PORT: &str = "clovisor_port";
/// Optional `clovisor_detect(server_port, data_ptr, data_len: i32) -> i32`: 1 claims the flow
/// from its first bytes.
pub const DETECT: &str = "clovisor_detect";

/// `direction` argument of `clovisor_parse`: client to server (a request).
pub const REQUEST: i32 = 0;
/// `direction` argument of `clovisor_parse`: server to client (a response).
pub const RESPONSE: i32 = 1;

/// Flag bit: the parse found a whole request or response.
pub const FLAG_COMPLETE: u32 = 1;

/// Most fields one result may carry.
pub const MAX_FIELDS: usize = 32;
/// Longest field key, bytes.
pub const MAX_KEY: usize = 64;
/// Longest field value, bytes.
pub const MAX_VALUE: usize = 1024;
/// Longest protocol name for the leftover.
pub const MAX_NEXT: usize = 63;
/// Largest result record, bytes.
pub const MAX_RESULT: usize = 64 * 1024;

/// What one `clovisor_parse` call returned, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParseResult {
    /// Bytes of the data the parse used, at most the data's length.
    pub consumed: usize,
    /// A whole request or response was found.
    pub complete: bool,
    /// Its fields, by key.
    pub fields: BTreeMap<String, String>,
    /// The protocol of the bytes left over, when the analyzer names one (stacking).
    pub next: Option<String>,
}

/// Why a result record is refused (the `malformed` error of an analyzer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The record ends before what it announces.
    #[error("result record cut short at byte {at}")]
    Short {
        /// Offset where more bytes were needed.
        at: usize,
    },
    /// Bytes after the record.
    #[error("{extra} bytes after the result record")]
    Trailing {
        /// How many.
        extra: usize,
    },
    /// The record is larger than [`MAX_RESULT`].
    #[error("result record of {len} bytes exceeds {MAX_RESULT}")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// `consumed` is more than the data given.
    #[error("consumed {consumed} bytes of {given}")]
    Overconsumed {
        /// What the module said.
        consumed: usize,
        /// What it was given.
        given: usize,
    },
    /// Unknown flag bits.
    #[error("unknown flags {0:#x}")]
    Flags(u32),
    /// More than [`MAX_FIELDS`] fields.
    #[error("{0} fields, at most {MAX_FIELDS}")]
    TooManyFields(u32),
    /// A key that is empty, too long, or not of `[a-z0-9_.-]`.
    #[error("field key {0:?} is not 1 to {MAX_KEY} of a-z, 0-9, '_', '.', '-'")]
    Key(String),
    /// A value longer than [`MAX_VALUE`].
    #[error("value of field {key:?} is {len} bytes, at most {MAX_VALUE}")]
    ValueTooLong {
        /// Its key.
        key: String,
        /// Its length.
        len: usize,
    },
    /// A value or protocol name that is not UTF-8.
    #[error("{what} is not UTF-8")]
    NotUtf8 {
        /// Which string.
        what: &'static str,
    },
    /// A protocol name for the leftover that is not one.
    #[error("leftover protocol {0:?} is not 1 to {MAX_NEXT} of a-z, 0-9, '_', '.', '-'")]
    Next(String),
    /// `clovisor_port` returned a number that is no TCP port.
    #[error("clovisor_port returned {0}, not a port (0 to 65535)")]
    Port(i32),
    /// The pointer and length do not lie inside the module's memory.
    #[error("result at {ptr}+{len} lies outside the module's {memory} bytes of memory")]
    OutOfBounds {
        /// Result pointer.
        ptr: u32,
        /// Result length.
        len: u32,
        /// Memory size.
        memory: usize,
    },
}

/// The `(ptr, len)` packed into `clovisor_parse`'s return value.
pub fn unpack(ret: i64) -> (u32, u32) {
    let bits = ret as u64;
    ((bits >> 32) as u32, (bits & 0xffff_ffff) as u32)
}

/// The record at `ptr`..`ptr + len` of `memory`.
pub fn slice(memory: &[u8], ptr: u32, len: u32) -> Result<&[u8], Malformed> {
    let oob = || Malformed::OutOfBounds {
        ptr,
        len,
        memory: memory.len(),
    };
    let start = usize::try_from(ptr).map_err(|_| oob())?;
    let len_usize = usize::try_from(len).map_err(|_| oob())?;
    if len_usize > MAX_RESULT {
        return Err(Malformed::TooLarge { len: len_usize });
    }
    let end = start.checked_add(len_usize).ok_or_else(oob)?;
    memory.get(start..end).ok_or_else(oob)
}

/// A reader over the record that never reads past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let short = Malformed::Short { at: self.at };
        let end = self.at.checked_add(n).ok_or(short.clone())?;
        let out = self.bytes.get(self.at..end).ok_or(short)?;
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn len(&mut self) -> Result<usize, Malformed> {
        let n = self.u32()?;
        usize::try_from(n).map_err(|_| Malformed::Short { at: self.at })
    }

    fn done(&self) -> bool {
        self.at == self.bytes.len()
    }
}

fn is_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

/// Reads a result record (layout in docs/analyzers.md), for a call given `given` data bytes.
///
/// ```text
/// u32 consumed | u32 flags | u32 field_count
/// field_count × (u32 key_len | key | u32 value_len | value)
/// [u32 next_len | next]          (optional)
/// ```
/// All integers little-endian.
pub fn parse_result(record: &[u8], given: usize) -> Result<ParseResult, Malformed> {
    if record.len() > MAX_RESULT {
        return Err(Malformed::TooLarge { len: record.len() });
    }
    let mut r = Reader {
        bytes: record,
        at: 0,
    };
    let consumed = r.len()?;
    if consumed > given {
        return Err(Malformed::Overconsumed { consumed, given });
    }
    let flags = r.u32()?;
    if flags & !FLAG_COMPLETE != 0 {
        return Err(Malformed::Flags(flags));
    }
    let count = r.u32()?;
    if usize::try_from(count).map_or(true, |n| n > MAX_FIELDS) {
        return Err(Malformed::TooManyFields(count));
    }
    let mut fields = BTreeMap::new();
    for _ in 0..count {
        let klen = r.len()?;
        if klen > MAX_KEY {
            return Err(Malformed::Key(
                String::from_utf8_lossy(r.take(klen.min(MAX_KEY))?).into_owned(),
            ));
        }
        let key = std::str::from_utf8(r.take(klen)?).map_err(|_| Malformed::NotUtf8 {
            what: "a field key",
        })?;
        if !is_name(key, MAX_KEY) {
            return Err(Malformed::Key(key.to_owned()));
        }
        let vlen = r.len()?;
        if vlen > MAX_VALUE {
            return Err(Malformed::ValueTooLong {
                key: key.to_owned(),
                len: vlen,
            });
        }
        let value = std::str::from_utf8(r.take(vlen)?).map_err(|_| Malformed::NotUtf8 {
            what: "a field value",
        })?;
        fields.insert(key.to_owned(), value.to_owned());
    }
    let next = if r.done() {
        None
    } else {
        let n = r.len()?;
        let name =
            std::str::from_utf8(r.take(n.min(MAX_NEXT.saturating_add(1)))?).map_err(|_| {
                Malformed::NotUtf8 {
                    what: "the leftover protocol",
                }
            })?;
        if n > MAX_NEXT || !is_name(name, MAX_NEXT) {
            return Err(Malformed::Next(name.to_owned()));
        }
        Some(name.to_owned())
    };
    if !r.done() {
        return Err(Malformed::Trailing {
            extra: record.len().saturating_sub(r.at),
        });
    }
    Ok(ParseResult {
        consumed,
        complete: flags & FLAG_COMPLETE != 0,
        fields,
        next,
    })
}

/// Writes a result record: what a module's `clovisor_parse` leaves in its memory. The tests'
/// and a Rust analyzer's way to make one.
pub fn encode_result(result: &ParseResult) -> Vec<u8> {
    let mut out = Vec::new();
    let u32le = |out: &mut Vec<u8>, n: usize| {
        out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
    };
    u32le(&mut out, result.consumed);
    u32le(
        &mut out,
        if result.complete {
            FLAG_COMPLETE as usize
        } else {
            0
        },
    );
    u32le(&mut out, result.fields.len());
    for (k, v) in &result.fields {
        u32le(&mut out, k.len());
        out.extend_from_slice(k.as_bytes());
        u32le(&mut out, v.len());
        out.extend_from_slice(v.as_bytes());
    }
    if let Some(next) = &result.next {
        u32le(&mut out, next.len());
        out.extend_from_slice(next.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(consumed: usize, fields: &[(&str, &str)], next: Option<&str>) -> ParseResult {
        ParseResult {
            consumed,
            complete: true,
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            next: next.map(str::to_owned),
        }
    }

    fn le(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn a_well_formed_record_reads_back_as_written() {
        let r = result(12, &[("cmd", "GET"), ("key", "a b")], None);
        assert_eq!(parse_result(&encode_result(&r), 12), Ok(r));
        let stacked = result(5, &[], Some("http1"));
        assert_eq!(parse_result(&encode_result(&stacked), 20), Ok(stacked));
        let partial = ParseResult {
            complete: false,
            ..result(0, &[("cmd", "G")], None)
        };
        assert_eq!(parse_result(&encode_result(&partial), 1), Ok(partial));
    }

    #[test]
    fn every_cut_of_a_record_is_refused_not_misread() {
        let full = encode_result(&result(3, &[("cmd", "GET"), ("n", "1")], Some("x")));
        // The leftover protocol is optional: the record without it (5 bytes shorter) is whole.
        let without_next = full.len() - 5;
        assert_eq!(
            parse_result(&full[..without_next], 3).map(|r| r.next),
            Ok(None)
        );
        for cut in (0..full.len()).filter(|c| *c != without_next) {
            let got = parse_result(&full[..cut], 3);
            assert!(
                matches!(got, Err(Malformed::Short { .. })),
                "record cut at {cut} of {}: expected Short, got {got:?}",
                full.len()
            );
        }
    }

    #[test]
    fn malformed_records_name_what_is_wrong() {
        let one = 1u32.to_le_bytes();
        let zero = 0u32.to_le_bytes();
        let three = 3u32.to_le_bytes();
        let cases: Vec<(Vec<u8>, usize, Malformed)> = vec![
            (
                le(&[&9u32.to_le_bytes(), &one, &zero]),
                4,
                Malformed::Overconsumed {
                    consumed: 9,
                    given: 4,
                },
            ),
            (
                le(&[&zero, &6u32.to_le_bytes(), &zero]),
                0,
                Malformed::Flags(6),
            ),
            (
                le(&[&zero, &one, &99u32.to_le_bytes()]),
                0,
                Malformed::TooManyFields(99),
            ),
            (
                le(&[&zero, &one, &one, &three, b"C D", &zero]),
                0,
                Malformed::Key("C D".into()),
            ),
            (
                le(&[&zero, &one, &one, &zero, &zero]),
                0,
                Malformed::Key(String::new()),
            ),
            (
                le(&[
                    &zero,
                    &one,
                    &one,
                    &one,
                    b"k",
                    &2u32.to_le_bytes(),
                    b"\xff\xfe",
                ]),
                0,
                Malformed::NotUtf8 {
                    what: "a field value",
                },
            ),
            (
                le(&[&zero, &one, &one, &one, b"k", &5000u32.to_le_bytes()]),
                0,
                Malformed::ValueTooLong {
                    key: "k".into(),
                    len: 5000,
                },
            ),
            (
                le(&[&zero, &one, &zero, &three, b"A/B"]),
                0,
                Malformed::Next("A/B".into()),
            ),
            (
                le(&[&zero, &one, &zero, &one, b"x", b"junk"]),
                0,
                Malformed::Trailing { extra: 4 },
            ),
        ];
        for (record, given, want) in cases {
            assert_eq!(
                parse_result(&record, given),
                Err(want.clone()),
                "record {record:?} should be refused as {want}"
            );
        }
        assert_eq!(
            parse_result(&vec![0; MAX_RESULT + 1], 0),
            Err(Malformed::TooLarge {
                len: MAX_RESULT + 1
            })
        );
    }

    #[test]
    fn pointers_outside_memory_are_refused() {
        let memory = [0u8; 100];
        assert_eq!(slice(&memory, 90, 10).map(<[u8]>::len), Ok(10));
        assert!(matches!(
            slice(&memory, 95, 10),
            Err(Malformed::OutOfBounds { .. })
        ));
        assert!(matches!(
            slice(&memory, u32::MAX, u32::MAX),
            Err(Malformed::TooLarge { .. })
        ));
        assert!(matches!(
            slice(&memory, u32::MAX, 8),
            Err(Malformed::OutOfBounds { .. })
        ));
        assert_eq!(unpack((7i64 << 32) | 9), (7, 9));
        assert_eq!(unpack(-1), (u32::MAX, u32::MAX));
    }
}
