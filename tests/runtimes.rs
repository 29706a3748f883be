//! The library is runtime-agnostic: the same scenarios — a bare connection echo, the
//! dispatcher, a session with heartbeats and a graceful close, a reliable stream, TLS — run on
//! async-std, smol and tokio (through `tokio_util::compat`). Each scenario is written once,
//! generic over [`Runtime`]; the smol and tokio runs use only smol's or tokio's sockets,
//! executors and spawners, the async-std run async-std's executor with `connect`'s TCP transport (the library itself does not depend on async-std: its timers are
//! `futures-timer`'s and it spawns only through the spawner it is given).

mod support;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use connect::dispatch::{Context, Dispatcher, Reply};
use connect::proto::example::HelloWorld;
use connect::proto::v1::ReasonCode;
use connect::reliable::{self, ReliableConfig, ReliableServer};
use connect::session::{self, SessionConfig};
use connect::transport::{driver_task, tcp, tls, Task};
use connect::{Connection, ConnectionConfig, ConnectionInfo, Error};
use futures::channel::oneshot;
use futures::future::{select, Either};
use futures::{AsyncRead, AsyncWrite};
use support::certs::{client_config, server_config, Ca, Role};

/// A byte stream of any of the runtimes.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}
type BoxIo = Box<dyn Io>;
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a scenario needs from a runtime: an executor, a spawner, and TCP sockets.
trait Runtime: Clone + Send + Sync + 'static {
    fn block_on<T>(&self, future: impl Future<Output = T>) -> T;
    /// The spawner handed to the library: runs `task` detached.
    fn spawn(&self, task: Task);
    fn bind(&self) -> BoxFuture<'static, Box<dyn Listener>>;
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxIo>>;
}

trait Listener: Send + Sync {
    fn addr(&self) -> SocketAddr;
    fn accept(&self) -> BoxFuture<'_, io::Result<BoxIo>>;
}

/// async-std's executor and spawner, with `connect`'s own TCP transport (whose sockets are on
/// the reactor async-std itself runs on). async-std's own `TcpStream` would not do for a bare
/// connection: its `close` only flushes, so the peer never reads the end of the stream.
#[derive(Clone)]
struct AsyncStd;

impl Runtime for AsyncStd {
    fn block_on<T>(&self, future: impl Future<Output = T>) -> T {
        async_std::task::block_on(future)
    }

    fn spawn(&self, task: Task) {
        async_std::task::spawn(task);
    }

    fn bind(&self) -> BoxFuture<'static, Box<dyn Listener>> {
        Box::pin(async {
            let listener = async_net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            Box::new(listener) as Box<dyn Listener>
        })
    }

    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxIo>> {
        Box::pin(async move {
            let stream = async_net::TcpStream::connect(addr).await?;
            Ok(Box::new(tcp::TcpStream::from(stream)) as BoxIo)
        })
    }
}

impl Listener for async_net::TcpListener {
    fn addr(&self) -> SocketAddr {
        self.local_addr().unwrap()
    }

    fn accept(&self) -> BoxFuture<'_, io::Result<BoxIo>> {
        Box::pin(async move {
            let (stream, _) = async_net::TcpListener::accept(self).await?;
            Ok(Box::new(tcp::TcpStream::from(stream)) as BoxIo)
        })
    }
}

#[derive(Clone)]
struct Smol;

impl Runtime for Smol {
    fn block_on<T>(&self, future: impl Future<Output = T>) -> T {
        smol::block_on(future)
    }

    fn spawn(&self, task: Task) {
        smol::spawn(task).detach();
    }

    fn bind(&self) -> BoxFuture<'static, Box<dyn Listener>> {
        Box::pin(async {
            let listener = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            Box::new(listener) as Box<dyn Listener>
        })
    }

    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxIo>> {
        Box::pin(async move {
            let stream = smol::net::TcpStream::connect(addr).await?;
            Ok(Box::new(stream) as BoxIo)
        })
    }
}

#[derive(Clone)]
struct Tokio(Arc<tokio::runtime::Runtime>);

impl Tokio {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_io()
            .enable_time()
            .build()
            .unwrap();
        Self(Arc::new(runtime))
    }
}

impl Runtime for Tokio {
    fn block_on<T>(&self, future: impl Future<Output = T>) -> T {
        self.0.block_on(future)
    }

    fn spawn(&self, task: Task) {
        self.0.spawn(task);
    }

