//! One handle shape: connections and sessions (and reliable streams) are used through the same
//! `Stream`/`Sink` and the same methods, split into halves that only reunite with their own.

use std::future::Future;
use std::time::Duration;

use connect::dispatch::{Context, Dispatcher, Reply};
use connect::proto::example::HelloWorld;
use connect::proto::v1::ReasonCode;
use connect::reliable::{ReliableConfig, ReliableServer, ReliableStream};
use connect::session::{self, SessionConfig, SessionEnd};
use connect::transport::tcp::{self, TcpListener};
use connect::{Error, Result};
use futures::{Sink, SinkExt, Stream, StreamExt};
use prost_types::Any;

async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    async_std::future::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what} took more than 20 s"))
}

fn spawn(task: connect::transport::Task) {
    async_std::task::spawn(task);
}

fn hello(sequence: u64) -> Any {
    Any::from_msg(&HelloWorld {
        text: "hi".into(),
        sequence,
    })
    .unwrap()
}

/// Generic over the shape only: sends `n` messages through the `Sink`, flushes, and reads `n`
/// echoes back through the `Stream`.
async fn round_trip<H>(handle: &mut H, n: u64) -> Vec<u64>
where
    H: Stream<Item = Result<Any>> + Sink<Any, Error = Error> + Unpin,
{
    let mut all = futures::stream::iter((0..n).map(|i| Ok(hello(i))));
    handle.send_all(&mut all).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..n {
        let any = handle.next().await.unwrap().unwrap();
        got.push(any.to_msg::<HelloWorld>().unwrap().sequence);
    }
    got
}

fn echo() -> Dispatcher {
    Dispatcher::new()
        .fallback(|any: Any, _: Context| async move { Ok::<_, Error>(Reply::any(any)) })
}

/// A dispatcher echo server on loopback serving bare connections or sessions.
async fn echo_server(sessions: bool) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    async_std::task::spawn(async move {
        let conn = listener.accept().await.unwrap();
        if sessions {
            let (session, driver) = session::accept(conn, &SessionConfig::new()).await.unwrap();
            async_std::task::spawn(driver);
            echo().serve(session).await
        } else {
            echo().serve(conn).await
        }
    });
    addr
}

#[async_std::test]
async fn connections_and_sessions_share_one_stream_and_sink_shape() {
    bounded("test", async {
        let mut conn = tcp::connect(echo_server(false).await).await.unwrap();
        assert_eq!(round_trip(&mut conn, 50).await, (0..50).collect::<Vec<_>>());
        conn.close().await.unwrap();
        assert!(conn.recv().await.unwrap().is_none());

        let addr = echo_server(true).await;
        let mut session = tcp::connect_session(addr, &SessionConfig::new(), spawn)
            .await
            .unwrap();
        assert_eq!(
            round_trip(&mut session, 50).await,
            (0..50).collect::<Vec<_>>()
        );
        // The same inherent methods, by the same names and argument types.
        session.feed(hello(50)).await.unwrap();
        session.send(hello(51)).await.unwrap();
        for expected in [50, 51] {
            let echoed: HelloWorld = session.recv_message().await.unwrap().unwrap();
            assert_eq!(echoed.sequence, expected);
        }
        // `Sink::close` is the session's graceful close.
        SinkExt::close(&mut session).await.unwrap();
        assert!(matches!(
            session.end(),
            Some(SessionEnd::Closed {
                code: ReasonCode::Normal,
                ..
            })
        ));
    })
    .await;
}

