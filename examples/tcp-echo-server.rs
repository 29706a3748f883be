//! Echo server: sends every message back to its sender, unchanged and in order.
//!
//! Every message goes back byte for byte as it came (the dispatcher's fallback hands back the
//! `Any` it received: type URL, field order and unknown fields untouched), so clients in any
//! language can test their framing with any message. A peer that sends garbage loses only its
//! own connection. The serving code is shared with `tls-echo-server` (`examples/common/echo.rs`).
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

#[path = "common/echo.rs"]
mod echo;

use std::time::Duration;

use connect::transport::tcp::TcpListener;
use futures::StreamExt;

fn usage() -> String {
    format!(
        "usage: tcp-echo-server [ADDR] {}\n  ADDR defaults to 127.0.0.1:7878; without options it serves bare frames",
        echo::OPTIONS_USAGE
    )
}

fn parse_args() -> anyhow::Result<(Option<String>, echo::Options)> {
    let (mut addr, mut options) = (None, echo::Options::default());
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if options.parse(&arg, &mut it)? {
            continue;
        }
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            flag if flag.starts_with("--") => anyhow::bail!("unknown option {flag}\n{}", usage()),
            _ => addr = Some(arg),
        }
    }
    Ok((addr, options))
}

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let (addr, options) = parse_args()?;
    let addr = addr.unwrap_or_else(|| "127.0.0.1:7878".into());
    let mode = options.mode("tcp-echo-server")?;

    let listener = TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let dispatcher = echo::dispatcher();

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
        let mode = mode.clone();
        async_std::task::spawn(async move {
            let info = conn.info().clone();
            match echo::serve(conn, mode, &dispatcher).await {
                Ok(()) => log::info!("{info} closed"),
                Err(e) => log::warn!("{info} ended: {e}"),
            }
        });
    }
    Ok(())
}
