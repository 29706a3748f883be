//! `connect`: a command-line tool for connect peers. Listen and print every frame, send
//! messages written as JSON, decode captures, and measure an echo server.
//!
//! Messages are shown and written in the protobuf JSON mapping, using .proto files given with
//! `--proto` (compiled at run time, no protoc needed) plus the well-known types and connect's
//! own messages, which are built in.
//!
//! Exit codes: 0 success, 1 failure (network, protocol, bad input), 2 usage error.

mod bench;
mod link;
mod metrics;
mod patterns;
mod schema;
mod tunnel;

use std::io::{BufRead as _, IsTerminal as _, Read as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::BytesMut;
use clap::{Args, Parser, Subcommand};
use futures::FutureExt as _;

use crate::link::{Link, LinkOptions, Target};
use crate::schema::Schema;

#[derive(Parser)]
#[command(
    name = "connect",
    version,
    about = "Talk to connect peers: listen, send, call, sub, pub, decode, bench, tunnel",
    after_help = "Examples:
  connect listen 127.0.0.1:7878 --echo
  connect send 127.0.0.1:7878 --type connect.example.v1.HelloWorld --json '{\"text\":\"hi\"}'
  connect send tls://localhost:7879 --ca ca.pem --proto shop.proto --type shop.v1.Order < orders.jsonl
  connect call 127.0.0.1:7879 --type connect.example.v1.Add --json '{\"a\":2,\"b\":3}'
  connect sub 127.0.0.1:7879 'ticks.>'
  connect pub 127.0.0.1:7880 orders.eu.created --type shop.v1.Order --proto shop.proto < orders.jsonl
  connect send ws://127.0.0.1:8080/connect --session --type connect.example.v1.HelloWorld --json '{}'
  connect decode capture.bin
  connect bench 127.0.0.1:7878

Addresses: [tcp://]HOST:PORT, tls://HOST:PORT (or --tls), ws://HOST:PORT[/PATH] and
wss://HOST:PORT[/PATH] (WebSocket, path /connect by default), sctp://HOST:PORT (built with
--features sctp)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone, Debug, Default)]
struct SchemaOptions {
    /// A .proto file defining your message types (repeatable); compiled at run time.
    #[arg(long = "proto", value_name = "FILE", global = true)]
    protos: Vec<PathBuf>,
    /// A directory imports are resolved against (repeatable).
    #[arg(long = "include", short = 'I', value_name = "DIR", global = true)]
    includes: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Accept connections and print every frame (type, size, JSON body).
    #[command(after_help = "Examples:
  connect listen 127.0.0.1:7878
  connect listen 127.0.0.1:0 --echo --proto shop.proto
  connect listen tls://127.0.0.1:7879 --cert server.pem --key server.key --user alice --password pw

The first line is `listening on IP:PORT` (the real port when ADDR has port 0); then one line per
frame: `PEER TYPE (N bytes) JSON`. With --metrics, every SECS seconds (default 5) one
`metrics PEER frames_in=N bytes_in=N frames_out=N bytes_out=N ...` line per open link and a
`metrics total links_open=N links_closed=N ...` line.")]
    Listen {
        /// Where to listen: [tcp://|tls://|ws://|wss://]HOST:PORT[/PATH].
        addr: String,
        /// Send every frame back to its sender.
        #[arg(long)]
        echo: bool,
        /// Exit after this many frames (from all connections together).
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Print each link's counters (frames, bytes, RTT, ...) and the totals every SECS
        /// seconds (default 5).
        #[arg(long, value_name = "SECS", num_args = 0..=1, require_equals = true,
              default_missing_value = "5", value_parser = parse_interval)]
        metrics: Option<Duration>,
        #[command(flatten)]
        link: LinkOptions,
        #[command(flatten)]
        schema: SchemaOptions,
    },
    /// Send messages written as JSON and print the replies.
    #[command(after_help = "Examples:
  connect send 127.0.0.1:7878 --type connect.example.v1.HelloWorld --json '{\"text\":\"hi\"}'
  echo '{\"item\":\"tea\"}' | connect send 127.0.0.1:7878 --proto shop.proto --type shop.v1.Order
  connect send tls://localhost:7879 --ca ca.pem --session --user alice --password pw --type T --json '{}'

