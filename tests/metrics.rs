//! The Prometheus example (`examples/metrics-prometheus.rs`, feature `metrics`): traffic moves
//! the scraped counters by exactly what the client counted on its side.

mod support;

use std::io::{BufRead as _, Read as _, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use connect::proto::example::HelloWorld;
use connect::proto::v1::Credentials;
use connect::session::SessionConfig;
use connect::transport::tcp;
use support::Server;

/// `GET /metrics` with a plain HTTP/1.1 request; the body.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The value of `series` (a name, with its labels if it has any), 0 if it is not there yet.
fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// Scrapes until `done` holds for the body (the server publishes when its link's task ends,
/// which may come just after the client's close returns); the last body either way.
fn scrape_until(addr: SocketAddr, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = scrape(addr);
        if done(&body) || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn scraped_counters_move_by_the_traffic_sent() {
    let mut server = Server::start(
        "metrics-prometheus",
        &["127.0.0.1:0", "--metrics", "127.0.0.1:0"],
    );
    let mut line = String::new();
    server.stdout.read_line(&mut line).unwrap();
    let metrics: SocketAddr = line
        .trim()
        .strip_prefix("metrics on http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in {line:?}"))
        .parse()
        .unwrap();

    let before = scrape(metrics);
    assert_eq!(value(&before, "connect_frames_received_total"), 0.0);

    // One session: 25 messages echoed, then a graceful close.
    let config = SessionConfig::new()
        .with_heartbeat(None)
        .with_credentials(Credentials::plain("alice", "s3cret"));
    let client = async_std::task::block_on(async {
        let mut session = tcp::connect_session(server.addr, &config, support::spawn)
            .await
            .unwrap();
        for sequence in 0..25 {
            let hello = HelloWorld {
                text: "x".repeat(sequence as usize * 10),
                sequence,
            };
            session.send_message(&hello).await.unwrap();
            let echoed: HelloWorld = session.recv_message().await.unwrap().unwrap();
            assert_eq!(echoed, hello);
        }
        session.close().await.unwrap();
        session.stats()
    });
    // Hello, 25 messages, Close; Welcome, 25 echoes, CloseOk.
    assert_eq!(client.frames_sent, 27);
    assert_eq!(client.frames_received, 27);

    let expected = [
        ("connect_frames_received_total", client.frames_sent as f64),
        ("connect_bytes_received_total", client.bytes_sent as f64),
        ("connect_frames_sent_total", client.frames_received as f64),
        ("connect_bytes_sent_total", client.bytes_received as f64),
        ("connect_sessions_opened_total", 1.0),
        ("connect_sessions_ended_total{graceful=\"true\"}", 1.0),
        ("connect_links_joined_total{origin=\"accepted\"}", 1.0),
        ("connect_links_left_total{graceful=\"true\"}", 1.0),
        ("connect_endpoint_links", 0.0),
        ("connect_sessions_open", 0.0),
    ];
    let body = scrape_until(metrics, |body| {
        expected.iter().all(|&(series, v)| value(body, series) == v)
    });
    for (series, v) in expected {
        assert_eq!(value(&body, series), v, "{series} in:\n{body}");
    }

    // A wrong password: one handshake failure with its reason, and the Hello it sent.
    let wrong = SessionConfig::new().with_credentials(Credentials::plain("alice", "wrong"));
    let refused =
        async_std::task::block_on(tcp::connect_session(server.addr, &wrong, support::spawn));
    assert!(refused.is_err(), "a wrong password was accepted");
    let failures = "connect_handshake_failures_total{reason=\"session_authentication\"}";
    let frames = client.frames_sent as f64 + 1.0;
    let body = scrape_until(metrics, |body| {
        value(body, failures) == 1.0 && value(body, "connect_frames_received_total") == frames
    });
    assert_eq!(value(&body, failures), 1.0, "{body}");
    assert_eq!(
        value(&body, "connect_frames_received_total"),
        frames,
        "{body}"
    );
    assert_eq!(value(&body, "connect_sessions_opened_total"), 1.0);
    assert!(server.is_running());
}
