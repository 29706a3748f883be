//! Byte-stream tunnels over a reliable stream: an echo server behind the tunnel, many megabytes
//! through it while the cutting proxy cuts the connection under it again and again, every byte
//! back identical and in order; and one stalled stream not holding up another.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_std::net::{TcpListener, TcpStream};
use async_std::task;
use connect::reliable::{Accepted, Backoff, ReliableConfig, ReliableServer, ReliableStream};
use connect::session::SessionConfig;
use connect::transport::tcp;
use connect::tunnel::{Side, Tunnel, TunnelConfig, TunnelStream};
use futures::{AsyncReadExt, AsyncWriteExt};
use support::proxy::cutting_proxy;
use support::{spawn, within};

/// A plain TCP echo server (bytes, not frames): the "service" behind the tunnel.
async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    task::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            task::spawn(async move {
                let (mut r, mut w) = (stream.clone(), stream);
                let _ = futures::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// Copies both ways between a tunnelled stream and a TCP connection, half-closing each way.
async fn splice(tunnelled: TunnelStream, tcp: TcpStream) {
    let (mut from_tunnel, mut to_tunnel) = tunnelled.split();
    let (mut from_tcp, mut to_tcp) = (tcp.clone(), tcp);
    let up = async {
        let _ = futures::io::copy(&mut from_tunnel, &mut to_tcp).await;
        let _ = to_tcp.shutdown(std::net::Shutdown::Write);
    };
    let down = async {
        let _ = futures::io::copy(&mut from_tcp, &mut to_tunnel).await;
        let _ = to_tunnel.close().await;
    };
    futures::join!(up, down);
}

/// The far side: a reliable server whose every stream is a tunnel; each tunnelled stream is
/// connected to the TCP address it names (what `connect tunnel` does).
async fn tunnel_server(config: TunnelConfig) -> SocketAddr {
    let listener = tcp::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let session = SessionConfig::new().with_heartbeat(Some(Duration::from_millis(500)));
    let server = ReliableServer::new(
        session,
        ReliableConfig::new().with_resume_timeout(Duration::from_secs(30)),
    );
    task::spawn(async move {
        loop {
            let Ok(conn) = listener.accept().await else {
                continue;
            };
            let (server, config) = (server.clone(), config.clone());
            task::spawn(async move {
                match server.accept(conn).await {
                    Ok(Accepted::NewStream { stream, driver }) => {
                        task::spawn(serve_tunnel(stream, config));
                        driver.await;
                    }
                    Ok(Accepted::Resumed { driver }) => driver.await,
                    _ => {}
                }
            });
        }
    });
    addr
}

async fn serve_tunnel(stream: ReliableStream, config: TunnelConfig) {
    let (mut tunnel, driver) = Tunnel::new(stream, Side::Accepting, config);
    task::spawn(driver);
    while let Some((tunnelled, target)) = tunnel.accept().await {
        task::spawn(async move {
            if let Ok(tcp) = TcpStream::connect(target.as_str()).await {
                splice(tunnelled, tcp).await;
            }
        });
    }
}

fn client(addr: SocketAddr, config: TunnelConfig) -> Tunnel {
    let reliable = ReliableConfig::new().with_backoff(
        Backoff::new()
            .with_initial(Duration::from_millis(1))
            .with_max(Duration::from_millis(20))
            .with_max_attempts(Some(200)),
    );
    let session = SessionConfig::new().with_heartbeat(Some(Duration::from_millis(500)));
    let stream = tcp::connect_reliable(addr, session, reliable, spawn);
    let (tunnel, driver) = Tunnel::new(stream, Side::Connecting, config);
    task::spawn(driver);
    tunnel
}

/// Deterministic bytes for stream `seed` (xorshift), so the reader checks without storing.
struct Bytes(u64);

impl Bytes {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

/// Writes `len` bytes through `stream` and reads them back, checking every byte.
async fn round_trip(stream: TunnelStream, seed: u64, len: usize) {
    let (mut reader, mut writer) = stream.split();
    let send = async move {
        let (mut gen, mut buf, mut left) = (Bytes(seed), vec![0u8; 64 * 1024], len);
        while left > 0 {
            let n = left.min(buf.len());
            gen.fill(&mut buf[..n]);
            writer.write_all(&buf[..n]).await.unwrap();
            left -= n;
        }
        writer.close().await.unwrap();
    };
    let check = async move {
        let (mut gen, mut got, mut want) =
            (Bytes(seed), vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        let mut seen = 0;
        loop {
            let n = reader.read(&mut got).await.unwrap();
            if n == 0 {
                break;
            }
            gen.fill(&mut want[..n]);
            assert!(
                got[..n] == want[..n],
                "stream {seed}: bytes differ after {seen}"
            );
            seen += n;
        }
        assert_eq!(
            seen, len,
            "stream {seed}: all bytes back, then end of stream"
        );
    };
    futures::join!(send, check);
}

#[async_std::test]
async fn megabytes_through_a_tunnel_survive_repeated_cuts() {
    let _ = env_logger::builder().is_test(true).try_init();
    // 100 MB (about 12 s in a debug build on a shared 2-core machine); TUNNEL_MB overrides.
    let megabytes: usize = std::env::var("TUNNEL_MB")
        .ok()
        .and_then(|mb| mb.parse().ok())
        .unwrap_or(100);
    let echo = tcp_echo().await;
    let upstream = tunnel_server(TunnelConfig::new()).await;
    let proxy = cutting_proxy(upstream, 4_000_000).await;
    let tunnel = client(proxy.addr, TunnelConfig::new());
    let streams = 4;
    let per_stream = megabytes * 1_000_000 / streams;
    let started = std::time::Instant::now();
    within(600, "tunnelled transfer", async {
        let runs: Vec<_> = (0..streams as u64)
            .map(|seed| {
                let stream = tunnel.open(&echo.to_string()).unwrap();
                task::spawn(round_trip(stream, seed + 1, per_stream))
            })
            .collect();
        for run in runs {
            run.await;
        }
    })
    .await;
    let cuts = proxy.cuts.load(Ordering::SeqCst);
    eprintln!(
        "{megabytes} MB over {streams} tunnelled streams each way in {:.1?}, {cuts} cuts",
        started.elapsed()
    );
    assert!(cuts >= 3, "the proxy cut the link only {cuts} times");
}

#[async_std::test]
async fn a_stalled_stream_does_not_hold_up_the_others() {
    let window = 16 * 1024;
    let upstream = tunnel_server(TunnelConfig::new().with_window(window)).await;
    let echo = tcp_echo().await;
    let tunnel = client(upstream, TunnelConfig::new().with_window(window));
    // Stalled: its echoes come back, but nobody reads them; the tunnel's window fills.
    let mut stalled = tunnel.open(&echo.to_string()).unwrap();
    let filler = vec![7u8; 4 * window as usize];
    let written = within(20, "filling the stalled stream", async {
        let mut written = 0;
        // Writes go on until the credit runs out (the echo server, the far side's buffers and
        // ours fill up), then the write stays pending.
        loop {
            let write = stalled.write(&filler);
            match async_std::future::timeout(Duration::from_millis(500), write).await {
                Ok(n) => written += n.unwrap(),
                Err(_) => break written,
            }
        }
    })
    .await;
    assert!(
        written >= window as usize,
        "wrote {written} bytes before stalling"
    );
    // Another stream on the same tunnel moves a megabyte meanwhile.
    let other = tunnel.open(&echo.to_string()).unwrap();
    within(60, "the other stream", round_trip(other, 42, 1_000_000)).await;
    // The stalled stream's bytes are all still there once it reads.
    let mut back = vec![0u8; written];
    within(20, "the stalled stream", stalled.read_exact(&mut back))
        .await
        .unwrap();
    assert!(back.iter().all(|&b| b == 7));
}

/// The byte-level examples of proto/PROTOCOL.md, section 13 (tunnels), are what our encoder writes.
#[test]
fn protocol_examples_match_the_encoder() {
    use connect::codec::Codec;
    use connect::prost_types::Any;
    use connect::proto::tunnel::{TunnelClose, TunnelData, TunnelOpen, TunnelWindow};
    fn frame<M: prost::Name + prost::Message>(msg: &M) -> String {
        let any = Any::from_msg(msg).unwrap();
        let mut buf = bytes::BytesMut::new();
        Codec::default().encode(&any, &mut buf).unwrap();
        buf.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proto/PROTOCOL.md")).unwrap();
    let doc = doc.split_whitespace().collect::<Vec<_>>().join(" ");
    let frames = [
        frame(&TunnelOpen {
            stream_id: 1,
            target: "db:5432".into(),
            window: 262_144,
        }),
        frame(&TunnelWindow {
            stream_id: 1,
            credit: 262_144,
        }),
        frame(&TunnelData {
            stream_id: 1,
            data: b"hi".to_vec(),
        }),
        frame(&TunnelClose {
            stream_id: 1,
            error: String::new(),
        }),
    ];
    for hex in &frames {
        println!("{hex}");
    }
    for hex in frames {
        assert!(doc.contains(&hex), "PROTOCOL.md lacks {hex}");
    }
}

/// A peer that sends beyond the credit it was granted fails that stream only: the reader gets
/// an error, the peer a `TunnelClose` with an error, and what we hold stays within the window.
#[async_std::test]
async fn data_beyond_the_window_fails_only_that_stream() {
    use connect::prost_types::Any;
    use connect::proto::tunnel::{TunnelClose, TunnelData, TunnelOpen};
    let window = 16 * 1024;
    let listener = tcp::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ReliableServer::new(SessionConfig::new(), ReliableConfig::new());
    // The far side speaks the tunnel messages by hand, as a misbehaving peer would.
    let raw_peer = task::spawn(async move {
        let conn = listener.accept().await.unwrap();
        let Ok(Accepted::NewStream { mut stream, driver }) = server.accept(conn).await else {
            panic!("expected a new reliable stream");
        };
        task::spawn(driver);
        let mut opened = Vec::new();
        while opened.len() < 2 {
            let any = stream.recv().await.unwrap().unwrap();
            opened.push(any.to_msg::<TunnelOpen>().unwrap());
        }
        assert!(opened.iter().all(|open| open.window == window));
        let data = |id: u64, len: usize| {
            Any::from_msg(&TunnelData {
                stream_id: id,
                data: vec![1; len],
            })
            .unwrap()
        };
        // Stream 1 gets more than its window; stream 3 a little, within it.
        stream.feed(data(1, window as usize + 1)).await.unwrap();
        stream.send(data(3, 10)).await.unwrap();
        let any = stream.recv().await.unwrap().unwrap();
        let close = any.to_msg::<TunnelClose>().unwrap();
        assert_eq!(close.stream_id, 1);
        assert!(!close.error.is_empty());
        stream
    });
    let tunnel = client(addr, TunnelConfig::new().with_window(window));
    let mut first = tunnel.open("a").unwrap();
    let mut second = tunnel.open("b").unwrap();
    let mut buf = [0u8; 64];
    let err = within(20, "the overrun stream", first.read(&mut buf))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    let n = within(20, "the other stream", second.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf[..n], &[1; 10][..n]);
    within(20, "the peer's view", raw_peer).await;
}

/// A raw reliable peer on a fresh listener: the far side speaks the tunnel messages by hand.
async fn raw_peer_listener() -> (SocketAddr, task::JoinHandle<ReliableStream>) {
    let listener = tcp::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ReliableServer::new(SessionConfig::new(), ReliableConfig::new());
    let peer = task::spawn(async move {
        let conn = listener.accept().await.unwrap();
        let Ok(Accepted::NewStream { stream, driver }) = server.accept(conn).await else {
            panic!("expected a new reliable stream");
        };
        task::spawn(driver);
        stream
    });
    (addr, peer)
}

#[async_std::test]
async fn writes_wait_while_the_peer_reads_nothing_and_nothing_is_lost() {
    use connect::prost_types::Any;
    use connect::proto::tunnel::{TunnelData, TunnelOpen, TunnelWindow};
    use connect::tunnel::MAX_QUEUED;
    let (addr, peer) = raw_peer_listener().await;
    let tunnel = client(addr, TunnelConfig::new());
    let mut opened = tunnel.open("a").unwrap();
    let mut stream = within(20, "the raw peer", peer).await;
    let open = stream.recv().await.unwrap().unwrap();
    let id = open.to_msg::<TunnelOpen>().unwrap().stream_id;
    // All the credit there is, then the peer reads nothing.
    let grant = TunnelWindow {
        stream_id: id,
        credit: u32::MAX,
    };
    stream.send(Any::from_msg(&grant).unwrap()).await.unwrap();

    let chunk = vec![7u8; 64 * 1024];
    let mut written = 0usize;
    loop {
        let write = async_std::future::timeout(Duration::from_secs(2), opened.write(&chunk));
        match write.await {
            Ok(n) => written += n.unwrap(),
            Err(_) => break, // stalled: what the tunnel holds is bounded
        }
        assert!(written < 256 * 1024 * 1024, "writes never stalled");
    }
    let queued = tunnel.queued_bytes();
    assert!(
        queued <= MAX_QUEUED + 64 * 1024,
        "{queued} bytes queued for a peer that reads nothing"
    );
    // Every byte written before the stall arrives once the peer reads.
    let mut received = 0usize;
    while received < written {
        let any = within(30, "the queued data", stream.recv())
            .await
            .unwrap()
            .unwrap();
        if let Ok(data) = any.to_msg::<TunnelData>() {
            assert_eq!(data.stream_id, id);
            assert!(data.data.iter().all(|&b| b == 7));
            received += data.data.len();
        }
    }
    assert_eq!(received, written);
}

#[async_std::test]
async fn a_peer_that_floods_replies_without_reading_ends_only_its_tunnel() {
    use connect::prost_types::Any;
    use connect::proto::tunnel::TunnelOpen;
    let (addr, peer) = raw_peer_listener().await;
    let session = SessionConfig::new();
    let stream = tcp::connect_reliable(addr, session, ReliableConfig::new(), spawn);
    let (_tunnel, driver) = Tunnel::new(stream, Side::Connecting, TunnelConfig::new());
    let driver = task::spawn(driver);
    let mut stream = within(20, "the raw peer", peer).await;
    // The same stream id again and again: each is refused with a TunnelClose, which this
    // peer never reads.
    let open = Any::from_msg(&TunnelOpen {
        stream_id: 2,
        target: "x".into(),
        window: 1024,
    })
    .unwrap();
    let flood = task::spawn(async move {
        for _ in 0..1_000_000 {
            if stream.send(open.clone()).await.is_err() {
                break;
            }
        }
    });
    let err = within(60, "the tunnel's end", driver).await.unwrap_err();
    assert!(err.to_string().contains("without reading"), "{err}");
    flood.cancel().await;
    // Another tunnel on the same process still works.
    let echo = tcp_echo().await;
    let server = tunnel_server(TunnelConfig::new()).await;
    let tunnel = client(server, TunnelConfig::new());
    round_trip(tunnel.open(&echo.to_string()).unwrap(), 9, 100_000).await;
}
