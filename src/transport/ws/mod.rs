//! WebSocket (`ws://`, and `wss://` with the `tls` feature): the same frames, in binary
//! WebSocket messages, so browsers (and anything else that can open a WebSocket) speak the
//! protocol with a protobuf library and nothing of ours.
//!
//! A WebSocket link is an ordinary [`Connection`] over a [`WsStream`]: the dispatcher, sessions,
//! reliable streams and [`Peer`](crate::peer::Peer) work on it unchanged. The mapping (binary
//! messages of whole frames, the path and the `connect.v1` subprotocol, limits, close codes) is
//! specified in `proto/PROTOCOL.md`, "Transport: WebSocket".
//!
//! * Client: [`connect`] / [`connect_with`] a `ws://host:port/path` (or `wss://`) URL;
//!   [`connect_stream`] over any byte stream.
//! * Server: [`WsListener`] accepts TCP connections; each [`WsHandshake`] then
//!   [`upgrade`](WsHandshake::upgrade)s (on the connection's own task, bounded by a timeout) or,
//!   with [`upgrade_or_http`](WsHandshake::upgrade_or_http), hands plain HTTP requests to you
//!   (to serve a page from the same port).
//! * Everything a client can get wrong (a text message, an oversized message, a frame cut across
//!   messages, garbage, a stalled or missing upgrade) ends that link with a typed
//!   [`Error::WebSocket`]; the listener goes on.
//!
//! ```no_run
//! # async_std::task::block_on(async {
//! use connect::proto::example::HelloWorld;
//! use connect::transport::ws::{self, WsConfig, WsListener};
//!
//! let listener = WsListener::bind("127.0.0.1:0", WsConfig::new()).await?;
//! let url = format!("ws://{}/connect", listener.local_addr()?);
//! async_std::task::spawn(async move {
//!     loop {
//!         let Ok(handshake) = listener.accept().await else { continue };
//!         async_std::task::spawn(async move {
//!             let mut conn = handshake.upgrade().await?;
//!             while let Some(any) = conn.recv().await? {
//!                 conn.send(any).await?; // echo
//!             }
//!             conn.close().await
//!         });
//!     }
//! });
//!
//! let mut client = ws::connect(&url).await?;
//! client.send_message(&HelloWorld { text: "hi".into(), sequence: 1 }).await?;
//! let echoed: Option<HelloWorld> = client.recv_message().await?;
//! client.close().await?;
//! # Ok::<(), connect::Error>(()) }).unwrap();
//! ```

mod handshake;
mod stream;

use std::future::Future;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::error::Error as TungError;
use async_tungstenite::tungstenite::http::{HeaderValue, Uri};
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use async_tungstenite::WebSocketStream;
use futures_io::{AsyncRead, AsyncWrite};
use futures_util::future::{select, Either};
use futures_util::AsyncWriteExt;

pub use handshake::MAX_REQUEST_HEAD;
pub use stream::WsStream;

use crate::connection::{Connection, ConnectionConfig, ConnectionInfo};
use crate::error::{Error, Result, WsError};
use crate::transport::tcp::{tcp_info, TcpStream};
#[cfg(feature = "tls")]
use crate::transport::tls::{TlsClientConfig, TlsServerConfig, TlsStream};
use crate::transport::ToSocketAddrs;

/// The subprotocol (`Sec-WebSocket-Protocol`) a client must offer and a server answers with.
pub const SUBPROTOCOL: &str = "connect.v1";
/// The path a server upgrades on unless configured otherwise.
pub const DEFAULT_PATH: &str = "/connect";
/// How long an opening handshake (TCP connect, TLS, HTTP upgrade) may take: 10 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A WebSocket connection over TCP or TLS.
pub type WsConnection = Connection<WsStream<WsSocket>>;

