//! Addresses (`tcp://`, `tls://`, `sctp://`, `ws://`, `wss://`), the shared connection options,
//! and one handle over the three layers (bare connection, session, reliable stream).

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::Args;
use connect::dispatch::Dispatcher;
use connect::endpoint::{Endpoint, LinkId};
use connect::peer::{Peer, PeerConfig, PeerDriver};
use connect::proto::v1::{credentials::Mechanism, Bearer, Credentials, Plain};
use connect::reliable::{Accepted, ReliableConfig, ReliableServer, ReliableStream};
use connect::session::{self, BearerAuthenticator, PlainAuthenticator, Session, SessionConfig};
use connect::transport::tcp::{self, TcpConnection, TcpListener};
use connect::transport::tls::{
    self, Identity, TlsClientConfig, TlsConnection, TlsListener, TlsServerConfig,
};
use connect::transport::ws::{self, WsConfig, WsConnection, WsListener};
use connect::Connection;
use futures::{AsyncRead, AsyncWrite, StreamExt as _};
use prost_types::Any;

/// The transport an address names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Tcp,
    Tls,
    Sctp,
    /// WebSocket, plain (`ws://`) or over TLS (`wss://`).
    Ws {
        secure: bool,
    },
}

/// A parsed `[scheme://]host:port`.
#[derive(Clone, Debug)]
pub struct Target {
    pub scheme: Scheme,
    pub host: String,
    pub addr: SocketAddr,
    /// The path a WebSocket client asks for, or a listener upgrades on (default `/connect`).
    pub path: String,
}

impl Target {
    /// Parses `text`; without a scheme it is TCP, or TLS with `--tls`.
    pub fn parse(text: &str, tls: bool) -> anyhow::Result<Self> {
        let (scheme, rest) = match text.split_once("://") {
            Some(("tcp", rest)) => (if tls { Scheme::Tls } else { Scheme::Tcp }, rest),
            Some(("tls", rest)) => (Scheme::Tls, rest),
            Some(("sctp", rest)) => (Scheme::Sctp, rest),
            Some(("ws", rest)) => (Scheme::Ws { secure: false }, rest),
            Some(("wss", rest)) => (Scheme::Ws { secure: true }, rest),
            Some((other, _)) => bail!(
                "{text}: unknown scheme {other:?}; use tcp://, tls://, ws://, wss:// or sctp://"
            ),
            None => (if tls { Scheme::Tls } else { Scheme::Tcp }, text),
        };
        let (rest, path) = match (scheme, rest.find('/')) {
            (Scheme::Ws { .. }, Some(at)) => (&rest[..at], rest[at..].to_string()),
            (Scheme::Ws { .. }, None) => (rest, ws::DEFAULT_PATH.to_string()),
            (_, Some(_)) => bail!("{text}: only ws:// and wss:// addresses have a path"),
            (_, None) => (rest, String::new()),
        };
        if scheme == Scheme::Sctp && !cfg!(feature = "sctp") {
            bail!("{text}: this connect was not built with SCTP; rebuild with `--features sctp`");
        }
        let addr = rest
            .to_socket_addrs()
            .with_context(|| format!("{text}: not a host:port (try 127.0.0.1:7878)"))?
            .next()
            .with_context(|| format!("{text}: the name resolves to no address"))?;
        let host = rest.rsplit_once(':').map_or(rest, |(host, _)| host);
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Self {
            scheme,
            host,
            addr,
            path,
        })
    }

    /// The `ws://` or `wss://` URL of a WebSocket target (its host as written, so `wss://`
    /// checks the certificate against it).
    fn url(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Ws { secure: true } => "wss",
            _ => "ws",
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}{}", self.addr.port(), self.path)
    }
}

