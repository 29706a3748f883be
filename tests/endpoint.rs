//! An `Endpoint` owns many links: accepted and connected ones share one dispatcher whose
//! handlers see the link id; links joining, leaving, reconnecting and failing are events; the
//! number of links is bounded; a target whose attempts run out is given up.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use connect::dispatch::{Context, Dispatcher, Reply};
use connect::endpoint::{self, Endpoint, EndpointConfig, Event, LinkId, Origin};
use connect::proto::example::HelloWorld;
use connect::reliable::Backoff;
use connect::session::SessionConfig;
use connect::transport::tcp::{self, TcpListener};
use futures::{AsyncWriteExt, StreamExt};
use support::within;

fn spawn(task: connect::transport::Task) {
    async_std::task::spawn(task);
}

/// Answers each HelloWorld with the id of the link it came on, as text.
fn link_echo() -> Dispatcher {
    Dispatcher::new().on(|hello: HelloWorld, cx: Context| async move {
        let link = cx.link().map_or(0, LinkId::get);
        Ok::<_, connect::Error>(Reply::message(&HelloWorld {
            text: link.to_string(),
            ..hello
        }))
    })
}

/// Waits for the first event `pick` takes, skipping the others.
async fn next_matching<T>(
    events: &mut endpoint::Events,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    within(20, "an event", async {
        loop {
            let event = events.next().await.expect("events end with the endpoint");
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    })
    .await
}

async fn server(config: EndpointConfig) -> (Endpoint, std::net::SocketAddr) {
    let endpoint = Endpoint::new(config, link_echo(), spawn);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    endpoint.accept(endpoint::tcp_incoming(listener));
    (endpoint, addr)
}

/// A client endpoint that forwards every answer to a channel.
fn client(config: EndpointConfig) -> (Endpoint, async_channel::Receiver<(LinkId, String)>) {
    let (tx, rx) = async_channel::bounded(1024);
    let dispatcher = Dispatcher::new().on(move |hello: HelloWorld, cx: Context| {
        let tx = tx.clone();
        async move {
            tx.send((cx.link().expect("endpoint link"), hello.text))
                .await
                .ok();
            Ok::<_, connect::Error>(())
        }
    });
    (Endpoint::new(config, dispatcher, spawn), rx)
}

#[async_std::test]
async fn many_links_share_one_dispatcher_and_handlers_see_their_link() {
    let (server, addr) = server(EndpointConfig::new()).await;
    let mut server_events = server.events();
    let (client, answers) = client(EndpointConfig::new());
    let mut events = client.events();
    let targets: Vec<_> = (0..5)
        .map(|_| client.connect(move || tcp::connect(addr)))
        .collect();

    let mut joined = HashSet::new();
    while joined.len() < targets.len() {
        let (link, origin) = next_matching(&mut events, |e| match e {
            Event::Joined { link, origin } => Some((*link, *origin)),
            _ => None,
        })
        .await;
        assert!(matches!(
            origin,
            Origin::Connected {
                reconnect: false,
                ..
            }
        ));
        joined.insert(link);
    }
    let mut accepted = HashSet::new();
    while accepted.len() < targets.len() {
        accepted.insert(
            next_matching(&mut server_events, |e| match e {
                Event::Joined {
                    link,
                    origin: Origin::Accepted,
                } => Some(*link),
                _ => None,
            })
            .await,
        );
    }
    assert_eq!(server.len(), 5);

    // Every client link asks; the server's answer names the server link it came on, and the
    // client's handler sees the client link.
    for link in client.links() {
        link.peer()
            .send_message(&HelloWorld {
                text: "?".into(),
                sequence: link.id().get(),
            })
            .await
            .unwrap();
    }
    let mut server_links = HashSet::new();
    let mut client_links = HashSet::new();
    for _ in 0..5 {
        let (link, text) = within(20, "an answer", answers.recv()).await.unwrap();
        client_links.insert(link);
        server_links.insert(LinkId::get(
            accepted
                .iter()
                .copied()
                .find(|id| id.get().to_string() == text)
                .expect("a server link id"),
        ));
    }
    assert_eq!(client_links, joined);
    assert_eq!(server_links.len(), 5);

    client.close().await;
    for _ in 0..5 {
        let reason = next_matching(&mut server_events, |e| match e {
            Event::Left { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .await;
        assert!(reason.is_ok(), "a graceful close: {reason:?}");
    }
    assert!(server.is_empty());
    server.close().await;
}

#[async_std::test]
async fn a_dropped_link_reconnects_and_says_so() {
    let (server, addr) = server(EndpointConfig::new()).await;
    let mut server_events = server.events();
    let backoff = Backoff::new()
        .with_initial(Duration::from_millis(5))
        .with_max(Duration::from_millis(50));
    let (client, _answers) = client(EndpointConfig::new().with_backoff(backoff));
    let mut events = client.events();
    let target = client.connect(move || tcp::connect(addr));
    let first = next_matching(&mut events, |e| match e {
        Event::Joined { link, .. } => Some(*link),
        _ => None,
    })
    .await;
    next_matching(&mut server_events, |e| {
        matches!(e, Event::Joined { .. }).then_some(())
    })
    .await;

    // The server cuts the link: the client sees it leave, then a new link to the same target.
    for link in server.links() {
        link.abort();
    }
    let left = next_matching(&mut events, |e| match e {
        Event::Left { link, .. } => Some(*link),
        _ => None,
    })
    .await;
    assert_eq!(left, first);
    let (attempt, _) = next_matching(&mut events, |e| match e {
        Event::Reconnecting {
            target: t,
            attempt,
            delay,
        } if *t == target => Some((*attempt, *delay)),
        _ => None,
    })
    .await;
    assert_eq!(attempt, 1);
    let (second, origin) = next_matching(&mut events, |e| match e {
        Event::Joined { link, origin } => Some((*link, *origin)),
        _ => None,
    })
    .await;
    assert_ne!(second, first);
    assert_eq!(
        origin,
        Origin::Connected {
            target,
            reconnect: true
        }
    );
    client.close().await;
    server.close().await;
}

#[async_std::test]
async fn a_target_is_given_up_after_its_attempts() {
    // A port nothing listens on: bound, read back, closed.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let backoff = Backoff::new()
        .with_initial(Duration::from_millis(1))
        .with_max(Duration::from_millis(5))
        .with_max_attempts(Some(3));
    let (client, _answers) = client(EndpointConfig::new().with_backoff(backoff));
    let mut events = client.events();
    let target = client.connect(move || tcp::connect(addr));
    let mut failures = Vec::new();
    let gave_up = next_matching(&mut events, |e| match e {
        Event::ConnectFailed { attempt, .. } => {
            failures.push(*attempt);
            None
        }
        Event::GaveUp { target } => Some(*target),
        _ => None,
    })
    .await;
    assert_eq!(gave_up, target);
    assert_eq!(failures, [1, 2, 3]);
    assert!(client.is_empty());
}

#[async_std::test]
async fn links_are_bounded_and_a_freed_slot_is_taken_again() {
    let (server, addr) = server(EndpointConfig::new().with_max_links(2)).await;
    let mut server_events = server.events();
    let (client, _answers) = client(EndpointConfig::new());
    let mut events = client.events();
    for _ in 0..3 {
        client.connect(move || tcp::connect(addr));
    }
    // The client connects all three (its TCP connects complete in the kernel's backlog), the
    // server takes two.
    for _ in 0..2 {
        next_matching(&mut server_events, |e| {
            matches!(e, Event::Joined { .. }).then_some(())
        })
        .await;
    }
    for _ in 0..3 {
        next_matching(&mut events, |e| {
            matches!(e, Event::Joined { .. }).then_some(())
        })
        .await;
    }
    assert_eq!(server.len(), 2);
    // One server link leaves: the waiting connection is accepted.
    let first = server.links()[0].clone();
    first.abort();
    let third = next_matching(&mut server_events, |e| match e {
        Event::Joined { link, .. } => Some(*link),
        _ => None,
    })
    .await;
    assert!(third > first.id());
    assert_eq!(server.len(), 2);
    client.close().await;
    server.close().await;
}

#[async_std::test]
async fn sessions_run_underneath_and_failed_handshakes_are_events() {
    let config = EndpointConfig::new().with_session(SessionConfig::new());
    let seen = async_channel::bounded(1);
    let tx = seen.0.clone();
    let dispatcher = Dispatcher::new().on(move |hello: HelloWorld, cx: Context| {
        let tx = tx.clone();
        async move {
            tx.send((hello.sequence, cx.session().is_some())).await.ok();
            Ok::<_, connect::Error>(())
        }
    });
    let server = Endpoint::new(config.clone(), dispatcher, spawn);
    let mut server_events = server.events();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    server.accept(endpoint::tcp_incoming(listener));

    // A client that speaks no session: a failed handshake, reported, the listener goes on.
    let mut raw = async_net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"\x05hello").await.unwrap();
    let error = next_matching(&mut server_events, |e| match e {
        Event::AcceptFailed { error } => Some(error.clone()),
        _ => None,
    })
    .await;
    assert!(!error.to_string().is_empty());

    let (client, _answers) = client(config);
    let mut events = client.events();
    client.connect(move || tcp::connect(addr));
    let link = next_matching(&mut events, |e| match e {
        Event::Joined { link, .. } => Some(*link),
        _ => None,
    })
    .await;
    client
        .link(link)
        .unwrap()
        .send_message(&HelloWorld {
            text: "s".into(),
            sequence: 7,
        })
        .await
        .unwrap();
    assert_eq!(
        within(20, "the message", seen.1.recv()).await.unwrap(),
        (7, true)
    );
    client.close().await;
    server.close().await;
}
