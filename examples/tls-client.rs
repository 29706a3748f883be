//! Client for `tls-echo-server`: sends a few `HelloWorld` messages over TLS and prints the typed
//! replies, like `tcp-client`.
//!
//! ```text
//! cargo run --example tls-client 127.0.0.1:7879 --ca target/certs/ca.pem [--server-name localhost] \
//!     [--cert target/certs/client.pem --key target/certs/client.key]
//! ```
//!
//! The server's certificate must be signed by `--ca` and valid for `--server-name` (default:
//! the host part of ADDR). `--cert`/`--key` give a client certificate for servers that require
//! one.

use anyhow::{bail, Context as _};
use connect::proto::example::HelloWorld;
use connect::transport::tls::{self, Identity, TlsClientConfig};

const GREETINGS: [&str; 3] = ["hello", "bonjour", "hallo"];
const USAGE: &str =
    "usage: tls-client ADDR --ca CA.pem [--server-name NAME] [--cert CERT.pem --key KEY.pem]";

struct Args {
    addr: String,
    ca: String,
    server_name: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let (mut addr, mut ca, mut server_name, mut cert, mut key) = (None, None, None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--ca" => ca = Some(value()?),
            "--server-name" => server_name = Some(value()?),
            "--cert" => cert = Some(value()?),
            "--key" => key = Some(value()?),
            _ if arg.starts_with("--") => bail!("unknown option {arg}\n{USAGE}"),
            _ if addr.is_none() => addr = Some(arg),
            _ => bail!("unexpected argument {arg}\n{USAGE}"),
        }
    }
    if cert.is_some() != key.is_some() {
        bail!("--cert and --key go together\n{USAGE}");
    }
    Ok(Args {
        addr: addr.context(USAGE)?,
        ca: ca.context(USAGE)?,
        server_name,
        cert,
        key,
    })
}

/// The host part of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let mut tls = TlsClientConfig::builder().trust(tls::certificates_from_pem_file(&args.ca)?);
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        tls = tls.with_identity(Identity::from_pem_files(cert, key)?);
    }
    let tls = tls.build()?;
    let server_name = args
        .server_name
        .as_deref()
        .unwrap_or_else(|| host_of(&args.addr));

    let mut conn = tls::connect(&args.addr, server_name, &tls).await?;
    let server = conn
        .peer_identity()
        .and_then(|id| {
            id.common_name()
                .or(id.dns_names().first().map(String::as_str))
        })
        .unwrap_or("?")
        .to_owned();
    println!("connected to {} ({server:?}) over TLS", args.addr);

    // Pipelined: all requests go out in one write, then the replies are read in order.
    for (sequence, text) in (1..).zip(GREETINGS) {
        conn.feed_message(&HelloWorld {
            text: text.into(),
            sequence,
        })
        .await?;
    }
    conn.flush().await?;
    for _ in GREETINGS {
        let reply: HelloWorld = conn
            .recv_message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("server closed the connection early"))?;
        println!("reply #{}: {:?}", reply.sequence, reply.text);
    }
    conn.close().await?;
    Ok(())
}
