//! Loss accounting.
//!
//! Under real overload: `clovisor all-in-one` traces a server pod with a deliberately tiny ring
//! buffer (one page) and record queue while a client pod fires a bounded burst of parallel HTTP
//! requests at nginx. The kernel must lose events — and every stage must account for every
//! item: `received = emitted + dropped + buffered`, exactly, once traffic has settled; and what
//! one stage emits, the next receives.
//!
//! Forced, path by path: the real `clovisor-collector` and `clovisor-correlator` processes,
//! fed by a probe speaking the real capture protocol whose records make each loss inside the
//! flow table and the join happen once — a response without its request, a second copy of a
//! waiting message, messages never arriving (gaps skipped), a flow evicted for capacity while
//! messages wait in it, a probe restarting while its flows hold messages and an open request, a
//! view arriving after its exchange's join window closed. Each is counted with its reason, exactly as often as it
//! was made to happen, and the `flow_table` and `join` stages balance from counters each path
//! moves on its own.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clovisor_integration_tests::http_client::http_get;
use clovisor_integration_tests::{
    cargo_build, clovisor_bin, collector_command, correlator_command, free_port,
    our_programs_complete_on, run_in, start_service, wait_for, Lab, Nginx, Proc,
};
use clovisor_proto::capture::v1::capture_client::CaptureClient;
use clovisor_proto::capture::v1::{
    collector_message, probe_message, record, Direction, FlowKey, Hello, Message, ObservationPoint,
    ProbeMessage, ProtocolHint, Record, RecordBatch,
};
use clovisor_proto::common::v1::PointKind;
use clovisor_proto::tls::ClientTransport;

/// Requests in the burst.
const BURST: usize = 2000;
/// Connections the client keeps open at once.
const PARALLEL: &str = "64";

/// Stages that must report a balance in all-in-one mode without span export.
const STAGES: [&str; 10] = [
    "ring_buffer",
    "probe_decode",
    "probe_queue",
    "probe_endpoints",
    "uplink",
    "collector",
    "flow_table",
    "forwarder",
    "correlator",
    "join",
];

/// The loss families of one `/metrics` scrape.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Loss {
    received: BTreeMap<String, u64>,
    emitted: BTreeMap<String, u64>,
    /// By (stage, reason).
    dropped: BTreeMap<(String, String), u64>,
    buffered: BTreeMap<String, u64>,
    /// `clovisor_probe_kernel_total` by counter name.
    kernel: BTreeMap<String, u64>,
    /// Sum of `clovisor_collector_sessions_emitted_total` over outcomes.
    sessions_emitted: u64,
    /// `clovisor_collector_views_merged_total`: sessions merged by the local join.
    views_merged: u64,
}

impl Loss {
    fn parse(text: &str) -> Result<Self> {
        let mut loss = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = value
                .parse()
                .with_context(|| format!("value of {line:?}"))?;
            let value = value as u64;
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            let label = |key: &str| -> String {
                labels
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.trim_matches('"').to_owned())
                    .unwrap_or_default()
            };
            match name {
                "clovisor_received_total" => {
                    loss.received.insert(label("stage"), value);
                }
                "clovisor_emitted_total" => {
                    loss.emitted.insert(label("stage"), value);
                }
                "clovisor_buffered" => {
                    loss.buffered.insert(label("stage"), value);
                }
                "clovisor_dropped_total" => {
                    loss.dropped
                        .insert((label("stage"), label("reason")), value);
                }
                "clovisor_probe_kernel_total" => {
                    loss.kernel.insert(label("counter"), value);
                }
                "clovisor_collector_sessions_emitted_total" => loss.sessions_emitted += value,
                "clovisor_collector_views_merged_total" => loss.views_merged += value,
                _ => {}
            }
        }
        Ok(loss)
    }

    fn received(&self, stage: &str) -> u64 {
        self.received.get(stage).copied().unwrap_or(0)
    }

    fn emitted(&self, stage: &str) -> u64 {
        self.emitted.get(stage).copied().unwrap_or(0)
    }

    fn buffered(&self, stage: &str) -> u64 {
        self.buffered.get(stage).copied().unwrap_or(0)
    }

    fn dropped(&self, stage: &str) -> u64 {
        self.dropped
            .iter()
            .filter(|((s, _), _)| s == stage)
            .map(|(_, v)| *v)
            .sum()
    }

    /// One line per stage: received, emitted, dropped by reason, buffered.
    fn table(&self) -> String {
        let mut out = String::new();
        for stage in self.received.keys() {
            let reasons: Vec<String> = self
                .dropped
                .iter()
                .filter(|((s, _), _)| s == stage)
                .map(|((_, r), v)| format!("{r}={v}"))
                .collect();
            out.push_str(&format!(
                "  {stage:<12} received={} emitted={} dropped={} [{}] buffered={}\n",
                self.received(stage),
                self.emitted(stage),
                self.dropped(stage),
                reasons.join(" "),
                self.buffered(stage),
            ));
        }
        out
    }
}

