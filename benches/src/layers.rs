//! The layers above a bare TCP connection, each with the same sender, receiver and echo code:
//! sessions (no authentication, default heartbeats), reliable streams, TLS 1.3 (the default
//! suite, certificates made in memory by rcgen), sessions over TLS, and SCTP over UDP (the
//! userspace transport) with its default and an 8 KiB MTU.
//!
//! Background work (session and reliable drivers) runs where a user's would: on async-std's
//! executor, so the process-wide CPU and allocation columns are the ones that count it.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use bytes::Bytes;
use connect::proto::v1::ReasonCode;
use connect::reliable::{ReliableConfig, ReliableServer, ReliableStream};
use connect::session::{self, Session, SessionConfig};
use connect::transport::sctp::{self, SctpConfig, SctpListener};
use connect::transport::tcp;
use connect::transport::tls::{self, Identity, TlsClientConfig, TlsListener, TlsServerConfig};
use connect::{Connection, ConnectionConfig};
use futures::{AsyncRead, AsyncWrite};

use crate::harness::{self, Latency, Meter, Payload, RoundTrips, Rounds, Throughput, PING_SIZE};

/// A layer measured against the bare connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// A session over TCP: no authentication, default heartbeats.
    Session,
    /// A reliable stream over TCP (default session and reliable settings).
    Reliable,
    /// A bare connection over TLS 1.3.
    Tls,
    /// A session over TLS 1.3.
    SessionTls,
    /// A bare connection over SCTP over UDP, with this MTU (`None`: the default).
    Sctp(Option<usize>),
}

/// The sending and receiving methods every handle shares (the one handle shape), so one
/// workload runs over each of them.
pub(crate) trait Handle {
    async fn recv_payload(&mut self) -> connect::Result<Option<Payload>>;
    async fn feed_payload(&mut self, msg: &Payload) -> connect::Result<()>;
    async fn send_payload(&mut self, msg: &Payload) -> connect::Result<()>;
}

macro_rules! handle {
    (impl $(<$($g:ident: $b:path),*>)? for $t:ty, send: $send:ident) => {
        impl$(<$($g: $b),*>)? Handle for $t {
            async fn recv_payload(&mut self) -> connect::Result<Option<Payload>> {
                self.recv_message().await
            }
            async fn feed_payload(&mut self, msg: &Payload) -> connect::Result<()> {
                self.feed_message(msg).await
            }
            async fn send_payload(&mut self, msg: &Payload) -> connect::Result<()> {
                self.$send(msg).await
            }
        }
    };
}

/// Bounds for the connection's stream, spelled once for the macro.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

handle!(impl<T: Io> for Connection<T>, send: send_message);
handle!(impl for Session, send: send_message);
// A reliable stream's `send` also waits until the peer confirms the message (its `flush`
// does), which a request/response exchange does not do before it awaits the response: `feed`
// queues the message and the driver sends it at once. Confirmation of the last messages is
// what `close` waits for.
handle!(impl for ReliableStream, send: feed_message);

/// Feeds `size`-byte messages until `stop`, then sends the empty end marker (flushed).
pub(crate) async fn send_all<H: Handle>(
    handle: &mut H,
    stop: &AtomicBool,
    size: usize,
) -> anyhow::Result<()> {
    let msg = Payload {
        data: Bytes::from(vec![0xa5; size]),
    };
    while !harness::stopped(stop) {
        handle.feed_payload(&msg).await?;
    }
    handle.send_payload(&Payload::default()).await?;
    Ok(())
}

/// Counts messages until the end marker.
pub(crate) async fn receive_all<H: Handle>(
    handle: &mut H,
    mut meter: Meter,
) -> anyhow::Result<Throughput> {
    while let Some(msg) = handle.recv_payload().await? {
        if msg.data.is_empty() {
            break;
        }
        meter.tick(msg.data.len());
    }
    meter.finish()
}

