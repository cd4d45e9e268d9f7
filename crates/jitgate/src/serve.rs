//! `jitgate serve`: wire the crates together and run until SIGTERM/SIGINT.
//!
//! Start-up order: config → logging → data_dir → store → audit sink (indexed by the store) →
//! enforcer → control plane → restore live grants → background tasks → listeners. SIGHUP
//! re-reads the config; a file with errors is refused and the running config stays.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use jitgate_api::ControlPlane;
use jitgate_audit::{AuditSink, Kind};
use jitgate_core::config::{self, Diag, Loaded, schema::LogFormat};
use jitgate_core::{Enforcer, KillReason, Metrics, SystemClock};
use jitgate_store::{SqliteStore, Store};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => b.json().flatten_event(true).try_init(),
        LogFormat::Text => b.try_init(),
    };
}

/// Print config findings; return Err when there are errors.
pub fn report(result: std::result::Result<Loaded, Vec<Diag>>) -> Result<Loaded> {
    match result {
        Ok(l) => {
            for w in &l.warnings {
                eprintln!("{w}");
            }
            Ok(l)
        }
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            let n = diags.iter().filter(|d| d.severity == config::Severity::Error).count();
            bail!("{n} error(s) in the configuration; nothing was started")
        }
    }
}

/// The store URL from `url`, `url_env` or `url_file` (`None`: SQLite in data_dir).
fn store_url(loaded: &Loaded) -> Result<Option<String>> {
    let st = &loaded.config.store;
    if let Some(u) = &st.url {
        return Ok(Some(u.get_ref().clone()));
    }
    if let Some(var) = &st.url_env {
        let v = std::env::var(var)
            .with_context(|| format!("[store] url_env = {var:?}: the environment variable is not set"))?;
        return Ok(Some(v.trim().to_string()));
    }
    if let Some(f) = &st.url_file {
        let v = std::fs::read_to_string(f).with_context(|| format!("[store] url_file = {}", f.display()))?;
        return Ok(Some(v.trim().to_string()));
    }
    Ok(None)
}

/// This replica's node name: `[store] node`, or one generated once into `data_dir/node_id`.
fn node_name(loaded: &Loaded, data_dir: &Path) -> Result<String> {
    if let Some(n) = &loaded.config.store.node {
        return Ok(n.clone());
    }
    let file = data_dir.join("node_id");
    if let Ok(n) = std::fs::read_to_string(&file) {
        let n = n.trim();
        if !n.is_empty() {
            return Ok(n.to_string());
        }
    }
    let n = format!("jg-{}", hex::encode(rand::random::<[u8; 4]>()));
    std::fs::write(&file, format!("{n}\n")).with_context(|| format!("writing {}", file.display()))?;
    Ok(n)
}

async fn open_store(loaded: &Loaded, data_dir: &Path, metrics: &Metrics) -> Result<Arc<dyn Store>> {
    let timing = Some(metrics.store_operation_seconds.clone());
    let url = store_url(loaded)?;
    match url.as_deref() {
        Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
            let st = &loaded.config.store;
            let node = node_name(loaded, data_dir)?;
            let opts = jitgate_store::PgOptions {
                url: u.to_string(),
                ca_file: st.ca_file.clone(),
                node: node.clone(),
                pool_size: st.pool_size,
                max_clock_skew: std::time::Duration::from_secs(st.max_clock_skew.secs()),
                timing,
            };
            let redacted = jitgate_store::redact_url(u);
            let store = jitgate_store::PgStore::open(opts)
                .await
                .map_err(|e| anyhow!("opening the PostgreSQL store {redacted}: {e}"))?;
            tracing::info!(store = %redacted, node = %node, tls = st.ca_file.is_some(), "shared PostgreSQL store opened; following its change feed");
            Ok(Arc::new(store))
        }
        Some(u) => {
            let p = u
                .strip_prefix("sqlite://")
                .ok_or_else(|| anyhow!("unsupported store URL (write postgres://... or sqlite:///path)"))?;
            Ok(Arc::new(
                SqliteStore::open(Path::new(p), timing).context("opening the store")?,
            ))
        }
        None => Ok(Arc::new(
            SqliteStore::open(&data_dir.join("jitgate.db"), timing).context("opening the store")?,
        )),
    }
}

/// Files every replica on a shared store must hold identically.
const SHARED_KEY_FILES: &[&str] = &[
    "auth/token_keys.json",
    "ssh/host_key",
    "ssh/host_ca",
    "ssh/user_ca",
    "ssh/upstream_ca",
    "tls/ca.crt",
    "tls/ca.key",
];

