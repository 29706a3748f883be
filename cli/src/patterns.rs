//! The messaging patterns from the command line: `call` (request/reply, PROTOCOL.md section 11),
//! `sub` and `pub` (publish/subscribe, section 12), on any link `Link` opens.

use std::time::Duration;

use anyhow::{bail, Context as _};
use connect::dispatch::Dispatcher;
use connect::endpoint::{Endpoint, EndpointConfig, Event};
use connect::pubsub::{Publisher, PublisherConfig, Subscriber, SubscriberConfig};
use connect::rpc::{CallError, CallOptions};
use futures::{FutureExt as _, StreamExt as _};
use prost_types::Any;

use crate::link::{self, Link, LinkOptions, Target};
use crate::schema::Schema;

/// Calls the peer once per request, one after the other; prints each reply (type, size, JSON).
/// Fails (after the other calls) if any call did.
pub async fn call(
    target: &Target,
    options: &LinkOptions,
    schema: &Schema,
    requests: Vec<Any>,
    call_options: CallOptions,
) -> anyhow::Result<()> {
    let link = Link::connect(target, options).await?;
    // No handlers: a request the peer sends us is answered NOT_FOUND.
    let (peer, driver) = link.into_peer(Dispatcher::new());
    async_std::task::spawn(driver);
    let mut failed = 0;
    let total = requests.len();
    for (n, request) in requests.into_iter().enumerate() {
        match peer.call_any(request, call_options.clone()).await {
            Ok(reply) => println!("{}", schema.describe(&reply)),
            Err(e) => {
                failed += 1;
                eprintln!("call {}: {}", n + 1, explain(&e));
                if let CallError::Closed(_) = e {
                    break;
                }
            }
        }
    }
    let _ = peer.close().await;
    if failed > 0 {
        bail!("{failed} of {total} calls failed");
    }
    Ok(())
}

/// What a failed call means, and what to try.
fn explain(e: &CallError) -> String {
    use connect::rpc::StatusCode;
    let hint = match e.code() {
        StatusCode::NotFound => " (the peer has no handler for this request type; check --type)",
        StatusCode::DeadlineExceeded => " (raise --deadline?)",
        StatusCode::Unavailable => " (is the peer a request/reply responder?)",
        _ => "",
    };
    match e {
        // It names its code already.
        CallError::Status(_) => format!("{e}{hint}"),
        _ => format!("{}: {e}{hint}", e.code().as_str_name()),
    }
}

fn endpoint(dispatcher: Dispatcher) -> Endpoint {
    Endpoint::new(EndpointConfig::new(), dispatcher, |task| {
        async_std::task::spawn(task);
    })
}

/// Connects to `target` and adds the link to `endpoint`, or, with `listen`, accepts links on
/// `target` (printing `listening on ADDR`) and adds each, in the background.
async fn links(
    endpoint: &Endpoint,
    target: &Target,
    options: &LinkOptions,
    listen: bool,
) -> anyhow::Result<()> {
    if !listen {
        let link = Link::connect(target, options).await?;
        link.join(endpoint).await?;
        return Ok(());
    }
    let (target, options, endpoint) = (target.clone(), options.clone(), endpoint.clone());
    async_std::task::spawn(async move {
        let serve = move |link: Link, peer: String| {
            let endpoint = endpoint.clone();
            async move {
                if let Err(e) = link.join(&endpoint).await {
                    eprintln!("{peer}: {e}");
                }
            }
        };
        if let Err(e) = link::listen(&target, &options, serve).await {
            eprintln!("error: {}", crate::chain(&e));
            std::process::exit(1);
        }
    });
    Ok(())
}

/// Subscribes to `filters` and prints every message as one JSON line with its topic, until
/// `count` messages came or (when connecting) the link ends.
pub async fn sub(
    target: &Target,
    options: &LinkOptions,
    schema: &Schema,
    filters: &[String],
    count: Option<u64>,
    listen: bool,
) -> anyhow::Result<()> {
    for filter in filters {
        connect::pubsub::parse_filter(filter).with_context(|| {
            format!("{filter:?} is not a valid filter (e.g. orders.*.created, orders.>)")
        })?;
    }
    let subscriber = Subscriber::new(SubscriberConfig::new());
    let endpoint = endpoint(subscriber.route(Dispatcher::new()));
    subscriber.attach(&endpoint);
    let mut events = endpoint.events();
    let mut messages = subscriber.messages();
    links(&endpoint, target, options, listen).await?;
    // When connecting, the link is there: each Subscribe is answered before we go on. When
    // listening, the filters go to every link as it joins.
    for filter in filters {
        subscriber
            .subscribe(filter)
            .await
            .with_context(|| format!("subscribing to {filter:?} failed"))?;
    }
    let mut received = 0;
    while count.is_none_or(|n| received < n) {
        futures::select! {
            message = messages.recv().fuse() => {
                let Some((topic, any)) = message else { break };
                println!("{}", json_line(schema, &topic, &any));
                received += 1;
            }
            event = events.next().fuse() => match event {
                Some(Event::Left { reason, .. }) if !listen => {
                    endpoint.abort();
                    let how = match reason {
                        Ok(()) => "the publisher closed the link".to_string(),
                        Err(e) => format!("the link to the publisher failed: {e}"),
                    };
                    bail!("{how} after {received} messages");
                }
                Some(Event::PubSub(connect::pubsub::PubSubEvent::SubscribeFailed { filter, error, .. })) => {
                    eprintln!("subscribing to {filter:?} failed: {error}");
                }
                Some(_) => {}
                None => break,
            },
        }
    }
    endpoint.close().await;
    Ok(())
}

