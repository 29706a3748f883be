//! The producing side in another process than the distributor: `Enqueue`s on a distributor
//! link, each confirmed by an `Enqueued`, at most a window of them unconfirmed.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use futures_channel::oneshot;
use prost::{Message, Name};
use prost_types::Any;

use super::{lock, pending, QueueError, SendOptions};
use crate::dispatch::{Context, Dispatcher};
use crate::endpoint::{Endpoint, Link, LinkId, LinkObserver};
use crate::peer::Peer;
use crate::proto::queue::{Enqueue, EnqueueStatus, Enqueued, TransactionDone};

/// How a [`Producer`] sends. Cheap to clone.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProducerConfig {
    window: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self { window: 256 }
    }
}

impl ProducerConfig {
    /// At most 256 messages sent and not yet confirmed.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `messages` messages sent and not yet confirmed (at least 1): beyond,
    /// [`Producer::send`] waits and [`Producer::try_send`] reports the queue full. A distributor
    /// whose queue is full confirms nothing until it has room, so this is how its backpressure
    /// reaches the producer.
    pub fn with_window(mut self, messages: usize) -> Self {
        self.window = messages.max(1);
        self
    }
}

/// Sends messages to the distributors on an [`Endpoint`]'s links (round-robin among the links
/// when there are several). Cheap to clone.
///
/// Set it up like a [`Distributor`](super::Distributor): [`route`](Self::route), make the
/// endpoint, [`attach`](Self::attach).
#[derive(Clone, Debug)]
pub struct Producer {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    links: Mutex<BTreeMap<LinkId, Peer>>,
    next_link: AtomicUsize,
    waiting: Mutex<HashMap<(LinkId, u64), oneshot::Sender<Enqueued>>>,
    next_id: AtomicU64,
    /// One token per free place in the window.
    permits: async_channel::Receiver<()>,
    permits_tx: async_channel::Sender<()>,
}

/// A free place in the window, given back on drop.
#[derive(Debug)]
struct Permit(async_channel::Sender<()>);

impl Drop for Permit {
    fn drop(&mut self) {
        // There is always room: the channel holds as many tokens as the window.
        let _ = self.0.try_send(());
    }
}

impl Producer {
    /// A producer attached to nothing yet.
    pub fn new(config: ProducerConfig) -> Self {
        let (permits_tx, permits) = async_channel::bounded(config.window);
        for _ in 0..config.window {
            let _ = permits_tx.try_send(());
        }
        Self {
            state: Arc::new(State {
                links: Mutex::new(BTreeMap::new()),
                next_link: AtomicUsize::new(0),
                waiting: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                permits,
                permits_tx,
            }),
        }
    }

    /// `dispatcher` with the handlers of `Enqueued` and `TransactionDone` added: give the result
    /// to [`Endpoint::new`].
    pub fn route(&self, dispatcher: Dispatcher) -> Dispatcher {
        let state = self.state.clone();
        dispatcher
            .on(move |confirm: Enqueued, cx: Context| {
                state.confirmed(confirm, &cx);
                async { Ok::<_, crate::Error>(()) }
            })
            .on(|done: TransactionDone, cx: Context| {
                pending::transaction_done(&done, &cx);
                async { Ok::<_, crate::Error>(()) }
            })
    }

    /// Sends on `endpoint`'s links from now on (its links already up included).
    pub fn attach(&self, endpoint: &Endpoint) {
        endpoint.observe(Arc::new(Observer(self.state.clone())));
    }

    /// Sends `msg` and waits until the distributor confirms it holds it in its queue (waiting
    /// first for a place in the window, and, while the queue is full, for the confirmation).
    ///
    /// # Errors
    /// [`QueueError::NoLink`], [`QueueError::Refused`], [`QueueError::Closed`] (the link ended
    /// before the confirmation: the message may or may not be in the queue).
    pub async fn send<M: Message + Name>(&self, msg: &M) -> Result<(), QueueError> {
        self.send_with(msg, SendOptions::new()).await
    }

