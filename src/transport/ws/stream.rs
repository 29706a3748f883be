//! [`WsStream`]: a WebSocket link as a byte stream for [`Connection`](crate::Connection), with
//! frame boundaries kept on message boundaries in both directions.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_tungstenite::tungstenite::error::{CapacityError, Error as TungError};
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use bytes::{Buf, Bytes, BytesMut};
use futures_core::Stream;
use futures_io::{AsyncRead, AsyncWrite};
use futures_sink::Sink;

use crate::codec::Codec;
use crate::error::{Error, WsError};

/// Bytes of whole frames the writer gathers before it sends them as a message without waiting
/// for a flush: 64 KiB.
const BATCH_LEN: usize = 64 * 1024;

/// Close codes this side sends (RFC 6455 §7.4.1).
pub(crate) mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Going away (a server shutting down, a browser leaving the page).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Unsupported data: a text message.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Invalid payload: a binary message that does not hold whole frames.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
}

/// A WebSocket link over `S` as the byte stream under a [`Connection`](crate::Connection).
///
/// * **Reading**: each binary message must hold one or more whole frames; their bytes are handed
///   to the connection's reader in order. A text message, a message cut mid-frame, an oversized
///   message or a WebSocket protocol error fails the read with [`Error::WebSocket`] after this
///   side has sent a close code (see [`WsError`]). Pings are answered, pongs ignored; a close
///   with 1000 or 1001 (or none) is a clean end of stream.
/// * **Writing**: bytes are gathered until they make whole frames; each message carries whole
///   frames only (several when they were written together, up to 64 KiB a message, or one
///   larger frame alone), sent at the latest on flush. Closing sends close code 1000.
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    codec: Codec,
    max_message_len: usize,
    /// What is left of the message being read.
    incoming: Bytes,
    /// The read side failed: the error, and whether the close code has been sent.
    failed: Option<(WsError, bool)>,
    /// The peer closed cleanly.
    ended: bool,
    /// Bytes written and not sent yet; the first `complete` of them are whole frames.
    outgoing: BytesMut,
    complete: usize,
    /// Our close frame is queued (by `poll_close` or a failed read).
    close_sent: bool,
}

impl<S> WsStream<S> {
    pub(crate) fn new(ws: WebSocketStream<S>, max_frame_len: usize) -> Self {
        Self {
            ws,
            codec: Codec::with_max_frame_len(max_frame_len),
            max_message_len: max_message_len(max_frame_len),
            incoming: Bytes::new(),
            failed: None,
            ended: false,
            outgoing: BytesMut::new(),
            complete: 0,
            close_sent: false,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// The stream underneath (a TCP or TLS socket).
    pub fn get_ref(&self) -> &S {
        self.ws.get_ref()
    }
}

impl<S> fmt::Debug for WsStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsStream")
            .field("max_message_len", &self.max_message_len)
            .field("incoming", &self.incoming.len())
            .field("outgoing", &self.outgoing.len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// The largest message: one frame of the maximum length with the longest prefix.
pub(crate) fn max_message_len(max_frame_len: usize) -> usize {
    max_frame_len.saturating_add(crate::codec::MAX_VARINT_LEN)
}

/// Checks that `message` is one or more whole frames (sans-IO).
///
/// # Errors
/// [`WsError::InvalidMessage`] (with its close code) if it is empty, ends inside a frame or holds
/// a bad or oversized length prefix.
pub(crate) fn check_message(codec: &Codec, message: &[u8]) -> Result<(), (WsError, u16)> {
    if message.is_empty() {
        return Err((
            WsError::InvalidMessage("empty message".into()),
            close_code::INVALID_PAYLOAD,
        ));
    }
    let mut at = 0;
    while at < message.len() {
        match codec.decode_header(&message[at..]) {
            Ok(Some((prefix, len))) if message.len() - at - prefix >= len => at += prefix + len,
            Ok(_) => {
                return Err((
                    WsError::InvalidMessage(format!(
                        "message of {} bytes ends inside the frame at byte {at}",
                        message.len()
                    )),
                    close_code::INVALID_PAYLOAD,
                ))
            }
            Err(e @ Error::FrameTooLarge { .. }) => {
                return Err((WsError::InvalidMessage(e.to_string()), close_code::TOO_BIG))
            }
            Err(e) => {
                return Err((
                    WsError::InvalidMessage(e.to_string()),
                    close_code::INVALID_PAYLOAD,
                ))
            }
        }
    }
    Ok(())
}

/// How many bytes at the front of `buf` (from `start`, a frame boundary) are whole frames, and
/// the total length of the frame after them once its prefix is known.
fn whole_frames(codec: &Codec, buf: &[u8], mut start: usize) -> (usize, Option<usize>) {
    loop {
        match codec.decode_header(&buf[start..]) {
            Ok(Some((prefix, len))) if buf.len() - start - prefix >= len => start += prefix + len,
            Ok(Some((prefix, len))) => return (start, Some(prefix + len)),
            _ => return (start, None),
        }
    }
}

/// A tungstenite error as ours, with the close code to send when there is one to send.
fn classify(e: TungError, max: usize) -> Result<(WsError, Option<u16>), io::Error> {
    Ok(match e {
        TungError::Io(e) => return Err(e),
        TungError::Capacity(CapacityError::MessageTooLong { size, max_size }) => (
            WsError::MessageTooLarge {
                len: size,
                max: max_size.min(max),
            },
            Some(close_code::TOO_BIG),
        ),
        TungError::Utf8(_) => (WsError::TextMessage, Some(close_code::INVALID_PAYLOAD)),
        TungError::Protocol(p) => (WsError::Protocol(p.to_string()), Some(close_code::PROTOCOL)),
        other => (WsError::Protocol(other.to_string()), None),
    })
}

fn ws_io_error(e: WsError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn tung_io_error(e: TungError) -> io::Error {
    match e {
        TungError::Io(e) => e,
        TungError::ConnectionClosed | TungError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::NotConnected, "WebSocket closed")
        }
        other => ws_io_error(WsError::Protocol(other.to_string())),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Sends the close code of a failed read (best effort), then reports the failure.
    fn poll_failed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some((error, sent)) = &mut self.failed else {
            return Poll::Ready(Ok(0));
        };
        if !*sent {
            if let Some(code) = close_code_of(error) {
                match Pin::new(&mut self.ws).poll_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(())) => {
                        let frame = CloseFrame {
                            code: CloseCode::from(code),
                            reason: short_reason(error).into(),
                        };
                        let _ = Pin::new(&mut self.ws).start_send(Message::Close(Some(frame)));
                        self.close_sent = true;
                    }
                    Poll::Ready(Err(_)) => {}
                }
            }
            *sent = true;
        }
        // Best effort: a peer that does not read gets no close frame, but no hang either once
        // the socket's buffer takes it (it is a few bytes).
        if Pin::new(&mut self.ws).poll_flush(cx).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(Err(ws_io_error(error.clone())))
    }

