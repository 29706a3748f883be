//! SCTP over UDP on loopback: the same `Connection` API as TCP, through real UDP sockets, a
//! lossy relay and garbage datagrams.
//!
//! Run with `cargo test --features sctp --test sctp`.
#![cfg(feature = "sctp")]

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use async_std::future::timeout;
use async_std::task;
use connect::dispatch::{Context, Dispatcher, Reply};
use connect::proto::example::HelloWorld;
use connect::transport::sctp::{self, SctpConfig, SctpConnection, SctpListener};
use connect::{ConnectionConfig, Error};
use futures::StreamExt;
use prost_types::Any;

/// Generous bound for whole test steps, so a hang fails instead of blocking CI.
const STEP: Duration = Duration::from_secs(60);

fn hello(sequence: u64, text: impl Into<String>) -> HelloWorld {
    HelloWorld {
        text: text.into(),
        sequence,
    }
}

fn echo_dispatcher() -> Arc<Dispatcher> {
    Arc::new(
        Dispatcher::new()
            .on(|hello: HelloWorld, _: Context| async move {
                Ok::<_, Error>(Reply::message(&hello))
            })
            .fallback(|any: Any, _: Context| async move { Ok::<_, Error>(Reply::any(any)) }),
    )
}

/// An echo server on a fresh listener: every accepted association is served by the
/// dispatcher in its own task. Returns the address and the serve results, one per connection.
async fn echo_server(
    config: SctpConfig,
) -> (
    SocketAddr,
    async_std::channel::Receiver<connect::Result<()>>,
    task::JoinHandle<()>,
) {
    let listener = SctpListener::bind_with("127.0.0.1:0", config)
        .await
        .expect("bind");
    let addr = listener.local_addr();
    let (done_tx, done_rx) = async_std::channel::unbounded();
    let dispatcher = echo_dispatcher();
    let server = task::spawn(async move {
        let mut incoming = listener.incoming();
        while let Some(conn) = incoming.next().await {
            let conn = conn.expect("accept");
            let dispatcher = dispatcher.clone();
            let done_tx = done_tx.clone();
            task::spawn(async move {
                let _ = done_tx.send(dispatcher.serve(conn).await).await;
            });
        }
    });
    (addr, done_rx, server)
}

/// Sends `count` greetings from one task while another reads the echoes, and checks that
/// every one comes back once, in order. Ends with a graceful shutdown.
async fn pipelined_echo(conn: SctpConnection, count: u64) {
    pipelined_echo_padded(conn, count, 0).await
}

/// [`pipelined_echo`] with `padding` more bytes of text per message.
async fn pipelined_echo_padded(conn: SctpConnection, count: u64, padding: usize) {
    let pad = ".".repeat(padding);
    let text = move |i: u64| format!("message {i}{pad}");
    let expected_text = text.clone();
    let (mut reader, mut writer) = conn.split();
    let sender = task::spawn(async move {
        for i in 0..count {
            let msg = hello(i, text(i));
            // Mostly batched, every tenth on its own: both many-frames-per-packet and
            // one-frame-per-message traffic.
            if i % 10 == 0 {
                writer.send_message(&msg).await.expect("send");
            } else {
                writer.feed_message(&msg).await.expect("feed");
            }
        }
        writer.flush().await.expect("flush");
        writer
    });
    for i in 0..count {
        let reply: HelloWorld = reader
            .recv_message()
            .await
            .expect("recv")
            .unwrap_or_else(|| panic!("stream ended after {i} of {count} replies"));
        assert_eq!(reply.sequence, i, "out of order or duplicated");
        assert_eq!(reply.text, expected_text(i));
    }
    let writer = sender.await;
    let conn = reader.reunite(writer).expect("halves of one connection");
    sctp::shutdown(conn).await.expect("graceful shutdown");
}

#[async_std::test]
async fn echo_through_the_dispatcher() {
    let (addr, done, _server) = echo_server(SctpConfig::default()).await;
    let mut conn = sctp::connect(addr).await.expect("connect");
    assert_eq!(conn.peer_addr(), Some(addr));
    for (i, text) in ["hello", "bonjour", "hallo"].into_iter().enumerate() {
        conn.send_message(&hello(i as u64, text))
            .await
            .expect("send");
        let reply: HelloWorld = conn.recv_message().await.expect("recv").expect("reply");
        assert_eq!((reply.sequence, reply.text.as_str()), (i as u64, text));
    }
    // Any type goes through the fallback.
    let other = Any::from_msg(&prost_types::Duration {
        seconds: 7,
        nanos: 0,
    })
    .expect("pack");
    conn.send(other.clone()).await.expect("send any");
    assert_eq!(conn.recv().await.expect("recv"), Some(other));

    timeout(STEP, sctp::shutdown(conn))
        .await
        .expect("shutdown in time")
        .expect("shutdown");
    // The server saw a clean end of stream and closed its side without error.
    let served = timeout(STEP, done.recv()).await.expect("in time");
    served.expect("serve result").expect("served cleanly");
}

#[async_std::test]
async fn twenty_thousand_messages_in_order() {
    let (addr, done, _server) = echo_server(SctpConfig::default()).await;
    let conn = sctp::connect(addr).await.expect("connect");
    timeout(STEP, pipelined_echo(conn, 20_000))
        .await
        .expect("in time");
    let served = timeout(STEP, done.recv()).await.expect("in time");
    served.expect("serve result").expect("served cleanly");
}

