//! Reliable delivery on top of [sessions](crate::session): bounded queues with backpressure,
//! delivery confirmations, and reconnection with resumption without loss or duplicates.
//!
//! A [`ReliableStream`] is a *stream* of messages in each direction that outlives any one
//! connection. The connecting side ([`client`]) owns a connector (any closure returning a fresh
//! [`Connection`](crate::Connection)) and reconnects by itself, with exponential backoff and jitter, whenever the
//! connection drops; the accepting side ([`ReliableServer`]) keeps a detached stream for a
//! bounded time, for the client to resume. On every (re)connection the two sides tell each other
//! how many messages they have received, each retransmits what the other is missing, and
//! nothing is delivered twice.
//!
//! ```text
//!  application ── feed ──► outgoing queue (bounded: messages and bytes; feed waits when full;
//!                             │  flush waits until everything queued is confirmed)
//!                             │ written on the current link, kept until the peer's Ack
//!                             ▼
//!                           session (Hello/Welcome with capability "connect.reliable.v1",
//!                             │       then Resume both ways, then messages, Ack, Nack)
//!                             ▼
//!  application ◄── recv ── inbound queue (bounded: the link stops reading when it is full,
//!                           so TCP flow control pushes back on the sender)
//! ```
//!
//! Messages carry no header on the wire: each side numbers them implicitly by count, and the
//! receiver sends a cumulative [`Ack`](crate::proto::reliable::Ack) every
//! [`ack_every`](ReliableConfig::with_ack_every) messages its application has taken, once half
//! its receive window (in messages or bytes) is taken, as soon as its application has taken
//! everything that arrived and nothing more is readable, before it closes, or at the latest
//! after [`ack_delay`](ReliableConfig::with_ack_delay). `proto/PROTOCOL.md` section 10
//! specifies it.
//!
//! ## How the files fit
//!
//! `state.rs` is the protocol of one stream, sans-IO like [`session`](crate::session)'s
//! state: numbering, the peer's window, retransmission, cumulative `Ack`s, `Nack`s and the one
//! `resume` both sides call. It takes input as method calls (including the time, for the
//! acknowledgement delay) and hands out the next frame to write and what happened to the
//! messages sent; a deterministic test steps two of them by hand. `shared.rs` wraps it for
//! the tasks that share it (the application's handles and the current link): the lock's
//! contents, wakers, confirmation senders and lifecycle events. `outgoing.rs` is how our
//! messages are held: encoded once when fed (typed messages into a buffer many of them share)
//! and written as they are on every link; the peer's are held as the session received them
//! (slices of its read buffer), so `recv_message` decodes straight from them. `link.rs` moves
//! frames between a session and the shared state; `client.rs` (connecting and reconnecting) and
//! `server.rs` (the `Resume` exchange and the table of streams, which sweeps expired ones
//! itself) decide which link carries a stream; this file holds the handles.
//!
//! ## Guarantees
//!
//! * While both processes live, every message sent is delivered to the peer's application
//!   exactly once and in order, across any number of dropped connections.
//! * A confirmed message ([`ReliableWriter::send_confirmed`]) has been taken by the peer's
//!   application (or refused by it: [`DeliveryError::Refused`]).
//! * If the accepting process dies, the client's next connection starts a new stream
//!   ([`Event::Connected`] with `new_stream: true` after a first connection): unconfirmed
//!   messages are sent again, so the dead process may have received some of them, i.e. they are
//!   delivered *at least once*; that includes messages the dead process had received but its
//!   application had not taken (they were not acknowledged). What is lost is what a process
//!   that dies had queued to send (for a server: its replies).
//! * A close completes once even if its connection is cut: the server remembers a closed
//!   stream for its resume timeout and answers a late resume "closed"; a close never opens a
//!   new stream.
//!
//! ## Bounds
//!
//! Everything a peer can make a stream hold is bounded: the outgoing and inbound queues (above),
//! the refusals retained for the peer (1024 `Nack`s, 64 KiB; the link stops reading while 64
//! are unsent), the lifecycle events per reader (256), and on the accepting side the streams
//! kept and the closed streams remembered (`max_streams` each, swept on every accept and when a
//! detached stream's resume timeout passes). A server answers a stream it will not carry with
//! an explicit `Resume` status (`BUSY`, `REFUSED`, `CLOSED`), never by just dropping the link.
//!
//! ## Example
//!
//! ```no_run
//! # async_std::task::block_on(async {
//! use connect::proto::example::HelloWorld;
//! use connect::reliable::{ReliableConfig, ReliableServer};
//! use connect::session::SessionConfig;
//! use connect::transport::tcp::{self, TcpListener};
//!
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let server = ReliableServer::new(SessionConfig::new(), ReliableConfig::new());
//! async_std::task::spawn(async move {
//!     loop {
//!         let conn = listener.accept().await?;
//!         let server = server.clone();
//!         async_std::task::spawn(async move {
//!             let Ok(accepted) = server.accept(conn).await else { return };
//!             match accepted {
//!                 connect::reliable::Accepted::NewStream { mut stream, driver } => {
//!                     async_std::task::spawn(async move {
//!                         while let Ok(Some(any)) = stream.recv().await {
//!                             if stream.feed(any).await.is_err() { break; }
//!                         }
//!                     });
//!                     driver.await;
//!                 }
//!                 connect::reliable::Accepted::Resumed { driver } => driver.await,
//!                 _ => {}
//!             }
//!         });
//!     }
//!     #[allow(unreachable_code)]
//!     Ok::<(), connect::Error>(())
//! });
//!
//! // The driver runs where `spawn` puts it (here: on an async-std task).
//! let spawn = |task| {
//!     async_std::task::spawn(task);
//! };
//! let mut stream = tcp::connect_reliable(addr, SessionConfig::new(), ReliableConfig::new(), spawn);
//! let hello = HelloWorld { text: "hi".into(), sequence: 1 };
//! stream.send_confirmed(connect::prost_types::Any::from_msg(&hello)?).await?;
//! let echoed = stream.recv().await?;
//! stream.close().await?;
//! # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
//! ```

