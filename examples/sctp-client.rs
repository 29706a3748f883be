//! Client for `sctp-echo-server`: sends a few `HelloWorld` messages over SCTP (on UDP) and
//! prints the typed replies. The SCTP twin of `tcp-client`.
//!
//! ```text
//! cargo run --features sctp --example sctp-echo-server &
//! cargo run --features sctp --example sctp-client [ADDR]   # ADDR defaults to 127.0.0.1:7878
//! ```

use connect::proto::example::HelloWorld;
use connect::transport::sctp;

const GREETINGS: [&str; 3] = ["hello", "bonjour", "hallo"];

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7878".into());
    let mut conn = sctp::connect(&addr).await?;
    println!("connected to {addr}");

    // Pipelined: all requests go out together, then the replies are read in order.
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
    // End of stream, the server's end of stream, then SCTP's shutdown: nothing is left
    // half-done when the process exits.
    sctp::shutdown(conn).await?;
    Ok(())
}
