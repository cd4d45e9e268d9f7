//! The verdict cache: verdicts keyed by exact text, or by the *masked* text of statements made
//! only of plain tokens (literals replaced by marker bytes), bounded in bytes by two
//! generations. Why a masked key cannot confuse two statements is in the [module docs](super).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::{Class, Verdict, classify};

/// The masked key of a text made only of plain tokens, or `None` (see the module docs).
pub fn masked_key(sql: &str) -> Option<String> {
    masked(sql, None)
}

/// The masked key, and (when asked) the byte spans of the literals it masked.
pub(super) fn masked(sql: &str, mut spans: Option<&mut Vec<(usize, usize)>>) -> Option<String> {
    const NUM: char = '\u{1}';
    const STR: char = '\u{2}';
    let b = sql.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut last_string_end = usize::MAX;
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        let c = b[i];
        match c {
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let s = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                out.push_str(&sql[s..i]);
                // A word right before a quote is a string prefix (E'', B'', X'', N'', U&...).
                if b.get(i).is_some_and(|&n| n == b'\'' || n == b'"' || n == b'$') {
                    return None;
                }
                continue;
            }
            b'0'..=b'9' => {
                let s = i;
                // `.5` is one float token to the server.
                if s > 0 && b[s - 1] == b'.' {
                    return None;
                }
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i - s > 9
                    || b.get(i)
                        .is_some_and(|&n| ident(n) || n == b'.' || n == b'$' || n == b'\'')
                {
                    return None;
                }
                if let Some(v) = spans.as_mut() {
                    v.push((s, i));
                }
                out.push(NUM);
                continue;
            }
            b'\'' => {
                // Strings separated by white space only may be one string to the server
                // (continuation across a newline): not maskable.
                if last_string_end != usize::MAX && sql[last_string_end..i].bytes().all(|c| c.is_ascii_whitespace()) {
                    return None;
                }
                let s = i;
                i += 1;
                loop {
                    match b.get(i) {
                        None => return None,
                        Some(b'\\') => return None,
                        Some(b'\'') if b.get(i + 1) == Some(&b'\'') => i += 2,
                        Some(b'\'') => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
                if b.get(i).is_some_and(|&n| ident(n) || n == b'\'') {
                    return None;
                }
                if let Some(v) = spans.as_mut() {
                    v.push((s, i));
                }
                last_string_end = i;
                out.push(STR);
                continue;
            }
            b' ' | b'\t' | b'\n' | b'\r' => out.push(c as char),
            b'-' if b.get(i + 1) == Some(&b'-') => return None,
            b'/' if b.get(i + 1) == Some(&b'*') => return None,
            b'(' | b')' | b',' | b'.' | b';' | b'=' | b'<' | b'>' | b'*' | b'+' | b'-' | b'/' | b'%' | b':' | b'['
            | b']' | b'^' | b'|' | b'~' | b'!' | b'@' | b'#' | b'?' => out.push(c as char),
            _ => return None,
        }
        i += 1;
    }
    Some(out)
}

/// Bytes of keys kept per generation.
pub(super) const GENERATION_BYTES: usize = 4 << 20;
/// Texts longer than this are classified but not cached.
const MAX_CACHED_TEXT: usize = 16 * 1024;

#[derive(Default)]
struct Generation {
    exact: HashMap<Box<str>, Arc<Verdict>>,
    masked: HashMap<Box<str>, Arc<Verdict>>,
    bytes: usize,
}

impl Generation {
    fn get(&self, masked: bool, key: &str) -> Option<&Arc<Verdict>> {
        if masked {
            self.masked.get(key)
        } else {
            self.exact.get(key)
        }
    }
}

#[derive(Default)]
struct Cache {
    young: Generation,
    old: Generation,
}

/// Verdicts cached by exact and by masked text (see the module docs), bounded in bytes.
#[derive(Default)]
pub struct Classifier {
    cache: RwLock<Cache>,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier").field("entries", &self.len()).finish()
    }
}

impl Classifier {
    /// An empty classifier.
    pub fn new() -> Self {
        Self::default()
    }

    /// The verdict for `sql`, parsing only when its key is new.
    pub fn classify(&self, sql: &str) -> Arc<Verdict> {
        // PostgreSQL's parser cannot take a NUL (the protocol's strings end at one, so none
        // reaches here from a client); the masked key would hide it inside a literal and give
        // the text the verdict of the same text without it (found by the sql_classify fuzz
        // target).
        if sql.len() > MAX_CACHED_TEXT || sql.contains('\0') {
            return Arc::new(classify(sql));
        }
        let masked = masked_key(sql);
        let (is_masked, key) = match &masked {
            Some(k) => (true, k.as_str()),
            None => (false, sql),
        };
        {
            let c = self.cache.read().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = c.young.get(is_masked, key).or_else(|| c.old.get(is_masked, key)) {
                return v.clone();
            }
        }
        let v = Arc::new(classify(sql));
        if v.class == Class::Unparsed {
            // The parser's message quotes the text (a literal, say): not shared. Junk fails
            // fast in the parser, so there is nothing to gain by caching it either.
            return v;
        }
        let mut c = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if c.young.bytes + key.len() > GENERATION_BYTES {
            c.old = std::mem::take(&mut c.young);
        }
        c.young.bytes += key.len() + 64;
        let map = if is_masked {
            &mut c.young.masked
        } else {
            &mut c.young.exact
        };
        map.insert(key.into(), v.clone());
        v
    }

    /// Entries cached.
    pub fn len(&self) -> usize {
        let c = self.cache.read().unwrap_or_else(|e| e.into_inner());
        c.young.exact.len() + c.young.masked.len() + c.old.exact.len() + c.old.masked.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of keys held (both generations).
    pub fn bytes(&self) -> usize {
        let c = self.cache.read().unwrap_or_else(|e| e.into_inner());
        c.young.bytes + c.old.bytes
    }
}
