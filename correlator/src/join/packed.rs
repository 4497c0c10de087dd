//! A ready exchange as the join keeps it for its retention time: in one allocation.
//!
//! At the rates the join is sized for it is full, and every exchange that opens makes the oldest
//! retained one go. Held as separate parts (its id, each constituent id, its intervals, its
//! encoded session, each a block of its own), forgetting one freed half a dozen blocks last
//! touched seconds ago: a cache miss each. Here the parts are laid out in one block, so opening
//! one allocates once and forgetting one frees once, and the ids the index is cleaned of lie
//! next to each other.
//!
//! Layout (integers little-endian):
//!
//! | bytes | what |
//! | --- | --- |
//! | 16 | trace id |
//! | 8 | span id |
//! | 8 | parent span id (all zero: none; a valid one never is) |
//! | 1 | flags: [`TRACE_FROM_WIRE`], [`KEYED`] |
//! | 4 | number of intervals `n` |
//! | 4 | number of ids `m` (the exchange's id, then its constituents) |
//! | 16 `n` | intervals, start and end |
//! | 4 `m` | each id's length |
//! | … | the ids, one after the other |
//! | rest | the session, protobuf-encoded |

use clovisor_proto::session::decode as session_decode;
use clovisor_proto::session::v1::Session;
use prost::Message as _;

use super::head::Head;
use super::key::{self, interval};
use crate::ids::{SpanId, TraceId};
use crate::record::{constituent_ids, exchange_id, ContextIssue, CorrelatedSession, SpanIdentity};

const TRACE_FROM_WIRE: u8 = 1;
const KEYED: u8 = 2;
const FLAGS_AT: usize = 32;
const INTERVALS_AT: usize = 33;
const IDS_AT: usize = 37;
const HEADER: usize = 41;

/// A [`CorrelatedSession`] with its session encoded, in one block; see the module
/// documentation.
#[derive(Debug)]
pub(super) struct Packed(Box<[u8]>);

/// What a packed exchange is made of, borrowed.
struct Parts<'a, V, I> {
    trace_id: TraceId,
    span_id: SpanId,
    parent_span_id: Option<SpanId>,
    trace_from_wire: bool,
    keyed: bool,
    intervals: V,
    ids: I,
    session: Encoded<'a>,
}

/// The session's encoding, or the session to encode.
enum Encoded<'a> {
    Bytes(&'a [u8]),
    Session(&'a Session),
}

impl Encoded<'_> {
    fn len(&self) -> usize {
        match self {
            Self::Bytes(b) => b.len(),
            Self::Session(s) => s.encoded_len(),
        }
    }
}

impl Packed {
    /// Its first byte, read (see [`super::Joiner`]'s `forget_group`): freeing the block writes
    /// into it.
    pub(super) fn first_byte(&self) -> u8 {
        self.0.first().copied().unwrap_or_default()
    }

    /// `rec` packed; `arrival` is its session's encoding as it arrived, when unchanged since.
    /// `None` only when a count or a length does not fit in 32 bits.
    pub(super) fn of(rec: &CorrelatedSession, arrival: Option<&[u8]>) -> Option<Self> {
        Self::build(Parts {
            trace_id: rec.trace_id,
            span_id: rec.span_id,
            parent_span_id: rec.parent_span_id,
            trace_from_wire: rec.trace_from_wire,
            keyed: rec.session.observations.iter().any(key::has_tcp_seq),
            intervals: rec.session.observations.iter().map(interval),
            ids: std::iter::once(rec.id.as_str())
                .chain(rec.constituents.iter().map(String::as_str)),
            session: arrival.map_or(Encoded::Session(&rec.session), Encoded::Bytes),
        })
    }