mod client;
mod give_up;
mod link;
mod outgoing;
mod server;
mod shared;
mod state;

use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_channel::oneshot;
use futures_core::Stream;
use prost::{Message, Name};
use prost_types::Any;

use self::outgoing::TypeUrlLen;
use self::shared::{Shared, StreamEnd};
use crate::connection::{Frame, NameCache};
use crate::error::{Error, Result};
use crate::handle::ReuniteError;
pub use crate::proto::reliable::NackReason;
use futures_sink::Sink;

pub use client::{client, Backoff, ClientDriver};
pub use give_up::GiveUp;
pub use server::{Accepted, ReliableServer, ServerDriver};

/// The session capability that turns reliable delivery on (`Hello.capabilities`).
pub const CAPABILITY: &str = "connect.reliable.v1";

/// Decides which received message types the application accepts; the others are refused with a
/// [`Nack`](crate::proto::reliable::Nack). Takes the type URL.
pub type Accepts = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Settings of a reliable stream (either side).
///
/// ```
/// use connect::reliable::ReliableConfig;
///
/// let config = ReliableConfig::new().with_max_messages(1000).with_max_bytes(1 << 20);
/// assert_eq!(config.max_messages(), 1000);
/// ```
#[derive(Clone)]
pub struct ReliableConfig {
    max_messages: usize,
    max_bytes: usize,
    receive_messages: usize,
    receive_bytes: usize,
    ack_every: u64,
    ack_delay: Duration,
    ack_when_caught_up: bool,
    resume_timeout: Duration,
    max_streams: usize,
    backoff: Backoff,
    accepts: Option<Accepts>,
}

impl fmt::Debug for ReliableConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReliableConfig")
            .field("max_messages", &self.max_messages)
            .field("max_bytes", &self.max_bytes)
            .field("receive_messages", &self.receive_messages)
            .field("receive_bytes", &self.receive_bytes)
            .field("ack_every", &self.ack_every)
            .field("ack_delay", &self.ack_delay)
            .field("ack_when_caught_up", &self.ack_when_caught_up)
            .field("resume_timeout", &self.resume_timeout)
            .field("max_streams", &self.max_streams)
            .field("backoff", &self.backoff)
            .field("accepts", &self.accepts.is_some())
            .finish()
    }
}