/// Settings of a WebSocket client or listener.
///
/// ```
/// use connect::transport::ws::WsConfig;
/// let config = WsConfig::new()
///     .with_path("/events")
///     .with_connection_config(connect::ConnectionConfig::default().with_max_frame_len(1 << 20));
/// assert_eq!(config.path(), "/events");
/// ```
#[derive(Clone, Debug)]
pub struct WsConfig {
    connection: ConnectionConfig,
    path: String,
    handshake_timeout: Duration,
    #[cfg(feature = "tls")]
    tls_client: Option<TlsClientConfig>,
    #[cfg(feature = "tls")]
    tls_server: Option<TlsServerConfig>,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl WsConfig {
    /// Default settings: path [`DEFAULT_PATH`], the default [`ConnectionConfig`], handshake
    /// timeout [`DEFAULT_HANDSHAKE_TIMEOUT`], no TLS.
    pub fn new() -> Self {
        Self {
            connection: ConnectionConfig::default(),
            path: DEFAULT_PATH.to_string(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            #[cfg(feature = "tls")]
            tls_client: None,
            #[cfg(feature = "tls")]
            tls_server: None,
        }
    }

    /// Settings of the connections made (the maximum frame length also bounds WebSocket
    /// messages: it plus 10 bytes).
    pub fn with_connection_config(mut self, config: ConnectionConfig) -> Self {
        self.connection = config;
        self
    }

    /// The path a listener upgrades on (default `/connect`); a client takes its path from the
    /// URL.
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Bounds the opening handshake, TLS included (default 10 s).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// TLS settings for `wss://` URLs (a client).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn with_tls_client(mut self, tls: TlsClientConfig) -> Self {
        self.tls_client = Some(tls);
        self
    }

    /// Makes a listener serve `wss://` only: a TLS handshake first, then the upgrade.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn with_tls_server(mut self, tls: TlsServerConfig) -> Self {
        self.tls_server = Some(tls);
        self
    }

    /// See [`with_connection_config`](Self::with_connection_config).
    pub fn connection_config(&self) -> &ConnectionConfig {
        &self.connection
    }

    /// See [`with_path`](Self::with_path).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// See [`with_handshake_timeout`](Self::with_handshake_timeout).
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    fn websocket_config(&self) -> WebSocketConfig {
        let max = stream::max_message_len(self.connection.max_frame_len());
        WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
    }
}

/// The socket under a [`WsConnection`]: TCP, or TLS over TCP.
#[derive(Debug)]
#[non_exhaustive]
pub enum WsSocket {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://` (boxed: TLS state is large).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    Tls(Box<TlsStream<TcpStream>>),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            WsSocket::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            #[cfg(feature = "tls")]
            WsSocket::Tls($s) => {
                let $s = Pin::new($s);
                $e
            }
        }
    };
}

impl AsyncRead for WsSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }

    fn poll_read_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_read_vectored(cx, bufs))
    }
}

impl AsyncWrite for WsSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_close(cx))
    }
}

/// `future`'s result, or [`WsError::HandshakeTimeout`] once `limit` has passed.
async fn with_timeout<T>(limit: Duration, future: impl Future<Output = Result<T>>) -> Result<T> {
    let future = std::pin::pin!(future);
    match select(future, futures_timer::Delay::new(limit)).await {
        Either::Left((result, _)) => result,
        Either::Right(((), _)) => Err(WsError::HandshakeTimeout(limit).into()),
    }
}

/// A parsed `ws://` or `wss://` URL.
struct Target {
    secure: bool,
    host: String,
    port: u16,
}

