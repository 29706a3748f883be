//! One handle owning many links: the ground publish/subscribe, work queues and load-balanced
//! calls stand on.
//!
//! An [`Endpoint`] holds any number of links (up to [`EndpointConfig::with_max_links`]), each a
//! [`Peer`]:
//!
//! - **accepted** ones, from any source of connections ([`Endpoint::accept`] takes a `Stream`
//!   of `Result<Connection<T>>`: a [`TlsListener`](crate::transport::tls::TlsListener) is one,
//!   [`tcp_incoming`] turns a [`TcpListener`](crate::transport::tcp::TcpListener) into one, and
//!   any other transport plugs in the same way);
//! - **connected** ones ([`Endpoint::connect`], one per target address), each reconnecting by
//!   itself with a [`Backoff`] after every drop or failed attempt;
//! - **added** ones ([`Endpoint::add`]): any handle already made, a reliable stream included.
//!
//! Each connection becomes a [session](crate::session) (authentication, heartbeats) or stays a
//! bare connection, as [`EndpointConfig::with_session`] says. Every link gets a [`LinkId`] and
//! runs the one [`Dispatcher`] the endpoint was made with; a handler tells which link a message
//! came from with [`Context::link`](crate::dispatch::Context::link). Background work (each
//! link's driver, the accept and connect loops) runs on the spawner you pass, as in
//! [`transport`](crate::transport#where-background-work-runs).
//!
//! Nothing happens silently: links joining and leaving (with the reason), failed connection
//! attempts, reconnections and refused handshakes are [`Event`]s on [`Endpoint::events`].
//!
//! ```
//! # async_std::task::block_on(async {
//! use connect::dispatch::{Context, Dispatcher, Reply};
//! use connect::endpoint::{self, Endpoint, EndpointConfig, Event};
//! use connect::proto::example::HelloWorld;
//! use connect::transport::tcp::{self, TcpListener};
//! use futures::StreamExt;
//!
//! let spawn = |task| { async_std::task::spawn(task); };
//! // A server endpoint: every link's HelloWorld is answered, naming the link.
//! let echo = Dispatcher::new().on(|hello: HelloWorld, cx: Context| async move {
//!     let link = cx.link().expect("an endpoint link");
//!     Ok::<_, connect::Error>(Reply::message(&HelloWorld { text: format!("{link}"), ..hello }))
//! });
//! let server = Endpoint::new(EndpointConfig::new(), echo, spawn);
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! server.accept(endpoint::tcp_incoming(listener));
//!
//! // A client endpoint with one reconnecting link to it.
//! let (answers_tx, answers) = async_channel::bounded(1);
//! let client = Dispatcher::new().on(move |hello: HelloWorld, _: Context| {
//!     let answers = answers_tx.clone();
//!     async move { answers.send(hello.text).await.ok(); Ok::<_, connect::Error>(()) }
//! });
//! let client = Endpoint::new(EndpointConfig::new(), client, spawn);
//! let mut events = client.events();
//! client.connect(move || tcp::connect(addr));
//! let Some(Event::Joined { link, .. }) = events.next().await else { panic!("no link") };
//! let peer = client.link(link).expect("the link");
//! peer.send_message(&HelloWorld { text: "hi".into(), sequence: 1 }).await?;
//! assert!(answers.recv().await.unwrap().starts_with("link#"));
//! client.close().await;
//! server.close().await;
//! # Ok::<(), connect::Error>(()) }).unwrap();
//! ```
//!
//! ## How the patterns use it
//! A pattern (a [`pubsub::Publisher`](crate::pubsub::Publisher), later a work-queue
//! distributor or a load-balancing caller) adds its control messages' handlers to the
//! dispatcher and registers a [`LinkObserver`] ([`Endpoint::observe`]): it learns of every link
//! as it joins (with the [`Peer`] to send on) and as it leaves, keeps its per-link state (a
//! subscriber's filters and queue, a worker's credit, calls in flight) keyed by [`LinkId`], and
//! finds that state again from a handler's [`Context::link`](crate::dispatch::Context::link).

mod accept;
pub(crate) mod queue;

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_io::{AsyncRead, AsyncWrite};
use futures_util::future::{AbortHandle, Abortable};

#[cfg(feature = "tcp")]
pub use accept::tcp_incoming;