impl Default for ReliableConfig {
    fn default() -> Self {
        Self {
            max_messages: 4096,
            max_bytes: 4 * 1024 * 1024,
            receive_messages: 1024,
            receive_bytes: 4 * 1024 * 1024,
            ack_every: 64,
            ack_delay: Duration::from_millis(10),
            ack_when_caught_up: true,
            resume_timeout: Duration::from_secs(60),
            max_streams: 1024,
            backoff: Backoff::default(),
            accepts: None,
        }
    }
}

impl ReliableConfig {
    /// Defaults: 4096 messages / 4 MiB outgoing (queued plus unconfirmed), 1024 messages /
    /// 4 MiB received and not yet taken, an `Ack` every 64 messages or after 10 ms, detached
    /// streams kept 60 s (at most 1024 of them), [`Backoff::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// High-water mark of outgoing messages (queued plus sent but unconfirmed).
    pub fn with_max_messages(mut self, messages: usize) -> Self {
        self.max_messages = messages.max(1);
        self
    }

    /// High-water mark of outgoing bytes (type URL plus value of each message); one message
    /// always fits in an empty queue.
    pub fn with_max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Bounds of received messages waiting for the application; beyond them the link stops
    /// reading from the connection.
    pub fn with_receive_buffer(mut self, messages: usize, bytes: usize) -> Self {
        self.receive_messages = messages.max(1);
        self.receive_bytes = bytes;
        self
    }

    /// Send an `Ack` once the application has taken this many messages since the last one.
    /// An `Ack` also goes out whenever half the receive window
    /// ([`with_receive_buffer`](Self::with_receive_buffer)), in messages or bytes, is taken
    /// and not acknowledged, so a value above the window never stalls the sender.
    pub fn with_ack_every(mut self, messages: u64) -> Self {
        self.ack_every = messages.max(1);
        self
    }

    /// Send an `Ack` at most this long after the application took a message. The delay
    /// only matters while the link still has messages to read: once the application has taken
    /// everything that arrived and nothing more is readable, the `Ack` goes out at once.
    pub fn with_ack_delay(mut self, delay: Duration) -> Self {
        self.ack_delay = delay;
        self
    }

    /// Whether an `Ack` goes out at once when the application has taken everything that
    /// arrived and nothing more is readable (default: yes, so a `send` that waits for its
    /// confirmation never waits for the delay). Off, only `ack_every`, half the receive
    /// window, a close and the delay send one: for tests that need a peer that confirms late.
    pub fn with_ack_when_caught_up(mut self, on: bool) -> Self {
        self.ack_when_caught_up = on;
        self
    }

    /// Accepting side: how long a stream whose connection dropped is kept for resumption.
    pub fn with_resume_timeout(mut self, timeout: Duration) -> Self {
        self.resume_timeout = timeout;
        self
    }

    /// Accepting side: how many streams are kept at most; when full, the longest-detached one
    /// is dropped, and if none is detached a new client is refused.
    pub fn with_max_streams(mut self, streams: usize) -> Self {
        self.max_streams = streams.max(1);
        self
    }

    /// Connecting side: how to wait between reconnection attempts.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Refuse received messages whose type URL `accepts` rejects, with a
    /// [`Nack`](crate::proto::reliable::Nack) of reason `NACK_REASON_UNKNOWN_TYPE` instead of
    /// delivering them; e.g. with a [`Dispatcher`](crate::dispatch::Dispatcher):
    /// `config.with_accepts(Arc::new(move |url: &str| dispatcher.handles(url)))`.
    pub fn with_accepts(mut self, accepts: Accepts) -> Self {
        self.accepts = Some(accepts);
        self
    }

    /// The outgoing high-water mark in messages.
    pub fn max_messages(&self) -> usize {
        self.max_messages
    }

    /// The outgoing high-water mark in bytes.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }
}

/// A lifecycle event of a reliable stream (see [`ReliableStream::next_event`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A connection carries a new stream. `new_stream` after the first connection means the
    /// peer had lost the stream (e.g. it restarted): unconfirmed messages (`retransmitted`)
    /// are sent again from the start of the new stream.
    Connected {
        /// The session's id.
        session_id: String,
        /// Whether a previous stream was lost by the peer.
        new_stream: bool,
        /// Messages sent again.
        retransmitted: u64,
    },
    /// A connection resumed the stream.
    Resumed {
        /// The new session's id.
        session_id: String,
        /// Messages sent again (sent before but not received by the peer).
        retransmitted: u64,
    },
    /// The connection dropped; the stream waits for the next one.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// The client waits `delay` before connection attempt `attempt` (counted from 1 since the
    /// last successful connection).
    Reconnecting {
        /// The attempt about to be made.
        attempt: u32,
        /// How long it waits first.
        delay: Duration,
    },
    /// The stream is over: closed gracefully (`reason: None`), or given up.
    Closed {
        /// Why it was given up, if it was.
        reason: Option<GiveUp>,
    },
}

