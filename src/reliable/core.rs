//! The state of one reliable stream, shared by the application's handles and whichever link
//! (connection) currently carries the stream. No I/O: links push frames in and pull frames out.
//!
//! Numbering: application messages carry no header. Each side counts the messages it sends on a
//! stream, 0, 1, 2, ...; the receiver counts the same way, so a count identifies a message.
//! Locally every message gets a sequence number that never restarts (`base`, `next_write`, the
//! keys of `confirms`); `epoch` is the local number of the stream's message 0, so the wire
//! number of local message `n` is `n - epoch`. A new stream (the peer lost ours) moves `epoch`
//! to the first unconfirmed message, which is then retransmitted as the new stream's message 0.
//!
//! Wakers are never called with the core's lock held: the core collects them (`wake_later`)
//! and the lock guard in `mod.rs` wakes them after unlocking.

use std::collections::{BTreeMap, VecDeque};
use std::task::Waker;

use futures_channel::oneshot;
use prost_types::Any;

use super::{DeliveryError, Event, ReliableConfig, TrySendError};
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

/// Events kept for the application before the oldest are dropped (with a warning).
const EVENT_QUEUE_LEN: usize = 256;

/// What a message counts against the byte bounds.
pub(crate) fn queued_len(any: &Any) -> usize {
    any.type_url.len() + any.value.len()
}

/// What a retained `Nack` costs: its text plus a fixed overhead.
fn nack_len(nack: &Nack) -> usize {
    nack.text.len() + 16
}

/// A received message waiting for the application.
#[derive(Debug)]
enum Inbound {
    /// Delivered to the application.
    Message(Any),
    /// Refused with a `Nack`; holds its place so the cumulative count stays in order.
    Refused,
}

/// The lifecycle event queue of one [`Events`](super::Events) reader (id 0: `next_event`).
#[derive(Debug)]
struct EventQueue {
    id: u64,
    events: VecDeque<Event>,
    dropped: u64,
    waker: Option<Waker>,
}

/// How a stream ended.
#[derive(Clone, Debug)]
pub(crate) enum StreamEnd {
    /// Closed by either side after everything was confirmed.
    Closed,
    /// Gave up: the reason.
    Failed(String),
}

#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) config: ReliableConfig,
    // Outgoing: every message not yet acknowledged, oldest first; `out[0]` is local `base`.
    out: VecDeque<Any>,
    out_bytes: usize,
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
    confirms: BTreeMap<u64, oneshot::Sender<Result<(), DeliveryError>>>,
    send_wakers: Vec<Waker>,
    // Incoming.
    inbound: VecDeque<Inbound>,
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
    /// Refusals not known to be seen by the peer, oldest first; `nacks[nacks_sent..]` are not
    /// sent on the current link yet.
    nacks: VecDeque<Nack>,
    nack_bytes: usize,
    nacks_sent: usize,
    recv_waker: Option<Waker>,
    // The link.
    pub(crate) generation: u64,
    pub(crate) attached: bool,
    link_waker: Option<Waker>,
    // Lifecycle.
    pub(crate) close_requested: bool,
    end: Option<StreamEnd>,
    end_wakers: Vec<Waker>,
    event_queues: Vec<EventQueue>,
    next_event_queue: u64,
    /// Wakers to call once the lock is released.
    wake_later: Vec<Waker>,
    // Counters.
    pub(crate) stats: Counters,
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) retransmitted: u64,
    pub(crate) nacked: u64,
    pub(crate) links: u64,
}

impl Core {
    pub(crate) fn new(config: ReliableConfig) -> Self {
        Self {
            config,
            out: VecDeque::new(),
            out_bytes: 0,
            base: 0,
            next_write: 0,
            epoch: 0,
            written_bytes: 0,
            stream_written: 0,
            ever_written: 0,
            peer_window: (1, 0),
            confirms: BTreeMap::new(),
            send_wakers: Vec::new(),
            inbound: VecDeque::new(),
            inbound_bytes: 0,
            inbound_stale: 0,
            received: 0,
            delivered: 0,
            acked_sent: 0,
            unacked_bytes: 0,
            ack_again: false,
            nacks: VecDeque::new(),
            nack_bytes: 0,
            nacks_sent: 0,
            recv_waker: None,
            generation: 0,
            attached: false,
            link_waker: None,
            close_requested: false,
            end: None,
            end_wakers: Vec::new(),
            event_queues: vec![EventQueue {
                id: 0,
                events: VecDeque::new(),
                dropped: 0,
                waker: None,
            }],
            next_event_queue: 1,
            wake_later: Vec::new(),
            stats: Counters::default(),
        }
    }

