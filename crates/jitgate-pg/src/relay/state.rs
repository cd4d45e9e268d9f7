//! What both directions of a session share: the queue of messages the server will answer (ops),
//! the statement and portal names the server confirmed, and the copy-in flags; and the queue
//! rules that do not depend on which direction applies them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::classify::Class;

/// A statement awaiting its answer, for audit.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) sql: Arc<str>,
    pub(super) class: Class,
    pub(super) simple: bool,
    pub(super) started: Instant,
    pub(super) rows: u64,
    pub(super) error: Option<Box<(String, String)>>,
}

impl Pending {
    pub(super) fn new(sql: Arc<str>, class: Class, simple: bool) -> Self {
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
pub(super) enum Op {
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
pub(super) type Named = (Arc<str>, Class, bool);

/// Statement names and portals as the server knows them: changed only when the server confirms
/// (ParseComplete, BindComplete, CloseComplete), so a Parse the server rejects or skips never
/// changes what a name means to the gateway.
#[derive(Default)]
pub(super) struct NameMap {
    statements: HashMap<Vec<u8>, Named>,
    portals: HashMap<Vec<u8>, Named>,
}

/// Named statements/portals remembered per session (for audit text) before the maps are reset.
const MAX_NAMED: usize = 10_000;

impl NameMap {
    /// ParseComplete: the name now means this statement.
    pub(super) fn parsed(&mut self, name: Vec<u8>, e: Named) {
        if self.statements.len() >= MAX_NAMED {
            // A client that never closes its statements: memory stays bounded; their portals
            // count as unknown from then on.
            self.statements.clear();
        }
        self.statements.insert(name, e);
    }

    /// BindComplete: the portal runs this statement (`None`: one the gateway does not know).
    pub(super) fn bound(&mut self, name: Vec<u8>, e: Option<Named>) {
        if self.portals.len() >= MAX_NAMED {
            self.portals.clear();
        }
        match e {
            Some(e) => self.portals.insert(name, e),
            None => self.portals.remove(&name),
        };
    }

    /// CloseComplete of a statement (`b'S'`) or portal (`b'P'`).
    pub(super) fn closed(&mut self, kind: u8, name: &[u8]) {
        if kind == b'P' {
            self.portals.remove(name);
        } else {
            self.statements.remove(name);
        }
    }
}

/// What a name means to a message just queued: the latest pending Parse/Bind/Close for it in the
/// queue (the server applies them in order, and skips what follows one that fails), else what
/// the server confirmed.
pub(super) fn lookup(ops: &VecDeque<Op>, names: &NameMap, portal: bool, name: &[u8]) -> Option<Named> {
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

/// The session's names as audit events carry them, shared by every statement event.
pub(super) struct Names {
    pub(super) identity: Arc<str>,
    pub(super) access: Arc<str>,
    pub(super) resource: Arc<str>,
    pub(super) session: Arc<str>,
}

pub(super) struct Shared {
    pub(super) names: Names,
    pub(super) ops: Mutex<VecDeque<Op>>,
    /// Locked after `ops` when both are needed.
    pub(super) named: Mutex<NameMap>,
    /// Told when a ReadyForQuery has been handled (read-only sessions wait for it).
    pub(super) answered: tokio::sync::Notify,
    /// The server is in copy-in mode (it said CopyInResponse and has not yet ended the COPY with
    /// CommandComplete or an error). Read and written under the `ops` lock.
    pub(super) copy_in: AtomicBool,
    /// The client has sent the CopyDone or CopyFail that ends the current copy.
    pub(super) copy_ended: AtomicBool,
}

impl Shared {
    pub(super) fn new(names: Names) -> Self {
        Self {
            names,
            ops: Mutex::default(),
            named: Mutex::default(),
            answered: tokio::sync::Notify::new(),
            copy_in: AtomicBool::new(false),
            copy_ended: AtomicBool::new(false),
        }
    }

    /// A Sync, Query or FunctionCall is still unanswered.
    fn unit_in_flight(&self) -> bool {
        lock(&self.ops)
            .iter()
            .any(|o| matches!(o, Op::Sync | Op::Query(..) | Op::Function(..)))
    }

    /// Until every forwarded Sync, Query and FunctionCall has its ReadyForQuery.
    pub(super) async fn wait_answered(&self) {
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

    /// The client is in the middle of a COPY FROM STDIN it has not ended yet.
    pub(super) fn copying(&self) -> bool {
        self.copy_in.load(Relaxed) && !self.copy_ended.load(Relaxed)
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Statements completed by one read, audited once the client has its answer.
pub(super) type Done = Vec<(Pending, &'static str, Duration)>;

/// A statement completed now: how long it took (measured here, before the client is answered).
pub(super) fn completed(p: Pending, outcome: &'static str) -> (Pending, &'static str, Duration) {
    let took = p.started.elapsed();
    (p, outcome, took)
}

/// Pop ops the server skipped (after an extended-protocol error, until Sync); `notify` is told
/// when a Query or FunctionCall went (a read-only session may be waiting for it).
pub(super) fn skip_to_sync(ops: &mut VecDeque<Op>, done: &mut Done, notify: &tokio::sync::Notify) {
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
pub(super) fn copy_in_started(sh: &Shared, ops: &mut VecDeque<Op>, done: &mut Done) {
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
