//! TCP: [`connect`] a client, [`TcpListener::bind`] a server.
//!
//! The sockets are [`async-net`](https://docs.rs/async-net)'s, driven by the `async-io` reactor
//! (its own thread, started on first use). That is the reactor async-std and smol themselves run
//! on, so connections work unchanged inside async-std and smol programs, and under any other
//! executor (tokio included): no executor is needed to poll them.
//!
//! Every connection has `TCP_NODELAY` set: frames are coalesced by the connection's writer, so
//! Nagle's algorithm would only add latency.
//!
//! The session and reliable-stream helpers ([`connect_session`], [`accept_session`],
//! [`connect_reliable`]) run a background driver; they take a `spawn` function that hands it to
//! your executor (see [`Task`]).
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
//!             conn.send(any).await?; // echo
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

use async_net::AsyncToSocketAddrs as ToSocketAddrs;
use futures_core::Stream;
use futures_io::{AsyncRead, AsyncWrite};

use crate::connection::{Connection, ConnectionConfig, ConnectionInfo};
use crate::error::Result;
use crate::transport::{driver_task, Task};

/// A connection over TCP.
pub type TcpConnection = Connection<TcpStream>;

/// A TCP stream ([`async_net::TcpStream`]) whose close flushes, then shuts the write side down
/// (the peer reads a clean end of stream), and counts an already disconnected socket as closed.
#[derive(Debug)]
pub struct TcpStream(async_net::TcpStream);

impl TcpStream {
    /// The async-net stream underneath.
    pub fn get_ref(&self) -> &async_net::TcpStream {
        &self.0
    }
}

impl From<async_net::TcpStream> for TcpStream {
    fn from(stream: async_net::TcpStream) -> Self {
        Self(stream)
    }
}

/// Registers a connected standard-library stream with the reactor (making it non-blocking).
impl TryFrom<std::net::TcpStream> for TcpStream {
    type Error = io::Error;

    fn try_from(stream: std::net::TcpStream) -> io::Result<Self> {
        Ok(Self(async_net::TcpStream::try_from(stream)?))
    }
}

/// Takes over an async-std stream: a second handle on the same socket (as `clone` gives),
/// registered with the same reactor, so the async-std stream can be dropped or kept.
///
/// # Errors
/// If the socket handle cannot be duplicated (out of file descriptors).
#[cfg(feature = "async-std")]
#[cfg_attr(docsrs, doc(cfg(feature = "async-std")))]
impl TryFrom<async_std::net::TcpStream> for TcpStream {
    type Error = io::Error;

