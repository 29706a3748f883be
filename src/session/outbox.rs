//! What a session's writer hands to its driver: frames already encoded into one bounded byte
//! buffer, and the flush and close markers between them.
//!
//! The writer encodes each message (`varint(len) ++ Any`) straight into the shared buffer, so
//! sending builds no `Any` (no type URL `String`, no value `Vec`) and queues no item per
//! message. The driver takes everything encoded so far in one step, by swapping its own empty
//! buffer for the filled one, and hands it to the connection writer (which adopts it when its
//! own buffer is empty). The two or three buffers circulate between the writer, the driver and
//! the connection: in steady state sending allocates nothing.
//!
//! The driver is woken once when the buffer stops being empty (not per message), the writer
//! once when a full buffer has been taken. A writer feeding a stream hands each
//! [`BATCH_BYTES`] to the connection itself, and the driver lets a stream gather (see
//! `Engine::lingers`). Bounds: at most `capacity` markers and, beyond the
//! first message, at most [`MAX_BYTES`] encoded bytes wait here (no bound in messages: the
//! writer hands a full outbox to the connection itself).

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;

use crate::connection::EncodedFrames;

/// Encoded bytes the buffer takes before the writer waits (one message is always taken).
pub(super) const MAX_BYTES: usize = 256 * 1024;

/// Encoded bytes the writer lets gather before it hands them to the connection itself (the
/// connection's default write high-water mark).
pub(super) const BATCH_BYTES: usize = 64 * 1024;

/// A point in the stream of frames: everything encoded before it comes first.
pub(super) struct Marker<M> {
    /// Bytes encoded before the marker that are still in the buffer.
    at: usize,
    /// Frames among them.
    frames: usize,
    marker: M,
}

struct Inner<M> {
    /// Encoded frames (large values by reference among them).
    bytes: EncodedFrames,
    /// Frames in `bytes`.
    frames: usize,
    /// Bytes of the last batch the driver took: room reserved at once for the next one when
    /// the buffer coming back has none (the connection gives its buffer back after a burst),
    /// instead of growing it by doubling, one allocation per step.
    last_batch: usize,
    markers: VecDeque<Marker<M>>,
    capacity: usize,
    /// No new items are taken: the driver closed the outbox or is gone.
    closed: bool,
    sender_gone: bool,
    receiver_waker: Option<Waker>,
    sender_waker: Option<Waker>,
}

/// The outbox no longer takes items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Closed;

/// What the driver takes next, in order.
pub(super) enum Item<M> {
    /// This many encoded frames were swapped into the driver's buffer.
    Frames(usize),
    Marker(M),
}

/// An outbox holding at most `capacity` items (at least one).
pub(super) fn outbox<M>(capacity: usize) -> (Sender<M>, Receiver<M>) {
    let inner = Arc::new(Mutex::new(Inner {
        bytes: EncodedFrames::default(),
        frames: 0,
        last_batch: 0,
        markers: VecDeque::new(),
        capacity: capacity.max(1),
        closed: false,
        sender_gone: false,
        receiver_waker: None,
        sender_waker: None,
    }));
    (Sender(inner.clone()), Receiver(inner))
}

