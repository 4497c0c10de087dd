//! Who may speak for which probe.
//!
//! A probe's `Hello` names a probe id (random per probe process) and a node. Everything the
//! collector keeps per probe — its flows, its endpoints, the highest batch number processed — is
//! reached through those two names, and both are visible to anyone who reads a session id or a
//! span. So the collector binds them to the peer that first claimed them, as its TLS client
//! certificate identifies it ([`PeerIdentity::key`]): a peer with another certificate cannot
//! reset a node's probe, nor feed batches under another peer's probe id. With
//! [`ProbeIdentity::Node`] the certificate must moreover name the node, so that one node's
//! certificate cannot speak for any other node. With [`ProbeIdentity::Token`] the probe also
//! presents its pod's projected service account token, minted by the kubelet for the
//! collector's audience; the API server reviews it (TokenReview) and names the node the pod
//! runs on, which the `Hello` must claim — a node can only get tokens for its own pods, so one
//! node's probe cannot speak for another, with one certificate shared by every probe.
//!
//! Independently of identity, admission bounds what one peer can make the collector keep: probe
//! ids at most [`AdmissionConfig::max_probes`], ids at most [`MAX_ID_BYTES`], and a batch number
//! may not jump more than [`AdmissionConfig::max_seq_jump`] past the last processed one (a
//! forged `seq = u64::MAX` would otherwise make every later batch of the probe look like a
//! re-send).
//!
//! A token admits a stream for as long as it is good, not for ever: the stream ends when the
//! token's `exp` passes (read from the JWT only after the API server accepted it; a token
//! without one, at [`AdmissionConfig::max_token_stream_age`]), and the token is reviewed again
//! every [`AdmissionConfig::token_recheck`], a refusal ending the stream ([`StreamEnd`]). The
//! probe reconnects with the token its kubelet renewed and re-sends what was not acknowledged.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clovisor_proto::tls::PeerIdentity;
use clovisor_runtime::auth::token_review::{NotAccepted, TokenReviewer};
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
    /// A client certificate and the probe pod's service account token (gRPC metadata
    /// `authorization: Bearer …`), which the API server must authenticate for the collector's
    /// audience, as an allowed identity, bound to a pod on the node the `Hello` names
    /// (TokenReview's `authentication.kubernetes.io/node-name`).
    Token,
}

/// Limits of admission.
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// With [`ProbeIdentity::Token`]: who reviews the probes' tokens (the API server, for the
    /// collector's audience, allowing the probes' service account).
    pub token_review: Option<Arc<TokenReviewer>>,
    /// What a probe's certificate must prove.
    pub identity: ProbeIdentity,
    /// With [`ProbeIdentity::Node`]: a certificate names node `n` by the DNS name `n` or
    /// `n.<suffix>`.
    pub node_suffix: String,
    /// Probe ids kept at most; a new one beyond is refused.
    pub max_probes: usize,
    /// Largest accepted step of a probe's batch number past the last one processed.
    pub max_seq_jump: u64,
    /// With [`ProbeIdentity::Token`]: how often an admitted stream's token is reviewed again
    /// (a revoked token ends its stream within this).
    pub token_recheck: Duration,
    /// With [`ProbeIdentity::Token`]: how long a stream admitted with a token that carries no
    /// `exp` may run.
    pub max_token_stream_age: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            identity: ProbeIdentity::Any,
            token_review: None,
            node_suffix: DEFAULT_NODE_SUFFIX.to_owned(),
            max_probes: 8192,
            // A probe makes at most a few hundred batches a second; a million is hours of
            // batches lost inside a probe, far beyond its replay buffer's gaps.
            max_seq_jump: 1 << 20,
            token_recheck: DEFAULT_TOKEN_RECHECK,
            max_token_stream_age: DEFAULT_MAX_TOKEN_STREAM_AGE,
        }
    }
}

/// Default interval between reviews of an admitted stream's token.
pub const DEFAULT_TOKEN_RECHECK: Duration = Duration::from_secs(300);

/// Default age of a stream admitted with a token without `exp` (a projected token's lifetime).
pub const DEFAULT_MAX_TOKEN_STREAM_AGE: Duration = Duration::from_secs(3600);

/// Largest JWT payload read for its `exp` (a service account token's is a few hundred bytes).
const MAX_JWT_PAYLOAD_BYTES: usize = 16 * 1024;

