//! `jitgate break-glass` and `jitgate reviews`.

use std::process::ExitCode;

use anyhow::Result;
use jitgate_api::wire;
use serde_json::Value;

use crate::cli::{Conn, ReviewCmd};
use crate::client::Client;
use crate::{describe, print_json, table};

/// `jitgate break-glass`.
pub(crate) async fn break_glass(conn: &Conn, body: wire::BreakGlass) -> Result<ExitCode> {
    let r = Client::new(conn)?.break_glass(&body).await?;
    if conn.json {
        print_json(&r)?;
    } else {
        println!("{}", describe(&r));
        if let Some(v) = &r.break_glass {
            println!(
                "break-glass: everyone subscribed was alerted; [{}] must review it by {} (`jitgate reviews show {}`)",
                v.reviewers.join(", "),
                v.due_at.strftime("%Y-%m-%d %H:%M UTC"),
                r.id
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `jitgate oncall`.
pub(crate) async fn oncall(conn: &Conn) -> Result<ExitCode> {
    let sources = Client::new(conn)?.oncall().await?;
    if conn.json {
        print_json(&sources)?;
        return Ok(ExitCode::SUCCESS);
    }
    if sources.is_empty() {
        println!("no [[oncall]] sources are configured");
    }
    let rows: Vec<Vec<String>> = sources
        .iter()
        .map(|o| {
            vec![
                o.name.clone(),
                if o.fresh { "fresh" } else { "STALE" }.into(),
                o.age_secs
                    .map(|a| format!("{}", jitgate_core::HumanDuration(u64::try_from(a).unwrap_or(0))))
                    .unwrap_or_else(|| "never read".into()),
                o.max_age.clone(),
                o.on_call
                    .iter()
                    .map(|e| format!("{} (L{})", e.identity, e.level))
                    .collect::<Vec<_>>()
                    .join(", "),
                o.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table::print(&["SOURCE", "STATE", "AGE", "MAX AGE", "ON CALL", "LAST ERROR"], &rows);
    Ok(ExitCode::SUCCESS)
}

fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `jitgate reviews [show ID | close ID --note ...]`.
pub(crate) async fn reviews(cmd: Option<ReviewCmd>, all: bool, conn: &Conn) -> Result<ExitCode> {
    match cmd {
        None => {
            let items = Client::new(conn)?.reviews(all).await?;
            if conn.json {
                print_json(&items)?;
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|i| {
                    let r = &i["request"];
                    let v = &r["break_glass"];
                    let state = if !v["closed_at"].is_null() {
                        format!("closed by {}", s(&v["closed_by"]))
                    } else if i["overdue"] == Value::Bool(true) {
                        "OVERDUE".to_string()
                    } else {
                        "open".to_string()
                    };
                    vec![
                        s(&r["id"]),
                        s(&r["requester"]),
                        s(&r["resource"]),
                        s(&r["access"]),
                        s(&r["created_at"]),
                        s(&v["due_at"]),
                        state,
                        s(&r["reason"]),
                    ]
                })
                .collect();
            table::print(
                &[
                    "REVIEW", "IDENTITY", "RESOURCE", "ACCESS", "OPENED", "DUE", "STATE", "REASON",
                ],
                &rows,
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(ReviewCmd::Show { id, conn }) => {
            let d = Client::new(&conn)?.review(id).await?;
            if conn.json {
                print_json(&d)?;
                return Ok(ExitCode::SUCCESS);
            }
            let r = &d["request"];
            let v = &r["break_glass"];
            println!(
                "review {id}: {} broke the glass on {} as {} at {}: {}",
                s(&r["requester"]),
                s(&r["resource"]),
                s(&r["access"]),
                s(&r["created_at"]),
                s(&r["reason"])
            );
            println!("reviewers: {}; due {}", s(&v["reviewers"]), s(&v["due_at"]));
            if !v["closed_at"].is_null() {
                println!(
                    "closed by {} at {}: {}",
                    s(&v["closed_by"]),
                    s(&v["closed_at"]),
                    s(&v["note"])
                );
            }
            let rows: Vec<Vec<String>> = d["events"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|e| {
                    let det = &e["details"];
                    let what = [&det["sql"], &det["command"], &det["line"], &det["op"], &det["path"]]
                        .into_iter()
                        .find(|x| !x.is_null())
                        .map(s)
                        .unwrap_or_default();
                    vec![s(&e["time"]), s(&e["kind"]), s(&e["session_id"]), what]
                })
                .collect();
            table::print(&["TIME", "EVENT", "SESSION", "WHAT"], &rows);
            Ok(ExitCode::SUCCESS)
        }
        Some(ReviewCmd::Close { id, note, conn }) => {
            let r = Client::new(&conn)?.close_review(id, note).await?;
            if conn.json {
                print_json(&r)?;
            } else {
                println!("review {id} closed");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
