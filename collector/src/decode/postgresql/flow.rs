//! One PostgreSQL connection: its opening, then queries paired with their results.
//!
//! **What an exchange is.** A simple query (`Q`) is one exchange, up to the server's
//! ReadyForQuery (a `Q` holding several statements is one exchange; its operation and rows are
//! the last statement's). In the extended protocol, each Execute is one exchange: its statement
//! is the text of the Parse its portal was bound from (named statements are remembered), its
//! result the CommandComplete, EmptyQueryResponse, PortalSuspended or ErrorResponse that ends
//! it. A batch of Parse/Bind/Execute before one Sync therefore yields one exchange per
//! Execute. After an error the server skips the batch's remaining Executes up to the Sync:
//! they yield no exchange and are counted (`messages_dropped_total{reason=
//! "postgresql_skipped_after_error"}`).
//!
//! **Opening.** The startup packet gives the user and database (`db.namespace`; the user's name
//! when none is given). An SSLRequest or GSSENCRequest answered `N` continues in clear; answered
//! `S` or `G`, what follows is encrypted and the flow is decoded no more. Password messages
//! (`p`) and Bind parameters are never read.
//!
//! **Cut messages.** A client message cut at the capture limit ends where the capture ends: the
//! statement being read is kept as far as captured (`statement_truncated`), and what the rest
//! of the message asked is unknown, so one exchange stands for all of it up to the server's
//! next ReadyForQuery. A server message cut at the capture limit answers every waiting request
//! with what was read of it (`response_truncated`; a command tag beyond the capture is not
//! known, so neither are the rows). Both are counted
//! (`decode_errors_total{reason="postgresql_request_cut"|"postgresql_response_cut"}`).

use std::collections::{HashMap, VecDeque};

use clovisor_proto::session::v1::{Database, Protocol};

use super::wire::{self, Next, Opening};
use crate::decode::sql::{self, Dialect};
use crate::decode::{
    Direction, Exchange, Fields, FlowDecoder, Message, MessageStats, Output, Step,
};

/// Named statements and portals remembered per connection, at most (each).
pub const MAX_NAMED: usize = 256;
/// Requests waiting for their results, at most; beyond, the oldest is given up (incomplete).
pub const MAX_PENDING: usize = 256;

/// A statement as it may leave the collector: sanitized.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Statement {
    text: String,
    truncated: bool,
}