/// Options every subcommand that opens a link takes.
#[derive(Args, Clone, Debug, Default)]
pub struct LinkOptions {
    /// TLS for addresses without a scheme (same as a tls:// address).
    #[arg(long)]
    pub tls: bool,
    /// CA certificate(s) to trust (PEM), for TLS clients; for `listen`, require client
    /// certificates signed by it.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Certificate chain (PEM): the server's for `listen`, the client's for mutual TLS.
    #[arg(long, value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) for --cert.
    #[arg(long, value_name = "PEM")]
    pub key: Option<PathBuf>,
    /// The name to check the server's certificate against (default: the host in ADDR).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Open a session (handshake, heartbeats) on the connection.
    #[arg(long)]
    pub session: bool,
    /// PLAIN user name (implies --session).
    #[arg(long, requires = "password")]
    pub user: Option<String>,
    /// PLAIN password (implies --session).
    #[arg(long, requires = "user")]
    pub password: Option<String>,
    /// Bearer token (implies --session); for `listen`, the one token accepted.
    #[arg(long, conflicts_with = "user")]
    pub token: Option<String>,
    /// A reliable stream: survives dropped connections (implies --session).
    #[arg(long)]
    pub reliable: bool,
}

impl LinkOptions {
    fn wants_session(&self) -> bool {
        self.session || self.reliable || self.user.is_some() || self.token.is_some()
    }

    fn client_session_config(&self) -> SessionConfig {
        let config = SessionConfig::new().with_property("name", "connect-cli");
        let mechanism = match (&self.user, &self.password, &self.token) {
            (Some(user), Some(password), _) => Mechanism::Plain(Plain {
                user: user.clone(),
                password: password.clone(),
            }),
            (_, _, Some(token)) => Mechanism::Bearer(Bearer {
                token: token.clone(),
            }),
            _ => return config,
        };
        config.with_credentials(Credentials {
            mechanism: Some(mechanism),
        })
    }

    fn server_session_config(&self) -> SessionConfig {
        let config = SessionConfig::new().with_property("name", "connect-cli");
        match (&self.user, &self.password, &self.token) {
            (Some(user), Some(password), _) => {
                config.with_authenticator(PlainAuthenticator::new().with_user(user, password))
            }
            (_, _, Some(token)) => {
                config.with_authenticator(BearerAuthenticator::new().with_token(token, "token"))
            }
            _ => config,
        }
    }

    fn tls_client(&self) -> anyhow::Result<TlsClientConfig> {
        let ca = self
            .ca
            .as_ref()
            .context("TLS needs the CA to trust: pass --ca CA.pem")?;
        let roots = tls::certificates_from_pem_file(ca)
            .with_context(|| format!("cannot read --ca {}", ca.display()))?;
        let mut builder = TlsClientConfig::builder().trust(roots);
        if let Some(identity) = self.identity()? {
            builder = builder.with_identity(identity);
        }
        Ok(builder.build()?)
    }

    fn tls_server(&self) -> anyhow::Result<TlsServerConfig> {
        let identity = self
            .identity()?
            .context("a TLS listener needs its certificate: pass --cert CERT.pem --key KEY.pem")?;
        let mut config = TlsServerConfig::builder(identity);
        if let Some(ca) = &self.ca {
            config = config.require_client_certificates(tls::certificates_from_pem_file(ca)?);
        }
        Ok(config.build()?)
    }

    fn ws_client(&self, secure: bool) -> anyhow::Result<WsConfig> {
        let config = WsConfig::new();
        if !secure {
            return Ok(config);
        }
        if self.server_name.is_some() {
            bail!("wss:// checks the certificate against the URL's host; --server-name does not apply");
        }
        Ok(config.with_tls_client(self.tls_client()?))
    }

    fn identity(&self) -> anyhow::Result<Option<Identity>> {
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Ok(Some(Identity::from_pem_files(cert, key).with_context(
                || {
                    format!(
                        "cannot load --cert {} --key {}",
                        cert.display(),
                        key.display()
                    )
                },
            )?)),
            (None, None) => Ok(None),
            _ => bail!("--cert and --key go together"),
        }
    }
}

