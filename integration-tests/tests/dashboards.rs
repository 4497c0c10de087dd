//! The Grafana dashboards of `manifests/overlays/grafana` against a real Prometheus (Debian's
//! `prometheus`, scripts/install-deps.sh) scraping a traced demo: the real `clovisor-probe`,
//! `clovisor-collector` and `clovisor-correlator` processes tracing a client pod calling nginx
//! in a server pod (pages, a 404, a 503) and a host outside the node. Jaeger is down in this
//! demo (the span export points at a closed port), so the tracer's own drops have something to
//! show. Every query of every dashboard is run through Prometheus's HTTP API and must return
//! data; `promtool check metrics` must pass on every component's `/metrics`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clovisor_integration_tests::http_client::{http_get, Curl};
use clovisor_integration_tests::{
    cargo_build, free_port, our_programs_complete_on, run, start_service, wait_for, Lab, Nginx,
    PipelineAddrs, Proc,
};
use serde_json::Value;

/// How long the demo's client makes requests.
const TRAFFIC: Duration = Duration::from_secs(8);

fn log_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "clovisor-dashboards-{name}-{}.log",
        std::process::id()
    ))
}

/// Every `expr` of every panel (rows' panels too) of a Grafana dashboard, with its title.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    while let Some(p) = panels.pop() {
        panels.extend(p["panels"].as_array().into_iter().flatten());
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((
                    p["title"].as_str().unwrap_or_default().to_owned(),
                    e.to_owned(),
                ));
            }
        }
    }
    out
}

/// The query as Grafana would send it with every variable at "All".
fn as_sent(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$namespace", ".*")
}

