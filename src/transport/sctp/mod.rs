//! SCTP over UDP (on the `async-io` reactor): [`connect`] a client, [`SctpListener::bind`] a server. Needs
//! the `sctp` feature.
//!
//! The SCTP is userspace SCTP ([`sctp-proto`](https://docs.rs/sctp-proto), the sans-IO crate
//! behind WebRTC data channels) carried in UDP datagrams, as RFC 6951 and WebRTC do. It needs no
//! kernel support (many kernels and containers have no SCTP) and no privileges: a listener is
//! one UDP port serving any number of associations.
//!
//! ```no_run
//! # async_std::task::block_on(async {
//! use connect::proto::example::HelloWorld;
//! use connect::transport::sctp::{self, SctpListener};
//!
//! let listener = SctpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr();
//! async_std::task::spawn(async move {
//!     let mut conn = listener.accept().await?;
//!     while let Some(any) = conn.recv().await? {
//!         conn.send(any).await?; // echo
//!     }
//!     conn.close().await
//! });
//!
//! let mut client = sctp::connect(addr).await?;
//! client.send_message(&HelloWorld { text: "hi".into(), sequence: 1 }).await?;
//! let echoed: Option<HelloWorld> = client.recv_message().await?;
//! sctp::shutdown(client).await?; // end of stream, then SCTP's own shutdown
//! # Ok::<(), connect::Error>(()) }).unwrap();
//! ```
//!
//! ## Framing: the same byte stream as TCP, on one SCTP stream
//!
//! Each association carries one ordered, reliable SCTP stream (stream 0), and on it exactly the
//! bytes a TCP connection would carry: delimited `Any` frames. [`SctpStream`] is a plain
//! `futures-io` `AsyncRead + AsyncWrite`, so [`Connection`], its halves, the dispatcher and
//! everything else work unchanged, with the same maximum-frame rules (the codec checks them).
//! The bytes are cut into SCTP messages of at most 64 KiB (payload protocol id 53, "binary").
//!
//! The other choice, one SCTP message per frame, was left out on purpose: `sctp-proto` delivers
//! only whole messages and needs each to fit its receive buffer, so a 16 MiB maximum frame would
//! mean a 16 MiB receive buffer per association, which any peer could fill. Cutting the stream into
//! bounded messages keeps per-association memory at the receive window (1 MiB by default)
//! whatever the frame size, and TCP and SCTP peers share every line of the framing code.
//!
//! The end of the byte stream (what TCP's FIN is) is a one-byte message with payload protocol
//! id 57 ("binary empty", how WebRTC sends empty messages, since SCTP has none). Once both ends
//! have sent theirs and everything is acknowledged, the client starts SCTP's SHUTDOWN.
//!
//! ## Behaviour
//!
//! * **Backpressure**: a write waits while more than [`SctpConfig::with_send_buffer`] bytes are
//!   unacknowledged, so a fast writer runs at the pace of the peer's reader. Memory on the
//!   receiving side is bounded by the receive window.
//! * **Close**: [`ConnectionWriter::close`](crate::ConnectionWriter::close) sends the end of
//!   stream and waits until the peer has acknowledged everything. [`shutdown`] also waits for
//!   the peer's end of stream and SCTP's shutdown; call it before a process exits, so the last
//!   packets are not lost with it. A dropped connection sends its end of stream, and lingers in
//!   the background until shut down (at most [`SctpConfig::with_linger`]).
//! * **Timers** are tuned for a LAN by default (RTO 200 ms initially, 20 ms minimum, 1 s
//!   maximum); use [`SctpConfig::with_rto`] across a WAN.
//! * **Bad input**: datagrams that are not SCTP, carry a wrong checksum or an unknown
//!   verification tag are dropped without touching any association. Whatever a peer sends
//!   inside its own association affects that association only.
//! * **INIT floods**: `sctp-proto` keeps state from the first INIT on (it has no stateless
//!   cookie, unlike kernel SCTP), so a listener bounds those half-open associations: at most
//!   [`SctpConfig::with_max_half_open_per_source`] per IP address and
//!   [`SctpConfig::with_backlog`] in total, each dropped after
//!   [`SctpConfig::with_half_open_timeout`] (2 s by default). A new INIT beyond a bound
//!   replaces the oldest half-open association of its own address, or of the address holding
//!   the most, so a flood from a few addresses competes only with itself. What remains: a
//!   flood from many (spoofed) addresses that sends more than the backlog's worth of INITs
//!   within a real client's round trip can still crowd that client out, and each INIT costs
//!   an INIT ACK sent to its (possibly spoofed) source, no larger than the INIT.
//! * **Panics**: each association's processing runs under `catch_unwind`; a panic (a bug in
//!   `sctp-proto` or here) ends that association with an error and the others go on. Should
//!   the endpoint's driver itself end early (a panic outside any association, or its runtime
//!   dropping it), every association and the listener fail with an error instead of waiting.
//! * **A vanished peer** is noticed when it stops acknowledging data (after
//!   [`SctpConfig::with_max_retransmits`]) or, for a client, at once when its server's port is
//!   closed (ICMP port unreachable, like a TCP reset). `sctp-proto` sends no heartbeats, so an
//!   idle association to a peer that vanished silently stays open, as an idle TCP connection
//!   without keep-alive does; a [session](crate::session) on top adds heartbeats that notice it.

