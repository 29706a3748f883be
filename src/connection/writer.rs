//! The sending half of a connection.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_io::AsyncWrite;
use futures_sink::Sink;
use prost::{Message, Name};
use prost_types::Any;

use super::framed::WriteState;
use super::ConnectionInfo;
use crate::error::{Error, Result};

/// Sends frames: a [`Sink`] of [`Any`], plus typed [`send_message`](Self::send_message).
///
/// Frames are encoded into a write buffer. `send` and `send_message` write and flush at once;
/// `feed` and `feed_message` only buffer (writing when the buffer passes its high-water mark), so many small messages go out
/// in few system calls when followed by one [`flush`](Self::flush). Short writes and `Pending`
/// never lose bytes: what the transport did not take stays buffered for the next call. Large
/// values are not copied where the writer can avoid it: an `Any` given by value (`feed`, `send`,
/// the `Sink`), [`feed_encoded`](Self::feed_encoded)'s `Bytes`, and a message's
/// [`bytes::Bytes`] fields (prost-build's `.bytes(..)` option) given to `feed_message` and
/// `send_message` keep a value of 16 KiB or more in its own memory until it is written
/// (vectored with the bytes before it). A flush
/// gives a write buffer that grew beyond 2 KiB back once it is written, so a connection that has
/// gone quiet after a burst holds no large buffer.
/// [`close`](Self::close) flushes everything, then shuts the transport's write side down.
///
/// Made by [`Connection::split`](crate::Connection::split), or with [`ConnectionWriter::new`]
/// over any [`AsyncWrite`].
#[derive(Debug)]
pub struct ConnectionWriter<W> {
    pub(super) io: W,
    pub(super) state: WriteState,
    pub(crate) info: Arc<ConnectionInfo>,
}

impl<W: AsyncWrite + Unpin> ConnectionWriter<W> {
    /// Sends to `io`, refusing frames longer than `config`'s maximum.
    pub fn new(io: W, config: &super::ConnectionConfig, info: ConnectionInfo) -> Self {
        Self {
            io,
            state: WriteState::new(config.codec(), config.write_high_water),
            info: Arc::new(info),
        }
    }

    crate::handle::writer_methods!();

    pub(crate) fn poll_feed(
        &mut self,
        cx: &mut Context<'_>,
        item: &mut Option<Any>,
    ) -> Poll<Result<()>> {
        crate::handle::poll_feed_sink(self, cx, item, |w, any| Sink::start_send(Pin::new(w), any))
    }

    /// Queues a frame of type `M` whose value is `value`: `M` already encoded (once for many
    /// connections, say, or kept from an earlier decode). A value of 16 KiB or more is not
    /// copied into the write buffer but written from `value` itself, together with the
    /// frame's head in one vectored write, and held until then. The bytes on the wire are the
    /// same as [`feed_message`](Self::feed_message)'s for the decoded `M`. Like `feed`, waits
    /// only while the write buffer is above its high-water mark.
    ///
    /// `value` is not checked to be an `M`: the receiver's decoding is what checks it.
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// use connect::proto::example::HelloWorld;
    /// use prost::Message;
    ///
    /// let hello = HelloWorld { text: "hi".into(), sequence: 1 };
    /// let encoded = bytes::Bytes::from(hello.encode_to_vec());
    /// let mut conn = connect::Connection::new(futures::io::Cursor::new(Vec::new()));
    /// conn.send_encoded::<HelloWorld>(encoded).await?;
    /// let bytes = conn.into_inner().into_inner();
    ///
    /// let mut conn = connect::Connection::new(futures::io::Cursor::new(bytes));
    /// assert_eq!(conn.recv_message::<HelloWorld>().await?, Some(hello));
    /// # Ok::<(), connect::Error>(()) }).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`Error::FrameTooLarge`] if the frame would be longer than the maximum frame length
    /// (nothing is queued and the writer stays usable), or [`Error::Closed`] once the writer
    /// has closed or failed.
    pub async fn feed_encoded<M: Name>(&mut self, value: bytes::Bytes) -> Result<()> {
        let mut value = Some(value);
        std::future::poll_fn(|cx| {
            crate::handle::poll_feed_sink(self, cx, &mut value, |w, value| {
                w.state.encode_value_of::<M>(value)
            })
        })
        .await
    }

    /// [`feed_encoded`](Self::feed_encoded), then [`flush`](Self::flush).
    pub async fn send_encoded<M: Name>(&mut self, value: bytes::Bytes) -> Result<()> {
        self.feed_encoded::<M>(value).await?;
        self.flush().await
    }

    /// Encodes `msg` into the write buffer without building an [`Any`] first.
    pub(crate) fn poll_feed_message<M: Message + Name>(
        &mut self,
        cx: &mut Context<'_>,
        msg: &M,
    ) -> Poll<Result<()>> {
        crate::handle::poll_feed_sink(self, cx, &mut Some(msg), |w, msg| {
            w.state.encode_message(msg)
        })
    }
}

impl<W> ConnectionWriter<W> {
    /// Addresses and identity of this connection.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Changes the maximum length of frames encoded from now on (the session layer negotiates it).
    pub(crate) fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.state.set_max_frame_len(max_frame_len);
    }

    /// Appends whole frames encoded elsewhere; see [`WriteState::append_encoded`].
    pub(crate) fn append_encoded(
        &mut self,
        frames: &mut super::framed::EncodedFrames,
        count: usize,
    ) -> Result<()> {
        self.state.append_encoded(frames, count)
    }

    /// Bytes encoded but not yet written to the transport.
    pub fn buffered_len(&self) -> usize {
        self.state.buffered_len()
    }

    /// Whether `poll_ready` writes before it is ready (the buffer is at its high-water mark).
    pub(crate) fn over_high_water(&self) -> bool {
        self.state.over_high_water()
    }

    /// Frames and bytes sent so far (the received half is zero); see [`crate::metrics`].
    pub fn stats(&self) -> crate::ConnectionStats {
        let (frames_sent, bytes_sent) = self.state.counter.get();
        crate::ConnectionStats {
            frames_sent,
            bytes_sent,
            ..Default::default()
        }
    }
}

impl<W: AsyncWrite + Unpin> Sink<Any> for ConnectionWriter<W> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        this.state.poll_ready(Pin::new(&mut this.io), cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Any) -> Result<()> {
        self.get_mut().state.encode_owned(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        this.state.poll_flush(Pin::new(&mut this.io), cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        this.state.poll_close(Pin::new(&mut this.io), cx)
    }
}
