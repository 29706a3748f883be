//! What every layer counts: a cheap snapshot from each handle and, with the cargo feature
//! `metrics`, the same counts through the [`metrics`](https://docs.rs/metrics) crate's facade,
//! so any exporter (Prometheus, StatsD, ...) shows them.
//!
//! ## Snapshots
//!
//! Each handle answers `stats()` with a plain `Copy` struct; nothing is reset by reading.
//!
//! | snapshot | from | counter | unit | meaning |
//! |---|---|---|---|---|
//! | [`ConnectionStats`] | [`Connection::stats`](crate::Connection::stats), [`ConnectionReader::stats`](crate::ConnectionReader::stats), [`ConnectionWriter::stats`](crate::ConnectionWriter::stats) | `frames_received`, `frames_sent` | frames | delimited-`Any` frames cut from the byte stream / encoded into the write buffer (control frames included) |
//! | | | `bytes_received`, `bytes_sent` | bytes | those frames' bytes, length prefix included |
//! | [`SessionStats`](crate::session::SessionStats) | [`Session::stats`](crate::session::Session::stats) and its halves | `frames_*`, `bytes_*` | frames, bytes | the session's connection, as above (handshake and heartbeats included), as of the driver's last round |
//! | | | `rtt` | duration | latest heartbeat round-trip time (`None` until measured) |
//! | | | `control_frames_queued`, `control_bytes_queued`(`_peak`) | frames, bytes | control replies waiting to go out (bounded) |
//! | | | `received_bytes_queued` | bytes | received messages waiting for the application (queue depth) |
//! | | | `pongs_coalesced`, `read_pauses` | events | Pings answered by a later Pong; reads paused for a peer not taking our replies |
//! | [`reliable::Stats`](crate::reliable::Stats) | [`ReliableStream::stats`](crate::reliable::ReliableStream::stats) | `outgoing_messages`/`_bytes`, `inbound_messages`/`_bytes` | messages, bytes | queue depths: held until confirmed; waiting for the application |
//! | | | `sent`, `confirmed`, `refused` | messages | distinct messages written, confirmed, refused by the peer |
//! | | | `connections`, `reconnects`, `resumes` | links | connections that carried the stream; those after the first; resumptions of the stream on a new connection |
//! | | | `retransmitted` | messages | messages sent again after a reconnection |
//! | [`PublisherStats`](crate::pubsub::PublisherStats) | [`Publisher::stats`](crate::pubsub::Publisher::stats) | `dropped` | messages | dropped for a full subscriber queue ([`SlowSubscriber::Drop`](crate::pubsub::SlowSubscriber::Drop)) |
//! | | | `disconnected`, `dropped_on_disconnect` | links, messages | subscribers cut off for being slow ([`SlowSubscriber::Disconnect`](crate::pubsub::SlowSubscriber::Disconnect)) and the messages dropped with their queues |
//! | | | `queued_messages`, `queued_bytes` | messages, bytes | queue depths over every subscriber link |
//! | [`EndpointStats`](crate::endpoint::EndpointStats) | [`Endpoint::stats`](crate::endpoint::Endpoint::stats) | `links` | links | links up now |
//! | | | `joined`, `left`, `left_with_error`, `reconnects` | links | links that joined, that left (not gracefully), connected links after the first to their target |
//! | | | `connect_failures`, `accept_errors` | attempts | failed connection attempts; failures of a listening socket itself |
//! | | | `handshake_failures` | handshakes | accepted connections whose TLS or session handshake failed, by [`HandshakeFailure`] reason |
//!
//! Work queues (issue 15) bring their own `QueueStats` snapshot (depths, in flight,
//! redeliveries); it joins this table, and its counters the facade under `connect_queue_*`.
//!
//! ## Through the `metrics` facade (feature `metrics`)
//!
//! With the feature on, the layers report to whatever recorder the application installed
//! (`metrics-exporter-prometheus`, a StatsD exporter, ...); without it the crate does not depend
//! on `metrics` and nothing below is compiled. Names are stable:
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `connect_frames_received_total`, `connect_frames_sent_total` | counter | | frames, all connections (sessions and reliable links included) |
//! | `connect_bytes_received_total`, `connect_bytes_sent_total` | counter | | their bytes, length prefixes included |
//! | `connect_sessions_opened_total` | counter | | sessions whose handshake completed |
//! | `connect_sessions_ended_total` | counter | `graceful` (`true`/`false`) | sessions over |
//! | `connect_sessions_open` | gauge | | sessions open now |
//! | `connect_session_rtt_seconds` | histogram | | each heartbeat round-trip time measured |
//! | `connect_reliable_reconnects_total` | counter | | reliable-stream links after a stream's first |
//! | `connect_reliable_resumes_total` | counter | | streams resumed on a new link |
//! | `connect_reliable_retransmissions_total` | counter | | messages sent again after a reconnection |
//! | `connect_pubsub_dropped_total` | counter | `policy` (`drop`/`disconnect`) | messages a publisher dropped for slow subscribers |
//! | `connect_pubsub_disconnects_total` | counter | | subscribers disconnected for being slow |
//! | `connect_endpoint_links` | gauge | | endpoint links up now (all endpoints) |
//! | `connect_links_joined_total` | counter | `origin` (`accepted`/`connected`/`added`) | endpoint links that joined |
//! | `connect_links_left_total` | counter | `graceful` | endpoint links that left |
//! | `connect_endpoint_reconnects_total` | counter | | connected links after the first to their target |
//! | `connect_connect_failures_total` | counter | | failed connection attempts of endpoints |
//! | `connect_accept_errors_total` | counter | | errors of a listening socket itself |
//! | `connect_handshake_failures_total` | counter | `reason` ([`HandshakeFailure::as_str`]) | accepted connections whose handshake failed |
//!
//! Frame counts are kept in the plain state a connection already owns and handed to the facade
//! once per read or write call to the transport (and when the connection is dropped), so a
//! scrape can lag a busy connection by at most one system call's frames. Labels stay few and
//! bounded (no per-link or per-address label: a scrape's size must not grow with the peers).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, TlsError};
use crate::proto::v1::ReasonCode;
use crate::session::SessionEnd;

