//! Signed checkpoints: the writer signs the chain's head with an ed25519 key every
//! `checkpoint_every` lines, `checkpoint_interval` after the first unsigned line, before a
//! rotation and at shutdown, as a `chain.checkpoint` line.
//!
//! The hash chain alone shows that a line was changed, but anyone who can write the file can
//! rewrite every hash after an edit, or cut the file short. A signature over the head can only
//! be made with the gateway's key, so an auditor holding the public key verifies offline, on a
//! copy, that every line up to the last checkpoint is what the gateway wrote. What follows the
//! last checkpoint is not signed; the verifier says where that starts, so a copy cut after it is
//! visible as such, and a witness that received the checkpoints (a webhook) shows whether later
//! ones existed.
//!
//! A checkpoint vouches for the lines `from_seq..=covers_seq`: the lines the signing process
//! wrote itself since its previous checkpoint. A tail an earlier run left unsigned (a crash, a
//! kill) could have been edited while the gateway was down, so the next run never signs over it;
//! `verify` reports such lines as a gap instead.
//!
//! The signed message is
//! `jitgate-audit-checkpoint-v1\n{covers_seq}\n{head}\n{time}\n{from_seq}\n{why}\n`, where
//! `head` is the hash of line `covers_seq` (the checkpoint line's own `prev`) and `time` the
//! checkpoint's `time` in RFC 3339.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::Event;
use crate::kind::Kind;

/// The private key's file in the key directory (mode 0600).
pub const KEY_FILE: &str = "checkpoint.key";
/// The public key's file, beside it (what `jitgate audit pubkey` prints).
pub const PUB_FILE: &str = "checkpoint.pub";
/// How a public key is written: `ed25519:` and the 32 bytes in base64.
pub const KEY_PREFIX: &str = "ed25519:";
const KEY_HEADER: &str = "jitgate audit checkpoint key v1 (ed25519 secret, base64); keep it private";
const MESSAGE_TAG: &str = "jitgate-audit-checkpoint-v1";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A checkpoint key file that cannot be read or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// File trouble.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Others may read the key: whoever did can sign checkpoints.
    #[error(
        "{path} is readable by others (mode {mode:o}): anyone who read it can sign audit checkpoints; run `chmod 600 {path}` if no one did, else move it aside and give auditors the new public key"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a key.
    #[error("{path}: not a jitgate checkpoint key ({why}); move it aside to have a new key made")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// A public checkpoint key, as an auditor holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{KEY_PREFIX}{}", B64.encode(self.0.to_bytes()))
    }
}

impl PublicKey {
    /// Parse `ed25519:BASE64` (the prefix may be left out).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let b64 = s.strip_prefix(KEY_PREFIX).unwrap_or(s);
        let bytes = B64
            .decode(b64)
            .map_err(|e| format!("not a checkpoint public key (expected {KEY_PREFIX}BASE64): {e}"))?;
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| format!("an ed25519 public key has 32 bytes, this one {}", bytes.len()))?;
        VerifyingKey::from_bytes(&arr)
            .map(Self)
            .map_err(|e| format!("not a valid ed25519 public key: {e}"))
    }

    /// Short id written in each checkpoint (first 16 hex digits of the key's SHA-256), so a
    /// verifier names the key a checkpoint claims.
    pub fn id(&self) -> String {
        let d = Sha256::digest(self.0.to_bytes());
        hex16(&d)
    }

    /// Check `signature` (base64) over `msg`, strictly (no malleable signatures).
    pub fn verify(&self, msg: &[u8], signature: &str) -> Result<(), String> {
        let bytes = B64
            .decode(signature)
            .map_err(|e| format!("the signature is not base64: {e}"))?;
        let sig = Signature::from_slice(&bytes).map_err(|e| format!("not an ed25519 signature: {e}"))?;
        self.0
            .verify_strict(msg, &sig)
            .map_err(|_| "the signature does not verify".to_string())
    }
}

fn hex16(d: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    d.iter()
        .take(8)
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0x0f)]])
        .map(char::from)
        .collect()
}

