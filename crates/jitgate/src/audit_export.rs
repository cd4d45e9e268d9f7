//! `jitgate audit export`: the audit lines exactly as written (rotated files oldest first, then
//! the live file), from a seq or the newest checkpoint, and with `--follow` as they are written,
//! across rotations. Reads the files directly (run it where the gateway's data_dir is); the
//! lines are byte-for-byte the log's, so a receiver's copy verifies with `jitgate audit verify`.

use std::io::{BufRead, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Where the export starts.
pub(crate) enum From {
    /// This seq, inclusive (0: the beginning).
    Seq(u64),
    /// The newest `chain.checkpoint` line.
    Checkpoint,
}

/// How often `--follow` looks for new lines.
const POLL: Duration = Duration::from_millis(100);

#[derive(serde::Deserialize)]
struct SeqOnly {
    seq: u64,
}

/// The `seq` of a log line (`None` for a line that is not an event: it is still printed when
/// it follows a printed line, so nothing written is hidden).
fn seq_of(line: &[u8]) -> Option<u64> {
    serde_json::from_slice::<SeqOnly>(line).ok().map(|s| s.seq)
}

/// The last seq a rotated file holds, from its name (`STEM-<seq>.jsonl`).
fn last_seq_in_name(p: &Path) -> Option<u64> {
    p.file_stem()?.to_str()?.rsplit('-').next()?.parse().ok()
}

/// The seq of the newest checkpoint line, searching the newest file first.
fn newest_checkpoint(live: &Path) -> Result<Option<u64>> {
    let mut files = jitgate_audit::rotated_files(live);
    files.push(live.to_path_buf());
    for f in files.iter().rev() {
        let r = std::io::BufReader::new(std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?);
        let mut found = None;
        for line in r.split(b'\n') {
            let line = line.with_context(|| format!("reading {}", f.display()))?;
            const MARK: &[u8] = b"\"kind\":\"chain.checkpoint\"";
            if line.windows(MARK.len()).any(|w| w == MARK) {
                found = seq_of(&line).or(found);
            }
        }
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// Writes complete lines at or after `start`; `Ok(false)` once the reader went away.
struct Printer<W: Write> {
    out: W,
    start: u64,
    /// Once a line at or after `start` was printed, every later line is.
    printing: bool,
}

impl<W: Write> Printer<W> {
    fn line(&mut self, line: &[u8]) -> Result<bool> {
        if !self.printing {
            match seq_of(line) {
                Some(s) if s >= self.start => self.printing = true,
                _ => return Ok(true),
            }
        }
        self.write(|o| o.write_all(line).and_then(|()| o.write_all(b"\n")))
    }

    fn flush(&mut self) -> Result<bool> {
        self.write(Write::flush)
    }

    fn write(&mut self, f: impl FnOnce(&mut W) -> std::io::Result<()>) -> Result<bool> {
        match f(&mut self.out) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e).context("writing the export"),
        }
    }
}

/// Reads what `f` holds beyond what was read (complete lines only; a partial last line waits in
/// `pending` for its end) and prints it. `Ok(None)` once the reader went away, else whether
/// anything was read.
fn drain<W: Write>(f: &mut std::fs::File, pending: &mut Vec<u8>, p: &mut Printer<W>) -> Result<Option<bool>> {
    let mut buf = vec![0u8; 1 << 16];
    let mut any = false;
    loop {
        let n = f.read(&mut buf).context("reading the audit file")?;
        if n == 0 {
            return Ok(Some(any));
        }
        any = true;
        pending.extend_from_slice(&buf[..n]);
        let mut done = 0;
        while let Some(i) = pending[done..].iter().position(|b| *b == b'\n') {
            if !p.line(&pending[done..done + i])? {
                return Ok(None);
            }
            done += i + 1;
        }
        pending.drain(..done);
    }
}

pub(crate) fn run(live: &Path, from: From, follow: bool) -> Result<ExitCode> {
    let start = match from {
        From::Seq(s) => s,
        From::Checkpoint => match newest_checkpoint(live)? {
            Some(s) => s,
            None => bail!(
                "{} holds no signed checkpoint yet (the gateway signs one every checkpoint_every lines, checkpoint_interval after the first unsigned line and at shutdown); use --from-seq",
                live.display()
            ),
        },
    };
    let stdout = std::io::stdout();
    let mut p = Printer {
        out: std::io::BufWriter::with_capacity(1 << 16, stdout.lock()),
        start,
        printing: false,
    };
    let mut pending = Vec::new();
    for f in jitgate_audit::rotated_files(live) {
        if last_seq_in_name(&f).is_some_and(|last| last < start) {
            continue;
        }
        let mut h = std::fs::File::open(&f).with_context(|| format!("opening {}", f.display()))?;
        pending.clear();
        if drain(&mut h, &mut pending, &mut p)?.is_none() {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let open = |path: &Path| -> Result<(std::fs::File, u64)> {
        let h = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let ino = h.metadata().map(|m| m.ino()).unwrap_or(0);
        Ok((h, ino))
    };
    let (mut h, mut ino) = open(live)?;
    pending.clear();
    loop {
        let Some(read) = drain(&mut h, &mut pending, &mut p)? else {
            return Ok(ExitCode::SUCCESS);
        };
        if !p.flush()? {
            return Ok(ExitCode::SUCCESS);
        }
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        if read {
            continue;
        }
        // Rotated: the file we hold was renamed; read what was written to it before the
        // rename, then go on with the new live file from its start.
        match std::fs::metadata(live).map(|m| m.ino()) {
            Ok(now) if now != ino => {
                if drain(&mut h, &mut pending, &mut p)?.is_none() {
                    return Ok(ExitCode::SUCCESS);
                }
                let (nh, ni) = open(live)?;
                (h, ino) = (nh, ni);
                pending.clear();
            }
            _ => std::thread::sleep(POLL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_print_from_the_start_seq_and_whole_lines_only() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, b"{\"seq\":1}\n{\"seq\":2}\n{\"seq\":3}\n{\"seq\":4").unwrap_or_else(|e| panic!("{e}"));
        let mut p = Printer {
            out: Vec::new(),
            start: 2,
            printing: false,
        };
        let mut h = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut pending = Vec::new();
        assert_eq!(drain(&mut h, &mut pending, &mut p).ok(), Some(Some(true)));
        assert_eq!(p.out, b"{\"seq\":2}\n{\"seq\":3}\n");
        assert_eq!(pending, b"{\"seq\":4");
    }
}
