//! `clovisor decode FILE`: a pcap or pcapng capture decoded offline, without root or BPF.
//!
//! The capture's packets become the records a probe would have sent for them
//! (`clovisor_collector::replay::pcap`), the records go through the collector's own flow table
//! and decoders (`replay::Sessions`), and each exchange is printed as one JSON line in the shape
//! of the correlator's REST API (`api::json::SessionJson`): one code path from packets to
//! sessions, live or offline. Exit codes: 0 done, 1 the capture could not be read or is damaged
//! (what came before the damage is printed first), 2 usage.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args as ClapArgs;
use clovisor_collector::replay::pcap::{ReplayConfig, ReplayStats};
use clovisor_collector::replay::{decode_reader, Sessions};
use clovisor_correlator::api::json::SessionJson;
use clovisor_correlator::record::CorrelatedSession;
use clovisor_proto::session::v1::Session;

/// The probe's default snaplen (`CLOVISOR_DEFAULT_SNAPLEN`): what is decoded live by default.
const DEFAULT_SNAPLEN: u32 = 1024;

/// `clovisor decode`.
#[derive(Debug, ClapArgs)]
#[command(
    after_help = "Prints one JSON line per exchange (request and response) on standard \
output, in the shape of the REST API's sessions (GET /api/v1/sessions), and a summary on standard \
error. Exit codes: 0 done, 1 the capture could not be read or is damaged (the exchanges before the \
damage are printed first), 2 usage."
)]
pub struct Args {
    /// The capture: a pcap or pcapng file (tcpdump, dumpcap, Wireshark); `-` reads standard input.
    file: PathBuf,
    /// Server ports: a packet to or from one of these is traced, the end with the port is the
    /// server. Repeat or separate by commas. Default: 53, 80, 3000, 3306, 5000, 5432, 6379,
    /// 8000, 8080, 8888, 9092, 50051.
    #[arg(long = "port", short = 'p', value_delimiter = ',', value_name = "PORT")]
    ports: Vec<u16>,
    /// Bytes of each message decoded, like the probe's snaplen (the default is the probe's).
    /// The replay continues a message's bytes into its later packets, up to this many.
    #[arg(long, default_value_t = DEFAULT_SNAPLEN,
          value_parser = clap::value_parser!(u32).range(1..=65_535))]
    snaplen: u32,
    /// Flows open at once at most; beyond, the least recently active end first. With
    /// `--snaplen`, bounds the memory used (flows × snaplen, up to 9× that while segments arrive
    /// out of order), whatever the capture's size.
    #[arg(long, default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(1..=4_194_304))]
    max_flows: u32,
    /// A UDP flow (client and server address and port) without a datagram for this many
    /// seconds ends; the next datagram starts a new one.
    #[arg(long, default_value_t = 30)]
    udp_idle_secs: u64,
    /// No summary on standard error.
    #[arg(long, short)]
    quiet: bool,
    /// A user protocol analyzer to decode with, as `NAME=MODULE`: the protocol name and a
    /// WebAssembly module (`.wasm`, or text `.wat`) — the same module `clovisor_proto_cfg` loads
    /// live (docs/analyzers.md). Repeat for several.
    #[arg(long = "analyzer", value_name = "NAME=MODULE", value_parser = parse_analyzer)]
    analyzers: Vec<(String, PathBuf)>,
}

/// `NAME=MODULE` of `--analyzer`.
fn parse_analyzer(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_owned(), PathBuf::from(path)))
        }
        _ => Err(format!(
            "{s:?}: expected NAME=MODULE, e.g. line=analyzers/line/line.wat"
        )),
    }
}

impl Args {
    fn config(&self) -> ReplayConfig {
        let interface = if self.reads_stdin() {
            "stdin".to_owned()
        } else {
            self.file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        ReplayConfig {
            udp_idle_nanos: self.udp_idle_secs.saturating_mul(1_000_000_000),
            max_flows: self.max_flows as usize,
            ..ReplayConfig::decode(&self.ports, self.snaplen, interface)
        }
    }

    fn reads_stdin(&self) -> bool {
        self.file.as_os_str() == "-"
    }
}

/// Reads from `inner` until `stop` is set, then reports the end: a reader that goes quiet once
/// nobody reads what is decoded (`clovisor decode big.pcap | head`).
struct Until<R> {
    inner: R,
    stop: Arc<AtomicBool>,
}

impl<R: Read> Read for Until<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Ok(0);
        }
        self.inner.read(buf)
    }
}

