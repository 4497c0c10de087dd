//! A session as the correlator keeps it: the collector's record plus the span identity we gave it.

use clovisor_proto::session::v1::{Session, TraceContext};

use crate::ids::{SpanId, TraceId};

/// One stored exchange and its place in a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct CorrelatedSession {
    /// The key the REST API finds it by: the collector's session id, or our span id when the
    /// collector sent none.
    pub id: String,
    /// What the collector decoded.
    pub session: Session,
    /// The trace this exchange belongs to: the one seen on the wire, else a fresh one.
    pub trace_id: TraceId,
    /// Our span's id.
    pub span_id: SpanId,
    /// The caller's span id seen on the wire (e.g. Envoy's), when there was one.
    pub parent_span_id: Option<SpanId>,
    /// Whether `trace_id` came from the wire rather than being made up here.
    pub trace_from_wire: bool,
    /// Ids of the collector sessions (one per observation point) merged into this one; the
    /// first is `id` when the collector gave one.
    pub constituents: Vec<String>,
}

/// Why a session's wire trace context was not used as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextIssue {
    /// The trace id was present but not 16 non-zero bytes.
    InvalidTraceId,
    /// The parent span id was present but not 8 non-zero bytes.
    InvalidParentSpanId,
}

impl CorrelatedSession {
    /// Gives `session` a fresh span id and places it in the wire trace when it carries one.
    /// Returns the issues found in the wire context, which the caller counts.
    pub fn new(mut session: Session) -> (Self, Vec<ContextIssue>) {
        // Decoding grew the vector to four; the exchange may be kept for the retention time.
        session.observations.shrink_to_fit();
        let (identity, issues) = SpanIdentity::new(trace_bytes(&session));
        (
            Self {
                id: exchange_id(&session.id, identity.span_id).into_owned(),
                trace_id: identity.trace_id,
                span_id: identity.span_id,
                parent_span_id: identity.parent_span_id,
                trace_from_wire: identity.trace_from_wire,
                constituents: Vec::new(),
                session,
            },
            issues,
        )
    }

    /// The trace context seen on the wire, when the span sits in its trace (a context whose ids
    /// were invalid is not one): what the span's flags, its trace state, the sampler and the
    /// REST API read.
    pub fn wire_trace(&self) -> Option<&TraceContext> {
        self.session.trace.as_ref().filter(|_| self.trace_from_wire)
    }

    /// Places the span in the session's wire trace when it was not yet in one — after a merge
    /// brought a context (e.g. a socket's plaintext view of a request encrypted on the wire).
    /// Keeps the span id, so the record stays the same span.
    pub fn adopt_wire_context(&mut self) {
        if self.trace_from_wire {
            return;
        }
        let (wire_trace, parent, _) = wire_context(&self.session);
        if let Some(trace) = wire_trace {
            self.trace_id = trace;
            self.parent_span_id = parent;
            self.trace_from_wire = true;
        }
    }
}

/// The valid trace id and (within it) parent span id of `session`'s wire context, and what was
/// wrong with it.
fn wire_context(session: &Session) -> (Option<TraceId>, Option<SpanId>, Vec<ContextIssue>) {
    wire_context_of(trace_bytes(session))
}

/// The trace id and parent span id bytes of `session`'s wire context, when it has one.
fn trace_bytes(session: &Session) -> Option<(&[u8], &[u8])> {
    session
        .trace
        .as_ref()
        .map(|ctx| (ctx.trace_id.as_slice(), ctx.parent_span_id.as_slice()))
}

/// What [`CorrelatedSession::new`] gives an exchange of its first session: its place in a
/// trace. (Its id is [`exchange_id`].)
pub(crate) struct SpanIdentity {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub trace_from_wire: bool,
}

impl SpanIdentity {
    /// A fresh span id, in the wire trace `trace` (trace id and parent span id bytes) when the
    /// session carried a valid one; with what was wrong with the wire context.
    pub(crate) fn new(trace: Option<(&[u8], &[u8])>) -> (Self, Vec<ContextIssue>) {
        let (wire_trace, parent_span_id, issues) = wire_context_of(trace);
        let (trace_id, span_id) = match wire_trace {
            Some(trace) => (trace, SpanId::random()),
            None => TraceId::random_with_span(),
        };
        let identity = Self {
            trace_id,
            span_id,
            parent_span_id,
            trace_from_wire: wire_trace.is_some(),
        };
        (identity, issues)
    }
}

