//! The writer thread: the only owner of the log file and of the chain state (`seq`, `prev`).
//!
//! Each turn takes one batch off the channel (group commit: a hot-path event lingers
//! [`LINGER`] once so one write serves everything that came meanwhile; a durable `record` is
//! written at once), writes it, and either commits it (flush, `fdatasync` when a caller waits,
//! hand events to the subscriber, index, acknowledge) or rolls it back: on a failed write the
//! chain state returns to the batch's start and the file is cut back to its last complete line,
//! so the log stays verifiable and nothing unwritten is acknowledged. Then it rotates if the
//! file is over its size.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{
    AuditIndex, CheckpointPolicy, Indexed, LINGER, Msg, Payload, SharedCheckpoints, SharedRedactor, SharedSubscriber,
    continued_line,
};
use crate::chain::line_hash;
use crate::event::{Event, Head};

/// Hot-path events indexed per transaction at most.
const INDEX_BATCH: usize = 8192;
/// Longest a hot-path event waits to be indexed (search sees it after this).
const INDEX_DELAY: std::time::Duration = std::time::Duration::from_millis(200);
/// Messages taken off the channel per batch at most.
const MAX_BATCH: usize = 4096;
/// Events kept for a failing index to retry; beyond this the writer stops indexing until the
/// next start (which re-indexes from the log), so the index never gets a gap.
const MAX_RETRY_BACKLOG: usize = 8 * INDEX_BATCH;

type Out = std::io::BufWriter<std::fs::File>;

fn buffered(file: std::fs::File) -> Out {
    std::io::BufWriter::with_capacity(256 * 1024, file)
}

/// What the writer thread needs besides the file and the chain state.
pub(super) struct WriterSetup {
    pub path: PathBuf,
    pub index: Option<Arc<dyn AuditIndex>>,
    pub on_write: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    pub rotate_bytes: Option<u64>,
    pub redactor: SharedRedactor,
    pub subscriber: SharedSubscriber,
    pub checkpoints: SharedCheckpoints,
}

/// The writer's state between batches.
struct Writer {
    setup: WriterSetup,
    /// The last written line's sequence number and hash (the chain's head).
    seq: u64,
    prev: String,
    /// Length of the file up to the last line known to be written; a failed batch is cut back
    /// to it so a partial line never stays in the log.
    good_len: u64,
    /// `None` once the file could not be cut back after a failed write: every event is refused.
    out: Option<Out>,
    /// For the index's async calls and the backlog timer.
    rt: Option<tokio::runtime::Runtime>,
    /// Hot-path events written but not yet indexed: indexed together, in one transaction, when
    /// INDEX_BATCH have gathered, INDEX_DELAY after the first, or right before a durable event
    /// is indexed — so the index is always a prefix of the log (the catch-up at the next start
    /// relies on it) and a `record`ed event is searchable when `record` returns.
    backlog: Vec<Indexed>,
    backlog_since: std::time::Instant,
    /// The index refused a batch and the backlog waits for a retry.
    index_failing: bool,
    /// The index gave up (see [`MAX_RETRY_BACKLOG`]): nothing more is indexed until restart.
    index_stopped: bool,
    /// The first line this process wrote after its last checkpoint (`None`: none yet), and
    /// when. A checkpoint vouches only for lines from here (`from_seq`): a tail left unsigned by
    /// an earlier run, which anyone could have edited while the gateway was down, is never
    /// signed over, and `verify` reports it as a gap.
    vouch_from: Option<u64>,
    vouch_since: std::time::Instant,
}

/// What writing one batch did.
struct Written {
    lines: Vec<Indexed>,
    /// Per message of the batch: the `seq` of its line (a checkpoint that wrote nothing: the
    /// last `seq`).
    seq_of: Vec<u64>,
    /// Checkpoint lines written in the batch, for the subscriber.
    signed: Vec<Event>,
    bytes: u64,
    result: Result<(), String>,
}

