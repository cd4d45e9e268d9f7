//! Request on connect: a user without a grant asks from inside psql (PGOPTIONS), psycopg 3 and
//! pgjdbc (their `options`), and waits there for the decision: the real `jitgate serve`, a
//! real PostgreSQL, the real clients, approvals and denials through the real CLI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::pg::cluster;
use support::*;

const OPTS: &str = "-c jitgate.reason='INC-123 slow checkout' -c jitgate.for=30m";

/// prod-db: bob (dba) approves. dev-db (same database): a rule approves dev at once.
fn setup(extra_gateway: &str) -> (Gateway, support::pg::Pg) {
    setup_with(extra_gateway, "", "")
}

/// `prod_extra`: more lines in the production policy; `tail`: more sections at the end.
fn setup_with(extra_gateway: &str, prod_extra: &str, tail: &str) -> (Gateway, support::pg::Pg) {
    let pg = cluster();
    let db = pg.fresh_db();
    let body = format!(
        r#"{extra_gateway}[postgres]
startup_timeout = "2s"

{ids}
[[resources]]
name = "prod-db"
kind = "postgres"
address = "127.0.0.1:{port}"
database = "{db}"
credentials.read-only = {{ user = "app_ro", password_file = "ro.pw" }}
credentials.read-write = {{ user = "app_rw", password_file = "rw.pw" }}

[[resources]]
name = "dev-db"
kind = "postgres"
address = "127.0.0.1:{port}"
database = "{db}"
credentials.read-only = {{ user = "app_ro", password_file = "ro.pw" }}

[[policies]]
name = "production"
resources = ["prod-*"]
requesters = ["dev"]
approvers = ["dba"]
reason_required = true
{prod_extra}

[[policies]]
name = "development"
resources = ["dev-*"]
requesters = ["dev"]
approvers = ["dba"]
[[policies.auto_approve]]
groups = ["dev"]
{tail}
"#,
        ids = identities(),
        port = pg.port
    );
    let gw = Gateway::start_pg(&body);
    std::fs::write(gw.dir.path().join("ro.pw"), "ro-secret\n").unwrap();
    std::fs::write(gw.dir.path().join("rw.pw"), "rw-secret\n").unwrap();
    (gw, pg)
}

/// A client process whose stderr is collected as it arrives.
struct Running {
    child: Child,
    err: Arc<Mutex<String>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn spawn(mut c: Command) -> Self {
        let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let err = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let e = err.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                e.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self { child, err }
    }

    fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    fn wait_stderr(&self, needle: &str, within: Duration) {
        assert!(
            eventually(within, || self.stderr().contains(needle)),
            "no {needle:?} on stderr:\n{}",
            self.stderr()
        );
    }

    /// Exit status and stdout, within `limit`.
    fn finish(mut self, limit: Duration) -> (std::process::ExitStatus, String, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let mut out = String::new();
                self.child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
                std::thread::sleep(Duration::from_millis(50));
                return (st, out, self.stderr());
            }
            assert!(Instant::now() < deadline, "client still running:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn psql(gw: &Gateway, user: &str, resource: &str, options: &str, sql: &str) -> Command {
    let (h, p) = gw.pg_host_port();
    let mut c = Command::new("psql");
    c.arg("-X")
        .arg(format!(
            "host={h} port={p} user={user}@example.com dbname={resource} sslmode=require"
        ))
        .args(["-At", "-c", sql])
        .env("PGPASSWORD", token(user))
        .env("PGOPTIONS", options)
        .env("PGCONNECT_TIMEOUT", "0");
    c
}

/// The newest request of `user`, as an approver sees it.
fn newest_request(gw: &Gateway, user: &str) -> serde_json::Value {
    let all = gw.cli(Some("root"), &["requests", "--json"]).json();
    all.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["requester"] == format!("{user}@example.com"))
        .max_by_key(|r| r["id"].as_i64().unwrap())
        .cloned()
        .unwrap_or_else(|| panic!("no request of {user}: {all}"))
}

