//! The probe's data plane for real: two namespace pods on a bridge, nginx in one, curl in the
//! other; the capture programs attached to the server pod's host veth through the probe's own
//! discovery (`discovery::host_veth`, `discovery::listening_tcp_ports`). Checks the records of keep-alive
//! HTTP over IPv4 (with a 1 MiB response) and IPv6, how few kernel events they cost, and that
//! detaching leaves nothing of ours on the interface; the legacy clsact path and crash
//! cleanup; idle flushes reading the kernel's counters; retransmissions counted once.
//!
//! Run: `cargo test -p clovisor-integration-tests --test probe_capture -- --nocapture` (root).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clovisor_integration_tests::capture::{attach, flows_of, inject, Flow, Recorder};
use clovisor_integration_tests::http_client::Curl;
use clovisor_integration_tests::{
    our_programs_on, require_root, run, run_in, Lab, Nginx, Pod, BIG_BYTES,
};
use clovisor_probe::capture::{AttachMode, AttachPolicy, Capture, CaptureConfig};
use clovisor_probe::discovery;
use clovisor_probe::hooks::tc_attach::programs_on;
use clovisor_proto::capture::v1::{record, Direction, FlowEndReason, ProtocolHint};
use clovisor_proto::common::v1::PointKind;

const NODE: &str = "probe-capture-test";

/// GETs `urls` from `client` on one keep-alive connection, over HTTP/1.1, failing on an
/// error status.
fn curl(client: &Pod, urls: &[String]) -> Result<()> {
    Curl::new().fail().args(&["--http1.1"]).run(client, urls)
}

/// Runs and run time (ns) of our programs, summed, when `kernel.bpf_stats_enabled` is on
/// (informational: the numbers depend on the machine); `None` when it is off.
fn program_cost() -> Option<(u64, u64)> {
    let enabled = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").ok()?;
    if enabled.trim() == "0" {
        return None;
    }
    let out = run("bpftool", &["-j", "prog", "show"]).ok()?;
    let serde_json::Value::Array(progs) = serde_json::from_slice(&out.stdout).ok()? else {
        return None;
    };
    let mut total = None;
    for p in progs {
        let name = p.get("name").and_then(|n| n.as_str()).unwrap_or_default();
        if !name.starts_with("clovisor") {
            continue;
        }
        // bpftool leaves both out while a program has not run yet.
        let ns = p
            .get("run_time_ns")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let cnt = p
            .get("run_cnt")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let (c, n) = total.unwrap_or((0, 0));
        total = Some((c + cnt, n + ns));
    }
    total
}

// Informational (machine-dependent), shown with `--nocapture`; the test asserts nothing on it.
#[allow(clippy::print_stderr)]
fn report_cost(what: &str, before: Option<(u64, u64)>, after: Option<(u64, u64)>) {
    if let (Some((c0, n0)), Some((c1, n1))) = (before, after) {
        let runs = c1.saturating_sub(c0);
        eprintln!(
            "{what}: {runs} program runs, {:.0} ns/run",
            n1.saturating_sub(n0) as f64 / runs.max(1) as f64
        );
    }
}

