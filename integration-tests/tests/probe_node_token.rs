//! Per-node probe identity: the real `clovisor-collector` with `--probe-identity token`, behind
//! mutual TLS (certificates by `scripts/make-certs.sh`, the one probe certificate every node
//! shares, as in the manifests), asking the fake Kubernetes API server (real
//! `authentication.k8s.io/v1` TokenReview JSON, audiences and `status.user.extra` included)
//! about the token the probe presents. The test plays the probe through the probe's own
//! connector (`CaptureConnector::with_token_file`, what the uplink uses): its pod's token, bound
//! to node A, gets node A's `Hello` in; claiming node B with it is refused and counted; a token
//! for another audience, of another service account, or bound to no node is refused; node B's
//! token gets node B in; with the API server gone a new token is refused (fails closed). The
//! collector's `/metrics` takes only tokens the same API server vouches for
//! (`--api-allowed-identities`, no static token): Prometheus' gets in, a probe's does not.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clovisor_integration_tests::fake_kube::{FakeKube, API_AUDIENCE};
use clovisor_integration_tests::http_client::{http_get_with, http_status};
use clovisor_integration_tests::tls::make_certs;
use clovisor_integration_tests::{api, cargo_build, free_port, start_service, wait_for};
use clovisor_proto::capture::v1::{probe_message, Hello, ProbeMessage};
use clovisor_proto::delivery::Connector as _;
use clovisor_proto::hops::{CaptureConnector, HopMessage};
use clovisor_proto::tls::{ClientTls, ClientTransport, TlsFiles, TlsStats};
use prost::Message as _;
use tokio_stream::wrappers::ReceiverStream;

/// What opening a stream gives: admitted, or the refusal's code.
type Opened = std::result::Result<(), tonic::Code>;

const PROBE_SA: &str = "system:serviceaccount:clovisor-probe:clovisor-probe";
const AUDIENCE: &str = "clovisor-collector";
const NODE_NAME: &str = "authentication.kubernetes.io/node-name";
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";

/// A channel to the collector at `port` as the probe: its certificate from `certs`, the
/// collector's verified. Call inside a runtime (the TLS files' reloader runs on it).
fn probe_channel(port: u16, certs: &Path) -> Result<tonic::transport::Channel> {
    let tls = ClientTls::new(
        TlsFiles::in_dir(certs.join("probe")),
        Some("clovisor-collector".into()),
        Duration::from_secs(30),
        TlsStats::default(),
    )?;
    Ok(
        ClientTransport::new(Some(tls), false)
            .lazy_channel(&format!("https://127.0.0.1:{port}"))?,
    )
}

/// Opens a probe stream to the collector at `port` with the probe's certificate in `certs`,
/// presenting the token in `token` (none: no token), saying `Hello` for `node`. `Ok` when the
/// collector admits it, else the refusal's code.
async fn open(
    port: u16,
    certs: &Path,
    token: Option<&Path>,
    probe_id: &str,
    node: &str,
) -> Result<Opened> {
    let mut connector = CaptureConnector::new(probe_channel(port, certs)?)
        .with_token_file(token.map(Path::to_owned));
    let (tx, rx) = tokio::sync::mpsc::channel::<HopMessage>(4);
    let hello = ProbeMessage {
        kind: Some(probe_message::Kind::Hello(Hello {
            probe_id: probe_id.into(),
            node: node.into(),
            snaplen: 256,
        })),
    };
    tx.send(HopMessage::from(Bytes::from(hello.encode_to_vec())))
        .await?;
    let opened = tokio::time::timeout(
        Duration::from_secs(10),
        connector.open(ReceiverStream::new(rx)),
    )
    .await
    .context("no answer in 10 s")?;
    Ok(opened.map(drop).map_err(|s| s.code()))
}

const PROMETHEUS: &str = "Authorization: Bearer prom-token";

