//! The WebSocket transport from JavaScript: a Node client (protobuf.js over the `ws` package,
//! written from `proto/PROTOCOL.md`) and the browser page of `ws-server` in a headless Chromium,
//! both against the `ws-server` example (whose ticker is published through pub/sub: both
//! subscribe). Node's packages are installed by `npm ci` from
//! `tests/js/package-lock.json` under the target directory; where `node`, `npm` or `chromium`
//! cannot run at all, the test says SKIPPED and why (`.ci/run` installs them). A Go client over
//! TCP (`tests/go/tcp_client.go`, the PROTOCOL.md snippets for Go) runs here too, with Debian's
//! `golang-go` and `golang-google-protobuf-dev`.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::js::{node_modules, run_node};
use support::Server;

macro_rules! modules_or_skip {
    () => {
        match node_modules() {
            Ok(modules) => modules,
            Err(why) => {
                println!("SKIPPED: {why}");
                return;
            }
        }
    };
}

#[test]
fn node_exchanges_bare_frames() {
    let modules = modules_or_skip!();
    let mut server = Server::start("ws-server", &["--bare", "127.0.0.1:0"]);
    let url = format!("ws://{}/connect", server.addr);
    let (ok, out) = run_node(modules, "ws_client.js", &["bare", &url]);
    assert!(ok, "{out}");
    for line in [
        "ok: upgraded with subprotocol connect.v1",
        "ok: 4 frames echoed in order 1,2,3,4",
        "ok: closed with 1000",
        "ok: text message refused with 1003",
    ] {
        assert!(out.contains(line), "missing {line:?}");
    }
    assert!(server.is_running());
}

#[test]
fn node_runs_a_session_with_pings_and_a_graceful_close() {
    let modules = modules_or_skip!();
    let mut server = Server::start("ws-server", &["127.0.0.1:0"]);
    let url = format!("ws://{}/connect", server.addr);
    let (ok, out) = run_node(modules, "ws_client.js", &["session", &url]);
    assert!(ok, "{out}");
    for line in [
        "ok: Welcome, session ",
        "ok: echo in the session",
        "ok: Pong 7 for Ping 7",
        "ok: CloseOk",
        "ok: graceful close, 1000",
    ] {
        assert!(out.contains(line), "missing {line:?}");
    }
    assert!(server.is_running());
}

#[test]
fn node_subscribes_receives_uses_a_wildcard_and_unsubscribes() {
    let modules = modules_or_skip!();
    let mut server = Server::start("ws-server", &["--tick-ms", "50", "127.0.0.1:0"]);
    let url = format!("ws://{}/connect", server.addr);
    let (ok, out) = run_node(modules, "ws_client.js", &["pubsub", &url]);
    assert!(ok, "{out}");
    for line in [
        "ok: SubscribeAck for ticks.odd",
        "ok: 3 messages on ticks.odd, none on ticks.even",
        "ok: SubscribeAck for ticks.*",
        "ok: ticks.>.x refused as an invalid filter",
        "ok: the wildcard ticks.* brought ticks.even too, each tick once",
        "ok: after Unsubscribe ticks.*, only ticks.odd",
        "ok: graceful close, 1000",
    ] {
        assert!(out.contains(line), "missing {line:?}");
    }
    assert!(server.is_running());
}

/// A headless Chromium with a fresh profile and the DevTools protocol on a free port; killed
/// when dropped.
struct Chromium {
    child: Child,
    profile: PathBuf,
}

