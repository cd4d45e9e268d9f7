//! Client → server: frames read from the client are classified, queued as ops (what the server
//! will answer) and written upstream in one piece per read; refused statements are replaced by
//! a stand-in that cannot parse.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::audit::{Refused, audit_refusals, audit_text, refusal, verdict_of};
use super::state::{Op, Pending, Shared, lock, lookup};
use super::{End, RelayCtx, cbytes};
use crate::classify::Class;
use crate::io::{ReadHalf, WriteHalf};
use crate::protocol;

/// Why a statement sent in the middle of a COPY is refused.
const COPY_VIOLATION: &str = "a statement sent during COPY FROM STDIN (the session was ended)";

/// What the server is sent in place of a refused statement: it cannot parse, and has no effect.
pub(super) const REFUSED_SQL: &[u8] = b"jitgate refused this statement\0";

/// Why a statement after a transaction end in the same batch is refused (read-only).
const AFTER_END: &str = "a statement after a transaction ended in the same batch";

/// What one client frame asks of the read loop.
enum Step {
    /// Go on with the next frame.
    Next,
    /// Terminate: written with the batch, then the session's client side is done.
    Terminate,
    /// A message the server's answer to cannot be predicted (during COPY FROM STDIN): the
    /// session ends before it is forwarded; the text names what it was.
    Violation(&'static str),
}

/// The client → server direction's state across reads.
struct Client<'a> {
    ctx: &'a RelayCtx,
    sh: &'a Shared,
    /// What goes upstream for the frames of this read.
    out: BytesMut,
    /// Read-only: a transaction ended in this batch (since the last Sync); nothing more may run
    /// before the server has answered (see `classify` on transaction ends).
    ended_in_unit: bool,
    /// Read-only: a Sync, Query or FunctionCall was forwarded; the next one waits for its
    /// answer, so a session default changed upstream (ParameterStatus) is seen before anything
    /// else runs.
    unit_sent: bool,
    /// Counter handles resolved once per class, not hashed per statement.
    counters: HashMap<Class, prometheus::IntCounter>,
    /// Refusals, audited once the lock on the op queue is let go.
    refused: Vec<Refused>,
}

pub(super) async fn client_to_server(
    ctx: &RelayCtx,
    sh: &Shared,
    cr: &mut ReadHalf,
    sw: &mut WriteHalf,
    leftover: BytesMut,
) -> End {
    let mut buf = leftover;
    buf.reserve(16 * 1024);
    let mut c = Client {
        ctx,
        sh,
        out: BytesMut::with_capacity(16 * 1024),
        ended_in_unit: false,
        unit_sent: false,
        counters: HashMap::new(),
        refused: Vec::new(),
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
        if c.unit_sent && next.is_some_and(holds) {
            sh.wait_answered().await;
            c.unit_sent = false;
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
        loop {
            let h = match protocol::header(&buf, ctx.max_message) {
                Ok(Some(h)) if c.unit_sent && holds(h.tag) => break,
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    // What came before the bad message goes out; the bad message does not.
                    audit_refusals(ctx, sh, &mut c.refused).await;
                    let _ = sw.write_all(&c.out).await;
                    return leave(sw, End::Error(format!("client sent a bad message: {e}"))).await;
                }
            };
            let total = 5 + h.body_len;
            if buf.len() < total {
                buf.reserve(total - buf.len());
                break;
            }
            let frame = buf.split_to(total);
            // A fast-path call is audited by name: looked up before the op queue is locked.
            let function = match (h.tag, &ctx.functions) {
                (b'F', Some(r)) => r.name(function_oid(&frame[5..])).await,
                _ => None,
            };
            match c.frame(h.tag, &frame, function) {
                Step::Next => {}
                Step::Terminate => {
                    terminate = true;
                    break;
                }
                Step::Violation(what) => {
                    audit_refusals(ctx, sh, &mut c.refused).await;
                    let _ = sw.write_all(&c.out).await;
                    return End::Violation(format!(
                        "the client sent {what} during COPY FROM STDIN before CopyDone or CopyFail"
                    ));
                }
            }
        }
        audit_refusals(ctx, sh, &mut c.refused).await;
        if !c.out.is_empty() {
            if let Err(e) = sw.write_all(&c.out).await {
                return End::Error(format!("writing to the database: {e}"));
            }
            c.out.clear();
        }
        if terminate {
            let _ = sw.shutdown().await;
            return End::Client;
        }
    }
}

