//! Request/reply on a `Peer` (PROTOCOL.md §11): many calls in flight over a connection, a
//! session and a reliable stream (through connection cuts), deadlines, cancellation, statuses,
//! and every bad input of the spec answered as it says, with bounded memory.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connect::dispatch::{Context, Dispatcher, Reply};
use connect::peer::{Peer, PeerConfig};
use connect::prost_types::Any;
use connect::proto::example::HelloWorld;
use connect::proto::rpc::{response, Cancel, Request, Response};
use connect::reliable::{Accepted, Backoff, ReliableConfig, ReliableServer};
use connect::rpc::{CallError, CallOptions, Status, StatusCode, Violation};
use connect::session::SessionConfig;
use connect::transport::tcp::{self, TcpConnection, TcpListener};
use connect::Error;
use support::proxy::cutting_proxy;
use support::{spawn, within};

fn hello(text: &str) -> HelloWorld {
    HelloWorld {
        text: text.into(),
        sequence: 0,
    }
}

/// What the test service saw: handlers started, handlers dropped before finishing, and how
/// many times each text was handled.
#[derive(Default)]
struct Seen {
    started: AtomicUsize,
    dropped: AtomicUsize,
    handled: Mutex<HashMap<String, usize>>,
    /// Released by a "release" request; "wait" requests wait for it.
    gate: Mutex<Option<async_channel::Sender<()>>>,
    gate_rx: Mutex<Option<async_channel::Receiver<()>>>,
}

/// Counts a handler dropped before it finished.
struct DropGuard(Arc<Seen>, bool);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The service: answers HelloWorld requests by their text.
fn service(seen: Arc<Seen>) -> Dispatcher {
    let (gate_tx, gate_rx) = async_channel::bounded::<()>(1);
    *seen.gate.lock().unwrap() = Some(gate_tx);
    *seen.gate_rx.lock().unwrap() = Some(gate_rx.clone());
    Dispatcher::new().on(move |hello: HelloWorld, cx: Context| {
        let seen = seen.clone();
        let gate = gate_rx.clone();
        async move {
            seen.started.fetch_add(1, Ordering::SeqCst);
            *seen
                .handled
                .lock()
                .unwrap()
                .entry(hello.text.clone())
                .or_default() += 1;
            let mut guard = DropGuard(seen.clone(), false);
            let text = hello.text.as_str();
            let reply: Result<Reply, Box<dyn std::error::Error + Send + Sync>> = match text {
                "hang" => std::future::pending().await,
                "wait" => {
                    // Returns once a "release" request ran: only if handlers run concurrently.
                    let _ = gate.recv().await;
                    Ok(Reply::message(&hello))
                }
                "release" => {
                    seen.gate.lock().unwrap().take();
                    Ok(Reply::message(&hello))
                }
                "denied" => Err(Status::permission_denied("not you").into()),
                "boom" => Err("boom".into()),
                "wrong type" => Ok(Reply::message(&Cancel { id: 1 })),
                "metadata" => {
                    let call = cx.call().expect("a call");
                    let user = call.metadata().get("user").cloned().unwrap_or_default();
                    Ok(Reply::message(&HelloWorld {
                        text: format!("{user} {}", call.deadline().is_some()),
                        ..hello
                    }))
                }
                _ if text.starts_with("sleep ") => {
                    let ms = text[6..].parse().unwrap_or(0);
                    async_std::task::sleep(Duration::from_millis(ms)).await;
                    Ok(Reply::message(&hello))
                }
                _ => Ok(Reply::message(&HelloWorld {
                    text: text.to_uppercase(),
                    ..hello
                })),
            };
            guard.1 = true;
            reply
        }
    })
}

/// The client's own dispatcher: records one-way HelloWorlds.
fn one_way_recorder() -> (Dispatcher, async_channel::Receiver<String>) {
    let (tx, rx) = async_channel::unbounded();
    let dispatcher = Dispatcher::new().on(move |hello: HelloWorld, _: Context| {
        let tx = tx.clone();
        async move {
            tx.send(hello.text).await.ok();
            Ok::<_, Error>(Reply::none())
        }
    });
    (dispatcher, rx)
}

#[derive(Clone, Copy, Debug)]
enum Layer {
    Connection,
    Session,
    Reliable,
}