impl Chromium {
    fn start() -> Result<(Chromium, String), String> {
        let profile = std::env::temp_dir().join(format!("connect-chromium-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("profile dir");
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("`chromium` cannot run here: {e}"))?;
        let mut chromium = Chromium { child, profile };
        // Chromium writes its DevTools port and path into the profile once it listens.
        let active = chromium.profile.join("DevToolsActivePort");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(text) = std::fs::read_to_string(&active) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    let url = format!("ws://127.0.0.1:{port}{path}");
                    return Ok((chromium, url));
                }
            }
            if let Ok(Some(status)) = chromium.child.try_wait() {
                panic!("chromium exited at start: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("chromium did not open its DevTools port within 30 s");
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

#[test]
fn the_browser_page_opens_a_session_echoes_and_shows_topic_messages() {
    let modules = modules_or_skip!();
    let mut server = Server::start("ws-server", &["--tick-ms", "100", "127.0.0.1:0"]);
    let (_chromium, devtools) = match Chromium::start() {
        Ok(started) => started,
        Err(why) => {
            println!("SKIPPED: {why}");
            return;
        }
    };
    // The page as a person opens it (from the printed URL), in its self-test mode.
    let page = format!("http://{}/?selftest", server.addr);
    let (ok, out) = run_node(modules, "browser_check.js", &[&devtools, &page]);
    assert!(ok, "{out}");
    let json = &out[out.find('{').expect("the page's results")..];
    let results: serde_json::Value = serde_json::from_str(json.trim()).expect("results JSON");
    assert!(results["welcome"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(
        results["echoes"],
        serde_json::json!(["echo 1", "echo 2", "echo 3"])
    );
    // The ticker came through publish/subscribe: the page's filter was acknowledged, and the
    // messages arrived as `Publish` frames on the topics it matches.
    assert_eq!(results["subscribed"], serde_json::json!(["ticks.*"]));
    assert!(
        results["ticks"].as_u64().is_some_and(|n| n >= 3),
        "{results}"
    );
    let topics = results["topics"].as_object().expect("topics");
    assert!(
        topics.keys().all(|t| t == "ticks.odd" || t == "ticks.even") && topics.len() == 2,
        "{results}"
    );
    assert_eq!(results["pong"], 42);
    assert_eq!(results["closed"]["code"], 1000);
    assert!(server.is_running());
}

/// Interop over TCP and TLS from JavaScript: Node's `net` and `tls` with protobuf.js's
/// `encodeDelimited`/`decodeDelimited` against `tcp-echo-server` and `tls-echo-server` (mutual
/// TLS), reassembling frames split across reads as `PROTOCOL.md` says.
#[test]
fn node_talks_to_the_tcp_and_tls_echo_examples() {
    use support::certs::{temp_dir, Ca, Role};
    let modules = modules_or_skip!();
    let mut tcp = Server::start("tcp-echo-server", &["127.0.0.1:0"]);
    let (ok, out) = run_node(modules, "tcp_client.js", &["tcp", &tcp.addr.to_string()]);
    assert!(ok, "{out}");
    assert!(out.contains("ok: 8 messages echoed unchanged"), "{out}");

    let dir = temp_dir("js-tls-interop");
    let ca = Ca::new("interop CA");
    let ca_pem = ca.write(&dir, "ca");
    let (server_pem, server_key) = ca
        .issue("server", &["localhost"], Role::Server)
        .write(&dir, "server");
    let (client_pem, client_key) = ca
        .issue("node-client", &["node-client"], Role::Client)
        .write(&dir, "client");
    let path = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_string();
    let mut tls = Server::start(
        "tls-echo-server",
        &[
            "127.0.0.1:0",
            "--cert",
            &path(&server_pem),
            "--key",
            &path(&server_key),
            "--client-ca",
            &path(&ca_pem),
        ],
    );
    let (ok, out) = run_node(
        modules,
        "tcp_client.js",
        &[
            "tls",
            &tls.addr.to_string(),
            &path(&ca_pem),
            "localhost",
            &path(&client_pem),
            &path(&client_key),
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("ok: connected over TLSv1.3"), "{out}");
    assert!(out.contains("ok: 8 messages echoed unchanged"), "{out}");
    assert!(tcp.is_running() && tls.is_running());
}

/// Go over TCP: `tests/go/tcp_client.go` (packing an `Any`, writing frames, reading them off a
/// `bufio.Reader`: the snippets of PROTOCOL.md, "From Go") against `tcp-echo-server`, with
/// Debian's Go and google.golang.org/protobuf in GOPATH mode (nothing downloaded).
#[test]
fn go_reads_and_writes_frames_over_tcp() {
    const GOPATH: &str = "/usr/share/gocode";
    let go_runs = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !go_runs {
        println!("SKIPPED: `go` cannot run here (Debian: golang-go)");
        return;
    }
    if !std::path::Path::new(GOPATH)
        .join("src/google.golang.org/protobuf/proto")
        .is_dir()
    {
        println!("SKIPPED: google.golang.org/protobuf is not in {GOPATH} (Debian: golang-google-protobuf-dev)");
        return;
    }
    let mut server = Server::start("tcp-echo-server", &["127.0.0.1:0"]);
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-cache");
    let output = Command::new("go")
        .arg("run")
        .arg(support::repo_root().join("tests/go/tcp_client.go"))
        .arg(server.addr.to_string())
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOCACHE", &cache)
        .env("GOFLAGS", "")
        .output()
        .expect("run go");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("tcp_client.go:\n{out}");
    assert!(output.status.success(), "{out}");
    assert!(
        out.contains("ok: packed as type.googleapis.com/google.protobuf.StringValue"),
        "{out}"
    );
    assert!(out.contains("ok: 8 messages echoed unchanged"), "{out}");
    assert!(server.is_running());
}
