//! `jitgate audit evidence`: one self-contained pack an auditor can open and keep, for a grant,
//! a request, a user or a resource over a period. It holds the subject's events (the request,
//! each approval, the grant's life, every session with its statements or commands, refusals,
//! SSH recordings) and the **chain segments** that prove them: for each run of subject lines,
//! every line from the first of them to the next signed checkpoint, byte for byte, so
//! `jitgate audit verify --evidence PACK.json --pubkey KEY` proves the pack alone, offline.
//!
//! Written as `NAME.json` (the pack), `NAME.html` (the same content for a person, one file, no
//! external assets) and `NAME-{approvals,sessions,statements,commands}.csv`. Reads the audit
//! files directly, like `export`: run it where the gateway's data_dir is.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use jiff::Timestamp;
use jitgate_audit::Event;
use serde_json::{Value, json};

/// The pack's format name and version.
pub(crate) const FORMAT: &str = "jitgate-evidence-v1";

/// What the pack is about.
#[derive(Debug, Clone)]
pub(crate) enum Subject {
    Grant(i64),
    Request(i64),
    User(String),
    Resource(String),
}

impl Subject {
    fn name(&self) -> String {
        match self {
            Self::Grant(g) => format!("grant-{g}"),
            Self::Request(r) => format!("request-{r}"),
            Self::User(u) => format!(
                "user-{}",
                u.replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "_")
            ),
            Self::Resource(r) => format!("resource-{}", r.replace(|c: char| !c.is_ascii_alphanumeric(), "_")),
        }
    }
    fn describe(&self) -> String {
        match self {
            Self::Grant(g) => format!("grant {g}"),
            Self::Request(r) => format!("request {r}"),
            Self::User(u) => format!("user {u}"),
            Self::Resource(r) => format!("resource {r}"),
        }
    }
}

/// `90d` (ago), `2026-10-01` (midnight UTC) or an RFC 3339 time.
pub(crate) fn when(s: &str, now: Timestamp) -> Result<Timestamp> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>() {
        return d
            .to_zoned(jiff::tz::TimeZone::UTC)
            .map(|z| z.timestamp())
            .map_err(|e| anyhow::anyhow!("{s}: {e}"));
    }
    let d = jitgate_core::HumanDuration::parse(s).map_err(|_| {
        anyhow::anyhow!("`{s}` is neither a duration ago (90d, 12h), a date (2026-10-01) nor an RFC 3339 time")
    })?;
    Ok(now.checked_sub(d.as_signed()).unwrap_or(Timestamp::MIN))
}

/// Options of one pack.
pub(crate) struct Options {
    pub subject: Subject,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    pub out: PathBuf,
    /// The live audit file (its rotated files are found beside it).
    pub log: PathBuf,
    /// data_dir, for the public key and SSH recordings.
    pub data_dir: Option<PathBuf>,
}

/// The ids the subject reaches: a grant's request, a request's grants, a user's requests and
/// grants. Learnt in log order (a request is created before its grant is activated).
#[derive(Default)]
struct Ids {
    requests: BTreeSet<i64>,
    grants: BTreeSet<i64>,
}

fn files_of(log: &Path) -> Vec<PathBuf> {
    let mut f = jitgate_audit::rotated_files(log);
    f.push(log.to_path_buf());
    f
}

/// Every line of the log in order, with its parsed event (`None` for a line that is not one).
fn for_each_line(log: &Path, mut each: impl FnMut(&str, Option<&Event>) -> Result<bool>) -> Result<()> {
    for f in files_of(log) {
        let r = std::io::BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(&f).with_context(|| format!("opening {}", f.display()))?,
        );
        for line in r.lines() {
            let line = line.with_context(|| format!("reading {}", f.display()))?;
            let e = serde_json::from_str::<Event>(&line).ok();
            if !each(&line, e.as_ref())? {
                return Ok(());
            }
        }
    }
    Ok(())
}

