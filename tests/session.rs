//! Sessions over real loopback TCP: handshake and negotiation, refusals, authentication,
//! heartbeats and dead-peer detection, graceful close. Peers that misbehave are written by hand
//! with a bare `Connection`, frame by frame.

mod support;

use support::{spawn, Chunks};

use std::future::Future;
use std::time::Duration;

use connect::proto::example::HelloWorld;
use connect::proto::v1::{Close, CloseOk, Credentials, Hello, ReasonCode, Refuse, Welcome};
use connect::session::{
    self, BearerAuthenticator, PlainAuthenticator, SessionConfig, SessionEnd, PROTOCOL_VERSION,
};
use connect::transport::tcp::{self, TcpConnection, TcpListener};
use connect::Error;
use prost::Name;

/// Every test is bounded: a hang fails instead of blocking CI.
async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    async_std::future::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what} took more than 20 s"))
}

fn hello(text: &str, sequence: u64) -> HelloWorld {
    HelloWorld {
        text: text.into(),
        sequence,
    }
}

/// A listener and the outcome of `session::accept` on its first connection.
async fn server(
    config: SessionConfig,
) -> (
    std::net::SocketAddr,
    async_std::task::JoinHandle<connect::Result<session::Session>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = async_std::task::spawn(async move {
        let conn = listener.accept().await?;
        tcp::accept_session(conn, &config, spawn).await
    });
    (addr, task)
}