/// Run the writer until every sender is gone.
pub(super) fn writer(
    file: std::fs::File,
    (seq, prev, vouch_from): (u64, String, Option<u64>),
    mut rx: mpsc::Receiver<Msg>,
    setup: WriterSetup,
) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build();
    if let Err(e) = &rt {
        tracing::error!(error = %e, "the audit writer has no runtime for its index; search will miss new events");
    }
    let mut w = Writer {
        setup,
        seq,
        prev,
        good_len: file.metadata().map(|m| m.len()).unwrap_or(0),
        out: Some(buffered(file)),
        rt: rt.ok(),
        backlog: Vec::new(),
        backlog_since: std::time::Instant::now(),
        index_failing: false,
        index_stopped: false,
        vouch_from,
        vouch_since: std::time::Instant::now(),
    };
    let mut batch: Vec<Msg> = Vec::with_capacity(256);
    while let Some(first) = w.receive(&mut rx) {
        let durable = gather(first, &mut rx, &mut batch);
        w.turn(&mut batch, durable);
    }
    w.finish();
}

/// Take `first` and whatever else is queued (after a linger for hot-path events) into `batch`.
/// Returns whether any of them waits for an acknowledgement.
fn gather(first: Msg, rx: &mut mpsc::Receiver<Msg>, batch: &mut Vec<Msg>) -> bool {
    let mut durable = first.ack.is_some();
    batch.push(first);
    if !durable && rx.len() < MAX_BATCH {
        std::thread::sleep(LINGER);
    }
    while batch.len() < MAX_BATCH {
        let Ok(m) = rx.try_recv() else { break };
        durable |= m.ack.is_some();
        batch.push(m);
    }
    durable
}

