//! The crate's error type.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use prost_types::Any;

/// Everything that can go wrong on a connection.
///
/// Errors caused by what a peer sent (a bad length prefix, bytes that are not an `Any`, an
/// unexpected end of stream) end that connection only; they never panic the process.
///
/// # How an end is reported ("closed", once)
///
/// Every handle (connection, session, reliable stream) ends the same way, and each variant
/// below has one meaning in that story:
///
/// | situation | reader (`recv`) | writer (`send`, `feed`, `flush`) |
/// |---|---|---|
/// | graceful end (either side closed, everything delivered) | `Ok(None)`, then `Ok(None)` | connection: [`Error::Closed`]; session: [`Error::Session`] with [`SessionEnd::Closed`] / [`ClosedByPeer`] (who closed, code, reason); reliable stream: [`Error::Closed`] |
/// | any other end | the layer's error **once** ([`Error::Io`], [`Error::Tls`], [`Error::Truncated`], ... for a connection; [`Error::Session`] for a session; [`Error::Reliable`] with a [`GiveUp`] for a reliable stream), then `Ok(None)` | the same error (a connection: [`Error::Closed`] once its error was reported) |
/// | a message sent with confirmation whose stream ended first | | [`Error::Delivery`] with [`DeliveryError::Closed`]: about *that message* (it may or may not have reached the peer's application), not about the handle |
///
/// So [`Error::Closed`] means "this handle is over, and there is nothing more specific to
/// say"; [`SessionEnd`] says how a session ended, [`GiveUp`] why a reliable stream was given up,
/// and [`DeliveryError::Closed`] that one message's fate is unknown. A reader never yields
/// [`Error::Closed`] for a graceful end: that is `Ok(None)`.
///
/// [`SessionEnd`]: crate::session::SessionEnd
/// [`SessionEnd::Closed`]: crate::session::SessionEnd::Closed
/// [`ClosedByPeer`]: crate::session::SessionEnd::ClosedByPeer
/// [`GiveUp`]: crate::reliable::GiveUp
/// [`DeliveryError::Closed`]: crate::reliable::DeliveryError::Closed
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The underlying transport failed.
    #[error("I/O error: {0}")]
    Io(#[source] io::Error),

    /// TLS failed: a certificate was rejected (by us or by the peer), the handshake timed out or
    /// broke the protocol, or a TLS setting was invalid. See [`TlsError`] for the cases.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),

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
    #[error("no handler for message type {}", quoted(&.0.type_url))]
    UnknownType(Box<Any>),

    /// A message of another type than the one asked for arrived (see
    /// [`ConnectionReader::recv_message`](crate::ConnectionReader::recv_message)). The message is
    /// handed back whole.
    #[error("expected a {expected} message, got type {}", quoted(&.any.type_url))]
    UnexpectedType {
        /// Full protobuf name of the type that was expected.
        expected: String,
        /// The message that arrived instead.
        any: Box<Any>,
    },

    /// This handle is over (closed gracefully by either side, or a previous error that was
    /// already reported ended it) and there is nothing more specific to say: see the table in
    /// [`Error`]'s docs. A reader reports a graceful end as `Ok(None)`, never as this.
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

    /// A reliable stream was given up, or a connection was not made to carry one; the
    /// [`GiveUp`](crate::reliable::GiveUp) says why (reconnection attempts exhausted, the peer
    /// does not support reliable delivery, the peer broke its protocol, a detached stream
    /// expired, the stream was refused, ...).
    #[error("reliable stream given up: {0}")]
    Reliable(crate::reliable::GiveUp),

    /// The peer broke the request/reply protocol (a request id of 0, or one reused while in
    /// flight); see [`crate::rpc`].
    #[error("request/reply protocol violation: {0}")]
    Rpc(#[from] crate::rpc::Violation),

    /// A message sent with confirmation was refused by the peer, or the stream ended before it
    /// was confirmed.
    #[error("delivery failed: {0}")]
    Delivery(#[from] crate::reliable::DeliveryError),

    /// The WebSocket transport failed: a refused or malformed upgrade, a message this protocol
    /// does not allow (text, oversized, a frame cut across messages), or the peer closed with
    /// an error code. See [`WsError`] for the cases and the close code each one sends.
    #[error("WebSocket: {0}")]
    WebSocket(#[from] WsError),
}

/// Transports speak `futures-io`, whose traits only return `io::Error`; a transport that fails
/// for a typed reason (TLS) puts a [`TlsError`] inside the `io::Error`, and it comes back out
/// here, so readers and writers report [`Error::Tls`] without knowing the transport.
impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        if e.get_ref().is_some_and(|inner| inner.is::<TlsError>()) {
            match e.into_inner().map(|inner| inner.downcast::<TlsError>()) {
                Some(Ok(tls)) => return Error::Tls(*tls),
                // Unreachable: checked just above. Keep the error rather than lose it.
                Some(Err(other)) => return Error::Io(io::Error::other(other)),
                None => return Error::Io(io::Error::other("empty I/O error")),
            }
        }
        if e.get_ref().is_some_and(|inner| inner.is::<WsError>()) {
            if let Some(Ok(ws)) = e.into_inner().map(|inner| inner.downcast::<WsError>()) {
                return Error::WebSocket(*ws);
            }
            // Unreachable: checked just above.
            return Error::Io(io::Error::other("empty I/O error"));
        }
        Error::Io(e)
    }
}

/// What went wrong on a WebSocket link (inside [`Error::WebSocket`]); each ends that link only.
///
/// The close code in brackets is the one this side sends before giving up on the link
/// (`proto/PROTOCOL.md`, "Transport: WebSocket").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// The peer sent a text message; the protocol carries binary messages only (1003).
    #[error("text message received; only binary messages carry frames")]
    TextMessage,

    /// A message (or one WebSocket frame of it) is larger than the maximum message length,
    /// the maximum frame length plus 10 bytes of length prefix (1009).
    #[error("message of {len} bytes exceeds the maximum of {max} bytes")]
    MessageTooLarge {
        /// Length of the message as far as it was received, or as its header announced it.
        len: usize,
        /// The maximum message length.
        max: usize,
    },

    /// A binary message does not hold whole frames: it ends in the middle of one, has an
    /// invalid length prefix, or announces a frame over the maximum frame length (1007, or 1009
    /// for a frame too large).
    #[error("message does not hold whole frames: {0}")]
    InvalidMessage(String),

    /// The peer broke the WebSocket protocol (garbage after the upgrade, an unmasked frame from
    /// a client, a bad opcode, ...) (1002).
    #[error("WebSocket protocol error: {0}")]
    Protocol(String),

    /// The peer closed the link with a code other than 1000 (normal) or 1001 (going away).
    #[error("peer closed with code {code} ({})", quoted(.reason))]
    PeerClosed {
        /// The close code.
        code: u16,
        /// The reason the peer gave, cut to 123 bytes by the protocol itself.
        reason: String,
    },

    /// A plain HTTP request (not a WebSocket upgrade) reached a function that only upgrades; it
    /// was answered `426 Upgrade Required`.
    #[error("{} {}: not a WebSocket upgrade", quoted(.method), quoted(.path))]
    NotUpgrade {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
    },

    /// An upgrade was refused: by us as a server (the status we answered) or by the server we
    /// connected to (the status it answered).
    #[error("upgrade refused with HTTP status {status}: {}", quoted(.reason))]
    UpgradeRefused {
        /// The HTTP status of the refusal (400 wrong subprotocol, 404 wrong path, ...).
        status: u16,
        /// Why.
        reason: String,
    },

    /// The opening handshake broke: a malformed or oversized HTTP request or response, a
    /// connection closed before the handshake finished, an invalid URL.
    #[error("WebSocket handshake failed: {0}")]
    Handshake(String),

    /// The opening handshake (TLS included, for `wss://`) did not finish in time.
    #[error("WebSocket handshake not finished after {0:?}")]
    HandshakeTimeout(std::time::Duration),
}

