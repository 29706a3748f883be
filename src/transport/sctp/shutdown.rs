//! [`shutdown`]: ending an association gracefully, over any [`Association`] (a plain one or
//! TLS over one).

use std::future::poll_fn;

use futures_io::{AsyncRead, AsyncWrite};

use super::SctpStream;
use crate::connection::Connection;
use crate::error::Result;

/// Ends `conn` gracefully and waits until the association is shut down: closes the writer (end
/// of stream after everything written, acknowledged by the peer), waits for the peer's end of
/// stream, then for SCTP's SHUTDOWN exchange. Messages that still arrive are dropped (logged
/// at debug level). Bounded by [`SctpConfig::with_linger`](super::SctpConfig::with_linger)
/// after the peer's end of stream.
///
/// Works on a plain association ([`SctpConnection`](super::SctpConnection)) and, with the `tls`
/// feature, on TLS over one ([`SctpTlsConnection`](super::SctpTlsConnection): TLS's
/// `close_notify` goes first).
///
/// Call it when done with a connection in a process about to exit; otherwise dropping the
/// connection does the same in the background.
///
/// # Errors
/// [`Error::Io`](crate::Error::Io) if the association failed before everything written was
/// acknowledged, or any error reading the rest of the peer's stream.
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
