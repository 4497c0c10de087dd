use super::query::{self, Field, Order};
use super::*;
use crate::testing::SessionBuilder;

const SEC: u64 = 1_000_000_000;
/// A moment well after the epoch, at the start of a bucket.
const T0: u64 = 1_700_000_000 * SEC;

fn rec(b: SessionBuilder) -> CorrelatedSession {
    CorrelatedSession::new(b.build()).0
}

fn small(max_keys: usize) -> Analytics {
    Analytics::new(AnalyticsConfig {
        bucket: Duration::from_secs(10),
        buckets: 6,
        max_keys,
        max_field_len: 16,
    })
}

#[test]
fn keys_beyond_the_bound_fold_into_other_and_are_counted() {
    let a = small(3);
    for i in 0..10 {
        a.observe_at(
            &rec(SessionBuilder::new(&format!("s{i}")).target(&format!("/p{i}?secret=x"))),
            T0,
        );
    }
    assert_eq!(a.live_keys(), 3, "no more than max_keys keys live");
    let totals = a.totals();
    assert_eq!(totals.exchanges, 10);
    assert_eq!(
        totals.folded, 7,
        "the 7 exchanges with new keys past the bound"
    );
    let cells = a.window_at(1, T0);
    let paths = query::values(&cells, Field::Path);
    assert_eq!(paths, ["(other)", "/p0", "/p1", "/p2"], "query never kept");
    let (groups, _) = query::stats(&cells, &[Field::Path], Order::Requests, 1);
    assert_eq!(groups[0].key["path"], OTHER);
    assert_eq!(groups[0].figures.requests, 7);
}

#[test]
fn buckets_and_keys_expire_after_the_retention() {
    let a = small(2);
    a.observe_at(&rec(SessionBuilder::new("old").target("/old")), T0);
    a.observe_at(
        &rec(SessionBuilder::new("new").target("/new")),
        T0 + 30 * SEC,
    );
    assert_eq!(
        query::values(&a.window_at(6, T0 + 30 * SEC), Field::Path),
        ["/new", "/old"]
    );
    assert_eq!(
        query::values(&a.window_at(3, T0 + 30 * SEC), Field::Path),
        ["/new"],
        "a 30 s window holds only the last three buckets"
    );
    // 60 s later the first bucket is out of the 6 kept: its key frees its place.
    a.observe_at(
        &rec(SessionBuilder::new("later").target("/later")),
        T0 + 60 * SEC,
    );
    assert_eq!(a.live_keys(), 2, "/old expired, /new and /later live");
    assert_eq!(a.totals().folded, 0, "the expired key made room");
    a.clear();
    assert!(a.window_at(6, T0 + 60 * SEC).is_empty(), "cleared");
    assert_eq!(a.totals().exchanges, 3, "totals since the start stay");
}

#[test]
fn strings_are_cut_on_a_character_boundary() {
    let a = small(10);
    a.observe_at(
        &rec(SessionBuilder::new("ua").with(|s| {
            if let Some(h) = s.http.as_mut() {
                h.user_agent = "ééééééééééééé".to_owned();
            }
        })),
        T0,
    );
    let agents = query::values(&a.window_at(1, T0), Field::UserAgent);
    assert_eq!(agents, ["éééééééé"], "16 bytes kept of 26");
}

#[test]
fn services_carry_their_edges() {
    let a = small(100);
    let call = |id: &str, client: &str, server: &str, status: u32| {
        rec(SessionBuilder::new(id)
            .pods(client, server)
            .status(status)
            .with(|s| {
                if let Some(c) = s.client.as_mut() {
                    c.workload = String::new();
                }
            }))
    };
    a.observe_at(&call("1", "frontend", "api", 200), T0);
    a.observe_at(&call("2", "frontend", "api", 503), T0);
    a.observe_at(&call("3", "api", "db", 200), T0);
    let services = query::services(&a.window_at(1, T0));
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["api", "db", "frontend"]);
    let api = &services[0];
    assert_eq!((api.figures.requests, api.figures.errors), (2, 1));
    assert_eq!(api.callers.len(), 1);
    assert_eq!(api.callers[0].name, "frontend");
    assert_eq!(api.callees[0].name, "db");
    assert_eq!(services[2].figures.requests, 0, "frontend only called");
    assert_eq!(services[2].callees[0].requests, 2);
}