/// Publish fingerprints of the keys replicas must share and compare them with the other
/// replicas': a token minted on one replica must verify on all, and users pin one SSH host key.
/// A difference is logged as an error with what to copy (not fatal: a rolling key copy passes
/// through it).
async fn check_shared_keys(cp: &ControlPlane, data_dir: &Path) -> Result<()> {
    use sha2::Digest;
    let mut mine = serde_json::Map::new();
    for f in SHARED_KEY_FILES {
        if let Ok(bytes) = std::fs::read(data_dir.join(f)) {
            let h = hex::encode(sha2::Sha256::digest(&bytes));
            mine.insert((*f).to_string(), serde_json::Value::String(h[..16].to_string()));
        }
    }
    let others = cp
        .store()
        .register_node(&serde_json::Value::Object(mine.clone()).to_string())
        .await
        .map_err(|e| anyhow!("registering this replica in the store: {e}"))?;
    for (node, keys) in others {
        let Ok(theirs) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&keys) else {
            continue;
        };
        let differ: Vec<&str> = SHARED_KEY_FILES
            .iter()
            .copied()
            .filter(|f| matches!((mine.get(*f), theirs.get(*f)), (Some(a), Some(b)) if a != b))
            .collect();
        if !differ.is_empty() {
            tracing::error!(
                other = %node,
                files = %differ.join(", "),
                "this replica's keys differ from another replica's: tokens or SSH certificates issued by one are refused by the other; copy these files from one replica's data_dir to every other's (mode 0600) and restart"
            );
        }
    }
    Ok(())
}

