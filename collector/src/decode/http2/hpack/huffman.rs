//! Huffman-coded HPACK strings (RFC 7541, section 5.2 and Appendix B).

use std::sync::OnceLock;

use super::huffman_table::CODES;
use super::HpackError;

/// The longest code, in bits (EOS).
const MAX_BITS: usize = 30;

/// Per code length, the codes of that length with their symbols, sorted by code.
type ByLength = [Vec<(u32, u16)>; MAX_BITS + 1];

fn by_length() -> &'static ByLength {
    static TABLE: OnceLock<ByLength> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t: ByLength = std::array::from_fn(|_| Vec::new());
        for (symbol, &(code, bits)) in (0u16..).zip(CODES.iter()) {
            if let Some(list) = t.get_mut(usize::from(bits)) {
                list.push((code, symbol));
            }
        }
        for list in &mut t {
            list.sort_unstable();
        }
        t
    })
}

/// Symbol 256: may only appear as padding, never decoded.
const EOS: u16 = 256;

/// Decodes the Huffman-coded `input`, appending to `out`. Fails on EOS inside the string,
/// padding longer than 7 bits or not all ones, and (through `limit`) output beyond `limit`
/// bytes.
pub fn decode(input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), HpackError> {
    let table = by_length();
    let mut code: u32 = 0;
    let mut bits: usize = 0;
    for &byte in input {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            bits += 1;
            if bits > MAX_BITS {
                return Err(HpackError::Huffman);
            }
            let Some(list) = table.get(bits) else {
                return Err(HpackError::Huffman);
            };
            if list.is_empty() {
                continue;
            }
            if let Ok(i) = list.binary_search_by_key(&code, |&(c, _)| c) {
                let symbol = list[i].1;
                if symbol == EOS {
                    return Err(HpackError::Huffman);
                }
                if out.len() >= limit {
                    return Err(HpackError::HeaderListTooLarge);
                }
                // Symbols below 256 are bytes.
                out.push(u8::try_from(symbol).map_err(|_| HpackError::Huffman)?);
                code = 0;
                bits = 0;
            }
        }
    }
    // What is left is padding: fewer than 8 bits, all ones (the start of EOS).
    if bits > 7 || code != (1u32 << bits) - 1 {
        return Err(HpackError::Huffman);
    }
    Ok(())
}

#[cfg(test)]
pub(super) fn encode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc: u64 = 0;
    let mut n: u32 = 0;
    for &b in input {
        let (code, bits) = CODES[usize::from(b)];
        acc = (acc << bits) | u64::from(code);
        n += u32::from(bits);
        while n >= 8 {
            n -= 8;
            out.push((acc >> n) as u8);
        }
    }
    if n > 0 {
        let pad = 8 - n;
        out.push(((acc << pad) | ((1 << pad) - 1)) as u8);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_7541_examples_decode() {
        // C.4.1: "www.example.com"
        let enc = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        let mut out = Vec::new();
        decode(&enc, &mut out, 1024).expect("valid Huffman string");
        assert_eq!(out, b"www.example.com");
        // C.4.2: "no-cache"
        let mut out = Vec::new();
        decode(&[0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf], &mut out, 1024).expect("valid");
        assert_eq!(out, b"no-cache");
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        decode(&encode(&all), &mut out, 1024).expect("every symbol decodes");
        assert_eq!(out, all);
    }

    #[test]
    fn bad_padding_eos_and_limits_are_errors() {
        // Padding of zeros instead of ones ('0' is 00000, then 000 padding).
        assert_eq!(
            decode(&[0x00], &mut Vec::new(), 16),
            Err(HpackError::Huffman)
        );
        // A whole byte of padding.
        assert_eq!(
            decode(&[0x07, 0xff], &mut Vec::new(), 16),
            Err(HpackError::Huffman)
        );
        // EOS (30 ones) inside the string.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], &mut Vec::new(), 16),
            Err(HpackError::Huffman)
        );
        assert_eq!(
            decode(&encode(b"abcdef"), &mut Vec::new(), 3),
            Err(HpackError::HeaderListTooLarge)
        );
    }
}
