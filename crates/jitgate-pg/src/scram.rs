//! Client side of upstream SCRAM-SHA-256 (RFC 5802/7677, no channel binding); md5 and the
//! messages come from postgres-protocol (`upstream.rs`).
//!
//! Why not postgres-protocol's `ScramSha256` as well: it computes PBKDF2 inside `update()` for
//! whatever iteration count the server names, with no cap and nothing to cache. PBKDF2 with
//! 4096 iterations dominates a SCRAM login; the salted password depends only on (password,
//! salt, iterations), which are stable per upstream role, so it is cached here: a new
//! connection then costs a few HMACs instead of 8192 (connection rate 1.5x direct). And a
//! hostile or spoofed server naming 10,000,000 iterations is refused before any is computed.
//! The password is normalized with SASLprep (RFC 4013) as PostgreSQL does (`pg_saslprep`):
//! a password that is not valid UTF-8 or that SASLprep refuses is used as it is.

use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// SCRAM failures (never include the password).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    /// The server's message is not what RFC 5802 says.
    #[error("malformed SCRAM message from the server")]
    Malformed,
    /// The server's nonce does not extend ours.
    #[error("SCRAM nonce mismatch")]
    Nonce,
    /// The server could not prove it knows the password (possible impostor).
    #[error("the server's SCRAM signature is wrong")]
    ServerSignature,
    /// The server asks for more PBKDF2 iterations than the gateway will spend on one login (a
    /// hostile or spoofed server could otherwise burn the gateway's CPU).
    #[error(
        "the server asks for {0} SCRAM iterations; jitgate accepts at most {1} (PostgreSQL's default is 4096; [postgres] max_scram_iterations raises the limit)"
    )]
    Iterations(u32, u32),
}

/// Default most PBKDF2 iterations the gateway computes for one upstream login (about 0.1 s
/// here; the result is cached per password, salt and count): `[postgres] max_scram_iterations`.
pub const MAX_ITERATIONS: u32 = 100_000;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    m.update(data);
    m.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA256 with a 32-byte output.
pub fn pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

/// (sha256(password), salt, iterations, salted password).
type SaltEntry = ([u8; 32], Vec<u8>, u32, [u8; 32]);

/// Cache of salted passwords keyed by (sha256(password), salt, iterations), and the most
/// iterations a server may ask for.
#[derive(Debug, Clone)]
pub struct SaltCache {
    inner: Arc<Mutex<Vec<SaltEntry>>>,
    max_iterations: u32,
}

impl Default for SaltCache {
    fn default() -> Self {
        Self::with_max_iterations(MAX_ITERATIONS)
    }
}

impl SaltCache {
    /// A cache that refuses servers asking for more than `max` iterations.
    pub fn with_max_iterations(max: u32) -> Self {
        Self {
            inner: Arc::default(),
            max_iterations: max,
        }
    }

    fn get(&self, password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
        let pw_key: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        {
            let v = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, _, _, s)) = v
                .iter()
                .find(|(p, sa, i, _)| *p == pw_key && sa == salt && *i == iterations)
            {
                return *s;
            }
        }
        let salted = pbkdf2(password.as_bytes(), salt, iterations);
        let mut v = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() > 256 {
            v.clear();
        }
        v.push((pw_key, salt.to_vec(), iterations, salted));
        salted
    }
}

/// One SCRAM exchange.
#[derive(Debug)]
pub struct ScramClient {
    nonce: String,
    client_first_bare: String,
    auth_message: String,
    server_key: [u8; 32],
}

impl ScramClient {
    /// Start: returns the client and the client-first-message.
    pub fn start() -> (Self, String) {
        let raw: [u8; 18] = rand::random();
        let nonce = B64.encode(raw);
        let bare = format!("n=,r={nonce}");
        (
            Self {
                nonce,
                client_first_bare: bare.clone(),
                auth_message: String::new(),
                server_key: [0; 32],
            },
            format!("n,,{bare}"),
        )
    }

