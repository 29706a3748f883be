//! TCP on async-std: [`connect`] a client, [`TcpListener::bind`] a server.
//!
//! Every connection has `TCP_NODELAY` set: frames are coalesced by the connection's writer, so
//! Nagle's algorithm would only add latency.
//!
//! ```no_run
//! # async_std::task::block_on(async {
//! use connect::proto::example::HelloWorld;
//! use connect::transport::tcp::{self, TcpListener};
//! use futures::StreamExt;
//!
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! async_std::task::spawn(async move {
//!     let mut incoming = listener.incoming();
//!     while let Some(conn) = incoming.next().await {
//!         let mut conn = conn?;
//!         while let Some(any) = conn.recv().await? {
//!             conn.send_any(&any).await?; // echo
//!         }
//!     }
//!     Ok::<(), connect::Error>(())
//! });
//!
//! let mut client = tcp::connect(addr).await?;
//! client.send_message(&HelloWorld { text: "hi".into(), sequence: 1 }).await?;
//! let echoed: Option<HelloWorld> = client.recv_message().await?;
//! # Ok::<(), connect::Error>(()) }).unwrap();
//! ```

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_std::net::ToSocketAddrs;
use futures_core::Stream;
use futures_io::{AsyncRead, AsyncWrite};

use crate::connection::{Config, Connection, ConnectionInfo};
use crate::error::Result;

/// A connection over TCP.
pub type TcpConnection = Connection<TcpStream>;

/// async-std's TCP stream, with one difference: closing it shuts the write side down, so the peer
/// reads a clean end of stream. (async-std's own `poll_close` only flushes, which would leave
/// the peer waiting until the socket is dropped.)
#[derive(Debug)]
pub struct TcpStream(async_std::net::TcpStream);

impl TcpStream {
    /// The async-std stream underneath.
    pub fn get_ref(&self) -> &async_std::net::TcpStream {
        &self.0
    }
}

impl From<async_std::net::TcpStream> for TcpStream {
    fn from(stream: async_std::net::TcpStream) -> Self {
        Self(stream)
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }

    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read_vectored(cx, bufs)
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.0).poll_flush(cx))?;
        match self.0.shutdown(Shutdown::Write) {
            // Already disconnected: the write side is as closed as it gets.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            result => Poll::Ready(result),
        }
    }
}

/// Connects to `addr` with the default [`Config`].
///
/// # Errors
/// [`Error::Io`](crate::Error::Io) if no address could be connected to.
pub async fn connect(addr: impl ToSocketAddrs) -> Result<TcpConnection> {
    connect_with(addr, &Config::default()).await
}

/// Connects to `addr` with the given settings.
///
/// # Errors
/// [`Error::Io`](crate::Error::Io) if no address could be connected to.
pub async fn connect_with(addr: impl ToSocketAddrs, config: &Config) -> Result<TcpConnection> {
    let stream = async_std::net::TcpStream::connect(addr).await?;
    Ok(wrap(stream, config))
}

/// Wraps an already connected stream, setting `TCP_NODELAY`.
pub fn wrap(stream: async_std::net::TcpStream, config: &Config) -> TcpConnection {
    if let Err(e) = stream.set_nodelay(true) {
        log::debug!("cannot set TCP_NODELAY: {e}");
    }
    // The peer may already be gone; its address is then unknown, which is not an error here.
    let info = ConnectionInfo::new()
        .with_local_addr(stream.local_addr().ok())
        .with_peer_addr(stream.peer_addr().ok());
    Connection::with_config(TcpStream(stream), config, info)
}

/// Accepts TCP connections.
#[derive(Debug)]
pub struct TcpListener {
    inner: async_std::net::TcpListener,
    config: Config,
}

impl TcpListener {
    /// Binds to `addr` (use port 0 for any free port, then [`local_addr`](Self::local_addr)).
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if the address cannot be bound.
    pub async fn bind(addr: impl ToSocketAddrs) -> Result<Self> {
        Ok(Self {
            inner: async_std::net::TcpListener::bind(addr).await?,
            config: Config::default(),
        })
    }

    /// Uses `config` for the connections accepted from now on.
    pub fn with_config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if the socket cannot tell.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.inner.local_addr()?)
    }

    /// Waits for the next connection.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if accepting failed (for example when out of file
    /// descriptors). The listener stays usable.
    pub async fn accept(&self) -> Result<TcpConnection> {
        let (stream, _) = self.inner.accept().await?;
        let conn = wrap(stream, &self.config);
        log::debug!("accepted {}", conn.info());
        Ok(conn)
    }

    /// Accepted connections, forever. An accept error is yielded as an `Err` item and the
    /// stream goes on; a caller that wants to pause on errors such as running out of file
    /// descriptors does so before polling again.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming {
            inner: self.inner.incoming(),
            config: &self.config,
        }
    }
}

/// Stream of accepted connections, from [`TcpListener::incoming`].
#[derive(Debug)]
pub struct Incoming<'a> {
    inner: async_std::net::Incoming<'a>,
    config: &'a Config,
}

impl Stream for Incoming<'_> {
    type Item = Result<TcpConnection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let accepted = ready!(Pin::new(&mut self.inner).poll_next(cx));
        Poll::Ready(accepted.map(|stream| {
            let conn = wrap(stream?, self.config);
            log::debug!("accepted {}", conn.info());
            Ok(conn)
        }))
    }
}

/// Connects to `addr`, opens a session as the connecting side (see [`crate::session`]) and runs
/// its driver on an async-std task, which logs how the session ended.
///
/// # Errors
/// [`Error::Io`](crate::Error::Io) if no address could be connected to, or any error of
/// [`session::connect`](crate::session::connect) (a refusal, a timeout, ...).
pub async fn connect_session(
    addr: impl ToSocketAddrs,
    config: &crate::session::SessionConfig,
) -> Result<crate::session::Session> {
    let conn = connect(addr).await?;
    let (session, driver) = crate::session::connect(conn, config).await?;
    spawn_driver(driver);
    Ok(session)
}

/// Opens a session on an accepted connection as the accepting side (see [`crate::session`])
/// and runs its driver on an async-std task. Call it on the connection's own task, so a slow
/// handshake holds up no other connection.
///
/// # Errors
/// Any error of [`session::accept`](crate::session::accept): a refusal (already sent to the
/// peer), a timeout, a transport failure.
pub async fn accept_session(
    conn: TcpConnection,
    config: &crate::session::SessionConfig,
) -> Result<crate::session::Session> {
    let (session, driver) = crate::session::accept(conn, config).await?;
    spawn_driver(driver);
    Ok(session)
}

/// Runs a session driver on an async-std task until the session ends. Works for a session over
/// any transport (TCP, TLS, …).
pub fn spawn_driver<T>(driver: crate::session::SessionDriver<T>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async_std::task::spawn(driver);
}

/// Opens a [reliable stream](crate::reliable) to `addr` as the connecting side, with its
/// driver (which connects, and reconnects after every drop) on an async-std task. Returns at
/// once: messages wait in the bounded queue until a connection carries them; watch
/// [`next_event`](crate::reliable::ReliableSession::next_event) for connections and drops.
pub fn connect_reliable(
    addr: std::net::SocketAddr,
    session_config: crate::session::SessionConfig,
    config: crate::reliable::ReliableConfig,
) -> crate::reliable::ReliableSession {
    let (session, driver) = crate::reliable::client(move || connect(addr), session_config, config);
    async_std::task::spawn(driver);
    session
}
