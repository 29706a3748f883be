//! Echo server over SCTP (on UDP): sends every message back to its sender, unchanged and in
//! order. The SCTP twin of `tcp-echo-server`.
//!
//! `HelloWorld` messages go through a typed handler; every other type goes through the
//! dispatcher's fallback and is echoed as is. One UDP port serves every association; a peer
//! that sends garbage loses only its own association, and stray datagrams touch none.
//!
//! ```text
//! cargo run --features sctp --example sctp-echo-server [ADDR]   # ADDR defaults to 127.0.0.1:7878
//! ```
//!
//! Once bound it prints `listening on <ip:port>` (the real UDP port when ADDR has port 0).

use std::sync::Arc;

use connect::dispatch::{Context, Dispatcher, Reply};
use connect::proto::example::HelloWorld;
use connect::transport::sctp::SctpListener;
use futures::StreamExt;
use prost_types::Any;

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7878".into());

    let listener = SctpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr());

    let dispatcher = Arc::new(
        Dispatcher::new()
            .on(|hello: HelloWorld, _: Context| async move {
                Ok::<_, connect::Error>(Reply::message(&hello))
            })
            .fallback(
                |any: Any, _: Context| async move { Ok::<_, connect::Error>(Reply::any(any)) },
            ),
    );

    let mut incoming = listener.incoming();
    while let Some(conn) = incoming.next().await {
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                // Only a failed UDP socket ends up here: nothing more will be accepted.
                log::error!("accept failed: {e}");
                return Err(e.into());
            }
        };
        let dispatcher = dispatcher.clone();
        async_std::task::spawn(async move {
            let info = conn.info().clone();
            match dispatcher.serve(conn).await {
                Ok(()) => log::info!("{info} closed"),
                Err(e) => log::warn!("{info} ended: {e}"),
            }
        });
    }
    Ok(())
}
