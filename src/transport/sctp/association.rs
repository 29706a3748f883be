//! One association and its share of the driver's rounds: who holds it ([`Owner`]), what its
//! stream and the driver know about it ([`Assoc`]), what one round does with it ([`Round`]:
//! timers, events, end of stream, SCTP's shutdown, packets to send), and the errors its stream
//! reports.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;
use std::panic::{catch_unwind, AssertUnwindSafe};

use sctp_proto::{
    Association, AssociationError, AssociationHandle, Chunks, Event, Payload,
    PayloadProtocolIdentifier, Side, StreamEvent,
};

use super::SctpConfig;

/// The one SCTP stream of an association that carries the byte stream.
pub(super) const STREAM_ID: u16 = 0;
/// Payload protocol id of data messages (binary, as WebRTC's).
pub(super) const DATA_PPI: PayloadProtocolIdentifier = PayloadProtocolIdentifier::Binary;
/// Payload protocol id of the end-of-stream marker: a one-byte "empty" message, which is how
/// WebRTC sends empty messages (SCTP has no zero-length user messages).
pub(super) const FIN_PPI: PayloadProtocolIdentifier = PayloadProtocolIdentifier::BinaryEmpty;
/// Largest SCTP user message sent or accepted. The byte stream is cut into messages of at most
/// this size, so the peer's reassembly never needs more than this per message whatever the
/// frame size.
pub(super) const MAX_MESSAGE: usize = 64 * 1024;

/// Datagrams queued for sending at most; associations are asked for more only below this.
const MAX_OUTGOING: usize = 512;

/// Who holds an association.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Owner {
    /// Accepted by the endpoint, not yet by the application (server side).
    Unaccepted,
    /// An `SctpStream` is using it.
    Stream,
    /// Its `SctpStream` was dropped (or never taken): the driver sends the end-of-stream marker,
    /// discards what arrives, and removes it once shut down or when the linger time is over.
    Dropped,
}

/// One association and what the driver and its stream know about it.
pub(super) struct Assoc {
    pub(super) inner: Association,
    pub(super) side: Side,
    pub(super) owner: Owner,
    pub(super) connected: bool,
    /// Why the association ended, once it has.
    pub(super) lost: Option<AssociationError>,
    pub(super) read_waker: Option<Waker>,
    pub(super) write_waker: Option<Waker>,
    /// A received message only partly read so far.
    pub(super) pending: Option<Chunks>,
    /// Messages taken out of the association when the peer started SCTP's shutdown, which
    /// ends with `sctp-proto` dropping whatever was not read yet. Bounded by the receive window.
    pub(super) received: VecDeque<Chunks>,
    pub(super) fin_sent: bool,
    /// Everything written, the end-of-stream marker included, has been acknowledged.
    pub(super) fin_acked: bool,
    pub(super) fin_received: bool,
    pub(super) shutdown_started: bool,
    /// SCTP shutdown has completed (or the association is otherwise gone for good).
    pub(super) finished: bool,
    /// Handshake deadline (before `connected`) or linger deadline (once `Dropped`).
    pub(super) deadline: Option<Instant>,
    /// When the driver has to look at this association again unless something touches it.
    pub(super) next_wake: Option<Instant>,
    /// Had more packets than fit the send queue last time.
    pub(super) more_to_send: bool,
    /// A server-side association still in its handshake: the address its INIT came from.
    pub(super) half_open_from: Option<IpAddr>,
    /// Its processing panicked (or the driver died): `inner` is never called into again.
    pub(super) crashed: bool,
    /// Test hook: panic the next time the driver processes this association.
    #[cfg(test)]
    pub(super) panic_next_round: bool,
}

impl Assoc {
    pub(super) fn new(
        inner: Association,
        owner: Owner,
        handshake_deadline: Option<Instant>,
    ) -> Self {
        Self {
            side: inner.side(),
            inner,
            owner,
            connected: false,
            lost: None,
            read_waker: None,
            write_waker: None,
            pending: None,
            received: VecDeque::new(),
            fin_sent: false,
            fin_acked: false,
            fin_received: false,
            shutdown_started: false,
            finished: false,
            deadline: handshake_deadline,
            next_wake: None,
            more_to_send: false,
            half_open_from: None,
            crashed: false,
            #[cfg(test)]
            panic_next_round: false,
        }
    }

