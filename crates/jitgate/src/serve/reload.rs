//! SIGHUP: re-read `gateway.toml`; a file with errors is refused and the running config stays.

use std::path::Path;
use std::sync::Arc;

use anyhow::anyhow;
use jitgate_api::ControlPlane;
use jitgate_api::notify::{Hook, Notifier};
use jitgate_audit::AuditSink;
use jitgate_core::config::{self, Loaded};
use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;

/// What a SIGHUP reloads besides the catalog's owner.
pub(super) struct Reloadable {
    pub cp: Arc<ControlPlane>,
    pub audit: AuditSink,
    /// Takes the new webhooks.
    pub notifier: Notifier,
    /// The front ends' certificate, re-read from its files.
    pub cert: Option<Arc<jitgate_pg::tls::LiveCert>>,
}

/// Reload on every SIGHUP until `stop`: the catalog, the webhooks and the TLS certificate.
pub(super) fn on_sighup(mut hup: Signal, r: Reloadable, path: &Path, loaded: &Loaded, stop: &CancellationToken) {
    let Reloadable {
        cp,
        audit,
        notifier,
        cert,
    } = r;
    let path = path.to_path_buf();
    let stop = stop.clone();
    let running = loaded.raw.clone();
    let mut oidc = OidcState::at_start(loaded);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = hup.recv() => {}
                () = stop.cancelled() => return,
            }
            super::systemd::notify("RELOADING=1");
            if let Some(l) = reload(&cp, &audit, &path, &running).await {
                notifier.set_hooks(hooks(&l.config));
                oidc.apply(&cp, &l).await;
            }
            if let Some(c) = &cert {
                reload_certificate(c, "SIGHUP");
            }
            super::systemd::notify("READY=1\nSTATUS=serving");
        }
    });
}

/// Serve the certificate files' current content from the next handshake on; a file that
/// cannot be used keeps the certificate in use (and says why).
fn reload_certificate(c: &jitgate_pg::tls::LiveCert, why: &str) {
    match c.reload() {
        Ok(()) => {
            tracing::info!(cert = %c.cert_path().display(), trigger = why, "TLS certificate reloaded; new connections get it, open ones keep theirs")
        }
        Err(e) => tracing::error!(error = %e, trigger = why, "TLS certificate not reloaded; the one in use stays"),
    }
}

/// How often the certificate files are checked for a change (cert-manager, ACME clients).
const CERT_POLL: std::time::Duration = std::time::Duration::from_secs(5);

/// Reload the certificate when its files change on disk, so a rotation by cert-manager or an
/// ACME client needs no signal. Polls modification times (no inotify dependency; a rotation
/// is seen within [`CERT_POLL`]).
/// Each poll also sets `jitgate_tls_cert_expiry_seconds` for the `listeners` that serve it.
pub(super) async fn watch_certificate(
    c: Arc<jitgate_pg::tls::LiveCert>,
    metrics: jitgate_core::Metrics,
    listeners: Vec<&'static str>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(CERT_POLL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        if c.not_after() > 0 {
            let left = c.not_after() - jiff::Timestamp::now().as_second();
            for l in &listeners {
                metrics.tls_cert_expiry_seconds.with_label_values(&[l]).set(left);
            }
        }
        if c.changed_on_disk() {
            // Writers replace the two files one after the other: give the second a moment.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            reload_certificate(&c, "file change");
        }
    }
}

/// The webhooks `[notify]` configures.
pub(super) fn hooks(c: &config::schema::Config) -> Vec<Hook> {
    c.notify.webhooks.iter().filter_map(Hook::from_config).collect()
}

/// The operator's `[audit] redact` patterns, compiled (validated with the rest of the file).
pub(super) fn redactor(c: &config::schema::Config) -> anyhow::Result<Option<jitgate_audit::Redactor>> {
    let patterns: Vec<&str> = c.audit.redact.iter().map(|p| p.get_ref().as_str()).collect();
    jitgate_audit::Redactor::new(&patterns).map_err(|e| anyhow!("[audit] redact: {e}"))
}

