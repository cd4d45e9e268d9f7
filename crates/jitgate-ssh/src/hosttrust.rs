//! Which upstream host keys the gateway accepts for a resource, with OpenSSH's `known_hosts`
//! semantics (sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT"): comma-separated host patterns with `*`, `?`
//! and `!` negation, `[host]:port` for ports other than 22, hashed names (`|1|salt|hash`,
//! HMAC-SHA1), `@cert-authority` lines (host certificates signed by that key are accepted for the
//! matching hosts) and `@revoked` lines (that key is never accepted, bare or as a certificate's
//! key or CA). Plus the resource's `host_key` (one pinned key) and `host_ca` (CA keys trusted for
//! this resource's host certificates).
//!
//! A host certificate is accepted when it is a host certificate, its signature verifies, it is
//! within its validity period, it was signed by a trusted CA, it carries no critical options, and
//! its principals name the host (OpenSSH, like us, accepts a certificate without principals as
//! valid for any host the CA is trusted for). A certificate whose key is itself pinned is
//! accepted as that key, as OpenSSH falls back to the raw key.

use std::path::Path;

use hmac::{KeyInit, Mac};
use russh::keys::ssh_key::known_hosts::{HostPatterns, KnownHosts, Marker};
use russh::keys::ssh_key::{HashAlg, certificate::CertType, public::KeyData};
use russh::keys::{Certificate, PublicKey, PublicKeyOrCertificate};

/// What a resource trusts.
#[derive(Debug, Clone, Default)]
pub struct HostTrust {
    /// The name certificates must carry as a principal (the host part of the address).
    host: String,
    keys: Vec<KeyData>,
    cas: Vec<KeyData>,
    revoked: Vec<KeyData>,
}

/// Why a presented host key was refused (shown to operators and users).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Neither a pinned key nor signed by a trusted CA.
    #[error("the host key is not pinned and not signed by a trusted host CA")]
    Unknown,
    /// An `@revoked` line names it.
    #[error("the host key (or the CA that signed it) is revoked in known_hosts_file")]
    Revoked,
    /// A certificate from a trusted CA that fails a check.
    #[error("the host certificate is not valid: {0}")]
    BadCertificate(String),
}

impl HostTrust {
    /// Build from a resource's settings; `address` is its `host:port` (or `[v6]:port`).
    pub fn new(
        address: &str,
        host_key: Option<&PublicKey>,
        host_cas: &[PublicKey],
        known_hosts: Option<&Path>,
    ) -> Result<Self, String> {
        let (host, port) = split_host_port(address);
        let mut t = HostTrust {
            host: host.to_string(),
            keys: host_key.map(|k| k.key_data().clone()).into_iter().collect(),
            cas: host_cas.iter().map(|k| k.key_data().clone()).collect(),
            revoked: Vec::new(),
        };
        if let Some(path) = known_hosts {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("known_hosts_file {}: {e}", path.display()))?;
            t.add_known_hosts(&text, host, port)
                .map_err(|e| format!("known_hosts_file {}: {e}", path.display()))?;
        }
        if t.keys.is_empty() && t.cas.is_empty() {
            return Err(format!(
                "no host key or host CA for {address} (host_key, host_ca or a matching known_hosts_file line)"
            ));
        }
        Ok(t)
    }

    /// Add the lines of a known_hosts text that match `host`/`port`.
    /// Lines that do not parse are skipped (with a warning), as OpenSSH does; the number of
    /// lines skipped is returned.
    pub fn add_known_hosts(&mut self, text: &str, host: &str, port: u16) -> Result<usize, String> {
        // OpenSSH lowercases the host name before matching and hashing (ssh-keygen -H hashes
        // lowercase names).
        let name = lookup_name(&host.to_ascii_lowercase(), port);
        let mut skipped = 0;
        for (n, raw) in text.lines().enumerate() {
            // The parser wants single spaces; OpenSSH accepts any blanks.
            let line = raw.split_whitespace().collect::<Vec<_>>().join(" ");
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry = match KnownHosts::new(&line).next() {
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    skipped += 1;
                    tracing::warn!(line = n + 1, error = %e, "known_hosts line skipped (not understood)");
                    continue;
                }
                None => continue,
            };
            if !host_matches(entry.host_patterns(), &name) {
                continue;
            }
            let key = entry.public_key().key_data().clone();
            match entry.marker() {
                None => self.keys.push(key),
                Some(Marker::CertAuthority) => self.cas.push(key),
                Some(Marker::Revoked) => self.revoked.push(key),
            }
        }
        Ok(skipped)
    }

    /// Whether anything here is a CA (then the gateway asks upstreams for certificates).
    pub fn wants_certificates(&self) -> bool {
        !self.cas.is_empty()
    }

    /// Check what the upstream presented, at Unix time `now`.
    pub fn check(&self, presented: &PublicKeyOrCertificate, now: u64) -> Result<(), Refused> {
        match presented {
            PublicKeyOrCertificate::PublicKey { key, .. } => self.check_key(key.key_data()),
            PublicKeyOrCertificate::Certificate(cert) => self.check_cert(cert, now),
        }
    }

    fn check_key(&self, k: &KeyData) -> Result<(), Refused> {
        if self.revoked.contains(k) {
            return Err(Refused::Revoked);
        }
        if self.keys.contains(k) {
            Ok(())
        } else {
            Err(Refused::Unknown)
        }
    }

    fn check_cert(&self, cert: &Certificate, now: u64) -> Result<(), Refused> {
        let key = cert.public_key();
        let ca = cert.signature_key();
        if self.revoked.contains(key) || self.revoked.contains(ca) {
            return Err(Refused::Revoked);
        }
        if !self.cas.contains(ca) {
            // Not from a trusted CA: perhaps its key is pinned (OpenSSH falls back likewise).
            return self.check_key(key);
        }
        let checked = self.check_trusted_cert(cert, now);
        // As OpenSSH: a certificate that fails its checks is retried as its plain key.
        match checked {
            Err(Refused::BadCertificate(_)) if self.check_key(key).is_ok() => Ok(()),
            other => other,
        }
    }

    fn check_trusted_cert(&self, cert: &Certificate, now: u64) -> Result<(), Refused> {
        let ca = cert.signature_key();
        let bad = |s: &str| Refused::BadCertificate(s.to_string());
        if cert.cert_type() != CertType::Host {
            return Err(bad("it is a user certificate"));
        }
        let fp = ca.fingerprint(HashAlg::Sha256);
        cert.validate_at(now, [&fp])
            .map_err(|_| bad("bad signature or outside its validity period"))?;
        if !cert.critical_options().is_empty() {
            return Err(bad("it carries critical options"));
        }
        let principals = cert.valid_principals();
        if !principals.is_empty() && !principals.iter().any(|p| p.eq_ignore_ascii_case(&self.host)) {
            return Err(Refused::BadCertificate(format!(
                "issued for {}, not {}",
                principals.join(", "),
                self.host
            )));
        }
        Ok(())
    }
}

