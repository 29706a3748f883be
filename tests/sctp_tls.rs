//! TLS over SCTP associations: the same certificates, mutual TLS, typed errors and verified
//! identities as TLS over TCP, and every failure confined to its own association.
//! Run with `cargo test --features sctp --test sctp_tls`.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use connect::dispatch::{Context, Dispatcher, Reply};
use connect::prost_types::Any;
use connect::proto::example::HelloWorld;
use connect::proto::v1::ReasonCode;
use connect::session::{self, SessionConfig};
use connect::transport::sctp::{self, SctpListener, SctpTlsConnection};
use connect::transport::tls::TlsServerConfig;
use connect::{Error, TlsError};
use support::certs::{client_config, server_config, Ca, Role};

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    async_std::future::timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

fn hello(sequence: u64) -> HelloWorld {
    HelloWorld {
        text: format!("message {sequence}"),
        sequence,
    }
}

/// What the server made of each association, in order.
type Outcomes = async_std::channel::Receiver<Result<Option<String>, Error>>;

/// A TLS-over-SCTP echo server: each association's handshake runs in its own task (with
/// `handshake_timeout`), then the dispatcher echoes. Reports each association's outcome: the
/// client certificate's common name, or the handshake error.
async fn tls_echo_server(
    tls: TlsServerConfig,
    handshake_timeout: Duration,
) -> (SocketAddr, Outcomes) {
    let listener = SctpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    let (report, outcomes) = async_std::channel::unbounded();
    let tls = Arc::new(tls);
    let dispatcher = Arc::new(
        Dispatcher::new()
            .fallback(|any: Any, _: Context| async move { Ok::<_, Error>(Reply::any(any)) }),
    );
    async_std::task::spawn(async move {
        loop {
            let association = listener.accept().await.unwrap();
            let (tls, dispatcher, report) = (tls.clone(), dispatcher.clone(), report.clone());
            async_std::task::spawn(async move {
                match sctp::accept_tls_within(association, &tls, handshake_timeout).await {
                    Ok(conn) => {
                        let name = conn
                            .peer_identity()
                            .and_then(|id| id.common_name())
                            .map(str::to_owned);
                        let _ = report.send(Ok(name)).await;
                        let _ = dispatcher.serve(conn).await;
                    }
                    Err(e) => {
                        let _ = report.send(Err(e)).await;
                    }
                }
            });
        }
    });
    (addr, outcomes)
}

async fn echo(conn: &mut SctpTlsConnection, count: u64) {
    for i in 0..count {
        conn.feed_message(&hello(i)).await.unwrap();
    }
    conn.flush().await.unwrap();
    for i in 0..count {
        let back: HelloWorld = conn.recv_message().await.unwrap().expect("an echo");
        assert_eq!(back, hello(i));
    }
}

#[async_std::test]
async fn mutual_tls_over_sctp_echoes_and_both_sides_see_the_verified_peer() {
    within("mutual TLS over SCTP", async {
        let ca = Ca::new("test CA");
        let server = ca.issue("server", &["localhost"], Role::Server);
        let client = ca.issue("billing", &["billing.internal"], Role::Client);
        let (addr, outcomes) =
            tls_echo_server(server_config(&server, Some(&ca)), Duration::from_secs(10)).await;

        let tls = client_config(ca.certificates(), Some(&client));
        let mut conn = sctp::connect_tls(addr, "localhost", &tls).await.unwrap();
        let server_name = conn.peer_identity().and_then(|id| id.common_name());
        assert_eq!(server_name, Some("server"));
        echo(&mut conn, 2000).await;
        // A frame far larger than one SCTP message (64 KiB) and one TLS record (16 KiB).
        let big = HelloWorld {
            text: "x".repeat(1 << 20),
            sequence: 7,
        };
        conn.send_message(&big).await.unwrap();
        assert_eq!(conn.recv_message::<HelloWorld>().await.unwrap(), Some(big));
        sctp::shutdown(conn).await.unwrap();
        assert_eq!(
            outcomes.recv().await.unwrap().unwrap().as_deref(),
            Some("billing")
        );
    })
    .await;
}

#[async_std::test]
async fn tls_over_sctp_with_the_client_driver_on_the_callers_executor() {
    within("TLS over SCTP, driver spawned by the caller", async {
        let ca = Ca::new("test CA");
        let server = ca.issue("server", &["localhost"], Role::Server);
        let (addr, outcomes) =
            tls_echo_server(server_config(&server, None), Duration::from_secs(10)).await;
        let spawned = Arc::new(AtomicUsize::new(0));
        let counted = spawned.clone();
        let spawn = move |task| {
            counted.fetch_add(1, Ordering::SeqCst);
            async_std::task::spawn(task);
        };
        let tls = client_config(ca.certificates(), None);
        let config = sctp::SctpConfig::default();
        let mut conn = sctp::connect_tls_with_spawner(addr, "localhost", &tls, &config, spawn)
            .await
            .unwrap();
        assert_eq!(spawned.load(Ordering::SeqCst), 1, "the client's one driver");
        echo(&mut conn, 100).await;
        sctp::shutdown(conn).await.unwrap();
        assert_eq!(outcomes.recv().await.unwrap().unwrap(), None);
    })
    .await;
}

