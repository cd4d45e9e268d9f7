//! The SSH front end: accept, authenticate (keys of static identities, certificates from the
//! gateway's user CA), resolve the target from the user name, check the grant, log in upstream
//! and hand every channel to [`crate::relay`]. One SSH connection is one jitgate session: it is
//! registered with the grant it runs under, and the grant's end closes all its channels.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use jitgate_audit::AuditSink;
use jitgate_core::Gatekeeper;
use jitgate_core::model::Principal;
use russh::keys::{PrivateKey, PublicKey};
use russh::server;
use russh::{Disconnect, MethodKind, MethodSet};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::conn::Live;
use crate::cut::CutStream;
use crate::keys::{self, GatewayKeys};
use crate::upstream::UpstreamError;
use handler::Conn;

mod ask;
mod handler;

/// Front-end settings.
#[derive(Clone)]
pub struct SshConfig {
    /// From accept to successful login.
    pub login_timeout: Duration,
    /// Concurrent connections.
    pub max_connections: usize,
    /// Channels per connection.
    pub max_channels: usize,
    /// Environment variables passed upstream.
    pub env_allow: Vec<String>,
    /// Record interactive sessions.
    pub record: bool,
    /// Where recordings go.
    pub recordings_dir: PathBuf,
    /// Audit text bound.
    pub max_text: usize,
    /// Audit sink.
    pub audit: AuditSink,
    /// Principals of the gateway's host certificate (empty: any name).
    pub host_names: Vec<String>,
}

/// The SSH front end.
pub struct SshFrontend<G: Gatekeeper> {
    gk: Arc<G>,
    cfg: SshConfig,
    keys: Arc<GatewayKeys>,
    server: Arc<server::Config>,
    slots: Arc<tokio::sync::Semaphore>,
    key_files: DashMap<PathBuf, Arc<PrivateKey>>,
    /// Identity keys parsed once per catalog (replaced on reload).
    identity_keys: Mutex<Option<IdentityKeys>>,
}

type IdentityKeys = (Arc<jitgate_core::Catalog>, Arc<Vec<(PublicKey, Principal)>>);

impl<G: Gatekeeper> SshFrontend<G> {
    /// Build the front end.
    pub fn new(gk: Arc<G>, cfg: SshConfig, keys: Arc<GatewayKeys>) -> Result<Arc<Self>, crate::keys::KeyError> {
        let certificate = keys.host_certificate(&cfg.host_names)?;
        let mut methods = MethodSet::empty();
        methods.push(MethodKind::PublicKey);
        let server = server::Config {
            server_id: russh::SshId::Standard("SSH-2.0-jitgate".into()),
            methods,
            keys: vec![keys.host.clone()],
            // The host certificate first: clients that pin the gateway's host CA accept every
            // replica and every rotated key; clients pinning the key itself still can.
            certificates: vec![certificate],
            auth_rejection_time: Duration::from_millis(300),
            auth_rejection_time_initial: Some(Duration::from_millis(0)),
            max_auth_attempts: 6,
            // Idle sessions are the user's business (an open shell can sit for hours); the grant
            // bounds them. Keepalives find dead peers.
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 4,
            nodelay: true,
            channel_buffer_size: 64,
            ..Default::default()
        };
        Ok(Arc::new(Self {
            gk,
            slots: Arc::new(tokio::sync::Semaphore::new(cfg.max_connections)),
            cfg,
            keys,
            server: Arc::new(server),
            key_files: DashMap::new(),
            identity_keys: Mutex::new(None),
        }))
    }

