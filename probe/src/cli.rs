//! Command-line flags of the probe, shared by `clovisor-probe` and `clovisor all-in-one`.

use std::collections::BTreeSet;
use std::time::Duration;

use clovisor_runtime::parse_duration;

use crate::agent::{AgentConfig, TargetSource};
use crate::capture::{AttachPolicy, CaptureConfig, SocketPayload};
use crate::hooks::node_iface::NodeInterfaces;
use crate::hooks::socket::{SocketHookPolicy, VethPayload};
use crate::targets::kube::{KubeTargets, PodSelection};
use crate::targets::netns::NetnsTargets;

/// Where the pods to trace come from (`--targets`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    /// The pods of this node, watched through the Kubernetes API (in-cluster service account
    /// or `KUBECONFIG`).
    Kubernetes,
    /// Named network namespaces (`/run/netns/*`) of this host.
    Netns,
}

/// Set by the kubelet in every container: the probe runs in a cluster.
pub const ENV_KUBERNETES_SERVICE_HOST: &str = "KUBERNETES_SERVICE_HOST";

/// What the probe traces and how.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// Trace this named network namespace (`/run/netns/NAME`) as a pod, through the host end of
    /// its veth; repeatable. Without it, every named network namespace is traced.
    #[arg(long = "netns", value_name = "NAME")]
    pub netns: Vec<String>,
    /// Where the pods to trace come from. Default: `kubernetes` inside a cluster
    /// (`KUBERNETES_SERVICE_HOST` set) unless `--netns` is given, else `netns`.
    #[arg(long, env = "CLOVISOR_TARGETS", value_enum)]
    pub targets: Option<TargetKind>,
    /// With `--targets kubernetes`: how often pods whose host veth was not found (or whose
    /// attach failed) are tried again, and the desired state recomputed without a change.
    #[arg(long, env = "CLOVISOR_KUBE_RETRY", default_value = "5s", value_parser = parse_duration)]
    pub kube_retry: Duration,
    /// Also trace this TCP port (the ports listening inside traced namespaces are found and
    /// followed automatically); repeatable.
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Bytes of each message copied from the kernel (the start of a request or response),
    /// 1 to 2048.
    #[arg(long, env = "CLOVISOR_SNAPLEN", default_value_t = CaptureConfig::default().snaplen)]
    pub snaplen: u32,
    /// Node name reported with every record (default: the host name).
    #[arg(long, env = "NODE_NAME")]
    pub node: Option<String>,
    /// How often namespaces and their listening ports are re-read.
    #[arg(long, env = "CLOVISOR_SCAN_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub scan_interval: Duration,
    /// Size of the kernel → user ring buffer in bytes: a power of two, at least one page (so
    /// a multiple of the page size). Smaller loses events under bursts (counted in
    /// `clovisor_dropped_total{stage="ring_buffer"}`).
    #[arg(
        long,
        env = "CLOVISOR_RING_BUFFER_BYTES",
        default_value_t = CaptureConfig::default().ring_buffer_bytes,
        value_parser = parse_ring_buffer_bytes
    )]
    pub ring_buffer_bytes: u32,
    /// Requests whose first bytes the kernel holds at once (per capture object) until their
    /// response starts, so that the pair travels as one record; beyond that a request is sent
    /// alone (`clovisor_probe_kernel_total{counter="head_not_held"}`). Each costs 2.2 KiB of
    /// kernel memory.
    #[arg(
        long,
        env = "CLOVISOR_HELD_REQUESTS",
        default_value_t = CaptureConfig::default().held_requests,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub held_requests: u32,
    /// Records queued between the ring buffer reader and the uplink; beyond it records are
    /// dropped and counted (`clovisor_dropped_total{stage="probe_queue"}`), never waited for.
    #[arg(
        long,
        env = "CLOVISOR_RECORD_QUEUE",
        default_value_t = DEFAULT_RECORD_QUEUE,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub record_queue: u32,
    /// The socket observation point: `auto` attaches the best hook set the kernel offers
    /// (fentry, kprobes, then BTF tracepoints) and runs on without it if none loads; `off`
    /// disables it.
    #[arg(long, env = "CLOVISOR_SOCKET_HOOKS", value_enum, default_value_t = SocketHookPolicy::Auto)]
    pub socket_hooks: SocketHookPolicy,
    /// What a pod veth captures where the socket point covers its pod: `uncovered` (payload
    /// only where the socket point does not cover the pod; covered veths send timings and
    /// counters alone) or `always` (payload everywhere: every exchange decoded twice).
    #[arg(long, env = "CLOVISOR_VETH_PAYLOAD", value_enum, default_value_t = VethPayload::Uncovered)]
    pub veth_payload: VethPayload,
    /// What a server's socket captures where its client is a socket traced on this node too (a
    /// client and a server pod on one node, no NAT between them): `uncovered` (plain HTTP/1.x:
    /// timings and counters alone, the client's socket carrying the bytes) or `always` (payload
    /// at both ends: each such exchange decoded twice).
    #[arg(long, env = "CLOVISOR_SOCKET_PAYLOAD", value_enum, default_value_t = SocketPayload::Uncovered)]
    pub socket_payload: SocketPayload,
    /// How programs are attached to interfaces.
    #[arg(long, env = "CLOVISOR_ATTACH", value_enum, default_value_t = AttachPolicy::Auto)]
    pub attach: AttachPolicy,
    /// Trace monitored pods' traffic on this node interface (an uplink); repeatable. Overrides
    /// `--node-interfaces`.
    #[arg(long = "node-interface", value_name = "IF")]
    pub node_interface: Vec<String>,
    /// Node interfaces to trace when no `--node-interface` is given: `auto` (those carrying
    /// routes off the node: default routes and routes through a gateway, pod veths excluded)
    /// or `none`.
    #[arg(
        long = "node-interfaces",
        env = "CLOVISOR_NODE_INTERFACES",
        value_enum,
        default_value_t = NodeInterfacesMode::Auto
    )]
    pub node_interfaces: NodeInterfacesMode,
}

