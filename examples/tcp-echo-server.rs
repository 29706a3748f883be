//! Echo server: sends every message back to its sender, unchanged and in order.
//!
//! `HelloWorld` messages go through a typed handler; every other type goes through the
//! dispatcher's fallback and is echoed as is, so clients in any language can test their framing
//! with any message. A peer that sends garbage loses only its own connection.
//!
//! ```text
//! cargo run --example tcp-echo-server [ADDR]                 # bare frames (the default)
//! cargo run --example tcp-echo-server -- --session [ADDR]    # sessions, anonymous clients
//! cargo run --example tcp-echo-server -- --user NAME --password PW [--heartbeat-ms MS] [ADDR]
//! cargo run --example tcp-echo-server -- --session --no-heartbeats --handshake-timeout-ms MS
//! cargo run --example tcp-echo-server -- --reliable [--ack-every N] [ADDR]
//! ```
//!
//! `--reliable` (implies `--session`) serves reliable streams (`connect::reliable`): clients
//! that lose their connection resume where they were. Session clients that do not ask for
//! reliable delivery are still served as plain sessions. `--ack-every N` confirms received
//! messages only every N messages, or when half the receive window (512 of 1024 messages) is
//! taken and not confirmed, and otherwise never: for tests that kill the server before it
//! confirms anything.
//!
//! ADDR defaults to 127.0.0.1:7878. `--user`/`--password` set the one account the server
//! accepts (PLAIN) and imply `--session`. `--heartbeat-ms MS` is the heartbeat interval the
//! server wishes for (default 10000); `--heartbeat-ms 0` or `--no-heartbeats` expresses no
//! preference, so a client without one either gets a session without heartbeats (PROTOCOL.md,
//! section 3). `--handshake-timeout-ms MS` (default 10000) bounds how long a client may take to
//! send its `Hello`. Once bound it prints `listening on <ip:port>` (the
//! real port when ADDR has port 0).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use connect::dispatch::{Context, Dispatcher, Reply};
use connect::proto::example::HelloWorld;
use connect::reliable::{ReliableConfig, ReliableServer, ReliableSession};
use connect::session::{PlainAuthenticator, SessionConfig};
use connect::transport::tcp::{self, TcpListener};
use futures::StreamExt;
use prost_types::Any;

#[derive(Default)]
struct Args {
    addr: Option<String>,
    session: bool,
    user: Option<String>,
    password: Option<String>,
    heartbeat_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    reliable: bool,
    ack_every: Option<u64>,
}

