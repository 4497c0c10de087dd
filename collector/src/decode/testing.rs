//! Test helpers shared by the decoders: an [`Output`] that records, captured fixtures, and
//! feeding a flow decoder as the flow table would (payloads cut at a snaplen).

use clovisor_proto::capture::v1::{FlowKey, ProtocolHint};
use clovisor_proto::session::v1::Database;

use super::{
    Decoder, Direction, Exchange, Fields, FlowDecoder, FlowInfo, Message, MessageStats, Output,
    Step,
};

/// What a flow decoder reported, in order.
#[derive(Debug, Default)]
pub struct Recorded {
    pub exchanges: Vec<Exchange>,
    pub errors: Vec<&'static str>,
    pub unpaired: Vec<&'static str>,
    pub desyncs: Vec<&'static str>,
    /// What the decoder answered to each message.
    pub steps: Vec<Step>,
}

impl Output for Recorded {
    fn exchange(&mut self, exchange: Exchange) {
        self.exchanges.push(exchange);
    }
    fn decode_error(&mut self, reason: &'static str) {
        self.errors.push(reason);
    }
    fn unpaired(&mut self, reason: &'static str) {
        self.unpaired.push(reason);
    }
    fn desync(&mut self, reason: &'static str) {
        self.desyncs.push(reason);
    }
}

/// One connection of a fixture: its messages in order, whole.
pub type Connection = Vec<(Direction, Vec<u8>)>;

/// The connections of a fixture in `collector/testdata/db/` (format: `messages.sh` there).
pub fn fixture(name: &str) -> Vec<Connection> {
    let path = format!("{}/testdata/db/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let mut connections = vec![Vec::new()];
    for line in text.lines() {
        let Some((side, hex)) = line.split_once(' ') else {
            if connections.last().is_some_and(|c| !c.is_empty()) {
                connections.push(Vec::new());
            }
            continue;
        };
        let direction = match side {
            "c" => Direction::ClientToServer,
            "s" => Direction::ServerToClient,
            other => panic!("{path}: side {other:?} is neither c nor s"),
        };
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .unwrap_or_else(|e| panic!("{path}: bad hex: {e}"));
        if let Some(c) = connections.last_mut() {
            c.push((direction, bytes));
        }
    }
    connections.retain(|c| !c.is_empty());
    connections
}

/// Message `index` of a flow, all of `payload`, with made-up timings.
pub fn message(index: u32, direction: Direction, payload: &[u8]) -> Message<'_> {
    cut_message(index, direction, payload, usize::MAX)
}

/// A message of `bytes` bytes of which the first `snaplen` were captured.
pub fn cut_message(index: u32, direction: Direction, bytes: &[u8], snaplen: usize) -> Message<'_> {
    Message {
        direction,
        stats: MessageStats {
            index,
            start: u64::from(index) * 10,
            end: u64::from(index) * 10 + 5,
            tcp_seq: 100 + index,
            bytes: bytes.len() as u64,
            packets: 1,
            retransmits: 0,
            wire: None,
        },
        payload: &bytes[..bytes.len().min(snaplen)],
        partial: false,
        later: &[],
    }
}

/// Feeds `messages` (each cut at `snaplen`) to `flow` in order until it stops, then closes it.
pub fn run(
    mut flow: Box<dyn FlowDecoder>,
    messages: &[(Direction, Vec<u8>)],
    snaplen: usize,
) -> Recorded {
    let mut out = Recorded::default();
    for (i, (direction, bytes)) in messages.iter().enumerate() {
        let m = cut_message(
            u32::try_from(i).unwrap_or(u32::MAX),
            *direction,
            bytes,
            snaplen,
        );
        let step = flow.on_message(&m, &mut out);
        out.steps.push(step);
        if step != Step::Continue {
            break;
        }
    }
    flow.on_close(&mut out);
    out
}

/// A small deterministic generator for the fuzz-style tests (xorshift).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The database part of `e` (a Redis, PostgreSQL or MySQL exchange); panics otherwise.
pub fn database(e: &Exchange) -> &Database {
    match &e.fields {
        Fields::Database(d) => d,
        other => panic!("expected database fields, got {other:?}"),
    }
}

/// Decodes `messages` (each cut at `snaplen`) with a fresh flow of `decoder`, as [`run`] does.
pub fn decode_flow(
    decoder: &dyn Decoder,
    messages: &[(Direction, Vec<u8>)],
    snaplen: usize,
) -> Recorded {
    let key = FlowKey::default();
    let info = FlowInfo {
        probe_id: "p",
        flow_id: 1,
        key: &key,
        hint: ProtocolHint::Tcp,
    };
    run(decoder.new_flow(&info), messages, snaplen)
}