    /// Sends the whole frames gathered so far, as messages of at most `BATCH_LEN` bytes (or one
    /// larger frame).
    fn poll_send_complete(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.complete > 0 {
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(tung_io_error)?;
            let take = if self.complete <= BATCH_LEN {
                self.complete
            } else {
                let (batch, next) = whole_frames(&self.codec, &self.outgoing[..BATCH_LEN], 0);
                if batch > 0 {
                    batch
                } else {
                    // The first frame alone is larger than a batch.
                    next.unwrap_or(self.complete)
                }
            };
            let message = self.outgoing.split_to(take).freeze();
            self.complete -= take;
            Pin::new(&mut self.ws)
                .start_send(Message::Binary(message))
                .map_err(tung_io_error)?;
        }
        Poll::Ready(Ok(()))
    }
}

fn close_code_of(error: &WsError) -> Option<u16> {
    match error {
        WsError::TextMessage => Some(close_code::UNSUPPORTED_DATA),
        WsError::MessageTooLarge { .. } => Some(close_code::TOO_BIG),
        WsError::InvalidMessage(reason) if reason.contains("exceeds") => Some(close_code::TOO_BIG),
        WsError::InvalidMessage(_) => Some(close_code::INVALID_PAYLOAD),
        WsError::Protocol(_) => Some(close_code::PROTOCOL),
        _ => None,
    }
}