fn identity_of(e: &Event) -> Option<&str> {
    e.details.get("identity").and_then(Value::as_str)
}

/// Whether `e` belongs to the pack (learning ids as it goes).
fn is_subject(o: &Options, ids: &mut Ids, e: &Event) -> bool {
    if o.since.is_some_and(|t| e.time < t) || o.until.is_some_and(|t| e.time > t) {
        return false;
    }
    match &o.subject {
        Subject::Grant(g) => e.grant_id == Some(*g) || e.request_id.is_some_and(|r| ids.requests.contains(&r)),
        Subject::Request(r) => {
            if e.request_id == Some(*r)
                && let Some(g) = e.grant_id
            {
                ids.grants.insert(g);
            }
            e.request_id == Some(*r) || e.grant_id.is_some_and(|g| ids.grants.contains(&g))
        }
        Subject::User(u) => {
            let mine = e.actor.as_deref() == Some(u.as_str()) || identity_of(e) == Some(u.as_str());
            if mine && e.kind.starts_with("request.") && identity_of(e) == Some(u.as_str()) {
                ids.requests.extend(e.request_id);
            }
            if mine && e.kind.starts_with("grant.") {
                ids.grants.extend(e.grant_id);
            }
            if e.request_id.is_some_and(|r| ids.requests.contains(&r))
                && let Some(g) = e.grant_id
            {
                ids.grants.insert(g);
            }
            mine || e.request_id.is_some_and(|r| ids.requests.contains(&r))
                || e.grant_id.is_some_and(|g| ids.grants.contains(&g))
        }
        Subject::Resource(r) => e.resource.as_deref() == Some(r.as_str()),
    }
}

/// One run of the chain: every line from a subject line to the checkpoint that signs it.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Segment {
    pub first_seq: u64,
    pub last_seq: u64,
    /// The seq of the closing `chain.checkpoint` line (`None`: the log ends unsigned).
    pub checkpoint_seq: Option<u64>,
    pub lines: Vec<String>,
}

/// The pack as written to JSON.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Pack {
    pub format: String,
    pub subject: String,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    pub generated_at: Timestamp,
    pub generated_by: String,
    /// The key in the gateway's data_dir when the pack was made: informational. Verify with
    /// the key you hold.
    pub public_key: Option<String>,
    /// The subject's events, parsed (each is also a line of a segment).
    pub events: Vec<Event>,
    /// Derived tables (also in the CSV files).
    pub summary: Value,
    /// SSH recordings of the subject's sessions (asciicast v2 text), by file name.
    pub recordings: Vec<Value>,
    pub segments: Vec<Segment>,
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Null) | None => String::new(),
        Some(x) => x.to_string(),
    }
}

