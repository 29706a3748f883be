//! Work queues over loopback: credit respected, fairness with a slow worker, redelivery when a
//! worker's link ends, expiry, dead letters (rejected, delivered too often), backpressure on
//! producers, and transactions committed, aborted and abandoned by a dying producer. The kill
//! test with worker processes is `tests/queue_kill.rs`.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use connect::dispatch::Dispatcher;
use connect::endpoint::{self, Endpoint, EndpointConfig, Event};
use connect::proto::example::HelloWorld;
use connect::queue::{
    DeadLetter, DeadLetterReason, Delivery, Distributor, DistributorConfig, EnqueueStatus,
    Producer, ProducerConfig, QueueError, QueueEvent, SendOptions, Worker, WorkerConfig,
};
use connect::transport::tcp::{self, TcpListener};
use futures::{FutureExt, StreamExt};
use support::within;

fn spawn(task: connect::transport::Task) {
    async_std::task::spawn(task);
}

fn job(sequence: u64) -> HelloWorld {
    HelloWorld {
        text: format!("job {sequence}"),
        sequence,
    }
}

fn sequence(delivery: &Delivery) -> u64 {
    delivery.to_msg::<HelloWorld>().unwrap().sequence
}

struct Dist {
    distributor: Distributor,
    endpoint: Endpoint,
    events: endpoint::Events,
    dead: async_channel::Receiver<DeadLetter>,
    addr: SocketAddr,
}

async fn distributor(config: DistributorConfig) -> Dist {
    let (dead_tx, dead) = async_channel::bounded(1024);
    let distributor = Distributor::new(config.with_dead_letters(move |letter| {
        let _ = dead_tx.try_send(letter);
    }));
    let endpoint = Endpoint::new(
        EndpointConfig::new().with_close_timeout(Duration::from_secs(1)),
        distributor.route(Dispatcher::new()),
        spawn,
    );
    distributor.attach(&endpoint);
    let events = endpoint.events();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    endpoint.accept(endpoint::tcp_incoming(listener));
    Dist {
        distributor,
        endpoint,
        events,
        dead,
        addr,
    }
}

/// Polls `done` until it holds (a hang guard of 10 s).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    within(10, what, async {
        while !done() {
            async_std::task::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

/// A worker endpoint with one link to the distributor, which knows it as a worker.
async fn worker(dist: &Dist, credit: u32) -> (Worker, Endpoint) {
    let workers = dist.distributor.stats().workers;
    let worker = Worker::new(WorkerConfig::new().with_credit(credit));
    let endpoint = Endpoint::new(
        EndpointConfig::new().with_close_timeout(Duration::from_secs(1)),
        worker.route(Dispatcher::new()),
        spawn,
    );
    worker.attach(&endpoint);
    let addr = dist.addr;
    endpoint.connect(move || tcp::connect(addr));
    until("the worker joins", || {
        dist.distributor.stats().workers > workers
    })
    .await;
    (worker, endpoint)
}

async fn producer(dist: &Dist, config: ProducerConfig) -> (Producer, Endpoint) {
    let producer = Producer::new(config);
    let endpoint = Endpoint::new(
        EndpointConfig::new().with_close_timeout(Duration::from_secs(1)),
        producer.route(Dispatcher::new()),
        spawn,
    );
    producer.attach(&endpoint);
    let addr = dist.addr;
    endpoint.connect(move || tcp::connect(addr));
    until("the producer's link", || producer.links() == 1).await;
    (producer, endpoint)
}

async fn next(worker: &Worker) -> Delivery {
    within(10, "a delivery", worker.deliveries().recv())
        .await
        .expect("deliveries open")
}

async fn dead_letter(dist: &Dist) -> DeadLetter {
    within(10, "a dead letter", dist.dead.recv()).await.unwrap()
}

#[async_std::test]
async fn credit_is_never_exceeded() {
    let dist = distributor(DistributorConfig::new()).await;
    for n in 0..20 {
        dist.distributor.enqueue(&job(n)).await.unwrap();
    }
    let (worker, _w) = worker(&dist, 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next(&worker).await);
    }
    let link = held[0].link();
    let stats = dist.distributor.stats();
    assert_eq!((stats.in_flight, stats.depth), (3, 17));
    assert_eq!(dist.distributor.holding(link), 3);
    // Each acknowledgement makes room for exactly one more.
    let mut done = Vec::new();
    while let Some(delivery) = held.pop() {
        done.push(sequence(&delivery));
        delivery.ack().await.unwrap();
        if done.len() + held.len() < 20 {
            held.push(next(&worker).await);
        }
        assert!(dist.distributor.holding(link) <= 3);
        assert!(held.len() <= 3);
    }
    done.sort_unstable();
    assert_eq!(done, (0..20).collect::<Vec<_>>());
    until("all acked", || dist.distributor.stats().acked == 20).await;
    let stats = dist.distributor.stats();
    assert_eq!(
        (stats.delivered, stats.redelivered, stats.in_flight),
        (20, 0, 0)
    );
    assert!(worker.deliveries().recv().now_or_never().is_none());
    dist.endpoint.close().await;
    until("the worker left", || dist.distributor.stats().workers == 0).await;
}

