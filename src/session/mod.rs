//! Sessions: a handshake with negotiation and authentication, heartbeats with dead-peer
//! detection, and a graceful close, on top of a [`Connection`](crate::Connection).
//!
//! The session layer's control messages ([`proto::v1`](crate::proto::v1), package `connect.v1`)
//! travel in the same delimited-`Any` frames as application messages. `proto/PROTOCOL.md`
//! specifies them byte by byte.
//!
//! ```text
//!  connecting side                                   accepting side
//!  session::connect(conn, &config)                   session::accept(conn, &config)
//!        ── Hello { versions, properties, heartbeat, max frame, credentials } ──►
//!                                                    negotiate, Authenticator
//!        ◄── Welcome { version, session id, heartbeat, max frame, identity } ──
//!            (or Refuse { code, reason }, then the accepting side closes)
//!  application messages both ways; Ping/Pong when a side has sent nothing for an interval
//!        ── Close { code, reason } ──►   (after everything queued before it)
//!        ◄── CloseOk ──                   (after what the peer's application sent until it
//!                                          read the end of its reader)
//! ```
//!
//! ## How it is used
//!
//! [`connect`] and [`accept`] perform the handshake and return a [`Session`] and a
//! [`SessionDriver`]. **The driver is a future that must be spawned** (like hyper's connection
//! future): it owns the connection, answers and sends heartbeats, notices a silent peer, runs
//! the close handshake and reads and writes frames whenever the application is not currently
//! reading or writing (when it is, its [`SessionReader`] and [`SessionWriter`] read and write
//! the connection in their own task, without a hop through the driver). It resolves to the
//! [`SessionEnd`] once the session is over.
//! [`transport::tcp::connect_session`](crate::transport::tcp::connect_session) does
//! connect-handshake-spawn in one call, handing the driver to the `spawn` function you give it
//! (see [where background work runs](crate::transport#where-background-work-runs)).
//!
//! The [`Session`] (or its [`split`](Session::split) halves [`SessionReader`] and
//! [`SessionWriter`], usable from different tasks) sends and receives application messages only;
//! the driver consumes every control message. An end of session is reported to both halves: the
//! reader yields `Ok(None)` after a graceful close and `Err(Error::Session(end))` otherwise;
//! every later send fails with `Error::Session(end)`.
//!
//! ```no_run
//! # async_std::task::block_on(async {
//! use connect::proto::example::HelloWorld;
//! use connect::session::{self, PlainAuthenticator, SessionConfig};
//! use connect::proto::v1::Credentials;
//! use connect::transport::tcp::{self, TcpListener};
//! use std::time::Duration;
//!
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let server_config = SessionConfig::new()
//!     .with_authenticator(PlainAuthenticator::new().with_user("alice", "s3cret"));
//! async_std::task::spawn(async move {
//!     let conn = listener.accept().await?;
//!     let (mut session, driver) = session::accept(conn, &server_config).await?;
//!     async_std::task::spawn(driver);
//!     while let Some(any) = session.recv().await? {
//!         session.send(any).await?; // echo
//!     }
//!     Ok::<(), connect::Error>(())
//! });
//!
//! let config = SessionConfig::new()
//!     .with_heartbeat(Some(Duration::from_secs(5)))
//!     .with_credentials(Credentials::plain("alice", "s3cret"));
//! // The driver runs where `spawn` puts it (here: on an async-std task).
//! let spawn = |task| {
//!     async_std::task::spawn(task);
//! };
//! let mut session = tcp::connect_session(addr, &config, spawn).await?;
//! println!("session {} as {:?}", session.info().session_id(), session.info().identity());
//! session.send_message(&HelloWorld { text: "hi".into(), sequence: 1 }).await?;
//! let echoed: Option<HelloWorld> = session.recv_message().await?;
//! session.close().await?; // REASON_CODE_NORMAL; `close_with` for another code
//! # Ok::<(), connect::Error>(()) }).unwrap();
//! ```
//!
//! ## Timers
//!
//! Heartbeat and timeout timers come from `futures-timer`, which needs no runtime (it keeps one
//! helper thread for the whole process), so the driver runs unchanged on async-std, smol or
//! tokio.

mod auth;
mod config;
mod driver;
mod handshake;
mod outbox;
mod queue;
mod state;

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;
use futures_core::Stream;
use futures_sink::Sink;
use futures_util::task::AtomicWaker;
use prost::{Message, Name};
use prost_types::Any;