    /// Wakers collected under the lock; the caller wakes them after unlocking.
    pub(crate) fn take_wakers(&mut self) -> Vec<Waker> {
        std::mem::take(&mut self.wake_later)
    }

    fn wake(&mut self, waker: Waker) {
        if !self.wake_later.iter().any(|w| w.will_wake(&waker)) {
            self.wake_later.push(waker);
        }
    }

    // ---- application side -------------------------------------------------------------

    /// Queues a message if it fits under the high-water marks (one message always fits in an
    /// empty queue). Returns its local sequence number.
    pub(crate) fn try_push(&mut self, any: Any) -> Result<u64, TrySendError> {
        if self.end.is_some() || self.close_requested {
            return Err(TrySendError::Closed(any));
        }
        let len = queued_len(&any);
        let fits = self.out.is_empty()
            || (self.out.len() < self.config.max_messages
                && self.out_bytes + len <= self.config.max_bytes);
        if !fits {
            return Err(TrySendError::Full(any));
        }
        let seq = self.base + self.out.len() as u64;
        self.out.push_back(any);
        self.out_bytes += len;
        self.wake_link();
        Ok(seq)
    }

    /// Whether the outgoing queue is under both high-water marks (the `Sink` path: a writer
    /// that saw room queues its next message whole, whatever its size).
    pub(crate) fn under_mark(&self) -> bool {
        self.out.is_empty()
            || (self.out.len() < self.config.max_messages && self.out_bytes < self.config.max_bytes)
    }

    /// Queues a message without checking the high-water marks (the caller checked
    /// [`under_mark`](Self::under_mark)); fails only once the stream is closing or over.
    pub(crate) fn push_over_mark(&mut self, any: Any) -> Result<u64, TrySendError> {
        if self.end.is_some() || self.close_requested {
            return Err(TrySendError::Closed(any));
        }
        let seq = self.base + self.out.len() as u64;
        self.out_bytes += queued_len(&any);
        self.out.push_back(any);
        self.wake_link();
        Ok(seq)
    }

    pub(crate) fn register_send(&mut self, waker: &Waker) {
        if !self.send_wakers.iter().any(|w| w.will_wake(waker)) {
            self.send_wakers.push(waker.clone());
        }
    }

    pub(crate) fn confirm_on(&mut self, seq: u64, tx: oneshot::Sender<Result<(), DeliveryError>>) {
        if seq < self.base {
            let _ = tx.send(Ok(()));
        } else {
            self.confirms.insert(seq, tx);
        }
    }

    /// The next received message for the application (refusals' place holders are counted
    /// on the way).
    pub(crate) fn pop_inbound(&mut self, waker: &Waker) -> Option<Any> {
        while let Some(entry) = self.inbound.pop_front() {
            let stale = self.inbound_stale > 0;
            if stale {
                self.inbound_stale -= 1;
            } else {
                self.delivered += 1;
            }
            // The link may be waiting for room, or have an acknowledgement to send.
            self.wake_link();
            match entry {
                Inbound::Message(any) => {
                    let len = queued_len(&any);
                    self.inbound_bytes = self.inbound_bytes.saturating_sub(len);
                    if !stale {
                        self.unacked_bytes = self.unacked_bytes.saturating_add(len);
                    }
                    return Some(any);
                }
                Inbound::Refused => {}
            }
        }
        self.recv_waker = Some(waker.clone());
        None
    }

    /// The application closes: the link closes the session once everything is confirmed.
    pub(crate) fn request_close(&mut self) {
        self.close_requested = true;
        self.wake_link();
    }

    pub(crate) fn register_end(&mut self, waker: &Waker) {
        if !self.end_wakers.iter().any(|w| w.will_wake(waker)) {
            self.end_wakers.push(waker.clone());
        }
    }

    pub(crate) fn end(&self) -> Option<&StreamEnd> {
        self.end.as_ref()
    }

    pub(crate) fn outgoing(&self) -> (usize, usize) {
        (self.out.len(), self.out_bytes)
    }

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

    /// A new [`Events`](super::Events) reader: its queue starts with the events `next_event`
    /// has not taken yet.
    pub(crate) fn subscribe(&mut self) -> u64 {
        let id = self.next_event_queue;
        self.next_event_queue += 1;
        let events = self.event_queues[0].events.clone();
        self.event_queues.push(EventQueue {
            id,
            events,
            dropped: 0,
            waker: None,
        });
        id
    }

