//! The plumbing around a stream's protocol state ([`StreamState`]): what the application's
//! handles and the link share under one lock. It keeps the tasks to wake (the reader, the
//! writers waiting for room, the link, `close`), the confirmation senders keyed by sequence
//! number, the lifecycle events of every `Events` reader, and how the stream ended.
//!
//! Wakers are never called with the lock held: they are collected (`wake_later`) and the lock
//! guard in `mod.rs` wakes them after unlocking.

use std::collections::{BTreeMap, VecDeque};
use std::task::Waker;
use std::time::Instant;

use futures_channel::oneshot;
use prost::{Message, Name};
use prost_types::Any;

use super::outgoing::{Encoder, Outgoing};
use super::state::{Queued, StreamEvent, StreamState, Transmit};
use super::{DeliveryError, Event, GiveUp, ReliableConfig, TrySendError};
use crate::connection::Frame;
use crate::proto::reliable::Nack;

/// Events kept for the application before the oldest are dropped (with a warning).
const EVENT_QUEUE_LEN: usize = 256;

/// The lifecycle event queue of one [`Events`](super::Events) reader (id 0: `next_event`).
#[derive(Debug)]
struct EventQueue {
    id: u64,
    events: VecDeque<Event>,
    dropped: u64,
    waker: Option<Waker>,
}

/// Wakers taken from under the lock, to wake after unlocking.
pub(crate) struct Wakers {
    first: Option<Waker>,
    second: Option<Waker>,
    more: Vec<Waker>,
}

impl Wakers {
    pub(crate) fn wake(self) {
        for w in self.first.into_iter().chain(self.second).chain(self.more) {
            w.wake();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + usize::from(self.second.is_some()) + self.more.len()
    }
}

/// How a stream ended.
#[derive(Clone, Debug)]
pub(crate) enum StreamEnd {
    /// Closed by either side after everything was confirmed.
    Closed,
    /// Gave up: the reason.
    Failed(GiveUp),
}

#[derive(Debug)]
pub(crate) struct Shared {
    state: StreamState,
    /// Encodes small typed messages into a buffer they share.
    encoder: Encoder,
    confirms: BTreeMap<u64, oneshot::Sender<Result<(), DeliveryError>>>,
    send_wakers: Vec<Waker>,
    recv_waker: Option<Waker>,
    // The link.
    pub(crate) generation: u64,
    pub(crate) attached: bool,
    link_waker: Option<Waker>,
    /// The link holds a received message until the inbound queue has room for it.
    link_waits_for_room: bool,
    /// Links that carried the stream: `Stats::connections`.
    links: u64,
    // Lifecycle.
    pub(crate) close_requested: bool,
    end: Option<StreamEnd>,
    end_wakers: Vec<Waker>,
    event_queues: Vec<EventQueue>,
    next_event_queue: u64,
    /// Wakers to call once the lock is released.
    wake_later: Vec<Waker>,
}

impl Shared {
    pub(crate) fn new(config: ReliableConfig) -> Self {
        Self {
            state: StreamState::new(config),
            encoder: Encoder::default(),
            confirms: BTreeMap::new(),
            send_wakers: Vec::new(),
            recv_waker: None,
            generation: 0,
            attached: false,
            link_waker: None,
            link_waits_for_room: false,
            links: 0,
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
        }
    }

    /// The protocol state, to read (counts for a `Resume`, counters).
    pub(crate) fn state(&self) -> &StreamState {
        &self.state
    }

    /// Wakers collected under the lock; the caller wakes them after unlocking. The usual one
    /// or two are moved out without taking the list's allocation along.
    pub(crate) fn take_wakers(&mut self) -> Wakers {
        if self.wake_later.len() <= 2 {
            Wakers {
                first: self.wake_later.pop(),
                second: self.wake_later.pop(),
                more: Vec::new(),
            }
        } else {
            Wakers {
                first: None,
                second: None,
                more: std::mem::take(&mut self.wake_later),
            }
        }
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
        if self.closed_for_sending() {
            return Err(TrySendError::Closed(any));
        }
        if !self.state.fits(any.queued_len()) {
            return Err(TrySendError::Full(any));
        }
        Ok(self.push_outgoing(Outgoing::Any(any)))
    }

    /// Whether the stream takes no more messages (closing or over).
    pub(crate) fn closed_for_sending(&self) -> bool {
        self.end.is_some() || self.close_requested
    }