#[async_std::test]
async fn failed_handshakes_end_only_their_own_association() {
    within("failed handshakes", async {
        let ca = Ca::new("test CA");
        let other_ca = Ca::new("another CA");
        let server = ca.issue("server", &["localhost"], Role::Server);
        let stranger = other_ca.issue("stranger", &["stranger.internal"], Role::Client);
        let client = ca.issue("billing", &["billing.internal"], Role::Client);
        let (addr, outcomes) = tls_echo_server(
            server_config(&server, Some(&ca)),
            Duration::from_millis(500),
        )
        .await;

        // 1. A client certificate from another CA: refused by the server, typed on both ends.
        let tls = client_config(ca.certificates(), Some(&stranger));
        let result = match sctp::connect_tls(addr, "localhost", &tls).await {
            // TLS 1.3: the client learns of the refusal on its first read.
            Ok(mut conn) => conn.recv().await.map(|_| ()),
            Err(e) => Err(e),
        };
        assert!(matches!(result, Err(Error::Tls(_))), "{result:?}");
        let refused = outcomes.recv().await.unwrap();
        assert!(
            matches!(refused, Err(Error::Tls(TlsError::UnknownIssuer))),
            "{refused:?}"
        );

        // 2. A server certificate the client does not trust.
        let tls = client_config(other_ca.certificates(), Some(&client));
        let result = sctp::connect_tls(addr, "localhost", &tls).await;
        assert!(
            matches!(result, Err(Error::Tls(TlsError::UnknownIssuer))),
            "{result:?}"
        );
        assert!(outcomes.recv().await.unwrap().is_err());

        // 3. A plaintext client speaking frames instead of TLS.
        let mut plain = sctp::connect(addr).await.unwrap();
        plain.send_message(&hello(1)).await.unwrap();
        assert!(outcomes.recv().await.unwrap().is_err());
        drop(plain);

        // 4. An association that never starts its handshake: timed out, alone.
        let silent = sctp::connect(addr).await.unwrap();
        let tls = client_config(ca.certificates(), Some(&client));
        let mut conn = sctp::connect_tls(addr, "localhost", &tls).await.unwrap();
        echo(&mut conn, 10).await;
        let mut timed_out = false;
        let mut served = false;
        for _ in 0..2 {
            match outcomes.recv().await.unwrap() {
                Err(Error::Tls(TlsError::HandshakeTimeout(_))) => timed_out = true,
                Ok(Some(name)) if name == "billing" => served = true,
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        assert!(timed_out && served);
        drop(silent);

        // The listener is unharmed: one more good client.
        let mut conn2 = sctp::connect_tls(addr, "localhost", &tls).await.unwrap();
        echo(&mut conn2, 10).await;
        sctp::shutdown(conn2).await.unwrap();
        sctp::shutdown(conn).await.unwrap();
    })
    .await;
}

#[async_std::test]
async fn a_session_runs_over_tls_over_sctp() {
    within("session over TLS over SCTP", async {
        let ca = Ca::new("test CA");
        let server = ca.issue("server", &["localhost"], Role::Server);
        let listener = SctpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr();
        let tls = server_config(&server, None);
        let served = async_std::task::spawn(async move {
            let association = listener.accept().await.unwrap();
            let conn = sctp::accept_tls(association, &tls).await.unwrap();
            let (mut session, driver) = session::accept(conn, &SessionConfig::new()).await.unwrap();
            let driver = async_std::task::spawn(driver);
            while let Some(any) = session.recv().await.unwrap() {
                session.send(any).await.unwrap();
            }
            driver.await
        });

        let tls = client_config(ca.certificates(), None);
        let conn = sctp::connect_tls(addr, "localhost", &tls).await.unwrap();
        let config = SessionConfig::new().with_heartbeat(Some(Duration::from_millis(200)));
        let (mut session, driver) = session::connect(conn, &config).await.unwrap();
        let driver = async_std::task::spawn(driver);
        for i in 0..100 {
            session.send_message(&hello(i)).await.unwrap();
            assert_eq!(
                session.recv_message::<HelloWorld>().await.unwrap(),
                Some(hello(i))
            );
        }
        session
            .close_with(ReasonCode::Normal, "done")
            .await
            .unwrap();
        assert!(driver.await.is_graceful());
        assert!(served.await.is_graceful());
    })
    .await;
}

#[test]
fn the_sctp_examples_speak_tls() {
    let dir = support::certs::temp_dir("sctp-tls-examples");
    let ca = Ca::new("example CA");
    let server = ca.issue("server", &["localhost"], Role::Server);
    let client = ca.issue("client", &["client.internal"], Role::Client);
    let ca_pem = ca.write(&dir, "ca");
    let (server_pem, server_key) = server.write(&dir, "server");
    let (client_pem, client_key) = client.write(&dir, "client");
    let path = |p: &std::path::Path| p.display().to_string();
    let server = support::Server::start(
        "sctp-echo-server",
        &[
            "127.0.0.1:0",
            "--tls",
            "--cert",
            &path(&server_pem),
            "--key",
            &path(&server_key),
            "--client-ca",
            &path(&ca_pem),
        ],
    );
    let output = std::process::Command::new(support::example("sctp-client"))
        .args([
            &server.addr.to_string(),
            "--tls",
            "--ca",
            &path(&ca_pem),
            "--server-name",
            "localhost",
            "--cert",
            &path(&client_pem),
            "--key",
            &path(&client_key),
        ])
        .output()
        .expect("run sctp-client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "sctp-client failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("over TLS on SCTP"), "{stdout}");
    assert!(stdout.contains("reply #3: \"hallo\""), "{stdout}");
}
