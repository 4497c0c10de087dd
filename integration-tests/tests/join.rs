//! One session per exchange, for real: namespace pods on a bridge, both ends traced by
//! `clovisor all-in-one` with real BPF programs — the socket point's syscall hooks and the tc
//! programs on the pods' veths — and a host outside the node behind an uplink veth traced as a
//! node interface. Each request must come out of the REST API once, with one observation per
//! point it crossed (client socket, client veth, node interface, server veth, server socket),
//! and as exactly one span (and, seen at both ends, its caller's CLIENT span).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clovisor_correlator::testing::OtlpReceiver;
use clovisor_integration_tests::api::{points, sample, Point};
use clovisor_integration_tests::http_client::{curl, curl_keep_alive};
use clovisor_integration_tests::{wait_for, AllInOne, Lab, Nginx, Pod, Proc};
use opentelemetry_proto::tonic::common::v1::any_value::Value as OtelValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::Value;

/// The `t` query parameter every request of these tests carries, which tells them apart.
fn tag(s: &Value) -> Option<String> {
    let query = s["http"]["query"].as_str()?;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("t="))
        .map(str::to_owned)
}

fn span_tag(span: &Span) -> Option<String> {
    span.attributes.iter().find_map(|kv| {
        if kv.key != "url.query" {
            return None;
        }
        match kv.value.as_ref()?.value.as_ref()? {
            OtelValue::StringValue(q) => q
                .split('&')
                .find_map(|p| p.strip_prefix("t="))
                .map(str::to_owned),
            _ => None,
        }
    })
}

/// Waits until the REST API holds a session for every tag in `tags` with `observations`
/// points each; returns the sessions by tag (failing on a tag seen twice).
fn wait_joined(
    clovisor: &AllInOne,
    tags: &[String],
    observations: usize,
) -> Result<BTreeMap<String, Value>> {
    let mut last = Vec::new();
    let done = wait_for("every exchange joined", Duration::from_secs(20), || {
        last = clovisor.sessions()?;
        Ok(tags.iter().all(|t| {
            last.iter()
                .any(|s| tag(s).as_deref() == Some(t) && points(s).len() >= observations)
        }))
    });
    if let Err(e) = done {
        bail!(
            "{e:#}\nsessions: {}\nlog:\n{}",
            serde_json::to_string_pretty(&last)?,
            clovisor.proc.log_text()
        );
    }
    let mut by_tag = BTreeMap::new();
    for s in last {
        let t = tag(&s).with_context(|| format!("a session without a tag: {s:#}"))?;
        if let Some(prev) = by_tag.insert(t.clone(), s.clone()) {
            bail!("exchange {t} shown twice:\n{prev:#}\n{s:#}");
        }
    }
    Ok(by_tag)
}

/// Waits for the spans of every tag, then a little longer, and checks each exchange is exactly
/// one span — SERVER when a point at the server saw it, else CLIENT — plus, when it was seen at
/// both ends, exactly one CLIENT span of the calling side, parent of the SERVER span (the
/// caller's service to the server's in Jaeger). Returns the exchange spans.
async fn one_span_each(otlp: &OtlpReceiver, tags: &[String]) -> Result<Vec<Span>> {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    let spans = otlp
        .wait_for_spans(tags.len(), Duration::from_secs(20))
        .await;
    // A second span for an exchange would come within the join window (1 s) of the first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = if spans.len() >= tags.len() {
        otlp.spans()
    } else {
        spans
    };
    let mut exchange_spans = Vec::new();
    for t in tags {
        let of_tag: Vec<&Span> = spans
            .iter()
            .filter(|s| span_tag(s).as_deref() == Some(t))
            .collect();
        let servers: Vec<&&Span> = of_tag
            .iter()
            .filter(|s| s.kind == SpanKind::Server as i32)
            .collect();
        let clients: Vec<&&Span> = of_tag
            .iter()
            .filter(|s| s.kind == SpanKind::Client as i32)
            .collect();
        match (servers.as_slice(), clients.as_slice()) {
            ([server], [caller]) => {
                assert_eq!(
                    server.parent_span_id, caller.span_id,
                    "exchange {t}: the caller's CLIENT span is the SERVER span's parent"
                );
                exchange_spans.push((**server).clone());
            }
            ([server], []) => exchange_spans.push((**server).clone()),
            ([], [client]) => exchange_spans.push((**client).clone()),
            _ => bail!(
                "exchange {t} must be one span (and its caller's), saw {} SERVER and {} CLIENT",
                servers.len(),
                clients.len()
            ),
        }
        assert_eq!(
            of_tag.len(),
            servers.len() + clients.len(),
            "{t}: {of_tag:#?}"
        );
    }
    assert!(
        spans.len() <= 2 * tags.len(),
        "no span beyond one per exchange and its caller's: {:?}",
        spans.iter().map(span_tag).collect::<Vec<_>>()
    );
    Ok(exchange_spans)
}

