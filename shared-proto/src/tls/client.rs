//! The client side: channels that speak TLS with the certificate in force at each connect, and
//! the rules that keep a hop from being downgraded.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use super::reload::Reloading;
use super::{material, Error, Result, TlsFiles, TlsStats};

/// A client's TLS: the CA servers must be signed by and, for mutual TLS, our certificate; re-read
/// when they change. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Reloading<ClientConfig>,
    server_name: Option<String>,
}

impl ClientTls {
    /// Loads `files` (an error is a start-up error) and re-reads them every `reload`; servers'
    /// certificates are checked against `server_name` when given, else against the URL's host.
    /// Must be called inside a Tokio runtime.
    pub fn new(
        files: TlsFiles,
        server_name: Option<String>,
        reload: Duration,
        stats: TlsStats,
    ) -> Result<Self> {
        Ok(Self {
            config: Reloading::start(files, material::client_config, reload, stats)?,
            server_name,
        })
    }
}

/// How a process dials its hops: with TLS when configured, and whether plaintext to a
/// non-loopback address is allowed. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ClientTransport {
    tls: Option<ClientTls>,
    insecure_plaintext: bool,
}

impl ClientTransport {
    /// `tls` for `https://` URLs; `insecure_plaintext` allows `http://` to non-loopback hosts.
    pub fn new(tls: Option<ClientTls>, insecure_plaintext: bool) -> Self {
        Self {
            tls,
            insecure_plaintext,
        }
    }

    /// No TLS, plaintext to loopback only (tests, tools on one host).
    pub fn loopback() -> Self {
        Self::default()
    }

    /// Whether TLS is configured.
    pub fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Checks `url` against the rules (start-up errors, never a silent downgrade).
    pub fn check(&self, url: &str) -> Result<()> {
        self.plan(url).map(|_| ())
    }

    fn plan(&self, url: &str) -> Result<(Uri, Option<&ClientTls>)> {
        let invalid = || Error::InvalidUrl {
            url: url.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| invalid())?;
        let host = uri.host().ok_or_else(invalid)?;
        match uri.scheme_str() {
            Some("https") => match &self.tls {
                Some(tls) => Ok((uri.clone(), Some(tls))),
                None => Err(Error::HttpsWithoutTls {
                    url: url.to_owned(),
                }),
            },
            Some("http") => {
                if !is_loopback(host) {
                    if !self.insecure_plaintext {
                        return Err(Error::PlaintextRefused {
                            url: url.to_owned(),
                        });
                    }
                    tracing::warn!(%url, "plaintext gRPC to a non-loopback address (--insecure-plaintext): anyone on the path reads and can forge this hop");
                }
                Ok((uri.clone(), None))
            }
            _ => Err(invalid()),
        }
    }

    /// A lazily connecting channel to `url` (connection errors surface per call, and the
    /// delivery protocol retries them).
    pub fn lazy_channel(&self, url: &str) -> Result<Channel> {
        self.lazy_channel_with(url, |e| {
            e.http2_keep_alive_interval(Duration::from_secs(20))
        })
    }

    /// Like [`ClientTransport::lazy_channel`], with `configure` applied to the endpoint
    /// (timeouts, keep-alive).
    pub fn lazy_channel_with(
        &self,
        url: &str,
        configure: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Result<Channel> {
        let (uri, tls) = self.plan(url)?;
        let endpoint = configure(Endpoint::from(uri).tcp_nodelay(true));
        let Some(tls) = tls.cloned() else {
            return Ok(endpoint.connect_lazy());
        };
        let connector = tower::service_fn(move |uri: Uri| {
            let tls = tls.clone();
            async move { connect(&tls, &uri).await }
        });
        Ok(endpoint.connect_with_connector_lazy(connector))
    }
}

/// One TLS connection to `uri` with the configuration in force now.
async fn connect(
    tls: &ClientTls,
    uri: &Uri,
) -> std::io::Result<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
    let bad = |what: &str| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: {what}"))
    };
    let host = uri.host().map(unbracket).ok_or_else(|| bad("no host"))?;
    let port = uri.port_u16().unwrap_or(443);
    let name = tls.server_name.as_deref().unwrap_or(host);
    let server_name =
        ServerName::try_from(name.to_owned()).map_err(|_| bad("not a DNS name or IP address"))?;
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    let config: Arc<ClientConfig> = tls.config.current();
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await?;
    Ok(TokioIo::new(stream))
}

fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Whether `host` is this machine: `localhost` or a loopback address.
fn is_loopback(host: &str) -> bool {
    let host = unbracket(host);
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn https_without_tls_and_plaintext_off_the_host_are_start_up_errors() {
        let plain = ClientTransport::loopback();
        assert!(
            matches!(
                plain.lazy_channel("https://collector:50051"),
                Err(Error::HttpsWithoutTls { .. })
            ),
            "https:// with no TLS configured must fail, not downgrade"
        );
        assert!(matches!(
            plain.lazy_channel("http://10.1.2.3:50051"),
            Err(Error::PlaintextRefused { .. })
        ));
        assert!(matches!(
            plain.lazy_channel("http://collector.clovisor.svc:50051"),
            Err(Error::PlaintextRefused { .. })
        ));
        assert!(plain.lazy_channel("http://127.0.0.1:50051").is_ok());
        assert!(plain.lazy_channel("http://[::1]:50051").is_ok());
        assert!(plain.lazy_channel("http://localhost:4317").is_ok());
        assert!(matches!(
            plain.lazy_channel("ftp://x:1"),
            Err(Error::InvalidUrl { .. })
        ));
        assert!(matches!(
            plain.lazy_channel("not a url"),
            Err(Error::InvalidUrl { .. })
        ));
        let insecure = ClientTransport::new(None, true);
        assert!(
            insecure.lazy_channel("http://10.1.2.3:50051").is_ok(),
            "allowed when asked for"
        );
        assert!(
            matches!(
                insecure.lazy_channel("https://10.1.2.3:50051"),
                Err(Error::HttpsWithoutTls { .. })
            ),
            "--insecure-plaintext never turns https:// into plaintext"
        );
    }
}
