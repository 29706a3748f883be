//! Panic containment in the endpoint driver, with test hooks that make the driver panic where
//! no known input does: inside one association's processing, and in the driver itself.

use std::net::SocketAddr;
use std::time::Duration;

use async_std::future::timeout;

use super::endpoint::Shared;
use super::*;
use crate::proto::example::HelloWorld;

/// Hang guard: generous, only there so a hang fails instead of blocking CI.
const STEP: Duration = Duration::from_secs(60);

fn hello(sequence: u64) -> HelloWorld {
    HelloWorld {
        text: "hi".into(),
        sequence,
    }
}

/// A connected pair: the client's connection and the listener's side of it.
async fn pair(listener: &SctpListener) -> (SctpConnection, SctpConnection) {
    let client = connect(listener.local_addr()).await.expect("connect");
    let server = listener.accept().await.expect("accept");
    (client, server)
}

async fn echo_once(client: &mut SctpConnection, server: &mut SctpConnection, sequence: u64) {
    let round = async {
        client.send_message(&hello(sequence)).await?;
        let got: HelloWorld = server.recv_message().await?.expect("a message");
        server.send_message(&got).await?;
        let back: HelloWorld = client.recv_message().await?.expect("an echo");
        assert_eq!(back.sequence, sequence);
        Ok::<_, crate::Error>(())
    };
    timeout(STEP, round).await.expect("in time").expect("echo");
}

/// Makes the driver of `shared` panic while processing the association whose peer is `peer`.
fn inject_association_panic(shared: &Shared, peer: SocketAddr) {
    let mut state = shared.lock();
    let handle = *state
        .assocs
        .iter_mut()
        .find(|(_, a)| a.inner.remote_addr() == peer)
        .expect("the association")
        .0;
    state
        .assocs
        .get_mut(&handle)
        .expect("present")
        .panic_next_round = true;
    state.wake_driver(handle);
}

#[async_std::test]
async fn a_panic_in_one_association_ends_only_that_one() {
    let listener = SctpListener::bind("127.0.0.1:0").await.expect("bind");
    let (mut client_a, mut server_a) = pair(&listener).await;
    let (mut client_b, mut server_b) = pair(&listener).await;
    echo_once(&mut client_a, &mut server_a, 1).await;
    echo_once(&mut client_b, &mut server_b, 1).await;

    let peer_a = client_a.local_addr().expect("local address");
    inject_association_panic(&listener.shared, peer_a);

    // The crashed association's stream fails with an error instead of hanging...
    let read = timeout(STEP, server_a.recv()).await.expect("no hang");
    let err = read.expect_err("the crashed association fails");
    assert!(err.to_string().contains("internal error"), "{err}");
    assert!(timeout(STEP, server_a.send_message(&hello(2)))
        .await
        .expect("no hang")
        .is_err());
    // ...while the other association and the listener go on.
    for sequence in 2..5 {
        echo_once(&mut client_b, &mut server_b, sequence).await;
    }
    let (mut client_c, mut server_c) = timeout(STEP, pair(&listener)).await.expect("in time");
    echo_once(&mut client_c, &mut server_c, 1).await;
    // Once its stream is dropped (which wakes the driver), the crashed association is removed.
    drop(server_a);
    timeout(STEP, async {
        while listener.shared.lock().assocs.len() > 2 {
            async_std::task::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the crashed association is removed");
}

/// Makes the driver of `shared` (which has at least one association) panic outside any
/// association's processing.
fn kill_driver(shared: &Shared) {
    let mut state = shared.lock();
    state.panic_driver = true;
    let handle = *state.assocs.keys().next().expect("an association");
    state.wake_driver(handle);
}

#[async_std::test]
async fn a_dead_driver_fails_every_pending_operation() {
    let listener = SctpListener::bind("127.0.0.1:0").await.expect("bind");
    let (mut client, mut server) = pair(&listener).await;
    echo_once(&mut client, &mut server, 1).await;

    // Operations waiting on the driver when it dies: an accept and a read.
    let shared = listener.shared.clone();
    let pending_accept = async_std::task::spawn(async move {
        let result = listener.accept().await.map(drop);
        (listener, result)
    });
    let pending_read = async_std::task::spawn(async move {
        let result = server.recv().await.map(drop);
        (server, result)
    });
    async_std::task::sleep(Duration::from_millis(50)).await;
    kill_driver(&shared);
    let (listener, accepted) = timeout(STEP, pending_accept).await.expect("no hang");
    assert!(accepted.is_err(), "accept fails once the driver is gone");
    let (mut server, read) = timeout(STEP, pending_read).await.expect("no hang");
    assert!(
        read.is_err(),
        "a pending read fails once the driver is gone"
    );
    // And so does everything after.
    assert!(timeout(STEP, server.send_message(&hello(2)))
        .await
        .expect("no hang")
        .is_err());
    assert!(timeout(STEP, listener.accept())
        .await
        .expect("no hang")
        .is_err());
    // The client has a driver of its own, which is unaffected: its connection is still open.
    client
        .send_message(&hello(3))
        .await
        .expect("client still works");
    // The same on a client endpoint: its connection fails instead of hanging.
    let listener = SctpListener::bind("127.0.0.1:0").await.expect("bind");
    let (client, _server) = pair(&listener).await;
    let stream = client.into_inner();
    kill_driver(&stream.shared);
    let mut client = stream.into_connection(SctpConfig::default().connection_config());
    let read = timeout(STEP, client.recv()).await.expect("no hang");
    assert!(
        read.is_err(),
        "the client's read fails once its driver is gone"
    );
}