/// The gateway's signing key.
pub struct CheckpointKey {
    signing: SigningKey,
    public: PublicKey,
}

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointKey({})", self.public)
    }
}

impl CheckpointKey {
    fn from_secret(secret: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&secret);
        let public = PublicKey(signing.verifying_key());
        Self { signing, public }
    }

    /// Load the key in `dir`, or make one (0600, with its public half beside it) when there is
    /// none. The directory is created 0700.
    pub fn load_or_create(dir: &Path) -> Result<Self, KeyError> {
        let path = dir.join(KEY_FILE);
        let io = |path: &Path, source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt as _;
                    let mode = std::fs::metadata(&path).map_err(|e| io(&path, e))?.permissions().mode();
                    if mode & 0o077 != 0 {
                        return Err(KeyError::Exposed {
                            path: path.clone(),
                            mode: mode & 0o777,
                        });
                    }
                }
                let key = Self::parse_file(&text).map_err(|why| KeyError::Invalid {
                    path: path.clone(),
                    why,
                })?;
                // The public half is derived; rewrite it if it is missing or stale.
                let pub_path = dir.join(PUB_FILE);
                let want = format!("{}\n", key.public);
                if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(want.as_str()) {
                    std::fs::write(&pub_path, want).map_err(|e| io(&pub_path, e))?;
                }
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
                restrict(dir, 0o700);
                let key = Self::from_secret(rand::random());
                let text = format!("{KEY_HEADER}\n{}\n", B64.encode(key.signing.to_bytes()));
                let tmp = dir.join(format!("{KEY_FILE}.tmp"));
                // A stale (or planted) temporary file is removed, never written through.
                match std::fs::remove_file(&tmp) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&tmp, e)),
                    _ => {}
                }
                write_private(&tmp, text.as_bytes()).map_err(|e| io(&tmp, e))?;
                // Never replace a key another process made meanwhile: hard_link fails if it exists.
                let linked = std::fs::hard_link(&tmp, &path);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => {}
                    // Another process made one first: use it.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Self::load_or_create(dir),
                    Err(e) => return Err(io(&path, e)),
                }
                let pub_path = dir.join(PUB_FILE);
                std::fs::write(&pub_path, format!("{}\n", key.public)).map_err(|e| io(&pub_path, e))?;
                tracing::info!(key = %key.public, file = %path.display(), "made the audit checkpoint signing key");
                Ok(key)
            }
            Err(e) => Err(io(&path, e)),
        }
    }

    fn parse_file(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        if lines.next() != Some(KEY_HEADER) {
            return Err("its first line is not the key header".into());
        }
        let b64 = lines.next().ok_or("no key line")?;
        let bytes = B64
            .decode(b64.trim())
            .map_err(|e| format!("the key line is not base64: {e}"))?;
        let secret: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| format!("the key has {} bytes, not 32", bytes.len()))?;
        Ok(Self::from_secret(secret))
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The `chain.checkpoint` event vouching for lines `from_seq..=covers_seq`, the last of
    /// which hashes to `head` (the caller sets `seq` and `prev`, which must be `covers_seq + 1`
    /// and `head`).
    pub fn checkpoint(&self, covers_seq: u64, head: &str, from_seq: u64, why: &str, time: Timestamp) -> Event {
        let sig = self
            .signing
            .sign(message(covers_seq, head, &time, from_seq, why).as_bytes());
        Event::new(Kind::ChainCheckpoint, time)
            .actor("gateway")
            .detail(Checkpoint {
                covers_seq,
                from_seq,
                head: head.to_string(),
                key_id: self.public.id(),
                signature: B64.encode(sig.to_bytes()),
                why: why.to_string(),
            })
    }
}

/// Write `bytes` to a new file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    let mut f = o.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn restrict(dir: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
    }
}