    /// An exchange of the one view of head `h`, the session encoded in `encoded` (what
    /// [`super::Joiner::offer_head`] holds as it arrived); with the problems of its trace
    /// context. `None` only when a count or a length does not fit in 32 bits.
    pub(super) fn arrived(h: &Head<'_>, encoded: &[u8]) -> Option<(Self, Vec<ContextIssue>)> {
        // Nothing allocated on the way (the ids are borrowed from the head): one view of nearly
        // every exchange comes this way.
        let (identity, issues) = SpanIdentity::new(h.trace());
        let id = exchange_id(h.id(), identity.span_id);
        let constituents = constituent_ids(h.id(), h.merged_ids().iter().copied());
        let packed = Self::build(Parts {
            trace_id: identity.trace_id,
            span_id: identity.span_id,
            parent_span_id: identity.parent_span_id,
            trace_from_wire: identity.trace_from_wire,
            keyed: h.keyed(),
            intervals: h.intervals().iter().copied(),
            ids: std::iter::once(&*id).chain(constituents),
            session: Encoded::Bytes(encoded),
        })?;
        Some((packed, issues))
    }

    fn build<'a>(
        parts: Parts<
            'a,
            impl ExactSizeIterator<Item = (u64, u64)>,
            impl Iterator<Item = &'a str> + Clone,
        >,
    ) -> Option<Self> {
        let n = u32::try_from(parts.intervals.len()).ok()?;
        let m = u32::try_from(parts.ids.clone().count()).ok()?;
        let ids_len = parts.ids.clone().map(str::len).sum::<usize>();
        let len = HEADER
            .checked_add(parts.intervals.len().checked_mul(16)?)?
            .checked_add(usize::try_from(m).ok()?.checked_mul(4)?)?
            .checked_add(ids_len)?
            .checked_add(parts.session.len())?;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&parts.trace_id.0);
        out.extend_from_slice(&parts.span_id.0);
        out.extend_from_slice(&parts.parent_span_id.map_or([0; 8], |p| p.0));
        let mut flags = 0;
        if parts.trace_from_wire {
            flags |= TRACE_FROM_WIRE;
        }
        if parts.keyed {
            flags |= KEYED;
        }
        out.push(flags);
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&m.to_le_bytes());
        for (start, end) in parts.intervals {
            out.extend_from_slice(&start.to_le_bytes());
            out.extend_from_slice(&end.to_le_bytes());
        }
        for id in parts.ids.clone() {
            out.extend_from_slice(&u32::try_from(id.len()).ok()?.to_le_bytes());
        }
        for id in parts.ids {
            out.extend_from_slice(id.as_bytes());
        }
        match parts.session {
            Encoded::Bytes(b) => out.extend_from_slice(b),
            Encoded::Session(s) => s.encode_raw(&mut out),
        }
        Some(Self(out.into_boxed_slice()))
    }

    fn u32_at(&self, at: usize) -> usize {
        self.0
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, |b| u32::from_le_bytes(b) as usize)
    }

    fn u64_at(&self, at: usize) -> u64 {
        self.0
            .get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_le_bytes)
    }

    fn intervals_len(&self) -> usize {
        self.u32_at(INTERVALS_AT)
    }

    fn ids_len(&self) -> usize {
        self.u32_at(IDS_AT)
    }

    /// Where the id lengths start.
    fn lengths_at(&self) -> usize {
        HEADER + 16 * self.intervals_len()
    }

    /// Where the ids start.
    fn ids_at(&self) -> usize {
        self.lengths_at() + 4 * self.ids_len()
    }

    /// Whether a point with sequence numbers saw it (what a sequence-less view's search reads
    /// before unpacking).
    pub(super) fn keyed(&self) -> bool {
        self.0.get(FLAGS_AT).is_some_and(|f| f & KEYED != 0)
    }

    /// When each point saw it.
    pub(super) fn intervals(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (0..self.intervals_len()).map(|i| {
            let at = HEADER + 16 * i;
            (self.u64_at(at), self.u64_at(at + 8))
        })
    }

    /// The exchange's id, then its constituents' ids (as [`CorrelatedSession`] has them).
    pub(super) fn ids(&self) -> impl Iterator<Item = &str> + '_ {
        let lengths = self.lengths_at();
        let mut at = self.ids_at();
        (0..self.ids_len()).map(move |i| {
            let len = self.u32_at(lengths + 4 * i);
            let id = self
                .0
                .get(at..at + len)
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or_default();
            at += len;
            id
        })
    }

    /// The session, encoded.
    pub(super) fn session(&self) -> &[u8] {
        let end_of_ids = self.ids_at()
            + (0..self.ids_len())
                .map(|i| self.u32_at(self.lengths_at() + 4 * i))
                .sum::<usize>();
        self.0.get(end_of_ids..).unwrap_or_default()
    }

    /// Drops the session's encoding (it did not decode): later readers get the exchange's ids
    /// and no fields.
    pub(super) fn empty_session(&mut self) {
        let keep = self.0.len() - self.session().len();
        self.0 = Box::from(self.0.get(..keep).unwrap_or_default());
    }

    /// The exchange, its session decoded (empty when it does not decode: it was encoded here
    /// from a decoded session, or it is one held as it arrived, which
    /// [`super::Held::try_shared`] empties when it does not decode).
    pub(super) fn unpack(&self) -> CorrelatedSession {
        self.try_unpack()
            .unwrap_or_else(|_| self.with_session(Session::default()))
    }

    pub(super) fn try_unpack(&self) -> Result<CorrelatedSession, session_decode::DecodeError> {
        let mut rec = blank();
        self.try_unpack_into(&mut rec)?;
        Ok(rec)
    }

    /// [`Packed::try_unpack`] into `rec`, an exchange finished with: everything in it replaced,
    /// its strings and vectors written over rather than allocated again (see
    /// [`session_decode::decode_into`]). On an error `rec` holds a mix: unpack into it again or
    /// drop it.
    pub(super) fn try_unpack_into(
        &self,
        rec: &mut CorrelatedSession,
    ) -> Result<(), session_decode::DecodeError> {
        // An encoding as it arrived still lists the ids the collector merged; the exchange
        // holds them among its constituents (and not in its session).
        session_decode::decode_into(self.session(), &mut rec.session, false)?;
        self.identity_into(rec);
        Ok(())
    }

    fn with_session(&self, session: Session) -> CorrelatedSession {
        let mut rec = CorrelatedSession { session, ..blank() };
        self.identity_into(&mut rec);
        rec
    }

    /// Writes everything but the session into `rec`.
    fn identity_into(&self, rec: &mut CorrelatedSession) {
        let CorrelatedSession {
            id,
            session: _,
            trace_id,
            span_id,
            parent_span_id,
            trace_from_wire,
            constituents,
        } = rec;
        let mut ids = self.ids();
        id.clear();
        id.push_str(ids.next().unwrap_or_default());
        // Both were valid (non-zero) ids when packed.
        *trace_id = self
            .0
            .get(..16)
            .and_then(TraceId::from_bytes)
            .unwrap_or_else(TraceId::random);
        *span_id = self
            .0
            .get(16..24)
            .and_then(SpanId::from_bytes)
            .unwrap_or_else(SpanId::random);
        *parent_span_id = self.0.get(24..32).and_then(SpanId::from_bytes);
        *trace_from_wire = self
            .0
            .get(FLAGS_AT)
            .is_some_and(|f| f & TRACE_FROM_WIRE != 0);
        let mut n = 0;
        for c in ids {
            session_decode::next(constituents, &mut n, String::clear).push_str(c);
        }
        constituents.truncate(n);
    }
}

