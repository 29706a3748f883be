//! Request/reply server: a small typed calculator (`proto/connect/example/v1/calc.proto`)
//! answering calls on every connection, many at once.
//!
//! ```text
//! cargo run --example rpc-server [ADDR]      # ADDR defaults to 127.0.0.1:7879
//! cargo run --example rpc-client [ADDR]
//! ```
//!
//! Methods are message types: `Add` is answered with a `Sum`, `Divide` with a `Quotient` (or the
//! status `INVALID_ARGUMENT` for a divisor of 0), `Sleep { ms }` with a `Slept` after `ms`
//! milliseconds (calls with a shorter deadline end `DEADLINE_EXCEEDED`, and the sleep is
//! dropped). A request of any other type is answered `NOT_FOUND`. Handlers of one connection run
//! concurrently (up to 64). Once bound it prints `listening on <ip:port>` (the real port when
//! ADDR has port 0). Any language can call it from `proto/PROTOCOL.md` section 11 alone:
//! `tests/python/rpc_client.py` does.

use std::time::Duration;

use connect::dispatch::{Context, Dispatcher, Reply};
use connect::peer::{Peer, PeerConfig};
use connect::proto::example::{Add, Divide, Quotient, Sleep, Slept, Sum};
use connect::rpc::Status;
use connect::transport::tcp::TcpListener;
use futures::StreamExt;

/// The longest sleep a caller may ask for.
const MAX_SLEEP_MS: u64 = 60_000;

fn calculator() -> Dispatcher {
    Dispatcher::new()
        .on(|add: Add, _: Context| async move {
            let value = add
                .a
                .checked_add(add.b)
                .ok_or_else(|| Status::new(connect::rpc::StatusCode::OutOfRange, "overflow"))?;
            Ok::<_, Status>(Reply::message(&Sum { value }))
        })
        .on(|divide: Divide, _: Context| async move {
            if divide.divisor == 0 {
                return Err(Status::invalid_argument("division by zero"));
            }
            let value = divide
                .dividend
                .checked_div(divide.divisor)
                .ok_or_else(|| Status::new(connect::rpc::StatusCode::OutOfRange, "overflow"))?;
            Ok(Reply::message(&Quotient { value }))
        })
        .on(|sleep: Sleep, _: Context| async move {
            let ms = sleep.ms.min(MAX_SLEEP_MS);
            async_std::task::sleep(Duration::from_millis(ms)).await;
            Ok::<_, Status>(Reply::message(&Slept { ms }))
        })
}

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let addr = match std::env::args().nth(1) {
        Some(flag) if flag.starts_with('-') => {
            println!("usage: rpc-server [ADDR]\n  ADDR defaults to 127.0.0.1:7879");
            std::process::exit(if flag == "-h" || flag == "--help" {
                0
            } else {
                2
            });
        }
        Some(addr) => addr,
        None => "127.0.0.1:7879".into(),
    };
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let calculator = std::sync::Arc::new(calculator());
    let mut incoming = listener.incoming();
    while let Some(conn) = incoming.next().await {
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                log::warn!("accept failed: {e}");
                async_std::task::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let info = conn.info().clone();
        let (peer, driver) = Peer::new(conn, calculator.clone(), &PeerConfig::new());
        async_std::task::spawn(driver);
        async_std::task::spawn(async move {
            match peer.closed().await {
                Ok(()) => log::info!("{info} closed"),
                Err(e) => log::warn!("{info} ended: {e}"),
            }
        });
    }
    Ok(())
}
