//! Attacks on the transport layer; see `tests/adversarial.rs`.
//!
//! * absurd settings: `usize::MAX` as the maximum frame length, `Duration::MAX` ("never") for
//!   every timeout and backoff: no arithmetic overflows, no panic, the peer still served;
//! * many silent TCP clients against a [`TlsListener`]: a real client is still accepted;
//! * (`sctp` feature) a flood of INITs from one address: half-open associations stay bounded
//!   per address and in total, age out, and a real client still connects.

use std::future::Future;
use std::time::Duration;

use async_std::io::WriteExt;
use connect::proto::example::HelloWorld;
use connect::transport::tcp::{self, TcpListener};
use connect::{ConnectionConfig, Error};

/// Hang guard for whole test steps: generous, never a speed requirement.
const STEP: Duration = Duration::from_secs(60);

async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    async_std::future::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no progress within {STEP:?}"))
}

fn hello(sequence: u64) -> HelloWorld {
    HelloWorld {
        text: format!("hello {sequence}"),
        sequence,
    }
}

/// A base-128 varint, as a length prefix.
fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
    out
}

#[async_std::test]
async fn usize_max_frame_len_means_no_limit_not_an_overflow() {
    bounded("test", async {
        let config = ConnectionConfig::default().with_max_frame_len(usize::MAX);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .with_config(config.clone());
        let addr = listener.local_addr().unwrap();
        let server = async_std::task::spawn(async move {
            let mut outcomes = Vec::new();
            // Two attackers, then a well-behaved client that gets an echo.
            for _ in 0..3 {
                let mut conn = listener.accept().await.unwrap();
                loop {
                    match conn.recv().await {
                        Ok(Some(any)) => conn.send(any).await.unwrap(),
                        Ok(None) => {
                            outcomes.push(Ok(()));
                            break;
                        }
                        Err(e) => {
                            outcomes.push(Err(e));
                            break;
                        }
                    }
                }
            }
            outcomes
        });
        // A prefix whose length plus the prefix itself overflows `usize`.
        let mut attacker = async_std::net::TcpStream::connect(addr).await.unwrap();
        attacker.write_all(&varint(u64::MAX - 5)).await.unwrap();
        drop(attacker);
        // A prefix announcing 2^62 bytes, then a few of them and the end of the stream.
        let mut attacker = async_std::net::TcpStream::connect(addr).await.unwrap();
        attacker.write_all(&varint(1 << 62)).await.unwrap();
        attacker.write_all(&[0x0a, 0x01, b'x']).await.unwrap();
        drop(attacker);
        // A client with the same setting is served.
        let mut client = tcp::connect_with(addr, &config).await.unwrap();
        for i in 0..10 {
            client.send_message(&hello(i)).await.unwrap();
            let echoed: HelloWorld = client.recv_message().await.unwrap().unwrap();
            assert_eq!(echoed, hello(i));
        }
        client.close().await.unwrap();
        drop(client);
        let outcomes = server.await;
        assert!(
            matches!(outcomes[0], Err(Error::FrameTooLarge { .. })),
            "{:?}",
            outcomes[0]
        );
        assert!(
            matches!(outcomes[1], Err(Error::Truncated { .. })),
            "{:?}",
            outcomes[1]
        );
        assert!(outcomes[2].is_ok(), "{:?}", outcomes[2]);
    })
    .await;
}

#[async_std::test]
async fn duration_max_session_timeouts_mean_never() {
    use connect::proto::v1::ReasonCode;
    use connect::session::SessionConfig;
    bounded("test", async {
        let config = SessionConfig::default()
            .with_heartbeat(Some(Duration::MAX))
            .with_missed_heartbeats(u32::MAX)
            .with_handshake_timeout(Duration::MAX)
            .with_close_timeout(Duration::MAX);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_config = config.clone();
        let server = async_std::task::spawn(async move {
            let conn = listener.accept().await?;
            let mut session =
                tcp::accept_session(conn, &server_config, crate::support::spawn).await?;
            while let Some(msg) = session.recv_message::<HelloWorld>().await? {
                session.send_message(&msg).await?;
            }
            Ok::<_, Error>(())
        });
        let mut client = tcp::connect_session(addr, &config, crate::support::spawn)
            .await
            .unwrap();
        client.send_message(&hello(1)).await.unwrap();
        let echoed: HelloWorld = client.recv_message().await.unwrap().unwrap();
        assert_eq!(echoed, hello(1));
        // Both ends start their close timer with `Duration::MAX`.
        client.close_with(ReasonCode::Normal, "done").await.unwrap();
        server.await.unwrap();
    })
    .await;
}

