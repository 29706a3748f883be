//! The hand-rolled alternative: tokio, tokio-util's `LengthDelimitedCodec` (4-byte big-endian
//! length) and `prost_types::Any` packed and unpacked by hand, as a user without `connect`
//! would write it.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use prost::Message;
use prost_types::Any;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::harness::{self, Latency, Meter, Payload, Rounds, Throughput, PING_SIZE};

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(16 << 20)
        .new_codec()
}

fn pack(msg: &Payload) -> anyhow::Result<Bytes> {
    Ok(Any::from_msg(msg)?.encode_to_vec().into())
}

fn unpack(frame: &[u8]) -> anyhow::Result<Payload> {
    Ok(Any::decode(frame)?.to_msg()?)
}

pub fn throughput(size: usize) -> anyhow::Result<Throughput> {
    harness::one_way(
        move |addr, stop| crate::tokio_runtime()?.block_on(send(addr, stop, size)),
        |listener, meter| crate::tokio_runtime()?.block_on(receive(listener, meter)),
    )
}

async fn send(addr: SocketAddr, stop: Arc<AtomicBool>, size: usize) -> anyhow::Result<()> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut framed = FramedWrite::new(stream, codec());
    let msg = Payload {
        data: Bytes::from(vec![0xa5; size]),
    };
    while !harness::stopped(&stop) {
        framed.feed(pack(&msg)?).await?;
    }
    framed.send(pack(&Payload::default())?).await?;
    Ok(())
}

async fn receive(listener: TcpListener, mut meter: Meter) -> anyhow::Result<Throughput> {
    listener.set_nonblocking(true)?;
    let (stream, _) = tokio::net::TcpListener::from_std(listener)?
        .accept()
        .await?;
    stream.set_nodelay(true)?;
    let mut framed = FramedRead::new(stream, codec());
    while let Some(frame) = framed.next().await {
        let msg = unpack(&frame?)?;
        if msg.data.is_empty() {
            break;
        }
        meter.tick(msg.data.len());
    }
    meter.finish()
}

pub fn ping_pong() -> anyhow::Result<Latency> {
    harness::ping_pong(
        |listener| {
            crate::tokio_runtime()?.block_on(async {
                listener.set_nonblocking(true)?;
                let (stream, _) = tokio::net::TcpListener::from_std(listener)?
                    .accept()
                    .await?;
                stream.set_nodelay(true)?;
                let mut framed = tokio_util::codec::Framed::new(stream, codec());
                while let Some(frame) = framed.next().await {
                    let msg = unpack(&frame?)?;
                    framed.send(pack(&msg)?).await?;
                    if msg.data.is_empty() {
                        break;
                    }
                }
                Ok(())
            })
        },
        |addr| {
            crate::tokio_runtime()?.block_on(async {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let mut framed = tokio_util::codec::Framed::new(stream, codec());
                let ping = Payload {
                    data: Bytes::from(vec![0x5a; PING_SIZE]),
                };
                let mut rounds = Rounds::default();
                while rounds.begin() {
                    framed.send(pack(&ping)?).await?;
                    let frame = framed.next().await.ok_or(anyhow::anyhow!("closed"))??;
                    anyhow::ensure!(unpack(&frame)?.data.len() == PING_SIZE, "bad pong");
                    rounds.end();
                }
                framed.send(pack(&Payload::default())?).await?;
                framed.next().await;
                Ok(rounds.samples())
            })
        },
    )
}
