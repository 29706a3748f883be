//! What TLS costs: echo throughput over TLS and over plain TCP, measured in the same run.
//!
//! ```text
//! cargo run --release --example tls-throughput [ROUNDS]
//! ```
//!
//! For each message size (64 B and 1 MiB) and each transport, a client on loopback pipelines a
//! fixed number of messages to an echo server (the dispatcher, as in the echo examples) while
//! reading the echoes back; the time runs from the first send to the last echo. Each case runs
//! ROUNDS times (default 3) and the best round is reported, in messages per second and in
//! payload MiB per second (one direction; the same bytes also come back). Certificates are made
//! in memory with rcgen.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use connect::dispatch::{Context, Dispatcher, Reply};
use connect::transport::tcp::{self, TcpListener};
use connect::transport::tls::{self, Identity, TlsClientConfig, TlsListener, TlsServerConfig};
use connect::{Connection, Error};
use futures::io::{AsyncRead, AsyncWrite};
use futures::StreamExt;
use prost_types::Any;

/// (payload bytes, messages per round)
const CASES: [(usize, usize); 2] = [(64, 200_000), (1 << 20, 200)];

fn echo_dispatcher() -> Arc<Dispatcher> {
    Arc::new(
        Dispatcher::new()
            .fallback(|any: Any, _: Context| async move { Ok::<_, Error>(Reply::any(any)) }),
    )
}

/// Sends `count` messages of `size` bytes and reads every echo back; returns the elapsed time.
async fn run<T>(conn: Connection<T>, size: usize, count: usize) -> anyhow::Result<Duration>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let any = Any {
        type_url: "type.googleapis.com/bench.Payload".into(),
        value: vec![0xa5; size],
    };
    let (mut reader, mut writer) = conn.split();
    let start = Instant::now();
    let sender = async_std::task::spawn(async move {
        for _ in 0..count {
            writer.feed(any.clone()).await?;
        }
        writer.flush().await?;
        Ok::<_, Error>(writer)
    });
    for i in 0..count {
        let echo = reader
            .recv()
            .await?
            .with_context(|| format!("server closed after {i} echoes"))?;
        anyhow::ensure!(echo.value.len() == size, "echo of wrong size");
    }
    let elapsed = start.elapsed();
    let mut writer = sender.await?;
    writer.close().await?;
    Ok(elapsed)
}

async fn tcp_server() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let dispatcher = echo_dispatcher();
    async_std::task::spawn(async move {
        let mut incoming = listener.incoming();
        while let Some(Ok(conn)) = incoming.next().await {
            let dispatcher = dispatcher.clone();
            async_std::task::spawn(async move { dispatcher.serve(conn).await });
        }
    });
    Ok(addr)
}

async fn tls_server(tls: TlsServerConfig) -> anyhow::Result<SocketAddr> {
    let mut listener = TlsListener::bind("127.0.0.1:0", tls).await?;
    let addr = listener.local_addr();
    let dispatcher = echo_dispatcher();
    async_std::task::spawn(async move {
        while let Some(conn) = listener.next().await {
            let Ok(conn) = conn else { continue };
            let dispatcher = dispatcher.clone();
            async_std::task::spawn(async move { dispatcher.serve(conn).await });
        }
    });
    Ok(addr)
}

fn certificates() -> anyhow::Result<(TlsServerConfig, TlsClientConfig)> {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])?.self_signed(&key)?;
    let server = TlsServerConfig::builder(Identity::from_pem(
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
    )?)
    .build()?;
    let client = TlsClientConfig::builder()
        .trust(tls::certificates_from_pem(cert.pem().as_bytes())?)
        .build()?;
    Ok((server, client))
}

struct Best(Option<Duration>);

impl Best {
    fn add(&mut self, d: Duration) {
        self.0 = Some(self.0.map_or(d, |best| best.min(d)));
    }
}

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse().context("usage: tls-throughput [ROUNDS]")?,
        None => 3,
    };
    let (server_tls, client_tls) = certificates()?;
    let tcp_addr = tcp_server().await?;
    let tls_addr = tls_server(server_tls).await?;

    // What was negotiated, from the TLS stream under a probe connection.
    let mut probe = tls::connect(tls_addr, "localhost", &client_tls)
        .await?
        .into_inner();
    let (_, session) = probe.get_ref();
    let suite = session.negotiated_cipher_suite().map(|s| s.suite());
    println!("TLS: {:?}, {suite:?}", session.protocol_version());
    futures::AsyncWriteExt::close(&mut probe).await?;

    println!("echo over loopback, best of {rounds} rounds (payload MiB/s one way)");
    println!(
        "{:>8} {:>9} | {:>12} {:>10} | {:>12} {:>10} | {:>9}",
        "size", "messages", "TCP msg/s", "TCP MiB/s", "TLS msg/s", "TLS MiB/s", "TLS/TCP"
    );
    for (size, count) in CASES {
        let (mut tcp_best, mut tls_best) = (Best(None), Best(None));
        // Interleaved, so both see the same machine load.
        for _ in 0..rounds {
            tcp_best.add(run(tcp::connect(tcp_addr).await?, size, count).await?);
            let conn = tls::connect(tls_addr, "localhost", &client_tls).await?;
            tls_best.add(run(conn, size, count).await?);
        }
        let rate = |best: &Best| {
            let secs = best
                .0
                .unwrap_or_default()
                .as_secs_f64()
                .max(f64::MIN_POSITIVE);
            (
                count as f64 / secs,
                (count * size) as f64 / secs / (1 << 20) as f64,
            )
        };
        let (tcp_msgs, tcp_mib) = rate(&tcp_best);
        let (tls_msgs, tls_mib) = rate(&tls_best);
        let label = if size >= 1 << 20 {
            format!("{} MiB", size >> 20)
        } else {
            format!("{size} B")
        };
        println!(
            "{label:>8} {count:>9} | {tcp_msgs:>12.0} {tcp_mib:>10.1} | {tls_msgs:>12.0} {tls_mib:>10.1} | {:>8.2}x",
            tls_mib / tcp_mib
        );
    }
    Ok(())
}
