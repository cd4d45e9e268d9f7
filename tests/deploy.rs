//! The operator kit stays true: alert rules pass promtool (and their unit tests), the systemd
//! unit passes `systemd-analyze verify`, the Helm chart's templates are valid YAML with every
//! value defined, the dashboard and alerts only use metrics the gateway exports, and the operator
//! guide's configuration reference matches the schema.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use support::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run it ({e}); ./scripts/install-deps installs it"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = repo().join("deploy/prometheus");
    let out = run(
        Command::new("promtool")
            .args(["check", "rules", "alerts.yml"])
            .current_dir(&dir),
        "promtool check rules",
    );
    assert!(out.contains("SUCCESS: 15 rules found"), "{out}");
    run(
        Command::new("promtool")
            .args(["test", "rules", "alerts_test.yml"])
            .current_dir(&dir),
        "promtool test rules",
    );
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("SKIPPED: systemd-analyze is not installed here (apt-get install systemd)");
        return;
    }
    // The unit names /usr/local/bin/jitgate; verify it against the binary under test.
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/jitgate.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jitgate.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/jitgate", BIN)).unwrap();
    run(
        Command::new("systemd-analyze").arg("verify").arg(&path),
        "systemd-analyze verify",
    );
}

/// The chart rendered by the real helm for one and three replicas, every object validated
/// against the Kubernetes OpenAPI schemas, the links between them checked, the rendered
/// gateway.toml accepted by this build, and values that cannot work refused (scripts/check-chart).
#[test]
fn helm_chart_renders_and_validates_for_one_and_three_replicas() {
    let out = run(
        Command::new(repo().join("scripts/check-chart")).env("JITGATE_BIN", BIN),
        "scripts/check-chart",
    );
    assert!(
        out.contains("one replica (defaults): 7 objects")
            && out.contains("three replicas (ci/three-replicas-values.yaml): 9 objects"),
        "{out}"
    );
    assert!(out.contains("ok (helm v3."), "{out}");
}

#[test]
fn operator_guide_reference_matches_the_schema() {
    run(
        Command::new(repo().join("scripts/config-reference"))
            .arg("--check")
            .arg(repo().join("docs/operator-guide.md")),
        "scripts/config-reference --check",
    );
    // And the example file passes the checker with every section present.
    let example = std::fs::read_to_string(repo().join("gateway.toml.example")).unwrap();
    for section in [
        "[gateway]",
        "[listen]",
        "[postgres]",
        "[ssh]",
        "[oidc]",
        "[[identities]]",
        "[[resources]]",
        "[[policies]]",
        "[audit]",
        "[[notify.webhooks]]",
    ] {
        assert!(example.contains(section), "gateway.toml.example lacks {section}");
    }
}

fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("jitgate_") {
        let start = i + pos;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_lowercase() || b[end] == b'_' || b[end].is_ascii_digit()) {
            end += 1;
        }
        let name = &text[start..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(family.to_string());
        i = end;
    }
    out
}

#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    let gw = Gateway::start(
        "[[resources]]\nname = \"db\"\nkind = \"postgres\"\naddress = \"127.0.0.1:1\"\ncredentials.read-only = { user = \"x\" }\n\
         [[policies]]\nname = \"p\"\nresources = [\"db\"]\nrequesters = [\"dev\"]\napprovers = [\"dba\"]\n",
    );
    let (_, metrics) = gw.http_get("/metrics", None);
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let dashboard = std::fs::read_to_string(repo().join("deploy/grafana/jitgate.json")).unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let alerts = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let used: BTreeSet<String> = metric_names(&dashboard)
        .union(&metric_names(&alerts))
        .cloned()
        .collect();
    // Families labelled by resource appear once a session exists; the rest is exported from the
    // start. Either way, each must be defined by the gateway.
    let defined = metric_names(&std::fs::read_to_string(repo().join("crates/jitgate-core/src/metrics.rs")).unwrap());
    let missing: Vec<_> = used.difference(&defined).collect();
    assert!(
        missing.is_empty(),
        "used but not defined: {missing:?}\ndefined: {defined:?}"
    );
    for m in [
        "jitgate_bytes_total",
        "jitgate_auth_failures_total",
        "jitgate_upstream_errors_total",
        "jitgate_sessions_killed_total",
    ] {
        assert!(exported.contains(m), "{m} is not exported before any traffic");
    }
    assert!(used.len() >= 15, "{used:?}");
    // The new gauges are there, computed at scrape time.
    assert!(metrics.contains("jitgate_audit_queue_depth 0"), "{metrics}");
    assert!(metrics.contains("jitgate_requests_pending 0"), "{metrics}");
}

