//! The audit index: events as rows, statements as runs of (seq, offset) read back from the
//! log files when a search returns them.

use super::*;

#[async_trait]
impl AuditIndex for SqliteStore {
    fn attach_log(&self, path: &Path) {
        let _ = self.log.set(path.to_path_buf());
    }

    async fn index(&self, events: &[Indexed]) -> std::result::Result<(), String> {
        let slim_ok = self.log.get().is_some();
        // Called from the audit writer thread: do the work right here.
        let mut c = self.index_conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = c.transaction().map_err(|e| e.to_string())?;
        {
            let mut st = tx
                .prepare(
                    "INSERT OR REPLACE INTO audit_events (seq, time, kind, actor, resource, grant_id, session_id, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(|e| e.to_string())?;
            let mut runs: Vec<Run<'_>> = Vec::new();
            let mut by_session: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
            for Indexed { head: e, line, offset } in events {
                if slim_ok
                    && SLIM_KINDS.contains(&e.kind.as_ref())
                    && let Some(session) = e.session_id.as_deref()
                {
                    let t = ms(e.time);
                    let i = *by_session.entry(session).or_insert_with(|| {
                        runs.push(Run {
                            head: e,
                            last_seq: e.seq,
                            min_time: t,
                            max_time: t,
                            at: Vec::new(),
                        });
                        runs.len() - 1
                    });
                    let r = &mut runs[i];
                    if r.head.kind == e.kind
                        && r.head.actor == e.actor
                        && r.head.resource == e.resource
                        && r.head.grant_id == e.grant_id
                    {
                        r.last_seq = e.seq;
                        r.min_time = r.min_time.min(t);
                        r.max_time = r.max_time.max(t);
                        r.at.extend_from_slice(&e.seq.to_le_bytes());
                        r.at.extend_from_slice(&offset.to_le_bytes());
                        continue;
                    }
                }
                st.execute(params![
                    i64::try_from(e.seq).unwrap_or(i64::MAX),
                    ms(e.time),
                    e.kind.as_ref(),
                    e.actor.as_deref(),
                    e.resource.as_deref(),
                    e.grant_id,
                    e.session_id.as_deref(),
                    line.as_str(),
                ])
                .map_err(|e| e.to_string())?;
            }
            let mut ins = tx
                .prepare(
                    "INSERT INTO audit_runs (first_seq, last_seq, min_time, max_time, kind, actor, resource, grant_id, session_id, at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(|e| e.to_string())?;
            for r in &runs {
                let h = r.head;
                ins.execute(params![
                    i64::try_from(h.seq).unwrap_or(i64::MAX),
                    i64::try_from(r.last_seq).unwrap_or(i64::MAX),
                    r.min_time,
                    r.max_time,
                    h.kind.as_ref(),
                    h.actor.as_deref(),
                    h.resource.as_deref(),
                    h.grant_id,
                    h.session_id.as_deref(),
                    r.at,
                ])
                .map_err(|e| e.to_string())?;
            }
        }
        tx.commit().map_err(|e| e.to_string())
    }

    async fn max_seq(&self) -> std::result::Result<u64, String> {
        let c = self.index_conn.lock().unwrap_or_else(|e| e.into_inner());
        let n: Option<i64> = c
            .query_row(
                "SELECT max(coalesce((SELECT max(seq) FROM audit_events), 0), coalesce((SELECT max(last_seq) FROM audit_runs), 0))",
                [],
                |r| r.get(0),
            )
            .map_err(|e| e.to_string())?;
        Ok(u64::try_from(n.unwrap_or(0)).unwrap_or(0))
    }

    async fn search(&self, q: &Query) -> std::result::Result<Vec<Event>, String> {
        let q = q.clone();
        let log = self.log.get().cloned();
        self.with("audit_search", move |c| {
            // Coarse filters in SQL, exact ones in Rust (kind prefixes, identity in details).
            let mut st = c
                .prepare(
                    "SELECT body, seq, line_at FROM audit_events WHERE (?1 IS NULL OR time >= ?1) AND (?2 IS NULL OR time <= ?2) \
                     AND (?3 IS NULL OR resource = ?3) AND (?4 IS NULL OR session_id = ?4) AND (?5 IS NULL OR grant_id = ?5) \
                     ORDER BY seq DESC",
                )
                .map_err(backend)?;
            let rows = st
                .query_map(params![q.since.map(ms), q.until.map(ms), q.resource, q.session, q.grant], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, Option<i64>>(2)?))
                })
                .map_err(backend)?;
            let limit = q.limit.unwrap_or(1000);
            let mut out = Vec::new();
            let mut lines = LogReader::new(log);
            for row in rows {
                let (body, seq, at) = row.map_err(backend)?;
                let e: Event = match at {
                    // A statement indexed before runs existed (schema 3): offset, no line.
                    Some(at) if body.is_empty() => match lines.read(seq, at) {
                        Some(e) => e,
                        None => continue,
                    },
                    _ => serde_json::from_str(&body).map_err(backend)?,
                };
                if q.matches(&e) {
                    out.push(e);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            let runs = search_runs(c, &q, limit, &mut lines)?;
            // Both lists are newest first: merge them and keep the newest `limit`.
            let mut merged = Vec::with_capacity(limit.min(out.len() + runs.len()));
            let (mut a, mut b) = (out.into_iter().peekable(), runs.into_iter().peekable());
            while merged.len() < limit {
                let take_a = match (a.peek(), b.peek()) {
                    (Some(x), Some(y)) => x.seq > y.seq,
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => break,
                };
                merged.extend(if take_a { a.next() } else { b.next() });
            }
            merged.reverse();
            Ok(merged)
        })
        .await
        .map_err(|e| e.to_string())
    }
}

/// Statement events from runs that pass `q`, newest first, at most `limit`. Runs come newest
/// last-seq first; runs of one batch interleave, so their entries go through a heap and an
/// entry is read only once no run still unseen can hold a newer one.
pub(super) fn search_runs(c: &Connection, q: &Query, limit: usize, lines: &mut LogReader) -> Result<Vec<Event>> {
    let kind_ok = q.kind.as_ref().is_none_or(|k| {
        let kind = jitgate_audit::STATEMENT_KIND;
        if k.ends_with('.') {
            kind.starts_with(k.as_str())
        } else {
            kind == k
        }
    });
    let mut out = Vec::new();
    if !kind_ok || limit == 0 {
        return Ok(out);
    }
    let mut st = c
        .prepare(
            "SELECT last_seq, at FROM audit_runs WHERE (?1 IS NULL OR max_time >= ?1) AND (?2 IS NULL OR min_time <= ?2) \
             AND (?3 IS NULL OR resource = ?3) AND (?4 IS NULL OR session_id = ?4) AND (?5 IS NULL OR grant_id = ?5) \
             AND (?6 IS NULL OR actor = ?6) ORDER BY last_seq DESC",
        )
        .map_err(backend)?;
    let rows = st
        .query_map(
            params![q.since.map(ms), q.until.map(ms), q.resource, q.session, q.grant, q.user],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
        )
        .map_err(backend)?;
    let mut heap: std::collections::BinaryHeap<(u64, u64)> = std::collections::BinaryHeap::new();
    let mut take = |heap: &mut std::collections::BinaryHeap<(u64, u64)>, above: u64, out: &mut Vec<Event>| {
        while out.len() < limit && heap.peek().is_some_and(|(seq, _)| *seq > above) {
            let Some((seq, at)) = heap.pop() else { break };
            let (Ok(seq), Ok(at)) = (i64::try_from(seq), i64::try_from(at)) else {
                continue;
            };
            if let Some(e) = lines.read(seq, at)
                && q.matches(&e)
            {
                out.push(e);
            }
        }
    };
    for row in rows {
        let (last, at) = row.map_err(backend)?;
        take(&mut heap, u64::try_from(last).unwrap_or(0), &mut out);
        if out.len() >= limit {
            return Ok(out);
        }
        for e in at.chunks_exact(16) {
            let (seq, offset) = e.split_at(8);
            let (Ok(seq), Ok(offset)) = (<[u8; 8]>::try_from(seq), <[u8; 8]>::try_from(offset)) else {
                continue;
            };
            heap.push((u64::from_le_bytes(seq), u64::from_le_bytes(offset)));
        }
    }
    take(&mut heap, 0, &mut out);
    Ok(out)
}

/// Reads slim rows' lines back from the audit files: the live file, or the rotated file
/// (`STEM-<last seq>.jsonl`) that holds that `seq`. Files stay open for one search.
pub(super) struct LogReader {
    log: Option<std::path::PathBuf>,
    /// (last seq, path) of rotated files, ascending; read once.
    rotated: Option<Vec<(u64, std::path::PathBuf)>>,
    open: std::collections::HashMap<std::path::PathBuf, std::io::BufReader<std::fs::File>>,
}

impl LogReader {
    fn new(log: Option<std::path::PathBuf>) -> Self {
        Self {
            log,
            rotated: None,
            open: std::collections::HashMap::new(),
        }
    }