/// The four points of a call from `client_comm` in `client` to nginx in `server`, in path order.
fn four_points(client: &Pod, client_comm: &str, server: &Pod) -> Vec<Point> {
    vec![
        Point::new("socket", client_comm, "client"),
        Point::new("pod", &client.host_veth, "client"),
        Point::new("pod", &server.host_veth, "server"),
        Point::new("socket", "nginx", "server"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_between_two_traced_pods_is_one_session_seen_at_four_points() -> Result<()> {
    let otlp = OtlpReceiver::start().await?;
    let mut lab = Lab::new()?;
    let client = lab.pod("jcli")?;
    let server = lab.pod("jsrv")?;
    let _nginx = Nginx::start(&server)?;
    let clovisor = AllInOne::start(
        &[
            "--netns",
            &client.netns,
            "--netns",
            &server.netns,
            "--node-interfaces",
            "none",
        ],
        &otlp.endpoint(),
        &[&client.host_veth, &server.host_veth],
        "clovisor-join-pods",
    )?;

    let v4 = format!("http://{}", server.ipv4);
    curl(&client, &format!("{v4}/?t=single"))?;
    curl(&client, &format!("http://[{}]/?t=ipv6", server.ipv6))?;
    // Three requests on one keep-alive connection: one client port, three sequence numbers.
    curl_keep_alive(
        &client,
        &[
            format!("{v4}/index.html?t=ka1"),
            format!("{v4}/index.html?t=ka2"),
            format!("{v4}/missing?t=ka3"),
        ],
    )?;
    let tags: Vec<String> = ["single", "ipv6", "ka1", "ka2", "ka3"]
        .map(str::to_owned)
        .to_vec();
    let seen = wait_joined(&clovisor, &tags, 4)?;
    assert_eq!(seen.len(), tags.len(), "one session per request: {seen:#?}");
    for (t, s) in &seen {
        assert_eq!(
            points(s),
            four_points(&client, "curl", &server),
            "{t}: seen at curl's socket, the client's veth, the server's, nginx's socket: {s:#}"
        );
        assert_eq!(s["client"]["pod"], client.netns.as_str(), "{t}: {s:#}");
        assert_eq!(s["server"]["pod"], server.netns.as_str(), "{t}: {s:#}");
        let obs = s["observations"].as_array().cloned().unwrap_or_default();
        for o in &obs {
            assert!(
                o["request_bytes"].as_u64().unwrap_or(0) > 0
                    && o["response_bytes"].as_u64().unwrap_or(0) > 0,
                "{t}: every point counts its bytes: {o:#}"
            );
        }
        // Each point has its own timings. The request crosses the client's veth, then the
        // server's, then nginx reads it. (curl's send is timed when the call returns, after its
        // packets crossed the local veths, so it has no place in this order. RFC 3339 with
        // fixed nanoseconds sorts as text.)
        let starts: Vec<&str> = obs
            .iter()
            .filter(|o| !(o["point"] == "socket" && o["side"] == "client"))
            .filter_map(|o| o["request_start"].as_str())
            .collect();
        assert!(
            starts.len() == 3 && starts.windows(2).all(|w| w[0] <= w[1]),
            "{t}: client veth, server veth, nginx in time order: {starts:?}"
        );
        // One TCP sequence space: every point names the request's first byte alike.
        let seqs: Vec<&Value> = obs.iter().map(|o| &o["request_tcp_seq"]).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] == w[1]),
            "{t}: one sequence number at every point: {seqs:?}"
        );
        for o in obs.iter().filter(|o| o["point"] == "socket") {
            assert!(
                o["pid"].as_u64().is_some_and(|p| p > 1)
                    && o["netns_inode"].as_u64().is_some_and(|n| n > 0),
                "{t}: a socket names its process and namespace: {o:#}"
            );
        }
    }
    assert_eq!(
        seen["ka1"]["client"]["port"], seen["ka3"]["client"]["port"],
        "keep-alive requests share a connection"
    );

    let spans = one_span_each(&otlp, &tags).await?;
    for span in &spans {
        let interfaces: Vec<String> = span
            .events
            .iter()
            .filter(|e| e.name == "request.start")
            .flat_map(|e| e.attributes.iter())
            .filter(|kv| kv.key == "clovisor.observation.interface")
            .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                OtelValue::StringValue(v) => Some(v.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            interfaces,
            [client.host_veth.clone(), server.host_veth.clone()],
            "per-point timings as span events: {span:?}"
        );
        let commands: Vec<String> = span
            .events
            .iter()
            .filter(|e| e.name == "request.start")
            .flat_map(|e| e.attributes.iter())
            .filter(|kv| kv.key == "process.command")
            .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                OtelValue::StringValue(v) => Some(v.clone()),
                _ => None,
            })
            .collect();
        // Span events are in time order, and a socket times a send when the call returns:
        // curl's may come after nginx has read the request.
        let mut commands = commands;
        commands.sort();
        assert_eq!(
            commands,
            ["curl", "nginx"],
            "the sockets' timings as span events, with their process: {span:?}"
        );
    }
    let metrics = clovisor.metrics_text()?;
    // Three views joined to the first of each of five exchanges: carried in their socket's
    // messages (a covered veth's), by the collector's local join (one probe saw all four
    // points) or, when a view came later than the one it waited for, by the correlator's.
    let joined = sample(
        &metrics,
        r#"clovisor_correlator_join_observations_total{outcome="joined"}"#,
    )
    .unwrap_or(0.0);
    let merged = sample(&metrics, "clovisor_collector_views_merged_total").unwrap_or(0.0);
    let carried = sample(&metrics, "clovisor_collector_veth_views_carried_total").unwrap_or(0.0);
    assert!(
        joined + merged + carried == 15.0 && merged > 0.0 && carried == 10.0,
        "15 views joined, {carried} carried in their socket's messages (10 unless the probe found no BPF filesystem to share its connection map through: see its log), {merged} joined in the collector, {joined} in the correlator:\n{metrics}"
    );
    assert!(
        metrics.contains(r#"clovisor_correlator_exchange_points_total{points="4"} 5"#),
        "five exchanges of four points each:\n{metrics}"
    );
    // Three connections (two single requests, one keep-alive), each seen closing at all four
    // points, and the sockets' kernels measured their RTT.
    let pair = format!(
        r#"client_namespace="unknown",client_workload="{}",server_namespace="unknown",server_workload="{}""#,
        client.netns, server.netns
    );
    let scraped = wait_for(
        "connection ends at all four points",
        Duration::from_secs(10),
        || {
            let m = clovisor.metrics_text()?;
            Ok([
                "client_socket",
                "client_veth",
                "server_veth",
                "server_socket",
            ]
            .iter()
            .all(|at| {
                m.lines().any(|l| {
                    l.starts_with("clovisor_flow_connections_total{")
                        && l.contains(&pair)
                        && l.contains(&format!(r#"observed_at="{at}""#))
                        && l.ends_with(" 3")
                })
            }))
        },
    );
    let metrics = clovisor.metrics_text()?;
    if let Err(e) = scraped {
        bail!("{e:#}\n{metrics}");
    }
    for at in ["client_socket", "server_socket"] {
        let count = format!(r#"clovisor_flow_rtt_seconds_count{{{pair},observed_at="{at}"}} 3"#);
        assert!(
            metrics.contains(&count),
            "RTT of three connections at the {at}: {count}\n{metrics}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_a_host_outside_the_node_is_seen_at_the_socket_veth_and_uplink() -> Result<()> {
    let otlp = OtlpReceiver::start().await?;
    let mut lab = Lab::new()?;
    let client = lab.pod("jout")?;
    // Not traced: its traffic crosses the same uplink and must be ignored there.
    let untraced = lab.pod("jnot")?;
    let outside = lab.outside_host()?;
    let _nginx = Nginx::start(&outside.host)?;
    let clovisor = AllInOne::start(
        &[
            "--netns",
            &client.netns,
            "--node-interface",
            &outside.uplink,
            // Nothing listens on 80 inside the traced pod: trace the outside server's port.
            "--port",
            "80",
        ],
        &otlp.endpoint(),
        &[&client.host_veth, &outside.uplink],
        "clovisor-join-uplink",
    )?;
    let inspect = Command::new(clovisor_integration_tests::clovisor_bin()?)
        .arg("inspect")
        .output()?;
    let listing = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with(&outside.uplink) && l.contains("ingress:clovisor_node_i")),
        "clovisor inspect shows the node interface (the kernel keeps 15 characters of a name):\n{listing}"
    );

    let base = format!("http://{}", outside.host.ipv4);
    curl(&client, &format!("{base}/?t=out1"))?;
    curl(&untraced, &format!("{base}/?t=untraced"))?;
    curl(&client, &format!("{base}/missing?t=out2"))?;
    let tags: Vec<String> = ["out1", "out2"].map(str::to_owned).to_vec();
    let seen = wait_joined(&clovisor, &tags, 3)?;
    assert_eq!(
        seen.len(),
        2,
        "one session per request of the traced pod, none of the untraced one: {seen:#?}"
    );
    for (t, s) in &seen {
        assert_eq!(
            points(s),
            vec![
                Point::new("socket", "curl", "client"),
                Point::new("pod", &client.host_veth, "client"),
                Point::new("node", &outside.uplink, ""),
            ],
            "{t}: seen at curl's socket, the client's veth, then the uplink: {s:#}"
        );
        assert_eq!(s["client"]["pod"], client.netns.as_str(), "{t}: {s:#}");
        assert_eq!(
            s["server"]["ip"],
            outside.host.ipv4.to_string(),
            "{t}: {s:#}"
        );
    }
    assert_eq!(seen["out2"]["http"]["status_code"], 404);
    let spans = one_span_each(&otlp, &tags).await?;
    for span in &spans {
        assert!(
            format!("{:?}", span.attributes).contains(&outside.uplink),
            "the span names the node interface: {span:?}"
        );
    }
    let metrics = clovisor.metrics_text()?;
    assert!(
        metrics.contains("clovisor_probe_node_interfaces 1"),
        "one node interface attached:\n{metrics}"
    );
    // All-in-one pods have no Kubernetes namespace; the outside host is no monitored pod.
    let flow = format!(
        r#"clovisor_flow_exchanges_total{{client_namespace="unknown",client_workload="{}",server_namespace="outside",server_workload="outside"}} 2"#,
        client.netns
    );
    assert!(
        metrics.contains(&flow),
        "two exchanges from the pod to the outside:\n{metrics}"
    );
    drop(clovisor);
    // SIGKILL above: TCX links die with the process, nothing of ours stays on the uplink.
    wait_for(
        "the uplink to be clean after the probe died",
        Duration::from_secs(5),
        || Ok(clovisor_integration_tests::our_programs_on(&outside.uplink)?.is_empty()),
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_keep_alive_clients_never_cross_merge() -> Result<()> {
    let otlp = OtlpReceiver::start().await?;
    let mut lab = Lab::new()?;
    let a = lab.pod("jka")?;
    let b = lab.pod("jkb")?;
    let server = lab.pod("jks")?;
    let _nginx = Nginx::start(&server)?;
    let clovisor = AllInOne::start(
        &[
            "--netns",
            &a.netns,
            "--netns",
            &b.netns,
            "--netns",
            &server.netns,
            "--node-interfaces",
            "none",
        ],
        &otlp.endpoint(),
        &[&a.host_veth, &b.host_veth, &server.host_veth],
        "clovisor-join-interleaved",
    )?;
    const REQUESTS: usize = 6;
    // Each client keeps one connection and sends its requests with pauses, so the two
    // clients' exchanges interleave in time on the server's veth.
    let script = |name: &str, delay: f64| {
        format!(
            "import http.client, time\n\
             time.sleep({delay})\n\
             c = http.client.HTTPConnection('{}', 80, timeout=5)\n\
             for n in range({REQUESTS}):\n    \
                 c.request('GET', '/index.html?t={name}-%d' % n)\n    \
                 c.getresponse().read()\n    \
                 time.sleep(0.05)\n\
             c.close()\n",
            server.ipv4
        )
    };
    let mut clients = Vec::new();
    for (pod, name, delay) in [(&a, "a", 0.0), (&b, "b", 0.025)] {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pod.netns, "python3", "-c"])
            .arg(script(name, delay));
        let log = std::env::temp_dir().join(format!("join-ka-{name}-{}.log", std::process::id()));
        clients.push(Proc::spawn(cmd, log)?);
    }
    for c in &mut clients {
        let c_done = wait_for("client to finish", Duration::from_secs(15), || {
            Ok(!c.running())
        });
        if let Err(e) = c_done {
            bail!("{e:#}\n{}", c.log_text());
        }
    }
    let tags: Vec<String> = ["a", "b"]
        .iter()
        .flat_map(|c| (0..REQUESTS).map(move |n| format!("{c}-{n}")))
        .collect();
    let seen = wait_joined(&clovisor, &tags, 4)?;
    assert_eq!(seen.len(), 2 * REQUESTS, "one session per request");
    for (t, s) in &seen {
        let client = if t.starts_with('a') { &a } else { &b };
        assert_eq!(
            points(s),
            four_points(client, "python3", &server),
            "{t}: exactly its own client's socket and veth, and the server's: {s:#}"
        );
        assert_eq!(s["client"]["pod"], client.netns.as_str(), "{t}: {s:#}");
    }
    let ports: Vec<&Value> = tags
        .iter()
        .filter(|t| t.starts_with('a'))
        .map(|t| &seen[t]["client"]["port"])
        .collect();
    assert!(
        ports.windows(2).all(|w| w[0] == w[1]),
        "client a kept one connection: {ports:?}"
    );
    one_span_each(&otlp, &tags).await?;
    Ok(())
}
