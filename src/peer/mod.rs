//! One link to one peer, shared by many tasks: the ground the messaging patterns stand on.
//!
//! A [`Connection`](crate::Connection), a [`Session`](crate::session::Session) and a
//! [`ReliableStream`](crate::reliable::ReliableStream) each have one owner, who reads and writes
//! through `&mut self`. Request/reply, publish/subscribe and work queues need more: many tasks
//! sending on the link at once, answers matched to questions, messages routed to handlers while
//! the application keeps sending. [`Peer::new`] takes any of the three handles and a
//! [`Dispatcher`] and gives back
//!
//! - a [`Peer`]: a cheap-to-clone handle any task can [`send`](Peer::send) on;
//! - a [`PeerDriver`]: the future that owns the link. It writes what the handles queue, reads
//!   what the peer sends and runs the dispatcher's handler for each message (in the order they
//!   arrived, one at a time, so a slow handler slows the peer down rather than piling up
//!   memory), and writes the handlers' replies back. **Spawn it** (see
//!   [`transport`](crate::transport#where-background-work-runs)); it resolves when the link
//!   is over.
//!
//! ```
//! # async_std::task::block_on(async {
//! use connect::dispatch::{Context, Dispatcher, Reply};
//! use connect::peer::{Peer, PeerConfig};
//! use connect::proto::example::HelloWorld;
//! use connect::transport::tcp;
//!
//! let listener = tcp::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! async_std::task::spawn(async move {
//!     // The server answers every HelloWorld through its dispatcher.
//!     let conn = listener.accept().await?;
//!     let upper = Dispatcher::new().on(|hello: HelloWorld, _: Context| async move {
//!         Ok::<_, connect::Error>(Reply::message(&HelloWorld { text: hello.text.to_uppercase(), ..hello }))
//!     });
//!     let (_peer, driver) = Peer::new(conn, upper, &PeerConfig::new());
//!     driver.await;
//!     Ok::<_, connect::Error>(())
//! });
//!
//! // The client's handlers see the answers; any task may send.
//! let (answers_tx, answers_rx) = async_channel::bounded(8);
//! let client = Dispatcher::new().on(move |hello: HelloWorld, _: Context| {
//!     let answers = answers_tx.clone();
//!     async move { answers.send(hello.text).await.ok(); Ok::<_, connect::Error>(Reply::none()) }
//! });
//! let (peer, driver) = Peer::new(tcp::connect(addr).await?, client, &PeerConfig::new());
//! async_std::task::spawn(driver);
//! for (sequence, text) in ["a", "b"].into_iter().enumerate() {
//!     let peer = peer.clone();
//!     peer.send_message(&HelloWorld { text: text.into(), sequence: sequence as u64 }).await?;
//! }
//! let mut got = vec![answers_rx.recv().await.unwrap(), answers_rx.recv().await.unwrap()];
//! got.sort();
//! assert_eq!(got, ["A", "B"]);
//! assert!(peer.close().await.is_ok(), "a clean close");
//! # Ok::<(), connect::Error>(()) }).unwrap();
//! ```
//!
//! ## How a peer ends
//! - The peer closes (end of stream, a session's `Close`, a reliable stream closed): the
//!   messages it sent before are all handled, the replies and everything queued by
//!   [`send`](Peer::send) before that moment are written, and this side is closed the way its
//!   layer closes ([`Dispatcher::serve`] does the same). [`Peer::closed`] then reports `Ok`.
//! - [`Peer::close`]: what was queued before goes out, then this side closes its write
//!   direction (a session sends `Close`); messages the peer still sends until it sees that are
//!   handled (their replies are dropped), until the peer's side ends.
//! - An error (a bad frame, a handler's error, a message no handler takes, a broken
//!   transport) ends the link; replies already accepted are flushed first, and
//!   [`Peer::closed`] reports the error. Only this link is affected.
//!
//! Dropping every [`Peer`] does not end the link: the driver goes on answering the peer until
//! one of the above happens (like [`Dispatcher::serve`]).

mod call;
mod driver;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use prost::{Message, Name};
use prost_types::Any;

use crate::dispatch::{Context, Dispatcher, Serve};
use crate::error::{Error, Result};

/// How a [`Peer`] queues and reads. Cheap to clone.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PeerConfig {
    queue_len: usize,
    max_pending_replies: usize,
    max_concurrent_requests: usize,
    call_timeout: Option<Duration>,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            queue_len: 256,
            max_pending_replies: 64,
            max_concurrent_requests: 64,
            call_timeout: Some(Duration::from_secs(30)),
        }
    }
}

