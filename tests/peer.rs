//! A `Peer` shares one link among many tasks: over TCP connections, sessions and reliable
//! streams, messages from every sender arrive (each sender's in order), handlers' replies come
//! back, and the link ends the way its layer ends: gracefully with nothing queued lost, or with a
//! typed error for that link only.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use connect::dispatch::{Context, Dispatcher, Reply};
use connect::peer::{Peer, PeerConfig, TrySendError};
use connect::proto::example::HelloWorld;
use connect::reliable::{ReliableConfig, ReliableServer};
use connect::session::SessionConfig;
use connect::transport::tcp::{self, TcpListener};
use connect::Error;
use futures::AsyncWriteExt;
use support::{spawn, within};

const TASKS: u64 = 8;
const PER_TASK: u64 = 500;

/// Records every HelloWorld as (text, sequence), in arrival order.
type Seen = Arc<Mutex<Vec<(String, u64)>>>;

fn recorder() -> (Dispatcher, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let dispatcher = Dispatcher::new().on(move |hello: HelloWorld, _: Context| {
        log.lock().unwrap().push((hello.text, hello.sequence));
        async { Ok::<_, Error>(Reply::none()) }
    });
    (dispatcher, seen)
}

/// TASKS tasks each send PER_TASK messages on clones of `peer`, then the peer is closed.
async fn send_from_many_tasks(peer: Peer) {
    let senders: Vec<_> = (0..TASKS)
        .map(|task| {
            let peer = peer.clone();
            async_std::task::spawn(async move {
                for sequence in 0..PER_TASK {
                    let hello = HelloWorld {
                        text: format!("task {task}"),
                        sequence,
                    };
                    if let Err(e) = peer.send_message(&hello).await {
                        panic!("send: {e}; link: {:?}", peer.end());
                    }
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await;
    }
    within(20, "close", peer.close()).await.unwrap();
}

/// Every message arrived, and each task's messages in the order it sent them.
fn assert_all_in_order(seen: &[(String, u64)]) {
    assert_eq!(seen.len() as u64, TASKS * PER_TASK);
    let mut next: HashMap<&str, u64> = HashMap::new();
    for (text, sequence) in seen {
        let expected = next.entry(text).or_default();
        assert_eq!(sequence, expected, "{text}: out of order");
        *expected += 1;
    }
}

#[async_std::test]
async fn many_tasks_share_a_connection_and_a_close_loses_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (dispatcher, seen) = recorder();
    let server = async_std::task::spawn(async move {
        let (peer, driver) = Peer::new(listener.accept().await?, dispatcher, &PeerConfig::new());
        driver.await;
        peer.closed().await
    });
    let conn = tcp::connect(addr).await.unwrap();
    let (peer, driver) = Peer::new(conn, Dispatcher::new(), &PeerConfig::new());
    async_std::task::spawn(driver);
    send_from_many_tasks(peer).await;
    within(20, "server end", server).await.unwrap();
    assert_all_in_order(&seen.lock().unwrap());
}

#[async_std::test]
async fn many_tasks_share_a_session_and_a_close_loses_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (dispatcher, seen) = recorder();
    let server = async_std::task::spawn(async move {
        let session =
            tcp::accept_session(listener.accept().await?, &SessionConfig::new(), spawn).await?;
        let (peer, driver) = Peer::new(session, dispatcher, &PeerConfig::new());
        driver.await;
        peer.closed()
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))
    });
    let session = tcp::connect_session(addr, &SessionConfig::new(), spawn)
        .await
        .unwrap();
    let (peer, driver) = Peer::new(session, Dispatcher::new(), &PeerConfig::new());
    async_std::task::spawn(driver);
    send_from_many_tasks(peer).await;
    within(20, "server end", server).await.unwrap();
    assert_all_in_order(&seen.lock().unwrap());
}

#[async_std::test]
async fn many_tasks_share_a_reliable_stream() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (dispatcher, seen) = recorder();
    let server = async_std::task::spawn(async move {
        let reliable = ReliableServer::new(SessionConfig::new(), ReliableConfig::new());
        let conn = listener.accept().await.unwrap();
        let connect::reliable::Accepted::NewStream { stream, driver } =
            reliable.accept(conn).await.unwrap()
        else {
            panic!("a new stream");
        };
        spawn(Box::pin(driver));
        let (peer, driver) = Peer::new(stream, dispatcher, &PeerConfig::new());
        driver.await;
        peer.closed().await
    });
    let stream = tcp::connect_reliable(addr, SessionConfig::new(), ReliableConfig::new(), spawn);
    let (peer, driver) = Peer::new(stream, Dispatcher::new(), &PeerConfig::new());
    async_std::task::spawn(driver);
    send_from_many_tasks(peer).await;
    within(30, "server end", server).await.unwrap();
    assert_all_in_order(&seen.lock().unwrap());
}