fn check_exchange(
    flow: &Flow,
    exchanges: &[(&str, usize)],
    what: &str,
    veth: &discovery::HostVeth,
) {
    let n = exchanges.len() as u32 * 2;
    let indexes: Vec<u32> = flow.messages.keys().copied().collect();
    assert_eq!(
        indexes,
        (0..n).collect::<Vec<_>>(),
        "{what}: messages 0..{n} expected on one keep-alive flow, got {:?}",
        flow.messages
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    for (i, (path, min_body)) in exchanges.iter().enumerate() {
        let req = &flow.messages[&(2 * i as u32)];
        let resp = &flow.messages[&(2 * i as u32 + 1)];
        let req_text = String::from_utf8_lossy(&req.payload);
        assert!(
            req_text.starts_with(&format!("GET {path} HTTP/1.1")),
            "{what}: request {i} payload must start with GET {path}, got {req_text:?}"
        );
        assert_eq!(
            req.direction,
            Direction::ClientToServer as i32,
            "{what}: request {i} direction"
        );
        assert!(
            req.to_pod,
            "{what}: request {i} travels towards the server pod"
        );
        assert_eq!(
            req.bytes,
            req.payload.len() as u64,
            "{what}: a small request is captured whole, so bytes equal the payload length"
        );
        let resp_text = String::from_utf8_lossy(&resp.payload);
        assert!(
            resp_text.starts_with("HTTP/1.1 200"),
            "{what}: response {i} payload must start with HTTP/1.1 200, got {resp_text:?}"
        );
        assert_eq!(
            resp.direction,
            Direction::ServerToClient as i32,
            "{what}: response {i} direction"
        );
        assert!(
            !resp.to_pod,
            "{what}: response {i} travels away from the pod"
        );
        assert!(
            resp.bytes >= *min_body as u64,
            "{what}: response {i} ({path}) must count at least the body's {min_body} bytes, counted {}",
            resp.bytes
        );
        for m in [req, resp] {
            assert!(
                m.start_unix_nanos <= m.end_unix_nanos
                    && now.saturating_sub(m.start_unix_nanos) < 120_000_000_000,
                "{what}: message {} times must be recent and ordered: start {} end {} now {now}",
                m.index,
                m.start_unix_nanos,
                m.end_unix_nanos
            );
            assert!(
                m.flow.is_none() && m.point.is_none(),
                "{what}: message {} names its flow by id only (its FlowStart says the rest)",
                m.index
            );
        }
    }
    let start = flow.start.clone().unwrap_or_default();
    assert_eq!(
        start.protocol,
        ProtocolHint::Http as i32,
        "{what}: protocol hint of the traced port, in the FlowStart"
    );
    let point = start.point.unwrap_or_default();
    assert_eq!(
        (
            point.kind,
            point.ifindex,
            point.interface.as_str(),
            point.node.as_str()
        ),
        (
            PointKind::Pod as i32,
            veth.ifindex,
            veth.name.as_str(),
            NODE
        ),
        "{what}: observation point, in the FlowStart"
    );
}

#[test]
fn captures_keep_alive_http_over_ipv4_and_ipv6_on_a_pod_veth() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new()?;
    let server = lab.pod("psrv")?;
    let client = lab.pod("pcli")?;
    let _nginx = Nginx::start(&server)?;

    // Discovery, as the probe does it.
    let named = discovery::named()?;
    assert!(
        named.contains(&server.netns),
        "discovery::named() must list {}, got {named:?}",
        server.netns
    );
    let ports = discovery::listening_tcp_ports(&server.netns)?;
    assert!(
        ports.contains(&80),
        "nginx listens on 80 in {}, found {ports:?}",
        server.netns
    );
    let veth = discovery::host_veth(&server.netns)?;
    assert_eq!(veth.name, server.host_veth, "host veth of {}", server.netns);
    for ip in [
        std::net::IpAddr::V4(server.ipv4),
        std::net::IpAddr::V6(server.ipv6),
    ] {
        assert!(
            veth.pod_ips.contains(&ip),
            "pod IPs must include {ip}, got {:?}",
            veth.pod_ips
        );
    }

    let mut capture = Capture::load(&CaptureConfig {
        snaplen: 256,
        ring_buffer_bytes: 1 << 20,
        max_connections: 4096,
        idle_flush: Duration::from_millis(200),
        node: NODE.into(),
        ..CaptureConfig::default()
    })?;
    let traced: BTreeMap<u16, ProtocolHint> =
        ports.iter().map(|p| (*p, ProtocolHint::Http)).collect();
    capture.set_traced_ports(&traced)?;
    let mode = capture.attach_pod_veth(&veth.name)?;
    let again = capture.attach_pod_veth(&veth.name)?;
    assert_eq!(mode, again, "attaching twice must be a no-op");
    // Asked from the kernel (BPF_PROG_QUERY + filter dump): this machine's bpftool 7.1
    // cannot see TCX links, so `our_programs_on` alone would pass vacuously.
    let attached = programs_on(&veth.name)?;
    assert_eq!(
        attached,
        vec![
            "ingress:clovisor_from_p".to_owned(),
            "egress:clovisor_to_pod".to_owned()
        ],
        "exactly our two programs on {} ({mode:?})",
        veth.name
    );
    eprintln!("attached to {} as {mode:?}: {attached:?}", veth.name);

    let recorder = Recorder::start(&mut capture, 10_000)?;
    let live = recorder.live.clone();
    let before = capture.kernel_stats()?;
    let cost_before = program_cost();

    let v4 = |p: &str| format!("http://{}{p}", server.ipv4);
    curl(
        &client,
        &[v4("/index.html"), v4("/index.html"), v4("/big.bin")],
    )?;
    let v6 = |p: &str| format!("http://[{}]{p}", server.ipv6);
    curl(&client, &[v6("/index.html")])?;

    // Let FIN events arrive and idle flushes run.
    std::thread::sleep(Duration::from_millis(800));
    let (loop_stats, records) = recorder.stop()?;
    let after = capture.kernel_stats()?;
    let delta = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    let events = delta("events_emitted");
    eprintln!("kernel counters after: {after:?}");
    eprintln!(
        "event loop: {loop_stats:?}; live handle: {:?}",
        live.lock().map(|s| *s).ok()
    );
    eprintln!(
        "{} records; {events} kernel events for 4 exchanges on 2 connections = {:.2} events/exchange; {} packets traced",
        records.len(),
        events as f64 / 4.0,
        delta("packets_traced")
    );

    report_cost("traced traffic", cost_before, program_cost());

    let v4_flows = flows_of(&records, &client.ipv4.octets());
    assert_eq!(
        v4_flows.len(),
        1,
        "one keep-alive IPv4 connection expected, got {v4_flows:?}"
    );
    let Some(v4_flow) = v4_flows.values().next() else {
        bail!("no IPv4 flow")
    };
    check_exchange(
        v4_flow,
        &[
            ("/index.html", 19),
            ("/index.html", 19),
            ("/big.bin", BIG_BYTES),
        ],
        "IPv4",
        &veth,
    );
    let big = &v4_flow.messages[&5];
    assert_eq!(
        big.payload.len(),
        256,
        "the snippet of a large message is capped at the configured snaplen (256)"
    );
    assert!(
        u64::from(big.packets) >= (BIG_BYTES / 65_536) as u64,
        "the 1 MiB response must count its packets (GSO segments), counted {}",
        big.packets
    );
    eprintln!(
        "1 MiB response: bytes={} packets={} retransmits={} partial={}",
        big.bytes, big.packets, big.retransmits, big.partial
    );
    match &v4_flow.end {
        Some(end) => {
            assert_eq!(
                end.messages, 6,
                "FlowEnd must count 6 messages, got {end:?}"
            );
            assert!(
                end.reason == FlowEndReason::Fin as i32 || end.reason == FlowEndReason::Rst as i32,
                "FlowEnd reason FIN or RST, got {end:?}"
            );
        }
        None => bail!("the IPv4 flow must end with a FlowEnd record; records: {v4_flow:?}"),
    }

    let v6_flows = flows_of(&records, &client.ipv6.octets());
    assert_eq!(
        v6_flows.len(),
        1,
        "one IPv6 connection expected, got {v6_flows:?}"
    );
    let Some(v6_flow) = v6_flows.values().next() else {
        bail!("no IPv6 flow")
    };
    check_exchange(v6_flow, &[("/index.html", 19)], "IPv6", &veth);
    assert!(
        v6_flow.end.is_some(),
        "the IPv6 flow must end with a FlowEnd"
    );

    // O(1) events per exchange: a MSG_START per message plus one FLOW_END per connection,
    // however many packets the 1 MiB response took.
    assert!(
        events <= 4 * 2 + 2,
        "at most 10 kernel events for 4 exchanges on 2 connections, got {events}"
    );
    assert_eq!(
        delta("ringbuf_full_drops"),
        0,
        "no ring buffer drops expected"
    );
    assert_eq!(
        loop_stats.bad_events, 0,
        "every ring buffer record must decode"
    );
    assert_eq!(
        loop_stats.records_dropped_full, 0,
        "the output channel never filled"
    );

    // The cheap path: with no port traced, traffic costs no event and no session.
    let quiet_before = capture.kernel_stats()?;
    let cost_before = program_cost();
    capture.set_traced_ports(&BTreeMap::new())?;
    curl(&client, &[v4("/big.bin")])?;
    report_cost("untraced traffic (cheap path)", cost_before, program_cost());
    let quiet_after = capture.kernel_stats()?;
    for k in ["events_emitted", "packets_traced", "connections_created"] {
        assert_eq!(
            quiet_after.get(k),
            quiet_before.get(k),
            "{k} must not move for untraced traffic: before {quiet_before:?} after {quiet_after:?}"
        );
    }
    assert!(
        quiet_after.get("packets_seen") > quiet_before.get("packets_seen"),
        "the programs still run on untraced traffic (packets_seen must grow)"
    );

    capture.detach_all()?;
    let left = programs_on(&veth.name)?;
    assert!(
        left.is_empty(),
        "no program of ours may stay on {} after detach, found {left:?}",
        veth.name
    );
    let left = our_programs_on(&veth.name)?;
    assert!(
        left.is_empty(),
        "nothing of ours may stay on {} after detach, found {left:?}",
        veth.name
    );
    let tc = run("tc", &["qdisc", "show", "dev", &veth.name])?;
    let qdiscs = String::from_utf8_lossy(&tc.stdout).into_owned();
    assert!(
        !qdiscs.contains("clsact"),
        "no clsact may be left on {}: {qdiscs}",
        veth.name
    );
    drop(capture);
    let leftovers = clovisor_probe::cleanup_leftovers()?;
    assert_eq!(
        leftovers, 0,
        "no legacy filters of ours anywhere, {leftovers} found"
    );
    Ok(())
}

