//! Makes a local certificate authority and certificates for the TLS examples, offline.
//!
//! ```text
//! cargo run --example make-certs OUT_DIR [SERVER_NAME...]
//! ```
//!
//! Writes into OUT_DIR (created if needed):
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca.key` | the CA: trust `ca.pem` in clients (`--ca`) and servers (`--client-ca`) |
//! | `server.pem`, `server.key` | a server certificate for SERVER_NAMEs (default: `localhost`, `127.0.0.1`, `::1`) |
//! | `client.pem`, `client.key` | a client certificate with common name `client` |
//!
//! For local testing only: the keys are written unencrypted.

use std::path::Path;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

fn params(common_name: &str, names: Vec<String>) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    Ok(params)
}

fn write(dir: &Path, name: &str, contents: &str) -> anyhow::Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .context("usage: make-certs OUT_DIR [SERVER_NAME...]")?;
    let mut server_names: Vec<String> = args.collect();
    if server_names.is_empty() {
        server_names = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    }
    let out = Path::new(&out);
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;

    let ca_key = KeyPair::generate()?;
    let mut ca_params = params("connect example CA", Vec::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write(out, "ca.pem", &ca_cert.pem())?;
    write(out, "ca.key", &ca_key.serialize_pem())?;
    let ca = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server = params(&server_names[0], server_names.clone())?;
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    write(
        out,
        "server.pem",
        &server.signed_by(&server_key, &ca)?.pem(),
    )?;
    write(out, "server.key", &server_key.serialize_pem())?;

    let client_key = KeyPair::generate()?;
    let mut client = params("client", vec!["client".into()])?;
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    write(
        out,
        "client.pem",
        &client.signed_by(&client_key, &ca)?.pem(),
    )?;
    write(out, "client.key", &client_key.serialize_pem())?;
    Ok(())
}
