//! The gateway's SSH client leg: connect with a timeout, check the upstream host key against the
//! pinned one, log in with the resource's key or a 60-second certificate signed by the gateway's
//! upstream CA for exactly the requested login.

use std::borrow::Cow;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{
    Algorithm, Certificate, EcdsaCurve, HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate,
};

use crate::hosttrust::{HostTrust, Refused};
use crate::keys::{self, CertRequest};

/// How the gateway logs in upstream.
#[derive(Clone)]
pub enum Credential {
    /// The resource's `upstream_key_file`.
    Key(Arc<PrivateKey>),
    /// A certificate from the upstream CA (signed per connection).
    Ca(Arc<PrivateKey>),
}

/// Why the upstream leg failed; `Display` is safe to show to the user.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed or timed out.
    #[error("cannot reach {0}: {1}")]
    Connect(String, String),
    /// Host key not trusted (not pinned, not from a trusted CA, revoked, bad certificate).
    #[error("the host key of {address} was refused: {why} (presented {presented})")]
    HostKeyMismatch {
        /// Upstream address.
        address: String,
        /// What was presented (fingerprint).
        presented: String,
        /// Why it was refused.
        why: Refused,
    },
    /// Login refused.
    #[error("{0} refused the gateway's login as {1}")]
    Auth(String, String),
    /// SSH protocol error.
    #[error("ssh error talking to {0}: {1}")]
    Ssh(String, String),
    /// Configuration (keys) problem.
    #[error("{0}")]
    Config(String),
}

/// What a resource trusts as its upstream's host key (host_key, host_ca, known_hosts_file).
pub fn host_trust(
    host_key: Option<&str>,
    host_ca: &[String],
    known_hosts: Option<&Path>,
    address: &str,
) -> Result<HostTrust, UpstreamError> {
    let key = host_key
        .map(keys::parse_public)
        .transpose()
        .map_err(|e| UpstreamError::Config(format!("host_key: {e}")))?;
    let cas = host_ca
        .iter()
        .map(|c| keys::parse_public(c).map_err(|e| UpstreamError::Config(format!("host_ca: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    HostTrust::new(address, key.as_ref(), &cas, known_hosts).map_err(UpstreamError::Config)
}

/// Client-side callbacks: the host key check.
pub struct Client {
    trust: Arc<HostTrust>,
    presented: Arc<Mutex<Option<(String, Refused)>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        match self.trust.check(key, now) {
            Ok(()) => Ok(true),
            Err(why) => {
                let what = match key {
                    PublicKeyOrCertificate::Certificate(_) => "host certificate of key",
                    PublicKeyOrCertificate::PublicKey { .. } => "key",
                };
                if let Ok(mut g) = self.presented.lock() {
                    *g = Some((format!("{what} {}", keys::fingerprint(&key.public_key())), why));
                }
                Ok(false)
            }
        }
    }
}

/// A logged-in upstream connection.
pub type Upstream = client::Handle<Client>;

fn config(certificates: bool) -> Arc<client::Config> {
    let mut c = client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        ..Default::default()
    };
    c.preferred.cipher = Cow::Borrowed(&[
        russh::cipher::AES_128_GCM,
        russh::cipher::AES_256_GCM,
        russh::cipher::CHACHA20_POLY1305,
    ]);
    if certificates {
        // Ask for host certificates only where a host CA is trusted: a server with one then
        // proves itself with it.
        c.preferred.host_key_certificates = Cow::Borrowed(&[
            Algorithm::Ed25519,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512),
            },
        ]);
    }
    Arc::new(c)
}

/// Connect and log in as `login`.
pub async fn connect(
    address: &str,
    trust: Arc<HostTrust>,
    login: &str,
    cred: &Credential,
    identity: &str,
    timeout: Duration,
) -> Result<Upstream, UpstreamError> {
    let presented = Arc::new(Mutex::new(None));
    let certificates = trust.wants_certificates();
    let handler = Client {
        trust,
        presented: presented.clone(),
    };
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| UpstreamError::Connect(address.into(), format!("timed out after {}s", timeout.as_secs())))?
        .map_err(|e| UpstreamError::Connect(address.into(), e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let handshake = tokio::time::timeout(timeout, client::connect_stream(config(certificates), tcp, handler)).await;
    let mut h = match handshake {
        Err(_) => {
            return Err(UpstreamError::Connect(address.into(), "SSH handshake timed out".into()));
        }
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            if let Some((fp, why)) = presented.lock().ok().and_then(|g| g.clone()) {
                return Err(UpstreamError::HostKeyMismatch {
                    address: address.into(),
                    presented: fp,
                    why,
                });
            }
            return Err(UpstreamError::Ssh(address.into(), e.to_string()));
        }
    };
    let ssh_err = |e: russh::Error| UpstreamError::Ssh(address.into(), e.to_string());
    let res = match cred {
        Credential::Key(k) => {
            let hash = h.best_supported_rsa_hash().await.map_err(ssh_err)?.flatten();
            h.authenticate_publickey(login, PrivateKeyWithHashAlg::new(k.clone(), hash))
                .await
                .map_err(ssh_err)?
        }
        Credential::Ca(ca) => {
            let (key, cert) = short_lived_cert(ca, login, identity)?;
            h.authenticate_openssh_cert(login, Arc::new(key), cert)
                .await
                .map_err(ssh_err)?
        }
    };
    if !res.success() {
        return Err(UpstreamError::Auth(address.into(), login.into()));
    }
    Ok(h)
}

/// A fresh key pair and a certificate for `login`, valid from 30 s ago (clock skew) to 60 s from
/// now: enough to log in, useless soon after.
fn short_lived_cert(ca: &PrivateKey, login: &str, identity: &str) -> Result<(PrivateKey, Certificate), UpstreamError> {
    let key = keys::generate_ed25519("jitgate upstream");
    let now = u64::try_from(jiff::Timestamp::now().as_second()).unwrap_or(0);
    let principals = [login.to_string()];
    let cert = keys::sign_user_cert(
        ca,
        &CertRequest {
            public_key: key.public_key(),
            principals: &principals,
            key_id: &format!("jitgate:{identity}"),
            valid_after: now.saturating_sub(30),
            valid_before: now + 60,
            permit_pty: true,
            permit_port_forwarding: true,
            groups: None,
            token_id: None,
        },
    )
    .map_err(|e| UpstreamError::Config(format!("signing the upstream certificate: {e}")))?;
    Ok((key, cert))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_from_key_known_hosts_and_ca() {
        let k = keys::generate_ed25519("h");
        let line = k.public_key().to_openssh().unwrap();
        let d = tempfile::tempdir().unwrap();
        let kh = d.path().join("known_hosts");
        std::fs::write(&kh, format!("[127.0.0.1]:2200 {line}\nother.host {line}\n")).unwrap();
        assert!(host_trust(None, &[], Some(&kh), "127.0.0.1:2200").is_ok());
        assert!(host_trust(None, &[], Some(&kh), "127.0.0.1:2201").is_err());
        assert!(host_trust(Some(&line), &[], None, "x:1").is_ok());
        assert!(
            host_trust(None, std::slice::from_ref(&line), None, "x:1")
                .unwrap()
                .wants_certificates()
        );
        assert!(host_trust(Some("ssh-ed25519 garbage"), &[], None, "x:1").is_err());
        assert!(host_trust(None, &["ssh-ed25519 garbage".into()], None, "x:1").is_err());
    }
}
