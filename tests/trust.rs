//! Trust on every leg: Postgres clients set up by the CLI verify the gateway (sslmode=verify-full
//! against the CA pinned at login) and refuse a man in the middle; drivers (psql, psycopg,
//! pgjdbc, node-postgres) connect verified through the service file or the `PG*` exports;
//! protocol 3.2 clients get NegotiateProtocolVersion and long cancel keys; a hostile upstream
//! cannot make the gateway burn CPU on SCRAM; SASLprep passwords work against real PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::pg::{Pg, cluster};
use support::*;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A gateway.toml body: one postgres resource `prod-db` at `address`/`db` with the read-write
/// credential `rw_user` (password in rw.pw) and, if `ro`, app_ro for read-only.
fn resource_config(address: &str, db: &str, rw_user: &str, ro: bool) -> String {
    let ro = if ro {
        "credentials.read-only = { user = \"app_ro\", password_file = \"ro.pw\" }\n"
    } else {
        ""
    };
    format!(
        r#"[postgres]
allow_plaintext = true
startup_timeout = "2s"

{ids}
[[resources]]
name = "prod-db"
kind = "postgres"
address = "{address}"
database = "{db}"
{ro}credentials.read-write = {{ user = "{rw_user}", password_file = "rw.pw" }}

[[policies]]
name = "production"
resources = ["prod-*"]
requesters = ["dev"]
approvers = ["dba"]
"#,
        ids = identities()
    )
}

/// Start a gateway on `body`, write the read-write password and give alice a read-write grant.
fn granted_gateway(body: &str, rw_password: &str) -> Gateway {
    let gw = Gateway::start_pg(body);
    std::fs::write(gw.dir.path().join("ro.pw"), "ro-secret\n").unwrap();
    std::fs::write(gw.dir.path().join("rw.pw"), format!("{rw_password}\n")).unwrap();
    gw.granted(&["prod-db", "--access", "read-write", "--for", "30m", "--reason", "test"]);
    gw
}

/// A gateway in front of a fresh database; alice holds a read-write grant.
fn setup() -> (Gateway, Pg) {
    let pg = cluster();
    let db = pg.fresh_db();
    let gw = granted_gateway(
        &resource_config(&format!("127.0.0.1:{}", pg.port), &db, "app_rw", true),
        "rw-secret",
    );
    (gw, pg)
}

/// The CLI as alice (her token, the gateway's URL, HOME in the gateway's folder).
fn cli(gw: &Gateway, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("JITGATE_URL", &gw.url)
        .env("HOME", gw.dir.path())
        .env("JITGATE_TOKEN", token("alice"))
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("JITGATE_CONFIG_DIR")
        .env_remove("JITGATE_CA_FILE");
    c
}

/// A client process with no libpq variables from the test's own environment.
fn clean(mut c: Command) -> Command {
    for v in [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
        "PGPASSFILE",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGSSLMODE",
        "PGSSLROOTCERT",
        "NODE_EXTRA_CA_CERTS",
    ] {
        c.env_remove(v);
    }
    c
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}{}", text(&o.stdout), text(&o.stderr));
    text(&o.stdout)
}

/// A man in the middle: answers the SSLRequest, completes TLS with a certificate of its own
/// (self-signed, naming 127.0.0.1 and localhost, as any attacker can make), asks for a
/// cleartext password and keeps whatever the client sends.
struct Mitm {
    captured: Arc<Mutex<Vec<u8>>>,
    handshakes: Arc<Mutex<usize>>,
}

