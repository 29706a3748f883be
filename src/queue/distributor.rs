//! The distributing side: the queue (`state.rs`) behind one mutex, its control messages'
//! handlers, one bounded outgoing queue per worker link, and the expiry timer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use event_listener::Event as Notify;
use prost::{Message, Name};
use prost_types::Any;

use super::state::{EnqueueError, Limits, QueueState};
use super::{lock, truncate, DeadLetter, QueueError, QueueEvent, QueueStats, SendOptions};
use crate::dispatch::{Context, Dispatcher, Reply};
use crate::endpoint::queue::LinkQueue;
use crate::endpoint::{Endpoint, Event, Link, LinkId, LinkObserver, WeakEndpoint};
use crate::proto::queue::{
    Abort, Ack, Begin, Commit, Consume, Deliver, Enqueue, EnqueueStatus, Enqueued, Reject, Requeue,
    TransactionDone,
};

/// What a distributor does with a dead letter: called once per message, outside any lock, on
/// the task that made it one (keep it short; forward it to a channel for slow work).
pub type DeadLetterHandler = Arc<dyn Fn(DeadLetter) + Send + Sync>;

/// How a [`Distributor`] holds its queue. Cheap to clone.
#[derive(Clone)]
#[non_exhaustive]
pub struct DistributorConfig {
    max_messages: usize,
    max_bytes: usize,
    max_deliveries: u32,
    max_credit: u32,
    max_transactions_per_link: usize,
    dead_letters: Option<DeadLetterHandler>,
}

impl Default for DistributorConfig {
    fn default() -> Self {
        Self {
            max_messages: 10_000,
            max_bytes: 64 << 20,
            max_deliveries: 16,
            max_credit: 1024,
            max_transactions_per_link: 16,
            dead_letters: None,
        }
    }
}

impl std::fmt::Debug for DistributorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistributorConfig")
            .field("max_messages", &self.max_messages)
            .field("max_bytes", &self.max_bytes)
            .field("max_deliveries", &self.max_deliveries)
            .field("max_credit", &self.max_credit)
            .field("max_transactions_per_link", &self.max_transactions_per_link)
            .field("dead_letters", &self.dead_letters.is_some())
            .finish()
    }
}

impl DistributorConfig {
    /// A queue of at most 10 000 messages and 64 MiB, 16 deliveries per message, a credit of
    /// at most 1024 per worker link, 16 open transactions per link; dead letters are logged and
    /// dropped.
    pub fn new() -> Self {
        Self::default()
    }

    /// The queue holds at most `messages` messages and `bytes` bytes (type URL plus value of
    /// each), counting those ready, in flight at workers and staged in transactions. A
    /// message larger than `bytes` is refused (`ENQUEUE_STATUS_TOO_LARGE`).
    pub fn with_capacity(mut self, messages: usize, bytes: usize) -> Self {
        self.max_messages = messages.max(1);
        self.max_bytes = bytes.max(1);
        self
    }

    /// A message that comes back (its worker's link ended, or it was requeued) after this many
    /// deliveries is a dead letter ([`DeadLetterReason::MaxDeliveries`](super::DeadLetterReason::MaxDeliveries))
    /// instead of being delivered again. 0: no limit. Default 16.
    pub fn with_max_deliveries(mut self, deliveries: u32) -> Self {
        self.max_deliveries = deliveries;
        self
    }

    /// A worker's `Consume` credit is capped at this (default 1024; at least 1): what a worker
    /// can make the distributor queue for its link.
    pub fn with_max_credit(mut self, credit: u32) -> Self {
        self.max_credit = credit.max(1);
        self
    }

    /// At most this many open transactions per link (default 16); a `Begin` beyond is not
    /// opened, and its `Commit` is answered `TRANSACTION_STATUS_UNKNOWN`.
    pub fn with_max_transactions_per_link(mut self, transactions: usize) -> Self {
        self.max_transactions_per_link = transactions;
        self
    }

    /// Gives every dead letter (rejected, expired, delivered too often) to `handler`.
    pub fn with_dead_letters(
        mut self,
        handler: impl Fn(DeadLetter) + Send + Sync + 'static,
    ) -> Self {
        self.dead_letters = Some(Arc::new(handler));
        self
    }
}

