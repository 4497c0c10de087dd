//! `clovisor all-in-one --targets kubernetes`, as a user runs it, with `KUBECONFIG` pointing at
//! the fake API server: the pod the API describes is traced by its host veth (found from its IP),
//! its sessions carry the pod name and namespace the API gave and the probe's node, the protocol comes from
//! the Service, the pod's processes are traced at the socket point (its namespace learnt with its veth),
//! and deleting the pod detaches it; SIGTERM leaves nothing behind.

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};
use clovisor_integration_tests::api::{self, points};
use clovisor_integration_tests::fake_kube::FakeKube;
use clovisor_integration_tests::fixtures::{self, PodBuilder};
use clovisor_integration_tests::http_client::Curl;
use clovisor_integration_tests::{
    clovisor_bin, free_port, our_programs_complete_on, our_programs_on, require_root, wait_for,
    Lab, Nginx, Proc,
};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_in_one_traces_the_pods_the_api_server_describes() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new()?;
    let client = lab.pod("kcli")?;
    let server = lab.pod("ksrv")?;
    let _nginx = Nginx::start(&server)?;
    let node = format!("node-e2e-{}", std::process::id());

    let kube = FakeKube::start().await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = kube.write_kubeconfig(dir.path())?;
    kube.apply(&fixtures::service(
        "default",
        "db",
        "http-web",
        IntOrString::Int(80),
    ))?;
    kube.apply(
        &PodBuilder::new("default", "db-0", &node)
            .uid("uid-db-0")
            .labels(&[("app", "db")])
            .owned_by(
                <StatefulSet as k8s_openapi::Resource>::KIND,
                "db",
                "sts-uid",
            )
            .container("nginx", 80, None)
            .running(&[IpAddr::V4(server.ipv4)])
            .build(),
    )?;

    // A host-network pod of the node: never attached, and the log says why.
    kube.apply(
        &PodBuilder::new("default", "node-agent", &node)
            .uid("uid-agent")
            .host_network()
            .running(&[IpAddr::V4(client.ipv4)])
            .build(),
    )?;

    let api = format!("127.0.0.1:{}", free_port()?);
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let mut cmd = Command::new(clovisor_bin()?);
    cmd.args([
        "all-in-one",
        "--targets",
        "kubernetes",
        "--node",
        &node,
        "--api-listen",
        &api,
        "--metrics-listen",
        &metrics,
    ])
    .env("KUBECONFIG", &kubeconfig)
    .env("OTEL_TRACES_EXPORTER", "none")
    .env("RUST_LOG", "info");
    let log = std::env::temp_dir().join(format!("clovisor-kube-e2e-{}.log", std::process::id()));
    let mut proc = Proc::spawn(cmd, log)?;
    let attached = wait_for("the pod's veth attached", Duration::from_secs(30), || {
        if !proc.running() {
            bail!("clovisor exited early:\n{}", proc.log_text());
        }
        our_programs_complete_on(&server.host_veth)
    });
    if let Err(e) = attached {
        bail!("{e:#}\nlog:\n{}", proc.log_text());
    }
    let log_text = proc.log_text();
    assert!(
        log_text.contains("found the pod's host veth") && log_text.contains("named netns"),
        "the log names how the veth was found:\n{log_text}"
    );
    assert!(
        log_text.lines().any(|l| l.contains("pod not traced")
            && l.contains("default/node-agent")
            && l.contains("host network")),
        "the host-network pod is logged as not traced:\n{log_text}"
    );
    assert!(
        our_programs_on(&client.host_veth)?.is_empty(),
        "nothing attached for the host-network pod"
    );

    let url = format!("http://{}/index.html?kube=1", server.ipv4);
    let mut seen = Value::Null;
    // (point, side) of each observation.
    let kinds_and_sides = |s: &Value| -> Vec<(String, String)> {
        points(s).into_iter().map(|p| (p.kind, p.side)).collect()
    };
    let server_points = vec![
        ("pod".to_owned(), "server".to_owned()),
        ("socket".to_owned(), "server".to_owned()),
    ];
    let mut sent = false;
    let found = wait_for("the session of the pod", Duration::from_secs(20), || {
        if !sent {
            Curl::new().max_time(5).run(&client, &[&url])?;
            sent = true;
        }
        let hit = api::sessions(&api)?
            .into_iter()
            .find(|s| s["http"]["query"] == "kube=1" && kinds_and_sides(s) == server_points);
        Ok(hit.map(|s| seen = s).is_some())
    });
    if let Err(e) = found {
        let body = api::sessions(&api).map(Value::from).unwrap_or_default();
        bail!(
            "{e:#}\nexpected one session seen at the pod's veth and nginx's socket: {body}\nlog:\n{}",
            proc.log_text()
        );
    }
    assert_eq!(
        seen["observations"][1]["comm"], "nginx",
        "the socket point names the pod's process: {seen:#}"
    );
    assert_eq!(
        (
            &seen["server"]["pod"],
            &seen["server"]["namespace"],
            &seen["server"]["node"]
        ),
        (
            &Value::from("db-0"),
            &Value::from("default"),
            &Value::from(node.as_str())
        ),
        "server metadata from the API: {seen:#}"
    );
    assert_eq!(seen["protocol"], "http/1.1", "decoded as HTTP: {seen:#}");

    // Deleted in the API: detached while the process keeps running.
    kube.delete::<Pod>("default", "db-0");
    let detached = wait_for("the pod detached", Duration::from_secs(10), || {
        Ok(our_programs_on(&server.host_veth)?.is_empty())
    });
    if let Err(e) = detached {
        bail!("{e:#}\nlog:\n{}", proc.log_text());
    }
    assert!(proc.running(), "still running after the pod went away");
    let status = proc.stop(15, Duration::from_secs(15))?;
    assert!(
        status.success(),
        "clean exit on SIGTERM, saw {status:?}\n{}",
        proc.log_text()
    );
    Ok(())
}
