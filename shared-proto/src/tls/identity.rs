//! Who the peer of a connection is, according to its certificate.

use std::net::SocketAddr;

use rustls_pki_types::CertificateDer;

/// The identity an authenticated peer's certificate states: the DNS names of its subject
/// alternative names (cert-manager's `dnsNames`). Made once per connection, when the TLS
/// handshake verified the certificate against the CA.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerIdentity {
    dns_names: Vec<String>,
}

impl PeerIdentity {
    /// The identity of a leaf certificate; `None` when it does not parse (rustls verified it, so
    /// that does not happen for a connection that was accepted).
    pub fn from_certificate(der: &CertificateDer<'_>) -> Option<Self> {
        let cert = webpki::EndEntityCert::try_from(der).ok()?;
        Some(Self {
            dns_names: cert.valid_dns_names().map(str::to_owned).collect(),
        })
    }

    /// An identity with these names (tests, tools).
    pub fn with_names<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        Self {
            dns_names: names.into_iter().map(Into::into).collect(),
        }
    }

    /// The DNS names the certificate carries.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// Whether the certificate names `name` exactly (ASCII case-insensitive, as DNS names are).
    pub fn names(&self, name: &str) -> bool {
        self.dns_names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// The identity of the peer of `request`: `None` on a connection without TLS (or
    /// without a client certificate).
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&PeerIdentity> {
        request
            .extensions()
            .get::<HopConnectInfo>()
            .and_then(|info| info.identity.as_ref())
    }

    /// A stable key for this identity (its names, sorted), for maps that keep per-peer state.
    pub fn key(&self) -> String {
        let mut names: Vec<String> = self
            .dns_names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        names.sort_unstable();
        names.join(",")
    }
}

/// What a server knows of a connection, in every request's extensions.
#[derive(Debug, Clone, Default)]
pub struct HopConnectInfo {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    /// The peer's verified certificate identity, when it presented one over TLS.
    pub identity: Option<PeerIdentity>,
}

/// Names a client certificate must carry one of: exact DNS names, or `*.suffix` for any name
/// ending in `.suffix`. Empty: any certificate the CA signed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerNames(Vec<String>);

impl PeerNames {
    /// From patterns; blank ones are ignored.
    pub fn new(patterns: Vec<String>) -> Self {
        Self(
            patterns
                .into_iter()
                .map(|p| p.trim().to_ascii_lowercase())
                .filter(|p| !p.is_empty())
                .collect(),
        )
    }

    /// Whether no name is required.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `peer` carries an allowed name.
    pub fn allows(&self, peer: &PeerIdentity) -> bool {
        self.is_empty()
            || peer
                .dns_names
                .iter()
                .any(|name| self.0.iter().any(|p| matches(p, name)))
    }
}

fn matches(pattern: &str, name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .strip_suffix(suffix)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.') && !head.starts_with('*')),
        None => name == pattern,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_names_and_one_or_more_labels_under_a_suffix() {
        let names = PeerNames::new(vec![
            "Clovisor-Collector".into(),
            "*.probe.clovisor".into(),
            " ".into(),
        ]);
        let allows = |n: &str| names.allows(&PeerIdentity::with_names([n]));
        assert!(allows("clovisor-collector"), "exact, case-insensitive");
        assert!(allows("node-1.probe.clovisor"));
        assert!(
            !allows("probe.clovisor"),
            "the suffix alone is not under it"
        );
        assert!(
            !allows("evilprobe.clovisor"),
            "a suffix match must start at a label"
        );
        assert!(
            !allows("*.probe.clovisor"),
            "a wildcard certificate does not name a node"
        );
        assert!(!allows("clovisor-correlator"));
        assert!(
            PeerNames::new(vec![]).allows(&PeerIdentity::default()),
            "empty: anything"
        );
        assert!(
            !names.allows(&PeerIdentity::default()),
            "no names: refused when names are required"
        );
    }
}
