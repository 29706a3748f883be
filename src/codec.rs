//! Sans-IO framing: one protobuf-delimited `google.protobuf.Any` per frame.
//!
//! A frame is the `Any`'s encoded length as a base-128 varint followed by the `Any`'s bytes. This
//! is what `writeDelimitedTo` (Java), `protodelim` (Go), `serialize_length_prefixed` (Python) and
//! `encodeDelimited` (protobuf.js) write, so peers in those languages need no code of ours.
//!
//! The codec touches no I/O: [`Codec::decode`] takes whatever bytes have arrived and returns
//! `Ok(None)` until a whole frame is there; [`Codec::encode`] appends a frame to an outgoing
//! buffer. [`crate::Connection`] is the only place that moves these bytes to and from a socket.
//!
//! ```
//! use bytes::BytesMut;
//! use connect::codec::Codec;
//! use prost_types::Any;
//!
//! let codec = Codec::new();
//! let any = Any { type_url: "type.googleapis.com/x.Y".into(), value: vec![1, 2, 3] };
//! let mut wire = BytesMut::new();
//! codec.encode(&any, &mut wire)?;
//!
//! // Bytes arrive in pieces: the codec waits for the whole frame.
//! let mut received = BytesMut::from(&wire[..5]);
//! assert_eq!(codec.decode(&mut received)?, None);
//! received.extend_from_slice(&wire[5..]);
//! assert_eq!(codec.decode(&mut received)?, Some(any));
//! assert!(received.is_empty());
//! # Ok::<(), connect::Error>(())
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::ops::Range;

use prost::encoding::{decode_varint, encode_varint, encoded_len_varint};
use prost::{Message, Name};
use prost_types::Any;

use crate::error::{Error, Result};

/// Default maximum length of one frame's `Any` bytes: 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// The longest valid base-128 varint for a 64-bit value.
pub(crate) const MAX_VARINT_LEN: usize = 10;

/// The largest frame length any buffer can hold with its prefix: a larger `max_frame_len`
/// (such as `usize::MAX`, "no limit") acts as this, so `prefix + frame` never overflows.
const LARGEST_FRAME_LEN: usize = isize::MAX as usize - MAX_VARINT_LEN;

/// Room reserved at once for a frame still arriving: the buffer grows with what the peer
/// actually sends (doubling), not with what its length prefix announces.
const RESERVE_STEP: usize = 64 * 1024;

/// Encoder and decoder of delimited-`Any` frames, with a maximum frame length.
///
/// The maximum applies to the `Any` bytes (the length prefix's value) in both directions: a
/// peer announcing a longer frame is refused before any memory is reserved for it, and a local
/// message that would encode longer is refused before anything is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Codec {
    max_frame_len: usize,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

impl Codec {
    /// A codec with the [default maximum frame length](DEFAULT_MAX_FRAME_LEN).
    pub const fn new() -> Self {
        Self {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
        }
    }

    /// A codec accepting frames of at most `max_frame_len` bytes.
    ///
    /// Values above what memory can address (`isize::MAX` less a length prefix) mean "no
    /// limit" and are lowered to that, so `usize::MAX` is a valid setting.
    pub const fn with_max_frame_len(max_frame_len: usize) -> Self {
        let max_frame_len = if max_frame_len > LARGEST_FRAME_LEN {
            LARGEST_FRAME_LEN
        } else {
            max_frame_len
        };
        Self { max_frame_len }
    }

