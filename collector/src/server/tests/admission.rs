//! Admission (`server::admission`): identities bound to TLS client certificates over real
//! handshakes on loopback, forged batch numbers, and the bounds on probe ids.

use std::time::Duration;

use clovisor_proto::tls::testing::{Leaf, SecretDir, TestCa};
use clovisor_proto::tls::{
    self, ClientTls, ClientTransport, PeerNames, ServerTls, TlsFiles, TlsStats,
};

use super::super::admission::{AdmissionConfig, ProbeIdentity};
use super::*;

const SERVER_NAME: &str = "clovisor-collector";

struct TlsCollector {
    port: u16,
    out: mpsc::Receiver<Session>,
    metrics: Arc<CollectorMetrics>,
    ca: TestCa,
    _dirs: Vec<tempfile::TempDir>,
}

impl TlsCollector {
    /// A collector behind mutual TLS with `identity` admission.
    async fn start(identity: ProbeIdentity) -> anyhow::Result<Self> {
        let ca = TestCa::new("collector test CA");
        let dir = tempfile::tempdir()?;
        let secret = SecretDir::create(dir.path(), &ca.leaf(&[SERVER_NAME]), &ca.ca_pem())?;
        let tls = ServerTls::new(
            TlsFiles::in_dir(secret.path()),
            PeerNames::default(),
            Duration::from_secs(30),
            TlsStats::default(),
        )?;
        let metrics = Arc::new(CollectorMetrics::new());
        let (out_tx, out) = mpsc::channel(64);
        let out = decoded(out);
        let config = ServiceConfig {
            admission: AdmissionConfig {
                identity,
                ..AdmissionConfig::default()
            },
            ..ServiceConfig::default()
        };
        let svc = CaptureService::with_config(out_tx, Arc::clone(&metrics), config).into_server();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(
            Server::builder()
                .add_service(svc)
                .serve_with_incoming(tls::server::incoming(listener, Some(tls))),
        );
        Ok(Self {
            port,
            out,
            metrics,
            ca,
            _dirs: vec![dir],
        })
    }

    /// A channel presenting a certificate with `names`, signed by the collector's CA.
    fn probe(&mut self, names: &[&str]) -> anyhow::Result<Channel> {
        let leaf: Leaf = self.ca.leaf(names);
        let dir = tempfile::tempdir()?;
        let secret = SecretDir::create(dir.path(), &leaf, &self.ca.ca_pem())?;
        let client = ClientTls::new(
            TlsFiles::in_dir(secret.path()),
            Some(SERVER_NAME.into()),
            Duration::from_secs(30),
            TlsStats::default(),
        )?;
        self._dirs.push(dir);
        Ok(ClientTransport::new(Some(client), false)
            .lazy_channel(&format!("https://127.0.0.1:{}", self.port))?)
    }

    fn refused(&self, reason: &'static str) -> u64 {
        self.metrics
            .probes_refused
            .get_or_create(&crate::metrics::ReasonLabel { reason })
            .get()
    }
}

/// The status a stream opened with `msgs` ends with (refused at `Hello` or later).
async fn refusal(channel: &Channel, msgs: Vec<ProbeMessage>) -> anyhow::Result<tonic::Code> {
    let (tx, rx) = mpsc::channel(16);
    for m in msgs {
        tx.send(m).await?;
    }
    let res = CaptureClient::new(channel.clone())
        .stream(ReceiverStream::new(rx))
        .await;
    let mut inbound = match res {
        Err(status) => return Ok(status.code()),
        Ok(r) => r.into_inner(),
    };
    loop {
        match tokio::time::timeout(Duration::from_secs(5), inbound.message()).await? {
            Err(status) => return Ok(status.code()),
            Ok(Some(_)) => continue,
            Ok(None) => anyhow::bail!("the stream ended without an error: it was accepted"),
        }
    }
}

async fn next_session(out: &mut mpsc::Receiver<Session>) -> anyhow::Result<Session> {
    tokio::time::timeout(Duration::from_secs(5), out.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("output closed"))
}

