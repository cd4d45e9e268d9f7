//! End-to-end tests of the Postgres front end: the real `jitgate serve`, a real PostgreSQL
//! (scripts/test-pg), and real clients — psql, pgbench and tokio-postgres.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::pg::{Pg, cluster, code, connect, db_message};
use support::*;
use tokio_postgres::NoTls;

/// A gateway in front of a fresh database. `plaintext`: allow non-TLS clients (tokio-postgres
/// here runs without TLS; psql always uses TLS).
fn setup(plaintext: bool, extra: &str) -> (Gateway, Pg, String) {
    setup_with(plaintext, "", extra)
}

/// Like [`setup`], with extra lines in the resource table (`res_extra`).
fn setup_with(plaintext: bool, res_extra: &str, extra: &str) -> (Gateway, Pg, String) {
    let pg = cluster();
    let db = pg.fresh_db();
    let body = format!(
        r#"[postgres]
allow_plaintext = {plaintext}
startup_timeout = "2s"

{ids}
[[resources]]
name = "prod-db"
kind = "postgres"
address = "127.0.0.1:{port}"
database = "{db}"
credentials.read-only = {{ user = "app_ro", password_file = "ro.pw" }}
credentials.read-write = {{ user = "app_rw", password_file = "rw.pw" }}
{res_extra}

[[policies]]
name = "production"
resources = ["prod-*"]
requesters = ["dev"]
approvers = ["dba"]
{extra}
"#,
        ids = identities(),
        port = pg.port
    );
    let gw = Gateway::start_pg(&body);
    std::fs::write(gw.dir.path().join("ro.pw"), "ro-secret\n").unwrap();
    std::fs::write(gw.dir.path().join("rw.pw"), "rw-secret\n").unwrap();
    (gw, pg, db)
}

/// alice gets a grant of `access` for `dur` (bob approves). Returns the grant id.
fn grant(gw: &Gateway, access: &str, dur: &str) -> i64 {
    gw.granted(&["prod-db", "--access", access, "--for", dur, "--reason", "test"])["grant_id"]
        .as_i64()
        .unwrap()
}

fn psql(gw: &Gateway, user: &str, args: &[&str]) -> std::process::Output {
    let (h, p) = gw.pg_host_port();
    let conn = format!("host={h} port={p} user={user}@example.com dbname=prod-db sslmode=require");
    Command::new("psql")
        .arg("-X")
        .arg(conn)
        .args(args)
        .env("PGPASSWORD", token(user))
        .output()
        .unwrap()
}

fn out(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "psql failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn refused(conn: &str) -> tokio_postgres::Error {
    match tokio_postgres::connect(conn, NoTls).await {
        Ok(_) => panic!("connection unexpectedly accepted"),
        Err(e) => e,
    }
}

/// Connect as `user` and forward the connection's asynchronous messages (notices,
/// notifications) to a channel.
async fn connect_with_messages(
    gw: &Gateway,
    user: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::AsyncMessage>,
) {
    let (h, p) = gw.pg_host_port();
    let conn = format!(
        "host={h} port={p} user={user}@example.com password={} dbname=prod-db sslmode=disable",
        token(user)
    );
    let (client, mut connection) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            let _ = tx.send(m);
        }
    });
    (client, rx)
}

#[test]
fn psql_queries_copy_describe_and_multi_statements_match_direct() {
    let (gw, pg, db) = setup(false, "");
    grant(&gw, "read-write", "1h");
    let q = "SELECT id, name, balance FROM accounts WHERE id % 7 = 0 ORDER BY id";
    let via = out(&psql(&gw, "alice", &["-A", "-t", "-c", q]));
    let direct = pg.psql_as("app_rw", "rw-secret", &db, q);
    assert_eq!(via, direct);
    assert_eq!(via.lines().count(), 14);

    let multi = out(&psql(
        &gw,
        "alice",
        &["-A", "-t", "-c", "SELECT 1; SELECT 2; SELECT count(*) FROM accounts"],
    ));
    assert_eq!(multi, "1\n2\n100\n");

    let d = out(&psql(&gw, "alice", &["-c", "\\d accounts"]));
    assert!(d.contains("balance") && d.contains("accounts_pkey"), "{d}");

    // \copy out, then back in into a new table, through the gateway.
    let file = gw.dir.path().join("accounts.csv");
    out(&psql(
        &gw,
        "alice",
        &[
            "-c",
            &format!("\\copy accounts TO '{}' WITH (FORMAT csv)", file.display()),
        ],
    ));
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 100);
    out(&psql(&gw, "alice", &["-c", "CREATE TABLE copy_target (LIKE accounts)"]));
    let o = out(&psql(
        &gw,
        "alice",
        &[
            "-c",
            &format!("\\copy copy_target FROM '{}' WITH (FORMAT csv)", file.display()),
        ],
    ));
    assert!(o.contains("COPY 100"), "{o}");
    assert_eq!(
        pg.psql_as("app_rw", "rw-secret", &db, "SELECT sum(balance) FROM copy_target")
            .trim(),
        "50500"
    );

    // Repeated queries on one connection (\watch-style).
    let w = out(&psql(
        &gw,
        "alice",
        &["-A", "-t", "-c", "SELECT 42", "-c", "SELECT 42", "-c", "SELECT 42"],
    ));
    assert_eq!(w, "42\n42\n42\n");
    let tls = out(&psql(&gw, "alice", &["-c", "\\conninfo"]));
    assert!(tls.contains("SSL connection (protocol: TLSv1.3"), "{tls}");
}

