use super::cache::{GENERATION_BYTES, masked};
use super::*;
use std::sync::Arc;

/// The read-only table: (statement, allowed).
const CASES: &[(&str, bool)] = &[
    ("SELECT 1", true),
    ("select * from accounts where id = 1", true),
    ("SELECT count(*) FROM pgbench_accounts; SELECT now()", true),
    ("WITH x AS (SELECT 1) SELECT * FROM x", true),
    ("EXPLAIN SELECT * FROM t", true),
    ("EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM t", true),
    ("SHOW search_path", true),
    ("SHOW transaction_read_only", true),
    ("TABLE t", true),
    ("VALUES (1), (2)", true),
    ("SELECT 1 AS select, 2 AS \"update\", 3 AS delete", true),
    ("BEGIN", true),
    ("BEGIN READ ONLY", true),
    (
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
        true,
    ),
    ("BEGIN ISOLATION LEVEL REPEATABLE READ", true),
    ("COMMIT", true),
    ("ROLLBACK", true),
    ("SAVEPOINT a", true),
    ("SET search_path = public", true),
    ("SET statement_timeout TO 1000", true),
    ("RESET search_path", true),
    ("RESET ALL", true),
    ("DISCARD ALL", true),
    ("LISTEN ch", true),
    ("COPY (SELECT 1) TO STDOUT", true),
    ("COPY t TO STDOUT WITH (FORMAT csv)", true),
    ("DECLARE c CURSOR FOR SELECT 1", true),
    ("PREPARE p AS SELECT $1::int", true),
    ("EXECUTE p(1)", true),
    ("SELECT 'insert into t values (1)'", true),
    ("SELECT upper('delete')", true),
    ("SELECT current_setting('default_transaction_read_only')", true),
    ("", true),
    (" -- only a comment", true),
    ("INSERT INTO t VALUES (1)", false),
    ("UPDATE t SET a = 1", false),
    ("DELETE FROM t", false),
    ("SELECT 1; DELETE FROM t", false),
    ("SELECT 1; COMMIT; SELECT 2", false),
    ("SELECT 1; ROLLBACK; SELECT 2", false),
    ("BEGIN; SELECT 1; COMMIT", true),
    ("END; SELECT 1", false),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", false),
    ("EXPLAIN ANALYZE DELETE FROM t", false),
    ("EXPLAIN (ANALYZE) CREATE TABLE x AS SELECT 1", false),
    ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", false),
    ("SET ROLE postgres", false),
    ("SET LOCAL ROLE postgres", false),
    ("SET \"role\" = postgres", false),
    ("SET SESSION AUTHORIZATION postgres", false),
    ("RESET ROLE", false),
    ("RESET SESSION AUTHORIZATION", false),
    ("SET default_transaction_read_only = off", false),
    ("SET \"default_transaction_read_only\" = off", false),
    ("SET U&\"default\\005ftransaction\\005fread\\005fonly\" = off", false),
    ("SET transaction_read_only TO on", false),
    ("RESET default_transaction_read_only", false),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", false),
    ("SET TRANSACTION READ WRITE", false),
    ("BEGIN READ WRITE", false),
    ("START TRANSACTION READ WRITE", false),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE", false),
    ("SET client_encoding = 'SJIS'", false),
    ("SET NAMES 'LATIN1'", false),
    ("SET standard_conforming_strings = off", false),
    ("PREPARE TRANSACTION 'x'", false),
    ("COPY t FROM STDIN", false),
    ("COPY t TO '/tmp/x'", false),
    ("COPY t TO PROGRAM 'id'", false),
    ("COPY (SELECT 1) TO '/tmp/x'", false),
    ("COPY t TO ''", false),
    ("COPY t TO '' ; SELECT 1 AS stdout", false),
    ("COPY (SELECT 'a' SIMILAR TO stdout FROM t) TO ''", false),
    ("COPY (SELECT 'a' SIMILAR TO 'b') TO STDOUT", true),
    ("SELECT brin_summarize_new_values('i')", false),
    ("PREPARE p AS DELETE FROM t", false),
    (
        "DECLARE c CURSOR FOR WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        false,
    ),
    ("CALL do_things()", false),
    ("DO $$ BEGIN DELETE FROM t; END $$", false),
    ("CREATE TABLE x (a int)", false),
    ("CREATE TEMP TABLE x (a int)", false),
    ("DROP TABLE t", false),
    ("ALTER TABLE t ADD COLUMN b int", false),
    ("ALTER SYSTEM SET fsync = off", false),
    ("GRANT SELECT ON t TO bob", false),
    ("TRUNCATE t", false),
    ("LOAD 'plpgsql'", false),
    ("SELECT * INTO new_t FROM t", false),
    ("SELECT * FROM t FOR UPDATE", false),
    ("SELECT * FROM t FOR SHARE", false),
    ("SELECT * FROM t FOR NO KEY UPDATE", false),
    ("SELECT set_config('transaction_read_only', 'off', false)", false),
    (
        "SELECT pg_catalog.set_config('default_transaction_read_only', 'off', false)",
        false,
    ),
    (
        "SELECT \"set_config\"('default_transaction_read_only', 'off', false)",
        false,
    ),
    (
        "SELECT set_config /* x */ ('default_transaction_read_only', 'off', false)",
        false,
    ),
    (
        "SELECT U&\"set\\005fconfig\"('default_transaction_read_only', 'off', false)",
        false,
    ),
    (
        "SELECT 1 /* /* nested */ still a comment */; SELECT set_config('a.b','c',false)",
        false,
    ),
    ("SELECT 1 --\rSELECT set_config('a.b','c',false)", false),
    ("SELECT * FROM (SELECT set_config('a.b','c',false)) s", false),
    ("SELECT pg_terminate_backend(123)", false),
    ("SELECT pg_cancel_backend(123)", false),
    ("SELECT dblink_exec('x', 'delete from t')", false),
    ("SELECT * FROM dblink('x', 'select 1') AS t(a int)", false),
    ("SELECT pg_advisory_lock(1)", false),
    ("SELECT lo_import('/etc/passwd')", false),
    (
        "SELECT query_to_xml('delete from t returning 1', true, true, '')",
        false,
    ),
    ("SELECT * FROM ts_stat('select 1')", false),
    ("NOTIFY ch, 'x'", false),
    ("VACUUM t", false),
    ("ANALYZE t", false),
    ("CHECKPOINT", false),
    ("LOCK TABLE t", false),
    ("SELEC 1 FROM", false),
    ("REFRESH MATERIALIZED VIEW mv", false),
    (
        "UPDATE pg_settings SET setting = 'off' WHERE name = 'default_transaction_read_only'",
        false,
    ),
];

