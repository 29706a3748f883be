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
