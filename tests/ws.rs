//! The WebSocket transport on loopback: frames, sessions and reliable streams over `ws://`,
//! mutual TLS over `wss://`, and every kind of bad input a client can send, each ending that
//! link with a typed error and a close code while the listener goes on serving.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use async_std::io::{ReadExt, WriteExt};
use async_std::net::TcpStream;
use async_std::task;
use connect::proto::example::HelloWorld;
use connect::reliable::{self, ReliableConfig, ReliableServer};
use connect::session::{self, SessionConfig};
use connect::transport::ws::{self, WsConfig, WsListener};
use connect::{ConnectionConfig, Error, WsError};
use futures::channel::mpsc;
use futures::StreamExt;
use support::certs::{client_config, server_config, Ca, Role};
use support::{numbered, sequence, spawn, within};

/// What became of one link on the server: `Ok` for a clean end, else the error that ended it.
type Outcome = Result<(), Error>;

/// An echo server on `ws://127.0.0.1:<port>/connect`; every link's outcome goes to the channel.
async fn echo_server(config: WsConfig) -> (SocketAddr, mpsc::UnboundedReceiver<Outcome>) {
    let listener = WsListener::bind("127.0.0.1:0", config).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (outcomes, rx) = mpsc::unbounded();
    task::spawn(async move {
        loop {
            let Ok(handshake) = listener.accept().await else {
                continue;
            };
            let outcomes = outcomes.clone();
            task::spawn(async move {
                let outcome = async {
                    let mut conn = handshake.upgrade().await?;
                    while let Some(any) = conn.recv().await? {
                        conn.send(any).await?;
                    }
                    conn.close().await
                }
                .await;
                let _ = outcomes.unbounded_send(outcome);
            });
        }
    });
    (addr, rx)
}

fn hello(sequence: u64, len: usize) -> HelloWorld {
    HelloWorld {
        text: "x".repeat(len),
        sequence,
    }
}

/// A good client still gets its echo: the listener survived whatever came before.
async fn still_serving(addr: SocketAddr) {
    let mut conn = ws::connect(&format!("ws://{addr}/connect")).await.unwrap();
    conn.send_message(&hello(7, 3)).await.unwrap();
    let echoed: HelloWorld = conn.recv_message().await.unwrap().unwrap();
    assert_eq!(echoed.sequence, 7);
    conn.close().await.unwrap();
}

#[async_std::test]
async fn frames_of_every_size_echo_and_the_close_is_clean() {
    within(30, "echo", async {
        let (addr, mut outcomes) = echo_server(WsConfig::new()).await;
        let mut conn = ws::connect(&format!("ws://{addr}/connect")).await.unwrap();
        assert_eq!(conn.peer_addr(), Some(addr));
        // Small frames fed together (several frames per message), then large ones (one per
        // message, some over the 64 KiB batch).
        let lens = [0usize, 1, 100, 1000, 70_000, 5, 300_000, 64 * 1024];
        for (i, &len) in lens.iter().enumerate() {
            conn.feed_message(&hello(i as u64, len)).await.unwrap();
        }
        conn.flush().await.unwrap();
        for (i, &len) in lens.iter().enumerate() {
            let echoed: HelloWorld = conn.recv_message().await.unwrap().unwrap();
            assert_eq!((echoed.sequence, echoed.text.len()), (i as u64, len));
        }
        conn.close().await.unwrap();
        assert!(
            conn.recv().await.unwrap().is_none(),
            "clean end after close"
        );
        outcomes.next().await.unwrap().unwrap();
    })
    .await;
}

#[async_std::test]
async fn a_session_runs_over_websocket() {
    within(30, "session", async {
        let listener = WsListener::bind("127.0.0.1:0", WsConfig::new())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let server = task::spawn(async move {
            let conn = listener.accept().await?.upgrade().await?;
            let config = SessionConfig::new().with_heartbeat(Some(Duration::from_millis(100)));
            let (mut session, driver) = session::accept(conn, &config).await?;
            spawn(connect::transport::driver_task(driver));
            while let Some(any) = session.recv().await? {
                session.send(any).await?;
            }
            Ok::<_, Error>(())
        });
        let conn = ws::connect(&format!("ws://{addr}/connect")).await.unwrap();
        let config = SessionConfig::new().with_heartbeat(Some(Duration::from_millis(100)));
        let (mut session, driver) = session::connect(conn, &config).await.unwrap();
        spawn(connect::transport::driver_task(driver));
        for i in 0..50 {
            session.send_message(&hello(i, 10)).await.unwrap();
            let echoed: HelloWorld = session.recv_message().await.unwrap().unwrap();
            assert_eq!(echoed.sequence, i);
        }
        // Heartbeats flow over the link while it is idle; the session outlives several.
        task::sleep(Duration::from_millis(500)).await;
        session.send_message(&hello(99, 1)).await.unwrap();
        let echoed: HelloWorld = session.recv_message().await.unwrap().unwrap();
        assert_eq!(echoed.sequence, 99);
        session.close().await.unwrap();
        server.await.unwrap();
    })
    .await;
}