Without --json, each line of standard input is one message. Replies are printed one per line
until --replies have come, the peer closes, or nothing arrives for --wait-ms.")]
    Send {
        /// Where to send: [tcp://|tls://|ws://|wss://]HOST:PORT[/PATH].
        addr: String,
        /// The message type: a full name (shop.v1.Order) or a type URL.
        #[arg(long = "type", short = 't', value_name = "TYPE")]
        type_name: String,
        /// The message as JSON (protobuf JSON mapping); without it, JSON lines from stdin.
        #[arg(long)]
        json: Option<String>,
        /// Stop after this many replies.
        #[arg(long, value_name = "N")]
        replies: Option<u64>,
        /// Stop when no reply has come for this long.
        #[arg(long, value_name = "MS", default_value_t = 1000)]
        wait_ms: u64,
        #[command(flatten)]
        link: LinkOptions,
        #[command(flatten)]
        schema: SchemaOptions,
    },
    /// Call the peer (request/reply): send a request, print its reply.
    #[command(after_help = "Examples:
  cargo run --example rpc-server 127.0.0.1:7879 &
  connect call 127.0.0.1:7879 --type connect.example.v1.Add --json '{\"a\":2,\"b\":3}'
  connect call 127.0.0.1:7879 --type connect.example.v1.Sleep --json '{\"ms\":5000}' --deadline 1s
  printf '{\"a\":1,\"b\":1}\\n{\"a\":2,\"b\":2}\\n' | connect call 127.0.0.1:7879 --type connect.example.v1.Add

A call's method is its request's type (--type, also spelled --method): the peer runs the handler
for that type. Each reply is printed as `TYPE (N bytes) JSON`; a failed call prints its status
(NOT_FOUND, DEADLINE_EXCEEDED, INVALID_ARGUMENT, ...) on standard error and the exit code is 1.
Without --json, each line of standard input is one request, called in turn.")]
    Call {
        /// The peer: [tcp://|tls://|ws://|wss://]HOST:PORT.
        addr: String,
        /// The request's type: a full name (connect.example.v1.Add) or a type URL.
        #[arg(
            long = "type",
            short = 't',
            visible_alias = "method",
            value_name = "TYPE"
        )]
        type_name: String,
        /// The request as JSON (protobuf JSON mapping); without it, JSON lines from stdin.
        #[arg(long)]
        json: Option<String>,
        /// How long to wait for each reply (500ms, 5s, 2m; a bare number is milliseconds); the
        /// peer learns it too and stops the handler when it passes. Default: 30s.
        #[arg(long, value_name = "DURATION", value_parser = patterns::parse_duration)]
        deadline: Option<Duration>,
        /// Request metadata (repeatable).
        #[arg(long = "metadata", short = 'm', value_name = "KEY=VALUE", value_parser = patterns::parse_metadata)]
        metadata: Vec<(String, String)>,
        #[command(flatten)]
        link: LinkOptions,
        #[command(flatten)]
        schema: SchemaOptions,
    },
    /// Subscribe to topics (publish/subscribe) and print every message as a JSON line.
    #[command(after_help = "Examples:
  cargo run --example pubsub-publisher 127.0.0.1:7879 &
  connect sub 127.0.0.1:7879 'ticks.>'
  connect sub 127.0.0.1:7879 ticks.eu.price news.*.headline --count 10
  connect sub --listen 127.0.0.1:7880 'orders.>'     # publishers connect to us

