//! Transports: how a [`Connection`](crate::Connection) gets its byte stream. These are the only
//! modules that name an async runtime.
//!
//! | module | runtime | feature |
//! |---|---|---|
//! | [`tcp`] | async-std | `async-std` (default) |
//! | `tls` | any `futures-io` stream; client and listener on async-std | `tls` (default) |
//! | `sctp` (SCTP over UDP) | async-std | `sctp` |
//!
//! Any other runtime works through [`Connection::new`](crate::Connection::new) over its own
//! stream type (smol's `TcpStream` directly, tokio's through `tokio_util::compat`).

#[cfg(feature = "sctp")]
pub mod sctp;
#[cfg(feature = "async-std")]
pub mod tcp;
#[cfg(feature = "tls")]
pub mod tls;
