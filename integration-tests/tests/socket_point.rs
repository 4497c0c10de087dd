//! The socket observation point, for real: `clovisor all-in-one` with the `tp_btf` syscall
//! hooks on namespace pods. A plain call between two traced pods is seen at curl's and nginx's
//! sockets with their pid and command, joined with the veths' views into one session; behind a
//! TLS tunnel (stunnel in each pod, the apps speaking plaintext to it over loopback) the sockets
//! still give method, path, status and trace id while the veths carry only TLS; processes of
//! untraced namespaces are not traced (a socket found untraced is marked so in its own storage,
//! and traced on its next call once its namespace is); the hook choice is visible in the log, the
//! metric and the API; and the programs are gone once clovisor stops.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};
use clovisor_integration_tests::api::{metric, points, Point};
use clovisor_integration_tests::http_client::{curl_keep_alive, http_get, Curl};
use clovisor_integration_tests::tls::{self_signed, Stunnel};
use clovisor_integration_tests::{wait_for, AllInOne, Lab, Nginx, Pod};
use serde_json::Value;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

/// `clovisor all-in-one` tracing `pods` (span export off), attached to their veths. The
/// reconciler writes ports and namespaces before it attaches, so attached means traced.
fn start_clovisor(pods: &[&Pod], extra: &[&str], log_name: &str) -> Result<AllInOne> {
    let mut args: Vec<&str> = pods
        .iter()
        .flat_map(|p| ["--netns", p.netns.as_str()])
        .collect();
    args.extend_from_slice(extra);
    let veths: Vec<&str> = pods.iter().map(|p| p.host_veth.as_str()).collect();
    AllInOne::start_without_export(&args, &veths, log_name)
}

/// One request from `pod` carrying the test's W3C trace context.
fn curl_traced(pod: &Pod, url: &str) -> Result<()> {
    Curl::new()
        .args(&["-H", &format!("traceparent: 00-{TRACE}-{PARENT}-01")])
        .run(pod, &[url])
}

/// curl's socket, the two veths, nginx's socket: a call from `client` to `server`.
fn four_points(client: &Pod, server: &Pod) -> Vec<Point> {
    vec![
        Point::new("socket", "curl", "client"),
        Point::new("pod", &client.host_veth, "client"),
        Point::new("pod", &server.host_veth, "server"),
        Point::new("socket", "nginx", "server"),
    ]
}

/// Sessions of `path`.
fn of_path<'a>(all: &'a [Value], path: &str) -> Vec<&'a Value> {
    all.iter().filter(|s| s["http"]["path"] == path).collect()
}

fn socket_obs<'a>(s: &'a Value, side: &str) -> Option<&'a Value> {
    s["observations"]
        .as_array()?
        .iter()
        .find(|o| o["point"] == "socket" && o["side"] == side)
}

