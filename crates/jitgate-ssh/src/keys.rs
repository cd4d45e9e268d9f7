//! The gateway's SSH keys and certificates.
//!
//! Three ed25519 keys live in `data_dir/ssh/`, generated once with mode 0600:
//! - `host_key`: what clients pin for the gateway (its fingerprint is printed at start);
//! - `user_ca`: signs users' certificates (`jitgate ssh-cert`, `jitgate login`);
//! - `upstream_ca`: signs the 60-second certificates the gateway logs in upstream with; upstream
//!   sshds trust `upstream_ca.pub` via `TrustedUserCAKeys`.
//!
//! russh checks a certificate's signature over the session but not who signed it, for whom, or
//! when it is valid: [`check_user_cert`] does that.

use std::path::{Path, PathBuf};

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{self, HashAlg, LineEnding};
use russh::keys::{Certificate, PrivateKey, PublicKey};

/// Key errors, with the file involved.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing a key file.
    #[error("{path}: {msg}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// Building or parsing a key or certificate.
    #[error("{0}")]
    Key(String),
}

impl From<ssh_key::Error> for KeyError {
    fn from(e: ssh_key::Error) -> Self {
        Self::Key(e.to_string())
    }
}

/// A fresh ed25519 key.
pub fn generate_ed25519(comment: &str) -> PrivateKey {
    let seed: [u8; 32] = rand::random();
    let mut k = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    k.set_comment(comment);
    k
}

/// Load the OpenSSH private key at `path`, generating it (0600, with `.pub` beside) when absent.
pub fn load_or_generate(path: &Path, comment: &str) -> Result<PrivateKey, KeyError> {
    let file_err = |e: &dyn std::fmt::Display| KeyError::File {
        path: path.to_path_buf(),
        msg: e.to_string(),
    };
    if path.exists() {
        let key = PrivateKey::read_openssh_file(path).map_err(|e| file_err(&e))?;
        // A key installed from elsewhere (shared by replicas) gets a matching `.pub` beside it.
        let public = format!("{}\n", key.public_key().to_openssh()?);
        let pub_path = path.with_extension("pub");
        if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(public.as_str()) {
            std::fs::write(&pub_path, public).map_err(|e| KeyError::File {
                path: pub_path,
                msg: e.to_string(),
            })?;
        }
        return Ok(key);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| file_err(&e))?;
        set_mode(dir, 0o700);
    }
    let key = generate_ed25519(comment);
    let pem = key.to_openssh(LineEnding::LF)?;
    write_private(path, pem.as_bytes()).map_err(|e| file_err(&e))?;
    let public = key.public_key().to_openssh()?;
    let pub_path = path.with_extension("pub");
    std::fs::write(&pub_path, format!("{public}\n")).map_err(|e| KeyError::File {
        path: pub_path,
        msg: e.to_string(),
    })?;
    Ok(key)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn set_mode(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
}

/// The `ssh-ed25519 AAAA... comment` line of a key's public half.
pub fn public_line(k: &PrivateKey) -> String {
    k.public_key().to_openssh().unwrap_or_default()
}

/// `SHA256:...` fingerprint of a public key.
pub fn fingerprint(k: &PublicKey) -> String {
    k.fingerprint(HashAlg::Sha256).to_string()
}

/// The gateway's three keys.
pub struct GatewayKeys {
    /// Host key.
    pub host: PrivateKey,
    /// Signs user certificates.
    pub user_ca: PrivateKey,
    /// Signs upstream login certificates.
    pub upstream_ca: PrivateKey,
    /// Signs the gateway's host certificate (clients pin it with `@cert-authority`).
    pub host_ca: PrivateKey,
    /// Folder holding them.
    pub dir: PathBuf,
}