/// Small maps: enough for a test's few connections.
fn small_config() -> CaptureConfig {
    CaptureConfig {
        ring_buffer_bytes: 1 << 16,
        max_connections: 1024,
        node: NODE.into(),
        ..CaptureConfig::default()
    }
}

fn legacy_config() -> CaptureConfig {
    CaptureConfig {
        attach: AttachPolicy::Netlink,
        ..small_config()
    }
}

fn qdiscs(ifname: &str) -> Result<String> {
    Ok(String::from_utf8_lossy(&run("tc", &["qdisc", "show", "dev", ifname])?.stdout).into_owned())
}

/// The legacy path: clsact filters; detach removes our filters, and the clsact only when we
/// added it; a clsact someone else added survives with their filter.
#[test]
fn legacy_clsact_filters_are_removed_exactly() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new()?;
    let pod = lab.pod("plgc")?;
    let veth = discovery::host_veth(&pod.netns)?;

    // 1. No clsact before: we add it, and we remove it.
    let mut capture = Capture::load(&legacy_config())?;
    let mode = capture.attach_pod_veth(&veth.name)?;
    assert_eq!(
        mode,
        AttachMode::Netlink { added_clsact: true },
        "legacy attach on a bare veth adds clsact"
    );
    let on = programs_on(&veth.name)?;
    assert_eq!(
        on.len(),
        2,
        "two legacy filters of ours expected, got {on:?}"
    );
    assert!(
        qdiscs(&veth.name)?.contains("clsact"),
        "clsact must be present while attached"
    );
    capture.detach(&veth.name)?;
    assert!(
        programs_on(&veth.name)?.is_empty(),
        "our filters must be gone after detach"
    );
    let q = qdiscs(&veth.name)?;
    assert!(
        !q.contains("clsact"),
        "the clsact we added must be removed, tc shows: {q}"
    );

    // 2. Someone else's clsact with their own filter: ours go, theirs stay.
    run("tc", &["qdisc", "add", "dev", &veth.name, "clsact"])?;
    run(
        "tc",
        &[
            "filter", "add", "dev", &veth.name, "ingress", "prio", "7", "u32", "match", "u32", "0",
            "0",
        ],
    )?;
    let mode = capture.attach_pod_veth(&veth.name)?;
    assert_eq!(
        mode,
        AttachMode::Netlink {
            added_clsact: false
        },
        "an existing clsact is not ours"
    );
    capture.detach(&veth.name)?;
    assert!(
        programs_on(&veth.name)?.is_empty(),
        "our filters must be gone after detach"
    );
    let q = qdiscs(&veth.name)?;
    assert!(
        q.contains("clsact"),
        "someone else's clsact must survive our detach, tc shows: {q}"
    );
    let theirs = String::from_utf8_lossy(
        &run("tc", &["filter", "show", "dev", &veth.name, "ingress"])?.stdout,
    )
    .into_owned();
    assert!(
        theirs.contains("u32"),
        "their filter must survive, tc shows: {theirs}"
    );
    run("tc", &["qdisc", "del", "dev", &veth.name, "clsact"])?;

    // 3. A crashed run leaves filters (simulated by leaking the loader): cleanup removes them.
    let mut crashed = Capture::load(&legacy_config())?;
    crashed.attach_pod_veth(&veth.name)?;
    std::mem::forget(crashed);
    assert_eq!(
        programs_on(&veth.name)?.len(),
        2,
        "the 'crashed' run's filters are still attached"
    );
    let removed = clovisor_probe::cleanup_leftovers()?;
    assert!(
        removed >= 2,
        "cleanup must remove both leftover filters (per hook), reported {removed}"
    );
    assert!(
        programs_on(&veth.name)?.is_empty(),
        "no filter of ours may survive cleanup_leftovers"
    );
    Ok(())
}

