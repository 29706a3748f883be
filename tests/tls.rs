//! TLS over loopback with certificates made at test time: echo through the dispatcher with
//! self-signed and CA-signed server certificates, mutual TLS, every certificate failure as a
//! typed error, and clients that fail their handshake without disturbing anyone else.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_std::io::{ReadExt, WriteExt};
use connect::dispatch::{Context, Dispatcher, Reply};
use connect::proto::example::HelloWorld;
use connect::transport::tls::{
    self, pki_types::ServerName, rustls, Identity, TlsConnection, TlsListener, TlsServerConfig,
};
use connect::{Error, PeerIdentity, TlsConfigProblem, TlsError, TlsProtocolProblem};
use futures::channel::mpsc;
use futures::StreamExt;
use prost_types::Any;
use support::certs::{client_config, self_signed, server_config, Ca, Leaf, Role};

/// Fails a test that hangs instead of letting it block CI. Not a timing assertion: every test
/// here finishes in well under a second on a quiet machine.
async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    async_std::future::timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 60 s"))
}

/// What the test server saw.
#[derive(Debug)]
enum Event {
    Accepted(Option<PeerIdentity>),
    Failed(Error),
    Served(connect::Result<()>),
}

/// Runs `listener` in a task: every connection is served by an echo dispatcher, and every
/// accept, failure and end of service is reported on the returned channel.
fn spawn_echo_server(mut listener: TlsListener) -> (SocketAddr, mpsc::UnboundedReceiver<Event>) {
    let addr = listener.local_addr();
    let (events, rx) = mpsc::unbounded();
    let dispatcher = Arc::new(
        Dispatcher::new()
            .fallback(|any: Any, _: Context| async move { Ok::<_, Error>(Reply::any(any)) }),
    );
    async_std::task::spawn(async move {
        while let Some(result) = listener.next().await {
            match result {
                Ok(conn) => {
                    let _ = events.unbounded_send(Event::Accepted(conn.peer_identity().cloned()));
                    let (dispatcher, events) = (dispatcher.clone(), events.clone());
                    async_std::task::spawn(async move {
                        let _ = events.unbounded_send(Event::Served(dispatcher.serve(conn).await));
                    });
                }
                Err(e) => {
                    let _ = events.unbounded_send(Event::Failed(e));
                }
            }
        }
    });
    (addr, rx)
}

async fn start(server: TlsServerConfig) -> (SocketAddr, mpsc::UnboundedReceiver<Event>) {
    let listener = TlsListener::bind("127.0.0.1:0", server)
        .await
        .expect("bind");
    spawn_echo_server(listener)
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    bounded("server event", events.next())
        .await
        .expect("server still running")
}

/// Sends `count` messages pipelined, then checks they all come back unchanged and in order.
async fn echo(conn: &mut TlsConnection, round: u32, count: u64) {
    for i in 0..count {
        let msg = HelloWorld {
            text: format!("round {round} message {i} {}", "x".repeat(i as usize * 10)),
            sequence: i,
        };
        conn.feed_message(&msg).await.expect("feed");
    }
    conn.flush().await.expect("flush");
    for i in 0..count {
        let reply: HelloWorld = bounded("echo", conn.recv_message())
            .await
            .expect("recv")
            .expect("a reply, not end of stream");
        assert_eq!(reply.sequence, i);
        assert!(reply
            .text
            .starts_with(&format!("round {round} message {i} ")));
    }
}

/// Closes the client side and checks that the server saw a clean end (TLS close_notify, then
/// end of stream), not an error.
async fn close_cleanly(mut conn: TlsConnection, events: &mut mpsc::UnboundedReceiver<Event>) {
    conn.close().await.expect("close");
    match next_event(events).await {
        Event::Served(Ok(())) => {}
        other => panic!("server should have seen a clean close, got {other:?}"),
    }
    // The server closed its side too: we read a clean end of stream.
    assert!(conn.recv().await.expect("clean end").is_none());
}

/// The error inside a failed handshake the server reported.
fn handshake_failure(event: Event) -> Error {
    match event {
        Event::Failed(Error::Tls(TlsError::Handshake { source, peer_addr })) => {
            assert!(peer_addr.is_some(), "the failure names the client");
            *source
        }
        other => panic!("expected a failed handshake, got {other:?}"),
    }
}