/// Run the gateway.
pub async fn run(config_path: &Path) -> Result<()> {
    let loaded = report(config::load(config_path))?;
    init_logging(loaded.config.gateway.log_format);
    // Signals first: a SIGHUP during start-up must not kill the process (its default action).
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let data_dir = loaded.config.gateway.data_dir.clone();
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create data_dir {}", data_dir.display()))?;
    restrict_dir(&data_dir);

    raise_fd_limit(&loaded.config);
    let metrics = Metrics::new();
    let store = open_store(&loaded, &data_dir, &metrics).await?;
    let audit_path = data_dir.join(&loaded.config.audit.file);
    let counter = metrics.audit_events_total.clone();
    let audit = AuditSink::open_with(
        &audit_path,
        Some(store.clone()),
        Some(Arc::new(move |n| counter.inc_by(n))),
        Some(loaded.config.audit.rotate_bytes),
    )
    .with_context(|| format!("opening the audit log {}", audit_path.display()))?;
    audit.set_redactor(redactor(&loaded.config)?);
    // Webhooks take every event from the audit sink once it is in the file, whoever wrote it.
    let hooks = |c: &config::schema::Config| -> Vec<jitgate_api::notify::Hook> {
        c.notify
            .webhooks
            .iter()
            .filter_map(jitgate_api::notify::Hook::from_config)
            .collect()
    };
    let notifier = jitgate_api::notify::Notifier::start(hooks(&loaded.config), metrics.notifications_total.clone());
    let subscriber = notifier.clone();
    audit.subscribe(Arc::new(move |ev| subscriber.send(ev)));
    let enforcer = Enforcer::new(
        Arc::new(SystemClock),
        metrics.clone(),
        loaded.catalog.expiry_warning.secs(),
    );
    // The SSH keys come first: the control plane signs user certificates with them.
    let ssh_keys = match &loaded.config.listen.ssh {
        Some(_) => Some(Arc::new(
            jitgate_ssh::GatewayKeys::load(&data_dir, loaded.config.ssh.host_ca_key_file.as_deref())
                .with_context(|| format!("loading the SSH keys in {}", data_dir.join("ssh").display()))?,
        )),
        None => None,
    };
    let mut builder = ControlPlane::builder(loaded.catalog.clone(), store, audit.clone(), enforcer.clone(), metrics)
        .login(login_services(&loaded, &data_dir)?);
    if let Some(keys) = &ssh_keys {
        let ca = keys.user_ca.clone();
        let lifetime = loaded.config.ssh.cert_lifetime.secs();
        builder = builder.cert_signer(Arc::new(move |who, public_key, token| {
            jitgate_ssh::keys::issue_user_cert(&ca, &who.name, &who.groups, public_key, lifetime, token)
        }));
    }
    let cp = builder.build();
    let restored = cp.restore().await.map_err(|e| anyhow!("restoring grants: {}", e))?;
    cp.restore_revocations()
        .await
        .map_err(|e| anyhow!("loading the token revocation list: {}", e))?;

    let stop = CancellationToken::new();
    cp.spawn_tasks(stop.clone());
    let http: SocketAddr = loaded.config.listen.http.get_ref().parse().context("[listen] http")?;
    let listener = tokio::net::TcpListener::bind(http)
        .await
        .with_context(|| format!("cannot listen on {http} ([listen] http)"))?;
    let bound = listener.local_addr()?;
    let http_tls = loaded.config.listen.http_uses_tls();
    let mut listen_info = serde_json::json!({
        "http": bound.to_string(),
        "url": format!("{}://{bound}", if http_tls { "https" } else { "http" }),
        "pid": std::process::id(),
    });
    let gateway_tls = if loaded.config.listen.postgres.is_some() || http_tls {
        Some(gateway_tls(&loaded, &data_dir, bound)?)
    } else {
        None
    };
    let tls_files = || -> Result<(PathBuf, PathBuf)> {
        gateway_tls
            .as_ref()
            .map(|t| (t.cert.clone(), t.key.clone()))
            .ok_or_else(|| anyhow!("no TLS certificate was set up"))
    };
    if let Some(t) = &gateway_tls {
        if let Some((pem, sha)) = &t.ca {
            listen_info["tls_ca"] = serde_json::Value::String(pem.clone());
            listen_info["tls_ca_sha256"] = serde_json::Value::String(sha.clone());
        }
        listen_info["tls_names"] = serde_json::json!(t.names);
    }

    if let Some(pg) = &loaded.config.listen.postgres {
        let addr: SocketAddr = pg.get_ref().parse().context("[listen] postgres")?;
        let (cert, key) = tls_files()?;
        let tls = jitgate_pg::tls::server_config(&cert, &key).context("loading the TLS certificate ([tls])")?;
        let pgc = &loaded.config.postgres;
        if pgc.allow_plaintext && !addr.ip().is_loopback() {
            bail!(
                "[postgres] allow_plaintext = true is only accepted on a loopback [listen] postgres address: tokens would cross the network in clear"
            );
        }
        let cfg = jitgate_pg::PgConfig {
            tls,
            allow_plaintext: pgc.allow_plaintext,
            startup_timeout: std::time::Duration::from_secs(pgc.startup_timeout.secs().max(1)),
            max_connections: pgc.max_connections,
            max_message: pgc.max_message_size,
            max_text: loaded.config.audit.max_text_len,
            audit: audit.clone(),
            audit_statements: loaded.config.audit.statements,
            max_scram_iterations: pgc.max_scram_iterations,
        };
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} ([listen] postgres)"))?;
        let pg_bound = l.local_addr()?;
        listen_info["postgres"] = serde_json::Value::String(pg_bound.to_string());
        listen_info["tls_cert"] = serde_json::Value::String(cert.display().to_string());
        tracing::info!(postgres = %pg_bound, cert = %cert.display(), "postgres front end listening");
        let fe = jitgate_pg::PgFrontend::new(cp.clone(), cfg);
        tokio::spawn(fe.serve(l, stop.clone()));
    }

    if let (Some(ssh), Some(keys)) = (&loaded.config.listen.ssh, ssh_keys) {
        start_ssh(ssh.get_ref(), keys, &loaded, &data_dir, &cp, &stop, &mut listen_info).await?;
    }

    if cp.store().shared() {
        check_shared_keys(&cp, &data_dir).await?;
    }

    let mut fe_info = serde_json::json!({});
    for k in [
        "postgres",
        "ssh",
        "ssh_host_key",
        "ssh_host_ca",
        "ssh_user_ca",
        "ssh_upstream_ca",
        "tls_ca",
        "tls_ca_sha256",
        "tls_names",
    ] {
        if let Some(v) = listen_info.get(k) {
            fe_info[k] = v.clone();
        }
    }
    if let Some(u) = &loaded.config.gateway.public_url {
        fe_info["public_url"] = serde_json::Value::String(u.clone());
    }
    cp.set_frontends(fe_info);

    // Scripts and tests that listen on port 0 read the bound addresses here.
    let listen_file = data_dir.join("listen.json");
    std::fs::write(&listen_file, listen_info.to_string())
        .with_context(|| format!("writing {}", listen_file.display()))?;
    tracing::info!(
        http = %bound,
        data_dir = %data_dir.display(),
        resources = loaded.catalog.resources.len(),
        policies = loaded.catalog.policies.len(),
        grants_restored = restored,
        "jitgate serving"
    );
    let _ = cp
        .audit()
        .record(
            jitgate_audit::Event::new(Kind::GatewayStarted, jiff::Timestamp::now())
                .actor("gateway")
                .details(serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "http": bound.to_string()})),
        )
        .await;

    let reload_cp = cp.clone();
    let reload_audit = audit.clone();
    let reload_path = config_path.to_path_buf();
    let reload_stop = stop.clone();
    let reload_notifier = notifier.clone();
    let running = loaded.config.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = hup.recv() => {}
                () = reload_stop.cancelled() => return,
            }
            if let Some(new_hooks) = reload(&reload_cp, &reload_audit, &reload_path, &running).await {
                reload_notifier.set_hooks(new_hooks);
            }
        }
    });
    let shutdown_stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
        shutdown_stop.cancel();
    });

    let app = jitgate_api::router(cp.clone());
    let graceful = stop.clone();
    if http_tls {
        let (cert, key) = tls_files()?;
        let cfg = jitgate_pg::tls::server_config_alpn(&cert, &key, &[b"http/1.1"])
            .context("loading the TLS certificate ([tls])")?;
        tracing::info!(cert = %cert.display(), "API served over TLS");
        let tls_listener = crate::tls_listener::TlsListener::new(listener, cfg).context("API TLS listener")?;
        crate::http_server::serve(tls_listener, app, graceful).await;
    } else {
        crate::http_server::serve(listener, app, graceful).await;
    }

    let killed = cp.enforcer().sessions.kill_all(&KillReason::Shutdown);
    // Give the sessions a moment to tell their clients why (FATAL 57P01) and end cleanly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while !cp.enforcer().sessions.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = cp
        .audit()
        .record(
            jitgate_audit::Event::new(Kind::GatewayStopped, jiff::Timestamp::now())
                .actor("gateway")
                .details(serde_json::json!({"sessions_killed": killed})),
        )
        .await;
    // Let webhooks take gateway.stopped (and whatever is still queued) before the process ends.
    notifier.drain(std::time::Duration::from_secs(5)).await;
    Ok(())
}

