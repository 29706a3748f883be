//! Echo server over SCTP (on UDP): sends every message back to its sender, unchanged and in
//! order. The SCTP twin of `tcp-echo-server`; with `--tls`, of `tls-echo-server`.
//!
//! Every message goes back as it came, byte for byte (the dispatcher's fallback echoes the
//! `Any` without decoding it), so clients in any language can test their framing with any
//! message. One UDP port serves every association; a peer that sends garbage loses only its own
//! association, and stray datagrams touch none.
//!
//! ```text
//! cargo run --features sctp --example sctp-echo-server [ADDR]   # ADDR defaults to 127.0.0.1:7878
//! cargo run --features sctp --example sctp-echo-server -- ADDR --tls --cert server.pem --key server.key \
//!     [--client-ca ca.pem]
//! ```
//!
//! With `--tls` every association runs a TLS handshake first (TLS 1.3 or 1.2 over the
//! association's stream; `--client-ca` requires client certificates from that CA), in the task
//! that serves it, so a client that stalls its handshake holds up nobody. Once bound it prints
//! `listening on <ip:port>` (the real UDP port when ADDR has port 0).

use std::sync::Arc;

use anyhow::{bail, Context as _};
use connect::dispatch::{Context, Dispatcher, Reply};
use connect::transport::sctp::{self, SctpListener};
use connect::transport::tls::{self, Identity, TlsServerConfig};
use futures::StreamExt;
use prost_types::Any;

const USAGE: &str = "usage: sctp-echo-server [ADDR] [--tls --cert CERT.pem --key KEY.pem [--client-ca CA.pem]]\n  ADDR defaults to 127.0.0.1:7878";

#[derive(Default)]
struct Args {
    addr: Option<String>,
    tls: bool,
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
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
            "--cert" => args.cert = Some(value()?),
            "--key" => args.key = Some(value()?),
            "--client-ca" => args.client_ca = Some(value()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ if arg.starts_with("--") => bail!("unknown option {arg}\n{USAGE}"),
            _ if args.addr.is_none() => args.addr = Some(arg),
            _ => bail!("unexpected argument {arg}\n{USAGE}"),
        }
    }
    if !args.tls && (args.cert.is_some() || args.key.is_some() || args.client_ca.is_some()) {
        bail!("--cert, --key and --client-ca go with --tls\n{USAGE}");
    }
    Ok(args)
}

fn tls_config(args: &Args) -> anyhow::Result<Option<Arc<TlsServerConfig>>> {
    if !args.tls {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (&args.cert, &args.key) else {
        bail!("--tls needs --cert and --key\n{USAGE}");
    };
    let mut tls = TlsServerConfig::builder(Identity::from_pem_files(cert, key)?);
    if let Some(ca) = &args.client_ca {
        tls = tls.require_client_certificates(tls::certificates_from_pem_file(ca)?);
    }
    Ok(Some(Arc::new(tls.build()?)))
}

#[async_std::main]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = parse_args()?;
    let tls = tls_config(&args)?;
    let addr = args.addr.unwrap_or_else(|| "127.0.0.1:7878".into());

    let listener = SctpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr());

    let dispatcher = Arc::new(
        Dispatcher::new().fallback(|any: Any, _: Context| async move {
            Ok::<_, connect::Error>(Reply::any(any))
        }),
    );

    let mut incoming = listener.incoming();
    while let Some(conn) = incoming.next().await {
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                // Only a failed UDP socket ends up here: nothing more will be accepted.
                log::error!("accept failed: {e}");
                return Err(e.into());
            }
        };
        let dispatcher = dispatcher.clone();
        let tls = tls.clone();
        async_std::task::spawn(async move {
            let info = conn.info().clone();
            let result = match tls {
                None => dispatcher.serve(conn).await,
                Some(tls) => match sctp::accept_tls(conn, &tls).await {
                    Ok(conn) => {
                        let who = conn
                            .peer_identity()
                            .and_then(|id| id.common_name())
                            .map(|name| format!(" as {name:?}"))
                            .unwrap_or_default();
                        log::info!("{info}: TLS{who}");
                        dispatcher.serve(conn).await
                    }
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(()) => log::info!("{info} closed"),
                Err(e) => log::warn!("{info} ended: {e}"),
            }
        });
    }
    Ok(())
}