Each message is one line: {\"topic\":...,\"type\":...,\"message\":{...}} (the protobuf JSON
mapping; \"value_hex\" instead of \"message\" for a type it does not know: pass --proto).
Filters: dot-separated elements, `*` for any one element, `>` as the last for one or more.")]
    Sub {
        /// The publisher: [tcp://|tls://|ws://|wss://]HOST:PORT (with --listen, where to listen).
        addr: String,
        /// Filters to subscribe to (orders.eu.created, orders.*.created, orders.>).
        #[arg(required = true, value_name = "FILTER")]
        filters: Vec<String>,
        /// Exit after this many messages.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Accept publishers' links on ADDR instead of connecting.
        #[arg(long)]
        listen: bool,
        #[command(flatten)]
        link: LinkOptions,
        #[command(flatten)]
        schema: SchemaOptions,
    },
    /// Publish messages written as JSON on a topic (publish/subscribe).
    #[command(after_help = "Examples:
  connect sub --listen 127.0.0.1:7880 'orders.>' &
  connect pub 127.0.0.1:7880 orders.eu.created --type connect.example.v1.HelloWorld --json '{\"text\":\"hi\"}'
  connect pub --listen 127.0.0.1:7881 orders.eu.created --proto shop.proto --type shop.v1.Order < orders.jsonl

The publisher sends each message only to links subscribed to a matching filter, so it first
waits for --subscribers of them (at most --wait-ms), then publishes and closes gracefully. Each
message published prints `TOPIC TYPE (N bytes) JSON -> K subscribers`. Without --json, each line
of standard input is one message, published as it is read.")]
    Pub {
        /// Where the subscriber listens: [tcp://|tls://|ws://|wss://]HOST:PORT (with --listen,
        /// where to listen for subscribers).
        addr: String,
        /// The topic (orders.eu.created; no wildcards).
        topic: String,
        /// The message type: a full name (shop.v1.Order) or a type URL.
        #[arg(long = "type", short = 't', value_name = "TYPE")]
        type_name: String,
        /// The message as JSON (protobuf JSON mapping); without it, JSON lines from stdin.
        #[arg(long)]
        json: Option<String>,
        /// Subscribed links to wait for before publishing.
        #[arg(long, value_name = "N", default_value_t = 1)]
        subscribers: usize,
        /// How long to wait for them.
        #[arg(long, value_name = "MS", default_value_t = 10_000)]
        wait_ms: u64,
        /// Accept subscribers' links on ADDR instead of connecting.
        #[arg(long)]
        listen: bool,
        #[command(flatten)]
        link: LinkOptions,
        #[command(flatten)]
        schema: SchemaOptions,
    },
    /// Print the frames in a capture (length-delimited google.protobuf.Any bytes).
    #[command(after_help = "Examples:
  connect decode capture.bin
  cat capture.bin | connect decode --proto shop.proto")]
    Decode {
        /// The file to read (default: standard input).
        file: Option<PathBuf>,
        #[command(flatten)]
        schema: SchemaOptions,
    },
    /// Quick throughput (W1) and round-trip latency (W2) against a running echo server.
    #[command(after_help = "Examples:
  cargo run --example tcp-echo-server 127.0.0.1:7878 &
  connect bench 127.0.0.1:7878
  connect bench 127.0.0.1:7878 --size 1024 --messages 100000 --pings 2000

W1 pipelines --messages messages of --size bytes and counts the echoes; W2 sends one message at a
time --pings times and reports round-trip percentiles.")]
    Bench {
        /// The echo server: [tcp://|tls://|ws://|wss://]HOST:PORT[/PATH].
        addr: String,
        #[command(flatten)]
        bench: bench::BenchOptions,
        #[command(flatten)]
        link: LinkOptions,
    },
    /// Forward a local TCP port through a link to a TCP address on the far side (like ssh -L).
    #[command(after_help = "Examples:
  connect tunnel-serve 0.0.0.0:7878 --allow db.internal:5432        # on the far side
  connect tunnel gateway:7878 --local 127.0.0.1:5433 --remote db.internal:5432
  psql -h 127.0.0.1 -p 5433

The link is a reliable stream: forwarded connections survive it dropping and resuming. The first
line is `listening on IP:PORT` (the local port).")]
    Tunnel {
        /// The far side's `connect tunnel-serve`: [tcp://|tls://]HOST:PORT.
        addr: String,
        /// The local address to accept connections on.
        #[arg(long, value_name = "HOST:PORT")]
        local: String,
        /// The address the far side connects each forwarded connection to.
        #[arg(long, value_name = "HOST:PORT")]
        remote: String,
        #[command(flatten)]
        link: LinkOptions,
    },
    /// The far side of `connect tunnel`: accept links and connect their streams to allowed targets.
    #[command(after_help = "Examples:
  connect tunnel-serve 0.0.0.0:7878 --allow db.internal:5432 --allow 127.0.0.1:6379
  connect tunnel-serve tls://0.0.0.0:7879 --cert server.pem --key server.key --allow db:5432")]
    TunnelServe {
        /// Where to listen: [tcp://|tls://]HOST:PORT.
        addr: String,
        /// A target clients may reach, exactly as they name it (repeatable).
        #[arg(long, value_name = "HOST:PORT")]
        allow: Vec<String>,
        #[command(flatten)]
        link: LinkOptions,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help and version to stdout with exit code 0, usage errors with 2.
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    match async_std::task::block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::from(1)
        }
    }
}

