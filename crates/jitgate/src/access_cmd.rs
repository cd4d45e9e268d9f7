//! `request`, `requests`, `approve`/`deny`/`cancel` (in main.rs), `grants`, `revoke`,
//! `release`, `extend`: the access lifecycle as the CLI drives it over the API.

use std::process::ExitCode;

use anyhow::{Result, bail};
use jitgate_api::wire;
use jitgate_core::RequestState;

use crate::cli::{Conn, RequestArgs};
use crate::client::Client;
use crate::{describe, finish_request, left, print_json, requests_table, table, ts};

/// `jitgate request`: ask, and with `--wait` wait for the decision.
pub(crate) async fn request(a: RequestArgs) -> Result<ExitCode> {
    let RequestArgs {
        resource,
        access,
        duration,
        reason,
        ticket,
        single_session,
        idle_end,
        start,
        at,
        wait,
        timeout,
        conn,
    } = a;
    // Read here, in the user's time zone; sent as an instant.
    let at = at
        .map(|s| {
            let local = jiff::tz::TimeZone::system();
            jitgate_core::when::parse_at(&s, jiff::Timestamp::now(), Some(&local))
                .map(|t| t.to_string())
                .map_err(|e| anyhow::anyhow!("--at {e}"))
        })
        .transpose()?;
    let c = Client::new(&conn)?;
    let r = c
        .create_request(&wire::CreateRequest {
            resource,
            access,
            duration,
            reason,
            ticket,
            single_session,
            idle_end,
            start,
            at,
        })
        .await?;
    if !wait || r.state != RequestState::Pending {
        return finish_request(&conn, &r);
    }
    let limit = jitgate_core::HumanDuration::parse(&timeout).map_err(anyhow::Error::msg)?;
    let mut progress = Progress::new(&r);
    let started = std::time::Instant::now();
    let deadline = started + std::time::Duration::from_secs(limit.secs());
    let mut now = c.request(r.id).await?;
    progress.changed(&now, started.elapsed());
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        if now.request.state != RequestState::Pending {
            progress.done();
            return finish_request(&conn, &now.request);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            progress.done();
            return Err(crate::exit::StillPending(format!(
                "request {} is still pending after {timeout}; it stays open (`jitgate requests --mine`)",
                r.id
            ))
            .into());
        }
        // A long poll (answered at the decision or the next approval), the progress line
        // redrawn each second meanwhile.
        let wait = left.as_secs().clamp(1, LONG_POLL_SECS);
        let asked = std::time::Instant::now();
        let before = now.request.version;
        let poll = c.wait_request(r.id, now.request.version, wait);
        tokio::pin!(poll);
        now = loop {
            tokio::select! {
                got = &mut poll => break got?,
                _ = tick.tick() => progress.tick(&now, started.elapsed()),
            }
        };
        progress.changed(&now, started.elapsed());
        if now.request.version == before && asked.elapsed() < std::time::Duration::from_secs(1) {
            // Answered at once without a change (a gateway holding too many polls, or an
            // older one): do not spin.
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
}

/// How long one long poll of `request --wait` may be held by the gateway (it caps it at 25 s).
const LONG_POLL_SECS: u64 = 20;

/// What `request --wait` shows while it waits: on a terminal one status line redrawn in place
/// each second (elapsed time, approvals, whom it waits for); otherwise a plain line per change.
struct Progress {
    tty: bool,
    last: String,
    drawn: bool,
}

impl Progress {
    fn new(r: &jitgate_core::Request) -> Self {
        eprintln!(
            "{}; waiting (Ctrl-C stops waiting; the request stays open)",
            describe(r)
        );
        Self {
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("TERM").is_some_and(|t| t != "dumb"),
            last: String::new(),
            drawn: false,
        }
    }

    fn status(s: &wire::RequestStatus) -> String {
        let r = &s.request;
        let who = if s.waiting_for.is_empty() {
            "an approver".to_string()
        } else {
            s.waiting_for.join(" or ")
        };
        let approvals = match r.approvals.len() {
            0 => String::new(),
            1 => format!(", approved by {} so far", r.approvals[0].approver),
            n => format!(", {n} approvals so far"),
        };
        let escalated = if r.escalated { ", escalated" } else { "" };
        format!(
            "request {} waits for {who} (step {}{approvals}{escalated})",
            r.id,
            r.step + 1
        )
    }

    fn elapsed(d: std::time::Duration) -> String {
        let s = d.as_secs();
        if s >= 3600 {
            format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
        } else {
            format!("{}:{:02}", s / 60, s % 60)
        }
    }

    /// A new answer from the gateway: a plain line when what it says changed.
    fn changed(&mut self, s: &wire::RequestStatus, elapsed: std::time::Duration) {
        let status = Self::status(s);
        if self.tty {
            self.draw(&status, elapsed);
        } else if status != self.last && s.request.state == RequestState::Pending {
            eprintln!("[{}] {status}", Self::elapsed(elapsed));
        }
        self.last = status;
    }

    fn tick(&mut self, s: &wire::RequestStatus, elapsed: std::time::Duration) {
        if self.tty {
            let status = Self::status(s);
            self.draw(&status, elapsed);
        }
    }

    fn draw(&mut self, status: &str, elapsed: std::time::Duration) {
        use std::io::Write;
        let mut e = std::io::stderr();
        let _ = write!(e, "\r\x1b[2K{} {status}", Self::elapsed(elapsed));
        let _ = e.flush();
        self.drawn = true;
    }

    /// Leave the status line before the outcome is printed.
    fn done(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

/// `jitgate requests`.
pub(crate) async fn requests(conn: &Conn, state: Option<String>, mine: bool) -> Result<ExitCode> {
    let c = Client::new(conn)?;
    let rs = c.requests(&wire::ListRequests { state, mine }).await?;
    if conn.json {
        print_json(&rs)?
    } else {
        requests_table(&rs)
    }
    Ok(ExitCode::SUCCESS)
}

/// `jitgate grants`.
pub(crate) async fn grants(conn: &Conn, all: bool) -> Result<ExitCode> {
    let gs = Client::new(conn)?.grants(all).await?;
    if conn.json {
        print_json(&gs)?;
    } else {
        let rows: Vec<Vec<String>> = gs
            .iter()
            .map(|g| {
                vec![
                    g.id.to_string(),
                    g.identity.clone(),
                    g.resource.clone(),
                    g.access.clone(),
                    ts(&g.expires_at),
                    if g.starts_at > jiff::Timestamp::now() {
                        format!("opens in {}", left(&g.starts_at))
                    } else {
                        left(&g.expires_at)
                    },
                    g.request_id.to_string(),
                ]
            })
            .collect();
        table::print(
            &["GRANT", "IDENTITY", "RESOURCE", "ACCESS", "EXPIRES", "LEFT", "REQUEST"],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `jitgate revoke`.
pub(crate) async fn revoke(conn: &Conn, grant_id: i64, reason: Option<String>) -> Result<ExitCode> {
    let g = Client::new(conn)?.revoke(grant_id, reason).await?;
    if conn.json {
        print_json(&g)?
    } else {
        println!(
            "grant {} ({} on {}) revoked; its sessions were killed",
            g.id, g.identity, g.resource
        )
    }
    Ok(ExitCode::SUCCESS)
}

/// `jitgate release GRANT|RESOURCE`.
pub(crate) async fn release(conn: &Conn, target: &str) -> Result<ExitCode> {
    let c = Client::new(conn)?;
    let ids: Vec<i64> = match target.parse::<i64>() {
        Ok(id) => vec![id],
        Err(_) => {
            let gs = c.grants(false).await?;
            let ids: Vec<i64> = gs.iter().filter(|g| g.resource == target).map(|g| g.id).collect();
            if ids.is_empty() {
                bail!("you hold no live grant on `{target}`");
            }
            ids
        }
    };
    for id in ids {
        let g = c.release(id).await?;
        if conn.json {
            print_json(&g)?
        } else {
            println!("grant {} on {} released", g.id, g.resource)
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `jitgate extend`.
pub(crate) async fn extend(conn: &Conn, grant_id: i64, duration: String, reason: Option<String>) -> Result<ExitCode> {
    let r = Client::new(conn)?
        .extend(grant_id, &wire::Extend { duration, reason })
        .await?;
    finish_request(conn, &r)
}
