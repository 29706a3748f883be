//! `connect` itself: typed `Payload` messages packed in `Any`, encoded and decoded on every
//! message, over the async-std TCP transport (and, for the latency comparison, over smol and
//! tokio sockets through the same generic `Connection`).

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use connect::transport::tcp;
use connect::{Connection, ConnectionConfig};
use futures::{AsyncRead, AsyncWrite};

use crate::harness::{self, Latency, Meter, Payload, Rounds, Throughput, PING_SIZE};

/// How the sender hands messages to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendMode {
    /// `feed_message`, flushing only at the end: the writer coalesces frames and writes when
    /// its buffer passes the high-water mark. How a producer is told to send at rate.
    Feed,
    /// `send_message`: one flush (one write system call) per message.
    SendEach,
    /// `feed_encoded` of the message encoded once: a large value is written from its own
    /// memory instead of being copied into the write buffer, as the raw baseline writes its
    /// payload.
    FeedEncoded,
}

pub fn throughput(size: usize, mode: SendMode) -> anyhow::Result<Throughput> {
    harness::one_way(
        move |addr, stop| async_std::task::block_on(send(addr, stop, size, mode)),
        |listener, meter| async_std::task::block_on(receive(listener, meter)),
    )
}

pub async fn send(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    size: usize,
    mode: SendMode,
) -> anyhow::Result<()> {
    let mut conn = tcp::connect(addr).await?;
    let msg = Payload {
        data: Bytes::from(vec![0xa5; size]),
    };
    let encoded = Bytes::from(prost::Message::encode_to_vec(&msg));
    while !harness::stopped(&stop) {
        match mode {
            SendMode::Feed => conn.feed_message(&msg).await?,
            SendMode::SendEach => conn.send_message(&msg).await?,
            SendMode::FeedEncoded => conn.feed_encoded::<Payload>(encoded.clone()).await?,
        }
    }
    conn.send_message(&Payload::default()).await?;
    conn.close().await?;
    Ok(())
}

async fn receive(listener: TcpListener, mut meter: Meter) -> anyhow::Result<Throughput> {
    let (stream, _) = smol::net::TcpListener::try_from(listener)?.accept().await?;
    let mut conn = tcp::wrap(stream, &ConnectionConfig::default());
    while let Some(msg) = conn.recv_message::<Payload>().await? {
        if msg.data.is_empty() {
            break;
        }
        meter.tick(msg.data.len());
    }
    meter.finish()
}

/// Echoes `Payload`s until an empty one, which it echoes too.
async fn echo<T: AsyncRead + AsyncWrite + Unpin>(mut conn: Connection<T>) -> anyhow::Result<()> {
    while let Some(msg) = conn.recv_message::<Payload>().await? {
        conn.send_message(&msg).await?;
        if msg.data.is_empty() {
            break;
        }
    }
    Ok(())
}

/// Times round trips over `conn`, then sends the empty message that stops the echo server.
async fn pings<T: AsyncRead + AsyncWrite + Unpin>(
    mut conn: Connection<T>,
) -> anyhow::Result<harness::RoundTrips> {
    let ping = Payload {
        data: Bytes::from(vec![0x5a; PING_SIZE]),
    };
    let mut rounds = Rounds::default();
    while rounds.begin() {
        conn.send_message(&ping).await?;
        let pong = conn.recv_message::<Payload>().await?;
        anyhow::ensure!(pong.is_some_and(|p| p.data.len() == PING_SIZE), "bad pong");
        rounds.end();
    }
    conn.send_message(&Payload::default()).await?;
    conn.recv_message::<Payload>().await?;
    Ok(rounds.samples())
}

/// Ping-pong over connect's own TCP transport (async-net), run by async-std.
pub fn ping_pong() -> anyhow::Result<Latency> {
    harness::ping_pong(
        |listener| {
            async_std::task::block_on(async {
                let (stream, _) = smol::net::TcpListener::try_from(listener)?.accept().await?;
                echo(tcp::wrap(stream, &ConnectionConfig::default())).await
            })
        },
        |addr| async_std::task::block_on(async { pings(tcp::connect(addr).await?).await }),
    )
}

/// The same `Connection` code over smol's sockets, to separate runtime from library costs.
pub fn ping_pong_smol() -> anyhow::Result<Latency> {
    harness::ping_pong(
        |listener| {
            smol::block_on(async {
                let (stream, _) = smol::net::TcpListener::try_from(listener)?.accept().await?;
                stream.set_nodelay(true)?;
                echo(Connection::new(stream)).await
            })
        },
        |addr| {
            smol::block_on(async {
                let stream = smol::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                pings(Connection::new(stream)).await
            })
        },
    )
}

/// The same `Connection` code over tokio's sockets (through `tokio_util::compat`), each side
/// on a current-thread runtime.
pub fn ping_pong_tokio() -> anyhow::Result<Latency> {
    use tokio_util::compat::TokioAsyncReadCompatExt;
    harness::ping_pong(
        |listener| {
            crate::tokio_runtime()?.block_on(async {
                listener.set_nonblocking(true)?;
                let (stream, _) = tokio::net::TcpListener::from_std(listener)?
                    .accept()
                    .await?;
                stream.set_nodelay(true)?;
                echo(Connection::new(stream.compat())).await
            })
        },
        |addr| {
            crate::tokio_runtime()?.block_on(async {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                pings(Connection::new(stream.compat())).await
            })
        },
    )
}