/// A server peer running `service` on `layer`, and a client peer to it.
async fn linked(
    layer: Layer,
    config: PeerConfig,
) -> (Peer, Arc<Seen>, async_channel::Receiver<String>) {
    let seen = Arc::new(Seen::default());
    let dispatcher = Arc::new(service(seen.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_config = config.clone();
    async_std::task::spawn(async move {
        let conn = listener.accept().await.unwrap();
        let driver = match layer {
            Layer::Connection => Peer::new(conn, dispatcher, &server_config).1,
            Layer::Session => {
                let session = tcp::accept_session(conn, &SessionConfig::new(), spawn)
                    .await
                    .unwrap();
                Peer::new(session, dispatcher, &server_config).1
            }
            Layer::Reliable => {
                let server = ReliableServer::new(SessionConfig::new(), ReliableConfig::new());
                let connect::reliable::Accepted::NewStream { stream, driver } =
                    server.accept(conn).await.unwrap()
                else {
                    panic!("a new stream")
                };
                spawn(Box::pin(driver));
                Peer::new(stream, dispatcher, &server_config).1
            }
        };
        driver.await;
    });
    let (recorder, one_way) = one_way_recorder();
    let (peer, driver) = match layer {
        Layer::Connection => Peer::new(tcp::connect(addr).await.unwrap(), recorder, &config),
        Layer::Session => {
            let session = tcp::connect_session(addr, &SessionConfig::new(), spawn)
                .await
                .unwrap();
            Peer::new(session, recorder, &config)
        }
        Layer::Reliable => {
            let stream =
                tcp::connect_reliable(addr, SessionConfig::new(), ReliableConfig::new(), spawn);
            Peer::new(stream, recorder, &config)
        }
    };
    async_std::task::spawn(driver);
    (peer, seen, one_way)
}

/// Everything a caller can see, on one link.
async fn exercise(layer: Layer) {
    let (peer, seen, one_way) = linked(layer, PeerConfig::new()).await;

    // Many calls from many tasks, all in flight at once, each answered with its own reply.
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let peer = peer.clone();
            async_std::task::spawn(async move {
                let calls = (0..25).map(|i| {
                    let peer = peer.clone();
                    async move {
                        let text = format!("t{task} c{i}");
                        let reply: HelloWorld = peer.call(&hello(&text)).await.unwrap();
                        assert_eq!(reply.text, text.to_uppercase());
                    }
                });
                futures::future::join_all(calls).await;
            })
        })
        .collect();
    within(30, "200 calls", futures::future::join_all(tasks)).await;

    // Handlers run concurrently: "wait" returns only after "release" ran.
    let wait_request = hello("wait");
    let wait = peer.call::<_, HelloWorld>(&wait_request);
    let release = async {
        async_std::task::sleep(Duration::from_millis(20)).await;
        peer.call::<_, HelloWorld>(&hello("release")).await
    };
    let (waited, released) =
        within(30, "wait and release", futures::future::join(wait, release)).await;
    assert_eq!(waited.unwrap().text, "wait");
    assert_eq!(released.unwrap().text, "release");

    // Errors: a status of the handler's choosing, any other error, no handler, wrong type.
    let denied = peer.call::<_, HelloWorld>(&hello("denied")).await;
    assert!(
        matches!(&denied, Err(CallError::Status(s)) if s.code() == StatusCode::PermissionDenied && s.message() == "not you"),
        "{denied:?}"
    );
    let boom = peer.call::<_, HelloWorld>(&hello("boom")).await;
    assert!(
        matches!(&boom, Err(CallError::Status(s)) if s.code() == StatusCode::Internal && s.message().contains("boom")),
        "{boom:?}"
    );
    let stranger = Any {
        type_url: "type.googleapis.com/no.Such".into(),
        value: vec![],
    };
    let unknown = peer.call_any(stranger, CallOptions::new()).await;
    assert!(
        matches!(&unknown, Err(CallError::Status(s)) if s.code() == StatusCode::NotFound),
        "{unknown:?}"
    );
    let wrong = peer.call::<_, HelloWorld>(&hello("wrong type")).await;
    assert!(
        matches!(&wrong, Err(CallError::WrongType { expected, any }) if expected == "connect.example.v1.HelloWorld" && any.type_url.ends_with("rpc.v1.Cancel")),
        "{wrong:?}"
    );

    // Metadata and the deadline reach the handler.
    let options = CallOptions::new()
        .with_metadata("user", "ada")
        .with_timeout(Duration::from_secs(10));
    let reply: HelloWorld = peer.call_with(&hello("metadata"), options).await.unwrap();
    assert_eq!(reply.text, "ada true");
    let options = CallOptions::new().without_timeout();
    let reply: HelloWorld = peer.call_with(&hello("metadata"), options).await.unwrap();
    assert_eq!(reply.text, " false");

    // One-way messages share the link: the server's one-way answer reaches our dispatcher.
    peer.send_message(&hello("one way")).await.unwrap();
    assert_eq!(
        within(10, "one-way echo", one_way.recv()).await.unwrap(),
        "ONE WAY"
    );

    // A deadline: the call fails, the handler is dropped.
    let options = CallOptions::new().with_timeout(Duration::from_millis(50));
    let late = peer
        .call_with::<_, HelloWorld>(&hello("hang"), options)
        .await;
    assert!(matches!(late, Err(CallError::DeadlineExceeded)), "{late:?}");
    within(
        10,
        "handler dropped",
        until(|| seen.dropped.load(Ordering::SeqCst) == 1),
    )
    .await;

    // The link is still fine after all that.
    let reply: HelloWorld = peer.call(&hello("still here")).await.unwrap();
    assert_eq!(reply.text, "STILL HERE");
    assert_eq!(peer.calls_in_flight(), 0);
    within(20, "close", peer.close()).await.unwrap();
    let after = peer.call::<_, HelloWorld>(&hello("too late")).await;
    assert!(
        matches!(after, Err(CallError::Closed(Some(Ok(()))))),
        "{after:?}"
    );
}