const USAGE: &str = "\
usage: tcp-echo-server [ADDR] [--session] [--user NAME --password PW]
                       [--heartbeat-ms MS | --no-heartbeats] [--handshake-timeout-ms MS]
                       [--reliable [--ack-every N]]
  ADDR defaults to 127.0.0.1:7878; without options it serves bare frames
  --heartbeat-ms MS          heartbeat interval the server wishes for (default 10000);
                             0 = no preference: no heartbeats unless the client asks for them
  --no-heartbeats            same as --heartbeat-ms 0
  --handshake-timeout-ms MS  time a client has to send its Hello (default 10000, at least 1)";

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--session" => args.session = true,
            "--reliable" => args.reliable = true,
            "--ack-every" => args.ack_every = Some(value()?.parse()?),
            "--user" => args.user = Some(value()?),
            "--password" => args.password = Some(value()?),
            "--heartbeat-ms" => args.heartbeat_ms = Some(value()?.parse()?),
            "--no-heartbeats" => args.heartbeat_ms = Some(0),
            "--handshake-timeout-ms" => {
                let ms: u64 = value()?.parse()?;
                anyhow::ensure!(ms > 0, "--handshake-timeout-ms must be at least 1");
                args.handshake_timeout_ms = Some(ms);
            }
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

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = parse_args()?;
    let addr = args.addr.clone().unwrap_or_else(|| "127.0.0.1:7878".into());

    // With credentials or --session: sessions. Otherwise bare frames.
    let session_config = match (&args.user, &args.password) {
        (Some(user), Some(password)) => {
            let auth = PlainAuthenticator::new().with_user(user, password);
            Some(SessionConfig::new().with_authenticator(auth))
        }
        (None, None) => (args.session || args.reliable).then(SessionConfig::new),
        _ => anyhow::bail!("--user and --password go together"),
    };
    let session_config = session_config.map(|config| {
        let mut config = config.with_property("name", "tcp-echo-server");
        config = match args.heartbeat_ms {
            // 0 is "no preference", as in the Hello: not a 0 ms (raised to 10 ms) wish.
            Some(0) => config.with_heartbeat(None),
            Some(ms) => config.with_heartbeat(Some(Duration::from_millis(ms))),
            None => config,
        };
        if let Some(ms) = args.handshake_timeout_ms {
            config = config.with_handshake_timeout(Duration::from_millis(ms));
        }
        Arc::new(config)
    });

    let listener = TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);

    let dispatcher = Arc::new(
        Dispatcher::new()
            .on(|hello: HelloWorld, _: Context| async move {
                Ok::<_, connect::Error>(Reply::message(&hello))
            })
            .fallback(
                |any: Any, _: Context| async move { Ok::<_, connect::Error>(Reply::any(any)) },
            ),
    );

    let reliable = match (&session_config, args.reliable) {
        (Some(config), true) => {
            let mut reliable_config = ReliableConfig::new();
            if let Some(n) = args.ack_every {
                reliable_config = reliable_config
                    .with_ack_every(n)
                    .with_ack_delay(Duration::from_secs(3600));
            }
            Some(ReliableServer::new((**config).clone(), reliable_config))
        }
        _ => None,
    };

    let mut incoming = listener.incoming();
    while let Some(conn) = incoming.next().await {
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                log::warn!("accept failed: {e}");
                // Typically out of file descriptors: give connections a moment to close.
                async_std::task::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let dispatcher = dispatcher.clone();
        let session_config = session_config.clone();
        let reliable = reliable.clone();
        async_std::task::spawn(async move {
            let info = conn.info().clone();
            let result = match (session_config, reliable) {
                (_, Some(server)) => serve_reliable(&server, conn, &dispatcher).await,
                (None, None) => dispatcher.serve(conn).await,
                (Some(config), None) => match tcp::accept_session(conn, &config).await {
                    Ok(session) => {
                        log::info!(
                            "{} open, identity {:?}",
                            session.info(),
                            session.info().identity()
                        );
                        dispatcher.serve_session(session).await
                    }
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(()) => log::info!("{info} closed"),
                Err(e) => log::warn!("{info} ended: {e}"),
            }
        });
    }
    Ok(())
}

/// One connection of a reliable server: a new stream gets an echo task; a resumed one goes on
/// with its task; a plain session is served by the dispatcher.
async fn serve_reliable(
    server: &ReliableServer,
    conn: tcp::TcpConnection,
    dispatcher: &Dispatcher,
) -> connect::Result<()> {
    let accepted = server.accept(conn).await?;
    if let Some((session, driver)) = accepted.plain {
        tcp::spawn_driver(driver);
        return dispatcher.serve_session(session).await;
    }
    if let Some(stream) = accepted.new_stream {
        async_std::task::spawn(echo_stream(stream));
    }
    accepted.driver.await;
    Ok(())
}

async fn echo_stream(mut stream: ReliableSession) {
    loop {
        match stream.recv().await {
            Ok(Some(any)) => {
                if let Err(e) = stream.send(any).await {
                    log::warn!("reliable stream: {e}");
                    return;
                }
            }
            Ok(None) => return log::info!("reliable stream closed"),
            Err(e) => return log::warn!("reliable stream: {e}"),
        }
    }
}
