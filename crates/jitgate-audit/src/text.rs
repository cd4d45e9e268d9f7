//! Search by content: what text an event is searchable by, when a search text matches it, and
//! the words an index may use to find candidates.
//!
//! A search text matches where it occurs in the event's text ignoring ASCII case, starting at
//! the beginning of a word (or anywhere, when the search text itself starts with punctuation or
//! a space): `DROP TAB` finds `drop table t`, `customers` finds `FROM public.customers c`,
//! `read_file` finds `pg_read_file(...)`, but `able` does not find `table`. Words are runs of
//! ASCII letters and digits; the index keeps every word of every statement and command, so the
//! words of a search text (its last one as a prefix) select the candidates and the match itself
//! is then checked on the recorded line.

use std::borrow::Cow;

use crate::event::Event;
use crate::kind::Kind;

/// Kinds whose events carry searchable text, and the details key that holds it.
pub const TEXT_KINDS: &[(&str, &str)] = &[
    (Kind::PgStatement.as_str(), "sql"),
    (Kind::SshExec.as_str(), "command"),
    (Kind::SshCommand.as_str(), "line"),
    (Kind::SshSftp.as_str(), "path"),
];

/// Kinds `--command` searches: what SSH users ran or touched.
pub const COMMAND_KINDS: &[&str] = &[
    Kind::SshExec.as_str(),
    Kind::SshCommand.as_str(),
    Kind::SshSftp.as_str(),
];

/// Longest search text accepted.
pub const MAX_NEEDLE: usize = 1024;

/// The searchable text of `e`: the SQL of a statement, the command of an exec, the line typed in
/// a shell, the path(s) of an SFTP operation; `None` for other kinds.
pub fn event_text(e: &Event) -> Option<Cow<'_, str>> {
    let key = TEXT_KINDS.iter().find(|(k, _)| *k == e.kind)?.1;
    let main = e.details.get(key)?.as_str()?;
    match e.details.get("path2").and_then(|v| v.as_str()) {
        Some(second) if key == "path" => Some(Cow::Owned(format!("{main} {second}"))),
        _ => Some(Cow::Borrowed(main)),
    }
}

fn word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || !c.is_ascii()
}

/// True when `needle` occurs in `hay` ignoring ASCII case, at the start of a word when the
/// needle starts with a word character.
pub fn text_matches(hay: &str, needle: &str) -> bool {
    let n = needle.as_bytes();
    if n.is_empty() {
        return true;
    }
    let at_word = needle.chars().next().is_some_and(word_char);
    let h = hay.as_bytes();
    if n.len() > h.len() {
        return false;
    }
    (0..=h.len() - n.len()).any(|p| {
        hay.is_char_boundary(p)
            && h[p..p + n.len()].eq_ignore_ascii_case(n)
            && (!at_word || hay[..p].chars().next_back().is_none_or(|c| !word_char(c)))
    })
}

/// One word of a search text for the index: lower-case ASCII; `prefix` when it ends the text
/// (the event's word may go on).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Term {
    /// The word, lower-case.
    pub word: String,
    /// The event's word may be longer.
    pub prefix: bool,
}

/// The words of `needle` every match must contain as whole words (the last as a word prefix).
/// A word right after a non-ASCII character is left out (an index may join them into one
/// word); one right before it is a prefix.
pub fn terms(needle: &str) -> Vec<Term> {
    let b = needle.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_alphanumeric() {
            i += 1;
        }
        // A word right after a non-ASCII letter may be the middle of an index's word: left out.
        // One right before it may be the start of one: kept as a prefix.
        let clean_before = start == 0 || b[start - 1].is_ascii();
        let ends_clean = i < b.len() && b[i].is_ascii();
        if clean_before {
            out.push(Term {
                word: needle[start..i].to_ascii_lowercase(),
                prefix: !ends_clean,
            });
        }
    }
    out
}

/// The distinct terms an index looks up for `needle` ([`terms`]).
pub fn index_terms(needle: &str) -> Vec<Term> {
    let mut all = terms(needle);
    let mut seen = std::collections::HashSet::new();
    all.retain(|t| seen.insert(t.clone()));
    all
}

/// The distinct words of `text` as an index that lacks a tokenizer of its own keeps them: runs
/// of ASCII letters and digits, lower-cased (every [`Term`] of a matching needle is one of these,
/// or a prefix of one for the last).
pub fn words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Why `needle` cannot be searched for, if it cannot.
pub fn check_needle(needle: &str) -> Result<(), String> {
    if needle.len() > MAX_NEEDLE {
        return Err(format!(
            "the search text is {} bytes; at most {MAX_NEEDLE}",
            needle.len()
        ));
    }
    if terms(needle).is_empty() {
        return Err(format!(
            "the search text {needle:?} has no word of ASCII letters or digits to look up; add one (e.g. a table or command name)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_at_word_starts_ignoring_ascii_case() {
        assert!(text_matches("drop table t", "DROP TABLE"));
        assert!(text_matches("select * from public.customers c", "customers"));
        assert!(text_matches("select pg_read_file('/etc/passwd')", "read_file"));
        assert!(text_matches("DROP TABLE x", "drop tab"));
        assert!(!text_matches("create table x", "able"));
        assert!(!text_matches("xdrop table", "drop table"));
        assert!(text_matches("where email = 'bob@x.io'", "'bob@"));
        assert!(text_matches("a;drop", ";drop"));
        assert!(!text_matches("éabc", "abc"), "a non-ASCII letter is part of the word");
        assert!(text_matches("café au lait", "café"));
        assert!(!text_matches("", "x"));
    }

    #[test]
    fn terms_are_whole_words_but_the_last() {
        let t = terms("DROP TABLE cust");
        assert_eq!(
            t,
            vec![
                Term {
                    word: "drop".into(),
                    prefix: false
                },
                Term {
                    word: "table".into(),
                    prefix: false
                },
                Term {
                    word: "cust".into(),
                    prefix: true
                },
            ]
        );
        assert_eq!(terms("pg_read_file(").len(), 3);
        assert!(terms("pg_read_file(").iter().all(|t| !t.prefix));
        assert_eq!(
            terms("caféx bar"),
            vec![
                Term {
                    word: "caf".into(),
                    prefix: true
                },
                Term {
                    word: "bar".into(),
                    prefix: true
                },
            ]
        );
        assert!(terms(";; --").is_empty());
        assert!(check_needle("é").is_err());
        assert!(check_needle("DROP").is_ok());
    }

    /// Every match contains its needle's terms as words of the text (the property the index
    /// relies on): checked over a grid of texts and every needle cut from them.
    #[test]
    fn every_match_holds_its_terms_as_words() {
        let texts = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42;",
            "drop table if exists \"Orders\" cascade",
            "rm -rf /var/lib/app/cache/*.tmp && echo done",
            "update t set v='naïve café' where id=7",
        ];
        for t in texts {
            let words: Vec<String> = t
                .split(|c: char| !c.is_ascii_alphanumeric() && c.is_ascii())
                .filter(|w| !w.is_empty())
                .map(str::to_ascii_lowercase)
                .collect();
            for a in 0..t.len() {
                for b in a + 1..=t.len() {
                    let Some(n) = t.get(a..b) else {
                        continue;
                    };
                    if !text_matches(t, n) {
                        continue;
                    }
                    for term in terms(n) {
                        let ok = words.iter().any(|w| {
                            if term.prefix {
                                w.starts_with(&term.word)
                            } else {
                                *w == term.word
                            }
                        });
                        assert!(ok, "{n:?} matches {t:?} but its term {term:?} is not a word of it");
                    }
                }
            }
        }
    }
}