#[test]
fn psql_asks_waits_and_gets_in_on_approval_or_fatal_on_denial() {
    let (gw, _pg) = setup("");

    // Without a reason: refused as before, and told how to ask from here.
    let o = psql(&gw, "alice", "prod-db", "", "SELECT 1").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("no active access grant for alice@example.com on prod-db"),
        "{err}"
    );
    assert!(err.contains("PGOPTIONS=\"-c jitgate.reason="), "{err}");

    // A misspelt option is refused with the names that exist.
    let o = psql(&gw, "alice", "prod-db", "-c jitgate.reasn=x", "SELECT 1")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown option jitgate.reasn"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Ask: psql shows the notice while it waits; bob approves; the same psql is in.
    let run = Running::spawn(psql(&gw, "alice", "prod-db", OPTS, "SELECT current_user"));
    run.wait_stderr("waiting for approval by dba", Duration::from_secs(10));
    let r = newest_request(&gw, "alice");
    let id = r["id"].as_i64().unwrap().to_string();
    assert_eq!(r["state"], "pending");
    assert_eq!(r["reason"], "INC-123 slow checkout");
    assert_eq!(r["duration_secs"], 1800, "{r}");
    assert!(
        run.stderr().contains(&format!("jitgate approve {id}")),
        "{}",
        run.stderr()
    );
    let approved = Instant::now();
    gw.cli(Some("bob"), &["approve", &id]).ok();
    let (st, out, err) = run.finish(Duration::from_secs(5));
    let took = approved.elapsed();
    assert!(st.success(), "{err}");
    assert_eq!(out.trim(), "app_ro");
    assert!(
        err.contains(&format!("request {id} approved by bob@example.com")),
        "{err}"
    );
    assert!(took < Duration::from_millis(1500), "in {took:?} after the approval");

    // Denied: FATAL with the approver's reason.
    let run = Running::spawn(psql(&gw, "carol", "prod-db", OPTS, "SELECT 1"));
    run.wait_stderr("waiting for approval", Duration::from_secs(10));
    let id = newest_request(&gw, "carol")["id"].as_i64().unwrap().to_string();
    gw.cli(Some("bob"), &["deny", &id, "--reason", "use staging"]).ok();
    let (st, _, err) = run.finish(Duration::from_secs(5));
    assert!(!st.success());
    assert!(
        err.contains(&format!(
            "FATAL:  request {id} was denied by bob@example.com: use staging"
        )),
        "{err}"
    );

    // Ctrl-C while waiting cancels the request, audited as the requester's.
    let run = Running::spawn(psql(
        &gw,
        "alice",
        "prod-db",
        &format!("{OPTS} -c jitgate.access=read-write"),
        "SELECT 1",
    ));
    run.wait_stderr("waiting for approval", Duration::from_secs(10));
    let r = newest_request(&gw, "alice");
    assert_eq!(r["access"], "read-write");
    let id = r["id"].as_i64().unwrap();
    let pid = run.child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let _ = run.finish(Duration::from_secs(5));
    assert!(
        eventually(Duration::from_secs(5), || {
            gw.audit_events()
                .iter()
                .any(|e| e["kind"] == "request.cancelled" && e["request_id"] == id && e["actor"] == "alice@example.com")
        }),
        "{:?}",
        gw.audit_kinds()
    );
    assert_eq!(newest_request(&gw, "alice")["state"], "cancelled");

    // An auto-approving policy: in at once, told by whom.
    let t = Instant::now();
    let o = psql(&gw, "alice", "dev-db", OPTS, "SELECT 40 + 2").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "42");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(newest_request(&gw, "alice")["state"], "approved");

    // The policy still rules: dave may not request prod-db.
    let o = psql(&gw, "dave", "prod-db", OPTS, "SELECT 1").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("jitgate could not request access to prod-db"), "{err}");
}

#[test]
fn waiting_too_long_keeps_the_request_and_a_reconnect_waits_on_it() {
    let (gw, _pg) = setup("#gateway-extra wait_on_connect = \"2s\"\n");
    let t = Instant::now();
    let o = psql(&gw, "alice", "prod-db", OPTS, "SELECT 1").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(t.elapsed() >= Duration::from_secs(2) && t.elapsed() < Duration::from_secs(6));
    assert!(
        err.contains("is still waiting for approval by dba after 2s; it stays pending"),
        "{err}"
    );
    let first = newest_request(&gw, "alice");
    assert_eq!(first["state"], "pending");
    // Connecting again waits on the same request, and an approval lets it in.
    let run = Running::spawn(psql(&gw, "alice", "prod-db", OPTS, "SELECT 7"));
    run.wait_stderr("was already pending", Duration::from_secs(10));
    gw.cli(Some("bob"), &["approve", &first["id"].as_i64().unwrap().to_string()])
        .ok();
    let (st, out, err) = run.finish(Duration::from_secs(5));
    assert!(st.success(), "{err}");
    assert_eq!(out.trim(), "7");
    assert_eq!(newest_request(&gw, "alice")["id"], first["id"], "no second request");
}

