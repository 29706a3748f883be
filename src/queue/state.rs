//! The distributor's queue without I/O: messages ready, in flight per worker and staged in
//! transactions; credit and round-robin; redelivery, dead letters and expiry. Every call takes
//! the time it is (`now`), so a test steps it with made-up instants; the distributor
//! (`distributor.rs`) feeds it from its handlers and sends what [`QueueState::poll_deliver`]
//! hands out.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::time::{Duration, Instant};

use prost_types::Any;

use super::{DeadLetter, QueueStats};
use crate::endpoint::LinkId;
use crate::proto::queue::{DeadLetterReason, TransactionStatus};

/// The bounds and policies of one queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) max_messages: usize,
    pub(crate) max_bytes: usize,
    /// 0: no limit.
    pub(crate) max_deliveries: u32,
    pub(crate) max_credit: u32,
    pub(crate) max_transactions_per_link: usize,
}

/// Why a message was not enqueued. `Full` hands it back to wait for room.
#[derive(Debug)]
pub(crate) enum EnqueueError {
    Full(Any),
    TooLarge,
    UnknownTransaction,
}

/// A message the distributor holds.
#[derive(Debug)]
struct Entry {
    message: Any,
    size: usize,
    deadline: Option<Instant>,
    delivery_count: u32,
    /// The worker that requeued it: another one gets it if one has credit.
    requeued_by: Option<LinkId>,
}

#[derive(Debug, Default)]
struct Worker {
    credit: u32,
    /// Delivery ids this worker holds.
    held: HashSet<u64>,
}

#[derive(Debug, Default)]
struct Transaction {
    messages: Vec<Entry>,
    /// Only ids the link holds, each once: at most its credit, whatever it sends.
    acks: BTreeSet<u64>,
    rejects: BTreeSet<u64>,
}

/// One message handed to a worker: send it as a `Deliver`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Delivery {
    pub(crate) link: LinkId,
    pub(crate) id: u64,
    pub(crate) message: Any,
    pub(crate) delivery_count: u32,
}

#[derive(Debug)]
pub(crate) struct QueueState {
    limits: Limits,
    /// Ready messages by position: new ones at the back (growing keys), returned ones at the
    /// front (shrinking keys), so a redelivery goes first.
    ready: BTreeMap<i64, Entry>,
    front: i64,
    back: i64,
    /// Deadlines of ready messages, for expiry in order.
    expiry: BTreeSet<(Instant, i64)>,
    workers: BTreeMap<LinkId, Worker>,
    /// The worker that got the last message: round-robin goes on after it.
    last_worker: Option<LinkId>,
    in_flight: HashMap<u64, (LinkId, Entry)>,
    transactions: HashMap<(LinkId, u64), Transaction>,
    /// Messages and bytes held: ready, in flight and staged.
    held_messages: usize,
    held_bytes: usize,
    next_delivery: u64,
    stats: QueueStats,
    dead: VecDeque<DeadLetter>,
}

pub(crate) fn size(any: &Any) -> usize {
    any.type_url.len() + any.value.len()
}