    fn bind(&self) -> BoxFuture<'static, Box<dyn Listener>> {
        Box::pin(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            Box::new(listener) as Box<dyn Listener>
        })
    }

    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxIo>> {
        use tokio_util::compat::TokioAsyncReadCompatExt;
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            Ok(Box::new(stream.compat()) as BoxIo)
        })
    }
}

impl Listener for tokio::net::TcpListener {
    fn addr(&self) -> SocketAddr {
        self.local_addr().unwrap()
    }

    fn accept(&self) -> BoxFuture<'_, io::Result<BoxIo>> {
        use tokio_util::compat::TokioAsyncReadCompatExt;
        Box::pin(async move {
            let (stream, _) = tokio::net::TcpListener::accept(self).await?;
            Ok(Box::new(stream.compat()) as BoxIo)
        })
    }
}

/// Runs `future` on the runtime's spawner; its result arrives on the receiver.
fn spawn_with_result<R: Runtime, T: Send + 'static>(
    rt: &R,
    future: impl Future<Output = T> + Send + 'static,
) -> oneshot::Receiver<T> {
    let (tx, rx) = oneshot::channel();
    rt.spawn(Box::pin(async move {
        let _ = tx.send(future.await);
    }));
    rx
}

/// Runs one scenario on `rt`, with a generous hang guard (a runtime-free timer).
fn run<R: Runtime, F>(rt: R, scenario: impl FnOnce(R) -> F)
where
    F: Future<Output = ()>,
{
    let guard = futures_timer::Delay::new(Duration::from_secs(60));
    let scenario = std::pin::pin!(scenario(rt.clone()));
    match rt.block_on(select(scenario, guard)) {
        Either::Left(((), _)) => {}
        Either::Right(_) => panic!("the scenario did not finish within 60 s"),
    }
}

fn hello(text: &str, sequence: u64) -> HelloWorld {
    HelloWorld {
        text: text.into(),
        sequence,
    }
}

/// A bare connection: the server echoes every frame until the client closes.
async fn echo<R: Runtime>(rt: R) {
    let listener = rt.bind().await;
    let addr = listener.addr();
    let server = spawn_with_result(&rt, async move {
        let mut conn = Connection::new(listener.accept().await?);
        let mut echoed = 0;
        while let Some(any) = conn.recv().await? {
            conn.send(any).await?;
            echoed += 1;
        }
        conn.close().await?;
        Ok::<_, Error>(echoed)
    });
    let mut conn = Connection::new(rt.connect(addr).await.unwrap());
    for i in 0..200 {
        conn.feed_message(&hello("echo", i)).await.unwrap();
    }
    conn.flush().await.unwrap();
    for i in 0..200 {
        let back: HelloWorld = conn.recv_message().await.unwrap().expect("an echo");
        assert_eq!(back, hello("echo", i));
    }
    conn.close().await.unwrap();
    assert!(conn.recv().await.unwrap().is_none());
    assert_eq!(server.await.unwrap().unwrap(), 200);
}

fn upper_case() -> Dispatcher {
    Dispatcher::new().on(|hello: HelloWorld, _: Context| async move {
        let text = hello.text.to_uppercase();
        Ok::<_, Error>(Reply::message(&HelloWorld { text, ..hello }))
    })
}

/// The dispatcher serves a connection: pipelined requests, replies in order, a clean end.
async fn dispatch<R: Runtime>(rt: R) {
    let listener = rt.bind().await;
    let addr = listener.addr();
    let server = spawn_with_result(&rt, async move {
        upper_case()
            .serve(Connection::new(listener.accept().await?))
            .await
    });
    let mut conn = Connection::new(rt.connect(addr).await.unwrap());
    for sequence in 0..500 {
        let text = format!("message {sequence}");
        conn.feed_message(&HelloWorld { text, sequence })
            .await
            .unwrap();
    }
    conn.flush().await.unwrap();
    for sequence in 0..500 {
        let reply: HelloWorld = conn.recv_message().await.unwrap().expect("reply");
        assert_eq!(reply.sequence, sequence);
        assert_eq!(reply.text, format!("MESSAGE {sequence}"));
    }
    conn.close().await.unwrap();
    assert!(conn.recv().await.unwrap().is_none());
    server.await.unwrap().unwrap();
}

