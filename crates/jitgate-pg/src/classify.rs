//! Statement inspection: what class a SQL text is, and whether a `read-only` grant may run it.
//!
//! **PostgreSQL reads the SQL here.** Verdicts come from PostgreSQL's own scanner and grammar
//! (libpg_query, through the `pg_query` crate): statement boundaries, comments, every string
//! form, quoted and Unicode-escaped identifiers are read exactly as the server reads them, so no
//! word can hide from the checks in a place the server does not look. The whole parse tree is
//! walked (every node of every statement, not a chosen subset), and the read-only rules are an
//! allow-list of statement kinds plus refusals of the escapes a read-only transaction does not
//! stop by itself:
//! - statement kinds other than queries, EXPLAIN, SHOW, cursors, prepared-statement plumbing,
//!   transaction control, SET/RESET, LISTEN/UNLISTEN, DISCARD and `COPY ... TO STDOUT`, found
//!   anywhere in the tree (so data-modifying CTEs, `EXPLAIN ANALYZE <write>`, `PREPARE <write>`
//!   and `DECLARE ... FOR <write>` are refused too); `SELECT INTO`; row locks;
//! - SET/RESET/`set_config` of the settings that keep the session read-only or change how text
//!   is read (`default_transaction_read_only`, `transaction_read_only`, `role`,
//!   `session_authorization`, `client_encoding`, `standard_conforming_strings`, ...), and
//!   `BEGIN`/`START TRANSACTION`/`SET TRANSACTION`/`SET SESSION CHARACTERISTICS ... READ WRITE`;
//! - functions that act outside the transaction or evaluate SQL text the gateway cannot see
//!   (`dblink*`, `set_config`, backend signals, advisory locks, large objects, `query_to_xml`,
//!   `ts_stat`, ...).
//!
//! These checks are defence in depth: the session itself runs upstream with
//! `default_transaction_read_only=on` under a credential that is checked not to be a superuser
//! (see `frontend.rs`), so PostgreSQL refuses writes whatever the gateway thinks.
//!
//! **The verdict cache cannot be confused.** Parsing costs tens of microseconds, so verdicts are
//! cached, under two kinds of key that never collide:
//! - the exact text (prepared and extended-protocol statements, which repeat byte for byte);
//! - a *masked* text, built only for texts made of plain tokens (ASCII words, integers of at most
//!   nine digits, standard strings without backslashes, white space and operator characters):
//!   each integer and string literal is replaced by a marker byte, everything else is kept
//!   verbatim. Any other character (quotes, `$`, `&`, backslashes, non-ASCII outside strings,
//!   control characters) or comment opener makes the text unmaskable and it is looked up exactly.
//!   Two texts with one masked key differ only inside literals whose token kind cannot change
//!   (no overflow to a float, no prefix, no escape), so PostgreSQL reads them as the same token
//!   sequence with other constant values; the verdict never looks at a constant's value (a unit
//!   test and the fuzz property check it), so they share a verdict soundly.
//!
//! A verdict is a function of its key alone, so one session cannot change another's verdicts
//! (there is nothing to poison); the cache is bounded in bytes (two generations: when the young
//! one fills, the old one is dropped).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

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
    /// The text carries a password (`CREATE/ALTER ROLE|USER ... PASSWORD`): audit it redacted.
    pub secret: bool,
    /// The text ends a transaction (COMMIT, ROLLBACK, END, ABORT, in any statement).
    pub ends_transaction: bool,
}

/// Settings a read-only session may not change: what keeps it read-only, who it is, and how the
/// server reads text.
const PROTECTED_SETTINGS: &[&str] = &[
    "default_transaction_read_only",
    "transaction_read_only",
    "role",
    "session_authorization",
    "client_encoding",
    "standard_conforming_strings",
    "backslash_quote",
    "escape_string_warning",
    "session_replication_role",
    "default_transaction_isolation_read_write",
];

/// Functions a read-only session may not call: they act outside the transaction (other
/// backends, connections, locks, files, WAL) or evaluate SQL text the gateway cannot read.
/// Writes inside the database are refused by PostgreSQL's read-only transaction; this list is
/// for what that does not stop.
const DENIED_FUNCTIONS: &[&str] = &[
    "set_config",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_signal_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_promote",
    "pg_log_backend_memory_contexts",
    "pg_notify",
    "pg_logical_emit_message",
    "pg_import_system_collations",
    "pg_drop_replication_slot",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_replication_slot_advance",
    "query_to_xml",
    "query_to_xml_and_xmlschema",
    "query_to_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "ts_stat",
    "ts_rewrite",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_file_write",
    "pg_file_unlink",
    "pg_file_rename",
    "pg_file_sync",
    "lowrite",
    "gin_clean_pending_list",
    "txid_current",
    "pg_current_xact_id",
];

