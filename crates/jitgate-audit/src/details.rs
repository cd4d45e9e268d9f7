//! The `details` of the events the gateway writes, one struct per event family, so the fields
//! of an event kind are written in one place and are the same wherever it is recorded. The
//! names are the JSON keys on disk (unchanged from when they were built by hand); readers
//! (search, the CLI, webhooks) see plain JSON. Attach one with [`crate::Event::detail`].
//!
//! `pg.statement` has its own hot-path writer ([`crate::Statement`]) and is not here.
#![allow(
    missing_docs,
    reason = "a field's JSON key is its documentation unless a comment says more"
)]

use jiff::Timestamp;
use serde::Serialize;

/// `request.*`: the request as it stands after the change.
#[derive(Debug, Serialize)]
pub struct Request<'a> {
    pub identity: &'a str,
    pub access: &'a str,
    /// Human form (`1h`).
    pub duration: String,
    pub policy: &'a str,
    pub ticket: Option<&'a str>,
    pub state: &'a str,
    /// Index of the approval step it waits at.
    pub step: usize,
    pub extends_grant: Option<i64>,
}

/// `request.approval_added`: one step of several approved.
#[derive(Debug, Serialize)]
pub struct ApprovalAdded<'a> {
    pub identity: &'a str,
    pub approvals: usize,
    pub next_step: Option<&'a str>,
    pub comment: Option<&'a str>,
}

/// `request.escalated`.
#[derive(Debug, Serialize)]
pub struct Escalated<'a> {
    pub escalate_to: &'a [String],
}

/// `grant.activated`.
#[derive(Debug, Serialize)]
pub struct GrantActivated<'a> {
    pub identity: &'a str,
    pub access: &'a str,
    pub starts_at: Timestamp,
    pub expires_at: Timestamp,
    pub policy: &'a str,
}

/// `grant.revoked`, `grant.released`.
#[derive(Debug, Serialize)]
pub struct GrantEnded<'a> {
    pub identity: &'a str,
    pub access: &'a str,
    pub sessions_killed: usize,
}

/// `grant.expired` (`while_down`: it expired while the gateway was stopped).
#[derive(Debug, Serialize)]
pub struct GrantExpired<'a> {
    pub identity: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<&'a str>,
    pub expires_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions_killed: Option<usize>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub while_down: bool,
    /// Why it ended before its `expires_at`: `single_session`, `idle`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<&'a str>,
}

/// `grant.expiring`: the warning before the end.
#[derive(Debug, Serialize)]
pub struct GrantExpiring<'a> {
    pub identity: &'a str,
    pub expires_at: Timestamp,
}

/// `session.started`.
#[derive(Debug, Serialize)]
pub struct SessionStarted<'a> {
    pub identity: &'a str,
    pub protocol: &'a str,
    pub access: &'a str,
    pub client: &'a str,
}

/// `session.ended`.
#[derive(Debug, Serialize)]
pub struct SessionEnded<'a> {
    pub identity: &'a str,
    pub protocol: &'a str,
    /// `ok`, `expired`, `revoked`, `killed`, `error`, ...
    pub outcome: &'a str,
    /// SSH: how the upstream side ended (`exited on SIGTERM`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_end: Option<&'a str>,
}

/// `session.killed` (by an admin or approver).
#[derive(Debug, Serialize)]
pub struct SessionKilled<'a> {
    pub identity: &'a str,
}

/// `auth.failed` on a protocol front end.
#[derive(Debug, Serialize)]
pub struct AuthFailed<'a> {
    pub protocol: &'a str,
    pub client: &'a str,
    pub reason: &'a str,
}

/// `login`: a gateway token minted for a verified identity (never the token itself).
#[derive(Debug, Serialize)]
pub struct Login<'a> {
    pub method: &'a str,
    pub groups: &'a [String],
    pub subject: &'a str,
    pub token_id: &'a str,
    pub expires_at: String,
}

/// `login.failed`.
#[derive(Debug, Serialize)]
pub struct LoginFailed<'a> {
    pub method: &'a str,
    pub error: String,
}

/// `logout`, `token.revoked`.
#[derive(Debug, Serialize)]
pub struct TokenRevoked<'a> {
    pub token_id: &'a str,
}

/// `token.created`: a machine token.
#[derive(Debug, Serialize)]
pub struct TokenCreated<'a> {
    pub identity: &'a str,
    pub groups: &'a [String],
}

/// `ssh.cert_issued`: the key's type and base64 only (no comment).
#[derive(Debug, Serialize)]
pub struct SshCertIssued {
    pub valid_before: u64,
    pub key: String,
}

