//! The typed dispatcher as a one-way receiver: `Dispatcher::serve` (frames routed and decoded
//! in place) next to the path it replaced, each frame received as a `prost_types::Any` and
//! handed to `Dispatcher::dispatch` (type URL and payload copied out of the read buffer).
//! Same sender, same handler, same run.

use std::cell::RefCell;
use std::net::TcpListener;
use std::sync::Arc;

use connect::dispatch::{Context, Dispatcher};
use connect::transport::tcp;
use connect::ConnectionConfig;
use futures::StreamExt;

use crate::conn::SendMode;
use crate::harness::{self, Meter, Payload, Throughput};

/// How the receiver feeds the dispatcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// `Dispatcher::serve`.
    Serve,
    /// `Dispatcher::serve` with the handler registered by `on_sync` (no future).
    ServeSync,
    /// `ConnectionReader` as a stream of `Any`, each one through `Dispatcher::dispatch`.
    AnyThenDispatch,
}

pub fn throughput(size: usize, path: Path) -> anyhow::Result<Throughput> {
    harness::one_way(
        move |addr, stop| {
            async_std::task::block_on(crate::conn::send(addr, stop, size, SendMode::Feed))
        },
        move |listener, meter| async_std::task::block_on(receive(listener, meter, path)),
    )
}

thread_local! {
    /// The receiver's meter. Handlers run on the thread that serves (inside its `block_on`), so
    /// they reach it without a lock: a `Mutex` would add two atomic operations per message that
    /// the bare receiver, which owns its meter, does not pay.
    static METER: RefCell<Option<Meter>> = const { RefCell::new(None) };
}

async fn receive(listener: TcpListener, meter: Meter, path: Path) -> anyhow::Result<Throughput> {
    let (stream, _) = smol::net::TcpListener::try_from(listener)?.accept().await?;
    let conn = tcp::wrap(stream, &ConnectionConfig::default());
    METER.set(Some(meter));
    let tick = |msg: Payload| {
        if !msg.data.is_empty() {
            METER.with_borrow_mut(|meter| {
                if let Some(meter) = meter {
                    meter.tick(msg.data.len());
                }
            });
        }
    };
    let dispatcher = if path == Path::ServeSync {
        Dispatcher::new().on_sync(move |msg: Payload, _cx: &Context| {
            tick(msg);
            Ok::<_, connect::Error>(())
        })
    } else {
        Dispatcher::new().on(move |msg: Payload, _cx: Context| {
            tick(msg);
            async { Ok::<_, connect::Error>(()) }
        })
    };
    match path {
        // The sender's end marker is handled like any message; serving ends when it closes.
        Path::Serve | Path::ServeSync => dispatcher.serve(conn).await?,
        Path::AnyThenDispatch => {
            let (mut reader, _writer) = conn.split();
            let cx = Context::new(Arc::new(reader.info().clone()));
            while let Some(any) = reader.next().await.transpose()? {
                dispatcher.dispatch(any, cx.clone()).await?;
            }
        }
    }
    METER
        .take()
        .ok_or_else(|| anyhow::anyhow!("the meter is not on this thread"))?
        .finish()
}

/// W2 with `Dispatcher::serve` as the echo server: the handler replies with the message.
pub fn ping_pong() -> anyhow::Result<harness::Latency> {
    harness::ping_pong(
        |listener| {
            async_std::task::block_on(async {
                let (stream, _) = smol::net::TcpListener::try_from(listener)?.accept().await?;
                let conn = tcp::wrap(stream, &connect::ConnectionConfig::new());
                let dispatcher = Dispatcher::new().on(|msg: Payload, _cx: Context| async move {
                    Ok::<_, connect::Error>(connect::dispatch::Reply::message(&msg))
                });
                // Serving ends when the client closes, after the echo of its end marker.
                dispatcher.serve(conn).await?;
                Ok(())
            })
        },
        |addr| {
            async_std::task::block_on(async {
                let mut conn = tcp::connect(addr).await?;
                let rounds = crate::layers::pings(&mut conn).await?;
                conn.close().await?;
                Ok(rounds)
            })
        },
    )
}