/// Ids of the tracing programs (`tp_btf`, BPF_PROG_TYPE_TRACING = 26) process `pid` holds, read
/// from its file descriptors' `fdinfo` (the probe loads no other tracing programs).
fn tracing_program_ids(pid: u32) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if field("prog_type:") == Some(26) {
            ids.extend(field("prog_id:"));
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

fn check_session_fields(s: &Value, path: &str, status: u64) {
    assert_eq!(s["http"]["method"], "GET", "method of {path}: {s:#}");
    assert_eq!(s["http"]["path"], path, "path: {s:#}");
    assert_eq!(s["http"]["status_code"], status, "status of {path}: {s:#}");
    assert_eq!(s["trace"]["trace_id"], TRACE, "trace id of {path}: {s:#}");
}

/// The one session of `path` once it was seen at all four points of a call from `client` to
/// `server` (every session listed then, for a failure's message), with its HTTP fields checked.
fn one_session_at_four_points(
    clovisor: &AllInOne,
    client: &Pod,
    server: &Pod,
    path: &str,
) -> Result<Value> {
    let all = clovisor.wait_for_sessions(
        "one session seen at both sockets and both veths",
        Duration::from_secs(15),
        |all| {
            of_path(all, path)
                .iter()
                .any(|s| points(s) == four_points(client, server))
        },
    )?;
    let sessions = of_path(&all, path);
    assert_eq!(sessions.len(), 1, "one session per exchange: {sessions:#?}");
    check_session_fields(sessions[0], path, 404);
    Ok(sessions[0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_point_sees_both_ends_with_their_processes_and_ignores_untraced_pods() -> Result<()>
{
    let mut lab = Lab::new()?;
    let client = lab.pod("scli")?;
    let server = lab.pod("ssrv")?;
    // Neither traced: their traffic must not reach the socket program's accounting.
    let other_client = lab.pod("socli")?;
    let other_server = lab.pod("sosrv")?;
    let _nginx = Nginx::start(&server)?;
    let _other_nginx = Nginx::start(&other_server)?;

    let mut clovisor = start_clovisor(&[&client, &server], &[], "clovisor-socket")?;

    // The hook choice: API, metric and log line.
    let status: Value =
        serde_json::from_str(&http_get(&format!("http://{}/api/v1/probe", clovisor.api))?)?;
    assert_eq!(
        status["socket"]["hook"], "tp_btf",
        "this kernel offers only BTF tracepoints: {status:#}"
    );
    let attempts: Vec<&str> = status["socket"]["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["hook"].as_str())
        .collect();
    assert_eq!(
        attempts,
        ["fentry", "kprobe", "tp_btf"],
        "hook sets tried in preference order: {status:#}"
    );
    assert_eq!(
        metric(
            &clovisor.metrics,
            r#"clovisor_probe_socket_hook_info{hook="tp_btf"}"#
        )?,
        Some(1.0),
        "hook info metric"
    );
    assert!(
        clovisor.proc.log_text().contains("hooks chosen"),
        "log line of the hook choice missing:\n{}",
        clovisor.proc.log_text()
    );
    let prog_ids = tracing_program_ids(clovisor.proc.pid())?;
    assert_eq!(
        prog_ids.len(),
        3,
        "sock_send_length, sock_recv_length and inet_sock_set_state loaded by clovisor, got {prog_ids:?}"
    );

    let url = format!("http://{}/socket/plain?n=1", server.ipv4);
    curl_traced(&client, &url)?;
    let s = &one_session_at_four_points(&clovisor, &client, &server, "/socket/plain")?;
    // The socket's 4-tuple is the wire's: client address and port join with the veths.
    assert_eq!(
        s["client"]["ip"],
        client.ipv4.to_string(),
        "client ip: {s:#}"
    );
    assert_eq!(s["server"]["port"], 80, "server port: {s:#}");
    for side in ["server", "client"] {
        let o = socket_obs(s, side).unwrap_or_else(|| panic!("no {side} socket observation"));
        assert!(
            o["pid"].as_u64().is_some_and(|p| p > 1),
            "{side} socket observation must name the process: {o:#}"
        );
        assert!(
            o["netns_inode"].as_u64().is_some_and(|n| n > 0),
            "{side} socket observation must name the namespace: {o:#}"
        );
    }
    // Every point names the same TCP sequence numbers (what the join keys on).
    let obs = s["observations"].as_array().cloned().unwrap_or_default();
    for field in ["request_tcp_seq", "response_tcp_seq"] {
        let seqs: Vec<&Value> = obs.iter().map(|o| &o[field]).collect();
        assert!(
            seqs[0].is_u64() && seqs.windows(2).all(|w| w[0] == w[1]),
            "{field} alike at every point: {seqs:?}"
        );
    }

    // Client and server both traced here, no NAT between them: a server connection whose client
    // filed its key sends timings and counters alone (the client's socket carries the bytes). The
    // client files it when its connect completes, before it acknowledges the server's SYN, so
    // before nginx can accept: every connection is covered, none loses a race to its first bytes
    // (the first version filed at the client's first send and lost that race under load). Eight
    // fresh connections: each counted covered, each one decoded session at the four points.
    let covered = r#"clovisor_probe_kernel_total{counter="socket_peer_covered_connections"}"#;
    // The probe refreshes its kernel counters every second: wait for each figure.
    let covered_reaches = |n: f64, what: &str| {
        wait_for(what, Duration::from_secs(5), || {
            Ok(metric(&clovisor.metrics, covered)? == Some(n))
        })
    };
    covered_reaches(1.0, "the first connection (/socket/plain) counted covered")?;
    for i in 0..8 {
        let path = format!("/socket/covered-{i}");
        curl_traced(&client, &format!("http://{}{path}?n=1", server.ipv4))?;
        one_session_at_four_points(&clovisor, &client, &server, &path)?;
    }
    covered_reaches(9.0, "each of eight fresh connections counted covered")?;

    // Keep-alive over IPv6: two requests on one connection are two exchanges at each socket,
    // told apart by the direction switches alone, each joined with the veths' views.
    let v6 = |p: &str| format!("http://[{}]{p}", server.ipv6);
    curl_keep_alive(&client, &[v6("/socket/v6-first"), v6("/socket/v6-second")])?;
    let v6_paths = ["/socket/v6-first", "/socket/v6-second"];
    let all = clovisor.wait_for_sessions(
        "IPv6 keep-alive sessions at all four points",
        Duration::from_secs(15),
        |all| {
            v6_paths.iter().all(|p| {
                of_path(all, p)
                    .iter()
                    .any(|s| points(s) == four_points(&client, &server))
            })
        },
    )?;
    let [first, second] = v6_paths.map(|p| {
        let found = of_path(&all, p);
        assert_eq!(found.len(), 1, "one session for {p}: {found:#?}");
        found[0]
    });
    assert_eq!(
        first["client"]["ip"],
        client.ipv6.to_string(),
        "IPv6 client address: {first:#}"
    );
    assert_eq!(
        first["client"]["port"], second["client"]["port"],
        "both requests on one connection"
    );
    assert_eq!(second["http"]["status_code"], 404, "{second:#}");

    // Untraced pods talk to port 80 too, which is traced: their calls pass the port test
    // (socket_tcp_calls) and only the namespace filter keeps them out of what is traced.
    let tcp = r#"clovisor_probe_kernel_total{counter="socket_tcp_calls"}"#;
    let monitored = r#"clovisor_probe_kernel_total{counter="socket_calls_traced"}"#;
    // The traced pods' syscalls were counted (metrics catch up every second)...
    wait_for(
        "socket counters in /metrics",
        Duration::from_secs(5),
        || Ok(metric(&clovisor.metrics, monitored)?.is_some_and(|n| n > 0.0)),
    )?;
    // ... and have settled once the exchange is over.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = metric(&clovisor.metrics, monitored)?;
    let tcp_before = metric(&clovisor.metrics, tcp)?;
    assert!(
        tcp_before.is_some_and(|n| n > 0.0),
        "the traced pods' TCP calls must have been counted: {tcp_before:?}"
    );
    for i in 0..5 {
        curl_traced(
            &other_client,
            &format!("http://{}/socket/untraced?i={i}", other_server.ipv4),
        )?;
    }
    // Metrics catch up every second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = metric(&clovisor.metrics, monitored)?;
    assert_eq!(
        before, after,
        "calls of untraced namespaces must not be traced"
    );
    let tcp_after = metric(&clovisor.metrics, tcp)?;
    assert!(
        tcp_after > tcp_before,
        "the untraced pods' calls on the traced port pass the port test \
         ({tcp_before:?} -> {tcp_after:?}): the namespace filter is what left them out"
    );
    let all = clovisor.sessions()?;
    assert!(
        !all.iter().any(|s| s["http"]["path"] == "/socket/untraced"),
        "untraced pods must yield no session: {all:#?}"
    );

    // Stop: the programs (and their links) are gone with the process.
    let exit = clovisor.proc.stop(15, Duration::from_secs(15))?;
    assert!(
        exit.success(),
        "clovisor must exit cleanly on SIGTERM: {exit:?}"
    );
    // The kernel releases a program after its last link and fd are gone, from deferred work:
    // give it a moment, then it must be gone.
    let loaded = |id: u64| -> Result<bool> {
        Ok(Command::new("bpftool")
            .args(["prog", "show", "id", &id.to_string()])
            .output()?
            .status
            .success())
    };
    let released = wait_for(
        "the socket programs to be released",
        Duration::from_secs(5),
        || {
            for id in &prog_ids {
                if loaded(*id)? {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    );
    for id in &prog_ids {
        assert!(
            !loaded(*id)?,
            "socket program {id} still loaded after clovisor stopped: {released:?}"
        );
    }
    Ok(())
}

/// With `--socket-payload always` both sockets copy the bytes — the path a client seen through a
/// NAT takes, whose server cannot find it: the exchange is still one session at all four
/// points, decoded, and no server connection is counted covered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sockets_carry_the_bytes_with_socket_payload_always() -> Result<()> {
    let mut lab = Lab::new()?;
    let client = lab.pod("sacli")?;
    let server = lab.pod("sasrv")?;
    let _nginx = Nginx::start(&server)?;
    let clovisor = start_clovisor(
        &[&client, &server],
        &["--socket-payload", "always"],
        "clovisor-socket-always",
    )?;
    let path = "/socket/always";
    curl_traced(&client, &format!("http://{}{path}?n=1", server.ipv4))?;
    one_session_at_four_points(&clovisor, &client, &server, path)?;
    // The kernel counters are in /metrics once the traced calls are; a counter never raised
    // has no series.
    let traced = r#"clovisor_probe_kernel_total{counter="socket_calls_traced"}"#;
    wait_for(
        "socket counters in /metrics",
        Duration::from_secs(5),
        || Ok(metric(&clovisor.metrics, traced)?.is_some_and(|n| n > 0.0)),
    )?;
    let covered = r#"clovisor_probe_kernel_total{counter="socket_peer_covered_connections"}"#;
    assert_eq!(
        metric(&clovisor.metrics, covered)?,
        None,
        "no server connection sends counters alone with --socket-payload always"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_point_sees_plaintext_behind_a_tls_tunnel() -> Result<()> {
    let mut lab = Lab::new()?;
    let client = lab.pod("tcli")?;
    let server = lab.pod("tsrv")?;
    let _nginx = Nginx::start(&server)?;

    let dir = tempfile::tempdir()?;
    let (cert, key) = self_signed(dir.path())?;
    // The app (curl) -> stunnel client on loopback 8080, plaintext; stunnel client -> stunnel
    // server on 8443 over the veths, TLS; stunnel server -> nginx on loopback 80, plaintext.
    let _tls_server = Stunnel::server(&server, dir.path(), (&cert, &key), "8443", "127.0.0.1:80")?;
    let _tls_client = Stunnel::client(
        &client,
        dir.path(),
        "127.0.0.1:8080",
        &format!("{}:8443", server.ipv4),
    )?;
    wait_for(
        "the TLS tunnel to carry a request",
        Duration::from_secs(10),
        || {
            Ok(Curl::new()
                .fail()
                .max_time(2)
                .run(&client, &["http://127.0.0.1:8080/"])
                .is_ok())
        },
    )?;

    // 8443 and 80 are found listening; the tunnel's loopback port is named.
    let mut clovisor = start_clovisor(&[&client, &server], &["--port", "8080"], "clovisor-tls")?;
    let path = "/socket/tls";
    curl_traced(&client, &format!("http://127.0.0.1:8080{path}?n=1"))?;

    // Two plaintext legs, one in each pod, each a loopback connection seen at both of its
    // sockets: curl -> the client's stunnel, and the server's stunnel -> nginx.
    let legs = [
        vec![
            Point::new("socket", "curl", "client"),
            Point::new("socket", "stunnel4", "server"),
        ],
        vec![
            Point::new("socket", "stunnel4", "client"),
            Point::new("socket", "nginx", "server"),
        ],
    ];
    let all = clovisor.wait_for_sessions(
        "both plaintext legs behind TLS",
        Duration::from_secs(15),
        |all| {
            let seen: Vec<_> = of_path(all, path).into_iter().map(points).collect();
            legs.iter().all(|l| seen.contains(l))
        },
    )?;
    let tls = of_path(&all, path);
    assert_eq!(tls.len(), 2, "one session per leg: {tls:#?}");
    for s in &tls {
        check_session_fields(s, path, 404);
        assert_eq!(
            s["client"]["ip"], "127.0.0.1",
            "a leg inside a pod is on loopback: {s:#}"
        );
    }
    // The veths carried the exchange, but only as TLS: no veth view decodes it.
    assert!(
        !tls.iter()
            .any(|s| points(s).iter().any(|p| p.kind == "pod")),
        "the veth must not see plaintext of {path}: {tls:#?}"
    );
    let traced = r#"clovisor_probe_kernel_total{counter="packets_traced"}"#;
    wait_for(
        "the veths to have seen the tunnel's packets (port 8443)",
        Duration::from_secs(5),
        || Ok(metric(&clovisor.metrics, traced)?.is_some_and(|n| n > 0.0)),
    )?;
    let exit = clovisor.proc.stop(15, Duration::from_secs(15))?;
    assert!(
        exit.success(),
        "clovisor must exit cleanly on SIGTERM: {exit:?}"
    );
    Ok(())
}

/// One keep-alive connection from a pod, a request at a time: its client process, fed a line
/// per request, answers each with the status and the connection's local port.
struct KeepAliveClient {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl KeepAliveClient {
    const SCRIPT: &str = "import http.client, sys\n\
        c = http.client.HTTPConnection(sys.argv[1], 80, timeout=5)\n\
        for line in sys.stdin:\n\
        \x20   c.request('GET', '/?i=' + line.strip())\n\
        \x20   r = c.getresponse(); r.read()\n\
        \x20   print(r.status, c.sock.getsockname()[1], flush=True)\n";

    fn start(pod: &Pod, server: &str) -> Result<Self> {
        use std::io::BufRead as _;
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &pod.netns,
                "python3",
                "-c",
                Self::SCRIPT,
                server,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let Some(out) = child.stdout.take() else {
            bail!("no stdout of the client");
        };
        Ok(Self {
            child,
            lines: std::io::BufReader::new(out).lines(),
        })
    }

    /// One request; its status and the connection's local port.
    fn get(&mut self, i: u32) -> Result<(u16, u16)> {
        use std::io::Write as _;
        let Some(stdin) = self.child.stdin.as_mut() else {
            bail!("no stdin of the client");
        };
        writeln!(stdin, "{i}")?;
        stdin.flush()?;
        let Some(line) = self.lines.next() else {
            bail!("the client ended");
        };
        let line = line?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some(status), Some(port)) => Ok((status.parse()?, port.parse()?)),
            _ => bail!("unexpected client output {line:?}"),
        }
    }
}

impl Drop for KeepAliveClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A socket the socket point found untraced is marked so in its own storage and left at once
/// on its later calls; once its namespace is monitored, its next call is traced — on the same
/// keep-alive connection, without waiting for a new one (the monitored set's generation makes
/// the mark stale).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_found_untraced_is_traced_once_its_namespace_is() -> Result<()> {
    use std::collections::{BTreeMap, BTreeSet};
    use std::os::unix::fs::MetadataExt as _;

    use clovisor_probe::capture::socket_object::SocketCapture;
    use clovisor_probe::capture::CaptureConfig;
    use clovisor_proto::capture::v1::ProtocolHint;

    let mut lab = Lab::new()?;
    let client = lab.pod("sgcli")?;
    let server = lab.pod("sgsrv")?;
    let _nginx = Nginx::start(&server)?;
    let client_inode =
        u32::try_from(std::fs::metadata(format!("/run/netns/{}", client.netns))?.ino())?;

    let mut socket = SocketCapture::load(&CaptureConfig::default())?;
    socket.set_traced_ports(&BTreeMap::from([(80, ProtocolHint::Http)]))?;
    socket.set_monitored_netns(&BTreeSet::new())?;
    let stats = socket.kernel_stats_handle();
    let traced = || -> Result<u64> {
        Ok(stats
            .read()?
            .get("socket_calls_traced")
            .copied()
            .unwrap_or_default())
    };

    let mut curl = KeepAliveClient::start(&client, &server.ipv4.to_string())?;
    // The first calls find the socket untraced (and mark it); the later ones leave at the mark.
    let (status, port) = curl.get(0)?;
    assert_eq!(status, 200);
    for i in 1..4 {
        assert_eq!(curl.get(i)?, (200, port), "one keep-alive connection");
    }
    assert_eq!(traced()?, 0, "an untraced namespace's calls are not traced");

    socket.set_monitored_netns(&BTreeSet::from([client_inode]))?;
    assert_eq!(curl.get(4)?, (200, port), "still the same connection");
    let after = traced()?;
    assert!(
        after >= 2,
        "the connection's send and receive must be traced once its namespace is: {after}"
    );
    Ok(())
}
