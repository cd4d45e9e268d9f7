//! Server → client: backend frames are matched against the op queue (which answer belongs to
//! which client message), forwarded in one write per read unless a refusal replaces a server
//! error, and completed statements are audited once the client has its answer.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::audit::audit_done;
use super::state::{Done, Op, Pending, Shared, completed, copy_in_started, lock, skip_to_sync};
use super::{End, RelayCtx, cbytes};
use crate::classify::Class;
use crate::io::{ReadHalf, WriteHalf};
use crate::protocol::{self, Severity};

/// The audit text of a Sync whose implicit COMMIT failed.
const IMPLICIT_COMMIT: &str = "<Sync: implicit COMMIT of the batch>";

/// The audit text of a Sync answered by a FATAL (the batch may or may not have committed).
const SYNC_FATAL: &str = "<Sync: the server ended the session; whether the batch committed is unknown>";

/// Frames the server → client loop does not inspect are streamed, not buffered whole, when
/// longer than this: a 1 GB row costs the gateway one read buffer, not 1 GB.
const STREAM_OVER: usize = 256 * 1024;

/// What becomes of one backend frame.
enum Answer {
    /// Forwarded as it is.
    Pass,
    /// The gateway's refusal goes to the client in its place.
    Replace(BytesMut),
    /// The session ends before this frame reaches the client.
    End(End),
}

/// The server → client direction's state across reads.
struct Server<'a> {
    ctx: &'a RelayCtx,
    sh: &'a Shared,
    /// The server ignores messages until Sync after an extended-protocol error.
    skipping: bool,
    /// Statements completed by this read.
    done: Done,
}

pub(super) async fn server_to_client(
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
    let mut s = Server {
        ctx,
        sh,
        skipping: false,
        done: Vec::new(),
    };
    let bytes_out = ctx
        .metrics
        .bytes_total
        .with_label_values(&["postgres", "server_to_client"]);
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
                        audit_done(ctx, sh, &mut s.done).await;
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
            match s.answer(h.tag, &buf[pos + 5..pos + total]) {
                Answer::Pass => {}
                Answer::Replace(err) => {
                    send!(&buf[written..pos]);
                    send!(&err);
                    written = pos + total;
                }
                Answer::End(e) => {
                    // Nothing from this frame on reaches the client.
                    ended = Some(e);
                    break;
                }
            }
            pos += total;
        }
        if pos > written {
            send!(&buf[written..pos]);
        }
        buf.advance(pos);
        if !audit_done(ctx, sh, &mut s.done).await {
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

impl Server<'_> {
    /// Match one backend frame (tag and body) with the client message it answers.
    fn answer(&mut self, tag: u8, body: &[u8]) -> Answer {
        let sh = self.sh;
        let mut ops = lock(&sh.ops);
        while matches!(ops.front(), Some(Op::CopyEnd)) {
            ops.pop_front();
        }
        if self.skipping {
            skip_to_sync(&mut ops, &mut self.done, &sh.answered);
        }
        // The COPY ends with its CommandComplete or its error (whoever ended it).
        if matches!(tag, b'C' | b'E' | b'Z') && sh.copy_in.load(Relaxed) {
            sh.copy_in.store(false, Relaxed);
            sh.copy_ended.store(false, Relaxed);
        }
        match tag {
            b'G' => copy_in_started(sh, &mut ops, &mut self.done),
            b'1' if matches!(ops.front(), Some(Op::Parse(..))) => {
                if let Some(Op::Parse(n, e)) = ops.pop_front() {
                    lock(&sh.named).parsed(n, e);
                }
            }
            b'2' if matches!(ops.front(), Some(Op::Bind(..))) => {
                if let Some(Op::Bind(n, e)) = ops.pop_front() {
                    lock(&sh.named).bound(n, e);
                }
            }
            b'3' if matches!(ops.front(), Some(Op::Close(..))) => {
                if let Some(Op::Close(k, n)) = ops.pop_front() {
                    lock(&sh.named).closed(k, &n);
                }
            }
            b'n' | b'T' => {
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
                            self.done.push(completed(p, "ok"));
                        }
                    }
                    _ => {}
                }
            }
            b'I' | b's' => {
                if matches!(ops.front(), Some(Op::Execute(_)))
                    && let Some(Op::Execute(p)) = ops.pop_front()
                {
                    self.done.push(completed(p, "ok"));
                }
            }
            b'E' => {
                if let Some(err) = self.error(&mut ops, body) {
                    return Answer::Replace(err);
                }
            }
            b'Z' => self.ready(&mut ops),
            b'S' if self.ctx.read_only => {
                if let Some(why) = breach(self.ctx, body) {
                    return Answer::End(End::Breach(why));
                }
            }
            _ => {}
        }
        Answer::Pass
    }

    /// ErrorResponse: what it answers, and the gateway's refusal to send instead if it answers
    /// a refused statement's stand-in.
    fn error(&mut self, ops: &mut VecDeque<Op>, body: &[u8]) -> Option<BytesMut> {
        let (code, msg) = protocol::error_fields(body);
        let mut replace = None;
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
                    self.done.push(completed(p, "error"));
                }
                self.skipping = true;
            }
            Some(Op::RefusedParse(_)) => {
                if let Some(Op::RefusedParse(err)) = ops.pop_front() {
                    replace = Some(err);
                }
                self.skipping = true;
            }
            Some(Op::Parse(..) | Op::Bind(..) | Op::Close(..) | Op::Describe) => {
                ops.pop_front();
                self.skipping = true;
            }
            // The Sync's implicit COMMIT failed (a deferred constraint, a serialization
            // failure): what the batch did is rolled back, and the audit says so right after
            // the batch's statements.
            Some(Op::Sync) => {
                // A FATAL here (shutdown, a crash elsewhere) may come after the commit: then
                // whether the batch committed is not known.
                let fatal = body.split(|b| *b == 0).any(|f| f == b"SFATAL" || f == b"SPANIC");
                let text = if fatal { SYNC_FATAL } else { IMPLICIT_COMMIT };
                let mut p = Pending::new(text.into(), Class::Transaction, false);
                p.error = Some(Box::new((code, msg)));
                self.done.push(completed(p, "error"));
            }
            // An error with nothing asked (FATAL at shutdown): passes through.
            Some(Op::CopyEnd) | None => {}
        }
        if self.skipping {
            skip_to_sync(ops, &mut self.done, &self.sh.answered);
        }
        replace
    }

    /// ReadyForQuery: answers the first Sync, Query or FunctionCall; extended ops before it that
    /// got no answer were skipped by the server.
    fn ready(&mut self, ops: &mut VecDeque<Op>) {
        self.skipping = false;
        while let Some(op) = ops.pop_front() {
            match op {
                Op::Sync => break,
                Op::Query(p, refused) | Op::Function(p, refused) => {
                    if refused.is_none() {
                        let outcome = if p.error.is_some() { "error" } else { "ok" };
                        self.done.push(completed(p, outcome));
                    }
                    break;
                }
                Op::Execute(p) => self.done.push(completed(p, "skipped")),
                Op::Parse(..) | Op::Bind(..) | Op::Close(..) | Op::Describe | Op::RefusedParse(_) | Op::CopyEnd => {}
            }
        }
        self.sh.answered.notify_waiters();
    }
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
