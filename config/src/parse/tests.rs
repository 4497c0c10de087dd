use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

fn rule(ip: Option<IpAddr>, port: u16, prefix: Option<&str>) -> EgressRule {
    EgressRule {
        target: EgressTarget { ip, port },
        pod_prefix: prefix.map(str::to_owned),
    }
}

#[test]
fn labels_take_a_namespace_or_a_namespace_and_a_label() {
    assert_eq!(
        parse_label("default"),
        Ok(LabelSelector::namespace("default"))
    );
    assert_eq!(
        parse_label(" shop:app:web "),
        Ok(LabelSelector {
            namespace: "shop".into(),
            label: Some(("app".into(), "web".into())),
        })
    );
    assert_eq!(
        parse_label("shop:app.kubernetes.io/name:cart-v2"),
        Ok(LabelSelector {
            namespace: "shop".into(),
            label: Some(("app.kubernetes.io/name".into(), "cart-v2".into())),
        })
    );
    // Kubernetes allows empty label values.
    assert_eq!(
        parse_label("shop:canary:"),
        Ok(LabelSelector {
            namespace: "shop".into(),
            label: Some(("canary".into(), String::new())),
        })
    );
}

#[test]
fn bad_labels_say_what_is_wrong() {
    let long = "n".repeat(64);
    let cases = [
        ("", "empty entry"),
        ("   ", "empty entry"),
        ("shop:app", "expected `namespace` or"),
        ("shop:a:b:c", "expected `namespace` or"),
        ("Shop", "invalid namespace \"Shop\": only lower-case"),
        ("-shop", "must start and end"),
        (long.as_str(), "1 to 63"),
        ("shop::web", "invalid label key \"\""),
        ("shop:app:-web", "invalid label value \"-web\""),
        ("shop:Bad_Prefix/app:web", "prefix"),
        ("shop:app:we b", "invalid label value"),
    ];
    for (entry, want) in cases {
        let got = parse_label(entry).map_err(|e| e.to_string());
        assert!(
            got.as_ref().is_err_and(|e| e.contains(want)),
            "{entry:?}: expected an error containing {want:?}, got {got:?}"
        );
    }
}

#[test]
fn egress_rules_take_ipv4_ipv6_any_and_a_prefix() {
    let v4 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));
    let v6: IpAddr = "2001:db8::1".parse().expect("literal");
    assert_eq!(parse_egress("10.0.0.7:80"), Ok(rule(Some(v4), 80, None)));
    assert_eq!(parse_egress("0:443"), Ok(rule(None, 443, None)));
    assert_eq!(parse_egress("0.0.0.0:443"), Ok(rule(None, 443, None)));
    assert_eq!(parse_egress("[::]:443"), Ok(rule(None, 443, None)));
    assert_eq!(
        parse_egress("10.0.0.7:8080:frontend-"),
        Ok(rule(Some(v4), 8080, Some("frontend-")))
    );
    assert_eq!(
        parse_egress("[2001:db8::1]:80"),
        Ok(rule(Some(v6), 80, None))
    );
    assert_eq!(
        parse_egress("[2001:db8::1]:80:web"),
        Ok(rule(Some(v6), 80, Some("web")))
    );
    // A v4-mapped IPv6 address is the IPv4 address (the kernel key stores both alike).
    assert_eq!(
        parse_egress("[::ffff:10.0.0.7]:80"),
        Ok(rule(Some(v4), 80, None))
    );
    assert_eq!(
        parse_egress("0:65535"),
        Ok(rule(None, 65535, None)),
        "highest port"
    );
}