fn lock<M>(inner: &Mutex<Inner<M>>) -> MutexGuard<'_, Inner<M>> {
    // A panic while holding the lock leaves the outbox consistent (every change is one step).
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl<M> Inner<M> {
    /// Frames are bounded by their bytes only: the writer hands a full outbox to the
    /// connection itself, so a bound in messages would only cut batches of small ones short.
    fn has_room(&self) -> bool {
        self.markers.len() < self.capacity
            && (self.bytes.is_empty() || self.bytes.len() < MAX_BYTES)
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// The writer's end.
pub(super) struct Sender<M>(Arc<Mutex<Inner<M>>>);

impl<M> Sender<M> {
    /// Ready once there is room for one more item; an error once the outbox is closed.
    pub(super) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Closed>> {
        let mut inner = lock(&self.0);
        if inner.closed {
            return Poll::Ready(Err(Closed));
        }
        if inner.has_room() {
            return Poll::Ready(Ok(()));
        }
        register(&mut inner.sender_waker, cx);
        Poll::Pending
    }

    /// Appends one frame with `encode` (after [`poll_ready`](Self::poll_ready) said there is
    /// room): the bytes now waiting, and whether there is room for one more item (which only
    /// this sender can take away). If `encode` fails it must leave the buffer unchanged; its
    /// error is returned.
    pub(super) fn encode<E>(
        &mut self,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<Result<(usize, bool), E>, Closed> {
        self.encode_frame(|frames| encode(&mut frames.bytes))
    }

    /// [`encode`](Self::encode) with the whole of what the outbox holds: bytes, and large
    /// values placed between them.
    pub(super) fn encode_frame<E>(
        &mut self,
        encode: impl FnOnce(&mut EncodedFrames) -> Result<(), E>,
    ) -> Result<Result<(usize, bool), E>, Closed> {
        let mut inner = lock(&self.0);
        if inner.closed {
            return Err(Closed);
        }
        if inner.bytes.bytes.capacity() == 0 && inner.last_batch > 0 {
            let room = inner.last_batch.min(MAX_BYTES);
            inner.bytes.bytes.reserve(room);
        }
        if let Err(e) = encode(&mut inner.bytes) {
            return Ok(Err(e));
        }
        inner.frames += 1;
        let queued = (inner.bytes.len(), inner.has_room());
        let waker = inner.receiver_waker.take();
        drop(inner);
        wake(waker);
        Ok(Ok(queued))
    }

    /// Queues a marker after every frame encoded so far.
    pub(super) fn push_marker(&mut self, marker: M) -> Result<(), (Closed, M)> {
        let mut inner = lock(&self.0);
        if inner.closed {
            return Err((Closed, marker));
        }
        let (at, frames) = (inner.bytes.bytes.len(), inner.frames);
        inner.markers.push_back(Marker { at, frames, marker });
        let waker = inner.receiver_waker.take();
        drop(inner);
        wake(waker);
        Ok(())
    }
}

impl<M> Drop for Sender<M> {
    fn drop(&mut self) {
        let mut inner = lock(&self.0);
        inner.sender_gone = true;
        let waker = inner.receiver_waker.take();
        drop(inner);
        wake(waker);
    }
}

impl<M> fmt::Debug for Sender<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = lock(&self.0);
        f.debug_struct("outbox::Sender")
            .field("frames", &inner.frames)
            .field("markers", &inner.markers.len())
            .field("bytes", &inner.bytes.len())
            .field("closed", &inner.closed)
            .finish()
    }
}

/// The driver's end.
pub(super) struct Receiver<M>(Arc<Mutex<Inner<M>>>);

impl<M> Receiver<M> {
    /// The next item: the frames encoded before the next marker, moved into `frames` (which
    /// must be empty; its allocation is kept for the writer's next frames), or that marker.
    /// `None` once the outbox is closed (or the writer gone) and empty.
    #[cfg(test)]
    pub(super) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        frames: &mut EncodedFrames,
    ) -> Poll<Option<Item<M>>> {
        self.poll_take(cx, frames, true)
    }

    /// [`poll_next`](Self::poll_next), but when nothing waits, `register` says whether `cx`
    /// is to be woken by the next item; if not, whoever was registered stays so. (The writer
    /// hands the outbox to the connection in its own task through this receiver: registering
    /// the driver then would have every batch it empties wake the driver for the next one.)
    pub(super) fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        frames: &mut EncodedFrames,
        register: bool,
    ) -> Poll<Option<Item<M>>> {
        debug_assert!(frames.is_empty());
        let mut inner = lock(&self.0);
        let inner = &mut *inner;
        let item = match inner.markers.front() {
            Some(first) if first.at == 0 => {
                let marker = inner.markers.pop_front().map(|m| m.marker);
                marker.map(Item::Marker)
            }
            _ if inner.bytes.is_empty() => None,
            Some(first) => {
                // Only the frames before the marker: copied, which happens only when a writer
                // feeds more while a flush or close of its own is still under way.
                let (at, taken) = (first.at, first.frames);
                inner.bytes.split_into(at, frames);
                inner.last_batch = frames.bytes.len();
                for marker in &mut inner.markers {
                    marker.at -= at;
                    marker.frames -= taken;
                }
                inner.frames -= taken;
                Some(Item::Frames(taken))
            }
            None => {
                std::mem::swap(frames, &mut inner.bytes);
                inner.last_batch = frames.bytes.len();
                Some(Item::Frames(std::mem::take(&mut inner.frames)))
            }
        };
        let Some(item) = item else {
            if inner.closed || inner.sender_gone {
                return Poll::Ready(None);
            }
            if register {
                self::register(&mut inner.receiver_waker, cx);
            }
            return Poll::Pending;
        };
        let waker = if inner.has_room() {
            inner.sender_waker.take()
        } else {
            None
        };
        wake(waker);
        Poll::Ready(Some(item))
    }

    /// Whether nothing waits: no frame and no marker.
    pub(super) fn is_empty(&self) -> bool {
        let inner = lock(&self.0);
        inner.bytes.is_empty() && inner.markers.is_empty()
    }

    /// How many frames wait, if nothing else (no flush or close marker) does.
    pub(super) fn frames_only(&self) -> Option<usize> {
        let inner = lock(&self.0);
        inner.markers.is_empty().then_some(inner.frames)
    }

    /// Whether a flush or close marker waits.
    pub(super) fn has_markers(&self) -> bool {
        !lock(&self.0).markers.is_empty()
    }

    /// Takes no more items; those already queued can still be taken.
    pub(super) fn close(&mut self) {
        let mut inner = lock(&self.0);
        inner.closed = true;
        let waker = inner.sender_waker.take();
        drop(inner);
        wake(waker);
    }
}

