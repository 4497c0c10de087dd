//! What the TLS layer counts: connections refused (by reason) and certificate re-reads.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The TLS handshake failed (no client certificate, one from another CA, not TLS at all,
    /// an expired certificate, …).
    Handshake,
    /// The handshake took longer than allowed.
    HandshakeTimeout,
    /// The client certificate is valid but carries none of the allowed names.
    PeerName,
    /// Too many handshakes were in progress already.
    TooManyHandshakes,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Self::Handshake => "handshake",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::PeerName => "peer_name",
            Self::TooManyHandshakes => "too_many_handshakes",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Counters of the TLS layer; cheap to clone (shared counters).
#[derive(Debug, Clone, Default)]
pub struct TlsStats {
    refused: Family<ReasonLabel, Counter>,
    accepted: Counter,
    reloads: Family<ResultLabel, Counter>,
}

impl TlsStats {
    /// Registers the counters: `clovisor_tls_refused_total{reason}`,
    /// `clovisor_tls_accepted_total`, `clovisor_tls_reloads_total{result}`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "clovisor_tls_refused",
            "Incoming connections refused by the TLS layer, by reason",
            self.refused.clone(),
        );
        registry.register(
            "clovisor_tls_accepted",
            "Incoming connections that completed the TLS handshake and were accepted",
            self.accepted.clone(),
        );
        registry.register(
            "clovisor_tls_reloads",
            "Certificate/key/CA files re-read after they changed, by result (ok, error)",
            self.reloads.clone(),
        );
    }

    pub(crate) fn refused(&self, why: Refusal) {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: why.label(),
            })
            .inc();
    }

    pub(crate) fn accepted(&self) {
        self.accepted.inc();
    }

    pub(crate) fn reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// Connections refused for `why` so far.
    pub fn refused_count(&self, why: Refusal) -> u64 {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: why.label(),
            })
            .get()
    }

    /// Connections accepted so far.
    pub fn accepted_count(&self) -> u64 {
        self.accepted.get()
    }

    /// Successful (`true`) or failed re-reads so far.
    pub fn reload_count(&self, ok: bool) -> u64 {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ResultLabel { result }).get()
    }
}
