//! Our messages as the retransmit queue holds them: encoded once when fed, written as they are
//! on every link that carries them (first sending and retransmissions), freed at the peer's
//! `Ack`.
//!
//! A typed message (`feed_message`) is encoded into a slice of an encode buffer that many
//! messages share ([`Encoder`]): in steady state queuing one allocates nothing, and the buffer's
//! chunk is freed once the peer has acknowledged every message in it. Its type URL is not
//! stored: the message's type is remembered as the function that writes the value under it
//! (the session encodes the `Any` header from a type URL it computes once per type). An `Any`
//! fed as such is kept as given: its allocations are the application's already.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use prost::{Message, Name};
use prost_types::Any;

use super::state::Queued;
use crate::connection::{NameCache, BY_REFERENCE_LEN};
use crate::error::Result;
use crate::session::SessionWriter;

/// Messages up to this long are encoded under the stream's lock into the shared buffer;
/// longer ones are encoded outside it, each into its own buffer.
pub(crate) const SMALL: usize = 16 * 1024;

/// The shared encode buffer's chunks: as large as the bytes queued when one is made, within
/// these bounds (one allocation per up to 64 KiB of small messages while the stream streams,
/// little kept by a stream that sends now and then).
const MIN_CHUNK: usize = 4 * 1024;
const MAX_CHUNK: usize = 64 * 1024;

/// Writes an encoded value under its message type's URL.
type WriteFn = fn(&mut SessionWriter, &Bytes, &[(usize, Bytes)]) -> Result<()>;

/// One of our messages, from `feed` until the peer's acknowledgement.
pub(crate) enum Outgoing {
    /// Fed as an `Any`.
    Any(Any),
    /// Fed as a typed message.
    Encoded {
        /// Its encoding (the `Any`'s value), but for the large `Bytes` fields in `placed`.
        value: Bytes,
        /// The message's `Bytes` fields of at least
        /// [`BY_REFERENCE_LEN`](crate::connection::BY_REFERENCE_LEN), kept where the
        /// application had them (not copied), each with where it goes in `value`.
        placed: Box<[(usize, Bytes)]>,
        /// Its type URL's length (for the byte bounds).
        type_url_len: usize,
        /// Writes `value` under the type's URL.
        write: WriteFn,
    },
}

impl fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any(any) => f.debug_tuple("Any").field(&any.type_url).finish(),
            Self::Encoded { value, .. } => f.debug_tuple("Encoded").field(&value.len()).finish(),
        }
    }
}

impl Queued for Outgoing {
    fn type_url(&self) -> &str {
        match self {
            Self::Any(any) => &any.type_url,
            // Only received messages are matched against `accepts`.
            Self::Encoded { .. } => "",
        }
    }

    fn queued_len(&self) -> usize {
        match self {
            Self::Any(any) => any.queued_len(),
            Self::Encoded {
                value,
                placed,
                type_url_len,
                ..
            } => type_url_len + value.len() + placed.iter().map(|(_, v)| v.len()).sum::<usize>(),
        }
    }
}

impl Outgoing {
    /// Queues the message in the session's outbox (after `poll_ready_outbound`).
    pub(crate) fn write(&self, writer: &mut SessionWriter) -> Result<()> {
        match self {
            Self::Any(any) => writer.start_send_any(any),
            Self::Encoded {
                value,
                placed,
                write,
                ..
            } => write(writer, value, placed),
        }
    }
}

/// The length of a typed message's type URL, computed once per type while the same type is
/// fed (as the session does for the URL itself).
#[derive(Debug, Default)]
pub(crate) struct TypeUrlLen(NameCache);

impl TypeUrlLen {
    pub(crate) fn of<M: Name>(&mut self) -> usize {
        self.0.get(crate::codec::type_url::<M>).len()
    }
}

/// Encodes typed messages for the retransmit queue.
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    /// The unused end of the current chunk; the messages before it are `Bytes` slices of it.
    buf: BytesMut,
}