#[async_std::test]
async fn a_reliable_stream_runs_over_websocket() {
    const MESSAGES: u64 = 2_000;
    within(60, "reliable", async {
        let listener = WsListener::bind("127.0.0.1:0", WsConfig::new())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let server = ReliableServer::new(SessionConfig::new(), ReliableConfig::new());
        task::spawn(async move {
            loop {
                let Ok(handshake) = listener.accept().await else {
                    continue;
                };
                let server = server.clone();
                task::spawn(async move {
                    let Ok(conn) = handshake.upgrade().await else {
                        return;
                    };
                    let Ok(accepted) = server.accept(conn).await else {
                        return;
                    };
                    match accepted {
                        reliable::Accepted::NewStream { mut stream, driver } => {
                            task::spawn(async move {
                                while let Ok(Some(any)) = stream.recv().await {
                                    if stream.feed(any).await.is_err() {
                                        break;
                                    }
                                }
                            });
                            driver.await;
                        }
                        reliable::Accepted::Resumed { driver } => driver.await,
                        _ => panic!("a reliable client gets a stream"),
                    }
                });
            }
        });
        let url = format!("ws://{addr}/connect");
        let (stream, driver) = reliable::client(
            move || {
                let url = url.clone();
                async move { ws::connect(&url).await }
            },
            SessionConfig::new(),
            ReliableConfig::new(),
        );
        task::spawn(driver);
        let (mut reader, mut writer) = stream.split();
        let reader = task::spawn(async move {
            for expected in 0..MESSAGES {
                let any = reader.recv().await.unwrap().unwrap();
                assert_eq!(sequence(&any), expected);
            }
        });
        for i in 0..MESSAGES {
            writer.feed(numbered(i)).await.unwrap();
        }
        writer.flush().await.unwrap();
        reader.await;
    })
    .await;
}

#[async_std::test]
async fn wss_with_mutual_tls_shows_the_client_certificate() {
    within(30, "wss", async {
        let ca = Ca::new("test CA");
        let server_cert = ca.issue("server", &["localhost"], Role::Server);
        let client_cert = ca.issue("browser-gateway", &["gw.internal"], Role::Client);
        let config = WsConfig::new().with_tls_server(server_config(&server_cert, Some(&ca)));
        let listener = WsListener::bind("127.0.0.1:0", config).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = task::spawn(async move {
            let mut names = Vec::new();
            for _ in 0..2 {
                match listener.accept().await.unwrap().upgrade().await {
                    Ok(mut conn) => {
                        names.push(
                            conn.peer_identity()
                                .and_then(|id| id.common_name().map(String::from)),
                        );
                        while let Some(any) = conn.recv().await.unwrap() {
                            conn.send(any).await.unwrap();
                        }
                    }
                    Err(e) => assert!(matches!(e, Error::Tls(_)), "{e}"),
                }
            }
            names
        });
        let url = format!("wss://localhost:{port}/connect");
        let good =
            WsConfig::new().with_tls_client(client_config(ca.certificates(), Some(&client_cert)));
        let mut conn = ws::connect_with(&url, &good).await.unwrap();
        conn.send_message(&hello(1, 5)).await.unwrap();
        let echoed: HelloWorld = conn.recv_message().await.unwrap().unwrap();
        assert_eq!(echoed.sequence, 1);
        conn.close().await.unwrap();

        // Without a client certificate the server refuses the TLS handshake.
        let anonymous = WsConfig::new().with_tls_client(client_config(ca.certificates(), None));
        match ws::connect_with(&url, &anonymous).await {
            Err(Error::Tls(_) | Error::Io(_)) => {}
            Err(other) => panic!("unexpected error {other}"),
            Ok(mut conn) => assert!(conn.recv().await.is_err(), "TLS 1.3 reports on first read"),
        }
        assert_eq!(server.await, vec![Some("browser-gateway".to_string())]);
    })
    .await;
}

