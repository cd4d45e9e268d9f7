//! The hash chain: each line's `prev` is the SHA-256 of the previous line's bytes, so editing,
//! inserting or deleting any line breaks the link of the line after it.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

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
        let v = verify_reader_from(open(f)?, head.as_deref()).map_err(|b| (f.clone(), b))?;
        lines += v.lines;
        head = Some(v.head);
    }
    Ok(VerifiedChain {
        files: files.len(),
        lines,
        head: head.unwrap_or_else(|| GENESIS.to_string()),
    })
}

/// Open one file of a chain walk; the error names it.
fn open(f: &Path) -> Result<std::fs::File, (PathBuf, Broken)> {
    std::fs::File::open(f).map_err(|e| {
        (
            f.to_path_buf(),
            Broken {
                line: 0,
                why: e.to_string(),
            },
        )
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
    let start = match expected_prev {
        Some(p) => Start::Link(p),
        None => Start::Genesis,
    };
    walk(r, start, &mut |_, _| Ok(())).map(|w| Verified {
        lines: w.lines,
        head: w.head,
    })
}

/// Longest line a walk reads (events are bounded by `[audit] max_text_len`; this only stops a
/// hostile file from exhausting the verifier's memory).
const MAX_LINE: u64 = 64 << 20;

/// Where a walked file's first line must link.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// At the genesis, or at a `chain.continued` line (a file after a rotation whose
    /// predecessor is not given).
    Genesis,
    /// At a `chain.continued` line pointing at this head (the previous file's).
    Link(&'a str),
    /// Anywhere: a segment cut out of a log. Its first line's `prev` is taken as given (only
    /// signatures then say the lines are the gateway's).
    Any,
}

/// What a walk saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walked {
    /// Lines read.
    pub lines: u64,
    /// `seq` of the first and last line (0 when empty).
    pub first_seq: u64,
    /// See `first_seq`.
    pub last_seq: u64,
    /// `prev` of the first line.
    pub first_prev: String,
    /// Hash of the last line.
    pub head: String,
}

/// Walk the chain of `r`, calling `each(line_number, event)` for every line after its links
/// are checked; an `Err` from it breaks the walk at that line.
pub fn walk(
    r: impl Read,
    start: Start<'_>,
    each: &mut dyn FnMut(u64, &Event) -> Result<(), String>,
) -> Result<Walked, Broken> {
    let mut reader = BufReader::new(r);
    let mut prev = GENESIS.to_string();
    let mut buf = Vec::new();
    let mut n: u64 = 0;
    let mut last_seq = 0u64;
    let mut first_seq = 0u64;
    let mut first_prev = String::new();
    loop {
        buf.clear();
        let read = (&mut reader)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| Broken {
                line: n + 1,
                why: e.to_string(),
            })?;
        if read == 0 {
            break;
        }
        n += 1;
        if u64::try_from(buf.len()).unwrap_or(u64::MAX) > MAX_LINE {
            return Err(Broken {
                line: n,
                why: format!("the line is longer than {} MiB: not an audit event", MAX_LINE >> 20),
            });
        }
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
            first_seq = e.seq;
            first_prev.clone_from(&e.prev);
            match (start, e.kind == "chain.continued") {
                (Start::Link(exp), true) if e.prev != exp => {
                    return Err(Broken {
                        line: 1,
                        why: format!(
                            "chain.continued points at {} but the previous file ends with {}: a file was changed, removed or inserted",
                            short(&e.prev),
                            short(exp)
                        ),
                    });
                }
                (Start::Link(_), false) => {
                    return Err(Broken {
                        line: 1,
                        why: "a rotated file's successor must start with chain.continued".into(),
                    });
                }
                (_, true) => prev.clone_from(&e.prev),
                (Start::Any, false) if e.seq != 1 => prev.clone_from(&e.prev),
                (_, false) => {}
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
        each(n, &e).map_err(|why| Broken { line: n, why })?;
        last_seq = e.seq;
        prev = line_hash(&buf);
    }
    Ok(Walked {
        lines: n,
        first_seq,
        last_seq,
        first_prev,
        head: prev,
    })
}

/// The last signed position of a verified log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SignedAt {
    /// The last line the checkpoint signs.
    pub covers_seq: u64,
    /// When it was signed.
    pub time: jiff::Timestamp,
    /// The file holding the checkpoint line and its line number there.
    pub file: PathBuf,
    /// See `file`.
    pub line: u64,
    /// Which key signed it.
    pub key_id: String,
}