#[test]
fn psycopg_and_pgjdbc_ask_through_their_options_parameter() {
    let (gw, _pg) = setup("");
    let (h, p) = gw.pg_host_port();

    // psycopg 3: approved while it waits.
    let py = format!(
        "import psycopg, sys\n\
         try:\n    c = psycopg.connect('host={h} port={p} dbname=prod-db sslmode=require', user=sys.argv[1], password=sys.argv[2], options=sys.argv[3])\n\
         except psycopg.OperationalError as e:\n    print('refused', e.sqlstate, str(e).strip().splitlines()[-1]); sys.exit(3)\n\
         print(c.execute('SELECT 40 + 2').fetchone()[0])\n"
    );
    let py_run = |user: &str| {
        let mut c = Command::new("python3");
        c.args(["-c", &py, &format!("{user}@example.com"), &token(user), OPTS]);
        Running::spawn(c)
    };
    // psycopg drops the notices of the connection phase (its notice handler is attached once
    // the connection object exists): wait for the request itself.
    let created = |user: &str, n: usize, run: &Running| {
        assert!(
            eventually(Duration::from_secs(30), || {
                gw.audit_events()
                    .iter()
                    .filter(|e| e["kind"] == "request.created" && e["actor"] == format!("{user}@example.com"))
                    .count()
                    == n
            }),
            "no request of {user}: {}\n{}",
            run.stderr(),
            gw.log()
        );
    };
    let run = py_run("alice");
    created("alice", 1, &run);
    let id = newest_request(&gw, "alice")["id"].as_i64().unwrap().to_string();
    gw.cli(Some("bob"), &["approve", &id]).ok();
    let (st, out, err) = run.finish(Duration::from_secs(10));
    assert!(st.success(), "{out}{err}");
    assert_eq!(out.trim(), "42");
    // psycopg 3: denied, with the reason (libpq gives no SQLSTATE for a failed connection;
    // pgjdbc below does).
    let run = py_run("carol");
    created("carol", 1, &run);
    let id = newest_request(&gw, "carol")["id"].as_i64().unwrap().to_string();
    gw.cli(Some("bob"), &["deny", &id, "--reason", "not during the freeze"])
        .ok();
    let (st, out, _) = run.finish(Duration::from_secs(10));
    assert_eq!(st.code(), Some(3), "{out}");
    assert!(
        out.contains("FATAL:  request") && out.contains("was denied by bob@example.com: not during the freeze"),
        "{out}"
    );

    // pgjdbc: the `options` property; the notices arrive as connection warnings.
    let java = gw.dir.path().join("J.java");
    std::fs::write(
        &java,
        "public class J { public static void main(String[] a) throws Exception {\n\
           var props = new java.util.Properties();\n\
           props.setProperty(\"user\", a[1]); props.setProperty(\"password\", a[2]);\n\
           props.setProperty(\"options\", a[3]); props.setProperty(\"sslmode\", \"require\");\n\
           props.setProperty(\"sslfactory\", \"org.postgresql.ssl.NonValidatingFactory\");\n\
           try (var c = java.sql.DriverManager.getConnection(a[0], props)) {\n\
             var w = c.getWarnings(); while (w != null) { System.err.println(\"warning: \" + w.getMessage()); w = w.getNextWarning(); }\n\
             var r = c.createStatement().executeQuery(\"SELECT 40 + 2\"); r.next();\n\
             System.out.println(r.getInt(1));\n\
           } catch (java.sql.SQLException e) { System.out.println(\"refused \" + e.getSQLState() + \" \" + e.getMessage()); System.exit(3); } } }\n",
    )
    .unwrap();
    let java_run = |user: &str, opts: &str| {
        let mut c = Command::new("java");
        c.arg(format!("-Duser.home={}", gw.dir.path().display()))
            .args(["-cp", "/usr/share/java/postgresql.jar"])
            .arg(&java)
            .arg(format!("jdbc:postgresql://{h}:{p}/prod-db"))
            .arg(format!("{user}@example.com"))
            .arg(token(user))
            .arg(opts);
        Running::spawn(c)
    };
    // alice holds a read-only grant now (psycopg's): pgjdbc asks for read-write.
    let run = java_run("alice", &format!("{OPTS} -c jitgate.access=read-write"));
    // pgjdbc keeps the notices as warnings until the connection is open: wait for the request.
    created("alice", 2, &run);
    let id = newest_request(&gw, "alice")["id"].as_i64().unwrap().to_string();
    gw.cli(Some("bob"), &["approve", &id]).ok();
    let (st, out, err) = run.finish(Duration::from_secs(20));
    assert!(st.success(), "{out}{err}");
    assert_eq!(out.trim(), "42");
    assert!(err.contains("waiting for approval by dba"), "{err}");
    let run = java_run("carol", OPTS);
    created("carol", 2, &run);
    let id = newest_request(&gw, "carol")["id"].as_i64().unwrap().to_string();
    gw.cli(Some("bob"), &["deny", &id, "--reason", "no"]).ok();
    let (st, out, _) = run.finish(Duration::from_secs(20));
    assert_eq!(st.code(), Some(3), "{out}");
    assert!(out.contains("refused 28000"), "{out}");
}

// ---- SSH ----

use support::ssh::{Sshd, Upstream, sshd};

/// ops-1: an SSH resource whose policy needs bob (dba), with a reason.
fn ssh_setup() -> (Gateway, Sshd) {
    let s = sshd();
    let body = format!(
        "#listen-extra ssh = \"127.0.0.1:0\"\n[ssh]\nlogin_timeout = \"2s\"\n\n{ids}{r}\
         [[policies]]\nname = \"ops\"\nresources = [\"ops-*\"]\nrequesters = [\"dev\"]\napprovers = [\"dba\"]\nreason_required = true\ndefault_duration = \"45m\"\n",
        ids = support::ssh::identities(&s),
        r = s.resource("ops-1", Upstream::Ca),
    );
    let gw = Gateway::start(&body);
    s.trust_ca(&gw);
    (gw, s)
}

