//! The relay: one task per session running both directions, framing by the 5-byte header, with
//! the kill switch as a branch of the whole session.
//!
//! **Kill.** Expiry, revoke, release, admin kill and shutdown cancel the session's token; the
//! session's top-level `select!` polls it first, whatever either direction is doing. A client
//! that stops reading (so a write to it blocks) or a server that stops reading cannot hold the
//! session: both directions are dropped on the spot, the client gets a FATAL 57P01 if its socket
//! takes it within [`GOODBYE`], both sockets are closed, and the caller cancels the backend's
//! query. Nothing read from the client after the kill is forwarded.
//!
//! **Reply accounting follows the server's state machine.** Every message the client sends that
//! the server answers (Parse, Bind, Describe, Close, Execute, Sync, Query, FunctionCall) is queued
//! as an *op* before it is written upstream; the server → client direction pops ops as their
//! answers arrive. After an error in an extended-protocol message the server ignores everything
//! up to the next Sync (Query and FunctionCall included), and so does the accounting: skipped ops
//! are popped without answers, so refusals and audit events never drift by a reply. In copy-in
//! mode the server ignores Sync and cannot be predicted on anything else until the client ends
//! the copy, so such a message ends the session unforwarded ([`End::Violation`]).
//!
//! **Refusals are server errors.** A refused statement never reaches the server: its text is
//! replaced by a statement that cannot parse (`Query` or `Parse`), and the server's syntax error
//! for it is replaced by the gateway's 42501 on its way to the client. The server therefore goes
//! through exactly the states a server-side refusal would (aborted transaction, skip to Sync),
//! and nothing the gateway injects can go out of order with pipelined traffic.
//!
//! **Audit on every exit.** A statement is queued for audit when it is forwarded and written when
//! the server answers it; when the client leaves (Terminate in the same packet, or a close), the
//! gateway sends Terminate itself if needed and keeps reading the server until it closes, so
//! statements already on their way are audited with their outcomes. On a kill, a server error or
//! shutdown, what is still unanswered is audited as `interrupted`. FunctionCall is audited with
//! its function's name and OID ([`crate::fastpath`]). Passwords in `CREATE/ALTER ROLE` are
//! redacted before the line is written (and the operator's patterns by the audit writer).
//!
//! **Read-only sessions stay read-only.** PostgreSQL reports `default_transaction_read_only`,
//! `client_encoding`, `standard_conforming_strings`, `is_superuser` and `session_authorization`
//! with ParameterStatus whenever they change. If any of them leaves its pinned value in a
//! read-only session (by whatever route: a function, a rule, a setting the parser missed), the
//! session ends at once with a FATAL and an audit event.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use jitgate_audit::{AuditSink, Statement};
use jitgate_core::{KillReason, Metrics, SessionGuard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::classify::{Class, Classifier, Verdict};
use crate::io::{ReadHalf, Stream, WriteHalf};
use crate::protocol::{self, Severity};

/// How long a goodbye (FATAL to the client, Terminate to the server) may take on a kill.
pub const GOODBYE: Duration = Duration::from_millis(250);

/// Why a statement sent in the middle of a COPY is refused.
const COPY_VIOLATION: &str = "a statement sent during COPY FROM STDIN (the session was ended)";

/// The audit text of a Sync whose implicit COMMIT failed.
const IMPLICIT_COMMIT: &str = "<Sync: implicit COMMIT of the batch>";

/// The audit text of a Sync answered by a FATAL (the batch may or may not have committed).
const SYNC_FATAL: &str = "<Sync: the server ended the session; whether the batch committed is unknown>";

/// What the server is sent in place of a refused statement: it cannot parse, and has no effect.
const REFUSED_SQL: &[u8] = b"jitgate refused this statement\0";

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
    /// The upstream user (a read-only session's `session_authorization` must stay this).
    pub upstream_user: String,
    /// Names fast-path function OIDs for the audit.
    pub functions: Option<Arc<crate::fastpath::Resolver>>,
}

/// A statement awaiting its answer, for audit.
#[derive(Debug)]
struct Pending {
    sql: Arc<str>,
    class: Class,
    simple: bool,
    started: Instant,
    rows: u64,
    error: Option<Box<(String, String)>>,
}

impl Pending {
    fn new(sql: Arc<str>, class: Class, simple: bool) -> Self {
        Self {
            sql,
            class,
            simple,
            started: Instant::now(),
            rows: 0,
            error: None,
        }
    }
}