    fn try_from(stream: async_std::net::TcpStream) -> io::Result<Self> {
        #[cfg(unix)]
        let handle = std::os::fd::AsFd::as_fd(&stream).try_clone_to_owned()?;
        #[cfg(windows)]
        let handle = std::os::windows::io::AsSocket::as_socket(&stream).try_clone_to_owned()?;
        Self::try_from(std::net::TcpStream::from(handle))
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

/// Connects to `addr` with the default [`ConnectionConfig`].
///
/// # Errors
/// [`Error::Io`](crate::Error::Io) if no address could be connected to.
pub async fn connect(addr: impl ToSocketAddrs) -> Result<TcpConnection> {
    connect_with(addr, &ConnectionConfig::default()).await
}

/// Connects to `addr` with the given settings.
///
/// # Errors
/// [`Error::Io`](crate::Error::Io) if no address could be connected to.
pub async fn connect_with(
    addr: impl ToSocketAddrs,
    config: &ConnectionConfig,
) -> Result<TcpConnection> {
    let stream = async_net::TcpStream::connect(addr).await?;
    Ok(wrap(stream, config))
}

/// Wraps an already connected stream (an [`async_net::TcpStream`], smol's, or our
/// [`TcpStream`]), setting `TCP_NODELAY`.
pub fn wrap(stream: impl Into<TcpStream>, config: &ConnectionConfig) -> TcpConnection {
    let stream = stream.into();
    let info = tcp_info(&stream.0);
    Connection::with_config(stream, config, info)
}

/// Sets `TCP_NODELAY` (the connection's writer coalesces frames; Nagle would only add latency)
/// and reads the addresses.
pub(crate) fn tcp_info(stream: &async_net::TcpStream) -> ConnectionInfo {
    if let Err(e) = stream.set_nodelay(true) {
        log::debug!("cannot set TCP_NODELAY: {e}");
    }
    // The peer may already be gone; its address is then unknown, which is not an error here.
    ConnectionInfo::new()
        .with_local_addr(stream.local_addr().ok())
        .with_peer_addr(stream.peer_addr().ok())
}

/// Accepts TCP connections.
#[derive(Debug)]
pub struct TcpListener {
    inner: async_net::TcpListener,
    config: ConnectionConfig,
}

impl TcpListener {
    /// Binds to `addr` (use port 0 for any free port, then [`local_addr`](Self::local_addr)).
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if the address cannot be bound.
    pub async fn bind(addr: impl ToSocketAddrs) -> Result<Self> {
        Ok(Self {
            inner: async_net::TcpListener::bind(addr).await?,
            config: ConnectionConfig::default(),
        })
    }

    /// Uses `config` for the connections accepted from now on.
    pub fn with_config(mut self, config: ConnectionConfig) -> Self {
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
    inner: async_net::Incoming<'a>,
    config: &'a ConnectionConfig,
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

/// Connects to `addr`, opens a session as the connecting side (see [`crate::session`]) and hands
/// its driver to `spawn`, which runs it until the session ends (see [`Task`]:
/// `|task| smol::spawn(task).detach()`, `|task| { tokio::spawn(task); }`, ...). To hold the
/// driver yourself, use [`session::connect`](crate::session::connect) on [`connect`]'s
/// connection.
///
/// # Errors
/// [`Error::Io`](crate::Error::Io) if no address could be connected to, or any error of
/// [`session::connect`](crate::session::connect) (a refusal, a timeout, ...).
pub async fn connect_session(
    addr: impl ToSocketAddrs,
    config: &crate::session::SessionConfig,
    spawn: impl FnOnce(Task),
) -> Result<crate::session::Session> {
    let conn = connect(addr).await?;
    let (session, driver) = crate::session::connect(conn, config).await?;
    spawn(driver_task(driver));
    Ok(session)
}

/// Opens a session on an accepted connection as the accepting side (see [`crate::session`])
/// and hands its driver to `spawn` (as [`connect_session`]). Call it on the connection's own
/// task, so a slow handshake holds up no other connection.
///
/// # Errors
/// Any error of [`session::accept`](crate::session::accept): a refusal (already sent to the
/// peer), a timeout, a transport failure.
pub async fn accept_session(
    conn: TcpConnection,
    config: &crate::session::SessionConfig,
    spawn: impl FnOnce(Task),
) -> Result<crate::session::Session> {
    let (session, driver) = crate::session::accept(conn, config).await?;
    spawn(driver_task(driver));
    Ok(session)
}

/// Opens a [reliable stream](crate::reliable) to `addr` as the connecting side, and hands its
/// driver (which connects, and reconnects after every drop) to `spawn` (see [`Task`]). Returns
/// at once: messages wait in the bounded queue until a connection carries them; watch
/// [`next_event`](crate::reliable::ReliableStream::next_event) for connections and drops. To
/// hold the driver yourself, use [`reliable::client`](crate::reliable::client).
pub fn connect_reliable(
    addr: std::net::SocketAddr,
    session_config: crate::session::SessionConfig,
    config: crate::reliable::ReliableConfig,
    spawn: impl FnOnce(Task),
) -> crate::reliable::ReliableStream {
    let (session, driver) = crate::reliable::client(move || connect(addr), session_config, config);
    spawn(Box::pin(driver));
    session
}