/// `host` and port from `host:port`, `[v6]:port` or a bare host (port 22).
pub fn split_host_port(address: &str) -> (&str, u16) {
    if let Some(rest) = address.strip_prefix('[')
        && let Some((h, p)) = rest.split_once(']')
    {
        return (h, p.strip_prefix(':').and_then(|p| p.parse().ok()).unwrap_or(22));
    }
    match address.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().unwrap_or(22)),
        _ => (address, 22),
    }
}

/// The name OpenSSH looks up: `host`, or `[host]:port` for another port.
fn lookup_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

fn host_matches(p: &HostPatterns, name: &str) -> bool {
    match p {
        HostPatterns::HashedName { salt, hash } => {
            let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                return false;
            };
            mac.update(name.as_bytes());
            mac.verify_slice(hash).is_ok()
        }
        HostPatterns::Patterns(list) => {
            // OpenSSH match_hostname: a negated match rejects the line outright.
            let mut matched = false;
            for pat in list {
                let (neg, pat) = match pat.strip_prefix('!') {
                    Some(p) => (true, p),
                    None => (false, pat.as_str()),
                };
                if glob(&pat.to_ascii_lowercase(), &name.to_ascii_lowercase()) {
                    if neg {
                        return false;
                    }
                    matched = true;
                }
            }
            matched
        }
    }
}

