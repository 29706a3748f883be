//! Work queues on an [`Endpoint`](crate::endpoint::Endpoint), brokerless: the distributing peer
//! holds the queue, and each message goes to one of the competing workers (PROTOCOL.md,
//! section 14).
//!
//! - A [`Distributor`] holds a bounded queue (messages and bytes, counting what is ready, in
//!   flight at workers and staged in transactions). Messages come from its own
//!   [`Distributor::enqueue`] and from remote [`Producer`]s (`Enqueue`, answered `Enqueued`
//!   once the message is in the queue: that is a producer's confirm).
//! - A [`Worker`] announces a **credit** on each link (`Consume { credit }`: how many
//!   unacknowledged messages it will hold); the distributor never exceeds it and gives each
//!   message to a worker with free credit, round-robin among them, so a slow worker gets less
//!   rather than a pile-up.
//! - The worker answers each [`Delivery`] with [`ack`](Delivery::ack) (done),
//!   [`reject`](Delivery::reject) (never again: the distributor's dead-letter handler gets it)
//!   or [`requeue`](Delivery::requeue) (again, to another worker if there is one). A worker whose
//!   link ends gives back what it held: each message goes to the head of the queue and is
//!   delivered again, `redelivered`, with its delivery count; after the maximum number of
//!   deliveries ([`DistributorConfig::with_max_deliveries`]) a message is a dead letter instead.
//! - A message may carry a time to live ([`SendOptions::with_ttl`]); one not taken by a worker
//!   within it is a dead letter ([`DeadLetterReason::Expired`]).
//! - [`Transaction`]s group a producer's sends (visible together at the commit, no trace after an
//!   abort or the producer's link dropping) and a worker's acknowledgements
//!   ([`AckTransaction`]).
//! - When the queue is full, [`Producer::send`] and [`Distributor::enqueue`] wait and
//!   [`Producer::try_send`] and [`Distributor::try_enqueue`] say so.
//!
//! The queue lives in the distributor's memory: what it holds is lost if its process dies. The
//! README's "Work queues" section has the guarantees table.
//!
//! **Expiry elsewhere.** Time to live is a work-queue feature only. Publish/subscribe sends a
//! message at once to the subscribers there are and keeps nothing for later, so there is
//! nothing to expire (a slow subscriber's queue is bounded and its policy drops, waits or
//! disconnects); a reliable stream promises every message in order, exactly once, and a message
//! expiring inside it would break that promise.
//!
//! ```
//! # async_std::task::block_on(async {
//! use connect::dispatch::Dispatcher;
//! use connect::endpoint::{self, Endpoint, EndpointConfig};
//! use connect::proto::example::HelloWorld;
//! use connect::queue::{Distributor, DistributorConfig, Worker, WorkerConfig};
//! use connect::transport::tcp::{self, TcpListener};
//!
//! let spawn = |task| { async_std::task::spawn(task); };
//!
//! // The distributor holds the queue and accepts workers (and producers).
//! let distributor = Distributor::new(DistributorConfig::new());
//! let server = Endpoint::new(EndpointConfig::new(), distributor.route(Dispatcher::new()), spawn);
//! distributor.attach(&server);
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! server.accept(endpoint::tcp_incoming(listener));
//!
//! // A worker connects, holding at most 8 messages at a time.
//! let worker = Worker::new(WorkerConfig::new().with_credit(8));
//! let client = Endpoint::new(EndpointConfig::new(), worker.route(Dispatcher::new()), spawn);
//! worker.attach(&client);
//! client.connect(move || tcp::connect(addr));
//!
//! distributor.enqueue(&HelloWorld { text: "job".into(), sequence: 1 }).await?;
//! let delivery = worker.deliveries().recv().await.unwrap();
//! assert_eq!(delivery.to_msg::<HelloWorld>()?.text, "job");
//! assert_eq!(delivery.delivery_count(), 1);
//! delivery.ack().await?;
//! while distributor.stats().acked < 1 {
//!     async_std::task::sleep(std::time::Duration::from_millis(5)).await;
//! }
//! client.close().await;
//! server.close().await;
//! # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
//! ```

mod distributor;
mod pending;
mod producer;
mod state;
mod worker;

use std::time::Duration;

use prost_types::Any;