/// The certificate the TLS front ends present, and what clients should pin.
struct GatewayTls {
    cert: PathBuf,
    key: PathBuf,
    /// (PEM, `sha256:…`) of the CA clients pin; `None` for a publicly trusted certificate.
    ca: Option<(String, String)>,
    /// Names the generated certificate covers (empty for a configured one).
    names: Vec<String>,
}

/// `[tls]` cert_file/key_file (and ca_file), or the gateway's own CA and a certificate it
/// issues for `[tls] names`, the host of `public_url` and the specific addresses the front ends
/// listen on. Warns when a generated certificate faces the network.
fn gateway_tls(loaded: &Loaded, data_dir: &Path, http: SocketAddr) -> Result<GatewayTls> {
    let t = loaded.config.tls.clone().unwrap_or_default();
    if let (Some(cert), Some(key)) = (&t.cert_file, &t.key_file) {
        let ca = match &t.ca_file {
            Some(f) => {
                let pem =
                    std::fs::read_to_string(f).with_context(|| format!("reading [tls] ca_file {}", f.display()))?;
                let der = jitgate_pg::tls::first_cert(f).context("[tls] ca_file")?;
                Some((pem, jitgate_pg::tls::fingerprint(&der)))
            }
            None => None,
        };
        return Ok(GatewayTls {
            cert: cert.clone(),
            key: key.clone(),
            ca,
            names: Vec::new(),
        });
    }
    let mut names: Vec<String> = t.names.iter().map(|n| n.get_ref().clone()).collect();
    if let Some(h) = loaded.config.gateway.public_url.as_deref().and_then(crate::url_host) {
        names.push(h);
    }
    let mut addrs: Vec<SocketAddr> = vec![http];
    if let Some(pg) = &loaded.config.listen.postgres
        && let Ok(a) = pg.get_ref().parse::<SocketAddr>()
    {
        addrs.push(a);
    }
    for a in &addrs {
        if !a.ip().is_unspecified() && !a.ip().is_loopback() {
            names.push(a.ip().to_string());
        }
    }
    let g = jitgate_pg::tls::ensure_generated(&data_dir.join("tls"), &names)
        .context("setting up the gateway's generated TLS certificate (data_dir/tls)")?;
    let pem = std::fs::read_to_string(&g.ca_cert).with_context(|| format!("reading {}", g.ca_cert.display()))?;
    tracing::info!(
        ca = %g.ca_cert.display(),
        ca_sha256 = %g.ca_sha256,
        names = %g.names.join(", "),
        "the TLS front ends present a certificate from the gateway's own CA; users pin it at `jitgate login` (first contact over an untrusted network: `jitgate login --ca-pin <ca_sha256>`)"
    );
    let exposed = addrs.iter().any(|a| !a.ip().is_loopback())
        && (loaded.config.listen.postgres.is_some() || loaded.config.listen.http_uses_tls());
    if exposed {
        tracing::warn!(
            ca = %g.ca_cert.display(),
            ca_sha256 = %g.ca_sha256,
            names = %g.names.join(", "),
            "the front ends face the network with a certificate from the gateway's own CA: clients verify it once they pin that CA (`jitgate login` pins it over a verified connection; first contact: `jitgate login --ca-pin {}`); to use your own CA, set [tls] cert_file/key_file/ca_file",
            g.ca_sha256
        );
        if g.names.len() <= 3 {
            tracing::warn!(
                "[tls] names is empty and [gateway] public_url is unset: the generated certificate is valid only for localhost, 127.0.0.1 and ::1, so clients on other hosts fail verification (sslmode=verify-full); add the DNS names clients use to [tls] names"
            );
        }
    }
    Ok(GatewayTls {
        cert: g.cert,
        key: g.key,
        ca: Some((pem, g.ca_sha256)),
        names: g.names,
    })
}