impl Client<'_> {
    /// One whole client frame (header included): queue what the server will answer and put
    /// what goes upstream in `out`.
    fn frame(&mut self, tag: u8, frame: &[u8], function: Option<Arc<str>>) -> Step {
        let sh = self.sh;
        let body = &frame[5..];
        let mut ops = lock(&sh.ops);
        // In copy-in mode, until the client ends the copy, only copy data (and Flush) may come:
        // PostgreSQL ignores a Sync there and ends the connection on anything else, unless the
        // copy has just failed on its own (a bad row, a timeout, a cancel), when it runs it.
        // Which of the two the server will do cannot be known here, so such a message is never
        // forwarded: the session ends (fail closed; no client does this).
        if sh.copying() && !matches!(tag, b'd' | b'c' | b'f' | b'H' | b'X') {
            return Step::Violation(self.copy_violation(tag, body));
        }
        match tag {
            b'c' | b'f' => {
                if sh.copy_in.load(Relaxed) {
                    sh.copy_ended.store(true, Relaxed);
                } else if !ops.is_empty() && !matches!(ops.back(), Some(Op::CopyEnd)) {
                    // Before the server said CopyInResponse: it may end a copy the last queued
                    // statement starts (one marker is enough; outside a copy the server ignores
                    // these messages).
                    ops.push_back(Op::CopyEnd);
                }
                self.out.extend_from_slice(frame);
            }
            b'Q' => self.query(&mut ops, frame),
            b'P' => self.parse(&mut ops, frame),
            b'B' => {
                let (portal, rest) = cbytes(body);
                let (stmt, _) = cbytes(rest);
                let e = lookup(&ops, &lock(&sh.named), false, stmt);
                ops.push_back(Op::Bind(portal.to_vec(), e));
                self.out.extend_from_slice(frame);
            }
            b'E' => self.execute(&mut ops, frame),
            b'D' => {
                ops.push_back(Op::Describe);
                self.out.extend_from_slice(frame);
            }
            b'S' => {
                self.ended_in_unit = false;
                self.unit_sent = self.ctx.read_only;
                ops.push_back(Op::Sync);
                self.out.extend_from_slice(frame);
            }
            b'F' => self.function_call(&mut ops, frame, function),
            b'X' => {
                self.out.extend_from_slice(frame);
                return Step::Terminate;
            }
            b'C' => {
                // Close statement ('S') or portal ('P'): forgotten once the server confirms.
                let (kind, name) = body.split_first().map_or((b'S', &[][..]), |(k, n)| (*k, cbytes(n).0));
                ops.push_back(Op::Close(kind, name.to_vec()));
                self.out.extend_from_slice(frame);
            }
            // Flush, CopyData: no answer of their own.
            _ => self.out.extend_from_slice(frame),
        }
        Step::Next
    }

    fn count(&mut self, class: Class) {
        let ctx = self.ctx;
        self.counters
            .entry(class)
            .or_insert_with(|| {
                ctx.metrics
                    .queries_total
                    .with_label_values(&[&ctx.guard.info.resource, class.as_str()])
            })
            .inc();
    }

    fn refuse(&mut self, sql: Arc<str>, class: Class, why: &str, simple: bool) -> BytesMut {
        self.refused.push(Refused {
            sql,
            class,
            why: why.to_string(),
            simple,
        });
        refusal(self.ctx, why)
    }

    /// A message during COPY FROM STDIN: a statement in it is audited as refused.
    fn copy_violation(&mut self, tag: u8, body: &[u8]) -> &'static str {
        match tag {
            b'Q' | b'P' => {
                let sql = if tag == b'Q' {
                    cbytes(body).0
                } else {
                    cbytes(cbytes(body).1).0
                };
                let v = verdict_of(self.ctx, sql);
                self.refused.push(Refused {
                    sql: audit_text(sql, &v),
                    class: v.class,
                    why: COPY_VIOLATION.into(),
                    simple: tag == b'Q',
                });
                "a statement"
            }
            b'S' => "a Sync",
            _ => "a message",
        }
    }

    fn query(&mut self, ops: &mut VecDeque<Op>, frame: &[u8]) {
        let (sql, _) = cbytes(&frame[5..]);
        let v = verdict_of(self.ctx, sql);
        self.count(v.class);
        let audit = audit_text(sql, &v);
        let read_only = self.ctx.read_only;
        let after_end = read_only && self.ended_in_unit;
        self.ended_in_unit = false;
        self.unit_sent = read_only;
        let why = if after_end {
            Some(AFTER_END)
        } else {
            v.read_only_refusal.as_deref()
        };
        if let (true, Some(why)) = (read_only, why) {
            let err = self.refuse(audit, v.class, why, true);
            ops.push_back(Op::Query(Pending::new("".into(), v.class, true), Some(err)));
            protocol::message(&mut self.out, b'Q', REFUSED_SQL);
        } else {
            ops.push_back(Op::Query(Pending::new(audit, v.class, true), None));
            self.out.extend_from_slice(frame);
        }
    }

    fn parse(&mut self, ops: &mut VecDeque<Op>, frame: &[u8]) {
        let (name, rest) = cbytes(&frame[5..]);
        let (sql, _) = cbytes(rest);
        let v = verdict_of(self.ctx, sql);
        let audit = audit_text(sql, &v);
        if let (true, Some(why)) = (self.ctx.read_only, &v.read_only_refusal) {
            let err = self.refuse(audit, v.class, why, false);
            ops.push_back(Op::RefusedParse(err));
            let mut b = name.to_vec();
            b.push(0);
            b.extend_from_slice(REFUSED_SQL);
            b.extend_from_slice(&0i16.to_be_bytes());
            protocol::message(&mut self.out, b'P', &b);
        } else {
            ops.push_back(Op::Parse(name.to_vec(), (audit, v.class, v.ends_transaction)));
            self.out.extend_from_slice(frame);
        }
    }

    fn execute(&mut self, ops: &mut VecDeque<Op>, frame: &[u8]) {
        let (portal, _) = cbytes(&frame[5..]);
        // A portal the gateway does not know (its maps were reset) may end a transaction as far
        // as the read-only rules are concerned.
        let found = lookup(ops, &lock(&self.sh.named), true, portal);
        let (sql, class, ends) = found.unwrap_or_else(|| (Arc::from(""), Class::Other, true));
        self.count(class);
        if self.ctx.read_only && self.ended_in_unit {
            // Refused as a server error: an Execute of a portal that cannot exist.
            let err = self.refuse(sql, class, AFTER_END, false);
            ops.push_back(Op::RefusedParse(err));
            // In its place a Parse that cannot succeed, whatever names the client made: a
            // syntax error comes first.
            let mut b = b"\x01jitgate refused\0".to_vec();
            b.extend_from_slice(REFUSED_SQL);
            b.extend_from_slice(&0i16.to_be_bytes());
            protocol::message(&mut self.out, b'P', &b);
        } else {
            self.ended_in_unit |= ends;
            ops.push_back(Op::Execute(Pending::new(sql, class, false)));
            self.out.extend_from_slice(frame);
        }
    }

    fn function_call(&mut self, ops: &mut VecDeque<Op>, frame: &[u8], function: Option<Arc<str>>) {
        let oid = function_oid(&frame[5..]);
        let sql: Arc<str> = match function {
            Some(name) => format!("<FunctionCall {name} oid={oid}>").into(),
            None => format!("<FunctionCall oid={oid}>").into(),
        };
        self.count(Class::Other);
        self.unit_sent = self.ctx.read_only;
        if self.ctx.read_only {
            let err = self.refuse(sql, Class::Other, "fast-path function calls", true);
            ops.push_back(Op::Function(Pending::new("".into(), Class::Other, true), Some(err)));
            protocol::message(&mut self.out, b'Q', REFUSED_SQL);
        } else {
            ops.push_back(Op::Function(Pending::new(sql, Class::Other, true), None));
            self.out.extend_from_slice(frame);
        }
    }
}

/// The function OID of a FunctionCall body (0 when the body is too short).
fn function_oid(body: &[u8]) -> u32 {
    body.get(..4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
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