/// Function name prefixes denied the same way (families).
const DENIED_PREFIXES: &[&str] = &[
    "dblink",
    "lo_",
    "pg_advisory",
    "pg_try_advisory",
    "pg_stat_reset",
    "pg_replication_origin",
    "postgres_fdw",
    "pg_wal_replay",
    "pg_logical_slot",
    "brin_",
];

/// Statement kinds a read-only session may run (each further checked below where noted).
const ALLOWED_STATEMENTS: &[&str] = &[
    "SelectStmt",
    "ExplainStmt",
    "VariableShowStmt",
    "VariableSetStmt",
    "TransactionStmt",
    "DeclareCursorStmt",
    "FetchStmt",
    "ClosePortalStmt",
    "PrepareStmt",
    "ExecuteStmt",
    "DeallocateStmt",
    "ListenStmt",
    "UnlistenStmt",
    "DiscardStmt",
    "CopyStmt",
];

/// `TransactionStmtKind` values (pg_query's protobuf numbering).
const TRANS_COMMIT: i64 = 3;
const TRANS_ROLLBACK: i64 = 4;
const TRANS_PREPARE: i64 = 8;

/// The audit class of a top-level statement node.
fn class_of(kind: &str, node: &Value) -> Class {
    match kind {
        "SelectStmt" | "VariableShowStmt" | "DeclareCursorStmt" | "FetchStmt" | "ClosePortalStmt" | "ExecuteStmt"
        | "DeallocateStmt" => Class::Read,
        "ExplainStmt" => {
            let analyze = node
                .get("options")
                .and_then(Value::as_array)
                .is_some_and(|o| o.iter().any(|d| defelem_name(d) == Some("analyze")));
            let inner = statement_of(node.get("query"));
            match inner {
                Some((k, n)) if analyze => class_of(k, n).max(Class::Read),
                _ => Class::Read,
            }
        }
        "PrepareStmt" => statement_of(node.get("query")).map_or(Class::Read, |(k, n)| class_of(k, n)),
        "CopyStmt" => {
            if node.get("is_from").and_then(Value::as_bool) == Some(true) {
                Class::Write
            } else {
                Class::Read
            }
        }
        "TransactionStmt" => Class::Transaction,
        "VariableSetStmt" | "DiscardStmt" | "ListenStmt" | "UnlistenStmt" => Class::Session,
        "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" | "TruncateStmt" | "CallStmt" | "NotifyStmt"
        | "LockStmt" | "DoStmt" | "VacuumStmt" | "RefreshMatViewStmt" | "LoadStmt" | "ClusterStmt" | "ReindexStmt"
        | "CheckPointStmt" => Class::Write,
        k if [
            "Create", "Alter", "Drop", "Grant", "Revoke", "Comment", "Rename", "Define", "Sec", "Import",
        ]
        .iter()
        .any(|p| k.starts_with(p)) =>
        {
            Class::Ddl
        }
        _ => Class::Other,
    }
}

/// The statement node inside a `Node` wrapper: `{"node": {"SelectStmt": {...}}}`.
fn statement_of(v: Option<&Value>) -> Option<(&str, &Value)> {
    let inner = v?.get("node")?.as_object()?;
    inner.iter().next().map(|(k, n)| (k.as_str(), n))
}

fn defelem_name(v: &Value) -> Option<&str> {
    v.get("node")?.get("DefElem")?.get("defname")?.as_str()
}

/// The integer a DefElem carries (`READ ONLY` is `transaction_read_only = 1`, from keywords).
fn defelem_int(v: &Value) -> Option<i64> {
    let arg = v.get("node")?.get("DefElem")?.get("arg")?.get("node")?;
    arg.get("AConst")?.get("val")?.get("Ival")?.get("ival")?.as_i64()
}

