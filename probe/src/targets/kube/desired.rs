//! From the Kubernetes objects of this node to the pods to trace: which pods are selected and
//! able to be traced, their addresses, workload, the Services selecting them, and the ports
//! they serve with the protocol of each; and the cluster's Service addresses (ClusterIPs).
//! Pure functions of the stores' contents, so a relist gives the same answer.
//!
//! Which Service selects a pod is decided from the Service's `spec.selector` against the
//! pod's labels, as the EndpointSlice controller itself decides it — not from EndpointSlices,
//! which leave out pods that are not ready (a pod failing its readiness probe would change
//! name in the traces while it still answers) and lag behind the pod. A pod selected by
//! several Services is named by the first of them by name; see `docs/kubernetes.md`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use clovisor_proto::capture::v1::ProtocolHint;
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::protocol::port_protocol;
use super::selection::PodSelection;
use crate::targets::reconcile::{PodMeta, ServiceAddresses, ServiceRef};

/// A pod to trace; its veth is still to be found.
#[derive(Debug, Clone, PartialEq)]
pub struct WantedPod {
    /// `namespace/name`.
    pub key: String,
    /// The pod's UID (a recreated pod of the same name is another instance).
    pub uid: String,
    /// Name, namespace and workload.
    pub meta: PodMeta,
    /// Pod IPs.
    pub ips: Vec<IpAddr>,
    /// Served ports and their protocol.
    pub ports: BTreeMap<u16, ProtocolHint>,
}

/// Why a pod of this node is not traced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The selection does not include it.
    NotSelected,
    /// It shares the node's network: no veth of its own to attach to.
    HostNetwork,
    /// Not (or no longer) in phase Running.
    NotRunning,
    /// Running but without an IP yet.
    NoIp,
}

impl Skip {
    /// The reason as shown in logs and the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotSelected => "not selected by clovisor_labels",
            Self::HostNetwork => "host network: no veth of its own",
            Self::NotRunning => "not running",
            Self::NoIp => "no pod IP yet",
        }
    }

    /// Whether it is worth an info line (a lasting decision) rather than a debug one (a pod
    /// on its way up or down).
    pub fn lasting(self) -> bool {
        matches!(self, Self::NotSelected | Self::HostNetwork)
    }
}

/// The outcome for every pod of the node.
#[derive(Debug, Default)]
pub struct Plan {
    /// Pods to trace.
    pub wanted: Vec<WantedPod>,
    /// Pods not traced, by key.
    pub skipped: BTreeMap<String, Skip>,
    /// The ClusterIPs of the cluster's Services.
    pub service_addresses: ServiceAddresses,
}

/// Decides for every pod in `pods` given the `services` of the cluster.
pub fn plan(pods: &[Arc<Pod>], services: &[Arc<Service>], selection: &PodSelection) -> Plan {
    let mut plan = Plan {
        service_addresses: service_addresses(services),
        ..Plan::default()
    };
    for pod in pods {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let key = format!("{namespace}/{name}");
        let empty = BTreeMap::new();
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let skip = if !selection.matches(&namespace, labels) {
            Some(Skip::NotSelected)
        } else if spec.and_then(|s| s.host_network) == Some(true) {
            Some(Skip::HostNetwork)
        } else if status.and_then(|s| s.phase.as_deref()) != Some("Running") {
            Some(Skip::NotRunning)
        } else {
            None
        };
        if let Some(skip) = skip {
            plan.skipped.insert(key, skip);
            continue;
        }
        let ips = pod_ips(pod);
        if ips.is_empty() {
            plan.skipped.insert(key, Skip::NoIp);
            continue;
        }
        let selecting = selecting(&namespace, labels, services);
        plan.wanted.push(WantedPod {
            key,
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            meta: PodMeta {
                workload: workload(pod, &name),
                pod: name,
                services: service_names(&selecting),
                namespace,
            },
            ips,
            ports: ports(pod, &selecting),
        });
    }
    plan
}

