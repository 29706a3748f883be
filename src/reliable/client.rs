//! The connecting side: a stream that reconnects by itself.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_io::{AsyncRead, AsyncWrite};

use super::link::{self, LinkEnd};
use super::shared::StreamEnd;
use super::{BoxFuture, Event, GiveUp, Inner, ReliableConfig, ReliableStream, CAPABILITY};
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::proto::reliable::{Resume, ResumeStatus};
use crate::proto::v1::ReasonCode;
use crate::session::{self, SessionConfig, SessionEnd};

/// How long to wait between reconnection attempts: `initial`, multiplied by `multiplier` after
/// each failed attempt up to `max`, each delay shortened by a random fraction of up to `jitter`
/// (so that many clients do not reconnect in lockstep); optionally at most `max_attempts`
/// attempts in a row before the stream is given up.
///
/// ```
/// use connect::reliable::Backoff;
/// use std::time::Duration;
///
/// let backoff = Backoff::new().with_initial(Duration::from_millis(10)).with_max(Duration::from_secs(1))
///     .with_max_attempts(Some(20));
/// assert!(backoff.delay(1) <= Duration::from_millis(10));
/// assert!(backoff.delay(30) <= Duration::from_secs(1));
/// ```
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: f64,
    max_attempts: Option<u32>,
}

impl Default for Backoff {
    /// 100 ms doubling up to 10 s, jitter 0.5, no limit on attempts.
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// 100 ms doubling up to 10 s, jitter 0.5, no limit on attempts. Same as `default()`.
    pub fn new() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.5,
            max_attempts: None,
        }
    }

    /// Delay before the first retry (default 100 ms).
    pub fn with_initial(mut self, initial: Duration) -> Self {
        self.initial = initial;
        self
    }

    /// Longest delay between two attempts (default 10 s); never less than the
    /// [initial delay](Self::with_initial).
    pub fn with_max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// Factor applied after each failed attempt (at least 1).
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            2.0
        };
        self
    }

    /// Largest fraction (0 to 1) by which a delay is randomly shortened.
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Give the stream up after this many failed attempts in a row (`None`: never).
    pub fn with_max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// See [`with_max_attempts`](Self::with_max_attempts).
    pub fn max_attempts(&self) -> Option<u32> {
        self.max_attempts
    }

    /// The delay before attempt `attempt` (1-based), jitter included.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .powi(i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX));
        let base = self.initial.as_secs_f64() * exp;
        let base = base.min(self.max.max(self.initial).as_secs_f64());
        let random = getrandom::u64().unwrap_or(0) as f64 / u64::MAX as f64;
        // `max` may be `Duration::MAX`, which as seconds rounds up past what a `Duration` holds.
        Duration::try_from_secs_f64((base * (1.0 - self.jitter * random)).max(0.0))
            .unwrap_or(self.max)
    }
}

/// Drives a client stream: connects, runs the session, reconnects with backoff. **Spawn it**;
/// it resolves once the stream is over (closed, or given up).
#[must_use = "a reliable client makes no progress unless its driver is polled (spawn it)"]
pub struct ClientDriver {
    inner: BoxFuture<()>,
}

impl std::fmt::Debug for ClientDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientDriver").finish_non_exhaustive()
    }
}

impl Future for ClientDriver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.as_mut().poll(cx)
    }
}

