//! zmq.rs (the `zeromq` crate, pure Rust ZeroMQ) on tokio: PUSH/PULL for throughput, REQ/REP
//! for latency. Payloads travel as single raw frames (ZMTP framing, no protobuf).

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::harness::{self, Latency, Meter, Rounds, Throughput, PING_SIZE};

fn frame_len(msg: &ZmqMessage) -> usize {
    msg.get(0).map_or(0, Bytes::len)
}

pub fn throughput(size: usize) -> anyhow::Result<Throughput> {
    harness::one_way(
        move |addr, stop| crate::tokio_runtime()?.block_on(send(addr, stop, size)),
        |listener, meter| crate::tokio_runtime()?.block_on(receive(listener, meter)),
    )
}

async fn send(addr: SocketAddr, stop: Arc<AtomicBool>, size: usize) -> anyhow::Result<()> {
    let mut push = zeromq::PushSocket::new();
    push.connect(&format!("tcp://{addr}")).await?;
    let payload = Bytes::from(vec![0xa5; size]);
    while !harness::stopped(&stop) {
        push.send(ZmqMessage::from(payload.clone()))
            .await
            .map_err(|e| anyhow::anyhow!("sending: {e}"))?;
    }
    push.send(ZmqMessage::from(Bytes::new())).await?;
    // Keep the socket (and its background tasks) alive until the receiver has drained
    // everything: its meter holds the other reference to `stop`.
    while Arc::strong_count(&stop) > 1 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn receive(listener: TcpListener, mut meter: Meter) -> anyhow::Result<Throughput> {
    let mut pull = zeromq::PullSocket::new();
    pull.bind_listener(listener).await?;
    loop {
        let msg = pull
            .recv()
            .await
            .map_err(|e| anyhow::anyhow!("receiving: {e}"))?;
        let len = frame_len(&msg);
        if len == 0 {
            break;
        }
        meter.tick(len);
    }
    meter.finish()
}

pub fn ping_pong() -> anyhow::Result<Latency> {
    harness::ping_pong(
        |listener| {
            crate::tokio_runtime()?.block_on(async {
                let mut rep = zeromq::RepSocket::new();
                rep.bind_listener(listener).await?;
                loop {
                    let msg = rep.recv().await?;
                    let len = frame_len(&msg);
                    rep.send(msg).await?;
                    if len == 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        return Ok(());
                    }
                }
            })
        },
        |addr| {
            crate::tokio_runtime()?.block_on(async {
                let mut req = zeromq::ReqSocket::new();
                req.connect(&format!("tcp://{addr}")).await?;
                let ping = Bytes::from(vec![0x5a; PING_SIZE]);
                let mut rounds = Rounds::default();
                while rounds.begin() {
                    req.send(ZmqMessage::from(ping.clone())).await?;
                    let pong = req.recv().await?;
                    anyhow::ensure!(frame_len(&pong) == PING_SIZE, "bad pong");
                    rounds.end();
                }
                req.send(ZmqMessage::from(Bytes::new())).await?;
                req.recv().await?;
                Ok(rounds.samples())
            })
        },
    )
}