    /// Ends the association after a panic in its processing, without calling into `inner`
    /// again (its state may be inconsistent). Its stream reads and writes fail from now on.
    pub(super) fn crash(&mut self) {
        self.crashed = true;
        if self.lost.is_none() {
            self.lost = Some(AssociationError::TransportError);
        }
        self.finished = true;
        self.pending = None;
        self.half_open_from = None;
        self.wake_all();
    }

    pub(super) fn wake_all(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }

    /// Bytes written but not yet acknowledged by the peer (`None` once the stream is gone).
    pub(super) fn buffered(&mut self) -> Option<usize> {
        self.inner
            .stream(STREAM_ID)
            .ok()
            .and_then(|s| s.buffered_amount().ok())
    }

    /// Queues the end-of-stream marker after everything written so far.
    pub(super) fn send_fin(&mut self) -> io::Result<()> {
        if self.fin_sent {
            return Ok(());
        }
        let mut stream = self.inner.stream(STREAM_ID).map_err(to_io)?;
        stream
            .write_sctp(&Bytes::from_static(&[0]), FIN_PPI)
            .map_err(to_io)?;
        self.fin_sent = true;
        Ok(())
    }

    /// Marks the association as given up by its stream: it lingers until shut down.
    pub(super) fn drop_owner(&mut self, linger: Duration) {
        self.owner = Owner::Dropped;
        if self.crashed {
            return;
        }
        self.read_waker = None;
        self.write_waker = None;
        self.pending = None;
        self.received.clear();
        // A duration too long to add means no deadline.
        self.deadline = Instant::now().checked_add(linger);
        if self.connected && self.lost.is_none() {
            if let Err(e) = self.send_fin() {
                log::debug!("cannot send end of stream on drop: {e}");
            }
        }
    }

    pub(super) fn close(&mut self, reason: AssociationError) {
        let _ = self.inner.close();
        if self.lost.is_none() {
            self.lost = Some(reason);
        }
        self.finished = true;
        self.wake_all();
    }
}

/// Converts a protocol error of `sctp-proto` into an I/O error.
pub(super) fn to_io(e: sctp_proto::Error) -> io::Error {
    io::Error::other(format!("SCTP: {e}"))
}

/// The error a stream reports once its association is gone.
pub(super) fn lost_error(reason: &AssociationError) -> io::Error {
    let kind = match reason {
        AssociationError::TimedOut => io::ErrorKind::TimedOut,
        AssociationError::AssociationClosed
        | AssociationError::ApplicationClosed
        | AssociationError::Reset => io::ErrorKind::ConnectionReset,
        AssociationError::LocallyClosed => io::ErrorKind::NotConnected,
        _ => io::ErrorKind::ConnectionAborted,
    };
    io::Error::new(kind, format!("SCTP association ended: {reason}"))
}

/// The error of a stream whose association crashed (a panic while processing it), or whose
/// driver is gone (`driver_gone`).
pub(super) fn crashed_error(driver_gone: bool) -> io::Error {
    if driver_gone {
        return self::driver_gone();
    }
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "SCTP association ended by an internal error (see the log)",
    )
}

/// The error of a listener or stream whose endpoint driver is gone.
pub(super) fn driver_gone() -> io::Error {
    io::Error::other(
        "SCTP endpoint driver ended before its work was done: it crashed, or its executor \
         dropped it (see the log)",
    )
}

/// What one round of [`State::process`] works with besides the association at hand.
pub(super) struct Round<'a> {
    pub(super) now: Instant,
    pub(super) config: &'a SctpConfig,
    pub(super) listening: bool,
    pub(super) failed: Option<io::ErrorKind>,
    pub(super) refused: bool,
    pub(super) accept_queue: &'a mut VecDeque<AssociationHandle>,
    pub(super) accept_waker: &'a mut Option<Waker>,
    pub(super) outgoing: &'a mut VecDeque<(SocketAddr, Bytes)>,
    pub(super) backlogged: &'a mut bool,
}

