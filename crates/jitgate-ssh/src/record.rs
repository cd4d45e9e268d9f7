//! Session recording (asciicast v2) and best-effort extraction of typed command lines.
//!
//! asciicast v2 (<https://docs.asciinema.org/manual/asciicast/v2/>): a JSON header line, then one
//! JSON array per event: `[seconds, "o", text]` output, `[seconds, "i", text]` input,
//! `[seconds, "r", "COLSxROWS"]` resize. Text must be valid UTF-8: a multi-byte character split
//! across two SSH packets is carried over to the next event, other invalid bytes are replaced.
//!
//! Writes go to a buffered file (page cache; flushed every 64 KiB and at close) so recording
//! never waits on the disk per keystroke.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An open recording.
pub struct Recorder {
    out: BufWriter<File>,
    start: Instant,
    carry_o: Vec<u8>,
    carry_i: Vec<u8>,
    path: PathBuf,
    failed: bool,
}

/// Header fields.
pub struct Header<'a> {
    /// Terminal width in columns.
    pub width: u32,
    /// Terminal height in rows.
    pub height: u32,
    /// `TERM`.
    pub term: &'a str,
    /// Title: identity → login@resource.
    pub title: &'a str,
}

impl Recorder {
    /// Create `path` (its folder too) and write the header.
    pub fn create(path: &Path, h: &Header<'_>) -> std::io::Result<Self> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut out = BufWriter::with_capacity(64 * 1024, opts.open(path)?);
        let header = serde_json::json!({
            "version": 2,
            "width": h.width.max(1),
            "height": h.height.max(1),
            "timestamp": jiff::Timestamp::now().as_second(),
            "env": {"TERM": h.term},
            "title": h.title,
        });
        writeln!(out, "{header}")?;
        Ok(Self {
            out,
            start: Instant::now(),
            carry_o: Vec::new(),
            carry_i: Vec::new(),
            path: path.to_path_buf(),
            failed: false,
        })
    }

    /// Where it is written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Terminal output.
    pub fn output(&mut self, data: &[u8]) {
        let text = take_utf8(&mut self.carry_o, data);
        self.event("o", &text);
    }

    /// Keyboard input.
    pub fn input(&mut self, data: &[u8]) {
        let text = take_utf8(&mut self.carry_i, data);
        self.event("i", &text);
    }

    /// Terminal resized.
    pub fn resize(&mut self, cols: u32, rows: u32) {
        self.event("r", &format!("{cols}x{rows}"));
    }

    fn event(&mut self, kind: &str, text: &str) {
        if text.is_empty() || self.failed {
            return;
        }
        let t = self.start.elapsed().as_secs_f64();
        let line = serde_json::json!([(t * 1e6).round() / 1e6, kind, text]);
        if let Err(e) = writeln!(self.out, "{line}") {
            tracing::error!(path = %self.path.display(), error = %e, "writing the session recording failed");
            self.failed = true;
        }
    }

    /// Flush and close.
    pub fn finish(mut self) {
        if let Err(e) = self.out.flush().and_then(|()| self.out.get_ref().sync_data()) {
            tracing::error!(path = %self.path.display(), error = %e, "closing the session recording failed");
        }
    }
}

/// Append `data` to `carry` and return the longest valid UTF-8 prefix (invalid bytes replaced);
/// an incomplete character at the end stays in `carry`.
fn take_utf8(carry: &mut Vec<u8>, data: &[u8]) -> String {
    carry.extend_from_slice(data);
    let mut out = String::new();
    let mut rest: &[u8] = carry;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (ok, bad) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(ok).unwrap_or_default());
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{fffd}');
                        rest = bad.get(n..).unwrap_or_default();
                    }
                    None => {
                        rest = bad;
                        break;
                    }
                }
            }
        }
    }
    let keep = rest.to_vec();
    *carry = keep;
    out
}

/// Reassembles what a user types in an interactive shell into command lines.
///
/// Best effort by design: the gateway sees keystrokes, not what the shell makes of them. It
/// handles printable text, backspace, Ctrl-U (kill line), Ctrl-C (abandon line) and drops escape
/// sequences (arrow keys, history recall); tab completion, history recall and editing in the
/// middle of a line are not reconstructed, and text typed into full-screen programs (vi, less)
/// appears as lines too. The asciicast recording is the authoritative record.
#[derive(Debug, Default)]
pub struct LineAssembler {
    line: String,
    esc: EscState,
    max: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum EscState {
    #[default]
    None,
    Esc,
    Csi,
    Ss3,
}

impl LineAssembler {
    /// Lines longer than `max` chars are cut.
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(16),
            ..Self::default()
        }
    }

    /// Feed keystrokes; returns completed, non-empty lines.
    pub fn feed(&mut self, data: &[u8]) -> Vec<String> {
        let mut done = Vec::new();
        for ch in String::from_utf8_lossy(data).chars() {
            match self.esc {
                EscState::Esc => {
                    self.esc = match ch {
                        '[' => EscState::Csi,
                        'O' => EscState::Ss3,
                        _ => EscState::None,
                    };
                    continue;
                }
                EscState::Csi => {
                    if ('@'..='~').contains(&ch) {
                        self.esc = EscState::None;
                    }
                    continue;
                }
                EscState::Ss3 => {
                    self.esc = EscState::None;
                    continue;
                }
                EscState::None => {}
            }
            match ch {
                '\u{1b}' => self.esc = EscState::Esc,
                '\r' | '\n' => {
                    let l = std::mem::take(&mut self.line);
                    let t = l.trim();
                    if !t.is_empty() {
                        done.push(t.to_string());
                    }
                }
                '\u{7f}' | '\u{8}' => {
                    self.line.pop();
                }
                '\u{15}' | '\u{3}' => self.line.clear(),
                c if c.is_control() => {}
                c => {
                    if self.line.chars().count() < self.max {
                        self.line.push(c);
                    }
                }
            }
        }
        done
    }
}

