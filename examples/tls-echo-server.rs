//! TLS echo server: sends every message back to its sender, unchanged and in order, like
//! `tcp-echo-server` but over TLS, optionally requiring client certificates (mutual TLS).
//!
//! ```text
//! cargo run --example make-certs target/certs       # a local CA, server and client certificates
//! cargo run --example tls-echo-server 127.0.0.1:7879 --cert target/certs/server.pem --key target/certs/server.key \
//!     [--client-ca target/certs/ca.pem]
//! ```
//!
//! Once bound it prints `listening on <ip:port>` (the real port when ADDR has port 0). With
//! `--client-ca`, only clients with a certificate signed by that CA get in; the server logs who
//! they are. A client whose handshake fails (no TLS, wrong certificate, stalls) loses only its
//! own connection.

use std::sync::Arc;

use anyhow::{bail, Context as _};
use connect::dispatch::{Context, Dispatcher, Reply};
use connect::proto::example::HelloWorld;
use connect::transport::tls::{self, Identity, TlsListener, TlsServerConfig};
use connect::{Error, TlsError};
use futures::StreamExt;
use prost_types::Any;

const USAGE: &str =
    "usage: tls-echo-server ADDR --cert CERT.pem --key KEY.pem [--client-ca CA.pem]";

struct Args {
    addr: String,
    cert: String,
    key: String,
    client_ca: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let (mut addr, mut cert, mut key, mut client_ca) = (None, None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--cert" => cert = Some(value()?),
            "--key" => key = Some(value()?),
            "--client-ca" => client_ca = Some(value()?),
            _ if arg.starts_with("--") => bail!("unknown option {arg}\n{USAGE}"),
            _ if addr.is_none() => addr = Some(arg),
            _ => bail!("unexpected argument {arg}\n{USAGE}"),
        }
    }
    Ok(Args {
        addr: addr.context(USAGE)?,
        cert: cert.context(USAGE)?,
        key: key.context(USAGE)?,
        client_ca,
    })
}

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = parse_args()?;

    let mut tls = TlsServerConfig::builder(Identity::from_pem_files(&args.cert, &args.key)?);
    if let Some(ca) = &args.client_ca {
        tls = tls.require_client_certificates(tls::certificates_from_pem_file(ca)?);
    }
    let mut listener = TlsListener::bind(&args.addr, tls.build()?).await?;
    println!("listening on {}", listener.local_addr());

    let dispatcher = Arc::new(
        Dispatcher::new()
            .on(|hello: HelloWorld, _: Context| async move {
                Ok::<_, connect::Error>(Reply::message(&hello))
            })
            .fallback(
                |any: Any, _: Context| async move { Ok::<_, connect::Error>(Reply::any(any)) },
            ),
    );

    while let Some(conn) = listener.next().await {
        let conn = match conn {
            Ok(conn) => conn,
            // One client's handshake failed: its problem only.
            Err(Error::Tls(e @ TlsError::Handshake { .. })) => {
                log::warn!("{e}");
                continue;
            }
            Err(e) => {
                log::warn!("accept failed: {e}");
                // Typically out of file descriptors: give connections a moment to close.
                async_std::task::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let who = conn
            .peer_identity()
            .and_then(|id| {
                id.common_name()
                    .or(id.dns_names().first().map(String::as_str))
            })
            .map(|name| format!(" as {name:?}"))
            .unwrap_or_default();
        log::info!("{}{who} connected", conn.info());
        let dispatcher = dispatcher.clone();
        async_std::task::spawn(async move {
            let info = conn.info().clone();
            match dispatcher.serve(conn).await {
                Ok(()) => log::info!("{info} closed"),
                Err(e) => log::warn!("{info} ended: {e}"),
            }
        });
    }
    Ok(())
}
