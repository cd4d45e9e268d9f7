//! Statement inspection: what class a SQL text is, and whether a `read-only` grant may run it.
//!
//! Parsing with sqlparser costs ~16 µs per statement here, too slow for every query at tens of
//! thousands per second, so verdicts are cached by a *fingerprint*: the text with comments and
//! literals (strings, dollar-quoted strings, numbers, `$n` parameters) replaced by `?`, white
//! space folded and unquoted words lower-cased. Literals cannot change a statement's structure,
//! so two texts with one fingerprint get one verdict. The lexer is a single pass with no regex.
//!
//! The read-only check is defence in depth behind a read-only upstream role, and it is
//! deny-by-default: the text must parse; every statement must be of an allowed kind (queries,
//! EXPLAIN, SHOW, cursors, prepared-statement plumbing, transaction control, SET/RESET/LISTEN);
//! and lexical checks refuse what hides inside allowed kinds — data-modifying CTEs and SELECT
//! INTO, row locks, `SET ROLE` / `SET SESSION AUTHORIZATION` and their RESETs, read-write
//! toggles, and functions known to write (`nextval`, `set_config`, `dblink_exec`, ...).
//! Unparseable text is refused rather than guessed.

use std::sync::Arc;

use dashmap::DashMap;
use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// Coarse statement class, for audit and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Nothing to run.
    Empty,
    /// SELECT, SHOW, EXPLAIN, cursors.
    Read,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT.
    Transaction,
    /// SET, RESET, LISTEN, DISCARD.
    Session,
    /// Anything else we recognise but do not group.
    Other,
    /// INSERT, UPDATE, DELETE, MERGE, COPY FROM, TRUNCATE, CALL, NOTIFY, LOCK.
    Write,
    /// CREATE, ALTER, DROP, GRANT, REVOKE, COMMENT.
    Ddl,
    /// The parser could not read it.
    Unparsed,
}

impl Class {
    /// Label for audit and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Read => "read",
            Self::Transaction => "transaction",
            Self::Session => "session",
            Self::Other => "other",
            Self::Write => "write",
            Self::Ddl => "ddl",
            Self::Unparsed => "unparsed",
        }
    }
}

/// The verdict on one SQL text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The strongest class among its statements.
    pub class: Class,
    /// Number of statements.
    pub statements: usize,
    /// `None`: a read-only grant may run it; `Some(why)`: refused, and why.
    pub read_only_refusal: Option<String>,
}

const WRITE_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "set_config",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_promote",
    "lo_import",
    "lo_export",
    "lo_unlink",
    "lo_create",
    "lo_creat",
    "lo_from_bytea",
    "lo_put",
    "lo_truncate",
    "lowrite",
    "dblink",
    "dblink_exec",
    "dblink_connect",
    "dblink_send_query",
    "pg_file_write",
    "pg_file_unlink",
    "pg_file_rename",
    "pg_advisory_lock",
    "pg_advisory_xact_lock",
    "pg_try_advisory_lock",
    "pg_try_advisory_xact_lock",
    "pg_advisory_lock_shared",
    "pg_notify",
    "pg_logical_emit_message",
    "pg_stat_reset",
    "pg_stat_reset_shared",
    "pg_stat_reset_single_table_counters",
    "pg_drop_replication_slot",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_replication_origin_create",
    "pg_import_system_collations",
    "query_to_xml",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "txid_current",
    "pg_current_xact_id",
];

/// A word of the fingerprint: lower-cased unquoted identifier or keyword.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Word {
    text: String,
    call: bool,
}

/// Fingerprint and words of a SQL text.
pub fn fingerprint(sql: &str) -> (String, Vec<String>) {
    let (fp, words) = lex(sql);
    (fp, words.into_iter().map(|w| w.text).collect())
}

fn lex(sql: &str) -> (String, Vec<Word>) {
    let mut words = Vec::new();
    let fp = lex_with(sql, Some(&mut words));
    (fp, words)
}