/// The Services of `namespace` whose selector selects a pod with `labels`. A Service without
/// a selector (its endpoints made by hand) selects no pod; only its ClusterIP names it.
fn selecting<'a>(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    services: &'a [Arc<Service>],
) -> Vec<&'a Service> {
    services
        .iter()
        .map(|s| &**s)
        .filter(|svc| svc.metadata.namespace.as_deref().unwrap_or_default() == namespace)
        .filter(|svc| {
            svc.spec
                .as_ref()
                .and_then(|spec| spec.selector.as_ref())
                .filter(|sel| !sel.is_empty())
                .is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
        })
        .collect()
}

/// The names of `services`, sorted and without repeats: whatever order the watch cache
/// lists them in, the first is the same.
fn service_names(services: &[&Service]) -> Vec<String> {
    let mut names: Vec<String> = services
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Every Service's ClusterIPs (`spec.clusterIPs`, else `spec.clusterIP`; both families of a
/// dual-stack Service). Headless Services (`None`) and ExternalName ones have none; their
/// clients connect to pod addresses, named by the pods' own metadata. Should two Services
/// claim one address (a delete and a create crossing in the cache), the first by namespace
/// and name keeps it.
pub fn service_addresses(services: &[Arc<Service>]) -> ServiceAddresses {
    let mut out = ServiceAddresses::new();
    for svc in services {
        let (Some(name), Some(spec)) = (svc.metadata.name.as_ref(), svc.spec.as_ref()) else {
            continue;
        };
        let service = ServiceRef {
            namespace: svc.metadata.namespace.clone().unwrap_or_default(),
            name: name.clone(),
        };
        let listed = spec.cluster_ips.iter().flatten();
        let ips = listed
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse::<IpAddr>().ok());
        for ip in ips {
            match out.get(&ip) {
                Some(have) if *have <= service => {}
                _ => {
                    out.insert(ip, service.clone());
                }
            }
        }
    }
    out
}

/// `status.podIPs`, else `status.podIP`; unparseable entries are left out.
fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(
            status
                .pod_ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok()),
        );
    }
    ips
}

/// The controller owning the pod, a ReplicaSet standing for its Deployment; the pod itself
/// when nothing owns it.
fn workload(pod: &Pod, name: &str) -> String {
    let owners = pod.metadata.owner_references.as_deref().unwrap_or_default();
    let Some(owner) = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or(owners.first())
    else {
        return name.to_owned();
    };
    if owner.kind == "ReplicaSet" {
        // A Deployment's ReplicaSet is `<deployment>-<pod-template-hash>`.
        let hash = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"));
        if let Some(deployment) = hash.and_then(|h| {
            owner
                .name
                .strip_suffix(h.as_str())
                .and_then(|n| n.strip_suffix('-'))
        }) {
            return deployment.to_owned();
        }
    }
    owner.name.clone()
}

/// The TCP ports the pod serves: its container ports and the target ports of the services
/// selecting it. A port's protocol comes from the service port targeting it (appProtocol,
/// then Istio naming), else from the container port's own name; unknown stays unspecified.
fn ports(pod: &Pod, selecting: &[&Service]) -> BTreeMap<u16, ProtocolHint> {
    let container_ports: Vec<(u16, Option<&str>)> = pod
        .spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| traced_transport(p.protocol.as_deref()))
        .filter_map(|p| Some((u16::try_from(p.container_port).ok()?, p.name.as_deref())))
        .collect();
    let mut out: BTreeMap<u16, Option<ProtocolHint>> = container_ports
        .iter()
        .map(|(port, name)| (*port, port_protocol(*name, None)))
        .collect();
    for svc in selecting {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        for sp in spec.ports.iter().flatten() {
            if !traced_transport(sp.protocol.as_deref()) {
                continue;
            }
            let Some(port) = target_port(sp, &container_ports) else {
                continue;
            };
            let hint = port_protocol(sp.name.as_deref(), sp.app_protocol.as_deref());
            let entry = out.entry(port).or_insert(None);
            if hint.is_some() {
                *entry = hint;
            }
        }
    }
    out.into_iter()
        .map(|(port, hint)| (port, hint.unwrap_or(ProtocolHint::Unspecified)))
        .collect()
}

