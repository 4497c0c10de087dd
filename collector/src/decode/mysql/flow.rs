//! One MySQL (or MariaDB) connection: the handshake, then commands paired with their responses.
//!
//! **Handshake.** The server speaks first (its greeting); the client's handshake response gives
//! the user and the database (`db.namespace`; `COM_INIT_DB` changes it later). Its auth data,
//! and everything of the authentication exchange that follows (auth switch, more data), is
//! skipped, never read. An SSLRequest means TLS follows: the flow is decoded no more.
//!
//! **Exchanges.** Each command that has a response is one exchange: `COM_QUERY` (its statement,
//! sanitized), `COM_STMT_PREPARE` (operation `PREPARE`; the statement id in its answer is
//! remembered with the statement text, at most 256 per connection), `COM_STMT_EXECUTE` (the
//! remembered statement's text and operation), `COM_INIT_DB` (`USE`), and the others by name.
//! `COM_STMT_CLOSE`, `COM_STMT_SEND_LONG_DATA` and `COM_QUIT` have no response and yield none. A
//! response starts at the server packet numbered 1; it is OK (rows affected), ERR (error number,
//! SQLSTATE, message) or a result set, whose rows are counted only when the whole result — up to
//! its closing EOF or OK packet — was captured.
//!
//! **Cut messages.** A command cut at the capture limit keeps its statement as far as captured
//! (`statement_truncated`); commands beyond the capture are unknown. A response cut before its
//! end has no row count (`response_truncated`), and the commands still waiting are answered by
//! it. Counted: `decode_errors_total{reason="mysql_request_cut"|"mysql_response_cut"}`.

use std::collections::{HashMap, VecDeque};

use clovisor_proto::session::v1::{Database, Protocol};

use super::wire::{self, caps, Head, Packet};
use crate::decode::sql::{self, Dialect};
use crate::decode::{
    Direction, Exchange, Fields, FlowDecoder, Message, MessageStats, Output, Step,
};

/// Prepared statements remembered per connection, at most.
pub const MAX_STATEMENTS: usize = 256;
/// Commands waiting for their responses, at most.
pub const MAX_PENDING: usize = 64;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Statement {
    text: String,
    truncated: bool,
}

impl Statement {
    fn of(raw: &[u8], truncated: bool) -> Self {
        Self {
            text: sql::sanitize(&String::from_utf8_lossy(raw), Dialect::MySql),
            truncated,
        }
    }
}

#[derive(Debug, Clone)]
enum Command {
    Query(Statement),
    Prepare(Statement),
    Execute(u32),
    InitDb(String),
    Other(&'static str),
}

#[derive(Debug)]
struct Pending {
    request: MessageStats,
    position: u32,
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Greeting,
    Login,
    Auth,
    Commands,
}

/// What was read of a response.
#[derive(Debug, Default)]
struct Outcome {
    affected: Option<u64>,
    rows: Option<u64>,
    error: Option<(String, String, String)>,
    truncated: bool,
}

/// The MySQL state of one flow.
#[derive(Debug)]
pub struct MysqlFlow {
    phase: Phase,
    capabilities: u32,
    user: String,
    database: String,
    statements: HashMap<u32, Statement>,
    pending: VecDeque<Pending>,
}

impl Default for MysqlFlow {
    fn default() -> Self {
        Self {
            phase: Phase::Greeting,
            capabilities: 0,
            user: String::new(),
            database: String::new(),
            statements: HashMap::new(),
            pending: VecDeque::new(),
        }
    }
}

impl FlowDecoder for MysqlFlow {
    fn on_message(&mut self, m: &Message<'_>, out: &mut dyn Output) -> Step {
        let first = wire::packet(m.payload).map(|(p, _)| p);
        match (m.direction, self.phase) {
            (Direction::ServerToClient, Phase::Greeting) => {
                if first.is_some_and(|p| wire::is_greeting(p.payload)) {
                    self.phase = Phase::Login;
                }
                Step::Continue
            }
            (Direction::ClientToServer, Phase::Login) => {
                match first.and_then(|p| wire::login(p.payload)) {
                    Some(login) if login.tls => Step::Stop,
                    Some(login) => {
                        self.capabilities = login.capabilities;
                        self.user = login.user;
                        self.database = login.database;
                        self.phase = Phase::Auth;
                        Step::Continue
                    }
                    None => {
                        out.desync("bad_handshake");
                        Step::Redetect
                    }
                }
            }
            (Direction::ServerToClient, Phase::Auth) => match first.and_then(|p| p.payload.first())
            {
                Some(0x00) => {
                    self.phase = Phase::Commands;
                    Step::Continue
                }
                // Access denied: the server closes the connection.
                Some(0xff) => Step::Stop,
                _ => Step::Continue,
            },
            // Auth data (auth switch response, more data): never read.
            (Direction::ClientToServer, Phase::Auth) => Step::Continue,
            (Direction::ClientToServer, _) => {
                // A client speaking first: picked up mid-way, commands already.
                self.phase = Phase::Commands;
                self.on_commands(m, out)
            }
            (Direction::ServerToClient, _) => {
                self.on_responses(m, out);
                Step::Continue
            }
        }
    }