    /// The maximum length of one frame's `Any` bytes.
    pub const fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Takes one frame off the front of `src`.
    ///
    /// Returns `Ok(None)` when `src` does not yet hold a whole frame; in that case `src` is left
    /// untouched apart from reserving room for more of the announced frame (never more than
    /// the frame, and growing with what has arrived rather than with what the prefix announces).
    /// On success the frame's bytes are removed from `src`.
    ///
    /// # Errors
    /// [`Error::FrameTooLarge`] if the length prefix exceeds the maximum,
    /// [`Error::InvalidLengthPrefix`] if it is not a valid varint, and [`Error::Decode`] if the
    /// frame's bytes are not a valid `Any`. After an error the byte stream cannot be trusted to
    /// be in sync any more; the connection should be closed.
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Any>> {
        let Some((prefix_len, frame_len)) = self.decode_header(src)? else {
            return Ok(None);
        };
        // Cannot overflow: `decode_header` caps `frame_len` at `LARGEST_FRAME_LEN`.
        let total = prefix_len + frame_len;
        if src.len() < total {
            src.reserve((total - src.len()).min(src.len().max(RESERVE_STEP)));
            return Ok(None);
        }
        let any = Any::decode(&src[prefix_len..total]);
        src.advance(total);
        any.map(Some).map_err(|source| Error::Decode {
            type_name: Any::full_name(),
            source,
        })
    }

    /// Reads and checks the length prefix at the front of `src` without consuming anything.
    ///
    /// Returns the prefix's own length and the frame length it announces, or `None` if the
    /// prefix is still incomplete.
    #[inline]
    pub(crate) fn decode_header(&self, src: &[u8]) -> Result<Option<(usize, usize)>> {
        let mut value: u64 = 0;
        for (i, &byte) in src.iter().take(MAX_VARINT_LEN).enumerate() {
            // The tenth byte may only carry the 64th bit.
            if i == MAX_VARINT_LEN - 1 && byte > 1 {
                return Err(Error::InvalidLengthPrefix);
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return match usize::try_from(value) {
                    Ok(len) if len <= self.max_frame_len => Ok(Some((i + 1, len))),
                    _ => Err(Error::FrameTooLarge {
                        len: value,
                        max: self.max_frame_len,
                    }),
                };
            }
        }
        if src.len() >= MAX_VARINT_LEN {
            Err(Error::InvalidLengthPrefix)
        } else {
            Ok(None)
        }
    }

    /// Appends `any` as one frame to `dst`.
    ///
    /// # Errors
    /// [`Error::FrameTooLarge`] if the encoded `Any` is longer than the maximum; `dst` is then
    /// left unchanged.
    pub fn encode(&self, any: &Any, dst: &mut BytesMut) -> Result<()> {
        let len = any.encoded_len();
        self.check_len(len)?;
        dst.reserve(encoded_len_varint(len as u64) + len);
        encode_varint(len as u64, dst);
        any.encode_raw(dst);
        Ok(())
    }

    /// Appends `msg`, packed in an `Any` with type URL [`type_url::<M>()`](type_url), as one frame to `dst`.
    ///
    /// The bytes are identical to `encode(&Any::from_msg(msg)?, dst)`, but the message is encoded
    /// straight into `dst` instead of into an intermediate `Any`.
    ///
    /// # Errors
    /// [`Error::FrameTooLarge`] if the frame would be longer than the maximum; `dst` is then left
    /// unchanged.
    pub fn encode_message<M: Message + Name>(&self, msg: &M, dst: &mut BytesMut) -> Result<()> {
        self.encode_message_as(&type_url::<M>(), msg, dst)
    }

    /// [`encode_message`](Self::encode_message) with the type URL given, so that a caller
    /// sending many messages can compute it once.
    #[inline]
    pub(crate) fn encode_message_as(
        &self,
        type_url: &str,
        msg: &impl Message,
        dst: &mut BytesMut,
    ) -> Result<()> {
        let value_len = msg.encoded_len();
        if self.encode_head(type_url, value_len, value_len, dst)? {
            msg.encode_raw(dst);
        }
        Ok(())
    }