/// Why a message was not confirmed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The peer's application refused the message.
    #[error("refused by the peer ({}): {text}", .reason.as_str_name())]
    Refused {
        /// The peer's reason code.
        reason: NackReason,
        /// The peer's explanation (escaped, and capped at about 100 bytes).
        text: String,
    },
    /// The stream ended before the message was confirmed (with why, unless closed
    /// gracefully).
    #[error("stream ended before confirmation{}", .0.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed(Option<GiveUp>),
}

/// [`ReliableWriter::try_send`] failed; the message is handed back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrySendError {
    /// The outgoing queue is at its high-water mark.
    #[error("outgoing queue full")]
    Full(Any),
    /// The stream is closed or closing.
    #[error("stream closed")]
    Closed(Any),
}

impl TrySendError {
    /// The message that was not sent.
    pub fn into_inner(self) -> Any {
        match self {
            Self::Full(any) | Self::Closed(any) => any,
        }
    }
}

/// A snapshot of a stream's queues and counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Outgoing messages held: queued plus sent but not yet confirmed.
    pub outgoing_messages: usize,
    /// Their bytes (type URL plus value), the quantity bounded by
    /// [`with_max_bytes`](ReliableConfig::with_max_bytes).
    pub outgoing_bytes: usize,
    /// Received messages waiting for the application.
    pub inbound_messages: usize,
    /// Their bytes.
    pub inbound_bytes: usize,
    /// Distinct messages written to a connection at least once (a retransmission is not
    /// counted again; see `retransmitted`). Never decreases.
    pub sent: u64,
    /// Messages confirmed by the peer.
    pub confirmed: u64,
    /// Messages sent again after a reconnection.
    pub retransmitted: u64,
    /// Messages the peer refused.
    pub refused: u64,
    /// Connections that have carried the stream.
    pub connections: u64,
    /// Connections after the first (`connections - 1`, or 0).
    pub reconnects: u64,
    /// Times the stream was resumed on a new connection (both sides agreed where it was).
    pub resumes: u64,
    /// Whether a connection carries the stream now.
    pub connected: bool,
    /// Refusals (`Nack`s) of the peer's messages kept until the peer is known to have seen
    /// them; bounded (1024).
    pub retained_nacks: usize,
    /// Their bytes; bounded (64 KiB plus one unsent batch).
    pub retained_nack_bytes: usize,
}

#[derive(Debug)]
struct Inner {
    core: Mutex<Shared>,
    /// Readers and writers the application holds; when the last is dropped the stream closes
    /// (after delivering what was queued).
    handles: AtomicUsize,
}

impl Inner {
    fn new(config: ReliableConfig) -> Arc<Self> {
        Arc::new(Self {
            core: Mutex::new(Shared::new(config)),
            handles: AtomicUsize::new(0),
        })
    }

    fn acquire(self: &Arc<Self>) -> Arc<Self> {
        self.handles.fetch_add(1, Ordering::AcqRel);
        self.clone()
    }

    fn release(&self) {
        if self.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            log::debug!("reliable stream: dropped by the application; closing");
            self.lock().request_close();
        }
    }

    fn lock(&self) -> CoreGuard<'_> {
        CoreGuard(Some(self.core.lock().unwrap_or_else(|e| e.into_inner())))
    }
}

/// The core's lock; on release it wakes the tasks the core asked to wake, after unlocking (a
/// woken task that polls at once then does not block on the lock, and a waker that locks
/// again does not deadlock).
struct CoreGuard<'a>(Option<MutexGuard<'a, Shared>>);

impl std::ops::Deref for CoreGuard<'_> {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        self.0
            .as_deref()
            .unwrap_or_else(|| unreachable!("taken only in drop"))
    }
}

impl std::ops::DerefMut for CoreGuard<'_> {
    fn deref_mut(&mut self) -> &mut Shared {
        self.0
            .as_deref_mut()
            .unwrap_or_else(|| unreachable!("taken only in drop"))
    }
}

