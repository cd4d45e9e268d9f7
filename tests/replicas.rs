//! Several `jitgate serve` replicas on one shared PostgreSQL store: they act as one. Real
//! processes on loopback: three gateways, a real PostgreSQL as the store (and another database
//! as the upstream), psql and tokio-postgres as clients.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::pg::{Pg, Private, cluster, code, connect, db_message};
use support::*;

fn body(pg: &Pg, db: &str) -> String {
    format!(
        r#"[postgres]
allow_plaintext = true

{ids}
[[resources]]
name = "prod-db"
kind = "postgres"
address = "127.0.0.1:{port}"
database = "{db}"
credentials.read-only = {{ user = "app_ro", password_file = "ro.pw" }}

[[policies]]
name = "production"
resources = ["prod-*"]
requesters = ["dev"]
approvers = ["dba"]
"#,
        ids = identities(),
        port = pg.port
    )
}

/// `n` replicas sharing the store at `store_url`, in front of database `db`.
fn replicas(n: usize, pg: &Pg, db: &str, store_url: &str) -> Vec<Gateway> {
    (0..n)
        .map(|_| {
            let gw = Gateway::start_replica(&body(pg, db), store_url);
            std::fs::write(gw.dir.path().join("ro.pw"), "ro-secret\n").unwrap();
            gw
        })
        .collect()
}

fn psql(gw: &Gateway, user: &str, sql: &str) -> std::process::Output {
    let (h, p) = gw.pg_host_port();
    let conn = format!("host={h} port={p} user={user}@example.com dbname=prod-db sslmode=require");
    Command::new("psql")
        .args(["-X", "-A", "-t", "-c", sql])
        .arg(conn)
        .env("PGPASSWORD", token(user))
        .output()
        .unwrap()
}

/// Run `SELECT pg_sleep(30)` on `c`; returns the error that ended it and when.
fn sleeper(c: tokio_postgres::Client) -> tokio::task::JoinHandle<(tokio_postgres::Error, Instant)> {
    tokio::spawn(async move {
        let e = c.simple_query("SELECT pg_sleep(30)").await.unwrap_err();
        (e, Instant::now())
    })
}