use crate::connection::Connection;
use crate::dispatch::{Dispatcher, Serve};
use crate::error::{Error, Result};
use crate::peer::{Peer, PeerConfig};
use crate::reliable::Backoff;
use crate::session::SessionConfig;
use crate::transport::Task;
use queue::LinkQueue;

/// Names one link of an [`Endpoint`]; never reused within the endpoint (a reconnection is a
/// new link).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(u64);

impl LinkId {
    /// The number behind the id (1, 2, ... in the order links joined).
    pub fn get(self) -> u64 {
        self.0
    }

    /// Link `n`, for the sans-IO tests of the patterns.
    #[cfg(test)]
    pub(crate) fn for_tests(n: u64) -> Self {
        Self(n)
    }
}

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link#{}", self.0)
    }
}

/// Names one target of [`Endpoint::connect`]: the links to it over time share it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetId(u64);

impl fmt::Display for TargetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "target#{}", self.0)
    }
}

/// Where a link came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// Accepted from a source given to [`Endpoint::accept`].
    Accepted,
    /// Connected to a target of [`Endpoint::connect`]; `reconnect` is true from its second
    /// link on (the link before it dropped, and what was sent meanwhile did not arrive).
    Connected {
        /// The target.
        target: TargetId,
        /// Whether an earlier link to the same target joined before.
        reconnect: bool,
    },
    /// Given to [`Endpoint::add`].
    Added,
}

/// Something that happened to an [`Endpoint`]'s links.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// A link is up (handshake done) and its handlers run.
    Joined {
        /// The new link.
        link: LinkId,
        /// Where it came from.
        origin: Origin,
    },
    /// A link is over; `reason` is `Ok` when either side closed it gracefully.
    Left {
        /// The link.
        link: LinkId,
        /// How it ended.
        reason: Result<(), Arc<Error>>,
    },
    /// A connection attempt to a target (or its handshake) failed.
    ConnectFailed {
        /// The target.
        target: TargetId,
        /// Failed attempts in a row, this one included.
        attempt: u32,
        /// Why.
        error: Arc<Error>,
    },
    /// The next attempt to connect to `target` starts after `delay`.
    Reconnecting {
        /// The target.
        target: TargetId,
        /// The attempt that will follow (1-based, counting failures in a row).
        attempt: u32,
        /// How long until then.
        delay: Duration,
    },
    /// The backoff's attempts ran out: no more connections to `target`.
    GaveUp {
        /// The target.
        target: TargetId,
    },
    /// An accepted connection failed before it became a link (accept error, failed TLS or
    /// session handshake).
    AcceptFailed {
        /// Why.
        error: Arc<Error>,
    },
    /// A source of [`Endpoint::accept`] ended: no more connections from it.
    AcceptEnded,
    /// An event of publish/subscribe on this endpoint.
    PubSub(crate::pubsub::PubSubEvent),
    /// An event of a work queue on this endpoint.
    Queue(crate::queue::QueueEvent),
}

/// An endpoint's counters, for monitoring: see [`Endpoint::stats`] and [`crate::metrics`].
/// Counted from the endpoint's [`Event`]s as they happen (whether or not anyone reads them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Links up now.
    pub links: usize,
    /// Links that joined, ever.
    pub joined: u64,
    /// Links that left, ever.
    pub left: u64,
    /// Of those, the ones that did not end gracefully.
    pub left_with_error: u64,
    /// Links to a target of [`Endpoint::connect`] after its first.
    pub reconnects: u64,
    /// Failed connection attempts (the connection or its handshake) to targets.
    pub connect_failures: u64,
    /// Failures of an accept source itself (a listening socket's error), not of one client.
    pub accept_errors: u64,
    /// Accepted connections whose handshake (TLS, WebSocket, session) failed, by reason.
    pub handshake_failures: crate::metrics::HandshakeFailures,
    /// Events dropped because the queue was full ([`Endpoint::events_lost`]).
    pub events_lost: u64,
}

/// The counters behind [`EndpointStats`].
#[derive(Debug, Default)]
struct Counters {
    joined: AtomicU64,
    left: AtomicU64,
    left_with_error: AtomicU64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
    accept_errors: AtomicU64,
    handshakes: crate::metrics::HandshakeCounter,
}