mod driver;
#[cfg(test)]
mod tests;
#[cfg(feature = "tls")]
mod tls;

use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use futures_io::{AsyncRead, AsyncWrite};
use sctp_proto::{AssociationHandle, TransportConfig};

use self::driver::{
    crashed_error, driver_gone, lost_error, to_io, Driver, Owner, Shared, DATA_PPI, FIN_PPI,
    MAX_MESSAGE,
};
use crate::connection::{Connection, ConnectionConfig as Config, ConnectionInfo};
use crate::error::Result;
use crate::transport::ToSocketAddrs;

#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use self::tls::{
    accept_tls, accept_tls_within, connect_tls, connect_tls_with, SctpTlsConnection,
};

/// A connection over SCTP.
pub type SctpConnection = Connection<SctpStream>;

/// Settings of SCTP associations (and of the [`Connection`]s on them).
///
/// ```
/// use connect::transport::sctp::SctpConfig;
/// use std::time::Duration;
///
/// // Across a WAN: internet-style timers.
/// let config = SctpConfig::default().with_rto(
///     Duration::from_secs(3),
///     Duration::from_secs(1),
///     Duration::from_secs(60),
/// );
/// assert_eq!(config.mtu(), 1200);
/// ```
#[derive(Clone, Debug)]
pub struct SctpConfig {
    connection: Config,
    mtu: usize,
    rto_initial: Duration,
    rto_min: Duration,
    rto_max: Duration,
    max_retransmits: usize,
    receive_window: u32,
    send_buffer: usize,
    udp_buffer: usize,
    handshake_timeout: Duration,
    linger: Duration,
    backlog: usize,
    max_half_open_per_source: usize,
    half_open_timeout: Option<Duration>,
}

/// Timer settings above this are lowered to it: far beyond any useful value, and small enough
/// that `sctp-proto`'s doubling of the retransmission timeout cannot overflow.
const MAX_RTO: Duration = Duration::from_secs(3600);

impl Default for SctpConfig {
    fn default() -> Self {
        Self {
            connection: Config::default(),
            mtu: 1200,
            rto_initial: Duration::from_millis(200),
            rto_min: Duration::from_millis(20),
            rto_max: Duration::from_secs(1),
            max_retransmits: 20,
            receive_window: 1024 * 1024,
            send_buffer: 1024 * 1024,
            udp_buffer: 4 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            linger: Duration::from_secs(5),
            backlog: 128,
            max_half_open_per_source: 8,
            half_open_timeout: None,
        }
    }
}

impl SctpConfig {
    /// Frame and write-buffer settings of the connections (default: [`Config::default`]).
    pub fn with_connection_config(mut self, config: Config) -> Self {
        self.connection = config;
        self
    }

