//! Publish/subscribe: fan-out from one publisher to 1, 10 and 100 subscribers on loopback, next
//! to zmq.rs PUB/SUB in the same run; and the cost of matching a topic against 10 000 filters,
//! next to a scan of every filter.
//!
//! Fan-out: the publisher runs alone on one thread (connect: a smol executor holding the
//! publisher's endpoint, its links and queues; zmq.rs: a current-thread tokio runtime), the
//! subscribers together on another. The publisher publishes as fast as it can for a 250 ms
//! warm-up and a timed window; the result is the messages the subscribers received in the
//! window, in total, per second, and the publisher thread's CPU time per delivered message.
//! connect's publisher packs a `HelloWorld` (protobuf) per message and uses the waiting policy
//! (nothing dropped); zmq.rs's PUB sends raw bytes of the same size and drops for subscribers
//! that fall behind (its only choice), so only what arrived counts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use connect::dispatch::Dispatcher;
use connect::endpoint::{self, Endpoint, EndpointConfig};
use connect::proto::example::HelloWorld;
use connect::proto::pubsub::{Subscribe, SubscribeAck};
use connect::pubsub::{filter_matches, Publisher, PublisherConfig, SlowSubscriber, Sublist};
use connect::transport::tcp::{self, TcpListener};
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::harness::{self, thread_schedstat};

/// One fan-out run.
#[derive(Clone, Debug)]
pub struct FanOut {
    pub delivered_per_sec: f64,
    pub publisher_cpu_ns_per_delivered: f64,
}

fn window() -> Duration {
    Duration::from_millis(harness::WINDOW_MS.load(Ordering::Relaxed))
}

/// Times a publisher's loop: call [`published`](Self::published) after each message; it says
/// the result once the warm-up and the window are over, reading `delivered` and the thread's
/// CPU time at both ends of the window.
struct PublishTimer {
    start: Instant,
    count: u64,
    mark: Option<(Instant, u64, u64)>,
}

impl PublishTimer {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            count: 0,
            mark: None,
        }
    }

    fn published(&mut self, delivered: &AtomicU64) -> Option<FanOut> {
        self.count += 1;
        if !self.count.is_multiple_of(32) {
            return None;
        }
        let now = Instant::now();
        match self.mark {
            None if now - self.start
                >= Duration::from_millis(harness::WARM_UP_MS.load(Ordering::Relaxed)) =>
            {
                self.mark = Some((now, delivered.load(Ordering::Relaxed), thread_schedstat().0));
                None
            }
            Some((t0, d0, c0)) if now - t0 >= window() => {
                let d = delivered.load(Ordering::Relaxed) - d0;
                let cpu = thread_schedstat().0 - c0;
                Some(FanOut {
                    delivered_per_sec: d as f64 / (now - t0).as_secs_f64(),
                    publisher_cpu_ns_per_delivered: cpu as f64 / d.max(1) as f64,
                })
            }
            _ => None,
        }
    }
}

/// connect: a Publisher on an Endpoint; each subscriber a bare connection that subscribes to
/// `bench.>` and counts the `Publish` frames it reads.
pub fn connect_fan_out(subscribers: usize, size: usize) -> anyhow::Result<FanOut> {
    let executor = Arc::new(smol::Executor::<'static>::new());
    let publisher = Publisher::new(
        PublisherConfig::new()
            .with_policy(SlowSubscriber::Wait)
            .with_queue(1024, 4 << 20),
    );
    let spawner = executor.clone();
    let endpoint = Endpoint::new(
        EndpointConfig::new(),
        publisher.route(Dispatcher::new()),
        move |task| spawner.spawn(task).detach(),
    );
    publisher.attach(&endpoint);
    let listener = smol::block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    endpoint.accept(endpoint::tcp_incoming(listener));

    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicU64::new(0));
    let subs = {
        let (delivered, stop, ready) = (delivered.clone(), stop.clone(), ready.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            harness::pin(1);
            let ex = smol::LocalExecutor::new();
            smol::block_on(ex.run(async {
                let mut tasks = Vec::new();
                for _ in 0..subscribers {
                    let mut conn = tcp::connect(addr).await?;
                    conn.send_message(&Subscribe {
                        request_id: 1,
                        filter: "bench.>".into(),
                    })
                    .await?;
                    let ack: Option<SubscribeAck> = conn.recv_message().await?;
                    anyhow::ensure!(ack.is_some_and(|a| a.subscribed), "not subscribed");
                    ready.fetch_add(1, Ordering::Relaxed);
                    let (delivered, stop) = (delivered.clone(), stop.clone());
                    tasks.push(ex.spawn(async move {
                        while let Ok(Some(_)) = conn.recv().await {
                            delivered.fetch_add(1, Ordering::Relaxed);
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                    }));
                }
                for task in tasks {
                    task.await;
                }
                Ok(())
            }))
        })
    };
    let publishing = {
        let (executor, delivered, ready) = (executor.clone(), delivered.clone(), ready.clone());
        std::thread::spawn(move || {
            harness::pin(0);
            smol::block_on(executor.run(async {
                while ready.load(Ordering::Relaxed) < subscribers as u64 {
                    smol::Timer::after(Duration::from_millis(2)).await;
                }
                let mut message = HelloWorld {
                    text: "x".repeat(size.saturating_sub(8)),
                    sequence: 0,
                };
                let mut timer = PublishTimer::new();
                loop {
                    message.sequence += 1;
                    publisher.publish("bench.ticks", &message).await?;
                    if let Some(result) = timer.published(&delivered) {
                        break Ok::<_, anyhow::Error>(result);
                    }
                }
            }))
        })
    };
    let result = publishing
        .join()
        .map_err(|_| anyhow::anyhow!("publisher panicked"))?;
    stop.store(true, Ordering::Relaxed);
    endpoint.abort();
    // Let the aborted links end so the subscribers see their connections close.
    smol::block_on(executor.run(smol::Timer::after(Duration::from_millis(50))));
    subs.join()
        .map_err(|_| anyhow::anyhow!("subscribers panicked"))??;
    result
}

