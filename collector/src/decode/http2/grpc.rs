//! gRPC over HTTP/2 (the gRPC "PROTOCOL-HTTP2" specification): the call's service and method
//! from the path, its status from the trailers.

use clovisor_proto::session::v1::Grpc;

use super::headers::ResponseHeaders;

/// Service and method of a gRPC path `/package.Service/Method`; `None` for anything else.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
    };
    (valid(service) && valid(method)).then_some((service, method))
}

/// `grpc-message` is percent-encoded (RFC 3986 style, UTF-8); malformed escapes stay as sent.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                // Two hex digits make one byte: h, l < 16.
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The session's `grpc` part of a call on `path` with response headers and trailers `resp`.
pub fn fields(path: &str, resp: Option<&ResponseHeaders>) -> Grpc {
    let (service, method) = split_path(path).unwrap_or_default();
    Grpc {
        service: service.to_owned(),
        method: method.to_owned(),
        status_code: resp.and_then(|r| r.grpc_status),
        message: resp
            .and_then(|r| r.grpc_message.as_deref())
            .map(percent_decode)
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_messages() {
        assert_eq!(
            split_path("/helloworld.Greeter/SayHello"),
            Some(("helloworld.Greeter", "SayHello"))
        );
        assert_eq!(split_path("/index.html"), None);
        assert_eq!(split_path("/a/b/c"), None);
        assert_eq!(split_path("//m"), None);
        assert_eq!(
            percent_decode("no%20such%20user%3A%20%E2%9C%93"),
            "no such user: ✓"
        );
        assert_eq!(percent_decode("bad%2"), "bad%2");
        assert_eq!(percent_decode("%zz%"), "%zz%");
    }
}
