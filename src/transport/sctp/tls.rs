//! TLS over an SCTP association: the same certificates, mutual TLS and typed errors as TLS over
//! TCP ([`crate::transport::tls`]), on the association's one ordered, reliable stream.
//!
//! Needs the `sctp` and `tls` features. The client runs the handshake inside [`connect_tls`];
//! a server accepts associations as usual and runs [`accept_tls`] on each **in the task that
//! serves it**, so a client that stalls its handshake holds up nobody else:
//!
//! ```no_run
//! # async_std::task::block_on(async {
//! use connect::proto::example::HelloWorld;
//! use connect::transport::sctp::{self, SctpListener};
//! use connect::transport::tls::{Identity, TlsClientConfig, TlsServerConfig};
//!
//! let server_tls = TlsServerConfig::builder(Identity::from_pem_files("server.pem", "server.key")?)
//!     .build()?;
//! let listener = SctpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr();
//! async_std::task::spawn(async move {
//!     loop {
//!         let association = listener.accept().await?;
//!         let server_tls = server_tls.clone();
//!         async_std::task::spawn(async move {
//!             let mut conn = sctp::accept_tls(association, &server_tls).await?;
//!             while let Some(any) = conn.recv().await? {
//!                 conn.send(any).await?; // echo
//!             }
//!             sctp::shutdown(conn).await
//!         });
//!     }
//!     #[allow(unreachable_code)]
//!     Ok::<(), connect::Error>(())
//! });
//!
//! let client_tls = TlsClientConfig::builder()
//!     .trust(connect::transport::tls::certificates_from_pem_file("ca.pem")?)
//!     .build()?;
//! let mut conn = sctp::connect_tls(addr, "localhost", &client_tls).await?;
//! conn.send_message(&HelloWorld { text: "hi".into(), sequence: 1 }).await?;
//! let echoed: Option<HelloWorld> = conn.recv_message().await?;
//! sctp::shutdown(conn).await?;
//! # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
//!
//! ## How this relates to DTLS over SCTP (RFC 6083)
//!
//! RFC 6083 protects each SCTP user message with DTLS, so that SCTP's message boundaries,
//! unordered delivery and several streams survive encryption. `connect` uses none of those: an
//! association carries one ordered, reliable byte stream, exactly what TCP carries. Over such a
//! stream TLS 1.3 gives what DTLS/SCTP gives the application — confidentiality, integrity and
//! replay protection of every byte, and certificate authentication of the server (and, with
//! client certificates, of the client) — with the same configuration and verified
//! [`PeerIdentity`](crate::PeerIdentity) as TLS over TCP. What neither protects is SCTP's own
//! packets: RFC 6083 adds SCTP-AUTH for its control chunks; without it, as with a TCP reset, an
//! attacker on the path can end an association (never read or forge a message: a forged byte
//! fails TLS's integrity check and ends the connection with an error).

use std::time::Duration;

use futures_util::future::{select, Either};

use super::{
    connect_with, connect_with_spawner, SctpConfig, SctpConnection, SctpStream, ToSocketAddrs,
};
use crate::connection::Connection;
use crate::error::{Result, TlsError};
use crate::transport::tls::{
    accept_stream, connect_stream, TlsClientConfig, TlsServerConfig, TlsStream,
};
use crate::transport::Task;

/// A TLS connection over an SCTP association.
pub type SctpTlsConnection = Connection<TlsStream<SctpStream>>;

/// Connects an SCTP association to `addr` (default [`SctpConfig`]) and runs a TLS handshake
/// on it, checking the server's certificate against `tls`'s trusted CAs and `server_name`.
///
/// # Errors
/// As [`sctp::connect`](super::connect) for the association; [`Error::Tls`](crate::Error::Tls)
/// if the handshake fails or takes longer than `tls`'s handshake timeout
/// ([`TlsError::HandshakeTimeout`]).
pub async fn connect_tls(
    addr: impl ToSocketAddrs,
    server_name: &str,
    tls: &TlsClientConfig,
) -> Result<SctpTlsConnection> {
    connect_tls_with(addr, server_name, tls, &SctpConfig::default()).await
}

/// [`connect_tls`] with the given SCTP (and connection) settings.
///
/// # Errors
/// As [`connect_tls`].
pub async fn connect_tls_with(
    addr: impl ToSocketAddrs,
    server_name: &str,
    tls: &TlsClientConfig,
    config: &SctpConfig,
) -> Result<SctpTlsConnection> {
    let association = connect_with(addr, config).await?;
    tls_over(association, server_name, tls, config).await
}

/// [`connect_tls_with`], handing the association's driver to `spawn` to run on your executor
/// (as [`connect_with_spawner`]).
///
/// # Errors
/// As [`connect_tls`].
pub async fn connect_tls_with_spawner(
    addr: impl ToSocketAddrs,
    server_name: &str,
    tls: &TlsClientConfig,
    config: &SctpConfig,
    spawn: impl FnMut(Task),
) -> Result<SctpTlsConnection> {
    let association = connect_with_spawner(addr, config, spawn).await?;
    tls_over(association, server_name, tls, config).await
}

/// The client side of a TLS handshake on a connected association.
async fn tls_over(
    association: SctpConnection,
    server_name: &str,
    tls: &TlsClientConfig,
    config: &SctpConfig,
) -> Result<SctpTlsConnection> {
    let info = association.info().clone();
    let handshake = connect_stream(
        association.into_inner(),
        server_name,
        tls,
        config.connection_config(),
        info,
    );
    within(tls.handshake_timeout(), handshake).await
}

/// Runs the server side of a TLS handshake on an association accepted by
/// [`SctpListener`](super::SctpListener), within
/// `tls`'s [handshake timeout](TlsServerConfig::with_handshake_timeout). Call it in the task that
/// serves the association, not in the accept loop.
///
/// # Errors
/// [`Error::Tls`](crate::Error::Tls) if the client does not speak TLS, shows no or an
/// untrusted certificate where one is required, or does not finish in time
/// ([`TlsError::HandshakeTimeout`]); [`Error::Io`](crate::Error::Io) if the association fails.
pub async fn accept_tls(
    association: SctpConnection,
    tls: &TlsServerConfig,
) -> Result<SctpTlsConnection> {
    accept_tls_within(association, tls, tls.handshake_timeout()).await
}

/// [`accept_tls`] with another handshake timeout.
///
/// # Errors
/// As [`accept_tls`].
pub async fn accept_tls_within(
    association: SctpConnection,
    tls: &TlsServerConfig,
    timeout: Duration,
) -> Result<SctpTlsConnection> {
    let info = association.info().clone();
    let config = association.config();
    let handshake = accept_stream(association.into_inner(), tls, &config, info);
    within(timeout, handshake).await
}

async fn within<T>(
    timeout: Duration,
    handshake: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let timer = futures_timer::Delay::new(timeout);
    match select(std::pin::pin!(handshake), timer).await {
        Either::Left((result, _)) => result,
        Either::Right(((), _)) => Err(TlsError::HandshakeTimeout(timeout).into()),
    }
}