impl PeerConfig {
    /// The defaults: 256 queued outgoing messages, 64 replies waiting to be written, 64
    /// concurrent requests, calls time out after 30 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many messages [`Peer::send`] may queue before it waits for the driver to write
    /// them (default 256; at least 1). [`Peer::try_send`] reports the queue full instead.
    pub fn with_queue_len(mut self, messages: usize) -> Self {
        self.queue_len = messages.max(1);
        self
    }

    /// How many handler replies may wait to be written before the driver stops reading new
    /// messages from the peer (default 64; at least 1): a peer that sends requests but never
    /// reads its answers is slowed down, not buffered without bound.
    pub fn with_max_pending_replies(mut self, replies: usize) -> Self {
        self.max_pending_replies = replies.max(1);
        self
    }

    /// How many of the peer's requests ([`crate::rpc`]) may have their handler running at once
    /// on this link (default 64; at least 1). As many more are read and wait for a slot; then
    /// reading pauses until a handler finishes. One-way messages are handled one at a time,
    /// in order, whatever this says.
    pub fn with_max_concurrent_requests(mut self, requests: usize) -> Self {
        self.max_concurrent_requests = requests.max(1);
        self
    }

    /// How long [`Peer::call`] waits for a reply when the call does not say
    /// ([`CallOptions::with_timeout`](crate::rpc::CallOptions::with_timeout)); `None`: as long
    /// as the link lives. Default 30 s.
    pub fn with_call_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// See [`with_max_concurrent_requests`](Self::with_max_concurrent_requests).
    pub fn max_concurrent_requests(&self) -> usize {
        self.max_concurrent_requests
    }

    /// See [`with_call_timeout`](Self::with_call_timeout).
    pub fn call_timeout(&self) -> Option<Duration> {
        self.call_timeout
    }

    /// See [`with_queue_len`](Self::with_queue_len).
    pub fn queue_len(&self) -> usize {
        self.queue_len
    }

    /// See [`with_max_pending_replies`](Self::with_max_pending_replies).
    pub fn max_pending_replies(&self) -> usize {
        self.max_pending_replies
    }
}

/// [`Peer::try_send`] did not queue the message; it is handed back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrySendError {
    /// The outgoing queue holds [`PeerConfig::with_queue_len`] messages.
    #[error("outgoing queue full")]
    Full(Any),
    /// The link is closed or closing.
    #[error("link closed")]
    Closed(Any),
}

impl TrySendError {
    /// The message that was not sent.
    pub fn into_inner(self) -> Any {
        match self {
            Self::Full(any) | Self::Closed(any) => any,
        }
    }
}

/// One link to one peer, shared by any number of tasks (clone it). See the [module docs](self).
#[derive(Clone)]
pub struct Peer {
    shared: Arc<Shared>,
}

/// What the handles and the driver share.
struct Shared {
    context: Context,
    outgoing: async_channel::Sender<Any>,
    /// Set by [`Peer::close`]; the driver sees it through `driver_waker`.
    close_requested: AtomicBool,
    driver_waker: AtomicWaker,
    /// `None` while the link runs; how it ended afterwards.
    end: Mutex<Option<Result<(), Arc<Error>>>>,
    /// Never sent on: the driver drops its sender when the link is over, which wakes every
    /// [`Peer::closed`].
    ended: async_channel::Receiver<()>,
    /// This side's calls waiting for a response ([`crate::rpc`]).
    calls: Mutex<crate::rpc::calls::CallTable>,
    /// [`PeerConfig::with_call_timeout`].
    call_timeout: Option<Duration>,
}

