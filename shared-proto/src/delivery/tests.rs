use super::*;
use std::sync::Mutex;

#[derive(Clone, Debug, PartialEq)]
enum Out {
    Hello,
    Batch(u64, Vec<u32>),
}

struct Contract;

impl BatchContract for Contract {
    type Item = u32;
    type Outbound = Out;
    type Inbound = u64;
    fn hello(&self) -> Vec<Out> {
        vec![Out::Hello]
    }
    fn batch(&self, seq: u64, items: Vec<u32>) -> Out {
        Out::Batch(seq, items)
    }
    fn size(msg: &Out) -> usize {
        match msg {
            Out::Hello => 1,
            Out::Batch(_, items) => 8 + 4 * items.len(),
        }
    }
    fn ack(msg: &u64) -> Option<u64> {
        Some(*msg)
    }
    /// An item's value is its size, for the byte bound's test (the other tests' items add up
    /// to far below their bound).
    fn item_bytes(item: &u32) -> usize {
        *item as usize
    }
}

/// A receiver with the real protocol's semantics: process seq > last, ack every batch.
#[derive(Default)]
struct Receiver {
    last: u64,
    items: Vec<u32>,
    /// The items of each batch processed, in order.
    batches: Vec<Vec<u32>>,
    hellos: usize,
    streams: usize,
    /// When set, the next stream breaks after reading this many batches, without acking them.
    break_after: Option<usize>,
    /// While false, opening a stream fails (receiver down).
    up: bool,
}

#[derive(Clone)]
struct FakeConnector(Arc<Mutex<Receiver>>);

impl Connector<Contract> for FakeConnector {
    fn open(&mut self, mut outbound: ReceiverStream<Out>) -> Opening<'_, Contract> {
        let shared = Arc::clone(&self.0);
        Box::pin(async move {
            let break_after = {
                let mut r = shared
                    .lock()
                    .map_err(|_| tonic::Status::internal("poisoned"))?;
                if !r.up {
                    return Err(tonic::Status::unavailable("receiver down"));
                }
                r.streams += 1;
                r.break_after.take()
            };
            let (ack_tx, ack_rx) = mpsc::channel::<Result<u64, tonic::Status>>(64);
            tokio::spawn(async move {
                let mut seen = 0usize;
                while let Some(msg) = outbound.next().await {
                    let ack = {
                        let Ok(mut r) = shared.lock() else { return };
                        match msg {
                            Out::Hello => {
                                r.hellos += 1;
                                continue;
                            }
                            Out::Batch(seq, items) => {
                                seen += 1;
                                if break_after.is_some_and(|n| seen > n) {
                                    return; // connection lost: nothing acked
                                }
                                if seq > r.last {
                                    r.last = seq;
                                    r.batches.push(items.clone());
                                    r.items.extend(items);
                                }
                                seq
                            }
                        }
                    };
                    if ack_tx.send(Ok(ack)).await.is_err() {
                        return;
                    }
                }
            });
            let inbound: Inbound<Contract> = Box::pin(ReceiverStream::new(ack_rx));
            Ok(inbound)
        })
    }
}

