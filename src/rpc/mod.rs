//! Request/reply: many concurrent calls on one link, with deadlines, cancellation and status
//! codes (wire: `proto/PROTOCOL.md` section 11, package [`connect.rpc.v1`](crate::proto::rpc)).
//!
//! Both sides are a [`Peer`](crate::peer::Peer), over a connection, a session or a reliable
//! stream:
//!
//! - **Caller.** [`Peer::call`](crate::peer::Peer::call) sends a `Request` and waits for the
//!   `Response` with the same id; any number of calls may be in flight at once, from any
//!   number of tasks, and answers come back in any order. Each call has a deadline
//!   ([`CallOptions::with_timeout`], default [`PeerConfig::with_call_timeout`]); dropping the
//!   call's future sends a `Cancel`. A call fails with a [`CallError`] saying which of deadline
//!   exceeded, cancelled, remote status, link closed or reply of the wrong type.
//! - **Responder.** The peer's [`Dispatcher`](crate::dispatch::Dispatcher) answers: the
//!   handler for the request body's type runs, and its reply (exactly one message) is the
//!   response. A handler's error becomes a status: return a [`Status`] (`Err(Status::not_found(
//!   "no such user"))`) to choose the code, any other error is `INTERNAL`. Handlers of different
//!   requests run concurrently, at most
//!   [`PeerConfig::with_max_concurrent_requests`] per link; one-way messages are still handled
//!   one at a time, in order. [`Context::call`](crate::dispatch::Context::call) gives the
//!   handler the request's metadata and deadline.
//!
//! [`PeerConfig::with_call_timeout`]: crate::peer::PeerConfig::with_call_timeout
//! [`PeerConfig::with_max_concurrent_requests`]: crate::peer::PeerConfig::with_max_concurrent_requests
//!
//! ```
//! # async_std::task::block_on(async {
//! use std::time::Duration;
//! use connect::dispatch::{Context, Dispatcher, Reply};
//! use connect::peer::{Peer, PeerConfig};
//! use connect::proto::example::HelloWorld;
//! use connect::rpc::{CallError, CallOptions, Status, StatusCode};
//! use connect::transport::tcp;
//!
//! let listener = tcp::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! async_std::task::spawn(async move {
//!     let greeter = Dispatcher::new().on(|hello: HelloWorld, _: Context| async move {
//!         if hello.text.is_empty() {
//!             return Err(Status::invalid_argument("say something"));
//!         }
//!         Ok(Reply::message(&HelloWorld { text: format!("hello, {}", hello.text), ..hello }))
//!     });
//!     let (_peer, driver) = Peer::new(listener.accept().await?, greeter, &PeerConfig::new());
//!     driver.await;
//!     Ok::<_, connect::Error>(())
//! });
//!
//! let (peer, driver) = Peer::new(tcp::connect(addr).await?, Dispatcher::new(), &PeerConfig::new());
//! async_std::task::spawn(driver);
//! let reply: HelloWorld = peer.call(&HelloWorld { text: "world".into(), sequence: 1 }).await?;
//! assert_eq!(reply.text, "hello, world");
//!
//! let refused = peer
//!     .call_with::<_, HelloWorld>(&HelloWorld::default(), CallOptions::new().with_timeout(Duration::from_secs(5)))
//!     .await;
//! assert!(matches!(&refused, Err(CallError::Status(s)) if s.code() == StatusCode::InvalidArgument));
//! peer.close().await.ok();
//! # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
//! ```

pub(crate) mod calls;
pub(crate) mod responder;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost_types::Any;

use crate::error::Error;

pub use crate::proto::rpc::StatusCode;

/// Why a call has no reply: a code (numbered as gRPC's) and a message for people.
///
/// What a handler returns as its error to answer with this status rather than `INTERNAL`; what
/// a caller gets in [`CallError::Status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    code: StatusCode,
    message: String,
}