/// An error and its causes, `: `-separated, like `{:#}`, but without a cause whose text the
/// message before it already shows (`connect`'s errors include their source's text, so
/// `{:#}` would print it twice).
pub(crate) fn chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Listen {
            addr,
            echo,
            count,
            metrics,
            link,
            schema,
        } => listen(&addr, echo, count, metrics, &link, &schema).await,
        Command::Send {
            addr,
            type_name,
            json,
            replies,
            wait_ms,
            link,
            schema,
        } => {
            let schema = load(&schema)?;
            // Check the input before connecting, so a typo costs no connection.
            let messages = match json {
                Some(json) => vec![schema.pack(&type_name, &json)?],
                None => {
                    let mut messages = Vec::new();
                    for (n, line) in std::io::stdin().lock().lines().enumerate() {
                        let line = line.context("cannot read standard input")?;
                        if line.trim().is_empty() {
                            continue;
                        }
                        messages.push(
                            schema
                                .pack(&type_name, &line)
                                .with_context(|| format!("standard input, line {}", n + 1))?,
                        );
                    }
                    messages
                }
            };
            let target = Target::parse(&addr, link.tls)?;
            let mut conn = Link::connect(&target, &link).await?;
            for any in messages {
                conn.feed(any).await.context("sending failed")?;
            }
            conn.flush().await.context("sending failed")?;
            let wait = Duration::from_millis(wait_ms);
            let mut received = 0;
            while replies.is_none_or(|n| received < n) {
                let next = futures::select! {
                    next = conn.recv().fuse() => next,
                    () = futures_timer_sleep(wait).fuse() => break,
                };
                match next.context("receiving failed")? {
                    Some(any) => {
                        println!("{}", schema.describe(&any));
                        received += 1;
                    }
                    None => break,
                }
            }
            if let Some(n) = replies {
                if received < n {
                    bail!("{received} of {n} replies came (waited {wait_ms} ms for the rest; raise --wait-ms?)");
                }
            }
            let _ = conn.finish().await;
            Ok(())
        }
        Command::Call {
            addr,
            type_name,
            json,
            deadline,
            metadata,
            link,
            schema,
        } => {
            let schema = load(&schema)?;
            let requests = match json {
                Some(json) => vec![schema.pack(&type_name, &json)?],
                None => stdin_messages(&schema, &type_name)?,
            };
            let mut options = connect::rpc::CallOptions::new();
            if let Some(deadline) = deadline {
                options = options.with_timeout(deadline);
            }
            for (key, value) in metadata {
                options = options.with_metadata(key, value);
            }
            let target = Target::parse(&addr, link.tls)?;
            patterns::call(&target, &link, &schema, requests, options).await
        }
        Command::Sub {
            addr,
            filters,
            count,
            listen,
            link,
            schema,
        } => {
            let schema = load(&schema)?;
            let target = Target::parse(&addr, link.tls)?;
            patterns::sub(&target, &link, &schema, &filters, count, listen).await
        }
        Command::Pub {
            addr,
            topic,
            type_name,
            json,
            subscribers,
            wait_ms,
            listen,
            link,
            schema,
        } => {
            let schema = load(&schema)?;
            let messages = match json {
                Some(json) => patterns::Messages::One(schema.pack(&type_name, &json)?),
                None => {
                    schema.message(&type_name)?;
                    patterns::Messages::Stdin { type_name }
                }
            };
            let target = Target::parse(&addr, link.tls)?;
            let wait = Duration::from_millis(wait_ms);
            patterns::publish(
                &target,
                &link,
                &schema,
                &topic,
                messages,
                subscribers,
                wait,
                listen,
            )
            .await
        }
        Command::Decode { file, schema } => {
            let schema = load(&schema)?;
            let mut bytes = Vec::new();
            match &file {
                Some(path) => {
                    bytes = std::fs::read(path)
                        .with_context(|| format!("cannot read {}", path.display()))?
                }
                None => {
                    std::io::stdin()
                        .read_to_end(&mut bytes)
                        .context("cannot read standard input")?;
                }
            }
            decode(&schema, &bytes)
        }
        Command::Tunnel {
            addr,
            local,
            remote,
            link,
        } => {
            let target = Target::parse(&addr, link.tls)?;
            tunnel::forward(&target, &link, &local, &remote).await
        }
        Command::TunnelServe { addr, allow, link } => {
            let target = Target::parse(&addr, link.tls)?;
            tunnel::serve(&target, &link, allow).await
        }
        Command::Bench { addr, bench, link } => {
            let target = Target::parse(&addr, link.tls)?;
            bench::run(&target, &link, &bench).await
        }
    }
}