/// Prints sessions as JSON lines; after a failed write, prints nothing more and asks the reader
/// to stop.
struct Printer<W> {
    out: W,
    stop: Arc<AtomicBool>,
    failed: Option<io::Error>,
    exchanges: u64,
    incomplete: u64,
}

impl<W: Write> Printer<W> {
    fn print(&mut self, session: Session) {
        if self.failed.is_some() {
            return;
        }
        self.exchanges += 1;
        self.incomplete += u64::from(session.incomplete);
        let (record, _) = CorrelatedSession::new(session);
        let line = SessionJson::from(&record);
        let written = serde_json::to_writer(&mut self.out, &line)
            .map_err(io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        if let Err(e) = written {
            self.failed = Some(e);
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Runs `clovisor decode`.
pub fn run(args: &Args) -> ExitCode {
    let config = args.config();
    let stop = Arc::new(AtomicBool::new(false));
    let input: Box<dyn Read + Send> = if args.reads_stdin() {
        Box::new(io::stdin())
    } else {
        match std::fs::File::open(&args.file) {
            Ok(f) => Box::new(f),
            Err(e) => {
                let _ = writeln!(
                    io::stderr(),
                    "clovisor decode: cannot open {}: {e}",
                    args.file.display()
                );
                return ExitCode::FAILURE;
            }
        }
    };
    let input = Until {
        inner: input,
        stop: Arc::clone(&stop),
    };
    let mut printer = Printer {
        out: io::stdout().lock(),
        stop,
        failed: None,
        exchanges: 0,
        incomplete: 0,
    };
    let table = Sessions::new();
    for (name, path) in &args.analyzers {
        let loaded = std::fs::read(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|module| {
                table
                    .load_analyzer(name, &module)
                    .map_err(|e| format!("{}: {e}", path.display()))
            });
        if let Err(e) = loaded {
            let _ = writeln!(io::stderr(), "clovisor decode: analyzer {name}: {e}");
            return ExitCode::from(2);
        }
    }
    let decoded = decode_reader(input, &config, table, |s| printer.print(s));
    let flushed = printer.out.flush();
    match printer.failed.take().map_or(flushed, Err) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "clovisor decode: writing the output: {e}");
            return ExitCode::FAILURE;
        }
        Ok(()) => {}
    }
    match decoded {
        Ok((stats, table)) => {
            if !args.quiet {
                let _ = writeln!(
                    io::stderr(),
                    "{}",
                    summary(&printer, &stats, &table, &config)
                );
            }
            if stats.truncated_file {
                let _ = writeln!(
                    io::stderr(),
                    "clovisor decode: warning: the capture ends inside a block (its writer was \
                     stopped mid-write); decoded up to there"
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(
                io::stderr(),
                "clovisor decode: {}: {e} ({} exchanges printed before it)",
                args.file.display(),
                printer.exchanges
            );
            ExitCode::FAILURE
        }
    }
}

/// One line saying what was read, decoded and skipped.
fn summary<W>(
    printer: &Printer<W>,
    stats: &ReplayStats,
    table: &Sessions,
    config: &ReplayConfig,
) -> String {
    let ports: Vec<String> = config.traced_ports.iter().map(u16::to_string).collect();
    format!(
        "clovisor decode: {} exchanges ({} without a response) from {} packets: {} flows on \
         ports {} ({} of no decoded protocol, {} ended early to stay within --max-flows), {} \
         retransmitted segments; skipped {} packets on other ports, {} not TCP or UDP over IP, \
         {} IP fragments, {} of an undescribed interface",
        printer.exchanges,
        printer.incomplete,
        stats.packets,
        stats.flows,
        ports.join(","),
        table.metrics().flows_unsupported.get(),
        stats.evicted_flows,
        stats.retransmits,
        stats.skipped_untraced,
        stats.skipped_not_tcp,
        stats.skipped_fragments,
        stats.skipped_no_interface,
    )
}
