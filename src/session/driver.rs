//! The session's engine, and the driver future that runs it when the application does not.
//!
//! The [`Engine`] owns the connection and feeds the sans-IO [`SessionState`] with frames and
//! time. Whoever polls first does the work, under one lock: the application's
//! [`SessionReader`] reads frames itself when it wants one, its [`SessionWriter`] hands what
//! it encoded to the connection and flushes it itself, and the spawned [`SessionDriver`] does
//! what must happen while the application does not poll (timers, answering Pings, reading
//! during a close, writing what was fed but not flushed). So a message costs no task hop.
//!
//! The connection registers one waker per direction; it gets a fan-out waker that wakes both
//! the application half and (when it waits on that direction too) the driver. The lock is held
//! only within a poll, and reading, writing and the timer are polled side by side in the
//! driver's `poll`, so a write blocked by a peer that stopped reading never keeps the driver
//! from noticing the silence.
//!
//! A busy session keeps the driver out of the way: while the application's reader keeps
//! coming back, the connection becoming readable wakes only the reader, and the driver looks
//! every few milliseconds whether it still does ([`Engine::reader_watch`]); a writer feeding
//! a stream hands full batches to the connection itself, and the driver takes the rest a
//! millisecond later rather than in as many small writes as it could be woken for
//! ([`Engine::lingers`]). Each wake-up of the driver is a hop to another thread and a round
//! competing for the lock: per readable event or per batch, they made a session a third of
//! the bare connection's small-message rate.
//!
//! The driver never waits for the lock: when an application half holds it, the driver leaves
//! its round to that half, which runs it before letting go (`Wakers::driver_deferred`). And no
//! one writes into a connection that has said it is full until it says it is writable again
//! ([`Engine::writer_ready`]).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use crate::connection::{ReadHalf, WriteHalf};
use futures_channel::oneshot;
use futures_io::{AsyncRead, AsyncWrite};
use futures_sink::Sink;
use futures_util::FutureExt;

use super::outbox::{self, Item};
use super::queue;
use super::state::{Phase, SessionState};
use super::{queued_len, SessionWriter, Shared};
use super::{Marker, Session, SessionConfig, SessionEnd, SessionInfo, SessionReader};
use crate::connection::{ConnectionReader, ConnectionWriter, Frame};
use crate::error::{Error, Result};
use crate::proto::v1::ReasonCode;

/// Frames handled in one `poll` before the driver yields to other tasks.
const POLL_BUDGET: usize = 256;

/// How often the driver looks whether the application's reader still comes back for what
/// arrives, while it leaves reading to it (see [`Engine::reader_watch`]).
const READER_WATCH: std::time::Duration = std::time::Duration::from_millis(10);

/// While the writer streams (it handed a full batch to the connection itself within this
/// long), the driver takes what it fed only after [`LINGER`]: see [`Engine::lingers`].
const STREAMING: std::time::Duration = std::time::Duration::from_millis(10);

/// Messages waiting in the outbox when the driver finds it that show the writer streams.
const STREAMING_FRAMES: usize = 8;

/// How long fed messages may wait for more while the writer streams.
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// The driver's watch over the application's reader (see [`Engine::reader_watch`]).
#[derive(Clone, Copy, Debug)]
struct Watch {
    /// When the driver looks next.
    at: Instant,
    /// `Wakers::reader_rounds` when it last looked.
    rounds: u64,
}

/// Who runs a round of the engine, and so what it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// The spawned driver: everything, and the timer.
    Driver,
    /// The application's reader, wanting a message: reads (and writes the replies it owes).
    Reader,
    /// The application's writer: hands what it encoded to the connection, and flushes.
    Writer,
}

/// A waker slot.
#[derive(Debug, Default)]
pub(super) struct Slot(Mutex<Option<Waker>>);

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Option<Waker>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, waker: &Waker) {
        let mut slot = self.lock();
        match &*slot {
            Some(old) if old.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    /// The waiting task's waker, left in place.
    fn get(&self) -> Option<Waker> {
        self.lock().clone()
    }

    pub(super) fn clear(&self) {
        self.lock().take();
    }

    /// Wakes the waiting task, if any: whether there was one.
    fn wake(&self) -> bool {
        let waker = self.lock().take();
        match waker {
            Some(waker) => {
                waker.wake();
                true
            }
            None => false,
        }
    }
}

/// Who waits for what: the tasks the engine's fan-out wakers wake.
#[derive(Debug, Default)]
pub(super) struct Wakers {
    /// The driver task.
    driver: Slot,
    /// The application's reader, waiting for the connection to be readable.
    pub(super) reader: Slot,
    /// The application's writer, waiting for the connection to be writable.
    writer: Slot,
    /// The driver waits for the connection to be writable too.
    driver_writes: AtomicBool,
    /// Times the connection became writable (the write fan-out fired).
    writable: AtomicU64,
    /// Times the connection became readable (the read fan-out fired).
    fires: AtomicU64,
    /// `fires` when the reader's last round began.
    reader_fires: AtomicU64,
    /// Rounds the reader has begun.
    reader_rounds: AtomicU64,
    /// The reader's last round left it waiting on the connection.
    reader_registered: AtomicBool,
    /// The reader's last round left it coming back to read: waiting on the connection, or
    /// with messages to return first (it stopped at the poll budget or the byte bound).
    pub(super) reader_covers: AtomicBool,
    /// The driver leaves reading to the application's reader and watches it on a timer: the
    /// connection becoming readable wakes only the reader.
    driver_defers: AtomicBool,
    /// The driver found the engine locked by an application half's round and left its own
    /// round to that half, which runs it before it lets the engine go (or wakes the driver if
    /// the driver left just after it had looked).
    ///
    /// The driver used to wait for the lock. A writer streaming 1 MiB messages holds it for
    /// each write, so the driver, woken for anything meanwhile, sat in the lock's queue: every
    /// time the writer let the engine go it woke the driver's thread with a system call, took
    /// the lock back before that thread got it, and the thread went back to sleep; about sixty
    /// futex calls per driver round, and a thread taking turns with the receiver for a CPU.
    driver_deferred: AtomicBool,
}

impl Wakers {
    /// Wakes the driver if it left its round to an application half that has just let the
    /// engine go.
    fn wake_deferred_driver(&self) {
        if self.driver_deferred.swap(false, Ordering::SeqCst) {
            let _ = self.driver.wake();
        }
    }
}

/// Wakes the driver task.
struct DriverSide(Arc<Wakers>);

impl Wake for DriverSide {
    fn wake(self: Arc<Self>) {
        let _ = self.0.driver.wake();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.0.driver.wake();
    }
}

/// The connection is readable: wakes the application's reader, and the driver if it waits.
struct ReadSide(Arc<Wakers>);

impl Wake for ReadSide {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        // The driver too, unless it watches the reader on its timer (`Engine::reader_watch`):
        // if the reader does not come back for what arrived (it may have stopped reading while
        // its waker was registered), the driver reads it. Waking the driver on every readable
        // event cost a cross-thread wake-up and a round competing for the engine's lock per
        // event: a third of a busy session's receiving time.
        self.0.fires.fetch_add(1, Ordering::SeqCst);
        let reader_woken = self.0.reader.wake();
        if !reader_woken || !self.0.driver_defers.load(Ordering::SeqCst) {
            let _ = self.0.driver.wake();
        }
    }
}

