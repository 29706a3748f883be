//! The protocol of one reliable stream, sans-IO: numbering, retransmission, the peer's window,
//! cumulative acknowledgements, refusals, resumption. No clock, no wakers, no channels: the
//! caller pushes input in (`push`, `handle_message`, `handle_ack`, `handle_nack`, `take`,
//! `resume`, `handle_timeout(now)`) and pulls output out (`poll_transmit` for the next frame to
//! write, `poll_timeout` for when to call `handle_timeout`, `poll_event` for what happened to
//! the messages sent). `shared.rs` wraps it with the lock, wakers and confirmations.
//!
//! Numbering: application messages carry no header. Each side counts the messages it sends on a
//! stream, 0, 1, 2, ...; the receiver counts the same way, so a count identifies a message.
//! Locally every message gets a sequence number that never restarts (`base`, `next_write`, the
//! sequence numbers of [`StreamEvent`]s); `epoch` is the local number of the stream's message
//! 0, so the wire number of local message `n` is `n - epoch`. A new stream (the peer lost ours)
//! moves `epoch` to the first unconfirmed message, which is then retransmitted as the new
//! stream's message 0.

use std::collections::VecDeque;
use std::time::Instant;

use prost_types::Any;

use super::ReliableConfig;
use crate::connection::Frame;
use crate::proto::reliable::{Nack, NackReason};

/// Refusals kept until the peer is known to have seen them (see `resume`), in number and in
/// bytes (each `Nack`'s text is short: the refused type URL is escaped and capped). Beyond
/// either bound the oldest refusal already written is forgotten.
pub(crate) const MAX_RETAINED_NACKS: usize = 1024;
pub(crate) const MAX_RETAINED_NACK_BYTES: usize = 64 * 1024;

/// Refusals not yet written at which the link stops reading from the peer (each message it
/// reads may add one): what we owe the peer stays bounded while it does not read.
pub(crate) const MAX_UNSENT_NACKS: usize = 64;

/// The longest part of a peer's type URL copied into a `Nack` text or a log line.
pub(crate) const MAX_QUOTED: usize = 100;

/// Refusal events kept for the caller (it drains them after every `handle_nack`); beyond it
/// the oldest go. A confirmation is never dropped: consecutive ones merge.
const MAX_EVENTS: usize = 1024;

/// A message the state holds (ours in the retransmit queue, the peer's in the inbound queue):
/// the state only needs its type URL (for `accepts`) and what it counts against the byte
/// bounds (type URL plus value).
pub(crate) trait Queued {
    /// The type URL.
    fn type_url(&self) -> &str;
    /// Type URL plus value, in bytes.
    fn queued_len(&self) -> usize;
}

impl Queued for Any {
    fn type_url(&self) -> &str {
        &self.type_url
    }

    fn queued_len(&self) -> usize {
        self.type_url.len() + self.value.len()
    }
}

impl Queued for Frame {
    fn type_url(&self) -> &str {
        Frame::type_url(self)
    }

    fn queued_len(&self) -> usize {
        self.type_url_bytes().len() + self.value().len()
    }
}

/// What a message counts against the byte bounds.
pub(crate) fn queued_len(message: &impl Queued) -> usize {
    message.queued_len()
}

/// What a retained `Nack` costs: its text plus a fixed overhead.
fn nack_len(nack: &Nack) -> usize {
    nack.text.len() + 16
}

/// A received message waiting for the application.
#[derive(Debug)]
enum Inbound<I> {
    /// Delivered to the application.
    Message(I),
    /// Refused with a `Nack`; holds its place so the cumulative count stays in order.
    Refused,
}

/// A frame to write on the link, in the order the state wants them written.
#[derive(Debug)]
pub(crate) enum Transmit<'a, O> {
    /// A refusal of one of the peer's messages.
    Nack(Nack),
    /// A cumulative acknowledgement: the peer's messages our application has taken.
    Ack(u64),
    /// One of our messages (first sending or retransmission), in place in the retransmit
    /// queue: the link encodes it from there, nothing is copied.
    Message(&'a O),
}

/// What happened to messages we sent (local sequence numbers, as returned by `push`).
#[derive(Debug, PartialEq)]
pub(crate) enum StreamEvent {
    /// Every message numbered below `below` is confirmed (taken or refused by the peer).
    Confirmed { below: u64 },
    /// The peer refused message `seq`.
    Refused {
        seq: u64,
        reason: NackReason,
        /// The peer's text, escaped and capped.
        text: String,
    },
}