    /// [`encode_message_as`](Self::encode_message_as), except that the message's large
    /// [`Bytes`] fields (at least `by_reference` long) are not copied into `dst`: each is handed
    /// to `place` with the length `dst` has at the point where it belongs, to be written from
    /// its own memory after `dst[..at]`. Returns the bytes so placed (the frame is that much
    /// longer than what `dst` gained).
    pub(crate) fn encode_message_placing(
        &self,
        type_url: &str,
        msg: &impl Message,
        dst: &mut BytesMut,
        by_reference: usize,
        place: impl FnMut(usize, Bytes),
    ) -> Result<usize> {
        let value_len = msg.encoded_len();
        if value_len < by_reference {
            // Nothing to place: what `encode_message_as` does, without a second `encoded_len`.
            if self.encode_head(type_url, value_len, value_len, dst)? {
                msg.encode_raw(dst);
            }
            return Ok(0);
        }
        // Room for the head and the small fields; a large field that is not a `Bytes` (a
        // `Vec<u8>`) makes `dst` grow as it is copied in.
        if self.encode_head(type_url, value_len, by_reference, dst)? {
            return Ok(encode_placing(msg, dst, by_reference, place));
        }
        Ok(0)
    }

    /// Appends a frame's length prefix and its `Any`'s bytes up to the value's own bytes: all
    /// of the frame but the value, which the caller appends (or writes) right after. Reserves
    /// `room` bytes beyond the head. Returns whether the value field is there at all (an empty
    /// value is left out, as every protobuf encoder does).
    ///
    /// # Errors
    /// [`Error::FrameTooLarge`] if the frame would be longer than the maximum; `dst` is then left
    /// unchanged.
    #[inline]
    pub(crate) fn encode_head(
        &self,
        type_url: &str,
        value_len: usize,
        room: usize,
        dst: &mut BytesMut,
    ) -> Result<bool> {
        // Fields of google.protobuf.Any: 1 = type_url (string), 2 = value (bytes). Like every
        // protobuf encoder, leave out fields that hold their default (empty) value.
        let url_field_len = field_len(type_url.len());
        let value_field_len = field_len(value_len);
        let len = url_field_len + value_field_len;
        self.check_len(len)?;
        dst.reserve(encoded_len_varint(len as u64) + len - value_len + room);
        encode_varint(len as u64, dst);
        if url_field_len > 0 {
            dst.put_u8(0x0a);
            encode_varint(type_url.len() as u64, dst);
            dst.put_slice(type_url.as_bytes());
        }
        if value_field_len > 0 {
            dst.put_u8(0x12);
            encode_varint(value_len as u64, dst);
        }
        Ok(value_field_len > 0)
    }

    fn check_len(&self, len: usize) -> Result<()> {
        if len > self.max_frame_len {
            return Err(Error::FrameTooLarge {
                len: len as u64,
                max: self.max_frame_len,
            });
        }
        Ok(())
    }
}

/// Appends `msg` (no frame head) to `dst`, except for its [`Bytes`] fields of at least
/// `by_reference` bytes, each handed to `place` with the length `dst` has where it belongs.
/// Returns the bytes so placed.
pub(crate) fn encode_placing(
    msg: &impl Message,
    dst: &mut BytesMut,
    by_reference: usize,
    place: impl FnMut(usize, Bytes),
) -> usize {
    let mut placing = Placing {
        dst,
        by_reference,
        place,
        placed: 0,
    };
    msg.encode_raw(&mut placing);
    placing.placed
}

/// A [`BufMut`] over a frame buffer that takes large [`Bytes`] fields by reference (see
/// [`Codec::encode_message_placing`]): prost encodes a `Bytes` field with
/// [`BufMut::put`]`(field.clone())`, and [`Buf::copy_to_bytes`] of a `Bytes` is a slice of
/// it, not a copy. Every other write goes to `dst`.
struct Placing<'a, F> {
    dst: &'a mut BytesMut,
    by_reference: usize,
    place: F,
    placed: usize,
}