/// A close reason fits in 123 bytes.
fn short_reason(error: &WsError) -> String {
    let mut reason = error.to_string();
    if reason.len() > 123 {
        let mut cut = 123;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    reason
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            if !this.incoming.is_empty() {
                let n = buf.len().min(this.incoming.len());
                buf[..n].copy_from_slice(&this.incoming[..n]);
                this.incoming.advance(n);
                return Poll::Ready(Ok(n));
            }
            if this.failed.is_some() {
                return this.poll_failed(cx);
            }
            if this.ended || buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let failure = match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                None => {
                    this.ended = true;
                    continue;
                }
                Some(Ok(Message::Binary(message))) => match check_message(&this.codec, &message) {
                    Ok(()) => {
                        this.incoming = message;
                        continue;
                    }
                    Err((error, _)) => error,
                },
                Some(Ok(Message::Text(_))) => WsError::TextMessage,
                // Pings are answered by tungstenite; pongs and raw frames carry nothing for us.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(frame))) => {
                    let code = frame
                        .as_ref()
                        .map_or(close_code::NORMAL, |f| u16::from(f.code));
                    if code == close_code::NORMAL || code == close_code::GOING_AWAY {
                        this.ended = true;
                        continue;
                    }
                    let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                    return Poll::Ready(Err(ws_io_error(WsError::PeerClosed { code, reason })));
                }
                Some(Err(TungError::ConnectionClosed | TungError::AlreadyClosed)) => {
                    this.ended = true;
                    continue;
                }
                Some(Err(e)) => match classify(e, this.max_message_len)? {
                    (error, Some(_)) => error,
                    (error, None) => return Poll::Ready(Err(ws_io_error(error))),
                },
            };
            log::debug!("WebSocket link failed: {failure}");
            this.failed = Some((failure, false));
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.outgoing.len() >= BATCH_LEN && this.complete > 0 {
            ready!(this.poll_send_complete(cx))?;
        }
        // Past a batch, take only the rest of the frame being written (it may be large).
        let take = if this.outgoing.len() < BATCH_LEN {
            buf.len()
        } else {
            let (_, next) = whole_frames(&this.codec, &this.outgoing, 0);
            next.map_or(buf.len(), |len| len.saturating_sub(this.outgoing.len()))
                .clamp(1, buf.len().max(1))
                .min(buf.len())
        };
        this.outgoing.extend_from_slice(&buf[..take]);
        this.complete = whole_frames(&this.codec, &this.outgoing, this.complete).0;
        Poll::Ready(Ok(take))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_send_complete(cx))?;
        if let Err(e) = this.codec.decode_header(&this.outgoing) {
            // Only what a Connection writes goes out: whole frames.
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidInput, e)));
        }
        Pin::new(&mut this.ws).poll_flush(cx).map_err(tung_io_error)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        let this = &mut *self;
        if !this.close_sent {
            // With code 1000: a close without a code reads as 1005 ("no status") to the peer.
            match ready!(Pin::new(&mut this.ws).poll_ready(cx)) {
                Ok(()) => {
                    let frame = CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    };
                    match Pin::new(&mut this.ws).start_send(Message::Close(Some(frame))) {
                        // The peer's close came first: tungstenite has answered it already.
                        Ok(()) | Err(TungError::ConnectionClosed | TungError::AlreadyClosed) => {}
                        Err(TungError::Protocol(_)) => {}
                        Err(e) => return Poll::Ready(Err(tung_io_error(e))),
                    }
                }
                Err(TungError::ConnectionClosed | TungError::AlreadyClosed) => {}
                Err(e) => return Poll::Ready(Err(tung_io_error(e))),
            }
            this.close_sent = true;
        }
        match Pin::new(&mut this.ws).poll_close(cx) {
            Poll::Ready(Err(TungError::ConnectionClosed | TungError::AlreadyClosed)) => {
                Poll::Ready(Ok(()))
            }
            other => other.map_err(tung_io_error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(lens: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        for &len in lens {
            prost::encode_length_delimiter(len, &mut out).unwrap_or_default();
            out.extend(std::iter::repeat_n(0x0a, len));
        }
        out
    }

    #[test]
    fn whole_frames_pass() {
        let codec = Codec::with_max_frame_len(1000);
        assert!(check_message(&codec, &frames(&[3])).is_ok());
        assert!(check_message(&codec, &frames(&[3, 0, 200, 1])).is_ok());
    }

    #[test]
    fn cut_empty_and_oversized_messages_fail_with_their_close_code() {
        let codec = Codec::with_max_frame_len(100);
        let mut cut = frames(&[3, 5]);
        cut.pop();
        assert_eq!(check_message(&codec, &cut).map_err(|e| e.1), Err(1007));
        assert_eq!(check_message(&codec, &[0x80]).map_err(|e| e.1), Err(1007));
        assert_eq!(check_message(&codec, &[]).map_err(|e| e.1), Err(1007));
        assert_eq!(
            check_message(&codec, &frames(&[101])).map_err(|e| e.1),
            Err(1009)
        );
        let bad_prefix = [0xff; 11];
        assert_eq!(
            check_message(&codec, &bad_prefix).map_err(|e| e.1),
            Err(1007)
        );
    }

    #[test]
    fn writer_side_boundaries() {
        let codec = Codec::with_max_frame_len(1000);
        let buf = frames(&[3, 4, 10]);
        assert_eq!(whole_frames(&codec, &buf, 0), (buf.len(), None));
        assert_eq!(whole_frames(&codec, &buf[..7], 0), (4, Some(5)));
        assert_eq!(
            whole_frames(&codec, &buf[..buf.len() - 1], 4),
            (9, Some(11))
        );
    }
}