/// Frames and bytes a connection moved, for monitoring: see
/// [`Connection::stats`](crate::Connection::stats). A reader's snapshot has only the received
/// half filled in, a writer's only the sent half.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Frames cut from the byte stream (whether or not the application took them yet).
    pub frames_received: u64,
    /// Their bytes, length prefixes included.
    pub bytes_received: u64,
    /// Frames encoded into the write buffer.
    pub frames_sent: u64,
    /// Their bytes, length prefixes included.
    pub bytes_sent: u64,
}

/// Counts the frames of one direction of a connection: plain fields the connection's read or
/// write state owns (no atomic, no lock), handed to the facade once per transport call.
#[derive(Debug)]
pub(crate) struct FrameCounter {
    frames: u64,
    bytes: u64,
    /// Boxed: a connection stays as small with the feature as without, but for a pointer.
    #[cfg(feature = "metrics")]
    export: Box<export::Frames>,
}

/// Which direction a [`FrameCounter`] counts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Direction {
    Received,
    Sent,
}

impl FrameCounter {
    pub(crate) fn new(direction: Direction) -> Self {
        let _ = direction;
        Self {
            frames: 0,
            bytes: 0,
            #[cfg(feature = "metrics")]
            export: Box::new(export::Frames::new(direction)),
        }
    }

    /// One frame of `bytes` bytes.
    #[inline]
    pub(crate) fn count(&mut self, bytes: usize) {
        self.frames += 1;
        self.bytes += bytes as u64;
    }

    /// Hands what was counted since the last call to the facade (nothing without the feature).
    #[inline]
    pub(crate) fn publish(&mut self) {
        #[cfg(feature = "metrics")]
        self.export.publish(self.frames, self.bytes);
    }

