//! Kubernetes objects for the fake API server ([`crate::fake_kube`]), built one way for every
//! test: a [`PodBuilder`] for Pods, [`service`] for Services.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Pod, PodIP, PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

static NEXT_UID: AtomicU32 = AtomicU32::new(0);

/// A Pod object being built. It starts scheduled on a node, without containers, labels or
/// addresses, and `Pending`.
#[derive(Debug, Clone)]
pub struct PodBuilder {
    pod: Pod,
}

impl PodBuilder {
    /// Pod `namespace/name` on `node`, with a uid unique in this process.
    pub fn new(namespace: &str, name: &str, node: &str) -> Self {
        Self {
            pod: Pod {
                metadata: ObjectMeta {
                    namespace: Some(namespace.into()),
                    name: Some(name.into()),
                    uid: Some(format!(
                        "uid-{name}-{}",
                        NEXT_UID.fetch_add(1, Ordering::Relaxed)
                    )),
                    ..ObjectMeta::default()
                },
                spec: Some(PodSpec {
                    node_name: Some(node.into()),
                    ..PodSpec::default()
                }),
                status: Some(PodStatus {
                    phase: Some("Pending".into()),
                    ..PodStatus::default()
                }),
            },
        }
    }

    /// Sets the uid.
    pub fn uid(mut self, uid: &str) -> Self {
        self.pod.metadata.uid = Some(uid.into());
        self
    }

    /// Sets the labels (an empty list gives an empty map).
    pub fn labels(mut self, labels: &[(&str, &str)]) -> Self {
        self.pod.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        );
        self
    }

    /// Makes the `apps/v1` controller `kind`/`name` (uid `uid`) its owner.
    pub fn owned_by(mut self, kind: &str, name: &str, uid: &str) -> Self {
        self.pod.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        self
    }

    /// Adds container `name` with one container port, named when `port_name` is given.
    pub fn container(mut self, name: &str, port: i32, port_name: Option<&str>) -> Self {
        if let Some(spec) = self.pod.spec.as_mut() {
            spec.containers.push(Container {
                name: name.into(),
                ports: Some(vec![ContainerPort {
                    container_port: port,
                    name: port_name.map(Into::into),
                    ..ContainerPort::default()
                }]),
                ..Container::default()
            });
        }
        self
    }

    /// Runs it in the node's network namespace.
    pub fn host_network(mut self) -> Self {
        if let Some(spec) = self.pod.spec.as_mut() {
            spec.host_network = Some(true);
        }
        self
    }

    /// `Running` with addresses `ips` (the first is `podIP`).
    pub fn running(mut self, ips: &[IpAddr]) -> Self {
        self.pod.status = Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: ips.first().map(ToString::to_string),
            pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect()),
            ..PodStatus::default()
        });
        self
    }

    /// The Pod.
    pub fn build(self) -> Pod {
        self.pod
    }
}

/// Service `namespace/app` selecting `app=<app>`, whose port 80 (named `port_name`) targets the
/// pods' `target_port`.
pub fn service(namespace: &str, app: &str, port_name: &str, target_port: IntOrString) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(app.into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([("app".into(), app.into())])),
            ports: Some(vec![ServicePort {
                name: Some(port_name.into()),
                port: 80,
                target_port: Some(target_port),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// `svc` renamed `name` (its selector and ports kept).
pub fn renamed(mut svc: Service, name: &str) -> Service {
    svc.metadata.name = Some(name.into());
    svc
}

/// `svc` with the ClusterIPs the API server assigned: `spec.clusterIP` the first,
/// `spec.clusterIPs` all; `["None"]` makes it headless.
pub fn with_cluster_ips(mut svc: Service, ips: &[&str]) -> Service {
    if let Some(spec) = svc.spec.as_mut() {
        spec.type_ = Some("ClusterIP".into());
        spec.cluster_ip = ips.first().map(|ip| (*ip).to_owned());
        spec.cluster_ips = Some(ips.iter().map(|ip| (*ip).to_owned()).collect());
    }
    svc
}

/// `svc` without a selector: it selects no pod (its endpoints are made by hand).
pub fn without_selector(mut svc: Service) -> Service {
    if let Some(spec) = svc.spec.as_mut() {
        spec.selector = None;
    }
    svc
}