impl Round<'_> {
    /// One association's share of a round: timers, events, its stream, its packets. Returns
    /// whether it is over and can be removed.
    pub(super) fn association(&mut self, handle: AssociationHandle, assoc: &mut Assoc) -> bool {
        #[cfg(test)]
        if assoc.panic_next_round {
            assoc.panic_next_round = false;
            panic!("injected for a test");
        }
        let now = self.now;
        let high_water = self.config.send_buffer;
        if let Some(kind) = self.failed {
            assoc.close(AssociationError::TransportError);
            log::debug!("SCTP: association failed with its socket: {kind:?}");
        }
        if self.refused {
            // Port unreachable on a client's connected socket: nobody (any more) at the
            // peer's address, what a TCP reset would say.
            assoc.close(AssociationError::Reset);
        }
        if assoc.deadline.is_some_and(|d| d <= now) {
            if assoc.owner == Owner::Dropped {
                log::debug!("SCTP: linger time over, closing an association");
            } else if !assoc.connected {
                log::debug!("SCTP: handshake timed out");
            }
            if assoc.owner == Owner::Dropped || !assoc.connected {
                assoc.close(AssociationError::TimedOut);
            }
            assoc.deadline = None;
        }
        let inner = &mut assoc.inner;
        let ticked = catch_unwind(AssertUnwindSafe(|| {
            if inner.poll_timeout().is_some_and(|t| t <= now) {
                inner.handle_timeout(now);
            }
            // The only endpoint event is "drained", which `shutdown` emits at once, while
            // packets still have to be routed: the driver tells the endpoint itself when it
            // removes the association.
            while inner.poll_endpoint_event().is_some() {}
        }));
        if ticked.is_err() {
            log::error!("SCTP: a timer crashed its association");
            assoc.close(AssociationError::TransportError);
        }
        while let Some(event) = assoc.inner.poll() {
            on_event(
                handle,
                assoc,
                event,
                self.accept_queue,
                self.accept_waker,
                self.config,
                self.listening,
            );
        }
        if assoc.owner == Owner::Dropped {
            discard_incoming(assoc);
        } else if assoc.inner.is_closing() {
            keep_incoming(assoc);
        }
        let buffered = assoc.buffered();
        if assoc.fin_sent && buffered == Some(0) {
            assoc.fin_acked = true;
        }
        // The client starts SCTP's shutdown once both ends have sent their end of stream
        // and everything is acknowledged; the server waits for it (no shutdown collision).
        if assoc.side == Side::Client
            && assoc.fin_acked
            && assoc.fin_received
            && !assoc.shutdown_started
            && assoc.lost.is_none()
        {
            assoc.shutdown_started = true;
            if let Err(e) = assoc.inner.shutdown() {
                log::debug!("SCTP: shutdown: {e}");
            }
        }
        let mut more_to_send = true;
        while self.outgoing.len() < MAX_OUTGOING {
            match assoc.inner.poll_transmit(now) {
                Some(transmit) => {
                    if let Payload::RawEncode(packets) = transmit.payload {
                        self.outgoing
                            .extend(packets.into_iter().map(|p| (transmit.remote, p)));
                    }
                }
                None => {
                    more_to_send = false;
                    break;
                }
            }
        }
        *self.backlogged |= more_to_send;
        assoc.more_to_send = more_to_send;
        // `sctp-proto` does not report the end of a shutdown it started: it is over once
        // SHUTDOWN COMPLETE went out and no timer is left.
        if assoc.shutdown_started && !more_to_send && assoc.inner.poll_timeout().is_none() {
            assoc.finished = true;
            if assoc.lost.is_none() {
                assoc.lost = Some(AssociationError::LocallyClosed);
            }
            assoc.wake_all();
        }
        if assoc.lost.is_some() {
            assoc.finished = true;
            assoc.wake_all();
        } else if assoc.write_waker.is_some() {
            let ready = match buffered {
                None => true,
                Some(b) if assoc.fin_sent => b == 0,
                Some(b) => b < high_water,
            };
            if ready {
                if let Some(w) = assoc.write_waker.take() {
                    w.wake();
                }
            }
        }
        // Half-open associations that never completed their handshake go too: nobody
        // will ever accept them.
        let abandoned =
            assoc.owner == Owner::Dropped || (assoc.owner == Owner::Unaccepted && !assoc.connected);
        if abandoned && assoc.finished {
            return true;
        }
        assoc.next_wake = [assoc.inner.poll_timeout(), assoc.deadline]
            .into_iter()
            .flatten()
            .min();
        false
    }
}