/// Holds a work queue on an [`Endpoint`]: takes messages from its own
/// [`enqueue`](Self::enqueue) and from producers, and shares them out among the workers on its
/// links. Cheap to clone.
///
/// Set it up in three steps: [`route`](Self::route) its handlers into the endpoint's
/// dispatcher, make the endpoint, [`attach`](Self::attach) it (before accepting or
/// connecting). See the [module docs](super) for an example.
#[derive(Clone)]
pub struct Distributor {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Distributor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributor")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

struct Shared {
    queue: Mutex<QueueState>,
    dead_letters: Option<DeadLetterHandler>,
    /// Each link's outgoing deliveries, emptied into the link by a task of its own.
    links: RwLock<HashMap<LinkId, Arc<LinkQueue>>>,
    max_credit: usize,
    /// Room was made in the queue.
    room: Notify,
    /// A deadline may have moved earlier: the expiry timer looks again.
    deadlines: Notify,
    endpoint: Mutex<WeakEndpoint>,
}

impl Distributor {
    /// A distributor with an empty queue, attached to nothing yet.
    pub fn new(config: DistributorConfig) -> Self {
        let limits = Limits {
            max_messages: config.max_messages,
            max_bytes: config.max_bytes,
            max_deliveries: config.max_deliveries,
            max_credit: config.max_credit,
            max_transactions_per_link: config.max_transactions_per_link,
        };
        Self {
            shared: Arc::new(Shared {
                queue: Mutex::new(QueueState::new(limits)),
                dead_letters: config.dead_letters,
                links: RwLock::new(HashMap::new()),
                max_credit: config.max_credit as usize,
                room: Notify::new(),
                deadlines: Notify::new(),
                endpoint: Mutex::new(WeakEndpoint::default()),
            }),
        }
    }

    /// `dispatcher` with the handlers of the producers' and workers' messages added (`Enqueue`,
    /// `Begin`, `Commit`, `Abort`, `Consume`, `Ack`, `Reject`, `Requeue`): give the result to
    /// [`Endpoint::new`].
    pub fn route(&self, dispatcher: Dispatcher) -> Dispatcher {
        let s = |d: &Self| d.shared.clone();
        let (enqueue, begin, commit, abort) = (s(self), s(self), s(self), s(self));
        let (consume, ack, reject, requeue) = (s(self), s(self), s(self), s(self));
        dispatcher
            .on(move |request: Enqueue, cx: Context| {
                let shared = enqueue.clone();
                async move {
                    let answer = shared.enqueue_remote(request, cx.link()).await;
                    Ok::<_, crate::Error>(Reply::message(&answer))
                }
            })
            .on(move |request: Begin, cx: Context| {
                let result = begin.begin(link_of(&cx, Begin::NAME), request.transaction);
                async move { result.map(|()| Reply::none()) }
            })
            .on(move |request: Commit, cx: Context| {
                let result = link_of(&cx, Commit::NAME).map(|link| {
                    let status = commit.with_queue(|q| q.commit(link, request.transaction));
                    Reply::message(&TransactionDone {
                        transaction: request.transaction,
                        status: status as i32,
                    })
                });
                async move { result }
            })
            .on(move |request: Abort, cx: Context| {
                let result = link_of(&cx, Abort::NAME).map(|link| {
                    let status = abort.with_queue(|q| q.abort(link, request.transaction));
                    Reply::message(&TransactionDone {
                        transaction: request.transaction,
                        status: status as i32,
                    })
                });
                async move { result }
            })
            .on(move |request: Consume, cx: Context| {
                let result = link_of(&cx, Consume::NAME)
                    .map(|link| consume.with_queue(|q| q.consume(link, request.credit)));
                async move { result.map(|()| Reply::none()) }
            })
            .on(move |request: Ack, cx: Context| {
                let result = link_of(&cx, Ack::NAME)
                    .map(|link| ack.with_queue(|q| q.ack(link, &request.ids, request.transaction)));
                async move { result.map(|()| Reply::none()) }
            })
            .on(move |request: Reject, cx: Context| {
                let result = link_of(&cx, Reject::NAME).map(|link| {
                    reject.with_queue(|q| q.reject(link, &request.ids, request.transaction))
                });
                async move { result.map(|()| Reply::none()) }
            })
            .on(move |request: Requeue, cx: Context| {
                let result = link_of(&cx, Requeue::NAME)
                    .map(|link| requeue.with_queue(|q| q.requeue(link, &request.ids)));
                async move { result.map(|()| Reply::none()) }
            })
    }

    /// Distributes on `endpoint`'s links from now on (its links already up included), and
    /// starts the expiry timer on its spawner.
    pub fn attach(&self, endpoint: &Endpoint) {
        *lock(&self.shared.endpoint) = endpoint.downgrade();
        endpoint.observe(Arc::new(Observer(self.shared.clone())));
        endpoint.spawn(Box::pin(expiry_timer(Arc::downgrade(&self.shared))));
    }