#[tokio::test]
async fn a_probe_must_hold_a_certificate_naming_its_node() -> anyhow::Result<()> {
    let mut c = TlsCollector::start(ProbeIdentity::Node).await?;
    let node_a = c.probe(&["node-a.probe.clovisor"])?;
    let node_b = c.probe(&["node-b.probe.clovisor"])?;
    let acks = exchange(
        &node_a,
        vec![
            hello("pa", "node-a"),
            batch(1, vec![message(0, Direction::ClientToServer, REQ)]),
        ],
        1,
    )
    .await?;
    assert_eq!(acks, vec![1], "node-a's certificate speaks for node-a");

    let code = refusal(&node_b, vec![hello("forged", "node-a"), batch(1, vec![])]).await?;
    assert_eq!(
        code,
        tonic::Code::PermissionDenied,
        "node-b's certificate must not speak for node-a"
    );
    assert_eq!(c.refused("node_mismatch"), 1);
    assert_eq!(
        c.metrics.probe_restarts.get(),
        0,
        "the forged Hello reset nothing"
    );

    // node-a's open request is still there: its response completes the exchange.
    exchange(
        &node_a,
        vec![
            hello("pa", "node-a"),
            batch(2, vec![message(1, Direction::ServerToClient, RESP)]),
        ],
        1,
    )
    .await?;
    let s = next_session(&mut c.out).await?;
    assert_eq!(
        s.http.as_ref().map(|h| h.status_code),
        Some(200),
        "node-a's flow survived the forgery"
    );
    Ok(())
}

#[tokio::test]
async fn another_certificate_cannot_take_over_a_probe_id_or_a_node() -> anyhow::Result<()> {
    let mut c = TlsCollector::start(ProbeIdentity::Certificate).await?;
    let owner = c.probe(&["clovisor-probe-1"])?;
    let intruder = c.probe(&["clovisor-probe-2"])?;
    exchange(
        &owner,
        vec![
            hello("p1", "node-a"),
            batch(1, vec![message(0, Direction::ClientToServer, REQ)]),
        ],
        1,
    )
    .await?;

    let code = refusal(&intruder, vec![hello("p2", "node-a")]).await?;
    assert_eq!(
        code,
        tonic::Code::PermissionDenied,
        "a new probe id for node-a from another certificate"
    );
    assert_eq!(c.refused("node_owned"), 1);
    let code = refusal(
        &intruder,
        vec![hello("p1", "node-z"), batch(u64::MAX, vec![])],
    )
    .await?;
    assert_eq!(
        code,
        tonic::Code::PermissionDenied,
        "p1's id from another certificate"
    );
    assert_eq!(c.refused("probe_id_owned"), 1);

    let acks = exchange(
        &owner,
        vec![
            hello("p1", "node-a"),
            batch(2, vec![message(1, Direction::ServerToClient, RESP)]),
        ],
        1,
    )
    .await?;
    assert_eq!(acks, vec![2], "the owner's next batch is processed");
    let s = next_session(&mut c.out).await?;
    assert_eq!(s.http.as_ref().map(|h| h.status_code), Some(200));
    Ok(())
}

