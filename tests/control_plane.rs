//! End-to-end tests of the control plane: the real `jitgate serve` binary, the real CLI, real
//! HTTP, a real SQLite store and audit file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

fn policy_config(extra: &str) -> String {
    format!(
        r#"{ids}
[[resources]]
name = "prod-db"
kind = "postgres"
address = "127.0.0.1:5432"
credentials.read-only = {{ user = "ro" }}
credentials.read-write = {{ user = "rw" }}

[[resources]]
name = "uncovered-db"
kind = "postgres"
address = "127.0.0.1:5432"
credentials.read-only = {{ user = "ro" }}

[[policies]]
name = "production"
resources = ["prod-*"]
requesters = ["dev"]
approvers = ["dba"]
max_duration = "4h"
{extra}
"#,
        ids = identities()
    )
}

#[test]
fn request_approve_expire_leaves_an_ordered_verifiable_audit_trail() {
    let gw = Gateway::start(&policy_config(""));
    let r = gw
        .cli(
            Some("alice"),
            &[
                "request",
                "prod-db",
                "--access",
                "read-only",
                "--for",
                "2s",
                "--reason",
                "INC-123",
                "--json",
            ],
        )
        .json();
    assert_eq!(r["state"], "pending");
    let id = r["id"].as_i64().unwrap().to_string();
    let out = gw.cli(Some("bob"), &["approve", &id]).ok();
    assert!(out.contains("approved by bob@example.com"), "{out}");

    let grants = gw.cli(Some("alice"), &["grants", "--json"]).json();
    assert_eq!(grants.as_array().unwrap().len(), 1, "{grants}");
    assert_eq!(grants[0]["resource"], "prod-db");
    assert_eq!(grants[0]["access"], "read-only");
    let table = gw.cli(Some("bob"), &["grants", "--all"]).ok();
    assert!(
        table.contains("alice@example.com") && table.contains("prod-db"),
        "{table}"
    );

    // It expires by itself and leaves the cache.
    assert!(eventually(Duration::from_secs(5), || gw
        .cli(Some("alice"), &["grants", "--json"])
        .json()
        .as_array()
        .unwrap()
        .is_empty()));
    let who = gw.cli(Some("alice"), &["whoami", "--json"]).json();
    assert!(who["grants"].as_array().unwrap().is_empty(), "{who}");
    assert!(eventually(Duration::from_secs(3), || gw
        .audit_kinds()
        .contains(&"grant.expired".to_string())));

    let kinds = gw.audit_kinds();
    let order: Vec<&str> = kinds
        .iter()
        .map(String::as_str)
        .filter(|k| {
            [
                "request.created",
                "request.approved",
                "grant.activated",
                "grant.expired",
            ]
            .contains(k)
        })
        .collect();
    assert_eq!(
        order,
        [
            "request.created",
            "request.approved",
            "grant.activated",
            "grant.expired"
        ],
        "{kinds:?}"
    );
    let created = gw
        .audit_events()
        .into_iter()
        .find(|e| e["kind"] == "request.created")
        .unwrap();
    assert_eq!(created["actor"], "alice@example.com");
    assert_eq!(created["reason"], "INC-123");

    let verify = gw
        .cli(None, &["audit", "verify", "--file", path_str(&gw.audit_path())])
        .ok();
    assert!(verify.contains("chain intact"), "{verify}");
    // Also through the API, as an auditor.
    let evs = gw
        .cli(Some("root"), &["audit", "search", "--kind", "grant.", "--json"])
        .ok();
    assert!(
        evs.contains("grant.activated") && evs.contains("grant.expired"),
        "{evs}"
    );
}

