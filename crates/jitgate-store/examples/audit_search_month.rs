//! The search-by-content benchmark (bench/README.md): writes a realistic month of audit
//! history through the real audit writer and SQLite index (statements from interleaved
//! sessions, SSH commands, rotation at the default 1 GiB), then times `jitgate audit search`'s
//! store query for a set of searches on a freshly opened store and reports the index's size.
//!
//!   cargo run --release -p jitgate-store --example audit_search_month -- \
//!       --statements 10000000 --dir /tmp/jitgate-search-month [--search-only]
//!
//! Prints one JSON object per search and a summary table (markdown) on stdout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::Instant;

use jiff::{SignedDuration, Timestamp};
use jitgate_audit::{AuditIndex, AuditSink, Event, Kind, Query, Statement};
use jitgate_store::SqliteStore;

/// xorshift64*: repeatable, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const TABLES: &[&str] = &[
    "customers",
    "orders",
    "order_items",
    "invoices",
    "payments",
    "products",
    "inventory",
    "shipments",
    "events",
    "sessions",
    "accounts",
    "audit_trail",
];

/// One statement of a typical OLTP/ops mix, with literals, as an application or a DBA sends it.
fn statement(r: &mut Rng) -> (String, &'static str) {
    let t = TABLES[usize::try_from(r.below(TABLES.len() as u64)).unwrap_or(0)];
    let id = r.below(5_000_000);
    match r.below(1_000_000) {
        // Rare statements an auditor searches for: about 1 in 100,000 each.
        0..10 => (format!("DROP TABLE IF EXISTS tmp_{t}_{id}"), "ddl"),
        10..20 => (format!("TRUNCATE {t}"), "write"),
        20..25 => ("SELECT pg_read_file('/etc/passwd')".into(), "select"),
        25..40 => (format!("ALTER TABLE {t} ADD COLUMN note_{id} text"), "ddl"),
        40..50 => (format!("GRANT SELECT ON {t} TO analyst_{}", id % 50), "ddl"),
        50..100_000 => ("BEGIN".into(), "tx"),
        100_000..150_000 => ("COMMIT".into(), "tx"),
        150_000..600_000 => (format!("SELECT * FROM {t} WHERE id = {id}"), "select"),
        600_000..700_000 => (
            format!(
                "SELECT c.id, c.email, sum(o.total) FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.created_at > now() - interval '{} days' GROUP BY c.id, c.email ORDER BY 3 DESC LIMIT 50",
                id % 90
            ),
            "select",
        ),
        700_000..850_000 => (
            format!(
                "UPDATE {t} SET updated_at = now(), status = 'state_{}' WHERE id = {id}",
                id % 7
            ),
            "write",
        ),
        850_000..950_000 => (
            format!(
                "INSERT INTO {t} (id, payload, created_at) VALUES ({id}, '{{\"k\": {}}}', now())",
                id % 1000
            ),
            "write",
        ),
        _ => (format!("DELETE FROM {t} WHERE id = {id}"), "write"),
    }
}