impl Shared {
    fn lock_calls(&self) -> MutexGuard<'_, crate::rpc::calls::CallTable> {
        self.calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Peer {
    /// Takes over `handle` (a [`Connection`](crate::Connection), a
    /// [`Session`](crate::session::Session) or a
    /// [`ReliableStream`](crate::reliable::ReliableStream)): messages from the peer go to
    /// `dispatcher`'s handlers (a `Dispatcher`, or an `Arc<Dispatcher>` shared by many links).
    /// Returns the shared handle and the driver to spawn.
    pub fn new<H>(
        handle: H,
        dispatcher: impl Into<Arc<Dispatcher>>,
        config: &PeerConfig,
    ) -> (Peer, PeerDriver)
    where
        H: Serve,
        H::Reader: Send + 'static,
        H::Writer: Send + 'static,
    {
        Self::build(handle, dispatcher.into(), config, None)
    }

    /// [`new`](Self::new) for a link of an [`Endpoint`](crate::endpoint::Endpoint): the
    /// handlers' [`Context::link`] tells `link`.
    pub(crate) fn for_link<H>(
        handle: H,
        dispatcher: Arc<Dispatcher>,
        config: &PeerConfig,
        link: crate::endpoint::LinkId,
    ) -> (Peer, PeerDriver)
    where
        H: Serve,
        H::Reader: Send + 'static,
        H::Writer: Send + 'static,
    {
        Self::build(handle, dispatcher, config, Some(link))
    }

    fn build<H>(
        handle: H,
        dispatcher: Arc<Dispatcher>,
        config: &PeerConfig,
        link: Option<crate::endpoint::LinkId>,
    ) -> (Peer, PeerDriver)
    where
        H: Serve,
        H::Reader: Send + 'static,
        H::Writer: Send + 'static,
    {
        let (reader, writer) = crate::dispatch::sealed::Handle::into_halves(handle);
        let mut context = crate::dispatch::sealed::Reader::context(&reader);
        if let Some(link) = link {
            context = context.with_link(link);
        }
        let (outgoing, outgoing_rx) = async_channel::bounded(config.queue_len);
        let (ended_tx, ended) = async_channel::bounded(1);
        let shared = Arc::new(Shared {
            context,
            outgoing,
            close_requested: AtomicBool::new(false),
            driver_waker: AtomicWaker::new(),
            end: Mutex::new(None),
            ended,
            calls: Mutex::default(),
            call_timeout: config.call_timeout,
        });
        let driver = driver::Driver::new(
            reader,
            writer,
            dispatcher,
            outgoing_rx,
            shared.clone(),
            ended_tx,
            config,
        );
        (Peer { shared }, PeerDriver(Box::pin(driver.run())))
    }

    /// Where the link goes: the connection, and the session (with the peer's identity) if any.
    pub fn context(&self) -> &Context {
        &self.shared.context
    }

    /// Queues `any` for the peer, waiting while the queue is full.
    ///
    /// # Errors
    /// [`Error::Closed`] if the link is closed or closing: the message was not queued.
    pub async fn send(&self, any: Any) -> Result<()> {
        self.shared
            .outgoing
            .send(any)
            .await
            .map_err(|_| Error::Closed)
    }

    /// Queues `msg`, packed in an `Any` with the standard type URL.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_message<M: Message + Name>(&self, msg: &M) -> Result<()> {
        self.send(crate::codec::pack(msg)).await
    }

    /// Queues `any` if there is room now.
    ///
    /// # Errors
    /// [`TrySendError`], with the message.
    pub fn try_send(&self, any: Any) -> Result<(), TrySendError> {
        self.shared.outgoing.try_send(any).map_err(|e| match e {
            async_channel::TrySendError::Full(any) => TrySendError::Full(any),
            async_channel::TrySendError::Closed(any) => TrySendError::Closed(any),
        })
    }

    /// Messages queued by the handles and not yet taken by the driver.
    pub fn queued(&self) -> usize {
        self.shared.outgoing.len()
    }

    /// Whether the link is over (or closing: nothing more can be sent).
    pub fn is_closed(&self) -> bool {
        self.shared.outgoing.is_closed()
    }

    /// Closes the link gracefully (see the [module docs](self#how-a-peer-ends)) and waits until
    /// it is over. Messages queued before the call are sent first.
    ///
    /// # Errors
    /// How the link ended, if not cleanly (as [`closed`](Self::closed)).
    pub async fn close(&self) -> Result<(), Arc<Error>> {
        self.shared.close_requested.store(true, Ordering::Release);
        self.shared.driver_waker.wake();
        self.closed().await
    }

    /// Waits until the link is over, and says how it ended: `Ok` when either side closed it
    /// gracefully, the error that ended it otherwise. The driver must be running.
    ///
    /// # Errors
    /// The error that ended the link.
    pub async fn closed(&self) -> Result<(), Arc<Error>> {
        // Nothing is ever sent: this returns once the driver dropped its sender.
        let _ = self.shared.ended.recv().await;
        self.end().unwrap_or_else(|| Err(Arc::new(Error::Closed)))
    }

    /// How the link ended, or `None` while it runs.
    pub fn end(&self) -> Option<Result<(), Arc<Error>>> {
        self.shared
            .end
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("connection", self.shared.context.connection())
            .field("queued", &self.queued())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// Runs a [`Peer`]'s link: **spawn it**. Resolves when the link is over; [`Peer::closed`] says
/// how it ended (the driver also logs it).
#[must_use = "the link makes no progress unless its driver is polled (spawn it)"]
pub struct PeerDriver(Pin<Box<dyn Future<Output = ()> + Send + 'static>>);

impl Future for PeerDriver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for PeerDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerDriver").finish_non_exhaustive()
    }
}

impl From<PeerDriver> for crate::transport::Task {
    fn from(driver: PeerDriver) -> Self {
        driver.0
    }
}
