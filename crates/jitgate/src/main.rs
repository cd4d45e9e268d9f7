//! `jitgate`: the gateway (`serve`) and its command-line client.
//!
//! The binary is thin: `serve` wires the library crates together (see `serve.rs`); every other
//! command is a client of the HTTP API (`client.rs`) or a local tool (`config check`,
//! `audit verify`). Errors print as `error: ...` (and `hint: ...`) on stderr with exit code 1;
//! usage errors exit 2.

mod access_cmd;
mod admin_cmd;
mod audit_export;
mod audit_verify;
mod cli;
mod client;
mod evidence;
mod exit;
mod files;
mod http_server;
mod login_cmd;
mod pg_cmd;
mod review_cmd;
mod serve;
mod ssh_cmd;
mod table;
mod tls_listener;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use jitgate_core::{Request, RequestState};
use serde_json::Value;

use crate::cli::{AuditCmd, Cli, Cmd, ConfigCmd, Conn, TokenCmd};
use crate::client::{Client, Decision};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::of(&e)
        }
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn ts(t: &jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// An instant in this machine's time zone, with UTC beside it when that differs.
fn local_ts(t: &jiff::Timestamp) -> String {
    let z = t.to_zoned(jiff::tz::TimeZone::system());
    if z.offset().seconds() == 0 {
        ts(t)
    } else {
        format!("{} ({})", z.strftime("%Y-%m-%d %H:%M:%S %Z"), ts(t))
    }
}

fn left(t: &jiff::Timestamp) -> String {
    let s = t.duration_since(jiff::Timestamp::now()).as_secs().max(0);
    jitgate_core::HumanDuration(u64::try_from(s).unwrap_or(0)).to_string()
}

fn describe(r: &Request) -> String {
    let d = jitgate_core::HumanDuration(r.duration_secs);
    let what = if let Some(g) = r.extends_grant {
        format!("extension of grant {g} by {d}")
    } else if let Some(at) = &r.starts_at {
        format!("{} ({}, {d} from {})", r.resource, r.access, local_ts(at))
    } else {
        format!("{} ({}, {d})", r.resource, r.access)
    };
    match r.state {
        RequestState::Pending => format!(
            "request {} for {what} is pending approval (policy {}, {} approval(s) so far)",
            r.id,
            r.policy,
            r.approvals.len()
        ),
        RequestState::Approved => {
            let by = r.decided_by.as_deref().unwrap_or("?");
            let how = if by.starts_with("policy:") {
                format!("auto-approved by {}", r.decision_reason.as_deref().unwrap_or(by))
            } else {
                format!("approved by {by}")
            };
            format!(
                "request {} for {what} is {how}; grant {}",
                r.id,
                r.grant_id.map(|g| g.to_string()).unwrap_or_default()
            )
        }
        s => format!(
            "request {} for {what} is {s}{}",
            r.id,
            r.decision_reason.as_ref().map(|x| format!(": {x}")).unwrap_or_default()
        ),
    }
}

fn requests_table(rs: &[Request]) {
    let rows: Vec<Vec<String>> = rs
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.state.to_string(),
                r.requester.clone(),
                r.resource.clone(),
                r.access.clone(),
                match &r.starts_at {
                    Some(at) => format!("{} from {}", jitgate_core::HumanDuration(r.duration_secs), ts(at)),
                    None => jitgate_core::HumanDuration(r.duration_secs).to_string(),
                },
                ts(&r.created_at),
                match (&r.ticket, &r.ticket_title) {
                    (Some(t), Some(title)) => format!("{t}: {title}"),
                    (Some(t), None) => t.clone(),
                    _ => String::new(),
                },
                r.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table::print(
        &[
            "ID",
            "STATE",
            "REQUESTER",
            "RESOURCE",
            "ACCESS",
            "FOR",
            "CREATED",
            "TICKET",
            "REASON",
        ],
        &rows,
    );
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Serve { config } => serve::run(&config).await.map(|()| ExitCode::SUCCESS),
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "jitgate", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man { dir } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir).with_context(|| format!("writing man pages into {}", dir.display()))?;
            println!("man pages written to {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Config {
            cmd: ConfigCmd::Check { file, config },
        } => config_check(&file.unwrap_or(config)),
        Cmd::Request(a) => access_cmd::request(a).await,
        Cmd::Requests { state, mine, conn } => access_cmd::requests(&conn, state, mine).await,
        Cmd::Approve { id, reason, conn } => request_action(&conn, id, Decision::Approve, reason).await,
        Cmd::Deny { id, reason, conn } => request_action(&conn, id, Decision::Deny, Some(reason)).await,
        Cmd::Cancel { id, conn } => request_action(&conn, id, Decision::Cancel, None).await,
        Cmd::Grants { all, conn } => access_cmd::grants(&conn, all).await,
        Cmd::Revoke { grant_id, reason, conn } => access_cmd::revoke(&conn, grant_id, reason).await,
        Cmd::BreakGlass {
            resource,
            access,
            duration,
            reason,
            ticket,
            conn,
        } => {
            review_cmd::break_glass(
                &conn,
                jitgate_api::wire::BreakGlass {
                    resource,
                    access,
                    duration,
                    reason,
                    ticket,
                },
            )
            .await
        }
        Cmd::Reviews { cmd, all, conn } => review_cmd::reviews(cmd, all, &conn).await,
        Cmd::Oncall { conn } => review_cmd::oncall(&conn).await,
        Cmd::Release { target, conn } => access_cmd::release(&conn, &target).await,
        Cmd::Extend {
            grant_id,
            duration,
            reason,
            conn,
        } => access_cmd::extend(&conn, grant_id, duration, reason).await,
        Cmd::Sessions { conn } => admin_cmd::sessions(&conn).await,
        Cmd::Kill { session_id, conn } => admin_cmd::kill(&conn, &session_id).await,
        Cmd::Drain { undo, conn } => admin_cmd::drain(&conn, !undo).await,
        Cmd::Audit {
            cmd: AuditCmd::Search(a),
        } => admin_cmd::audit_search(a).await,
        Cmd::Audit {
            cmd:
                AuditCmd::Verify {
                    files,
                    pubkey,
                    file,
                    json,
                    allow_unsigned_tail,
                    segment,
                    evidence: Some(pack),
                    config: _,
                },
        } => {
            let keys = pubkey
                .iter()
                .map(|k| audit_verify::parse_key(k))
                .collect::<Result<Vec<_>>>()?;
            let _ = (files, file, allow_unsigned_tail, segment);
            evidence::verify_file(&pack, &keys, json)
        }
        Cmd::Audit {
            cmd:
                AuditCmd::Verify {
                    files,
                    pubkey,
                    file,
                    json,
                    allow_unsigned_tail,
                    segment,
                    evidence: None,
                    config,
                },
        } => audit_verify::run(
            files,
            file,
            &pubkey,
            &audit_verify::Accept {
                json,
                unsigned_tail: allow_unsigned_tail,
                segment,
            },
            &config,
        ),
        Cmd::Audit {
            cmd:
                AuditCmd::Evidence {
                    grant,
                    request,
                    user,
                    resource,
                    since,
                    until,
                    out,
                    file,
                    config,
                },
        } => {
            let subject = match (grant, request, user, resource) {
                (Some(g), _, _, _) => evidence::Subject::Grant(g),
                (_, Some(r), _, _) => evidence::Subject::Request(r),
                (_, _, Some(u), _) => evidence::Subject::User(u),
                (_, _, _, Some(r)) => evidence::Subject::Resource(r),
                _ => anyhow::bail!("give --grant, --request, --user or --resource"),
            };
            let (log, data_dir) = match file {
                Some(f) => (f, None),
                None => {
                    let l = serve::report(jitgate_core::config::load(&config))
                        .context("reading the config to find the audit log (or pass --file)")?;
                    let d = l.config.gateway.data_dir.clone();
                    (d.join(&l.config.audit.file), Some(d))
                }
            };
            let now = jiff::Timestamp::now();
            evidence::run(&evidence::Options {
                subject,
                since: since.as_deref().map(|s| evidence::when(s, now)).transpose()?,
                until: until.as_deref().map(|s| evidence::when(s, now)).transpose()?,
                out,
                log,
                data_dir,
            })
        }
        Cmd::Audit {
            cmd: AuditCmd::Pubkey { config },
        } => audit_verify::pubkey(&config),
        Cmd::Audit {
            cmd:
                AuditCmd::Export {
                    format: _,
                    from_seq,
                    from_checkpoint,
                    follow,
                    file,
                    config,
                },
        } => {
            let path = match file {
                Some(f) => f,
                None => audit_path(&config)?,
            };
            let from = if from_checkpoint {
                audit_export::From::Checkpoint
            } else {
                audit_export::From::Seq(from_seq.unwrap_or(0))
            };
            audit_export::run(&path, from, follow)
        }
        Cmd::Whoami { conn } => admin_cmd::whoami(&conn).await,
        Cmd::Connect {
            resource,
            dbname,
            args,
            conn,
        } => pg_cmd::connect(&resource, dbname, &args, &conn).await,
        Cmd::PgService { print, file, conn } => pg_cmd::pg_service(&conn, print, file).await,
        Cmd::PgEnv { resource, conn } => pg_cmd::pg_env(&resource, &conn).await,
        Cmd::Resources { conn } => admin_cmd::resources(&conn).await,
        Cmd::Login {
            device,
            no_browser,
            fresh,
            ca_pin,
            conn,
        } => login_cmd::login(&conn, device, no_browser, fresh, ca_pin.as_deref()).await,
        Cmd::Logout { conn } => login_cmd::logout(&conn).await,
        Cmd::SshCert { key, conn } => ssh_cmd::ssh_cert(&conn, key).await,
        Cmd::SshConfig {
            key,
            print,
            ssh_config,
            conn,
        } => ssh_cmd::ssh_config(&conn, key, print, ssh_config).await,
        Cmd::Play {
            session,
            file,
            config,
            speed,
            idle_limit,
        } => ssh_cmd::play(&session, file, &config, speed, idle_limit),
        Cmd::Token {
            cmd: TokenCmd::Create { name, groups, conn },
        } => admin_cmd::token_create(&conn, &name, &groups).await,
        Cmd::Token {
            cmd: TokenCmd::Revoke { token_id, conn },
        } => admin_cmd::token_revoke(&conn, &token_id).await,
    }
}

