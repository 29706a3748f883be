//! Work-queue producer and distributor: holds a queue of numbered jobs and shares them out among
//! the workers that connect (PROTOCOL.md section 14). Start it, then one or more `queue-worker`s.
//!
//! ```text
//! cargo run --example queue-producer -- [ADDR] [--count N] [--ttl-ms T] [--max-deliveries N]
//! ```
//!
//! ADDR defaults to 127.0.0.1:7880 (port 0 for any free port). Once bound it prints
//! `listening on <ip:port>`, then enqueues N jobs (default 1000; `HelloWorld`s whose `sequence`
//! is 0 to N-1), waiting whenever its bounded queue is full. A worker that dies gives its jobs
//! back, and they go to the others. Dead letters (rejected, expired, delivered too often) are
//! printed as `dead letter <sequence> <reason>`. When every job is acknowledged or a dead
//! letter it prints `done: N enqueued, A acked, R redelivered, D dead-lettered, E expired`
//! and exits.

use std::time::Duration;

use connect::dispatch::Dispatcher;
use connect::endpoint::{self, Endpoint, EndpointConfig, Event};
use connect::proto::example::HelloWorld;
use connect::queue::{Distributor, DistributorConfig, SendOptions};
use connect::transport::tcp::TcpListener;
use futures::StreamExt;

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    env_logger::init();
    let mut addr = "127.0.0.1:7880".to_owned();
    let (mut count, mut ttl_ms, mut max_deliveries) = (1000u64, 0u64, 16u32);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--count" => count = value()?.parse()?,
            "--ttl-ms" => ttl_ms = value()?.parse()?,
            "--max-deliveries" => max_deliveries = value()?.parse()?,
            flag if flag.starts_with('-') => {
                println!(
                    "usage: queue-producer [ADDR] [--count N] [--ttl-ms T] [--max-deliveries N]"
                );
                return Ok(());
            }
            _ => addr = arg,
        }
    }

    let config = DistributorConfig::new()
        .with_max_deliveries(max_deliveries)
        .with_dead_letters(|letter| {
            let sequence = letter
                .message
                .to_msg::<HelloWorld>()
                .map_or(u64::MAX, |m| m.sequence);
            println!("dead letter {sequence} {:?}", letter.reason);
        });
    let distributor = Distributor::new(config);
    let endpoint = Endpoint::new(
        EndpointConfig::new(),
        distributor.route(Dispatcher::new()),
        |task| {
            async_std::task::spawn(task);
        },
    );
    distributor.attach(&endpoint);
    let listener = TcpListener::bind(addr.as_str()).await?;
    println!("listening on {}", listener.local_addr()?);
    endpoint.accept(endpoint::tcp_incoming(listener));

    // Joins, leaves and jobs given back, for people (RUST_LOG=info).
    let mut events = endpoint.events();
    async_std::task::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Event::Joined { link, .. } => log::info!("{link} joined"),
                Event::Left { link, reason } => log::info!("{link} left: {reason:?}"),
                other => log::info!("{other:?}"),
            }
        }
    });

    let mut options = SendOptions::new();
    if ttl_ms > 0 {
        options = options.with_ttl(Duration::from_millis(ttl_ms));
    }
    for sequence in 0..count {
        let job = HelloWorld {
            text: format!("job {sequence}"),
            sequence,
        };
        distributor.enqueue_with(&job, options).await?;
    }
    loop {
        let stats = distributor.stats();
        let settled = stats.acked + stats.dead_lettered + stats.expired;
        if settled >= count && stats.depth == 0 && stats.in_flight == 0 {
            println!(
                "done: {} enqueued, {} acked, {} redelivered, {} dead-lettered, {} expired",
                stats.enqueued, stats.acked, stats.redelivered, stats.dead_lettered, stats.expired
            );
            break;
        }
        async_std::task::sleep(Duration::from_millis(20)).await;
    }
    endpoint.close().await;
    Ok(())
}