impl Drop for CoreGuard<'_> {
    fn drop(&mut self) {
        if let Some(mut guard) = self.0.take() {
            let wakers = guard.take_wakers();
            drop(guard);
            wakers.wake();
        }
    }
}

/// A peer-supplied string fit for a log line or an error text: escaped (no control characters
/// or line breaks) and capped at about [`state::MAX_QUOTED`] bytes.
pub(crate) fn quoted(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.char_indices() {
        if out.len() >= state::MAX_QUOTED {
            out.push_str(&format!("... ({} bytes)", s.len() - i));
            break;
        }
        out.extend(c.escape_debug());
    }
    out
}

fn end_error(end: &StreamEnd) -> Error {
    match end {
        StreamEnd::Closed => Error::Closed,
        StreamEnd::Failed(why) => Error::Reliable(why.clone()),
    }
}

/// Receives a reliable stream's messages: a [`Stream`] of `Result<Any>`.
///
/// The stream ends with `None` once the reliable stream has closed gracefully (either side
/// closed, after every message was confirmed). If it was given up (reconnection attempts
/// exhausted, the peer does not support reliable delivery, a detached stream expired, ...),
/// [`Error::Reliable`] is yielded once, then the stream ends.
#[derive(Debug)]
pub struct ReliableReader {
    inner: Arc<Inner>,
    /// Full name of the last message type received with `recv_message`.
    names: NameCache,
    finished: bool,
}

impl ReliableReader {
    crate::handle::reader_methods!();

    /// Decodes straight from the received frame (a slice of the session's read buffer), as
    /// [`SessionReader::recv_message`](crate::session::SessionReader::recv_message) does:
    /// fields of type [`bytes::Bytes`] take their bytes without a copy.
    pub(crate) fn poll_recv_message<M: Message + Name + Default>(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<M>>> {
        let frame = match std::task::ready!(self.poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            None => return Poll::Ready(None),
        };
        if !matches!(
            self.names.is_url_of(frame.type_url_bytes(), M::full_name),
            Ok(true)
        ) {
            return Poll::Ready(Some(Err(Error::UnexpectedType {
                expected: M::full_name(),
                any: Box::new(frame.into_any()),
            })));
        }
        Poll::Ready(Some(M::decode(frame.into_value()).map_err(|source| {
            Error::Decode {
                type_name: M::full_name(),
                source,
            }
        })))
    }

    /// The next received message as the session received it, or the stream's end.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let mut core = self.inner.lock();
        if let Some(frame) = core.pop_inbound(cx.waker()) {
            return Poll::Ready(Some(Ok(frame)));
        }
        let end = core.end().cloned();
        drop(core);
        match end {
            None => Poll::Pending,
            Some(end) => {
                self.finished = true;
                match end {
                    StreamEnd::Closed => Poll::Ready(None),
                    failed => Poll::Ready(Some(Err(end_error(&failed)))),
                }
            }
        }
    }

    /// Puts the two halves of a [`ReliableStream`] back together.
    ///
    /// # Errors
    /// If the halves come from different streams, both are handed back unchanged.
    #[allow(clippy::result_large_err)]
    pub fn reunite(
        self,
        writer: ReliableWriter,
    ) -> Result<ReliableStream, ReuniteError<Self, ReliableWriter>> {
        if Arc::ptr_eq(&self.inner, &writer.inner) {
            Ok(ReliableStream {
                reader: self,
                writer,
            })
        } else {
            Err(ReuniteError(self, writer))
        }
    }
}

impl Stream for ReliableReader {
    type Item = Result<Any>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_frame(cx)
            .map(|next| next.map(|frame| frame.map(Frame::into_any)))
    }
}

/// Sends on a reliable stream: a [`Sink`] of [`Any`]. Cheap to clone: every clone feeds the
/// same outgoing queue.
///
/// `feed` waits until the message fits under the outgoing queue's high-water marks (messages
/// and bytes, see [`ReliableConfig::with_max_messages`]; one message always fits in an empty
/// queue). Through the [`Sink`] trait (`poll_ready`, then `start_send` with a message of any
/// size) a message is queued whole once the queue is under its marks, so there the queue may
/// pass its byte mark by one message per writer. [`flush`](Self::flush)
/// waits until everything queued is **confirmed** by the peer (see the
/// [handle shape](crate::handle)); [`send_confirmed`](Self::send_confirmed) waits for one
/// message and reports a refusal. [`close`](Self::close) waits until everything is confirmed,
/// then closes the stream on both sides.
///
/// # Errors
/// [`Error::Closed`] or [`Error::Reliable`] once the stream is closing or over.
#[derive(Debug)]
pub struct ReliableWriter {
    inner: Arc<Inner>,
    /// The type URL length of the last message type fed with `feed_message`.
    type_url_len: TypeUrlLen,
}