#[test]
fn a_kubernetes_service_names_the_end_before_its_workload() {
    let a = small(100);
    let call = |id: &str, client_service: &str, server_service: &str| {
        rec(SessionBuilder::new(id)
            .pods("frontend-0", "checkout-v2-0")
            .server_workload("shop", "checkout-v2")
            .services(client_service, server_service))
    };
    a.observe_at(&call("1", "frontend", "checkout"), T0);
    // No Service selects either end: the workloads name them.
    a.observe_at(&call("2", "", ""), T0);
    let services = query::services(&a.window_at(1, T0));
    let names: Vec<(&str, u64)> = services
        .iter()
        .map(|s| (s.name.as_str(), s.figures.requests))
        .collect();
    assert_eq!(
        names,
        [
            ("client", 0),
            ("frontend", 0),
            ("checkout", 1),
            ("checkout-v2", 1)
        ],
        "sorted by namespace (default, shop) and name"
    );
    let checkout = &services[2];
    assert_eq!(
        (
            checkout.namespace.as_str(),
            checkout.callers[0].name.as_str()
        ),
        ("shop", "frontend"),
        "the caller named by its Service too"
    );
}

#[test]
fn durations_parse() {
    assert_eq!(query::parse_duration("5m"), Some(Duration::from_secs(300)));
    assert_eq!(
        query::parse_duration("250ms"),
        Some(Duration::from_millis(250))
    );
    for bad in ["", "5", "m", "5x", "-5m", "1.5s", "99999999999999s"] {
        assert_eq!(query::parse_duration(bad), None, "{bad:?} must be refused");
    }
}

#[test]
fn protocol_labels_are_the_enum_names_in_lower_case() {
    for value in 0..=9 {
        let Ok(p) = Protocol::try_from(value) else {
            panic!("protocol {value} is defined");
        };
        let session = Session {
            protocol: value,
            ..Default::default()
        };
        let name = p.as_str_name();
        let want = name
            .strip_prefix("PROTOCOL_")
            .unwrap_or(name)
            .to_ascii_lowercase();
        assert_eq!(protocol_label(&session), want, "protocol {value}");
    }
    let unknown = Session {
        protocol: 99,
        ..Default::default()
    };
    assert_eq!(protocol_label(&unknown), "unspecified");
}

/// A client without pod names is labelled by its address, written out in place: repeated
/// exchanges count under one key, and a long address is cut like any other label.
#[test]
fn clients_known_by_their_address_count_under_one_key() {
    let a = small(10);
    let from = |id: &str, ip: &str| {
        let ip: std::net::IpAddr = ip.parse().expect("literal");
        let octets = match ip {
            std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
            std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        rec(SessionBuilder::new(id).with(move |s| {
            if let Some(c) = s.client.as_mut() {
                c.ip = octets.clone().into();
                c.pod.clear();
                c.workload.clear();
                c.service.clear();
            }
        }))
    };
    // Found without a copy: the borrowed key hashes as the owned one it stands for.
    for r in [from("h4", "10.1.2.3"), from("h6", "fd00:1:2:3:4:5:6:7")] {
        use std::hash::BuildHasher as _;
        let key = a.key_of(&r.session);
        assert_eq!(
            FxBuildHasher.hash_one(&key),
            FxBuildHasher.hash_one(key.to_owned_key())
        );
    }
    for i in 0..3 {
        a.observe_at(&from(&format!("v4-{i}"), "10.1.2.3"), T0);
        a.observe_at(&from(&format!("v6-{i}"), "fd00:1:2:3:4:5:6:7"), T0);
    }
    assert_eq!(a.live_keys(), 2, "one key per address");
    let cells = a.window_at(1, T0);
    let (groups, _) = query::stats(&cells, &[Field::Client], Order::Requests, 10);
    let clients: Vec<(String, u64)> = groups
        .iter()
        .map(|g| (g.key["client"].clone(), g.figures.requests))
        .collect();
    assert_eq!(
        clients,
        [
            ("default/10.1.2.3".to_owned(), 3),
            ("default/fd00:1:2:3:4:5:6".to_owned(), 3)
        ],
        "16 bytes kept of the IPv6 address's 18"
    );
}

#[test]
fn addresses_are_written_as_display_writes_them() {
    for ip in [
        "0.0.0.0",
        "255.255.255.255",
        "10.0.0.1",
        "192.168.100.27",
        "::",
        "::ffff:1.2.3.4",
        "fd00::1",
        "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",
    ] {
        let ip: std::net::IpAddr = ip.parse().expect("literal");
        assert_eq!(AddrText::of(ip).as_str(), ip.to_string());
    }
}
