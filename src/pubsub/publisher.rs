//! The publishing side: a subscription table per endpoint, filtering at the source, one
//! bounded queue per subscriber link.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use prost::{Message, Name};
use prost_types::Any;

use super::sublist::Sublist;
use super::topic::{parse_filter, validate_topic};
use super::{PubSubError, PubSubEvent};
use crate::dispatch::{Context, Dispatcher, Reply};
use crate::endpoint::queue::{LinkQueue, PushError};
use crate::endpoint::{Endpoint, Event, Link, LinkId, LinkObserver, WeakEndpoint};
use crate::proto::pubsub::{Publish, Subscribe, SubscribeAck, SubscribeError, Unsubscribe};

/// What a publisher does with a message for a subscriber whose queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowSubscriber {
    /// Drop the message for that subscriber only and count it; the publisher never waits
    /// (ZeroMQ's choice). The first drop after a delivered message is a
    /// [`PubSubEvent::Dropped`].
    #[default]
    Drop,
    /// [`Publisher::publish`] waits until the subscriber's queue has room: the slowest
    /// subscriber sets the pace. Nothing is dropped while the link is up.
    Wait,
    /// Disconnect that subscriber at once ([`PubSubEvent::Disconnected`]); the others go on.
    Disconnect,
}

/// How a [`Publisher`] treats its subscribers. Cheap to clone.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PublisherConfig {
    policy: SlowSubscriber,
    queue_messages: usize,
    queue_bytes: usize,
    max_filters_per_link: usize,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            policy: SlowSubscriber::Drop,
            queue_messages: 1024,
            queue_bytes: 4 << 20,
            max_filters_per_link: 1024,
        }
    }
}

impl PublisherConfig {
    /// Drop for slow subscribers, queues of 1024 messages and 4 MiB per subscriber link, 1024
    /// filters per link.
    pub fn new() -> Self {
        Self::default()
    }

    /// What to do when a subscriber's queue is full.
    pub fn with_policy(mut self, policy: SlowSubscriber) -> Self {
        self.policy = policy;
        self
    }

    /// Each subscriber link's outgoing queue: at most `messages` messages and `bytes` bytes
    /// (type URL plus value of each `Publish`; one larger message passes when the queue is
    /// empty). The link's own [`PeerConfig`](crate::peer::PeerConfig) queue comes on top.
    pub fn with_queue(mut self, messages: usize, bytes: usize) -> Self {
        self.queue_messages = messages.max(1);
        self.queue_bytes = bytes.max(1);
        self
    }

    /// At most this many filters per link (default 1024); more are refused with
    /// `SUBSCRIBE_ERROR_TOO_MANY_SUBSCRIPTIONS`.
    pub fn with_max_filters_per_link(mut self, filters: usize) -> Self {
        self.max_filters_per_link = filters;
        self
    }
}

/// What became of one published message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// Subscriber links it was queued for.
    pub queued: usize,
    /// Subscriber links it was dropped for (their queue was full; [`SlowSubscriber::Drop`]).
    pub dropped: usize,
    /// Subscriber links disconnected for being too slow ([`SlowSubscriber::Disconnect`]).
    pub disconnected: usize,
}

/// A publisher's counters and queue depths, for monitoring: see [`Publisher::stats`] and
/// [`crate::metrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublisherStats {
    /// Links with at least one filter.
    pub subscribers: usize,
    /// (filter, link) pairs held.
    pub subscriptions: usize,
    /// Messages waiting in the subscriber links' queues, all links together.
    pub queued_messages: usize,
    /// Their bytes.
    pub queued_bytes: usize,
    /// Messages dropped for a subscriber whose queue was full ([`SlowSubscriber::Drop`]),
    /// every link ever.
    pub dropped: u64,
    /// Subscriber links disconnected for being too slow ([`SlowSubscriber::Disconnect`]).
    pub disconnected: u64,
    /// Messages dropped with those links' queues.
    pub dropped_on_disconnect: u64,
}