impl Encoder {
    /// `msg` encoded once, in a slice of the shared buffer; `type_url_len` from
    /// [`TypeUrlLen`], `value_len` is `msg.encoded_len()`, `queued` the bytes queued before it.
    pub(crate) fn encode_small<M: Message + Name>(
        &mut self,
        msg: &M,
        type_url_len: usize,
        value_len: usize,
        queued: usize,
    ) -> Outgoing {
        if self.buf.capacity() < value_len {
            // The old chunk stays alive until its last message is acknowledged.
            let chunk = queued.clamp(MIN_CHUNK, MAX_CHUNK).max(value_len);
            self.buf = BytesMut::with_capacity(chunk);
        }
        encode_into(msg, &mut self.buf);
        Outgoing::Encoded {
            value: self.buf.split().freeze(),
            placed: Box::default(),
            type_url_len,
            write: write_as::<M>,
        }
    }
}

/// `msg` encoded once, in a buffer of its own (for large messages, outside the lock), but
/// for its large `Bytes` fields: those stay where they are (the application's payload is
/// neither copied nor allocated again; a retransmission writes it from there too).
pub(crate) fn encode_large<M: Message + Name>(
    msg: &M,
    type_url_len: usize,
    value_len: usize,
) -> Outgoing {
    // Room for the small fields (kept until the peer acknowledges the message, so not more);
    // a large field that is not a `Bytes` makes it grow.
    let mut buf = BytesMut::with_capacity(value_len.min(1024));
    // Most large messages carry one large field: one allocation, no shrinking.
    let mut placed = Vec::with_capacity(1);
    crate::codec::encode_placing(msg, &mut buf, BY_REFERENCE_LEN, |at, value| {
        placed.push((at, value))
    });
    Outgoing::Encoded {
        value: buf.freeze(),
        placed: placed.into_boxed_slice(),
        type_url_len,
        write: write_as::<M>,
    }
}

fn encode_into<M: Message>(msg: &M, buf: &mut impl BufMut) {
    msg.encode_raw(buf);
}

/// A large value goes to the connection from where it is, never copied again (on every
/// link, retransmissions included).
fn write_as<M: Name>(
    writer: &mut SessionWriter,
    value: &Bytes,
    placed: &[(usize, Bytes)],
) -> Result<()> {
    writer.start_send_parts_of::<M>(value, placed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::example::HelloWorld;

    #[test]
    fn small_messages_share_a_chunk_and_count_like_an_any() {
        let mut encoder = Encoder::default();
        let hello = HelloWorld {
            text: "hi".into(),
            sequence: 7,
        };
        let any = crate::codec::pack(&hello);
        let url_len = TypeUrlLen::default().of::<HelloWorld>();
        let value_len = hello.encoded_len();
        let len = url_len + value_len;
        assert_eq!(len, any.queued_len());
        let a = encoder.encode_small(&hello, url_len, value_len, 0);
        let b = encoder.encode_small(&hello, url_len, value_len, 0);
        let (Outgoing::Encoded { value: va, .. }, Outgoing::Encoded { value: vb, .. }) = (&a, &b)
        else {
            panic!("encoded");
        };
        assert_eq!(&va[..], &any.value[..]);
        assert_eq!(va.as_ptr().wrapping_add(va.len()), vb.as_ptr(), "one chunk");
        assert_eq!(b.queued_len(), len);
        let large = encode_large(&hello, url_len, value_len);
        assert_eq!(large.queued_len(), len);
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Blob {
        #[prost(bytes = "bytes", tag = "1")]
        data: Bytes,
        #[prost(uint32, tag = "2")]
        n: u32,
    }

    impl Name for Blob {
        const NAME: &'static str = "Blob";
        const PACKAGE: &'static str = "test.v1";
    }

    #[test]
    fn a_large_bytes_field_is_kept_where_it_is_and_counted() {
        let data = Bytes::from(vec![3; 100_000]);
        let blob = Blob {
            data: data.clone(),
            n: 9,
        };
        let url_len = TypeUrlLen::default().of::<Blob>();
        let value_len = blob.encoded_len();
        let large = encode_large(&blob, url_len, value_len);
        let Outgoing::Encoded { value, placed, .. } = &large else {
            panic!("encoded");
        };
        // The field's tag and length, then the field (placed), then `n`.
        assert_eq!(placed.len(), 1);
        assert_eq!(placed[0].1.as_ptr(), data.as_ptr(), "not copied");
        assert_eq!(value.len() + data.len(), value_len);
        let mut whole = value[..placed[0].0].to_vec();
        whole.extend_from_slice(&placed[0].1);
        whole.extend_from_slice(&value[placed[0].0..]);
        assert_eq!(whole, blob.encode_to_vec());
        assert_eq!(large.queued_len(), url_len + value_len);
    }
}