/// Values of `--node-interfaces`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum NodeInterfacesMode {
    /// The interfaces carrying routes off the node.
    #[default]
    Auto,
    /// No node interfaces.
    None,
}

impl ProbeArgs {
    /// The node name: the flag, else the host name.
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(hostname)
    }

    /// The node interfaces these flags ask for.
    pub fn node_interfaces(&self) -> NodeInterfaces {
        if !self.node_interface.is_empty() {
            return NodeInterfaces::Named(self.node_interface.clone());
        }
        match self.node_interfaces {
            NodeInterfacesMode::Auto => NodeInterfaces::Auto,
            NodeInterfacesMode::None => NodeInterfaces::None,
        }
    }

    /// The target source: the flag, else by where the probe runs.
    pub fn target_kind(&self) -> TargetKind {
        default_target_kind(
            self.targets,
            !self.netns.is_empty(),
            std::env::var_os(ENV_KUBERNETES_SERVICE_HOST).is_some_and(|h| !h.is_empty()),
        )
    }

    /// The agent configuration these flags describe. The Kubernetes pod selection starts as
    /// the default (namespace `default`); a live config source replaces the receiver.
    pub fn agent_config(&self) -> AgentConfig {
        let node = self.node_name();
        let extra_ports = self.ports.iter().copied().collect::<BTreeSet<u16>>();
        let health = crate::agent::ProbeHealth::default();
        let targets = match self.target_kind() {
            TargetKind::Netns => TargetSource::Netns(NetnsTargets {
                names: self.netns.clone(),
                extra_ports: extra_ports.clone(),
                interval: self.scan_interval,
                node: node.clone(),
            }),
            TargetKind::Kubernetes => TargetSource::Kubernetes(KubeTargets {
                node: node.clone(),
                selection: tokio::sync::watch::channel(PodSelection::default()).1,
                resync: self.kube_retry,
                watch_ready: health.kube_watch.clone(),
            }),
        };
        AgentConfig {
            capture: CaptureConfig {
                snaplen: self.snaplen,
                ring_buffer_bytes: self.ring_buffer_bytes,
                held_requests: self.held_requests,
                node: node.clone(),
                attach: self.attach,
                socket_payload: self.socket_payload,
                ..CaptureConfig::default()
            },
            targets,
            node,
            extra_ports,
            node_interfaces: self.node_interfaces(),
            socket_hooks: self.socket_hooks,
            veth_payload: self.veth_payload,
            delivery: crate::uplink::delivery_config(),
            record_queue: usize::try_from(self.record_queue).unwrap_or(usize::MAX),
            health,
            collector_token_file: None,
        }
    }
}

fn default_target_kind(
    flag: Option<TargetKind>,
    netns_named: bool,
    in_cluster: bool,
) -> TargetKind {
    match flag {
        Some(kind) => kind,
        None if in_cluster && !netns_named => TargetKind::Kubernetes,
        None => TargetKind::Netns,
    }
}

/// Default of `--record-queue`.
pub const DEFAULT_RECORD_QUEUE: u32 = 16 * 1024;

/// The page size the kernel sizes ring buffers in.
fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .filter(|p| *p > 0)
        .unwrap_or(4096)
}

