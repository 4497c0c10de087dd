//! The probe following Kubernetes (`--targets kubernetes`) against a fake API server that
//! speaks real list/watch JSON, with namespace "pods" on veths and the real BPF programs:
//! pods added, made Running, deleted; a service port renamed; the selection changed; watch
//! streams cut and a 410 Gone forcing a relist; Services' ClusterIPs added, changed and deleted
//! across a relist — checked in the kernel (programs on the veths, the traced-ports map) and in
//! the endpoint records sent to the collector.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clovisor_integration_tests::fake_kube::FakeKube;
use clovisor_integration_tests::fixtures::{self, PodBuilder};
use clovisor_integration_tests::{our_programs_on, require_root, Lab, Pod as LabPod};
use clovisor_probe::metrics::ProbeMetrics;
use clovisor_probe::targets::kube::{follow, KubeTargets, PodSelection, PodSelector};
use clovisor_probe::targets::reconcile::{Reconciler, TargetsStatus};
use clovisor_probe::{Capture, CaptureConfig};
use clovisor_proto::capture::v1::{record, EndpointUpdate, ProtocolHint};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot, watch};

const WAIT: Duration = Duration::from_secs(15);

/// The web pod object `namespace/name` of `node` (container port 8080 named `web`): Running
/// with the addresses of lab pod `lab`, or Pending without one.
fn pod(ns: &str, name: &str, node: &str, lab: Option<&LabPod>, labels: &[(&str, &str)]) -> Pod {
    let pod = PodBuilder::new(ns, name, node)
        .labels(labels)
        .container("main", 8080, Some("web"));
    match lab {
        Some(lab) => pod.running(&[IpAddr::V4(lab.ipv4), IpAddr::V6(lab.ipv6)]),
        None => pod,
    }
    .build()
}

/// A service selecting `app=<app>` whose port 80 (named `port_name`) targets the pods' `web`.
fn service(ns: &str, app: &str, port_name: &str) -> Service {
    fixtures::service(ns, app, port_name, IntOrString::String("web".into()))
}

/// The follower running against the fake server, as the agent runs it.
struct Probe {
    status: watch::Receiver<TargetsStatus>,
    records: mpsc::Receiver<clovisor_proto::hops::RecordChunk>,
    endpoints: Vec<EndpointUpdate>,
    selection: watch::Sender<PodSelection>,
    registry: Registry,
    /// The `/readyz` check `kubernetes_watch`.
    watch_ready: clovisor_runtime::health::Flag,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Capture>>,
    /// The probe's loss accounting.
    drops: clovisor_runtime::drops::Drops,
    _dir: tempfile::TempDir,
}

impl Probe {
    async fn start(kube: &FakeKube, node: &str) -> Result<Self> {
        Self::start_with_queue(kube, node, 1024).await
    }

    /// The follower with a queue of `queue` chunks to the uplink (read only by
    /// [`Probe::drain_endpoints`]).
    async fn start_with_queue(kube: &FakeKube, node: &str, queue: usize) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        // Through a kubeconfig file, as `KUBECONFIG` gives it to the probe.
        let path = kube.write_kubeconfig(dir.path())?;
        let kubeconfig = kube::config::Kubeconfig::read_from(&path)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        let client = kube::Client::try_from(config)?;
        let capture = Capture::load(&CaptureConfig {
            node: node.into(),
            ..CaptureConfig::default()
        })?;
        let (tx, records) = mpsc::channel(queue);
        let drops = clovisor_runtime::drops::Drops::default();
        let metrics = Arc::new(ProbeMetrics::new(drops.clone()));
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let reconciler = Reconciler::new(
            capture,
            tx,
            Arc::clone(&metrics),
            node.into(),
            BTreeMap::new(),
            // No live configuration source: flags and defaults only.
            watch::channel(clovisor_config::LiveConfig::default()).1,
        );
        let status = reconciler.subscribe();
        let (selection, selection_rx) = watch::channel(PodSelection::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let watch_ready = clovisor_runtime::health::Flag::default();
        let targets = KubeTargets {
            node: node.into(),
            selection: selection_rx,
            resync: Duration::from_secs(1),
            watch_ready: watch_ready.clone(),
        };
        let task = tokio::spawn(follow(targets, client, reconciler, metrics, async {
            let _ = stopped.await;
        }));
        Ok(Self {
            status,
            records,
            endpoints: Vec::new(),
            selection,
            registry,
            watch_ready,
            stop: Some(stop),
            task: Some(task),
            drops,
            _dir: dir,
        })
    }