/// Counters of the protocol, for `Stats`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) retransmitted: u64,
    pub(crate) nacked: u64,
    pub(crate) resumes: u64,
}

/// `O`: our messages as queued (encoded once, see `outgoing.rs`); `I`: the peer's as received
/// (frames in place in the session's read buffer). Tests use `Any` for both.
#[derive(Debug)]
pub(crate) struct StreamState<O = super::outgoing::Outgoing, I = Frame> {
    config: ReliableConfig,
    // Outgoing: every message not yet acknowledged, oldest first; `out[0]` is local `base`.
    out: VecDeque<O>,
    out_bytes: usize,
    /// Room (messages, bytes) promised to writers that encode a large message outside the
    /// lock (`reserve`, then `push_reserved`): counted by both high-water marks.
    reserved: (usize, usize),
    base: u64,
    next_write: u64,
    epoch: u64,
    /// Bytes of `out[..next_write - base]`: written and not acknowledged.
    written_bytes: usize,
    /// Local number after the last message ever written on this stream (a `Resume`'s
    /// `received` beyond it is a lie).
    stream_written: u64,
    /// Local number after the last message ever written (any stream): `Stats::sent`.
    ever_written: u64,
    /// The peer's receive window (messages, bytes), from its `Resume`.
    peer_window: (u64, usize),
    // Incoming.
    inbound: VecDeque<Inbound<I>>,
    inbound_bytes: usize,
    /// Messages at the front of `inbound` from a previous stream (not counted in `delivered`).
    inbound_stale: usize,
    /// Wire count of messages received on this stream (queued or refused).
    received: u64,
    /// Wire count taken by the application (or refused).
    delivered: u64,
    acked_sent: u64,
    /// Bytes taken by the application since the last `Ack`.
    unacked_bytes: usize,
    /// An `Ack` must go out even if it repeats the last one (a new link: it may have been lost).
    ack_again: bool,
    /// When a pending acknowledgement is sent whatever `ack_every` says (armed by
    /// `handle_timeout` once one is pending).
    ack_deadline: Option<Instant>,
    /// The acknowledgement delay has passed: the pending acknowledgement goes out now.
    ack_due: bool,
    /// The link has read everything the peer sent so far (see `handle_read_idle`).
    read_idle: bool,
    /// Our application closes the stream: what it took is acknowledged before the close.
    closing: bool,
    /// Refusals not known to be seen by the peer, oldest first; `nacks[nacks_sent..]` are not
    /// sent on the current link yet.
    nacks: VecDeque<Nack>,
    nack_bytes: usize,
    nacks_sent: usize,
    events: VecDeque<StreamEvent>,
    counters: Counters,
}

