//! The TCP transport and dispatcher on loopback: pipelining, large messages, many clients, and
//! peers that send garbage — which must lose only their own connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_std::future::timeout;
use async_std::io::{ReadExt, WriteExt};
use async_std::net::TcpStream;
use async_std::task;
use connect::dispatch::{Context, Dispatcher, Reply};
use connect::proto::example::HelloWorld;
use connect::transport::tcp::{self, TcpListener};
use connect::{ConnectionConfig, ConnectionInfo, Error};
use futures::channel::mpsc;
use futures::StreamExt;
use prost_types::Any;

const LIMIT: Duration = Duration::from_secs(30);

/// How each served connection ended.
type Outcome = (ConnectionInfo, Result<(), Error>);

/// An echo server like the `tcp-echo-server` example, reporting how every connection ended.
async fn echo_server(config: ConnectionConfig) -> (SocketAddr, mpsc::UnboundedReceiver<Outcome>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .with_config(config);
    let addr = listener.local_addr().unwrap();
    let dispatcher =
        Arc::new(
            Dispatcher::new()
                .on(|hello: HelloWorld, _: Context| async move {
                    Ok::<_, Error>(Reply::message(&hello))
                })
                .fallback(|any: Any, _: Context| async move { Ok::<_, Error>(Reply::any(any)) }),
        );
    let (outcomes, outcomes_rx) = mpsc::unbounded();
    task::spawn(async move {
        let mut incoming = listener.incoming();
        while let Some(conn) = incoming.next().await {
            let conn = conn.unwrap();
            let dispatcher = dispatcher.clone();
            let outcomes = outcomes.clone();
            task::spawn(async move {
                let info = conn.info().clone();
                let result = dispatcher.serve(conn).await;
                let _ = outcomes.unbounded_send((info, result));
            });
        }
    });
    (addr, outcomes_rx)
}

fn hello(sequence: u64) -> HelloWorld {
    HelloWorld {
        text: format!("hello {sequence}"),
        sequence,
    }
}

/// Sends one message and expects it back.
async fn round_trip(conn: &mut tcp::TcpConnection, sequence: u64) {
    conn.send_message(&hello(sequence)).await.unwrap();
    let back: HelloWorld = conn.recv_message().await.unwrap().expect("echo");
    assert_eq!(back, hello(sequence));
}