    /// Answer the server-first-message with the client-final-message.
    pub fn respond(&mut self, server_first: &str, password: &str, cache: &SaltCache) -> Result<String, ScramError> {
        let mut r = None;
        let mut s = None;
        let mut i = None;
        for part in server_first.split(',') {
            match part.split_at_checked(2) {
                Some(("r=", v)) => r = Some(v),
                Some(("s=", v)) => s = Some(v),
                Some(("i=", v)) => i = Some(v),
                _ => {}
            }
        }
        let (r, s, i) = (
            r.ok_or(ScramError::Malformed)?,
            s.ok_or(ScramError::Malformed)?,
            i.ok_or(ScramError::Malformed)?,
        );
        if !r.starts_with(&self.nonce) || r.len() <= self.nonce.len() {
            return Err(ScramError::Nonce);
        }
        let salt = B64.decode(s).map_err(|_| ScramError::Malformed)?;
        let iterations: u32 = i.parse().map_err(|_| ScramError::Malformed)?;
        if iterations == 0 {
            return Err(ScramError::Malformed);
        }
        if iterations > cache.max_iterations {
            return Err(ScramError::Iterations(iterations, cache.max_iterations));
        }
        let salted = cache.get(&saslprep(password), &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={r}");
        self.auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac(&stored_key, self.auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(signature.iter()).map(|(a, b)| a ^ b).collect();
        self.server_key = hmac(&salted, b"Server Key");
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Check the server-final-message.
    pub fn verify(&self, server_final: &str) -> Result<(), ScramError> {
        let v = server_final.strip_prefix("v=").ok_or(ScramError::Malformed)?;
        let v = B64
            .decode(v.split(',').next().unwrap_or(""))
            .map_err(|_| ScramError::Malformed)?;
        // Compared in constant time.
        let mut m = HmacSha256::new_from_slice(&self.server_key).map_err(|_| ScramError::ServerSignature)?;
        m.update(self.auth_message.as_bytes());
        m.verify_slice(&v).map_err(|_| ScramError::ServerSignature)
    }
}

/// SASLprep (RFC 4013) of a password, with PostgreSQL's fallback: what SASLprep refuses
/// (prohibited or unassigned code points, bidi violations) is used unchanged, as the server
/// did when it stored the verifier.
pub fn saslprep(password: &str) -> std::borrow::Cow<'_, str> {
    stringprep::saslprep(password).unwrap_or(std::borrow::Cow::Borrowed(password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_matches_rfc7914_vector() {
        // RFC 7914 §11: PBKDF2-HMAC-SHA256 (P="passwd", S="salt", c=1), first 32 bytes.
        let out = pbkdf2(b"passwd", b"salt", 1);
        assert_eq!(
            hex::encode(out),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
    }

    #[test]
    fn rfc7677_exchange() {
        // RFC 7677 §3 example (user "user", password "pencil").
        let cache = SaltCache::default();
        let mut c = ScramClient {
            nonce: "rOprNGfwEbeRWgbNEkqO".into(),
            client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".into(),
            auth_message: String::new(),
            server_key: [0; 32],
        };
        let sf = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let cf = c.respond(sf, "pencil", &cache).unwrap();
        assert_eq!(
            cf,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(c.verify("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="), Ok(()));
        assert_eq!(
            c.verify("v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(ScramError::ServerSignature)
        );
        assert_eq!(
            c.respond("r=other,s=AA==,i=1", "pencil", &cache),
            Err(ScramError::Nonce)
        );
        // A server asking for 10,000,000 iterations held a login for seconds of CPU (a seed of
        // the pg_upstream_login fuzz target keeps it covered); now refused at once.
        assert_eq!(
            c.respond("r=rOprNGfwEbeRWgbNEkqOx,s=AA==,i=10000000", "pencil", &cache),
            Err(ScramError::Iterations(10_000_000, MAX_ITERATIONS))
        );
        // The limit is the operator's.
        assert_eq!(
            c.respond(
                "r=rOprNGfwEbeRWgbNEkqOx,s=AA==,i=5000",
                "pencil",
                &SaltCache::with_max_iterations(4096)
            ),
            Err(ScramError::Iterations(5000, 4096))
        );
    }

    #[test]
    fn saslprep_maps_like_postgresql() {
        // RFC 4013 §3 examples: soft hyphen mapped to nothing, NFKC (U+2168 ROMAN NUMERAL NINE
        // -> "IX", U+00AA -> "a"), a non-ASCII space to a space; prohibited (U+0007) and bidi-
        // violating input is kept as it is (PostgreSQL's fallback).
        assert_eq!(saslprep("I\u{00AD}X"), "IX");
        assert_eq!(saslprep("\u{2168}"), "IX");
        assert_eq!(saslprep("\u{00AA}"), "a");
        assert_eq!(saslprep("a\u{00A0}b"), "a b");
        assert_eq!(saslprep("\u{0007}"), "\u{0007}");
        assert_eq!(saslprep("\u{0627}1"), "\u{0627}1");
        assert_eq!(saslprep("pencil"), "pencil");
    }

    #[test]
    fn agrees_with_postgres_protocol_scram() {
        // Differential: our (cached, capped) client and postgres-protocol's ScramSha256 answer a
        // server-first message with the same proof for the same nonce, also for a password that
        // needs SASLprep.
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        for pw in ["pencil", "\u{2168}x\u{00AD}", "p\u{00A0}w"] {
            let mut theirs = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
            let first = std::str::from_utf8(theirs.message()).unwrap().to_string();
            let nonce = first.rsplit("r=").next().unwrap().to_string();
            let mut ours = ScramClient {
                nonce: nonce.clone(),
                client_first_bare: format!("n=,r={nonce}"),
                auth_message: String::new(),
                server_key: [0; 32],
            };
            let sf = format!("r={nonce}srv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
            theirs.update(sf.as_bytes()).unwrap();
            let mine = ours.respond(&sf, pw, &SaltCache::default()).unwrap();
            assert_eq!(std::str::from_utf8(theirs.message()).unwrap(), mine, "password {pw:?}");
        }
    }
}