/// The result of [`verify_signed`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// The files, in chain order.
    pub files: Vec<PathBuf>,
    /// Lines in all of them.
    pub lines: u64,
    /// `seq` of the first and last line.
    pub first_seq: u64,
    /// See `first_seq`.
    pub last_seq: u64,
    /// Whether the first line is the log's first (else: earlier lines are not in these files).
    pub from_genesis: bool,
    /// Hash of the last line.
    pub head: String,
    /// Whether signatures were checked (public keys were given).
    pub signatures_checked: bool,
    /// `chain.checkpoint` lines seen (verified when `signatures_checked`).
    pub checkpoints: u64,
    /// The last checkpoint.
    pub last_signed: Option<SignedAt>,
    /// Lines after the last checkpoint (all lines when there is none): not signed.
    pub unsigned_tail: u64,
    /// Ranges of lines (first, last seq) before a checkpoint that no checkpoint vouches for:
    /// a tail an earlier run left unsigned (an unclean stop), which could have been edited
    /// while the gateway was down.
    pub gaps: Vec<[u64; 2]>,
}

impl Report {
    /// Lines not covered by any signature: the gaps and the unsigned tail.
    pub fn unsigned_lines(&self) -> u64 {
        self.gaps.iter().map(|[a, b]| b - a + 1).sum::<u64>() + self.unsigned_tail
    }
}

/// Verify `files` (in any order: they are put in chain order by their first `seq`) as one
/// chain, and with `keys` every `chain.checkpoint` signature in it. Needs nothing but the
/// files: no gateway, no configuration. The first file may start anywhere (a segment).
pub fn verify_signed(files: &[PathBuf], keys: &[crate::checkpoint::PublicKey]) -> Result<Report, (PathBuf, Broken)> {
    let mut ordered = Vec::with_capacity(files.len());
    for f in files {
        let first = first_seq(f).map_err(|why| (f.clone(), Broken { line: 1, why }))?;
        ordered.push((first, f.clone()));
    }
    ordered.sort();
    let mut report = Report {
        files: ordered.iter().map(|(_, f)| f.clone()).collect(),
        lines: 0,
        first_seq: 0,
        last_seq: 0,
        from_genesis: false,
        head: GENESIS.to_string(),
        signatures_checked: !keys.is_empty(),
        checkpoints: 0,
        last_signed: None,
        unsigned_tail: 0,
        gaps: Vec::new(),
    };
    let mut head: Option<String> = None;
    // The first line the next checkpoint must vouch for to leave no gap.
    let mut vouch_needed: Option<u64> = None;
    for (i, (_, f)) in ordered.iter().enumerate() {
        let file = open(f)?;
        let prev_last = report.last_seq;
        let start = match &head {
            Some(h) => Start::Link(h),
            None => Start::Any,
        };
        let mut each = |line: u64, e: &Event| {
            if i > 0 && line == 1 && e.seq != prev_last + 1 {
                return Err(format!(
                    "this file starts at seq {} but the previous file ends at seq {prev_last}",
                    e.seq
                ));
            }
            let needed = *vouch_needed.get_or_insert(e.seq);
            if e.kind != "chain.checkpoint" {
                report.unsigned_tail += 1;
                return Ok(());
            }
            report.checkpoints += 1;
            let (key_id, from) = if keys.is_empty() {
                let s = |k: &str| e.details.get(k);
                (
                    s("key_id").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
                    s("from_seq").and_then(serde_json::Value::as_u64).unwrap_or(needed),
                )
            } else {
                let c = crate::checkpoint::check(e, keys)?;
                (c.key_id, c.from_seq)
            };
            if from > needed {
                report.gaps.push([needed, from - 1]);
            }
            vouch_needed = Some(e.seq + 1);
            report.unsigned_tail = 0;
            report.last_signed = Some(SignedAt {
                covers_seq: e.seq.saturating_sub(1),
                time: e.time,
                file: f.clone(),
                line,
                key_id,
            });
            Ok(())
        };
        let w = walk(file, start, &mut each).map_err(|b| (f.clone(), b))?;
        if i == 0 {
            report.first_seq = w.first_seq;
            report.from_genesis = w.first_seq == 1 && w.first_prev == GENESIS;
        }
        report.lines += w.lines;
        if w.lines > 0 {
            report.last_seq = w.last_seq;
        }
        head = Some(w.head);
    }
    report.head = head.unwrap_or_else(|| GENESIS.to_string());
    Ok(report)
}

/// The `seq` of a file's first line (0 for an empty file).
fn first_seq(path: &Path) -> Result<u64, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut line = Vec::new();
    BufReader::new(f)
        .take(16 << 20)
        .read_until(b'\n', &mut line)
        .map_err(|e| e.to_string())?;
    if line.is_empty() {
        return Ok(0);
    }
    #[derive(serde::Deserialize)]
    struct SeqOnly {
        seq: u64,
    }
    serde_json::from_slice::<SeqOnly>(line.strip_suffix(b"\n").unwrap_or(&line))
        .map(|s| s.seq)
        .map_err(|e| format!("the first line is not an audit event: {e}"))
}

fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}