    /// Queues `msg` (of `type_url_len + value_len` bytes, which fit under the high-water
    /// marks), encoding it into the shared buffer.
    pub(crate) fn push_small<M: Message + Name>(
        &mut self,
        msg: &M,
        type_url_len: usize,
        value_len: usize,
    ) -> u64 {
        let queued = self.state.outgoing().1;
        let message = self
            .encoder
            .encode_small(msg, type_url_len, value_len, queued);
        self.push_outgoing(message)
    }

    /// See [`StreamState::fits`].
    pub(crate) fn fits(&self, len: usize) -> bool {
        self.state.fits(len)
    }

    /// See [`StreamState::reserve`].
    pub(crate) fn reserve(&mut self, len: usize) {
        self.state.reserve(len);
    }

    /// Queues a large message encoded outside the lock after [`reserve`](Self::reserve); if
    /// the stream ended meanwhile, gives the room back and fails.
    pub(crate) fn push_reserved(&mut self, message: Outgoing) -> Result<u64, ()> {
        if self.end.is_some() {
            self.state.unreserve(message.queued_len());
            return Err(());
        }
        let seq = self.state.push_reserved(message);
        self.wake_link_to_write();
        Ok(seq)
    }

    fn push_outgoing(&mut self, message: Outgoing) -> u64 {
        let seq = self.state.push_over_mark(message);
        self.wake_link_to_write();
        seq
    }

    /// Wakes the link for a new message, unless the peer's window keeps it from writing it
    /// (the peer's `Ack` wakes it then).
    fn wake_link_to_write(&mut self) {
        if self.state.can_write_more() {
            self.wake_link();
        }
    }

    /// See [`StreamState::under_mark`].
    pub(crate) fn under_mark(&self) -> bool {
        self.state.under_mark()
    }

    /// Queues a message without checking the high-water marks (the caller checked
    /// [`under_mark`](Self::under_mark)); fails only once the stream is closing or over.
    pub(crate) fn push_over_mark(&mut self, any: Any) -> Result<u64, TrySendError> {
        if self.closed_for_sending() {
            return Err(TrySendError::Closed(any));
        }
        Ok(self.push_outgoing(Outgoing::Any(any)))
    }

    pub(crate) fn register_send(&mut self, waker: &Waker) {
        if !self.send_wakers.iter().any(|w| w.will_wake(waker)) {
            self.send_wakers.push(waker.clone());
        }
    }

    pub(crate) fn confirm_on(&mut self, seq: u64, tx: oneshot::Sender<Result<(), DeliveryError>>) {
        if seq < self.state.confirmed() {
            let _ = tx.send(Ok(()));
        } else {
            self.confirms.insert(seq, tx);
        }
    }

    /// The next received message for the application, or `None` (and the reader is woken
    /// when one arrives).
    pub(crate) fn pop_inbound(&mut self, waker: &Waker) -> Option<Frame> {
        let before = self.state.inbound_len().0;
        let frame = self.state.take();
        // Wake the link only if it waits for room, or has an acknowledgement to send or to
        // time: not once per message.
        if self.state.inbound_len().0 != before
            && (std::mem::take(&mut self.link_waits_for_room) || self.state.link_work_after_take())
        {
            self.wake_link();
        }
        if frame.is_none() {
            match &self.recv_waker {
                Some(w) if w.will_wake(waker) => {}
                _ => self.recv_waker = Some(waker.clone()),
            }
        }
        frame
    }