/// Echoes until an empty message, which it echoes too.
pub(crate) async fn echo<H: Handle>(handle: &mut H) -> anyhow::Result<()> {
    while let Some(msg) = handle.recv_payload().await? {
        handle.send_payload(&msg).await?;
        if msg.data.is_empty() {
            break;
        }
    }
    Ok(())
}

/// Times round trips, then sends the empty message that stops [`echo`] and waits for its echo.
pub(crate) async fn pings<H: Handle>(handle: &mut H) -> anyhow::Result<RoundTrips> {
    let ping = Payload {
        data: Bytes::from(vec![0x5a; PING_SIZE]),
    };
    let mut rounds = Rounds::default();
    while rounds.begin() {
        handle.send_payload(&ping).await?;
        let pong = handle.recv_payload().await?;
        anyhow::ensure!(pong.is_some_and(|p| p.data.len() == PING_SIZE), "bad pong");
        rounds.end();
    }
    handle.send_payload(&Payload::default()).await?;
    handle
        .recv_payload()
        .await?
        .context("no echo of the end marker")?;
    Ok(rounds.samples())
}

/// Reads until the peer ends the session (its close after the end marker).
async fn drain<H: Handle>(handle: &mut H) -> anyhow::Result<()> {
    while handle.recv_payload().await?.is_some() {}
    Ok(())
}

fn spawn(task: connect::transport::Task) {
    async_std::task::spawn(task);
}

/// A server and a client TLS configuration for `localhost`, made once per run with rcgen.
fn certificates() -> anyhow::Result<&'static (TlsServerConfig, TlsClientConfig)> {
    static CERTS: OnceLock<(TlsServerConfig, TlsClientConfig)> = OnceLock::new();
    if let Some(certs) = CERTS.get() {
        return Ok(certs);
    }
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])?.self_signed(&key)?;
    let server = TlsServerConfig::builder(Identity::from_pem(
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
    )?)
    .build()?;
    let client = TlsClientConfig::builder()
        .trust(tls::certificates_from_pem(cert.pem().as_bytes())?)
        .build()?;
    Ok(CERTS.get_or_init(|| (server, client)))
}

fn sctp_config(mtu: Option<usize>) -> SctpConfig {
    match mtu {
        Some(mtu) => SctpConfig::default().with_mtu(mtu),
        None => SctpConfig::default(),
    }
}

async fn accept_tcp(listener: std::net::TcpListener) -> anyhow::Result<tcp::TcpConnection> {
    let (stream, _) = smol::net::TcpListener::try_from(listener)?.accept().await?;
    Ok(tcp::wrap(stream, &ConnectionConfig::new()))
}

/// Both ends of a layer: how the client opens its handle, how the server accepts one, and how
/// each closes it. `work` runs on the open handle; its result is kept, then the handle closes.
macro_rules! client {
    ($layer:expr, $addr:expr, |$h:ident| $work:expr) => {{
        let addr: SocketAddr = $addr;
        match $layer {
            Layer::Session => {
                let mut $h = tcp::connect_session(addr, &SessionConfig::new(), spawn).await?;
                let out = $work;
                $h.close_with(ReasonCode::Normal, "").await?;
                out
            }
            Layer::Reliable => {
                let mut $h =
                    tcp::connect_reliable(addr, SessionConfig::new(), ReliableConfig::new(), spawn);
                let out = $work;
                $h.close().await?;
                out
            }
            Layer::Tls => {
                let mut $h = tls::connect(addr, "localhost", &certificates()?.1).await?;
                let out = $work;
                // The server closes first. Reading up to its close also reads the session
                // tickets a TLS 1.3 server sends after the handshake: closing a socket with
                // unread bytes makes the kernel send a reset, which can overtake the last data.
                drain(&mut $h).await?;
                $h.close().await?;
                out
            }
            Layer::SessionTls => {
                let conn = tls::connect(addr, "localhost", &certificates()?.1).await?;
                let (mut $h, driver) = session::connect(conn, &SessionConfig::new()).await?;
                async_std::task::spawn(driver);
                let out = $work;
                $h.close_with(ReasonCode::Normal, "").await?;
                out
            }
            Layer::Sctp(mtu) => {
                let mut $h = sctp::connect_with(addr, &sctp_config(mtu)).await?;
                let out = $work;
                sctp::shutdown($h).await?;
                out
            }
        }
    }};
}

