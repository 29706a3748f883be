//! The only code that moves frames between the codec's buffers and an `AsyncRead`/`AsyncWrite`.
//!
//! [`ReadState`] and [`WriteState`] own the buffers and the codec; the reader, writer and
//! connection types hold one of each next to their I/O object and call into them.

use std::fmt;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_io::{AsyncRead, AsyncWrite};
use prost::{Message, Name};
use prost_types::Any;

use super::names::NameCache;
use super::unpack;
use super::Frame;
use crate::codec::{any_fields, Codec};
use crate::error::{Error, Result};
use crate::metrics::{Direction, FrameCounter};

/// Room offered to each read when no larger frame is pending: big enough that many small
/// frames arrive per system call.
const READ_CHUNK: usize = 64 * 1024;

/// The receive buffer a quiet link keeps (one small message at a time fits), and the read into
/// the stack a link without one starts with. Larger buffers are given back when a burst ends.
const SMALL_LEN: usize = 2 * 1024;

/// The receive buffer of a link whose reads bring only tiny frames (heartbeats, small
/// requests one at a time): most links of a large fan-out hold one of these, not
/// [`SMALL_LEN`].
const TINY_LEN: usize = 256;

/// Receiving side: bytes read so far and the codec that cuts them into frames.
///
/// Frames are handed out as [`Bytes`] slices of the read buffer, not copies. The buffer is
/// written into again only once every frame sliced from it has been dropped (checked with
/// `Arc::get_mut`); while a caller still holds one, the next read goes into a fresh buffer. So a
/// reader that drops each message before asking for the next (the usual loop) reuses one buffer
/// for the whole burst: no allocation, no zero-filling and no page faults per frame. A buffer
/// left to held frames comes back when the last of them is dropped and is read into again
/// ([`Recycle`]), so a reader whose frames wait in a queue (a session's, a reliable stream's)
/// does not make a buffer per burst either. The
/// buffer grows to the largest frame received, which the codec's maximum bounds, and is given
/// back when a burst ends (see `poll_fill`): an idle link holds at most [`SMALL_LEN`] bytes.
pub(crate) struct ReadState {
    codec: Codec,
    /// Full name of the last message type unpacked by `poll_next_message`.
    full_name: NameCache,
    /// The last type URL `poll_next_view` checked (at most [`Frame::REMEMBERED_URL_LEN`] bytes)
    /// and where the name starts in it: the same URL again needs no second look.
    view_url: (Vec<u8>, usize),
    /// Always fully initialized (`poll_read` takes an initialized slice). Received bytes not
    /// yet handed out are `buf[start..end]`; `buf[end..]` is room for the next read.
    buf: Arc<Vec<u8>>,
    start: usize,
    end: usize,
    /// `buf` as `Bytes`, made once per filled buffer and sliced for each `Bytes` handed out.
    shared: Option<Bytes>,
    /// Set once the stream has ended (cleanly or with an error); nothing is read after that.
    finished: bool,
    /// The longest frame (with its prefix) received whole so far. A buffer for a frame up to
    /// this long is made at once instead of growing with what arrives: the peer has sent one
    /// that long before, so a stream of large frames whose buffer is given back between them
    /// (the reader caught up with the peer) costs one allocation per frame, not one per
    /// doubling.
    longest: usize,
    /// Where buffers left to frames that were still held come back once those are dropped
    /// (made with the first frame handed out).
    recycle: Option<Arc<Mutex<Recycle>>>,
    /// The last read found nothing to read with nothing buffered, and nothing was read since.
    idle: bool,
    /// `Recycle::parked` is set (so a read does not lock to clear it).
    parked: bool,
    /// Idle alone does not make `Recycle` drop its spare: the owner calls
    /// [`trim`](Self::trim) on a timer (a session's driver, at its heartbeat deadlines).
    deferred_trim: bool,
    /// Frames cut so far (`connect::metrics`).
    pub(super) counter: FrameCounter,
}

impl fmt::Debug for ReadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadState")
            .field("codec", &self.codec)
            .field("buffered", &self.buffered_len())
            .field("capacity", &self.buf.len())
            .field("finished", &self.finished)
            .finish()
    }
}

/// Lets frames (`Bytes`) keep the read buffer alive; the last one dropped after the reader
/// moved on gives the buffer back to it ([`Recycle`]).
struct SharedBuf {
    buf: Option<Arc<Vec<u8>>>,
    recycle: Arc<Mutex<Recycle>>,
}

impl AsRef<[u8]> for SharedBuf {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_deref().map_or(&[], Vec::as_slice)
    }
}

impl Drop for SharedBuf {
    fn drop(&mut self) {
        // `into_inner`: of the reader and the frames letting go at once, exactly one gets it.
        if let Some(buf) = self.buf.take().and_then(Arc::into_inner) {
            lock(&self.recycle).give_back(buf);
        }
    }
}

/// A reader whose frames are held after it has moved on (a reliable stream's inbound queue
/// holds what its application has not taken) needs a new buffer for each burst. Making one
/// costs an allocation, zero-filling and, for large ones, a page fault per 4 KiB; instead the
/// buffers whose frames were all dropped wait here for the reader to take them again. A queue
/// of large frames holds several buffers at once (one per frame at 1 MiB), so up to
/// [`SPARES`] are kept (never more than the held frames had at once), and none once the link
/// is quiet: when the reader has found nothing to read and every buffer it left has come
/// back, the spares are dropped, so an idle link holds no more than before.
#[derive(Debug, Default)]
struct Recycle {
    /// At most [`SPARES`].
    spares: Vec<Vec<u8>>,
    /// Buffers the reader left that have not come back.
    outstanding: usize,
    /// The reader found nothing to read with nothing buffered, and has read nothing since.
    parked: bool,
    /// The reader is finished: nothing is kept.
    closed: bool,
}

/// Buffers [`Recycle`] keeps for a busy reader.
const SPARES: usize = 4;

impl Recycle {
    /// A buffer the reader left is free again.
    fn give_back(&mut self, buf: Vec<u8>) {
        self.outstanding = self.outstanding.saturating_sub(1);
        if self.closed || (self.parked && self.outstanding == 0) {
            self.spares = Vec::new();
        } else if self.spares.len() < SPARES {
            self.spares.push(buf);
        } else if let Some(smallest) = self.spares.iter_mut().min_by_key(|spare| spare.len()) {
            // Full: the larger buffer stays.
            if smallest.len() < buf.len() {
                *smallest = buf;
            }
        }
    }

    /// A spare with room for `len` bytes, if there is one: the one given back last that has,
    /// most likely still in the CPU's cache.
    fn take(&mut self, len: usize) -> Option<Vec<u8>> {
        let at = self.spares.iter().rposition(|spare| spare.len() >= len)?;
        Some(self.spares.remove(at))
    }

    /// Keeps nothing.
    fn clear(&mut self) {
        self.spares = Vec::new();
    }
}

