//! `connect tunnel` and `connect tunnel-serve`: TCP ports forwarded through a connect link, like
//! `ssh -L`, over a reliable stream (`connect::tunnel`), so forwarded connections survive the
//! link dropping and resuming.

use anyhow::{bail, Context as _};
use async_std::net::{TcpListener, TcpStream};
use connect::tunnel::{Side, Tunnel, TunnelConfig, TunnelStream};
use futures::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::link::{self, Link, LinkOptions, Target};

/// Copies both ways between a tunnelled stream and a TCP connection, half-closing each way.
async fn splice(tunnelled: TunnelStream, tcp: TcpStream) {
    let (mut from_tunnel, mut to_tunnel) = tunnelled.split();
    let (mut from_tcp, mut to_tcp) = (tcp.clone(), tcp);
    let up = async {
        let _ = futures::io::copy(&mut from_tunnel, &mut to_tcp).await;
        let _ = to_tcp.shutdown(std::net::Shutdown::Write);
    };
    let down = async {
        let _ = futures::io::copy(&mut from_tcp, &mut to_tunnel).await;
        let _ = to_tunnel.close().await;
    };
    futures::join!(up, down);
}

fn reliable(options: &LinkOptions) -> LinkOptions {
    LinkOptions {
        reliable: true,
        ..options.clone()
    }
}

/// Accepts TCP connections on `local` and carries each through the link to `remote`, which the
/// far side's `connect tunnel-serve` connects to.
pub async fn forward(
    target: &Target,
    options: &LinkOptions,
    local: &str,
    remote: &str,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(local)
        .await
        .with_context(|| format!("cannot listen on {local} (in use? try port 0)"))?;
    let Link::Reliable(stream) = Link::connect(target, &reliable(options)).await? else {
        bail!("the link to {} is not a reliable stream", target.addr);
    };
    let (tunnel, driver) = Tunnel::new(stream, Side::Connecting, TunnelConfig::new());
    let driver = async_std::task::spawn(driver);
    println!("listening on {}", listener.local_addr()?);
    println!("forwarding to {remote} through {}", target.addr);
    let accepting = async {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    async_std::task::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            match tunnel.open(remote) {
                Ok(tunnelled) => {
                    eprintln!("{peer}: tunnelled as stream {}", tunnelled.id());
                    async_std::task::spawn(splice(tunnelled, tcp));
                }
                Err(e) => bail!("the tunnel ended: {e}"),
            }
        }
    };
    futures::pin_mut!(accepting);
    match futures::future::select(accepting, driver).await {
        futures::future::Either::Left((result, _)) => result,
        futures::future::Either::Right((result, _)) => {
            result.context(
                "the link ended (the server gave up the stream, or it could not be reached)",
            )?;
            bail!("the link ended")
        }
    }
}

/// Accepts links on `target`, and connects each tunnelled stream to the target it names, if
/// `allow` lists it.
pub async fn serve(
    target: &Target,
    options: &LinkOptions,
    allow: Vec<String>,
) -> anyhow::Result<()> {
    if allow.is_empty() {
        bail!("name the targets clients may reach with --allow HOST:PORT (repeatable)");
    }
    let allow = std::sync::Arc::new(allow);
    link::listen(target, &reliable(options), move |link, peer| {
        let allow = allow.clone();
        async move {
            let Link::Reliable(stream) = link else {
                return eprintln!("{peer}: not a reliable stream (the client needs --reliable)");
            };
            let (mut tunnel, driver) = Tunnel::new(stream, Side::Accepting, TunnelConfig::new());
            async_std::task::spawn(driver);
            while let Some((tunnelled, to)) = tunnel.accept().await {
                if !allow.contains(&to) {
                    eprintln!(
                        "{peer}: stream {} to {to} refused: not in --allow",
                        tunnelled.id()
                    );
                    continue;
                }
                let allow_peer = peer.clone();
                async_std::task::spawn(async move {
                    match TcpStream::connect(to.as_str()).await {
                        Ok(tcp) => {
                            let _ = tcp.set_nodelay(true);
                            splice(tunnelled, tcp).await
                        }
                        Err(e) => eprintln!("{allow_peer}: cannot connect to {to}: {e}"),
                    }
                });
            }
        }
    })
    .await
}
