//! The working side: a credit announced on every distributor link, deliveries to a stream, and
//! each delivery's answer (ack, reject, requeue) sent back on the link it came from.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use futures_core::Stream;
use prost::{Message, Name};
use prost_types::Any;

use super::{lock, pending, QueueError};
use crate::dispatch::{Context, Dispatcher, Reply};
use crate::endpoint::{Endpoint, Link, LinkId, LinkObserver};
use crate::peer::Peer;
use crate::proto::queue::{Ack, Consume, Deliver, Reject, Requeue, TransactionDone};

/// How a [`Worker`] takes work. Cheap to clone.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerConfig {
    credit: u32,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self { credit: 16 }
    }
}

impl WorkerConfig {
    /// A credit of 16 per link.
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds at most `credit` unacknowledged messages per distributor link (AMQP's prefetch;
    /// at least 1).
    pub fn with_credit(mut self, credit: u32) -> Self {
        self.credit = credit.max(1);
        self
    }
}

/// Takes work from the distributors on an [`Endpoint`]'s links: announces its credit on every
/// link as it joins (`Consume`), and gives what they deliver to
/// [`deliveries`](Self::deliveries). Answer each [`Delivery`]; one left unanswered is
/// delivered again (maybe to another worker) once its link ends. Cheap to clone.
///
/// Set it up like a [`Distributor`](super::Distributor): [`route`](Self::route), make the
/// endpoint, [`attach`](Self::attach).
#[derive(Clone, Debug)]
pub struct Worker {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    credit: AtomicU32,
    links: Mutex<HashMap<LinkId, Peer>>,
    deliveries: async_channel::Sender<Delivery>,
    deliveries_rx: async_channel::Receiver<Delivery>,
}

impl Worker {
    /// A worker attached to nothing yet.
    pub fn new(config: WorkerConfig) -> Self {
        // Each link's credit bounds what arrives from it; beyond this, links stop reading.
        let (deliveries, deliveries_rx) = async_channel::bounded(config.credit as usize);
        Self {
            state: Arc::new(State {
                credit: AtomicU32::new(config.credit),
                links: Mutex::new(HashMap::new()),
                deliveries,
                deliveries_rx,
            }),
        }
    }

    /// `dispatcher` with the handlers of `Deliver` and `TransactionDone` added: give the result
    /// to [`Endpoint::new`].
    pub fn route(&self, dispatcher: Dispatcher) -> Dispatcher {
        let state = self.state.clone();
        dispatcher
            .on(move |deliver: Deliver, cx: Context| {
                let state = state.clone();
                async move { state.delivered(deliver, cx).await }
            })
            .on(|done: TransactionDone, cx: Context| {
                pending::transaction_done(&done, &cx);
                async { Ok::<_, crate::Error>(()) }
            })
    }

    /// Takes work on `endpoint`'s links from now on (its links already up included).
    pub fn attach(&self, endpoint: &Endpoint) {
        endpoint.observe(Arc::new(Observer(self.state.clone())));
    }

    /// The deliveries, from every link, in the order each link's arrived. Every clone of the
    /// stream takes from the same queue.
    pub fn deliveries(&self) -> Deliveries {
        Deliveries(Box::pin(self.state.deliveries_rx.clone()))
    }

    /// Changes the credit on every link, now and for the links to come (0 pauses: nothing
    /// more is delivered until a credit above what the worker holds).
    ///
    /// # Errors
    /// [`QueueError::Closed`] if a link ended before the change was queued (it no longer
    /// matters there).
    pub async fn set_credit(&self, credit: u32) -> Result<(), QueueError> {
        self.state.credit.store(credit, Ordering::Relaxed);
        let mut result = Ok(());
        for peer in self.state.peers() {
            if peer.send_message(&Consume { credit }).await.is_err() {
                result = Err(QueueError::Closed);
            }
        }
        result
    }

    /// Opens a transaction on `link` (the link a [`Delivery`] came from): acknowledgements and
    /// rejections sent in it take effect together at its commit.
    ///
    /// # Errors
    /// [`QueueError::LinkGone`]; [`QueueError::Closed`] if the link ended meanwhile.
    pub async fn begin(&self, link: LinkId) -> Result<AckTransaction, QueueError> {
        let peer = lock(&self.state.links)
            .get(&link)
            .cloned()
            .ok_or(QueueError::LinkGone(link))?;
        let transaction = pending::Open::begin(link, peer).await?;
        Ok(AckTransaction { transaction })
    }

    /// Links this worker takes work on.
    pub fn links(&self) -> usize {
        lock(&self.state.links).len()
    }
}

impl State {
    fn peers(&self) -> Vec<Peer> {
        lock(&self.links).values().cloned().collect()
    }

