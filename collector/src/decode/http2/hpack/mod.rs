//! HPACK (RFC 7541): header blocks decoded against a dynamic table, one per connection and
//! direction.
//!
//! Written for hostile input: integers are bounded ([`MAX_INTEGER`]), the dynamic table is
//! capped ([`MAX_TABLE_SIZE`]) whatever the peers agreed, a block's header list is capped
//! ([`MAX_HEADER_LIST`]), and every failure is an [`HpackError`], never a panic.
//!
//! The probe captures only a prefix of each message, so a header block can be lost or cut. The
//! dynamic table is then *out of step* with the encoder's ([`Decoder::is_in_step`]): from then on
//! a reference into the dynamic table cannot be resolved, while static references and literals
//! still decode correctly. Such fields are reported unknown ([`Block::unknown`]), never guessed.
//! A table size update to 0 empties both tables, which brings the decoder back in step.

mod huffman;
mod huffman_table;
mod static_table;

use std::collections::VecDeque;

/// Largest integer accepted (2^28): more than any legitimate index, length or table size.
pub const MAX_INTEGER: u64 = 1 << 28;

/// Largest dynamic table kept, in HPACK's size units (entry bytes + 32 each). Peers may agree on
/// more; a size update beyond this is refused and leaves the decoder out of step.
pub const MAX_TABLE_SIZE: usize = 64 * 1024;

/// Largest header list decoded from one block (HPACK size units), like
/// `SETTINGS_MAX_HEADER_LIST_SIZE`.
pub const MAX_HEADER_LIST: usize = 64 * 1024;

/// The table size both ends start with (RFC 7540 `SETTINGS_HEADER_TABLE_SIZE` default).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// Why a header block could not be decoded. Bounded, so it can label a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    /// The block ends inside a field.
    #[error("header block ends inside a field")]
    Truncated,
    /// An integer beyond [`MAX_INTEGER`].
    #[error("HPACK integer overflow")]
    IntegerOverflow,
    /// Index 0, or beyond both tables.
    #[error("HPACK index out of range")]
    BadIndex,
    /// A malformed Huffman string.
    #[error("malformed Huffman string")]
    Huffman,
    /// A table size update beyond [`MAX_TABLE_SIZE`] or the agreed maximum.
    #[error("dynamic table size update too large")]
    TableSizeTooLarge,
    /// A table size update after the first field of a block.
    #[error("dynamic table size update after a field")]
    MisplacedSizeUpdate,
    /// The header list exceeds [`MAX_HEADER_LIST`].
    #[error("header list too large")]
    HeaderListTooLarge,
}

impl HpackError {
    /// Stable metric label for this reason.
    pub fn as_label(&self) -> &'static str {
        match self {
            Self::Truncated => "hpack_truncated",
            Self::IntegerOverflow => "hpack_integer_overflow",
            Self::BadIndex => "hpack_bad_index",
            Self::Huffman => "hpack_huffman",
            Self::TableSizeTooLarge => "hpack_table_size_too_large",
            Self::MisplacedSizeUpdate => "hpack_misplaced_size_update",
            Self::HeaderListTooLarge => "hpack_header_list_too_large",
        }
    }
}

/// What decoding one block found besides its fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Block {
    /// Fields that referred to the dynamic table while it was out of step: left out.
    pub unknown: u32,
}

/// A dynamic table entry: name and value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// A field as looked up: name and value.
type Field = (Vec<u8>, Vec<u8>);

/// One direction's HPACK decoding state.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first: dynamic index 62 is `entries[0]`.
    entries: VecDeque<Entry>,
    /// Current size in HPACK units.
    size: usize,
    /// Current maximum, as last set by a size update.
    max_size: usize,
    /// Whether the table is known to match the encoder's.
    in_step: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE,
            in_step: true,
        }
    }
}

fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len().saturating_add(value.len()).saturating_add(32)
}

