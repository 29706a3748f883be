//! Certificates made at test time with rcgen: CAs, server and client certificates (also expired
//! and self-signed ones), as PEM text, DER and files.

use std::path::{Path, PathBuf};

use connect::transport::tls::pki_types::CertificateDer;
use connect::transport::tls::{self, Identity, TlsClientConfig, TlsServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A certificate and its private key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Leaf {
    pub fn identity(&self) -> Identity {
        Identity::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes()).expect("identity")
    }

    pub fn certificates(&self) -> Vec<CertificateDer<'static>> {
        tls::certificates_from_pem(self.cert_pem.as_bytes()).expect("certificate")
    }

    /// Writes `<name>.pem` and `<name>.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        (
            write(dir, &format!("{name}.pem"), &self.cert_pem),
            write(dir, &format!("{name}.key"), &self.key_pem),
        )
    }
}

/// What a leaf certificate is for.
#[derive(Clone, Copy)]
pub enum Role {
    Server,
    Client,
}

fn params(common_name: &str, names: &[&str], role: Option<Role>) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("certificate params");
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = match role {
        Some(Role::Server) => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Some(Role::Client) => vec![ExtendedKeyUsagePurpose::ClientAuth],
        None => vec![],
    };
    params
}

/// A certificate authority.
pub struct Ca {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(common_name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = params(common_name, &[], None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn certificates(&self) -> Vec<CertificateDer<'static>> {
        tls::certificates_from_pem(self.cert_pem.as_bytes()).expect("CA certificate")
    }

    /// A certificate for `names` (DNS names or IP addresses), with common name `common_name`.
    pub fn issue(&self, common_name: &str, names: &[&str], role: Role) -> Leaf {
        self.sign(params(common_name, names, Some(role)))
    }

    /// A certificate that expired on 1 January 2020.
    pub fn issue_expired(&self, common_name: &str, names: &[&str], role: Role) -> Leaf {
        let mut params = params(common_name, names, Some(role));
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("signed certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        write(dir, &format!("{name}.pem"), &self.cert_pem)
    }
}

/// A self-signed server certificate for `names`.
pub fn self_signed(common_name: &str, names: &[&str]) -> Leaf {
    let key = KeyPair::generate().expect("key");
    let cert = params(common_name, names, Some(Role::Server))
        .self_signed(&key)
        .expect("self-signed certificate");
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// A client configuration trusting `roots`, optionally with a client certificate.
pub fn client_config(
    roots: Vec<CertificateDer<'static>>,
    identity: Option<&Leaf>,
) -> TlsClientConfig {
    let mut builder = TlsClientConfig::builder().trust(roots);
    if let Some(leaf) = identity {
        builder = builder.with_identity(leaf.identity());
    }
    builder.build().expect("client config")
}

/// A server configuration showing `server`, requiring client certificates from `client_ca` if
/// given.
pub fn server_config(server: &Leaf, client_ca: Option<&Ca>) -> TlsServerConfig {
    let mut builder = TlsServerConfig::builder(server.identity());
    if let Some(ca) = client_ca {
        builder = builder.require_client_certificates(ca.certificates());
    }
    builder.build().expect("server config")
}

/// A fresh directory under the target directory's tmp for files of one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write PEM file");
    path
}
