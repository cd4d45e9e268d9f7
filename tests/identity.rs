//! End-to-end tests of identity: a real OpenID Connect provider (scripts/test-idp, panva's
//! oidc-provider), the real `jitgate serve`, the real CLI logging in through the code and device
//! flows, and the resulting gateway token used with the API, psql and OpenSSH.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::idp::{Browser, Idp, block_on, idp};
use support::*;

/// A gateway with `[oidc]` pointing at `p` (no static identities but root for admin work);
/// `fronts`: with the Postgres and SSH front ends.
fn gateway(p: &Idp, oidc_extra: &str, fronts: bool, body_extra: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap().keep();
    let oidc = p.oidc_section(&dir.join("client.secret"), oidc_extra);
    let listen_extra = if fronts {
        "#listen-extra ssh = \"127.0.0.1:0\"\n"
    } else {
        ""
    };
    let body = format!(
        "{listen_extra}{oidc}\n[[identities]]\nname = \"root@example.com\"\ngroups = [\"jitgate-admins\", \"jitgate-auditors\"]\ntoken_sha256 = \"{}\"\n\n\
         [[resources]]\nname = \"scratch-db\"\nkind = \"postgres\"\naddress = \"127.0.0.1:1\"\ncredentials.read-only = {{ user = \"x\" }}\n\n[[policies]]\nname = \"production\"\nresources = [\"*\"]\nrequesters = [\"dev\", \"approvers\"]\napprovers = [\"dba\"]\nreason_required = false\n\n{body_extra}",
        sha256_hex("root-token")
    );
    if fronts {
        Gateway::start_pg(&body)
    } else {
        Gateway::start(&body)
    }
}

/// A CLI run with its own config folder (where login.json goes), no token in the environment.
struct User {
    dir: PathBuf,
}

impl User {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap().keep(),
        }
    }

    fn cmd(&self, gw: &Gateway, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("JITGATE_URL", &gw.url)
            .env("JITGATE_CONFIG_DIR", &self.dir)
            .env_remove("JITGATE_TOKEN")
            .env_remove("XDG_CONFIG_HOME");
        c
    }

    fn run(&self, gw: &Gateway, args: &[&str]) -> Cli {
        Cli(self.cmd(gw, args).output().unwrap())
    }

    fn token(&self) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.dir.join("login.json")).unwrap()).unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    /// `jitgate login` (code flow): the test plays the browser.
    fn login(&self, gw: &Gateway, p: &Idp, user: &str, password: &str) -> Result<String, String> {
        self.login_with(gw, p, user, password, &[])
    }

    /// [`User::login`] with more arguments (`--fresh`).
    fn login_with(&self, gw: &Gateway, p: &Idp, user: &str, password: &str, extra: &[&str]) -> Result<String, String> {
        let mut args = vec!["login", "--no-browser"];
        args.extend_from_slice(extra);
        let (mut child, lines) = spawn_lines(self.cmd(gw, &args));
        let url = wait_line(&lines, |l| l.trim_start().starts_with("http"))
            .trim()
            .to_string();
        let b = Browser::new(&p.issuer);
        match b.login(&url, user, password) {
            Ok(callback) => {
                let r = block_on(async { reqwest::get(&callback).await.unwrap().status().as_u16() });
                assert_eq!(r, 200);
            }
            Err(page) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(page);
            }
        }
        finish(child, &lines)
    }

    /// `jitgate login --device`: the test approves the code in a "browser".
    fn login_device(&self, gw: &Gateway, p: &Idp, user: &str, password: &str) -> Result<String, String> {
        let (child, lines) = spawn_lines(self.cmd(gw, &["login", "--device"]));
        let line = wait_line(&lines, |l| l.contains("enter the code"));
        let code = line.rsplit(' ').next().unwrap().trim().to_string();
        Browser::new(&p.issuer).device(&code, user, password)?;
        finish(child, &lines)
    }
}

