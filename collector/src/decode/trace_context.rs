//! Trace context carried in request headers: W3C `traceparent`/`tracestate` and Zipkin B3
//! (multi-header `x-b3-*` and single `b3`).
//!
//! The span id found on the wire belongs to the *caller*; the session we emit becomes its child,
//! so it lands in [`TraceContext::parent_span_id`].

use std::borrow::Cow;

use clovisor_proto::session::v1::{TraceContext, TraceFormat};

/// Why a trace header was rejected. Bounded, so it can label a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceContextError {
    /// `traceparent` does not follow the W3C grammar.
    #[error("malformed traceparent")]
    MalformedTraceparent,
    /// `traceparent` version `ff` is forbidden by the specification.
    #[error("traceparent version ff is invalid")]
    ForbiddenVersion,
    /// An all-zero trace id or span id.
    #[error("trace id or span id is all zeros")]
    ZeroId,
    /// A B3 header does not follow the B3 grammar.
    #[error("malformed b3 header")]
    MalformedB3,
}

impl TraceContextError {
    /// Stable metric label for this reason.
    pub fn as_label(&self) -> &'static str {
        match self {
            Self::MalformedTraceparent => "traceparent_malformed",
            Self::ForbiddenVersion => "traceparent_version_ff",
            Self::ZeroId => "trace_zero_id",
            Self::MalformedB3 => "b3_malformed",
        }
    }
}

/// Decodes exactly `N` bytes from `2 * N` lowercase hex digits.
fn lower_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Parses a W3C `traceparent` header strictly (Trace Context Level 1).
///
/// Version `00` must be exactly 55 characters; a higher version may append fields after a `-`
/// (forward compatibility), `ff` is invalid. Ids must be lowercase hex and not all zeros.
pub fn parse_traceparent(
    value: &str,
    tracestate: Option<&str>,
) -> Result<TraceContext, TraceContextError> {
    let b = value.trim_matches(|c| c == ' ' || c == '\t').as_bytes();
    if b.len() < 55 {
        return Err(TraceContextError::MalformedTraceparent);
    }
    let version = lower_hex::<1>(&b[0..2]).ok_or(TraceContextError::MalformedTraceparent)?[0];
    if version == 0xff {
        return Err(TraceContextError::ForbiddenVersion);
    }
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return Err(TraceContextError::MalformedTraceparent);
    }
    if version == 0 && b.len() != 55 {
        return Err(TraceContextError::MalformedTraceparent);
    }
    if version != 0 && b.len() > 55 && b[55] != b'-' {
        return Err(TraceContextError::MalformedTraceparent);
    }
    let trace_id = lower_hex::<16>(&b[3..35]).ok_or(TraceContextError::MalformedTraceparent)?;
    let span_id = lower_hex::<8>(&b[36..52]).ok_or(TraceContextError::MalformedTraceparent)?;
    let flags = lower_hex::<1>(&b[53..55]).ok_or(TraceContextError::MalformedTraceparent)?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return Err(TraceContextError::ZeroId);
    }
    Ok(TraceContext {
        format: TraceFormat::W3c as i32,
        trace_id: trace_id.to_vec(),
        parent_span_id: span_id.to_vec(),
        sampled: flags & 1 == 1,
        tracestate: tracestate.map(str::to_owned).unwrap_or_default(),
    })
}

/// Parses a B3 trace id: 16 or 32 lowercase hex digits; 64-bit ids are left-padded with zeros.
fn b3_trace_id(s: &str) -> Result<[u8; 16], TraceContextError> {
    let s = s.trim().as_bytes();
    let id = match s.len() {
        32 => lower_hex::<16>(s).ok_or(TraceContextError::MalformedB3)?,
        16 => {
            let low = lower_hex::<8>(s).ok_or(TraceContextError::MalformedB3)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            id
        }
        _ => return Err(TraceContextError::MalformedB3),
    };
    if id == [0; 16] {
        return Err(TraceContextError::ZeroId);
    }
    Ok(id)
}

fn b3_span_id(s: &str) -> Result<[u8; 8], TraceContextError> {
    let id = lower_hex::<8>(s.trim().as_bytes()).ok_or(TraceContextError::MalformedB3)?;
    if id == [0; 8] {
        return Err(TraceContextError::ZeroId);
    }
    Ok(id)
}