    /// Accept connections until `stop`.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        while let Some((tcp, peer)) = jitgate_core::frontend::accept(&listener, &stop, "ssh").await {
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "ssh connection refused: max_connections reached");
                drop(tcp);
                continue;
            };
            let me = self.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                me.connection(tcp, peer, stop).await;
                drop(permit);
            });
        }
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, stop: CancellationToken) {
        let _ = tcp.set_nodelay(true);
        let shared = Arc::new(ConnShared::default());
        let handler = Conn::new(self.clone(), peer, shared.clone());
        // The version exchange happens inside `run_stream`: bound it by the login deadline.
        let deadline = tokio::time::Instant::now() + self.cfg.login_timeout;
        let running = match tokio::time::timeout_at(
            deadline,
            server::run_stream(self.server.clone(), CutStream::new(tcp, shared.cut.clone()), handler),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = ?e, "ssh handshake failed");
                return;
            }
            Err(_) => {
                self.login_timed_out(peer);
                return;
            }
        };
        let handle = running.handle();
        let watchdog = {
            let shared = shared.clone();
            let me = self.clone();
            async move {
                tokio::time::sleep_until(deadline).await;
                if !shared.authenticated.load(Ordering::Acquire) {
                    me.login_timed_out(peer);
                    let _ = handle
                        .disconnect(
                            Disconnect::ByApplication,
                            "jitgate: login timed out".into(),
                            "en".into(),
                        )
                        .await;
                }
                std::future::pending::<()>().await;
            }
        };
        // Shutdown reaches live sessions through their kill switches (the gateway kills all);
        // connections still logging in are simply dropped.
        let unauthenticated_at_stop = async {
            stop.cancelled().await;
            if shared.authenticated.load(Ordering::Acquire) {
                std::future::pending::<()>().await;
            }
        };
        let result = tokio::select! {
            r = running => r.map_err(|e| format!("{e:?}")),
            () = watchdog => Ok(()),
            () = unauthenticated_at_stop => Err("gateway shutting down".into()),
            () = shared.cut.cancelled() => {
                // The client did not take the goodbye in time (it stopped reading): its socket
                // fails every read and write from now on (CutStream), which ends the session.
                tracing::info!(%peer, "ssh connection cut: the client did not take the goodbye");
                Ok(())
            }
        };
        let live = shared.live.lock().ok().and_then(|mut g| g.take());
        if let Some(live) = live {
            live.finish(&self, result).await;
        }
    }

    fn login_timed_out(&self, peer: SocketAddr) {
        self.gk
            .metrics()
            .auth_failures_total
            .with_label_values(&["ssh", "timeout"])
            .inc();
        tracing::debug!(%peer, "ssh login timed out");
    }

    fn key_file(&self, path: &PathBuf) -> Result<Arc<PrivateKey>, UpstreamError> {
        if let Some(k) = self.key_files.get(path) {
            return Ok(k.clone());
        }
        let k = Arc::new(
            PrivateKey::read_openssh_file(path)
                .map_err(|e| UpstreamError::Config(format!("upstream_key_file {}: {e}", path.display())))?,
        );
        self.key_files.insert(path.clone(), k.clone());
        Ok(k)
    }

    /// The static identity owning `key` (keys of `[[identities]] ssh_keys`).
    fn identity_for(&self, key: &PublicKey) -> Option<Principal> {
        let cat = self.gk.catalog();
        let keys = {
            let mut g = self.identity_keys.lock().ok()?;
            match g.as_ref() {
                Some((c, k)) if Arc::ptr_eq(c, &cat) => k.clone(),
                _ => {
                    let k: Arc<Vec<_>> = Arc::new(
                        cat.identities
                            .iter()
                            .flat_map(|i| {
                                let p = Principal::new(i.name.clone(), i.groups.clone());
                                i.ssh_keys
                                    .iter()
                                    .filter_map(|k| keys::parse_public(k).ok())
                                    .map(move |k| (k, p.clone()))
                            })
                            .collect(),
                    );
                    *g = Some((cat, k.clone()));
                    k
                }
            }
        };
        keys.iter()
            .find(|(k, _)| k.key_data() == key.key_data())
            .map(|(_, p)| p.clone())
    }

    /// User certificate CA public key.
    pub fn user_ca(&self) -> &PublicKey {
        self.keys.user_ca.public_key()
    }
}

/// State shared between the handler (inside russh's session loop) and the connection task.
#[derive(Default)]
struct ConnShared {
    authenticated: AtomicBool,
    live: Mutex<Option<Arc<Live>>>,
    /// Cancelled when the connection must go now (a killed session whose client does not take
    /// our goodbye): the session task is aborted and the socket dropped.
    cut: CancellationToken,
}
