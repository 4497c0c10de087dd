//! Who may speak for which probe.
//!
//! A probe's `Hello` names a probe id (random per probe process) and a node. Everything the
//! collector keeps per probe — its flows, its endpoints, the highest batch number processed — is
//! reached through those two names, and both are visible to anyone who reads a session id or a
//! span. So the collector binds them to the peer that first claimed them, as its TLS client
//! certificate identifies it ([`PeerIdentity::key`]): a peer with another certificate cannot
//! reset a node's probe, nor feed batches under another peer's probe id. With
//! [`ProbeIdentity::Node`] the certificate must moreover name the node, so that one node's
//! certificate cannot speak for any other node.
//!
//! Independently of identity, admission bounds what one peer can make the collector keep: probe
//! ids at most [`AdmissionConfig::max_probes`], ids at most [`MAX_ID_BYTES`], and a batch number
//! may not jump more than [`AdmissionConfig::max_seq_jump`] past the last processed one (a
//! forged `seq = u64::MAX` would otherwise make every later batch of the probe look like a
//! re-send).

use clovisor_proto::tls::PeerIdentity;
use tonic::Status;

/// How a probe's `Hello` must match its connection's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProbeIdentity {
    /// No certificate needed (plaintext, all-in-one, tests). Probe ids and nodes are still
    /// bound to the peer that claimed them first — all peers are the same "no certificate".
    #[default]
    Any,
    /// A client certificate is required; a probe id and a node belong to the certificate
    /// identity that first claimed them. With one certificate shared by all probes (the
    /// manifests' default) this proves "a probe", not which one.
    Certificate,
    /// A client certificate naming the node is required: `Hello.node`, or
    /// `<node>.<node suffix>`, must be one of its DNS names.
    Node,
}

/// Limits of admission.
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// What a probe's certificate must prove.
    pub identity: ProbeIdentity,
    /// With [`ProbeIdentity::Node`]: a certificate names node `n` by the DNS name `n` or
    /// `n.<suffix>`.
    pub node_suffix: String,
    /// Probe ids kept at most; a new one beyond is refused.
    pub max_probes: usize,
    /// Largest accepted step of a probe's batch number past the last one processed.
    pub max_seq_jump: u64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            identity: ProbeIdentity::Any,
            node_suffix: DEFAULT_NODE_SUFFIX.to_owned(),
            max_probes: 8192,
            // A probe makes at most a few hundred batches a second; a million is hours of
            // batches lost inside a probe, far beyond its replay buffer's gaps.
            max_seq_jump: 1 << 20,
        }
    }
}

/// Default DNS suffix of per-node probe certificates (`node-1.probe.clovisor`).
pub const DEFAULT_NODE_SUFFIX: &str = "probe.clovisor";

/// Longest probe id or node name accepted (a DNS name's limit).
pub const MAX_ID_BYTES: usize = 253;

/// Why a probe's stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A certificate is required and the connection has none.
    NoCertificate,
    /// The certificate does not name the node the `Hello` claims.
    NodeMismatch,
    /// The probe id belongs to another certificate identity.
    ProbeIdOwned,
    /// The node's current probe belongs to another certificate identity.
    NodeOwned,
    /// As many probe ids as allowed are known already.
    TooManyProbes,
    /// A probe id or node name longer than [`MAX_ID_BYTES`], or an empty probe id.
    BadId,
    /// A batch number too far past the last one processed.
    SeqJump,
}

impl Refused {
    /// The metric label.
    pub fn as_label(self) -> &'static str {
        match self {
            Self::NoCertificate => "no_certificate",
            Self::NodeMismatch => "node_mismatch",
            Self::ProbeIdOwned => "probe_id_owned",
            Self::NodeOwned => "node_owned",
            Self::TooManyProbes => "too_many_probes",
            Self::BadId => "bad_id",
            Self::SeqJump => "seq_jump",
        }
    }

    /// The status the probe gets (no detail of other probes).
    pub fn status(self) -> Status {
        match self {
            Self::NoCertificate => Status::unauthenticated("a client certificate is required"),
            Self::NodeMismatch => {
                Status::permission_denied("the certificate does not name this node")
            }
            Self::ProbeIdOwned | Self::NodeOwned => {
                Status::permission_denied("this probe id or node belongs to another peer")
            }
            Self::TooManyProbes => Status::resource_exhausted("too many probes"),
            Self::BadId => Status::invalid_argument("probe id empty, or probe id or node too long"),
            Self::SeqJump => Status::invalid_argument("batch number jumps too far"),
        }
    }
}

impl AdmissionConfig {
    /// Checks what a `Hello` claims against the connection's certificate (the parts that need no
    /// shared state); the owner key the probe's state is bound to.
    pub fn check_hello(
        &self,
        probe_id: &str,
        node: &str,
        peer: Option<&PeerIdentity>,
    ) -> Result<String, Refused> {
        if probe_id.is_empty() || probe_id.len() > MAX_ID_BYTES || node.len() > MAX_ID_BYTES {
            return Err(Refused::BadId);
        }
        match self.identity {
            ProbeIdentity::Any => {}
            ProbeIdentity::Certificate => {
                if peer.is_none() {
                    return Err(Refused::NoCertificate);
                }
            }
            ProbeIdentity::Node => {
                let Some(peer) = peer else {
                    return Err(Refused::NoCertificate);
                };
                let named = !node.is_empty()
                    && (peer.names(node) || peer.names(&format!("{node}.{}", self.node_suffix)));
                if !named {
                    return Err(Refused::NodeMismatch);
                }
            }
        }
        Ok(peer.map(PeerIdentity::key).unwrap_or_default())
    }
}
