//! Client side of upstream password authentication: SCRAM-SHA-256 (RFC 5802/7677, no channel
//! binding) and PostgreSQL's md5.
//!
//! PBKDF2 with 4096 iterations dominates a SCRAM login. The salted password depends only on
//! (password, salt, iterations), which are stable per upstream role, so it is cached: a new
//! connection then costs a few HMACs instead of 8192.

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
        "the server asks for {0} SCRAM iterations; jitgate accepts at most {MAX_ITERATIONS} (PostgreSQL's default is 4096)"
    )]
    Iterations(u32),
}

/// Most PBKDF2 iterations the gateway computes for one upstream login (about 0.1 s here; the
/// result is cached per password, salt and count).
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

/// Cache of salted passwords keyed by (sha256(password), salt, iterations).
#[derive(Debug, Default, Clone)]
pub struct SaltCache {
    inner: Arc<Mutex<Vec<SaltEntry>>>,
}

impl SaltCache {
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
        if iterations > MAX_ITERATIONS {
            return Err(ScramError::Iterations(iterations));
        }
        let salted = cache.get(password, &salt, iterations);
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

/// PostgreSQL md5: `"md5" + md5(md5(password + user) + salt)`.
pub fn md5_password(user: &str, password: &str, salt: &[u8; 4]) -> String {
    use md5::Md5;
    let inner = hex::encode(Md5::digest(format!("{password}{user}").as_bytes()));
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    format!("md5{}", hex::encode(h.finalize()))
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
            Err(ScramError::Iterations(10_000_000))
        );
    }

    #[test]
    fn md5_known_value() {
        // md5(md5("secret"+"bob") + salt) for salt 01020304.
        let v = md5_password("bob", "secret", &[1, 2, 3, 4]);
        assert!(v.starts_with("md5") && v.len() == 35);
    }
}