#[tokio::test]
async fn a_certificate_is_required_when_identity_is() -> anyhow::Result<()> {
    // A server without a CA accepts clients without certificates; admission still asks for one.
    let ca = TestCa::new("one-way CA");
    let dir = tempfile::tempdir()?;
    let leaf = ca.leaf(&[SERVER_NAME]);
    std::fs::write(dir.path().join("tls.crt"), &leaf.cert_pem)?;
    std::fs::write(dir.path().join("tls.key"), &leaf.key_pem)?;
    std::fs::write(dir.path().join("ca.crt"), ca.ca_pem())?;
    let server_files = TlsFiles {
        ca: None,
        ..TlsFiles::in_dir(dir.path())
    };
    let tls = ServerTls::new(
        server_files,
        PeerNames::default(),
        Duration::from_secs(30),
        TlsStats::default(),
    )?;
    let metrics = Arc::new(CollectorMetrics::new());
    let (out_tx, _out) = mpsc::channel(4);
    let config = ServiceConfig {
        admission: AdmissionConfig {
            identity: ProbeIdentity::Certificate,
            ..AdmissionConfig::default()
        },
        ..ServiceConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(
        Server::builder()
            .add_service(
                CaptureService::with_config(out_tx, Arc::clone(&metrics), config).into_server(),
            )
            .serve_with_incoming(tls::server::incoming(listener, Some(tls))),
    );
    let client_files = TlsFiles {
        cert: None,
        key: None,
        ca: Some(dir.path().join("ca.crt")),
    };
    let client = ClientTls::new(
        client_files,
        Some(SERVER_NAME.into()),
        Duration::from_secs(30),
        TlsStats::default(),
    )?;
    let channel = ClientTransport::new(Some(client), false)
        .lazy_channel(&format!("https://127.0.0.1:{port}"))?;
    let code = refusal(&channel, vec![hello("p1", "node-a")]).await?;
    assert_eq!(code, tonic::Code::Unauthenticated);
    assert_eq!(
        metrics
            .probes_refused
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: "no_certificate"
            })
            .get(),
        1
    );
    Ok(())
}

#[tokio::test]
async fn a_forged_batch_number_cannot_make_later_batches_look_resent() -> anyhow::Result<()> {
    let (channel, mut out, metrics) = start(ServiceConfig::default()).await?;
    exchange(
        &channel,
        vec![
            hello("p1", "node-a"),
            batch(1, vec![message(0, Direction::ClientToServer, REQ)]),
        ],
        1,
    )
    .await?;
    let code = refusal(
        &channel,
        vec![hello("p1", "node-a"), batch(u64::MAX, vec![])],
    )
    .await?;
    assert_eq!(
        code,
        tonic::Code::InvalidArgument,
        "seq = u64::MAX must be refused"
    );
    assert_eq!(
        metrics
            .probes_refused
            .get_or_create(&crate::metrics::ReasonLabel { reason: "seq_jump" })
            .get(),
        1
    );
    let acks = exchange(
        &channel,
        vec![
            hello("p1", "node-a"),
            batch(2, vec![message(1, Direction::ServerToClient, RESP)]),
        ],
        1,
    )
    .await?;
    assert_eq!(acks, vec![2]);
    assert_eq!(
        metrics.batches_duplicate.get(),
        0,
        "batch 2 is new, not a re-send"
    );
    let s = next_session(&mut out).await?;
    assert_eq!(s.http.as_ref().map(|h| h.status_code), Some(200));
    Ok(())
}

#[tokio::test]
async fn forged_probe_ids_and_oversized_names_are_capped_and_counted() -> anyhow::Result<()> {
    let config = ServiceConfig {
        admission: AdmissionConfig {
            max_probes: 50,
            ..AdmissionConfig::default()
        },
        ..ServiceConfig::default()
    };
    let (channel, _out, metrics) = start(config).await?;
    let mut accepted = 0;
    let mut exhausted = 0;
    for i in 0..2000 {
        let (tx, rx) = mpsc::channel(1);
        tx.send(hello(&format!("forged-{i}"), "")).await?;
        match CaptureClient::new(channel.clone())
            .stream(ReceiverStream::new(rx))
            .await
        {
            Ok(_) => accepted += 1,
            Err(s) if s.code() == tonic::Code::ResourceExhausted => exhausted += 1,
            Err(s) => anyhow::bail!("unexpected refusal {s:?}"),
        }
    }
    assert_eq!(
        (accepted, exhausted),
        (50, 1950),
        "at most max_probes probe ids are kept"
    );
    let too_many = metrics
        .probes_refused
        .get_or_create(&crate::metrics::ReasonLabel {
            reason: "too_many_probes",
        })
        .get();
    assert_eq!(too_many, 1950);

    let huge = "w".repeat(1 << 20);
    let code = refusal(&channel, vec![hello("p-long-node", &huge)]).await?;
    assert_eq!(code, tonic::Code::InvalidArgument, "a 1 MiB node name");
    let code = refusal(&channel, vec![hello(&huge[..300], "n")]).await?;
    assert_eq!(code, tonic::Code::InvalidArgument, "a 300-byte probe id");
    let bad = metrics
        .probes_refused
        .get_or_create(&crate::metrics::ReasonLabel { reason: "bad_id" })
        .get();
    assert_eq!(bad, 2);
    Ok(())
}

