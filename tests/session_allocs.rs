//! A session's steady state allocates nothing per message for a message whose large field is
//! `bytes::Bytes`: the writer encodes into the buffer its driver hands to the connection (no
//! `Any` per message), and `recv_message` decodes from the connection's read buffer (the field
//! is a slice of it). Counted with a counting global allocator over the whole process (both
//! sides, both drivers), so this file holds this one test only.

#[path = "support/counting.rs"]
mod counting;
mod support;

use std::time::Duration;

use bytes::Bytes;
use connect::session::SessionConfig;
use connect::transport::tcp::{self, TcpListener};
use counting::{allocations, Blob, PAYLOAD};
use support::spawn;

const WARM_UP: usize = 2_000;
const COUNTED: usize = 20_000;

#[async_std::test]
async fn steady_state_session_traffic_allocates_nothing_per_message() {
    async_std::future::timeout(Duration::from_secs(60), run())
        .await
        .expect("the transfer took more than 60 s");
}

async fn run() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = async_std::task::spawn(async move {
        let conn = listener.accept().await.unwrap();
        let mut session = tcp::accept_session(conn, &SessionConfig::new(), spawn)
            .await
            .unwrap();
        let mut first_counted = 0;
        for i in 0..WARM_UP + COUNTED {
            if i == WARM_UP {
                first_counted = allocations();
            }
            let blob: Blob = session.recv_message().await.unwrap().unwrap();
            assert_eq!(blob.data, PAYLOAD[..]);
        }
        let counted = allocations() - first_counted;
        // Tell the sender we are done, then wait for its close.
        session.send_message(&Blob::default()).await.unwrap();
        assert!(session.recv().await.unwrap().is_none());
        counted
    });

    let mut session = tcp::connect_session(addr, &SessionConfig::new(), spawn)
        .await
        .unwrap();
    // A static payload: making it allocates nothing, so only what the layers allocate counts.
    let blob = Blob {
        data: Bytes::from_static(&PAYLOAD),
    };
    for _ in 0..WARM_UP + COUNTED {
        session.feed_message(&blob).await.unwrap();
    }
    session.flush().await.unwrap();
    let _done: Blob = session.recv_message().await.unwrap().unwrap();
    session.close().await.unwrap();
    let counted = receiver.await;
    // Before, a session allocated about 5 times per message here (an `Any` per message on
    // each side and the copy out of it). Reads and wake-ups that carry many messages may
    // allocate now and then.
    let per_message = counted as f64 / COUNTED as f64;
    assert!(
        per_message < 0.5,
        "{per_message:.2} allocations per message ({counted} over {COUNTED})"
    );
}