/// One client message the server will answer, in the order sent.
#[derive(Debug)]
enum Op {
    /// Parse: ParseComplete (then the name means this statement) or an error.
    Parse(Vec<u8>, Named),
    /// Bind: BindComplete (then the portal runs this statement; `None`: one the gateway does not
    /// know) or an error.
    Bind(Vec<u8>, Option<Named>),
    /// Close of a statement (`b'S'`) or portal (`b'P'`): CloseComplete or an error.
    Close(u8, Vec<u8>),
    /// Describe: ParameterDescription (statements) then RowDescription/NoData, or an error.
    Describe,
    /// Execute: rows, then CommandComplete/EmptyQuery/PortalSuspended, or an error.
    Execute(Pending),
    /// Sync: ReadyForQuery.
    Sync,
    /// Query: results and errors, then ReadyForQuery. `refusal`: the gateway's error, sent in
    /// place of the server's error for the unparsable stand-in.
    Query(Pending, Option<BytesMut>),
    /// FunctionCall: FunctionCallResponse or an error, then ReadyForQuery.
    Function(Pending, Option<BytesMut>),
    /// A refused Parse or Execute: the server's error for the stand-in is replaced by this one.
    RefusedParse(BytesMut),
    /// No answer: the client sent CopyDone or CopyFail here. The server → client direction uses
    /// it to tell which Syncs the server ignored in copy-in mode (see [`copy_in_started`]);
    /// dropped when it reaches the front.
    CopyEnd,
}

/// What a statement name or portal stands for: audit text, class, ends a transaction.
type Named = (Arc<str>, Class, bool);

/// Statement names and portals as the server knows them: changed only when the server confirms
/// (ParseComplete, BindComplete, CloseComplete), so a Parse the server rejects or skips never
/// changes what a name means to the gateway.
#[derive(Default)]
struct NameMap {
    statements: HashMap<Vec<u8>, Named>,
    portals: HashMap<Vec<u8>, Named>,
}

/// What a name means to a message just queued: the latest pending Parse/Bind/Close for it in the
/// queue (the server applies them in order, and skips what follows one that fails), else what
/// the server confirmed.
fn lookup(ops: &VecDeque<Op>, names: &NameMap, portal: bool, name: &[u8]) -> Option<Named> {
    for op in ops.iter().rev() {
        match op {
            Op::Parse(n, e) if !portal && n == name => return Some(e.clone()),
            Op::Bind(n, e) if portal && n == name => return e.clone(),
            Op::Close(k, n) if n == name && (*k == b'P') == portal => return None,
            _ => {}
        }
    }
    if portal {
        names.portals.get(name)
    } else {
        names.statements.get(name)
    }
    .cloned()
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
    ops: Mutex<VecDeque<Op>>,
    /// Locked after `ops` when both are needed.
    named: Mutex<NameMap>,
    /// Told when a ReadyForQuery has been handled (read-only sessions wait for it).
    answered: tokio::sync::Notify,
    /// The server is in copy-in mode (it said CopyInResponse and has not yet ended the COPY with
    /// CommandComplete or an error). Read and written under the `ops` lock.
    copy_in: std::sync::atomic::AtomicBool,
    /// The client has sent the CopyDone or CopyFail that ends the current copy.
    copy_ended: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// A Sync, Query or FunctionCall is still unanswered.
    fn unit_in_flight(&self) -> bool {
        lock(&self.ops)
            .iter()
            .any(|o| matches!(o, Op::Sync | Op::Query(..) | Op::Function(..)))
    }

    /// Until every forwarded Sync, Query and FunctionCall has its ReadyForQuery.
    async fn wait_answered(&self) {
        loop {
            let n = self.answered.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if !self.unit_in_flight() {
                return;
            }
            n.await;
        }
    }
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
    /// A read-only session left read-only mode (or the way text is read) upstream: ended.
    Breach(String),
    /// The client broke the protocol in a way whose outcome on the server cannot be known
    /// (a message during COPY FROM STDIN): ended before that message was forwarded.
    Violation(String),
    /// Protocol or I/O error.
    Error(String),
}

