//! The accepting side: streams outlive connections, for a bounded time and in bounded number.
//!
//! The stream table holds every stream the server carries or keeps for resumption, and a
//! tombstone for each stream closed gracefully within the resume timeout (so that a client
//! whose close was cut learns the stream is closed instead of opening a new one). Both are
//! bounded by `max_streams`; every accept sweeps expired entries, and each dropped link also
//! sweeps once its stream's resume timeout has passed.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use futures_io::{AsyncRead, AsyncWrite};

use super::link::{self, LinkEnd};
use super::shared::StreamEnd;
use super::{BoxFuture, Event, GiveUp, Inner, ReliableConfig, ReliableStream, CAPABILITY};
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::proto::reliable::{Resume, ResumeStatus};
use crate::proto::v1::ReasonCode;
use crate::session::{self, Session, SessionConfig, SessionDriver};

/// The longest `Resume.stream_id` accepted (clients of this crate send 16 bytes).
const MAX_STREAM_ID_LEN: usize = 64;

/// Accepts reliable streams, and keeps the state of those whose connection dropped so that
/// their client can resume them. Cheap to clone (shared).
#[derive(Clone)]
pub struct ReliableServer {
    shared: Arc<ServerShared>,
}

struct ServerShared {
    session_config: SessionConfig,
    config: ReliableConfig,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    streams: HashMap<Vec<u8>, Entry>,
    /// Streams closed gracefully, remembered for the resume timeout.
    closed: HashMap<Vec<u8>, Tombstone>,
}

struct Entry {
    inner: Arc<Inner>,
    /// Who opened the stream (the session's authenticated identity): only they resume it.
    identity: Option<String>,
    /// When the stream lost its connection, if it has none now.
    detached_since: Option<Instant>,
    /// Our name for this state of the stream (`Resume.incarnation`), never 0.
    incarnation: u64,
}

struct Tombstone {
    identity: Option<String>,
    since: Instant,
}

/// What the table makes of a client's `Resume`.
enum Decision {
    /// A link carries the stream now (attached as `generation`).
    Carry {
        inner: Arc<Inner>,
        generation: u64,
        incarnation: u64,
        status: ResumeStatus,
        new_stream: Option<ReliableStream>,
    },
    /// Answer with `status` and `reason`, then close the session.
    Answer(ResumeStatus, String),
}

impl std::fmt::Debug for ReliableServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReliableServer")
            .field("config", &self.shared.config)
            .field("streams", &self.stream_count())
            .finish_non_exhaustive()
    }
}

/// What [`ReliableServer::accept`] made of a connection: one case per kind of client.
///
/// Each case's `driver` does the connection's I/O: **spawn it** (or await it on the
/// connection's task).
#[derive(Debug)]
#[non_exhaustive]
// `Plain` holds a session driver by value, as `session::accept` returns it; an `Accepted` is
// made and moved once per connection, so its size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Accepted<T> {
    /// A stream the application has not seen yet.
    NewStream {
        /// The new stream.
        stream: ReliableStream,
        /// The connection's driver.
        driver: ServerDriver,
    },
    /// The connection resumed a kept stream, which goes on with the [`ReliableStream`] the
    /// application already has.
    Resumed {
        /// The connection's driver.
        driver: ServerDriver,
    },
    /// A client that did not ask for reliable delivery gets a plain session, as
    /// [`session::accept`] returns it.
    Plain {
        /// The session.
        session: Session,
        /// The session's driver.
        driver: SessionDriver<T>,
    },
}

