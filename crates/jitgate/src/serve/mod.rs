//! `jitgate serve`: wire the crates together and run until SIGTERM/SIGINT.
//!
//! Start-up order: config → logging → data_dir → store → audit sink (indexed by the store) →
//! enforcer → control plane → restore live grants → background tasks → listeners. SIGHUP
//! re-reads the config; a file with errors is refused and the running config stays.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use jitgate_api::ControlPlane;
use jitgate_audit::{AuditSink, Kind};
use jitgate_core::config::{self, Diag, Loaded, schema::LogFormat};
use jitgate_core::{Enforcer, KillReason, Metrics, SystemClock};
use jitgate_store::Store;

mod frontends;
mod reload;
mod store;
mod systemd;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Standard error for log lines, never failing: when the reader of a log pipe has gone away
/// (`jitgate serve | tee log` after tee exits), a line that cannot be written is dropped.
/// Passing the error on would make tracing-subscriber report it with `eprintln!`, which panics
/// on the same broken pipe, in whatever task was logging: the SIGTERM handler among them, so
/// the gateway stopped obeying SIGTERM.
struct LossyStderr;

/// Counts the lines [`LossyStderr`] dropped (`jitgate_log_lines_dropped_total`), once the
/// metrics exist.
static LOG_DROPS: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::io::stderr().write_all(buf).is_err()
            && let Some(c) = LOG_DROPS.get()
        {
            c.log_lines_dropped_total.inc();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr)
        .with_target(false)
        // Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org).
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        );
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
/// Run the gateway.
pub async fn run(config_path: &Path) -> Result<()> {
    let loaded = report(config::load(config_path))?;
    init_logging(loaded.config.gateway.log_format);
    // Signals first: a SIGHUP during start-up must not kill the process (its default action).
    let hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let data_dir = loaded.config.gateway.data_dir.clone();
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create data_dir {}", data_dir.display()))?;
    restrict_dir(&data_dir);
    if let Some(from) = &loaded.config.gateway.shared_keys_dir {
        store::install_shared_keys(from, &data_dir)?;
    }
    raise_fd_limit(&loaded.config);

    let metrics = Metrics::new();
    let _ = LOG_DROPS.set(metrics.clone());
    metrics
        .build_info
        .with_label_values(&[
            env!("CARGO_PKG_VERSION"),
            option_env!("JITGATE_GIT_COMMIT").unwrap_or("unknown"),
        ])
        .set(1);
    let store = store::open_store(&loaded, &data_dir, &metrics).await?;
    let (audit, notifier) = open_audit(&loaded, &data_dir, &store, &metrics)?;
    // The SSH keys come first: the control plane signs user certificates with them.
    let ssh_keys = match &loaded.config.listen.ssh {
        Some(_) => Some(Arc::new(
            jitgate_ssh::GatewayKeys::load(&data_dir, loaded.config.ssh.host_ca_key_file.as_deref())
                .with_context(|| format!("loading the SSH keys in {}", data_dir.join("ssh").display()))?,
        )),
        None => None,
    };
    let cp = control_plane(&loaded, &data_dir, store, &audit, metrics, ssh_keys.as_deref())?;
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
        Some(frontends::gateway_tls(&loaded, &data_dir, bound, &mut listen_info)?)
    } else {
        None
    };
    let live_cert = match &gateway_tls {
        Some(_) => Some(frontends::live_cert(gateway_tls.as_ref())?),
        None => None,
    };
    if let (Some(pg), Some(cert)) = (&loaded.config.listen.postgres, &live_cert) {
        frontends::start_postgres(pg.get_ref(), cert, &loaded, &cp, &stop, &mut listen_info).await?;
    }
    if let (Some(ssh), Some(keys)) = (&loaded.config.listen.ssh, ssh_keys) {
        frontends::start_ssh(ssh.get_ref(), keys, &loaded, &data_dir, &cp, &stop, &mut listen_info).await?;
    }
    if let Some(replication) = cp.store().replication() {
        store::check_shared_keys(replication, &data_dir).await?;
    }
    if let Some(ops) = &loaded.config.listen.ops {
        let addr: SocketAddr = ops.get_ref().parse().context("[listen] ops")?;
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} ([listen] ops)"))?;
        listen_info["ops"] = serde_json::Value::String(l.local_addr()?.to_string());
        tokio::spawn(crate::http_server::serve(
            l,
            jitgate_api::ops_router(cp.clone()),
            stop.clone(),
        ));
    }
    announce(&cp, &loaded, &data_dir, &listen_info, restored).await?;
    systemd::notify("READY=1\nSTATUS=serving");

    let reloadable = reload::Reloadable {
        cp: cp.clone(),
        audit: audit.clone(),
        notifier: notifier.clone(),
        cert: live_cert.clone(),
    };
    reload::on_sighup(hup, reloadable, config_path, &loaded, &stop);
    if let Some(cert) = &live_cert {
        let listeners: Vec<&'static str> = [
            loaded.config.listen.postgres.is_some().then_some("postgres"),
            http_tls.then_some("http"),
        ]
        .into_iter()
        .flatten()
        .collect();
        tokio::spawn(reload::watch_certificate(
            cert.clone(),
            cp.metrics().clone(),
            listeners,
            stop.clone(),
        ));
    }
    let drain = Drain {
        delay: std::time::Duration::from_secs(loaded.config.gateway.drain_delay.secs()),
        timeout: std::time::Duration::from_secs(loaded.config.gateway.drain_timeout.secs()),
    };
    tokio::spawn(on_stop_signal(term, cp.clone(), drain, stop.clone()));

    let scheme = if http_tls { "https" } else { "http" };
    // Browsers reach the console at public_url when it is set; the listener otherwise (a
    // wildcard address is shown as loopback: set public_url for other hosts).
    let base_url = loaded.config.gateway.public_url.clone().map_or_else(
        || match bound.ip() {
            ip if ip.is_unspecified() => format!("{scheme}://127.0.0.1:{}", bound.port()),
            _ => format!("{scheme}://{bound}"),
        },
        |u| u.trim_end_matches('/').to_string(),
    );
    let mut app = jitgate_api::router(cp.clone());
    if let Some(sc) = &loaded.config.notify.slack {
        let secret = |env: &Option<String>, file: &Option<std::path::PathBuf>| {
            env.clone()
                .map(jitgate_core::catalog::SecretRef::Env)
                .or_else(|| file.clone().map(jitgate_core::catalog::SecretRef::File))
        };
        let (Some(bot_token), Some(signing_secret)) = (
            secret(&sc.bot_token_env, &sc.bot_token_file),
            secret(&sc.signing_secret_env, &sc.signing_secret_file),
        ) else {
            bail!("[notify.slack] needs a bot token and a signing secret");
        };
        for (what, s) in [("bot token", &bot_token), ("signing secret", &signing_secret)] {
            s.resolve().map_err(|e| anyhow!("[notify.slack] {what}: {e}"))?;
        }
        let slack = jitgate_api::slack::SlackApp::start(
            jitgate_api::slack::SlackSettings {
                bot_token,
                signing_secret,
                channel: sc.channel.get_ref().clone(),
                policy_channels: sc.policy_channels.clone(),
                users: sc.users.clone(),
                team_id: sc.team_id.clone(),
                email_identities: loaded.config.oidc.as_ref().is_none_or(|o| o.identity_claim == "email"),
                api_url: sc.api_url.clone(),
                console_url: format!("{base_url}/ui"),
            },
            cp.clone(),
        );
        let (n, sl) = (notifier.clone(), slack.clone());
        cp.audit().subscribe(std::sync::Arc::new(move |ev| {
            n.send(ev);
            sl.send(ev);
        }));
        app = slack.router().merge(app);
        tracing::info!(channel = %sc.channel.get_ref(), "Slack app: interactivity at {base_url}/v1/slack/interactions");
    }
    if loaded.config.console.enabled {
        let console = jitgate_console::Settings {
            idle: i64::try_from(loaded.config.console.idle_timeout.secs()).unwrap_or(i64::MAX),
            absolute: i64::try_from(loaded.config.console.absolute_timeout.secs()).unwrap_or(i64::MAX),
            // Browsers reach it over https when the listener speaks TLS or a TLS-terminating
            // proxy fronts it (public_url says https): Secure, __Host- cookies either way.
            secure: http_tls || base_url.starts_with("https://"),
            base_url,
            recordings: loaded.config.ssh.record.then(|| data_dir.join("recordings")),
            audit_file: Some(data_dir.join(&loaded.config.audit.file)),
        };
        app = jitgate_console::router(cp.clone(), console).merge(app);
    }
    if let (true, Some(cert)) = (http_tls, &live_cert) {
        let cfg = jitgate_pg::tls::server_config_live(cert, &[b"http/1.1"]).context("TLS for [listen] http")?;
        tracing::info!(cert = %cert.cert_path().display(), "API served over TLS");
        let tls_listener = crate::tls_listener::TlsListener::new(listener, cfg).context("API TLS listener")?;
        crate::http_server::serve(tls_listener, app, stop.clone()).await;
    } else {
        crate::http_server::serve(listener, app, stop.clone()).await;
    }
    shutdown(&cp, &notifier).await;
    Ok(())
}