/// Publishes on an [`Endpoint`]: answers its links' `Subscribe`/`Unsubscribe`, and sends each
/// published message to the links with a matching filter, and to no other. Cheap to clone.
///
/// Set it up in three steps: [`route`](Self::route) its handlers into the endpoint's
/// dispatcher, make the endpoint, [`attach`](Self::attach) it (before accepting or
/// connecting). See the [module docs](super) for an example.
#[derive(Clone, Debug)]
pub struct Publisher {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    config: PublisherConfig,
    subscriptions: RwLock<Sublist<LinkId>>,
    links: RwLock<HashMap<LinkId, Arc<Subscriber>>>,
    endpoint: Mutex<WeakEndpoint>,
    /// `PublisherStats::dropped`, `disconnected`, `dropped_on_disconnect`.
    dropped: AtomicU64,
    disconnected: AtomicU64,
    dropped_on_disconnect: AtomicU64,
}

/// One link as a publisher sees it.
#[derive(Debug)]
struct Subscriber {
    link: Link,
    queue: Arc<LinkQueue>,
    filters: Mutex<HashSet<String>>,
    dropped: AtomicU64,
    /// Dropping since the last message queued (one event per run of drops).
    dropping: AtomicBool,
}

impl Publisher {
    /// A publisher attached to nothing yet.
    pub fn new(config: PublisherConfig) -> Self {
        Self {
            state: Arc::new(State {
                config,
                subscriptions: RwLock::new(Sublist::new()),
                links: RwLock::new(HashMap::new()),
                endpoint: Mutex::new(WeakEndpoint::default()),
                dropped: AtomicU64::new(0),
                disconnected: AtomicU64::new(0),
                dropped_on_disconnect: AtomicU64::new(0),
            }),
        }
    }

    /// `dispatcher` with the handlers of `Subscribe` and `Unsubscribe` added: give the result to
    /// [`Endpoint::new`].
    pub fn route(&self, dispatcher: Dispatcher) -> Dispatcher {
        let subscribe = self.state.clone();
        let unsubscribe = self.state.clone();
        dispatcher
            .on(move |request: Subscribe, cx: Context| {
                let ack = subscribe.subscribe(&request, &cx);
                async move { Ok::<_, crate::Error>(Reply::message(&ack)) }
            })
            .on(move |request: Unsubscribe, cx: Context| {
                let ack = unsubscribe.unsubscribe(&request, &cx);
                async move { Ok::<_, crate::Error>(Reply::message(&ack)) }
            })
    }

    /// Publishes on `endpoint`'s links from now on (its links already up included).
    pub fn attach(&self, endpoint: &Endpoint) {
        *lock(&self.state.endpoint) = endpoint.downgrade();
        endpoint.observe(Arc::new(Observer(self.state.clone())));
    }

    /// Publishes `msg` on `topic`: queued for every link with a matching filter, once per link.
    /// Waits only under [`SlowSubscriber::Wait`].
    ///
    /// # Errors
    /// [`PubSubError::InvalidTopic`].
    pub async fn publish<M: Message + Name>(
        &self,
        topic: &str,
        msg: &M,
    ) -> Result<Published, PubSubError> {
        self.publish_any(topic, crate::codec::pack(msg)).await
    }

