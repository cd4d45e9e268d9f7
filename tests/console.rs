//! The web console end to end: the real gateway, PostgreSQL, sshd and OpenID Connect provider,
//! driven in real headless Chromium by tests/browser/console.mjs (playwright-core). The
//! browser side asserts what a person sees; this side checks the audit log and the side
//! effects. Screenshots go to docs/screenshots/ (linked from the user and approver guides).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::idp::idp;
use support::pg::cluster;
use support::ssh::{Upstream, sshd};
use support::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tools() -> PathBuf {
    if let Some(d) = std::env::var_os("JITGATE_TOOLS_DIR") {
        return d.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"));
    cache.join("jitgate")
}

/// Node.js as scripts/test-idp finds it (the private one install-deps fetched, else PATH's).
fn node() -> PathBuf {
    let base = tools().join("node/node_modules");
    if let Ok(rd) = std::fs::read_dir(&base) {
        for e in rd.flatten() {
            let n = e.path().join("bin/node");
            if e.file_name().to_string_lossy().starts_with("node-linux-") && n.exists() {
                return n;
            }
        }
    }
    PathBuf::from("node")
}

/// Run a scenario of tests/browser/console.mjs; its output on failure.
fn browser(scenario: &str, env: &[(&str, String)]) -> String {
    let pw = tools().join("playwright");
    assert!(
        pw.join("node_modules/playwright-core/package.json").exists()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "playwright-core or chromium missing: run ./scripts/install-deps"
    );
    let mut c = Command::new(node());
    c.arg(repo().join("tests/browser/console.mjs"))
        .arg(scenario)
        .env("PLAYWRIGHT_DIR", &pw)
        .env("SHOTS", repo().join("docs/screenshots"));
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "browser scenario {scenario} failed\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn console_sign_in_request_approve_extend_kill_revoke_step_up_and_audit_in_chromium() {
    let p = idp("console", None);
    let pg = cluster();
    let db = pg.fresh_db();
    let dir = tempfile::tempdir().unwrap().keep();
    let oidc = p.oidc_section(&dir.join("client.secret"), "");
    let body = format!(
        r#"{oidc}
{ids}
[[resources]]
name = "prod-db"
kind = "postgres"
address = "127.0.0.1:{port}"
database = "{db}"
labels = {{ env = "prod", team = "payments" }}
credentials.read-only = {{ user = "app_ro", password_file = "ro.pw" }}
credentials.read-write = {{ user = "app_rw", password_file = "rw.pw" }}

[[resources]]
name = "crit-db"
kind = "postgres"
address = "127.0.0.1:{port}"
database = "{db}"
credentials.read-only = {{ user = "app_ro", password_file = "ro.pw" }}

[[policies]]
name = "critical"
resources = ["crit-db"]
requesters = ["dev"]
approvers = ["dba"]
step_up = "5s"

[[policies]]
name = "production"
resources = ["prod-db"]
requesters = ["dev"]
approvers = ["dba"]
default_duration = "1h"
max_duration = "4h"
"#,
        ids = identities(),
        port = pg.port
    );
    let gw = Gateway::start_pg(&body);
    std::fs::write(gw.dir.path().join("ro.pw"), "ro-secret\n").unwrap();
    std::fs::write(gw.dir.path().join("rw.pw"), "rw-secret\n").unwrap();
    let pg_port = gw.pg_addr.rsplit_once(':').unwrap().1.to_string();
    let out = browser(
        "main",
        &[
            ("GW", gw.url.clone()),
            ("ISSUER", p.issuer.clone()),
            ("PG_PORT", pg_port),
            ("CA", gw.data_dir().join("tls/ca.crt").display().to_string()),
            ("ALICE_TOKEN", token("alice")),
        ],
    );
    let ids: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();

    // The audit log says who did what, through the console.
    let ev = gw.audit_events();
    let find = |kind: &str, f: &dyn Fn(&serde_json::Value) -> bool| ev.iter().any(|e| e["kind"] == kind && f(e));
    assert!(find("login", &|e| e["actor"] == "alice@example.com"
        && e["details"]["method"] == "console"));
    assert!(find("login", &|e| e["actor"] == "root@example.com"
        && e["details"]["method"] == "console-token"));
    assert!(find("request.approved", &|e| e["request_id"] == ids["request"]
        && e["actor"] == "bob@example.com"));
    assert!(find("grant.extended", &|e| e["grant_id"] == ids["grant"]));
    assert!(find("session.killed", &|e| e["session_id"] == ids["killed"]
        && e["actor"] == "root@example.com"));
    assert!(find("grant.revoked", &|e| e["grant_id"] == ids["grant"]
        && e["reason"] == "done with INC-123"));
    assert!(find("request.approved", &|e| e["request_id"] == ids["step_up"]
        && e["actor"] == "bob@example.com"));
    assert!(find("logout", &|e| e["actor"] == "bob@example.com"));
    // Two bob sign-ins at the provider: the first, and the step-up's fresh one.
    let bob_logins = ev
        .iter()
        .filter(|e| e["kind"] == "login" && e["actor"] == "bob@example.com")
        .count();
    assert!(bob_logins >= 2, "{bob_logins}");
    // No token, code or cookie in the audit log or the gateway's log.
    let text = std::fs::read_to_string(gw.audit_path()).unwrap() + &gw.log();
    for secret in ["alice-token", "root-token", "jg2.", "bob-password"] {
        assert!(!text.contains(secret), "{secret} leaked");
    }
}

#[test]
fn console_pages_refuse_without_a_session_and_without_csrf_over_plain_http() {
    let gw = Gateway::start(&format!(
        "{}[[resources]]\nname = \"prod-db\"\nkind = \"postgres\"\naddress = \"127.0.0.1:1\"\ncredentials.read-only = {{ user = \"x\" }}\n\n[[policies]]\nname = \"p\"\nresources = [\"*\"]\nrequesters = [\"dev\"]\napprovers = [\"dba\"]\n",
        identities()
    ));
    // Not signed in: every page sends the browser to the sign-in page, with where it was going.
    let raw = |req: &str| {
        use std::io::{Read, Write};
        let addr = gw.url.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(req.replace("{addr}", addr).as_bytes()).unwrap();
        let mut b = String::new();
        s.read_to_string(&mut b).unwrap();
        b
    };
    for path in ["/ui/", "/ui/approvals", "/ui/now", "/ui/audit", "/ui/requests/1"] {
        let r = raw(&format!(
            "GET {path} HTTP/1.1\r\nHost: {{addr}}\r\nConnection: close\r\n\r\n"
        ));
        assert!(r.starts_with("HTTP/1.1 303"), "{path}: {r}");
        assert!(r.contains(&format!("location: /ui/login?next={}", path)), "{path}: {r}");
        assert!(
            r.to_ascii_lowercase()
                .contains("content-security-policy: default-src 'none'"),
            "{r}"
        );
    }
    let r = raw("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 303") && r.contains("location: /ui/"), "{r}");
    // A POST from another site is refused before anything else (no cookie needed to see it).
    let r = raw(
        "POST /ui/requests/1/deny HTTP/1.1\r\nHost: {addr}\r\nOrigin: https://evil.example\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 8\r\nConnection: close\r\n\r\nreason=x",
    );
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    let r = raw(
        "POST /ui/requests/1/deny HTTP/1.1\r\nHost: {addr}\r\nSec-Fetch-Site: cross-site\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 8\r\nConnection: close\r\n\r\nreason=x",
    );
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    // The token form needs the cookie it set (login CSRF), and a wrong token is refused and audited.
    let r = raw(
        "POST /ui/login/token HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 17\r\nConnection: close\r\n\r\ntoken=alice-token",
    );
    assert!(r.starts_with("HTTP/1.1 303") && r.contains("error=stale"), "{r}");
    let page = raw("GET /ui/login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let binding = page
        .split("jitgate-login=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(page.contains(&format!("value=\"{binding}\"")));
    let form = format!("token=wrong-token&_login={binding}");
    let r = raw(&format!(
        "POST /ui/login/token HTTP/1.1\r\nHost: {{addr}}\r\nCookie: jitgate-login={binding}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    ));
    assert!(r.contains("error=token"), "{r}");
    assert!(eventually(Duration::from_secs(5), || gw.audit_events().iter().any(
        |e| e["kind"] == "login.failed" && e["details"]["method"] == "console-token"
    )));
    // The right token opens a session: an HttpOnly, SameSite cookie (not Secure over plain
    // loopback HTTP; `__Host-` and Secure with TLS), never the token itself.
    let form = format!("token=alice-token&_login={binding}&next=/ui/approvals");
    let r = raw(&format!(
        "POST /ui/login/token HTTP/1.1\r\nHost: {{addr}}\r\nCookie: jitgate-login={binding}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    ));
    assert!(
        r.starts_with("HTTP/1.1 303") && r.contains("location: /ui/approvals"),
        "{r}"
    );
    let cookie_line = r.lines().find(|l| l.starts_with("set-cookie: jitgate=")).unwrap();
    assert!(
        cookie_line.contains("HttpOnly") && cookie_line.contains("SameSite=Lax"),
        "{cookie_line}"
    );
    assert!(!r.contains("alice-token"));
    let sid = cookie_line
        .trim_start_matches("set-cookie: jitgate=")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let r = raw(&format!(
        "GET /ui/approvals HTTP/1.1\r\nHost: {{addr}}\r\nCookie: jitgate={sid}\r\nConnection: close\r\n\r\n"
    ));
    assert!(r.starts_with("HTTP/1.1 200") && r.contains("alice@example.com"), "{r}");
    // A state-changing request without the session's CSRF token is refused, with the cookie.
    let r = raw(&format!(
        "POST /ui/requests HTTP/1.1\r\nHost: {{addr}}\r\nCookie: jitgate={sid}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 16\r\nConnection: close\r\n\r\nresource=prod-db"
    ));
    assert!(r.starts_with("HTTP/1.1 403") && r.contains("CSRF"), "{r}");
    assert_eq!(
        gw.cli(Some("root"), &["requests", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn console_replays_an_ssh_recording_in_chromium() {
    let s = sshd();
    let body = format!(
        "#listen-extra ssh = \"127.0.0.1:0\"\n{ids}{r}[[policies]]\nname = \"web\"\nresources = [\"web-1\"]\nrequesters = [\"dev\"]\napprovers = [\"dba\"]\nreason_required = false\n[[policies.auto_approve]]\ngroups = [\"dev\"]\n",
        ids = support::ssh::identities(&s),
        r = s.resource("web-1", Upstream::Ca),
    );
    let gw = Gateway::start(&body);
    s.trust_ca(&gw);
    let v = gw
        .cli(Some("alice"), &["request", "web-1", "--for", "1h", "--json"])
        .json();
    assert_eq!(v["state"], "approved", "{v}");
    // An interactive session in tmux (a real terminal): what it shows is recorded.
    let ssh = gw.ssh(&s.client_key(), "web-1");
    let cmdline: Vec<String> = std::iter::once(ssh.get_program().to_string_lossy().into_owned())
        .chain(ssh.get_args().map(|a| format!("'{}'", a.to_string_lossy())))
        .collect();
    let sock = format!("jg-console-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux").arg("-L").arg(&sock).args(args).output().unwrap();
    };
    let pane = || {
        String::from_utf8_lossy(
            &Command::new("tmux")
                .args(["-L", &sock, "capture-pane", "-p", "-t", "s"])
                .output()
                .unwrap()
                .stdout,
        )
        .to_string()
    };
    tmux(&[
        "new-session",
        "-d",
        "-s",
        "s",
        "-x",
        "100",
        "-y",
        "30",
        &format!("{}; sleep 30", cmdline.join(" ")),
    ]);
    assert!(
        eventually(Duration::from_secs(10), || pane().contains("~$")),
        "{}",
        pane()
    );
    tmux(&["send-keys", "-t", "s", "echo jitgate-marker-$((6*7))", "Enter"]);
    assert!(
        eventually(Duration::from_secs(10), || pane().contains("jitgate-marker-42")),
        "{}",
        pane()
    );
    tmux(&["send-keys", "-t", "s", "exit", "Enter"]);
    assert!(eventually(Duration::from_secs(10), || gw
        .audit_events()
        .iter()
        .any(|e| e["kind"] == "ssh.channel.closed")));
    tmux(&["kill-server"]);
    let sid = gw.audit_events().iter().find(|e| e["kind"] == "ssh.shell").unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    browser(
        "ssh",
        &[
            ("GW", gw.url.clone()),
            ("ISSUER", String::new()),
            ("SESSION", sid),
            ("MARKER", "jitgate-marker-42".into()),
        ],
    );
}

#[test]
fn console_break_glass_with_a_fresh_sign_in_and_its_review_closed_by_a_reviewer_in_chromium() {
    let p = idp("console-bg", None);
    let pg = cluster();
    let db = pg.fresh_db();
    let dir = tempfile::tempdir().unwrap().keep();
    let oidc = p.oidc_section(&dir.join("client.secret"), "");
    let body = format!(
        r#"{oidc}
{ids}
[[resources]]
name = "prod-db"
kind = "postgres"
address = "127.0.0.1:{port}"
database = "{db}"
credentials.read-only = {{ user = "app_ro", password_file = "ro.pw" }}

[[policies]]
name = "production"
resources = ["prod-db"]
requesters = ["dev"]
approvers = ["dba"]
step_up = "5s"
break_glass = {{ groups = ["dev"], reviewers = ["dba"], max_duration = "30m" }}
"#,
        ids = identities(),
        port = pg.port
    );
    let gw = Gateway::start_pg(&body);
    std::fs::write(gw.dir.path().join("ro.pw"), "ro-secret\n").unwrap();
    let pg_port = gw.pg_addr.rsplit_once(':').unwrap().1.to_string();
    let out = browser(
        "reviews",
        &[
            ("GW", gw.url.clone()),
            ("ISSUER", p.issuer.clone()),
            ("PG_PORT", pg_port),
            ("CA", gw.data_dir().join("tls/ca.crt").display().to_string()),
            ("ALICE_TOKEN", token("alice")),
        ],
    );
    let ids: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let ev = gw.audit_events();
    let find = |kind: &str, f: &dyn Fn(&serde_json::Value) -> bool| ev.iter().any(|e| e["kind"] == kind && f(e));
    assert!(find("break_glass.opened", &|e| e["actor"] == "alice@example.com"
        && e["request_id"] == ids["review"]));
    assert!(find("break_glass.reviewed", &|e| e["actor"] == "bob@example.com"
        && e["request_id"] == ids["review"]));
    // Two sign-ins of alice at the provider: the first, and the fresh one before the glass.
    let logins = ev
        .iter()
        .filter(|e| e["kind"] == "login" && e["actor"] == "alice@example.com")
        .count();
    assert!(logins >= 2, "{logins}");
}

/// An evidence pack an auditor can keep: alice's grant on prod-db took two approvals (bob for
/// the DBAs, then root for the admins), she ran psql (one statement refused) and, on her web-1
/// grant, an SSH command. The grant's pack verifies offline against the public key (and fails
/// once edited); the user's pack holds both grants; the HTML renders offline in Chromium
/// (screenshot: docs/screenshots/evidence-pack.png); the CSV has the statements.
#[test]
#[ignore = "evidence packs are unfinished (#21): the final approval's comment is not yet read from request.approved"]
fn evidence_pack_for_two_approvals_a_refused_statement_and_ssh_verifies_offline_and_renders() {
    let s = sshd();
    let pg = cluster();
    let db = pg.fresh_db();
    let body = format!(
        "#listen-extra ssh = \"127.0.0.1:0\"\n{ids}{r}\
         [[resources]]\nname = \"prod-db\"\nkind = \"postgres\"\naddress = \"127.0.0.1:{port}\"\ndatabase = \"{db}\"\n\
         credentials.read-only = {{ user = \"app_ro\", password_file = \"ro.pw\" }}\n\n\
         [[policies]]\nname = \"prod\"\nresources = [\"prod-db\"]\nrequesters = [\"dev\"]\n\
         steps = [{{ name = \"dba\", approvers = [\"dba\"] }}, {{ name = \"admins\", approvers = [\"jitgate-admins\"] }}]\n\n\
         [[policies]]\nname = \"web\"\nresources = [\"web-1\"]\nrequesters = [\"dev\"]\napprovers = [\"dba\"]\nreason_required = false\n\
         [[policies.auto_approve]]\ngroups = [\"dev\"]\n\n[audit]\ncheckpoint_every = 5\n",
        ids = support::ssh::identities(&s),
        r = s.resource("web-1", Upstream::Ca),
        port = pg.port,
    );
    let mut gw = Gateway::start_pg(&body);
    std::fs::write(gw.dir.path().join("ro.pw"), "ro-secret\n").unwrap();
    s.trust_ca(&gw);
    let req = gw
        .cli(
            Some("alice"),
            &[
                "request",
                "prod-db",
                "--for",
                "1h",
                "--reason",
                "INC-4711 audit sample",
                "--json",
            ],
        )
        .json();
    let id = req["id"].as_i64().unwrap().to_string();
    gw.cli(Some("bob"), &["approve", &id, "--reason", "dba ok", "--json"])
        .ok();
    let v = gw
        .cli(Some("root"), &["approve", &id, "--reason", "admins ok", "--json"])
        .json();
    let grant = v["grant_id"].as_i64().unwrap_or_else(|| panic!("{v}"));
    let (h, p) = gw.pg_host_port();
    let o = Command::new("psql")
        .arg("-X")
        .arg(format!(
            "host={h} port={p} user=alice@example.com dbname=prod-db sslmode=require"
        ))
        .args([
            "-c",
            "SELECT count(*) FROM accounts",
            "-c",
            "DELETE FROM accounts WHERE id = 7",
        ])
        .env("PGPASSWORD", token("alice"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let web = gw
        .cli(Some("alice"), &["request", "web-1", "--for", "1h", "--json"])
        .json();
    assert_eq!(web["state"], "approved", "{web}");
    let out = gw
        .ssh(&s.client_key(), "web-1")
        .arg("echo evidence-marker-$((6*7))")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("evidence-marker-42"));
    assert!(eventually(Duration::from_secs(5), || gw
        .audit_events()
        .iter()
        .filter(|e| e["kind"] == "session.ended")
        .count()
        >= 2));
    let cfg = path_str(&gw.config_path()).to_string();
    let key = gw
        .cli(None, &["audit", "pubkey", "--config", &cfg])
        .ok()
        .trim()
        .to_string();
    // A clean stop signs everything (the shutdown checkpoint).
    gw.stop();

    let out_dir = tempfile::tempdir().unwrap();
    let od = path_str(out_dir.path()).to_string();
    let made = gw
        .cli(
            None,
            &[
                "audit",
                "evidence",
                "--grant",
                &grant.to_string(),
                "--config",
                &cfg,
                "--out",
                &od,
            ],
        )
        .ok();
    assert!(made.contains("1 refused") && made.contains("signed segment"), "{made}");
    let name = format!("grant-{grant}");
    let json_path = out_dir.path().join(format!("{name}.json"));
    let pack: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let approvals = pack["summary"]["approvals"].as_array().unwrap();
    let who: Vec<&str> = approvals.iter().filter_map(|a| a["approver"].as_str()).collect();
    assert!(
        who.contains(&"bob@example.com") && who.contains(&"root@example.com"),
        "{approvals:?}"
    );
    assert!(
        approvals.iter().any(|a| a["reason"] == "dba ok") && approvals.iter().any(|a| a["reason"] == "admins ok"),
        "{approvals:?}"
    );
    let life: Vec<&str> = pack["summary"]["grants"][0]["life"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["event"].as_str())
        .collect();
    assert!(life.contains(&"grant.activated"), "{life:?}");
    assert_eq!(
        pack["summary"]["refused_statements"][0]["sql"],
        "DELETE FROM accounts WHERE id = 7"
    );
    assert_eq!(
        pack["summary"]["sessions"].as_array().unwrap().len(),
        1,
        "the grant's one psql session"
    );
    assert_eq!(pack["summary"]["requests"][0]["reason"], "INC-4711 audit sample");
    assert!(
        pack["summary"]["commands"].as_array().unwrap().is_empty(),
        "the SSH grant is another grant"
    );

    // Verified alone, in another directory, with nothing but the key.
    let verify = |f: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_jitgate"))
            .args(["audit", "verify", "--pubkey", &key, "--evidence"])
            .arg(f)
            .env_remove("JITGATE_URL")
            .current_dir(out_dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, text) = verify(&json_path);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(": ok (grant"), "{text}");
    // An edited statement in the readable part, or in a segment line, is caught.
    let raw = std::fs::read_to_string(&json_path).unwrap();
    let forged = out_dir.path().join("forged.json");
    let mut v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    for e in v["events"].as_array_mut().unwrap() {
        if e["details"]["sql"] == "DELETE FROM accounts WHERE id = 7" {
            e["details"]["sql"] = "SELECT 1".into();
        }
    }
    std::fs::write(&forged, serde_json::to_vec(&v).unwrap()).unwrap();
    let (code, text) = verify(&forged);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("differs from the signed line"), "{text}");
    let mut v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    for seg in v["segments"].as_array_mut().unwrap() {
        for l in seg["lines"].as_array_mut().unwrap() {
            let t = l.as_str().unwrap().replace("WHERE id = 7", "WHERE id = 8");
            *l = t.into();
        }
    }
    std::fs::write(&forged, serde_json::to_vec(&v).unwrap()).unwrap();
    let (code, text) = verify(&forged);
    assert_eq!(code, Some(1), "{text}");
    // Another key refuses it.
    let other = "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
    let out = Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .args(["audit", "verify", "--pubkey", other, "--evidence"])
        .arg(&json_path)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));

    // The CSV of statements, one row per statement with the refusal marked.
    let csv = std::fs::read_to_string(out_dir.path().join(format!("{name}-statements.csv"))).unwrap();
    assert!(csv.starts_with("seq,time,session,identity,outcome"), "{csv}");
    assert!(
        csv.contains(",refused,") && csv.contains("DELETE FROM accounts WHERE id = 7"),
        "{csv}"
    );

    // alice's whole history: both grants, the SSH command too.
    let made = gw
        .cli(
            None,
            &[
                "audit",
                "evidence",
                "--user",
                "alice@example.com",
                "--since",
                "1h",
                "--config",
                &cfg,
                "--out",
                &od,
            ],
        )
        .ok();
    assert!(made.contains("1 commands") || made.contains("commands"), "{made}");
    let user_json = out_dir.path().join("user-alice_example.com.json");
    let upack: serde_json::Value = serde_json::from_slice(&std::fs::read(&user_json).unwrap()).unwrap();
    assert_eq!(
        upack["summary"]["grants"].as_array().unwrap().len(),
        2,
        "{}",
        upack["summary"]
    );
    assert!(
        upack["summary"]["commands"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["command"].as_str().unwrap_or("").contains("evidence-marker")),
        "{}",
        upack["summary"]["commands"]
    );
    assert_eq!(verify(&user_json).0, Some(0));
    // Nothing to show is an error, not an empty pack.
    let none = gw.cli(
        None,
        &["audit", "evidence", "--grant", "999", "--config", &cfg, "--out", &od],
    );
    assert_ne!(none.code(), 0);
    assert!(
        none.stderr().contains("no audit events for grant 999"),
        "{}",
        none.stderr()
    );

    // The user's pack (both protocols) in Chromium, offline, screenshot for the auditor guide.
    browser(
        "evidence",
        &[
            ("GW", String::new()),
            ("ISSUER", String::new()),
            (
                "EVIDENCE",
                path_str(&out_dir.path().join("user-alice_example.com.html")).to_string(),
            ),
            ("REFUSED", "DELETE FROM accounts WHERE id = 7".into()),
            ("COMMAND", "evidence-marker".into()),
        ],
    );
}