/// Scrapes until two scrapes 1.5 s apart are identical and nothing is buffered: the probe
/// copies its counters every second, the forwarder's every half second.
fn settled(metrics_url: &str, timeout: Duration) -> Result<Loss> {
    let deadline = Instant::now() + timeout;
    let mut last = Loss::parse(&http_get(metrics_url)?)?;
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = Loss::parse(&http_get(metrics_url)?)?;
        if now == last && now.buffered.values().all(|b| *b == 0) {
            return Ok(now);
        }
        if Instant::now() >= deadline {
            bail!(
                "counters did not settle in {timeout:?}; the scrape before last:\n{}last:\n{}",
                last.table(),
                now.table()
            );
        }
        last = now;
    }
}

#[test]
fn every_stage_accounts_for_every_item_under_overload() -> Result<()> {
    let mut lab = Lab::new()?;
    let client = lab.pod("lcl")?;
    let server = lab.pod("lsv")?;
    let _nginx = Nginx::start(&server)?;

    let api = format!("127.0.0.1:{}", free_port()?);
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let mut cmd = Command::new(clovisor_bin()?);
    cmd.args([
        "all-in-one",
        "--netns",
        &server.netns,
        "--api-listen",
        &api,
        "--metrics-listen",
        &metrics,
        "--ring-buffer-bytes",
        "4096",
        "--record-queue",
        "64",
    ])
    .env("OTEL_TRACES_EXPORTER", "none")
    .env("RUST_LOG", "info");
    let log = std::env::temp_dir().join(format!("clovisor-loss-{}.log", std::process::id()));
    let mut proc = Proc::spawn(cmd, log)?;
    let ready = format!("http://{api}/readyz");
    if let Err(e) = wait_for("clovisor attached", Duration::from_secs(20), || {
        if !proc.running() {
            bail!("clovisor exited early");
        }
        Ok(http_get(&ready).is_ok() && our_programs_complete_on(&server.host_veth)?)
    }) {
        bail!("{e:#}\nlog:\n{}", proc.log_text());
    }

    // The burst: one curl, many connections at once, bounded in count and time.
    let urls = format!("http://{}/?burst=[1-{BURST}]", server.ipv4);
    let started = Instant::now();
    let out = run_in(
        &client.netns,
        &[
            "curl",
            "-sS",
            "--no-progress-meter",
            "--parallel",
            "--parallel-max",
            PARALLEL,
            "--max-time",
            "20",
            "-w",
            "%{http_code}\\n",
            &urls,
        ],
    );
    let answered = match &out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| *l == "200")
            .count(),
        Err(_) => 0,
    };
    let burst_took = started.elapsed();
    assert!(
        answered > BURST / 2,
        "expected most of {BURST} requests answered, saw {answered} ({out:?})"
    );

    let loss = settled(
        &format!("http://{metrics}/metrics"),
        Duration::from_secs(40),
    )?;
    eprintln!(
        "burst of {BURST} requests ({answered} answered) in {burst_took:?}; counters:\n{}\nkernel: {:?}\nsessions emitted by the collector: {}",
        loss.table(),
        loss.kernel,
        loss.sessions_emitted
    );

    assert!(
        loss.dropped
            .get(&("ring_buffer".into(), "full".into()))
            .copied()
            .unwrap_or(0)
            > 0,
        "expected ring buffer drops with a 4096-byte ring buffer, saw none:\n{}",
        loss.table()
    );
    for stage in STAGES {
        assert!(
            loss.received.contains_key(stage),
            "expected stage {stage} in clovisor_received_total:\n{}",
            loss.table()
        );
        let (received, emitted, dropped, buffered) = (
            loss.received(stage),
            loss.emitted(stage),
            loss.dropped(stage),
            loss.buffered(stage),
        );
        assert_eq!(
            received,
            emitted + dropped + buffered,
            "stage {stage}: received must equal emitted {emitted} + dropped {dropped} + buffered {buffered}:\n{}",
            loss.table()
        );
    }
    // What each stage passes on, the next one takes in.
    // Both BPF programs write events: the veth's and the socket point's (`socket_` counters).
    let kernel = |name: &str| {
        let get = |n: &str| loss.kernel.get(n).copied().unwrap_or(0);
        get(name) + get(&format!("socket_{name}"))
    };
    for (what, upstream, downstream) in [
        (
            "kernel events written = events read by the probe",
            kernel("events_emitted"),
            loss.received("probe_decode"),
        ),
        (
            "ring buffer stage = kernel counters",
            loss.received("ring_buffer"),
            kernel("events_emitted") + kernel("ringbuf_full_drops"),
        ),
        (
            "records queued + endpoint updates = records the uplink took",
            loss.emitted("probe_queue") + loss.emitted("probe_endpoints"),
            loss.received("uplink"),
        ),
        (
            "records acknowledged = records the collector took",
            loss.emitted("uplink"),
            loss.received("collector"),
        ),
        (
            "sessions the collector made = sessions the forwarder took + views the local join \
             merged into another view of their exchange",
            loss.sessions_emitted,
            loss.received("forwarder") + loss.views_merged,
        ),
        (
            "sessions acknowledged = sessions the correlator took",
            loss.emitted("forwarder"),
            loss.received("correlator"),
        ),
        (
            "sessions stored = views the join took",
            loss.emitted("correlator"),
            loss.received("join"),
        ),
    ] {
        assert_eq!(upstream, downstream, "{what}:\n{}", loss.table());
    }
    assert!(
        loss.received("correlator") > 0,
        "some sessions must make it through:\n{}",
        loss.table()
    );

    let status = proc.stop(15, Duration::from_secs(30))?;
    assert!(
        status.success(),
        "clovisor must exit cleanly on SIGTERM, got {status}\n{}",
        proc.log_text()
    );
    Ok(())
}