#[async_std::test]
async fn a_client_refused_by_the_server_learns_the_status() {
    within(30, "refusals", async {
        let (addr, mut outcomes) = echo_server(WsConfig::new()).await;
        match ws::connect(&format!("ws://{addr}/elsewhere")).await {
            Err(Error::WebSocket(WsError::UpgradeRefused { status: 404, .. })) => {}
            other => panic!("expected a 404 refusal, got {other:?}"),
        }
        assert!(matches!(
            outcomes.next().await.unwrap(),
            Err(Error::WebSocket(WsError::UpgradeRefused {
                status: 404,
                ..
            }))
        ));
        match ws::connect("http://localhost/connect").await {
            Err(Error::WebSocket(WsError::Handshake(_))) => {}
            other => panic!("expected an invalid URL, got {other:?}"),
        }
        still_serving(addr).await;
    })
    .await;
}

// ---- Bad input from a hand-written client ----

/// A client frame (masked with the all-zero key, which leaves the payload as it is).
fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![first_byte];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

const BINARY: u8 = 0x82;
const TEXT: u8 = 0x81;

/// Upgrades by hand; returns the socket and the status line the server answered.
async fn raw_upgrade(addr: SocketAddr, path: &str, protocol: Option<&str>) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let protocol = protocol.map_or(String::new(), |p| {
        format!("Sec-WebSocket-Protocol: {p}\r\n")
    });
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.lines().next().unwrap_or_default().to_string();
    (stream, status)
}

/// Reads one server frame: (first byte, payload).
async fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).await.unwrap();
    assert_eq!(header[1] & 0x80, 0, "server frames are not masked");
    let len = match header[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext).await.unwrap();
            u64::from(u16::from_be_bytes(ext))
        }
        127 => {
            let mut ext = [0u8; 8];
            stream.read_exact(&mut ext).await.unwrap();
            u64::from_be_bytes(ext)
        }
        len => u64::from(len),
    };
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload).await.unwrap();
    (header[0], payload)
}