/// The pod port a service port sends to: a number, a container port's name, or (unset)
/// the service port itself.
/// Whether a port of this protocol (Kubernetes spells it `TCP`, `UDP` or `SCTP`; absent means
/// TCP) is traced: TCP and UDP are (a traced port number is traced for both; the tc programs
/// send UDP datagrams one by one), SCTP is not.
fn traced_transport(protocol: Option<&str>) -> bool {
    matches!(protocol.unwrap_or("TCP"), "TCP" | "UDP")
}

fn target_port(sp: &ServicePort, container_ports: &[(u16, Option<&str>)]) -> Option<u16> {
    match &sp.target_port {
        None => u16::try_from(sp.port).ok(),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(name)) => container_ports
            .iter()
            .find(|(_, n)| *n == Some(name.as_str()))
            .map(|(p, _)| *p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodIP, PodSpec, PodStatus, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)], ports: &[(i32, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "main".into(),
                    ports: Some(
                        ports
                            .iter()
                            .map(|(p, n)| ContainerPort {
                                container_port: *p,
                                name: (!n.is_empty()).then(|| (*n).to_owned()),
                                ..ContainerPort::default()
                            })
                            .collect(),
                    ),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some("10.1.0.5".into()),
                pod_ips: Some(vec![
                    PodIP {
                        ip: "10.1.0.5".into(),
                    },
                    PodIP {
                        ip: "fd00::5".into(),
                    },
                ]),
                ..PodStatus::default()
            }),
        }
    }

    fn service(ns: &str, selector: &[(&str, &str)], ports: &[(&str, i32, IntOrString)]) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some("svc".into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(
                    selector
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                ),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p, t)| ServicePort {
                            name: Some((*n).into()),
                            port: *p,
                            target_port: Some(t.clone()),
                            ..ServicePort::default()
                        })
                        .collect(),
                ),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    fn one(p: Pod, svcs: Vec<Service>) -> Plan {
        let svcs: Vec<Arc<Service>> = svcs.into_iter().map(Arc::new).collect();
        plan(&[Arc::new(p)], &svcs, &PodSelection::default())
    }

    #[test]
    fn a_service_port_name_gives_the_protocol_of_the_container_port() {
        let p = pod(
            "default",
            "web",
            &[("app", "web")],
            &[(8080, "web"), (9090, "")],
        );
        let s = service(
            "default",
            &[("app", "web")],
            &[
                ("http-main", 80, IntOrString::String("web".into())),
                ("grpc", 90, IntOrString::Int(9090)),
            ],
        );
        let plan = one(p, vec![s]);
        assert_eq!(plan.wanted.len(), 1, "one pod wanted: {plan:?}");
        let w = &plan.wanted[0];
        assert_eq!(
            w.ports,
            BTreeMap::from([(8080, ProtocolHint::Http), (9090, ProtocolHint::Grpc)]),
            "ports"
        );
        assert_eq!(w.ips.len(), 2, "both pod IPs");
        assert_eq!(w.key, "default/web");
    }

    #[test]
    fn services_of_other_namespaces_or_selectors_do_not_apply() {
        let p = pod("default", "web", &[("app", "web")], &[(8080, "")]);
        let other_ns = service(
            "shop",
            &[("app", "web")],
            &[("http", 80, IntOrString::Int(8080))],
        );
        let other_sel = service(
            "default",
            &[("app", "db")],
            &[("http", 80, IntOrString::Int(8080))],
        );
        let plan = one(p, vec![other_ns, other_sel]);
        assert_eq!(
            plan.wanted[0].ports,
            BTreeMap::from([(8080, ProtocolHint::Unspecified)]),
            "no service applies: the unnamed container port stays unspecified"
        );
    }

    #[test]
    fn udp_ports_are_traced_and_sctp_ports_are_not() {
        let mut p = pod(
            "default",
            "coredns",
            &[("k8s-app", "kube-dns")],
            &[
                (53, "dns"),
                (53, "dns-tcp"),
                (9153, "metrics"),
                (3868, "diameter"),
            ],
        );
        if let Some(ports) = p
            .spec
            .as_mut()
            .and_then(|s| s.containers.first_mut())
            .and_then(|c| c.ports.as_mut())
        {
            ports[0].protocol = Some("UDP".into());
            ports[3].protocol = Some("SCTP".into());
        }
        assert_eq!(
            one(p, vec![]).wanted[0]
                .ports
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            [53, 9153],
            "DNS on UDP 53 (and TCP 53) traced, the SCTP port not"
        );
    }

    #[test]
    fn a_service_target_port_not_declared_by_a_container_is_traced() {
        let p = pod("default", "web", &[("app", "web")], &[]);
        let s = service(
            "default",
            &[("app", "web")],
            &[("redis", 6379, IntOrString::Int(6379))],
        );
        assert_eq!(
            one(p, vec![s]).wanted[0].ports,
            BTreeMap::from([(6379, ProtocolHint::Redis)])
        );
    }

    #[test]
    fn unselected_host_network_pending_and_ipless_pods_are_skipped() {
        let other = pod("kube-system", "dns", &[], &[]);
        let mut host = pod("default", "agent", &[], &[]);
        if let Some(s) = host.spec.as_mut() {
            s.host_network = Some(true);
        }
        let mut pending = pod("default", "new", &[], &[]);
        if let Some(s) = pending.status.as_mut() {
            s.phase = Some("Pending".into());
        }
        let mut ipless = pod("default", "noip", &[], &[]);
        if let Some(s) = ipless.status.as_mut() {
            s.pod_ip = None;
            s.pod_ips = None;
        }
        let pods: Vec<Arc<Pod>> = [other, host, pending, ipless]
            .into_iter()
            .map(Arc::new)
            .collect();
        let plan = plan(&pods, &[], &PodSelection::default());
        assert!(plan.wanted.is_empty(), "nothing traced: {plan:?}");
        assert_eq!(
            plan.skipped,
            BTreeMap::from([
                ("kube-system/dns".to_owned(), Skip::NotSelected),
                ("default/agent".to_owned(), Skip::HostNetwork),
                ("default/new".to_owned(), Skip::NotRunning),
                ("default/noip".to_owned(), Skip::NoIp),
            ])
        );
    }

    fn named(mut svc: Service, name: &str, cluster_ips: &[&str]) -> Service {
        svc.metadata.name = Some(name.into());
        if let Some(spec) = svc.spec.as_mut() {
            spec.cluster_ip = cluster_ips.first().map(|ip| (*ip).to_owned());
            spec.cluster_ips = (!cluster_ips.is_empty())
                .then(|| cluster_ips.iter().map(|ip| (*ip).to_owned()).collect());
        }
        svc
    }

    fn addr(ip: &str) -> IpAddr {
        ip.parse()
            .unwrap_or_else(|e| panic!("test address {ip}: {e}"))
    }

    fn svc_ref(namespace: &str, name: &str) -> ServiceRef {
        ServiceRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_pod_in_two_services_is_named_by_the_first_by_name_in_any_order() {
        let p = || {
            pod(
                "default",
                "web-1",
                &[("app", "web"), ("tier", "front")],
                &[],
            )
        };
        let http = || vec![("http", 80, IntOrString::Int(8080))];
        let web = named(service("default", &[("app", "web")], &http()), "web", &[]);
        let front = named(
            service("default", &[("tier", "front")], &http()),
            "frontend",
            &[],
        );
        let elsewhere = named(service("other", &[("app", "web")], &http()), "aaa", &[]);
        let unselected = named(service("default", &[("app", "db")], &http()), "db", &[]);
        for order in [
            vec![
                web.clone(),
                front.clone(),
                elsewhere.clone(),
                unselected.clone(),
            ],
            vec![unselected, elsewhere, front, web],
        ] {
            let plan = one(p(), order);
            assert_eq!(
                plan.wanted[0].meta.services,
                ["frontend", "web"],
                "the selecting Services of the pod's namespace, sorted: {plan:?}"
            );
        }
    }

    #[test]
    fn a_deleted_service_no_longer_names_the_pod_nor_its_address() {
        let p = || pod("default", "web-1", &[("app", "web")], &[]);
        let web = named(
            service("default", &[("app", "web")], &[]),
            "web",
            &["10.96.0.10"],
        );
        let before = one(p(), vec![web]);
        assert_eq!(before.wanted[0].meta.services, ["web"]);
        assert_eq!(
            before.service_addresses,
            ServiceAddresses::from([(addr("10.96.0.10"), svc_ref("default", "web"))])
        );
        let after = one(p(), vec![]);
        assert!(
            after.wanted[0].meta.services.is_empty() && after.service_addresses.is_empty(),
            "nothing left of the Service: {after:?}"
        );
        assert_eq!(after.wanted[0].meta.workload, "web-1", "the workload stays");
    }

    #[test]
    fn service_addresses_are_every_cluster_ip_and_headless_services_have_none() {
        let selector = [("app", "x")];
        let services: Vec<Arc<Service>> = [
            named(
                service("default", &selector, &[]),
                "dual",
                &["10.96.0.20", "fd00:96::20"],
            ),
            named(service("default", &selector, &[]), "headless", &["None"]),
            named(service("default", &selector, &[]), "external", &[]),
            // Hand-made endpoints: it selects no pod, but its address still names it.
            named(service("db", &[], &[]), "legacy", &["10.96.0.30"]),
            // Two Services on one address (a delete and a create crossing): the first wins.
            named(service("default", &selector, &[]), "zeta", &["10.96.0.40"]),
            named(service("default", &selector, &[]), "alpha", &["10.96.0.40"]),
        ]
        .into_iter()
        .map(Arc::new)
        .collect();
        assert_eq!(
            service_addresses(&services),
            ServiceAddresses::from([
                (addr("10.96.0.20"), svc_ref("default", "dual")),
                (addr("fd00:96::20"), svc_ref("default", "dual")),
                (addr("10.96.0.30"), svc_ref("db", "legacy")),
                (addr("10.96.0.40"), svc_ref("default", "alpha")),
            ])
        );
        // The headless Service still names the pods it selects.
        let plan = plan(
            &[Arc::new(pod("default", "x-0", &[("app", "x")], &[]))],
            &services,
            &PodSelection::default(),
        );
        assert_eq!(
            plan.wanted[0].meta.services,
            ["alpha", "dual", "external", "headless", "zeta"],
            "every selecting Service, headless included; not the selector-less one"
        );
    }

    #[test]
    fn the_workload_is_the_deployment_behind_a_replica_set() {
        let owner = |kind: &str, name: &str| OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: None,
        };
        let mut p = pod(
            "default",
            "web-7d4b9c-x2x",
            &[("pod-template-hash", "7d4b9c")],
            &[],
        );
        p.metadata.owner_references = Some(vec![owner("ReplicaSet", "web-7d4b9c")]);
        assert_eq!(workload(&p, "web-7d4b9c-x2x"), "web", "deployment name");
        p.metadata.owner_references = Some(vec![owner("StatefulSet", "db")]);
        assert_eq!(workload(&p, "db-0"), "db", "statefulset name");
        p.metadata.owner_references = Some(vec![owner("ReplicaSet", "bare-rs")]);
        assert_eq!(workload(&p, "bare-rs-abc"), "bare-rs", "a bare replica set");
        p.metadata.owner_references = None;
        assert_eq!(workload(&p, "solo"), "solo", "no owner: the pod itself");
    }
}
