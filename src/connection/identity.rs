//! [`PeerIdentity`]: who the peer proved to be, when the transport authenticates peers (TLS).

use std::net::IpAddr;

/// The peer's verified certificate and the names it holds.
///
/// Set by transports that authenticate the peer: with TLS, a client sees the server's identity,
/// and a server that requires client certificates sees the client's. The certificate chain has
/// been verified against the trusted certificate authorities before a connection exists, so the
/// names can be used for authorization.
///
/// ```
/// use connect::PeerIdentity;
///
/// let peer = PeerIdentity::new(vec![b"DER bytes".to_vec()])
///     .with_common_name(Some("client-1".into()))
///     .with_dns_names(vec!["client-1.example".into()]);
/// assert!(peer.has_name("client-1.example"));
/// assert!(!peer.has_name("client-2.example"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    certificates: Vec<Vec<u8>>,
    common_name: Option<String>,
    dns_names: Vec<String>,
    ip_addresses: Vec<IpAddr>,
}

impl PeerIdentity {
    /// An identity from its certificate chain (DER, the peer's own certificate first), with no
    /// names yet.
    pub fn new(certificates: Vec<Vec<u8>>) -> Self {
        Self {
            certificates,
            common_name: None,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
        }
    }

    /// Sets the subject's common name (CN).
    pub fn with_common_name(mut self, common_name: Option<String>) -> Self {
        self.common_name = common_name;
        self
    }

    /// Sets the DNS names of the subject alternative name extension.
    pub fn with_dns_names(mut self, dns_names: Vec<String>) -> Self {
        self.dns_names = dns_names;
        self
    }

    /// Sets the IP addresses of the subject alternative name extension.
    pub fn with_ip_addresses(mut self, ip_addresses: Vec<IpAddr>) -> Self {
        self.ip_addresses = ip_addresses;
        self
    }

    /// The certificate chain as the peer sent it, DER-encoded, the peer's own certificate first.
    pub fn certificates(&self) -> &[Vec<u8>] {
        &self.certificates
    }

    /// The peer's own (end-entity) certificate, DER-encoded.
    pub fn certificate(&self) -> Option<&[u8]> {
        self.certificates.first().map(Vec::as_slice)
    }

    /// The subject's common name (CN), if the certificate has one.
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// DNS names from the subject alternative name extension.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// IP addresses from the subject alternative name extension.
    pub fn ip_addresses(&self) -> &[IpAddr] {
        &self.ip_addresses
    }

    /// Whether `name` is the common name or one of the DNS names (exact match, ASCII case
    /// ignored; wildcards are not expanded).
    pub fn has_name(&self, name: &str) -> bool {
        self.common_name
            .iter()
            .chain(&self.dns_names)
            .any(|n| n.eq_ignore_ascii_case(name))
    }
}
