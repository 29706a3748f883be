//! The accepting side: streams outlive connections, for a bounded time and in bounded number.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use futures_io::{AsyncRead, AsyncWrite};

use super::core::StreamEnd;
use super::link::{self, LinkEnd};
use super::{BoxFuture, Event, Inner, ReliableConfig, ReliableSession, CAPABILITY};
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::proto::reliable::Resume;
use crate::session::{self, Session, SessionConfig, SessionDriver};

/// Accepts reliable streams, and keeps the state of those whose connection dropped so that
/// their client can resume them. Cheap to clone (shared).
#[derive(Clone)]
pub struct ReliableServer {
    shared: Arc<ServerShared>,
}

struct ServerShared {
    session_config: SessionConfig,
    config: ReliableConfig,
    streams: Mutex<HashMap<Vec<u8>, Entry>>,
}

struct Entry {
    inner: Arc<Inner>,
    /// Who opened the stream (the session's authenticated identity): only they resume it.
    identity: Option<String>,
    /// When the stream lost its connection, if it has none now.
    detached_since: Option<Instant>,
}

impl std::fmt::Debug for ReliableServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReliableServer")
            .field("config", &self.shared.config)
            .field("streams", &self.stream_count())
            .finish_non_exhaustive()
    }
}

/// What [`ReliableServer::accept`] made of a connection.
#[derive(Debug)]
pub struct Accepted<T> {
    /// A stream the application has not seen yet (`None` when the connection resumed a
    /// stream, which goes on with its existing [`ReliableSession`], or for a plain session).
    pub new_stream: Option<ReliableSession>,
    /// The connection's driver: **spawn it** (or await it on the connection's task). For a
    /// plain session it does nothing.
    pub driver: ServerDriver,
    /// A client that did not ask for reliable delivery gets a plain session, as
    /// [`session::accept`] returns it; its driver must be spawned too.
    pub plain: Option<(Session, SessionDriver<T>)>,
}

/// Runs one connection of a reliable stream; resolves when the connection is over (and, if it
/// dropped, once the stream was resumed elsewhere or expired).
#[must_use = "the connection makes no progress unless its driver is polled (spawn it)"]
pub struct ServerDriver {
    inner: BoxFuture<()>,
}

impl std::fmt::Debug for ServerDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerDriver").finish_non_exhaustive()
    }
}

impl Future for ServerDriver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.as_mut().poll(cx)
    }
}

