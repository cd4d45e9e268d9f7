//! Diagnostics with file, line and column, and what to write instead.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The file is refused.
    Error,
    /// The file is accepted, but something is probably wrong.
    Warning,
}

/// One finding in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diag {
    /// Error or warning.
    pub severity: Severity,
    /// The file.
    pub file: PathBuf,
    /// 1-based line (0 when the finding has no place in the file).
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong.
    pub message: String,
    /// What to write instead.
    pub help: Option<String>,
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if self.line > 0 {
            write!(
                f,
                "{}:{}:{}: {sev}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )?;
        } else {
            write!(f, "{}: {sev}: {}", self.file.display(), self.message)?;
        }
        if let Some(h) = &self.help {
            write!(f, "\n  help: {h}")?;
        }
        Ok(())
    }
}

/// Collects findings for one file, turning byte spans into line:column.
#[derive(Debug)]
pub struct Diags<'a> {
    file: &'a Path,
    text: &'a str,
    /// Everything found so far.
    pub items: Vec<Diag>,
}

impl<'a> Diags<'a> {
    /// Start collecting for `file` whose contents are `text`.
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        Self {
            file,
            text,
            items: Vec::new(),
        }
    }

    /// 1-based line and column of byte offset `at`.
    pub fn line_col(&self, at: usize) -> (usize, usize) {
        let at = at.min(self.text.len());
        let before = self.text.get(..at).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map(|s| s.chars().count()).unwrap_or(0) + 1;
        (line, col)
    }

    fn push(&mut self, severity: Severity, span: Option<Range<usize>>, message: String, help: Option<String>) {
        let (line, col) = match span {
            Some(r) if !(r.start == 0 && r.end == 0) => self.line_col(r.start),
            _ => (0, 0),
        };
        self.items.push(Diag {
            severity,
            file: self.file.to_path_buf(),
            line,
            col,
            message,
            help,
        });
    }

    /// Record an error.
    pub fn error(&mut self, span: Option<Range<usize>>, message: impl Into<String>, help: Option<String>) {
        self.push(Severity::Error, span, message.into(), help);
    }

    /// Record a warning.
    pub fn warning(&mut self, span: Option<Range<usize>>, message: impl Into<String>, help: Option<String>) {
        self.push(Severity::Warning, span, message.into(), help);
    }

    /// True when an error was recorded.
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }
}

/// Levenshtein distance, for did-you-mean.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate to `word`, if it is close enough to be a likely typo.
pub fn did_you_mean<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_you_mean_finds_close_keys() {
        assert_eq!(
            did_you_mean("resorces", ["name", "resources", "requesters"]),
            Some("resources")
        );
        assert_eq!(did_you_mean("xyz", ["name", "resources"]), None);
    }

    #[test]
    fn line_and_column_are_one_based() {
        let text = "a = 1\nbb = 2\n";
        let d = Diags::new(Path::new("f.toml"), text);
        assert_eq!(d.line_col(0), (1, 1));
        assert_eq!(d.line_col(6), (2, 1));
        assert_eq!(d.line_col(9), (2, 4));
    }
}
