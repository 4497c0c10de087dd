//! The correlator's error type.

use std::num::ParseIntError;

/// Everything that can go wrong inside the correlator library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An environment variable held a value that is not a number.
    #[error("environment variable {name}={value:?} is not a valid number")]
    EnvNumber {
        /// The variable.
        name: &'static str,
        /// What it held.
        value: String,
        /// Why it did not parse.
        #[source]
        source: ParseIntError,
    },
    /// `OTEL_TRACES_SAMPLER` or its argument named no sampler the exporter has.
    #[error(transparent)]
    Sampler(#[from] crate::export::sampler::SamplerError),
    /// An environment variable held a value outside what the correlator accepts.
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    EnvValue {
        /// The variable.
        name: &'static str,
        /// What it held.
        value: String,
        /// What is expected instead.
        reason: &'static str,
    },
    /// The OTLP endpoint is not a usable URI.
    #[error("OTLP endpoint {endpoint:?} is not a valid URI")]
    Endpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// Why it was refused.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// The OTLP endpoint is not usable: not a URL, `https://` without TLS configured, or
    /// plaintext to a non-loopback address without the explicit opt-in.
    #[error("OTLP endpoint {endpoint:?} is not usable")]
    ExportEndpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// Why it was refused.
        #[source]
        source: clovisor_proto::tls::Error,
    },
    /// The exporter's worker task is gone, so nothing more can be flushed.
    #[error("the span exporter has stopped")]
    ExporterStopped,
    /// Flushing or shutting down the exporter took longer than allowed.
    #[error("the span exporter did not finish within {timeout:?}")]
    ExporterTimeout {
        /// The allowed time.
        timeout: std::time::Duration,
    },
    /// The exporter's worker task panicked or was cancelled.
    #[error("the span exporter task failed")]
    ExporterJoin {
        /// What the runtime reported.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A query parameter of the REST API could not be understood.
    #[error("bad filter {name}={value:?}: {reason}")]
    BadFilter {
        /// The parameter.
        name: String,
        /// What it held.
        value: String,
        /// What is expected instead.
        reason: &'static str,
    },
    /// Binding a listening socket failed.
    #[error("could not listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// The correlator's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
