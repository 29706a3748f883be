//! Interop over TLS: Python's standard `ssl` module and the official protobuf package talk to
//! the `tls-echo-server` example (delimited `Any` frames inside TLS), with and without a client
//! certificate. Certificates are made by rcgen at test time and written as PEM files.

mod support;

use support::certs::{temp_dir, Ca, Role};
use support::{run_python, Server};

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn python_ssl_client_talks_to_the_tls_echo_example() {
    let dir = temp_dir("tls-interop");
    let ca = Ca::new("interop CA");
    let ca_pem = ca.write(&dir, "ca");
    let (server_pem, server_key) = ca
        .issue("server", &["localhost"], Role::Server)
        .write(&dir, "server");
    let (client_pem, client_key) = ca
        .issue("python-client", &["python-client"], Role::Client)
        .write(&dir, "client");

    let server_args = [
        "127.0.0.1:0",
        "--cert",
        path(&server_pem),
        "--key",
        path(&server_key),
    ];
    let mut plain = Server::start("tls-echo-server", &server_args);
    let mut mtls = Server::start(
        "tls-echo-server",
        &[&server_args[..], &["--client-ca", path(&ca_pem)]].concat(),
    );

    let out = run_python(
        "tls_echo_client.py",
        &[
            "--plain",
            &plain.addr.to_string(),
            "--mtls",
            &mtls.addr.to_string(),
            "--ca",
            path(&ca_pem),
            "--server-name",
            "localhost",
            "--cert",
            path(&client_pem),
            "--key",
            path(&client_key),
        ],
    );
    assert!(
        out.contains("plain: 201 messages echoed over TLSv1.3"),
        "{out}"
    );
    assert!(
        out.contains("mtls: 201 messages echoed over TLSv1.3"),
        "{out}"
    );
    assert!(out.contains("reject: rejected by the server"), "{out}");
    // A rejected client costs the server nothing but that connection.
    assert!(plain.is_running() && mtls.is_running());
    let _ = std::fs::remove_dir_all(&dir);
}