#[async_std::test]
async fn echo_with_a_self_signed_server_certificate() {
    let server = self_signed("localhost", &["localhost"]);
    let (addr, mut events) = start(server_config(&server, None)).await;

    let client = client_config(server.certificates(), None);
    let mut conn = tls::connect(addr, "localhost", &client)
        .await
        .expect("connect");
    let identity = conn.peer_identity().expect("server identity").clone();
    assert_eq!(identity.common_name(), Some("localhost"));
    assert_eq!(identity.dns_names(), ["localhost"]);
    assert_eq!(identity.certificates(), [server.certificates()[0].to_vec()]);

    match next_event(&mut events).await {
        Event::Accepted(None) => {} // no client certificate asked for
        other => panic!("unexpected {other:?}"),
    }
    echo(&mut conn, 1, 50).await;
    let (version, conn) = protocol_version(conn);
    assert_eq!(
        version,
        Some(rustls::ProtocolVersion::TLSv1_3),
        "TLS 1.3 is preferred"
    );
    close_cleanly(conn, &mut events).await;
}

#[async_std::test]
async fn echo_with_a_ca_signed_server_certificate_by_name_and_by_ip() {
    let ca = Ca::new("test CA");
    let server = ca.issue("server", &["localhost", "127.0.0.1"], Role::Server);
    let (addr, mut events) = start(server_config(&server, None)).await;
    let client = client_config(ca.certificates(), None);

    for name in ["localhost", "127.0.0.1"] {
        let mut conn = tls::connect(addr, name, &client).await.expect("connect");
        let identity = conn.peer_identity().expect("server identity");
        assert_eq!(identity.common_name(), Some("server"));
        assert_eq!(
            identity.ip_addresses(),
            ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(matches!(
            next_event(&mut events).await,
            Event::Accepted(None)
        ));
        echo(&mut conn, 1, 20).await;
        // One large message: many TLS records (16 KiB each) for one frame.
        let big = HelloWorld {
            text: "y".repeat(1 << 20),
            sequence: 7,
        };
        conn.send_message(&big).await.expect("send 1 MiB");
        let back: HelloWorld = conn.recv_message().await.expect("recv").expect("reply");
        assert_eq!(back, big);
        close_cleanly(conn, &mut events).await;
    }
}

#[async_std::test]
async fn tls_1_2_works_too() {
    let ca = Ca::new("test CA");
    let server = ca.issue("server", &["localhost"], Role::Server);
    let (addr, mut events) = start(server_config(&server, None)).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.certificates().remove(0)).unwrap();
    let tls12_only = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let client = tls::TlsClientConfig::from_rustls(Arc::new(tls12_only));

    let mut conn = tls::connect(addr, "localhost", &client)
        .await
        .expect("connect");
    assert!(matches!(
        next_event(&mut events).await,
        Event::Accepted(None)
    ));
    echo(&mut conn, 1, 20).await;
    let (version, mut conn) = protocol_version(conn);
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_2));
    echo(&mut conn, 2, 20).await;
    close_cleanly(conn, &mut events).await;
}

/// The negotiated protocol version, read from the TLS stream under the connection; gives the
/// connection back rebuilt over the same stream.
fn protocol_version(conn: TlsConnection) -> (Option<rustls::ProtocolVersion>, TlsConnection) {
    let info = conn.info().clone();
    let stream = conn.into_inner();
    let version = stream.get_ref().1.protocol_version();
    let conn =
        connect::Connection::with_config(stream, &connect::ConnectionConfig::default(), info);
    (version, conn)
}

#[async_std::test]
async fn mutual_tls_accepts_a_client_certificate_from_the_right_ca() {
    let ca = Ca::new("test CA");
    let server = ca.issue("server", &["localhost"], Role::Server);
    let client_leaf = ca.issue("client-1", &["client-1.example"], Role::Client);
    let (addr, mut events) = start(server_config(&server, Some(&ca))).await;

    let client = client_config(ca.certificates(), Some(&client_leaf));
    let mut conn = tls::connect(addr, "localhost", &client)
        .await
        .expect("connect");
    match next_event(&mut events).await {
        Event::Accepted(Some(identity)) => {
            assert_eq!(identity.common_name(), Some("client-1"));
            assert_eq!(identity.dns_names(), ["client-1.example"]);
            assert!(identity.has_name("client-1.example"));
            assert_eq!(
                identity.certificate(),
                Some(&*client_leaf.certificates()[0])
            );
        }
        other => panic!("expected an authenticated client, got {other:?}"),
    }
    echo(&mut conn, 1, 20).await;
    close_cleanly(conn, &mut events).await;
}

