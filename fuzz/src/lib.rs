//! Shared pieces of the fuzz targets: a byte reader that splits one input into parts, a
//! structure-aware SQL generator, and harnesses that drive the Postgres relay and upstream login
//! over in-process pipes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads an input front to back; runs out gracefully.
pub struct Bytes<'a>(pub &'a [u8]);

impl<'a> Bytes<'a> {
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    /// The next `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }

    /// A length-prefixed part (u16 length, cut at the end of the input).
    pub fn part(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.take(n)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.take(usize::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One current-thread runtime per fuzzing thread.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
    }
    RT.with(|rt| rt.block_on(f))
}

pub mod sql {
    //! Structure-aware SQL: every byte picks a fragment from PostgreSQL's lexical and grammar
    //! corners (comment forms, string forms, dollar quotes, quoted identifiers, the statements
    //! and functions the read-only rules care about, unicode and odd whitespace); bytes past the
    //! table are characters of their own.

    pub const FRAGMENTS: &[&str] = &[
        "SELECT ", "INSERT INTO t VALUES (1) ", "UPDATE t SET v = 1 ", "DELETE FROM t ", "COPY t ",
        "TO STDOUT ", "FROM STDIN ", "TO PROGRAM 'id' ", "TO '/tmp/x' ", "(SELECT 1) ", "EXPLAIN ",
        "(ANALYZE) ", "ANALYZE ", "WITH x AS (", ") ", "(", ",", ";", " ", "\n", "\r", "\t", "\x0c",
        "'a'", "''", "E'\\''", "E'\\\\'", "e'\\x41'", "U&'\\0041'", "U&'!0041' UESCAPE '!'", "$$x$$",
        "$q$ $$ ' $q$", "$", "$1", "/*", "*/", "/* /* */ */", "--", "-- c\n", "\"t\"", "\"\"\"\"",
        "U&\"\\0041\"", "set_config('default_transaction_read_only','off',false)", "pg_sleep(0)",
        "lo_import('/etc/passwd')", "dblink('x','y')", "nextval('s')", "SET ", "RESET ALL ",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE ", "default_transaction_read_only ",
        "TO off ", "= DEFAULT ", "ROLE ", "SESSION AUTHORIZATION ", "client_encoding ", "'SQL_ASCII' ",
        "standard_conforming_strings ", "BEGIN ", "START TRANSACTION ", "READ WRITE ", "READ ONLY ",
        "ISOLATION LEVEL SERIALIZABLE ", "COMMIT ", "ROLLBACK ", "END ", "ABORT ", "PREPARE p AS ",
        "EXECUTE p ", "DEALLOCATE ALL ", "DECLARE c CURSOR FOR ", "FETCH c ", "CLOSE c ", "LISTEN x ",
        "NOTIFY x ", "DISCARD ALL ", "SHOW ALL ", "TABLE t ", "VALUES (1) ", "CALL p() ", "DO $$ $$ ",
        "CREATE ROLE r PASSWORD 'secret' ", "ALTER USER u PASSWORD ", "CREATE TABLE x () ",
        "DROP TABLE t ", "TRUNCATE t ", "LOCK t ", "VACUUM ", "CHECKPOINT ", "MERGE INTO t USING t ON true WHEN MATCHED THEN DELETE ",
        "RETURNING * ", "FOR UPDATE ", "INTO TEMP x ", "UNION ALL ", "WHERE ", "AND ", "OR ", "1",
        "1e5", "0x1F", "1_000", ".5", "::text", "::regclass", "ARRAY[1]", "ROW(1)", "*", "-", "+",
        "=", "<>", "!=", "||", "@", "#", "%", "^", "~", "?", "ö", "\u{feff}", "\u{2028}", "\u{a0}",
        "\u{1F600}", "\\", "\0", "pg_catalog.", "public.", "t", "id", "v", "x", "FROM t ", "LIMIT 1 ",
    ];

    /// A handful of SQL texts from the input (a 0xff byte starts the next text).
    pub fn generate(data: &[u8]) -> Vec<String> {
        let mut texts = vec![String::new()];
        for &b in data {
            if b == 0xff {
                if texts.len() == 8 {
                    break;
                }
                texts.push(String::new());
                continue;
            }
            let s = texts.last_mut().expect("one text");
            match FRAGMENTS.get(usize::from(b)) {
                Some(f) => s.push_str(f),
                None => s.push(char::from(b)),
            }
        }
        texts
    }
}

pub mod relay {
    //! The Postgres relay between an in-process client and an in-process server, both scripted
    //! by the input; it must end (both sides close), never panic, and never hang.