impl Status {
    /// A status with this code and message.
    pub fn new(code: StatusCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `STATUS_CODE_NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NotFound, message)
    }

    /// `STATUS_CODE_INVALID_ARGUMENT`.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(StatusCode::InvalidArgument, message)
    }

    /// `STATUS_CODE_INTERNAL`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::Internal, message)
    }

    /// `STATUS_CODE_UNAVAILABLE`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::Unavailable, message)
    }

    /// `STATUS_CODE_PERMISSION_DENIED`.
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PermissionDenied, message)
    }

    /// The code.
    pub fn code(&self) -> StatusCode {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str_name(), self.message)
    }
}

impl std::error::Error for Status {}

impl From<crate::proto::rpc::Status> for Status {
    /// A code this side does not know is `UNKNOWN` (PROTOCOL.md §11).
    fn from(status: crate::proto::rpc::Status) -> Self {
        Self {
            code: StatusCode::try_from(status.code).unwrap_or(StatusCode::Unknown),
            message: status.message,
        }
    }
}

impl From<Status> for crate::proto::rpc::Status {
    fn from(status: Status) -> Self {
        Self {
            code: status.code as i32,
            message: status.message,
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The deadline passed before a reply came: this side's (a `Cancel` went to the peer), or
    /// the peer's (it answered `STATUS_CODE_DEADLINE_EXCEEDED`).
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The peer answered `STATUS_CODE_CANCELLED`: it gave up the call.
    #[error("cancelled by the peer: {0}")]
    Cancelled(String),
    /// The peer answered with another status (no handler: `NOT_FOUND`; the handler failed:
    /// `INTERNAL`, or the code of the [`Status`] it returned).
    #[error("peer answered {0}")]
    Status(Status),
    /// The link ended (or was closing) before the reply came; how it ended, if it has.
    #[error("link closed{}", match .0 { Some(Err(e)) => format!(": {e}"), _ => String::new() })]
    Closed(Option<Result<(), Arc<Error>>>),
    /// The reply is not of the type the caller asked for; here it is.
    #[error("expected a {expected} reply, got type {:?}", .any.type_url)]
    WrongType {
        /// Full protobuf name of the type asked for.
        expected: String,
        /// The reply.
        any: Box<Any>,
    },
    /// The reply has the type asked for but its bytes do not decode as it.
    #[error("cannot decode the {type_name} reply: {source}")]
    Decode {
        /// Full protobuf name of the reply type.
        type_name: String,
        /// What prost reported.
        #[source]
        source: prost::DecodeError,
    },
}

impl CallError {
    /// The status code that says the same: what a proxy would pass on.
    pub fn code(&self) -> StatusCode {
        match self {
            Self::DeadlineExceeded => StatusCode::DeadlineExceeded,
            Self::Cancelled(_) => StatusCode::Cancelled,
            Self::Status(status) => status.code(),
            Self::Closed(_) => StatusCode::Unavailable,
            Self::WrongType { .. } | Self::Decode { .. } => StatusCode::Internal,
        }
    }
}

impl From<Status> for CallError {
    /// How a caller reads a status from the peer.
    fn from(status: Status) -> Self {
        match status.code {
            StatusCode::DeadlineExceeded => Self::DeadlineExceeded,
            StatusCode::Cancelled => Self::Cancelled(status.message),
            _ => Self::Status(status),
        }
    }
}

/// How one call is made: its deadline and metadata.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    timeout: Option<Option<Duration>>,
    metadata: BTreeMap<String, String>,
}

impl CallOptions {
    /// The link's default deadline ([`PeerConfig::with_call_timeout`](crate::peer::PeerConfig::with_call_timeout)),
    /// no metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives up waiting `timeout` after the call starts (the peer is told, and stops its
    /// handler at the same time after it receives the request). A zero timeout fails the call
    /// with [`CallError::DeadlineExceeded`] without sending anything.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(Some(timeout));
        self
    }

    /// Waits as long as the link lives.
    pub fn without_timeout(mut self) -> Self {
        self.timeout = Some(None);
        self
    }

    /// Adds a metadata entry (replacing one with the same key) for the peer's handler.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The timeout: `None` if the link's default applies, `Some(None)` for none.
    pub(crate) fn timeout(&self) -> Option<Option<Duration>> {
        self.timeout
    }

    pub(crate) fn take_metadata(&mut self) -> BTreeMap<String, String> {
        std::mem::take(&mut self.metadata)
    }
}

/// What a handler knows of the request it answers ([`Context::call`](crate::dispatch::Context::call)).
#[derive(Clone, Debug)]
pub struct CallInfo {
    id: u64,
    deadline: Option<Instant>,
    metadata: BTreeMap<String, String>,
}

impl CallInfo {
    pub(crate) fn new(
        id: u64,
        deadline: Option<Instant>,
        metadata: BTreeMap<String, String>,
    ) -> Self {
        Self {
            id,
            deadline,
            metadata,
        }
    }

    /// The caller's id of the request (unique among its calls in flight on this link).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// When the caller stops waiting (measured from when this side read the request); the
    /// handler is dropped then. `None`: no deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The caller's metadata.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }
}

/// A peer broke the request/reply protocol (PROTOCOL.md §11); the link ends with
/// [`Error::Rpc`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// A `Request` with id 0.
    #[error("request with id 0")]
    ZeroRequestId,
    /// A `Request` whose id is that of another request still in flight.
    #[error("request id {0} reused while in flight")]
    RequestIdInFlight(u64),
}

/// How a timeout travels: whole milliseconds, rounded up so a short timeout is not sent as 0
/// (which means none).
pub(crate) fn timeout_ms(timeout: Option<Duration>) -> u64 {
    match timeout {
        None => 0,
        Some(timeout) => {
            let ms = timeout.as_nanos().div_ceil(1_000_000);
            u64::try_from(ms).unwrap_or(u64::MAX).max(1)
        }
    }
}

/// The deadline of a request read at `now` with this `timeout_ms`: none for 0, and none for a
/// timeout beyond what the clock can represent.
pub(crate) fn deadline(now: Instant, timeout_ms: u64) -> Option<Instant> {
    if timeout_ms == 0 {
        return None;
    }
    now.checked_add(Duration::from_millis(timeout_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_travel_as_whole_milliseconds_rounded_up() {
        assert_eq!(timeout_ms(None), 0);
        assert_eq!(timeout_ms(Some(Duration::from_micros(1))), 1);
        assert_eq!(timeout_ms(Some(Duration::from_millis(1500))), 1500);
        assert_eq!(timeout_ms(Some(Duration::from_micros(1500))), 2);
        assert_eq!(timeout_ms(Some(Duration::MAX)), u64::MAX);
    }

    #[test]
    fn zero_and_huge_timeouts_mean_no_deadline() {
        let now = Instant::now();
        assert_eq!(deadline(now, 0), None);
        // u64::MAX ms: no deadline, or one far beyond any call (whatever the clock holds).
        assert!(deadline(now, u64::MAX).is_none_or(|d| d > now + Duration::from_secs(1 << 40)));
        assert_eq!(deadline(now, 5), Some(now + Duration::from_millis(5)));
    }

    #[test]
    fn unknown_codes_read_as_unknown() {
        let status = Status::from(crate::proto::rpc::Status {
            code: 99,
            message: "x".into(),
        });
        assert_eq!(status.code(), StatusCode::Unknown);
        assert_eq!(
            CallError::from(Status::new(StatusCode::DeadlineExceeded, "late")).code(),
            StatusCode::DeadlineExceeded
        );
    }
}
