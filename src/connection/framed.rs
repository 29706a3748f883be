//! The only code that moves frames between the codec's buffers and an `AsyncRead`/`AsyncWrite`.
//!
//! [`ReadState`] and [`WriteState`] own the buffers and the codec; the reader, writer and
//! connection types hold one of each next to their I/O object and call into them.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use futures_io::{AsyncRead, AsyncWrite};
use prost::{Message, Name};
use prost_types::Any;

use crate::codec::Codec;
use crate::error::{Error, Result};

/// How much is read from the socket at most per call. Large enough that big frames take few
/// system calls; the codec reserves the rest of an announced frame separately.
const READ_CHUNK: usize = 64 * 1024;

/// Receiving side: bytes read so far and the codec that cuts them into frames.
#[derive(Debug)]
pub(crate) struct ReadState {
    codec: Codec,
    buf: BytesMut,
    /// Set once the stream has ended (cleanly or with an error); nothing is read after that.
    finished: bool,
}

impl ReadState {
    pub(crate) fn new(codec: Codec) -> Self {
        Self {
            codec,
            buf: BytesMut::new(),
            finished: false,
        }
    }

    /// Next frame, reading from `io` as needed. `None` after a clean end of stream (EOF between
    /// frames); an error ends the stream too, and it yields `None` from then on.
    pub(crate) fn poll_next<R: AsyncRead + ?Sized>(
        &mut self,
        mut io: Pin<&mut R>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Any>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(any)) => return Poll::Ready(Some(Ok(any))),
                Ok(None) => {}
                Err(e) => return self.finish(Some(e)),
            }
            match ready!(self.poll_fill(io.as_mut(), cx)) {
                Ok(0) if self.buf.is_empty() => return self.finish(None),
                Ok(0) => {
                    let buffered = self.buf.len();
                    return self.finish(Some(Error::Truncated { buffered }));
                }
                Ok(_) => {}
                Err(e) => return self.finish(Some(e.into())),
            }
        }
    }

    fn finish(&mut self, error: Option<Error>) -> Poll<Option<Result<Any>>> {
        self.finished = true;
        self.buf = BytesMut::new();
        Poll::Ready(error.map(Err))
    }

    /// Reads once from `io` into the spare capacity of the buffer.
    fn poll_fill<R: AsyncRead + ?Sized>(
        &mut self,
        mut io: Pin<&mut R>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let len = self.buf.len();
        // `decode` has reserved room for the rest of a partly received frame; read into at most
        // READ_CHUNK of it so the zero-filling below stays proportional to what is read.
        let spare = (self.buf.capacity() - len).clamp(READ_CHUNK / 8, READ_CHUNK);
        self.buf.resize(len + spare, 0);
        let result = loop {
            match io.as_mut().poll_read(cx, &mut self.buf[len..]) {
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let read = match &result {
            Poll::Ready(Ok(n)) => *n,
            _ => 0,
        };
        self.buf.truncate(len + read);
        result
    }

    /// Changes the maximum frame length for frames not yet decoded (sessions negotiate it).
    pub(crate) fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.codec = Codec::with_max_frame_len(max_frame_len);
    }

    /// Bytes received but not yet returned as frames (carried over by `reunite`).
    pub(crate) fn buffered_len(&self) -> usize {
        self.buf.len()
    }
}

/// Sending side: encoded frames not yet written, and the codec that encodes them.
#[derive(Debug)]
pub(crate) struct WriteState {
    codec: Codec,
    buf: BytesMut,
    /// Above this many buffered bytes, `poll_ready` writes before accepting more.
    high_water: usize,
    /// Set after `poll_close` completes or a write fails; no frame is accepted after that.
    closed: bool,
}

impl WriteState {
    pub(crate) fn new(codec: Codec, high_water: usize) -> Self {
        Self {
            codec,
            buf: BytesMut::new(),
            high_water,
            closed: false,
        }
    }

    /// Ready for another frame once the buffer is under the high-water mark. Writes (without
    /// flushing) to get there, so a fast producer is slowed to the socket's pace.
    pub(crate) fn poll_ready<W: AsyncWrite + ?Sized>(
        &mut self,
        io: Pin<&mut W>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<()>> {
        if self.closed {
            return Poll::Ready(Err(Error::Closed));
        }
        if self.buf.len() >= self.high_water {
            ready!(self.poll_write_buf(io, cx))?;
        }
        Poll::Ready(Ok(()))
    }

    pub(crate) fn encode(&mut self, any: &Any) -> Result<()> {
        if self.closed {
            return Err(Error::Closed);
        }
        self.codec.encode(any, &mut self.buf)
    }

    pub(crate) fn encode_message<M: Message + Name>(&mut self, msg: &M) -> Result<()> {
        if self.closed {
            return Err(Error::Closed);
        }
        self.codec.encode_message(msg, &mut self.buf)
    }

    /// Writes everything buffered, then flushes `io`.
    pub(crate) fn poll_flush<W: AsyncWrite + ?Sized>(
        &mut self,
        mut io: Pin<&mut W>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<()>> {
        ready!(self.poll_write_buf(io.as_mut(), cx))?;
        Poll::Ready(ready!(io.poll_flush(cx)).map_err(|e| self.fail(e)))
    }

    /// Flushes, then shuts the write side of `io` down.
    pub(crate) fn poll_close<W: AsyncWrite + ?Sized>(
        &mut self,
        mut io: Pin<&mut W>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<()>> {
        if !self.closed {
            ready!(self.poll_flush(io.as_mut(), cx))?;
        }
        let result = ready!(io.poll_close(cx));
        self.closed = true;
        Poll::Ready(result.map_err(Error::from))
    }

    /// Writes until the buffer is empty. A short write keeps the rest for the next call. A write
    /// of zero bytes (the transport can take no more) is an error, as is any I/O error; either
    /// closes the writer.
    fn poll_write_buf<W: AsyncWrite + ?Sized>(
        &mut self,
        mut io: Pin<&mut W>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<()>> {
        while !self.buf.is_empty() {
            match ready!(io.as_mut().poll_write(cx, &self.buf)) {
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "transport accepted no bytes");
                    return Poll::Ready(Err(self.fail(e)));
                }
                Ok(n) => self.buf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(self.fail(e))),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Closes the writer after a failed I/O operation: what was buffered can no longer be
    /// delivered in order, so it is dropped and later sends fail with [`Error::Closed`].
    fn fail(&mut self, e: io::Error) -> Error {
        self.closed = true;
        self.buf = BytesMut::new();
        e.into()
    }

    /// Changes the maximum frame length for frames encoded from now on.
    pub(crate) fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.codec = Codec::with_max_frame_len(max_frame_len);
    }

    /// Bytes encoded but not yet written.
    pub(crate) fn buffered_len(&self) -> usize {
        self.buf.len()
    }
}
