//! The front ends `serve` starts: the gateway's TLS certificate (configured, or issued by its
//! own CA), the Postgres listener and the SSH listener, each publishing what clients need in
//! `listen.json` and `/v1/gateway`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use jitgate_api::ControlPlane;
use jitgate_core::config::Loaded;
use tokio_util::sync::CancellationToken;

/// The gateway's certificate for the TLS front ends, with the CA clients pin and the names it
/// covers published in `listen_info`.
pub(super) fn gateway_tls(
    loaded: &Loaded,
    data_dir: &Path,
    http: SocketAddr,
    listen_info: &mut serde_json::Value,
) -> Result<GatewayTls> {
    let t = make_gateway_tls(loaded, data_dir, http)?;
    if let Some((pem, sha)) = &t.ca {
        listen_info["tls_ca"] = serde_json::Value::String(pem.clone());
        listen_info["tls_ca_sha256"] = serde_json::Value::String(sha.clone());
    }
    listen_info["tls_names"] = serde_json::json!(t.names);
    Ok(t)
}

/// The gateway's TLS certificate as the front ends serve it: replaceable on SIGHUP or when its
/// files change (see `reload::watch_certificate`).
pub(super) fn live_cert(tls: Option<&GatewayTls>) -> Result<Arc<jitgate_pg::tls::LiveCert>> {
    let t = tls.ok_or_else(|| anyhow!("no TLS certificate was set up"))?;
    jitgate_pg::tls::LiveCert::load(&t.cert, &t.key).context("loading the TLS certificate ([tls])")
}

/// The Postgres front end on `addr` (`[listen] postgres`), TLS with the gateway's certificate.
pub(super) async fn start_postgres(
    addr: &str,
    cert: &Arc<jitgate_pg::tls::LiveCert>,
    loaded: &Loaded,
    cp: &Arc<ControlPlane>,
    stop: &CancellationToken,
    listen_info: &mut serde_json::Value,
) -> Result<()> {
    let addr: SocketAddr = addr.parse().context("[listen] postgres")?;
    // ALPN `postgresql` for direct TLS (PostgreSQL 17 clients).
    let tls = jitgate_pg::tls::server_config_live(cert, &[b"postgresql"]).context("TLS for [listen] postgres")?;
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
        audit: cp.audit().clone(),
        audit_statements: loaded.config.audit.statements,
        max_scram_iterations: pgc.max_scram_iterations,
    };
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ([listen] postgres)"))?;
    let pg_bound = l.local_addr()?;
    listen_info["postgres"] = serde_json::Value::String(pg_bound.to_string());
    listen_info["tls_cert"] = serde_json::Value::String(cert.cert_path().display().to_string());
    tracing::info!(postgres = %pg_bound, cert = %cert.cert_path().display(), "postgres front end listening");
    let fe = jitgate_pg::PgFrontend::new(cp.clone(), cfg);
    tokio::spawn(fe.serve(l, stop.clone()));
    Ok(())
}

/// The certificate the TLS front ends present, and what clients should pin.
pub(super) struct GatewayTls {
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
fn make_gateway_tls(loaded: &Loaded, data_dir: &Path, http: SocketAddr) -> Result<GatewayTls> {
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
/// The SSH front end on `addr` (`[listen] ssh`) with the gateway's SSH keys.
pub(super) async fn start_ssh(
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