fn tmux(sock: &str, args: &[&str]) -> String {
    let out = Command::new("tmux").arg("-L").arg(sock).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_pane(sock: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let p = tmux(sock, &["capture-pane", "-p", "-t", "s"]);
        if p.contains(needle) {
            return p;
        }
        assert!(Instant::now() < deadline, "pane never showed {needle:?}:\n{p}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ssh` through the gateway in a tmux pane (a real terminal), kept open after it exits.
fn ssh_in_tmux(gw: &Gateway, s: &Sshd, target: &str, sock: &str) {
    let ssh = gw.ssh(&s.client_key(), target);
    let cmdline: Vec<String> = std::iter::once(ssh.get_program().to_string_lossy().into_owned())
        .chain(ssh.get_args().map(|a| format!("'{}'", a.to_string_lossy())))
        .collect();
    tmux(
        sock,
        &[
            "new-session",
            "-d",
            "-s",
            "s",
            "-x",
            "150",
            "-y",
            "30",
            &format!("{}; echo ssh-exited-$?; sleep 30", cmdline.join(" ")),
        ],
    );
}

#[test]
fn ssh_asks_for_a_reason_on_the_terminal_waits_and_opens_the_shell_on_approval() {
    let (gw, s) = ssh_setup();

    // Interactive, then Ctrl-C while waiting: the request is withdrawn.
    let sock = format!("jgask-{}", std::process::id());
    ssh_in_tmux(&gw, &s, "ops-1", &sock);
    wait_pane(&sock, "holds no access grant as");
    wait_pane(&sock, "Reason (ticket, incident, why):");
    tmux(
        &sock,
        &[
            "send-keys",
            "-t",
            "s",
            "INC-7 typo",
            "BSpace",
            "BSpace",
            "BSpace",
            "BSpace",
            "disk full",
            "Enter",
        ],
    );
    wait_pane(&sock, "For how long? [45m]:");
    tmux(&sock, &["send-keys", "-t", "s", "Enter"]);
    wait_pane(&sock, "waiting for approval by dba");
    let r = newest_request(&gw, "alice");
    assert_eq!(r["reason"], "INC-7 disk full", "{r}");
    assert_eq!(r["duration_secs"], 2700, "{r}");
    assert_eq!(r["access"], s.user, "{r}");
    tmux(&sock, &["send-keys", "-t", "s", "C-c"]);
    wait_pane(&sock, "cancelled");
    wait_pane(&sock, "ssh-exited-1");
    assert_eq!(newest_request(&gw, "alice")["state"], "cancelled");
    tmux(&sock, &["kill-server"]);

    // Interactive with the duration in the target name; approved while it waits: the shell.
    let sock = format!("jgask2-{}", std::process::id());
    ssh_in_tmux(&gw, &s, "ops-1+20m", &sock);
    wait_pane(&sock, "Reason (ticket, incident, why):");
    tmux(&sock, &["send-keys", "-t", "s", "INC-8 rotate logs", "Enter"]);
    wait_pane(&sock, "waiting for approval by dba");
    let r = newest_request(&gw, "alice");
    assert_eq!(r["duration_secs"], 1200, "{r}");
    gw.cli(Some("bob"), &["approve", &r["id"].as_i64().unwrap().to_string()])
        .ok();
    wait_pane(&sock, "approved by bob@example.com");
    wait_pane(&sock, "~$");
    tmux(&sock, &["send-keys", "-t", "s", "echo ask-marker-$((6*7))", "Enter"]);
    wait_pane(&sock, "ask-marker-42");
    tmux(&sock, &["send-keys", "-t", "s", "exit", "Enter"]);
    wait_pane(&sock, "ssh-exited-0");
    tmux(&sock, &["kill-server"]);
    // The shell and the typed command are audited under the new grant.
    let ev = gw.audit_events();
    let grant = r["id"].as_i64().unwrap();
    assert!(ev.iter().any(|e| e["kind"] == "ssh.shell"), "{:?}", gw.audit_kinds());
    assert!(
        ev.iter()
            .any(|e| e["kind"] == "ssh.command" && e["details"]["line"] == "echo ask-marker-$((6*7))"),
        "{:?}",
        ev.iter().filter(|e| e["kind"] == "ssh.command").collect::<Vec<_>>()
    );
    assert!(
        ev.iter()
            .any(|e| e["kind"] == "request.approved" && e["request_id"] == grant)
    );
}

#[test]
fn ssh_without_a_terminal_asks_with_setenv_and_is_told_how_otherwise() {
    let (gw, s) = ssh_setup();
    // No reason, no terminal: refused, told how to ask.
    let o = gw.ssh(&s.client_key(), "ops-1").arg("echo hi").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no active access grant"), "{err}");
    assert!(err.contains("SetEnv=\"JITGATE_REASON="), "{err}");

    // SetEnv: the request is made, the command waits, runs once approved.
    let mut c = gw.ssh_with(
        &s.client_key(),
        "ops-1",
        &["-o", "SetEnv=JITGATE_REASON=\"INC-10 rotate logs\" JITGATE_FOR=15m"],
    );
    c.arg("echo ran-$((6*7))");
    let run = Running::spawn(c);
    run.wait_stderr("waiting for approval by dba", Duration::from_secs(15));
    let r = newest_request(&gw, "alice");
    assert_eq!(r["reason"], "INC-10 rotate logs", "{r}");
    assert_eq!(r["duration_secs"], 900, "{r}");
    gw.cli(Some("bob"), &["approve", &r["id"].as_i64().unwrap().to_string()])
        .ok();
    let (st, out, err) = run.finish(Duration::from_secs(10));
    assert!(st.success(), "{err}");
    assert_eq!(out.trim(), "ran-42");
    assert!(
        gw.audit_events()
            .iter()
            .any(|e| e["kind"] == "ssh.exec" && e["details"]["command"] == "echo ran-$((6*7))"),
        "{:?}",
        gw.audit_kinds()
    );
    // Denied: exit 1 with the reason on stderr.
    let mut c = gw.ssh_with(
        &s.client_key(),
        "nobody-else@ops-1+1h",
        &["-o", "SetEnv=JITGATE_REASON=again"],
    );
    c.arg("true");
    let run = Running::spawn(c);
    run.wait_stderr("waiting for approval by dba", Duration::from_secs(15));
    let r = newest_request(&gw, "alice");
    assert_eq!(r["access"], "nobody-else");
    assert_eq!(r["duration_secs"], 3600);
    gw.cli(
        Some("bob"),
        &["deny", &r["id"].as_i64().unwrap().to_string(), "--reason", "not now"],
    )
    .ok();
    let (st, _, err) = run.finish(Duration::from_secs(10));
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("was denied by bob@example.com: not now"), "{err}");
}

// ---- Grants that end when the work ends (real clock, real psql) ----

/// alice requests prod-db with `extra` flags, bob approves: the grant id.
fn granted(gw: &Gateway, extra: &[&str]) -> i64 {
    let mut args = vec!["request", "prod-db", "--reason", "INC-5", "--json"];
    args.extend_from_slice(extra);
    let r = gw.cli(Some("alice"), &args).json();
    let id = r["id"].as_i64().unwrap().to_string();
    let a = gw.cli(Some("bob"), &["approve", &id, "--json"]).json();
    a["grant_id"].as_i64().unwrap()
}

fn grant_state(gw: &Gateway, id: i64) -> Option<serde_json::Value> {
    gw.audit_events()
        .into_iter()
        .find(|e| e["kind"] == "grant.expired" && e["grant_id"] == id)
}

#[test]
fn single_session_idle_end_and_first_use_grants_end_when_the_work_ends() {
    let (gw, _pg) = setup("");

    // single session: the grant ends with the first psql; the next one is refused.
    let g = granted(&gw, &["--single-session"]);
    let o = psql(&gw, "alice", "prod-db", "", "SELECT 1").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(eventually(Duration::from_secs(5), || grant_state(&gw, g).is_some()));
    assert_eq!(grant_state(&gw, g).unwrap()["details"]["ended"], "single_session");
    let o = psql(&gw, "alice", "prod-db", "", "SELECT 1").output().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no active access grant"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // idle end 2s: live while a session runs past it, ends 2 s after the last one.
    let g = granted(&gw, &["--idle-end", "2s"]);
    let o = psql(&gw, "alice", "prod-db", "", "SELECT pg_sleep(3)")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let left = Instant::now();
    assert!(grant_state(&gw, g).is_none(), "ended while in use");
    assert!(eventually(Duration::from_secs(6), || grant_state(&gw, g).is_some()));
    let idle = left.elapsed();
    assert!(
        idle > Duration::from_millis(1500) && idle < Duration::from_millis(3500),
        "ended {idle:?} after the last session"
    );
    assert_eq!(grant_state(&gw, g).unwrap()["details"]["ended"], "idle");

    // First use, 3s: approved, unused for 2 s, then a session: killed 3 s after it started
    // (a clock started at the approval would have ended it after 1 s).
    granted(&gw, &["--start", "first-use", "--for", "3s"]);
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let o = psql(&gw, "alice", "prod-db", "", "SELECT pg_sleep(20)")
        .output()
        .unwrap();
    let ran = t.elapsed();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("expired"), "{err}");
    assert!(
        ran > Duration::from_millis(2500) && ran < Duration::from_millis(5000),
        "killed after {ran:?}"
    );
    assert!(gw.audit_kinds().contains(&"grant.started".to_string()));
}

// ---- Scheduled access (real clock, real psql) ----

#[test]
fn a_scheduled_grant_approved_ahead_opens_at_its_start_and_kills_at_its_end() {
    let (gw, _pg) = setup("");
    // Asked the way a person writes it: a civil time in a named zone, 4 s ahead, for 3 s.
    let start = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 4).unwrap();
    let paris = jiff::tz::TimeZone::get("Europe/Paris").unwrap();
    let at = format!("{} Europe/Paris", start.to_zoned(paris).strftime("%Y-%m-%d %H:%M:%S"));
    let g = granted(&gw, &["--at", &at, "--for", "3s"]);
    let listed = gw.cli(Some("root"), &["requests"]).ok();
    assert!(
        listed.contains(&format!("3s from {}", start.strftime("%Y-%m-%d %H:%M:%S UTC"))),
        "{listed}"
    );
    let grants = gw.cli(Some("alice"), &["grants"]).ok();
    assert!(grants.contains("opens in"), "{grants}");
    // Before its start: refused, told when to come back; nothing reached PostgreSQL.
    let o = psql(&gw, "alice", "prod-db", "", "SELECT 1").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains(&format!("access grant {g} (read-only)")), "{err}");
    assert!(err.contains("opens at"), "{err}");
    // From its start: in, and killed when the window ends.
    let wait = start.duration_since(jiff::Timestamp::now()).as_millis().max(0) as u64 + 100;
    std::thread::sleep(Duration::from_millis(wait));
    let t = Instant::now();
    let o = psql(&gw, "alice", "prod-db", "", "SELECT pg_sleep(20)")
        .output()
        .unwrap();
    let ran = t.elapsed();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("expired"), "{err}");
    assert!(
        ran > Duration::from_millis(2000) && ran < Duration::from_millis(4500),
        "killed after {ran:?}"
    );
    assert!(eventually(Duration::from_secs(5), || grant_state(&gw, g).is_some()));
}

