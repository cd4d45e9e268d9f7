//! The attacker's suite for the Postgres front end: read-only, kill and audit tried as a hostile
//! client would, through the real `jitgate serve` against a real PostgreSQL, asserting side
//! effects on the server (not only error codes).
//!
//! - `read_only_corpus_*`: every line of `tests/fixtures/readonly_attacks.jsonl` (statements
//!   written from PostgreSQL's lexical and grammar rules) runs in a fresh read-only session whose
//!   credential holds full DML rights; a snapshot of the database's whole state
//!   (`readonly_snapshot.sql`) must not change, refused lines must fail and allowed lines must
//!   succeed.
//! - raw-frame protocol sequences: reply order after failed and refused Parse, pipelining,
//!   Terminate in the same packet, FunctionCall, undecodable text, a client that stops reading
//!   killed on revoke and expiry, a session that leaves read-only mode upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use support::pg::{Pg, cluster, code, db_message};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::NoTls;

const RO_USER: &str = "ro_dml";
const RO_PASSWORD: &str = "ro-dml-attack-pw";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn unique_db() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("atk_{}_{nanos}", std::process::id())
}

/// Run a SQL file with psql as the superuser on `db` (retried: suites running side by side
/// update the same cluster-wide roles, and PostgreSQL may answer "tuple concurrently updated").
fn su_file(pg: &Pg, db: &str, file: &std::path::Path) {
    let mut out = su_file_once(pg, db, file);
    for _ in 0..5 {
        if out.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        out = su_file_once(pg, db, file);
    }
    assert!(
        out.status.success(),
        "{}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn su_file_once(pg: &Pg, db: &str, file: &std::path::Path) -> std::process::Output {
    Command::new("psql")
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            &pg.user,
            "-d",
            db,
            "-f",
        ])
        .arg(file)
        .env("PGPASSWORD", &pg.password)
        .env("PGSSLMODE", "disable")
        .output()
        .unwrap()
}

/// A database with the attack fixtures, a gateway in front of it whose read-only credential is
/// `ro_user` (a DML-holding plain role, or a superuser), and alice's grant of `access`.
struct Lab {
    gw: Gateway,
    pg: Pg,
    db: String,
    grant_id: i64,
}

fn lab(access: &str, ro_user: &str, ro_password: &str, grant_for: &str) -> Lab {
    let pg = cluster();
    let db = unique_db();
    pg.su("postgres", &format!("CREATE DATABASE {db}"));
    su_file(&pg, &db, &fixtures().join("readonly_setup.sql"));
    // The fixture's user mapping makes the credential unacceptable (see the corpus test).
    pg.su(&db, "DROP USER MAPPING FOR ro_dml SERVER loop");
    let body = format!(
        r#"[postgres]
allow_plaintext = true
startup_timeout = "2s"

[audit]
redact = ['tok_live_[a-z0-9]+', "(?i)api_key\\s*=\\s*'(?P<secret>[^']*)'"]

{ids}
[[resources]]
name = "prod-db"
kind = "postgres"
address = "127.0.0.1:{port}"
database = "{db}"
credentials.read-only = {{ user = "{ro_user}", password_file = "ro.pw" }}
credentials.read-write = {{ user = "{su}", password_file = "rw.pw" }}

[[policies]]
name = "production"
resources = ["prod-*"]
requesters = ["dev"]
approvers = ["dba"]
"#,
        ids = identities(),
        port = pg.port,
        su = pg.user,
    );
    let gw = Gateway::start_pg(&body);
    std::fs::write(gw.dir.path().join("ro.pw"), format!("{ro_password}\n")).unwrap();
    std::fs::write(gw.dir.path().join("rw.pw"), format!("{}\n", pg.password)).unwrap();
    let grant_id = gw.granted(&["prod-db", "--access", access, "--for", grant_for, "--reason", "attack"])["grant_id"]
        .as_i64()
        .unwrap();
    Lab { gw, pg, db, grant_id }
}

impl Lab {
    fn conn_str(&self) -> String {
        let (host, port) = self.gw.pg_host_port();
        format!(
            "host={host} port={port} user=alice@example.com password={} dbname=prod-db sslmode=disable",
            token("alice")
        )
    }

    async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (c, conn) = tokio_postgres::connect(&self.conn_str(), NoTls).await?;
        tokio::spawn(conn);
        Ok(c)
    }

    /// A direct superuser connection to the lab database (for snapshots and checks).
    async fn direct(&self) -> tokio_postgres::Client {
        let s = format!(
            "host=127.0.0.1 port={} user={} password={} dbname={} sslmode=disable application_name=jg_direct",
            self.pg.port, self.pg.user, self.pg.password, self.db
        );
        let (c, conn) = tokio_postgres::connect(&s, NoTls).await.unwrap();
        tokio::spawn(conn);
        c
    }

    fn statements(&self) -> Vec<serde_json::Value> {
        self.gw
            .audit_events()
            .into_iter()
            .filter(|e| e["kind"] == "pg.statement")
            .collect()
    }

    fn audited(&self, sql: &str, within: Duration) -> Option<serde_json::Value> {
        let mut found = None;
        eventually(within, || {
            found = self.statements().into_iter().find(|e| e["details"]["sql"] == sql);
            found.is_some()
        });
        found
    }

    fn backends(&self) -> usize {
        self.pg
            .su(
                "postgres",
                &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND backend_type = 'client backend' AND application_name NOT IN ('psql', 'jg_direct') AND pid <> pg_backend_pid()", self.db),
            )
            .trim()
            .parse()
            .unwrap()
    }
}