/// Parses the single `b3` header: `{trace}-{span}[-{sampling}[-{parent}]]`.
///
/// A bare sampling decision (`0`, `1`, `d`) carries no context and yields `Ok(None)`.
pub fn parse_b3_single(value: &str) -> Result<Option<TraceContext>, TraceContextError> {
    let value = value.trim();
    if matches!(value, "0" | "1" | "d") {
        return Ok(None);
    }
    let mut parts = value.split('-');
    let trace = parts.next().ok_or(TraceContextError::MalformedB3)?;
    let span = parts.next().ok_or(TraceContextError::MalformedB3)?;
    let sampled = match parts.next() {
        None => false,
        Some("1") | Some("d") => true,
        Some("0") => false,
        Some(_) => return Err(TraceContextError::MalformedB3),
    };
    if let Some(parent) = parts.next() {
        // The grandparent is not needed, but a malformed one makes the header malformed.
        b3_span_id(parent)?;
    }
    if parts.next().is_some() {
        return Err(TraceContextError::MalformedB3);
    }
    Ok(Some(TraceContext {
        format: TraceFormat::B3Single as i32,
        trace_id: b3_trace_id(trace)?.to_vec(),
        parent_span_id: b3_span_id(span)?.to_vec(),
        sampled,
        tracestate: String::new(),
    }))
}

/// The `x-b3-*` headers of one request, as seen.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct B3Multi<'a> {
    /// `x-b3-traceid`
    pub trace_id: Option<Cow<'a, str>>,
    /// `x-b3-spanid`
    pub span_id: Option<Cow<'a, str>>,
    /// `x-b3-parentspanid`
    pub parent_span_id: Option<Cow<'a, str>>,
    /// `x-b3-sampled`
    pub sampled: Option<Cow<'a, str>>,
    /// `x-b3-flags`
    pub flags: Option<Cow<'a, str>>,
}

impl B3Multi<'_> {
    /// Whether any `x-b3-*` header was seen.
    pub fn is_empty(&self) -> bool {
        self.trace_id.is_none()
            && self.span_id.is_none()
            && self.parent_span_id.is_none()
            && self.sampled.is_none()
            && self.flags.is_none()
    }

    /// Builds the context; `Ok(None)` when no trace id/span id pair is present (sampling only).
    pub fn parse(&self) -> Result<Option<TraceContext>, TraceContextError> {
        let (trace, span) = match (&self.trace_id, &self.span_id) {
            (Some(t), Some(s)) => (t, s),
            (None, None) => return Ok(None),
            _ => return Err(TraceContextError::MalformedB3),
        };
        if let Some(parent) = &self.parent_span_id {
            b3_span_id(parent)?;
        }
        let debug = self.flags.as_deref().map(str::trim) == Some("1");
        let sampled = debug
            || matches!(
                self.sampled.as_deref().map(str::trim),
                Some("1") | Some("true")
            );
        Ok(Some(TraceContext {
            format: TraceFormat::B3Multi as i32,
            trace_id: b3_trace_id(trace)?.to_vec(),
            parent_span_id: b3_span_id(span)?.to_vec(),
            sampled,
            tracestate: String::new(),
        }))
    }
}

/// The trace headers of one request as seen, whatever the protocol carried them: the choice
/// between formats is made once, here ([`TraceHeaders::pick`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TraceHeaders<'a> {
    /// `traceparent`
    pub traceparent: Option<Cow<'a, str>>,
    /// `tracestate`
    pub tracestate: Option<Cow<'a, str>>,
    /// `b3`
    pub b3_single: Option<Cow<'a, str>>,
    /// `x-b3-*`
    pub b3: B3Multi<'a>,
}

impl<'a> TraceHeaders<'a> {
    /// Takes header `name` (lower case, as HTTP/2 sends it) if it is a trace header; the first
    /// of each name wins. Returns whether it was one.
    pub fn offer(&mut self, name: &[u8], value: impl FnOnce() -> Cow<'a, str>) -> bool {
        let slot = match name {
            b"traceparent" => &mut self.traceparent,
            b"tracestate" => &mut self.tracestate,
            b"b3" => &mut self.b3_single,
            b"x-b3-traceid" => &mut self.b3.trace_id,
            b"x-b3-spanid" => &mut self.b3.span_id,
            b"x-b3-parentspanid" => &mut self.b3.parent_span_id,
            b"x-b3-sampled" => &mut self.b3.sampled,
            b"x-b3-flags" => &mut self.b3.flags,
            _ => return false,
        };
        slot.get_or_insert_with(value);
        true
    }

