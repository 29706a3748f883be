//! TLS (1.3 and 1.2, rustls with the ring provider), with optional mutual TLS.
//!
//! A TLS connection is an ordinary [`Connection`](crate::Connection) over a [`TlsStream`]: the
//! dispatcher and everything above work unchanged. The handshake functions
//! [`connect_stream`] and [`accept_stream`] run over any `futures-io` stream on any runtime;
//! with the `tcp` feature, [`connect`] and [`TlsListener`] do TCP plus TLS, with handshake
//! timeouts.
//!
//! * Certificates and keys come from PEM ([`certificates_from_pem_file`], [`Identity`]).
//! * A client checks the server's certificate against its trusted CAs and the server name it
//!   asked for; a server can require client certificates from given CAs.
//! * The peer's verified certificate and names are in
//!   [`ConnectionInfo::peer_identity`](crate::ConnectionInfo::peer_identity).
//! * Failures are typed: [`Error::Tls`](crate::Error::Tls) with a
//!   [`TlsError`](crate::TlsError) saying which certificate check failed, that the peer
//!   rejected us, or that the handshake timed out.
//! * Closing a connection sends `close_notify`, then shuts the TCP write side down.
//!
//! ```no_run
//! # async_std::task::block_on(async {
//! use connect::proto::example::HelloWorld;
//! use connect::transport::tls::{self, Identity, TlsClientConfig, TlsListener, TlsServerConfig};
//! use futures::StreamExt;
//!
//! // Server: certificate and key from PEM files, clients must show a certificate from our CA.
//! let server_tls = TlsServerConfig::builder(Identity::from_pem_files("server.pem", "server.key")?)
//!     .require_client_certificates(tls::certificates_from_pem_file("ca.pem")?)
//!     .build()?;
//! let mut listener = TlsListener::bind("127.0.0.1:0", server_tls).await?;
//! let addr = listener.local_addr();
//! async_std::task::spawn(async move {
//!     // Handshakes run inside the listener, so keep polling it: serve each connection in a
//!     // task of its own. One failing handshake (an `Err` item) does not stop the listener.
//!     while let Some(conn) = listener.next().await {
//!         let Ok(mut conn) = conn else { continue };
//!         async_std::task::spawn(async move {
//!             let client = conn.peer_identity().and_then(|id| id.common_name()).unwrap_or("?");
//!             println!("{client} connected");
//!             while let Some(any) = conn.recv().await? {
//!                 conn.send(any).await?; // echo
//!             }
//!             conn.close().await
//!         });
//!     }
//! });
//!
//! // Client: trusts our CA, checks the name "localhost", shows its own certificate.
//! let client_tls = TlsClientConfig::builder()
//!     .trust(tls::certificates_from_pem_file("ca.pem")?)
//!     .with_identity(Identity::from_pem_files("client.pem", "client.key")?)
//!     .build()?;
//! let mut conn = tls::connect(addr, "localhost", &client_tls).await?;
//! conn.send_message(&HelloWorld { text: "hi".into(), sequence: 1 }).await?;
//! let echoed: Option<HelloWorld> = conn.recv_message().await?;
//! conn.close().await?;
//! # Ok::<(), connect::Error>(()) }).unwrap();
//! ```

mod config;
#[cfg(feature = "tcp")]
mod listener;
mod stream;

pub use config::{
    certificates_from_pem, certificates_from_pem_file, private_key_from_pem,
    private_key_from_pem_file, Identity, TlsClientConfig, TlsClientConfigBuilder, TlsServerConfig,
    TlsServerConfigBuilder, DEFAULT_HANDSHAKE_TIMEOUT,
};
#[cfg(feature = "tcp")]
#[cfg_attr(docsrs, doc(cfg(feature = "tcp")))]
pub use listener::{TlsListener, DEFAULT_MAX_PENDING_HANDSHAKES};
pub use stream::{accept_stream, connect_stream, TlsStream};

/// Re-exported: build a [`rustls::ClientConfig`] or [`rustls::ServerConfig`] yourself and use it
/// with [`TlsClientConfig::from_rustls`] / [`TlsServerConfig::from_rustls`].
pub use rustls;
/// Re-exported: the certificate and key types (`CertificateDer`, `PrivateKeyDer`).
pub use rustls_pki_types as pki_types;

#[cfg(feature = "tcp")]
#[cfg_attr(docsrs, doc(cfg(feature = "tcp")))]
pub use self::tcp::{connect, connect_with, TlsConnection};

#[cfg(feature = "tcp")]
mod tcp {
    use std::future::Future;
    use std::time::Duration;

    use futures_util::future::{select, Either};

    use super::{connect_stream, TlsClientConfig, TlsStream};
    use crate::connection::{Connection, ConnectionConfig};
    use crate::error::{Result, TlsError};
    use crate::transport::tcp::{tcp_info, TcpStream};
    use crate::transport::ToSocketAddrs;

    /// A TLS connection over TCP.
    pub type TlsConnection = Connection<TlsStream<TcpStream>>;

    /// Connects over TCP to `addr` and runs a TLS handshake, checking the server's certificate
    /// against `tls`'s trusted CAs and `server_name` (a DNS name, or an IP address written out).
    /// Uses the default [`ConnectionConfig`].
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if TCP fails; [`Error::Tls`](crate::Error::Tls) if the
    /// handshake fails (see [`connect_stream`]) or takes longer than `tls`'s handshake timeout
    /// ([`TlsError::HandshakeTimeout`]).
    pub async fn connect(
        addr: impl ToSocketAddrs,
        server_name: &str,
        tls: &TlsClientConfig,
    ) -> Result<TlsConnection> {
        connect_with(addr, server_name, tls, &ConnectionConfig::default()).await
    }

    /// [`connect`] with the given connection settings.
    ///
    /// # Errors
    /// As [`connect`].
    pub async fn connect_with(
        addr: impl ToSocketAddrs,
        server_name: &str,
        tls: &TlsClientConfig,
        config: &ConnectionConfig,
    ) -> Result<TlsConnection> {
        let stream = async_net::TcpStream::connect(addr).await?;
        let info = tcp_info(&stream);
        let timeout = tls.handshake_timeout();
        let handshake = connect_stream(TcpStream::from(stream), server_name, tls, config, info);
        with_timeout(timeout, handshake).await
    }

    /// `future`'s result, or [`TlsError::HandshakeTimeout`] once `limit` has passed. The timer
    /// is `futures-timer`'s, which needs no runtime.
    pub(super) async fn with_timeout<T>(
        limit: Duration,
        future: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let future = std::pin::pin!(future);
        match select(future, futures_timer::Delay::new(limit)).await {
            Either::Left((result, _)) => result,
            Either::Right(((), _)) => Err(TlsError::HandshakeTimeout(limit).into()),
        }
    }
}
