//! Reliable delivery over loopback: exactly once and in order through a proxy that cuts the
//! connection at random points, bounded queues with backpressure, refusals.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_std::task;
use connect::dispatch::{Context, Dispatcher, Reply};
use connect::prost_types::Any;
use connect::proto::example::HelloWorld;
use connect::reliable::{
    self, Backoff, DeliveryError, Event, NackReason, ReliableConfig, ReliableServer,
    ReliableStream, TrySendError,
};
use connect::session::SessionConfig;
use connect::transport::tcp::{self, TcpListener};
use futures::FutureExt;
use support::proxy::cutting_proxy;
use support::{spawn, Chunks};

use support::{numbered as hello, sequence, within};

/// A reliable server on loopback whose application is `app`, run for every new stream.
async fn server<A, Fut>(config: ReliableConfig, app: A) -> (SocketAddr, ReliableServer)
where
    A: Fn(ReliableStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let session_config = SessionConfig::new().with_heartbeat(Some(Duration::from_millis(500)));
    let server = ReliableServer::new(session_config, config);
    let app = Arc::new(app);
    let srv = server.clone();
    task::spawn(async move {
        loop {
            let Ok(conn) = listener.accept().await else {
                continue;
            };
            let srv = srv.clone();
            let app = app.clone();
            task::spawn(async move {
                let Ok(accepted) = srv.accept(conn).await else {
                    return;
                };
                match accepted {
                    connect::reliable::Accepted::NewStream { stream, driver } => {
                        task::spawn(app(stream));
                        driver.await;
                    }
                    connect::reliable::Accepted::Resumed { driver } => driver.await,
                    _ => {}
                }
            });
        }
    });
    (addr, server)
}

async fn echo(mut stream: ReliableStream) {
    while let Ok(Some(any)) = stream.recv().await {
        if stream.feed(any).await.is_err() {
            break;
        }
    }
}

fn client_config() -> ReliableConfig {
    ReliableConfig::new().with_backoff(
        Backoff::new()
            .with_initial(Duration::from_millis(1))
            .with_max(Duration::from_millis(20))
            .with_max_attempts(Some(200)),
    )
}

fn client(addr: SocketAddr, config: ReliableConfig) -> ReliableStream {
    let session_config = SessionConfig::new().with_heartbeat(Some(Duration::from_millis(500)));
    tcp::connect_reliable(addr, session_config, config, spawn)
}