/// What went wrong with TLS (inside [`Error::Tls`]).
///
/// The certificate cases name what *this* side found wrong with the peer's certificate; when the
/// peer rejected ours, the handshake (or, with TLS 1.3 client certificates, the first read)
/// fails with [`PeerRejected`](Self::PeerRejected) and the alert the peer sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The peer's certificate is not signed by any certificate authority we trust (wrong CA, or
    /// an untrusted self-signed certificate).
    #[error("peer certificate is signed by an unknown certificate authority")]
    UnknownIssuer,

    /// The server's certificate is valid, but not for the name the client asked for.
    #[error("server certificate is not valid for the name {expected:?}")]
    NotValidForName {
        /// The server name the client checked against.
        expected: String,
    },

    /// The peer's certificate has expired.
    #[error("peer certificate has expired")]
    Expired,

    /// The peer's certificate is not valid yet.
    #[error("peer certificate is not valid yet")]
    NotYetValid,

    /// The peer's certificate was rejected for another reason (bad signature, wrong key usage,
    /// revoked, malformed...).
    #[error("peer certificate rejected: {detail}")]
    BadCertificate {
        /// What was wrong, for code.
        problem: CertificateProblem,
        /// What was wrong, for people (as rustls reports it).
        detail: String,
    },

    /// This server requires a client certificate and the client sent none.
    #[error("client sent no certificate, but one is required")]
    NoClientCertificate,

    /// The peer ended the handshake with an alert, typically because it rejected our
    /// certificate: `UnknownCA` or `BadCertificate` (it does not trust the CA that signed ours),
    /// `CertificateRequired` (a server that requires a client certificate got none; TLS 1.3
    /// reports this on the client's first read, since its handshake had already finished),
    /// `HandshakeFailure` (no common protocol version or cipher suite, or TLS 1.2's way of
    /// refusing a missing client certificate).
    #[error("peer rejected the connection with TLS alert {alert}")]
    PeerRejected {
        /// The alert the peer sent.
        alert: TlsAlert,
    },

    /// The peer did not finish its handshake in time.
    #[error("TLS handshake not finished after {0:?}")]
    HandshakeTimeout(Duration),

    /// The peer does not speak TLS (a plaintext client on a TLS port), or broke the protocol.
    #[error("TLS protocol error: {detail}")]
    Protocol {
        /// What was wrong, for code.
        problem: TlsProtocolProblem,
        /// What was wrong, for people (as rustls reports it).
        detail: String,
    },

    /// The server name given to a client is neither a valid DNS name nor an IP address.
    #[error("invalid server name {0:?}")]
    InvalidServerName(String),

    /// A certificate, key or TLS setting given to us is unusable (unreadable PEM, no
    /// certificate in a file, a key that does not match its certificate...).
    #[error("invalid TLS configuration: {detail}")]
    Config {
        /// What was wrong, for code.
        problem: TlsConfigProblem,
        /// What was wrong, for people: the file, and what the parser or rustls said.
        detail: String,
    },

    /// A server-side handshake failed. [`TlsListener`](crate::transport::tls::TlsListener)
    /// yields this for a client whose handshake failed, without stopping; `source` says why
    /// (usually another [`Error::Tls`], or [`Error::Io`] if the client went away).
    #[error("TLS handshake with {} failed: {source}", .peer_addr.map_or("unknown peer".to_string(), |a| a.to_string()))]
    Handshake {
        /// The client's address, when known.
        peer_addr: Option<SocketAddr>,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },
}

