//! The subscribing side: filters kept and sent to every publisher link (again after each
//! reconnection), acknowledgements matched to requests, messages to handlers or a stream.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_channel::oneshot;
use futures_core::Stream;
use prost_types::Any;

use super::topic::{parse_filter, validate_topic};
use super::{PubSubError, PubSubEvent};
use crate::dispatch::{Context, Dispatcher, Reply};
use crate::endpoint::{Endpoint, Event, Link, LinkId, LinkObserver, Origin, WeakEndpoint};
use crate::peer::Peer;
use crate::proto::pubsub::{Publish, Subscribe, SubscribeAck, SubscribeError, Unsubscribe};

/// How a [`Subscriber`] delivers and waits. Cheap to clone.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SubscriberConfig {
    queue_len: usize,
    handlers: Option<Arc<Dispatcher>>,
    ack_timeout: Duration,
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        Self {
            queue_len: 1024,
            handlers: None,
            ack_timeout: Duration::from_secs(10),
        }
    }
}

impl SubscriberConfig {
    /// Messages to [`Subscriber::messages`] (at most 1024 waiting), acknowledgements awaited
    /// for 10 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `messages` received messages wait for [`Subscriber::messages`] (at least 1);
    /// beyond that the links stop reading, and the publishers' policies apply.
    pub fn with_queue_len(mut self, messages: usize) -> Self {
        self.queue_len = messages.max(1);
        self
    }

    /// Delivers each message to `handlers` (by its type, as any dispatcher does) instead of
    /// [`Subscriber::messages`]; [`Context::topic`] tells the topic and
    /// [`Context::link`] the publisher's link. As everywhere, a message no handler takes
    /// (and no fallback) is an error that ends the link to that publisher: add a
    /// [`fallback`](Dispatcher::fallback) to ignore types you do not know.
    pub fn with_handlers(mut self, handlers: impl Into<Arc<Dispatcher>>) -> Self {
        self.handlers = Some(handlers.into());
        self
    }

    /// How long [`Subscriber::subscribe`] waits for each publisher's answer.
    pub fn with_ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }
}

/// Subscribes on an [`Endpoint`]'s links (its publishers): the filters it holds are sent to
/// every link, and again to every new link (a reconnection), and what the publishers send
/// arrives as `(topic, message)` on [`messages`](Self::messages) or at typed handlers
/// ([`SubscriberConfig::with_handlers`]). Cheap to clone.
///
/// Set it up like a [`Publisher`](super::Publisher): [`route`](Self::route), make the
/// endpoint, [`attach`](Self::attach).
#[derive(Clone, Debug)]
pub struct Subscriber {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    config: SubscriberConfig,
    filters: Mutex<BTreeSet<String>>,
    links: Mutex<HashMap<LinkId, Peer>>,
    pending: Mutex<HashMap<(LinkId, u64), oneshot::Sender<SubscribeAck>>>,
    next_request: AtomicU64,
    messages: async_channel::Sender<(String, Any)>,
    messages_rx: async_channel::Receiver<(String, Any)>,
    endpoint: Mutex<WeakEndpoint>,
}

impl Subscriber {
    /// A subscriber with no filters, attached to nothing yet.
    pub fn new(config: SubscriberConfig) -> Self {
        let (messages, messages_rx) = async_channel::bounded(config.queue_len);
        Self {
            state: Arc::new(State {
                config,
                filters: Mutex::new(BTreeSet::new()),
                links: Mutex::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
                next_request: AtomicU64::new(1),
                messages,
                messages_rx,
                endpoint: Mutex::new(WeakEndpoint::default()),
            }),
        }
    }

    /// `dispatcher` with the handlers of `Publish` and `SubscribeAck` added: give the result to
    /// [`Endpoint::new`].
    pub fn route(&self, dispatcher: Dispatcher) -> Dispatcher {
        let published = self.state.clone();
        let acked = self.state.clone();
        dispatcher
            .on(move |publish: Publish, cx: Context| {
                let state = published.clone();
                async move { state.deliver(publish, cx).await }
            })
            .on(move |ack: SubscribeAck, cx: Context| {
                acked.acknowledged(ack, &cx);
                async { Ok::<_, crate::Error>(()) }
            })
    }

