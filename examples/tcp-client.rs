//! Client for `tcp-echo-server`: sends a few `HelloWorld` messages and prints the typed replies.
//!
//! ```text
//! cargo run --example tcp-echo-server &
//! cargo run --example tcp-client [ADDR]      # ADDR defaults to 127.0.0.1:7878
//! ```

use connect::proto::example::HelloWorld;
use connect::transport::tcp;

const GREETINGS: [&str; 3] = ["hello", "bonjour", "hallo"];

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7878".into());
    let mut conn = tcp::connect(&addr).await?;
    println!("connected to {addr}");

    // Pipelined: all requests go out in one write, then the replies are read in order.
    for (sequence, text) in (1..).zip(GREETINGS) {
        conn.feed_message(&HelloWorld {
            text: text.into(),
            sequence,
        })
        .await?;
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