#[test]
fn read_only_table() {
    let c = Classifier::new();
    let mut wrong = Vec::new();
    for (sql, allowed) in CASES {
        for v in [c.classify(sql), Arc::new(classify(sql))] {
            if v.read_only_refusal.is_none() != *allowed {
                wrong.push(format!("{sql:?}: expected allowed={allowed}, got {v:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(CASES.len() >= 100);
}

#[test]
fn classes_for_audit() {
    assert_eq!(classify("SELECT 1").class, Class::Read);
    assert_eq!(classify("INSERT INTO t VALUES (1)").class, Class::Write);
    assert_eq!(classify("CREATE TABLE x (a int)").class, Class::Ddl);
    assert_eq!(classify("BEGIN").class, Class::Transaction);
    assert_eq!(classify("SET a.b = 1").class, Class::Session);
    assert_eq!(classify("SELECT 1; DROP TABLE t").class, Class::Ddl);
    assert_eq!(classify("COPY t FROM STDIN").class, Class::Write);
    assert_eq!(classify("EXPLAIN ANALYZE DELETE FROM t").class, Class::Write);
    assert_eq!(classify("not sql at all").class, Class::Unparsed);
    assert_eq!(classify("  ; ").class, Class::Empty);
    assert_eq!(classify("SELECT 1; SELECT 2").statements, 2);
}

#[test]
fn masked_keys_cover_plain_texts_only() {
    let k = |s: &str| masked_key(s);
    assert_eq!(k("SELECT * FROM t WHERE id = 42"), k("SELECT * FROM t WHERE id = 7"));
    assert_eq!(k("SELECT 'a' , 'it''s'"), k("SELECT 'b' , 'x'"));
    assert_ne!(k("SELECT 1"), k("SELECT '1'"));
    assert_ne!(k("SELECT 1 <= 2"), k("SELECT 1 < = 2"));
    for unmaskable in [
        "SELECT E'x'",
        "SELECT 'a\\b'",
        "SELECT 1 -- c",
        "SELECT /* c */ 1",
        "SELECT \"Id\" FROM t",
        "SELECT $1",
        "SELECT $$x$$",
        "SELECT U&'x'",
        "SELECT 1234567890",
        "SELECT 1.5",
        "SELECT 1e5",
        "SELECT 0x1f",
        "SELECT B'101'",
        "SELECT ü",
        "SELECT 1\x0c",
        "SELECT 'unterminated",
    ] {
        assert_eq!(k(unmaskable), None, "{unmaskable}");
    }
}

#[test]
fn the_cache_shares_verdicts_across_literals_and_never_across_meanings() {
    let c = Classifier::new();
    c.classify("SELECT * FROM t WHERE id = 1");
    c.classify("SELECT * FROM t WHERE id = 2");
    assert_eq!(c.len(), 1);
    // Same fingerprint under the old lexer, different meanings: both must stand alone.
    assert!(c.classify("SELECT 1 /* */ ").read_only_refusal.is_none());
    assert!(
        c.classify("SELECT 1 /* */ ; SELECT set_config('a.b','c',false)")
            .read_only_refusal
            .is_some()
    );
    assert!(
        c.classify("SELECT E'\\' ; SELECT set_config(''a.b'',''c'',false) ; '")
            .read_only_refusal
            .is_none()
    );
    assert!(
        c.classify("SELECT '\\' ; SELECT set_config('a.b','c',false) ; '")
            .read_only_refusal
            .is_some()
    );
}

#[test]
fn the_cache_is_bounded_in_bytes() {
    let c = Classifier::new();
    for i in 0..3000 {
        let sql = format!("SELECT \"c{i}\", '{}' FROM t", "x".repeat(2000));
        c.classify(&sql);
    }
    assert!(c.bytes() <= 2 * GENERATION_BYTES + 4096, "{}", c.bytes());
}

#[test]
fn a_nul_inside_a_literal_never_shares_a_cached_verdict() {
    // Found by the sql_classify fuzz target: "SELECT '\0a'" masked to the key of
    // "SELECT 'a'" and got its Read verdict, while PostgreSQL's parser rejects it.
    let c = Classifier::new();
    assert_eq!(c.classify("SELECT 'a'").class, Class::Read);
    assert_eq!(c.classify("SELECT '\0a'").class, Class::Unparsed);
}

#[test]
fn passwords_are_redacted_with_the_servers_scanner() {
    let v = classify("ALTER ROLE bob PASSWORD 's3cr3t'");
    assert!(v.secret);
    assert!(classify("CREATE USER bob WITH LOGIN PASSWORD 'x'").secret);
    assert!(!classify("SELECT 'password'").secret);
    assert_eq!(
        redact("ALTER ROLE bob PASSWORD 's3cr3t'"),
        "ALTER ROLE bob PASSWORD '***'"
    );
    assert_eq!(
        redact("CREATE ROLE \"Bob\" LOGIN PASSWORD /* c */ E'it\\'s' VALID UNTIL 'infinity'"),
        "CREATE ROLE \"Bob\" LOGIN PASSWORD /* c */ '***' VALID UNTIL 'infinity'"
    );
    assert!(!redact("alter user x password $q$hunter2$q$").contains("hunter2"));
}

/// A tiny deterministic generator (xorshift), so the property runs without a dependency and
/// the same texts every time.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        let n = usize::try_from(self.next() % xs.len() as u64).unwrap_or(0);
        xs[n]
    }
}

const FRAGMENTS: &[&str] = &[
    "SELECT",
    "select",
    "FROM",
    "t",
    "WHERE",
    "id",
    "=",
    "<",
    ">",
    "<=",
    "<>",
    "!=",
    "(",
    ")",
    ",",
    ";",
    ".",
    "*",
    "+",
    "-",
    "/",
    "%",
    "::",
    "int",
    "text",
    "AND",
    "OR",
    "NOT",
    "IN",
    "set_config",
    "nextval",
    "DELETE",
    "INSERT INTO",
    "UPDATE",
    "SET",
    "RESET",
    "BEGIN",
    "READ WRITE",
    "READ ONLY",
    "COMMIT",
    "EXPLAIN",
    "ANALYZE",
    "COPY",
    "TO",
    "STDOUT",
    "PROGRAM",
    "default_transaction_read_only",
    "role",
    "LIMIT",
    "1",
    "42",
    "007",
    "123456789",
    "1234567890",
    "1.5",
    ".5",
    "1e3",
    "0x1F",
    "1_000",
    "'a'",
    "'it''s'",
    "''",
    "'x\\y'",
    "E'\\''",
    "U&'\\0041'",
    "B'101'",
    "X'1F'",
    "N'n'",
    "\"Q\"",
    "\"a\"\"b\"",
    "U&\"d\\0061\"",
    "$1",
    "$$d$$",
    "$t$ x $t$",
    "-- c\n",
    "--\r",
    "/* c */",
    "/* /* n */ */",
    "\n",
    "\r",
    "\t",
    " ",
    "  ",
    "\u{0c}",
    "é",
    "ß",
    "'é'",
    "?",
    "@",
    "#",
    "~",
    "^",
    "|",
    "&",
    "!",
    "[",
    "]",
    ":",
];

fn generate(g: &mut Gen) -> String {
    let n = 1 + g.next() % 14;
    let mut s = String::new();
    for _ in 0..n {
        s.push_str(g.pick(FRAGMENTS));
        if !g.next().is_multiple_of(3) {
            s.push(' ');
        }
    }
    s
}

/// Replace every masked literal with another of the same kind.
fn vary(sql: &str, spans: &[(usize, usize)], g: &mut Gen) -> String {
    let mut out = String::new();
    let mut last = 0;
    for &(s, e) in spans {
        out.push_str(&sql[last..s]);
        if sql.as_bytes()[s] == b'\'' {
            out.push_str(g.pick(&[
                "'zz'",
                "''",
                "'a''b'",
                "'delete from t'",
                "'é'",
                "'); DROP TABLE t; --'",
            ]));
        } else {
            out.push_str(g.pick(&["0", "9", "123456789", "77"]));
        }
        last = e;
    }
    out.push_str(&sql[last..]);
    out
}

/// Differential property against PostgreSQL's own scanner and parser: every text the hand
/// lexer masks is one the server scans to the same literal tokens (no comment, no other
/// constant), and varying the literals never changes the verdict (so one masked key can
/// never stand for two meanings).
#[test]
fn masked_keys_agree_with_postgresqls_scanner_and_verdicts_ignore_literals() {
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let (mut masked_n, mut total) = (0, 0);
    let constants = [
        pg_query::protobuf::Token::Iconst as i32,
        pg_query::protobuf::Token::Sconst as i32,
        pg_query::protobuf::Token::Fconst as i32,
        pg_query::protobuf::Token::Bconst as i32,
        pg_query::protobuf::Token::Xconst as i32,
        pg_query::protobuf::Token::Usconst as i32,
        pg_query::protobuf::Token::Param as i32,
    ];
    let comments = [
        pg_query::protobuf::Token::SqlComment as i32,
        pg_query::protobuf::Token::CComment as i32,
    ];
    for _ in 0..20_000 {
        let sql = generate(&mut g);
        total += 1;
        // Never a panic, whatever the text.
        let v = classify(&sql);
        let mut spans = Vec::new();
        let Some(key) = masked(&sql, Some(&mut spans)) else {
            continue;
        };
        masked_n += 1;
        let tokens = pg_query::scan(&sql)
            .map(|r| r.tokens)
            .unwrap_or_else(|e| panic!("{sql:?}: masked but the scanner fails: {e}"));
        let theirs: Vec<(usize, usize)> = tokens
            .iter()
            .filter(|t| constants.contains(&t.token))
            .map(|t| {
                (
                    usize::try_from(t.start).unwrap_or(0),
                    usize::try_from(t.end).unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(
            theirs, spans,
            "{sql:?}: literal tokens differ from the server's scanner: {tokens:?}"
        );
        assert!(
            !tokens.iter().any(|t| comments.contains(&t.token)),
            "{sql:?}: comment in a masked text"
        );
        for _ in 0..3 {
            let other = vary(&sql, &spans, &mut g);
            assert_eq!(
                masked_key(&other).as_deref(),
                Some(key.as_str()),
                "{sql:?} vs {other:?}"
            );
            let w = classify(&other);
            if v.class == Class::Unparsed {
                // Never cached; the parser's message may quote the literal.
                assert_eq!(w.class, Class::Unparsed, "{sql:?} vs {other:?}");
            } else {
                assert_eq!(w, v, "{sql:?} vs {other:?}: same masked key, other verdict");
            }
        }
    }
    assert!(
        masked_n > 2_000,
        "only {masked_n} of {total} generated texts were maskable"
    );
}