fn spawn_lines(mut c: Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send(format!("stderr: {l}"));
        }
    });
    (child, rx)
}

fn wait_line(rx: &mpsc::Receiver<String>, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            if f(&l) {
                return l;
            }
            seen.push(l);
        }
    }
    panic!("no matching line; saw {seen:?}");
}

fn finish(mut child: Child, rx: &mpsc::Receiver<String>) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            std::thread::sleep(Duration::from_millis(50));
            let text: Vec<String> = rx.try_iter().collect();
            let text = text.join("\n");
            return if st.success() { Ok(text) } else { Err(text) };
        }
        assert!(Instant::now() < deadline, "login did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn api(
    gw: &Gateway,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    block_on(async {
        let c = reqwest::Client::new();
        let mut rb = if method == "POST" {
            c.post(format!("{}{path}", gw.url)).json(&body)
        } else {
            c.get(format!("{}{path}", gw.url))
        };
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        let r = rb.send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(serde_json::Value::Null))
    })
}

fn exchange(gw: &Gateway, id_token: &str) -> (u16, serde_json::Value) {
    api(
        gw,
        "POST",
        "/v1/login/id_token",
        None,
        serde_json::json!({ "id_token": id_token }),
    )
}

fn whoami(gw: &Gateway, token: &str) -> (u16, serde_json::Value) {
    api(gw, "GET", "/v1/whoami", Some(token), serde_json::Value::Null)
}

#[test]
fn code_and_device_logins_give_tokens_for_the_api_psql_and_ssh() {
    let p = idp("main", None);
    let pg = support::pg::cluster();
    let db = pg.fresh_db();
    let s = support::ssh::sshd();
    let backends = format!(
        "[[resources]]\nname = \"prod-db\"\nkind = \"postgres\"\naddress = \"127.0.0.1:{}\"\ndatabase = \"{db}\"\n\
         credentials.read-only = {{ user = \"app_ro\", password_file = \"ro.pw\" }}\n\n{}",
        pg.port,
        s.resource("web-1", support::ssh::Upstream::Key)
    );
    let gw = gateway(&p, "", true, &backends);
    std::fs::write(gw.dir.path().join("ro.pw"), "ro-secret\n").unwrap();

    // alice: code flow.
    let alice = User::new();
    let out = alice.login(&gw, &p, "alice", "alice-password").unwrap();
    assert!(out.contains("logged in as alice@example.com [dev]"), "{out}");
    assert!(out.contains("SSH certificate"), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(alice.dir.join("login.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o600);
    }
    let who = alice.run(&gw, &["whoami"]).ok();
    assert!(who.starts_with("alice@example.com [dev]"), "{who}");
    // alice: device flow works as well.
    let alice2 = User::new();
    let out = alice2.login_device(&gw, &p, "alice", "alice-password").unwrap();
    assert!(out.contains("logged in as alice@example.com [dev]"), "{out}");

    // alice requests; bob (device flow) approves.
    let r1 = alice.run(&gw, &["request", "prod-db", "--for", "10m", "--json"]).json();
    let r2 = alice.run(&gw, &["request", "web-1", "--for", "10m", "--json"]).json();
    assert_eq!(r1["state"], "pending");
    let bob = User::new();
    let out = bob.login_device(&gw, &p, "bob", "bob-password").unwrap();
    assert!(out.contains("logged in as bob@example.com [dba, approvers]"), "{out}");
    for r in [&r1, &r2] {
        let v = bob.run(&gw, &["approve", &r["id"].to_string(), "--json"]).json();
        assert_eq!(v["state"], "approved", "{v}");
    }

    // psql with the gateway token as the password.
    let token = alice.token();
    let (host, port) = gw.pg_host_port();
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-c", "SELECT 40 + 2"])
        .arg(format!(
            "host={host} port={port} user=alice@example.com dbname=prod-db sslmode=require"
        ))
        .env("PGPASSWORD", &token)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "42",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // ssh with the certificate the login fetched (id_ed25519-cert.pub beside the key).
    let key = alice.dir.join("id_ed25519");
    assert!(alice.dir.join("id_ed25519-cert.pub").exists());
    let out = gw.ssh(&key, "web-1").arg("echo via-oidc-cert").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "via-oidc-cert\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Audited logins; no token, code or secret in the log or the audit file.
    let ev = gw.audit_events();
    let logins: Vec<_> = ev.iter().filter(|e| e["kind"] == "login").collect();
    assert_eq!(logins.len(), 3, "{logins:?}");
    assert!(
        logins
            .iter()
            .any(|e| e["details"]["method"] == "device" && e["actor"] == "bob@example.com")
    );
    let log = gw.log();
    let audit = std::fs::read_to_string(gw.audit_path()).unwrap();
    for secret in [
        token.as_str(),
        bob.token().as_str(),
        alice2.token().as_str(),
        "gateway-secret",
    ] {
        assert!(!log.contains(secret), "a secret leaked into the gateway log");
        assert!(!audit.contains(secret), "a secret leaked into the audit log");
    }
    let sig = token.rsplit('.').next().unwrap();
    assert!(!log.contains(sig));

    // Logging out also ends the SSH certificate that came with the login.
    let cert = std::fs::read(alice.dir.join("id_ed25519-cert.pub")).unwrap();
    assert!(alice.run(&gw, &["logout"]).ok().contains("logged out"));
    std::fs::write(alice.dir.join("id_ed25519-cert.pub"), cert).unwrap();
    let out = gw.ssh(&key, "web-1").arg("true").output().unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, m) = gw.http_get("/metrics", None);
    assert!(
        m.contains("jitgate_auth_failures_total{protocol=\"ssh\",reason=\"revoked_cert\"}"),
        "{m}"
    );
}

/// Sign `payload` as a JWT with a fresh RSA key that the provider does not publish.
fn rogue_jwt(kid: &str, payload: &serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    assert!(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out"
            ])
            .arg(&key)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": kid});
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    );
    let input = dir.path().join("in");
    std::fs::write(&input, &signing_input).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&key)
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success());
    format!("{signing_input}.{}", b64(&out.stdout))
}

