//! `clovisor decode` run as a user runs it, on real captures (Chris Sanders' packets collection,
//! github.com/chrissanders/packets, via `shared/testdata/pcap/`): every exchange it prints must be
//! one tshark dissects from the same file, with the same addresses, method, target, host, user
//! agent, status and time (HTTP), or the same question, type, response code and answer count
//! (DNS over UDP and TCP); a damaged, cut or foreign file is reported, never a crash.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

fn testdata(name: &str) -> Result<PathBuf> {
    let dir = match std::env::var_os("CLOVISOR_TESTDATA") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"),
    };
    let file = dir.join("pcap").join(name);
    ensure!(
        file.exists(),
        "missing test capture {} (set CLOVISOR_TESTDATA)",
        file.display()
    );
    Ok(file)
}

fn clovisor(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clovisor"));
    cmd.args(args);
    cmd
}

/// The exchanges `clovisor decode` prints for `file`, each checked to be one JSON object.
fn decode(file: &Path, extra: &[&str]) -> Result<Vec<Value>> {
    let out = clovisor(&["decode"])
        .arg(file)
        .args(extra)
        .output()
        .context("running clovisor decode")?;
    ensure!(
        out.status.success(),
        "clovisor decode {} failed ({}): {}",
        file.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    lines(&out)
}

fn lines(out: &Output) -> Result<Vec<Value>> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not one JSON object: {l}")))
        .collect()
}

/// tshark's fields of the packets matching `filter`, one row per packet, values of a field
/// that occurs several times in a packet joined by `|`.
fn tshark(file: &Path, filter: &str, fields: &[&str]) -> Result<Vec<Vec<String>>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(file).args(["-Y", filter, "-T", "fields"]);
    cmd.args([
        "-E",
        "separator=\t",
        "-E",
        "aggregator=|",
        "-E",
        "occurrence=a",
    ]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().context(
        "tshark is required for this test (Debian package `tshark`, scripts/install-deps.sh)",
    )?;
    if !out.status.success() {
        bail!("tshark failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect())
}

fn unix_nanos(rfc3339: &Value) -> Result<i128> {
    let text = rfc3339.as_str().context("a time")?;
    Ok(OffsetDateTime::parse(text, &Rfc3339)
        .with_context(|| format!("time {text}"))?
        .unix_timestamp_nanos())
}

/// `1270000000.123456789` as Unix nanoseconds.
fn epoch_nanos(text: &str) -> Result<i128> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, "0"));
    let frac = format!("{frac:0<9}");
    Ok(secs.parse::<i128>()? * 1_000_000_000 + frac[..9].parse::<i128>()?)
}

/// One HTTP request tshark dissected, keyed by what identifies it in both outputs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct HttpKey {
    client: String,
    client_port: u64,
    server: String,
    server_port: u64,
    method: String,
    target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct HttpSeen {
    host: String,
    user_agent: String,
    /// `None` when tshark paired no response with the request.
    status: Option<u64>,
}

const HTTP_CAPTURES: &[&str] = &[
    "http_post.pcapng",
    "http_google.pcapng",
    "http_espn.pcapng",
    "http_ip4and6.pcapng",
    "http_dvwa_clearlogin.pcapng",
    "http_dvwa_directorytraversal.pcapng",
    "http_dvwa_sqlinjection.pcapng",
];