impl GatewayKeys {
    /// Load or create `data_dir/ssh/{host_key,user_ca,upstream_ca,host_ca}`; the host CA comes
    /// from `host_ca_file` instead when given (it must exist: replicas share it).
    pub fn load(data_dir: &Path, host_ca_file: Option<&Path>) -> Result<Self, KeyError> {
        let dir = data_dir.join("ssh");
        let host_ca = match host_ca_file {
            Some(p) => {
                let file = |msg: String| KeyError::File {
                    path: p.to_path_buf(),
                    msg,
                };
                let text = std::fs::read_to_string(p).map_err(|e| file(format!("{e} ([ssh] host_ca_key_file)")))?;
                PrivateKey::from_openssh(&text).map_err(|e| file(format!("not an OpenSSH private key: {e}")))?
            }
            None => load_or_generate(&dir.join("host_ca"), "jitgate host CA")?,
        };
        Ok(Self {
            host: load_or_generate(&dir.join("host_key"), "jitgate host key")?,
            user_ca: load_or_generate(&dir.join("user_ca"), "jitgate user CA")?,
            upstream_ca: load_or_generate(&dir.join("upstream_ca"), "jitgate upstream CA")?,
            host_ca,
            dir,
        })
    }

    /// The gateway's host certificate: its host key signed by the host CA for `names` (empty:
    /// any name), valid from an hour ago without end (like `ssh-keygen -s` by default; a leaked
    /// host key is revoked with `@revoked`, a leaked CA by replacing it).
    /// Each name also goes in as `jitgate-NAME`: the `HostKeyAlias` `jitgate ssh-config` writes,
    /// which is the name OpenSSH checks principals against.
    pub fn host_certificate(&self, names: &[String]) -> Result<Certificate, KeyError> {
        let names: Vec<String> = names.iter().flat_map(|n| [n.clone(), format!("jitgate-{n}")]).collect();
        let names = names.as_slice();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        sign_host_cert(
            &self.host_ca,
            self.host.public_key(),
            names,
            now.saturating_sub(3600),
            u64::MAX,
        )
    }
}

/// What a user certificate says.
#[derive(Debug, Clone)]
pub struct CertRequest<'a> {
    /// The key being certified.
    pub public_key: &'a PublicKey,
    /// Principals (identity names for users, login names upstream).
    pub principals: &'a [String],
    /// Shown in sshd logs.
    pub key_id: &'a str,
    /// Unix seconds.
    pub valid_after: u64,
    /// Unix seconds.
    pub valid_before: u64,
    /// Allow a pty / port forwarding (extensions).
    pub permit_pty: bool,
    /// `permit-port-forwarding`.
    pub permit_port_forwarding: bool,
    /// Groups, carried in the `groups@jitgate` extension.
    pub groups: Option<String>,
    /// Login token id, carried in the `token-id@jitgate` extension.
    pub token_id: Option<String>,
}

/// Sign a host certificate for `host` with `ca`, valid from `valid_after` to `valid_before`;
/// no principals means valid for any host name the CA is trusted for.
pub fn sign_host_cert(
    ca: &PrivateKey,
    host: &PublicKey,
    principals: &[String],
    valid_after: u64,
    valid_before: u64,
) -> Result<Certificate, KeyError> {
    let nonce: [u8; 32] = rand::random();
    let mut b = Builder::new(nonce.to_vec(), host.key_data().clone(), valid_after, valid_before)?;
    b.serial(rand::random())?;
    b.cert_type(CertType::Host)?;
    b.key_id("jitgate gateway host")?;
    for p in principals {
        b.valid_principal(p.clone())?;
    }
    if principals.is_empty() {
        b.all_principals_valid()?;
    }
    Ok(b.sign(ca)?)
}

/// Sign a user certificate with `ca`.
pub fn sign_user_cert(ca: &PrivateKey, req: &CertRequest<'_>) -> Result<Certificate, KeyError> {
    let nonce: [u8; 32] = rand::random();
    let mut b = Builder::new(
        nonce.to_vec(),
        req.public_key.key_data().clone(),
        req.valid_after,
        req.valid_before,
    )?;
    b.serial(rand::random())?;
    b.cert_type(CertType::User)?;
    b.key_id(req.key_id)?;
    for p in req.principals {
        b.valid_principal(p.clone())?;
    }
    if req.permit_pty {
        b.extension("permit-pty", "")?;
    }
    if req.permit_port_forwarding {
        b.extension("permit-port-forwarding", "")?;
    }
    if let Some(g) = &req.groups {
        b.extension(crate::GROUPS_EXTENSION, g.as_str())?;
    }
    if let Some(t) = &req.token_id {
        b.extension(crate::TOKEN_EXTENSION, t.as_str())?;
    }
    Ok(b.sign(ca)?)
}