impl Counters {
    fn record(&self, event: &Event) {
        use crate::metrics::facade;
        let add = |counter: &AtomicU64| counter.fetch_add(1, Ordering::Relaxed);
        match event {
            Event::Joined { origin, .. } => {
                add(&self.joined);
                let (name, reconnect) = match origin {
                    Origin::Accepted => ("accepted", false),
                    Origin::Connected { reconnect, .. } => ("connected", *reconnect),
                    Origin::Added => ("added", false),
                };
                if reconnect {
                    add(&self.reconnects);
                }
                facade::link_joined(name, reconnect);
            }
            Event::Left { reason, .. } => {
                add(&self.left);
                if reason.is_err() {
                    add(&self.left_with_error);
                }
                facade::link_left(reason.is_ok());
            }
            Event::ConnectFailed { .. } => {
                add(&self.connect_failures);
                facade::connect_failed();
            }
            Event::AcceptFailed { error } => {
                // Counted by reason if it is one client's handshake, else the source's own.
                let handshake = self.handshakes.record(error);
                if handshake.is_none() {
                    add(&self.accept_errors);
                    facade::accept_error();
                }
            }
            _ => {}
        }
    }
}

/// How an [`Endpoint`] runs its links. Cheap to clone.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EndpointConfig {
    peer: PeerConfig,
    session: Option<SessionConfig>,
    max_links: usize,
    backoff: Backoff,
    events: usize,
    close_timeout: Duration,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            peer: PeerConfig::new(),
            session: None,
            max_links: 1024,
            backoff: Backoff::default(),
            events: 1024,
            close_timeout: Duration::from_secs(5),
        }
    }
}

impl EndpointConfig {
    /// Bare connections, 1024 links at most, the default [`Backoff`] and [`PeerConfig`], 1024
    /// events waiting to be read.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens a [session](crate::session) on every connection (the connecting side for
    /// [`Endpoint::connect`], the accepting side for [`Endpoint::accept`]) with `config`:
    /// authentication, heartbeats, graceful close. Default: none (bare connections).
    pub fn with_session(mut self, config: SessionConfig) -> Self {
        self.session = Some(config);
        self
    }

    /// Each link's [`PeerConfig`].
    pub fn with_peer(mut self, config: PeerConfig) -> Self {
        self.peer = config;
        self
    }

    /// At most this many links at once (default 1024; at least 1), handshakes in progress
    /// included. At the limit, accepting pauses (the kernel's backlog then pushes back) and
    /// connection attempts wait until a link leaves.
    pub fn with_max_links(mut self, links: usize) -> Self {
        self.max_links = links.max(1);
        self
    }

    /// How [`Endpoint::connect`] waits between attempts (its `max_attempts` gives a target up).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How many events wait for [`Endpoint::events`] (default 1024; at least 1). Beyond that
    /// they are counted in [`Endpoint::events_lost`] and dropped, so a program that never
    /// reads events does not grow.
    pub fn with_event_queue(mut self, events: usize) -> Self {
        self.events = events.max(1);
        self
    }

    /// How long [`Endpoint::close`] waits for each link to close gracefully before it aborts
    /// it (default 5 s): a peer that reads nothing cannot hold the close up.
    pub fn with_close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// See [`with_max_links`](Self::with_max_links).
    pub fn max_links(&self) -> usize {
        self.max_links
    }
}

/// One link of an endpoint, as a [`LinkObserver`] sees it.
#[derive(Clone, Debug)]
pub struct Link {
    id: LinkId,
    origin: Origin,
    peer: Peer,
    abort: AbortHandle,
    /// Queues of the patterns that feed this link (a publisher's per-subscriber queue):
    /// emptied into it before a graceful close closes it.
    feeders: Arc<Mutex<Vec<Arc<LinkQueue>>>>,
}

impl Link {
    /// Its id.
    pub fn id(&self) -> LinkId {
        self.id
    }

    /// Where it came from.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The handle to send on.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Ends the link at once, without flushing what is queued (for a peer that does not read:
    /// [`Peer::close`] would wait for it). The link leaves with [`Error::Closed`].
    pub fn abort(&self) {
        self.abort.abort();
    }

    /// Empties `queue` into this link, in order, on a task of `endpoint` (until the queue
    /// closes or the link takes no more); a graceful [`Endpoint::close`] waits until what was
    /// queued has been handed over before it closes the link.
    pub(crate) fn feed_from(&self, endpoint: &Endpoint, queue: Arc<LinkQueue>) {
        lock(&self.feeders).push(queue.clone());
        let peer = self.peer.clone();
        endpoint.spawn(Box::pin(async move { queue.drain_into(&peer).await }));
    }