impl ReliableServer {
    /// A server with the given session settings (the [`CAPABILITY`] is added) and stream
    /// settings.
    pub fn new(session_config: SessionConfig, config: ReliableConfig) -> Self {
        Self {
            shared: Arc::new(ServerShared {
                session_config: session_config.with_capability(CAPABILITY),
                config,
                streams: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Streams currently kept (attached or waiting for resumption).
    pub fn stream_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Entry>> {
        self.shared
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the session handshake on `conn`, then the `Resume` exchange: the connection
    /// either resumes a kept stream (taking it over from an older connection that may not have
    /// noticed its drop yet) or starts a new one.
    ///
    /// # Errors
    /// Any error of [`session::accept`]; [`Error::Reliable`] if the client sent no valid
    /// `Resume` in time, or too many streams are attached.
    pub async fn accept<T>(&self, conn: Connection<T>) -> Result<Accepted<T>>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (session, driver) = session::accept(conn, &self.shared.session_config).await?;
        if !session
            .info()
            .capabilities()
            .iter()
            .any(|c| c == CAPABILITY)
        {
            return Ok(Accepted {
                new_stream: None,
                driver: ServerDriver {
                    inner: Box::pin(async {}),
                },
                plain: Some((session, driver)),
            });
        }
        let session_id = session.info().session_id().to_owned();
        let limit = self.shared.session_config.handshake_timeout();
        let mut driver = Box::pin(driver);
        let (mut reader, mut writer) = session.split();
        let request = link::with_driver(&mut driver, link::read_resume(&mut reader), limit).await;
        let request = match request {
            Some(Ok(request)) => request,
            Some(Err(why)) => return Err(Error::Reliable(why)),
            None => return Err(Error::Reliable("no Resume in time".into())),
        };
        let stream_id = request.stream_id.clone();
        let identity = reader.info().identity().map(str::to_owned);
        let (inner, new_stream) = self.find_or_create(&stream_id, identity)?;
        let (generation, received, acknowledged, window) = {
            let mut core = inner.lock();
            core.set_peer_window(request.window_messages, request.window_bytes);
            (
                core.attach(),
                core.received(),
                core.acknowledged(),
                core.window(),
            )
        };
        {
            let mut core = inner.lock();
            if new_stream.is_some() {
                core.emit(Event::Connected {
                    session_id,
                    new_stream: false,
                    retransmitted: 0,
                });
            } else {
                core.peer_resumed(request.acknowledged);
                match core.resume_from(request.received) {
                    Ok(retransmitted) => core.emit(Event::Resumed {
                        session_id,
                        retransmitted,
                    }),
                    Err(why) => {
                        core.detach(generation);
                        return Err(Error::Reliable(format!(
                            "client broke the reliable protocol: {why}"
                        )));
                    }
                }
            }
        }
        let answer = Resume {
            stream_id: stream_id.clone(),
            received,
            resumed: new_stream.is_none(),
            acknowledged,
            window_messages: window.0,
            window_bytes: window.1,
        };
        let sent =
            link::with_driver(&mut driver, writer.send_any(link::pack(&answer)), limit).await;
        if !matches!(sent, Some(Ok(()))) {
            inner.lock().detach(generation);
            return Err(Error::Reliable("could not answer Resume".into()));
        }
        let server = self.clone();
        let run = async move {
            let end = link::run(driver, reader, writer, inner.clone(), generation).await;
            server.link_ended(&stream_id, &inner, generation, end).await;
        };
        Ok(Accepted {
            new_stream,
            driver: ServerDriver {
                inner: Box::pin(run),
            },
            plain: None,
        })
    }

    fn find_or_create(
        &self,
        stream_id: &[u8],
        identity: Option<String>,
    ) -> Result<(Arc<Inner>, Option<ReliableSession>)> {
        let mut streams = self.lock();
        if let Some(entry) = streams.get_mut(stream_id) {
            if entry.identity != identity {
                return Err(Error::Reliable("stream opened by another identity".into()));
            }
            if entry.inner.lock().end().is_none() {
                entry.detached_since = None;
                return Ok((entry.inner.clone(), None));
            }
            streams.remove(stream_id);
        }
        // Expired and ended streams go first; then, if full, the longest-detached one.
        let now = Instant::now();
        let timeout = self.shared.config.resume_timeout;
        streams.retain(|_, e| {
            e.inner.lock().end().is_none()
                && e.detached_since
                    .is_none_or(|t| now.duration_since(t) < timeout)
        });
        if streams.len() >= self.shared.config.max_streams {
            let oldest = streams
                .iter()
                .filter_map(|(id, e)| e.detached_since.map(|t| (t, id.clone())))
                .min();
            match oldest {
                Some((_, id)) => {
                    if let Some(e) = streams.remove(&id) {
                        e.inner.lock().finish(StreamEnd::Failed(
                            "dropped to make room for another stream".into(),
                        ));
                    }
                }
                None => {
                    return Err(Error::Reliable(format!(
                        "too many streams ({})",
                        streams.len()
                    )))
                }
            }
        }
        let inner = Inner::new(self.shared.config.clone());
        streams.insert(
            stream_id.to_vec(),
            Entry {
                inner: inner.clone(),
                identity,
                detached_since: None,
            },
        );
        Ok((inner.clone(), Some(ReliableSession::new(inner))))
    }

    async fn link_ended(
        &self,
        stream_id: &[u8],
        inner: &Arc<Inner>,
        generation: u64,
        end: LinkEnd,
    ) {
        {
            let mut core = inner.lock();
            core.detach(generation);
            match end {
                LinkEnd::Superseded => return,
                LinkEnd::Closed => core.finish(StreamEnd::Closed),
                LinkEnd::Fatal(why) => core.finish(StreamEnd::Failed(why)),
                LinkEnd::Dropped(reason) => {
                    log::info!("reliable server: stream disconnected: {reason}");
                    core.emit(Event::Disconnected { reason });
                }
            }
        }
        if inner.lock().end().is_none() {
            if let Some(entry) = self.lock().get_mut(stream_id) {
                entry.detached_since = Some(Instant::now());
            }
            // Wait for the client to come back; expire the stream if it does not.
            futures_timer::Delay::new(self.shared.config.resume_timeout).await;
            let mut core = inner.lock();
            if core.generation != generation || core.end().is_some() {
                return;
            }
            core.finish(StreamEnd::Failed(format!(
                "not resumed within {:?}",
                self.shared.config.resume_timeout
            )));
            // Lock order: the stream table before a stream, never the reverse.
            drop(core);
        }
        let mut streams = self.lock();
        if streams
            .get(stream_id)
            .is_some_and(|e| Arc::ptr_eq(&e.inner, inner))
        {
            streams.remove(stream_id);
        }
    }
}