/// Default DNS suffix of per-node probe certificates (`node-1.probe.clovisor`).
pub const DEFAULT_NODE_SUFFIX: &str = "probe.clovisor";

/// Default audience of the probes' service account tokens (`--probe-identity token`).
pub const DEFAULT_PROBE_TOKEN_AUDIENCE: &str = "clovisor-collector";

/// Default identity allowed to speak for a probe: the manifests' probe service account.
pub const DEFAULT_PROBE_TOKEN_IDENTITY: &str =
    "system:serviceaccount:clovisor-probe:clovisor-probe";

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
    /// A service account token is required and the stream carries none.
    NoToken,
    /// The API server does not authenticate the token for the collector's audience, or its
    /// identity is not allowed.
    TokenRefused,
    /// The API server could not be asked (fails closed; the probe retries).
    TokenUnverifiable,
    /// The token is not bound to a pod on a node (no `authentication.kubernetes.io/node-name`:
    /// not a kubelet-minted pod token, or a Kubernetes before 1.30).
    NodeUnverified,
    /// The token's `exp` has passed (the API server's answer about it may still be cached).
    TokenExpired,
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
            Self::NoToken => "no_token",
            Self::TokenRefused => "token_refused",
            Self::TokenUnverifiable => "token_unverifiable",
            Self::NodeUnverified => "node_unverified",
            Self::TokenExpired => "token_expired",
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
            Self::NoToken => Status::unauthenticated("a service account token is required"),
            Self::TokenRefused => Status::unauthenticated("the service account token is refused"),
            Self::TokenUnverifiable => {
                Status::unavailable("the service account token cannot be verified now")
            }
            Self::NodeUnverified => {
                Status::permission_denied("the service account token names no node")
            }
            Self::TokenExpired => Status::unauthenticated("the service account token expired"),
        }
    }
}

/// Why an admitted probe stream was ended by the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The token's `exp` passed.
    TokenExpired,
    /// The token carries no `exp` and the stream reached
    /// [`AdmissionConfig::max_token_stream_age`].
    MaxAge,
    /// A later review refused the token (revoked, its pod gone, its identity no longer
    /// allowed) or named another node.
    TokenRevoked,
}

impl StreamEnd {
    /// The metric label.
    pub fn as_label(self) -> &'static str {
        match self {
            Self::TokenExpired => "token_expired",
            Self::MaxAge => "max_age",
            Self::TokenRevoked => "token_revoked",
        }
    }

    /// The status the probe gets: it reconnects, presenting its token file's current token.
    pub fn status(self) -> Status {
        match self {
            Self::TokenExpired => Status::unauthenticated(
                "the service account token expired: reconnect with the renewed token",
            ),
            Self::MaxAge => Status::unauthenticated(
                "the stream reached its maximum age: reconnect with the current token",
            ),
            Self::TokenRevoked => {
                Status::unauthenticated("the service account token is no longer accepted")
            }
        }
    }
}

/// A token the API server accepted for a stream: the node it binds the stream to, and until
/// when it holds. Its `Debug` never shows the token.
#[derive(Clone)]
pub struct AdmittedToken {
    token: String,
    /// The node of the pod the token was minted for.
    pub node: String,
    /// When the stream must end (the token's `exp`, or the maximum age).
    pub until: Instant,
    /// Why it ends then: [`StreamEnd::TokenExpired`] or [`StreamEnd::MaxAge`].
    pub ends_as: StreamEnd,
}

impl std::fmt::Debug for AdmittedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmittedToken")
            .field("node", &self.node)
            .field("until", &self.until)
            .field("ends_as", &self.ends_as)
            .finish_non_exhaustive()
    }
}

/// What a later review of an admitted token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recheck {
    /// Still accepted, for the same node.
    Accepted,
    /// Refused, or bound to another node: the stream ends.
    Refused,
    /// The API server could not be asked: the stream goes on (until its token's `exp`).
    Unreachable,
}

impl Recheck {
    /// The metric label.
    pub fn as_label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Refused => "refused",
            Self::Unreachable => "unreachable",
        }
    }
}