/// Every non-empty line of standard input as a message of type `type_name`.
fn stdin_messages(schema: &Schema, type_name: &str) -> anyhow::Result<Vec<prost_types::Any>> {
    let mut messages = Vec::new();
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("cannot read standard input")?;
        if line.trim().is_empty() {
            continue;
        }
        messages.push(
            schema
                .pack(type_name, &line)
                .with_context(|| format!("standard input, line {}", n + 1))?,
        );
    }
    Ok(messages)
}

fn load(options: &SchemaOptions) -> anyhow::Result<Schema> {
    Schema::load(&options.protos, &options.includes)
}

async fn futures_timer_sleep(duration: Duration) {
    async_std::task::sleep(duration).await
}

/// Prints every frame of `bytes`; fails on a malformed or truncated frame, after printing the
/// frames before it.
fn decode(schema: &Schema, bytes: &[u8]) -> anyhow::Result<()> {
    let codec = connect::codec::Codec::new();
    let mut buf = BytesMut::from(bytes);
    let mut offset = 0;
    loop {
        let before = buf.len();
        match codec.decode(&mut buf) {
            Ok(Some(any)) => {
                println!("@{offset} {}", schema.describe(&any));
                offset += before - buf.len();
            }
            Ok(None) if buf.is_empty() => return Ok(()),
            Ok(None) => bail!(
                "truncated frame at byte {offset}: {} bytes left, not a whole frame (is the capture cut short?)",
                buf.len()
            ),
            Err(e) => bail!(
                "bad frame at byte {offset}: {e} (is this a capture of length-delimited google.protobuf.Any frames?)"
            ),
        }
    }
}

/// `--metrics=SECS`: a positive number of seconds, fractions allowed.
fn parse_interval(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

async fn listen(
    addr: &str,
    echo: bool,
    count: Option<u64>,
    metrics: Option<Duration>,
    options: &LinkOptions,
    schema: &SchemaOptions,
) -> anyhow::Result<()> {
    let schema = Arc::new(load(schema)?);
    let board = metrics.map(|every| {
        let board = metrics::Board::default();
        async_std::task::spawn(board.clone().print_every(every));
        board
    });
    let target = Target::parse(addr, options.tls)?;
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (done_tx, done_rx) = futures::channel::oneshot::channel::<()>();
    let done_tx = Arc::new(std::sync::Mutex::new(Some(done_tx)));
    let serve = move |mut link: Link, peer: String| {
        let (schema, seen, done_tx) = (schema.clone(), seen.clone(), done_tx.clone());
        let board = board.clone();
        async move {
            println!("{peer} connected");
            // Whether this link brought the count of messages to --count.
            let mut last = false;
            let on_board = board.as_ref().map(|b| b.open(&peer, &link));
            loop {
                match link.recv().await {
                    Ok(Some(any)) => {
                        println!("{peer} {}", schema.describe(&any));
                        if echo {
                            if let Err(e) = link.send(any).await {
                                eprintln!("{peer}: echo failed: {e}");
                                break;
                            }
                        }
                        if let (Some(board), Some(id)) = (&board, on_board) {
                            board.update(id, &link);
                        }
                        let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        if count == Some(n) {
                            last = true;
                            break;
                        }
                    }
                    Ok(None) => {
                        println!("{peer} closed");
                        break;
                    }
                    Err(e) => {
                        println!("{peer} ended: {e}");
                        break;
                    }
                }
            }
            if let (Some(board), Some(id)) = (&board, on_board) {
                board.close(id, &link);
            }
            if last {
                // Close this link gracefully before the process exits, so the peer gets its
                // echo and a proper end rather than a dropped connection.
                if let Err(e) = link.finish().await {
                    eprintln!("{peer}: close failed: {e}");
                }
                println!("{peer} closed");
                if let Some(tx) = done_tx.lock().ok().and_then(|mut tx| tx.take()) {
                    let _ = tx.send(());
                }
            }
        }
    };
    let listening = link::listen(&target, options, serve);
    futures::select! {
        result = listening.fuse() => result,
        _ = done_rx.fuse() => Ok(()),
    }
}

/// Whether progress bars make sense (a terminal), or plain lines (piped, CI).
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

#[cfg(test)]
mod chain_tests {
    #[test]
    fn a_cause_the_message_already_shows_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = anyhow::Error::new(connect::Error::Io(io)).context("cannot connect to x");
        assert_eq!(super::chain(&e), "cannot connect to x: I/O error: refused");
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::chain(&plain), "outer: inner");
    }
}