impl Clone for ReliableWriter {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.acquire(),
            type_url_len: TypeUrlLen::default(),
        }
    }
}

impl Drop for ReliableWriter {
    fn drop(&mut self) {
        self.inner.release();
    }
}

impl Drop for ReliableReader {
    fn drop(&mut self) {
        self.inner.release();
    }
}

impl ReliableWriter {
    crate::handle::writer_methods!();

    /// Queues `item` once it fits under the high-water marks (unlike the `Sink` path, which
    /// queues a message whole once the queue is under them).
    pub(crate) fn poll_feed(
        &mut self,
        cx: &mut Context<'_>,
        item: &mut Option<Any>,
    ) -> Poll<Result<()>> {
        let Some(any) = item.take() else {
            return Poll::Ready(Ok(()));
        };
        let mut core = self.inner.lock();
        match core.try_push(any) {
            Ok(_) => Poll::Ready(Ok(())),
            Err(TrySendError::Full(any)) => {
                core.register_send(cx.waker());
                *item = Some(any);
                Poll::Pending
            }
            Err(TrySendError::Closed(_)) => Poll::Ready(Err(closed_error(&core))),
        }
    }

    /// Queues `msg` encoded once (see `outgoing.rs`), once it fits under the high-water marks:
    /// no `Any` is built. A small message is encoded under the lock into a buffer shared with
    /// the messages before it; a large one outside the lock, in room reserved for it.
    pub(crate) fn poll_feed_message<M: Message + Name>(
        &mut self,
        cx: &mut Context<'_>,
        msg: &M,
    ) -> Poll<Result<()>> {
        let type_url_len = self.type_url_len.of::<M>();
        let value_len = msg.encoded_len();
        let len = type_url_len + value_len;
        let mut core = self.inner.lock();
        if core.closed_for_sending() {
            return Poll::Ready(Err(closed_error(&core)));
        }
        if !core.fits(len) {
            core.register_send(cx.waker());
            return Poll::Pending;
        }
        if len <= outgoing::SMALL {
            core.push_small(msg, type_url_len, value_len);
            return Poll::Ready(Ok(()));
        }
        core.reserve(len);
        drop(core);
        let message = outgoing::encode_large(msg, type_url_len, value_len);
        let mut core = self.inner.lock();
        match core.push_reserved(message) {
            Ok(_) => Poll::Ready(Ok(())),
            Err(()) => Poll::Ready(Err(closed_error(&core))),
        }
    }

    /// Queues `any` if there is room now; otherwise hands it back in
    /// [`TrySendError::Full`].
    pub fn try_send(&mut self, any: Any) -> Result<(), TrySendError> {
        self.inner.lock().try_push(any).map(|_| ())
    }

    /// Sends `any` and waits until the peer's application has taken it.
    ///
    /// # Errors
    /// [`Error::Delivery`] with [`DeliveryError::Refused`] if the peer refused it, or
    /// [`DeliveryError::Closed`] if the stream ended first; the errors of
    /// [`feed`](Self::feed).
    pub async fn send_confirmed(&mut self, any: Any) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let mut confirm = Some(tx);
        let mut slot = Some(any);
        poll_fn(|cx| {
            let Some(any) = slot.take() else {
                return Poll::Ready(Err(Error::Closed));
            };
            let mut core = self.inner.lock();
            match core.try_push(any) {
                Ok(seq) => {
                    // Registered under the same lock, so no refusal can slip in between.
                    if let Some(tx) = confirm.take() {
                        core.confirm_on(seq, tx);
                    }
                    Poll::Ready(Ok(()))
                }
                Err(TrySendError::Full(any)) => {
                    core.register_send(cx.waker());
                    slot = Some(any);
                    Poll::Pending
                }
                Err(TrySendError::Closed(_)) => Poll::Ready(Err(closed_error(&core))),
            }
        })
        .await?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Delivery(e)),
            Err(_) => Err(Error::Delivery(DeliveryError::Closed(None))),
        }
    }

    /// Queues and counters; `outgoing_bytes` is what the high-water mark bounds.
    pub fn stats(&self) -> Stats {
        stats(&self.inner)
    }
}