/// The `exp` claim (seconds since the Unix epoch) of a JWT's payload, when `token` is a JWT
/// and has one. Nothing is verified here: only read for a token the API server accepted.
pub fn jwt_exp(token: &str) -> Option<u64> {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > MAX_JWT_PAYLOAD_BYTES {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let exp = claims.get("exp")?;
    // A NumericDate may carry a fraction; only whole seconds matter here.
    exp.as_u64().or_else(|| {
        exp.as_f64()
            .filter(|e| e.is_finite() && *e >= 0.0 && *e < u64::MAX as f64)
            .map(|e| e as u64)
    })
}

impl AdmissionConfig {
    /// With [`ProbeIdentity::Token`], has the API server review `token` (the bearer token of
    /// the stream's metadata); the node its pod runs on and until when the stream may run on
    /// it. Other modes: none, nothing asked.
    pub async fn verify_token(
        &self,
        token: Option<&str>,
    ) -> Result<Option<AdmittedToken>, Refused> {
        if self.identity != ProbeIdentity::Token {
            return Ok(None);
        }
        let token = token.filter(|t| !t.is_empty()).ok_or(Refused::NoToken)?;
        let Some(reviewer) = &self.token_review else {
            // Token mode without a reviewer cannot verify anything: fail closed.
            return Err(Refused::TokenUnverifiable);
        };
        let reviewed = reviewer.review(token).await.map_err(|why| match why {
            NotAccepted::Unauthenticated | NotAccepted::NotAllowed => Refused::TokenRefused,
            NotAccepted::Unreachable => Refused::TokenUnverifiable,
        })?;
        let node = reviewed.node_name().ok_or(Refused::NodeUnverified)?;
        tracing::debug!(user = %reviewed.username, pod = reviewed.pod_name().unwrap_or("-"), node,
            "probe token reviewed");
        let (until, ends_as) =
            self.stream_bound(jwt_exp(token), SystemTime::now(), Instant::now())?;
        Ok(Some(AdmittedToken {
            token: token.to_owned(),
            node: node.to_owned(),
            until,
            ends_as,
        }))
    }

    /// Until when a stream admitted at `now` (`wall` on the clock `exp` counts on) may run on a
    /// token whose `exp` is `exp`; refused when that has passed.
    pub fn stream_bound(
        &self,
        exp: Option<u64>,
        wall: SystemTime,
        now: Instant,
    ) -> Result<(Instant, StreamEnd), Refused> {
        let max_age = || {
            now.checked_add(self.max_token_stream_age)
                .map(|until| (until, StreamEnd::MaxAge))
        };
        let Some(exp) = exp else {
            return max_age().ok_or(Refused::TokenExpired);
        };
        let since_epoch = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let left = Duration::from_secs(exp)
            .checked_sub(since_epoch)
            .filter(|left| !left.is_zero())
            .ok_or(Refused::TokenExpired)?;
        // An `exp` beyond what an `Instant` holds is as good as none.
        match now.checked_add(left) {
            Some(until) => Ok((until, StreamEnd::TokenExpired)),
            None => max_age().ok_or(Refused::TokenExpired),
        }
    }

    /// Reviews an admitted stream's token again, asking the API server whatever it answered
    /// before.
    pub async fn recheck(&self, admitted: &AdmittedToken) -> Recheck {
        let Some(reviewer) = &self.token_review else {
            return Recheck::Unreachable;
        };
        match reviewer.review_now(&admitted.token).await {
            Ok(reviewed) if reviewed.node_name() == Some(admitted.node.as_str()) => {
                Recheck::Accepted
            }
            Ok(_) | Err(NotAccepted::Unauthenticated | NotAccepted::NotAllowed) => Recheck::Refused,
            Err(NotAccepted::Unreachable) => Recheck::Unreachable,
        }
    }

    /// Checks what a `Hello` claims against the connection's certificate and, with
    /// [`ProbeIdentity::Token`], the node its token was verified for ([`Self::verify_token`])
    /// — the parts that need no shared state; the owner key the probe's state is bound to.
    pub fn check_hello(
        &self,
        probe_id: &str,
        node: &str,
        peer: Option<&PeerIdentity>,
        token_node: Option<&str>,
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
            ProbeIdentity::Token => {
                if peer.is_none() {
                    return Err(Refused::NoCertificate);
                }
                let Some(verified) = token_node else {
                    return Err(Refused::NodeUnverified);
                };
                if node.is_empty() || node != verified {
                    return Err(Refused::NodeMismatch);
                }
                // The node's identity, not the pod's: the probe's next pod on the same node
                // (a restart, an upgrade) takes its node's state over.
                return Ok(format!("node:{verified}"));
            }
        }
        Ok(peer.map(PeerIdentity::key).unwrap_or_default())
    }
}