/// The one-line summary of an audit event for tables: statements show outcome, duration, rows
/// and SQL; other events their reason.
fn event_detail(e: &Value) -> String {
    let d = &e["details"];
    if e["kind"] == "pg.statement" {
        let mut out = format!(
            "{} {}ms rows={} {}",
            d["outcome"].as_str().unwrap_or("?"),
            d["duration_ms"],
            d["rows"],
            d["sql"].as_str().unwrap_or("").replace(['\n', '\r'], " ")
        );
        if let Some(code) = d["sqlstate"].as_str() {
            out.push_str(&format!(" [{code}]"));
        }
        return out;
    }
    e["reason"].as_str().unwrap_or("").to_string()
}

/// Host part of a URL (`https://gw.example.com:8443/x` → `gw.example.com`).
pub(crate) fn url_host(u: &str) -> Option<String> {
    let rest = u.split_once("://").map_or(u, |x| x.1);
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?.to_string(),
        None => authority.rsplit_once(':').map_or(authority, |x| x.0).to_string(),
    };
    (!host.is_empty()).then_some(host)
}

/// approve / deny / cancel: POST, then print the request.
async fn request_action(conn: &Conn, id: i64, d: Decision, reason: Option<String>) -> Result<ExitCode> {
    let r = Client::new(conn)?.decide(id, d, reason).await?;
    if conn.json {
        print_json(&r)?;
    } else {
        println!("{}", describe(&r));
    }
    Ok(ExitCode::SUCCESS)
}

