//! Certificates for tests: a CA made on the spot, leaves it signs, and a directory laid out as
//! the kubelet lays out a mounted Secret (`..data` symlink swapped atomically on rotation).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A CA for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// `tls.crt`.
    pub cert_pem: String,
    /// `tls.key`.
    pub key_pem: String,
}

impl TestCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("CA key: {e}"));
        let issuer = CertifiedIssuer::self_signed(params, key)
            .unwrap_or_else(|e| panic!("CA certificate: {e}"));
        Self { issuer }
    }

    /// The CA certificate, PEM (`ca.crt`).
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf for client and server use carrying `dns_names`.
    pub fn leaf(&self, dns_names: &[&str]) -> Leaf {
        let names: Vec<String> = dns_names.iter().map(|n| (*n).to_owned()).collect();
        let mut params =
            CertificateParams::new(names).unwrap_or_else(|e| panic!("leaf names: {e}"));
        if let Some(first) = dns_names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("leaf key: {e}"));
        let cert = params
            .signed_by(&key, &self.issuer)
            .unwrap_or_else(|e| panic!("leaf certificate: {e}"));
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A directory holding `tls.crt`, `tls.key` and `ca.crt` as a Kubernetes Secret volume does:
/// each name a symlink through `..data` to a timestamped directory, rotated by swapping
/// `..data`.
#[derive(Debug)]
pub struct SecretDir {
    root: PathBuf,
    generation: u32,
}

impl SecretDir {
    /// Lays out `leaf` and `ca_pem` under `root` (which must exist).
    pub fn create(root: &Path, leaf: &Leaf, ca_pem: &str) -> std::io::Result<Self> {
        let mut dir = Self {
            root: root.to_owned(),
            generation: 0,
        };
        dir.write_generation(leaf, ca_pem)?;
        for name in [super::CERT_FILE, super::KEY_FILE, super::CA_FILE] {
            std::os::unix::fs::symlink(Path::new("..data").join(name), root.join(name))?;
        }
        Ok(dir)
    }

    /// The directory (for `--tls-dir`).
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Replaces the contents the way the kubelet does: a new directory, then `..data` swapped
    /// to it in one rename.
    pub fn rotate(&mut self, leaf: &Leaf, ca_pem: &str) -> std::io::Result<()> {
        self.write_generation(leaf, ca_pem)
    }

    fn write_generation(&mut self, leaf: &Leaf, ca_pem: &str) -> std::io::Result<()> {
        self.generation += 1;
        let name = format!("..2026_11_30_{:04}", self.generation);
        let dir = self.root.join(&name);
        std::fs::create_dir(&dir)?;
        std::fs::write(dir.join(super::CERT_FILE), &leaf.cert_pem)?;
        std::fs::write(dir.join(super::KEY_FILE), &leaf.key_pem)?;
        std::fs::write(dir.join(super::CA_FILE), ca_pem)?;
        let tmp = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp)?;
        std::fs::rename(&tmp, self.root.join("..data"))
    }
}