    /// Size of the SCTP packets, that is UDP payloads, sent (default 1200 bytes). On loopback
    /// or a LAN with jumbo frames a larger value means fewer packets. Clamped to 256..=55 000.
    ///
    /// Full-size packets stay within this. A packet bundling many tiny messages can be up to
    /// 18 % larger (`sctp-proto` leaves chunk padding out of its size check), which IP then
    /// fragments; the upper clamp keeps even those under UDP's 65 507-byte limit.
    pub fn with_mtu(mut self, bytes: usize) -> Self {
        self.mtu = bytes.clamp(256, 55_000);
        self
    }

    /// Retransmission timeout: initial value, lower and upper bound (default 200 ms, 20 ms,
    /// 1 s: a LAN. SCTP's internet defaults are 3 s, 1 s, 60 s). Each is capped at one hour.
    pub fn with_rto(mut self, initial: Duration, min: Duration, max: Duration) -> Self {
        self.rto_initial = initial.min(MAX_RTO);
        self.rto_min = min.min(MAX_RTO);
        self.rto_max = max.max(min).min(MAX_RTO);
        self
    }

    /// Retransmissions of one packet before the peer is declared gone and the association
    /// fails with a time-out (default 20).
    pub fn with_max_retransmits(mut self, count: usize) -> Self {
        self.max_retransmits = count;
        self
    }

    /// Receive window: bytes received but not yet read that an association holds at most
    /// (default 1 MiB).
    pub fn with_receive_window(mut self, bytes: u32) -> Self {
        self.receive_window = bytes.max(MAX_MESSAGE as u32 * 2);
        self
    }

    /// Unacknowledged bytes above which writes wait (default 1 MiB).
    pub fn with_send_buffer(mut self, bytes: usize) -> Self {
        self.send_buffer = bytes.max(1);
        self
    }

    /// `SO_RCVBUF` and `SO_SNDBUF` asked for the UDP socket (default 4 MiB; the kernel may cap
    /// them). Small buffers drop datagrams in bursts, which SCTP then has to retransmit.
    pub fn with_udp_buffer(mut self, bytes: usize) -> Self {
        self.udp_buffer = bytes;
        self
    }

    /// How long an association may take to be established (default 10 s; `Duration::MAX`:
    /// no limit of its own, the INIT retransmissions still give up).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How long a dropped connection may take to shut down before it is abandoned (default
    /// 5 s). Also bounds the wait in [`shutdown`].
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Associations a listener holds at most that are being set up, and at most that are set
    /// up but not yet accepted (default 128 each). A new handshake beyond the first bound
    /// replaces the oldest one still pending; an association set up beyond the second is ended
    /// at once.
    pub fn with_backlog(mut self, backlog: usize) -> Self {
        self.backlog = backlog.max(1);
        self
    }

    /// Handshakes from one IP address a listener holds at most (default 8, at least 1). A new
    /// INIT beyond this replaces that address's oldest pending handshake, so a flood of INITs
    /// from one address only competes with itself. `sctp-proto` keeps state from the first
    /// INIT on (it has no stateless cookie, unlike kernel SCTP), which is what this bounds.
    pub fn with_max_half_open_per_source(mut self, count: usize) -> Self {
        self.max_half_open_per_source = count.max(1);
        self
    }

    /// How long a listener keeps a handshake that has answered INIT with INIT ACK and waits
    /// for the COOKIE ECHO (default: 2 s or four initial retransmission timeouts, whichever
    /// is longer, and never more than the [handshake timeout](Self::with_handshake_timeout)).
    /// A real client answers within a round trip, so a short time ages a flood of spoofed
    /// INITs out quickly; a client whose COOKIE ECHO is lost retransmits it within this.
    pub fn with_half_open_timeout(mut self, timeout: Duration) -> Self {
        self.half_open_timeout = Some(timeout);
        self
    }

    /// See [`with_half_open_timeout`](Self::with_half_open_timeout).
    pub fn half_open_timeout(&self) -> Duration {
        self.half_open_timeout
            .unwrap_or_else(|| Duration::from_secs(2).max(self.rto_initial.saturating_mul(4)))
            .min(self.handshake_timeout)
    }