use crate::codec::Codec;
use crate::connection::{ConnectionInfo, Frame, NameCache};
use crate::error::{quoted, Error, Result};
use crate::handle::ReuniteError;
use crate::proto::v1::ReasonCode;

pub use auth::{AuthError, Authenticator, BearerAuthenticator, PlainAuthenticator};
pub use config::SessionConfig;
pub use driver::SessionDriver;
pub use handshake::{
    accept, connect, HANDSHAKE_MAX_FRAME_LEN, MIN_HEARTBEAT, MIN_MAX_FRAME_LEN, PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
};

/// Why a session ended (or never began). Every end is reported with one of these: by the
/// driver's output, and to the reader and writer as [`Error::Session`] unless it is graceful.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum SessionEnd {
    /// This side closed the session and the peer acknowledged it.
    Closed {
        /// The code this side sent.
        code: ReasonCode,
        /// The reason this side sent.
        reason: String,
    },
    /// The peer closed the session (and this side acknowledged it).
    ClosedByPeer {
        /// The peer's code.
        code: ReasonCode,
        /// The peer's reason.
        reason: String,
    },
    /// The handshake was refused: by the accepting side (the connecting side sees the code and
    /// text it sent), or by this side as the accepting side.
    Refused {
        /// Why, as a code.
        code: ReasonCode,
        /// Why, in words.
        reason: String,
    },
    /// Nothing arrived from the peer for `silent_for`, the configured number of heartbeat
    /// intervals.
    PeerUnresponsive {
        /// How long the peer had been silent.
        silent_for: Duration,
    },
    /// The handshake did not complete within the handshake timeout.
    HandshakeTimeout,
    /// The peer did not acknowledge a close within the close timeout.
    CloseTimeout,
    /// The peer broke the session protocol.
    ProtocolViolation {
        /// What it did.
        reason: String,
    },
    /// The transport ended without a close handshake.
    Disconnected,
    /// The transport failed, or the peer sent a frame that could not be decoded.
    Transport(Arc<Error>),
}

impl SessionEnd {
    /// Whether the session ended by a completed close handshake (initiated by either side).
    pub fn is_graceful(&self) -> bool {
        matches!(self, Self::Closed { .. } | Self::ClosedByPeer { .. })
    }

    /// The code a peer would be told for this end.
    pub fn code(&self) -> ReasonCode {
        match self {
            Self::Closed { code, .. } | Self::ClosedByPeer { code, .. } => *code,
            Self::Refused { code, .. } => *code,
            Self::PeerUnresponsive { .. } => ReasonCode::Unresponsive,
            Self::HandshakeTimeout => ReasonCode::HandshakeTimeout,
            Self::ProtocolViolation { .. } => ReasonCode::ProtocolViolation,
            Self::CloseTimeout | Self::Disconnected | Self::Transport(_) => {
                ReasonCode::InternalError
            }
        }
    }
}

impl fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed { code, reason } => write!(f, "closed ({}: {reason})", code.as_str_name()),
            // The peer's words: escaped and capped, they end up in logs.
            Self::ClosedByPeer { code, reason } => {
                write!(
                    f,
                    "closed by peer ({}: {})",
                    code.as_str_name(),
                    quoted(reason)
                )
            }
            Self::Refused { code, reason } => {
                write!(f, "refused ({}: {})", code.as_str_name(), quoted(reason))
            }
            Self::PeerUnresponsive { silent_for } => {
                write!(f, "peer unresponsive (silent for {silent_for:?})")
            }
            Self::HandshakeTimeout => f.write_str("handshake timed out"),
            Self::CloseTimeout => f.write_str("close not acknowledged in time"),
            Self::ProtocolViolation { reason } => write!(f, "protocol violation: {reason}"),
            Self::Disconnected => f.write_str("disconnected without a close"),
            Self::Transport(e) => write!(f, "transport failed: {e}"),
        }
    }
}

/// What the handshake settled, plus the connection's own info. Shared by all parts of a session.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    session_id: String,
    version: u32,
    heartbeat: Option<Duration>,
    max_frame_len: usize,
    peer_properties: HashMap<String, String>,
    identity: Option<String>,
    capabilities: Vec<String>,
    connection: Arc<ConnectionInfo>,
}

impl SessionInfo {
    /// The id the accepting side gave the session, for logs on both sides.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The protocol version in use.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The negotiated heartbeat interval, `None` if heartbeats are off.
    pub fn heartbeat(&self) -> Option<Duration> {
        self.heartbeat
    }