/// An open link, whichever layer it is.
pub enum Link {
    Tcp(TcpConnection),
    Tls(TlsConnection),
    Session(Session),
    Reliable(ReliableStream),
    Ws(WsConnection),
    #[cfg(feature = "sctp")]
    Sctp(connect::transport::sctp::SctpConnection),
}

/// `$body` with `$h` bound to the handle inside whichever variant `$link` is.
macro_rules! each_link {
    ($link:expr, $h:ident => $body:expr) => {
        match $link {
            Link::Tcp($h) => $body,
            Link::Tls($h) => $body,
            Link::Session($h) => $body,
            Link::Reliable($h) => $body,
            Link::Ws($h) => $body,
            #[cfg(feature = "sctp")]
            Link::Sctp($h) => $body,
        }
    };
}

impl Link {
    /// Connects to `target` with `options`' layers.
    pub async fn connect(target: &Target, options: &LinkOptions) -> anyhow::Result<Self> {
        let what = || format!("cannot connect to {}", target.addr);
        if options.reliable {
            let config = options.client_session_config();
            let stream = match target.scheme {
                Scheme::Tcp => {
                    tcp::connect_reliable(target.addr, config, ReliableConfig::new(), spawn)
                }
                Scheme::Tls => {
                    let tls = Arc::new(options.tls_client()?);
                    let (addr, name) = (target.addr, server_name(target, options));
                    let (stream, driver) = connect::reliable::client(
                        move || {
                            let (tls, name) = (tls.clone(), name.clone());
                            async move { tls::connect(addr, &name, &tls).await }
                        },
                        config,
                        ReliableConfig::new(),
                    );
                    async_std::task::spawn(driver);
                    stream
                }
                Scheme::Ws { secure } => {
                    let (url, ws) = (target.url(), Arc::new(options.ws_client(secure)?));
                    let (stream, driver) = connect::reliable::client(
                        move || {
                            let (url, ws) = (url.clone(), ws.clone());
                            async move { ws::connect_with(&url, &ws).await }
                        },
                        config,
                        ReliableConfig::new(),
                    );
                    async_std::task::spawn(driver);
                    stream
                }
                Scheme::Sctp => bail!(
                    "--reliable over sctp:// is not offered by the tool; use tcp://, tls:// or ws://"
                ),
            };
            return Ok(Link::Reliable(stream));
        }
        let link = match target.scheme {
            Scheme::Tcp => Link::Tcp(tcp::connect(target.addr).await.with_context(what)?),
            Scheme::Tls => {
                let tls = options.tls_client()?;
                let name = server_name(target, options);
                Link::Tls(
                    tls::connect(target.addr, &name, &tls)
                        .await
                        .with_context(|| {
                            format!(
                                "TLS to {} as {name:?} failed; check --ca and --server-name",
                                target.addr
                            )
                        })?,
                )
            }
            Scheme::Sctp => sctp_connect(target).await?,
            Scheme::Ws { secure } => {
                let url = target.url();
                Link::Ws(
                    ws::connect_with(&url, &options.ws_client(secure)?)
                        .await
                        .with_context(|| {
                            format!("cannot open a WebSocket to {url}; check the path and --ca")
                        })?,
                )
            }
        };
        if !options.wants_session() {
            return Ok(link);
        }
        let config = options.client_session_config();
        let session = match link {
            Link::Tcp(conn) => open_session(conn, &config).await?,
            Link::Tls(conn) => open_session(conn, &config).await?,
            Link::Ws(conn) => open_session(conn, &config).await?,
            #[cfg(feature = "sctp")]
            Link::Sctp(conn) => open_session(conn, &config).await?,
            other => return Ok(other),
        };
        Ok(Link::Session(session))
    }

    pub async fn send(&mut self, any: Any) -> connect::Result<()> {
        each_link!(self, c => c.send(any).await)
    }

    pub async fn feed(&mut self, any: Any) -> connect::Result<()> {
        each_link!(self, c => c.feed(any).await)
    }

    pub async fn flush(&mut self) -> connect::Result<()> {
        each_link!(self, c => c.flush().await)
    }