fn t(e: &Event) -> String {
    e.time.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The derived tables: requests with their approvals, grants with their life, sessions with
/// their statements and commands.
fn summarise(events: &[Event]) -> Value {
    let mut requests: BTreeMap<i64, Value> = BTreeMap::new();
    let mut approvals = Vec::new();
    let mut grants: BTreeMap<i64, Value> = BTreeMap::new();
    let mut sessions: BTreeMap<String, Value> = BTreeMap::new();
    let mut statements = Vec::new();
    let mut commands = Vec::new();
    for e in events {
        let d = &e.details;
        let k = e.kind.as_str();
        if let Some(r) = e.request_id
            && k.starts_with("request.")
        {
            let row = requests.entry(r).or_insert_with(|| json!({"id": r, "events": []}));
            if k == "request.created" {
                row["requester"] = json!(identity_of(e).or(e.actor.as_deref()));
                row["resource"] = json!(e.resource);
                row["access"] = d.get("access").cloned().unwrap_or(Value::Null);
                row["duration"] = d.get("duration").cloned().unwrap_or(Value::Null);
                row["policy"] = d.get("policy").cloned().unwrap_or(Value::Null);
                row["ticket"] = d.get("ticket").cloned().unwrap_or(Value::Null);
                row["reason"] = json!(e.reason);
                row["created_at"] = json!(e.time);
            }
            if matches!(
                k,
                "request.approved" | "request.denied" | "request.cancelled" | "request.expired"
            ) {
                row["outcome"] = json!(k.trim_start_matches("request."));
                row["decided_at"] = json!(e.time);
            }
            if matches!(k, "request.approval_added" | "request.approved" | "request.denied") {
                approvals.push(json!({
                    "request": r, "time": e.time, "approver": e.actor, "decision": k.trim_start_matches("request."),
                    "step": d.get("step").or_else(|| d.get("approvals")).cloned().unwrap_or(Value::Null),
                    "reason": d.get("comment").and_then(Value::as_str).map(str::to_string).or_else(|| e.reason.clone()),
                }));
            }
        }
        if let Some(g) = e.grant_id
            && k.starts_with("grant.")
        {
            let row = grants.entry(g).or_insert_with(|| json!({"id": g, "life": []}));
            row["resource"] = json!(e.resource);
            if let Some(r) = e.request_id {
                row["request"] = json!(r);
            }
            if let Some(i) = identity_of(e) {
                row["identity"] = json!(i);
            }
            if let Some(x) = d.get("expires_at") {
                row["expires_at"] = x.clone();
            }
            if let Some(life) = row["life"].as_array_mut() {
                life.push(json!({"time": e.time, "event": k, "by": e.actor, "reason": e.reason}));
            }
        }
        if let Some(sid) = &e.session_id {
            if k == "session.started" {
                sessions.insert(
                    sid.clone(),
                    json!({"id": sid, "grant": e.grant_id, "resource": e.resource, "identity": identity_of(e).or(e.actor.as_deref()),
                           "started_at": e.time, "client": d.get("client_addr").or_else(|| d.get("peer")).cloned().unwrap_or(Value::Null),
                           "protocol": d.get("protocol").cloned().unwrap_or(Value::Null)}),
                );
            }
            if k == "session.ended" || k == "session.killed" {
                let row = sessions.entry(sid.clone()).or_insert_with(|| json!({"id": sid}));
                row["ended_at"] = json!(e.time);
                row["end"] = json!(
                    e.reason
                        .clone()
                        .or_else(|| d.get("reason").and_then(Value::as_str).map(str::to_string))
                );
            }
            if k == "pg.statement" {
                statements.push(json!({
                    "seq": e.seq, "time": e.time, "session": sid, "identity": e.actor, "outcome": d.get("outcome"),
                    "class": d.get("class"), "rows": d.get("rows"), "sqlstate": d.get("sqlstate"), "sql": d.get("sql"),
                }));
            }
            if let Some(text) = jitgate_audit::text::event_text(e)
                && k.starts_with("ssh.")
            {
                commands.push(json!({"seq": e.seq, "time": e.time, "session": sid, "identity": e.actor, "kind": k, "command": text}));
            }
        }
    }
    let refused: Vec<Value> = statements
        .iter()
        .filter(|s| s["outcome"] == "refused")
        .cloned()
        .collect();
    json!({
        "requests": requests.into_values().collect::<Vec<_>>(),
        "approvals": approvals,
        "grants": grants.into_values().collect::<Vec<_>>(),
        "sessions": sessions.into_values().collect::<Vec<_>>(),
        "statements": statements,
        "refused_statements": refused,
        "commands": commands,
    })
}

/// Build the pack: one pass to learn the subject's ids when a grant's request is needed, one to
/// take its events and the segments that sign them.
pub(crate) fn build(o: &Options) -> Result<Pack> {
    let mut ids = Ids::default();
    if let Subject::Grant(g) = o.subject {
        for_each_line(&o.log, |_, e| {
            if let Some(e) = e
                && e.grant_id == Some(g)
                && let Some(r) = e.request_id
            {
                ids.requests.insert(r);
                return Ok(false);
            }
            Ok(true)
        })?;
    }
    let mut events = Vec::new();
    let mut segments: Vec<Segment> = Vec::new();
    let mut open: Option<Segment> = None;
    for_each_line(&o.log, |line, e| {
        let Some(e) = e else {
            if let Some(seg) = open.as_mut() {
                seg.lines.push(line.to_string());
            }
            return Ok(true);
        };
        let subject = e.kind != "chain.checkpoint" && e.kind != "chain.continued" && is_subject(o, &mut ids, e);
        if subject {
            events.push(e.clone());
            if open.is_none() {
                open = Some(Segment {
                    first_seq: e.seq,
                    last_seq: e.seq,
                    checkpoint_seq: None,
                    lines: Vec::new(),
                });
            }
        }
        if let Some(seg) = open.as_mut() {
            seg.lines.push(line.to_string());
            seg.last_seq = e.seq;
            if e.kind == "chain.checkpoint" {
                seg.checkpoint_seq = Some(e.seq);
                segments.extend(open.take());
            }
        }
        Ok(true)
    })?;
    segments.extend(open.take());
    if events.is_empty() {
        bail!(
            "no audit events for {} in {}{}",
            o.subject.describe(),
            o.log.display(),
            match (o.since, o.until) {
                (None, None) => String::new(),
                _ => " in that period".into(),
            }
        );
    }
    let summary = summarise(&events);
    let recordings = recordings(&events, o.data_dir.as_deref());
    let public_key = o.data_dir.as_ref().and_then(|d| {
        std::fs::read_to_string(d.join("audit").join(jitgate_audit::checkpoint::PUB_FILE))
            .ok()
            .map(|k| k.trim().to_string())
    });
    Ok(Pack {
        format: FORMAT.into(),
        subject: o.subject.describe(),
        since: o.since,
        until: o.until,
        generated_at: Timestamp::now(),
        generated_by: format!("jitgate {}", env!("CARGO_PKG_VERSION")),
        public_key,
        events,
        summary,
        recordings,
        segments,
    })
}

/// Largest recording embedded in a pack (larger ones are listed with their hash).
const MAX_RECORDING: u64 = 16 << 20;

fn recordings(events: &[Event], data_dir: Option<&Path>) -> Vec<Value> {
    let mut out = Vec::new();
    for e in events {
        let Some(rec) = e.details.get("recording").and_then(Value::as_str) else {
            continue;
        };
        let p = Path::new(rec);
        let path = if p.is_absolute() {
            p.to_path_buf()
        } else {
            data_dir.map_or_else(|| p.to_path_buf(), |d| d.join(p))
        };
        let entry = match std::fs::metadata(&path) {
            Ok(m) if m.len() <= MAX_RECORDING => match std::fs::read(&path) {
                Ok(bytes) => json!({
                    "session": e.session_id, "file": rec, "bytes": bytes.len(),
                    "sha256": jitgate_audit::chain::line_hash(&bytes), "asciicast": String::from_utf8_lossy(&bytes),
                }),
                Err(err) => json!({"session": e.session_id, "file": rec, "error": err.to_string()}),
            },
            Ok(m) => {
                json!({"session": e.session_id, "file": rec, "bytes": m.len(), "note": "too large to embed; kept in data_dir"})
            }
            Err(err) => json!({"session": e.session_id, "file": rec, "error": err.to_string()}),
        };
        out.push(entry);
    }
    out
}

fn csv_field(v: &Value) -> String {
    let text = match v {
        Value::String(x) => x.clone(),
        Value::Null => String::new(),
        x => x.to_string(),
    };
    // Formula injection: a cell a spreadsheet would evaluate is quoted as text.
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn csv(rows: &[Value], cols: &[&str]) -> String {
    let mut out = cols.join(",");
    out.push('\n');
    for r in rows {
        let cells: Vec<String> = cols
            .iter()
            .map(|c| csv_field(r.get(*c).unwrap_or(&Value::Null)))
            .collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn table(h: &mut String, title: &str, id: &str, rows: &[Value], cols: &[(&str, &str)], mark_refused: bool) {
    let _ = write!(
        h,
        "<section id=\"{id}\"><h2>{} <small>({})</small></h2>",
        esc(title),
        rows.len()
    );
    if rows.is_empty() {
        h.push_str("<p class=\"none\">None.</p></section>");
        return;
    }
    h.push_str("<table><thead><tr>");
    for (_, label) in cols {
        let _ = write!(h, "<th>{}</th>", esc(label));
    }
    h.push_str("</tr></thead><tbody>");
    for r in rows {
        let refused = mark_refused && r["outcome"] == "refused";
        h.push_str(if refused { "<tr class=\"refused\">" } else { "<tr>" });
        for (k, _) in cols {
            let v = s(r, k);
            if *k == "sql" || *k == "command" {
                let _ = write!(h, "<td><code>{}</code></td>", esc(&v));
            } else {
                let _ = write!(h, "<td>{}</td>", esc(&v));
            }
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table></section>");
}

/// The pack page's style (inline: the page needs no other file).
const CSS: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:70rem;color:#1b1f24;padding:0 1rem}\
         h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem}\
         small{color:#57606a;font-weight:normal}table{border-collapse:collapse;width:100%;margin:.5rem 0}\
         th,td{border:1px solid #d0d7de;padding:.25rem .45rem;text-align:left;vertical-align:top}th{background:#f6f8fa}\
         code{font:12.5px ui-monospace,monospace;white-space:pre-wrap;word-break:break-word}tr.refused td{background:#ffebe9}\
         .meta td:first-child{width:12rem;color:#57606a}.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}\
         pre{background:#f6f8fa;padding:.6rem;overflow:auto;max-height:20rem;font-size:12px}.none{color:#57606a}";

/// The HTML rendering: the same content as the JSON, for a person; one file, no external assets.
fn html(p: &Pack, verified: &str) -> String {
    let sm = &p.summary;
    let arr = |k: &str| sm[k].as_array().cloned().unwrap_or_default();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Evidence: {}</title><style>{CSS}</style></head><body>",
        esc(&p.subject),
    );
    let _ = write!(
        h,
        "<h1>Access evidence: {}</h1><table class=\"meta\"><tr><td>Period</td><td>{} – {}</td></tr>\
         <tr><td>Generated</td><td>{} by {}</td></tr><tr><td>Events</td><td>{} (seq {}–{})</td></tr>\
         <tr><td>Integrity</td><td id=\"integrity\">{}</td></tr></table>",
        esc(&p.subject),
        p.since.map_or("the log's start".into(), |t| t.to_string()),
        p.until.map_or("when generated".into(), |t| t.to_string()),
        p.generated_at,
        esc(&p.generated_by),
        p.events.len(),
        p.events.first().map_or(0, |e| e.seq),
        p.events.last().map_or(0, |e| e.seq),
        verified
    );
    table(
        &mut h,
        "Requests",
        "requests",
        &arr("requests"),
        &[
            ("id", "Request"),
            ("requester", "Requester"),
            ("resource", "Resource"),
            ("access", "Access"),
            ("duration", "For"),
            ("policy", "Policy"),
            ("ticket", "Ticket"),
            ("reason", "Reason"),
            ("created_at", "Created"),
            ("outcome", "Outcome"),
            ("decided_at", "Decided"),
        ],
        false,
    );
    table(
        &mut h,
        "Approvals",
        "approvals",
        &arr("approvals"),
        &[
            ("request", "Request"),
            ("time", "When"),
            ("approver", "Who"),
            ("decision", "Decision"),
            ("step", "Step / approvals"),
            ("reason", "Reason"),
        ],
        false,
    );
    let grants = arr("grants");
    let _ = write!(
        h,
        "<section id=\"grants\"><h2>Grants <small>({})</small></h2>",
        grants.len()
    );
    for g in &grants {
        let _ = write!(
            h,
            "<h3>Grant {} — {} on {} (request {})</h3>",
            esc(&s(g, "id")),
            esc(&s(g, "identity")),
            esc(&s(g, "resource")),
            esc(&s(g, "request"))
        );
        let life = g["life"].as_array().cloned().unwrap_or_default();
        table(
            &mut h,
            "Life",
            &format!("grant-{}-life", s(g, "id")),
            &life,
            &[("time", "When"), ("event", "Event"), ("by", "By"), ("reason", "Reason")],
            false,
        );
    }
    h.push_str("</section>");
    table(
        &mut h,
        "Sessions",
        "sessions",
        &arr("sessions"),
        &[
            ("id", "Session"),
            ("grant", "Grant"),
            ("resource", "Resource"),
            ("identity", "Who"),
            ("client", "From"),
            ("started_at", "Started"),
            ("ended_at", "Ended"),
            ("end", "Why it ended"),
        ],
        false,
    );
    table(
        &mut h,
        "Refused statements",
        "refused",
        &arr("refused_statements"),
        &[
            ("time", "When"),
            ("session", "Session"),
            ("identity", "Who"),
            ("sqlstate", "SQLSTATE"),
            ("sql", "Statement"),
        ],
        true,
    );
    table(
        &mut h,
        "SQL statements",
        "statements",
        &arr("statements"),
        &[
            ("time", "When"),
            ("session", "Session"),
            ("outcome", "Outcome"),
            ("class", "Class"),
            ("rows", "Rows"),
            ("sql", "Statement"),
        ],
        true,
    );
    table(
        &mut h,
        "SSH commands",
        "commands",
        &arr("commands"),
        &[
            ("time", "When"),
            ("session", "Session"),
            ("kind", "Kind"),
            ("command", "Command"),
        ],
        false,
    );
    let _ = write!(
        h,
        "<section id=\"recordings\"><h2>SSH recordings <small>({})</small></h2>",
        p.recordings.len()
    );
    for r in &p.recordings {
        let _ = write!(
            h,
            "<details><summary>{} (session {}, {} bytes, sha256 {})</summary><pre>{}</pre></details>",
            esc(&s(r, "file")),
            esc(&s(r, "session")),
            esc(&s(r, "bytes")),
            esc(&s(r, "sha256")),
            esc(&s(r, "asciicast"))
        );
    }
    h.push_str("</section>");
    let all: Vec<Value> = p
        .events
        .iter()
        .map(|e| json!({"seq": e.seq, "time": t(e), "kind": e.kind, "actor": e.actor, "reason": e.reason, "session": e.session_id}))
        .collect();
    table(
        &mut h,
        "Every event, in order",
        "timeline",
        &all,
        &[
            ("seq", "Seq"),
            ("time", "When"),
            ("kind", "Kind"),
            ("actor", "Actor"),
            ("session", "Session"),
            ("reason", "Reason"),
        ],
        false,
    );
    let _ = write!(
        h,
        "<section id=\"proof\"><h2>How to verify this pack</h2><p>The JSON file beside this page holds {} chain segment(s): every \
         audit line from each run of these events to the signed checkpoint after it, byte for byte (the other lines between are \
         included because the chain links each line to the one before). With the gateway's public key, obtained from its operators, \
         verify it offline with:</p><pre>jitgate audit verify --evidence {}.json --pubkey ed25519:...</pre>\
         <p>It checks each segment's hash chain and checkpoint signature and that every event above is a line of a signed segment.</p></section>",
        p.segments.len(),
        esc(&p.subject.replace(' ', "-"))
    );
    h.push_str("</body></html>");
    h
}

/// `jitgate audit evidence`.
pub(crate) fn run(o: &Options) -> Result<ExitCode> {
    let pack = build(o)?;
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let name = o.subject.name();
    // The integrity line of the HTML: checked now against the key in data_dir (the auditor
    // re-checks with the key they hold).
    let verified = match pack.public_key.as_deref().map(jitgate_audit::PublicKey::parse) {
        Some(Ok(k)) => match verify_pack(&pack, &[k]) {
            Ok(v) if v.unsigned.is_empty() => format!(
                "<span class=\"ok\">verified</span> when generated: {} segment(s), {} line(s), every event signed by checkpoint key {}",
                pack.segments.len(),
                v.lines,
                esc(&v.key_ids.join(", "))
            ),
            Ok(v) => format!(
                "<span class=\"bad\">partly signed</span>: {} (the log had not been signed past them yet)",
                esc(&v.unsigned.join("; "))
            ),
            Err(e) => format!("<span class=\"bad\">does not verify</span>: {}", esc(&e)),
        },
        _ => "not checked (no public key in data_dir)".into(),
    };
    let json_path = o.out.join(format!("{name}.json"));
    std::fs::write(&json_path, serde_json::to_vec_pretty(&pack)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let html_path = o.out.join(format!("{name}.html"));
    std::fs::write(&html_path, html(&pack, &verified)).with_context(|| format!("writing {}", html_path.display()))?;
    let sm = &pack.summary;
    let arr = |k: &str| sm[k].as_array().cloned().unwrap_or_default();
    for (part, rows, cols) in [
        (
            "approvals",
            arr("approvals"),
            &["request", "time", "approver", "decision", "step", "reason"][..],
        ),
        (
            "sessions",
            arr("sessions"),
            &[
                "id",
                "grant",
                "resource",
                "identity",
                "client",
                "started_at",
                "ended_at",
                "end",
            ][..],
        ),
        (
            "statements",
            arr("statements"),
            &[
                "seq", "time", "session", "identity", "outcome", "class", "rows", "sqlstate", "sql",
            ][..],
        ),
        (
            "commands",
            arr("commands"),
            &["seq", "time", "session", "identity", "kind", "command"][..],
        ),
    ] {
        let p = o.out.join(format!("{name}-{part}.csv"));
        std::fs::write(&p, csv(&rows, cols)).with_context(|| format!("writing {}", p.display()))?;
    }
    println!(
        "{}: {} events ({} statements, {} refused, {} commands, {} sessions), {} signed segment(s)\n  {}\n  {}\n  {}/{name}-{{approvals,sessions,statements,commands}}.csv",
        pack.subject,
        pack.events.len(),
        arr("statements").len(),
        arr("refused_statements").len(),
        arr("commands").len(),
        arr("sessions").len(),
        pack.segments.iter().filter(|s| s.checkpoint_seq.is_some()).count(),
        json_path.display(),
        html_path.display(),
        o.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// What [`verify_pack`] proved.
pub(crate) struct PackProof {
    pub lines: u64,
    pub key_ids: Vec<String>,
    /// Segments (or parts) no checkpoint signs.
    pub unsigned: Vec<String>,
}

/// Check a pack: each segment's chain and closing checkpoint with `keys`, and that every event
/// is, field for field, a line of a segment. `Err` names what fails.
pub(crate) fn verify_pack(p: &Pack, keys: &[jitgate_audit::PublicKey]) -> std::result::Result<PackProof, String> {
    if p.format != FORMAT {
        return Err(format!("not a {FORMAT} pack (format {:?})", p.format));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut lines_by_seq: BTreeMap<u64, Event> = BTreeMap::new();
    let mut proof = PackProof {
        lines: 0,
        key_ids: Vec::new(),
        unsigned: Vec::new(),
    };
    for (i, seg) in p.segments.iter().enumerate() {
        let f = dir.path().join(format!("segment-{i}.jsonl"));
        let mut text = seg.lines.join("\n");
        text.push('\n');
        std::fs::write(&f, text).map_err(|e| e.to_string())?;
        let r = jitgate_audit::verify_signed(&[f], keys).map_err(|(_, b)| {
            format!(
                "segment {} (seq {}..{}) line {}: {}",
                i + 1,
                seg.first_seq,
                seg.last_seq,
                b.line,
                b.why
            )
        })?;
        if r.checkpoints == 0 {
            proof.unsigned.push(format!(
                "seq {}..{} has no checkpoint after it",
                seg.first_seq, seg.last_seq
            ));
        } else if r.unsigned_tail > 0 {
            proof.unsigned.push(format!(
                "{} line(s) at the end of seq {}..{} are unsigned",
                r.unsigned_tail, seg.first_seq, seg.last_seq
            ));
        }
        for [a, b] in &r.gaps {
            proof.unsigned.push(format!(
                "seq {a}..{b} is signed by no checkpoint (an earlier run's unsigned tail)"
            ));
        }
        if let Some(s) = &r.last_signed
            && !proof.key_ids.contains(&s.key_id)
        {
            proof.key_ids.push(s.key_id.clone());
        }
        proof.lines += r.lines;
        // The signed part of the segment: lines up to the last checkpoint, less any gap.
        let signed_to = r.last_signed.as_ref().map_or(0, |s| s.covers_seq);
        for l in &seg.lines {
            if let Ok(e) = serde_json::from_str::<Event>(l)
                && e.seq <= signed_to
                && !r.gaps.iter().any(|[a, b]| (*a..=*b).contains(&e.seq))
            {
                lines_by_seq.insert(e.seq, e);
            }
        }
    }
    let want = serde_json::to_value(&p.events).map_err(|e| e.to_string())?;
    for (e, v) in p.events.iter().zip(want.as_array().into_iter().flatten()) {
        match lines_by_seq.get(&e.seq) {
            Some(line) if serde_json::to_value(line).ok().as_ref() == Some(v) => {}
            Some(_) => {
                return Err(format!(
                    "event seq {} differs from the signed line with that seq",
                    e.seq
                ));
            }
            None if proof.unsigned.is_empty() => return Err(format!("event seq {} is in no signed segment", e.seq)),
            None => {}
        }
    }
    Ok(proof)
}

/// `jitgate audit verify --evidence PACK.json`.
pub(crate) fn verify_file(path: &Path, keys: &[jitgate_audit::PublicKey], json: bool) -> Result<ExitCode> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let pack: Pack = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not an evidence pack ({FORMAT})", path.display()))?;
    if keys.is_empty() {
        bail!(
            "an evidence pack proves something only against the gateway's public key: pass --pubkey ed25519:... (from `jitgate audit pubkey`, obtained from the operators)"
        );
    }
    match verify_pack(&pack, keys) {
        Ok(p) => {
            let ok = p.unsigned.is_empty();
            if json {
                println!(
                    "{}",
                    json!({"ok": ok, "subject": pack.subject, "events": pack.events.len(), "segments": pack.segments.len(),
                           "lines": p.lines, "keys": p.key_ids, "unsigned": p.unsigned})
                );
            } else {
                println!(
                    "{}: {} ({}): {} events in {} segment(s) of {} line(s), {}",
                    path.display(),
                    if ok { "ok" } else { "incomplete" },
                    pack.subject,
                    pack.events.len(),
                    pack.segments.len(),
                    p.lines,
                    if p.key_ids.is_empty() {
                        "no checkpoint".to_string()
                    } else {
                        format!("signed by {}", p.key_ids.join(", "))
                    }
                );
                for u in &p.unsigned {
                    eprintln!("error: {u}");
                }
            }
            Ok(ExitCode::from(if ok { 0 } else { 3 }))
        }
        Err(e) => {
            if json {
                println!("{}", json!({"ok": false, "error": e}));
            } else {
                eprintln!("error: {}: {e}", path.display());
            }
            Ok(ExitCode::from(1))
        }
    }
}