async fn snapshot(direct: &tokio_postgres::Client) -> String {
    let sql = std::fs::read_to_string(fixtures().join("readonly_snapshot.sql")).unwrap();
    let rows = direct.simple_query(&sql).await.unwrap();
    rows.into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap()
}

/// Files the corpus tries to write on the server's disk.
fn stray_files() -> Vec<String> {
    std::fs::read_dir("/tmp")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("jitgate-ro-"))
                .collect()
        })
        .unwrap_or_default()
}

struct Attack {
    sql: String,
    expect: String,
    class: String,
}

fn corpus() -> Vec<Attack> {
    std::fs::read_to_string(fixtures().join("readonly_attacks.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            let f = |k: &str| v[k].as_str().unwrap_or("").to_string();
            Attack {
                sql: f("sql"),
                expect: f("expect"),
                class: f("class"),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_corpus_has_no_side_effect_with_a_dml_credential() {
    let lab = lab("read-only", RO_USER, RO_PASSWORD, "1h");
    let direct = lab.direct().await;
    // The fixture gives the credential a user mapping (postgres_fdw would run the remote side
    // read-write): such a credential is refused outright. Without it, the corpus runs.
    lab.pg.su(
        &lab.db,
        &format!("CREATE USER MAPPING FOR ro_dml SERVER loop OPTIONS (user 'ro_dml', password '{RO_PASSWORD}')"),
    );
    let Err(e) = lab.connect().await else {
        panic!("a credential with a user mapping was accepted")
    };
    assert_eq!(code(&e), "28000", "{e:?}");
    assert!(db_message(&e).contains("user mappings"), "{e:?}");
    lab.pg.su(&lab.db, "DROP USER MAPPING FOR ro_dml SERVER loop");
    let attacks = corpus();
    assert!(attacks.len() >= 150, "corpus has {} lines", attacks.len());
    assert!(attacks.iter().filter(|a| a.expect == "allow").count() >= 30);
    let before_files = stray_files();
    let mut wrong = Vec::new();
    let mut refused = 0;
    for a in &attacks {
        let before = snapshot(&direct).await;
        let c = lab
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect before {:?}: {e:?}", a.sql));
        let copy_out = a.expect == "allow" && a.sql.trim_start().to_ascii_uppercase().starts_with("COPY");
        let r = tokio::time::timeout(Duration::from_secs(10), async {
            if copy_out {
                use futures_util::StreamExt;
                let s = c.copy_out(a.sql.as_str()).await?;
                futures_util::pin_mut!(s);
                while let Some(chunk) = s.next().await {
                    chunk?;
                }
                Ok(Vec::new())
            } else {
                c.simple_query(&a.sql).await
            }
        })
        .await;
        let r = match r {
            Ok(r) => r,
            Err(_) => {
                wrong.push(format!("{:?}: hung", a.sql));
                continue;
            }
        };
        drop(c);
        let after = snapshot(&direct).await;
        if before != after {
            wrong.push(format!(
                "{:?} [{}]: SIDE EFFECT\n  before {before}\n  after  {after}",
                a.sql, a.class
            ));
            // Rebuild the fixtures so one hole does not hide the next.
            su_file(&lab.pg, &lab.db, &fixtures().join("readonly_setup.sql"));
            lab.pg.su(&lab.db, "DROP USER MAPPING FOR ro_dml SERVER loop");
        }
        match (a.expect.as_str(), &r) {
            ("refuse", Ok(_)) => wrong.push(format!("{:?} [{}]: expected a refusal, it ran", a.sql, a.class)),
            ("allow", Err(e)) => wrong.push(format!("{:?} [{}]: expected to run, got {e:?}", a.sql, a.class)),
            ("refuse", Err(_)) => refused += 1,
            _ => {}
        }
    }
    assert_eq!(stray_files(), before_files, "files written on the server's disk");
    assert!(
        wrong.is_empty(),
        "{} of {} wrong:\n{}",
        wrong.len(),
        attacks.len(),
        wrong.join("\n")
    );
    assert!(refused >= 100, "{refused}");
    // Every refusal was audited, none with the text missing.
    let evs = lab.statements();
    assert!(evs.iter().all(|e| e["details"]["sql"].as_str().is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superuser_read_only_credential_is_refused_at_connect() {
    let pg = cluster();
    let (su, pw) = (pg.user.clone(), pg.password.clone());
    drop(pg);
    let lab = lab("read-only", &su, &pw, "1h");
    let e = lab.connect().await.unwrap_err();
    assert_eq!(code(&e), "28000", "{e:?}");
    assert!(db_message(&e).contains("is a superuser"), "{e:?}");
    assert!(lab.gw.log().contains("read-only credential refused"));
    // `config check` cannot know the role's rights; the refusal names the fix.
    let hint = format!("{e:?}");
    assert!(hint.contains("NOSUPERUSER"), "{hint}");
}

// ---- raw frames ---------------------------------------------------------------------------

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&i32::try_from(body.len() + 4).unwrap().to_be_bytes());
    f.extend_from_slice(body);
    f
}

fn cstr(s: &[u8]) -> Vec<u8> {
    let mut v = s.to_vec();
    v.push(0);
    v
}

fn q(sql: &str) -> Vec<u8> {
    frame(b'Q', &cstr(sql.as_bytes()))
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = cstr(name.as_bytes());
    b.extend(cstr(sql.as_bytes()));
    b.extend_from_slice(&0i16.to_be_bytes());
    frame(b'P', &b)
}

fn bind(portal: &str, stmt: &str) -> Vec<u8> {
    let mut b = cstr(portal.as_bytes());
    b.extend(cstr(stmt.as_bytes()));
    b.extend_from_slice(&0i16.to_be_bytes()); // parameter formats
    b.extend_from_slice(&0i16.to_be_bytes()); // parameters
    b.extend_from_slice(&0i16.to_be_bytes()); // result formats
    frame(b'B', &b)
}

fn execute(portal: &str) -> Vec<u8> {
    let mut b = cstr(portal.as_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    frame(b'E', &b)
}

/// Parse, Bind and Execute of one statement through the unnamed statement and portal.
fn unnamed(sql: &str) -> Vec<u8> {
    [parse("", sql), bind("", ""), execute("")].concat()
}

fn sync() -> Vec<u8> {
    frame(b'S', &[])
}

fn terminate() -> Vec<u8> {
    frame(b'X', &[])
}

/// FunctionCall of `oid` with no arguments, text result.
fn function_call(oid: u32) -> Vec<u8> {
    let mut b = oid.to_be_bytes().to_vec();
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    frame(b'F', &b)
}

fn startup() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&0i32.to_be_bytes());
    s.extend_from_slice(&196_608i32.to_be_bytes());
    for (k, v) in [("user", "alice@example.com"), ("database", "prod-db")] {
        s.extend(cstr(k.as_bytes()));
        s.extend(cstr(v.as_bytes()));
    }
    s.push(0);
    let len = i32::try_from(s.len()).unwrap().to_be_bytes();
    s[..4].copy_from_slice(&len);
    s
}

/// A hand-driven client: messages as (tag, body).
struct Raw {
    s: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Log in; `after_password` is sent in the same write as the PasswordMessage.
    async fn login(lab: &Lab, after_password: &[u8]) -> (Self, Vec<(u8, Vec<u8>)>) {
        let mut s = tokio::net::TcpStream::connect(&lab.gw.pg_addr).await.unwrap();
        s.write_all(&startup()).await.unwrap();
        let mut raw = Raw { s, buf: Vec::new() };
        let (tag, _) = raw.next().await.unwrap();
        assert_eq!(tag, b'R');
        let mut pw = frame(b'p', &cstr(token("alice").as_bytes()));
        pw.extend_from_slice(after_password);
        raw.s.write_all(&pw).await.unwrap();
        let hello = raw.until_ready(1).await;
        (raw, hello)
    }

    async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 5 {
                let len =
                    usize::try_from(i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])).unwrap();
                if self.buf.len() > len {
                    let f: Vec<u8> = self.buf.drain(..=len).collect();
                    return Some((f[0], f[5..].to_vec()));
                }
            }
            let mut b = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut b))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&b[..n]);
        }
    }

    /// Messages up to and including the `n`th ReadyForQuery (or the end).
    async fn until_ready(&mut self, n: usize) -> Vec<(u8, Vec<u8>)> {
        let mut got = Vec::new();
        let mut seen = 0;
        while seen < n {
            let Some(m) = self.next().await else { break };
            if m.0 == b'Z' {
                seen += 1;
            }
            got.push(m);
        }
        got
    }

    /// Messages up to and including the first with `tag` (CopyInResponse, say).
    async fn until_tag(&mut self, tag: u8) -> Vec<(u8, Vec<u8>)> {
        let mut got = Vec::new();
        while !got.iter().any(|(t, _)| *t == tag) {
            got.push(
                self.next()
                    .await
                    .unwrap_or_else(|| panic!("no {:?} came", char::from(tag))),
            );
        }
        got
    }

    async fn send(&mut self, parts: &[Vec<u8>]) {
        let all: Vec<u8> = parts.concat();
        self.s.write_all(&all).await.unwrap();
    }
}