    /// [`send`](Self::send) with a time to live.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_with<M: Message + Name>(
        &self,
        msg: &M,
        options: SendOptions,
    ) -> Result<(), QueueError> {
        self.feed_any(crate::codec::pack(msg), options).await?.await
    }

    /// Sends `message` as soon as the window has a place, and returns its [`Confirmation`]
    /// without waiting for it: many messages in flight from one task.
    ///
    /// # Errors
    /// [`QueueError::NoLink`], [`QueueError::Closed`].
    pub async fn feed_any(
        &self,
        message: Any,
        options: SendOptions,
    ) -> Result<Confirmation, QueueError> {
        let permit = self.state.permit().await?;
        let (link, peer) = self.state.pick()?;
        self.state
            .enqueue(link, &peer, message, options, 0, permit)
            .await
    }

    /// Sends `msg` if the window has a place and the link's queue room now.
    ///
    /// # Errors
    /// [`QueueError::Full`] with the packed message (the window is full: the distributor is
    /// behind, or its queue is full), [`QueueError::NoLink`], [`QueueError::Closed`].
    pub fn try_send<M: Message + Name>(&self, msg: &M) -> Result<Confirmation, QueueError> {
        let message = crate::codec::pack(msg);
        let Ok(()) = self.state.permits.try_recv() else {
            return Err(QueueError::Full(message));
        };
        let permit = Permit(self.state.permits_tx.clone());
        let (link, peer) = self.state.pick()?;
        let id = self.state.id();
        let rx = self.state.register(link, id);
        let frame = crate::codec::pack(&Enqueue {
            id,
            message: Some(message),
            ttl_ms: 0,
            transaction: 0,
        });
        match peer.try_send(frame) {
            Ok(()) => Ok(Confirmation {
                rx,
                _permit: permit,
            }),
            Err(e) => {
                lock(&self.state.waiting).remove(&(link, id));
                match e {
                    crate::peer::TrySendError::Full(frame) => {
                        let message = frame
                            .to_msg::<Enqueue>()
                            .ok()
                            .and_then(|e| e.message)
                            .unwrap_or_default();
                        Err(QueueError::Full(message))
                    }
                    _ => Err(QueueError::Closed),
                }
            }
        }
    }

    /// Opens a transaction on one distributor link: its messages become visible together at
    /// [`Transaction::commit`].
    ///
    /// # Errors
    /// [`QueueError::NoLink`], [`QueueError::Closed`].
    pub async fn begin(&self) -> Result<Transaction, QueueError> {
        let (link, peer) = self.state.pick()?;
        let open = pending::Open::begin(link, peer).await?;
        Ok(Transaction {
            open,
            state: self.state.clone(),
        })
    }

    /// Distributor links up.
    pub fn links(&self) -> usize {
        lock(&self.state.links).len()
    }
}

impl State {
    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed).max(1)
    }

    async fn permit(&self) -> Result<Permit, QueueError> {
        self.permits.recv().await.map_err(|_| QueueError::Closed)?;
        Ok(Permit(self.permits_tx.clone()))
    }

    fn pick(&self) -> Result<(LinkId, Peer), QueueError> {
        let links = lock(&self.links);
        if links.is_empty() {
            return Err(QueueError::NoLink);
        }
        let n = self.next_link.fetch_add(1, Ordering::Relaxed) % links.len();
        links
            .iter()
            .nth(n)
            .map(|(id, peer)| (*id, peer.clone()))
            .ok_or(QueueError::NoLink)
    }

    fn register(&self, link: LinkId, id: u64) -> oneshot::Receiver<Enqueued> {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert((link, id), tx);
        rx
    }

    async fn enqueue(
        &self,
        link: LinkId,
        peer: &Peer,
        message: Any,
        options: SendOptions,
        transaction: u64,
        permit: Permit,
    ) -> Result<Confirmation, QueueError> {
        let id = self.id();
        let rx = self.register(link, id);
        let frame = Enqueue {
            id,
            message: Some(message),
            ttl_ms: options.ttl_ms(),
            transaction,
        };
        if peer.send_message(&frame).await.is_err() {
            lock(&self.waiting).remove(&(link, id));
            return Err(QueueError::Closed);
        }
        Ok(Confirmation {
            rx,
            _permit: permit,
        })
    }

    fn confirmed(&self, confirm: Enqueued, cx: &Context) {
        let Some(link) = cx.link() else { return };
        match lock(&self.waiting).remove(&(link, confirm.id)) {
            Some(waiting) => {
                let _ = waiting.send(confirm);
            }
            None => log::debug!("{link}: Enqueued for no message waiting ({})", confirm.id),
        }
    }
}