#[async_std::test]
async fn replies_come_back_and_a_peer_closing_first_still_gets_what_was_queued() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The server doubles each sequence number and closes after the tenth message.
    let server = async_std::task::spawn(async move {
        let conn = listener.accept().await.unwrap();
        let double = Dispatcher::new().on(|hello: HelloWorld, _: Context| async move {
            Ok::<_, Error>(Reply::message(&HelloWorld {
                sequence: hello.sequence * 2,
                ..hello
            }))
        });
        let (peer, driver) = Peer::new(conn, double, &PeerConfig::new());
        async_std::task::spawn(driver);
        peer.closed().await
    });
    let (dispatcher, seen) = recorder();
    let (peer, driver) = Peer::new(
        tcp::connect(addr).await.unwrap(),
        dispatcher,
        &PeerConfig::new(),
    );
    async_std::task::spawn(driver);
    for sequence in 0..10 {
        peer.send_message(&HelloWorld {
            text: "x".into(),
            sequence,
        })
        .await
        .unwrap();
    }
    within(20, "close", peer.close()).await.unwrap();
    within(20, "server end", server).await.unwrap();
    let doubled: Vec<u64> = seen.lock().unwrap().iter().map(|(_, s)| *s).collect();
    assert_eq!(doubled, (0..10).map(|s| s * 2).collect::<Vec<_>>());
    assert!(peer.is_closed());
    assert!(matches!(
        peer.send_message(&HelloWorld::default()).await,
        Err(Error::Closed)
    ));
}

#[async_std::test]
async fn garbage_ends_that_link_only_with_a_typed_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (dispatcher, seen) = recorder();
    let dispatcher = Arc::new(dispatcher);
    let server = async_std::task::spawn(async move {
        let mut ends = Vec::new();
        for _ in 0..2 {
            let (peer, driver) = Peer::new(
                listener.accept().await.unwrap(),
                dispatcher.clone(),
                &PeerConfig::new(),
            );
            async_std::task::spawn(driver);
            ends.push(peer);
        }
        let mut results = Vec::new();
        for peer in ends {
            results.push(peer.closed().await);
        }
        results
    });
    // First a client sending a length prefix of 2^60 bytes...
    let mut raw = async_std::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10])
        .await
        .unwrap();
    // ... then a well-behaved one, served all the same.
    let (peer, driver) = Peer::new(
        tcp::connect(addr).await.unwrap(),
        Dispatcher::new(),
        &PeerConfig::new(),
    );
    async_std::task::spawn(driver);
    peer.send_message(&HelloWorld {
        text: "fine".into(),
        sequence: 1,
    })
    .await
    .unwrap();
    within(20, "close", peer.close()).await.unwrap();
    let results = within(20, "server", server).await;
    let error = results[0].as_ref().expect_err("garbage ends the link");
    assert!(matches!(**error, Error::FrameTooLarge { .. }), "{error}");
    assert!(results[1].is_ok(), "{:?}", results[1]);
    assert_eq!(seen.lock().unwrap().as_slice(), &[("fine".to_string(), 1)]);
}

#[async_std::test]
async fn an_unknown_type_ends_the_link_and_comes_back_whole() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = async_std::task::spawn(async move {
        let (peer, driver) = Peer::new(
            listener.accept().await.unwrap(),
            Dispatcher::new(),
            &PeerConfig::new(),
        );
        async_std::task::spawn(driver);
        peer.closed().await
    });
    let (peer, driver) = Peer::new(
        tcp::connect(addr).await.unwrap(),
        Dispatcher::new(),
        &PeerConfig::new(),
    );
    async_std::task::spawn(driver);
    peer.send_message(&HelloWorld::default()).await.unwrap();
    let error = within(20, "server", server).await.expect_err("no handler");
    assert!(
        matches!(&*error, Error::UnknownType(any) if any.type_url.ends_with("HelloWorld")),
        "{error}"
    );
    // The client's side ends too (the server closed its connection).
    within(20, "client end", peer.closed()).await.ok();
}

#[async_std::test]
async fn the_queue_is_bounded_and_try_send_hands_the_message_back() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conn = tcp::connect(addr).await.unwrap();
    let _server_side = listener.accept().await.unwrap();
    // The driver is not polled yet: nothing leaves the queue.
    let (peer, driver) = Peer::new(
        conn,
        Dispatcher::new(),
        &PeerConfig::new().with_queue_len(3),
    );
    for sequence in 0..3 {
        peer.try_send(support::numbered(sequence)).unwrap();
    }
    assert_eq!(peer.queued(), 3);
    match peer.try_send(support::numbered(3)) {
        Err(TrySendError::Full(any)) => assert_eq!(support::sequence(&any), 3),
        other => panic!("expected Full, got {other:?}"),
    }
    drop(driver);
    // Without its driver the link is over: sends are refused, the message handed back.
    assert!(matches!(
        peer.try_send(support::numbered(4)),
        Err(TrySendError::Closed(_))
    ));
    assert!(within(5, "closed", peer.closed()).await.is_err());
}