#[test]
fn bad_egress_rules_say_what_is_wrong() {
    let cases = [
        ("", "empty entry"),
        ("10.0.0.7", "expected `ip:port`"),
        ("10.0.0.7:0", "invalid port \"0\""),
        ("10.0.0.7:65536", "invalid port \"65536\""),
        ("10.0.0.7:http", "invalid port \"http\""),
        ("10.0.0.300:80", "invalid address \"10.0.0.300\""),
        ("web.local:80", "invalid address \"web.local\""),
        ("2001:db8::1:80", "written in brackets"),
        ("::1", "written in brackets"),
        ("[2001:db8::1:80", "without a closing"),
        ("[2001:db8::1]80", "expected `ip:port`"),
        ("[2001:db8::zz]:80", "invalid address"),
        ("10.0.0.7:80:", "empty after ':'"),
        ("10.0.0.7:80:a b", "contains a blank"),
    ];
    for (entry, want) in cases {
        let got = parse_egress(entry).map_err(|e| e.to_string());
        assert!(
            got.as_ref().is_err_and(|e| e.contains(want)),
            "{entry:?}: expected an error containing {want:?}, got {got:?}"
        );
    }
}

#[test]
fn egress_prefix_selects_pods_by_name() {
    let r = rule(None, 80, Some("front"));
    assert!(r.selects("frontend-7d9"));
    assert!(!r.selects("backend"));
    assert!(rule(None, 80, None).selects("anything"));
}

#[test]
fn endpoints_map_onto_otlp_grpc() {
    assert_eq!(
        parse_otlp_endpoint("http://otel:4317"),
        Ok("http://otel:4317".into())
    );
    assert_eq!(
        parse_otlp_endpoint("https://otel.example"),
        Ok("https://otel.example:4317".into())
    );
    assert_eq!(
        parse_otlp_endpoint("otel:55680"),
        Ok("http://otel:55680".into())
    );
    assert_eq!(
        parse_otlp_endpoint("http://[fd00::9]:4317/"),
        Ok("http://[fd00::9]:4317".into())
    );
    // Legacy Jaeger addresses: host kept, OTLP/gRPC port.
    assert_eq!(
        parse_jaeger("http://jaeger-collector.istio-system:14268/api/traces"),
        Ok("http://jaeger-collector.istio-system:4317".into())
    );
    assert_eq!(
        parse_jaeger("jaeger-agent.istio-system:6831"),
        Ok("http://jaeger-agent.istio-system:4317".into())
    );
    assert_eq!(parse_jaeger("jaeger"), Ok("http://jaeger:4317".into()));
    for (bad, want) in [
        ("ftp://otel:4317", "scheme"),
        ("http://otel:4317/v1/traces", "no path"),
        ("http://:4317", "host"),
        ("http://otel:99999", "port"),
        ("http://user@otel:4317", "'@'"),
        ("", "empty"),
    ] {
        let got = parse_otlp_endpoint(bad).map_err(|e| e.to_string());
        assert!(
            got.as_ref().is_err_and(|e| e.contains(want)),
            "{bad:?}: expected an error containing {want:?}, got {got:?}"
        );
    }
    assert!(parse_jaeger("http://:14268").is_err());
}

#[test]
fn snaplen_and_header_names() {
    assert_eq!(parse_snaplen("1"), Ok(1));
    assert_eq!(parse_snaplen(" 2048 "), Ok(2048));
    for bad in ["0", "2049", "-1", "1k", ""] {
        assert!(parse_snaplen(bad).is_err(), "{bad:?} must be rejected");
    }
    assert_eq!(
        parse_header_name("X-Secret-Token"),
        Ok("x-secret-token".into())
    );
    for bad in ["", "x secret", "x:y", "naïve"] {
        assert!(parse_header_name(bad).is_err(), "{bad:?} must be rejected");
    }
    assert_eq!(
        parse_proto_entry("HTTP", "my-analyzer"),
        Ok(("http".into(), "my-analyzer".into()))
    );
    assert!(parse_proto_entry("", "a").is_err());
    assert!(parse_proto_entry("http", " ").is_err());
}

#[test]
fn nothing_configured_is_the_default() {
    let (cfg, rejected) = build(&Snapshot::default(), &Policy::default());
    assert_eq!(cfg, LiveConfig::default());
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(cfg.labels, vec![LabelSelector::namespace("default")]);
    for h in DEFAULT_REDACTED_HEADERS {
        assert!(cfg.is_redacted(&h.to_ascii_uppercase()), "{h} not redacted");
    }
}

