//! Follows the pods of this node through the Kubernetes API: a watch (list, then watch from
//! its resource version, relisting when the server says the version is gone) of the Pods
//! scheduled here (`spec.nodeName=<node>`) and of the Services (their port names and
//! `appProtocol` say what a port speaks, their selectors which pods they name, their
//! ClusterIPs which addresses stand for them). Each change recomputes the whole desired set from
//! the watch caches and hands it to the [`Reconciler`], so a reconnect or relist can neither
//! lose nor duplicate an attachment. A selected pod is traced once it is Running with an IP
//! and its host veth is found ([`crate::discovery::host_veths_of_pods`]).

pub mod desired;
pub mod protocol;
pub mod selection;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;

use self::desired::{Plan, Skip, WantedPod};
pub use self::selection::{PodSelection, PodSelector};
use super::reconcile::{Desired, Reconciler, Target};
use crate::capture::Capture;
use crate::discovery::{host_veths_of_pods, FoundPod, HostVeth};
use crate::metrics::ProbeMetrics;

/// What to follow.
#[derive(Debug, Clone)]
pub struct KubeTargets {
    /// This node's name (the downward API's `spec.nodeName`).
    pub node: String,
    /// Which pods to trace; changes apply at once.
    pub selection: watch::Receiver<PodSelection>,
    /// How often the desired set is recomputed without a change (retrying pods whose veth
    /// was not found or whose attach failed).
    pub resync: Duration,
    /// Up while pods and services are listed and their watches stream without error (the
    /// probe's `/readyz` check `kubernetes_watch`).
    pub watch_ready: clovisor_runtime::health::Flag,
}

/// Changes arriving together are applied together, at most this often.
const SETTLE: Duration = Duration::from_millis(200);

/// The watched resources, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Pods,
    Services,
}

impl Resource {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pods => "pods",
            Self::Services => "services",
        }
    }
}

/// A watch of `api` kept in `cache`, with backoff on errors; yields for each event whether it
/// completed a (re)list, or the error.
fn cached_watch<K>(
    resource: Resource,
    api: Api<K>,
    config: watcher::Config,
    cache: reflector::store::Writer<K>,
) -> impl futures::Stream<Item = (Resource, Result<bool, watcher::Error>)>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    reflector::reflector(cache, watcher(api, config))
        .default_backoff()
        .map(move |e| (resource, e.map(|e| matches!(e, watcher::Event::InitDone))))
}

/// Keeps `reconciler` in step with the pods of `targets.node` until `shutdown` resolves, then
/// detaches everything and gives the capture back.
pub async fn follow(
    mut targets: KubeTargets,
    client: Client,
    mut reconciler: Reconciler,
    metrics: Arc<ProbeMetrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Capture {
    tokio::pin!(shutdown);
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (services, services_writer) = reflector::store::<Service>();
    let on_node = watcher::Config::default().fields(&format!("spec.nodeName={}", targets.node));
    let pod_events = cached_watch(
        Resource::Pods,
        Api::<Pod>::all(client.clone()),
        on_node,
        pods_writer,
    );
    let service_events = cached_watch(
        Resource::Services,
        Api::<Service>::all(client),
        watcher::Config::default(),
        services_writer,
    );
    let mut events = std::pin::pin!(futures::stream::select(pod_events, service_events));

    let mut follower = Follower::default();
    let mut listed = (false, false);
    let mut selection_open = true;
    let mut dirty = true;
    let mut last_full = Instant::now();
    let mut last_refresh = Instant::now();
    let mut tick = tokio::time::interval(SETTLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(node = %targets.node, "watching the pods of this node and the services");
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            event = events.next() => match event {
                Some((resource, Ok(init_done))) => {
                    if init_done {
                        tracing::info!(resource = resource.as_str(), "listed");
                        match resource {
                            Resource::Pods => listed.0 = true,
                            Resource::Services => listed.1 = true,
                        }
                    }
                    targets.watch_ready.set(listed == (true, true));
                    dirty = true;
                }
                Some((resource, Err(e))) => {
                    // The watcher retries after a backoff: from its resource version after a
                    // disconnect, with a fresh list when the server answers 410 Gone. Not
                    // ready until an event comes through again.
                    tracing::warn!(resource = resource.as_str(), error = %e, "watch failed; retrying");
                    metrics.kube_watch_error(resource.as_str());
                    targets.watch_ready.set(false);
                }
                None => {
                    // The watchers retry forever; should their streams end anyway, the probe
                    // stops (the agent sees the follower end) instead of tracing a frozen set.
                    tracing::error!("the Kubernetes watch streams ended");
                    targets.watch_ready.set(false);
                    break;
                }
            },
            changed = targets.selection.changed(), if selection_open => match changed {
                Ok(()) => {
                    tracing::info!(selection = ?*targets.selection.borrow(), "pod selection changed");
                    dirty = true;
                }
                // The config source is gone; its last selection stays.
                Err(_) => selection_open = false,
            },
            _ = reconciler.live_changed() => reconciler.apply_live(),
            _ = tick.tick() => {
                // Nothing is decided before both lists are in: a half picture would detach pods.
                if listed != (true, true) {
                    continue;
                }
                if dirty || last_full.elapsed() >= targets.resync {
                    let selection = targets.selection.borrow_and_update().clone();
                    follower
                        .reconcile(&pods, &services, &selection, &mut reconciler, targets.resync)
                        .await;
                    dirty = false;
                    last_full = Instant::now();
                }
                // A restarted collector has forgotten pod metadata: repeat it now and then.
                if last_refresh.elapsed() >= super::netns::ENDPOINT_REFRESH {
                    last_refresh = Instant::now();
                    reconciler.refresh_endpoints().await;
                }
            }
        }
    }
    reconciler.finish()
}