fn lock(recycle: &Mutex<Recycle>) -> std::sync::MutexGuard<'_, Recycle> {
    // Its state is valid whatever a panicking holder did (plain counters and buffers).
    recycle
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ReadState {
    pub(crate) fn new(codec: Codec) -> Self {
        Self {
            codec,
            full_name: NameCache::default(),
            view_url: (Vec::new(), 0),
            buf: Arc::default(),
            start: 0,
            end: 0,
            shared: None,
            finished: false,
            longest: 0,
            recycle: None,
            idle: false,
            parked: false,
            deferred_trim: false,
            counter: FrameCounter::new(Direction::Received),
        }
    }

    /// Next frame, reading from `io` as needed. `None` after a clean end of stream (EOF between
    /// frames); an error ends the stream too, and it yields `None` from then on.
    pub(crate) fn poll_next<R: AsyncRead + ?Sized>(
        &mut self,
        io: Pin<&mut R>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Any>>> {
        match ready!(self.poll_next_range(io, cx)) {
            Some(Ok(frame)) => match Any::decode(&self.buf[frame]) {
                Ok(any) => Poll::Ready(Some(Ok(any))),
                Err(source) => self.fail(Error::Decode {
                    type_name: Any::full_name(),
                    source,
                }),
            },
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => Poll::Ready(None),
        }
    }

    /// The bytes of the next frame's `Any` (without the length prefix), sliced out of the read
    /// buffer. Same end-of-stream and error behaviour as [`poll_next`](Self::poll_next).
    #[cfg(test)]
    pub(crate) fn poll_next_frame<R: AsyncRead + ?Sized>(
        &mut self,
        io: Pin<&mut R>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes>>> {
        let range = match ready!(self.poll_next_range(io, cx)) {
            Some(Ok(range)) => range,
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            None => return Poll::Ready(None),
        };
        Poll::Ready(Some(Ok(self.shared().slice(range))))
    }

    /// The next message, unpacked as `M` straight from the read buffer: no intermediate `Any`,
    /// and `Bytes` fields of `M` are slices of the buffer. Same end-of-stream and error
    /// behaviour as [`poll_next`](Self::poll_next); a frame of another type or with bytes that
    /// are not an `M` is an error for that frame only.
    pub(crate) fn poll_next_message<M: Message + Name + Default, R: AsyncRead + ?Sized>(
        &mut self,
        io: Pin<&mut R>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<M>>> {
        let range = match ready!(self.poll_next_range(io, cx)) {
            Some(Ok(range)) => range,
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            None => return Poll::Ready(None),
        };
        let frame = &self.buf[range.clone()];
        if let Some((type_url, value)) = any_fields(frame) {
            // Not UTF-8 (`Err`) or another type: prost's `Any` below says which.
            if let Ok(true) = self.full_name.is_url_of(&frame[type_url], M::full_name) {
                let value = self
                    .shared()
                    .slice(range.start + value.start..range.start + value.end);
                return Poll::Ready(Some(M::decode(value).map_err(|source| Error::Decode {
                    type_name: M::full_name(),
                    source,
                })));
            }
        }
        // The uncommon cases go through prost's `Any`, exactly as `poll_next` would.
        match Any::decode(frame) {
            Ok(any) => Poll::Ready(Some(unpack(any))),
            Err(source) => self.fail(Error::Decode {
                type_name: Any::full_name(),
                source,
            }),
        }
    }

    /// The next frame as a [`Frame`]: its type URL and value are slices of the read buffer, no
    /// `Any` is built. Same end-of-stream and error behaviour as [`poll_next`](Self::poll_next),
    /// including the error for bytes that are not an `Any`.
    pub(crate) fn poll_next_view<R: AsyncRead + ?Sized>(
        &mut self,
        io: Pin<&mut R>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame>>> {
        let range = match ready!(self.poll_next_range(io, cx)) {
            Some(Ok(range)) => range,
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            None => return Poll::Ready(None),
        };
        if let Some((type_url, value)) = any_fields(&self.buf[range.clone()]) {
            let at = |r: Range<usize>| range.start + r.start..range.start + r.end;
            let url = &self.buf[at(type_url.clone())];
            let seen =
                (!self.view_url.0.is_empty() && self.view_url.0 == url).then_some(self.view_url.1);
            // One slice of the buffer for the whole frame, its fields found by position.
            let data = self.shared().slice(range.clone());
            let frame = match seen {
                Some(name_start) => Some(Frame::checked(data, type_url, name_start, value)),
                None => Frame::new(data, type_url, value),
            };
            if let Some(frame) = frame {
                if seen.is_none() && frame.type_url_bytes().len() <= Frame::REMEMBERED_URL_LEN {
                    self.view_url.0.clear();
                    self.view_url.0.extend_from_slice(frame.type_url_bytes());
                    self.view_url.1 = frame.name_start();
                }
                return Poll::Ready(Some(Ok(frame)));
            }
        }
        // Not an `Any` we can see into (or a type URL that is not UTF-8): prost decides, and
        // gives the same error `poll_next` would.
        match Any::decode(&self.buf[range]) {
            Ok(any) => Poll::Ready(Some(Ok(Frame::from(any)))),
            Err(source) => self.fail(Error::Decode {
                type_name: Any::full_name(),
                source,
            }),
        }
    }

    /// `buf` as `Bytes`, made once per filled buffer and sliced for each frame.
    fn shared(&mut self) -> &Bytes {
        let buf = &self.buf;
        let recycle = self.recycle.get_or_insert_with(Arc::default);
        self.shared.get_or_insert_with(|| {
            Bytes::from_owner(SharedBuf {
                buf: Some(buf.clone()),
                recycle: recycle.clone(),
            })
        })
    }

    /// Lets go of `buf`: frames sliced from it may still hold it, and give it back to
    /// [`Recycle`] when the last of them is dropped.
    fn leave_buf(&mut self) {
        self.shared = None;
        let buf = std::mem::take(&mut self.buf);
        let Some(recycle) = self.recycle.as_ref().filter(|_| !buf.is_empty()) else {
            // No frame was ever handed out (nobody else holds it), or there is no buffer.
            return;
        };
        lock(recycle).outstanding += 1;
        if let Some(buf) = Arc::into_inner(buf) {
            lock(recycle).give_back(buf);
        }
    }

    /// A buffer of at least `len` bytes: the spare if it is that large, else a new one.
    fn new_buf(&mut self, len: usize) -> Vec<u8> {
        let spare = self.recycle.as_ref().and_then(|r| lock(r).take(len));
        spare.unwrap_or_else(|| vec![0; len])
    }

    /// The reader found nothing to read with nothing buffered (see [`Recycle`]).
    fn park(&mut self) {
        self.idle = true;
        if !self.deferred_trim {
            self.trim();
        }
    }

    /// Bytes arrived: the reader is busy again.
    fn unpark(&mut self) {
        self.idle = false;
        if std::mem::take(&mut self.parked) {
            if let Some(recycle) = &self.recycle {
                lock(recycle).parked = false;
            }
        }
    }

    /// If the reader is idle (nothing read since a read found nothing), the spare buffer is
    /// dropped now or, if frames still hold buffers, once the last of them comes back.
    pub(crate) fn trim(&mut self) {
        if !self.idle || self.parked {
            return;
        }
        if let Some(recycle) = &self.recycle {
            let mut recycle = lock(recycle);
            recycle.parked = true;
            if recycle.outstanding == 0 {
                recycle.clear();
            }
            self.parked = true;
        }
    }

    /// Leaves dropping the spare buffer of an idle reader to [`trim`](Self::trim), which the
    /// caller promises to call now and then (a reader whose frames are held while it reads
    /// on, with pauses between bursts, then reuses its buffers across the pauses).
    pub(crate) fn defer_trim(&mut self) {
        self.deferred_trim = true;
    }

    /// Where the next frame's `Any` lies in `buf`.
    fn poll_next_range<R: AsyncRead + ?Sized>(
        &mut self,
        mut io: Pin<&mut R>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Range<usize>>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        loop {
            let pending = &self.buf[self.start..self.end];
            // How many bytes from `start` the buffer should be able to hold before reading.
            let wanted = match self.codec.decode_header(pending) {
                Ok(Some((prefix_len, frame_len))) => {
                    let total = prefix_len + frame_len;
                    if pending.len() >= total {
                        let frame = self.start + prefix_len..self.start + total;
                        self.start += total;
                        self.counter.count(total);
                        self.longest = self.longest.max(total);
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    total.max(READ_CHUNK)
                }
                Ok(None) => READ_CHUNK,
                Err(e) => return self.fail(e),
            };
            match ready!(self.poll_fill(io.as_mut(), cx, wanted)) {
                Ok(0) if self.start == self.end => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    let buffered = self.buffered_len();
                    return self.fail(Error::Truncated { buffered });
                }
                Ok(_) => {}
                Err(e) => return self.fail(e.into()),
            }
        }
    }

    /// Ends the stream after an error, which is returned (once).
    pub(crate) fn fail<T>(&mut self, error: Error) -> Poll<Option<Result<T>>> {
        self.finish();
        Poll::Ready(Some(Err(error)))
    }

    fn finish(&mut self) {
        self.finished = true;
        self.leave_buf();
        if let Some(recycle) = &self.recycle {
            let mut recycle = lock(recycle);
            recycle.closed = true;
            recycle.clear();
        }
        (self.start, self.end) = (0, 0);
    }

    /// Makes room for `wanted` bytes from `start` (more than are buffered), then reads once from
    /// `io` into the room after `end`.
    ///
    /// Memory follows the traffic: with nothing buffered and no buffer of its own, the reader
    /// reads into the stack first ([`poll_probe`](Self::poll_probe)), so a link waiting for its
    /// peer holds no receive buffer; a read finding nothing to read with nothing buffered gives
    /// a buffer larger than [`SMALL_LEN`] back, so a link that has gone quiet after a burst
    /// keeps at most a small one.
    fn poll_fill<R: AsyncRead + ?Sized>(
        &mut self,
        mut io: Pin<&mut R>,
        cx: &mut Context<'_>,
        wanted: usize,
    ) -> Poll<io::Result<usize>> {
        // Frames handed out earlier hold clones of `buf` through `shared`; once they are all
        // gone the buffer is ours to write into again.
        self.shared = None;
        self.counter.publish();
        let pending = self.end - self.start;
        if pending == 0 {
            (self.start, self.end) = (0, 0);
            if self.buf.is_empty() || Arc::get_mut(&mut self.buf).is_none() {
                return self.poll_probe(io, cx);
            }
            // Ours and empty: read into it as it is, growing only once a frame needs more.
        } else {
            // The room wanted is grown into as bytes arrive (at most doubling per read), not
            // committed up front: a peer announcing a large frame and sending little of it
            // makes the buffer grow only with what it actually sends. Only a frame no longer
            // than one the peer has already sent whole gets its room at once.
            let longest = self.longest;
            let grow_to = |len: usize, end: usize| {
                if wanted <= longest {
                    wanted
                } else {
                    wanted.min(len.saturating_mul(2).max(end + READ_CHUNK))
                }
            };
            if Arc::get_mut(&mut self.buf).is_none() {
                // A caller still holds a frame: leave that buffer to it.
                let mut fresh = self.new_buf(grow_to(0, pending));
                fresh[..pending].copy_from_slice(&self.buf[self.start..self.end]);
                self.leave_buf();
                self.buf = Arc::new(fresh);
                (self.start, self.end) = (0, pending);
            }
            // Unique by now, so this never clones.
            let buf = Arc::make_mut(&mut self.buf);
            if self.start > 0 && buf.len() - self.start < wanted {
                // Only the start of one frame is pending: move it to the front.
                buf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, pending);
            }
            let len = grow_to(buf.len(), self.end);
            if buf.len() < len {
                // Zero-filled once; later frames reuse the room.
                buf.resize(len, 0);
            }
        }
        // Unique in both branches, so this never clones.
        let buf = Arc::make_mut(&mut self.buf);
        // A large frame is read up to its last byte and no further, so the next one starts at
        // the front of the buffer instead of being moved there; smaller frames come many per
        // read.
        let read_end = if wanted > READ_CHUNK {
            (self.start + wanted).min(buf.len())
        } else {
            buf.len()
        };
        loop {
            match io.as_mut().poll_read(cx, &mut buf[self.end..read_end]) {
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Poll::Ready(Ok(n)) => {
                    self.end += n;
                    self.unpark();
                    return Poll::Ready(Ok(n));
                }
                Poll::Pending => {
                    if pending == 0 {
                        if buf.len() > SMALL_LEN {
                            // The burst is over: give the room back until the next one.
                            self.leave_buf();
                        }
                        self.park();
                    }
                    return Poll::Pending;
                }
                other => return other,
            }
        }
    }

    /// Reads into a buffer on the stack, with nothing buffered and no buffer of our own (a
    /// frame still held keeps the last one): nothing is allocated until bytes arrive. Then the
    /// buffer is [`TINY_LEN`] or [`SMALL_LEN`] if they all fitted (a quiet link, or one
    /// message at a time: room for a few like them), or a whole [`READ_CHUNK`] if more are
    /// likely waiting.
    fn poll_probe<R: AsyncRead + ?Sized>(
        &mut self,
        mut io: Pin<&mut R>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        // Our share of a buffer whose frames are still held goes now, not at the next frame.
        self.leave_buf();
        let mut probe = [0; SMALL_LEN];
        let n = loop {
            match io.as_mut().poll_read(cx, &mut probe) {
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(n)) => break n,
                Poll::Pending => {
                    self.park();
                    return Poll::Pending;
                }
            }
        };
        self.unpark();
        if n > 0 {
            let len = if n <= TINY_LEN / 2 {
                TINY_LEN
            } else if n < SMALL_LEN {
                SMALL_LEN
            } else {
                READ_CHUNK
            };
            // A burst (more than a small read brings) takes the spare if there is one.
            let mut buf = if len == READ_CHUNK {
                self.new_buf(len)
            } else {
                vec![0; len]
            };
            buf[..n].copy_from_slice(&probe[..n]);
            self.buf = Arc::new(buf);
            (self.start, self.end) = (0, n);
        }
        Poll::Ready(Ok(n))
    }

    /// Changes the maximum frame length for frames not yet decoded (sessions negotiate it).
    pub(crate) fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.codec = Codec::with_max_frame_len(max_frame_len);
    }

    /// Bytes received but not yet returned as frames (carried over by `reunite`).
    pub(crate) fn buffered_len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the next frame (or the error to report instead) is already in the buffer, so
    /// that polling for it reads nothing from the stream.
    pub(crate) fn frame_buffered(&self) -> bool {
        let pending = &self.buf[self.start..self.end];
        match self.codec.decode_header(pending) {
            Ok(Some((prefix_len, frame_len))) => pending.len() >= prefix_len + frame_len,
            Ok(None) => self.finished,
            Err(_) => true,
        }
    }
}

/// Frame values at least this long are written from their own memory (a vectored write of the
/// frame's head from the write buffer and the value) instead of being copied into the write
/// buffer: for a large value the copy costs more than the extra slice in a `writev`.
pub(crate) const BY_REFERENCE_LEN: usize = 16 * 1024;

/// Most slices handed to one vectored write.
const MAX_SLICES: usize = 8;

/// A large frame value waiting to be written from its own memory (see [`BY_REFERENCE_LEN`]).
#[derive(Debug)]
struct Value {
    /// Where it goes: after this many bytes of the write buffer, counted as
    /// [`Values::written_buf`] is.
    at: u64,
    bytes: ValueBytes,
    /// How much of it has been written.
    done: usize,
}

/// The value's memory: taken over from an owned `Any`, or shared.
#[derive(Debug)]
enum ValueBytes {
    Owned(Vec<u8>),
    Shared(Bytes),
}

impl ValueBytes {
    fn len(&self) -> usize {
        match self {
            Self::Owned(vec) => vec.len(),
            Self::Shared(bytes) => bytes.len(),
        }
    }
}

/// The large values waiting, in order, and where they go between the write buffer's bytes.
/// Boxed, and made only when the first one is queued: most writers never see one.
#[derive(Debug, Default)]
struct Values {
    /// Bytes of the write buffer written (and dropped from it) since this was made: where the
    /// buffer starts in the sequence of all the bytes it has held since, which is how a
    /// value's `at` says where it goes.
    written_buf: u64,
    queue: std::collections::VecDeque<Value>,
    /// Bytes of `queue` not yet written.
    len: usize,
}

impl Values {
    /// Queues `bytes` to go out after the first `at` bytes the write buffer now holds.
    fn push(&mut self, at: usize, bytes: ValueBytes) {
        let value = Value {
            at: self.written_buf + at as u64,
            bytes,
            done: 0,
        };
        self.len += value.rest().len();
        self.queue.push_back(value);
    }

    /// How many bytes of `buf` go out before the next value (all of them if none is waiting).
    fn buf_before_next(&self, buf: &[u8]) -> usize {
        self.queue
            .front()
            .map_or(buf.len(), |value| self.position(value))
    }

    /// Where `value` goes in `buf`: it is never placed beyond what `buf` holds, and `buf` is
    /// only written up to it.
    fn position(&self, value: &Value) -> usize {
        (value.at - self.written_buf) as usize
    }

    /// The next bytes to write, `buf`'s and the values', in order, as at most `slices.len()`
    /// non-empty slices; returns how many.
    fn gather<'a>(&'a self, buf: &'a [u8], slices: &mut [io::IoSlice<'a>]) -> usize {
        let mut count = 0;
        let mut from = 0;
        for value in &self.queue {
            if count + 2 > slices.len() {
                return count;
            }
            let to = self.position(value);
            for part in [&buf[from..to], value.rest()] {
                if !part.is_empty() {
                    slices[count] = io::IoSlice::new(part);
                    count += 1;
                }
            }
            from = to;
        }
        if from < buf.len() && count < slices.len() {
            slices[count] = io::IoSlice::new(&buf[from..]);
            count += 1;
        }
        count
    }
}