/// The audit sink (indexed by the store, redacting with `[audit] redact`) and the webhook
/// notifier that takes every event from it once it is in the file, whoever wrote it.
fn open_audit(
    loaded: &Loaded,
    data_dir: &Path,
    store: &Arc<dyn Store>,
    metrics: &Metrics,
) -> Result<(AuditSink, jitgate_api::notify::Notifier)> {
    let audit_path = data_dir.join(&loaded.config.audit.file);
    let counter = metrics.audit_events_total.clone();
    let audit = AuditSink::open_with(
        &audit_path,
        Some(store.clone()),
        Some(Arc::new(move |n| counter.inc_by(n))),
        Some(loaded.config.audit.rotate_bytes),
    )
    .with_context(|| format!("opening the audit log {}", audit_path.display()))?;
    audit.set_redactor(reload::redactor(&loaded.config)?);
    let key_dir = data_dir.join("audit");
    let key = jitgate_audit::CheckpointKey::load_or_create(&key_dir)
        .with_context(|| format!("loading the audit checkpoint key in {}", key_dir.display()))?;
    tracing::info!(key = %key.public(), "audit checkpoints signed with this key (`jitgate audit pubkey`)");
    let key = Arc::new(key);
    audit.set_checkpoints(Some(reload::checkpoints(&loaded.config, &key)));
    let notifier =
        jitgate_api::notify::Notifier::start(reload::hooks(&loaded.config), metrics.notifications_total.clone());
    let subscriber = notifier.clone();
    audit.subscribe(Arc::new(move |ev| subscriber.send(ev)));
    Ok((audit, notifier))
}

