//! TLS settings: certificates and keys from PEM, and the client and server configurations.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Result, TlsConfigProblem, TlsError};

/// How long a peer may take to finish its TLS handshake, unless configured otherwise: 10 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The crypto provider every configuration made here uses: ring, set explicitly so that no
/// process-wide default (or a second provider in the dependency tree) changes it.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3, and TLS 1.2 for older peers.
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn config_error(problem: TlsConfigProblem, what: impl fmt::Display) -> TlsError {
    TlsError::Config {
        problem,
        detail: what.to_string(),
    }
}

/// What a PEM reading error means; `missing` is the problem when the PEM holds none of the
/// items asked for.
fn pem_problem(e: &rustls_pki_types::pem::Error, missing: TlsConfigProblem) -> TlsConfigProblem {
    match e {
        rustls_pki_types::pem::Error::Io(_) => TlsConfigProblem::Unreadable,
        rustls_pki_types::pem::Error::NoItemsFound => missing,
        _ => TlsConfigProblem::BadPem,
    }
}

/// rustls refused a configuration.
fn rejected(e: impl fmt::Display) -> TlsError {
    config_error(TlsConfigProblem::Rejected, e)
}

/// Every certificate in PEM text (other PEM sections, such as keys, are skipped).
///
/// # Errors
/// [`TlsError::Config`] if the PEM is malformed or holds no certificate.
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            let problem = pem_problem(&e, TlsConfigProblem::NoCertificate);
            config_error(problem, format_args!("cannot read certificates: {e}"))
        })?;
    if certs.is_empty() {
        let problem = TlsConfigProblem::NoCertificate;
        return Err(config_error(problem, "no certificate in the PEM data").into());
    }
    Ok(certs)
}

/// Every certificate in a PEM file.
///
/// # Errors
/// [`TlsError::Config`] if the file cannot be read, is malformed or holds no certificate.
pub fn certificates_from_pem_file(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>> {
    let path = path.as_ref();
    let error = |e: rustls_pki_types::pem::Error| {
        let problem = pem_problem(&e, TlsConfigProblem::NoCertificate);
        config_error(problem, format_args!("{}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(error)?;
    if certs.is_empty() {
        let problem = TlsConfigProblem::NoCertificate;
        let detail = format_args!("{}: no certificate in the file", path.display());
        return Err(config_error(problem, detail).into());
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in PEM text.
///
/// # Errors
/// [`TlsError::Config`] if the PEM is malformed or holds no private key.
pub fn private_key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        let problem = pem_problem(&e, TlsConfigProblem::NoPrivateKey);
        config_error(problem, format_args!("cannot read private key: {e}")).into()
    })
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
///
/// # Errors
/// [`TlsError::Config`] if the file cannot be read, is malformed or holds no private key.
pub fn private_key_from_pem_file(path: impl AsRef<Path>) -> Result<PrivateKeyDer<'static>> {
    let path = path.as_ref();
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        let problem = pem_problem(&e, TlsConfigProblem::NoPrivateKey);
        config_error(problem, format_args!("{}: {e}", path.display())).into()
    })
}

/// A certificate chain and its private key: what a server (or a client doing mutual TLS) shows
/// the peer.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// An identity from a certificate chain (own certificate first, then any intermediates) and
    /// the private key of the first certificate. Whether they match is checked when a
    /// configuration is built.
    pub fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        Self { chain, key }
    }

    /// An identity from PEM text: the certificate chain, and the private key.
    ///
    /// # Errors
    /// [`TlsError::Config`] if either cannot be read.
    pub fn from_pem(certificates: &[u8], key: &[u8]) -> Result<Self> {
        Ok(Self::new(
            certificates_from_pem(certificates)?,
            private_key_from_pem(key)?,
        ))
    }

    /// An identity from PEM files: the certificate chain, and the private key.
    ///
    /// # Errors
    /// [`TlsError::Config`] if either file cannot be read.
    pub fn from_pem_files(certificates: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::new(
            certificates_from_pem_file(certificates)?,
            private_key_from_pem_file(key)?,
        ))
    }

    /// The certificate chain.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Identity")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

