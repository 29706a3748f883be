//! What the echo servers share (`tcp-echo-server`, `tls-echo-server`): the session and
//! reliable-stream options, and serving one accepted connection in the chosen mode. Included by
//! each with `#[path = "common/echo.rs"] mod echo;`, so every transport serves the same modes
//! the same way.
//!
//! The echo is byte-exact for every type: the dispatcher's fallback hands back the `Any` as it
//! arrived (type URL and value bytes untouched, unknown fields included), never a re-encoded copy.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use connect::dispatch::{Context, Dispatcher, Reply};
use connect::prost_types::Any;
use connect::reliable::{Accepted, ReliableConfig, ReliableServer, ReliableStream};
use connect::session::{self, PlainAuthenticator, SessionConfig};
use connect::Connection;
use futures::{AsyncRead, AsyncWrite};

/// Usage lines for the options below.
pub const OPTIONS_USAGE: &str = "\
[--session] [--user NAME --password PW]
  [--heartbeat-ms MS | --no-heartbeats] [--handshake-timeout-ms MS] [--reliable [--ack-every N]]
  --session                  sessions (anonymous clients) instead of bare frames
  --user NAME --password PW  the one PLAIN account the server accepts (implies --session)
  --heartbeat-ms MS          heartbeat interval the server wishes for (default 10000);
                             0 = no preference: no heartbeats unless the client asks for them
  --no-heartbeats            same as --heartbeat-ms 0
  --handshake-timeout-ms MS  time a client has to send its Hello (default 10000, at least 1)
  --reliable                 reliable streams (implies --session; plain session clients are
                             still served)
  --ack-every N              confirm only every N messages (or at half the receive window)";

/// The serving mode, from the command line.
#[derive(Default)]
pub struct Options {
    pub session: bool,
    pub user: Option<String>,
    pub password: Option<String>,
    pub heartbeat_ms: Option<u64>,
    pub handshake_timeout_ms: Option<u64>,
    pub reliable: bool,
    pub ack_every: Option<u64>,
}

impl Options {
    /// Takes `arg` (and its value from `rest`) if it is one of ours; `Ok(false)` otherwise.
    pub fn parse(
        &mut self,
        arg: &str,
        rest: &mut impl Iterator<Item = String>,
    ) -> anyhow::Result<bool> {
        let mut value = || rest.next().with_context(|| format!("{arg} needs a value"));
        match arg {
            "--session" => self.session = true,
            "--reliable" => self.reliable = true,
            "--ack-every" => self.ack_every = Some(value()?.parse()?),
            "--user" => self.user = Some(value()?),
            "--password" => self.password = Some(value()?),
            "--heartbeat-ms" => self.heartbeat_ms = Some(value()?.parse()?),
            "--no-heartbeats" => self.heartbeat_ms = Some(0),
            "--handshake-timeout-ms" => {
                let ms: u64 = value()?.parse()?;
                anyhow::ensure!(ms > 0, "--handshake-timeout-ms must be at least 1");
                self.handshake_timeout_ms = Some(ms);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// How connections are served: bare frames, sessions, or reliable streams (which still
    /// serve plain session clients).
    pub fn mode(&self, name: &str) -> anyhow::Result<Mode> {
        // With credentials or --session: sessions. Otherwise bare frames.
        let config = match (&self.user, &self.password) {
            (Some(user), Some(password)) => {
                let auth = PlainAuthenticator::new().with_user(user, password);
                SessionConfig::new().with_authenticator(auth)
            }
            (None, None) if self.session || self.reliable => SessionConfig::new(),
            (None, None) => return Ok(Mode::Bare),
            _ => anyhow::bail!("--user and --password go together"),
        };
        let mut config = config.with_property("name", name);
        config = match self.heartbeat_ms {
            // 0 is "no preference", as in the Hello: not a 0 ms (raised to 10 ms) wish.
            Some(0) => config.with_heartbeat(None),
            Some(ms) => config.with_heartbeat(Some(Duration::from_millis(ms))),
            None => config,
        };
        if let Some(ms) = self.handshake_timeout_ms {
            config = config.with_handshake_timeout(Duration::from_millis(ms));
        }
        if !self.reliable {
            return Ok(Mode::Session(Arc::new(config)));
        }
        let mut reliable = ReliableConfig::new();
        if let Some(n) = self.ack_every {
            reliable = reliable
                .with_ack_every(n)
                .with_ack_delay(Duration::from_secs(3600))
                .with_ack_when_caught_up(false);
        }
        Ok(Mode::Reliable(ReliableServer::new(config, reliable)))
    }
}

/// How each connection is served.
#[derive(Clone)]
pub enum Mode {
    Bare,
    Session(Arc<SessionConfig>),
    Reliable(ReliableServer),
}

/// Echoes every message back unchanged: the fallback handler gets the `Any` as it arrived.
pub fn dispatcher() -> Arc<Dispatcher> {
    Arc::new(
        Dispatcher::new().fallback(|any: Any, _: Context| async move {
            Ok::<_, connect::Error>(Reply::any(any))
        }),
    )
}

/// Serves one accepted connection until it ends.
pub async fn serve<T>(
    conn: Connection<T>,
    mode: Mode,
    dispatcher: &Dispatcher,
) -> connect::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match mode {
        Mode::Bare => dispatcher.serve(conn).await,
        Mode::Session(config) => {
            let (session, driver) = session::accept(conn, &config).await?;
            async_std::task::spawn(driver);
            log::info!(
                "{} open, identity {:?}",
                session.info(),
                session.info().identity()
            );
            dispatcher.serve(session).await
        }
        Mode::Reliable(server) => {
            match server.accept(conn).await? {
                Accepted::Plain { session, driver } => {
                    async_std::task::spawn(driver);
                    return dispatcher.serve(session).await;
                }
                Accepted::NewStream { stream, driver } => {
                    async_std::task::spawn(echo_stream(stream));
                    driver.await;
                }
                // A resumed stream goes on with the echo task of its first connection.
                Accepted::Resumed { driver } => driver.await,
                _ => {}
            }
            Ok(())
        }
    }
}

async fn echo_stream(mut stream: ReliableStream) {
    loop {
        match stream.recv().await {
            Ok(Some(any)) => {
                if let Err(e) = stream.feed(any).await {
                    log::warn!("reliable stream: {e}");
                    return;
                }
            }
            Ok(None) => return log::info!("reliable stream closed"),
            Err(e) => return log::warn!("reliable stream: {e}"),
        }
    }
}