/// The bytes a checkpoint signs (`why` is a single word; it cannot hold a newline).
pub fn message(covers_seq: u64, head: &str, time: &Timestamp, from_seq: u64, why: &str) -> String {
    format!("{MESSAGE_TAG}\n{covers_seq}\n{head}\n{time}\n{from_seq}\n{why}\n")
}

/// A `chain.checkpoint` line's details.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last line it signs (the line before the checkpoint).
    pub covers_seq: u64,
    /// The first line it vouches for (written by the same run since its previous checkpoint).
    pub from_seq: u64,
    /// That line's hash (the chain's head at the checkpoint).
    pub head: String,
    /// Which key signed ([`PublicKey::id`]).
    pub key_id: String,
    /// ed25519 signature of [`message`], base64.
    pub signature: String,
    /// `events`, `interval`, `rotation` or `shutdown`.
    pub why: String,
}

/// Check one `chain.checkpoint` event against the keys an auditor trusts. The chain walk has
/// already checked that `e.prev` is the hash of the line before it.
pub fn check(e: &Event, keys: &[PublicKey]) -> Result<Checkpoint, String> {
    let c: Checkpoint = serde_json::from_value(e.details.clone())
        .map_err(|err| format!("a chain.checkpoint line without valid details: {err}"))?;
    if e.seq.checked_sub(1) != Some(c.covers_seq) {
        return Err(format!(
            "the checkpoint claims to sign line seq {} but stands after seq {}",
            c.covers_seq,
            e.seq.saturating_sub(1)
        ));
    }
    if c.from_seq == 0 || c.from_seq > c.covers_seq || c.why.contains('\n') {
        return Err(format!(
            "the checkpoint vouches for seq {}..{}, which is not a range of lines before it",
            c.from_seq, c.covers_seq
        ));
    }
    if c.head != e.prev {
        return Err(format!(
            "the checkpoint signs head {} but the line before it hashes to {}: a line before it was changed",
            c.head.get(..12).unwrap_or(&c.head),
            e.prev.get(..12).unwrap_or(&e.prev)
        ));
    }
    let Some(key) = keys.iter().find(|k| k.id() == c.key_id) else {
        return Err(format!(
            "signed by key id {}, which is not among the public keys given ({}): another key, or a forgery",
            c.key_id,
            keys.iter().map(PublicKey::id).collect::<Vec<_>>().join(", ")
        ));
    };
    key.verify(
        message(c.covers_seq, &c.head, &e.time, c.from_seq, &c.why).as_bytes(),
        &c.signature,
    )
    .map_err(|why| {
        format!("{why} with key {key}: this checkpoint or a line before it was not written by the gateway")
    })?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_with_its_key_only_and_not_after_any_change() {
        let dir = tempfile::tempdir().unwrap();
        let key = CheckpointKey::load_or_create(dir.path()).unwrap();
        let again = CheckpointKey::load_or_create(dir.path()).unwrap();
        assert_eq!(key.public(), again.public(), "the key is kept");
        let printed = std::fs::read_to_string(dir.path().join(PUB_FILE)).unwrap();
        assert_eq!(PublicKey::parse(&printed).unwrap(), *key.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the private key is readable by others: {mode:o}");
        }
        let head = "ab".repeat(32);
        let mut e = key.checkpoint(41, &head, 30, "events", Timestamp::now());
        e.seq = 42;
        e.prev = head.clone();
        let keys = vec![key.public().clone()];
        assert_eq!(check(&e, &keys).unwrap().covers_seq, 41);

        let other = CheckpointKey::from_secret([7; 32]);
        assert!(check(&e, &[other.public().clone()]).unwrap_err().contains("not among"));

        let mut moved = e.clone();
        moved.time += jiff::SignedDuration::from_secs(1);
        assert!(check(&moved, &keys).unwrap_err().contains("does not verify"));

        let mut relinked = e.clone();
        relinked.prev = "cd".repeat(32);
        assert!(
            check(&relinked, &keys)
                .unwrap_err()
                .contains("a line before it was changed")
        );
        // `why` and `from_seq` are signed: a cut log cannot be dressed up as a clean stop.
        let mut rewhy = e.clone();
        rewhy.details["why"] = "shutdown".into();
        assert!(check(&rewhy, &keys).unwrap_err().contains("does not verify"));
        let mut widened = e.clone();
        widened.details["from_seq"] = 1.into();
        assert!(check(&widened, &keys).unwrap_err().contains("does not verify"));
        let mut moved_seq = e.clone();
        moved_seq.seq = 50;
        assert!(check(&moved_seq, &keys).unwrap_err().contains("claims to sign"));

        // A forger copies a real signature onto another head: the signature no longer fits.
        let mut forged = e.clone();
        forged.prev = "cd".repeat(32);
        forged.details["head"] = serde_json::Value::String("cd".repeat(32));
        assert!(check(&forged, &keys).unwrap_err().contains("does not verify"));
    }

    #[test]
    fn a_damaged_key_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "hello\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.path().join(KEY_FILE), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let e = CheckpointKey::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("not a jitgate checkpoint key") && e.contains("move it aside"),
            "{e}"
        );
        // A key others can read is refused: whoever read it could sign.
        let dir = tempfile::tempdir().unwrap();
        CheckpointKey::load_or_create(dir.path()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let key = dir.path().join(KEY_FILE);
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = CheckpointKey::load_or_create(dir.path()).unwrap_err().to_string();
            assert!(e.contains("readable by others") && e.contains("chmod 600"), "{e}");
        }
    }

    #[test]
    fn public_keys_parse_with_or_without_prefix_and_refuse_junk() {
        let k = CheckpointKey::from_secret([1; 32]);
        let s = k.public().to_string();
        assert!(s.starts_with(KEY_PREFIX));
        assert_eq!(PublicKey::parse(&s).unwrap(), *k.public());
        assert_eq!(PublicKey::parse(&s[KEY_PREFIX.len()..]).unwrap(), *k.public());
        assert!(PublicKey::parse("ed25519:AAAA").unwrap_err().contains("32 bytes"));
        assert!(PublicKey::parse("ed25519:!!").is_err());
        assert_eq!(k.public().id().len(), 16);
    }
}