    fn file_for(&mut self, seq: u64) -> Option<std::path::PathBuf> {
        let log = self.log.clone()?;
        let rotated = self.rotated.get_or_insert_with(|| {
            jitgate_audit::rotated_files(&log)
                .into_iter()
                .filter_map(|p| {
                    let stem = p.file_stem()?.to_string_lossy().into_owned();
                    let last = stem.rsplit('-').next()?.parse::<u64>().ok()?;
                    Some((last, p))
                })
                .collect()
        });
        Some(
            rotated
                .iter()
                .find(|(last, _)| *last >= seq)
                .map_or(log, |(_, p)| p.clone()),
        )
    }

    /// The event `seq` at byte `at`; `None` (logged) when the file or line is gone or differs.
    fn read(&mut self, seq: i64, at: i64) -> Option<Event> {
        use std::io::{BufRead, Seek};
        let want = u64::try_from(seq).ok()?;
        let path = self.file_for(want)?;
        let r = match self.open.entry(path.clone()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => match std::fs::File::open(&path) {
                Ok(f) => v.insert(std::io::BufReader::new(f)),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, seq, "audit search: the file holding this event is gone");
                    return None;
                }
            },
        };
        let mut line = String::new();
        let ok = r
            .seek(std::io::SeekFrom::Start(u64::try_from(at).ok()?))
            .and_then(|_| r.read_line(&mut line))
            .is_ok();
        match serde_json::from_str::<Event>(line.trim_end_matches('\n')) {
            Ok(e) if ok && e.seq == want => Some(e),
            _ => {
                tracing::warn!(file = %path.display(), seq, "audit search: the indexed line is not where the index says; run `jitgate audit verify`");
                None
            }
        }
    }
}