    /// [`publish`](Self::publish) for a message already packed.
    ///
    /// # Errors
    /// [`PubSubError::InvalidTopic`].
    pub async fn publish_any(&self, topic: &str, message: Any) -> Result<Published, PubSubError> {
        validate_topic(topic)?;
        let targets = self.state.targets(topic);
        let mut outcome = Published::default();
        if targets.is_empty() {
            return Ok(outcome);
        }
        let frame = crate::codec::pack(&Publish {
            topic: topic.to_owned(),
            message: Some(message),
        });
        let last = targets.len() - 1;
        let mut frame = Some(frame);
        for (i, subscriber) in targets.into_iter().enumerate() {
            // The last subscriber takes the frame itself: one copy fewer.
            let any = if i == last {
                frame.take().unwrap_or_default()
            } else {
                frame.clone().unwrap_or_default()
            };
            match self.state.config.policy {
                SlowSubscriber::Wait => {
                    if subscriber.queue.push(any).await.is_ok() {
                        outcome.queued += 1;
                    }
                }
                policy => match subscriber.queue.try_push(any) {
                    Ok(()) => {
                        subscriber.dropping.store(false, Ordering::Relaxed);
                        outcome.queued += 1;
                    }
                    Err(PushError::Closed(_)) => {}
                    Err(PushError::Full(_)) if policy == SlowSubscriber::Disconnect => {
                        outcome.disconnected += 1;
                        self.state.disconnect(&subscriber);
                    }
                    Err(PushError::Full(_)) => {
                        outcome.dropped += 1;
                        self.state.dropped(&subscriber);
                    }
                },
            }
        }
        Ok(outcome)
    }

    /// Links with at least one filter.
    pub fn subscribers(&self) -> usize {
        read(&self.state.links)
            .values()
            .filter(|s| !lock(&s.filters).is_empty())
            .count()
    }

    /// (filter, link) pairs held.
    pub fn subscriptions(&self) -> usize {
        read(&self.state.subscriptions).len()
    }

    /// Messages dropped for `link` so far (under [`SlowSubscriber::Drop`]).
    pub fn dropped(&self, link: LinkId) -> u64 {
        read(&self.state.links)
            .get(&link)
            .map_or(0, |s| s.dropped.load(Ordering::Relaxed))
    }

    /// Counters and queue depths, all links together.
    pub fn stats(&self) -> PublisherStats {
        let state = &self.state;
        let (mut queued_messages, mut queued_bytes) = (0, 0);
        for subscriber in read(&state.links).values() {
            let (messages, bytes) = subscriber.queue.len();
            queued_messages += messages;
            queued_bytes += bytes;
        }
        PublisherStats {
            subscribers: self.subscribers(),
            subscriptions: self.subscriptions(),
            queued_messages,
            queued_bytes,
            dropped: state.dropped.load(Ordering::Relaxed),
            disconnected: state.disconnected.load(Ordering::Relaxed),
            dropped_on_disconnect: state.dropped_on_disconnect.load(Ordering::Relaxed),
        }
    }

    /// Messages and bytes waiting in `link`'s queue.
    pub fn queued(&self, link: LinkId) -> (usize, usize) {
        read(&self.state.links)
            .get(&link)
            .map_or((0, 0), |s| s.queue.len())
    }
}

impl State {
    fn targets(&self, topic: &str) -> Vec<Arc<Subscriber>> {
        let holders = read(&self.subscriptions).matches(topic);
        let links = read(&self.links);
        holders
            .into_iter()
            .filter_map(|link| links.get(&link).cloned())
            .collect()
    }

    fn emit(&self, event: PubSubEvent) {
        if let Some(endpoint) = lock(&self.endpoint).upgrade() {
            endpoint.emit(Event::PubSub(event));
        }
    }

    fn dropped(&self, subscriber: &Subscriber) {
        let total = subscriber.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        self.dropped.fetch_add(1, Ordering::Relaxed);
        crate::metrics::facade::pubsub_dropped("drop", 1);
        if !subscriber.dropping.swap(true, Ordering::Relaxed) {
            self.emit(PubSubEvent::Dropped {
                link: subscriber.link.id(),
                total,
            });
        }
    }

