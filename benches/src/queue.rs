//! Work queues: messages per second through a queue to 1, 4 and 16 workers on loopback, every
//! message acknowledged, next to zmq.rs PUSH/PULL (no acknowledgements) in the same run.
//!
//! The distributing side runs alone on one thread (connect: a smol executor holding the
//! distributor's endpoint, its links and the loop enqueuing `HelloWorld`s as fast as the
//! bounded queue lets it; zmq.rs: a current-thread tokio runtime with a PUSH socket), the
//! workers together on another (connect: one `Worker` and endpoint each, credit 64, acking
//! every delivery; zmq.rs: PULL sockets counting what they receive). The result is the
//! messages acknowledged (connect) or received (zmq.rs) in the timed window, per second.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use connect::dispatch::Dispatcher;
use connect::endpoint::{self, Endpoint, EndpointConfig};
use connect::proto::example::HelloWorld;
use connect::queue::{Distributor, DistributorConfig, Worker, WorkerConfig};
use connect::transport::tcp::{self, TcpListener};
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::harness;

/// Counts `done` over the warm-up and the window; messages per second in the window.
fn measure(done: &AtomicU64) -> f64 {
    std::thread::sleep(harness::warm_up());
    let (t0, d0) = (Instant::now(), done.load(Ordering::Relaxed));
    std::thread::sleep(Duration::from_millis(
        harness::WINDOW_MS.load(Ordering::Relaxed),
    ));
    let (t1, d1) = (Instant::now(), done.load(Ordering::Relaxed));
    (d1 - d0) as f64 / (t1 - t0).as_secs_f64()
}

/// connect: a `Distributor` on an endpoint, `workers` `Worker`s each on an endpoint of its own,
/// every delivery acknowledged. Messages acknowledged per second.
pub fn connect_queue(workers: usize, size: usize) -> anyhow::Result<f64> {
    let distributor = Distributor::new(DistributorConfig::new());
    let executor = Arc::new(smol::Executor::<'static>::new());
    let spawner = executor.clone();
    let endpoint = Endpoint::new(
        EndpointConfig::new(),
        distributor.route(Dispatcher::new()),
        move |task| spawner.spawn(task).detach(),
    );
    distributor.attach(&endpoint);
    let listener = smol::block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    endpoint.accept(endpoint::tcp_incoming(listener));

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let working = {
        let (stop, acked) = (stop.clone(), acked.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            harness::pin(1);
            let ex = Arc::new(smol::Executor::<'static>::new());
            let mut endpoints = Vec::new();
            for _ in 0..workers {
                let worker = Worker::new(WorkerConfig::new().with_credit(64));
                let spawner = ex.clone();
                let endpoint = Endpoint::new(
                    EndpointConfig::new(),
                    worker.route(Dispatcher::new()),
                    move |task| spawner.spawn(task).detach(),
                );
                worker.attach(&endpoint);
                endpoint.connect(move || tcp::connect(addr));
                let acked = acked.clone();
                ex.spawn(async move {
                    let mut deliveries = worker.deliveries();
                    while let Some(delivery) = deliveries.recv().await {
                        if delivery.ack().await.is_ok() {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .detach();
                endpoints.push(endpoint);
            }
            smol::block_on(ex.run(async {
                while !stop.load(Ordering::Relaxed) {
                    smol::Timer::after(Duration::from_millis(10)).await;
                }
                for endpoint in &endpoints {
                    endpoint.abort();
                }
            }));
            Ok(())
        })
    };
    let distributing = {
        let (executor, stop) = (executor.clone(), stop.clone());
        let distributor = distributor.clone();
        std::thread::spawn(move || -> anyhow::Result<()> {
            harness::pin(0);
            smol::block_on(executor.run(async {
                while distributor.stats().workers < workers {
                    smol::Timer::after(Duration::from_millis(2)).await;
                }
                let mut message = HelloWorld {
                    text: "x".repeat(size.saturating_sub(8)),
                    sequence: 0,
                };
                while !stop.load(Ordering::Relaxed) {
                    message.sequence += 1;
                    // Once the workers are gone the queue stays full: stopping ends the wait.
                    let enqueue = async { distributor.enqueue(&message).await.map(|()| true) };
                    if !smol::future::or(enqueue, stopped(&stop)).await? {
                        break;
                    }
                }
                Ok(())
            }))
        })
    };
    let result = measure(&acked);
    stop.store(true, Ordering::Relaxed);
    distributing
        .join()
        .map_err(|_| anyhow::anyhow!("distributor panicked"))??;
    working
        .join()
        .map_err(|_| anyhow::anyhow!("workers panicked"))??;
    endpoint.abort();
    Ok(result)
}

/// Resolves (with `false`) once `stop` is set.
async fn stopped<E>(stop: &AtomicBool) -> Result<bool, E> {
    while !stop.load(Ordering::Relaxed) {
        smol::Timer::after(Duration::from_millis(10)).await;
    }
    Ok(false)
}

/// zmq.rs: a PUSH socket; each worker a PULL socket. Messages received per second.
pub fn zmq_push_pull(workers: usize, size: usize) -> anyhow::Result<f64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicU64::new(0));
    let pulling = {
        let (received, stop, ready) = (received.clone(), stop.clone(), ready.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            harness::pin(1);
            crate::tokio_runtime()?.block_on(async {
                let local = tokio::task::LocalSet::new();
                local
                    .run_until(async {
                        for _ in 0..workers {
                            let mut pull = zeromq::PullSocket::new();
                            pull.connect(&format!("tcp://{addr}")).await?;
                            ready.fetch_add(1, Ordering::Relaxed);
                            let received = received.clone();
                            tokio::task::spawn_local(async move {
                                while pull.recv().await.is_ok() {
                                    received.fetch_add(1, Ordering::Relaxed);
                                }
                            });
                        }
                        while !stop.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Ok::<_, anyhow::Error>(())
                    })
                    .await
            })
        })
    };
    let pushing = {
        let (stop, ready) = (stop.clone(), ready.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            harness::pin(0);
            crate::tokio_runtime()?.block_on(async {
                let mut push = zeromq::PushSocket::new();
                push.bind_listener(listener).await?;
                while ready.load(Ordering::Relaxed) < workers as u64 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                // Connections reach the PUSH socket asynchronously: give them a moment.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let payload = Bytes::from(vec![0xa5; size]);
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // As for PUB (pubsub.rs): let zmq.rs's per-peer tasks run now and then on
                    // this current-thread runtime, or they starve.
                    sent += 1;
                    if sent.is_multiple_of(16) {
                        tokio::task::yield_now().await;
                    }
                    // PUSH waits for a peer with room; stopping ends the wait.
                    tokio::select! {
                        sent = push.send(ZmqMessage::from(payload.clone())) => {
                            sent.map_err(|e| anyhow::anyhow!("pushing: {e}"))?;
                        }
                        () = async {
                            while !stop.load(Ordering::Relaxed) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        } => break,
                    }
                }
                Ok(())
            })
        })
    };
    // The PUSH side waits for its peers before sending: start timing once they are there.
    while ready.load(Ordering::Relaxed) < workers as u64 {
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(200));
    let result = measure(&received);
    stop.store(true, Ordering::Relaxed);
    pushing
        .join()
        .map_err(|_| anyhow::anyhow!("pusher panicked"))??;
    pulling
        .join()
        .map_err(|_| anyhow::anyhow!("workers panicked"))??;
    Ok(result)
}