    fn on_close(&mut self, out: &mut dyn Output) {
        while let Some(p) = self.pending.pop_front() {
            let ex = self.exchange(p, None, Outcome::default());
            out.exchange(ex);
        }
    }
}

impl MysqlFlow {
    fn on_commands(&mut self, m: &Message<'_>, out: &mut dyn Output) -> Step {
        let mut position = 0u32;
        let mut consumed = 0usize;
        let mut last_cut = false;
        for p in wire::packets(m.payload) {
            consumed = consumed.saturating_add(p.payload.len().saturating_add(4));
            last_cut = !p.whole;
            if p.seq != 0 {
                // The rest of a packet of 16 MiB or more, or LOCAL INFILE data.
                continue;
            }
            let Some(command) = self.command(p) else {
                continue;
            };
            if let Command::Other("QUIT") = command {
                return Step::Continue;
            }
            if self.pending.len() >= MAX_PENDING {
                if let Some(oldest) = self.pending.pop_front() {
                    let ex = self.exchange(oldest, None, Outcome::default());
                    out.exchange(ex);
                }
            }
            self.pending.push_back(Pending {
                request: m.stats,
                position,
                command,
            });
            position = position.saturating_add(1);
        }
        if m.is_cut() || last_cut || consumed < m.payload.len() {
            out.decode_error("mysql_request_cut");
        }
        Step::Continue
    }

    /// The command in packet `p` (sequence 0), if it has a response.
    fn command(&mut self, p: Packet<'_>) -> Option<Command> {
        let (&code, body) = p.payload.split_first()?;
        Some(match code {
            0x03 => Command::Query(Statement::of(body, !p.whole)),
            0x16 => Command::Prepare(Statement::of(body, !p.whole)),
            0x17 => Command::Execute(u32::from_le_bytes(body.get(..4)?.try_into().ok()?)),
            0x19 => {
                if let Some(id) = body.get(..4).and_then(|b| b.try_into().ok()) {
                    self.statements.remove(&u32::from_le_bytes(id));
                }
                return None;
            }
            0x18 => return None,
            0x01 => Command::Other("QUIT"),
            0x02 => Command::InitDb(clip_name(body)),
            0x0e => Command::Other("PING"),
            0x09 => Command::Other("STATISTICS"),
            0x1a => Command::Other("RESET"),
            0x1f => Command::Other("RESET"),
            _ => Command::Other("COMMAND"),
        })
    }

