//! Byte-stream tunnels: many byte streams (`AsyncRead + AsyncWrite`) carried as messages over one
//! [reliable stream](crate::reliable), so they outlive the connections under it.
//!
//! ```text
//!   TunnelStream (bytes) ──► TunnelData { stream_id, data } ──► ReliableWriter ──► link
//!   link ──► ReliableReader ──► TunnelDriver: by stream_id ──► that stream's receive buffer
//! ```
//!
//! Each tunnelled stream has its own credit window (PROTOCOL.md, section 13): a side sends Data
//! on a stream only within the credit its peer granted (`TunnelOpen.window`, then
//! `TunnelWindow`), and grants more as its application reads. So a stream whose reader stalls
//! stops only its own sender; the driver never waits on one stream, and the others go on. What a
//! peer can make us hold is bounded: at most `window` bytes per stream and `max_streams` streams.
//!
//! The side that opens streams uses [`Tunnel::open`]; the other side takes them with
//! [`Tunnel::accept`], gets the target the opener asked for, and connects it wherever it wishes
//! (`connect tunnel` connects to a TCP address, like `ssh -L`).
//!
//! What this side queues for the reliable writer is bounded too: past [`MAX_QUEUED`] bytes the
//! application's writes wait. The driver always goes on reading (stopping would also stop the
//! reliable stream's acknowledgements, and two such sides could wait on each other), but a peer
//! that makes it queue [`MAX_REPLIES_QUEUED`] bytes of replies beyond that without reading
//! them ends the tunnel with an error.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_channel::mpsc;
use futures_io::{AsyncRead, AsyncWrite};
use futures_util::future::{select, Either};
use futures_util::StreamExt as _;
use prost::Name;
use prost_types::Any;

use crate::codec::type_name;
use crate::proto::tunnel::{TunnelClose, TunnelData, TunnelOpen, TunnelWindow};
use crate::reliable::{ReliableReader, ReliableStream, ReliableWriter};
use crate::{Error, Result};

/// The default credit window per stream: 256 KiB.
pub const DEFAULT_WINDOW: u32 = 256 * 1024;
/// The default maximum of streams open at once on one tunnel.
pub const DEFAULT_MAX_STREAMS: usize = 1024;
/// The largest `TunnelData` this side sends.
const MAX_CHUNK: usize = 32 * 1024;
/// Bytes of messages a tunnel queues for its reliable writer before application writes wait.
pub const MAX_QUEUED: usize = 1024 * 1024;
/// Bytes of replies to the peer's messages (window grants, refusals) a tunnel queues beyond
/// [`MAX_QUEUED`] before it gives up on a peer that does not read them.
pub const MAX_REPLIES_QUEUED: usize = 256 * 1024;

/// Settings of one side of a tunnel.
#[derive(Clone, Debug)]
pub struct TunnelConfig {
    window: u32,
    max_streams: usize,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            max_streams: DEFAULT_MAX_STREAMS,
        }
    }
}

impl TunnelConfig {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The credit this side grants per stream: what the peer may send before this side's
    /// application reads (at least 1).
    pub fn with_window(mut self, bytes: u32) -> Self {
        self.window = bytes.max(1);
        self
    }

    /// Streams open at once; a peer's `TunnelOpen` beyond it is refused with a `TunnelClose`.
    pub fn with_max_streams(mut self, streams: usize) -> Self {
        self.max_streams = streams;
        self
    }
}

/// Which ids this side gives its streams: the connecting side odd, the accepting side even, so
/// both may open streams without agreeing first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The side that connected the reliable stream.
    Connecting,
    /// The side that accepted it.
    Accepting,
}

#[derive(Default)]
struct Slot {
    received: VecDeque<Bytes>,
    received_len: usize,
    /// The peer sent its `TunnelClose`: after the buffered bytes, end of stream.
    peer_closed: bool,
    read_waker: Option<Waker>,
    /// Bytes this side may still send.
    credit: u64,
    write_waker: Option<Waker>,
    /// Bytes read by the application and not yet granted back.
    consumed: u64,
    error: Option<String>,
    closed: bool,
}

impl Slot {
    fn wake(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }
}

struct Inner {
    streams: HashMap<u64, Slot>,
    next_id: u64,
    /// Why the whole tunnel ended, once it has.
    ended: Option<String>,
}