/// `[audit] checkpoint_every` and `checkpoint_interval` with the gateway's key.
pub(super) fn checkpoints(
    c: &config::schema::Config,
    key: &std::sync::Arc<jitgate_audit::CheckpointKey>,
) -> jitgate_audit::sink::CheckpointPolicy {
    jitgate_audit::sink::CheckpointPolicy {
        key: key.clone(),
        every: (*c.audit.checkpoint_every.get_ref()).max(1),
        interval: std::time::Duration::from_secs(c.audit.checkpoint_interval.get_ref().secs().max(1)),
    }
}

/// The `[oidc]` in force, to rebuild the relying party only when it (or its secret) changed:
/// a code or device login in progress survives a reload that does not touch it.
struct OidcState {
    section: Option<toml::Value>,
    secret: Option<String>,
}

impl OidcState {
    fn at_start(loaded: &Loaded) -> Self {
        Self {
            section: loaded.raw.get("oidc").cloned(),
            secret: loaded
                .config
                .oidc
                .as_ref()
                .and_then(|o| super::oidc_secret(o).ok().flatten()),
        }
    }

    /// Apply `[oidc]` from a reloaded file; a section that cannot be used keeps the one in
    /// force (and says why, like a refused file).
    async fn apply(&mut self, cp: &ControlPlane, l: &Loaded) {
        let Some(login) = cp.identity_services() else { return };
        let section = l.raw.get("oidc").cloned();
        let Some(o) = &l.config.oidc else {
            if self.section.take().is_some() {
                login.set_provider(None);
                tracing::warn!(
                    "[oidc] removed: OpenID Connect login is off; gateway tokens already issued stay valid until they expire"
                );
            }
            return;
        };
        let secret = match super::oidc_secret(o) {
            Ok(s) => s,
            Err(e) => return self.refused(cp, &e).await,
        };
        if section == self.section && secret == self.secret {
            return;
        }
        match super::oidc_provider(o, secret.clone()) {
            Ok(p) => {
                login.set_provider(Some(p));
                login
                    .tokens
                    .set_lifetime(i64::try_from(o.token_lifetime.secs()).unwrap_or(43_200).max(1));
                tracing::info!(issuer = %o.issuer, client_id = %o.client_id, "OpenID Connect settings reloaded; logins started before must be started again");
                self.section = section;
                self.secret = secret;
            }
            Err(e) => self.refused(cp, &e).await,
        }
    }

    async fn refused(&self, cp: &ControlPlane, e: &anyhow::Error) {
        tracing::error!(error = %format!("{e:#}"), "[oidc] not reloaded; the OpenID Connect settings in force stay");
        cp.reload_failed(&format!("[oidc]: {e:#}")).await;
    }
}

/// Re-read the config and apply what can be applied; warn about each changed key that needs a
/// restart. The loaded file on success (for the caller's parts: webhooks, OIDC).
async fn reload(cp: &Arc<ControlPlane>, audit: &AuditSink, path: &Path, running: &toml::Table) -> Option<Loaded> {
    match config::load(path) {
        Ok(mut l) => {
            match redactor(&l.config) {
                Ok(r) => audit.set_redactor(r),
                Err(e) => tracing::error!(error = %e, "redaction patterns not reloaded"),
            }
            for w in &l.warnings {
                tracing::warn!("{w}");
            }
            let restart = config::restart_needed(running, &l.raw);
            if !restart.is_empty() {
                tracing::warn!(
                    keys = %restart.join(", "),
                    "changed keys that take effect only after a restart (`systemctl restart jitgate`, or a rolling restart of the replicas): {}; the running values stay until then",
                    restart.join(", ")
                );
            }
            let n = (l.catalog.resources.len(), l.catalog.policies.len());
            match cp.reload(std::mem::take(&mut l.catalog)).await {
                Ok(()) => tracing::info!(resources = n.0, policies = n.1, "configuration reloaded"),
                Err(e) => tracing::error!(error = %e, "reload not audited"),
            }
            Some(l)
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
