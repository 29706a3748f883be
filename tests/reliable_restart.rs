//! A reliable client survives the death of its server: the tcp-echo-server example (a child
//! process) is killed with SIGKILL and restarted on the same port; the client reports the
//! drop, reconnects with backoff, and sends again every message the dead process never
//! confirmed.

mod support;

use support::spawn;

use std::time::{Duration, Instant};

use connect::proto::example::HelloWorld;
use connect::reliable::{Backoff, Event, ReliableConfig, ReliableStream};
use connect::session::SessionConfig;
use connect::transport::tcp;
use futures::StreamExt;
use support::Server;

const HALF: u64 = 100;

async fn within<F: std::future::Future>(secs: u64, what: &str, fut: F) -> F::Output {
    async_std::future::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {secs} s"))
}

async fn echoes(stream: &mut ReliableStream, n: u64) -> Vec<u64> {
    let mut got = Vec::new();
    for _ in 0..n {
        let echo: HelloWorld = stream.recv_message().await.unwrap().unwrap();
        got.push(echo.sequence);
    }
    got
}

/// Waits for the first event matching `want`, returning the events seen on the way.
async fn until(events: &mut connect::reliable::Events, want: fn(&Event) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    while let Some(event) = events.next().await {
        let done = want(&event);
        seen.push(event);
        if done {
            return seen;
        }
    }
    panic!("events ended: {seen:?}");
}

#[async_std::test]
async fn server_killed_and_restarted_client_resends_what_was_not_confirmed() {
    // The server confirms nothing (it would every million messages): all the client sends
    // stays unconfirmed, so all of it must be sent again to the restarted server.
    let args = [
        "--reliable",
        "--ack-every",
        "1000000",
        "--heartbeat-ms",
        "200",
    ];
    let mut server = Server::start("tcp-echo-server", &[&args[..], &["127.0.0.1:0"]].concat());
    let addr = server.addr;

    let config = ReliableConfig::new().with_backoff(
        Backoff::new()
            .with_initial(Duration::from_millis(20))
            .with_max(Duration::from_millis(200))
            .with_max_attempts(Some(300)),
    );
    let session_config = SessionConfig::new().with_heartbeat(Some(Duration::from_millis(200)));
    let mut stream = tcp::connect_reliable(addr, session_config, config, spawn);
    let mut events = stream.events();

    for i in 0..HALF {
        stream
            .feed_message(&HelloWorld {
                text: "a".into(),
                sequence: i,
            })
            .await
            .unwrap();
    }
    let first = within(30, "first echoes", echoes(&mut stream, HALF)).await;
    assert_eq!(first, (0..HALF).collect::<Vec<_>>());
    assert_eq!(stream.stats().confirmed, 0, "the server confirms nothing");

    // SIGKILL: no close, no goodbye.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let seen = within(
        30,
        "disconnection reported",
        until(&mut events, |e| matches!(e, Event::Disconnected { .. })),
    )
    .await;
    assert!(
        matches!(
            seen.first(),
            Some(Event::Connected {
                new_stream: false,
                ..
            })
        ),
        "{seen:?}"
    );

    // Sent while disconnected: waits in the bounded queue.
    for i in HALF..2 * HALF {
        stream
            .feed_message(&HelloWorld {
                text: "b".into(),
                sequence: i,
            })
            .await
            .unwrap();
    }
    let seen = within(
        30,
        "reconnecting",
        until(&mut events, |e| matches!(e, Event::Reconnecting { .. })),
    )
    .await;
    assert!(!seen.is_empty());

    // Restart on the same port (it may take a moment to be free).
    let started = Instant::now();
    let _restarted = loop {
        if let Some(s) = Server::try_start(
            "tcp-echo-server",
            &[&args[..], &[&addr.to_string()[..]]].concat(),
        ) {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "port {addr} never freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    let seen = within(
        30,
        "reconnected",
        until(&mut events, |e| {
            matches!(e, Event::Connected { .. } | Event::Resumed { .. })
        }),
    )
    .await;
    match seen.last() {
        // The new process does not know the stream: a new one, with the 100 unconfirmed
        // messages the dead process had received sent again.
        Some(Event::Connected {
            new_stream: true,
            retransmitted,
            ..
        }) => {
            assert_eq!(*retransmitted, HALF, "{seen:?}")
        }
        other => panic!("expected a new stream, got {other:?} after {seen:?}"),
    }
    // At least once across a process death: the first half again, then the second.
    let after = within(
        30,
        "echoes after the restart",
        echoes(&mut stream, 2 * HALF),
    )
    .await;
    assert_eq!(after, (0..2 * HALF).collect::<Vec<_>>());
    let stats = stream.stats();
    assert_eq!(stats.retransmitted, HALF, "{stats:?}");
    assert!(stats.connections >= 2, "{stats:?}");
}

/// A session client that does not ask for reliable delivery (the Python client written from
/// PROTOCOL.md) is served as before by a server that offers it.
#[test]
fn python_session_client_is_served_by_a_reliable_server() {
    let server = Server::start(
        "tcp-echo-server",
        &[
            "--reliable",
            "--user",
            "alice",
            "--password",
            "s3cret",
            "--heartbeat-ms",
            "100",
            "127.0.0.1:0",
        ],
    );
    let out = support::run_python(
        "session_client.py",
        &[&server.addr.to_string(), "alice", "s3cret"],
    );
    assert!(out.contains("identity alice"), "{out}");
    assert!(out.contains("echoed: 300 messages in order"), "{out}");
    assert!(out.contains("then end of stream"), "{out}");
}