/// How a peer broke TLS (inside [`TlsError::Protocol`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsProtocolProblem {
    /// The bytes are not TLS records at all: typically a plaintext client on a TLS port.
    NotTls,
    /// A TLS message arrived that the handshake does not allow at that point, or could not be
    /// parsed.
    UnexpectedMessage,
    /// A record failed to decrypt or authenticate (tampering, or keys that do not match).
    Decrypt,
    /// No protocol version, cipher suite or key exchange group both sides support.
    NoCommonParameters,
    /// The peer broke the protocol in another way rustls recognised.
    Misbehaved,
    /// Anything else rustls reported.
    Other,
}

/// What is wrong with a TLS setting given to us (inside [`TlsError::Config`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsConfigProblem {
    /// A file could not be read.
    Unreadable,
    /// PEM data is malformed.
    BadPem,
    /// PEM data holds no certificate.
    NoCertificate,
    /// PEM data holds no private key.
    NoPrivateKey,
    /// A client was given no certificate authority to trust.
    NoTrustedAuthority,
    /// A CA certificate cannot be used as a trust anchor.
    UnusableAuthority,
    /// rustls refused the configuration (for example a key that does not match its
    /// certificate, or an unsupported key type).
    Rejected,
}

/// A TLS alert a peer ended a handshake with (inside [`TlsError::PeerRejected`]): the ones a
/// rejection uses by name, any other by its code (RFC 8446, section 6). Displayed as rustls
/// spells them (`UnknownCA`, `CertificateRequired`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsAlert {
    /// `handshake_failure` (40): no common version or cipher suite, or TLS 1.2's refusal of a
    /// missing client certificate.
    HandshakeFailure,
    /// `bad_certificate` (42).
    BadCertificate,
    /// `unsupported_certificate` (43).
    UnsupportedCertificate,
    /// `certificate_revoked` (44).
    CertificateRevoked,
    /// `certificate_expired` (45).
    CertificateExpired,
    /// `certificate_unknown` (46).
    CertificateUnknown,
    /// `unknown_ca` (48): the peer does not trust the CA that signed our certificate.
    UnknownCa,
    /// `access_denied` (49).
    AccessDenied,
    /// `protocol_version` (70).
    ProtocolVersion,
    /// `certificate_required` (116): a server that requires a client certificate got none.
    CertificateRequired,
    /// Any other alert, by its code.
    Other(u8),
}

