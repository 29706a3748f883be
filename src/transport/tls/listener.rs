//! [`TlsListener`]: accepts TCP connections and runs their TLS handshakes
//! concurrently, each with a timeout.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_util::stream::{self, FuturesUnordered};
use futures_util::StreamExt;

use super::config::{TlsServerConfig, DEFAULT_HANDSHAKE_TIMEOUT};
use super::stream::accept_stream;
use super::tcp::{with_timeout, TlsConnection};
use crate::connection::Config;
use crate::error::{Error, Result, TlsError};
use crate::transport::tcp::{tcp_info, TcpStream};
use crate::transport::ToSocketAddrs;

/// How many handshakes a [`TlsListener`] runs at once unless configured otherwise: 64.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 64;

type Accepts = Pin<Box<dyn Stream<Item = io::Result<async_net::TcpStream>> + Send>>;
type Handshake = Pin<Box<dyn Future<Output = Result<TlsConnection>> + Send>>;

/// Accepts TLS connections over TCP.
///
/// The listener is a [`Stream`] of connections whose handshake succeeded. Handshakes run
/// concurrently inside it (no task per handshake): while one client is slow or stalls, others
/// are accepted and their handshakes finish. Each handshake is bounded by a timeout
/// ([`with_handshake_timeout`](Self::with_handshake_timeout), default 10 s) and at most
/// [`with_max_pending_handshakes`](Self::with_max_pending_handshakes) run at once (default 64;
/// more clients wait in the kernel's accept queue until one finishes).
///
/// A failed handshake is yielded as `Err(Error::Tls(TlsError::Handshake { peer_addr, source }))`
/// and the listener goes on: that error concerns one client only, so log it and keep polling.
/// An `Err(Error::Io(..))` item is an accept failure of the listening socket itself (for
/// example out of file descriptors); the listener stays usable, but pausing briefly is wise.
///
/// Handshakes only progress while the listener is polled, so poll it continuously (typically
/// in its own task, spawning a task per connection).
pub struct TlsListener {
    local_addr: SocketAddr,
    accepts: Accepts,
    handshakes: FuturesUnordered<Handshake>,
    tls: TlsServerConfig,
    config: Config,
    handshake_timeout: Duration,
    max_pending: usize,
}

impl TlsListener {
    /// Binds to `addr` (use port 0 for any free port, then [`local_addr`](Self::local_addr)).
    ///
    /// # Errors
    /// [`Error::Io`] if the address cannot be bound.
    pub async fn bind(addr: impl ToSocketAddrs, tls: TlsServerConfig) -> Result<Self> {
        let listener = async_net::TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let accepts = stream::unfold(Arc::new(listener), |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            Some((accepted, listener))
        });
        Ok(Self {
            local_addr,
            accepts: Box::pin(accepts),
            handshakes: FuturesUnordered::new(),
            tls,
            config: Config::default(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_pending: DEFAULT_MAX_PENDING_HANDSHAKES,
        })
    }

    /// Uses `config` for the connections accepted from now on.
    pub fn with_config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Gives up on a client whose handshake is not finished after `timeout` (default 10 s).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Runs at most `max` handshakes at once (default 64, at least 1).
    pub fn with_max_pending_handshakes(mut self, max: usize) -> Self {
        self.max_pending = max.max(1);
        self
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Handshakes in progress.
    pub fn pending_handshakes(&self) -> usize {
        self.handshakes.len()
    }

    /// Waits for the next connection whose handshake succeeded, or the next failure (see the
    /// type's documentation).
    ///
    /// # Errors
    /// [`Error::Tls`] with [`TlsError::Handshake`] for one client's failed handshake;
    /// [`Error::Io`] if accepting failed.
    pub async fn accept(&mut self) -> Result<TlsConnection> {
        match self.next().await {
            Some(result) => result,
            None => Err(Error::Closed),
        }
    }

    fn handshake(&self, stream: async_net::TcpStream) -> Handshake {
        let info = tcp_info(&stream);
        let peer_addr = info.peer_addr();
        let tls = self.tls.clone();
        let config = self.config.clone();
        let timeout = self.handshake_timeout;
        Box::pin(async move {
            let handshake = accept_stream(TcpStream::from(stream), &tls, &config, info);
            with_timeout(timeout, handshake).await.map_err(|source| {
                log::debug!("TLS handshake with {peer_addr:?} failed: {source}");
                TlsError::Handshake {
                    peer_addr,
                    source: Box::new(source),
                }
                .into()
            })
        })
    }
}

impl Stream for TlsListener {
    type Item = Result<TlsConnection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            // Finished handshakes first. An empty set is `Ready(None)`, which only means
            // "nothing in flight" here.
            if let Poll::Ready(Some(done)) = this.handshakes.poll_next_unpin(cx) {
                if let Ok(conn) = &done {
                    log::debug!("accepted {}", conn.info());
                }
                return Poll::Ready(Some(done));
            }
            // Then new clients, while there is room; when full, the handshakes' wakers wake us.
            if this.handshakes.len() >= this.max_pending {
                return Poll::Pending;
            }
            match this.accepts.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    let handshake = this.handshake(stream);
                    // Polled on the next turn of the loop, which registers its waker.
                    this.handshakes.push(handshake);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsListener")
            .field("local_addr", &self.local_addr)
            .field("pending_handshakes", &self.handshakes.len())
            .field("tls", &self.tls)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_pending", &self.max_pending)
            .finish_non_exhaustive()
    }
}
