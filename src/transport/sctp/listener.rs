//! [`SctpListener`]: accepts associations on one UDP port.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;

use super::association::{driver_gone, Owner};
use super::driver::{run_on_own_thread, Driver};
use super::endpoint::Shared;
use super::{SctpConfig, SctpConnection, SctpStream};
use crate::error::Result;
use crate::transport::{Task, ToSocketAddrs};

/// Accepts SCTP associations on one UDP port.
///
/// Dropping the listener refuses new associations; those already accepted go on.
pub struct SctpListener {
    pub(super) shared: Arc<Shared>,
    config: Arc<SctpConfig>,
}

impl std::fmt::Debug for SctpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SctpListener")
            .field("local_addr", &self.shared.local_addr)
            .finish()
    }
}

impl SctpListener {
    /// Binds to `addr` with the default [`SctpConfig`] (use port 0 for any free port, then
    /// [`local_addr`](Self::local_addr)).
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if the address cannot be bound.
    pub async fn bind(addr: impl ToSocketAddrs) -> Result<Self> {
        Self::bind_with(addr, SctpConfig::default()).await
    }

    /// Binds to `addr` with the given settings. The port's driver runs on a thread of its own
    /// (see [the module docs](super#where-the-driver-runs));
    /// [`bind_with_spawner`](Self::bind_with_spawner) runs it on your executor instead.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if the address cannot be bound.
    pub async fn bind_with(addr: impl ToSocketAddrs, config: SctpConfig) -> Result<Self> {
        Self::bind_each(addr, config, run_on_own_thread).await
    }

    /// Binds to `addr` with the given settings, like [`bind_with`](Self::bind_with), and hands
    /// the port's driver to `spawn`, which runs it on your executor (see [`Task`]:
    /// `|task| smol::spawn(task).detach()`, `|task| { tokio::spawn(task); }`, ...). The driver
    /// serves every association of the port, and ends by itself once the listener is dropped
    /// and its associations are gone.
    ///
    /// Should the executor drop the driver before its work is done (a runtime shut down),
    /// `accept` and every association of the port fail with an error instead of waiting.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if the address cannot be bound.
    pub async fn bind_with_spawner(
        addr: impl ToSocketAddrs,
        config: SctpConfig,
        spawn: impl FnOnce(Task),
    ) -> Result<Self> {
        Self::bind_each(addr, config, |task| {
            spawn(task);
            Ok(())
        })
        .await
    }

    /// Binds the first address `addr` resolves to that can be bound, and starts its driver.
    async fn bind_each(
        addr: impl ToSocketAddrs,
        config: SctpConfig,
        spawn: impl FnOnce(Task) -> io::Result<()>,
    ) -> Result<Self> {
        let config = Arc::new(config);
        let mut last_error = None;
        for local in async_net::resolve(addr).await? {
            match Shared::bind(local, None, config.clone()) {
                Ok(shared) => {
                    spawn(Box::pin(Driver::new(shared.clone())))?;
                    return Ok(Self { shared, config });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind"))
            .into())
    }

    /// The UDP address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Handshakes in progress: INITs answered whose COOKIE ECHO has not arrived yet. Bounded
    /// by [`SctpConfig::with_backlog`] in total and by
    /// [`SctpConfig::with_max_half_open_per_source`] per IP address.
    pub fn handshakes_in_progress(&self) -> usize {
        self.shared.lock().half_open()
    }

    /// Waits for the next established association.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if the UDP socket failed for good.
    pub async fn accept(&self) -> Result<SctpConnection> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Accepted connections, forever.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<Result<SctpConnection>> {
        let mut state = self.shared.lock();
        if let Some(kind) = state.failed {
            return Poll::Ready(Err(io::Error::new(kind, "the UDP socket failed").into()));
        }
        if state.driver_gone {
            return Poll::Ready(Err(driver_gone().into()));
        }
        while let Some(handle) = state.accept_queue.pop_front() {
            let Some(assoc) = state.assocs.get_mut(&handle) else {
                continue;
            };
            if assoc.owner != Owner::Unaccepted {
                continue;
            }
            assoc.owner = Owner::Stream;
            drop(state);
            let stream = SctpStream {
                shared: self.shared.clone(),
                handle,
            };
            let conn = stream.into_connection(&self.config.connection);
            log::debug!("accepted {}", conn.info());
            return Poll::Ready(Ok(conn));
        }
        state.accept_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for SctpListener {
    fn drop(&mut self) {
        self.shared.lock().stop_listening();
    }
}

/// Stream of accepted connections, from [`SctpListener::incoming`].
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a SctpListener,
}

impl Stream for Incoming<'_> {
    type Item = Result<SctpConnection>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.listener.poll_accept(cx).map(Some)
    }
}