impl<O: Queued, I: Queued> StreamState<O, I> {
    pub(crate) fn new(config: ReliableConfig) -> Self {
        Self {
            config,
            out: VecDeque::new(),
            out_bytes: 0,
            reserved: (0, 0),
            base: 0,
            next_write: 0,
            epoch: 0,
            written_bytes: 0,
            stream_written: 0,
            ever_written: 0,
            peer_window: (1, 0),
            inbound: VecDeque::new(),
            inbound_bytes: 0,
            inbound_stale: 0,
            received: 0,
            delivered: 0,
            acked_sent: 0,
            unacked_bytes: 0,
            ack_again: false,
            ack_deadline: None,
            ack_due: false,
            read_idle: false,
            closing: false,
            nacks: VecDeque::new(),
            nack_bytes: 0,
            nacks_sent: 0,
            events: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    // ---- our messages -------------------------------------------------------------------

    /// Whether the outgoing queue is under both high-water marks (the `Sink` path: a writer
    /// that saw room queues its next message whole, whatever its size).
    pub(crate) fn under_mark(&self) -> bool {
        let (messages, bytes) = self.held();
        messages == 0 || (messages < self.config.max_messages && bytes < self.config.max_bytes)
    }

    /// Messages and bytes held or promised: what the high-water marks bound.
    fn held(&self) -> (usize, usize) {
        (
            self.out.len() + self.reserved.0,
            self.out_bytes + self.reserved.1,
        )
    }

    /// Whether a message of `len` bytes fits under the high-water marks (one message always
    /// fits in an empty queue).
    pub(crate) fn fits(&self, len: usize) -> bool {
        let (messages, bytes) = self.held();
        messages == 0
            || (messages < self.config.max_messages && bytes + len <= self.config.max_bytes)
    }

    /// Queues a message without checking the high-water marks (the caller checked
    /// [`under_mark`](Self::under_mark) or [`fits`](Self::fits)). Returns its local sequence
    /// number.
    pub(crate) fn push_over_mark(&mut self, message: O) -> u64 {
        let seq = self.base + self.out.len() as u64;
        self.out_bytes += queued_len(&message);
        self.out.push_back(message);
        seq
    }

    /// Queues a message if it fits under the high-water marks (one message always fits in an
    /// empty queue): its local sequence number, or the message back.
    #[cfg(test)]
    pub(crate) fn push(&mut self, message: O) -> Result<u64, O> {
        if !self.fits(queued_len(&message)) {
            return Err(message);
        }
        Ok(self.push_over_mark(message))
    }

    /// Promises room for a message of `len` bytes (the caller checked [`fits`](Self::fits)),
    /// for a writer that encodes it outside the lock and then calls
    /// [`push_reserved`](Self::push_reserved) or [`unreserve`](Self::unreserve).
    pub(crate) fn reserve(&mut self, len: usize) {
        self.reserved.0 += 1;
        self.reserved.1 += len;
    }

    /// Gives back room promised by [`reserve`](Self::reserve).
    pub(crate) fn unreserve(&mut self, len: usize) {
        self.reserved.0 = self.reserved.0.saturating_sub(1);
        self.reserved.1 = self.reserved.1.saturating_sub(len);
    }

    /// Queues the message room was reserved for (with the same length).
    pub(crate) fn push_reserved(&mut self, message: O) -> u64 {
        self.unreserve(queued_len(&message));
        self.push_over_mark(message)
    }

    /// The local number of the first message not confirmed yet.
    pub(crate) fn confirmed(&self) -> u64 {
        self.base
    }

    /// The peer's cumulative acknowledgement (a wire count).
    pub(crate) fn handle_ack(&mut self, delivered: u64) -> Result<(), String> {
        let Some(local) = self.epoch.checked_add(delivered) else {
            return Err(format!("Ack of {delivered} messages overflows"));
        };
        if local > self.next_write {
            return Err(format!(
                "Ack of {delivered} messages, but only {} were sent",
                self.next_write - self.epoch
            ));
        }
        if local <= self.base {
            return Ok(());
        }
        while self.base < local {
            if let Some(message) = self.out.pop_front() {
                self.out_bytes = self.out_bytes.saturating_sub(queued_len(&message));
                self.written_bytes = self.written_bytes.saturating_sub(queued_len(&message));
            }
            self.base += 1;
        }
        if let Some(StreamEvent::Confirmed { below }) = self.events.back_mut() {
            *below = self.base;
        } else {
            self.events
                .push_back(StreamEvent::Confirmed { below: self.base });
        }
        Ok(())
    }

    /// The peer refused one of our messages (it stays unconfirmed until the peer's `Ack`
    /// passes it).
    pub(crate) fn handle_nack(&mut self, nack: Nack) -> Result<(), String> {
        let local = self.epoch.checked_add(nack.sequence);
        match local {
            Some(local) if local >= self.base && local < self.next_write => {
                self.counters.nacked += 1;
                let reason = NackReason::try_from(nack.reason).unwrap_or(NackReason::Unspecified);
                let text = super::quoted(&nack.text);
                log::debug!("reliable stream: message {} refused: {text}", nack.sequence);
                if self.events.len() >= MAX_EVENTS {
                    self.events.pop_front();
                }
                self.events.push_back(StreamEvent::Refused {
                    seq: local,
                    reason,
                    text,
                });
                Ok(())
            }
            _ => Err(format!(
                "Nack of message {}, which is not awaiting confirmation",
                nack.sequence
            )),
        }
    }

    /// What happened to our messages since the last call, oldest first.
    pub(crate) fn poll_event(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }

    /// The peer's receive window, from its `Resume`.
    pub(crate) fn set_peer_window(&mut self, messages: u64, bytes: u64) {
        self.peer_window = (
            messages.max(1),
            usize::try_from(bytes).unwrap_or(usize::MAX),
        );
    }

    /// The next message to write, if the peer's window has room for it.
    fn next_outgoing(&mut self) -> Option<&O> {
        let in_flight = self.next_write - self.base;
        let index = usize::try_from(in_flight).ok()?;
        let len = queued_len(self.out.get(index)?);
        // The peer's window: it never holds more than it announced, so it never has to stop
        // reading (which would hide our acknowledgements behind unread messages).
        let (max_messages, max_bytes) = self.peer_window;
        if in_flight > 0 && (in_flight >= max_messages || self.written_bytes + len > max_bytes) {
            return None;
        }
        self.written_bytes += len;
        self.next_write += 1;
        self.stream_written = self.stream_written.max(self.next_write);
        self.ever_written = self.ever_written.max(self.next_write);
        self.out.get(index)
    }

    /// Recomputes `written_bytes` after `next_write` moved back.
    fn rewind_written(&mut self) {
        let in_flight = usize::try_from(self.next_write - self.base).unwrap_or(usize::MAX);
        self.written_bytes = self
            .out
            .iter()
            .take(in_flight)
            .map(Queued::queued_len)
            .sum();
    }

    /// Everything is confirmed and nothing is queued.
    pub(crate) fn drained(&self) -> bool {
        self.out.is_empty() && self.reserved.0 == 0
    }

    // ---- the peer's messages ------------------------------------------------------------

    /// Whether a received message of `len` bytes fits in the inbound queue now (the link
    /// stops reading until it does).
    pub(crate) fn has_room(&self, len: usize) -> bool {
        self.inbound.is_empty()
            || (self.inbound.len() < self.config.receive_messages
                && self.inbound_bytes + len <= self.config.receive_bytes)
    }

    /// A received application message: queue it for the application, or refuse it.
    pub(crate) fn handle_message(&mut self, any: I) {
        self.read_idle = false;
        let sequence = self.received;
        self.received += 1;
        if let Some(accepts) = &self.config.accepts {
            if !accepts(any.type_url()) {
                let url = super::quoted(any.type_url());
                log::debug!("reliable stream: refusing message {sequence} ({url})");
                self.retain_nack(Nack {
                    sequence,
                    reason: NackReason::UnknownType as i32,
                    text: format!("no handler for {url}"),
                });
                // A refused message counts as taken by the application, in order: at once if
                // nothing is before it, else when the messages before it are taken.
                if self.inbound_stale == 0 && self.inbound.is_empty() {
                    self.delivered += 1;
                    self.unacked_bytes = self.unacked_bytes.saturating_add(queued_len(&any));
                } else {
                    self.inbound.push_back(Inbound::Refused);
                }
                return;
            }
        }
        self.inbound_bytes += queued_len(&any);
        self.inbound.push_back(Inbound::Message(any));
    }

    /// The next received message for the application (refusals' place holders are counted
    /// on the way).
    pub(crate) fn take(&mut self) -> Option<I> {
        while let Some(entry) = self.inbound.pop_front() {
            let stale = self.inbound_stale > 0;
            if stale {
                self.inbound_stale -= 1;
            } else {
                self.delivered += 1;
            }
            if let Inbound::Message(any) = entry {
                let len = queued_len(&any);
                self.inbound_bytes = self.inbound_bytes.saturating_sub(len);
                if !stale {
                    self.unacked_bytes = self.unacked_bytes.saturating_add(len);
                }
                return Some(any);
            }
        }
        None
    }

    /// Keeps a refusal until the peer is known to have seen it, within the bounds: beyond them
    /// the oldest refusal already written goes (the peer has most likely read it; only a cut
    /// before it did would lose it, and the message then counts as delivered).
    fn retain_nack(&mut self, nack: Nack) {
        self.nack_bytes += nack_len(&nack);
        self.nacks.push_back(nack);
        while (self.nacks.len() > MAX_RETAINED_NACKS || self.nack_bytes > MAX_RETAINED_NACK_BYTES)
            && self.nacks_sent > 0
        {
            if let Some(old) = self.nacks.pop_front() {
                self.nack_bytes -= nack_len(&old);
                self.nacks_sent -= 1;
            }
        }
    }

    /// Whether the link should stop reading: it owes the peer too many refusals.
    pub(crate) fn reading_paused(&self) -> bool {
        self.nacks.len() - self.nacks_sent >= MAX_UNSENT_NACKS
    }

    /// The link has read everything the peer has sent so far (its reader is waiting). Once
    /// our application has also taken every message, whatever it took is acknowledged at
    /// once: the peer may be waiting for that confirmation (a `send` that flushes, a ping-pong)
    /// and nothing more is coming that would reach `ack_every`, so only the delay would
    /// release it. While the peer streams, the link rarely runs dry and the acknowledgements
    /// stay batched.
    pub(crate) fn handle_read_idle(&mut self) {
        self.read_idle = true;
    }

    /// Our application closes the stream: what it has taken is acknowledged before the close
    /// goes out (the peer's last `send` waits for that confirmation).
    pub(crate) fn close(&mut self) {
        self.closing = true;
    }

    /// Whether an acknowledgement is owed (now or once the delay passes).
    pub(crate) fn ack_pending(&self) -> bool {
        self.delivered > self.acked_sent
    }

    /// Our receive window, for our `Resume`.
    pub(crate) fn window(&self) -> (u64, u64) {
        (
            self.config.receive_messages as u64,
            self.config.receive_bytes as u64,
        )
    }

    // ---- time and output ----------------------------------------------------------------

    /// The caller's clock, at every step of the link: arms the acknowledgement delay when an
    /// acknowledgement becomes pending, and makes it due once the delay has passed.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if !self.ack_pending() {
            self.ack_deadline = None;
            return;
        }
        let deadline = *self
            .ack_deadline
            .get_or_insert_with(|| now + self.config.ack_delay);
        if now >= deadline {
            self.ack_due = true;
        }
    }

