use std::sync::Arc;

use clovisor_proto::capture::v1::{FlowKey, ProtocolHint};

use super::runtime::{LoadError, Module, FUEL_PER_CALL, MAX_MODULE_BYTES};
use super::*;
use crate::decode::testing::{message, Recorded};
use crate::decode::{http1, Decoders, Detected};
use crate::metrics::AnalyzerMetrics;

/// The example analyzer users copy (analyzers/line/line.wat).
const LINE: &[u8] = include_bytes!("../../../../analyzers/line/line.wat");

fn hostile(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/testdata/analyzers/{name}.wat",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn key(server_port: u32) -> FlowKey {
    FlowKey {
        server_port,
        client_port: 40000,
        ..FlowKey::default()
    }
}

fn info(key: &FlowKey) -> FlowInfo<'_> {
    FlowInfo {
        probe_id: "p",
        flow_id: 7,
        key,
        hint: ProtocolHint::Tcp,
    }
}

fn set() -> Analyzers {
    Analyzers::new(AnalyzerMetrics::default())
}

/// Runs `messages` through a fresh flow of the analyzer `name`, as the flow table would.
fn decode(set: &Analyzers, name: &str, messages: &[(Direction, &[u8])]) -> Recorded {
    let k = key(7070);
    let analyzer = set.get(name).expect("analyzer loaded");
    let mut flow = analyzer.new_flow(&info(&k));
    let mut out = Recorded::default();
    for (i, (d, bytes)) in messages.iter().enumerate() {
        let step = flow.on_message(&message(i as u32, *d, bytes), &mut out);
        out.steps.push(step);
    }
    flow.on_close(&mut out);
    out
}

fn fields(e: &Exchange) -> &HashMap<String, String> {
    match &e.fields {
        Fields::Analyzer(a) => &a.fields,
        other => panic!("expected analyzer fields, got {other:?}"),
    }
}

fn field<'a>(e: &'a Exchange, k: &str) -> &'a str {
    fields(e).get(k).map_or("", String::as_str)
}

#[test]
fn the_example_pairs_requests_and_responses_line_by_line() {
    let set = set();
    assert_eq!(set.load("line", LINE).expect("example loads"), Loaded::New);
    assert_eq!(set.get("line").and_then(|a| a.port()), Some(7070));
    let out = decode(
        &set,
        "line",
        &[
            (Direction::ClientToServer, b"GET greeting\r\n"),
            (Direction::ServerToClient, b"OK hello world\n"),
            // Pipelined: two requests in one message, two responses in the next.
            (Direction::ClientToServer, b"SET a 1\nDEL b\n"),
            (Direction::ServerToClient, b"OK\nERR no such key\n"),
            // A request whose response never comes.
            (Direction::ClientToServer, b"QUIT"),
        ],
    );
    assert_eq!(out.exchanges.len(), 4, "exchanges: {:#?}", out.exchanges);
    let e = &out.exchanges[0];
    assert_eq!(e.protocol, Protocol::Analyzer);
    assert!(!e.incomplete);
    assert_eq!(field(e, "command"), "GET");
    assert_eq!(field(e, "argument"), "greeting");
    assert_eq!(field(e, "status"), "OK");
    assert_eq!(field(e, "message"), "hello world");
    assert_eq!(field(e, "version"), "1");
    assert!(matches!(&e.fields, Fields::Analyzer(a) if a.name == "line"));
    let (set_a, del_b) = (&out.exchanges[1], &out.exchanges[2]);
    assert_eq!(
        (
            field(set_a, "command"),
            field(set_a, "argument"),
            field(set_a, "status")
        ),
        ("SET", "a 1", "OK")
    );
    assert_eq!(
        (
            field(del_b, "command"),
            field(del_b, "status"),
            field(del_b, "message")
        ),
        ("DEL", "ERR", "no such key")
    );
    assert_eq!((set_a.position, del_b.position), (0, 1));
    assert_eq!(del_b.request.bytes, set_a.request.bytes, "same message");
    assert_eq!(
        del_b.response.map(|r| r.bytes),
        Some(0),
        "counters go to the first"
    );
    let quit = &out.exchanges[3];
    assert!(quit.incomplete && quit.response.is_none());
    assert_eq!(field(quit, "command"), "QUIT");
    assert!(out.unpaired.is_empty() && out.errors.is_empty());
    assert_eq!(set.metrics().error_count("line", "trap"), 0);
}