#[test]
fn http_exchanges_match_tshark_on_real_captures() -> Result<()> {
    for name in HTTP_CAPTURES {
        let file = testdata(name)?;
        // tshark: each request with its frame's time and the frame of its response.
        let requests = tshark(
            &file,
            "http.request",
            &[
                "frame.time_epoch",
                "ip.src",
                "ipv6.src",
                "tcp.srcport",
                "ip.dst",
                "ipv6.dst",
                "tcp.dstport",
                "http.request.method",
                "http.request.uri",
                "http.host",
                "http.user_agent",
                "http.response_in",
            ],
        )?;
        let responses = tshark(
            &file,
            "http.response",
            &["frame.number", "http.response.code"],
        )?;
        let codes: BTreeMap<String, u64> = responses
            .iter()
            .filter_map(|r| {
                Some((
                    r.first()?.clone(),
                    r.get(1)?.split('|').next()?.parse().ok()?,
                ))
            })
            .collect();
        let mut want: BTreeMap<HttpKey, Vec<(HttpSeen, i128)>> = BTreeMap::new();
        for r in &requests {
            let f = |i: usize| r.get(i).map(String::as_str).unwrap_or("");
            // One request per frame in these captures (no pipelining): say so if that changes.
            ensure!(
                !f(7).contains('|'),
                "{name}: several requests in one frame: {r:?}"
            );
            let key = HttpKey {
                client: format!("{}{}", f(1), f(2)),
                client_port: f(3).parse()?,
                server: format!("{}{}", f(4), f(5)),
                server_port: f(6).parse()?,
                method: f(7).to_owned(),
                target: f(8).to_owned(),
            };
            let seen = HttpSeen {
                host: f(9).to_owned(),
                user_agent: f(10).to_owned(),
                status: codes.get(f(11)).copied(),
            };
            want.entry(key)
                .or_default()
                .push((seen, epoch_nanos(f(0))?));
        }
        ensure!(!want.is_empty(), "tshark found no HTTP request in {name}");

        let sessions = decode(&file, &["--port", "80", "--snaplen", "4096"])?;
        let mut got: BTreeMap<HttpKey, Vec<(HttpSeen, i128, i128)>> = BTreeMap::new();
        for s in &sessions {
            let h = &s["http"];
            ensure!(
                h.is_object(),
                "{name}: an exchange without HTTP fields: {s:#}"
            );
            assert_eq!(s["protocol"], "http/1.1", "{name}: {s:#}");
            assert_eq!(s["observations"][0]["point"], "node", "{name}: {s:#}");
            assert_eq!(s["observations"][0]["interface"], *name, "{name}: {s:#}");
            let str_of = |v: &Value| v.as_str().unwrap_or("").to_owned();
            let target = match h["query"].as_str() {
                Some(q) => format!("{}?{q}", str_of(&h["path"])),
                None => str_of(&h["path"]),
            };
            let key = HttpKey {
                client: str_of(&s["client"]["ip"]),
                client_port: s["client"]["port"].as_u64().context("client port")?,
                server: str_of(&s["server"]["ip"]),
                server_port: s["server"]["port"].as_u64().context("server port")?,
                method: str_of(&h["method"]),
                target,
            };
            let seen = HttpSeen {
                host: str_of(&h["host"]),
                user_agent: str_of(&h["user_agent"]),
                status: h["status_code"].as_u64(),
            };
            let (start, end) = (unix_nanos(&s["start_time"])?, unix_nanos(&s["end_time"])?);
            assert_eq!(
                s["duration_ns"].as_i64().map(i128::from),
                Some(end - start),
                "{name}: {s:#}"
            );
            got.entry(key).or_default().push((seen, start, end));
        }
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{name}: the requests (left: clovisor decode, right: tshark)"
        );
        for (key, theirs) in &want {
            let ours = &got[key];
            assert_eq!(ours.len(), theirs.len(), "{name}: {key:?} seen as often");
            let mut ours_seen: Vec<_> = ours.iter().map(|o| o.0.clone()).collect();
            let mut theirs_seen: Vec<_> = theirs.iter().map(|t| t.0.clone()).collect();
            // Where tshark paired no response (a body it could not reassemble), ours may have
            // read the status from the head: compare statuses tshark has.
            for (o, t) in ours_seen.iter_mut().zip(theirs_seen.iter_mut()) {
                if t.status.is_none() {
                    o.status = None;
                }
            }
            ours_seen.sort();
            theirs_seen.sort();
            assert_eq!(ours_seen, theirs_seen, "{name}: {key:?} (left: ours)");
            // The frame tshark shows the request in lies within the exchange's time.
            for (_, at) in theirs {
                assert!(
                    ours.iter().any(|(_, start, end)| start <= at && at <= end),
                    "{name}: {key:?}: tshark's request frame at {at} in no exchange's time: {ours:?}"
                );
            }
        }
    }
    Ok(())
}

/// The number a DNS label (`NXDOMAIN`, `AAAA`, `TYPE65`) stands for.
fn number(label: &Value, label_of: fn(u32) -> String) -> Option<u32> {
    let label = label.as_str()?;
    (0..=u32::from(u16::MAX)).find(|&n| label_of(n) == label)
}