fn config() -> DeliveryConfig {
    DeliveryConfig {
        max_batch_items: 10,
        max_batch_bytes: 1 << 20,
        flush_interval: Duration::from_millis(5),
        window: 4,
        replay_bytes: 1 << 20,
        min_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        connect_timeout: Duration::from_secs(1),
        drain_timeout: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn delivers_everything_in_order_and_acks_it() {
    let rx = Arc::new(Mutex::new(Receiver {
        up: true,
        ..Default::default()
    }));
    let sender = Sender::new(Contract, FakeConnector(Arc::clone(&rx)), config());
    let stats = sender.stats();
    let (tx, input) = mpsc::channel(1000);
    for i in 0..1000u32 {
        tx.send(i).await.expect("input open");
    }
    drop(tx);
    sender.run(input, std::future::pending()).await;
    let r = rx.lock().expect("lock");
    assert_eq!(
        r.items,
        (0..1000).collect::<Vec<_>>(),
        "items in order, once each"
    );
    assert_eq!(DeliveryStats::get(&stats.items_acked), 1000);
    assert_eq!(DeliveryStats::get(&stats.items_dropped_shutdown), 0);
    assert_eq!(
        DeliveryStats::get(&stats.items_buffered),
        0,
        "nothing left buffered once everything is acknowledged"
    );
    assert_eq!(r.hellos, 1, "one stream, one hello");
}

#[tokio::test]
async fn a_broken_stream_is_replayed_without_loss_or_duplicates() {
    let rx = Arc::new(Mutex::new(Receiver {
        up: true,
        break_after: Some(3),
        ..Default::default()
    }));
    let sender = Sender::new(Contract, FakeConnector(Arc::clone(&rx)), config());
    let stats = sender.stats();
    let (tx, input) = mpsc::channel(1000);
    for i in 0..500u32 {
        tx.send(i).await.expect("input open");
    }
    drop(tx);
    sender.run(input, std::future::pending()).await;
    let r = rx.lock().expect("lock");
    assert_eq!(
        r.items,
        (0..500).collect::<Vec<_>>(),
        "no item lost or duplicated"
    );
    assert!(
        r.streams >= 2,
        "expected a reconnect, saw {} streams",
        r.streams
    );
    assert!(
        DeliveryStats::get(&stats.batches_resent) >= 1,
        "unacked batches re-sent"
    );
}

/// A sender whose receiver is down, with room to replay exactly one full batch and a short drain.
fn sender_without_receiver() -> (Sender<Contract, FakeConnector>, Arc<DeliveryStats>) {
    let rx = Arc::new(Mutex::new(Receiver::default())); // down
    let mut cfg = config();
    cfg.replay_bytes = 8 + 4 * 10; // exactly one full batch
    cfg.drain_timeout = Duration::from_millis(50);
    let sender = Sender::new(Contract, FakeConnector(rx), cfg);
    let stats = sender.stats();
    (sender, stats)
}

#[tokio::test]
async fn an_absent_receiver_fills_the_replay_bound_then_pushes_back() {
    let (sender, stats) = sender_without_receiver();
    let (tx, input) = mpsc::channel(5);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(sender.run(input, async move {
        let _ = stop_rx.await;
    }));
    let mut refused = 0;
    for i in 0..100u32 {
        if tx.try_send(i).is_err() {
            refused += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        refused > 0,
        "a full replay buffer must push back on the producer"
    );
    let _ = stop_tx.send(());
    run.await.expect("sender task");
    let received = DeliveryStats::get(&stats.items_received);
    let dropped = DeliveryStats::get(&stats.items_dropped_shutdown);
    assert_eq!(
        received, dropped,
        "with no receiver every accepted item is counted as dropped at shutdown"
    );
    assert_eq!(
        DeliveryStats::get(&stats.items_buffered),
        0,
        "dropped items are no longer buffered"
    );
    assert_eq!(
        received + refused,
        100,
        "every item either accepted or refused"
    );
}

/// The same absent receiver, but the producers go away instead of a shutdown: the sender,
/// which does not read its input while its replay buffer is full, still sees it close, drains
/// for the drain timeout and ends, counting what it could not deliver (it used to wait for
/// ever, and with it a probe told to stop while its collector was down).
#[tokio::test]
async fn an_absent_receiver_and_a_full_replay_buffer_still_end_when_the_input_closes() {
    let (sender, stats) = sender_without_receiver();
    let (tx, input) = mpsc::channel(5);
    let run = tokio::spawn(sender.run(input, std::future::pending()));
    let mut accepted = 0;
    for i in 0..100u32 {
        if tx.try_send(i).is_ok() {
            accepted += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(accepted < 100, "the replay buffer filled and pushed back");
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the sender ends once its input is closed")
        .expect("sender task");
    assert_eq!(DeliveryStats::get(&stats.items_received), accepted);
    assert_eq!(
        DeliveryStats::get(&stats.items_dropped_shutdown),
        accepted,
        "every accepted item, queued ones included, is counted as dropped"
    );
    assert_eq!(DeliveryStats::get(&stats.items_buffered), 0);
}

#[tokio::test]
async fn a_receiver_that_comes_back_gets_the_buffered_batches() {
    let rx = Arc::new(Mutex::new(Receiver::default())); // down at first
    let sender = Sender::new(Contract, FakeConnector(Arc::clone(&rx)), config());
    let (tx, input) = mpsc::channel(100);
    let run = tokio::spawn(sender.run(input, std::future::pending()));
    for i in 0..50u32 {
        tx.send(i).await.expect("input open");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    rx.lock().expect("lock").up = true;
    drop(tx);
    run.await.expect("sender task");
    assert_eq!(rx.lock().expect("lock").items, (0..50).collect::<Vec<_>>());
}

#[tokio::test]
async fn batches_are_sealed_by_bytes_as_well_as_by_count() {
    let rx = Arc::new(Mutex::new(Receiver {
        up: true,
        ..Default::default()
    }));
    let cfg = DeliveryConfig {
        max_batch_bytes: 100,
        ..config()
    };
    let sender = Sender::new(Contract, FakeConnector(Arc::clone(&rx)), cfg);
    let (tx, input) = mpsc::channel(100);
    // Sizes: a batch takes items until they reach 100 bytes; one larger travels alone.
    for size in [60u32, 60, 60, 10, 10, 200, 300, 1, 1] {
        tx.send(size).await.expect("input open");
    }
    drop(tx);
    sender.run(input, std::future::pending()).await;
    let r = rx.lock().expect("lock");
    assert_eq!(
        r.batches,
        vec![vec![60, 60], vec![60, 10, 10, 200], vec![300], vec![1, 1]],
        "each batch stops at the first item that takes it to 100 bytes"
    );
}
