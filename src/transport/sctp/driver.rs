//! The endpoint driver: one UDP socket, one `sctp_proto::Endpoint`, and every association on it.
//!
//! `sctp-proto` is sans-IO: it turns datagrams and timer expiries into events and datagrams to
//! send. [`Driver`] is the future that does the I/O for it (receive, send, timers), spawned once
//! per endpoint. [`SctpStream`](super::SctpStream)s and the listener share the [`State`] with it
//! behind one mutex: a stream reads from and writes into its association directly, then wakes
//! the driver to put the resulting packets on the wire.
//!
//! Every call into `sctp-proto` with bytes from the network, and each association's share of
//! a round, runs under `catch_unwind`: a packet that trips a bug (in the protocol crate or
//! here) ends that association only, never the driver, which serves every other association
//! on the port. If the driver itself dies anyway, it fails every association on its way out.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use bytes::Bytes;
use sctp_proto::{
    Association, AssociationError, AssociationHandle, Chunks, DatagramEvent, Endpoint,
    EndpointConfig, EndpointEvent, Event, Payload, PayloadProtocolIdentifier, ServerConfig, Side,
    StreamEvent,
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

/// Room for any UDP datagram.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams received per round before the associations get to run.
const RECV_BATCH: usize = 64;
/// Datagrams queued for sending at most; associations are asked for more only below this.
const MAX_OUTGOING: usize = 512;
/// Rounds of receive / process / send per wake-up before yielding to other tasks.
const ROUNDS: usize = 16;

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
    side: Side,
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
    shutdown_started: bool,
    /// SCTP shutdown has completed (or the association is otherwise gone for good).
    pub(super) finished: bool,
    /// Handshake deadline (before `connected`) or linger deadline (once `Dropped`).
    deadline: Option<Instant>,
    /// When the driver has to look at this association again unless something touches it.
    next_wake: Option<Instant>,
    /// Had more packets than fit the send queue last time.
    more_to_send: bool,
    /// A server-side association still in its handshake: the address its INIT came from.
    half_open_from: Option<IpAddr>,
    /// Its processing panicked (or the driver died): `inner` is never called into again.
    pub(super) crashed: bool,
    /// Test hook: panic the next time the driver processes this association.
    #[cfg(test)]
    pub(super) panic_next_round: bool,
}