#[test]
fn forged_foreign_expired_tampered_and_revoked_tokens_are_refused() {
    let p = idp("main", None);
    // Events written outside the request lifecycle reach webhooks too.
    let hooks = Receiver::start(0);
    let hook_dir = tempfile::tempdir().unwrap();
    let gw = gateway(
        &p,
        "accept_id_tokens = true\ntoken_lifetime = \"3s\"\n",
        false,
        &hooks.webhook(hook_dir.path(), &["login", "login.failed", "logout", "token.revoked"]),
    );

    // Wrong password at the provider: its form says no and nothing reaches the gateway; giving up
    // sends the CLI an error it reports.
    let u = User::new();
    let err = u.login(&gw, &p, "alice", "wrong-password").unwrap_err();
    assert!(
        err.contains("401") && err.contains("invalid username or password"),
        "{err}"
    );
    let (child, lines) = spawn_lines(u.cmd(&gw, &["login", "--no-browser"]));
    let url = wait_line(&lines, |l| l.trim_start().starts_with("http"))
        .trim()
        .to_string();
    let cb = Browser::new(&p.issuer).abort(&url);
    let _ = block_on(async { reqwest::get(&cb).await });
    let out = finish(child, &lines).unwrap_err();
    assert!(out.contains("refused the login: access_denied"), "{out}");

    // An email the provider has not verified is refused (eve's is marked unverified).
    let err = User::new().login(&gw, &p, "eve", "eve-password").unwrap_err();
    assert!(err.contains("has not verified the email eve@example.com"), "{err}");

    // A genuine ID token for this client is accepted (accept_id_tokens = true)...
    let good = p.id_token("gateway", "gateway-secret", "carol", "carol-password");
    let (st, v) = exchange(&gw, &good);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["identity"], "carol@example.com");
    // ...one issued to another client is not.
    let foreign = p.id_token("other-app", "other-secret", "carol", "carol-password");
    let (st, v) = exchange(&gw, &foreign);
    assert_eq!(st, 401, "{v}");
    assert!(v["error"].as_str().unwrap().contains("audience"), "{v}");
    // Signed by a key the provider does not publish (unknown kid, and the provider's own kid).
    let now = jiff::Timestamp::now().as_second();
    let claims = serde_json::json!({
        "iss": p.issuer, "aud": "gateway", "sub": "mallory", "email": "root@example.com",
        "email_verified": true, "groups": ["jitgate-admins"], "iat": now, "exp": now + 600,
    });
    for kid in ["rogue-key".to_string(), p.kids()[0].clone()] {
        let forged = rogue_jwt(&kid, &claims);
        let (st, v) = exchange(&gw, &forged);
        assert_eq!(st, 401, "{v}");
        let e = v["error"].as_str().unwrap();
        assert!(
            e.contains("key the provider does not publish") || e.contains("bad signature"),
            "{e}"
        );
    }
    // Garbage.
    let (st, _) = exchange(&gw, "not.a.jwt");
    assert_eq!(st, 401);

    // A gateway token: tampered, expired, revoked.
    let u = User::new();
    u.login(&gw, &p, "alice", "alice-password").unwrap();
    let token = u.token();
    let (st, _) = whoami(&gw, &token);
    assert_eq!(st, 200);
    let mut t = token.clone().into_bytes();
    let i = 8;
    t[i] = if t[i] == b'x' { b'y' } else { b'x' };
    let (st, v) = whoami(&gw, &String::from_utf8(t).unwrap());
    assert_eq!(st, 401, "{v}");
    std::thread::sleep(Duration::from_secs(4));
    let (st, v) = whoami(&gw, &token);
    assert_eq!(st, 401);
    assert!(v["error"].as_str().unwrap().contains("expired"), "{v}");
    let out = u.run(&gw, &["whoami"]);
    assert_eq!(out.code(), 1);
    assert!(out.stderr().contains("token expired"), "{}", out.stderr());

    // Logout revokes: the old token is refused afterwards (and the login file is gone).
    let u = User::new();
    u.login(&gw, &p, "alice", "alice-password").unwrap();
    let token = u.token();
    let out = u.run(&gw, &["logout"]);
    assert!(out.stdout().contains("logged out"), "{}", out.stderr());
    assert!(!u.dir.join("login.json").exists());
    let (st, v) = whoami(&gw, &token);
    assert_eq!(st, 401);
    assert!(v["error"].as_str().unwrap().contains("revoked"), "{v}");

    // An admin cuts off someone's token by its id (from the `login` audit event).
    let u = User::new();
    u.login(&gw, &p, "carol", "carol-password").unwrap();
    let token = u.token();
    let jti = gw
        .audit_events()
        .iter()
        .rev()
        .find(|e| e["kind"] == "login" && e["actor"] == "carol@example.com")
        .unwrap()["details"]["token_id"]
        .as_str()
        .unwrap()
        .to_string();
    let own = u.run(&gw, &["token", "revoke", &jti]);
    assert!(
        own.code() == 1 && own.stderr().contains("only admins"),
        "{}",
        own.stderr()
    );
    let out = gw.cli(Some("root"), &["token", "revoke", &jti]).ok();
    assert!(out.contains("revoked"), "{out}");
    let (st, _) = whoami(&gw, &token);
    assert_eq!(st, 401);

    let ev = gw.audit_events();
    assert!(
        ev.iter()
            .any(|e| e["kind"] == "token.revoked" && e["actor"] == "root@example.com")
    );
    assert!(
        ev.iter()
            .any(|e| e["kind"] == "logout" && e["actor"] == "alice@example.com")
    );
    assert!(ev.iter().filter(|e| e["kind"] == "login.failed").count() >= 3);
    for kind in ["login", "login.failed", "logout", "token.revoked"] {
        assert!(
            hooks.got_kind(kind, Duration::from_secs(5)),
            "webhook never got {kind}: {:?}",
            hooks.events()
        );
    }
    let (_, m) = gw.http_get("/metrics", None);
    assert!(
        m.contains("jitgate_auth_failures_total{protocol=\"oidc\",reason=\"invalid_id_token\"}"),
        "{m}"
    );
    assert!(m.contains("reason=\"revoked_token\""), "{m}");
}

