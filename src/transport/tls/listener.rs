//! [`TlsListener`]: accepts TCP connections and runs their TLS handshakes
//! concurrently, each with a timeout.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::{self, FuturesUnordered};
use futures_util::{FutureExt, StreamExt};

use super::config::TlsServerConfig;
use super::stream::accept_stream;
use super::tcp::{with_timeout, TlsConnection};
use crate::connection::ConnectionConfig;
use crate::error::{Error, Result, TlsError};
use crate::transport::tcp::{tcp_info, TcpStream};
use crate::transport::ToSocketAddrs;

/// How many handshakes a [`TlsListener`] runs at once unless configured otherwise: 64.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 64;

type Accepts = Pin<Box<dyn Stream<Item = io::Result<async_net::TcpStream>> + Send>>;
/// A handshake in flight; `None` if it was evicted to make room for a newer client.
type Handshake = Pin<Box<dyn Future<Output = Option<Result<TlsConnection>>> + Send>>;

/// A handshake in flight as the listener tracks it, oldest first.
struct InFlight {
    /// Set once the client's first byte arrived; gone once the handshake is over.
    heard: Weak<AtomicBool>,
    abort: AbortHandle,
}

impl InFlight {
    fn live(&self) -> bool {
        self.heard.strong_count() > 0 && !self.abort.is_aborted()
    }

    fn silent(&self) -> bool {
        self.heard
            .upgrade()
            .is_some_and(|heard| !heard.load(Ordering::Relaxed))
            && !self.abort.is_aborted()
    }
}

/// Accepts TLS connections over TCP.
///
/// The listener is a [`Stream`] of connections whose handshake succeeded. Handshakes run
/// concurrently inside it (no task per handshake): while one client is slow or stalls, others
/// are accepted and their handshakes finish. Each handshake is bounded by a timeout
/// ([`TlsServerConfig::with_handshake_timeout`], default 10 s) and at most
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
///
/// **Silent clients**: a client that connects and sends nothing cannot hold a slot against a
/// newer client. When all slots are taken, a new connection is still accepted if some client
/// in a handshake has not sent its first byte yet; the oldest such client is then dropped
/// (closed without an error item). A real client sends its `ClientHello` right after
/// connecting, so it is only at risk if more than `max_pending_handshakes` new connections
/// arrive within its first round trip. Clients that send part of a handshake and then stall
/// keep their slot until the handshake timeout; while every slot holds one of those, new
/// clients wait in the kernel's accept queue.
pub struct TlsListener {
    local_addr: SocketAddr,
    accepts: Accepts,
    handshakes: FuturesUnordered<Handshake>,
    in_flight: VecDeque<InFlight>,
    tls: TlsServerConfig,
    config: ConnectionConfig,
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
            in_flight: VecDeque::new(),
            tls,
            config: ConnectionConfig::default(),
            max_pending: DEFAULT_MAX_PENDING_HANDSHAKES,
        })
    }

    /// Uses `config` for the connections accepted from now on.
    pub fn with_config(mut self, config: ConnectionConfig) -> Self {
        self.config = config;
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
        self.in_flight.iter().filter(|h| h.live()).count()
    }

    /// Forgets handshakes that are over; returns how many are left.
    fn prune(&mut self) -> usize {
        self.in_flight.retain(InFlight::live);
        self.in_flight.len()
    }

    /// Drops the oldest handshake whose client has not sent a byte yet, if any.
    fn evict_silent(&mut self) -> bool {
        let Some(at) = self.in_flight.iter().position(InFlight::silent) else {
            return false;
        };
        if let Some(evicted) = self.in_flight.remove(at) {
            evicted.abort.abort();
        }
        log::debug!("TLS listener full: dropped the oldest client that has sent nothing");
        true
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

    fn handshake(&mut self, stream: async_net::TcpStream) -> Handshake {
        let info = tcp_info(&stream);
        let peer_addr = info.peer_addr();
        let tls = self.tls.clone();
        let config = self.config.clone();
        let timeout = self.tls.handshake_timeout();
        let heard = Arc::new(AtomicBool::new(false));
        let (abort, registration) = AbortHandle::new_pair();
        self.in_flight.push_back(InFlight {
            heard: Arc::downgrade(&heard),
            abort,
        });
        let handshake = async move {
            let handshake = async {
                // Waits for the first byte without taking it, so a silent client can be told
                // apart (and evicted) while it holds a slot.
                let _ = stream.peek(&mut [0u8; 1]).await;
                heard.store(true, Ordering::Relaxed);
                accept_stream(TcpStream::from(stream), &tls, &config, info).await
            };
            with_timeout(timeout, handshake).await.map_err(|source| {
                log::debug!("TLS handshake with {peer_addr:?} failed: {source}");
                TlsError::Handshake {
                    peer_addr,
                    source: Box::new(source),
                }
                .into()
            })
        };
        Box::pin(Abortable::new(handshake, registration).map(|done| done.ok()))
    }
}

impl Stream for TlsListener {
    type Item = Result<TlsConnection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            // Finished handshakes first. An empty set is `Ready(None)`, which only means
            // "nothing in flight" here.
            match this.handshakes.poll_next_unpin(cx) {
                Poll::Ready(Some(Some(done))) => {
                    if let Ok(conn) = &done {
                        log::debug!("accepted {}", conn.info());
                    }
                    return Poll::Ready(Some(done));
                }
                // Evicted: nothing to report.
                Poll::Ready(Some(None)) => continue,
                Poll::Ready(None) | Poll::Pending => {}
            }
            // Then new clients, while there is room or a silent client to make room of; when
            // neither, the handshakes' wakers wake us.
            let full = this.prune() >= this.max_pending;
            if full && !this.in_flight.iter().any(InFlight::silent) {
                return Poll::Pending;
            }
            match this.accepts.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    if full {
                        this.evict_silent();
                    }
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
            .field("pending_handshakes", &self.pending_handshakes())
            .field("tls", &self.tls)
            .field("handshake_timeout", &self.tls.handshake_timeout())
            .field("max_pending", &self.max_pending)
            .finish_non_exhaustive()
    }
}