/// With TLS 1.3 the client's handshake is over before the server checks the client's
/// certificate, so the client learns of the rejection on its first read.
async fn expect_rejected_by_server(
    result: connect::Result<TlsConnection>,
    alert: connect::TlsAlert,
) -> connect::Result<()> {
    let mut conn = result?;
    let _ = conn
        .send_message(&HelloWorld {
            text: "let me in".into(),
            sequence: 1,
        })
        .await;
    match bounded("rejected read", conn.recv()).await {
        Err(Error::Tls(TlsError::PeerRejected { alert: got })) => {
            assert_eq!(got, alert);
            Ok(())
        }
        other => panic!("expected the server's {alert} alert, got {other:?}"),
    }
}

#[async_std::test]
async fn mutual_tls_rejects_a_client_without_a_certificate() {
    let ca = Ca::new("test CA");
    let server = ca.issue("server", &["localhost"], Role::Server);
    let (addr, mut events) = start(server_config(&server, Some(&ca))).await;

    let client = client_config(ca.certificates(), None);
    expect_rejected_by_server(
        tls::connect(addr, "localhost", &client).await,
        connect::TlsAlert::CertificateRequired,
    )
    .await
    .expect("TLS 1.3 handshake itself succeeds on the client");
    let error = handshake_failure(next_event(&mut events).await);
    assert!(
        matches!(error, Error::Tls(TlsError::NoClientCertificate)),
        "{error:?}"
    );
}

#[async_std::test]
async fn mutual_tls_rejects_a_client_certificate_from_another_ca() {
    let ca = Ca::new("test CA");
    let other_ca = Ca::new("another CA");
    let server = ca.issue("server", &["localhost"], Role::Server);
    let intruder = other_ca.issue("client-1", &["client-1.example"], Role::Client);
    let (addr, mut events) = start(server_config(&server, Some(&ca))).await;

    let client = client_config(ca.certificates(), Some(&intruder));
    expect_rejected_by_server(
        tls::connect(addr, "localhost", &client).await,
        connect::TlsAlert::UnknownCa,
    )
    .await
    .expect("TLS 1.3 handshake itself succeeds on the client");
    let error = handshake_failure(next_event(&mut events).await);
    assert!(
        matches!(error, Error::Tls(TlsError::UnknownIssuer)),
        "{error:?}"
    );
}

/// Connects with `client` and expects the handshake to fail on the client with `check`, and on
/// the server because the client rejected it.
async fn expect_client_rejects(
    server: &Leaf,
    client: tls::TlsClientConfig,
    name: &str,
    check: impl FnOnce(&TlsError) -> bool,
) {
    let (addr, mut events) = start(server_config(server, None)).await;
    match tls::connect(addr, name, &client).await {
        Err(Error::Tls(e)) if check(&e) => {}
        Err(e) => panic!("unexpected error {e:?}"),
        Ok(_) => panic!("handshake should have failed"),
    }
    let error = handshake_failure(next_event(&mut events).await);
    assert!(
        matches!(error, Error::Tls(TlsError::PeerRejected { .. })),
        "the server learns that the client rejected it: {error:?}"
    );
}

#[async_std::test]
async fn a_wrong_server_name_is_a_typed_error() {
    let ca = Ca::new("test CA");
    let server = ca.issue("server", &["localhost"], Role::Server);
    let client = client_config(ca.certificates(), None);
    expect_client_rejects(
        &server,
        client,
        "other.example",
        |e| matches!(e, TlsError::NotValidForName { expected } if expected == "other.example"),
    )
    .await;
}

