//! Commands against a running correlator's REST API: `get sessions`, `get services`, `stats`,
//! `observe` (follows the live feed), `clear`. Exit codes scripts can rely on: 0 done, 1 the correlator failed or could not be
//! reached, 2 the command or its query was wrong (clap's usage errors are 2 as well).

mod client;
mod output;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use client::{ApiClient, ClientError};
use output::{Colour, Table};

/// Where the correlator's REST API is.
#[derive(Debug, Args)]
pub struct Server {
    /// The correlator's REST API, `http://host:port`.
    #[arg(
        long,
        env = "CLOVISOR_SERVER",
        default_value = "http://127.0.0.1:9800",
        global = true
    )]
    server: String,
    /// A file holding the bearer token the correlator requires (its `--api-token-file`).
    #[arg(long, env = "CLOVISOR_TOKEN_FILE", global = true)]
    token_file: Option<std::path::PathBuf>,
}

impl Server {
    fn client(&self) -> Result<ApiClient, ClientError> {
        ApiClient::new(&self.server, self.token_file.as_deref())
    }
}

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// An aligned table.
    Table,
    /// A table with more columns.
    Wide,
    /// The API's JSON.
    Json,
    /// The API's answer as YAML.
    Yaml,
}

/// `clovisor get …`.
#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(subcommand)]
    what: GetWhat,
    #[command(flatten)]
    server: Server,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    output: Format,
}

#[derive(Debug, Subcommand)]
enum GetWhat {
    /// Recent sessions, newest first.
    Sessions(Box<SessionArgs>),
    /// Services and workloads seen, with request counts, error rates and latency.
    Services(WindowArgs),
}

#[derive(Debug, Args)]
struct WindowArgs {
    /// How far back, e.g. 30s, 5m, 15m.
    #[arg(long)]
    window: Option<String>,
}

#[derive(Debug, Args)]
struct SessionArgs {
    #[command(flatten)]
    filters: Filters,
    /// Sessions at most (1-1000).
    #[arg(long)]
    limit: Option<u32>,
    /// The next page: the `next_cursor` of the previous answer (`-o json`).
    #[arg(long)]
    cursor: Option<String>,
}

/// What sessions to show; every filter given must match.
#[derive(Debug, Args)]
struct Filters {
    /// Sessions of this trace (32 hex digits).
    #[arg(long)]
    trace_id: Option<String>,
    /// The client's or the server's pod.
    #[arg(long)]
    pod: Option<String>,
    /// The client's or the server's namespace.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// A status code (404) or class (5xx).
    #[arg(long)]
    status: Option<String>,
    /// Protocol, e.g. http1.
    #[arg(long)]
    protocol: Option<String>,
    /// The serving workload.
    #[arg(long)]
    service: Option<String>,
    /// Request method.
    #[arg(long)]
    method: Option<String>,
    /// Start of the request path.
    #[arg(long)]
    path_prefix: Option<String>,
    /// Shortest duration, e.g. 100ms.
    #[arg(long)]
    min_duration: Option<String>,
    /// Started at or after (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Started before (RFC 3339).
    #[arg(long)]
    until: Option<String>,
}

impl Filters {
    fn query(self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        push(&mut q, "trace_id", self.trace_id);
        push(&mut q, "pod", self.pod);
        push(&mut q, "namespace", self.namespace);
        push(&mut q, "status", self.status);
        push(&mut q, "protocol", self.protocol);
        push(&mut q, "service", self.service);
        push(&mut q, "method", self.method);
        push(&mut q, "path_prefix", self.path_prefix);
        push(&mut q, "min_duration", self.min_duration);
        push(&mut q, "since", self.since);
        push(&mut q, "until", self.until);
        q
    }
}

/// `clovisor observe`.
#[derive(Debug, Args)]
pub struct ObserveArgs {
    #[command(flatten)]
    filters: Filters,
    /// Stop after this many sessions (default: follow until interrupted).
    #[arg(long)]
    count: Option<u64>,
    #[command(flatten)]
    server: Server,
    /// Output format: table or wide (a line per session), json (a JSON object per line).
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Format,
}

/// `clovisor stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Fields to group by: service, client, namespace, path, status, method, user_agent,
    /// protocol.
    #[arg(long, default_value = "service")]
    group_by: String,
    /// How far back, e.g. 30s, 5m, 15m.
    #[arg(long)]
    window: Option<String>,
    /// requests, errors, error_rate, avg, max or p99 (largest first).
    #[arg(long)]
    order: Option<String>,
    /// Groups at most (1-1000).
    #[arg(long)]
    limit: Option<u32>,
    #[command(flatten)]
    server: Server,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Format,
}

/// `clovisor clear`.
#[derive(Debug, Args)]
pub struct ClearArgs {
    #[command(flatten)]
    server: Server,
}

