//! The hash chain: each line's `prev` is the SHA-256 of the previous line's bytes, so editing,
//! inserting or deleting any line breaks the link of the line after it.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::event::{Event, GENESIS};

/// Hex SHA-256 of one line (without its newline).
pub fn line_hash(line: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(line);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
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

/// Rotated files of the log at `path` (`STEM-<seq>.jsonl` beside it), oldest first.
pub fn rotated_files(path: &Path) -> Vec<std::path::PathBuf> {
    let (Some(dir), Some(stem)) = (path.parent(), path.file_stem()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}-", stem.to_string_lossy());
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().map(|n| n.to_string_lossy()).is_some_and(|n| {
                        n.starts_with(&prefix)
                            && n.ends_with(".jsonl")
                            && n[prefix.len()..n.len() - 6].chars().all(|c| c.is_ascii_digit())
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Verification of a rotated log: every file, and the links between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    /// Files checked, oldest first.
    pub files: usize,
    /// Lines checked in all files.
    pub lines: u64,
    /// Hash of the last line.
    pub head: String,
}

/// Verify the log at `path` together with its rotated predecessors. Errors name the file.
pub fn verify_chain(path: &Path) -> Result<VerifiedChain, (std::path::PathBuf, Broken)> {
    let mut files = rotated_files(path);
    files.push(path.to_path_buf());
    let mut lines = 0;
    let mut head: Option<String> = None;
    for f in &files {
        let file = std::fs::File::open(f).map_err(|e| {
            (
                f.clone(),
                Broken {
                    line: 0,
                    why: e.to_string(),
                },
            )
        })?;
        let v = verify_reader_from(file, head.as_deref()).map_err(|b| (f.clone(), b))?;
        lines += v.lines;
        head = Some(v.head);
    }
    Ok(VerifiedChain {
        files: files.len(),
        lines,
        head: head.unwrap_or_else(|| GENESIS.to_string()),
    })
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
    verify_reader_from(r, None)
}

/// Verify a reader whose first line must link to `expected_prev` (the previous file's head):
/// with `Some`, the first line must be a `chain.continued` pointing at it.
pub fn verify_reader_from(r: impl Read, expected_prev: Option<&str>) -> Result<Verified, Broken> {
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
        if n == 1 {
            match (expected_prev, e.kind == "chain.continued") {
                (Some(exp), true) if e.prev != exp => {
                    return Err(Broken {
                        line: 1,
                        why: format!(
                            "chain.continued points at {} but the previous file ends with {}: a file was changed, removed or inserted",
                            short(&e.prev),
                            short(exp)
                        ),
                    });
                }
                (Some(_), false) => {
                    return Err(Broken {
                        line: 1,
                        why: "a rotated file's successor must start with chain.continued".into(),
                    });
                }
                (_, true) => prev.clone_from(&e.prev),
                (None, false) => {}
            }
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