fn parse_url(url: &str) -> Result<Target> {
    let invalid = |why: &str| Error::from(WsError::Handshake(format!("URL {url:?}: {why}")));
    let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
    let secure = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(invalid("the scheme must be ws or wss")),
    };
    let host = uri.host().ok_or_else(|| invalid("no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    Ok(Target { secure, host, port })
}

/// Connects to a `ws://host:port/path` URL with the default [`WsConfig`].
///
/// # Errors
/// As [`connect_with`].
pub async fn connect(url: &str) -> Result<WsConnection> {
    connect_with(url, &WsConfig::new()).await
}

/// Connects to a `ws://` or `wss://` URL (`wss://` needs
/// [`WsConfig::with_tls_client`]; the server's certificate is checked against the URL's host)
/// and runs the opening handshake, offering the `connect.v1` subprotocol. The whole of it is
/// bounded by the config's handshake timeout.
///
/// # Errors
/// [`Error::Io`] if TCP fails; [`Error::Tls`] if TLS does; [`Error::WebSocket`] with
/// [`WsError::UpgradeRefused`] if the server answers anything but `101` (its status),
/// [`WsError::Handshake`] for an invalid URL or a broken handshake,
/// [`WsError::HandshakeTimeout`] if it takes too long.
pub async fn connect_with(url: &str, config: &WsConfig) -> Result<WsConnection> {
    let target = parse_url(url)?;
    // Boxed: the handshake's state is large, and callers keep this future on their stack.
    with_timeout(
        config.handshake_timeout,
        Box::pin(async {
            let tcp = async_net::TcpStream::connect((target.host.as_str(), target.port)).await?;
            let info = tcp_info(&tcp);
            let socket = if target.secure {
                secure_client(TcpStream::from(tcp), &target.host, config, info.clone()).await?
            } else {
                (WsSocket::Plain(TcpStream::from(tcp)), info)
            };
            connect_stream(socket.0, url, config, socket.1).await
        }),
    )
    .await
}

#[cfg(feature = "tls")]
async fn secure_client(
    tcp: TcpStream,
    host: &str,
    config: &WsConfig,
    info: ConnectionInfo,
) -> Result<(WsSocket, ConnectionInfo)> {
    let Some(tls) = &config.tls_client else {
        return Err(WsError::Handshake("wss:// needs WsConfig::with_tls_client".into()).into());
    };
    let conn =
        crate::transport::tls::connect_stream(tcp, host, tls, &config.connection, info).await?;
    let info = conn.info().clone();
    Ok((WsSocket::Tls(Box::new(conn.into_inner())), info))
}

#[cfg(not(feature = "tls"))]
async fn secure_client(
    _: TcpStream,
    _: &str,
    _: &WsConfig,
    _: ConnectionInfo,
) -> Result<(WsSocket, ConnectionInfo)> {
    Err(WsError::Handshake("wss:// needs the tls feature".into()).into())
}

/// Runs the client side of the opening handshake for `url` over an already connected `stream`
/// (no timeout of its own; [`connect_with`] has one).
///
/// # Errors
/// As [`connect_with`], without the connect and TLS failures.
pub async fn connect_stream<S>(
    stream: S,
    url: &str,
    config: &WsConfig,
    info: ConnectionInfo,
) -> Result<Connection<WsStream<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = url
        .into_client_request()
        .map_err(|e| WsError::Handshake(format!("URL {url:?}: {e}")))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let (ws, _response) = Box::pin(async_tungstenite::client_async_with_config(
        request,
        stream,
        Some(config.websocket_config()),
    ))
    .await
    .map_err(|e| match e {
        TungError::Io(e) => Error::Io(e),
        TungError::Http(response) => {
            let status = response.status();
            let body = response.body().as_deref().unwrap_or_default();
            let reason = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            let reason = if reason.trim().is_empty() {
                status.canonical_reason().unwrap_or("").to_string()
            } else {
                reason.trim().to_string()
            };
            WsError::UpgradeRefused {
                status: status.as_u16(),
                reason,
            }
            .into()
        }
        other => WsError::Handshake(other.to_string()).into(),
    })?;
    Ok(wrap(ws, &config.connection, info))
}

fn wrap<S>(
    ws: WebSocketStream<S>,
    config: &ConnectionConfig,
    info: ConnectionInfo,
) -> Connection<WsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    Connection::with_config(WsStream::new(ws, config.max_frame_len()), config, info)
}

/// Accepts TCP connections for WebSocket upgrades.
///
/// [`accept`](Self::accept) only accepts the TCP connection; run the returned
/// [`WsHandshake`] on the connection's own task, so a slow or silent client holds up no other.
#[derive(Debug)]
pub struct WsListener {
    inner: async_net::TcpListener,
    config: Arc<WsConfig>,
}