    /// Closes the link gracefully: the queues feeding it are emptied into it first, then
    /// [`Peer::close`].
    async fn close(&self) {
        let feeders = std::mem::take(&mut *lock(&self.feeders));
        for queue in feeders {
            queue.finish().await;
        }
        let _ = self.peer.close().await;
    }
}

/// What a pattern built on an endpoint learns of its links (see the [module docs](self)).
/// Called on the task that runs the link, before its first message is handled and after its
/// last; keep it short (no blocking).
pub trait LinkObserver: Send + Sync + 'static {
    /// `link` joined.
    fn joined(&self, link: &Link);
    /// `link` left.
    fn left(&self, link: LinkId);
}

type Spawner = Arc<dyn Fn(Task) + Send + Sync>;

/// Many links, one dispatcher. Cheap to clone (every clone is the same endpoint). See the
/// [module docs](self).
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

struct Inner {
    config: EndpointConfig,
    dispatcher: Arc<Dispatcher>,
    spawn: Spawner,
    links: Mutex<BTreeMap<LinkId, Link>>,
    observers: Mutex<Vec<Arc<dyn LinkObserver>>>,
    next_link: AtomicU64,
    next_target: AtomicU64,
    events: async_channel::Sender<Event>,
    events_rx: async_channel::Receiver<Event>,
    events_lost: AtomicU64,
    counters: Counters,
    /// One token per free link slot: taken before a link starts (or its handshake), given
    /// back when it is over.
    slots: async_channel::Receiver<()>,
    slots_tx: async_channel::Sender<()>,
    /// The accept and connect loops, aborted by [`Endpoint::close`].
    loops: Mutex<Vec<AbortHandle>>,
    closed: AtomicBool,
}

/// A free link slot, given back on drop.
struct Slot(async_channel::Sender<()>);

impl Drop for Slot {
    fn drop(&mut self) {
        // There is always room: the channel holds as many tokens as there are slots.
        let _ = self.0.try_send(());
    }
}

