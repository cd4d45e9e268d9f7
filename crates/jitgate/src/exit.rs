//! The CLI's exit codes, so scripts can tell outcomes apart (`jitgate request --wait` in a
//! pipeline, a cron job that must not retry a denial):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done (a request approved, or created and pending without `--wait`) |
//! | 1 | error, or a refusal by the gateway (not allowed, not found, invalid) |
//! | 2 | usage: unknown command or flag |
//! | 3 | the request was denied |
//! | 4 | still pending when `--wait --timeout` ran out |
//! | 5 | the gateway could not be reached (network, TLS trust) |

use std::process::ExitCode;

/// Shown at the end of `jitgate --help`.
pub const HELP: &str = "Exit codes: 0 ok, 1 error or refused, 2 usage, 3 request denied, 4 still pending at --timeout, 5 gateway unreachable.";

/// The request was denied.
pub const DENIED: u8 = 3;

/// The gateway could not be reached: no answer, or a TLS certificate not trusted.
#[derive(Debug)]
pub struct Unreachable(pub String);

/// `--wait` ran out while the request was still pending.
#[derive(Debug)]
pub struct StillPending(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for StillPending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}
impl std::error::Error for StillPending {}

/// The exit code an error ends the CLI with.
pub fn of(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<Unreachable>().is_some() {
        ExitCode::from(5)
    } else if e.downcast_ref::<StillPending>().is_some() {
        ExitCode::from(4)
    } else {
        ExitCode::from(1)
    }
}
