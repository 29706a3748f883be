//! The five-minute tour: a server and a client in one process, talking typed protobuf over TCP.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! The server registers a handler for `HelloWorld` with a [`Dispatcher`]; the client sends a few
//! greetings and prints the server's typed replies. Everything travels as length-delimited
//! `google.protobuf.Any` frames, so a client in any language could stand in for ours.

use std::sync::Arc;

use connect::dispatch::{Context, Dispatcher, Reply};
use connect::proto::example::HelloWorld;
use connect::transport::tcp::{self, TcpListener};

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    // Server: bind any free loopback port and answer HelloWorld messages.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("server: listening on {addr}");
    let dispatcher = Arc::new(
        Dispatcher::new().on(|hello: HelloWorld, cx: Context| async move {
            let peer = cx.connection().peer_addr();
            println!(
                "server: got #{} {:?} from {peer:?}",
                hello.sequence, hello.text
            );
            let text = format!("{}, world!", hello.text);
            Ok::<_, connect::Error>(Reply::message(&HelloWorld { text, ..hello }))
        }),
    );
    let server = async_std::task::spawn(async move {
        let conn = listener.accept().await?;
        dispatcher.serve(conn).await
    });

    // Client: connect, send, read the typed replies.
    let mut conn = tcp::connect(addr).await?;
    for (sequence, text) in (1..).zip(["Hello", "Hi", "Good morning"]) {
        conn.send_message(&HelloWorld {
            text: text.into(),
            sequence,
        })
        .await?;
        let reply: HelloWorld = conn
            .recv_message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("server closed early"))?;
        println!("client: reply #{} {:?}", reply.sequence, reply.text);
    }
    // Closing flushes and ends the stream; the server sees a clean end and stops serving.
    conn.close().await?;
    server.await?;
    println!("done: server and client closed cleanly");
    Ok(())
}