fn refused(metrics: &str, reason: &str) -> Result<f64> {
    let text = http_get_with(&format!("http://{metrics}/metrics"), &[PROMETHEUS])?;
    Ok(api::sample(
        &text,
        &format!("clovisor_collector_probes_refused_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0))
}

/// What both tests start from: the directory of the binaries of `packages` (built), a
/// temporary directory with certificates by `make-certs.sh` in `certs`, a runtime, and the fake
/// API server with a kubeconfig naming it.
type Setup = (
    PathBuf,
    tempfile::TempDir,
    PathBuf,
    tokio::runtime::Runtime,
    FakeKube,
    PathBuf,
);

fn setup(packages: &[&str]) -> Result<Setup> {
    let bin = cargo_build(packages)?;
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    make_certs(&certs)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let kube = rt.block_on(FakeKube::start())?;
    let kubeconfig = kube.write_kubeconfig(dir.path())?;
    Ok((bin, dir, certs, rt, kube, kubeconfig))
}

#[test]
fn a_probe_speaks_only_for_the_node_its_token_was_minted_on() -> Result<()> {
    let (bin, dir, certs, rt, kube, kubeconfig) = setup(&["clovisor-collector"])?;
    let bound = |token: &str, user: &str, audience: &str, node: Option<&str>| {
        let mut extra = vec![(POD_NAME, "clovisor-probe-x7k2p")];
        extra.extend(node.map(|n| (NODE_NAME, n)));
        kube.add_bound_token(
            token,
            user,
            &["system:serviceaccounts"],
            &[audience],
            &extra,
        );
    };
    bound("tok-node-a", PROBE_SA, AUDIENCE, Some("node-a"));
    bound("tok-node-b", PROBE_SA, AUDIENCE, Some("node-b"));
    bound("tok-api-audience", PROBE_SA, API_AUDIENCE, Some("node-a"));
    bound(
        "tok-other-sa",
        "system:serviceaccount:default:app",
        AUDIENCE,
        Some("node-a"),
    );
    bound("tok-no-node", PROBE_SA, AUDIENCE, None);
    kube.add_token(
        "prom-token",
        "system:serviceaccount:monitoring:prometheus",
        &["system:serviceaccounts"],
    );
    let token = |name: &str| -> Result<PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{name}\n"))?;
        Ok(path)
    };

    let grpc = free_port()?;
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let mut cmd = Command::new(bin.join("clovisor-collector"));
    cmd.args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
        .args(["--metrics-listen", &metrics, "--redis", ""])
        // Nothing listens there: admission answers before any session would be forwarded.
        .args([
            "--correlator",
            &format!("http://127.0.0.1:{}", free_port()?),
        ])
        .arg("--tls-dir")
        .arg(certs.join("collector"))
        .args(["--tls-peer-names", "clovisor-probe"])
        .args(["--probe-identity", "token"])
        .args([
            "--api-allowed-identities",
            "system:serviceaccount:monitoring:prometheus",
        ])
        .env("KUBECONFIG", &kubeconfig);
    let log = std::env::temp_dir().join(format!(
        "clovisor-probe-node-token-{}.log",
        std::process::id()
    ));
    let collector = start_service("collector", cmd, &metrics, log)?;

    // The read side: only a reviewed, allowed token.
    let metrics_url = format!("http://{metrics}/metrics");
    assert_eq!(
        http_status(&metrics_url, &[])?,
        401,
        "/metrics without a token"
    );
    assert_eq!(
        http_status(&metrics_url, &["Authorization: Bearer tok-node-a"])?,
        401,
        "a probe's token is not Prometheus'"
    );
    assert_eq!(http_status(&metrics_url, &[PROMETHEUS])?, 200);

    let node_a = token("tok-node-a")?;
    let cases: [(&str, Option<&Path>, &str, Opened); 7] = [
        ("probe-a", Some(&node_a), "node-a", Ok(())),
        (
            "probe-a2",
            Some(&node_a),
            "node-b",
            Err(tonic::Code::PermissionDenied),
        ),
        ("probe-x", None, "node-a", Err(tonic::Code::Unauthenticated)),
        (
            "probe-x",
            Some(&token("tok-api-audience")?),
            "node-a",
            Err(tonic::Code::Unauthenticated),
        ),
        (
            "probe-x",
            Some(&token("tok-other-sa")?),
            "node-a",
            Err(tonic::Code::Unauthenticated),
        ),
        (
            "probe-x",
            Some(&token("tok-no-node")?),
            "node-a",
            Err(tonic::Code::PermissionDenied),
        ),
        ("probe-b", Some(&token("tok-node-b")?), "node-b", Ok(())),
    ];
    for (probe, token, node, want) in cases {
        let got = rt.block_on(open(grpc, &certs, token, probe, node))?;
        if got != want {
            bail!(
                "{probe} on {node} with {token:?}: expected {want:?}, got {got:?}\ncollector log:\n{}",
                collector.log_text()
            );
        }
    }
    for (reason, want) in [
        ("node_mismatch", 1.0),
        ("no_token", 1.0),
        ("token_refused", 2.0),
        ("node_unverified", 1.0),
    ] {
        let got = refused(&metrics, reason)?;
        assert_eq!(got, want, "refusals counted as {reason}");
    }
    // Node A's probe restarting (a new pod, a new probe id) takes node A over again.
    assert_eq!(
        rt.block_on(open(grpc, &certs, Some(&node_a), "probe-a-next", "node-a"))?,
        Ok(())
    );
    let reviews = kube.requests("tokenreviews", "create");

    // The API server gone: a token not reviewed before cannot be verified; the probe is told
    // to come back later (unavailable), nothing is admitted.
    rt.block_on(async { drop(kube) });
    let late = token("tok-late")?;
    assert_eq!(
        rt.block_on(open(grpc, &certs, Some(&late), "probe-late", "node-c"))?,
        Err(tonic::Code::Unavailable)
    );
    assert_eq!(refused(&metrics, "token_unverifiable")?, 1.0);
    assert!(
        reviews >= 5,
        "each distinct token reviewed by the API server, saw {reviews}"
    );
    Ok(())
}

/// A JWT-shaped token with `exp` and a marker `jti` (the fake API server does not verify the
/// signature; the collector reads `exp` only after the review accepted the token).
fn jwt(exp: u64, jti: &str) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(r#"{"alg":"RS256","kid":"fake"}"#),
        b64(&format!(
            r#"{{"aud":["{AUDIENCE}"],"exp":{exp},"jti":"{jti}","sub":"{PROBE_SA}"}}"#
        ))
    )
}

/// One exchange on flow `i`: its request and its response, as a probe records them.
fn exchange(i: u32) -> [clovisor_proto::capture::v1::Record; 2] {
    use clovisor_proto::capture::v1::{
        record, Direction, FlowKey, Message, ObservationPoint, ProtocolHint, Record,
    };
    let message = |index: u32, direction: Direction, payload: String| Record {
        kind: Some(record::Kind::Message(Message {
            flow: Some(FlowKey {
                client_ip: vec![10, 0, 0, 1],
                server_ip: vec![10, 0, 0, 2],
                client_port: 10_000 + i,
                server_port: 80,
                transport: 1,
            }),
            point: Some(ObservationPoint::default()),
            flow_id: u64::from(i) + 1,
            index,
            direction: direction as i32,
            payload: payload.into_bytes().into(),
            protocol: ProtocolHint::Http as i32,
            ..Message::default()
        })),
    };
    [
        message(
            0,
            Direction::ClientToServer,
            format!("GET /exchange-{i} HTTP/1.1\r\nHost: h\r\n\r\n"),
        ),
        message(
            1,
            Direction::ServerToClient,
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_owned(),
        ),
    ]
}

/// Exchanges the probe sends, one every [`EXCHANGE_EVERY`].
const EXCHANGES: u32 = 100;
const EXCHANGE_EVERY: Duration = Duration::from_millis(100);
/// When the first token expires, from the start of the traffic.
const FIRST_EXPIRES_AFTER: u64 = 4;

#[test]
fn a_probe_stream_ends_with_its_token_and_resumes_on_the_renewed_one_losing_nothing() -> Result<()>
{
    use clovisor_proto::delivery::{DeliveryConfig, DeliveryStats, Sender};
    use clovisor_proto::hops::{CaptureHop, ChunkBuilder};

    let (bin, dir, certs, rt, kube, kubeconfig) =
        setup(&["clovisor-collector", "clovisor-correlator"])?;
    let start = std::time::SystemTime::now();
    let now = start.duration_since(std::time::UNIX_EPOCH)?.as_secs();
    // The kubelet's tokens for the probe's pod: the first expires early; the next two are the
    // renewals written into the token file before the one they replace ends.
    let first = jwt(now + FIRST_EXPIRES_AFTER, "first");
    let renewed = jwt(now + 3600, "renewed");
    let after_revocation = jwt(now + 3600, "after-revocation");
    for token in [&first, &renewed, &after_revocation] {
        kube.add_bound_token(
            token,
            PROBE_SA,
            &["system:serviceaccounts"],
            &[AUDIENCE],
            &[(POD_NAME, "clovisor-probe-x7k2p"), (NODE_NAME, "node-a")],
        );
    }
    kube.expire_token_at(
        &first,
        std::time::UNIX_EPOCH + Duration::from_secs(now + FIRST_EXPIRES_AFTER),
    );
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &first)?;

    let correlator_grpc = format!("127.0.0.1:{}", free_port()?);
    let correlator_metrics = format!("127.0.0.1:{}", free_port()?);
    let api_addr = format!("127.0.0.1:{}", free_port()?);
    let mut cmd = Command::new(bin.join("clovisor-correlator"));
    cmd.args(["--grpc-listen", &correlator_grpc, "--api-listen", &api_addr])
        .args(["--metrics-listen", &correlator_metrics, "--redis", ""])
        .env("OTEL_TRACES_EXPORTER", "none");
    let log = |name: &str| {
        std::env::temp_dir().join(format!(
            "clovisor-probe-token-bounds-{name}-{}.log",
            std::process::id()
        ))
    };
    let _correlator = start_service("correlator", cmd, &correlator_metrics, log("correlator"))?;

    let grpc = free_port()?;
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let mut cmd = Command::new(bin.join("clovisor-collector"));
    cmd.args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
        .args(["--metrics-listen", &metrics, "--redis", ""])
        .args(["--correlator", &format!("http://{correlator_grpc}")])
        .arg("--tls-dir")
        .arg(certs.join("collector"))
        .args(["--tls-peer-names", "clovisor-probe"])
        .args(["--probe-identity", "token"])
        .args(["--probe-token-recheck-secs", "1"])
        .env("KUBECONFIG", &kubeconfig);
    let collector = start_service("collector", cmd, &metrics, log("collector"))?;

    // The probe: its real sender (replay buffer, reconnects) and connector (token file read at
    // every connect).
    // The TLS files' reloader and the channel run on the test's runtime.
    let _in_runtime = rt.enter();
    let channel = probe_channel(grpc, &certs)?;
    let hello = Hello {
        probe_id: "probe-token-bounds".into(),
        node: "node-a".into(),
        snaplen: 256,
    };
    let sender = Sender::new(
        CaptureHop::new(&hello, 1024),
        CaptureConnector::new(channel).with_token_file(Some(token_file.clone())),
        DeliveryConfig::default(),
    );
    let stats = sender.stats();
    let (records, input) = tokio::sync::mpsc::channel(256);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let probe = rt.spawn(sender.run(input, async {
        let _ = stopped.await;
    }));

    let text = |series: &str| -> Result<f64> {
        Ok(api::sample(&api::metrics_text(&metrics)?, series).unwrap_or(0.0))
    };
    let ended = |reason: &str| {
        text(&format!(
            "clovisor_collector_probe_streams_ended_total{{reason=\"{reason}\"}}"
        ))
    };
    let traffic_started = std::time::Instant::now();
    let mut renewed_written = false;
    let mut revoked = false;
    for i in 0..EXCHANGES {
        let [request, response] = exchange(i);
        // Request and response in separate chunks, so that a stream's end can fall between them.
        rt.block_on(records.send(ChunkBuilder::chunk_of([&request])))?;
        std::thread::sleep(EXCHANGE_EVERY / 2);
        rt.block_on(records.send(ChunkBuilder::chunk_of([&response])))?;
        std::thread::sleep(EXCHANGE_EVERY / 2);
        let elapsed = traffic_started.elapsed();
        // The kubelet renews the token well before it expires.
        if !renewed_written && elapsed >= Duration::from_secs(2) {
            std::fs::write(&token_file, &renewed)?;
            renewed_written = true;
        }
        // The renewed token revoked once the stream runs on it; the file already holds the next.
        if !revoked && ended("token_expired")? >= 1.0 && elapsed >= Duration::from_secs(6) {
            std::fs::write(&token_file, &after_revocation)?;
            kube.revoke_token(&renewed);
            revoked = true;
        }
    }
    if !revoked {
        bail!(
            "the first token's expiry did not end the stream within {:?}\ncollector log:\n{}",
            traffic_started.elapsed(),
            collector.log_text()
        );
    }
    wait_for(
        "the revoked token to end its stream",
        Duration::from_secs(10),
        || Ok(ended("token_revoked")? >= 1.0),
    )
    .with_context(|| format!("collector log:\n{}", collector.log_text()))?;
    // The probe is back on the token after the revocation: everything is acknowledged.
    let records_sent = u64::from(EXCHANGES) * 2;
    wait_for(
        "every record acknowledged by the collector",
        Duration::from_secs(20),
        || Ok(DeliveryStats::get(&stats.items_acked) == records_sent),
    )
    .with_context(|| {
        format!(
            "acknowledged {} of {records_sent}\ncollector log:\n{}",
            DeliveryStats::get(&stats.items_acked),
            collector.log_text()
        )
    })?;
    let _ = stop.send(());
    rt.block_on(probe)?;

    // Nothing lost, nothing twice: every exchange is one session at the correlator.
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    wait_for(
        "every exchange at the correlator",
        Duration::from_secs(20),
        || {
            seen.clear();
            for s in api::sessions(&api_addr)? {
                if let Some(path) = s["http"]["path"].as_str() {
                    *seen.entry(path.to_owned()).or_default() += 1;
                }
            }
            Ok(seen.len() == EXCHANGES as usize)
        },
    )
    .with_context(|| format!("saw {} distinct exchanges", seen.len()))?;
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "exchanges seen more than once: {twice:?}");

    assert_eq!(ended("token_expired")?, 1.0, "the first token's expiry");
    assert_eq!(
        ended("token_revoked")?,
        1.0,
        "the renewed token's revocation"
    );
    assert_eq!(ended("max_age")?, 0.0, "every token carried an exp");
    assert!(
        DeliveryStats::get(&stats.connects) >= 3,
        "the probe connected with each of its three tokens, saw {} connects",
        DeliveryStats::get(&stats.connects)
    );
    assert!(
        text("clovisor_collector_probe_token_rechecks_total{result=\"accepted\"}")? >= 2.0,
        "the first tokens were reviewed again while their streams ran"
    );
    assert_eq!(
        text("clovisor_collector_probe_token_rechecks_total{result=\"refused\"}")?,
        1.0
    );
    Ok(())
}