#[async_std::test]
async fn a_wrong_ca_is_a_typed_error() {
    let ca = Ca::new("test CA");
    let server = ca.issue("server", &["localhost"], Role::Server);
    let client = client_config(Ca::new("another CA").certificates(), None);
    expect_client_rejects(&server, client, "localhost", |e| {
        matches!(e, TlsError::UnknownIssuer)
    })
    .await;
    // An untrusted self-signed server certificate is the same case.
    let client = client_config(ca.certificates(), None);
    let stranger = self_signed("localhost", &["localhost"]);
    expect_client_rejects(&stranger, client, "localhost", |e| {
        matches!(e, TlsError::UnknownIssuer)
    })
    .await;
}

#[async_std::test]
async fn an_expired_server_certificate_is_a_typed_error() {
    let ca = Ca::new("test CA");
    let server = ca.issue_expired("server", &["localhost"], Role::Server);
    let client = client_config(ca.certificates(), None);
    expect_client_rejects(&server, client, "localhost", |e| {
        matches!(e, TlsError::Expired)
    })
    .await;
}

#[async_std::test]
async fn invalid_names_keys_and_pem_are_config_errors() {
    let ca = Ca::new("test CA");
    let server = ca.issue("server", &["localhost"], Role::Server);
    let (addr, _events) = start(server_config(&server, None)).await;
    let client = client_config(ca.certificates(), None);
    match tls::connect(addr, "not a host name!", &client).await {
        Err(Error::Tls(TlsError::InvalidServerName(name))) => assert_eq!(name, "not a host name!"),
        other => panic!(
            "expected an invalid server name, got {:?}",
            other.map(|_| ())
        ),
    }

    let config_error = |r: connect::Result<()>, expected: TlsConfigProblem| match r {
        Err(Error::Tls(TlsError::Config { problem, .. })) => problem == expected,
        _ => false,
    };
    assert!(config_error(
        tls::certificates_from_pem(b"not PEM").map(drop),
        TlsConfigProblem::NoCertificate
    ));
    assert!(config_error(
        tls::certificates_from_pem(server.key_pem.as_bytes()).map(drop),
        TlsConfigProblem::NoCertificate
    ));
    assert!(config_error(
        tls::private_key_from_pem(server.cert_pem.as_bytes()).map(drop),
        TlsConfigProblem::NoPrivateKey
    ));
    assert!(config_error(
        tls::certificates_from_pem_file("/nonexistent/ca.pem").map(drop),
        TlsConfigProblem::Unreadable
    ));
    assert!(config_error(
        tls::TlsClientConfig::builder().build().map(drop),
        TlsConfigProblem::NoTrustedAuthority
    ));
    // A certificate with another certificate's key.
    let other = ca.issue("other", &["localhost"], Role::Server);
    let mismatched = Identity::from_pem(server.cert_pem.as_bytes(), other.key_pem.as_bytes())
        .expect("both parse");
    assert!(config_error(
        TlsServerConfig::builder(mismatched).build().map(drop),
        TlsConfigProblem::Rejected
    ));
}