#[async_std::test]
async fn echo_with_confirmations_and_graceful_close() {
    let _ = env_logger::builder().is_test(true).try_init();
    let (addr, server) = server(ReliableConfig::new(), echo).await;
    let mut stream = client(addr, client_config());
    let events = stream.events();
    within(20, "confirmed sends", async {
        for i in 0..10 {
            stream.send_confirmed(hello(i)).await.unwrap();
        }
    })
    .await;
    for i in 0..10 {
        let echoed = within(20, "echo", stream.recv()).await.unwrap().unwrap();
        assert_eq!(sequence(&echoed), i);
    }
    within(20, "close", stream.close()).await.unwrap();
    let events: Vec<Event> = futures::StreamExt::collect(events).await;
    assert!(
        matches!(
            events.first(),
            Some(Event::Connected {
                new_stream: false,
                ..
            })
        ),
        "{events:?}"
    );
    assert_eq!(events.last(), Some(&Event::Closed { reason: None }));
    assert!(stream.recv().await.unwrap().is_none());
    assert!(matches!(
        stream.try_send(hello(99)),
        Err(TrySendError::Closed(_))
    ));
    // The server forgets a closed stream.
    within(20, "server forgets", async {
        while server.stream_count() > 0 {
            task::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[async_std::test]
async fn unhandled_type_is_refused_with_a_nack() {
    let dispatcher = Arc::new(
        Dispatcher::new().on(|m: HelloWorld, _: Context| async move {
            Ok::<_, connect::Error>(Reply::message(&m))
        }),
    );
    let handles = dispatcher.clone();
    let config =
        ReliableConfig::new().with_accepts(Arc::new(move |url: &str| handles.handles(url)));
    let received = Arc::new(AtomicU64::new(0));
    let seen = received.clone();
    let (addr, _server) = server(config, move |mut stream: ReliableStream| {
        let seen = seen.clone();
        async move {
            while let Ok(Some(any)) = stream.recv().await {
                assert!(any.type_url.ends_with("HelloWorld"), "{}", any.type_url);
                seen.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .await;
    let mut stream = client(addr, client_config());
    let unknown = Any {
        type_url: "type.googleapis.com/acme.Unknown".into(),
        value: vec![1, 2, 3],
    };
    let refused = within(20, "refusal", stream.send_confirmed(unknown)).await;
    match refused {
        Err(connect::Error::Delivery(DeliveryError::Refused { reason, text })) => {
            assert_eq!(reason, NackReason::UnknownType);
            assert!(text.contains("acme.Unknown"), "{text}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A handled type on the same stream is still confirmed, and delivered once.
    within(20, "confirmed", stream.send_confirmed(hello(1)))
        .await
        .unwrap();
    assert_eq!(received.load(Ordering::SeqCst), 1);
    assert_eq!(stream.stats().refused, 1);
}

#[async_std::test]
async fn stalled_consumer_fills_the_bounded_queue_and_send_waits() {
    const MAX_MESSAGES: usize = 200;
    const MAX_BYTES: usize = 64 * 1024;
    let (gate_tx, gate_rx) = async_channel_pair();
    let inbound_peak = Arc::new(AtomicU64::new(0));
    let peak = inbound_peak.clone();
    let server_config = ReliableConfig::new().with_receive_buffer(100, 1 << 20);
    let (addr, _server) = server(server_config, move |mut stream: ReliableStream| {
        let gate_rx = gate_rx.clone();
        let peak = peak.clone();
        async move {
            // The application does not read until the test opens the gate.
            let _ = gate_rx.recv().await;
            peak.store(stream.stats().inbound_messages as u64, Ordering::SeqCst);
            let mut next = 0;
            while let Ok(Some(any)) = stream.recv().await {
                assert_eq!(sequence(&any), next);
                next += 1;
            }
        }
    })
    .await;
    let config = client_config()
        .with_max_messages(MAX_MESSAGES)
        .with_max_bytes(MAX_BYTES);
    let mut stream = client(addr, config);
    // 1 KiB messages: the byte bound (64) bites before the message bound (200).
    let big = |i: u64| {
        Any::from_msg(&HelloWorld {
            text: "x".repeat(1000),
            sequence: i,
        })
        .unwrap()
    };
    let mut sent = 0u64;
    let mut peak_bytes = 0;
    within(30, "filling up", async {
        loop {
            match stream.try_send(big(sent)) {
                Ok(()) => sent += 1,
                Err(TrySendError::Full(any)) => {
                    assert_eq!(sequence(&any), sent, "the message is handed back");
                    // Full for good only once the peer stopped confirming: wait and retry.
                    task::sleep(Duration::from_millis(50)).await;
                    if stream.try_send(any).is_err() && stream.stats().connected {
                        let stats = stream.stats();
                        if stats.sent == stats.confirmed + stats.outgoing_messages as u64 {
                            break;
                        }
                    } else {
                        sent += 1;
                    }
                }
                Err(e) => panic!("{e}"),
            }
            peak_bytes = peak_bytes.max(stream.stats().outgoing_bytes);
        }
    })
    .await;
    let stats = stream.stats();
    println!("stalled consumer: {sent} sent, sender holds {stats:?}, peak {peak_bytes} bytes");
    assert!(stats.outgoing_bytes <= MAX_BYTES, "{stats:?}");
    assert!(peak_bytes <= MAX_BYTES);
    assert!(stats.outgoing_messages <= MAX_MESSAGES);
    assert!(
        stats.outgoing_bytes > MAX_BYTES - 2 * 1100,
        "the queue is full: {stats:?}"
    );
    // `send` waits while the queue is full...
    let mut pending_send = Box::pin(stream.feed(big(sent)));
    task::sleep(Duration::from_millis(100)).await;
    assert!((&mut pending_send).now_or_never().is_none(), "send waits");
    // ...and completes once the consumer reads.
    gate_tx.close();
    within(30, "send after the consumer resumed", pending_send)
        .await
        .unwrap();
    let inbound = inbound_peak.load(Ordering::SeqCst);
    assert!(inbound <= 100, "receiver held {inbound} messages");
    within(30, "all confirmed", stream.close()).await.unwrap();
}

/// A one-shot gate: `recv` returns once `close` is called.
fn async_channel_pair() -> (Gate, Gate) {
    let (tx, rx) = futures::channel::mpsc::channel::<()>(1);
    let gate = Gate {
        tx: Arc::new(std::sync::Mutex::new(Some(tx))),
        rx: Arc::new(async_std::sync::Mutex::new(rx)),
    };
    (gate.clone(), gate)
}

#[derive(Clone)]
struct Gate {
    tx: Arc<std::sync::Mutex<Option<futures::channel::mpsc::Sender<()>>>>,
    rx: Arc<async_std::sync::Mutex<futures::channel::mpsc::Receiver<()>>>,
}

impl Gate {
    fn close(&self) {
        self.tx.lock().unwrap().take();
    }

    async fn recv(&self) -> Option<()> {
        futures::StreamExt::next(&mut *self.rx.lock().await).await
    }
}

#[async_std::test]
async fn exactly_once_in_order_through_a_proxy_that_cuts_connections() {
    const MESSAGES: u64 = 100_000;
    const MIN_CUTS: u64 = 100;
    let _ = env_logger::builder().is_test(true).try_init();
    // The server checks what it gets, then echoes it.
    let server_seen = Arc::new(AtomicU64::new(0));
    let seen = server_seen.clone();
    let server_probe: Arc<std::sync::Mutex<Option<reliable::ReliableWriter>>> = Default::default();
    let sp = server_probe.clone();
    let (upstream, _server) = server(
        ReliableConfig::new().with_resume_timeout(Duration::from_secs(30)),
        move |mut stream: ReliableStream| {
            let seen = seen.clone();
            *sp.lock().unwrap() = Some(stream.writer());
            async move {
                let mut next = 0;
                while let Ok(Some(any)) = stream.recv().await {
                    assert_eq!(sequence(&any), next, "server: out of order or duplicate");
                    next += 1;
                    seen.store(next, Ordering::SeqCst);
                    if stream.feed(any).await.is_err() {
                        break;
                    }
                }
            }
        },
    )
    .await;
    let proxy = cutting_proxy(upstream, 150_000).await;
    let (mut reader, mut writer) = client(proxy.addr, client_config()).split();
    let started = std::time::Instant::now();
    let probe = writer.clone();
    if std::env::var_os("RELIABLE_DEBUG").is_some() {
        task::spawn(async move {
            loop {
                task::sleep(Duration::from_secs(2)).await;
                eprintln!("probe: {:?}", probe.stats());
                if let Some(w) = &*server_probe.lock().unwrap() {
                    eprintln!("server probe: {:?}", w.stats());
                }
            }
        });
    }
    let sender = task::spawn(async move {
        for i in 0..MESSAGES {
            writer.feed(hello(i)).await.unwrap();
        }
        writer
    });
    within(240, "transfer", async {
        for i in 0..MESSAGES {
            let any = reader.recv().await.unwrap().unwrap();
            assert_eq!(sequence(&any), i, "client: out of order or duplicate");
            if i % 10_000 == 0 {
                println!(
                    "{i} at {:?}, {} cuts",
                    started.elapsed(),
                    proxy.cuts.load(Ordering::SeqCst)
                );
            }
        }
    })
    .await;
    let mut writer = sender.await;
    let cuts = proxy.cuts.load(Ordering::SeqCst);
    let stats = writer.stats();
    println!(
        "{MESSAGES} messages echoed in {:?} through {cuts} cuts; client {stats:?}",
        started.elapsed()
    );
    assert_eq!(server_seen.load(Ordering::SeqCst), MESSAGES);
    assert!(cuts >= MIN_CUTS, "only {cuts} cuts");
    assert!(stats.connections > MIN_CUTS / 2, "{stats:?}");
    assert_eq!(stats.reconnects, stats.connections - 1, "{stats:?}");
    // The server keeps the stream through every cut: each new connection resumes it.
    assert!(
        stats.resumes > 0 && stats.resumes <= stats.reconnects,
        "{stats:?}"
    );
    // Closing works through cuts too.
    within(60, "close", writer.close()).await.unwrap();
    proxy.cutting.store(false, Ordering::SeqCst);
    assert!(reader.recv().await.unwrap().is_none(), "nothing more");
}

#[async_std::test]
async fn plain_session_clients_still_work_with_a_reliable_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ReliableServer::new(SessionConfig::new(), ReliableConfig::new());
    task::spawn(async move {
        let conn = listener.accept().await.unwrap();
        let accepted = server.accept(conn).await.unwrap();
        let connect::reliable::Accepted::Plain {
            mut session,
            driver,
        } = accepted
        else {
            panic!("a plain session expected")
        };
        task::spawn(driver);
        while let Some(any) = session.recv().await.unwrap() {
            session.send(any).await.unwrap();
        }
    });
    let mut session = tcp::connect_session(addr, &SessionConfig::new(), spawn)
        .await
        .unwrap();
    assert!(session.info().capabilities().is_empty());
    session.send(hello(7)).await.unwrap();
    let echoed = within(20, "echo", session.recv()).await.unwrap().unwrap();
    assert_eq!(sequence(&echoed), 7);
    let _ = reliable::CAPABILITY;
}

/// The byte-level examples of proto/PROTOCOL.md, section 10, are what our encoder writes.
#[test]
fn protocol_examples_match_the_encoder() {
    use connect::codec::Codec;
    use connect::proto::reliable::{Ack, Nack, Resume, ResumeStatus};
    use prost::Message;
    fn frame<M: prost::Name + Message>(msg: &M) -> String {
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
    let resume = Resume {
        stream_id: (0u8..16).collect(),
        received: 5,
        resumed: false,
        acknowledged: 3,
        window_messages: 1024,
        window_bytes: 4 << 20,
        incarnation: 0x0807_0605_0403_0201,
        ..Resume::default()
    };
    let answer = Resume {
        stream_id: (0u8..16).collect(),
        received: 4,
        resumed: true,
        acknowledged: 2,
        window_messages: 1024,
        window_bytes: 4 << 20,
        status: ResumeStatus::Resumed as i32,
        incarnation: 0x0807_0605_0403_0201,
        ..Resume::default()
    };
    let closed = Resume {
        stream_id: (0u8..16).collect(),
        status: ResumeStatus::Closed as i32,
        reason: "stream closed".into(),
        ..Resume::default()
    };
    let ack = Ack { delivered: 300 };
    let nack = Nack {
        sequence: 7,
        reason: NackReason::UnknownType as i32,
        text: "no handler".into(),
    };
    let frames = [
        frame(&resume),
        frame(&answer),
        frame(&closed),
        frame(&ack),
        frame(&nack),
    ];
    for hex in &frames {
        println!("{hex}");
    }
    for hex in frames {
        assert!(doc.contains(&hex), "PROTOCOL.md lacks {hex}");
    }
}

/// The reliable layer names no runtime: client and server on smol, no async-std involved.
#[test]
fn reliable_stream_on_smol() {
    let test = async {
        let listener = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = ReliableServer::new(SessionConfig::new(), ReliableConfig::new());
        smol::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let accepted = server
                .accept(connect::Connection::new(stream))
                .await
                .unwrap();
            let connect::reliable::Accepted::NewStream { stream, driver } = accepted else {
                panic!("a new stream expected")
            };
            smol::spawn(echo(stream)).detach();
            driver.await;
        })
        .detach();
        let connector = move || async move {
            Ok(connect::Connection::new(
                smol::net::TcpStream::connect(addr).await?,
            ))
        };
        let (mut stream, driver) =
            reliable::client(connector, SessionConfig::new(), ReliableConfig::new());
        smol::spawn(driver).detach();
        for i in 0..1000 {
            stream.feed(hello(i)).await.unwrap();
        }
        for i in 0..1000 {
            assert_eq!(sequence(&stream.recv().await.unwrap().unwrap()), i);
        }
        stream.close().await.unwrap();
    };
    smol::block_on(async {
        let limit = smol::Timer::after(Duration::from_secs(60));
        if let futures::future::Either::Right(_) =
            futures::future::select(Box::pin(test), limit).await
        {
            panic!("not done within 60 s");
        }
    });
}

/// Dropping the application's handles closes the stream gracefully, after delivering what
/// was queued: the peer reads every message, then the end.
#[async_std::test]
async fn dropping_the_stream_delivers_what_was_queued_then_closes() {
    let (done_tx, done_rx) = futures::channel::oneshot::channel();
    let done_tx = Arc::new(std::sync::Mutex::new(Some(done_tx)));
    let (addr, _server) = server(ReliableConfig::new(), move |mut stream: ReliableStream| {
        let done_tx = done_tx.clone();
        async move {
            let mut n = 0;
            let end = loop {
                match stream.recv().await {
                    Ok(Some(_)) => n += 1,
                    Ok(None) => break Ok(n),
                    Err(e) => break Err(e.to_string()),
                }
            };
            if let Some(tx) = done_tx.lock().unwrap().take() {
                let _ = tx.send(end);
            }
        }
    })
    .await;
    let mut stream = client(addr, client_config());
    for i in 0..500 {
        stream.feed(hello(i)).await.unwrap();
    }
    drop(stream);
    let end = within(30, "peer sees the end", done_rx).await.unwrap();
    assert_eq!(end, Ok(500));
}

/// An empty type URL is a message like any other: delivered, not taken for a refusal.
#[async_std::test]
async fn a_message_with_an_empty_type_url_is_delivered() {
    let (addr, _server) = server(ReliableConfig::new(), echo).await;
    let mut stream = client(addr, client_config());
    let empty = Any {
        type_url: String::new(),
        value: b"payload".to_vec(),
    };
    within(20, "confirmed", stream.send_confirmed(empty.clone()))
        .await
        .unwrap();
    within(20, "echo", stream.feed(hello(1))).await.unwrap();
    assert_eq!(
        within(20, "echo", stream.recv()).await.unwrap(),
        Some(empty)
    );
    assert_eq!(
        sequence(&within(20, "echo", stream.recv()).await.unwrap().unwrap()),
        1
    );
    within(20, "close", stream.close()).await.unwrap();
}

/// Two `Events` readers both see every event (no stealing from each other).
#[async_std::test]
async fn every_events_reader_gets_every_event() {
    let (addr, _server) = server(ReliableConfig::new(), echo).await;
    let mut stream = client(addr, client_config());
    let first = stream.events();
    let second = stream.events();
    within(20, "confirmed", stream.send_confirmed(hello(0)))
        .await
        .unwrap();
    within(20, "close", stream.close()).await.unwrap();
    let (a, b): (Vec<Event>, Vec<Event>) = within(
        20,
        "events",
        futures::future::join(
            futures::StreamExt::collect(first),
            futures::StreamExt::collect(second),
        ),
    )
    .await;
    assert_eq!(a, b);
    assert!(matches!(a.first(), Some(Event::Connected { .. })), "{a:?}");
    assert_eq!(a.last(), Some(&Event::Closed { reason: None }));
    // `next_event` reads its own queue.
    assert!(matches!(
        stream.next_event().await,
        Some(Event::Connected { .. })
    ));
}

/// `ack_every` above what the receive window lets through: the receiver acknowledges at half
/// its window anyway, so the sender never stalls (it stopped after 1024 messages with
/// `ack_every(2000)` and the default window). The acknowledgement delay is set far away so
/// that only the window can trigger the acknowledgements.
#[async_std::test]
async fn ack_every_above_the_window_does_not_stall_the_sender() {
    let config = ReliableConfig::new()
        .with_ack_every(2000)
        .with_ack_delay(Duration::from_secs(3600));
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    let (addr, _server) = server(config, move |mut stream: ReliableStream| {
        let count = count.clone();
        async move {
            while let Ok(Some(_)) = stream.recv().await {
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .await;
    let mut stream = client(addr, client_config());
    within(60, "5000 messages through a 1024-message window", async {
        for i in 0..5000 {
            stream.feed(hello(i)).await.unwrap();
        }
        // Without acknowledgements (ack_every and ack_delay both far) the sender would stop
        // at the window, 1024.
        while received.load(Ordering::SeqCst) < 5000 {
            task::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(stream.stats().sent, 5000);
}

/// A server application that drops a connection's driver (its task cancelled) leaves the
/// stream detached: it expires after the resume timeout like any dropped link, instead of
/// staying attached to a link that no longer runs and holding its slot in the table forever.
#[async_std::test]
async fn a_dropped_server_driver_lets_the_stream_expire() {
    let _ = env_logger::builder().is_test(true).try_init();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ReliableConfig::new().with_resume_timeout(Duration::from_millis(200));
    let server = ReliableServer::new(SessionConfig::new(), config);
    let stream = client(addr, client_config());
    let accepted = within(20, "accept", async {
        let conn = listener.accept().await.unwrap();
        server.accept(conn).await.unwrap()
    })
    .await;
    assert_eq!(server.stream_count(), 1);
    let connect::reliable::Accepted::NewStream {
        stream: session,
        driver,
    } = accepted
    else {
        panic!("a new stream expected")
    };
    let mut events = session.events();
    drop(driver);
    // The client's reconnections are never accepted.
    within(20, "the stream expires", async {
        while server.stream_count() > 0 {
            task::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let closed = within(20, "closed", async {
        loop {
            match futures::StreamExt::next(&mut events).await {
                Some(Event::Closed { reason }) => return reason,
                Some(_) => {}
                None => panic!("events ended without Closed"),
            }
        }
    })
    .await;
    assert!(matches!(
        closed,
        Some(connect::reliable::GiveUp::Expired { .. })
    ));
    drop(stream);
}

/// Nothing listens: after its last attempt the client gives the stream up with a typed reason
/// that counts the attempts and keeps what the last one reported.
#[async_std::test]
async fn exhausted_attempts_give_up_with_the_last_error() {
    use connect::reliable::GiveUp;
    // A free port: bound, then released.
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let config = ReliableConfig::new().with_backoff(
        Backoff::new()
            .with_initial(Duration::from_millis(1))
            .with_max(Duration::from_millis(5))
            .with_max_attempts(Some(3)),
    );
    let mut stream = tcp::connect_reliable(addr, SessionConfig::new(), config, spawn);
    let end = within(20, "given up", stream.recv()).await;
    match end {
        Err(connect::Error::Reliable(GiveUp::AttemptsExhausted {
            attempts,
            last_error,
        })) => {
            assert_eq!(attempts, 3);
            assert!(last_error.is_some(), "the last connect error is kept");
        }
        other => panic!("expected AttemptsExhausted, got {other:?}"),
    }
}

/// A server that accepts plain sessions only: the client gives up with `NotSupported`, and
/// its events say the same.
#[async_std::test]
async fn a_server_without_reliable_delivery_is_not_supported() {
    use connect::reliable::GiveUp;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    task::spawn(async move {
        while let Ok(conn) = listener.accept().await {
            if let Ok((session, driver)) =
                connect::session::accept(conn, &SessionConfig::new()).await
            {
                task::spawn(driver);
                task::spawn(async move {
                    let mut session = session;
                    while let Ok(Some(_)) = session.recv().await {}
                });
            }
        }
    });
    let mut stream = tcp::connect_reliable(addr, SessionConfig::new(), client_config(), spawn);
    let mut events = stream.events();
    let end = within(20, "given up", stream.recv()).await;
    assert!(
        matches!(end, Err(connect::Error::Reliable(GiveUp::NotSupported))),
        "{end:?}"
    );
    let closed = within(20, "closed", async {
        loop {
            match futures::StreamExt::next(&mut events).await {
                Some(Event::Closed { reason }) => return reason,
                Some(_) => {}
                None => panic!("events ended without Closed"),
            }
        }
    })
    .await;
    assert_eq!(closed, Some(GiveUp::NotSupported));
}

/// Acknowledgements that only the count or the delay would send: both set far away.
fn far_acks() -> ReliableConfig {
    client_config()
        .with_ack_every(2000)
        .with_ack_delay(Duration::from_secs(3600))
}

/// A `send` (which waits for the peer's confirmation) in a ping-pong is confirmed as soon as
/// the peer's application has taken the message and nothing more is coming: it never waits
/// for the acknowledgement delay (it took the delay, 10 ms by default, per message; here an
/// hour, so it would hang).
#[async_std::test]
async fn a_send_in_ping_pong_is_confirmed_without_the_ack_delay() {
    let (addr, _server) = server(far_acks(), |mut stream: ReliableStream| async move {
        while let Ok(Some(any)) = stream.recv().await {
            if stream.send(any).await.is_err() {
                break;
            }
        }
    })
    .await;
    let mut stream = client(addr, far_acks());
    within(60, "20 confirmed round trips", async {
        for i in 0..20 {
            stream.send(hello(i)).await.unwrap();
            let echoed = stream.recv().await.unwrap().unwrap();
            assert_eq!(sequence(&echoed), i);
        }
    })
    .await;
    assert_eq!(stream.stats().confirmed, 20);
}

/// A peer that closes right after taking the last message acknowledges it before the close,
/// so that message's `send` succeeds (it failed with `Closed` when the close overtook the
/// delayed acknowledgement).
#[async_std::test]
async fn the_last_send_before_the_peer_closes_is_confirmed() {
    let (addr, _server) = server(far_acks(), |mut stream: ReliableStream| async move {
        if let Ok(Some(_)) = stream.recv().await {
            let _ = stream.close().await;
        }
    })
    .await;
    let mut stream = client(addr, far_acks());
    within(60, "the last send", stream.send(hello(0)))
        .await
        .unwrap();
    assert_eq!(stream.stats().confirmed, 1);
}

/// Sends `message(0..count)` (every third one as an `Any` with `as_any`) through a proxy that
/// cuts each connection after at most `cut_budget` bytes, checks each echo byte for byte, then
/// closes.
async fn survive_cuts<M>(count: u64, message: fn(u64) -> M, cut_budget: u64, as_any: bool)
where
    M: prost::Message + prost::Name + Default + PartialEq + 'static,
{
    let (upstream, _server) = server(ReliableConfig::new(), echo).await;
    let proxy = cutting_proxy(upstream, cut_budget).await;
    let (mut reader, mut writer) = client(proxy.addr, client_config()).split();
    let sender = task::spawn(async move {
        for i in 0..count {
            if as_any && i % 3 == 0 {
                writer
                    .feed(connect::codec::pack(&message(i)))
                    .await
                    .unwrap();
            } else {
                writer.feed_message(&message(i)).await.unwrap();
            }
        }
        writer
    });
    within(120, "transfer", async {
        for i in 0..count {
            let echoed: M = reader.recv().await.unwrap().unwrap().to_msg().unwrap();
            assert!(echoed == message(i), "message {i} differs");
        }
    })
    .await;
    let mut writer = sender.await;
    assert!(
        proxy.cuts.load(Ordering::SeqCst) > 0,
        "the proxy cut nothing"
    );
    within(60, "close", writer.close()).await.unwrap();
}

/// Large values (written from the retransmit queue by reference, not copied) and small ones,
/// typed and as `Any`, arrive intact and in order through a proxy that cuts the connection:
/// the same queued value goes out again on each new link.
#[async_std::test]
async fn large_and_small_messages_survive_cuts_byte_for_byte() {
    fn message(i: u64) -> HelloWorld {
        let len = match i % 4 {
            0 => 16 << 10,
            1 => 7,
            2 => (64 << 10) + i as usize,
            _ => 300,
        };
        let fill = char::from(b'a' + (i % 26) as u8);
        HelloWorld {
            text: std::iter::repeat_n(fill, len).collect(),
            sequence: i,
        }
    }
    survive_cuts(120, message, 400_000, true).await;
}

/// `Bytes` fields of 16 KiB or more stay where the application had them in the retransmit
/// queue and are written from there on every link.
#[async_std::test]
async fn large_bytes_fields_survive_cuts_byte_for_byte() {
    fn message(i: u64) -> Chunks {
        let lens = [(16 << 10) + 1, 5, (64 << 10) + 3, 0, 200];
        Chunks {
            sequence: i,
            parts: (0..=i % 3)
                .map(|k| bytes::Bytes::from(vec![(i + k) as u8; lens[((i + k) % 5) as usize]]))
                .collect(),
            note: "n".repeat((i % 7) as usize),
        }
    }
    survive_cuts(90, message, 300_000, false).await;
}
