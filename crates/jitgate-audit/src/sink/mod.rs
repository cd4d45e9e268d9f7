//! The audit sink: one writer task owns the file; callers send events over a bounded channel.
//!
//! [`AuditSink::record`] returns only after the event's line (and every line before it) is
//! written and `fdatasync`ed — the control plane awaits it before answering the API, so an
//! approval the caller saw is never missing from the log. [`AuditSink::emit`] is for hot paths
//! (per statement): it waits only for room in the channel, so a slow disk slows producers down
//! (backpressure) instead of dropping events or growing memory. The writer batches whatever is
//! queued into one write and one sync.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::chain::line_hash;
use crate::event::{Event, GENESIS, Head, Query, Statement};
use crate::redact::Redactor;

mod writer;
use writer::{WriterSetup, writer};

/// A written event and its line in the log (without the newline): the index stores the line
/// as the event's body instead of serialising the event a second time.
#[derive(Debug, Clone)]
pub struct Indexed {
    /// What the event is filed under (`seq` set).
    pub head: Head,
    /// Its JSON line.
    pub line: String,
    /// Byte offset of the line in its file (the live file, or the rotated file it moved to).
    pub offset: u64,
}

/// Where events are also indexed for search (the store implements it).
#[async_trait]
pub trait AuditIndex: Send + Sync {
    /// Where the log lives (the sink tells its index at open): an index may then keep offsets
    /// instead of whole lines and read them back from the files.
    fn attach_log(&self, _path: &Path) {}
    /// Index a batch of written events, in `seq` order.
    async fn index(&self, events: &[Indexed]) -> Result<(), String>;
    /// Highest `seq` indexed (0 when empty).
    async fn max_seq(&self) -> Result<u64, String>;
    /// Search indexed events, oldest first.
    async fn search(&self, q: &Query) -> Result<Vec<Event>, String>;
}

/// Audit sink failures.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// File trouble.
    #[error("audit log {path}: {source}")]
    Io {
        /// The audit log file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The writer task is gone.
    #[error("the audit writer has stopped")]
    Closed,
    /// The last line could not be read to continue the chain.
    #[error(
        "audit log {0}: the last line is not a valid event ({1}); run `jitgate audit verify` and move the file aside"
    )]
    Corrupt(PathBuf, String),
}

struct Msg {
    payload: Payload,
    ack: Option<oneshot::Sender<Result<u64, String>>>,
}

enum Payload {
    Event(Box<Event>),
    Statement(Box<Statement>),
    /// Sign the head now (when a key is set and this process wrote lines since its last
    /// checkpoint); `why` goes in the line.
    Checkpoint(&'static str),
}

/// Cheap-to-clone handle to the writer.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Msg>,
    path: Arc<PathBuf>,
    redactor: SharedRedactor,
    subscriber: SharedSubscriber,
    checkpoints: SharedCheckpoints,
}

/// When and with which key the writer signs the chain's head.
#[derive(Debug, Clone)]
pub struct CheckpointPolicy {
    /// The signing key.
    pub key: Arc<crate::checkpoint::CheckpointKey>,
    /// Sign after this many lines (at least 1).
    pub every: u64,
    /// ... or this long after the first line after the last checkpoint.
    pub interval: std::time::Duration,
}

type SharedCheckpoints = Arc<std::sync::RwLock<Option<Arc<CheckpointPolicy>>>>;

/// The redaction patterns in force, read by the writer thread once per batch.
type SharedRedactor = Arc<std::sync::RwLock<Option<Arc<Redactor>>>>;

/// Called by the writer thread with every event (not statement lines) once it is in the file,
/// as the file holds it: redacted, with its `seq`. It must not block (webhooks queue and return).
pub type Subscriber = Arc<dyn Fn(&Event) + Send + Sync>;
type SharedSubscriber = Arc<std::sync::RwLock<Option<Subscriber>>>;

impl AuditSink {
    /// Events waiting for the writer thread.
    pub fn queue_len(&self) -> usize {
        self.tx.max_capacity().saturating_sub(self.tx.capacity())
    }
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditSink({})", self.path.display())
    }
}

/// Capacity of the event queue.
pub const QUEUE: usize = 8192;

/// How long the writer may wait to batch hot-path events (durable records never wait).
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

impl AuditSink {
    /// Open (or create) the log, continue its chain, and start the writer task. No rotation.
    pub fn open(
        path: &Path,
        index: Option<Arc<dyn AuditIndex>>,
        on_write: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    ) -> Result<Self, AuditError> {
        Self::open_with(path, index, on_write, None)
    }

