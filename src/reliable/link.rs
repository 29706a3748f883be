//! A link: one session carrying a reliable stream, from the `Resume` exchange until the
//! session ends or a newer link takes the stream over.
//!
//! The link holds the stream's lock only to hand what it read to the stream's state and to
//! encode what the state has to send: it reads frames from its session before taking the lock
//! and hands the encoded frames to the connection after letting it go. The application's
//! reader and writers share that lock, and used to wait for the link's system calls (a
//! quarter of the futex calls of a 64 B stream were blocking waits on it).

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_io::{AsyncRead, AsyncWrite};
use futures_util::FutureExt;
use prost::{Message, Name};

use super::state::{queued_len, Transmit};
use super::{GiveUp, Inner};
use crate::codec::type_name;
use crate::connection::Frame;
use crate::proto::reliable::{Ack, Nack, Resume};
use crate::proto::v1::ReasonCode;
use crate::session::{SessionDriver, SessionReader, SessionWriter};

/// Frames handled in one poll before yielding.
const POLL_BUDGET: usize = 256;

/// Frames read from the session before they are handled under the stream's lock, at most:
/// as many as one poll handles, and their bytes (type URL and value; one frame may pass it).
const INBOX: usize = POLL_BUDGET;
const INBOX_BYTES: usize = 256 * 1024;

/// The message package of reliable delivery's control frames.
const PACKAGE: &str = "connect.reliable.v1.";

/// `Ack::full_name()` and `Nack::full_name()`, without building a `String` per frame.
const ACK_NAME: &str = "connect.reliable.v1.Ack";
const NACK_NAME: &str = "connect.reliable.v1.Nack";

/// How a link ended.
#[derive(Debug)]
pub(crate) enum LinkEnd {
    /// A newer link carries the stream.
    Superseded,
    /// The session closed gracefully (either side), or the stream ended meanwhile.
    Closed,
    /// The connection dropped; the stream may continue on another.
    Dropped(String),
    /// The peer broke the reliable protocol, or a message cannot be sent: give the stream up.
    Fatal(GiveUp),
}

pub(crate) use crate::codec::pack;

