//! Kafka's wire format, read from bytes cut anywhere: the primitive types (big-endian integers,
//! unsigned varints, strings and arrays in their classic and "compact" flexible forms, tagged
//! fields), the request and response headers, and the few request and response bodies whose
//! topic or error code a session shows (Produce, Fetch, Metadata, CreateTopics, ApiVersions).
//!
//! Every read is bounds-checked and every length from the wire is checked before use: running
//! out of bytes is [`Short`] (the capture was cut), a length that cannot be is [`Bad`].

/// Why a read failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The bytes end before the value does (the capture was cut).
    Short,
    /// The bytes cannot be this value (a negative length other than null, a varint too long).
    Bad,
}

pub use WireError::{Bad, Short};

/// A read result.
pub type Wire<T> = Result<T, WireError>;

/// A cursor over captured bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

/// Longest string kept (client ids, topic names: Kafka allows 249 characters for a topic).
pub const MAX_NAME_BYTES: usize = 255;

/// Array elements walked at most (partitions of a topic, topics of a request): a response is
/// read for its error code, not whole.
const MAX_WALK: usize = 64;

impl<'a> Reader<'a> {
    /// Reads `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, at: 0 }
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.at
    }

    fn take(&mut self, n: usize) -> Wire<&'a [u8]> {
        let end = self.at.checked_add(n).ok_or(Bad)?;
        let bytes = self.buf.get(self.at..end).ok_or(Short)?;
        self.at = end;
        Ok(bytes)
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize) -> Wire<()> {
        self.take(n).map(|_| ())
    }

    /// INT8.
    pub fn i8(&mut self) -> Wire<i8> {
        Ok(i8::from_be_bytes([self.take(1)?[0]]))
    }

    /// INT16.
    pub fn i16(&mut self) -> Wire<i16> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    /// INT32.
    pub fn i32(&mut self) -> Wire<i32> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// UNSIGNED_VARINT (at most 5 bytes for 32 bits).
    pub fn uvarint(&mut self) -> Wire<u32> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let b = self.take(1)?[0];
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if i == 4 && b > 0x0f {
                    return Err(Bad);
                }
                return Ok(value);
            }
        }
        Err(Bad)
    }

    /// The length of a classic (INT16-prefixed) or compact (UNSIGNED_VARINT N+1) string;
    /// `None` for null.
    fn string_len(&mut self, compact: bool) -> Wire<Option<usize>> {
        if compact {
            match self.uvarint()? {
                0 => Ok(None),
                n => Ok(Some(usize::try_from(n - 1).map_err(|_| Bad)?)),
            }
        } else {
            match self.i16()? {
                -1 => Ok(None),
                n if n < 0 => Err(Bad),
                n => Ok(Some(usize::from(n.unsigned_abs()))),
            }
        }
    }

    /// A (nullable) string, classic or compact, kept up to [`MAX_NAME_BYTES`] (lossy UTF-8).
    /// A string cut by the capture gives what was captured and `truncated`.
    pub fn string(&mut self, compact: bool) -> Wire<Option<Text>> {
        let Some(len) = self.string_len(compact)? else {
            return Ok(None);
        };
        let available = self.buf.len().saturating_sub(self.at);
        if len > available {
            if available == 0 {
                return Err(Short);
            }
            let bytes = self.take(available)?;
            return Ok(Some(Text::of(bytes, true)));
        }
        let bytes = self.take(len)?;
        Ok(Some(Text::of(bytes, false)))
    }

    /// The element count of a classic (INT32) or compact (UNSIGNED_VARINT N+1) array; `None`
    /// for null.
    pub fn array_len(&mut self, compact: bool) -> Wire<Option<usize>> {
        if compact {
            match self.uvarint()? {
                0 => Ok(None),
                n => Ok(Some(usize::try_from(n - 1).map_err(|_| Bad)?)),
            }
        } else {
            match self.i32()? {
                -1 => Ok(None),
                n if n < 0 => Err(Bad),
                n => Ok(Some(usize::try_from(n).map_err(|_| Bad)?)),
            }
        }
    }

    /// UUID (a topic id).
    pub fn uuid(&mut self) -> Wire<[u8; 16]> {
        let b = self.take(16)?;
        let mut id = [0u8; 16];
        id.copy_from_slice(b);
        Ok(id)
    }

    /// Skips an array of INT32 (classic or compact).
    fn skip_i32_array(&mut self, compact: bool) -> Wire<()> {
        let n = self.array_len(compact)?.unwrap_or(0);
        self.skip(n.checked_mul(4).ok_or(Bad)?)
    }

    /// Skips a TAG_BUFFER (flexible versions only).
    pub fn tagged_fields(&mut self) -> Wire<()> {
        let count = self.uvarint()?;
        for _ in 0..count {
            self.uvarint()?;
            let size = self.uvarint()?;
            self.skip(usize::try_from(size).map_err(|_| Bad)?)?;
        }
        Ok(())
    }
}