    /// (frames, bytes) so far.
    pub(crate) fn get(&self) -> (u64, u64) {
        (self.frames, self.bytes)
    }
}

#[cfg(feature = "metrics")]
impl Drop for FrameCounter {
    fn drop(&mut self) {
        self.publish();
    }
}

/// Why a handshake on an accepted connection failed: the `reason` of
/// `connect_handshake_failures_total` and the index of [`HandshakeFailures`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// We rejected the peer's certificate (unknown issuer, expired, wrong name, none sent, ...).
    TlsCertificate,
    /// The peer ended the TLS handshake with an alert (it rejected ours, no common version).
    TlsRejectedByPeer,
    /// The peer broke TLS, or does not speak it (a plaintext client on a TLS port).
    TlsProtocol,
    /// The TLS handshake did not finish in time.
    TlsTimeout,
    /// Another TLS failure.
    TlsOther,
    /// The session was refused for its credentials (`REASON_CODE_AUTHENTICATION_FAILED`).
    SessionAuthentication,
    /// The session was refused for its protocol version.
    SessionVersion,
    /// The session was refused for another reason.
    SessionRefused,
    /// No `Hello` arrived within the handshake timeout.
    SessionTimeout,
    /// The peer broke the session protocol (a first frame that was not a `Hello`, bad bytes).
    SessionProtocol,
    /// A WebSocket upgrade failed.
    WebSocket,
    /// The connection failed or ended during the handshake.
    Transport,
    /// Anything else.
    Other,
}

impl HandshakeFailure {
    /// Every reason, in the order of [`HandshakeFailures::iter`].
    pub const ALL: [HandshakeFailure; 13] = [
        Self::TlsCertificate,
        Self::TlsRejectedByPeer,
        Self::TlsProtocol,
        Self::TlsTimeout,
        Self::TlsOther,
        Self::SessionAuthentication,
        Self::SessionVersion,
        Self::SessionRefused,
        Self::SessionTimeout,
        Self::SessionProtocol,
        Self::WebSocket,
        Self::Transport,
        Self::Other,
    ];

    /// The label value: `tls_certificate`, `session_authentication`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TlsCertificate => "tls_certificate",
            Self::TlsRejectedByPeer => "tls_rejected_by_peer",
            Self::TlsProtocol => "tls_protocol",
            Self::TlsTimeout => "tls_timeout",
            Self::TlsOther => "tls_other",
            Self::SessionAuthentication => "session_authentication",
            Self::SessionVersion => "session_version",
            Self::SessionRefused => "session_refused",
            Self::SessionTimeout => "session_timeout",
            Self::SessionProtocol => "session_protocol",
            Self::WebSocket => "websocket",
            Self::Transport => "transport",
            Self::Other => "other",
        }
    }

    /// The reason a handshake failed with `error`, or `None` if `error` is not about one
    /// connection's handshake: a bare [`Error::Io`] on an accept is the listening socket's own
    /// failure.
    ///
    /// ```
    /// use connect::metrics::HandshakeFailure;
    /// use connect::session::SessionEnd;
    /// let timeout = connect::Error::Session(SessionEnd::HandshakeTimeout);
    /// assert_eq!(HandshakeFailure::of(&timeout), Some(HandshakeFailure::SessionTimeout));
    /// ```
    pub fn of(error: &Error) -> Option<Self> {
        Some(match error {
            Error::Io(_) => return None,
            Error::Tls(tls) => Self::of_tls(tls),
            Error::Session(end) => Self::of_session(end),
            Error::FrameTooLarge { .. } | Error::InvalidLengthPrefix | Error::Decode { .. } => {
                Self::SessionProtocol
            }
            Error::Truncated { .. } | Error::Closed => Self::Transport,
            Error::WebSocket(_) => Self::WebSocket,
            _ => Self::Other,
        })
    }

    fn of_tls(tls: &TlsError) -> Self {
        match tls {
            TlsError::UnknownIssuer
            | TlsError::NotValidForName { .. }
            | TlsError::Expired
            | TlsError::NotYetValid
            | TlsError::BadCertificate { .. }
            | TlsError::NoClientCertificate => Self::TlsCertificate,
            TlsError::PeerRejected { .. } => Self::TlsRejectedByPeer,
            TlsError::Protocol { .. } => Self::TlsProtocol,
            TlsError::HandshakeTimeout(_) => Self::TlsTimeout,
            // The listener's wrapper: the reason is inside.
            TlsError::Handshake { source, .. } => match Self::of(source) {
                Some(Self::Transport) | None => Self::Transport,
                Some(reason) => reason,
            },
            _ => Self::TlsOther,
        }
    }

    fn of_session(end: &SessionEnd) -> Self {
        match end {
            SessionEnd::Refused { code, .. } => match code {
                ReasonCode::AuthenticationFailed => Self::SessionAuthentication,
                ReasonCode::UnsupportedVersion => Self::SessionVersion,
                ReasonCode::HandshakeTimeout => Self::SessionTimeout,
                ReasonCode::ProtocolViolation | ReasonCode::FrameTooLarge => Self::SessionProtocol,
                _ => Self::SessionRefused,
            },
            SessionEnd::HandshakeTimeout => Self::SessionTimeout,
            SessionEnd::ProtocolViolation { .. } => Self::SessionProtocol,
            SessionEnd::Transport(inner) => match Self::of(inner) {
                None => Self::Transport,
                Some(reason) => reason,
            },
            _ => Self::Transport,
        }
    }
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Handshake failures counted by reason: a snapshot (see
/// [`EndpointStats::handshake_failures`](crate::endpoint::EndpointStats::handshake_failures)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakeFailures {
    counts: [u64; HandshakeFailure::ALL.len()],
}