impl Endpoint {
    /// An endpoint with no links yet: every link will run `dispatcher` (a `Dispatcher` or an
    /// `Arc<Dispatcher>`), and background work goes to `spawn` (`|task| { async_std::task::
    /// spawn(task); }`, `|task| smol::spawn(task).detach()`, `|task| { tokio::spawn(task); }`).
    pub fn new(
        config: EndpointConfig,
        dispatcher: impl Into<Arc<Dispatcher>>,
        spawn: impl Fn(Task) + Send + Sync + 'static,
    ) -> Self {
        let (events, events_rx) = async_channel::bounded(config.events);
        let (slots_tx, slots) = async_channel::bounded(config.max_links);
        for _ in 0..config.max_links {
            let _ = slots_tx.try_send(());
        }
        Self {
            inner: Arc::new(Inner {
                config,
                dispatcher: dispatcher.into(),
                spawn: Arc::new(spawn),
                links: Mutex::new(BTreeMap::new()),
                observers: Mutex::new(Vec::new()),
                next_link: AtomicU64::new(1),
                next_target: AtomicU64::new(1),
                events,
                events_rx,
                events_lost: AtomicU64::new(0),
                counters: Counters::default(),
                slots,
                slots_tx,
                loops: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// The events of this endpoint, from now on. Every clone of the stream takes from the same
    /// queue (each event goes to one reader).
    pub fn events(&self) -> Events {
        Events(Box::pin(self.inner.events_rx.clone()))
    }

    /// Events dropped because the queue was full (see [`EndpointConfig::with_event_queue`]).
    pub fn events_lost(&self) -> u64 {
        self.inner.events_lost.load(Ordering::Relaxed)
    }

    /// Links, joins, leaves, reconnections and failures counted so far; see [`EndpointStats`].
    pub fn stats(&self) -> EndpointStats {
        let c = &self.inner.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        EndpointStats {
            links: self.len(),
            joined: load(&c.joined),
            left: load(&c.left),
            left_with_error: load(&c.left_with_error),
            reconnects: load(&c.reconnects),
            connect_failures: load(&c.connect_failures),
            accept_errors: load(&c.accept_errors),
            handshake_failures: c.handshakes.snapshot(),
            events_lost: self.events_lost(),
        }
    }

    /// Registers `observer`: it is told of every link there is now (as joined) and of every
    /// link joining or leaving from now on.
    pub fn observe(&self, observer: Arc<dyn LinkObserver>) {
        let mut observers = lock(&self.inner.observers);
        for link in lock(&self.inner.links).values() {
            observer.joined(link);
        }
        observers.push(observer);
    }

    /// The links there are now, in the order they joined.
    pub fn links(&self) -> Vec<Link> {
        lock(&self.inner.links).values().cloned().collect()
    }

    /// The handle of `link`, if it is up.
    pub fn link(&self, link: LinkId) -> Option<Peer> {
        lock(&self.inner.links).get(&link).map(|l| l.peer.clone())
    }

    /// How many links are up.
    pub fn len(&self) -> usize {
        lock(&self.inner.links).len()
    }

    /// Whether no link is up.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts `event` on the event queue (or counts it lost when the queue is full).
    pub(crate) fn emit(&self, event: Event) {
        self.inner.emit(event);
    }

    /// A reference that does not keep the endpoint alive (for state the endpoint itself holds,
    /// such as an observer).
    pub(crate) fn downgrade(&self) -> WeakEndpoint {
        WeakEndpoint(Arc::downgrade(&self.inner))
    }

    /// Runs `task` on the endpoint's spawner.
    pub(crate) fn spawn(&self, task: Task) {
        (self.inner.spawn)(task);
    }

    /// Accepts links from `incoming` until it ends or the endpoint closes: each connection
    /// gets its handshake (if sessions are configured) on a task of its own, then joins.
    /// A failed accept or handshake is an [`Event::AcceptFailed`]; the source goes on.
    pub fn accept<S, T>(&self, incoming: S)
    where
        S: Stream<Item = Result<Connection<T>>> + Send + 'static,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let endpoint = self.clone();
        self.run_loop(async move { endpoint.accept_loop(incoming).await });
    }

    /// Keeps a link to a target: `connector` makes a fresh connection for each attempt (TCP,
    /// TLS, any transport); after a failed attempt or a dropped link the next attempt waits as
    /// the configured [`Backoff`] says. Runs until the endpoint closes or the backoff's
    /// attempts run out ([`Event::GaveUp`]).
    pub fn connect<C, F, T>(&self, connector: C) -> TargetId
    where
        C: FnMut() -> F + Send + 'static,
        F: std::future::Future<Output = Result<Connection<T>>> + Send,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let target = TargetId(self.inner.next_target.fetch_add(1, Ordering::Relaxed));
        let endpoint = self.clone();
        self.run_loop(async move { endpoint.connect_loop(target, connector).await });
        target
    }

    /// Adds a handle already made (a [`Connection`], a [`Session`](crate::session::Session), a
    /// [`ReliableStream`](crate::reliable::ReliableStream), which reconnects by itself) as a
    /// link, waiting for a free slot. Returns its id; it leaves when the handle's link ends.
    ///
    /// A reliable stream stays one link across its reconnections, so the patterns see no new
    /// link when it resumes (nothing was lost). When its peer lost the stream (restarted:
    /// `reliable::Event::Connected { new_stream: true }`), state the peer held for the link,
    /// such as a publisher's subscriptions, is gone too, and the endpoint does not know:
    /// watch the stream's events and act (for pub/sub, subscribe again).
    ///
    /// # Errors
    /// [`Error::Closed`] if the endpoint is closed.
    pub async fn add<H>(&self, handle: H) -> Result<LinkId>
    where
        H: Serve + Send + 'static,
        H::Reader: Send + 'static,
        H::Writer: Send + 'static,
    {
        let slot = self.slot().await?;
        let (link, done) = self.join(handle, Origin::Added, slot);
        self.spawn(Box::pin(async move {
            let _ = done.await;
        }));
        Ok(link)
    }

    /// Closes every link gracefully (what was queued goes out first, in the patterns' queues
    /// — a publisher's per-subscriber queue, a work queue's deliveries — and the link's own;
    /// see [`Peer::close`]) and stops accepting and connecting. Returns once every link is over;
    /// a link not over within [`EndpointConfig::with_close_timeout`] (its peer reads nothing,
    /// or never closes its side) is aborted.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        for handle in lock(&self.inner.loops).drain(..) {
            handle.abort();
        }
        self.inner.slots.close();
        let closing = self.links().into_iter().map(|link| {
            let timeout = self.inner.config.close_timeout;
            async move {
                let close = Box::pin(link.close());
                let timer = futures_timer::Delay::new(timeout);
                if let futures_util::future::Either::Right(_) =
                    futures_util::future::select(close, timer).await
                {
                    log::debug!("{}: not closed within {timeout:?}; aborted", link.id);
                    link.abort();
                    let _ = link.peer.closed().await;
                }
            }
        });
        futures_util::future::join_all(closing).await;
    }

