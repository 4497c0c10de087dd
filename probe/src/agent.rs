//! The probe as a whole: cleans up after a crashed predecessor, loads the capture, follows what
//! to trace, and streams records to a collector until told to stop — then stops in order so
//! nothing already captured is lost: detach, drain the ring buffer, drain the uplink.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use clovisor_config::LiveConfig;
use clovisor_proto::delivery::DeliveryConfig;
use clovisor_proto::hops::CaptureConnector;
use clovisor_runtime::health::{Flag, Readiness};
use clovisor_runtime::StopFlag;
use tokio::sync::{mpsc, watch};

use crate::capture::assembler::InterfaceNames;
use crate::capture::shared::SharedPin;
use crate::capture::socket_object::SocketCapture;
use crate::capture::{Capture, CaptureConfig, EventLoop};
use crate::error::Result;
use crate::hooks::socket::{SocketHookPolicy, VethPayload};
use crate::metrics::ProbeMetrics;
use crate::targets::kube::KubeTargets;
use crate::targets::netns::{self, NetnsTargets};
use crate::targets::reconcile::Reconciler;
use crate::uplink::{Identity, Uplink};

/// Everything the probe needs to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Kernel-side capture settings.
    pub capture: CaptureConfig,
    /// What to trace.
    pub targets: TargetSource,
    /// Reported as the node of every record and endpoint.
    pub node: String,
    /// Ports traced whatever the pods expose.
    pub extra_ports: std::collections::BTreeSet<u16>,
    /// Node interfaces (uplinks) on which the traced pods' traffic is traced too.
    pub node_interfaces: crate::hooks::node_iface::NodeInterfaces,
    /// Whether to run the socket observation point.
    pub socket_hooks: SocketHookPolicy,
    /// What pod veths capture where the socket point covers their pod.
    pub veth_payload: VethPayload,
    /// Uplink delivery tuning.
    pub delivery: DeliveryConfig,
    /// Records queued between the ring buffer reader and the uplink; beyond it records are
    /// dropped and counted rather than stalling the reader.
    pub record_queue: usize,
    /// What `/readyz` checks, kept true by the agent.
    pub health: ProbeHealth,
    /// The service account token presented to the collector on every stream (the collector's
    /// `--probe-identity token`); none: no token.
    pub collector_token_file: Option<std::path::PathBuf>,
}

/// The probe's readiness: each flag is kept up to date by the part that knows.
#[derive(Debug, Clone, Default)]
pub struct ProbeHealth {
    /// The capture programs are loaded (and the veth/node programs ready to attach).
    pub bpf: Flag,
    /// A stream to the collector is open.
    pub uplink: Flag,
    /// Pods and services are listed and watched (Kubernetes targets only).
    pub kube_watch: Flag,
}

impl ProbeHealth {
    /// Registers the checks in `readiness`: `bpf`, `uplink`, and `kubernetes_watch` when the
    /// targets come from Kubernetes.
    pub fn register(&self, readiness: &Readiness, targets: &TargetSource) {
        readiness.add_flag("bpf", &self.bpf, "capture programs not loaded");
        readiness.add_flag("uplink", &self.uplink, "no stream to the collector");
        if matches!(targets, TargetSource::Kubernetes(_)) {
            readiness.add_flag(
                "kubernetes_watch",
                &self.kube_watch,
                "pods and services not listed, or the watch is failing",
            );
        }
    }
}

/// Where the pods to trace come from.
#[derive(Debug, Clone)]
pub enum TargetSource {
    /// Named network namespaces on this host.
    Netns(NetnsTargets),
    /// The pods of this node, watched through the Kubernetes API.
    Kubernetes(KubeTargets),
}

/// A target source ready to run.
enum Source {
    Netns(NetnsTargets),
    Kubernetes(KubeTargets, kube::Client),
}

