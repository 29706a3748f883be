//! Subscriber: connects to a publisher, subscribes to filters, prints one line per message
//! (publish/subscribe, PROTOCOL.md section 12).
//!
//! ```text
//! cargo run --example pubsub-subscriber ADDR [FILTER...] [--count N]
//! ```
//!
//! FILTER defaults to `>` (every topic); `ticks.*.price` or `ticks.>` take a part. Each message
//! prints as `<topic> <sequence> <text>`. With `--count N` it exits 0 after N messages;
//! without, it runs until killed. It reconnects by itself if the publisher goes away, subscribes
//! again, and says that it may have missed messages meanwhile.

use connect::dispatch::Dispatcher;
use connect::endpoint::{Endpoint, EndpointConfig, Event};
use connect::proto::example::HelloWorld;
use connect::pubsub::{PubSubEvent, Subscriber, SubscriberConfig};
use connect::transport::tcp;
use futures::StreamExt;

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    env_logger::init();
    let mut args = std::env::args().skip(1);
    let mut addr = None;
    let mut filters = Vec::new();
    let mut count = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--count" => count = Some(args.next().unwrap_or_default().parse::<u64>()?),
            "-h" | "--help" => {
                println!("usage: pubsub-subscriber ADDR [FILTER...] [--count N]");
                return Ok(());
            }
            _ if addr.is_none() => addr = Some(arg),
            _ => filters.push(arg),
        }
    }
    let Some(addr) = addr else {
        anyhow::bail!("usage: pubsub-subscriber ADDR [FILTER...] [--count N]");
    };
    if filters.is_empty() {
        filters.push(">".into());
    }
    let addr: std::net::SocketAddr = addr.parse()?;

    let subscriber = Subscriber::new(SubscriberConfig::new());
    let endpoint = Endpoint::new(
        EndpointConfig::new(),
        subscriber.route(Dispatcher::new()),
        |task| {
            async_std::task::spawn(task);
        },
    );
    subscriber.attach(&endpoint);
    // Filters first: they are sent on every link as it joins.
    for filter in &filters {
        subscriber.subscribe(filter).await?;
    }
    let mut events = endpoint.events();
    endpoint.connect(move || tcp::connect(addr));
    async_std::task::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Event::PubSub(PubSubEvent::MayHaveMissed { .. }) => {
                    eprintln!("reconnected: messages published meanwhile were missed")
                }
                Event::PubSub(PubSubEvent::SubscribeFailed { filter, error, .. }) => {
                    eprintln!("subscribing to {filter:?} failed: {error}")
                }
                Event::ConnectFailed { error, .. } => eprintln!("cannot connect: {error}"),
                other => log::info!("{other:?}"),
            }
        }
    });

    let mut messages = subscriber.messages();
    let mut received = 0;
    while let Some((topic, any)) = messages.next().await {
        match any.to_msg::<HelloWorld>() {
            Ok(hello) => println!("{topic} {} {}", hello.sequence, hello.text),
            Err(_) => println!("{topic} ({})", any.type_url),
        }
        received += 1;
        if count.is_some_and(|n| received >= n) {
            break;
        }
    }
    endpoint.close().await;
    Ok(())
}