/// Polls `driver` alongside `fut`; `None` if the session ended before `fut` completed or
/// `limit` passed.
pub(crate) async fn with_driver<T, F>(
    driver: &mut Pin<Box<SessionDriver<T>>>,
    fut: F,
    limit: Duration,
) -> Option<F::Output>
where
    T: AsyncRead + AsyncWrite + Unpin,
    F: Future,
{
    let mut fut = std::pin::pin!(fut);
    let mut timer = futures_timer::Delay::new(limit);
    let mut driver_done = false;
    poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if !driver_done && driver.as_mut().poll(cx).is_ready() {
            driver_done = true;
            // The reader may still yield what arrived before the end.
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
        }
        if timer.poll_unpin(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// Reads the peer's `Resume` (the first frame after the handshake).
pub(crate) async fn read_resume(reader: &mut SessionReader) -> Result<Resume, GiveUp> {
    let first = match reader.recv().await {
        Ok(Some(first)) => first,
        Ok(None) => {
            return Err(GiveUp::ResumeFailed {
                reason: "session closed before Resume".into(),
            })
        }
        Err(e) => {
            return Err(GiveUp::ResumeFailed {
                reason: e.to_string(),
            })
        }
    };
    let name = type_name(&first.type_url);
    if name != Resume::full_name() {
        return Err(GiveUp::ProtocolViolation {
            reason: format!(
                "expected connect.reliable.v1.Resume, got {}",
                super::quoted(name)
            ),
        });
    }
    Resume::decode(first.value.as_slice()).map_err(|e| GiveUp::ProtocolViolation {
        reason: format!("bad Resume: {e}"),
    })
}

/// Runs the link until it ends: the session driver and the pump, side by side.
pub(crate) async fn run<T>(
    mut driver: Pin<Box<SessionDriver<T>>>,
    reader: SessionReader,
    writer: SessionWriter,
    inner: Arc<Inner>,
    generation: u64,
) -> LinkEnd
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut pump = Pump::new(inner, generation, reader, writer);
    let mut driver_done = false;
    let end = poll_fn(|cx| {
        // The driver first (it reads what the pump then takes), and once more if the pump
        // queued frames: they go out in this poll, not after a trip through the executor.
        for _ in 0..2 {
            if !driver_done && driver.as_mut().poll(cx).is_ready() {
                driver_done = true;
            }
            let step = pump.poll(cx);
            if step.is_ready() || driver_done || !std::mem::take(&mut pump.wrote) {
                return step;
            }
        }
        Poll::Pending
    })
    .await;
    if pump.reader_ended && !driver_done {
        // The peer closed and the reader has ended: with the reader and writer dropped, the
        // driver acknowledges the close (bounded by the close timeout).
        drop(pump);
        driver.await;
    }
    end
}

struct Pump {
    inner: Arc<Inner>,
    generation: u64,
    reader: SessionReader,
    writer: SessionWriter,
    /// Frames read from the session and not yet handled (at most [`INBOX`] and about
    /// [`INBOX_BYTES`]): read without the stream's lock, so the application's halves do not
    /// wait for the link's system calls, and handled under it in one go. A message waits here
    /// for room in the inbound queue, and what follows it waits behind it.
    inbox: VecDeque<Frame>,
    /// Their bytes (type URL and value).
    inbox_bytes: usize,
    /// How the session's reading ended, once the frames read before the end are handled.
    read_end: Option<LinkEnd>,
    /// The timer that wakes the link at the state's next deadline (`poll_timeout`): made once
    /// per link and reset, since making one allocates and resetting one wakes the timer thread.
    timer: Option<futures_timer::Delay>,
    /// When the timer fires, if it is armed: at or before the state's deadline (a timer that
    /// fires early wakes the link to arm it again, rather than every new deadline resetting
    /// it).
    armed: Option<Instant>,
    close_started: bool,
    /// The session is closing (either side): nothing more is written; reading goes on until
    /// its end.
    write_closed: bool,
    /// The session reader yielded its end (the session is closing gracefully).
    reader_ended: bool,
    /// Frames were queued for the driver since the flag was last cleared.
    wrote: bool,
    /// The session writer may write to the connection before it takes more: done after the
    /// stream's lock is let go.
    write_unlocked: bool,
    /// The session writer said it has room and nothing has been written since: the next frame
    /// goes out without asking again (it may have said so outside the lock).
    ready: bool,
    /// The `Any` every `Ack` is written through (its value overwritten each time).
    ack: prost_types::Any,
}

/// Whether a send failed because the session is closing gracefully.
fn closing(e: &crate::Error) -> bool {
    matches!(e, crate::Error::Session(end) if end.is_graceful())
}

impl Pump {
    fn new(
        inner: Arc<Inner>,
        generation: u64,
        reader: SessionReader,
        writer: SessionWriter,
    ) -> Self {
        Self {
            inner,
            generation,
            reader,
            writer,
            inbox: VecDeque::new(),
            inbox_bytes: 0,
            read_end: None,
            timer: None,
            armed: None,
            close_started: false,
            write_closed: false,
            reader_ended: false,
            wrote: false,
            write_unlocked: false,
            ready: false,
            ack: crate::codec::pack(&Ack::default()),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<LinkEnd> {
        let mut budget = POLL_BUDGET;
        let inner = self.inner.clone();
        loop {
            let mut progress = false;
            // Read without the lock: the session is the link's alone, and what is read
            // counts for the stream only once it is handled below.
            let mut read_idle = false;
            while self.read_end.is_none()
                && self.inbox.len() < INBOX
                && self.inbox_bytes < INBOX_BYTES
                && budget > 0
            {
                match self.reader.poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        budget -= 1;
                        progress = true;
                        self.inbox_bytes += queued_len(&frame);
                        self.inbox.push_back(frame);
                    }
                    Poll::Ready(Some(Err(e))) => {
                        self.read_end = Some(LinkEnd::Dropped(e.to_string()));
                    }
                    Poll::Ready(None) => {
                        self.reader_ended = true;
                        self.read_end = Some(LinkEnd::Closed);
                    }
                    Poll::Pending => {
                        read_idle = true;
                        break;
                    }
                }
            }

            // The lock is held for the rest of the step: a newer link (which bumps the
            // generation under the same lock) never interleaves with it.
            let mut core = inner.lock();
            if core.generation != self.generation {
                return Poll::Ready(LinkEnd::Superseded);
            }
            if core.end().is_some() {
                return Poll::Ready(LinkEnd::Closed);
            }
            core.register_link(cx.waker());

            // Handle what was read, in order, while the application has room.
            while let Some(frame) = self.inbox.front() {
                // What we owe the peer (refusals) is backed up: go on once written.
                if core.reading_paused() {
                    break;
                }
                // Control frames are decoded from the read buffer.
                let control = frame.type_name_bytes().starts_with(PACKAGE.as_bytes());
                if control {
                    let name = frame.type_name();
                    let value = frame.value();
                    let result = if name == ACK_NAME {
                        Ack::decode(value)
                            .map_err(|e| format!("bad Ack: {e}"))
                            .and_then(|ack| core.handle_ack(ack.delivered))
                    } else if name == NACK_NAME {
                        Nack::decode(value)
                            .map_err(|e| format!("bad Nack: {e}"))
                            .and_then(|nack| core.handle_nack(nack))
                    } else {
                        Err(format!("unexpected {}", super::quoted(name)))
                    };
                    if let Err(why) = result {
                        return Poll::Ready(LinkEnd::Fatal(GiveUp::ProtocolViolation {
                            reason: why,
                        }));
                    }
                } else if !core.has_room(queued_len(frame)) {
                    break;
                }
                let Some(frame) = self.inbox.pop_front() else {
                    break;
                };
                self.inbox_bytes -= queued_len(&frame);
                if !control {
                    core.handle_message(frame);
                }
                progress = true;
            }
            if self.inbox.is_empty() {
                if let Some(end) = self.read_end.take() {
                    return Poll::Ready(end);
                }
                if read_idle {
                    // Everything the peer sent so far is read and handled.
                    core.handle_read_idle();
                }
            }

            // The state's clock (the acknowledgement delay).
            core.handle_timeout(Instant::now());

            // Write: refusals and acknowledgements first, then messages, then the close. What
            // goes to the connection itself (a system call) is left for after the lock.
            while budget > 0 && !self.write_closed && !self.close_started {
                if !self.ready {
                    if self.writer.may_write() {
                        self.write_unlocked = true;
                        break;
                    }
                    match self.writer.poll_ready_outbound(cx) {
                        Poll::Ready(Ok(())) => self.ready = true,
                        Poll::Ready(Err(e)) if closing(&e) => {
                            self.write_closed = true;
                            break;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(LinkEnd::Dropped(e.to_string())),
                        Poll::Pending => break,
                    }
                }
                // Encoded straight into the session's outbox: our messages from the
                // retransmit queue where they stay, control frames without an `Any`.
                let sent = match core.poll_transmit() {
                    Some(Transmit::Ack(delivered)) => {
                        // Through an `Any` kept for it: the session writer remembers the type
                        // URL of one message type only, which `Ack`s between our messages
                        // would make it build again for each (two allocations each).
                        self.ack.value.clear();
                        Ack { delivered }.encode_raw(&mut self.ack.value);
                        self.writer.start_send_any(&self.ack)
                    }
                    Some(Transmit::Nack(nack)) => self.writer.start_send_message(&nack),
                    Some(Transmit::Message(message)) => {
                        budget -= 1;
                        message.write(&mut self.writer)
                    }
                    None => {
                        if core.close_requested && core.drained() && !self.close_started {
                            self.close_started = true;
                            self.ready = false;
                            if let Err(e) = self
                                .writer
                                .start_close(ReasonCode::Normal, "stream closed".into())
                            {
                                return Poll::Ready(LinkEnd::Dropped(e.to_string()));
                            }
                            progress = true;
                        }
                        break;
                    }
                };
                progress = true;
                self.wrote = true;
                self.ready = false;
                if let Err(e) = sent {
                    if closing(&e) {
                        self.write_closed = true;
                        break;
                    }
                    return Poll::Ready(match e {
                        crate::Error::FrameTooLarge { len, max } => {
                            LinkEnd::Fatal(GiveUp::MessageTooLarge { len, max })
                        }
                        e => LinkEnd::Dropped(e.to_string()),
                    });
                }
            }
            // A timer for the state's next deadline; once it fires, the next step's
            // `handle_timeout` acts on it.
            let deadline = core.poll_timeout();
            drop(core);
            if std::mem::take(&mut self.write_unlocked) {
                // The application's writers queue meanwhile instead of waiting for the lock.
                match self.writer.poll_ready_outbound(cx) {
                    Poll::Ready(Ok(())) => {
                        self.ready = true;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) if closing(&e) => {
                        self.write_closed = true;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(LinkEnd::Dropped(e.to_string())),
                    Poll::Pending => {}
                }
            }
            let mut timer_fired = false;
            if let Some(deadline) = deadline {
                if self.armed.is_none_or(|at| at > deadline) {
                    let delay = deadline.saturating_duration_since(Instant::now());
                    match &mut self.timer {
                        Some(timer) => timer.reset(delay),
                        None => self.timer = Some(futures_timer::Delay::new(delay)),
                    }
                    self.armed = Some(deadline);
                }
            }
            if let (Some(_), Some(timer)) = (self.armed, &mut self.timer) {
                if timer.poll_unpin(cx).is_ready() {
                    self.armed = None;
                    // With a deadline, the next step acts on it (or arms the timer again).
                    timer_fired = deadline.is_some();
                }
            }

            if budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if !progress && !timer_fired {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer streams while the application takes nothing: the link's inbox holds what it
    /// read beyond the stream's receive buffer only up to its bound, and reads no further.
    #[cfg(feature = "tcp")]
    #[test]
    fn the_inbox_stays_bounded_while_the_application_takes_nothing() {
        use crate::reliable::ReliableConfig;
        use crate::session::SessionConfig;
        use crate::ConnectionConfig;

        const FRAME: usize = 4096;
        async_std::task::block_on(async {
            let listener = async_net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let config = SessionConfig::new();
            let client = async_std::task::spawn(async move {
                let stream = async_net::TcpStream::connect(addr).await.unwrap();
                let conn = crate::transport::tcp::wrap(stream, &ConnectionConfig::default());
                let (session, driver) = crate::session::connect(conn, &SessionConfig::new())
                    .await
                    .unwrap();
                async_std::task::spawn(driver);
                let (_reader, mut writer) = session.split();
                let any = prost_types::Any {
                    type_url: "type.googleapis.com/test.Blob".into(),
                    value: vec![7; FRAME],
                };
                // Far more than the receive buffer, the inbox and the sockets hold: the
                // feeds stall once the link stops reading.
                for _ in 0..2_000 {
                    if writer.feed(any.clone()).await.is_err() {
                        break;
                    }
                }
            });
            let (stream, _) = listener.accept().await.unwrap();
            let conn = crate::transport::tcp::wrap(stream, &ConnectionConfig::default());
            let (session, driver) = crate::session::accept(conn, &config).await.unwrap();
            async_std::task::spawn(driver);
            let (reader, writer) = session.split();
            let inner = Inner::new(ReliableConfig::new().with_receive_buffer(1, 1 << 20));
            let generation = inner.lock().attach();
            let mut pump = Pump::new(inner.clone(), generation, reader, writer);
            // Polled until the inbox has been full for a while (bounded: 5 s).
            let mut most = 0;
            let mut full_for = 0;
            for _ in 0..500 {
                if full_for == 20 {
                    break;
                }
                poll_fn(|cx| {
                    assert!(pump.poll(cx).is_pending(), "the link goes on");
                    Poll::Ready(())
                })
                .await;
                assert!(pump.inbox.len() <= INBOX);
                assert!(
                    pump.inbox_bytes < INBOX_BYTES + FRAME + 100,
                    "{}",
                    pump.inbox_bytes
                );
                most = most.max(pump.inbox_bytes);
                if most >= INBOX_BYTES {
                    full_for += 1;
                }
                async_std::task::sleep(Duration::from_millis(10)).await;
            }
            assert!(
                most >= INBOX_BYTES,
                "the peer filled the inbox: {most} bytes"
            );
            assert_eq!(
                inner.lock().state().inbound_len().0,
                1,
                "the receive buffer is full"
            );
            drop(pump);
            client.cancel().await;
        });
    }

    #[test]
    fn control_frame_names_are_the_messages_full_names() {
        assert_eq!(ACK_NAME, Ack::full_name());
        assert_eq!(NACK_NAME, Nack::full_name());
        assert!(ACK_NAME.starts_with(PACKAGE) && NACK_NAME.starts_with(PACKAGE));
    }
}