/// Gateway token keys (data_dir/auth) and the OIDC relying party when `[oidc]` is set.
fn login_services(loaded: &Loaded, data_dir: &Path) -> Result<jitgate_api::Login> {
    let dir = data_dir.join("auth");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    restrict_dir(&dir);
    let keys =
        jitgate_auth::TokenKeys::load(&dir).with_context(|| format!("loading the token keys in {}", dir.display()))?;
    let Some(o) = &loaded.config.oidc else {
        return Ok(jitgate_api::Login {
            tokens: jitgate_auth::Tokens::new(
                keys,
                i64::try_from(jitgate_core::HumanDuration::hours(12).secs()).unwrap_or(43_200),
            ),
            oidc: None,
            accept_id_tokens: false,
        });
    };
    let secret = if let Some(v) = &o.client_secret_env {
        Some(std::env::var(v).with_context(|| format!("[oidc] client_secret_env: ${v} is not set"))?)
    } else if let Some(f) = &o.client_secret_file {
        Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("[oidc] client_secret_file {}", f.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        )
    } else {
        o.client_secret.as_ref().map(|s| s.get_ref().clone())
    };
    let oidc = jitgate_auth::Oidc::new(jitgate_auth::OidcConfig {
        issuer: o.issuer.trim_end_matches('/').to_string(),
        client_id: o.client_id.clone(),
        client_secret: secret,
        identity_claim: o.identity_claim.clone(),
        groups_claim: o.groups_claim.clone(),
        scopes: o.scopes.clone(),
        allow_unverified_email: o.allow_unverified_email,
        clock_skew: std::time::Duration::from_secs(o.clock_skew.secs()),
    })
    .map_err(|e| anyhow!("{e}"))?;
    tracing::info!(issuer = %o.issuer, client_id = %o.client_id, "OpenID Connect login enabled");
    Ok(jitgate_api::Login {
        tokens: jitgate_auth::Tokens::new(keys, i64::try_from(o.token_lifetime.secs()).unwrap_or(43_200).max(1)),
        oidc: Some(oidc),
        accept_id_tokens: o.accept_id_tokens,
    })
}