/// A field's name or value as read: bytes, or unknown (a dynamic reference out of step).
enum Part {
    Known(Vec<u8>),
    Unknown,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, HpackError> {
        let b = *self.buf.get(self.pos).ok_or(HpackError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// An integer with an `n`-bit prefix (RFC 7541 5.1), the first byte already read.
    fn integer(&mut self, first: u8, n: u32) -> Result<u64, HpackError> {
        let mask = (1u16 << n) - 1;
        let mut value = u64::from(u16::from(first) & mask);
        if value < u64::from(mask) {
            return Ok(value);
        }
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            if shift > 28 {
                return Err(HpackError::IntegerOverflow);
            }
            value += u64::from(b & 0x7f) << shift;
            if value > MAX_INTEGER {
                return Err(HpackError::IntegerOverflow);
            }
            shift += 7;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
    }

    /// A string literal (RFC 7541 5.2), at most `limit` bytes decoded.
    fn string(&mut self, limit: usize) -> Result<Vec<u8>, HpackError> {
        let first = self.byte()?;
        let len = usize::try_from(self.integer(first, 7)?).map_err(|_| HpackError::Truncated)?;
        let end = self.pos.checked_add(len).ok_or(HpackError::Truncated)?;
        let raw = self.buf.get(self.pos..end).ok_or(HpackError::Truncated)?;
        self.pos = end;
        if first & 0x80 != 0 {
            let mut out = Vec::with_capacity(len.saturating_mul(8) / 5);
            huffman::decode(raw, &mut out, limit)?;
            Ok(out)
        } else if raw.len() > limit {
            Err(HpackError::HeaderListTooLarge)
        } else {
            Ok(raw.to_vec())
        }
    }
}

impl Decoder {
    /// Whether the dynamic table is known to match the encoder's.
    pub fn is_in_step(&self) -> bool {
        self.in_step
    }

    /// Marks the table out of step: a block was lost or cut.
    pub fn lose_step(&mut self) {
        self.in_step = false;
        self.entries.clear();
        self.size = 0;
    }

    /// Decodes one complete header block, calling `field` for each field whose name and value
    /// are known. On error the fields before it have been reported and the decoder is out of
    /// step. A block the capture cut is decoded as far as it goes by the caller, which then
    /// calls [`Decoder::lose_step`] (the rest may have changed the table).
    pub fn decode(
        &mut self,
        block: &[u8],
        field: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<Block, HpackError> {
        let r = self.decode_inner(block, field);
        if r.is_err() {
            self.lose_step();
        }
        r
    }

    fn decode_inner(
        &mut self,
        block: &[u8],
        field: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<Block, HpackError> {
        let mut r = Reader { buf: block, pos: 0 };
        let mut out = Block::default();
        let mut list_size = 0usize;
        let mut fields_seen = false;
        while r.pos < block.len() {
            let first = r.byte()?;
            if first & 0xe0 == 0x20 {
                // Dynamic table size update: only before the first field.
                if fields_seen {
                    return Err(HpackError::MisplacedSizeUpdate);
                }
                let size = usize::try_from(r.integer(first, 5)?)
                    .map_err(|_| HpackError::TableSizeTooLarge)?;
                if size > MAX_TABLE_SIZE {
                    return Err(HpackError::TableSizeTooLarge);
                }
                self.max_size = size;
                if size == 0 {
                    // Both tables are empty now: in step again.
                    self.in_step = true;
                }
                self.evict_to(size);
                continue;
            }
            fields_seen = true;
            let room = MAX_HEADER_LIST.saturating_sub(list_size);
            let (name, value, index) = if first & 0x80 != 0 {
                let i = r.integer(first, 7)?;
                match self.lookup(i)? {
                    Some((n, v)) => (Part::Known(n), Part::Known(v), false),
                    None => (Part::Unknown, Part::Unknown, false),
                }
            } else {
                let (n, index) = if first & 0x40 != 0 {
                    (6, true)
                } else {
                    // 0000xxxx without indexing, 0001xxxx never indexed.
                    (4, false)
                };
                let i = r.integer(first, n)?;
                let name = if i == 0 {
                    Part::Known(r.string(room)?)
                } else {
                    match self.lookup(i)? {
                        Some((n, _)) => Part::Known(n),
                        None => Part::Unknown,
                    }
                };
                let value = Part::Known(r.string(room)?);
                (name, value, index)
            };
            match (name, value) {
                (Part::Known(n), Part::Known(v)) => {
                    list_size = list_size.saturating_add(entry_size(&n, &v));
                    if list_size > MAX_HEADER_LIST {
                        return Err(HpackError::HeaderListTooLarge);
                    }
                    field(&n, &v);
                    if index {
                        self.insert(n, v);
                    }
                }
                _ => {
                    out.unknown = out.unknown.saturating_add(1);
                    // Still out of step: an insertion of an unknown field changes nothing known.
                }
            }
        }
        Ok(out)
    }

    /// Entry `index` of the static then dynamic table; `None` when dynamic and out of step.
    fn lookup(&self, index: u64) -> Result<Option<Field>, HpackError> {
        let i = usize::try_from(index).map_err(|_| HpackError::BadIndex)?;
        if i == 0 {
            return Err(HpackError::BadIndex);
        }
        if let Some(&(n, v)) = static_table::ENTRIES.get(i - 1) {
            return Ok(Some((n.to_vec(), v.to_vec())));
        }
        if !self.in_step {
            return Ok(None);
        }
        let d = i - 1 - static_table::ENTRIES.len();
        match self.entries.get(d) {
            Some((n, v)) => Ok(Some((n.to_vec(), v.to_vec()))),
            None => Err(HpackError::BadIndex),
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        if !self.in_step {
            return;
        }
        let size = entry_size(&name, &value);
        if size > self.max_size {
            // An entry larger than the table empties it (RFC 7541 4.4).
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - size);
        self.entries
            .push_front((name.into_boxed_slice(), value.into_boxed_slice()));
        self.size += size;
    }

    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            match self.entries.pop_back() {
                Some((n, v)) => self.size = self.size.saturating_sub(entry_size(&n, &v)),
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
