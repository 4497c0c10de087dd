//! Loss accounting under real overload: `clovisor all-in-one` traces a server pod with a
//! deliberately tiny ring buffer (one page) and record queue while a client pod fires a bounded
//! burst of parallel HTTP requests at nginx. The kernel must lose events — and every stage must
//! account for every item: `received = emitted + dropped + buffered`, exactly, once traffic has
//! settled; and what one stage emits, the next receives.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clovisor_integration_tests::http_client::http_get;
use clovisor_integration_tests::{
    clovisor_bin, free_port, our_programs_on, run_in, wait_for, Lab, Nginx, Proc,
};

/// Requests in the burst.
const BURST: usize = 2000;
/// Connections the client keeps open at once.
const PARALLEL: &str = "64";

/// Stages that must report a balance in all-in-one mode without span export.
const STAGES: [&str; 8] = [
    "ring_buffer",
    "probe_decode",
    "probe_queue",
    "probe_endpoints",
    "uplink",
    "collector",
    "forwarder",
    "correlator",
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
        Ok(http_get(&ready).is_ok() && !our_programs_on(&server.host_veth)?.is_empty())
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
