//! Attacks on the session layer; see `tests/adversarial.rs`.
//!
//! Each test runs an in-process echo server whose sessions publish their [`SessionStats`] every
//! few milliseconds, plays a hostile client against it over a raw socket, and checks the
//! server's counters and that a well-behaved client of the same server is served meanwhile.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_std::io::WriteExt;
use async_std::net::TcpStream;
use connect::proto::example::HelloWorld;
use connect::proto::v1::{Close, Hello, Ping, Pong, ReasonCode, Refuse, Welcome};
use connect::session::{self, SessionConfig, SessionStats};
use connect::transport::tcp;
use connect::Connection;
use prost::{Message, Name};
use prost_types::Any;

/// Every test is bounded: a hang fails instead of blocking CI.
async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    async_std::future::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("{what} took more than 60 s"))
}

/// What the echo server saw of one session: its latest stats, the highest of each bound over
/// its life, and how it ended.
#[derive(Debug, Default, Clone)]
struct Seen {
    latest: SessionStats,
    max_control_frames: usize,
    max_received_bytes: usize,
    end: Option<String>,
}

type Sessions = Arc<Mutex<Vec<Seen>>>;

/// Small socket buffers, so that a peer that does not read is felt after kilobytes, not after
/// the tens of megabytes loopback buffers grow to.
/// (Accepted sockets inherit them from their listener.)
fn small_buffers<S: std::os::fd::AsFd>(socket: &S) {
    rustix::net::sockopt::set_socket_send_buffer_size(socket, 4096).unwrap();
    rustix::net::sockopt::set_socket_recv_buffer_size(socket, 4096).unwrap();
}

