//! TLS for both legs: the gateway's server certificate (configured, or self-signed and generated
//! once into `data_dir/tls/`), and the client configuration for upstream databases
//! (`require`: encrypted, certificate not checked — libpq's semantics; `verify-full`: chain and
//! host name checked against the configured CA).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// TLS set-up failures, naming the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {why}")]
    File {
        /// File.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn file_err(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// Make sure `dir/tls.crt` and `dir/tls.key` exist, generating a self-signed pair for
/// `localhost`/`127.0.0.1` and `extra_names` the first time. Returns (cert, key) paths.
pub fn ensure_self_signed(
    dir: &Path,
    extra_names: &[String],
) -> Result<(std::path::PathBuf, std::path::PathBuf), TlsError> {
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    names.extend(extra_names.iter().cloned());
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Config(e.to_string()))?;
    std::fs::write(&cert, ck.cert.pem()).map_err(|e| file_err(&cert, e))?;
    write_private(&key, ck.signing_key.serialize_pem().as_bytes()).map_err(|e| file_err(&key, e))?;
    tracing::info!(cert = %cert.display(), "generated a self-signed TLS certificate (configure [tls] for a real one)");
    Ok((cert, key))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// Server configuration from PEM files. ALPN `postgresql` is offered for direct TLS (PG 17).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_alpn(cert, key, &[b"postgresql"])
}

/// Server configuration from PEM files, offering the given ALPN protocols.
pub fn server_config_alpn(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e))?;
    if certs.is_empty() {
        return Err(file_err(cert, "no certificate in the file (expected PEM)"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, format!("no usable private key: {e}")))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Client configuration for an upstream in `verify-full` mode.
pub fn verify_full(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let Some(ca) = ca_file else {
        return Err(TlsError::Config(
            "verify-full needs ca_file (the CA that signed the database's certificate)".into(),
        ));
    };
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| file_err(ca, e))? {
        roots
            .add(c.map_err(|e| file_err(ca, e))?)
            .map_err(|e| file_err(ca, e))?;
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Client configuration for an upstream in `require` mode: encrypted, not authenticated.
pub fn require_only() -> Result<Arc<ClientConfig>, TlsError> {
    let p = provider();
    let cfg = ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(p)))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The server name to verify for `host`.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string())
        .map_err(|_| TlsError::Config(format!("`{host}` is not a valid TLS server name")))
}

#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