#[test]
fn duration_max_reconnect_backoff_means_never() {
    use connect::reliable::Backoff;
    for backoff in [
        Backoff::new()
            .with_initial(Duration::MAX)
            .with_max(Duration::MAX),
        Backoff::new()
            .with_initial(Duration::from_millis(1))
            .with_max(Duration::MAX),
        Backoff::new()
            .with_initial(Duration::ZERO)
            .with_max(Duration::MAX)
            .with_multiplier(1e300),
    ] {
        for attempt in [1, 2, 64, 1000, u32::MAX] {
            // No panic converting a huge or infinite number of seconds; never above the max.
            assert!(backoff.delay(attempt) <= Duration::MAX);
        }
    }
    assert_eq!(
        Backoff::new()
            .with_initial(Duration::MAX)
            .with_max(Duration::MAX)
            .with_jitter(0.0)
            .delay(3),
        Duration::MAX
    );
}

#[cfg(feature = "tls")]
mod tls_listener {
    use super::*;
    use crate::support::certs::{client_config, server_config, Ca, Role};
    use connect::transport::tls::{self, TlsListener};
    use futures::StreamExt;

    #[async_std::test]
    async fn duration_max_handshake_timeouts_mean_never() {
        bounded("test", async {
            let ca = Ca::new("test CA");
            let server = ca.issue("server", &["localhost"], Role::Server);
            let tls = server_config(&server, None).with_handshake_timeout(Duration::MAX);
            let mut listener = TlsListener::bind("127.0.0.1:0", tls).await.unwrap();
            let addr = listener.local_addr();
            let client =
                client_config(ca.certificates(), None).with_handshake_timeout(Duration::MAX);
            let accepted = async_std::task::spawn(async move { listener.next().await });
            let mut conn = tls::connect(addr, "localhost", &client).await.unwrap();
            let mut served = accepted.await.unwrap().unwrap();
            conn.send_message(&hello(1)).await.unwrap();
            let got: HelloWorld = served.recv_message().await.unwrap().unwrap();
            assert_eq!(got, hello(1));
        })
        .await;
    }

    /// More silent TCP clients than the listener runs handshakes at once, none of which ever
    /// times out during the test: a real TLS client must still be accepted, while the silent
    /// ones still hold their sockets open.
    #[async_std::test]
    async fn silent_clients_do_not_lock_out_a_real_one() {
        const SILENT: usize = 100;
        const MAX_PENDING: usize = 16;
        bounded("test", async {
            let ca = Ca::new("test CA");
            let server = ca.issue("server", &["localhost"], Role::Server);
            let mut listener = TlsListener::bind(
                "127.0.0.1:0",
                server_config(&server, None).with_handshake_timeout(Duration::from_secs(3600)),
            )
            .await
            .unwrap()
            .with_max_pending_handshakes(MAX_PENDING);
            let addr = listener.local_addr();
            let (events_tx, events_rx) = async_std::channel::unbounded();
            let server_task = async_std::task::spawn(async move {
                while let Some(conn) = listener.next().await {
                    let pending = listener.pending_handshakes();
                    let _ = events_tx.send((conn.map(drop), pending)).await;
                }
            });

            let mut silent = Vec::new();
            for _ in 0..SILENT {
                silent.push(async_std::net::TcpStream::connect(addr).await.unwrap());
            }
            let client = client_config(ca.certificates(), None);
            let mut conn = tls::connect(addr, "localhost", &client)
                .await
                .expect("a real client gets through");
            conn.send_message(&hello(1)).await.unwrap();
            let (accepted, pending) = events_rx.recv().await.unwrap();
            assert!(accepted.is_ok(), "{accepted:?}");
            assert!(pending <= MAX_PENDING, "{pending} handshakes in flight");
            // Silent clients were dropped without an error item, and those the listener
            // still holds stay within its bound.
            assert!(events_rx.try_recv().is_err());
            let evicted = {
                let mut evicted = 0;
                for stream in &mut silent {
                    let mut byte = [0u8; 1];
                    let read = async_std::future::timeout(
                        Duration::from_millis(100),
                        async_std::io::ReadExt::read(stream, &mut byte),
                    )
                    .await;
                    if matches!(read, Ok(Ok(0)) | Ok(Err(_))) {
                        evicted += 1;
                    }
                }
                evicted
            };
            assert!(
                evicted >= SILENT - MAX_PENDING,
                "{evicted} of {SILENT} silent clients dropped"
            );
            drop(server_task);
        })
        .await;
    }
}

