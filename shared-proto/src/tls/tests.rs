//! Real TLS handshakes over TCP on loopback: a gRPC server behind [`server::incoming`] and
//! clients made by [`ClientTransport`], with certificates made per test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::testing::{Leaf, SecretDir, TestCa};
use super::*;
use crate::session::v1::session_ingest_client::SessionIngestClient;
use crate::session::v1::session_ingest_server::{SessionIngest, SessionIngestServer};
use crate::session::v1::{SessionAck, SessionBatch};

const SERVER_NAME: &str = "clovisor-correlator";
const RELOAD: Duration = Duration::from_millis(50);

/// Acknowledges every batch and remembers who sent it.
#[derive(Default, Clone)]
struct Recorder {
    peers: Arc<Mutex<Vec<Option<PeerIdentity>>>>,
}

#[tonic::async_trait]
impl SessionIngest for Recorder {
    type PushStream = ReceiverStream<Result<SessionAck, Status>>;

    async fn push(
        &self,
        request: Request<Streaming<SessionBatch>>,
    ) -> Result<Response<Self::PushStream>, Status> {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(PeerIdentity::of(&request).cloned());
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Ok(Some(batch)) = inbound.message().await {
                if tx.send(Ok(SessionAck { seq: batch.seq })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct Server {
    port: u16,
    stats: TlsStats,
    recorder: Recorder,
    _dir: tempfile::TempDir,
    secret: SecretDir,
}

async fn server(leaf: &Leaf, ca: &TestCa, names: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let secret = SecretDir::create(dir.path(), leaf, &ca.ca_pem())
        .unwrap_or_else(|e| panic!("secret dir: {e}"));
    let stats = TlsStats::default();
    let tls = ServerTls::new(
        TlsFiles::in_dir(secret.path()),
        PeerNames::new(names.iter().map(|n| (*n).to_owned()).collect()),
        RELOAD,
        stats.clone(),
    )
    .unwrap_or_else(|e| panic!("server TLS: {e}"));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("addr: {e}"));
    let recorder = Recorder::default();
    let svc = SessionIngestServer::new(recorder.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(server::incoming(listener, Some(tls))),
    );
    Server {
        port,
        stats,
        recorder,
        _dir: dir,
        secret,
    }
}

/// A client trusting `ca` and presenting `leaf` (none: no client certificate).
fn client(leaf: Option<&Leaf>, ca: &TestCa) -> (ClientTransport, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let ca_path = dir.path().join("ca.crt");
    std::fs::write(&ca_path, ca.ca_pem()).unwrap_or_else(|e| panic!("write: {e}"));
    let mut files = TlsFiles {
        cert: None,
        key: None,
        ca: Some(ca_path),
    };
    if let Some(leaf) = leaf {
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, &leaf.cert_pem).unwrap_or_else(|e| panic!("write: {e}"));
        std::fs::write(&key, &leaf.key_pem).unwrap_or_else(|e| panic!("write: {e}"));
        files.cert = Some(cert);
        files.key = Some(key);
    }
    let tls = ClientTls::new(files, Some(SERVER_NAME.into()), RELOAD, TlsStats::default())
        .unwrap_or_else(|e| panic!("client TLS: {e}"));
    (ClientTransport::new(Some(tls), false), dir)
}

/// Pushes one batch over a fresh channel; the acknowledged number or why not.
async fn push(transport: &ClientTransport, port: u16) -> Result<u64, String> {
    let channel = transport
        .lazy_channel(&format!("https://127.0.0.1:{port}"))
        .map_err(|e| e.to_string())?;
    let mut client = SessionIngestClient::new(channel);
    let call = async {
        let batches = futures::stream::iter([SessionBatch {
            seq: 7,
            ..Default::default()
        }]);
        let mut acks = client
            .push(batches)
            .await
            .map_err(|s| s.to_string())?
            .into_inner();
        match acks.message().await {
            Ok(Some(ack)) => Ok(ack.seq),
            Ok(None) => Err("stream closed without an ack".to_owned()),
            Err(s) => Err(s.to_string()),
        }
    };
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()))
}

#[tokio::test]
async fn mutual_tls_accepts_a_signed_client_and_names_it_to_the_service() {
    let ca = TestCa::new("clovisor test CA");
    let srv = server(&ca.leaf(&[SERVER_NAME]), &ca, &[]).await;
    let (good, _d) = client(Some(&ca.leaf(&["clovisor-collector"])), &ca);
    assert_eq!(
        push(&good, srv.port).await,
        Ok(7),
        "a client signed by the CA is served"
    );
    let peers = srv
        .recorder
        .peers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert_eq!(
        peers,
        vec![Some(PeerIdentity::with_names(["clovisor-collector"]))],
        "the service sees the client's certificate names"
    );
    assert_eq!(srv.stats.accepted_count(), 1);
}

