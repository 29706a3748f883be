//! Attacks on the reliable layer; see `tests/adversarial.rs`.
//!
//! The attacker speaks the reliable protocol by hand over a plain session (capability
//! `connect.reliable.v1`): its own `Resume`s, floods of messages, and never reading.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_std::task;
use connect::prost_types::Any;
use connect::proto::example::HelloWorld;
use connect::proto::reliable::{Resume, ResumeStatus};
use connect::reliable::{
    self, Backoff, ReliableConfig, ReliableServer, ReliableWriter, Stats, CAPABILITY,
};
use connect::session::{self, Session, SessionConfig};
use connect::transport::tcp::{self, TcpListener};

fn hello(sequence: u64) -> Any {
    Any::from_msg(&HelloWorld {
        text: "m".into(),
        sequence,
    })
    .unwrap()
}

async fn within<F: std::future::Future>(secs: u64, what: &str, fut: F) -> F::Output {
    async_std::future::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {secs} s"))
}

/// A reliable echo server; the writers of its streams are kept for their [`Stats`].
async fn server(
    config: ReliableConfig,
) -> (SocketAddr, ReliableServer, Arc<Mutex<Vec<ReliableWriter>>>) {
    server_with(SessionConfig::new(), config).await
}

async fn server_with(
    session_config: SessionConfig,
    config: ReliableConfig,
) -> (SocketAddr, ReliableServer, Arc<Mutex<Vec<ReliableWriter>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = ReliableServer::new(session_config, config);
    let writers: Arc<Mutex<Vec<ReliableWriter>>> = Arc::default();
    let (srv, ws) = (server.clone(), writers.clone());
    task::spawn(async move {
        loop {
            let Ok(conn) = listener.accept().await else {
                continue;
            };
            let (srv, ws) = (srv.clone(), ws.clone());
            task::spawn(async move {
                let Ok(accepted) = srv.accept(conn).await else {
                    return;
                };
                match accepted {
                    connect::reliable::Accepted::NewStream { mut stream, driver } => {
                        ws.lock().unwrap().push(stream.writer());
                        task::spawn(async move {
                            while let Ok(Some(any)) = stream.recv().await {
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
    (addr, server, writers)
}

/// A well-behaved client gets its messages echoed and closes.
async fn well_behaved_client_is_served(addr: SocketAddr) {
    let config = ReliableConfig::new().with_backoff(
        Backoff::new()
            .with_initial(Duration::from_millis(5))
            .with_max(Duration::from_millis(50))
            .with_max_attempts(Some(100)),
    );
    let mut stream =
        tcp::connect_reliable(addr, SessionConfig::new(), config, crate::support::spawn);
    within(20, "well-behaved client", async {
        for i in 0..10 {
            stream.send_confirmed(hello(i)).await.unwrap();
        }
        for i in 0..10 {
            let any = stream.recv().await.unwrap().unwrap();
            assert_eq!(any.to_msg::<HelloWorld>().unwrap().sequence, i);
        }
        stream.close().await.unwrap();
    })
    .await;
}

/// A session that asked for reliable delivery, and its spawned driver.
struct Raw {
    session: Session,
    driver: task::JoinHandle<connect::session::SessionEnd>,
}

impl Raw {
    /// Drops the connection without a close, as a cut would.
    async fn cut(self) {
        self.driver.cancel().await;
    }
}

/// Sends `resume` on a new session and reads the server's answer; the session stays open.
async fn resume(addr: SocketAddr, resume: &Resume) -> (Raw, Resume) {
    resume_with(addr, SessionConfig::new(), resume).await
}

async fn resume_with(addr: SocketAddr, config: SessionConfig, resume: &Resume) -> (Raw, Resume) {
    let conn = tcp::connect(addr).await.unwrap();
    let config = config.with_capability(CAPABILITY);
    let (mut session, driver) = session::connect(conn, &config).await.unwrap();
    let driver = task::spawn(driver);
    session.send(Any::from_msg(resume).unwrap()).await.unwrap();
    let answer = within(10, "Resume answer", futures::StreamExt::next(&mut session))
        .await
        .expect("an answer, not a dropped link")
        .unwrap();
    (Raw { session, driver }, answer.to_msg::<Resume>().unwrap())
}

fn fresh(stream_id: u8) -> Resume {
    Resume {
        stream_id: vec![stream_id; 16],
        window_messages: 1024,
        window_bytes: 1 << 20,
        ..Resume::default()
    }
}

fn status(answer: &Resume) -> ResumeStatus {
    ResumeStatus::try_from(answer.status).unwrap()
}

#[async_std::test]
async fn nack_flood_with_huge_type_urls_keeps_retained_nacks_bounded() {
    let accepts: reliable::Accepts = Arc::new(|url: &str| url.ends_with("HelloWorld"));
    let (addr, _server, writers) = server(ReliableConfig::new().with_accepts(accepts)).await;
    let (raw, answer) = resume(addr, &fresh(1)).await;
    assert_eq!(status(&answer), ResumeStatus::NewStream);
    let mut session = raw.session;
    let _driver = raw.driver;
    within(10, "the server's application has the stream", async {
        while writers.lock().unwrap().is_empty() {
            task::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    // 16 KiB type URLs nobody handles, written as fast as the server takes them, never read.
    const FLOOD: u64 = 3000;
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let attacker = task::spawn(async move {
        let url = format!("type.googleapis.com/x.{}", "A\n".repeat(8 * 1024));
        for _ in 0..FLOOD {
            let any = Any {
                type_url: url.clone(),
                value: vec![],
            };
            if session.send(any).await.is_err() {
                break;
            }
            counter.fetch_add(1, Ordering::SeqCst);
        }
        session
    });
    let stats = || -> Stats { writers.lock().unwrap()[0].stats() };
    let mut peak = (0, 0);
    // Sample while the attack runs (bounded: 3000 samples).
    for _ in 0..3000 {
        let s = stats();
        peak = (
            peak.0.max(s.retained_nacks),
            peak.1.max(s.retained_nack_bytes),
        );
        if sent.load(Ordering::SeqCst) >= FLOOD {
            break;
        }
        task::sleep(Duration::from_millis(2)).await;
    }
    let s = stats();
    peak = (
        peak.0.max(s.retained_nacks),
        peak.1.max(s.retained_nack_bytes),
    );
    let flooded = sent.load(Ordering::SeqCst);
    println!("{flooded} refused messages of 16 KiB; peak retained Nacks {peak:?}");
    assert!(
        flooded > 1100,
        "the flood went past the retained bound: {flooded}"
    );
    assert!(peak.0 <= 1024 + 64, "retained Nacks {}", peak.0);
    assert!(
        peak.1 <= 64 * 1024 + 64 * 200,
        "retained Nack bytes {}",
        peak.1
    );
    assert!(s.inbound_bytes == 0, "refused messages are not queued");
    well_behaved_client_is_served(addr).await;
    drop(attacker);
}

/// Reproduces "with max streams 1, one bogus resume left the stream kept past its 1 s resume
/// timeout and every new client was refused".
#[async_std::test]
async fn a_bogus_resume_neither_keeps_a_stream_nor_locks_out_new_clients() {
    let config = ReliableConfig::new()
        .with_max_streams(1)
        .with_resume_timeout(Duration::from_secs(1));
    let (addr, server, _) = server(config).await;
    let (session, answer) = resume(addr, &fresh(2)).await;
    assert_eq!(status(&answer), ResumeStatus::NewStream);
    assert_ne!(answer.incarnation, 0);
    session.cut().await;
    // The same stream, with a count no honest client sends.
    let bogus = Resume {
        incarnation: answer.incarnation,
        received: 1000,
        ..fresh(2)
    };
    let (_session, refused) = resume(addr, &bogus).await;
    assert_eq!(status(&refused), ResumeStatus::Refused, "{refused:?}");
    assert!(
        refused.reason.contains("received 1000"),
        "{}",
        refused.reason
    );
    // While the stream is kept, a new one is refused explicitly (BUSY), not dropped.
    if server.stream_count() == 1 {
        let (_s, busy) = resume(addr, &fresh(3)).await;
        assert!(
            matches!(status(&busy), ResumeStatus::Busy | ResumeStatus::NewStream),
            "{busy:?}"
        );
    }
    within(20, "the detached stream expires", async {
        while server.stream_count() > 0 {
            task::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    well_behaved_client_is_served(addr).await;
}

#[async_std::test]
async fn oversized_stream_ids_are_refused_not_kept() {
    let (addr, server, _) = server(ReliableConfig::new()).await;
    for len in [0, 65, 1 << 20] {
        let huge = Resume {
            stream_id: vec![9; len],
            ..fresh(0)
        };
        let (_s, refused) = resume(addr, &huge).await;
        assert_eq!(status(&refused), ResumeStatus::Refused, "{len}");
        assert!(refused.stream_id.len() <= 64, "not echoed back");
        assert_eq!(server.stream_count(), 0);
    }
    well_behaved_client_is_served(addr).await;
}

#[async_std::test]
async fn dishonest_counts_are_refused_and_the_stream_stays_resumable() {
    let (addr, server, _) = server(ReliableConfig::new()).await;
    let (session, answer) = resume(addr, &fresh(4)).await;
    let incarnation = answer.incarnation;
    session.cut().await;
    for (received, acknowledged) in [(1, 0), (0, 1), (u64::MAX, 0), (0, u64::MAX)] {
        let lie = Resume {
            incarnation,
            received,
            acknowledged,
            ..fresh(4)
        };
        let (_s, refused) = resume(addr, &lie).await;
        assert_eq!(
            status(&refused),
            ResumeStatus::Refused,
            "{received}/{acknowledged}"
        );
    }
    assert_eq!(server.stream_count(), 1);
    let honest = Resume {
        incarnation,
        ..fresh(4)
    };
    let (_s, resumed) = resume(addr, &honest).await;
    assert_eq!(status(&resumed), ResumeStatus::Resumed);
    assert!(resumed.resumed);
    assert_eq!(resumed.incarnation, incarnation);
    well_behaved_client_is_served(addr).await;
}

#[async_std::test]
async fn the_stream_table_and_its_tombstones_stay_bounded() {
    const MAX: usize = 4;
    let config = ReliableConfig::new().with_max_streams(MAX);
    let (addr, server, _) = server(config).await;
    // Streams opened and abandoned: the longest-detached makes room.
    for id in 0..20 {
        let (session, answer) = resume(addr, &fresh(100 + id)).await;
        assert_eq!(status(&answer), ResumeStatus::NewStream);
        session.cut().await;
        assert!(server.stream_count() <= MAX);
    }
    // Streams held attached: once all are, a new one is answered BUSY.
    let mut held = Vec::new();
    for id in 0..MAX as u8 {
        held.push(resume(addr, &fresh(200 + id)).await.0);
    }
    let (_s, busy) = resume(addr, &fresh(250)).await;
    assert_eq!(status(&busy), ResumeStatus::Busy, "{busy:?}");
    assert!(busy.reason.contains("too many streams"), "{}", busy.reason);
    drop(held);
    // Streams closed gracefully leave tombstones, bounded by the same limit.
    for _ in 0..2 * MAX {
        well_behaved_client_is_served(addr).await;
        assert!(server.closed_count() <= MAX, "{}", server.closed_count());
    }
    // A closing client whose stream the server does not know gets CLOSED, and no stream.
    let before = server.stream_count();
    let closing = Resume {
        closing: true,
        incarnation: 42,
        ..fresh(251)
    };
    let (_s, closed) = resume(addr, &closing).await;
    assert_eq!(status(&closed), ResumeStatus::Closed);
    assert!(server.stream_count() <= before, "a close opened a stream");
}

#[async_std::test]
async fn another_identity_cannot_resume_or_learn_a_stream() {
    use connect::proto::v1::Credentials;
    use connect::session::PlainAuthenticator;
    let auth = PlainAuthenticator::new()
        .with_user("alice", "a")
        .with_user("mallory", "m");
    let (addr, server, _) = server_with(
        SessionConfig::new().with_authenticator(auth),
        ReliableConfig::new(),
    )
    .await;
    let as_user = |user: &str, password: &str| {
        SessionConfig::new().with_credentials(Credentials::plain(user, password))
    };
    let (alice, answer) = resume_with(addr, as_user("alice", "a"), &fresh(7)).await;
    assert_eq!(status(&answer), ResumeStatus::NewStream);
    alice.cut().await;
    // Mallory knows the stream id, not the incarnation; either way the answer is REFUSED.
    for incarnation in [0, answer.incarnation] {
        let theft = Resume {
            incarnation,
            ..fresh(7)
        };
        let (_m, refused) = resume_with(addr, as_user("mallory", "m"), &theft).await;
        assert_eq!(status(&refused), ResumeStatus::Refused, "{refused:?}");
        assert_eq!(refused.incarnation, 0, "nothing about the stream is told");
        assert!(
            refused.reason.contains("another identity"),
            "{}",
            refused.reason
        );
    }
    // Alice's stream is untouched and resumes.
    let honest = Resume {
        incarnation: answer.incarnation,
        ..fresh(7)
    };
    let (_a, resumed) = resume_with(addr, as_user("alice", "a"), &honest).await;
    assert_eq!(status(&resumed), ResumeStatus::Resumed);
    assert_eq!(server.stream_count(), 1);
}
