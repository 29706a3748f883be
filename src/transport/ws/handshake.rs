//! The server side of the opening handshake (RFC 6455 §4.2), done by hand so one port can both
//! upgrade WebSocket requests on the configured path and answer plain HTTP requests (a page for
//! browsers): read one bounded request head, then answer `101`, a refusal, or hand the request
//! to the caller.

use futures_io::{AsyncRead, AsyncWrite};
use futures_util::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Result, WsError};

/// Longest request head (request line and headers) a server reads: 8 KiB.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Most headers in a request head.
const MAX_HEADERS: usize = 64;

/// An HTTP request head as read off the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RequestHead {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header lists `token` (case-insensitively).
    fn lists(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Asks for a WebSocket upgrade (`Connection: Upgrade` and `Upgrade: websocket`).
    pub fn is_upgrade(&self) -> bool {
        self.lists("connection", "upgrade") && self.lists("upgrade", "websocket")
    }
}

/// Parses a complete request head at the front of `buf` (sans-IO): `Ok(None)` if more bytes are
/// needed, else the head and its length.
pub(crate) fn parse_request(buf: &[u8]) -> Result<Option<(RequestHead, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(WsError::Handshake(format!("malformed HTTP request: {e}")).into()),
    };
    let target = request.path.unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or("/").to_string();
    let head = RequestHead {
        method: request.method.unwrap_or("").to_string(),
        path,
        headers: request
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    };
    Ok(Some((head, len)))
}

/// Reads one request head from `stream`; returns it and any bytes read past it.
pub(crate) async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(RequestHead, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(WsError::Handshake(format!(
                "connection closed after {} bytes of the HTTP request",
                buf.len()
            ))
            .into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some((head, len)) = parse_request(&buf)? {
            return Ok((head, buf.split_off(len)));
        }
        if buf.len() >= MAX_REQUEST_HEAD {
            return Err(WsError::Handshake(format!(
                "HTTP request head longer than {MAX_REQUEST_HEAD} bytes"
            ))
            .into());
        }
    }
}

/// What a request head asks of a server expecting upgrades on `path` with `subprotocol`: the
/// `Sec-WebSocket-Accept` value to answer with, or the refusal (status and reason).
pub(crate) fn check_upgrade(
    head: &RequestHead,
    path: &str,
    subprotocol: &str,
) -> std::result::Result<String, (u16, String)> {
    if head.method != "GET" {
        return Err((405, format!("method {} cannot upgrade", head.method)));
    }
    if head.path != path {
        return Err((404, format!("no WebSocket endpoint at {}", head.path)));
    }
    if head.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err((426, "Sec-WebSocket-Version must be 13".into()));
    }
    let Some(key) = head.header("sec-websocket-key") else {
        return Err((400, "no Sec-WebSocket-Key".into()));
    };
    if !head.lists("sec-websocket-protocol", subprotocol) {
        return Err((
            400,
            format!("Sec-WebSocket-Protocol must offer {subprotocol}"),
        ));
    }
    Ok(async_tungstenite::tungstenite::handshake::derive_accept_key(key.trim().as_bytes()))
}

/// The `101 Switching Protocols` answer.
pub(crate) fn switching_protocols(accept: &str, subprotocol: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {subprotocol}\r\n\r\n"
    )
}

/// Writes a complete HTTP/1.1 response and flushes it; the connection is not kept alive.
pub(crate) async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
) -> Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\nCache-Control: no-store\r\n{extra_headers}\r\n",
        reason_phrase(status),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    Ok(())
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        500 => "Internal Server Error",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_REQUEST: &[u8] = b"GET /connect?x=1 HTTP/1.1\r\nHost: server.example.com\r\n\
        Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Protocol: chat, connect.v1\r\nSec-WebSocket-Version: 13\r\n\r\nrest";

    #[test]
    fn the_rfc_example_upgrades() {
        assert!(parse_request(&RFC_REQUEST[..20]).unwrap().is_none());
        let (head, len) = parse_request(RFC_REQUEST).unwrap().unwrap();
        assert_eq!(&RFC_REQUEST[len..], b"rest");
        assert_eq!(head.path, "/connect");
        assert!(head.is_upgrade());
        // RFC 6455 §1.3's example key and accept value.
        assert_eq!(
            check_upgrade(&head, "/connect", "connect.v1"),
            Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_string())
        );
        assert_eq!(
            check_upgrade(&head, "/other", "connect.v1").unwrap_err().0,
            404
        );
        assert_eq!(
            check_upgrade(&head, "/connect", "connect.v2")
                .unwrap_err()
                .0,
            400
        );
    }

    #[test]
    fn garbage_is_a_typed_handshake_error() {
        let err = parse_request(b"\x16\x03\x01\x02\x00\x01\r\n\r\n").unwrap_err();
        assert!(matches!(
            err,
            crate::Error::WebSocket(WsError::Handshake(_))
        ));
    }
}