    pub(crate) fn unsubscribe(&mut self, id: u64) {
        if id != 0 {
            self.event_queues.retain(|q| q.id != id);
        }
    }

    pub(crate) fn pop_event(&mut self, id: u64, waker: &Waker) -> Option<Event> {
        let queue = self.event_queues.iter_mut().find(|q| q.id == id)?;
        let event = queue.events.pop_front();
        if event.is_none() {
            queue.waker = Some(waker.clone());
        }
        event
    }

    /// Every reader gets every event.
    pub(crate) fn emit(&mut self, event: Event) {
        log::debug!("reliable stream: {event:?}");
        let mut wake = Vec::new();
        for queue in &mut self.event_queues {
            if queue.events.len() >= EVENT_QUEUE_LEN {
                queue.events.pop_front();
                queue.dropped += 1;
                if queue.id != 0 {
                    log::warn!(
                        "reliable stream: an Events reader lags; {} events dropped",
                        queue.dropped
                    );
                }
            }
            queue.events.push_back(event.clone());
            wake.extend(queue.waker.take());
        }
        for w in wake {
            self.wake(w);
        }
    }

    /// Ends the stream: every handle and confirmation waiter learns it.
    pub(crate) fn finish(&mut self, end: StreamEnd) {
        if self.end.is_some() {
            return;
        }
        let event = match &end {
            StreamEnd::Closed => Event::Closed { reason: None },
            StreamEnd::Failed(why) => Event::Closed {
                reason: Some(why.clone()),
            },
        };
        self.end = Some(end.clone());
        for (_, tx) in std::mem::take(&mut self.confirms) {
            let _ = tx.send(Err(match &end {
                StreamEnd::Closed => DeliveryError::Closed(None),
                StreamEnd::Failed(why) => DeliveryError::Closed(Some(why.clone())),
            }));
        }
        self.emit(event);
        let wakers: Vec<Waker> = self
            .send_wakers
            .drain(..)
            .chain(self.end_wakers.drain(..))
            .chain(self.recv_waker.take())
            .collect();
        for w in wakers {
            self.wake(w);
        }
        self.wake_link();
    }

    // ---- link side ----------------------------------------------------------------------

    pub(crate) fn register_link(&mut self, waker: &Waker) {
        self.link_waker = Some(waker.clone());
    }

    fn wake_link(&mut self) {
        if let Some(w) = self.link_waker.take() {
            self.wake(w);
        }
    }

    /// A new link takes the stream over: any older link stops at its next step.
    pub(crate) fn attach(&mut self) -> u64 {
        self.generation += 1;
        self.attached = true;
        self.stats.links += 1;
        self.wake_link();
        self.generation
    }