/// Relay until the session ends. The session deregisters when this returns (its guard is
/// dropped with the context).
pub async fn run(
    ctx: RelayCtx,
    client: Stream,
    server: Stream,
    server_leftover: BytesMut,
    client_leftover: BytesMut,
) -> End {
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let info = &ctx.guard.info;
    let sh = Shared {
        names: Names {
            identity: info.identity.as_str().into(),
            access: info.access.as_str().into(),
            resource: info.resource.as_str().into(),
            session: info.id.as_str().into(),
        },
        ops: Mutex::default(),
        named: Mutex::default(),
        answered: tokio::sync::Notify::new(),
        copy_in: std::sync::atomic::AtomicBool::new(false),
        copy_ended: std::sync::atomic::AtomicBool::new(false),
    };
    let kill = ctx.guard.kill.clone();
    let mut client_alive = true;
    let end = {
        let c2s = client_to_server(&ctx, &sh, &mut cr, &mut sw, client_leftover);
        let s2c = server_to_client(&ctx, &sh, &mut sr, &mut cw, server_leftover, &mut client_alive);
        tokio::pin!(c2s, s2c);
        let mut client_end: Option<End> = None;
        loop {
            tokio::select! {
                biased;
                () = kill.cancelled() => {
                    break End::Killed(ctx.guard.kill_reason().unwrap_or(KillReason::Shutdown));
                }
                e = &mut s2c => {
                    // The server closed after the client left: the client's ending is the story.
                    break match (client_end.take(), e) {
                        (Some(c), End::Server | End::Error(_)) => c,
                        (_, e) => e,
                    };
                }
                e = &mut c2s, if client_end.is_none() => {
                    // A violation ends the session now (the server may be waiting for copy
                    // data that will never come).
                    if let End::Violation(_) = e {
                        break e;
                    }
                    // The client is done (Terminate forwarded, or sent for it): keep reading the
                    // server until it closes, so what was already sent is answered and audited.
                    client_end = Some(e);
                }
            }
        }
    };
    // Both directions are dropped here, whatever they were blocked on.
    let goodbye = match &end {
        End::Killed(reason) => Some((
            "57P01",
            reason.message(&ctx.guard.info.resource),
            "request access again with `jitgate request`",
        )),
        End::Breach(why) => Some((
            "57P01",
            format!("jitgate: {why}"),
            "the session was ended to keep the grant read-only",
        )),
        End::Violation(why) => Some((
            "08P01",
            format!("jitgate: protocol violation: {why}"),
            "end a COPY with CopyDone or CopyFail before sending anything else",
        )),
        _ => None,
    };
    if let Some((code, msg, hint)) = goodbye {
        let mut e = BytesMut::new();
        protocol::error_response(&mut e, Severity::Fatal, code, &msg, Some(hint));
        if client_alive {
            let _ = tokio::time::timeout(GOODBYE, async {
                let _ = cw.write_all(&e).await;
                let _ = cw.shutdown().await;
            })
            .await;
        }
        let mut x = BytesMut::new();
        protocol::message(&mut x, b'X', &[]);
        let _ = tokio::time::timeout(GOODBYE, async {
            let _ = sw.write_all(&x).await;
            let _ = sw.shutdown().await;
        })
        .await;
    }
    // Whatever is still unanswered was sent to the server: audit it.
    let left: Vec<Op> = lock(&sh.ops).drain(..).collect();
    for op in left {
        if let Op::Execute(p) | Op::Query(p, None) | Op::Function(p, None) = op {
            let took = p.started.elapsed();
            if let Some(ev) = finish(&ctx, &sh, p, "interrupted", took) {
                let _ = ctx.audit.emit_statement(ev).await;
            }
        }
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
        // A server's message can quote a whole literal: cut like the SQL, so no line grows
        // past what the log can read back.
        error: p.error.map(|mut e| {
            if e.1.len() > ctx.max_text {
                let cut = e.1.floor_char_boundary(ctx.max_text);
                e.1.truncate(cut);
                e.1.push('…');
            }
            e
        }),
    }
}

/// A NUL-terminated string off the front of `b`, as bytes.
fn cbytes(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|c| *c == 0) {
        Some(n) => (&b[..n], &b[n + 1..]),
        None => (b, &[]),
    }
}