/// A string from the wire, as kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Text {
    /// Its first [`MAX_NAME_BYTES`] bytes, lossy UTF-8.
    pub text: String,
    /// The string was longer than kept, or cut by the capture.
    pub truncated: bool,
}

impl Text {
    fn of(bytes: &[u8], cut: bool) -> Self {
        let kept = &bytes[..bytes.len().min(MAX_NAME_BYTES)];
        Self {
            text: String::from_utf8_lossy(kept).into_owned(),
            truncated: cut || kept.len() < bytes.len(),
        }
    }
}

/// Whether `api_key` at `version` uses the flexible encoding (compact strings and arrays,
/// tagged fields, request header v2, response header v1): the first flexible version of each
/// API from Kafka's message definitions; `None` for an API without one.
pub fn first_flexible(api_key: i16) -> Option<i16> {
    Some(match api_key {
        0 => 9,
        1 => 12,
        2 => 6,
        3 => 9,
        4 => 4,
        5 => 2,
        6 => 6,
        7 => 3,
        8 => 8,
        9 => 6,
        10 => 3,
        11 => 6,
        12..=14 => 4,
        15 => 5,
        16 => 3,
        17 => return None,
        18 => 3,
        19 => 5,
        20 => 4,
        21 | 22 => 2,
        23 => 4,
        24..=26 => 3,
        27 => 1,
        28 => 3,
        29..=31 => 2,
        32 => 4,
        33..=43 => 2,
        44 => 1,
        45 | 46 => 0,
        47 => return None,
        48 | 49 => 1,
        _ => 0,
    })
}

/// Whether requests of `api_key` at `version` are flexible.
pub fn flexible(api_key: i16, version: i16) -> bool {
    first_flexible(api_key).is_some_and(|v| version >= v)
}

/// The header of a request (v1, or v2 when flexible: the client id stays a classic string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader {
    /// `request_api_key`.
    pub api_key: i16,
    /// `request_api_version`.
    pub api_version: i16,
    /// `correlation_id`, echoed by the response.
    pub correlation_id: i32,
    /// `client_id`, when not null.
    pub client_id: Option<Text>,
}

impl RequestHeader {
    /// Reads a request header from the start of a request (after its size).
    pub fn read(r: &mut Reader<'_>) -> Wire<Self> {
        let api_key = r.i16()?;
        let api_version = r.i16()?;
        let correlation_id = r.i32()?;
        let client_id = r.string(false)?;
        if client_id.as_ref().is_some_and(|c| c.truncated) {
            return Err(Short);
        }
        if flexible(api_key, api_version) {
            r.tagged_fields()?;
        }
        Ok(Self {
            api_key,
            api_version,
            correlation_id,
            client_id,
        })
    }
}

/// The topics a request names, as far as captured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topics {
    /// The first topic named (a request naming topics by id only names none).
    pub first: Option<Text>,
    /// How many topics the request names, when the count was read.
    pub count: Option<u32>,
    /// The first topic's id, when the request names topics by id (Fetch and Produce v13+).
    pub first_id: Option<[u8; 16]>,
}