// SAFETY: every method forwards to `dst`'s, so `chunk_mut`, `advance_mut` and
// `remaining_mut` keep `BytesMut`'s guarantees; `put` only adds calls to `dst`'s methods.
// The crate's one `unsafe` (see lib.rs): a 1 MiB `feed_message` ran at 0.64-0.75x raw TCP
// with the copy, and at 1.04x when the value went out from its own memory.
#[allow(unsafe_code)]
unsafe impl<F: FnMut(usize, Bytes)> BufMut for Placing<'_, F> {
    #[inline]
    fn remaining_mut(&self) -> usize {
        self.dst.remaining_mut()
    }

    #[inline]
    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller's guarantee for `self` is the one `dst` needs.
        unsafe { self.dst.advance_mut(cnt) }
    }

    #[inline]
    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        self.dst.chunk_mut()
    }

    #[inline]
    fn put_slice(&mut self, src: &[u8]) {
        self.dst.put_slice(src)
    }

    #[inline]
    fn put_u8(&mut self, n: u8) {
        self.dst.put_u8(n)
    }

    #[inline]
    fn put_bytes(&mut self, val: u8, cnt: usize) {
        self.dst.put_bytes(val, cnt)
    }

    #[inline]
    fn put<T: Buf>(&mut self, mut src: T)
    where
        Self: Sized,
    {
        let len = src.remaining();
        // Only a `Bytes` is taken (a `&[u8]`, what prost puts for a `Vec<u8>` field, would be
        // copied into a new allocation). The type is told by name because `put` does not ask
        // for `T: 'static`; a name that matched another type would still be handled correctly
        // (`copy_to_bytes` is right for every `Buf`), only not for free.
        if len >= self.by_reference && std::any::type_name::<T>() == std::any::type_name::<Bytes>()
        {
            self.placed += len;
            (self.place)(self.dst.len(), src.copy_to_bytes(len));
        } else {
            self.dst.put(src)
        }
    }
}

/// Where the `type_url` and `value` fields of an encoded `google.protobuf.Any` lie in `any`,
/// without copying them; a missing field is an empty range.
///
/// Only the plain encodings are recognised: `None` for anything else (groups, a field of the
/// wrong wire type, truncated input), in which case prost's `Any` decoder should be asked for the
/// final word. As in protobuf, the last occurrence of a repeated field wins and unknown fields
/// are skipped.
#[inline]
pub(crate) fn any_fields(any: &[u8]) -> Option<(Range<usize>, Range<usize>)> {
    // What every encoder writes: type_url then value, each once, nothing else.
    if any.first() == Some(&0x0a) {
        let mut pos = 1;
        if let Some(url_len) = varint_at(any, &mut pos).and_then(|l| usize::try_from(l).ok()) {
            let url = pos..pos.saturating_add(url_len);
            pos = url.end;
            if any.get(pos) == Some(&0x12) {
                pos += 1;
                let value_len = varint_at(any, &mut pos).and_then(|l| usize::try_from(l).ok());
                if value_len.and_then(|l| pos.checked_add(l)) == Some(any.len()) {
                    return Some((url, pos..any.len()));
                }
            } else if pos == any.len() {
                return Some((url, pos..pos));
            }
        }
    }
    any_fields_in_general(any)
}

/// [`any_fields`] for any field order, repeated and unknown fields.
fn any_fields_in_general(any: &[u8]) -> Option<(Range<usize>, Range<usize>)> {
    let (mut type_url, mut value) = (0..0, 0..0);
    let mut pos = 0;
    while pos < any.len() {
        let key = varint_at(any, &mut pos)?;
        // Field number 0 and keys beyond 32 bits are invalid: prost's error is the one to give.
        if key >> 3 == 0 || key > u64::from(u32::MAX) {
            return None;
        }
        let len = match key & 7 {
            0 => {
                varint_at(any, &mut pos)?;
                0
            }
            1 => 8,
            2 => usize::try_from(varint_at(any, &mut pos)?).ok()?,
            5 => 4,
            _ => return None,
        };
        let range = pos..pos.checked_add(len).filter(|&end| end <= any.len())?;
        pos = range.end;
        match (key >> 3, key & 7) {
            // prost checks every occurrence of the type URL as UTF-8, not only the last one
            // that wins: a replaced one that is not UTF-8 is its error to give.
            (1, 2) if std::str::from_utf8(&any[type_url.clone()]).is_err() => return None,
            (1, 2) => type_url = range,
            (2, 2) => value = range,
            (1 | 2, _) => return None,
            _ => {}
        }
    }
    Some((type_url, value))
}

