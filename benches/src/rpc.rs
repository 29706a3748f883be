//! Request/reply (`connect::rpc`): a 64-byte call's round trip next to a bare ping-pong on the
//! same transport, and calls per second with 1, 16 and 256 calls in flight on one connection;
//! with `--features tonic`, tonic's unary hello-world on the same machine (`tonic_unary.rs`).
//!
//! Both sides are a `Peer` on connect's async-std TCP transport, each on its own thread (pinned
//! like every workload here); the server's handler echoes the `Payload`. Calls use the default
//! options (a 30 s deadline, so a timer on each side per call), as an application would.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use connect::dispatch::{Context, Dispatcher, Reply};
use connect::peer::{Peer, PeerConfig};
use connect::transport::tcp;
use connect::ConnectionConfig;

use crate::harness::{self, warm_up, Latency, Payload, Rounds, PING_SIZE};

/// Calls in flight for the throughput rows.
pub const IN_FLIGHT: [usize; 3] = [1, 16, 256];

/// Calls per second with some number in flight, as the caller counts them.
#[derive(Clone, Copy, Debug)]
pub struct Calls {
    pub calls: u64,
    pub elapsed: Duration,
}

impl Calls {
    pub fn per_sec(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }
}

fn echo_service() -> Dispatcher {
    Dispatcher::new().on(|ping: Payload, _: Context| async move {
        Ok::<_, connect::Error>(Reply::message(&ping))
    })
}

/// Serves one connection with the echo service until the client closes it.
fn serve(listener: TcpListener) -> anyhow::Result<()> {
    async_std::task::block_on(async {
        let (stream, _) = smol::net::TcpListener::try_from(listener)?.accept().await?;
        let conn = tcp::wrap(stream, &ConnectionConfig::default());
        let (peer, driver) = Peer::new(conn, echo_service(), &PeerConfig::new());
        driver.await;
        peer.closed().await.map_err(|e| anyhow::anyhow!("{e}"))
    })
}

/// Runs `work` with a client `Peer` to `addr` whose driver runs on the same thread (joined,
/// not spawned: like the bare ping-pong, nothing crosses threads on this side); `work` ends by
/// closing the peer, which ends the driver.
async fn with_client<T, F>(
    addr: std::net::SocketAddr,
    dispatcher: Dispatcher,
    work: impl FnOnce(Peer) -> F,
) -> anyhow::Result<T>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let conn = tcp::connect(addr).await?;
    let (peer, driver) = Peer::new(conn, dispatcher, &PeerConfig::new());
    let closer = peer.clone();
    let work = async move {
        let result = work(peer).await;
        closer.close().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        result
    };
    let ((), result) = futures::join!(driver, work);
    result
}

fn ping() -> Payload {
    Payload {
        data: Bytes::from(vec![0x5a; PING_SIZE]),
    }
}

/// Round trips of a 64-byte call.
pub fn call_latency() -> anyhow::Result<Latency> {
    harness::ping_pong(serve, |addr| {
        async_std::task::block_on(with_client(addr, Dispatcher::new(), |peer| async move {
            let ping = ping();
            let mut rounds = Rounds::default();
            while rounds.begin() {
                let pong: Payload = peer.call(&ping).await?;
                anyhow::ensure!(pong.data.len() == PING_SIZE, "bad pong");
                rounds.end();
            }
            Ok(rounds.samples())
        }))
    })
}

/// Bare ping-pong through the same `Peer`s: a one-way message, the handler's reply as another
/// one-way message (no ids, no deadlines, no status).
pub fn peer_ping_pong_latency() -> anyhow::Result<Latency> {
    harness::ping_pong(serve, |addr| {
        async_std::task::block_on(async {
            let (pongs_tx, pongs) = async_channel::bounded::<usize>(1);
            let dispatcher = Dispatcher::new().on(move |pong: Payload, _: Context| {
                let pongs = pongs_tx.clone();
                async move {
                    pongs.send(pong.data.len()).await.ok();
                    Ok::<_, connect::Error>(Reply::none())
                }
            });
            with_client(addr, dispatcher, |peer| async move {
                let ping = ping();
                let mut rounds = Rounds::default();
                while rounds.begin() {
                    peer.send_message(&ping).await?;
                    anyhow::ensure!(pongs.recv().await? == PING_SIZE, "bad pong");
                    rounds.end();
                }
                Ok(rounds.samples())
            })
            .await
        })
    })
}

/// Calls per second with `in_flight` calls outstanding at all times (each of `in_flight`
/// loops makes its next call as soon as the previous one is answered), counted over the timed
/// window after a warm-up.
pub fn call_throughput(in_flight: usize) -> anyhow::Result<Calls> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::Builder::new()
        .name("server".into())
        .spawn(move || {
            harness::pin(1);
            serve(listener)
        })?;
    harness::pin(0);
    let window = Duration::from_millis(harness::WINDOW_MS.load(Ordering::Relaxed));
    let result =
        async_std::task::block_on(with_client(addr, Dispatcher::new(), |peer| async move {
            let done = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let loops: Vec<_> = (0..in_flight)
                .map(|_| {
                    let (peer, done, stop) = (peer.clone(), done.clone(), stop.clone());
                    async move {
                        let ping = ping();
                        while !stop.load(Ordering::Relaxed) {
                            let _: Payload = peer.call(&ping).await?;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok::<_, anyhow::Error>(())
                    }
                })
                .collect();
            let timer = async {
                async_std::task::sleep(warm_up()).await;
                let (start, before) = (Instant::now(), done.load(Ordering::Relaxed));
                async_std::task::sleep(window).await;
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
        }));
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))??;
    result
}