/// The fingerprint, and the words when asked for (a cache hit needs only the fingerprint, so
/// it allocates no word).
fn lex_with(sql: &str, mut words: Option<&mut Vec<Word>>) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len().min(4096));
    let mut i = 0;
    let space = |out: &mut String| {
        if !out.is_empty() && !out.ends_with(' ') {
            out.push(' ');
        }
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {
                space(&mut out);
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                space(&mut out);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                space(&mut out);
            }
            b'\'' => {
                let escapes = i > 0 && matches!(b[i - 1], b'e' | b'E') && out.ends_with(['e', 'E']);
                if escapes {
                    out.pop();
                    if let Some(words) = words.as_deref_mut()
                        && words.last().is_some_and(|w| w.text == "e")
                    {
                        words.pop();
                    }
                }
                i += 1;
                while i < b.len() {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                out.push('?');
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() {
                    if b[i] == b'"' {
                        if b.get(i + 1) == Some(&b'"') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i = (i + 1).min(b.len());
                out.push_str(&sql[start..i]);
            }
            b'$' => {
                // $1 parameter, or $tag$ ... $tag$ dollar quoting.
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                if j > i + 1 && b[i + 1..j].iter().all(u8::is_ascii_digit) {
                    out.push('?');
                    i = j;
                } else if b.get(j) == Some(&b'$') {
                    let tag = &sql[i..=j];
                    match sql[j + 1..].find(tag) {
                        Some(end) => i = j + 1 + end + tag.len(),
                        None => i = b.len(),
                    }
                    out.push('?');
                } else {
                    out.push('$');
                    i += 1;
                }
            }
            b'0'..=b'9' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                    i += 1;
                }
                out.push('?');
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80) {
                    i += 1;
                }
                let word = &sql[start..i];
                match words.as_deref_mut() {
                    Some(words) => {
                        let w = word.to_lowercase();
                        out.push_str(&w);
                        let mut k = i;
                        while k < b.len() && b[k].is_ascii_whitespace() {
                            k += 1;
                        }
                        words.push(Word {
                            text: w,
                            call: b.get(k) == Some(&b'('),
                        });
                    }
                    None if word.is_ascii() => out.extend(word.bytes().map(|c| char::from(c.to_ascii_lowercase()))),
                    None => out.push_str(&word.to_lowercase()),
                }
            }
            _ => {
                // Multi-byte UTF-8 continuation bytes are handled with identifiers above.
                out.push(char::from(c));
                i += 1;
            }
        }
    }
    out.truncate(out.trim_end().len());
    out
}

fn kind_name(s: &Statement) -> String {
    let d = format!("{s:?}");
    d.split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or("")
        .to_string()
}

fn class_of(s: &Statement) -> Class {
    match s {
        Statement::Query(_) | Statement::ExplainTable { .. } | Statement::Fetch { .. } | Statement::Declare { .. } => {
            Class::Read
        }
        Statement::Explain { analyze, statement, .. } => {
            if *analyze {
                class_of(statement).max(Class::Read)
            } else {
                Class::Read
            }
        }
        Statement::Prepare { statement, .. } => class_of(statement),
        Statement::Copy { to, .. } => {
            if *to {
                Class::Read
            } else {
                Class::Write
            }
        }
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => Class::Transaction,
        Statement::Set(_)
        | Statement::Reset(_)
        | Statement::Discard { .. }
        | Statement::LISTEN { .. }
        | Statement::UNLISTEN { .. } => Class::Session,
        Statement::Insert(_)
        | Statement::Update { .. }
        | Statement::Delete(_)
        | Statement::Merge { .. }
        | Statement::Truncate { .. }
        | Statement::Call(_)
        | Statement::NOTIFY { .. }
        | Statement::Lock(_) => Class::Write,
        other => {
            let k = kind_name(other);
            if k.starts_with("Show") || k == "Close" || k == "Deallocate" || k == "Execute" {
                Class::Read
            } else if ["Create", "Alter", "Drop", "Grant", "Revoke", "Comment", "Rename"]
                .iter()
                .any(|p| k.starts_with(p))
            {
                Class::Ddl
            } else if [
                "Vacuum",
                "Analyze",
                "Refresh",
                "Load",
                "Unload",
                "Directory",
                "Install",
                "Kill",
            ]
            .iter()
            .any(|p| k.starts_with(p))
            {
                Class::Write
            } else {
                Class::Other
            }
        }
    }
}

