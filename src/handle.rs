//! One handle shape for every layer: what `recv`, `feed`, `send`, `flush` and `close` mean.
//!
//! A connection ([`Connection<T>`](crate::Connection)), a session
//! ([`Session`](crate::session::Session)) and a reliable stream
//! ([`ReliableStream`](crate::reliable::ReliableStream)) are used the same way:
//!
//! | | whole handle | reader half | writer half |
//! |---|---|---|---|
//! | connection | [`Connection<T>`](crate::Connection) | [`ConnectionReader<R>`](crate::ConnectionReader) | [`ConnectionWriter<W>`](crate::ConnectionWriter) |
//! | session | [`Session`](crate::session::Session) | [`SessionReader`](crate::session::SessionReader) | [`SessionWriter`](crate::session::SessionWriter) |
//! | reliable stream | [`ReliableStream`](crate::reliable::ReliableStream) | [`ReliableReader`](crate::reliable::ReliableReader) | [`ReliableWriter`](crate::reliable::ReliableWriter) |
//!
//! * Readers are a `Stream<Item = Result<Any>>` and have `recv(&mut self) ->
//!   Result<Option<Any>>` and `recv_message::<M>(&mut self) -> Result<Option<M>>`. `Ok(None)`
//!   is the clean end (the peer closed gracefully); any other end is yielded once as an error,
//!   then the stream ends. Both are cancel-safe.
//! * Writers are a `Sink<Any, Error = Error>` and have `feed(Any)`, `send(Any)`, `flush()`,
//!   `feed_message(&M)`, `send_message(&M)` and `close()`, all on `&mut self`.
//! * Whole handles are both, with the same methods, and `split()` into the two halves; the
//!   reader's `reunite(writer)` puts them back together and hands both back in a
//!   [`ReuniteError`] if they belong to different handles.
//!
//! ## What the writer methods mean, layer by layer
//!
//! `feed` **queues** a message: it waits only while the writer's queue is full (bounded
//! everywhere) and returns once the message is queued. `send` is `feed` then `flush`.
//! `*_message` packs the message as `type.googleapis.com/` + its full name first.
//!
//! | | `flush` returns once… | `close` returns once… |
//! |---|---|---|
//! | connection | everything queued is written to the transport and the transport flushed | everything queued is flushed, then the transport's write side is shut down (the peer reads a clean end after the last frame) |
//! | session | everything queued is written to the connection by the driver and flushed | everything queued is delivered, then `Close` with `REASON_CODE_NORMAL` is sent and the peer's `CloseOk` received (`close_with(code, reason)` for another code) |
//! | reliable stream | everything queued is **confirmed**: taken by the peer's application (a message the peer refused counts as settled) | everything queued is confirmed, then the stream is closed on both sides |
//!
//! Why the reliable `flush` waits for confirmation rather than for a write: a reliable stream
//! outlives its connections, so "written to the current connection" promises nothing (the
//! connection may drop the next moment and the message be retransmitted on the next). The
//! only point a caller can act on is the peer's acknowledgement.
//!
//! A writer whose layer has ended fails every call with the layer's error (`Error::Closed`
//! after a connection's `close`, `Error::Session(end)` after a session's end, `Error::Closed`
//! or `Error::Reliable(give_up)` for a reliable stream). The whole story of how an end is
//! reported, and what each "closed" means, is in [`Error`](crate::Error)'s docs.
//!
//! ## Why a macro and not extension traits
//!
//! The typed methods are written once, in the macros of this file, and expanded into each
//! handle's inherent `impl` on top of its `Stream` and `Sink` implementations. Inherent methods
//! show on every type's documentation page, need no `use` of a prelude, and their futures are
//! `Send` whenever the handle is (an extension trait would have to name a future type per
//! method, or use `async fn` in a public trait, whose futures callers cannot require to be
//! `Send`). Generic code uses the standard `Stream` and `Sink` traits, as
//! [`Dispatcher::serve`](crate::dispatch::Dispatcher::serve) does.

use std::fmt;

/// `reunite` was given halves of two different handles; here they are back (reader, writer).
pub struct ReuniteError<R, W>(pub R, pub W);

impl<R, W> fmt::Debug for ReuniteError<R, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReuniteError").finish_non_exhaustive()
    }
}

impl<R, W> fmt::Display for ReuniteError<R, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tried to reunite halves of different handles")
    }
}

impl<R, W> std::error::Error for ReuniteError<R, W> {}

/// `recv` and `recv_message` for a reader: needs `Stream<Item = Result<Any>> + Unpin` and a
/// `poll_recv_message::<M>(&mut self, cx)` of the type's own (which decodes from the received frame).
macro_rules! reader_methods {
    () => {
        /// The next message, or `Ok(None)` once the peer has closed gracefully. See the
        /// [handle shape](crate::handle).
        ///
        /// Cancel-safe: dropping the returned future loses nothing.
        pub async fn recv(&mut self) -> $crate::Result<Option<prost_types::Any>> {
            std::future::poll_fn(|cx| {
                futures_core::Stream::poll_next(std::pin::Pin::new(&mut *self), cx)
            })
            .await
            .transpose()
        }

        /// The next message unpacked as `M`, or `Ok(None)` once the peer has closed gracefully.
        ///
        /// Cancel-safe.
        ///
        /// # Errors
        /// [`Error::UnexpectedType`](crate::Error::UnexpectedType) (carrying the message) if a
        /// message of another type arrives, [`Error::Decode`](crate::Error::Decode) if its bytes
        /// are not a valid `M`, or any error of [`recv`](Self::recv).
        pub async fn recv_message<M: prost::Message + prost::Name + Default>(
            &mut self,
        ) -> $crate::Result<Option<M>> {
            std::future::poll_fn(|cx| self.poll_recv_message::<M>(cx))
                .await
                .transpose()
        }
    };
}