    /// Ends every link at once, without flushing (as [`Link::abort`]), and stops accepting and
    /// connecting: for when a peer that does not read would make [`close`](Self::close) wait.
    pub fn abort(&self) {
        self.inner.closed.store(true, Ordering::Release);
        for handle in lock(&self.inner.loops).drain(..) {
            handle.abort();
        }
        self.inner.slots.close();
        for link in self.links() {
            link.abort();
        }
    }

    /// Whether [`close`](Self::close) or [`abort`](Self::abort) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    fn run_loop(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let (abort, registration) = AbortHandle::new_pair();
        if self.is_closed() {
            return;
        }
        lock(&self.inner.loops).push(abort);
        self.spawn(Box::pin(async move {
            let _ = Abortable::new(task, registration).await;
        }));
    }

    async fn slot(&self) -> Result<Slot> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        self.inner
            .slots
            .recv()
            .await
            .map(|()| Slot(self.inner.slots_tx.clone()))
            .map_err(|_| Error::Closed)
    }

    /// Makes `handle` a link: registers it, tells the observers, spawns its driver. The
    /// returned future waits until the link is over, then unregisters it and gives its slot
    /// back.
    fn join<H>(
        &self,
        handle: H,
        origin: Origin,
        slot: Slot,
    ) -> (
        LinkId,
        impl std::future::Future<Output = Result<(), Arc<Error>>> + Send + 'static,
    )
    where
        H: Serve,
        H::Reader: Send + 'static,
        H::Writer: Send + 'static,
    {
        let id = LinkId(self.inner.next_link.fetch_add(1, Ordering::Relaxed));
        let (peer, driver) = Peer::for_link(
            handle,
            self.inner.dispatcher.clone(),
            &self.inner.config.peer,
            id,
        );
        let (abort, registration) = AbortHandle::new_pair();
        let link = Link {
            id,
            origin,
            peer: peer.clone(),
            abort,
            feeders: Arc::default(),
        };
        {
            let observers = lock(&self.inner.observers);
            lock(&self.inner.links).insert(id, link.clone());
            for observer in observers.iter() {
                observer.joined(&link);
            }
        }
        self.emit(Event::Joined { link: id, origin });
        self.spawn(Box::pin(async move {
            let _ = Abortable::new(driver, registration).await;
        }));
        let endpoint = self.clone();
        let done = async move {
            let reason = peer.closed().await;
            {
                let observers = lock(&endpoint.inner.observers);
                lock(&endpoint.inner.links).remove(&id);
                for observer in observers.iter() {
                    observer.left(id);
                }
            }
            endpoint.emit(Event::Left {
                link: id,
                reason: reason.clone(),
            });
            drop(slot);
            reason
        };
        (id, done)
    }

    async fn accept_loop<S, T>(&self, incoming: S)
    where
        S: Stream<Item = Result<Connection<T>>> + Send + 'static,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut incoming = Box::pin(incoming);
        loop {
            // A slot first: at the limit, connections wait in the kernel's backlog.
            let Ok(slot) = self.slot().await else { return };
            let next = std::future::poll_fn(|cx| incoming.as_mut().poll_next(cx)).await;
            match next {
                None => {
                    self.emit(Event::AcceptEnded);
                    return;
                }
                Some(Err(e)) => {
                    self.emit(Event::AcceptFailed { error: Arc::new(e) });
                    // Out of descriptors, say: give the process a moment instead of spinning.
                    futures_timer::Delay::new(Duration::from_millis(10)).await;
                }
                Some(Ok(conn)) => {
                    let endpoint = self.clone();
                    // The handshake on a task of its own: a slow client holds up no other.
                    self.spawn(Box::pin(async move {
                        match endpoint.open(conn, false).await {
                            Ok(handle) => {
                                let (_, done) = endpoint.join_any(handle, Origin::Accepted, slot);
                                let _ = done.await;
                            }
                            Err(e) => endpoint.emit(Event::AcceptFailed { error: Arc::new(e) }),
                        }
                    }));
                }
            }
        }
    }

    async fn connect_loop<C, F, T>(&self, target: TargetId, mut connector: C)
    where
        C: FnMut() -> F + Send + 'static,
        F: std::future::Future<Output = Result<Connection<T>>> + Send,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let backoff = self.inner.config.backoff.clone();
        let mut failures = 0u32;
        let mut joined_before = false;
        loop {
            let Ok(slot) = self.slot().await else { return };
            let opened = match connector().await {
                Ok(conn) => self.open(conn, true).await,
                Err(e) => Err(e),
            };
            match opened {
                Ok(handle) => {
                    failures = 0;
                    let origin = Origin::Connected {
                        target,
                        reconnect: joined_before,
                    };
                    joined_before = true;
                    let (_, done) = self.join_any(handle, origin, slot);
                    let _ = done.await;
                }
                Err(e) => {
                    drop(slot);
                    failures = failures.saturating_add(1);
                    self.emit(Event::ConnectFailed {
                        target,
                        attempt: failures,
                        error: Arc::new(e),
                    });
                    if backoff.max_attempts().is_some_and(|max| failures >= max) {
                        self.emit(Event::GaveUp { target });
                        return;
                    }
                }
            }
            if self.is_closed() {
                return;
            }
            let delay = backoff.delay(failures.max(1));
            self.emit(Event::Reconnecting {
                target,
                attempt: failures.saturating_add(1),
                delay,
            });
            futures_timer::Delay::new(delay).await;
        }
    }

    /// The configured layer on a fresh connection: the connection itself, or a session
    /// (`connecting` says which side) whose driver goes to the spawner.
    async fn open<T>(&self, conn: Connection<T>, connecting: bool) -> Result<LinkHandle<T>>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(config) = &self.inner.config.session else {
            return Ok(LinkHandle::Connection(Box::new(conn)));
        };
        let (session, driver) = if connecting {
            crate::session::connect(conn, config).await?
        } else {
            crate::session::accept(conn, config).await?
        };
        self.spawn(crate::transport::driver_task(driver));
        Ok(LinkHandle::Session(Box::new(session)))
    }

    fn join_any<T>(&self, handle: LinkHandle<T>, origin: Origin, slot: Slot) -> (LinkId, LinkDone)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match handle {
            LinkHandle::Connection(conn) => {
                let (id, done) = self.join(*conn, origin, slot);
                (id, Box::pin(done))
            }
            LinkHandle::Session(session) => {
                let (id, done) = self.join(*session, origin, slot);
                (id, Box::pin(done))
            }
        }
    }
}