    pub async fn recv(&mut self) -> connect::Result<Option<Any>> {
        each_link!(self, c => c.recv().await)
    }

    pub async fn close(&mut self) -> connect::Result<()> {
        each_link!(self, c => c.close().await)
    }

    /// Closes the link before the process exits. Over SCTP it also waits (bounded by the
    /// association's linger) for the peer's end of stream and SCTP's SHUTDOWN exchange: after
    /// a bare close the peer may still need this side's acknowledgements, and a process that
    /// exits at once leaves it retransmitting to nobody until its association times out.
    pub async fn finish(self) -> connect::Result<()> {
        match self {
            #[cfg(feature = "sctp")]
            Link::Sctp(c) => connect::transport::sctp::shutdown(c).await,
            mut link => link.close().await,
        }
    }
}

impl Link {
    /// The link as a [`Peer`] (for calls), its messages going to `dispatcher`.
    pub fn into_peer(self, dispatcher: Dispatcher) -> (Peer, PeerDriver) {
        let config = PeerConfig::new();
        each_link!(self, h => Peer::new(h, dispatcher, &config))
    }

    /// Adds the link to `endpoint` (for publish/subscribe).
    pub async fn join(self, endpoint: &Endpoint) -> connect::Result<LinkId> {
        each_link!(self, h => endpoint.add(h).await)
    }
}

fn spawn(task: connect::transport::Task) {
    async_std::task::spawn(task);
}

fn server_name(target: &Target, options: &LinkOptions) -> String {
    options
        .server_name
        .clone()
        .unwrap_or_else(|| target.host.clone())
}

async fn open_session<T>(conn: Connection<T>, config: &SessionConfig) -> anyhow::Result<Session>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (session, driver) = session::connect(conn, config)
        .await
        .context("the session handshake failed; check --user/--password or --token, and that the peer serves sessions")?;
    async_std::task::spawn(driver);
    Ok(session)
}

#[cfg(feature = "sctp")]
async fn sctp_connect(target: &Target) -> anyhow::Result<Link> {
    let conn = connect::transport::sctp::connect(target.addr)
        .await
        .with_context(|| format!("cannot connect to sctp://{}", target.addr))?;
    Ok(Link::Sctp(conn))
}

#[cfg(not(feature = "sctp"))]
async fn sctp_connect(target: &Target) -> anyhow::Result<Link> {
    bail!(
        "sctp://{}: this connect was not built with SCTP; rebuild with `--features sctp`",
        target.addr
    )
}