/// Keys, listener and front end for SSH; the user-certificate signer for the API.
async fn start_ssh(
    addr: &str,
    keys: Arc<jitgate_ssh::GatewayKeys>,
    loaded: &Loaded,
    data_dir: &Path,
    cp: &Arc<ControlPlane>,
    stop: &CancellationToken,
    listen_info: &mut serde_json::Value,
) -> Result<()> {
    let addr: SocketAddr = addr.parse().context("[listen] ssh")?;
    let line = jitgate_ssh::keys::public_line;
    let sc = &loaded.config.ssh;
    let cfg = jitgate_ssh::SshConfig {
        login_timeout: std::time::Duration::from_secs(sc.login_timeout.secs().max(1)),
        max_connections: sc.max_connections,
        max_channels: sc.max_channels.max(1),
        env_allow: sc.env_allow.clone(),
        record: sc.record,
        recordings_dir: data_dir.join("recordings"),
        max_text: loaded.config.audit.max_text_len,
        audit: cp.audit().clone(),
        host_names: sc.host_names.clone(),
    };
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ([listen] ssh)"))?;
    let bound = l.local_addr()?;
    let fingerprint = jitgate_ssh::keys::fingerprint(keys.host.public_key());
    listen_info["ssh"] = serde_json::Value::String(bound.to_string());
    listen_info["ssh_host_key"] = serde_json::Value::String(line(&keys.host));
    listen_info["ssh_user_ca"] = serde_json::Value::String(line(&keys.user_ca));
    listen_info["ssh_upstream_ca"] = serde_json::Value::String(line(&keys.upstream_ca));
    listen_info["ssh_host_ca"] = serde_json::Value::String(line(&keys.host_ca));
    tracing::info!(ssh = %bound, host_key = %fingerprint, upstream_ca = %keys.dir.join("upstream_ca.pub").display(), "ssh front end listening");
    let fe =
        jitgate_ssh::SshFrontend::new(cp.clone(), cfg, keys).context("signing the gateway's SSH host certificate")?;
    tokio::spawn(fe.serve(l, stop.clone()));
    Ok(())
}

/// Re-read the config; on success returns the new webhooks.
/// The operator's `[audit] redact` patterns, compiled (validated with the rest of the file).
fn redactor(c: &config::schema::Config) -> anyhow::Result<Option<jitgate_audit::Redactor>> {
    let patterns: Vec<&str> = c.audit.redact.iter().map(|p| p.get_ref().as_str()).collect();
    jitgate_audit::Redactor::new(&patterns).map_err(|e| anyhow!("[audit] redact: {e}"))
}

async fn reload(
    cp: &Arc<ControlPlane>,
    audit: &AuditSink,
    path: &Path,
    running: &config::schema::Config,
) -> Option<Vec<jitgate_api::notify::Hook>> {
    match config::load(path) {
        Ok(l) => {
            match redactor(&l.config) {
                Ok(r) => audit.set_redactor(r),
                Err(e) => tracing::error!(error = %e, "redaction patterns not reloaded"),
            }
            let hooks = l
                .config
                .notify
                .webhooks
                .iter()
                .filter_map(jitgate_api::notify::Hook::from_config)
                .collect();
            for w in &l.warnings {
                tracing::warn!("{w}");
            }
            if l.config.listen.http.get_ref() != running.listen.http.get_ref()
                || l.config.gateway.data_dir != running.gateway.data_dir
            {
                tracing::warn!("[listen] and data_dir changes take effect only after a restart");
            }
            let n = (l.catalog.resources.len(), l.catalog.policies.len());
            match cp.reload(l.catalog).await {
                Ok(()) => tracing::info!(resources = n.0, policies = n.1, "configuration reloaded"),
                Err(e) => tracing::error!(error = %e, "reload not audited"),
            }
            Some(hooks)
        }
        Err(diags) => {
            let text: Vec<String> = diags.iter().map(ToString::to_string).collect();
            for d in &text {
                tracing::error!("{d}");
            }
            tracing::error!(
                errors = diags.len(),
                "configuration reload refused: {} has errors; the running configuration stays in force",
                path.display()
            );
            cp.reload_failed(&text.join("; ")).await;
            None
        }
    }
}

/// Raise the soft open-file limit to the hard one (no privilege needed): every Postgres or SSH
/// session holds two descriptors (client and upstream), and a shell's default soft limit of
/// 1,024 would refuse sessions from about the 500th on. Warns when even the hard limit is below
/// what the configured `max_connections` need.
fn raise_fd_limit(c: &config::schema::Config) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let mut want: u64 = 256;
    if c.listen.postgres.is_some() {
        want += 2 * u64::try_from(c.postgres.max_connections).unwrap_or(u64::MAX / 4);
    }
    if c.listen.ssh.is_some() {
        want += 2 * u64::try_from(c.ssh.max_connections).unwrap_or(u64::MAX / 4);
    }
    if limit < want {
        tracing::warn!(
            open_files = limit,
            needed = want,
            "the open-file limit is below what [postgres] and [ssh] max_connections need (two descriptors per session); \
             raise it (systemd: LimitNOFILE=, shell: ulimit -Hn) or lower max_connections"
        );
    } else {
        tracing::debug!(open_files = limit, "open-file limit");
    }
}

fn restrict_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot restrict data_dir to 0700");
    }
}
