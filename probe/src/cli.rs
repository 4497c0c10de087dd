//! Command-line flags of the probe, shared by `clovisor-probe` and `clovisor all-in-one`.

use std::collections::BTreeSet;
use std::time::Duration;

use clovisor_proto::delivery::DeliveryConfig;
use clovisor_runtime::parse_duration;

use crate::agent::AgentConfig;
use crate::capture::{AttachPolicy, CaptureConfig};
use crate::targets::netns::NetnsTargets;

/// What the probe traces and how.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// Trace this named network namespace (`/run/netns/NAME`) as a pod, through the host end of
    /// its veth; repeatable. Without it, every named network namespace is traced.
    #[arg(long = "netns", value_name = "NAME")]
    pub netns: Vec<String>,
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
    /// How programs are attached to interfaces.
    #[arg(long, env = "CLOVISOR_ATTACH", value_enum, default_value_t = AttachPolicy::Auto)]
    pub attach: AttachPolicy,
}

impl ProbeArgs {
    /// The node name: the flag, else the host name.
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(hostname)
    }

    /// The agent configuration these flags describe.
    pub fn agent_config(&self) -> AgentConfig {
        let node = self.node_name();
        AgentConfig {
            capture: CaptureConfig {
                snaplen: self.snaplen,
                node: node.clone(),
                attach: self.attach,
                ..CaptureConfig::default()
            },
            targets: NetnsTargets {
                names: self.netns.clone(),
                extra_ports: self.ports.iter().copied().collect::<BTreeSet<u16>>(),
                interval: self.scan_interval,
                node,
            },
            delivery: DeliveryConfig::default(),
            record_queue: 16 * 1024,
        }
    }
}

/// This host's name, from the kernel.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
