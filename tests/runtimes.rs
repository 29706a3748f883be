//! The core is runtime-agnostic: the same `Connection` and `Dispatcher` over smol's and tokio's
//! TCP streams (tokio through `tokio_util::compat`), with no async-std involved.

use connect::dispatch::{Context, Dispatcher, Reply};
use connect::proto::example::HelloWorld;
use connect::{Connection, Error};

fn dispatcher() -> Dispatcher {
    Dispatcher::new().on(|hello: HelloWorld, _: Context| async move {
        let text = hello.text.to_uppercase();
        Ok::<_, Error>(Reply::message(&HelloWorld { text, ..hello }))
    })
}

/// Pipelines `n` requests on `conn`, checks the replies, closes, and expects a clean end.
async fn converse<T>(mut conn: Connection<T>, n: u64)
where
    T: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    for sequence in 0..n {
        let text = format!("message {sequence}");
        conn.feed_message(&HelloWorld { text, sequence })
            .await
            .unwrap();
    }
    conn.flush().await.unwrap();
    for sequence in 0..n {
        let reply: HelloWorld = conn.recv_message().await.unwrap().expect("reply");
        assert_eq!(reply.sequence, sequence);
        assert_eq!(reply.text, format!("MESSAGE {sequence}"));
    }
    conn.close().await.unwrap();
    assert!(conn.recv().await.unwrap().is_none());
}

#[test]
fn smol() {
    smol::block_on(async {
        let listener = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = smol::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            dispatcher().serve(Connection::new(stream)).await
        });
        let stream = smol::net::TcpStream::connect(addr).await.unwrap();
        converse(Connection::new(stream), 1000).await;
        server.await.unwrap();
    });
}

#[test]
fn tokio() {
    use tokio_util::compat::TokioAsyncReadCompatExt;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            dispatcher().serve(Connection::new(stream.compat())).await
        });
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        converse(Connection::new(stream.compat()), 1000).await;
        server.await.unwrap().unwrap();
    });
}
