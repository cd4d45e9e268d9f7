//! Identity for jitgate: an OpenID Connect relying party ([`oidc`]) and the gateway's own
//! short-lived, revocable tokens ([`token`]) that a login turns into. A gateway token is the
//! bearer for the API and the password for Postgres; the SSH front end signs certificates for
//! the identity it carries.

pub mod callback;
pub mod oidc;
pub mod token;

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicI64, Ordering};

pub use oidc::{AuthError, DeviceStart, Identity, Oidc, OidcConfig};
pub use token::{Claims, TokenError, TokenKeys, is_gateway_token};

/// Gateway tokens plus the revocation list.
#[derive(Debug)]
pub struct Tokens {
    /// Signing keys.
    pub keys: TokenKeys,
    /// Lifetime of minted tokens, seconds (`[oidc] token_lifetime`; a reload changes it).
    lifetime: AtomicI64,
    /// The longest lifetime this process has minted with: how long a revocation by id must
    /// be kept so that no token it names outlives it.
    longest: AtomicI64,
    /// Revoked token ids → their expiry (entries are dropped once expired).
    revoked: RwLock<HashMap<String, i64>>,
}

/// Why a gateway token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Signature, format or expiry.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Logged out or revoked by an admin.
    #[error("token revoked (logged out); log in again with `jitgate login`")]
    Revoked,
}

impl Tokens {
    /// Tokens signed with `keys`, valid for `lifetime` seconds.
    pub fn new(keys: TokenKeys, lifetime: i64) -> Self {
        Self {
            keys,
            lifetime: AtomicI64::new(lifetime),
            longest: AtomicI64::new(lifetime),
            revoked: RwLock::new(HashMap::new()),
        }
    }

    /// Tokens minted from now on live `secs` seconds (those already minted keep their expiry).
    pub fn set_lifetime(&self, secs: i64) {
        self.lifetime.store(secs, Ordering::Relaxed);
        self.longest.fetch_max(secs, Ordering::Relaxed);
    }

    /// The lifetime of the tokens minted now, seconds.
    pub fn lifetime(&self) -> i64 {
        self.lifetime.load(Ordering::Relaxed)
    }

    /// The longest lifetime any token minted by this process has (revocations by id last that long).
    pub fn longest_lifetime(&self) -> i64 {
        self.longest.load(Ordering::Relaxed)
    }

    /// Mint a token for an identity.
    pub fn mint(&self, name: &str, groups: &[String], now: i64) -> Result<(String, Claims), TokenError> {
        self.keys.mint(name, groups, now, self.lifetime())
    }

    /// Mint a token that also says when the identity authenticated at the provider
    /// (`auth_time`), for policies with `step_up`.
    pub fn mint_authenticated(
        &self,
        name: &str,
        groups: &[String],
        now: i64,
        auth_time: Option<i64>,
    ) -> Result<(String, Claims), TokenError> {
        self.keys.mint_with(name, groups, now, self.lifetime(), auth_time)
    }

    /// Verify signature, expiry and revocation.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, Refused> {
        let c = self.keys.verify(token, now)?;
        if self.revoked.read().map(|r| r.contains_key(&c.jti)).unwrap_or(true) {
            return Err(Refused::Revoked);
        }
        Ok(c)
    }

    /// Is this token id on the revocation list.
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.read().map(|r| r.contains_key(jti)).unwrap_or(true)
    }

    /// Add to the revocation list (the caller persists it).
    pub fn revoke(&self, jti: &str, exp: i64, now: i64) {
        if let Ok(mut r) = self.revoked.write() {
            r.retain(|_, e| *e > now);
            r.insert(jti.to_string(), exp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_tokens_are_refused() {
        let t = Tokens::new(TokenKeys::ephemeral(), 3600);
        let (tok, c) = t.mint("alice", &[], 100).unwrap();
        assert!(t.verify(&tok, 101).is_ok());
        t.revoke(&c.jti, c.exp, 101);
        assert_eq!(t.verify(&tok, 102), Err(Refused::Revoked));
        let (tok2, _) = t.mint("alice", &[], 100).unwrap();
        assert!(t.verify(&tok2, 101).is_ok());
    }
}
