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

/// Reload on every SIGHUP until `stop`, the webhooks included.
pub(super) fn on_sighup(
    mut hup: Signal,
    cp: Arc<ControlPlane>,
    audit: AuditSink,
    path: &Path,
    notifier: Notifier,
    loaded: &Loaded,
    stop: &CancellationToken,
) {
    let path = path.to_path_buf();
    let stop = stop.clone();
    let running = loaded.config.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = hup.recv() => {}
                () = stop.cancelled() => return,
            }
            super::systemd::notify("RELOADING=1");
            if let Some(new_hooks) = reload(&cp, &audit, &path, &running).await {
                notifier.set_hooks(new_hooks);
            }
            super::systemd::notify("READY=1\nSTATUS=serving");
        }
    });
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

/// Re-read the config; on success returns the new webhooks.
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
            let hooks = hooks(&l.config);
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