/// Sign a user certificate for a principal's public key (`POST /v1/ssh/cert`): principal = the
/// identity, groups in an extension, valid from a minute ago (clock skew) for `lifetime_secs` —
/// or until the login token it was requested with expires, whichever is first; that token's id is
/// carried along so logging out also invalidates the certificate. Returns the certificate line and
/// its `valid_before`.
pub fn issue_user_cert(
    ca: &PrivateKey,
    identity: &str,
    groups: &[String],
    public_key_line: &str,
    lifetime_secs: u64,
    token: Option<(&str, i64)>,
) -> Result<(String, u64), String> {
    let key = parse_public(public_key_line).map_err(|e| e.to_string())?;
    if key.algorithm().is_rsa()
        && let Some(rsa) = key.key_data().rsa()
        && rsa.key_size() < 2048
    {
        return Err("RSA keys shorter than 2048 bits are refused".into());
    }
    let now = u64::try_from(jiff::Timestamp::now().as_second()).unwrap_or(0);
    let principals = [identity.to_string()];
    let mut valid_before = now + lifetime_secs.max(60);
    if let Some((_, exp)) = token {
        valid_before = valid_before.min(u64::try_from(exp).unwrap_or(0));
    }
    if valid_before <= now {
        return Err("the login token has expired".into());
    }
    let cert = sign_user_cert(
        ca,
        &CertRequest {
            public_key: &key,
            principals: &principals,
            key_id: identity,
            valid_after: now.saturating_sub(60),
            valid_before,
            permit_pty: true,
            permit_port_forwarding: true,
            groups: Some(groups.join(",")),
            token_id: token.map(|(j, _)| j.to_string()),
        },
    )
    .map_err(|e| e.to_string())?;
    let mut cert = cert;
    cert.set_comment(format!("jitgate {identity}"));
    let line = cert.to_openssh().map_err(|e| e.to_string())?;
    Ok((line, valid_before))
}

/// Why a presented user certificate is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertRefusal {
    /// Not signed by the gateway's user CA, or signature invalid.
    #[error("certificate not signed by the jitgate user CA")]
    UnknownCa,
    /// A host certificate presented as a user one.
    #[error("not a user certificate")]
    NotUser,
    /// Before `valid_after` or after `valid_before`.
    #[error("certificate expired or not yet valid")]
    OutsideValidity,
    /// No principal.
    #[error("certificate names no principal")]
    NoPrincipal,
}

/// Check a certificate presented by a client: signed by `ca`, a user certificate, valid at `now`
/// (unix seconds). Returns the identity (its first principal).
pub fn check_user_cert(cert: &Certificate, ca: &PublicKey, now: u64) -> Result<String, CertRefusal> {
    if cert.signature_key() != ca.key_data() {
        return Err(CertRefusal::UnknownCa);
    }
    if cert.cert_type() != CertType::User {
        return Err(CertRefusal::NotUser);
    }
    let fp = ca.fingerprint(HashAlg::Sha256);
    match cert.validate_at(now, [&fp]) {
        Ok(()) => {}
        Err(ssh_key::Error::CertificateValidation) => {
            if now < cert.valid_after() || now >= cert.valid_before() {
                return Err(CertRefusal::OutsideValidity);
            }
            return Err(CertRefusal::UnknownCa);
        }
        Err(_) => return Err(CertRefusal::UnknownCa),
    }
    cert.valid_principals().first().cloned().ok_or(CertRefusal::NoPrincipal)
}

