//! [`TlsStream`]: futures-rustls' stream with rustls errors turned into [`TlsError`]s, and the
//! handshakes that make one.

use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_io::{AsyncRead, AsyncWrite};
use rustls::{CertificateError, CommonState};
use rustls_pki_types::{CertificateDer, ServerName};
use x509_parser::extensions::GeneralName;

use super::config::{TlsClientConfig, TlsServerConfig};
use crate::connection::{Connection, ConnectionConfig, ConnectionInfo, PeerIdentity};
use crate::error::{CertificateProblem, Error, Result, TlsAlert, TlsError, TlsProtocolProblem};

/// A TLS byte stream over `S` (client or server side).
///
/// Errors rustls reports while reading or writing (an alert from the peer, a broken record)
/// come out as [`Error::Tls`] from the [`Connection`] on top, not as opaque I/O errors.
/// Closing sends TLS `close_notify`, then closes `S` (for TCP: shuts its write side down). A peer
/// whose stream ends without `close_notify` (a truncation, or a crashed peer) makes the reader
/// fail with an [`Error::Io`] of kind `UnexpectedEof` instead of ending cleanly.
#[derive(Debug)]
pub struct TlsStream<S> {
    inner: futures_rustls::TlsStream<S>,
}

impl<S> TlsStream<S> {
    /// The stream underneath, and the TLS session's state (protocol version, cipher suite,
    /// peer certificates...).
    pub fn get_ref(&self) -> (&S, &CommonState) {
        self.inner.get_ref()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner)
            .poll_read(cx, buf)
            .map_err(|e| typed_io_error(e, None))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner)
            .poll_write(cx, buf)
            .map_err(|e| typed_io_error(e, None))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner)
            .poll_write_vectored(cx, bufs)
            .map_err(|e| typed_io_error(e, None))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner)
            .poll_flush(cx)
            .map_err(|e| typed_io_error(e, None))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner)
            .poll_close(cx)
            .map_err(|e| typed_io_error(e, None))
    }
}

/// Runs the client side of a TLS handshake over an already connected `stream`, checking that
/// the server's certificate is valid for `server_name` (a DNS name or an IP address). Works over
/// any `futures-io` stream and any runtime; with the `tcp` feature,
/// [`connect`](super::connect) does it over TCP, with a timeout.
///
/// `info` is kept for the connection (transports put the addresses in it); the server's
/// verified identity is added to it.
///
/// # Errors
/// [`Error::Tls`] if the server's certificate is rejected ([`TlsError::UnknownIssuer`],
/// [`TlsError::NotValidForName`], [`TlsError::Expired`]...), the server rejects us
/// ([`TlsError::PeerRejected`]) or `server_name` is invalid; [`Error::Io`] if the stream fails.
pub async fn connect_stream<S>(
    stream: S,
    server_name: &str,
    tls: &TlsClientConfig,
    config: &ConnectionConfig,
    info: ConnectionInfo,
) -> Result<Connection<TlsStream<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|_| TlsError::InvalidServerName(server_name.to_string()))?;
    let connector = futures_rustls::TlsConnector::from(tls.rustls().clone());
    let stream = connector
        .connect(name, stream)
        .await
        .map_err(|e| Error::from(typed_io_error(e, Some(server_name))))?;
    let inner = futures_rustls::TlsStream::Client(stream);
    Ok(finish(inner, config, info))
}

/// Runs the server side of a TLS handshake over an accepted `stream`. Works over any
/// `futures-io` stream and any runtime, but has no timeout of its own: bound it with your
/// runtime's timer, as [`TlsListener`](super::TlsListener) does.
///
/// `info` is kept for the connection; the client's verified identity is added to it when the
/// configuration requires client certificates.
///
/// # Errors
/// [`Error::Tls`] if the client does not speak TLS ([`TlsError::Protocol`]), sends no or an
/// untrusted certificate when one is required ([`TlsError::NoClientCertificate`],
/// [`TlsError::UnknownIssuer`]...), or rejects ours ([`TlsError::PeerRejected`]);
/// [`Error::Io`] if the stream fails or the client goes away.
pub async fn accept_stream<S>(
    stream: S,
    tls: &TlsServerConfig,
    config: &ConnectionConfig,
    info: ConnectionInfo,
) -> Result<Connection<TlsStream<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let acceptor = futures_rustls::TlsAcceptor::from(tls.rustls().clone());
    let stream = acceptor
        .accept(stream)
        .await
        .map_err(|e| Error::from(typed_io_error(e, None)))?;
    let inner = futures_rustls::TlsStream::Server(stream);
    Ok(finish(inner, config, info))
}