struct Shared {
    inner: Mutex<Inner>,
    config: TunnelConfig,
    /// Unbounded as a channel, bounded by `queued`: writers and the driver's reading wait for
    /// room (see [`Shared::poll_room`]).
    outgoing: mpsc::UnboundedSender<Any>,
    /// Bytes (type URLs and values) in `outgoing`.
    queued: AtomicUsize,
    /// Application writes waiting for `queued` to drop under [`MAX_QUEUED`].
    room_waiters: Mutex<Vec<Waker>>,
}

/// What a queued message counts against [`MAX_QUEUED`].
fn queued_len(any: &Any) -> usize {
    any.type_url.len() + any.value.len()
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves plain data; go on with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send<M: Name>(&self, message: &M) -> io::Result<()> {
        let any = Any::from_msg(message).map_err(io::Error::other)?;
        let len = queued_len(&any);
        self.queued.fetch_add(len, Ordering::AcqRel);
        self.outgoing.unbounded_send(any).map_err(|_| {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            io::Error::new(io::ErrorKind::BrokenPipe, "the tunnel has ended")
        })
    }

    /// The driver handed a queued message to the reliable writer.
    fn taken(&self, len: usize) {
        let before = self.queued.fetch_sub(len, Ordering::AcqRel);
        if before >= MAX_QUEUED && before - len < MAX_QUEUED {
            let waiters =
                std::mem::take(&mut *self.room_waiters.lock().unwrap_or_else(|e| e.into_inner()));
            waiters.into_iter().for_each(Waker::wake);
        }
    }

    /// Ready once the outgoing queue is under [`MAX_QUEUED`].
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.queued.load(Ordering::Acquire) < MAX_QUEUED {
            return Poll::Ready(());
        }
        {
            let mut waiters = self.room_waiters.lock().unwrap_or_else(|e| e.into_inner());
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
        }
        // Checked again after registering: `taken` may have made room in between.
        if self.queued.load(Ordering::Acquire) < MAX_QUEUED {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// One side of a tunnel: opens and accepts tunnelled streams. Its [`TunnelDriver`] must run
/// for anything to move.
pub struct Tunnel {
    shared: Arc<Shared>,
    incoming: mpsc::UnboundedReceiver<(TunnelStream, String)>,
}

/// The future that moves a tunnel's messages: run it (spawn it) until it ends, which it does
/// when the reliable stream ends; every tunnelled stream then fails.
pub struct TunnelDriver {
    future: Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>,
}

impl std::future::Future for TunnelDriver {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.future.as_mut().poll(cx)
    }
}

impl Tunnel {
    /// A tunnel over `stream`, on this `side` of it.
    pub fn new(stream: ReliableStream, side: Side, config: TunnelConfig) -> (Tunnel, TunnelDriver) {
        let (outgoing, to_send) = mpsc::unbounded();
        let (accepted, incoming) = mpsc::unbounded();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                streams: HashMap::new(),
                next_id: if side == Side::Connecting { 1 } else { 2 },
                ended: None,
            }),
            config,
            outgoing,
            queued: AtomicUsize::new(0),
            room_waiters: Mutex::new(Vec::new()),
        });
        let (reader, writer) = stream.split();
        let future = Box::pin(drive(shared.clone(), reader, writer, to_send, accepted));
        (Tunnel { shared, incoming }, TunnelDriver { future })
    }

    /// Opens a stream to `target` (what the peer's [`accept`](Self::accept) gets). Bytes
    /// written before the peer grants its window wait in `poll_write`.
    ///
    /// # Errors
    /// [`Error::Closed`] if the tunnel has ended.
    pub fn open(&self, target: &str) -> Result<TunnelStream> {
        let id = {
            let mut inner = self.shared.lock();
            if inner.ended.is_some() {
                return Err(Error::Closed);
            }
            let id = inner.next_id;
            inner.next_id += 2;
            inner.streams.insert(id, Slot::default());
            id
        };
        let open = TunnelOpen {
            stream_id: id,
            target: target.to_string(),
            window: self.shared.config.window,
        };
        self.shared.send(&open).map_err(|_| Error::Closed)?;
        Ok(TunnelStream {
            id,
            shared: self.shared.clone(),
        })
    }

    /// The next stream the peer opened, with the target it asked for; `None` once the tunnel
    /// has ended.
    pub async fn accept(&mut self) -> Option<(TunnelStream, String)> {
        self.incoming.next().await
    }

    /// Bytes of messages waiting for the reliable writer: at most [`MAX_QUEUED`] plus one
    /// message of each stream and [`MAX_REPLIES_QUEUED`].
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }
}

