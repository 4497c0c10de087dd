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

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clovisor_integration_tests::fake_kube::{FakeKube, API_AUDIENCE};
use clovisor_integration_tests::http_client::{http_get_with, http_status};
use clovisor_integration_tests::tls::make_certs;
use clovisor_integration_tests::{api, cargo_build, free_port, start_service};
use clovisor_proto::capture::v1::{probe_message, Hello, ProbeMessage};
use clovisor_proto::delivery::Connector as _;
use clovisor_proto::hops::CaptureConnector;
use clovisor_proto::tls::{ClientTls, ClientTransport, TlsFiles, TlsStats};
use prost::Message as _;
use tokio_stream::wrappers::ReceiverStream;

/// What opening a stream gives: admitted, or the refusal's code.
type Opened = std::result::Result<(), tonic::Code>;

const PROBE_SA: &str = "system:serviceaccount:clovisor-probe:clovisor-probe";
const AUDIENCE: &str = "clovisor-collector";
const NODE_NAME: &str = "authentication.kubernetes.io/node-name";
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";

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
    let tls = ClientTls::new(
        TlsFiles::in_dir(certs.join("probe")),
        Some("clovisor-collector".into()),
        Duration::from_secs(30),
        TlsStats::default(),
    )?;
    let channel = ClientTransport::new(Some(tls), false)
        .lazy_channel(&format!("https://127.0.0.1:{port}"))?;
    let mut connector = CaptureConnector::new(channel).with_token_file(token.map(Path::to_owned));
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let hello = ProbeMessage {
        kind: Some(probe_message::Kind::Hello(Hello {
            probe_id: probe_id.into(),
            node: node.into(),
            snaplen: 256,
        })),
    };
    tx.send(Bytes::from(hello.encode_to_vec())).await?;
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

#[test]
fn a_probe_speaks_only_for_the_node_its_token_was_minted_on() -> Result<()> {
    let bin = cargo_build(&["clovisor-collector"])?;
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    make_certs(&certs)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let kube = rt.block_on(FakeKube::start())?;
    let kubeconfig = kube.write_kubeconfig(dir.path())?;
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
    let token = |name: &str| -> Result<std::path::PathBuf> {
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