fn lexical_refusal(words: &[Word]) -> Option<String> {
    let w = |i: usize| words.get(i).map_or("", |x| x.text.as_str());
    for (i, word) in words.iter().enumerate() {
        let t = word.text.as_str();
        match t {
            "insert" | "update" | "delete" | "merge" | "truncate" => {
                if t == "update" && matches!(w(i.wrapping_sub(1)), "for" | "key") {
                    return Some("row locks (FOR UPDATE/SHARE)".into());
                }
                return Some(format!("data-modifying {} (also inside WITH)", t.to_uppercase()));
            }
            "into" => return Some("SELECT INTO (creates a table)".into()),
            "for" if matches!(w(i + 1), "share" | "no" | "key") => return Some("row locks (FOR UPDATE/SHARE)".into()),
            "set" | "reset" => {
                let mut j = i + 1;
                if matches!(w(j), "session" | "local") && w(j + 1) != "characteristics" {
                    j += 1;
                }
                if w(j) == "role" {
                    return Some(format!("{} ROLE", t.to_uppercase()));
                }
                if w(j) == "authorization"
                    || (w(j) == "session" && w(j + 1) == "authorization")
                    || (w(i + 1) == "session" && w(i + 2) == "authorization")
                {
                    return Some(format!("{} SESSION AUTHORIZATION", t.to_uppercase()));
                }
            }
            "default_transaction_read_only" | "transaction_read_only" | "session_authorization" | "role"
                if i > 0 && matches!(w(i - 1), "set" | "reset" | "local" | "session" | "to") =>
            {
                return Some(format!("changing {t}"));
            }
            "default_transaction_read_only" | "transaction_read_only" => return Some(format!("changing {t}")),
            "read" if w(i + 1) == "write" => return Some("READ WRITE transactions".into()),
            _ => {}
        }
        if word.call && WRITE_FUNCTIONS.contains(&t) {
            return Some(format!("function {t}() (it writes or acts outside the transaction)"));
        }
    }
    None
}

/// Classify `sql` from scratch (no cache).
pub fn classify(sql: &str) -> Verdict {
    let (_, words) = lex(sql);
    verdict(sql, &words)
}

fn verdict(sql: &str, words: &[Word]) -> Verdict {
    if words.is_empty() && sql.trim_matches(|c: char| c.is_whitespace() || c == ';').is_empty() {
        return Verdict {
            class: Class::Empty,
            statements: 0,
            read_only_refusal: None,
        };
    }
    let stmts = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(s) => s,
        Err(e) => {
            return Verdict {
                class: Class::Unparsed,
                statements: 1,
                read_only_refusal: Some(format!("statements jitgate cannot parse ({e})")),
            };
        }
    };
    let mut class = Class::Empty;
    let mut refusal = None;
    for s in &stmts {
        let c = class_of(s);
        class = class.max(c);
        if refusal.is_none() && !matches!(c, Class::Read | Class::Transaction | Class::Session | Class::Empty) {
            refusal = Some(format!("{} statements ({})", c.as_str(), kind_name(s).to_uppercase()));
        }
    }
    if refusal.is_none() {
        refusal = lexical_refusal(words);
    }
    Verdict {
        class,
        statements: stmts.len(),
        read_only_refusal: refusal,
    }
}

/// Verdicts cached by fingerprint.
#[derive(Debug, Default)]
pub struct Classifier {
    cache: DashMap<String, Arc<Verdict>>,
}

/// Entries kept before the cache is emptied (a crude, allocation-free bound).
const CACHE_MAX: usize = 50_000;

impl Classifier {
    /// An empty classifier.
    pub fn new() -> Self {
        Self::default()
    }

    /// The verdict for `sql`, parsing only when its fingerprint is new.
    pub fn classify(&self, sql: &str) -> Arc<Verdict> {
        let fp = lex_with(sql, None);
        if let Some(v) = self.cache.get(&fp) {
            return v.clone();
        }
        let (fp, words) = lex(sql);
        let v = Arc::new(verdict(sql, &words));
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(fp, v.clone());
        v
    }