#[test]
fn good_entries_apply_beside_bad_ones() {
    let snap = Snapshot {
        labels: vec!["shop".into(), "BAD NS".into(), "default:app:web".into()],
        egress: vec!["10.0.0.7:80".into(), "nonsense".into(), "0:443".into()],
        egress_misspelled: vec!["10.0.0.7:80".into(), "[fd00::1]:8080:api".into()],
        snaplen: Some("9999".into()),
        redact_headers: vec!["X-Internal-Token".into(), "bad header".into()],
        proto_cfg: vec![("redis".into(), "redis-v1".into()), ("".into(), "x".into())],
        ..Snapshot::default()
    };
    let (cfg, rejected) = build(&snap, &Policy::default());
    assert_eq!(
        cfg.labels,
        vec![
            LabelSelector {
                namespace: "default".into(),
                label: Some(("app".into(), "web".into()))
            },
            LabelSelector::namespace("shop"),
        ]
    );
    let v6: IpAddr = IpAddr::V6("fd00::1".parse::<Ipv6Addr>().expect("literal"));
    assert_eq!(
        cfg.egress,
        vec![
            rule(None, 443, None),
            rule(Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))), 80, None),
            rule(Some(v6), 8080, Some("api")),
        ],
        "union of both keys, duplicates merged"
    );
    assert_eq!(cfg.snaplen, None, "a bad snaplen leaves the process's own");
    assert!(cfg.is_redacted("x-internal-token"));
    assert!(
        cfg.is_redacted("authorization"),
        "defaults cannot be removed"
    );
    assert_eq!(
        cfg.proto_cfg.get("redis").map(String::as_str),
        Some("redis-v1")
    );
    let keys: Vec<(&str, &str)> = rejected.iter().map(|r| (r.key, r.entry.as_str())).collect();
    assert_eq!(
        keys,
        vec![
            ("clovisor_egress_match", "nonsense"),
            ("clovisor_labels", "BAD NS"),
            // An inline module is named by its size, never logged.
            (
                "clovisor_proto_cfg",
                "=(inline module, 1 base64 characters)"
            ),
            ("clovisor_redact_headers", "bad header"),
            ("clovisor_snaplen", "9999"),
        ]
    );
}

#[test]
fn only_bad_labels_fall_back_to_the_default_namespace() {
    let (cfg, rejected) = build(
        &Snapshot {
            labels: vec!["Nope".into()],
            ..Snapshot::default()
        },
        &Policy::default(),
    );
    assert_eq!(cfg.labels, vec![LabelSelector::namespace("default")]);
    assert_eq!(rejected.len(), 1);
}

#[test]
fn otlp_key_wins_over_legacy_jaeger_keys() {
    let mut snap = Snapshot {
        jaeger_agent: Some("agent:6831".into()),
        ..Snapshot::default()
    };
    assert_eq!(
        build(&snap, &Policy::default()).0.otlp_endpoint.as_deref(),
        Some("http://agent:4317")
    );
    snap.jaeger_collector = Some("http://collector:14268/api/traces".into());
    assert_eq!(
        build(&snap, &Policy::default()).0.otlp_endpoint.as_deref(),
        Some("http://collector:4317")
    );
    snap.otlp_endpoint = Some("http://otel:4317".into());
    assert_eq!(
        build(&snap, &Policy::default()).0.otlp_endpoint.as_deref(),
        Some("http://otel:4317")
    );
    // A bad OTLP value is rejected and the legacy address still applies.
    snap.otlp_endpoint = Some("ftp://x".into());
    let (cfg, rejected) = build(&snap, &Policy::default());
    assert_eq!(cfg.otlp_endpoint.as_deref(), Some("http://collector:4317"));
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].key, "clovisor_otlp_endpoint");
}

