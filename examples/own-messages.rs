//! Your own message types, without a `.proto` file or a build script: a `#[derive(Message)]`
//! struct and a hand-written `prost::Name` impl, using only the `prost` that `connect`
//! re-exports.
//!
//! ```text
//! cargo run --example own-messages
//! ```
//!
//! The `prost_path` attribute tells the derive to refer to `connect::prost` instead of a `prost`
//! crate of your own, so `connect` is the only dependency you need. `Name` gives the full name
//! (`shop.v1.Order`) the dispatcher routes by; every message goes out with the type URL
//! `type.googleapis.com/shop.v1.Order`, whatever `Name::type_url` says (prost's default here
//! would be `/shop.v1.Order`).
//!
//! With a `.proto` file, generate the same with `prost-build` in your own `build.rs` instead (see
//! the README, "Your own message types").

use std::sync::Arc;

use connect::dispatch::{Context, Dispatcher, Reply};
use connect::prost::{Message, Name};
use connect::transport::tcp::{self, TcpListener};

/// `message Order { string item = 1; uint32 quantity = 2; }` in package `shop.v1`.
#[derive(Clone, PartialEq, Message)]
#[prost(prost_path = "connect::prost")]
pub struct Order {
    #[prost(string, tag = "1")]
    pub item: String,
    #[prost(uint32, tag = "2")]
    pub quantity: u32,
}

impl Name for Order {
    const NAME: &'static str = "Order";
    const PACKAGE: &'static str = "shop.v1";
}

/// `message Confirmation { string item = 1; uint64 order_id = 2; }` in package `shop.v1`.
#[derive(Clone, PartialEq, Message)]
#[prost(prost_path = "connect::prost")]
pub struct Confirmation {
    #[prost(string, tag = "1")]
    pub item: String,
    #[prost(uint64, tag = "2")]
    pub order_id: u64,
}

impl Name for Confirmation {
    const NAME: &'static str = "Confirmation";
    const PACKAGE: &'static str = "shop.v1";
}

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let dispatcher = Arc::new(Dispatcher::new().on(|order: Order, _: Context| async move {
        let order_id = 1000 + u64::from(order.quantity);
        Ok::<_, connect::Error>(Reply::message(&Confirmation {
            item: order.item,
            order_id,
        }))
    }));
    let server = async_std::task::spawn(async move {
        let conn = listener.accept().await?;
        dispatcher.serve(conn).await
    });

    let mut conn = tcp::connect(addr).await?;
    conn.send_message(&Order {
        item: "tea".into(),
        quantity: 3,
    })
    .await?;
    // Receive the raw Any first, to show the type URL that came over the wire.
    let any = conn
        .recv()
        .await?
        .ok_or_else(|| anyhow::anyhow!("server closed early"))?;
    println!("type URL on the wire: {}", any.type_url);
    let confirmation: Confirmation = any.to_msg()?;
    println!(
        "confirmed: {} as order {}",
        confirmation.item, confirmation.order_id
    );
    conn.close().await?;
    server.await?;
    println!("done");
    Ok(())
}
