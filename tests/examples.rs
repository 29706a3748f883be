//! The examples work as the README says.

mod support;

use std::process::Command;

use support::{example, Server};

#[test]
fn quickstart_has_a_typed_conversation_and_ends_cleanly() {
    let out = Command::new(example("quickstart")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("client: reply #3 \"Good morning, world!\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("done: server and client closed cleanly"),
        "{stdout}"
    );
}

#[test]
fn tcp_client_gets_typed_replies_from_tcp_echo_server() {
    let mut server = Server::start("tcp-echo-server", &["127.0.0.1:0"]);
    let out = Command::new(example("tcp-client"))
        .arg(server.addr.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "reply #1: \"hello\"",
        "reply #2: \"bonjour\"",
        "reply #3: \"hallo\"",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert!(server.is_running());
}

#[test]
fn tcp_echo_server_heartbeat_and_handshake_flags() {
    use connect::proto::v1::{ReasonCode, Refuse};
    use connect::session::SessionConfig;
    use connect::transport::tcp;
    use std::time::Duration;

    for no_preference in [&["--heartbeat-ms", "0"][..], &["--no-heartbeats"][..]] {
        let mut args = vec!["--session", "--handshake-timeout-ms", "300"];
        args.extend_from_slice(no_preference);
        args.push("127.0.0.1:0");
        let server = Server::start("tcp-echo-server", &args);
        async_std::task::block_on(async {
            // Neither side wishes for heartbeats: the session has none (it had 10 ms ones when
            // 0 was taken as a wish).
            let config = SessionConfig::new().with_heartbeat(None);
            let mut session = tcp::connect_session(server.addr, &config, support::spawn)
                .await
                .unwrap();
            assert_eq!(session.info().heartbeat(), None, "{args:?}");
            // A client that wishes for them still gets them.
            let config = SessionConfig::new().with_heartbeat(Some(Duration::from_secs(2)));
            let other = tcp::connect_session(server.addr, &config, support::spawn)
                .await
                .unwrap();
            assert_eq!(other.info().heartbeat(), Some(Duration::from_secs(2)));
            // A client that says nothing is refused after the handshake timeout (the hang
            // guard is far above the 300 ms asked for).
            let mut silent = tcp::connect(server.addr).await.unwrap();
            let refuse =
                async_std::future::timeout(Duration::from_secs(8), silent.recv_message::<Refuse>())
                    .await
                    .expect("refused well before the default 10 s")
                    .unwrap()
                    .unwrap();
            assert_eq!(refuse.code(), ReasonCode::HandshakeTimeout);
            session.close_with(ReasonCode::Normal, "").await.unwrap();
        });
    }
}

#[test]
fn own_messages_go_out_with_the_standard_type_url() {
    let out = Command::new(example("own-messages")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "type URL on the wire: type.googleapis.com/shop.v1.Confirmation",
        "confirmed: tea as order 1003",
        "done",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}

#[test]
fn pubsub_subscriber_gets_only_its_topics_from_pubsub_publisher() {
    let mut server = Server::start("pubsub-publisher", &["127.0.0.1:0"]);
    let out = Command::new(example("pubsub-subscriber"))
        .args([&server.addr.to_string(), "ticks.*.price", "--count", "6"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    for line in lines {
        assert!(
            line.starts_with("ticks.eu.price ") || line.starts_with("ticks.us.price "),
            "{line}"
        );
    }
    assert!(server.is_running());
}

#[test]
fn rpc_client_sees_every_outcome_from_rpc_server() {
    let mut server = Server::start("rpc-server", &["127.0.0.1:0"]);
    let out = Command::new(example("rpc-client"))
        .arg(server.addr.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "parallel: 2 + 3 = 5, 84 / 2 = 42, slept 200 ms",
        "timeout: deadline exceeded",
        "refused: STATUS_CODE_INVALID_ARGUMENT: division by zero",
        "unknown method: STATUS_CODE_NOT_FOUND",
        "done: every outcome as expected",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert!(server.is_running());
}