impl QueueState {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            ready: BTreeMap::new(),
            front: 0,
            back: 0,
            expiry: BTreeSet::new(),
            workers: BTreeMap::new(),
            last_worker: None,
            in_flight: HashMap::new(),
            transactions: HashMap::new(),
            held_messages: 0,
            held_bytes: 0,
            next_delivery: 1,
            stats: QueueStats::default(),
            dead: VecDeque::new(),
        }
    }

    pub(crate) fn stats(&self) -> QueueStats {
        QueueStats {
            depth: self.ready.len(),
            in_flight: self.in_flight.len(),
            staged: self.held_messages - self.ready.len() - self.in_flight.len(),
            bytes: self.held_bytes,
            workers: self.workers.len(),
            ..self.stats
        }
    }

    /// Puts `message` in the queue (or in `link`'s open `transaction`, if not 0) if there is
    /// room; its time to live starts now.
    pub(crate) fn enqueue(
        &mut self,
        link: Option<LinkId>,
        message: Any,
        ttl: Option<Duration>,
        transaction: u64,
        now: Instant,
    ) -> Result<(), EnqueueError> {
        let size = size(&message);
        if size > self.limits.max_bytes {
            return Err(EnqueueError::TooLarge);
        }
        if transaction != 0 {
            let open = link.is_some_and(|l| self.transactions.contains_key(&(l, transaction)));
            if !open {
                return Err(EnqueueError::UnknownTransaction);
            }
        }
        if self.held_messages >= self.limits.max_messages
            || self.held_bytes + size > self.limits.max_bytes
        {
            return Err(EnqueueError::Full(message));
        }
        self.held_messages += 1;
        self.held_bytes += size;
        let entry = Entry {
            message,
            size,
            deadline: ttl.and_then(|ttl| now.checked_add(ttl)),
            delivery_count: 0,
            requeued_by: None,
        };
        match link.filter(|_| transaction != 0) {
            Some(link) => {
                if let Some(tx) = self.transactions.get_mut(&(link, transaction)) {
                    tx.messages.push(entry);
                }
            }
            None => {
                self.stats.enqueued += 1;
                self.push_back(entry);
            }
        }
        Ok(())
    }

    fn push_back(&mut self, entry: Entry) {
        self.back += 1;
        self.insert_ready(self.back, entry);
    }

    fn insert_ready(&mut self, key: i64, entry: Entry) {
        if let Some(deadline) = entry.deadline {
            self.expiry.insert((deadline, key));
        }
        self.ready.insert(key, entry);
    }

    /// `link` is a worker with `credit` (bounded by the configured maximum); 0 pauses it.
    pub(crate) fn consume(&mut self, link: LinkId, credit: u32) {
        self.workers.entry(link).or_default().credit = credit.min(self.limits.max_credit);
    }

    /// The next message for a worker with free credit (round-robin among them), if any.
    /// Expired messages met on the way become dead letters.
    pub(crate) fn poll_deliver(&mut self, now: Instant) -> Option<Delivery> {
        self.handle_timeout(now);
        if self.ready.is_empty() {
            return None;
        }
        let avoid = self
            .ready
            .first_key_value()
            .and_then(|(_, e)| e.requeued_by);
        let has_room = |w: &&Worker| w.held.len() < w.credit as usize;
        // Round-robin: the workers after the last one served, then from the start.
        let start = self.last_worker.map_or(Bound::Unbounded, Bound::Excluded);
        let wrap = self.last_worker.map(|last| self.workers.range(..=last));
        let order = self
            .workers
            .range((start, Bound::Unbounded))
            .chain(wrap.into_iter().flatten())
            .filter(|(_, w)| has_room(w))
            .map(|(id, _)| *id);
        let (mut first, mut other) = (None, None);
        for id in order {
            first.get_or_insert(id);
            if Some(id) != avoid {
                other = Some(id);
                break;
            }
        }
        let link = other.or(first)?;
        let (key, mut entry) = self.ready.pop_first()?;
        if let Some(deadline) = entry.deadline {
            self.expiry.remove(&(deadline, key));
        }
        entry.delivery_count = entry.delivery_count.saturating_add(1);
        if entry.delivery_count > 1 {
            self.stats.redelivered += 1;
        }
        self.stats.delivered += 1;
        let id = self.next_delivery;
        self.next_delivery += 1;
        let delivery = Delivery {
            link,
            id,
            message: entry.message.clone(),
            delivery_count: entry.delivery_count,
        };
        self.workers.entry(link).or_default().held.insert(id);
        self.in_flight.insert(id, (link, entry));
        self.last_worker = Some(link);
        Some(delivery)
    }

    /// Takes `id` back from `link`, if `link` holds it.
    fn take(&mut self, link: LinkId, id: u64) -> Option<Entry> {
        let worker = self.workers.get_mut(&link)?;
        if !worker.held.remove(&id) {
            return None;
        }
        self.in_flight.remove(&id).map(|(_, entry)| entry)
    }

    fn release(&mut self, entry: &Entry) {
        self.held_messages -= 1;
        self.held_bytes -= entry.size;
    }

    fn dead_letter(&mut self, entry: Entry, reason: DeadLetterReason) {
        self.release(&entry);
        match reason {
            DeadLetterReason::Expired => self.stats.expired += 1,
            _ => self.stats.dead_lettered += 1,
        }
        self.dead.push_back(DeadLetter {
            message: entry.message,
            reason,
            delivery_count: entry.delivery_count,
        });
    }

    /// Back to the head of the queue, or a dead letter after the maximum deliveries.
    fn give_back(&mut self, entry: Entry) {
        let max = self.limits.max_deliveries;
        if max != 0 && entry.delivery_count >= max {
            self.dead_letter(entry, DeadLetterReason::MaxDeliveries);
        } else {
            self.front -= 1;
            self.insert_ready(self.front, entry);
        }
    }

    /// Stages `ids` (those `link` holds) as acknowledgements (or rejections) of `transaction`.
    fn stage(&mut self, link: LinkId, ids: &[u64], transaction: u64, reject: bool) {
        let Some(worker) = self.workers.get(&link) else {
            return;
        };
        let Some(tx) = self.transactions.get_mut(&(link, transaction)) else {
            return;
        };
        let staged = if reject {
            &mut tx.rejects
        } else {
            &mut tx.acks
        };
        staged.extend(ids.iter().filter(|id| worker.held.contains(id)));
    }

    /// `link` acknowledges `ids` (unknown ones are ignored), now or at `transaction`'s commit.
    pub(crate) fn ack(&mut self, link: LinkId, ids: &[u64], transaction: u64) {
        if transaction != 0 {
            self.stage(link, ids, transaction, false);
            return;
        }
        for &id in ids {
            if let Some(entry) = self.take(link, id) {
                self.release(&entry);
                self.stats.acked += 1;
            }
        }
    }

    /// `link` rejects `ids`: dead letters, now or at `transaction`'s commit.
    pub(crate) fn reject(&mut self, link: LinkId, ids: &[u64], transaction: u64) {
        if transaction != 0 {
            self.stage(link, ids, transaction, true);
            return;
        }
        for &id in ids {
            if let Some(entry) = self.take(link, id) {
                self.dead_letter(entry, DeadLetterReason::Rejected);
            }
        }
    }

    /// `link` gives `ids` back, to be delivered again (to another worker if one has credit).
    pub(crate) fn requeue(&mut self, link: LinkId, ids: &[u64]) {
        for &id in ids {
            if let Some(mut entry) = self.take(link, id) {
                entry.requeued_by = Some(link);
                self.give_back(entry);
            }
        }
    }

    /// Opens `transaction` on `link`. `Err` if it is 0 or open already (a protocol error);
    /// `Ok(false)` if the link has as many open as allowed (the transaction stays unknown).
    pub(crate) fn begin(&mut self, link: LinkId, transaction: u64) -> Result<bool, ()> {
        if transaction == 0 || self.transactions.contains_key(&(link, transaction)) {
            return Err(());
        }
        let open = self.transactions.keys().filter(|(l, _)| *l == link).count();
        if open >= self.limits.max_transactions_per_link {
            return Ok(false);
        }
        self.transactions
            .insert((link, transaction), Transaction::default());
        Ok(true)
    }

    pub(crate) fn commit(&mut self, link: LinkId, transaction: u64) -> TransactionStatus {
        let Some(tx) = self.transactions.remove(&(link, transaction)) else {
            return TransactionStatus::Unknown;
        };
        self.stats.enqueued += tx.messages.len() as u64;
        for entry in tx.messages {
            self.push_back(entry);
        }
        let acks: Vec<u64> = tx.acks.into_iter().collect();
        let rejects: Vec<u64> = tx.rejects.into_iter().collect();
        self.ack(link, &acks, 0);
        self.reject(link, &rejects, 0);
        self.stats.committed += 1;
        TransactionStatus::Committed
    }

    pub(crate) fn abort(&mut self, link: LinkId, transaction: u64) -> TransactionStatus {
        let Some(tx) = self.transactions.remove(&(link, transaction)) else {
            return TransactionStatus::Unknown;
        };
        for entry in &tx.messages {
            self.release(entry);
        }
        self.stats.aborted += 1;
        TransactionStatus::Aborted
    }

    /// `link` is gone: what it held goes back to the queue (marked redelivered), its open
    /// transactions are aborted.
    pub(crate) fn link_left(&mut self, link: LinkId) {
        let open: Vec<u64> = self
            .transactions
            .keys()
            .filter(|(l, _)| *l == link)
            .map(|(_, t)| *t)
            .collect();
        for transaction in open {
            self.abort(link, transaction);
        }
        if let Some(worker) = self.workers.remove(&link) {
            // Oldest delivery first, so the head of the queue keeps their order.
            let mut held: Vec<u64> = worker.held.into_iter().collect();
            held.sort_unstable_by(|a, b| b.cmp(a));
            for id in held {
                if let Some((_, entry)) = self.in_flight.remove(&id) {
                    self.give_back(entry);
                }
            }
        }
    }

    /// Expires the ready messages whose deadline is `now` or earlier.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, key)) = self.expiry.first() {
            if deadline > now {
                break;
            }
            self.expiry.pop_first();
            if let Some(entry) = self.ready.remove(&key) {
                self.dead_letter(entry, DeadLetterReason::Expired);
            }
        }
    }

    /// When the next ready message expires.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.expiry.first().map(|(deadline, _)| *deadline)
    }

    pub(crate) fn poll_dead_letter(&mut self) -> Option<DeadLetter> {
        self.dead.pop_front()
    }

    /// Messages and bytes held (ready, in flight, staged).
    pub(crate) fn held(&self) -> (usize, usize) {
        (self.held_messages, self.held_bytes)
    }

    /// Deliveries `link` holds.
    pub(crate) fn holding(&self, link: LinkId) -> usize {
        self.workers.get(&link).map_or(0, |w| w.held.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_messages: 100,
            max_bytes: 10_000,
            max_deliveries: 3,
            max_credit: 10,
            max_transactions_per_link: 2,
        }
    }

    fn msg(n: u8) -> Any {
        Any {
            type_url: "t".into(),
            value: vec![n],
        }
    }

    fn link(n: u64) -> LinkId {
        LinkId::for_tests(n)
    }

    fn drain(q: &mut QueueState, now: Instant) -> Vec<Delivery> {
        std::iter::from_fn(|| q.poll_deliver(now)).collect()
    }

    #[test]
    fn credit_and_round_robin() {
        let now = Instant::now();
        let mut q = QueueState::new(limits());
        for n in 0..10 {
            q.enqueue(None, msg(n), None, 0, now).unwrap();
        }
        q.consume(link(1), 2);
        q.consume(link(2), 3);
        let out = drain(&mut q, now);
        let links: Vec<u64> = out.iter().map(|d| d.link.get()).collect();
        assert_eq!(links, [1, 2, 1, 2, 2]);
        assert_eq!(out[0].message, msg(0));
        assert_eq!(q.stats().depth, 5);
        assert_eq!(q.stats().in_flight, 5);
        // An ack frees one credit of that worker only.
        q.ack(link(1), &[out[0].id], 0);
        let next = drain(&mut q, now);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].link, link(1));
        // Acks of ids the link does not hold are ignored.
        q.ack(link(2), &[next[0].id, 999], 0);
        assert_eq!(q.stats().acked, 1);
    }

    #[test]
    fn a_worker_leaving_gives_its_messages_back_first_in_order() {
        let now = Instant::now();
        let mut q = QueueState::new(limits());
        for n in 0..4 {
            q.enqueue(None, msg(n), None, 0, now).unwrap();
        }
        q.consume(link(1), 2);
        let first = drain(&mut q, now);
        assert_eq!(first.len(), 2);
        q.link_left(link(1));
        q.consume(link(2), 10);
        let again = drain(&mut q, now);
        let order: Vec<(Any, u32)> = again
            .iter()
            .map(|d| (d.message.clone(), d.delivery_count))
            .collect();
        assert_eq!(order, [(msg(0), 2), (msg(1), 2), (msg(2), 1), (msg(3), 1)]);
        assert_eq!(q.stats().redelivered, 2);
    }

    #[test]
    fn max_deliveries_and_reject_make_dead_letters() {
        let now = Instant::now();
        let mut q = QueueState::new(limits());
        q.enqueue(None, msg(7), None, 0, now).unwrap();
        q.enqueue(None, msg(8), None, 0, now).unwrap();
        q.consume(link(1), 1);
        for count in 1..=3 {
            let d = q.poll_deliver(now).unwrap();
            assert_eq!((d.message.clone(), d.delivery_count), (msg(7), count));
            q.requeue(link(1), &[d.id]);
        }
        let dead = q.poll_dead_letter().unwrap();
        assert_eq!(dead.reason, DeadLetterReason::MaxDeliveries);
        assert_eq!(dead.delivery_count, 3);
        let d = q.poll_deliver(now).unwrap();
        q.reject(link(1), &[d.id], 0);
        assert_eq!(
            q.poll_dead_letter().unwrap().reason,
            DeadLetterReason::Rejected
        );
        assert_eq!(q.held(), (0, 0));
        assert_eq!(q.stats().dead_lettered, 2);
    }

    #[test]
    fn expiry_before_delivery_only() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let mut q = QueueState::new(limits());
        q.enqueue(None, msg(1), Some(ms(10)), 0, now).unwrap();
        q.enqueue(None, msg(2), Some(ms(100)), 0, now).unwrap();
        q.enqueue(None, msg(3), None, 0, now).unwrap();
        assert_eq!(q.poll_timeout(), Some(now + ms(10)));
        q.consume(link(1), 1);
        // msg 1 expired on the way; msg 2 is taken in time and does not expire in flight.
        let d = q.poll_deliver(now + ms(20)).unwrap();
        assert_eq!(d.message, msg(2));
        let dead = q.poll_dead_letter().unwrap();
        assert_eq!(
            (dead.message, dead.reason),
            (msg(1), DeadLetterReason::Expired)
        );
        q.handle_timeout(now + ms(200));
        assert!(q.poll_dead_letter().is_none());
        // Given back after its deadline: it expires then.
        q.requeue(link(1), &[d.id]);
        q.handle_timeout(now + ms(201));
        assert_eq!(q.poll_dead_letter().unwrap().message, msg(2));
        assert_eq!(q.stats().expired, 2);
        assert_eq!(q.poll_deliver(now + ms(201)).unwrap().message, msg(3));
    }

    #[test]
    fn bounded_in_messages_and_bytes_counting_what_is_held() {
        let now = Instant::now();
        let mut q = QueueState::new(Limits {
            max_messages: 2,
            max_bytes: 10,
            ..limits()
        });
        let big = Any {
            type_url: String::new(),
            value: vec![0; 11],
        };
        assert!(matches!(
            q.enqueue(None, big, None, 0, now),
            Err(EnqueueError::TooLarge)
        ));
        q.enqueue(None, msg(1), None, 0, now).unwrap();
        q.enqueue(None, msg(2), None, 0, now).unwrap();
        assert!(matches!(
            q.enqueue(None, msg(3), None, 0, now),
            Err(EnqueueError::Full(_))
        ));
        // In flight still counts; acknowledged does not.
        q.consume(link(1), 5);
        let d = q.poll_deliver(now).unwrap();
        assert!(matches!(
            q.enqueue(None, msg(3), None, 0, now),
            Err(EnqueueError::Full(_))
        ));
        q.ack(link(1), &[d.id], 0);
        q.enqueue(None, msg(3), None, 0, now).unwrap();
    }

    #[test]
    fn transactions_commit_abort_and_die_with_their_link() {
        let now = Instant::now();
        let mut q = QueueState::new(limits());
        let p = link(1);
        assert_eq!(q.begin(p, 1), Ok(true));
        assert_eq!(q.begin(p, 1), Err(()));
        assert_eq!(q.begin(p, 0), Err(()));
        q.enqueue(Some(p), msg(1), None, 1, now).unwrap();
        q.enqueue(Some(p), msg(2), None, 1, now).unwrap();
        assert!(matches!(
            q.enqueue(Some(p), msg(9), None, 5, now),
            Err(EnqueueError::UnknownTransaction)
        ));
        q.consume(link(2), 10);
        assert!(q.poll_deliver(now).is_none(), "invisible before the commit");
        assert_eq!(q.stats().staged, 2);
        assert_eq!(q.commit(p, 1), TransactionStatus::Committed);
        assert_eq!(q.commit(p, 1), TransactionStatus::Unknown);
        let got = drain(&mut q, now);
        assert_eq!(got.len(), 2);

        // Aborted: no trace.
        assert_eq!(q.begin(p, 2), Ok(true));
        q.enqueue(Some(p), msg(3), None, 2, now).unwrap();
        assert_eq!(q.abort(p, 2), TransactionStatus::Aborted);
        assert!(q.poll_deliver(now).is_none());

        // Abandoned by its link: no trace either.
        assert_eq!(q.begin(p, 3), Ok(true));
        q.enqueue(Some(p), msg(4), None, 3, now).unwrap();
        q.link_left(p);
        assert!(q.poll_deliver(now).is_none());
        assert_eq!(q.held().0, 2, "only the two delivered");

        // A worker's acks in a transaction take effect at its commit.
        let w = link(2);
        assert_eq!(q.begin(w, 1), Ok(true));
        q.ack(w, &[got[0].id, got[1].id], 1);
        assert_eq!(q.stats().in_flight, 2);
        assert_eq!(q.commit(w, 1), TransactionStatus::Committed);
        assert_eq!(q.stats().in_flight, 0);
        assert_eq!(q.stats().acked, 2);
        assert_eq!(q.stats().enqueued, 2);
        assert_eq!(q.held(), (0, 0));
    }

    #[test]
    fn a_transaction_stages_only_answers_for_what_its_link_holds() {
        let now = Instant::now();
        let mut q = QueueState::new(limits());
        q.enqueue(None, msg(1), None, 0, now).unwrap();
        q.consume(link(1), 1);
        let d = q.poll_deliver(now).unwrap();
        assert_eq!(q.begin(link(1), 1), Ok(true));
        // However many ids a worker sends, a transaction keeps at most what the link holds.
        let flood: Vec<u64> = (0..10_000).chain([d.id, d.id]).collect();
        q.ack(link(1), &flood, 1);
        q.reject(link(1), &flood, 1);
        let tx = &q.transactions[&(link(1), 1)];
        assert_eq!((tx.acks.len(), tx.rejects.len()), (1, 1));
        assert_eq!(q.commit(link(1), 1), TransactionStatus::Committed);
        assert_eq!((q.stats().acked, q.stats().dead_lettered), (1, 0));
    }

    #[test]
    fn a_requeued_message_goes_to_another_worker_if_one_has_credit() {
        let now = Instant::now();
        let mut q = QueueState::new(limits());
        for n in 0..3 {
            q.enqueue(None, msg(n), None, 0, now).unwrap();
        }
        q.consume(link(1), 2);
        q.consume(link(2), 1);
        let out = drain(&mut q, now);
        assert_eq!(out.len(), 3);
        // Worker 2 gives msg 1 back: round-robin would pick it again (worker 1 is full), and
        // it is the only one with credit, so it gets it.
        q.requeue(link(2), &[out[1].id]);
        let again = q.poll_deliver(now).unwrap();
        assert_eq!((again.link, again.message.clone()), (link(2), msg(1)));
        // Now worker 1 has room too: requeued by 2, the message goes to 1.
        q.ack(link(1), &[out[0].id], 0);
        q.requeue(link(2), &[again.id]);
        let other = q.poll_deliver(now).unwrap();
        assert_eq!(
            (other.link, other.message, other.delivery_count),
            (link(1), msg(1), 3)
        );
    }

    #[test]
    fn transactions_per_link_are_bounded() {
        let mut q = QueueState::new(limits());
        assert_eq!(q.begin(link(1), 1), Ok(true));
        assert_eq!(q.begin(link(1), 2), Ok(true));
        assert_eq!(q.begin(link(1), 3), Ok(false));
        assert_eq!(q.begin(link(2), 3), Ok(true));
        assert_eq!(q.commit(link(1), 3), TransactionStatus::Unknown);
    }
}