/// How often the metrics catch up with the kernel's and the pipeline's counters.
const METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the probe against the collector `collector` reaches (a gRPC channel, or a collector in
/// this process: [`CaptureConnector::direct`]) until `shutdown` resolves, keeping
/// `metrics` up to date and following the live configuration `live` (snaplen, egress rules
/// and, in Kubernetes, the `clovisor_labels` pod selection).
pub async fn run(
    config: AgentConfig,
    live: watch::Receiver<LiveConfig>,
    collector: CaptureConnector,
    shutdown: impl Future<Output = ()>,
    metrics: Arc<ProbeMetrics>,
) -> Result<()> {
    let removed = crate::cleanup_leftovers()?;
    if removed > 0 {
        tracing::warn!(
            removed,
            "removed tc filters left by a previous run that crashed"
        );
    }
    // The client first: a probe that cannot configure it says so before touching the kernel.
    let source = match config.targets.clone() {
        TargetSource::Netns(t) => Source::Netns(t),
        TargetSource::Kubernetes(mut t) => Source::Kubernetes(
            {
                t.selection = crate::targets::kube::selection::follow_labels(live.clone());
                t
            },
            kube::Client::try_default()
                .await
                .map_err(|source| crate::Error::KubeConfig { source })?,
        ),
    };
    // The tc object's connection map, shared with the socket point through a pin that lives
    // only while both load: without it each object runs alone (the veths send their own records).
    let pin = (config.socket_hooks != SocketHookPolicy::Off)
        .then(SharedPin::new)
        .and_then(|p| {
            // Expected without a BPF filesystem (docs/kubernetes.md): everything is traced.
            p.map_err(|e| tracing::info!(error = %e, "no BPF filesystem to share the connection map through; covered veths send their own records"))
                .ok()
        });
    let (mut capture, pin) = match Capture::load_sharing(&config.capture, pin.as_ref()) {
        Ok(c) => (c, pin),
        Err(e) if pin.is_some() => {
            tracing::warn!(error = %e, "loading the tc object with its connection map shared failed; loading it alone");
            // Not offered to the socket point either: it would share a map of its own.
            drop(pin);
            (Capture::load(&config.capture)?, None)
        }
        Err(e) => return Err(e),
    };
    let events = capture.take_event_loop()?;
    config.health.bpf.set(true);
    let (socket, socket_events) =
        load_socket_point(&config, &metrics, pin.as_ref(), capture.interface_names());
    drop(pin);
    // Covered veths are carried by the socket point when it reads their connections.
    if socket
        .as_ref()
        .is_some_and(SocketCapture::shares_tc_connections)
    {
        capture.set_carry_wire(true)?;
        tracing::info!("covered pod veths' counters travel in the socket point's records");
    }
    let identity = Identity::new(config.node.clone(), config.capture.snaplen);
    tracing::info!(probe_id = %identity.probe_id, node = %identity.node, "probe started");

    // In chunks of at most CHUNK_RECORDS records: the queue holds about record_queue records.
    let (records_tx, records_rx) =
        mpsc::channel((config.record_queue / crate::uplink::CHUNK_RECORDS).max(8));
    // Both capture objects' connections, each announced once.
    let max_flows = usize::try_from(config.capture.max_connections)
        .unwrap_or(usize::MAX)
        .saturating_mul(2);
    let uplink = Uplink::new(
        &identity,
        collector,
        config.delivery.clone(),
        max_flows,
        config.collector_token_file.clone(),
    );
    let uplink_stats = uplink.stats();
    // The uplink ends once every record sender is gone and what it holds is delivered.
    let uplink = tokio::spawn(uplink.run(records_rx, std::future::pending()));

    let stop = StopFlag::default();
    let mut kernel_stats = vec![capture.kernel_stats_handle()];
    kernel_stats.extend(socket.as_ref().map(SocketCapture::kernel_stats_handle));
    let mut event_stats = vec![events.stats_handle()];
    event_stats.extend(socket_events.as_ref().map(EventLoop::stats_handle));
    let update_metrics = {
        let metrics = Arc::clone(&metrics);
        let uplink_up = config.health.uplink.clone();
        move || {
            uplink_up.set(
                uplink_stats
                    .connected
                    .load(std::sync::atomic::Ordering::Relaxed),
            );
            let mut kernel = std::collections::BTreeMap::new();
            for stats in &kernel_stats {
                match stats.read() {
                    Ok(values) => kernel.extend(values),
                    Err(e) => tracing::warn!(error = %e, "cannot read kernel counters"),
                }
            }
            // Both event loops feed the same queue: their counters add up.
            let mut events = crate::capture::EventLoopStats::default();
            for stats in &event_stats {
                let s = stats.lock().map(|s| *s).unwrap_or_else(|p| *p.into_inner());
                events.add(&s);
            }
            metrics.update(Some(&kernel), &events, &uplink_stats);
        }
    };
    let reconciler = Reconciler::new(
        capture,
        records_tx.clone(),
        Arc::clone(&metrics),
        config.node.clone(),
        config
            .extra_ports
            .iter()
            .map(|p| (*p, netns::hint_for_port(*p)))
            .collect(),
        live,
    )
    .with_node_interfaces(config.node_interfaces.clone())
    .with_socket_point(socket, config.veth_payload);
    let follower = match source {
        Source::Kubernetes(targets, client) => tokio::spawn(crate::targets::kube::follow(
            targets,
            client,
            reconciler,
            Arc::clone(&metrics),
            stop.wait(),
        )),
        Source::Netns(targets) => tokio::spawn(netns::follow(targets, reconciler, stop.wait())),
    };
    let socket_events =
        socket_events.map(|ev| tokio::spawn(ev.run(records_tx.clone(), stop.wait())));
    let events = tokio::spawn(events.run(records_tx, stop.wait()));
    let metrics_task = {
        let update = update_metrics.clone();
        let stopped = stop.wait();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(METRICS_INTERVAL);
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => update(),
                }
            }
        })
    };

    // The follower runs until told to stop; if it ends first (its watch streams ended, or it
    // failed), the probe stops in order and reports it instead of running blind.
    let mut follower = follower;
    let follower_ended = tokio::select! {
        _ = shutdown => false,
        _ = &mut follower => true,
    };
    stop.raise();
    if !follower_ended {
        match follower.await {
            Ok(capture) => drop(capture),
            Err(e) => tracing::error!(error = %e, "target follower failed"),
        }
    }
    for (ring, events) in
        std::iter::once(("veth", events)).chain(socket_events.map(|e| ("socket", e)))
    {
        match events.await {
            Ok(Ok(stats)) => tracing::info!(ring, ?stats, "ring buffer drained"),
            Ok(Err(e)) => tracing::error!(ring, error = %e, "event loop failed"),
            Err(e) => tracing::error!(ring, error = %e, "event loop task failed"),
        }
    }
    if let Err(e) = uplink.await {
        tracing::error!(error = %e, "uplink task failed");
    }
    let _ = metrics_task.await;
    // Final numbers, including what the shutdown itself dropped.
    update_metrics();
    config.health.bpf.set(false);
    if follower_ended {
        tracing::error!("the target follower ended: the probe stops");
        return Err(crate::Error::TargetsEnded);
    }
    tracing::info!("probe stopped");
    Ok(())
}

