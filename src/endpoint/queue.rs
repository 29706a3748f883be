//! A bounded queue of outgoing messages for one link (messages and bytes), and the loop that
//! empties it into the link: a publisher's queue per subscriber link, a work-queue
//! distributor's deliveries per worker link.

use std::collections::VecDeque;
use std::sync::Mutex;

use event_listener::Event;
use prost_types::Any;

/// Why a message was not queued; it is handed back.
#[derive(Debug)]
pub(crate) enum PushError {
    Full(Any),
    Closed(Any),
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Any>,
    bytes: usize,
    closed: bool,
    /// The loop that empties it into its link is over ([`LinkQueue::drain_into`]).
    drained: bool,
}

/// Bounded in messages and in bytes (type URL plus value of each message). One message larger
/// than the byte bound is let in when the queue is empty, or it could never be sent.
#[derive(Debug)]
pub(crate) struct LinkQueue {
    state: Mutex<State>,
    max_messages: usize,
    max_bytes: usize,
    /// A message was queued, or the queue closed.
    ready: Event,
    /// A message was taken, or the queue closed.
    room: Event,
    /// The loop that empties it is over.
    done: Event,
}

pub(crate) fn size(any: &Any) -> usize {
    any.type_url.len() + any.value.len()
}

impl LinkQueue {
    pub(crate) fn new(max_messages: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_messages: max_messages.max(1),
            max_bytes: max_bytes.max(1),
            ready: Event::new(),
            room: Event::new(),
            done: Event::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queued messages and bytes.
    pub(crate) fn len(&self) -> (usize, usize) {
        let state = self.lock();
        (state.items.len(), state.bytes)
    }

    pub(crate) fn try_push(&self, any: Any) -> Result<(), PushError> {
        let mut state = self.lock();
        if state.closed {
            return Err(PushError::Closed(any));
        }
        let len = size(&any);
        let fits = state.items.is_empty()
            || (state.items.len() < self.max_messages && state.bytes + len <= self.max_bytes);
        if !fits {
            return Err(PushError::Full(any));
        }
        state.bytes += len;
        state.items.push_back(any);
        drop(state);
        self.ready.notify(1);
        Ok(())
    }

    /// Waits for room. `Err` only if the queue closed.
    pub(crate) async fn push(&self, mut any: Any) -> Result<(), Any> {
        loop {
            match self.try_push(any) {
                Ok(()) => return Ok(()),
                Err(PushError::Closed(back)) => return Err(back),
                Err(PushError::Full(back)) => any = back,
            }
            let listener = self.room.listen();
            match self.try_push(any) {
                Ok(()) => return Ok(()),
                Err(PushError::Closed(back)) => return Err(back),
                Err(PushError::Full(back)) => any = back,
            }
            listener.await;
        }
    }

    fn try_pop(&self) -> Option<Option<Any>> {
        let mut state = self.lock();
        match state.items.pop_front() {
            Some(any) => {
                state.bytes -= size(&any);
                drop(state);
                self.room.notify(usize::MAX);
                Some(Some(any))
            }
            None if state.closed => Some(None),
            None => None,
        }
    }

    /// The next message; `None` once the queue is closed.
    pub(crate) async fn pop(&self) -> Option<Any> {
        loop {
            if let Some(next) = self.try_pop() {
                return next;
            }
            let listener = self.ready.listen();
            if let Some(next) = self.try_pop() {
                return next;
            }
            listener.await;
        }
    }

    /// Sends what is queued on `peer`, in order, until the queue closes or the link can take
    /// no more (then the queue closes). Run it on a task of its own.
    pub(crate) async fn drain_into(&self, peer: &crate::peer::Peer) {
        while let Some(any) = self.pop().await {
            if peer.send(any).await.is_err() {
                break;
            }
        }
        self.close();
        self.lock().drained = true;
        self.done.notify(usize::MAX);
    }

    /// Takes no more messages, and returns once [`drain_into`](Self::drain_into) has handed
    /// every queued one to the link (or the link took no more): what a graceful close of the
    /// link waits for before it closes the link itself, so nothing accepted is left behind.
    pub(crate) async fn finish(&self) {
        self.lock().closed = true;
        self.ready.notify(usize::MAX);
        self.room.notify(usize::MAX);
        loop {
            let listener = self.done.listen();
            if self.lock().drained {
                return;
            }
            listener.await;
        }
    }

    /// No more messages in or out; what was queued is dropped. Wakes every waiter.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.items.clear();
        state.bytes = 0;
        drop(state);
        self.ready.notify(usize::MAX);
        self.room.notify(usize::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(len: usize) -> Any {
        Any {
            type_url: String::new(),
            value: vec![0; len],
        }
    }

    #[test]
    fn bounded_in_messages_and_bytes() {
        let queue = LinkQueue::new(3, 100);
        assert!(queue.try_push(any(60)).is_ok());
        assert!(matches!(queue.try_push(any(60)), Err(PushError::Full(_))));
        assert!(queue.try_push(any(20)).is_ok());
        assert!(queue.try_push(any(20)).is_ok());
        assert!(matches!(queue.try_push(any(0)), Err(PushError::Full(_))));
        assert_eq!(queue.len(), (3, 100));
        assert_eq!(
            futures_util::FutureExt::now_or_never(queue.pop()),
            Some(Some(any(60)))
        );
        assert_eq!(queue.len(), (2, 40));
        queue.close();
        assert!(matches!(queue.try_push(any(1)), Err(PushError::Closed(_))));
        assert_eq!(
            futures_util::FutureExt::now_or_never(queue.pop()),
            Some(None)
        );
    }

    #[test]
    fn one_oversized_message_passes_alone() {
        let queue = LinkQueue::new(3, 10);
        assert!(queue.try_push(any(50)).is_ok());
        assert!(matches!(queue.try_push(any(1)), Err(PushError::Full(_))));
    }
}