fn finish<S: AsyncRead + AsyncWrite + Unpin>(
    inner: futures_rustls::TlsStream<S>,
    config: &ConnectionConfig,
    info: ConnectionInfo,
) -> Connection<TlsStream<S>> {
    let (_, session) = inner.get_ref();
    let identity = session.peer_certificates().map(peer_identity);
    log::debug!(
        "TLS {:?} {:?} established, peer {:?}",
        session.protocol_version(),
        session.negotiated_cipher_suite().map(|s| s.suite()),
        identity
            .as_ref()
            .and_then(|i| i.common_name().map(str::to_owned))
    );
    let info = info.with_peer_identity(identity);
    Connection::with_config(TlsStream { inner }, config, info)
}

/// The names in a verified certificate chain. The chain has passed rustls' verification, so it
/// parses; if the end-entity certificate somehow does not, the identity has no names.
fn peer_identity(chain: &[CertificateDer<'_>]) -> PeerIdentity {
    let identity = PeerIdentity::new(chain.iter().map(|c| c.as_ref().to_vec()).collect());
    let Some(end_entity) = chain.first() else {
        return identity;
    };
    let cert = match x509_parser::parse_x509_certificate(end_entity.as_ref()) {
        Ok((_, cert)) => cert,
        Err(e) => {
            log::warn!("cannot parse the peer's verified certificate: {e}");
            return identity;
        }
    };
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => dns_names.push(dns.to_string()),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        ip_addresses.push(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        ip_addresses.push(IpAddr::from(v6));
                    }
                }
                _ => {}
            }
        }
    }
    identity
        .with_common_name(common_name)
        .with_dns_names(dns_names)
        .with_ip_addresses(ip_addresses)
}

/// Puts a [`TlsError`] in place of the `rustls::Error` futures-rustls wraps in `io::Error`, so
/// `Error::from` turns it into [`Error::Tls`]. Other I/O errors pass unchanged.
pub(super) fn typed_io_error(e: io::Error, server_name: Option<&str>) -> io::Error {
    if !e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
        return e;
    }
    let kind = e.kind();
    match e
        .into_inner()
        .map(|inner| inner.downcast::<rustls::Error>())
    {
        Some(Ok(rustls_error)) => io::Error::new(kind, tls_error(*rustls_error, server_name)),
        Some(Err(other)) => io::Error::new(kind, other),
        None => io::Error::from(kind),
    }
}

fn tls_error(e: rustls::Error, server_name: Option<&str>) -> TlsError {
    match e {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => TlsError::UnknownIssuer,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsError::NotValidForName {
                    expected: server_name.unwrap_or_default().to_string(),
                }
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                TlsError::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                TlsError::NotYetValid
            }
            other => TlsError::BadCertificate {
                problem: certificate_problem(&other),
                detail: format!("{other:?}"),
            },
        },
        rustls::Error::NoCertificatesPresented => TlsError::NoClientCertificate,
        rustls::Error::AlertReceived(alert) => TlsError::PeerRejected {
            alert: TlsAlert::from_code(u8::from(alert)),
        },
        other => TlsError::Protocol {
            problem: protocol_problem(&other),
            detail: other.to_string(),
        },
    }
}

fn protocol_problem(e: &rustls::Error) -> TlsProtocolProblem {
    use rustls::InvalidMessage;
    match e {
        // The first bytes of a plaintext client are not a TLS record header.
        rustls::Error::InvalidMessage(
            InvalidMessage::InvalidContentType | InvalidMessage::MessageTooLarge,
        ) => TlsProtocolProblem::NotTls,
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => {
            TlsProtocolProblem::UnexpectedMessage
        }
        rustls::Error::DecryptError => TlsProtocolProblem::Decrypt,
        rustls::Error::PeerIncompatible(_) => TlsProtocolProblem::NoCommonParameters,
        rustls::Error::PeerMisbehaved(_) => TlsProtocolProblem::Misbehaved,
        _ => TlsProtocolProblem::Other,
    }
}

fn certificate_problem(e: &CertificateError) -> CertificateProblem {
    match e {
        CertificateError::BadEncoding => CertificateProblem::BadEncoding,
        CertificateError::BadSignature
        | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            CertificateProblem::BadSignature
        }
        CertificateError::Revoked => CertificateProblem::Revoked,
        CertificateError::UnknownRevocationStatus
        | CertificateError::ExpiredRevocationList
        | CertificateError::ExpiredRevocationListContext { .. } => {
            CertificateProblem::UnknownRevocationStatus
        }
        CertificateError::InvalidPurpose
        | CertificateError::InvalidPurposeContext { .. }
        | CertificateError::UnhandledCriticalExtension => CertificateProblem::InvalidPurpose,
        _ => CertificateProblem::Other,
    }
}