#[tokio::test]
async fn a_client_without_a_certificate_or_with_one_from_another_ca_is_refused_and_counted() {
    let ca = TestCa::new("clovisor test CA");
    let other = TestCa::new("someone else's CA");
    let srv = server(&ca.leaf(&[SERVER_NAME]), &ca, &[]).await;

    let (anonymous, _d1) = client(None, &ca);
    let seen = push(&anonymous, srv.port).await;
    assert!(
        seen.is_err(),
        "no client certificate must be refused, got {seen:?}"
    );

    let (foreign, _d2) = client(Some(&other.leaf(&["clovisor-collector"])), &ca);
    let seen = push(&foreign, srv.port).await;
    assert!(
        seen.is_err(),
        "a certificate from another CA must be refused, got {seen:?}"
    );

    // A client that does not trust our server's CA refuses the server in turn.
    let (distrustful, _d3) = client(Some(&ca.leaf(&["clovisor-collector"])), &other);
    let seen = push(&distrustful, srv.port).await;
    assert!(
        seen.is_err(),
        "a server from another CA must be refused by the client, got {seen:?}"
    );

    assert!(
        srv.stats.refused_count(stats::Refusal::Handshake) >= 2,
        "both refusals counted, saw {}",
        srv.stats.refused_count(stats::Refusal::Handshake)
    );
    assert!(
        srv.recorder
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty(),
        "no call reached the service"
    );
}

#[tokio::test]
async fn a_certificate_without_an_allowed_name_is_refused() {
    let ca = TestCa::new("clovisor test CA");
    let srv = server(&ca.leaf(&[SERVER_NAME]), &ca, &["clovisor-collector"]).await;
    let (probe, _d1) = client(Some(&ca.leaf(&["node-1.probe.clovisor"])), &ca);
    let seen = push(&probe, srv.port).await;
    assert!(
        seen.is_err(),
        "a probe's certificate must not pass as a collector's, got {seen:?}"
    );
    assert_eq!(srv.stats.refused_count(stats::Refusal::PeerName), 1);
    let (collector, _d2) = client(Some(&ca.leaf(&["clovisor-collector"])), &ca);
    assert_eq!(push(&collector, srv.port).await, Ok(7));
}

#[tokio::test]
async fn a_rotated_secret_is_picked_up_without_a_restart() {
    let old_ca = TestCa::new("CA before rotation");
    let new_ca = TestCa::new("CA after rotation");
    let mut srv = server(&old_ca.leaf(&[SERVER_NAME]), &old_ca, &[]).await;
    let (old_client, _d1) = client(Some(&old_ca.leaf(&["clovisor-collector"])), &old_ca);
    let (new_client, _d2) = client(Some(&new_ca.leaf(&["clovisor-collector"])), &new_ca);
    assert_eq!(push(&old_client, srv.port).await, Ok(7));
    assert!(
        push(&new_client, srv.port).await.is_err(),
        "not trusted yet"
    );

    // The kubelet's way: a new directory, then `..data` swapped to it.
    srv.secret
        .rotate(&new_ca.leaf(&[SERVER_NAME]), &new_ca.ca_pem())
        .unwrap_or_else(|e| panic!("rotate: {e}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if push(&new_client, srv.port).await == Ok(7) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated certificate and CA were not picked up within 5 s (reloads ok: {}, failed: {})",
            srv.stats.reload_count(true),
            srv.stats.reload_count(false)
        );
        tokio::time::sleep(RELOAD).await;
    }
    assert!(
        push(&old_client, srv.port).await.is_err(),
        "the old CA's clients are refused after rotation"
    );
    assert_eq!(srv.stats.reload_count(true), 1, "one rotation, one reload");

    // A broken rotation keeps the last good configuration.
    std::fs::write(srv.secret.path().join("..data").join(KEY_FILE), "not a key")
        .unwrap_or_else(|e| panic!("write: {e}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while srv.stats.reload_count(false) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broken key was not noticed"
        );
        tokio::time::sleep(RELOAD).await;
    }
    assert_eq!(
        push(&new_client, srv.port).await,
        Ok(7),
        "still served with the last good certificate"
    );
}

#[tokio::test]
async fn missing_or_broken_files_fail_at_start() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let args = TlsArgs {
        tls_dir: Some(dir.path().to_owned()),
        tls_reload: RELOAD,
        ..Default::default()
    };
    assert!(
        matches!(args.server(&TlsStats::default()), Err(Error::Read { .. })),
        "no files in the directory"
    );
    std::fs::write(dir.path().join(CERT_FILE), "garbage").unwrap_or_else(|e| panic!("write: {e}"));
    std::fs::write(dir.path().join(KEY_FILE), "garbage").unwrap_or_else(|e| panic!("write: {e}"));
    std::fs::write(dir.path().join(CA_FILE), "garbage").unwrap_or_else(|e| panic!("write: {e}"));
    assert!(
        matches!(args.server(&TlsStats::default()), Err(Error::Pem { .. })),
        "not PEM"
    );
    assert!(matches!(
        args.client(&TlsStats::default()),
        Err(Error::Pem { .. })
    ));
    assert!(TlsArgs::default().files().is_none(), "no flag: no TLS");
    assert!(
        matches!(
            TlsArgs::default()
                .client(&TlsStats::default())
                .map(|c| c.check("https://collector:50051")),
            Ok(Err(Error::HttpsWithoutTls { .. }))
        ),
        "https:// without TLS flags is refused"
    );
}
