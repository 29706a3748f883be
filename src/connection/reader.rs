//! The receiving half of a connection.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_io::AsyncRead;
use prost::{Message, Name};
use prost_types::Any;

use super::framed::ReadState;
use super::ConnectionInfo;
use crate::codec::type_name;
use crate::error::{Error, Result};

/// Receives frames: a [`Stream`] of `Result<Any>`.
///
/// The stream ends (`None`) when the peer closes the connection between two frames. Any error
/// (I/O, an invalid or oversized frame, the connection ending inside a frame) is yielded once and
/// then the stream ends: after a framing error the byte stream cannot be trusted any more.
///
/// Memory: bytes are read into one buffer, which grows to the largest frame received (at most
/// the maximum frame length) and is reused while messages keep arriving, so a steady stream of
/// large messages allocates nothing per message; when the peer pauses (a read finds nothing and
/// nothing is buffered) a buffer above 2 KiB is given back, so an idle connection holds at most
/// 2 KiB for receiving (none before its first byte). Frames are cut out of it without
/// copying: [`recv_message`](Self::recv_message) decodes straight from the frame, so fields of
/// type [`bytes::Bytes`] (prost-build's `.bytes(..)` option) are slices of the receive buffer
/// rather than copies; a message whose `Bytes` fields are still held keeps its part of the
/// buffer alive, and reading goes on in a new buffer. Once such a buffer is free again it is
/// kept (one at most) for the next burst, unless the reader has meanwhile found nothing to read.
///
/// Made by [`Connection::split`](crate::Connection::split), or with [`ConnectionReader::new`]
/// over any [`AsyncRead`].
#[derive(Debug)]
pub struct ConnectionReader<R> {
    pub(super) io: R,
    pub(super) state: ReadState,
    pub(crate) info: Arc<ConnectionInfo>,
}

impl<R: AsyncRead + Unpin> ConnectionReader<R> {
    /// Receives from `io`, refusing frames longer than `config`'s maximum.
    pub fn new(io: R, config: &super::ConnectionConfig, info: ConnectionInfo) -> Self {
        Self {
            io,
            state: ReadState::new(config.codec()),
            info: Arc::new(info),
        }
    }

    crate::handle::reader_methods!();

    /// Decodes straight from the received frame, without an intermediate [`Any`]: fields of
    /// type [`bytes::Bytes`] (prost-build's `.bytes(..)` option) are slices of the receive
    /// buffer rather than copies; the buffer is reused once such a message has been dropped, so
    /// hold on to it only as long as needed.
    pub(crate) fn poll_recv_message<M: Message + Name + Default>(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<M>>> {
        self.state.poll_next_message(Pin::new(&mut self.io), cx)
    }
}

impl<R> ConnectionReader<R> {
    /// Addresses and identity of this connection.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Changes the maximum length of frames not yet received (the session layer negotiates it).
    pub(crate) fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.state.set_max_frame_len(max_frame_len);
    }

    /// Keeps a buffer whose frames come back while the link pauses, until [`trim`](Self::trim)
    /// (a session driver's timer) finds the reader still idle: for a reader whose frames are
    /// queued for the application while it reads on.
    pub(crate) fn defer_trim(&mut self) {
        self.state.defer_trim();
    }

    /// Gives back the spare receive buffer if nothing was read since the last read found
    /// nothing (see [`defer_trim`](Self::defer_trim)).
    pub(crate) fn trim(&mut self) {
        self.state.trim();
    }

    /// Polls for the next frame, seen in place (see [`Frame`](super::Frame)).
    pub(crate) fn poll_next_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<super::Frame>>>
    where
        R: AsyncRead + Unpin,
    {
        self.state.poll_next_view(Pin::new(&mut self.io), cx)
    }

    /// Bytes received but not yet returned as messages.
    pub fn buffered_len(&self) -> usize {
        self.state.buffered_len()
    }

    /// Whether the next frame is already buffered (polling for it reads nothing).
    pub(crate) fn frame_buffered(&self) -> bool {
        self.state.frame_buffered()
    }

    /// Frames and bytes received so far (the sent half is zero); see [`crate::metrics`].
    pub fn stats(&self) -> crate::ConnectionStats {
        let (frames_received, bytes_received) = self.state.counter.get();
        crate::ConnectionStats {
            frames_received,
            bytes_received,
            ..Default::default()
        }
    }
}

impl<R: AsyncRead + Unpin> Stream for ConnectionReader<R> {
    type Item = Result<Any>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.state.poll_next(Pin::new(&mut this.io), cx)
    }
}