/// The function OID of a FunctionCall body (0 when the body is too short).
fn function_oid(body: &[u8]) -> u32 {
    body.get(..4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// SQL text as received: UTF-8 (the session's client_encoding is pinned to UTF8), or `None`.
fn text(b: &[u8]) -> Option<&str> {
    std::str::from_utf8(b).ok()
}

/// The audit form of a text: redacted when it carries a password; hex when not UTF-8.
fn audit_text(sql: &[u8], v: &Verdict) -> Arc<str> {
    match text(sql) {
        Some(s) if v.secret => crate::classify::redact(s).into(),
        Some(s) => s.into(),
        None => format!("<not UTF-8: {}>", hex::encode(sql)).into(),
    }
}

/// The verdict for a text's bytes: undecodable text is refused under read-only.
fn verdict_of(ctx: &RelayCtx, sql: &[u8]) -> Arc<Verdict> {
    match text(sql) {
        Some(s) => ctx.classifier.classify(s),
        None => Arc::new(crate::classify::unparsed("text that is not valid UTF-8".into())),
    }
}

async fn client_to_server(
    ctx: &RelayCtx,
    sh: &Shared,
    cr: &mut ReadHalf,
    sw: &mut WriteHalf,
    leftover: BytesMut,
) -> End {
    let mut buf = leftover;
    buf.reserve(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    // Read-only: a transaction ended in this batch (since the last Sync); nothing more may run
    // before the server has answered (see `classify` on transaction ends).
    let mut ended_in_unit = false;
    // Read-only: a Sync, Query or FunctionCall was forwarded; the next one waits for its answer,
    // so a session default changed upstream (ParameterStatus) is seen before anything else runs.
    let mut unit_sent = false;
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
        let next = protocol::header(&buf, ctx.max_message)
            .ok()
            .flatten()
            .filter(|h| buf.len() >= 5 + h.body_len)
            .map(|h| h.tag);
        if unit_sent && next.is_some_and(holds) {
            sh.wait_answered().await;
            unit_sent = false;
        }
        if next.is_none() {
            let n = match cr.read_buf(&mut buf).await {
                Ok(n) => n,
                Err(e) => return leave(sw, End::Error(format!("reading from the client: {e}"))).await,
            };
            if n == 0 {
                return leave(sw, End::Client).await;
            }
            bytes_in.inc_by(u64::try_from(n).unwrap_or(0));
        }
        let mut terminate = false;
        // Refusals are audited once the lock on the op queue is let go.
        let mut refused_audits: Vec<(Arc<str>, Class, String, bool)> = Vec::new();
        loop {
            let h = match protocol::header(&buf, ctx.max_message) {
                Ok(Some(h)) if unit_sent && holds(h.tag) => break,
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    // What came before the bad message goes out; the bad message does not.
                    for (sql, class, why, simple) in refused_audits.drain(..) {
                        audit_refusal(ctx, sh, sql, class, &why, simple).await;
                    }
                    let _ = sw.write_all(&out).await;
                    return leave(sw, End::Error(format!("client sent a bad message: {e}"))).await;
                }
            };
            let total = 5 + h.body_len;
            if buf.len() < total {
                buf.reserve(total - buf.len());
                break;
            }
            let frame = buf.split_to(total);
            let body = &frame[5..];
            // A fast-path call is audited by name: looked up before the op queue is locked.
            let function = match (h.tag, &ctx.functions) {
                (b'F', Some(r)) => r.name(function_oid(body)).await,
                _ => None,
            };
            let mut ops = lock(&sh.ops);
            // In copy-in mode, until the client ends the copy, only copy data (and Flush) may come:
            // PostgreSQL ignores a Sync there and ends the connection on anything else, unless
            // the copy has just failed on its own (a bad row, a timeout, a cancel), when it
            // runs it. Which of the two the server will do cannot be known here, so such a
            // message is never forwarded: the session ends (fail closed; no client does this).
            let copying = sh.copy_in.load(Relaxed) && !sh.copy_ended.load(Relaxed);
            if copying && !matches!(h.tag, b'd' | b'c' | b'f' | b'H' | b'X') {
                let what = match h.tag {
                    b'Q' | b'P' => {
                        let sql = if h.tag == b'Q' {
                            cbytes(body).0
                        } else {
                            cbytes(cbytes(body).1).0
                        };
                        let v = verdict_of(ctx, sql);
                        refused_audits.push((audit_text(sql, &v), v.class, COPY_VIOLATION.into(), h.tag == b'Q'));
                        "a statement"
                    }
                    b'S' => "a Sync",
                    _ => "a message",
                };
                drop(ops);
                for (sql, class, why, simple) in refused_audits.drain(..) {
                    audit_refusal(ctx, sh, sql, class, &why, simple).await;
                }
                let _ = sw.write_all(&out).await;
                return End::Violation(format!(
                    "the client sent {what} during COPY FROM STDIN before CopyDone or CopyFail"
                ));
            }
            match h.tag {
                b'c' | b'f' => {
                    if sh.copy_in.load(Relaxed) {
                        sh.copy_ended.store(true, Relaxed);
                    } else if !ops.is_empty() && !matches!(ops.back(), Some(Op::CopyEnd)) {
                        // Before the server said CopyInResponse: it may end a copy the last
                        // queued statement starts (one marker is enough; outside a copy the
                        // server ignores these messages).
                        ops.push_back(Op::CopyEnd);
                    }
                    out.extend_from_slice(&frame);
                }
                b'Q' => {
                    let (sql, _) = cbytes(body);
                    let v = verdict_of(ctx, sql);
                    count(v.class);
                    let audit = audit_text(sql, &v);
                    let after_end = ctx.read_only && ended_in_unit;
                    ended_in_unit = false;
                    unit_sent = ctx.read_only;
                    let why = if after_end {
                        Some("a statement after a transaction ended in the same batch")
                    } else {
                        v.read_only_refusal.as_deref()
                    };
                    if let (true, Some(why)) = (ctx.read_only, why) {
                        let err = refusal(ctx, why);
                        refused_audits.push((audit, v.class, why.to_string(), true));
                        ops.push_back(Op::Query(Pending::new("".into(), v.class, true), Some(err)));
                        protocol::message(&mut out, b'Q', REFUSED_SQL);
                    } else {
                        ops.push_back(Op::Query(Pending::new(audit, v.class, true), None));
                        out.extend_from_slice(&frame);
                    }
                }
                b'P' => {
                    let (name, rest) = cbytes(body);
                    let (sql, _) = cbytes(rest);
                    let v = verdict_of(ctx, sql);
                    let audit = audit_text(sql, &v);
                    if let (true, Some(why)) = (ctx.read_only, &v.read_only_refusal) {
                        let err = refusal(ctx, why);
                        let name = name.to_vec();
                        refused_audits.push((audit, v.class, why.to_string(), false));
                        ops.push_back(Op::RefusedParse(err));
                        let mut b = name;
                        b.push(0);
                        b.extend_from_slice(REFUSED_SQL);
                        b.extend_from_slice(&0i16.to_be_bytes());
                        protocol::message(&mut out, b'P', &b);
                    } else {
                        ops.push_back(Op::Parse(name.to_vec(), (audit, v.class, v.ends_transaction)));
                        out.extend_from_slice(&frame);
                    }
                }
                b'B' => {
                    let (portal, rest) = cbytes(body);
                    let (stmt, _) = cbytes(rest);
                    let e = {
                        let named = lock(&sh.named);
                        lookup(&ops, &named, false, stmt)
                    };
                    ops.push_back(Op::Bind(portal.to_vec(), e));
                    out.extend_from_slice(&frame);
                }
                b'E' => {
                    let (portal, _) = cbytes(body);
                    // A portal the gateway does not know (its maps were reset) may end a
                    // transaction as far as the read-only rules are concerned.
                    let found = {
                        let named = lock(&sh.named);
                        lookup(&ops, &named, true, portal)
                    };
                    let (sql, class, ends) = found.unwrap_or_else(|| (Arc::from(""), Class::Other, true));
                    count(class);
                    if ctx.read_only && ended_in_unit {
                        // Refused as a server error: an Execute of a portal that cannot exist.
                        let why = "a statement after a transaction ended in the same batch";
                        let err = refusal(ctx, why);
                        refused_audits.push((sql, class, why.to_string(), false));
                        ops.push_back(Op::RefusedParse(err));
                        // In its place a Parse that cannot succeed, whatever names the client
                        // made: a syntax error comes first.
                        let mut b = b"\x01jitgate refused\0".to_vec();
                        b.extend_from_slice(REFUSED_SQL);
                        b.extend_from_slice(&0i16.to_be_bytes());
                        protocol::message(&mut out, b'P', &b);
                    } else {
                        ended_in_unit |= ends;
                        ops.push_back(Op::Execute(Pending::new(sql, class, false)));
                        out.extend_from_slice(&frame);
                    }
                }
                b'D' => {
                    ops.push_back(Op::Describe);
                    out.extend_from_slice(&frame);
                }
                b'S' => {
                    ended_in_unit = false;
                    unit_sent = ctx.read_only;
                    ops.push_back(Op::Sync);
                    out.extend_from_slice(&frame);
                }
                b'F' => {
                    let oid = function_oid(body);
                    let sql: Arc<str> = match function {
                        Some(name) => format!("<FunctionCall {name} oid={oid}>").into(),
                        None => format!("<FunctionCall oid={oid}>").into(),
                    };
                    count(Class::Other);
                    unit_sent = ctx.read_only;
                    if ctx.read_only {
                        let why = "fast-path function calls";
                        let err = refusal(ctx, why);
                        refused_audits.push((sql, Class::Other, why.to_string(), true));
                        ops.push_back(Op::Function(Pending::new("".into(), Class::Other, true), Some(err)));
                        protocol::message(&mut out, b'Q', REFUSED_SQL);
                    } else {
                        ops.push_back(Op::Function(Pending::new(sql, Class::Other, true), None));
                        out.extend_from_slice(&frame);
                    }
                }
                b'X' => {
                    out.extend_from_slice(&frame);
                    terminate = true;
                    break;
                }
                b'C' => {
                    // Close statement ('S') or portal ('P'): forgotten once the server confirms.
                    let (kind, name) = body.split_first().map_or((b'S', &[][..]), |(k, n)| (*k, cbytes(n).0));
                    ops.push_back(Op::Close(kind, name.to_vec()));
                    out.extend_from_slice(&frame);
                }
                // Flush, CopyData: no answer of their own.
                _ => out.extend_from_slice(&frame),
            }
        }
        for (sql, class, why, simple) in refused_audits {
            audit_refusal(ctx, sh, sql, class, &why, simple).await;
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

/// Read-only: messages held back while a Sync, Query or FunctionCall is unanswered. Sync, Flush
/// and Terminate run nothing (and the server may be waiting for that Sync after an error).
fn holds(tag: u8) -> bool {
    !matches!(tag, b'S' | b'H' | b'X')
}

/// The client is gone without a Terminate: say it for the client, so the server finishes what
/// it has and closes (the server → client direction reads it to the end).
async fn leave(sw: &mut WriteHalf, end: End) -> End {
    let mut x = BytesMut::new();
    protocol::message(&mut x, b'X', &[]);
    let _ = sw.write_all(&x).await;
    let _ = sw.shutdown().await;
    end
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn refusal(ctx: &RelayCtx, why: &str) -> BytesMut {
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
    err
}

async fn audit_refusal(ctx: &RelayCtx, sh: &Shared, sql: Arc<str>, class: Class, why: &str, simple: bool) {
    let mut p = Pending::new(sql, class, simple);
    p.error = Some(Box::new(("42501".into(), format!("refused: {why}"))));
    let _ = ctx
        .audit
        .emit_statement(statement_event(ctx, sh, p, "refused", Duration::ZERO))
        .await;
}

/// ParameterStatus values a read-only session must keep; `None` when this one is fine.
fn breach(ctx: &RelayCtx, body: &[u8]) -> Option<String> {
    let (k, rest) = cbytes(body);
    let (v, _) = cbytes(rest);
    let (k, v) = (String::from_utf8_lossy(k), String::from_utf8_lossy(v));
    let ok = match k.as_ref() {
        "default_transaction_read_only" => v == "on",
        "client_encoding" => v.eq_ignore_ascii_case("UTF8"),
        "standard_conforming_strings" => v == "on",
        "is_superuser" => v == "off",
        "session_authorization" => v == ctx.upstream_user,
        _ => true,
    };
    (!ok).then(|| format!("the read-only session's {k} became {v:?} upstream"))
}

/// Statements completed by one read, audited once the client has its answer.
type Done = Vec<(Pending, &'static str, Duration)>;

/// Pop ops the server skipped (after an extended-protocol error, until Sync); `notify` is told
/// when a Query or FunctionCall went (a read-only session may be waiting for it).
fn skip_to_sync(ops: &mut VecDeque<Op>, done: &mut Done, notify: &tokio::sync::Notify) {
    let mut unit = false;
    while let Some(op) = ops.front() {
        if matches!(op, Op::Sync) {
            break;
        }
        match ops.pop_front() {
            Some(Op::Execute(p)) => done.push(completed(p, "skipped")),
            Some(Op::Query(p, refused) | Op::Function(p, refused)) => {
                unit = true;
                if refused.is_none() {
                    done.push(completed(p, "skipped"));
                }
            }
            _ => {}
        }
    }
    if unit {
        notify.notify_waiters();
    }
}

/// CopyInResponse: the Query or Execute at the front put the server in copy-in mode. What the
/// client sent after that statement and before any copy message reached the server in copy-in
/// mode: a Sync there is ignored (no ReadyForQuery: it leaves the queue), and any other message
/// ends the connection without running (it leaves the queue as `skipped`). A CopyEnd marker
/// means the client already ended this copy; otherwise the client → server direction applies
/// the copy rules as its messages come.
fn copy_in_started(sh: &Shared, ops: &mut VecDeque<Op>, done: &mut Done) {
    sh.copy_in.store(true, Relaxed);
    sh.copy_ended.store(false, Relaxed);
    // What follows the copying statement, in the order the client sent it.
    loop {
        match ops.get(1) {
            Some(Op::Sync) => {
                ops.remove(1);
            }
            Some(Op::CopyEnd) => {
                ops.remove(1);
                sh.copy_ended.store(true, Relaxed);
                return;
            }
            Some(_) => {
                if let Some(Op::Execute(p) | Op::Query(p, None) | Op::Function(p, None)) = ops.remove(1) {
                    done.push(completed(p, "skipped"));
                }
                sh.copy_ended.store(true, Relaxed);
                return;
            }
            None => return,
        }
    }
}

async fn server_to_client(
    ctx: &RelayCtx,
    sh: &Shared,
    sr: &mut ReadHalf,
    cw: &mut WriteHalf,
    leftover: BytesMut,
    client_alive: &mut bool,
) -> End {
    let mut buf = leftover;
    buf.reserve(64 * 1024);
    let mut warnings = ctx.guard.warnings.clone();
    // The server ignores messages until Sync after an extended-protocol error.
    let mut skipping = false;
    let bytes_out = ctx
        .metrics
        .bytes_total
        .with_label_values(&["postgres", "server_to_client"]);
    let mut done: Done = Vec::new();
    // Bytes of a large pass-through frame still to forward as they arrive.
    let mut streaming: usize = 0;
    // Writes to the client; once it is gone, answers are read (and audited) but dropped.
    macro_rules! send {
        ($bytes:expr) => {
            if *client_alive && cw.write_all($bytes).await.is_err() {
                *client_alive = false;
            }
        };
    }
    loop {
        if streaming > 0 && !buf.is_empty() {
            let n = streaming.min(buf.len());
            send!(&buf[..n]);
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
                r = warnings.changed() => {
                    if r.is_ok() {
                        let msg = warnings.borrow_and_update().clone();
                        if let Some(m) = msg {
                            let mut n = BytesMut::new();
                            protocol::error_response(&mut n, Severity::Warning, "01000", &format!("jitgate: {m}"), None);
                            send!(&n);
                        }
                    }
                    continue;
                }
                r = sr.read_buf(&mut buf) => match r {
                    Ok(0) => {
                        audit_done(ctx, sh, &mut done).await;
                        return End::Server;
                    }
                    Ok(n) => bytes_out.inc_by(u64::try_from(n).unwrap_or(0)),
                    Err(e) => return End::Error(format!("reading from the database: {e}")),
                },
            }
        }
        // Walk complete frames; write them in one piece unless a replacement splits the batch.
        let mut pos = 0usize;
        let mut written = 0usize;
        let mut ended: Option<End> = None;
        while let Ok(Some(h)) = protocol::header(&buf[pos..], usize::MAX) {
            let total = 5 + h.body_len;
            if buf.len() - pos < total {
                if total > STREAM_OVER && !matches!(h.tag, b'Z' | b'C' | b'E' | b'I' | b's' | b'S' | b'V') {
                    // Forward what we have of it now and the rest as it comes.
                    streaming = total - (buf.len() - pos);
                    pos = buf.len();
                } else if buf.capacity() - buf.len() < total {
                    buf.reserve(total);
                }
                break;
            }
            let body = &buf[pos + 5..pos + total];
            let mut replace: Option<BytesMut> = None;
            {
                let mut ops = lock(&sh.ops);
                while matches!(ops.front(), Some(Op::CopyEnd)) {
                    ops.pop_front();
                }
                if skipping {
                    skip_to_sync(&mut ops, &mut done, &sh.answered);
                }
                // The COPY ends with its CommandComplete or its error (whoever ended it).
                if matches!(h.tag, b'C' | b'E' | b'Z') && sh.copy_in.load(Relaxed) {
                    sh.copy_in.store(false, Relaxed);
                    sh.copy_ended.store(false, Relaxed);
                }
                match h.tag {
                    b'G' => copy_in_started(sh, &mut ops, &mut done),
                    b'1' if matches!(ops.front(), Some(Op::Parse(..))) => {
                        if let Some(Op::Parse(n, e)) = ops.pop_front() {
                            let mut m = lock(&sh.named);
                            if m.statements.len() >= MAX_NAMED {
                                // A client that never closes its statements: memory stays
                                // bounded; their portals count as unknown from then on.
                                m.statements.clear();
                            }
                            m.statements.insert(n, e);
                        }
                    }
                    b'2' if matches!(ops.front(), Some(Op::Bind(..))) => {
                        if let Some(Op::Bind(n, e)) = ops.pop_front() {
                            let mut m = lock(&sh.named);
                            if m.portals.len() >= MAX_NAMED {
                                m.portals.clear();
                            }
                            match e {
                                Some(e) => m.portals.insert(n, e),
                                None => m.portals.remove(&n),
                            };
                        }
                    }
                    b'3' if matches!(ops.front(), Some(Op::Close(..))) => {
                        if let Some(Op::Close(k, n)) = ops.pop_front() {
                            let mut m = lock(&sh.named);
                            if k == b'P' {
                                m.portals.remove(&n);
                            } else {
                                m.statements.remove(&n);
                            }
                        }
                    }
                    b'n' => {
                        if matches!(ops.front(), Some(Op::Describe)) {
                            ops.pop_front();
                        }
                    }
                    b'T' => {
                        if matches!(ops.front(), Some(Op::Describe)) {
                            ops.pop_front();
                        }
                    }
                    b'C' => {
                        let rows = protocol::command_rows(body).unwrap_or(0);
                        match ops.front_mut() {
                            Some(Op::Query(p, _)) => p.rows += rows,
                            Some(Op::Execute(p)) => {
                                p.rows += rows;
                                if let Some(Op::Execute(p)) = ops.pop_front() {
                                    done.push(completed(p, "ok"));
                                }
                            }
                            _ => {}
                        }
                    }
                    b'I' | b's' => {
                        if matches!(ops.front(), Some(Op::Execute(_)))
                            && let Some(Op::Execute(p)) = ops.pop_front()
                        {
                            done.push(completed(p, "ok"));
                        }
                    }
                    b'V' => {}
                    b'E' => {
                        let (code, msg) = protocol::error_fields(body);
                        match ops.front_mut() {
                            Some(Op::Query(p, refused) | Op::Function(p, refused)) => {
                                if let Some(err) = refused {
                                    replace = Some(err.clone());
                                } else {
                                    p.error = Some(Box::new((code, msg)));
                                }
                            }
                            Some(Op::Execute(_)) => {
                                if let Some(Op::Execute(mut p)) = ops.pop_front() {
                                    p.error = Some(Box::new((code, msg)));
                                    done.push(completed(p, "error"));
                                }
                                skipping = true;
                            }
                            Some(Op::RefusedParse(_)) => {
                                if let Some(Op::RefusedParse(err)) = ops.pop_front() {
                                    replace = Some(err);
                                }
                                skipping = true;
                            }
                            Some(Op::Parse(..) | Op::Bind(..) | Op::Close(..) | Op::Describe) => {
                                ops.pop_front();
                                skipping = true;
                            }
                            // The Sync's implicit COMMIT failed (a deferred constraint, a
                            // serialization failure): what the batch did is rolled back, and the
                            // audit says so right after the batch's statements.
                            Some(Op::Sync) => {
                                // A FATAL here (shutdown, a crash elsewhere) may come after the
                                // commit: then whether the batch committed is not known.
                                let fatal = body.split(|b| *b == 0).any(|f| f == b"SFATAL" || f == b"SPANIC");
                                let text = if fatal { SYNC_FATAL } else { IMPLICIT_COMMIT };
                                let mut p = Pending::new(text.into(), Class::Transaction, false);
                                p.error = Some(Box::new((code, msg)));
                                done.push(completed(p, "error"));
                            }
                            // An error with nothing asked (FATAL at shutdown): passes through.
                            Some(Op::CopyEnd) | None => {}
                        }
                        if skipping {
                            skip_to_sync(&mut ops, &mut done, &sh.answered);
                        }
                    }
                    b'Z' => {
                        skipping = false;
                        // Answers the first Sync, Query or FunctionCall; extended ops before it
                        // that got no answer were skipped by the server.
                        while let Some(op) = ops.pop_front() {
                            match op {
                                Op::Sync => break,
                                Op::Query(p, refused) | Op::Function(p, refused) => {
                                    if refused.is_none() {
                                        let outcome = if p.error.is_some() { "error" } else { "ok" };
                                        done.push(completed(p, outcome));
                                    }
                                    break;
                                }
                                Op::Execute(p) => done.push(completed(p, "skipped")),
                                Op::Parse(..)
                                | Op::Bind(..)
                                | Op::Close(..)
                                | Op::Describe
                                | Op::RefusedParse(_)
                                | Op::CopyEnd => {}
                            }
                        }
                        sh.answered.notify_waiters();
                    }
                    b'S' if ctx.read_only => {
                        if let Some(why) = breach(ctx, body) {
                            ended = Some(End::Breach(why));
                        }
                    }
                    _ => {}
                }
            }
            if ended.is_some() {
                // Nothing from this frame on reaches the client.
                break;
            }
            if let Some(err) = replace {
                send!(&buf[written..pos]);
                send!(&err);
                written = pos + total;
            }
            pos += total;
        }
        if pos > written {
            send!(&buf[written..pos]);
        }
        buf.advance(pos);
        if !audit_done(ctx, sh, &mut done).await {
            tracing::error!(session_id = %ctx.guard.info.id, "audit sink closed; ending the session");
            return End::Error("audit log unavailable".into());
        }
        if let Some(e) = ended {
            if let End::Breach(why) = &e {
                tracing::error!(session_id = %ctx.guard.info.id, why = %why, "read-only session breach; ending it");
            }
            return e;
        }
    }
}

/// Emit the audit events of completed statements; `false` when the audit sink is gone.
async fn audit_done(ctx: &RelayCtx, sh: &Shared, done: &mut Done) -> bool {
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
fn completed(p: Pending, outcome: &'static str) -> (Pending, &'static str, Duration) {
    let took = p.started.elapsed();
    (p, outcome, took)
}

/// A statement completed: its duration metric, and its audit event unless `[audit] statements`
/// is off (then none is built at all).
fn finish(ctx: &RelayCtx, sh: &Shared, p: Pending, outcome: &'static str, took: Duration) -> Option<Statement> {
    ctx.metrics.query_duration_seconds.observe(took.as_secs_f64());
    ctx.audit_statements.then(|| statement_event(ctx, sh, p, outcome, took))
}