impl Mitm {
    fn start(addr: SocketAddr, dir: &Path) -> Self {
        let (crt, key) = (dir.join("mitm.crt"), dir.join("mitm.key"));
        let o = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .args([
                "-days",
                "2",
                "-subj",
                "/CN=jitgate gateway",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(&crt)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let k = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
        let cfg = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, k)
                .unwrap(),
        );
        let l = TcpListener::bind(addr).unwrap();
        let captured = Arc::new(Mutex::new(Vec::new()));
        let handshakes = Arc::new(Mutex::new(0));
        let (cap, hs) = (captured.clone(), handshakes.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let (cfg, cap, hs) = (cfg.clone(), cap.clone(), hs.clone());
                std::thread::spawn(move || {
                    let _ = Self::serve(s, cfg, &cap, &hs);
                });
            }
        });
        Self { captured, handshakes }
    }

    fn serve(
        mut s: TcpStream,
        cfg: Arc<rustls::ServerConfig>,
        cap: &Mutex<Vec<u8>>,
        hs: &Mutex<usize>,
    ) -> std::io::Result<()> {
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut req = [0u8; 8];
        s.read_exact(&mut req)?;
        s.write_all(b"S")?;
        let conn = rustls::ServerConnection::new(cfg).map_err(std::io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, s);
        let mut len = [0u8; 4];
        tls.read_exact(&mut len)?;
        *hs.lock().unwrap() += 1;
        let mut startup = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
        tls.read_exact(&mut startup)?;
        tls.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3])?;
        tls.flush()?;
        let mut pw = vec![0u8; 4096];
        let n = tls.read(&mut pw)?;
        cap.lock().unwrap().extend_from_slice(&pw[..n]);
        Ok(())
    }

    fn saw(&self, needle: &str) -> bool {
        let c = self.captured.lock().unwrap();
        c.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    fn handshakes(&self) -> usize {
        *self.handshakes.lock().unwrap()
    }
}

/// The attacker answers on the gateway's port at another loopback address; a client is sent
/// there with libpq's PGHOSTADDR (the address to dial, while `host` stays the name verified),
/// as a spoofed DNS answer or a hijacked route would.
const MITM_IP: &str = "127.0.0.2";

