//! [`Connection`]: frames over any `futures-io` byte stream, and its reader and writer halves.

mod frame;
mod framed;
mod half;
mod identity;
mod names;
mod reader;
mod writer;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_io::{AsyncRead, AsyncWrite};

use crate::codec::{Codec, DEFAULT_MAX_FRAME_LEN};
use crate::handle::ReuniteError;

pub(crate) use frame::Frame;
pub(crate) use framed::{EncodedFrames, BY_REFERENCE_LEN};
pub use half::{ReadHalf, WriteHalf};
pub use identity::PeerIdentity;
pub(crate) use names::NameCache;
pub(crate) use reader::unpack;
pub use reader::ConnectionReader;
pub use writer::ConnectionWriter;

/// Default write-buffer high-water mark: 64 KiB.
pub const DEFAULT_WRITE_HIGH_WATER: usize = 64 * 1024;

/// Settings of a connection: frame size limit and write buffering.
///
/// ```
/// let config = connect::ConnectionConfig::new().with_max_frame_len(1 << 20);
/// assert_eq!(config.max_frame_len(), 1 << 20);
/// ```
///
/// **Which frame limit wins.** This `max_frame_len` bounds a plain connection. A
/// [session](crate::session) negotiates its own limit with the peer
/// ([`SessionConfig::with_max_frame_len`](crate::session::SessionConfig::with_max_frame_len))
/// and, from its handshake on, that limit *replaces* the connection's in both directions: for a
/// session (and a reliable stream, whose links are sessions) set it on the `SessionConfig`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionConfig {
    max_frame_len: usize,
    write_high_water: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            write_high_water: DEFAULT_WRITE_HIGH_WATER,
        }
    }
}

/// The name before `ConnectionConfig`.
#[deprecated(note = "renamed to `ConnectionConfig`")]
pub type Config = ConnectionConfig;

impl ConnectionConfig {
    /// The defaults: 16 MiB frames, 64 KiB write high-water mark. Same as `default()`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Largest `Any` accepted or sent in one frame, in bytes (default 16 MiB). A peer announcing
    /// a larger frame loses its connection before anything is allocated for the frame. A session
    /// made on the connection replaces it with its negotiated limit (see the type's docs).
    pub fn with_max_frame_len(mut self, max_frame_len: usize) -> Self {
        self.max_frame_len = max_frame_len;
        self
    }

    /// Bytes the writer buffers before a `feed` has to wait for the transport (default 64 KiB).
    /// Bounds the writer's memory to this plus one frame.
    pub fn with_write_high_water(mut self, bytes: usize) -> Self {
        self.write_high_water = bytes;
        self
    }

    /// See [`with_max_frame_len`](Self::with_max_frame_len).
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// See [`with_write_high_water`](Self::with_write_high_water).
    pub fn write_high_water(&self) -> usize {
        self.write_high_water
    }

    pub(crate) fn codec(&self) -> Codec {
        Codec::with_max_frame_len(self.max_frame_len)
    }
}

/// What is known about a connection: a process-unique id and, where the transport has them,
/// its addresses and the peer's verified identity. Shared by both halves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    id: u64,
    local_addr: Option<SocketAddr>,
    peer_addr: Option<SocketAddr>,
    peer_identity: Option<Arc<PeerIdentity>>,
}

impl Default for ConnectionInfo {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectionInfo {
    /// Info with a fresh id and no addresses.
    pub fn new() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            local_addr: None,
            peer_addr: None,
            peer_identity: None,
        }
    }

    /// Sets the local address.
    pub fn with_local_addr(mut self, addr: Option<SocketAddr>) -> Self {
        self.local_addr = addr;
        self
    }

    /// Sets the peer's address.
    pub fn with_peer_addr(mut self, addr: Option<SocketAddr>) -> Self {
        self.peer_addr = addr;
        self
    }

    /// Sets the peer's verified identity.
    pub fn with_peer_identity(mut self, identity: Option<PeerIdentity>) -> Self {
        self.peer_identity = identity.map(Arc::new);
        self
    }

    /// The peer's verified identity, if the transport authenticated the peer (TLS with a
    /// certificate from the peer).
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.peer_identity.as_deref()
    }

    /// Process-unique number of this connection, for logs.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Local address, if the transport has one.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The peer's address, if the transport has one.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }
}

impl fmt::Display for ConnectionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection #{}", self.id)?;
        if let Some(peer) = self.peer_addr {
            write!(f, " with {peer}")?;
        }
        Ok(())
    }
}

