//! Kafka end to end, for real: a Kafka broker (Tansu, Kafka-compatible; Apache Kafka's jars
//! cannot be installed here) in one namespace pod, kafka-python (Debian `python3-kafka`) in
//! another creating a topic, producing a record, reading it back and creating the topic again,
//! `clovisor all-in-one` tracing the broker's pod with real BPF programs while dumpcap captures
//! its veth. The requests come out of the REST API as Kafka sessions with their API, client id,
//! topic and error (TOPIC_ALREADY_EXISTS for the second CreateTopics), spans follow the messaging
//! conventions, the RED metrics count by API and error, and `clovisor decode` on the capture prints
//! the same exchanges.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use clovisor_correlator::testing::{string_attribute, OtlpReceiver};
use clovisor_integration_tests::decode::{assert_same_exchanges, decode_capture, started_since};
use clovisor_integration_tests::dumpcap::Dumpcap;
use clovisor_integration_tests::kafka::{client_session, Broker, KAFKA_PORT};
use clovisor_integration_tests::{wait_for, AllInOne, Lab};
use serde_json::Value;

fn kafka(s: &Value) -> &Value {
    &s["kafka"]
}

fn find<'a>(sessions: &'a [Value], api: &str, client: &str) -> Vec<&'a Value> {
    sessions
        .iter()
        .filter(|s| kafka(s)["api_name"] == api && kafka(s)["client_id"] == client)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_requests_become_sessions_end_to_end() -> Result<()> {
    let otlp = OtlpReceiver::start().await?;
    let mut lab = Lab::new()?;
    let client = lab.pod("kcli")?;
    let server = lab.pod("ksrv")?;
    let broker = Broker::start(&server)?;
    let clovisor = AllInOne::start(
        &["--netns", &server.netns],
        &otlp.endpoint(),
        &[&server.host_veth],
        "clovisor-kafka-e2e",
    )?;
    // Bounded in time from here (the binary is built and running, the broker up).
    let started = std::time::Instant::now();

    // The port is traced once the probe's scan has found it listening: a first session until
    // one shows (each run creates its own topic).
    let mut round = 0;
    let traced = wait_for("a traced Kafka request", Duration::from_secs(30), || {
        round += 1;
        client_session(&client, &server, &format!("warm{round}"))?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(clovisor
            .sessions()?
            .iter()
            .any(|s| s["protocol"] == "kafka"))
    });
    if let Err(e) = traced {
        bail!(
            "{e:#}\nlog:\n{}\nbroker:\n{}",
            clovisor.proc.log_text(),
            broker.log_text()
        );
    }

    let dir = tempfile::tempdir()?;
    let pcap = dir.path().join("kafka.pcapng");
    let capture = Dumpcap::start(&server.host_veth, &pcap, &dir.path().join("dumpcap.log"))?;
    std::thread::sleep(Duration::from_millis(300));
    let since = i128::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos())?;
    let steps = client_session(&client, &server, "orders")?;
    assert_eq!(
        steps.lines().collect::<Vec<_>>(),
        [
            "create ok",
            "produce ok",
            "fetch ok",
            "create-again TopicAlreadyExistsError"
        ],
        "what the client saw"
    );
    std::thread::sleep(Duration::from_millis(300));
    capture.stop()?;

    let measured = |seen: &[Value]| -> Vec<Value> {
        started_since(seen, since)
            .into_iter()
            .filter(|s| s["protocol"] == "kafka")
            .collect()
    };
    let mut seen = Vec::new();
    let all = wait_for("the Kafka sessions", Duration::from_secs(20), || {
        seen = measured(&clovisor.sessions()?);
        Ok(find(&seen, "CreateTopics", "clv-admin").len() >= 2
            && !find(&seen, "Produce", "clv-producer").is_empty()
            && !find(&seen, "Fetch", "clv-consumer").is_empty())
    });
    if let Err(e) = all {
        bail!(
            "{e:#}\nsessions: {seen:#?}\nlog:\n{}",
            clovisor.proc.log_text()
        );
    }

    let produce = find(&seen, "Produce", "clv-producer")[0];
    assert_eq!(kafka(produce)["topic"], "orders", "{produce:#}");
    assert_eq!(kafka(produce)["error_name"], "NONE", "{produce:#}");
    assert_eq!(produce["incomplete"], false, "{produce:#}");
    assert_eq!(produce["server"]["port"], KAFKA_PORT, "{produce:#}");
    assert_eq!(
        produce["server"]["pod"],
        server.netns.as_str(),
        "{produce:#}"
    );
    let fetch = find(&seen, "Fetch", "clv-consumer")[0];
    assert_eq!(kafka(fetch)["topic"], "orders", "{fetch:#}");
    let mut creates: Vec<&Value> = find(&seen, "CreateTopics", "clv-admin");
    creates.sort_by_key(|s| s["start_time"].as_str().unwrap_or("").to_owned());
    assert_eq!(
        creates
            .iter()
            .map(|s| kafka(s)["error_name"].as_str().unwrap_or(""))
            .collect::<Vec<_>>(),
        ["NONE", "TOPIC_ALREADY_EXISTS"],
        "{creates:#?}"
    );

    // The capture decodes to the same exchanges.
    let (decoded, summary) = decode_capture(&pcap, &KAFKA_PORT.to_string())?;
    let decoded = measured(&decoded);
    let compared = assert_same_exchanges(&seen, &server.host_veth, &decoded, "kafka.pcapng")
        .map_err(|e| e.context(summary.clone()))?;
    ensure!(compared >= 4, "{compared} exchanges compared\n{summary}");

    // Metrics: by API and error, never by topic.
    let series =
        "clovisor_kafka_requests_total{api=\"CreateTopics\",error=\"TOPIC_ALREADY_EXISTS\",";
    let mut metrics = String::new();
    wait_for("the Kafka error counted", Duration::from_secs(15), || {
        metrics = clovisor.metrics_text()?;
        Ok(metrics.lines().any(|l| l.starts_with(series)))
    })
    .with_context(|| format!("{series} in {metrics}"))?;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("clovisor_kafka") && l.contains("orders")),
        "a topic became a label"
    );

    // Spans: the messaging conventions.
    let wanted = |spans: &[opentelemetry_proto::tonic::trace::v1::Span]| {
        spans.iter().any(|s| s.name == "send orders")
            && spans.iter().any(|s| {
                string_attribute(s, "error.type").as_deref() == Some("TOPIC_ALREADY_EXISTS")
            })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut spans = otlp.spans();
    while !wanted(&spans) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        spans = otlp.spans();
    }
    let send = spans
        .iter()
        .find(|s| s.name == "send orders")
        .with_context(|| format!("no `send orders` span in {spans:#?}"))?;
    for (key, want) in [
        ("messaging.system", "kafka"),
        ("messaging.operation.name", "send"),
        ("messaging.operation.type", "send"),
        ("messaging.destination.name", "orders"),
        ("messaging.client.id", "clv-producer"),
    ] {
        assert_eq!(string_attribute(send, key).as_deref(), Some(want), "{key}");
    }
    let failed = spans
        .iter()
        .find(|s| string_attribute(s, "error.type").as_deref() == Some("TOPIC_ALREADY_EXISTS"))
        .with_context(|| format!("no failed CreateTopics span in {spans:#?}"))?;
    assert_eq!(failed.name, "CreateTopics");
    otlp.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "bounded in time: {:?}",
        started.elapsed()
    );
    Ok(())
}