    /// The link `generation` is gone.
    pub(crate) fn detach(&mut self, generation: u64) {
        if self.generation == generation {
            self.attached = false;
        }
    }

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
        self.stats.retransmitted += retransmitted;
        self.next_write = local;
        self.rewind_written();
        Ok(retransmitted)
    }

    /// The peer does not know the stream (it lost its state): start a new one. Everything not
    /// confirmed is sent again as the new stream's first messages. Returns how many.
    pub(crate) fn restart_stream(&mut self) -> u64 {
        self.epoch = self.base;
        let retransmitted = self.next_write - self.base;
        self.stats.retransmitted += retransmitted;
        self.next_write = self.base;
        self.stream_written = self.base;
        self.written_bytes = 0;
        self.inbound_stale = self.inbound.len();
        self.received = 0;
        self.delivered = 0;
        self.acked_sent = 0;
        self.unacked_bytes = 0;
        self.ack_again = false;
        self.nacks.clear();
        self.nack_bytes = 0;
        self.nacks_sent = 0;
        retransmitted
    }

    /// Whether a received message of `len` bytes fits in the inbound queue now.
    pub(crate) fn inbound_has_room(&self, len: usize) -> bool {
        self.inbound.is_empty()
            || (self.inbound.len() < self.config.receive_messages
                && self.inbound_bytes + len <= self.config.receive_bytes)
    }

    /// A received application message: queue it for the application, or refuse it.
    pub(crate) fn push_inbound(&mut self, any: Any) {
        let sequence = self.received;
        self.received += 1;
        if let Some(accepts) = &self.config.accepts {
            if !accepts(&any.type_url) {
                let url = super::quoted(&any.type_url);
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
        if let Some(w) = self.recv_waker.take() {
            self.wake(w);
        }
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

    /// Next control frame: a refusal first, then an acknowledgement if one is due (`force`:
    /// the acknowledgement delay has passed).
    pub(crate) fn poll_control(&mut self, force: bool) -> Option<Control> {
        if let Some(nack) = self.nacks.get(self.nacks_sent) {
            self.nacks_sent += 1;
            return Some(Control::Nack(nack.clone()));
        }
        let unacked = self.delivered - self.acked_sent;
        // Half our window taken and not acknowledged: the peer is about to stop sending, so
        // acknowledge now whatever `ack_every` says.
        let window_half = unacked.saturating_mul(2) >= self.config.receive_messages as u64
            || self.unacked_bytes.saturating_mul(2) >= self.config.receive_bytes;
        if self.ack_again
            || (unacked > 0 && (force || unacked >= self.config.ack_every || window_half))
        {
            self.ack_again = false;
            self.acked_sent = self.delivered;
            self.unacked_bytes = 0;
            return Some(Control::Ack(self.delivered));
        }
        None
    }

    /// Whether an acknowledgement waits for the delay to pass.
    pub(crate) fn ack_pending(&self) -> bool {
        self.delivered > self.acked_sent
    }

    /// The next message to write on the link, if any.
    pub(crate) fn next_outgoing(&mut self) -> Option<Any> {
        let in_flight = self.next_write - self.base;
        let index = usize::try_from(in_flight).ok()?;
        let any = self.out.get(index)?;
        let len = queued_len(any);
        // The peer's window: it never holds more than it announced, so it never has to stop
        // reading (which would hide our acknowledgements behind unread messages).
        let (max_messages, max_bytes) = self.peer_window;
        if in_flight > 0 && (in_flight >= max_messages || self.written_bytes + len > max_bytes) {
            return None;
        }
        let any = any.clone();
        self.written_bytes += len;
        self.next_write += 1;
        self.stream_written = self.stream_written.max(self.next_write);
        self.ever_written = self.ever_written.max(self.next_write);
        Some(any)
    }

    /// The peer's receive window, from its `Resume`.
    pub(crate) fn set_peer_window(&mut self, messages: u64, bytes: u64) {
        self.peer_window = (
            messages.max(1),
            usize::try_from(bytes).unwrap_or(usize::MAX),
        );
    }

    /// Our receive window, for our `Resume`.
    pub(crate) fn window(&self) -> (u64, u64) {
        (
            self.config.receive_messages as u64,
            self.config.receive_bytes as u64,
        )
    }

    /// Recomputes `written_bytes` after `next_write` moved back.
    fn rewind_written(&mut self) {
        let in_flight = usize::try_from(self.next_write - self.base).unwrap_or(usize::MAX);
        self.written_bytes = self.out.iter().take(in_flight).map(queued_len).sum();
    }

    /// Everything is confirmed and nothing is queued.
    pub(crate) fn drained(&self) -> bool {
        self.out.is_empty()
    }

    /// The peer's cumulative acknowledgement (a wire count).
    pub(crate) fn on_ack(&mut self, delivered: u64) -> Result<(), String> {
        let Some(local) = self.epoch.checked_add(delivered) else {
            return Err(format!("Ack of {delivered} messages overflows"));
        };
        if local > self.next_write {
            return Err(format!(
                "Ack of {delivered} messages, but only {} were sent",
                self.next_write - self.epoch
            ));
        }
        while self.base < local {
            if let Some(any) = self.out.pop_front() {
                self.out_bytes = self.out_bytes.saturating_sub(queued_len(&any));
                self.written_bytes = self.written_bytes.saturating_sub(queued_len(&any));
            }
            self.base += 1;
        }
        while let Some(entry) = self.confirms.first_entry() {
            if *entry.key() >= self.base {
                break;
            }
            let _ = entry.remove().send(Ok(()));
        }
        let wakers: Vec<Waker> = self.send_wakers.drain(..).collect();
        for w in wakers {
            self.wake(w);
        }
        Ok(())
    }

    /// The peer refused one of our messages.
    pub(crate) fn on_nack(&mut self, nack: Nack) -> Result<(), String> {
        let local = self.epoch.checked_add(nack.sequence);
        match local {
            Some(local) if local >= self.base && local < self.next_write => {
                self.stats.nacked += 1;
                let reason = NackReason::try_from(nack.reason).unwrap_or(NackReason::Unspecified);
                log::debug!(
                    "reliable stream: message {} refused: {}",
                    nack.sequence,
                    super::quoted(&nack.text)
                );
                if let Some(tx) = self.confirms.remove(&local) {
                    let _ = tx.send(Err(DeliveryError::Refused {
                        reason,
                        text: super::quoted(&nack.text),
                    }));
                }
                Ok(())
            }
            _ => Err(format!(
                "Nack of message {}, which is not awaiting confirmation",
                nack.sequence
            )),
        }
    }
}

/// A control frame a link sends.
#[derive(Debug)]
pub(crate) enum Control {
    Ack(u64),
    Nack(Nack),
}

#[cfg(test)]
#[path = "core_model.rs"]
mod model;

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u8) -> Any {
        Any {
            type_url: "type.googleapis.com/x.M".into(),
            value: vec![i],
        }
    }

    fn core() -> Core {
        let mut c = Core::new(ReliableConfig::new().with_max_messages(4).with_ack_every(2));
        c.set_peer_window(100, 1 << 20);
        c
    }

    #[test]
    fn writes_stop_at_the_peers_window() {
        let mut c = core();
        c.set_peer_window(2, 1 << 20);
        for i in 0..4 {
            c.try_push(msg(i)).unwrap();
        }
        assert!(c.next_outgoing().is_some());
        assert!(c.next_outgoing().is_some());
        assert!(c.next_outgoing().is_none(), "window of 2 messages");
        c.on_ack(1).unwrap();
        assert_eq!(c.next_outgoing().unwrap().value, vec![2]);
        // In bytes: one message always goes, the next only within the window.
        let mut c = core();
        c.set_peer_window(100, 30);
        c.try_push(msg(0)).unwrap();
        c.try_push(msg(1)).unwrap();
        assert!(c.next_outgoing().is_some());
        assert!(c.next_outgoing().is_none(), "24 + 24 bytes > 30");
    }

    #[test]
    fn high_water_mark_hands_the_message_back() {
        let mut c = core();
        for i in 0..4 {
            assert_eq!(c.try_push(msg(i)).unwrap(), u64::from(i));
        }
        match c.try_push(msg(9)) {
            Err(TrySendError::Full(any)) => assert_eq!(any.value, vec![9]),
            other => panic!("{other:?}"),
        }
        // Written is not enough: only an acknowledgement makes room.
        while c.next_outgoing().is_some() {}
        assert!(matches!(c.try_push(msg(9)), Err(TrySendError::Full(_))));
        c.on_ack(1).unwrap();
        assert_eq!(c.try_push(msg(9)).unwrap(), 4);
        assert!(c.on_ack(9).is_err(), "cannot acknowledge what was not sent");
    }

    #[test]
    fn resume_retransmits_from_the_peers_count() {
        let mut c = core();
        for i in 0..4 {
            c.try_push(msg(i)).unwrap();
        }
        while c.next_outgoing().is_some() {}
        c.on_ack(1).unwrap();
        // Reconnected: the peer received 3 of them.
        assert_eq!(c.resume(3, 0).unwrap(), 1);
        assert_eq!(c.next_outgoing().unwrap().value, vec![3]);
        assert!(c.resume(0, 0).is_err(), "0 was confirmed and released");
        assert!(c.resume(5, 0).is_err(), "5 was never sent");
        assert!(c.resume(3, 1).is_err(), "we acknowledged nothing");
        // Queued is not sent: a count above what was ever written is a lie.
        let mut c = core();
        for i in 0..4 {
            c.try_push(msg(i)).unwrap();
        }
        c.next_outgoing().unwrap();
        assert!(c.resume(2, 0).is_err(), "only 1 was written");
        assert_eq!(c.resume(1, 0).unwrap(), 0);
    }

    #[test]
    fn a_new_stream_renumbers_what_is_unconfirmed() {
        let mut c = core();
        for i in 0..3 {
            c.try_push(msg(i)).unwrap();
        }
        while c.next_outgoing().is_some() {}
        c.on_ack(2).unwrap();
        assert_eq!(c.restart_stream(), 1);
        assert_eq!(c.next_outgoing().unwrap().value, vec![2]);
        // Its wire number on the new stream is 0.
        c.on_ack(1).unwrap();
        assert!(c.drained());
    }

    #[test]
    fn acknowledgements_are_cumulative_and_batched() {
        let mut c = core();
        let waker = futures_util::task::noop_waker();
        for i in 0..3 {
            c.push_inbound(msg(i));
        }
        assert!(c.poll_control(false).is_none(), "nothing taken yet");
        c.pop_inbound(&waker).unwrap();
        assert!(c.poll_control(false).is_none(), "below ack_every");
        assert!(c.ack_pending());
        c.pop_inbound(&waker).unwrap();
        assert!(matches!(c.poll_control(false), Some(Control::Ack(2))));
        c.pop_inbound(&waker).unwrap();
        assert!(matches!(c.poll_control(true), Some(Control::Ack(3))));
        assert!(c.poll_control(true).is_none());
    }

    #[test]
    fn refused_messages_are_nacked_then_counted() {
        let accepts: super::super::Accepts = std::sync::Arc::new(|url: &str| url.ends_with(".M"));
        let mut c = Core::new(ReliableConfig::new().with_accepts(accepts));
        let waker = futures_util::task::noop_waker();
        c.push_inbound(msg(0));
        c.push_inbound(Any {
            type_url: "type.googleapis.com/x.Other".into(),
            value: vec![],
        });
        match c.poll_control(false) {
            Some(Control::Nack(n)) => assert_eq!(n.sequence, 1),
            other => panic!("{other:?}"),
        }
        assert!(c.poll_control(true).is_none(), "message 0 not taken yet");
        assert_eq!(c.pop_inbound(&waker).unwrap().value, vec![0]);
        // The refused one's place holder is passed over by the reader; it still counts.
        assert!(c.pop_inbound(&waker).is_none());
        assert!(matches!(c.poll_control(true), Some(Control::Ack(2))));
    }

    #[test]
    fn an_empty_type_url_is_an_ordinary_message() {
        let mut c = core();
        let waker = futures_util::task::noop_waker();
        c.push_inbound(Any::default());
        assert_eq!(c.pop_inbound(&waker), Some(Any::default()));
        assert!(matches!(c.poll_control(true), Some(Control::Ack(1))));
    }

    #[test]
    fn refusals_are_bounded_in_number_and_bytes() {
        let accepts: super::super::Accepts = std::sync::Arc::new(|_: &str| false);
        let mut c = Core::new(ReliableConfig::new().with_accepts(accepts));
        let huge = "x".repeat(1 << 20);
        for _ in 0..10 * MAX_RETAINED_NACKS {
            c.push_inbound(Any {
                type_url: huge.clone(),
                value: vec![],
            });
            // The link writes what it owes before reading more.
            while c.reading_paused() {
                assert!(matches!(c.poll_control(false), Some(Control::Nack(_))));
            }
            let (n, bytes) = c.retained_nacks();
            assert!(n <= MAX_RETAINED_NACKS + MAX_UNSENT_NACKS, "{n}");
            assert!(bytes <= MAX_RETAINED_NACK_BYTES + 4096, "{bytes}");
        }
        while let Some(Control::Nack(n)) = c.poll_control(false) {
            assert!(n.text.len() < 200, "the type URL is capped in the text");
        }
    }

    #[test]
    fn acknowledges_at_half_the_window_whatever_ack_every_says() {
        let mut c = Core::new(
            ReliableConfig::new()
                .with_ack_every(2000)
                .with_receive_buffer(10, 1 << 20),
        );
        let waker = futures_util::task::noop_waker();
        for i in 0..10 {
            c.push_inbound(msg(i));
        }
        for _ in 0..4 {
            c.pop_inbound(&waker).unwrap();
            assert!(c.poll_control(false).is_none());
        }
        c.pop_inbound(&waker).unwrap();
        assert!(matches!(c.poll_control(false), Some(Control::Ack(5))));
        // And by bytes.
        let mut c = Core::new(
            ReliableConfig::new()
                .with_ack_every(2000)
                .with_receive_buffer(1000, 100),
        );
        c.push_inbound(Any {
            type_url: "t".into(),
            value: vec![0; 60],
        });
        c.pop_inbound(&waker).unwrap();
        assert!(matches!(c.poll_control(false), Some(Control::Ack(1))));
    }

    #[test]
    fn sent_only_grows_across_resumes() {
        let mut c = core();
        for i in 0..3 {
            c.try_push(msg(i)).unwrap();
        }
        while c.next_outgoing().is_some() {}
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

    #[test]
    fn wakers_are_collected_once_for_after_the_lock() {
        let mut c = core();
        let waker = futures_util::task::noop_waker();
        for _ in 0..100 {
            c.register_end(&waker);
        }
        assert_eq!(c.end_wakers.len(), 1);
        c.finish(StreamEnd::Closed);
        assert_eq!(c.take_wakers().len(), 1, "one waker, deduplicated");
    }
}