#[test]
fn id_tokens_are_refused_by_default_and_after_they_expire() {
    let p = idp("shortlived", Some(2));
    let strict = gateway(&p, "accept_id_tokens = true\nclock_skew = \"0s\"\n", false, "");
    let default = gateway(&p, "", false, "");
    let tok = p.id_token("gateway", "gateway-secret", "alice", "alice-password");
    let (st, v) = exchange(&default, &tok);
    assert_eq!(st, 403, "{v}");
    let (st, v) = exchange(&strict, &tok);
    assert_eq!(st, 200, "{v}");
    std::thread::sleep(Duration::from_secs(3));
    let (st, v) = exchange(&strict, &tok);
    assert_eq!(st, 401);
    assert!(v["error"].as_str().unwrap().contains("expired"), "{v}");
}

#[test]
fn sighup_applies_a_new_oidc_section_keeps_a_broken_one_and_names_keys_that_need_a_restart() {
    let p = idp("default", None);
    let gw = gateway(&p, "", false, "");
    let tok = p.id_token("gateway", "gateway-secret", "alice", "alice-password");
    let (st, v) = exchange(&gw, &tok);
    assert_eq!(st, 403, "ID tokens are off by default: {v}");
    let original = std::fs::read_to_string(gw.config_path()).unwrap();

    // [oidc] now accepts ID tokens, and two keys change that only a restart applies.
    let edited = original
        .replace(
            "client_id = \"gateway\"\n",
            "client_id = \"gateway\"\naccept_id_tokens = true\n",
        )
        .replace(
            "expiry_warning = \"1s\"\n",
            "expiry_warning = \"1s\"\nlog_format = \"json\"\n",
        )
        .replace("http = \"127.0.0.1:0\"\n", "http = \"127.0.0.1:0\"\nhttp_tls = true\n");
    assert_ne!(edited, original);
    gw.write_raw_config(&edited);
    gw.sighup();
    let log = gw.wait_log("OpenID Connect settings reloaded", Duration::from_secs(10));
    assert!(
        log.contains("take effect only after a restart") && log.contains("gateway.log_format, listen.http_tls"),
        "each key that needs a restart is named: {log}"
    );
    let (st, v) = exchange(&gw, &tok);
    assert_eq!(st, 200, "the reloaded [oidc] accepts ID tokens: {v}");

    // A secret file that is gone: refused, the settings in force stay (ID tokens still work).
    let broken = edited.replace("client.secret", "missing.secret");
    gw.write_raw_config(&broken);
    gw.sighup();
    let log = gw.wait_log("[oidc] not reloaded", Duration::from_secs(10));
    assert!(log.contains("missing.secret"), "the error names the file: {log}");
    let tok = p.id_token("gateway", "gateway-secret", "alice", "alice-password");
    let (st, v) = exchange(&gw, &tok);
    assert_eq!(st, 200, "{v}");
    assert!(gw.audit_kinds().contains(&"config.reload_failed".to_string()));

    // Without [oidc], login through the provider is off at once.
    let start = broken.find("[oidc]").unwrap();
    let end = start + broken[start..].find("\n\n").unwrap();
    gw.write_raw_config(&format!("{}{}", &broken[..start], &broken[end..]));
    gw.sighup();
    gw.wait_log("[oidc] removed", Duration::from_secs(10));
    let (st, v) = exchange(&gw, &tok);
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("no OpenID Connect provider"),
        "{v}"
    );
}