#[test]
fn pgbench_runs_clean_in_simple_extended_and_prepared_modes() {
    let (gw, pg, db) = setup(false, "");
    let init = Command::new("pgbench")
        .args([
            "-q",
            "-i",
            "-s",
            "1",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "app_rw",
            &db,
        ])
        .env("PGPASSWORD", "rw-secret")
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    grant(&gw, "read-write", "1h");
    let (h, p) = gw.pg_host_port();
    for mode in ["simple", "extended", "prepared"] {
        for script in [&["-S"][..], &["-b", "tpcb-like"][..]] {
            let o = Command::new("pgbench")
                .args([
                    "-n",
                    "-M",
                    mode,
                    "-c",
                    "4",
                    "-j",
                    "2",
                    "-T",
                    "2",
                    "-h",
                    &h,
                    "-p",
                    &p.to_string(),
                    "-U",
                    "alice@example.com",
                ])
                .args(script)
                .arg("prod-db")
                .env("PGPASSWORD", token("alice"))
                .env("PGSSLMODE", "require")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "pgbench -M {mode} {script:?}: {text}");
            assert!(text.contains("number of failed transactions: 0"), "{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_prepared_transactions_copy_notify_and_cancel() {
    let (gw, _pg, _db) = setup(true, "");
    grant(&gw, "read-write", "1h");
    let c = connect(&gw, "alice").await.unwrap();

    // Prepared statements with parameters.
    let st = c.prepare("SELECT name FROM accounts WHERE id = $1").await.unwrap();
    for id in [1, 50, 100] {
        let row = c.query_one(&st, &[&id]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), format!("user{id}"));
    }
    // Transactions: rollback leaves no trace, commit does.
    let mut c = c;
    let tx = c.transaction().await.unwrap();
    tx.execute("UPDATE accounts SET balance = 0 WHERE id = 1", &[])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let tx = c.transaction().await.unwrap();
    tx.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 2", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let r = c
        .query_one(
            "SELECT (SELECT balance FROM accounts WHERE id = 1), (SELECT balance FROM accounts WHERE id = 2)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((r.get::<_, i32>(0), r.get::<_, i32>(1)), (10, 21));

    // COPY in and out.
    c.batch_execute("CREATE TABLE t_copy (a int, b text)").await.unwrap();
    let sink = c.copy_in("COPY t_copy FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..5000 {
        data.push_str(&format!("{i}\trow {i}\n"));
    }
    sink.send(bytes::Bytes::from(data.clone())).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 5000);
    let stream = c.copy_out("COPY t_copy TO STDOUT").await.unwrap();
    futures_util::pin_mut!(stream);
    let mut got = Vec::new();
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8(got).unwrap(), data);

    // LISTEN/NOTIFY between two gateway sessions.
    let (listener, mut rx_n) = connect_with_messages(&gw, "alice").await;
    listener.batch_execute("LISTEN jobs").await.unwrap();
    c.batch_execute("NOTIFY jobs, 'hello'").await.unwrap();
    let n = loop {
        match tokio::time::timeout(Duration::from_secs(3), rx_n.recv())
            .await
            .unwrap()
            .unwrap()
        {
            tokio_postgres::AsyncMessage::Notification(n) => break (n.channel().to_string(), n.payload().to_string()),
            _ => continue,
        }
    };
    assert_eq!(n, ("jobs".to_string(), "hello".to_string()));

    // Rows larger than the relay's buffer stream through intact, and the next message is fine.
    let big = c
        .query_one("SELECT repeat('ab', 1500000) || 'end', 42", &[])
        .await
        .unwrap();
    let text: String = big.get(0);
    assert_eq!(text.len(), 3_000_003);
    assert!(text.starts_with("abab") && text.ends_with("abend"));
    assert_eq!(big.get::<_, i32>(1), 42);
    let rows = c
        .query("SELECT repeat('z', 400000) FROM generate_series(1, 5)", &[])
        .await
        .unwrap();
    assert!(rows.iter().all(|r| r.get::<_, String>(0).len() == 400_000) && rows.len() == 5);

    // Cancel across the gateway: the gateway's own BackendKeyData maps to the upstream's.
    let token = c.cancel_token();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(NoTls).await
    });
    let e = c.simple_query("SELECT pg_sleep(30)").await.unwrap_err();
    assert_eq!(code(&e), "57014", "{e}");
    // The cancel went out at 300 ms; the query must end within a second of it.
    assert!(
        started.elapsed() < Duration::from_millis(1300),
        "cancel took {:?}",
        started.elapsed()
    );
    canceller.await.unwrap().unwrap();
    // The session is still usable.
    assert_eq!(c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_the_right_sqlstate_and_a_hint() {
    let (gw, _pg, _db) = setup(true, "");
    // No grant: 28000 with the request command.
    let e = connect(&gw, "alice").await.unwrap_err();
    assert_eq!(code(&e), "28000");
    assert!(db_message(&e).contains("jitgate request prod-db"), "{e:?}");
    // Wrong token: 28P01.
    let (h, p) = gw.pg_host_port();
    let bad = format!("host={h} port={p} user=alice@example.com password=forged dbname=prod-db sslmode=disable");
    let e = refused(&bad).await;
    assert_eq!(code(&e), "28P01");
    // Another identity's token.
    let other = format!(
        "host={h} port={p} user=alice@example.com password={} dbname=prod-db sslmode=disable",
        token("bob")
    );
    assert_eq!(code(&refused(&other).await), "28P01");
    // Unknown resource.
    let unknown = format!(
        "host={h} port={p} user=alice@example.com password={} dbname=nope sslmode=disable",
        token("alice")
    );
    assert_eq!(code(&refused(&unknown).await), "3D000");
    let (_, metrics) = gw.http_get("/metrics", None);
    assert!(
        metrics.contains("jitgate_auth_failures_total{protocol=\"postgres\",reason=\"bad_token\"} 2"),
        "{metrics}"
    );
    // Counted once, under postgres: a failed psql login is not an HTTP failure too.
    assert!(
        metrics.contains("jitgate_auth_failures_total{protocol=\"http\",reason=\"invalid_token\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("jitgate_auth_failures_total{protocol=\"postgres\",reason=\"no_grant\"} 1"),
        "{metrics}"
    );
}

#[test]
fn plaintext_clients_are_told_to_use_tls_by_default() {
    let (gw, _pg, _db) = setup(false, "");
    let (h, p) = gw.pg_host_port();
    let o = Command::new("psql")
        .arg(format!(
            "host={h} port={p} user=alice@example.com dbname=prod-db sslmode=disable"
        ))
        .args(["-c", "SELECT 1"])
        .env("PGPASSWORD", token("alice"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("jitgate requires TLS")
            && err.contains("sslmode=verify-full")
            && err.contains("jitgate pg-service"),
        "{err}"
    );
    // And a no-grant refusal over TLS names the request command.
    let o = psql(&gw, "alice", &["-c", "SELECT 1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no active access grant for alice@example.com on prod-db")
            && err.contains("jitgate request prod-db"),
        "{err}"
    );
}

fn backends(pg: &Pg, db: &str) -> usize {
    pg.su("postgres", &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()")).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_kills_a_running_query_and_the_upstream_backend() {
    let (gw, pg, db) = setup(true, "");
    grant(&gw, "read-only", "2s");
    let granted = Instant::now();
    let c = connect(&gw, "alice").await.unwrap();
    let e = c.simple_query("SELECT pg_sleep(10)").await.unwrap_err();
    let took = granted.elapsed();
    assert!(took < Duration::from_secs(4), "killed after {took:?}");
    assert!(took >= Duration::from_millis(1500), "killed too early: {took:?}");
    assert_eq!(code(&e), "57P01", "{e:?}");
    assert!(db_message(&e).contains("access grant for prod-db expired at"), "{e:?}");
    // The upstream backend is gone, not left sleeping.
    assert!(
        eventually(Duration::from_secs(2), || backends(&pg, &db) == 0),
        "backend still running"
    );
    // A new connection is refused.
    assert_eq!(code(&connect(&gw, "alice").await.unwrap_err()), "28000");
    let ended = gw
        .audit_events()
        .into_iter()
        .find(|e| e["kind"] == "session.ended")
        .unwrap();
    assert_eq!(ended["details"]["outcome"], "expired");
    let (_, m) = gw.http_get("/metrics", None);
    assert!(m.contains("jitgate_sessions_killed_total{reason=\"expired\"} 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_kills_the_session_at_once() {
    let (gw, pg, db) = setup(true, "");
    let gid = grant(&gw, "read-only", "1h");
    let c = connect(&gw, "alice").await.unwrap();
    let sessions = gw.cli(Some("bob"), &["sessions", "--json"]).json();
    assert_eq!(sessions.as_array().unwrap().len(), 1, "{sessions}");
    let q = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(10)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    gw.cli(
        Some("bob"),
        &["revoke", &gid.to_string(), "--reason", "incident closed"],
    )
    .ok();
    let e = q.await.unwrap().unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(code(&e), "57P01");
    assert!(db_message(&e).contains("revoked by bob@example.com"), "{e:?}");
    assert!(eventually(Duration::from_secs(2), || backends(&pg, &db) == 0));
    assert!(
        gw.cli(Some("bob"), &["sessions", "--json"])
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_grants_refuse_every_bypass_and_the_session_stays_usable() {
    let (gw, _pg, _db) = setup(true, "");
    grant(&gw, "read-only", "1h");
    let c = connect(&gw, "alice").await.unwrap();
    let refused = [
        "INSERT INTO accounts VALUES (1000, 'x', 1)",
        "UPDATE accounts SET balance = 0",
        "DELETE FROM accounts",
        "SELECT 1; DELETE FROM accounts",
        "WITH d AS (DELETE FROM accounts RETURNING *) SELECT count(*) FROM d",
        "EXPLAIN ANALYZE DELETE FROM accounts",
        "SET ROLE app_rw",
        "SET SESSION AUTHORIZATION app_rw",
        "RESET ROLE",
        "COPY accounts FROM STDIN",
        "PREPARE p AS DELETE FROM accounts",
        "CALL some_procedure()",
        "DO $$ BEGIN DELETE FROM accounts; END $$",
        "CREATE TABLE evil (a int)",
        "DROP TABLE accounts",
        "TRUNCATE accounts",
        "SELECT * INTO copy_of FROM accounts",
        "SELECT * FROM accounts FOR UPDATE",
        "SELECT nextval('s')",
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "SET default_transaction_read_only = off",
        "BEGIN READ WRITE",
        "GRANT SELECT ON accounts TO PUBLIC",
        "this is not sql",
    ];
    for sql in refused {
        let e = c.simple_query(sql).await.unwrap_err();
        assert_eq!(code(&e), "42501", "{sql}: {e:?}");
        // nextval is PostgreSQL's to refuse (the read-only transaction and the role's rights);
        // everything else the gateway refuses before the server sees it.
        if !sql.contains("nextval") {
            assert!(db_message(&e).contains("read-only access to prod-db"), "{sql}: {e:?}");
        }
        // Still usable after each refusal.
        assert_eq!(
            c.query_one("SELECT count(*) FROM accounts", &[])
                .await
                .unwrap()
                .get::<_, i64>(0),
            100,
            "after {sql}"
        );
    }
    // Extended protocol: the refusal arrives in order and recovery to Sync is correct.
    let e = c.prepare("DELETE FROM accounts WHERE id = $1").await.unwrap_err();
    assert_eq!(code(&e), "42501");
    let e = c
        .execute("UPDATE accounts SET balance = $1", &[&1i32])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501");
    assert_eq!(
        c.query_one("SELECT $1::int + 1", &[&41i32])
            .await
            .unwrap()
            .get::<_, i32>(0),
        42
    );
    // Inside a transaction: a refusal is an error like the server's own, so the transaction is
    // aborted (as PostgreSQL's "cannot execute ... in a read-only transaction" would) until
    // ROLLBACK, and nothing reached the server.
    c.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        code(&c.simple_query("DELETE FROM accounts").await.unwrap_err()),
        "42501"
    );
    assert_eq!(code(&c.simple_query("SELECT 1").await.unwrap_err()), "25P02");
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        c.query_one("SELECT count(*) FROM accounts", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        100
    );
    // Allowed: reads, transaction control, session settings, cursors, EXPLAIN, SHOW, LISTEN.
    for sql in [
        "SELECT * FROM accounts WHERE id < 5",
        "WITH x AS (SELECT id FROM accounts) SELECT count(*) FROM x",
        "EXPLAIN SELECT * FROM accounts",
        "SHOW search_path",
        "SET statement_timeout = '5s'",
        "BEGIN; DECLARE cur CURSOR FOR SELECT id FROM accounts; FETCH 2 FROM cur; CLOSE cur; COMMIT",
        "LISTEN anything",
    ] {
        c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    let copy = c
        .copy_out("COPY (SELECT id FROM accounts WHERE id <= 3) TO STDOUT")
        .await
        .unwrap();
    futures_util::pin_mut!(copy);
    let mut got = Vec::new();
    while let Some(chunk) = copy.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, b"1\n2\n3\n");
    let (_, m) = gw.http_get("/metrics", None);
    // 23 simple-protocol refusals by the gateway (nextval is the server's), 2 extended, 1 inside
    // a transaction.
    assert!(m.contains("jitgate_statements_denied_total 26"), "{m}");
}

#[test]
fn every_statement_is_audited_with_identity_grant_and_rows() {
    let (gw, _pg, _db) = setup(false, "");
    let gid = grant(&gw, "read-only", "1h");
    let o = psql(
        &gw,
        "alice",
        &[
            "-c",
            "SELECT * FROM accounts WHERE id <= 3",
            "-c",
            "SELECT count(*) FROM accounts",
            "-c",
            "DELETE FROM accounts",
        ],
    );
    // psql exits 1 because its last command was refused; the first two ran.
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("read-only access to prod-db"));
    // The session's end is written after its statements; wait for it.
    assert!(eventually(Duration::from_secs(3), || gw
        .audit_kinds()
        .contains(&"session.ended".to_string())));
    let evs: Vec<serde_json::Value> = gw
        .audit_events()
        .into_iter()
        .filter(|e| e["kind"] == "pg.statement")
        .collect();
    let by_sql = |s: &str| {
        evs.iter()
            .find(|e| e["details"]["sql"] == s)
            .unwrap_or_else(|| panic!("no event for {s}: {evs:?}"))
            .clone()
    };
    let e = by_sql("SELECT * FROM accounts WHERE id <= 3");
    assert_eq!(e["actor"], "alice@example.com");
    assert_eq!(e["grant_id"], gid);
    assert_eq!(e["details"]["rows"], 3);
    assert_eq!(e["details"]["class"], "read");
    assert_eq!(e["details"]["outcome"], "ok");
    assert!(e["session_id"].as_str().unwrap().starts_with("s-"));
    let d = by_sql("DELETE FROM accounts");
    assert_eq!(d["details"]["outcome"], "refused");
    assert_eq!(d["details"]["sqlstate"], "42501");
    let kinds = gw.audit_kinds();
    assert!(kinds.contains(&"session.started".to_string()) && kinds.contains(&"session.ended".to_string()));
    // Statements of a session, in order, through the API.
    let sid = e["session_id"].as_str().unwrap().to_string();
    let listed = gw
        .cli(
            Some("root"),
            &["audit", "search", "--session", &sid, "--kind", "pg.statement", "--json"],
        )
        .ok();
    assert_eq!(listed.lines().count(), 3, "{listed}");
    // Search by content through the CLI and the API: from a word start, ASCII case ignored.
    let found = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["audit", "search", "--json"];
        a.extend_from_slice(args);
        gw.cli(Some("root"), &a)
            .ok()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["details"]["sql"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(found(&["--text", "delete from acc"]), ["DELETE FROM accounts"]);
    assert_eq!(found(&["--text", "FROM accounts"]).len(), 3);
    assert_eq!(
        found(&["--text", "count(*)", "--user", "alice@example.com"]),
        ["SELECT count(*) FROM accounts"]
    );
    assert!(
        found(&["--text", "ccounts"]).is_empty(),
        "not from the middle of a word"
    );
    assert!(found(&["--command", "DELETE"]).is_empty(), "--command is SSH only");
    let table = gw.cli(Some("root"), &["audit", "search", "--text", "DELETE"]).ok();
    assert!(
        table.contains("refused") && table.contains("DELETE FROM accounts"),
        "{table}"
    );
    let bad = gw.cli(Some("root"), &["audit", "search", "--text", ";;"]);
    assert_ne!(bad.code(), 0);
    assert!(
        bad.stderr().contains("no word of ASCII letters or digits"),
        "{}",
        bad.stderr()
    );
    gw.cli(None, &["audit", "verify", "--file", path_str(&gw.audit_path())])
        .ok();
}

#[test]
fn statement_audit_can_be_turned_off_but_refusals_are_still_audited() {
    let (gw, _pg, _db) = setup(false, "[audit]\nstatements = false\n");
    grant(&gw, "read-only", "1h");
    let o = psql(
        &gw,
        "alice",
        &["-c", "SELECT count(*) FROM accounts", "-c", "DELETE FROM accounts"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(eventually(Duration::from_secs(3), || gw
        .audit_kinds()
        .contains(&"session.ended".to_string())));
    let stmts: Vec<serde_json::Value> = gw
        .audit_events()
        .into_iter()
        .filter(|e| e["kind"] == "pg.statement")
        .collect();
    assert_eq!(stmts.len(), 1, "only the refusal: {stmts:?}");
    assert_eq!(stmts[0]["details"]["outcome"], "refused");
    let (_, m) = gw.http_get("/metrics", None);
    assert!(
        m.contains("jitgate_query_duration_seconds_count 1"),
        "the SELECT is still measured:\n{m}"
    );
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_silence_and_wrong_passwords_do_not_hurt_others() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gw, _pg, _db) = setup(true, "");
    grant(&gw, "read-only", "1h");
    let addr = gw.pg_addr.clone();
    let good = connect(&gw, "alice").await.unwrap();

    // Garbage instead of a startup packet.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf))
        .await
        .unwrap();
    // A 1 GB length header in the startup packet: refused at once.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(&0x4000_0000i32.to_be_bytes()).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut Vec::new()))
        .await
        .unwrap();
    // A 1 GB message after login: the session is closed, the gateway keeps serving.
    let (h, p) = gw.pg_host_port();
    let victim = connect(&gw, "alice").await.unwrap();
    drop(victim);
    let _ = (h, p);
    // Random bytes after a valid startup.
    for seed in 0u8..20 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let junk: Vec<u8> = (0..200u32)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        let _ = s.write_all(&junk).await;
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut Vec::new())).await;
    }
    // Silence: cut off after the startup timeout (2s).
    let t = Instant::now();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut [0u8; 16]))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        t.elapsed() >= Duration::from_millis(1500) && t.elapsed() < Duration::from_secs(4),
        "{:?}",
        t.elapsed()
    );

    // 1,000 wrong passwords, 50 at a time.
    let before = rss_kib(gw.pid());
    let bad = format!(
        "host={h} port={p} user=alice@example.com password=wrong dbname=prod-db sslmode=disable",
        h = gw.pg_host_port().0,
        p = gw.pg_host_port().1
    );
    for _ in 0..20 {
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let bad = bad.clone();
            tasks.push(tokio::spawn(async move { refused(&bad).await }));
        }
        for t in tasks {
            assert_eq!(code(&t.await.unwrap()), "28P01");
        }
    }
    let after = rss_kib(gw.pid());
    assert!(after < before + 20 * 1024, "RSS grew from {before} KiB to {after} KiB");
    // The good session never noticed.
    assert_eq!(
        good.query_one("SELECT count(*) FROM accounts", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        100
    );
    assert_eq!(
        connect(&gw, "alice")
            .await
            .unwrap()
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

/// A protocol 3.0 StartupMessage with these parameters.
fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut startup = vec![0u8; 4];
    startup.extend_from_slice(&196_608i32.to_be_bytes());
    for (k, v) in params {
        startup.extend_from_slice(k.as_bytes());
        startup.push(0);
        startup.extend_from_slice(v.as_bytes());
        startup.push(0);
    }
    startup.push(0);
    let len = (startup.len() as i32).to_be_bytes();
    startup[..4].copy_from_slice(&len);
    startup
}

/// What the gateway answers a startup packet with these parameters (read until it closes).
async fn answer_to_startup(gw: &Gateway, params: &[(&str, &str)]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(&gw.pg_addr).await.unwrap();
    s.write_all(&startup_packet(params)).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut got))
        .await
        .expect("the gateway answers and closes")
        .unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_without_a_user_or_a_database_is_told_what_to_set() {
    let (gw, _pg, _db) = setup(true, "");
    // No user, and an empty one: 28000 naming the parameter, before any password is asked.
    for params in [
        &[("database", "prod-db")][..],
        &[("user", ""), ("database", "prod-db")][..],
    ] {
        let e = answer_to_startup(&gw, params).await;
        assert!(e.starts_with('E'), "{e:?}");
        assert!(e.contains("C28000") && e.contains("no user name given"), "{e:?}");
        assert!(e.contains("set user to your identity"), "{e:?}");
    }
    // No database: 3D000 saying the resource is named as the database.
    let e = answer_to_startup(&gw, &[("user", "alice@example.com")]).await;
    assert!(
        e.contains("C3D000") && e.contains("name the resource as the database"),
        "{e:?}"
    );
    let (_, metrics) = gw.http_get("/metrics", None);
    assert!(
        metrics.contains("jitgate_auth_failures_total{protocol=\"postgres\",reason=\"no_user\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("jitgate_auth_failures_total{protocol=\"postgres\",reason=\"no_database\"} 1"),
        "{metrics}"
    );
}

/// Log in over plain TCP by hand (startup, password), up to the first ReadyForQuery.
async fn raw_login(gw: &Gateway) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(&gw.pg_addr).await.unwrap();
    s.write_all(&startup_packet(&[
        ("user", "alice@example.com"),
        ("database", "prod-db"),
    ]))
    .await
    .unwrap();
    let mut b = [0u8; 9];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(b[0], b'R');
    let tok = token("alice");
    let mut pw = vec![b'p'];
    pw.extend_from_slice(&((tok.len() + 5) as i32).to_be_bytes());
    pw.extend_from_slice(tok.as_bytes());
    pw.push(0);
    s.write_all(&pw).await.unwrap();
    let mut hello = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(6).any(|w| w == [b'Z', 0, 0, 0, 5, b'I']) {
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut hello))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&hello[..n]);
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_applies_backpressure() {
    use tokio::io::AsyncWriteExt;
    let (gw, _pg, _db) = setup(true, "");
    grant(&gw, "read-only", "1h");
    let mut s = raw_login(&gw).await;
    let before = rss_kib(gw.pid());
    // About 1 GB of rows, and then never read a byte.
    let sql = b"SELECT repeat('x', 1000) FROM generate_series(1, 1000000)\0";
    let mut q = vec![b'Q'];
    q.extend_from_slice(&((sql.len() + 4) as i32).to_be_bytes());
    q.extend_from_slice(sql);
    s.write_all(&q).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(gw.pid());
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} KiB to {after} KiB while the client was not reading"
    );
    // Others are unaffected.
    let c = connect(&gw, "alice").await.unwrap();
    assert_eq!(c.query_one("SELECT 3", &[]).await.unwrap().get::<_, i32>(0), 3);
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_ends_only_that_session() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gw, _pg, _db) = setup(true, "");
    grant(&gw, "read-only", "1h");
    let other = connect(&gw, "alice").await.unwrap();
    // Log in by hand, then send a Query header claiming 1 GB.
    let mut s = raw_login(&gw).await;
    s.write_all(&[b'Q', 0x40, 0, 0, 0]).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(other.query_one("SELECT 7", &[]).await.unwrap().get::<_, i32>(0), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_is_verified_and_a_wrong_ca_refuses_the_connection() {
    let pg = cluster();
    for (mode, ca, ok) in [
        ("verify-full", pg.ca.clone(), true),
        ("require", pg.other_ca.clone(), true),
        ("verify-full", pg.other_ca.clone(), false),
    ] {
        let res = format!("tls = {{ mode = \"{mode}\", ca_file = \"{}\" }}", ca.display());
        let (gw, _pg, _db) = setup_with(true, &res, "");
        grant(&gw, "read-only", "1h");
        match connect(&gw, "alice").await {
            Ok(c) => {
                assert!(ok, "{mode} with {} must refuse", ca.display());
                let r = c
                    .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
                    .await
                    .unwrap();
                assert!(r.get::<_, bool>(0), "upstream leg must be TLS in {mode}");
            }
            Err(e) => {
                assert!(!ok, "{mode}: {e:?}");
                assert_eq!(code(&e), "08006");
                let m = db_message(&e);
                assert!(
                    m.contains("could not reach prod-db") && !m.contains("app_ro") && !m.contains("secret"),
                    "{m}"
                );
                assert!(gw.log().contains("TLS to the database failed"), "{}", gw.log());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_is_warned_before_expiry() {
    let (gw, _pg, _db) = setup(true, "");
    grant(&gw, "read-only", "3s");
    let (c, mut rx) = connect_with_messages(&gw, "alice").await;
    let e = c.simple_query("SELECT pg_sleep(10)").await.unwrap_err();
    assert_eq!(code(&e), "57P01");
    let warning = loop {
        match rx.recv().await.expect("a warning notice before the kill") {
            tokio_postgres::AsyncMessage::Notice(n) => break n.message().to_string(),
            _ => continue,
        }
    };
    assert!(
        warning.contains("access grant for prod-db expires in") && warning.contains("jitgate extend"),
        "{warning}"
    );
}

#[test]
fn jitgate_connect_runs_psql_with_everything_filled_in() {
    let (gw, _pg, _db) = setup(false, "");
    grant(&gw, "read-only", "1h");
    let o = gw.cli(
        Some("alice"),
        &[
            "connect",
            "prod-db",
            "--",
            "-A",
            "-t",
            "-c",
            "SELECT current_user, count(*) FROM accounts",
        ],
    );
    assert_eq!(o.stdout(), "app_ro|100\n", "{}", o.stderr());
    assert!(
        o.stderr().contains("sslmode=verify-full sslrootcert=") && !o.stderr().contains(&token("alice")),
        "{}",
        o.stderr()
    );
    let e = gw.cli(Some("alice"), &["connect", "nope"]).refused();
    assert!(e.contains("unknown resource `nope`"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_login_failure_is_clear_and_reveals_no_credentials() {
    let (gw, _pg, _db) = setup(true, "");
    std::fs::write(gw.dir.path().join("ro.pw"), "not-the-password\n").unwrap();
    grant(&gw, "read-only", "1h");
    let e = connect(&gw, "alice").await.unwrap_err();
    assert_eq!(code(&e), "08006");
    let m = db_message(&e);
    assert!(m.contains("refused the gateway's credentials"), "{m}");
    assert!(!m.contains("app_ro") && !m.contains("not-the-password"), "{m}");
    assert!(gw.log().contains("upstream login failed"), "{}", gw.log());
    assert!(!gw.log().contains("not-the-password"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_clients_why_and_leaves_no_backend() {
    let (mut gw, pg, db) = setup(true, "");
    grant(&gw, "read-only", "1h");
    let c = connect(&gw, "alice").await.unwrap();
    let q = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(10)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.stop();
    let e = q.await.unwrap().unwrap_err();
    assert_eq!(code(&e), "57P01", "{e:?}");
    assert!(db_message(&e).contains("shutting down"), "{e:?}");
    assert!(eventually(Duration::from_secs(2), || backends(&pg, &db) == 0));
    let kinds = gw.audit_kinds();
    assert!(
        kinds.contains(&"session.ended".to_string())
            && kinds.iter().rev().nth(1).map(String::as_str) == Some("gateway.stopped")
            && kinds.last().map(String::as_str) == Some("chain.checkpoint"),
        "{kinds:?}"
    );
}

/// SIGTERM with a drain: `/readyz` goes 503 at once while new sessions are still admitted
/// (`drain_delay`), then new ones are refused with a clear message while a live psql session
/// keeps working, and at `drain_timeout` the rest end with "shutting down" and the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_live_sessions_refuses_new_ones_and_ends_at_the_timeout() {
    let (mut gw, pg, db) = setup(true, "");
    let cfg = std::fs::read_to_string(gw.config_path()).unwrap();
    gw.write_raw_config(&cfg.replacen(
        "[gateway]\n",
        "[gateway]\ndrain_delay = \"1s\"\ndrain_timeout = \"3s\"\n",
        1,
    ));
    gw.restart();
    grant(&gw, "read-only", "1h");
    let live = connect(&gw, "alice").await.unwrap();
    assert_eq!(gw.http_get("/readyz", None).0, 200);
    let signalled = Instant::now();
    gw.sigterm();
    assert!(eventually(Duration::from_millis(500), || gw
        .http_get("/readyz", None)
        .0
        == 503));
    // During drain_delay a load balancer may still send one: it is admitted.
    let during_delay = connect(&gw, "alice").await;
    if signalled.elapsed() < Duration::from_millis(900) {
        assert!(during_delay.is_ok(), "{:?}", during_delay.err());
    }
    drop(during_delay);
    tokio::time::sleep(Duration::from_millis(1200).saturating_sub(signalled.elapsed())).await;
    // After it: refused, saying why, while the live session goes on.
    let e = connect(&gw, "alice").await.unwrap_err();
    assert_eq!(code(&e), "57P03", "{e:?}");
    assert!(db_message(&e).contains("is draining"), "{e:?}");
    let n: i64 = live
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);
    // At drain_delay + drain_timeout the rest is ended, and the process exits cleanly.
    let e = live.simple_query("SELECT pg_sleep(30)").await.unwrap_err();
    let ended = signalled.elapsed();
    assert_eq!(code(&e), "57P01", "{e:?}");
    assert!(
        ended >= Duration::from_millis(3800) && ended < Duration::from_secs(7),
        "{ended:?}"
    );
    let st = gw
        .wait_exit(Duration::from_secs(10))
        .expect("serve exits after the drain");
    assert!(st.success(), "{st}");
    assert!(eventually(Duration::from_secs(2), || backends(&pg, &db) == 0));
    let kinds = gw.audit_kinds();
    // The shutdown checkpoint signs gateway.stopped.
    assert_eq!(
        kinds.iter().rev().nth(1).map(String::as_str),
        Some("gateway.stopped"),
        "{kinds:?}"
    );
    assert_eq!(kinds.last().map(String::as_str), Some("chain.checkpoint"), "{kinds:?}");
}

/// `jitgate drain` (admins): ready 503 and new sessions refused at once, live ones go on, until
/// `--undo`; audited; others may not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_drains_the_gateway_and_undoes_it() {
    let (gw, _pg, _db) = setup(true, "");
    grant(&gw, "read-only", "1h");
    let live = connect(&gw, "alice").await.unwrap();
    let e = gw.cli(Some("alice"), &["drain"]).refused();
    assert!(e.contains("only admins may drain"), "{e}");
    let out = gw.cli(Some("root"), &["drain"]).ok();
    assert!(out.contains("1 live session(s) go on"), "{out}");
    assert_eq!(gw.http_get("/readyz", None).0, 503);
    let e = connect(&gw, "alice").await.unwrap_err();
    assert_eq!(code(&e), "57P03", "{e:?}");
    assert!(db_message(&e).contains("is draining"), "{e:?}");
    let n: i64 = live
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);
    gw.cli(Some("root"), &["drain", "--undo"]).ok();
    assert_eq!(gw.http_get("/readyz", None).0, 200);
    connect(&gw, "alice").await.unwrap();
    let drains: Vec<bool> = gw
        .audit_events()
        .iter()
        .filter(|e| e["kind"] == "gateway.drain")
        .map(|e| e["details"]["draining"].as_bool().unwrap())
        .collect();
    assert_eq!(drains, vec![true, false]);
}

/// `openssl` in `dir`: a CA, then leaf certificates for 127.0.0.1 signed by it.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let o = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn leaf(dir: &std::path::Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

/// The subject of the certificate the Postgres front end presents to a new TLS client.
fn presented_subject(gw: &Gateway) -> String {
    let o = Command::new("openssl")
        .args(["s_client", "-starttls", "postgres", "-connect", &gw.pg_addr])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("subject=").map(str::to_string))
        .unwrap_or_else(|| panic!("no certificate shown: {text}"))
}

/// A certificate replaced on disk is served to the next TLS client without a restart (SIGHUP,
/// or within seconds by itself), while a TLS session opened before goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart_or_a_dropped_session() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
        ],
    );
    leaf(d, "gw-one");
    leaf(d, "gw-two");
    std::fs::copy(d.join("gw-one.crt"), d.join("live.crt")).unwrap();
    std::fs::copy(d.join("gw-one.key"), d.join("live.key")).unwrap();
    let tls = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n",
        d.join("live.crt").display(),
        d.join("live.key").display(),
        d.join("ca.crt").display()
    );
    let (gw, _pg, _db) = setup(true, &tls);
    grant(&gw, "read-only", "1h");
    assert!(presented_subject(&gw).contains("gw-one"));
    // The certificate's remaining life is exported (the test CA signs for 2 days).
    let expiry = || {
        let (_, m) = gw.http_get("/metrics", None);
        m.lines()
            .find_map(|l| l.strip_prefix("jitgate_tls_cert_expiry_seconds{listener=\"postgres\"} "))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(0)
    };
    assert!(
        eventually(Duration::from_secs(6), || (86_400..=2 * 86_400).contains(&expiry())),
        "{}",
        expiry()
    );
    // A TLS session that spans the rotation.
    let (h, p) = gw.pg_host_port();
    let conn = format!(
        "host={h} port={p} user=alice@example.com dbname=prod-db sslmode=verify-full sslrootcert={}",
        d.join("ca.crt").display()
    );
    let live = std::process::Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            &conn,
            "-c",
            "SELECT pg_sleep(2)",
            "-c",
            "SELECT 'still here'",
        ])
        .env("PGPASSWORD", token("alice"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Replace both files, as cert-manager does, and tell the gateway.
    std::fs::copy(d.join("gw-two.key"), d.join("live.key")).unwrap();
    std::fs::copy(d.join("gw-two.crt"), d.join("live.crt")).unwrap();
    gw.sighup();
    assert!(
        eventually(Duration::from_secs(3), || presented_subject(&gw).contains("gw-two")),
        "the new certificate is not served"
    );
    let o = live.wait_with_output().unwrap();
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("still here"),
        "the session opened before the rotation was dropped: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // Without a signal: the file watch picks up the next rotation by itself.
    std::fs::copy(d.join("gw-one.key"), d.join("live.key")).unwrap();
    std::fs::copy(d.join("gw-one.crt"), d.join("live.crt")).unwrap();
    assert!(
        eventually(Duration::from_secs(12), || presented_subject(&gw).contains("gw-one")),
        "the file watch did not reload the certificate"
    );
    // A broken replacement keeps the certificate in use.
    std::fs::write(d.join("live.crt"), "not a certificate\n").unwrap();
    gw.sighup();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(presented_subject(&gw).contains("gw-one"));
    assert!(
        eventually(Duration::from_secs(3), || gw
            .log()
            .contains("TLS certificate not reloaded")),
        "{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_kills_one_session_and_the_grant_stays() {
    let (gw, _pg, _db) = setup(true, "");
    grant(&gw, "read-only", "1h");
    let c = connect(&gw, "alice").await.unwrap();
    let sessions = gw.cli(Some("root"), &["sessions", "--json"]).json();
    let sid = sessions[0]["id"].as_str().unwrap().to_string();
    let e = gw.cli(Some("carol"), &["kill", &sid]).refused();
    assert!(e.contains("may not kill"), "{e}");
    gw.cli(Some("root"), &["kill", &sid]).ok();
    let e = c.simple_query("SELECT 1").await.unwrap_err();
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string());
    assert!(msg.contains("killed by root@example.com") || e.is_closed(), "{e:?}");
    // The grant is untouched: a new session works.
    assert_eq!(
        connect(&gw, "alice")
            .await
            .unwrap()
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    let killed = gw
        .audit_events()
        .into_iter()
        .find(|e| e["kind"] == "session.killed")
        .unwrap();
    assert_eq!(killed["actor"], "root@example.com");
    assert_eq!(killed["session_id"], sid.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_stay_in_order_when_statements_are_pipelined() {
    let (gw, _pg, _db) = setup(true, "");
    grant(&gw, "read-only", "1h");
    let c = connect(&gw, "alice").await.unwrap();
    // tokio-postgres pipelines concurrent requests on one connection: each is
    // Parse/Bind/Execute/Sync sent back to back, before any answer arrives.
    for round in 0..20i32 {
        let (one, two) = (round * 10 + 1, round * 10 + 2);
        type P<'a> = [&'a (dyn tokio_postgres::types::ToSql + Sync); 1];
        let (p1, p2, p3): (P, P, P) = ([&one], [&round], [&two]);
        let (a, b, d, e, f) = tokio::join!(
            c.query_one("SELECT $1::int", &p1),
            c.execute("DELETE FROM accounts WHERE id = $1", &p2),
            c.query_one("SELECT $1::int", &p3),
            c.simple_query("UPDATE accounts SET balance = 0"),
            c.query_one("SELECT count(*) FROM accounts", &[]),
        );
        assert_eq!(a.unwrap().get::<_, i32>(0), round * 10 + 1);
        assert_eq!(code(&b.unwrap_err()), "42501");
        assert_eq!(d.unwrap().get::<_, i32>(0), round * 10 + 2);
        assert_eq!(code(&e.unwrap_err()), "42501");
        assert_eq!(f.unwrap().get::<_, i64>(0), 100);
    }
}