#[async_std::test]
async fn a_slow_worker_gets_its_credit_and_no_more() {
    let dist = distributor(DistributorConfig::new()).await;
    let (slow, _s) = worker(&dist, 4).await;
    let (fast, _f) = worker(&dist, 4).await;
    let fast_task = async_std::task::spawn(async move {
        let mut done = 0;
        let mut deliveries = fast.deliveries();
        while done < 196 {
            let delivery = deliveries.recv().await.unwrap();
            delivery.ack().await.unwrap();
            done += 1;
        }
    });
    for n in 0..200 {
        dist.distributor.enqueue(&job(n)).await.unwrap();
    }
    within(20, "the fast worker does 196", fast_task).await;
    until("196 acked", || dist.distributor.stats().acked == 196).await;
    // The slow one got its 4 (round-robin gave it the first of them at once) and holds them.
    let held: Vec<Delivery> = futures::stream::iter(0..4)
        .then(|_| next(&slow))
        .collect()
        .await;
    assert_eq!(dist.distributor.holding(held[0].link()), 4);
    assert!(
        held.iter().any(|d| sequence(d) == 0),
        "round-robin starts with it"
    );
    let stats = dist.distributor.stats();
    assert_eq!((stats.depth, stats.in_flight), (0, 4));
    for delivery in held {
        delivery.ack().await.unwrap();
    }
    until("all acked", || dist.distributor.stats().acked == 200).await;
}

#[async_std::test]
async fn a_worker_that_leaves_gives_its_messages_back_marked_redelivered() {
    let mut dist = distributor(DistributorConfig::new()).await;
    for n in 0..5 {
        dist.distributor.enqueue(&job(n)).await.unwrap();
    }
    let (first, first_endpoint) = worker(&dist, 5).await;
    for n in 0..5 {
        let delivery = next(&first).await;
        assert_eq!((sequence(&delivery), delivery.delivery_count()), (n, 1));
        assert!(!delivery.redelivered());
    }
    first_endpoint.abort();
    let requeued = within(10, "the Requeued event", async {
        loop {
            if let Some(Event::Queue(QueueEvent::Requeued { messages, .. })) =
                dist.events.next().await
            {
                return messages;
            }
        }
    })
    .await;
    assert_eq!(requeued, 5);
    let (second, _s) = worker(&dist, 10).await;
    for n in 0..5 {
        let delivery = next(&second).await;
        assert_eq!((sequence(&delivery), delivery.delivery_count()), (n, 2));
        assert!(delivery.redelivered());
        delivery.ack().await.unwrap();
    }
    until("all acked", || dist.distributor.stats().acked == 5).await;
    assert_eq!(dist.distributor.stats().redelivered, 5);
}