    /// When `handle_timeout` has something to do.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.ack_deadline.filter(|_| !self.ack_due)
    }

    /// Whether an acknowledgement goes out at the next `poll_transmit`.
    fn ack_owed_now(&self) -> bool {
        let unacked = self.delivered - self.acked_sent;
        // Half our window taken and not acknowledged: the peer is about to stop sending, so
        // acknowledge now whatever `ack_every` says.
        let window_half = unacked.saturating_mul(2) >= self.config.receive_messages as u64
            || self.unacked_bytes.saturating_mul(2) >= self.config.receive_bytes;
        // Caught up: the peer sent nothing more and our application took it all; the peer
        // may be waiting for this confirmation, so it does not wait for the delay.
        let caught_up = self.config.ack_when_caught_up && self.read_idle && self.inbound.is_empty();
        self.ack_again
            || (unacked > 0
                && (self.ack_due
                    || unacked >= self.config.ack_every
                    || window_half
                    || caught_up
                    || self.closing))
    }

    /// Whether the link has something to do after the application took a message: an
    /// acknowledgement to write now, or the acknowledgement delay to start (its first pending
    /// message). Otherwise the application need not wake it: while the peer streams, the link
    /// runs anyway and the acknowledgements stay batched.
    pub(crate) fn link_work_after_take(&self) -> bool {
        self.ack_owed_now() || (self.ack_pending() && self.ack_deadline.is_none())
    }

    /// Whether a newly queued message can be written now (within the peer's window): else
    /// the link need not be woken for it (the peer's `Ack` will wake it).
    pub(crate) fn can_write_more(&self) -> bool {
        let in_flight = self.next_write - self.base;
        let (max_messages, max_bytes) = self.peer_window;
        in_flight == 0 || (in_flight < max_messages && self.written_bytes < max_bytes)
    }

    /// The next frame to write: refusals first, then an acknowledgement if one is due (every
    /// `ack_every` messages taken, half our window taken in messages or bytes, everything
    /// received taken while the link has nothing more to read, the stream closing, the delay
    /// passed, or a new link), then our messages as far as the peer's window allows.
    pub(crate) fn poll_transmit(&mut self) -> Option<Transmit<'_, O>> {
        if let Some(nack) = self.nacks.get(self.nacks_sent) {
            self.nacks_sent += 1;
            return Some(Transmit::Nack(nack.clone()));
        }
        if self.ack_owed_now() {
            self.ack_again = false;
            self.ack_due = false;
            self.ack_deadline = None;
            self.acked_sent = self.delivered;
            self.unacked_bytes = 0;
            return Some(Transmit::Ack(self.delivered));
        }
        self.next_outgoing().map(Transmit::Message)
    }

    // ---- resumption ---------------------------------------------------------------------

    /// How many of the peer's messages we have, for our `Resume`.
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// How many of our messages the peer has acknowledged, for our `Resume`.
    pub(crate) fn acknowledged(&self) -> u64 {
        self.base - self.epoch
    }

    /// The peer resumed the stream; its `Resume` says it has `received` of our messages and
    /// has seen `acknowledged` of its own acknowledged. Both sides call this. Retransmits from
    /// `received` on, and sends again the refusals from `acknowledged` on and an `Ack`, since
    /// either may have been lost with the previous connection. Returns how many messages are
    /// sent again; fails, changing nothing, if the counts are not ones an honest peer sends
    /// (`received` outside what we sent and is not confirmed, `acknowledged` above what we
    /// acknowledged).
    pub(crate) fn resume(&mut self, received: u64, acknowledged: u64) -> Result<u64, String> {
        let local = self
            .epoch
            .checked_add(received)
            .filter(|&l| l >= self.base && l <= self.stream_written);
        let Some(local) = local else {
            return Err(format!(
                "peer says it received {received} messages; we sent {} of which {} are confirmed",
                self.stream_written - self.epoch,
                self.base - self.epoch
            ));
        };
        if acknowledged > self.delivered {
            return Err(format!(
                "peer says {acknowledged} of its messages are acknowledged; we took {}",
                self.delivered
            ));
        }
        while self
            .nacks
            .front()
            .is_some_and(|n| n.sequence < acknowledged)
        {
            if let Some(n) = self.nacks.pop_front() {
                self.nack_bytes -= nack_len(&n);
            }
        }
        self.nacks_sent = 0;
        self.ack_again = self.delivered > 0;
        let retransmitted = self.next_write.saturating_sub(local);
        self.counters.retransmitted += retransmitted;
        self.counters.resumes += 1;
        self.next_write = local;
        self.rewind_written();
        Ok(retransmitted)
    }

    /// The peer does not know the stream (it lost its state): start a new one. Everything not
    /// confirmed is sent again as the new stream's first messages. Returns how many.
    pub(crate) fn restart_stream(&mut self) -> u64 {
        self.epoch = self.base;
        let retransmitted = self.next_write - self.base;
        self.counters.retransmitted += retransmitted;
        self.next_write = self.base;
        self.stream_written = self.base;
        self.written_bytes = 0;
        self.inbound_stale = self.inbound.len();
        self.received = 0;
        self.delivered = 0;
        self.acked_sent = 0;
        self.unacked_bytes = 0;
        self.ack_again = false;
        self.ack_deadline = None;
        self.ack_due = false;
        self.nacks.clear();
        self.nack_bytes = 0;
        self.nacks_sent = 0;
        retransmitted
    }

    // ---- counters -----------------------------------------------------------------------

    /// Queued and unconfirmed messages (number, bytes).
    pub(crate) fn outgoing(&self) -> (usize, usize) {
        (self.out.len(), self.out_bytes)
    }

    /// Received messages not taken yet (number, bytes).
    pub(crate) fn inbound_len(&self) -> (usize, usize) {
        (self.inbound.len(), self.inbound_bytes)
    }

    /// (distinct messages ever written, messages confirmed by the peer): local numbers, both
    /// only grow.
    pub(crate) fn progress(&self) -> (u64, u64) {
        (self.ever_written, self.base)
    }

    /// Refusals retained (number, bytes).
    pub(crate) fn retained_nacks(&self) -> (usize, usize) {
        (self.nacks.len(), self.nack_bytes)
    }

    pub(crate) fn counters(&self) -> Counters {
        self.counters
    }
}