/// Parses `--ring-buffer-bytes`: the kernel takes only a power of two that is a multiple of
/// the page size.
fn parse_ring_buffer_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a byte count: {e}"))?;
    check_ring_buffer_bytes(n, page_size())
}

fn check_ring_buffer_bytes(n: u32, page: u64) -> Result<u32, String> {
    if !n.is_power_of_two() || u64::from(n) < page || u64::from(n) % page != 0 {
        return Err(format!(
            "{n} must be a power of two and a multiple of the page size ({page} bytes)"
        ));
    }
    Ok(n)
}

/// This host's name, from the kernel.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        probe: ProbeArgs,
    }

    #[test]
    fn kubernetes_is_the_default_in_a_cluster_unless_namespaces_are_named() {
        use TargetKind::*;
        assert_eq!(
            default_target_kind(None, false, true),
            Kubernetes,
            "in a cluster"
        );
        assert_eq!(
            default_target_kind(None, true, true),
            Netns,
            "--netns given"
        );
        assert_eq!(
            default_target_kind(None, false, false),
            Netns,
            "on a plain host"
        );
        assert_eq!(
            default_target_kind(Some(Kubernetes), false, false),
            Kubernetes,
            "flag wins"
        );
        assert_eq!(
            default_target_kind(Some(Netns), false, true),
            Netns,
            "flag wins"
        );
        let cli = Cli::try_parse_from(["probe", "--targets", "kubernetes", "--kube-retry", "2s"])
            .expect("valid flags");
        assert_eq!(cli.probe.target_kind(), Kubernetes, "--targets kubernetes");
        assert!(
            Cli::try_parse_from(["probe", "--targets", "k8s"]).is_err(),
            "unknown source rejected"
        );
    }

    #[test]
    fn node_interface_flags() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["probe"];
            argv.extend(args);
            Cli::try_parse_from(&argv)
                .map(|c| c.probe.node_interfaces())
                .map_err(|e| e.to_string())
        };
        assert_eq!(parse(&[]), Ok(NodeInterfaces::Auto), "auto by default");
        assert_eq!(
            parse(&["--node-interfaces", "none"]),
            Ok(NodeInterfaces::None)
        );
        assert_eq!(
            parse(&["--node-interface", "eth0", "--node-interface", "eth1"]),
            Ok(NodeInterfaces::Named(vec!["eth0".into(), "eth1".into()])),
            "named interfaces win"
        );
        assert!(parse(&["--node-interfaces", "some"]).is_err());
    }

    #[test]
    fn ring_buffer_size_must_be_a_page_multiple_power_of_two() {
        assert_eq!(check_ring_buffer_bytes(4096, 4096), Ok(4096));
        assert_eq!(check_ring_buffer_bytes(1 << 22, 4096), Ok(1 << 22));
        for (n, page) in [(0, 4096), (1024, 4096), (3 * 4096, 4096), (4096, 16384)] {
            assert!(
                check_ring_buffer_bytes(n, page).is_err(),
                "{n} bytes with {page}-byte pages must be rejected"
            );
        }
    }

    #[test]
    fn ring_buffer_and_queue_flags_reach_the_agent_config() {
        let cli = Cli::try_parse_from([
            "probe",
            "--ring-buffer-bytes",
            "8192",
            "--record-queue",
            "8",
        ])
        .expect("valid flags");
        let cfg = cli.probe.agent_config();
        assert_eq!(
            (cfg.capture.ring_buffer_bytes, cfg.record_queue),
            (8192, 8),
            "(ring buffer bytes, record queue)"
        );
        for bad in [["--ring-buffer-bytes", "5000"], ["--record-queue", "0"]] {
            let mut argv = vec!["probe"];
            argv.extend(bad);
            assert!(
                Cli::try_parse_from(&argv).is_err(),
                "{bad:?} must be rejected"
            );
        }
    }

    #[test]
    fn socket_hooks_flag_reaches_the_agent_config() {
        let default = Cli::try_parse_from(["probe"]).expect("no flags");
        assert_eq!(
            default.probe.agent_config().socket_hooks,
            SocketHookPolicy::Auto,
            "the socket point is on by default"
        );
        let off = Cli::try_parse_from(["probe", "--socket-hooks", "off"]).expect("valid flag");
        assert_eq!(
            off.probe.agent_config().socket_hooks,
            SocketHookPolicy::Off,
            "--socket-hooks off"
        );
        assert!(
            Cli::try_parse_from(["probe", "--socket-hooks", "fentry"]).is_err(),
            "only auto and off are accepted"
        );
    }
}
