//! From PEM files to rustls configurations.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{Error, Result, TlsFiles};

/// The ALPN protocol of gRPC.
const H2: &[u8] = b"h2";

/// The raw contents of the files, compared between re-reads to notice a rotation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Raw {
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    ca: Option<Vec<u8>>,
}

impl Raw {
    /// Reads every file `files` names.
    pub async fn read(files: &TlsFiles) -> Result<Self> {
        async fn one(path: &Option<PathBuf>) -> Result<Option<Vec<u8>>> {
            match path {
                Some(p) => tokio::fs::read(p)
                    .await
                    .map(Some)
                    .map_err(|source| Error::Read {
                        path: p.clone(),
                        source,
                    }),
                None => Ok(None),
            }
        }
        Ok(Self {
            cert: one(&files.cert).await?,
            key: one(&files.key).await?,
            ca: one(&files.ca).await?,
        })
    }

    /// Reads every file `files` names, blocking (start-up, before a runtime is busy).
    pub fn read_blocking(files: &TlsFiles) -> Result<Self> {
        let one = |path: &Option<PathBuf>| -> Result<Option<Vec<u8>>> {
            match path {
                Some(p) => std::fs::read(p).map(Some).map_err(|source| Error::Read {
                    path: p.clone(),
                    source,
                }),
                None => Ok(None),
            }
        };
        Ok(Self {
            cert: one(&files.cert)?,
            key: one(&files.key)?,
            ca: one(&files.ca)?,
        })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn path_of(p: &Option<PathBuf>) -> PathBuf {
    p.clone().unwrap_or_default()
}

fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::Pem {
            path: path.to_owned(),
            what: "not a PEM certificate list",
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            path: path.to_owned(),
            what: "no CERTIFICATE in it",
        });
    }
    Ok(certs)
}

fn key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| Error::Pem {
        path: path.to_owned(),
        what: "no PKCS#8, PKCS#1 or SEC1 private key in it",
    })
}

fn roots(path: &Path, pem: &[u8]) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for cert in certs(path, pem)? {
        store.add(cert).map_err(|source| Error::Rustls {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(store)
}

/// The server configuration: our certificate, and client certificates required (signed by the
/// CA) when a CA is configured.
pub fn server_config(files: &TlsFiles, raw: &Raw) -> Result<ServerConfig> {
    let (Some(cert_pem), Some(key_pem)) = (&raw.cert, &raw.key) else {
        return Err(Error::Incomplete {
            what: "a TLS server needs a certificate and a key (tls.crt, tls.key)",
        });
    };
    let cert_path = path_of(&files.cert);
    let chain = certs(&cert_path, cert_pem)?;
    let key = key(&path_of(&files.key), key_pem)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Rustls {
            path: cert_path.clone(),
            source,
        })?;
    let builder = match &raw.ca {
        Some(ca_pem) => {
            let ca_path = path_of(&files.ca);
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(&ca_path, ca_pem)?),
                provider,
            )
            .build()
            .map_err(|source| Error::Verifier {
                path: ca_path,
                source,
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|source| Error::Rustls {
            path: cert_path,
            source,
        })?;
    config.alpn_protocols = vec![H2.to_vec()];
    Ok(config)
}

/// The client configuration: servers verified against the CA (required), our certificate
/// presented when one is configured.
pub fn client_config(files: &TlsFiles, raw: &Raw) -> Result<ClientConfig> {
    let Some(ca_pem) = &raw.ca else {
        return Err(Error::Incomplete {
            what: "a TLS client needs a CA bundle to verify servers (ca.crt, --tls-ca)",
        });
    };
    let ca_path = path_of(&files.ca);
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Rustls {
            path: ca_path.clone(),
            source,
        })?
        .with_root_certificates(roots(&ca_path, ca_pem)?);
    let mut config = match (&raw.cert, &raw.key) {
        (Some(cert_pem), Some(key_pem)) => {
            let cert_path = path_of(&files.cert);
            builder
                .with_client_auth_cert(
                    certs(&cert_path, cert_pem)?,
                    key(&path_of(&files.key), key_pem)?,
                )
                .map_err(|source| Error::Rustls {
                    path: cert_path,
                    source,
                })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(Error::Incomplete {
                what: "a client certificate needs its key and the other way round",
            })
        }
    };
    config.alpn_protocols = vec![H2.to_vec()];
    Ok(config)
}
