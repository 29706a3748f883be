//! Publish/subscribe over loopback: 100 subscribers each get exactly what their filters ask
//! for, in the publisher's order; the three slow-subscriber policies; bad input and limits
//! (invalid filters, absurd numbers of subscriptions, a subscriber that never reads, one that
//! disconnects mid-message, a publisher that vanishes), each with a bounded outcome while a
//! well-behaved subscriber keeps getting its messages.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use connect::dispatch::Dispatcher;
use connect::endpoint::{self, Endpoint, EndpointConfig, Event, LinkId};
use connect::proto::example::HelloWorld;
use connect::proto::pubsub::{Publish, Subscribe, SubscribeAck, SubscribeError};
use connect::pubsub::{
    filter_matches, PubSubError, PubSubEvent, Publisher, PublisherConfig, SlowSubscriber,
    Subscriber, SubscriberConfig,
};
use connect::reliable::Backoff;
use connect::transport::tcp::{self, TcpConnection, TcpListener};
use futures::{AsyncWriteExt, StreamExt};
use support::within;

fn spawn(task: connect::transport::Task) {
    async_std::task::spawn(task);
}

struct Pub {
    publisher: Publisher,
    endpoint: Endpoint,
    events: endpoint::Events,
    addr: SocketAddr,
}

async fn publisher(config: PublisherConfig) -> Pub {
    let publisher = Publisher::new(config);
    let endpoint = Endpoint::new(
        EndpointConfig::new().with_close_timeout(Duration::from_secs(1)),
        publisher.route(Dispatcher::new()),
        spawn,
    );
    publisher.attach(&endpoint);
    let events = endpoint.events();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    endpoint.accept(endpoint::tcp_incoming(listener));
    Pub {
        publisher,
        endpoint,
        events,
        addr,
    }
}

struct Sub {
    subscriber: Subscriber,
    endpoint: Endpoint,
    events: endpoint::Events,
}

/// A subscriber endpoint with one link to `addr`, up.
async fn subscriber(addr: SocketAddr, backoff: Backoff) -> Sub {
    let subscriber = Subscriber::new(SubscriberConfig::new());
    let endpoint = Endpoint::new(
        EndpointConfig::new().with_backoff(backoff),
        subscriber.route(Dispatcher::new()),
        spawn,
    );
    subscriber.attach(&endpoint);
    let mut events = endpoint.events();
    endpoint.connect(move || tcp::connect(addr));
    next_matching(&mut events, |e| {
        matches!(e, Event::Joined { .. }).then_some(())
    })
    .await;
    Sub {
        subscriber,
        endpoint,
        events,
    }
}

fn fast() -> Backoff {
    Backoff::new()
        .with_initial(Duration::from_millis(5))
        .with_max(Duration::from_millis(50))
}