#[test]
fn port_claims_come_before_the_built_in_decoders_and_detection_after() {
    let set = set();
    set.load("line", LINE).expect("example loads");
    set.load("trap", &hostile("trap")).expect("trap loads");
    let decoders = Decoders::new(vec![Arc::new(http1::Http1)]).with_analyzers(set.clone());
    let claimed = |port: u32, payload: &[u8]| {
        let k = key(port);
        match decoders.detect(&info(&k), &message(0, Direction::ClientToServer, payload)) {
            Detected::Claimed(d) => d.name(),
            other => panic!("port {port}: nothing claimed ({other:?})"),
        }
    };
    assert_eq!(claimed(7070, b"GET / HTTP/1.1\r\n\r\n"), "line", "its port");
    assert_eq!(claimed(80, b"GET / HTTP/1.1\r\n\r\n"), "http1");
    assert_eq!(
        claimed(80, b"HELLO\n"),
        "trap",
        "detect claims what is left"
    );
    assert_eq!(
        set.metrics().error_count("trap", "trap"),
        0,
        "detection of HTTP/1 never called the analyzers"
    );
}

#[test]
fn hostile_modules_are_contained_counted_and_switched_off() {
    for (module, reason) in [
        ("trap", "trap"),
        ("loop", "timeout"),
        ("memory", "memory"),
        ("malformed", "malformed"),
    ] {
        let set = set();
        set.load(module, &hostile(module))
            .unwrap_or_else(|e| panic!("{module} should load: {e}"));
        let started = std::time::Instant::now();
        let out = decode(
            &set,
            module,
            &[
                (Direction::ClientToServer, b"PING 1\n"),
                (Direction::ServerToClient, b"PONG 1\n"),
                (Direction::ClientToServer, b"PING 2\n"),
                (Direction::ServerToClient, b"PONG 2\n"),
            ],
        );
        let took = started.elapsed();
        eprintln!("{module}: three failing calls and the switch-off took {took:?}");
        assert_eq!(
            set.metrics().error_count(module, reason),
            u64::from(MAX_CONSECUTIVE_FAILURES),
            "{module}: {MAX_CONSECUTIVE_FAILURES} failures counted as {reason}, then no more calls"
        );
        let a = set.get(module).expect("still loaded");
        assert!(a.is_off(), "{module}: switched off");
        // The exchanges whose calls failed are kept, without fields: the first whole, the
        // second (its request parsed by the third failing call) as it was when the analyzer was
        // switched off; the flow then goes back to detection.
        assert_eq!(out.exchanges.len(), 2, "{module}: {:#?}", out.exchanges);
        assert!(out.exchanges.iter().all(|e| fields(e).is_empty()));
        assert!(!out.exchanges[0].incomplete && out.exchanges[1].incomplete);
        assert_eq!(
            out.steps,
            [
                Step::Continue,
                Step::Continue,
                Step::Continue,
                Step::Redetect
            ],
            "{module}"
        );
        assert!(
            took < std::time::Duration::from_secs(5),
            "{module}: {took:?} for three failing calls"
        );
        let k = key(1);
        assert_eq!(
            a.detect(&info(&k), &message(0, Direction::ClientToServer, b"x")),
            Detection::No,
            "{module}: an analyzer switched off claims nothing"
        );
    }
}

#[test]
fn a_fixed_module_loaded_under_the_same_name_runs_again() {
    let set = set();
    set.load("line", &hostile("trap")).expect("loads");
    let _ = decode(
        &set,
        "line",
        &[
            (Direction::ClientToServer, b"A\n"),
            (Direction::ServerToClient, b"B\n"),
            (Direction::ClientToServer, b"C\n"),
        ],
    );
    assert!(set.get("line").is_some_and(|a| a.is_off()));
    assert_eq!(set.load("line", LINE).expect("loads"), Loaded::Replaced);
    assert!(set.get("line").is_some_and(|a| !a.is_off()));
    assert_eq!(set.load("line", LINE).expect("loads"), Loaded::Unchanged);
}

#[test]
fn a_flow_keeps_its_version_for_an_open_exchange_and_takes_the_new_one_after() {
    let set = set();
    set.load("line", LINE).expect("loads");
    let v2 = String::from_utf8(LINE.to_vec()).expect("text").replace(
        r#"(data (i32.const 80) "1")"#,
        r#"(data (i32.const 80) "2")"#,
    );
    assert_ne!(
        v2.as_bytes(),
        LINE,
        "the version string is where the test expects it"
    );
    let k = key(7070);
    let mut flow = set.get("line").expect("loaded").new_flow(&info(&k));
    let mut out = Recorded::default();
    flow.on_message(&message(0, Direction::ClientToServer, b"GET a\n"), &mut out);
    assert_eq!(
        set.load("line", v2.as_bytes()).expect("v2 loads"),
        Loaded::Replaced
    );
    flow.on_message(&message(1, Direction::ServerToClient, b"OK 1\n"), &mut out);
    flow.on_message(&message(2, Direction::ClientToServer, b"GET b\n"), &mut out);
    flow.on_message(&message(3, Direction::ServerToClient, b"OK 2\n"), &mut out);
    assert!(set.unload("line"));
    let step = flow.on_message(&message(4, Direction::ClientToServer, b"GET c\n"), &mut out);
    flow.on_close(&mut out);
    let versions: Vec<&str> = out.exchanges.iter().map(|e| field(e, "version")).collect();
    assert_eq!(versions, ["1", "2"], "one exchange per version, none lost");
    assert_eq!(
        step,
        Step::Redetect,
        "unloaded: back to the built-in decoders"
    );
}