/// A stream attached to the link a connection's driver runs. Dropped while the stream is still
/// attached to that link (the `accept` future or the driver cancelled before the link ended),
/// it detaches the stream like a dropped link: the sweep expires it unless its client comes
/// back. Otherwise (the link ended, or a newer one took over) it does nothing.
struct Attachment {
    server: ReliableServer,
    stream_id: Vec<u8>,
    inner: Arc<Inner>,
    generation: u64,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let still_attached = {
            let core = self.inner.lock();
            core.attached && core.generation == self.generation
        };
        if still_attached {
            self.server.detached(
                &self.stream_id,
                &self.inner,
                self.generation,
                "the connection's driver was dropped".into(),
            );
        }
    }
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
                table: Mutex::new(Table::default()),
            }),
        }
    }

    /// Streams currently kept (attached or waiting for resumption); expired ones are swept
    /// first.
    pub fn stream_count(&self) -> usize {
        let mut table = self.lock();
        self.sweep(&mut table);
        table.streams.len()
    }

    /// Streams closed gracefully that are still remembered (to answer a late resume with
    /// "closed"); at most `max_streams`, each for the resume timeout.
    pub fn closed_count(&self) -> usize {
        let mut table = self.lock();
        self.sweep(&mut table);
        table.closed.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.shared.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends and forgets streams detached for longer than the resume timeout, forgets ended
    /// streams (remembering those closed gracefully) and old tombstones.
    fn sweep(&self, table: &mut Table) {
        let now = Instant::now();
        let timeout = self.shared.config.resume_timeout;
        let expired = |since: Instant| now.saturating_duration_since(since) >= timeout;
        let mut closed = Vec::new();
        table.streams.retain(|id, e| {
            let mut core = e.inner.lock();
            if !core.attached && e.detached_since.is_some_and(expired) {
                core.finish(StreamEnd::Failed(GiveUp::Expired { after: timeout }));
            }
            match core.end() {
                None => true,
                Some(StreamEnd::Closed) => {
                    closed.push((id.clone(), e.identity.clone()));
                    false
                }
                Some(StreamEnd::Failed(_)) => false,
            }
        });
        for (id, identity) in closed {
            Self::remember_closed(&self.shared.config, table, id, identity, now);
        }
        table.closed.retain(|_, t| !expired(t.since));
    }

    fn remember_closed(
        config: &ReliableConfig,
        table: &mut Table,
        id: Vec<u8>,
        identity: Option<String>,
        now: Instant,
    ) {
        if table.closed.len() >= config.max_streams && !table.closed.contains_key(&id) {
            let oldest = table
                .closed
                .iter()
                .min_by_key(|(_, t)| t.since)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                table.closed.remove(&oldest);
            }
        }
        table.closed.insert(
            id,
            Tombstone {
                identity,
                since: now,
            },
        );
    }

    /// Runs the session handshake on `conn`, then the `Resume` exchange: the connection
    /// either resumes a kept stream (taking it over from an older connection that may not have
    /// noticed its drop yet) or starts a new one.
    ///
    /// A stream the server will not carry (too many streams, another identity, counts no
    /// honest client sends, a stream already closed) is answered with that `Resume` status
    /// and a reason before the session is closed.
    ///
    /// # Errors
    /// Any error of [`session::accept`]; [`Error::Reliable`] if the client sent no valid
    /// `Resume` in time, if the stream was answered without being carried (see above), or if
    /// the answer to a new stream could not be sent.
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
            return Ok(Accepted::Plain { session, driver });
        }
        let session_id = session.info().session_id().to_owned();
        let limit = self.shared.session_config.handshake_timeout();
        let mut driver = Box::pin(driver);
        let (mut reader, mut writer) = session.split();
        let request = link::with_driver(&mut driver, link::read_resume(&mut reader), limit).await;
        let request = match request {
            Some(Ok(request)) => request,
            Some(Err(why)) => return Err(Error::Reliable(why)),
            None => {
                return Err(Error::Reliable(GiveUp::ResumeFailed {
                    reason: "no Resume in time".into(),
                }))
            }
        };
        let stream_id = request.stream_id.clone();
        let identity = reader.info().identity().map(str::to_owned);
        let (inner, generation, new_stream, answer) =
            match self.decide(&request, identity, &session_id) {
                Decision::Carry {
                    inner,
                    generation,
                    incarnation,
                    status,
                    new_stream,
                } => {
                    let answer = {
                        let core = inner.lock();
                        let state = core.state();
                        let window = state.window();
                        Resume {
                            stream_id: stream_id.clone(),
                            received: state.received(),
                            resumed: status == ResumeStatus::Resumed,
                            acknowledged: state.acknowledged(),
                            window_messages: window.0,
                            window_bytes: window.1,
                            status: status as i32,
                            incarnation,
                            closing: false,
                            reason: String::new(),
                        }
                    };
                    (inner, generation, new_stream, answer)
                }
                Decision::Answer(status, reason) => {
                    log::info!(
                        "reliable server: stream answered {}: {reason}",
                        status.as_str_name()
                    );
                    let answer = Resume {
                        stream_id: if stream_id.len() <= MAX_STREAM_ID_LEN {
                            stream_id
                        } else {
                            Vec::new()
                        },
                        status: status as i32,
                        reason: reason.clone(),
                        ..Resume::default()
                    };
                    // The client reads the answer and leaves; the close is a courtesy.
                    let exchange = async {
                        writer.send(link::pack(&answer)).await?;
                        writer.close_with(ReasonCode::Normal, reason.clone()).await
                    };
                    let _ = link::with_driver(&mut driver, exchange, limit).await;
                    return Err(Error::Reliable(GiveUp::Refused { status, reason }));
                }
            };
        // From here on the stream is attached to this connection: every way out ends in a
        // running link, a detached stream the sweep expires, or a forgotten stream.
        let attachment = Attachment {
            server: self.clone(),
            stream_id: stream_id.clone(),
            inner: inner.clone(),
            generation,
        };
        let sent = link::with_driver(&mut driver, writer.send(link::pack(&answer)), limit).await;
        if !matches!(sent, Some(Ok(()))) {
            if new_stream.is_some() {
                // Nobody saw this stream: forget it (its client starts it again).
                self.forget(&stream_id, &inner);
                return Err(Error::Reliable(GiveUp::ResumeFailed {
                    reason: "could not answer Resume".into(),
                }));
            }
            // The connection dropped after the stream was attached to it: like any dropped
            // link, the driver waits for the client to come back and expires the stream if
            // it does not.
            let server = self.clone();
            let why = "could not answer Resume".to_owned();
            let run = async move {
                let _attachment = attachment;
                server
                    .link_ended(&stream_id, &inner, generation, LinkEnd::Dropped(why))
                    .await;
            };
            return Ok(Accepted::Resumed {
                driver: ServerDriver {
                    inner: Box::pin(run),
                },
            });
        }
        let server = self.clone();
        let run = async move {
            let _attachment = attachment;
            let end = link::run(driver, reader, writer, inner.clone(), generation).await;
            server.link_ended(&stream_id, &inner, generation, end).await;
        };
        let driver = ServerDriver {
            inner: Box::pin(run),
        };
        Ok(match new_stream {
            Some(stream) => Accepted::NewStream { stream, driver },
            None => Accepted::Resumed { driver },
        })
    }

    /// Looks the stream up and decides, under the table's lock: resume it, restart its
    /// numbering (the client never saw our answer for its current state), start a new one, or
    /// answer without carrying it. Attaches the stream when it is carried.
    fn decide(&self, request: &Resume, identity: Option<String>, session_id: &str) -> Decision {
        let config = &self.shared.config;
        let id = request.stream_id.as_slice();
        if id.is_empty() || id.len() > MAX_STREAM_ID_LEN {
            // Kept as a key of the table (and of a tombstone): bounded.
            return Decision::Answer(
                ResumeStatus::Refused,
                format!(
                    "stream_id of {} bytes (1 to {MAX_STREAM_ID_LEN}, normally 16)",
                    id.len()
                ),
            );
        }
        let mut table = self.lock();
        self.sweep(&mut table);
        if let Some(entry) = table.streams.get_mut(id) {
            if entry.identity != identity {
                return Decision::Answer(
                    ResumeStatus::Refused,
                    "stream opened by another identity".into(),
                );
            }
            let inner = entry.inner.clone();
            let mut core = inner.lock();
            let window = (request.window_messages, request.window_bytes);
            let status = if request.incarnation == entry.incarnation {
                match core.resume(request.received, request.acknowledged, window) {
                    Ok(retransmitted) => {
                        core.emit(Event::Resumed {
                            session_id: session_id.to_owned(),
                            retransmitted,
                        });
                        ResumeStatus::Resumed
                    }
                    Err(why) => {
                        // The stream stays as it was: attached to its link, or detached and
                        // expiring.
                        return Decision::Answer(
                            ResumeStatus::Refused,
                            format!("client broke the reliable protocol: {why}"),
                        );
                    }
                }
            } else if request.closing {
                // The client is done and never learned of this state of the stream: nothing
                // was exchanged on it, so it ends here.
                core.finish(StreamEnd::Closed);
                drop(core);
                let identity = entry.identity.clone();
                table.streams.remove(id);
                Self::remember_closed(config, &mut table, id.to_vec(), identity, Instant::now());
                return Decision::Answer(ResumeStatus::Closed, "stream closed".into());
            } else {
                // Nothing was exchanged on this state (the client sends nothing before our
                // answer, which it never saw): number both directions from 0 again.
                let retransmitted = core.restart_stream(window);
                core.emit(Event::Resumed {
                    session_id: session_id.to_owned(),
                    retransmitted,
                });
                ResumeStatus::NewStream
            };
            let generation = core.attach();
            drop(core);
            entry.detached_since = None;
            return Decision::Carry {
                inner,
                generation,
                incarnation: entry.incarnation,
                status,
                new_stream: None,
            };
        }
        if let Some(tomb) = table.closed.get(id) {
            return if tomb.identity == identity {
                Decision::Answer(ResumeStatus::Closed, "stream closed".into())
            } else {
                Decision::Answer(
                    ResumeStatus::Refused,
                    "stream opened by another identity".into(),
                )
            };
        }
        if request.closing {
            // A close never opens a stream.
            return Decision::Answer(ResumeStatus::Closed, "no such stream to close".into());
        }
        if table.streams.len() >= config.max_streams {
            let oldest = table
                .streams
                .iter()
                .filter_map(|(id, e)| e.detached_since.map(|t| (t, id.clone())))
                .min();
            match oldest {
                Some((_, old)) => {
                    if let Some(e) = table.streams.remove(&old) {
                        e.inner.lock().finish(StreamEnd::Failed(GiveUp::Evicted));
                    }
                }
                None => {
                    return Decision::Answer(
                        ResumeStatus::Busy,
                        format!("too many streams ({})", table.streams.len()),
                    )
                }
            }
        }
        let inner = Inner::new(config.clone());
        let generation = {
            let mut core = inner.lock();
            core.set_peer_window((request.window_messages, request.window_bytes));
            core.emit(Event::Connected {
                session_id: session_id.to_owned(),
                new_stream: false,
                retransmitted: 0,
            });
            core.attach()
        };
        let incarnation = loop {
            let n = getrandom::u64().unwrap_or_else(|_| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
            if n != 0 {
                break n;
            }
        };
        table.streams.insert(
            id.to_vec(),
            Entry {
                inner: inner.clone(),
                identity,
                detached_since: None,
                incarnation,
            },
        );
        Decision::Carry {
            inner: inner.clone(),
            generation,
            incarnation,
            status: ResumeStatus::NewStream,
            new_stream: Some(ReliableStream::new(inner)),
        }
    }

    /// Ends and removes a stream nobody has seen.
    fn forget(&self, stream_id: &[u8], inner: &Arc<Inner>) {
        let mut table = self.lock();
        if table
            .streams
            .get(stream_id)
            .is_some_and(|e| Arc::ptr_eq(&e.inner, inner))
        {
            table.streams.remove(stream_id);
        }
        inner.lock().finish(StreamEnd::Failed(GiveUp::ResumeFailed {
            reason: "the Resume answer was not sent".into(),
        }));
    }

    /// Link `generation` of the stream is gone without ending it: the stream waits for its
    /// client, and expires if it does not come back in time.
    fn detached(&self, stream_id: &[u8], inner: &Arc<Inner>, generation: u64, reason: String) {
        let mut table = self.lock();
        let mut core = inner.lock();
        if core.generation != generation {
            return;
        }
        core.detach(generation);
        if core.end().is_none() {
            log::info!("reliable server: stream disconnected: {reason}");
            core.emit(Event::Disconnected { reason });
        }
        drop(core);
        if let Some(entry) = table.streams.get_mut(stream_id) {
            if Arc::ptr_eq(&entry.inner, inner) {
                entry.detached_since = Some(Instant::now());
            }
        }
    }

    async fn link_ended(
        &self,
        stream_id: &[u8],
        inner: &Arc<Inner>,
        generation: u64,
        end: LinkEnd,
    ) {
        match end {
            LinkEnd::Superseded => return,
            LinkEnd::Closed => inner.lock().finish(StreamEnd::Closed),
            LinkEnd::Fatal(why) => inner.lock().finish(StreamEnd::Failed(why)),
            LinkEnd::Dropped(reason) => {
                self.detached(stream_id, inner, generation, reason);
                // Wait for the client to come back; the sweep expires the stream if it has
                // not (any accept sweeps too).
                futures_timer::Delay::new(self.shared.config.resume_timeout).await;
            }
        }
        {
            let mut core = inner.lock();
            core.detach(generation);
        }
        let mut table = self.lock();
        self.sweep(&mut table);
    }
}