impl Statement {
    fn of(raw: &[u8], truncated: bool) -> Self {
        Self {
            text: sql::sanitize(&sql::text(raw), Dialect::Postgres),
            truncated,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A simple query: ends at ReadyForQuery.
    Query,
    /// An Execute: ends at its CommandComplete (or equivalent).
    Execute,
    /// A Sync: ends at ReadyForQuery, yields nothing.
    Sync,
    /// The rest of a cut client message: ends at ReadyForQuery.
    Unknown,
}

#[derive(Debug)]
struct Pending {
    kind: Kind,
    request: MessageStats,
    position: u32,
    statement: Statement,
    /// The last CommandComplete's command and rows.
    tag: Option<(String, Option<u64>)>,
    error: Option<(String, String)>,
}

/// What the flow expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The client's opening packet (or, on a flow picked up mid-way, typed messages).
    Opening,
    /// The server's one-byte answer to an SSLRequest or GSSENCRequest.
    EncryptionAnswer,
    /// Typed messages.
    Messages,
}

/// The PostgreSQL state of one flow.
#[derive(Debug)]
pub struct PostgresqlFlow {
    phase: Phase,
    user: String,
    database: String,
    statements: HashMap<Vec<u8>, Statement>,
    portals: HashMap<Vec<u8>, Statement>,
    pending: VecDeque<Pending>,
}

impl Default for PostgresqlFlow {
    fn default() -> Self {
        Self {
            phase: Phase::Opening,
            user: String::new(),
            database: String::new(),
            statements: HashMap::new(),
            portals: HashMap::new(),
            pending: VecDeque::new(),
        }
    }
}

impl FlowDecoder for PostgresqlFlow {
    fn on_message(&mut self, m: &Message<'_>, out: &mut dyn Output) -> Step {
        match (m.direction, self.phase) {
            (Direction::ServerToClient, Phase::EncryptionAnswer) => match m.payload.first() {
                Some(b'N') => {
                    self.phase = Phase::Opening;
                    Step::Continue
                }
                // TLS or GSSAPI encryption: nothing more to read.
                Some(b'S' | b'G') => Step::Stop,
                _ => {
                    out.desync("bad_encryption_answer");
                    Step::Redetect
                }
            },
            (Direction::ClientToServer, Phase::Opening) => match wire::opening(m.payload) {
                Some(Opening::Startup { user, database }) => {
                    self.user = user.unwrap_or_default();
                    self.database = database.unwrap_or_else(|| self.user.clone());
                    self.phase = Phase::Messages;
                    Step::Continue
                }
                Some(Opening::SslRequest | Opening::GssEncRequest) => {
                    self.phase = Phase::EncryptionAnswer;
                    Step::Continue
                }
                Some(Opening::CancelRequest) => Step::Stop,
                None => {
                    // Picked up mid-way: typed messages already.
                    self.phase = Phase::Messages;
                    self.on_client(m, out);
                    Step::Continue
                }
            },
            (Direction::ClientToServer, _) => {
                self.phase = Phase::Messages;
                self.on_client(m, out);
                Step::Continue
            }
            (Direction::ServerToClient, _) => {
                self.on_server(m, out);
                Step::Continue
            }
        }
    }

    fn on_close(&mut self, out: &mut dyn Output) {
        while let Some(p) = self.pending.pop_front() {
            if p.kind != Kind::Sync {
                let ex = self.exchange(p, None, false);
                out.exchange(ex);
            }
        }
    }
}

impl PostgresqlFlow {
    fn push(&mut self, p: Pending, out: &mut dyn Output) {
        if self.pending.len() >= MAX_PENDING {
            if let Some(oldest) = self.pending.pop_front() {
                if oldest.kind != Kind::Sync {
                    let ex = self.exchange(oldest, None, false);
                    out.exchange(ex);
                }
            }
        }
        self.pending.push_back(p);
    }

    fn on_client(&mut self, m: &Message<'_>, out: &mut dyn Output) {
        let mut at = 0;
        let mut position = 0u32;
        let mut last_parse: Option<Statement> = None;
        let mut last_tag = 0u8;
        let pending = |kind, statement, position| Pending {
            kind,
            request: m.stats,
            position,
            statement,
            tag: None,
            error: None,
        };
        while at < m.payload.len() {
            let (f, took) = match wire::frame(&m.payload[at..]) {
                Next::Frame(f, took) => (f, took),
                Next::Short if m.is_cut() => {
                    out.decode_error("postgresql_request_cut");
                    self.push(
                        pending(Kind::Unknown, last_parse.unwrap_or_default(), position),
                        out,
                    );
                    return;
                }
                Next::Short | Next::Bad => {
                    out.desync("bad_frame");
                    return;
                }
            };
            at = at.saturating_add(took);
            last_tag = f.tag;
            match f.tag {
                b'Q' => {
                    let statement = Statement::of(wire::cstr(f.body).0, !f.whole);
                    self.push(pending(Kind::Query, statement, position), out);
                    position = position.saturating_add(1);
                }
                b'P' => {
                    let (name, rest) = wire::cstr(f.body);
                    let (text, _) = wire::cstr(rest);
                    let statement = Statement::of(text, !f.whole);
                    remember(&mut self.statements, name, statement.clone());
                    last_parse = Some(statement);
                }
                b'B' if f.whole => {
                    let (portal, rest) = wire::cstr(f.body);
                    let (name, _) = wire::cstr(rest);
                    let statement = self.statements.get(name).cloned().unwrap_or_default();
                    remember(&mut self.portals, portal, statement);
                }
                b'E' if f.whole => {
                    let (portal, _) = wire::cstr(f.body);
                    let statement = self.portals.get(portal).cloned().unwrap_or_default();
                    self.push(pending(Kind::Execute, statement, position), out);
                    position = position.saturating_add(1);
                }
                b'S' => self.push(pending(Kind::Sync, Statement::default(), 0), out),
                // Describe, Close, Flush, Terminate, passwords, COPY data, function calls:
                // nothing to keep.
                _ => {}
            }
            if !f.whole {
                // Cut at the capture limit: what else the message asked is unknown.
                out.decode_error("postgresql_request_cut");
                if f.tag != b'Q' {
                    let statement = last_parse.take().unwrap_or_default();
                    self.push(pending(Kind::Unknown, statement, position), out);
                }
                return;
            }
        }
        if m.is_cut() {
            // The capture ended on a frame boundary (the probe keeps the start of a message's
            // first packet): more frames followed. After a Sync or a query the client waits
            // for the answer; otherwise they are part of this request.
            out.decode_error("postgresql_request_cut");
            if !matches!(last_tag, b'S' | b'Q') {
                let statement = last_parse.unwrap_or_default();
                self.push(pending(Kind::Unknown, statement, position), out);
            }
        }
    }

