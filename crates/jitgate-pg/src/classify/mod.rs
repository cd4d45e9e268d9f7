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

use serde_json::Value;

mod cache;
pub use cache::{Classifier, masked_key};

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
mod tests;