impl<M> Drop for Receiver<M> {
    fn drop(&mut self) {
        let mut inner = lock(&self.0);
        inner.closed = true;
        let markers = std::mem::take(&mut inner.markers);
        inner.bytes = EncodedFrames::default();
        let waker = inner.sender_waker.take();
        drop(inner);
        // Dropped outside the lock: a marker may hold a channel whose waiter runs on drop.
        drop(markers);
        wake(waker);
    }
}

impl<M> fmt::Debug for Receiver<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = lock(&self.0);
        f.debug_struct("outbox::Receiver")
            .field("frames", &inner.frames)
            .field("markers", &inner.markers.len())
            .field("bytes", &inner.bytes.len())
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

    fn frame(tx: &mut Sender<&'static str>, byte: u8, len: usize) {
        let mut cx = Context::from_waker(noop_waker_ref());
        assert_eq!(tx.poll_ready(&mut cx), Poll::Ready(Ok(())));
        tx.encode(|buf| {
            buf.extend_from_slice(&vec![byte; len]);
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
    }

    fn next(
        rx: &mut Receiver<&'static str>,
        frames: &mut EncodedFrames,
    ) -> Option<Item<&'static str>> {
        let mut cx = Context::from_waker(noop_waker_ref());
        frames.clear();
        match rx.poll_next(&mut cx, frames) {
            Poll::Ready(item) => item,
            Poll::Pending => panic!("pending"),
        }
    }

    #[test]
    fn markers_stay_between_the_frames_around_them() {
        let (mut tx, mut rx) = outbox(16);
        let mut frames = EncodedFrames::default();
        frame(&mut tx, 1, 3);
        frame(&mut tx, 2, 2);
        tx.push_marker("flush").map_err(|_| ()).unwrap();
        frame(&mut tx, 3, 1);
        tx.push_marker("close").map_err(|_| ()).unwrap();
        frame(&mut tx, 4, 1);
        assert!(matches!(next(&mut rx, &mut frames), Some(Item::Frames(2))));
        assert_eq!(&frames.bytes[..], &[1, 1, 1, 2, 2]);
        assert!(matches!(
            next(&mut rx, &mut frames),
            Some(Item::Marker("flush"))
        ));
        assert!(matches!(next(&mut rx, &mut frames), Some(Item::Frames(1))));
        assert_eq!(&frames.bytes[..], &[3]);
        assert!(matches!(
            next(&mut rx, &mut frames),
            Some(Item::Marker("close"))
        ));
        // The driver closes after a Close: what follows it is never taken, and no more is.
        rx.close();
        let mut cx = Context::from_waker(noop_waker_ref());
        assert_eq!(tx.poll_ready(&mut cx), Poll::Ready(Err(Closed)));
        assert!(matches!(next(&mut rx, &mut frames), Some(Item::Frames(1))));
        assert_eq!(&frames.bytes[..], &[4]);
        assert!(next(&mut rx, &mut frames).is_none());
    }

    #[test]
    fn bounded_in_markers_and_bytes_and_one_message_always_fits() {
        let mut cx = Context::from_waker(noop_waker_ref());
        let (mut tx, mut rx) = outbox::<&'static str>(3);
        let mut frames = EncodedFrames::default();
        for i in 0..3 {
            frame(&mut tx, i, 1);
        }
        assert_eq!(tx.poll_ready(&mut cx), Poll::Ready(Ok(())));
        for marker in ["a", "b", "c"] {
            assert!(tx.push_marker(marker).is_ok());
        }
        assert!(tx.poll_ready(&mut cx).is_pending());
        assert!(matches!(next(&mut rx, &mut frames), Some(Item::Frames(3))));
        for marker in ["a", "b", "c"] {
            assert!(matches!(next(&mut rx, &mut frames), Some(Item::Marker(m)) if m == marker));
        }
        // A message larger than the byte bound goes into an empty outbox, then nothing more.
        frame(&mut tx, 9, MAX_BYTES + 1);
        assert!(tx.poll_ready(&mut cx).is_pending());
        assert!(matches!(next(&mut rx, &mut frames), Some(Item::Frames(1))));
        assert_eq!(tx.poll_ready(&mut cx), Poll::Ready(Ok(())));
    }

    #[test]
    fn wakes_the_driver_once_per_batch_and_the_writer_when_taken() {
        let (mut tx, mut rx) = outbox::<&'static str>(2);
        let rx_wakes = Arc::new(Count(AtomicUsize::new(0)));
        let rx_waker = Waker::from(rx_wakes.clone());
        let tx_wakes = Arc::new(Count(AtomicUsize::new(0)));
        let tx_waker = Waker::from(tx_wakes.clone());
        let mut frames = EncodedFrames::default();

        assert!(rx
            .poll_next(&mut Context::from_waker(&rx_waker), &mut frames)
            .is_pending());
        frame(&mut tx, 1, 1);
        frame(&mut tx, 2, MAX_BYTES);
        assert_eq!(rx_wakes.0.load(Ordering::SeqCst), 1);
        assert!(tx
            .poll_ready(&mut Context::from_waker(&tx_waker))
            .is_pending());
        assert!(matches!(next(&mut rx, &mut frames), Some(Item::Frames(2))));
        assert_eq!(tx_wakes.0.load(Ordering::SeqCst), 1);
        // The frames' allocation went to the driver; the outbox took the driver's empty one.
        assert_eq!(
            (frames.len(), frames.bytes[0], frames.bytes[1]),
            (1 + MAX_BYTES, 1, 2)
        );
    }

    #[test]
    fn ends_once_the_writer_is_gone_and_everything_is_taken() {
        let (mut tx, mut rx) = outbox::<&'static str>(4);
        let mut frames = EncodedFrames::default();
        frame(&mut tx, 1, 1);
        drop(tx);
        assert!(matches!(next(&mut rx, &mut frames), Some(Item::Frames(1))));
        assert!(next(&mut rx, &mut frames).is_none());
    }
}