#[test]
fn analyzer_values_are_capped_and_never_logged_whole() {
    let module = "A".repeat(MAX_ANALYZER_VALUE);
    assert_eq!(
        parse_proto_entry("Line", &module).map(|(p, v)| (p, v.len())),
        Ok(("line".to_owned(), MAX_ANALYZER_VALUE)),
        "a 1 MiB module in base64 fits"
    );
    let too_long = "A".repeat(MAX_ANALYZER_VALUE + 1);
    let err = parse_proto_entry("line", &too_long).expect_err("over the cap");
    assert!(
        err.to_string().len() < 200,
        "the rejection names the size, not the value: {err}"
    );
    assert!(parse_proto_entry(&"p".repeat(64), "/x.wasm").is_err());
    assert!(parse_proto_entry(&"p".repeat(63), "/x.wasm").is_ok());
    let (cfg, rejected) = build(
        &Snapshot {
            proto_cfg: vec![("line".into(), too_long)],
            ..Snapshot::default()
        },
        &Policy::default(),
    );
    assert!(cfg.proto_cfg.is_empty());
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0].entry.starts_with("line=(inline module, "));
}

#[test]
fn the_operators_allow_lists_bound_what_redis_can_ask_for() {
    let policy = Policy::parse(Some("shop, default"), Some("https://jaeger.tracing:4317"))
        .expect("valid allow-lists");
    let snap = Snapshot {
        labels: vec!["shop".into(), "kube-system".into()],
        otlp_endpoint: Some("http://attacker.example:4317".into()),
        ..Snapshot::default()
    };
    let (cfg, rejected) = build(&snap, &policy);
    assert_eq!(cfg.labels, vec![LabelSelector::namespace("shop")]);
    assert_eq!(
        cfg.otlp_endpoint, None,
        "an endpoint not allowed is not used"
    );
    let labels: Vec<(&str, &str)> = rejected.iter().map(|r| (r.key, r.label)).collect();
    assert_eq!(
        labels,
        vec![
            (keys::LABELS, "not_allowed"),
            (keys::OTLP_ENDPOINT, "not_allowed")
        ],
        "{rejected:#?}"
    );

    // An allowed endpoint, in another spelling of the same URL, applies.
    let snap = Snapshot {
        otlp_endpoint: Some("https://jaeger.tracing".into()),
        ..Snapshot::default()
    };
    assert_eq!(
        build(&snap, &policy).0.otlp_endpoint.as_deref(),
        Some("https://jaeger.tracing:4317")
    );
}

#[test]
fn with_no_allowed_label_the_default_namespace_applies_only_if_allowed() {
    let snap = Snapshot {
        labels: vec!["kube-system".into()],
        ..Snapshot::default()
    };
    let only_shop = Policy::parse(Some("shop"), None).expect("valid");
    assert!(
        build(&snap, &only_shop).0.labels.is_empty(),
        "nothing traced rather than a namespace the operator did not allow"
    );
    let with_default = Policy::parse(Some("default,shop"), None).expect("valid");
    assert_eq!(
        build(&snap, &with_default).0.labels,
        vec![LabelSelector::namespace("default")]
    );
}

#[test]
fn a_bad_allow_list_entry_is_an_error_naming_its_variable() {
    let err = Policy::parse(Some("shop,Bad_NS"), None).expect_err("invalid namespace");
    assert_eq!(err.variable, ENV_ALLOWED_NAMESPACES);
    let err = Policy::parse(None, Some("ftp://x")).expect_err("invalid endpoint");
    assert_eq!(err.variable, ENV_ALLOWED_OTLP_ENDPOINTS);
    assert_eq!(
        Policy::parse(Some(" "), None).expect("blank"),
        Policy::default(),
        "blank: no limit"
    );
}

#[test]
fn bytes_that_are_not_utf8_are_rejected_escaped_and_cut() {
    let mut rejected = Vec::new();
    assert_eq!(
        text(keys::LABELS, b"shop".to_vec(), &mut rejected).as_deref(),
        Some("shop")
    );
    let mut bad = b"sh\xffop".to_vec();
    bad.extend(std::iter::repeat_n(b'a', 1000));
    assert_eq!(text(keys::LABELS, bad, &mut rejected), None);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].label, "not_utf8");
    assert!(
        rejected[0].entry.starts_with("sh\\xffop") && rejected[0].entry.len() < 300,
        "escaped and cut: {:?}",
        rejected[0].entry
    );
}