impl Value {
    fn rest(&self) -> &[u8] {
        let all = match &self.bytes {
            ValueBytes::Owned(vec) => vec.as_slice(),
            ValueBytes::Shared(bytes) => bytes.as_ref(),
        };
        &all[self.done..]
    }
}

/// Frames encoded elsewhere (a session's outbox) for [`WriteState::append_encoded`]: their
/// bytes, with large values (at least [`BY_REFERENCE_LEN`]) left where they are and placed
/// between those bytes, so a value encoded once (a reliable stream's retransmit queue) is not
/// copied again on its way to the socket.
#[derive(Debug, Default)]
pub(crate) struct EncodedFrames {
    pub(crate) bytes: BytesMut,
    /// Each value goes after `bytes[..offset]`; offsets never decrease, and each value comes
    /// after its frame's head, so never at offset 0.
    values: std::collections::VecDeque<(usize, Bytes)>,
    values_len: usize,
}

impl EncodedFrames {
    /// Bytes of frames held, values included.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len() + self.values_len
    }

    /// No frame held (a value never comes without its head in `bytes`).
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// `value` as the rest of the frame whose head `bytes` now ends with.
    pub(crate) fn push_value(&mut self, value: Bytes) {
        self.values_len += value.len();
        self.values.push_back((self.bytes.len(), value));
    }

    /// Moves the frames in the first `at` bytes (values placed up to there included) into
    /// `into`, which must be empty.
    pub(crate) fn split_into(&mut self, at: usize, into: &mut EncodedFrames) {
        debug_assert!(into.is_empty() && into.values.is_empty());
        into.bytes.extend_from_slice(&self.bytes[..at]);
        self.bytes.advance(at);
        while let Some(&(offset, _)) = self.values.front() {
            if offset > at {
                break;
            }
            if let Some((offset, value)) = self.values.pop_front() {
                self.values_len -= value.len();
                into.values_len += value.len();
                into.values.push_back((offset, value));
            }
        }
        for (offset, _) in &mut self.values {
            *offset -= at;
        }
    }

    /// Appends `msg` as one frame of `type_url`, its large `Bytes` fields (at least
    /// [`BY_REFERENCE_LEN`]) kept where they are. `bytes` is left unchanged on an error.
    pub(crate) fn encode_message_as(
        &mut self,
        codec: &Codec,
        type_url: &str,
        msg: &impl Message,
    ) -> Result<()> {
        let (values, values_len) = (&mut self.values, &mut self.values_len);
        codec.encode_message_placing(
            type_url,
            msg,
            &mut self.bytes,
            BY_REFERENCE_LEN,
            |at, value| {
                *values_len += value.len();
                values.push_back((at, value));
            },
        )?;
        Ok(())
    }

    /// Drops every frame (keeping the allocation of `bytes`).
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.values.clear();
        self.values_len = 0;
    }
}

