//! Span export: which exchanges' spans are exported ([`sampler`]), how a session becomes an
//! OpenTelemetry span ([`span`]) and how spans reach an OTLP/gRPC endpoint ([`otlp`]).

pub mod otlp;
pub mod sampler;
pub mod span;
pub mod wire;