/// Strings of a name list (`[{"node": {"String": {"sval": "x"}}}, ...]`).
fn names(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|n| n.get("node")?.get("String")?.get("sval")?.as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// The read-only rule for one node of the tree (any depth), if it refuses.
fn refuse_node(kind: &str, node: &Value) -> Option<String> {
    if kind.ends_with("Stmt") && kind != "RawStmt" && !ALLOWED_STATEMENTS.contains(&kind) {
        let label = kind.trim_end_matches("Stmt");
        return Some(format!("{label} statements"));
    }
    match kind {
        "IntoClause" => Some("SELECT INTO (it creates a table)".into()),
        "LockingClause" => Some("row locks (FOR UPDATE/SHARE)".into()),
        "FuncCall" => {
            let n = names(node.get("funcname"));
            let name = n.last().map(|s| s.to_ascii_lowercase()).unwrap_or_default();
            let denied =
                DENIED_FUNCTIONS.contains(&name.as_str()) || DENIED_PREFIXES.iter().any(|p| name.starts_with(p));
            denied.then(|| format!("function {name}() (it acts outside the transaction or runs SQL text)"))
        }
        "VariableSetStmt" => {
            let name = node
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_ascii_lowercase();
            if PROTECTED_SETTINGS.contains(&name.as_str()) {
                return Some(format!("changing {name}"));
            }
            // SET TRANSACTION / SET SESSION CHARACTERISTICS AS TRANSACTION: modes as DefElems.
            read_write_mode(node.get("args"))
        }
        "TransactionStmt" => {
            let k = node.get("kind").and_then(Value::as_i64).unwrap_or(0);
            if k >= TRANS_PREPARE {
                return Some("two-phase commit".into());
            }
            read_write_mode(node.get("options"))
        }
        "CopyStmt" => {
            let flag = |f: &str| node.get(f).and_then(Value::as_bool) == Some(true);
            let file = node
                .get("filename")
                .and_then(Value::as_str)
                .is_some_and(|f| !f.is_empty());
            if flag("is_from") {
                Some("COPY FROM".into())
            } else if flag("is_program") {
                Some("COPY TO PROGRAM".into())
            } else if file {
                Some("COPY TO a server file (only TO STDOUT)".into())
            } else {
                None
            }
        }
        _ => None,
    }
}

/// `READ WRITE` among transaction modes: a `transaction_read_only` DefElem that is not 1.
fn read_write_mode(opts: Option<&Value>) -> Option<String> {
    let opts = opts.and_then(Value::as_array)?;
    opts.iter()
        .any(|d| defelem_name(d) == Some("transaction_read_only") && defelem_int(d) != Some(1))
        .then(|| "READ WRITE transactions".into())
}

/// Visit every node of the tree: keys that start with an upper-case letter are node kinds
/// (protobuf field names are snake_case; `Node` wrappers carry the kind as their one key), and
/// every value is descended into, so no field of any node type is skipped. Typed fields are
/// not wrapped; the one that matters (`into_clause`) is reported as `IntoClause`.
fn walk<'a>(v: &'a Value, f: &mut impl FnMut(&'a str, &'a Value)) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k.starts_with(|c: char| c.is_ascii_uppercase()) {
                    f(k, x);
                } else if k == "into_clause" && !x.is_null() {
                    // A typed field (not a Node wrapper): SELECT INTO.
                    f("IntoClause", x);
                }
                walk(x, f);
            }
        }
        Value::Array(a) => {
            for x in a {
                walk(x, f);
            }
        }
        _ => {}
    }
}

/// The verdict on text that cannot be read: refused under read-only, `why` says why.
pub fn unparsed(why: String) -> Verdict {
    Verdict {
        class: Class::Unparsed,
        statements: 1,
        read_only_refusal: Some(why),
        secret: false,
        ends_transaction: false,
    }
}