    /// Walks the server's messages as far as they were captured, across gaps when a message
    /// was captured call by call (socket point) and the next one starts in a captured run; when
    /// the walk reaches bytes not captured, the end of the message may still be
    /// ([`PostgresqlFlow::read_closing_frames`]).
    fn on_server(&mut self, m: &Message<'_>, out: &mut dyn Output) {
        let total = m.stats.bytes.max(m.captured_end());
        let mut at: u64 = 0;
        loop {
            let here = m.captured_at(at);
            let run_to_end = at.saturating_add(here.len() as u64) >= total;
            if here.is_empty() && at >= total {
                return;
            }
            let (f, took) = match wire::frame(here) {
                Next::Frame(f, took) => (f, took),
                Next::Short if !run_to_end => {
                    if !self.read_closing_frames(m, total, out) {
                        self.answer_cut(m.stats, out);
                    }
                    return;
                }
                Next::Short | Next::Bad => {
                    out.desync("bad_frame");
                    self.answer_all(m.stats, out);
                    return;
                }
            };
            at = at.saturating_add(took as u64);
            self.server_frame(&f, m.stats, out);
            if !f.whole && at > total {
                self.answer_cut(m.stats, out);
                return;
            }
        }
    }

    /// One typed message from the server.
    fn server_frame(&mut self, f: &wire::Frame<'_>, response: MessageStats, out: &mut dyn Output) {
        match f.tag {
            b'C' if f.whole => {
                let tag = wire::command_tag(f.body);
                self.ends_front(Kind::Execute, response, out, |p| p.tag = Some(tag));
            }
            b'I' | b's' => {
                self.ends_front(Kind::Execute, response, out, |_| {});
            }
            b'E' => {
                let error = wire::error_fields(f.body);
                if self.ends_front(Kind::Execute, response, out, |p| p.error = Some(error)) {
                    self.skip_to_sync(out);
                }
            }
            b'Z' => self.ready(response, out),
            _ => {}
        }
    }

    /// A server message whose middle was not captured but whose end was (captured call by
    /// call: the last call's last bytes): the messages that end it - a `CommandComplete`,
    /// `EmptyQueryResponse` or `ErrorResponse`, then `ReadyForQuery` - found back from the end
    /// by their lengths. Returns whether they were.
    fn read_closing_frames(&mut self, m: &Message<'_>, total: u64, out: &mut dyn Output) -> bool {
        let Some(last) = m
            .later
            .last()
            .filter(|s| s.offset.saturating_add(s.bytes.len() as u64) == total)
        else {
            return false;
        };
        let Some(frames) = wire::closing_frames(last.bytes) else {
            return false;
        };
        for f in frames.iter().flatten() {
            self.server_frame(f, m.stats, out);
        }
        true
    }