#[test]
fn refusals_exit_1_with_a_message_that_says_what_to_do() {
    let gw = Gateway::start(&policy_config(""));
    let r = gw
        .cli(Some("alice"), &["request", "prod-db", "--reason", "INC-1", "--json"])
        .json();
    let id = r["id"].as_i64().unwrap().to_string();

    let e = gw.cli(Some("alice"), &["approve", &id]).refused();
    assert!(e.contains("cannot approve your own request"), "{e}");
    let e = gw.cli(Some("carol"), &["approve", &id]).refused();
    assert!(
        e.contains("carol@example.com may not approve request") && e.contains("[dba]"),
        "{e}"
    );
    let e = gw.cli(Some("alice"), &["request", "prod-db"]).refused();
    assert!(e.contains("requires a reason") && e.contains("--reason"), "{e}");
    let e = gw
        .cli(Some("alice"), &["request", "prod-db", "--for", "5h", "--reason", "x"])
        .refused();
    assert!(
        e.contains("exceeds the maximum of 4h") && e.contains("--for 4h or less"),
        "{e}"
    );
    let e = gw
        .cli(Some("alice"), &["request", "uncovered-db", "--reason", "x"])
        .refused();
    assert!(e.contains("no policy covers `uncovered-db`"), "{e}");
    let e = gw.cli(Some("dave"), &["request", "prod-db", "--reason", "x"]).refused();
    assert!(e.contains("may not request `prod-db`") && e.contains("[dev]"), "{e}");
    let e = gw
        .cli(
            Some("alice"),
            &["request", "prod-db", "--access", "superuser", "--reason", "x"],
        )
        .refused();
    assert!(e.contains("access `superuser` is not allowed"), "{e}");
    let e = gw.cli(Some("bob"), &["deny", &id, "--reason", ""]).refused();
    assert!(e.contains("needs a reason"), "{e}");
    let e = gw.cli(None, &["grants"]).refused();
    assert!(e.contains("missing bearer token") && e.contains("JITGATE_TOKEN"), "{e}");
    let mut bad = gw.cli(None, &["grants"]);
    bad.0 = std::process::Command::new(BIN)
        .args(["grants"])
        .env("JITGATE_URL", &gw.url)
        .env("JITGATE_TOKEN", "forged")
        .env("HOME", gw.dir.path())
        .output()
        .unwrap();
    assert!(bad.refused().contains("invalid or expired token"));
    // Usage errors are exit 2.
    assert_eq!(gw.cli(Some("alice"), &["approve", "not-a-number"]).code(), 2);
    // Nothing was granted by any of that.
    assert!(
        gw.cli(Some("alice"), &["grants", "--json"])
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
    // The request is still pending; bob denies it; then it cannot be approved.
    gw.cli(Some("bob"), &["deny", &id, "--reason", "use staging"]).ok();
    let e = gw.cli(Some("bob"), &["approve", &id]).refused();
    assert!(e.contains("is denied, not pending"), "{e}");
}

/// Scripts can tell the outcomes apart: 3 denied, 4 still pending at `--timeout`, 5 gateway
/// unreachable, 1 refused, 2 usage; `--help` lists them.
#[test]
fn exit_codes_tell_denied_pending_unreachable_and_usage_apart() {
    let gw = Gateway::start(&policy_config(""));
    let pending = gw.cli(
        Some("alice"),
        &[
            "request",
            "prod-db",
            "--for",
            "1h",
            "--reason",
            "INC-1",
            "--wait",
            "--timeout",
            "1s",
        ],
    );
    assert_eq!(pending.code(), 4, "{}", pending.stderr());
    assert!(
        pending.stderr().contains("still pending after 1s"),
        "{}",
        pending.stderr()
    );
    let id = gw
        .cli(Some("bob"), &["requests", "--state", "pending", "--json"])
        .json()[0]["id"]
        .as_i64()
        .unwrap()
        .to_string();
    // Denied while someone waits on another request.
    let waiter = {
        let mut c = std::process::Command::new(BIN);
        c.args(["request", "prod-db", "--for", "1h", "--reason", "INC-2", "--wait"])
            .env("JITGATE_URL", &gw.url)
            .env("JITGATE_TOKEN", token("alice"))
            .env("HOME", gw.dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c.spawn().unwrap()
    };
    assert!(eventually(Duration::from_secs(5), || gw
        .cli(Some("bob"), &["requests", "--state", "pending", "--json"])
        .json()
        .as_array()
        .unwrap()
        .len()
        == 2));
    let second = gw
        .cli(Some("bob"), &["requests", "--state", "pending", "--json"])
        .json();
    let other = second
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap().to_string())
        .find(|i| *i != id)
        .unwrap();
    gw.cli(Some("bob"), &["deny", &other, "--reason", "use staging"]).ok();
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    // Unreachable: nothing listens there.
    let down = gw.cli(Some("alice"), &["whoami", "--url", "http://127.0.0.1:9"]);
    assert_eq!(down.code(), 5, "{}", down.stderr());
    assert!(down.stderr().contains("cannot reach the gateway"), "{}", down.stderr());
    // Refused by the gateway: 1; a flag that does not exist: 2.
    gw.cli(Some("carol"), &["approve", &id]).refused();
    assert_eq!(gw.cli(Some("alice"), &["whoami", "--no-such-flag"]).code(), 2);
    let help = gw.cli(None, &["--help"]).ok();
    assert!(
        help.contains("Exit codes: 0 ok, 1 error or refused, 2 usage, 3 request denied"),
        "{help}"
    );
}

#[test]
fn revoke_release_extend_and_wait() {
    let gw = Gateway::start(&policy_config(""));
    // --wait blocks until bob approves.
    let waiter = {
        let mut c = std::process::Command::new(BIN);
        c.args(["request", "prod-db", "--for", "1h", "--reason", "INC-9", "--wait"])
            .env("JITGATE_URL", &gw.url)
            .env("JITGATE_TOKEN", token("alice"))
            .env("HOME", gw.dir.path());
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    assert!(eventually(Duration::from_secs(5), || gw
        .cli(Some("bob"), &["requests", "--state", "pending", "--json"])
        .json()
        .as_array()
        .unwrap()
        .len()
        == 1));
    let pending = gw
        .cli(Some("bob"), &["requests", "--state", "pending", "--json"])
        .json();
    let id = pending[0]["id"].as_i64().unwrap().to_string();
    gw.cli(Some("bob"), &["approve", &id, "--reason", "ok"]).ok();
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("approved by bob@example.com"));

    let g = gw.cli(Some("alice"), &["grants", "--json"]).json();
    let gid = g[0]["id"].as_i64().unwrap().to_string();
    let expires = g[0]["expires_at"].as_str().unwrap().to_string();

    // Extension: a new approval moves the end of the same grant.
    let ext = gw
        .cli(
            Some("alice"),
            &["extend", &gid, "--for", "30m", "--reason", "more", "--json"],
        )
        .json();
    assert_eq!(ext["extends_grant"].as_i64().unwrap().to_string(), gid);
    gw.cli(Some("bob"), &["approve", &ext["id"].as_i64().unwrap().to_string()])
        .ok();
    let g2 = gw.cli(Some("alice"), &["grants", "--json"]).json();
    assert_eq!(g2[0]["id"].as_i64().unwrap().to_string(), gid);
    assert!(g2[0]["expires_at"].as_str().unwrap() > expires.as_str(), "{g2}");
    assert!(gw.audit_kinds().contains(&"grant.extended".to_string()));

    // carol (not an approver) cannot revoke; bob can.
    let e = gw.cli(Some("carol"), &["revoke", &gid]).refused();
    assert!(e.contains("only an approver"), "{e}");
    gw.cli(Some("bob"), &["revoke", &gid, "--reason", "incident over"]).ok();
    assert!(
        gw.cli(Some("alice"), &["grants", "--json"])
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
    let e = gw.cli(Some("bob"), &["revoke", &gid]).refused();
    assert!(e.contains("is revoked"), "{e}");
    let revoked = gw
        .audit_events()
        .into_iter()
        .find(|e| e["kind"] == "grant.revoked")
        .unwrap();
    assert_eq!(revoked["actor"], "bob@example.com");
    assert_eq!(revoked["reason"], "incident over");

    // Release by resource name.
    gw.granted(&["prod-db", "--reason", "again"]);
    let out = gw.cli(Some("alice"), &["release", "prod-db"]).ok();
    assert!(out.contains("released"), "{out}");
    assert!(
        gw.cli(Some("alice"), &["grants", "--json"])
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
    let e = gw.cli(Some("alice"), &["release", "prod-db"]).refused();
    assert!(e.contains("no live grant"), "{e}");
}

#[test]
fn auto_approval_opens_a_grant_without_an_approver() {
    let extra = r#"
[[policies.auto_approve]]
groups = ["dev"]
access = ["read-only"]
max_duration = "30m"
window = "daily 00:00-24:00 UTC"
"#;
    let gw = Gateway::start(&policy_config(extra));
    let r = gw
        .cli(
            Some("alice"),
            &["request", "prod-db", "--for", "10m", "--reason", "oncall"],
        )
        .ok();
    assert!(
        r.contains("auto-approved by policy `production` auto_approve #1"),
        "{r}"
    );
    assert_eq!(
        gw.cli(Some("alice"), &["grants", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // read-write is not covered by the rule: pending.
    let r = gw
        .cli(
            Some("alice"),
            &[
                "request",
                "prod-db",
                "--access",
                "read-write",
                "--for",
                "10m",
                "--reason",
                "x",
                "--json",
            ],
        )
        .json();
    assert_eq!(r["state"], "pending");
    let approved = gw
        .audit_events()
        .into_iter()
        .find(|e| e["kind"] == "request.approved")
        .unwrap();
    assert_eq!(approved["actor"], "policy:production");
}

#[test]
fn a_live_grant_survives_a_restart_and_an_expired_one_does_not_come_back() {
    let mut gw = Gateway::start(&policy_config(""));
    gw.granted(&["prod-db", "--for", "1h", "--reason", "long"]);
    gw.granted(&[
        "prod-db",
        "--access",
        "read-write",
        "--for",
        "2s",
        "--reason",
        "short",
        "--json",
    ]);
    assert_eq!(
        gw.cli(Some("alice"), &["grants", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );

    gw.stop();
    std::thread::sleep(Duration::from_millis(2500));
    gw.spawn();

    let grants = gw.cli(Some("alice"), &["grants", "--json"]).json();
    let grants = grants.as_array().unwrap();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0]["access"], "read-only");
    let who = gw.cli(Some("alice"), &["whoami", "--json"]).json();
    assert_eq!(
        who["grants"].as_array().unwrap().len(),
        1,
        "the cache holds only the live grant: {who}"
    );
    let expired: Vec<_> = gw
        .audit_events()
        .into_iter()
        .filter(|e| e["kind"] == "grant.expired")
        .collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0]["details"]["while_down"], true);
    assert!(gw.log().contains("grants_restored=1"), "{}", gw.log());
    gw.cli(None, &["audit", "verify", "--file", path_str(&gw.audit_path())])
        .ok();
}

#[test]
fn sighup_keeps_the_old_config_on_a_broken_file_and_applies_a_good_one() {
    let mut gw = Gateway::start(&policy_config(""));
    let good = std::fs::read_to_string(gw.config_path()).unwrap();

    // Broken: a typo'd key. The old config stays.
    gw.write_raw_config(&good.replace("requesters = [\"dev\"]", "requestors = [\"dev\"]"));
    gw.sighup();
    let log = gw.wait_log("configuration reload refused", Duration::from_secs(5));
    assert!(
        log.contains("unknown key `requestors`") && log.contains("did you mean `requesters`?"),
        "{log}"
    );
    assert!(
        log.contains(&format!("{}:", gw.config_path().display())),
        "the error names the file: {log}"
    );
    gw.cli(Some("alice"), &["request", "prod-db", "--reason", "still works"])
        .ok();

    // Good: a new resource and policy appear without a restart.
    let added = format!(
        "{good}\n[[resources]]\nname = \"new-db\"\nkind = \"postgres\"\naddress = \"127.0.0.1:5432\"\ncredentials.read-only = {{ user = \"ro\" }}\n\n[[policies]]\nname = \"new\"\nresources = [\"new-db\"]\nrequesters = [\"dev\"]\napprovers = [\"dba\"]\n"
    );
    gw.write_raw_config(&added);
    gw.sighup();
    gw.wait_log("configuration reloaded", Duration::from_secs(5));
    gw.cli(Some("alice"), &["request", "new-db", "--reason", "new"]).ok();

    let (_, metrics) = gw.http_get("/metrics", None);
    assert!(
        metrics.contains("jitgate_config_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("jitgate_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    let kinds = gw.audit_kinds();
    assert!(kinds.contains(&"config.reload_failed".to_string()) && kinds.contains(&"config.reloaded".to_string()));
    gw.stop();
}

#[test]
fn metrics_are_exposed_and_accepted_by_promtool() {
    let gw = Gateway::start(&policy_config(""));
    gw.granted(&["prod-db", "--for", "1h", "--reason", "m"]);
    let (status, body) = gw.http_get("/metrics", None);
    assert_eq!(status, 200);
    for needle in [
        "jitgate_grants_active 1",
        "jitgate_requests_total{state=\"pending\"} 1",
        "jitgate_requests_total{state=\"approved\"} 1",
        "jitgate_approval_latency_seconds_count 1",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "jitgate_store_operation_seconds_bucket",
    ] {
        assert!(body.contains(needle), "missing {needle}:\n{body}");
    }
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = promtool else {
        panic!("promtool is not installed: run ./scripts/test (it installs it) or `apt-get install prometheus`");
    };
    use std::io::Write;
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let (s, b) = gw.http_get("/healthz", None);
    assert_eq!((s, b.trim()), (200, "ok"));
    let (s, b) = gw.http_get("/readyz", None);
    assert_eq!((s, b.trim()), (200, "ready"));
    let (s, b) = gw.http_get("/v1/whoami", None);
    assert_eq!(s, 401);
    assert!(b.contains("\"hint\""), "{b}");
    let (s, b) = gw.http_get("/v1/nope", Some(&token("alice")));
    assert_eq!(s, 404);
    assert!(b.contains("/v1/"), "{b}");
}

#[test]
fn machine_tokens_are_minted_by_admins_only_and_work_at_once() {
    let gw = Gateway::start(&policy_config(""));
    let e = gw
        .cli(Some("alice"), &["token", "create", "ci-bot", "--group", "dev"])
        .refused();
    assert!(e.contains("only admins"), "{e}");
    let t = gw
        .cli(Some("root"), &["token", "create", "ci-bot", "--group", "dev", "--json"])
        .json();
    let tok = t["token"].as_str().unwrap();
    assert_eq!(t["sha256"].as_str().unwrap(), sha256_hex(tok));
    let out = std::process::Command::new(BIN)
        .args(["whoami", "--json"])
        .env("JITGATE_URL", &gw.url)
        .env("JITGATE_TOKEN", tok)
        .env("HOME", gw.dir.path())
        .output()
        .unwrap();
    let who: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(who["name"], "ci-bot");
    // The token never reaches the log or the audit file.
    assert!(!gw.log().contains(tok));
    assert!(!std::fs::read_to_string(gw.audit_path()).unwrap().contains(tok));
}

#[test]
fn the_api_serves_tls_when_asked_and_the_cli_trusts_it_only_with_the_ca() {
    let gw = Gateway::start(&format!("#listen-extra http_tls = true\n{}", policy_config("")));
    assert!(gw.url.starts_with("https://"), "{}", gw.url);
    // An untrusted certificate is "cannot reach" for scripts: exit 5.
    let untrusted = gw.cli(Some("alice"), &["whoami"]);
    assert_eq!(untrusted.code(), 5, "{}", untrusted.stderr());
    let e = untrusted.stderr();
    assert!(e.contains("not trusted") && e.contains("--ca-file"), "{e}");
    let ca = gw.data_dir().join("tls/ca.crt");
    let who = gw
        .cli(Some("alice"), &["whoami", "--json", "--ca-file", path_str(&ca)])
        .json();
    assert_eq!(who["name"], "alice@example.com");
}

#[test]
fn a_client_that_never_finishes_its_headers_is_cut_off_and_others_are_served() {
    use std::io::{Read, Write};
    let gw = Gateway::start(&policy_config(""));
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    let t = std::time::Instant::now();
    // Meanwhile the API answers everyone else.
    let (s, _) = gw.http_get("/healthz", None);
    assert_eq!(s, 200);
    slow.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let n = slow.read(&mut [0u8; 64]).unwrap_or(0);
    assert_eq!(n, 0, "connection should be closed");
    assert!(
        t.elapsed() >= Duration::from_secs(9) && t.elapsed() < Duration::from_secs(15),
        "{:?}",
        t.elapsed()
    );
}

/// A tiny tmpfs, unmounted (lazily) on drop.
struct TinyFs(std::path::PathBuf);

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn an_approval_that_cannot_be_audited_opens_nothing_and_the_log_stays_verifiable() {
    let fsdir = tempfile::tempdir().unwrap();
    let mnt = fsdir.path().join("auditfs");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(
        ok.success(),
        "this test mounts a small tmpfs to fill the audit disk: it needs root"
    );
    let _fs = TinyFs(mnt.clone());
    let log = mnt.join("audit.jsonl");
    let gw = Gateway::start(&format!(
        "{}\n[audit]\nfile = \"{}\"\n",
        policy_config(""),
        log.display()
    ));
    // A reason longer than a page, so the approval's events need fresh pages on the full disk.
    let reason = "disk test ".repeat(1000);
    let r = gw
        .cli(Some("alice"), &["request", "prod-db", "--reason", &reason, "--json"])
        .json();
    let id = r["id"].as_i64().unwrap().to_string();

    // Fill the audit file system.
    let filler = mnt.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);

    let e = gw.cli(Some("bob"), &["approve", &id]).refused();
    assert!(e.contains("audit log could not be written"), "{e}");
    assert!(
        gw.cli(Some("alice"), &["grants", "--json"])
            .json()
            .as_array()
            .unwrap()
            .is_empty(),
        "an unaudited grant must not be live"
    );
    assert!(
        gw.cli(Some("alice"), &["whoami", "--json"]).json()["grants"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(gw.log().contains("undoing it (fail closed)"), "{}", gw.log());

    // Space comes back: everything works again and the chain has no partial line.
    std::fs::remove_file(&filler).unwrap();
    gw.granted(&["prod-db", "--reason", "again"]);
    assert_eq!(
        gw.cli(Some("alice"), &["grants", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    gw.cli(None, &["audit", "verify", "--file", path_str(&log)]).ok();
}

#[test]
fn undecided_requests_escalate_and_then_expire_by_themselves() {
    let extra = "pending_timeout = \"3s\"\nescalate_after = \"1s\"\nescalate_to = [\"jitgate-admins\"]\n";
    let gw = Gateway::start(&policy_config(extra));
    let r = gw
        .cli(
            Some("alice"),
            &["request", "prod-db", "--reason", "nobody answers", "--json"],
        )
        .json();
    let id = r["id"].as_i64().unwrap().to_string();
    assert!(eventually(Duration::from_secs(4), || gw
        .audit_kinds()
        .contains(&"request.escalated".to_string())));
    assert!(eventually(Duration::from_secs(5), || {
        gw.cli(Some("alice"), &["requests", "--mine", "--json"]).json()[0]["state"] == "expired"
    }));
    let e = gw.cli(Some("bob"), &["approve", &id]).refused();
    assert!(e.contains("is expired, not pending"), "{e}");
    let kinds = gw.audit_kinds();
    let pos = |k: &str| kinds.iter().position(|x| x == k).unwrap();
    assert!(
        pos("request.created") < pos("request.escalated") && pos("request.escalated") < pos("request.expired"),
        "{kinds:?}"
    );
}

fn hmac_hex(secret: &str, msg: &str) -> String {
    // HMAC-SHA256 by hand (RFC 2104), to check the gateway's signature independently.
    use sha2::Digest;
    let mut key = secret.as_bytes().to_vec();
    if key.len() > 64 {
        key = sha2::Sha256::digest(&key).to_vec();
    }
    key.resize(64, 0);
    let ipad: Vec<u8> = key.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = key.iter().map(|b| b ^ 0x5c).collect();
    let inner = sha2::Sha256::digest([ipad.as_slice(), msg.as_bytes()].concat());
    hex::encode(sha2::Sha256::digest([opad.as_slice(), inner.as_slice()].concat()))
}

#[test]
fn webhooks_deliver_signed_json_and_slack_without_delaying_anyone() {
    let rx = Receiver::start(0);
    // A port where nothing listens yet: its webhook must not delay approvals and must be retried.
    let late_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let w = |name: &str, v: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, v).unwrap();
        p.display().to_string()
    };
    let json_url = w("json.url", format!("http://127.0.0.1:{}/json\n", rx.port));
    let slack_url = w("slack.url", format!("http://127.0.0.1:{}/slack\n", rx.port));
    let late_url = w("late.url", format!("http://127.0.0.1:{late_port}/late\n"));
    let secret = w("hook.secret", "s3cret-hmac-key\n".into());
    let hooks = format!(
        "\n[[notify.webhooks]]\nurl_file = \"{json_url}\"\nformat = \"json\"\nsecret_file = \"{secret}\"\n\n[[notify.webhooks]]\nurl_file = \"{slack_url}\"\nformat = \"slack\"\nevents = [\"request.created\"]\n\n[[notify.webhooks]]\nurl_file = \"{late_url}\"\nevents = [\"request.created\"]\n"
    );
    let gw = Gateway::start(&format!("{}{hooks}", policy_config("")));
    let t = std::time::Instant::now();
    let r = gw
        .cli(
            Some("alice"),
            &["request", "prod-db", "--for", "30m", "--reason", "INC-7", "--json"],
        )
        .json();
    let id = r["id"].as_i64().unwrap();
    gw.cli(Some("bob"), &["approve", &id.to_string()]).ok();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "webhooks delayed the API: {:?}",
        t.elapsed()
    );

    assert!(
        eventually(Duration::from_secs(5), || rx.events().len() >= 3),
        "{:?}",
        rx.events()
    );
    let evs = rx.events();
    let created = evs
        .iter()
        .find(|(h, b)| b["event"] == "request.created" && h.contains_key("x-jitgate-signature"))
        .expect("signed json request.created");
    let (h, body) = created;
    assert_eq!(body["version"], 1);
    assert_eq!(body["identity"], "alice@example.com");
    assert_eq!(body["resource"], "prod-db");
    assert_eq!(body["reason"], "INC-7");
    assert_eq!(body["commands"]["approve"], format!("jitgate approve {id}"));
    // Verify the signature over "timestamp.body" exactly as received.
    let raw = rx
        .got
        .lock()
        .unwrap()
        .iter()
        .find(|(hh, _)| hh.get("x-jitgate-signature") == h.get("x-jitgate-signature"))
        .unwrap()
        .1
        .clone();
    let expect = format!(
        "sha256={}",
        hmac_hex("s3cret-hmac-key", &format!("{}.{raw}", h["x-jitgate-timestamp"]))
    );
    assert_eq!(h["x-jitgate-signature"], expect);
    assert!(
        evs.iter()
            .any(|(_, b)| b["event"] == "request.approved" && b["actor"] == "bob@example.com")
    );
    let slack = evs
        .iter()
        .find(|(_, b)| b.get("blocks").is_some())
        .expect("slack payload");
    let text = slack.1["text"].as_str().unwrap();
    assert!(
        text.contains("alice@example.com") && text.contains("prod-db") && text.contains("INC-7"),
        "{text}"
    );
    assert!(slack.1.to_string().contains(&format!("jitgate approve {id}")));

    // The receiver that was down comes up; the retry delivers.
    std::thread::sleep(Duration::from_millis(1500));
    let late = Receiver::start(late_port);
    assert!(eventually(Duration::from_secs(10), || late
        .events()
        .iter()
        .any(|(_, b)| b["event"] == "request.created")));
    let (_, m) = gw.http_get("/metrics", None);
    assert!(m.contains("jitgate_notifications_total{result=\"sent\"}"), "{m}");
    assert!(
        !gw.log().contains(&format!("127.0.0.1:{}", rx.port)),
        "webhook URLs are secrets and must not be logged"
    );
}

#[test]
fn the_audit_log_rotates_and_verify_and_export_walk_every_file() {
    let gw = Gateway::start(&format!("{}\n[audit]\nrotate_bytes = 3000\n", policy_config("")));
    for i in 0..8 {
        gw.granted(&["prod-db", "--reason", &format!("rotation {i}")]);
    }
    let rotated: Vec<_> = std::fs::read_dir(gw.data_dir())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
        .collect();
    assert!(rotated.len() >= 2, "{rotated:?}");
    let cfg = path_str(&gw.config_path()).to_string();
    let v = gw.cli(None, &["audit", "verify", "--config", &cfg]).ok();
    assert!(
        v.contains("chain intact") && v.contains(&format!("{} file(s)", rotated.len() + 1)),
        "{v}"
    );

    let export = gw.cli(None, &["audit", "export", "--config", &cfg]).ok();
    let seqs: Vec<u64> = export
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "export must be the whole chain in order"
    );
    assert_eq!(seqs.first(), Some(&1));

    // Tampering with a rotated file is found and the file is named.
    let mut sorted = rotated.clone();
    sorted.sort();
    let victim = gw.data_dir().join(&sorted[0]);
    let text = std::fs::read_to_string(&victim).unwrap();
    std::fs::write(&victim, text.replacen("rotation 0", "rotation 9", 1)).unwrap();
    let e = gw.cli(None, &["audit", "verify", "--config", &cfg]).refused();
    assert!(e.contains("audit-") && e.contains("altered or damaged"), "{e}");
}

/// The auditor's path: the public key from `jitgate audit pubkey`, a copy of the files, and
/// `jitgate audit verify --pubkey` run elsewhere without the gateway or its config. A webhook
/// listing `chain.checkpoint` is the external witness of every signed head.
#[test]
fn signed_checkpoints_verify_offline_on_a_copy_and_expose_forgery_and_truncation() {
    let witness = Receiver::start(0);
    let dir = tempfile::tempdir().unwrap();
    let hook = witness.webhook(dir.path(), &["chain.checkpoint"]);
    let mut gw = Gateway::start(&format!("{}\n[audit]\ncheckpoint_every = 5\n{hook}", policy_config("")));
    let cfg = path_str(&gw.config_path()).to_string();
    let key = gw
        .cli(None, &["audit", "pubkey", "--config", &cfg])
        .ok()
        .trim()
        .to_string();
    assert!(key.starts_with("ed25519:"), "{key}");
    for i in 0..4 {
        gw.granted(&["prod-db", "--reason", &format!("checkpoint {i}")]);
    }
    assert!(
        witness.got_kind("chain.checkpoint", Duration::from_secs(5)),
        "{:?}",
        witness.events()
    );
    gw.stop();
    let kinds = gw.audit_kinds();
    assert_eq!(kinds.last().map(String::as_str), Some("chain.checkpoint"), "{kinds:?}");
    assert!(
        kinds.iter().filter(|k| *k == "chain.checkpoint").count() >= 3,
        "{kinds:?}"
    );
    let stopped = kinds.iter().rposition(|k| k == "gateway.stopped").unwrap();
    assert_eq!(
        stopped + 2,
        kinds.len(),
        "the shutdown checkpoint signs gateway.stopped"
    );

    // The auditor's copy, verified in another directory with nothing but the key.
    let copy = tempfile::tempdir().unwrap();
    let file = copy.path().join("audit.jsonl");
    std::fs::copy(gw.audit_path(), &file).unwrap();
    let verify = |f: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_jitgate"))
            .args(["audit", "verify", "--pubkey", &key])
            .arg(f)
            .current_dir(copy.path())
            .env_remove("JITGATE_URL")
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
    let (code, out) = verify(&file);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("chain intact") && out.contains("verified with ed25519:") && out.contains("last signed position"),
        "{out}"
    );
    assert!(!out.contains("not signed"), "a cleanly stopped log ends signed: {out}");

    // The witness holds the heads the log signed: its last equals the file's last checkpoint.
    let last_line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&file).unwrap().lines().last().unwrap()).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || witness
            .events()
            .iter()
            .any(|(_, b)| b["details"]["head"] == last_line["details"]["head"])),
        "the shutdown checkpoint never reached the witness: {:?}",
        witness.events()
    );

    // Cut short after a checkpoint plus two lines: still verifies, and says what is unsigned.
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let first_cp = lines.iter().position(|l| l.contains("\"chain.checkpoint\"")).unwrap();
    let cut = copy.path().join("cut.jsonl");
    std::fs::write(
        &cut,
        lines[..first_cp + 3]
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let (code, out) = verify(&cut);
    assert_eq!(
        code,
        Some(3),
        "an auditor's copy must not pass with an unsigned tail: {out}"
    );
    assert!(
        out.contains("2 event(s) after the last checkpoint") && out.contains("--allow-unsigned-tail"),
        "{out}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .args(["audit", "verify", "--allow-unsigned-tail", "--pubkey", &key])
        .arg(&cut)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // An excerpt from the middle passes only as a --segment.
    let seg = copy.path().join("segment.jsonl");
    std::fs::write(
        &seg,
        lines[2..=first_cp].iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let (code, out) = verify(&seg);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("--segment"), "{out}");

    // An edit with the whole chain re-hashed after it: the chain is intact, the signature is not.
    let forged = copy.path().join("forged.jsonl");
    let mut prev: Option<String> = None;
    let mut out_text = String::new();
    for l in &lines {
        let mut e: serde_json::Value = serde_json::from_str(l).unwrap();
        if e["reason"] == "checkpoint 0" {
            e["reason"] = "nothing to see".into();
        }
        if let Some(p) = &prev {
            e["prev"] = p.clone().into();
            if e["kind"] == "chain.checkpoint" {
                e["details"]["head"] = p.clone().into();
            }
        }
        let line = serde_json::to_string(&e).unwrap();
        prev = Some(sha256_hex(&line));
        out_text.push_str(&line);
        out_text.push('\n');
    }
    std::fs::write(&forged, out_text).unwrap();
    let (code, out) = verify(&forged);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("does not verify") && out.contains("altered or damaged"),
        "{out}"
    );

    // A wrong key, and a file with no checkpoint at all, are refused.
    let other = "ed25519:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .args(["audit", "verify", "--pubkey", other])
        .arg(&file)
        .current_dir(copy.path())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "another key must not verify");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .args(["audit", "verify", "--pubkey", "ed25519:AAAA"])
        .arg(&file)
        .current_dir(copy.path())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--pubkey ed25519:AAAA") && err.contains("32 bytes"),
        "{err}"
    );
    let head = copy.path().join("head.jsonl");
    std::fs::write(
        &head,
        lines[..first_cp].iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let (code, out) = verify(&head);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("nothing in them is proven"), "{out}");
}

