//! The bounded queue between a session's application halves and its driver, one per direction.
//!
//! It behaves like a bounded `futures-channel` mpsc channel with one sender and one receiver
//! (the receiver may close it and still take what is queued; dropping either end ends it), but
//! it wakes a side only when that side is waiting, and both sides move whole batches under one
//! lock: the driver adds what it read in one poll ([`Sender::send_batch`]) and wakes the reader
//! once, the reader takes everything queued ([`Receiver::poll_take_all`]) and wakes a waiting
//! driver once. A per-message hop (a lock, a wake-up, a reschedule on another thread) made a
//! session several times slower than the bare connection under it.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

struct Inner<T> {
    items: VecDeque<T>,
    capacity: usize,
    /// No new items are taken: the receiver closed the queue or is gone, or the sender closed it.
    closed: bool,
    sender_gone: bool,
    receiver_gone: bool,
    /// The receiver found the queue empty and waits for an item.
    receiver_waker: Option<Waker>,
    /// The sender found the queue full and waits for room.
    sender_waker: Option<Waker>,
}

/// The queue no longer takes items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Closed;

/// Makes a queue holding at most `capacity` items (at least one).
pub(super) fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Mutex::new(Inner {
        items: VecDeque::new(),
        capacity: capacity.max(1),
        closed: false,
        sender_gone: false,
        receiver_gone: false,
        receiver_waker: None,
        sender_waker: None,
    }));
    (Sender(inner.clone()), Receiver(inner))
}

fn lock<T>(inner: &Mutex<Inner<T>>) -> MutexGuard<'_, Inner<T>> {
    // A panic while holding the lock leaves the queue consistent (every change is one step).
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// The sending end.
pub(super) struct Sender<T>(Arc<Mutex<Inner<T>>>);

impl<T> Sender<T> {
    /// Ready once there is room for one item; an error once the queue is closed.
    #[cfg(test)]
    pub(super) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Closed>> {
        let mut inner = lock(&self.0);
        if inner.closed {
            return Poll::Ready(Err(Closed));
        }
        if inner.items.len() < inner.capacity {
            return Poll::Ready(Ok(()));
        }
        register(&mut inner.sender_waker, cx);
        Poll::Pending
    }