/// A bidirectional stream of delimited-`Any` frames over a byte stream `T` (TCP, TLS, an
/// in-memory pipe: anything `futures-io` `AsyncRead + AsyncWrite`).
///
/// Use it as a whole ([`Stream`](futures_core::Stream) of `Result<Any>` and
/// [`Sink`](futures_sink::Sink) of `Any`, or the typed
/// [`send_message`](Self::send_message) and [`recv_message`](Self::recv_message)), or
/// [`split`](Self::split) it into a [`ConnectionReader`] and a [`ConnectionWriter`] that can live
/// in different tasks.
///
/// ```
/// # futures::executor::block_on(async {
/// use connect::proto::example::HelloWorld;
/// use connect::Connection;
/// use futures::io::Cursor;
///
/// // Write two messages into a buffer, then read them back.
/// let mut conn = Connection::new(Cursor::new(Vec::new()));
/// conn.feed_message(&HelloWorld { text: "hi".into(), sequence: 1 }).await?;
/// conn.send_message(&HelloWorld { text: "there".into(), sequence: 2 }).await?;
/// let (reader, writer) = conn.split();
/// let bytes = reader.reunite(writer).unwrap().into_inner().into_inner();
///
/// let mut conn = Connection::new(Cursor::new(bytes));
/// let first: HelloWorld = conn.recv_message().await?.unwrap();
/// let second: HelloWorld = conn.recv_message().await?.unwrap();
/// assert_eq!((first.sequence, second.text.as_str()), (1, "there"));
/// assert!(conn.recv().await?.is_none()); // clean end of stream
/// # Ok::<(), connect::Error>(()) }).unwrap();
/// ```
#[derive(Debug)]
pub struct Connection<T> {
    reader: ConnectionReader<ReadHalf<T>>,
    writer: ConnectionWriter<WriteHalf<T>>,
}

impl<T: AsyncRead + AsyncWrite> Connection<T> {
    /// A connection over `io` with the default [`ConnectionConfig`] and no addresses.
    pub fn new(io: T) -> Self {
        Self::with_config(io, &ConnectionConfig::default(), ConnectionInfo::new())
    }

    /// A connection over `io` with the given settings and info (transports fill in addresses).
    pub fn with_config(io: T, config: &ConnectionConfig, info: ConnectionInfo) -> Self {
        let info = Arc::new(info);
        let (read_half, write_half) = half::split(io);
        Self {
            reader: ConnectionReader {
                io: read_half,
                state: framed::ReadState::new(config.codec()),
                info: info.clone(),
            },
            writer: ConnectionWriter {
                io: write_half,
                state: framed::WriteState::new(config.codec(), config.write_high_water),
                info,
            },
        }
    }

    /// Splits into a reader and a writer, which can be used from different tasks.
    /// [`ConnectionReader::reunite`] puts them back together.
    pub fn split(
        self,
    ) -> (
        ConnectionReader<ReadHalf<T>>,
        ConnectionWriter<WriteHalf<T>>,
    ) {
        (self.reader, self.writer)
    }

    /// The settings the connection was made with.
    #[cfg_attr(not(feature = "sctp"), allow(dead_code))]
    pub(crate) fn config(&self) -> ConnectionConfig {
        self.writer.state.config()
    }

    /// Gives back the byte stream. Bytes received but not yet decoded and frames encoded but not
    /// yet written are dropped; call [`flush`](Self::flush) first.
    pub fn into_inner(self) -> T
    where
        T: Unpin,
    {
        self.reader
            .io
            .reunite(self.writer.io)
            .unwrap_or_else(|_| unreachable!("a Connection's halves always belong together"))
    }

    /// Addresses and identity of this connection.
    pub fn info(&self) -> &ConnectionInfo {
        &self.reader.info
    }

    /// The peer's address, if the transport has one.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.info().peer_addr()
    }

    /// Local address, if the transport has one.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.info().local_addr()
    }

    /// The peer's verified identity, if the transport authenticated the peer.
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.info().peer_identity()
    }

    /// Frames and bytes in both directions so far; see [`crate::metrics`].
    pub fn stats(&self) -> crate::ConnectionStats {
        crate::ConnectionStats {
            frames_sent: self.writer.stats().frames_sent,
            bytes_sent: self.writer.stats().bytes_sent,
            ..self.reader.stats()
        }
    }
}

crate::handle::whole_handle!([T: AsyncRead + AsyncWrite + Unpin] Connection<T>);

impl<T: AsyncRead + AsyncWrite + Unpin> Connection<T> {
    /// Queues a frame of type `M` whose value is `M` already encoded, written without copying
    /// a large value; see [`ConnectionWriter::feed_encoded`].
    ///
    /// # Errors
    /// As [`ConnectionWriter::feed_encoded`].
    pub async fn feed_encoded<M: prost::Name>(&mut self, value: bytes::Bytes) -> crate::Result<()> {
        self.writer.feed_encoded::<M>(value).await
    }

    /// [`feed_encoded`](Self::feed_encoded), then [`flush`](Self::flush).
    ///
    /// # Errors
    /// As [`ConnectionWriter::send_encoded`].
    pub async fn send_encoded<M: prost::Name>(&mut self, value: bytes::Bytes) -> crate::Result<()> {
        self.writer.send_encoded::<M>(value).await
    }
}

impl<T> ConnectionReader<ReadHalf<T>> {
    /// Whether `writer` is the other half of the same connection.
    pub fn is_pair_of(&self, writer: &ConnectionWriter<WriteHalf<T>>) -> bool {
        self.io.is_pair_of(&writer.io)
    }

    /// Puts the two halves of a [`Connection`] back together, keeping whatever either has
    /// buffered.
    ///
    /// # Errors
    /// If the halves come from different connections, both are handed back unchanged.
    // The error is as large as the success: it hands both halves back by value.
    #[allow(clippy::result_large_err)]
    pub fn reunite(
        self,
        writer: ConnectionWriter<WriteHalf<T>>,
    ) -> Result<Connection<T>, ReuniteError<Self, ConnectionWriter<WriteHalf<T>>>> {
        if self.is_pair_of(&writer) {
            Ok(Connection {
                reader: self,
                writer,
            })
        } else {
            Err(ReuniteError(self, writer))
        }
    }
}