impl TlsAlert {
    /// The alert with this code.
    pub fn from_code(code: u8) -> Self {
        match code {
            40 => Self::HandshakeFailure,
            42 => Self::BadCertificate,
            43 => Self::UnsupportedCertificate,
            44 => Self::CertificateRevoked,
            45 => Self::CertificateExpired,
            46 => Self::CertificateUnknown,
            48 => Self::UnknownCa,
            49 => Self::AccessDenied,
            70 => Self::ProtocolVersion,
            116 => Self::CertificateRequired,
            other => Self::Other(other),
        }
    }

    /// The alert's code on the wire.
    pub fn code(self) -> u8 {
        match self {
            Self::HandshakeFailure => 40,
            Self::BadCertificate => 42,
            Self::UnsupportedCertificate => 43,
            Self::CertificateRevoked => 44,
            Self::CertificateExpired => 45,
            Self::CertificateUnknown => 46,
            Self::UnknownCa => 48,
            Self::AccessDenied => 49,
            Self::ProtocolVersion => 70,
            Self::CertificateRequired => 116,
            Self::Other(code) => code,
        }
    }
}

impl std::fmt::Display for TlsAlert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::HandshakeFailure => "HandshakeFailure",
            Self::BadCertificate => "BadCertificate",
            Self::UnsupportedCertificate => "UnsupportedCertificate",
            Self::CertificateRevoked => "CertificateRevoked",
            Self::CertificateExpired => "CertificateExpired",
            Self::CertificateUnknown => "CertificateUnknown",
            Self::UnknownCa => "UnknownCA",
            Self::AccessDenied => "AccessDenied",
            Self::ProtocolVersion => "ProtocolVersion",
            Self::CertificateRequired => "CertificateRequired",
            Self::Other(code) => return write!(f, "alert {code}"),
        };
        f.write_str(name)
    }
}

/// What was wrong with a peer's certificate (inside [`TlsError::BadCertificate`]), for the
/// cases without a [`TlsError`] variant of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CertificateProblem {
    /// The certificate could not be parsed.
    BadEncoding,
    /// A signature in the chain does not verify, or uses an unsupported algorithm.
    BadSignature,
    /// The certificate was revoked.
    Revoked,
    /// Its revocation status could not be determined.
    UnknownRevocationStatus,
    /// It is not valid for this use (key usage, extended key usage, critical extensions).
    InvalidPurpose,
    /// Anything else.
    Other,
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
                | Error::Tls(TlsError::Protocol { .. })
                | Error::WebSocket(
                    WsError::TextMessage
                        | WsError::MessageTooLarge { .. }
                        | WsError::InvalidMessage(_)
                        | WsError::Protocol(_)
                )
                | Error::Session(crate::session::SessionEnd::ProtocolViolation { .. })
                | Error::Reliable(crate::reliable::GiveUp::ProtocolViolation { .. })
        )
    }
}

