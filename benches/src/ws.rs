//! `connect` over WebSocket (`connect::transport::ws`): the same `Payload` workloads as
//! `conn.rs`, each frame in a binary WebSocket message (several per message when fed
//! together), next to the bare TCP connection of the same run.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use connect::transport::ws::{self, Accepted, WsConfig};
use connect::{Connection, ConnectionInfo};
use futures::{AsyncRead, AsyncWrite};

use crate::harness::{self, Latency, Meter, Payload, Rounds, Throughput, PING_SIZE};

fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/connect")
}

/// Accepts one connection on `listener` and runs the server side of the upgrade.
async fn accept(
    listener: TcpListener,
) -> anyhow::Result<Connection<ws::WsStream<smol::net::TcpStream>>> {
    let (stream, _) = smol::net::TcpListener::try_from(listener)?.accept().await?;
    stream.set_nodelay(true)?;
    match ws::accept_stream(stream, &WsConfig::new(), ConnectionInfo::new()).await? {
        Accepted::WebSocket(conn) => Ok(conn),
        Accepted::Http(_) => anyhow::bail!("not an upgrade"),
    }
}

pub fn throughput(size: usize) -> anyhow::Result<Throughput> {
    harness::one_way(
        move |addr, stop| async_std::task::block_on(send(addr, stop, size)),
        |listener, meter| async_std::task::block_on(receive(listener, meter)),
    )
}

async fn send(addr: SocketAddr, stop: Arc<AtomicBool>, size: usize) -> anyhow::Result<()> {
    let mut conn = ws::connect(&url(addr)).await?;
    let msg = Payload {
        data: Bytes::from(vec![0xa5; size]),
    };
    while !harness::stopped(&stop) {
        conn.feed_message(&msg).await?;
    }
    conn.send_message(&Payload::default()).await?;
    conn.close().await?;
    Ok(())
}

async fn receive(listener: TcpListener, mut meter: Meter) -> anyhow::Result<Throughput> {
    let mut conn = accept(listener).await?;
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

/// W2 over WebSocket: one frame per message each way, as a browser sends.
pub fn ping_pong() -> anyhow::Result<Latency> {
    harness::ping_pong(
        |listener| async_std::task::block_on(async { echo(accept(listener).await?).await }),
        |addr| {
            async_std::task::block_on(async {
                let mut conn = ws::connect(&url(addr)).await?;
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
            })
        },
    )
}
