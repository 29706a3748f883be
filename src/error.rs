//! The crate's error type.

use std::io;

use prost_types::Any;

/// Everything that can go wrong on a connection.
///
/// Errors caused by what a peer sent (a bad length prefix, bytes that are not an `Any`, an
/// unexpected end of stream) end that connection only; they never panic the process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The underlying transport failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),

    /// A frame's length prefix announced more bytes than the configured maximum. Raised before
    /// anything is allocated for the frame. On the sending side the message was not written and
    /// the connection stays usable.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The announced (or, when sending, the encoded) frame length.
        len: u64,
        /// The configured maximum frame length.
        max: usize,
    },

    /// A length prefix was not a valid base-128 varint: more than 10 bytes, or over 64 bits.
    #[error("invalid varint length prefix")]
    InvalidLengthPrefix,

    /// Bytes could not be decoded as the expected protobuf message.
    ///
    /// `type_name` is `google.protobuf.Any` when a frame's bytes are not a valid `Any`, or the
    /// full name of the message type an `Any` was being unpacked into.
    #[error("cannot decode {type_name}: {source}")]
    Decode {
        /// Full protobuf name of the message that failed to decode.
        type_name: String,
        /// What prost reported.
        #[source]
        source: prost::DecodeError,
    },

    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes of it received)")]
    Truncated {
        /// How many bytes of the unfinished frame had arrived.
        buffered: usize,
    },

    /// A message arrived whose type has no handler and no fallback is set. The message is
    /// handed back whole so nothing is lost silently.
    #[error("no handler for message type {:?}", .0.type_url)]
    UnknownType(Box<Any>),

    /// A message of another type than the one asked for arrived (see
    /// [`ConnectionReader::recv_message`](crate::ConnectionReader::recv_message)). The message is
    /// handed back whole.
    #[error("expected a {expected} message, got type {:?}", .any.type_url)]
    UnexpectedType {
        /// Full protobuf name of the type that was expected.
        expected: String,
        /// The message that arrived instead.
        any: Box<Any>,
    },

    /// The connection is closed (or a previous error ended it) and cannot be used any more.
    #[error("connection closed")]
    Closed,

    /// A message handler reported a failure.
    #[error("handler for {type_name} failed: {source}")]
    Handler {
        /// Full protobuf name of the message being handled.
        type_name: String,
        /// The handler's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A session was refused or has ended; the [`SessionEnd`](crate::session::SessionEnd) says
    /// why (closed by either side, refused, peer unresponsive, transport failure, ...).
    #[error("session ended: {0}")]
    Session(crate::session::SessionEnd),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the error was caused by what the peer sent (as opposed to local I/O trouble or
    /// misuse). Useful to decide what to log and at which level.
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            Error::FrameTooLarge { .. }
                | Error::InvalidLengthPrefix
                | Error::Decode { .. }
                | Error::Truncated { .. }
        )
    }
}