/// Accepts links on `target`, handing each (after its handshakes) to `serve` on its own task.
pub async fn listen<F, Fut>(target: &Target, options: &LinkOptions, serve: F) -> anyhow::Result<()>
where
    F: Fn(Link, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    let mode = Arc::new(ServerMode::new(options));
    match target.scheme {
        Scheme::Tcp => {
            let listener = TcpListener::bind(target.addr).await.with_context(|| {
                format!("cannot listen on {} (in use? try port 0)", target.addr)
            })?;
            announce(listener.local_addr()?);
            let mut incoming = listener.incoming();
            while let Some(conn) = incoming.next().await {
                let conn = match conn {
                    Ok(conn) => conn,
                    Err(e) => {
                        eprintln!("accept failed: {e}");
                        async_std::task::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (serve, mode) = (serve.clone(), mode.clone());
                async_std::task::spawn(async move {
                    let peer = peer_name(conn.info());
                    mode.serve(conn, Link::Tcp, peer, &*serve).await
                });
            }
        }
        Scheme::Tls => {
            let mut listener = TlsListener::bind(target.addr, options.tls_server()?)
                .await
                .with_context(|| {
                    format!("cannot listen on {} (in use? try port 0)", target.addr)
                })?;
            announce(listener.local_addr());
            while let Some(conn) = listener.next().await {
                let conn = match conn {
                    Ok(conn) => conn,
                    Err(e) => {
                        eprintln!("TLS accept failed: {e}");
                        continue;
                    }
                };
                let (serve, mode) = (serve.clone(), mode.clone());
                async_std::task::spawn(async move {
                    let peer = peer_name(conn.info());
                    mode.serve(conn, Link::Tls, peer, &*serve).await
                });
            }
        }
        Scheme::Ws { secure } => {
            let mut config = WsConfig::new().with_path(target.path.clone());
            if secure {
                config = config.with_tls_server(options.tls_server()?);
            }
            let listener = WsListener::bind(target.addr, config)
                .await
                .with_context(|| {
                    format!("cannot listen on {} (in use? try port 0)", target.addr)
                })?;
            announce(listener.local_addr()?);
            loop {
                let handshake = match listener.accept().await {
                    Ok(handshake) => handshake,
                    Err(e) => {
                        eprintln!("accept failed: {e}");
                        async_std::task::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (serve, mode) = (serve.clone(), mode.clone());
                async_std::task::spawn(async move {
                    let conn = match handshake.upgrade().await {
                        Ok(conn) => conn,
                        Err(e) => return eprintln!("WebSocket upgrade failed: {e}"),
                    };
                    let peer = peer_name(conn.info());
                    mode.serve(conn, Link::Ws, peer, &*serve).await
                });
            }
        }
        #[cfg(feature = "sctp")]
        Scheme::Sctp => {
            let listener = connect::transport::sctp::SctpListener::bind(target.addr)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on sctp://{} (in use? try port 0)",
                        target.addr
                    )
                })?;
            announce(listener.local_addr());
            loop {
                let conn = match listener.accept().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        eprintln!("SCTP accept failed: {e}");
                        continue;
                    }
                };
                let (serve, mode) = (serve.clone(), mode.clone());
                async_std::task::spawn(async move {
                    let peer = peer_name(conn.info());
                    mode.serve(conn, Link::Sctp, peer, &*serve).await
                });
            }
        }
        #[cfg(not(feature = "sctp"))]
        Scheme::Sctp => {
            bail!("this connect was not built with SCTP; rebuild with `--features sctp`")
        }
    }
    Ok(())
}

fn announce(addr: SocketAddr) {
    // Scripts and tests read the real port (ADDR may have port 0) from this first line.
    println!("listening on {addr}");
}

enum ServerMode {
    Bare,
    Session(Box<SessionConfig>),
    Reliable(ReliableServer),
}

impl ServerMode {
    fn new(options: &LinkOptions) -> Self {
        let config = options.server_session_config();
        if options.reliable {
            ServerMode::Reliable(ReliableServer::new(config, ReliableConfig::new()))
        } else if options.wants_session() {
            ServerMode::Session(Box::new(config))
        } else {
            ServerMode::Bare
        }
    }

    async fn serve<T, F, Fut>(
        &self,
        conn: Connection<T>,
        bare: impl FnOnce(Connection<T>) -> Link,
        peer: String,
        serve: &F,
    ) where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: Fn(Link, String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        match self {
            ServerMode::Bare => serve(bare(conn), peer).await,
            ServerMode::Session(config) => match session::accept(conn, config).await {
                Ok((session, driver)) => {
                    async_std::task::spawn(driver);
                    serve(Link::Session(session), peer).await
                }
                Err(e) => eprintln!("{peer}: session handshake failed: {e}"),
            },
            ServerMode::Reliable(server) => match server.accept(conn).await {
                Ok(Accepted::NewStream { stream, driver }) => {
                    async_std::task::spawn(driver);
                    serve(Link::Reliable(stream), peer).await
                }
                Ok(Accepted::Resumed { driver }) => driver.await,
                Ok(Accepted::Plain { session, driver }) => {
                    async_std::task::spawn(driver);
                    serve(Link::Session(session), peer).await
                }
                Ok(_) => {}
                Err(e) => eprintln!("{peer}: reliable handshake failed: {e}"),
            },
        }
    }
}

fn peer_name(info: &connect::ConnectionInfo) -> String {
    info.peer_addr()
        .map_or_else(|| info.to_string(), |addr| addr.to_string())
}
