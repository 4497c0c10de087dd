//! Mutual TLS between the real `clovisor-collector` and `clovisor-correlator` processes, with
//! certificates made by `scripts/make-certs.sh` (openssl), over TCP on loopback. The test plays
//! the probe: with the probe's certificate its records become a session in the correlator's
//! REST API; with no certificate, one from another CA, or another component's certificate it is
//! refused, and every refusal is counted. An `https://` peer without TLS configured, and
//! plaintext to a non-loopback address, stop a service at start. The correlator's HTTP side
//! requires a bearer token: without it REST and `/metrics` answer 401, `/healthz` stays open.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clovisor_integration_tests::http_client::{http_get_with, http_status};
use clovisor_integration_tests::tls::make_certs;
use clovisor_integration_tests::{api, cargo_build, free_port, start_service, wait_for, Proc};
use clovisor_proto::capture::v1::capture_client::CaptureClient;
use clovisor_proto::capture::v1::{
    probe_message, record, Direction, FlowKey, Hello, Message, ObservationPoint, ProbeMessage,
    ProtocolHint, Record, RecordBatch,
};
use clovisor_proto::tls::{ClientTls, ClientTransport, TlsFiles, TlsStats};

fn log_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("clovisor-tls-{name}-{}.log", std::process::id()))
}

fn message(index: u32, dir: Direction, payload: &[u8]) -> Record {
    Record {
        kind: Some(record::Kind::Message(Message {
            flow: Some(FlowKey {
                client_ip: vec![10, 0, 0, 1],
                server_ip: vec![10, 0, 0, 2],
                client_port: 5555,
                server_port: 80,
                transport: 1,
            }),
            point: Some(ObservationPoint::default()),
            flow_id: 9,
            index,
            direction: dir as i32,
            payload: payload.to_vec().into(),
            protocol: ProtocolHint::Http as i32,
            ..Message::default()
        })),
    }
}

