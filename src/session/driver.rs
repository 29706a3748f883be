//! The session driver: the one future that does a session's I/O.
//!
//! It owns the connection and feeds the sans-IO [`SessionState`] with frames and time. Reading,
//! writing and the timer are polled side by side in one `poll`, so a write blocked by a peer
//! that stopped reading never keeps the driver from noticing the silence.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use crate::connection::{ReadHalf, WriteHalf};
use futures_channel::oneshot;
use futures_io::{AsyncRead, AsyncWrite};
use futures_sink::Sink;
use futures_util::{FutureExt, StreamExt};
use prost_types::Any;

use super::queue;
use super::state::{Phase, SessionState};
use super::{queued_len, SessionWriter, Shared};
use super::{Outbound, Session, SessionConfig, SessionEnd, SessionInfo, SessionReader};
use crate::connection::{ConnectionReader, ConnectionWriter};
use crate::error::{Error, Result};
use crate::proto::v1::ReasonCode;

/// Frames handled in one `poll` before the driver yields to other tasks.
const POLL_BUDGET: usize = 256;

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
    reader: ConnectionReader<ReadHalf<T>>,
    writer: ConnectionWriter<WriteHalf<T>>,
    state: SessionState,
    shared: Arc<Shared>,
    inbound: queue::Sender<Any>,
    /// A received application message waiting for room in the inbound queue.
    pending_in: Option<Any>,
    /// Bytes of received messages the inbound queue may hold (beyond one message).
    inbound_byte_limit: usize,
    outbound: queue::Receiver<Outbound>,
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
    done: Option<SessionEnd>,
}