    /// Applies `set` to the oldest waiting request; when it is a `kind` (an Execute), that
    /// result ends it. Returns whether one ended.
    fn ends_front(
        &mut self,
        kind: Kind,
        response: MessageStats,
        out: &mut dyn Output,
        set: impl FnOnce(&mut Pending),
    ) -> bool {
        let Some(front) = self.pending.front_mut() else {
            return false;
        };
        if front.kind == Kind::Sync {
            return false;
        }
        set(front);
        if front.kind != kind {
            return false;
        }
        if let Some(p) = self.pending.pop_front() {
            let ex = self.exchange(p, Some(response), false);
            out.exchange(ex);
        }
        true
    }

    /// After an error in an extended-protocol batch the server ignores everything up to Sync.
    fn skip_to_sync(&mut self, out: &mut dyn Output) {
        while self
            .pending
            .front()
            .is_some_and(|p| p.kind == Kind::Execute)
        {
            self.pending.pop_front();
            out.unpaired("postgresql_skipped_after_error");
        }
    }

    /// ReadyForQuery: the oldest query, sync or unknown ends (and any Execute before it that
    /// saw no result, which cannot happen with a server that follows the protocol).
    fn ready(&mut self, response: MessageStats, out: &mut dyn Output) {
        while let Some(p) = self.pending.pop_front() {
            let kind = p.kind;
            if kind != Kind::Sync {
                let ex = self.exchange(p, Some(response), false);
                out.exchange(ex);
            }
            if kind != Kind::Execute {
                return;
            }
        }
    }

    /// A server message cut at the capture limit: it is taken to answer every waiting request
    /// (counted when one was waiting).
    fn answer_cut(&mut self, response: MessageStats, out: &mut dyn Output) {
        if self.pending.iter().any(|p| p.kind != Kind::Sync) {
            out.decode_error("postgresql_response_cut");
        }
        self.answer_all(response, out);
    }

    fn answer_all(&mut self, response: MessageStats, out: &mut dyn Output) {
        while let Some(p) = self.pending.pop_front() {
            if p.kind != Kind::Sync {
                let ex = self.exchange(p, Some(response), true);
                out.exchange(ex);
            }
        }
    }

    fn exchange(&self, p: Pending, response: Option<MessageStats>, cut: bool) -> Exchange {
        let (tag_operation, rows) = p.tag.unwrap_or_default();
        let operation = if tag_operation.is_empty() {
            sql::operation(&p.statement.text).unwrap_or_default()
        } else {
            tag_operation
        };
        let (error_code, error_message) = p.error.unwrap_or_default();
        Exchange {
            protocol: Protocol::Postgresql,
            request: p.request,
            incomplete: response.is_none(),
            response,
            position: p.position,
            fields: Fields::Database(Database {
                system: "postgresql".to_owned(),
                operation,
                statement: p.statement.text,
                statement_truncated: p.statement.truncated,
                namespace: self.database.clone(),
                user: self.user.clone(),
                rows,
                error_code,
                error_message,
                response_truncated: cut,
                ..Database::default()
            }),
            trace: None,
            attributes: HashMap::new(),
        }
    }
}

/// Remembers a named statement or portal; a full table forgets an arbitrary other one.
fn remember(table: &mut HashMap<Vec<u8>, Statement>, name: &[u8], statement: Statement) {
    if table.len() >= MAX_NAMED && !table.contains_key(name) {
        if let Some(k) = table.keys().next().cloned() {
            table.remove(&k);
        }
    }
    table.insert(name.to_vec(), statement);
}