#[async_std::test]
async fn a_message_not_taken_within_its_ttl_is_a_dead_letter() {
    let dist = distributor(DistributorConfig::new()).await;
    let short = SendOptions::new().with_ttl(Duration::from_millis(30));
    let long = SendOptions::new().with_ttl(Duration::from_secs(600));
    dist.distributor.enqueue_with(&job(1), short).await.unwrap();
    dist.distributor.enqueue_with(&job(2), long).await.unwrap();
    dist.distributor.enqueue(&job(3)).await.unwrap();
    // No worker: the timer expires it, without anything else happening.
    let dead = dead_letter(&dist).await;
    assert_eq!(dead.reason, DeadLetterReason::Expired);
    assert_eq!(dead.message.to_msg::<HelloWorld>().unwrap(), job(1));
    assert_eq!(dead.delivery_count, 0);
    let stats = dist.distributor.stats();
    assert_eq!((stats.expired, stats.depth), (1, 2));

    let (worker, _w) = worker(&dist, 10).await;
    assert_eq!(sequence(&next(&worker).await), 2);
    assert_eq!(sequence(&next(&worker).await), 3);
    assert!(dist.dead.try_recv().is_err());
}

#[async_std::test]
async fn rejected_and_too_often_delivered_messages_are_dead_letters() {
    let dist = distributor(DistributorConfig::new().with_max_deliveries(2)).await;
    dist.distributor.enqueue(&job(1)).await.unwrap();
    dist.distributor.enqueue(&job(2)).await.unwrap();
    let (worker, _w) = worker(&dist, 1).await;
    for count in 1..=2 {
        let delivery = next(&worker).await;
        assert_eq!((sequence(&delivery), delivery.delivery_count()), (1, count));
        delivery.requeue().await.unwrap();
    }
    let dead = dead_letter(&dist).await;
    assert_eq!(
        (dead.reason, dead.delivery_count),
        (DeadLetterReason::MaxDeliveries, 2)
    );
    let delivery = next(&worker).await;
    assert_eq!(sequence(&delivery), 2);
    delivery.reject().await.unwrap();
    let dead = dead_letter(&dist).await;
    assert_eq!(dead.reason, DeadLetterReason::Rejected);
    assert_eq!(dead.message.to_msg::<HelloWorld>().unwrap(), job(2));
    let stats = dist.distributor.stats();
    assert_eq!((stats.dead_lettered, stats.acked, stats.bytes), (2, 0, 0));
}

#[async_std::test]
async fn a_full_queue_pushes_back_on_producers() {
    let dist = distributor(DistributorConfig::new().with_capacity(4, 1 << 20)).await;
    let (producer, _p) = producer(&dist, ProducerConfig::new().with_window(2)).await;
    for n in 0..4 {
        producer.send(&job(n)).await.unwrap();
    }
    assert!(matches!(
        dist.distributor.try_enqueue(&job(99)),
        Err(QueueError::Full(_))
    ));
    // Two more fill the producer's window: the distributor confirms neither while it is full.
    let first = producer
        .feed_any(pack(&job(4)), SendOptions::new())
        .await
        .unwrap();
    let second = producer.try_send(&job(5)).unwrap();
    assert!(matches!(
        producer.try_send(&job(6)),
        Err(QueueError::Full(_))
    ));
    let (first, second) = (
        async_std::task::spawn(first),
        async_std::task::spawn(second),
    );

    // A worker makes room; both are confirmed and delivered, in order.
    let (worker, _w) = worker(&dist, 1).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let delivery = next(&worker).await;
        seen.push(sequence(&delivery));
        delivery.ack().await.unwrap();
    }
    within(10, "first confirmed", first).await.unwrap();
    within(10, "second confirmed", second).await.unwrap();
    assert_eq!(seen, [0, 1, 2, 3, 4, 5]);

    // Larger than the queue can ever hold: refused at once.
    let big = HelloWorld {
        text: "x".repeat(2 << 20),
        sequence: 0,
    };
    assert!(matches!(
        producer.send(&big).await,
        Err(QueueError::Refused {
            status: EnqueueStatus::TooLarge,
            ..
        })
    ));
}

fn pack(msg: &HelloWorld) -> connect::prost_types::Any {
    connect::prost_types::Any::from_msg(msg).unwrap()
}