/// Lines of the log of `gw` that contain `needle`.
fn log_has(gw: &Gateway, needle: &str) -> bool {
    gw.log().contains(needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_act_as_one() {
    let pg = cluster();
    let db = pg.fresh_db();
    let store = pg.store_db();
    let gws = replicas(3, &pg, &db, &store);
    let (a, b, c) = (&gws[0], &gws[1], &gws[2]);

    // Request on A, approve on B, psql in through C.
    let r = a
        .cli(
            Some("alice"),
            &["request", "prod-db", "--for", "1h", "--reason", "INC-1", "--json"],
        )
        .json();
    let rid = r["id"].as_i64().unwrap().to_string();
    let pending = b.cli(Some("bob"), &["requests", "--json"]).json();
    assert!(
        pending.as_array().unwrap().iter().any(|x| x["id"] == r["id"]),
        "B sees A's request: {pending}"
    );
    let approved = b.cli(Some("bob"), &["approve", &rid, "--json"]).json();
    let gid = approved["grant_id"].as_i64().unwrap();
    let out = psql(c, "alice", "SELECT count(*) FROM accounts");
    assert!(
        out.status.success(),
        "psql through C: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "100");

    // Every replica lists the session C hosts; an admin on B kills it through the feed.
    let s1 = connect(c, "alice").await.unwrap();
    let q1 = sleeper(s1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listed = a.cli(Some("root"), &["sessions", "--json"]).json();
    let sid = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["protocol"] == "postgres")
        .map(|s| s["id"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("A lists C's session: {listed}"));
    let t = Instant::now();
    b.cli(Some("root"), &["kill", &sid]).ok();
    let (e, at) = q1.await.unwrap();
    let kill_lag = at.duration_since(t);
    assert_eq!(code(&e), "57P01", "{e:?}");
    assert!(db_message(&e).contains("killed by root@example.com"), "{e:?}");
    println!("admin kill on B of a session on C: {kill_lag:?} (including the CLI)");
    assert!(kill_lag < Duration::from_secs(2), "{kill_lag:?}");

    // Revoke on A kills the session on C within a second.
    let s2 = connect(c, "alice").await.unwrap();
    let q2 = sleeper(s2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    a.cli(Some("bob"), &["revoke", &gid.to_string(), "--reason", "INC-1 closed"])
        .ok();
    let (e, at) = q2.await.unwrap();
    let revoke_lag = at.duration_since(t);
    println!("revoke on A → session on C closed: {revoke_lag:?} (including the CLI)");
    assert_eq!(code(&e), "57P01", "{e:?}");
    assert!(db_message(&e).contains("revoked by bob@example.com"), "{e:?}");
    assert!(revoke_lag < Duration::from_secs(1), "{revoke_lag:?}");
    // And C refuses new sessions on that grant.
    assert_eq!(code(&connect(c, "alice").await.unwrap_err()), "28000");
    let (_, m) = c.http_get("/metrics", None);
    assert!(m.contains("jitgate_store_feed_lag_seconds_count"), "{m}");
    assert!(m.contains("jitgate_store_up 1"), "{m}");

    // Two approvals of one request racing on two replicas: exactly one opens a grant.
    let r = a
        .cli(
            Some("alice"),
            &["request", "prod-db", "--for", "1h", "--reason", "race", "--json"],
        )
        .json();
    let rid = r["id"].as_i64().unwrap().to_string();
    let racers: Vec<_> = [a, b]
        .into_iter()
        .map(|gw| {
            let mut cmd = Command::new(BIN);
            cmd.args(["approve", &rid, "--json"])
                .env("JITGATE_URL", &gw.url)
                .env("JITGATE_TOKEN", token("bob"))
                .env("HOME", gw.dir.path());
            std::thread::spawn(move || cmd.output().unwrap())
        })
        .collect();
    let outs: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        outs.iter().filter(|o| o.status.success()).count(),
        1,
        "{:?}",
        outs.iter()
            .map(|o| String::from_utf8_lossy(&o.stderr).to_string())
            .collect::<Vec<_>>()
    );
    let grants = c.cli(Some("root"), &["grants", "--all", "--json"]).json();
    assert_eq!(grants.as_array().unwrap().len(), 1, "{grants}");
    let race_grant = grants[0]["id"].as_i64().unwrap().to_string();
    c.cli(Some("alice"), &["release", &race_grant]).ok();

    // An extension approved on B moves the end on C: C's session outlives the original end.
    let g = a.granted(&["prod-db", "--for", "3s", "--reason", "extend me"]);
    let gid = g["grant_id"].as_i64().unwrap().to_string();
    let on_c = connect(c, "alice").await.unwrap();
    let ext = a
        .cli(
            Some("alice"),
            &["extend", &gid, "--for", "1h", "--reason", "more", "--json"],
        )
        .json();
    b.cli(Some("bob"), &["approve", &ext["id"].as_i64().unwrap().to_string()])
        .ok();
    tokio::time::sleep(Duration::from_secs(4)).await;
    on_c.simple_query("SELECT 1")
        .await
        .expect("C moved the end of the extended grant");
    // Released on A: the session on C ends (the FATAL may arrive before the next query).
    a.cli(Some("alice"), &["release", &gid]).ok();
    let e = on_c.simple_query("SELECT pg_sleep(30)").await.unwrap_err();
    assert!(code(&e) == "57P01" || on_c.is_closed(), "{e:?}");

    // Expiry needs no message: every replica ends the grant by its own clock.
    let g = a.granted(&["prod-db", "--for", "3s", "--reason", "short"]);
    assert!(g["grant_id"].as_i64().is_some(), "{g}");
    let on_a = sleeper(connect(a, "alice").await.unwrap());
    let on_c = sleeper(connect(c, "alice").await.unwrap());
    let (ea, _) = on_a.await.unwrap();
    let (ec, _) = on_c.await.unwrap();
    for e in [&ea, &ec] {
        assert_eq!(code(e), "57P01", "{e:?}");
        assert!(db_message(e).contains("expired at"), "{e:?}");
    }
    // The audit index is shared: any replica's search sees events written by the others.
    let found = b
        .cli(Some("root"), &["audit", "search", "--kind", "session.", "--json"])
        .ok();
    let events: Vec<serde_json::Value> = found.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // B wrote the kill; C wrote the session's start and end.
    for kind in ["session.started", "session.killed", "session.ended"] {
        assert!(
            events
                .iter()
                .any(|e| e["kind"] == kind && e["session_id"] == sid.as_str()),
            "{kind} of {sid} not found:\n{found}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_listen_connection_resyncs_and_still_kills() {
    let pg = cluster();
    let db = pg.fresh_db();
    let store = pg.store_db();
    let gws = replicas(2, &pg, &db, &store);
    let (a, b) = (&gws[0], &gws[1]);
    let gid = a.granted(&["prod-db", "--for", "1h", "--reason", "x"])["grant_id"]
        .as_i64()
        .unwrap();
    let q = sleeper(connect(b, "alice").await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let node = std::fs::read_to_string(b.data_dir().join("node_id")).unwrap();
    let store_db = store.rsplit('/').next().unwrap().split('?').next().unwrap();
    // Cut B's LISTEN connection and revoke on A while B is not listening.
    let n = pg.su(
        "postgres",
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{store_db}' AND application_name = 'jitgate-feed/{}'",
            node.trim()
        ),
    );
    assert_eq!(n.trim(), "1", "B's feed connection found");
    let t = Instant::now();
    a.cli(Some("bob"), &["revoke", &gid.to_string(), "--reason", "race"])
        .ok();
    let (e, at) = q.await.unwrap();
    println!(
        "revoke during a lost LISTEN connection: session closed after {:?}",
        at.duration_since(t)
    );
    assert_eq!(code(&e), "57P01", "{e:?}");
    assert!(db_message(&e).contains("revoked by bob@example.com"), "{e:?}");
    assert!(at.duration_since(t) < Duration::from_secs(3));
    assert!(
        eventually(Duration::from_secs(3), || log_has(b, "resynchronised with the store")),
        "{}",
        b.log()
    );
    assert!(log_has(b, "lost the store's change feed"), "{}", b.log());
    let (_, m) = b.http_get("/metrics", None);
    assert!(m.contains("jitgate_store_resyncs_total{reason=\"reconnect\"} 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_fails_closed_keeps_expiry_and_recovers() {
    let pg = cluster();
    let db = pg.fresh_db();
    let private = Private::start();
    let store = private.pg.store_db();
    let gws = replicas(2, &pg, &db, &store);
    let (a, b) = (&gws[0], &gws[1]);
    let bot = a
        .cli(Some("root"), &["token", "create", "ci-bot", "--group", "dev", "--json"])
        .json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    a.granted(&["prod-db", "--for", "6s", "--reason", "x"]);
    let granted = Instant::now();
    let live = connect(b, "alice").await.unwrap();

    private.stop();
    // New sessions are refused with a clear error, on every replica.
    for gw in [a, b] {
        assert!(
            eventually(Duration::from_secs(5), || gw.http_get("/readyz", None).0 == 503),
            "readyz stays 200"
        );
        let e = connect(gw, "alice").await.unwrap_err();
        assert_eq!(code(&e), "57P03", "{e:?}");
        assert!(db_message(&e).contains("cannot reach its store"), "{e:?}");
    }
    // A machine token cannot be checked without the store: said so, not "wrong password",
    // and audited and counted as an outage, not as a failed login.
    let (h, p) = a.pg_host_port();
    let conn = format!("host={h} port={p} user=ci-bot password={bot} dbname=prod-db sslmode=disable connect_timeout=5");
    let e = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(code(&e), "57P03", "{e:?}");
    assert!(
        db_message(&e).contains("cannot reach its store to check this token"),
        "{e:?}"
    );
    let out = Command::new(BIN)
        .args(["whoami"])
        .env("JITGATE_URL", &a.url)
        .env("JITGATE_TOKEN", &bot)
        .env("HOME", a.dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cannot reach its store"), "{err}");
    let (_, m) = a.http_get("/metrics", None);
    assert!(
        m.contains("jitgate_auth_failures_total{protocol=\"postgres\",reason=\"unavailable\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("jitgate_auth_failures_total{protocol=\"http\",reason=\"unavailable\"} 1"),
        "{m}"
    );
    assert!(!m.contains("reason=\"bad_token\"} 1"), "{m}");
    assert!(
        eventually(Duration::from_secs(3), || a
            .audit_kinds()
            .contains(&"auth.unavailable".to_string())),
        "{:?}",
        a.audit_kinds()
    );
    assert!(!a.audit_kinds().contains(&"auth.failed".to_string()));
    // New requests too.
    let err = a
        .cli(Some("alice"), &["request", "prod-db", "--for", "1h", "--reason", "y"])
        .refused();
    assert!(err.contains("store is unavailable"), "{err}");
    // The live session keeps working, and still dies at its grant's expiry.
    live.simple_query("SELECT 1").await.unwrap();
    let e = live.simple_query("SELECT pg_sleep(30)").await.unwrap_err();
    let lived = granted.elapsed();
    assert_eq!(code(&e), "57P01", "{e:?}");
    assert!(db_message(&e).contains("expired at"), "{e:?}");
    assert!(lived < Duration::from_secs(8), "{lived:?}");
    println!("grant of 6s during a store outage: session closed after {lived:?}");

    // The store comes back: everything recovers without a restart.
    private.resume();
    for gw in [a, b] {
        assert!(
            eventually(Duration::from_secs(10), || gw.http_get("/readyz", None).0 == 200),
            "readyz never recovered:\n{}",
            gw.log()
        );
    }
    // The grant that expired during the outage is marked expired in the store by a resync.
    assert!(
        eventually(Duration::from_secs(5), || a
            .cli(Some("root"), &["grants", "--all", "--json"])
            .json()
            .as_array()
            .unwrap()
            .is_empty()),
        "expired grant still listed"
    );
    b.granted(&["prod-db", "--for", "1h", "--reason", "after"]);
    let c = connect(a, "alice").await.unwrap();
    c.simple_query("SELECT 1").await.unwrap();
}

#[test]
fn a_replica_refuses_a_store_tls_setting_it_cannot_verify() {
    let pg = cluster();
    let store = pg.store_db().replace("sslmode=disable", "sslmode=require");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("url"), &store).unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\ndata_dir = \"data\"\n[listen]\nhttp = \"127.0.0.1:0\"\n[store]\nurl_file = \"{}\"\n",
            dir.path().join("url").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("ca_file"), "{err}");
    assert!(!err.contains(&pg.password), "the store password leaked: {err}");

    // With the CA that signed the store's certificate: TLS, verified, and it works.
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\ndata_dir = \"data\"\n[listen]\nhttp = \"127.0.0.1:0\"\n[store]\nurl_file = \"{}\"\nca_file = \"{}\"\nnode = \"gw-tls\"\n",
            dir.path().join("url").display(),
            pg.ca.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let listen = dir.path().join("data/listen.json");
    let up = eventually(Duration::from_secs(15), || listen.exists());
    let store_db = store.rsplit('/').next().unwrap().split('?').next().unwrap();
    let ssl = pg.su(
        "postgres",
        &format!("SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = '{store_db}'"),
    );
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(up, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ssl.trim(), "t", "every store connection uses TLS");

    // A CA that did not sign it: refused.
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\ndata_dir = \"data\"\n[listen]\nhttp = \"127.0.0.1:0\"\n[store]\nurl_file = \"{}\"\nca_file = \"{}\"\n",
            dir.path().join("url").display(),
            pg.other_ca.display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("certificate") || err.contains("UnknownIssuer"), "{err}");
}

#[test]
fn a_replica_that_cannot_use_its_store_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    let serve = |store: &str, env: &[(&str, &str)]| {
        std::fs::write(
            &cfg,
            format!("[gateway]\ndata_dir = \"data\"\n[listen]\nhttp = \"127.0.0.1:0\"\n[store]\n{store}\n"),
        )
        .unwrap();
        let t = Instant::now();
        let out = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&cfg)
            .current_dir(dir.path())
            .envs(env.iter().copied())
            .env_remove("JITGATE_STORE_URL")
            .output()
            .unwrap();
        assert!(!out.status.success(), "started with {store}");
        assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = serve("url_env = \"JITGATE_STORE_URL\"", &[]);
    assert!(e.contains("JITGATE_STORE_URL") && e.contains("not set"), "{e}");
    let e = serve("url_file = \"/nonexistent/store-url\"", &[]);
    assert!(e.contains("/nonexistent/store-url"), "{e}");
    let e = serve(
        "url_env = \"JG_URL\"",
        &[(
            "JG_URL",
            "postgres://jitgate:s3cret@127.0.0.1:notaport/db?sslmode=disable",
        )],
    );
    assert!(e.contains("store URL") && !e.contains("s3cret"), "{e}");
    // Nothing listens on port 1: a clear error within the connect timeout, password not shown.
    let e = serve(
        "url_env = \"JG_URL\"",
        &[("JG_URL", "postgres://jitgate:s3cret@127.0.0.1:1/db?sslmode=disable")],
    );
    assert!(e.contains("cannot connect to the store"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
}

/// A TCP relay in front of the store that can hold back what the store sends on the change-feed
/// connection (the one whose startup names `jitgate-feed/`): a feed that is late but not broken.
struct LateFeed {
    addr: std::net::SocketAddr,
    hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LateFeed {
    fn start(store_port: u16) -> Self {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = hold.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let Ok(mut server) = std::net::TcpStream::connect(("127.0.0.1", store_port)) else {
                    continue;
                };
                let is_feed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let feed = is_feed.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    let mut seen = Vec::new();
                    while let Ok(n) = c2.read(&mut buf) {
                        if n == 0 || s2.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        if !feed.load(Ordering::SeqCst) && seen.len() < 4096 {
                            seen.extend_from_slice(&buf[..n]);
                            if seen.windows(13).any(|w| w == b"jitgate-feed/") {
                                feed.store(true, Ordering::SeqCst);
                            }
                        }
                    }
                    let _ = s2.shutdown(std::net::Shutdown::Both);
                });
                let held = held.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = server.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        while is_feed.load(Ordering::SeqCst) && held.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        if client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = client.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Self { addr, hold }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_approved_elsewhere_lets_the_user_in_before_the_feed_announces_it() {
    use std::sync::atomic::Ordering;
    let pg = cluster();
    let db = pg.fresh_db();
    let store = pg.store_db();
    let late = LateFeed::start(pg.port);
    let a = Gateway::start_replica(&body(&pg, &db), &store);
    std::fs::write(a.dir.path().join("ro.pw"), "ro-secret\n").unwrap();
    let via_relay = store.replacen(&format!("127.0.0.1:{}", pg.port), &late.addr.to_string(), 1);
    assert_ne!(via_relay, store);
    let b = Gateway::start_replica(&body(&pg, &db), &via_relay);
    std::fs::write(b.dir.path().join("ro.pw"), "ro-secret\n").unwrap();

    // B's feed falls silent (its heartbeat allows 3 s before it calls the feed lost).
    late.hold.store(true, Ordering::SeqCst);
    let g = a.granted(&["prod-db", "--for", "1h", "--reason", "late feed"]);
    let gid = g["grant_id"].as_i64().unwrap();
    let t = Instant::now();
    let s = connect(&b, "alice")
        .await
        .expect("B reads a grant its feed has not announced yet");
    println!("connected on B {:?} after approval on A, feed held", t.elapsed());
    let row = s.simple_query("SELECT count(*) FROM accounts").await.unwrap();
    assert!(!row.is_empty());
    let (_, m) = b.http_get("/metrics", None);
    assert!(m.contains("jitgate_store_grant_reads_total{result=\"found\"} 1"), "{m}");
    assert!(
        log_has(&b, "grant read from the store ahead of its change notice"),
        "{}",
        b.log()
    );

    // A user with no grant is still refused, and the read-through does not invent one.
    let e = connect(&b, "carol").await.unwrap_err();
    assert_eq!(code(&e), "28000", "{e:?}");

    // The late notice is harmless once it arrives, and a revoke on A still reaches B.
    late.hold.store(false, Ordering::SeqCst);
    let q = sleeper(s);
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.cli(Some("bob"), &["revoke", &gid.to_string(), "--reason", "done"])
        .ok();
    let (e, _) = q.await.unwrap();
    assert_eq!(code(&e), "57P01", "{e:?}");
    assert!(db_message(&e).contains("revoked by bob@example.com"), "{e:?}");
}
