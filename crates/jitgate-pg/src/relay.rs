//! The relay: two loops per session, one per direction, framing by the 5-byte header.
//!
//! Client → server: frames pass through untouched except `Query`, `Parse`, `Bind`, `Execute`,
//! `Sync` and `FunctionCall`, whose SQL is classified (cached) for audit and read-only
//! enforcement. A refused statement never reaches the server. Instead the gateway sends a `Sync`
//! (simple protocol) or drops everything up to the client's next `Sync` (extended protocol, the
//! server's own error-recovery rule) and forwards that `Sync`; either way the server answers with
//! one `ReadyForQuery`, and the server → client loop puts the gateway's ErrorResponse (42501)
//! right before it. Counting `ReadyForQuery`s is what keeps the injected error in order with
//! pipelined traffic, with no lock held across I/O.
//!
//! Server → client: frames pass through in batches (one write per read), decoding only
//! ReadyForQuery, CommandComplete, ErrorResponse, EmptyQueryResponse and PortalSuspended for the
//! per-statement audit. The same loop watches the kill switch (FATAL 57P01, then both sides are
//! closed) and the expiry warning (NoticeResponse). Backpressure is natural: each loop awaits
//! its write before reading more, so a client that stops reading stops the server, and memory
//! stays bounded by one read buffer per direction.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use jitgate_audit::{AuditSink, Statement};
use jitgate_core::{KillReason, Metrics, SessionGuard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::classify::{Class, Classifier};
use crate::io::{ReadHalf, Stream, WriteHalf};
use crate::protocol::{self, Severity};

/// What the relay needs to know about its session.
pub struct RelayCtx {
    /// Session (kill switch, warnings, ids).
    pub guard: SessionGuard,
    /// Read-only enforcement on.
    pub read_only: bool,
    /// Shared verdict cache.
    pub classifier: Arc<Classifier>,
    /// Audit.
    pub audit: AuditSink,
    /// Metrics.
    pub metrics: Metrics,
    /// SQL text longer than this is cut in audit events.
    pub max_text: usize,
    /// Largest client message.
    pub max_message: usize,
    /// Hint shown on refusals.
    pub refusal_hint: String,
    /// Audit every completed statement (refused ones are always audited).
    pub audit_statements: bool,
}

#[derive(Debug)]
struct Pending {
    /// The ReadyForQuery (by number) by which the server has answered this statement.
    closes_at: u64,
    sql: Arc<str>,
    class: Class,
    simple: bool,
    started: Instant,
    rows: u64,
    error: Option<Box<(String, String)>>,
}

/// Named statements/portals remembered per session (for audit text) before the maps are reset.
const MAX_NAMED: usize = 10_000;

/// Frames the server → client loop does not inspect are streamed, not buffered whole, when
/// longer than this: a 1 GB row costs the gateway one read buffer, not 1 GB.
const STREAM_OVER: usize = 256 * 1024;

/// The session's names as audit events carry them, shared by every statement event.
struct Names {
    identity: Arc<str>,
    access: Arc<str>,
    resource: Arc<str>,
    session: Arc<str>,
}

struct Shared {
    names: Names,
    /// ReadyForQuery-producing messages forwarded to the server.
    forwarded: AtomicU64,
    /// (ReadyForQuery number, ErrorResponse frame) to put before it.
    inject: Mutex<VecDeque<(u64, BytesMut)>>,
    /// Statements awaiting completion, in order.
    pending: Mutex<VecDeque<Pending>>,
}

/// How a session ended.
#[derive(Debug)]
pub enum End {
    /// The client said Terminate or closed.
    Client,
    /// The server closed.
    Server,
    /// Killed by the gateway.
    Killed(KillReason),
    /// Protocol or I/O error.
    Error(String),
}

/// Relay until one side ends. The session deregisters when this returns (its guard is dropped
/// with the context).
pub async fn run(ctx: RelayCtx, client: Stream, server: Stream, leftover: BytesMut) -> End {
    let (cr, cw) = client.split();
    let (sr, sw) = server.split();
    let info = &ctx.guard.info;
    let shared = Arc::new(Shared {
        names: Names {
            identity: info.identity.as_str().into(),
            access: info.access.as_str().into(),
            resource: info.resource.as_str().into(),
            session: info.id.as_str().into(),
        },
        forwarded: AtomicU64::new(0),
        inject: Mutex::default(),
        pending: Mutex::default(),
    });
    let ctx = Arc::new(ctx);
    let mut c2s = tokio::spawn(client_to_server(ctx.clone(), shared.clone(), cr, sw));
    let (end, c2s_done) = tokio::select! {
        e = server_to_client(&ctx, &shared, sr, cw, leftover) => (e, false),
        r = &mut c2s => (match r {
            Ok(e) => e,
            Err(e) => End::Error(format!("relay task failed: {e}")),
        }, true),
    };
    if !c2s_done {
        c2s.abort();
        let _ = c2s.await;
    }
    end
}

fn statement_event(
    ctx: &RelayCtx,
    sh: &Shared,
    p: Pending,
    outcome: &'static str,
    took: std::time::Duration,
) -> Statement {
    let n = &sh.names;
    Statement {
        time: jiff::Timestamp::now(),
        identity: n.identity.clone(),
        access: n.access.clone(),
        resource: n.resource.clone(),
        grant_id: ctx.guard.info.grant_id,
        session_id: n.session.clone(),
        sql: p.sql,
        max_text: ctx.max_text,
        class: p.class.as_str(),
        simple: p.simple,
        outcome,
        duration_ms: (took.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        rows: p.rows,
        error: p.error,
    }
}

async fn client_to_server(ctx: Arc<RelayCtx>, sh: Arc<Shared>, mut cr: ReadHalf, mut sw: WriteHalf) -> End {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut statements: HashMap<String, (Arc<str>, Class)> = HashMap::new();
    let mut portals: HashMap<String, (Arc<str>, Class)> = HashMap::new();
    let mut discarding: Option<String> = None;
    // Counter handles resolved once per class, not hashed per statement.
    let mut counters: HashMap<Class, prometheus::IntCounter> = HashMap::new();
    let mut count = |class: Class| {
        counters
            .entry(class)
            .or_insert_with(|| {
                ctx.metrics
                    .queries_total
                    .with_label_values(&[&ctx.guard.info.resource, class.as_str()])
            })
            .inc();
    };
    let bytes_in = ctx
        .metrics
        .bytes_total
        .with_label_values(&["postgres", "client_to_server"]);
    loop {
        // The kill switch is handled by the server → client loop, which tells the client why.
        let n = match cr.read_buf(&mut buf).await {
            Ok(n) => n,
            Err(e) => return End::Error(e.to_string()),
        };
        if n == 0 {
            return End::Client;
        }
        bytes_in.inc_by(u64::try_from(n).unwrap_or(0));
        let mut terminate = false;
        loop {
            let h = match protocol::header(&buf, ctx.max_message) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => return End::Error(format!("client sent a bad message: {e}")),
            };
            let total = 5 + h.body_len;
            if buf.len() < total {
                buf.reserve(total - buf.len());
                break;
            }
            let frame = buf.split_to(total);
            let body = &frame[5..];
            match h.tag {
                b'Q' => {
                    let sql: Arc<str> = protocol::cstr(body).map_or("", |x| x.0).into();
                    let v = ctx.classifier.classify(&sql);
                    count(v.class);
                    let n = sh.forwarded.fetch_add(1, Ordering::SeqCst) + 1;
                    if let (true, Some(why)) = (ctx.read_only, &v.read_only_refusal) {
                        refuse(&ctx, &sh, n, &sql, v.class, why, true).await;
                        protocol::message(&mut out, b'S', &[]);
                    } else {
                        lock(&sh.pending).push_back(Pending {
                            closes_at: n,
                            sql,
                            class: v.class,
                            simple: true,
                            started: Instant::now(),
                            rows: 0,
                            error: None,
                        });
                        out.extend_from_slice(&frame);
                    }
                }
                b'P' => {
                    if discarding.is_some() {
                        continue;
                    }
                    let (name, rest) = protocol::cstr(body).unwrap_or(("", &[]));
                    let sql: Arc<str> = protocol::cstr(rest).map_or("", |x| x.0).into();
                    let v = ctx.classifier.classify(&sql);
                    if let (true, Some(why)) = (ctx.read_only, &v.read_only_refusal) {
                        statements.remove(name);
                        discarding = Some(format!("{why}\u{0}{sql}"));
                        continue;
                    }
                    if statements.len() >= MAX_NAMED {
                        // A client that never closes its statements: keep memory bounded; only
                        // the audit text of old statements is lost (checks ran at Parse).
                        statements.clear();
                    }
                    statements.insert(name.to_string(), (sql, v.class));
                    out.extend_from_slice(&frame);
                }
                b'B' => {
                    if discarding.is_some() {
                        continue;
                    }
                    let (portal, rest) = protocol::cstr(body).unwrap_or(("", &[]));
                    let stmt = protocol::cstr(rest).map_or("", |x| x.0);
                    if let Some(s) = statements.get(stmt) {
                        if portals.len() >= MAX_NAMED {
                            portals.clear();
                        }
                        portals.insert(portal.to_string(), s.clone());
                    }
                    out.extend_from_slice(&frame);
                }
                b'E' => {
                    if discarding.is_some() {
                        continue;
                    }
                    let portal = protocol::cstr(body).map_or("", |x| x.0);
                    let (sql, class) = portals
                        .get(portal)
                        .cloned()
                        .unwrap_or_else(|| (Arc::from(""), Class::Other));
                    count(class);
                    let closes_at = sh.forwarded.load(Ordering::SeqCst) + 1;
                    lock(&sh.pending).push_back(Pending {
                        closes_at,
                        sql,
                        class,
                        simple: false,
                        started: Instant::now(),
                        rows: 0,
                        error: None,
                    });
                    out.extend_from_slice(&frame);
                }
                b'S' => {
                    let n = sh.forwarded.fetch_add(1, Ordering::SeqCst) + 1;
                    if let Some(d) = discarding.take() {
                        let (why, sql) = d.split_once('\u{0}').unwrap_or((d.as_str(), ""));
                        let v = ctx.classifier.classify(sql);
                        refuse(&ctx, &sh, n, sql, v.class, why, false).await;
                    }
                    out.extend_from_slice(&frame);
                }
                b'F' => {
                    let n = sh.forwarded.fetch_add(1, Ordering::SeqCst) + 1;
                    if ctx.read_only {
                        refuse(
                            &ctx,
                            &sh,
                            n,
                            "<FunctionCall>",
                            Class::Other,
                            "fast-path function calls",
                            true,
                        )
                        .await;
                        protocol::message(&mut out, b'S', &[]);
                    } else {
                        out.extend_from_slice(&frame);
                    }
                }
                b'X' => {
                    out.extend_from_slice(&frame);
                    terminate = true;
                    break;
                }
                b'D' | b'C' | b'H' if discarding.is_some() => {}
                b'C' => {
                    // Close statement ('S') or portal ('P'): forget its text too.
                    if let Some((&kind, name)) = body.split_first() {
                        let name = protocol::cstr(name).map_or("", |x| x.0);
                        if kind == b'S' {
                            statements.remove(name);
                        } else {
                            portals.remove(name);
                        }
                    }
                    out.extend_from_slice(&frame);
                }
                _ => out.extend_from_slice(&frame),
            }
        }
        if !out.is_empty() {
            if let Err(e) = sw.write_all(&out).await {
                return End::Error(format!("writing to the database: {e}"));
            }
            out.clear();
        }
        if terminate {
            let _ = sw.shutdown().await;
            return End::Client;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn refuse(ctx: &RelayCtx, sh: &Shared, at: u64, sql: &str, class: Class, why: &str, _simple: bool) {
    ctx.metrics.statements_denied_total.inc();
    let resource = &ctx.guard.info.resource;
    let mut err = BytesMut::new();
    protocol::error_response(
        &mut err,
        Severity::Error,
        "42501",
        &format!("jitgate: read-only access to {resource} does not allow {why}"),
        Some(&ctx.refusal_hint),
    );
    lock(&sh.inject).push_back((at, err));
    let p = Pending {
        closes_at: at,
        sql: sql.into(),
        class,
        simple: true,
        started: Instant::now(),
        rows: 0,
        error: Some(Box::new(("42501".into(), format!("refused: {why}")))),
    };
    let took = p.started.elapsed();
    let _ = ctx
        .audit
        .emit_statement(statement_event(ctx, sh, p, "refused", took))
        .await;
}

async fn server_to_client(ctx: &RelayCtx, sh: &Shared, mut sr: ReadHalf, mut cw: WriteHalf, leftover: BytesMut) -> End {
    let mut buf = leftover;
    buf.reserve(64 * 1024);
    let mut received: u64 = 0;
    let mut error_since_ready = false;
    let mut warnings = ctx.guard.warnings.clone();
    let kill = ctx.guard.kill.clone();
    // Created once, not per read: each creation registers a waiter on the token.
    let mut killed = std::pin::pin!(kill.cancelled());
    let bytes_out = ctx
        .metrics
        .bytes_total
        .with_label_values(&["postgres", "server_to_client"]);
    // Statements completed by this read: their audit events are built after the client has its
    // answer, so that work is not on the query's latency path.
    let mut done: Vec<(Pending, &'static str, std::time::Duration)> = Vec::new();
    // Bytes of a large pass-through frame still to forward as they arrive.
    let mut streaming: usize = 0;
    loop {
        if streaming > 0 && !buf.is_empty() {
            let n = streaming.min(buf.len());
            if let Err(e) = cw.write_all(&buf[..n]).await {
                return End::Error(format!("writing to the client: {e}"));
            }
            buf.advance(n);
            streaming -= n;
            continue;
        }
        if streaming > 0
            || buf.is_empty()
            || protocol::header(&buf, usize::MAX)
                .ok()
                .flatten()
                .is_none_or(|h| buf.len() < 5 + h.body_len)
        {
            tokio::select! {
                biased;
                () = &mut killed => {
                    let reason = ctx.guard.kill_reason().unwrap_or(KillReason::Shutdown);
                    let mut e = BytesMut::new();
                    protocol::error_response(&mut e, Severity::Fatal, "57P01", &reason.message(&ctx.guard.info.resource), Some("request access again with `jitgate request`"));
                    let _ = cw.write_all(&e).await;
                    let _ = cw.shutdown().await;
                    return End::Killed(reason);
                }
                r = warnings.changed() => {
                    if r.is_ok() {
                        let msg = warnings.borrow_and_update().clone();
                        if let Some(m) = msg {
                            let mut n = BytesMut::new();
                            protocol::error_response(&mut n, Severity::Warning, "01000", &format!("jitgate: {m}"), None);
                            if cw.write_all(&n).await.is_err() {
                                return End::Client;
                            }
                        }
                    }
                    continue;
                }
                r = sr.read_buf(&mut buf) => match r {
                    Ok(0) => return End::Server,
                    Ok(n) => bytes_out.inc_by(u64::try_from(n).unwrap_or(0)),
                    Err(e) => return End::Error(format!("reading from the database: {e}")),
                },
            }
        }
        // Walk complete frames; write them in one piece unless an injection splits the batch.
        let mut pos = 0usize;
        let mut written = 0usize;
        while let Ok(Some(h)) = protocol::header(&buf[pos..], usize::MAX) {
            let total = 5 + h.body_len;
            if buf.len() - pos < total {
                if total > STREAM_OVER && !matches!(h.tag, b'Z' | b'C' | b'E' | b'I' | b's') {
                    // Forward what we have of it now and the rest as it comes.
                    streaming = total - (buf.len() - pos);
                    pos = buf.len();
                } else if buf.capacity() - buf.len() < total {
                    buf.reserve(total);
                }
                break;
            }
            let body = &buf[pos + 5..pos + total];
            match h.tag {
                b'C' => {
                    let rows = protocol::command_rows(body).unwrap_or(0);
                    let mut q = lock(&sh.pending);
                    if let Some(p) = q.front_mut() {
                        p.rows += rows;
                        if !p.simple
                            && let Some(p) = q.pop_front()
                        {
                            done.push(completed(p, "ok"));
                        }
                    }
                }
                b'I' | b's' => {
                    let mut q = lock(&sh.pending);
                    if q.front().is_some_and(|p| !p.simple)
                        && let Some(p) = q.pop_front()
                    {
                        done.push(completed(p, "ok"));
                    }
                }
                b'E' => {
                    error_since_ready = true;
                    let (code, msg) = protocol::error_fields(body);
                    let mut q = lock(&sh.pending);
                    if let Some(p) = q.front_mut() {
                        p.error = Some(Box::new((code, msg)));
                        if !p.simple
                            && let Some(p) = q.pop_front()
                        {
                            done.push(completed(p, "error"));
                        }
                    }
                }
                b'Z' => {
                    received += 1;
                    let inject = {
                        let mut q = lock(&sh.inject);
                        match q.front() {
                            Some((at, _)) if *at == received => q.pop_front().map(|x| x.1),
                            _ => None,
                        }
                    };
                    // Statements still pending at ReadyForQuery: simple queries complete here;
                    // extended ones after an error were skipped by the server.
                    {
                        let mut q = lock(&sh.pending);
                        while q.front().is_some_and(|p| p.closes_at <= received) {
                            let Some(p) = q.pop_front() else { break };
                            let outcome = if p.error.is_some() {
                                "error"
                            } else if p.simple {
                                "ok"
                            } else {
                                "skipped"
                            };
                            done.push(completed(p, outcome));
                        }
                    }
                    if let Some(err) = inject {
                        if let Err(e) = cw.write_all(&buf[written..pos]).await {
                            audit_done(ctx, sh, &mut done).await;
                            return End::Error(e.to_string());
                        }
                        written = pos;
                        if !error_since_ready && cw.write_all(&err).await.is_err() {
                            audit_done(ctx, sh, &mut done).await;
                            return End::Client;
                        }
                    }
                    error_since_ready = false;
                }
                _ => {}
            }
            pos += total;
        }
        // Statements the server completed are audited even when the client is gone.
        let wrote = if pos > written {
            cw.write_all(&buf[written..pos]).await
        } else {
            Ok(())
        };
        buf.advance(pos);
        if !audit_done(ctx, sh, &mut done).await {
            tracing::error!(session_id = %ctx.guard.info.id, "audit sink closed; ending the session");
            return End::Error("audit log unavailable".into());
        }
        if let Err(e) = wrote {
            return End::Error(format!("writing to the client: {e}"));
        }
    }
}

/// Emit the audit events of completed statements; `false` when the audit sink is gone.
async fn audit_done(ctx: &RelayCtx, sh: &Shared, done: &mut Vec<(Pending, &'static str, std::time::Duration)>) -> bool {
    for (p, outcome, took) in done.drain(..) {
        if let Some(ev) = finish(ctx, sh, p, outcome, took)
            && ctx.audit.emit_statement(ev).await.is_err()
        {
            return false;
        }
    }
    true
}

/// A statement completed now: how long it took (measured here, before the client is answered).
fn completed(p: Pending, outcome: &'static str) -> (Pending, &'static str, std::time::Duration) {
    let took = p.started.elapsed();
    (p, outcome, took)
}

/// A statement completed: its duration metric, and its audit event unless `[audit] statements`
/// is off (then none is built at all).
fn finish(
    ctx: &RelayCtx,
    sh: &Shared,
    p: Pending,
    outcome: &'static str,
    took: std::time::Duration,
) -> Option<Statement> {
    ctx.metrics.query_duration_seconds.observe(took.as_secs_f64());
    ctx.audit_statements.then(|| statement_event(ctx, sh, p, outcome, took))
}