fn root_store(certs: Vec<CertificateDer<'static>>) -> Result<RootCertStore> {
    if certs.is_empty() {
        let problem = TlsConfigProblem::NoTrustedAuthority;
        return Err(config_error(problem, "no trusted certificate authority given").into());
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| {
            let problem = TlsConfigProblem::UnusableAuthority;
            config_error(problem, format_args!("unusable CA certificate: {e}"))
        })?;
    }
    Ok(roots)
}

/// Client side TLS settings: which certificate authorities to trust, and optionally a client
/// certificate for servers that require one. Cheap to clone; share one for many connections.
///
/// ```
/// # fn main() -> connect::Result<()> {
/// # let (ca_pem, client_pem, client_key_pem) = certs();
/// use connect::transport::tls::{self, Identity, TlsClientConfig};
///
/// let config = TlsClientConfig::builder()
///     .trust(tls::certificates_from_pem(ca_pem.as_bytes())?)
///     .with_identity(Identity::from_pem(client_pem.as_bytes(), client_key_pem.as_bytes())?)
///     .build()?;
/// # Ok(()) }
/// # fn certs() -> (String, String, String) {
/// #     let ca_key = rcgen::KeyPair::generate().unwrap();
/// #     let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
/// #     params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
/// #     let ca = params.self_signed(&ca_key).unwrap();
/// #     let issuer = rcgen::Issuer::new(params, ca_key);
/// #     let key = rcgen::KeyPair::generate().unwrap();
/// #     let client = rcgen::CertificateParams::new(vec!["client".to_string()]).unwrap()
/// #         .signed_by(&key, &issuer).unwrap();
/// #     (ca.pem(), client.pem(), key.serialize_pem())
/// # }
/// ```
#[derive(Clone)]
pub struct TlsClientConfig {
    rustls: Arc<rustls::ClientConfig>,
    handshake_timeout: Duration,
}

