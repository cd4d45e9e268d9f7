//! Shared harness for end-to-end tests: start the real `jitgate serve` binary in a temp dir on a
//! free port, run the real CLI against it, read its log, audit file and metrics.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

/// Hex SHA-256, as gateway.toml's token_sha256 wants it.
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// The standard test identities: alice [dev], bob [dba], carol [dev], dave [] and root [admins].
pub fn identities() -> String {
    let mut s = String::new();
    for (name, groups) in [
        ("alice@example.com", "\"dev\""),
        ("bob@example.com", "\"dba\""),
        ("carol@example.com", "\"dev\""),
        ("dave@example.com", ""),
        ("root@example.com", "\"jitgate-admins\", \"jitgate-auditors\""),
    ] {
        let user = name.split('@').next().unwrap();
        s.push_str(&format!(
            "[[identities]]\nname = \"{name}\"\ngroups = [{groups}]\ntoken_sha256 = \"{}\"\n\n",
            sha256_hex(&format!("{user}-token"))
        ));
    }
    s
}

/// The token of a standard identity (`alice` → `alice-token`).
pub fn token(user: &str) -> String {
    format!("{user}-token")
}

pub mod idp;
pub mod pg;
pub mod slack;
pub mod ssh;

/// Run a fixture script (`scripts/test-pg up`, `scripts/test-sshd up`): it prints the path of an
/// env file of `KEY=VALUE` lines, returned as a map.
pub fn fixture(script: &str, hint: &str) -> std::collections::HashMap<String, String> {
    let mut c = Command::new(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../scripts")
            .join(script),
    );
    fixture_env(c.arg("up"), &format!("scripts/{script} up"), hint)
}