#[async_std::test]
async fn close_sends_reason_code_normal_and_close_with_another() {
    bounded("test", async {
        for (code, reason) in [(None, ""), (Some(ReasonCode::GoingAway), "maintenance")] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = async_std::task::spawn(async move {
                let conn = listener.accept().await.unwrap();
                let mut session = tcp::accept_session(conn, &SessionConfig::new(), spawn)
                    .await
                    .unwrap();
                assert!(session.recv().await.unwrap().is_none());
                session.end()
            });
            let mut client = tcp::connect_session(addr, &SessionConfig::new(), spawn)
                .await
                .unwrap();
            match code {
                None => client.close().await.unwrap(),
                Some(code) => client.close_with(code, reason).await.unwrap(),
            }
            let expected = code.unwrap_or(ReasonCode::Normal);
            match server.await {
                Some(SessionEnd::ClosedByPeer { code, reason: got }) => {
                    assert_eq!((code, got.as_str()), (expected, reason))
                }
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
}

#[async_std::test]
async fn session_halves_reunite_only_with_their_own() {
    bounded("test", async {
        let addr_a = echo_server(true).await;
        let addr_b = echo_server(true).await;
        let config = SessionConfig::new();
        let a = tcp::connect_session(addr_a, &config, spawn).await.unwrap();
        let b = tcp::connect_session(addr_b, &config, spawn).await.unwrap();
        let (reader_a, writer_a) = a.split();
        let (reader_b, writer_b) = b.split();
        let connect::ReuniteError(reader_a, writer_b) = reader_a.reunite(writer_b).unwrap_err();
        let mut a = reader_a.reunite(writer_a).unwrap();
        let mut b = reader_b.reunite(writer_b).unwrap();
        // Reunited, each half still works with its own peer.
        for session in [&mut a, &mut b] {
            session.send(hello(7)).await.unwrap();
            assert_eq!(session.recv().await.unwrap(), Some(hello(7)));
            session.close().await.unwrap();
        }
    })
    .await;
}

/// A reliable server on loopback that hands each new stream to `app`.
async fn reliable_server<F, Fut>(app: F) -> std::net::SocketAddr
where
    F: Fn(ReliableStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ReliableServer::new(SessionConfig::new(), ReliableConfig::new());
    let app = std::sync::Arc::new(app);
    async_std::task::spawn(async move {
        while let Ok(conn) = listener.accept().await {
            let (server, app) = (server.clone(), app.clone());
            async_std::task::spawn(async move {
                let Ok(accepted) = server.accept(conn).await else {
                    return;
                };
                match accepted {
                    connect::reliable::Accepted::NewStream { stream, driver } => {
                        async_std::task::spawn(app(stream));
                        driver.await;
                    }
                    connect::reliable::Accepted::Resumed { driver } => driver.await,
                    _ => {}
                }
            });
        }
    });
    addr
}

fn reliable_client(addr: std::net::SocketAddr) -> ReliableStream {
    tcp::connect_reliable(addr, SessionConfig::new(), ReliableConfig::new(), spawn)
}

#[async_std::test]
async fn the_dispatcher_serves_reliable_streams_of_the_same_shape() {
    bounded("test", async {
        let addr = reliable_server(|stream| async move {
            let _ = echo().serve(stream).await;
        })
        .await;
        let mut stream = reliable_client(addr);
        // `send_all` ends with a flush: on a reliable stream, every message is confirmed then.
        assert_eq!(
            round_trip(&mut stream, 50).await,
            (0..50).collect::<Vec<_>>()
        );
        let stats = stream.stats();
        assert_eq!(
            (stats.sent, stats.confirmed, stats.outgoing_messages),
            (50, 50, 0)
        );
        stream.send_message(&HelloWorld::default()).await.unwrap();
        let echoed: HelloWorld = stream.recv_message().await.unwrap().unwrap();
        assert_eq!(echoed, HelloWorld::default());
        stream.close().await.unwrap();
    })
    .await;
}

#[async_std::test]
async fn a_reliable_flush_waits_until_the_peer_application_took_everything() {
    bounded("test", async {
        let (take, taken) = futures::channel::mpsc::unbounded::<()>();
        let taken = std::sync::Arc::new(async_std::sync::Mutex::new(taken));
        let addr = reliable_server(move |mut stream| {
            let taken = taken.clone();
            async move {
                let mut go = taken.lock().await;
                // Take one message per signal.
                while go.next().await.is_some() {
                    if stream.recv().await.ok().flatten().is_none() {
                        return;
                    }
                }
            }
        })
        .await;
        let mut stream = reliable_client(addr);
        stream.feed(hello(1)).await.unwrap();
        stream.feed(hello(2)).await.unwrap();
        {
            let flush = stream.flush();
            futures::pin_mut!(flush);
            // Written (the server's session has them), but its application took nothing.
            let early = async_std::future::timeout(Duration::from_millis(300), &mut flush).await;
            assert!(
                early.is_err(),
                "flush returned before confirmation: {early:?}"
            );
            take.unbounded_send(()).unwrap();
            let early = async_std::future::timeout(Duration::from_millis(300), &mut flush).await;
            assert!(
                early.is_err(),
                "flush returned with one message unconfirmed"
            );
            take.unbounded_send(()).unwrap();
            flush.await.unwrap();
        }
        assert_eq!(stream.stats().confirmed, 2);
        assert_eq!(stream.stats().outgoing_messages, 0);
    })
    .await;
}

#[async_std::test]
async fn reliable_halves_reunite_only_with_their_own() {
    bounded("test", async {
        let addr = reliable_server(|stream| async move {
            let _ = echo().serve(stream).await;
        })
        .await;
        let (reader_a, writer_a) = reliable_client(addr).split();
        let (reader_b, writer_b) = reliable_client(addr).split();
        let connect::ReuniteError(reader_a, writer_b) = reader_a.reunite(writer_b).unwrap_err();
        let mut a = reader_a.reunite(writer_a).unwrap();
        let mut b = reader_b.reunite(writer_b).unwrap();
        for stream in [&mut a, &mut b] {
            stream.send(hello(3)).await.unwrap();
            assert_eq!(stream.recv().await.unwrap(), Some(hello(3)));
        }
    })
    .await;
}
