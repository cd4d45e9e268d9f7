//! The store's tables, as numbered migrations run under an advisory lock.

/// Advisory lock key for migrations ("jitg").
pub(super) const MIGRATION_LOCK: i64 = 0x6a69_7467;

pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE jitgate_requests (
    id BIGSERIAL PRIMARY KEY,
    requester TEXT NOT NULL,
    state TEXT NOT NULL,
    version BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX jitgate_requests_state ON jitgate_requests(state);
CREATE TABLE jitgate_grants (
    id BIGSERIAL PRIMARY KEY,
    identity TEXT NOT NULL,
    resource TEXT NOT NULL,
    state TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX jitgate_grants_state ON jitgate_grants(state, expires_at);
CREATE TABLE jitgate_sessions (
    id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    end_reason TEXT,
    kill_by TEXT,
    body TEXT NOT NULL
);
CREATE INDEX jitgate_sessions_open ON jitgate_sessions(node) WHERE ended_at IS NULL;
CREATE TABLE jitgate_tokens (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE jitgate_revoked_tokens (
    jti TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE TABLE jitgate_audit_events (
    node TEXT NOT NULL,
    seq BIGINT NOT NULL,
    time BIGINT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT,
    resource TEXT,
    grant_id BIGINT,
    session_id TEXT,
    body TEXT NOT NULL,
    PRIMARY KEY (node, seq)
);
CREATE INDEX jitgate_audit_time ON jitgate_audit_events(time);
CREATE INDEX jitgate_audit_session ON jitgate_audit_events(session_id);
"#,
    r#"
CREATE TABLE jitgate_nodes (
    node TEXT PRIMARY KEY,
    keys TEXT NOT NULL,
    started_at BIGINT NOT NULL
);
"#,
    // Search by content: the words of each statement's SQL and command (ASCII letters and
    // digits, lower-cased, computed by the gateway: jitgate_audit::text), GIN-indexed. Rows
    // indexed before this get theirs here, the same way.
    r#"
ALTER TABLE jitgate_audit_events ADD COLUMN words tsvector;
UPDATE jitgate_audit_events SET words = array_to_tsvector(array_remove(regexp_split_to_array(lower(
    CASE kind WHEN 'pg.statement' THEN body::jsonb->'details'->>'sql'
              WHEN 'ssh.exec' THEN body::jsonb->'details'->>'command'
              WHEN 'ssh.command' THEN body::jsonb->'details'->>'line'
              ELSE concat_ws(' ', body::jsonb->'details'->>'path', body::jsonb->'details'->>'path2') END),
    '[^a-z0-9]+'), ''))
WHERE kind IN ('pg.statement', 'ssh.exec', 'ssh.command', 'ssh.sftp');
CREATE INDEX jitgate_audit_words ON jitgate_audit_events USING gin (words) WHERE words IS NOT NULL;
"#,
];
