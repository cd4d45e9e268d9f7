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
        /// The certificate or key file.
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

/// The gateway's own certificate authority and the certificate it issued the front ends.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Leaf certificate (PEM; signed by the CA).
    pub cert: std::path::PathBuf,
    /// Leaf key.
    pub key: std::path::PathBuf,
    /// CA certificate (PEM): what clients pin.
    pub ca_cert: std::path::PathBuf,
    /// `sha256:<hex>` of the CA certificate's DER (what `jitgate login --ca-pin` takes).
    pub ca_sha256: String,
    /// Names the leaf is valid for.
    pub names: Vec<String>,
    /// Whether this start issued a new leaf (first start, names changed, near expiry).
    pub issued: bool,
}

/// Distinguished name of the gateway CA (rebuilt identically to sign with a stored CA key).
fn ca_params() -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "jitgate gateway CA");
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// Days a generated leaf certificate is valid, and how close to its end a start re-issues it.
const LEAF_DAYS: i64 = 730;
const LEAF_RENEW_DAYS: i64 = 60;

/// `sha256:<hex>` of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(der)))
}

/// First certificate of a PEM file.
pub fn first_cert(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .next()
        .ok_or_else(|| file_err(path, "no certificate in the file (expected PEM)"))?
        .map_err(|e| file_err(path, e))
}

/// Make sure `dir` holds the gateway's CA (`ca.crt`, `ca.key`, generated once and kept: clients
/// pin it) and a leaf (`tls.crt`, `tls.key`) that the CA signed for exactly `localhost`,
/// `127.0.0.1`, `::1` and `names`, with at least 60 days left; otherwise issue a new leaf.
/// A leaf from before the CA existed (a self-signed one) is replaced too.
pub fn ensure_generated(dir: &Path, names: &[String]) -> Result<Generated, TlsError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let meta = dir.join("tls.json");
    let mut all = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    for n in names {
        let n = n.trim().to_ascii_lowercase();
        if !n.is_empty() && !all.contains(&n) {
            all.push(n);
        }
    }
    if ca_crt.exists() != ca_key.exists() {
        return Err(file_err(
            if ca_crt.exists() { &ca_key } else { &ca_crt },
            "missing while its pair exists: restore it (from a backup or another replica) rather than let a new CA replace the one clients pinned, or remove both to start a new CA",
        ));
    }
    let ca_kp = if ca_crt.exists() && ca_key.exists() {
        let pem = std::fs::read_to_string(&ca_key).map_err(|e| file_err(&ca_key, e))?;
        rcgen::KeyPair::from_pem(&pem).map_err(|e| file_err(&ca_key, format!("not a usable CA key: {e}")))?
    } else {
        let kp = rcgen::KeyPair::generate().map_err(|e| TlsError::Config(e.to_string()))?;
        let cert = ca_params()
            .self_signed(&kp)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        write_private(&ca_key, kp.serialize_pem().as_bytes()).map_err(|e| file_err(&ca_key, e))?;
        std::fs::write(&ca_crt, cert.pem()).map_err(|e| file_err(&ca_crt, e))?;
        // A new CA makes every old leaf useless.
        let _ = std::fs::remove_file(&meta);
        tracing::info!(ca = %ca_crt.display(), "generated the gateway's TLS certificate authority (clients pin it at `jitgate login`)");
        kp
    };
    let ca_der = first_cert(&ca_crt)?;
    let now = jiff::Timestamp::now().as_second();
    let current = std::fs::read(&meta)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .filter(|m| {
            let same_names = m["names"].as_array().is_some_and(|v| {
                v.iter()
                    .filter_map(serde_json::Value::as_str)
                    .eq(all.iter().map(String::as_str))
            });
            let fresh = m["not_after"]
                .as_i64()
                .is_some_and(|t| t - now > LEAF_RENEW_DAYS * 86_400);
            same_names && fresh && m["ca_sha256"].as_str() == Some(fingerprint(&ca_der).as_str())
        })
        .is_some()
        && crt.exists()
        && key.exists()
        && leaf_verifies(&crt, &ca_der, "localhost");
    if !current {
        let mut p = rcgen::CertificateParams::new(all.clone()).map_err(|e| TlsError::Config(e.to_string()))?;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, "jitgate gateway");
        p.use_authority_key_identifier_extension = true;
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let not_after = now + LEAF_DAYS * 86_400;
        let (y, m, d) = ymd(now - 86_400);
        p.not_before = rcgen::date_time_ymd(y, m, d);
        let (y, m, d) = ymd(not_after);
        p.not_after = rcgen::date_time_ymd(y, m, d);
        let leaf_kp = rcgen::KeyPair::generate().map_err(|e| TlsError::Config(e.to_string()))?;
        let issuer = rcgen::Issuer::new(ca_params(), ca_kp);
        let cert = p
            .signed_by(&leaf_kp, &issuer)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        write_private(&key, leaf_kp.serialize_pem().as_bytes()).map_err(|e| file_err(&key, e))?;
        // The chain: leaf, then the CA (clients that pin the CA need only the leaf, but tools
        // that print the chain show where it comes from).
        let ca_pem = std::fs::read_to_string(&ca_crt).map_err(|e| file_err(&ca_crt, e))?;
        std::fs::write(&crt, format!("{}{ca_pem}", cert.pem())).map_err(|e| file_err(&crt, e))?;
        if !leaf_verifies(&crt, &ca_der, "localhost") {
            return Err(file_err(
                &ca_key,
                "this key does not belong to ca.crt (the certificate it signs does not verify): copy ca.crt and ca.key together",
            ));
        }
        let m = serde_json::json!({"names": all, "not_after": not_after, "ca_sha256": fingerprint(&ca_der)});
        std::fs::write(&meta, m.to_string()).map_err(|e| file_err(&meta, e))?;
        tracing::info!(cert = %crt.display(), names = %all.join(", "), "issued the gateway's TLS certificate from its own CA");
    }
    Ok(Generated {
        cert: crt,
        key,
        ca_cert: ca_crt,
        ca_sha256: fingerprint(&ca_der),
        names: all,
        issued: !current,
    })
}