impl WsListener {
    /// Binds to `addr` (use port 0 for any free port, then [`local_addr`](Self::local_addr)).
    ///
    /// # Errors
    /// [`Error::Io`] if the address cannot be bound.
    pub async fn bind(addr: impl ToSocketAddrs, config: WsConfig) -> Result<Self> {
        Ok(Self {
            inner: async_net::TcpListener::bind(addr).await?,
            config: Arc::new(config),
        })
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    /// [`Error::Io`] if the socket cannot tell.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.inner.local_addr()?)
    }

    /// Waits for the next TCP connection. The upgrade is not done yet: see [`WsHandshake`].
    ///
    /// # Errors
    /// [`Error::Io`] if accepting failed (for example when out of file descriptors). The
    /// listener stays usable.
    pub async fn accept(&self) -> Result<WsHandshake> {
        let (stream, _) = self.inner.accept().await?;
        Ok(WsHandshake {
            info: tcp_info(&stream),
            stream: TcpStream::from(stream),
            config: self.config.clone(),
        })
    }
}

/// An accepted TCP connection whose opening handshake has not run yet.
#[derive(Debug)]
pub struct WsHandshake {
    stream: TcpStream,
    info: ConnectionInfo,
    config: Arc<WsConfig>,
}

/// What a client asked for: a WebSocket link, or a plain HTTP request (see
/// [`WsHandshake::upgrade_or_http`]).
#[derive(Debug)]
pub enum Upgrade {
    /// The upgrade succeeded.
    WebSocket(WsConnection),
    /// A plain HTTP request, to be answered with [`HttpRequest::respond`].
    Http(HttpRequest),
}

impl WsHandshake {
    /// The client's address, when known.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.info.peer_addr()
    }

    /// Runs the handshake (TLS first if the listener has a TLS config) and upgrades. A plain
    /// HTTP request is answered `426 Upgrade Required`.
    ///
    /// # Errors
    /// [`Error::WebSocket`] with [`WsError::NotUpgrade`] for a plain HTTP request,
    /// [`WsError::UpgradeRefused`] for an upgrade on another path or without the `connect.v1`
    /// subprotocol (answered 404 or 400), [`WsError::Handshake`] for a malformed request,
    /// [`WsError::HandshakeTimeout`] if the client did not finish in time; [`Error::Tls`] or
    /// [`Error::Io`] if TLS or the socket failed.
    pub async fn upgrade(self) -> Result<WsConnection> {
        match self.upgrade_or_http().await? {
            Upgrade::WebSocket(conn) => Ok(conn),
            Upgrade::Http(request) => {
                let error = WsError::NotUpgrade {
                    method: request.method().to_string(),
                    path: request.path().to_string(),
                };
                let body = format!("this is a WebSocket endpoint ({SUBPROTOCOL})\n");
                // The client is told if it listens; the error is ours either way.
                let _ = request
                    .respond_with(426, "text/plain", "Upgrade: websocket\r\n", body.as_bytes())
                    .await;
                Err(error.into())
            }
        }
    }

    /// As [`upgrade`](Self::upgrade), but hands a plain HTTP request (no `Upgrade: websocket`)
    /// back to answer, for a server that also serves pages on its port. Reading the request
    /// head is bounded by the handshake timeout and [`MAX_REQUEST_HEAD`].
    ///
    /// # Errors
    /// As [`upgrade`](Self::upgrade), except for plain requests.
    pub async fn upgrade_or_http(self) -> Result<Upgrade> {
        let config = self.config.clone();
        let peer = self.info.peer_addr();
        let result = with_timeout(config.handshake_timeout, Box::pin(self.run())).await;
        if let Err(e) = &result {
            log::debug!("WebSocket handshake with {peer:?} failed: {e}");
        }
        result
    }

    async fn run(self) -> Result<Upgrade> {
        let Self {
            stream,
            info,
            config,
        } = self;
        let (socket, info) = secure_server(stream, &config, info).await?;
        accept_stream(socket, &config, info)
            .await
            .map(|accepted| match accepted {
                Accepted::WebSocket(conn) => Upgrade::WebSocket(conn),
                Accepted::Http(request) => Upgrade::Http(request),
            })
    }
}