/// Longest peer-supplied text, in characters, that goes into a log line, an error message or a
/// `Refuse`/`Close` reason.
pub(crate) const MAX_QUOTED_CHARS: usize = 128;

/// Peer-supplied text as it may be shown: quoted and escaped like `{:?}` (no control characters
/// or line breaks reach a log), and cut after [`MAX_QUOTED_CHARS`] characters with `…`.
pub(crate) fn quoted(text: &str) -> Quoted<'_> {
    Quoted(text)
}

/// See [`quoted`].
pub(crate) struct Quoted<'a>(&'a str);

impl std::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.char_indices().nth(MAX_QUOTED_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}…", &self.0[..cut]),
        }
    }
}

/// A peer-supplied list as it may be shown: its first eight items, then how many there are.
pub(crate) fn quoted_list<T: std::fmt::Debug>(items: &[T]) -> String {
    const SHOWN: usize = 8;
    if items.len() <= SHOWN {
        format!("{items:?}")
    } else {
        let head = format!("{:?}", &items[..SHOWN]);
        format!(
            "{}, … ({} in all)]",
            head.trim_end_matches(']'),
            items.len()
        )
    }
}

#[cfg(test)]
mod quoted_tests {
    use super::*;

    #[test]
    fn peer_text_is_escaped_and_capped() {
        assert_eq!(quoted("a\nb").to_string(), "\"a\\nb\"");
        let long = "é".repeat(1000);
        let shown = quoted(&long).to_string();
        assert_eq!(shown.chars().count(), MAX_QUOTED_CHARS + 3); // two quotes and "…"
        assert!(shown.ends_with('…'));
        assert_eq!(quoted_list(&[1, 2]), "[1, 2]");
        assert_eq!(
            quoted_list(&(0..1000).collect::<Vec<_>>()),
            "[0, 1, 2, 3, 4, 5, 6, 7, … (1000 in all)]"
        );
    }

    /// `Error` travels in every `Result` of the hot paths: keep it from growing unnoticed.
    /// 48 bytes today: `Tls`, `Handler` and `Delivery` carry 40-byte payloads, `Session`,
    /// `Decode`, `UnexpectedType` and `Reliable` 32-byte ones.
    #[test]
    fn error_stays_small() {
        assert!(
            std::mem::size_of::<Error>() <= 48,
            "{}",
            std::mem::size_of::<Error>()
        );
        assert!(std::mem::size_of::<Result<()>>() <= 48);
    }

    #[test]
    fn tls_alerts_round_trip_their_codes_and_print_as_rustls_spells_them() {
        for code in 0..=u8::MAX {
            assert_eq!(TlsAlert::from_code(code).code(), code);
        }
        assert_eq!(TlsAlert::from_code(48), TlsAlert::UnknownCa);
        assert_eq!(TlsAlert::UnknownCa.to_string(), "UnknownCA");
        assert_eq!(TlsAlert::from_code(116).to_string(), "CertificateRequired");
        assert_eq!(TlsAlert::from_code(0).to_string(), "alert 0");
    }

    #[test]
    fn a_session_ended_by_a_protocol_violation_is_one() {
        use crate::session::SessionEnd;
        let violation = Error::Session(SessionEnd::ProtocolViolation {
            reason: "second Close".into(),
        });
        assert!(violation.is_protocol_violation());
        assert!(Error::InvalidLengthPrefix.is_protocol_violation());
        assert!(!Error::Session(SessionEnd::Disconnected).is_protocol_violation());
        assert!(!Error::Closed.is_protocol_violation());
        use crate::reliable::GiveUp;
        assert!(Error::Reliable(GiveUp::ProtocolViolation {
            reason: "bad Ack".into()
        })
        .is_protocol_violation());
        assert!(!Error::Reliable(GiveUp::NotSupported).is_protocol_violation());
    }
}