    /// The negotiated maximum frame length, in both directions.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// The properties the peer announced (product, version, ...).
    pub fn peer_properties(&self) -> &HashMap<String, String> {
        &self.peer_properties
    }

    /// The identity the connecting side was authenticated as, if an authenticator ran.
    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// Protocol extensions enabled for this session, such as
    /// [`reliable::CAPABILITY`](crate::reliable::CAPABILITY).
    pub fn capabilities(&self) -> &[String] {
        &self.capabilities
    }

    /// The underlying connection's info (addresses, id).
    pub fn connection(&self) -> &ConnectionInfo {
        &self.connection
    }

    /// The underlying connection's info, shared.
    pub fn connection_arc(&self) -> Arc<ConnectionInfo> {
        self.connection.clone()
    }
}

impl fmt::Display for SessionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // On the connecting side the id is the peer's: shown as is only if it is short and plain.
        let id = &self.session_id;
        if id.len() <= crate::error::MAX_QUOTED_CHARS && id.bytes().all(|b| b.is_ascii_graphic()) {
            write!(f, "session {id} on {}", self.connection)
        } else {
            write!(f, "session {} on {}", quoted(id), self.connection)
        }
    }
}

/// State shared by the driver and the handles.
#[derive(Debug)]
struct Shared {
    info: Arc<SessionInfo>,
    end: Mutex<Option<SessionEnd>>,
    /// Latest round-trip time in nanoseconds; 0 until measured.
    rtt_nanos: AtomicU64,
    /// Bytes of received messages waiting for the application (bounded by the driver).
    inbound_bytes: AtomicUsize,
    /// Woken when the application takes a received message: the driver may be waiting for
    /// room under the byte bound; and when the reader ends or is dropped.
    driver_waker: AtomicWaker,
    /// The driver waits for room under the byte bound: only then does taking a message wake
    /// it (a wake-up per message taken would cost an atomic exchange each).
    driver_waits_for_room: AtomicBool,
    /// The application has seen the end of its reader, or dropped it.
    reader_done: AtomicBool,
    stats: SharedStats,
    /// The tasks waiting on the connection (see [`driver`]).
    wakers: Arc<driver::Wakers>,
    /// Lets the halves read and write in their own tasks (gone once the driver has finished).
    engine: std::sync::OnceLock<Weak<dyn driver::Inline>>,
}

impl Shared {
    fn engine(&self) -> Option<Arc<dyn driver::Inline>> {
        self.engine.get()?.upgrade()
    }
}

/// Counters the driver publishes for [`SessionStats`].
#[derive(Debug, Default)]
struct SharedStats {
    control_frames: AtomicUsize,
    control_bytes: AtomicUsize,
    control_bytes_peak: AtomicUsize,
    pongs_coalesced: AtomicU64,
    read_pauses: AtomicU64,
    /// The connection's counts, copied by the driver once per round.
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
}

/// What a session holds on its peer's behalf and what it moved, for monitoring and tests: see
/// [`Session::stats`] and [`crate::metrics`].
///
/// A session queues at most one reply per kind of control message (a Pong, a CloseOk) plus its
/// own Ping and Close: a peer that floods Pings costs one pending Pong, and once it has sent
/// many Pings without taking our Pong the driver stops reading from it until it does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStats {
    /// Control frames (Ping, Pong, Close, CloseOk) waiting to be handed to the connection writer.
    pub control_frames_queued: usize,
    /// Their bytes (type URLs and values).
    pub control_bytes_queued: usize,
    /// The most control bytes ever queued at once in this session.
    pub control_bytes_queued_peak: usize,
    /// Pings answered by a later Pong rather than their own (only the latest Pong matters).
    pub pongs_coalesced: u64,
    /// Times the driver stopped reading because the peer did not take our replies.
    pub read_pauses: u64,
    /// Bytes of received application messages waiting for the application (bounded by
    /// [`SessionConfig::with_receive_buffer_len`] plus one message).
    pub received_bytes_queued: usize,
    /// Frames received on the session's connection (handshake, heartbeats and close
    /// included), as of the driver's last round.
    pub frames_received: u64,
    /// Their bytes, length prefixes included.
    pub bytes_received: u64,
    /// Frames sent on the session's connection, as of the driver's last round.
    pub frames_sent: u64,
    /// Their bytes, length prefixes included.
    pub bytes_sent: u64,
    /// Latest round-trip time measured by a heartbeat, if any (as [`Session::rtt`]).
    pub rtt: Option<Duration>,
}