#[test]
fn dns_exchanges_match_tshark_on_real_captures() -> Result<()> {
    for name in [
        "dns_query_response.pcapng",
        "dns_query_nonexistent.pcapng",
        "dns_tcp.pcapng",
        "udp_dnsrequest.pcapng",
        "dns_lab.pcapng",
    ] {
        let file = testdata(name)?;
        // tshark: every query and answer, by id, with its question (an answer repeats it).
        let messages = tshark(
            &file,
            "dns",
            &[
                "dns.id",
                "dns.flags.response",
                "dns.qry.name",
                "dns.qry.type",
                "dns.flags.rcode",
                "dns.count.answers",
                "tcp.srcport",
            ],
        )?;
        type Dns = (u64, String, u64, Option<(u64, u64)>, &'static str);
        let mut answered = Vec::new();
        let mut asked = Vec::new();
        for m in &messages {
            let f = |i: usize| m.get(i).map(String::as_str).unwrap_or("");
            let id = u64::from_str_radix(f(0).trim_start_matches("0x"), 16)?;
            let transport = if f(6).is_empty() { "udp" } else { "tcp" };
            let question = (id, f(2).to_owned(), f(3).parse::<u64>()?, transport);
            if f(1) == "1" || f(1) == "True" {
                answered.push((question, (f(4).parse()?, f(5).parse()?)));
            } else {
                asked.push(question);
            }
        }
        let mut want: Vec<Dns> = answered
            .iter()
            .map(|((id, n, t, tr), a)| (*id, n.clone(), *t, Some(*a), *tr))
            .collect();
        for q in &asked {
            if !answered.iter().any(|(a, _)| a == q) {
                want.push((q.0, q.1.clone(), q.2, None, q.3));
            }
        }
        ensure!(!want.is_empty(), "tshark found no DNS query in {name}");
        let sessions = decode(&file, &[])?;
        let mut got: Vec<Dns> = Vec::new();
        for s in &sessions {
            let d = &s["dns"];
            ensure!(
                d.is_object(),
                "{name}: an exchange without DNS fields: {s:#}"
            );
            assert_eq!(s["protocol"], "dns", "{name}: {s:#}");
            let question = (
                d["id"].as_u64().context("id")?,
                d["question_name"].as_str().unwrap_or("").to_owned(),
                u64::from(
                    number(&d["question_type"], clovisor_proto::dns::type_label)
                        .with_context(|| format!("{name}: question type of {s:#}"))?,
                ),
            );
            let transport = if d["transport"] == "tcp" {
                "tcp"
            } else {
                "udp"
            };
            let answer = if s["incomplete"] == true {
                None
            } else {
                let rcode = number(&d["response_code"], clovisor_proto::dns::rcode_label)
                    .with_context(|| format!("{name}: response code of {s:#}"))?;
                Some((
                    u64::from(rcode),
                    d["answer_count"].as_u64().context("answer count")?,
                ))
            };
            got.push((question.0, question.1, question.2, answer, transport));
        }
        want.sort();
        got.sort();
        assert_eq!(got, want, "{name} (left: clovisor decode, right: tshark)");
    }
    Ok(())
}

#[test]
fn a_damaged_cut_or_foreign_file_is_reported_not_a_crash() -> Result<()> {
    let good = std::fs::read(testdata("http_google.pcapng")?)?;
    let whole = decode(&testdata("http_google.pcapng")?, &[])?;
    ensure!(!whole.is_empty(), "the intact capture decodes");
    let dir = tempfile::tempdir()?;
    let run = |bytes: &[u8]| -> Result<Output> {
        let path = dir.path().join("capture.pcapng");
        std::fs::write(&path, bytes)?;
        Ok(clovisor(&["decode"]).arg(&path).output()?)
    };

    // Cut in the middle of a block: decoded up to there, with a warning.
    let out = run(&good[..good.len() - 100])?;
    assert!(out.status.success(), "a cut capture decodes: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ends inside a block"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A damaged block length after the first packets: exit 1, saying where, with the
    // exchanges before it printed.
    let mut damaged = good.clone();
    let at = good.len() / 2;
    let epb = (at..good.len() - 4)
        .find(|&i| good[i..i + 4] == [6, 0, 0, 0])
        .context("an enhanced packet block past the middle")?;
    damaged[epb + 4..epb + 8].copy_from_slice(&7u32.to_le_bytes());
    let out = run(&damaged)?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a damaged capture fails: {err}");
    assert!(err.contains(&format!("at byte {epb}")), "says where: {err}");
    lines(&out)?;

    // Not a capture at all.
    let out = run(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a capture file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Garbage inside otherwise valid blocks: whatever the bytes, an answer and no panic (exit
    // 101) — the packets' contents are flipped, the block structure kept.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..20 {
        let mut noisy = good.clone();
        for _ in 0..200 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let i = usize::try_from(seed % good.len() as u64)?;
            if i > 200 {
                noisy[i] = (seed >> 32) as u8;
            }
        }
        let out = run(&noisy)?;
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "round {round}: exit {:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        lines(&out)?;
    }
    Ok(())
}

#[test]
fn standard_input_decodes_as_the_file_does() -> Result<()> {
    let file = testdata("http_post.pcapng")?;
    let mut child = clovisor(&["decode", "-", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(&std::fs::read(&file)?)?;
    let out = child.wait_with_output()?;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "--quiet prints no summary");
    // Ids and span ids are made per run; the rest is the same.
    let strip = |mut v: Vec<Value>| {
        for s in &mut v {
            s["id"] = Value::Null;
            s["trace"] = Value::Null;
            s["observations"][0]["interface"] = Value::Null;
        }
        v
    };
    let piped = strip(lines(&out)?);
    assert_eq!(piped.len(), 2, "{piped:#?}");
    assert_eq!(piped, strip(decode(&file, &[])?));
    Ok(())
}

/// The captures `scripts/bench.sh` section c hands the decode benchmark
/// (`collector/examples/decode_bench.rs`) for its per-protocol rows, and the ports it passes.
fn benchmark_captures() -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for name in [
        "http_espn",
        "http_google",
        "http_post",
        "http_ip4and6",
        "dns_axfr",
        "dns_lab",
        "dns_query_nonexistent",
        "dns_query_response",
        "dns_reverse_lookup",
        "dns_tcp",
    ] {
        files.push(testdata(&format!("{name}.pcapng"))?);
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for name in [
        "collector/tests/data/http2/h2c_prior.pcapng",
        "collector/tests/data/http2/h2c_upgrade.pcapng",
        "collector/tests/data/http2/grpc_unary.pcapng",
        "collector/tests/data/kafka/kafka_python.pcapng",
        "collector/tests/data/kafka/librdkafka.pcapng",
        "collector/testdata/db/redis.pcapng",
        "collector/testdata/db/postgresql.pcapng",
        "collector/testdata/db/mysql.pcapng",
    ] {
        files.push(repo.join(name));
    }
    Ok(files)
}

/// `h2c_upgrade.pcapng`'s proxy listens on 8082, beyond `clovisor decode`'s default ports.
const BENCHMARK_EXTRA_PORT: u16 = 8082;

/// The benchmark's row of an exchange `clovisor decode` printed (`replay::by_protocol::row`).
fn benchmark_row(exchange: &Value) -> Result<String> {
    let protocol = exchange["protocol"]
        .as_str()
        .context("an exchange without a protocol")?;
    Ok(match protocol {
        "http/1.0" | "http/1.1" => "http/1".to_owned(),
        "dns" => format!(
            "dns/{}",
            exchange["dns"]["transport"]
                .as_str()
                .context("a DNS exchange without its transport")?
        ),
        other => other.to_owned(),
    })
}

/// The decode benchmark's per-protocol exchange counts (what it times, and divides by the CPU
/// time) are the exchanges `clovisor decode` prints for the same captures, protocol by protocol,
/// every protocol the issue lists is among them, and each protocol's flows replayed alone (as
/// the benchmark times them) yield exactly its exchanges: the figure cannot measure nothing.
#[test]
fn decode_benchmark_counts_by_protocol_match_decode() -> Result<()> {
    use clovisor_collector::replay::pcap::{replay_file, ReplayConfig};
    use clovisor_collector::replay::{by_protocol, sessions, DECODE_PORTS};

    let mut ports: Vec<u16> = DECODE_PORTS.to_vec();
    ports.push(BENCHMARK_EXTRA_PORT);
    let port_arg = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let config = ReplayConfig::decode(&ports, 1024, "bench".to_owned());
    let mut printed: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut benchmark: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for file in benchmark_captures()? {
        for exchange in decode(&file, &["--port", &port_arg])? {
            let row = printed.entry(benchmark_row(&exchange)?).or_default();
            row.0 += 1;
            row.1 += u64::from(exchange["incomplete"] == Value::Bool(false));
        }
        let records = replay_file(&file, &config)
            .with_context(|| format!("replaying {}", file.display()))?
            .records;
        let all = sessions(records.clone());
        let counts = by_protocol::count(&all);
        for (name, c) in &counts {
            let row = benchmark.entry((*name).to_owned()).or_default();
            row.0 += c.exchanges;
            row.1 += c.complete;
        }
        for (name, group) in by_protocol::split(records, &all) {
            let alone = by_protocol::count(&sessions(group));
            let want: BTreeMap<&str, by_protocol::Count> =
                counts.get(name).map(|c| (name, *c)).into_iter().collect();
            ensure!(
                alone == want,
                "{}: the flows of {name} alone yield {alone:?}, not {want:?}",
                file.display()
            );
        }
    }
    assert_eq!(benchmark, printed);
    for row in [
        "http/1",
        "http/2",
        "grpc",
        "dns/udp",
        "dns/tcp",
        "redis",
        "postgresql",
        "mysql",
        "kafka",
    ] {
        ensure!(
            printed.get(row).is_some_and(|c| c.1 > 0),
            "no complete {row} exchange in the benchmark's captures: {printed:?}"
        );
    }
    Ok(())
}