impl<T> std::fmt::Debug for SessionDriver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionDriver")
            .field("session", &self.shared.info.session_id)
            .field("phase", self.state.phase())
            .field("end", &self.done)
            .finish_non_exhaustive()
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> SessionDriver<T> {
    pub(super) fn start(
        reader: ConnectionReader<ReadHalf<T>>,
        writer: ConnectionWriter<WriteHalf<T>>,
        info: SessionInfo,
        config: &SessionConfig,
    ) -> (Session, Self) {
        let now = Instant::now();
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
            reader_done: Default::default(),
            stats: Default::default(),
        });
        let (inbound, inbound_rx) = queue::bounded(config.queue_len());
        let (outbound_tx, outbound) = queue::bounded(config.queue_len());
        let session = Session {
            reader: SessionReader {
                inbound: inbound_rx,
                shared: shared.clone(),
                finished: false,
            },
            writer: SessionWriter::new(outbound_tx, shared.clone()),
        };
        let driver = Self {
            reader,
            writer,
            state,
            shared,
            inbound,
            pending_in: None,
            inbound_byte_limit: config.receive_buffer_len(),
            outbound,
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
            done: None,
        };
        crate::metrics::facade::session_opened();
        (session, driver)
    }

    /// Reads frames while the application has room for them. Returns whether anything happened.
    fn poll_read(&mut self, cx: &mut Context<'_>, now: Instant, budget: &mut usize) -> bool {
        let mut progress = false;
        loop {
            if let Some(any) = self.pending_in.take() {
                let len = queued_len(&any);
                if !self.inbound_has_room(len, cx) {
                    self.pending_in = Some(any);
                    self.state.on_receive_blocked(now);
                    return progress;
                }
                match self.inbound.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        self.shared.inbound_bytes.fetch_add(len, Ordering::AcqRel);
                        // Only fails if the reader is gone, which drops the message as below.
                        // The reader is woken once per burst, in `poll`.
                        let _ = self.inbound.start_send_quietly(any);
                    }
                    Poll::Ready(Err(_)) => {
                        log::debug!("{}: reader dropped; discarding a message", self.shared.info)
                    }
                    Poll::Pending => {
                        self.pending_in = Some(any);
                        self.state.on_receive_blocked(now);
                        return progress;
                    }
                }
                progress = true;
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
            match self.reader.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(any))) => {
                    *budget -= 1;
                    progress = true;
                    self.pending_in = self.state.handle_frame(any, now);
                    if *self.state.phase() == Phase::PeerClosed && !self.inbound.is_closed() {
                        // Every message the peer sent before its Close is queued: the
                        // application reads them, then the end of its reader.
                        if let Some(outcome) = self.state.outcome() {
                            self.shared.set_end(outcome.clone());
                        }
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
                Poll::Pending => return progress,
            }
        }
    }

    /// Whether a received message of `len` bytes fits under the inbound byte bound (one
    /// message always fits in an empty queue). If not, the reader wakes the driver when it
    /// takes a message.
    fn inbound_has_room(&self, len: usize, cx: &mut Context<'_>) -> bool {
        let fits = |queued: usize| queued == 0 || queued + len <= self.inbound_byte_limit;
        if fits(self.shared.inbound_bytes.load(Ordering::Acquire)) {
            return true;
        }
        self.shared.driver_waker.register(cx.waker());
        // The reader may have taken messages between the check and the registration.
        fits(self.shared.inbound_bytes.load(Ordering::Acquire))
    }

    /// Moves queued application messages into the connection writer.
    fn poll_outbound(&mut self, cx: &mut Context<'_>, now: Instant, budget: &mut usize) -> bool {
        let mut progress = false;
        let phase = self.state.phase().clone();
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
        loop {
            let phase = self.state.phase().clone();
            if self.outbound_done
                || *budget == 0
                || matches!(phase, Phase::Closing | Phase::Finishing)
            {
                return progress;
            }
            match Pin::new(&mut self.writer).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    self.state.fail(SessionEnd::Transport(Arc::new(e)));
                    return true;
                }
                Poll::Pending => return progress,
            }
            let item = match self.outbound.poll_next(cx) {
                Poll::Ready(item) => item,
                Poll::Pending => return progress,
            };
            progress = true;
            match item {
                Some(Outbound::Message(any)) => {
                    *budget -= 1;
                    if let Err(e) = Pin::new(&mut self.writer).start_send(any) {
                        // The writer checked the length; anything else is fatal.
                        self.state.fail(SessionEnd::Transport(Arc::new(e)));
                        return true;
                    }
                    self.state.on_sent(now);
                    self.unflushed = true;
                }
                Some(Outbound::Flush(done)) => {
                    self.flush_waiters.push(done);
                    self.unflushed = true;
                }
                Some(Outbound::Close { code, reason, done }) => {
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

    /// Sends control frames, flushes, and shuts the write side down once the close handshake
    /// is done.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while self.state.wants_transmit() {
            match Pin::new(&mut self.writer).poll_ready(cx) {
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
            match Pin::new(&mut self.writer).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.unflushed = false;
                    for done in self.flush_waiters.drain(..) {
                        let _ = done.send(Ok(()));
                    }
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

    fn poll_timer(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let Some(at) = self.state.poll_timeout() else {
            return false;
        };
        if at <= now {
            self.state.handle_timeout(now);
            return true;
        }
        self.timer.reset(at - now);
        // Ready only if the deadline passed meanwhile; the next round handles it.
        self.timer.poll_unpin(cx).is_ready()
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
        let (received, sent) = (self.reader.stats(), self.writer.stats());
        stats
            .frames_received
            .store(received.frames_received, Ordering::Relaxed);
        stats
            .bytes_received
            .store(received.bytes_received, Ordering::Relaxed);
        stats.frames_sent.store(sent.frames_sent, Ordering::Relaxed);
        stats.bytes_sent.store(sent.bytes_sent, Ordering::Relaxed);
    }

    fn finish(&mut self, end: SessionEnd) -> SessionEnd {
        match &end {
            e if e.is_graceful() => log::debug!("{}: {e}", self.shared.info),
            e => log::info!("{}: ended: {e}", self.shared.info),
        }
        // Record the end before closing the queues: woken handles read it.
        self.shared.set_end(end.clone());
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
        crate::metrics::facade::session_ended(end.is_graceful());
        end
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Future for SessionDriver<T> {
    type Output = SessionEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<SessionEnd> {
        let this = self.get_mut();
        if let Some(end) = &this.done {
            return Poll::Ready(end.clone());
        }
        let mut budget = POLL_BUDGET;
        loop {
            let now = Instant::now();
            let mut progress = this.poll_read(cx, now, &mut budget);
            this.inbound.wake_receiver();
            progress |= this.poll_outbound(cx, now, &mut budget);
            progress |= this.poll_write(cx);
            this.publish_stats();
            if let Some(rtt) = this.state.rtt() {
                let nanos = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX).max(1);
                if this.shared.rtt_nanos.load(Ordering::Relaxed) != nanos {
                    this.shared.rtt_nanos.store(nanos, Ordering::Relaxed);
                    crate::metrics::facade::session_rtt(rtt);
                }
            }
            if let Some(end) = this.state.end().cloned() {
                return Poll::Ready(this.finish(end));
            }
            progress |= this.poll_timer(cx, now);
            if let Some(end) = this.state.end().cloned() {
                return Poll::Ready(this.finish(end));
            }
            if !progress {
                return Poll::Pending;
            }
            if budget == 0 {
                // Let other tasks run; come back at once.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }
}
