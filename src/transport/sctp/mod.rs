//! SCTP over UDP (on the `async-io` reactor): [`connect`] a client, [`SctpListener::bind`] a
//! server. Needs the `sctp` feature.
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
//! `futures-io` `AsyncRead + AsyncWrite`, so [`Connection`](crate::Connection), its halves, the
//! dispatcher and everything else work unchanged, with the same maximum-frame rules (the codec
//! checks them). The bytes are cut into SCTP messages of at most 64 KiB (payload protocol id 53,
//! "binary").
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
//! * **Timers** are tuned for a LAN by default (RTO 200 ms initially, 2 ms minimum, 1 s
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
//!
//! ## Where the driver runs
//!
//! Each UDP port (a listener's, and each client connection's own) has one driver: the future
//! that receives and sends its datagrams, runs its timers and does the SCTP work of every
//! association on it. You choose where it runs, as with the other transports'
//! [background work](crate::transport#where-background-work-runs):
//!
//! * [`connect`], [`connect_with`], [`SctpListener::bind`], [`SctpListener::bind_with`] (and
//!   `connect_tls`, `connect_tls_with`) run it on **a thread of its own** per port, on the
//!   `async-io` reactor. That is the default because the driver is a userspace network stack:
//!   it computes the checksum of every packet and does SACKs, retransmissions and reassembly for
//!   every association of the port, and its retransmission timers (2 ms minimum) should fire on
//!   time. On its own thread it runs beside your tasks, not between them; a busy (or
//!   single-threaded) executor cannot delay acknowledgements for every association; and it works
//!   the same under async-std, smol, tokio or no runtime at all.
//! * [`connect_with_spawner`], [`SctpListener::bind_with_spawner`] (and
//!   `connect_tls_with_spawner`) hand it, as a [`Task`](crate::transport::Task), to a `spawn`
//!   function you pass (`|task| smol::spawn(task).detach()`, `|task| { tokio::spawn(task); }`,
//!   ...): no thread of the library's, for example when a process opens many client
//!   connections (a thread each otherwise), or wants all its work on one runtime. The driver
//!   needs no particular executor (its socket and timers are `async-io`'s).
//!
//! Either way the driver ends by itself once nothing listens on its port and every association
//! is gone; if it is dropped before that (its executor shut down), every association and the
//! listener fail with an error instead of waiting.
//!
//! ```no_run
//! # fn run() -> connect::Result<()> { smol::block_on(async {
//! use connect::transport::sctp::{self, SctpConfig, SctpListener};
//!
//! let config = SctpConfig::default();
//! let listener =
//!     SctpListener::bind_with_spawner("127.0.0.1:0", config.clone(), |task| {
//!         smol::spawn(task).detach()
//!     })
//!     .await?;
//! let conn = sctp::connect_with_spawner(listener.local_addr(), &config, |task| {
//!     smol::spawn(task).detach()
//! })
//! .await?;
//! # drop(conn); Ok(()) }) }
//! ```

mod association;
mod config;
mod connect;
mod driver;
mod endpoint;
mod listener;
mod shutdown;
mod stream;
#[cfg(test)]
mod tests;
#[cfg(feature = "tls")]
mod tls;

pub use self::config::SctpConfig;
pub use self::connect::{connect, connect_with, connect_with_spawner};
pub use self::listener::{Incoming, SctpListener};
pub use self::shutdown::{shutdown, Association};
pub use self::stream::{SctpConnection, SctpStream};
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use self::tls::{
    accept_tls, accept_tls_within, connect_tls, connect_tls_with, connect_tls_with_spawner,
    SctpTlsConnection,
};
use crate::transport::ToSocketAddrs;