    async fn delivered(&self, deliver: Deliver, cx: Context) -> crate::Result<Reply> {
        let protocol = |what: &str| crate::Error::Handler {
            type_name: Deliver::NAME.into(),
            source: what.to_owned().into(),
        };
        if deliver.id == 0 {
            return Err(protocol("Deliver with id 0"));
        }
        let link = cx.link().ok_or_else(|| protocol("a link of no endpoint"))?;
        let Some(peer) = lock(&self.links).get(&link).cloned() else {
            return Ok(Reply::none());
        };
        let delivery = Delivery {
            link,
            peer,
            id: deliver.id,
            message: deliver.message.unwrap_or_default(),
            delivery_count: deliver.delivery_count,
            redelivered: deliver.redelivered,
        };
        // Waits while the application is behind: the link stops reading.
        let _ = self.deliveries.send(delivery).await;
        Ok(Reply::none())
    }
}

struct Observer(Arc<State>);

impl LinkObserver for Observer {
    fn joined(&self, link: &Link) {
        lock(&self.0.links).insert(link.id(), link.peer().clone());
        let credit = self.0.credit.load(Ordering::Relaxed);
        // The link's queue is empty as it joins: there is room for this one.
        if link
            .peer()
            .try_send(crate::codec::pack(&Consume { credit }))
            .is_err()
        {
            log::debug!("{}: could not announce the credit", link.id());
        }
    }

    fn left(&self, link: LinkId) {
        lock(&self.0.links).remove(&link);
        pending::link_left(link);
    }
}

/// One message delivered to this worker: answer it with [`ack`](Self::ack),
/// [`reject`](Self::reject) or [`requeue`](Self::requeue). Unanswered, it is delivered again
/// after its link ends.
#[derive(Debug)]
pub struct Delivery {
    link: LinkId,
    peer: Peer,
    id: u64,
    message: Any,
    delivery_count: u32,
    redelivered: bool,
}

impl Delivery {
    /// The producer's message.
    pub fn message(&self) -> &Any {
        &self.message
    }

    /// The message, decoded as `M`.
    ///
    /// # Errors
    /// If it is not an `M`.
    pub fn to_msg<M: Message + Name + Default>(&self) -> Result<M, prost::DecodeError> {
        self.message.to_msg()
    }

    /// The distributor's id of this delivery.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The link it came from.
    pub fn link(&self) -> LinkId {
        self.link
    }

    /// How many times the message was delivered, this time included.
    pub fn delivery_count(&self) -> u32 {
        self.delivery_count
    }

    /// Whether it was delivered before (a worker may have processed it already).
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// Done: the distributor forgets the message.
    ///
    /// # Errors
    /// [`QueueError::Closed`]: the link ended, and the message will be delivered again.
    pub async fn ack(self) -> Result<(), QueueError> {
        self.answer(&Ack {
            ids: vec![self.id],
            transaction: 0,
        })
        .await
    }

    /// Never again: the distributor gives it to its dead-letter handler.
    ///
    /// # Errors
    /// As [`ack`](Self::ack).
    pub async fn reject(self) -> Result<(), QueueError> {
        self.answer(&Reject {
            ids: vec![self.id],
            transaction: 0,
        })
        .await
    }

    /// Again: back to the head of the queue, for another worker if one has credit.
    ///
    /// # Errors
    /// As [`ack`](Self::ack).
    pub async fn requeue(self) -> Result<(), QueueError> {
        self.answer(&Requeue { ids: vec![self.id] }).await
    }

    async fn answer<M: Message + Name>(&self, msg: &M) -> Result<(), QueueError> {
        self.peer
            .send_message(msg)
            .await
            .map_err(|_| QueueError::Closed)
    }
}

/// A worker's transaction on one link ([`Worker::begin`]): its acknowledgements and
/// rejections take effect together at [`commit`](Self::commit), none after
/// [`abort`](Self::abort) or the link ending (the deliveries stay held, unanswered).
#[derive(Debug)]
pub struct AckTransaction {
    transaction: pending::Open,
}

impl AckTransaction {
    /// Acknowledges `delivery` at the commit.
    ///
    /// # Errors
    /// [`QueueError::LinkGone`] if `delivery` came on another link; [`QueueError::Closed`].
    pub async fn ack(&self, delivery: Delivery) -> Result<(), QueueError> {
        self.check(&delivery)?;
        self.transaction
            .send(&Ack {
                ids: vec![delivery.id],
                transaction: self.transaction.id(),
            })
            .await
    }

    /// Rejects `delivery` at the commit.
    ///
    /// # Errors
    /// As [`ack`](Self::ack).
    pub async fn reject(&self, delivery: Delivery) -> Result<(), QueueError> {
        self.check(&delivery)?;
        self.transaction
            .send(&Reject {
                ids: vec![delivery.id],
                transaction: self.transaction.id(),
            })
            .await
    }

    fn check(&self, delivery: &Delivery) -> Result<(), QueueError> {
        if delivery.link == self.transaction.link() {
            Ok(())
        } else {
            Err(QueueError::LinkGone(delivery.link))
        }
    }

    /// Makes every acknowledgement and rejection of the transaction take effect.
    ///
    /// # Errors
    /// [`QueueError::Transaction`] if the distributor did not commit it; [`QueueError::Closed`]
    /// if the link ended first (nothing took effect).
    pub async fn commit(self) -> Result<(), QueueError> {
        self.transaction.commit().await
    }

    /// Drops the transaction's acknowledgements and rejections.
    ///
    /// # Errors
    /// As [`commit`](Self::commit).
    pub async fn abort(self) -> Result<(), QueueError> {
        self.transaction.abort().await
    }
}

/// A worker's deliveries: see [`Worker::deliveries`].
#[derive(Debug)]
pub struct Deliveries(Pin<Box<async_channel::Receiver<Delivery>>>);

impl Deliveries {
    /// The next delivery, waiting for it.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.0.recv().await.ok()
    }
}

impl Stream for Deliveries {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Delivery>> {
        self.0.as_mut().poll_next(cx)
    }
}