    /// Like [`AuditSink::open`]; when the file reaches `rotate_bytes` it is renamed to
    /// `STEM-<last seq>.jsonl` and a new file starts with a `chain.continued` line linked to the
    /// old file's last line, so the chain stays verifiable across files.
    pub fn open_with(
        path: &Path,
        index: Option<Arc<dyn AuditIndex>>,
        on_write: Option<Arc<dyn Fn(u64) + Send + Sync>>,
        rotate_bytes: Option<u64>,
    ) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let (mut seq, mut prev) = tail_state(&mut file, path)?;
        // What this process writes, and only that, is what its checkpoints vouch for.
        let mut vouch_from = None;
        if seq == 0 {
            // A fresh file after a rotation (or a crash right after one): continue the chain of
            // the newest rotated file.
            if let Some(last) = crate::chain::rotated_files(path).last() {
                let mut old = std::fs::File::open(last).map_err(io)?;
                let (s, p) = tail_state(&mut old, last)?;
                if s > 0 {
                    let (line, e) = continued_line(s, &p, last);
                    use std::io::Write as _;
                    file.write_all(&line).and_then(|()| file.sync_data()).map_err(io)?;
                    seq = e.seq;
                    prev = line_hash(&line[..line.len() - 1]);
                    vouch_from = Some(e.seq);
                }
            }
        }
        if let Some(ix) = &index {
            ix.attach_log(path);
            catch_up(ix.as_ref(), path, seq);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let path_buf = path.to_path_buf();
        let redactor: SharedRedactor = Arc::default();
        let writer_redactor = redactor.clone();
        let subscriber: SharedSubscriber = Arc::default();
        let writer_subscriber = subscriber.clone();
        let checkpoints: SharedCheckpoints = Arc::default();
        let writer_checkpoints = checkpoints.clone();
        std::thread::Builder::new()
            .name("jitgate-audit".into())
            .spawn(move || {
                writer(
                    file,
                    (seq, prev, vouch_from),
                    rx,
                    WriterSetup {
                        path: path_buf,
                        index,
                        on_write,
                        rotate_bytes,
                        redactor: writer_redactor,
                        subscriber: writer_subscriber,
                        checkpoints: writer_checkpoints,
                    },
                )
            })
            .map_err(io)?;
        Ok(Self {
            tx,
            path: Arc::new(path.to_path_buf()),
            redactor,
            subscriber,
            checkpoints,
        })
    }

    /// Sign the chain's head with `policy`'s key from now on (`None`: stop signing). Lines
    /// written before are signed by the first checkpoint after.
    pub fn set_checkpoints(&self, policy: Option<CheckpointPolicy>) {
        let mut g = match self.checkpoints.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *g = policy.map(Arc::new);
    }

    /// Sign the head now, durably (shutdown calls it last); returns the log's last `seq`.
    /// Without a key, or with nothing unsigned, nothing is written.
    pub async fn checkpoint(&self, why: &'static str) -> Result<u64, AuditError> {
        self.durably(Payload::Checkpoint(why)).await
    }

    /// Hand every event written from now on, whoever wrote it, to `f` after it is in the file
    /// (the notifier: so every kind can be delivered, and only what the log holds leaves).
    pub fn subscribe(&self, f: Subscriber) {
        let mut g = match self.subscriber.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *g = Some(f);
    }

    /// `ev` as the log will hold it (the operator's redaction applied): for copies of an event
    /// sent elsewhere (webhooks), so no secret leaves by another way.
    pub fn redacted(&self, mut ev: Event) -> Event {
        let r = match self.redactor.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if let Some(r) = r {
            r.event(&mut ev);
        }
        ev
    }

    /// Redact every event written from now on with `r` (`None`: no operator patterns). Events
    /// already queued are redacted with the patterns in force when the writer takes them.
    pub fn set_redactor(&self, r: Option<Redactor>) {
        let mut g = match self.redactor.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *g = r.map(Arc::new);
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `event` durably; returns its `seq` once it is on disk.
    pub async fn record(&self, event: Event) -> Result<u64, AuditError> {
        self.durably(Payload::Event(Box::new(event))).await
    }

    /// Queue `payload` and wait until the writer has it on disk; its `seq`.
    async fn durably(&self, payload: Payload) -> Result<u64, AuditError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Msg {
                payload,
                ack: Some(ack),
            })
            .await
            .map_err(|_| AuditError::Closed)?;
        match rx.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(AuditError::Io {
                path: self.path.to_path_buf(),
                source: std::io::Error::other(e),
            }),
            Err(_) => Err(AuditError::Closed),
        }
    }

    /// Queue `event`; waits only while the queue is full.
    pub async fn emit(&self, event: Event) -> Result<(), AuditError> {
        self.tx
            .send(Msg {
                payload: Payload::Event(Box::new(event)),
                ack: None,
            })
            .await
            .map_err(|_| AuditError::Closed)
    }

    /// Queue a statement (the relay's hot path: no JSON map is built for it); waits only while
    /// the queue is full.
    pub async fn emit_statement(&self, statement: Statement) -> Result<(), AuditError> {
        self.tx
            .send(Msg {
                payload: Payload::Statement(Box::new(statement)),
                ack: None,
            })
            .await
            .map_err(|_| AuditError::Closed)
    }

    /// Free places in the queue (for a metric).
    pub fn queue_room(&self) -> usize {
        self.tx.capacity()
    }
}