#[test]
fn modules_that_break_the_abi_are_refused_at_load_with_the_reason() {
    let cases: [(&str, &[u8]); 6] = [
        ("not wasm", b"\x00asm\x01\x00\x00\x00garbage"),
        (
            "imports",
            br#"(module (import "env" "f" (func)) (memory (export "memory") 1))"#,
        ),
        (
            "no memory",
            br#"(module (func (export "clovisor_alloc") (param i32) (result i32) (i32.const 0)))"#,
        ),
        (
            "parse of the wrong type",
            br#"(module (memory (export "memory") 1)
                 (func (export "clovisor_alloc") (param i32) (result i32) (i32.const 0))
                 (func (export "clovisor_parse") (param i32) (result i32) (i32.const 0)))"#,
        ),
        (
            "memory past the cap",
            br#"(module (memory (export "memory") 1000))"#,
        ),
        (
            "start function that loops",
            br#"(module (memory (export "memory") 1) (func $s (loop $l (br $l))) (start $s))"#,
        ),
    ];
    for (what, module) in cases {
        let set = set();
        let err = set.load("x", module).map(|_| ()).expect_err(what);
        let expected = match what {
            "not wasm" => matches!(err, LoadError::Invalid(_)),
            "imports" => matches!(err, LoadError::Imports(ref i) if i == "env.f"),
            "no memory" => matches!(err, LoadError::Export { name: "memory", .. }),
            "parse of the wrong type" => {
                matches!(
                    err,
                    LoadError::Export {
                        name: "clovisor_parse",
                        ..
                    }
                )
            }
            _ => matches!(err, LoadError::Instantiate(_)),
        };
        assert!(expected, "{what}: unexpected error {err}");
        assert!(set.names().is_empty(), "{what}: nothing loaded");
    }
    let huge = vec![0u8; MAX_MODULE_BYTES + 1];
    assert!(matches!(
        Module::compile(&huge),
        Err(LoadError::TooLarge { .. })
    ));
}

#[test]
fn a_rejected_replacement_leaves_the_running_version() {
    let set = set();
    set.load("line", LINE).expect("loads");
    assert!(set.load("line", b"(module").is_err());
    let out = decode(
        &set,
        "line",
        &[
            (Direction::ClientToServer, b"GET a\n"),
            (Direction::ServerToClient, b"OK\n"),
        ],
    );
    assert_eq!(out.exchanges.len(), 1);
    assert_eq!(field(&out.exchanges[0], "version"), "1");
}

#[test]
fn the_offline_decoder_set_takes_an_analyzer_by_name_and_bytes() {
    let decoders = Decoders::default()
        .with_analyzer("line", LINE)
        .expect("loads");
    assert_eq!(decoders.analyzers().names(), ["line"]);
    assert!(Decoders::default().with_analyzer("bad", b"nope").is_err());
}

#[test]
fn the_example_costs_a_small_fraction_of_its_fuel() {
    let mut instance = Module::compile(LINE)
        .and_then(|m| m.instantiate())
        .expect("example loads");
    // A whole 2048-byte message (the largest snaplen): one long line.
    let mut line = b"FETCH ".to_vec();
    line.resize(2047, b'x');
    line.push(b'\n');
    let r = instance.parse(b"p/1", abi::REQUEST, &line).expect("parses");
    assert_eq!((r.consumed, r.complete), (2048, true));
    let used = instance.fuel_used();
    assert!(
        used > 1000 && used < FUEL_PER_CALL / 20,
        "fuel used by the example on 2048 bytes: {used} (docs/analyzers.md quotes it)"
    );
    eprintln!("example analyzer: {used} fuel for a 2048-byte line");
}

#[test]
fn claims_between_failed_parses_do_not_keep_an_analyzer_alive() {
    let set = set();
    set.load("trap", &hostile("trap")).expect("loads");
    let decoders = Decoders::new(vec![]).with_analyzers(set.clone());
    // Flows claimed one after the other (detect succeeds), each failing its parse.
    for flow in 0..6u32 {
        let k = key(9000 + flow);
        let first = message(0, Direction::ClientToServer, b"HELLO\n");
        let Detected::Claimed(d) = decoders.detect(&info(&k), &first) else {
            assert!(
                flow >= 3,
                "flow {flow}: the analyzer stopped claiming too early"
            );
            continue;
        };
        assert!(flow < 3, "flow {flow}: claimed after being switched off");
        let mut out = Recorded::default();
        d.new_flow(&info(&k)).on_message(&first, &mut out);
    }
    assert_eq!(set.metrics().error_count("trap", "trap"), 3);
    assert!(set.get("trap").is_some_and(|a| a.is_off()));
}