/// The topics of a Produce, Fetch, ListOffsets, Metadata or CreateTopics request body; empty
/// for other APIs.
pub fn request_topics(api_key: i16, version: i16, body: &mut Reader<'_>) -> Wire<Topics> {
    let compact = flexible(api_key, version);
    match api_key {
        // Produce: [transactional_id (v3+)], acks, timeout_ms, topic_data[name, …].
        0 => {
            if version >= 3 {
                body.string(compact)?;
            }
            body.skip(2 + 4)?;
            first_topic(body, compact, version < 13)
        }
        // Fetch: [replica_id (v0-14)], max_wait_ms, min_bytes, [max_bytes (v3+)],
        // [isolation_level (v4+)], [session_id, session_epoch (v7+)], topics[topic, …].
        1 => {
            if version < 15 {
                body.skip(4)?;
            }
            body.skip(4 + 4)?;
            if version >= 3 {
                body.skip(4)?;
            }
            if version >= 4 {
                body.skip(1)?;
            }
            if version >= 7 {
                body.skip(4 + 4)?;
            }
            first_topic(body, compact, version < 13)
        }
        // ListOffsets: replica_id, [isolation_level (v2+)], topics[name, …].
        2 => {
            body.skip(4)?;
            if version >= 2 {
                body.skip(1)?;
            }
            first_topic(body, compact, true)
        }
        // CreateTopics: topics[name, …].
        19 => first_topic(body, compact, true),
        // Metadata: topics[(topic_id (v10+)), name] — null for every topic (v1+).
        3 => {
            let Some(count) = body.array_len(compact)? else {
                return Ok(Topics::default());
            };
            let mut topics = Topics {
                first: None,
                count: u32::try_from(count).ok(),
                first_id: None,
            };
            if count > 0 {
                if version >= 10 {
                    body.skip(16)?;
                }
                topics.first = body.string(compact)?;
            }
            Ok(topics)
        }
        _ => Ok(Topics::default()),
    }
}

/// An array of topics whose elements start with the topic's name (`named`) or its id.
fn first_topic(body: &mut Reader<'_>, compact: bool, named: bool) -> Wire<Topics> {
    let count = body.array_len(compact)?.unwrap_or(0);
    let mut topics = Topics {
        first: None,
        count: u32::try_from(count).ok(),
        first_id: None,
    };
    if count > 0 {
        if named {
            topics.first = body.string(compact)?;
        } else {
            topics.first_id = Some(body.uuid()?);
        }
    }
    Ok(topics)
}

/// The error a response reports: the top-level error code, else the first non-zero one of its
/// topics or partitions read; 0 when every one read is 0. `None` for APIs whose body is not read.
pub fn response_error(api_key: i16, version: i16, body: &mut Reader<'_>) -> Wire<Option<i16>> {
    let compact = flexible(api_key, version);
    match api_key {
        0 => produce_error(version, compact, body).map(Some),
        1 => fetch_error(version, compact, body).map(Some),
        3 => metadata_error(version, compact, body).map(Some),
        // ApiVersions: error_code first (its response header is always v0).
        18 => body.i16().map(Some),
        19 => create_topics_error(version, compact, body).map(Some),
        _ => Ok(None),
    }
}

/// Produce response: responses[name | topic_id, partition_responses[index, error_code,
/// base_offset, (log_append_time_ms v2+), (log_start_offset v5+), (record_errors,
/// error_message v8+)]].
fn produce_error(version: i16, compact: bool, r: &mut Reader<'_>) -> Wire<i16> {
    let topics = r.array_len(compact)?.unwrap_or(0);
    let mut first_error = 0;
    for _ in 0..topics.min(MAX_WALK) {
        if version >= 13 {
            r.skip(16)?;
        } else {
            r.string(compact)?;
        }
        let partitions = r.array_len(compact)?.unwrap_or(0);
        for _ in 0..partitions.min(MAX_WALK) {
            r.skip(4)?;
            let code = r.i16()?;
            if code != 0 {
                return Ok(code);
            }
            r.skip(8)?;
            if version >= 2 {
                r.skip(8)?;
            }
            if version >= 5 {
                r.skip(8)?;
            }
            if version >= 8 {
                let errors = r.array_len(compact)?.unwrap_or(0);
                for _ in 0..errors.min(MAX_WALK) {
                    r.skip(4)?;
                    r.string(compact)?;
                    if compact {
                        r.tagged_fields()?;
                    }
                }
                r.string(compact)?;
            }
            if compact {
                r.tagged_fields()?;
            }
            first_error = code;
        }
        if partitions > MAX_WALK {
            break;
        }
        if compact {
            r.tagged_fields()?;
        }
    }
    Ok(first_error)
}

/// CreateTopics response: (throttle_time_ms v2+), topics[name, (topic_id v7+), error_code, …]:
/// the first topic's error.
fn create_topics_error(version: i16, compact: bool, r: &mut Reader<'_>) -> Wire<i16> {
    if version >= 2 {
        r.skip(4)?;
    }
    let topics = r.array_len(compact)?.unwrap_or(0);
    if topics == 0 {
        return Ok(0);
    }
    r.string(compact)?;
    if version >= 7 {
        r.skip(16)?;
    }
    r.i16()
}