    /// Entries cached.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_strip_literals_and_comments() {
        let (a, _) = fingerprint("SELECT * FROM t WHERE id = 42 AND name = 'bob' -- hi\n");
        let (b, _) = fingerprint("select *   from t where id = 7 and name = 'it''s' /* c /* nested */ */");
        assert_eq!(a, b);
        assert_eq!(a, "select * from t where id = ? and name = ?");
        let (c, _) = fingerprint("SELECT $1, $$x'y$$, $tag$ a $$ b $tag$, E'\\'', \"Col\"");
        assert_eq!(c, "select ?, ?, ?, ?, \"Col\"");
    }

    /// The read-only table: (statement, allowed).
    const CASES: &[(&str, bool)] = &[
        ("SELECT 1", true),
        ("select * from accounts where id = 1", true),
        ("SELECT count(*) FROM pgbench_accounts; SELECT now()", true),
        ("WITH x AS (SELECT 1) SELECT * FROM x", true),
        ("EXPLAIN SELECT * FROM t", true),
        ("SHOW search_path", true),
        ("BEGIN", true),
        ("BEGIN ISOLATION LEVEL REPEATABLE READ", true),
        ("COMMIT", true),
        ("ROLLBACK", true),
        ("SAVEPOINT a", true),
        ("SET search_path = public", true),
        ("SET statement_timeout TO 1000", true),
        ("RESET search_path", true),
        ("LISTEN ch", true),
        ("COPY (SELECT 1) TO STDOUT", true),
        ("COPY t TO STDOUT WITH (FORMAT csv)", true),
        ("DECLARE c CURSOR FOR SELECT 1", true),
        ("PREPARE p AS SELECT $1::int", true),
        ("EXECUTE p(1)", true),
        ("SELECT 'insert into t values (1)'", true),
        ("SELECT upper('delete')", true),
        ("", true),
        ("INSERT INTO t VALUES (1)", false),
        ("UPDATE t SET a = 1", false),
        ("DELETE FROM t", false),
        ("SELECT 1; DELETE FROM t", false),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", false),
        ("EXPLAIN ANALYZE DELETE FROM t", false),
        ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", false),
        ("SET ROLE postgres", false),
        ("SET LOCAL ROLE postgres", false),
        ("SET SESSION AUTHORIZATION postgres", false),
        ("RESET ROLE", false),
        ("RESET SESSION AUTHORIZATION", false),
        ("SET default_transaction_read_only = off", false),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", false),
        ("BEGIN READ WRITE", false),
        ("COPY t FROM STDIN", false),
        ("PREPARE p AS DELETE FROM t", false),
        ("CALL do_things()", false),
        ("DO $$ BEGIN DELETE FROM t; END $$", false),
        ("CREATE TABLE x (a int)", false),
        ("DROP TABLE t", false),
        ("ALTER TABLE t ADD COLUMN b int", false),
        ("GRANT SELECT ON t TO bob", false),
        ("TRUNCATE t", false),
        ("SELECT * INTO new_t FROM t", false),
        ("SELECT * FROM t FOR UPDATE", false),
        ("SELECT * FROM t FOR SHARE", false),
        ("SELECT nextval('s')", false),
        ("SELECT set_config('transaction_read_only', 'off', false)", false),
        ("SELECT pg_terminate_backend(123)", false),
        ("SELECT dblink_exec('x', 'delete from t')", false),
        ("NOTIFY ch, 'x'", false),
        ("VACUUM t", false),
        ("LOCK TABLE t", false),
        ("SELEC 1 FROM", false),
        ("REFRESH MATERIALIZED VIEW mv", false),
    ];

    #[test]
    fn read_only_table() {
        let c = Classifier::new();
        let mut wrong = Vec::new();
        for (sql, allowed) in CASES {
            let v = c.classify(sql);
            if v.read_only_refusal.is_none() != *allowed {
                wrong.push(format!("{sql:?}: expected allowed={allowed}, got {v:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        assert!(CASES.len() >= 40);
    }

    #[test]
    fn classes_for_audit() {
        assert_eq!(classify("SELECT 1").class, Class::Read);
        assert_eq!(classify("INSERT INTO t VALUES (1)").class, Class::Write);
        assert_eq!(classify("CREATE TABLE x (a int)").class, Class::Ddl);
        assert_eq!(classify("BEGIN").class, Class::Transaction);
        assert_eq!(classify("SET a = 1").class, Class::Session);
        assert_eq!(classify("SELECT 1; DROP TABLE t").class, Class::Ddl);
        assert_eq!(classify("not sql at all").class, Class::Unparsed);
        assert_eq!(classify("  ; ").class, Class::Empty);
    }

    #[test]
    fn the_cache_key_needs_no_words_and_is_the_same_fingerprint() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42;",
            "select E'a\\'b' , e'x' FROM \"Tëst\" -- c\n WHERE x = $1",
            "SELECT ÄÖÜ, Straße, ΣΑΣ FROM t /* a /* nested */ b */ WHERE s = $tag$x$tag$  ",
            "INSERT INTO t VALUES (1.5e3, 'it''s')",
            "",
        ] {
            assert_eq!(lex_with(sql, None), lex(sql).0, "{sql}");
        }
    }

    #[test]
    fn the_cache_reuses_verdicts_across_literals() {
        let c = Classifier::new();
        c.classify("SELECT * FROM t WHERE id = 1");
        c.classify("SELECT * FROM t WHERE id = 2");
        assert_eq!(c.len(), 1);
    }
}