    fn on_responses(&mut self, m: &Message<'_>, out: &mut dyn Output) {
        let packets: Vec<Packet<'_>> = wire::packets(m.payload).collect();
        let mut i = 0;
        while i < packets.len() {
            if packets[i].seq != 1 {
                i += 1;
                continue;
            }
            let end = packets[i + 1..]
                .iter()
                .position(|p| p.seq == 1)
                .map_or(packets.len(), |e| i + 1 + e);
            let Some(p) = self.pending.pop_front() else {
                out.unpaired("response_without_request");
                i = end;
                continue;
            };
            let last = end == packets.len();
            let cut = last && (m.is_cut() || packets.last().is_some_and(|p| !p.whole));
            let outcome = self.outcome(&p, &packets[i..end], cut);
            if outcome.truncated {
                out.decode_error("mysql_response_cut");
            }
            let ex = self.exchange(p, Some(m.stats), outcome);
            out.exchange(ex);
            i = end;
        }
        if m.is_cut() && !self.pending.is_empty() {
            // The responses beyond the capture answer the commands still waiting.
            out.decode_error("mysql_response_cut");
            while let Some(p) = self.pending.pop_front() {
                let outcome = Outcome {
                    truncated: true,
                    ..Outcome::default()
                };
                let ex = self.exchange(p, Some(m.stats), outcome);
                out.exchange(ex);
            }
        }
    }

    /// What the response `packets` to `p` say; `cut`: they may go on beyond the capture.
    fn outcome(&mut self, p: &Pending, packets: &[Packet<'_>], cut: bool) -> Outcome {
        let mut o = Outcome::default();
        let Some(first) = packets.first() else {
            return o;
        };
        match wire::head(first.payload) {
            Head::Ok { affected } => match &p.command {
                Command::Prepare(statement) => {
                    if let Some(id) = first.payload.get(1..5).and_then(|b| b.try_into().ok()) {
                        self.remember(u32::from_le_bytes(id), statement.clone());
                    }
                }
                Command::InitDb(name) => self.database.clone_from(name),
                _ => o.affected = affected,
            },
            Head::Err {
                code,
                sql_state,
                message,
            } => o.error = Some((code.to_string(), sql_state, message)),
            Head::ResultSet { columns } => {
                // Column definitions, an EOF unless DEPRECATE_EOF, the rows, the closing EOF/OK.
                let eof_after_columns = self.capabilities & caps::DEPRECATE_EOF == 0;
                let skip = usize::try_from(columns)
                    .ok()
                    .and_then(|c| c.checked_add(1 + usize::from(eof_after_columns)));
                let rows = skip.and_then(|s| packets.get(s..));
                match rows.map(|r| r.iter().position(|p| wire::is_eof(p.payload))) {
                    Some(Some(n)) => o.rows = u64::try_from(n).ok(),
                    _ => o.truncated = cut,
                }
            }
            Head::Other => {}
        }
        if cut && !first.whole {
            o.truncated = true;
        }
        o
    }

    fn remember(&mut self, id: u32, statement: Statement) {
        if self.statements.len() >= MAX_STATEMENTS && !self.statements.contains_key(&id) {
            if let Some(k) = self.statements.keys().next().copied() {
                self.statements.remove(&k);
            }
        }
        self.statements.insert(id, statement);
    }

    fn exchange(&self, p: Pending, response: Option<MessageStats>, o: Outcome) -> Exchange {
        let (operation, statement) = match p.command {
            Command::Query(s) => (sql::operation(&s.text).unwrap_or_default(), s),
            Command::Prepare(s) => ("PREPARE".to_owned(), s),
            Command::Execute(id) => match self.statements.get(&id) {
                Some(s) => (sql::operation(&s.text).unwrap_or_default(), s.clone()),
                None => ("EXECUTE".to_owned(), Statement::default()),
            },
            Command::InitDb(_) => ("USE".to_owned(), Statement::default()),
            Command::Other(name) => (name.to_owned(), Statement::default()),
        };
        let (error_code, sql_state, error_message) = o.error.unwrap_or_default();
        Exchange {
            protocol: Protocol::Mysql,
            request: p.request,
            incomplete: response.is_none(),
            response,
            position: p.position,
            fields: Fields::Database(Database {
                system: "mysql".to_owned(),
                operation,
                statement: statement.text,
                statement_truncated: statement.truncated,
                namespace: self.database.clone(),
                user: self.user.clone(),
                rows: o.rows.or(o.affected),
                error_code,
                sql_state,
                error_message,
                response_truncated: o.truncated,
                ..Database::default()
            }),
            trace: None,
            attributes: HashMap::new(),
        }
    }
}

fn clip_name(b: &[u8]) -> String {
    sql::clip(&String::from_utf8_lossy(b), 128).to_owned()
}