/// The id an exchange is found by: its first session's, or its span id when that session had
/// none (borrowed when it is the session's).
pub(crate) fn exchange_id(session_id: &str, span_id: SpanId) -> std::borrow::Cow<'_, str> {
    if session_id.is_empty() {
        std::borrow::Cow::Owned(span_id.to_string())
    } else {
        std::borrow::Cow::Borrowed(session_id)
    }
}

/// The ids an exchange is known by besides its own: the first session's (when it has one) and
/// those the collector merged into it (moved, when they are owned already).
pub(crate) fn constituents<S: AsRef<str> + Into<String>>(
    id: &str,
    merged: impl IntoIterator<Item = S>,
) -> Vec<String> {
    let merged = merged.into_iter();
    let mut ids = Vec::with_capacity(1 + merged.size_hint().0);
    if !id.is_empty() {
        ids.push(id.to_owned());
    }
    ids.extend(merged.filter(|m| !m.as_ref().is_empty()).map(Into::into));
    ids
}

/// [`constituents`], borrowed: what an exchange held as it arrived lists without allocating.
pub(crate) fn constituent_ids<'a, I>(
    id: &'a str,
    merged: I,
) -> impl Iterator<Item = &'a str> + Clone
where
    I: IntoIterator<Item = &'a str>,
    I::IntoIter: Clone,
{
    std::iter::once(id).chain(merged).filter(|c| !c.is_empty())
}

/// [`wire_context`] of a session whose trace context, if any, has these trace id and parent
/// span id bytes.
fn wire_context_of(
    trace: Option<(&[u8], &[u8])>,
) -> (Option<TraceId>, Option<SpanId>, Vec<ContextIssue>) {
    let mut issues = Vec::new();
    let (wire_trace, parent) = match trace {
        Some((trace_id, parent_span_id)) => {
            let trace = TraceId::from_bytes(trace_id);
            if trace.is_none() && !trace_id.is_empty() {
                issues.push(ContextIssue::InvalidTraceId);
            }
            let parent = SpanId::from_bytes(parent_span_id);
            if parent.is_none() && !parent_span_id.is_empty() {
                issues.push(ContextIssue::InvalidParentSpanId);
            }
            (trace, parent)
        }
        None => (None, None),
    };
    // A parent only means something inside its own trace.
    (wire_trace, wire_trace.and(parent), issues)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clovisor_proto::session::v1::TraceContext;

    #[test]
    fn wire_context_is_adopted() {
        let session = Session {
            id: "s1".into(),
            trace: Some(TraceContext {
                trace_id: vec![7; 16],
                parent_span_id: vec![9; 8],
                ..Default::default()
            }),
            ..Default::default()
        };
        let (rec, issues) = CorrelatedSession::new(session);
        assert!(issues.is_empty(), "no issues expected, saw {issues:?}");
        assert_eq!(
            rec.trace_id,
            TraceId([7; 16]),
            "trace id must come from the wire"
        );
        assert_eq!(
            rec.parent_span_id,
            Some(SpanId([9; 8])),
            "parent must be the wire span id"
        );
        assert_ne!(rec.span_id, SpanId([9; 8]), "our span id must be new");
        assert!(rec.trace_from_wire);
        assert_eq!(rec.id, "s1");
    }

    #[test]
    fn missing_or_bad_context_starts_a_new_trace() {
        let (rec, issues) = CorrelatedSession::new(Session::default());
        assert!(issues.is_empty());
        assert!(!rec.trace_from_wire);
        assert_eq!(rec.parent_span_id, None);
        assert_eq!(
            rec.id,
            rec.span_id.to_string(),
            "empty id falls back to the span id"
        );

        let bad = Session {
            trace: Some(TraceContext {
                trace_id: vec![0; 16],
                parent_span_id: vec![1; 3],
                ..Default::default()
            }),
            ..Default::default()
        };
        let (rec, issues) = CorrelatedSession::new(bad);
        assert_eq!(
            issues,
            vec![
                ContextIssue::InvalidTraceId,
                ContextIssue::InvalidParentSpanId
            ],
            "both ids are malformed"
        );
        assert!(!rec.trace_from_wire);
        assert_eq!(rec.parent_span_id, None, "no parent without a wire trace");
    }
}