/// Waits (polling every few ms) until `condition` holds.
async fn until(condition: impl Fn() -> bool) {
    while !condition() {
        async_std::task::sleep(Duration::from_millis(5)).await;
    }
}

#[async_std::test]
async fn calls_over_a_connection() {
    exercise(Layer::Connection).await;
}

#[async_std::test]
async fn calls_over_a_session() {
    exercise(Layer::Session).await;
}

#[async_std::test]
async fn calls_over_a_reliable_stream() {
    exercise(Layer::Reliable).await;
}

#[async_std::test]
async fn dropping_a_call_cancels_its_handler() {
    let config = PeerConfig::new().with_call_timeout(None);
    let (peer, seen, _) = linked(Layer::Connection, config).await;
    let call = async_std::task::spawn({
        let peer = peer.clone();
        async move { peer.call::<_, HelloWorld>(&hello("hang")).await }
    });
    within(
        10,
        "started",
        until(|| seen.started.load(Ordering::SeqCst) == 1),
    )
    .await;
    // No deadline anywhere: only the Cancel can stop the handler.
    call.cancel().await;
    within(
        10,
        "handler dropped",
        until(|| seen.dropped.load(Ordering::SeqCst) == 1),
    )
    .await;
    assert_eq!(peer.calls_in_flight(), 0);
    let reply: HelloWorld = peer.call(&hello("next")).await.unwrap();
    assert_eq!(reply.text, "NEXT");
}