/// The varint at `buf[*pos..]`, advancing `pos` past it; one-byte varints (field keys and short
/// lengths) take the inlined fast path.
#[inline]
fn varint_at(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let first = *buf.get(*pos)?;
    if first < 0x80 {
        *pos += 1;
        return Some(u64::from(first));
    }
    let mut rest = &buf[*pos..];
    let before = rest.len();
    let value = decode_varint(&mut rest).ok()?;
    *pos += before - rest.len();
    Some(value)
}

/// Encoded length of a length-delimited field with a one-byte key, or 0 when empty.
fn field_len(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        1 + encoded_len_varint(len as u64) + len
    }
}

/// What every type URL we send starts with: the prefix every `Any.pack` writes, and the only one
/// the spec allows on the wire.
pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// The type URL `M` is sent with: [`TYPE_URL_PREFIX`] + `M::full_name()`, whatever
/// `M::type_url()` says. (prost's `Name::type_url` is `/pkg.Name` unless the generating
/// `prost-build` set `type_name_domain`, or a hand-written `Name` impl overrides it; `connect`
/// never puts such a URL on the wire.)
///
/// ```
/// use connect::proto::example::HelloWorld;
/// assert_eq!(
///     connect::codec::type_url::<HelloWorld>(),
///     "type.googleapis.com/connect.example.v1.HelloWorld"
/// );
/// ```
pub fn type_url<M: Name>() -> String {
    let name = M::full_name();
    let mut url = String::with_capacity(TYPE_URL_PREFIX.len() + name.len());
    url.push_str(TYPE_URL_PREFIX);
    url.push_str(&name);
    url
}

/// `msg` packed in an `Any` with the standard type URL ([`type_url`]), as every `connect` handle
/// sends it.
///
/// ```
/// use connect::proto::example::HelloWorld;
/// let any = connect::codec::pack(&HelloWorld { text: "hi".into(), sequence: 1 });
/// assert_eq!(any.type_url, "type.googleapis.com/connect.example.v1.HelloWorld");
/// assert_eq!(any.to_msg::<HelloWorld>().unwrap().text, "hi");
/// ```
pub fn pack<M: Message + Name>(msg: &M) -> Any {
    Any {
        type_url: type_url::<M>(),
        value: msg.encode_to_vec(),
    }
}