#[test]
fn cli_written_clients_verify_the_gateway_and_refuse_a_man_in_the_middle() {
    let (gw, _pg) = setup();
    let (_, port) = gw.pg_host_port();
    let mitm = Mitm::start(format!("{MITM_IP}:{port}").parse().unwrap(), gw.dir.path());
    let tok = token("alice");
    let conf = gw.dir.path().join(".config/jitgate");

    // pg-service: a block of its own in the service file, next to the user's own sections.
    let svc = gw.dir.path().join("pg_service.conf");
    std::fs::write(&svc, "[mine]\nhost=db.internal\n").unwrap();
    std::fs::write(gw.dir.path().join(".pgpass"), "*:*:*:*:users-own-wildcard\n").unwrap();
    let o = cli(&gw, &["pg-service", "--file", svc.to_str().unwrap()])
        .output()
        .unwrap();
    let said = ok(&o);
    assert!(said.contains("psql service=prod-db"), "{said}");
    let o = cli(&gw, &["pg-service", "--file", svc.to_str().unwrap()])
        .output()
        .unwrap();
    ok(&o);
    let file = std::fs::read_to_string(&svc).unwrap();
    assert!(file.starts_with("[mine]\nhost=db.internal\n"), "{file}");
    assert_eq!(file.matches("[prod-db]").count(), 1, "re-running replaces: {file}");
    assert!(file.contains("sslmode=verify-full"), "{file}");
    let ca = conf.join("gateway-ca.pem");
    assert!(file.contains(&format!("sslrootcert={}", ca.display())), "{file}");
    // The pinned CA is the gateway's own (data_dir/tls/ca.crt), not the leaf.
    assert_eq!(
        std::fs::read_to_string(&ca).unwrap(),
        std::fs::read_to_string(gw.data_dir().join("tls/ca.crt")).unwrap()
    );
    // The token went into jitgate's block at the top of the user's passfile; their own
    // entries stay, after it (the first match wins).
    let pgpass = gw.dir.path().join(".pgpass");
    let pass = std::fs::read_to_string(&pgpass).unwrap();
    assert!(pass.starts_with("# >>> jitgate"), "{pass}");
    assert!(pass.contains(&format!(":*:alice@example.com:{tok}\n")), "{pass}");
    assert_eq!(pass.matches("# >>> jitgate").count(), 1, "{pass}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(&pgpass).unwrap().permissions().mode();
        assert_eq!(m & 0o777, 0o600, "libpq ignores a passfile others can read");
    }

    let psql_service = |via_mitm: bool| {
        let mut c = clean(Command::new("psql"));
        c.args(["-X", "-A", "-t", "-c", "SELECT 40 + 2", "service=prod-db"])
            .env("PGSERVICEFILE", &svc)
            .env("HOME", gw.dir.path())
            .env("PGCONNECT_TIMEOUT", "5");
        if via_mitm {
            c.env("PGHOSTADDR", MITM_IP);
        }
        c.output().unwrap()
    };
    // The real gateway: verified, no flags, no password typed.
    assert_eq!(ok(&psql_service(false)).trim(), "42");
    // The impostor: refused during the handshake, before any password.
    let o = psql_service(true);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("certificate verify failed"),
        "{}",
        text(&o.stderr)
    );

    // jitgate connect: the same.
    let connect = |via_mitm: bool| {
        let mut c = clean(cli(
            &gw,
            &["connect", "prod-db", "--", "-X", "-A", "-t", "-c", "SELECT 6 * 7"],
        ));
        c.env("PGCONNECT_TIMEOUT", "5");
        if via_mitm {
            c.env("PGHOSTADDR", MITM_IP);
        }
        c.output().unwrap()
    };
    let o = connect(false);
    assert_eq!(ok(&o).trim(), "42");
    assert!(text(&o.stderr).contains("sslmode=verify-full"), "{}", text(&o.stderr));
    let o = connect(true);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("certificate verify failed"),
        "{}",
        text(&o.stderr)
    );

    // pg-env: the exports, evaluated by a shell.
    let o = cli(&gw, &["pg-env", "prod-db"]).output().unwrap();
    let exports = ok(&o);
    for k in [
        "PGHOST=",
        "PGSSLMODE=verify-full",
        "PGSSLROOTCERT=",
        "PGPASSFILE=",
        "NODE_EXTRA_CA_CERTS=",
    ] {
        assert!(exports.contains(k), "{exports}");
    }
    assert!(!exports.contains(&tok), "the token stays in the passfile: {exports}");
    let env_psql = |via_mitm: bool| {
        let mut c = clean(Command::new("bash"));
        c.arg("-c")
            .arg(format!("{exports}\npsql -X -A -t -c 'SELECT 1 + 1'"))
            .env("PGCONNECT_TIMEOUT", "5");
        if via_mitm {
            c.env("PGHOSTADDR", MITM_IP);
        }
        c.output().unwrap()
    };
    assert_eq!(ok(&env_psql(false)).trim(), "2");
    let o = env_psql(true);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("certificate verify failed"),
        "{}",
        text(&o.stderr)
    );

    // None of them reached the point of sending the token.
    assert!(!mitm.saw(&tok), "a verifying client sent its token to the impostor");
    assert_eq!(
        mitm.handshakes(),
        0,
        "no verifying client finished a TLS handshake with it"
    );

    // What sslmode=require (the old advice) does in the same place: hands the token over.
    let (h, p) = gw.pg_host_port();
    let o = clean(Command::new("psql"))
        .args(["-X", "-c", "SELECT 1"])
        .arg(format!(
            "host={h} port={p} user=alice@example.com dbname=prod-db sslmode=require"
        ))
        .env("PGHOSTADDR", MITM_IP)
        .env("PGPASSWORD", &tok)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        support::eventually(Duration::from_secs(5), || mitm.saw(&tok)),
        "the control case should leak the token to the man in the middle"
    );
}

/// `$JITGATE_TOOLS_DIR` as scripts/install-deps computes it (node-postgres lives there).
fn tools_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("JITGATE_TOOLS_DIR") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    cache.join("jitgate")
}