impl Writer {
    /// The next message, indexing the backlog when it has waited INDEX_DELAY; `None` once every
    /// sender is gone.
    fn receive(&mut self, rx: &mut mpsc::Receiver<Msg>) -> Option<Msg> {
        loop {
            let index_left =
                (!self.backlog.is_empty()).then(|| INDEX_DELAY.saturating_sub(self.backlog_since.elapsed()));
            let sign_left = self
                .policy()
                .filter(|_| self.vouch_from.is_some())
                .map(|p| p.interval.saturating_sub(self.vouch_since.elapsed()));
            let left = match (index_left, sign_left) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(x) => x,
                    None => return rx.blocking_recv(),
                },
            };
            let Some(rt) = self.rt.as_ref() else {
                return rx.blocking_recv();
            };
            // The timer must be created inside the runtime.
            match rt.block_on(async { tokio::time::timeout(left, rx.recv()).await }) {
                Ok(m) => return m,
                Err(_) => {
                    if sign_left.is_some_and(|l| l <= left) {
                        self.commit(&mut vec![checkpoint_msg("interval")], true);
                    }
                    if index_left.is_some_and(|l| l <= left) {
                        self.flush_index();
                    }
                }
            }
        }
    }

    /// The checkpoint policy in force.
    fn policy(&self) -> Option<Arc<CheckpointPolicy>> {
        match self.setup.checkpoints.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Write, commit or roll back, index, acknowledge and maybe rotate one batch.
    fn turn(&mut self, batch: &mut Vec<Msg>, durable: bool) {
        self.commit(batch, durable);
        self.rotate_if_full();
    }

    /// Write, commit or roll back, index and acknowledge one batch.
    fn commit(&mut self, batch: &mut Vec<Msg>, durable: bool) {
        let (seq0, prev0, vouch0) = (self.seq, self.prev.clone(), self.vouch_from);
        let Some(mut written) = self.write(batch, durable) else {
            for m in batch.drain(..) {
                if let Some(ack) = m.ack {
                    let _ = ack.send(Err("the audit log is unusable after a failed recovery".into()));
                }
            }
            return;
        };
        if let Err(e) = &written.result {
            tracing::error!(path = %self.setup.path.display(), error = %e, "audit write failed");
            self.roll_back(seq0, prev0);
            self.vouch_from = vouch0;
            written.lines.clear();
        } else {
            self.good_len += written.bytes;
            self.deliver(batch, &written.signed);
        }
        if let Some(f) = &self.setup.on_write {
            f(u64::try_from(written.lines.len()).unwrap_or(0));
        }
        let seqs: Vec<u64> = batch
            .iter()
            .enumerate()
            .filter(|(_, m)| m.ack.is_some())
            .map(|(i, _)| written.seq_of.get(i).copied().unwrap_or(0))
            .collect();
        if self.backlog.is_empty() {
            self.backlog_since = std::time::Instant::now();
        }
        self.backlog.append(&mut written.lines);
        // Index before acknowledging: once `record` returns, the event is searchable.
        if durable || self.backlog.len() >= INDEX_BATCH || self.backlog_since.elapsed() >= INDEX_DELAY {
            self.flush_index();
        }
        let mut seqs = seqs.into_iter();
        for m in batch.drain(..) {
            if let Some(ack) = m.ack {
                let seq = seqs.next().unwrap_or(0);
                let _ = ack.send(written.result.clone().map(|()| seq));
            }
        }
    }

    /// Redact, chain and write every message of the batch (and a checkpoint after every
    /// `every` lines), then flush (and sync when a caller waits). `None` when the log is
    /// unusable. On an error the lines written so far are returned with it; the caller rolls
    /// back.
    fn write(&mut self, batch: &mut [Msg], durable: bool) -> Option<Written> {
        let mut w = self.out.take()?;
        let done = self.write_to(&mut w, batch, durable);
        self.out = Some(w);
        Some(done)
    }

    fn write_to(&mut self, w: &mut Out, batch: &mut [Msg], durable: bool) -> Written {
        let red = match self.setup.redactor.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let policy = self.policy();
        let mut done = Written {
            lines: Vec::with_capacity(batch.len()),
            seq_of: Vec::with_capacity(batch.len()),
            signed: Vec::new(),
            bytes: 0,
            result: Ok(()),
        };
        let mut synced = durable;
        for m in batch.iter_mut() {
            if let Payload::Checkpoint(why) = m.payload {
                if let Some(p) = policy.as_deref().filter(|_| self.vouch_from.is_some()) {
                    if let Err(e) = self.sign(w, p, why, &mut done) {
                        done.result = Err(e);
                        return done;
                    }
                    synced = true;
                }
                done.seq_of.push(self.seq);
                continue;
            }
            if let Some(r) = &red {
                match &mut m.payload {
                    Payload::Event(e) => r.event(e),
                    Payload::Statement(st) => r.statement(st),
                    Payload::Checkpoint(_) => {}
                }
            }
            let seq = self.seq + 1;
            let line = match &mut m.payload {
                Payload::Event(e) => {
                    e.seq = seq;
                    e.prev.clone_from(&self.prev);
                    serde_json::to_string(&**e).map(|l| (l, Head::from(&**e)))
                }
                Payload::Statement(st) => st.line(seq, &self.prev).map(|l| (l, st.head(seq))),
                Payload::Checkpoint(_) => continue,
            };
            let (line, head) = match line {
                Ok(l) => l,
                Err(err) => {
                    done.result = Err(err.to_string());
                    return done;
                }
            };
            if let Err(e) = self.put(w, line, head, &mut done) {
                done.result = Err(e);
                return done;
            }
            done.seq_of.push(seq);
            if let Some(p) = policy
                .as_deref()
                .filter(|p| self.vouch_from.is_some_and(|v| self.seq + 1 - v >= p.every.max(1)))
            {
                if let Err(e) = self.sign(w, p, "events", &mut done) {
                    done.result = Err(e);
                    return done;
                }
                synced = true;
            }
        }
        done.result = w.flush().map_err(|e| e.to_string());
        // A checkpoint is worth its signature only once it is on disk.
        if done.result.is_ok() && synced {
            done.result = w.get_ref().sync_data().map_err(|e| e.to_string());
        }
        done
    }

    /// Append one line to the chain.
    fn put(&mut self, w: &mut Out, line: String, head: Head, done: &mut Written) -> Result<(), String> {
        w.write_all(line.as_bytes())
            .and_then(|()| w.write_all(b"\n"))
            .map_err(|e| e.to_string())?;
        self.seq = head.seq;
        self.prev = line_hash(line.as_bytes());
        if self.vouch_from.is_none() {
            self.vouch_from = Some(head.seq);
            self.vouch_since = std::time::Instant::now();
        }
        let offset = self.good_len + done.bytes;
        done.bytes += u64::try_from(line.len() + 1).unwrap_or(0);
        done.lines.push(Indexed { head, line, offset });
        Ok(())
    }

    /// Append a `chain.checkpoint` signing the head.
    fn sign(&mut self, w: &mut Out, p: &CheckpointPolicy, why: &str, done: &mut Written) -> Result<(), String> {
        let from = self.vouch_from.unwrap_or(self.seq);
        let mut e = p
            .key
            .checkpoint(self.seq, &self.prev, from, why, jiff::Timestamp::now());
        e.seq = self.seq + 1;
        e.prev.clone_from(&self.prev);
        let line = serde_json::to_string(&e).map_err(|err| err.to_string())?;
        self.put(w, line, Head::from(&e), done)?;
        self.vouch_from = None;
        done.signed.push(e);
        Ok(())
    }

    /// Nothing of the failed batch is acknowledged: the chain state goes back to its start and
    /// the file is cut back to the last complete line, so the log stays verifiable. A file that
    /// cannot be cut back makes the log unusable (every later event is refused).
    fn roll_back(&mut self, seq0: u64, prev0: String) {
        self.seq = seq0;
        self.prev = prev0;
        let good_len = self.good_len;
        self.out = self.out.take().and_then(|w| {
            let (file, _unwritten) = w.into_parts();
            match file.set_len(good_len) {
                Ok(()) => Some(buffered(file)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot cut the audit log back after a failed write; refusing further events");
                    None
                }
            }
        });
    }

    /// Hand the batch's events (as written) and its checkpoints to the subscriber; its panic
    /// does not stop the log.
    fn deliver(&self, batch: &[Msg], signed: &[Event]) {
        let sub = match self.setup.subscriber.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let Some(f) = sub else { return };
        let events = batch
            .iter()
            .filter_map(|m| match &m.payload {
                Payload::Event(e) => Some(&**e),
                _ => None,
            })
            .chain(signed);
        for e in events {
            {
                let delivered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(e)));
                if delivered.is_err() {
                    tracing::error!(kind = %e.kind, seq = e.seq, "the audit subscriber panicked; the event is in the log");
                }
            }
        }
    }

    /// Rotate once the file reaches `rotate_bytes`; on failure keep writing the same file.
    fn rotate_if_full(&mut self) {
        let Some(limit) = self.setup.rotate_bytes.filter(|l| *l > 0 && self.good_len >= *l) else {
            return;
        };
        // Each file ends signed, so a rotated file verifies alone.
        if self.vouch_from.is_some() && self.policy().is_some() {
            self.commit(&mut vec![checkpoint_msg("rotation")], true);
        }
        let Some(w) = self.out.take() else { return };
        let path = self.setup.path.clone();
        match rotate(&path, w, self.seq, &self.prev) {
            Ok((w, e, line)) => {
                self.seq = e.seq;
                // The head is the line just written, never re-read from disk.
                self.prev = line_hash(line.strip_suffix(b"\n").unwrap_or(&line));
                let len = u64::try_from(line.len()).unwrap_or(0);
                self.good_len = len;
                self.out = Some(w);
                self.vouch_from = Some(e.seq);
                self.vouch_since = std::time::Instant::now();
                let line = serde_json::to_string(&e).unwrap_or_default();
                self.backlog.push(Indexed {
                    head: Head::from(&e),
                    line,
                    offset: 0,
                });
                self.flush_index();
            }
            Err(err) => {
                tracing::error!(path = %path.display(), error = %err, limit, "audit log rotation failed; continuing in the same file");
                self.out = std::fs::OpenOptions::new().append(true).open(&path).ok().map(buffered);
            }
        }
    }

    /// Index the backlog in one transaction. The index must stay a prefix of the log (the
    /// catch-up at the next start indexes from its highest `seq`), so a refused batch is kept
    /// and retried with what follows it, never skipped; a backlog over [`MAX_RETRY_BACKLOG`]
    /// stops indexing until restart. Without a runtime or an index there is nothing to do.
    fn flush_index(&mut self) {
        if self.backlog.is_empty() {
            return;
        }
        let (Some(rt), Some(ix)) = (&self.rt, self.setup.index.as_deref()) else {
            self.backlog.clear();
            return;
        };
        if self.index_stopped {
            self.backlog.clear();
            return;
        }
        match rt.block_on(ix.index(&self.backlog)) {
            Ok(()) => {
                if self.index_failing {
                    tracing::info!(
                        events = self.backlog.len(),
                        "the audit index took the held events; search is complete again"
                    );
                }
                self.index_failing = false;
                self.backlog.clear();
            }
            Err(e) if self.backlog.len() >= MAX_RETRY_BACKLOG => {
                tracing::error!(error = %e, events = self.backlog.len(), "the audit index keeps failing; search misses events from here until the gateway restarts (the log file is complete and the next start re-indexes it)");
                self.index_stopped = true;
                self.backlog.clear();
            }
            Err(e) => {
                if !self.index_failing {
                    tracing::error!(error = %e, events = self.backlog.len(), "audit index write failed; the events are kept and retried (the log file is complete)");
                }
                self.index_failing = true;
                // The next try waits INDEX_DELAY (or the next batch), not a busy loop.
                self.backlog_since = std::time::Instant::now();
            }
        }
    }

    fn finish(mut self) {
        if self.vouch_from.is_some() && self.policy().is_some() {
            self.commit(&mut vec![checkpoint_msg("shutdown")], true);
        }
        if let Some(w) = self.out.as_mut() {
            let _ = w.flush();
        }
        self.flush_index();
    }
}

