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
    let vars = super::fixture("test-pg", "PostgreSQL server missing? run ./scripts/install-deps");
    Pg {
        port: vars["JITGATE_TEST_PG_PORT"].parse().unwrap(),
        user: vars["JITGATE_TEST_PG_USER"].clone(),
        password: vars["JITGATE_TEST_PG_PASSWORD"].clone(),
        bin: PathBuf::from(&vars["JITGATE_TEST_PG_BIN"]),
        ca: PathBuf::from(&vars["JITGATE_TEST_PG_CA"]),
        other_ca: PathBuf::from(&vars["JITGATE_TEST_PG_OTHER_CA"]),
    }
}

static N: AtomicU32 = AtomicU32::new(0);

impl Pg {
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
        let name = format!("t_{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
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

    /// A direct libpq connection string for `db` as app_ro / app_rw.
    pub fn direct(&self, db: &str, user: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db} sslmode=disable",
            self.port
        )
    }
}