/// Loads the socket point as `config.socket_hooks` says. In `auto` mode a kernel that offers no
/// usable hook set costs the socket point only: logged, `hook="none"` in the metric and the API.
fn load_socket_point(
    config: &AgentConfig,
    metrics: &ProbeMetrics,
    pin: Option<&SharedPin>,
    interfaces: InterfaceNames,
) -> (Option<SocketCapture>, Option<EventLoop>) {
    if config.socket_hooks == SocketHookPolicy::Off {
        tracing::info!("socket observation point off (--socket-hooks off)");
        metrics.set_socket_hooks(None, Vec::new(), None);
        return (None, None);
    }
    let loaded = SocketCapture::load_sharing(&config.capture, pin)
        .or_else(|e| match pin {
            Some(_) => {
                tracing::warn!(error = %e, "loading the socket point with the tc connection map shared failed; loading it alone");
                SocketCapture::load(&config.capture)
            }
            None => Err(e),
        })
        .and_then(|mut s| {
            let events = s.take_event_loop(Some(interfaces))?;
            Ok((s, events))
        });
    match loaded {
        Ok((socket, events)) => {
            let hook = socket.hook();
            let attempts = socket.hook_attempts();
            tracing::info!(
                hook = hook.map_or("none", |h| h.as_str()),
                ?attempts,
                "socket observation point: hooks chosen"
            );
            metrics.set_socket_hooks(hook, attempts, None);
            (Some(socket), Some(events))
        }
        Err(e) => {
            let error = crate::hooks::socket::error_chain(&e);
            tracing::warn!(error = %error, "socket observation point unavailable; running without it");
            metrics.set_socket_hooks(None, Vec::new(), Some(error));
            (None, None)
        }
    }
}
