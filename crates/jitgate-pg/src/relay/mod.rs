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

//! The module is split by direction: [`client`] (client → server: classify, queue, refuse),
//! [`server`] (server → client: match answers to the queue, replace refusals, audit), with
//! what both share in [`state`] and the audit events in [`audit`].

mod audit;
mod client;
mod server;
mod state;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use jitgate_audit::AuditSink;
use jitgate_core::{KillReason, Metrics, SessionGuard};
use tokio::io::AsyncWriteExt;

use crate::classify::Classifier;
use crate::io::Stream;
use crate::protocol::{self, Severity};
use state::{Names, Op, Shared, lock};

/// How long a goodbye (FATAL to the client, Terminate to the server) may take on a kill.
pub const GOODBYE: Duration = Duration::from_millis(250);

/// What the relay needs to know about its session.
pub struct RelayCtx {
    /// Session (kill switch, warnings, ids).
    pub guard: SessionGuard,
    /// Read-only enforcement on.
    pub read_only: bool,
    /// Shared verdict cache.
    pub classifier: Arc<Classifier>,
    /// Where statement events go.
    pub audit: AuditSink,
    /// Statement, refusal and byte counters.
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

/// Relay until the session ends. The caller keeps the context (and with it the session's
/// guard) until the end is recorded, so the session leaves the registry only after its
/// `session.ended`: shutdown waits for an empty registry before it writes `gateway.stopped`.
pub async fn run(
    ctx: &RelayCtx,
    client: Stream,
    server: Stream,
    server_leftover: BytesMut,
    client_leftover: BytesMut,
) -> End {
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let info = &ctx.guard.info;
    let sh = Shared::new(Names {
        identity: info.identity.as_str().into(),
        access: info.access.as_str().into(),
        resource: info.resource.as_str().into(),
        session: info.id.as_str().into(),
    });
    let kill = ctx.guard.kill.clone();
    let mut client_alive = true;
    let end = {
        let c2s = client::client_to_server(ctx, &sh, &mut cr, &mut sw, client_leftover);
        let s2c = server::server_to_client(ctx, &sh, &mut sr, &mut cw, server_leftover, &mut client_alive);
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
    if let Some((code, msg, hint)) = goodbye(ctx, &end) {
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
            if let Some(ev) = audit::finish(ctx, &sh, p, "interrupted", took) {
                let _ = ctx.audit.emit_statement(ev).await;
            }
        }
    }
    end
}

/// The FATAL a session ended by the gateway says to the client: code, message, hint.
fn goodbye(ctx: &RelayCtx, end: &End) -> Option<(&'static str, String, &'static str)> {
    match end {
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
        End::Client | End::Server | End::Error(_) => None,
    }
}

/// A NUL-terminated string off the front of `b`, as bytes.
fn cbytes(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|c| *c == 0) {
        Some(n) => (&b[..n], &b[n + 1..]),
        None => (b, &[]),
    }
}