/// Runs an instant query; the result series.
fn query(prometheus: &str, expr: &str) -> Result<Vec<Value>> {
    let out = run(
        "curl",
        &[
            "-fsS",
            "--max-time",
            "10",
            "-G",
            &format!("http://{prometheus}/api/v1/query"),
            "--data-urlencode",
            &format!("query={expr}"),
        ],
    )?;
    if !out.status.success() {
        bail!("query {expr}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("Prometheus answer")?;
    if v["status"] != "success" {
        bail!("query {expr}: {v}");
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/overlays/grafana/dashboards")
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() -> Result<()> {
    let bin = cargo_build(&[
        "clovisor-probe",
        "clovisor-collector",
        "clovisor-correlator",
    ])?;
    let mut lab = Lab::new()?;
    let client = lab.pod("dcl")?;
    let server = lab.pod("dsv")?;
    let _nginx = Nginx::start(&server)?;
    let outside = lab.outside_host()?;
    let _outside_nginx = Nginx::start(&outside.host)?;

    let PipelineAddrs {
        correlator_grpc,
        correlator_api: api,
        correlator_metrics,
        collector_grpc,
        collector_metrics,
        probe_metrics,
    } = PipelineAddrs::new()?;
    let jaeger_down = format!("http://127.0.0.1:{}", free_port()?);

    let mut cmd = Command::new(bin.join("clovisor-correlator"));
    cmd.args(["--grpc-listen", &correlator_grpc, "--api-listen", &api])
        .args(["--metrics-listen", &correlator_metrics, "--redis", ""])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &jaeger_down)
        .env("CLOVISOR_EXPORT_RETRY_MAX_ELAPSED_MS", "200")
        .env("OTEL_BSP_SCHEDULE_DELAY", "200");
    let _correlator = start_service(
        "correlator",
        cmd,
        &correlator_metrics,
        log_path("correlator"),
    )?;
    let mut cmd = Command::new(bin.join("clovisor-collector"));
    cmd.args(["--grpc-listen", &collector_grpc])
        .args(["--correlator", &format!("http://{correlator_grpc}")])
        .args(["--metrics-listen", &collector_metrics, "--redis", ""]);
    let _collector = start_service("collector", cmd, &collector_metrics, log_path("collector"))?;
    let mut cmd = Command::new(bin.join("clovisor-probe"));
    cmd.args(["--netns", &client.netns, "--netns", &server.netns])
        .args(["--node-interface", &outside.uplink, "--port", "80"])
        .args(["--collector", &format!("http://{collector_grpc}")])
        .args(["--metrics-listen", &probe_metrics, "--redis", ""]);
    let probe = start_service("probe", cmd, &probe_metrics, log_path("probe"))?;
    if let Err(e) = wait_for("probe attached", Duration::from_secs(20), || {
        Ok(our_programs_complete_on(&server.host_veth)?
            && our_programs_complete_on(&outside.uplink)?)
    }) {
        bail!("{e:#}\nprobe log:\n{}", probe.log_text());
    }

    // Prometheus scrapes the three components every second.
    let dir = tempfile::tempdir()?;
    let prometheus = format!("127.0.0.1:{}", free_port()?);
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n\
             - job_name: clovisor-probe\n  static_configs: [{{targets: ['{probe_metrics}']}}]\n\
             - job_name: clovisor-collector\n  static_configs: [{{targets: ['{collector_metrics}']}}]\n\
             - job_name: clovisor-correlator\n  static_configs: [{{targets: ['{correlator_metrics}']}}]\n"
        ),
    )?;
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={prometheus}"))
        .stdin(Stdio::null());
    let mut prom = Proc::spawn(cmd, log_path("prometheus"))?;
    if let Err(e) = wait_for("Prometheus ready", Duration::from_secs(30), || {
        if !prom.running() {
            bail!("prometheus exited");
        }
        Ok(http_get(&format!("http://{prometheus}/-/ready")).is_ok())
    }) {
        bail!("{e:#}\nprometheus log:\n{}", prom.log_text());
    }

    // The demo's traffic: a new connection per request (each ends with a FIN), pages, a 404
    // and a 503 in the pod, and pages from the host outside the node.
    let began = Instant::now();
    let inside = format!("http://{}", server.ipv4);
    let outside_url = format!("http://{}/", outside.host.ipv4);
    while began.elapsed() < TRAFFIC {
        for path in ["/", "/big.bin", "/missing", "/boom"] {
            let _ = Curl::new()
                .max_time(5)
                .run(&client, &[format!("{inside}{path}")]);
        }
        let _ = Curl::new().max_time(5).run(&client, &[&outside_url]);
        std::thread::sleep(Duration::from_millis(100));
    }

    // promtool on every component's own /metrics.
    for (name, addr) in [
        ("probe", &probe_metrics),
        ("collector", &collector_metrics),
        ("correlator", &correlator_metrics),
    ] {
        let text = http_get(&format!("http://{addr}/metrics"))?;
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("promtool")?;
        {
            use std::io::Write;
            let mut stdin = check.stdin.take().context("promtool stdin")?;
            stdin.write_all(text.as_bytes())?;
        }
        let out = check.wait_with_output()?;
        assert!(
            out.status.success(),
            "promtool check metrics on the {name}'s /metrics:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Every dashboard's every query returns data once Prometheus has a minute's worth.
    let mut all = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dashboards_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        4,
        "RED, traffic, TCP and health dashboards: {files:?}"
    );
    for f in &files {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(f)?)
            .with_context(|| format!("{} is JSON", f.display()))?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (title, expr) in queries(&d) {
            all.push((format!("{name}: {title}"), as_sent(&expr)));
        }
    }
    assert!(
        all.len() >= 20,
        "the dashboards hold their queries: {all:?}"
    );
    let mut empty = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        empty.clear();
        for (panel, expr) in &all {
            if query(&prometheus, expr)?.is_empty() {
                empty.push(format!("{panel}\n    {expr}"));
            }
        }
        if empty.is_empty() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(
        empty.is_empty(),
        "{} of {} dashboard queries returned no data:\n{}",
        empty.len(),
        all.len(),
        empty.join("\n")
    );
    Ok(())
}