/// "Max open files" soft and hard limits of a process.
fn open_file_limits(pid: u32) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let mut f = line["Max open files".len()..].split_whitespace();
    (f.next().unwrap().to_string(), f.next().unwrap().to_string())
}

#[test]
fn serve_raises_its_open_file_limit_and_warns_when_max_connections_need_more() {
    // Started from a shell with a low soft limit, as `jitgate serve` often is.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        "[gateway]\ndata_dir = \"data\"\n[listen]\nhttp = \"127.0.0.1:0\"\npostgres = \"127.0.0.1:0\"\n\
         [postgres]\nallow_plaintext = true\nmax_connections = 1000000\n",
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let mut child = Command::new("sh")
        .args(["-c", "ulimit -Sn 256 && exec \"$0\" serve --config \"$1\""])
        .arg(BIN)
        .arg(&cfg)
        .current_dir(dir.path())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let listen = dir.path().join("data/listen.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !listen.exists() {
        assert!(child.try_wait().unwrap().is_none(), "serve exited");
        assert!(std::time::Instant::now() < deadline, "serve did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (soft, hard) = open_file_limits(child.id());
    let text = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(soft, hard, "the soft limit was raised to the hard one");
    assert_ne!(soft, "256");
    assert!(
        text.contains("the open-file limit is below what [postgres] and [ssh] max_connections need"),
        "{text}"
    );
}

/// `jitgate serve | tee log`, and tee goes away: the gateway keeps serving, and SIGTERM still
/// stops it cleanly (it used to panic the task that logged next, the SIGTERM handler included,
/// and ignore SIGTERM from then on).
#[test]
fn a_gateway_whose_log_reader_is_gone_keeps_serving_and_stops_on_sigterm() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        "[gateway]\ndata_dir = \"data\"\n[listen]\nhttp = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let listen = dir.path().join("data/listen.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !listen.exists() {
        assert!(child.try_wait().unwrap().is_none(), "serve exited");
        assert!(std::time::Instant::now() < deadline, "serve did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Read what it said so far, then close the pipes' read ends: the next log line breaks.
    let mut first = [0u8; 256];
    let _ = child.stderr.as_mut().unwrap().read(&mut first);
    drop(child.stdout.take());
    drop(child.stderr.take());
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&listen).unwrap()).unwrap();
    let http = info["http"].as_str().unwrap().to_string();
    let get = |path: &str| {
        let mut s = std::net::TcpStream::connect(&http).unwrap();
        std::io::Write::write_all(&mut s, format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    // Requests that log (an unauthenticated API call) still work after the pipe broke.
    for _ in 0..3 {
        assert!(get("/v1/whoami").contains("401"));
    }
    assert!(get("/healthz").contains("ok"));
    // A reload logs what it did: those lines are dropped and counted, not retried.
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    let metric = |name: &str| {
        get("/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse::<f64>().unwrap_or(0.0)))
            .unwrap_or(0.0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric("jitgate_config_reloads_total{result=\"ok\"}") < 1.0 {
        assert!(std::time::Instant::now() < deadline, "no reload");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The reload's "configuration reloaded" line is written just after the counter moves.
    while metric("jitgate_log_lines_dropped_total") < 1.0 {
        assert!(std::time::Instant::now() < deadline, "no dropped log line counted");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let version = format!("version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    assert!(
        get("/metrics")
            .lines()
            .any(|l| l.starts_with("jitgate_build_info{commit=") && l.ends_with(&version)),
        "jitgate_build_info"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("jitgate serve ignored SIGTERM once its log reader was gone");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let audit = std::fs::read_to_string(dir.path().join("data/audit.jsonl")).unwrap();
    assert!(
        // gateway.stopped, then the shutdown checkpoint that signs it.
        audit
            .lines()
            .nth_back(1)
            .is_some_and(|l| l.contains("\"gateway.stopped\""))
            && audit.lines().last().is_some_and(|l| l.contains("\"chain.checkpoint\"")),
        "the stop was clean: {audit}"
    );
}

/// Under systemd (`Type=notify`): READY=1 once it serves, RELOADING=1 then READY=1 around a
/// SIGHUP, STOPPING=1 when SIGTERM begins the stop; the datagrams go to `$NOTIFY_SOCKET`.
#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        "[gateway]\ndata_dir = \"data\"\n[listen]\nhttp = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .current_dir(dir.path())
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let next = || {
        let mut b = [0u8; 512];
        let n = sock.recv(&mut b).expect("a datagram from the gateway");
        String::from_utf8_lossy(&b[..n]).into_owned()
    };
    let ready = next();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    // Ready means serving: listen.json is written and the API answers.
    assert!(dir.path().join("data/listen.json").exists());
    let pid = child.id().to_string();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert_eq!(next(), "RELOADING=1");
    assert!(next().lines().any(|l| l == "READY=1"));
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let stopping = next();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    let st = child.wait().unwrap();
    assert!(st.success(), "{st}");
}

/// `[listen] ops`: probes and Prometheus over plain HTTP with no token, and nothing else.
#[test]
fn the_ops_listener_serves_probes_and_metrics_only() {
    let gw = Gateway::start("#listen-extra ops = \"127.0.0.1:0\"\n");
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(gw.data_dir().join("listen.json")).unwrap()).unwrap();
    let ops = info["ops"]
        .as_str()
        .expect("listen.json names the ops address")
        .to_string();
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&ops).unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    assert!(get("/healthz").starts_with("HTTP/1.0 200"));
    assert!(get("/readyz").starts_with("HTTP/1.0 200"));
    let m = get("/metrics");
    assert!(
        m.starts_with("HTTP/1.0 200") && m.contains("jitgate_build_info{"),
        "{m}"
    );
    let api = get("/v1/whoami");
    assert!(
        api.starts_with("HTTP/1.0 404") && api.contains("serves /healthz, /readyz and /metrics only"),
        "{api}"
    );
}

/// Shell completions and man pages come from the CLI's own definition, so they cannot drift
/// from it: every command is in them, and bash accepts the script.
#[test]
fn completions_and_man_pages_are_generated_from_the_cli() {
    let bash = Command::new(BIN).args(["completions", "bash"]).output().unwrap();
    assert!(bash.status.success());
    let script = String::from_utf8_lossy(&bash.stdout).into_owned();
    for cmd in ["request", "approve", "connect", "ssh-config", "audit"] {
        assert!(script.contains(cmd), "bash completion lacks {cmd}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jitgate.bash");
    std::fs::write(&file, &script).unwrap();
    run(
        Command::new("bash").arg("-n").arg(&file),
        "bash -n on the completion script",
    );
    for shell in ["zsh", "fish"] {
        let o = Command::new(BIN).args(["completions", shell]).output().unwrap();
        assert!(
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("request"),
            "{shell}"
        );
    }
    let man = dir.path().join("man1");
    run(Command::new(BIN).args(["man", "--dir"]).arg(&man), "jitgate man");
    let main = std::fs::read_to_string(man.join("jitgate.1")).unwrap();
    assert!(main.contains(".TH jitgate") && main.contains("Exit codes"), "{main}");
    for cmd in ["request", "approve", "connect", "serve", "completions"] {
        let page = man.join(format!("jitgate-{cmd}.1"));
        assert!(page.exists(), "no man page for {cmd}");
    }
}