#[async_std::test]
async fn several_clients_share_one_listener_port() {
    let (addr, done, _server) = echo_server(SctpConfig::default()).await;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            task::spawn(async move {
                let conn = sctp::connect(addr).await.expect("connect");
                pipelined_echo(conn, 500).await;
            })
        })
        .collect();
    for client in clients {
        timeout(STEP, client).await.expect("in time");
    }
    for _ in 0..8 {
        let served = timeout(STEP, done.recv()).await.expect("in time");
        served.expect("serve result").expect("served cleanly");
    }
}

/// Length of the frame (the `Any`'s bytes) that carries `msg`.
fn frame_len(msg: &HelloWorld) -> usize {
    use prost::Message;
    Any::from_msg(msg).expect("pack").encoded_len()
}

#[async_std::test]
async fn frames_up_to_the_maximum_size() {
    const MAX: usize = 4 * 1024 * 1024;
    let config = SctpConfig::default()
        .with_connection_config(ConnectionConfig::default().with_max_frame_len(MAX));
    let (addr, _done, _server) = echo_server(config.clone()).await;
    let mut conn = sctp::connect_with(addr, &config).await.expect("connect");

    let mut sizes = vec![0, 1, 1199, 1200, 65_535, 65_536, 65_537, 1 << 20];
    // A greeting whose frame (the Any's bytes) is exactly the maximum.
    let largest = MAX - (frame_len(&hello(0, "x".repeat(MAX - 100))) - (MAX - 100));
    assert_eq!(frame_len(&hello(0, "x".repeat(largest))), MAX);
    sizes.push(largest);
    for len in sizes {
        let msg = hello(0, "x".repeat(len));
        conn.send_message(&msg).await.expect("send");
        let reply: HelloWorld = timeout(STEP, conn.recv_message())
            .await
            .expect("in time")
            .expect("recv")
            .expect("reply");
        assert_eq!(reply, msg, "frame of {len} bytes");
    }
    // One byte too many is refused locally, and the connection stays usable.
    let too_big = hello(0, "x".repeat(largest + 1));
    assert!(matches!(
        conn.send_message(&too_big).await,
        Err(Error::FrameTooLarge { max: MAX, .. })
    ));
    conn.send_message(&hello(2, "still fine"))
        .await
        .expect("send");
    let reply: HelloWorld = conn.recv_message().await.expect("recv").expect("reply");
    assert_eq!(reply.sequence, 2);
    sctp::shutdown(conn).await.expect("shutdown");
}

#[async_std::test]
async fn an_oversized_frame_from_the_peer_ends_only_its_connection() {
    let small = SctpConfig::default()
        .with_connection_config(ConnectionConfig::default().with_max_frame_len(1024));
    let (addr, done, _server) = echo_server(small).await;

    let mut good = sctp::connect(addr).await.expect("connect");
    let mut bad = sctp::connect(addr).await.expect("connect");
    bad.send_message(&hello(1, "x".repeat(4096)))
        .await
        .expect("send");
    let served = timeout(STEP, done.recv()).await.expect("in time");
    assert!(
        matches!(served, Ok(Err(Error::FrameTooLarge { max: 1024, .. }))),
        "{served:?}"
    );
    // The bad client sees its stream end; the good one carries on.
    assert!(timeout(STEP, bad.recv())
        .await
        .expect("in time")
        .expect("clean end")
        .is_none());
    good.send_message(&hello(2, "fine")).await.expect("send");
    let reply: HelloWorld = good.recv_message().await.expect("recv").expect("reply");
    assert_eq!(reply.sequence, 2);
}

#[async_std::test]
async fn writes_wait_while_the_peer_does_not_read() {
    // 8 MiB to write, in 16 KiB messages; the receive window, the send buffer and the
    // writer's own buffer together hold well under 2 MiB of it.
    const MESSAGES: usize = 512;
    const SIZE: usize = 16 * 1024;
    const BOUND: usize = 2 << 20;
    let config = SctpConfig::default()
        .with_send_buffer(256 * 1024)
        .with_receive_window(256 * 1024);
    let listener = SctpListener::bind_with("127.0.0.1:0", config.clone())
        .await
        .expect("bind");
    let mut client = sctp::connect_with(listener.local_addr(), &config)
        .await
        .expect("connect");
    let mut server = listener.accept().await.expect("accept");

    // The writer never gives up on a message (no timeout cancels a send half-way): it counts
    // the messages the connection has taken.
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = task::spawn({
        let taken = taken.clone();
        async move {
            for i in 0..MESSAGES {
                let chunk = hello(i as u64, "y".repeat(SIZE));
                client.send_message(&chunk).await.expect("send");
                taken.fetch_add(1, Ordering::SeqCst);
            }
            client.flush().await.expect("flush");
            client
        }
    });

    // Nobody reads on the server: the writer must come to a standstill within the bound. Wait
    // until the count has not moved for a while (a slow machine only makes it smaller), then
    // check it: the bound is on bytes taken, not on time.
    let settled = timeout(STEP, async {
        let (mut last, mut still) = (usize::MAX, 0);
        while still < 5 {
            task::sleep(Duration::from_millis(200)).await;
            let now = taken.load(Ordering::SeqCst);
            still = if now == last { still + 1 } else { 0 };
            last = now;
        }
        last
    })
    .await
    .expect("the writer settles");
    assert!(
        settled < MESSAGES,
        "all {MESSAGES} messages taken without the peer reading"
    );
    assert!(
        settled * SIZE < BOUND,
        "{} bytes taken before stalling",
        settled * SIZE
    );

    // Once the server reads, everything arrives, in order.
    let reader = task::spawn(async move {
        for i in 0..MESSAGES {
            let m: HelloWorld = server.recv_message().await.expect("recv").expect("message");
            assert_eq!((m.sequence, m.text.len()), (i as u64, SIZE));
        }
        server
    });
    timeout(STEP, writer).await.expect("the writer finishes");
    timeout(STEP, reader)
        .await
        .expect("the reader gets everything");
}