/// Reads until the server closes the raw connection; true if it did within the limit.
async fn closed_by_server(raw: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match timeout(LIMIT, raw.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[async_std::test]
async fn pipelined_frames_in_one_write() {
    let (addr, _) = echo_server(ConnectionConfig::default()).await;
    let codec = connect::codec::Codec::new();
    let mut wire = bytes::BytesMut::new();
    for i in 0..500 {
        codec.encode_message(&hello(i), &mut wire).unwrap();
    }
    let mut raw = smol::net::TcpStream::connect(addr).await.unwrap();
    futures::AsyncWriteExt::write_all(&mut raw, &wire)
        .await
        .unwrap();

    // Read the replies through a Connection over a second handle of the same socket.
    let mut conn = tcp::wrap(raw.clone(), &ConnectionConfig::default());
    for i in 0..500 {
        let back: HelloWorld = timeout(LIMIT, conn.recv_message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back, hello(i));
    }
}

#[async_std::test]
async fn eight_mib_message() {
    let (addr, _) = echo_server(ConnectionConfig::default()).await;
    let mut conn = tcp::connect(addr).await.unwrap();
    let big = HelloWorld {
        text: "0123456789abcdef".repeat(8 * 1024 * 1024 / 16),
        sequence: 8,
    };
    let (mut reader, mut writer) = conn.split();
    let sent = big.clone();
    // Send and receive concurrently: neither side's socket buffer holds 8 MiB.
    let send = task::spawn(async move { writer.send_message(&sent).await.map(|_| writer) });
    let back: HelloWorld = timeout(LIMIT, reader.recv_message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(back, big);
    let writer = send.await.unwrap();
    conn = reader.reunite(writer).unwrap();
    round_trip(&mut conn, 9).await;
}

#[async_std::test]
async fn large_values_by_reference_keep_their_order_among_small_frames() {
    // Large values go out from their own memory in vectored writes (`feed_encoded`, `feed` of
    // an `Any`, and the echo server's replies, which are `Any`s), small ones are copied:
    // through real sockets, with their short writes, everything must come back in order.
    let (addr, _) = echo_server(ConnectionConfig::default()).await;
    let conn = tcp::connect(addr).await.unwrap();
    let messages: Vec<HelloWorld> = (0..24)
        .map(|i| HelloWorld {
            text: format!("{i:x}").repeat([3, 40_000, 700_000][i as usize % 3]),
            sequence: i,
        })
        .collect();
    let (mut reader, mut writer) = conn.split();
    let sent = messages.clone();
    let send = task::spawn(async move {
        for hello in &sent {
            match hello.sequence % 4 {
                0 => writer.feed_message(hello).await?,
                1 => writer.feed(Any::from_msg(hello).unwrap()).await?,
                _ => {
                    let encoded = bytes::Bytes::from(prost::Message::encode_to_vec(hello));
                    writer.feed_encoded::<HelloWorld>(encoded).await?
                }
            }
        }
        writer.flush().await.map(|_| writer)
    });
    for expected in &messages {
        let back: HelloWorld = timeout(LIMIT, reader.recv_message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(&back, expected);
    }
    let writer = send.await.unwrap();
    let mut conn = reader.reunite(writer).unwrap();
    round_trip(&mut conn, 99).await;
}

#[async_std::test]
async fn sixty_four_concurrent_clients() {
    let (addr, _) = echo_server(ConnectionConfig::default()).await;
    let clients: Vec<_> = (0..64u64)
        .map(|client| {
            task::spawn(async move {
                let mut conn = tcp::connect(addr).await.unwrap();
                for i in 0..100 {
                    conn.feed_message(&hello(client * 1000 + i)).await.unwrap();
                }
                conn.flush().await.unwrap();
                for i in 0..100 {
                    let back: HelloWorld = conn.recv_message().await.unwrap().unwrap();
                    assert_eq!(back.sequence, client * 1000 + i);
                }
                conn.close().await.unwrap();
                assert!(
                    conn.recv().await.unwrap().is_none(),
                    "clean end after close"
                );
            })
        })
        .collect();
    timeout(LIMIT, futures::future::join_all(clients))
        .await
        .unwrap();
}

/// One misbehaving peer per case, each while a good client keeps echoing on its own connection.
#[async_std::test]
async fn bad_peers_lose_only_their_own_connection() {
    let config = ConnectionConfig::default().with_max_frame_len(1024 * 1024);
    let (addr, mut outcomes) = echo_server(config).await;
    let mut good = tcp::connect(addr).await.unwrap();
    round_trip(&mut good, 0).await;

    let absurd_length = {
        let mut v = Vec::new();
        prost::encoding::encode_varint(1 << 40, &mut v);
        v
    };
    let cases: [(&str, Vec<u8>, bool); 4] = [
        ("absurd length prefix", absurd_length, false),
        ("invalid varint", vec![0xff; 11], false),
        // A 4-byte frame whose bytes claim a 100-byte type_url: not an Any.
        ("non-Any bytes", vec![0x04, 0x0a, 0x64, 0x41, 0x42], false),
        // A frame announcing 100 bytes, 10 sent, then end of stream.
        (
            "truncated frame",
            [&[100u8][..], &[0x0a; 10][..]].concat(),
            true,
        ),
    ];
    for (round, (what, bytes, then_close)) in (1..).zip(cases) {
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(&bytes).await.unwrap();
        if then_close {
            raw.shutdown(std::net::Shutdown::Write).unwrap();
        }
        assert!(
            closed_by_server(&mut raw).await,
            "{what}: server kept the connection"
        );

        let (info, result) = timeout(LIMIT, outcomes.next()).await.unwrap().unwrap();
        assert_eq!(
            info.peer_addr(),
            raw.local_addr().ok(),
            "{what}: outcome of another connection"
        );
        let err = result.expect_err(what);
        let expected = match what {
            "absurd length prefix" => {
                matches!(err, Error::FrameTooLarge { len, max } if len == 1 << 40 && max == 1024 * 1024)
            }
            "invalid varint" => matches!(err, Error::InvalidLengthPrefix),
            "non-Any bytes" => {
                matches!(err, Error::Decode { ref type_name, .. } if type_name == "google.protobuf.Any")
            }
            _ => matches!(err, Error::Truncated { buffered: 11 }),
        };
        assert!(expected, "{what}: unexpected error {err:?}");
        assert!(err.is_protocol_violation());

        // The good client is unaffected.
        round_trip(&mut good, round).await;
    }
}

#[async_std::test]
async fn unknown_type_without_fallback_is_returned_with_the_message_after_earlier_replies() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = task::spawn(async move {
        let dispatcher = Dispatcher::new().on(|hello: HelloWorld, _: Context| async move {
            Ok::<_, Error>(Reply::message(&hello))
        });
        dispatcher.serve(listener.accept().await.unwrap()).await
    });

    let mut conn = tcp::connect(addr).await.unwrap();
    let stranger = Any::from_msg(&prost_types::Duration {
        seconds: 3,
        nanos: 0,
    })
    .unwrap();
    conn.feed_message(&hello(1)).await.unwrap();
    conn.feed_message(&hello(2)).await.unwrap();
    conn.send(stranger.clone()).await.unwrap();

    for i in 1..=2 {
        let back: HelloWorld = conn.recv_message().await.unwrap().unwrap();
        assert_eq!(
            back.sequence, i,
            "replies before the unknown message are delivered"
        );
    }
    match timeout(LIMIT, server).await.unwrap() {
        Err(Error::UnknownType(any)) => assert_eq!(*any, stranger),
        other => panic!("expected UnknownType, got {other:?}"),
    }
}

#[async_std::test]
async fn handler_errors_and_undecodable_messages_end_serving_with_typed_errors() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = task::spawn(async move {
        let dispatcher = Arc::new(Dispatcher::new().on(
            |hello: HelloWorld, _: Context| async move {
                if hello.sequence == 13 {
                    return Err("unlucky number".into());
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Reply::none())
            },
        ));
        let mut results = Vec::new();
        for _ in 0..2 {
            let conn = listener.accept().await.unwrap();
            results.push(dispatcher.serve(conn).await);
        }
        results
    });

    let mut conn = tcp::connect(addr).await.unwrap();
    conn.send_message(&hello(13)).await.unwrap();
    assert!(conn.recv().await.unwrap().is_none());

    let mut conn = tcp::connect(addr).await.unwrap();
    let mislabeled = Any {
        type_url: "type.googleapis.com/connect.example.v1.HelloWorld".into(),
        value: vec![0x0a, 0x7f], // a string field claiming 127 bytes that are not there
    };
    conn.send(mislabeled.clone()).await.unwrap();
    assert!(conn.recv().await.unwrap().is_none());

    let results = timeout(LIMIT, server).await.unwrap();
    assert!(
        matches!(&results[0], Err(Error::Handler { type_name, source }) if type_name == "connect.example.v1.HelloWorld" && source.to_string() == "unlucky number"),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(&results[1], Err(Error::Decode { type_name, .. }) if type_name == "connect.example.v1.HelloWorld"),
        "{:?}",
        results[1]
    );
}

#[async_std::test]
async fn connection_reports_addresses() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tcp::connect(addr).await.unwrap();
    let server = listener.accept().await.unwrap();
    assert_eq!(client.peer_addr(), Some(addr));
    assert_eq!(server.local_addr(), Some(addr));
    assert_eq!(server.peer_addr(), client.local_addr());
    assert_ne!(server.info().id(), client.info().id());
}
