//! [`SctpStream`]: one association as a byte stream (`AsyncRead + AsyncWrite` over its
//! stream 0), and the end-of-stream marker it reads and writes.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_io::{AsyncRead, AsyncWrite};
use sctp_proto::AssociationHandle;

use super::association::{
    crashed_error, lost_error, to_io, DATA_PPI, FIN_PPI, MAX_MESSAGE, STREAM_ID,
};
use super::endpoint::Shared;
use crate::connection::{Connection, ConnectionConfig, ConnectionInfo};

/// A connection over SCTP.
pub type SctpConnection = Connection<SctpStream>;

/// One SCTP association as a byte stream: `AsyncRead + AsyncWrite` over its stream 0.
///
/// Made by [`connect`](super::connect()) and
/// [`SctpListener::accept`](super::SctpListener::accept), already wrapped in a [`Connection`];
/// [`Connection::into_inner`] gives it back. Closing it ([`AsyncWrite::poll_close`]) sends the
/// end of stream and completes once the peer has acknowledged everything written. Dropping it
/// ends the stream too, and the association shuts down in the background.
pub struct SctpStream {
    pub(super) shared: Arc<Shared>,
    pub(super) handle: AssociationHandle,
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

    pub(super) fn into_connection(self, config: &ConnectionConfig) -> SctpConnection {
        let info = ConnectionInfo::new()
            .with_local_addr(Some(self.local_addr()))
            .with_peer_addr(self.peer_addr());
        Connection::with_config(self, config, info)
    }

    pub(super) fn poll_connected(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        let gone = state.driver_gone;
        let Some(assoc) = state.assocs.get_mut(&self.handle) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if assoc.crashed {
            return Poll::Ready(Err(crashed_error(gone)));
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
    pub(super) fn poll_finished(&self, cx: &mut Context<'_>) -> Poll<()> {
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
        let gone = state.driver_gone;
        let Some(assoc) = state.assocs.get_mut(&self.handle) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if assoc.crashed {
            return Poll::Ready(Err(crashed_error(gone)));
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
                None => match assoc.inner.stream(STREAM_ID) {
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
        let gone = state.driver_gone;
        let Some(assoc) = state.assocs.get_mut(&self.handle) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if assoc.crashed {
            return Poll::Ready(Err(crashed_error(gone)));
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
        let mut stream = match assoc.inner.stream(STREAM_ID) {
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
        let gone = state.driver_gone;
        let Some(assoc) = state.assocs.get_mut(&self.handle) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if assoc.crashed {
            return Poll::Ready(Err(crashed_error(gone)));
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
