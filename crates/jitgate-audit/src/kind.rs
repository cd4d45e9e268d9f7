//! The audit vocabulary: every kind of event the gateway writes, as a type. The dotted names
//! are what the log holds (unchanged on disk); configuration (`[[notify.webhooks]] events`)
//! parses them with [`Kind::from_str`], which suggests the nearest name for a typo.

use std::fmt;
use std::str::FromStr;

macro_rules! kinds {
    ($($variant:ident => $name:literal: $what:literal,)*) => {
        /// A kind of audit event.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Kind {
            $(#[doc = $what] $variant,)*
        }

        impl Kind {
            /// Every kind, in the order the docs list them.
            pub const ALL: &'static [Kind] = &[$(Kind::$variant,)*];

            /// The name the log holds.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Kind::$variant => $name,)*
                }
            }

            /// One line on when it is written.
            pub const fn describe(self) -> &'static str {
                match self {
                    $(Kind::$variant => $what,)*
                }
            }
        }
    };
}

kinds! {
    RequestCreated => "request.created": "A user asked for access (or for an extension).",
    RequestApprovalAdded => "request.approval_added": "One approval of a request that needs several.",
    RequestApproved => "request.approved": "A request was approved (by a person or an auto-approval rule).",
    RequestDenied => "request.denied": "A request was denied.",
    RequestCancelled => "request.cancelled": "The requester (or an admin) withdrew a request.",
    RequestEscalated => "request.escalated": "A pending request was escalated to more approvers.",
    RequestExpired => "request.expired": "A pending request timed out undecided.",
    GrantActivated => "grant.activated": "A grant began.",
    GrantExtended => "grant.extended": "An approved extension moved a grant's end.",
    GrantStarted => "grant.started": "A first-use grant's first session started its clock.",
    BreakGlassOpened => "break_glass.opened": "Someone broke the glass: a grant opened without approvers (high severity).",
    BreakGlassReviewed => "break_glass.reviewed": "A reviewer closed a break-glass review.",
    BreakGlassOverdue => "break_glass.overdue": "A break-glass review passed its due time unclosed.",
    GrantExpiring => "grant.expiring": "A grant ends soon (the warning lead).",
    GrantExpired => "grant.expired": "A grant reached its end.",
    GrantRevoked => "grant.revoked": "An approver or admin revoked a grant.",
    GrantReleased => "grant.released": "The holder gave a grant back early.",
    SessionStarted => "session.started": "A Postgres or SSH session began.",
    SessionEnded => "session.ended": "A session ended.",
    SessionKilled => "session.killed": "An admin killed a session.",
    PgStatement => "pg.statement": "A SQL statement a Postgres session sent.",
    SshShell => "ssh.shell": "An SSH session opened a shell.",
    SshExec => "ssh.exec": "An SSH session ran a command.",
    SshSubsystem => "ssh.subsystem": "An SSH session started a subsystem (sftp).",
    SshCommand => "ssh.command": "A command line typed in an SSH shell.",
    SshSftp => "ssh.sftp": "An SFTP operation (open, remove, rename, ...).",
    SshForward => "ssh.forward": "A port forward the policy allows.",
    SshForwardDenied => "ssh.forward.denied": "A port forward the policy refuses.",
    SshChannelClosed => "ssh.channel.closed": "An SSH channel ended (with its exit status).",
    SshHostKeyMismatch => "ssh.host_key_mismatch": "An upstream SSH host presented a key that is not the pinned one.",
    SshCertIssued => "ssh.cert.issued": "The gateway signed an SSH certificate for a user.",
    AuthFailed => "auth.failed": "A Postgres or SSH login with a wrong token or key.",
    AuthUnavailable => "auth.unavailable": "A token could not be checked because the store did not answer.",
    Login => "login": "A user logged in through the identity provider.",
    LoginFailed => "login.failed": "A login through the identity provider failed.",
    Logout => "logout": "A user logged out (their token is revoked).",
    TokenCreated => "token.created": "An admin minted a machine token.",
    TokenRevoked => "token.revoked": "An admin revoked someone's gateway token.",
    ConfigReloaded => "config.reloaded": "gateway.toml was reloaded (SIGHUP).",
    ConfigReloadFailed => "config.reload_failed": "A reload was refused; the old configuration stays.",
    GatewayStarted => "gateway.started": "The gateway started.",
    GatewayStopped => "gateway.stopped": "The gateway stopped.",
    GatewayDrain => "gateway.drain": "An admin drained this gateway (or undid it): /readyz 503, new sessions refused.",
    ChainContinued => "chain.continued": "The first line of a rotated audit file, linked to the previous file.",
    ChainCheckpoint => "chain.checkpoint": "The gateway signed the chain's head with its checkpoint key (`jitgate audit verify --pubkey`).",
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown kind name, with the nearest known one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKind {
    /// What was given.
    pub given: String,
    /// The nearest known kind, when one is close.
    pub suggestion: Option<Kind>,
}

impl fmt::Display for UnknownKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is not an audit event kind", self.given)?;
        if let Some(s) = self.suggestion {
            write!(f, "; did you mean `{s}`?")?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownKind {}

impl FromStr for Kind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(k) = Kind::ALL.iter().find(|k| k.as_str() == s) {
            return Ok(*k);
        }
        let suggestion = Kind::ALL
            .iter()
            .map(|k| (distance(s, k.as_str()), *k))
            .filter(|(d, k)| *d <= 3.max(k.as_str().len() / 4))
            .min_by_key(|(d, _)| *d)
            .map(|(_, k)| k);
        Err(UnknownKind {
            given: s.to_string(),
            suggestion,
        })
    }
}

/// Levenshtein distance over chars (names are short; quadratic is fine).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(cur).min(row[j]) };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for k in Kind::ALL {
            assert!(seen.insert(k.as_str()), "{k} twice");
            assert_eq!(k.as_str().parse::<Kind>(), Ok(*k));
        }
    }

    #[test]
    fn typos_get_the_nearest_kind_and_nonsense_gets_none() {
        let e = "request.aproved".parse::<Kind>().unwrap_err();
        assert_eq!(e.suggestion, Some(Kind::RequestApproved));
        assert_eq!(
            e.to_string(),
            "`request.aproved` is not an audit event kind; did you mean `request.approved`?"
        );
        assert_eq!("logn".parse::<Kind>().unwrap_err().suggestion, Some(Kind::Login));
        assert_eq!("completely-else".parse::<Kind>().unwrap_err().suggestion, None);
    }
}

#[cfg(test)]
mod docs {
    use super::Kind;

    #[test]
    fn the_notifications_guide_lists_every_kind() {
        let doc = include_str!("../../../docs/notifications.md");
        for k in Kind::ALL {
            assert!(
                doc.contains(&format!("| `{k}` |")),
                "docs/notifications.md lacks a row for {k}"
            );
        }
    }
}