/// OpenSSH `match_pattern`: `*` any run of characters, `?` one character (the same matcher as
/// policy resource globs).
fn glob(p: &str, s: &str) -> bool {
    jitgate_core::glob::matches(p, s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{generate_ed25519, sign_host_cert};

    fn line(k: &PublicKey) -> String {
        k.to_openssh().unwrap()
    }

    fn host_cert(key: &PublicKey, ca: &russh::keys::PrivateKey, principals: &[&str], now: u64) -> Certificate {
        let p: Vec<String> = principals.iter().map(|s| s.to_string()).collect();
        sign_host_cert(ca, key, &p, now - 60, now + 3600).unwrap()
    }

    #[test]
    fn patterns_ports_negation_and_hashes() {
        assert!(glob("web-*.example.com", "web-1.example.com"));
        assert!(glob("10.0.?.1", "10.0.3.1"));
        assert!(!glob("web-?", "web-10"));
        let pats = |s: &str| s.parse::<HostPatterns>().unwrap();
        assert!(host_matches(&pats("*.example.com,!bad.example.com"), "ok.example.com"));
        assert!(!host_matches(
            &pats("*.example.com,!bad.example.com"),
            "bad.example.com"
        ));
        assert!(host_matches(&pats("[10.1.1.1]:2200"), &lookup_name("10.1.1.1", 2200)));
        assert!(!host_matches(&pats("10.1.1.1"), &lookup_name("10.1.1.1", 2200)));
        // `ssh-keygen -H` output for "[127.0.0.1]:2200", salt from the test below.
        let salt = [7u8; 20];
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt).unwrap();
        mac.update(b"[127.0.0.1]:2200");
        let hash: [u8; 20] = mac.finalize().into_bytes().into();
        let hashed = HostPatterns::HashedName {
            salt: salt.to_vec(),
            hash,
        };
        assert!(host_matches(&hashed, "[127.0.0.1]:2200"));
        assert!(!host_matches(&hashed, "[127.0.0.1]:2201"));
        assert_eq!(split_host_port("[::1]:2222"), ("::1", 2222));
        assert_eq!(split_host_port("db.example.com"), ("db.example.com", 22));
    }

    #[test]
    fn case_blanks_and_bad_lines_as_openssh() {
        let k = generate_ed25519("k");
        let other = generate_ed25519("o");
        // A hashed line for the lowercase name matches a host configured in capitals.
        let salt = [3u8; 20];
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt).unwrap();
        mac.update(b"web-1.example.com");
        let hash: [u8; 20] = mac.finalize().into_bytes().into();
        let b64 = base64_encode;
        let kh = format!(
            "@revoked |1|{}|{} {}\nweb-1.example.com\t{}\n@bogus-marker * {}\nnot a line at all\n",
            b64(&salt),
            b64(&hash),
            line(other.public_key()),
            line(k.public_key()),
            line(other.public_key())
        );
        let mut t = HostTrust {
            host: "Web-1.example.com".into(),
            ..Default::default()
        };
        let skipped = t.add_known_hosts(&kh, "Web-1.Example.com", 22).unwrap();
        assert_eq!(skipped, 2);
        let bare = |k: &PublicKey| PublicKeyOrCertificate::PublicKey {
            key: k.clone(),
            hash_alg: None,
        };
        assert_eq!(t.check(&bare(k.public_key()), 0), Ok(()));
        assert_eq!(t.check(&bare(other.public_key()), 0), Err(Refused::Revoked));
    }

    fn base64_encode(b: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in b.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn keys_cas_and_revocations() {
        let now = 1_900_000_000;
        let ca = generate_ed25519("ca");
        let other_ca = generate_ed25519("other");
        let host = generate_ed25519("host");
        let pinned = generate_ed25519("pinned");
        let kh = format!(
            "@cert-authority *.example.com,[127.0.0.1]:2200 {}\nweb-1.example.com {}\n",
            line(ca.public_key()),
            line(pinned.public_key())
        );
        let mut t = HostTrust {
            host: "web-1.example.com".into(),
            ..Default::default()
        };
        t.add_known_hosts(&kh, "web-1.example.com", 22).unwrap();
        let bare = |k: &PublicKey| PublicKeyOrCertificate::PublicKey {
            key: k.clone(),
            hash_alg: None,
        };
        let cert = |c: Certificate| PublicKeyOrCertificate::Certificate(c);
        assert_eq!(t.check(&bare(pinned.public_key()), now), Ok(()));
        assert_eq!(t.check(&bare(host.public_key()), now), Err(Refused::Unknown));
        let good = host_cert(host.public_key(), &ca, &["web-1.example.com"], now);
        assert_eq!(t.check(&cert(good.clone()), now), Ok(()));
        assert!(matches!(
            t.check(&cert(good.clone()), now + 7200),
            Err(Refused::BadCertificate(_))
        ));
        let wrong_name = host_cert(host.public_key(), &ca, &["web-2.example.com"], now);
        assert!(matches!(t.check(&cert(wrong_name), now), Err(Refused::BadCertificate(m)) if m.contains("web-2")));
        let any_name = host_cert(host.public_key(), &ca, &[], now);
        assert_eq!(t.check(&cert(any_name), now), Ok(()));
        let foreign = host_cert(host.public_key(), &other_ca, &["web-1.example.com"], now);
        assert_eq!(t.check(&cert(foreign), now), Err(Refused::Unknown));
        // The CA line does not apply to other hosts.
        let mut t2 = HostTrust {
            host: "db.internal".into(),
            ..Default::default()
        };
        t2.add_known_hosts(&kh, "db.internal", 22).unwrap();
        assert!(!t2.wants_certificates());
        // @revoked beats everything: the CA, or the key.
        let mut t3 = t.clone();
        t3.add_known_hosts(
            &format!("@revoked * {}\n", line(ca.public_key())),
            "web-1.example.com",
            22,
        )
        .unwrap();
        assert_eq!(t3.check(&cert(good), now), Err(Refused::Revoked));
        let mut t4 = t.clone();
        t4.add_known_hosts(
            &format!("@revoked * {}\n", line(pinned.public_key())),
            "web-1.example.com",
            22,
        )
        .unwrap();
        assert_eq!(t4.check(&bare(pinned.public_key()), now), Err(Refused::Revoked));
    }
}