#[async_std::test]
async fn connecting_to_a_silent_port_times_out() {
    // A UDP socket that never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let config = SctpConfig::default().with_handshake_timeout(Duration::from_millis(500));
    let result = timeout(
        STEP,
        sctp::connect_with(silent.local_addr().unwrap(), &config),
    )
    .await
    .expect("in time");
    match result {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}"),
        other => panic!("expected a time-out, got {other:?}"),
    }
}

#[async_std::test]
async fn connecting_to_a_closed_port_is_refused() {
    let closed = UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .unwrap();
    // The socket is gone: the kernel answers the INIT with port unreachable.
    let result = timeout(STEP, sctp::connect(closed)).await.expect("in time");
    match result {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[async_std::test]
async fn accepted_connections_outlive_the_listener() {
    let listener = SctpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr();
    let mut client = sctp::connect(addr).await.expect("connect");
    let server = listener.accept().await.expect("accept");
    drop(listener);
    let serve = task::spawn(async move { echo_dispatcher().serve(server).await });
    client.send_message(&hello(5, "after")).await.expect("send");
    let reply: HelloWorld = client.recv_message().await.expect("recv").expect("reply");
    assert_eq!(reply.sequence, 5);
    sctp::shutdown(client).await.expect("shutdown");
    timeout(STEP, serve)
        .await
        .expect("in time")
        .expect("served");
    // New associations are refused now.
    let config = SctpConfig::default().with_handshake_timeout(Duration::from_millis(500));
    assert!(sctp::connect_with(addr, &config).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Garbage datagrams

/// CRC32c (Castagnoli), as SCTP's checksum, bit by bit: enough for a handful of test packets.
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

/// An SCTP packet with a valid checksum: common header, then `chunks`.
fn sctp_packet(verification_tag: u32, chunks: &[u8]) -> Vec<u8> {
    let mut packet = Vec::new();
    packet.extend_from_slice(&5000u16.to_be_bytes());
    packet.extend_from_slice(&5000u16.to_be_bytes());
    packet.extend_from_slice(&verification_tag.to_be_bytes());
    packet.extend_from_slice(&[0; 4]);
    packet.extend_from_slice(chunks);
    let crc = crc32c(&packet);
    packet[8..12].copy_from_slice(&crc.to_le_bytes());
    packet
}

/// An INIT (with an unknown parameter) that opens a handshake the sender never finishes.
fn init_packet(initiate_tag: u32) -> Vec<u8> {
    let mut init = vec![1u8, 0, 0, 0x20];
    init.extend_from_slice(&initiate_tag.to_be_bytes());
    init.extend_from_slice(&[0, 0, 0x10, 0, 0, 1, 0, 1, 0, 0, 0, 1]);
    init.extend_from_slice(&[0xc0, 0x00, 0x00, 0x0c, 1, 2, 3, 4, 5, 6, 7, 8]);
    sctp_packet(0, &init)
}

fn garbage() -> Vec<Vec<u8>> {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut datagrams = vec![
        vec![],
        vec![0],
        vec![0xff; 11],
        vec![0; 12],
        vec![0xff; 1500],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ];
    // Random bytes of every size class.
    for len in [13, 64, 512, 1200, 9000, 65_000] {
        datagrams.push((0..len).map(|_| rng.next() as u8).collect());
    }
    // Well-formed SCTP with valid checksums: DATA, SACK, ABORT and SHUTDOWN for unknown
    // verification tags, a truncated chunk, and an INIT with nonsense parameters.
    let data_chunk = [
        0u8, 3, 0, 20, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 53, 1, 2, 3, 4,
    ];
    let sack = [3u8, 0, 0, 16, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0];
    let abort = [6u8, 0, 0, 4];
    let shutdown = [7u8, 0, 0, 8, 0, 0, 0, 1];
    let truncated = [0u8, 3, 0xff, 0xff, 1, 2];
    for tag in [1, 0xdead_beef, u32::MAX] {
        for chunk in [&data_chunk[..], &sack, &abort, &shutdown, &truncated] {
            datagrams.push(sctp_packet(tag, chunk));
        }
    }
    datagrams.push(init_packet(9));
    // A valid checksum over random chunk bytes.
    for _ in 0..50 {
        let chunk: Vec<u8> = (0..(rng.next() % 200) as usize)
            .map(|_| rng.next() as u8)
            .collect();
        datagrams.push(sctp_packet(rng.next() as u32, &chunk));
    }
    datagrams
}

#[async_std::test]
async fn garbage_datagrams_do_not_disturb_associations() {
    let (addr, done, _server) = echo_server(SctpConfig::default()).await;
    let mut conn = sctp::connect(addr).await.expect("connect");
    conn.send_message(&hello(0, "before")).await.expect("send");
    let _: HelloWorld = conn.recv_message().await.expect("recv").expect("reply");

    let attacker = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let datagrams = garbage();
    // Garbage while traffic flows: the pipelined echo runs concurrently.
    let spray = {
        let datagrams = datagrams.clone();
        thread::spawn(move || {
            for _ in 0..5 {
                for d in &datagrams {
                    let _ = attacker.send_to(d, addr);
                }
                thread::sleep(Duration::from_millis(2));
            }
        })
    };
    for i in 1..=2000 {
        conn.feed_message(&hello(i, "during")).await.expect("feed");
    }
    conn.flush().await.expect("flush");
    for i in 1..=2000 {
        let reply: HelloWorld = timeout(STEP, conn.recv_message())
            .await
            .expect("in time")
            .expect("recv")
            .expect("reply");
        assert_eq!(reply.sequence, i);
    }
    spray.join().expect("spray thread");

    // The listener still accepts new associations, and the old one still works.
    let second = sctp::connect(addr).await.expect("connect after garbage");
    timeout(STEP, pipelined_echo(second, 100))
        .await
        .expect("in time");
    conn.send_message(&hello(9999, "after"))
        .await
        .expect("send");
    let reply: HelloWorld = conn.recv_message().await.expect("recv").expect("reply");
    assert_eq!(reply.sequence, 9999);
    sctp::shutdown(conn).await.expect("shutdown");
    for _ in 0..2 {
        let served = timeout(STEP, done.recv()).await.expect("in time");
        served.expect("serve result").expect("served cleanly");
    }
}

#[async_std::test]
async fn abandoned_handshakes_expire() {
    // INITs whose sender never answers fill the backlog; a real client still gets in (the
    // oldest half-open handshake makes room), and the rest time out.
    let config = SctpConfig::default()
        .with_backlog(4)
        .with_handshake_timeout(Duration::from_millis(300));
    let listener = SctpListener::bind_with("127.0.0.1:0", config.clone())
        .await
        .expect("bind");
    let addr = listener.local_addr();
    let attacker = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for tag in 1..=20 {
        attacker
            .send_to(&init_packet(tag), addr)
            .expect("send INIT");
    }
    let client = sctp::connect_with(addr, &config).await.expect("connect");
    let server = listener.accept().await.expect("accept");
    assert!(listener.handshakes_in_progress() <= 4);
    let serve = task::spawn(async move { echo_dispatcher().serve(server).await });
    timeout(STEP, pipelined_echo(client, 10))
        .await
        .expect("in time");
    serve.await.expect("served");
    timeout(STEP, async {
        while listener.handshakes_in_progress() > 0 {
            task::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("abandoned handshakes expire");
}

#[async_std::test]
async fn garbage_from_the_servers_address_does_not_disturb_a_client() {
    // A client's UDP socket is connected to its server, so the kernel drops datagrams from
    // anyone else. Garbage from the server's own address does reach the client's endpoint:
    // send it from a relay the client takes for its server.
    let (server, _done, _server) = echo_server(SctpConfig::default()).await;
    let faults = Faults {
        loss: 0,
        reorder: 0,
        corrupt: 0,
    };
    let relay = LossyRelay::start(server, faults, 4);
    let mut conn = sctp::connect(relay.addr).await.expect("connect");
    let client_addr = conn.local_addr().expect("local addr");
    for round in 0..3u64 {
        for d in garbage() {
            let _ = relay.front.send_to(&d, client_addr);
        }
        for i in 0..100 {
            conn.feed_message(&hello(round * 100 + i, "ok"))
                .await
                .expect("feed");
        }
        conn.flush().await.expect("flush");
        for i in 0..100 {
            let reply: HelloWorld = timeout(STEP, conn.recv_message())
                .await
                .expect("in time")
                .expect("recv")
                .expect("reply");
            assert_eq!(reply.sequence, round * 100 + i);
        }
    }
    timeout(STEP, sctp::shutdown(conn))
        .await
        .expect("in time")
        .expect("shutdown");
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// Lossy relay

/// xorshift64*: a small deterministic generator, so a failing run can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with probability `per_mille` / 1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

/// A UDP relay between one client and a server that drops `loss_per_mille` of the datagrams
/// each way and holds back some (`reorder_per_mille`) to send after the next one. Runs on two
/// threads until `stop` is set.
struct LossyRelay {
    addr: SocketAddr,
    /// The socket clients talk to: datagrams sent from it come from the client's peer.
    front: Arc<UdpSocket>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<(u64, u64)>>,
}

impl LossyRelay {
    fn start(server: SocketAddr, faults: Faults, seed: u64) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind relay");
        let back = UdpSocket::bind("127.0.0.1:0").expect("bind relay");
        back.connect(server).expect("connect relay to server");
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
        }
        let addr = front.local_addr().expect("relay addr");
        let front = Arc::new(front);
        let front_for_tests = front.clone();
        let back = Arc::new(back);
        let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));

        // Direction 1: client -> server.
        let upstream = {
            let (front, back, client, stop) =
                (front.clone(), back.clone(), client.clone(), stop.clone());
            thread::spawn(move || {
                let mut rng = XorShift(seed);
                relay(
                    &stop,
                    &mut rng,
                    faults,
                    |buf| {
                        let (n, from) = front.recv_from(buf)?;
                        *client.lock().unwrap() = Some(from);
                        Ok(n)
                    },
                    |d| back.send(d).map(drop),
                )
            })
        };
        // Direction 2: server -> client.
        let downstream = {
            let (front, back, client, stop) = (front, back, client, stop.clone());
            thread::spawn(move || {
                let mut rng = XorShift(seed ^ 0x5555_5555_5555_5555);
                relay(
                    &stop,
                    &mut rng,
                    faults,
                    |buf| back.recv(buf),
                    |d| match *client.lock().unwrap() {
                        Some(to) => front.send_to(d, to).map(drop),
                        None => Ok(()),
                    },
                )
            })
        };
        LossyRelay {
            addr,
            front: front_for_tests,
            stop,
            threads: vec![upstream, downstream],
        }
    }

    /// Stops the relay and returns (datagrams forwarded, datagrams dropped) over both ways.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("relay thread"))
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    }
}

/// What a [`LossyRelay`] does to datagrams, each in thousandths.
#[derive(Clone, Copy)]
struct Faults {
    loss: u64,
    reorder: u64,
    /// Bytes changed after the common header, with the checksum fixed up so SCTP parses them.
    corrupt: u64,
}

fn relay(
    stop: &AtomicBool,
    rng: &mut XorShift,
    faults: Faults,
    mut recv: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
    mut send: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> (u64, u64) {
    let mut buf = vec![0u8; 65_536];
    let mut held: Option<Vec<u8>> = None;
    let (mut forwarded, mut dropped) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        let n = match recv(&mut buf) {
            Ok(n) => n,
            Err(_) => {
                // Quiet for a moment: release a held datagram rather than keep it forever.
                if let Some(d) = held.take() {
                    let _ = send(&d);
                }
                continue;
            }
        };
        if rng.chance(faults.loss) {
            dropped += 1;
            continue;
        }
        forwarded += 1;
        if n > 16 && rng.chance(faults.corrupt) {
            for _ in 0..1 + rng.next() % 3 {
                // Half the time in the first chunk's header and parameters.
                let span = if rng.chance(500) {
                    (n - 12).min(24)
                } else {
                    n - 12
                };
                let at = 12 + (rng.next() as usize) % span;
                buf[at] ^= 1 << (rng.next() % 8);
            }
            buf[8..12].fill(0);
            let crc = crc32c(&buf[..n]);
            buf[8..12].copy_from_slice(&crc.to_le_bytes());
        }
        if held.is_none() && rng.chance(faults.reorder) {
            held = Some(buf[..n].to_vec());
            continue;
        }
        let _ = send(&buf[..n]);
        if let Some(d) = held.take() {
            let _ = send(&d);
        }
    }
    (forwarded, dropped)
}

async fn echo_through_lossy_relay(loss_per_mille: u64, seed: u64, count: u64) {
    let (server, done, _server) = echo_server(SctpConfig::default()).await;
    let faults = Faults {
        loss: loss_per_mille,
        reorder: 20,
        corrupt: 0,
    };
    let relay = LossyRelay::start(server, faults, seed);
    let conn = timeout(STEP, sctp::connect(relay.addr))
        .await
        .expect("in time")
        .expect("connect through the relay");
    timeout(STEP, pipelined_echo_padded(conn, count, 200))
        .await
        .expect("in time");
    let served = timeout(STEP, done.recv()).await.expect("in time");
    served.expect("serve result").expect("served cleanly");
    let (forwarded, dropped) = relay.stop();
    println!("relay: {forwarded} datagrams forwarded, {dropped} dropped");
    assert!(dropped > 0, "the relay dropped nothing");
}

#[async_std::test]
async fn every_message_once_in_order_through_one_percent_loss() {
    echo_through_lossy_relay(10, 1, 5000).await;
}

#[async_std::test]
async fn every_message_once_in_order_through_five_percent_loss() {
    echo_through_lossy_relay(50, 2, 5000).await;
}

/// At 20 % loss each way most losses end in a retransmission time-out, which with the default
/// 2 ms minimum fires often, many times spuriously (while the packet or its SACK is merely
/// queued on this loaded machine): retransmitted duplicates must be discarded, and the
/// exponential back-off of repeated time-outs must never give up on a live peer.
#[async_std::test]
async fn every_message_once_in_order_through_twenty_percent_loss() {
    echo_through_lossy_relay(200, 3, 1000).await;
}

// ---------------------------------------------------------------------------------------------
// Clean-up

/// Waits (at most 10 s) until nothing holds UDP port `addr` any more: its endpoint driver has
/// ended and dropped the socket.
async fn port_released(addr: SocketAddr) -> bool {
    for _ in 0..200 {
        if UdpSocket::bind(("127.0.0.1", addr.port())).is_ok() {
            return true;
        }
        task::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[async_std::test]
async fn drivers_stop_once_their_associations_are_gone() {
    let listener = SctpListener::bind("127.0.0.1:0").await.expect("bind");
    let server_addr = listener.local_addr();
    let mut client = sctp::connect(server_addr).await.expect("connect");
    let client_addr = client.local_addr().expect("local addr");
    let server = listener.accept().await.expect("accept");
    let serve = task::spawn(async move { echo_dispatcher().serve(server).await });
    client.send_message(&hello(1, "bye")).await.expect("send");
    let _: HelloWorld = client.recv_message().await.expect("recv").expect("reply");
    sctp::shutdown(client).await.expect("shutdown");
    serve.await.expect("served");
    assert!(
        port_released(client_addr).await,
        "the client's driver still holds {client_addr}"
    );
    assert!(
        !port_released_now(server_addr),
        "the listener's port closed while the listener lives"
    );
    drop(listener);
    assert!(
        port_released(server_addr).await,
        "the listener's driver still holds {server_addr}"
    );
}

#[async_std::test]
async fn a_dropped_connection_ends_its_stream_and_goes_away() {
    let listener = SctpListener::bind("127.0.0.1:0").await.expect("bind");
    let client = sctp::connect(listener.local_addr()).await.expect("connect");
    let client_addr = client.local_addr().expect("local addr");
    let mut server = listener.accept().await.expect("accept");
    // Dropped without closing: the peer still reads a clean end of stream...
    drop(client);
    let end = timeout(STEP, server.recv()).await.expect("in time");
    assert!(end.expect("clean end").is_none());
    // ...and once the server closes too, the association shuts down and the client's
    // background driver ends.
    server.close().await.expect("close");
    assert!(
        port_released(client_addr).await,
        "the dropped client's driver still holds {client_addr}"
    );
}

fn port_released_now(addr: SocketAddr) -> bool {
    UdpSocket::bind(("127.0.0.1", addr.port())).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Examples

#[test]
fn sctp_client_example_talks_to_the_sctp_echo_server_example() {
    let server = support::Server::start("sctp-echo-server", &["127.0.0.1:0"]);
    let output = std::process::Command::new(support::example("sctp-client"))
        .arg(server.addr.to_string())
        .output()
        .expect("run sctp-client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "sctp-client failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "reply #1: \"hello\"",
        "reply #2: \"bonjour\"",
        "reply #3: \"hallo\"",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}

#[async_std::test]
async fn data_read_after_the_association_shut_down_is_not_lost() {
    // Half-close as with TCP: the server ends its side first and reads the client's messages
    // only after the client has sent them all, ended its side and shut SCTP down.
    let listener = SctpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut client = sctp::connect(listener.local_addr()).await.expect("connect");
    let mut server = listener.accept().await.expect("accept");
    server.close().await.expect("server close");
    assert!(client.recv().await.expect("clean end").is_none());
    for i in 0..1000 {
        client.feed_message(&hello(i, "late")).await.expect("feed");
    }
    timeout(STEP, sctp::shutdown(client))
        .await
        .expect("in time")
        .expect("client shutdown");
    for i in 0..1000 {
        let m: HelloWorld = server
            .recv_message()
            .await
            .expect("recv")
            .unwrap_or_else(|| panic!("end of stream after {i} messages"));
        assert_eq!(m.sequence, i);
    }
    assert!(server.recv().await.expect("clean end").is_none());
}

// ---------------------------------------------------------------------------------------------
// Other runtimes: the driver runs on async-std's executor, the connection on any.

async fn echo_once_each_way() -> connect::Result<()> {
    let listener = SctpListener::bind("127.0.0.1:0").await?;
    let mut client = sctp::connect(listener.local_addr()).await?;
    let server = listener.accept().await?;
    let dispatcher = echo_dispatcher();
    let serve = dispatcher.serve(server);
    let talk = async {
        client.send_message(&hello(3, "other runtime")).await?;
        let reply: HelloWorld = client.recv_message().await?.expect("reply");
        assert_eq!(reply.sequence, 3);
        sctp::shutdown(client).await
    };
    let (served, talked) = futures::join!(serve, talk);
    served.and(talked)
}

#[test]
fn connections_work_from_smol() {
    smol::block_on(timeout(STEP, echo_once_each_way()))
        .expect("in time")
        .expect("echo on smol");
}

#[test]
fn connections_work_from_tokio() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime
        .block_on(timeout(STEP, echo_once_each_way()))
        .expect("in time")
        .expect("echo on tokio");
}

// ---------------------------------------------------------------------------------------------
// The driver runs where the caller says: `*_with_spawner` hand it to the caller's executor.

/// One message each way between a client and the association the listener accepts for it,
/// which is returned (kept open: its end of stream would end the client's reads).
async fn one_echo(
    listener: &SctpListener,
    client: &mut SctpConnection,
) -> connect::Result<SctpConnection> {
    client.send_message(&hello(7, "spawned")).await?;
    let mut server = listener.accept().await?;
    let got: HelloWorld = server.recv_message().await?.expect("a message");
    server.send_message(&got).await?;
    let back: HelloWorld = client.recv_message().await?.expect("an echo");
    assert_eq!(back.sequence, 7);
    Ok(server)
}

#[test]
fn drivers_run_on_an_executor_the_caller_owns() {
    // A smol executor on a thread this test owns, and a spawner that counts what it is given.
    let executor = Arc::new(smol::Executor::new());
    let (stop, stopped) = smol::channel::bounded::<()>(1);
    let runner = {
        let executor = executor.clone();
        thread::spawn(move || {
            // The stop channel closing also stops it; either way is fine.
            let _ = smol::block_on(executor.run(stopped.recv()));
        })
    };
    let spawned = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let spawner = || {
        let executor = executor.clone();
        let spawned = spawned.clone();
        move |task| {
            spawned.fetch_add(1, Ordering::SeqCst);
            executor.spawn(task).detach();
        }
    };
    let config = SctpConfig::default();
    let (listener, mut client, _server) = smol::block_on(timeout(STEP, async {
        let listener =
            SctpListener::bind_with_spawner("127.0.0.1:0", config.clone(), spawner()).await?;
        let mut client =
            sctp::connect_with_spawner(listener.local_addr(), &config, spawner()).await?;
        let server = one_echo(&listener, &mut client).await?;
        Ok::<_, Error>((listener, client, server))
    }))
    .expect("in time")
    .expect("echo with both drivers on the caller's executor");
    assert_eq!(spawned.load(Ordering::SeqCst), 2, "one driver per port");

    // Stopping that executor drops both drivers, which proves they ran there (a driver on a
    // thread of its own would go on): the connection and the listener fail instead of hanging.
    stop.try_send(()).expect("stop the executor");
    runner.join().expect("executor thread");
    drop(executor);
    smol::block_on(async {
        let read = timeout(STEP, client.recv()).await.expect("no hang");
        let err = read.expect_err("the client's driver is gone");
        assert!(err.to_string().contains("executor"), "{err}");
        let accepted = timeout(STEP, listener.accept()).await.expect("no hang");
        assert!(accepted.is_err(), "the listener's driver is gone");
    });
}

#[test]
fn drivers_run_on_tokio_when_handed_to_it() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let spawn = |task| {
        tokio::spawn(task);
    };
    let config = SctpConfig::default();
    let (listener, mut client, _server) = runtime
        .block_on(timeout(STEP, async {
            let listener =
                SctpListener::bind_with_spawner("127.0.0.1:0", config.clone(), spawn).await?;
            let mut client =
                sctp::connect_with_spawner(listener.local_addr(), &config, spawn).await?;
            let server = one_echo(&listener, &mut client).await?;
            Ok::<_, Error>((listener, client, server))
        }))
        .expect("in time")
        .expect("echo with both drivers on tokio");
    // Shutting the runtime down drops the drivers: everything on their ports fails.
    drop(runtime);
    smol::block_on(async {
        let read = timeout(STEP, client.recv()).await.expect("no hang");
        assert!(read.is_err(), "the client's driver went with the runtime");
        let accepted = timeout(STEP, listener.accept()).await.expect("no hang");
        assert!(
            accepted.is_err(),
            "the listener's driver went with the runtime"
        );
    });
}

#[async_std::test]
async fn a_client_notices_when_the_server_process_is_gone() {
    let server = support::Server::start("sctp-echo-server", &["127.0.0.1:0"]);
    let mut conn = sctp::connect(server.addr).await.expect("connect");
    conn.send_message(&hello(1, "hi")).await.expect("send");
    let _: HelloWorld = conn.recv_message().await.expect("recv").expect("reply");
    drop(server); // killed: its UDP port is closed
                  // The next packet meets a closed port, and the connection fails instead of hanging.
    let _ = conn.send_message(&hello(2, "anyone?")).await;
    let result = timeout(STEP, conn.recv()).await.expect("in time");
    match result {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        other => panic!("expected a reset, got {other:?}"),
    }
}

#[async_std::test]
async fn a_peer_sending_corrupt_sctp_loses_only_its_own_association() {
    // A relay that changes bytes inside SCTP packets and fixes the checksum up: the
    // association's own parser sees nonsense from a peer that knows the verification tag.
    let (server, _done, _server) = echo_server(SctpConfig::default()).await;
    let faults = Faults {
        loss: 0,
        reorder: 0,
        corrupt: 20,
    };
    let relay = LossyRelay::start(server, faults, 3);
    let config = SctpConfig::default()
        .with_handshake_timeout(Duration::from_secs(2))
        .with_max_retransmits(5);
    let mut outcomes = (0, 0, 0);
    let cpu_before = cpu_seconds();
    for round in 0..4u64 {
        // Whatever happens to this connection (it may survive, or fail with an error), it
        // must end within the step and must not take the server down.
        let attempt = async {
            let mut conn = sctp::connect_with(relay.addr, &config).await?;
            for i in 0..300 {
                conn.feed_message(&hello(i, "z".repeat(300))).await?;
            }
            conn.flush().await?;
            for i in 0..300 {
                // Changed bytes may reach the application: a wrong message ends the round.
                match conn.recv_message::<HelloWorld>().await? {
                    Some(m) if m.sequence == i => {}
                    other => {
                        let e =
                            std::io::Error::other(format!("message {i} came back as {other:?}"));
                        return Err(e.into());
                    }
                }
            }
            Ok::<_, Error>(())
        };
        // A peer can always stall its own association (as it can by going silent), so a
        // round that hangs is abandoned after a while: dropping it must clean up too.
        match timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(())) => outcomes.0 += 1,
            Ok(Err(e)) => {
                println!("round {round}: connection failed: {e}");
                outcomes.1 += 1;
            }
            Err(_) => {
                println!("round {round}: connection stalled");
                outcomes.2 += 1;
            }
        }
    }
    let (forwarded, _) = relay.stop();
    println!(
        "corrupting relay: {forwarded} datagrams, outcomes (ok, failed, stalled) = {outcomes:?}, \
         {:.2} s CPU",
        cpu_seconds() - cpu_before
    );
    // A direct client on the same listener is served as if nothing happened.
    let direct = sctp::connect(server).await.expect("connect directly");
    timeout(STEP, pipelined_echo(direct, 1000))
        .await
        .expect("in time");
}

/// CPU time this process has used (Linux), for a log line.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

#[async_std::test]
async fn ipv6_loopback() {
    let listener = match SctpListener::bind("[::1]:0").await {
        Ok(listener) => listener,
        Err(e) => {
            println!("SKIPPED ipv6_loopback: cannot bind [::1]: {e} (no IPv6 on this host)");
            return;
        }
    };
    let addr = listener.local_addr();
    assert!(addr.is_ipv6());
    let client = sctp::connect(addr).await.expect("connect over IPv6");
    let server = listener.accept().await.expect("accept");
    let serve = task::spawn(async move { echo_dispatcher().serve(server).await });
    timeout(STEP, pipelined_echo(client, 100))
        .await
        .expect("in time");
    serve.await.expect("served");
}

// ---------------------------------------------------------------------------------------------
// Sessions: the session layer runs on an SCTP connection as on any other.

#[async_std::test]
async fn a_session_over_sctp() {
    use connect::proto::v1::{Credentials, ReasonCode};
    use connect::session::{self, PlainAuthenticator, SessionConfig};

    let listener = SctpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr();
    let server_config = SessionConfig::new()
        .with_heartbeat(Some(Duration::from_millis(200)))
        .with_authenticator(PlainAuthenticator::new().with_user("alice", "s3cret"));
    let server = task::spawn(async move {
        let conn = listener.accept().await?;
        let (mut session, driver) = session::accept(conn, &server_config).await?;
        let driver = task::spawn(driver);
        while let Some(any) = session.recv().await? {
            session.send(any).await?;
        }
        let end = driver.await;
        assert!(end.is_graceful(), "{end}");
        Ok::<_, Error>(())
    });

    let config = SessionConfig::new()
        .with_heartbeat(Some(Duration::from_millis(200)))
        .with_credentials(Credentials::plain("alice", "s3cret"));
    let conn = sctp::connect(addr).await.expect("connect");
    let (mut session, driver) = session::connect(conn, &config)
        .await
        .expect("session handshake");
    let driver = task::spawn(driver);
    assert_eq!(session.info().identity(), Some("alice"));
    for i in 0..1000 {
        session
            .feed_message(&hello(i, "over a session"))
            .await
            .expect("feed");
    }
    session.flush().await.expect("flush");
    // Long enough for heartbeats to flow while idle.
    task::sleep(Duration::from_millis(500)).await;
    for i in 0..1000 {
        let reply: HelloWorld = timeout(STEP, session.recv_message())
            .await
            .expect("in time")
            .expect("recv")
            .expect("reply");
        assert_eq!(reply.sequence, i);
    }
    session
        .close_with(ReasonCode::Normal, "done")
        .await
        .expect("graceful close");
    let end = timeout(STEP, driver).await.expect("in time");
    assert!(end.is_graceful(), "{end}");
    timeout(STEP, server)
        .await
        .expect("in time")
        .expect("server side");
}

#[async_std::test]
async fn associations_beyond_the_backlog_read_an_end_of_stream() {
    let config = SctpConfig::default().with_backlog(2);
    let listener = SctpListener::bind_with("127.0.0.1:0", config)
        .await
        .expect("bind");
    let addr = listener.local_addr();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(sctp::connect(addr).await.expect("connect"));
    }
    // Nobody accepted yet: the two beyond the backlog are ended by the server at once.
    for client in &mut clients[2..] {
        let end = timeout(STEP, client.recv()).await.expect("in time");
        assert!(end.expect("clean end").is_none());
    }
    // The first two are still waiting and get served once accepted.
    for client in clients.drain(..2) {
        let server = listener.accept().await.expect("accept");
        let serve = task::spawn(async move { echo_dispatcher().serve(server).await });
        timeout(STEP, pipelined_echo(client, 10))
            .await
            .expect("in time");
        serve.await.expect("served");
    }
}

#[async_std::test]
async fn unusual_settings_still_deliver_everything_in_order() {
    // Tiny and huge packets, the smallest window, a small send buffer: every message of a
    // random mix of sizes comes back once, in order. (A send buffer of a few bytes works too,
    // but turns SCTP into stop-and-wait: each write waits for its delayed acknowledgement.)
    let configs = [
        SctpConfig::default()
            .with_mtu(256)
            .with_receive_window(0)
            .with_send_buffer(2048),
        SctpConfig::default()
            .with_mtu(1500)
            .with_receive_window(256 * 1024)
            .with_send_buffer(64 * 1024),
        SctpConfig::default()
            .with_mtu(usize::MAX)
            .with_receive_window(4 << 20)
            .with_send_buffer(8 << 20),
    ];
    let mut rng = XorShift(0x1234_5678);
    for config in configs {
        let (addr, done, _server) = echo_server(config.clone()).await;
        let conn = sctp::connect_with(addr, &config).await.expect("connect");
        let sizes: Vec<usize> = (0..200)
            .map(|_| match rng.next() % 10 {
                0 => (rng.next() % 300_000) as usize,
                1..=3 => (rng.next() % 5_000) as usize,
                _ => (rng.next() % 100) as usize,
            })
            .collect();
        let (mut reader, mut writer) = conn.split();
        let expected = sizes.clone();
        let sender = task::spawn(async move {
            for (i, len) in sizes.into_iter().enumerate() {
                writer
                    .feed_message(&hello(i as u64, "s".repeat(len)))
                    .await
                    .expect("feed");
            }
            writer.flush().await.expect("flush");
            writer
        });
        for (i, len) in expected.into_iter().enumerate() {
            let reply: HelloWorld = timeout(STEP, reader.recv_message())
                .await
                .expect("in time")
                .expect("recv")
                .expect("reply");
            assert_eq!((reply.sequence, reply.text.len()), (i as u64, len));
        }
        let mut writer = sender.await;
        // Then a burst of tiny messages, each flushed on its own: many small chunks bundled
        // into one packet (the largest packets `sctp-proto` makes for a given MTU).
        let burst = task::spawn(async move {
            for i in 0..2000 {
                writer.send_message(&hello(i, "")).await.expect("send");
            }
            writer
        });
        for i in 0..2000 {
            let reply: HelloWorld = timeout(STEP, reader.recv_message())
                .await
                .expect("in time")
                .expect("recv")
                .expect("reply");
            assert_eq!(reply.sequence, i);
        }
        let writer = burst.await;
        let conn = reader.reunite(writer).expect("halves");
        sctp::shutdown(conn).await.expect("shutdown");
        let served = timeout(STEP, done.recv()).await.expect("in time");
        served.expect("serve result").expect("served cleanly");
    }
}
