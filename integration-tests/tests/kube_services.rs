//! Kubernetes Services name the traced ends, end to end: `clovisor all-in-one --targets
//! kubernetes` against the fake API server, real HTTP between namespace "pods", spans at a real
//! OTLP receiver.
//!
//! - A request to a pod that two Services select is reported under the first of them by name
//!   (`service.name`, `service.namespace`; the caller's Service as `peer.service`).
//! - A request addressed to a Service's ClusterIP is resolved to that Service. The ClusterIP is
//!   real in the lab: an address of a backend namespace that the API does not describe, routed
//!   to from the client's namespace, so only the address names the Service (no DNAT happens,
//!   as at a client's socket before kube-proxy's rewrite).
//! - Deleting the Service (a watch `DELETED` event) names the pod by the remaining one.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clovisor_correlator::testing::{resource_attribute, string_attribute, OtlpReceiver};
use clovisor_integration_tests::fake_kube::FakeKube;
use clovisor_integration_tests::fixtures::{
    self, renamed, with_cluster_ips, without_selector, PodBuilder,
};
use clovisor_integration_tests::http_client::{http_get, Curl};
use clovisor_integration_tests::{
    our_programs_on, require_root, run, wait_for, AllInOne, Lab, Nginx,
};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::Value;

/// The ClusterIP of the selector-less Service `legacy` (an address of the backend namespace).
const LEGACY_IP: &str = "10.96.0.10";