#[tokio::test]
async fn module_values_are_paths_or_base64_within_the_cap() {
    use super::live::{module_bytes, SourceError};
    use base64::Engine as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("line.wat");
    std::fs::write(&path, LINE).expect("write");
    let by_path = module_bytes(&path.display().to_string()).await;
    assert_eq!(by_path.ok().as_deref(), Some(LINE));
    let inline = base64::engine::general_purpose::STANDARD.encode(LINE);
    assert_eq!(module_bytes(&inline).await.ok().as_deref(), Some(LINE));
    assert!(matches!(
        module_bytes(&dir.path().display().to_string()).await,
        Err(SourceError::NotAFile { .. })
    ));
    assert!(matches!(
        module_bytes("/no/such/module.wasm").await,
        Err(SourceError::Read { .. })
    ));
    assert!(matches!(
        module_bytes("relative/path.wasm").await,
        Err(SourceError::NotBase64(_))
    ));
    let big = dir.path().join("big.wasm");
    std::fs::write(&big, vec![0u8; MAX_MODULE_BYTES + 1]).expect("write");
    assert!(matches!(
        module_bytes(&big.display().to_string()).await,
        Err(SourceError::TooLarge { .. })
    ));
    assert!(matches!(
        module_bytes(&"A".repeat(MAX_MODULE_BYTES.div_ceil(3) * 4 + 4)).await,
        Err(SourceError::TooLarge { .. })
    ));
}

#[tokio::test]
async fn the_configuration_is_applied_and_a_bad_module_counted_once() {
    use super::live::apply;
    use base64::Engine as _;
    use std::collections::BTreeMap;
    let set = set();
    let config = clovisor_config::ConfigMetrics::default();
    let mut rejected = HashMap::new();
    let inline = |m: &[u8]| base64::engine::general_purpose::STANDARD.encode(m);
    let mut cfg = BTreeMap::from([("line".to_owned(), inline(LINE))]);
    apply(&set, &cfg, Some(&config), &mut rejected).await;
    assert_eq!(set.names(), ["line"]);
    cfg.insert("line".into(), inline(b"(module"));
    cfg.insert("bad".into(), inline(b"not a module"));
    for _ in 0..3 {
        apply(&set, &cfg, Some(&config), &mut rejected).await;
    }
    let key = clovisor_config::keys::PROTO_CFG;
    assert_eq!(
        config.rejected_count(key),
        2,
        "each bad module counted once"
    );
    assert_eq!(set.names(), ["line"], "the running version stays");
    assert_eq!(set.metrics().error_count("line", "trap"), 0);
    cfg.clear();
    apply(&set, &cfg, Some(&config), &mut rejected).await;
    assert!(set.names().is_empty(), "unloaded");
}

#[test]
fn a_leftover_named_for_another_analyzer_is_parsed_by_it() {
    let set = set();
    set.load("line", LINE).expect("line loads");
    set.load("tagged", &hostile("tagged"))
        .expect("tagged loads");
    let out = decode(
        &set,
        "tagged",
        &[
            (Direction::ClientToServer, b"T1 FETCH greeting\n"),
            (Direction::ServerToClient, b"T1 OK hello\n"),
        ],
    );
    assert_eq!(out.exchanges.len(), 1, "{:#?}", out.exchanges);
    let e = &out.exchanges[0];
    assert_eq!(field(e, "tag"), "T1");
    assert_eq!(field(e, "line.command"), "FETCH");
    assert_eq!(field(e, "line.argument"), "greeting");
    assert_eq!(field(e, "line.status"), "OK");
    assert_eq!(field(e, "line.message"), "hello");
    assert_eq!(
        e.attributes.get(LEFTOVER_ATTRIBUTE).map(String::as_str),
        Some("line")
    );
    // Without the named analyzer, the leftover protocol is only recorded.
    assert!(set.unload("line"));
    let out = decode(
        &set,
        "tagged",
        &[
            (Direction::ClientToServer, b"T2 FETCH x\n"),
            (Direction::ServerToClient, b"T2 OK x\n"),
        ],
    );
    let e = &out.exchanges[0];
    assert_eq!(field(e, "tag"), "T2");
    assert!(!fields(e).contains_key("line.command"));
    assert_eq!(
        e.attributes.get(LEFTOVER_ATTRIBUTE).map(String::as_str),
        Some("line")
    );
}