fn command(r: &mut Rng) -> String {
    match r.below(10_000) {
        0..3 => "rm -rf /var/lib/app/cache".into(),
        3..2000 => format!("tail -n {} /var/log/app/app.log", 50 + r.below(500)),
        2000..4000 => "systemctl status app".into(),
        4000..6000 => format!("grep -i error /var/log/app/app-{}.log", r.below(30)),
        6000..8000 => "df -h".into(),
        _ => format!("journalctl -u app --since -{}m", r.below(120)),
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn dir_bytes(dir: &std::path::Path, pred: impl Fn(&str) -> bool) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| pred(&e.file_name().to_string_lossy()))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = arg(&args, "--statements").map_or(10_000_000, |s| s.parse().expect("--statements N"));
    let dir = std::path::PathBuf::from(arg(&args, "--dir").unwrap_or_else(|| "/tmp/jitgate-search-month".into()));
    let search_only = args.iter().any(|a| a == "--search-only");
    let db = dir.join("jitgate.db");
    let log = dir.join("audit").join("audit.jsonl");
    let month_start: Timestamp = "2026-11-01T00:00:00Z".parse().unwrap();
    let month = SignedDuration::from_hours(30 * 24);
    let step_ns = month.as_nanos() / i128::from(n.max(1));

    if !search_only {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(SqliteStore::open(&db, None).unwrap());
        let ix: Arc<dyn AuditIndex> = store.clone();
        let sink = AuditSink::open_with(&log, Some(ix), None, Some(1 << 30)).unwrap();
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let started = Instant::now();
        // 16 sessions open at a time, interleaved; each runs 20–2,000 statements, then the next
        // session of a random user (of 60) on a random resource (of 25) takes its place.
        struct Open {
            id: String,
            user: Arc<str>,
            resource: Arc<str>,
            grant: i64,
            left: u64,
        }
        let mut next_session = 0u64;
        let mut open_one = |r: &mut Rng| {
            next_session += 1;
            Open {
                id: format!("s-{next_session}"),
                user: format!("user{}@example.com", r.below(60)).into(),
                resource: format!("db-{}", r.below(25)).into(),
                grant: i64::try_from(next_session / 3).unwrap_or(0),
                left: 20 + r.below(1980),
            }
        };
        let mut sessions: Vec<Open> = (0..16).map(|_| open_one(&mut r)).collect();
        let (mut statements, mut commands) = (0u64, 0u64);
        while statements < n {
            let time = month_start
                .checked_add(SignedDuration::from_nanos(
                    i64::try_from(step_ns * i128::from(statements)).unwrap_or(0),
                ))
                .unwrap();
            // About 2% of events are SSH commands.
            if r.below(50) == 0 {
                commands += 1;
                let (kind, key) = if r.below(2) == 0 {
                    (Kind::SshExec, "command")
                } else {
                    (Kind::SshCommand, "line")
                };
                let e = Event::new(kind, time)
                    .actor(format!("user{}@example.com", r.below(60)))
                    .resource(format!("web-{}", r.below(10)))
                    .session(format!("ssh-{}", r.below(100_000)))
                    .details(serde_json::json!({ key: command(&mut r), "login": "deploy" }));
                sink.emit(e).await.unwrap();
                continue;
            }
            let k = usize::try_from(r.below(16)).unwrap_or(0);
            let s = &mut sessions[k];
            let (sql, class) = statement(&mut r);
            sink.emit_statement(Statement {
                time,
                identity: s.user.clone(),
                access: "read-write".into(),
                resource: s.resource.clone(),
                grant_id: s.grant,
                session_id: s.id.as_str().into(),
                sql: sql.into(),
                max_text: 4096,
                class,
                simple: true,
                outcome: "ok",
                duration_ms: 0.2,
                rows: 1,
                error: None,
            })
            .await
            .unwrap();
            statements += 1;
            s.left -= 1;
            if s.left == 0 {
                sessions[k] = open_one(&mut r);
            }
            if statements % 1_000_000 == 0 {
                eprintln!("{statements} statements in {:.0} s", started.elapsed().as_secs_f64());
            }
        }
        sink.record(Event::new(Kind::GatewayStopped, Timestamp::now()))
            .await
            .unwrap();
        drop(sink);
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{{\"written\": {{\"statements\": {statements}, \"ssh_commands\": {commands}, \"seconds\": {secs:.1}, \"events_per_second\": {:.0}}}}}",
            (statements + commands) as f64 / secs
        );
    }

    // Sizes.
    let audit_dir = log.parent().unwrap();
    let log_bytes = dir_bytes(audit_dir, |n| n.ends_with(".jsonl"));
    let db_bytes = dir_bytes(&dir, |n| n.starts_with("jitgate.db"));
    let c = rusqlite::Connection::open(&db).unwrap();
    let words_bytes: i64 = c
        .query_row("SELECT coalesce(sum(length(block)), 0) FROM audit_text_data", [], |r| {
            r.get(0)
        })
        .unwrap();
    let runs_bytes: i64 = c
        .query_row("SELECT coalesce(sum(length(at)), 0) FROM audit_runs", [], |r| r.get(0))
        .unwrap();
    drop(c);
    println!(
        "{{\"sizes\": {{\"log_bytes\": {log_bytes}, \"database_bytes\": {db_bytes}, \"word_index_bytes\": {words_bytes}, \"run_offsets_bytes\": {runs_bytes}}}}}"
    );

    // Searches, each on a freshly opened store (no statement cache, no page cache of SQLite's
    // own; the OS page cache is warm, as on a gateway that has been running).
    let at = |days: i64| month_start.checked_add(SignedDuration::from_hours(24 * days)).unwrap();
    let cases: Vec<(&str, Query)> = vec![
        (
            "--text 'DROP TABLE'",
            Query {
                text: Some("DROP TABLE".into()),
                ..Default::default()
            },
        ),
        (
            "--text 'DROP TABLE' --user user7@example.com",
            Query {
                text: Some("DROP TABLE".into()),
                user: Some("user7@example.com".into()),
                ..Default::default()
            },
        ),
        (
            "--text pg_read_file",
            Query {
                text: Some("pg_read_file".into()),
                ..Default::default()
            },
        ),
        (
            "--text 'TRUNCATE customers'",
            Query {
                text: Some("TRUNCATE customers".into()),
                ..Default::default()
            },
        ),
        (
            "--text 'WHERE id = 4242'",
            Query {
                text: Some("WHERE id = 4242".into()),
                ..Default::default()
            },
        ),
        (
            "--command 'rm -rf'",
            Query {
                text: Some("rm -rf".into()),
                kind: Some("ssh.".into()),
                ..Default::default()
            },
        ),
        (
            "--text customers (newest 1000 of ~900k)",
            Query {
                text: Some("customers".into()),
                ..Default::default()
            },
        ),
        (
            "--text 'UPDATE orders' --since day 20 --until day 21",
            Query {
                text: Some("UPDATE orders".into()),
                since: Some(at(20)),
                until: Some(at(21)),
                ..Default::default()
            },
        ),
        (
            "--text 'GRANT SELECT' --resource db-3",
            Query {
                text: Some("GRANT SELECT".into()),
                resource: Some("db-3".into()),
                ..Default::default()
            },
        ),
        (
            "--text 's' (one-letter prefix)",
            Query {
                text: Some("s".into()),
                ..Default::default()
            },
        ),
        (
            "--text 'ord' (a word's start)",
            Query {
                text: Some("ord".into()),
                ..Default::default()
            },
        ),
        (
            "--text 'xyzzy' (no such word)",
            Query {
                text: Some("xyzzy".into()),
                ..Default::default()
            },
        ),
    ];
    println!(
        "\n| search | matches returned | first search after open (ms) | repeated (ms, median of 5) |\n|---|---|---|---|"
    );
    for (name, q) in cases {
        let store = SqliteStore::open(&db, None).unwrap();
        AuditIndex::attach_log(&store, &log);
        let t = Instant::now();
        let found = AuditIndex::search(&store, &q).await.unwrap();
        let first = t.elapsed().as_secs_f64() * 1000.0;
        let mut again = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let f = AuditIndex::search(&store, &q).await.unwrap();
            again.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(f.len(), found.len());
        }
        again.sort_by(f64::total_cmp);
        // Every returned event really matches.
        assert!(
            found.iter().all(|e| q.matches(e)),
            "{name}: a returned event does not match"
        );
        println!("| `{name}` | {} | {first:.1} | {:.1} |", found.len(), again[2]);
        eprintln!(
            "{{\"search\": {name:?}, \"matches\": {}, \"first_ms\": {first:.1}, \"median_ms\": {:.1}}}",
            found.len(),
            again[2]
        );
    }
    eprintln!("(the history is kept in {}; remove it when done)", dir.display());
}