/// A raw client on a plain connection to a `Peer` running the service.
async fn raw_client(
    config: PeerConfig,
) -> (
    TcpConnection,
    Arc<Seen>,
    async_std::task::JoinHandle<Result<(), Arc<Error>>>,
) {
    let seen = Arc::new(Seen::default());
    let dispatcher = service(seen.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = async_std::task::spawn(async move {
        let (peer, driver) = Peer::new(listener.accept().await.unwrap(), dispatcher, &config);
        async_std::task::spawn(driver);
        peer.closed().await
    });
    (tcp::connect(addr).await.unwrap(), seen, server)
}

fn request(id: u64, text: &str, timeout_ms: u64) -> Request {
    Request {
        id,
        body: Some(Any::from_msg(&hello(text)).unwrap()),
        timeout_ms,
        metadata: Default::default(),
    }
}

async fn response(conn: &mut TcpConnection) -> Response {
    within(10, "response", conn.recv_message::<Response>())
        .await
        .unwrap()
        .expect("a response")
}

fn body_text(response: &Response) -> String {
    match &response.result {
        Some(response::Result::Body(body)) => body.to_msg::<HelloWorld>().unwrap().text,
        other => panic!("no body: {other:?}"),
    }
}

fn code(response: &Response) -> StatusCode {
    match &response.result {
        Some(response::Result::Status(status)) => StatusCode::try_from(status.code).unwrap(),
        other => panic!("no status: {other:?}"),
    }
}

#[async_std::test]
async fn stray_responses_and_cancels_are_ignored_and_odd_timeouts_are_no_deadline() {
    let (mut conn, _seen, server) = raw_client(PeerConfig::new()).await;
    conn.feed_message(&Response {
        id: 9,
        result: None,
    })
    .await
    .unwrap();
    conn.feed_message(&Cancel { id: 10 }).await.unwrap();
    conn.feed_message(&request(1, "sleep 30", 0)).await.unwrap();
    conn.feed_message(&request(2, "sleep 30", u64::MAX))
        .await
        .unwrap();
    conn.feed_message(&Request {
        body: None,
        ..request(3, "", 0)
    })
    .await
    .unwrap();
    conn.send_message(&request(4, "hang", 20)).await.unwrap();
    let mut answers: Vec<Response> = Vec::new();
    for _ in 0..4 {
        answers.push(response(&mut conn).await);
    }
    answers.sort_by_key(|r| r.id);
    assert_eq!(body_text(&answers[0]), "sleep 30");
    assert_eq!(body_text(&answers[1]), "sleep 30");
    assert_eq!(code(&answers[2]), StatusCode::InvalidArgument);
    assert_eq!(
        code(&answers[3]),
        StatusCode::DeadlineExceeded,
        "the responder's own deadline"
    );
    // A Cancel for a request already answered is ignored too, and the link lives on.
    conn.send_message(&Cancel { id: 4 }).await.unwrap();
    conn.send_message(&request(5, "x", 0)).await.unwrap();
    assert_eq!(body_text(&response(&mut conn).await), "X");
    conn.close().await.unwrap();
    assert!(within(10, "server end", server).await.is_ok());
}

#[async_std::test]
async fn a_request_id_reused_in_flight_or_zero_ends_the_link() {
    for (second, violation) in [
        (request(5, "x", 0), Violation::RequestIdInFlight(5)),
        (request(0, "x", 0), Violation::ZeroRequestId),
    ] {
        let (mut conn, _seen, server) = raw_client(PeerConfig::new()).await;
        conn.feed_message(&request(5, "hang", 0)).await.unwrap();
        conn.send_message(&second).await.unwrap();
        let end = within(10, "server end", server)
            .await
            .expect_err("a violation");
        assert!(matches!(&*end, Error::Rpc(v) if *v == violation), "{end}");
        // The connection is closed; nothing was answered.
        assert!(matches!(
            within(10, "end", conn.recv()).await,
            Ok(None) | Err(_)
        ));
    }
}

#[async_std::test]
async fn a_cancelled_request_gets_no_response() {
    let (mut conn, seen, _server) = raw_client(PeerConfig::new()).await;
    conn.send_message(&request(1, "hang", 0)).await.unwrap();
    within(
        10,
        "started",
        until(|| seen.started.load(Ordering::SeqCst) == 1),
    )
    .await;
    conn.send_message(&Cancel { id: 1 }).await.unwrap();
    within(
        10,
        "dropped",
        until(|| seen.dropped.load(Ordering::SeqCst) == 1),
    )
    .await;
    // The next answer is the next request's: none came for the cancelled one.
    conn.send_message(&request(2, "after", 0)).await.unwrap();
    let answer = response(&mut conn).await;
    assert_eq!((answer.id, body_text(&answer)), (2, "AFTER".to_string()));
}

#[async_std::test]
async fn at_most_the_configured_number_of_handlers_run_and_reading_pauses() {
    const MAX: usize = 4;
    let config = PeerConfig::new().with_max_concurrent_requests(MAX);
    let (mut conn, seen, _server) = raw_client(config).await;
    // The first MAX hang until their deadline; the others hang for ever.
    for id in 1..=40 {
        let timeout_ms = if id <= MAX as u64 { 300 } else { 0 };
        conn.feed_message(&request(id, "hang", timeout_ms))
            .await
            .unwrap();
    }
    conn.flush().await.unwrap();
    // The first MAX are answered DEADLINE_EXCEEDED (their handlers dropped), which frees their
    // slots for the next MAX, and no more: the rest wait (MAX of them read, the others unread).
    for _ in 0..MAX {
        let late = response(&mut conn).await;
        assert!(late.id <= MAX as u64, "{late:?}");
        assert_eq!(code(&late), StatusCode::DeadlineExceeded);
    }
    within(
        10,
        "next started",
        until(|| seen.started.load(Ordering::SeqCst) == 2 * MAX),
    )
    .await;
    async_std::task::sleep(Duration::from_millis(200)).await;
    assert_eq!(seen.started.load(Ordering::SeqCst), 2 * MAX);
    assert_eq!(seen.dropped.load(Ordering::SeqCst), MAX);
}

#[async_std::test]
async fn a_peer_that_never_reads_its_responses_is_stopped_being_read() {
    const REQUESTS: u64 = 300_000;
    let (conn, seen, _server) = raw_client(PeerConfig::new()).await;
    let (_reader, mut writer) = conn.split();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let flood = async_std::task::spawn(async move {
        for id in 1..=REQUESTS {
            if writer.feed_message(&request(id, "x", 0)).await.is_err() {
                return;
            }
            counter.fetch_add(1, Ordering::SeqCst);
        }
        writer.flush().await.ok();
    });
    // Handling stops (kernel buffers are full of unread responses, the server's own are at
    // their bound), long before the flood is through.
    let mut last = usize::MAX;
    within(60, "handling stops", async {
        loop {
            async_std::task::sleep(Duration::from_millis(300)).await;
            let now = seen.started.load(Ordering::SeqCst);
            if now == last {
                break;
            }
            last = now;
        }
    })
    .await;
    let handled = seen.started.load(Ordering::SeqCst) as u64;
    assert!(handled < REQUESTS / 2, "{handled} handled");
    assert!(
        (sent.load(Ordering::SeqCst) as u64) < REQUESTS,
        "the flood is held up"
    );
    flood.cancel().await;
}

#[async_std::test]
async fn duplicate_and_unknown_responses_reach_no_call() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A raw responder answering each request twice, after a response for an id never used.
    async_std::task::spawn(async move {
        let mut conn = listener.accept().await.unwrap();
        while let Ok(Some(request)) = conn.recv_message::<Request>().await {
            let text = request.body.unwrap().to_msg::<HelloWorld>().unwrap().text;
            for copy in ["first", "second"] {
                let body = Any::from_msg(&hello(&format!("{text} {copy}"))).unwrap();
                conn.feed_message(&Response {
                    id: 777,
                    result: Some(response::Result::Body(body.clone())),
                })
                .await
                .unwrap();
                conn.feed_message(&Response {
                    id: request.id,
                    result: Some(response::Result::Body(body)),
                })
                .await
                .unwrap();
            }
            conn.flush().await.unwrap();
        }
    });
    let (peer, driver) = Peer::new(
        tcp::connect(addr).await.unwrap(),
        Dispatcher::new(),
        &PeerConfig::new(),
    );
    async_std::task::spawn(driver);
    for text in ["a", "b", "c"] {
        let reply: HelloWorld = within(10, "call", peer.call(&hello(text))).await.unwrap();
        assert_eq!(reply.text, format!("{text} first"));
    }
    assert!(peer.end().is_none(), "the link lives on");
}