/// The UTC calendar day of a Unix time.
fn ymd(unix: i64) -> (i32, u8, u8) {
    let d = jiff::Timestamp::from_second(unix)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    (
        i32::from(d.year()),
        u8::try_from(d.month()).unwrap_or(1),
        u8::try_from(d.day()).unwrap_or(1),
    )
}

/// Whether the first certificate of `leaf` chains to `ca` for `name` now.
fn leaf_verifies(leaf: &Path, ca: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(leaf) = first_cert(leaf) else { return false };
    let mut roots = RootCertStore::empty();
    if roots.add(ca.clone().into_owned()).is_err() {
        return false;
    }
    let Ok(v) = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build() else {
        return false;
    };
    let Ok(sn) = ServerName::try_from(name.to_string()) else {
        return false;
    };
    v.verify_server_cert(&leaf, &[], &sn, &[], UnixTime::now()).is_ok()
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

/// The front ends' certificate, replaceable while they run: a handshake after
/// [`LiveCert::reload`] gets the new certificate, connections already open keep theirs. A
/// reload that cannot read or parse the files keeps the certificate in use.
#[derive(Debug)]
pub struct LiveCert {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
    /// The served certificate's `notAfter`, unix seconds (0: unreadable).
    not_after: std::sync::atomic::AtomicI64,
    /// The files' modification times when they were last loaded.
    loaded: std::sync::Mutex<(Option<std::time::SystemTime>, Option<std::time::SystemTime>)>,
}

fn mtime(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn certified_key(cert: &Path, key: &Path) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e))?;
    if certs.is_empty() {
        return Err(file_err(cert, "no certificate in the file (expected PEM)"));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, format!("no usable private key: {e}")))?;
    let signer = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| file_err(key, format!("unusable private key: {e}")))?;
    let ck = rustls::sign::CertifiedKey::new(certs, signer);
    ck.keys_match()
        .map_err(|e| file_err(key, format!("the key does not belong to {}: {e}", cert.display())))?;
    Ok(Arc::new(ck))
}

impl LiveCert {
    /// Load the certificate chain and key from PEM files.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let stamps = (mtime(cert), mtime(key));
        let ck = certified_key(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            not_after: std::sync::atomic::AtomicI64::new(not_after(&ck)),
            current: std::sync::RwLock::new(ck),
            loaded: std::sync::Mutex::new(stamps),
        }))
    }

    /// Whether the files changed on disk since they were loaded.
    pub fn changed_on_disk(&self) -> bool {
        let now = (mtime(&self.cert), mtime(&self.key));
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) != now
    }

    /// Read the files again and serve what they hold from the next handshake on. An error
    /// leaves the certificate in use untouched.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = (mtime(&self.cert), mtime(&self.key));
        let ck = certified_key(&self.cert, &self.key)?;
        self.not_after
            .store(not_after(&ck), std::sync::atomic::Ordering::SeqCst);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = ck;
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = stamps;
        Ok(())
    }

    /// The served certificate's `notAfter` (unix seconds; 0 when it cannot be read).
    pub fn not_after(&self) -> i64 {
        self.not_after.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}

/// The leaf certificate's `notAfter`, unix seconds (0 when it cannot be parsed).
fn not_after(ck: &rustls::sign::CertifiedKey) -> i64 {
    ck.cert
        .first()
        .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
        .map_or(0, |(_, c)| c.validity().not_after.timestamp())
}

impl rustls::server::ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// Server configuration over a [`LiveCert`], offering the given ALPN protocols.
pub fn server_config_live(cert: &Arc<LiveCert>, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
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