fn refused_code(result: connect::Result<impl std::fmt::Debug>) -> ReasonCode {
    match result {
        Err(Error::Session(SessionEnd::Refused { code, .. })) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A raw client: sends `first` (if any) and returns the Refuse it gets, checking that the
/// server then closes the connection.
async fn raw_refusal(addr: std::net::SocketAddr, first: Option<prost_types::Any>) -> Refuse {
    let mut conn = tcp::connect(addr).await.unwrap();
    if let Some(first) = first {
        conn.send(first.clone()).await.unwrap();
    }
    let refuse: Refuse = conn.recv_message().await.unwrap().expect("a Refuse");
    assert!(conn.recv().await.unwrap().is_none(), "closed after Refuse");
    refuse
}

#[async_std::test]
async fn handshake_negotiates_and_both_sides_agree() {
    bounded("test", async {
        let server_config = SessionConfig::new()
            .with_property("name", "test-server")
            .with_heartbeat(Some(Duration::from_secs(2)))
            .with_max_frame_len(1 << 20)
            .with_authenticator(PlainAuthenticator::new().with_user("alice", "pw"));
        let (addr, accepted) = server(server_config).await;
        let client_config = SessionConfig::new()
            .with_property("name", "test-client")
            .with_heartbeat(Some(Duration::from_millis(500)))
            .with_max_frame_len(16 << 20)
            .with_credentials(Credentials::plain("alice", "pw"));
        let mut client = tcp::connect_session(addr, &client_config, spawn)
            .await
            .unwrap();
        let mut server = accepted.await.unwrap();
        for info in [client.info(), server.info()] {
            assert_eq!(info.version(), PROTOCOL_VERSION);
            assert_eq!(info.heartbeat(), Some(Duration::from_millis(500)));
            assert_eq!(info.max_frame_len(), 1 << 20);
            assert_eq!(info.identity(), Some("alice"));
        }
        assert_eq!(client.info().session_id(), server.info().session_id());
        assert_eq!(client.info().peer_properties()["name"], "test-server");
        assert_eq!(server.info().peer_properties()["name"], "test-client");

        // The negotiated maximum binds the sender: too large a message is refused locally and
        // the session goes on.
        let big = hello(&"x".repeat(1 << 20), 0);
        assert!(matches!(
            client.send_message(&big).await,
            Err(Error::FrameTooLarge { max, .. }) if max == 1 << 20
        ));
        client.send_message(&hello("ping", 1)).await.unwrap();
        let got: HelloWorld = server.recv_message().await.unwrap().unwrap();
        assert_eq!(got.text, "ping");
        // The close completes once the server's application has seen the end of its reader.
        let (closed, end) =
            futures::join!(client.close_with(ReasonCode::Normal, "bye"), server.recv());
        closed.unwrap();
        assert!(end.unwrap().is_none());
        assert!(matches!(
            server.end(),
            Some(SessionEnd::ClosedByPeer { code: ReasonCode::Normal, reason }) if reason == "bye"
        ));
        assert!(matches!(client.end(), Some(SessionEnd::Closed { .. })));
    })
    .await;
}

#[async_std::test]
async fn wrong_or_missing_credentials_are_refused() {
    bounded("test", async {
        let plain = || PlainAuthenticator::new().with_user("alice", "pw");
        for credentials in [
            Some(Credentials::plain("alice", "wrong")),
            Some(Credentials::plain("mallory", "pw")),
            Some(Credentials::bearer("pw")),
            None,
        ] {
            let (addr, accepted) = server(SessionConfig::new().with_authenticator(plain())).await;
            let mut config = SessionConfig::new();
            if let Some(c) = credentials {
                config = config.with_credentials(c);
            }
            let client = tcp::connect_session(addr, &config, spawn).await;
            assert_eq!(refused_code(client), ReasonCode::AuthenticationFailed);
            assert_eq!(
                refused_code(accepted.await),
                ReasonCode::AuthenticationFailed
            );
        }
    })
    .await;
}

#[async_std::test]
async fn bearer_tokens_authenticate() {
    bounded("test", async {
        let auth = BearerAuthenticator::new().with_token("tok-1", "service-a");
        let (addr, accepted) = server(SessionConfig::new().with_authenticator(auth)).await;
        let config = SessionConfig::new().with_credentials(Credentials::bearer("tok-1"));
        let client = tcp::connect_session(addr, &config, spawn).await.unwrap();
        assert_eq!(client.info().identity(), Some("service-a"));
        assert_eq!(accepted.await.unwrap().info().identity(), Some("service-a"));
    })
    .await;
}

#[async_std::test]
async fn unsupported_version_is_refused_with_our_versions() {
    bounded("test", async {
        let (addr, accepted) = server(SessionConfig::new()).await;
        let hello = Hello {
            versions: vec![2, 3],
            ..Default::default()
        };
        let refuse = raw_refusal(addr, Some(prost_types::Any::from_msg(&hello).unwrap())).await;
        assert_eq!(refuse.code(), ReasonCode::UnsupportedVersion);
        assert_eq!(refuse.versions, vec![1]);
        assert_eq!(refused_code(accepted.await), ReasonCode::UnsupportedVersion);
    })
    .await;
}

#[async_std::test]
async fn a_first_frame_other_than_hello_is_refused() {
    bounded("test", async {
        let (addr, accepted) = server(SessionConfig::new()).await;
        let first = prost_types::Any::from_msg(&hello("hi", 1)).unwrap();
        let refuse = raw_refusal(addr, Some(first)).await;
        assert_eq!(refuse.code(), ReasonCode::ProtocolViolation);
        assert!(
            refuse.reason.contains(&HelloWorld::full_name()),
            "{refuse:?}"
        );
        assert_eq!(refused_code(accepted.await), ReasonCode::ProtocolViolation);
    })
    .await;
}

#[async_std::test]
async fn silence_is_refused_after_the_handshake_timeout() {
    bounded("test", async {
        let config = SessionConfig::new().with_handshake_timeout(Duration::from_millis(100));
        let (addr, accepted) = server(config).await;
        let refuse = raw_refusal(addr, None).await;
        assert_eq!(refuse.code(), ReasonCode::HandshakeTimeout);
        assert_eq!(refused_code(accepted.await), ReasonCode::HandshakeTimeout);
    })
    .await;
}

#[async_std::test]
async fn client_gives_up_on_a_server_that_never_answers() {
    bounded("test", async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _silent = async_std::task::spawn(async move {
            let conn = listener.accept().await.unwrap();
            async_std::task::sleep(Duration::from_secs(10)).await;
            drop(conn);
        });
        let config = SessionConfig::new().with_handshake_timeout(Duration::from_millis(100));
        let result = tcp::connect_session(addr, &config, spawn).await;
        assert!(
            matches!(result, Err(Error::Session(SessionEnd::HandshakeTimeout))),
            "{result:?}"
        );
    })
    .await;
}

#[async_std::test]
async fn idle_sessions_stay_up_for_many_heartbeat_intervals() {
    bounded("test", async {
        // Generous tolerance: the machine is shared and tests run in parallel, so a stall of
        // the whole process must not look like a dead peer (25 intervals = 1 s of silence).
        let heartbeat = Duration::from_millis(40);
        let config = SessionConfig::new()
            .with_heartbeat(Some(heartbeat))
            .with_missed_heartbeats(25);
        let (addr, accepted) = server(config.clone()).await;
        let mut client = tcp::connect_session(addr, &config, spawn).await.unwrap();
        let mut server = accepted.await.unwrap();
        // Twenty intervals of application silence.
        async_std::task::sleep(heartbeat * 20).await;
        assert!(client.end().is_none(), "{:?}", client.end());
        assert!(server.end().is_none(), "{:?}", server.end());
        assert!(client.rtt().is_some() && server.rtt().is_some());
        client.send_message(&hello("still here", 1)).await.unwrap();
        let got: HelloWorld = server.recv_message().await.unwrap().unwrap();
        assert_eq!(got.text, "still here");
        let (closed, end) = futures::join!(
            server.close_with(ReasonCode::GoingAway, "done"),
            client.recv()
        );
        closed.unwrap();
        assert!(end.unwrap().is_none());
    })
    .await;
}

/// Accepts one connection and completes the handshake by hand with the given heartbeat, then
/// holds the socket open without ever reading or writing again.
async fn frozen_server(
    heartbeat_ms: u32,
) -> (
    std::net::SocketAddr,
    async_std::task::JoinHandle<TcpConnection>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = async_std::task::spawn(async move {
        let mut conn = listener.accept().await.unwrap();
        let _: Hello = conn.recv_message().await.unwrap().unwrap();
        let welcome = Welcome {
            version: 1,
            session_id: "frozen".into(),
            heartbeat_ms,
            max_frame_len: 1 << 20,
            ..Default::default()
        };
        conn.send_message(&welcome).await.unwrap();
        conn
    });
    (addr, task)
}

fn assert_unresponsive<T: std::fmt::Debug>(result: connect::Result<T>) {
    assert!(
        matches!(
            result,
            Err(Error::Session(SessionEnd::PeerUnresponsive { .. }))
        ),
        "expected PeerUnresponsive, got {result:?}"
    );
}

#[async_std::test]
async fn a_frozen_server_is_detected_on_both_halves() {
    bounded("test", async {
        let (addr, frozen) = frozen_server(50).await;
        let config = SessionConfig::new()
            .with_heartbeat(Some(Duration::from_millis(50)))
            .with_missed_heartbeats(3);
        let conn = tcp::connect(addr).await.unwrap();
        let (session, driver) = session::connect(conn, &config).await.unwrap();
        let _held_open = frozen.await;
        let silent_since = std::time::Instant::now();
        let driver = async_std::task::spawn(driver);
        let (mut reader, mut writer) = session.split();
        // The reader waits for a message that never comes.
        let read = async_std::task::spawn(async move { reader.recv().await });
        // The writer keeps writing large messages; once the peer's socket buffers are full the
        // writer blocks, and must still be woken with the error.
        let write = async_std::task::spawn(async move {
            let big = hello(&"w".repeat(60_000), 0);
            loop {
                if let Err(e) = writer.send_message(&big).await {
                    break e;
                }
            }
        });
        let end = driver.await;
        // The exact timing is checked deterministically in the state machine's unit tests;
        // here: not before the configured bound, and not wildly after it (the machine is busy).
        match end {
            SessionEnd::PeerUnresponsive { silent_for } => {
                assert!(silent_for >= Duration::from_millis(150), "{silent_for:?}")
            }
            other => panic!("expected PeerUnresponsive, got {other:?}"),
        }
        assert!(silent_since.elapsed() < Duration::from_secs(5));
        assert_unresponsive(read.await);
        assert_unresponsive::<()>(Err(write.await));
    })
    .await;
}

#[async_std::test]
async fn a_frozen_client_is_detected_by_the_server() {
    bounded("test", async {
        let config = SessionConfig::new()
            .with_heartbeat(Some(Duration::from_millis(50)))
            .with_missed_heartbeats(2);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = async_std::task::spawn(async move {
            let conn = listener.accept().await.unwrap();
            let (session, driver) = session::accept(conn, &config).await.unwrap();
            let driver = async_std::task::spawn(driver);
            let (mut reader, mut writer) = session.split();
            let read = reader.recv().await;
            let write = writer.send_message(&hello("anyone?", 1)).await;
            (driver.await, read, write)
        });
        // The client handshakes by hand, then never reads or writes again.
        let mut conn = tcp::connect(addr).await.unwrap();
        let hello = Hello {
            versions: vec![1],
            heartbeat_ms: 50,
            ..Default::default()
        };
        conn.send_message(&hello).await.unwrap();
        let _: Welcome = conn.recv_message().await.unwrap().unwrap();
        let silent_since = std::time::Instant::now();
        let (end, read, write) = server.await;
        assert!(
            matches!(end, SessionEnd::PeerUnresponsive { silent_for }
                if silent_for >= Duration::from_millis(100)),
            "{end:?}"
        );
        assert!(silent_since.elapsed() < Duration::from_secs(5));
        assert_unresponsive(read);
        assert_unresponsive(write);
        drop(conn);
    })
    .await;
}

#[async_std::test]
async fn close_is_not_acknowledged_in_time() {
    bounded("test", async {
        let (addr, _frozen) = frozen_server(0).await;
        let config = SessionConfig::new()
            .with_heartbeat(None)
            .with_close_timeout(Duration::from_millis(100));
        let mut session = tcp::connect_session(addr, &config, spawn).await.unwrap();
        let result = session.close_with(ReasonCode::Normal, "bye").await;
        assert!(
            matches!(result, Err(Error::Session(SessionEnd::CloseTimeout))),
            "{result:?}"
        );
    })
    .await;
}

#[async_std::test]
async fn raw_peer_sees_close_after_every_message() {
    bounded("test", async {
        // The wire-level order of a graceful close, seen by a peer written by hand.
        let (addr, frozen) = frozen_server(0).await;
        let config = SessionConfig::new().with_heartbeat(None);
        let mut session = tcp::connect_session(addr, &config, spawn).await.unwrap();
        let mut raw = frozen.await;
        for i in 0..100 {
            session.feed_message(&hello("m", i)).await.unwrap();
        }
        let closer = async_std::task::spawn(async move {
            let result = session.close_with(ReasonCode::Normal, "bye").await;
            (result, session)
        });
        for i in 0..100 {
            let m: HelloWorld = raw.recv_message().await.unwrap().unwrap();
            assert_eq!(m.sequence, i);
        }
        let close: Close = raw.recv_message().await.unwrap().unwrap();
        assert_eq!(
            (close.code(), close.reason.as_str()),
            (ReasonCode::Normal, "bye")
        );
        raw.send_message(&CloseOk {}).await.unwrap();
        assert!(
            raw.recv().await.unwrap().is_none(),
            "end of stream after Close"
        );
        raw.close().await.unwrap();
        let (result, mut session) = closer.await;
        result.unwrap();
        assert!(session.recv().await.unwrap().is_none());
    })
    .await;
}

#[async_std::test]
async fn graceful_close_with_thousands_of_messages_in_flight_loses_none() {
    const FROM_CLIENT: u64 = 5000;
    bounded("test", async {
        let config = SessionConfig::new().with_queue_len(16);
        let (addr, accepted) = server(config.clone()).await;
        let client = tcp::connect_session(addr, &config, spawn).await.unwrap();
        let server = accepted.await.unwrap();

        // The server reads everything and, at the same time, sends as fast as it can until the
        // client's close stops it; it counts what its writer accepted.
        let (mut server_reader, mut server_writer) = server.split();
        let server_sends = async_std::task::spawn(async move {
            let mut accepted = 0u64;
            while server_writer
                .feed_message(&hello("s", accepted))
                .await
                .is_ok()
            {
                accepted += 1;
            }
            accepted
        });
        let server_reads = async_std::task::spawn(async move {
            let mut next = 0u64;
            while let Some(m) = server_reader.recv_message::<HelloWorld>().await.unwrap() {
                assert_eq!(m.sequence, next, "in order, none lost");
                next += 1;
            }
            next
        });

        let (mut client_reader, mut client_writer) = client.split();
        let client_reads = async_std::task::spawn(async move {
            let mut next = 0u64;
            while let Some(m) = client_reader.recv_message::<HelloWorld>().await.unwrap() {
                assert_eq!(m.sequence, next, "in order, none lost");
                next += 1;
            }
            next
        });
        for i in 0..FROM_CLIENT {
            client_writer.feed_message(&hello("c", i)).await.unwrap();
        }
        // Close right behind the last message, without waiting for anything to be written.
        client_writer
            .close_with(ReasonCode::Normal, "done")
            .await
            .unwrap();

        assert_eq!(server_reads.await, FROM_CLIENT);
        let sent_by_server = server_sends.await;
        assert_eq!(client_reads.await, sent_by_server);
        assert!(sent_by_server > 0);
    })
    .await;
}

#[async_std::test]
async fn dispatcher_serves_a_session() {
    use connect::dispatch::{Context, Dispatcher, Reply};
    bounded("test", async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = async_std::task::spawn(async move {
            let dispatcher = Dispatcher::new().on(|m: HelloWorld, cx: Context| async move {
                // Handlers see who they serve.
                let who = cx.session().and_then(|s| s.identity()).unwrap_or("?");
                Ok::<_, Error>(Reply::message(&HelloWorld {
                    text: format!("{} for {who}", m.text.to_uppercase()),
                    ..m
                }))
            });
            let conn = listener.accept().await?;
            let auth = BearerAuthenticator::new().with_token("t", "bob");
            let config = SessionConfig::new().with_authenticator(auth);
            let session = tcp::accept_session(conn, &config, spawn).await?;
            dispatcher.serve(session).await
        });
        let config = SessionConfig::new().with_credentials(Credentials::bearer("t"));
        let mut client = tcp::connect_session(addr, &config, spawn).await.unwrap();
        for i in 0..50 {
            client.feed_message(&hello("abc", i)).await.unwrap();
        }
        client.flush().await.unwrap();
        for i in 0..50 {
            let m: HelloWorld = client.recv_message().await.unwrap().unwrap();
            assert_eq!((m.text.as_str(), m.sequence), ("ABC for bob", i));
        }
        client.close_with(ReasonCode::Normal, "").await.unwrap();
        server.await.unwrap();
    })
    .await;
}

