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
        let batch_last = events
            .last()
            .map_or(0, |e| i64::try_from(e.head.seq).unwrap_or(i64::MAX));
        // Called from the audit writer thread: do the work right here.
        let mut c = self.index_conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = c.transaction().map_err(|e| e.to_string())?;
        {
            let mut st = tx
                .prepare(
                    "INSERT OR REPLACE INTO audit_events (seq, time, kind, actor, resource, grant_id, session_id, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(|e| e.to_string())?;
            let mut words = tx
                .prepare("INSERT INTO audit_text (rowid, text) VALUES (?1, ?2)")
                .map_err(|e| e.to_string())?;
            let mut runs: Vec<Run<'_>> = Vec::new();
            let mut by_session: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
            for Indexed { head: e, line, offset } in events {
                if slim_ok
                    && SLIM_KINDS.contains(&e.kind.as_ref())
                    && let Some(session) = e.session_id.as_deref()
                {
                    let t = ms(e.time);
                    let i = match by_session.get(session) {
                        Some(&i) if runs[i].texts.len() < RUN_MAX => i,
                        _ => {
                            runs.push(Run {
                                head: e,
                                last_seq: e.seq,
                                min_time: t,
                                max_time: t,
                                at: Vec::new(),
                                texts: Vec::new(),
                            });
                            by_session.insert(session, runs.len() - 1);
                            runs.len() - 1
                        }
                    };
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
                        r.texts.push(e.text.as_deref());
                        continue;
                    }
                }
                let seq = i64::try_from(e.seq).unwrap_or(i64::MAX);
                st.execute(params![
                    seq,
                    ms(e.time),
                    e.kind.as_ref(),
                    e.actor.as_deref(),
                    e.resource.as_deref(),
                    e.grant_id,
                    e.session_id.as_deref(),
                    line.as_str(),
                ])
                .map_err(|e| e.to_string())?;
                if let Some(text) = e.text.as_deref() {
                    words.execute(params![-seq, text]).map_err(|e| e.to_string())?;
                }
            }
            let mut ins = tx
                .prepare(
                    "INSERT INTO audit_runs (first_seq, last_seq, min_time, max_time, kind, actor, resource, grant_id, session_id, at, batch_last) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
                    batch_last,
                ])
                .map_err(|e| e.to_string())?;
                let id = tx.last_insert_rowid();
                for (i, text) in r.texts.iter().enumerate() {
                    if let Some(text) = text {
                        let i = i64::try_from(i).unwrap_or(0);
                        words
                            .execute(params![(id << RUN_BITS) | i, text])
                            .map_err(|e| e.to_string())?;
                    }
                }
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
            if let Some(needle) = q.text.clone() {
                let mut lines = LogReader::new(log);
                return search_text(c, &q, &needle, &mut lines);
            }
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

/// Prefix terms beginning more index words than this are not expanded (below).
const MAX_EXPANSION: usize = 1024;

/// The FTS5 query for `needle`. Whole words are looked up as they are. A prefix (the last
/// word, or one before a non-ASCII letter) becomes the OR of the index words it begins, from the
/// vocabulary: an FTS5 prefix query merges every posting of those words before it returns the
/// first, an OR of words is lazy. A prefix of more than [`MAX_EXPANSION`] words is left to the
/// line check when the text has whole words, else it stays a prefix query. `None` when a prefix
/// begins no word at all (nothing can match).
fn match_expr(c: &Connection, needle: &str) -> Result<Option<String>> {
    jitgate_audit::text::check_needle(needle).map_err(StoreError::Backend)?;
    let quote = |w: &str| format!("\"{}\"", w.replace('"', "\"\""));
    let terms = jitgate_audit::text::index_terms(needle);
    let has_whole = terms.iter().any(|t| !t.prefix);
    let mut groups: Vec<String> = terms.iter().filter(|t| !t.prefix).map(|t| quote(&t.word)).collect();
    if terms.iter().any(|t| t.prefix) {
        c.execute_batch(
            "CREATE VIRTUAL TABLE IF NOT EXISTS temp.audit_words USING fts5vocab(main, 'audit_text', 'row')",
        )
        .map_err(backend)?;
        let mut st = c
            .prepare("SELECT term FROM temp.audit_words WHERE term >= ?1 AND term < ?2 LIMIT ?3")
            .map_err(backend)?;
        for t in terms.iter().filter(|t| t.prefix) {
            let upper = format!("{}\u{10FFFF}", t.word);
            let words: Vec<String> = st
                .query_map(
                    params![t.word, upper, i64::try_from(MAX_EXPANSION + 1).unwrap_or(i64::MAX)],
                    |r| r.get(0),
                )
                .map_err(backend)?
                .collect::<rusqlite::Result<_>>()
                .map_err(backend)?;
            if words.is_empty() {
                return Ok(None);
            }
            if words.len() <= MAX_EXPANSION {
                groups.push(format!(
                    "({})",
                    words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" OR ")
                ));
            } else if !has_whole {
                groups.push(format!("{}*", quote(&t.word)));
            }
        }
    }
    Ok(Some(groups.join(" AND ")))
}

/// A run's filter columns and its (seq, offset) pairs, read once per run a search touches.
struct RunRow {
    id: i64,
    batch_last: u64,
    pass: bool,
    at: Vec<u8>,
}