/// A `Peer` whose driver runs on the runtime's spawner: several tasks send on one link, the
/// server's dispatcher answers, the client's handlers receive, and a close ends both sides.
async fn peer_link<R: Runtime>(rt: R) {
    use connect::peer::{Peer, PeerConfig};
    use futures::StreamExt;
    let listener = rt.bind().await;
    let addr = listener.addr();
    let server_rt = rt.clone();
    let server = spawn_with_result(&rt, async move {
        let conn = Connection::new(listener.accept().await.unwrap());
        let (peer, driver) = Peer::new(conn, upper_case(), &PeerConfig::new());
        server_rt.spawn(driver.into());
        peer.closed().await.is_ok()
    });
    let (answers, mut answered) = futures::channel::mpsc::unbounded();
    let client = Dispatcher::new().on(move |hello: HelloWorld, _: Context| {
        answers.unbounded_send(hello.text).unwrap();
        async { Ok::<_, Error>(Reply::none()) }
    });
    let conn = Connection::new(rt.connect(addr).await.unwrap());
    let (peer, driver) = Peer::new(conn, client, &PeerConfig::new());
    rt.spawn(driver.into());
    let senders: Vec<_> = (0..4u64)
        .map(|task| {
            let peer = peer.clone();
            spawn_with_result(&rt, async move {
                for sequence in 0..50 {
                    peer.send_message(&hello(&format!("t{task}"), sequence))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    let mut texts = Vec::new();
    for _ in 0..200 {
        texts.push(answered.next().await.expect("an answer"));
    }
    assert_eq!(texts.iter().filter(|t| *t == "T3").count(), 50);
    peer.close().await.unwrap();
    assert!(server.await.unwrap(), "the server's link ended cleanly");
}

/// A session whose drivers run on the runtime's spawner: messages, heartbeats (a round-trip
/// time gets measured), and a graceful close that the server sees as a clean end.
async fn session_with_heartbeats<R: Runtime>(rt: R) {
    let config = SessionConfig::new().with_heartbeat(Some(Duration::from_millis(50)));
    let listener = rt.bind().await;
    let addr = listener.addr();
    let (server_rt, server_config) = (rt.clone(), config.clone());
    let server = spawn_with_result(&rt, async move {
        let conn = Connection::new(listener.accept().await?);
        let (mut session, driver) = session::accept(conn, &server_config).await?;
        server_rt.spawn(driver_task(driver));
        let mut echoed = 0;
        while let Some(any) = session.recv().await? {
            session.send(any).await?;
            echoed += 1;
        }
        Ok::<_, Error>(echoed)
    });

    let conn = Connection::new(rt.connect(addr).await.unwrap());
    let (mut session, driver) = session::connect(conn, &config).await.unwrap();
    rt.spawn(driver_task(driver));
    for i in 0..10 {
        session.send_message(&hello("session", i)).await.unwrap();
        let back: HelloWorld = session.recv_message().await.unwrap().expect("an echo");
        assert_eq!(back, hello("session", i));
    }
    // Heartbeats run on the drivers alone: wait (bounded) until one has come back.
    let mut waits = 0;
    while session.rtt().is_none() {
        assert!(waits < 200, "no heartbeat answered within 200 waits");
        futures_timer::Delay::new(Duration::from_millis(25)).await;
        waits += 1;
    }
    session
        .close_with(ReasonCode::Normal, "done")
        .await
        .unwrap();
    assert_eq!(server.await.unwrap().unwrap(), 10);
}

/// A reliable stream: the client's reconnecting driver and the server's per-connection drivers
/// run on the runtime's spawner; every message is confirmed and echoed, then closed.
async fn reliable_stream<R: Runtime>(rt: R) {
    let listener = rt.bind().await;
    let addr = listener.addr();
    let server = ReliableServer::new(SessionConfig::new(), ReliableConfig::new());
    let server_rt = rt.clone();
    rt.spawn(Box::pin(async move {
        while let Ok(io) = listener.accept().await {
            let (server, rt) = (server.clone(), server_rt.clone());
            server_rt.spawn(Box::pin(async move {
                let Ok(accepted) = server.accept(Connection::new(io)).await else {
                    return;
                };
                match accepted {
                    connect::reliable::Accepted::NewStream { mut stream, driver } => {
                        rt.spawn(Box::pin(async move {
                            while let Ok(Some(any)) = stream.recv().await {
                                if stream.feed(any).await.is_err() {
                                    break;
                                }
                            }
                        }));
                        driver.await;
                    }
                    connect::reliable::Accepted::Resumed { driver } => driver.await,
                    _ => {}
                }
            }));
        }
    }));

    let connect_rt = rt.clone();
    let (stream, driver) = reliable::client(
        move || {
            let rt = connect_rt.clone();
            async move { Ok(Connection::new(rt.connect(addr).await?)) }
        },
        SessionConfig::new(),
        ReliableConfig::new(),
    );
    rt.spawn(Box::pin(driver));
    let (mut reader, mut writer) = stream.split();
    for i in 0..20 {
        let any = prost_types::Any::from_msg(&hello("reliable", i)).unwrap();
        writer.send_confirmed(any).await.unwrap();
    }
    for i in 0..20 {
        let back: HelloWorld = reader.recv_message().await.unwrap().expect("an echo");
        assert_eq!(back, hello("reliable", i));
    }
    writer.close().await.unwrap();
}

/// Mutual TLS over the runtime's sockets: the handshake, the verified client identity, an
/// echo, `close_notify`.
async fn tls_echo<R: Runtime>(rt: R) {
    let ca = Ca::new("test CA");
    let server_leaf = ca.issue("server", &["localhost"], Role::Server);
    let client_leaf = ca.issue("client-1", &["client-1"], Role::Client);
    let server_tls = server_config(&server_leaf, Some(&ca));
    let client_tls = client_config(ca.certificates(), Some(&client_leaf));

    let listener = rt.bind().await;
    let addr = listener.addr();
    let server = spawn_with_result(&rt, async move {
        let io = listener.accept().await?;
        let mut conn = tls::accept_stream(
            io,
            &server_tls,
            &ConnectionConfig::default(),
            ConnectionInfo::new(),
        )
        .await?;
        let who = conn
            .peer_identity()
            .and_then(|id| id.common_name().map(str::to_owned));
        while let Some(any) = conn.recv().await? {
            conn.send(any).await?;
        }
        conn.close().await?;
        Ok::<_, Error>(who)
    });

    let io = rt.connect(addr).await.unwrap();
    let mut conn = tls::connect_stream(
        io,
        "localhost",
        &client_tls,
        &ConnectionConfig::default(),
        ConnectionInfo::new(),
    )
    .await
    .expect("handshake");
    for i in 0..10 {
        conn.send_message(&hello("tls", i)).await.unwrap();
        let back: HelloWorld = conn.recv_message().await.unwrap().expect("an echo");
        assert_eq!(back, hello("tls", i));
    }
    conn.close().await.unwrap();
    assert!(conn.recv().await.unwrap().is_none());
    assert_eq!(server.await.unwrap().unwrap().as_deref(), Some("client-1"));
}

/// One test per scenario and runtime, so a failure names both.
macro_rules! on_runtime {
    ($module:ident, $runtime:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn echo() {
                run($runtime, super::echo);
            }

            #[test]
            fn dispatch() {
                run($runtime, super::dispatch);
            }

            #[test]
            fn peer_link() {
                run($runtime, super::peer_link);
            }

            #[test]
            fn session_with_heartbeats() {
                run($runtime, super::session_with_heartbeats);
            }

            #[test]
            fn reliable_stream() {
                run($runtime, super::reliable_stream);
            }

            #[test]
            fn tls_echo() {
                run($runtime, super::tls_echo);
            }
        }
    };
}

on_runtime!(async_std_runtime, AsyncStd);
on_runtime!(smol_runtime, Smol);
on_runtime!(tokio_runtime, Tokio::new());

/// With the `async-std` feature, an async-std stream converts into the TCP transport's (a second
/// handle on the same socket): messages flow, and closing gives the peer a clean end of stream.
#[cfg(feature = "async-std")]
#[test]
fn an_async_std_stream_converts_into_a_tcp_connection() {
    run(AsyncStd, |rt| async move {
        let listener = rt.bind().await;
        let addr = listener.addr();
        let server = spawn_with_result(&rt, async move {
            upper_case()
                .serve(Connection::new(listener.accept().await?))
                .await
        });
        let stream = async_std::net::TcpStream::connect(addr).await.unwrap();
        let stream = tcp::TcpStream::try_from(stream).unwrap();
        let mut conn = tcp::wrap(stream, &ConnectionConfig::default());
        assert_eq!(conn.peer_addr(), Some(addr));
        conn.send_message(&hello("converted", 1)).await.unwrap();
        let back: HelloWorld = conn.recv_message().await.unwrap().expect("a reply");
        assert_eq!(back, hello("CONVERTED", 1));
        conn.close().await.unwrap();
        assert!(conn.recv().await.unwrap().is_none());
        server.await.unwrap().unwrap();
    });
}

/// The one-call TCP helpers run their drivers exactly where the caller's spawner puts them: here
/// on smol, each helper calling the spawner once, and the session and the reliable stream work.
#[test]
fn tcp_helpers_hand_their_drivers_to_the_given_spawner() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    run(Smol, |rt| async move {
        let spawned = Arc::new(AtomicUsize::new(0));
        let spawner = |spawned: &Arc<AtomicUsize>| {
            let spawned = spawned.clone();
            move |task: Task| {
                spawned.fetch_add(1, Ordering::SeqCst);
                smol::spawn(task).detach();
            }
        };

        // A session: the server accepts with accept_session, the client uses connect_session.
        let listener = tcp::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_spawner = spawner(&spawned);
        let server = spawn_with_result(&rt, async move {
            let conn = listener.accept().await?;
            let mut session =
                tcp::accept_session(conn, &SessionConfig::new(), server_spawner).await?;
            while let Some(any) = session.recv().await? {
                session.send(any).await?;
            }
            Ok::<_, Error>(())
        });
        let mut session = tcp::connect_session(addr, &SessionConfig::new(), spawner(&spawned))
            .await
            .unwrap();
        session.send_message(&hello("helper", 1)).await.unwrap();
        let back: HelloWorld = session.recv_message().await.unwrap().expect("an echo");
        assert_eq!(back, hello("helper", 1));
        session.close_with(ReasonCode::Normal, "").await.unwrap();
        server.await.unwrap().unwrap();
        assert_eq!(spawned.load(Ordering::SeqCst), 2);

        // A reliable stream to a server that counts what arrives.
        let listener = rt.bind().await;
        let addr = listener.addr();
        let server = ReliableServer::new(SessionConfig::new(), ReliableConfig::new());
        let received = spawn_with_result(&rt, async move {
            let accepted = server
                .accept(Connection::new(listener.accept().await.unwrap()))
                .await
                .unwrap();
            let connect::reliable::Accepted::NewStream { mut stream, driver } = accepted else {
                panic!("a new stream expected")
            };
            smol::spawn(driver).detach();
            stream.recv_message::<HelloWorld>().await.unwrap()
        });
        let mut stream = tcp::connect_reliable(
            addr,
            SessionConfig::new(),
            ReliableConfig::new(),
            spawner(&spawned),
        );
        stream
            .feed_message(&hello("reliable helper", 2))
            .await
            .unwrap();
        assert_eq!(received.await.unwrap(), Some(hello("reliable helper", 2)));
        assert_eq!(spawned.load(Ordering::SeqCst), 3);
    });
}

/// The TLS client and listener of the `tcp` feature (async-net sockets, `futures-timer`
/// handshake timeouts) under tokio, with no async-std anywhere.
#[test]
fn tls_client_and_listener_on_tokio() {
    use futures::StreamExt;

    run(Tokio::new(), |rt| async move {
        let ca = Ca::new("test CA");
        let server_leaf = ca.issue("server", &["localhost"], Role::Server);
        let mut listener = tls::TlsListener::bind(
            "127.0.0.1:0",
            server_config(&server_leaf, None).with_handshake_timeout(Duration::from_secs(20)),
        )
        .await
        .unwrap();
        let addr = listener.local_addr();
        let server = spawn_with_result(&rt, async move {
            let mut conn = listener.next().await.expect("a connection")?;
            while let Some(any) = conn.recv().await? {
                conn.send(any).await?;
            }
            conn.close().await
        });
        let client_tls = client_config(ca.certificates(), None);
        let mut conn = tls::connect(addr, "localhost", &client_tls).await.unwrap();
        conn.send_message(&hello("tokio tls", 1)).await.unwrap();
        let back: HelloWorld = conn.recv_message().await.unwrap().expect("an echo");
        assert_eq!(back, hello("tokio tls", 1));
        conn.close().await.unwrap();
        assert!(conn.recv().await.unwrap().is_none());
        server.await.unwrap().unwrap();
    });
}
