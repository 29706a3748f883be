//! Echo server: sends every message back to its sender, unchanged and in order.
//!
//! `HelloWorld` messages go through a typed handler; every other type goes through the
//! dispatcher's fallback and is echoed as is, so clients in any language can test their framing
//! with any message. A peer that sends garbage loses only its own connection.
//!
//! ```text
//! cargo run --example tcp-echo-server [ADDR]     # ADDR defaults to 127.0.0.1:7878
//! ```
//!
//! Once bound it prints `listening on <ip:port>` (the real port when ADDR has port 0).

use std::sync::Arc;

use connect::dispatch::{Context, Dispatcher, Reply};
use connect::proto::example::HelloWorld;
use connect::transport::tcp::TcpListener;
use futures::StreamExt;
use prost_types::Any;

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7878".into());

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

    let mut incoming = listener.incoming();
    while let Some(conn) = incoming.next().await {
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                log::warn!("accept failed: {e}");
                // Typically out of file descriptors: give connections a moment to close.
                async_std::task::sleep(std::time::Duration::from_millis(50)).await;
                continue;
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
