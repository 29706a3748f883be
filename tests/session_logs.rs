//! Credentials never reach the log, at any level, whether authentication succeeds or fails.
//! (A test binary of its own: it installs a global logger that records everything.)

mod support;

use support::spawn;

use std::sync::Mutex;
use std::time::Duration;

use connect::proto::v1::{Credentials, ReasonCode};
use connect::session::{PlainAuthenticator, SessionConfig};
use connect::transport::tcp::{self, TcpListener};

static LOGGED: Mutex<String> = Mutex::new(String::new());

struct Recorder;

impl log::Log for Recorder {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let line = format!(
            "{} {}: {}\n",
            record.level(),
            record.target(),
            record.args()
        );
        LOGGED.lock().unwrap().push_str(&line);
    }
    fn flush(&self) {}
}

#[async_std::test]
async fn credentials_never_appear_in_logs() {
    log::set_logger(&Recorder).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let password = "pw-Zq8vX3";
    let wrong = "pw-wrong-K7d2";
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = SessionConfig::new()
        .with_authenticator(PlainAuthenticator::new().with_user("alice", password));
    let server = async_std::task::spawn(async move {
        for _ in 0..2 {
            let conn = listener.accept().await.unwrap();
            if let Ok(mut session) = tcp::accept_session(conn, &config, spawn).await {
                log::debug!("server config {config:?}");
                while session.recv().await.unwrap().is_some() {}
            }
        }
    });
    let bad = SessionConfig::new().with_credentials(Credentials::plain("alice", wrong));
    log::debug!("client config {bad:?}");
    assert!(tcp::connect_session(addr, &bad, spawn).await.is_err());
    let good = SessionConfig::new().with_credentials(Credentials::plain("alice", password));
    log::debug!("client config {good:?}");
    let mut session = tcp::connect_session(addr, &good, spawn).await.unwrap();
    session.close_with(ReasonCode::Normal, "").await.unwrap();
    async_std::future::timeout(Duration::from_secs(20), server)
        .await
        .unwrap();

    let logged = LOGGED.lock().unwrap().clone();
    assert!(logged.contains("authentication failed"), "{logged}");
    assert!(logged.contains("<redacted>"), "{logged}");
    assert!(!logged.contains(password), "{logged}");
    assert!(!logged.contains(wrong), "{logged}");
}