    /// See [`with_connection_config`](Self::with_connection_config).
    pub fn connection_config(&self) -> &Config {
        &self.connection
    }

    /// See [`with_mtu`](Self::with_mtu).
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    fn transport_config(&self) -> Arc<TransportConfig> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        Arc::new(
            TransportConfig::default()
                .with_max_receive_buffer_size(self.receive_window)
                .with_max_send_message_size(MAX_MESSAGE as u32)
                .with_max_receive_message_size(MAX_MESSAGE as u32)
                .with_max_num_inbound_streams(1)
                .with_max_num_outbound_streams(1)
                .with_max_init_retransmits(Some(8))
                .with_max_data_retransmits(Some(self.max_retransmits))
                .with_rto_initial_ms(ms(self.rto_initial))
                .with_rto_min_ms(ms(self.rto_min))
                .with_rto_max_ms(ms(self.rto_max)),
        )
    }
}

/// Connects to `addr` with the default [`SctpConfig`].
///
/// # Errors
/// [`Error::Io`](crate::Error::Io): `ConnectionRefused` if nothing listens at the UDP port,
/// `TimedOut` if nobody answers the handshake in time (see
/// [`SctpConfig::with_handshake_timeout`]), or the local UDP socket could not be made.
pub async fn connect(addr: impl ToSocketAddrs) -> Result<SctpConnection> {
    connect_with(addr, &SctpConfig::default()).await
}

/// Connects to `addr` with the given settings, from a UDP socket of its own on an ephemeral
/// port.
///
/// # Errors
/// See [`connect`].
pub async fn connect_with(addr: impl ToSocketAddrs, config: &SctpConfig) -> Result<SctpConnection> {
    let mut last_error = None;
    for peer in async_net::resolve(addr).await? {
        match connect_addr(peer, config).await {
            Ok(conn) => return Ok(conn),
            Err(e) => {
                log::debug!("SCTP: connecting to {peer} failed: {e}");
                last_error = Some(e);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to").into()
    }))
}

