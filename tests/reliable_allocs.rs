//! A reliable stream's steady state allocates (almost) nothing per message for a message whose
//! large field is `bytes::Bytes`: `feed_message` encodes into a buffer that many messages share
//! (no `Any` per message), the link writes that encoding as is, and `recv_message` decodes from
//! the frame the session received (the field is a slice of the connection's read buffer).
//! Counted with a counting global allocator over the whole process (both sides, both links),
//! so this file holds this one test only.

#[path = "support/counting.rs"]
mod counting;
mod support;

use std::time::Duration;

use bytes::Bytes;
use connect::reliable::{Accepted, ReliableConfig, ReliableServer};
use connect::session::SessionConfig;
use connect::transport::tcp::{self, TcpListener};
use counting::{allocations, Blob, PAYLOAD};
use support::spawn;

const WARM_UP: usize = 2_000;
const COUNTED: usize = 20_000;

#[async_std::test]
async fn steady_state_reliable_traffic_allocates_almost_nothing_per_message() {
    async_std::future::timeout(Duration::from_secs(60), run())
        .await
        .expect("the transfer took more than 60 s");
}

async fn run() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = async_std::task::spawn(async move {
        let conn = listener.accept().await.unwrap();
        let server = ReliableServer::new(SessionConfig::new(), ReliableConfig::new());
        let Accepted::NewStream { mut stream, driver } = server.accept(conn).await.unwrap() else {
            panic!("not a new stream");
        };
        async_std::task::spawn(driver);
        let mut first_counted = 0;
        for i in 0..WARM_UP + COUNTED {
            if i == WARM_UP {
                first_counted = allocations();
            }
            let blob: Blob = stream.recv_message().await.unwrap().unwrap();
            assert_eq!(blob.data, PAYLOAD[..]);
        }
        let counted = allocations() - first_counted;
        // Tell the sender we are done, then wait for its close.
        stream.send_message(&Blob::default()).await.unwrap();
        assert!(stream.recv().await.unwrap().is_none());
        counted
    });

    let mut stream =
        tcp::connect_reliable(addr, SessionConfig::new(), ReliableConfig::new(), spawn);
    // A static payload: making it allocates nothing, so only what the layers allocate counts.
    let blob = Blob {
        data: Bytes::from_static(&PAYLOAD),
    };
    for _ in 0..WARM_UP + COUNTED {
        stream.feed_message(&blob).await.unwrap();
    }
    stream.flush().await.unwrap();
    let _done: Blob = stream.recv_message().await.unwrap().unwrap();
    stream.close().await.unwrap();
    let counted = receiver.await;
    // Before, a reliable stream allocated about 5 times per message here (an `Any` per
    // message on each side and the copy out of it). Encode buffers, reads, acknowledgements
    // and wake-ups that carry many messages may allocate now and then.
    let per_message = counted as f64 / COUNTED as f64;
    println!("{per_message:.3} allocations per message ({counted} over {COUNTED})");
    assert!(
        per_message < 0.5,
        "{per_message:.2} allocations per message ({counted} over {COUNTED})"
    );
}
