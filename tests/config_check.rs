//! `jitgate config check`: the shipped example passes; broken files fail with file:line:column
//! messages that say what to write instead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

fn repo_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(name)
}

fn check(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gateway.toml");
    std::fs::write(&p, text).unwrap();
    let out = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&p.display().to_string(), "gateway.toml");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

const BASE: &str = r#"[[resources]]
name = "prod-db"
kind = "postgres"
address = "db.internal:5432"
credentials.read-only = { user = "ro", password_env = "RO_PW" }

[[policies]]
name = "prod"
resources = ["prod-*"]
requesters = ["dev"]
approvers = ["dba"]
"#;

#[test]
fn the_shipped_example_passes() {
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(repo_file("gateway.toml.example"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok")
            && stdout.contains("resource      prod-db")
            && stdout.contains("policy        production"),
        "{stdout}"
    );
    // What the read-only credential must be is said where the operator looks first.
    assert!(
        stdout.contains("read-only as app_ro: sessions run with default_transaction_read_only=on")
            && stdout.contains("superuser"),
        "{stdout}"
    );
}

#[test]
fn a_minimal_file_passes() {
    let (code, out, err) = check(BASE);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_misspelt_key_names_its_line_and_the_right_key() {
    let (code, _, err) = check(&BASE.replace("approvers = [\"dba\"]", "aprovers = [\"dba\"]"));
    assert_eq!(code, 1);
    assert!(
        err.contains("gateway.toml:11:1: error: unknown key `aprovers`"),
        "{err}"
    );
    assert!(err.contains("help: did you mean `approvers`?"), "{err}");
}

#[test]
fn a_bad_duration_names_its_line_and_the_format() {
    let (code, _, err) = check(&format!("{BASE}max_duration = \"four hours\"\n"));
    assert_eq!(code, 1);
    assert!(
        err.contains("gateway.toml:12:16: error: invalid duration `four hours`"),
        "{err}"
    );
    assert!(err.contains("\"1h30m\""), "{err}");
}

#[test]
fn a_duplicate_resource_and_a_glob_matching_nothing_are_both_reported() {
    let text = format!(
        "{BASE}\n[[resources]]\nname = \"prod-db\"\nkind = \"postgres\"\naddress = \"x:1\"\ncredentials.read-only = {{ user = \"ro\" }}\n\n[[policies]]\nname = \"typo\"\nresources = [\"prdo-db\"]\nrequesters = [\"dev\"]\napprovers = [\"dba\"]\n"
    );
    let (code, _, err) = check(&text);
    assert_eq!(code, 1);
    assert!(
        err.contains("gateway.toml:14:8: error: duplicate resource `prod-db` (first defined on line 2)"),
        "{err}"
    );
    assert!(
        err.contains("gateway.toml:21:14: error: policy `typo`: `prdo-db` matches no resource"),
        "{err}"
    );
    assert!(err.contains("did you mean `prod-db`?"), "{err}");
    assert!(err.contains("2 error(s) in the configuration"), "{err}");
}

#[test]
fn an_inline_secret_is_refused_without_echoing_it() {
    let (code, _, err) = check(&BASE.replace("password_env = \"RO_PW\"", "password = \"s3cr3t-pw\""));
    assert_eq!(code, 1);
    assert!(
        err.contains("gateway.toml:5:51: error: inline secret `password` refused"),
        "{err}"
    );
    assert!(err.contains("password_env"), "{err}");
    assert!(!err.contains("s3cr3t-pw"), "{err}");
}

#[test]
fn toml_syntax_errors_and_missing_files_are_clear() {
    let (code, _, err) = check("[[resources]\nname = 1\n");
    assert_eq!(code, 1);
    assert!(err.contains("gateway.toml:1:"), "{err}");
    let out = Command::new(BIN)
        .args(["config", "check", "--config", "/nonexistent/gateway.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the config file"));
}

#[test]
fn serve_refuses_to_start_on_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gateway.toml");
    std::fs::write(&p, BASE.replace("kind = \"postgres\"", "kind = \"mysql\"")).unwrap();
    let out = Command::new(BIN).args(["serve", "--config"]).arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":3:8: error: unknown variant `mysql`") && err.contains("nothing was started"),
        "{err}"
    );
}

#[test]
fn a_broken_ssh_key_names_its_table_and_what_to_paste() {
    let text = format!(
        "{BASE}\n[[identities]]\nname = \"ci-bot\"\nssh_keys = [\"ssh-ed25519 not-base64\"]\n\n\
         [[resources]]\nname = \"web-1\"\nkind = \"ssh\"\naddress = \"x:22\"\nhost_key = \"ssh-rsa AAAA\"\nlogins = [\"u\"]\nupstream_ca = true\n"
    );
    let (code, _, err) = check(&text);
    assert_eq!(code, 1);
    assert!(
        err.contains("identity `ci-bot`: ssh_keys entry is not an OpenSSH public key: the key is not valid base64"),
        "{err}"
    );
    assert!(
        err.contains("ssh resource `web-1`: host_key is not an OpenSSH public key"),
        "{err}"
    );
    assert!(err.contains("help: use `ssh-keyscan"), "{err}");
}