#[cfg(test)]
mod sink_tests {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::sink::CheckpointPolicy;
    use crate::{AuditSink, chain::line_hash, verify_signed};

    fn policy(key: &Arc<CheckpointKey>, every: u64, interval_ms: u64) -> CheckpointPolicy {
        CheckpointPolicy {
            key: key.clone(),
            every,
            interval: Duration::from_millis(interval_ms),
        }
    }

    fn kinds(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Event>(l).unwrap().kind)
            .collect()
    }

    /// Rewrite line `n` (1-based) with `edit` and re-hash every later line, as someone who can
    /// write the file but has no key would.
    fn forge(path: &Path, n: usize, edit: impl Fn(&mut Event)) {
        let text = std::fs::read_to_string(path).unwrap();
        let mut prev: Option<String> = None;
        let mut out = String::new();
        for (i, l) in text.lines().enumerate() {
            let mut e: Event = serde_json::from_str(l).unwrap();
            if i + 1 == n {
                edit(&mut e);
            }
            if let Some(p) = &prev {
                e.prev = p.clone();
                // A thorough forger also fixes the head a checkpoint names.
                if e.kind == "chain.checkpoint" {
                    e.details["head"] = serde_json::Value::String(p.clone());
                }
            }
            let line = serde_json::to_string(&e).unwrap();
            prev = Some(line_hash(line.as_bytes()));
            out.push_str(&line);
            out.push('\n');
        }
        std::fs::write(path, out).unwrap();
    }

    async fn closed(sink: AuditSink) {
        drop(sink);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    #[tokio::test]
    async fn checkpoints_sign_every_n_lines_and_the_end_and_catch_a_rehashed_forgery() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(CheckpointKey::load_or_create(&dir.path().join("keys")).unwrap());
        let path = dir.path().join("audit.jsonl");
        let sink = AuditSink::open(&path, None, None).unwrap();
        sink.set_checkpoints(Some(policy(&key, 3, 60_000)));
        for i in 0..7 {
            sink.record(
                Event::new(Kind::RequestCreated, Timestamp::now())
                    .actor("alice")
                    .request(i),
            )
            .await
            .unwrap();
        }
        closed(sink).await;
        let k = kinds(&path);
        let cp = "chain.checkpoint";
        assert_eq!(
            k.iter().map(|s| s == cp).collect::<Vec<_>>(),
            [false, false, false, true, false, false, false, true, false, true],
            "{k:?}"
        );
        let keys = vec![key.public().clone()];
        let files = vec![path.clone()];
        let r = verify_signed(&files, &keys).unwrap();
        assert_eq!((r.checkpoints, r.unsigned_tail, r.lines), (3, 0, 10));
        assert_eq!(r.last_signed.as_ref().map(|s| s.covers_seq), Some(9));
        assert!(r.from_genesis);

        // Another key: refused.
        let other = CheckpointKey::from_secret([9; 32]);
        let e = verify_signed(&files, &[other.public().clone()]).unwrap_err().1;
        assert_eq!(e.line, 4);
        assert!(e.why.contains("not among"), "{}", e.why);

        // A copy cut after the first checkpoint plus one line: verifies, says where the
        // signature ends and that one line after it is unsigned.
        let cut = dir.path().join("cut.jsonl");
        let text = std::fs::read_to_string(&path).unwrap();
        let five: String = text.lines().take(5).map(|l| format!("{l}\n")).collect();
        std::fs::write(&cut, five).unwrap();
        let r = verify_signed(std::slice::from_ref(&cut), &keys).unwrap();
        assert_eq!(r.last_signed.as_ref().map(|s| s.covers_seq), Some(3));
        assert_eq!(r.unsigned_tail, 1);

        // Rewriting a line and every hash after it keeps the chain intact, but the next
        // checkpoint's signature no longer fits.
        let forged = dir.path().join("forged.jsonl");
        std::fs::copy(&path, &forged).unwrap();
        forge(&forged, 2, |e| e.actor = Some("mallory".into()));
        assert!(crate::verify_file(&forged).is_ok(), "the forger re-hashed the chain");
        let e = verify_signed(std::slice::from_ref(&forged), &keys).unwrap_err().1;
        assert_eq!(e.line, 4, "{}", e.why);
        assert!(e.why.contains("does not verify"), "{}", e.why);

        // A segment out of the middle verifies alone from its first line's link.
        let seg = dir.path().join("segment.jsonl");
        let mid: String = text.lines().skip(4).take(4).map(|l| format!("{l}\n")).collect();
        std::fs::write(&seg, mid).unwrap();
        let r = verify_signed(&[seg], &keys).unwrap();
        assert!(!r.from_genesis);
        assert_eq!((r.first_seq, r.last_signed.map(|s| s.covers_seq)), (5, Some(7)));
    }

    /// A run never signs over a tail an earlier run left unsigned: someone could have edited
    /// it (and re-hashed the chain) while the gateway was down. `verify` shows it as a gap.
    #[tokio::test]
    async fn a_restart_does_not_sign_over_a_tail_left_unsigned_and_verify_shows_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(CheckpointKey::load_or_create(&dir.path().join("keys")).unwrap());
        let keys = vec![key.public().clone()];
        let path = dir.path().join("audit.jsonl");
        // Run 1 signs seq 1..3, then "crashes" with seq 5..6 unsigned (no checkpoint at exit).
        let sink = AuditSink::open(&path, None, None).unwrap();
        sink.set_checkpoints(Some(policy(&key, 3, 60_000)));
        for i in 0..3 {
            sink.record(
                Event::new(Kind::RequestCreated, Timestamp::now())
                    .actor("alice")
                    .request(i),
            )
            .await
            .unwrap();
        }
        sink.set_checkpoints(None);
        for i in 3..5 {
            sink.record(
                Event::new(Kind::RequestApproved, Timestamp::now())
                    .actor("mallory")
                    .request(i),
            )
            .await
            .unwrap();
        }
        closed(sink).await;
        // While it is down, someone rewrites the unsigned tail and re-hashes it.
        forge(&path, 6, |e| e.actor = Some("bob".into()));
        assert!(crate::verify_file(&path).is_ok());
        // Run 2 writes and signs its own lines only.
        let sink = AuditSink::open(&path, None, None).unwrap();
        sink.set_checkpoints(Some(policy(&key, 3, 60_000)));
        for i in 5..8 {
            sink.record(Event::new(Kind::GatewayStarted, Timestamp::now()).request(i))
                .await
                .unwrap();
        }
        closed(sink).await;
        let r = verify_signed(std::slice::from_ref(&path), &keys).unwrap();
        assert_eq!(r.gaps, vec![[5, 6]], "{r:?}");
        assert_eq!(r.unsigned_tail, 0);
        assert_eq!(r.unsigned_lines(), 2);
    }

    #[tokio::test]
    async fn an_idle_log_is_signed_after_the_interval_and_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(CheckpointKey::load_or_create(&dir.path().join("keys")).unwrap());
        let path = dir.path().join("audit.jsonl");
        let sink = AuditSink::open(&path, None, None).unwrap();
        sink.set_checkpoints(Some(policy(&key, 1000, 200)));
        sink.record(Event::new(Kind::GatewayStarted, Timestamp::now()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(kinds(&path).last().map(String::as_str), Some("chain.checkpoint"));
        let d: Checkpoint = serde_json::from_value(
            serde_json::from_str::<Event>(std::fs::read_to_string(&path).unwrap().lines().last().unwrap())
                .unwrap()
                .details,
        )
        .unwrap();
        assert_eq!((d.why.as_str(), d.covers_seq), ("interval", 1));
        // Nothing new: no new checkpoint, neither by the timer nor on demand.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(sink.checkpoint("shutdown").await.unwrap(), 2);
        assert_eq!(kinds(&path).len(), 2);
        sink.record(Event::new(Kind::GatewayStopped, Timestamp::now()))
            .await
            .unwrap();
        assert_eq!(sink.checkpoint("shutdown").await.unwrap(), 4);
        let r = verify_signed(std::slice::from_ref(&path), &[key.public().clone()]).unwrap();
        assert_eq!((r.checkpoints, r.unsigned_tail), (2, 0));
    }

    #[tokio::test]
    async fn every_rotated_file_ends_signed_and_verifies_alone() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(CheckpointKey::load_or_create(&dir.path().join("keys")).unwrap());
        let path = dir.path().join("audit.jsonl");
        let sink = AuditSink::open_with(&path, None, None, Some(1500)).unwrap();
        sink.set_checkpoints(Some(policy(&key, 1000, 60_000)));
        for i in 0..30 {
            sink.record(Event::new(Kind::RequestCreated, Timestamp::now()).reason(Some(format!("rotation {i}"))))
                .await
                .unwrap();
        }
        closed(sink).await;
        let rotated = crate::rotated_files(&path);
        assert!(rotated.len() >= 2, "{rotated:?}");
        let keys = vec![key.public().clone()];
        for f in &rotated {
            let r = verify_signed(std::slice::from_ref(f), &keys).unwrap();
            assert_eq!(r.unsigned_tail, 0, "{} ends unsigned", f.display());
        }
        let mut all: Vec<PathBuf> = rotated.clone();
        all.push(path.clone());
        all.reverse(); // any order
        let r = verify_signed(&all, &keys).unwrap();
        assert!(r.from_genesis);
        assert_eq!(r.unsigned_tail, 0);
        // A file left out of the middle breaks the link.
        if rotated.len() >= 2 {
            let without_second: Vec<PathBuf> = all.iter().filter(|f| **f != rotated[1]).cloned().collect();
            let e = verify_signed(&without_second, &keys).unwrap_err();
            assert!(e.1.why.contains("chain.continued points at"), "{}", e.1.why);
        }
    }
}