    /// Puts `msg` in the queue, waiting while it is full.
    ///
    /// # Errors
    /// [`QueueError::Refused`] if the message alone is larger than the queue's byte bound.
    pub async fn enqueue<M: Message + Name>(&self, msg: &M) -> Result<(), QueueError> {
        self.enqueue_any(crate::codec::pack(msg), SendOptions::new())
            .await
    }

    /// [`enqueue`](Self::enqueue) with a time to live.
    ///
    /// # Errors
    /// As [`enqueue`](Self::enqueue).
    pub async fn enqueue_with<M: Message + Name>(
        &self,
        msg: &M,
        options: SendOptions,
    ) -> Result<(), QueueError> {
        self.enqueue_any(crate::codec::pack(msg), options).await
    }

    /// [`enqueue_with`](Self::enqueue_with) for a message already packed.
    ///
    /// # Errors
    /// As [`enqueue`](Self::enqueue).
    pub async fn enqueue_any(&self, message: Any, options: SendOptions) -> Result<(), QueueError> {
        self.shared
            .enqueue_waiting(None, message, options.ttl(), 0)
            .await
            .map_err(refused)
    }

    /// Puts `msg` in the queue if there is room now.
    ///
    /// # Errors
    /// [`QueueError::Full`] (with the packed message), or as [`enqueue`](Self::enqueue).
    pub fn try_enqueue<M: Message + Name>(&self, msg: &M) -> Result<(), QueueError> {
        let message = crate::codec::pack(msg);
        match self
            .shared
            .with_queue(|q| q.enqueue(None, message, None, 0, Instant::now()))
        {
            Ok(()) => Ok(()),
            Err(EnqueueError::Full(message)) => Err(QueueError::Full(message)),
            Err(e) => Err(refused(e)),
        }
    }

    /// A snapshot of the queue's sizes and counters.
    pub fn stats(&self) -> QueueStats {
        lock(&self.shared.queue).stats()
    }

    /// How many unacknowledged deliveries `link` holds.
    pub fn holding(&self, link: LinkId) -> usize {
        lock(&self.shared.queue).holding(link)
    }
}

fn refused(e: EnqueueError) -> QueueError {
    let (status, message) = status_of(&e);
    QueueError::Refused {
        status,
        message: message.into(),
    }
}

fn status_of(e: &EnqueueError) -> (EnqueueStatus, &'static str) {
    match e {
        EnqueueError::Full(_) => (EnqueueStatus::Unspecified, "queue full"),
        EnqueueError::TooLarge => (
            EnqueueStatus::TooLarge,
            "larger than the queue's byte bound",
        ),
        EnqueueError::UnknownTransaction => (
            EnqueueStatus::UnknownTransaction,
            "not an open transaction of this link",
        ),
    }
}

/// The link a handler runs for; a distributor's handlers on a link of no endpoint are a
/// setup error, reported as the handler's.
fn link_of(cx: &Context, type_name: &str) -> crate::Result<LinkId> {
    cx.link().ok_or_else(|| crate::Error::Handler {
        type_name: type_name.into(),
        source: "a distributor's handler ran on a link of no endpoint".into(),
    })
}

impl Shared {
    /// Runs `f` on the queue, then hands out what can be delivered and the dead letters.
    fn with_queue<R>(&self, f: impl FnOnce(&mut QueueState) -> R) -> R {
        let (result, dead, room) = {
            let mut queue = lock(&self.queue);
            let held_before = queue.held();
            let deadline_before = queue.poll_timeout();
            let result = f(&mut queue);
            self.deliver(&mut queue);
            let dead: Vec<DeadLetter> = std::iter::from_fn(|| queue.poll_dead_letter()).collect();
            let held_after = queue.held();
            let deadline_after = queue.poll_timeout();
            if deadline_after.is_some()
                && (deadline_before.is_none() || deadline_after < deadline_before)
            {
                self.deadlines.notify(1);
            }
            (
                result,
                dead,
                held_after.0 < held_before.0 || held_after.1 < held_before.1,
            )
        };
        if room {
            self.room.notify(usize::MAX);
        }
        self.dead_letters(dead);
        result
    }

    /// Queues every delivery the workers' credit allows on their links. Under the queue's lock,
    /// so deliveries and a link leaving are never out of step.
    fn deliver(&self, queue: &mut QueueState) {
        let now = Instant::now();
        let links = read(&self.links);
        while let Some(delivery) = queue.poll_deliver(now) {
            let frame = crate::codec::pack(&Deliver {
                id: delivery.id,
                message: Some(delivery.message),
                delivery_count: delivery.delivery_count,
                redelivered: delivery.delivery_count > 1,
            });
            // Credit bounds what a link's queue holds, so it has room; a closed one (the link
            // is ending) leaves the message held by the worker until `left` gives it back.
            if let Some(out) = links.get(&delivery.link) {
                let _ = out.try_push(frame);
            }
        }
    }