#[test]
fn psycopg_pgjdbc_and_node_postgres_connect_verified_from_the_cli_files() {
    let (gw, _pg) = setup();
    let (_, port) = gw.pg_host_port();
    let mitm = Mitm::start(format!("{MITM_IP}:{port}").parse().unwrap(), gw.dir.path());
    let svc = gw.dir.path().join("pg_service.conf");
    ok(&cli(&gw, &["pg-service", "--file", svc.to_str().unwrap()])
        .output()
        .unwrap());
    let exports = ok(&cli(&gw, &["pg-env", "prod-db"]).output().unwrap());
    let vars: Vec<(String, String)> = exports
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect();
    let get = |k: &str| vars.iter().find(|(a, _)| a == k).map(|x| x.1.clone()).unwrap();

    // psycopg 3 (libpq): service file; then the impostor.
    let py = "import sys, psycopg\n\
              c = psycopg.connect(sys.argv[1], connect_timeout=5)\n\
              print(c.execute('SELECT 40 + 2').fetchone()[0], c.pgconn.ssl_in_use)\n";
    let run_py = |via_mitm: bool| {
        let mut c = clean(Command::new("python3"));
        c.args(["-c", py, "service=prod-db"])
            .env("PGSERVICEFILE", &svc)
            .env("HOME", gw.dir.path());
        if via_mitm {
            c.env("PGHOSTADDR", MITM_IP);
        }
        c.output().unwrap()
    };
    assert_eq!(ok(&run_py(false)).trim(), "42 True");
    let o = run_py(true);
    assert!(
        !o.status.success() && text(&o.stderr).contains("certificate verify failed"),
        "{}",
        text(&o.stderr)
    );

    // pgjdbc: the service file and the passfile, no password in the program.
    let java = gw.dir.path().join("J.java");
    std::fs::write(
        &java,
        "public class J { public static void main(String[] a) throws Exception {\n\
           try (var c = java.sql.DriverManager.getConnection(a[0])) {\n\
             var r = c.createStatement().executeQuery(\"SELECT 40 + 2\"); r.next();\n\
             System.out.println(r.getInt(1)); } } }\n",
    )
    .unwrap();
    // Java finds ~/.pgpass through user.home (the passwd entry, not $HOME).
    let home = format!("-Duser.home={}", gw.dir.path().display());
    let o = clean(Command::new("java"))
        .arg(&home)
        .args(["-cp", "/usr/share/java/postgresql.jar"])
        .arg(&java)
        .arg("jdbc:postgresql://?service=prod-db")
        .env("PGSERVICEFILE", &svc)
        .env("HOME", gw.dir.path())
        .output()
        .unwrap();
    assert_eq!(ok(&o).trim(), "42");
    // pgjdbc really verifies: the same service against a CA that did not sign the gateway.
    let wrong = gw.dir.path().join("pg_service_wrong.conf");
    let other_ca = gw.dir.path().join("mitm.crt");
    std::fs::write(
        &wrong,
        std::fs::read_to_string(&svc)
            .unwrap()
            .replace(&get("PGSSLROOTCERT"), other_ca.to_str().unwrap()),
    )
    .unwrap();
    let o = clean(Command::new("java"))
        .arg(&home)
        .args(["-cp", "/usr/share/java/postgresql.jar"])
        .arg(&java)
        .arg("jdbc:postgresql://?service=prod-db")
        .env("PGSERVICEFILE", &wrong)
        .env("HOME", gw.dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o.stdout));
    assert!(
        text(&o.stderr).contains("PKIX") || text(&o.stderr).contains("SSL"),
        "{}",
        text(&o.stderr)
    );

    // node-postgres: the PG* exports (it reads PGSSLMODE and the passfile; Node trusts
    // NODE_EXTRA_CA_CERTS, not PGSSLROOTCERT).
    let node_modules = tools_dir().join("node-pg/node_modules");
    assert!(
        node_modules.join("pg").exists(),
        "node-postgres missing in {}: run ./scripts/install-deps",
        node_modules.display()
    );
    let js = "const { Client } = require('pg');\n\
              const c = new Client();\n\
              c.connect().then(() => c.query('SELECT 40 + 2 AS n')).then(r => { console.log(r.rows[0].n, c.connection.stream.authorized); return c.end(); })\n\
              .catch(e => { console.error(e.message); process.exit(1); });\n";
    let run_node = |extra_ca: Option<&str>| {
        let mut c = clean(Command::new("node"));
        c.args(["-e", js]).env("NODE_PATH", &node_modules);
        for (k, v) in &vars {
            if k != "NODE_EXTRA_CA_CERTS" {
                c.env(k, v);
            }
        }
        if let Some(ca) = extra_ca {
            c.env("NODE_EXTRA_CA_CERTS", ca);
        }
        c.output().unwrap()
    };
    assert_eq!(ok(&run_node(Some(&get("NODE_EXTRA_CA_CERTS")))).trim(), "42 true");
    // Without the pinned CA, Node's verification refuses the gateway: it really checks.
    let o = run_node(None);
    assert!(!o.status.success(), "{}", text(&o.stdout));
    assert!(text(&o.stderr).contains("certificate"), "{}", text(&o.stderr));
    assert!(!mitm.saw(&token("alice")));
}