/// `{"topic":…,"type":…,"message":…}`, with the message in the protobuf JSON mapping (or, for
/// a type the schema does not know, `"value_hex"` instead of `"message"`).
fn json_line(schema: &Schema, topic: &str, any: &Any) -> String {
    let string = |text: &str| serde_json::Value::from(text).to_string();
    let name = connect::codec::type_name(&any.type_url);
    let body = match schema.to_json(any) {
        Ok(Some(json)) => format!("\"message\":{json}"),
        Ok(None) => format!("\"value_hex\":\"{}\"", crate::schema::hex(&any.value)),
        Err(e) => format!(
            "\"error\":{},\"value_hex\":\"{}\"",
            string(&crate::chain(&e)),
            crate::schema::hex(&any.value)
        ),
    };
    // Built by hand to keep the keys in this order (topic first, for people reading along).
    format!(
        "{{\"topic\":{},\"type\":{},{body}}}",
        string(topic),
        string(name)
    )
}

/// Where `pub` takes its messages from: one, or JSON lines from standard input.
pub enum Messages {
    /// `--json`.
    One(Any),
    /// Standard input, one message a line, packed as `type_name`.
    Stdin { type_name: String },
}

/// Waits for `subscribers` subscribed links (at most `wait`), then publishes every message on
/// `topic` and closes gracefully (what was queued goes out first).
#[allow(clippy::too_many_arguments)]
pub async fn publish(
    target: &Target,
    options: &LinkOptions,
    schema: &Schema,
    topic: &str,
    messages: Messages,
    subscribers: usize,
    wait: Duration,
    listen: bool,
) -> anyhow::Result<()> {
    connect::pubsub::validate_topic(topic)
        .with_context(|| format!("{topic:?} is not a valid topic (e.g. orders.eu.created)"))?;
    let publisher = Publisher::new(PublisherConfig::new());
    let endpoint = endpoint(publisher.route(Dispatcher::new()));
    publisher.attach(&endpoint);
    links(&endpoint, target, options, listen).await?;

    let started = std::time::Instant::now();
    while publisher.subscribers() < subscribers {
        if started.elapsed() >= wait {
            endpoint.abort();
            bail!(
                "{} of {subscribers} subscribers after {} ms; are they connected and subscribed \
                 to a filter matching {topic:?}? (--subscribers, --wait-ms)",
                publisher.subscribers(),
                wait.as_millis()
            );
        }
        async_std::task::sleep(Duration::from_millis(10)).await;
    }

    let publish_one = async |any: Any| -> anyhow::Result<()> {
        let describe = schema.describe(&any);
        let outcome = publisher.publish_any(topic, any).await?;
        let plural = if outcome.queued == 1 { "" } else { "s" };
        println!(
            "{topic} {describe} -> {} subscriber{plural}",
            outcome.queued
        );
        Ok(())
    };
    let result = match messages {
        Messages::One(any) => publish_one(any).await,
        Messages::Stdin { type_name } => {
            use async_std::io::prelude::BufReadExt as _;
            let mut lines = async_std::io::BufReader::new(async_std::io::stdin()).lines();
            let mut n = 0;
            let mut result = Ok(());
            while let Some(line) = lines.next().await {
                n += 1;
                let line = match line.context("cannot read standard input") {
                    Ok(line) => line,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                };
                if line.trim().is_empty() {
                    continue;
                }
                let packed = schema
                    .pack(&type_name, &line)
                    .with_context(|| format!("standard input, line {n}"));
                if let Err(e) = match packed {
                    Ok(any) => publish_one(any).await,
                    Err(e) => Err(e),
                } {
                    result = Err(e);
                    break;
                }
            }
            result
        }
    };
    endpoint.close().await;
    result
}

/// Parses a deadline: `500ms`, `5s`, `2m`, or a number of milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "ms"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: not a duration (try 500ms, 5s, 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// `KEY=VALUE`.
pub fn parse_metadata(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?}: metadata is KEY=VALUE"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_metadata_parse() {
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3h").is_err());
        assert_eq!(
            parse_metadata("user=ada=x"),
            Ok(("user".into(), "ada=x".into()))
        );
        assert!(parse_metadata("user").is_err());
    }
}