    use super::*;
    use jitgate_audit::AuditSink;
    use jitgate_core::sessions::SessionInfo;
    use jitgate_core::{Enforcer, Metrics, SystemClock};
    use jitgate_pg::classify::Classifier;
    use jitgate_pg::relay::{self, RelayCtx};

    struct Env {
        enforcer: Arc<Enforcer>,
        metrics: Metrics,
        classifier: Arc<Classifier>,
        audit: AuditSink,
    }

    fn env() -> &'static Env {
        static ENV: OnceLock<Env> = OnceLock::new();
        ENV.get_or_init(|| {
            let metrics = Metrics::new();
            Env {
                enforcer: Enforcer::new(Arc::new(SystemClock), metrics.clone(), 60),
                metrics,
                classifier: Arc::new(Classifier::new()),
                // Events are built, serialised and chained, then dropped by the kernel.
                audit: AuditSink::open(std::path::Path::new("/dev/null"), None, None).expect("audit sink"),
            }
        })
    }

    /// How long one input may keep the relay busy before it counts as a hang.
    const LIMIT: Duration = Duration::from_secs(5);

    /// Relay `client` bytes to a server answering with `server` bytes.
    pub fn run(read_only: bool, client: &[u8], server: &[u8], client_chunk: usize) {
        let e = env();
        let info = SessionInfo {
            id: "s-fuzz".into(),
            protocol: "postgres".into(),
            identity: "fuzz@example.com".into(),
            resource: "db".into(),
            access: if read_only { "read-only" } else { "read-write" }.into(),
            grant_id: 1,
            client_addr: "127.0.0.1:1".into(),
            started_at: jiff::Timestamp::UNIX_EPOCH,
        };
        let ctx = RelayCtx {
            guard: e.enforcer.sessions.register(info),
            read_only,
            classifier: e.classifier.clone(),
            audit: e.audit.clone(),
            metrics: e.metrics.clone(),
            max_text: 256,
            max_message: 64 * 1024,
            refusal_hint: "hint".into(),
            audit_statements: true,
            upstream_user: "u".into(),
            functions: None,
        };
        block_on(async {
            let (c_gw, c_peer) = tokio::io::duplex(16 * 1024);
            let (s_gw, s_peer) = tokio::io::duplex(16 * 1024);
            let (c_read, mut c_write) = tokio::io::split(c_peer);
            let (s_read, mut s_write) = tokio::io::split(s_peer);
            let chunk = client_chunk.max(1);
            let client_writes = async move {
                for part in client.chunks(chunk) {
                    if c_write.write_all(part).await.is_err() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                let _ = c_write.shutdown().await;
            };
            let server_writes = async move {
                let _ = s_write.write_all(server).await;
                let _ = s_write.shutdown().await;
            };
            let all = async {
                tokio::join!(
                    relay::run(&ctx, c_gw.into(), s_gw.into(), BytesMut::new(), BytesMut::new()),
                    client_writes,
                    server_writes,
                    drain(c_read),
                    drain(s_read),
                )
            };
            if tokio::time::timeout(LIMIT, all).await.is_err() {
                panic!("the relay did not end within {LIMIT:?}");
            }
        });
    }

    async fn drain(mut r: tokio::io::ReadHalf<tokio::io::DuplexStream>) {
        let mut b = vec![0u8; 16 * 1024];
        while matches!(r.read(&mut b).await, Ok(n) if n > 0) {}
    }
}

pub mod login {
    //! The upstream login against a scripted server (authentication requests, SCRAM messages,
    //! ParameterStatus, errors): an error or a session, never a panic or a hang.

    use super::*;
    use jitgate_pg::scram::SaltCache;

    const LIMIT: Duration = Duration::from_secs(5);

    pub fn run(server: &[u8]) {
        let salts = SaltCache::default();
        block_on(async {
            let (gw, peer) = tokio::io::duplex(16 * 1024);
            let (mut r, mut w) = tokio::io::split(peer);
            let login = jitgate_pg::upstream::login(gw.into(), "u", Some("pw"), Some("db"), &[], &salts);
            let script = async move {
                let _ = w.write_all(server).await;
                let _ = w.shutdown().await;
            };
            let drain = async move {
                let mut b = vec![0u8; 4096];
                while matches!(r.read(&mut b).await, Ok(n) if n > 0) {}
            };
            let all = async {
                let (res, (), ()) = tokio::join!(
                    async {
                        let r = login.await;
                        // Close our side so the script and the drain end.
                        drop(r);
                    },
                    script,
                    drain
                );
                res
            };
            if tokio::time::timeout(LIMIT, all).await.is_err() {
                panic!("the upstream login did not end within {LIMIT:?}");
            }
        });
    }
}