/// The connection is writable: wakes the application's writer, and the driver if it waits.
struct WriteSide(Arc<Wakers>);

impl Wake for WriteSide {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.writable.fetch_add(1, Ordering::SeqCst);
        let writer_woken = self.0.writer.wake();
        if self.0.driver_writes.swap(false, Ordering::AcqRel) || !writer_woken {
            self.0.driver.wake();
        }
    }
}

/// What the application's halves ask of the engine, without naming the transport.
pub(super) trait Inline: Send + Sync {
    /// Reads what has arrived into the inbound queue, in the reader's task.
    fn read(&self, cx: &mut Context<'_>);

    /// Hands what the writer encoded to the connection and flushes it, in the writer's task:
    /// with `flush`, ready once everything is written. `None` leaves it to the driver (a close
    /// is under way, or the session is over).
    fn write(&self, cx: &mut Context<'_>, flush: bool) -> Option<Poll<Result<()>>>;
}

/// Drives a session: reads and writes its frames, sends and answers heartbeats, detects a dead
/// peer and runs the close handshake. Made by [`connect`](super::connect) or
/// [`accept`](super::accept); **spawn it** on your runtime. It resolves to the
/// [`SessionEnd`] once the session is over; by then both the [`SessionReader`] and the
/// [`SessionWriter`] report that end too.
///
/// When the application drops both halves of its [`Session`], the driver closes the session
/// with `REASON_CODE_NORMAL`.
#[must_use = "a session makes no progress unless its driver is polled (spawn it)"]
pub struct SessionDriver<T> {
    /// Dropped once the session is over, and the connection with it (the handles hold it
    /// only weakly).
    engine: Option<Arc<Mutex<Engine<T>>>>,
    shared: Arc<Shared>,
    done: Option<SessionEnd>,
}

/// The connection and the session's state, shared by the driver and the application's halves.
pub(super) struct Engine<T> {
    reader: ConnectionReader<ReadHalf<T>>,
    writer: ConnectionWriter<WriteHalf<T>>,
    state: SessionState,
    shared: Arc<Shared>,
    inbound: queue::Sender<Frame>,
    /// A received application message waiting for room in the inbound queue.
    pending_in: Option<Frame>,
    /// Received messages on their way into the inbound queue, added to it under one lock per
    /// batch rather than one per message.
    batch: VecDeque<Frame>,
    /// Their bytes (not yet in `Shared::inbound_bytes`).
    batch_bytes: usize,
    /// Items the inbound queue had room for, less the batch.
    inbound_room: usize,
    /// Bytes of received messages the inbound queue may hold (beyond one message).
    inbound_byte_limit: usize,
    outbound: outbox::Receiver<Marker>,
    /// Frames taken from the writer's outbox, on their way into the connection writer (empty
    /// in between; it keeps its allocation for the next swap).
    frames: crate::connection::EncodedFrames,
    /// The outbound queue is closed to new items (after a Close either way).
    outbound_closed: bool,
    /// Every outbound item has been taken (the queue ended).
    outbound_done: bool,
    /// After the peer's `Close`, the application is done sending: it has seen the end of its
    /// reader, dropped it, or closed the session itself. What it queued until then goes out,
    /// then `CloseOk`.
    app_done: bool,
    /// Reading is paused because the peer does not take our replies.
    read_paused: bool,
    flush_waiters: Vec<oneshot::Sender<Result<()>>>,
    close_waiters: Vec<oneshot::Sender<Result<()>>>,
    unflushed: bool,
    write_closed: bool,
    read_done: bool,
    timer: futures_timer::Delay,
    /// When `timer` fires, if it is armed and has not fired yet.
    timer_at: Option<Instant>,
    done: Option<SessionEnd>,
    /// Wake the driver task; the connection's read and write fan-outs.
    to_driver: Waker,
    read_side: Waker,
    write_side: Waker,
    /// The last read in this round left a waker with the connection.
    read_registered: bool,
    /// Application messages the reader's round has queued for it so far.
    reader_round_frames: usize,
    /// While the driver leaves reading to the application's reader: when it looks again, and
    /// what it saw last time.
    watch: Option<Watch>,
    /// When the writer last handed a full batch to the connection itself (`Inline::write`
    /// without a flush).
    streamed_at: Option<Instant>,
    /// The driver leaves what the writer fed in the outbox until then (the writer streams).
    linger: Option<Instant>,
    /// `Wakers::writable` when a write to the connection last found it full: until the write
    /// fan-out fires again, writing would find it full again (see
    /// [`writer_ready`](Engine::writer_ready)).
    write_blocked_at: Option<u64>,
}

fn lock<T>(engine: &Mutex<Engine<T>>) -> MutexGuard<'_, Engine<T>> {
    // A panic in a round leaves a state that the next round handles or ends.
    engine.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T> std::fmt::Debug for SessionDriver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionDriver")
            .field("session", &self.shared.info.session_id)
            .field("end", &self.done)
            .finish_non_exhaustive()
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> SessionDriver<T> {
    pub(super) fn start(
        reader: ConnectionReader<ReadHalf<T>>,
        writer: ConnectionWriter<WriteHalf<T>>,
        info: SessionInfo,
        config: &SessionConfig,
    ) -> (Session, Self) {
        let now = Instant::now();
        let mut reader = reader;
        if info.heartbeat.is_some() {
            // The application's reader holds frames in the inbound queue while the connection
            // is read on: receive buffers are reused across pauses and given back once the
            // reader is found idle at a heartbeat deadline (`poll_timer`).
            reader.defer_trim();
        }
        let state = SessionState::new(
            info.heartbeat,
            config.missed_heartbeats(),
            config.close_timeout(),
            now,
        );
        let shared = Arc::new(Shared {
            info: Arc::new(info),
            end: Mutex::new(None),
            rtt_nanos: Default::default(),
            inbound_bytes: Default::default(),
            driver_waker: Default::default(),
            driver_waits_for_room: Default::default(),
            reader_done: Default::default(),
            stats: Default::default(),
            wakers: Default::default(),
            engine: Default::default(),
        });
        let (inbound, inbound_rx) = queue::bounded(config.queue_len());
        let (outbound_tx, outbound) = outbox::outbox(config.queue_len());
        let wakers = &shared.wakers;
        let engine = Engine {
            to_driver: Waker::from(Arc::new(DriverSide(wakers.clone()))),
            read_side: Waker::from(Arc::new(ReadSide(wakers.clone()))),
            write_side: Waker::from(Arc::new(WriteSide(wakers.clone()))),
            read_registered: false,
            reader_round_frames: 0,
            watch: None,
            streamed_at: None,
            linger: None,
            write_blocked_at: None,
            reader,
            writer,
            state,
            shared: shared.clone(),
            inbound,
            pending_in: None,
            batch: VecDeque::new(),
            batch_bytes: 0,
            inbound_room: 0,
            inbound_byte_limit: config.receive_buffer_len(),
            outbound,
            frames: crate::connection::EncodedFrames::default(),
            outbound_closed: false,
            outbound_done: false,
            app_done: false,
            read_paused: false,
            flush_waiters: Vec::new(),
            close_waiters: Vec::new(),
            unflushed: false,
            write_closed: false,
            read_done: false,
            timer: futures_timer::Delay::new(std::time::Duration::from_secs(3600)),
            timer_at: None,
            done: None,
        };
        let engine = Arc::new(Mutex::new(engine));
        let inline: Weak<dyn Inline> = Arc::downgrade(&engine) as Weak<Mutex<Engine<T>>>;
        let _ = shared.engine.set(inline);
        let session = Session {
            reader: SessionReader {
                inbound: inbound_rx,
                taken: VecDeque::new(),
                returned: 0,
                shared: shared.clone(),
                names: Default::default(),
                finished: false,
            },
            writer: SessionWriter::new(outbound_tx, shared.clone()),
        };
        let driver = Self {
            engine: Some(engine),
            shared,
            done: None,
        };
        crate::metrics::facade::session_opened();
        (session, driver)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Engine<T> {
    /// Reads frames while the application has room for them, and queues them for it. Returns
    /// whether anything happened.
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut Context<'_>,
        role: Role,
        now: Instant,
        budget: &mut usize,
    ) -> bool {
        self.read_registered = false;
        let progress = self.poll_read_batch(cx, io, role, now, budget);
        self.flush_inbound();
        progress
    }

    /// Makes the connection's receive counts readable from the handles.
    fn publish_received(&self) {
        let received = self.reader.stats();
        let stats = &self.shared.stats;
        stats
            .frames_received
            .store(received.frames_received, Ordering::Relaxed);
        stats
            .bytes_received
            .store(received.bytes_received, Ordering::Relaxed);
    }

    /// Moves the batch of received messages into the inbound queue (the reader is woken once
    /// per burst, in `poll`).
    fn flush_inbound(&mut self) {
        // Counted before the application can see what was read.
        self.publish_received();
        if self.batch.is_empty() {
            return;
        }
        // Counted before the reader can take them, so its subtraction never comes first.
        self.shared
            .inbound_bytes
            .fetch_add(self.batch_bytes, Ordering::SeqCst);
        self.batch_bytes = 0;
        if self.inbound.send_batch(&mut self.batch).is_err() {
            log::debug!("{}: reader dropped; discarding messages", self.shared.info);
            self.batch.clear();
        }
    }

    /// `cx` is the driver's context, `io` the connection's read fan-out.
    fn poll_read_batch(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut Context<'_>,
        role: Role,
        now: Instant,
        budget: &mut usize,
    ) -> bool {
        let mut progress = false;
        loop {
            if let Some(frame) = self.pending_in.take() {
                let len = queued_len(&frame);
                if !self.inbound_has_room(len, cx) {
                    self.pending_in = Some(frame);
                    self.state.on_receive_blocked(now);
                    return progress;
                }
                // The reader takes everything it reads at once: only the byte bound holds it.
                if self.inbound_room == 0 && role != Role::Reader {
                    self.flush_inbound();
                    match self.inbound.poll_room(cx) {
                        Poll::Ready(Ok(room)) => self.inbound_room = room,
                        Poll::Ready(Err(_)) => {
                            log::debug!(
                                "{}: reader dropped; discarding a message",
                                self.shared.info
                            );
                            progress = true;
                            continue;
                        }
                        Poll::Pending => {
                            self.pending_in = Some(frame);
                            self.state.on_receive_blocked(now);
                            return progress;
                        }
                    }
                }
                self.inbound_room = self.inbound_room.saturating_sub(1);
                self.batch_bytes += len;
                self.batch.push_back(frame);
                progress = true;
                if role == Role::Reader {
                    self.reader_round_frames += 1;
                }
            }
            if self.read_done || self.state.end().is_some() || *budget == 0 {
                return progress;
            }
            if self.state.replies_backed_up() {
                // The peer keeps sending but does not take our replies: read again once they
                // are out (the writer wakes us), so what we owe it stays bounded.
                if !self.read_paused {
                    self.read_paused = true;
                    self.shared
                        .stats
                        .read_pauses
                        .fetch_add(1, Ordering::Relaxed);
                    log::debug!(
                        "{}: peer does not read our replies; pausing reads",
                        self.shared.info
                    );
                }
                return progress;
            }
            self.read_paused = false;
            self.read_registered = false;
            if role == Role::Reader && self.reader_round_frames > 0 && !self.reader.frame_buffered()
            {
                // The reader has messages: it returns them before the next read from the
                // stream. Once it has, the read buffer is no longer shared with them and is
                // read into again rather than replaced (a copy and an allocation per large
                // message otherwise).
                return progress;
            }
            match self.reader.poll_next_frame(io) {
                Poll::Ready(Some(Ok(frame))) => {
                    *budget -= 1;
                    progress = true;
                    self.pending_in = self.state.handle_view(frame, now);
                    if *self.state.phase() == Phase::PeerClosed && !self.inbound.is_closed() {
                        // Every message the peer sent before its Close is queued: the
                        // application reads them, then the end of its reader.
                        if let Some(outcome) = self.state.outcome() {
                            self.shared.set_end(outcome.clone());
                        }
                        self.flush_inbound();
                        self.inbound.close_channel();
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let end = match &e {
                        // Bad bytes from the peer (PROTOCOL.md, section 6).
                        Error::FrameTooLarge { .. }
                        | Error::InvalidLengthPrefix
                        | Error::Decode { .. } => SessionEnd::ProtocolViolation {
                            reason: e.to_string(),
                        },
                        _ => SessionEnd::Transport(Arc::new(e)),
                    };
                    self.state.fail(end);
                    return true;
                }
                Poll::Ready(None) => {
                    self.read_done = true;
                    self.state.handle_eof();
                    return true;
                }
                Poll::Pending => {
                    self.read_registered = true;
                    return progress;
                }
            }
        }
    }

    /// Whether a received message of `len` bytes fits under the inbound byte bound (one
    /// message always fits in an empty queue). If not, the reader wakes the driver when it
    /// takes a message.
    fn inbound_has_room(&self, len: usize, cx: &mut Context<'_>) -> bool {
        let batch = self.batch_bytes;
        let fits = |queued: usize| {
            let queued = queued + batch;
            queued == 0 || queued + len <= self.inbound_byte_limit
        };
        if fits(self.shared.inbound_bytes.load(Ordering::SeqCst)) {
            return true;
        }
        self.shared.driver_waker.register(cx.waker());
        self.shared
            .driver_waits_for_room
            .store(true, Ordering::SeqCst);
        // The reader may have taken messages between the check and the registration.
        fits(self.shared.inbound_bytes.load(Ordering::SeqCst))
    }

    /// Moves queued application messages into the connection writer.
    /// `cx` is the driver's context, `io` the connection's write fan-out.
    fn poll_outbound(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut Context<'_>,
        role: Role,
        now: Instant,
        budget: &mut usize,
    ) -> bool {
        let mut progress = false;
        let phase = self.state.phase().clone();
        // Decided first, so that a linger that is due always ends here (the timer reports it
        // as progress until then).
        let lingering = role == Role::Driver && self.lingers(now, phase == Phase::Open);
        if phase == Phase::PeerClosed && !self.app_done {
            // The application sends on until it has seen the end of its reader (or dropped it,
            // or closes the session itself, below).
            self.shared.driver_waker.register(cx.waker());
            if self.shared.reader_done.load(Ordering::Acquire) {
                self.app_done = true;
            }
        }
        let takes_no_more = match phase {
            Phase::Open => false,
            Phase::PeerClosed => self.app_done,
            Phase::Closing | Phase::Finishing => true,
        };
        if takes_no_more && !self.outbound_closed {
            // No new message is taken. Those already queued are still sent when the peer
            // closed (below), and dropped when this side closed (they were queued after the
            // Close). Sends from now on fail with how the session is ending (recorded before
            // the queue closes, so a woken writer finds it); `finish` records the final end.
            if let Some(outcome) = self.state.outcome() {
                self.shared.set_end(outcome.clone());
            }
            self.outbound.close();
            self.outbound_closed = true;
        }
        if self.outbound_done && phase == Phase::PeerClosed {
            // Everything the application queued is in the writer: acknowledge.
            self.state.ack_close(now);
            return true;
        }
        if self.outbound_done && self.inbound.is_closed() && phase == Phase::Open {
            log::debug!("{}: session dropped by the application", self.shared.info);
            self.state
                .close(ReasonCode::Normal, "session dropped".into(), now);
            return true;
        }
        if lingering {
            return progress;
        }
        loop {
            let phase = self.state.phase().clone();
            if self.outbound_done
                || *budget == 0
                || matches!(phase, Phase::Closing | Phase::Finishing)
            {
                return progress;
            }
            match self.writer_ready(io) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    self.state.fail(SessionEnd::Transport(Arc::new(e)));
                    return true;
                }
                Poll::Pending => return progress,
            }
            // A round leaves the driver registered for the next message unless the driver
            // lingers (its timer brings it back): registering it while it lingers would have
            // every batch the writer empties wake it once more.
            let register = self.linger.is_none();
            let item = match self.outbound.poll_take(cx, &mut self.frames, register) {
                Poll::Ready(item) => item,
                Poll::Pending => return progress,
            };
            progress = true;
            match item {
                Some(Item::Frames(count)) => {
                    *budget = budget.saturating_sub(count.max(1));
                    if let Err(e) = self.writer.append_encoded(&mut self.frames, count) {
                        // The writer checked the lengths; anything else is fatal.
                        self.state.fail(SessionEnd::Transport(Arc::new(e)));
                        return true;
                    }
                    self.state.on_sent(now);
                    self.unflushed = true;
                }
                Some(Item::Marker(Marker::Flush(done))) => {
                    self.flush_waiters.push(done);
                    self.unflushed = true;
                }
                Some(Item::Marker(Marker::Close { code, reason, done })) => {
                    self.close_waiters.push(done);
                    if phase == Phase::PeerClosed {
                        // Closing after the peer did: the application is done sending; what
                        // it queued before is still sent.
                        self.app_done = true;
                        self.outbound.close();
                        self.outbound_closed = true;
                    } else {
                        self.state.close(code, reason, now);
                    }
                }
                None => {
                    self.outbound_done = true;
                    if phase == Phase::PeerClosed {
                        // Everything the application queued is in the writer: acknowledge.
                        self.state.ack_close(now);
                    }
                }
            }
        }
    }

    /// Whether the driver leaves what the writer fed in the outbox for now.
    ///
    /// A writer feeding faster than the driver is scheduled hands its outbox to the connection
    /// itself whenever it holds a full batch (`SessionWriter::poll_ready_outbound`). Taking
    /// the outbox each time the driver is woken for it would cut that stream into small
    /// writes, each a system call and a cross-thread wake-up: the sending side's driver then
    /// used more CPU than the writer. So while the writer streams, the driver takes what it fed
    /// only [`LINGER`] after finding it (through the timer), and is not woken by each new
    /// message meanwhile. Sporadic feeds, flushes and close markers go at once, as before.
    ///
    /// When a linger ends while the writer still streams, the driver takes what waits and
    /// lingers again at once, without registering for the next message: its timer brings it
    /// back. Registering it would have the next message wake it, to find the writer holding
    /// the engine for its own batch (with 1 MiB messages, once per message).
    fn lingers(&mut self, now: Instant, open: bool) -> bool {
        if !open {
            self.linger = None;
            return false;
        }
        let frames = self.outbound.frames_only();
        // Streaming: a full batch went out from the writer's task lately, or more messages
        // came in since the driver was woken than a sporadic sender (one waiting for each
        // reply) ever has waiting.
        let streaming = frames.is_some_and(|frames| frames >= STREAMING_FRAMES)
            || self
                .streamed_at
                .is_some_and(|at| now.saturating_duration_since(at) < STREAMING);
        if let Some(at) = self.linger {
            if at > now {
                return true;
            }
            // Due: what waits is taken now; while the stream goes on, the next linger starts.
            self.linger = (streaming && frames.is_some()).then(|| now + LINGER);
            return false;
        }
        if frames.is_none_or(|frames| frames == 0) {
            return false;
        }
        if streaming {
            self.linger = Some(now + LINGER);
        }
        streaming
    }

    /// The connection writer's `poll_ready` with `io` (the write fan-out), without the system
    /// call that would find the connection full again.
    ///
    /// When a write finds the connection full, the transport registers the write fan-out and
    /// the write returns `Pending`; trying again before the fan-out fires only repeats that.
    /// A writer streaming into a session whose peer reads slower than it writes did exactly
    /// that: each time the peer made a little room, the writer's round wrote it and then tried
    /// twice more, each try a `writev` failing with `EAGAIN` (a million a second, half the
    /// sending thread's time).
    fn writer_ready(&mut self, io: &mut Context<'_>) -> Poll<Result<()>> {
        // Below the mark, `poll_ready` writes nothing: no reason to skip it.
        let writes = self.writer.over_high_water();
        self.unless_full(writes, |writer| Pin::new(writer).poll_ready(io))
    }

    /// The connection writer's `poll_flush`, like [`writer_ready`](Self::writer_ready).
    fn writer_flush(&mut self, io: &mut Context<'_>) -> Poll<Result<()>> {
        self.unless_full(true, |writer| Pin::new(writer).poll_flush(io))
    }

    /// Runs `write` unless it `writes` to a connection that found it full and has not fired
    /// its write fan-out since; notes a `Pending` write as finding it full.
    fn unless_full(
        &mut self,
        writes: bool,
        write: impl FnOnce(&mut ConnectionWriter<WriteHalf<T>>) -> Poll<Result<()>>,
    ) -> Poll<Result<()>> {
        let fired = self.shared.wakers.writable.load(Ordering::SeqCst);
        if writes && self.write_blocked_at == Some(fired) {
            return Poll::Pending;
        }
        let poll = write(&mut self.writer);
        if poll.is_pending() {
            self.write_blocked_at = Some(fired);
        }
        poll
    }

    /// Sends control frames, flushes, and shuts the write side down once the close handshake
    /// is done.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> bool {
        // `cx` is the connection's write fan-out.
        let mut progress = false;
        while self.state.wants_transmit() {
            match self.writer_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    self.state.fail(SessionEnd::Transport(Arc::new(e)));
                    return true;
                }
                Poll::Pending => break,
            }
            if let Some(frame) = self.state.poll_transmit() {
                if let Err(e) = Pin::new(&mut self.writer).start_send(frame) {
                    self.state.fail(SessionEnd::Transport(Arc::new(e)));
                    return true;
                }
                // Control frames do not postpone our own Ping (the state counted a Ping when it
                // made it): answering the peer's Pings must not stop ours, or only one side
                // would ever measure the round-trip time.
                self.unflushed = true;
                progress = true;
            }
        }
        if self.unflushed {
            match self.writer_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.unflushed = false;
                    for done in self.flush_waiters.drain(..) {
                        let _ = done.send(Ok(()));
                    }
                    // A writer whose own flush waited on the connection is done too (the
                    // connection may not wake it: this write went through without waiting).
                    let _ = self.shared.wakers.writer.wake();
                    progress = true;
                }
                Poll::Ready(Err(e)) => {
                    self.state.fail(SessionEnd::Transport(Arc::new(e)));
                    return true;
                }
                Poll::Pending => {}
            }
        }
        if *self.state.phase() == Phase::Finishing
            && !self.unflushed
            && !self.state.wants_transmit()
            && !self.write_closed
        {
            match Pin::new(&mut self.writer).poll_close(cx) {
                Poll::Ready(result) => {
                    if let Err(e) = result {
                        // The close handshake is complete; only the end of stream is lost.
                        log::debug!("{}: shutting down: {e}", self.shared.info);
                    }
                    self.write_closed = true;
                    progress = true;
                }
                Poll::Pending => {}
            }
        }
        progress
    }

    /// Handles the state's deadline once it has passed, and keeps the timer armed for it.
    ///
    /// The timer is re-armed only when the deadline moved earlier than it (or it fired): most
    /// deadlines move later (every message sent or received postpones the next heartbeat), and
    /// a timer that fires early costs one wake-up that finds nothing due and re-arms it. So a
    /// busy session does not reset a timer per poll, and an idle one is woken once per deadline.
    /// The reader watch ([`reader_watch`](Self::reader_watch)) shares the timer: a watch that
    /// is due makes progress, and the next look handles it.
    fn poll_timer(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let deadline = self.state.poll_timeout();
        if deadline.is_some_and(|at| at <= now) {
            self.state.handle_timeout(now);
            // A heartbeat deadline: a receive buffer kept while the link was idle goes.
            self.reader.trim();
            return true;
        }
        let watch = self.watch.map(|watch| watch.at);
        if watch.is_some_and(|at| at <= now) || self.linger.is_some_and(|at| at <= now) {
            return true;
        }
        let Some(at) = deadline.into_iter().chain(watch).chain(self.linger).min() else {
            return false;
        };
        // Armed for no later than the deadline and not fired: leave it. Fired early (the
        // deadline moved later meanwhile) or armed too late: re-arm below.
        if self.timer_at.is_some_and(|armed| armed <= at) && self.timer.poll_unpin(cx).is_pending()
        {
            return false;
        }
        self.timer.reset(at - now);
        self.timer_at = Some(at);
        if self.timer.poll_unpin(cx).is_ready() {
            // The deadline passed meanwhile; the next round handles it.
            self.timer_at = None;
            return true;
        }
        false
    }

    /// Makes the state's counters readable from the handles.
    fn publish_stats(&self) {
        let stats = &self.shared.stats;
        let (frames, bytes) = self.state.queued_control();
        debug_assert!(frames <= super::state::MAX_QUEUED_CONTROL_FRAMES);
        stats.control_frames.store(frames, Ordering::Relaxed);
        stats.control_bytes.store(bytes, Ordering::Relaxed);
        stats.control_bytes_peak.fetch_max(bytes, Ordering::Relaxed);
        stats
            .pongs_coalesced
            .store(self.state.pongs_coalesced(), Ordering::Relaxed);
        self.publish_received();
        let sent = self.writer.stats();
        stats.frames_sent.store(sent.frames_sent, Ordering::Relaxed);
        stats.bytes_sent.store(sent.bytes_sent, Ordering::Relaxed);
    }

    fn finish(&mut self, end: SessionEnd) -> SessionEnd {
        match &end {
            e if e.is_graceful() => log::debug!("{}: {e}", self.shared.info),
            e => log::info!("{}: ended: {e}", self.shared.info),
        }
        // Record the end before closing the queues: woken handles read it. The messages
        // received before the end are still delivered.
        self.shared.set_end(end.clone());
        self.flush_inbound();
        self.inbound.close_channel();
        self.outbound.close();
        let result = if end.is_graceful() {
            Ok(())
        } else {
            Err(Error::Session(end.clone()))
        };
        for done in self
            .flush_waiters
            .drain(..)
            .chain(self.close_waiters.drain(..))
        {
            let _ = done.send(match &result {
                Ok(()) => Ok(()),
                Err(_) => Err(Error::Session(end.clone())),
            });
        }
        self.done = Some(end.clone());
        // Halves waiting on the connection learn the end now.
        let _ = self.shared.wakers.reader.wake();
        let _ = self.shared.wakers.writer.wake();
        crate::metrics::facade::session_ended(end.is_graceful());
        end
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Engine<T> {
    /// Whether the driver leaves reading to the application's reader now.
    ///
    /// While the application's reader keeps coming back to read, it reads, not the driver:
    /// the connection becoming readable wakes only the reader (`driver_defers`), and the
    /// driver looks every [`READER_WATCH`] whether the reader still comes back. A reader that
    /// was owed a round (the connection fired since its last one began, or its last one
    /// stopped with more to read) and has begun none since the driver's last look has stopped
    /// reading (its task dropped the future, or does something else): the driver reads for
    /// it, so Pings are answered and the peer's messages queued. Once a look finds the reader
    /// waiting on the connection and nothing new, the watch ends and the next firing wakes the
    /// driver again, so an idle session's timer stays idle. The driver always reads while the
    /// session closes, and when a deadline is due (so that silence is judged on everything
    /// that arrived).
    fn reader_watch(&mut self, wakers: &Wakers, now: Instant) -> bool {
        let defers = *self.state.phase() == Phase::Open
            && wakers.reader_covers.load(Ordering::SeqCst)
            && self.state.poll_timeout().is_none_or(|at| at > now);
        if !defers {
            self.watch = None;
            wakers.driver_defers.store(false, Ordering::SeqCst);
            return false;
        }
        let fires = wakers.fires.load(Ordering::SeqCst);
        let rounds = wakers.reader_rounds.load(Ordering::SeqCst);
        let look = |rounds| Watch {
            at: now + READER_WATCH,
            rounds,
        };
        match self.watch {
            Some(watch) if watch.at > now => {}
            Some(watch) if watch.rounds == rounds => {
                let owed = wakers.reader_fires.load(Ordering::SeqCst) != fires
                    || !wakers.reader_registered.load(Ordering::SeqCst);
                if owed {
                    // The reader did not come back within a whole watch: the driver reads.
                    self.watch = None;
                    wakers.driver_defers.store(false, Ordering::SeqCst);
                    return false;
                }
                // Waiting on the connection, and nothing arrived since the last look: stop
                // watching, and be woken by the next firing (looked at again after the store,
                // which a firing may have just missed).
                wakers.driver_defers.store(false, Ordering::SeqCst);
                if wakers.fires.load(Ordering::SeqCst) == fires {
                    self.watch = None;
                } else {
                    wakers.driver_defers.store(true, Ordering::SeqCst);
                    self.watch = Some(look(rounds));
                }
            }
            _ => {
                wakers.driver_defers.store(true, Ordering::SeqCst);
                self.watch = Some(look(rounds));
            }
        }
        true
    }

    /// One round of work for `role`, whose task's context is `cx`: up to the poll budget, or
    /// until nothing more can be done without waiting. Ready with the end once the session is
    /// over. An application half's round never touches the timer (it is the driver's); it wakes
    /// the driver whenever it changed what the driver waits for.
    fn round(&mut self, role: Role, cx: &mut Context<'_>) -> Poll<SessionEnd> {
        if let Some(end) = &self.done {
            return Poll::Ready(end.clone());
        }
        let wakers = self.shared.wakers.clone();
        let to_driver = self.to_driver.clone();
        let read_side = self.read_side.clone();
        let write_side = self.write_side.clone();
        let mut io_read = Context::from_waker(&read_side);
        let mut io_write = Context::from_waker(&write_side);
        let mut driver_cx = Context::from_waker(&to_driver);
        let phase_before = self.state.phase().clone();
        let timer_before = self.timer_at;
        match role {
            Role::Driver => wakers.driver.set(cx.waker()),
            Role::Reader => wakers.reader.set(cx.waker()),
            Role::Writer => wakers.writer.set(cx.waker()),
        }
        if role == Role::Reader {
            self.reader_round_frames = 0;
            wakers
                .reader_fires
                .store(wakers.fires.load(Ordering::SeqCst), Ordering::SeqCst);
            wakers.reader_rounds.fetch_add(1, Ordering::SeqCst);
        }
        let mut budget = POLL_BUDGET;
        let result = loop {
            let now = Instant::now();
            // Everything but the connection and the timer wakes the driver (whose own waker is
            // in the slot when it runs this round).
            let dcx = &mut driver_cx;
            let mut progress = false;
            let reads = match role {
                Role::Reader => true,
                Role::Writer => false,
                Role::Driver => !self.reader_watch(&wakers, now),
            };
            if reads {
                progress |= self.poll_read(dcx, &mut io_read, role, now, &mut budget);
                if role == Role::Reader {
                    let comes_back = self.read_registered
                        || budget == 0
                        || self.pending_in.is_some()
                        || self.reader_round_frames > 0;
                    wakers.reader_covers.store(comes_back, Ordering::SeqCst);
                    wakers
                        .reader_registered
                        .store(self.read_registered, Ordering::SeqCst);
                    if !self.read_registered {
                        // Not waiting on the connection: the driver reads meanwhile.
                        wakers.reader.clear();
                    }
                }
            }
            if role == Role::Driver {
                self.inbound.wake_receiver();
            }
            if role != Role::Reader {
                progress |= self.poll_outbound(dcx, &mut io_write, role, now, &mut budget);
            }
            progress |= self.poll_write(&mut io_write);
            self.publish_stats();
            if let Some(rtt) = self.state.rtt() {
                let nanos = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX).max(1);
                if self.shared.rtt_nanos.load(Ordering::Relaxed) != nanos {
                    self.shared.rtt_nanos.store(nanos, Ordering::Relaxed);
                    crate::metrics::facade::session_rtt(rtt);
                }
            }
            if let Some(end) = self.state.end().cloned() {
                break Poll::Ready(self.finish(end));
            }
            if role == Role::Driver {
                progress |= self.poll_timer(cx, now);
                if let Some(end) = self.state.end().cloned() {
                    break Poll::Ready(self.finish(end));
                }
            }
            if !progress {
                break Poll::Pending;
            }
            if budget == 0 {
                // Let other tasks run; come back at once.
                cx.waker().wake_by_ref();
                break Poll::Pending;
            }
        };
        if role != Role::Writer {
            // The driver waits on the write side when what it or the reader wrote is stuck
            // (an application half's round leaves replies it could not write to the driver);
            // not otherwise, or a writer streaming into a full connection would wake it, to
            // wait for the lock, on every writable event.
            let stuck = self.unflushed || self.state.wants_transmit();
            wakers.driver_writes.store(stuck, Ordering::Release);
        }
        if role != Role::Driver {
            let timer_moved_earlier = self
                .state
                .poll_timeout()
                .is_some_and(|at| timer_before.is_none_or(|armed| at < armed));
            // A reader that stopped with more to read while the driver does not watch it:
            // the driver starts watching (see `reader_watch`).
            let unwatched = role == Role::Reader
                && !self.read_registered
                && !wakers.driver_defers.load(Ordering::SeqCst);
            if result.is_ready()
                || timer_moved_earlier
                || *self.state.phase() != phase_before
                || self.state.wants_transmit()
                || self.read_paused
                || unwatched
            {
                to_driver.wake_by_ref();
            }
        }
        result
    }

    /// Whether everything the writer encoded has been written and flushed.
    fn flushed(&self) -> bool {
        !self.unflushed && self.outbound.is_empty() && !self.state.wants_transmit()
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Inline for Mutex<Engine<T>> {
    fn read(&self, cx: &mut Context<'_>) {
        let mut engine = lock(self);
        let _ = engine.round(Role::Reader, cx);
        let_go(engine);
    }

    fn write(&self, cx: &mut Context<'_>, flush: bool) -> Option<Poll<Result<()>>> {
        let mut engine = lock(self);
        let written = engine.write_round(cx, flush);
        let_go(engine);
        written
    }
}

/// Ends an application half's turn with the engine: runs the driver's round if the driver
/// left it to this half (`Wakers::driver_deferred`), here rather than after a wake-up of the
/// driver's task, and unlocks.
fn let_go<T: AsyncRead + AsyncWrite + Unpin>(mut engine: MutexGuard<'_, Engine<T>>) {
    let wakers = engine.shared.wakers.clone();
    if wakers.driver_deferred.swap(false, Ordering::SeqCst) {
        // No waker: the driver has been woken since, and runs its round itself.
        if let Some(driver) = wakers.driver.get() {
            if engine
                .round(Role::Driver, &mut Context::from_waker(&driver))
                .is_ready()
            {
                // The driver task ends once it sees the end.
                driver.wake();
            }
        }
    }
    drop(engine);
    // Deferred while this turn was ending: the driver runs its round itself.
    wakers.wake_deferred_driver();
}

impl<T: AsyncRead + AsyncWrite + Unpin> Engine<T> {
    /// [`Inline::write`] with the engine locked.
    fn write_round(&mut self, cx: &mut Context<'_>, flush: bool) -> Option<Poll<Result<()>>> {
        // Flush and close markers, and everything after the peer's Close, go through the
        // driver: it orders them with the close handshake.
        if self.done.is_some() || *self.state.phase() != Phase::Open || self.outbound.has_markers()
        {
            return None;
        }
        if !flush {
            // A full batch: the writer streams (see `Engine::lingers`).
            self.streamed_at = Some(Instant::now());
        }
        if self.round(Role::Writer, cx).is_ready() {
            return None;
        }
        if !flush || self.flushed() {
            return Some(Poll::Ready(Ok(())));
        }
        // The round did all it could: what is left waits for the connection, whose write
        // fan-out wakes this task (or the round ran out of budget and woke it).
        Some(Poll::Pending)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Future for SessionDriver<T> {
    type Output = SessionEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<SessionEnd> {
        let this = self.get_mut();
        if let Some(end) = &this.done {
            return Poll::Ready(end.clone());
        }
        let Some(engine) = &this.engine else {
            return Poll::Ready(SessionEnd::Disconnected);
        };
        let wakers = &this.shared.wakers;
        let mut engine = match engine.try_lock() {
            Ok(engine) => engine,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => {
                // An application half is running a round: it runs the driver's round too
                // before it lets the engine go (`Wakers::driver_deferred`).
                wakers.driver.set(cx.waker());
                wakers.driver_deferred.store(true, Ordering::SeqCst);
                match engine.try_lock() {
                    Ok(engine) => engine,
                    Err(TryLockError::Poisoned(e)) => e.into_inner(),
                    Err(TryLockError::WouldBlock) => return Poll::Pending,
                }
            }
        };
        let result = engine.round(Role::Driver, cx);
        drop(engine);
        if let Poll::Ready(end) = &result {
            this.done = Some(end.clone());
            // The handles hold the engine weakly: the connection goes now.
            this.engine = None;
        }
        result
    }
}