impl TlsClientConfig {
    /// Starts a configuration.
    pub fn builder() -> TlsClientConfigBuilder {
        TlsClientConfigBuilder {
            roots: Vec::new(),
            identity: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Uses a rustls configuration made elsewhere, as is.
    pub fn from_rustls(config: Arc<rustls::ClientConfig>) -> Self {
        Self {
            rustls: config,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Gives up on a handshake that takes longer than this (default 10 s). Applied by the
    /// transports that have a timer ([`connect`](super::connect)).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The rustls configuration.
    pub fn rustls(&self) -> &Arc<rustls::ClientConfig> {
        &self.rustls
    }

    /// See [`with_handshake_timeout`](Self::with_handshake_timeout).
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }
}

impl fmt::Debug for TlsClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClientConfig")
            .field(
                "client_certificate",
                &self.rustls.client_auth_cert_resolver.has_certs(),
            )
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Builds a [`TlsClientConfig`].
#[derive(Debug)]
pub struct TlsClientConfigBuilder {
    roots: Vec<CertificateDer<'static>>,
    identity: Option<Identity>,
    handshake_timeout: Duration,
}

impl TlsClientConfigBuilder {
    /// Trusts servers whose certificate chains up to one of these certificates (CA certificates,
    /// or a server's self-signed certificate). Adds to those already given.
    pub fn trust(
        mut self,
        certificates: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Self {
        self.roots.extend(certificates);
        self
    }

    /// Presents this certificate to servers that ask for one (mutual TLS).
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// See [`TlsClientConfig::with_handshake_timeout`].
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Builds the configuration: TLS 1.3 and 1.2, ring crypto.
    ///
    /// # Errors
    /// [`TlsError::Config`] if no CA is trusted, a CA certificate is unusable, or the identity's
    /// key does not fit its certificate.
    pub fn build(self) -> Result<TlsClientConfig> {
        let roots = root_store(self.roots)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(rejected)?
            .with_root_certificates(roots);
        let config = match self.identity {
            Some(Identity { chain, key }) => builder
                .with_client_auth_cert(chain, key)
                .map_err(rejected)?,
            None => builder.with_no_client_auth(),
        };
        Ok(TlsClientConfig {
            rustls: Arc::new(config),
            handshake_timeout: self.handshake_timeout,
        })
    }
}

/// Server side TLS settings: the server's certificate and key, and whether clients must show a
/// certificate signed by given CAs (mutual TLS). Cheap to clone.
///
/// ```
/// # fn main() -> connect::Result<()> {
/// # let (ca_pem, server_pem, server_key_pem) = certs();
/// use connect::transport::tls::{self, Identity, TlsServerConfig};
///
/// let config = TlsServerConfig::builder(Identity::from_pem(server_pem.as_bytes(), server_key_pem.as_bytes())?)
///     .require_client_certificates(tls::certificates_from_pem(ca_pem.as_bytes())?)
///     .build()?;
/// # Ok(()) }
/// # fn certs() -> (String, String, String) {
/// #     let ca_key = rcgen::KeyPair::generate().unwrap();
/// #     let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
/// #     params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
/// #     let ca = params.self_signed(&ca_key).unwrap();
/// #     let issuer = rcgen::Issuer::new(params, ca_key);
/// #     let key = rcgen::KeyPair::generate().unwrap();
/// #     let server = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap()
/// #         .signed_by(&key, &issuer).unwrap();
/// #     (ca.pem(), server.pem(), key.serialize_pem())
/// # }
/// ```
#[derive(Clone)]
pub struct TlsServerConfig {
    rustls: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
}

impl TlsServerConfig {
    /// Starts a configuration for a server showing `identity`.
    pub fn builder(identity: Identity) -> TlsServerConfigBuilder {
        TlsServerConfigBuilder {
            identity,
            client_roots: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Uses a rustls configuration made elsewhere, as is.
    pub fn from_rustls(config: Arc<rustls::ServerConfig>) -> Self {
        Self {
            rustls: config,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Gives up on a client whose handshake is not finished after `timeout` (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`], 10 s). Used by
    /// [`TlsListener`](super::TlsListener) and by the SCTP TLS accept.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// See [`with_handshake_timeout`](Self::with_handshake_timeout).
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// The rustls configuration.
    pub fn rustls(&self) -> &Arc<rustls::ServerConfig> {
        &self.rustls
    }
}

impl fmt::Debug for TlsServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServerConfig")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Builds a [`TlsServerConfig`].
#[derive(Debug)]
pub struct TlsServerConfigBuilder {
    identity: Identity,
    client_roots: Option<Vec<CertificateDer<'static>>>,
    handshake_timeout: Duration,
}

impl TlsServerConfigBuilder {
    /// Requires every client to present a certificate that chains up to one of these CA
    /// certificates (mutual TLS). A client without one, or with one from another CA, fails its
    /// handshake. Adds to CAs already given.
    pub fn require_client_certificates(
        mut self,
        ca_certificates: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Self {
        self.client_roots
            .get_or_insert_with(Vec::new)
            .extend(ca_certificates);
        self
    }

    /// See [`TlsServerConfig::with_handshake_timeout`].
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Builds the configuration: TLS 1.3 and 1.2, ring crypto.
    ///
    /// # Errors
    /// [`TlsError::Config`] if the key does not fit the certificate, or a client CA is unusable.
    pub fn build(self) -> Result<TlsServerConfig> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(rejected)?;
        let builder = match self.client_roots {
            Some(certs) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(root_store(certs)?),
                    provider(),
                )
                .build()
                .map_err(rejected)?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(self.identity.chain, self.identity.key)
            .map_err(rejected)?;
        Ok(TlsServerConfig {
            rustls: Arc::new(config),
            handshake_timeout: self.handshake_timeout,
        })
    }
}