#[test]
fn a_store_url_with_a_password_is_refused_and_bad_store_settings_are_named() {
    let (code, _, err) = check(&format!(
        "{BASE}\n[store]\nurl = \"postgres://jitgate:s3cr3t-db@db.internal/jitgate\"\npool_size = 0\nnode = \"gw 1\"\n"
    ));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the store URL carries a password"), "{err}");
    assert!(err.contains("url_env"), "{err}");
    assert!(err.contains("pool_size = 0 is out of range"), "{err}");
    assert!(err.contains("not a valid node name"), "{err}");
    assert!(!err.contains("s3cr3t-db"), "{err}");
    let (code, _, err) = check(&format!("{BASE}\n[store]\nurl = \"mysql://db/jitgate\"\n"));
    assert_eq!(code, 1);
    assert!(err.contains("unsupported store URL"), "{err}");
    let (code, _, err) = check(&format!(
        "{BASE}\n[store]\nurl = \"postgres://jitgate@db.internal/jitgate\"\nca_file = \"/etc/jitgate/store-ca.pem\"\n"
    ));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn tls_settings_that_cannot_work_are_refused_with_the_fix() {
    let (code, _, err) = check(&format!("[tls]\ncert_file = \"/x.crt\"\n\n{BASE}"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cert_file and key_file go together"), "{err}");
    let (code, _, err) = check(&format!(
        "[tls]\ncert_file = \"/x.crt\"\nkey_file = \"/x.key\"\nnames = [\"gw.example.com\"]\n\n{BASE}"
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("gateway.toml:4:") && err.contains("names applies to the generated certificate"),
        "{err}"
    );
    let (code, _, err) = check(&format!("[tls]\nnames = [\"https://gw.example.com:8443\"]\n\n{BASE}"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is not a DNS name or an IP address") && err.contains("without scheme or port"),
        "{err}"
    );
    let (code, _, err) = check(&format!("[tls]\nca_file = \"/ca.crt\"\n\n{BASE}"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ca_file is for a configured certificate"), "{err}");
    let (code, _, err) = check(&format!(
        "[tls]\nnames = [\"gw.example.com\", \"*.gw.example.com\", \"10.0.0.5\", \"fd00::1\"]\n\n[postgres]\nmax_scram_iterations = 0\n\n{BASE}"
    ));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("max_scram_iterations = 0 is out of range"), "{err}");
    assert!(!err.contains("not a DNS name"), "valid names accepted: {err}");
}

#[test]
fn webhook_event_kinds_are_checked_against_the_audit_vocabulary() {
    let hook = |events: &str| format!("{BASE}\n[[notify.webhooks]]\nurl_env = \"HOOK_URL\"\nevents = [{events}]\n");
    // Every kind the gateway writes may be listed, dotted or not.
    let (code, out, err) = check(&hook(
        "\"login\", \"logout\", \"gateway.stopped\", \"ssh.host_key_mismatch\"",
    ));
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = check(&hook("\"request.aproved\""));
    assert_eq!(code, 1);
    assert!(
        err.contains("`request.aproved` is not an audit event kind; did you mean `request.approved`?"),
        "{err}"
    );
    let (code, _, err) = check(&hook("\"pg.statement\""));
    assert_eq!(code, 1);
    assert!(err.contains("is not delivered to webhooks"), "{err}");
}

/// The keys this change added get clear errors with their line: `[listen] ops` must be an
/// address, the drain settings must be durations.
#[test]
fn ops_listener_and_drain_settings_are_checked() {
    let (code, _, err) = check(&format!("[listen]\nops = \"localhost\"\n\n{BASE}"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("[listen] ops: `localhost` is not an address") && err.contains(":2:"),
        "{err}"
    );
    let (code, _, err) = check(&format!("[gateway]\ndrain_timeout = \"soon\"\n\n{BASE}"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("gateway.toml:2:") && err.contains("invalid duration `soon`"),
        "{err}"
    );
}

#[test]
fn lifecycle_break_glass_and_ticket_settings_are_checked_with_their_lines() {
    let (code, _, err) = check(&format!(
        "{BASE}idle_end = \"0s\"\nstart = \"later\"\nfirst_use_within = \"90d\"\n\
         break_glass = {{ groups = [], max_duration = \"2d\", per_day = 0 }}\n\
         ticket = {{ pattern = \"INC-(\", url = \"jira.example.com/issue\", status_field = \"fields.status.name\" }}\n"
    ));
    assert_eq!(code, 1, "{err}");
    for (line, text) in [
        (12, "idle_end 0s must be between 1s and 7d"),
        (13, "start = \"later\" is not a start"),
        (14, "first_use_within 90d must be between 1s and 30d"),
        (15, "break_glass needs `groups` (who may) and `reviewers` (who reviews)"),
        (15, "break_glass max_duration 2d must be between 1s and 24h"),
        (15, "break_glass per_day must be at least 1"),
        (16, "ticket pattern is not a regular expression"),
        (16, "must be an http(s) URL containing {ticket}"),
        (16, "ticket status_field and allowed go together"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("gateway.toml:{line}:")) && l.contains(text)),
            "line {line}: {text}\n{err}"
        );
    }
    // A typo inside the tables is named too.
    let (code, _, err) = check(&format!(
        "{BASE}break_glass = {{ groups = [\"oncall\"], reviewers = [\"sec\"], per_dya = 2 }}\n"
    ));
    assert_eq!(code, 1);
    assert!(err.contains("gateway.toml:12:") && err.contains("per_dya"), "{err}");
    let (code, _, err) = check(&format!("[gateway]\nwait_on_connect = \"soon\"\n{BASE}"));
    assert_eq!(code, 1);
    assert!(
        err.contains("gateway.toml:2:") && err.contains("invalid duration `soon`"),
        "{err}"
    );
}

#[test]
fn oncall_sources_and_conditions_are_checked_with_their_lines() {
    let (code, _, err) = check(&format!(
        "{BASE}auto_approve = [{{ oncall = {{ source = \"pd\", escalation_level_max = 0 }} }}, {{ oncall = {{ source = \"opsgenie\" }} }}]\n\n\
         [[oncall]]\nname = \"pd\"\nurl = \"api.pagerduty.com/oncalls\"\nformat = \"pagerduty\"\n\n\
         [[oncall]]\nname = \"file\"\nformat = \"xml\"\nfile = \"oncall.json\"\npoll_every = \"5m\"\nmax_age = \"1m\"\n\n\
         [[oncall]]\nname = \"none\"\nformat = \"simple\"\n"
    ));
    assert_eq!(code, 1, "{err}");
    for (line, text) in [
        (12, "auto_approve #1: escalation_level_max must be at least 1"),
        (
            12,
            "auto_approve #2: oncall source `opsgenie` is not an [[oncall]] source",
        ),
        (
            15,
            "[[oncall]] `pd`: url `api.pagerduty.com/oncalls` is not an http(s) URL",
        ),
        (
            21,
            "[[oncall]] `file`: format `xml` is neither `pagerduty` nor `simple`",
        ),
        (20, "[[oncall]] `file`: max_age 1m is shorter than poll_every 5m"),
        (27, "[[oncall]] `none` needs exactly one of `url` and `file`"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("gateway.toml:{line}:")) && l.contains(text)),
            "line {line}: {text}\n{err}"
        );
    }
    let (code, _, err) = check(&format!(
        "{BASE}auto_approve = [{{ oncall = {{ source = \"pd\", level = 1 }} }}]\n[[oncall]]\nname = \"pd\"\nformat = \"simple\"\nfile = \"x.json\"\n"
    ));
    assert_eq!(code, 1);
    assert!(err.contains("gateway.toml:12:") && err.contains("level"), "{err}");
    // Accepted, with warnings: every team's on-call, and a credential over plain http.
    let (code, _, err) = check(&format!(
        "{BASE}auto_approve = [{{ oncall = {{ source = \"pd\" }} }}]\n[[oncall]]\nname = \"pd\"\nformat = \"pagerduty\"\nurl = \"http://pd.example.com/oncalls?include[]=users\"\ncredential_env = \"PD_TOKEN\"\n"
    ));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("credential travels in cleartext"), "{err}");
    assert!(err.contains("names no schedule_ids[]"), "{err}");
}

#[test]
fn audit_checkpoints_cannot_be_turned_off_and_say_where() {
    let text = format!("{BASE}\n[audit]\ncheckpoint_every = 0\ncheckpoint_interval = \"2d\"\n");
    let lines = text.lines().count();
    let (code, _, err) = check(&text);
    assert_eq!(code, 1, "{err}");
    for (line, msg) in [
        (lines - 1, "checkpoint_every must be at least 1"),
        (lines, "checkpoint_interval 2d must be between 1s and 24h"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("gateway.toml:{line}:")) && l.contains(msg)),
            "line {line}: {msg}\n{err}"
        );
    }
}