/// Read one backend message (tag, body) from a raw socket.
fn read_msg(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 5];
    s.read_exact(&mut h).unwrap();
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).unwrap();
    (h[0], body)
}

fn startup(version: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut b = vec![0, 0, 0, 0];
    b.extend_from_slice(&version.to_be_bytes());
    for (k, v) in params {
        b.extend_from_slice(k.as_bytes());
        b.push(0);
        b.extend_from_slice(v.as_bytes());
        b.push(0);
    }
    b.push(0);
    let n = u32::try_from(b.len()).unwrap().to_be_bytes();
    b[..4].copy_from_slice(&n);
    b
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut b = vec![tag];
    b.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
    b.extend_from_slice(body);
    b
}

#[test]
fn protocol_3_2_clients_get_negotiation_and_long_cancel_keys() {
    let (gw, _pg) = setup();
    let (h, p) = gw.pg_host_port();
    let tok = token("alice");

    // Raw: a 3.3 client with a protocol option is told 3.2 and the option's name, then logs in
    // and gets a 32-byte cancel key; a CancelRequest with that key cancels its query.
    let mut s = TcpStream::connect((h.as_str(), p)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&startup(
        196_611,
        &[
            ("user", "alice@example.com"),
            ("database", "prod-db"),
            ("_pq_.compression", "on"),
        ],
    ))
    .unwrap();
    let (t, b) = read_msg(&mut s);
    assert_eq!(t, b'v', "NegotiateProtocolVersion first");
    assert_eq!(&b[..4], &196_610i32.to_be_bytes(), "3.2, the newest the gateway speaks");
    assert_eq!(&b[4..8], &1i32.to_be_bytes());
    assert_eq!(&b[8..], b"_pq_.compression\0");
    let (t, b) = read_msg(&mut s);
    assert_eq!((t, &b[..]), (b'R', &3i32.to_be_bytes()[..]));
    let mut pw = tok.as_bytes().to_vec();
    pw.push(0);
    s.write_all(&frame(b'p', &pw)).unwrap();
    let mut key = None;
    loop {
        let (t, b) = read_msg(&mut s);
        match t {
            b'K' => key = Some(b),
            b'Z' => break,
            b'E' => panic!("login failed: {}", text(&b)),
            _ => {}
        }
    }
    let key = key.expect("BackendKeyData");
    assert_eq!(key.len(), 4 + 32, "a 3.2 client gets a 256-bit cancel key");
    s.write_all(&frame(b'Q', b"SELECT pg_sleep(20)\0")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let mut c = TcpStream::connect((h.as_str(), p)).unwrap();
    let mut req = Vec::new();
    req.extend_from_slice(&u32::try_from(8 + key.len()).unwrap().to_be_bytes());
    req.extend_from_slice(&80_877_102i32.to_be_bytes());
    req.extend_from_slice(&key);
    c.write_all(&req).unwrap();
    let (t, b) = loop {
        let (t, b) = read_msg(&mut s);
        if t != b'T' {
            break (t, b);
        }
    };
    assert_eq!(t, b'E', "{}", text(&b));
    assert!(text(&b).contains("57014"), "query_canceled: {}", text(&b));
    assert!(started.elapsed() < Duration::from_secs(10));
    // A wrong long key cancels nothing (the next query runs to completion).
    drop(c);

    // libpq 18 (psycopg's wheel) asking for 3.2: works, and its cancel works.
    let py = format!(
        "import psycopg, threading, time\n\
         c = psycopg.connect('host={h} port={p} user=alice@example.com dbname=prod-db sslmode=require max_protocol_version=3.2', password='{tok}', autocommit=True)\n\
         print(psycopg.pq.version() >= 180000, c.execute('SELECT 1').fetchone()[0])\n\
         threading.Timer(0.5, c.cancel_safe).start()\n\
         t = time.time()\n\
         try:\n    c.execute('SELECT pg_sleep(20)')\n    print('not cancelled')\n\
         except psycopg.errors.QueryCanceled:\n    print('cancelled', time.time() - t < 10)\n"
    );
    let o = clean(Command::new("python3")).args(["-c", &py]).output().unwrap();
    assert_eq!(ok(&o).trim(), "True 1\ncancelled True");
}

/// A fake upstream that asks for SCRAM with `iterations` and records when it got the client's
/// first message. Returns its address.
fn scram_upstream(iterations: u32) -> SocketAddr {
    fake_upstream(Some(iterations))
}

/// A fake upstream offering SCRAM; `None`: after the client's first message it claims success
/// (AuthenticationOk, ReadyForQuery) without ever proving it knows the password.
fn fake_upstream(iterations: Option<u32>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(30))).ok();
                let mut len = [0u8; 4];
                if s.read_exact(&mut len).is_err() {
                    return;
                }
                let mut startup = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
                if s.read_exact(&mut startup).is_err() {
                    return;
                }
                let mut body = 10i32.to_be_bytes().to_vec();
                body.extend_from_slice(b"SCRAM-SHA-256\0\0");
                s.write_all(&frame(b'R', &body)).ok();
                let (_, first) = read_msg(&mut s);
                let Some(iterations) = iterations else {
                    let mut b = frame(b'R', &0i32.to_be_bytes());
                    b.extend_from_slice(&frame(b'Z', b"I"));
                    s.write_all(&b).ok();
                    let mut rest = [0u8; 1024];
                    let _ = s.read(&mut rest);
                    return;
                };
                let first = text(&first);
                let nonce = first.rsplit("r=").next().unwrap_or("").to_string();
                let mut body = 11i32.to_be_bytes().to_vec();
                body.extend_from_slice(format!("r={nonce}srv,s=QUJDREVGR0g=,i={iterations}").as_bytes());
                s.write_all(&frame(b'R', &body)).ok();
                let mut rest = [0u8; 1024];
                let _ = s.read(&mut rest);
            });
        }
    });
    addr
}