/// Connects and sends a real ClientHello, then stalls: the server answers and waits for the
/// rest of the handshake forever.
async fn stalled_client(
    addr: SocketAddr,
    client: &tls::TlsClientConfig,
) -> async_std::net::TcpStream {
    let mut hello = rustls::ClientConnection::new(
        client.rustls().clone(),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut client_hello = Vec::new();
    hello.write_tls(&mut client_hello).unwrap();
    let mut stalled = async_std::net::TcpStream::connect(addr).await.unwrap();
    stalled.write_all(&client_hello).await.unwrap();
    stalled
}

#[async_std::test]
async fn plaintext_and_stalled_clients_fail_alone_while_a_tls_client_keeps_echoing() {
    bounded("test", async {
        let ca = Ca::new("test CA");
        let server = ca.issue("server", &["localhost"], Role::Server);
        // The stall is never timed out during this test: the good client must get through
        // while the stalled handshake is still pending (a listener doing one handshake at a
        // time would hang here, and `bounded` would fail the test).
        let listener = TlsListener::bind(
            "127.0.0.1:0",
            server_config(&server, None).with_handshake_timeout(Duration::from_secs(600)),
        )
        .await
        .unwrap();
        let (addr, mut events) = spawn_echo_server(listener);
        let client = client_config(ca.certificates(), None);

        let stalled = stalled_client(addr, &client).await;

        // A plaintext client speaking our framing without TLS.
        let mut plaintext = async_std::net::TcpStream::connect(addr).await.unwrap();
        let mut frame = bytes::BytesMut::new();
        connect::codec::Codec::default()
            .encode_message(
                &HelloWorld {
                    text: "no TLS".into(),
                    sequence: 1,
                },
                &mut frame,
            )
            .unwrap();
        plaintext.write_all(&frame).await.unwrap();

        // Meanwhile a TLS client connects and echoes.
        let mut good = tls::connect(addr, "localhost", &client)
            .await
            .expect("connect");
        echo(&mut good, 1, 20).await;

        // The server reports the good client and the plaintext failure, in whatever order.
        let (mut accepted, mut protocol) = (0, 0);
        while accepted + protocol < 2 {
            match next_event(&mut events).await {
                Event::Accepted(_) => accepted += 1,
                failure @ Event::Failed(_) => match handshake_failure(failure) {
                    Error::Tls(TlsError::Protocol {
                        problem: TlsProtocolProblem::NotTls,
                        ..
                    }) => protocol += 1,
                    other => panic!("unexpected failure {other:?}"),
                },
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!((accepted, protocol), (1, 1));
        // The plaintext client got at most a TLS alert record (content type 21), then the end.
        let mut answer = Vec::new();
        plaintext.read_to_end(&mut answer).await.unwrap();
        assert!(answer.is_empty() || answer[0] == 21, "{answer:?}");

        // The stalled client gives up: only its own handshake fails, as an I/O error.
        drop(stalled);
        match handshake_failure(next_event(&mut events).await) {
            Error::Io(_) => {}
            other => panic!("unexpected failure {other:?}"),
        }

        // And the good client never noticed.
        echo(&mut good, 2, 20).await;
        close_cleanly(good, &mut events).await;
    })
    .await;
}

#[async_std::test]
async fn a_stalled_handshake_times_out_and_frees_its_slot() {
    bounded("test", async {
        let ca = Ca::new("test CA");
        let server = ca.issue("server", &["localhost"], Role::Server);
        // One handshake at a time: the good client waits until the stall has timed out.
        let listener = TlsListener::bind(
            "127.0.0.1:0",
            server_config(&server, None).with_handshake_timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap()
        .with_max_pending_handshakes(1);
        let (addr, mut events) = spawn_echo_server(listener);
        let client = client_config(ca.certificates(), None);

        let _stalled = stalled_client(addr, &client).await;
        let mut good = tls::connect(addr, "localhost", &client)
            .await
            .expect("connect after the stalled client's slot is freed");
        match handshake_failure(next_event(&mut events).await) {
            Error::Tls(TlsError::HandshakeTimeout(t)) => assert_eq!(t, Duration::from_millis(200)),
            other => panic!("expected the stall to time out first, got {other:?}"),
        }
        assert!(matches!(
            next_event(&mut events).await,
            Event::Accepted(None)
        ));
        echo(&mut good, 1, 20).await;
        close_cleanly(good, &mut events).await;
    })
    .await;
}

#[test]
fn handshakes_run_over_any_futures_io_stream_on_smol() {
    smol::block_on(bounded("smol", async {
        let ca = Ca::new("test CA");
        let server = ca.issue("server", &["localhost"], Role::Server);
        let client_leaf = ca.issue("client-1", &["client-1"], Role::Client);
        let server_tls = server_config(&server, Some(&ca));
        let client_tls = client_config(ca.certificates(), Some(&client_leaf));

        let listener = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_task = smol::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let config = connect::ConnectionConfig::default();
            let mut conn =
                tls::accept_stream(stream, &server_tls, &config, connect::ConnectionInfo::new())
                    .await?;
            let who = conn
                .peer_identity()
                .and_then(|i| i.common_name().map(str::to_owned));
            while let Some(any) = conn.recv().await? {
                conn.send(any).await?;
            }
            conn.close().await?;
            Ok::<_, Error>(who)
        });

        let stream = smol::net::TcpStream::connect(addr).await.unwrap();
        let config = connect::ConnectionConfig::default();
        let mut conn = tls::connect_stream(
            stream,
            "localhost",
            &client_tls,
            &config,
            connect::ConnectionInfo::new(),
        )
        .await
        .expect("handshake");
        for i in 0..10 {
            let msg = HelloWorld {
                text: format!("smol {i}"),
                sequence: i,
            };
            conn.send_message(&msg).await.unwrap();
            let back: HelloWorld = conn.recv_message().await.unwrap().unwrap();
            assert_eq!(back, msg);
        }
        conn.close().await.unwrap();
        assert!(conn.recv().await.unwrap().is_none());
        assert_eq!(server_task.await.unwrap().as_deref(), Some("client-1"));
    }));
}

#[async_std::test]
async fn a_server_that_never_answers_times_the_client_handshake_out() {
    bounded("test", async {
        // Accepts TCP, then says nothing.
        let silent = async_std::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap();
        let addr = silent.local_addr().unwrap();
        let held = async_std::task::spawn(async move { silent.accept().await.map(|(s, _)| s) });

        let ca = Ca::new("test CA");
        let client = tls::TlsClientConfig::builder()
            .trust(ca.certificates())
            .with_handshake_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        match tls::connect(addr, "localhost", &client).await {
            Err(Error::Tls(TlsError::HandshakeTimeout(t))) => {
                assert_eq!(t, Duration::from_millis(200))
            }
            other => panic!("expected a handshake timeout, got {:?}", other.map(|_| ())),
        }
        drop(held.await);
    })
    .await;
}

#[async_std::test]
async fn dispatcher_handlers_see_the_verified_client_identity() {
    bounded("test", async {
        let ca = Ca::new("test CA");
        let server = ca.issue("server", &["localhost"], Role::Server);
        let client_leaf = ca.issue("client-7", &["client-7.example"], Role::Client);
        let mut listener = TlsListener::bind("127.0.0.1:0", server_config(&server, Some(&ca)))
            .await
            .unwrap();
        let addr = listener.local_addr();
        // Answers each greeting with the name the client proved, not the one it claims.
        let dispatcher = Dispatcher::new().on(|hello: HelloWorld, cx: Context| async move {
            let proven = cx
                .connection()
                .peer_identity()
                .and_then(|id| id.common_name().map(str::to_owned))
                .unwrap_or_default();
            Ok::<_, Error>(Reply::message(&HelloWorld {
                text: format!("{} is really {proven}", hello.text),
                ..hello
            }))
        });
        let served = async_std::task::spawn(async move {
            let conn = listener.accept().await?;
            dispatcher.serve(conn).await
        });

        let client = client_config(ca.certificates(), Some(&client_leaf));
        let mut conn = tls::connect(addr, "localhost", &client).await.unwrap();
        conn.send_message(&HelloWorld {
            text: "admin".into(),
            sequence: 1,
        })
        .await
        .unwrap();
        let reply: HelloWorld = conn.recv_message().await.unwrap().unwrap();
        assert_eq!(reply.text, "admin is really client-7");
        conn.close().await.unwrap();
        served.await.expect("served cleanly");
    })
    .await;
}

#[async_std::test]
async fn a_tcp_close_without_close_notify_is_not_a_clean_end() {
    bounded("test", async {
        let ca = Ca::new("test CA");
        let server = ca.issue("server", &["localhost"], Role::Server);
        let mut listener = TlsListener::bind("127.0.0.1:0", server_config(&server, None))
            .await
            .unwrap();
        let addr = listener.local_addr();
        let server_side = async_std::task::spawn(async move {
            let mut conn = listener.accept().await?;
            let first = conn.recv().await?;
            Ok::<_, Error>((first, conn.recv().await))
        });

        let client = client_config(ca.certificates(), None);
        let mut conn = tls::connect(addr, "localhost", &client).await.unwrap();
        let msg = HelloWorld {
            text: "then cut".into(),
            sequence: 1,
        };
        conn.send_message(&msg).await.unwrap();
        // Shut TCP down under TLS, as an attacker truncating the stream would.
        let stream = conn.into_inner();
        stream
            .get_ref()
            .0
            .get_ref()
            .shutdown(std::net::Shutdown::Write)
            .unwrap();

        let (first, after) = server_side.await.expect("accepted");
        assert_eq!(
            first
                .expect("first message")
                .to_msg::<HelloWorld>()
                .unwrap(),
            msg
        );
        match after {
            Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
            other => panic!("a truncated TLS stream must not end cleanly: {other:?}"),
        }
    })
    .await;
}