#[cfg(feature = "sctp")]
mod sctp {
    use super::*;
    use connect::transport::sctp::{self, SctpConfig, SctpListener};
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    /// CRC32c (Castagnoli), SCTP's checksum, bit by bit: enough for test packets.
    fn crc32c(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x82f6_3b78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// An SCTP INIT with a valid checksum, opening a handshake its sender never finishes.
    fn init_packet(initiate_tag: u32) -> Vec<u8> {
        let mut packet = Vec::new();
        packet.extend_from_slice(&5000u16.to_be_bytes());
        packet.extend_from_slice(&5000u16.to_be_bytes());
        packet.extend_from_slice(&[0; 8]); // verification tag 0, checksum
                                           // INIT: type 1, length 20; initiate tag, a_rwnd, streams out / in, initial TSN.
        packet.extend_from_slice(&[1, 0, 0, 20]);
        packet.extend_from_slice(&initiate_tag.to_be_bytes());
        packet.extend_from_slice(&[0, 0, 0x10, 0, 0, 1, 0, 1, 0, 0, 0, 1]);
        let crc = crc32c(&packet);
        packet[8..12].copy_from_slice(&crc.to_le_bytes());
        packet
    }

    /// INITs sent at most by one flood: it is stopped long before, once the real client is
    /// through (checked: a flood that ran out would prove nothing).
    const FLOOD_LIMIT: usize = 1_000_000;

    /// Sends INITs to `target` from each of `sources` (loopback addresses other than the real
    /// client's 127.0.0.1), one from each per `pause`, until `stop` is set or
    /// [`FLOOD_LIMIT`] are sent, counting them in `sent`.
    fn flood(
        target: SocketAddr,
        sources: Vec<UdpSocket>,
        pause: Duration,
        stop: Arc<AtomicBool>,
        sent: Arc<AtomicUsize>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut tag = 1u32;
            while !stop.load(Ordering::Relaxed) && sent.load(Ordering::Relaxed) < FLOOD_LIMIT {
                for socket in &sources {
                    if socket.send_to(&init_packet(tag), target).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    tag = tag.wrapping_add(1).max(1);
                }
                // Paced, so the flood lasts while the real client connects.
                std::thread::sleep(pause);
            }
        })
    }

    fn sources(count: u8) -> Vec<UdpSocket> {
        (2..2 + count)
            .map(|last| UdpSocket::bind((std::net::Ipv4Addr::new(127, 0, 0, last), 0)).unwrap())
            .collect()
    }

    async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        bounded(what, async {
            while !condition() {
                async_std::task::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    async fn echo_through(addr: SocketAddr, listener: &SctpListener) {
        let started = std::time::Instant::now();
        let connecting = async_std::task::spawn(async move { sctp::connect(addr).await });
        let mut server = bounded("accept", listener.accept()).await.unwrap();
        let mut client = bounded("connect", connecting)
            .await
            .expect("a real client connects");
        for i in 0..10 {
            client.send_message(&hello(i)).await.unwrap();
            let got: HelloWorld = server.recv_message().await.unwrap().unwrap();
            server.send_message(&got).await.unwrap();
            let back: HelloWorld = client.recv_message().await.unwrap().unwrap();
            assert_eq!(back, hello(i));
        }
        drop(server);
        bounded("shutdown", sctp::shutdown(client)).await.unwrap();
        println!(
            "real client: connected, echoed and shut down in {:?}",
            started.elapsed()
        );
    }

    /// `Duration::MAX` for every SCTP timer setting: no overflow, associations work.
    #[async_std::test]
    async fn duration_max_sctp_timers_mean_never() {
        let config = SctpConfig::default()
            .with_handshake_timeout(Duration::MAX)
            .with_half_open_timeout(Duration::MAX)
            .with_linger(Duration::MAX)
            .with_rto(
                Duration::from_millis(200),
                Duration::from_millis(20),
                Duration::MAX,
            );
        let listener = SctpListener::bind_with("127.0.0.1:0", config.clone())
            .await
            .unwrap();
        let addr = listener.local_addr();
        let connecting =
            async_std::task::spawn(async move { sctp::connect_with(addr, &config).await });
        let mut server = bounded("accept", listener.accept()).await.unwrap();
        let mut client = bounded("connect", connecting).await.unwrap();
        client.send_message(&hello(1)).await.unwrap();
        let got: HelloWorld = bounded("recv", server.recv_message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, hello(1));
        drop(server);
        bounded("shutdown", sctp::shutdown(client)).await.unwrap();
        // And as initial RTO too (capped, so sctp-proto's doubling cannot overflow).
        let capped = SctpConfig::default().with_rto(Duration::MAX, Duration::MAX, Duration::MAX);
        let listener = SctpListener::bind_with("127.0.0.1:0", capped.clone())
            .await
            .unwrap();
        let addr = listener.local_addr();
        let connecting =
            async_std::task::spawn(async move { sctp::connect_with(addr, &capped).await });
        let _server = bounded("accept", listener.accept()).await.unwrap();
        bounded("connect", connecting).await.unwrap();
    }

    /// INITs from one address: that address gets a handful of half-open associations, the
    /// rest of the backlog stays free, and a real client connects during the flood.
    #[async_std::test]
    async fn an_init_flood_from_one_address_does_not_lock_out_real_clients() {
        let config = SctpConfig::default();
        let listener = SctpListener::bind_with("127.0.0.1:0", config)
            .await
            .unwrap();
        let addr = listener.local_addr();
        let (stop, sent) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        // About a thousand INITs a second, eighty times the rate that locked clients out.
        let flooder = flood(
            addr,
            sources(1),
            Duration::from_millis(1),
            stop.clone(),
            sent.clone(),
        );
        wait_until("flood under way", || sent.load(Ordering::Relaxed) >= 1000).await;
        assert!(listener.handshakes_in_progress() <= 8);
        echo_through(addr, &listener).await;
        assert!(listener.handshakes_in_progress() <= 8);
        stop.store(true, Ordering::Relaxed);
        flooder.join().unwrap();
        let flooded = sent.load(Ordering::Relaxed);
        assert!(
            flooded < FLOOD_LIMIT,
            "the flood ran out before the client was through"
        );
        println!(
            "one address: {flooded} INITs sent, {} handshakes in progress at the end",
            listener.handshakes_in_progress()
        );
        // Once the flood stops, its half-open associations age out.
        wait_until("half-open associations age out", || {
            listener.handshakes_in_progress() == 0
        })
        .await;
    }

    /// INITs from many addresses (as spoofed ones would be): the total stays at the backlog,
    /// the sources holding the most half-open associations make room for new ones, and a real
    /// client (one handshake from its address) connects.
    #[async_std::test]
    async fn an_init_flood_from_many_addresses_stays_within_the_backlog() {
        let config = SctpConfig::default().with_backlog(32);
        let listener = SctpListener::bind_with("127.0.0.1:0", config)
            .await
            .unwrap();
        let addr = listener.local_addr();
        let (stop, sent) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        // Up to 1600 INITs a second. (Far faster floods saturate the listener's CPU and UDP
        // buffer: the real client's packets are then dropped with the flood's, and it gets
        // through only by retransmitting.)
        let flooder = flood(
            addr,
            sources(16),
            Duration::from_millis(10),
            stop.clone(),
            sent.clone(),
        );
        wait_until("flood under way", || sent.load(Ordering::Relaxed) >= 1000).await;
        assert!(listener.handshakes_in_progress() <= 32);
        echo_through(addr, &listener).await;
        assert!(listener.handshakes_in_progress() <= 32);
        stop.store(true, Ordering::Relaxed);
        flooder.join().unwrap();
        let flooded = sent.load(Ordering::Relaxed);
        assert!(
            flooded < FLOOD_LIMIT,
            "the flood ran out before the client was through"
        );
        println!(
            "16 addresses: {flooded} INITs sent, {} handshakes in progress at the end",
            listener.handshakes_in_progress()
        );
        wait_until("half-open associations age out", || {
            listener.handshakes_in_progress() == 0
        })
        .await;
    }
}