/// An echo server on loopback: every session is echoed by its own task, which records the
/// session's stats at least every 10 ms (also while no message arrives).
async fn echo_server(config: SessionConfig) -> (SocketAddr, Sessions) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    small_buffers(&listener);
    let listener = async_std::net::TcpListener::from(listener);
    let addr = listener.local_addr().unwrap();
    let sessions: Sessions = Arc::default();
    let seen = sessions.clone();
    async_std::task::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let conn = Connection::new(stream);
            let config = config.clone();
            let sessions = seen.clone();
            async_std::task::spawn(async move {
                let Ok((session, driver)) = session::accept(conn, &config).await else {
                    return;
                };
                async_std::task::spawn(driver);
                let slot = {
                    let mut all = sessions.lock().unwrap();
                    all.push(Seen::default());
                    all.len() - 1
                };
                let record = |stats: SessionStats, end: Option<String>| {
                    let mut all = sessions.lock().unwrap();
                    let seen = &mut all[slot];
                    seen.latest = stats;
                    seen.max_control_frames =
                        seen.max_control_frames.max(stats.control_frames_queued);
                    seen.max_received_bytes =
                        seen.max_received_bytes.max(stats.received_bytes_queued);
                    if end.is_some() {
                        seen.end = end;
                    }
                };
                let (mut reader, mut writer) = session.split();
                loop {
                    // `recv` is cancel-safe: a timeout only gives the loop a chance to record.
                    let next =
                        async_std::future::timeout(Duration::from_millis(10), reader.recv()).await;
                    record(reader.stats(), None);
                    match next {
                        Err(_) => continue,
                        Ok(Ok(Some(any))) => {
                            // Record while a send to a peer that does not read is blocked, too.
                            let send = writer.send(any);
                            futures::pin_mut!(send);
                            let sent = loop {
                                match async_std::future::timeout(
                                    Duration::from_millis(10),
                                    &mut send,
                                )
                                .await
                                {
                                    Ok(sent) => break sent,
                                    Err(_) => record(reader.stats(), None),
                                }
                            };
                            if let Err(e) = sent {
                                record(reader.stats(), Some(e.to_string()));
                                return;
                            }
                        }
                        Ok(Ok(None)) => {
                            record(reader.stats(), Some("closed".into()));
                            return;
                        }
                        Ok(Err(e)) => {
                            record(reader.stats(), Some(e.to_string()));
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, sessions)
}

fn snapshot(sessions: &Sessions) -> Vec<Seen> {
    sessions.lock().unwrap().clone()
}

/// Waits (bounded) until `sessions` has at least `n` entries.
async fn await_sessions(sessions: &Sessions, n: usize) {
    while sessions.lock().unwrap().len() < n {
        async_std::task::sleep(Duration::from_millis(5)).await;
    }
}

/// A well-behaved client: a session, ten echoes in order, a graceful close.
async fn well_behaved_client(addr: SocketAddr) {
    let config = SessionConfig::new().with_heartbeat(None);
    let mut session = tcp::connect_session(addr, &config, crate::support::spawn)
        .await
        .unwrap();
    for i in 0..10 {
        let msg = HelloWorld {
            text: "fine".into(),
            sequence: i,
        };
        session.send_message(&msg).await.unwrap();
        let echo: HelloWorld = session.recv_message().await.unwrap().unwrap();
        assert_eq!(echo, msg);
    }
    session.close_with(ReasonCode::Normal, "bye").await.unwrap();
}

/// The bytes of one frame carrying `msg`.
fn frame<M: Message + Name>(msg: &M) -> Vec<u8> {
    Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
    .encode_length_delimited_to_vec()
}

/// A raw client socket that has sent an anonymous `Hello` (and not read the answer).
async fn raw_client(addr: SocketAddr) -> TcpStream {
    let stream = std::net::TcpStream::connect(addr).unwrap();
    small_buffers(&stream);
    let mut stream = TcpStream::from(stream);
    let hello = Hello {
        versions: vec![1],
        ..Default::default()
    };
    stream.write_all(&frame(&hello)).await.unwrap();
    stream
}

/// What [`write_without_reading`] got through.
struct Flood {
    /// Whole frames written.
    frames: u64,
    /// The socket stopped taking bytes (one write took longer than 500 ms).
    stalled: bool,
    /// The rest of the frame cut by the stall, to be written before anything else.
    tail: Vec<u8>,
}

/// Writes `batch` (frames of `frame_len` bytes each) over and over for about `limit`, never
/// reading.
async fn write_without_reading(
    stream: &mut TcpStream,
    batch: &[u8],
    frame_len: usize,
    limit: Duration,
) -> Flood {
    let until = Instant::now() + limit;
    let (mut written, mut pos, mut stalled) = (0u64, 0usize, false);
    while Instant::now() < until {
        // A single `write` is cancel-safe: on timeout nothing was written.
        match async_std::future::timeout(Duration::from_millis(500), stream.write(&batch[pos..]))
            .await
        {
            Ok(Ok(n)) => {
                written += n as u64;
                pos = (pos + n) % batch.len();
            }
            Ok(Err(e)) => panic!("write failed: {e}"),
            Err(_) => stalled = true,
        }
    }
    let cut = pos % frame_len;
    let tail = if cut == 0 {
        Vec::new()
    } else {
        batch[pos..pos - cut + frame_len].to_vec()
    };
    Flood {
        frames: written / frame_len as u64,
        stalled,
        tail,
    }
}

#[async_std::test]
async fn a_ping_flood_without_reading_is_bounded_and_others_are_served() {
    bounded("ping flood", async {
        let (addr, sessions) = echo_server(SessionConfig::new().with_heartbeat(None)).await;
        let mut flood = raw_client(addr).await;
        await_sessions(&sessions, 1).await;
        // Ids of one length, so that every frame has the same size.
        let batch: Vec<u8> = (1000..2000u64).flat_map(|id| frame(&Ping { id })).collect();
        let frame_len = batch.len() / 1000;
        let flooding = async_std::task::spawn(async move {
            let result =
                write_without_reading(&mut flood, &batch, frame_len, Duration::from_secs(2)).await;
            (flood, result)
        });
        // Served while the flood goes on.
        well_behaved_client(addr).await;
        let (
            flood,
            Flood {
                frames: pings,
                stalled,
                tail,
            },
        ) = flooding.await;

        let seen = snapshot(&sessions)[0].clone();
        // One Pong (the latest) at most, plus possibly our own control frames.
        assert!(seen.max_control_frames <= 4, "{seen:?}");
        assert!(seen.latest.control_bytes_queued_peak <= 256, "{seen:?}");
        // The server stopped reading from a peer that does not read its Pongs...
        assert!(seen.latest.read_pauses >= 1, "{seen:?}");
        assert!(stalled, "the server kept reading {pings} Pings");
        // ...and answered many Pings with one Pong.
        assert!(seen.latest.pongs_coalesced > 0, "{seen:?}");
        assert!(seen.end.is_none(), "{seen:?}");
        assert!(snapshot(&sessions)[1].end.as_deref() == Some("closed"));

        // The flooder starts reading: its session still works. The Welcome, at most one Pong
        // per 16 Pings, then the echo of a request sent now.
        let request = HelloWorld {
            text: "after the flood".into(),
            sequence: 7,
        };
        // The rest of the cut Ping, then the request, written while we read.
        let mut rest = flood.clone();
        let mut bytes = tail;
        bytes.extend(frame(&request));
        let writing = async_std::task::spawn(async move { rest.write_all(&bytes).await });
        let mut conn = Connection::new(flood);
        let _: Welcome = conn.recv_message().await.unwrap().unwrap();
        let mut pongs = 0u64;
        let echo = loop {
            let any = conn.recv().await.unwrap().expect("the echo");
            if any.type_url == Pong::type_url() {
                pongs += 1;
                continue;
            }
            break HelloWorld::decode(any.value.as_slice()).unwrap();
        };
        assert_eq!(echo, request);
        writing.await.unwrap();
        assert!(pongs < pings.max(1), "{pongs} Pongs for {pings} Pings");
    })
    .await;
}

#[async_std::test]
async fn repeated_close_is_a_protocol_violation_and_owes_one_close_ok() {
    bounded("close flood", async {
        let (addr, sessions) = echo_server(SessionConfig::new().with_heartbeat(None)).await;
        let mut attacker = raw_client(addr).await;
        await_sessions(&sessions, 1).await;
        let close = frame(&Close {
            code: ReasonCode::Normal as i32,
            reason: "again".into(),
        });
        let batch: Vec<u8> = close
            .iter()
            .copied()
            .cycle()
            .take(close.len() * 1000)
            .collect();
        // The server ends the session at the second Close: writes stop being taken, or fail.
        let _ =
            async_std::future::timeout(Duration::from_secs(5), attacker.write_all(&batch)).await;
        let mut conn = Connection::new(attacker);
        let _: Welcome = conn.recv_message().await.unwrap().unwrap();
        // Whatever follows is not a stream of CloseOks: at most one before the end.
        let mut close_oks = 0;
        while let Ok(Some(any)) = conn.recv().await {
            close_oks += usize::from(any.type_url.ends_with("CloseOk"));
        }
        assert!(close_oks <= 1, "{close_oks} CloseOks");
        while snapshot(&sessions)[0].end.is_none() {
            async_std::task::sleep(Duration::from_millis(5)).await;
        }
        // Read in one burst, the second Close ends the session as a protocol violation. If a
        // short read hands the server the first Close alone, its close handshake may finish
        // first, and the later Closes are discarded like anything after it (PROTOCOL.md §6):
        // either way the attacker is owed nothing more.
        let seen = snapshot(&sessions)[0].clone();
        let end = seen.end.as_deref().unwrap();
        assert!(
            end.contains("second Close") || end.starts_with("closed"),
            "{seen:?}"
        );
        assert!(seen.max_control_frames <= 4, "{seen:?}");
        well_behaved_client(addr).await;
    })
    .await;
}

#[async_std::test]
async fn a_client_that_sends_requests_and_never_reads_is_stopped() {
    bounded("requests without reading", async {
        const RECEIVE_BUFFER: usize = 64 * 1024;
        let config = SessionConfig::new()
            .with_heartbeat(None)
            .with_queue_len(16)
            .with_receive_buffer_len(RECEIVE_BUFFER);
        let (addr, sessions) = echo_server(config).await;
        let mut attacker = raw_client(addr).await;
        await_sessions(&sessions, 1).await;
        let request = frame(&HelloWorld {
            text: "x".repeat(1000),
            sequence: 1,
        });
        let batch: Vec<u8> = request
            .iter()
            .copied()
            .cycle()
            .take(request.len() * 64)
            .collect();
        let frame_len = request.len();
        let attack = async_std::task::spawn(async move {
            let result =
                write_without_reading(&mut attacker, &batch, frame_len, Duration::from_secs(2))
                    .await;
            (attacker, result)
        });
        well_behaved_client(addr).await;
        let (attacker, flood) = attack.await;
        assert!(
            flood.stalled,
            "the server read {} requests without our reading",
            flood.frames
        );
        let seen = snapshot(&sessions)[0].clone();
        // What the server holds of the attacker's requests: its receive buffer plus one.
        assert!(
            seen.max_received_bytes <= RECEIVE_BUFFER + request.len(),
            "{seen:?}"
        );
        assert!(seen.end.is_none(), "{seen:?}");
        drop(attacker);
    })
    .await;
}

#[async_std::test]
async fn a_peer_that_stalls_mid_handshake_is_refused_and_others_are_served() {
    bounded("stalled handshake", async {
        let config = SessionConfig::new()
            .with_heartbeat(None)
            .with_handshake_timeout(Duration::from_millis(300));
        let (addr, _sessions) = echo_server(config).await;
        // Half a Hello, then nothing.
        let hello = frame(&Hello {
            versions: vec![1],
            ..Default::default()
        });
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled.write_all(&hello[..hello.len() / 2]).await.unwrap();
        // Others are served while it stalls.
        well_behaved_client(addr).await;
        let mut conn = Connection::new(stalled);
        let refuse: Refuse = conn.recv_message().await.unwrap().unwrap();
        assert_eq!(refuse.code(), ReasonCode::HandshakeTimeout);
    })
    .await;
}

#[async_std::test]
async fn an_oversized_frame_after_the_handshake_ends_only_that_session() {
    bounded("oversized frame", async {
        let config = SessionConfig::new()
            .with_heartbeat(None)
            .with_max_frame_len(4096);
        let (addr, sessions) = echo_server(config).await;
        let mut attacker = raw_client(addr).await;
        await_sessions(&sessions, 1).await;
        // A length prefix of 1 GiB, and no body: the server must not wait for or buffer it.
        let mut prefix = Vec::new();
        prost::encoding::encode_varint(1 << 30, &mut prefix);
        attacker.write_all(&prefix).await.unwrap();
        while snapshot(&sessions)[0].end.is_none() {
            async_std::task::sleep(Duration::from_millis(5)).await;
        }
        let end = snapshot(&sessions)[0].end.clone().unwrap();
        assert!(end.contains("protocol violation"), "{end}");
        well_behaved_client(addr).await;
        drop(attacker);
    })
    .await;
}