type LatencyFn = fn() -> anyhow::Result<Latency>;
type CallsFn = fn(usize) -> anyhow::Result<Calls>;

const BARE: &str = "connect Connection, bare ping-pong (baseline)";
const CALL: &str = "connect Peer::call";

fn latency_impls() -> Vec<(&'static str, LatencyFn)> {
    #[allow(unused_mut)] // pushed to with the `tonic` feature
    let mut impls: Vec<(&'static str, LatencyFn)> = vec![
        (BARE, crate::conn::ping_pong),
        ("connect Peer, one-way ping-pong", peer_ping_pong_latency),
        (CALL, call_latency),
    ];
    #[cfg(feature = "tonic")]
    impls.push((crate::tonic_unary::NAME, crate::tonic_unary::call_latency));
    impls
}

fn throughput_impls() -> Vec<(&'static str, CallsFn)> {
    #[allow(unused_mut)] // pushed to with the `tonic` feature
    let mut impls: Vec<(&'static str, CallsFn)> = vec![(CALL, call_throughput)];
    #[cfg(feature = "tonic")]
    impls.push((
        crate::tonic_unary::NAME,
        crate::tonic_unary::call_throughput,
    ));
    impls
}

/// The request/reply rows and checks, `rounds` rounds each (latency: twice as many).
pub fn run(
    rounds: usize,
    latency: bool,
    throughput: bool,
    rows: &mut Vec<[String; 7]>,
    checks: &mut Vec<(String, bool)>,
) -> anyhow::Result<()> {
    let tonic_name = latency_impls().get(3).map(|(name, _)| *name);
    if latency {
        let impls = latency_impls();
        let mut runs: Vec<Vec<Latency>> = vec![Vec::new(); impls.len()];
        for _ in 0..2 * rounds {
            for (i, (name, run)) in impls.iter().enumerate() {
                let result = run().map_err(|e| e.context(name.to_string()))?;
                eprintln!(
                    "R1 {name:<46} p50 {:>7.1} µs  p99 {:>7.1} µs",
                    result.quantile_us(0.5),
                    result.quantile_us(0.99)
                );
                runs[i].push(result);
            }
        }
        let medians: Vec<[f64; 2]> = runs
            .iter()
            .map(|r| {
                [0.5, 0.99].map(|q| {
                    let mut v: Vec<f64> = r.iter().map(|l| l.quantile_us(q)).collect();
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                })
            })
            .collect();
        let bare = medians[0][0];
        let call = medians[2][0];
        for ((i, (name, _)), &[p50, p99]) in impls.iter().enumerate().zip(&medians) {
            let last = runs[i].last();
            rows.push([
                "R1 call round trip 64 B".into(),
                name.to_string(),
                format!("p50 {p50:.1} µs, p99 {p99:.1} µs"),
                "–".into(),
                format!("{:.2}× (p50)", p50 / bare),
                last.map_or("–".into(), |l| {
                    format!("{:.1} µs per round trip", l.cpu_ns_per_round_trip / 1e3)
                }),
                last.map_or("–".into(), |l| {
                    format!("{:.1} per round trip", l.allocs_per_round_trip)
                }),
            ]);
        }
        checks.push((
            format!(
                "R1 p50: a call costs {:.2}× the bare ping-pong, target ≤ 1.15×",
                call / bare
            ),
            call / bare <= 1.15,
        ));
        if let Some(tonic) = medians.get(3) {
            checks.push((
                format!(
                    "R1 p50: connect {:.2}× {}, target ≤ 0.5×",
                    call / tonic[0],
                    tonic_name.unwrap_or("tonic")
                ),
                call / tonic[0] <= 0.5,
            ));
        }
    }
    if throughput {
        let impls = throughput_impls();
        for in_flight in IN_FLIGHT {
            let mut runs: Vec<Vec<f64>> = vec![Vec::new(); impls.len()];
            for _ in 0..rounds {
                for (i, (name, run)) in impls.iter().enumerate() {
                    let calls = run(in_flight).map_err(|e| e.context(name.to_string()))?;
                    eprintln!(
                        "R2 {in_flight:>3} in flight {name:<36} {:>10.0} calls/s",
                        calls.per_sec()
                    );
                    runs[i].push(calls.per_sec());
                }
            }
            let medians: Vec<f64> = runs
                .into_iter()
                .map(|mut r| {
                    r.sort_by(f64::total_cmp);
                    r[r.len() / 2]
                })
                .collect();
            for ((name, _), per_sec) in impls.iter().zip(&medians) {
                rows.push([
                    format!("R2 calls/s, {in_flight} in flight, 64 B"),
                    name.to_string(),
                    format!(
                        "{} calls/s ({:.2}× connect)",
                        crate::si(*per_sec),
                        per_sec / medians[0]
                    ),
                    "–".into(),
                    "–".into(),
                    "–".into(),
                    "–".into(),
                ]);
            }
            if let Some(tonic) = medians.get(1) {
                checks.push((
                    format!(
                        "R2 {in_flight} in flight: connect {:.2}× tonic's calls/s, target ≥ 2×",
                        medians[0] / tonic
                    ),
                    medians[0] / tonic >= 2.0,
                ));
            }
        }
    }
    Ok(())
}