    /// Subscribes on `endpoint`'s links from now on (its links already up included).
    pub fn attach(&self, endpoint: &Endpoint) {
        *lock(&self.state.endpoint) = endpoint.downgrade();
        endpoint.observe(Arc::new(Observer(self.state.clone())));
    }

    /// Adds `filter`: sent to every publisher link now (this waits for their answers) and to
    /// every link that joins later. Returns how many links confirmed it.
    ///
    /// # Errors
    /// [`PubSubError::InvalidFilter`] (nothing is sent); [`PubSubError::Refused`],
    /// [`PubSubError::Timeout`] or [`PubSubError::Closed`] for the first link that did not
    /// confirm (the filter is kept for the others and for later links).
    pub async fn subscribe(&self, filter: &str) -> Result<usize, PubSubError> {
        parse_filter(filter).map_err(PubSubError::InvalidFilter)?;
        lock(&self.state.filters).insert(filter.to_owned());
        let links: Vec<(LinkId, Peer)> = lock(&self.state.links)
            .iter()
            .map(|(id, peer)| (*id, peer.clone()))
            .collect();
        let mut confirmed = 0;
        let mut first_error = None;
        for (link, peer) in links {
            match self.state.request_subscribe(link, &peer, filter).await {
                Ok(()) => confirmed += 1,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(confirmed),
        }
    }

    /// Removes `filter` (as subscribed): sent to every link now, and no longer to new links.
    /// Returns how many links confirmed it.
    ///
    /// # Errors
    /// [`PubSubError::Timeout`] or [`PubSubError::Closed`] for the first link that did not
    /// answer.
    pub async fn unsubscribe(&self, filter: &str) -> Result<usize, PubSubError> {
        lock(&self.state.filters).remove(filter);
        let links: Vec<(LinkId, Peer)> = lock(&self.state.links)
            .iter()
            .map(|(id, peer)| (*id, peer.clone()))
            .collect();
        let mut confirmed = 0;
        let mut first_error = None;
        for (link, peer) in links {
            let request = Unsubscribe {
                request_id: self.state.request_id(),
                filter: filter.to_owned(),
            };
            let id = request.request_id;
            let answer = self
                .state
                .request(link, id, peer.send_message(&request))
                .await;
            match answer {
                Ok(_) => confirmed += 1,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(confirmed),
        }
    }

    /// The filters held.
    pub fn filters(&self) -> Vec<String> {
        lock(&self.state.filters).iter().cloned().collect()
    }

    /// Received messages as `(topic, message)`, each publisher's in its order (unless
    /// [`SubscriberConfig::with_handlers`] sends them to handlers). Every clone of the stream
    /// takes from the same queue.
    pub fn messages(&self) -> Messages {
        Messages(Box::pin(self.state.messages_rx.clone()))
    }
}

impl State {
    fn request_id(&self) -> u64 {
        // Never 0: starts at 1, and 2^64 requests do not happen.
        self.next_request.fetch_add(1, Ordering::Relaxed).max(1)
    }

    async fn request_subscribe(
        &self,
        link: LinkId,
        peer: &Peer,
        filter: &str,
    ) -> Result<(), PubSubError> {
        let request = Subscribe {
            request_id: self.request_id(),
            filter: filter.to_owned(),
        };
        let ack = self
            .request(link, request.request_id, peer.send_message(&request))
            .await?;
        if ack.subscribed {
            Ok(())
        } else {
            Err(PubSubError::Refused {
                link,
                filter: filter.to_owned(),
                error: SubscribeError::try_from(ack.error).unwrap_or(SubscribeError::Unspecified),
                message: ack.message,
            })
        }
    }

    /// Registers request `id` on `link`, sends it with `send`, waits for its answer.
    async fn request(
        &self,
        link: LinkId,
        id: u64,
        send: impl std::future::Future<Output = crate::Result<()>>,
    ) -> Result<SubscribeAck, PubSubError> {
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert((link, id), tx);
        let answer = async {
            send.await.map_err(|_| PubSubError::Closed)?;
            rx.await.map_err(|_| PubSubError::Closed)
        };
        let timeout = futures_timer::Delay::new(self.config.ack_timeout);
        let result = match futures_util::future::select(Box::pin(answer), timeout).await {
            futures_util::future::Either::Left((answer, _)) => answer,
            futures_util::future::Either::Right(((), _)) => Err(PubSubError::Timeout { link }),
        };
        lock(&self.pending).remove(&(link, id));
        result
    }

    fn acknowledged(&self, ack: SubscribeAck, cx: &Context) {
        let Some(link) = cx.link() else { return };
        match lock(&self.pending).remove(&(link, ack.request_id)) {
            Some(waiting) => {
                let _ = waiting.send(ack);
            }
            // Answered after its request timed out: nothing waits for it any more.
            None => log::debug!("{link}: SubscribeAck for no request ({})", ack.request_id),
        }
    }

    async fn deliver(&self, publish: Publish, cx: Context) -> crate::Result<Reply> {
        // A publisher that breaks the protocol ends its link (and only its link).
        validate_topic(&publish.topic).map_err(|e| crate::Error::Handler {
            type_name: "connect.pubsub.v1.Publish".into(),
            source: Box::new(PubSubError::InvalidTopic(e)),
        })?;
        let message = publish.message.unwrap_or_default();
        match &self.config.handlers {
            Some(handlers) => {
                handlers
                    .dispatch(message, cx.with_topic(publish.topic))
                    .await
            }
            None => {
                // Waits while the queue is full: the link stops reading, and the publisher's
                // policy for slow subscribers applies.
                let _ = self.messages.send((publish.topic, message)).await;
                Ok(Reply::none())
            }
        }
    }

    fn emit(&self, event: PubSubEvent) {
        if let Some(endpoint) = lock(&self.endpoint).upgrade() {
            endpoint.emit(Event::PubSub(event));
        }
    }
}

struct Observer(Arc<State>);

impl LinkObserver for Observer {
    fn joined(&self, link: &Link) {
        let state = self.0.clone();
        lock(&state.links).insert(link.id(), link.peer().clone());
        if let Origin::Connected {
            target,
            reconnect: true,
        } = link.origin()
        {
            state.emit(PubSubEvent::MayHaveMissed {
                link: link.id(),
                target,
            });
        }
        let filters: Vec<String> = lock(&state.filters).iter().cloned().collect();
        if filters.is_empty() {
            return;
        }
        let Some(endpoint) = lock(&state.endpoint).upgrade() else {
            return;
        };
        let (id, peer) = (link.id(), link.peer().clone());
        // (Re-)subscribes on a task of its own: the link's driver must run to carry the
        // answers.
        endpoint.spawn(Box::pin(async move {
            for filter in filters {
                match state.request_subscribe(id, &peer, &filter).await {
                    Ok(()) => {}
                    Err(PubSubError::Closed) => return,
                    Err(e) => state.emit(PubSubEvent::SubscribeFailed {
                        link: id,
                        filter,
                        error: Arc::new(e),
                    }),
                }
            }
            state.emit(PubSubEvent::Subscribed { link: id });
        }));
    }

    fn left(&self, link: LinkId) {
        lock(&self.0.links).remove(&link);
        // Dropping the senders fails the requests waiting on this link.
        lock(&self.0.pending).retain(|(on, _), _| *on != link);
    }
}

/// Received messages as `(topic, message)`: see [`Subscriber::messages`].
#[derive(Debug)]
pub struct Messages(Pin<Box<async_channel::Receiver<(String, Any)>>>);

impl Messages {
    /// The next message, waiting for it.
    pub async fn recv(&mut self) -> Option<(String, Any)> {
        self.0.recv().await.ok()
    }
}

impl Stream for Messages {
    type Item = (String, Any);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.0.as_mut().poll_next(cx)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
