//! WebSocket server with a browser page: open the printed URL and the page (plain HTML and
//! JavaScript with protobuf.js, served from this port) opens a session over WebSocket,
//! subscribes to the server's ticker (publish/subscribe, PROTOCOL.md section 12), shows its
//! messages live and echoes what you type.
//!
//! ```text
//! cargo run --features websocket --example ws-server [ADDR]            # sessions (the page)
//! cargo run --features websocket --example ws-server -- --bare [ADDR]  # bare frames
//! cargo run --features websocket --example ws-server -- --tick-ms 100  # a faster ticker
//! ```
//!
//! ADDR defaults to 127.0.0.1:8080. Once bound it prints `listening on <ip:port>` (the real port
//! when ADDR has port 0) and `open http://<ip:port>/`.
//!
//! * `GET /` serves `examples/ws/index.html`, `/app.js` the page's script, `/protobuf.min.js`
//!   protobuf.js (vendored from npm, see `examples/ws/vendor/README.md`), `/proto/...` the
//!   `.proto` files the page parses: everything is compiled into this binary, so the page works
//!   without the internet.
//! * `ws://<ip:port>/connect` (subprotocol `connect.v1`) upgrades. Every link joins one
//!   [`Endpoint`] whose [`Publisher`] publishes the ticker: every `--tick-ms` (default 500) a
//!   `connect.example.v1.HelloWorld { text: "tick N", sequence: N }` on topic `ticks.odd` or
//!   `ticks.even` (by N), sent only to links subscribed to a matching filter (`ticks.*`,
//!   `ticks.>`, `ticks.odd`, ...). Every other application message is echoed back byte for
//!   byte. By default each link is a session (PROTOCOL.md section 3, heartbeats every 5 s); with
//!   `--bare`, links carry bare frames.

use std::time::Duration;

use connect::dispatch::{Context, Dispatcher, Reply};
use connect::endpoint::{Endpoint, EndpointConfig};
use connect::prost_types::Any;
use connect::proto::example::HelloWorld;
use connect::pubsub::{Publisher, PublisherConfig};
use connect::session::SessionConfig;
use connect::transport::ws::{HttpRequest, Upgrade, WsConfig, WsConnection, WsListener};
use futures::channel::mpsc;
use futures::{SinkExt as _, StreamExt as _};

/// The page and what it loads, by path.
const FILES: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("ws/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("ws/app.js"),
    ),
    (
        "/protobuf.min.js",
        "text/javascript; charset=utf-8",
        include_str!("ws/vendor/protobuf.min.js"),
    ),
    (
        "/proto/connect/v1/session.proto",
        "text/plain; charset=utf-8",
        include_str!("../proto/connect/v1/session.proto"),
    ),
    (
        "/proto/connect/pubsub/v1/pubsub.proto",
        "text/plain; charset=utf-8",
        include_str!("../proto/connect/pubsub/v1/pubsub.proto"),
    ),
    (
        "/proto/connect/example/v1/hello.proto",
        "text/plain; charset=utf-8",
        include_str!("../proto/connect/example/v1/hello.proto"),
    ),
];

async fn serve_file(request: HttpRequest) -> anyhow::Result<()> {
    let file = FILES.iter().find(|(path, _, _)| *path == request.path());
    match (request.method(), file) {
        ("GET", Some((_, content_type, body))) => {
            Ok(request.respond(200, content_type, body.as_bytes()).await?)
        }
        _ => Ok(request.respond(404, "text/plain", b"not found\n").await?),
    }
}

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut bare = false;
    let mut tick = Duration::from_millis(500);
    let mut addr = "127.0.0.1:8080".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bare" => bare = true,
            "--tick-ms" => {
                let ms: u64 = args
                    .next()
                    .and_then(|ms| ms.parse().ok())
                    .filter(|&ms| ms > 0)
                    .ok_or_else(|| anyhow::anyhow!("--tick-ms takes a positive number"))?;
                tick = Duration::from_millis(ms);
            }
            "-h" | "--help" => {
                println!(
                    "usage: ws-server [--bare] [--tick-ms MS] [ADDR]  (ADDR defaults to 127.0.0.1:8080)"
                );
                return Ok(());
            }
            flag if flag.starts_with("--") => anyhow::bail!("unknown option {flag}"),
            _ => addr = arg,
        }
    }

    let listener = WsListener::bind(&addr, WsConfig::new()).await?;
    let local = listener.local_addr()?;
    println!("listening on {local}");
    println!("open http://{local}/");

    // One endpoint holds every WebSocket link: the publisher answers Subscribe/Unsubscribe and
    // sends each link what its filters match; every other message goes back as it came (type
    // URL and bytes untouched).
    let publisher = Publisher::new(PublisherConfig::new());
    let dispatcher = publisher.route(
        Dispatcher::new().fallback(|any: Any, _: Context| async move {
            Ok::<_, connect::Error>(Reply::any(any))
        }),
    );
    let mut config = EndpointConfig::new();
    if !bare {
        config =
            config.with_session(SessionConfig::new().with_heartbeat(Some(Duration::from_secs(5))));
    }
    let endpoint = Endpoint::new(config, dispatcher, |task| {
        async_std::task::spawn(task);
    });
    publisher.attach(&endpoint);
    // Joins, leaves and refused handshakes, for people (RUST_LOG=debug).
    let mut events = endpoint.events();
    async_std::task::spawn(async move {
        while let Some(event) = events.next().await {
            log::debug!("{event:?}");
        }
    });
    // Upgraded connections go to the endpoint through a short channel: the endpoint pauses
    // taking them at its bound on links, and upgrades then wait.
    let (upgraded, incoming) = mpsc::channel::<connect::Result<WsConnection>>(16);
    endpoint.accept(incoming);

    let ticker = publisher.clone();
    async_std::task::spawn(async move {
        for sequence in 1u64.. {
            async_std::task::sleep(tick).await;
            let topic = if sequence % 2 == 1 {
                "ticks.odd"
            } else {
                "ticks.even"
            };
            let message = HelloWorld {
                text: format!("tick {sequence}"),
                sequence,
            };
            if let Err(e) = ticker.publish(topic, &message).await {
                log::warn!("publishing failed: {e}");
            }
        }
    });

    loop {
        let handshake = match listener.accept().await {
            Ok(handshake) => handshake,
            Err(e) => {
                log::warn!("accept failed: {e}");
                async_std::task::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut upgraded = upgraded.clone();
        async_std::task::spawn(async move {
            let peer = handshake.peer_addr();
            let result = match handshake.upgrade_or_http().await {
                Ok(Upgrade::Http(request)) => serve_file(request).await,
                Ok(Upgrade::WebSocket(conn)) => {
                    let _ = upgraded.send(Ok(conn)).await;
                    Ok(())
                }
                Err(e) => Err(e.into()),
            };
            if let Err(e) = result {
                log::info!("{peer:?}: {e}");
            }
        });
    }
}