async fn connect_addr(peer: SocketAddr, config: &SctpConfig) -> Result<SctpConnection> {
    let local = match peer {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let config = Arc::new(config.clone());
    let shared = Shared::bind(local, Some(peer), config.clone())?;
    let handle = shared.lock().connect(peer)?;
    run_on_own_thread(Driver::new(shared.clone()))?;
    // From here on, dropping `stream` (a cancelled connect) lets the driver clean up.
    let stream = SctpStream { shared, handle };
    poll_fn(|cx| stream.poll_connected(cx)).await?;
    Ok(stream.into_connection(&config.connection))
}

/// Accepts SCTP associations on one UDP port.
///
/// Dropping the listener refuses new associations; those already accepted go on.
pub struct SctpListener {
    shared: Arc<Shared>,
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

    /// Binds to `addr` with the given settings.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if the address cannot be bound.
    pub async fn bind_with(addr: impl ToSocketAddrs, config: SctpConfig) -> Result<Self> {
        let config = Arc::new(config);
        let mut last_error = None;
        for local in async_net::resolve(addr).await? {
            match Shared::bind(local, None, config.clone()) {
                Ok(shared) => {
                    run_on_own_thread(Driver::new(shared.clone()))?;
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

/// One SCTP association as a byte stream: `AsyncRead + AsyncWrite` over its stream 0.
///
/// Made by [`connect`] and [`SctpListener::accept`], already wrapped in a [`Connection`];
/// [`Connection::into_inner`] gives it back. Closing it ([`AsyncWrite::poll_close`]) sends the
/// end of stream and completes once the peer has acknowledged everything written. Dropping it
/// ends the stream too, and the association shuts down in the background.
pub struct SctpStream {
    shared: Arc<Shared>,
    handle: AssociationHandle,
}

impl std::fmt::Debug for SctpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SctpStream")
            .field("local_addr", &self.shared.local_addr)
            .field("association", &self.handle)
            .finish()
    }
}

impl SctpStream {
    /// The peer's UDP address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        let mut state = self.shared.lock();
        state
            .assocs
            .get_mut(&self.handle)
            .map(|a| a.inner.remote_addr())
    }

    /// The local UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    fn into_connection(self, config: &Config) -> SctpConnection {
        let info = ConnectionInfo::new()
            .with_local_addr(Some(self.local_addr()))
            .with_peer_addr(self.peer_addr());
        Connection::with_config(self, config, info)
    }

    fn poll_connected(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        let Some(assoc) = state.assocs.get_mut(&self.handle) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if assoc.crashed {
            return Poll::Ready(Err(crashed_error()));
        }
        if assoc.connected {
            return Poll::Ready(Ok(()));
        }
        match &assoc.lost {
            Some(sctp_proto::AssociationError::Reset) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "SCTP: nobody listens at the peer's UDP port",
            ))),
            Some(reason) => Poll::Ready(Err(lost_error(reason))),
            None => {
                assoc.read_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Ready once SCTP's shutdown is over (or the association ended otherwise).
    fn poll_finished(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.shared.lock();
        match state.assocs.get_mut(&self.handle) {
            Some(assoc) if !assoc.finished => {
                assoc.read_waker = Some(cx.waker().clone());
                state.wake_driver(self.handle);
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }
}

impl AsyncRead for SctpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut state = self.shared.lock();
        let Some(assoc) = state.assocs.get_mut(&self.handle) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if assoc.crashed {
            return Poll::Ready(Err(crashed_error()));
        }
        let mut read_any = false;
        let result = loop {
            if let Some(chunks) = &mut assoc.pending {
                match chunks.next(buf.len()) {
                    Some(chunk) => {
                        let n = chunk.bytes.len();
                        buf[..n].copy_from_slice(&chunk.bytes);
                        break Poll::Ready(Ok(n));
                    }
                    None => assoc.pending = None,
                }
            }
            if assoc.fin_received {
                break Poll::Ready(Ok(0));
            }
            let message = match assoc.received.pop_front() {
                Some(chunks) => Ok(Some(chunks)),
                None => match assoc.inner.stream(driver::STREAM_ID) {
                    Ok(mut stream) => stream.read_sctp(),
                    Err(e) => Err(e),
                },
            };
            match message {
                Ok(Some(chunks)) => {
                    read_any = true;
                    match chunks.ppi {
                        FIN_PPI => {
                            assoc.fin_received = true;
                        }
                        DATA_PPI if chunks.len() <= buf.len() => {
                            break Poll::Ready(chunks.read(buf).map_err(to_io));
                        }
                        DATA_PPI => assoc.pending = Some(chunks),
                        other => {
                            break Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("SCTP message with payload protocol {other}"),
                            )));
                        }
                    }
                }
                Ok(None) => {
                    assoc.read_waker = Some(cx.waker().clone());
                    break match &assoc.lost {
                        Some(reason) => Poll::Ready(Err(lost_error(reason))),
                        None => Poll::Pending,
                    };
                }
                Err(e) => {
                    break Poll::Ready(Err(match &assoc.lost {
                        Some(reason) => lost_error(reason),
                        None => io::Error::new(io::ErrorKind::ConnectionReset, to_io(e)),
                    }));
                }
            }
        };
        if read_any {
            // Reading frees receive window, which the peer may be waiting for.
            state.wake_driver(self.handle);
        }
        result
    }
}