/// The flow key of test flows: client 10.9.0.1:`client_port` to 10.9.0.2:80.
fn flow_key(client_port: u32) -> FlowKey {
    FlowKey {
        client_ip: vec![10, 9, 0, 1],
        server_ip: vec![10, 9, 0, 2],
        client_port,
        server_port: 80,
        transport: 1,
    }
}

/// A pod observation point on interface `interface`.
fn pod_point(interface: &str) -> ObservationPoint {
    ObservationPoint {
        kind: PointKind::Pod as i32,
        interface: interface.into(),
        node: "loss-node".into(),
        ..ObservationPoint::default()
    }
}

const REQUEST: &[u8] = b"GET /loss HTTP/1.1\r\nHost: svc\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// Message `index` of flow `flow_id` (client port `client_port`, seen at `interface`), its
/// request's TCP sequence number `seq` (the join's key).
fn msg(flow_id: u64, client_port: u32, interface: &str, index: u32, dir: Direction) -> Record {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let payload = if dir == Direction::ClientToServer {
        REQUEST
    } else {
        RESPONSE
    };
    Record {
        kind: Some(record::Kind::Message(Message {
            flow: Some(flow_key(client_port)),
            point: Some(pod_point(interface)),
            flow_id,
            index,
            direction: dir as i32,
            to_pod: dir == Direction::ClientToServer,
            start_unix_nanos: now,
            end_unix_nanos: now + 1000,
            tcp_seq: 7000 + client_port,
            bytes: payload.len() as u64,
            packets: 1,
            payload: payload.to_vec().into(),
            protocol: ProtocolHint::Http as i32,
            ..Message::default()
        })),
    }
}