/// Unpacks `any` as an `M`, checking its type name first.
pub(crate) fn unpack<M: Message + Name + Default>(any: Any) -> Result<M> {
    if type_name(&any.type_url) != M::full_name() {
        return Err(Error::UnexpectedType {
            expected: M::full_name(),
            any: Box::new(any),
        });
    }
    M::decode(any.value.as_slice()).map_err(|source| Error::Decode {
        type_name: M::full_name(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use crate::proto::example::HelloWorld;
    use crate::ConnectionConfig;
    use bytes::BytesMut;
    use futures::executor::block_on;
    use futures::io::Cursor;

    /// A message with a `bytes::Bytes` field, as prost-build's `.bytes(..)` generates.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Blob {
        #[prost(bytes = "bytes", tag = "1")]
        data: bytes::Bytes,
    }

    impl Name for Blob {
        const NAME: &'static str = "Blob";
        const PACKAGE: &'static str = "test.v1";
    }

    fn reader(frames: &[Any]) -> ConnectionReader<Cursor<Vec<u8>>> {
        let mut wire = BytesMut::new();
        for any in frames {
            Codec::new().encode(any, &mut wire).unwrap();
        }
        ConnectionReader::new(
            Cursor::new(wire.to_vec()),
            &ConnectionConfig::default(),
            ConnectionInfo::new(),
        )
    }

    fn hello(text: &str) -> HelloWorld {
        HelloWorld {
            text: text.into(),
            sequence: 7,
        }
    }

    #[test]
    fn typed_receive_checks_the_type_and_goes_on() {
        let blob = Blob {
            data: vec![9; 1000].into(),
        };
        let mut r = reader(&[
            Any::from_msg(&hello("a")).unwrap(),
            Any::from_msg(&blob).unwrap(),
            Any::from_msg(&hello("b")).unwrap(),
            // Any library's type URL prefix is accepted; only the name counts.
            Any {
                type_url: "example.com/x/connect.example.v1.HelloWorld".into(),
                value: hello("c").encode_to_vec(),
            },
        ]);
        block_on(async {
            assert_eq!(
                r.recv_message::<HelloWorld>().await.unwrap(),
                Some(hello("a"))
            );
            match r.recv_message::<HelloWorld>().await {
                Err(Error::UnexpectedType { expected, any }) => {
                    assert_eq!(expected, "connect.example.v1.HelloWorld");
                    assert_eq!(any.to_msg::<Blob>().unwrap(), blob);
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(
                r.recv_message::<HelloWorld>().await.unwrap(),
                Some(hello("b"))
            );
            assert_eq!(
                r.recv_message::<HelloWorld>().await.unwrap(),
                Some(hello("c"))
            );
            assert_eq!(r.recv_message::<HelloWorld>().await.unwrap(), None);
        });
    }

    #[test]
    fn held_messages_keep_their_bytes() {
        let frames: Vec<Any> = (0..300u32)
            .map(|i| {
                Any::from_msg(&Blob {
                    data: vec![i as u8; 500 + i as usize].into(),
                })
                .unwrap()
            })
            .collect();
        let mut r = reader(&frames);
        let held: Vec<Blob> = block_on(async {
            let mut held = Vec::new();
            while let Some(blob) = r.recv_message::<Blob>().await.unwrap() {
                held.push(blob);
            }
            held
        });
        assert_eq!(held.len(), 300);
        for (i, blob) in held.iter().enumerate() {
            assert_eq!(blob.data, vec![i as u8; 500 + i]);
        }
    }

    #[test]
    fn a_frame_that_is_not_an_any_ends_the_stream() {
        for bad in [&[0x0a, 0x02, 0xff, 0xfe][..], &[0x0a, 0x09, b'x']] {
            let mut wire = vec![bad.len() as u8];
            wire.extend_from_slice(bad);
            let mut r = ConnectionReader::new(
                Cursor::new(wire),
                &ConnectionConfig::default(),
                ConnectionInfo::new(),
            );
            block_on(async {
                match r.recv_message::<HelloWorld>().await {
                    Err(Error::Decode { type_name, .. }) => {
                        assert_eq!(type_name, "google.protobuf.Any")
                    }
                    other => panic!("{other:?}"),
                }
                assert_eq!(r.recv_message::<HelloWorld>().await.unwrap(), None);
            });
        }
    }

    #[test]
    fn bytes_that_are_not_the_message_are_a_decode_error() {
        let mut r = reader(&[
            Any {
                type_url: "type.googleapis.com/connect.example.v1.HelloWorld".into(),
                value: vec![0x0a, 0x05, b'x'],
            },
            Any::from_msg(&hello("next")).unwrap(),
        ]);
        block_on(async {
            match r.recv_message::<HelloWorld>().await {
                Err(Error::Decode { type_name, .. }) => {
                    assert_eq!(type_name, "connect.example.v1.HelloWorld")
                }
                other => panic!("{other:?}"),
            }
            // The frame itself was sound, so the stream goes on.
            assert_eq!(
                r.recv_message::<HelloWorld>().await.unwrap(),
                Some(hello("next"))
            );
        });
    }
}