/// The stream's end as an error, or the error for a stream that is closing.
fn closed_error(core: &Shared) -> Error {
    core.end().map_or(Error::Closed, end_error)
}

/// Queues `any` after `poll_ready` found the queue under its high-water mark.
fn push(core: &mut Shared, any: Any) -> Result<u64> {
    match core.push_over_mark(any) {
        Ok(seq) => Ok(seq),
        Err(_) => Err(closed_error(core)),
    }
}

impl Sink<Any> for ReliableWriter {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut core = self.inner.lock();
        if core.end().is_some() || core.close_requested {
            return Poll::Ready(Err(closed_error(&core)));
        }
        if core.under_mark() {
            Poll::Ready(Ok(()))
        } else {
            core.register_send(cx.waker());
            Poll::Pending
        }
    }

    fn start_send(self: Pin<&mut Self>, any: Any) -> Result<()> {
        push(&mut self.inner.lock(), any).map(|_| ())
    }

    /// Ready once everything queued (by any clone) is confirmed by the peer.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut core = self.inner.lock();
        if core.drained() {
            return Poll::Ready(Ok(()));
        }
        if core.end().is_some() {
            return Poll::Ready(Err(closed_error(&core)));
        }
        core.register_send(cx.waker());
        Poll::Pending
    }

    /// Waits until everything queued is confirmed, then closes the stream (both directions);
    /// ready once it is over.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut core = self.inner.lock();
        core.request_close();
        match core.end() {
            Some(StreamEnd::Closed) => Poll::Ready(Ok(())),
            Some(failed) => Poll::Ready(Err(end_error(failed))),
            None => {
                core.register_end(cx.waker());
                Poll::Pending
            }
        }
    }
}

fn stats(inner: &Inner) -> Stats {
    let core = inner.lock();
    let state = core.state();
    let (outgoing_messages, outgoing_bytes) = state.outgoing();
    let (inbound_messages, inbound_bytes) = state.inbound_len();
    let (sent, confirmed) = state.progress();
    let (retained_nacks, retained_nack_bytes) = state.retained_nacks();
    let counters = state.counters();
    Stats {
        retained_nacks,
        retained_nack_bytes,
        outgoing_messages,
        outgoing_bytes,
        inbound_messages,
        inbound_bytes,
        sent,
        confirmed,
        retransmitted: counters.retransmitted,
        refused: counters.nacked,
        connections: core.links(),
        reconnects: core.links().saturating_sub(1),
        resumes: counters.resumes,
        connected: core.attached,
    }
}

/// One side of a reliable stream: send, receive, watch lifecycle events, close. Split it into
/// a [`ReliableReader`] and a [`ReliableWriter`] to use them from different tasks.
///
/// Dropping every reader and writer closes the stream like [`close`](Self::close): what was
/// queued is still delivered first.
#[derive(Debug)]
pub struct ReliableStream {
    reader: ReliableReader,
    writer: ReliableWriter,
}

crate::handle::whole_handle!([] ReliableStream);

impl ReliableStream {
    fn new(inner: Arc<Inner>) -> Self {
        Self {
            reader: ReliableReader {
                inner: inner.acquire(),
                names: NameCache::default(),
                finished: false,
            },
            writer: ReliableWriter {
                inner: inner.acquire(),
                type_url_len: TypeUrlLen::default(),
            },
        }
    }

    /// The two halves.
    pub fn split(self) -> (ReliableReader, ReliableWriter) {
        (self.reader, self.writer)
    }

    /// See [`ReliableWriter::try_send`].
    pub fn try_send(&mut self, any: Any) -> Result<(), TrySendError> {
        self.writer.try_send(any)
    }

    /// See [`ReliableWriter::send_confirmed`].
    pub async fn send_confirmed(&mut self, any: Any) -> Result<()> {
        self.writer.send_confirmed(any).await
    }

    /// See [`ReliableWriter::stats`].
    pub fn stats(&self) -> Stats {
        self.writer.stats()
    }