// ---- Break-glass ----

#[test]
fn break_glass_opens_at_once_alerts_everyone_and_leaves_a_review_with_a_daily_limit() {
    let hooks = Receiver::start(0);
    let hook_dir = tempfile::tempdir().unwrap();
    // The webhook lists only request.created: break-glass reaches it anyway.
    let tail = hooks.webhook(hook_dir.path(), &["request.created"]);
    let (gw, _pg) = setup_with(
        "",
        r#"break_glass = { groups = ["dev"], reviewers = ["dba"], max_duration = "30m", review_within = "3s", per_day = 1 }"#,
        &tail,
    );

    // alice breaks the glass: the grant is live at once, no approver involved.
    let r = gw
        .cli(
            Some("alice"),
            &[
                "break-glass",
                "prod-db",
                "--reason",
                "INC-9 orders table locked",
                "--json",
            ],
        )
        .json();
    assert_eq!(r["state"], "approved", "{r}");
    assert_eq!(r["decided_by"], "break-glass:alice@example.com");
    let id = r["id"].as_i64().unwrap();
    let o = psql(&gw, "alice", "prod-db", "", "SELECT 'in'").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(hooks.got_kind("break_glass.opened", Duration::from_secs(10)));
    let ev = hooks
        .events()
        .into_iter()
        .find(|(_, b)| b["event"] == "break_glass.opened")
        .unwrap()
        .1;
    assert_eq!(ev["severity"], "high", "{ev}");
    assert_eq!(ev["reason"], "INC-9 orders table locked");
    assert_eq!(ev["identity"], "alice@example.com");

    // The daily limit: the next one is refused, and says why.
    let again = gw.cli(Some("alice"), &["break-glass", "prod-db", "--reason", "again"]);
    let err = again.refused();
    assert!(err.contains("broken the glass 1 time(s) in the last 24 hours"), "{err}");
    assert!(err.contains("allows 1 a day"), "{err}");
    // Not a break-glass group: refused.
    let err = gw
        .cli(Some("bob"), &["break-glass", "prod-db", "--reason", "x"])
        .refused();
    assert!(err.contains("may not break the glass"), "{err}");

    // The review: listed for bob (dba) with what the grant did; alice cannot close her own.
    let list = gw.cli(Some("bob"), &["reviews", "--json"]).json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["request"]["id"], id);
    let show = gw.cli(Some("bob"), &["reviews", "show", &id.to_string()]).ok();
    assert!(show.contains("INC-9 orders table locked"), "{show}");
    assert!(show.contains("SELECT 'in'"), "{show}");
    let err = gw
        .cli(Some("alice"), &["reviews", "close", &id.to_string(), "--note", "fine"])
        .refused();
    assert!(err.contains("cannot review your own"), "{err}");

    // Overdue (3 s): the metric rises and every webhook hears of it.
    assert!(
        hooks.got_kind("break_glass.overdue", Duration::from_secs(15)),
        "no overdue alert"
    );
    let metric = |name: &str| -> String {
        let (_, m) = gw.http_get("/metrics", None);
        m.lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
            .unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(10), || metric(
            "jitgate_break_glass_reviews_overdue "
        ) == "1"),
        "{}",
        metric("jitgate_break_glass_reviews_overdue ")
    );
    gw.cli(
        Some("bob"),
        &[
            "reviews",
            "close",
            &id.to_string(),
            "--note",
            "lock was a stuck migration; justified",
        ],
    )
    .ok();
    let all = gw.cli(Some("bob"), &["reviews", "--all", "--json"]).json();
    let v = &all[0]["request"]["break_glass"];
    assert_eq!(v["closed_by"], "bob@example.com", "{all}");
    assert_eq!(v["note"], "lock was a stuck migration; justified");
    assert!(
        gw.cli(Some("bob"), &["reviews", "--json"])
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        eventually(Duration::from_secs(10), || metric(
            "jitgate_break_glass_reviews_overdue "
        ) == "0"),
        "metric stays raised after the close"
    );
    let kinds = gw.audit_kinds();
    for k in [
        "break_glass.opened",
        "request.approved",
        "grant.activated",
        "break_glass.overdue",
        "break_glass.reviewed",
    ] {
        assert!(kinds.contains(&k.to_string()), "{k} missing: {kinds:?}");
    }
}

