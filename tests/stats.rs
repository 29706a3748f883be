//! The snapshots of `connect::metrics` (no feature needed): each handle counts what it moved,
//! and both ends of a link agree.

mod support;

use std::time::{Duration, Instant};

use connect::dispatch::{Context, Dispatcher, Reply};
use connect::endpoint::{self, Endpoint, EndpointConfig};
use connect::metrics::HandshakeFailure;
use connect::proto::example::HelloWorld;
use connect::proto::v1::Credentials;
use connect::session::{self, PlainAuthenticator, SessionConfig};
use connect::transport::tcp::{self, TcpListener};
use connect::Connection;
use futures::io::Cursor;

fn hello(sequence: u64) -> HelloWorld {
    HelloWorld {
        text: "x".repeat(sequence as usize),
        sequence,
    }
}

/// Waits (bounded) until `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not after 20 s");
        async_std::task::sleep(Duration::from_millis(5)).await;
    }
}

#[async_std::test]
async fn a_connection_counts_frames_and_bytes_each_way() {
    let mut conn = Connection::new(Cursor::new(Vec::new()));
    for i in 0..3 {
        conn.feed_message(&hello(i)).await.unwrap();
    }
    conn.flush().await.unwrap();
    let sent = conn.stats();
    let (reader, writer) = conn.split();
    assert_eq!(writer.stats(), sent);
    let wire = reader.reunite(writer).unwrap().into_inner().into_inner();
    assert_eq!((sent.frames_sent, sent.bytes_sent), (3, wire.len() as u64));
    assert_eq!((sent.frames_received, sent.bytes_received), (0, 0));

    let mut conn = Connection::new(Cursor::new(wire.clone()));
    while conn.recv().await.unwrap().is_some() {}
    let received = conn.stats();
    assert_eq!(
        (received.frames_received, received.bytes_received),
        (3, wire.len() as u64)
    );
    assert_eq!(received.frames_sent, 0);
}

#[async_std::test]
async fn both_ends_of_a_session_agree_on_what_moved_and_heartbeats_measure_the_rtt() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = async_std::task::spawn(async move {
        let conn = listener.accept().await.unwrap();
        let config = SessionConfig::new().with_heartbeat(Some(Duration::from_millis(20)));
        let (mut session, driver) = session::accept(conn, &config).await.unwrap();
        let driver = async_std::task::spawn(driver);
        while let Some(any) = session.recv().await.unwrap() {
            session.send(any).await.unwrap();
        }
        driver.await;
        session.stats()
    });
    let config = SessionConfig::new().with_heartbeat(Some(Duration::from_millis(20)));
    let mut client = tcp::connect_session(addr, &config, support::spawn)
        .await
        .unwrap();
    for i in 0..10 {
        client.send_message(&hello(i)).await.unwrap();
        let echoed: HelloWorld = client.recv_message().await.unwrap().unwrap();
        assert_eq!(echoed, hello(i));
    }
    let stats = client.stats();
    // Hello and the 10 messages at least; heartbeats may add Pings and Pongs.
    assert!(stats.frames_sent >= 11, "{stats:?}");
    assert!(stats.frames_received >= 11, "{stats:?}");
    eventually("a heartbeat's round trip", || client.stats().rtt.is_some()).await;
    assert_eq!(client.stats().rtt, client.rtt());
    client.close().await.unwrap();
    let client = client.stats();
    let server = server.await;
    assert_eq!(
        (server.frames_received, server.bytes_received),
        (client.frames_sent, client.bytes_sent),
        "server {server:?}, client {client:?}"
    );
    assert_eq!(
        (server.frames_sent, server.bytes_sent),
        (client.frames_received, client.bytes_received),
        "server {server:?}, client {client:?}"
    );
}

#[async_std::test]
async fn an_endpoint_counts_links_and_handshake_failures_by_reason() {
    let echo = Dispatcher::new()
        .fallback(|any, _: Context| async move { Ok::<_, connect::Error>(Reply::any(any)) });
    let config = EndpointConfig::new().with_session(
        SessionConfig::new()
            .with_authenticator(PlainAuthenticator::new().with_user("alice", "s3cret")),
    );
    let server = Endpoint::new(config, echo, support::spawn);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    server.accept(endpoint::tcp_incoming(listener));

    // A wrong password, twice.
    let wrong = SessionConfig::new().with_credentials(Credentials::plain("alice", "nope"));
    for _ in 0..2 {
        assert!(tcp::connect_session(addr, &wrong, support::spawn)
            .await
            .is_err());
    }
    // A peer whose first frame is not a Hello.
    let mut rude = tcp::connect(addr).await.unwrap();
    rude.send_message(&hello(1)).await.unwrap();
    let _ = rude.recv().await; // the Refuse, or the end
    drop(rude);
    // A good session, closed.
    let good = SessionConfig::new().with_credentials(Credentials::plain("alice", "s3cret"));
    let mut session = tcp::connect_session(addr, &good, support::spawn)
        .await
        .unwrap();
    session.send_message(&hello(2)).await.unwrap();
    let _: Option<HelloWorld> = session.recv_message().await.unwrap();
    session.close().await.unwrap();

    eventually("the link's leave and every failure counted", || {
        let stats = server.stats();
        stats.left == 1 && stats.handshake_failures.total() == 3
    })
    .await;
    let stats = server.stats();
    let failures = stats.handshake_failures;
    assert_eq!(
        failures.get(HandshakeFailure::SessionAuthentication),
        2,
        "{failures}"
    );
    assert_eq!(
        failures.get(HandshakeFailure::SessionProtocol),
        1,
        "{failures}"
    );
    assert_eq!(
        (stats.links, stats.joined, stats.left, stats.left_with_error),
        (0, 1, 1, 0),
        "{stats:?}"
    );
    assert_eq!((stats.accept_errors, stats.connect_failures), (0, 0));
    server.close().await;
}
