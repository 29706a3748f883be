//! # connect
//!
//! Brokerless messaging over TCP, TLS and SCTP: peers exchange typed protobuf messages directly,
//! each one packed in a `google.protobuf.Any` and written as one length-delimited frame. Any
//! language with an official protobuf library can talk to a `connect` peer without code of ours.
//!
//! ## How bytes flow
//!
//! ```text
//!   your message ──► Any { type_url, value } ──► varint length ++ Any bytes ──► socket
//!   (prost)          (codec::Codec::encode_message)   (ConnectionWriter buffers, writes, flushes)
//!
//!   socket ──► ConnectionReader (reads into one buffer) ──► Codec::decode ──► Any
//!          ──► Dispatcher (by full name after the last '/') ──► your typed handler ──► Reply
//! ```
//!
//! * [`codec`]: sans-IO framing. No I/O; incomplete input is "need more", never an error; the
//!   maximum frame length is checked before allocating.
//! * [`Connection`]: frames over any `futures-io` `AsyncRead + AsyncWrite`;
//!   [`split`](Connection::split) into [`ConnectionReader`] (a `Stream`) and
//!   [`ConnectionWriter`] (a `Sink`), [`reunite`](ConnectionReader::reunite) them again.
//! * [`dispatch`]: routes each message to the handler for its type; replies go back in order.
//! * [`session`]: handshake (negotiation, authentication), heartbeats with dead-peer detection
//!   and graceful close on top of a connection, as control messages of [`proto::v1`].
//! * [`reliable`]: streams on top of sessions that survive dropped connections: bounded queues
//!   with backpressure, delivery confirmations, reconnect and resume without loss or
//!   duplicates, lifecycle events ([`proto::reliable`]).
//! * [`transport`]: the only code that names a runtime (async-std TCP by default). The rest
//!   runs on smol, tokio (through `tokio_util::compat`) or anything `futures-io`.
//!
//! ## Wire format
//!
//! Each frame is the `Any`'s byte length as a base-128 varint, then the `Any`'s bytes: exactly
//! what Java's `writeDelimitedTo`, Go's `protodelim`, Python's `serialize_length_prefixed` and
//! protobuf.js's `encodeDelimited` produce. Type URLs are `type.googleapis.com/<full.name>`, as
//! every `Any.pack` writes them. See `proto/PROTOCOL.md` in the repository for the full spec with
//! byte-level examples.
//!
//! ## Quick start
//!
//! ```
//! use connect::dispatch::{Context, Dispatcher, Reply};
//! use connect::proto::example::HelloWorld;
//! use connect::transport::tcp::{self, TcpListener};
//! use std::sync::Arc;
//!
//! # async_std::task::block_on(async {
//! // A server that answers every HelloWorld.
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let dispatcher = Arc::new(Dispatcher::new().on(|hello: HelloWorld, _: Context| async move {
//!     let text = format!("hello, {}", hello.text);
//!     Ok::<_, connect::Error>(Reply::message(&HelloWorld { text, ..hello }))
//! }));
//! async_std::task::spawn(async move {
//!     let conn = listener.accept().await?;
//!     dispatcher.serve(conn).await
//! });
//!
//! // A client.
//! let mut conn = tcp::connect(addr).await?;
//! conn.send_message(&HelloWorld { text: "world".into(), sequence: 1 }).await?;
//! let reply: HelloWorld = conn.recv_message().await?.expect("a reply");
//! assert_eq!(reply.text, "hello, world");
//! # Ok::<(), connect::Error>(()) }).unwrap();
//! ```
//!
//! ## Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `async-std` | yes | [`transport::tcp`]: TCP client and listener on async-std |
//! | `tls` | yes | `transport::tls`: TLS 1.3/1.2 with rustls (ring), mutual TLS; listener on async-std |
//! | `sctp` | no | `transport::sctp`: SCTP over UDP (userspace, `sctp-proto`) on async-std |

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
mod connection;
pub mod dispatch;
mod error;
pub mod reliable;
pub mod session;
pub mod transport;

/// Internals the fuzz targets in `fuzz/` drive directly; not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod __fuzz {
    pub use crate::session::fuzz::SessionState;
}

pub use connection::{
    Config, Connection, ConnectionInfo, ConnectionReader, ConnectionWriter, PeerIdentity,
    ReuniteError, DEFAULT_WRITE_HIGH_WATER,
};
pub use error::{Error, Result, TlsError};

/// Re-exported so callers need not depend on the same versions themselves.
pub use prost;
/// Re-exported so callers need not depend on the same versions themselves.
pub use prost_types;

// The README's Rust examples are compiled as doctests, so they cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Protobuf messages generated from `proto/` at build time.
pub mod proto {
    /// Messages used by the examples and tests (package `connect.example.v1`).
    pub mod example {
        #![allow(missing_docs)]
        include!(concat!(env!("OUT_DIR"), "/connect.example.v1.rs"));
    }

    /// The session layer's control messages (package `connect.v1`); see [`crate::session`].
    pub mod v1 {
        #![allow(missing_docs)]
        include!(concat!(env!("OUT_DIR"), "/connect.v1.rs"));
    }

    /// Reliable delivery's messages (package `connect.reliable.v1`); see [`crate::reliable`].
    pub mod reliable {
        #![allow(missing_docs)]
        include!(concat!(env!("OUT_DIR"), "/connect.reliable.v1.rs"));
    }
}