    /// The application closes: the link closes the session once everything is confirmed.
    pub(crate) fn request_close(&mut self) {
        self.close_requested = true;
        self.state.close();
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

    /// Links that carried the stream so far.
    pub(crate) fn links(&self) -> u64 {
        self.links
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
        self.links += 1;
        crate::metrics::facade::reliable_attached(self.links);
        self.wake_link();
        self.generation
    }

    /// The link `generation` is gone.
    pub(crate) fn detach(&mut self, generation: u64) {
        if self.generation == generation {
            self.attached = false;
        }
    }

    /// The peer resumed the stream (see [`StreamState::resume`]); `window` is its receive
    /// window. Both sides call this.
    pub(crate) fn resume(
        &mut self,
        received: u64,
        acknowledged: u64,
        window: (u64, u64),
    ) -> Result<u64, String> {
        let retransmitted = self.state.resume(received, acknowledged)?;
        crate::metrics::facade::reliable_resumed(true, retransmitted);
        self.state.set_peer_window(window.0, window.1);
        Ok(retransmitted)
    }

    /// The peer starts the stream afresh (see [`StreamState::restart_stream`]); `window` is
    /// its receive window.
    pub(crate) fn restart_stream(&mut self, window: (u64, u64)) -> u64 {
        self.state.set_peer_window(window.0, window.1);
        let retransmitted = self.state.restart_stream();
        crate::metrics::facade::reliable_resumed(false, retransmitted);
        retransmitted
    }

    /// A new stream: the peer's receive window.
    pub(crate) fn set_peer_window(&mut self, window: (u64, u64)) {
        self.state.set_peer_window(window.0, window.1);
    }

    /// Whether a received message of `len` bytes fits in the inbound queue now; if not, the
    /// application wakes the link once it has taken a message.
    pub(crate) fn has_room(&mut self, len: usize) -> bool {
        let room = self.state.has_room(len);
        self.link_waits_for_room = !room;
        room
    }

    /// Whether the link should stop reading (refusals owed to the peer are backed up).
    pub(crate) fn reading_paused(&self) -> bool {
        self.state.reading_paused()
    }

    /// A received application message.
    /// See [`StreamState::handle_read_idle`].
    pub(crate) fn handle_read_idle(&mut self) {
        self.state.handle_read_idle();
    }

    pub(crate) fn handle_message(&mut self, frame: Frame) {
        self.state.handle_message(frame);
        if let Some(w) = self.recv_waker.take() {
            self.wake(w);
        }
    }

    /// The peer's `Ack`.
    pub(crate) fn handle_ack(&mut self, delivered: u64) -> Result<(), String> {
        self.state.handle_ack(delivered)?;
        self.complete_confirms();
        Ok(())
    }

    /// The peer's `Nack`.
    pub(crate) fn handle_nack(&mut self, nack: Nack) -> Result<(), String> {
        self.state.handle_nack(nack)?;
        self.complete_confirms();
        Ok(())
    }

    /// Turns the state's events into completed confirmations, and wakes the writers waiting
    /// for room.
    fn complete_confirms(&mut self) {
        while let Some(event) = self.state.poll_event() {
            match event {
                StreamEvent::Confirmed { below } => {
                    while let Some(entry) = self.confirms.first_entry() {
                        if *entry.key() >= below {
                            break;
                        }
                        let _ = entry.remove().send(Ok(()));
                    }
                    while let Some(w) = self.send_wakers.pop() {
                        self.wake(w);
                    }
                }
                StreamEvent::Refused { seq, reason, text } => {
                    if let Some(tx) = self.confirms.remove(&seq) {
                        let _ = tx.send(Err(DeliveryError::Refused { reason, text }));
                    }
                }
            }
        }
    }

    /// The link's clock (see [`StreamState::handle_timeout`]).
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.state.handle_timeout(now);
    }

    /// When the link calls `handle_timeout` next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.state.poll_timeout()
    }

    /// The next frame for the link to write.
    pub(crate) fn poll_transmit(&mut self) -> Option<Transmit<'_, Outgoing>> {
        self.state.poll_transmit()
    }

    /// Everything is confirmed and nothing is queued.
    pub(crate) fn drained(&self) -> bool {
        self.state.drained()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakers_are_collected_once_for_after_the_lock() {
        let mut c = Shared::new(ReliableConfig::new());
        let waker = futures_util::task::noop_waker();
        for _ in 0..100 {
            c.register_end(&waker);
        }
        assert_eq!(c.end_wakers.len(), 1);
        c.finish(StreamEnd::Closed);
        assert_eq!(c.take_wakers().len(), 1, "one waker, deduplicated");
    }

    #[test]
    fn confirmations_complete_from_the_states_events() {
        let mut c = Shared::new(ReliableConfig::new());
        c.set_peer_window((100, 1 << 20));
        let mut rx = Vec::new();
        for i in 0..3u8 {
            let seq = c
                .try_push(Any {
                    type_url: "t/x.M".into(),
                    value: vec![i],
                })
                .unwrap();
            let (tx, r) = oneshot::channel();
            c.confirm_on(seq, tx);
            rx.push(r);
        }
        while let Some(Transmit::Message(_)) = c.poll_transmit() {}
        c.handle_nack(Nack {
            sequence: 1,
            reason: 0,
            text: "no".into(),
        })
        .unwrap();
        c.handle_ack(1).unwrap();
        assert_eq!(rx[0].try_recv().unwrap(), Some(Ok(())));
        assert!(matches!(
            rx[1].try_recv().unwrap(),
            Some(Err(DeliveryError::Refused { .. }))
        ));
        assert_eq!(rx[2].try_recv().unwrap(), None, "not confirmed yet");
        c.finish(StreamEnd::Closed);
        assert!(matches!(
            rx[2].try_recv().unwrap(),
            Some(Err(DeliveryError::Closed(None)))
        ));
    }
}
