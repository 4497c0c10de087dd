//! Fixtures for the privileged end-to-end tests in `tests/`: "pods" are network namespaces wired
//! to a host bridge through veth pairs, as a bridge CNI would do it; servers and clients are real
//! Debian programs (nginx, curl). Everything a fixture creates is removed when it is dropped, also
//! when the test fails; names are unique per process and fixture so tests can run in parallel.
//! Traffic only ever goes to addresses inside namespaces a fixture created.
//!
//! Beside the lab: [`http_client`] (curl in a pod, GETs from the host), [`api`] (REST sessions
//! and metrics of a running clovisor), [`databases`] (Redis and PostgreSQL servers in a pod,
//! their clients in another), [`line_proto`] (the example analyzer's protocol: server and
//! client), [`fixtures`] (Kubernetes objects for [`fake_kube`]) and [`capture`] (the probe's
//! capture driven directly).

pub mod api;
pub mod capture;
pub mod databases;
pub mod decode;
pub mod dns;
pub mod dumpcap;
pub mod fake_kube;
pub mod fixtures;
pub mod http_client;
pub mod kafka;
pub mod line_proto;
pub mod tls;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use http_client::{http_get, Curl};

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Fails unless the tests run as root: they load BPF programs and create network namespaces
/// (a privileged test that skips silently would be no test).
pub fn require_root() -> Result<()> {
    let out = run("id", &["-u"])?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        bail!("this test loads BPF programs and creates network namespaces: run it as root");
    }
    Ok(())
}

