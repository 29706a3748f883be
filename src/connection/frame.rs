//! A received frame seen in place: its type URL and value as slices of the read buffer.

use std::ops::Range;

use bytes::{Buf, Bytes};
use prost_types::Any;

use crate::codec::type_name;

/// One received `Any` without its fields copied out: the dispatcher routes on
/// [`type_name`](Self::type_name) and decodes the handler's message from
/// [`value`](Self::value), so only a fallback or an unknown type pays for an owned [`Any`].
///
/// A frame seen in place is one slice of the read buffer with the positions of its fields in
/// it (one reference count per frame, not one per field: at 64 B a count is a tenth of a
/// receiver's time).
#[derive(Debug)]
pub struct Frame {
    /// The `Any`'s bytes (a frame seen in place), or only its value (made from an owned `Any`).
    data: Bytes,
    /// The type URL, checked to be UTF-8 when the frame was made.
    url: Url,
    /// Where the full name starts in the type URL (after the last `/`).
    name_start: usize,
    /// Where the value lies in `data`.
    value: Range<usize>,
}

/// Where a frame's type URL is.
#[derive(Debug)]
enum Url {
    /// In the frame's `data`.
    In(Range<usize>),
    /// In bytes of its own (a frame made from an owned `Any`).
    Own(Bytes),
}

impl Frame {
    /// The frame whose `Any` is `data`, with its type URL and value at `url` and `value`, or
    /// `None` if the type URL is not UTF-8.
    pub(crate) fn new(data: Bytes, url: Range<usize>, value: Range<usize>) -> Option<Self> {
        let type_url = std::str::from_utf8(&data[url.clone()]).ok()?;
        let name_start = type_url.rfind('/').map_or(0, |slash| slash + 1);
        Some(Self::checked(data, url, name_start, value))
    }

    /// Type URLs up to this long are worth remembering to recognise the next frame's (by one
    /// comparison instead of a UTF-8 check and a search for the name); longer ones are checked
    /// every time, so that a peer cannot make a reader keep a copy of a huge one.
    pub(crate) const REMEMBERED_URL_LEN: usize = 256;

    /// A frame whose type URL is known to be UTF-8 with its name starting at `name_start`
    /// (the same bytes as an earlier frame's): what [`new`](Self::new) would make, unchecked.
    pub(crate) fn checked(
        data: Bytes,
        url: Range<usize>,
        name_start: usize,
        value: Range<usize>,
    ) -> Self {
        Self {
            data,
            url: Url::In(url),
            name_start,
            value,
        }
    }

    /// Where the full name starts in the type URL.
    pub(crate) fn name_start(&self) -> usize {
        self.name_start
    }

    /// The type URL.
    pub(crate) fn type_url(&self) -> &str {
        // Checked when the frame was made, so the empty fallback is never taken.
        std::str::from_utf8(self.type_url_bytes()).unwrap_or_default()
    }

    /// The type URL's bytes: what a router compares with the URL it saw last, without looking
    /// for the name in it again.
    pub(crate) fn type_url_bytes(&self) -> &[u8] {
        match &self.url {
            Url::In(range) => &self.data[range.clone()],
            Url::Own(url) => url,
        }
    }

    /// The full name's bytes: what the per-frame checks compare, without the UTF-8 check that
    /// turning them back into a `&str` costs (safe code cannot skip it, and it showed up as a
    /// tenth of a session reader's time at 64 B).
    pub(crate) fn type_name_bytes(&self) -> &[u8] {
        &self.type_url_bytes()[self.name_start..]
    }

    /// The full protobuf name of the message type (the type URL after its last `/`).
    pub(crate) fn type_name(&self) -> &str {
        // A suffix after an ASCII `/` of a checked UTF-8 string: UTF-8 itself, so the empty
        // fallback is never taken.
        std::str::from_utf8(self.type_name_bytes()).unwrap_or_default()
    }

    /// The encoded message.
    pub(crate) fn value(&self) -> &[u8] {
        &self.data[self.value.clone()]
    }

    /// The encoded message as `Bytes` sharing the frame's memory.
    pub(crate) fn value_bytes(&self) -> Bytes {
        self.data.slice(self.value.clone())
    }

    /// The encoded message, taking it out of the frame (no reference count touched).
    pub(crate) fn into_value(self) -> Bytes {
        let mut data = self.data;
        data.truncate(self.value.end);
        data.advance(self.value.start);
        data
    }

    /// An owned `Any` with the same fields.
    pub(crate) fn into_any(self) -> Any {
        Any {
            type_url: self.type_url().to_owned(),
            value: Vec::from(self.into_value()),
        }
    }
}

impl From<Any> for Frame {
    /// Takes over the `Any`'s allocations; nothing is copied.
    fn from(any: Any) -> Self {
        let name_start = any.type_url.len() - type_name(&any.type_url).len();
        let value = 0..any.value.len();
        Self {
            data: Bytes::from(any.value),
            url: Url::Own(Bytes::from(any.type_url.into_bytes())),
            name_start,
            value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_an_any() {
        let any = Any {
            type_url: "type.googleapis.com/a.B".into(),
            value: vec![1, 2, 3],
        };
        let frame = Frame::from(any.clone());
        assert_eq!(frame.type_name(), "a.B");
        assert_eq!(frame.type_url_bytes(), b"type.googleapis.com/a.B");
        assert_eq!(frame.value(), &[1, 2, 3]);
        assert_eq!(frame.into_any(), any);
    }

    #[test]
    fn refuses_a_type_url_that_is_not_utf8() {
        let frame = |url: &'static [u8]| {
            let mut data = url.to_vec();
            data.extend_from_slice(b"vv");
            Frame::new(Bytes::from(data), 0..url.len(), url.len()..url.len() + 2)
        };
        assert!(frame(b"x/\xff").is_none());
        let f = frame(b"x/y/a.B").unwrap();
        assert_eq!((f.type_name(), f.value()), ("a.B", &b"vv"[..]));
        assert_eq!(f.type_url(), "x/y/a.B");
        assert_eq!(&f.into_value()[..], b"vv");
        assert_eq!(frame(b"a.B").unwrap().type_name(), "a.B");
    }
}
