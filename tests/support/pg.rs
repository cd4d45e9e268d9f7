//! The shared test PostgreSQL cluster (scripts/test-pg) and per-test databases.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Pg {
    pub port: u16,
    pub user: String,
    pub password: String,
    pub bin: PathBuf,
    /// CA that signed the cluster's certificate.
    pub ca: PathBuf,
    /// An unrelated CA.
    pub other_ca: PathBuf,
}

/// The cluster, started on first use (scripts/test-pg up is idempotent and locked).
pub fn cluster() -> Pg {
    Pg::from_vars(&super::fixture(
        "test-pg",
        "PostgreSQL server missing? run ./scripts/install-deps",
    ))
}

static N: AtomicU32 = AtomicU32::new(0);

/// A database name no earlier run used either (process ids are reused; the cluster outlives
/// test runs).
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

impl Pg {
    /// From the env file scripts/test-pg prints.
    fn from_vars(vars: &std::collections::HashMap<String, String>) -> Self {
        Self {
            port: vars["JITGATE_TEST_PG_PORT"].parse().unwrap(),
            user: vars["JITGATE_TEST_PG_USER"].clone(),
            password: vars["JITGATE_TEST_PG_PASSWORD"].clone(),
            bin: PathBuf::from(&vars["JITGATE_TEST_PG_BIN"]),
            ca: PathBuf::from(&vars["JITGATE_TEST_PG_CA"]),
            other_ca: PathBuf::from(&vars["JITGATE_TEST_PG_OTHER_CA"]),
        }
    }

    /// Run SQL with psql as `user` (password given) on `db`; panics on error; returns stdout.
    pub fn psql_as(&self, user: &str, password: &str, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                user,
                "-d",
                db,
                "-c",
                sql,
            ])
            .env("PGPASSWORD", password)
            .env("PGSSLMODE", "disable")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// As the superuser.
    pub fn su(&self, db: &str, sql: &str) -> String {
        self.psql_as(&self.user, &self.password, db, sql)
    }

    /// A fresh database owned by app_rw with table `accounts(id, name, balance)` of 100 rows,
    /// readable by app_ro.
    pub fn fresh_db(&self) -> String {
        let name = unique("t");
        self.su("postgres", &format!("CREATE DATABASE {name} OWNER app_rw"));
        self.psql_as(
            "app_rw",
            "rw-secret",
            &name,
            "CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL, balance int NOT NULL); \
             INSERT INTO accounts SELECT g, 'user' || g, g * 10 FROM generate_series(1, 100) g; \
             CREATE SEQUENCE s; \
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_ro; GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO app_ro;",
        );
        name
    }

    /// A fresh, empty database for a gateway store; returns its `postgres://` URL.
    pub fn store_db(&self) -> String {
        let name = unique("store");
        self.su("postgres", &format!("CREATE DATABASE {name}"));
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{name}?sslmode=disable",
            self.user, self.password, self.port
        )
    }

    /// A direct libpq connection string for `db` as app_ro / app_rw.
    pub fn direct(&self, db: &str, user: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db} sslmode=disable",
            self.port
        )
    }
}

/// A PostgreSQL cluster of one test's own (scripts/test-pg with a private directory), for tests
/// that stop and start it. Deleted on drop.
pub struct Private {
    pub pg: Pg,
    pub dir: PathBuf,
}

impl Private {
    pub fn start() -> Self {
        let dir = PathBuf::from(format!(
            "/tmp/jitgate-test-store-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-pg");
        let vars = super::fixture_env(
            Command::new(script).arg("up").env("JITGATE_TEST_PG_DIR", &dir),
            "scripts/test-pg up (private)",
            "PostgreSQL server missing? run ./scripts/install-deps",
        );
        Self {
            pg: Pg::from_vars(&vars),
            dir,
        }
    }

    fn pg_ctl(&self, args: &[&str]) {
        let ctl = self.pg.bin.join("pg_ctl");
        let data = self.dir.join("data");
        let mut c = if nix_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&ctl);
            c
        } else {
            Command::new(&ctl)
        };
        // No pipes: the postmaster must not inherit them (output() would wait for it).
        let st = c
            .arg("-D")
            .arg(&data)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(
            st.success(),
            "pg_ctl {args:?} failed; see {}/server.log",
            self.dir.display()
        );
    }

    /// Stop the server (fast shutdown: sessions are terminated).
    pub fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "stop"]);
    }

    /// Start it again on the same port.
    pub fn resume(&self) {
        let log = self.dir.join("server.log");
        self.pg_ctl(&["-l", log.to_str().unwrap(), "-w", "start"]);
    }
}

fn nix_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Drop for Private {
    fn drop(&mut self) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-pg");
        let _ = Command::new(script)
            .arg("down")
            .env("JITGATE_TEST_PG_DIR", &self.dir)
            .output();
        let _ = std::fs::remove_file(format!("{}.lock", self.dir.display()));
    }
}

/// A tokio-postgres session through the gateway's Postgres front end as `user` (token as the
/// password, plaintext: the gateways under test allow it on loopback), on database `prod-db`.
pub async fn connect(gw: &super::Gateway, user: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (h, p) = gw.pg_host_port();
    let conn = format!(
        "host={h} port={p} user={user}@example.com password={} dbname=prod-db sslmode=disable connect_timeout=5",
        super::token(user)
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The SQLSTATE of an error (or what it was instead).
pub fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no code: {e}"))
}

/// The server's message and hint of an error.
pub fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| format!("{} {}", d.message(), d.hint().unwrap_or("")))
        .unwrap_or_else(|| e.to_string())
}
