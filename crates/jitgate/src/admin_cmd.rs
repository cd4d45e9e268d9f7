//! `sessions`, `kill`, `audit search`, `whoami`, `resources`, `token create|revoke`.

use std::process::ExitCode;

use anyhow::Result;
use jitgate_api::wire;
use serde_json::Value;

use crate::cli::{Conn, SearchArgs};
use crate::client::Client;
use crate::{event_detail, print_json, table, ts};

/// `jitgate sessions`.
pub(crate) async fn sessions(conn: &Conn) -> Result<ExitCode> {
    let ss = Client::new(conn)?.sessions().await?;
    if conn.json {
        print_json(&ss)?;
    } else {
        let rows: Vec<Vec<String>> = ss
            .iter()
            .map(|s| {
                vec![
                    s.id.clone(),
                    s.protocol.clone(),
                    s.identity.clone(),
                    s.resource.clone(),
                    s.access.clone(),
                    s.grant_id.to_string(),
                    ts(&s.started_at),
                    s.client_addr.clone(),
                ]
            })
            .collect();
        table::print(
            &[
                "SESSION", "PROTOCOL", "IDENTITY", "RESOURCE", "ACCESS", "GRANT", "STARTED", "CLIENT",
            ],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `jitgate kill`.
pub(crate) async fn kill(conn: &Conn, session_id: &str) -> Result<ExitCode> {
    let s = Client::new(conn)?.kill(session_id).await?;
    if conn.json {
        print_json(&s)?
    } else {
        println!("session {} ({} on {}) killed", s.id, s.identity, s.resource)
    }
    Ok(ExitCode::SUCCESS)
}

/// `jitgate drain [--undo]`.
pub(crate) async fn drain(conn: &Conn, draining: bool) -> Result<ExitCode> {
    let d = Client::new(conn)?.drain(draining).await?;
    if conn.json {
        print_json(&d)?;
    } else if d.draining {
        println!(
            "draining: /readyz answers 503 and new sessions are refused; {} live session(s) go on (`jitgate drain --undo` to resume)",
            d.sessions
        );
    } else {
        println!("ready again: new sessions are admitted");
    }
    Ok(ExitCode::SUCCESS)
}

/// `jitgate audit search`.
pub(crate) async fn audit_search(a: SearchArgs) -> Result<ExitCode> {
    // The command's flags are the query's fields, one for one.
    let q = wire::AuditQuery {
        user: a.user,
        resource: a.resource,
        kind: a.kind,
        grant: a.grant,
        session: a.session,
        request: a.request,
        since: a.since,
        until: a.until,
        limit: a.limit,
        text: a.text,
        command: a.command,
    };
    let conn = a.conn;
    let evs = Client::new(&conn)?.audit(&q).await?;
    if conn.json {
        for e in &evs {
            println!("{}", serde_json::to_string(e)?);
        }
    } else {
        let s = |e: &Value, k: &str| {
            e.get(k)
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| if v.is_null() { String::new() } else { v.to_string() })
                })
                .unwrap_or_default()
        };
        let rows: Vec<Vec<String>> = evs
            .iter()
            .map(|e| {
                vec![
                    s(e, "seq"),
                    s(e, "time"),
                    s(e, "kind"),
                    s(e, "actor"),
                    s(e, "resource"),
                    s(e, "request_id"),
                    s(e, "grant_id"),
                    s(e, "session_id"),
                    event_detail(e),
                ]
            })
            .collect();
        table::print(
            &[
                "SEQ", "TIME", "KIND", "ACTOR", "RESOURCE", "REQ", "GRANT", "SESSION", "DETAIL",
            ],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `jitgate whoami`.
pub(crate) async fn whoami(conn: &Conn) -> Result<ExitCode> {
    let w = Client::new(conn)?.whoami().await?;
    if conn.json {
        print_json(&w)?;
    } else {
        println!(
            "{} [{}]{}",
            w.principal.name,
            w.principal.groups.join(", "),
            if w.admin { " (admin)" } else { "" }
        );
        for g in &w.grants {
            println!(
                "  grant {} on {} ({}) until {}",
                g.id, g.resource, g.access, g.expires_at
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `jitgate resources`.
pub(crate) async fn resources(conn: &Conn) -> Result<ExitCode> {
    let rs = Client::new(conn)?.resources().await?;
    if conn.json {
        print_json(&rs)?;
    } else {
        let rows: Vec<Vec<String>> = rs
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.kind.clone(),
                    r.access.join(", "),
                    r.policy.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        table::print(&["RESOURCE", "KIND", "YOU MAY REQUEST", "POLICY"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// `jitgate token create`.
pub(crate) async fn token_create(conn: &Conn, name: &str, groups: &[String]) -> Result<ExitCode> {
    let t = Client::new(conn)?
        .create_token(&wire::CreateToken {
            name: name.to_string(),
            groups: groups.to_vec(),
        })
        .await?;
    if conn.json {
        print_json(&t)?;
    } else {
        println!(
            "token for {} (shown once; store it in a secret manager):\n\n  {}\n",
            name, t.token
        );
        println!(
            "It works now. To declare it in gateway.toml instead:\n\n  [[identities]]\n  name = \"{name}\"\n  groups = {:?}\n  token_sha256 = \"{}\"",
            groups, t.sha256
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `jitgate token revoke`.
pub(crate) async fn token_revoke(conn: &Conn, token_id: &str) -> Result<ExitCode> {
    let v = Client::new(conn)?.revoke_token(token_id).await?;
    println!("token {} revoked", v.revoked);
    Ok(ExitCode::SUCCESS)
}
