//! Sources of accepted connections for [`Endpoint::accept`](super::Endpoint::accept).
//!
//! Any `Stream<Item = Result<Connection<T>>> + Send + 'static` is one: a
//! [`TlsListener`](crate::transport::tls::TlsListener) as it is, and anything else (a WebSocket
//! listener, an in-memory pair for tests) by implementing `Stream` or through
//! `futures::stream::unfold`.

#[cfg(feature = "tcp")]
use futures_core::Stream;

/// The connections a [`TcpListener`](crate::transport::tcp::TcpListener) accepts, as an owned
/// stream for [`Endpoint::accept`](super::Endpoint::accept). Accept errors are items: the
/// endpoint reports them as events and goes on.
#[cfg(feature = "tcp")]
#[cfg_attr(docsrs, doc(cfg(feature = "tcp")))]
pub fn tcp_incoming(
    listener: crate::transport::tcp::TcpListener,
) -> impl Stream<Item = crate::Result<crate::transport::tcp::TcpConnection>> + Send + 'static {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await;
        Some((accepted, listener))
    })
}