impl HandshakeFailures {
    /// Failures for `reason`.
    pub fn get(&self, reason: HandshakeFailure) -> u64 {
        self.counts[reason as usize]
    }

    /// Failures for any reason.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Every reason with its count (zeros included), in the order of [`HandshakeFailure::ALL`].
    pub fn iter(&self) -> impl Iterator<Item = (HandshakeFailure, u64)> + '_ {
        HandshakeFailure::ALL.iter().map(|&r| (r, self.get(r)))
    }
}

impl std::fmt::Display for HandshakeFailures {
    /// The reasons with a count above zero, as `reason=count` separated by spaces.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (reason, count) in self.iter().filter(|&(_, n)| n > 0) {
            if !first {
                f.write_str(" ")?;
            }
            write!(f, "{reason}={count}")?;
            first = false;
        }
        Ok(())
    }
}

/// Counts handshake failures by reason (shared, lock-free); what an endpoint keeps, and what
/// an accept loop of your own can keep too.
///
/// ```
/// use connect::metrics::{HandshakeCounter, HandshakeFailure};
/// let counter = HandshakeCounter::new();
/// counter.record(&connect::Error::Session(connect::session::SessionEnd::HandshakeTimeout));
/// assert_eq!(counter.snapshot().get(HandshakeFailure::SessionTimeout), 1);
/// ```
#[derive(Debug, Default)]
pub struct HandshakeCounter {
    counts: [AtomicU64; HandshakeFailure::ALL.len()],
}

impl HandshakeCounter {
    /// All zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a handshake that failed with `error` (and reports it to the facade with the
    /// feature `metrics`); returns the reason, or `None` if `error` is not a handshake's (see
    /// [`HandshakeFailure::of`]), which is not counted.
    pub fn record(&self, error: &Error) -> Option<HandshakeFailure> {
        let reason = HandshakeFailure::of(error)?;
        self.counts[reason as usize].fetch_add(1, Ordering::Relaxed);
        facade::handshake_failed(reason);
        Some(reason)
    }

    /// The counts now.
    pub fn snapshot(&self) -> HandshakeFailures {
        let mut snapshot = HandshakeFailures::default();
        for (count, atomic) in snapshot.counts.iter_mut().zip(&self.counts) {
            *count = atomic.load(Ordering::Relaxed);
        }
        snapshot
    }
}

