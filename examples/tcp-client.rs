//! Client for `tcp-echo-server`: sends a few `HelloWorld` messages and prints the typed replies.
//!
//! ```text
//! cargo run --example tcp-echo-server &
//! cargo run --example tcp-client [ADDR]      # ADDR defaults to 127.0.0.1:7878
//!
//! cargo run --example tcp-echo-server -- --user alice --password s3cret &
//! cargo run --example tcp-client -- --user alice --password s3cret [ADDR]
//! ```
//!
//! `--session` (implied by `--user`/`--password`) opens a session: handshake, heartbeats
//! (`--heartbeat-ms MS`), and a graceful close at the end.
//!
//! `--reliable N` (against `tcp-echo-server --reliable`) sends N numbered messages on a
//! reliable stream, reconnecting through any number of dropped connections, and checks that
//! every echo comes back exactly once and in order (after a server restart, unconfirmed
//! messages are sent again and their echoes counted as duplicates). It prints every lifecycle
//! event, then `reliable: N echoes in order, D duplicates`; it fails on a gap or reordering.

use std::time::Duration;

use anyhow::Context as _;
use connect::proto::example::HelloWorld;
use connect::proto::v1::{Credentials, ReasonCode};
use connect::session::SessionConfig;
use connect::transport::tcp;

const GREETINGS: [&str; 3] = ["hello", "bonjour", "hallo"];

#[derive(Default)]
struct Args {
    addr: Option<String>,
    session: bool,
    user: Option<String>,
    password: Option<String>,
    heartbeat_ms: Option<u64>,
    reliable: Option<u64>,
}

const USAGE: &str = "usage: tcp-client [ADDR] [--session] [--user NAME --password PW] [--heartbeat-ms MS]\n                  [--reliable N]\n  ADDR defaults to 127.0.0.1:7878; --reliable N sends N numbered messages through reconnects";

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--session" => args.session = true,
            "--reliable" => args.reliable = Some(value()?.parse()?),
            "--user" => args.user = Some(value()?),
            "--password" => args.password = Some(value()?),
            "--heartbeat-ms" => args.heartbeat_ms = Some(value()?.parse()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            flag if flag.starts_with("--") => anyhow::bail!("unknown option {flag}\n{USAGE}"),
            _ => args.addr = Some(arg),
        }
    }
    Ok(args)
}

fn greeting(sequence: u64, text: &str) -> HelloWorld {
    HelloWorld {
        text: text.into(),
        sequence,
    }
}

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let addr = args.addr.clone().unwrap_or_else(|| "127.0.0.1:7878".into());
    if let Some(n) = args.reliable {
        return reliable(&addr, n, args.heartbeat_ms).await;
    }
    let mut config = SessionConfig::new().with_property("name", "tcp-client");
    match (&args.user, &args.password) {
        (Some(user), Some(password)) => {
            config = config.with_credentials(Credentials::plain(user, password))
        }
        (None, None) if args.session => {}
        (None, None) => return bare(&addr).await,
        _ => anyhow::bail!("--user and --password go together"),
    }
    if let Some(ms) = args.heartbeat_ms {
        config = config.with_heartbeat(Some(Duration::from_millis(ms)));
    }

    let mut session = tcp::connect_session(&addr, &config, spawn).await?;
    let info = session.info();
    println!(
        "session {} with {addr}: version {}, heartbeat {:?}, identity {:?}",
        info.session_id(),
        info.version(),
        info.heartbeat(),
        info.identity()
    );
    for (sequence, text) in (1..).zip(GREETINGS) {
        session.feed_message(&greeting(sequence, text)).await?;
    }
    session.flush().await?;
    for _ in GREETINGS {
        let reply: HelloWorld = session
            .recv_message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("the session ended early"))?;
        println!("reply #{}: {:?}", reply.sequence, reply.text);
    }
    session.close_with(ReasonCode::Normal, "done").await?;
    println!("closed: {:?}", session.end());
    Ok(())
}

/// Bare frames, no session.
async fn bare(addr: &str) -> anyhow::Result<()> {
    let mut conn = tcp::connect(addr).await?;
    println!("connected to {addr}");

    // Pipelined: all requests go out in one write, then the replies are read in order.
    for (sequence, text) in (1..).zip(GREETINGS) {
        conn.feed_message(&greeting(sequence, text)).await?;
    }
    conn.flush().await?;
    for _ in GREETINGS {
        let reply: HelloWorld = conn
            .recv_message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("server closed the connection early"))?;
        println!("reply #{}: {:?}", reply.sequence, reply.text);
    }
    conn.close().await?;
    Ok(())
}

/// `--reliable N`: N numbered messages through reconnects, every echo checked.
async fn reliable(addr: &str, n: u64, heartbeat_ms: Option<u64>) -> anyhow::Result<()> {
    use connect::reliable::{Backoff, ReliableConfig};
    use futures::StreamExt;

    let addr: std::net::SocketAddr = async_std::net::ToSocketAddrs::to_socket_addrs(addr)
        .await?
        .next()
        .context("no address")?;
    let heartbeat = Duration::from_millis(heartbeat_ms.unwrap_or(1000));
    let session_config = SessionConfig::new()
        .with_property("name", "tcp-client")
        .with_heartbeat(Some(heartbeat));
    let config = ReliableConfig::new().with_backoff(
        Backoff::new()
            .with_initial(Duration::from_millis(20))
            .with_max(Duration::from_secs(2))
            .with_max_attempts(Some(100)),
    );
    let stream = tcp::connect_reliable(addr, session_config, config, spawn);
    let mut events = stream.events();
    async_std::task::spawn(async move {
        while let Some(event) = events.next().await {
            println!("event: {event:?}");
        }
    });
    let (mut reader, mut writer) = stream.split();
    let mut sender = writer.clone();
    async_std::task::spawn(async move {
        for sequence in 0..n {
            if let Err(e) = sender.feed_message(&greeting(sequence, "reliable")).await {
                eprintln!("send {sequence}: {e}");
                return;
            }
        }
    });
    let (mut next, mut duplicates) = (0u64, 0u64);
    while next < n {
        let echo: HelloWorld = reader
            .recv_message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("the stream ended after {next} echoes"))?;
        match echo.sequence {
            s if s == next => next += 1,
            s if s < next => duplicates += 1,
            s => anyhow::bail!("gap: expected echo {next}, got {s}"),
        }
    }
    println!(
        "reliable: {n} echoes in order, {duplicates} duplicates; {:?}",
        writer.stats()
    );
    writer.close().await?;
    Ok(())
}

/// Where the library's background work (session and reliable-stream drivers) runs: async-std.
fn spawn(task: connect::transport::Task) {
    async_std::task::spawn(task);
}
