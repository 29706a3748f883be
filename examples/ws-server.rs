//! WebSocket server with a browser page: open the printed URL and the page (plain HTML and
//! JavaScript with protobuf.js, served from this port) opens a session over WebSocket, echoes
//! messages and shows a live ticker the server publishes.
//!
//! ```text
//! cargo run --features websocket --example ws-server [ADDR]            # sessions (the page)
//! cargo run --features websocket --example ws-server -- --bare [ADDR]  # bare frames, echoed
//! ```
//!
//! ADDR defaults to 127.0.0.1:8080. Once bound it prints `listening on <ip:port>` (the real port
//! when ADDR has port 0) and `open http://<ip:port>/`.
//!
//! * `GET /` serves `examples/ws/index.html`, `/app.js` the page's script, `/protobuf.min.js`
//!   protobuf.js (vendored from npm, see `examples/ws/vendor/README.md`), `/proto/...` the
//!   `.proto` files the page parses: everything is compiled into this binary, so the page works
//!   without the internet.
//! * `ws://<ip:port>/connect` (subprotocol `connect.v1`) upgrades. By default each link is a
//!   session (PROTOCOL.md §3, heartbeats every 5 s): every application message is echoed back
//!   byte for byte, and a `connect.example.v1.HelloWorld { text: "tick N", sequence: N }` is
//!   sent every 500 ms. With `--bare`, links carry bare frames, each echoed.

use std::sync::Arc;
use std::time::Duration;

use connect::dispatch::{Context, Dispatcher, Reply};
use connect::peer::{Peer, PeerConfig};
use connect::prost_types::Any;
use connect::proto::example::HelloWorld;
use connect::session::{self, SessionConfig};
use connect::transport::ws::{HttpRequest, Upgrade, WsConfig, WsConnection, WsListener};

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
        "/proto/connect/example/v1/hello.proto",
        "text/plain; charset=utf-8",
        include_str!("../proto/connect/example/v1/hello.proto"),
    ),
];

/// How often the ticker publishes.
const TICK: Duration = Duration::from_millis(500);

async fn serve_file(request: HttpRequest) -> anyhow::Result<()> {
    let file = FILES.iter().find(|(path, _, _)| *path == request.path());
    match (request.method(), file) {
        ("GET", Some((_, content_type, body))) => {
            Ok(request.respond(200, content_type, body.as_bytes()).await?)
        }
        _ => Ok(request.respond(404, "text/plain", b"not found\n").await?),
    }
}

/// One session: echo through the dispatcher, and a ticker on the same link.
async fn serve_session(conn: WsConnection, dispatcher: Arc<Dispatcher>) -> anyhow::Result<()> {
    let config = SessionConfig::new().with_heartbeat(Some(Duration::from_secs(5)));
    let (session, driver) = session::accept(conn, &config).await?;
    async_std::task::spawn(driver);
    let (peer, driver) = Peer::new(session, dispatcher, &PeerConfig::new());
    let ticker = peer.clone();
    async_std::task::spawn(async move {
        // Until publish/subscribe lands, the ticker is a plain message on every session; the
        // page's topic view (examples/ws/app.js, "TOPICS") is where subscriptions will go.
        for sequence in 1.. {
            async_std::task::sleep(TICK).await;
            let tick = HelloWorld {
                text: format!("tick {sequence}"),
                sequence,
            };
            if ticker.send_message(&tick).await.is_err() {
                break;
            }
        }
    });
    driver.await;
    peer.closed().await.map_err(|e| anyhow::anyhow!("{e}"))
}

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut bare = false;
    let mut addr = "127.0.0.1:8080".to_string();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--bare" => bare = true,
            "-h" | "--help" => {
                println!("usage: ws-server [--bare] [ADDR]  (ADDR defaults to 127.0.0.1:8080)");
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
    // Every message goes back as it came (type URL and bytes untouched).
    let dispatcher = Arc::new(
        Dispatcher::new().fallback(|any: Any, _: Context| async move {
            Ok::<_, connect::Error>(Reply::any(any))
        }),
    );

    loop {
        let handshake = match listener.accept().await {
            Ok(handshake) => handshake,
            Err(e) => {
                log::warn!("accept failed: {e}");
                async_std::task::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let dispatcher = dispatcher.clone();
        async_std::task::spawn(async move {
            let peer = handshake.peer_addr();
            let result = match handshake.upgrade_or_http().await {
                Ok(Upgrade::Http(request)) => serve_file(request).await,
                Ok(Upgrade::WebSocket(conn)) if bare => {
                    dispatcher.serve(conn).await.map_err(Into::into)
                }
                Ok(Upgrade::WebSocket(conn)) => serve_session(conn, dispatcher).await,
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(()) => log::debug!("{peer:?} done"),
                Err(e) => log::info!("{peer:?}: {e}"),
            }
        });
    }
}