/// Why a recording cannot be played, with the line (from 1) where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CastError {
    /// The first line is not an asciicast v2 header.
    #[error("line 1: not an asciicast v2 file ({0})")]
    Header(String),
    /// An event line is not `[seconds, "kind", "text"]`.
    #[error("line {0}: invalid event")]
    Event(usize),
}

/// The output of a recording to replay: wait this long, then write this text. `speed` divides
/// the waits and `idle_limit` caps each one (seconds); both must be positive.
pub fn cast_output(text: &str, speed: f64, idle_limit: f64) -> Result<Vec<(Duration, String)>, CastError> {
    let mut lines = text.lines();
    let header: serde_json::Value = lines
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| CastError::Header("no JSON header".into()))?;
    if header["version"] != 2 {
        return Err(CastError::Header(format!("version {}", header["version"])));
    }
    let mut out = Vec::new();
    let mut last = 0.0f64;
    for (i, line) in lines.enumerate() {
        let ev: serde_json::Value = serde_json::from_str(line).map_err(|_| CastError::Event(i + 2))?;
        let (Some(t), Some(kind), Some(data)) = (ev[0].as_f64(), ev[1].as_str(), ev[2].as_str()) else {
            return Err(CastError::Event(i + 2));
        };
        if kind != "o" {
            continue;
        }
        let wait = ((t - last).max(0.0)).min(idle_limit) / speed;
        last = t;
        // A hostile file's times can be anything: a wait that is not a finite, representable
        // number of seconds becomes no wait at all.
        let wait = Duration::try_from_secs_f64(wait).unwrap_or(Duration::ZERO);
        out.push((wait, data.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_recordings_play_or_name_their_line() {
        // Times of any size (1e300 s overflowed `Duration::from_secs_f64`, a panic), negative
        // times, and an unlimited idle limit: finite waits, never a panic.
        let text = "{\"version\": 2}\n[1e300, \"o\", \"a\"]\n[-5, \"o\", \"b\"]\n[2.5, \"i\", \"x\"]\n";
        let ev = cast_output(text, 1e-3, f64::INFINITY).unwrap();
        assert_eq!(ev.iter().map(|(_, d)| d.as_str()).collect::<String>(), "ab");
        assert!(ev.iter().all(|(w, _)| w.as_secs_f64().is_finite()));
        assert_eq!(
            cast_output("{\"version\": 2}\n[1, \"o\"]\n", 1.0, 3.0),
            Err(CastError::Event(2))
        );
        assert!(matches!(
            cast_output("{\"version\": 1}\n", 1.0, 3.0),
            Err(CastError::Header(_))
        ));
    }

    #[test]
    fn utf8_split_across_packets_is_carried() {
        let mut c = Vec::new();
        let e = "é".as_bytes();
        assert_eq!(take_utf8(&mut c, &[b'a', e[0]]), "a");
        assert_eq!(take_utf8(&mut c, &[e[1], b'b']), "éb");
        assert_eq!(take_utf8(&mut c, &[0xff, b'c']), "\u{fffd}c");
        assert!(c.is_empty());
    }

    #[test]
    fn recording_is_valid_asciicast() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r/s-1.cast");
        let mut r = Recorder::create(
            &p,
            &Header {
                width: 80,
                height: 24,
                term: "xterm",
                title: "t",
            },
        )
        .unwrap();
        r.output(b"$ ");
        r.input(b"ls\r");
        r.resize(100, 30);
        r.finish();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["version"], 2);
        assert_eq!(lines[0]["width"], 80);
        assert_eq!(lines[1][1], "o");
        assert_eq!(lines[2][2], "ls\r");
        assert_eq!(lines[3][2], "100x30");
    }

    #[test]
    fn lines_are_assembled_from_keystrokes() {
        let mut a = LineAssembler::new(100);
        assert!(a.feed(b"ech").is_empty());
        assert_eq!(a.feed(b"o hi\r"), vec!["echo hi"]);
        assert_eq!(a.feed(b"lx\x7fs -l\r"), vec!["ls -l"]);
        assert_eq!(a.feed(b"rm -rf /\x15whoami\r"), vec!["whoami"]);
        assert_eq!(a.feed(b"abc\x03\r"), Vec::<String>::new());
        assert_eq!(a.feed(b"\x1b[Adate\x1bOA\r"), vec!["date"]);
        assert_eq!(a.feed(b"a\rb\r"), vec!["a", "b"]);
    }
}