#[cfg(test)]
#[path = "state_model.rs"]
mod model;

#[cfg(test)]
#[path = "state_steps.rs"]
mod steps;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The state with `Any`s for messages both ways.
    type StreamState = super::StreamState<Any, Any>;

    fn msg(i: u8) -> Any {
        Any {
            type_url: "type.googleapis.com/x.M".into(),
            value: vec![i],
        }
    }

    fn core() -> StreamState {
        let mut c = StreamState::new(ReliableConfig::new().with_max_messages(4).with_ack_every(2));
        c.set_peer_window(100, 1 << 20);
        c
    }

    /// The next message to write (no control frame is due in these tests).
    fn next_message(c: &mut StreamState) -> Option<Any> {
        match c.poll_transmit() {
            Some(Transmit::Message(any)) => Some(any.clone()),
            None => None,
            other => panic!("{other:?}"),
        }
    }

    /// The next control frame; `late`: once the acknowledgement delay has passed.
    fn control(c: &mut StreamState, late: bool) -> Option<Transmit<'_, Any>> {
        if late {
            let now = Instant::now();
            c.handle_timeout(now);
            c.handle_timeout(now + c.config.ack_delay);
        }
        match c.poll_transmit() {
            Some(Transmit::Message(any)) => panic!("{any:?}"),
            other => other,
        }
    }

    #[test]
    fn writes_stop_at_the_peers_window() {
        let mut c = core();
        c.set_peer_window(2, 1 << 20);
        for i in 0..4 {
            c.push(msg(i)).unwrap();
        }
        assert!(next_message(&mut c).is_some());
        assert!(next_message(&mut c).is_some());
        assert!(next_message(&mut c).is_none(), "window of 2 messages");
        c.handle_ack(1).unwrap();
        assert_eq!(next_message(&mut c).unwrap().value, vec![2]);
        // In bytes: one message always goes, the next only within the window.
        let mut c = core();
        c.set_peer_window(100, 30);
        c.push(msg(0)).unwrap();
        c.push(msg(1)).unwrap();
        assert!(next_message(&mut c).is_some());
        assert!(next_message(&mut c).is_none(), "24 + 24 bytes > 30");
    }

    #[test]
    fn high_water_mark_hands_the_message_back() {
        let mut c = core();
        for i in 0..4 {
            assert_eq!(c.push(msg(i)).unwrap(), u64::from(i));
        }
        assert_eq!(c.push(msg(9)).unwrap_err().value, vec![9]);
        // Written is not enough: only an acknowledgement makes room.
        while next_message(&mut c).is_some() {}
        assert!(c.push(msg(9)).is_err());
        c.handle_ack(1).unwrap();
        assert_eq!(c.poll_event(), Some(StreamEvent::Confirmed { below: 1 }));
        assert_eq!(c.push(msg(9)).unwrap(), 4);
        assert!(
            c.handle_ack(9).is_err(),
            "cannot acknowledge what was not sent"
        );
    }

    #[test]
    fn resume_retransmits_from_the_peers_count() {
        let mut c = core();
        for i in 0..4 {
            c.push(msg(i)).unwrap();
        }
        while next_message(&mut c).is_some() {}
        c.handle_ack(1).unwrap();
        // Reconnected: the peer received 3 of them.
        assert_eq!(c.resume(3, 0).unwrap(), 1);
        assert_eq!(next_message(&mut c).unwrap().value, vec![3]);
        assert!(c.resume(0, 0).is_err(), "0 was confirmed and released");
        assert!(c.resume(5, 0).is_err(), "5 was never sent");
        assert!(c.resume(3, 1).is_err(), "we acknowledged nothing");
        // Only the resume that was taken counts.
        assert_eq!((c.counters().resumes, c.counters().retransmitted), (1, 1));
        // Queued is not sent: a count above what was ever written is a lie.
        let mut c = core();
        for i in 0..4 {
            c.push(msg(i)).unwrap();
        }
        next_message(&mut c).unwrap();
        assert!(c.resume(2, 0).is_err(), "only 1 was written");
        assert_eq!(c.resume(1, 0).unwrap(), 0);
    }

    #[test]
    fn a_new_stream_renumbers_what_is_unconfirmed() {
        let mut c = core();
        for i in 0..3 {
            c.push(msg(i)).unwrap();
        }
        while next_message(&mut c).is_some() {}
        c.handle_ack(2).unwrap();
        assert_eq!(c.restart_stream(), 1);
        assert_eq!(next_message(&mut c).unwrap().value, vec![2]);
        // Its wire number on the new stream is 0.
        c.handle_ack(1).unwrap();
        assert!(c.drained());
    }

    #[test]
    fn acknowledgements_are_cumulative_and_batched() {
        let mut c = core();
        for i in 0..3 {
            c.handle_message(msg(i));
        }
        assert!(control(&mut c, false).is_none(), "nothing taken yet");
        c.take().unwrap();
        assert!(control(&mut c, false).is_none(), "below ack_every");
        assert!(c.ack_pending());
        c.take().unwrap();
        assert!(matches!(control(&mut c, false), Some(Transmit::Ack(2))));
        c.take().unwrap();
        assert!(matches!(control(&mut c, true), Some(Transmit::Ack(3))));
        assert!(control(&mut c, true).is_none());
    }

    #[test]
    fn the_ack_delay_runs_on_the_callers_clock() {
        let mut c = StreamState::new(
            ReliableConfig::new()
                .with_ack_every(100)
                .with_ack_delay(Duration::from_millis(10)),
        );
        let t0 = Instant::now();
        c.handle_timeout(t0);
        assert_eq!(c.poll_timeout(), None, "nothing owed");
        c.handle_message(msg(0));
        c.take().unwrap();
        c.handle_timeout(t0 + Duration::from_millis(3));
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_millis(13)));
        c.handle_timeout(t0 + Duration::from_millis(12));
        assert!(c.poll_transmit().is_none(), "not yet");
        c.handle_timeout(t0 + Duration::from_millis(13));
        assert_eq!(c.poll_timeout(), None, "due: nothing to wait for");
        assert!(matches!(c.poll_transmit(), Some(Transmit::Ack(1))));
        c.handle_timeout(t0 + Duration::from_millis(20));
        assert_eq!(c.poll_timeout(), None);
        assert!(c.poll_transmit().is_none());
    }

    #[test]
    fn refused_messages_are_nacked_then_counted() {
        let accepts: super::super::Accepts = std::sync::Arc::new(|url: &str| url.ends_with(".M"));
        let mut c = StreamState::new(ReliableConfig::new().with_accepts(accepts));
        c.handle_message(msg(0));
        c.handle_message(Any {
            type_url: "type.googleapis.com/x.Other".into(),
            value: vec![],
        });
        match control(&mut c, false) {
            Some(Transmit::Nack(n)) => assert_eq!(n.sequence, 1),
            other => panic!("{other:?}"),
        }
        assert!(control(&mut c, true).is_none(), "message 0 not taken yet");
        assert_eq!(c.take().unwrap().value, vec![0]);
        // The refused one's place holder is passed over by the reader; it still counts.
        assert!(c.take().is_none());
        assert!(matches!(control(&mut c, true), Some(Transmit::Ack(2))));
    }

    #[test]
    fn an_empty_type_url_is_an_ordinary_message() {
        let mut c = core();
        c.handle_message(Any::default());
        assert_eq!(c.take(), Some(Any::default()));
        assert!(matches!(control(&mut c, true), Some(Transmit::Ack(1))));
    }

    #[test]
    fn refusals_are_bounded_in_number_and_bytes() {
        let accepts: super::super::Accepts = std::sync::Arc::new(|_: &str| false);
        let mut c = StreamState::new(ReliableConfig::new().with_accepts(accepts));
        let huge = "x".repeat(1 << 20);
        for _ in 0..10 * MAX_RETAINED_NACKS {
            c.handle_message(Any {
                type_url: huge.clone(),
                value: vec![],
            });
            // The link writes what it owes before reading more.
            while c.reading_paused() {
                assert!(matches!(control(&mut c, false), Some(Transmit::Nack(_))));
            }
            let (n, bytes) = c.retained_nacks();
            assert!(n <= MAX_RETAINED_NACKS + MAX_UNSENT_NACKS, "{n}");
            assert!(bytes <= MAX_RETAINED_NACK_BYTES + 4096, "{bytes}");
        }
        while let Some(Transmit::Nack(n)) = control(&mut c, false) {
            assert!(n.text.len() < 200, "the type URL is capped in the text");
        }
    }

    #[test]
    fn refusal_events_are_bounded_if_never_polled() {
        let mut c = core();
        c.push(msg(0)).unwrap();
        next_message(&mut c).unwrap();
        for _ in 0..10 * MAX_EVENTS {
            c.handle_nack(Nack {
                sequence: 0,
                reason: 0,
                text: String::new(),
            })
            .unwrap();
        }
        assert_eq!(c.events.len(), MAX_EVENTS);
    }

    #[test]
    fn acknowledges_at_half_the_window_whatever_ack_every_says() {
        let mut c = StreamState::new(
            ReliableConfig::new()
                .with_ack_every(2000)
                .with_receive_buffer(10, 1 << 20),
        );
        for i in 0..10 {
            c.handle_message(msg(i));
        }
        for _ in 0..4 {
            c.take().unwrap();
            assert!(control(&mut c, false).is_none());
        }
        c.take().unwrap();
        assert!(matches!(control(&mut c, false), Some(Transmit::Ack(5))));
        // And by bytes.
        let mut c = StreamState::new(
            ReliableConfig::new()
                .with_ack_every(2000)
                .with_receive_buffer(1000, 100),
        );
        c.handle_message(Any {
            type_url: "t".into(),
            value: vec![0; 60],
        });
        c.take().unwrap();
        assert!(matches!(control(&mut c, false), Some(Transmit::Ack(1))));
    }

    #[test]
    fn sent_only_grows_across_resumes() {
        let mut c = core();
        for i in 0..3 {
            c.push(msg(i)).unwrap();
        }
        while next_message(&mut c).is_some() {}
        assert_eq!(c.progress().0, 3);
        c.resume(0, 0).unwrap();
        assert_eq!(
            c.progress().0,
            3,
            "rewound for retransmission, still 3 written"
        );
        c.restart_stream();
        assert_eq!(c.progress().0, 3);
    }
}