impl AsyncWrite for SctpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut state = self.shared.lock();
        let high_water = state.config.send_buffer;
        let Some(assoc) = state.assocs.get_mut(&self.handle) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if assoc.crashed {
            return Poll::Ready(Err(crashed_error()));
        }
        if let Some(reason) = &assoc.lost {
            return Poll::Ready(Err(lost_error(reason)));
        }
        if assoc.fin_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "SCTP stream already closed for writing",
            )));
        }
        let mut stream = match assoc.inner.stream(driver::STREAM_ID) {
            Ok(stream) => stream,
            Err(e) => return Poll::Ready(Err(to_io(e))),
        };
        if stream.buffered_amount().map_err(to_io)? >= high_water {
            assoc.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(MAX_MESSAGE);
        let written = stream
            .write_sctp(&Bytes::copy_from_slice(&buf[..n]), DATA_PPI)
            .map_err(to_io);
        state.wake_driver(self.handle);
        Poll::Ready(written)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are already with the association; the driver sends them.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        let Some(assoc) = state.assocs.get_mut(&self.handle) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if assoc.crashed {
            return Poll::Ready(Err(crashed_error()));
        }
        if assoc.fin_acked {
            return Poll::Ready(Ok(()));
        }
        if let Some(reason) = &assoc.lost {
            return Poll::Ready(Err(lost_error(reason)));
        }
        if !assoc.fin_sent {
            assoc.send_fin()?;
        }
        if assoc.buffered() == Some(0) {
            assoc.fin_acked = true;
            return Poll::Ready(Ok(()));
        }
        assoc.write_waker = Some(cx.waker().clone());
        state.wake_driver(self.handle);
        Poll::Pending
    }
}

impl Drop for SctpStream {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let linger = state.config.linger;
        if let Some(assoc) = state.assocs.get_mut(&self.handle) {
            assoc.drop_owner(linger);
        }
        state.wake_driver(self.handle);
    }
}

/// Ends `conn` gracefully and waits until the association is shut down: closes the writer (end
/// of stream after everything written, acknowledged by the peer), waits for the peer's end of
/// stream, then for SCTP's SHUTDOWN exchange. Messages that still arrive are dropped (logged
/// at debug level). Bounded by [`SctpConfig::with_linger`] after the peer's end of stream.
///
/// Works on a plain association ([`SctpConnection`]) and, with the `tls` feature, on TLS over
/// one ([`SctpTlsConnection`]: TLS's `close_notify` goes first).
///
/// Call it when done with a connection in a process about to exit; otherwise dropping the
/// connection does the same in the background.
///
/// # Errors
/// [`Error::Io`](crate::Error::Io) if the association failed before everything written was acknowledged, or any
/// error reading the rest of the peer's stream.
pub async fn shutdown<S: Association>(mut conn: Connection<S>) -> Result<()> {
    conn.close().await?;
    let mut dropped = 0usize;
    while conn.recv().await?.is_some() {
        dropped += 1;
    }
    if dropped > 0 {
        log::debug!(
            "{}: dropped {dropped} messages while shutting down",
            conn.info()
        );
    }
    let io = conn.into_inner();
    let stream = io.association();
    let linger = stream.shared.lock().config.linger;
    let finished = poll_fn(|cx| stream.poll_finished(cx));
    let timeout = async_io::Timer::after(linger);
    futures_util::future::select(std::pin::pin!(finished), timeout).await;
    Ok(())
}

/// A byte stream carried by an SCTP association: [`SctpStream`] itself, or TLS over one.
/// [`shutdown`] takes a connection over any of them. Sealed: implemented here only.
pub trait Association: AsyncRead + AsyncWrite + Unpin + sealed::Sealed {
    /// The association underneath.
    fn association(&self) -> &SctpStream;
}

impl Association for SctpStream {
    fn association(&self) -> &SctpStream {
        self
    }
}

#[cfg(feature = "tls")]
impl Association for crate::transport::tls::TlsStream<SctpStream> {
    fn association(&self) -> &SctpStream {
        self.get_ref().0
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::SctpStream {}
    #[cfg(feature = "tls")]
    impl Sealed for crate::transport::tls::TlsStream<super::SctpStream> {}
}

/// Runs a UDP port's driver on a thread of its own, on the `async-io` reactor, until the port
/// closes: it needs no executor, so SCTP works the same under any runtime (or none).
fn run_on_own_thread(driver: Driver) -> io::Result<()> {
    std::thread::Builder::new()
        .name("connect-sctp".into())
        .spawn(move || async_io::block_on(driver))
        .map(drop)
}
