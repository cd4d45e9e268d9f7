//! Gateway tokens: what a person holds after logging in. `jg1.<claims>.<mac>` where `<claims>`
//! is base64url JSON (identity, groups, issued, expires, token id, key id) and `<mac>` is
//! HMAC-SHA256 over `jg1.<claims>` with the gateway's token key.
//!
//! Only the gateway verifies these tokens, so a MAC is enough (no public key to publish). Keys live
//! in `data_dir/auth/token_keys.json` (0600): the newest signs, every listed key verifies, so
//! `rotate` never logs anyone out; keys older than the longest token lifetime can be dropped.
//! Revocation (logout, an admin cutting off a stolen token) is by token id, checked by the caller.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const PREFIX: &str = "jg1.";

/// What a gateway token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Identity (e.g. an email).
    pub sub: String,
    /// Groups at login.
    pub groups: Vec<String>,
    /// Issued (unix seconds).
    pub iat: i64,
    /// Expires (unix seconds).
    pub exp: i64,
    /// Token id, for revocation.
    pub jti: String,
    /// Signing key id.
    pub kid: String,
}

/// Why a token is refused. `Display` is safe to show (it never contains the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `jg1.x.y`, bad base64 or JSON.
    #[error("not a jitgate token")]
    Malformed,
    /// Signed by no key we hold (or altered).
    #[error("token signature invalid (altered, or signed by another gateway)")]
    BadSignature,
    /// Past `exp`.
    #[error("token expired; log in again with `jitgate login`")]
    Expired,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Key {
    kid: String,
    secret: String,
    created: i64,
}

/// The token keys.
pub struct TokenKeys {
    keys: RwLock<Vec<Key>>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys")
    }
}

fn new_key(now: i64) -> Key {
    let secret: [u8; 32] = rand::random();
    let kid: [u8; 4] = rand::random();
    Key {
        kid: hex::encode(kid),
        secret: hex::encode(secret),
        created: now,
    }
}

fn mac(key: &Key, msg: &[u8]) -> Option<Hmac<Sha256>> {
    let secret = hex::decode(&key.secret).ok()?;
    let mut m = Hmac::<Sha256>::new_from_slice(&secret).ok()?;
    m.update(msg);
    Some(m)
}

impl TokenKeys {
    /// Keys held in memory only (tests).
    pub fn ephemeral() -> Self {
        Self {
            keys: RwLock::new(vec![new_key(0)]),
            path: None,
        }
    }