    fn dead_letters(&self, dead: Vec<DeadLetter>) {
        for letter in dead {
            match &self.dead_letters {
                Some(handler) => handler(letter),
                None => log::debug!(
                    "dead letter ({:?}, {} deliveries): {}",
                    letter.reason,
                    letter.delivery_count,
                    letter.message.type_url
                ),
            }
        }
    }

    /// Enqueues, waiting for room while the queue is full.
    async fn enqueue_waiting(
        &self,
        link: Option<LinkId>,
        mut message: Any,
        ttl: Option<Duration>,
        transaction: u64,
    ) -> Result<(), EnqueueError> {
        loop {
            let listener = self.room.listen();
            match self.with_queue(|q| q.enqueue(link, message, ttl, transaction, Instant::now())) {
                Err(EnqueueError::Full(back)) => message = back,
                other => return other,
            }
            listener.await;
        }
    }

    /// A producer's `Enqueue`: answered once the message is in the queue. While the queue is
    /// full this waits, and the link reads nothing more meanwhile (the transport pushes back
    /// on the producer).
    async fn enqueue_remote(&self, request: Enqueue, link: Option<LinkId>) -> Enqueued {
        let answer = |status: EnqueueStatus, message: &str| Enqueued {
            id: request.id,
            status: status as i32,
            message: truncate(message.to_owned()),
        };
        let Some(message) = request.message.filter(|_| request.id != 0) else {
            return answer(EnqueueStatus::Invalid, "id 0 or no message");
        };
        let ttl = (request.ttl_ms != 0).then(|| Duration::from_millis(request.ttl_ms));
        match self
            .enqueue_waiting(link, message, ttl, request.transaction)
            .await
        {
            Ok(()) => answer(EnqueueStatus::Ok, ""),
            Err(e) => {
                let (status, message) = status_of(&e);
                answer(status, message)
            }
        }
    }

    fn begin(&self, link: crate::Result<LinkId>, transaction: u64) -> crate::Result<()> {
        let link = link?;
        match self.with_queue(|q| q.begin(link, transaction)) {
            Ok(true) => Ok(()),
            Ok(false) => {
                log::debug!("{link}: Begin {transaction} beyond the open transactions allowed");
                Ok(())
            }
            Err(()) => Err(crate::Error::Handler {
                type_name: Begin::NAME.into(),
                source: format!("transaction {transaction} is 0 or open already").into(),
            }),
        }
    }

    fn emit(&self, event: QueueEvent) {
        if let Some(endpoint) = lock(&self.endpoint).upgrade() {
            endpoint.emit(Event::Queue(event));
        }
    }
}

/// Expires messages at their deadlines. Ends when the distributor is gone.
async fn expiry_timer(shared: Weak<Shared>) {
    // Looks at least this often, so it notices the distributor is gone.
    const IDLE: Duration = Duration::from_secs(1);
    loop {
        let (listener, wait) = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let listener = shared.deadlines.listen();
            let now = Instant::now();
            let next = shared.with_queue(|q| {
                q.handle_timeout(now);
                q.poll_timeout()
            });
            let wait = next.map_or(IDLE, |next| next.saturating_duration_since(now).min(IDLE));
            (listener, wait)
        };
        let timer = futures_timer::Delay::new(wait);
        futures_util::future::select(listener, timer).await;
    }
}

struct Observer(Arc<Shared>);

impl LinkObserver for Observer {
    fn joined(&self, link: &Link) {
        // Credit (capped) bounds the deliveries queued for a link; bytes are bounded by the
        // distributor's own byte bound.
        let out = Arc::new(LinkQueue::new(self.0.max_credit, usize::MAX));
        write(&self.0.links).insert(link.id(), out.clone());
        let Some(endpoint) = lock(&self.0.endpoint).upgrade() else {
            return;
        };
        link.feed_from(&endpoint, out);
    }

    fn left(&self, link: LinkId) {
        if let Some(out) = write(&self.0.links).remove(&link) {
            out.close();
        }
        let held = self.0.with_queue(|q| {
            let held = q.holding(link);
            q.link_left(link);
            held
        });
        if held > 0 {
            self.0.emit(QueueEvent::Requeued {
                link,
                messages: held,
            });
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