pub use crate::proto::queue::{DeadLetterReason, EnqueueStatus, TransactionStatus};
pub use distributor::{DeadLetterHandler, Distributor, DistributorConfig};
pub use producer::{Confirmation, Producer, ProducerConfig, Transaction};
pub use worker::{AckTransaction, Deliveries, Delivery, Worker, WorkerConfig};

use crate::endpoint::LinkId;

/// What went wrong with a work-queue operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The distributor refused the message (too large, invalid, unknown transaction).
    #[error("enqueue refused: {status:?} {message}")]
    Refused {
        /// Why, as a code.
        status: EnqueueStatus,
        /// Why, for people.
        message: String,
    },
    /// The queue is full (only from the `try_` forms; the others wait).
    #[error("queue full")]
    Full(Any),
    /// No link to a distributor is up.
    #[error("no link to a distributor")]
    NoLink,
    /// The link ended before the answer came: the message may or may not be in the queue (a
    /// transaction is aborted).
    #[error("link closed")]
    Closed,
    /// A transaction ended otherwise than asked (`Unknown`: the distributor does not hold it,
    /// refused at `Begin` for too many open, or ended already).
    #[error("transaction {transaction}: {status:?}")]
    Transaction {
        /// The transaction's id.
        transaction: u64,
        /// How it ended.
        status: TransactionStatus,
    },
    /// A [`Delivery`]'s or transaction's link is not one of this worker's links any more.
    #[error("{0} is gone")]
    LinkGone(LinkId),
}

/// A message that left the queue without being acknowledged, given to the distributor's
/// dead-letter handler ([`DistributorConfig::with_dead_letters`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The message, as it was enqueued.
    pub message: Any,
    /// Why.
    pub reason: DeadLetterReason,
    /// How many times it was delivered.
    pub delivery_count: u32,
}

impl DeadLetter {
    /// As the wire's `DeadLetter`, to forward to another peer.
    pub fn to_proto(&self) -> crate::proto::queue::DeadLetter {
        crate::proto::queue::DeadLetter {
            message: Some(self.message.clone()),
            reason: self.reason as i32,
            delivery_count: self.delivery_count,
        }
    }
}

/// A snapshot of a distributor's queue ([`Distributor::stats`]). Counters are totals since the
/// distributor was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Messages ready, waiting for a worker.
    pub depth: usize,
    /// Messages delivered and not yet acknowledged, rejected or given back.
    pub in_flight: usize,
    /// Messages in open transactions (not visible yet).
    pub staged: usize,
    /// Bytes held (type URL plus value of every message ready, in flight or staged).
    pub bytes: usize,
    /// Links that sent `Consume`.
    pub workers: usize,
    /// Messages accepted (a transaction's at its commit; aborted ones are not counted).
    pub enqueued: u64,
    /// Deliveries, redeliveries included.
    pub delivered: u64,
    /// Messages acknowledged.
    pub acked: u64,
    /// Deliveries of a message delivered before.
    pub redelivered: u64,
    /// Messages given to the dead-letter handler for being rejected or delivered too often.
    pub dead_lettered: u64,
    /// Messages given to the dead-letter handler because they expired.
    pub expired: u64,
    /// Transactions committed.
    pub committed: u64,
    /// Transactions aborted (by an `Abort`, or by their link ending).
    pub aborted: u64,
}

/// A work queue's events, on the endpoint's [`events`](crate::endpoint::Endpoint::events) as
/// [`Event::Queue`](crate::endpoint::Event::Queue).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum QueueEvent {
    /// Distributor: a worker's link ended while it held messages; they went back to the queue
    /// (or to the dead-letter handler, past the maximum deliveries).
    Requeued {
        /// The worker's link.
        link: LinkId,
        /// How many messages it held.
        messages: usize,
    },
}

/// How one message is sent ([`Producer::send_with`], [`Distributor::enqueue_with`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendOptions {
    ttl: Option<Duration>,
}

impl SendOptions {
    /// No time to live.
    pub fn new() -> Self {
        Self::default()
    }

    /// Not delivered after `ttl` from when the distributor takes it in (whole milliseconds on
    /// the wire; below 1 ms counts as 1 ms): a dead letter ([`DeadLetterReason::Expired`])
    /// instead.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// See [`with_ttl`](Self::with_ttl).
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    pub(crate) fn ttl_ms(&self) -> u64 {
        self.ttl.map_or(0, |ttl| {
            u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
        })
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// At most 200 bytes, cut at a character boundary.
fn truncate(mut message: String) -> String {
    if message.len() > 200 {
        let mut end = 200;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}