// ---- Ticket checks ----

/// A ticket system playing Jira's `GET /rest/api/2/issue/{key}`: INC-1 in progress, INC-2
/// done, anything else 404; it records the Authorization header it got.
fn ticket_system() -> (u16, Arc<Mutex<Vec<String>>>) {
    use std::io::Write;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let auth = Arc::new(Mutex::new(Vec::new()));
    let a = auth.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
            if let Some(h) = req
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
            {
                a.lock().unwrap().push(h.split_once(':').unwrap().1.trim().to_string());
            }
            let body = match path.as_str() {
                "/rest/api/2/issue/INC-1" => {
                    Some(r#"{"key":"INC-1","fields":{"summary":"Checkout is slow","status":{"name":"In Progress"}}}"#)
                }
                "/rest/api/2/issue/INC-2" => {
                    Some(r#"{"key":"INC-2","fields":{"summary":"Old outage","status":{"name":"Done"}}}"#)
                }
                _ => None,
            };
            let resp = match body {
                Some(b) => format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                    b.len()
                ),
                None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string(),
            };
            let _ = s.write_all(resp.as_bytes());
        }
    });
    (port, auth)
}

#[test]
fn tickets_are_checked_with_the_ticket_system_and_their_title_shown_to_approvers() {
    let (port, auth) = ticket_system();
    let cred = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cred.path(), "Bearer jira-secret\n").unwrap();
    let ticket = format!(
        "ticket = {{ pattern = \"^INC-[0-9]+$\", url = \"http://127.0.0.1:{port}/rest/api/2/issue/{{ticket}}\", credential_file = \"{}\", status_field = \"fields.status.name\", allowed = [\"In Progress\"], title_field = \"fields.summary\" }}",
        cred.path().display()
    );
    let (gw, _pg) = setup_with("", &ticket, "");
    let ask = |t: Option<&str>| {
        let mut a = vec!["request", "prod-db", "--reason", "slow", "--json"];
        if let Some(t) = t {
            a.extend_from_slice(&["--ticket", t]);
        }
        gw.cli(Some("alice"), &a)
    };
    assert!(ask(None).refused().contains("policy `production` requires a ticket"));
    assert!(
        ask(Some("JIRA-1"))
            .refused()
            .contains("is not a ticket id policy `production` accepts")
    );
    assert!(
        ask(Some("INC-404"))
            .refused()
            .contains("ticket INC-404 was not found by the ticket system (HTTP 404)")
    );
    assert!(
        ask(Some("INC-2"))
            .refused()
            .contains("ticket INC-2 is `Done`; policy `production` accepts tickets that are `In Progress`")
    );
    let r = ask(Some("INC-1")).json();
    assert_eq!(r["state"], "pending");
    assert_eq!(r["ticket_title"], "Checkout is slow");
    assert!(auth.lock().unwrap().iter().all(|h| h == "Bearer jira-secret"));
    // Approvers see the title.
    let list = gw.cli(Some("bob"), &["requests"]).ok();
    assert!(list.contains("INC-1: Checkout is slow"), "{list}");
    // From psql too (jitgate.ticket).
    let run = Running::spawn(psql(
        &gw,
        "carol",
        "prod-db",
        &format!("{OPTS} -c jitgate.ticket=INC-1"),
        "SELECT 1",
    ));
    run.wait_stderr("waiting for approval by dba", Duration::from_secs(10));
    assert_eq!(newest_request(&gw, "carol")["ticket_title"], "Checkout is slow");
    drop(run);
    let o = psql(
        &gw,
        "carol",
        "prod-db",
        &format!("{OPTS} -c jitgate.access=read-write -c jitgate.ticket=INC-2"),
        "SELECT 1",
    )
    .output()
    .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is `Done`"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The ticket system down: refused (fail closed), and said so.
    let (gw2, _pg2) = setup_with(
        "",
        "ticket = { url = \"http://127.0.0.1:9/rest/api/2/issue/{ticket}\", status_field = \"fields.status.name\", allowed = [\"In Progress\"] }",
        "",
    );
    let err = gw2
        .cli(
            Some("alice"),
            &["request", "prod-db", "--reason", "x", "--ticket", "INC-1"],
        )
        .refused();
    assert!(
        err.contains("ticket INC-1 could not be checked: the ticket system could not be reached"),
        "{err}"
    );
    assert!(
        err.contains("refuses requests while its ticket system cannot be reached"),
        "{err}"
    );
}