/// Streams a `Hello` and one request/response exchange to the collector at `port` as a probe
/// presenting the certificate in `cert_dir` (none: no client certificate), trusting `ca`.
/// `Ok(acked batch)` or the refusal.
async fn probe_exchange(port: u16, cert_dir: Option<&Path>, ca: &Path) -> Result<u64> {
    let files = TlsFiles {
        cert: cert_dir.map(|d| d.join("tls.crt")),
        key: cert_dir.map(|d| d.join("tls.key")),
        ca: Some(ca.to_owned()),
    };
    let tls = ClientTls::new(files, None, Duration::from_secs(30), TlsStats::default())?;
    let channel = ClientTransport::new(Some(tls), false)
        .lazy_channel(&format!("https://127.0.0.1:{port}"))?;
    let msgs = vec![
        ProbeMessage {
            kind: Some(probe_message::Kind::Hello(Hello {
                probe_id: "tls-probe".into(),
                node: "node-a".into(),
                snaplen: 256,
            })),
        },
        ProbeMessage {
            kind: Some(probe_message::Kind::Batch(RecordBatch {
                seq: 1,
                records: vec![
                    message(
                        0,
                        Direction::ClientToServer,
                        b"GET /over-mtls HTTP/1.1\r\nHost: h\r\n\r\n",
                    ),
                    message(
                        1,
                        Direction::ServerToClient,
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                    ),
                ],
            })),
        },
    ];
    let call = async {
        let mut inbound = CaptureClient::new(channel)
            .stream(futures::stream::iter(msgs).chain(futures::stream::pending()))
            .await?
            .into_inner();
        match inbound.message().await? {
            Some(m) => match m.kind {
                Some(clovisor_proto::capture::v1::collector_message::Kind::Ack(a)) => Ok(a.seq),
                None => bail!("an empty collector message"),
            },
            None => bail!("stream closed without an ack"),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .context("no answer in 10 s")?
}

use futures::StreamExt as _;

/// Runs `cmd` expecting it to exit non-zero at start with `message` in its output.
fn fails_at_start(mut cmd: Command, message: &str) -> Result<()> {
    let out = cmd.env("RUST_BACKTRACE", "0").output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() || !text.contains(message) {
        bail!(
            "expected a start-up failure saying {message:?}; exit {:?}, output:\n{text}",
            out.status
        );
    }
    Ok(())
}

#[test]
fn mutual_tls_between_real_processes_admits_the_probe_and_refuses_the_rest() -> Result<()> {
    let bin = cargo_build(&["clovisor-collector", "clovisor-correlator"])?;
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good");
    let other = dir.path().join("other");
    make_certs(&good)?;
    make_certs(&other)?;

    let correlator_grpc = free_port()?;
    let api_addr = format!("127.0.0.1:{}", free_port()?);
    let correlator_metrics = format!("127.0.0.1:{}", free_port()?);
    let collector_grpc = free_port()?;
    let collector_metrics = format!("127.0.0.1:{}", free_port()?);
    let token_file = dir.path().join("api-token");
    std::fs::write(&token_file, "t0ken-for-the-test\n")?;
    let auth = "Authorization: Bearer t0ken-for-the-test";

    let mut cmd = Command::new(bin.join("clovisor-correlator"));
    cmd.args([
        "--grpc-listen",
        &format!("127.0.0.1:{correlator_grpc}"),
        "--api-listen",
        &api_addr,
    ])
    .args(["--metrics-listen", &correlator_metrics, "--redis", ""])
    .args(["--tls-dir"])
    .arg(good.join("correlator"))
    .args(["--tls-peer-names", "clovisor-collector"])
    .arg("--api-token-file")
    .arg(&token_file)
    .env("OTEL_TRACES_EXPORTER", "none");
    let _correlator: Proc = start_service(
        "correlator",
        cmd,
        &correlator_metrics,
        log_path("correlator"),
    )?;

    let collector_cmd = |correlator_url: &str, tls: bool| {
        let mut cmd = Command::new(bin.join("clovisor-collector"));
        cmd.args([
            "--grpc-listen",
            &format!("127.0.0.1:{collector_grpc}"),
            "--correlator",
            correlator_url,
        ])
        .args(["--metrics-listen", &collector_metrics, "--redis", ""]);
        if tls {
            cmd.arg("--tls-dir")
                .arg(good.join("collector"))
                .args(["--tls-peer-names", "clovisor-probe"]);
        }
        cmd
    };
    // Never a silent downgrade: these stop the collector before it listens.
    fails_at_start(
        collector_cmd(&format!("https://127.0.0.1:{correlator_grpc}"), false),
        "https:// needs TLS configured",
    )?;
    fails_at_start(
        collector_cmd("http://192.0.2.1:50052", false),
        "plaintext http:// to a non-loopback address is refused",
    )?;

    let collector = start_service(
        "collector",
        collector_cmd(&format!("https://127.0.0.1:{correlator_grpc}"), true),
        &collector_metrics,
        log_path("collector"),
    )?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ca = good.join("ca.crt");
    // Refused: no certificate, a certificate from another CA, the correlator's certificate.
    let anonymous = rt.block_on(probe_exchange(collector_grpc, None, &ca));
    assert!(
        anonymous.is_err(),
        "a probe without a certificate must be refused, got {anonymous:?}"
    );
    let foreign = rt.block_on(probe_exchange(
        collector_grpc,
        Some(&other.join("probe")),
        &ca,
    ));
    assert!(
        foreign.is_err(),
        "a probe certificate from another CA must be refused, got {foreign:?}"
    );
    let wrong_role = rt.block_on(probe_exchange(
        collector_grpc,
        Some(&good.join("correlator")),
        &ca,
    ));
    assert!(
        wrong_role.is_err(),
        "the correlator's certificate is not a probe's, got {wrong_role:?}"
    );
    // Admitted: the probe's certificate; its exchange crosses both mTLS hops.
    let acked = rt
        .block_on(probe_exchange(
            collector_grpc,
            Some(&good.join("probe")),
            &ca,
        ))
        .with_context(|| {
            format!(
                "the probe's certificate must be admitted\ncollector log:\n{}",
                collector.log_text()
            )
        })?;
    assert_eq!(acked, 1);

    wait_for(
        "the session in the correlator's REST API",
        Duration::from_secs(15),
        || {
            Ok(api::sessions_with(&api_addr, &[auth])?
                .iter()
                .any(|s| s["http"]["path"].as_str() == Some("/over-mtls")))
        },
    )
    .with_context(|| format!("collector log:\n{}", collector.log_text()))?;

    let text = api::metrics_text(&collector_metrics)?;
    let handshake =
        api::sample(&text, "clovisor_tls_refused_total{reason=\"handshake\"}").unwrap_or(0.0);
    let peer_name =
        api::sample(&text, "clovisor_tls_refused_total{reason=\"peer_name\"}").unwrap_or(0.0);
    assert!(
        handshake >= 2.0,
        "no certificate and a foreign one: 2 handshake refusals counted, saw {handshake}\n{text}"
    );
    assert_eq!(
        peer_name, 1.0,
        "the correlator's certificate refused by name\n{text}"
    );
    let sessions_url = format!("http://{api_addr}/api/v1/sessions");
    let metrics_url = format!("http://{correlator_metrics}/metrics");
    assert_eq!(
        http_status(&sessions_url, &[])?,
        401,
        "REST without a token"
    );
    assert_eq!(
        http_status(&sessions_url, &["Authorization: Bearer wrong"])?,
        401,
        "REST with a wrong token"
    );
    assert_eq!(
        http_status(&metrics_url, &[])?,
        401,
        "/metrics without a token"
    );
    assert_eq!(
        http_status(&format!("http://{correlator_metrics}/healthz"), &[])?,
        200,
        "health stays open"
    );
    assert_eq!(
        http_status(&format!("http://{api_addr}/readyz"), &[])?,
        200,
        "readiness stays open"
    );
    let correlator_text = http_get_with(&metrics_url, &[auth])?;
    assert_eq!(
        api::sample(&correlator_text, "clovisor_http_unauthorized_total"),
        Some(3.0),
        "the three refused requests counted\n{correlator_text}"
    );
    assert_eq!(
        api::sample(&correlator_text, "clovisor_tls_accepted_total"),
        Some(1.0),
        "the collector's one connection to the correlator was mutual TLS\n{correlator_text}"
    );
    Ok(())
}
