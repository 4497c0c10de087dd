//! Writing protobuf by hand, for the one message the correlator makes per exchange: its span.
//!
//! Building an OTLP `Span` struct and letting prost encode it cost more than everything else the
//! correlator does per exchange: every attribute key and value an owned `String`, every nested
//! message's length computed again at every level, then all of it freed. [`super::span`] writes
//! the span's bytes directly with these helpers instead; a decoded copy
//! ([`super::span::build_span`]) is what tests and other readers get.

use std::fmt::{self, Write as _};
use std::net::IpAddr;

/// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// Bytes `v` takes as a varint.
pub fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least 1.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends `v` as a varint.
pub fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn tag(buf: &mut Vec<u8>, field: u32, wire_type: u32) {
    varint(buf, u64::from(field << 3 | wire_type));
}

/// Bytes of a length-delimited field holding `len` bytes (tag of a field below 16 included).
pub fn len_field_size(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// A length-delimited field: bytes, a string, or an encoded message.
pub fn bytes(buf: &mut Vec<u8>, field: u32, value: &[u8]) {
    tag(buf, field, LEN);
    varint(buf, value.len() as u64);
    buf.extend_from_slice(value);
}

/// The head of a length-delimited field of `len` bytes, which the caller appends.
pub fn head(buf: &mut Vec<u8>, field: u32, len: usize) {
    tag(buf, field, LEN);
    varint(buf, len as u64);
}

/// A varint field (integers, enums, booleans).
pub fn uint(buf: &mut Vec<u8>, field: u32, value: u64) {
    tag(buf, field, VARINT);
    varint(buf, value);
}

/// A `fixed64` field.
pub fn fixed64(buf: &mut Vec<u8>, field: u32, value: u64) {
    tag(buf, field, FIXED64);
    buf.extend_from_slice(&value.to_le_bytes());
}

/// A `fixed32` field.
pub fn fixed32(buf: &mut Vec<u8>, field: u32, value: u32) {
    tag(buf, field, FIXED32);
    buf.extend_from_slice(&value.to_le_bytes());
}

/// A message field whose content `write` appends; its length is fixed up afterwards (one byte
/// is reserved for it, the content moved if it needs more).
pub fn message(buf: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    message_sized(buf, field, 1, write);
}

/// [`message`] reserving `reserve` bytes (1 or 2) for the length: 2 for content of 128 bytes
/// up to 16 KiB, which then is not moved.
pub fn message_sized(
    buf: &mut Vec<u8>,
    field: u32,
    reserve: usize,
    write: impl FnOnce(&mut Vec<u8>),
) {
    let reserve = reserve.clamp(1, 2);
    tag(buf, field, LEN);
    let at = buf.len();
    buf.resize(at + reserve, 0);
    write(buf);
    let start = at + reserve;
    let len = buf.len() - start;
    let size = varint_len(len as u64);
    if size != reserve {
        let end = buf.len();
        if size > reserve {
            buf.resize(end + size - reserve, 0);
        }
        buf.copy_within(start..end, at + size);
        buf.truncate(at + size + len);
    }
    let mut head = [0u8; 10];
    let mut n = 0;
    let mut v = len as u64;
    while v >= 0x80 {
        head[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    head[n] = v as u8;
    buf[at..at + size].copy_from_slice(&head[..size]);
}

/// Lets `write!` append to a byte buffer.
struct Utf8<'a>(&'a mut Vec<u8>);

impl fmt::Write for Utf8<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// OTLP attributes (`KeyValue`s) of one message, written as its repeated field `field`.
pub struct Attributes<'a> {
    buf: &'a mut Vec<u8>,
    field: u32,
}

/// `AnyValue` oneof members.
const ANY_STRING: u32 = 1;
const ANY_BOOL: u32 = 2;
const ANY_INT: u32 = 3;
const ANY_ARRAY: u32 = 5;

impl<'a> Attributes<'a> {
    /// Attributes of the message being written into `buf`, in its field `field`.
    pub fn new(buf: &'a mut Vec<u8>, field: u32) -> Self {
        Self { buf, field }
    }

    /// The `KeyValue` head: its tag and length, the key, and the value's tag and length.
    fn head(&mut self, key: &str, value_len: usize) {
        let kv_len = len_field_size(key.len()) + len_field_size(value_len);
        tag(self.buf, self.field, LEN);
        varint(self.buf, kv_len as u64);
        bytes(self.buf, 1, key.as_bytes());
        tag(self.buf, 2, LEN);
        varint(self.buf, value_len as u64);
    }

    /// A string attribute.
    pub fn str(&mut self, key: &str, value: &str) {
        self.head(key, len_field_size(value.len()));
        bytes(self.buf, ANY_STRING, value.as_bytes());
    }

    /// A string attribute formatted from `value`.
    pub fn display(&mut self, key: &str, value: impl fmt::Display) {
        let buf = &mut *self.buf;
        message(buf, self.field, |buf| {
            bytes(buf, 1, key.as_bytes());
            message(buf, 2, |buf| {
                message(buf, ANY_STRING, |buf| {
                    // Writing to a Vec cannot fail.
                    let _ = write!(Utf8(buf), "{value}");
                })
            })
        });
    }

    /// An address attribute, written as `Display` writes it. IPv4, every span's case, without
    /// the formatting machinery (a tenth of the span's encoding went to it).
    pub fn ip(&mut self, key: &str, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                let mut text = [0u8; 15];
                let mut n = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text[n] = b'.';
                        n += 1;
                    }
                    if octet >= 100 {
                        text[n] = b'0' + octet / 100;
                        n += 1;
                    }
                    if octet >= 10 {
                        text[n] = b'0' + octet / 10 % 10;
                        n += 1;
                    }
                    text[n] = b'0' + octet % 10;
                    n += 1;
                }
                // Digits and dots: ASCII. At most 15 bytes, so `n` is in range.
                let text = text.get(..n).unwrap_or_default();
                self.head(key, len_field_size(text.len()));
                bytes(self.buf, ANY_STRING, text);
            }
            IpAddr::V6(v6) => self.display(key, v6),
        }
    }

    /// An integer attribute.
    pub fn int(&mut self, key: &str, value: i64) {
        self.head(key, 1 + varint_len(value as u64));
        uint(self.buf, ANY_INT, value as u64);
    }

    /// A boolean attribute.
    pub fn bool(&mut self, key: &str, value: bool) {
        self.head(key, 2);
        uint(self.buf, ANY_BOOL, u64::from(value));
    }

    /// An array-of-strings attribute.
    pub fn strings(&mut self, key: &str, values: &[&str]) {
        let array: usize = values
            .iter()
            .map(|v| len_field_size(len_field_size(v.len())))
            .sum();
        self.head(key, len_field_size(array));
        tag(self.buf, ANY_ARRAY, LEN);
        varint(self.buf, array as u64);
        for v in values {
            // ArrayValue.values (1): AnyValue { string_value (1) }
            tag(self.buf, 1, LEN);
            varint(self.buf, len_field_size(v.len()) as u64);
            bytes(self.buf, ANY_STRING, v.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue};
    use prost::Message;

    /// What the attributes decode to, as prost reads an `Event` (attributes are field 3).
    fn decoded(write: impl FnOnce(&mut Attributes<'_>)) -> Vec<KeyValue> {
        let mut buf = Vec::new();
        write(&mut Attributes::new(&mut buf, 3));
        opentelemetry_proto::tonic::trace::v1::span::Event::decode(buf.as_slice())
            .unwrap_or_else(|e| panic!("written attributes must decode: {e}"))
            .attributes
    }

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    #[test]
    fn attributes_decode_as_prost_would_have_encoded_them() {
        let long = "x".repeat(300);
        let got = decoded(|a| {
            a.str("s", "value");
            a.str("empty", "");
            a.str("long", &long);
            a.int("zero", 0);
            a.int("n", 1 << 40);
            a.int("neg", -1);
            a.bool("t", true);
            a.bool("f", false);
            a.strings("arr", &["a", "", "bc"]);
            a.display("ip", std::net::Ipv4Addr::new(10, 0, 0, 1));
            a.display("long display", &long);
        });
        let want = vec![
            kv("s", Value::StringValue("value".into())),
            kv("empty", Value::StringValue(String::new())),
            kv("long", Value::StringValue(long.clone())),
            kv("zero", Value::IntValue(0)),
            kv("n", Value::IntValue(1 << 40)),
            kv("neg", Value::IntValue(-1)),
            kv("t", Value::BoolValue(true)),
            kv("f", Value::BoolValue(false)),
            kv(
                "arr",
                Value::ArrayValue(ArrayValue {
                    values: ["a", "", "bc"]
                        .iter()
                        .map(|v| AnyValue {
                            value: Some(Value::StringValue((*v).to_owned())),
                        })
                        .collect(),
                }),
            ),
            kv("ip", Value::StringValue("10.0.0.1".into())),
            kv("long display", Value::StringValue(long)),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn addresses_read_as_display_writes_them() {
        let mut addrs: Vec<IpAddr> = [0u8, 1, 9, 10, 42, 99, 100, 101, 199, 200, 255]
            .iter()
            .flat_map(|&a| {
                [
                    IpAddr::from([a, 0, 10, 255]),
                    IpAddr::from([10, a, 100, 7]),
                    IpAddr::from([192, 168, a, a]),
                ]
            })
            .collect();
        addrs.push("2001:db8::1".parse().unwrap_or(IpAddr::from([0u8; 16])));
        addrs.push("::ffff:10.0.0.1".parse().unwrap_or(IpAddr::from([0u8; 16])));
        for ip in addrs {
            let got = decoded(|a| a.ip("k", ip));
            assert_eq!(
                got,
                vec![kv("k", Value::StringValue(ip.to_string()))],
                "{ip}"
            );
        }
    }

    #[test]
    fn varints_and_nested_lengths() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut buf = Vec::new();
            varint(&mut buf, v);
            assert_eq!(buf.len(), varint_len(v), "length of {v}");
            assert_eq!(
                prost::encoding::decode_varint(&mut buf.as_slice()).ok(),
                Some(v)
            );
        }
        for reserve in [1, 2] {
            for n in [0usize, 1, 127, 128, 16_383, 16_384, 20_000] {
                let mut buf = vec![7];
                message_sized(&mut buf, 1, reserve, |b| {
                    b.extend(std::iter::repeat_n(9u8, n))
                });
                let mut want = vec![7];
                bytes(&mut want, 1, &vec![9u8; n]);
                assert_eq!(buf, want, "a message of {n} bytes, {reserve} reserved");
            }
        }
    }
}