/// The tags of a reply, with the SQLSTATE of each error: "E:42501 Z".
fn tags(msgs: &[(u8, Vec<u8>)]) -> String {
    msgs.iter()
        .filter(|(t, _)| !matches!(t, b'N' | b'S'))
        .map(|(t, b)| {
            if *t == b'E' {
                let code = b
                    .split(|c| *c == 0)
                    .find(|f| f.first() == Some(&b'C'))
                    .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
                    .unwrap_or_default();
                format!("E:{code}")
            } else {
                char::from(*t).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn data_rows(msgs: &[(u8, Vec<u8>)]) -> Vec<String> {
    msgs.iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, b)| {
            let len = usize::try_from(i32::from_be_bytes([b[2], b[3], b[4], b[5]])).unwrap_or(0);
            String::from_utf8_lossy(&b[6..6 + len]).into_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_sequences_keep_replies_in_order_and_refusals_server_shaped() {
    let lab = lab("read-only", RO_USER, RO_PASSWORD, "1h");
    let direct = lab.direct().await;
    let before = snapshot(&direct).await;
    let (mut c, _) = Raw::login(&lab, &[]).await;

    // 1. A refused Parse: the server skips to Sync as for its own error.
    c.send(&[parse("", "DELETE FROM t"), bind("", ""), execute(""), sync()])
        .await;
    assert_eq!(tags(&c.until_ready(1).await), "E:42501 Z");

    // 2. A Parse the server rejects, then a simple Query before Sync: PostgreSQL skips the
    //    Query too; the next reply belongs to the next statement.
    c.send(&[parse("", "SELECT * FROM no_such_table"), q("SELECT 'skipped'"), sync()])
        .await;
    assert_eq!(tags(&c.until_ready(1).await), "E:42P01 Z");
    c.send(&[q("SELECT 'second'")]).await;
    let r = c.until_ready(1).await;
    assert_eq!(data_rows(&r), ["second"]);

    // 3. A failed Parse followed by a refused Query before Sync: skipped, no refusal sent.
    c.send(&[parse("", "SELECT * FROM no_such_table"), q("DELETE FROM t"), sync()])
        .await;
    assert_eq!(tags(&c.until_ready(1).await), "E:42P01 Z");

    // 4. Refused then allowed, pipelined in one packet.
    c.send(&[q("DELETE FROM t"), q("SELECT 'after'")]).await;
    let r = c.until_ready(2).await;
    assert_eq!(tags(&r), "E:42501 Z T D C Z");
    assert_eq!(data_rows(&r), ["after"]);

    // 5. Allowed, refused, allowed in one extended batch: rows of the first, the refusal, and
    //    the third skipped by the server (one Sync, one ReadyForQuery).
    c.send(&[
        parse("a", "SELECT 1"),
        bind("", "a"),
        execute(""),
        parse("b", "UPDATE t SET v = 'x'"),
        bind("", "b"),
        execute(""),
        parse("c", "SELECT 3"),
        bind("", "c"),
        execute(""),
        sync(),
    ])
    .await;
    assert_eq!(tags(&c.until_ready(1).await), "1 2 D C E:42501 Z");

    // 6. A refusal inside a transaction aborts it, as the server's own error would.
    c.send(&[
        q("BEGIN"),
        q("INSERT INTO t VALUES (99, 'x')"),
        q("SELECT 1"),
        q("COMMIT"),
    ])
    .await;
    let r = c.until_ready(4).await;
    assert_eq!(tags(&r), "C Z E:42501 Z E:25P02 Z C Z");
    assert!(r.iter().any(|(t, b)| *t == b'C' && b.starts_with(b"ROLLBACK")));

    // 7. Text that is not UTF-8 is refused under read-only (and never forwarded).
    let mut bad = b"SELECT '".to_vec();
    bad.extend_from_slice(&[0xff, 0xfe]);
    bad.extend_from_slice(b"'; DELETE FROM t");
    c.send(&[frame(b'Q', &cstr(&bad))]).await;
    assert_eq!(tags(&c.until_ready(1).await), "E:42501 Z");

    // 8. FunctionCall is refused under read-only, and the session goes on.
    c.send(&[function_call(2026)]).await; // pg_backend_pid
    assert_eq!(tags(&c.until_ready(1).await), "E:42501 Z");

    // 9. Describe of a refused statement, Close, Sync.
    let mut d = vec![b'S'];
    d.extend(cstr(b"r"));
    c.send(&[parse("r", "TRUNCATE t"), frame(b'D', &d), sync()]).await;
    assert_eq!(tags(&c.until_ready(1).await), "E:42501 Z");

    // 10. A named statement used across Syncs keeps its answers in order.
    c.send(&[parse("n", "SELECT id FROM t ORDER BY id"), sync()]).await;
    assert_eq!(tags(&c.until_ready(1).await), "1 Z");
    c.send(&[
        bind("p1", "n"),
        execute("p1"),
        sync(),
        bind("p2", "n"),
        execute("p2"),
        sync(),
    ])
    .await;
    let r = c.until_ready(2).await;
    assert_eq!(tags(&r), "2 D D D C Z 2 D D D C Z");

    // 11. Flush without Sync gets the answers so far; the Sync then closes the batch.
    c.send(&[parse("", "SELECT 5"), bind("", ""), execute(""), frame(b'H', &[])])
        .await;
    let mut got = Vec::new();
    while got.len() < 4 {
        got.push(c.next().await.unwrap());
    }
    assert_eq!(tags(&got), "1 2 D C");
    c.send(&[sync()]).await;
    assert_eq!(tags(&c.until_ready(1).await), "Z");

    // 12. A statement hidden after a comment the old lexer misread (`--` ended by CR).
    c.send(&[q("SELECT 1 --\r; DELETE FROM t")]).await;
    assert_eq!(tags(&c.until_ready(1).await), "E:42501 Z");

    // 13. A Query without its NUL terminator: an error, not a hang; the gateway lives on.
    c.send(&[frame(b'Q', b"SELECT 1")]).await;
    let r = c.until_ready(1).await;
    assert!(tags(&r).starts_with('E'), "{}", tags(&r));

    assert_eq!(snapshot(&direct).await, before, "side effect on the server");
    let other = lab.connect().await.unwrap();
    assert_eq!(other.query_one("SELECT 7", &[]).await.unwrap().get::<_, i32>(0), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_sent_with_terminate_or_before_a_close_are_executed_and_audited() {
    let lab = lab("read-write", RO_USER, RO_PASSWORD, "1h");
    let direct = lab.direct().await;

    // 14. Query and Terminate in one packet.
    let (mut c, _) = Raw::login(&lab, &[]).await;
    c.send(&[q("INSERT INTO t VALUES (100, 'with-terminate')"), terminate()])
        .await;
    drop(c);
    // 15. Query, then the socket closes with no Terminate.
    let (mut c, _) = Raw::login(&lab, &[]).await;
    c.send(&[q("INSERT INTO t VALUES (101, 'before-close')")]).await;
    drop(c);
    // 16. Bytes pipelined right after the PasswordMessage run as the first statement.
    let (mut c, hello) = Raw::login(&lab, &q("INSERT INTO t VALUES (102, 'pipelined')")).await;
    assert!(hello.iter().any(|(t, _)| *t == b'R'));
    let r = c.until_ready(1).await;
    assert_eq!(tags(&r), "C Z", "pipelined statement answered");
    // 17. FunctionCall under read-write is audited with its name and OID.
    c.send(&[function_call(2026)]).await;
    let r = c.until_ready(1).await;
    assert_eq!(tags(&r), "V Z");
    // 18. A Parse the server rejects does not change what the name means to the audit.
    c.send(&[
        parse("s", "DELETE FROM t WHERE id = 102"),
        sync(),
        parse("s", "SELECT 1"),
        sync(),
    ])
    .await;
    assert_eq!(tags(&c.until_ready(2).await), "1 Z E:42P05 Z");
    c.send(&[bind("", "s"), execute(""), sync()]).await;
    assert_eq!(tags(&c.until_ready(1).await), "2 C Z");
    // 19. Passwords never reach the audit log.
    c.send(&[q(
        "BEGIN; CREATE ROLE jg_tmp_role LOGIN PASSWORD 'hunter2-secret'; ROLLBACK",
    )])
    .await;
    c.until_ready(1).await;
    // 20. The operator's redaction patterns: a whole match, and just the `secret` group.
    c.send(&[q(
        "SELECT 'tok_live_abc123' AS t, 1 AS api_key WHERE 'x' <> 'y' OR api_key = 'hunter3-key'",
    )])
    .await;
    c.until_ready(1).await;
    c.send(&[terminate()]).await;

    for (id, sql) in [
        (100, "INSERT INTO t VALUES (100, 'with-terminate')"),
        (101, "INSERT INTO t VALUES (101, 'before-close')"),
    ] {
        let n: i64 = direct
            .query_one("SELECT count(*) FROM t WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{sql} did not run");
        let e = lab
            .audited(sql, Duration::from_secs(3))
            .unwrap_or_else(|| panic!("{sql} not audited"));
        assert_eq!(e["details"]["outcome"], "ok", "{e}");
        assert_eq!(e["details"]["rows"], 1, "{e}");
    }
    let e = lab
        .audited("INSERT INTO t VALUES (102, 'pipelined')", Duration::from_secs(3))
        .expect("the pipelined statement was not audited");
    assert_eq!(e["details"]["outcome"], "ok");
    let del = lab
        .audited("DELETE FROM t WHERE id = 102", Duration::from_secs(3))
        .expect("the DELETE run through a reused name was not audited as itself");
    assert_eq!(del["details"]["rows"], 1, "{del}");
    let f = lab
        .audited("<FunctionCall pg_backend_pid() oid=2026>", Duration::from_secs(3))
        .expect("FunctionCall audited with its name");
    assert_eq!(f["details"]["outcome"], "ok");
    let r = lab
        .audited(
            "SELECT '***' AS t, 1 AS api_key WHERE 'x' <> 'y' OR api_key = '***'",
            Duration::from_secs(3),
        )
        .expect("redacted statement audited");
    assert_eq!(r["details"]["outcome"], "error", "{r}");
    assert!(eventually(Duration::from_secs(3), || {
        lab.statements()
            .iter()
            .any(|e| e["details"]["sql"].as_str().unwrap_or("").contains("PASSWORD '***'"))
    }));
    let audit = std::fs::read_to_string(lab.gw.audit_path()).unwrap();
    assert!(!audit.contains("hunter2-secret"), "password in the audit log");
    assert!(
        !audit.contains("tok_live_abc123") && !audit.contains("hunter3-key"),
        "redaction"
    );
    // The rolled-back role does not exist.
    assert_eq!(
        lab.pg
            .su(
                "postgres",
                "SELECT count(*) FROM pg_roles WHERE rolname = 'jg_tmp_role'"
            )
            .trim(),
        "0"
    );
    // `search` finds the statements too.
    let found = lab
        .gw
        .cli(Some("root"), &["audit", "search", "--kind", "pg.statement", "--json"])
        .ok();
    assert!(
        found.contains("with-terminate") && found.contains("before-close"),
        "{found}"
    );
    lab.gw
        .cli(None, &["audit", "verify", "--file", path_str(&lab.gw.audit_path())])
        .ok();
}

/// COPY FROM STDIN: the server ignores Syncs in copy-in mode and consumes the first other
/// message as the copy's error; a Sync's implicit COMMIT can fail. The audit's reply accounting
/// follows all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_failed_commits_keep_reply_accounting_in_step() {
    let lab = lab("read-write", RO_USER, RO_PASSWORD, "10m");
    let direct = lab.direct().await;
    let (mut c, _) = Raw::login(&lab, &[]).await;
    // 1. Extended COPY with the Sync a driver sends after every Execute, before the data: that
    //    Sync gets no ReadyForQuery; the one after CopyDone does.
    c.send(&[unnamed("COPY t (id, v) FROM STDIN"), sync()]).await;
    assert_eq!(tags(&c.until_tag(b'G').await), "1 2 G");
    c.send(&[frame(b'd', b"200\tcopied\n"), frame(b'c', &[]), sync()]).await;
    assert_eq!(tags(&c.until_ready(1).await), "C Z");
    c.send(&[q("INSERT INTO t VALUES (201, 'after-copy')")]).await;
    assert_eq!(tags(&c.until_ready(1).await), "C Z");
    let e = lab
        .audited("INSERT INTO t VALUES (201, 'after-copy')", Duration::from_secs(3))
        .expect("the statement after the copy is audited at its own answer");
    assert_eq!(e["details"]["outcome"], "ok", "{e}");
    let e = lab
        .audited("COPY t (id, v) FROM STDIN", Duration::from_secs(3))
        .unwrap();
    assert_eq!(
        (e["details"]["outcome"].as_str(), e["details"]["rows"].as_u64()),
        (Some("ok"), Some(1)),
        "{e}"
    );

    // 2. A Sync whose implicit COMMIT fails (a deferred foreign key): the batch is rolled back
    //    and the audit says so after the batch's statement.
    direct
        .batch_execute("CREATE TABLE dc (id int PRIMARY KEY, ref int REFERENCES dc (id) DEFERRABLE INITIALLY DEFERRED)")
        .await
        .unwrap();
    c.send(&[unnamed("INSERT INTO dc VALUES (1, 99)"), sync()]).await;
    assert_eq!(tags(&c.until_ready(1).await), "1 2 C E:23503 Z");
    let e = lab
        .audited("<Sync: implicit COMMIT of the batch>", Duration::from_secs(3))
        .expect("the failed implicit commit is audited");
    assert_eq!(
        (e["details"]["outcome"].as_str(), e["details"]["sqlstate"].as_str()),
        (Some("error"), Some("23503")),
        "{e}"
    );
    let n: i64 = direct.query_one("SELECT count(*) FROM dc", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);

    // 3. Simple COPY, then a Query before CopyDone: PostgreSQL would end the connection, or
    //    run the Query if the copy had just failed on its own; the gateway cannot know which,
    //    so it never forwards it and ends the session (FATAL 08P01), and audits it refused.
    c.send(&[q("COPY t (id, v) FROM STDIN")]).await;
    c.until_tag(b'G').await;
    c.send(&[q("INSERT INTO t VALUES (202, 'eaten-by-copy')")]).await;
    assert_eq!(tags(&c.until_ready(1).await), "E:08P01");
    assert!(c.next().await.is_none(), "the session is closed");

    // 3b. The red team's case: a bad row ends the copy on the server, and a write follows at
    //     once. The write never reaches the server; nothing is audited as run that did not run.
    let (mut c, _) = Raw::login(&lab, &[]).await;
    c.send(&[q("COPY t (id, v) FROM STDIN")]).await;
    c.until_tag(b'G').await;
    c.send(&[frame(b'd', b"oops\n"), q("INSERT INTO t VALUES (206, 'after-bad-row')")])
        .await;
    let r = c.until_ready(2).await;
    assert!(tags(&r).ends_with("E:08P01"), "{}", tags(&r));

    // 3c. The same client done right: CopyFail (or CopyDone) first, then the write runs and is
    //     audited as itself.
    let (mut c, _) = Raw::login(&lab, &[]).await;
    c.send(&[q("COPY t (id, v) FROM STDIN")]).await;
    c.until_tag(b'G').await;
    c.send(&[
        frame(b'd', b"oops\n"),
        frame(b'f', b"giving up\0"),
        q("INSERT INTO t VALUES (207, 'after-copy-fail')"),
    ])
    .await;
    let r = tags(&c.until_ready(2).await);
    assert!(r.starts_with("E:") && r.ends_with(" Z C Z"), "{r}");

    // 3d. Stray CopyDone/CopyFail outside any copy are ignored by the server and cost the
    //     gateway nothing (they used to grow its queue without bound).
    let mut stray = Vec::new();
    for _ in 0..10_000 {
        stray.push(frame(b'c', &[]));
    }
    stray.push(q("SELECT 1"));
    c.send(&stray).await;
    assert_eq!(tags(&c.until_ready(1).await), "T D C Z");

    // 4. The same with everything in one write (the gateway sees the Queries before the server
    //    has said CopyInResponse): the first is eaten, the second never runs.
    let (mut c, _) = Raw::login(&lab, &[]).await;
    c.send(&[
        q("COPY t (id, v) FROM STDIN"),
        q("INSERT INTO t VALUES (204, 'eaten-too')"),
        q("INSERT INTO t VALUES (205, 'after-pipelined-abort')"),
    ])
    .await;
    assert_eq!(tags(&c.until_ready(1).await), "G E:08P01 E:08P01");

    for (id, n) in [(200, 1), (201, 1), (202, 0), (204, 0), (205, 0), (206, 0), (207, 1)] {
        let got: i64 = direct
            .query_one("SELECT count(*) FROM t WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        assert_eq!(got, n, "row {id}");
    }
    for (sql, outcome) in [
        ("INSERT INTO t VALUES (202, 'eaten-by-copy')", "refused"),
        ("INSERT INTO t VALUES (206, 'after-bad-row')", "refused"),
        ("INSERT INTO t VALUES (207, 'after-copy-fail')", "ok"),
        ("INSERT INTO t VALUES (204, 'eaten-too')", "skipped"),
        ("INSERT INTO t VALUES (205, 'after-pipelined-abort')", "interrupted"),
    ] {
        let e = lab
            .audited(sql, Duration::from_secs(3))
            .unwrap_or_else(|| panic!("{sql} not audited"));
        assert_eq!(e["details"]["outcome"], outcome, "{e}");
    }
}

/// A raw client with a tiny receive buffer that asks for a large result and never reads it.
async fn stalled_client(lab: &Lab) -> Raw {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let s = sock.connect(lab.gw.pg_addr.parse().unwrap()).await.unwrap();
    let mut raw = Raw { s, buf: Vec::new() };
    raw.s.write_all(&startup()).await.unwrap();
    let (tag, _) = raw.next().await.unwrap();
    assert_eq!(tag, b'R');
    raw.s
        .write_all(&frame(b'p', &cstr(token("alice").as_bytes())))
        .await
        .unwrap();
    raw.until_ready(1).await;
    raw.send(&[q("SELECT repeat('x', 1000) FROM generate_series(1, 2000000)")])
        .await;
    // Let both socket buffers fill: the gateway's write to this client is now blocked.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    raw
}

/// After a kill: the socket is closed within the bound, the backend is gone, and a write the
/// client makes afterwards never executes.
async fn assert_killed(lab: &Lab, mut raw: Raw, since: Instant, direct: &tokio_postgres::Client) {
    // What the client sends after the kill must not run.
    let _ = raw.s.write_all(&q("INSERT INTO t VALUES (200, 'after-kill')")).await;
    let mut sink = vec![0u8; 1 << 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match raw.s.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stalled client's socket was not closed");
    assert!(
        eventually(Duration::from_secs(3), || lab.backends() == 0),
        "upstream backend still there {:?} after the kill",
        since.elapsed()
    );
    let n: i64 = direct
        .query_one("SELECT count(*) FROM t WHERE id = 200", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a statement sent after the kill ran");
    assert!(
        lab.gw
            .cli(Some("bob"), &["sessions", "--json"])
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_killed_on_revoke() {
    let lab = lab("read-write", RO_USER, RO_PASSWORD, "1h");
    let direct = lab.direct().await;
    let raw = stalled_client(&lab).await;
    let t = Instant::now();
    lab.gw
        .cli(
            Some("bob"),
            &["revoke", &lab.grant_id.to_string(), "--reason", "stalled"],
        )
        .ok();
    assert_killed(&lab, raw, t, &direct).await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_killed_on_expiry() {
    let lab = lab("read-write", RO_USER, RO_PASSWORD, "4s");
    let direct = lab.direct().await;
    let t = Instant::now();
    let raw = stalled_client(&lab).await;
    // Expiry is about 4 s after the grant; wait for it, then check.
    while t.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_killed(&lab, raw, t, &direct).await;
    let ended = lab
        .gw
        .audit_events()
        .into_iter()
        .find(|e| e["kind"] == "session.ended")
        .unwrap();
    assert_eq!(ended["details"]["outcome"], "expired");
}

/// A function the operator left behind that flips the session default.
const FLIP: &str = "CREATE OR REPLACE FUNCTION public.flip() RETURNS text LANGUAGE sql AS \
     $$ SELECT set_config('default_transaction_read_only', 'off', false) $$;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_leaves_read_only_mode_upstream_is_ended() {
    let lab = lab("read-only", RO_USER, RO_PASSWORD, "1h");
    // A function the operator left behind that flips the session default: the parser cannot see
    // inside it, PostgreSQL's ParameterStatus tells the gateway.
    lab.pg.su(
        &lab.db,
        &format!("{FLIP} GRANT EXECUTE ON FUNCTION public.flip() TO ro_dml"),
    );
    let c = lab.connect().await.unwrap();
    let e = c.simple_query("SELECT public.flip()").await.unwrap_err();
    assert!(format!("{e:?}").contains("default_transaction_read_only"), "{e:?}");
    assert!(c.simple_query("INSERT INTO t VALUES (300, 'x')").await.is_err());
    assert!(eventually(Duration::from_secs(3), || lab.backends() == 0));
    let direct = lab.direct().await;
    let n: i64 = direct
        .query_one("SELECT count(*) FROM t WHERE id = 300", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let ended = lab
        .gw
        .audit_events()
        .into_iter()
        .find(|e| e["kind"] == "session.ended")
        .unwrap();
    assert_eq!(ended["details"]["outcome"], "breach", "{ended}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_write_behind_a_flip_never_runs() {
    let lab = lab("read-only", RO_USER, RO_PASSWORD, "1h");
    lab.pg.su(
        &lab.db,
        &format!(
            "{FLIP} CREATE OR REPLACE FUNCTION public.wr() RETURNS int LANGUAGE plpgsql AS \
         $$ BEGIN INSERT INTO public.t VALUES (400, 'pipelined-write'); RETURN 1; END $$; \
         GRANT EXECUTE ON FUNCTION public.flip(), public.wr() TO ro_dml"
        ),
    );
    let direct = lab.direct().await;
    // Simple protocol: the flip, then the write in the same packet.
    let (mut c, _) = Raw::login(&lab, &[]).await;
    c.send(&[q("SELECT public.flip()"), q("SELECT public.wr()")]).await;
    let r = c.until_ready(2).await;
    assert!(
        r.iter()
            .any(|(t, b)| *t == b'E' && String::from_utf8_lossy(b).contains("default_transaction_read_only")),
        "{}",
        tags(&r)
    );
    // One message: flip, COMMIT, write.
    let (mut c, _) = Raw::login(&lab, &[]).await;
    c.send(&[q("SELECT public.flip(); COMMIT; SELECT public.wr()")]).await;
    assert_eq!(tags(&c.until_ready(1).await), "E:42501 Z");
    // Extended protocol: flip, COMMIT and the write in one batch.
    let (mut c, _) = Raw::login(&lab, &[]).await;
    c.send(&[
        unnamed("SELECT public.flip()"),
        unnamed("COMMIT"),
        unnamed("SELECT public.wr()"),
        sync(),
        q("SELECT public.wr()"),
    ])
    .await;
    let r = c.until_ready(2).await;
    let n: i64 = direct
        .query_one("SELECT count(*) FROM t WHERE id = 400", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a write behind a flip ran: {}", tags(&r));
    let count400 = || async {
        let n: i64 = direct
            .query_one("SELECT count(*) FROM t WHERE id = 400", &[])
            .await
            .unwrap()
            .get(0);
        n
    };
    // The refused Execute's stand-in cannot be a portal the client made itself.
    let (mut c, _) = Raw::login(&lab, &[]).await;
    c.send(&[
        unnamed("SELECT public.flip()"),
        unnamed("COMMIT"),
        parse("w", "SELECT public.wr()"),
        bind("\u{1}jitgate refused", "w"),
        execute("x"),
        sync(),
    ])
    .await;
    let r = c.until_ready(1).await;
    assert_eq!(
        count400().await,
        0,
        "a write behind a flip ran through a look-alike portal: {}",
        tags(&r)
    );
    // A name the server refused to redefine keeps its old meaning to the gateway: "c" is COMMIT.
    let (mut c, _) = Raw::login(&lab, &[]).await;
    c.send(&[parse("c", "COMMIT"), sync(), parse("c", "SELECT 1"), sync()])
        .await;
    assert_eq!(tags(&c.until_ready(2).await), "1 Z E:42P05 Z");
    c.send(&[
        unnamed("SELECT public.flip()"),
        bind("p", "c"),
        execute("p"),
        unnamed("SELECT public.wr()"),
        sync(),
    ])
    .await;
    let r = c.until_ready(1).await;
    assert_eq!(
        count400().await,
        0,
        "a write behind a redefined COMMIT ran: {}",
        tags(&r)
    );
    // A Parse the server rejects, a Query it skips, then Terminate: no hang.
    let (mut c, _) = Raw::login(&lab, &[]).await;
    c.send(&[parse("", "SELEC"), q("SELECT 1"), terminate()]).await;
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), c.s.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "the session hung after a skipped Query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_resources_databases_can_be_named() {
    let lab = lab("read-only", RO_USER, RO_PASSWORD, "1h");
    let (host, port) = lab.gw.pg_host_port();
    let s = format!(
        "host={host} port={port} user=alice@example.com password={} dbname=prod-db/postgres sslmode=disable",
        token("alice")
    );
    let Err(e) = tokio_postgres::connect(&s, NoTls).await else {
        panic!("another database was reachable")
    };
    assert_eq!(code(&e), "3D000", "{e:?}");
    assert!(db_message(&e).contains("not offered by resource prod-db"), "{e:?}");
    // Its own database by name is fine.
    let s = format!(
        "host={host} port={port} user=alice@example.com password={} dbname=prod-db/{} sslmode=disable",
        token("alice"),
        lab.db
    );
    let (c, conn) = tokio_postgres::connect(&s, NoTls).await.unwrap();
    tokio::spawn(conn);
    assert_eq!(c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}

/// psycopg 3 with libpq 17+: `cancel_safe()` is the encrypted cancel (a TLS connection carrying
/// the CancelRequest), which must end with a clean TLS close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_cancel_safe_over_tls_cancels_the_query() {
    let lab = lab("read-only", RO_USER, RO_PASSWORD, "1h");
    let (host, port) = lab.gw.pg_host_port();
    let script = format!(
        r#"
import threading, time, psycopg
assert psycopg.pq.version() >= 170000, psycopg.pq.version()
conn = psycopg.connect("host={host} port={port} user=alice@example.com password={tok} dbname=prod-db sslmode=require", autocommit=True)
def later():
    time.sleep(0.7)
    conn.cancel_safe(timeout=5)
threading.Thread(target=later).start()
t = time.time()
try:
    conn.execute("SELECT pg_sleep(20)")
    print("not cancelled")
except psycopg.errors.QueryCanceled:
    print("cancelled after %.1f s" % (time.time() - t))
print(conn.execute("SELECT 41 + 1").fetchone()[0])
"#,
        tok = token("alice")
    );
    let out = tokio::task::spawn_blocking(move || Command::new("python3").arg("-c").arg(script).output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("cancelled after") && stdout.contains("42"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
