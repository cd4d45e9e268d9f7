//! `sessions`, `kill`, `audit search`, `whoami`, `resources`, `token create|revoke`.

use std::process::ExitCode;

use anyhow::Result;
use jitgate_core::SessionInfo;
use serde_json::{Value, json};

use crate::cli::{Conn, SearchArgs};
use crate::client::{Client, enc};
use crate::{event_detail, print_json, table, ts};

/// `jitgate sessions`.
pub(crate) async fn sessions(conn: &Conn) -> Result<ExitCode> {
    let ss: Vec<SessionInfo> = Client::new(conn)?.get("/v1/sessions").await?;
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
    let s: SessionInfo = Client::new(conn)?
        .post(&format!("/v1/sessions/{}/kill", enc(session_id)), &json!({}))
        .await?;
    if conn.json {
        print_json(&s)?
    } else {
        println!("session {} ({} on {}) killed", s.id, s.identity, s.resource)
    }
    Ok(ExitCode::SUCCESS)
}

/// `jitgate audit search`.
pub(crate) async fn audit_search(a: SearchArgs) -> Result<ExitCode> {
    let SearchArgs {
        user,
        resource,
        kind,
        grant,
        session,
        request,
        since,
        until,
        limit,
        conn,
    } = a;
    let mut q = Vec::new();
    let mut add = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            q.push(format!("{k}={}", enc(&v)));
        }
    };
    add("user", user);
    add("resource", resource);
    add("kind", kind);
    add("grant", grant.map(|g| g.to_string()));
    add("session", session);
    add("request", request.map(|g| g.to_string()));
    add("since", since);
    add("until", until);
    add("limit", limit.map(|g| g.to_string()));
    let evs: Vec<Value> = Client::new(&conn)?.get(&format!("/v1/audit?{}", q.join("&"))).await?;
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
    let w: Value = Client::new(conn)?.get("/v1/whoami").await?;
    if conn.json {
        print_json(&w)?;
    } else {
        let groups: Vec<String> = w["groups"]
            .as_array()
            .map(|a| a.iter().filter_map(|g| g.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        println!(
            "{} [{}]{}",
            w["name"].as_str().unwrap_or("?"),
            groups.join(", "),
            if w["admin"].as_bool() == Some(true) {
                " (admin)"
            } else {
                ""
            }
        );
        for g in w["grants"].as_array().into_iter().flatten() {
            println!(
                "  grant {} on {} ({}) until {}",
                g["id"],
                g["resource"].as_str().unwrap_or(""),
                g["access"].as_str().unwrap_or(""),
                g["expires_at"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `jitgate resources`.
pub(crate) async fn resources(conn: &Conn) -> Result<ExitCode> {
    let rs: Vec<Value> = Client::new(conn)?.get("/v1/resources").await?;
    if conn.json {
        print_json(&rs)?;
    } else {
        let rows: Vec<Vec<String>> = rs
            .iter()
            .map(|r| {
                let access: Vec<&str> = r["access"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                vec![
                    r["name"].as_str().unwrap_or("").into(),
                    r["kind"].as_str().unwrap_or("").into(),
                    access.join(", "),
                    r["policy"].as_str().unwrap_or("-").into(),
                ]
            })
            .collect();
        table::print(&["RESOURCE", "KIND", "YOU MAY REQUEST", "POLICY"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// `jitgate token create`.
pub(crate) async fn token_create(conn: &Conn, name: &str, groups: &[String]) -> Result<ExitCode> {
    let t: Value = Client::new(conn)?
        .post("/v1/tokens", &json!({"name": name, "groups": groups}))
        .await?;
    if conn.json {
        print_json(&t)?;
    } else {
        println!(
            "token for {} (shown once; store it in a secret manager):\n\n  {}\n",
            name,
            t["token"].as_str().unwrap_or("")
        );
        println!(
            "It works now. To declare it in gateway.toml instead:\n\n  [[identities]]\n  name = \"{name}\"\n  groups = {:?}\n  token_sha256 = \"{}\"",
            groups,
            t["sha256"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `jitgate token revoke`.
pub(crate) async fn token_revoke(conn: &Conn, token_id: &str) -> Result<ExitCode> {
    let v: Value = Client::new(conn)?
        .post("/v1/tokens/revoke", &json!({"token_id": token_id}))
        .await?;
    println!("token {} revoked", v["revoked"].as_str().unwrap_or(token_id));
    Ok(ExitCode::SUCCESS)
}
