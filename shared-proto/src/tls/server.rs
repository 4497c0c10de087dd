//! The server side: TLS terminated before tonic, so the certificate can change under a running
//! server and the peer's identity is known per connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::identity::HopConnectInfo;
use super::reload::Reloading;
use super::stats::Refusal;
use super::{material, PeerIdentity, PeerNames, Result, TlsFiles, TlsStats};

/// How long a client has to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at most; a connection beyond is closed at once (counted): a flood of
/// half-open connections costs a bounded number of tasks.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// A server's TLS: its certificate and the CA its clients must be signed by, re-read when they
/// change, and the names a client certificate must carry. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: Reloading<ServerConfig>,
    names: PeerNames,
    stats: TlsStats,
    mtls: bool,
}

impl ServerTls {
    /// Loads `files` (an error is a start-up error) and re-reads them every `reload`. Must be
    /// called inside a Tokio runtime.
    pub fn new(
        files: TlsFiles,
        names: PeerNames,
        reload: Duration,
        stats: TlsStats,
    ) -> Result<Self> {
        if files.ca.is_none() && !names.is_empty() {
            return Err(super::Error::Incomplete {
                what: "--tls-peer-names needs --tls-ca: without client certificates there is no name to check",
            });
        }
        let mtls = files.ca.is_some();
        Ok(Self {
            mtls,
            config: Reloading::start(files, material::server_config, reload, stats.clone())?,
            names,
            stats,
        })
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.mtls
    }

    fn current(&self) -> Arc<ServerConfig> {
        self.config.current()
    }

    /// Completes the handshake on `tcp`, checks the client's names; `None` (counted) when
    /// refused.
    async fn accept(&self, tcp: TcpStream) -> Option<TlsStream<TcpStream>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current());
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake refused");
                self.stats.refused(Refusal::Handshake);
                return None;
            }
            Err(_) => {
                self.stats.refused(Refusal::HandshakeTimeout);
                return None;
            }
        };
        if !self.names.is_empty() {
            let identity = peer_identity(&tls).unwrap_or_default();
            if !self.names.allows(&identity) {
                tracing::warn!(names = ?identity.dns_names(), "client certificate carries none of the allowed names; refused");
                self.stats.refused(Refusal::PeerName);
                return None;
            }
        }
        self.stats.accepted();
        Some(tls)
    }
}

fn peer_identity(tls: &TlsStream<TcpStream>) -> Option<PeerIdentity> {
    let (_, session) = tls.get_ref();
    session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(PeerIdentity::from_certificate)
}

/// A connection to one of our gRPC servers: TLS or, where TLS is not configured, plain TCP.
#[derive(Debug)]
pub enum HopStream {
    /// Without TLS.
    Plain(TcpStream),
    /// With TLS, and the identity the client's certificate states.
    Tls(Box<TlsStream<TcpStream>>, Option<PeerIdentity>),
}

impl tonic::transport::server::Connected for HopStream {
    type ConnectInfo = HopConnectInfo;

    fn connect_info(&self) -> HopConnectInfo {
        match self {
            Self::Plain(tcp) => HopConnectInfo {
                remote: tcp.peer_addr().ok(),
                identity: None,
            },
            Self::Tls(tls, identity) => HopConnectInfo {
                remote: tls.get_ref().0.peer_addr().ok(),
                identity: identity.clone(),
            },
        }
    }
}

impl AsyncRead for HopStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for HopStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections accepted on `listener`, for tonic's `serve_with_incoming(_shutdown)`: with
/// `tls`, only those whose handshake (and client certificate) passed; without, every TCP
/// connection. Handshakes run concurrently, each bounded by [`HANDSHAKE_TIMEOUT`]; the accept
/// loop ends when the server stops taking connections.
pub fn incoming(
    listener: TcpListener,
    tls: Option<ServerTls>,
) -> ReceiverStream<io::Result<HopStream>> {
    let (tx, rx) = mpsc::channel::<io::Result<HopStream>>(64);
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let tcp = match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors and the like: passes; do not spin on it.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            match &tls {
                None => {
                    if tx.send(Ok(HopStream::Plain(tcp))).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let Ok(permit) = Arc::clone(&pending).try_acquire_owned() else {
                        tls.stats.refused(Refusal::TooManyHandshakes);
                        continue;
                    };
                    let tls = tls.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let accepted = tls.accept(tcp).await;
                        drop(permit);
                        if let Some(stream) = accepted {
                            let identity = peer_identity(&stream);
                            let _ = tx
                                .send(Ok(HopStream::Tls(Box::new(stream), identity)))
                                .await;
                        }
                    });
                }
            }
        }
    });
    ReceiverStream::new(rx)
}