/// Reads frames until a close frame; returns its code.
async fn close_code(stream: &mut TcpStream) -> u16 {
    loop {
        let (first, payload) = read_frame(stream).await;
        if first & 0x0f == 0x8 {
            assert!(payload.len() >= 2, "a close frame with a code");
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

fn delimited(message: &HelloWorld) -> Vec<u8> {
    use connect::prost::Message;
    connect::prost_types::Any::from_msg(message)
        .unwrap()
        .encode_length_delimited_to_vec()
}

#[async_std::test]
async fn several_frames_in_one_message_and_fragmented_messages_are_accepted() {
    within(30, "framing", async {
        let (addr, _outcomes) = echo_server(WsConfig::new()).await;
        let (mut stream, status) = raw_upgrade(addr, "/connect", Some("connect.v1")).await;
        assert!(status.starts_with("HTTP/1.1 101"), "{status}");
        // Two whole frames in one message.
        let mut two = delimited(&hello(1, 3));
        two.extend(delimited(&hello(2, 4)));
        stream.write_all(&client_frame(BINARY, &two)).await.unwrap();
        // One frame split over two WebSocket fragments of one message (FIN clear, then a
        // continuation with FIN set), with a ping between them.
        let three = delimited(&hello(3, 50));
        let mut bytes = client_frame(0x02, &three[..10]);
        bytes.extend(client_frame(0x89, b"are you there"));
        bytes.extend(client_frame(0x80, &three[10..]));
        stream.write_all(&bytes).await.unwrap();
        let mut echoed = Vec::new();
        let mut pong = None;
        while echoed.len() < 3 {
            let (first, payload) = read_frame(&mut stream).await;
            match first {
                0x82 => {
                    let mut at = &payload[..];
                    while !at.is_empty() {
                        use connect::prost::Message;
                        let any =
                            connect::prost_types::Any::decode_length_delimited(&mut at).unwrap();
                        echoed.push(any.to_msg::<HelloWorld>().unwrap().sequence);
                    }
                }
                0x8a => pong = Some(payload),
                other => panic!("unexpected frame {other:#x}"),
            }
        }
        assert_eq!(echoed, [1, 2, 3]);
        assert_eq!(pong.as_deref(), Some(&b"are you there"[..]));
    })
    .await;
}

#[async_std::test]
async fn bad_messages_end_their_link_only_with_a_close_code_and_a_typed_error() {
    within(30, "bad messages", async {
        let config = WsConfig::new()
            .with_connection_config(ConnectionConfig::default().with_max_frame_len(1024));
        let (addr, mut outcomes) = echo_server(config).await;
        let mut cut = delimited(&hello(1, 100));
        cut.truncate(50);
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("text message", client_frame(TEXT, b"hello"), 1003),
            (
                "oversized message",
                client_frame(BINARY, &vec![0u8; 2000]),
                1009,
            ),
            (
                "frame over the maximum",
                client_frame(BINARY, &delimited(&hello(1, 1100))),
                1009,
            ),
            ("message cut mid-frame", client_frame(BINARY, &cut), 1007),
            ("empty message", client_frame(BINARY, &[]), 1007),
            ("reserved opcode", vec![0x83, 0x80, 0, 0, 0, 0], 1002),
            ("unmasked frame", vec![0x82, 0x01, 0x00], 1002),
        ];
        for (what, bytes, code) in cases {
            let (mut stream, status) = raw_upgrade(addr, "/connect", Some("connect.v1")).await;
            assert!(status.starts_with("HTTP/1.1 101"), "{what}: {status}");
            stream.write_all(&bytes).await.unwrap();
            assert_eq!(close_code(&mut stream).await, code, "{what}");
            let outcome = outcomes.next().await.unwrap();
            let Err(Error::WebSocket(error)) = &outcome else {
                panic!("{what}: expected a WebSocket error, got {outcome:?}");
            };
            match (code, error) {
                (1003, WsError::TextMessage)
                | (1009, WsError::MessageTooLarge { .. } | WsError::InvalidMessage(_))
                | (1007, WsError::InvalidMessage(_))
                | (1002, WsError::Protocol(_)) => {}
                _ => panic!("{what}: close code {code} with error {error:?}"),
            }
            assert!(outcome.unwrap_err().is_protocol_violation(), "{what}");
        }
        still_serving(addr).await;
    })
    .await;
}

/// The TCP connection ends inside a WebSocket frame (and so inside a message): an error for
/// that link, not a clean end of stream, and never a part of the message handed on.
#[async_std::test]
async fn a_connection_cut_inside_a_websocket_frame_is_an_error_for_that_link() {
    within(30, "cut inside a frame", async {
        let (addr, mut outcomes) = echo_server(WsConfig::new()).await;
        let whole = client_frame(BINARY, &delimited(&hello(1, 100)));
        for cut in [1, 2, 6, 20, whole.len() - 1] {
            let (mut stream, status) = raw_upgrade(addr, "/connect", Some("connect.v1")).await;
            assert!(status.starts_with("HTTP/1.1 101"), "{status}");
            stream.write_all(&whole[..cut]).await.unwrap();
            stream.shutdown(std::net::Shutdown::Write).unwrap();
            let outcome = outcomes.next().await.unwrap();
            assert!(
                matches!(
                    outcome,
                    Err(Error::Io(_) | Error::WebSocket(WsError::Protocol(_)))
                ),
                "cut after {cut} bytes: {outcome:?}"
            );
            // Nothing was echoed: the server read no message.
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
            assert!(
                rest.first() != Some(&BINARY),
                "cut after {cut} bytes: echoed"
            );
        }
        still_serving(addr).await;
    })
    .await;
}

#[async_std::test]
async fn requests_that_do_not_upgrade_get_a_typed_answer() {
    within(30, "no upgrade", async {
        let config = WsConfig::new().with_handshake_timeout(Duration::from_millis(300));
        let (addr, mut outcomes) = echo_server(config).await;

        // A plain HTTP request: 426.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /connect HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 426"), "{answer}");
        assert!(matches!(
            outcomes.next().await.unwrap(),
            Err(Error::WebSocket(WsError::NotUpgrade { .. }))
        ));

        // Wrong path: 404; no subprotocol: 400.
        let (_, status) = raw_upgrade(addr, "/other", Some("connect.v1")).await;
        assert!(status.starts_with("HTTP/1.1 404"), "{status}");
        let (_, status) = raw_upgrade(addr, "/connect", None).await;
        assert!(status.starts_with("HTTP/1.1 400"), "{status}");
        for status in [404, 400] {
            match outcomes.next().await.unwrap() {
                Err(Error::WebSocket(WsError::UpgradeRefused { status: s, .. })) => {
                    assert_eq!(s, status)
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        }

        // Garbage instead of HTTP (a TLS ClientHello on a plain port).
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")
            .await
            .unwrap();
        assert!(matches!(
            outcomes.next().await.unwrap(),
            Err(Error::WebSocket(WsError::Handshake(_)))
        ));

        // A request head over the limit.
        let mut stream2 = TcpStream::connect(addr).await.unwrap();
        let long = format!(
            "GET /connect HTTP/1.1\r\nX: {}\r\n",
            "a".repeat(ws::MAX_REQUEST_HEAD)
        );
        let _ = stream2.write_all(long.as_bytes()).await;
        assert!(matches!(
            outcomes.next().await.unwrap(),
            Err(Error::WebSocket(WsError::Handshake(_)))
        ));

        // A client that never sends anything, and one that stalls mid-request: timeouts.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled
            .write_all(b"GET /connect HTTP/1.1\r\nUpgr")
            .await
            .unwrap();
        for _ in 0..2 {
            assert!(matches!(
                outcomes.next().await.unwrap(),
                Err(Error::WebSocket(WsError::HandshakeTimeout(_)))
            ));
        }
        drop((stream, stream2));
        still_serving(addr).await;
    })
    .await;
}

/// The byte example of `proto/PROTOCOL.md` ("Transport: WebSocket"), checked both ways: the
/// documented client message is what a client builds, and the server echoes the documented
/// unmasked message.
#[async_std::test]
async fn the_documented_bytes_are_what_goes_over_the_wire() {
    within(30, "byte example", async {
        let spec = std::fs::read_to_string(support::repo_root().join("proto/PROTOCOL.md")).unwrap();
        let section = &spec[spec.find("## Transport: WebSocket").unwrap()..];
        let block = &section[section.find("```\n82 bc").unwrap() + 4..];
        let block = &block[..block.find("```").unwrap()];
        let documented: Vec<u8> = block
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        let golden = delimited(&HelloWorld {
            text: "hi".into(),
            sequence: 1,
        });
        assert_eq!(golden.len(), 60);
        assert_eq!(documented, client_frame(BINARY, &golden));

        let (addr, _outcomes) = echo_server(WsConfig::new()).await;
        let (mut stream, _) = raw_upgrade(addr, "/connect", Some("connect.v1")).await;
        stream.write_all(&documented).await.unwrap();
        let mut echoed = vec![0u8; 62];
        stream.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed[..2], [0x82, 0x3c]);
        assert_eq!(echoed[2..], golden[..]);

        stream.write_all(&client_frame(TEXT, b"hi")).await.unwrap();
        let (first, payload) = read_frame(&mut stream).await;
        assert_eq!((first, &payload[..2]), (0x88, &[0x03, 0xeb][..]));
    })
    .await;
}

/// What a sender puts in each message: whole frames only, several when fed together (at most
/// 64 KiB of them), a frame larger than that alone.
#[async_std::test]
async fn every_message_sent_holds_whole_frames() {
    within(30, "message boundaries", async {
        let listener = WsListener::bind("127.0.0.1:0", WsConfig::new())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let sizes: Vec<usize> = (0..2000)
            .map(|i| if i % 500 == 499 { 100_000 } else { i % 300 })
            .collect();
        let server_sizes = sizes.clone();
        task::spawn(async move {
            let mut conn = listener.accept().await?.upgrade().await?;
            for (i, &len) in server_sizes.iter().enumerate() {
                conn.feed_message(&hello(i as u64, len)).await?;
            }
            conn.flush().await?;
            // Wait for the client to finish reading before closing.
            conn.recv().await?;
            Ok::<_, Error>(())
        });
        let (mut stream, _) = raw_upgrade(addr, "/connect", Some("connect.v1")).await;
        let (mut next, mut messages, mut batched) = (0usize, 0, 0);
        while next < sizes.len() {
            let (first, payload) = read_frame(&mut stream).await;
            assert_eq!(first, 0x82, "a final binary frame");
            let mut at = &payload[..];
            let mut frames = 0;
            while !at.is_empty() {
                use connect::prost::Message;
                let any = connect::prost_types::Any::decode_length_delimited(&mut at)
                    .expect("whole frames only");
                let hello: HelloWorld = any.to_msg().unwrap();
                assert_eq!(
                    (hello.sequence as usize, hello.text.len()),
                    (next, sizes[next])
                );
                next += 1;
                frames += 1;
            }
            assert!(
                frames == 1 || payload.len() <= 64 * 1024,
                "a batch of {frames} frames in {} bytes",
                payload.len()
            );
            messages += 1;
            if frames > 1 {
                batched += 1;
            }
        }
        assert!(
            batched > 0 && messages < sizes.len(),
            "{messages} messages, {batched} batched"
        );
        stream
            .write_all(&client_frame(BINARY, &delimited(&hello(0, 0))))
            .await
            .unwrap();
    })
    .await;
}