    /// Load `dir/token_keys.json`, creating it (0600) with one key when absent.
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join("token_keys.json");
        let keys: Vec<Key> = match std::fs::read_to_string(&path) {
            Ok(text) => {
                serde_json::from_str(&text).map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let me = Self {
            keys: RwLock::new(keys),
            path: Some(path),
        };
        if me.keys.read().map(|k| k.is_empty()).unwrap_or(true) {
            me.rotate(jiff::Timestamp::now().as_second())?;
        }
        Ok(me)
    }

    /// Add a new signing key (the old ones keep verifying) and save.
    pub fn rotate(&self, now: i64) -> std::io::Result<String> {
        let k = new_key(now);
        let kid = k.kid.clone();
        let snapshot = {
            let mut keys = self
                .keys
                .write()
                .map_err(|_| std::io::Error::other("token keys poisoned"))?;
            keys.push(k);
            keys.clone()
        };
        if let Some(p) = &self.path {
            save(p, &snapshot)?;
        }
        Ok(kid)
    }

    /// Drop keys created before `before` (their tokens have all expired), keeping the newest.
    pub fn prune(&self, before: i64) -> std::io::Result<usize> {
        let (n, snapshot) = {
            let mut keys = self
                .keys
                .write()
                .map_err(|_| std::io::Error::other("token keys poisoned"))?;
            let newest = keys.last().map(|k| k.kid.clone());
            let len = keys.len();
            keys.retain(|k| k.created >= before || Some(&k.kid) == newest.as_ref());
            (len - keys.len(), keys.clone())
        };
        if n > 0
            && let Some(p) = &self.path
        {
            save(p, &snapshot)?;
        }
        Ok(n)
    }

    /// Mint a token for `sub`.
    pub fn mint(
        &self,
        sub: &str,
        groups: &[String],
        now: i64,
        lifetime_secs: i64,
    ) -> Result<(String, Claims), TokenError> {
        let keys = self.keys.read().map_err(|_| TokenError::Malformed)?;
        let key = keys.last().ok_or(TokenError::Malformed)?;
        let jti: [u8; 12] = rand::random();
        let claims = Claims {
            sub: sub.to_string(),
            groups: groups.to_vec(),
            iat: now,
            exp: now + lifetime_secs,
            jti: hex::encode(jti),
            kid: key.kid.clone(),
        };
        let body = B64.encode(serde_json::to_vec(&claims).map_err(|_| TokenError::Malformed)?);
        let signed = format!("{PREFIX}{body}");
        let sig = mac(key, signed.as_bytes())
            .ok_or(TokenError::Malformed)?
            .finalize()
            .into_bytes();
        Ok((format!("{signed}.{}", B64.encode(sig)), claims))
    }

    /// Check signature and expiry (`now`, unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        let (body, sig) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        if body.len() > 16 * 1024 {
            return Err(TokenError::Malformed);
        }
        let sig = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
        // The MAC is checked before anything of the body is decoded or parsed: bytes nobody
        // holding a key wrote never reach the JSON parser. The key id is inside the body, so
        // each live key is tried (there are one or two: the current and, after a rotation, the
        // previous), each in constant time.
        let signed = token.get(..PREFIX.len() + body.len()).unwrap_or_default().as_bytes();
        let keys = self.keys.read().map_err(|_| TokenError::Malformed)?;
        let key = keys
            .iter()
            .rev()
            .find(|k| mac(k, signed).is_some_and(|m| m.verify_slice(&sig).is_ok()))
            .ok_or(TokenError::BadSignature)?;
        let claims: Claims = serde_json::from_slice(&B64.decode(body).map_err(|_| TokenError::Malformed)?)
            .map_err(|_| TokenError::Malformed)?;
        if claims.kid != key.kid {
            return Err(TokenError::BadSignature);
        }
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

fn save(path: &Path, keys: &[Key]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(keys).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

/// True when `token` looks like a gateway token (cheap prefix test).
pub fn is_gateway_token(token: &str) -> bool {
    token.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_verify_tamper_expire_rotate() {
        let d = tempfile::tempdir().unwrap();
        let k = TokenKeys::load(d.path()).unwrap();
        let (t, c) = k.mint("alice@example.com", &["dev".into()], 1000, 3600).unwrap();
        assert!(is_gateway_token(&t));
        assert_eq!(k.verify(&t, 1001).unwrap(), c);
        assert_eq!(k.verify(&t, 4600), Err(TokenError::Expired));
        // Flip one character of the claims: the MAC no longer matches, and that is what is
        // reported: the body is never decoded before its MAC checks out.
        let mut bytes = t.clone().into_bytes();
        bytes[10] = if bytes[10] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(k.verify(&tampered, 1001), Err(TokenError::BadSignature));
        let (_, sig0) = t.rsplit_once('.').unwrap();
        assert_eq!(
            k.verify(&format!("jg1.{{not json, not base64!}}.{sig0}"), 1001),
            Err(TokenError::BadSignature)
        );
        // Claims re-encoded with more groups, old signature: refused.
        let (_, rest) = t.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let mut forged = c.clone();
        forged.groups = vec!["jitgate-admins".into()];
        let body = B64.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            k.verify(&format!("jg1.{body}.{sig}"), 1001),
            Err(TokenError::BadSignature)
        );
        assert_eq!(k.verify("jg1.x", 0), Err(TokenError::Malformed));
        assert_eq!(k.verify("hello", 0), Err(TokenError::Malformed));
        // Another gateway's key.
        let other = TokenKeys::ephemeral();
        let (t2, _) = other.mint("alice@example.com", &[], 1000, 3600).unwrap();
        assert_eq!(k.verify(&t2, 1001), Err(TokenError::BadSignature));
        // Rotation: old tokens still verify, new ones use the new key; survives reload.
        let kid = k.rotate(2000).unwrap();
        let (t3, c3) = k.mint("bob@example.com", &[], 2000, 60).unwrap();
        assert_eq!(c3.kid, kid);
        let k2 = TokenKeys::load(d.path()).unwrap();
        assert!(k2.verify(&t, 1001).is_ok() && k2.verify(&t3, 2001).is_ok());
        assert_eq!(k2.prune(i64::MAX).unwrap(), 1, "all but the newest key go");
        assert_eq!(k2.verify(&t, 1001), Err(TokenError::BadSignature));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(d.path().join("token_keys.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, 0o600);
        }
    }
}
