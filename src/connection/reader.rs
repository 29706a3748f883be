//! The receiving half of a connection.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_io::AsyncRead;
use futures_util::StreamExt;
use prost::{Message, Name};
use prost_types::Any;

use super::framed::ReadState;
use super::ConnectionInfo;
use crate::codec::type_name;
use crate::error::{Error, Result};

/// Receives frames: a [`Stream`] of `Result<Any>`.
///
/// The stream ends (`None`) when the peer closes the connection between two frames. Any error
/// (I/O, an invalid or oversized frame, the connection ending inside a frame) is yielded once and
/// then the stream ends: after a framing error the byte stream cannot be trusted any more.
///
/// Made by [`Connection::split`](crate::Connection::split), or with [`ConnectionReader::new`]
/// over any [`AsyncRead`].
#[derive(Debug)]
pub struct ConnectionReader<R> {
    pub(super) io: R,
    pub(super) state: ReadState,
    pub(crate) info: Arc<ConnectionInfo>,
}

impl<R: AsyncRead + Unpin> ConnectionReader<R> {
    /// Receives from `io`, refusing frames longer than `config`'s maximum.
    pub fn new(io: R, config: &super::Config, info: ConnectionInfo) -> Self {
        Self {
            io,
            state: ReadState::new(config.codec()),
            info: Arc::new(info),
        }
    }

    /// The next message, or `Ok(None)` once the peer has closed the connection cleanly.
    ///
    /// Cancel-safe: dropping the returned future loses nothing.
    pub async fn recv(&mut self) -> Result<Option<Any>> {
        self.next().await.transpose()
    }

    /// The next message, unpacked as `M`, or `Ok(None)` once the peer has closed cleanly.
    ///
    /// # Errors
    /// [`Error::UnexpectedType`] (carrying the message) if a message of another type arrives,
    /// [`Error::Decode`] if its bytes are not a valid `M`, or any error of [`Self::recv`].
    pub async fn recv_message<M: Message + Name + Default>(&mut self) -> Result<Option<M>> {
        match self.recv().await? {
            Some(any) => unpack(any).map(Some),
            None => Ok(None),
        }
    }
}

impl<R> ConnectionReader<R> {
    /// Addresses and identity of this connection.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Changes the maximum length of frames not yet received (the session layer negotiates it).
    pub(crate) fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.state.set_max_frame_len(max_frame_len);
    }

    /// Bytes received but not yet returned as messages.
    pub fn buffered_len(&self) -> usize {
        self.state.buffered_len()
    }
}

impl<R: AsyncRead + Unpin> Stream for ConnectionReader<R> {
    type Item = Result<Any>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.state.poll_next(Pin::new(&mut this.io), cx)
    }
}

/// Unpacks `any` as an `M`, checking its type name first.
pub(crate) fn unpack<M: Message + Name + Default>(any: Any) -> Result<M> {
    if type_name(&any.type_url) != M::full_name() {
        return Err(Error::UnexpectedType {
            expected: M::full_name(),
            any: Box::new(any),
        });
    }
    M::decode(any.value.as_slice()).map_err(|source| Error::Decode {
        type_name: M::full_name(),
        source,
    })
}
