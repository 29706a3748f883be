//! SCTP against TCP through `connect`, in one run on loopback: W1 (one-way throughput) and W2
//! (ping-pong latency).
//!
//! ```text
//! cargo run --release --features sctp --example sctp-throughput [--quick]
//! ```
//!
//! * **W1**: one client sends `HelloWorld` messages whose text is 64 B, 1 KiB, 64 KiB and 1 MiB
//!   long as fast as backpressure lets it; the server counts them and answers once at the end.
//!   Reported as messages and MiB per second from the first send to the answer.
//! * **W2**: one 64 B message goes to the server and back, again and again; reported as the
//!   median and 99th percentile round trip.
//!
//! Each transport runs the same code over its own `Connection`: TCP, SCTP over UDP
//! with the default 1200-byte packets (safe on any path), and SCTP with 8 KiB packets (what a
//! loopback or jumbo-frame LAN allows). Numbers from a shared machine are indicative: compare
//! the rows of one run, not runs on different days.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use connect::proto::example::HelloWorld;
use connect::transport::sctp::{self, SctpConfig, SctpListener};
use connect::transport::tcp::{self, TcpListener};
use connect::Connection;
use futures::{AsyncRead, AsyncWrite, StreamExt};

/// First message of a connection: what the server does with the rest.
const SINK: &str = "sink";
const ECHO: &str = "echo";
/// Sequence number of the message that asks a sink for its count.
const REPORT: u64 = u64::MAX;

/// Serves one benchmark connection: counts (sink) or echoes (echo) until the client closes.
async fn serve<T: AsyncRead + AsyncWrite + Unpin>(mut conn: Connection<T>) -> anyhow::Result<()> {
    let Some(mode) = conn.recv_message::<HelloWorld>().await? else {
        return Ok(());
    };
    let mut count = 0u64;
    while let Some(msg) = conn.recv_message::<HelloWorld>().await? {
        if mode.text == ECHO {
            conn.send_message(&msg).await?;
        } else if msg.sequence == REPORT {
            conn.send_message(&HelloWorld {
                text: String::new(),
                sequence: count,
            })
            .await?;
        } else {
            count += 1;
        }
    }
    conn.close().await?;
    Ok(())
}

/// W1: sends `count` messages of `size` bytes of text; returns the time until the server has
/// counted them all.
async fn one_way<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<T>,
    size: usize,
    count: u64,
) -> anyhow::Result<Duration> {
    conn.send_message(&HelloWorld {
        text: SINK.into(),
        sequence: 0,
    })
    .await?;
    let msg = HelloWorld {
        text: "x".repeat(size),
        sequence: 1,
    };
    let start = Instant::now();
    for _ in 0..count {
        conn.feed_message(&msg).await?;
    }
    conn.send_message(&HelloWorld {
        text: String::new(),
        sequence: REPORT,
    })
    .await?;
    let reply: HelloWorld = conn.recv_message().await?.context("no report")?;
    let elapsed = start.elapsed();
    if reply.sequence != count {
        bail!("server counted {} of {count}", reply.sequence);
    }
    Ok(elapsed)
}

/// W2: `count` round trips of a 64 B message after a warm-up; returns each round trip.
async fn ping_pong<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<T>,
    count: usize,
) -> anyhow::Result<Vec<Duration>> {
    conn.send_message(&HelloWorld {
        text: ECHO.into(),
        sequence: 0,
    })
    .await?;
    let msg = HelloWorld {
        text: "p".repeat(64),
        sequence: 1,
    };
    let mut rtts = Vec::with_capacity(count);
    for i in 0..count + count / 10 {
        let start = Instant::now();
        conn.send_message(&msg).await?;
        let _: HelloWorld = conn.recv_message().await?.context("no echo")?;
        if i >= count / 10 {
            rtts.push(start.elapsed());
        }
    }
    rtts.sort();
    Ok(rtts)
}

struct Sizes {
    size: usize,
    count: u64,
}

fn workloads(quick: bool) -> Vec<Sizes> {
    let budget: u64 = if quick { 16 << 20 } else { 128 << 20 };
    [64usize, 1024, 64 * 1024, 1024 * 1024]
        .into_iter()
        .map(|size| Sizes {
            size,
            count: (budget / size as u64).clamp(32, if quick { 50_000 } else { 400_000 }),
        })
        .collect()
}

fn report_w1(transport: &str, size: usize, count: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    println!(
        "W1 {transport:<16} {:>7} B x {count:>6}: {:>10.0} msg/s {:>8.1} MiB/s",
        size,
        count as f64 / secs,
        (size as u64 * count) as f64 / secs / (1024.0 * 1024.0)
    );
}

fn report_w2(transport: &str, rtts: &[Duration]) {
    let pct = |p: f64| rtts[((rtts.len() as f64 * p) as usize).min(rtts.len() - 1)];
    println!(
        "W2 {transport:<16} 64 B ping-pong x {}: p50 {:>7.1} us  p99 {:>7.1} us",
        rtts.len(),
        pct(0.50).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6
    );
}

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let quick = std::env::args().any(|a| a == "--quick");
    let round_trips = if quick { 2_000 } else { 10_000 };

    // TCP.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let tcp_addr = listener.local_addr()?;
    async_std::task::spawn(async move {
        let mut incoming = listener.incoming();
        while let Some(Ok(conn)) = incoming.next().await {
            async_std::task::spawn(serve(conn));
        }
    });
    for w in workloads(quick) {
        let mut conn = tcp::connect(tcp_addr).await?;
        let elapsed = one_way(&mut conn, w.size, w.count).await?;
        report_w1("tcp", w.size, w.count, elapsed);
        conn.close().await?;
    }
    let mut conn = tcp::connect(tcp_addr).await?;
    report_w2("tcp", &ping_pong(&mut conn, round_trips).await?);
    conn.close().await?;

    // SCTP over UDP, default and loopback-sized packets.
    for (name, config) in [
        ("sctp (mtu 1200)", SctpConfig::default()),
        ("sctp (mtu 8192)", SctpConfig::default().with_mtu(8192)),
    ] {
        let listener = SctpListener::bind_with("127.0.0.1:0", config.clone()).await?;
        let addr = listener.local_addr();
        let server = async_std::task::spawn(async move {
            let mut incoming = listener.incoming();
            while let Some(Ok(conn)) = incoming.next().await {
                async_std::task::spawn(serve(conn));
            }
        });
        for w in workloads(quick) {
            let mut conn = sctp::connect_with(addr, &config).await?;
            let elapsed = one_way(&mut conn, w.size, w.count).await?;
            report_w1(name, w.size, w.count, elapsed);
            sctp::shutdown(conn).await?;
        }
        let mut conn = sctp::connect_with(addr, &config).await?;
        report_w2(name, &ping_pong(&mut conn, round_trips).await?);
        sctp::shutdown(conn).await?;
        server.cancel().await;
    }
    Ok(())
}