#[async_std::test]
async fn a_call_fails_when_the_link_ends_under_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    async_std::task::spawn(async move {
        let mut conn = listener.accept().await.unwrap();
        // Reads the request, then hangs up without answering.
        let _ = conn.recv().await;
        conn.close().await.ok();
    });
    let (peer, driver) = Peer::new(
        tcp::connect(addr).await.unwrap(),
        Dispatcher::new(),
        &PeerConfig::new(),
    );
    async_std::task::spawn(driver);
    let closed = within(10, "call", peer.call::<_, HelloWorld>(&hello("a"))).await;
    assert!(
        matches!(closed, Err(CallError::Closed(Some(Ok(()))))),
        "{closed:?}"
    );
    let zero = peer
        .call_with::<_, HelloWorld>(&hello("a"), CallOptions::new().with_timeout(Duration::ZERO))
        .await;
    assert!(matches!(zero, Err(CallError::DeadlineExceeded)), "{zero:?}");
}

/// Serves reliable streams on `listener` with `dispatcher`, across reconnections.
fn reliable_server(listener: TcpListener, dispatcher: Arc<Dispatcher>) {
    let session = SessionConfig::new().with_heartbeat(Some(Duration::from_millis(500)));
    let server = ReliableServer::new(
        session,
        ReliableConfig::new().with_resume_timeout(Duration::from_secs(30)),
    );
    async_std::task::spawn(async move {
        while let Ok(conn) = listener.accept().await {
            let server = server.clone();
            let dispatcher = dispatcher.clone();
            async_std::task::spawn(async move {
                let Ok(accepted) = server.accept(conn).await else {
                    return;
                };
                match accepted {
                    Accepted::NewStream { stream, driver } => {
                        let (_peer, peer_driver) =
                            Peer::new(stream, dispatcher, &PeerConfig::new());
                        async_std::task::spawn(peer_driver);
                        driver.await;
                    }
                    Accepted::Resumed { driver } => driver.await,
                    _ => {}
                }
            });
        }
    });
}