async fn drive(
    shared: Arc<Shared>,
    mut reader: ReliableReader,
    mut writer: ReliableWriter,
    mut to_send: mpsc::UnboundedReceiver<Any>,
    accepted: mpsc::UnboundedSender<(TunnelStream, String)>,
) -> Result<()> {
    let write = async {
        while let Some(any) = to_send.next().await {
            let len = queued_len(&any);
            writer.feed(any).await?;
            shared.taken(len);
            while let Ok(any) = to_send.try_recv() {
                let len = queued_len(&any);
                writer.feed(any).await?;
                shared.taken(len);
            }
            writer.flush().await?;
        }
        Ok::<_, Error>(())
    };
    let read = async {
        while let Some(any) = reader.recv().await? {
            handle(&shared, any, &accepted);
            let queued = shared.queued.load(Ordering::Acquire);
            if queued > MAX_QUEUED + MAX_REPLIES_QUEUED {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "tunnel: {queued} bytes queued for a peer that keeps sending \
                         messages that need replies without reading them"
                    ),
                )));
            }
        }
        Ok::<_, Error>(())
    };
    let result = match select(Box::pin(write), Box::pin(read)).await {
        Either::Left((result, _)) | Either::Right((result, _)) => result,
    };
    let why = match &result {
        Ok(()) => "the tunnel's reliable stream closed".to_string(),
        Err(e) => format!("the tunnel's reliable stream failed: {e}"),
    };
    let mut inner = shared.lock();
    inner.ended = Some(why);
    for slot in inner.streams.values_mut() {
        slot.wake();
    }
    result
}

/// One message from the peer.
fn handle(
    shared: &Arc<Shared>,
    any: Any,
    accepted: &mpsc::UnboundedSender<(TunnelStream, String)>,
) {
    let name = type_name(&any.type_url);
    if name == TunnelData::full_name() {
        let Ok(data) = any.to_msg::<TunnelData>() else {
            return log::debug!("tunnel: undecodable TunnelData");
        };
        let mut inner = shared.lock();
        let Some(slot) = inner.streams.get_mut(&data.stream_id) else {
            return; // Data in flight after this side dropped the stream.
        };
        if slot.received_len + data.data.len() > shared.config.window as usize {
            slot.error = Some("the peer sent beyond its credit window".into());
            slot.wake();
            let close = TunnelClose {
                stream_id: data.stream_id,
                error: "credit window exceeded".into(),
            };
            let _ = shared.send(&close);
            return;
        }
        slot.received_len += data.data.len();
        slot.received.push_back(Bytes::from(data.data));
        if let Some(w) = slot.read_waker.take() {
            w.wake();
        }
    } else if name == TunnelWindow::full_name() {
        let Ok(window) = any.to_msg::<TunnelWindow>() else {
            return log::debug!("tunnel: undecodable TunnelWindow");
        };
        if let Some(slot) = shared.lock().streams.get_mut(&window.stream_id) {
            slot.credit = slot.credit.saturating_add(u64::from(window.credit));
            if let Some(w) = slot.write_waker.take() {
                w.wake();
            }
        }
    } else if name == TunnelClose::full_name() {
        let Ok(close) = any.to_msg::<TunnelClose>() else {
            return log::debug!("tunnel: undecodable TunnelClose");
        };
        if let Some(slot) = shared.lock().streams.get_mut(&close.stream_id) {
            slot.peer_closed = true;
            if !close.error.is_empty() {
                slot.error = Some(close.error);
            }
            slot.wake();
        }
    } else if name == TunnelOpen::full_name() {
        let Ok(open) = any.to_msg::<TunnelOpen>() else {
            return log::debug!("tunnel: undecodable TunnelOpen");
        };
        let refuse = |error: &str| {
            let close = TunnelClose {
                stream_id: open.stream_id,
                error: error.into(),
            };
            let _ = shared.send(&close);
        };
        {
            let mut inner = shared.lock();
            if inner.streams.contains_key(&open.stream_id) {
                return refuse("stream id in use");
            }
            if inner.streams.len() >= shared.config.max_streams {
                return refuse("too many tunnelled streams");
            }
            let slot = Slot {
                credit: u64::from(open.window),
                ..Slot::default()
            };
            inner.streams.insert(open.stream_id, slot);
        }
        let grant = TunnelWindow {
            stream_id: open.stream_id,
            credit: shared.config.window,
        };
        let _ = shared.send(&grant);
        let stream = TunnelStream {
            id: open.stream_id,
            shared: shared.clone(),
        };
        if let Err(e) = accepted.unbounded_send((stream, open.target)) {
            // Nobody accepts: dropping the stream closes it.
            drop(e.into_inner());
        }
    } else {
        log::debug!("tunnel: ignoring a {name}");
    }
}