/// The control plane: enforcer, login services and, with SSH, the user-certificate signer.
fn control_plane(
    loaded: &Loaded,
    data_dir: &Path,
    store: Arc<dyn Store>,
    audit: &AuditSink,
    metrics: Metrics,
    ssh_keys: Option<&jitgate_ssh::GatewayKeys>,
) -> Result<Arc<ControlPlane>> {
    let enforcer = Enforcer::new(
        Arc::new(SystemClock),
        metrics.clone(),
        loaded.catalog.expiry_warning.secs(),
    );
    let mut builder = ControlPlane::builder(loaded.catalog.clone(), store, audit.clone(), enforcer, metrics)
        .login(login_services(loaded, data_dir)?);
    if let Some(keys) = ssh_keys {
        let ca = keys.user_ca.clone();
        let lifetime = loaded.config.ssh.cert_lifetime.secs();
        builder = builder.cert_signer(Arc::new(move |who, public_key, token| {
            jitgate_ssh::keys::issue_user_cert(&ca, &who.name, &who.groups, public_key, lifetime, token)
        }));
    }
    Ok(builder.build())
}

/// Tell the world the gateway is up: what the front ends publish (`/v1/gateway`), the bound
/// addresses in `data_dir/listen.json` (scripts and tests that listen on port 0 read them), a
/// log line and `gateway.started` in the audit log.
async fn announce(
    cp: &ControlPlane,
    loaded: &Loaded,
    data_dir: &Path,
    listen_info: &serde_json::Value,
    restored: usize,
) -> Result<()> {
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
    let listen_file = data_dir.join("listen.json");
    std::fs::write(&listen_file, listen_info.to_string())
        .with_context(|| format!("writing {}", listen_file.display()))?;
    let http = listen_info["http"].as_str().unwrap_or_default().to_string();
    tracing::info!(
        http = %http,
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
                .detail(jitgate_audit::details::Started {
                    version: env!("CARGO_PKG_VERSION"),
                    http: &http,
                }),
        )
        .await;
    Ok(())
}

