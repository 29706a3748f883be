//! Echo server with sessions whose counters Prometheus can scrape.
//!
//! An [`Endpoint`] accepts sessions (PLAIN, user `alice`, password `s3cret`) and echoes every
//! message; the feature `metrics` reports every layer's counters to the `metrics` facade, and
//! `metrics-exporter-prometheus` renders them. Its own HTTP listener needs tokio, so this
//! example answers `GET /metrics` itself over `async-net` (a dozen lines; any HTTP server
//! works): the library stays free of tokio.
//!
//! ```text
//! cargo run --features metrics --example metrics-prometheus [ADDR] [--metrics ADDR]
//! curl http://127.0.0.1:9898/metrics
//! ```
//!
//! ADDR defaults to 127.0.0.1:7878, the metrics address to 127.0.0.1:9898 (port 0 for any free
//! port). It prints `listening on <ip:port>`, then `metrics on http://<ip:port>/metrics`.
//! `connect::metrics` lists every name.

use std::sync::Arc;

use anyhow::Context as _;
use connect::dispatch::{Context, Dispatcher, Reply};
use connect::endpoint::{self, Endpoint, EndpointConfig};
use connect::session::{PlainAuthenticator, SessionConfig};
use connect::transport::tcp::TcpListener;
use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The largest request head the metrics responder reads.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let (mut addr, mut metrics_addr) = ("127.0.0.1:7878".to_owned(), "127.0.0.1:9898".to_owned());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--metrics" => metrics_addr = args.next().context("--metrics needs an address")?,
            "-h" | "--help" => {
                println!("usage: metrics-prometheus [ADDR] [--metrics ADDR]");
                return Ok(());
            }
            _ => addr = arg,
        }
    }

    // The recorder first: counters made before it is installed report to no one.
    let prometheus = PrometheusBuilder::new().install_recorder()?;

    let echo = Dispatcher::new()
        .fallback(|any, _: Context| async move { Ok::<_, connect::Error>(Reply::any(any)) });
    let config = EndpointConfig::new().with_session(
        SessionConfig::new()
            .with_authenticator(PlainAuthenticator::new().with_user("alice", "s3cret")),
    );
    let server = Endpoint::new(config, echo, |task| {
        async_std::task::spawn(task);
    });
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    server.accept(endpoint::tcp_incoming(listener));

    let http = async_net::TcpListener::bind(&metrics_addr).await?;
    println!("metrics on http://{}/metrics", http.local_addr()?);
    let prometheus = Arc::new(prometheus);
    loop {
        let (stream, _) = match http.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("metrics: accept failed: {e}");
                async_std::task::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let prometheus = prometheus.clone();
        async_std::task::spawn(async move {
            if let Err(e) = answer(stream, &prometheus).await {
                eprintln!("metrics: {e}");
            }
        });
    }
}

/// Answers one HTTP/1.1 request: `GET /metrics` with the text exposition format, anything
/// else with 404; then closes the connection.
async fn answer(
    mut stream: async_net::TcpStream,
    prometheus: &PrometheusHandle,
) -> anyhow::Result<()> {
    let mut head = Vec::new();
    let mut chunk = [0; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "client left before its request was complete");
        head.extend_from_slice(&chunk[..n]);
        anyhow::ensure!(head.len() <= MAX_REQUEST_HEAD, "request head too large");
    }
    let request_line = String::from_utf8_lossy(&head);
    let (status, body) = match request_line.split_whitespace().take(2).collect::<Vec<_>>()[..] {
        ["GET", "/metrics"] => {
            prometheus.run_upkeep();
            ("200 OK", prometheus.render())
        }
        _ => ("404 Not Found", "try GET /metrics\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.close().await?;
    Ok(())
}
