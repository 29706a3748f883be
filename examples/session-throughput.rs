//! What a session and a reliable stream cost over a bare connection: one-way throughput of
//! small messages over loopback TCP, and the heartbeat round-trip time of an idle session.
//!
//! ```text
//! cargo run --release --example session-throughput [MESSAGES]    # default 200000
//! ```
//!
//! For each mode the client pipelines MESSAGES `HelloWorld`s (24-byte payload) and the server
//! counts them, then answers once; the best of three runs is printed. `QUEUE=N` sets the
//! session's queue length (default 64).

use std::time::{Duration, Instant};

use connect::proto::example::HelloWorld;
use connect::proto::v1::ReasonCode;
use connect::session::SessionConfig;
use connect::transport::tcp::{self, TcpListener};

fn msg(sequence: u64) -> HelloWorld {
    HelloWorld {
        text: "a small message payload!".into(),
        sequence,
    }
}

async fn bare(n: u64) -> anyhow::Result<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = async_std::task::spawn(async move {
        let mut conn = listener.accept().await?;
        for _ in 0..n {
            conn.recv()
                .await?
                .ok_or_else(|| anyhow::anyhow!("early end"))?;
        }
        conn.send_message(&msg(n)).await?;
        anyhow::Ok(())
    });
    let mut conn = tcp::connect(addr).await?;
    let start = Instant::now();
    for i in 0..n {
        conn.feed_message(&msg(i)).await?;
    }
    conn.flush().await?;
    let _: Option<HelloWorld> = conn.recv_message().await?;
    let elapsed = start.elapsed();
    server.await?;
    Ok(elapsed)
}

async fn session(n: u64) -> anyhow::Result<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let queue: usize = std::env::var("QUEUE")
        .ok()
        .and_then(|q| q.parse().ok())
        .unwrap_or(64);
    let config = SessionConfig::new().with_queue_len(queue);
    let server_config = config.clone();
    let server = async_std::task::spawn(async move {
        let conn = listener.accept().await?;
        let mut session = tcp::accept_session(conn, &server_config, spawn).await?;
        for _ in 0..n {
            session
                .recv()
                .await?
                .ok_or_else(|| anyhow::anyhow!("early end"))?;
        }
        session.send_message(&msg(n)).await?;
        while session.recv().await?.is_some() {}
        anyhow::Ok(())
    });
    let mut session = tcp::connect_session(addr, &config, spawn).await?;
    let start = Instant::now();
    for i in 0..n {
        session.feed_message(&msg(i)).await?;
    }
    session.flush().await?;
    let _: Option<HelloWorld> = session.recv_message().await?;
    let elapsed = start.elapsed();
    session.close_with(ReasonCode::Normal, "").await?;
    server.await?;
    Ok(elapsed)
}

/// The same over a reliable stream (`connect::reliable`): acknowledged, resumable.
async fn reliable(n: u64) -> anyhow::Result<Duration> {
    use connect::reliable::{ReliableConfig, ReliableServer};
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = async_std::task::spawn(async move {
        let reliable = ReliableServer::new(SessionConfig::new(), ReliableConfig::new());
        let accepted = reliable.accept(listener.accept().await?).await?;
        let connect::reliable::Accepted::NewStream { mut stream, driver } = accepted else {
            anyhow::bail!("not a new stream");
        };
        async_std::task::spawn(driver);
        for _ in 0..n {
            stream
                .recv()
                .await?
                .ok_or_else(|| anyhow::anyhow!("early end"))?;
        }
        stream.feed_message(&msg(n)).await?;
        while stream.recv().await?.is_some() {}
        anyhow::Ok(())
    });
    let mut stream =
        tcp::connect_reliable(addr, SessionConfig::new(), ReliableConfig::new(), spawn);
    let start = Instant::now();
    for i in 0..n {
        stream.feed_message(&msg(i)).await?;
    }
    let _: Option<HelloWorld> = stream.recv_message().await?;
    let elapsed = start.elapsed();
    stream.close().await?;
    server.await?;
    Ok(elapsed)
}

async fn idle_rtt() -> anyhow::Result<Option<Duration>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = SessionConfig::new().with_heartbeat(Some(Duration::from_millis(20)));
    let server_config = config.clone();
    let server = async_std::task::spawn(async move {
        let conn = listener.accept().await?;
        let mut session = tcp::accept_session(conn, &server_config, spawn).await?;
        while session.recv().await?.is_some() {}
        anyhow::Ok(())
    });
    let mut session = tcp::connect_session(addr, &config, spawn).await?;
    async_std::task::sleep(Duration::from_millis(500)).await;
    let rtt = session.rtt();
    session.close_with(ReasonCode::Normal, "").await?;
    server.await?;
    Ok(rtt)
}

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    let n: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 200_000,
    };
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let mut best_bare = Duration::MAX;
    let mut best_session = Duration::MAX;
    let mut best_reliable = Duration::MAX;
    for _ in 0..3 {
        best_bare = best_bare.min(bare(n).await?);
        best_session = best_session.min(session(n).await?);
        best_reliable = best_reliable.min(reliable(n).await?);
    }
    println!(
        "bare connection: {n} messages in {best_bare:?} ({:.0} msg/s)",
        rate(best_bare)
    );
    println!(
        "session:         {n} messages in {best_session:?} ({:.0} msg/s, {:.2}x the bare time)",
        rate(best_session),
        best_session.as_secs_f64() / best_bare.as_secs_f64()
    );
    println!(
        "reliable stream: {n} messages in {best_reliable:?} ({:.0} msg/s, {:.2}x the bare time)",
        rate(best_reliable),
        best_reliable.as_secs_f64() / best_bare.as_secs_f64()
    );
    println!("idle session heartbeat rtt: {:?}", idle_rtt().await?);
    Ok(())
}

/// Where the library's background work (session and reliable-stream drivers) runs: async-std.
fn spawn(task: connect::transport::Task) {
    async_std::task::spawn(task);
}
