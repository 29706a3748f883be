//! The `connect` binary as a user runs it: against the example echo servers (TCP, TLS and
//! WebSocket), `send` to `listen` with a user's own .proto file, `call` against `rpc-server`,
//! `sub` against `pubsub-publisher` and `ws-server`, `pub` to `sub` both ways round, and (with
//! `--features sctp`) over `sctp://`.
//!
//! The example servers are the root package's examples; CI builds them before this test
//! (`cargo build --example tcp-echo-server --example tls-echo-server --example make-certs
//! --example rpc-server --example pubsub-publisher` and `cargo build --features websocket
//! --example ws-server`).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use assert_cmd::prelude::*;
use predicates::prelude::*;

const HELLO: &str = "connect.example.v1.HelloWorld";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn connect() -> assert_cmd::Command {
    assert_cmd::Command::new(env!("CARGO_BIN_EXE_connect"))
}

/// A compiled example of the root package (same target directory as this test).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "example {name} is not built at {}: run `cargo build --example {name}` first",
        path.display()
    );
    path
}

/// A child process that printed `listening on ADDR`; killed when dropped.
struct Running {
    child: Child,
    addr: String,
    stdout: BufReader<ChildStdout>,
}

impl Running {
    fn start(mut command: Command) -> Self {
        let mut child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the server");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut running = Running {
            child,
            addr: String::new(),
            stdout,
        };
        let mut line = String::new();
        while running
            .stdout
            .read_line(&mut line)
            .expect("read its stdout")
            > 0
        {
            if let Some(addr) = line.trim().strip_prefix("listening on ") {
                running.addr = addr.to_string();
                return running;
            }
            line.clear();
        }
        panic!("the server exited before printing `listening on`");
    }

    /// The rest of its standard output, once it has exited (bounded by `limit`).
    fn finish(mut self, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if self.child.try_wait().expect("wait").is_some() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.stdout, &mut rest).expect("read its stdout");
        rest
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn send_to_the_tcp_echo_server_prints_the_echoes() {
    let server = Running::start({
        let mut c = Command::new(example("tcp-echo-server"));
        c.arg("127.0.0.1:0");
        c
    });
    connect()
        .args(["send", &format!("tcp://{}", server.addr), "--type", HELLO])
        .args(["--replies", "2", "--wait-ms", "10000"])
        .write_stdin("{\"text\":\"one\",\"sequence\":1}\n\n{\"text\":\"two\",\"sequence\":2}\n")
        .assert()
        .success()
        .stdout(
            predicate::str::contains(format!(
                "{HELLO} (60 bytes) {{\"text\":\"one\",\"sequence\":\"1\"}}\n{HELLO} (60 bytes) {{\"text\":\"two\",\"sequence\":\"2\"}}\n"
            )),
        );
}

