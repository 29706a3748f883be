//! Baselines without protobuf: a 4-byte little-endian length, then the payload.
//!
//! * async-std with 64 KiB `BufReader`/`BufWriter`: the practical limit for an async framing
//!   layer on the same runtime as `connect`'s TCP transport.
//! * blocking std TCP ping-pong: the latency floor (no reactor, no wake-ups).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use async_std::io::{BufReader, BufWriter};
use futures::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{self, Latency, Meter, Rounds, Throughput, PING_SIZE};

const BUF: usize = 64 * 1024;

pub fn throughput(size: usize) -> anyhow::Result<Throughput> {
    harness::one_way(
        move |addr, stop| async_std::task::block_on(send(addr, stop, size)),
        |listener, meter| async_std::task::block_on(receive(listener, meter)),
    )
}

async fn send(addr: SocketAddr, stop: Arc<AtomicBool>, size: usize) -> anyhow::Result<()> {
    let stream = async_std::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut writer = BufWriter::with_capacity(BUF, stream);
    let payload = vec![0xa5; size];
    let len = (size as u32).to_le_bytes();
    while !harness::stopped(&stop) {
        writer.write_all(&len).await?;
        writer.write_all(&payload).await?;
    }
    writer.write_all(&0u32.to_le_bytes()).await?;
    writer.flush().await?;
    Ok(())
}

async fn receive(listener: TcpListener, mut meter: Meter) -> anyhow::Result<Throughput> {
    let listener = async_std::net::TcpListener::from(listener);
    let (stream, _) = listener.accept().await?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::with_capacity(BUF, stream);
    let mut payload = Vec::new();
    loop {
        let mut len = [0; 4];
        reader.read_exact(&mut len).await?;
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 {
            break;
        }
        payload.resize(len, 0);
        reader.read_exact(&mut payload).await?;
        meter.tick(len);
    }
    meter.finish()
}

/// Ping-pong on async-std, flushing each message.
pub fn ping_pong() -> anyhow::Result<Latency> {
    harness::ping_pong(
        |listener| {
            async_std::task::block_on(async {
                let listener = async_std::net::TcpListener::from(listener);
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                let mut reader = BufReader::with_capacity(BUF, stream.clone());
                let mut writer = BufWriter::with_capacity(BUF, stream);
                let mut buf = vec![0; PING_SIZE];
                loop {
                    let mut len = [0; 4];
                    reader.read_exact(&mut len).await?;
                    let n = u32::from_le_bytes(len) as usize;
                    buf.resize(n, 0);
                    reader.read_exact(&mut buf).await?;
                    writer.write_all(&len).await?;
                    writer.write_all(&buf).await?;
                    writer.flush().await?;
                    if n == 0 {
                        return Ok(());
                    }
                }
            })
        },
        |addr| {
            async_std::task::block_on(async {
                let stream = async_std::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let mut reader = BufReader::with_capacity(BUF, stream.clone());
                let mut writer = BufWriter::with_capacity(BUF, stream);
                let ping = vec![0x5a; PING_SIZE];
                let mut pong = vec![0; PING_SIZE];
                let mut rounds = Rounds::default();
                while rounds.begin() {
                    writer.write_all(&(PING_SIZE as u32).to_le_bytes()).await?;
                    writer.write_all(&ping).await?;
                    writer.flush().await?;
                    let mut len = [0; 4];
                    reader.read_exact(&mut len).await?;
                    reader.read_exact(&mut pong).await?;
                    rounds.end();
                }
                writer.write_all(&0u32.to_le_bytes()).await?;
                writer.flush().await?;
                let mut len = [0; 4];
                reader.read_exact(&mut len).await?;
                Ok(rounds.samples())
            })
        },
    )
}

/// Ping-pong with blocking std sockets: the floor any async stack is compared with.
pub fn ping_pong_blocking() -> anyhow::Result<Latency> {
    harness::ping_pong(
        |listener| {
            let (mut stream, _) = listener.accept()?;
            stream.set_nodelay(true)?;
            let mut buf = vec![0; PING_SIZE];
            loop {
                let mut len = [0; 4];
                stream.read_exact(&mut len)?;
                let n = u32::from_le_bytes(len) as usize;
                buf.resize(n, 0);
                stream.read_exact(&mut buf)?;
                // One write per message, as a buffered writer would flush it.
                let mut frame = Vec::with_capacity(4 + n);
                frame.extend_from_slice(&len);
                frame.extend_from_slice(&buf);
                stream.write_all(&frame)?;
                if n == 0 {
                    return Ok(());
                }
            }
        },
        |addr| {
            let mut stream = std::net::TcpStream::connect(addr)?;
            stream.set_nodelay(true)?;
            let mut frame = (PING_SIZE as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(&[0x5a; PING_SIZE]);
            let mut pong = vec![0; 4 + PING_SIZE];
            let mut rounds = Rounds::default();
            while rounds.begin() {
                stream.write_all(&frame)?;
                stream.read_exact(&mut pong)?;
                rounds.end();
            }
            stream.write_all(&0u32.to_le_bytes())?;
            stream.read_exact(&mut pong[..4])?;
            Ok(rounds.samples())
        },
    )
}
