//! [`ReadHalf`] and [`WriteHalf`]: the two halves of a byte stream under a split
//! [`Connection`](crate::Connection).
//!
//! They wrap `futures-util`'s split (a two-party lock, uncontended in practice: one task reads,
//! another writes) behind types of our own, so no type of another crate's is part of the API.

use std::io::{self, IoSlice, IoSliceMut};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_io::{AsyncRead, AsyncWrite};
use futures_util::AsyncReadExt;

/// The reading half of a byte stream `T`, under a [`ConnectionReader`](crate::ConnectionReader).
#[derive(Debug)]
pub struct ReadHalf<T>(futures_util::io::ReadHalf<T>);

/// The writing half of a byte stream `T`, under a [`ConnectionWriter`](crate::ConnectionWriter).
#[derive(Debug)]
pub struct WriteHalf<T>(futures_util::io::WriteHalf<T>);

pub(super) fn split<T: AsyncRead + AsyncWrite>(io: T) -> (ReadHalf<T>, WriteHalf<T>) {
    let (read, write) = io.split();
    (ReadHalf(read), WriteHalf(write))
}

impl<T> ReadHalf<T> {
    /// Whether `write` was split from the same stream as this half.
    pub fn is_pair_of(&self, write: &WriteHalf<T>) -> bool {
        self.0.is_pair_of(&write.0)
    }
}

impl<T: Unpin> ReadHalf<T> {
    /// The stream again, if `write` is its other half; both halves back otherwise.
    pub(super) fn reunite(self, write: WriteHalf<T>) -> Result<T, (Self, WriteHalf<T>)> {
        self.0
            .reunite(write.0)
            .map_err(|e| (ReadHalf(e.0), WriteHalf(e.1)))
    }
}

impl<T: AsyncRead> AsyncRead for ReadHalf<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }

    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read_vectored(cx, bufs)
    }
}

impl<T: AsyncWrite> AsyncWrite for WriteHalf<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}