/// What the follower remembers between reconciliations.
#[derive(Debug, Default)]
struct Follower {
    /// Pods whose veth was not found, and when it was last looked for.
    unresolved: BTreeMap<String, Instant>,
    /// Skipped pods as last logged, to log a decision once.
    skipped: BTreeMap<String, Skip>,
}

impl Follower {
    async fn reconcile(
        &mut self,
        pods: &Store<Pod>,
        services: &Store<Service>,
        selection: &PodSelection,
        reconciler: &mut Reconciler,
        retry: Duration,
    ) {
        let Plan {
            wanted,
            skipped,
            service_addresses,
        } = desired::plan(&pods.state(), &services.state(), selection);
        self.log_skips(&skipped);
        // Before any pod is attached: a client's first connection to a ClusterIP is named.
        reconciler.apply_service_addresses(service_addresses).await;
        let wanted_keys: BTreeSet<String> = wanted.iter().map(|w| w.key.clone()).collect();
        let mut desired = Desired::new();
        let mut lookups = Vec::new();
        for want in wanted {
            // Same instance, same addresses: its veth is the one already attached.
            let known = reconciler
                .current()
                .get(&want.key)
                .filter(|t| t.instance == want.uid && t.ips == want.ips)
                .map(|t| (t.veth.clone(), t.netns_inode));
            match known {
                Some((veth, netns_inode)) => {
                    desired.insert(want.key.clone(), target(want, veth, netns_inode));
                }
                None if self
                    .unresolved
                    .get(&want.key)
                    .is_some_and(|at| at.elapsed() < retry) => {}
                None => lookups.push(want),
            }
        }
        if !lookups.is_empty() {
            // One pass over the node's namespaces for all of them.
            let found = tokio::task::spawn_blocking(move || {
                let ips: Vec<Vec<IpAddr>> = lookups.iter().map(|w| w.ips.clone()).collect();
                host_veths_of_pods(&ips)
                    .into_iter()
                    .zip(lookups)
                    .collect::<Vec<_>>()
            })
            .await;
            match found {
                Ok(found) => {
                    for (result, want) in found {
                        self.found(result, want, &mut desired);
                    }
                }
                Err(e) => tracing::error!(error = %e, "veth lookup task failed"),
            }
        }
        // Forget lookups of pods that are gone or no longer wanted.
        self.unresolved.retain(|k, _| wanted_keys.contains(k));
        let skipped = skipped
            .into_iter()
            .map(|(k, s)| (k, s.as_str().to_owned()))
            .collect();
        reconciler.apply(desired, skipped).await;
    }

    fn found(&mut self, result: crate::Result<FoundPod>, want: WantedPod, desired: &mut Desired) {
        match result {
            Ok(found) => {
                tracing::info!(pod = %want.key, interface = %found.veth.name, method = %found.method, netns_inode = ?found.netns_inode, "found the pod's host veth");
                self.unresolved.remove(&want.key);
                desired.insert(
                    want.key.clone(),
                    target(want, found.veth, found.netns_inode),
                );
            }
            Err(e) => {
                if self
                    .unresolved
                    .insert(want.key.clone(), Instant::now())
                    .is_none()
                {
                    tracing::warn!(pod = %want.key, ips = ?want.ips, error = %e, "cannot find the pod's host veth; retrying");
                }
            }
        }
    }

    fn log_skips(&mut self, skipped: &BTreeMap<String, Skip>) {
        for (key, skip) in skipped {
            if self.skipped.get(key) == Some(skip) {
                continue;
            }
            if skip.lasting() {
                tracing::info!(pod = %key, reason = skip.as_str(), "pod not traced");
            } else {
                tracing::debug!(pod = %key, reason = skip.as_str(), "pod not traced yet");
            }
        }
        self.skipped.clone_from(skipped);
    }
}

fn target(want: WantedPod, veth: HostVeth, netns_inode: Option<u32>) -> Target {
    Target {
        instance: want.uid,
        meta: want.meta,
        veth,
        netns_inode,
        ips: want.ips,
        ports: want.ports,
    }
}
