//! Operator-defined redaction: secrets that appear in SQL text, SSH commands or any other text of
//! an event are replaced before the line is written, so neither the log nor its hash chain ever
//! holds them.
//!
//! Each pattern is a regular expression (Rust `regex` syntax, linear time, no backtracking). A
//! match is replaced with [`MASK`]; a pattern with a group named `secret` replaces only that
//! group, so the context stays readable (`token=***`). Patterns are applied in the writer thread,
//! off the relay's hot path; a [`regex::RegexSet`] pass first decides whether any pattern matches
//! at all, so text without secrets costs one scan.

use std::borrow::Cow;

use regex::{Regex, RegexSet};

use crate::event::{Event, Statement};

/// What a redacted secret becomes.
pub const MASK: &str = "***";

/// A compiled set of redaction patterns.
#[derive(Debug, Clone)]
pub struct Redactor {
    set: RegexSet,
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    re: Regex,
    /// Index of the group named `secret`, if any.
    group: Option<usize>,
}

/// A pattern that does not compile: its index in the list and the compiler's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redaction pattern {index}: {message}")]
pub struct BadPattern {
    /// Position in the list, from 0.
    pub index: usize,
    /// What is wrong with the pattern (the regex engine's message).
    pub message: String,
}

/// Largest compiled size of one pattern (a guard against patterns that explode).
const SIZE_LIMIT: usize = 1 << 20;

impl Redactor {
    /// Compile `patterns`; `None` when the list is empty.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Option<Self>, BadPattern> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let mut compiled = Vec::with_capacity(patterns.len());
        for (index, p) in patterns.iter().enumerate() {
            let re = regex::RegexBuilder::new(p.as_ref())
                .size_limit(SIZE_LIMIT)
                .build()
                .map_err(|e| BadPattern {
                    index,
                    message: one_line(&e),
                })?;
            if re.is_match("") {
                return Err(BadPattern {
                    index,
                    message: "it matches the empty string, so it would mask everywhere".into(),
                });
            }
            let group = re.capture_names().position(|n| n == Some("secret"));
            compiled.push(Pattern { re, group });
        }
        let set = regex::RegexSetBuilder::new(patterns.iter().map(AsRef::as_ref))
            .size_limit(SIZE_LIMIT * patterns.len().max(1))
            .build()
            .map_err(|e| BadPattern {
                index: 0,
                message: e.to_string(),
            })?;
        Ok(Some(Self {
            set,
            patterns: compiled,
        }))
    }

    /// `s` with every match masked (borrowed when nothing matched). Every pattern is matched
    /// against the original text and the masked ranges merged, so one pattern's mask cannot
    /// hide another pattern's anchor.
    pub fn apply<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let hits = self.set.matches(s);
        if !hits.matched_any() {
            return Cow::Borrowed(s);
        }
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for i in hits.iter() {
            if let Some(p) = self.patterns.get(i) {
                ranges.extend(spans(p, s));
            }
        }
        ranges.sort_unstable();
        let mut out = String::with_capacity(s.len());
        let mut last = 0;
        for (start, end) in ranges {
            if end <= last {
                continue;
            }
            out.push_str(&s[last..start.max(last)]);
            if start >= last {
                out.push_str(MASK);
            }
            last = end;
        }
        out.push_str(&s[last..]);
        Cow::Owned(out)
    }

    /// Redact an event's reason and every string in its details (keys are left alone).
    pub fn event(&self, e: &mut Event) {
        if let Some(r) = &mut e.reason
            && let Cow::Owned(new) = self.apply(r)
        {
            *r = new;
        }
        self.value(&mut e.details);
    }

    fn value(&self, v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => {
                if let Cow::Owned(new) = self.apply(s) {
                    *s = new;
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| self.value(x)),
            serde_json::Value::Object(m) => m.values_mut().for_each(|x| self.value(x)),
            _ => {}
        }
    }

    /// Redact a statement's SQL text and error message. Only what the line will hold is
    /// matched (the text up to `max_text` and a margin, so a secret across the cut is still
    /// found): a hostile 64 MiB statement costs no more than a short one.
    pub fn statement(&self, st: &mut Statement) {
        let keep = st.max_text.saturating_add(WINDOW_MARGIN);
        if st.sql.len() > keep {
            st.sql = st.sql[..st.sql.floor_char_boundary(keep)].into();
        }
        if let Some(err) = &mut st.error
            && err.1.len() > keep
        {
            err.1.truncate(err.1.floor_char_boundary(keep));
        }
        if let Cow::Owned(new) = self.apply(&st.sql) {
            st.sql = new.into();
        }
        if let Some(err) = &mut st.error
            && let Cow::Owned(new) = self.apply(&err.1)
        {
            err.1 = new;
        }
    }
}