fn push(query: &mut Vec<(&'static str, String)>, name: &'static str, value: Option<String>) {
    if let Some(v) = value {
        query.push((name, v));
    }
}

/// Runs `future` on a small runtime and turns its outcome into the exit code.
fn run(future: impl std::future::Future<Output = Result<String, ClientError>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(future) {
        Ok(text) => match std::io::stdout().lock().write_all(text.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            // A closed pipe (`| head`) is not the correlator's failure, but the output is cut.
            Err(_) => ExitCode::from(1),
        },
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e}");
            match e {
                ClientError::BadServer { .. }
                | ClientError::Refused { .. }
                | ClientError::Token { .. } => ExitCode::from(2),
                ClientError::Unreachable { .. } | ClientError::Server { .. } => ExitCode::from(1),
            }
        }
    }
}

/// `clovisor get …`.
pub fn get(args: GetArgs) -> ExitCode {
    let colour = std::io::stdout().is_terminal();
    run(async move {
        let api = args.server.client()?;
        match args.what {
            GetWhat::Sessions(s) => {
                let mut q = s.filters.query();
                push(&mut q, "limit", s.limit.map(|l| l.to_string()));
                push(&mut q, "cursor", s.cursor);
                let body = api.get("/api/v1/sessions", &q).await?;
                Ok(render(&body, args.output, colour, sessions_table))
            }
            GetWhat::Services(w) => {
                let mut q = Vec::new();
                push(&mut q, "window", w.window);
                let body = api.get("/api/v1/services", &q).await?;
                Ok(render(&body, args.output, colour, services_table))
            }
        }
    })
}

/// `clovisor stats`.
pub fn stats(args: StatsArgs) -> ExitCode {
    let colour = std::io::stdout().is_terminal();
    run(async move {
        let api = args.server.client()?;
        let mut q = vec![("group_by", args.group_by)];
        push(&mut q, "window", args.window);
        push(&mut q, "order", args.order);
        push(&mut q, "limit", args.limit.map(|l| l.to_string()));
        let body = api.get("/api/v1/stats", &q).await?;
        Ok(render(&body, args.output, colour, stats_table))
    })
}

/// Column widths of `observe`'s lines (they cannot be fitted to rows not yet seen).
const OBSERVE_WIDTHS: [usize; 12] = [30, 24, 24, 8, 6, 20, 6, 8, 8, 9, 32, 16];

/// Silence after which `observe` gives the correlator up (its heartbeat is every 15 s).
const OBSERVE_SILENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// `clovisor observe`: a line per session as sessions finish, until interrupted, `--count`
/// sessions were shown, or the correlator ends the feed.
pub fn observe(args: ObserveArgs) -> ExitCode {
    let colour = std::io::stdout().is_terminal();
    let format = args.output;
    run(async move {
        let api = args.server.client()?;
        let query = args.filters.query();
        let mut shown = 0u64;
        let mut out = std::io::stdout();
        let wide = format == Format::Wide;
        if matches!(format, Format::Table | Format::Wide) {
            let header = sessions_table(&Value::Null, wide)
                .with_widths(&OBSERVE_WIDTHS)
                .render(colour);
            if out.write_all(header.as_bytes()).is_err() {
                return Ok(String::new());
            }
        }
        if args.count == Some(0) {
            return Ok(String::new());
        }
        api.follow(
            "/api/v1/sessions/stream",
            &query,
            OBSERVE_SILENCE,
            |event, data| {
                if event == "dropped" {
                    let n = serde_json::from_str::<Value>(data)
                        .ok()
                        .and_then(|v| v["dropped"].as_u64())
                        .unwrap_or(0);
                    let _ = writeln!(
                        std::io::stderr(),
                        "warning: {n} sessions not shown: this client read too slowly"
                    );
                    return true;
                }
                if event != "session" {
                    return true;
                }
                let Ok(session) = serde_json::from_str::<Value>(data) else {
                    let _ = writeln!(std::io::stderr(), "warning: a session that is not JSON");
                    return true;
                };
                let line = match format {
                    Format::Json => format!("{session}\n"),
                    Format::Yaml => format!("---\n{}", output::yaml(&session)),
                    Format::Table | Format::Wide => {
                        let body = serde_json::json!({ "sessions": [session] });
                        sessions_table(&body, wide)
                            .with_widths(&OBSERVE_WIDTHS)
                            .render_rows(colour)
                    }
                };
                // A closed pipe (`| head`) ends the command.
                if out
                    .write_all(line.as_bytes())
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    return false;
                }
                shown += 1;
                args.count.is_none_or(|c| shown < c)
            },
        )
        .await?;
        Ok(String::new())
    })
}

/// `clovisor clear`.
pub fn clear(args: ClearArgs) -> ExitCode {
    run(async move {
        let api = args.server.client()?;
        let body = api.delete("/api/v1/sessions").await?;
        Ok(format!(
            "cleared {} sessions and the analytics\n",
            body["sessions_cleared"].as_u64().unwrap_or(0)
        ))
    })
}