/// Classify `sql` from scratch (no cache), with PostgreSQL's parser.
pub fn classify(sql: &str) -> Verdict {
    let tree = match pg_query::parse(sql, pg_query::ParserOptions::default()) {
        Ok(t) => t,
        Err(e) => {
            let msg = match e {
                pg_query::Error::Parse(m) | pg_query::Error::Scan(m) => m,
                pg_query::Error::Conversion(_) => "the text contains a NUL byte".into(),
                other => other.to_string(),
            };
            return unparsed(format!("statements PostgreSQL's parser rejects ({msg})"));
        }
    };
    let json = match serde_json::to_value(&tree.protobuf) {
        Ok(v) => v,
        Err(e) => {
            return unparsed(format!("statements jitgate cannot inspect ({e})"));
        }
    };
    let stmts = json
        .get("stmts")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let mut class = Class::Empty;
    let mut refusal: Option<String> = None;
    let mut secret = false;
    let mut ends_transaction = false;
    // COPY ... TO with no file name: STDOUT, or `TO ''` (a file to the server): the tree holds an
    // empty name for both, so the keyword itself is looked for with the server's scanner.
    let mut copies_to_stdout: Vec<(usize, usize)> = Vec::new();
    for (i, raw) in stmts.iter().enumerate() {
        if let Some((kind, node)) = statement_of(raw.get("stmt")) {
            class = class.max(class_of(kind, node));
            let k = node.get("kind").and_then(Value::as_i64).unwrap_or(0);
            if kind == "TransactionStmt" && (k == TRANS_COMMIT || k == TRANS_ROLLBACK) {
                ends_transaction = true;
                // A session default changed by a function (set_config inside it) applies from the
                // next transaction on; the gateway learns of it from ParameterStatus only at the
                // end of the message. So a transaction may end only as the message's last
                // statement, where the next one cannot start before the gateway has looked.
                if i + 1 < stmts.len() && refusal.is_none() {
                    refusal = Some("ending a transaction before the last statement of a message".into());
                }
            }
        }
        walk(raw, &mut |kind, node| {
            if refusal.is_none() {
                refusal = refuse_node(kind, node);
            }
            if kind == "CopyStmt" && node.get("is_from").and_then(Value::as_bool) != Some(true) {
                let at = |k: &str| raw.get(k).and_then(Value::as_u64).and_then(|x| usize::try_from(x).ok());
                let start = at("stmt_location").unwrap_or(0);
                let len = at("stmt_len").filter(|l| *l > 0).unwrap_or(usize::MAX - start);
                copies_to_stdout.push((start, start.saturating_add(len)));
            }
            if matches!(kind, "CreateRoleStmt" | "AlterRoleStmt") {
                let opts = node.get("options").and_then(Value::as_array);
                secret |= opts.is_some_and(|o| o.iter().any(|d| defelem_name(d) == Some("password")));
            }
        });
    }
    if !copies_to_stdout.is_empty() && refusal.is_none() {
        let tokens = pg_query::scan(sql).map(|r| r.tokens).unwrap_or_default();
        if !copies_to_stdout.iter().all(|span| copy_targets_stdout(&tokens, *span)) {
            refusal = Some("COPY TO a server file (only TO STDOUT)".into());
        }
    }
    Verdict {
        class,
        statements: stmts.len(),
        read_only_refusal: refusal,
        secret,
        ends_transaction,
    }
}

/// In the COPY statement spanning `span`, the `TO` outside parentheses is followed by `STDOUT`.
fn copy_targets_stdout(tokens: &[pg_query::protobuf::ScanToken], span: (usize, usize)) -> bool {
    use pg_query::protobuf::Token;
    let inside: Vec<&pg_query::protobuf::ScanToken> = tokens
        .iter()
        .filter(|t| usize::try_from(t.start).is_ok_and(|s| s >= span.0 && s < span.1))
        .filter(|t| t.token != Token::SqlComment as i32 && t.token != Token::CComment as i32)
        .collect();
    let mut depth = 0i32;
    for (i, t) in inside.iter().enumerate() {
        if t.token == Token::Ascii40 as i32 {
            depth += 1;
        } else if t.token == Token::Ascii41 as i32 {
            depth -= 1;
        } else if depth == 0 && t.token == Token::To as i32 {
            return inside.get(i + 1).is_some_and(|n| n.token == Token::Stdout as i32);
        }
    }
    false
}

/// The masked key of a text made only of plain tokens, or `None` (see the module docs).
pub fn masked_key(sql: &str) -> Option<String> {
    masked(sql, None)
}