/// Runs `args` inside network namespace `netns`.
pub fn run_in(netns: &str, args: &[&str]) -> Result<Output> {
    let mut full = vec!["netns", "exec", netns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// A pod: a network namespace whose `eth0` is one end of a veth pair on the lab bridge.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Network namespace name (also the pod's name in all-in-one mode).
    pub netns: String,
    /// Host-side end of the pod's veth.
    pub host_veth: String,
    /// The pod's IPv4 address.
    pub ipv4: Ipv4Addr,
    /// The pod's IPv6 address.
    pub ipv6: Ipv6Addr,
}

/// A host outside the node: a namespace behind the node's "uplink" veth, reached through the
/// host's routing table (pods route to it through the lab bridge as their gateway).
#[derive(Debug, Clone)]
pub struct OutsideHost {
    /// The host as a pod-like handle (namespace, address) for servers such as [`Nginx`].
    pub host: Pod,
    /// The node-side end of the uplink veth: pass it as the probe's node interface.
    pub uplink: String,
}

/// Creates the veth pair `host_end` (in this namespace) / `eth0` (in `netns`).
fn veth_into(host_end: &str, netns: &str) -> Result<()> {
    run(
        "ip",
        &[
            "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", netns,
        ],
    )
    .map(|_| ())
}

/// A bridge with pods on it. Dropping it deletes the namespaces, veths and bridge.
#[derive(Debug)]
pub struct Lab {
    tag: String,
    bridge: String,
    subnet: u8,
    pods: Vec<Pod>,
    outside: Option<OutsideHost>,
}

impl Lab {
    /// A new, empty lab; `Lab::pod` adds pods.
    pub fn new() -> Result<Self> {
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        // Interface names are limited to 15 bytes.
        let tag = format!("{}{}", std::process::id() % 100_000, n);
        let bridge = format!("clb{tag}");
        // A subnet per lab so parallel labs never see each other's addresses.
        let subnet = 100
            + ((std::process::id() as u8)
                .wrapping_mul(7)
                .wrapping_add(n as u8)
                % 100);
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        let lab = Self {
            tag,
            bridge,
            subnet,
            pods: Vec::new(),
            outside: None,
        };
        run("ip", &["link", "set", &lab.bridge, "up"])?;
        Ok(lab)
    }

    /// Adds a pod named `<role>-<unique tag>` on the bridge, with IPv4 and IPv6 addresses.
    pub fn pod(&mut self, role: &str) -> Result<Pod> {
        let i = self.pods.len() + 2;
        let pod = Pod {
            netns: format!("clv-{role}-{}", self.tag),
            host_veth: format!("clv{}p{i}", self.tag),
            ipv4: Ipv4Addr::new(10, 251, self.subnet, i as u8),
            ipv6: format!("fd00:251:{}::{i}", self.subnet)
                .parse()
                .context("pod IPv6 address")?,
        };
        run("ip", &["netns", "add", &pod.netns])?;
        self.pods.push(pod.clone());
        veth_into(&pod.host_veth, &pod.netns)?;
        run(
            "ip",
            &["link", "set", &pod.host_veth, "master", &self.bridge, "up"],
        )?;
        let v4 = format!("{}/24", pod.ipv4);
        let v6 = format!("{}/64", pod.ipv6);
        let ns = pod.netns.as_str();
        run("ip", &["-n", ns, "addr", "add", &v4, "dev", "eth0"])?;
        run(
            "ip",
            &["-n", ns, "addr", "add", &v6, "dev", "eth0", "nodad"],
        )?;
        run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        Ok(pod)
    }
}

impl Lab {
    /// Adds a host outside the node (once per lab): namespace `clv-ext-<tag>` at
    /// `10.252.<subnet>.2`, whose `eth0` is the peer of the node-side veth `clv<tag>u` at
    /// `10.252.<subnet>.1`. The bridge becomes the pods' gateway (`10.251.<subnet>.1`), and
    /// forwarding is switched on for the bridge and the uplink only — per interface, never the
    /// host-wide `ip_forward` — so nothing outside the lab is routed. Call it after the pods
    /// that need to reach the host were added.
    pub fn outside_host(&mut self) -> Result<OutsideHost> {
        if let Some(o) = &self.outside {
            return Ok(o.clone());
        }
        let uplink = format!("clv{}u", self.tag);
        let host = Pod {
            netns: format!("clv-ext-{}", self.tag),
            host_veth: uplink.clone(),
            ipv4: Ipv4Addr::new(10, 252, self.subnet, 2),
            ipv6: format!("fd00:252:{}::2", self.subnet)
                .parse()
                .context("outside IPv6 address")?,
        };
        run("ip", &["netns", "add", &host.netns])?;
        self.outside = Some(OutsideHost {
            host: host.clone(),
            uplink: uplink.clone(),
        });
        veth_into(&uplink, &host.netns)?;
        let gw = format!("10.251.{}.1", self.subnet);
        let up = format!("10.252.{}.1", self.subnet);
        run(
            "ip",
            &["addr", "add", &format!("{gw}/24"), "dev", &self.bridge],
        )?;
        run("ip", &["addr", "add", &format!("{up}/24"), "dev", &uplink])?;
        run("ip", &["link", "set", &uplink, "up"])?;
        for dev in [&self.bridge, &uplink] {
            run(
                "sysctl",
                &["-qw", &format!("net.ipv4.conf.{dev}.forwarding=1")],
            )?;
        }
        let ns = host.netns.as_str();
        run(
            "ip",
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", host.ipv4),
                "dev",
                "eth0",
            ],
        )?;
        run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        let pods_net = format!("10.251.{}.0/24", self.subnet);
        run("ip", &["-n", ns, "route", "add", &pods_net, "via", &up])?;
        for pod in &self.pods {
            run(
                "ip",
                &["-n", &pod.netns, "route", "add", "default", "via", &gw],
            )?;
        }
        Ok(OutsideHost { host, uplink })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(o) = &self.outside {
            let _ = Command::new("ip")
                .args(["netns", "del", &o.host.netns])
                .output();
            let _ = Command::new("ip")
                .args(["link", "del", &o.uplink])
                .stderr(Stdio::null())
                .output();
        }
        for pod in &self.pods {
            let _ = Command::new("ip")
                .args(["netns", "del", &pod.netns])
                .output();
            let _ = Command::new("ip")
                .args(["link", "del", &pod.host_veth])
                .stderr(Stdio::null())
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// nginx serving inside a pod on port 80 (IPv4 and IPv6):
/// `/` and `/index.html` (small page), `/big.bin` (1 MiB), `/api/orders` (201, any method),
/// `/boom` (503); anything else 404. Stopped on drop.
pub struct Nginx {
    netns: String,
    dir: tempfile::TempDir,
}

/// Size of `/big.bin`.
pub const BIG_BYTES: usize = 1 << 20;

impl Nginx {
    /// Starts nginx in `pod` and waits until it answers.
    pub fn start(pod: &Pod) -> Result<Self> {
        let dir = tempfile::tempdir().context("nginx work dir")?;
        let d = dir.path().display();
        std::fs::create_dir_all(dir.path().join("www"))?;
        std::fs::write(dir.path().join("www/index.html"), "hello from the pod\n")?;
        let big: Vec<u8> = (0..BIG_BYTES).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("www/big.bin"), big)?;
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 128; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d};\n keepalive_requests 1000;\n\
             server {{\n  listen 80;\n  listen [::]:80;\n  root {d}/www;\n\
               location = /api/orders {{ return 201 \"created\\n\"; }}\n\
               location = /boom {{ return 503 \"unavailable\\n\"; }}\n }}\n}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let conf_arg = conf_path.display().to_string();
        run_in(&pod.netns, &["nginx", "-c", &conf_arg])?;
        let nginx = Self {
            netns: pod.netns.clone(),
            dir,
        };
        let url = format!("http://{}/", pod.ipv4);
        wait_for("nginx to answer", Duration::from_secs(5), || {
            Ok(Curl::new().fail().run(pod, &[&url]).is_ok())
        })?;
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let conf = self.dir.path().join("nginx.conf").display().to_string();
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "nginx",
                "-c",
                &conf,
                "-s",
                "stop",
            ])
            .output();
        // Give nginx a moment to release the pid file before the directory goes.
        let pid = self.dir.path().join("nginx.pid");
        let deadline = Instant::now() + Duration::from_secs(3);
        while pid.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    while Instant::now() < deadline {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match last_err {
        Some(e) => bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}"),
        None => bail!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// A loopback port that was free a moment ago, never the same twice in one test process
/// ([`clovisor_config::testing::free_port`]).
pub fn free_port() -> Result<u16> {
    Ok(clovisor_config::testing::free_port()?)
}

/// The workspace's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Builds the binaries of `packages` (so a test never runs a stale one; a no-op when
/// `cargo test --workspace` already built them) and returns the directory they are in.
pub fn cargo_build(packages: &[&str]) -> Result<PathBuf> {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILD.lock();
    let mut args = vec!["build", "--quiet"];
    for p in packages {
        args.extend(["-p", p]);
    }
    let status = Command::new(env!("CARGO"))
        .args(&args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .status()
        .with_context(|| format!("cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(target_dir().join("debug"))
}

/// Path of the `clovisor` binary, built first ([`cargo_build`]).
pub fn clovisor_bin() -> Result<PathBuf> {
    Ok(cargo_build(&["clovisor"])?.join("clovisor"))
}

/// A child process that is killed (SIGKILL) on drop unless it was stopped first.
pub struct Proc {
    child: Option<Child>,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Result<Self> {
        let file = std::fs::File::create(&log)?;
        let child = cmd
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("spawn")?;
        Ok(Self {
            child: Some(child),
            log,
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Sends `signal` and waits up to `timeout` for the exit status.
    pub fn stop(&mut self, signal: i32, timeout: Duration) -> Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("process already stopped");
        };
        let pid = child.id().to_string();
        run("kill", &[&format!("-{signal}"), &pid])?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("process {pid} did not exit within {timeout:?} after signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Kills the process; its log goes too unless a test is failing by panic (then it is left for
/// whoever looks into it: the failures that return an error carry the log's text already).
/// Without this, every run of the suite left some fifty logs behind in the temporary directory.
impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Loopback addresses (`host:port`) for the split pipeline's listeners, each on a free port.
#[derive(Debug, Clone)]
pub struct PipelineAddrs {
    pub correlator_grpc: String,
    pub correlator_api: String,
    pub correlator_metrics: String,
    pub collector_grpc: String,
    pub collector_metrics: String,
    pub probe_metrics: String,
}

impl PipelineAddrs {
    /// Six free loopback ports.
    pub fn new() -> Result<Self> {
        let addr = || -> Result<String> { Ok(format!("127.0.0.1:{}", free_port()?)) };
        Ok(Self {
            correlator_grpc: addr()?,
            correlator_api: addr()?,
            correlator_metrics: addr()?,
            collector_grpc: addr()?,
            collector_metrics: addr()?,
            probe_metrics: addr()?,
        })
    }
}

/// `clovisor-correlator` from `bin`: gRPC on `grpc`, metrics on `metrics`, REST on a free
/// loopback port, no Redis, no span export, plaintext.
pub fn correlator_command(bin: &Path, grpc: &str, metrics: &str) -> Result<Command> {
    let mut cmd = Command::new(bin.join("clovisor-correlator"));
    cmd.args([
        "--grpc-listen",
        grpc,
        "--metrics-listen",
        metrics,
        "--redis",
        "",
    ])
    .args(["--api-listen", &format!("127.0.0.1:{}", free_port()?)])
    .env("OTEL_TRACES_EXPORTER", "none");
    Ok(cmd)
}

/// `clovisor-collector` from `bin`: gRPC on `grpc`, sessions to the correlator at `correlator`
/// (plaintext), metrics on `metrics`, no Redis.
pub fn collector_command(bin: &Path, grpc: &str, correlator: &str, metrics: &str) -> Command {
    let mut cmd = Command::new(bin.join("clovisor-collector"));
    cmd.args([
        "--grpc-listen",
        grpc,
        "--metrics-listen",
        metrics,
        "--redis",
        "",
    ])
    .args(["--correlator", &format!("http://{correlator}")]);
    cmd
}

/// Starts a service binary (`cmd`, logging to `log`) and waits until its metrics port
/// `metrics` (`host:port`) answers `/healthz`; its log is in the error when it does not.
pub fn start_service(name: &str, mut cmd: Command, metrics: &str, log: PathBuf) -> Result<Proc> {
    cmd.env("RUST_LOG", "info");
    let mut proc = Proc::spawn(cmd, log)?;
    let health = format!("http://{metrics}/healthz");
    if let Err(e) = wait_for(&format!("{name} up"), Duration::from_secs(20), || {
        if !proc.running() {
            bail!("{name} exited early");
        }
        Ok(http_client::http_get(&health).is_ok())
    }) {
        bail!("{e:#}\n{name} log:\n{}", proc.log_text());
    }
    Ok(proc)
}

/// BPF programs of ours attached to `ifname` by any means (TCX links or tc filters), as the
/// kernel reports them — not bpftool, whose older versions cannot see TCX links.
pub fn our_programs_on(ifname: &str) -> Result<Vec<String>> {
    clovisor_probe::hooks::tc_attach::programs_on(ifname)
        .with_context(|| format!("listing programs on {ifname}"))
}

/// Whether both of our programs (ingress and egress) are on `ifname`. The probe attaches them
/// one after the other: traffic sent when only the first is on is seen in one direction only.
pub fn our_programs_complete_on(ifname: &str) -> Result<bool> {
    Ok(our_programs_on(ifname)?.len() >= clovisor_probe::hooks::pod_veth::PROGRAMS.len())
}

/// A running `clovisor all-in-one`, killed on drop unless stopped.
pub struct AllInOne {
    /// The process.
    pub proc: Proc,
    /// REST API address (`127.0.0.1:port`).
    pub api: String,
    /// Metrics address (`127.0.0.1:port`).
    pub metrics: String,
}

impl AllInOne {
    /// Starts `clovisor all-in-one` with `args` (plus free API and metrics ports), exporting
    /// spans to `otlp`, and waits until it is ready and our programs are on every interface of
    /// `attached`.
    pub fn start(args: &[&str], otlp: &str, attached: &[&str], log_name: &str) -> Result<Self> {
        Self::launch(args, Some(otlp), &[], attached, log_name)
    }

    /// [`Self::start`] with span export off.
    pub fn start_without_export(args: &[&str], attached: &[&str], log_name: &str) -> Result<Self> {
        Self::launch(args, None, &[], attached, log_name)
    }

    /// [`Self::start`] in Kubernetes mode (`--targets kubernetes --node <node>`), the API
    /// server found through `kubeconfig`.
    pub fn start_kube(
        kubeconfig: &Path,
        node: &str,
        otlp: &str,
        attached: &[&str],
        log_name: &str,
    ) -> Result<Self> {
        let kubeconfig = kubeconfig
            .to_str()
            .context("the kubeconfig path is not UTF-8")?;
        let args = ["--targets", "kubernetes", "--node", node];
        let env = [("KUBECONFIG", kubeconfig)];
        Self::launch(&args, Some(otlp), &env, attached, log_name)
    }

    fn launch(
        args: &[&str],
        otlp: Option<&str>,
        env: &[(&str, &str)],
        attached: &[&str],
        log_name: &str,
    ) -> Result<Self> {
        let api = format!("127.0.0.1:{}", free_port()?);
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(clovisor_bin()?);
        cmd.arg("all-in-one")
            .args(args)
            .args(["--api-listen", &api, "--metrics-listen", &metrics])
            .env("RUST_LOG", "info");
        cmd.envs(env.iter().copied());
        match otlp {
            Some(endpoint) => cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            None => cmd.env("OTEL_TRACES_EXPORTER", "none"),
        };
        let log = std::env::temp_dir().join(format!("{log_name}-{}.log", std::process::id()));
        let mut proc = Proc::spawn(cmd, log)?;
        let ready = format!("http://{api}/readyz");
        let up = wait_for(
            "clovisor to be ready and attached",
            Duration::from_secs(60),
            || {
                if !proc.running() {
                    bail!("clovisor exited early:\n{}", proc.log_text());
                }
                if http_get(&ready).is_err() {
                    return Ok(false);
                }
                for ifname in attached {
                    if !our_programs_complete_on(ifname)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        );
        if let Err(e) = up {
            bail!("{e:#}\nlog:\n{}", proc.log_text());
        }
        Ok(Self { proc, api, metrics })
    }

    /// Every session the REST API holds (up to 1000), newest first.
    pub fn sessions(&self) -> Result<Vec<serde_json::Value>> {
        api::sessions(&self.api)
    }

    /// The REST API's sessions once `done` holds of them, waiting up to `timeout`; past it, an
    /// error naming `what`, with the sessions last seen and the process's log.
    pub fn wait_for_sessions(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[serde_json::Value]) -> bool,
    ) -> Result<Vec<serde_json::Value>> {
        let mut all = Vec::new();
        let found = wait_for(what, timeout, || {
            all = self.sessions()?;
            Ok(done(&all))
        });
        match found {
            Ok(()) => Ok(all),
            Err(e) => bail!("{e:#}\nsessions: {all:#?}\nlog:\n{}", self.proc.log_text()),
        }
    }

    /// The metrics text now.
    pub fn metrics_text(&self) -> Result<String> {
        api::metrics_text(&self.metrics)
    }
}