struct Observer(Arc<State>);

impl LinkObserver for Observer {
    fn joined(&self, link: &Link) {
        lock(&self.0.links).insert(link.id(), link.peer().clone());
    }

    fn left(&self, link: LinkId) {
        lock(&self.0.links).remove(&link);
        // Dropping the senders fails the confirmations waiting on this link.
        lock(&self.0.waiting).retain(|(on, _), _| *on != link);
        pending::link_left(link);
    }
}

/// The distributor's answer to one sent message, to await: `Ok` once the message is in its
/// queue. Holds the message's place in the producer's window until then.
#[derive(Debug)]
#[must_use = "a confirmation says whether the message reached the queue"]
pub struct Confirmation {
    rx: oneshot::Receiver<Enqueued>,
    _permit: Permit,
}

impl Future for Confirmation {
    type Output = Result<(), QueueError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|answer| match answer {
            Ok(confirm) => match EnqueueStatus::try_from(confirm.status) {
                Ok(EnqueueStatus::Ok) => Ok(()),
                status => Err(QueueError::Refused {
                    status: status.unwrap_or(EnqueueStatus::Unspecified),
                    message: confirm.message,
                }),
            },
            Err(_) => Err(QueueError::Closed),
        })
    }
}

/// A producer's transaction on one distributor link ([`Producer::begin`]): what it sends
/// becomes visible at [`commit`](Self::commit), all at once; after [`abort`](Self::abort), or
/// if the link ends first, none of it.
#[derive(Debug)]
pub struct Transaction {
    open: pending::Open,
    state: Arc<State>,
}

impl Transaction {
    /// Stages `msg` in the transaction, and waits until the distributor confirms it holds it
    /// (its place in the queue is taken from now on).
    ///
    /// # Errors
    /// As [`Producer::send`].
    pub async fn send<M: Message + Name>(&self, msg: &M) -> Result<(), QueueError> {
        self.send_with(msg, SendOptions::new()).await
    }

    /// [`send`](Self::send) with a time to live (counted from when the distributor reads it).
    ///
    /// # Errors
    /// As [`Producer::send`].
    pub async fn send_with<M: Message + Name>(
        &self,
        msg: &M,
        options: SendOptions,
    ) -> Result<(), QueueError> {
        let permit = self.state.permit().await?;
        self.state
            .enqueue(
                self.open.link(),
                self.open.peer(),
                crate::codec::pack(msg),
                options,
                self.open.id(),
                permit,
            )
            .await?
            .await
    }

    /// Makes every message of the transaction visible.
    ///
    /// # Errors
    /// [`QueueError::Transaction`] if the distributor did not commit it; [`QueueError::Closed`]
    /// if the link ended first (nothing took effect).
    pub async fn commit(self) -> Result<(), QueueError> {
        self.open.commit().await
    }

    /// Drops every message of the transaction.
    ///
    /// # Errors
    /// As [`commit`](Self::commit).
    pub async fn abort(self) -> Result<(), QueueError> {
        self.open.abort().await
    }
}
