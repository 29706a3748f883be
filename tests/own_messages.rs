//! A user's own message type whose `Name::type_url()` is prost's default `/pkg.Name` (no
//! `type_name_domain` in its prost-build, or a hand-written `Name`) still goes out as
//! `type.googleapis.com/pkg.Name`, on every path that packs a message: the codec, a connection,
//! a dispatcher's reply, a session, a reliable stream.

use std::time::Duration;

use bytes::BytesMut;
use connect::codec::Codec;
use connect::dispatch::{Context, Dispatcher, Reply};
use connect::prost::{Message, Name};
use connect::reliable::{self, ReliableConfig, ReliableServer};
use connect::session::SessionConfig;
use connect::transport::tcp::{self, TcpListener};
use connect::transport::Task;
use connect::Connection;
use futures::io::Cursor;

const EXPECTED: &str = "type.googleapis.com/shop.v1.Order";

#[derive(Clone, PartialEq, Message)]
#[prost(prost_path = "connect::prost")]
struct Order {
    #[prost(string, tag = "1")]
    item: String,
}

impl Name for Order {
    const NAME: &'static str = "Order";
    const PACKAGE: &'static str = "shop.v1";
}

fn order() -> Order {
    Order { item: "tea".into() }
}

fn spawn(task: Task) {
    async_std::task::spawn(task);
}

async fn bounded<T>(future: impl std::future::Future<Output = T>) -> T {
    async_std::future::timeout(Duration::from_secs(30), future)
        .await
        .expect("finished within 30 s")
}

#[test]
fn the_premise_prost_names_the_type_with_a_bare_slash() {
    assert_eq!(Order::type_url(), "/shop.v1.Order");
    assert_eq!(connect::codec::type_url::<Order>(), EXPECTED);
}

#[test]
fn the_codec_packs_with_the_standard_prefix() {
    let codec = Codec::new();
    let mut wire = BytesMut::new();
    codec.encode_message(&order(), &mut wire).unwrap();
    let any = codec.decode(&mut wire).unwrap().unwrap();
    assert_eq!(any.type_url, EXPECTED);
}

#[async_std::test]
async fn a_connection_packs_with_the_standard_prefix() {
    let mut conn = Connection::new(Cursor::new(Vec::new()));
    conn.send_message(&order()).await.unwrap();
    let bytes = conn.into_inner().into_inner();
    let mut conn = Connection::new(Cursor::new(bytes));
    assert_eq!(conn.recv().await.unwrap().unwrap().type_url, EXPECTED);
}

#[async_std::test]
async fn a_dispatcher_reply_and_a_session_pack_with_the_standard_prefix() {
    bounded(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The server replies with an Order to whatever the session client sends.
        let server = async_std::task::spawn(async move {
            let conn = listener.accept().await?;
            let session = tcp::accept_session(conn, &SessionConfig::new(), spawn).await?;
            Dispatcher::new()
                .on(|order: Order, _: Context| async move {
                    Ok::<_, connect::Error>(Reply::message(&order))
                })
                .serve(session)
                .await
        });
        let mut session = tcp::connect_session(addr, &SessionConfig::new(), spawn)
            .await
            .unwrap();
        session.send_message(&order()).await.unwrap();
        let reply = session.recv().await.unwrap().unwrap();
        assert_eq!(reply.type_url, EXPECTED);
        session
            .close_with(connect::proto::v1::ReasonCode::Normal, "")
            .await
            .unwrap();
        server.await.unwrap();
    })
    .await;
}

#[async_std::test]
async fn a_reliable_stream_packs_with_the_standard_prefix() {
    bounded(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = ReliableServer::new(SessionConfig::new(), ReliableConfig::new());
        let received = async_std::task::spawn(async move {
            let conn = listener.accept().await.unwrap();
            let accepted = server.accept(conn).await.unwrap();
            let connect::reliable::Accepted::NewStream { mut stream, driver } = accepted else {
                panic!("a new stream expected")
            };
            async_std::task::spawn(driver);
            stream.recv().await.unwrap().unwrap()
        });
        let (mut stream, driver) = reliable::client(
            move || tcp::connect(addr),
            SessionConfig::new(),
            ReliableConfig::new(),
        );
        async_std::task::spawn(driver);
        stream.feed_message(&order()).await.unwrap();
        assert_eq!(received.await.type_url, EXPECTED);
    })
    .await;
}
