//! The Redis keys and channel the services read; see docs/configuration.md ("Redis keys").

/// LIST of `namespace[:label-key:label-value]`: which pods to trace (OR-ed).
pub const LABELS: &str = "clovisor_labels";
/// LIST of `ip:port[:pod-name-prefix]`: outbound calls to trace.
pub const EGRESS_MATCH: &str = "clovisor_egress_match";
/// The historical misspelling of [`EGRESS_MATCH`], read too (the union applies).
pub const EGRESS_MATCH_MISSPELLED: &str = "clovior_egress_match";
/// STRING: legacy Jaeger collector address; its host receives OTLP on port 4317.
pub const JAEGER_COLLECTOR: &str = "clovisor_jaeger_collector";
/// STRING: legacy Jaeger agent address; its host receives OTLP on port 4317.
pub const JAEGER_AGENT: &str = "clovisor_jaeger_agent";
/// STRING: OTLP/gRPC endpoint for spans; wins over the legacy Jaeger keys.
pub const OTLP_ENDPOINT: &str = "clovisor_otlp_endpoint";
/// STRING: bytes of each message the kernel copies (1–2048).
pub const SNAPLEN: &str = "clovisor_snaplen";
/// LIST of header names whose values never leave the collector (added to the defaults).
pub const REDACT_HEADERS: &str = "clovisor_redact_headers";
/// HASH protocol → analyzer.
pub const PROTO_CFG: &str = "clovisor_proto_cfg";
/// Pub/sub channel: a message (a protocol name) asks services to reload `clovisor_proto_cfg`.
pub const PROTO_PLUGIN_CHANNEL: &str = "clovisor_proto_plugin_cfg_chan";

/// Every key read, for the `key` label of `clovisor_config_rejected_total` (bounded).
pub const ALL: [&str; 9] = [
    LABELS,
    EGRESS_MATCH,
    EGRESS_MATCH_MISSPELLED,
    JAEGER_COLLECTOR,
    JAEGER_AGENT,
    OTLP_ENDPOINT,
    SNAPLEN,
    REDACT_HEADERS,
    PROTO_CFG,
];