/// The regex error's last line (`error: unclosed group`), without the drawing above it.
fn one_line(e: &regex::Error) -> String {
    let s = e.to_string();
    let last = s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(&s);
    last.trim().trim_start_matches("error: ").to_string()
}

/// Bytes matched beyond a statement's `max_text` cut.
const WINDOW_MARGIN: usize = 1024;

/// The byte ranges `p` masks in `s`.
fn spans(p: &Pattern, s: &str) -> Vec<(usize, usize)> {
    match p.group {
        None => p.re.find_iter(s).map(|m| (m.start(), m.end())).collect(),
        Some(g) => {
            p.re.captures_iter(s)
                .filter_map(|c| c.get(g))
                .map(|m| (m.start(), m.end()))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(p: &[&str]) -> Redactor {
        Redactor::new(p).unwrap().unwrap()
    }

    #[test]
    fn whole_matches_and_secret_groups_are_masked() {
        let red = r(&["AKIA[0-9A-Z]{16}", r"(?i)api_key\s*=\s*'(?P<secret>[^']*)'"]);
        assert_eq!(
            red.apply("SELECT 'AKIAABCDEFGHIJKLMNOP', 1 WHERE api_key = 'hunter2' OR api_key='x'"),
            "SELECT '***', 1 WHERE api_key = '***' OR api_key='***'"
        );
        assert!(matches!(red.apply("SELECT 1"), Cow::Borrowed(_)));
    }

    #[test]
    fn patterns_match_the_original_text_not_each_others_masks() {
        // Reported by the red team: the first pattern's mask used to eat the second's anchor.
        let red = r(&["(?i)token", r"(?i)token=(?P<secret>\w+)"]);
        assert_eq!(red.apply("x token=abc y"), "x ***=*** y");
        let red = r(&["abcdef", "cde"]);
        assert_eq!(red.apply("..abcdefg"), "..***g");
    }

    #[test]
    fn long_statements_are_matched_only_as_far_as_the_line_holds_them() {
        let red = r(&["s3cr3t"]);
        let mut st = Statement {
            time: jiff::Timestamp::UNIX_EPOCH,
            identity: "a".into(),
            access: "read-write".into(),
            resource: "db".into(),
            grant_id: 1,
            session_id: "s".into(),
            sql: format!("SELECT '{}s3cr3t{}'", "x".repeat(90), "y".repeat(1 << 20)).into(),
            max_text: 100,
            class: "read",
            simple: true,
            outcome: "ok",
            duration_ms: 1.0,
            rows: 0,
            error: Some(Box::new(("22P02".into(), "z".repeat(1 << 20)))),
        };
        red.statement(&mut st);
        assert!(st.sql.len() <= 100 + WINDOW_MARGIN && st.sql.contains("***") && !st.sql.contains("s3cr3t"));
        assert!(st.error.as_ref().is_some_and(|e| e.1.len() <= 100 + WINDOW_MARGIN));
    }

    #[test]
    fn bad_and_empty_matching_patterns_are_refused_with_their_index() {
        assert_eq!(Redactor::new::<&str>(&[]).unwrap().map(|_| ()), None);
        let e = Redactor::new(&["ok", "(unclosed"]).unwrap_err();
        assert_eq!(e.index, 1);
        assert_eq!(e.message, "unclosed group");
        assert_eq!(Redactor::new(&["a*"]).unwrap_err().index, 0);
    }

    #[test]
    fn event_details_and_reason_are_walked() {
        let red = r(&["s3cr3t"]);
        let mut e = Event::new(crate::Kind::SshExec, jiff::Timestamp::UNIX_EPOCH)
            .reason(Some("why s3cr3t"))
            .details(serde_json::json!({"command": "mysql -ps3cr3t", "argv": ["s3cr3t", 1], "s3cr3t": "key kept"}));
        red.event(&mut e);
        assert_eq!(e.reason.as_deref(), Some("why ***"));
        assert_eq!(
            e.details,
            serde_json::json!({"command": "mysql -p***", "argv": ["***", 1], "s3cr3t": "key kept"})
        );
    }
}