/// The layers' rare events, reported to the facade: each an empty inline function without the
/// feature `metrics`.
pub(crate) mod facade {
    use super::HandshakeFailure;
    #[cfg(feature = "metrics")]
    use metrics::{counter, gauge, histogram};

    #[inline]
    pub(crate) fn handshake_failed(reason: HandshakeFailure) {
        let _ = reason;
        #[cfg(feature = "metrics")]
        counter!("connect_handshake_failures_total", "reason" => reason.as_str()).increment(1);
    }

    #[inline]
    pub(crate) fn session_opened() {
        #[cfg(feature = "metrics")]
        {
            counter!("connect_sessions_opened_total").increment(1);
            gauge!("connect_sessions_open").increment(1.0);
        }
    }

    #[inline]
    pub(crate) fn session_ended(graceful: bool) {
        let _ = graceful;
        #[cfg(feature = "metrics")]
        {
            let graceful = if graceful { "true" } else { "false" };
            counter!("connect_sessions_ended_total", "graceful" => graceful).increment(1);
            gauge!("connect_sessions_open").decrement(1.0);
        }
    }

    #[inline]
    pub(crate) fn session_rtt(rtt: std::time::Duration) {
        let _ = rtt;
        #[cfg(feature = "metrics")]
        histogram!("connect_session_rtt_seconds").record(rtt.as_secs_f64());
    }

    /// A reliable stream got a new link; `links` counts it.
    #[inline]
    pub(crate) fn reliable_attached(links: u64) {
        let _ = links;
        #[cfg(feature = "metrics")]
        if links > 1 {
            counter!("connect_reliable_reconnects_total").increment(1);
        }
    }

    /// A reliable stream resumed (`resumed`) or restarted, sending `retransmitted` again.
    #[inline]
    pub(crate) fn reliable_resumed(resumed: bool, retransmitted: u64) {
        let _ = (resumed, retransmitted);
        #[cfg(feature = "metrics")]
        {
            if resumed {
                counter!("connect_reliable_resumes_total").increment(1);
            }
            counter!("connect_reliable_retransmissions_total").increment(retransmitted);
        }
    }

    /// A publisher dropped `messages` for slow subscribers under `policy`.
    #[inline]
    pub(crate) fn pubsub_dropped(policy: &'static str, messages: u64) {
        let _ = (policy, messages);
        #[cfg(feature = "metrics")]
        counter!("connect_pubsub_dropped_total", "policy" => policy).increment(messages);
    }

    #[inline]
    pub(crate) fn pubsub_disconnected() {
        #[cfg(feature = "metrics")]
        counter!("connect_pubsub_disconnects_total").increment(1);
    }

    #[inline]
    pub(crate) fn link_joined(origin: &'static str, reconnect: bool) {
        let _ = (origin, reconnect);
        #[cfg(feature = "metrics")]
        {
            counter!("connect_links_joined_total", "origin" => origin).increment(1);
            gauge!("connect_endpoint_links").increment(1.0);
            if reconnect {
                counter!("connect_endpoint_reconnects_total").increment(1);
            }
        }
    }

    #[inline]
    pub(crate) fn link_left(graceful: bool) {
        let _ = graceful;
        #[cfg(feature = "metrics")]
        {
            let graceful = if graceful { "true" } else { "false" };
            counter!("connect_links_left_total", "graceful" => graceful).increment(1);
            gauge!("connect_endpoint_links").decrement(1.0);
        }
    }

    #[inline]
    pub(crate) fn connect_failed() {
        #[cfg(feature = "metrics")]
        counter!("connect_connect_failures_total").increment(1);
    }

    #[inline]
    pub(crate) fn accept_error() {
        #[cfg(feature = "metrics")]
        counter!("connect_accept_errors_total").increment(1);
    }
}

#[cfg(feature = "metrics")]
mod export {
    use super::Direction;
    use metrics::{counter, Counter};