/// Fetch response: (throttle_time_ms v1+), (error_code, session_id v7+), responses[topic |
/// topic_id, partitions[partition_index, error_code, …]]: the top-level error, else the first
/// partition's (a partition holds its records, which are not walked).
fn fetch_error(version: i16, compact: bool, r: &mut Reader<'_>) -> Wire<i16> {
    if version >= 1 {
        r.skip(4)?;
    }
    if version >= 7 {
        let code = r.i16()?;
        if code != 0 {
            return Ok(code);
        }
        r.skip(4)?;
    }
    let topics = r.array_len(compact)?.unwrap_or(0);
    if topics == 0 {
        return Ok(0);
    }
    if version >= 13 {
        r.skip(16)?;
    } else {
        r.string(compact)?;
    }
    let partitions = r.array_len(compact)?.unwrap_or(0);
    if partitions == 0 {
        return Ok(0);
    }
    r.skip(4)?;
    r.i16()
}

/// Metadata response: (throttle_time_ms v3+), brokers[node_id, host, port, (rack v1+)],
/// (cluster_id v2+), (controller_id v1+), topics[error_code, …]: the first topic's error.
fn metadata_error(version: i16, compact: bool, r: &mut Reader<'_>) -> Wire<i16> {
    metadata_topics_start(version, compact, r)?;
    let topics = r.array_len(compact)?.unwrap_or(0);
    if topics == 0 {
        return Ok(0);
    }
    r.i16()
}

/// The (id, name) of the topics a Metadata response v10+ describes (as many as captured, up to
/// [`MAX_WALK`]; topics without a name or with the null id left out): how Fetch and Produce
/// v13+ topic ids get their names.
pub fn metadata_topic_ids(version: i16, r: &mut Reader<'_>) -> Vec<([u8; 16], String)> {
    let mut out = Vec::new();
    if version < 10 {
        return out;
    }
    let _ = metadata_topic_ids_into(version, flexible(3, version), r, &mut out);
    out
}

fn metadata_topic_ids_into(
    version: i16,
    compact: bool,
    r: &mut Reader<'_>,
    out: &mut Vec<([u8; 16], String)>,
) -> Wire<()> {
    metadata_topics_start(version, compact, r)?;
    let topics = r.array_len(compact)?.unwrap_or(0);
    for _ in 0..topics.min(MAX_WALK) {
        r.i16()?;
        let name = r.string(compact)?;
        let id = r.uuid()?;
        if let Some(name) = name.filter(|n| !n.truncated && !n.text.is_empty()) {
            if id != [0; 16] {
                out.push((id, name.text));
            }
        }
        r.skip(1)?; // is_internal (v1+)
        let partitions = r.array_len(compact)?.unwrap_or(0);
        if partitions > MAX_WALK {
            return Err(Short);
        }
        for _ in 0..partitions {
            // error_code, partition_index, leader_id, (leader_epoch v7+)
            r.skip(2 + 4 + 4)?;
            if version >= 7 {
                r.skip(4)?;
            }
            r.skip_i32_array(compact)?; // replica_nodes
            r.skip_i32_array(compact)?; // isr_nodes
            if version >= 5 {
                r.skip_i32_array(compact)?; // offline_replicas
            }
            if compact {
                r.tagged_fields()?;
            }
        }
        if version >= 8 {
            r.skip(4)?; // topic_authorized_operations
        }
        if compact {
            r.tagged_fields()?;
        }
    }
    Ok(())
}

/// Reads a Metadata response up to its topics array.
fn metadata_topics_start(version: i16, compact: bool, r: &mut Reader<'_>) -> Wire<()> {
    if version >= 3 {
        r.skip(4)?;
    }
    let brokers = r.array_len(compact)?.unwrap_or(0);
    if brokers > MAX_WALK {
        return Err(Short);
    }
    for _ in 0..brokers {
        r.skip(4)?;
        r.string(compact)?;
        r.skip(4)?;
        if version >= 1 {
            r.string(compact)?;
        }
        if compact {
            r.tagged_fields()?;
        }
    }
    if version >= 2 {
        r.string(compact)?;
    }
    if version >= 1 {
        r.skip(4)?;
    }
    Ok(())
}
