//! HTTP/2 framing (RFC 9113, section 4): the connection preface and frame headers.

/// What a client sends first on an HTTP/2 connection (prior knowledge, or after `101`).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The start of [`PREFACE`] that is enough to recognise it when the capture is shorter.
pub const PREFACE_START: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Bytes of a frame header.
pub const HEADER_LEN: usize = 9;

/// Frame types the decoder acts on (others, extensions included, are skipped by length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `DATA`
    Data,
    /// `HEADERS`
    Headers,
    /// `RST_STREAM`
    RstStream,
    /// `PUSH_PROMISE`
    PushPromise,
    /// `CONTINUATION`
    Continuation,
    /// Anything else: `SETTINGS`, `PING`, `WINDOW_UPDATE`, `PRIORITY`, `GOAWAY`, extensions.
    Other,
}

/// `END_STREAM` (DATA, HEADERS).
pub const END_STREAM: u8 = 0x1;
/// `END_HEADERS` (HEADERS, PUSH_PROMISE, CONTINUATION).
pub const END_HEADERS: u8 = 0x4;
/// `PADDED` (DATA, HEADERS, PUSH_PROMISE).
pub const PADDED: u8 = 0x8;
/// `PRIORITY` (HEADERS).
pub const PRIORITY: u8 = 0x20;

/// One frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length (24 bits).
    pub length: u32,
    /// Type.
    pub kind: Kind,
    /// Flags.
    pub flags: u8,
    /// Stream id (31 bits; 0 for the connection).
    pub stream: u32,
}

impl FrameHeader {
    /// Reads a frame header from the first [`HEADER_LEN`] bytes of `b`, if there are that many.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let h = b.get(..HEADER_LEN)?;
        let kind = match h[3] {
            0x0 => Kind::Data,
            0x1 => Kind::Headers,
            0x3 => Kind::RstStream,
            0x5 => Kind::PushPromise,
            0x9 => Kind::Continuation,
            _ => Kind::Other,
        };
        Some(Self {
            length: u32::from_be_bytes([0, h[0], h[1], h[2]]),
            kind,
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        })
    }

    /// Whether `flag` is set.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Whether the frame carries a header block fragment.
    pub fn is_header_block(&self) -> bool {
        matches!(
            self.kind,
            Kind::Headers | Kind::PushPromise | Kind::Continuation
        )
    }
}

/// Why a frame's payload could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Padding or priority fields longer than the frame.
    #[error("frame padding or priority longer than the frame")]
    BadPadding,
}

/// The header block fragment inside a `HEADERS`, `PUSH_PROMISE` or `CONTINUATION` payload.
/// `payload` may be a captured prefix of the frame's payload: the fragment is then cut too, and
/// the padding at the end (known from the frame's length) is never taken for header bytes.
pub fn header_fragment<'p>(
    header: &FrameHeader,
    payload: &'p [u8],
) -> Result<&'p [u8], FrameError> {
    let mut start = 0usize;
    let mut pad = 0usize;
    if header.kind != Kind::Continuation && header.has(PADDED) {
        pad = usize::from(*payload.first().ok_or(FrameError::BadPadding)?);
        start = 1;
    }
    match header.kind {
        Kind::Headers if header.has(PRIORITY) => start += 5,
        Kind::PushPromise => start += 4,
        _ => {}
    }
    let end = usize::try_from(header.length)
        .ok()
        .and_then(|l| l.checked_sub(pad))
        .filter(|&e| e >= start)
        .ok_or(FrameError::BadPadding)?;
    Ok(payload
        .get(start..end.min(payload.len()))
        .unwrap_or_default())
}