#[cfg(feature = "tls")]
async fn secure_server(
    tcp: TcpStream,
    config: &WsConfig,
    info: ConnectionInfo,
) -> Result<(WsSocket, ConnectionInfo)> {
    match &config.tls_server {
        None => Ok((WsSocket::Plain(tcp), info)),
        Some(tls) => {
            let conn =
                crate::transport::tls::accept_stream(tcp, tls, &config.connection, info).await?;
            let info = conn.info().clone();
            Ok((WsSocket::Tls(Box::new(conn.into_inner())), info))
        }
    }
}

#[cfg(not(feature = "tls"))]
async fn secure_server(
    tcp: TcpStream,
    _: &WsConfig,
    info: ConnectionInfo,
) -> Result<(WsSocket, ConnectionInfo)> {
    Ok((WsSocket::Plain(tcp), info))
}

/// What [`accept_stream`] found: a WebSocket connection over `S`, or a plain HTTP request.
#[derive(Debug)]
// The connection is the common case: boxing it would cost every accepted link an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Accepted<S = WsSocket> {
    /// The upgrade succeeded.
    WebSocket(Connection<WsStream<S>>),
    /// A plain HTTP request.
    Http(HttpRequest<S>),
}

/// Runs the server side of the opening handshake over any byte stream (no timeout of its own:
/// bound it, as [`WsHandshake`] does): reads one request head, upgrades it if it asks for an
/// upgrade on the config's path with the `connect.v1` subprotocol, refuses other upgrades
/// (404 for another path, 400 without the subprotocol, 405/426 for a wrong method or version),
/// and hands a plain request back.
///
/// # Errors
/// [`WsError::UpgradeRefused`] for a refused upgrade (after answering it),
/// [`WsError::Handshake`] for a malformed or oversized request head or a client gone before
/// finishing it, [`Error::Io`] if the stream fails.
pub async fn accept_stream<S>(
    mut stream: S,
    config: &WsConfig,
    info: ConnectionInfo,
) -> Result<Accepted<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (head, rest) = handshake::read_request(&mut stream).await?;
    if !head.is_upgrade() {
        return Ok(Accepted::Http(HttpRequest { head, stream }));
    }
    match handshake::check_upgrade(&head, &config.path, SUBPROTOCOL) {
        Ok(accept) => {
            let response = handshake::switching_protocols(&accept, SUBPROTOCOL);
            stream.write_all(response.as_bytes()).await?;
            stream.flush().await?;
            let ws = Box::pin(WebSocketStream::from_partially_read(
                stream,
                rest,
                Role::Server,
                Some(config.websocket_config()),
            ))
            .await;
            let conn = wrap(ws, &config.connection, info);
            log::debug!("accepted WebSocket {}", conn.info());
            Ok(Accepted::WebSocket(conn))
        }
        Err((status, reason)) => {
            let body = format!("{reason}\n");
            let _ =
                handshake::respond(&mut stream, status, "text/plain", "", body.as_bytes()).await;
            Err(WsError::UpgradeRefused { status, reason }.into())
        }
    }
}

/// A plain HTTP request that arrived on a WebSocket port; answer it with
/// [`respond`](Self::respond) (one response, then the connection closes).
#[derive(Debug)]
pub struct HttpRequest<S = WsSocket> {
    head: handshake::RequestHead,
    stream: S,
}

impl<S: AsyncRead + AsyncWrite + Unpin> HttpRequest<S> {
    /// The request's method (`GET`, ...).
    pub fn method(&self) -> &str {
        &self.head.method
    }

    /// The request's path, without the query string.
    pub fn path(&self) -> &str {
        &self.head.path
    }

    /// A header's value (the first, if repeated), by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// Answers with `status`, a `Content-Type` and `body`, then closes the connection.
    ///
    /// # Errors
    /// [`Error::Io`] if the client went away.
    pub async fn respond(self, status: u16, content_type: &str, body: &[u8]) -> Result<()> {
        self.respond_with(status, content_type, "", body).await
    }

    async fn respond_with(
        mut self,
        status: u16,
        content_type: &str,
        headers: &str,
        body: &[u8],
    ) -> Result<()> {
        handshake::respond(&mut self.stream, status, content_type, headers, body).await?;
        self.stream.close().await?;
        Ok(())
    }
}
