//! Gateway tokens: what a person holds after logging in.
//!
//! `jg2.<kid>.<sealed>` (minted since session 7): `<sealed>` is base64url of a 12-byte nonce and
//! the AES-256-GCM encryption of the claims (JSON: identity, groups, issued, expires, token id,
//! key id) under a key derived from the token key `<kid>` (HMAC-SHA256(secret, "jitgate token
//! sealing v2")), with `jg2.<kid>` as associated data. The key id travels outside, so the right
//! key is found without reading anything else; decryption authenticates before any byte of the
//! claims is parsed; and whoever sees a token (in `PGPASSWORD`, a shell history, a proxy log)
//! learns nothing from it but the key id, not whose it is, their groups or its expiry.
//!
//! `jg1.<claims>.<mac>` (minted before): base64url JSON claims and HMAC-SHA256 over
//! `jg1.<claims>`. Still accepted until they expire; their MAC is checked against every live key
//! before the claims are decoded.
//!
//! Only the gateway verifies these tokens, so a symmetric key is enough (no public key to
//! publish). Keys live
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
const PREFIX2: &str = "jg2.";
/// Bytes of a token body accepted at all (a real one is a few hundred).
const MAX_BODY: usize = 16 * 1024;

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
    /// When the holder last authenticated at the identity provider (the ID token's
    /// `auth_time`, unix seconds); absent in tokens minted before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
}

/// Why a token is refused. `Display` is safe to show (it never contains the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `jg2.kid.sealed` / `jg1.x.y`, bad base64 or JSON.
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

/// The AES-256-GCM key a token key seals `jg2.` tokens with.
fn sealer(key: &Key) -> Option<aes_gcm::Aes256Gcm> {
    use aes_gcm::aead::KeyInit;
    let k: [u8; 32] = mac(key, b"jitgate token sealing v2")?.finalize().into_bytes().into();
    Some(aes_gcm::Aes256Gcm::new(&k.into()))
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
        self.mint_with(sub, groups, now, lifetime_secs, None)
    }

    /// Mint a token for `sub` that records when it authenticated at the provider.
    pub fn mint_with(
        &self,
        sub: &str,
        groups: &[String],
        now: i64,
        lifetime_secs: i64,
        auth_time: Option<i64>,
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
            auth_time,
        };
        let json = serde_json::to_vec(&claims).map_err(|_| TokenError::Malformed)?;
        let aad = format!("{PREFIX2}{}", key.kid);
        let nonce: [u8; 12] = rand::random();
        let sealed = {
            use aes_gcm::aead::{Aead, Payload};
            sealer(key)
                .ok_or(TokenError::Malformed)?
                .encrypt(
                    &nonce.into(),
                    Payload {
                        msg: &json,
                        aad: aad.as_bytes(),
                    },
                )
                .map_err(|_| TokenError::Malformed)?
        };
        let mut body = nonce.to_vec();
        body.extend_from_slice(&sealed);
        Ok((format!("{aad}.{}", B64.encode(body)), claims))
    }

    /// Check signature and expiry (`now`, unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let claims = if token.starts_with(PREFIX2) {
            self.open_v2(token)?
        } else {
            self.open_v1(token)?
        };
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// `jg2.<kid>.<nonce+ciphertext>`: find the key by id, decrypt (authenticates), then parse.
    fn open_v2(&self, token: &str) -> Result<Claims, TokenError> {
        use aes_gcm::aead::{Aead, Payload};
        let rest = token.strip_prefix(PREFIX2).ok_or(TokenError::Malformed)?;
        let (kid, body) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        if body.len() > MAX_BODY || kid.len() > 64 {
            return Err(TokenError::Malformed);
        }
        let raw = B64.decode(body).map_err(|_| TokenError::Malformed)?;
        let (nonce, sealed) = raw.split_first_chunk::<12>().ok_or(TokenError::Malformed)?;
        let keys = self.keys.read().map_err(|_| TokenError::Malformed)?;
        let key = keys.iter().find(|k| k.kid == kid).ok_or(TokenError::BadSignature)?;
        let aad = format!("{PREFIX2}{kid}");
        let json = sealer(key)
            .ok_or(TokenError::BadSignature)?
            .decrypt(
                &(*nonce).into(),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.kid != key.kid {
            return Err(TokenError::BadSignature);
        }
        Ok(claims)
    }

    /// `jg1.<claims>.<mac>` (tokens minted before `jg2.`).
    fn open_v1(&self, token: &str) -> Result<Claims, TokenError> {
        let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        let (body, sig) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        if body.len() > MAX_BODY {
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
        Ok(claims)
    }

    /// A `jg1.` token as minted before `jg2.` (tests of the transition).
    #[cfg(test)]
    fn mint_v1(&self, claims: &Claims) -> String {
        let keys = self.keys.read().unwrap();
        let key = keys.iter().find(|k| k.kid == claims.kid).unwrap();
        let signed = format!("{PREFIX}{}", B64.encode(serde_json::to_vec(claims).unwrap()));
        let sig = mac(key, signed.as_bytes()).unwrap().finalize().into_bytes();
        format!("{signed}.{}", B64.encode(sig))
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
    token.starts_with(PREFIX2) || token.starts_with(PREFIX)
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
        // Sealed: nothing of the claims shows, only the key id.
        assert!(t.starts_with(&format!("jg2.{}.", c.kid)), "{t}");
        let raw = B64.decode(t.rsplit_once('.').unwrap().1).unwrap();
        assert!(!raw.windows(5).any(|w| w == b"alice") && !raw.windows(3).any(|w| w == b"dev"));
        // Flip one character of the sealed part: refused as altered, never parsed.
        let mut bytes = t.clone().into_bytes();
        let i = bytes.len() - 5;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(k.verify(&tampered, 1001), Err(TokenError::BadSignature));
        let sealed = t.rsplit_once('.').unwrap().1;
        assert_eq!(
            k.verify(&format!("jg2.ffffffff.{sealed}"), 1001),
            Err(TokenError::BadSignature)
        );
        assert_eq!(k.verify("jg2.x", 0), Err(TokenError::Malformed));
        assert_eq!(k.verify(&format!("jg2.{}.AAAA", c.kid), 0), Err(TokenError::Malformed));

        // jg1 tokens minted before jg2 still verify until they expire; the MAC is checked before
        // the body is decoded or parsed.
        let t1 = k.mint_v1(&c);
        assert!(is_gateway_token(&t1));
        assert_eq!(k.verify(&t1, 1001).unwrap(), c);
        assert_eq!(k.verify(&t1, 4600), Err(TokenError::Expired));
        let (_, sig0) = t1.rsplit_once('.').unwrap();
        assert_eq!(
            k.verify(&format!("jg1.{{not json, not base64!}}.{sig0}"), 1001),
            Err(TokenError::BadSignature)
        );
        // Claims re-encoded with more groups, old signature: refused.
        let mut forged = c.clone();
        forged.groups = vec!["jitgate-admins".into()];
        let body = B64.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            k.verify(&format!("jg1.{body}.{sig0}"), 1001),
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
