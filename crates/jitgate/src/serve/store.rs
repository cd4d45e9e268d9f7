//! The store `serve` opens (SQLite in data_dir, or a shared PostgreSQL) and the check that
//! replicas on a shared store hold the same keys.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use jitgate_core::Metrics;
use jitgate_core::config::Loaded;
use jitgate_store::{SqliteStore, Store};

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

pub(super) async fn open_store(loaded: &Loaded, data_dir: &Path, metrics: &Metrics) -> Result<Arc<dyn Store>> {
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

/// Install the keys replicas share from `[gateway] shared_keys_dir` (a folder laid out like
/// data_dir, e.g. a mounted Kubernetes Secret) into data_dir, 0600, before anything loads them.
/// A configured folder that is missing refuses the start: each replica would otherwise make its
/// own keys, and tokens minted on one would not verify on the next.
pub(super) fn install_shared_keys(from: &Path, data_dir: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if !from.is_dir() {
        return Err(anyhow!(
            "[gateway] shared_keys_dir {} is not a folder (mount the shared keys there, or remove the key)",
            from.display()
        ));
    }
    let mut installed = Vec::new();
    let mut absent = Vec::new();
    for f in SHARED_KEY_FILES {
        let src = from.join(f);
        let bytes = match std::fs::read(&src) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                absent.push(*f);
                continue;
            }
            Err(e) => return Err(anyhow!("[gateway] shared_keys_dir: reading {}: {e}", src.display())),
        };
        let dst = data_dir.join(f);
        if std::fs::read(&dst).ok().as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        let dir = dst.parent().unwrap_or(data_dir);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        let tmp = dst.with_extension("installing");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut o = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            o.write_all(&bytes)?;
            o.sync_all()?;
            std::fs::rename(&tmp, &dst)
        };
        write().with_context(|| format!("installing {} as {}", src.display(), dst.display()))?;
        installed.push(*f);
    }
    if absent.contains(&"auth/token_keys.json") {
        return Err(anyhow!(
            "[gateway] shared_keys_dir {} has no auth/token_keys.json: every replica needs the same token keys (an empty or wrong Secret?); copy it from a first replica (docs/operator-guide.md, \"Several replicas\")",
            from.display()
        ));
    }
    if !installed.is_empty() {
        tracing::info!(from = %from.display(), files = %installed.join(", "), "shared keys installed into data_dir");
    }
    if !absent.is_empty() {
        tracing::warn!(from = %from.display(), files = %absent.join(", "), "not in shared_keys_dir: this replica uses (or generates) its own");
    }
    Ok(())
}

/// Publish fingerprints of the keys replicas must share and compare them with the other
/// replicas': a token minted on one replica must verify on all, and users pin one SSH host key.
/// A difference is logged as an error with what to copy (not fatal: a rolling key copy passes
/// through it).
pub(super) async fn check_shared_keys(replication: &dyn jitgate_store::Replication, data_dir: &Path) -> Result<()> {
    use sha2::Digest;
    let mut mine = serde_json::Map::new();
    for f in SHARED_KEY_FILES {
        if let Ok(bytes) = std::fs::read(data_dir.join(f)) {
            let h = hex::encode(sha2::Sha256::digest(&bytes));
            mine.insert((*f).to_string(), serde_json::Value::String(h[..16].to_string()));
        }
    }
    let others = replication
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
