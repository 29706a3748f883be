//! [`GiveUp`]: why a reliable stream was given up.

use std::time::Duration;

use crate::proto::reliable::ResumeStatus;
use crate::proto::v1::ReasonCode;

/// Why a reliable stream was given up, or a connection was not made to carry one (inside
/// [`Error::Reliable`](crate::Error::Reliable), [`Event::Closed`](super::Event::Closed) and
/// [`DeliveryError::Closed`](super::DeliveryError::Closed)). One variant per situation; the
/// texts are for people, the variants for code.
///
/// A stream closed gracefully by either side is not given up: its reader ends with `None`,
/// `Event::Closed { reason: None }`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GiveUp {
    /// The client's [`Backoff`](super::Backoff) ran out of attempts in a row
    /// ([`with_max_attempts`](super::Backoff::with_max_attempts)).
    #[error("no connection after {attempts} attempts{}", .last_error.as_ref().map(|e| format!(" (last: {e})")).unwrap_or_default())]
    AttemptsExhausted {
        /// The attempts made.
        attempts: u32,
        /// What the last failed attempt reported, if it got that far.
        last_error: Option<String>,
    },
    /// The server refused the session for a reason retrying cannot fix (authentication
    /// failed, unsupported protocol version).
    #[error("session refused: {}: {reason}", .code.as_str_name())]
    SessionRefused {
        /// The server's reason code.
        code: ReasonCode,
        /// The server's explanation (escaped and capped).
        reason: String,
    },
    /// The peer does not support reliable delivery (it did not offer the
    /// `connect.reliable.v1` capability).
    #[error("the peer does not support reliable delivery")]
    NotSupported,
    /// The peer broke the reliable protocol (a malformed `Ack`/`Nack`/`Resume`, an
    /// acknowledgement of what was never sent, an unknown `Resume` status...).
    #[error("peer broke the reliable protocol: {reason}")]
    ProtocolViolation {
        /// What was wrong (peer text escaped and capped).
        reason: String,
    },
    /// The stream was answered without being carried: the server refused it, was busy with
    /// too many streams, or knows it as closed. On the server, [`ReliableServer::accept`]
    /// returns this after sending that answer.
    ///
    /// [`ReliableServer::accept`]: super::ReliableServer::accept
    #[error("stream not carried ({}): {reason}", .status.as_str_name())]
    Refused {
        /// The `Resume` status of the answer (`REFUSED`, `BUSY`, `CLOSED`).
        status: ResumeStatus,
        /// The explanation sent with it (escaped and capped).
        reason: String,
    },
    /// A server's stream stayed detached longer than its resume timeout
    /// ([`ReliableConfig::with_resume_timeout`](super::ReliableConfig::with_resume_timeout)).
    #[error("not resumed within {after:?}")]
    Expired {
        /// The resume timeout.
        after: Duration,
    },
    /// A server's detached stream was dropped to make room for a new one (the table was full).
    #[error("dropped to make room for another stream")]
    Evicted,
    /// A queued message is larger than the session's frame limit, so it can never be sent.
    #[error("a queued message of {len} bytes exceeds the session's frame limit of {max} bytes")]
    MessageTooLarge {
        /// The message's encoded length.
        len: u64,
        /// The session's frame limit.
        max: usize,
    },
    /// The `Resume` exchange that puts a stream on a new connection did not complete (no valid
    /// `Resume` in time, the session ended first, or the answer could not be sent).
    #[error("Resume exchange failed: {reason}")]
    ResumeFailed {
        /// What happened.
        reason: String,
    },
}