/// See [`Endpoint::downgrade`].
#[derive(Clone, Debug, Default)]
pub(crate) struct WeakEndpoint(std::sync::Weak<Inner>);

impl WeakEndpoint {
    pub(crate) fn upgrade(&self) -> Option<Endpoint> {
        self.0.upgrade().map(|inner| Endpoint { inner })
    }
}

/// Resolves when a link is over, with how it ended.
type LinkDone = Pin<Box<dyn std::future::Future<Output = Result<(), Arc<Error>>> + Send>>;

enum LinkHandle<T> {
    Connection(Box<Connection<T>>),
    Session(Box<crate::session::Session>),
}

impl Inner {
    fn emit(&self, event: Event) {
        self.counters.record(&event);
        if let Err(e) = self.events.try_send(event) {
            let lost = self.events_lost.fetch_add(1, Ordering::Relaxed) + 1;
            log::debug!(
                "endpoint event queue full ({lost} lost): {:?}",
                e.into_inner()
            );
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("links", &self.len())
            .field("max_links", &self.inner.config.max_links)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// The events of an [`Endpoint`] (from [`Endpoint::events`]). Ends when the endpoint is gone.
#[derive(Clone, Debug)]
pub struct Events(Pin<Box<async_channel::Receiver<Event>>>);

impl Events {
    /// The next event that is already there, if any.
    pub fn try_next(&self) -> Option<Event> {
        self.0.try_recv().ok()
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Event>> {
        self.0.as_mut().poll_next(cx)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