    /// The context: the first valid of W3C, B3 single, B3 multi; with the first rejection met
    /// on the way, for the metrics.
    pub fn pick(&self) -> (Option<TraceContext>, Option<TraceContextError>) {
        let mut first_err = None;
        if let Some(tp) = &self.traceparent {
            match parse_traceparent(tp, self.tracestate.as_deref()) {
                Ok(tc) => return (Some(tc), None),
                Err(e) => first_err = Some(e),
            }
        }
        if let Some(v) = &self.b3_single {
            match parse_b3_single(v) {
                Ok(Some(tc)) => return (Some(tc), first_err),
                Ok(None) => {}
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        if !self.b3.is_empty() {
            match self.b3.parse() {
                Ok(Some(tc)) => return (Some(tc), first_err),
                Ok(None) => {}
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        (None, first_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn w3c_valid_puts_caller_span_in_parent() {
        let tc = parse_traceparent(TP, Some("congo=t61rcWkgMzE")).expect("valid traceparent");
        assert_eq!(tc.format, TraceFormat::W3c as i32);
        assert_eq!(
            tc.trace_id,
            [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36
            ],
            "trace id bytes"
        );
        assert_eq!(
            tc.parent_span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
            "the caller's span id must become parent_span_id"
        );
        assert!(tc.sampled, "flags 01 means sampled");
        assert_eq!(tc.tracestate, "congo=t61rcWkgMzE");
    }

    #[test]
    fn w3c_not_sampled_flag() {
        let tc = parse_traceparent(&TP.replace("-01", "-00"), None).expect("valid");
        assert!(!tc.sampled, "flags 00 must not be sampled, got {tc:?}");
    }

    #[test]
    fn w3c_rejections() {
        let cases: &[(&str, TraceContextError)] = &[
            ("", TraceContextError::MalformedTraceparent),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
                TraceContextError::MalformedTraceparent,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                TraceContextError::ZeroId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                TraceContextError::ZeroId,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceContextError::ForbiddenVersion,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                TraceContextError::MalformedTraceparent,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceContextError::MalformedTraceparent,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
                TraceContextError::MalformedTraceparent,
            ),
            (
                "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceContextError::MalformedTraceparent,
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                TraceContextError::MalformedTraceparent,
            ),
        ];
        for (input, want) in cases {
            let got = parse_traceparent(input, None);
            assert_eq!(
                got,
                Err(*want),
                "traceparent {input:?}: want {want:?}, got {got:?}"
            );
        }
    }

    #[test]
    fn w3c_future_version_may_carry_more_fields() {
        let tc = parse_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever",
            None,
        )
        .expect("a future version with extra fields after '-' is valid");
        assert!(tc.sampled);
    }

    #[test]
    fn b3_single_full_and_padded() {
        let tc = parse_b3_single("a3ce929d0e0e4736-00f067aa0ba902b7-1-05e3ac9a4f6e3b90")
            .expect("valid b3")
            .expect("has context");
        assert_eq!(tc.format, TraceFormat::B3Single as i32);
        assert_eq!(
            &tc.trace_id[..8],
            &[0u8; 8],
            "64-bit trace ids are left-padded to 128 bits, got {:02x?}",
            tc.trace_id
        );
        assert_eq!(
            &tc.trace_id[8..],
            &[0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36]
        );
        assert_eq!(
            tc.parent_span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
            "b3 span id is the caller's span"
        );
        assert!(tc.sampled);
    }

    #[test]
    fn b3_single_variants() {
        assert_eq!(
            parse_b3_single("0"),
            Ok(None),
            "sampling only has no context"
        );
        assert_eq!(parse_b3_single("d"), Ok(None));
        let tc = parse_b3_single("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1")
            .expect("valid")
            .expect("context");
        assert!(!tc.sampled, "no sampling field means deferred, not sampled");
        assert_eq!(tc.trace_id.len(), 16);
        assert_eq!(
            parse_b3_single("80f198ee56343ba8-e457b5a2e4d86bd1-x"),
            Err(TraceContextError::MalformedB3)
        );
        assert_eq!(
            parse_b3_single("80f198ee56343ba8"),
            Err(TraceContextError::MalformedB3)
        );
        assert_eq!(
            parse_b3_single("80f198ee56343ba8-0000000000000000-1"),
            Err(TraceContextError::ZeroId)
        );
        assert_eq!(
            parse_b3_single("80F198EE56343BA8-e457b5a2e4d86bd1"),
            Err(TraceContextError::MalformedB3),
            "B3 ids are lower-hex"
        );
    }

    #[test]
    fn b3_multi() {
        let m = B3Multi {
            trace_id: Some("463ac35c9f6413ad".into()),
            span_id: Some("a2fb4a1d1a96d312".into()),
            parent_span_id: Some("0020000000000001".into()),
            sampled: Some("1".into()),
            flags: None,
        };
        let tc = m.parse().expect("valid").expect("context");
        assert_eq!(tc.format, TraceFormat::B3Multi as i32);
        assert_eq!(
            tc.trace_id,
            [0, 0, 0, 0, 0, 0, 0, 0, 0x46, 0x3a, 0xc3, 0x5c, 0x9f, 0x64, 0x13, 0xad]
        );
        assert_eq!(
            tc.parent_span_id,
            [0xa2, 0xfb, 0x4a, 0x1d, 0x1a, 0x96, 0xd3, 0x12],
            "x-b3-spanid (the caller's span) must be our parent, not x-b3-parentspanid"
        );
        assert!(tc.sampled);

        let debug = B3Multi {
            sampled: None,
            flags: Some("1".into()),
            ..m.clone()
        };
        assert!(
            debug.parse().expect("valid").expect("ctx").sampled,
            "debug implies sampled"
        );

        let half = B3Multi {
            span_id: None,
            ..m.clone()
        };
        assert_eq!(half.parse(), Err(TraceContextError::MalformedB3));
        assert_eq!(B3Multi::default().parse(), Ok(None));
    }
}