#[test]
fn sessions_run_on_tokio_too() {
    use tokio_util::compat::TokioAsyncReadCompatExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = SessionConfig::new()
            .with_heartbeat(Some(Duration::from_millis(20)))
            .with_missed_heartbeats(100);
        let server_config = config.clone();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let conn = connect::Connection::new(stream.compat());
            let (mut session, driver) = session::accept(conn, &server_config).await.unwrap();
            let driver = tokio::spawn(driver);
            while let Some(any) = session.recv().await.unwrap() {
                session.send(any).await.unwrap();
            }
            driver.await.unwrap()
        });
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let conn = connect::Connection::new(stream.compat());
        let (mut session, driver) = session::connect(conn, &config).await.unwrap();
        let driver = tokio::spawn(driver);
        // Heartbeats run on tokio's thread: wait for the first round trip (bounded).
        for _ in 0..1000 {
            if session.rtt().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        session.send_message(&hello("tokio", 7)).await.unwrap();
        let back: HelloWorld = session.recv_message().await.unwrap().unwrap();
        assert_eq!(back.sequence, 7);
        assert!(session.rtt().is_some());
        session.close_with(ReasonCode::Normal, "").await.unwrap();
        assert!(driver.await.unwrap().is_graceful());
        assert!(matches!(
            server.await.unwrap(),
            SessionEnd::ClosedByPeer { .. }
        ));
    });
}