fn on_event(
    handle: AssociationHandle,
    assoc: &mut Assoc,
    event: Event,
    accept_queue: &mut VecDeque<AssociationHandle>,
    accept_waker: &mut Option<Waker>,
    config: &SctpConfig,
    listening: bool,
) {
    match event {
        Event::Connected => {
            assoc.connected = true;
            assoc.half_open_from = None;
            if assoc.owner != Owner::Dropped {
                assoc.deadline = None;
            }
            let open = match assoc.inner.stream(STREAM_ID) {
                Ok(_) => Ok(()),
                Err(_) => assoc.inner.open_stream(STREAM_ID, DATA_PPI).map(drop),
            };
            if let Err(e) = open {
                log::warn!("SCTP: cannot open the data stream: {e}");
                assoc.close(AssociationError::TransportError);
                return;
            }
            if assoc.owner == Owner::Dropped {
                // Its connect was abandoned: end the stream at once.
                if let Err(e) = assoc.send_fin() {
                    log::debug!("SCTP: cannot send end of stream: {e}");
                }
            } else if assoc.owner == Owner::Unaccepted {
                if listening && accept_queue.len() < config.backlog {
                    accept_queue.push_back(handle);
                    if let Some(w) = accept_waker.take() {
                        w.wake();
                    }
                } else {
                    // The peer reads an end of stream right away, as from a server that
                    // accepted and closed.
                    log::warn!("SCTP: accept queue full, ending a new association");
                    assoc.drop_owner(config.linger);
                }
            }
            assoc.wake_all();
        }
        Event::HandshakeFailed { reason } | Event::AssociationLost { reason } => {
            if assoc.fin_sent && assoc.fin_received {
                log::debug!("SCTP: association {handle:?} shut down");
            } else {
                log::debug!("SCTP: association {handle:?} ended: {reason}");
            }
            if assoc.lost.is_none() {
                assoc.lost = Some(reason);
            }
            assoc.wake_all();
        }
        Event::Stream(StreamEvent::Readable { id } | StreamEvent::Opened { id }) => {
            if id == STREAM_ID {
                if let Some(w) = assoc.read_waker.take() {
                    w.wake();
                }
            } else {
                // Only stream 0 carries data; anything else is read and dropped so it cannot
                // hold receive window.
                if let Ok(mut stream) = assoc.inner.stream(id) {
                    while let Ok(Some(_)) = stream.read_sctp() {}
                }
            }
        }
        Event::Stream(StreamEvent::BufferedAmountLow { .. }) => {
            if let Some(w) = assoc.write_waker.take() {
                w.wake();
            }
        }
        _ => {}
    }
}

/// Reads and drops what arrives on an association nobody reads any more, noting the peer's end
/// of stream.
fn discard_incoming(assoc: &mut Assoc) {
    let Ok(mut stream) = assoc.inner.stream(STREAM_ID) else {
        return;
    };
    while let Ok(Some(chunks)) = stream.read_sctp() {
        if chunks.ppi == FIN_PPI {
            assoc.fin_received = true;
        }
    }
}

/// Moves what has arrived out of a closing association, where its stream can still read it
/// after the association is gone.
fn keep_incoming(assoc: &mut Assoc) {
    let Ok(mut stream) = assoc.inner.stream(STREAM_ID) else {
        return;
    };
    let mut moved = false;
    while let Ok(Some(chunks)) = stream.read_sctp() {
        assoc.received.push_back(chunks);
        moved = true;
    }
    if moved {
        if let Some(w) = assoc.read_waker.take() {
            w.wake();
        }
    }
}