/// The full protobuf name in a type URL: everything after the last `/` (the whole URL if it has
/// none), which is how every official protobuf library matches an `Any` to a message type.
///
/// ```
/// assert_eq!(
///     connect::codec::type_name("type.googleapis.com/connect.example.v1.HelloWorld"),
///     "connect.example.v1.HelloWorld"
/// );
/// ```
#[inline]
pub fn type_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(name: &str, value: &[u8]) -> Any {
        Any {
            type_url: format!("type.googleapis.com/{name}"),
            value: value.to_vec(),
        }
    }

    #[test]
    fn round_trip_several_frames_in_one_buffer() {
        let codec = Codec::new();
        let msgs = [
            any("a.B", b"x"),
            any("c.D", &[]),
            Any::default(),
            any("e.F", &[0; 300]),
        ];
        let mut buf = BytesMut::new();
        for m in &msgs {
            codec.encode(m, &mut buf).unwrap();
        }
        for m in &msgs {
            assert_eq!(codec.decode(&mut buf).unwrap().as_ref(), Some(m));
        }
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn incomplete_input_is_never_an_error() {
        let codec = Codec::new();
        let mut wire = BytesMut::new();
        codec.encode(&any("a.B", &[7; 200]), &mut wire).unwrap();
        for cut in 0..wire.len() {
            let mut part = BytesMut::from(&wire[..cut]);
            assert_eq!(codec.decode(&mut part).unwrap(), None, "cut at {cut}");
            assert_eq!(part.len(), cut, "nothing consumed at cut {cut}");
        }
    }

    #[test]
    fn oversized_prefix_is_refused_before_allocating() {
        let codec = Codec::with_max_frame_len(1024);
        let mut buf = BytesMut::new();
        encode_varint(1025, &mut buf);
        let capacity = buf.capacity();
        match codec.decode(&mut buf) {
            Err(Error::FrameTooLarge {
                len: 1025,
                max: 1024,
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(buf.capacity(), capacity);

        let mut huge = BytesMut::new();
        encode_varint(u64::MAX, &mut huge);
        assert!(matches!(
            codec.decode(&mut huge),
            Err(Error::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn reserve_is_bounded_by_the_announced_length() {
        let codec = Codec::with_max_frame_len(1 << 20);
        let mut buf = BytesMut::new();
        encode_varint(1000, &mut buf);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(
            buf.capacity() >= 1002 && buf.capacity() < 4096,
            "{}",
            buf.capacity()
        );
    }

    #[test]
    fn unlimited_max_frame_len_never_overflows() {
        let codec = Codec::with_max_frame_len(usize::MAX);
        assert_eq!(codec.max_frame_len(), LARGEST_FRAME_LEN);
        // A prefix announcing the largest frame that still fits: waits for it, reserving only a
        // step, not the announced length.
        let mut buf = BytesMut::new();
        encode_varint(LARGEST_FRAME_LEN as u64, &mut buf);
        buf.extend_from_slice(&[0x0a, 0x01]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() <= 2 * RESERVE_STEP, "{}", buf.capacity());
        // Prefixes whose length plus the prefix would overflow `usize`: refused.
        for len in [u64::MAX, u64::MAX - 5, isize::MAX as u64] {
            let mut buf = BytesMut::new();
            encode_varint(len, &mut buf);
            assert!(
                matches!(codec.decode(&mut buf), Err(Error::FrameTooLarge { .. })),
                "{len}"
            );
        }
        // Ordinary frames still round-trip.
        let mut wire = BytesMut::new();
        codec.encode(&any("a.B", &[1; 100]), &mut wire).unwrap();
        assert_eq!(
            codec.decode(&mut wire).unwrap(),
            Some(any("a.B", &[1; 100]))
        );
    }

    #[test]
    fn reserve_grows_with_what_arrived() {
        let codec = Codec::with_max_frame_len(1 << 30);
        let mut buf = BytesMut::new();
        encode_varint(1 << 30, &mut buf);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() < 2 * RESERVE_STEP, "{}", buf.capacity());
    }

    #[test]
    fn invalid_varints() {
        let codec = Codec::new();
        // Eleven continuation bytes: longer than any u64 varint.
        let mut buf = BytesMut::from(&[0xff; 11][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(Error::InvalidLengthPrefix)
        ));
        // Ten bytes whose last carries more than the 64th bit.
        let mut buf =
            BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(Error::InvalidLengthPrefix)
        ));
        // Nine continuation bytes: still possibly valid, so wait.
        let mut buf = BytesMut::from(&[0x80; 9][..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn non_any_bytes_are_a_decode_error() {
        let codec = Codec::new();
        // A frame of 3 bytes: field 1, wire type 2, length 5, but only 1 byte follows.
        let mut buf = BytesMut::from(&[0x03, 0x0a, 0x05, 0x41][..]);
        match codec.decode(&mut buf) {
            Err(Error::Decode { type_name, .. }) => assert_eq!(type_name, "google.protobuf.Any"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn outgoing_frames_respect_the_maximum() {
        let codec = Codec::with_max_frame_len(16);
        let mut buf = BytesMut::new();
        let err = codec.encode(&any("a.B", &[0; 32]), &mut buf).unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { max: 16, .. }));
        assert!(buf.is_empty());
    }

    #[test]
    fn encode_message_matches_encoding_an_any() {
        let codec = Codec::new();
        let values = [
            prost_types::Duration {
                seconds: 0,
                nanos: 0,
            },
            prost_types::Duration {
                seconds: 5,
                nanos: 7,
            },
        ];
        for v in values {
            let mut direct = BytesMut::new();
            codec.encode_message(&v, &mut direct).unwrap();
            let mut via_any = BytesMut::new();
            codec
                .encode(&Any::from_msg(&v).unwrap(), &mut via_any)
                .unwrap();
            assert_eq!(direct, via_any);
        }
    }

    #[test]
    fn type_names() {
        assert_eq!(type_name("type.googleapis.com/a.b.C"), "a.b.C");
        assert_eq!(type_name("example.com/x/y/a.C"), "a.C");
        assert_eq!(type_name("a.C"), "a.C");
        assert_eq!(type_name(""), "");
    }

    #[test]
    fn any_fields_agree_with_prost() {
        let mut wire = BytesMut::new();
        let packed = any("a.B", b"hello");
        packed.encode_raw(&mut wire);
        let (url, value) = any_fields(&wire).unwrap();
        assert_eq!(&wire[url], packed.type_url.as_bytes());
        assert_eq!(&wire[value], b"hello");

        // Unknown fields of every plain wire type are skipped; the last occurrence wins.
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&[0x18, 0x96, 0x01]); // 3: varint
        wire.extend_from_slice(&[0x21, 1, 2, 3, 4, 5, 6, 7, 8]); // 4: fixed64
        wire.extend_from_slice(&[0x2d, 1, 2, 3, 4]); // 5: fixed32
        wire.extend_from_slice(&[0x12, 1, b'x', 0x0a, 1, b'u', 0x12, 2, b'y', b'z']);
        let (url, value) = any_fields(&wire).unwrap();
        assert_eq!((&wire[url], &wire[value]), (&b"u"[..], &b"yz"[..]));
        let prost = Any::decode(&wire[..]).unwrap();
        assert_eq!(
            (prost.type_url.as_str(), &prost.value[..]),
            ("u", &b"yz"[..])
        );

        // Whatever it does not handle plainly is left to prost.
        assert_eq!(any_fields(&[0x0a, 5, b'a']), None); // truncated
        assert_eq!(any_fields(&[0x08, 1]), None); // type_url as a varint
        assert_eq!(any_fields(&[0x1b, 0x1c]), None); // a group
        assert_eq!(any_fields(&[]), Some((0..0, 0..0)));
        assert_eq!(any_fields(&[0x0a, 1, b'u']), Some((2..3, 3..3)));
        assert_eq!(any_fields(&[0x0a, 1, b'u', 0x00, 0x00]), None); // field number 0
        assert!(Any::decode(&[0x0a, 1, b'u', 0x00, 0x00][..]).is_err());
        assert_eq!(any_fields(&[0x12, 1, b'v']), Some((0..0, 2..3)));
        assert_eq!(any_fields(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]), None);
        assert_eq!(any_fields(&[0x0a, 1, b'u', 0x12, 2, b'v']), None);
        assert_eq!(
            any_fields(&[0x0a, 1, b'u', 0x12, 1, b'v', 0x0a, 1, b'w']),
            Some((8..9, 5..6))
        );
        // A replaced type URL that is not UTF-8 fails prost even though a later one wins.
        let replaced = [0x0a, 1, 0x80, 0x12, 0, 0x0a, 0];
        assert!(Any::decode(&replaced[..]).is_err());
        assert_eq!(any_fields(&replaced), None);
    }

    proptest::proptest! {
        /// Whatever `any_fields` accepts, prost's `Any` decodes to the same two fields.
        #[test]
        fn any_fields_never_disagrees_with_prost(
            url in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            value in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..8),
            cut in 0usize..600,
        ) {
            let mut wire = Vec::new();
            if !url.is_empty() {
                wire.push(0x0a);
                encode_varint(url.len() as u64, &mut wire);
                wire.extend_from_slice(&url);
            }
            wire.push(0x12);
            encode_varint(value.len() as u64, &mut wire);
            wire.extend_from_slice(&value);
            wire.extend_from_slice(&noise);
            wire.truncate(cut);
            if let Some((u, v)) = any_fields(&wire) {
                if let Ok(any) = Any::decode(&wire[..]) {
                    proptest::prop_assert_eq!(any.type_url.as_bytes(), &wire[u]);
                    proptest::prop_assert_eq!(&any.value[..], &wire[v]);
                } else {
                    // prost refuses only a type URL that is not UTF-8.
                    proptest::prop_assert!(std::str::from_utf8(&wire[u]).is_err());
                }
            }
        }
    }
}