fn render(body: &Value, format: Format, colour: bool, table: fn(&Value, bool) -> Table) -> String {
    match format {
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(body).unwrap_or_else(|_| body.to_string())
        ),
        Format::Yaml => output::yaml(body),
        Format::Table => table(body, false).render(colour),
        Format::Wide => table(body, true).render(colour),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn plain(s: String) -> (String, Colour) {
    (s, Colour::Plain)
}

fn status_colour(code: u64) -> Colour {
    match code {
        500.. => Colour::Red,
        400..=499 => Colour::Yellow,
        _ => Colour::Plain,
    }
}

/// Milliseconds as people read them: `0.42ms`, `12.3ms`, `1.52s`.
fn duration_ms(ms: Option<f64>) -> String {
    match ms {
        None => "-".to_owned(),
        Some(ms) if ms >= 1000.0 => format!("{:.2}s", ms / 1000.0),
        Some(ms) if ms >= 10.0 => format!("{ms:.1}ms"),
        Some(ms) => format!("{ms:.2}ms"),
    }
}

fn end(e: &Value) -> String {
    let name = e["pod"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            e["ip"]
                .as_str()
                .map(|ip| format!("{ip}:{}", e["port"].as_u64().unwrap_or(0)))
        })
        .unwrap_or_else(|| "-".to_owned());
    match e["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name,
    }
}

fn sessions_table(body: &Value, wide: bool) -> Table {
    let mut headers = vec![
        "START", "CLIENT", "SERVER", "PROTOCOL", "METHOD", "PATH", "STATUS", "DURATION",
    ];
    if wide {
        headers.extend(["BYTES-IN", "BYTES-OUT", "TRACE-ID", "ID"]);
    }
    let mut t = Table::new(headers);
    for s in body["sessions"].as_array().into_iter().flatten() {
        let code = s["http"]["status_code"].as_u64();
        let mut row = vec![
            plain(text(&s["start_time"])),
            plain(end(&s["client"])),
            plain(end(&s["server"])),
            plain(text(&s["protocol"])),
            plain(text(&s["http"]["method"])),
            plain(text(&s["http"]["path"])),
            (
                if s["incomplete"].as_bool() == Some(true) {
                    "none".to_owned()
                } else {
                    code.map_or_else(|| "-".to_owned(), |c| c.to_string())
                },
                code.map_or(Colour::Plain, status_colour),
            ),
            plain(duration_ms(
                s["duration_ns"].as_u64().map(|ns| ns as f64 / 1e6),
            )),
        ];
        if wide {
            row.extend([
                plain(text(&s["bytes"]["request"])),
                plain(text(&s["bytes"]["response"])),
                plain(text(&s["trace"]["trace_id"])),
                plain(text(&s["id"])),
            ]);
        }
        t.row(row);
    }
    t
}

fn figures(row: &mut Vec<(String, Colour)>, v: &Value) {
    let rate = v["error_rate"].as_f64().unwrap_or(0.0);
    row.push(plain(text(&v["requests"])));
    row.push((
        format!("{:.1}%", rate * 100.0),
        if rate >= 0.05 {
            Colour::Red
        } else {
            Colour::Plain
        },
    ));
    let l = &v["latency_ms"];
    for k in ["min", "avg", "max", "p50", "p90", "p99"] {
        row.push(plain(duration_ms(l[k].as_f64())));
    }
}

const FIGURES: [&str; 8] = [
    "REQUESTS", "ERRORS", "MIN", "AVG", "MAX", "P50", "P90", "P99",
];

fn peers(v: &Value) -> String {
    let list: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let name = text(&p["name"]);
            match p["namespace"].as_str().filter(|n| !n.is_empty()) {
                Some(ns) => format!("{ns}/{name}"),
                None => name,
            }
        })
        .collect();
    if list.is_empty() {
        "-".to_owned()
    } else {
        list.join(",")
    }
}

fn services_table(body: &Value, wide: bool) -> Table {
    let mut headers = vec!["NAMESPACE", "NAME", "PROTOCOLS"];
    headers.extend(FIGURES);
    if wide {
        headers.extend(["CALLERS", "CALLEES"]);
    }
    let mut t = Table::new(headers);
    for s in body["services"].as_array().into_iter().flatten() {
        let protocols: Vec<String> = s["protocols"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        let mut row = vec![
            plain(text(&s["namespace"])),
            plain(text(&s["name"])),
            plain(if protocols.is_empty() {
                "-".to_owned()
            } else {
                protocols.join(",")
            }),
        ];
        figures(&mut row, s);
        if wide {
            row.push(plain(peers(&s["callers"])));
            row.push(plain(peers(&s["callees"])));
        }
        t.row(row);
    }
    t
}

fn stats_table(body: &Value, _wide: bool) -> Table {
    let fields: Vec<String> = body["group_by"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect();
    let mut headers: Vec<String> = fields.iter().map(|f| f.to_ascii_uppercase()).collect();
    headers.extend(FIGURES.iter().map(|h| (*h).to_owned()));
    let mut t = Table::new(headers);
    for g in body["groups"].as_array().into_iter().flatten() {
        let mut row: Vec<(String, Colour)> = fields
            .iter()
            .map(|f| {
                let v = text(&g["key"][f]);
                let c = if f == "status" {
                    v.parse().map_or(Colour::Plain, status_colour)
                } else {
                    Colour::Plain
                };
                (v, c)
            })
            .collect();
        figures(&mut row, g);
        t.row(row);
    }
    t
}