/// `ssh.host_key_mismatch`.
#[derive(Debug, Serialize)]
pub struct HostKeyMismatch<'a> {
    pub address: &'a str,
    pub presented: &'a str,
    pub why: String,
}

/// `ssh.forward`, `ssh.forward_denied`.
#[derive(Debug, Serialize)]
pub struct Forward<'a> {
    pub host: &'a str,
    pub port: u32,
}

/// `ssh.shell`: an interactive shell opened.
#[derive(Debug, Serialize)]
pub struct Shell<'a> {
    pub login: &'a str,
}

/// `ssh.command` typed at a shell (`line`, clipped).
#[derive(Debug, Serialize)]
pub struct ShellLine<'a> {
    pub line: String,
    pub login: &'a str,
}

/// `ssh.exec`: a command run without a shell (`command`, clipped).
#[derive(Debug, Serialize)]
pub struct Exec<'a> {
    pub command: String,
    pub login: &'a str,
    pub pty: bool,
}

/// `ssh.subsystem` (`sftp`, ...).
#[derive(Debug, Serialize)]
pub struct Subsystem<'a> {
    pub name: String,
    pub login: &'a str,
}

/// `ssh.sftp`: one file operation seen by the SFTP observer (paths clipped).
#[derive(Debug, Serialize)]
pub struct Sftp<'a> {
    pub op: &'a str,
    pub path: String,
    pub path2: Option<String>,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// `ssh.channel_closed` of a session channel (shell, exec, subsystem).
#[derive(Debug, Serialize)]
pub struct ChannelClosed {
    /// `session`, `shell`, `exec`, `subsystem`.
    pub channel: &'static str,
    pub command: Option<String>,
    /// Exit status or signal, as the upstream reported it.
    pub exit: Option<String>,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    /// The asciicast file, when the channel had a terminal.
    pub recording: Option<String>,
    pub upstream_end: Option<String>,
}

/// `ssh.channel_closed` of a forwarded TCP channel.
#[derive(Debug, Serialize)]
pub struct ForwardClosed {
    pub channel: &'static str,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
}

/// `config.reloaded`: what the new catalog holds.
#[derive(Debug, Serialize)]
pub struct Reloaded {
    pub resources: usize,
    pub policies: usize,
    pub identities: usize,
}

/// `gateway.started`.
#[derive(Debug, Serialize)]
pub struct Started<'a> {
    pub version: &'a str,
    pub http: &'a str,
}

/// `gateway.drain`: `draining` true when it began, false when it was undone.
#[derive(Debug, Serialize)]
pub struct Drain {
    pub draining: bool,
    /// Live sessions at that moment (they go on).
    pub sessions: usize,
}

/// `gateway.stopped`.
#[derive(Debug, Serialize)]
pub struct Stopped {
    pub sessions_killed: usize,
}

/// `chain.continued`: the first line of a file after a rotation.
#[derive(Debug, Serialize)]
pub struct ChainContinued {
    pub previous_file: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(d: impl Serialize) -> String {
        serde_json::to_string(&d).unwrap()
    }

    /// The keys on disk are the ones the hand-built JSON had: readers and saved searches rely
    /// on them.
    #[test]
    fn details_keep_their_keys_on_disk() {
        let at: Timestamp = "2026-12-03T12:00:00Z".parse().unwrap();
        assert_eq!(
            json(SessionEnded {
                identity: "a",
                protocol: "ssh",
                outcome: "ok",
                upstream_end: None
            }),
            r#"{"identity":"a","protocol":"ssh","outcome":"ok"}"#
        );
        assert_eq!(
            json(GrantExpired {
                identity: "a",
                access: None,
                expires_at: at,
                sessions_killed: None,
                while_down: true,
                ended: None,
            }),
            r#"{"identity":"a","expires_at":"2026-12-03T12:00:00Z","while_down":true}"#
        );
        assert_eq!(
            json(GrantExpired {
                identity: "a",
                access: Some("read-only"),
                expires_at: at,
                sessions_killed: Some(2),
                while_down: false,
                ended: None,
            }),
            r#"{"identity":"a","access":"read-only","expires_at":"2026-12-03T12:00:00Z","sessions_killed":2}"#
        );
        let e = crate::Event::new(crate::Kind::GatewayStopped, at).detail(Stopped { sessions_killed: 3 });
        assert_eq!(e.details, serde_json::json!({"sessions_killed": 3}));
    }
}