fn finish_request(conn: &Conn, r: &Request) -> Result<ExitCode> {
    if conn.json {
        print_json(r)?;
    } else {
        println!("{}", describe(r));
        if r.state == RequestState::Pending {
            println!("an approver can run: jitgate approve {}", r.id);
        }
    }
    Ok(match r.state {
        RequestState::Pending | RequestState::Approved => ExitCode::SUCCESS,
        RequestState::Denied => ExitCode::from(exit::DENIED),
        _ => ExitCode::from(1),
    })
}

fn config_check(path: &std::path::Path) -> Result<ExitCode> {
    let l = serve::report(jitgate_core::config::load(path))?;
    let c = &l.config;
    println!("{}: ok", path.display());
    println!("  data_dir      {}", c.gateway.data_dir.display());
    println!("  listen http   {}", c.listen.http.get_ref());
    if let Some(p) = &c.listen.postgres {
        println!("  listen pg     {}", p.get_ref());
    }
    if let Some(p) = &c.listen.ssh {
        println!("  listen ssh    {}", p.get_ref());
    }
    println!(
        "  store         {}",
        match (&c.store.url, &c.store.url_env, &c.store.url_file) {
            (Some(u), _, _) => jitgate_store::redact_url(u.get_ref()),
            (None, Some(v), _) => format!("the URL in ${v}"),
            (None, None, Some(f)) => format!("the URL in {}", f.display()),
            (None, None, None) => "sqlite (data_dir/jitgate.db)".to_string(),
        }
    );
    println!(
        "  tls           {}",
        if c.tls.as_ref().is_some_and(|t| t.cert_file.is_some()) {
            "configured certificate"
        } else {
            "issued by the gateway's own CA (data_dir/tls/ca.crt; users pin it at login)"
        }
    );
    println!(
        "  oidc          {}",
        c.oidc.as_ref().map_or("not configured", |o| o.issuer.as_str())
    );
    println!("  identities    {}", l.catalog.identities.len());
    for r in l.catalog.resources.values() {
        println!(
            "  resource      {} ({}, {}) access: {}",
            r.name,
            r.kind.as_str(),
            r.address,
            r.access_levels.join(", ")
        );
        if r.kind == jitgate_core::config::schema::ResourceKind::Postgres
            && let Some(ro) = r.credentials.get("read-only")
        {
            println!(
                "                read-only as {}: sessions run with default_transaction_read_only=on; at first connect the \
                 gateway refuses this role if it is a superuser, a member of pg_execute_server_program or \
                 pg_write_server_files, or has user mappings (docs/postgres.md, \"The read-only model\")",
                ro.user
            );
        }
    }
    for p in &l.catalog.policies {
        let steps: Vec<String> = p
            .steps
            .iter()
            .map(|s| format!("{}×[{}]", s.approvals, s.approvers.join(",")))
            .collect();
        println!(
            "  policy        {}: resources [{}] requesters [{}] approvals {} max {} auto-approve rules {}",
            p.name,
            p.resources.join(", "),
            p.requesters.join(", "),
            steps.join(" then "),
            p.max_duration,
            p.auto_approve.len()
        );
    }
    if !l.warnings.is_empty() {
        println!("  {} warning(s) above", l.warnings.len());
    }
    Ok(ExitCode::SUCCESS)
}

fn audit_path(config: &std::path::Path) -> Result<PathBuf> {
    let l = serve::report(jitgate_core::config::load(config)).context("finding the audit file (or pass --file)")?;
    Ok(l.config.gateway.data_dir.join(&l.config.audit.file))
}