// ---- On-call auto-approval ----

/// A PagerDuty stand-in: `GET /oncalls` answers the status and body in `roster`; the
/// Authorization headers it saw are collected.
fn oncall_source(roster: Arc<Mutex<(u16, String)>>) -> (u16, Arc<Mutex<Vec<String>>>) {
    use std::io::Write;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let auth = Arc::new(Mutex::new(Vec::new()));
    let a = auth.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            if let Some(h) = req
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
            {
                a.lock().unwrap().push(h.split_once(':').unwrap().1.trim().to_string());
            }
            let (status, body) = roster.lock().unwrap().clone();
            let ok = req.starts_with("GET /oncalls?include[]=users ") && status == 200;
            let resp = if ok {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                format!("HTTP/1.1 {status} Oops\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            };
            let _ = s.write_all(resp.as_bytes());
        }
    });
    (port, auth)
}

fn metric(gw: &Gateway, line: &str) -> bool {
    let (_, m) = gw.http_get("/metrics", None);
    m.lines().any(|l| l == line)
}

#[test]
fn oncall_auto_approves_the_primary_only_and_a_stale_source_falls_back_to_manual() {
    let roster = Arc::new(Mutex::new((
        200,
        r#"{"oncalls": [
            {"user": {"id": "PA", "type": "user", "summary": "Alice", "email": "alice@example.com"}, "escalation_level": 1, "schedule": {"id": "S1"}, "start": "2026-01-01T00:00:00Z", "end": "2099-01-01T00:00:00Z"},
            {"user": {"id": "PC", "type": "user", "summary": "Carol", "email": "carol@example.com"}, "escalation_level": 2, "schedule": {"id": "S1"}, "start": null, "end": null}
        ], "limit": 25, "offset": 0, "more": false}"#
            .to_string(),
    )));
    let (port, auth) = oncall_source(roster.clone());
    let cred = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cred.path(), "Token token=pd-secret\n").unwrap();
    let tail = format!(
        "[[oncall]]\nname = \"pd\"\nurl = \"http://127.0.0.1:{port}/oncalls?include[]=users\"\nformat = \"pagerduty\"\npoll_every = \"1s\"\nmax_age = \"3s\"\ncredential_file = \"{}\"\n",
        cred.path().display()
    );
    // On call at level 1, for up to 2h: approved at once; everything else goes to the dba.
    let (gw, _pg) = setup_with(
        "",
        "auto_approve = [{ oncall = { source = \"pd\", escalation_level_max = 1 }, max_duration = \"2h\" }]",
        &tail,
    );
    assert!(
        eventually(Duration::from_secs(10), || metric(
            &gw,
            "jitgate_oncall_source_fresh{source=\"pd\"} 1"
        )),
        "the source never became fresh"
    );
    let ask = |who: &str, access: &str| {
        gw.cli(
            Some(who),
            &[
                "request",
                "prod-db",
                "--access",
                access,
                "--for",
                "1h",
                "--reason",
                "INC-9 paged",
                "--json",
            ],
        )
        .json()
    };
    let r = ask("alice", "read-only");
    assert_eq!(r["state"], "approved", "{r}");
    assert!(
        r["decision_reason"]
            .as_str()
            .unwrap()
            .contains("(on call in `pd`, level 1)"),
        "{r}"
    );
    // Level 2 is not the primary: manual.
    assert_eq!(ask("carol", "read-only")["state"], "pending");
    // On call, but longer than the rule allows: manual (the conditions combine).
    let long = gw
        .cli(
            Some("alice"),
            &["request", "dev-db", "--for", "3h", "--reason", "long", "--json"],
        )
        .json();
    assert_eq!(long["policy"], "development");
    let long = gw
        .cli(
            Some("alice"),
            &[
                "request",
                "prod-db",
                "--access",
                "read-write",
                "--for",
                "3h",
                "--reason",
                "long",
                "--json",
            ],
        )
        .json();
    assert_eq!(long["state"], "pending", "{long}");
    gw.cli(Some("alice"), &["cancel", &long["id"].to_string()]).ok();
    let status = gw.cli(Some("root"), &["oncall"]).ok();
    assert!(
        status.contains("fresh") && status.contains("alice@example.com (L1)"),
        "{status}"
    );
    assert!(
        gw.cli(Some("alice"), &["oncall"])
            .refused()
            .contains("only admins and auditors")
    );
    assert!(!auth.lock().unwrap().is_empty());
    assert!(auth.lock().unwrap().iter().all(|h| h == "Token token=pd-secret"));
    let approved = gw
        .audit_events()
        .into_iter()
        .find(|e| e["kind"] == "request.approved" && e["request_id"] == r["id"])
        .unwrap();
    assert!(
        approved["details"]["auto_approved_by"]
            .as_str()
            .unwrap()
            .contains("on call in `pd`"),
        "{approved}"
    );

    // The source fails: its data ages past max_age, and the on-call engineer asks in vain.
    roster.lock().unwrap().0 = 500;
    assert!(
        eventually(Duration::from_secs(10), || metric(
            &gw,
            "jitgate_oncall_source_fresh{source=\"pd\"} 0"
        )),
        "the source never went stale"
    );
    let r = ask("alice", "read-write");
    assert_eq!(r["state"], "pending", "{r}");
    let status = gw.cli(Some("root"), &["oncall"]).ok();
    assert!(
        status.contains("STALE") && status.contains("it answered HTTP 500"),
        "{status}"
    );
    let (_, m) = gw.http_get("/metrics", None);
    assert!(
        m.contains("jitgate_oncall_polls_total{result=\"error\",source=\"pd\"}"),
        "{m}"
    );
    let age: i64 = m
        .lines()
        .find_map(|l| l.strip_prefix("jitgate_oncall_source_age_seconds{source=\"pd\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(age > 3, "age {age}");
}
