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
    value: Bytes,
}

impl Frame {
    /// A frame with these fields, or `None` if `type_url` is not UTF-8.
    pub(crate) fn new(type_url: Bytes, value: Bytes) -> Option<Self> {
        std::str::from_utf8(&type_url).ok()?;
        Some(Self { type_url, value })
    }

    /// The type URL.
    pub(crate) fn type_url(&self) -> &str {
        // Checked in `new`, so the empty fallback is never taken.
        std::str::from_utf8(&self.type_url).unwrap_or_default()
    }

    /// The full protobuf name of the message type (the type URL after its last `/`).
    pub(crate) fn type_name(&self) -> &str {
        type_name(self.type_url())
    }

    /// The encoded message.
    pub(crate) fn value(&self) -> &Bytes {
        &self.value
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
        Self {
            type_url: Bytes::from(any.type_url.into_bytes()),
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
        assert_eq!(&frame.value()[..], &[1, 2, 3]);
        assert_eq!(frame.into_any(), any);
    }

    #[test]
    fn refuses_a_type_url_that_is_not_utf8() {
        assert!(Frame::new(Bytes::from_static(b"x/\xff"), Bytes::new()).is_none());
        assert!(Frame::new(Bytes::from_static(b"x/a.B"), Bytes::new()).is_some());
    }
}