/// A keep-alive connection that goes quiet after a 1 MiB response: the idle flush must send
/// the response with the counters read from the kernel's session map (so the whole body,
/// not just its first packet), marked partial, and no duplicate when the FIN confirms them.
#[test]
fn quiet_keep_alive_response_is_flushed_with_kernel_counters() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new()?;
    let server = lab.pod("pidl")?;
    let client = lab.pod("pidc")?;
    let _nginx = Nginx::start(&server)?;
    let veth = discovery::host_veth(&server.netns)?;
    let config = CaptureConfig {
        idle_flush: Duration::from_millis(200),
        ..small_config()
    };
    let mut capture = attach(&config, &veth.name, &[80])?;
    let recorder = Recorder::start(&mut capture, 1000)?;

    // Read the whole response, stay connected for 800 ms (4 idle periods), then close.
    let script = format!(
        "import socket, time\n\
         s = socket.create_connection(('{ip}', 80), timeout=5)\n\
         s.sendall(b'GET /big.bin HTTP/1.1\\r\\nHost: pod\\r\\n\\r\\n')\n\
         buf = b''\n\
         deadline = time.time() + 5\n\
         while time.time() < deadline:\n\
         \x20   d = s.recv(65536)\n\
         \x20   if not d: break\n\
         \x20   buf += d\n\
         \x20   h = buf.find(b'\\r\\n\\r\\n')\n\
         \x20   if h >= 0 and len(buf) - h - 4 >= {big}: break\n\
         time.sleep(0.8)\n\
         s.close()\n",
        ip = server.ipv4,
        big = BIG_BYTES
    );
    run_in(&client.netns, &["python3", "-c", &script])?;
    std::thread::sleep(Duration::from_millis(400));
    let (stats, records) = recorder.stop()?;
    let mut responses = Vec::new();
    for r in records {
        if let Some(record::Kind::Message(m)) = r.kind {
            if m.index == 1 {
                responses.push(m);
            }
        }
    }
    eprintln!("event loop: {stats:?}");
    let summary: Vec<(u64, u32, bool)> = responses
        .iter()
        .map(|m| (m.bytes, m.packets, m.partial))
        .collect();
    eprintln!("response records (bytes, packets, partial): {summary:?}");
    assert_eq!(
        responses.len(),
        1,
        "one response record expected (flushed, then confirmed unchanged by FIN), got {summary:?}"
    );
    assert!(
        responses[0].partial,
        "the idle flush marks the record partial: {summary:?}"
    );
    assert!(
        responses[0].bytes >= BIG_BYTES as u64,
        "flushed counters must come from the kernel map (whole body), got {} bytes",
        responses[0].bytes
    );
    assert_eq!(
        stats.assembler.partial_flushes, 1,
        "exactly one idle flush: {stats:?}"
    );
    Ok(())
}