/// Search by content: candidates from the word index, newest first, each checked on its line.
/// Rows of `audit_events` (SSH commands) and statements in runs are two newest-first streams,
/// merged at the end.
fn search_text(c: &Connection, q: &Query, needle: &str, lines: &mut LogReader) -> Result<Vec<Event>> {
    let Some(expr) = match_expr(c, needle)? else {
        return Ok(Vec::new());
    };
    let limit = q.limit.unwrap_or(1000);
    // Rows: `-rowid` is the seq, so ascending rowid is newest first. CROSS JOIN keeps the word
    // index the outer loop (SQLite would otherwise probe it once per event row).
    let mut rows_out = Vec::new();
    {
        let mut st = c
            .prepare(
                "SELECT e.body, e.seq, e.line_at FROM audit_text t CROSS JOIN audit_events e ON e.seq = -t.rowid \
                 WHERE audit_text MATCH ?1 AND t.rowid < 0 AND (?2 IS NULL OR e.time >= ?2) AND (?3 IS NULL OR e.time <= ?3) \
                 AND (?4 IS NULL OR e.resource = ?4) AND (?5 IS NULL OR e.session_id = ?5) AND (?6 IS NULL OR e.grant_id = ?6) \
                 ORDER BY t.rowid",
            )
            .map_err(backend)?;
        let rows = st
            .query_map(
                params![expr, q.since.map(ms), q.until.map(ms), q.resource, q.session, q.grant],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, Option<i64>>(2)?)),
            )
            .map_err(backend)?;
        for row in rows {
            let (body, seq, at) = row.map_err(backend)?;
            let e: Option<Event> = match at {
                Some(at) if body.is_empty() => lines.read(seq, at),
                _ => Some(serde_json::from_str(&body).map_err(backend)?),
            };
            if let Some(e) = e.filter(|e| q.matches(e)) {
                rows_out.push(e);
                if rows_out.len() >= limit {
                    break;
                }
            }
        }
    }
    // Runs: rowids group by run, newest run first; runs of one batch interleave by seq, so the
    // newest `limit` are known once a run's whole batch is older than the limit-th kept.
    let kind_ok = q.kind.as_ref().is_none_or(|k| {
        let kind = jitgate_audit::STATEMENT_KIND;
        if k.ends_with('.') {
            kind.starts_with(k.as_str())
        } else {
            kind == k
        }
    });
    let mut kept: std::collections::BTreeMap<u64, Event> = std::collections::BTreeMap::new();
    if kind_ok && limit > 0 {
        let mut st = c
            .prepare("SELECT rowid FROM audit_text WHERE audit_text MATCH ?1 AND rowid > 0 ORDER BY rowid DESC")
            .map_err(backend)?;
        let mut run_st = c
            .prepare(
                "SELECT batch_last, at FROM audit_runs WHERE id = ?1 AND (?2 IS NULL OR max_time >= ?2) \
                 AND (?3 IS NULL OR min_time <= ?3) AND (?4 IS NULL OR resource = ?4) AND (?5 IS NULL OR session_id = ?5) \
                 AND (?6 IS NULL OR grant_id = ?6) AND (?7 IS NULL OR actor = ?7)",
            )
            .map_err(backend)?;
        let mut batch_of = c
            .prepare("SELECT batch_last FROM audit_runs WHERE id = ?1")
            .map_err(backend)?;
        let rowids = st.query_map(params![expr], |r| r.get::<_, i64>(0)).map_err(backend)?;
        let mut run: Option<RunRow> = None;
        for rowid in rowids {
            let rowid = rowid.map_err(backend)?;
            let (id, i) = (rowid >> RUN_BITS, rowid & ((1 << RUN_BITS) - 1));
            if run.as_ref().is_none_or(|r| r.id != id) {
                let found = run_st
                    .query_row(
                        params![
                            id,
                            q.since.map(ms),
                            q.until.map(ms),
                            q.resource,
                            q.session,
                            q.grant,
                            q.user
                        ],
                        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
                    )
                    .optional()
                    .map_err(backend)?;
                let r = match found {
                    Some((b, at)) => RunRow {
                        id,
                        batch_last: u64::try_from(b).unwrap_or(0),
                        pass: true,
                        at,
                    },
                    None => RunRow {
                        id,
                        batch_last: batch_of
                            .query_row(params![id], |r| r.get::<_, i64>(0))
                            .optional()
                            .map_err(backend)?
                            .map_or(0, |b| u64::try_from(b).unwrap_or(0)),
                        pass: false,
                        at: Vec::new(),
                    },
                };
                if kept.len() >= limit && kept.first_key_value().is_some_and(|(s, _)| r.batch_last < *s) {
                    break;
                }
                run = Some(r);
            }
            let Some(r) = run.as_ref().filter(|r| r.pass) else {
                continue;
            };
            let Some(entry) = usize::try_from(i).ok().and_then(|i| r.at.get(i * 16..i * 16 + 16)) else {
                continue;
            };
            let (seq, offset) = entry.split_at(8);
            let (Ok(seq), Ok(offset)) = (<[u8; 8]>::try_from(seq), <[u8; 8]>::try_from(offset)) else {
                continue;
            };
            let (seq, offset) = (u64::from_le_bytes(seq), u64::from_le_bytes(offset));
            if kept.len() >= limit && kept.first_key_value().is_some_and(|(s, _)| seq < *s) {
                continue;
            }
            let (Ok(seq_i), Ok(offset)) = (i64::try_from(seq), i64::try_from(offset)) else {
                continue;
            };
            if let Some(e) = lines.read(seq_i, offset).filter(|e| q.matches(e)) {
                kept.insert(seq, e);
                if kept.len() > limit {
                    kept.pop_first();
                }
            }
        }
    }
    // Newest `limit` of both, oldest first.
    let mut all: Vec<Event> = rows_out.into_iter().chain(kept.into_values()).collect();
    all.sort_by_key(|e| std::cmp::Reverse(e.seq));
    all.truncate(limit);
    all.reverse();
    Ok(all)
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
