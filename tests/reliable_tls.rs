//! Reliable streams over mutual TLS: a stream survives its TLS connections being cut at any
//! byte (mid-handshake and mid-record included); each reconnection runs a new TLS handshake and
//! resumes the stream, and every message arrives exactly once and in order.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_std::task;
use connect::reliable::{self, Backoff, Event, ReliableConfig, ReliableServer};
use connect::session::SessionConfig;
use connect::transport::tls::{self, TlsListener};
use futures::StreamExt;
use support::certs::{client_config, server_config, Ca, Role};
use support::proxy::cutting_proxy;

use support::{numbered as hello, sequence, within};

#[async_std::test]
async fn a_reliable_stream_over_mutual_tls_survives_cut_connections() {
    const MESSAGES: u64 = 20_000;
    const MIN_CUTS: u64 = 20;
    let ca = Ca::new("test CA");
    let server_cert = ca.issue("server", &["localhost"], Role::Server);
    let client_cert = ca.issue("billing", &["billing.internal"], Role::Client);

    // Server: TLS listener (client certificates required), reliable streams, echo.
    let mut listener = TlsListener::bind("127.0.0.1:0", server_config(&server_cert, Some(&ca)))
        .await
        .unwrap();
    let upstream = listener.local_addr();
    let session_config = SessionConfig::new().with_heartbeat(Some(Duration::from_millis(500)));
    let server = ReliableServer::new(
        session_config.clone(),
        ReliableConfig::new().with_resume_timeout(Duration::from_secs(30)),
    );
    let handshakes_failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failed = handshakes_failed.clone();
    task::spawn(async move {
        while let Some(conn) = listener.next().await {
            let Ok(conn) = conn else {
                // A connection cut inside its TLS handshake: that client's problem only.
                failed.fetch_add(1, Ordering::SeqCst);
                continue;
            };
            assert_eq!(
                conn.peer_identity().and_then(|id| id.common_name()),
                Some("billing")
            );
            let server = server.clone();
            task::spawn(async move {
                let Ok(accepted) = server.accept(conn).await else {
                    return;
                };
                match accepted {
                    connect::reliable::Accepted::NewStream { mut stream, driver } => {
                        task::spawn(async move {
                            let mut next = 0;
                            while let Ok(Some(any)) = stream.recv().await {
                                assert_eq!(
                                    sequence(&any),
                                    next,
                                    "server: out of order or duplicate"
                                );
                                next += 1;
                                if stream.feed(any).await.is_err() {
                                    break;
                                }
                            }
                        });
                        driver.await;
                    }
                    connect::reliable::Accepted::Resumed { driver } => driver.await,
                    _ => {}
                }
            });
        }
    });

    // Client: every (re)connection is a fresh TCP connection through the cutting proxy and a
    // fresh TLS handshake with the client certificate.
    let proxy = cutting_proxy(upstream, 100_000).await;
    let tls = Arc::new(client_config(ca.certificates(), Some(&client_cert)));
    let proxy_addr = proxy.addr;
    let connector = move || {
        let tls = tls.clone();
        async move { tls::connect(proxy_addr, "localhost", &tls).await }
    };
    let config = ReliableConfig::new().with_backoff(
        Backoff::new()
            .with_initial(Duration::from_millis(1))
            .with_max(Duration::from_millis(20))
            .with_max_attempts(Some(500)),
    );
    let (stream, driver) = reliable::client(connector, session_config, config);
    task::spawn(driver);
    let events = stream.events();
    let (mut reader, mut writer) = stream.split();
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
        }
    })
    .await;
    let mut writer = sender.await;
    let cuts = proxy.cuts.load(Ordering::SeqCst);
    println!(
        "{MESSAGES} messages through {cuts} cut TLS connections ({} cut inside the handshake); {:?}",
        handshakes_failed.load(Ordering::SeqCst),
        writer.stats()
    );
    assert!(cuts >= MIN_CUTS, "only {cuts} cuts");
    proxy.cutting.store(false, Ordering::SeqCst);
    within(60, "close", writer.close()).await.unwrap();
    assert!(reader.recv().await.unwrap().is_none(), "nothing more");
    let resumed = events
        .take_while(|e| futures::future::ready(!matches!(e, Event::Closed { .. })))
        .filter(|e| futures::future::ready(matches!(e, Event::Resumed { .. })))
        .count()
        .await;
    assert!(resumed >= 1, "no resume over TLS");
}

#[async_std::test]
async fn the_tls_echo_server_example_serves_reliable_streams() {
    let dir = support::certs::temp_dir("reliable-tls-example");
    let ca = Ca::new("example CA");
    let server_cert = ca.issue("server", &["localhost"], Role::Server);
    let client_cert = ca.issue("client", &["client.internal"], Role::Client);
    let ca_pem = ca.write(&dir, "ca");
    let (cert, key) = server_cert.write(&dir, "server");
    let path = |p: &std::path::Path| p.display().to_string();
    let server = support::Server::start(
        "tls-echo-server",
        &[
            "127.0.0.1:0",
            "--cert",
            &path(&cert),
            "--key",
            &path(&key),
            "--client-ca",
            &path(&ca_pem),
            "--reliable",
        ],
    );
    let proxy = cutting_proxy(server.addr, 50_000).await;
    let tls = Arc::new(client_config(ca.certificates(), Some(&client_cert)));
    let proxy_addr = proxy.addr;
    let connector = move || {
        let tls = tls.clone();
        async move { tls::connect(proxy_addr, "localhost", &tls).await }
    };
    let config = ReliableConfig::new().with_backoff(
        Backoff::new()
            .with_initial(Duration::from_millis(1))
            .with_max(Duration::from_millis(20))
            .with_max_attempts(Some(500)),
    );
    let (stream, driver) = reliable::client(connector, SessionConfig::new(), config);
    task::spawn(driver);
    let (mut reader, mut writer) = stream.split();
    within(120, "echo through the example", async {
        for i in 0..2_000 {
            writer.feed(hello(i)).await.unwrap();
        }
        for i in 0..2_000 {
            let any = reader.recv().await.unwrap().unwrap();
            assert_eq!(sequence(&any), i, "out of order or duplicate");
        }
    })
    .await;
    proxy.cutting.store(false, Ordering::SeqCst);
    within(60, "close", writer.close()).await.unwrap();
    assert!(
        proxy.cuts.load(Ordering::SeqCst) >= 1,
        "no connection was cut"
    );
}