/// zmq.rs: a PUB socket; each subscriber a SUB socket subscribed to everything.
pub fn zmq_fan_out(subscribers: usize, size: usize) -> anyhow::Result<FanOut> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicU64::new(0));
    let subs = {
        let (delivered, stop, ready) = (delivered.clone(), stop.clone(), ready.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            harness::pin(1);
            crate::tokio_runtime()?.block_on(async {
                let local = tokio::task::LocalSet::new();
                local
                    .run_until(async {
                        let mut tasks = Vec::new();
                        for _ in 0..subscribers {
                            let mut sub = zeromq::SubSocket::new();
                            sub.connect(&format!("tcp://{addr}")).await?;
                            sub.subscribe("").await?;
                            ready.fetch_add(1, Ordering::Relaxed);
                            let (delivered, stop) = (delivered.clone(), stop.clone());
                            tasks.push(tokio::task::spawn_local(async move {
                                while let Ok(_msg) = sub.recv().await {
                                    delivered.fetch_add(1, Ordering::Relaxed);
                                    if stop.load(Ordering::Relaxed) {
                                        break;
                                    }
                                }
                            }));
                        }
                        // Ends once the publisher stops and every subscriber saw one more
                        // message, or after a grace period (PUB may have dropped the rest).
                        let deadline = tokio::time::sleep(Duration::from_secs(30));
                        tokio::pin!(deadline);
                        for task in tasks {
                            tokio::select! {
                                _ = task => {}
                                _ = &mut deadline => break,
                            }
                        }
                        Ok::<_, anyhow::Error>(())
                    })
                    .await
            })
        })
    };
    let publishing = {
        let (delivered, stop, ready) = (delivered.clone(), stop.clone(), ready.clone());
        std::thread::spawn(move || -> anyhow::Result<FanOut> {
            harness::pin(0);
            crate::tokio_runtime()?.block_on(async {
                let mut publisher = zeromq::PubSocket::new();
                publisher.bind_listener(listener).await?;
                while ready.load(Ordering::Relaxed) < subscribers as u64 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                // Subscriptions travel to the publisher asynchronously: give them a moment.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let payload = Bytes::from(vec![0xa5; size]);
                let mut timer = PublishTimer::new();
                let mut sent = 0u64;
                let result = loop {
                    sent += 1;
                    // zmq.rs's PUB hands messages to per-peer tasks without ever waiting: on
                    // a current-thread runtime they must be let run, or nothing goes out.
                    if sent.is_multiple_of(16) {
                        tokio::task::yield_now().await;
                    }
                    if let Err(e) = publisher.send(ZmqMessage::from(payload.clone())).await {
                        break Err(anyhow::anyhow!("publishing: {e}"));
                    }
                    if let Some(result) = timer.published(&delivered) {
                        break Ok(result);
                    }
                };
                stop.store(true, Ordering::Relaxed);
                // Wake every subscriber once more so it sees `stop`.
                for _ in 0..64 {
                    let _ = publisher
                        .send(ZmqMessage::from(Bytes::from_static(b"end")))
                        .await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                result
            })
        })
    };
    let result = publishing
        .join()
        .map_err(|_| anyhow::anyhow!("publisher panicked"))?;
    subs.join()
        .map_err(|_| anyhow::anyhow!("subscribers panicked"))??;
    result
}

/// Nanoseconds per topic matched against 10 000 filters: the trie, then a scan of every
/// filter. Returns (trie, scan, matches per topic).
pub fn matching_cost() -> (f64, f64, f64) {
    let mut filters = Vec::new();
    for i in 0..10_000 {
        filters.push(match i % 4 {
            0 => format!("orders.region{}.created", i % 500),
            1 => format!("orders.*.item{i}"),
            2 => format!("ticks.market{}.>", i % 1000),
            _ => format!("user{i}.events.*"),
        });
    }
    let mut sublist = Sublist::new();
    for (i, filter) in filters.iter().enumerate() {
        // Holders stand for links: 100 links with 100 filters each.
        let _ = sublist.insert(filter, (i % 100) as u32);
    }
    let topics: Vec<String> = (0..1000)
        .map(|i| match i % 4 {
            0 => format!("orders.region{}.created", i % 500),
            1 => format!("orders.eu.item{}", i * 7 % 10_000),
            2 => format!("ticks.market{}.eu.price", i % 1000),
            _ => format!("user{}.events.login", i * 13 % 10_000),
        })
        .collect();
    let rounds = 200;
    let mut found = 0usize;
    let start = Instant::now();
    for _ in 0..rounds {
        for topic in &topics {
            found += std::hint::black_box(sublist.matches(topic)).len();
        }
    }
    let trie = start.elapsed().as_nanos() as f64 / (rounds * topics.len()) as f64;
    let scan_rounds = 1;
    let start = Instant::now();
    for _ in 0..scan_rounds {
        for topic in &topics {
            let mut holders: Vec<u32> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| filter_matches(f, topic))
                .map(|(i, _)| (i % 100) as u32)
                .collect();
            holders.sort_unstable();
            holders.dedup();
            std::hint::black_box(holders);
        }
    }
    let scan = start.elapsed().as_nanos() as f64 / (scan_rounds * topics.len()) as f64;
    (trie, scan, found as f64 / (rounds * topics.len()) as f64)
}