/// The masked key, and (when asked) the byte spans of the literals it masked.
fn masked(sql: &str, mut spans: Option<&mut Vec<(usize, usize)>>) -> Option<String> {
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
const GENERATION_BYTES: usize = 4 << 20;
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

/// `sql` with the password literals of `CREATE/ALTER ROLE|USER ... PASSWORD '...'` replaced by
/// `'***'`, found with PostgreSQL's own scanner (the string token after the PASSWORD keyword).
/// Text the scanner rejects is replaced whole, since its secret cannot be located.
pub fn redact(sql: &str) -> String {
    let Ok(tokens) = pg_query::scan(sql).map(|r| r.tokens) else {
        return "<redacted: statement with a password jitgate could not scan>".into();
    };
    let password = pg_query::protobuf::Token::Password as i32;
    let strings = [
        pg_query::protobuf::Token::Sconst as i32,
        pg_query::protobuf::Token::Usconst as i32,
    ];
    let mut out = String::with_capacity(sql.len());
    let mut last = 0usize;
    let mut after_password = false;
    for t in &tokens {
        let (Ok(s), Ok(e)) = (usize::try_from(t.start), usize::try_from(t.end)) else {
            continue;
        };
        let comment = t.token == pg_query::protobuf::Token::SqlComment as i32
            || t.token == pg_query::protobuf::Token::CComment as i32;
        if comment {
            continue;
        }
        if after_password && strings.contains(&t.token) && s >= last && e <= sql.len() {
            out.push_str(sql.get(last..s).unwrap_or(""));
            out.push_str("'***'");
            last = e;
        }
        after_password = t.token == password;
    }
    out.push_str(sql.get(last..).unwrap_or(""));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The read-only table: (statement, allowed).
    const CASES: &[(&str, bool)] = &[
        ("SELECT 1", true),
        ("select * from accounts where id = 1", true),
        ("SELECT count(*) FROM pgbench_accounts; SELECT now()", true),
        ("WITH x AS (SELECT 1) SELECT * FROM x", true),
        ("EXPLAIN SELECT * FROM t", true),
        ("EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM t", true),
        ("SHOW search_path", true),
        ("SHOW transaction_read_only", true),
        ("TABLE t", true),
        ("VALUES (1), (2)", true),
        ("SELECT 1 AS select, 2 AS \"update\", 3 AS delete", true),
        ("BEGIN", true),
        ("BEGIN READ ONLY", true),
        (
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
            true,
        ),
        ("BEGIN ISOLATION LEVEL REPEATABLE READ", true),
        ("COMMIT", true),
        ("ROLLBACK", true),
        ("SAVEPOINT a", true),
        ("SET search_path = public", true),
        ("SET statement_timeout TO 1000", true),
        ("RESET search_path", true),
        ("RESET ALL", true),
        ("DISCARD ALL", true),
        ("LISTEN ch", true),
        ("COPY (SELECT 1) TO STDOUT", true),
        ("COPY t TO STDOUT WITH (FORMAT csv)", true),
        ("DECLARE c CURSOR FOR SELECT 1", true),
        ("PREPARE p AS SELECT $1::int", true),
        ("EXECUTE p(1)", true),
        ("SELECT 'insert into t values (1)'", true),
        ("SELECT upper('delete')", true),
        ("SELECT current_setting('default_transaction_read_only')", true),
        ("", true),
        (" -- only a comment", true),
        ("INSERT INTO t VALUES (1)", false),
        ("UPDATE t SET a = 1", false),
        ("DELETE FROM t", false),
        ("SELECT 1; DELETE FROM t", false),
        ("SELECT 1; COMMIT; SELECT 2", false),
        ("SELECT 1; ROLLBACK; SELECT 2", false),
        ("BEGIN; SELECT 1; COMMIT", true),
        ("END; SELECT 1", false),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", false),
        ("EXPLAIN ANALYZE DELETE FROM t", false),
        ("EXPLAIN (ANALYZE) CREATE TABLE x AS SELECT 1", false),
        ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", false),
        ("SET ROLE postgres", false),
        ("SET LOCAL ROLE postgres", false),
        ("SET \"role\" = postgres", false),
        ("SET SESSION AUTHORIZATION postgres", false),
        ("RESET ROLE", false),
        ("RESET SESSION AUTHORIZATION", false),
        ("SET default_transaction_read_only = off", false),
        ("SET \"default_transaction_read_only\" = off", false),
        ("SET U&\"default\\005ftransaction\\005fread\\005fonly\" = off", false),
        ("SET transaction_read_only TO on", false),
        ("RESET default_transaction_read_only", false),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", false),
        ("SET TRANSACTION READ WRITE", false),
        ("BEGIN READ WRITE", false),
        ("START TRANSACTION READ WRITE", false),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE", false),
        ("SET client_encoding = 'SJIS'", false),
        ("SET NAMES 'LATIN1'", false),
        ("SET standard_conforming_strings = off", false),
        ("PREPARE TRANSACTION 'x'", false),
        ("COPY t FROM STDIN", false),
        ("COPY t TO '/tmp/x'", false),
        ("COPY t TO PROGRAM 'id'", false),
        ("COPY (SELECT 1) TO '/tmp/x'", false),
        ("COPY t TO ''", false),
        ("COPY t TO '' ; SELECT 1 AS stdout", false),
        ("COPY (SELECT 'a' SIMILAR TO stdout FROM t) TO ''", false),
        ("COPY (SELECT 'a' SIMILAR TO 'b') TO STDOUT", true),
        ("SELECT brin_summarize_new_values('i')", false),
        ("PREPARE p AS DELETE FROM t", false),
        (
            "DECLARE c CURSOR FOR WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            false,
        ),
        ("CALL do_things()", false),
        ("DO $$ BEGIN DELETE FROM t; END $$", false),
        ("CREATE TABLE x (a int)", false),
        ("CREATE TEMP TABLE x (a int)", false),
        ("DROP TABLE t", false),
        ("ALTER TABLE t ADD COLUMN b int", false),
        ("ALTER SYSTEM SET fsync = off", false),
        ("GRANT SELECT ON t TO bob", false),
        ("TRUNCATE t", false),
        ("LOAD 'plpgsql'", false),
        ("SELECT * INTO new_t FROM t", false),
        ("SELECT * FROM t FOR UPDATE", false),
        ("SELECT * FROM t FOR SHARE", false),
        ("SELECT * FROM t FOR NO KEY UPDATE", false),
        ("SELECT set_config('transaction_read_only', 'off', false)", false),
        (
            "SELECT pg_catalog.set_config('default_transaction_read_only', 'off', false)",
            false,
        ),
        (
            "SELECT \"set_config\"('default_transaction_read_only', 'off', false)",
            false,
        ),
        (
            "SELECT set_config /* x */ ('default_transaction_read_only', 'off', false)",
            false,
        ),
        (
            "SELECT U&\"set\\005fconfig\"('default_transaction_read_only', 'off', false)",
            false,
        ),
        (
            "SELECT 1 /* /* nested */ still a comment */; SELECT set_config('a.b','c',false)",
            false,
        ),
        ("SELECT 1 --\rSELECT set_config('a.b','c',false)", false),
        ("SELECT * FROM (SELECT set_config('a.b','c',false)) s", false),
        ("SELECT pg_terminate_backend(123)", false),
        ("SELECT pg_cancel_backend(123)", false),
        ("SELECT dblink_exec('x', 'delete from t')", false),
        ("SELECT * FROM dblink('x', 'select 1') AS t(a int)", false),
        ("SELECT pg_advisory_lock(1)", false),
        ("SELECT lo_import('/etc/passwd')", false),
        (
            "SELECT query_to_xml('delete from t returning 1', true, true, '')",
            false,
        ),
        ("SELECT * FROM ts_stat('select 1')", false),
        ("NOTIFY ch, 'x'", false),
        ("VACUUM t", false),
        ("ANALYZE t", false),
        ("CHECKPOINT", false),
        ("LOCK TABLE t", false),
        ("SELEC 1 FROM", false),
        ("REFRESH MATERIALIZED VIEW mv", false),
        (
            "UPDATE pg_settings SET setting = 'off' WHERE name = 'default_transaction_read_only'",
            false,
        ),
    ];

    #[test]
    fn read_only_table() {
        let c = Classifier::new();
        let mut wrong = Vec::new();
        for (sql, allowed) in CASES {
            for v in [c.classify(sql), Arc::new(classify(sql))] {
                if v.read_only_refusal.is_none() != *allowed {
                    wrong.push(format!("{sql:?}: expected allowed={allowed}, got {v:?}"));
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        assert!(CASES.len() >= 100);
    }

    #[test]
    fn classes_for_audit() {
        assert_eq!(classify("SELECT 1").class, Class::Read);
        assert_eq!(classify("INSERT INTO t VALUES (1)").class, Class::Write);
        assert_eq!(classify("CREATE TABLE x (a int)").class, Class::Ddl);
        assert_eq!(classify("BEGIN").class, Class::Transaction);
        assert_eq!(classify("SET a.b = 1").class, Class::Session);
        assert_eq!(classify("SELECT 1; DROP TABLE t").class, Class::Ddl);
        assert_eq!(classify("COPY t FROM STDIN").class, Class::Write);
        assert_eq!(classify("EXPLAIN ANALYZE DELETE FROM t").class, Class::Write);
        assert_eq!(classify("not sql at all").class, Class::Unparsed);
        assert_eq!(classify("  ; ").class, Class::Empty);
        assert_eq!(classify("SELECT 1; SELECT 2").statements, 2);
    }

    #[test]
    fn masked_keys_cover_plain_texts_only() {
        let k = |s: &str| masked_key(s);
        assert_eq!(k("SELECT * FROM t WHERE id = 42"), k("SELECT * FROM t WHERE id = 7"));
        assert_eq!(k("SELECT 'a' , 'it''s'"), k("SELECT 'b' , 'x'"));
        assert_ne!(k("SELECT 1"), k("SELECT '1'"));
        assert_ne!(k("SELECT 1 <= 2"), k("SELECT 1 < = 2"));
        for unmaskable in [
            "SELECT E'x'",
            "SELECT 'a\\b'",
            "SELECT 1 -- c",
            "SELECT /* c */ 1",
            "SELECT \"Id\" FROM t",
            "SELECT $1",
            "SELECT $$x$$",
            "SELECT U&'x'",
            "SELECT 1234567890",
            "SELECT 1.5",
            "SELECT 1e5",
            "SELECT 0x1f",
            "SELECT B'101'",
            "SELECT ü",
            "SELECT 1\x0c",
            "SELECT 'unterminated",
        ] {
            assert_eq!(k(unmaskable), None, "{unmaskable}");
        }
    }

    #[test]
    fn the_cache_shares_verdicts_across_literals_and_never_across_meanings() {
        let c = Classifier::new();
        c.classify("SELECT * FROM t WHERE id = 1");
        c.classify("SELECT * FROM t WHERE id = 2");
        assert_eq!(c.len(), 1);
        // Same fingerprint under the old lexer, different meanings: both must stand alone.
        assert!(c.classify("SELECT 1 /* */ ").read_only_refusal.is_none());
        assert!(
            c.classify("SELECT 1 /* */ ; SELECT set_config('a.b','c',false)")
                .read_only_refusal
                .is_some()
        );
        assert!(
            c.classify("SELECT E'\\' ; SELECT set_config(''a.b'',''c'',false) ; '")
                .read_only_refusal
                .is_none()
        );
        assert!(
            c.classify("SELECT '\\' ; SELECT set_config('a.b','c',false) ; '")
                .read_only_refusal
                .is_some()
        );
    }

    #[test]
    fn the_cache_is_bounded_in_bytes() {
        let c = Classifier::new();
        for i in 0..3000 {
            let sql = format!("SELECT \"c{i}\", '{}' FROM t", "x".repeat(2000));
            c.classify(&sql);
        }
        assert!(c.bytes() <= 2 * GENERATION_BYTES + 4096, "{}", c.bytes());
    }

    #[test]
    fn a_nul_inside_a_literal_never_shares_a_cached_verdict() {
        // Found by the sql_classify fuzz target: "SELECT '\0a'" masked to the key of
        // "SELECT 'a'" and got its Read verdict, while PostgreSQL's parser rejects it.
        let c = Classifier::new();
        assert_eq!(c.classify("SELECT 'a'").class, Class::Read);
        assert_eq!(c.classify("SELECT '\0a'").class, Class::Unparsed);
    }

    #[test]
    fn passwords_are_redacted_with_the_servers_scanner() {
        let v = classify("ALTER ROLE bob PASSWORD 's3cr3t'");
        assert!(v.secret);
        assert!(classify("CREATE USER bob WITH LOGIN PASSWORD 'x'").secret);
        assert!(!classify("SELECT 'password'").secret);
        assert_eq!(
            redact("ALTER ROLE bob PASSWORD 's3cr3t'"),
            "ALTER ROLE bob PASSWORD '***'"
        );
        assert_eq!(
            redact("CREATE ROLE \"Bob\" LOGIN PASSWORD /* c */ E'it\\'s' VALID UNTIL 'infinity'"),
            "CREATE ROLE \"Bob\" LOGIN PASSWORD /* c */ '***' VALID UNTIL 'infinity'"
        );
        assert!(!redact("alter user x password $q$hunter2$q$").contains("hunter2"));
    }

    /// A tiny deterministic generator (xorshift), so the property runs without a dependency and
    /// the same texts every time.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            let n = usize::try_from(self.next() % xs.len() as u64).unwrap_or(0);
            xs[n]
        }
    }

    const FRAGMENTS: &[&str] = &[
        "SELECT",
        "select",
        "FROM",
        "t",
        "WHERE",
        "id",
        "=",
        "<",
        ">",
        "<=",
        "<>",
        "!=",
        "(",
        ")",
        ",",
        ";",
        ".",
        "*",
        "+",
        "-",
        "/",
        "%",
        "::",
        "int",
        "text",
        "AND",
        "OR",
        "NOT",
        "IN",
        "set_config",
        "nextval",
        "DELETE",
        "INSERT INTO",
        "UPDATE",
        "SET",
        "RESET",
        "BEGIN",
        "READ WRITE",
        "READ ONLY",
        "COMMIT",
        "EXPLAIN",
        "ANALYZE",
        "COPY",
        "TO",
        "STDOUT",
        "PROGRAM",
        "default_transaction_read_only",
        "role",
        "LIMIT",
        "1",
        "42",
        "007",
        "123456789",
        "1234567890",
        "1.5",
        ".5",
        "1e3",
        "0x1F",
        "1_000",
        "'a'",
        "'it''s'",
        "''",
        "'x\\y'",
        "E'\\''",
        "U&'\\0041'",
        "B'101'",
        "X'1F'",
        "N'n'",
        "\"Q\"",
        "\"a\"\"b\"",
        "U&\"d\\0061\"",
        "$1",
        "$$d$$",
        "$t$ x $t$",
        "-- c\n",
        "--\r",
        "/* c */",
        "/* /* n */ */",
        "\n",
        "\r",
        "\t",
        " ",
        "  ",
        "\u{0c}",
        "é",
        "ß",
        "'é'",
        "?",
        "@",
        "#",
        "~",
        "^",
        "|",
        "&",
        "!",
        "[",
        "]",
        ":",
    ];

    fn generate(g: &mut Gen) -> String {
        let n = 1 + g.next() % 14;
        let mut s = String::new();
        for _ in 0..n {
            s.push_str(g.pick(FRAGMENTS));
            if !g.next().is_multiple_of(3) {
                s.push(' ');
            }
        }
        s
    }

    /// Replace every masked literal with another of the same kind.
    fn vary(sql: &str, spans: &[(usize, usize)], g: &mut Gen) -> String {
        let mut out = String::new();
        let mut last = 0;
        for &(s, e) in spans {
            out.push_str(&sql[last..s]);
            if sql.as_bytes()[s] == b'\'' {
                out.push_str(g.pick(&[
                    "'zz'",
                    "''",
                    "'a''b'",
                    "'delete from t'",
                    "'é'",
                    "'); DROP TABLE t; --'",
                ]));
            } else {
                out.push_str(g.pick(&["0", "9", "123456789", "77"]));
            }
            last = e;
        }
        out.push_str(&sql[last..]);
        out
    }

    /// Differential property against PostgreSQL's own scanner and parser: every text the hand
    /// lexer masks is one the server scans to the same literal tokens (no comment, no other
    /// constant), and varying the literals never changes the verdict (so one masked key can
    /// never stand for two meanings).
    #[test]
    fn masked_keys_agree_with_postgresqls_scanner_and_verdicts_ignore_literals() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let (mut masked_n, mut total) = (0, 0);
        let constants = [
            pg_query::protobuf::Token::Iconst as i32,
            pg_query::protobuf::Token::Sconst as i32,
            pg_query::protobuf::Token::Fconst as i32,
            pg_query::protobuf::Token::Bconst as i32,
            pg_query::protobuf::Token::Xconst as i32,
            pg_query::protobuf::Token::Usconst as i32,
            pg_query::protobuf::Token::Param as i32,
        ];
        let comments = [
            pg_query::protobuf::Token::SqlComment as i32,
            pg_query::protobuf::Token::CComment as i32,
        ];
        for _ in 0..20_000 {
            let sql = generate(&mut g);
            total += 1;
            // Never a panic, whatever the text.
            let v = classify(&sql);
            let mut spans = Vec::new();
            let Some(key) = masked(&sql, Some(&mut spans)) else {
                continue;
            };
            masked_n += 1;
            let tokens = pg_query::scan(&sql)
                .map(|r| r.tokens)
                .unwrap_or_else(|e| panic!("{sql:?}: masked but the scanner fails: {e}"));
            let theirs: Vec<(usize, usize)> = tokens
                .iter()
                .filter(|t| constants.contains(&t.token))
                .map(|t| {
                    (
                        usize::try_from(t.start).unwrap_or(0),
                        usize::try_from(t.end).unwrap_or(0),
                    )
                })
                .collect();
            assert_eq!(
                theirs, spans,
                "{sql:?}: literal tokens differ from the server's scanner: {tokens:?}"
            );
            assert!(
                !tokens.iter().any(|t| comments.contains(&t.token)),
                "{sql:?}: comment in a masked text"
            );
            for _ in 0..3 {
                let other = vary(&sql, &spans, &mut g);
                assert_eq!(
                    masked_key(&other).as_deref(),
                    Some(key.as_str()),
                    "{sql:?} vs {other:?}"
                );
                let w = classify(&other);
                if v.class == Class::Unparsed {
                    // Never cached; the parser's message may quote the literal.
                    assert_eq!(w.class, Class::Unparsed, "{sql:?} vs {other:?}");
                } else {
                    assert_eq!(w, v, "{sql:?} vs {other:?}: same masked key, other verdict");
                }
            }
        }
        assert!(
            masked_n > 2_000,
            "only {masked_n} of {total} generated texts were maskable"
        );
    }
}