/// The listening end of a layer, bound before the two sides start.
pub(crate) enum Listener {
    Tcp(std::net::TcpListener),
    Tls(TlsListener),
    Sctp(SctpListener),
}

macro_rules! server {
    ($layer:expr, $listener:expr, |$h:ident| $work:expr) => {{
        match ($layer, $listener) {
            (Layer::Session, Listener::Tcp(listener)) => {
                let conn = accept_tcp(listener).await?;
                let mut $h = tcp::accept_session(conn, &SessionConfig::new(), spawn).await?;
                let out = $work;
                drain(&mut $h).await?;
                out
            }
            (Layer::Reliable, Listener::Tcp(listener)) => {
                let server = ReliableServer::new(SessionConfig::new(), ReliableConfig::new());
                let accepted = server.accept(accept_tcp(listener).await?).await?;
                let connect::reliable::Accepted::NewStream { stream, driver } = accepted else {
                    anyhow::bail!("not a new reliable stream");
                };
                let mut $h = stream;
                async_std::task::spawn(driver);
                let out = $work;
                drain(&mut $h).await?;
                out
            }
            (Layer::Tls, Listener::Tls(mut listener)) => {
                let mut $h = listener.accept().await?;
                let out = $work;
                $h.close().await?;
                out
            }
            (Layer::SessionTls, Listener::Tls(mut listener)) => {
                let conn = listener.accept().await?;
                let (mut $h, driver) = session::accept(conn, &SessionConfig::new()).await?;
                async_std::task::spawn(driver);
                let out = $work;
                drain(&mut $h).await?;
                out
            }
            (Layer::Sctp(_), Listener::Sctp(listener)) => {
                let mut $h = listener.accept().await?;
                let out = $work;
                drain(&mut $h).await?;
                out
            }
            (layer, _) => anyhow::bail!("{layer:?}: wrong listener"),
        }
    }};
}

/// Binds the layer's listener on loopback, port 0.
pub(crate) fn bind(layer: Layer) -> anyhow::Result<(Listener, SocketAddr)> {
    async_std::task::block_on(async {
        Ok(match layer {
            Layer::Session | Layer::Reliable => {
                let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
                let addr = listener.local_addr()?;
                (Listener::Tcp(listener), addr)
            }
            Layer::Tls | Layer::SessionTls => {
                let listener = TlsListener::bind("127.0.0.1:0", certificates()?.0.clone()).await?;
                let addr = listener.local_addr();
                (Listener::Tls(listener), addr)
            }
            Layer::Sctp(mtu) => {
                let listener = SctpListener::bind_with("127.0.0.1:0", sctp_config(mtu)).await?;
                let addr = listener.local_addr();
                (Listener::Sctp(listener), addr)
            }
        })
    })
}

/// W1 over `layer`.
pub fn throughput(layer: Layer, size: usize) -> anyhow::Result<Throughput> {
    let (listener, addr) = bind(layer)?;
    harness::one_way_on(
        listener,
        addr,
        move |addr, stop: Arc<AtomicBool>| {
            async_std::task::block_on(async {
                client!(layer, addr, |h| send_all(&mut h, &stop, size).await?);
                Ok(())
            })
        },
        move |listener, meter| {
            async_std::task::block_on(async {
                Ok(server!(layer, listener, |h| receive_all(&mut h, meter).await?))
            })
        },
    )
}

/// W2 over `layer`.
pub fn ping_pong(layer: Layer) -> anyhow::Result<Latency> {
    let (listener, addr) = bind(layer)?;
    harness::ping_pong_on(
        listener,
        addr,
        move |listener| {
            async_std::task::block_on(async {
                server!(layer, listener, |h| echo(&mut h).await?);
                Ok(())
            })
        },
        move |addr| {
            async_std::task::block_on(async { Ok(client!(layer, addr, |h| pings(&mut h).await?)) })
        },
    )
}
