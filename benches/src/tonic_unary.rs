//! tonic's unary hello-world (`proto/echo.proto`): what a Rust team would otherwise pick for
//! request/reply. HTTP/2 over the same loopback TCP, each side on its own current-thread tokio
//! runtime and pinned thread, like connect's side in `rpc.rs`; the same 64-byte payload.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::harness::{self, warm_up, Latency, Rounds, PING_SIZE};
use crate::rpc::Calls;

mod proto {
    tonic::include_proto!("connect.bench.tonic.v1");
}

use proto::echo_client::EchoClient;
use proto::echo_server::{Echo, EchoServer};
use proto::Ping;

pub const NAME: &str = "tonic unary (HTTP/2)";

struct Echoer;

#[tonic::async_trait]
impl Echo for Echoer {
    async fn echo(
        &self,
        request: tonic::Request<Ping>,
    ) -> Result<tonic::Response<Ping>, tonic::Status> {
        Ok(tonic::Response::new(request.into_inner()))
    }
}

/// Serves `listener` until `stop` resolves.
fn serve(listener: TcpListener, stop: async_channel::Receiver<()>) -> anyhow::Result<()> {
    crate::tokio_runtime()?.block_on(async {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(Echoer))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.recv().await;
            })
            .await?;
        Ok(())
    })
}

async fn client(addr: SocketAddr) -> anyhow::Result<EchoClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(EchoClient::new(channel))
}

fn ping() -> Ping {
    Ping {
        data: Bytes::from(vec![0x5a; PING_SIZE]).to_vec(),
    }
}

/// Runs `client_work` on this thread (pinned to CPU 0) against a server on another (CPU 1).
fn with_server<T>(client_work: impl FnOnce(SocketAddr) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop) = async_channel::bounded(1);
    let server = std::thread::Builder::new()
        .name("server".into())
        .spawn(move || {
            harness::pin(1);
            serve(listener, stop)
        })?;
    harness::pin(0);
    let result = client_work(addr);
    drop(stop_tx);
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))??;
    result
}

pub fn call_latency() -> anyhow::Result<Latency> {
    let samples = with_server(|addr| {
        crate::tokio_runtime()?.block_on(async {
            let mut client = client(addr).await?;
            let mut rounds = Rounds::default();
            while rounds.begin() {
                let pong = client.echo(ping()).await?.into_inner();
                anyhow::ensure!(pong.data.len() == PING_SIZE, "bad pong");
                rounds.end();
            }
            Ok(rounds.samples())
        })
    })?;
    Ok(Latency::from_samples(samples))
}

pub fn call_throughput(in_flight: usize) -> anyhow::Result<Calls> {
    let window = Duration::from_millis(harness::WINDOW_MS.load(Ordering::Relaxed));
    with_server(|addr| {
        crate::tokio_runtime()?.block_on(async {
            let client = client(addr).await?;
            let done = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let loops: Vec<_> = (0..in_flight)
                .map(|_| {
                    let (mut client, done, stop) = (client.clone(), done.clone(), stop.clone());
                    async move {
                        while !stop.load(Ordering::Relaxed) {
                            client.echo(ping()).await?;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok::<_, anyhow::Error>(())
                    }
                })
                .collect();
            let timer = async {
                tokio::time::sleep(warm_up()).await;
                let (start, before) = (Instant::now(), done.load(Ordering::Relaxed));
                tokio::time::sleep(window).await;
                let calls = Calls {
                    calls: done.load(Ordering::Relaxed) - before,
                    elapsed: start.elapsed(),
                };
                stop.store(true, Ordering::Relaxed);
                calls
            };
            let (results, calls) = futures::join!(futures::future::join_all(loops), timer);
            results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
            Ok(calls)
        })
    })
}
