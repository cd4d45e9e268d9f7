//! The hash chain: each line's `prev` is the SHA-256 of the previous line's bytes, so editing,
//! inserting or deleting any line breaks the link of the line after it.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::event::{Event, GENESIS};

/// Hex SHA-256 of one line (without its newline).
pub fn line_hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// Result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Lines checked.
    pub lines: u64,
    /// Hash of the last line (what the next `prev` must be).
    pub head: String,
}

/// Where and why the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at line {line}: {why}")]
pub struct Broken {
    /// 1-based line number.
    pub line: u64,
    /// What is wrong.
    pub why: String,
}

/// Walk the chain of `path`. The first line must start from [`GENESIS`] unless the file starts
/// with a `chain.continued` event naming the previous file's head.
pub fn verify_file(path: &Path) -> Result<Verified, Broken> {
    let f = std::fs::File::open(path).map_err(|e| Broken {
        line: 0,
        why: format!("cannot open {}: {e}", path.display()),
    })?;
    verify_reader(f)
}

/// Like [`verify_file`], for any reader.
pub fn verify_reader(r: impl Read) -> Result<Verified, Broken> {
    let mut reader = BufReader::new(r);
    let mut prev = GENESIS.to_string();
    let mut buf = Vec::new();
    let mut n: u64 = 0;
    let mut last_seq = 0u64;
    loop {
        buf.clear();
        let read = reader.read_until(b'\n', &mut buf).map_err(|e| Broken {
            line: n + 1,
            why: e.to_string(),
        })?;
        if read == 0 {
            break;
        }
        n += 1;
        if buf.last() != Some(&b'\n') {
            return Err(Broken {
                line: n,
                why: "the last line is incomplete (no newline): the writer was interrupted or the file was cut".into(),
            });
        }
        buf.pop();
        let e: Event = serde_json::from_slice(&buf).map_err(|err| Broken {
            line: n,
            why: format!("not a valid event: {err}"),
        })?;
        if n == 1 && e.kind == "chain.continued" {
            prev.clone_from(&e.prev);
        }
        if e.prev != prev {
            return Err(Broken {
                line: n,
                why: format!(
                    "prev is {} but the previous line hashes to {prev}: a line before it was changed, removed or inserted",
                    short(&e.prev)
                ),
            });
        }
        if n > 1 && e.seq != last_seq + 1 {
            return Err(Broken {
                line: n,
                why: format!("seq jumps from {last_seq} to {}", e.seq),
            });
        }
        last_seq = e.seq;
        prev = line_hash(&buf);
    }
    Ok(Verified { lines: n, head: prev })
}

fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}
