//! The gateway's SSH client leg: connect with a timeout, check the upstream host key against the
//! pinned one, log in with the resource's key or a 60-second certificate signed by the gateway's
//! upstream CA for exactly the requested login.

use std::borrow::Cow;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{Certificate, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};

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
    /// Host key not the pinned one.
    #[error("the host key of {address} does not match the pinned key (presented {presented})")]
    HostKeyMismatch {
        /// Upstream address.
        address: String,
        /// Fingerprint presented.
        presented: String,
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

/// Host keys a resource pins.
pub fn pinned_keys(
    host_key: Option<&str>,
    known_hosts: Option<&Path>,
    address: &str,
) -> Result<Vec<PublicKey>, UpstreamError> {
    let mut out = Vec::new();
    if let Some(k) = host_key {
        out.push(keys::parse_public(k).map_err(|e| UpstreamError::Config(format!("host_key: {e}")))?);
    }
    if let Some(path) = known_hosts {
        let (host, port) = split_host_port(address);
        let found = russh::keys::known_hosts::known_host_keys_path(host, port, path)
            .map_err(|e| UpstreamError::Config(format!("known_hosts_file {}: {e}", path.display())))?;
        out.extend(found.into_iter().map(|(_, k)| k));
    }
    if out.is_empty() {
        return Err(UpstreamError::Config(format!(
            "no pinned host key for {address} (host_key or known_hosts_file)"
        )));
    }
    Ok(out)
}

fn split_host_port(address: &str) -> (&str, u16) {
    match address.rsplit_once(':') {
        Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']'), p.parse().unwrap_or(22)),
        None => (address, 22),
    }
}

/// Client-side callbacks: the host key check.
pub struct Client {
    pinned: Vec<PublicKey>,
    presented: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let k = key.public_key();
        let ok = self.pinned.iter().any(|p| p.key_data() == k.key_data());
        if !ok && let Ok(mut g) = self.presented.lock() {
            *g = Some(keys::fingerprint(&k));
        }
        Ok(ok)
    }
}

/// A logged-in upstream connection.
pub type Upstream = client::Handle<Client>;

fn config() -> Arc<client::Config> {
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
    Arc::new(c)
}

/// Connect and log in as `login`.
pub async fn connect(
    address: &str,
    pinned: Vec<PublicKey>,
    login: &str,
    cred: &Credential,
    identity: &str,
    timeout: Duration,
) -> Result<Upstream, UpstreamError> {
    let presented = Arc::new(Mutex::new(None));
    let handler = Client {
        pinned,
        presented: presented.clone(),
    };
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| UpstreamError::Connect(address.into(), format!("timed out after {}s", timeout.as_secs())))?
        .map_err(|e| UpstreamError::Connect(address.into(), e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let handshake = tokio::time::timeout(timeout, client::connect_stream(config(), tcp, handler)).await;
    let mut h = match handshake {
        Err(_) => {
            return Err(UpstreamError::Connect(address.into(), "SSH handshake timed out".into()));
        }
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            if let Some(fp) = presented.lock().ok().and_then(|g| g.clone()) {
                return Err(UpstreamError::HostKeyMismatch {
                    address: address.into(),
                    presented: fp,
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
    fn host_port() {
        assert_eq!(split_host_port("127.0.0.1:2222"), ("127.0.0.1", 2222));
        assert_eq!(split_host_port("[::1]:22"), ("::1", 22));
        assert_eq!(split_host_port("web"), ("web", 22));
    }

    #[test]
    fn pins_from_key_and_known_hosts() {
        let k = keys::generate_ed25519("h");
        let line = k.public_key().to_openssh().unwrap();
        let d = tempfile::tempdir().unwrap();
        let kh = d.path().join("known_hosts");
        std::fs::write(&kh, format!("[127.0.0.1]:2200 {line}\nother.host {line}\n")).unwrap();
        assert_eq!(pinned_keys(None, Some(&kh), "127.0.0.1:2200").unwrap().len(), 1);
        assert!(pinned_keys(None, Some(&kh), "127.0.0.1:2201").is_err());
        assert_eq!(pinned_keys(Some(&line), None, "x:1").unwrap().len(), 1);
        assert!(pinned_keys(Some("ssh-ed25519 garbage"), None, "x:1").is_err());
    }
}