#[async_std::test]
async fn reliable_calls_survive_connection_cuts_and_run_once() {
    const CALLS: usize = 2_000;
    const IN_FLIGHT: usize = 32;
    let seen = Arc::new(Seen::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream: SocketAddr = listener.local_addr().unwrap();
    reliable_server(listener, Arc::new(service(seen.clone())));
    let proxy = cutting_proxy(upstream, 20_000).await;
    let config = ReliableConfig::new().with_backoff(
        Backoff::new()
            .with_initial(Duration::from_millis(1))
            .with_max(Duration::from_millis(20))
            .with_max_attempts(Some(500)),
    );
    let session = SessionConfig::new().with_heartbeat(Some(Duration::from_millis(500)));
    let stream = tcp::connect_reliable(proxy.addr, session, config, spawn);
    let (peer, driver) = Peer::new(
        stream,
        Dispatcher::new(),
        &PeerConfig::new().with_call_timeout(None),
    );
    async_std::task::spawn(driver);
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|worker| {
            let peer = peer.clone();
            async_std::task::spawn(async move {
                for i in (worker..CALLS).step_by(IN_FLIGHT) {
                    let text = format!("call {i}");
                    let reply: HelloWorld = peer.call(&hello(&text)).await.unwrap();
                    assert_eq!(reply.text, text.to_uppercase());
                }
            })
        })
        .collect();
    within(
        120,
        "calls through cuts",
        futures::future::join_all(workers),
    )
    .await;
    let cuts = proxy.cuts.load(Ordering::SeqCst);
    let handled = seen.handled.lock().unwrap();
    println!("{CALLS} calls through {cuts} cuts");
    assert_eq!(handled.len(), CALLS);
    assert!(handled.values().all(|&n| n == 1), "a request handled twice");
    assert!(cuts >= 5, "only {cuts} cuts");
}

#[async_std::test]
async fn a_one_way_handler_may_call_the_same_peer() {
    // The client's handler of a one-way message calls the server and waits for the answer:
    // the driver reads on (up to one more one-way message) while that handler runs, so the
    // response gets through.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let service = service(seen);
    async_std::task::spawn(async move {
        let (peer, driver) = Peer::new(
            listener.accept().await.unwrap(),
            service,
            &PeerConfig::new(),
        );
        async_std::task::spawn(driver);
        // One-way, unprompted: the client's handler reacts with a call.
        peer.send_message(&hello("ask")).await.unwrap();
        peer.closed().await.ok();
    });
    let me: Arc<Mutex<Option<Peer>>> = Arc::default();
    let (answers_tx, answers) = async_channel::bounded(1);
    let handler_peer = me.clone();
    let dispatcher = Dispatcher::new().on(move |hello: HelloWorld, _: Context| {
        let peer = handler_peer
            .lock()
            .unwrap()
            .clone()
            .expect("set before any message");
        let answers = answers_tx.clone();
        async move {
            let options = CallOptions::new().with_timeout(Duration::from_secs(10));
            let reply = peer.call_with::<_, HelloWorld>(&hello, options).await;
            answers.send(reply.map(|r| r.text)).await.ok();
            Ok::<_, Error>(Reply::none())
        }
    });
    let (peer, driver) = Peer::new(
        tcp::connect(addr).await.unwrap(),
        dispatcher,
        &PeerConfig::new(),
    );
    *me.lock().unwrap() = Some(peer.clone());
    async_std::task::spawn(driver);
    let answer = within(20, "the handler's call", answers.recv())
        .await
        .unwrap();
    assert_eq!(answer.unwrap(), "ASK");
}
