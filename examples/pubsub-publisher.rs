//! Publisher: a ticker on a few topics, a few messages a second, to every subscriber whose
//! filter matches (publish/subscribe, PROTOCOL.md section 12).
//!
//! ```text
//! cargo run --example pubsub-publisher [ADDR]
//! ```
//!
//! ADDR defaults to 127.0.0.1:7879 (port 0 for any free port). Once bound it prints
//! `listening on <ip:port>`, then publishes, every 200 ms, one `HelloWorld` on each of
//! `ticks.eu.price`, `ticks.us.price` and `news.eu.headline` (`sequence` counts the rounds).
//! Subscribers that fall behind by more than 1024 messages lose messages (counted, and logged
//! with `RUST_LOG=info`); one that sends garbage loses only its own link.

use std::time::Duration;

use connect::dispatch::Dispatcher;
use connect::endpoint::{self, Endpoint, EndpointConfig, Event};
use connect::proto::example::HelloWorld;
use connect::pubsub::{Publisher, PublisherConfig};
use connect::transport::tcp::TcpListener;
use futures::StreamExt;

const TOPICS: [&str; 3] = ["ticks.eu.price", "ticks.us.price", "news.eu.headline"];

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    env_logger::init();
    let addr = match std::env::args().nth(1) {
        Some(flag) if flag.starts_with('-') => {
            println!("usage: pubsub-publisher [ADDR]   (default 127.0.0.1:7879)");
            return Ok(());
        }
        Some(addr) => addr,
        None => "127.0.0.1:7879".into(),
    };
    let publisher = Publisher::new(PublisherConfig::new());
    let endpoint = Endpoint::new(
        EndpointConfig::new(),
        publisher.route(Dispatcher::new()),
        |task| {
            async_std::task::spawn(task);
        },
    );
    publisher.attach(&endpoint);
    let listener = TcpListener::bind(addr.as_str()).await?;
    println!("listening on {}", listener.local_addr()?);
    endpoint.accept(endpoint::tcp_incoming(listener));

    // Joins, leaves and drops, for people.
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

    for sequence in 0u64.. {
        for topic in TOPICS {
            let message = HelloWorld {
                text: format!("{topic} #{sequence}"),
                sequence,
            };
            publisher.publish(topic, &message).await?;
        }
        async_std::task::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
