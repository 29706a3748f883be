//! Transports: how a [`Connection`](crate::Connection) gets its byte stream. These are the only
//! modules that name a runtime, and they name no executor: sockets are `async-net`/`async-io`'s,
//! whose reactor is the one async-std and smol run on, and which works under tokio too.
//!
//! | module | sockets | feature |
//! |---|---|---|
//! | [`tcp`] | `async-net` | `tcp` (default) |
//! | `tls` | any `futures-io` stream; client and listener on [`tcp`] | `tls` (default) |
//! | `sctp` (SCTP over UDP) | `async-io` UDP socket | `sctp` |
//!
//! Any other byte stream works through [`Connection::new`](crate::Connection::new) (smol's
//! `TcpStream` directly, tokio's through `tokio_util::compat`).
//!
//! ## Where background work runs
//!
//! The library spawns nothing on an executor of its own choosing. Whatever runs in the
//! background (a session's driver, a reliable stream's reconnecting driver) is either returned
//! to you as a future ([`session::connect`](crate::session::connect) /
//! [`accept`](crate::session::accept) give `(Session, SessionDriver)`,
//! [`reliable::client`](crate::reliable::client) gives `(ReliableStream, ClientDriver)`), or,
//! in the one-call helpers ([`tcp::connect_session`], [`tcp::accept_session`],
//! [`tcp::connect_reliable`]), handed as a boxed [`Task`] to a `spawn` function you pass:
//!
//! ```no_run
//! # fn run() -> connect::Result<()> { smol::block_on(async {
//! use connect::session::SessionConfig;
//! use connect::transport::tcp;
//!
//! // smol:   |task| smol::spawn(task).detach()
//! // tokio:  |task| { tokio::spawn(task); }
//! // async-std: |task| { async_std::task::spawn(task); }
//! let session = tcp::connect_session("127.0.0.1:7000", &SessionConfig::new(), |task| {
//!     smol::spawn(task).detach()
//! })
//! .await?;
//! # drop(session); Ok(()) }) }
//! ```
//!
//! SCTP's per-port driver runs on a thread of its own by default (a userspace network stack,
//! see `transport::sctp`'s "Where the driver runs"); its `*_with_spawner` entry points hand it
//! to your `spawn` instead.

use std::future::Future;
use std::pin::Pin;

use futures_io::{AsyncRead, AsyncWrite};

#[cfg(feature = "sctp")]
#[cfg_attr(docsrs, doc(cfg(feature = "sctp")))]
pub mod sctp;
#[cfg(feature = "tcp")]
#[cfg_attr(docsrs, doc(cfg(feature = "tcp")))]
pub mod tcp;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;

/// Resolves to socket addresses (a `SocketAddr`, `(IpAddr, u16)`, `"host:port"`, ...): what
/// the transports' `connect` and `bind` take. Re-exported from `async-net`.
#[cfg(any(feature = "tcp", feature = "sctp"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "tcp", feature = "sctp"))))]
pub use async_net::AsyncToSocketAddrs as ToSocketAddrs;

/// Background work the library hands to your executor: a boxed `Send` future that runs to
/// completion on its own. A spawner is any `FnOnce(Task)`, for example
/// `|task| smol::spawn(task).detach()` or `|task| { tokio::spawn(task); }`.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A session driver (over any transport) as a [`Task`]: it runs until the session ends, and the
/// driver logs how.
pub fn driver_task<T>(driver: crate::session::SessionDriver<T>) -> Task
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(async move {
        driver.await;
    })
}