/// Parse `ssh-ed25519 AAAA... [comment]`.
pub fn parse_public(s: &str) -> Result<PublicKey, KeyError> {
    PublicKey::from_openssh(s.trim()).map_err(|e| KeyError::Key(format!("invalid public key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        jiff::Timestamp::now().as_second().try_into().unwrap()
    }

    #[test]
    fn host_certificate_names_the_alias_and_verifies_against_the_host_ca() {
        let d = tempfile::tempdir().unwrap();
        let k = GatewayKeys::load(d.path(), None).unwrap();
        let c = k.host_certificate(&["gw.example.com".into()]).unwrap();
        assert_eq!(c.cert_type(), CertType::Host);
        assert_eq!(c.valid_principals(), ["gw.example.com", "jitgate-gw.example.com"]);
        let fp = k.host_ca.public_key().fingerprint(HashAlg::Sha256);
        c.validate_at(now(), [&fp]).unwrap();
        assert_eq!(c.public_key(), k.host.public_key().key_data());
        // No names: valid for any.
        assert!(k.host_certificate(&[]).unwrap().valid_principals().is_empty());
        // An operator's CA file that is missing or not a key is a clear error, not a new CA.
        let missing = d.path().join("nope");
        let e = GatewayKeys::load(d.path(), Some(&missing)).err().unwrap().to_string();
        assert!(e.contains("nope") && e.contains("host_ca_key_file"), "{e}");
        std::fs::write(&missing, "junk").unwrap();
        let e = GatewayKeys::load(d.path(), Some(&missing)).err().unwrap().to_string();
        assert!(e.contains("not an OpenSSH private key"), "{e}");
    }

    #[test]
    fn keys_are_generated_once_and_private() {
        let d = tempfile::tempdir().unwrap();
        let a = GatewayKeys::load(d.path(), None).unwrap();
        let b = GatewayKeys::load(d.path(), None).unwrap();
        assert_eq!(a.host.public_key(), b.host.public_key());
        assert_ne!(a.host.public_key(), a.user_ca.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(d.path().join("ssh/host_key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, 0o600);
        }
        let pub_line = std::fs::read_to_string(d.path().join("ssh/upstream_ca.pub")).unwrap();
        assert_eq!(&parse_public(&pub_line).unwrap(), a.upstream_ca.public_key());
    }

    #[test]
    fn certificates_are_checked_for_ca_type_and_validity() {
        let ca = generate_ed25519("ca");
        let other = generate_ed25519("other");
        let user = generate_ed25519("user");
        let t = now();
        let principals = vec!["alice".to_string()];
        let req = CertRequest {
            public_key: user.public_key(),
            principals: &principals,
            key_id: "alice",
            valid_after: t - 10,
            valid_before: t + 60,
            permit_pty: true,
            permit_port_forwarding: false,
            groups: None,
            token_id: None,
        };
        let cert = sign_user_cert(&ca, &req).unwrap();
        assert_eq!(check_user_cert(&cert, ca.public_key(), t).unwrap(), "alice");
        assert_eq!(
            check_user_cert(&cert, other.public_key(), t),
            Err(CertRefusal::UnknownCa)
        );
        assert_eq!(
            check_user_cert(&cert, ca.public_key(), t + 61),
            Err(CertRefusal::OutsideValidity)
        );
        assert_eq!(
            check_user_cert(&cert, ca.public_key(), t - 11),
            Err(CertRefusal::OutsideValidity)
        );
        let forged = sign_user_cert(&other, &req).unwrap();
        assert_eq!(
            check_user_cert(&forged, ca.public_key(), t),
            Err(CertRefusal::UnknownCa)
        );
        // A certificate for no principal cannot even be built.
        assert!(
            sign_user_cert(
                &ca,
                &CertRequest {
                    principals: &[],
                    ..req.clone()
                }
            )
            .is_err()
        );
        // Round trip through the OpenSSH text form (what the CLI writes for ssh).
        let text = cert.to_openssh().unwrap();
        assert_eq!(Certificate::from_openssh(&text).unwrap(), cert);
    }
}