/// An exchange with nothing in it, to unpack into (its ids are written over).
fn blank() -> CorrelatedSession {
    CorrelatedSession {
        id: String::new(),
        session: Session::default(),
        trace_id: TraceId([0; 16]),
        span_id: SpanId([0; 8]),
        parent_span_id: None,
        trace_from_wire: false,
        constituents: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clovisor_proto::session::v1::Observation;

    fn exchange() -> CorrelatedSession {
        let session = Session {
            id: "p/1f/0".into(),
            observations: vec![
                Observation {
                    request_start_unix_nanos: 10,
                    response_end_unix_nanos: 30,
                    request_tcp_seq: 7,
                    kind: clovisor_proto::common::v1::PointKind::Pod as i32,
                    ..Observation::default()
                },
                Observation {
                    request_start_unix_nanos: 12,
                    response_end_unix_nanos: 28,
                    ..Observation::default()
                },
            ],
            ..Session::default()
        };
        let (mut rec, _) = CorrelatedSession::new(session);
        rec.parent_span_id = Some(SpanId([3; 8]));
        rec.trace_from_wire = true;
        rec.constituents = vec!["p/1f/0".into(), "p/2a/0".into(), "ünïcode/0".into()];
        rec
    }

    #[test]
    fn packed_comes_back_as_it_was() {
        let rec = exchange();
        let packed = Packed::of(&rec, None).expect("fits");
        assert_eq!(packed.unpack(), rec);
        assert_eq!(
            packed.ids().collect::<Vec<_>>(),
            ["p/1f/0", "p/1f/0", "p/2a/0", "ünïcode/0"]
        );
        assert_eq!(packed.intervals().collect::<Vec<_>>(), [(10, 30), (12, 28)]);
        assert!(packed.keyed());
        assert_eq!(
            Session::decode(packed.session()).ok().as_ref(),
            Some(&rec.session)
        );
    }

    #[test]
    fn packed_from_its_arrival_keeps_those_bytes() {
        let rec = exchange();
        let mut arrival = rec.session.encode_to_vec();
        let packed = Packed::of(&rec, Some(&arrival)).expect("fits");
        assert_eq!(packed.session(), &arrival[..]);
        // Bytes that do not decode: unpacked empty, its ids kept; emptied, the same.
        arrival.truncate(3);
        let mut bad = Packed::of(&rec, Some(&arrival)).expect("fits");
        assert!(bad.try_unpack().is_err());
        assert_eq!(bad.unpack().session, Session::default());
        bad.empty_session();
        assert!(bad.session().is_empty());
        let back = bad.unpack();
        assert_eq!((back.id.as_str(), back.constituents.len()), ("p/1f/0", 3));
        assert_eq!((back.span_id, back.trace_id), (rec.span_id, rec.trace_id));
    }

    #[test]
    fn no_parent_and_no_flags_stay_so() {
        let mut rec = exchange();
        rec.parent_span_id = None;
        rec.trace_from_wire = false;
        rec.session.observations.clear();
        rec.constituents.clear();
        let packed = Packed::of(&rec, None).expect("fits");
        assert_eq!(packed.unpack(), rec);
        assert!(!packed.keyed());
        assert_eq!(packed.intervals().count(), 0);
    }

    /// Unpacked into an exchange finished with (more constituents, a parent, flags, another
    /// session): the packed one, with nothing of the other left.
    #[test]
    fn unpacked_into_another_exchange_is_as_if_unpacked_afresh() {
        let mut plain = exchange();
        plain.parent_span_id = None;
        plain.trace_from_wire = false;
        plain.constituents.truncate(1);
        plain.session.observations.truncate(1);
        let packed = Packed::of(&plain, None).expect("fits");
        let mut used = exchange();
        used.session.http = Some(clovisor_proto::session::v1::Http {
            method: "POST".into(),
            ..Default::default()
        });
        packed.try_unpack_into(&mut used).expect("decodes");
        assert_eq!(used, plain);
        // And the other way: more of everything than the exchange it is unpacked into.
        let rich = exchange();
        Packed::of(&rich, None)
            .expect("fits")
            .try_unpack_into(&mut used)
            .expect("decodes");
        assert_eq!(used, rich);
    }
}
