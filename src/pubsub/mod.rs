//! Publish/subscribe on an [`Endpoint`](crate::endpoint::Endpoint), brokerless: publishers and
//! subscribers talk directly (PROTOCOL.md, section 12).
//!
//! - **Topics** are dot-separated names (`orders.eu.created`); **filters** may use `*` (exactly
//!   one element) and `>` (one or more trailing elements), as NATS does. At most
//!   [`MAX_TOPIC_LEN`] bytes and [`MAX_ELEMENTS`] elements; see [`validate_topic`] and
//!   [`parse_filter`] for what is invalid.
//! - A [`Subscriber`] sends `Subscribe { request_id, filter }` on each of its links; the
//!   [`Publisher`] answers `SubscribeAck { request_id, subscribed }` (or an error for an invalid
//!   filter or one too many) and from then on sends `Publish { topic, message }` for every
//!   message published on a matching topic: filtering happens at the source, through a trie
//!   ([`Sublist`]), not a scan of the filters per message.
//! - Each subscriber link has a bounded queue (messages and bytes) at the publisher; when it is
//!   full the publisher's [`SlowSubscriber`] policy drops (and counts), waits, or disconnects
//!   that subscriber. Each publisher's messages arrive in the order it published them.
//! - A subscriber whose link to a publisher drops reconnects (the endpoint does), subscribes
//!   again by itself, and says it may have missed messages ([`PubSubEvent::MayHaveMissed`]).
//!
//! ```
//! # async_std::task::block_on(async {
//! use connect::dispatch::Dispatcher;
//! use connect::endpoint::{self, Endpoint, EndpointConfig};
//! use connect::proto::example::HelloWorld;
//! use connect::pubsub::{Publisher, PublisherConfig, Subscriber, SubscriberConfig};
//! use connect::transport::tcp::{self, TcpListener};
//!
//! let spawn = |task| { async_std::task::spawn(task); };
//!
//! // The publisher accepts subscribers.
//! let publisher = Publisher::new(PublisherConfig::new());
//! let server = Endpoint::new(EndpointConfig::new(), publisher.route(Dispatcher::new()), spawn);
//! publisher.attach(&server);
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! server.accept(endpoint::tcp_incoming(listener));
//!
//! // The subscriber connects to it and wants every order in Europe.
//! let subscriber = Subscriber::new(SubscriberConfig::new());
//! let client = Endpoint::new(EndpointConfig::new(), subscriber.route(Dispatcher::new()), spawn);
//! subscriber.attach(&client);
//! client.connect(move || tcp::connect(addr));
//! while client.is_empty() {
//!     async_std::task::sleep(std::time::Duration::from_millis(5)).await;
//! }
//! assert_eq!(subscriber.subscribe("orders.eu.>").await?, 1);
//!
//! let order = HelloWorld { text: "order 1".into(), sequence: 1 };
//! publisher.publish("orders.us.created", &order).await?; // no one wants it: not sent
//! publisher.publish("orders.eu.created", &order).await?;
//! let (topic, message) = subscriber.messages().recv().await.unwrap();
//! assert_eq!(topic, "orders.eu.created");
//! assert_eq!(message.to_msg::<HelloWorld>()?, order);
//! client.close().await;
//! server.close().await;
//! # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
//! ```

mod publisher;
mod sublist;
mod subscriber;
mod topic;

use std::sync::Arc;

pub use publisher::{Published, Publisher, PublisherConfig, PublisherStats, SlowSubscriber};
pub use sublist::Sublist;
pub use subscriber::{Messages, Subscriber, SubscriberConfig};
pub use topic::{
    filter_matches, parse_filter, validate_topic, Element, TopicError, MAX_ELEMENTS, MAX_TOPIC_LEN,
};

use crate::endpoint::{LinkId, TargetId};
use crate::proto::pubsub::SubscribeError;

/// What went wrong with a publish/subscribe operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PubSubError {
    /// A topic breaks the grammar (see [`validate_topic`]).
    #[error("invalid topic: {0}")]
    InvalidTopic(TopicError),
    /// A filter breaks the grammar (see [`parse_filter`]).
    #[error("invalid filter: {0}")]
    InvalidFilter(TopicError),
    /// A publisher refused a subscription.
    #[error("{link} refused {filter:?}: {error:?} {message}")]
    Refused {
        /// The publisher's link.
        link: LinkId,
        /// The filter.
        filter: String,
        /// Why, as a code.
        error: SubscribeError,
        /// Why, for people.
        message: String,
    },
    /// A publisher did not answer in time ([`SubscriberConfig::with_ack_timeout`]).
    #[error("{link} did not answer in time")]
    Timeout {
        /// The publisher's link.
        link: LinkId,
    },
    /// The link closed before the answer came.
    #[error("link closed")]
    Closed,
}

impl From<TopicError> for PubSubError {
    fn from(e: TopicError) -> Self {
        // Filters are checked by their own functions first; a bare TopicError is a topic's.
        Self::InvalidTopic(e)
    }
}

/// Publish/subscribe's events, on the endpoint's [`events`](crate::endpoint::Endpoint::events)
/// as [`Event::PubSub`](crate::endpoint::Event::PubSub).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum PubSubEvent {
    /// Publisher: a subscriber's queue was full and messages for it are being dropped
    /// ([`SlowSubscriber::Drop`]). Sent at the first drop after a message went through;
    /// [`Publisher::dropped`] counts them all.
    Dropped {
        /// The subscriber's link.
        link: LinkId,
        /// Messages dropped for it so far.
        total: u64,
    },
    /// Publisher: a subscriber was disconnected for being too slow
    /// ([`SlowSubscriber::Disconnect`]).
    Disconnected {
        /// The subscriber's link.
        link: LinkId,
        /// Messages dropped with its queue.
        queued_messages: usize,
        /// Their bytes.
        queued_bytes: usize,
    },
    /// Subscriber: a link to a publisher came back after a drop; messages published
    /// meanwhile were not received.
    MayHaveMissed {
        /// The new link.
        link: LinkId,
        /// The publisher it goes to.
        target: TargetId,
    },
    /// Subscriber: every filter held was sent on a new link, and the publisher answered.
    Subscribed {
        /// The link.
        link: LinkId,
    },
    /// Subscriber: a publisher refused (or did not confirm) a filter sent on a new link.
    SubscribeFailed {
        /// The link.
        link: LinkId,
        /// The filter.
        filter: String,
        /// Why.
        error: Arc<PubSubError>,
    },
}