    /// Queues `item` (after [`poll_ready`](Self::poll_ready) said there is room).
    #[cfg(test)]
    pub(super) fn start_send(&mut self, item: T) -> Result<(), Closed> {
        let mut inner = lock(&self.0);
        if inner.closed {
            return Err(Closed);
        }
        inner.items.push_back(item);
        let waker = inner.receiver_waker.take();
        drop(inner);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Queues `item` like [`start_send`](Self::start_send) but leaves waking the receiver to
    /// [`wake_receiver`](Self::wake_receiver), so that a burst of items costs one wake-up.
    #[cfg(test)]
    pub(super) fn start_send_quietly(&mut self, item: T) -> Result<(), Closed> {
        let mut inner = lock(&self.0);
        if inner.closed {
            return Err(Closed);
        }
        inner.items.push_back(item);
        Ok(())
    }

    /// Wakes the receiver if it waits and there is something to take.
    pub(super) fn wake_receiver(&mut self) {
        let mut inner = lock(&self.0);
        let waker = if inner.items.is_empty() {
            None
        } else {
            inner.receiver_waker.take()
        };
        drop(inner);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// How many items the queue has room for now; pending (and the sender woken later) if none.
    /// The receiver only ever makes more room, so the count stays good until items are added.
    pub(super) fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, Closed>> {
        let mut inner = lock(&self.0);
        if inner.closed {
            return Poll::Ready(Err(Closed));
        }
        let room = inner.capacity.saturating_sub(inner.items.len());
        if room > 0 {
            return Poll::Ready(Ok(room));
        }
        register(&mut inner.sender_waker, cx);
        Poll::Pending
    }

    /// Queues every item of `batch` at once (within the room [`poll_room`](Self::poll_room)
    /// reported), leaving waking the receiver to [`wake_receiver`](Self::wake_receiver). If the
    /// queue is closed the items are handed back in `batch`.
    pub(super) fn send_batch(&mut self, batch: &mut VecDeque<T>) -> Result<(), Closed> {
        let mut inner = lock(&self.0);
        if inner.closed {
            return Err(Closed);
        }
        if inner.items.is_empty() {
            // Swapped: the allocations circulate between the two ends.
            std::mem::swap(&mut inner.items, batch);
        } else {
            inner.items.append(batch);
        }
        Ok(())
    }

    /// Whether the queue takes no more items (the receiver closed it or is gone).
    pub(super) fn is_closed(&self) -> bool {
        lock(&self.0).closed
    }

    /// Takes no more items; the receiver still gets those queued, then the end.
    pub(super) fn close_channel(&mut self) {
        let mut inner = lock(&self.0);
        inner.closed = true;
        let waker = inner.receiver_waker.take();
        drop(inner);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut inner = lock(&self.0);
        inner.sender_gone = true;
        let waker = inner.receiver_waker.take();
        drop(inner);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = lock(&self.0);
        f.debug_struct("Sender")
            .field("queued", &inner.items.len())
            .field("capacity", &inner.capacity)
            .field("closed", &inner.closed)
            .finish()
    }
}

/// The receiving end.
pub(super) struct Receiver<T>(Arc<Mutex<Inner<T>>>);

impl<T> Receiver<T> {
    /// The next item; `None` once the queue is closed (or the sender gone) and empty.
    #[cfg(test)]
    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut inner = lock(&self.0);
        if let Some(item) = inner.items.pop_front() {
            // Wake a waiting sender only once half the room is free, so that it queues a batch
            // per wake-up rather than one item.
            let waker = if inner.items.len() <= inner.capacity / 2 {
                inner.sender_waker.take()
            } else {
                None
            };
            drop(inner);
            if let Some(waker) = waker {
                waker.wake();
            }
            return Poll::Ready(Some(item));
        }
        if inner.closed || inner.sender_gone {
            return Poll::Ready(None);
        }
        register(&mut inner.receiver_waker, cx);
        Poll::Pending
    }

    /// Moves every queued item into `into` (which must be empty) under one lock: `true`, or
    /// `false` once the queue is closed (or the sender gone) and empty.
    pub(super) fn poll_take_all(
        &mut self,
        cx: &mut Context<'_>,
        into: &mut VecDeque<T>,
    ) -> Poll<bool> {
        debug_assert!(into.is_empty());
        let mut inner = lock(&self.0);
        if !inner.items.is_empty() {
            std::mem::swap(&mut inner.items, into);
            let waker = inner.sender_waker.take();
            drop(inner);
            if let Some(waker) = waker {
                waker.wake();
            }
            return Poll::Ready(true);
        }
        if inner.closed || inner.sender_gone {
            return Poll::Ready(false);
        }
        register(&mut inner.receiver_waker, cx);
        Poll::Pending
    }

    /// Takes no more items; those already queued can still be received.
    #[cfg(test)]
    pub(super) fn close(&mut self) {
        let mut inner = lock(&self.0);
        inner.closed = true;
        let waker = inner.sender_waker.take();
        drop(inner);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut inner = lock(&self.0);
        inner.closed = true;
        inner.receiver_gone = true;
        let items = std::mem::take(&mut inner.items);
        let waker = inner.sender_waker.take();
        drop(inner);
        // Dropped outside the lock: an item may hold a channel whose waiter runs on drop.
        drop(items);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = lock(&self.0);
        f.debug_struct("Receiver")
            .field("queued", &inner.items.len())
            .field("capacity", &inner.capacity)
            .field("closed", &inner.closed)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::task::noop_waker_ref;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn bounded_in_order_and_ends_after_the_sender() {
        let (mut tx, mut rx) = bounded::<u32>(2);
        let mut cx = Context::from_waker(noop_waker_ref());
        assert_eq!(tx.poll_ready(&mut cx), Poll::Ready(Ok(())));
        tx.start_send(1).unwrap();
        assert_eq!(tx.poll_ready(&mut cx), Poll::Ready(Ok(())));
        tx.start_send(2).unwrap();
        assert!(tx.poll_ready(&mut cx).is_pending());
        assert_eq!(rx.poll_next(&mut cx), Poll::Ready(Some(1)));
        drop(tx);
        assert_eq!(rx.poll_next(&mut cx), Poll::Ready(Some(2)));
        assert_eq!(rx.poll_next(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn wakes_the_receiver_once_per_batch_and_the_sender_at_half() {
        let (mut tx, mut rx) = bounded::<u32>(4);
        let rx_wakes = Arc::new(Count(AtomicUsize::new(0)));
        let rx_waker = Waker::from(rx_wakes.clone());
        let mut rx_cx = Context::from_waker(&rx_waker);
        let tx_wakes = Arc::new(Count(AtomicUsize::new(0)));
        let tx_waker = Waker::from(tx_wakes.clone());
        let mut tx_cx = Context::from_waker(&tx_waker);

        assert!(rx.poll_next(&mut rx_cx).is_pending());
        for i in 0..4 {
            assert_eq!(tx.poll_ready(&mut tx_cx), Poll::Ready(Ok(())));
            tx.start_send(i).unwrap();
        }
        assert_eq!(rx_wakes.0.load(Ordering::SeqCst), 1);
        assert!(tx.poll_ready(&mut tx_cx).is_pending());
        assert_eq!(rx.poll_next(&mut rx_cx), Poll::Ready(Some(0)));
        assert_eq!(tx_wakes.0.load(Ordering::SeqCst), 0);
        assert_eq!(rx.poll_next(&mut rx_cx), Poll::Ready(Some(1)));
        assert_eq!(tx_wakes.0.load(Ordering::SeqCst), 1);

        // Quiet sends wake nobody until `wake_receiver`.
        assert_eq!(rx.poll_next(&mut rx_cx), Poll::Ready(Some(2)));
        assert_eq!(rx.poll_next(&mut rx_cx), Poll::Ready(Some(3)));
        assert!(rx.poll_next(&mut rx_cx).is_pending());
        tx.start_send_quietly(4).unwrap();
        tx.start_send_quietly(5).unwrap();
        assert_eq!(rx_wakes.0.load(Ordering::SeqCst), 1);
        tx.wake_receiver();
        assert_eq!(rx_wakes.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn closing_keeps_what_is_queued_and_refuses_more() {
        let (mut tx, mut rx) = bounded::<u32>(4);
        let mut cx = Context::from_waker(noop_waker_ref());
        tx.start_send(7).unwrap();
        rx.close();
        assert!(tx.is_closed());
        assert_eq!(tx.poll_ready(&mut cx), Poll::Ready(Err(Closed)));
        assert_eq!(tx.start_send(8), Err(Closed));
        assert_eq!(rx.poll_next(&mut cx), Poll::Ready(Some(7)));
        assert_eq!(rx.poll_next(&mut cx), Poll::Ready(None));

        let (mut tx, rx) = bounded::<u32>(4);
        drop(rx);
        assert_eq!(tx.poll_ready(&mut cx), Poll::Ready(Err(Closed)));
    }
}