/// Compiles `bpf/testing/drop_payload.bpf.c` and attaches it to `ifname`'s egress (TCX): it
/// drops the 4th, 8th and 12th payload packet from port 80. Dropping the returned `Ebpf`
/// detaches it.
fn attach_dropper(ifname: &str, dir: &std::path::Path) -> Result<aya::Ebpf> {
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bpf/testing/drop_payload.bpf.c");
    let obj = dir.join("drop_payload.bpf.o");
    let multiarch = String::from_utf8_lossy(&run("gcc", &["-print-multiarch"])?.stdout)
        .trim()
        .to_owned();
    run(
        "clang",
        &[
            "-O2",
            "-g",
            "-target",
            "bpf",
            &format!("-I/usr/include/{multiarch}"),
            "-c",
            &src.display().to_string(),
            "-o",
            &obj.display().to_string(),
        ],
    )?;
    let mut ebpf = aya::Ebpf::load_file(&obj)?;
    let prog: &mut aya::programs::SchedClassifier = ebpf
        .program_mut("drop_payload")
        .context("drop_payload program")?
        .try_into()?;
    prog.load()?;
    prog.attach(ifname, aya::programs::TcAttachType::Egress)?;
    Ok(ebpf)
}

/// Lost segments make the server retransmit: the bytes of the response must still be counted
/// once (exactly the header plus the 1 MiB body curl received), with retransmits counted apart.
#[test]
fn retransmitted_bytes_are_counted_once() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new()?;
    let server = lab.pod("prtx")?;
    let client = lab.pod("prtc")?;
    let _nginx = Nginx::start(&server)?;
    let veth = discovery::host_veth(&server.netns)?;
    let mut capture = attach(&small_config(), &veth.name, &[80])?;
    // Losses happen after our observation point (on the way into the client pod), so the
    // server's veth sees every original segment and every retransmission.
    let tmp = tempfile::tempdir()?;
    let dropper = attach_dropper(&client.host_veth, tmp.path())?;
    let recorder = Recorder::start(&mut capture, 1000)?;

    let url = format!("http://{}/big.bin", server.ipv4);
    let headers = run_in(
        &client.netns,
        &[
            "curl",
            "-fsS",
            "--http1.1",
            "--max-time",
            "20",
            "-D",
            "/dev/stdout",
            "-o",
            "/dev/null",
            &url,
        ],
    )?
    .stdout;
    let dropped: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(dropper.map("seen").context("seen map")?)?;
    let dropped = dropped.get(&1, 0)?;
    std::thread::sleep(Duration::from_millis(500));
    let (stats, records) = recorder.stop()?;
    let kernel = capture.kernel_stats()?;
    drop(dropper);
    let flows = flows_of(&records, &client.ipv4.octets());
    let Some(flow) = flows.values().next() else {
        bail!("no flow captured: {records:?}")
    };
    let Some(resp) = flow.messages.get(&1) else {
        bail!("no response message: {flow:?}")
    };
    let expected = (headers.len() + BIG_BYTES) as u64;
    eprintln!(
        "dropped {dropped} segments; response bytes={} (expected {expected}) packets={} retransmits={}; \
         kernel retransmit_packets={}; loop {stats:?}",
        resp.bytes,
        resp.packets,
        resp.retransmits,
        kernel.get("retransmit_packets").copied().unwrap_or(0)
    );
    assert_eq!(
        dropped, 3,
        "the dropper must have dropped 3 segments for this test to mean anything"
    );
    assert_eq!(
        resp.bytes, expected,
        "response bytes must be header ({}) + body ({BIG_BYTES}) exactly, retransmissions not counted twice",
        headers.len()
    );
    assert!(
        resp.retransmits > 0,
        "the response must count its retransmissions, got {}",
        resp.retransmits
    );
    assert!(
        kernel.get("retransmit_packets").copied().unwrap_or(0) > 0,
        "the kernel counter of retransmitted packets must move: {kernel:?}"
    );
    assert_eq!(
        flow.messages.len(),
        2,
        "a retransmission never starts a message: {:?}",
        flow.messages.keys()
    );
    Ok(())
}