/// The byte-level examples of proto/PROTOCOL.md, section 8, are what our encoder writes.
#[test]
fn spec_examples_match_our_encoder() {
    use connect::proto::v1::{Ping, Pong};
    fn hex<M: prost::Message + Name>(msg: &M) -> String {
        let mut buf = bytes::BytesMut::new();
        connect::codec::Codec::new()
            .encode_message(msg, &mut buf)
            .unwrap();
        buf.iter().map(|b| format!("{b:02x}")).collect()
    }
    fn spec(text: &str) -> String {
        // Hex digits from the spec, quoted strings expanded to their bytes.
        let mut out = String::new();
        for (i, part) in text.split('"').enumerate() {
            if i % 2 == 1 {
                out.extend(part.bytes().map(|b| format!("{b:02x}")));
            } else {
                out.extend(part.split_whitespace());
            }
        }
        out
    }
    let hello = Hello {
        versions: vec![1],
        properties: [("product".to_owned(), "py".to_owned())].into(),
        heartbeat_ms: 10_000,
        max_frame_len: 1 << 20,
        credentials: Some(Credentials::plain("alice", "s3cret")),
        capabilities: vec![],
    };
    assert_eq!(
        hex(&hello),
        spec(
            "54 0a 24 74 79 70 65 2e 67 6f 6f 67 6c 65 61 70 69 73 2e 63 6f 6d 2f 63 6f 6e 6e 65 63 74
             2e 76 31 2e 48 65 6c 6c 6f 12 2c 0a 01 01 12 0d 0a 07 70 72 6f 64 75 63 74 12 02 70 79 18 90 4e
             20 80 80 40 2a 11 0a 0f 0a 05 61 6c 69 63 65 12 06 73 33 63 72 65 74"
        )
    );
    let welcome = Welcome {
        version: 1,
        session_id: "5f0c".into(),
        heartbeat_ms: 5000,
        max_frame_len: 1 << 20,
        identity: "alice".into(),
        ..Default::default()
    };
    assert_eq!(
        hex(&welcome),
        spec(
            r#"40 0a 26 "type.googleapis.com/connect.v1.Welcome"
               12 16 08 01 12 04 "5f0c" 20 88 27 28 80 80 40 3a 05 "alice""#
        )
    );
    let refuse = Refuse {
        code: ReasonCode::AuthenticationFailed as i32,
        reason: "authentication failed".into(),
        versions: vec![],
    };
    assert_eq!(
        hex(&refuse),
        spec(
            r#"42 0a 25 "type.googleapis.com/connect.v1.Refuse" 12 19 08 05 12 15 "authentication failed""#
        )
    );
    let refuse = Refuse {
        code: ReasonCode::UnsupportedVersion as i32,
        reason: String::new(),
        versions: vec![1],
    };
    assert_eq!(
        hex(&refuse),
        spec(r#"2e 0a 25 "type.googleapis.com/connect.v1.Refuse" 12 05 08 04 1a 01 01"#)
    );
    assert_eq!(
        hex(&Ping { id: 1 }),
        spec(r#"29 0a 23 "type.googleapis.com/connect.v1.Ping" 12 02 08 01"#)
    );
    assert_eq!(
        hex(&Pong { id: 1 }),
        spec(r#"29 0a 23 "type.googleapis.com/connect.v1.Pong" 12 02 08 01"#)
    );
    assert_eq!(
        hex(&Ping { id: 0 }),
        spec(r#"25 0a 23 "type.googleapis.com/connect.v1.Ping""#)
    );
    let close = Close {
        code: ReasonCode::Normal as i32,
        reason: "bye".into(),
    };
    assert_eq!(
        hex(&close),
        spec(r#"2f 0a 24 "type.googleapis.com/connect.v1.Close" 12 07 08 01 12 03 "bye""#)
    );
    assert_eq!(
        hex(&CloseOk {}),
        spec(r#"28 0a 26 "type.googleapis.com/connect.v1.CloseOk""#)
    );
}

#[async_std::test]
async fn a_welcome_over_our_frame_limit_is_a_protocol_violation() {
    bounded("test", async {
        // frozen_server's Welcome says 1 MiB; we asked for 64 KiB.
        let (addr, _frozen) = frozen_server(0).await;
        let config = SessionConfig::new().with_max_frame_len(64 * 1024);
        let result = tcp::connect_session(addr, &config, spawn).await;
        assert!(
            matches!(
                result,
                Err(Error::Session(SessionEnd::ProtocolViolation { .. }))
            ),
            "{result:?}"
        );
    })
    .await;
}

#[test]
fn sessions_run_on_smol_too() {
    smol::block_on(async {
        let listener = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = SessionConfig::new()
            .with_heartbeat(Some(Duration::from_millis(20)))
            .with_missed_heartbeats(100)
            .with_credentials(Credentials::bearer("t"))
            .with_authenticator(BearerAuthenticator::new().with_token("t", "smol-client"));
        let server_config = config.clone();
        let server = smol::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let conn = connect::Connection::new(stream);
            let (mut session, driver) = session::accept(conn, &server_config).await.unwrap();
            let driver = smol::spawn(driver);
            while let Some(any) = session.recv().await.unwrap() {
                session.send(any).await.unwrap();
            }
            driver.await
        });
        let stream = smol::net::TcpStream::connect(addr).await.unwrap();
        let conn = connect::Connection::new(stream);
        let (mut session, driver) = session::connect(conn, &config).await.unwrap();
        let driver = smol::spawn(driver);
        assert_eq!(session.info().identity(), Some("smol-client"));
        // Heartbeats run on smol: wait for the first round trip (bounded).
        for _ in 0..1000 {
            if session.rtt().is_some() {
                break;
            }
            smol::Timer::after(Duration::from_millis(10)).await;
        }
        session.send_message(&hello("smol", 3)).await.unwrap();
        let back: HelloWorld = session.recv_message().await.unwrap().unwrap();
        assert_eq!(back.sequence, 3);
        assert!(session.rtt().is_some());
        session.close_with(ReasonCode::Normal, "").await.unwrap();
        assert!(driver.await.is_graceful());
        assert!(matches!(server.await, SessionEnd::ClosedByPeer { .. }));
    });
}

#[async_std::test]
async fn a_frame_over_the_negotiated_maximum_ends_the_session() {
    bounded("test", async {
        // The hand-written server agrees on 1 MiB, then sends 2 MiB.
        let (addr, frozen) = frozen_server(0).await;
        let config = SessionConfig::new().with_heartbeat(None);
        let conn = tcp::connect(addr).await.unwrap();
        let (mut session, driver) = session::connect(conn, &config).await.unwrap();
        let driver = async_std::task::spawn(driver);
        let mut raw = frozen.await;
        let big = prost_types::Any {
            type_url: "type.googleapis.com/x.Big".into(),
            value: vec![0; 2 << 20],
        };
        // The peer may see its write fail once we close; that is fine.
        let _ = raw.send(big.clone()).await;
        assert!(matches!(
            driver.await,
            SessionEnd::ProtocolViolation { reason } if reason.contains("exceeds")
        ));
        assert!(matches!(
            session.recv().await,
            Err(Error::Session(SessionEnd::ProtocolViolation { .. }))
        ));
    })
    .await;
}

#[async_std::test]
async fn an_application_message_after_close_is_a_protocol_violation() {
    bounded("test", async {
        let (addr, frozen) = frozen_server(0).await;
        let config = SessionConfig::new().with_heartbeat(None);
        let conn = tcp::connect(addr).await.unwrap();
        let (session, driver) = session::connect(conn, &config).await.unwrap();
        let driver = async_std::task::spawn(driver);
        let mut raw = frozen.await;
        raw.send_message(&Close {
            code: ReasonCode::GoingAway as i32,
            reason: "going".into(),
        })
        .await
        .unwrap();
        raw.send_message(&hello("too late", 1)).await.unwrap();
        let end = driver.await;
        assert!(
            matches!(&end, SessionEnd::ProtocolViolation { reason } if reason.contains("after Close")),
            "{end:?}"
        );
        drop(session);
    })
    .await;
}

#[async_std::test]
async fn a_tiny_receive_buffer_still_delivers_everything_in_order() {
    bounded("test", async {
        // One message at a time waits for the application: the driver must be woken each
        // time the application takes one.
        // Heartbeats flow while the application sleeps; 20 missed (1 s) before a peer counts
        // as dead, so a busy machine does not end the session.
        let config = SessionConfig::new()
            .with_receive_buffer_len(1)
            .with_heartbeat(Some(Duration::from_millis(50)))
            .with_missed_heartbeats(20);
        let (addr, accepted) = server(config.clone()).await;
        let mut client = tcp::connect_session(addr, &config, spawn).await.unwrap();
        let mut server = accepted.await.unwrap();
        let sender = async_std::task::spawn(async move {
            for i in 0..2000 {
                server
                    .feed_message(&hello(&"p".repeat(1000), i))
                    .await
                    .unwrap();
            }
            server.flush().await.unwrap();
            server
        });
        for i in 0..2000 {
            let m: HelloWorld = client.recv_message().await.unwrap().unwrap();
            assert_eq!(m.sequence, i);
            if i % 500 == 0 {
                // A slow application: the driver stops reading, and the silence this causes
                // is not the peer's fault.
                async_std::task::sleep(Duration::from_millis(200)).await;
            }
        }
        let mut server = sender.await;
        let (closed, end) =
            futures::join!(client.close_with(ReasonCode::Normal, ""), server.recv());
        closed.unwrap();
        assert!(end.unwrap().is_none());
    })
    .await;
}

#[async_std::test]
async fn a_reader_that_stops_mid_burst_is_read_for_by_the_driver() {
    bounded("test", async {
        // The reader reads what arrived in a round of its own (up to its poll budget) and
        // then stops, with more in the connection and its waker left behind. Without
        // heartbeats no deadline ever wakes the driver: it must notice by itself and read the
        // rest (within the queue's bounds), as it would answer Pings. Nothing is lost.
        let config = SessionConfig::new()
            .with_heartbeat(None)
            .with_queue_len(2000);
        let (addr, accepted) = server(config.clone()).await;
        let mut client = tcp::connect_session(addr, &config, spawn).await.unwrap();
        let mut server = accepted.await.unwrap();
        for i in 0..1000 {
            client.feed_message(&hello("m", i)).await.unwrap();
        }
        client.flush().await.unwrap();
        let first: HelloWorld = server.recv_message().await.unwrap().unwrap();
        assert_eq!(first.sequence, 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while server.stats().frames_received < 1000 {
            assert!(
                std::time::Instant::now() < deadline,
                "the driver left {} frames unread",
                1000 - server.stats().frames_received
            );
            async_std::task::sleep(Duration::from_millis(10)).await;
        }
        for i in 1..1000 {
            let m: HelloWorld = server.recv_message().await.unwrap().unwrap();
            assert_eq!(m.sequence, i);
        }
        let (closed, end) = futures::join!(client.close(), server.recv());
        closed.unwrap();
        assert!(end.unwrap().is_none());
    })
    .await;
}

#[async_std::test]
async fn a_flush_after_the_peer_closed_gracefully_succeeds_for_what_was_fed_before() {
    bounded("test", async {
        let (addr, server) = server(SessionConfig::new()).await;
        let mut client = tcp::connect_session(addr, &SessionConfig::new(), spawn)
            .await
            .unwrap();
        let mut server = server.await.unwrap();

        // Fed before the peer's Close: the driver writes it on its own.
        server.feed_message(&hello("before", 1)).await.unwrap();
        let got: HelloWorld = client.recv_message().await.unwrap().unwrap();
        assert_eq!(got, hello("before", 1));
        let (closed, end) =
            futures::join!(client.close_with(ReasonCode::Normal, "done"), server.recv());
        closed.unwrap();
        assert!(end.unwrap().is_none(), "graceful end");

        // Nothing fed before the CloseOk is pending, so the flush has nothing to fail on...
        server.flush().await.unwrap();
        // ...while a message fed after it is refused with the end's reason.
        assert!(matches!(
            server.send_message(&hello("after", 2)).await,
            Err(Error::Session(SessionEnd::ClosedByPeer { .. }))
        ));
    })
    .await;
}

/// The bytes of one frame carrying `msg`.
fn frame_bytes<M: prost::Message + Name>(msg: &M) -> Vec<u8> {
    use prost::Message as _;
    prost_types::Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
    .encode_length_delimited_to_vec()
}

/// A server that serves every session with the dispatcher, echoing every message, as the
/// `tcp-echo-server --session` example does.
async fn dispatcher_echo_server() -> std::net::SocketAddr {
    use connect::dispatch::{Context, Dispatcher, Reply};
    use std::sync::Arc;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dispatcher = Arc::new(Dispatcher::new().fallback(
        |any: prost_types::Any, _: Context| async move { Ok::<_, Error>(Reply::any(any)) },
    ));
    async_std::task::spawn(async move {
        let config = SessionConfig::new().with_heartbeat(None);
        loop {
            let Ok(conn) = listener.accept().await else {
                continue;
            };
            let (dispatcher, config) = (dispatcher.clone(), config.clone());
            async_std::task::spawn(async move {
                let session = tcp::accept_session(conn, &config, spawn).await?;
                dispatcher.serve(session).await
            });
        }
    });
    addr
}

/// A raw client: handshake, then `n` requests and a `Close` in one write; returns the echoes'
/// sequence numbers read before the `CloseOk`, checking that the end of stream follows it.
async fn requests_then_close(addr: std::net::SocketAddr, n: u64) -> Vec<u64> {
    let stream = async_std::net::TcpStream::connect(addr).await.unwrap();
    let mut conn = connect::Connection::new(stream.clone());
    let hello = Hello {
        versions: vec![PROTOCOL_VERSION],
        ..Default::default()
    };
    conn.send_message(&hello).await.unwrap();
    let _: Welcome = conn.recv_message().await.unwrap().unwrap();
    let mut burst: Vec<u8> = (0..n).flat_map(|i| frame_bytes(&hello_msg(i))).collect();
    burst.extend(frame_bytes(&Close {
        code: ReasonCode::Normal as i32,
        reason: "done".into(),
    }));
    // One write, while this task reads: the server may answer before it has read it all.
    let write = async_std::task::spawn(async move {
        use async_std::io::WriteExt;
        let mut stream = stream;
        stream.write_all(&burst).await.unwrap();
        stream
    });
    let mut echoed = Vec::new();
    loop {
        let any = conn.recv().await.unwrap().expect("CloseOk before the end");
        if any.type_url == CloseOk::type_url() {
            break;
        }
        let m: HelloWorld = prost::Message::decode(any.value.as_slice()).unwrap();
        echoed.push(m.sequence);
    }
    assert!(
        conn.recv().await.unwrap().is_none(),
        "end of stream after CloseOk"
    );
    drop(write.await);
    echoed
}

fn hello_msg(sequence: u64) -> HelloWorld {
    hello("q", sequence)
}

#[async_std::test]
async fn requests_then_close_in_one_write_get_every_reply_before_close_ok() {
    // Half a million echoes in all: a longer hang guard than the other tests, for a debug build
    // on a loaded machine.
    async_std::future::timeout(Duration::from_secs(180), async {
        let addr = dispatcher_echo_server().await;
        // Every N from 1 to 1000, eight clients at a time.
        let ns: Vec<u64> = (1..=1000).collect();
        for group in ns.chunks(8) {
            let clients: Vec<_> = group
                .iter()
                .map(|&n| {
                    async_std::task::spawn(async move { (n, requests_then_close(addr, n).await) })
                })
                .collect();
            for client in clients {
                let (n, echoed) = client.await;
                assert_eq!(echoed, (0..n).collect::<Vec<_>>(), "N = {n}");
            }
        }
    })
    .await
    .expect("every N within 180 s");
}

#[async_std::test]
async fn a_first_frame_over_the_handshake_limit_is_refused_as_frame_too_large() {
    bounded("test", async {
        let (addr, _accepted) = server(SessionConfig::new()).await;
        let big = prost_types::Any {
            type_url: Hello::type_url(),
            value: vec![0; 70_000],
        };
        let refuse = raw_refusal(addr, Some(big)).await;
        assert_eq!(refuse.code(), ReasonCode::FrameTooLarge, "{refuse:?}");
    })
    .await;
}

#[async_std::test]
async fn max_frame_len_zero_means_no_preference() {
    bounded("test", async {
        // Client without a preference, server with the default: the server's value.
        let (addr, accepted) = server(SessionConfig::new()).await;
        let client_config = SessionConfig::new().with_max_frame_len(0);
        let client = tcp::connect_session(addr, &client_config, spawn)
            .await
            .unwrap();
        let server_session = accepted.await.unwrap();
        assert_eq!(client.info().max_frame_len(), 16 << 20);
        assert_eq!(server_session.info().max_frame_len(), 16 << 20);

        // Neither side has a preference: the floor, 4096.
        let (addr, accepted) = server(SessionConfig::new().with_max_frame_len(0)).await;
        let client = tcp::connect_session(addr, &client_config, spawn)
            .await
            .unwrap();
        let server_session = accepted.await.unwrap();
        assert_eq!(client.info().max_frame_len(), 4096);
        assert_eq!(server_session.info().max_frame_len(), 4096);
    })
    .await;
}

#[async_std::test]
async fn peer_supplied_names_and_lists_are_escaped_and_capped_in_refusals() {
    bounded("test", async {
        let (addr, _accepted) = server(SessionConfig::new()).await;
        // Ten thousand versions, none of them ours.
        let hello = Hello {
            versions: (100..10_100).collect(),
            ..Default::default()
        };
        let any = prost_types::Any {
            type_url: Hello::type_url(),
            value: prost::Message::encode_to_vec(&hello),
        };
        let refuse = raw_refusal(addr, Some(any)).await;
        assert_eq!(refuse.code(), ReasonCode::UnsupportedVersion);
        assert!(refuse.reason.len() < 300, "{} bytes", refuse.reason.len());
        assert!(refuse.reason.contains("10000 in all"), "{}", refuse.reason);

        // A first frame whose type name is long and full of line breaks.
        let (addr, _accepted) = server(SessionConfig::new()).await;
        let any = prost_types::Any {
            type_url: format!("x/{}", "evil\nlog line\r".repeat(2000)),
            value: vec![],
        };
        let refuse = raw_refusal(addr, Some(any)).await;
        assert_eq!(refuse.code(), ReasonCode::ProtocolViolation);
        assert!(refuse.reason.len() < 300, "{} bytes", refuse.reason.len());
        assert!(!refuse.reason.contains('\n') && !refuse.reason.contains('\r'));
        assert!(refuse.reason.ends_with('…'), "{}", refuse.reason);
    })
    .await;
}

/// Messages fed as owned `Any`s, whose large values the session hands to the connection as
/// they are, and typed ones, arrive intact and in order whatever their sizes.
/// The accepting side sends `message(0..60)` (every other one as an `Any` with `as_any`), the
/// connecting side checks each, then both close.
async fn arrive_intact<M>(message: fn(u64) -> M, as_any: bool)
where
    M: prost::Message + Name + Default + PartialEq + 'static,
{
    bounded("test", async {
        let config = SessionConfig::new();
        let (addr, accepted) = server(config.clone()).await;
        let mut client = tcp::connect_session(addr, &config, spawn).await.unwrap();
        let mut server = accepted.await.unwrap();
        let sender = async_std::task::spawn(async move {
            for i in 0..60 {
                if as_any && i % 2 == 0 {
                    server
                        .feed(connect::codec::pack(&message(i)))
                        .await
                        .unwrap();
                } else {
                    server.feed_message(&message(i)).await.unwrap();
                }
            }
            server.flush().await.unwrap();
            server
        });
        for i in 0..60 {
            let m: M = client.recv_message().await.unwrap().unwrap();
            assert!(m == message(i), "message {i} differs");
        }
        let mut server = sender.await;
        let (closed, end) =
            futures::join!(client.close_with(ReasonCode::Normal, ""), server.recv());
        closed.unwrap();
        assert!(end.unwrap().is_none());
    })
    .await;
}

#[async_std::test]
async fn large_owned_values_and_small_messages_arrive_intact() {
    fn message(i: u64) -> HelloWorld {
        let len = [16 << 10, 3, (1 << 20) + 5, 200, (64 << 10) - 1][i as usize % 5];
        hello(
            &char::from(b'a' + (i % 26) as u8).to_string().repeat(len),
            i,
        )
    }
    arrive_intact(message, true).await;
}

#[async_std::test]
async fn large_bytes_fields_sent_by_reference_arrive_intact() {
    // Fields of 16 KiB or more go to the connection from their own memory, smaller ones are
    // copied into the outbox; both, side by side, in one message and across messages.
    fn message(i: u64) -> Chunks {
        let lens = [(16 << 10) + 1, 3, (1 << 20) + 5, 0, (64 << 10) - 1];
        Chunks {
            sequence: i,
            parts: (0..=i % 4)
                .map(|k| {
                    let len = lens[((i + k) % 5) as usize];
                    bytes::Bytes::from(vec![(i * 7 + k) as u8; len])
                })
                .collect(),
            note: String::new(),
        }
    }
    arrive_intact(message, false).await;
}

/// A TCP stream that counts the writes the socket refused without having said, since the
/// refusal before, that it was writable again: retries that could only be refused once more.
struct WatchedWrites {
    io: async_net::TcpStream,
    /// Set when the socket wakes the writer after the last refusal.
    woken_since_refusal: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    counts: std::sync::Arc<WriteCounts>,
}

#[derive(Default)]
struct WriteCounts {
    refused: std::sync::atomic::AtomicUsize,
    blind: std::sync::atomic::AtomicUsize,
}

/// Forwards a wake-up, noting it.
struct NotedWake(
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::task::Waker,
);

impl std::task::Wake for NotedWake {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        self.1.wake_by_ref();
    }
}

impl WatchedWrites {
    fn watch<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        write: impl FnOnce(
            std::pin::Pin<&mut async_net::TcpStream>,
            &mut std::task::Context<'_>,
        ) -> std::task::Poll<T>,
    ) -> std::task::Poll<T> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let woken = std::sync::Arc::new(AtomicBool::new(false));
        let waker = std::task::Waker::from(std::sync::Arc::new(NotedWake(
            woken.clone(),
            cx.waker().clone(),
        )));
        let poll = write(
            std::pin::Pin::new(&mut self.io),
            &mut std::task::Context::from_waker(&waker),
        );
        if poll.is_pending() {
            self.counts.refused.fetch_add(1, Ordering::SeqCst);
            if let Some(before) = self.woken_since_refusal.take() {
                if !before.load(Ordering::SeqCst) {
                    self.counts.blind.fetch_add(1, Ordering::SeqCst);
                }
            }
            self.woken_since_refusal = Some(woken);
        }
        poll
    }
}

impl futures::AsyncRead for WatchedWrites {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl futures::AsyncWrite for WatchedWrites {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.watch(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.watch(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.watch(cx, |io, cx| io.poll_flush(cx))
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_close(cx)
    }
}

#[async_std::test]
async fn a_writer_ahead_of_its_reader_waits_for_the_socket_instead_of_retrying() {
    use std::sync::atomic::Ordering;
    const MESSAGES: u64 = 200_000;
    bounded("test", async {
        let (addr, accepted) = server(SessionConfig::new()).await;
        let counts = std::sync::Arc::new(WriteCounts::default());
        let io = WatchedWrites {
            io: async_net::TcpStream::connect(addr).await.unwrap(),
            woken_since_refusal: None,
            counts: counts.clone(),
        };
        let (mut client, driver) =
            session::connect(connect::Connection::new(io), &SessionConfig::new())
                .await
                .unwrap();
        async_std::task::spawn(driver);
        let mut server = accepted.await.unwrap();
        // The reader falls behind: a pause every few thousand messages, so the socket fills
        // and the writer is refused, again and again, for as long as it streams.
        let reader = async_std::task::spawn(async move {
            for sequence in 0..MESSAGES {
                let got: HelloWorld = server.recv_message().await.unwrap().expect("a message");
                assert_eq!(got.sequence, sequence);
                if sequence % 4_000 == 0 {
                    async_std::task::sleep(Duration::from_millis(2)).await;
                }
            }
            server
        });
        for sequence in 0..MESSAGES {
            client
                .feed_message(&hello("ahead of the reader", sequence))
                .await
                .unwrap();
        }
        client.flush().await.unwrap();
        let _server = reader.await;
        let (refused, blind) = (
            counts.refused.load(Ordering::SeqCst),
            counts.blind.load(Ordering::SeqCst),
        );
        assert!(refused > 0, "the reader never held the writer up");
        assert_eq!(
            blind, 0,
            "of {refused} refused writes, {blind} were tried again before the socket said it was writable"
        );
    })
    .await;
}

#[async_std::test]
async fn what_a_streaming_writer_fed_last_goes_out_without_a_flush() {
    const MESSAGES: u64 = 50_000;
    bounded("test", async {
        let (addr, accepted) = server(SessionConfig::new()).await;
        let mut client = tcp::connect_session(addr, &SessionConfig::new(), spawn)
            .await
            .unwrap();
        let mut server = accepted.await.unwrap();
        // A stream (the writer hands full batches to the connection itself and the driver
        // lingers), whose last messages are fed and never flushed: the driver still sends them.
        for sequence in 0..MESSAGES {
            client
                .feed_message(&hello("fed, never flushed", sequence))
                .await
                .unwrap();
        }
        // Up to a millisecond is promised; the heartbeat (which would also carry them out)
        // comes after ten seconds.
        let received = async_std::future::timeout(Duration::from_secs(3), async {
            for sequence in 0..MESSAGES {
                let got: HelloWorld = server.recv_message().await.unwrap().expect("a message");
                assert_eq!(got.sequence, sequence);
            }
        })
        .await;
        assert!(
            received.is_ok(),
            "the last messages fed stayed in the outbox"
        );
        drop(client);
    })
    .await;
}
