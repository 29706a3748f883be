//! Client for `sctp-echo-server`: sends a few `HelloWorld` messages over SCTP (on UDP) and
//! prints the typed replies. The SCTP twin of `tcp-client`; with `--tls`, of `tls-client`.
//!
//! ```text
//! cargo run --features sctp --example sctp-echo-server &
//! cargo run --features sctp --example sctp-client [ADDR]   # ADDR defaults to 127.0.0.1:7878
//! cargo run --features sctp --example sctp-client -- ADDR --tls --ca ca.pem [--server-name NAME] \
//!     [--cert client.pem --key client.key]
//! ```

use anyhow::{bail, Context as _};
use connect::proto::example::HelloWorld;
use connect::transport::sctp;
use connect::transport::tls::{self, Identity, TlsClientConfig};
use connect::Connection;

const GREETINGS: [&str; 3] = ["hello", "bonjour", "hallo"];
const USAGE: &str = "usage: sctp-client [ADDR] [--tls --ca CA.pem [--server-name NAME] [--cert CERT.pem --key KEY.pem]]\n  ADDR defaults to 127.0.0.1:7878";

#[derive(Default)]
struct Args {
    addr: Option<String>,
    tls: bool,
    ca: Option<String>,
    server_name: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--tls" => args.tls = true,
            "--ca" => args.ca = Some(value()?),
            "--server-name" => args.server_name = Some(value()?),
            "--cert" => args.cert = Some(value()?),
            "--key" => args.key = Some(value()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ if arg.starts_with("--") => bail!("unknown option {arg}\n{USAGE}"),
            _ if args.addr.is_none() => args.addr = Some(arg),
            _ => bail!("unexpected argument {arg}\n{USAGE}"),
        }
    }
    if args.cert.is_some() != args.key.is_some() {
        bail!("--cert and --key go together\n{USAGE}");
    }
    if args.tls && args.ca.is_none() {
        bail!("--tls needs --ca\n{USAGE}");
    }
    Ok(args)
}

/// The host part of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let addr = args.addr.clone().unwrap_or_else(|| "127.0.0.1:7878".into());
    match &args.ca {
        Some(ca) if args.tls => {
            let mut tls = TlsClientConfig::builder().trust(tls::certificates_from_pem_file(ca)?);
            if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
                tls = tls.with_identity(Identity::from_pem_files(cert, key)?);
            }
            let server_name = args
                .server_name
                .as_deref()
                .unwrap_or_else(|| host_of(&addr));
            let conn = sctp::connect_tls(&addr, server_name, &tls.build()?).await?;
            println!("connected to {addr} over TLS on SCTP");
            greet(conn).await
        }
        _ => {
            let conn = sctp::connect(&addr).await?;
            println!("connected to {addr}");
            greet(conn).await
        }
    }
}

async fn greet<S: sctp::Association>(mut conn: Connection<S>) -> anyhow::Result<()> {
    // Pipelined: all requests go out together, then the replies are read in order.
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
    // End of stream (after TLS's close_notify), the server's end of stream, then SCTP's
    // shutdown: nothing is left half-done when the process exits.
    sctp::shutdown(conn).await?;
    Ok(())
}