impl Shared {
    fn stats(&self) -> SessionStats {
        let s = &self.stats;
        SessionStats {
            control_frames_queued: s.control_frames.load(Ordering::Relaxed),
            control_bytes_queued: s.control_bytes.load(Ordering::Relaxed),
            control_bytes_queued_peak: s.control_bytes_peak.load(Ordering::Relaxed),
            pongs_coalesced: s.pongs_coalesced.load(Ordering::Relaxed),
            read_pauses: s.read_pauses.load(Ordering::Relaxed),
            received_bytes_queued: self.inbound_bytes.load(Ordering::Acquire),
            frames_received: s.frames_received.load(Ordering::Relaxed),
            bytes_received: s.bytes_received.load(Ordering::Relaxed),
            frames_sent: s.frames_sent.load(Ordering::Relaxed),
            bytes_sent: s.bytes_sent.load(Ordering::Relaxed),
            rtt: self.rtt(),
        }
    }

    /// The application is done with received messages: after the peer's `Close`, the driver
    /// may acknowledge once what the application queued is out.
    fn reader_done(&self) {
        self.reader_done.store(true, Ordering::Release);
        self.driver_waker.wake();
    }
}

/// What a received message counts against the byte bound of the inbound queue.
fn queued_len(frame: &Frame) -> usize {
    frame.type_url_bytes().len() + frame.value().len()
}

impl Shared {
    /// The error to report once the driver is gone.
    fn ended(&self) -> Error {
        let end = self.end.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // Without a recorded end the driver was dropped before it finished.
        Error::Session(end.unwrap_or(SessionEnd::Disconnected))
    }

    fn set_end(&self, end: SessionEnd) {
        *self.end.lock().unwrap_or_else(|e| e.into_inner()) = Some(end);
    }

    fn end(&self) -> Option<SessionEnd> {
        self.end.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn rtt(&self) -> Option<Duration> {
        match self.rtt_nanos.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }
}

/// What the writer hands to the driver between its encoded messages (see [`outbox`]).
enum Marker {
    /// Completed once everything before it is written to the transport.
    Flush(oneshot::Sender<Result<()>>),
    /// Completed once the close handshake has finished.
    Close {
        code: ReasonCode,
        reason: String,
        done: oneshot::Sender<Result<()>>,
    },
}

/// Receives a session's application messages: a [`Stream`] of `Result<Any>`.
///
/// Control messages never show up here. The stream ends with `None` after a graceful close (by
/// either side), after every message the peer sent before its `Close`. Any other end is yielded
/// once as `Err(Error::Session(end))`, after the messages received before it.
///
/// When the peer closes, the end comes as soon as its earlier messages are read, while the
/// session is still open for sending: the `CloseOk` goes out once this reader has yielded its
/// end (or is dropped, or the application closes too), after what the application sent until
/// then. So read to the end promptly, or drop the reader, or the peer's close times out.
#[derive(Debug)]
pub struct SessionReader {
    /// Received frames: slices of the connection's read buffer, so that
    /// [`recv_message`](Self::recv_message) decodes without a copy.
    inbound: queue::Receiver<Frame>,
    /// Frames taken from the inbound queue in one step, not yet returned (still counted in
    /// the inbound byte bound).
    taken: VecDeque<Frame>,
    /// Bytes of the frames of `taken` already returned (given back to the bound when `taken`
    /// runs empty).
    returned: usize,
    shared: Arc<Shared>,
    /// Full name of the last message type received with `recv_message`.
    names: NameCache,
    finished: bool,
}

impl SessionReader {
    crate::handle::reader_methods!();

