//! The database's tables, as numbered migrations (`user_version`).

/// Schema migrations, applied in order; `user_version` records how many ran.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    requester TEXT NOT NULL,
    state TEXT NOT NULL,
    version INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX requests_state ON requests(state);
CREATE TABLE grants (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    identity TEXT NOT NULL,
    resource TEXT NOT NULL,
    state TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX grants_state ON grants(state, expires_at);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    end_reason TEXT,
    body TEXT NOT NULL
);
CREATE INDEX sessions_open ON sessions(ended_at);
CREATE TABLE tokens (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE audit_events (
    seq INTEGER PRIMARY KEY,
    time INTEGER NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT,
    resource TEXT,
    grant_id INTEGER,
    session_id TEXT,
    body TEXT NOT NULL
);
CREATE INDEX audit_time ON audit_events(time);
CREATE INDEX audit_session ON audit_events(session_id);
"#,
    r#"
CREATE TABLE revoked_tokens (
    jti TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
"#,
    // Statement events are indexed without their line (body ''): `line_at` is its byte offset
    // in the audit file; search reads it back from there.
    r#"
ALTER TABLE audit_events ADD COLUMN line_at INTEGER;
"#,
    // Statement events are filed in runs instead: one row per session and index batch (up to
    // 8,192 events or 200 ms), `at` packing each statement's seq and byte offset in the audit
    // file (16 bytes, little-endian). Search reads the lines back from the file. Three B-tree
    // inserts per batch and session instead of three per statement.
    r#"
CREATE TABLE audit_runs (
    id INTEGER PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    min_time INTEGER NOT NULL,
    max_time INTEGER NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT,
    resource TEXT,
    grant_id INTEGER,
    session_id TEXT NOT NULL,
    at BLOB NOT NULL
);
CREATE INDEX audit_runs_last ON audit_runs(last_seq);
CREATE INDEX audit_runs_session ON audit_runs(session_id, last_seq);
"#,
    // Search by content. `audit_text` holds the words of every statement's SQL and every SSH
    // command (contentless, no positions: the lines stay in the log files and a search checks
    // the match on the line itself). Its rowid names the event: `-seq` for a row of
    // `audit_events`, `run id << 20 | index` for the index-th statement of a run.
    // `batch_last` (the highest seq of the run's index batch; runs of one batch interleave)
    // lets a newest-first search stop early. The index is derived from the log, so it is emptied
    // here and the next start re-indexes every audit file (rotated ones too).
    r#"
DELETE FROM audit_events;
DELETE FROM audit_runs;
ALTER TABLE audit_runs ADD COLUMN batch_last INTEGER NOT NULL DEFAULT 0;
CREATE VIRTUAL TABLE audit_text USING fts5(text, content='', detail=none, tokenize='unicode61 remove_diacritics 2');
"#,
];
