//! Driving the probe's capture directly (without the rest of the pipeline): its event loop on a
//! runtime of its own, its records grouped by flow, and hand-made segments to feed it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clovisor_probe::capture::{Capture, CaptureConfig, EventLoopStats};
use clovisor_proto::capture::v1::{record, FlowEnd, FlowStart, Message, ProtocolHint, Record};

use crate::{run, run_in};

/// Loads the capture with `config`, traces `ports` as HTTP and attaches it to the pod veth
/// `veth`.
pub fn attach(config: &CaptureConfig, veth: &str, ports: &[u16]) -> Result<Capture> {
    let mut capture = Capture::load(config)?;
    let traced: BTreeMap<u16, ProtocolHint> =
        ports.iter().map(|p| (*p, ProtocolHint::Http)).collect();
    capture.set_traced_ports(&traced)?;
    capture.attach_pod_veth(veth)?;
    Ok(capture)
}

/// A capture's event loop running on its own runtime until [`Recorder::stop`].
pub struct Recorder {
    rt: tokio::runtime::Runtime,
    rx: tokio::sync::mpsc::Receiver<clovisor_proto::hops::RecordChunk>,
    stop_tx: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<clovisor_probe::Result<EventLoopStats>>,
    /// The event loop's counters as it runs.
    pub live: Arc<Mutex<EventLoopStats>>,
}

impl Recorder {
    /// Starts `capture`'s event loop with room for `queue` chunks of records.
    pub fn start(capture: &mut Capture, queue: usize) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let event_loop = capture.take_event_loop()?;
        let live = event_loop.stats_handle();
        let (tx, rx) = tokio::sync::mpsc::channel(queue);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(event_loop.run(tx, async {
            let _ = stop_rx.await;
        }));
        Ok(Self {
            rt,
            rx,
            stop_tx,
            task,
            live,
        })
    }

    /// Stops the event loop (it drains the ring first) and returns its counters and every
    /// record it produced.
    pub fn stop(mut self) -> Result<(EventLoopStats, Vec<Record>)> {
        let _ = self.stop_tx.send(());
        let stats = self.rt.block_on(self.task).context("event loop task")??;
        let mut records = Vec::new();
        while let Ok(chunk) = self.rx.try_recv() {
            records.extend(chunk.decode().context("a chunk of records must decode")?);
        }
        Ok((stats, records))
    }
}

/// One flow's FlowStart, its messages by index (a later record for an index supersedes an
/// earlier one), and its FlowEnd.
#[derive(Debug, Default)]
pub struct Flow {
    /// How the probe announced the flow: its key, observation point and protocol hint.
    pub start: Option<FlowStart>,
    /// Messages by index.
    pub messages: BTreeMap<u32, Message>,
    /// How the flow ended, when it did.
    pub end: Option<FlowEnd>,
}

/// The flows of `records` whose client address is `client_ip`, by flow id: the address of a
/// flow is in its `FlowStart` (or, from older probes, in each message).
pub fn flows_of(records: &[Record], client_ip: &[u8]) -> BTreeMap<u64, Flow> {
    let mut flows: BTreeMap<u64, Flow> = BTreeMap::new();
    let started: std::collections::HashSet<u64> = records
        .iter()
        .filter_map(|r| match &r.kind {
            Some(record::Kind::FlowStart(s))
                if s.flow.as_ref().is_some_and(|f| f.client_ip == client_ip) =>
            {
                Some(s.flow_id)
            }
            _ => None,
        })
        .collect();
    let ours = |id: u64, flow: Option<&clovisor_proto::capture::v1::FlowKey>| {
        started.contains(&id) || flow.is_some_and(|f| f.client_ip == client_ip)
    };
    for r in records {
        match &r.kind {
            Some(record::Kind::FlowStart(s)) if started.contains(&s.flow_id) => {
                flows.entry(s.flow_id).or_default().start = Some(s.clone());
            }
            Some(record::Kind::Message(m)) if ours(m.flow_id, m.flow.as_ref()) => {
                flows
                    .entry(m.flow_id)
                    .or_default()
                    .messages
                    .insert(m.index, m.clone());
            }
            Some(record::Kind::FlowEnd(e)) if ours(e.flow_id, e.flow.as_ref()) => {
                flows.entry(e.flow_id).or_default().end = Some(e.clone());
            }
            _ => {}
        }
    }
    flows
}

/// Runs `integration-tests/scripts/inject_tcp.py`: hand-made TCP/IPv4 segments put on an
/// interface (inside `netns` when given) in the order given, bypassing the local TCP stack.
/// `args`: the interface, `SRC_IP:PORT`, `DST_IP:PORT`, then `SEQ:PAYLOAD` per segment.
pub fn inject(netns: Option<&str>, args: &[String]) -> Result<()> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/inject_tcp.py");
    let mut full = vec!["python3".to_owned(), script.display().to_string()];
    full.extend_from_slice(args);
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    match netns {
        Some(ns) => run_in(ns, &full),
        None => run(full[0], &full[1..]),
    }
    .map(|_| ())
}