#[test]
fn webhooks_receive_every_kind_whoever_writes_it_including_gateway_stopped() {
    let hooks = Receiver::start(0);
    let dir = tempfile::tempdir().unwrap();
    let section = hooks.webhook(
        dir.path(),
        &["gateway.started", "gateway.stopped", "auth.failed", "request.created"],
    );
    let mut gw = Gateway::start_pg(&format!("{}{section}", policy_config("")));
    assert!(
        hooks.got_kind("gateway.started", Duration::from_secs(5)),
        "{:?}",
        hooks.events()
    );
    // A wrong token at the Postgres front end: written by the front end, not the control plane.
    let (h, p) = gw.pg_host_port();
    let out = std::process::Command::new("psql")
        .args(["-X", "-c", "SELECT 1"])
        .arg(format!(
            "host={h} port={p} user=alice@example.com dbname=prod-db sslmode=require"
        ))
        .env("PGPASSWORD", "forged")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        hooks.got_kind("auth.failed", Duration::from_secs(5)),
        "{:?}",
        hooks.events()
    );
    let (_, body) = hooks
        .events()
        .into_iter()
        .find(|(_, b)| b["event"] == "auth.failed")
        .unwrap();
    assert_eq!(body["details"]["protocol"], "postgres", "{body}");
    assert!(
        !body.to_string().contains("forged"),
        "the password reached a webhook: {body}"
    );
    // Stopped: the notification leaves before the process does.
    gw.stop();
    assert!(
        hooks.got_kind("gateway.stopped", Duration::from_secs(1)),
        "{:?}",
        hooks.events()
    );
    let kinds: Vec<String> = hooks.events().iter().map(|(_, b)| b["event"].to_string()).collect();
    assert!(!kinds.iter().any(|k| k.contains("request.created")), "{kinds:?}");
}