#[test]
fn a_hostile_upstream_asking_for_ten_million_scram_iterations_is_refused_at_once() {
    let fake = scram_upstream(10_000_000);
    let gw = granted_gateway(&resource_config(&fake.to_string(), "x", "app_rw", false), "rw-secret");
    let (h, p) = gw.pg_host_port();
    let started = Instant::now();
    let o = clean(Command::new("psql"))
        .args(["-X", "-c", "SELECT 1"])
        .arg(format!(
            "host={h} port={p} user=alice@example.com dbname=prod-db sslmode=disable"
        ))
        .env("PGPASSWORD", token("alice"))
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(!o.status.success());
    assert!(took < Duration::from_secs(2), "refused in {took:?}");
    assert!(
        text(&o.stderr).contains("the database refused the gateway's credentials"),
        "{}",
        text(&o.stderr)
    );
    // Operators read why; the client learns nothing about the upstream's credentials.
    let log = gw.wait_log("SCRAM iterations", Duration::from_secs(5));
    assert!(
        log.contains("asks for 10000000 SCRAM iterations; jitgate accepts at most 100000"),
        "{log}"
    );
}

#[test]
fn an_upstream_that_skips_the_scram_server_proof_is_refused() {
    let fake = fake_upstream(None);
    let gw = granted_gateway(&resource_config(&fake.to_string(), "x", "app_rw", false), "rw-secret");
    let (h, p) = gw.pg_host_port();
    let o = clean(Command::new("psql"))
        .args(["-X", "-c", "SELECT 1"])
        .arg(format!(
            "host={h} port={p} user=alice@example.com dbname=prod-db sslmode=disable"
        ))
        .env("PGPASSWORD", token("alice"))
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o.stdout));
    let log = gw.wait_log("without proving", Duration::from_secs(5));
    assert!(log.contains("possible impostor"), "{log}");
}