/// One probe stream to the collector: a `Hello`, then batches, each awaited until acknowledged.
struct FakeProbe {
    tx: tokio::sync::mpsc::Sender<ProbeMessage>,
    acks: tonic::Streaming<clovisor_proto::capture::v1::CollectorMessage>,
    seq: u64,
}

impl FakeProbe {
    async fn connect(port: u16, probe_id: &str, node: &str) -> Result<Self> {
        let channel =
            ClientTransport::new(None, false).lazy_channel(&format!("http://127.0.0.1:{port}"))?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tx.send(ProbeMessage {
            kind: Some(probe_message::Kind::Hello(Hello {
                probe_id: probe_id.into(),
                node: node.into(),
                snaplen: 256,
            })),
        })
        .await?;
        let acks = CaptureClient::new(channel)
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Self { tx, acks, seq: 0 })
    }

    /// Sends `records` as the next batch and waits for its acknowledgement.
    async fn batch(&mut self, records: Vec<Record>) -> Result<()> {
        self.seq += 1;
        self.tx
            .send(ProbeMessage {
                kind: Some(probe_message::Kind::Batch(RecordBatch {
                    seq: self.seq,
                    records,
                })),
            })
            .await?;
        let wait = async {
            loop {
                match self.acks.message().await? {
                    Some(m) => match m.kind {
                        Some(collector_message::Kind::Ack(a)) if a.seq >= self.seq => {
                            return Ok(());
                        }
                        _ => {}
                    },
                    None => bail!("the collector closed the stream before acknowledging"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(15), wait)
            .await
            .context("no acknowledgement in 15 s")?
    }
}

#[test]
fn every_forced_loss_in_the_flow_table_and_the_join_is_counted_with_its_reason() -> Result<()> {
    let bin = cargo_build(&["clovisor-collector", "clovisor-correlator"])?;
    let log = |name: &str| {
        std::env::temp_dir().join(format!("clovisor-loss-{name}-{}.log", std::process::id()))
    };
    let correlator_grpc = format!("127.0.0.1:{}", free_port()?);
    let correlator_metrics = format!("127.0.0.1:{}", free_port()?);
    let collector_port = free_port()?;
    let collector_grpc = format!("127.0.0.1:{collector_port}");
    let collector_metrics = format!("127.0.0.1:{}", free_port()?);

    let mut cmd = correlator_command(&bin, &correlator_grpc, &correlator_metrics)?;
    cmd.env("CLOVISOR_JOIN_WINDOW_MS", "300");
    let _correlator = start_service("correlator", cmd, &correlator_metrics, log("correlator"))?;
    let mut cmd = collector_command(&bin, &collector_grpc, &correlator_grpc, &collector_metrics);
    cmd.args(["--max-flows", "4"]);
    let collector = start_service("collector", cmd, &collector_metrics, log("collector"))?;

    use Direction::{ClientToServer as C2S, ServerToClient as S2C};
    let runtime = tokio::runtime::Runtime::new()?;
    let fed: Result<()> = runtime.block_on(async {
        let mut a = FakeProbe::connect(collector_port, "loss-probe-a", "loss-node").await?;
        a.batch(vec![
            // Flow 1: a response before any request.
            msg(1, 1001, "veth-s", 0, S2C),
            // Flow 2: messages 0 and 1 never come; 2 comes twice (the second copy replaces
            // the first, lost as a duplicate); 2 and 3 wait until the gap is skipped.
            msg(2, 1002, "veth-s", 2, C2S),
            msg(2, 1002, "veth-s", 2, C2S),
            msg(2, 1002, "veth-s", 3, S2C),
            // Flow 10: one exchange at the client's veth.
            msg(10, 1010, "veth-c", 0, C2S),
            msg(10, 1010, "veth-c", 1, S2C),
        ])
        .await?;
        // Past the join window (300 ms) of flow 10's view and the reorder timeout (2 s).
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let partial = {
            let mut r = msg(20, 1020, "veth-s", 1, S2C);
            if let Some(record::Kind::Message(m)) = r.kind.as_mut() {
                m.partial = true;
                m.bytes = 10;
            }
            r
        };
        a.batch(vec![
            // Flow 11: the same exchange as flow 10 at the server's veth, after its window.
            msg(11, 1010, "veth-s", 0, C2S),
            msg(11, 1010, "veth-s", 1, S2C),
            // Flow 20: a response flushed early, held for its final counters, and message 3
            // waiting for 2.
            msg(20, 1020, "veth-s", 0, C2S),
            partial,
            msg(20, 1020, "veth-s", 3, C2S),
        ])
        .await?;
        // The probe restarts (a new id for its node): flow 20's two waiting messages and its
        // request, open in its decoder, go with its state. Then five flows into a table of four: the first is evicted for capacity
        // while its message waits for the missing one before it.
        let mut b = FakeProbe::connect(collector_port, "loss-probe-b", "loss-node").await?;
        b.batch(
            (30..35)
                .map(|f| msg(f, 1000 + u32::try_from(f).unwrap_or(0), "veth-s", 1, C2S))
                .collect(),
        )
        .await?;
        drop(a);
        Ok(())
    });
    if let Err(e) = fed {
        bail!("{e:#}\ncollector log:\n{}", collector.log_text());
    }

    let col = settled(
        &format!("http://{collector_metrics}/metrics"),
        Duration::from_secs(20),
    )?;
    let cor = settled(
        &format!("http://{correlator_metrics}/metrics"),
        Duration::from_secs(20),
    )?;
    eprintln!("collector:\n{}correlator:\n{}", col.table(), cor.table());
    let dropped = |l: &Loss, stage: &str, reason: &str| {
        l.dropped
            .get(&(stage.to_owned(), reason.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    for (stage, reason, expected) in [
        ("flow_table", "response_without_request", 1),
        ("flow_table", "duplicate", 1),
        ("flow_table", "probe_restart", 2),
        // Flow 20's request: handed on by the flow table, lost in its decoder.
        ("decoder", "probe_restart", 1),
        // Flow 2's two, and message 0 of each of the five flows of probe b.
        ("flow_order", "gap", 7),
    ] {
        assert_eq!(
            dropped(&col, stage, reason),
            expected,
            "clovisor_dropped_total{{stage={stage:?},reason={reason:?}}}:\n{}",
            col.table()
        );
    }
    assert_eq!(
        (col.received("flow_table"), col.emitted("flow_table")),
        (16, 12),
        "messages taken into flows (16) and handed on (12: flow 2's two, flows 10 and 11's \
         four, flow 20's request, probe b's five):\n{}",
        col.table()
    );
    assert_eq!(
        dropped(&cor, "join", "late"),
        1,
        "flow 11's view, after its exchange was exported:\n{}",
        cor.table()
    );
    for (l, stage) in [
        (&col, "collector"),
        (&col, "flow_table"),
        (&col, "forwarder"),
        (&cor, "correlator"),
        (&cor, "join"),
    ] {
        assert_eq!(
            l.received(stage),
            l.emitted(stage) + l.dropped(stage) + l.buffered(stage),
            "stage {stage}: received = emitted + dropped + buffered:\n{}",
            l.table()
        );
    }
    assert_eq!(
        (cor.received("join"), cor.emitted("join")),
        (4, 3),
        "four views (flows 2, 10, 11 and the evicted flow 30), three in exchanges made ready:\n{}",
        cor.table()
    );
    Ok(())
}
