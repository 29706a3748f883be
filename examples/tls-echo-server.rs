//! TLS echo server: sends every message back to its sender, unchanged (byte for byte) and in
//! order, like `tcp-echo-server` but over TLS, optionally requiring client certificates (mutual
//! TLS), and with the same session and reliable-stream modes.
//!
//! ```text
//! cargo run --example make-certs target/certs       # a local CA, server and client certificates
//! cargo run --example tls-echo-server 127.0.0.1:7879 --cert target/certs/server.pem --key target/certs/server.key \
//!     [--client-ca target/certs/ca.pem] [--session | --user NAME --password PW] [--reliable]
//! ```
//!
//! Once bound it prints `listening on <ip:port>` (the real port when ADDR has port 0). With
//! `--client-ca`, only clients with a certificate signed by that CA get in; the server logs who
//! they are. A client whose handshake fails (no TLS, wrong certificate, stalls) loses only its
//! own connection. `--session`, `--user`/`--password`, `--heartbeat-ms`, `--reliable` and
//! `--ack-every` work as for `tcp-echo-server`: sessions (PLAIN credentials, heartbeats) and
//! reliable streams that clients resume over a new TLS connection after a drop.

#[path = "common/echo.rs"]
mod echo;

use anyhow::{bail, Context as _};
use connect::transport::tls::{self, Identity, TlsListener, TlsServerConfig};
use connect::{Error, TlsError};
use futures::StreamExt;

fn usage() -> String {
    format!(
        "usage: tls-echo-server ADDR --cert CERT.pem --key KEY.pem [--client-ca CA.pem]\n                  {}",
        echo::OPTIONS_USAGE
    )
}

struct Args {
    addr: String,
    cert: String,
    key: String,
    client_ca: Option<String>,
    options: echo::Options,
}

fn parse_args() -> anyhow::Result<Args> {
    let (mut addr, mut cert, mut key, mut client_ca) = (None, None, None, None);
    let mut options = echo::Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if options.parse(&arg, &mut args)? {
            continue;
        }
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value\n{}", usage()))
        };
        match arg.as_str() {
            "--cert" => cert = Some(value()?),
            "--key" => key = Some(value()?),
            "--client-ca" => client_ca = Some(value()?),
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            _ if arg.starts_with("--") => bail!("unknown option {arg}\n{}", usage()),
            _ if addr.is_none() => addr = Some(arg),
            _ => bail!("unexpected argument {arg}\n{}", usage()),
        }
    }
    Ok(Args {
        addr: addr.with_context(usage)?,
        cert: cert.with_context(usage)?,
        key: key.with_context(usage)?,
        client_ca,
        options,
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

    let mode = args.options.mode("tls-echo-server")?;
    let dispatcher = echo::dispatcher();

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
        let mode = mode.clone();
        async_std::task::spawn(async move {
            let info = conn.info().clone();
            match echo::serve(conn, mode, &dispatcher).await {
                Ok(()) => log::info!("{info} closed"),
                Err(e) => log::warn!("{info} ended: {e}"),
            }
        });
    }
    Ok(())
}