/// Run a fixture command and read the env file whose path it prints.
pub fn fixture_env(c: &mut Command, what: &str, hint: &str) -> std::collections::HashMap<String, String> {
    let out = c.output().unwrap_or_else(|e| panic!("running {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({hint}):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env_file = String::from_utf8(out.stdout).unwrap().trim().to_string();
    std::fs::read_to_string(&env_file)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub url: String,
    /// `127.0.0.1:port` of the Postgres front end, when enabled.
    pub pg_addr: String,
    /// `127.0.0.1:port` of the SSH front end, when enabled.
    pub ssh_addr: String,
    pub with_pg: bool,
    /// A shared PostgreSQL store (`postgres://...`), instead of SQLite in data_dir.
    pub store_url: Option<String>,
}

/// True in the `control_plane_pgstore` test binary: the control-plane suite compiled a second
/// time, every gateway on a fresh PostgreSQL store database instead of SQLite.
pub fn pg_store_suite() -> bool {
    env!("CARGO_CRATE_NAME") == "control_plane_pgstore"
}

impl Gateway {
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn audit_path(&self) -> PathBuf {
        self.data_dir().join("audit.jsonl")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("serve.log")
    }

    /// Write `body` (with `[gateway]`/`[listen]` prepended) and start the gateway.
    pub fn start(body: &str) -> Self {
        Self::start_with(body, false)
    }

    /// Start with the Postgres front end on a free port too.
    pub fn start_pg(body: &str) -> Self {
        Self::start_with(body, true)
    }

    /// Start a replica on the shared PostgreSQL store `store_url` (Postgres front end on).
    pub fn start_replica(body: &str, store_url: &str) -> Self {
        Self::start_full(body, true, Some(store_url.to_string()))
    }

    fn start_with(body: &str, with_pg: bool) -> Self {
        let store = pg_store_suite().then(|| pg::cluster().store_db());
        Self::start_full(body, with_pg, store)
    }

    fn start_full(body: &str, with_pg: bool, store_url: Option<String>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut g = Self {
            dir,
            child: None,
            url: String::new(),
            pg_addr: String::new(),
            ssh_addr: String::new(),
            with_pg,
            store_url,
        };
        g.write_config(body);
        g.spawn();
        g
    }

    pub fn write_config(&self, body: &str) {
        let pg = if self.with_pg {
            "postgres = \"127.0.0.1:0\"\n"
        } else {
            ""
        };
        // A body may start with `#listen-extra KEY = VALUE` to add a line to [listen].
        let (pg, body) = match body.strip_prefix("#listen-extra ") {
            Some(rest) => {
                let (line, body) = rest.split_once('\n').unwrap();
                (format!("{pg}{line}\n"), body.to_string())
            }
            None => (pg.to_string(), body.to_string()),
        };
        // Then `#gateway-extra KEY = VALUE` lines add lines to [gateway].
        let mut gw_extra = String::new();
        let mut body = body;
        while let Some(rest) = body.strip_prefix("#gateway-extra ") {
            let (line, rest) = rest.split_once('\n').unwrap();
            gw_extra.push_str(line);
            gw_extra.push('\n');
            body = rest.to_string();
        }
        if !gw_extra.contains("expiry_warning") {
            gw_extra.push_str("expiry_warning = \"1s\"\n");
        }
        let mut full =
            format!("[gateway]\ndata_dir = \"data\"\n{gw_extra}\n[listen]\nhttp = \"127.0.0.1:0\"\n{pg}\n{body}");
        if let Some(u) = &self.store_url
            && !body.contains("[store]")
        {
            // The URL carries a password: a file, as an operator would.
            let f = self.dir.path().join("store-url");
            std::fs::write(&f, u).unwrap();
            full.push_str(&format!("\n[store]\nurl_file = \"{}\"\n", f.display()));
        }
        std::fs::write(self.config_path(), full).unwrap();
    }

    /// Host and port of the Postgres front end.
    pub fn pg_host_port(&self) -> (String, u16) {
        let (h, p) = self.pg_addr.rsplit_once(':').unwrap();
        (h.to_string(), p.parse().unwrap())
    }

    /// PID of the gateway process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn write_raw_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).unwrap();
    }

    pub fn spawn(&mut self) {
        let listen = self.data_dir().join("listen.json");
        let _ = std::fs::remove_file(&listen);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        // JITGATE_TEST_GATEWAY_BIN: serve with another build (e.g. target/release/jitgate, to
        // measure throughput ratios against direct runs); default: this test build's binary.
        let bin = std::env::var("JITGATE_TEST_GATEWAY_BIN").unwrap_or_else(|_| BIN.to_string());
        let child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(&listen)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            {
                self.url = v["url"].as_str().unwrap().to_string();
                self.pg_addr = v["postgres"].as_str().unwrap_or("").to_string();
                self.ssh_addr = v["ssh"].as_str().unwrap_or("").to_string();
                if self.store_url.is_some() {
                    assert!(
                        self.log().contains("shared PostgreSQL store opened"),
                        "not on the PostgreSQL store:\n{}",
                        self.log()
                    );
                }
                break;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!("jitgate serve exited with {st}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "gateway did not start:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop with SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.wait();
        }
    }

    /// Send SIGTERM and return at once (the drain runs while the test watches).
    pub fn sigterm(&self) {
        let pid = self.pid().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    }

    /// Wait up to `limit` for the process to exit; its status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let c = self.child.as_mut()?;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn sighup(&self) {
        let pid = self.child.as_ref().unwrap().id();
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Wait until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let l = self.log();
            if l.contains(needle) {
                return l;
            }
            assert!(Instant::now() < deadline, "log never contained {needle:?}:\n{l}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run the CLI as `user` (None: no token).
    pub fn cli(&self, user: Option<&str>, args: &[&str]) -> Cli {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("JITGATE_URL", &self.url)
            .env("HOME", self.dir.path())
            .env_remove("JITGATE_TOKEN")
            .env_remove("XDG_CONFIG_HOME");
        if let Some(u) = user {
            c.env("JITGATE_TOKEN", token(u));
        }
        Cli(c.output().unwrap())
    }

    /// alice requests with `args` (after `request`), bob approves; returns the approved request.
    pub fn granted(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["request"];
        a.extend_from_slice(args);
        if !a.contains(&"--json") {
            a.push("--json");
        }
        let r = self.cli(Some("alice"), &a).json();
        let id = r["id"].as_i64().unwrap().to_string();
        self.cli(Some("bob"), &["approve", &id, "--json"]).json()
    }

    /// The kinds of the audit file's events, in order.
    pub fn audit_kinds(&self) -> Vec<String> {
        self.audit_events()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.audit_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Plain HTTP GET, returning (status, body).
    pub fn http_get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let addr = self.url.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        let status: u16 = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = buf.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
        // Chunked bodies: good enough to strip chunk-size lines for text assertions.
        (status, body)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct Cli(pub Output);

impl Cli {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Assert success and return stdout.
    pub fn ok(&self) -> String {
        assert_eq!(
            self.code(),
            0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }
    /// Assert exit 1 and return stderr.
    pub fn refused(&self) -> String {
        assert_eq!(
            self.code(),
            1,
            "expected exit 1\nstdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        self.stderr()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok()).unwrap()
    }
}

/// Poll `f` until it returns true.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Lower-cased header names to values.
pub type Headers = std::collections::HashMap<String, String>;

/// A minimal HTTP receiver for webhook tests: records (headers, body) of every POST, answers 200.
pub struct Receiver {
    pub port: u16,
    pub got: std::sync::Arc<std::sync::Mutex<Vec<(Headers, String)>>>,
}

impl Receiver {
    /// Listen on `port` (0: any free port).
    pub fn start(port: u16) -> Self {
        let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = l.local_addr().unwrap().port();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let (headers, body) = loop {
                    let n = s.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break (None, String::new());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                        let headers: std::collections::HashMap<String, String> = head
                            .lines()
                            .skip(1)
                            .filter_map(|l| {
                                l.split_once(':')
                                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                            })
                            .collect();
                        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                        if rest.len() >= len {
                            break (Some(headers), rest[..len].to_string());
                        }
                    }
                };
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                if let Some(h) = headers {
                    g.lock().unwrap().push((h, body));
                }
            }
        });
        Self { port, got }
    }

    /// Bodies received so far, parsed as JSON, with their headers.
    /// A `[[notify.webhooks]]` section (JSON format) posting `events` here; the URL goes into a
    /// file under `dir` (webhook URLs are secrets).
    pub fn webhook(&self, dir: &std::path::Path, events: &[&str]) -> String {
        let url = dir.join(format!("hook-{}.url", self.port));
        std::fs::write(&url, format!("http://127.0.0.1:{}/hook\n", self.port)).unwrap();
        let events: Vec<String> = events.iter().map(|e| format!("\"{e}\"")).collect();
        format!(
            "\n[[notify.webhooks]]\nurl_file = \"{}\"\nformat = \"json\"\nevents = [{}]\n",
            url.display(),
            events.join(", ")
        )
    }

    /// Whether an event of `kind` arrived within `limit`.
    pub fn got_kind(&self, kind: &str, limit: Duration) -> bool {
        eventually(limit, || self.events().iter().any(|(_, b)| b["event"] == kind))
    }

    pub fn events(&self) -> Vec<(std::collections::HashMap<String, String>, serde_json::Value)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(h, b)| (h.clone(), serde_json::from_str(b).unwrap()))
            .collect()
    }
}