/// `[gateway] drain_delay` and `drain_timeout`.
struct Drain {
    delay: std::time::Duration,
    timeout: std::time::Duration,
}

/// Wait for SIGTERM or SIGINT, drain, then cancel `stop` (the API and the listeners stop and
/// [`shutdown`] ends what is left). A second signal during the drain stops at once. Nothing
/// here waits on a log line (see [`LossyStderr`]).
async fn on_stop_signal(
    mut term: tokio::signal::unix::Signal,
    cp: Arc<ControlPlane>,
    d: Drain,
    stop: CancellationToken,
) {
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    };
    cp.begin_drain();
    systemd::notify("STOPPING=1\nSTATUS=draining");
    let live = cp.enforcer().sessions.len();
    tracing::info!(drain_delay = ?d.delay, drain_timeout = ?d.timeout, sessions = live, "{which}: draining before the stop");
    let drained = async {
        tokio::time::sleep(d.delay).await;
        cp.refuse_new_sessions();
        let deadline = tokio::time::Instant::now() + d.timeout;
        while !cp.enforcer().sessions.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        () = drained => {}
        _ = term.recv() => tracing::info!("second SIGTERM: stopping now"),
        _ = tokio::signal::ctrl_c() => tracing::info!("second SIGINT: stopping now"),
    }
    stop.cancel();
    tracing::info!(sessions = cp.enforcer().sessions.len(), "shutting down");
}

/// After the API has stopped: kill every session (they tell their clients why), give them a
/// moment to end cleanly, record `gateway.stopped` and let the webhooks take it.
async fn shutdown(cp: &ControlPlane, notifier: &jitgate_api::notify::Notifier) {
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
                .detail(jitgate_audit::details::Stopped {
                    sessions_killed: killed,
                }),
        )
        .await;
    // The log ends signed: a copy cut short of this checkpoint shows it.
    if let Err(e) = cp.audit().checkpoint("shutdown").await {
        tracing::error!(error = %e, "the audit log could not be signed at shutdown");
    }
    // Let webhooks take gateway.stopped (and whatever is still queued) before the process ends.
    notifier.drain(std::time::Duration::from_secs(5)).await;
}

fn login_services(loaded: &Loaded, data_dir: &Path) -> Result<jitgate_api::Login> {
    let dir = data_dir.join("auth");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    restrict_dir(&dir);
    let keys =
        jitgate_auth::TokenKeys::load(&dir).with_context(|| format!("loading the token keys in {}", dir.display()))?;
    let lifetime = loaded.config.oidc.as_ref().map_or(43_200, |o| o.token_lifetime.secs());
    let tokens = jitgate_auth::Tokens::new(keys, i64::try_from(lifetime).unwrap_or(43_200).max(1));
    let provider = match &loaded.config.oidc {
        Some(o) => {
            let p = oidc_provider(o, oidc_secret(o)?)?;
            tracing::info!(issuer = %o.issuer, client_id = %o.client_id, "OpenID Connect login enabled");
            Some(p)
        }
        None => None,
    };
    Ok(jitgate_api::Login::new(tokens, provider))
}

/// `[oidc]`'s client secret, read from its variable or file now.
pub(super) fn oidc_secret(o: &config::schema::OidcSection) -> Result<Option<String>> {
    Ok(if let Some(v) = &o.client_secret_env {
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
    })
}

/// The relying party `[oidc]` describes, with its client secret.
pub(super) fn oidc_provider(
    o: &config::schema::OidcSection,
    secret: Option<String>,
) -> Result<jitgate_api::OidcProvider> {
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
    Ok(jitgate_api::OidcProvider {
        oidc: Arc::new(oidc),
        accept_id_tokens: o.accept_id_tokens,
    })
}

/// Keys, listener and front end for SSH; the user-certificate signer for the API.
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
