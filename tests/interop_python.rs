//! Interop with Python's official protobuf package (`serialize_length_prefixed` /
//! `parse_length_prefixed` on `google.protobuf.Any`): no code of ours on the Python side.
//!
//! The Python side runs in a virtualenv under `target/tmp` that the first run creates with pip.

mod support;

use support::{repo_root, run_python, Server};

#[test]
fn python_client_talks_to_the_tcp_echo_example() {
    let server = Server::start("tcp-echo-server", &["127.0.0.1:0"]);
    let golden = repo_root().join("proto/testdata/golden-frames.json");
    let out = run_python(
        "echo_client.py",
        &[
            &server.addr.to_string(),
            golden.to_str().expect("utf-8 path"),
        ],
    );
    assert!(out.contains("golden frames: 6 match"), "{out}");
    assert!(out.contains("201 messages echoed"), "{out}");
}
