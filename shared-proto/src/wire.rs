//! Protobuf's wire format read by hand, with prost's semantics: for the decoders that read
//! fields in place instead of through prost's generic field loop (the collector's record
//! decoder, the correlator's session heads); and written by hand into room measured first
//! ([`Out`]: the session encoder, the probe's message records).

use prost::encoding::WireType;

/// Why bytes are not protobuf, as prost would refuse them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A varint longer than ten bytes, past `u64::MAX`, or cut short.
    #[error("invalid varint")]
    Varint,
    /// A field key past `u32::MAX`.
    #[error("invalid field key {key}")]
    Key {
        /// The key read.
        key: u64,
    },
    /// Wire type 6 or 7.
    #[error("invalid wire type {value}")]
    WireTypeValue {
        /// The wire type read.
        value: u64,
    },
    /// Field number 0.
    #[error("invalid field number 0")]
    FieldZero,
    /// A length or fixed-width value past the end of its message.
    #[error("a length past the end of its message")]
    Underflow,
    /// An end-group key with no group open, or closing another group.
    #[error("unexpected end group key")]
    EndGroup,
    /// Groups nested deeper than prost's recursion limit.
    #[error("nested too deep")]
    TooDeep,
}

type Result<T> = std::result::Result<T, WireError>;

/// Bytes written into room measured for them (`room`, from `at`): byte by byte, without the
/// capacity check `BufMut` makes per byte (prost's varints go through `put_u8`) nor a call into
/// the C library's `memcpy` for the many values of a byte or two. Past the room, bytes are
/// counted, not written: a caller finding more written than it measured encodes another way.
#[derive(Debug)]
pub(crate) struct Out<'a> {
    room: &'a mut [u8],
    at: usize,
}

impl<'a> Out<'a> {
    pub fn new(room: &'a mut [u8]) -> Self {
        Self { room, at: 0 }
    }

    /// Bytes written (or counted past the room) so far.
    pub fn written(&self) -> usize {
        self.at
    }

    /// The room not written yet (empty past its end).
    pub fn rest(&mut self) -> &mut [u8] {
        self.room.get_mut(self.at..).unwrap_or_default()
    }

    /// Counts `n` bytes written through [`Out::rest`].
    pub fn advance(&mut self, n: usize) {
        self.at += n;
    }

    #[inline]
    pub fn put(&mut self, b: u8) {
        if let Some(slot) = self.room.get_mut(self.at) {
            *slot = b;
        }
        self.at += 1;
    }

    #[inline]
    pub fn put_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.put(v as u8 | 0x80);
            v >>= 7;
        }
        self.put(v as u8);
    }

    #[inline]
    pub fn put_slice(&mut self, v: &[u8]) {
        if v.len() <= 16 {
            for &b in v {
                self.put(b);
            }
        } else if let Some(dst) = self.room.get_mut(self.at..self.at + v.len()) {
            dst.copy_from_slice(v);
            self.at += v.len();
        } else {
            self.at += v.len();
        }
    }

    #[inline]
    pub fn key(&mut self, tag: u32, wire_type: WireType) {
        self.put_varint(u64::from(tag << 3 | wire_type as u32));
    }
}

/// Reads a varint as prost does: at most ten bytes, the tenth 0 or 1. One and two bytes (keys,
/// lengths up to 16 KiB, small counters) inline.
#[inline(always)]
pub fn varint(buf: &mut &[u8]) -> Result<u64> {
    let bytes: &[u8] = buf;
    match bytes {
        [b0, rest @ ..] if *b0 < 0x80 => {
            *buf = rest;
            Ok(u64::from(*b0))
        }
        [b0, b1, rest @ ..] if *b1 < 0x80 => {
            *buf = rest;
            Ok(u64::from(b0 & 0x7f) | (u64::from(*b1) << 7))
        }
        _ => varint_long(buf),
    }
}

#[inline(never)]
fn varint_long(buf: &mut &[u8]) -> Result<u64> {
    let bytes = *buf;
    let mut value = 0u64;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            if i == 9 && b > 1 {
                return Err(WireError::Varint);
            }
            *buf = bytes.get(i + 1..).unwrap_or_default();
            return Ok(value);
        }
        if i == 9 {
            break;
        }
        i += 1;
    }
    Err(WireError::Varint)
}

/// A key's field number and wire type, checked as prost checks them.
pub fn split_key(key: u64) -> Result<(u32, WireType)> {
    let key = u32::try_from(key).map_err(|_| WireError::Key { key })?;
    let wire_type = match key & 7 {
        0 => WireType::Varint,
        1 => WireType::SixtyFourBit,
        2 => WireType::LengthDelimited,
        3 => WireType::StartGroup,
        4 => WireType::EndGroup,
        5 => WireType::ThirtyTwoBit,
        value => {
            return Err(WireError::WireTypeValue {
                value: u64::from(value),
            })
        }
    };
    match key >> 3 {
        0 => Err(WireError::FieldZero),
        tag => Ok((tag, wire_type)),
    }
}

/// The next key, split.
#[inline]
pub fn read_key(buf: &mut &[u8]) -> Result<(u32, WireType)> {
    split_key(varint(buf)?)
}

/// A length-delimited value: its bytes.
#[inline(always)]
pub fn delimited<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8]> {
    let len = varint(buf)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&len| len <= buf.len())
        .ok_or(WireError::Underflow)?;
    let (value, rest) = buf.split_at(len);
    *buf = rest;
    Ok(value)
}

/// A fixed 64-bit value.
#[inline(always)]
pub fn fixed64(buf: &mut &[u8]) -> Result<u64> {
    let (value, rest) = buf.split_first_chunk::<8>().ok_or(WireError::Underflow)?;
    *buf = rest;
    Ok(u64::from_le_bytes(*value))
}

/// `n` bytes skipped.
fn advance(buf: &mut &[u8], n: usize) -> Result<()> {
    *buf = buf.get(n..).ok_or(WireError::Underflow)?;
    Ok(())
}

/// Skips the value of field `tag` as prost's `skip_field` does, with `depth` levels of prost's
/// recursion budget left (each group level spends one; none left is an error).
pub fn skip(tag: u32, wire_type: WireType, buf: &mut &[u8], depth: u32) -> Result<()> {
    let Some(inner) = depth.checked_sub(1) else {
        return Err(WireError::TooDeep);
    };
    match wire_type {
        WireType::Varint => varint(buf).map(drop),
        WireType::SixtyFourBit => advance(buf, 8),
        WireType::ThirtyTwoBit => advance(buf, 4),
        WireType::LengthDelimited => delimited(buf).map(drop),
        WireType::StartGroup => loop {
            match read_key(buf)? {
                (end, WireType::EndGroup) if end == tag => return Ok(()),
                (_, WireType::EndGroup) => return Err(WireError::EndGroup),
                (t, w) => skip(t, w, buf, inner)?,
            }
        },
        WireType::EndGroup => Err(WireError::EndGroup),
    }
}