    /// Decodes straight from the received frame, without an intermediate [`Any`]: fields of
    /// type [`bytes::Bytes`] are slices of the connection's read buffer, as with
    /// [`ConnectionReader::recv_message`](crate::ConnectionReader::recv_message).
    pub(crate) fn poll_recv_message<M: Message + Name + Default>(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<M>>> {
        let frame = match std::task::ready!(self.poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            None => return Poll::Ready(None),
        };
        // The type URL was checked to be UTF-8 when the frame was made.
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

    /// The next received frame, or the session's end.
    pub(crate) fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        if self.taken.is_empty() {
            match self.inbound.poll_take_all(cx, &mut self.taken) {
                Poll::Ready(true) => {}
                Poll::Ready(false) => return self.poll_end(),
                Poll::Pending => {
                    // Nothing queued by the driver: read from the connection here (it wakes
                    // this task when more arrives; the queue, when the driver read).
                    let Some(engine) = self.shared.engine() else {
                        return Poll::Pending;
                    };
                    engine.read(cx);
                    drop(engine);
                    match self.inbound.poll_take_all(cx, &mut self.taken) {
                        Poll::Ready(true) => {}
                        Poll::Ready(false) => return self.poll_end(),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
        let Some(frame) = self.taken.pop_front() else {
            return Poll::Pending; // never: the queue gave at least one
        };
        // The bytes of a batch are given back to the bound once the whole batch is returned:
        // one atomic subtraction per batch, not per message (and never less than is held).
        self.returned += queued_len(&frame);
        if self.taken.is_empty() {
            self.shared
                .inbound_bytes
                .fetch_sub(std::mem::take(&mut self.returned), Ordering::SeqCst);
            if self.shared.driver_waits_for_room.load(Ordering::SeqCst) {
                self.shared
                    .driver_waits_for_room
                    .store(false, Ordering::SeqCst);
                self.shared.driver_waker.wake();
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    /// The end, once every received message has been returned.
    fn poll_end(&mut self) -> Poll<Option<Result<Frame>>> {
        self.finished = true;
        self.shared.reader_done();
        match self.shared.end() {
            Some(end) if end.is_graceful() => Poll::Ready(None),
            _ => Poll::Ready(Some(Err(self.shared.ended()))),
        }
    }

    /// Puts the two halves of a [`Session`] back together.
    ///
    /// # Errors
    /// If the halves come from different sessions, both are handed back unchanged.
    #[allow(clippy::result_large_err)]
    pub fn reunite(
        self,
        writer: SessionWriter,
    ) -> Result<Session, ReuniteError<Self, SessionWriter>> {
        if Arc::ptr_eq(&self.shared, &writer.shared) {
            Ok(Session {
                reader: self,
                writer,
            })
        } else {
            Err(ReuniteError(self, writer))
        }
    }

    /// What the handshake settled.
    pub fn info(&self) -> &SessionInfo {
        &self.shared.info
    }

    /// Latest round-trip time measured by a heartbeat, if any.
    pub fn rtt(&self) -> Option<Duration> {
        self.shared.rtt()
    }

    /// What the session holds on the peer's behalf; see [`SessionStats`].
    pub fn stats(&self) -> SessionStats {
        self.shared.stats()
    }
}

impl Drop for SessionReader {
    fn drop(&mut self) {
        // The driver reads from now on.
        self.shared
            .wakers
            .reader_covers
            .store(false, Ordering::SeqCst);
        self.shared.wakers.reader.clear();
        self.shared.reader_done();
    }
}

impl Stream for SessionReader {
    type Item = Result<Any>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_frame(cx)
            .map(|next| next.map(|frame| frame.map(Frame::into_any)))
    }
}

/// Sends a session's application messages: a [`Sink`] of [`Any`].
///
/// Messages are encoded at once into a buffer that is handed to the connection (no `Any` is
/// built for `feed_message`): by this writer itself when it flushes or 64 KiB have gathered,
/// else by the driver, which writes them in order and flushes whenever that buffer runs empty.
/// A message fed alone goes out at once; while the writer feeds a stream (many messages queue
/// up faster than the driver takes them), what it fed may wait up to a millisecond for more,
/// so that the stream is written in large pieces: flush (or `send`) when a message must not
/// wait. `feed` and `feed_message` return once the message is queued (waiting while
/// the queue is full); `send`, `send_message` and [`flush`](Self::flush) return once everything
/// queued so far is written to the transport. [`close`](Self::close) closes the session with
/// `REASON_CODE_NORMAL`, [`close_with`](Self::close_with) with another code. After the session
/// has ended every call fails with `Error::Session(end)`.
///
/// After the peer's `Close`, sending goes on until this side's application has seen the end
/// of its [`SessionReader`] (or dropped it, or closed too). Once the session is ending
/// gracefully and takes no more messages, the driver still writes every message queued
/// before, as part of the close: a flush then succeeds at once (a failure while closing is
/// reported as the session's end). After any other end it fails with that end.
#[derive(Debug)]
pub struct SessionWriter {
    outbound: outbox::Sender<Marker>,
    shared: Arc<Shared>,
    /// Encodes frames within the negotiated maximum length.
    codec: Codec,
    /// Type URL of the last message type sent with `feed_message`.
    names: NameCache,
    /// A flush or close handed to the driver and not completed yet.
    pending: Option<Pending>,
    /// Encoded bytes waiting in the outbox after this writer's last message.
    waiting: usize,
    /// The outbox had room for one more item after this writer's last message: it still has
    /// (only this writer fills it), so the next message needs no look at it first.
    room: bool,
}

#[derive(Debug)]
struct Pending {
    close: bool,
    done: oneshot::Receiver<Result<()>>,
}

impl SessionWriter {
    fn new(outbound: outbox::Sender<Marker>, shared: Arc<Shared>) -> Self {
        Self {
            outbound,
            codec: Codec::with_max_frame_len(shared.info.max_frame_len),
            shared,
            names: NameCache::default(),
            pending: None,
            waiting: 0,
            room: false,
        }
    }

    /// Hands what was encoded to the connection in this task, and flushes it (see
    /// [`driver::Inline::write`]); `None` if that is the driver's job now.
    fn write_inline(&mut self, cx: &mut Context<'_>, flush: bool) -> Option<Poll<Result<()>>> {
        if self.pending.is_some() {
            return None;
        }
        self.shared.engine()?.write(cx, flush)
    }

    crate::handle::writer_methods!();

    pub(crate) fn poll_feed(
        &mut self,
        cx: &mut Context<'_>,
        item: &mut Option<Any>,
    ) -> Poll<Result<()>> {
        crate::handle::poll_feed_sink(self, cx, item, |w, any| Sink::start_send(Pin::new(w), any))
    }

    pub(crate) fn poll_feed_message<M: Message + Name>(
        &mut self,
        cx: &mut Context<'_>,
        msg: &M,
    ) -> Poll<Result<()>> {
        crate::handle::poll_feed_sink(self, cx, &mut Some(msg), |w, msg| {
            w.forget_flush();
            w.start_send_message(msg)
        })
    }

    /// Encodes `msg` into the outbox after [`poll_ready_outbound`](Self::poll_ready_outbound)
    /// said there is room: no `Any` is built.
    pub(crate) fn start_send_message<M: Message + Name>(&mut self, msg: &M) -> Result<()> {
        let type_url = self.names.get(crate::codec::type_url::<M>);
        let codec = &self.codec;
        match self
            .outbound
            .encode_frame(|frames| frames.encode_message_as(codec, type_url, msg))
        {
            Ok(encoded) => encoded.map(|queued| self.queued(queued)),
            Err(outbox::Closed) => Err(self.shared.ended()),
        }
    }

    /// Queues a frame of type `M` whose value (`M` encoded) is `value` with each of `placed`
    /// inserted at its offset (in order), after
    /// [`poll_ready_outbound`](Self::poll_ready_outbound) said there is room. The placed
    /// values, and a `value` of at least [`BY_REFERENCE_LEN`](crate::connection::BY_REFERENCE_LEN)
    /// with nothing placed, go to the connection by reference, not copied into the outbox.
    pub(crate) fn start_send_parts_of<M: Name>(
        &mut self,
        value: &Bytes,
        placed: &[(usize, Bytes)],
    ) -> Result<()> {
        let type_url = self.names.get(crate::codec::type_url::<M>);
        let codec = &self.codec;
        let value_len = value.len() + placed.iter().map(|(_, v)| v.len()).sum::<usize>();
        let whole = placed.is_empty() && value.len() >= crate::connection::BY_REFERENCE_LEN;
        let encoded = self.outbound.encode_frame(|frames| {
            if whole {
                codec.encode_head(type_url, value_len, 0, &mut frames.bytes)?;
                frames.push_value(value.clone());
            } else if codec.encode_head(type_url, value_len, value.len(), &mut frames.bytes)? {
                let mut from = 0;
                for (at, bytes) in placed {
                    frames.bytes.extend_from_slice(&value[from..*at]);
                    frames.push_value(bytes.clone());
                    from = *at;
                }
                frames.bytes.extend_from_slice(&value[from..]);
            }
            Ok(())
        });
        match encoded {
            Ok(encoded) => encoded.map(|queued| self.queued(queued)),
            Err(outbox::Closed) => Err(self.shared.ended()),
        }
    }

    /// Remembers what the outbox said after a message was encoded into it: the bytes waiting,
    /// and whether it has room for one more.
    fn queued(&mut self, (waiting, room): (usize, bool)) {
        (self.waiting, self.room) = (waiting, room);
    }

    /// A flush started before a new message must not complete the next flush.
    fn forget_flush(&mut self) {
        if self.pending.as_ref().is_some_and(|p| !p.close) {
            self.pending = None;
        }
    }

    /// Closes the session gracefully: everything queued before is delivered, then the peer is
    /// told `code` and `reason`; returns once the peer has acknowledged. Whatever the peer sent
    /// before its acknowledgement still reaches the [`SessionReader`]; if the peer may send more
    /// than the queue holds meanwhile, keep reading (from another task, after
    /// [`Session::split`]), or the close waits for the reader and may time out.
    /// [`close`](Self::close) is `close_with(ReasonCode::Normal, "")`.
    ///
    /// # Errors
    /// `Error::Session(SessionEnd::CloseTimeout)` if the peer did not acknowledge within the
    /// close timeout, or the session's end if it ended otherwise first.
    pub async fn close_with(&mut self, code: ReasonCode, reason: impl Into<String>) -> Result<()> {
        let mut close = Some((code, reason.into()));
        poll_fn(|cx| self.poll_marker(cx, true, &mut close)).await
    }

    /// Hands a flush marker (`close: None`) or a close to the driver, and polls it until the
    /// driver completes it.
    fn poll_marker(
        &mut self,
        cx: &mut Context<'_>,
        close: bool,
        with: &mut Option<(ReasonCode, String)>,
    ) -> Poll<Result<()>> {
        if self.pending.as_ref().map(|p| p.close) != Some(close) {
            let ended = |shared: &Shared| match shared.end() {
                // A graceful end still writes what was queued, so there is nothing to flush.
                Some(end) if end.is_graceful() && !close => Ok(()),
                _ => Err(shared.ended()),
            };
            match self.outbound.poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(ended(&self.shared)),
                Poll::Ready(Ok(())) => {}
            }
            let (done, completed) = oneshot::channel();
            let item = if close {
                let (code, reason) = with.take().unwrap_or((ReasonCode::Normal, String::new()));
                Marker::Close { code, reason, done }
            } else {
                Marker::Flush(done)
            };
            self.room = false;
            if self.outbound.push_marker(item).is_err() {
                return Poll::Ready(ended(&self.shared));
            }
            self.pending = Some(Pending {
                close,
                done: completed,
            });
        }
        let Some(pending) = &mut self.pending else {
            return Poll::Ready(Err(self.shared.ended()));
        };
        match Pin::new(&mut pending.done).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                self.pending = None;
                Poll::Ready(result.unwrap_or_else(|_| Err(self.shared.ended())))
            }
        }
    }

    /// Whether [`poll_ready_outbound`](Self::poll_ready_outbound) may write to the connection
    /// (a full batch waits, or the outbox said it was full): a caller holding a lock others
    /// wait for calls it after letting go.
    pub(crate) fn may_write(&self) -> bool {
        self.waiting >= outbox::BATCH_BYTES || !self.room
    }

    /// Room for one more item in the queue to the driver (for layers on top of sessions that
    /// poll rather than await, such as [`crate::reliable`]).
    pub(crate) fn poll_ready_outbound(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.waiting >= outbox::BATCH_BYTES {
            // A full batch: written from this task, in one system call, rather than taken by
            // the driver in as many pieces as it is woken for.
            self.waiting = 0;
            if let Some(Poll::Ready(Ok(()))) = self.write_inline(cx, false) {
                // Then lets other tasks run: a writer whose sends never wait would otherwise
                // keep its thread from them (on executors without a cooperative budget, its
                // own session's reader and driver among them).
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        } else if self.room {
            // A closed outbox is reported by the next `encode`, with the same error.
            return Poll::Ready(Ok(()));
        }
        self.room = false;
        if self.outbound.poll_ready(cx).is_pending() {
            // Full: hand it to the connection here rather than wait for the driver.
            let _ = self.write_inline(cx, false);
        }
        self.outbound
            .poll_ready(cx)
            .map_err(|_| self.shared.ended())
    }

    /// Queues `any` after [`poll_ready_outbound`](Self::poll_ready_outbound) said there is room.
    pub(crate) fn start_send_any(&mut self, any: &Any) -> Result<()> {
        let codec = &self.codec;
        match self.outbound.encode(|buf| codec.encode(any, buf)) {
            Ok(encoded) => encoded.map(|queued| self.queued(queued)),
            Err(outbox::Closed) => Err(self.shared.ended()),
        }
    }

    /// Starts a graceful close after [`poll_ready_outbound`](Self::poll_ready_outbound) said
    /// there is room; the reader sees the end.
    pub(crate) fn start_close(&mut self, code: ReasonCode, reason: String) -> Result<()> {
        let (done, _closed) = oneshot::channel();
        self.room = false;
        self.outbound
            .push_marker(Marker::Close { code, reason, done })
            .map_err(|_| self.shared.ended())
    }

    /// What the handshake settled.
    pub fn info(&self) -> &SessionInfo {
        &self.shared.info
    }

    /// Latest round-trip time measured by a heartbeat, if any.
    pub fn rtt(&self) -> Option<Duration> {
        self.shared.rtt()
    }

    /// How the session ended (or, during a close handshake, is ending), once known.
    pub fn end(&self) -> Option<SessionEnd> {
        self.shared.end()
    }

    /// What the session holds on the peer's behalf; see [`SessionStats`].
    pub fn stats(&self) -> SessionStats {
        self.shared.stats()
    }
}

impl Sink<Any> for SessionWriter {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().poll_ready_outbound(cx)
    }

    fn start_send(self: Pin<&mut Self>, any: Any) -> Result<()> {
        let this = self.get_mut();
        this.forget_flush();
        if any.value.len() < crate::connection::BY_REFERENCE_LEN {
            return this.start_send_any(&any);
        }
        // A large value is ours now: it goes to the connection as it is, not copied.
        let codec = &this.codec;
        let Any { type_url, value } = any;
        match this.outbound.encode_frame(|frames| {
            codec.encode_head(&type_url, value.len(), 0, &mut frames.bytes)?;
            frames.push_value(Bytes::from(value));
            Ok(())
        }) {
            Ok(encoded) => encoded.map(|queued| this.queued(queued)),
            Err(outbox::Closed) => Err(this.shared.ended()),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        if let Some(flushed) = this.write_inline(cx, true) {
            return flushed;
        }
        this.poll_marker(cx, false, &mut None)
    }

    /// Closes with `REASON_CODE_NORMAL`; see [`SessionWriter::close_with`].
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().poll_marker(cx, true, &mut None)
    }
}

/// An open session: application messages in both directions. See the [module docs](self).
///
/// [`split`](Self::split) it to read and write from different tasks.
#[derive(Debug)]
pub struct Session {
    reader: SessionReader,
    writer: SessionWriter,
}

impl Session {
    /// The reading and the writing half.
    pub fn split(self) -> (SessionReader, SessionWriter) {
        (self.reader, self.writer)
    }

    /// What the handshake settled.
    pub fn info(&self) -> &SessionInfo {
        &self.reader.shared.info
    }

    /// Latest round-trip time measured by a heartbeat, if any.
    pub fn rtt(&self) -> Option<Duration> {
        self.reader.rtt()
    }

    /// How the session ended (or, during a close handshake, is ending), once known.
    pub fn end(&self) -> Option<SessionEnd> {
        self.reader.shared.end()
    }

    /// What the session holds on the peer's behalf; see [`SessionStats`].
    pub fn stats(&self) -> SessionStats {
        self.reader.shared.stats()
    }

    /// See [`SessionWriter::close_with`]. Messages the peer sends before acknowledging stay
    /// readable.
    pub async fn close_with(&mut self, code: ReasonCode, reason: impl Into<String>) -> Result<()> {
        self.writer.close_with(code, reason).await
    }
}

crate::handle::whole_handle!([] Session);

impl crate::dispatch::sealed::Handle for Session {
    type Reader = SessionReader;
    type Writer = SessionWriter;

    fn into_halves(self) -> (SessionReader, SessionWriter) {
        self.split()
    }
}

impl crate::dispatch::sealed::Reader for SessionReader {
    fn poll_next_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<crate::connection::Frame>>> {
        self.poll_frame(cx)
    }

    fn context(&self) -> crate::dispatch::Context {
        crate::dispatch::Context::for_session(self.shared.info.clone())
    }
}

impl crate::dispatch::sealed::Writer for SessionWriter {
    async fn flush_replies(&mut self) -> Result<()> {
        self.flush().await
    }

    fn replies_unwanted(&self, e: &Error) -> bool {
        matches!(e, Error::Session(end) if end.is_graceful())
    }

    async fn finish(&mut self) -> Result<()> {
        // The driver acknowledges the peer's Close once the replies queued so far are out.
        Ok(())
    }

    async fn after_error(&mut self, e: &Error) {
        if matches!(e, Error::Session(_)) {
            return; // the session is over already
        }
        if let Err(close_error) = self
            .close_with(ReasonCode::InternalError, e.to_string())
            .await
        {
            log::debug!(
                "{}: close after {e} failed: {close_error}",
                self.shared.info
            );
        }
    }
}