/// One tunnelled byte stream. Reading gives the peer's bytes in order, then end of stream once
/// the peer closed its side; `close` ends this side's bytes (a half-close, like TCP's shutdown).
/// Dropping it closes this side and forgets the stream.
pub struct TunnelStream {
    id: u64,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream")
            .field("id", &self.id)
            .finish()
    }
}

impl TunnelStream {
    /// The stream's id on the wire.
    pub fn id(&self) -> u64 {
        self.id
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the tunnelled stream is gone")
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut inner = self.shared.lock();
        let ended = inner.ended.clone();
        let Some(slot) = inner.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(gone()));
        };
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut n = 0;
        while n < buf.len() {
            let Some(front) = slot.received.front_mut() else {
                break;
            };
            let take = front.len().min(buf.len() - n);
            buf[n..n + take].copy_from_slice(&front[..take]);
            n += take;
            if take == front.len() {
                slot.received.pop_front();
            } else {
                let _ = front.split_to(take);
            }
        }
        if n > 0 {
            slot.received_len -= n;
            slot.consumed += n as u64;
            // Grant in batches of half a window: one TunnelWindow per half window read.
            if slot.consumed >= u64::from(self.shared.config.window / 2).max(1) && !slot.peer_closed
            {
                let credit = u32::try_from(slot.consumed).unwrap_or(u32::MAX);
                slot.consumed -= u64::from(credit);
                let grant = TunnelWindow {
                    stream_id: self.id,
                    credit,
                };
                drop(inner);
                // The tunnel having ended shows on the next read; these bytes are good.
                let _ = self.shared.send(&grant);
            }
            return Poll::Ready(Ok(n));
        }
        if let Some(error) = &slot.error {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                error.clone(),
            )));
        }
        if slot.peer_closed {
            return Poll::Ready(Ok(0));
        }
        if let Some(why) = ended {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, why)));
        }
        slot.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut inner = self.shared.lock();
        if let Some(why) = inner.ended.clone() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, why)));
        }
        let Some(slot) = inner.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(gone()));
        };
        if let Some(error) = &slot.error {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                error.clone(),
            )));
        }
        if slot.closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "written after close",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if slot.credit == 0 {
            slot.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if self.shared.poll_room(cx).is_pending() {
            return Poll::Pending;
        }
        let n = buf
            .len()
            .min(MAX_CHUNK)
            .min(usize::try_from(slot.credit).unwrap_or(usize::MAX));
        slot.credit -= n as u64;
        let data = TunnelData {
            stream_id: self.id,
            data: buf[..n].to_vec(),
        };
        // Sent under the lock, so one stream's Data keep their order.
        self.shared.send(&data)?;
        Poll::Ready(Ok(n))
    }

    /// Written bytes are already with the tunnel's driver, which flushes them into the reliable
    /// stream (which keeps them until the peer confirms them).
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.shared.lock();
        let Some(slot) = inner.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(gone()));
        };
        if !slot.closed {
            slot.closed = true;
            let close = TunnelClose {
                stream_id: self.id,
                error: String::new(),
            };
            self.shared.send(&close)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        if let Some(slot) = inner.streams.remove(&self.id) {
            if !slot.closed {
                let close = TunnelClose {
                    stream_id: self.id,
                    error: String::new(),
                };
                let _ = self.shared.send(&close);
            }
        }
    }
}