    /// A connection direction's facade counters and what was handed to them so far.
    #[derive(Debug)]
    pub(super) struct Frames {
        frames: Counter,
        bytes: Counter,
        published: (u64, u64),
    }

    impl Frames {
        pub(super) fn new(direction: Direction) -> Self {
            let (frames, bytes) = match direction {
                Direction::Received => (
                    counter!("connect_frames_received_total"),
                    counter!("connect_bytes_received_total"),
                ),
                Direction::Sent => (
                    counter!("connect_frames_sent_total"),
                    counter!("connect_bytes_sent_total"),
                ),
            };
            Self {
                frames,
                bytes,
                published: (0, 0),
            }
        }

        #[inline]
        pub(super) fn publish(&mut self, frames: u64, bytes: u64) {
            if frames != self.published.0 {
                self.frames.increment(frames - self.published.0);
                self.bytes.increment(bytes - self.published.1);
                self.published = (frames, bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TlsAlert;
    use std::sync::Arc;

    #[test]
    fn handshake_errors_map_to_their_reasons() {
        let refused = |code| {
            Error::Session(SessionEnd::Refused {
                code,
                reason: String::new(),
            })
        };
        let tls_wrapped = |source: Error| {
            Error::Tls(TlsError::Handshake {
                peer_addr: None,
                source: Box::new(source),
            })
        };
        let cases = [
            (
                refused(ReasonCode::AuthenticationFailed),
                HandshakeFailure::SessionAuthentication,
            ),
            (
                refused(ReasonCode::UnsupportedVersion),
                HandshakeFailure::SessionVersion,
            ),
            (
                refused(ReasonCode::GoingAway),
                HandshakeFailure::SessionRefused,
            ),
            (
                Error::Session(SessionEnd::HandshakeTimeout),
                HandshakeFailure::SessionTimeout,
            ),
            (
                Error::Session(SessionEnd::Disconnected),
                HandshakeFailure::Transport,
            ),
            (
                Error::Session(SessionEnd::Transport(Arc::new(Error::Io(
                    std::io::ErrorKind::ConnectionReset.into(),
                )))),
                HandshakeFailure::Transport,
            ),
            (
                tls_wrapped(Error::Tls(TlsError::UnknownIssuer)),
                HandshakeFailure::TlsCertificate,
            ),
            (
                tls_wrapped(Error::Tls(TlsError::PeerRejected {
                    alert: TlsAlert::BadCertificate,
                })),
                HandshakeFailure::TlsRejectedByPeer,
            ),
            (
                tls_wrapped(Error::Tls(TlsError::HandshakeTimeout(
                    std::time::Duration::from_secs(1),
                ))),
                HandshakeFailure::TlsTimeout,
            ),
            (
                tls_wrapped(Error::Io(std::io::ErrorKind::UnexpectedEof.into())),
                HandshakeFailure::Transport,
            ),
            (
                Error::InvalidLengthPrefix,
                HandshakeFailure::SessionProtocol,
            ),
        ];
        let counter = HandshakeCounter::new();
        for (error, reason) in &cases {
            assert_eq!(HandshakeFailure::of(error), Some(*reason), "{error}");
            assert_eq!(counter.record(error), Some(*reason));
        }
        // The listening socket's own failure is not a handshake's.
        let accept = Error::Io(std::io::ErrorKind::Other.into());
        assert_eq!(counter.record(&accept), None);
        let snapshot = counter.snapshot();
        assert_eq!(snapshot.total(), cases.len() as u64);
        assert_eq!(snapshot.get(HandshakeFailure::Transport), 3);
        assert_eq!(snapshot.get(HandshakeFailure::SessionAuthentication), 1);
        assert_eq!(snapshot.get(HandshakeFailure::Other), 0);
        assert!(snapshot.to_string().contains("transport=3"), "{snapshot}");
        // Every reason has its own slot and label.
        for (i, reason) in HandshakeFailure::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i);
        }
    }
}