    /// Waits until the status satisfies `check`; fails with the last status seen.
    async fn wait_status(
        &mut self,
        what: &str,
        check: impl Fn(&TargetsStatus) -> bool,
    ) -> Result<TargetsStatus> {
        let waited = tokio::time::timeout(WAIT, self.status.wait_for(|s| check(s)))
            .await
            .map(|r| r.map(|s| s.clone()));
        match waited {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(_)) => bail!("{what}: the follower stopped"),
            Err(_) => bail!(
                "timed out after {WAIT:?} waiting for {what}; last status: {:?}",
                *self.status.borrow()
            ),
        }
    }

    /// Endpoint updates received so far.
    fn drain_endpoints(&mut self) -> &[EndpointUpdate] {
        while let Ok(chunk) = self.records.try_recv() {
            for r in chunk.decode().unwrap_or_default() {
                if let Some(record::Kind::Endpoint(e)) = r.kind {
                    self.endpoints.push(e);
                }
            }
        }
        &self.endpoints
    }

    fn metrics_text(&self) -> Result<String> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Stops the follower; every attachment must be gone afterwards.
    async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().context("stopped twice")?;
        let capture = tokio::time::timeout(WAIT, task).await??;
        if !capture.attached().is_empty() {
            bail!("still attached after stop: {:?}", capture.attached());
        }
        Ok(())
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn programs(veth: &str) -> Result<Vec<String>> {
    our_programs_on(veth)
}

