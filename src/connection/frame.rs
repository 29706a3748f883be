//! A received frame seen in place: its type URL and value as slices of the read buffer.

use bytes::Bytes;
use prost_types::Any;

use crate::codec::type_name;

/// One received `Any` without its fields copied out: the dispatcher routes on
/// [`type_name`](Self::type_name) and decodes the handler's message from
/// [`value`](Self::value), so only a fallback or an unknown type pays for an owned [`Any`].
#[derive(Debug)]
pub struct Frame {
    /// The type URL's bytes, checked to be UTF-8 when the frame was made.
    type_url: Bytes,
    /// Where the full name starts in `type_url` (after the last `/`).
    name_start: usize,
    value: Bytes,
}

impl Frame {
    /// A frame with these fields, or `None` if `type_url` is not UTF-8.
    pub(crate) fn new(type_url: Bytes, value: Bytes) -> Option<Self> {
        std::str::from_utf8(&type_url).ok()?;
        let name_start = type_url
            .iter()
            .rposition(|&b| b == b'/')
            .map_or(0, |slash| slash + 1);
        Some(Self {
            type_url,
            name_start,
            value,
        })
    }

    /// Type URLs up to this long are worth remembering to recognise the next frame's (by one
    /// comparison instead of a UTF-8 check and a search for the name); longer ones are checked
    /// every time, so that a peer cannot make a reader keep a copy of a huge one.
    pub(crate) const REMEMBERED_URL_LEN: usize = 256;

    /// A frame whose `type_url` is known to be UTF-8 with its name starting at `name_start`
    /// (the same bytes as an earlier frame's): what [`new`](Self::new) would make, unchecked.
    pub(crate) fn checked(type_url: Bytes, name_start: usize, value: Bytes) -> Self {
        Self {
            type_url,
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
        // Checked in `new`, so the empty fallback is never taken.
        std::str::from_utf8(&self.type_url).unwrap_or_default()
    }

    /// The type URL's bytes: what a router compares with the URL it saw last, without looking
    /// for the name in it again.
    pub(crate) fn type_url_bytes(&self) -> &[u8] {
        &self.type_url
    }

    /// The full name's bytes: what the per-frame checks compare, without the UTF-8 check that
    /// turning them back into a `&str` costs (safe code cannot skip it, and it showed up as a
    /// tenth of a session reader's time at 64 B).
    pub(crate) fn type_name_bytes(&self) -> &[u8] {
        &self.type_url[self.name_start..]
    }

    /// The full protobuf name of the message type (the type URL after its last `/`).
    pub(crate) fn type_name(&self) -> &str {
        // A suffix after an ASCII `/` of a checked UTF-8 string: UTF-8 itself, so the empty
        // fallback is never taken.
        std::str::from_utf8(&self.type_url[self.name_start..]).unwrap_or_default()
    }

    /// The encoded message.
    pub(crate) fn value(&self) -> &Bytes {
        &self.value
    }

    /// The encoded message, taking it out of the frame (no reference count touched).
    pub(crate) fn into_value(self) -> Bytes {
        self.value
    }

    /// An owned `Any` with the same fields.
    pub(crate) fn into_any(self) -> Any {
        Any {
            type_url: self.type_url().to_owned(),
            value: Vec::from(self.value),
        }
    }
}

impl From<Any> for Frame {
    /// Takes over the `Any`'s allocations; nothing is copied.
    fn from(any: Any) -> Self {
        let name_start = any.type_url.len() - type_name(&any.type_url).len();
        Self {
            type_url: Bytes::from(any.type_url.into_bytes()),
            name_start,
            value: Bytes::from(any.value),
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
        assert_eq!(&frame.value()[..], &[1, 2, 3]);
        assert_eq!(frame.into_any(), any);
    }

    #[test]
    fn refuses_a_type_url_that_is_not_utf8() {
        assert!(Frame::new(Bytes::from_static(b"x/\xff"), Bytes::new()).is_none());
        let frame = Frame::new(Bytes::from_static(b"x/y/a.B"), Bytes::new()).unwrap();
        assert_eq!(frame.type_name(), "a.B");
        let frame = Frame::new(Bytes::from_static(b"a.B"), Bytes::new()).unwrap();
        assert_eq!(frame.type_name(), "a.B");
    }
}
