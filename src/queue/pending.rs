//! Open transactions as their producer or worker sees them, and the answers (`TransactionDone`)
//! they wait for. Transaction ids come from one counter for the whole process, so a producer
//! and a worker routed into the same dispatcher share the one `TransactionDone` handler.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use futures_channel::oneshot;
use prost::{Message, Name};

use super::{lock, QueueError};
use crate::dispatch::Context;
use crate::endpoint::LinkId;
use crate::peer::Peer;
use crate::proto::queue::{Abort, Begin, Commit, TransactionDone, TransactionStatus};

static NEXT: AtomicU64 = AtomicU64::new(1);

type Waiting = BTreeMap<u64, (LinkId, oneshot::Sender<TransactionStatus>)>;

/// Commits and aborts waiting for their answer, by transaction id.
static WAITING: Mutex<Waiting> = Mutex::new(BTreeMap::new());

/// A `TransactionDone` arrived on `cx`'s link.
pub(super) fn transaction_done(done: &TransactionDone, cx: &Context) {
    let mut waiting = lock(&WAITING);
    let ours = waiting
        .get(&done.transaction)
        .is_some_and(|(link, _)| Some(*link) == cx.link());
    if !ours {
        log::debug!(
            "TransactionDone for no transaction waiting ({})",
            done.transaction
        );
        return;
    }
    if let Some((_, answer)) = waiting.remove(&done.transaction) {
        let status =
            TransactionStatus::try_from(done.status).unwrap_or(TransactionStatus::Unspecified);
        let _ = answer.send(status);
    }
}

/// `link` ended: what waits on it fails.
pub(super) fn link_left(link: LinkId) {
    lock(&WAITING).retain(|_, (on, _)| *on != link);
}

/// One open transaction on one link.
#[derive(Debug)]
pub(super) struct Open {
    link: LinkId,
    peer: Peer,
    id: u64,
}

impl Open {
    pub(super) async fn begin(link: LinkId, peer: Peer) -> Result<Self, QueueError> {
        // Never 0: starts at 1, and 2^64 transactions do not happen.
        let id = NEXT.fetch_add(1, Ordering::Relaxed).max(1);
        peer.send_message(&Begin { transaction: id })
            .await
            .map_err(|_| QueueError::Closed)?;
        Ok(Self { link, peer, id })
    }

    pub(super) fn id(&self) -> u64 {
        self.id
    }

    pub(super) fn link(&self) -> LinkId {
        self.link
    }

    pub(super) fn peer(&self) -> &Peer {
        &self.peer
    }

    pub(super) async fn send<M: Message + Name>(&self, msg: &M) -> Result<(), QueueError> {
        self.peer
            .send_message(msg)
            .await
            .map_err(|_| QueueError::Closed)
    }

    pub(super) async fn commit(self) -> Result<(), QueueError> {
        let commit = Commit {
            transaction: self.id,
        };
        self.finish(&commit, TransactionStatus::Committed).await
    }

    pub(super) async fn abort(self) -> Result<(), QueueError> {
        let abort = Abort {
            transaction: self.id,
        };
        self.finish(&abort, TransactionStatus::Aborted).await
    }

    async fn finish<M: Message + Name>(
        &self,
        msg: &M,
        expected: TransactionStatus,
    ) -> Result<(), QueueError> {
        let (tx, rx) = oneshot::channel();
        lock(&WAITING).insert(self.id, (self.link, tx));
        if self.send(msg).await.is_err() {
            lock(&WAITING).remove(&self.id);
            return Err(QueueError::Closed);
        }
        // Dropped by `link_left` when the link ends first.
        match rx.await {
            Ok(status) if status == expected => Ok(()),
            Ok(status) => Err(QueueError::Transaction {
                transaction: self.id,
                status,
            }),
            Err(_) => Err(QueueError::Closed),
        }
    }
}