impl Assoc {
    fn new(inner: Association, owner: Owner, handshake_deadline: Option<Instant>) -> Self {
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

    fn wake_all(&mut self) {
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

    fn close(&mut self, reason: AssociationError) {
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

/// The error of a stream whose association crashed (a panic while processing it).
pub(super) fn crashed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "SCTP association ended by an internal error (see the log)",
    )
}

/// The error of a listener whose endpoint driver is gone.
pub(super) fn driver_gone() -> io::Error {
    io::Error::other("SCTP endpoint driver ended by an internal error (see the log)")
}

/// Everything the driver, the listener and the streams share.
pub(super) struct State {
    endpoint: Endpoint,
    pub(super) assocs: HashMap<AssociationHandle, Assoc>,
    pub(super) accept_queue: VecDeque<AssociationHandle>,
    pub(super) accept_waker: Option<Waker>,
    /// A listener is accepting new associations.
    pub(super) listening: bool,
    driver_waker: Option<Waker>,
    /// A stream changed something the driver must look at.
    dirty: bool,
    /// Associations with news (a datagram, a stream operation) since the driver last ran:
    /// only these and those with a timer due are processed, so idle associations cost
    /// nothing per packet.
    touched: HashSet<AssociationHandle>,
    /// Process every association on the next run.
    touch_all: bool,
    /// Some association had more to send than fit in `outgoing`.
    backlogged: bool,
    outgoing: VecDeque<(SocketAddr, Bytes)>,
    pub(super) config: Arc<SctpConfig>,
    /// Set if the socket failed for good; every association then fails with it.
    pub(super) failed: Option<io::ErrorKind>,
    /// The socket is connected to its one peer (a client's): the kernel reports ICMP errors.
    connected_socket: bool,
    /// A client's socket reported the peer's port unreachable.
    refused: bool,
    /// Server-side associations still in their handshake, oldest first (entries whose
    /// association has since connected or gone are pruned when the list is next looked at).
    half_open: VecDeque<AssociationHandle>,
    /// The driver task ended without finishing its work (it panicked, or its runtime dropped
    /// it): every operation fails instead of waiting for it.
    pub(super) driver_gone: bool,
    /// Test hook: panic in the driver, outside any association's processing.
    #[cfg(test)]
    pub(super) panic_driver: bool,
}

impl State {
    /// Asks the driver to run: after a write, a read that freed receive window, a close.
    ///
    /// Wakes it only once per driver run: `dirty` is cleared when the driver starts a round
    /// with the lock held, so while it is set a wake-up is already on its way. (Waking per
    /// write cost more than the SCTP processing itself.)
    pub(super) fn wake_driver(&mut self, handle: AssociationHandle) {
        self.touched.insert(handle);
        self.wake();
    }

    fn wake(&mut self) {
        if self.dirty {
            return;
        }
        self.dirty = true;
        if let Some(w) = &self.driver_waker {
            w.wake_by_ref();
        }
    }

    /// Starts an outgoing association (client side).
    pub(super) fn connect(&mut self, remote: SocketAddr) -> io::Result<AssociationHandle> {
        let mut client = sctp_proto::ClientConfig::new();
        client.transport = self.config.transport_config();
        let (handle, inner) = self
            .endpoint
            .connect(client, remote)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let deadline = Instant::now().checked_add(self.config.handshake_timeout);
        self.assocs
            .insert(handle, Assoc::new(inner, Owner::Stream, deadline));
        self.wake_driver(handle);
        Ok(handle)
    }

    /// Stops accepting: new handshakes are refused, unaccepted associations are closed.
    pub(super) fn stop_listening(&mut self) {
        self.listening = false;
        self.endpoint.reject_new_associations();
        let linger = self.config.linger;
        for handle in self.accept_queue.drain(..) {
            if let Some(assoc) = self.assocs.get_mut(&handle) {
                assoc.drop_owner(linger);
            }
        }
        for assoc in self.assocs.values_mut() {
            if assoc.owner == Owner::Unaccepted {
                assoc.drop_owner(linger);
            }
        }
        self.touch_all = true;
        self.wake();
    }

    /// Server-side associations in their handshake, after pruning the list of those that have
    /// connected or gone since.
    pub(super) fn half_open(&mut self) -> usize {
        let assocs = &self.assocs;
        self.half_open.retain(|h| {
            assocs
                .get(h)
                .is_some_and(|a| a.half_open_from.is_some() && !a.connected && !a.finished)
        });
        self.half_open.len()
    }

    /// Before a new half-open association from `source`: if that source already has its
    /// share, its oldest half-open association is dropped without a word; if all sources
    /// together have the backlog, the oldest of the source holding the most is. A handshake
    /// takes one round trip, so a flood of INITs competes with itself first: a source with
    /// one handshake pending loses it only once every source has at most one.
    fn make_room_for_half_open(&mut self, source: IpAddr) {
        let total = self.half_open();
        let mut per_source: HashMap<IpAddr, (usize, AssociationHandle)> = HashMap::new();
        for handle in &self.half_open {
            if let Some(ip) = self.assocs.get(handle).and_then(|a| a.half_open_from) {
                // Oldest first, so the first handle seen per source is its oldest.
                per_source.entry(ip).or_insert((0, *handle)).0 += 1;
            }
        }
        let victim = match per_source.get(&source) {
            Some(&(count, oldest)) if count >= self.config.max_half_open_per_source => Some(oldest),
            _ if total >= self.config.backlog => per_source
                .values()
                .max_by_key(|(count, _)| *count)
                .map(|&(_, oldest)| oldest),
            _ => None,
        };
        if let Some(handle) = victim {
            log::debug!("SCTP: too many handshakes pending, dropping the oldest ({source})");
            self.half_open.retain(|h| *h != handle);
            self.assocs.remove(&handle);
            self.endpoint.handle_event(handle, EndpointEvent::drained());
        }
    }

    /// Feeds one received datagram to the endpoint and the association it belongs to.
    fn handle_datagram(&mut self, now: Instant, remote: SocketAddr, data: Bytes) {
        let endpoint = &mut self.endpoint;
        let routed = catch_unwind(AssertUnwindSafe(|| {
            endpoint.handle(now, remote, None, None, data)
        }));
        match routed {
            Ok(None) => log::trace!("SCTP: ignored a datagram from {remote}"),
            Ok(Some((handle, DatagramEvent::AssociationEvent(event)))) => {
                self.touched.insert(handle);
                if let Some(assoc) = self.assocs.get_mut(&handle).filter(|a| !a.crashed) {
                    let inner = &mut assoc.inner;
                    if catch_unwind(AssertUnwindSafe(|| inner.handle_event(event))).is_err() {
                        log::error!("SCTP: a packet from {remote} crashed its association");
                        assoc.crash();
                    }
                }
            }
            Ok(Some((handle, DatagramEvent::NewAssociation(inner)))) => {
                if !self.listening {
                    log::debug!("SCTP: refusing an association from {remote}");
                    self.endpoint.handle_event(handle, EndpointEvent::drained());
                    return;
                }
                self.make_room_for_half_open(remote.ip());
                let deadline = now.checked_add(self.config.half_open_timeout());
                let mut assoc = Assoc::new(inner, Owner::Unaccepted, deadline);
                assoc.half_open_from = Some(remote.ip());
                self.assocs.insert(handle, assoc);
                self.half_open.push_back(handle);
                self.touched.insert(handle);
            }
            Err(_) => log::error!("SCTP: a datagram from {remote} crashed the endpoint's parser"),
        }
    }

    /// Lets every association react to time, events and its stream, and queues its packets.
    /// Returns the earliest time something has to happen next.
    ///
    /// Each association's work runs under `catch_unwind`: a panic (in `sctp-proto` or in our
    /// own code) fails that association only, and the driver goes on serving the others.
    fn process(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut remove = Vec::new();
        let all = std::mem::take(&mut self.touch_all) || self.failed.is_some() || self.refused;
        let touched = std::mem::take(&mut self.touched);
        let mut round = Round {
            now,
            config: &self.config,
            listening: self.listening,
            failed: self.failed,
            refused: self.refused,
            accept_queue: &mut self.accept_queue,
            accept_waker: &mut self.accept_waker,
            outgoing: &mut self.outgoing,
            backlogged: &mut self.backlogged,
        };
        for (&handle, assoc) in self.assocs.iter_mut() {
            let due = assoc.next_wake.is_some_and(|t| t <= now);
            if !(all || due || assoc.more_to_send || touched.contains(&handle)) {
                if let Some(t) = assoc.next_wake {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
                continue;
            }
            if assoc.crashed {
                // Never call into a crashed association again: it goes once nobody holds it.
                if assoc.owner != Owner::Stream {
                    remove.push(handle);
                }
                continue;
            }
            let done = catch_unwind(AssertUnwindSafe(|| round.association(handle, assoc)));
            match done {
                Ok(true) => remove.push(handle),
                Ok(false) => {
                    if let Some(t) = assoc.next_wake {
                        next = Some(next.map_or(t, |n| n.min(t)));
                    }
                }
                Err(_) => {
                    log::error!("SCTP: association {handle:?} crashed; ending it");
                    assoc.crash();
                    if assoc.owner != Owner::Stream {
                        remove.push(handle);
                    }
                }
            }
        }
        for handle in remove {
            self.assocs.remove(&handle);
            self.endpoint.handle_event(handle, EndpointEvent::drained());
            log::trace!("SCTP: association {handle:?} removed");
        }
        next
    }

    /// Fails every association and the listener: the driver is gone, so nothing would ever
    /// make progress again. Every waiting stream and `accept` wakes up to an error.
    fn fail_all(&mut self) {
        self.driver_gone = true;
        self.listening = false;
        for assoc in self.assocs.values_mut() {
            assoc.crash();
        }
        if let Some(w) = self.accept_waker.take() {
            w.wake();
        }
    }

    /// The driver's work is done: nobody listens and no association is left.
    fn done(&self) -> bool {
        !self.listening && self.assocs.is_empty()
    }
}

/// What one round of [`State::process`] works with besides the association at hand.
struct Round<'a> {
    now: Instant,
    config: &'a SctpConfig,
    listening: bool,
    failed: Option<io::ErrorKind>,
    refused: bool,
    accept_queue: &'a mut VecDeque<AssociationHandle>,
    accept_waker: &'a mut Option<Waker>,
    outgoing: &'a mut VecDeque<(SocketAddr, Bytes)>,
    backlogged: &'a mut bool,
}

impl Round<'_> {
    /// One association's share of a round: timers, events, its stream, its packets. Returns
    /// whether it is over and can be removed.
    fn association(&mut self, handle: AssociationHandle, assoc: &mut Assoc) -> bool {
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

/// What the listener and streams hold: the socket and the state.
pub(super) struct Shared {
    socket: Async<UdpSocket>,
    pub(super) local_addr: SocketAddr,
    state: Mutex<State>,
}

impl Shared {
    /// Binds a UDP socket with the configured buffer sizes and a fresh endpoint on it. A
    /// client endpoint is connected to its one peer, so the kernel drops datagrams from anyone
    /// else.
    pub(super) fn bind(
        local: SocketAddr,
        peer: Option<SocketAddr>,
        config: Arc<SctpConfig>,
    ) -> io::Result<Arc<Self>> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
        // Loopback bursts overflow the default buffers (~200 KiB); the kernel caps these at
        // net.core.{r,w}mem_max, which is fine.
        if let Err(e) = socket.set_recv_buffer_size(config.udp_buffer) {
            log::debug!("cannot set SO_RCVBUF: {e}");
        }
        if let Err(e) = socket.set_send_buffer_size(config.udp_buffer) {
            log::debug!("cannot set SO_SNDBUF: {e}");
        }
        socket.bind(&local.into())?;
        if let Some(peer) = peer {
            socket.connect(&peer.into())?;
        }
        let socket = Async::new(UdpSocket::from(socket))?;
        let local_addr = socket.get_ref().local_addr()?;

        let mut endpoint_config = EndpointConfig::new();
        // sctp-proto's "payload size" is an SCTP packet less its common and DATA chunk headers;
        // its bundling check leaves out one chunk header and padding, so keep 20 bytes more
        // (packets over the limit would be refused by the kernel, and retransmitted forever).
        endpoint_config.max_payload_size(config.mtu.saturating_sub(12 + 16 + 20) as u32);
        // A server config is always set: `sctp-proto` needs one to even look at an INIT (it
        // would panic without), and a client endpoint refuses them right after.
        let mut server = ServerConfig::new();
        server.transport = config.transport_config();
        let mut endpoint = Endpoint::new(Arc::new(endpoint_config), Some(Arc::new(server)));
        let listening = peer.is_none();
        if !listening {
            endpoint.reject_new_associations();
        }
        Ok(Arc::new(Self {
            socket,
            local_addr,
            state: Mutex::new(State {
                endpoint,
                assocs: HashMap::new(),
                accept_queue: VecDeque::new(),
                accept_waker: None,
                listening,
                driver_waker: None,
                dirty: false,
                touched: HashSet::new(),
                touch_all: false,
                backlogged: false,
                outgoing: VecDeque::new(),
                config,
                failed: None,
                connected_socket: peer.is_some(),
                refused: false,
                half_open: VecDeque::new(),
                driver_gone: false,
                #[cfg(test)]
                panic_driver: false,
            }),
        }))
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // Calls into sctp-proto are unwind-protected, so a poisoned lock can only come from a
        // bug of ours; the state is still consistent enough to fail associations cleanly.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The future that does the endpoint's I/O. Ends once nothing listens and every association is
/// gone.
pub(super) struct Driver {
    shared: Arc<Shared>,
    timer: Timer,
    recv_buf: Box<[u8]>,
    /// Finished (or failed everything): nothing is left to do, even on drop.
    done: bool,
}

impl Driver {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            timer: Timer::never(),
            recv_buf: vec![0; MAX_DATAGRAM].into_boxed_slice(),
            done: false,
        }
    }

    /// Sends queued datagrams until done or the socket would block (then registered for
    /// writability). A datagram the kernel refuses for another reason is dropped: SCTP
    /// retransmits, as for any loss.
    fn send(socket: &Async<UdpSocket>, state: &mut State, cx: &mut Context<'_>) {
        while let Some((to, packet)) = state.outgoing.front() {
            match socket.get_ref().send_to(packet, *to) {
                Ok(_) => {
                    state.outgoing.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match socket.poll_writable(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => {
                            log::warn!("SCTP: UDP socket failed: {e}");
                            state.failed = Some(e.kind());
                            state.outgoing.clear();
                        }
                        Poll::Pending => {}
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("SCTP: sending to {to} failed: {e}");
                    state.outgoing.pop_front();
                }
            }
        }
    }

    /// One wake-up's work: receive, process, send, for up to [`ROUNDS`] rounds.
    fn run(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let shared = self.shared.clone();
        let mut state = shared.lock();
        #[cfg(test)]
        if std::mem::take(&mut state.panic_driver) {
            panic!("injected for a test");
        }
        if !state
            .driver_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.driver_waker = Some(cx.waker().clone());
        }
        for _ in 0..ROUNDS {
            state.dirty = false;
            state.backlogged = false;
            let now = Instant::now();
            let received = self.receive(&mut state, cx, now);
            let next = state.process(now);
            Self::send(&shared.socket, &mut state, cx);
            if state.done() {
                log::trace!("SCTP: endpoint driver on {} done", shared.local_addr);
                return Poll::Ready(());
            }
            // Go round again if input is waiting, a stream asked for it, or an association
            // could not queue everything and the socket has taken the queue meanwhile.
            let busy = received == RECV_BATCH
                || state.dirty
                || (state.backlogged && state.outgoing.is_empty());
            match next {
                Some(t) if t <= Instant::now() => continue,
                _ if busy => continue,
                Some(t) => self.timer.set_at(t),
                None => self.timer = Timer::never(),
            }
            if Pin::new(&mut self.timer).poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        // Still busy after a full budget: let other tasks run, then go on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Receives up to a batch of datagrams. Returns how many; when it returns fewer than a
    /// batch the socket is registered for readability.
    fn receive(&mut self, state: &mut State, cx: &mut Context<'_>, now: Instant) -> usize {
        let mut received = 0;
        let mut errors = 0;
        while received < RECV_BATCH {
            match self.shared.socket.get_ref().recv_from(&mut self.recv_buf) {
                Ok((n, from)) => {
                    received += 1;
                    let data = Bytes::copy_from_slice(&self.recv_buf[..n]);
                    state.handle_datagram(now, from, data);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.shared.socket.poll_readable(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => {
                            log::warn!("SCTP: UDP socket failed: {e}");
                            state.failed = Some(e.kind());
                        }
                        Poll::Pending => {}
                    }
                    break;
                }
                // Only a connected (client) socket reports this: the peer's port is closed.
                Err(e)
                    if e.kind() == io::ErrorKind::ConnectionRefused && state.connected_socket =>
                {
                    log::debug!("SCTP: peer port unreachable");
                    state.refused = true;
                }
                // Other ICMP errors and the like: the association notices through its timers.
                Err(e) => {
                    log::trace!("SCTP: receive error: {e}");
                    errors += 1;
                    if errors > RECV_BATCH {
                        cx.waker().wake_by_ref();
                        break;
                    }
                }
            }
        }
        received
    }
}

impl Future for Driver {
    type Output = ();

    /// Runs [`Driver::run`] under `catch_unwind`: per-association work is contained there
    /// already, so a panic here is in the driver's own code, and the endpoint's state cannot be
    /// trusted any more. Every association and the listener then fail with an error.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(());
        }
        let polled = catch_unwind(AssertUnwindSafe(|| this.run(cx)));
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => {
                this.done = true;
                Poll::Ready(())
            }
            Err(_) => {
                log::error!(
                    "SCTP: the endpoint driver on {} crashed; failing its associations",
                    this.shared.local_addr
                );
                this.done = true;
                this.shared.lock().fail_all();
                Poll::Ready(())
            }
        }
    }
}

impl Drop for Driver {
    /// A driver dropped before its work was done (its runtime shut down, or its task was
    /// cancelled) fails everything that waits for it.
    fn drop(&mut self) {
        if !self.done {
            self.shared.lock().fail_all();
        }
    }
}