#[test]
fn the_pending_gauges_count_pending_requests_and_age_the_oldest() {
    let gw = Gateway::start(&policy_config(""));
    let ids: Vec<String> = (0..3)
        .map(|i| {
            let r = gw
                .cli(
                    Some("alice"),
                    &["request", "prod-db", "--reason", &format!("pending {i}"), "--json"],
                )
                .json();
            r["id"].as_i64().unwrap().to_string()
        })
        .collect();
    // The oldest is decided: the gauge ages the next one.
    gw.cli(Some("bob"), &["approve", &ids[0]]).ok();
    std::thread::sleep(Duration::from_millis(1100));
    let (_, m) = gw.http_get("/metrics", None);
    assert!(m.contains("jitgate_requests_pending 2"), "{m}");
    let age: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("jitgate_requests_pending_oldest_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!((1.0..30.0).contains(&age), "{age}");
    for id in &ids[1..] {
        gw.cli(Some("bob"), &["deny", id, "--reason", "no"]).ok();
    }
    let (_, m) = gw.http_get("/metrics", None);
    assert!(m.contains("jitgate_requests_pending 0"), "{m}");
    assert!(m.contains("jitgate_requests_pending_oldest_seconds 0"), "{m}");
}

#[test]
fn shared_keys_dir_installs_one_replicas_keys_into_another_and_a_missing_folder_refuses_the_start() {
    let body = format!("#listen-extra ssh = \"127.0.0.1:0\"\n{}", policy_config(""));
    let mut a = Gateway::start(&body);
    a.stop();
    // The folder an operator fills from the first replica (a Kubernetes Secret, mounted).
    let shared = tempfile::tempdir().unwrap();
    for f in [
        "auth/token_keys.json",
        "ssh/host_key",
        "ssh/host_ca",
        "ssh/user_ca",
        "ssh/upstream_ca",
    ] {
        let dst = shared.path().join(f);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(a.data_dir().join(f), &dst).unwrap();
    }
    let host_key_line = |gw: &Gateway| -> String {
        let log = gw.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("ssh front end listening"))
            .unwrap();
        line.split_whitespace()
            .find(|w| w.starts_with("host_key="))
            .unwrap()
            .to_string()
    };

    // A second replica made its own keys at its first start...
    let mut b = Gateway::start(&body);
    assert_ne!(host_key_line(&a), host_key_line(&b));
    let mine = std::fs::read(b.data_dir().join("auth/token_keys.json")).unwrap();
    assert_ne!(mine, std::fs::read(a.data_dir().join("auth/token_keys.json")).unwrap());
    // ...and takes the first one's from shared_keys_dir at the next.
    let config = std::fs::read_to_string(b.config_path()).unwrap();
    let with_dir = |dir: &std::path::Path| {
        config.replace(
            "data_dir = \"data\"\n",
            &format!("data_dir = \"data\"\nshared_keys_dir = \"{}\"\n", dir.display()),
        )
    };
    b.write_raw_config(&with_dir(shared.path()));
    b.restart();
    assert!(b.log().contains("shared keys installed into data_dir"), "{}", b.log());
    assert!(
        b.log().contains("tls/ca.crt, tls/ca.key"),
        "the absent files are named: {}",
        b.log()
    );
    assert_eq!(host_key_line(&a), host_key_line(&b), "users pin one host key");
    for f in [
        "auth/token_keys.json",
        "ssh/user_ca",
        "ssh/upstream_ca",
        "ssh/upstream_ca.pub",
    ] {
        assert_eq!(
            std::fs::read(a.data_dir().join(f)).unwrap(),
            std::fs::read(b.data_dir().join(f)).unwrap(),
            "{f} differs"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(b.data_dir().join("auth/token_keys.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    b.stop();

    // The start refused: its error output.
    let refused_with = |dir: &std::path::Path| -> String {
        b.write_raw_config(&with_dir(dir));
        let out = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(b.config_path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "started with shared_keys_dir {}", dir.display());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A folder that is not there (the Secret not mounted) refuses the start, saying why.
    let err = refused_with(&shared.path().join("not-mounted"));
    assert!(
        err.contains("shared_keys_dir") && err.contains("not-mounted") && err.contains("is not a folder"),
        "{err}"
    );

    // An empty folder (an empty or wrong Secret) refuses too: no token keys to share.
    let empty = tempfile::tempdir().unwrap();
    let err = refused_with(empty.path());
    assert!(err.contains("has no auth/token_keys.json"), "{err}");
}

/// `GET /v1/requests/{id}?wait=&version=` holds until the request changes and answers at
/// once when it does; `request --wait` rides on it and says whom it waits for at each step.
#[test]
fn request_wait_long_polls_and_reports_each_step_and_its_approvers() {
    let gw = Gateway::start(&format!(
        "{}\n[[resources]]\nname = \"prod-db\"\nkind = \"postgres\"\naddress = \"127.0.0.1:5432\"\ncredentials.read-only = {{ user = \"ro\" }}\n\n\
         [[policies]]\nname = \"two-step\"\nresources = [\"prod-db\"]\nrequesters = [\"dev\"]\n\
         steps = [{{ name = \"dba\", approvers = [\"dba\"] }}, {{ name = \"admins\", approvers = [\"jitgate-admins\"] }}]\n",
        identities()
    ));
    let waiter = std::process::Command::new(BIN)
        .args(["request", "prod-db", "--for", "1h", "--reason", "INC-7", "--wait"])
        .env("JITGATE_URL", &gw.url)
        .env("JITGATE_TOKEN", token("alice"))
        .env("HOME", gw.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut id = String::new();
    assert!(eventually(Duration::from_secs(5), || {
        let v = gw
            .cli(Some("bob"), &["requests", "--state", "pending", "--json"])
            .json();
        v[0]["id"].as_i64().map(|i| id = i.to_string()).is_some()
    }));
    let version = gw.cli(Some("alice"), &["requests", "--mine", "--json"]).json()[0]["version"]
        .as_i64()
        .unwrap();

    // A long poll at the current version holds while nothing happens...
    let path = format!("/v1/requests/{id}?wait=1s&version={version}");
    let t = std::time::Instant::now();
    let (st, body) = gw.http_get(&path, Some(&token("alice")));
    assert_eq!(st, 200, "{body}");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "answered after {:?}",
        t.elapsed()
    );
    assert!(body.contains("\"waiting_for\":[\"dba\"]"), "{body}");
    // A wait that is not a duration, or an unknown parameter, is refused with what to write.
    let (st, body) = gw.http_get(&format!("/v1/requests/{id}?wait=soon"), Some(&token("alice")));
    assert_eq!(st, 400, "{body}");
    let (st, body) = gw.http_get(&format!("/v1/requests/{id}?wiat=5s"), Some(&token("alice")));
    assert!(st == 400 && body.contains("wait=20s&version=N"), "{body}");
    // ...at an older version it answers at once...
    let t = std::time::Instant::now();
    gw.http_get(
        &format!("/v1/requests/{id}?wait=20s&version={}", version - 1),
        Some(&token("alice")),
    );
    assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
    // ...and a held one answers as soon as an approval lands.
    let held = {
        let url = gw.url.clone();
        let path = format!("/v1/requests/{id}?wait=20s&version={version}");
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let addr = url.trim_start_matches("http://").to_string();
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer alice-token\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut buf = String::new();
            s.read_to_string(&mut buf).unwrap();
            (std::time::Instant::now(), buf)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    gw.cli(Some("bob"), &["approve", &id, "--reason", "dba ok"]).ok();
    let approved_at = std::time::Instant::now();
    let (answered_at, body) = held.join().unwrap();
    assert!(
        answered_at.saturating_duration_since(approved_at) < Duration::from_millis(300),
        "the held poll answered {:?} after the approval",
        answered_at.saturating_duration_since(approved_at)
    );
    assert!(
        body.contains("\"waiting_for\":[\"jitgate-admins\"]") && body.contains("\"step\":1"),
        "{body}"
    );

    gw.cli(Some("root"), &["approve", &id]).ok();
    let out = waiter.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("approved by root@example.com"));
    // Not a terminal: one plain line per change, with the elapsed time and the approvers.
    assert!(
        err.contains("] request ") && err.contains(" waits for dba (step 1)"),
        "{err}"
    );
    assert!(
        err.contains(" waits for jitgate-admins (step 2, approved by bob@example.com so far)"),
        "{err}"
    );
    assert_eq!(err.matches("waits for dba").count(), 1, "no repeated lines: {err}");
}

/// `jitgate audit export --follow`: a log shipper's view. Lines arrive as they are written,
/// across rotations, byte for byte (the receiver's copy verifies with the public key), and a
/// restart resumes with --from-seq or at the newest checkpoint.
#[test]
fn audit_export_follows_the_log_across_rotations_and_resumes() {
    let mut gw = Gateway::start(&format!(
        "{}\n[audit]\nrotate_bytes = 6000\ncheckpoint_every = 7\n",
        policy_config("")
    ));
    let live = gw.audit_path();
    let cfg = path_str(&gw.config_path()).to_string();
    let key = gw
        .cli(None, &["audit", "pubkey", "--config", &cfg])
        .ok()
        .trim()
        .to_string();
    gw.granted(&["prod-db", "--reason", "before the export starts"]);
    let mut follow = std::process::Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .args(["audit", "export", "--follow", "--file"])
        .arg(&live)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(l) = line else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut got: Vec<String> = Vec::new();
    let mut wait_for = |pred: &dyn Fn(&[String]) -> bool, what: &str| {
        let t = std::time::Instant::now();
        while !pred(&got) {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => got.push(l),
                Err(_) if t.elapsed() > Duration::from_secs(10) => panic!("export never showed {what}: {got:?}"),
                Err(_) => {}
            }
        }
        got.clone()
    };
    wait_for(
        &|g| g.iter().any(|l| l.contains("before the export starts")),
        "the existing lines",
    );
    // New events arrive while it follows, and the log rotates (several times) underneath it.
    for i in 0..12 {
        gw.granted(&["prod-db", "--reason", &format!("followed {i}")]);
    }
    assert!(!jitgate_audit::rotated_files(&live).is_empty(), "the log rotated");
    let lines = wait_for(&|g| g.iter().any(|l| l.contains("followed 11")), "the newest lines");
    let _ = follow.kill();
    let _ = follow.wait();
    // Byte for byte: the printed lines are the files' lines, in order, none missing or doubled.
    let mut files = jitgate_audit::rotated_files(&live);
    files.push(live.clone());
    let all: Vec<String> = files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(lines[..], all[..lines.len()]);
    let seqs: Vec<u64> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    // The receiver's copy verifies on its own.
    let copy = tempfile::tempdir().unwrap();
    let file = copy.path().join("received.jsonl");
    std::fs::write(&file, format!("{}\n", lines.join("\n"))).unwrap();
    let v = gw.cli(
        None,
        &[
            "audit",
            "verify",
            "--pubkey",
            &key,
            "--allow-unsigned-tail",
            path_str(&file),
        ],
    );
    assert_eq!(v.code(), 0, "{}{}", v.stdout(), v.stderr());
    // Resume: from a seq, and from the newest checkpoint.
    let from = seqs[seqs.len() / 2];
    let again = gw
        .cli(
            None,
            &[
                "audit",
                "export",
                "--file",
                path_str(&live),
                "--from-seq",
                &from.to_string(),
            ],
        )
        .ok();
    let first: serde_json::Value = serde_json::from_str(again.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"].as_u64(), Some(from));
    let cp = gw
        .cli(
            None,
            &["audit", "export", "--file", path_str(&live), "--from-checkpoint"],
        )
        .ok();
    let first: serde_json::Value = serde_json::from_str(cp.lines().next().unwrap()).unwrap();
    assert_eq!(first["kind"], "chain.checkpoint", "{cp}");
    let seg = copy.path().join("from-checkpoint.jsonl");
    std::fs::write(&seg, &cp).unwrap();
    let v = gw.cli(
        None,
        &[
            "audit",
            "verify",
            "--pubkey",
            &key,
            "--segment",
            "--allow-unsigned-tail",
            path_str(&seg),
        ],
    );
    assert_eq!(v.code(), 0, "{}{}", v.stdout(), v.stderr());
    gw.stop();
}