#[test]
fn sessions_with_credentials_and_the_reliable_mode_reach_the_echo_server() {
    let server = Running::start({
        let mut c = Command::new(example("tcp-echo-server"));
        c.args([
            "--reliable",
            "--user",
            "alice",
            "--password",
            "pw",
            "127.0.0.1:0",
        ]);
        c
    });
    for layer in [&["--session"][..], &["--reliable"][..]] {
        connect()
            .args([
                "send",
                &server.addr,
                "--type",
                HELLO,
                "--json",
                r#"{"text":"hi"}"#,
            ])
            .args(["--user", "alice", "--password", "pw", "--replies", "1"])
            .args(["--wait-ms", "10000"])
            .args(layer)
            .assert()
            .success()
            .stdout(predicate::str::contains(r#"{"text":"hi"}"#));
    }
    // A wrong password is a failure (exit 1) that says what to check.
    connect()
        .args(["send", &server.addr, "--type", HELLO, "--json", "{}"])
        .args(["--user", "alice", "--password", "wrong"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--password"));
}

#[test]
fn send_and_bench_over_tls_with_the_tls_echo_server() {
    let certs = tempfile::tempdir().expect("temp dir");
    Command::new(example("make-certs"))
        .arg(certs.path())
        .assert()
        .success();
    let file = |name: &str| certs.path().join(name).to_string_lossy().into_owned();
    let server = Running::start({
        let mut c = Command::new(example("tls-echo-server"));
        c.args([
            "127.0.0.1:0",
            "--cert",
            &file("server.pem"),
            "--key",
            &file("server.key"),
        ]);
        c
    });
    let addr = format!("tls://{}", server.addr);
    connect()
        .args([
            "send",
            &addr,
            "--ca",
            &file("ca.pem"),
            "--server-name",
            "localhost",
        ])
        .args([
            "--type",
            HELLO,
            "--json",
            r#"{"text":"secret"}"#,
            "--replies",
            "1",
        ])
        .args(["--wait-ms", "10000"])
        .assert()
        .success()
        .stdout(predicate::str::contains(r#"{"text":"secret"}"#));
    // Without the CA the handshake fails, and the error points at --ca.
    connect()
        .args(["send", &addr, "--type", HELLO, "--json", "{}"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--ca"));
    // Piped, bench prints plain result lines (no progress bar).
    connect()
        .args([
            "bench",
            &addr,
            "--ca",
            &file("ca.pem"),
            "--messages",
            "2000",
        ])
        .args(["--pings", "50", "--size", "100"])
        .assert()
        .success()
        .stdout(
            predicate::str::is_match(r"W1 100 B: 2000 messages echoed in .* msg/s")
                .expect("regex")
                .and(predicate::str::contains("W2 100 B: 50 round trips: p50")),
        );
}

#[test]
fn send_to_listen_with_a_user_proto_round_trips_through_json() {
    let include = fixtures();
    let include = include.to_string_lossy();
    let listener = Running::start({
        let mut c = Command::new(env!("CARGO_BIN_EXE_connect"));
        c.args(["listen", "127.0.0.1:0", "--echo", "--count", "2"])
            .args(["--proto", "shop/v1/order.proto", "--include", &include]);
        c
    });
    let order = r#"{"item":"tea","quantity":3,"price":{"currency":"EUR","cents":"450"},"placed":"2026-12-01T05:00:00Z","notes":["green","loose"]}"#;
    let input = format!("{order}\n{{\"item\":\"cup\"}}\n");
    let sent = connect()
        .args([
            "send",
            &listener.addr,
            "--type",
            "shop.v1.Order",
            "--replies",
            "2",
        ])
        .args([
            "--wait-ms",
            "10000",
            "--proto",
            "shop/v1/order.proto",
            "-I",
            &include,
        ])
        .write_stdin(input)
        .assert()
        .success();
    let replies = String::from_utf8_lossy(&sent.get_output().stdout).into_owned();
    let lines: Vec<&str> = replies.lines().collect();
    assert_eq!(lines.len(), 2, "{replies}");
    assert!(lines[0].starts_with("shop.v1.Order ("), "{replies}");
    assert!(lines[0].ends_with(order), "{replies}");
    assert!(lines[1].ends_with(r#"{"item":"cup"}"#), "{replies}");

    // The listener printed the same frames, with the sender's address.
    let printed = listener.finish(Duration::from_secs(30));
    assert!(printed.contains(" connected\n"), "{printed}");
    assert!(printed.contains(order), "{printed}");
    assert!(
        printed.contains(r#"shop.v1.Order (42 bytes) {"item":"cup"}"#),
        "{printed}"
    );
}

#[test]
fn decode_prints_a_capture_and_reports_where_it_breaks() {
    // Two frames as `send` writes them: varint length ++ Any{type_url, value}.
    let any = |type_url: &str, value: &[u8]| {
        let mut any = vec![0x0a, type_url.len() as u8];
        any.extend_from_slice(type_url.as_bytes());
        any.push(0x12);
        any.push(value.len() as u8);
        any.extend_from_slice(value);
        let mut frame = vec![any.len() as u8];
        frame.extend(any);
        frame
    };
    let mut capture = any(
        "type.googleapis.com/connect.example.v1.HelloWorld",
        b"\x0a\x02hi\x10\x05",
    );
    let second = capture.len();
    capture.extend(any(
        "type.googleapis.com/google.protobuf.StringValue",
        b"\x0a\x03abc",
    ));
    connect()
        .arg("decode")
        .write_stdin(capture.clone())
        .assert()
        .success()
        .stdout(format!(
            "@0 {HELLO} (59 bytes) {{\"text\":\"hi\",\"sequence\":\"5\"}}\n@{second} google.protobuf.StringValue (56 bytes) \"abc\"\n"
        ));
    // Cut short: the frames before the cut are printed, then an error (exit 1) says where.
    capture.truncate(capture.len() - 2);
    connect()
        .arg("decode")
        .write_stdin(capture)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("@0 "))
        .stderr(predicate::str::contains(format!(
            "truncated frame at byte {second}"
        )));
}

#[test]
fn usage_errors_exit_2_and_unsupported_transports_say_so() {
    connect().arg("send").assert().code(2);
    connect()
        .args(["listen", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Examples:"));
    connect()
        .args([
            "send",
            "http://127.0.0.1:1",
            "--type",
            HELLO,
            "--json",
            "{}",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("unknown scheme"));
    if !cfg!(feature = "sctp") {
        connect()
            .args([
                "send",
                "sctp://127.0.0.1:1",
                "--type",
                HELLO,
                "--json",
                "{}",
            ])
            .assert()
            .code(1)
            .stderr(predicate::str::contains("--features sctp"));
    }
    // Bad topics and filters are refused before anything connects.
    connect()
        .args(["sub", "127.0.0.1:1", "orders.>.eu"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("not a valid filter"));
    connect()
        .args([
            "pub",
            "127.0.0.1:1",
            "orders.*",
            "--type",
            HELLO,
            "--json",
            "{}",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("not a valid topic"));
    connect().args(["sub", "127.0.0.1:1"]).assert().code(2);
    connect()
        .args(["call", "127.0.0.1:1", "--type", HELLO, "--deadline", "soon"])
        .assert()
        .code(2);
    connect()
        .args([
            "send",
            "127.0.0.1:1",
            "--type",
            "shop.v1.Order",
            "--json",
            "{}",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--proto"));
}

/// A plain TCP echo server on a thread of its own (bytes, not frames).
fn byte_echo() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().expect("clone");
                let mut writer = stream;
                let _ = std::io::copy(&mut reader, &mut writer);
                let _ = writer.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

#[test]
fn tunnel_forwards_a_local_port_to_an_allowed_target() {
    use std::io::{Read as _, Write as _};
    let echo = byte_echo();
    let server = Running::start({
        let mut c = Command::new(env!("CARGO_BIN_EXE_connect"));
        c.args(["tunnel-serve", "127.0.0.1:0", "--allow", &echo]);
        c
    });
    let forward = |remote: &str| {
        Running::start({
            let mut c = Command::new(env!("CARGO_BIN_EXE_connect"));
            c.args([
                "tunnel",
                &server.addr,
                "--local",
                "127.0.0.1:0",
                "--remote",
                remote,
            ]);
            c
        })
    };
    let tunnel = forward(&echo);
    // Two connections through the one link at once, a megabyte each way on each.
    let clients: Vec<_> = (0..2u8)
        .map(|n| {
            let addr = tunnel.addr.clone();
            std::thread::spawn(move || {
                let mut tcp = std::net::TcpStream::connect(&addr).expect("connect to the tunnel");
                tcp.set_read_timeout(Some(Duration::from_secs(60)))
                    .expect("timeout");
                let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8 ^ n).collect();
                let mut writer = tcp.try_clone().expect("clone");
                let sent = data.clone();
                let send = std::thread::spawn(move || {
                    writer.write_all(&sent).expect("write");
                    writer
                        .shutdown(std::net::Shutdown::Write)
                        .expect("shutdown");
                });
                let mut back = Vec::new();
                tcp.read_to_end(&mut back).expect("read the echo");
                send.join().expect("sender");
                assert!(
                    back == data,
                    "connection {n}: {} bytes back, not the same",
                    back.len()
                );
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client");
    }
    // A target the server does not allow: the connection is ended without a byte.
    let refused = forward("127.0.0.1:9");
    let mut tcp = std::net::TcpStream::connect(&refused.addr).expect("connect to the tunnel");
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let _ = tcp.write_all(b"hello");
    let mut back = Vec::new();
    let _ = tcp.read_to_end(&mut back);
    assert!(back.is_empty(), "{back:?}");
}

fn start_example(name: &str, args: &[&str]) -> Running {
    let mut command = Command::new(example(name));
    command.args(args);
    Running::start(command)
}

fn start_connect(args: &[&str], stdin: Stdio) -> Running {
    let mut command = Command::new(env!("CARGO_BIN_EXE_connect"));
    command.args(args).stdin(stdin);
    Running::start(command)
}

/// `sub`'s output: one JSON object a line.
fn json_lines(output: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

#[test]
fn call_gets_replies_and_statuses_from_the_rpc_server() {
    let server = start_example("rpc-server", &["127.0.0.1:0"]);
    let addr = server.addr.as_str();
    connect()
        .args(["call", addr, "--type", "connect.example.v1.Add"])
        .args(["--json", r#"{"a":2,"b":3}"#, "--metadata", "user=ada"])
        .assert()
        .success()
        .stdout("connect.example.v1.Sum (48 bytes) {\"value\":\"5\"}\n");
    // Each line of standard input is one call, in turn; --method is --type.
    connect()
        .args([
            "call",
            &format!("tcp://{addr}"),
            "--method",
            "connect.example.v1.Add",
        ])
        .write_stdin("{\"a\":1,\"b\":1}\n\n{\"a\":20,\"b\":22}\n")
        .assert()
        .success()
        .stdout(
            "connect.example.v1.Sum (48 bytes) {\"value\":\"2\"}\n\
             connect.example.v1.Sum (48 bytes) {\"value\":\"42\"}\n",
        );
    // The responder's statuses, each a failure (exit 1) that names its code.
    for (type_name, json, extra, status) in [
        (
            "connect.example.v1.Divide",
            r#"{"dividend":1,"divisor":0}"#,
            None,
            "STATUS_CODE_INVALID_ARGUMENT: division by zero",
        ),
        (HELLO, "{}", None, "STATUS_CODE_NOT_FOUND: no handler"),
        (
            "connect.example.v1.Sleep",
            r#"{"ms":20000}"#,
            Some("300ms"),
            "STATUS_CODE_DEADLINE_EXCEEDED",
        ),
    ] {
        let mut command = connect();
        command.args(["call", addr, "--type", type_name, "--json", json]);
        if let Some(deadline) = extra {
            command.args(["--deadline", deadline]);
        }
        command
            .assert()
            .code(1)
            .stdout("")
            .stderr(predicate::str::contains(status))
            .stderr(predicate::str::contains("1 of 1 calls failed"));
    }
}

#[test]
fn sub_prints_the_pubsub_publishers_messages_as_json_lines() {
    let publisher = start_example("pubsub-publisher", &["127.0.0.1:0"]);
    let out = connect()
        .args([
            "sub",
            &publisher.addr,
            "ticks.*.price",
            "news.eu.>",
            "--count",
            "6",
        ])
        .timeout(Duration::from_secs(60))
        .assert()
        .success();
    let lines = json_lines(&out.get_output().stdout);
    assert_eq!(lines.len(), 6);
    let mut topics = std::collections::BTreeSet::new();
    for line in &lines {
        let topic = line["topic"].as_str().expect("topic");
        assert_eq!(line["type"], HELLO, "{line}");
        // The publisher's text is "TOPIC #ROUND".
        let text = line["message"]["text"].as_str().expect("text");
        assert!(text.starts_with(&format!("{topic} #")), "{line}");
        topics.insert(topic.to_string());
    }
    // Every topic the filters match, none they do not (ticks.*.price has two).
    assert_eq!(
        topics.into_iter().collect::<Vec<_>>(),
        ["news.eu.headline", "ticks.eu.price", "ticks.us.price"]
    );
}

#[test]
fn pub_reaches_sub_whichever_side_listens() {
    // The subscriber listens; the publisher connects, waits for its subscription, publishes
    // each line of its standard input.
    let subscriber = start_connect(
        &["sub", "--listen", "127.0.0.1:0", "orders.>", "--count", "2"],
        Stdio::null(),
    );
    connect()
        .args(["pub", &subscriber.addr, "orders.eu.created", "--type", HELLO])
        .write_stdin("{\"text\":\"first\",\"sequence\":1}\n{\"text\":\"second\",\"sequence\":2}\n")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "orders.eu.created connect.example.v1.HelloWorld (62 bytes) {\"text\":\"first\",\"sequence\":\"1\"} -> 1 subscriber\n",
        ));
    let printed = subscriber.finish(Duration::from_secs(30));
    assert_eq!(
        printed,
        "{\"topic\":\"orders.eu.created\",\"type\":\"connect.example.v1.HelloWorld\",\"message\":{\"text\":\"first\",\"sequence\":\"1\"}}\n\
         {\"topic\":\"orders.eu.created\",\"type\":\"connect.example.v1.HelloWorld\",\"message\":{\"text\":\"second\",\"sequence\":\"2\"}}\n"
    );

    // The publisher listens; a subscriber with a non-matching filter gets nothing, the
    // matching one gets the message.
    let mut publisher = start_connect(
        &[
            "pub",
            "--listen",
            "127.0.0.1:0",
            "orders.us.paid",
            "--type",
            HELLO,
            "--subscribers",
            "2",
            "--wait-ms",
            "30000",
        ],
        Stdio::piped(),
    );
    let other = std::process::Command::new(env!("CARGO_BIN_EXE_connect"))
        .args(["sub", &publisher.addr, "orders.eu.*", "--count", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the other subscriber");
    let matching = std::process::Command::new(env!("CARGO_BIN_EXE_connect"))
        .args(["sub", &publisher.addr, "orders.*.paid", "--count", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the subscriber");
    {
        use std::io::Write as _;
        let mut stdin = publisher.child.stdin.take().expect("piped stdin");
        writeln!(stdin, "{{\"text\":\"paid\",\"sequence\":3}}").expect("write a message");
    }
    let printed = publisher.finish(Duration::from_secs(60));
    assert!(printed.ends_with("-> 1 subscriber\n"), "{printed}");
    let matching = matching.wait_with_output().expect("subscriber output");
    assert!(matching.status.success());
    let lines = json_lines(&matching.stdout);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["topic"], "orders.us.paid");
    assert_eq!(lines[0]["message"]["text"], "paid");
    // The publisher closed: the other subscriber's link ended with nothing received.
    let other = other.wait_with_output().expect("other subscriber output");
    assert!(!other.status.success());
    assert!(other.stdout.is_empty());
}

/// `ws-server` is built with the root package's `websocket` feature
/// (`cargo build --features websocket --example ws-server`).
#[test]
fn websocket_urls_reach_the_ws_server() {
    let bare = start_example("ws-server", &["--bare", "--tick-ms", "50", "127.0.0.1:0"]);
    let sessions = start_example("ws-server", &["--tick-ms", "50", "127.0.0.1:0"]);
    // Bare frames, echoed.
    connect()
        .args([
            "send",
            &format!("ws://{}/connect", bare.addr),
            "--type",
            HELLO,
        ])
        .args(["--json", r#"{"text":"hi","sequence":1}"#, "--replies", "1"])
        .assert()
        .success()
        .stdout(format!(
            "{HELLO} (59 bytes) {{\"text\":\"hi\",\"sequence\":\"1\"}}\n"
        ));
    // A call in a session: ws-server answers every request type with its body.
    connect()
        .args(["call", &format!("ws://{}", sessions.addr), "--session"])
        .args(["--type", HELLO, "--json", r#"{"text":"call"}"#])
        .assert()
        .success()
        .stdout(format!("{HELLO} (59 bytes) {{\"text\":\"call\"}}\n"));
    // The ticker, through pub/sub in a session.
    let out = connect()
        .args([
            "sub",
            &format!("ws://{}/connect", sessions.addr),
            "--session",
        ])
        .args(["ticks.even", "--count", "3"])
        .timeout(Duration::from_secs(60))
        .assert()
        .success();
    let lines = json_lines(&out.get_output().stdout);
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert_eq!(line["topic"], "ticks.even", "{line}");
        let sequence: u64 = line["message"]["sequence"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("sequence");
        assert_eq!(sequence % 2, 0, "{line}");
    }
    // A wrong path is refused by the server, and the tool says so.
    connect()
        .args(["send", &format!("ws://{}/nope", bare.addr), "--type", HELLO])
        .args(["--json", "{}"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("404"));
}

/// `wss://` both ways: `listen` on a wss:// address (its certificate), `send` to it checking
/// the certificate against the URL's host, in a session, on a path of its own.
#[test]
fn wss_urls_carry_a_session_to_listen() {
    let certs = tempfile::tempdir().expect("temp dir");
    Command::new(example("make-certs"))
        .arg(certs.path())
        .assert()
        .success();
    let file = |name: &str| certs.path().join(name).to_string_lossy().into_owned();
    let listener = start_connect(
        &[
            "listen",
            "wss://127.0.0.1:0/events",
            "--cert",
            &file("server.pem"),
            "--key",
            &file("server.key"),
            "--session",
            "--echo",
        ],
        Stdio::null(),
    );
    let port = listener.addr.rsplit_once(':').expect("host:port").1;
    let url = format!("wss://localhost:{port}/events");
    connect()
        .args(["send", &url, "--ca", &file("ca.pem"), "--session"])
        .args(["--type", HELLO, "--json", r#"{"text":"over wss"}"#])
        .args(["--replies", "1", "--wait-ms", "10000"])
        .assert()
        .success()
        .stdout(format!("{HELLO} (63 bytes) {{\"text\":\"over wss\"}}\n"));
    // Without the CA the TLS handshake fails, and the error points at --ca.
    connect()
        .args(["send", &url, "--type", HELLO, "--json", "{}"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--ca"));
}

/// `sctp://` (built with `cargo test -p connect-cli --features sctp`): `send` to `listen --echo`.
#[cfg(feature = "sctp")]
#[test]
fn sctp_addresses_carry_send_and_listen() {
    // With --count, `listen` closes the link after its last echo and only then exits: over
    // SCTP the association's driver sends the echo, so an exit without the close raced it.
    let listener = start_connect(
        &["listen", "sctp://127.0.0.1:0", "--echo", "--count", "2"],
        Stdio::null(),
    );
    connect()
        .args(["send", &format!("sctp://{}", listener.addr), "--type", HELLO])
        .args(["--replies", "2", "--wait-ms", "10000"])
        .write_stdin("{\"text\":\"one\",\"sequence\":1}\n{\"text\":\"two\",\"sequence\":2}\n")
        .assert()
        .success()
        .stdout(format!(
            "{HELLO} (60 bytes) {{\"text\":\"one\",\"sequence\":\"1\"}}\n{HELLO} (60 bytes) {{\"text\":\"two\",\"sequence\":\"2\"}}\n"
        ));
    // It printed each frame before echoing it, then the close, then exited.
    let printed = listener.finish(Duration::from_secs(20));
    assert!(
        printed.contains(&format!("{HELLO} (60 bytes) {{\"text\":\"one\"")),
        "{printed}"
    );
    assert!(printed.contains("\"two\""), "{printed}");
    assert!(printed.trim_end().ends_with("closed"), "{printed}");
    // A session over SCTP too.
    let listener = start_connect(
        &["listen", "sctp://127.0.0.1:0", "--echo", "--session"],
        Stdio::null(),
    );
    connect()
        .args(["send", &format!("sctp://{}", listener.addr), "--session"])
        .args([
            "--type",
            HELLO,
            "--json",
            r#"{"text":"s"}"#,
            "--replies",
            "1",
        ])
        .assert()
        .success()
        .stdout(format!("{HELLO} (56 bytes) {{\"text\":\"s\"}}\n"));
}

/// `key=value` pairs of a `metrics ...` line.
fn metric(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {line:?}"))
}

#[test]
fn listen_metrics_prints_the_counters_of_the_links_periodically() {
    let mut listener = Running::start({
        let mut c = Command::new(env!("CARGO_BIN_EXE_connect"));
        c.args(["listen", "127.0.0.1:0", "--echo", "--metrics=0.1"]);
        c
    });
    connect()
        .args([
            "send",
            &listener.addr,
            "--type",
            HELLO,
            "--json",
            r#"{"text":"hi"}"#,
        ])
        .args(["--replies", "1", "--wait-ms", "10000"])
        .assert()
        .success();
    // The frame the listener received and echoed, as it travels (length prefix included).
    let frame = {
        use connect::prost_types::Any;
        let hello = connect::proto::example::HelloWorld {
            text: "hi".into(),
            sequence: 0,
        };
        let mut wire = bytes::BytesMut::new();
        connect::codec::Codec::new()
            .encode(&Any::from_msg(&hello).unwrap(), &mut wire)
            .unwrap();
        wire.len() as u64
    };
    // Totals lines come every 0.1 s; the one after the sender left counts its link as closed.
    let mut line = String::new();
    let mut totals = None;
    for _ in 0..1000 {
        line.clear();
        if listener
            .stdout
            .read_line(&mut line)
            .expect("read its stdout")
            == 0
        {
            break;
        }
        if line.starts_with("metrics total ") && metric(&line, "links_closed") == 1 {
            totals = Some(line.clone());
            break;
        }
    }
    let totals = totals.expect("a totals line counting the closed link");
    assert_eq!(metric(&totals, "links_open"), 0, "{totals}");
    assert_eq!(metric(&totals, "frames_in"), 1, "{totals}");
    assert_eq!(metric(&totals, "frames_out"), 1, "{totals}");
    assert_eq!(metric(&totals, "bytes_in"), frame, "{totals}");
    assert_eq!(metric(&totals, "bytes_out"), frame, "{totals}");

    // An interval that is not a positive number is a usage error.
    connect()
        .args(["listen", "127.0.0.1:0", "--metrics=0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("positive number of seconds"));
}