/// Sending side: encoded frames not yet written, and the codec that encodes them.
///
/// Frames are encoded into one buffer, except for large values (at least [`BY_REFERENCE_LEN`]
/// bytes handed over as an owned `Any` or as `Bytes`), which stay where they are and are
/// written between the buffer's bytes with vectored writes.
#[derive(Debug)]
pub(crate) struct WriteState {
    codec: Codec,
    /// Type URL of the last message type sent.
    type_url: NameCache,
    buf: BytesMut,
    /// Large values not yet (completely) written.
    values: Option<Box<Values>>,
    /// The most `buf` has held since it was last given back: at least what it has allocated.
    peak: usize,
    /// Above this many buffered bytes, `poll_ready` writes before accepting more.
    high_water: usize,
    /// Set after `poll_close` completes or a write fails; no frame is accepted after that.
    closed: bool,
    /// Frames encoded so far (`connect::metrics`).
    pub(super) counter: FrameCounter,
}

impl WriteState {
    pub(crate) fn new(codec: Codec, high_water: usize) -> Self {
        Self {
            codec,
            type_url: NameCache::default(),
            buf: BytesMut::new(),
            values: None,
            peak: 0,
            high_water,
            closed: false,
            counter: FrameCounter::new(Direction::Sent),
        }
    }

