//! Trace and span ids: fixed-size, never all-zero (the W3C/OTel "invalid" value), lowercase hex.

use std::cell::RefCell;
use std::fmt;

use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};

thread_local! {
    /// Where ids are drawn: a fast generator per thread (xoshiro), seeded from the thread's
    /// cryptographic one when the thread first draws. Ids must be unique, not secret (they are
    /// shown in Jaeger and carried on the wire), as OpenTelemetry's own SDKs draw them; the
    /// cryptographic generator, drawn for every exchange, was 2 % of the correlator's time.
    static IDS: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// `N` random bytes from this thread's id generator.
fn random_bytes<const N: usize>() -> [u8; N] {
    IDS.with(|ids| ids.borrow_mut().random())
}

/// A 16-byte trace id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A fresh random id (never all-zero).
    pub fn random() -> Self {
        loop {
            let bytes: [u8; 16] = random_bytes();
            if bytes != [0; 16] {
                return Self(bytes);
            }
        }
    }

    /// A fresh random trace id and span id (neither all-zero), from one draw of the generator:
    /// what an exchange seen without a wire trace gets.
    pub fn random_with_span() -> (Self, SpanId) {
        loop {
            let bytes: [u8; 24] = random_bytes();
            let (trace, span) = bytes.split_at(16);
            if let (Some(trace), Some(span)) = (Self::from_bytes(trace), SpanId::from_bytes(span)) {
                return (trace, span);
            }
        }
    }

    /// The id in `bytes` when it is exactly 16 bytes and not all-zero.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 16] = bytes.try_into().ok()?;
        (arr != [0; 16]).then_some(Self(arr))
    }

    /// Parses 32 hex digits (either case).
    pub fn from_hex(hex: &str) -> Option<Self> {
        Self::from_hex_or_zero(hex).filter(|t| t.0 != [0; 16])
    }

    /// 32 hex digits, all zero too (no trace has that id: a filter that matches nothing).
    pub fn from_hex_or_zero(hex: &str) -> Option<Self> {
        let mut out = [0u8; 16];
        decode_hex(hex, &mut out)?;
        Some(Self(out))
    }
}

impl SpanId {
    /// A fresh random id (never all-zero).
    pub fn random() -> Self {
        loop {
            let bytes: [u8; 8] = random_bytes();
            if bytes != [0; 8] {
                return Self(bytes);
            }
        }
    }

    /// The id in `bytes` when it is exactly 8 bytes and not all-zero.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 8] = bytes.try_into().ok()?;
        (arr != [0; 8]).then_some(Self(arr))
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

fn decode_hex(hex: &str, out: &mut [u8]) -> Option<()> {
    let digits = hex.as_bytes();
    if digits.len() != out.len() * 2 {
        return None;
    }
    for (slot, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *slot = (hi * 16 + lo) as u8;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_is_lowercase() {
        let id = TraceId::from_hex("0AF7651916CD43DD8448EB211C80319C").expect("valid hex");
        assert_eq!(id.to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(
            SpanId([0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]).to_string(),
            "b7ad6b7169203331"
        );
    }

    #[test]
    fn invalid_ids_are_refused() {
        assert_eq!(
            TraceId::from_hex("00000000000000000000000000000000"),
            None,
            "all-zero"
        );
        assert_eq!(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319"),
            None,
            "31 digits"
        );
        assert_eq!(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319g"),
            None,
            "non-hex"
        );
        assert_eq!(TraceId::from_bytes(&[1; 15]), None, "15 bytes");
        assert_eq!(SpanId::from_bytes(&[0; 8]), None, "all-zero span id");
        assert_eq!(SpanId::from_bytes(&[1; 8]), Some(SpanId([1; 8])));
    }

    #[test]
    fn random_ids_differ_and_are_valid() {
        let a = SpanId::random();
        let b = SpanId::random();
        assert_ne!(a, b, "two random span ids collided: {a}");
        assert_ne!(a.0, [0; 8]);
        assert_ne!(TraceId::random().0, [0; 16]);
        let (t, s) = TraceId::random_with_span();
        let (t2, s2) = TraceId::random_with_span();
        assert!(t != t2 && s != s2, "two random pairs collided");
        assert!(t.0 != [0; 16] && s.0 != [0; 8]);
    }

    /// Threads draw from generators of their own, each seeded apart: no two threads give the
    /// same ids.
    #[test]
    fn ids_drawn_on_different_threads_differ() {
        let draw = || {
            (0..1000)
                .map(|_| TraceId::random_with_span())
                .collect::<Vec<_>>()
        };
        let threads: Vec<_> = (0..4).map(|_| std::thread::spawn(draw)).collect();
        let mut all: Vec<(TraceId, SpanId)> = draw();
        for t in threads {
            all.extend(t.join().expect("a drawing thread"));
        }
        let traces: std::collections::HashSet<TraceId> = all.iter().map(|(t, _)| *t).collect();
        let spans: std::collections::HashSet<SpanId> = all.iter().map(|(_, s)| *s).collect();
        assert_eq!(traces.len(), all.len());
        assert_eq!(spans.len(), all.len());
    }
}