    /// A writer handle for another task (writers are cheap clones).
    pub fn writer(&self) -> ReliableWriter {
        self.writer.clone()
    }

    /// An [`Events`] stream of this stream's lifecycle events, for another task. Every
    /// `Events` gets every event (a broadcast): it starts with the events
    /// [`next_event`](Self::next_event) has not taken yet, then each one emitted while it
    /// lives (up to 256 unread; beyond that the oldest are dropped).
    pub fn events(&self) -> Events {
        let id = self.writer.inner.lock().subscribe();
        Events {
            inner: self.writer.inner.clone(),
            id,
        }
    }

    /// The next lifecycle event (connected, disconnected, reconnecting, resumed, closed).
    /// Events are kept until read (the 256 most recent); [`Events`] streams read them
    /// independently of this.
    pub async fn next_event(&self) -> Option<Event> {
        let mut events = Events {
            inner: self.writer.inner.clone(),
            id: 0,
        };
        futures_util::StreamExt::next(&mut events).await
    }
}

impl crate::dispatch::sealed::Handle for ReliableStream {
    type Reader = ReliableReader;
    type Writer = ReliableWriter;

    fn into_halves(self) -> (ReliableReader, ReliableWriter) {
        self.split()
    }
}

impl crate::dispatch::sealed::Reader for ReliableReader {
    fn poll_next_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<crate::connection::Frame>>> {
        self.poll_frame(cx)
    }

    /// A stream outlives its connections: handlers get no connection's info.
    fn context(&self) -> crate::dispatch::Context {
        crate::dispatch::Context::detached()
    }
}

impl crate::dispatch::sealed::Writer for ReliableWriter {
    async fn flush_replies(&mut self) -> Result<()> {
        // Queued replies go out by themselves. Waiting for their confirmation (what `flush`
        // means here) would stop reading requests until the peer's application took the
        // replies: a peer that sends before it reads would deadlock with us.
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        // The reader ends only once the stream is over (closed by either side after every
        // message was confirmed): nothing is left to do.
        Ok(())
    }

    async fn after_error(&mut self, e: &Error) {
        // Dropping the halves closes the stream after what is queued is confirmed.
        log::debug!("reliable stream: serving ended: {e}");
    }
}

/// Lifecycle events of a stream; ends after [`Event::Closed`]. Each `Events` (from
/// [`ReliableStream::events`]) receives every event.
#[derive(Debug)]
pub struct Events {
    inner: Arc<Inner>,
    /// Its queue in the core (0: the one `next_event` reads).
    id: u64,
}

impl Drop for Events {
    fn drop(&mut self) {
        self.inner.lock().unsubscribe(self.id);
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let mut core = self.inner.lock();
        match core.pop_event(self.id, cx.waker()) {
            Some(event) => Poll::Ready(Some(event)),
            None if core.end().is_some() => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

/// A boxed future the caller spawns (the drivers are runtime-agnostic).
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::task::{Wake, Waker};

    /// Records whether the core's lock was free when it was woken.
    struct LockProbe {
        inner: Arc<Inner>,
        woken: AtomicBool,
        lock_was_free: AtomicBool,
    }

    impl Wake for LockProbe {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.woken.store(true, Ordering::SeqCst);
            let free = self.inner.core.try_lock().is_ok();
            self.lock_was_free.store(free, Ordering::SeqCst);
        }
    }

    #[test]
    fn wakers_run_after_the_lock_is_released() {
        let inner = Inner::new(ReliableConfig::new());
        let probe = Arc::new(LockProbe {
            inner: inner.clone(),
            woken: AtomicBool::new(false),
            lock_was_free: AtomicBool::new(false),
        });
        let waker = Waker::from(probe.clone());
        inner.lock().register_link(&waker);
        // Queuing a message wakes the link.
        inner.lock().try_push(Any::default()).unwrap();
        assert!(probe.woken.load(Ordering::SeqCst));
        assert!(probe.lock_was_free.load(Ordering::SeqCst));
    }

    #[test]
    fn peer_strings_are_escaped_and_capped() {
        assert_eq!(quoted("a\nb\u{1b}"), "a\\nb\\u{1b}");
        let long = quoted(&"x".repeat(1 << 20));
        assert!(long.len() < 150, "{}", long.len());
        assert!(long.ends_with("bytes)"), "{long}");
    }
}