    /// Ready for another frame once less than the high-water mark is buffered. Writes (without
    /// flushing) to get there, so a fast producer is slowed to the socket's pace.
    pub(crate) fn poll_ready<W: AsyncWrite + ?Sized>(
        &mut self,
        io: Pin<&mut W>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<()>> {
        if self.closed {
            return Poll::Ready(Err(Error::Closed));
        }
        if self.over_high_water() {
            ready!(self.poll_write_buf(io, cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Whether [`poll_ready`](Self::poll_ready) writes before it is ready.
    pub(crate) fn over_high_water(&self) -> bool {
        self.buffered_len() >= self.high_water
    }

    pub(crate) fn encode(&mut self, any: &Any) -> Result<()> {
        if self.closed {
            return Err(Error::Closed);
        }
        let before = self.buf.len();
        self.codec.encode(any, &mut self.buf)?;
        self.counter.count(self.buf.len() - before);
        self.peak = self.peak.max(self.buf.len());
        Ok(())
    }

    /// [`encode`](Self::encode), keeping a large value where it is instead of copying it.
    pub(crate) fn encode_owned(&mut self, any: Any) -> Result<()> {
        if any.value.len() < BY_REFERENCE_LEN {
            return self.encode(&any);
        }
        self.encode_by_reference(&any.type_url, ValueBytes::Owned(any.value))
    }

    /// A frame of type `M` whose value (`M` encoded) is `value`; a large value is written from
    /// where it is.
    pub(crate) fn encode_value_of<M: Name>(&mut self, value: Bytes) -> Result<()> {
        if self.closed {
            return Err(Error::Closed);
        }
        let type_url = self.type_url.get(crate::codec::type_url::<M>);
        let before = self.buf.len();
        if value.len() >= BY_REFERENCE_LEN {
            self.codec
                .encode_head(type_url, value.len(), 0, &mut self.buf)?;
            self.queue_value(before, ValueBytes::Shared(value));
            return Ok(());
        }
        if self
            .codec
            .encode_head(type_url, value.len(), value.len(), &mut self.buf)?
        {
            self.buf.extend_from_slice(&value);
        }
        self.counter.count(self.buf.len() - before);
        self.peak = self.peak.max(self.buf.len());
        Ok(())
    }

    /// A frame of `type_url` whose value, `bytes`, is written from where it is.
    fn encode_by_reference(&mut self, type_url: &str, bytes: ValueBytes) -> Result<()> {
        if self.closed {
            return Err(Error::Closed);
        }
        let before = self.buf.len();
        let value_len = bytes.len();
        self.codec
            .encode_head(type_url, value_len, 0, &mut self.buf)?;
        self.queue_value(before, bytes);
        Ok(())
    }

    /// Queues `bytes` as the value of the frame whose head `buf` now ends with (it started at
    /// `head_start`).
    fn queue_value(&mut self, head_start: usize, bytes: ValueBytes) {
        let value_len = bytes.len();
        let values = self.values.get_or_insert_with(Box::default);
        values.push(self.buf.len(), bytes);
        self.counter.count(self.buf.len() - head_start + value_len);
        self.peak = self.peak.max(self.buf.len());
    }

    pub(crate) fn encode_message<M: Message + Name>(&mut self, msg: &M) -> Result<()> {
        if self.closed {
            return Err(Error::Closed);
        }
        let type_url = self.type_url.get(crate::codec::type_url::<M>);
        let before = self.buf.len();
        // Large `Bytes` fields are written from where they are, as `encode_value_of` writes a
        // large value.
        let values = &mut self.values;
        let placed = self.codec.encode_message_placing(
            type_url,
            msg,
            &mut self.buf,
            BY_REFERENCE_LEN,
            |at, bytes| {
                let values = values.get_or_insert_with(Box::default);
                values.push(at, ValueBytes::Shared(bytes));
            },
        )?;
        self.counter.count(self.buf.len() - before + placed);
        self.peak = self.peak.max(self.buf.len());
        Ok(())
    }

    /// Appends whole frames encoded elsewhere (a session's writer encodes into its own buffer;
    /// each frame was checked against the maximum there). When nothing is buffered here, the
    /// allocation of `frames.bytes` is adopted and this writer's empty one is handed back in
    /// it, so no bytes are copied; a large batch behind bytes still buffered is written from
    /// where it is; otherwise the bytes are appended. The values between them stay where they
    /// are. `frames` is empty afterwards. `count` is how many frames they are.
    pub(crate) fn append_encoded(
        &mut self,
        frames: &mut EncodedFrames,
        count: usize,
    ) -> Result<()> {
        if self.closed {
            return Err(Error::Closed);
        }
        self.counter.count_many(count, frames.len());
        let base = self.buf.len();
        if base == 0 {
            // Values still waiting go before these frames: they are placed after all of
            // `buf` that was ever written, which stays where the adopted bytes start.
            std::mem::swap(&mut self.buf, &mut frames.bytes);
        } else if frames.values.is_empty() && frames.bytes.len() >= BY_REFERENCE_LEN {
            // Copying it behind what is buffered would cost more than taking a fresh buffer
            // for the next batch.
            let bytes = std::mem::take(&mut frames.bytes).freeze();
            let values = self.values.get_or_insert_with(Box::default);
            values.push(base, ValueBytes::Shared(bytes));
            return Ok(());
        } else {
            self.buf.extend_from_slice(&frames.bytes);
        }
        if !frames.values.is_empty() {
            let values = self.values.get_or_insert_with(Box::default);
            for (offset, bytes) in frames.values.drain(..) {
                values.push(base + offset, ValueBytes::Shared(bytes));
            }
        }
        frames.clear();
        self.peak = self.peak.max(self.buf.len());
        Ok(())
    }

    /// Writes everything buffered, then flushes `io`. A buffer that grew past [`SMALL_LEN`]
    /// is given back once written (the next frame takes a new one), so a link that has gone
    /// quiet after a burst holds no large write buffer; small frames keep reusing theirs.
    pub(crate) fn poll_flush<W: AsyncWrite + ?Sized>(
        &mut self,
        mut io: Pin<&mut W>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<()>> {
        ready!(self.poll_write_buf(io.as_mut(), cx))?;
        // An adopted buffer (a session's batch) may have more room than it held.
        if self.peak > SMALL_LEN || self.buf.capacity() > SMALL_LEN {
            self.buf = BytesMut::new();
            self.peak = 0;
        }
        Poll::Ready(ready!(io.poll_flush(cx)).map_err(|e| self.fail(e)))
    }

    /// Flushes, then shuts the write side of `io` down.
    pub(crate) fn poll_close<W: AsyncWrite + ?Sized>(
        &mut self,
        mut io: Pin<&mut W>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<()>> {
        if !self.closed {
            ready!(self.poll_flush(io.as_mut(), cx))?;
        }
        let result = ready!(io.poll_close(cx));
        self.closed = true;
        Poll::Ready(result.map_err(Error::from))
    }

    /// Writes until everything is written (the buffer and the large values between its bytes).
    /// A short write keeps the rest for the next call. A write of zero bytes (the transport can
    /// take no more) is an error, as is any I/O error; either closes the writer.
    fn poll_write_buf<W: AsyncWrite + ?Sized>(
        &mut self,
        mut io: Pin<&mut W>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<()>> {
        self.counter.publish();
        loop {
            let written = match self.values.as_deref() {
                Some(values) if !values.queue.is_empty() => {
                    let mut slices = [io::IoSlice::new(&[]); MAX_SLICES];
                    let count = values.gather(&self.buf, &mut slices);
                    io.as_mut().poll_write_vectored(cx, &slices[..count])
                }
                _ if self.buf.is_empty() => return Poll::Ready(Ok(())),
                _ => io.as_mut().poll_write(cx, &self.buf),
            };
            match ready!(written) {
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "transport accepted no bytes");
                    return Poll::Ready(Err(self.fail(e)));
                }
                Ok(n) => self.consume(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(self.fail(e))),
            }
        }
    }

    /// Drops the first `n` bytes written.
    fn consume(&mut self, mut n: usize) {
        let Some(values) = self.values.as_deref_mut() else {
            self.buf.advance(n.min(self.buf.len()));
            return;
        };
        while n > 0 {
            let head = values.buf_before_next(&self.buf);
            if head > 0 {
                let taken = n.min(head);
                self.buf.advance(taken);
                values.written_buf += taken as u64;
                n -= taken;
                continue;
            }
            let Some(value) = values.queue.front_mut() else {
                // More written than was buffered: the transport miscounted; nothing to drop.
                return;
            };
            let taken = n.min(value.rest().len());
            value.done += taken;
            values.len -= taken;
            n -= taken;
            if value.rest().is_empty() {
                values.queue.pop_front();
            }
        }
    }

    /// Closes the writer after a failed I/O operation: what was buffered can no longer be
    /// delivered in order, so it is dropped and later sends fail with [`Error::Closed`].
    fn fail(&mut self, e: io::Error) -> Error {
        self.closed = true;
        self.buf = BytesMut::new();
        self.values = None;
        self.peak = 0;
        e.into()
    }

    /// Changes the maximum frame length for frames encoded from now on.
    pub(crate) fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.codec = Codec::with_max_frame_len(max_frame_len);
    }

    /// Bytes encoded but not yet written.
    pub(crate) fn buffered_len(&self) -> usize {
        self.buf.len() + self.values.as_ref().map_or(0, |values| values.len)
    }

    /// The settings this writer was made with (for a connection rebuilt on another stream).
    #[cfg_attr(not(feature = "sctp"), allow(dead_code))]
    pub(crate) fn config(&self) -> super::ConnectionConfig {
        super::ConnectionConfig::default()
            .with_max_frame_len(self.codec.max_frame_len())
            .with_write_high_water(self.high_water)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::Cursor;
    use std::future::poll_fn;

    /// Frames whose values are `count` distinct fills of `size` bytes.
    fn wire(count: usize, size: usize) -> Vec<u8> {
        let codec = Codec::new();
        let mut buf = BytesMut::new();
        for i in 0..count {
            let any = Any {
                type_url: "t/x.Y".into(),
                value: vec![i as u8; size],
            };
            codec.encode(&any, &mut buf).unwrap();
        }
        buf.to_vec()
    }

    fn next_frame<R: AsyncRead + Unpin>(state: &mut ReadState, io: &mut R) -> Option<Bytes> {
        block_on(poll_fn(|cx| state.poll_next_frame(Pin::new(&mut *io), cx))).map(|r| r.unwrap())
    }

    fn value(frame: &Bytes) -> Vec<u8> {
        Any::decode(frame.clone()).unwrap().value
    }

    #[test]
    fn the_buffer_is_reused_not_reallocated() {
        let mut io = Cursor::new(wire(50, 100 * 1024));
        let mut state = ReadState::new(Codec::new());
        drop(next_frame(&mut state, &mut io));
        let buffer = Arc::as_ptr(&state.buf);
        let capacity = state.buf.len();
        for _ in 1..49 {
            drop(next_frame(&mut state, &mut io));
            assert_eq!(Arc::as_ptr(&state.buf), buffer);
        }
        assert!(capacity <= 2 * (100 * 1024 + 64), "{capacity}");
    }

    /// Reads one byte per call, answering `Pending` (after waking) every other call.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        pending: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            self.pending = !self.pending;
            if self.pending {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let Some(&byte) = self.data.get(self.pos) else {
                return Poll::Ready(Ok(0));
            };
            buf[0] = byte;
            self.pos += 1;
            Poll::Ready(Ok(1))
        }
    }

    #[test]
    fn held_frames_survive_byte_by_byte_reads() {
        let mut io = Trickle {
            data: wire(40, 100),
            pos: 0,
            pending: false,
        };
        let mut state = ReadState::new(Codec::new());
        let mut held = Vec::new();
        while let Some(frame) = next_frame(&mut state, &mut io) {
            held.push(frame);
        }
        assert_eq!(held.len(), 40);
        for (i, frame) in held.iter().enumerate() {
            assert_eq!(value(frame), vec![i as u8; 100]);
        }
    }

    #[test]
    fn held_frames_survive_big_reads() {
        let mut io = Cursor::new(wire(2000, 100));
        let mut state = ReadState::new(Codec::new());
        let mut held = Vec::new();
        while let Some(frame) = next_frame(&mut state, &mut io) {
            held.push(frame);
        }
        assert_eq!(held.len(), 2000);
        for (i, frame) in held.iter().enumerate() {
            assert_eq!(value(frame), vec![i as u8; 100]);
        }
    }

    #[test]
    fn an_announced_length_is_not_committed_before_its_bytes_arrive() {
        // 8 MiB announced, 100 bytes sent.
        let mut bytes = Vec::new();
        prost::encoding::encode_varint(8 << 20, &mut bytes);
        bytes.extend_from_slice(&[7; 100]);
        let mut io = Cursor::new(bytes);
        let mut state = ReadState::new(Codec::new());
        let mut largest = 0;
        let result = block_on(poll_fn(|cx| {
            let poll = state.poll_next_frame(Pin::new(&mut io), cx);
            largest = largest.max(state.buf.len());
            poll
        }));
        assert!(
            matches!(result, Some(Err(Error::Truncated { buffered: 104 }))),
            "{result:?}"
        );
        assert!(largest <= 2 * READ_CHUNK, "{largest}");
    }

    #[test]
    fn a_large_frame_grows_the_buffer_to_its_size_and_no_more() {
        let mut io = Cursor::new(wire(3, 3 << 20));
        let mut state = ReadState::new(Codec::new());
        for i in 0..3 {
            let frame = next_frame(&mut state, &mut io).unwrap();
            assert_eq!(value(&frame), vec![i as u8; 3 << 20]);
        }
        assert!(state.buf.len() < (3 << 20) + 64, "{}", state.buf.len());
    }

    /// Hands out its chunks (as much of one as fits per read); `None` is one `Pending`, and
    /// once they are all out every read is `Pending`.
    struct Script(std::collections::VecDeque<Option<Vec<u8>>>);

    impl AsyncRead for Script {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            match self.0.pop_front() {
                Some(Some(mut chunk)) => {
                    let n = chunk.len().min(buf.len());
                    buf[..n].copy_from_slice(&chunk[..n]);
                    if n < chunk.len() {
                        self.0.push_front(Some(chunk.split_off(n)));
                    }
                    Poll::Ready(Ok(n))
                }
                _ => Poll::Pending,
            }
        }
    }

    /// Polls once (the script needs no wake-ups).
    fn poll_once(state: &mut ReadState, io: &mut Script) -> Poll<Option<Bytes>> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        state
            .poll_next_frame(Pin::new(io), &mut cx)
            .map(|frame| frame.map(|r| r.unwrap()))
    }

    #[test]
    fn a_link_waiting_for_its_peer_holds_no_receive_buffer() {
        let mut io = Script(Default::default());
        let mut state = ReadState::new(Codec::new());
        assert!(poll_once(&mut state, &mut io).is_pending());
        assert_eq!(state.buf.len(), 0);
    }

    #[test]
    fn the_receive_buffer_is_given_back_after_a_burst() {
        let mut io = Script([Some(wire(3, 1 << 20))].into());
        let mut state = ReadState::new(Codec::new());
        for i in 0..3 {
            match poll_once(&mut state, &mut io) {
                Poll::Ready(Some(frame)) => assert_eq!(value(&frame), vec![i as u8; 1 << 20]),
                other => panic!("{other:?}"),
            }
            assert!(state.buf.len() >= 1 << 20);
        }
        assert!(poll_once(&mut state, &mut io).is_pending());
        assert!(state.buf.len() <= SMALL_LEN, "{}", state.buf.len());
    }

    fn spare(state: &ReadState) -> Option<usize> {
        let recycle = lock(state.recycle.as_ref()?);
        recycle.spares.iter().map(Vec::len).max()
    }

    #[test]
    fn a_buffer_left_to_held_frames_comes_back_when_they_are_dropped() {
        const LEN: usize = 256 * 1024;
        let chunks = (0..4).map(|_| Some(wire(1, LEN))).collect();
        let mut io = Script(chunks);
        let mut state = ReadState::new(Codec::new());
        let first = match poll_once(&mut state, &mut io) {
            Poll::Ready(Some(frame)) => frame,
            other => panic!("{other:?}"),
        };
        let first_buf = state.buf.as_ptr();
        // Held: the next frame goes into a new buffer.
        let second = match poll_once(&mut state, &mut io) {
            Poll::Ready(Some(frame)) => frame,
            other => panic!("{other:?}"),
        };
        assert_ne!(state.buf.as_ptr(), first_buf);
        assert_eq!(spare(&state), None);
        drop(first);
        assert!(spare(&state).is_some_and(|len| len >= LEN));
        // The third frame is read into the first one's buffer, not a new one.
        let third = match poll_once(&mut state, &mut io) {
            Poll::Ready(Some(frame)) => frame,
            other => panic!("{other:?}"),
        };
        assert_eq!(state.buf.as_ptr(), first_buf);
        assert_eq!(value(&third), vec![0; LEN]);
        assert_eq!(value(&second), vec![0; LEN]);
    }

    #[test]
    fn a_queue_of_large_frames_reuses_every_buffer_it_gives_back() {
        // A reliable stream's inbound queue holds several 1 MiB frames, each in a buffer of
        // its own: once the application has taken them, the next ones are read into those
        // buffers again, not into new ones (each new one costs an allocation and a page
        // fault per 4 KiB).
        const LEN: usize = 1 << 20;
        const HELD: usize = 3;
        let chunks = (0..2 * HELD).map(|_| Some(wire(1, LEN))).collect();
        let mut io = Script(chunks);
        let mut state = ReadState::new(Codec::new());
        let mut next = |state: &mut ReadState| match poll_once(state, &mut io) {
            Poll::Ready(Some(frame)) => (frame, state.buf.as_ptr()),
            other => panic!("{other:?}"),
        };
        let (held, first_bufs): (Vec<_>, Vec<_>) = (0..HELD).map(|_| next(&mut state)).unzip();
        assert!(spare(&state).is_none(), "all held");
        drop(held);
        // Every buffer but the reader's current one waits to be read into again.
        let spares = |state: &ReadState| lock(state.recycle.as_ref().expect("frames")).spares.len();
        assert_eq!(spares(&state), HELD - 1);
        let (again, second_bufs): (Vec<_>, Vec<_>) = (0..HELD).map(|_| next(&mut state)).unzip();
        for buf in &second_bufs[1..] {
            assert!(
                first_bufs.contains(buf),
                "a buffer given back was not reused"
            );
        }
        assert_eq!(spares(&state), 0, "taken again");
        for frame in &again {
            assert_eq!(value(frame), vec![0; LEN]);
        }
    }

    #[test]
    fn an_idle_reader_keeps_no_spare_buffer() {
        const LEN: usize = 256 * 1024;
        for deferred in [false, true] {
            let chunks = [Some(wire(1, LEN)), None, Some(wire(1, LEN)), None];
            let mut io = Script(chunks.into());
            let mut state = ReadState::new(Codec::new());
            if deferred {
                state.defer_trim();
            }
            let Poll::Ready(Some(first)) = poll_once(&mut state, &mut io) else {
                panic!("a frame")
            };
            // Nothing more to read: the reader is idle, its buffer held by `first`.
            assert!(poll_once(&mut state, &mut io).is_pending());
            drop(first);
            if deferred {
                // Kept across the pause, for the next burst.
                assert!(spare(&state).is_some());
                // The owner's timer finds the reader still idle: the spare goes.
                state.trim();
                assert_eq!(spare(&state), None);
                let Poll::Ready(Some(second)) = poll_once(&mut state, &mut io) else {
                    panic!("a frame")
                };
                assert!(poll_once(&mut state, &mut io).is_pending());
                // Found idle while a frame holds the buffer: it goes when that is dropped.
                state.trim();
                drop(second);
                assert_eq!(spare(&state), None);
            } else {
                assert_eq!(spare(&state), None);
            }
        }
    }

    #[test]
    fn a_frame_as_long_as_an_earlier_one_gets_its_room_at_once() {
        let one = wire(1, 1 << 20);
        let start = 4 * 1024;
        let chunks = [
            Some(one.clone()),
            None,
            Some(one[..start].to_vec()),
            None,
            Some(one[start..].to_vec()),
        ];
        let mut io = Script(chunks.into());
        let mut state = ReadState::new(Codec::new());
        assert!(matches!(
            poll_once(&mut state, &mut io),
            Poll::Ready(Some(_))
        ));
        assert!(poll_once(&mut state, &mut io).is_pending());
        assert!(state.buf.len() <= SMALL_LEN, "{}", state.buf.len());
        // The start of the next frame is in: the room for all of it was made in one step.
        assert!(poll_once(&mut state, &mut io).is_pending());
        assert_eq!(state.buf.len(), one.len());
        match poll_once(&mut state, &mut io) {
            Poll::Ready(Some(frame)) => assert_eq!(value(&frame), vec![0; 1 << 20]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn small_messages_one_at_a_time_reuse_one_small_buffer() {
        let one = wire(1, 200);
        let mut io = Script((0..20).flat_map(|_| [Some(one.clone()), None]).collect());
        let mut state = ReadState::new(Codec::new());
        let mut buffers = std::collections::HashSet::new();
        for _ in 0..20 {
            match poll_once(&mut state, &mut io) {
                Poll::Ready(Some(frame)) => assert_eq!(value(&frame), vec![0; 200]),
                other => panic!("{other:?}"),
            }
            buffers.insert(Arc::as_ptr(&state.buf));
            assert!(poll_once(&mut state, &mut io).is_pending());
            assert_eq!(state.buf.len(), SMALL_LEN);
        }
        assert_eq!(buffers.len(), 1);

        // Tiny ones (heartbeats) keep a tiny buffer.
        let one = wire(1, 10);
        let mut io = Script((0..5).flat_map(|_| [Some(one.clone()), None]).collect());
        let mut state = ReadState::new(Codec::new());
        for _ in 0..5 {
            assert!(matches!(
                poll_once(&mut state, &mut io),
                Poll::Ready(Some(_))
            ));
            assert!(poll_once(&mut state, &mut io).is_pending());
            assert_eq!(state.buf.len(), TINY_LEN);
        }
    }

    #[test]
    fn the_write_buffer_is_given_back_after_a_burst() {
        let mut out = Cursor::new(Vec::new());
        let mut state = WriteState::new(Codec::new(), 64 * 1024);
        let big = Any {
            type_url: "t/x.Y".into(),
            value: vec![1; 1 << 20],
        };
        let small = Any {
            type_url: "t/x.Y".into(),
            value: vec![2; 10],
        };
        let flush = |state: &mut WriteState, out: &mut Cursor<Vec<u8>>| {
            block_on(poll_fn(|cx| state.poll_flush(Pin::new(&mut *out), cx))).unwrap()
        };
        state.encode(&big).unwrap();
        flush(&mut state, &mut out);
        // What the next frame is written from: a buffer of its own size, not the burst's.
        state.encode(&small).unwrap();
        assert!(
            state.buf.capacity() <= SMALL_LEN,
            "{}",
            state.buf.capacity()
        );
        // Small frames keep reusing theirs.
        let before = state.buf.as_ptr();
        flush(&mut state, &mut out);
        state.encode(&small).unwrap();
        assert_eq!(state.buf.as_ptr(), before);
        flush(&mut state, &mut out);
        let written = out.into_inner();
        assert_eq!(written.len(), wire_len(&[&big, &small, &small]));
    }

    /// Takes at most `limits[i]` bytes on its i-th write (cycling), across all the slices of a
    /// vectored write, answering `Pending` (after waking) before every other write.
    struct Stingy {
        out: Vec<u8>,
        limits: Vec<usize>,
        calls: usize,
        pending: bool,
    }

    impl Stingy {
        fn new(limits: Vec<usize>) -> Self {
            Self {
                out: Vec::new(),
                limits,
                calls: 0,
                pending: false,
            }
        }
    }

    impl AsyncWrite for Stingy {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.pending = !self.pending;
            if self.pending {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let mut room = self.limits[self.calls % self.limits.len()];
            self.calls += 1;
            let mut n = 0;
            for buf in bufs {
                let take = room.min(buf.len());
                self.out.extend_from_slice(&buf[..take]);
                (room, n) = (room - take, n + take);
            }
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// `count` frames of `Payload`-like values, every third one at least `BY_REFERENCE_LEN`.
    fn mixed(count: usize) -> Vec<Any> {
        (0..count)
            .map(|i| Any {
                type_url: format!("type.googleapis.com/x.Y{}", i % 2),
                value: match i % 3 {
                    0 => vec![i as u8; BY_REFERENCE_LEN + i],
                    1 => vec![i as u8; i],
                    _ => vec![i as u8; 100 + 7 * i],
                },
            })
            .collect()
    }

    #[test]
    fn large_values_go_out_in_order_whatever_the_writes_take() {
        let frames = mixed(40);
        let mut expected = BytesMut::new();
        for any in &frames {
            Codec::new().encode(any, &mut expected).unwrap();
        }
        let limits = [
            vec![1, 7, 4096],
            vec![BY_REFERENCE_LEN + 3, 5],
            vec![usize::MAX],
        ];
        // A small high-water mark, so frames are written while others are still queued, and
        // one above all of them: more values than one vectored write takes.
        for (limits, high_water) in limits
            .into_iter()
            .flat_map(|l| [(l.clone(), 1000), (l, 1 << 30)])
        {
            let mut state = WriteState::new(Codec::new(), high_water);
            let mut io = Stingy::new(limits);
            for (i, any) in frames.iter().enumerate() {
                block_on(poll_fn(|cx| state.poll_ready(Pin::new(&mut io), cx))).unwrap();
                if i % 2 == 0 {
                    state.encode_owned(any.clone()).unwrap();
                } else {
                    // The same bytes through the `Bytes` path (named by the URL's own type).
                    let before = state.buffered_len();
                    if any.type_url.ends_with("Y1") {
                        state
                            .encode_value_of::<Y1>(Bytes::from(any.value.clone()))
                            .unwrap();
                    } else {
                        state.encode(any).unwrap();
                    }
                    assert!(state.buffered_len() > before);
                }
            }
            block_on(poll_fn(|cx| state.poll_flush(Pin::new(&mut io), cx))).unwrap();
            assert_eq!(state.buffered_len(), 0);
            assert!(state.values.as_ref().is_none_or(|v| v.queue.is_empty()));
            assert_eq!(io.out.len(), expected.len());
            assert!(io.out == expected[..], "bytes differ");
        }
    }

    /// A message with large and small `Bytes` fields, a large `Vec<u8>` one and a nested one,
    /// as prost-build generates them.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Parts {
        #[prost(bytes = "bytes", tag = "1")]
        head: Bytes,
        #[prost(string, tag = "2")]
        name: String,
        #[prost(bytes = "bytes", repeated, tag = "3")]
        chunks: Vec<Bytes>,
        #[prost(bytes = "vec", tag = "4")]
        copied: Vec<u8>,
        #[prost(message, optional, tag = "5")]
        inner: Option<Inner>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Inner {
        #[prost(bytes = "bytes", tag = "1")]
        data: Bytes,
    }

    impl Name for Parts {
        const NAME: &'static str = "Parts";
        const PACKAGE: &'static str = "test.v1";
    }

    fn parts(i: usize) -> Parts {
        let big = |n: usize| Bytes::from(vec![i as u8; BY_REFERENCE_LEN + n]);
        Parts {
            head: if i.is_multiple_of(2) {
                big(i)
            } else {
                Bytes::from(vec![1; i])
            },
            name: "x".repeat(i),
            chunks: (0..i % 4).map(|k| big(k * 3)).collect(),
            copied: vec![i as u8; if i.is_multiple_of(5) { 70_000 } else { i }],
            inner: i.is_multiple_of(3).then(|| Inner { data: big(1) }),
        }
    }

    #[test]
    fn large_bytes_fields_of_a_message_are_written_from_their_own_memory() {
        let messages: Vec<Parts> = (0..30).map(parts).collect();
        let mut expected = BytesMut::new();
        for msg in &messages {
            // The bytes of the message packed in an `Any` (with our type URL) and encoded.
            Codec::new()
                .encode(&crate::codec::pack(msg), &mut expected)
                .unwrap();
        }
        for (limits, high_water) in [(vec![1, 7, 4096], 1000), (vec![usize::MAX], 1 << 30)] {
            let mut state = WriteState::new(Codec::new(), high_water);
            let mut io = Stingy::new(limits);
            for msg in &messages {
                block_on(poll_fn(|cx| state.poll_ready(Pin::new(&mut io), cx))).unwrap();
                state.encode_message(msg).unwrap();
            }
            block_on(poll_fn(|cx| state.poll_flush(Pin::new(&mut io), cx))).unwrap();
            assert_eq!(state.buffered_len(), 0);
            assert_eq!(io.out.len(), expected.len());
            assert!(io.out == expected[..], "bytes differ");
            assert_eq!(state.counter.get(), (30, expected.len() as u64));
        }

        // Nothing of a large `Bytes` field is copied: the write buffer holds the rest.
        let mut state = WriteState::new(Codec::new(), 1 << 30);
        let msg = Parts {
            head: Bytes::from(vec![7; 1 << 20]),
            name: "n".into(),
            ..Parts::default()
        };
        state.encode_message(&msg).unwrap();
        assert!(state.buf.len() < 100, "{} bytes copied", state.buf.len());
        assert_eq!(state.buffered_len(), wire_len(&[&crate::codec::pack(&msg)]));
        // A frame over the limit is refused before anything is queued.
        let mut state = WriteState::new(Codec::with_max_frame_len(1 << 19), 1 << 30);
        assert!(matches!(
            state.encode_message(&msg),
            Err(Error::FrameTooLarge { .. })
        ));
        assert_eq!(state.buffered_len(), 0);
    }

    #[test]
    fn frames_encoded_elsewhere_keep_their_values_in_place() {
        let frames = mixed(60);
        let mut expected = BytesMut::new();
        for any in &frames {
            Codec::new().encode(any, &mut expected).unwrap();
        }
        for (limits, high_water) in [(vec![1, 7, 4096], 1000), (vec![usize::MAX], 1 << 30)] {
            let mut state = WriteState::new(Codec::new(), high_water);
            let mut io = Stingy::new(limits);
            let mut batch = EncodedFrames::default();
            for (i, chunk) in frames.chunks(3).enumerate() {
                block_on(poll_fn(|cx| state.poll_ready(Pin::new(&mut io), cx))).unwrap();
                if i % 4 == 0 {
                    // Straight into the writer: what is buffered when the next batch comes.
                    for any in chunk {
                        state.encode_owned(any.clone()).unwrap();
                    }
                    continue;
                }
                for any in chunk {
                    // Every other batch copies its large values (a large batch of bytes only).
                    if any.value.len() >= BY_REFERENCE_LEN && i % 2 == 1 {
                        Codec::new()
                            .encode_head(&any.type_url, any.value.len(), 0, &mut batch.bytes)
                            .unwrap();
                        batch.push_value(Bytes::from(any.value.clone()));
                    } else {
                        Codec::new().encode(any, &mut batch.bytes).unwrap();
                    }
                }
                state.append_encoded(&mut batch, chunk.len()).unwrap();
                assert_eq!((batch.is_empty(), batch.len()), (true, 0));
            }
            block_on(poll_fn(|cx| state.poll_flush(Pin::new(&mut io), cx))).unwrap();
            assert_eq!(state.buffered_len(), 0);
            assert!(io.out == expected[..], "bytes differ");
        }
    }

    #[test]
    fn a_split_batch_takes_the_values_placed_before_the_split() {
        let mut batch = EncodedFrames::default();
        batch.bytes.extend_from_slice(b"ab");
        batch.push_value(Bytes::from_static(b"XY"));
        batch.bytes.extend_from_slice(b"cd");
        batch.push_value(Bytes::from_static(b"Z"));
        assert_eq!(batch.len(), 7);
        let mut first = EncodedFrames::default();
        batch.split_into(2, &mut first);
        assert_eq!((&first.bytes[..], first.len()), (&b"ab"[..], 4));
        assert_eq!(first.values, [(2, Bytes::from_static(b"XY"))]);
        assert_eq!((&batch.bytes[..], batch.len()), (&b"cd"[..], 3));
        assert_eq!(batch.values, [(2, Bytes::from_static(b"Z"))]);
    }

    /// The type `type.googleapis.com/x.Y1` names.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Y1 {}

    impl Name for Y1 {
        const NAME: &'static str = "Y1";
        const PACKAGE: &'static str = "x";
    }

    #[test]
    fn a_failed_write_drops_queued_values_and_closes() {
        struct Broken;
        impl AsyncWrite for Broken {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let mut state = WriteState::new(Codec::new(), 64 * 1024);
        state.encode_owned(mixed(1).remove(0)).unwrap();
        assert!(state.buffered_len() > BY_REFERENCE_LEN);
        let result = block_on(poll_fn(|cx| state.poll_flush(Pin::new(&mut Broken), cx)));
        assert!(matches!(result, Err(Error::Io(_))), "{result:?}");
        assert_eq!(state.buffered_len(), 0);
        assert!(matches!(
            state.encode_owned(mixed(1).remove(0)),
            Err(Error::Closed)
        ));
    }

    #[test]
    fn a_value_too_large_for_the_frame_limit_is_refused_and_nothing_is_queued() {
        let mut state = WriteState::new(Codec::with_max_frame_len(BY_REFERENCE_LEN), 64 * 1024);
        let result = state.encode_owned(mixed(1).remove(0));
        assert!(
            matches!(result, Err(Error::FrameTooLarge { .. })),
            "{result:?}"
        );
        let result = state.encode_value_of::<Y1>(Bytes::from(vec![0; BY_REFERENCE_LEN]));
        assert!(
            matches!(result, Err(Error::FrameTooLarge { .. })),
            "{result:?}"
        );
        assert_eq!(state.buffered_len(), 0);
        assert!(state.values.is_none());
    }

    fn wire_len(frames: &[&Any]) -> usize {
        let mut buf = BytesMut::new();
        for any in frames {
            Codec::new().encode(any, &mut buf).unwrap();
        }
        buf.len()
    }

    #[test]
    fn end_inside_a_frame_is_truncated() {
        let mut bytes = wire(2, 1000);
        bytes.truncate(bytes.len() - 10);
        let mut io = Cursor::new(bytes);
        let mut state = ReadState::new(Codec::new());
        assert!(next_frame(&mut state, &mut io).is_some());
        let result = block_on(poll_fn(|cx| state.poll_next_frame(Pin::new(&mut io), cx)));
        assert!(
            matches!(result, Some(Err(Error::Truncated { .. }))),
            "{result:?}"
        );
        assert!(next_frame(&mut state, &mut io).is_none());
    }
}