/// Opens a reliable stream as the connecting side. `connector` makes a fresh [`Connection`]
/// (TCP, TLS, any runtime) for each attempt (one that takes longer than the session's
/// handshake timeout counts as failed); the session handshake runs with
/// `session_config` plus the [`CAPABILITY`]. Messages can be sent at once: they wait in the
/// bounded queue until a connection carries them.
///
/// The stream is given up (the reader yields [`Error::Reliable`], [`Event::Closed`] says why)
/// when the backoff's attempts run out, when the server refuses authentication or the version,
/// or when it does not support reliable delivery.
pub fn client<C, F, T>(
    mut connector: C,
    session_config: SessionConfig,
    config: ReliableConfig,
) -> (ReliableStream, ClientDriver)
where
    C: FnMut() -> F + Send + 'static,
    F: Future<Output = Result<Connection<T>>> + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let inner = Inner::new(config.clone());
    let session = ReliableStream::new(inner.clone());
    let session_config = session_config.with_capability(CAPABILITY);
    let mut stream_id = vec![0u8; 16];
    if getrandom::fill(&mut stream_id).is_err() {
        // Unique within the process is enough for a server that sees one process per stream.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        stream_id.copy_from_slice(&nanos.to_le_bytes());
    }
    let handshake_limit = session_config.handshake_timeout();
    let driver = async move {
        let mut attempt: u32 = 0;
        let mut connected_before = false;
        // What the last failed attempt reported (for `GiveUp::AttemptsExhausted`).
        let mut last_error: Option<String> = None;
        // The server's name for the state of the stream we last heard of (0: none yet).
        let mut incarnation: u64 = 0;
        loop {
            if inner.lock().end().is_some() {
                return;
            }
            if attempt > 0 {
                if let Some(max) = config.backoff.max_attempts {
                    if attempt > max {
                        inner
                            .lock()
                            .finish(StreamEnd::Failed(GiveUp::AttemptsExhausted {
                                attempts: max,
                                last_error: last_error.take(),
                            }));
                        return;
                    }
                }
                let delay = config.backoff.delay(attempt);
                inner.lock().emit(Event::Reconnecting { attempt, delay });
                futures_timer::Delay::new(delay).await;
                if inner.lock().end().is_some() {
                    return;
                }
            }
            attempt += 1;
            // A connector that hangs (a black-holed address) counts as a failed attempt.
            let connecting = futures_util::future::select(
                Box::pin(connector()),
                futures_timer::Delay::new(handshake_limit),
            );
            let conn = match connecting.await {
                futures_util::future::Either::Left((Ok(conn), _)) => conn,
                futures_util::future::Either::Left((Err(e), _)) => {
                    log::debug!("reliable client: connecting failed: {e}");
                    last_error = Some(e.to_string());
                    continue;
                }
                futures_util::future::Either::Right(_) => {
                    log::debug!("reliable client: connecting timed out");
                    last_error = Some(format!("connecting timed out after {handshake_limit:?}"));
                    continue;
                }
            };
            let (session, driver) = match session::connect(conn, &session_config).await {
                Ok(pair) => pair,
                Err(Error::Session(SessionEnd::Refused { code, reason }))
                    if matches!(
                        code,
                        ReasonCode::AuthenticationFailed | ReasonCode::UnsupportedVersion
                    ) =>
                {
                    inner
                        .lock()
                        .finish(StreamEnd::Failed(GiveUp::SessionRefused { code, reason }));
                    return;
                }
                Err(e) => {
                    log::debug!("reliable client: handshake failed: {e}");
                    last_error = Some(e.to_string());
                    continue;
                }
            };
            let session_id = session.info().session_id().to_owned();
            if !session
                .info()
                .capabilities()
                .iter()
                .any(|c| c == CAPABILITY)
            {
                inner.lock().finish(StreamEnd::Failed(GiveUp::NotSupported));
                return;
            }
            let mut driver = Box::pin(driver);
            let (mut reader, mut writer) = session.split();
            // Attach (nothing else runs on the stream now) and tell the server what we have.
            let (generation, resume) = {
                let mut core = inner.lock();
                let resume = Resume {
                    stream_id: stream_id.clone(),
                    received: core.state().received(),
                    resumed: false,
                    acknowledged: core.state().acknowledged(),
                    window_messages: core.state().window().0,
                    window_bytes: core.state().window().1,
                    status: 0,
                    incarnation,
                    closing: core.close_requested && core.drained(),
                    reason: String::new(),
                };
                (core.attach(), resume)
            };
            let exchange = async {
                writer
                    .send(link::pack(&resume))
                    .await
                    .map_err(|e| GiveUp::ResumeFailed {
                        reason: e.to_string(),
                    })?;
                link::read_resume(&mut reader).await
            };
            let answer = match link::with_driver(&mut driver, exchange, handshake_limit).await {
                Some(Ok(answer)) => answer,
                Some(Err(why)) => {
                    inner.lock().detach(generation);
                    log::debug!("reliable client: resume failed: {why}");
                    last_error = Some(why.to_string());
                    inner.lock().emit(Event::Disconnected {
                        reason: why.to_string(),
                    });
                    continue;
                }
                None => {
                    inner.lock().detach(generation);
                    let reason = "no Resume from the server in time".to_owned();
                    last_error = Some(reason.clone());
                    inner.lock().emit(Event::Disconnected { reason });
                    continue;
                }
            };
            {
                let mut core = inner.lock();
                // An older server sets only `resumed`.
                let status = match ResumeStatus::try_from(answer.status) {
                    Ok(ResumeStatus::Unspecified) if answer.resumed => ResumeStatus::Resumed,
                    Ok(ResumeStatus::Unspecified) => ResumeStatus::NewStream,
                    Ok(status) => status,
                    Err(_) => {
                        core.detach(generation);
                        core.finish(StreamEnd::Failed(GiveUp::ProtocolViolation {
                            reason: format!(
                                "server answered Resume with unknown status {}",
                                answer.status
                            ),
                        }));
                        return;
                    }
                };
                let reason = super::quoted(&answer.reason);
                match status {
                    ResumeStatus::Resumed | ResumeStatus::Unspecified => {
                        let window = (answer.window_messages, answer.window_bytes);
                        match core.resume(answer.received, answer.acknowledged, window) {
                            Ok(retransmitted) => core.emit(Event::Resumed {
                                session_id,
                                retransmitted,
                            }),
                            Err(why) => {
                                core.detach(generation);
                                core.finish(StreamEnd::Failed(GiveUp::ProtocolViolation {
                                    reason: why,
                                }));
                                return;
                            }
                        }
                    }
                    ResumeStatus::NewStream if core.close_requested && core.drained() => {
                        // An older server that lost the stream: the close is complete, and a
                        // close never opens a stream.
                        core.detach(generation);
                        core.finish(StreamEnd::Closed);
                        return;
                    }
                    ResumeStatus::NewStream => {
                        let window = (answer.window_messages, answer.window_bytes);
                        let retransmitted = core.restart_stream(window);
                        core.emit(Event::Connected {
                            session_id,
                            new_stream: connected_before,
                            retransmitted,
                        });
                    }
                    ResumeStatus::Closed => {
                        core.detach(generation);
                        core.finish(StreamEnd::Closed);
                        return;
                    }
                    ResumeStatus::Busy => {
                        core.detach(generation);
                        core.emit(Event::Disconnected {
                            reason: format!("server busy: {reason}"),
                        });
                        continue;
                    }
                    ResumeStatus::Refused => {
                        core.detach(generation);
                        core.finish(StreamEnd::Failed(GiveUp::Refused {
                            status,
                            reason: reason.to_string(),
                        }));
                        return;
                    }
                }
                incarnation = answer.incarnation;
            }
            connected_before = true;

            let end = link::run(driver, reader, writer, inner.clone(), generation).await;
            let mut core = inner.lock();
            core.detach(generation);
            match end {
                LinkEnd::Closed => {
                    core.finish(StreamEnd::Closed);
                    return;
                }
                LinkEnd::Fatal(why) => {
                    core.finish(StreamEnd::Failed(why));
                    return;
                }
                LinkEnd::Dropped(reason) => {
                    log::info!("reliable client: disconnected: {reason}");
                    last_error = Some(reason.clone());
                    core.emit(Event::Disconnected { reason });
                    attempt = 1;
                }
                LinkEnd::Superseded => return,
            }
        }
    };
    let driver = ClientDriver {
        inner: Box::pin(driver),
    };
    (session, driver)
}