/// `jitgate login` opens the URL with `$BROWSER` (commands separated by `:`, `%s` for the URL;
/// the first that starts wins); the page it opened is the one that logs in.
#[test]
fn login_opens_the_browser_named_by_browser_and_that_page_logs_in() {
    let p = idp("default", None);
    let gw = gateway(&p, "", false, "");
    let user = User::new();
    let opened = user.dir.join("opened-url");
    let script = user.dir.join("browser.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nprintf '%s' \"$2\" > {}\n", opened.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = user.cmd(&gw, &["login"]);
    c.env(
        "BROWSER",
        format!("/nonexistent/browser:{} --new-tab %s", script.display()),
    );
    let (child, lines) = spawn_lines(c);
    assert!(
        eventually(Duration::from_secs(10), || opened.exists()),
        "$BROWSER was not run"
    );
    let url = std::fs::read_to_string(&opened).unwrap();
    assert!(url.starts_with(&p.issuer), "{url}");
    let callback = Browser::new(&p.issuer).login(&url, "alice", "alice-password").unwrap();
    let st = block_on(async { reqwest::get(&callback).await.unwrap().status().as_u16() });
    assert_eq!(st, 200);
    let out = finish(child, &lines).unwrap();
    assert!(out.contains("logged in as alice@example.com"), "{out}");
}

#[test]
fn provider_key_rotation_keeps_logins_working_and_group_changes_apply_at_next_login() {
    let p = idp("rotating", None);
    let gw = gateway(&p, "", false, "");
    let alice = User::new();
    alice.login(&gw, &p, "alice", "alice-password").unwrap();
    let before = p.kids();
    p.rotate();
    let after = p.kids();
    assert_ne!(before, after, "the provider did not rotate its key");
    // A new login is signed with the new key: the gateway fetches the new JWKS by itself.
    let out = alice.login(&gw, &p, "alice", "alice-password").unwrap();
    assert!(out.contains("logged in as alice@example.com [dev]"), "{out}");

    // carol (approvers) asks; alice (dev) may not approve...
    let carol = User::new();
    carol.login(&gw, &p, "carol", "carol-password").unwrap();
    let r = carol
        .run(&gw, &["request", "scratch-db", "--for", "10m", "--json"])
        .json();
    let id = r["id"].to_string();
    let out = alice.run(&gw, &["approve", &id]);
    assert_eq!(out.code(), 1, "{}", out.stdout());
    // ...until the provider puts her in dba and she logs in again.
    p.set_groups("alice", &["dev", "dba"]);
    let who = alice.run(&gw, &["whoami"]).ok();
    assert!(
        who.starts_with("alice@example.com [dev]"),
        "groups change only at the next login: {who}"
    );
    alice.login(&gw, &p, "alice", "alice-password").unwrap();
    let who = alice.run(&gw, &["whoami"]).ok();
    assert!(who.starts_with("alice@example.com [dev, dba]"), "{who}");
    let v = alice.run(&gw, &["approve", &id, "--json"]).json();
    assert_eq!(v["state"], "approved", "{v}");
    p.set_groups("alice", &["dev"]);
}

#[test]
fn a_logout_on_one_replica_is_enforced_on_the_others() {
    let p = idp("default", None);
    let store = support::pg::cluster().store_db();
    let url_file = tempfile::tempdir().unwrap().keep().join("store-url");
    std::fs::write(&url_file, &store).unwrap();
    let shared = format!("[store]\nurl_file = \"{}\"\n", url_file.display());
    let a = gateway(&p, "accept_id_tokens = true\n", false, &shared);
    let mut b = gateway(&p, "accept_id_tokens = true\n", false, &shared);
    // B generated its own token keys: it says so, and names the file to copy.
    assert!(
        eventually(Duration::from_secs(5), || b.log().contains("keys differ")),
        "{}",
        b.log()
    );
    assert!(b.log().contains("auth/token_keys.json"), "{}", b.log());
    b.stop();
    std::fs::copy(
        a.data_dir().join("auth/token_keys.json"),
        b.data_dir().join("auth/token_keys.json"),
    )
    .unwrap();
    let warned = b.log().matches("keys differ").count();
    b.spawn();
    let id_token = p.id_token("gateway", "gateway-secret", "alice", "alice-password");
    let (st, v) = exchange(&a, &id_token);
    assert_eq!(st, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    // Minted on A, accepted on B.
    assert_eq!(whoami(&b, &token).0, 200);
    assert_eq!(b.log().matches("keys differ").count(), warned, "{}", b.log());
    // Logged out on A: refused on B at once (the revocation travels through the store's feed).
    let (st, v) = api(&a, "POST", "/v1/logout", Some(&token), serde_json::Value::Null);
    assert_eq!(st, 200, "{v}");
    let t = Instant::now();
    assert!(
        eventually(Duration::from_secs(2), || whoami(&b, &token).0 == 401),
        "B still accepts the token"
    );
    println!("logout on A refused on B after {:?}", t.elapsed());
}

#[test]
fn step_up_policies_take_approvals_only_from_a_fresh_provider_login() {
    let p = idp("main", None);
    let dir = tempfile::tempdir().unwrap().keep();
    let oidc = p.oidc_section(&dir.join("client.secret"), "");
    let gw = Gateway::start(&format!(
        "{oidc}\n{}[[resources]]\nname = \"step-db\"\nkind = \"postgres\"\naddress = \"127.0.0.1:1\"\ncredentials.read-only = {{ user = \"x\" }}\n\n\
         [[policies]]\nname = \"stepped\"\nresources = [\"step-db\"]\nrequesters = [\"dev\"]\napprovers = [\"dba\"]\nstep_up = \"3s\"\n",
        identities()
    ));
    let ask = || {
        gw.cli(
            Some("alice"),
            &["request", "step-db", "--for", "1h", "--reason", "INC-1", "--json"],
        )
        .json()["id"]
            .as_i64()
            .unwrap()
            .to_string()
    };
    let id = ask();
    // A static token never authenticated at the provider: refused, with the way out.
    let r = gw.cli(Some("bob"), &["approve", &id]);
    assert_eq!(r.code(), 1);
    assert!(
        r.refused()
            .contains("needs a sign-in at the identity provider within the last 3s"),
        "{}",
        r.refused()
    );
    assert!(r.refused().contains("jitgate login --fresh"), "{}", r.refused());
    // A fresh provider login approves; the same login a few seconds later no longer does.
    let bob = User::new();
    bob.login_with(&gw, &p, "bob", "bob-password", &["--fresh"]).unwrap();
    assert_eq!(bob.run(&gw, &["approve", &id]).code(), 0);
    let id2 = ask();
    std::thread::sleep(Duration::from_secs(4));
    let r = bob.run(&gw, &["approve", &id2]);
    assert_eq!(r.code(), 1, "a login 4 s old under step_up = 3s");
    bob.login_with(&gw, &p, "bob", "bob-password", &["--fresh"]).unwrap();
    assert_eq!(bob.run(&gw, &["approve", &id2]).code(), 0);
    let approved: Vec<_> = gw
        .audit_events()
        .into_iter()
        .filter(|e| e["kind"] == "request.approved" && e["actor"] == "bob@example.com")
        .collect();
    assert_eq!(approved.len(), 2);
    // --fresh needs the browser flow.
    let r = bob.run(&gw, &["login", "--fresh", "--device"]);
    assert_ne!(r.code(), 0);
}