#[async_std::test]
async fn a_producer_transaction_is_visible_at_commit_and_leaves_no_trace_otherwise() {
    let dist = distributor(DistributorConfig::new()).await;
    let (producer, producer_endpoint) = producer(&dist, ProducerConfig::new()).await;
    let (worker, _w) = worker(&dist, 10).await;

    // Committed: nothing before the commit, then all of it, in order.
    let tx = producer.begin().await.unwrap();
    for n in 0..3 {
        tx.send(&job(n)).await.unwrap();
    }
    let stats = dist.distributor.stats();
    assert_eq!((stats.staged, stats.depth, stats.delivered), (3, 0, 0));
    tx.commit().await.unwrap();
    for n in 0..3 {
        let delivery = next(&worker).await;
        assert_eq!(sequence(&delivery), n);
        delivery.ack().await.unwrap();
    }

    // Aborted: the next message delivered is the one sent after it.
    let tx = producer.begin().await.unwrap();
    tx.send(&job(10)).await.unwrap();
    tx.send(&job(11)).await.unwrap();
    tx.abort().await.unwrap();
    producer.send(&job(12)).await.unwrap();
    assert_eq!(sequence(&next(&worker).await), 12);

    // Abandoned: the producer's link ends mid-transaction.
    let tx = producer.begin().await.unwrap();
    tx.send(&job(20)).await.unwrap();
    until("staged", || dist.distributor.stats().staged == 1).await;
    producer_endpoint.abort();
    until("aborted with its link", || {
        dist.distributor.stats().aborted == 2
    })
    .await;
    assert!(matches!(tx.commit().await, Err(QueueError::Closed)));
    dist.distributor.enqueue(&job(21)).await.unwrap();
    assert_eq!(sequence(&next(&worker).await), 21);
    let stats = dist.distributor.stats();
    assert_eq!((stats.staged, stats.committed, stats.enqueued), (0, 1, 5));
}

#[async_std::test]
async fn a_worker_transaction_acknowledges_at_commit_only() {
    let dist = distributor(DistributorConfig::new()).await;
    for n in 0..3 {
        dist.distributor.enqueue(&job(n)).await.unwrap();
    }
    let (worker, _w) = worker(&dist, 3).await;
    let (a, b, c) = (
        next(&worker).await,
        next(&worker).await,
        next(&worker).await,
    );
    let link = a.link();

    let tx = worker.begin(link).await.unwrap();
    tx.ack(a).await.unwrap();
    tx.ack(b).await.unwrap();
    assert_eq!(dist.distributor.stats().acked, 0);
    tx.commit().await.unwrap();
    assert_eq!(dist.distributor.stats().acked, 2);

    let tx = worker.begin(link).await.unwrap();
    tx.ack(c).await.unwrap();
    tx.abort().await.unwrap();
    let stats = dist.distributor.stats();
    assert_eq!((stats.acked, stats.in_flight, stats.aborted), (2, 1, 1));
}

/// A peer breaking section 14 loses its own link only; others go on.
#[async_std::test]
async fn a_begin_with_transaction_0_ends_only_that_link() {
    use connect::proto::queue::{Begin, Enqueue, EnqueueStatus, Enqueued};
    let dist = distributor(DistributorConfig::new()).await;
    let (worker, _w) = worker(&dist, 1).await;
    let mut bad = tcp::connect(dist.addr).await.unwrap();
    // An invalid Enqueue is answered; a Begin with 0 is a protocol error.
    bad.send_message(&Enqueue::default()).await.unwrap();
    let answer: Option<Enqueued> = within(10, "Enqueued", bad.recv_message()).await.unwrap();
    assert_eq!(answer.unwrap().status, EnqueueStatus::Invalid as i32);
    bad.send_message(&Begin { transaction: 0 }).await.unwrap();
    let end = within(10, "the link ends", bad.recv()).await;
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    dist.distributor.enqueue(&job(1)).await.unwrap();
    assert_eq!(sequence(&next(&worker).await), 1);
}
