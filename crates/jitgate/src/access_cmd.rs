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
        wait,
        timeout,
        conn,
    } = a;
    let c = Client::new(&conn)?;
    let r = c
        .create_request(&wire::CreateRequest {
            resource,
            access,
            duration,
            reason,
            ticket,
        })
        .await?;
    if !wait || r.state != RequestState::Pending {
        return finish_request(&conn, &r);
    }
    let limit = jitgate_core::HumanDuration::parse(&timeout).map_err(anyhow::Error::msg)?;
    eprintln!(
        "{}; waiting (Ctrl-C to stop waiting; the request stays open)...",
        describe(&r)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(limit.secs());
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let now = c.request(r.id).await?;
        if now.state != RequestState::Pending {
            return finish_request(&conn, &now);
        }
        if std::time::Instant::now() >= deadline {
            return Err(crate::exit::StillPending(format!(
                "request {} is still pending after {timeout}; it stays open (`jitgate requests --mine`)",
                r.id
            ))
            .into());
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
                    left(&g.expires_at),
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