/// Waits until none of our programs is on `veth`. The detach itself is synchronous, but a link
/// whose descriptor a concurrently spawned process (another test's `ip` or server) still holds
/// between its fork and its exec stays attached until that copy is closed: a few milliseconds,
/// longer on a loaded machine.
async fn wait_detached(veth: &str, what: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = programs(veth)?;
        if left.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what}: still on {veth} after 5 s: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_attached_once(veth: &str) -> Result<()> {
    let progs = programs(veth)?;
    assert_eq!(
        progs.len(),
        2,
        "exactly our two programs (from_pod, to_pod) on {veth}, got {progs:?}"
    );
    Ok(())
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn node_name() -> String {
    format!(
        "node-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_followed_through_the_api_and_service_names_set_the_protocol() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new()?;
    let web_ns = lab.pod("kweb")?;
    let sys_ns = lab.pod("ksys")?;
    let node = node_name();
    let kube = FakeKube::start().await?;
    kube.apply(&service("default", "web", "tcp"))?;
    // Not traced: on another node (never even listed), host network, not selected.
    kube.apply(&pod(
        "default",
        "elsewhere",
        "other-node",
        Some(&web_ns),
        &[],
    ))?;
    kube.apply(
        &PodBuilder::new("default", "hostnet", &node)
            .labels(&[])
            .container("main", 8080, Some("web"))
            .host_network()
            .running(&[IpAddr::V4(sys_ns.ipv4), IpAddr::V6(sys_ns.ipv6)])
            .build(),
    )?;
    kube.apply(&pod(
        "kube-system",
        "sys",
        &node,
        Some(&sys_ns),
        &[("app", "sys")],
    ))?;
    // The web pod is created Pending, without an IP.
    let web = PodBuilder::new("default", "web-5d9f8-abcde", &node)
        .labels(&[("app", "web"), ("pod-template-hash", "5d9f8")])
        .owned_by("ReplicaSet", "web-5d9f8", "rs-uid")
        .container("main", 8080, Some("web"))
        .build();
    kube.apply(&web)?;

    let mut probe = Probe::start(&kube, &node).await?;
    let s = probe
        .wait_status("the pending pod seen", |s| {
            s.skipped.contains_key("default/web-5d9f8-abcde")
        })
        .await?;
    assert_eq!(
        s.skipped,
        BTreeMap::from([
            (
                "default/web-5d9f8-abcde".to_owned(),
                "not running".to_owned()
            ),
            (
                "default/hostnet".to_owned(),
                "host network: no veth of its own".to_owned()
            ),
            (
                "kube-system/sys".to_owned(),
                "not selected by clovisor_labels".to_owned()
            ),
        ]),
        "skipped pods and why (the other node's pod is not listed at all)"
    );
    assert!(s.attached.is_empty(), "nothing attached yet: {s:?}");
    assert!(
        programs(&web_ns.host_veth)?.is_empty() && programs(&sys_ns.host_veth)?.is_empty(),
        "no program on either veth before a pod runs"
    );

    // Running with its IPs: found by IP, attached, its port traced as the service says.
    let web = Pod {
        status: pod("default", "x", &node, Some(&web_ns), &[]).status,
        ..web
    };
    kube.apply(&web)?;
    let s = probe
        .wait_status("the web pod attached", |s| {
            s.attached.contains_key("default/web-5d9f8-abcde")
        })
        .await?;
    assert_eq!(
        s.attached.get("default/web-5d9f8-abcde"),
        Some(&web_ns.host_veth),
        "attached to the web pod's host veth"
    );
    assert_eq!(s.attached.len(), 1, "only the web pod: {s:?}");
    assert_eq!(
        s.traced_ports,
        BTreeMap::from([(8080, ProtocolHint::Tcp)]),
        "service port `tcp` → 8080 traced as TCP"
    );
    assert_attached_once(&web_ns.host_veth)?;
    let added: Vec<EndpointUpdate> = probe
        .drain_endpoints()
        .iter()
        .filter(|e| e.pod == "web-5d9f8-abcde" && !e.removed)
        .cloned()
        .collect();
    let ips: BTreeSet<IpAddr> = added
        .iter()
        .filter_map(|e| match e.ip.len() {
            4 => <[u8; 4]>::try_from(e.ip.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(e.ip.as_slice()).ok().map(IpAddr::from),
            _ => None,
        })
        .collect();
    assert_eq!(
        ips,
        BTreeSet::from([IpAddr::V4(web_ns.ipv4), IpAddr::V6(web_ns.ipv6)]),
        "endpoint updates for both pod IPs: {added:?}"
    );
    for e in &added {
        assert_eq!(
            (e.namespace.as_str(), e.workload.as_str(), e.node.as_str()),
            ("default", "web", node.as_str()),
            "namespace, deployment and node of {e:?}"
        );
        assert_eq!(e.interface, web_ns.host_veth, "interface of {e:?}");
    }

    // The service port renamed from tcp to http: the kernel map follows.
    kube.apply(&service("default", "web", "http"))?;
    probe
        .wait_status("port 8080 traced as HTTP", |s| {
            s.traced_ports.get(&8080) == Some(&ProtocolHint::Http)
        })
        .await?;
    // appProtocol wins over the name.
    let mut grpc = service("default", "web", "http");
    if let Some(p) = grpc
        .spec
        .as_mut()
        .and_then(|s| s.ports.as_mut())
        .and_then(|p| p.first_mut())
    {
        p.app_protocol = Some("grpc".into());
    }
    kube.apply(&grpc)?;
    probe
        .wait_status("appProtocol grpc wins", |s| {
            s.traced_ports.get(&8080) == Some(&ProtocolHint::Grpc)
        })
        .await?;
    assert_attached_once(&web_ns.host_veth)?;

    // The selection moves to kube-system: web detached, sys attached, live.
    probe.selection.send_replace(PodSelection {
        selectors: vec![PodSelector::labelled("kube-system", "app", "sys")],
    });
    let s = probe
        .wait_status("selection moved to kube-system", |s| {
            s.attached.keys().eq(["kube-system/sys"])
        })
        .await?;
    assert_eq!(s.attached.get("kube-system/sys"), Some(&sys_ns.host_veth));
    wait_detached(&web_ns.host_veth, "web detached when it stopped matching").await?;
    assert_attached_once(&sys_ns.host_veth)?;
    probe.selection.send_replace(PodSelection::default());
    probe
        .wait_status("back to the default namespace", |s| {
            s.attached.keys().eq(["default/web-5d9f8-abcde"])
        })
        .await?;
    assert_attached_once(&web_ns.host_veth)?;
    wait_detached(&sys_ns.host_veth, "sys detached").await?;

    // Deleted: detached, port out of the map, addresses retracted.
    let seen = probe.drain_endpoints().len();
    kube.delete::<Pod>("default", "web-5d9f8-abcde");
    let s = probe
        .wait_status("web pod gone", |s| s.attached.is_empty())
        .await?;
    assert!(
        s.traced_ports.is_empty(),
        "its port left the map: {:?}",
        s.traced_ports
    );
    wait_detached(
        &web_ns.host_veth,
        "programs removed when the pod is deleted",
    )
    .await?;
    let removed = probe.drain_endpoints()[seen..]
        .iter()
        .filter(|e| e.pod == "web-5d9f8-abcde" && e.removed)
        .count();
    assert_eq!(removed, 2, "both addresses retracted once");
    probe.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_watch_and_a_410_resync_without_losing_or_duplicating() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new()?;
    let (a_ns, b_ns, c_ns) = (lab.pod("ka")?, lab.pod("kb")?, lab.pod("kc")?);
    let node = node_name();
    let kube = FakeKube::start().await?;
    kube.apply(&service("default", "web", "http"))?;
    kube.apply(&pod("default", "a", &node, Some(&a_ns), &[("app", "web")]))?;
    let mut probe = Probe::start(&kube, &node).await?;
    probe
        .wait_status("a attached", |s| s.attached.contains_key("default/a"))
        .await?;
    let lists = kube.requests("pods", "list");
    let watches = kube.requests("pods", "watch");

    // Streams cut: the watch resumes from its resource version, no relist; what changed
    // meanwhile arrives.
    kube.cut_watches();
    kube.apply(&pod("default", "b", &node, Some(&b_ns), &[("app", "web")]))?;
    let s = probe
        .wait_status("b attached after the cut", |s| {
            s.attached.keys().eq(["default/a", "default/b"])
        })
        .await?;
    assert_eq!(
        kube.requests("pods", "list"),
        lists,
        "a cut watch resumes without relisting"
    );
    assert!(
        kube.requests("pods", "watch") > watches,
        "the watch was reopened"
    );
    assert_eq!(s.traced_ports, BTreeMap::from([(8080, ProtocolHint::Http)]));

    // History expired (410 Gone on resume) while a is deleted and c added: a relist.
    kube.expire_history();
    kube.delete::<Pod>("default", "a");
    kube.apply(&pod("default", "c", &node, Some(&c_ns), &[("app", "web")]))?;
    let s = probe
        .wait_status("relisted: b and c", |s| {
            s.attached.keys().eq(["default/b", "default/c"])
        })
        .await?;
    assert!(
        kube.requests("pods", "list") > lists,
        "the 410 forced a relist"
    );
    assert_eq!(s.attached.get("default/c"), Some(&c_ns.host_veth));
    wait_detached(&a_ns.host_veth, "a (deleted during the outage) detached").await?;
    assert_attached_once(&b_ns.host_veth)?;
    assert_attached_once(&c_ns.host_veth)?;
    let metrics = probe.metrics_text()?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("clovisor_probe_kube_watch_errors_total{resource=\"pods\"}")),
        "the 410 is counted:\n{metrics}"
    );
    // b was attached once and stays once: no duplicate endpoint retraction either.
    let b_removed = probe
        .drain_endpoints()
        .iter()
        .filter(|e| e.pod == "b" && e.removed)
        .count();
    assert_eq!(b_removed, 0, "b never retracted across the resyncs");
    probe.stop().await?;
    for veth in [&a_ns.host_veth, &b_ns.host_veth, &c_ns.host_veth] {
        wait_detached(veth, "nothing left after stop").await?;
    }
    Ok(())
}

/// Waits until `flag` is `up`.
async fn wait_flag(flag: &clovisor_runtime::health::Flag, up: bool, what: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while flag.is_up() != up {
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_check_is_up_only_while_the_api_server_answers() -> Result<()> {
    require_root()?;
    let node = node_name();
    let kube = FakeKube::start().await?;
    kube.apply(&service("default", "web", "http"))?;
    let probe = Probe::start(&kube, &node).await?;
    wait_flag(&probe.watch_ready, true, "listed and watching").await?;
    // The API server goes away: the watches fail (and keep retrying); not ready meanwhile.
    drop(kube);
    wait_flag(&probe.watch_ready, false, "the failing watch noticed").await?;
    // A new API server on another address is not something a running client follows; what
    // matters here is that the check said the truth. The follower keeps running (retrying).
    probe.stop().await
}

/// The Service addresses the collector was told of so far, folded from the endpoint updates
/// (an address retracted is gone): address → `namespace/name`.
fn told_service_addresses(probe: &mut Probe) -> BTreeMap<IpAddr, String> {
    let mut told = BTreeMap::new();
    for e in probe.drain_endpoints().iter().filter(|e| e.service_address) {
        let Some(ip) = e.addr() else { continue };
        if e.removed {
            told.remove(&ip);
        } else {
            told.insert(ip, format!("{}/{}", e.namespace, e.services.join(",")));
        }
    }
    told
}

/// Waits until the Service addresses told are `want`; fails with the last ones seen.
async fn wait_service_addresses(
    probe: &mut Probe,
    what: &str,
    want: &[(&str, &str)],
) -> Result<()> {
    let want: BTreeMap<IpAddr, String> = want
        .iter()
        .map(|(ip, svc)| Ok((ip.parse::<IpAddr>()?, (*svc).to_owned())))
        .collect::<Result<_>>()?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let told = told_service_addresses(probe);
        if told == want {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {WAIT:?} waiting for {what}: told {told:?}, want {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_addresses_follow_the_services_watch_through_changes_and_a_410() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new()?;
    let web_ns = lab.pod("ksa")?;
    let node = node_name();
    let kube = FakeKube::start().await?;
    let web = |ips: &[&str]| fixtures::with_cluster_ips(service("default", "web", "http"), ips);
    kube.apply(&web(&["10.96.1.1", "fd00:96::1"]))?;
    kube.apply(&fixtures::renamed(web(&["None"]), "web-headless"))?;
    kube.apply(&pod(
        "default",
        "w",
        &node,
        Some(&web_ns),
        &[("app", "web")],
    ))?;
    let mut probe = Probe::start(&kube, &node).await?;
    probe
        .wait_status("w attached", |s| s.attached.contains_key("default/w"))
        .await?;
    wait_service_addresses(
        &mut probe,
        "both families of the ClusterIP, none for the headless Service",
        &[("10.96.1.1", "default/web"), ("fd00:96::1", "default/web")],
    )
    .await?;
    let services_of_w: Vec<Vec<String>> = probe
        .drain_endpoints()
        .iter()
        .filter(|e| e.pod == "w" && !e.removed)
        .map(|e| e.services.clone())
        .collect();
    assert!(
        !services_of_w.is_empty()
            && services_of_w
                .iter()
                .all(|s| s == &["web".to_owned(), "web-headless".to_owned()]),
        "the pod's metadata names both Services selecting it, sorted: {services_of_w:?}"
    );

    // MODIFIED: a new ClusterIP (a Service recreated by hand keeps its name): the old one
    // retracted.
    kube.apply(&web(&["10.96.1.2"]))?;
    wait_service_addresses(
        &mut probe,
        "the new address only",
        &[("10.96.1.2", "default/web")],
    )
    .await?;

    // History expired (410 Gone on resume) while the Service is deleted: the relist drops it.
    let lists = kube.requests("services", "list");
    kube.expire_history();
    assert!(kube.delete::<Service>("default", "web"), "web deleted");
    wait_service_addresses(&mut probe, "no address after the relist", &[]).await?;
    assert!(
        kube.requests("services", "list") > lists,
        "the 410 forced a relist of the Services"
    );
    let services_of_w = probe
        .drain_endpoints()
        .iter()
        .rev()
        .find(|e| e.pod == "w" && !e.removed)
        .map(|e| e.services.clone());
    assert_eq!(
        services_of_w,
        Some(vec!["web-headless".to_owned()]),
        "the pod's metadata sent again without the deleted Service"
    );
    probe.stop().await
}

/// A collector that takes none of the probe's records (unreachable, or slower than the node)
/// leaves the queue to the uplink full: the follower goes on attaching new pods and stops when
/// told, and the pod metadata that found no room is dropped and counted — it used to wait for
/// room for ever, so that no pod was followed any more and the probe could not stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_to_the_uplink_does_not_stop_the_follower() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new()?;
    let first_ns = lab.pod("kqa")?;
    let second_ns = lab.pod("kqb")?;
    let node = node_name();
    let kube = FakeKube::start().await?;
    kube.apply(&service("default", "web", "http"))?;
    // Room for one chunk, and nobody reads it: the first pod's first address fills it.
    let mut probe = Probe::start_with_queue(&kube, &node, 1).await?;
    kube.apply(&pod(
        "default",
        "first",
        &node,
        Some(&first_ns),
        &[("app", "web")],
    ))?;
    probe
        .wait_status("the first pod attached", |s| {
            s.attached.contains_key("default/first")
        })
        .await?;
    kube.apply(&pod(
        "default",
        "second",
        &node,
        Some(&second_ns),
        &[("app", "web")],
    ))?;
    let s = probe
        .wait_status("the second pod attached", |s| {
            s.attached.contains_key("default/second")
        })
        .await?;
    let first = s
        .attached
        .get("default/first")
        .context("first veth")?
        .clone();
    let second = s
        .attached
        .get("default/second")
        .context("second veth")?
        .clone();
    assert_attached_once(&second)?;
    // Each pod has two addresses, an update each: one fitted, the rest were dropped, counted.
    let dropped = probe.drops.get("probe_endpoints", "full");
    assert!(
        dropped >= 3,
        "endpoint updates dropped and counted: {dropped}"
    );
    assert_eq!(
        probe.drain_endpoints().len(),
        1,
        "only the update that found room reached the queue"
    );
    probe.stop().await?;
    wait_detached(&first, "the first pod after stop").await?;
    wait_detached(&second, "the second pod after stop").await?;
    Ok(())
}