/// Index whatever the log holds beyond the index (a crash between write and index). Runs on
/// its own thread: the caller may be inside an async runtime.
fn catch_up(ix: &dyn AuditIndex, path: &Path, log_seq: u64) {
    std::thread::scope(|s| {
        let _ = s.spawn(|| catch_up_blocking(ix, path, log_seq)).join();
    });
}

fn catch_up_blocking(ix: &dyn AuditIndex, path: &Path, log_seq: u64) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    let Ok(have) = rt.block_on(ix.max_seq()) else { return };
    if have >= log_seq {
        return;
    }
    // Rotated files (named for their last seq) the index lacks, then the live file; streamed in
    // chunks so a whole-log re-index (an emptied or new index) holds one chunk in memory.
    let mut files: Vec<std::path::PathBuf> = crate::chain::rotated_files(path)
        .into_iter()
        .filter(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.rsplit('-').next())
                .and_then(|n| n.parse::<u64>().ok())
                .is_none_or(|last| last > have)
        })
        .collect();
    files.push(path.to_path_buf());
    let started = std::time::Instant::now();
    let mut total = 0usize;
    for file in files {
        let Ok(f) = std::fs::File::open(&file) else { continue };
        let mut chunk = Vec::with_capacity(4096);
        let mut offset = 0u64;
        for line in std::io::BufRead::lines(std::io::BufReader::with_capacity(1 << 20, f)).map_while(Result::ok) {
            let len = u64::try_from(line.len() + 1).unwrap_or(0);
            if let Ok(e) = serde_json::from_str::<Event>(&line)
                && e.seq > have
            {
                chunk.push(Indexed {
                    head: Head::from(&e),
                    line,
                    offset,
                });
            }
            offset += len;
            if chunk.len() >= 4096 {
                if rt.block_on(ix.index(&chunk)).is_err() {
                    tracing::error!("re-indexing the audit log failed; search may miss events");
                    return;
                }
                total += chunk.len();
                chunk.clear();
            }
        }
        if !chunk.is_empty() {
            if rt.block_on(ix.index(&chunk)).is_err() {
                tracing::error!("re-indexing the audit log failed; search may miss events");
                return;
            }
            total += chunk.len();
        }
    }
    tracing::warn!(
        events = total,
        seconds = started.elapsed().as_secs_f64(),
        "re-indexed audit events the index did not have (an unclean stop, or a new index after an upgrade)"
    );
}

/// The first line of a file that continues the chain of `previous` (last seq `seq`, last line
/// hash `prev`), with its trailing newline.
fn continued_line(seq: u64, prev: &str, previous: &Path) -> (Vec<u8>, Event) {
    let mut e = Event::new(crate::Kind::ChainContinued, jiff::Timestamp::now())
        .actor("gateway")
        .detail(crate::details::ChainContinued {
            previous_file: previous.file_name().map(|n| n.to_string_lossy().into_owned()),
        });
    e.seq = seq + 1;
    e.prev = prev.to_string();
    let mut line = serde_json::to_vec(&e).unwrap_or_default();
    line.push(b'\n');
    (line, e)
}

/// Read the last complete line to continue `seq` and the chain. A trailing partial line (a
/// crash mid-write, never acknowledged) is cut off so the chain stays verifiable.
fn tail_state(file: &mut std::fs::File, path: &Path) -> Result<(u64, String), AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Ok((0, GENESIS.to_string()));
    }
    let start = len.saturating_sub(1 << 20);
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).map_err(io)?;
    let complete = match buf.iter().rposition(|b| *b == b'\n') {
        Some(p) => p,
        None if start == 0 => {
            tracing::warn!(path = %path.display(), "audit log holds only a partial line; truncating it");
            file.set_len(0).map_err(io)?;
            return Ok((0, GENESIS.to_string()));
        }
        None => {
            return Err(AuditError::Corrupt(
                path.to_path_buf(),
                "no line end in the last MiB".into(),
            ));
        }
    };
    if complete + 1 != buf.len() {
        let keep = start + u64::try_from(complete + 1).unwrap_or(0);
        tracing::warn!(path = %path.display(), cut = len - keep, "audit log ends with a partial line (interrupted write); truncating it");
        file.set_len(keep).map_err(io)?;
    }
    let body = &buf[..complete];
    let line_start = body.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
    let line = &body[line_start..];
    let e: Event = serde_json::from_slice(line).map_err(|e| AuditError::Corrupt(path.to_path_buf(), e.to_string()))?;
    Ok((e.seq, line_hash(line)))
}