/// Segments of one message can reach the hook out of order (a flow's packets are processed on
/// several CPUs at once): a segment overtaken by a later one is not a retransmission, and the
/// message's bytes are all its bytes. Hand-made segments on the server pod's veth: a request,
/// then a 400-byte response whose third segment arrives before its second, then the next
/// request, which closes the response.
#[test]
fn overtaken_segments_are_counted_in_their_message() -> Result<()> {
    require_root()?;
    let mut lab = Lab::new()?;
    let server = lab.pod("preo")?;
    let veth = discovery::host_veth(&server.netns)?;
    // No server listens on the port: the pod's kernel never answers the hand-made segments.
    let mut capture = attach(&small_config(), &veth.name, &[8181])?;
    let recorder = Recorder::start(&mut capture, 1000)?;

    let client = "192.0.2.10:40000".to_owned();
    let srv = format!("{}:8181", server.ipv4);
    let request = r"GET /reorder HTTP/1.1\r\nHost: t\r\n\r\n";
    let request_len = request.replace(r"\r\n", "\r\n").len();
    // Towards the pod: sent on the host veth, seen by our egress program.
    inject(
        None,
        &[
            veth.name.clone(),
            client.clone(),
            srv.clone(),
            format!("1000:{request}"),
        ],
    )?;
    // From the pod: response segments 1, 3, 2, 4 of 100 bytes each.
    let head = format!(
        "HTTP/1.1 200 OK\\r\\nContent-Length: {}\\r\\n\\r\\n",
        400 - 38
    );
    let head = format!(
        "{head}{}",
        "y".repeat(100 - head.replace(r"\r\n", "\r\n").len())
    );
    inject(
        Some(&server.netns),
        &[
            "eth0".to_owned(),
            srv.clone(),
            client.clone(),
            format!("5000:{head}"),
            "5200:@100".to_owned(),
            "5100:@100".to_owned(),
            "5300:@100".to_owned(),
        ],
    )?;
    inject(
        None,
        &[
            veth.name.clone(),
            client,
            srv,
            format!("{}:{request}", 1000 + request_len),
        ],
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let (_, records) = recorder.stop()?;
    let flows = flows_of(&records, &[192, 0, 2, 10]);
    let Some(flow) = flows.values().next() else {
        bail!("no flow captured: {records:?}")
    };
    let Some(resp) = flow.messages.get(&1) else {
        bail!("no response message: {flow:?}")
    };
    assert!(
        resp.payload.starts_with(b"HTTP/1.1 200 OK"),
        "the response starts with its first segment: {resp:?}"
    );
    assert_eq!(
        (resp.bytes, resp.packets, resp.retransmits),
        (400, 3, 1),
        // On a loaded machine the idle flush may send the counters first (`partial`); they
        // are final all the same, so no later record follows.
        "(bytes, packets that advanced, overtaken) of the response: {resp:?}"
    );
    assert_eq!(
        flow.messages.len(),
        3,
        "an overtaken segment never starts a message: {flow:?}"
    );
    Ok(())
}

/// The programs' paths without a network: the probe's tc object loaded but attached nowhere, the
/// packets of keep-alive exchanges handed to it by the kernel's test run
/// (`Capture::test_run`, which `probe/examples/tc_test_run.rs` times). On a veth the socket point
/// covers, each exchange is one record of counters and timings only; on one it does not, one record
/// with both messages' first bytes. Either way each connection is made once, the counters match the
/// packets, and nothing is counted as lost; a frame of an untraced port passes without a record.
#[test]
fn test_runs_make_one_record_per_exchange_on_covered_and_copying_veths() -> Result<()> {
    use clovisor_probe::capture::raw::Event;
    use clovisor_probe::capture::synthetic::KeepAlive;
    use clovisor_probe::hooks::pod_veth::{FROM_POD, TO_POD};
    require_root()?;
    let lo = clovisor_probe::hooks::tc_attach::ifindex("lo")?;
    for covered in [true, false] {
        let mut capture = Capture::load(&small_config())?;
        capture.set_traced_ports(&BTreeMap::from([(80, ProtocolHint::Http)]))?;
        if covered {
            capture.set_covered_interfaces(&std::collections::BTreeSet::from([lo]))?;
        }
        let mut traffic = KeepAlive::new(8, 80, 100, 300);
        let mut events = Vec::new();
        for i in 0..200 {
            let (request, response) = traffic.exchange(i);
            capture.test_run(TO_POD, &request)?;
            capture.test_run(FROM_POD, &response)?;
            if i % 50 == 49 {
                events.extend(capture.drain_ring()?);
            }
        }
        // Another port, untraced: no record, no connection.
        let (other, _) = KeepAlive::new(1, 8080, 10, 10).exchange(0);
        capture.test_run(TO_POD, &other)?;
        events.extend(capture.drain_ring()?);
        assert_eq!(
            events.len(),
            200,
            "covered {covered}: one record per exchange"
        );
        let mut flows = std::collections::BTreeSet::new();
        for e in &events {
            let Event::Exchange(x) = e else {
                bail!("covered {covered}: not an exchange record: {e:?}");
            };
            flows.insert(x.flow_id);
            assert_eq!(x.counters_only, covered);
            assert_eq!((x.request.bytes, x.response.bytes), (100, 300));
            assert_eq!((x.request.packets, x.response.packets), (1, 1));
            assert!(x.response.start_ns >= x.request.start_ns);
            assert!(!x.head_lost);
            let (want_request, want_response) = if covered { (0, 0) } else { (100, 300) };
            assert_eq!(x.request_payload.len(), want_request, "covered {covered}");
            assert_eq!(x.response_payload.len(), want_response, "covered {covered}");
            assert!(x.request_payload.iter().all(|b| *b == b'a'));
        }
        assert_eq!(flows.len(), 8, "covered {covered}: one flow per connection");
        let stats = capture.kernel_stats()?;
        let stat = |name: &str| stats.get(name).copied().unwrap_or_default();
        assert_eq!(stat("events_emitted"), 200, "covered {covered}: {stats:?}");
        assert_eq!(stat("connections_created"), 8, "covered {covered}");
        assert_eq!(stat("packets_seen"), 401, "covered {covered}");
        assert_eq!(stat("packets_traced"), 400, "covered {covered}");
        for lost in [
            "ringbuf_full_drops",
            "head_not_held",
            "head_lost",
            "parse_failed",
        ] {
            assert_eq!(stat(lost), 0, "covered {covered}: {lost}");
        }
    }
    Ok(())
}