/// `feed`, `send`, `flush`, `close`, `feed_message` and `send_message` for a writer: needs
/// `Sink<Any, Error = Error> + Unpin` and the type's own `poll_feed(cx, &mut Option<Any>)` and
/// `poll_feed_message(cx, &M)` (see [`poll_feed_sink`]: a layer may encode in place, or queue
/// only what fits under its bounds).
macro_rules! writer_methods {
    () => {
        /// Queues `any`, waiting only while the queue is full. See the
        /// [handle shape](crate::handle) for what "queued" means on this layer.
        pub async fn feed(&mut self, any: prost_types::Any) -> $crate::Result<()> {
            let mut item = Some(any);
            std::future::poll_fn(|cx| self.poll_feed(cx, &mut item)).await
        }

        /// [`feed`](Self::feed)s `any`, then [`flush`](Self::flush)es.
        pub async fn send(&mut self, any: prost_types::Any) -> $crate::Result<()> {
            self.feed(any).await?;
            self.flush().await
        }

        /// Queues `msg` packed in an `Any`.
        ///
        /// # Errors
        /// [`Error::FrameTooLarge`](crate::Error::FrameTooLarge) if it is longer than the
        /// maximum frame length (nothing is sent and the writer stays usable), or the layer's
        /// error once it has ended.
        pub async fn feed_message<M: prost::Message + prost::Name>(
            &mut self,
            msg: &M,
        ) -> $crate::Result<()> {
            std::future::poll_fn(|cx| self.poll_feed_message(cx, msg)).await
        }

        /// [`feed_message`](Self::feed_message), then [`flush`](Self::flush).
        pub async fn send_message<M: prost::Message + prost::Name>(
            &mut self,
            msg: &M,
        ) -> $crate::Result<()> {
            self.feed_message(msg).await?;
            self.flush().await
        }

        /// Waits until everything queued has gone out; what "out" means per layer is in the
        /// [handle shape](crate::handle).
        pub async fn flush(&mut self) -> $crate::Result<()> {
            std::future::poll_fn(|cx| {
                futures_sink::Sink::poll_flush(std::pin::Pin::new(&mut *self), cx)
            })
            .await
        }

        /// Ends this side's sending gracefully after everything queued; see the
        /// [handle shape](crate::handle).
        pub async fn close(&mut self) -> $crate::Result<()> {
            std::future::poll_fn(|cx| {
                futures_sink::Sink::poll_close(std::pin::Pin::new(&mut *self), cx)
            })
            .await
        }
    };
}

/// `Stream` for a whole handle, `Sink` for it, and `reader_methods` + `writer_methods`, all
/// forwarded to its `reader` and `writer` fields.
macro_rules! whole_handle {
    ([$($generics:tt)*] $handle:ty) => {
        impl<$($generics)*> futures_core::Stream for $handle {
            type Item = $crate::Result<prost_types::Any>;

            fn poll_next(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Self::Item>> {
                std::pin::Pin::new(&mut self.get_mut().reader).poll_next(cx)
            }
        }

        impl<$($generics)*> futures_sink::Sink<prost_types::Any> for $handle {
            type Error = $crate::Error;

            fn poll_ready(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<$crate::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().writer).poll_ready(cx)
            }

            fn start_send(
                self: std::pin::Pin<&mut Self>,
                item: prost_types::Any,
            ) -> $crate::Result<()> {
                std::pin::Pin::new(&mut self.get_mut().writer).start_send(item)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<$crate::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().writer).poll_flush(cx)
            }

            fn poll_close(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<$crate::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().writer).poll_close(cx)
            }
        }

        impl<$($generics)*> $handle {
            $crate::handle::reader_methods!();
            $crate::handle::writer_methods!();

            fn poll_recv_message<M: prost::Message + prost::Name + Default>(
                &mut self,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<$crate::Result<M>>> {
                self.reader.poll_recv_message(cx)
            }

            fn poll_feed(
                &mut self,
                cx: &mut std::task::Context<'_>,
                item: &mut Option<prost_types::Any>,
            ) -> std::task::Poll<$crate::Result<()>> {
                self.writer.poll_feed(cx, item)
            }

            fn poll_feed_message<M: prost::Message + prost::Name>(
                &mut self,
                cx: &mut std::task::Context<'_>,
                msg: &M,
            ) -> std::task::Poll<$crate::Result<()>> {
                self.writer.poll_feed_message(cx, msg)
            }
        }
    };
}

pub(crate) use {reader_methods, whole_handle, writer_methods};

/// `poll_feed` for writers whose `Sink` takes any message once `poll_ready`: waits for
/// `poll_ready`, then hands `item` (taken, so it is fed once) to `start_send` through `send`.
pub(crate) fn poll_feed_sink<S, T>(
    writer: &mut S,
    cx: &mut std::task::Context<'_>,
    item: &mut Option<T>,
    send: impl FnOnce(&mut S, T) -> crate::Result<()>,
) -> std::task::Poll<crate::Result<()>>
where
    S: futures_sink::Sink<prost_types::Any, Error = crate::Error> + Unpin,
{
    std::task::ready!(std::pin::Pin::new(&mut *writer).poll_ready(cx))?;
    match item.take() {
        Some(item) => std::task::Poll::Ready(send(writer, item)),
        None => std::task::Poll::Ready(Ok(())),
    }
}