    fn disconnect(&self, subscriber: &Subscriber) {
        let (messages, bytes) = subscriber.queue.len();
        self.disconnected.fetch_add(1, Ordering::Relaxed);
        self.dropped_on_disconnect
            .fetch_add(messages as u64, Ordering::Relaxed);
        crate::metrics::facade::pubsub_disconnected();
        crate::metrics::facade::pubsub_dropped("disconnect", messages as u64);
        subscriber.queue.close();
        // Forgotten and reported before the link is cut: the endpoint reports the link's
        // `Left` from its own task, and an observer must see the cause before the effect.
        self.forget(subscriber.link.id());
        self.emit(PubSubEvent::Disconnected {
            link: subscriber.link.id(),
            queued_messages: messages,
            queued_bytes: bytes,
        });
        subscriber.link.abort();
    }

    /// Drops `link`'s filters and queue.
    fn forget(&self, link: LinkId) {
        let Some(subscriber) = write(&self.links).remove(&link) else {
            return;
        };
        subscriber.queue.close();
        let filters = std::mem::take(&mut *lock(&subscriber.filters));
        let mut subscriptions = write(&self.subscriptions);
        for filter in filters {
            subscriptions.remove(&filter, link);
        }
    }

    fn subscribe(&self, request: &Subscribe, cx: &Context) -> SubscribeAck {
        let refuse = |error: SubscribeError, message: String| SubscribeAck {
            request_id: request.request_id,
            subscribed: false,
            error: error as i32,
            message: truncate(message),
        };
        if request.request_id == 0 {
            return refuse(
                SubscribeError::InvalidRequest,
                "request_id must not be 0".into(),
            );
        }
        if let Err(e) = parse_filter(&request.filter) {
            return refuse(
                SubscribeError::InvalidFilter,
                format!("invalid filter: {e}"),
            );
        }
        let subscriber = cx
            .link()
            .and_then(|link| read(&self.links).get(&link).cloned());
        let Some(subscriber) = subscriber else {
            return refuse(
                SubscribeError::InvalidRequest,
                "not a link of a publishing endpoint".into(),
            );
        };
        let mut filters = lock(&subscriber.filters);
        if !filters.contains(&request.filter) {
            if filters.len() >= self.config.max_filters_per_link {
                return refuse(
                    SubscribeError::TooManySubscriptions,
                    format!(
                        "at most {} filters per link",
                        self.config.max_filters_per_link
                    ),
                );
            }
            filters.insert(request.filter.clone());
            // Valid: checked above.
            let _ = write(&self.subscriptions).insert(&request.filter, subscriber.link.id());
        }
        SubscribeAck {
            request_id: request.request_id,
            subscribed: true,
            ..SubscribeAck::default()
        }
    }

    fn unsubscribe(&self, request: &Unsubscribe, cx: &Context) -> SubscribeAck {
        if let Some(subscriber) = cx
            .link()
            .and_then(|link| read(&self.links).get(&link).cloned())
        {
            if lock(&subscriber.filters).remove(&request.filter) {
                write(&self.subscriptions).remove(&request.filter, subscriber.link.id());
            }
        }
        SubscribeAck {
            request_id: request.request_id,
            subscribed: false,
            ..SubscribeAck::default()
        }
    }
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

struct Observer(Arc<State>);

impl LinkObserver for Observer {
    fn joined(&self, link: &Link) {
        let config = &self.0.config;
        let subscriber = Arc::new(Subscriber {
            link: link.clone(),
            queue: Arc::new(LinkQueue::new(config.queue_messages, config.queue_bytes)),
            filters: Mutex::new(HashSet::new()),
            dropped: AtomicU64::new(0),
            dropping: AtomicBool::new(false),
        });
        write(&self.0.links).insert(link.id(), subscriber.clone());
        let Some(endpoint) = lock(&self.0.endpoint).upgrade() else {
            return;
        };
        // Emptied into the link, in order, until the queue closes (the link left or was
        // disconnected) or the link can take no more; a graceful close of the endpoint
        // hands over what is queued first.
        link.feed_from(&endpoint, subscriber.queue.clone());
    }

    fn left(&self, link: LinkId) {
        self.0.forget(link);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
