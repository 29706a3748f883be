//! `TcpListener::incoming` yields accept errors and keeps going. Run in its own test binary
//! because it exhausts the process's file descriptors on purpose.

use std::fs::File;
use std::time::Duration;

use async_std::future::timeout;
use connect::transport::tcp::TcpListener;
use connect::Error;
use futures::StreamExt;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

#[async_std::test]
async fn running_out_of_file_descriptors_is_an_error_item_not_the_end() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = listener.incoming();

    // A low limit keeps the number of files to open small.
    let original = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(256),
            maximum: original.maximum,
        },
    )
    .unwrap();

    // Use up every descriptor, then free exactly one for the client's socket.
    let mut hogs = Vec::new();
    while let Ok(file) = File::open("/dev/null") {
        hogs.push(file);
    }
    assert!(!hogs.is_empty());
    hogs.pop();
    let _client = std::net::TcpStream::connect(addr).unwrap();

    // The connection is pending, but accepting it needs a descriptor there is none of.
    let limit = Duration::from_secs(10);
    match timeout(limit, incoming.next()).await {
        Ok(Some(Err(Error::Io(e)))) => assert_eq!(e.raw_os_error(), Some(24), "EMFILE: {e}"),
        other => panic!("expected an EMFILE error item, got {other:?}"),
    }

    // With descriptors back, the same stream accepts the waiting connection.
    hogs.clear();
    setrlimit(Resource::Nofile, original).unwrap();
    let conn = timeout(limit, incoming.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(conn.peer_addr().is_some());
}