#[test]
fn a_password_that_needs_saslprep_logs_in_to_real_postgresql() {
    let pg = cluster();
    let db = pg.fresh_db();
    // PostgreSQL stores the verifier of SASLprep("Ⅸ\u{00AD}") = "IX"; a client that hashes the raw
    // bytes is refused.
    let role = format!("saslprep_{}", std::process::id());
    pg.su(
        "postgres",
        &format!(
            "DROP ROLE IF EXISTS {role}; SET password_encryption = 'scram-sha-256'; CREATE ROLE {role} LOGIN PASSWORD E'\\u2168\\u00AD'; GRANT CONNECT ON DATABASE {db} TO {role}"
        ),
    );
    let gw = granted_gateway(
        &resource_config(&format!("127.0.0.1:{}", pg.port), &db, &role, false),
        "\u{2168}\u{00AD}",
    );
    let (h, p) = gw.pg_host_port();
    let o = clean(Command::new("psql"))
        .args(["-X", "-A", "-t", "-c", "SELECT current_user"])
        .arg(format!(
            "host={h} port={p} user=alice@example.com dbname=prod-db sslmode=disable"
        ))
        .env("PGPASSWORD", token("alice"))
        .output()
        .unwrap();
    assert_eq!(ok(&o).trim(), role);
    pg.su("postgres", &format!("DROP OWNED BY {role}; DROP ROLE {role}"));
}

#[test]
fn login_pins_the_gateway_ca_by_fingerprint_and_refuses_another() {
    let gw = Gateway::start_pg(&format!("#listen-extra http_tls = true\n{}", identities()));
    assert!(gw.url.starts_with("https://"), "{}", gw.url);
    let ca = gw.data_dir().join("tls/ca.crt");
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    let listen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(gw.data_dir().join("listen.json")).unwrap()).unwrap();
    let sha = listen["tls_ca_sha256"].as_str().unwrap().to_string();
    assert!(sha.starts_with("sha256:") && sha.len() == 71, "{sha}");
    // The operator reads the fingerprint in the log.
    assert!(gw.log().contains(&sha), "{}", gw.log());
    // The leaf the front ends present is signed by that CA.
    let o = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&ca)
        .arg(gw.data_dir().join("tls/tls.crt"))
        .output()
        .unwrap();
    assert!(ok(&o).contains("OK"));
    let pinned = gw.dir.path().join(".config/jitgate/gateway-ca.pem");
    // Unpinned, the CLI refuses the gateway and says how to pin it.
    let o = cli(&gw, &["whoami"]).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("--ca-pin"), "{}", text(&o.stderr));
    // A wrong fingerprint: refused before anything is sent, nothing pinned.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let o = cli(&gw, &["login", "--ca-pin", &wrong]).output().unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("someone may be intercepting"),
        "{}",
        text(&o.stderr)
    );
    assert!(!pinned.exists());
    // The right one (written with colons and in capitals, as people copy it): pinned; the login
    // then goes on over the verified connection (this gateway has no [oidc], so it stops there).
    let colons = sha.as_bytes()["sha256:".len()..]
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    let o = cli(&gw, &["login", "--ca-pin", &format!("SHA256:{colons}")])
        .output()
        .unwrap();
    assert!(
        text(&o.stdout).contains("pinned the gateway's CA"),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert!(!text(&o.stderr).contains("not trusted"), "{}", text(&o.stderr));
    assert_eq!(std::fs::read_to_string(&pinned).unwrap(), ca_pem);
    let o = cli(&gw, &["whoami", "--ca-file", pinned.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(ok(&o).starts_with("alice@example.com"));
}