/// A JWT-shaped token whose payload is `claims` (header and signature are not looked at).
fn jwt(claims: &str) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(claims))
}

#[test]
fn a_tokens_exp_is_read_from_its_payload_only() {
    use super::super::admission::jwt_exp;
    assert_eq!(
        jwt_exp(&jwt(r#"{"exp":1700000000,"sub":"x"}"#)),
        Some(1_700_000_000)
    );
    assert_eq!(
        jwt_exp(&jwt(r#"{"exp":1700000000.9}"#)),
        Some(1_700_000_000)
    );
    assert_eq!(jwt_exp(&jwt(r#"{"sub":"no exp"}"#)), None);
    assert_eq!(jwt_exp(&jwt(r#"{"exp":-5}"#)), None);
    assert_eq!(jwt_exp(&jwt(r#"{"exp":"soon"}"#)), None);
    assert_eq!(jwt_exp(&jwt(r#"{"exp":1e300}"#)), None);
    assert_eq!(jwt_exp("opaque-token"), None);
    assert_eq!(jwt_exp("a.b"), None, "two parts are no JWT");
    assert_eq!(
        jwt_exp(&format!("{}.x", jwt(r#"{"exp":1}"#))),
        None,
        "nor four"
    );
    assert_eq!(jwt_exp("a.!!!.c"), None, "a payload not base64url");
    let padded = jwt(r#"{"exp":17}"#).replacen(".sig", "", 1) + "==.sig";
    assert_eq!(jwt_exp(&padded), Some(17), "padding tolerated");
    let huge = jwt(&format!(r#"{{"exp":1,"pad":"{}"}}"#, "x".repeat(20_000)));
    assert_eq!(jwt_exp(&huge), None, "an oversized payload is not read");
}

#[test]
fn a_stream_is_bounded_by_its_tokens_exp_or_the_maximum_age() {
    use super::super::admission::StreamEnd;
    use std::time::{Instant, SystemTime, UNIX_EPOCH};
    let config = AdmissionConfig {
        max_token_stream_age: Duration::from_secs(600),
        ..AdmissionConfig::default()
    };
    let now = Instant::now();
    let wall = UNIX_EPOCH + Duration::from_secs(1_000_000);
    assert_eq!(
        config.stream_bound(Some(1_000_090), wall, now),
        Ok((now + Duration::from_secs(90), StreamEnd::TokenExpired))
    );
    // A fraction of a second into the last second: what is left is less than a second.
    let later = wall + Duration::from_millis(999_400);
    assert_eq!(
        config
            .stream_bound(Some(1_001_000), later, now)
            .map(|(until, _)| until - now),
        Ok(Duration::from_millis(600))
    );
    for past in [0, 999_999, 1_000_000] {
        assert_eq!(
            config.stream_bound(Some(past), wall, now),
            Err(Refused::TokenExpired),
            "exp {past} at 1,000,000"
        );
    }
    assert_eq!(
        config.stream_bound(None, wall, now),
        Ok((now + Duration::from_secs(600), StreamEnd::MaxAge))
    );
    // An exp no clock reaches: as good as none, no overflow.
    assert_eq!(
        config.stream_bound(Some(u64::MAX), SystemTime::now(), now),
        Ok((now + Duration::from_secs(600), StreamEnd::MaxAge))
    );
    // A wall clock before the epoch counts from the epoch.
    let before = UNIX_EPOCH - Duration::from_secs(5);
    assert_eq!(
        config.stream_bound(Some(7), before, now),
        Ok((now + Duration::from_secs(7), StreamEnd::TokenExpired))
    );
}