/// The REST session of a request to `url` whose server end is named `service`. The request
/// is sent again every second until one is: a change in the API reaches the probe after its
/// watch event and the next reconciliation, and requests before it keep the old name.
fn session_named(
    clovisor: &mut AllInOne,
    client: &clovisor_integration_tests::Pod,
    url: &str,
    service: &str,
) -> Result<Value> {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let mut sent: Option<std::time::Instant> = None;
    let mut seen = Value::Null;
    let found = wait_for(
        &format!("the session of {url} under {service}"),
        Duration::from_secs(20),
        || {
            if sent.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                Curl::new().max_time(5).run(client, &[url])?;
                sent = Some(std::time::Instant::now());
            }
            let hit = clovisor
                .sessions()?
                .into_iter()
                .find(|s| s["http"]["query"] == query && s["server"]["service"] == service);
            Ok(hit.map(|s| seen = s).is_some())
        },
    );
    if let Err(e) = found {
        let body = clovisor.sessions().map(Value::from).unwrap_or_default();
        bail!(
            "{e:#}\nsessions: {body}\nlog:\n{}",
            clovisor.proc.log_text()
        );
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_named_by_the_kubernetes_service_and_cluster_ips_resolve_to_it() -> Result<()> {
    require_root()?;
    let otlp = OtlpReceiver::start().await?;
    let mut lab = Lab::new()?;
    let client = lab.pod("svcc")?;
    let server = lab.pod("svcs")?;
    let backend = lab.pod("svcb")?;
    let _nginx = Nginx::start(&server)?;
    let _backend_nginx = Nginx::start(&backend)?;
    // The ClusterIP, real: the backend answers on it, the client routes it on its link. Both
    // live in the lab's namespaces and go with them.
    run(
        "ip",
        &[
            "-n",
            &backend.netns,
            "addr",
            "add",
            &format!("{LEGACY_IP}/32"),
            "dev",
            "eth0",
        ],
    )?;
    run(
        "ip",
        &[
            "-n",
            &client.netns,
            "route",
            "add",
            &format!("{LEGACY_IP}/32"),
            "dev",
            "eth0",
        ],
    )?;

    let node = format!("node-svc-{}", std::process::id());
    let kube = FakeKube::start().await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = kube.write_kubeconfig(dir.path())?;
    let http = || fixtures::service("default", "checkout", "http-web", IntOrString::Int(80));
    // Two Services select the server pod: `checkout` names it (first by name).
    kube.apply(&with_cluster_ips(http(), &["10.96.0.20"]))?;
    kube.apply(&with_cluster_ips(renamed(http(), "storefront"), &["None"]))?;
    kube.apply(&with_cluster_ips(
        fixtures::service("default", "frontend", "http-web", IntOrString::Int(80)),
        &["10.96.0.30"],
    ))?;
    kube.apply(&with_cluster_ips(
        without_selector(renamed(http(), "legacy")),
        &[LEGACY_IP],
    ))?;
    let sts = <StatefulSet as k8s_openapi::Resource>::KIND;
    kube.apply(
        &PodBuilder::new("default", "checkout-v2-0", &node)
            .labels(&[("app", "checkout")])
            .owned_by(sts, "checkout-v2", "sts-checkout")
            .container("nginx", 80, None)
            .running(&[IpAddr::V4(server.ipv4)])
            .build(),
    )?;
    kube.apply(
        &PodBuilder::new("default", "frontend-0", &node)
            .labels(&[("app", "frontend")])
            .owned_by(sts, "frontend", "sts-frontend")
            .running(&[IpAddr::V4(client.ipv4)])
            .build(),
    )?;

    let mut clovisor = AllInOne::start_kube(
        &kubeconfig,
        &node,
        &otlp.endpoint(),
        &[&server.host_veth, &client.host_veth],
        "clovisor-kube-services",
    )?;

    let direct = session_named(
        &mut clovisor,
        &client,
        &format!("http://{}/index.html?svc=direct", server.ipv4),
        "checkout",
    )?;
    assert_eq!(
        (
            &direct["server"]["workload"],
            &direct["server"]["namespace"],
            &direct["client"]["service"]
        ),
        (
            &Value::from("checkout-v2"),
            &Value::from("default"),
            &Value::from("frontend")
        ),
        "the pod keeps its workload; the caller is named by its Service: {direct:#}"
    );
    let by_cluster_ip = session_named(
        &mut clovisor,
        &client,
        &format!("http://{LEGACY_IP}/index.html?svc=cluster-ip"),
        "legacy",
    )?;
    assert_eq!(
        (
            &by_cluster_ip["server"]["namespace"],
            &by_cluster_ip["server"]["pod"]
        ),
        (&Value::from("default"), &Value::Null),
        "the ClusterIP is the Service's, no pod's: {by_cluster_ip:#}"
    );

    // The Service deleted: the pod is named by the one still selecting it.
    assert!(
        kube.delete::<Service>("default", "checkout"),
        "checkout deleted"
    );
    session_named(
        &mut clovisor,
        &client,
        &format!("http://{}/index.html?svc=deleted", server.ipv4),
        "storefront",
    )?;

    // The services the analytics list are the Kubernetes Services (counted when an exchange's
    // join window closes, a few seconds after the REST API shows it).
    let services_url = format!("http://{}/api/v1/services", clovisor.api);
    let mut body = Value::Null;
    let listed = wait_for(
        "the Services in /api/v1/services",
        Duration::from_secs(20),
        || {
            body = serde_json::from_str(&http_get(&services_url)?).context("services JSON")?;
            let names: Vec<&str> = body["services"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["name"].as_str())
                .collect();
            Ok(["checkout", "frontend", "legacy", "storefront"]
                .iter()
                .all(|want| names.contains(want)))
        },
    );
    if let Err(e) = listed {
        bail!("{e:#}\n/api/v1/services lists checkout, frontend, legacy and storefront: {body:#}");
    }

    let status = clovisor.proc.stop(15, Duration::from_secs(15))?;
    assert!(
        status.success(),
        "clean exit on SIGTERM, saw {status:?}\n{}",
        clovisor.proc.log_text()
    );
    for veth in [&server.host_veth, &client.host_veth] {
        let left = our_programs_on(veth)?;
        assert!(left.is_empty(), "BPF programs left on {veth}: {left:?}");
    }

    // Spans: each under its resource's service. A request may have been sent more than once
    // (see `session_named`): every span of one query is compared.
    let resource_spans = otlp.resource_spans();
    let spans_of = |query: &str, kind: SpanKind| -> BTreeSet<(String, String, String)> {
        resource_spans
            .iter()
            .flat_map(|rs| {
                rs.scope_spans
                    .iter()
                    .flat_map(|ss| ss.spans.iter())
                    .filter(|s| {
                        s.kind == kind as i32
                            && string_attribute(s, "url.query").as_deref() == Some(query)
                    })
                    .map(|s| {
                        (
                            resource_attribute(rs, "service.name"),
                            resource_attribute(rs, "service.namespace"),
                            string_attribute(s, "peer.service").unwrap_or_default(),
                        )
                    })
            })
            .collect()
    };
    let named = |name: &str, peer: &str| (name.to_owned(), "default".to_owned(), peer.to_owned());
    assert_eq!(
        spans_of("svc=direct", SpanKind::Server),
        BTreeSet::from([named("checkout", "frontend")]),
        "the SERVER span under the Service selecting the pod (service.name, service.namespace, peer.service)"
    );
    assert_eq!(
        spans_of("svc=direct", SpanKind::Client),
        BTreeSet::from([named("frontend", "checkout")]),
        "the caller's CLIENT span under its own Service"
    );
    assert_eq!(
        spans_of("svc=cluster-ip", SpanKind::Client),
        BTreeSet::from([named("frontend", "legacy")]),
        "the call to the ClusterIP names the Service as its peer"
    );
    let after_delete = spans_of("svc=deleted", SpanKind::Server);
    assert!(
        after_delete.contains(&named("storefront", "frontend"))
            && after_delete.is_subset(&BTreeSet::from([
                named("checkout", "frontend"),
                named("storefront", "frontend"),
            ])),
        "after the delete, the remaining Service (requests sent before the probe saw it keep the old name): {after_delete:?}"
    );
    Ok(())
}