fn checkpoint_msg(why: &'static str) -> Msg {
    Msg {
        payload: Payload::Checkpoint(why),
        ack: None,
    }
}

/// Rename the full file away and start a new one continuing the chain. Returns the new writer,
/// the continued event and its line (with the newline).
fn rotate(
    path: &Path,
    w: std::io::BufWriter<std::fs::File>,
    seq: u64,
    prev: &str,
) -> std::io::Result<(std::io::BufWriter<std::fs::File>, Event, Vec<u8>)> {
    let mut w = w;
    w.flush()?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_data()?;
    drop(file);
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "audit".into());
    let rotated = path.with_file_name(format!("{stem}-{seq:012}.jsonl"));
    std::fs::rename(path, &rotated)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let (line, e) = continued_line(seq, prev, &rotated);
    file.write_all(&line)?;
    file.sync_data()?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    tracing::info!(rotated = %rotated.display(), "audit log rotated");
    Ok((buffered(file), e, line))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{AuditSink, Event, Kind, Query};

    /// An index that refuses its first `fail` batches, then keeps what it is given.
    struct Flaky {
        fail: AtomicUsize,
        seqs: Mutex<Vec<u64>>,
    }

    #[async_trait::async_trait]
    impl AuditIndex for Flaky {
        async fn index(&self, events: &[Indexed]) -> Result<(), String> {
            if self.fail.load(Ordering::SeqCst) > 0 {
                self.fail.fetch_sub(1, Ordering::SeqCst);
                return Err("disk I/O error".into());
            }
            self.seqs.lock().unwrap().extend(events.iter().map(|e| e.head.seq));
            Ok(())
        }
        async fn max_seq(&self) -> Result<u64, String> {
            Ok(self.seqs.lock().unwrap().last().copied().unwrap_or(0))
        }
        async fn search(&self, _q: &Query) -> Result<Vec<Event>, String> {
            Ok(Vec::new())
        }
    }

    /// A refused index batch is retried with what follows, so the index never has a gap
    /// (the catch-up at start relies on it being a prefix of the log).
    #[tokio::test]
    async fn a_failed_index_write_is_retried_and_leaves_no_gap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let ix = Arc::new(Flaky {
            fail: AtomicUsize::new(2),
            seqs: Mutex::new(Vec::new()),
        });
        let sink = AuditSink::open(&path, Some(ix.clone()), None).unwrap();
        for i in 0..5 {
            sink.record(Event::new(Kind::RequestCreated, jiff::Timestamp::now()).request(i))
                .await
                .unwrap();
        }
        assert_eq!(*ix.seqs.lock().unwrap(), vec![1, 2, 3, 4, 5]);
        assert_eq!(crate::verify_file(&path).unwrap().lines, 5);
    }
}