/// Waits for the first event `pick` takes, skipping the others.
async fn next_matching<T>(
    events: &mut endpoint::Events,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    within(30, "an event", async {
        loop {
            let event = events.next().await.expect("events end with the endpoint");
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    })
    .await
}

async fn joined(events: &mut endpoint::Events) -> LinkId {
    next_matching(events, |e| match e {
        Event::Joined { link, .. } => Some(*link),
        _ => None,
    })
    .await
}

fn tick(topic: &str, sequence: u64, len: usize) -> HelloWorld {
    HelloWorld {
        text: format!("{topic}:{}", "x".repeat(len)),
        sequence,
    }
}

/// A bare connection that subscribes to `filter` and reads the answer.
async fn raw_subscriber(addr: SocketAddr, filter: &str) -> TcpConnection {
    let mut conn = tcp::connect(addr).await.unwrap();
    conn.send_message(&Subscribe {
        request_id: 1,
        filter: filter.into(),
    })
    .await
    .unwrap();
    let ack: SubscribeAck = within(20, "ack", conn.recv_message())
        .await
        .unwrap()
        .unwrap();
    assert!(ack.subscribed);
    conn
}

/// Receives `count` messages on a Subscriber and checks they are `sequence`s in order.
async fn expect_sequences(subscriber: &Subscriber, sequences: impl IntoIterator<Item = u64>) {
    let mut messages = subscriber.messages();
    for want in sequences {
        let (_, any) = within(30, "a message", messages.recv()).await.unwrap();
        assert_eq!(any.to_msg::<HelloWorld>().unwrap().sequence, want);
    }
}

#[async_std::test]
async fn a_hundred_subscribers_get_exactly_what_they_asked_for_in_order() {
    let mut p = publisher(PublisherConfig::new()).await;
    let filters = ["ticks.>", "ticks.eu.*", "ticks.*.b", "other.x"];
    let mut subs = Vec::new();
    for i in 0..100 {
        let s = subscriber(p.addr, fast()).await;
        assert_eq!(s.subscriber.subscribe(filters[i % 4]).await.unwrap(), 1);
        subs.push(s);
    }
    for _ in 0..100 {
        joined(&mut p.events).await;
    }
    assert_eq!(p.publisher.subscribers(), 100);
    assert_eq!(p.publisher.subscriptions(), 100);

    let topics = [
        "ticks.eu.a",
        "ticks.eu.b",
        "ticks.us.b",
        "ticks.us",
        "nobody.here",
    ];
    let mut published = Vec::new();
    for sequence in 0..60u64 {
        let topic = topics[sequence as usize % topics.len()];
        let outcome = p
            .publisher
            .publish(topic, &tick(topic, sequence, 8))
            .await
            .unwrap();
        let want = filters.iter().filter(|f| filter_matches(f, topic)).count() * 25;
        assert_eq!(outcome.queued, want, "{topic}");
        published.push((topic, sequence));
    }
    for (i, s) in subs.iter().enumerate() {
        let wanted = published
            .iter()
            .filter(|(topic, _)| filter_matches(filters[i % 4], topic))
            .map(|(_, sequence)| *sequence);
        expect_sequences(&s.subscriber, wanted).await;
    }
    // Each subscriber's topics were those of its filter.
    for s in &subs {
        s.endpoint.close().await;
    }
    p.endpoint.close().await;
}

#[async_std::test]
async fn invalid_filters_and_absurd_numbers_of_subscriptions_are_refused() {
    let p = publisher(PublisherConfig::new().with_max_filters_per_link(16)).await;
    let good = subscriber(p.addr, fast()).await;
    assert_eq!(good.subscriber.subscribe("ok.>").await.unwrap(), 1);
    assert!(matches!(
        good.subscriber.subscribe("a..b").await,
        Err(PubSubError::InvalidFilter(_))
    ));

    let conn = tcp::connect(p.addr).await.unwrap();
    let (mut reader, mut writer) = conn.split();
    let too_long = "a".repeat(300);
    let invalid: Vec<String> = ["", "a..b", ".a", "a.", "a.>.b", "a*", "a b", &too_long]
        .map(String::from)
        .into();
    let count = invalid.len() as u64;
    let floods = 10_000u64;
    let sender = async_std::task::spawn(async move {
        for (i, filter) in invalid.iter().enumerate() {
            writer
                .feed_message(&Subscribe {
                    request_id: i as u64 + 1,
                    filter: filter.to_string(),
                })
                .await
                .unwrap();
        }
        writer
            .feed_message(&Subscribe {
                request_id: 0,
                filter: "x".into(),
            })
            .await
            .unwrap();
        for i in 0..floods {
            writer
                .feed_message(&Subscribe {
                    request_id: 1000 + i,
                    filter: format!("flood.{i}"),
                })
                .await
                .unwrap();
        }
        writer.flush().await.unwrap();
        writer
    });
    let mut codes = std::collections::HashMap::new();
    let mut subscribed = 0;
    for _ in 0..count + 1 + floods {
        let ack: SubscribeAck = within(30, "ack", reader.recv_message())
            .await
            .unwrap()
            .unwrap();
        subscribed += usize::from(ack.subscribed);
        *codes.entry(ack.error).or_insert(0u64) += 1;
    }
    let _writer = sender.await;
    assert_eq!(codes[&(SubscribeError::InvalidFilter as i32)], count);
    assert_eq!(codes[&(SubscribeError::InvalidRequest as i32)], 1);
    assert_eq!(
        codes[&(SubscribeError::TooManySubscriptions as i32)],
        floods - 16
    );
    assert_eq!(subscribed, 16);
    // 16 for the flooder, 1 for the well-behaved subscriber: nothing else is held.
    assert_eq!(p.publisher.subscriptions(), 17);

    p.publisher
        .publish("ok.go", &tick("ok.go", 1, 8))
        .await
        .unwrap();
    expect_sequences(&good.subscriber, [1]).await;
    assert!(matches!(
        p.publisher.publish("ok.*", &tick("", 1, 8)).await,
        Err(PubSubError::InvalidTopic(_))
    ));
    good.endpoint.close().await;
    p.endpoint.close().await;
}

/// A subscriber that never reads, and a well-behaved one, on a publisher with small queues.
/// Publishes 1 KiB messages, pacing on the good subscriber's queue only, until `done` says so
/// (at most `limit` messages); the good subscriber gets every one of them, in order.
async fn slow_subscriber_case(
    policy: SlowSubscriber,
    limit: u64,
    mut done: impl FnMut(&Publisher, LinkId) -> bool,
) -> (Pub, LinkId, TcpConnection, u64) {
    let mut p = publisher(
        PublisherConfig::new()
            .with_policy(policy)
            .with_queue(16, 64 << 10),
    )
    .await;
    let stalled = raw_subscriber(p.addr, "load.>").await;
    let stalled_link = joined(&mut p.events).await;
    let good = subscriber(p.addr, fast()).await;
    let good_link = joined(&mut p.events).await;
    good.subscriber.subscribe("load.>").await.unwrap();

    let reader = {
        let subscriber = good.subscriber.clone();
        async_std::task::spawn(async move {
            let mut messages = subscriber.messages();
            let mut next = 0;
            while let Some((_, any)) = messages.recv().await {
                let sequence = any.to_msg::<HelloWorld>().unwrap().sequence;
                assert_eq!(sequence, next, "the good subscriber's messages in order");
                next += 1;
                if sequence == u64::MAX {
                    break;
                }
            }
        })
    };
    let mut sent = 0;
    within(120, "the slow subscriber's outcome", async {
        while sent < limit && !done(&p.publisher, stalled_link) {
            while p.publisher.queued(good_link).0 > 8 {
                async_std::task::sleep(Duration::from_millis(1)).await;
            }
            let outcome = p
                .publisher
                .publish("load.x", &tick("load.x", sent, 1024))
                .await
                .unwrap();
            assert!(outcome.queued >= 1, "the good subscriber is never dropped");
            sent += 1;
        }
    })
    .await;
    assert!(
        sent < limit,
        "{policy:?}: no outcome after {limit} messages"
    );
    // The publisher holds at most its bound for the stalled subscriber.
    let (messages, bytes) = p.publisher.queued(stalled_link);
    assert!(
        messages <= 16 && bytes <= (64 << 10) + 2048,
        "{messages} {bytes}"
    );
    drop(reader);
    let _ = good;
    (p, stalled_link, stalled, sent)
}

#[async_std::test]
async fn drop_policy_drops_for_the_slow_subscriber_only_and_says_so() {
    let (mut p, stalled, _conn, sent) =
        slow_subscriber_case(SlowSubscriber::Drop, 200_000, |publisher, stalled| {
            publisher.dropped(stalled) >= 100
        })
        .await;
    let total = next_matching(&mut p.events, |e| match e {
        Event::PubSub(PubSubEvent::Dropped { link, total }) if *link == stalled => Some(*total),
        _ => None,
    })
    .await;
    assert_eq!(total, 1, "one event at the first drop");
    assert!(p.publisher.dropped(stalled) >= 100);
    // The publisher's snapshot counts the same drops (only this link was dropped for).
    let stats = p.publisher.stats();
    assert_eq!(stats.dropped, p.publisher.dropped(stalled), "{stats:?}");
    assert_eq!(stats.disconnected, 0, "{stats:?}");
    assert!(sent > 100);
    p.endpoint.abort();
}

#[async_std::test]
async fn disconnect_policy_cuts_the_slow_subscriber_and_the_others_go_on() {
    let (mut p, stalled, _conn, _) =
        slow_subscriber_case(SlowSubscriber::Disconnect, 200_000, |publisher, _| {
            publisher.subscribers() < 2
        })
        .await;
    let link = next_matching(&mut p.events, |e| match e {
        Event::PubSub(PubSubEvent::Disconnected { link, .. }) => Some(*link),
        _ => None,
    })
    .await;
    assert_eq!(link, stalled);
    let (left, reason) = next_matching(&mut p.events, |e| match e {
        Event::Left { link, reason } => Some((*link, reason.clone())),
        _ => None,
    })
    .await;
    assert_eq!(left, stalled);
    assert!(reason.is_err());
    assert_eq!(p.publisher.subscribers(), 1);
    assert_eq!(p.endpoint.len(), 1);
    let stats = p.publisher.stats();
    assert_eq!((stats.disconnected, stats.dropped), (1, 0), "{stats:?}");
    let endpoint = p.endpoint.stats();
    assert!(endpoint.left_with_error >= 1, "{endpoint:?}");
    p.endpoint.abort();
}

#[async_std::test]
async fn wait_policy_holds_the_publisher_and_loses_nothing() {
    let mut p = publisher(
        PublisherConfig::new()
            .with_policy(SlowSubscriber::Wait)
            .with_queue(16, 64 << 10),
    )
    .await;
    let mut stalled = raw_subscriber(p.addr, "load.>").await;
    let stalled_link = joined(&mut p.events).await;
    // Far more than the socket buffers, the link's queue and ours hold together.
    const COUNT: u64 = 3000;
    let published = Arc::new(AtomicU64::new(0));
    let publishing = {
        let publisher = p.publisher.clone();
        let published = published.clone();
        async_std::task::spawn(async move {
            for sequence in 0..COUNT {
                let outcome = publisher
                    .publish("load.x", &tick("load.x", sequence, 16 << 10))
                    .await
                    .unwrap();
                assert_eq!(outcome.queued, 1);
                published.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // The queue fills and the publisher waits: it cannot get ahead of the subscriber.
    within(60, "a full queue", async {
        while p.publisher.queued(stalled_link).1 < (64 << 10) - (17 << 10) {
            async_std::task::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(
        published.load(Ordering::Relaxed) < COUNT,
        "the publisher waits"
    );
    assert_eq!(p.publisher.dropped(stalled_link), 0);
    // Now the subscriber reads: everything arrives, in order.
    for want in 0..COUNT {
        let any = within(30, "a message", stalled.recv())
            .await
            .unwrap()
            .unwrap();
        let publish: Publish = any.to_msg().unwrap();
        assert_eq!(publish.topic, "load.x");
        let hello: HelloWorld = publish.message.unwrap().to_msg().unwrap();
        assert_eq!(hello.sequence, want);
    }
    within(30, "the publisher", publishing).await;
    assert_eq!(p.publisher.dropped(stalled_link), 0);
    p.endpoint.close().await;
}

/// `close` is graceful for what the publisher accepted: messages still in the per-subscriber
/// queue when it is called (the subscriber was not reading) go out before the link closes.
#[async_std::test]
async fn close_hands_over_what_the_subscriber_queue_holds() {
    let publisher = Publisher::new(
        PublisherConfig::new()
            .with_policy(SlowSubscriber::Wait)
            .with_queue(64, 4 << 20),
    );
    let endpoint = Endpoint::new(
        EndpointConfig::new().with_close_timeout(Duration::from_secs(60)),
        publisher.route(Dispatcher::new()),
        spawn,
    );
    publisher.attach(&endpoint);
    let mut events = endpoint.events();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    endpoint.accept(endpoint::tcp_incoming(listener));
    let mut raw = raw_subscriber(addr, "load.>").await;
    let link = joined(&mut events).await;

    // More than the socket buffers and the link's own queue hold: the publisher waits, with
    // the subscriber's queue full, until the close.
    const COUNT: u64 = 2000;
    let publishing = {
        let publisher = publisher.clone();
        async_std::task::spawn(async move {
            let mut accepted = 0;
            for sequence in 0..COUNT {
                let outcome = publisher
                    .publish("load.x", &tick("load.x", sequence, 16 << 10))
                    .await
                    .unwrap();
                accepted += outcome.queued as u64;
            }
            accepted
        })
    };
    within(60, "a full queue", async {
        while publisher.queued(link).0 < 64 {
            async_std::task::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    let closing = async_std::task::spawn(async move { endpoint.close().await });

    let mut received = 0;
    while let Some(any) = within(60, "a message", raw.recv()).await.unwrap() {
        let publish: Publish = any.to_msg().unwrap();
        let hello: HelloWorld = publish.message.unwrap().to_msg().unwrap();
        assert_eq!(hello.sequence, received, "in order, none missing");
        received += 1;
    }
    let accepted = within(60, "the publisher", publishing).await;
    assert!((64..COUNT).contains(&accepted), "{accepted} accepted");
    assert_eq!(received, accepted, "every accepted message arrived");
    drop(raw);
    within(60, "close", closing).await;
}

#[async_std::test]
async fn a_subscriber_that_disconnects_mid_message_leaves_alone() {
    let mut p = publisher(PublisherConfig::new()).await;
    let good = subscriber(p.addr, fast()).await;
    let good_link = joined(&mut p.events).await;
    good.subscriber.subscribe("t.>").await.unwrap();

    // Subscribed, then half a frame, then gone.
    let conn = raw_subscriber(p.addr, "t.>").await;
    let cut_link = joined(&mut p.events).await;
    let mut stream = conn.into_inner();
    stream
        .write_all(&[0x40, 0x0a, 0x2e, b't', b'y'])
        .await
        .unwrap();
    drop(stream);
    let (left, reason) = next_matching(&mut p.events, |e| match e {
        Event::Left { link, reason } => Some((*link, reason.clone())),
        _ => None,
    })
    .await;
    assert_eq!(left, cut_link);
    assert!(reason.is_err(), "a truncated frame is an error");
    assert_eq!(p.publisher.subscriptions(), 1);
    assert_eq!(p.endpoint.len(), 1);
    assert!(p.endpoint.link(good_link).is_some());

    for sequence in 0..10 {
        p.publisher
            .publish("t.a", &tick("t.a", sequence, 8))
            .await
            .unwrap();
    }
    expect_sequences(&good.subscriber, 0..10).await;
    good.endpoint.close().await;
    p.endpoint.close().await;
}

#[async_std::test]
async fn a_publisher_that_vanishes_is_reconnected_resubscribed_or_given_up() {
    let mut p = publisher(PublisherConfig::new()).await;
    let backoff = fast().with_max_attempts(Some(3));
    let mut s = subscriber(p.addr, backoff).await;
    joined(&mut p.events).await;
    s.subscriber.subscribe("news.*").await.unwrap();
    p.publisher
        .publish("news.a", &tick("news.a", 0, 8))
        .await
        .unwrap();
    expect_sequences(&s.subscriber, [0]).await;

    // The publisher drops every link: the subscriber comes back, subscribes again by itself,
    // and says it may have missed messages.
    for link in p.endpoint.links() {
        link.abort();
    }
    next_matching(&mut s.events, |e| {
        matches!(e, Event::PubSub(PubSubEvent::MayHaveMissed { .. })).then_some(())
    })
    .await;
    next_matching(&mut s.events, |e| {
        matches!(e, Event::PubSub(PubSubEvent::Subscribed { .. })).then_some(())
    })
    .await;
    assert_eq!(p.publisher.subscriptions(), 1);
    p.publisher
        .publish("news.b", &tick("news.b", 1, 8))
        .await
        .unwrap();
    expect_sequences(&s.subscriber, [1]).await;

    // The publisher is gone for good: the link leaves, attempts fail, the target is given up.
    p.endpoint.close().await;
    drop(p);
    next_matching(&mut s.events, |e| {
        matches!(e, Event::Left { .. }).then_some(())
    })
    .await;
    next_matching(&mut s.events, |e| {
        matches!(e, Event::GaveUp { .. }).then_some(())
    })
    .await;
    assert!(s.endpoint.is_empty());
    assert_eq!(s.subscriber.filters(), ["news.*"]);
}

/// The byte-level examples of proto/PROTOCOL.md, section 12, are what our encoder writes.
#[test]
fn protocol_examples_match_the_encoder() {
    use connect::codec::Codec;
    use connect::proto::pubsub::Unsubscribe;
    use prost::Message;
    fn frame<M: prost::Name + Message>(msg: &M) -> String {
        let any = connect::prost_types::Any::from_msg(msg).unwrap();
        let mut buf = bytes::BytesMut::new();
        Codec::default().encode(&any, &mut buf).unwrap();
        buf.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proto/PROTOCOL.md")).unwrap();
    let doc = doc.split_whitespace().collect::<Vec<_>>().join(" ");
    let frames = [
        frame(&Subscribe {
            request_id: 1,
            filter: "orders.*.created".into(),
        }),
        frame(&SubscribeAck {
            request_id: 1,
            subscribed: true,
            ..SubscribeAck::default()
        }),
        frame(&SubscribeAck {
            request_id: 2,
            subscribed: false,
            error: SubscribeError::InvalidFilter as i32,
            message: "invalid filter".into(),
        }),
        frame(&Unsubscribe {
            request_id: 3,
            filter: "orders.*.created".into(),
        }),
        frame(&Publish {
            topic: "orders.eu.created".into(),
            message: Some(
                connect::prost_types::Any::from_msg(&HelloWorld {
                    text: "hi".into(),
                    sequence: 1,
                })
                .unwrap(),
            ),
        }),
    ];
    for hex in &frames {
        println!("{hex}");
    }
    for hex in frames {
        assert!(doc.contains(&hex), "PROTOCOL.md lacks {hex}");
    }
}

/// Delivered to typed handlers: the handler sees the topic and the publisher's link.
#[async_std::test]
async fn typed_handlers_see_the_topic_and_the_link() {
    use connect::dispatch::Context;
    let mut p = publisher(PublisherConfig::new()).await;
    let (tx, rx) = async_channel::bounded(16);
    let handlers = Dispatcher::new().on(move |hello: HelloWorld, cx: Context| {
        let tx = tx.clone();
        async move {
            let topic = cx.topic().map(str::to_owned);
            tx.send((topic, cx.link().is_some(), hello.sequence))
                .await
                .ok();
            Ok::<_, connect::Error>(())
        }
    });
    let subscriber = Subscriber::new(SubscriberConfig::new().with_handlers(handlers));
    let endpoint = Endpoint::new(
        EndpointConfig::new(),
        subscriber.route(Dispatcher::new()),
        spawn,
    );
    subscriber.attach(&endpoint);
    let mut events = endpoint.events();
    endpoint.connect({
        let addr = p.addr;
        move || tcp::connect(addr)
    });
    joined(&mut events).await;
    joined(&mut p.events).await;
    subscriber.subscribe("a.*").await.unwrap();
    for (sequence, topic) in ["a.x", "b.x", "a.y"].into_iter().enumerate() {
        p.publisher
            .publish(topic, &tick(topic, sequence as u64, 1))
            .await
            .unwrap();
    }
    for want in [("a.x", 0), ("a.y", 2)] {
        let (topic, on_link, sequence) = within(20, "a message", rx.recv()).await.unwrap();
        assert_eq!((topic.as_deref(), sequence), (Some(want.0), want.1));
        assert!(on_link);
    }
    assert_eq!(subscriber.unsubscribe("a.*").await.unwrap(), 1);
    assert_eq!(p.publisher.subscriptions(), 0);
    endpoint.close().await;
    p.endpoint.close().await;
}
