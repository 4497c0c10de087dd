//! What a port speaks, from Kubernetes metadata: a service port's `appProtocol` when set,
//! else its name by the Istio port-naming convention (`<protocol>[-<suffix>]`).

use clovisor_proto::capture::v1::ProtocolHint;

/// The protocol of a port named `name` with `app_protocol`; `None` when neither says
/// (the collector then sniffs the protocol).
pub fn port_protocol(name: Option<&str>, app_protocol: Option<&str>) -> Option<ProtocolHint> {
    app_protocol
        .and_then(from_app_protocol)
        .or_else(|| name.and_then(from_port_name))
}

/// Istio's convention: the name, or its part before the first `-`, names the protocol
/// (`http`, `http-web`, `grpc-api`, `tcp-db`, …), case-insensitively.
pub fn from_port_name(name: &str) -> Option<ProtocolHint> {
    let prefix = name.split('-').next().unwrap_or(name);
    protocol_word(prefix)
}

/// `appProtocol`: an IANA-style name (`http`, `grpc`, …) or one of the Kubernetes standard
/// names (`kubernetes.io/h2c`, `kubernetes.io/ws`, `kubernetes.io/wss`). Other
/// domain-prefixed values say nothing we know.
pub fn from_app_protocol(app: &str) -> Option<ProtocolHint> {
    match app.to_ascii_lowercase().as_str() {
        "kubernetes.io/h2c" => Some(ProtocolHint::Http2),
        "kubernetes.io/ws" => Some(ProtocolHint::Http),
        "kubernetes.io/wss" => Some(ProtocolHint::Tcp),
        other if other.contains('/') => None,
        other => protocol_word(other),
    }
}

fn protocol_word(word: &str) -> Option<ProtocolHint> {
    Some(match word.to_ascii_lowercase().as_str() {
        "http" => ProtocolHint::Http,
        "http2" | "h2c" => ProtocolHint::Http2,
        "grpc" | "grpc-web" => ProtocolHint::Grpc,
        "redis" => ProtocolHint::Redis,
        // Encrypted or not decoded by name yet: traced as TCP; the collector sniffs.
        "tcp" | "tls" | "https" | "mongo" | "mysql" | "mqtt" | "kafka" | "postgres" | "amqp"
        | "cassandra" | "zookeeper" | "thrift" | "dubbo" | "neo4j" => ProtocolHint::Tcp,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProtocolHint::*;

    #[test]
    fn istio_port_names() {
        for (name, want) in [
            ("http", Some(Http)),
            ("http-web", Some(Http)),
            ("HTTP-Admin", Some(Http)),
            ("http2", Some(Http2)),
            ("http2-api", Some(Http2)),
            ("grpc", Some(Grpc)),
            ("grpc-orders", Some(Grpc)),
            ("tcp", Some(Tcp)),
            ("tcp-db", Some(Tcp)),
            ("redis", Some(Redis)),
            ("redis-cache", Some(Redis)),
            ("mongo", Some(Tcp)),
            ("mysql", Some(Tcp)),
            ("tls", Some(Tcp)),
            ("https", Some(Tcp)),
            ("web", None),
            ("httpx", None),
            ("", None),
        ] {
            assert_eq!(from_port_name(name), want, "port name {name:?}");
        }
    }

    #[test]
    fn app_protocol_wins_over_the_name() {
        assert_eq!(
            port_protocol(Some("tcp"), Some("http")),
            Some(Http),
            "appProtocol http"
        );
        assert_eq!(
            port_protocol(Some("http"), Some("kubernetes.io/h2c")),
            Some(Http2),
            "standard h2c"
        );
        assert_eq!(
            port_protocol(Some("grpc"), Some("example.com/custom")),
            Some(Grpc),
            "an unknown appProtocol leaves the name to decide"
        );
        assert_eq!(port_protocol(None, Some("redis")), Some(Redis), "no name");
        assert_eq!(port_protocol(Some("web"), None), None, "neither says");
    }
}
