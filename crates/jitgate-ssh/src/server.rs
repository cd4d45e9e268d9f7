//! The SSH front end: accept, authenticate (keys of static identities, certificates from the
//! gateway's user CA), resolve the target from the user name, check the grant, log in upstream
//! and hand every channel to [`crate::relay`]. One SSH connection is one jitgate session: it is
//! registered with the grant it runs under, and the grant's end closes all its channels.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use jitgate_audit::{AuditSink, Event, Kind};
use jitgate_core::catalog::Resource;
use jitgate_core::config::schema::ResourceKind;
use jitgate_core::model::Principal;
use jitgate_core::sessions::new_session_id;
use jitgate_core::{Admission, Gatekeeper, SessionInfo, Want};
use russh::keys::{Certificate, PrivateKey, PublicKey};
use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelOpenFailure, Disconnect, MethodKind, MethodSet};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::conn::{self, ChannelSlot, Live, OpenChannels, UpstreamEnd};
use crate::keys::{self, GatewayKeys};
use crate::relay::{self, ChanCtx};
use crate::target::{self, TargetName};
use crate::upstream::{self, Credential, Upstream, UpstreamError};

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
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "ssh accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = stop.cancelled() => return,
            };
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
        let handler = Conn {
            fe: self.clone(),
            peer,
            shared: shared.clone(),
            principal: None,
            user: String::new(),
            failures: Vec::new(),
        };
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
                                let p = Principal {
                                    name: i.name.clone(),
                                    groups: i.groups.clone(),
                                };
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

/// The client's socket, with a hard stop: once `cut` is cancelled every read and write fails,
/// also those already waiting (a peer that stopped reading keeps a write pending forever), so
/// the session ends and the socket is closed.
struct CutStream {
    inner: TcpStream,
    cut: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl CutStream {
    fn new(inner: TcpStream, cut: CancellationToken) -> Self {
        Self {
            inner,
            cut: Box::pin(cut.cancelled_owned()),
        }
    }

    fn check(&mut self, cx: &mut std::task::Context<'_>) -> std::io::Result<()> {
        match self.cut.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "connection cut by jitgate",
            )),
            std::task::Poll::Pending => Ok(()),
        }
    }
}

impl tokio::io::AsyncRead for CutStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CutStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Live {
    /// End the session: let killed channels finish, close the upstream, record the end.
    async fn finish<G: Gatekeeper>(&self, fe: &SshFrontend<G>, result: Result<(), String>) {
        if self.guard.kill_reason().is_some() {
            // Killed: the channels are ending their upstream processes (TERM, KILL); closing the
            // upstream connection under them would cut that short, and their outcome goes into
            // session.ended. Bounded by the channels' own limits.
            let _ = tokio::time::timeout(Duration::from_millis(1500), self.channels.emptied()).await;
        }
        self.closed.cancel();
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            self.upstream
                .disconnect(Disconnect::ByApplication, "session ended", "en"),
        )
        .await;
        let info = &self.guard.info;
        let (outcome, reason) = match (self.guard.kill_reason(), result) {
            (Some(k), _) => (k.label().to_string(), k.message(&info.resource)),
            (None, Ok(())) => ("ok".to_string(), "client disconnected".to_string()),
            (None, Err(e)) => ("error".to_string(), e),
        };
        let upstream_end = UpstreamEnd::label(self.upstream_end.load(Ordering::Acquire));
        tracing::info!(session_id = %info.id, outcome = %outcome, reason = %reason, upstream_end = upstream_end.unwrap_or("-"), "ssh session ended");
        let extra = upstream_end.map(|u| serde_json::json!({"upstream_end": u}));
        fe.gk.session_ended(info, &outcome, &reason, extra).await;
    }
}

/// Per-connection russh handler.
struct Conn<G: Gatekeeper> {
    fe: Arc<SshFrontend<G>>,
    peer: SocketAddr,
    shared: Arc<ConnShared>,
    principal: Option<Principal>,
    /// The SSH user name of the accepted login: the target.
    user: String,
    failures: Vec<&'static str>,
}

/// The outcome of resolving a connection's target, cached after the first channel.
enum Ready {
    Live(Arc<Live>),
    Refused(String),
}

impl<G: Gatekeeper> Conn<G> {
    fn fail(&mut self, user: &str, reason: &'static str) {
        self.fe
            .gk
            .metrics()
            .auth_failures_total
            .with_label_values(&["ssh", reason])
            .inc();
        if self.failures.is_empty() {
            // One audit event per connection is enough: a client offering five keys is one
            // failed login, not five.
            let ev = Event::new(Kind::AuthFailed, jiff::Timestamp::now())
                .actor(user)
                .details(serde_json::json!({"protocol": "ssh", "client": self.peer.to_string(), "reason": reason}));
            let audit = self.fe.cfg.audit.clone();
            tokio::spawn(async move {
                let _ = audit.emit(ev).await;
            });
        }
        self.failures.push(reason);
    }

    /// Resolve target, grant and upstream once per connection.
    async fn ready(&mut self, user_target: &str, server: server::Handle) -> Ready {
        if let Some(live) = self.shared.live.lock().ok().and_then(|g| g.clone()) {
            return Ready::Live(live);
        }
        let Some(principal) = self.principal.clone() else {
            return Ready::Refused("not authenticated".into());
        };
        match self.connect(&principal, user_target).await {
            Ok(live) => {
                if let Ok(mut g) = self.shared.live.lock() {
                    *g = Some(live.clone());
                }
                tokio::spawn(conn::watch(live.clone(), server));
                Ready::Live(live)
            }
            Err(msg) => Ready::Refused(msg),
        }
    }

    async fn connect(&mut self, principal: &Principal, user_target: &str) -> Result<Arc<Live>, String> {
        let fe = self.fe.clone();
        let Some(TargetName { login, resource }) = target::parse(user_target) else {
            return Err(format!(
                "`{user_target}` is not a target: connect as LOGIN@RESOURCE or RESOURCE (ssh -p PORT ubuntu@web-1@GATEWAY)"
            ));
        };
        let cat = fe.gk.catalog();
        let Some(res) = cat.resources.get(&resource).filter(|r| r.kind == ResourceKind::Ssh) else {
            return Err(format!(
                "resource {resource} does not exist or is not an SSH resource; `jitgate resources` lists them"
            ));
        };
        let login = match login {
            Some(l) => l,
            None => res.default_access().unwrap_or_default().to_string(),
        };
        if !res.access_levels.contains(&login) {
            return Err(format!(
                "login {login} is not offered by {}; its logins: {}",
                res.name,
                res.access_levels.join(", ")
            ));
        }
        let grant = fe
            .gk
            .find_grant(&principal.name, &res.name, Want::Exactly(&login))
            .await
            .map_err(|r| r.message())?;
        let Some(grant) = grant else {
            fe.gk
                .metrics()
                .auth_failures_total
                .with_label_values(&["ssh", "no_grant"])
                .inc();
            return Err(format!(
                "no active access grant for {} as {login} on {}; request one: jitgate request {} --access {login} --for 1h --reason \"...\"",
                principal.name, res.name, res.name
            ));
        };
        let allow_forwarding = cat
            .policies
            .iter()
            .find(|p| p.name == grant.policy)
            .is_some_and(|p| p.allow_port_forwarding);
        let upstream = self.login_upstream(res, &login, &principal.name).await?;
        let info = SessionInfo {
            id: new_session_id(),
            protocol: "ssh".into(),
            identity: principal.name.clone(),
            resource: res.name.clone(),
            access: login.clone(),
            grant_id: grant.id,
            client_addr: self.peer.to_string(),
            started_at: jiff::Timestamp::now(),
        };
        let guard = fe.gk.open_session(info.clone()).await.map_err(|r| r.message())?;
        tracing::info!(session_id = %info.id, identity = %info.identity, resource = %info.resource, login = %login, grant_id = info.grant_id, "ssh session started");
        let live = Arc::new(Live {
            guard,
            upstream,
            login,
            allow_forwarding,
            channels: OpenChannels::default(),
            channel_count: AtomicUsize::new(0),
            recordings: AtomicUsize::new(0),
            closed: CancellationToken::new(),
            cut: self.shared.cut.clone(),
            upstream_end: std::sync::atomic::AtomicU8::new(0),
        });
        Ok(live)
    }

    async fn login_upstream(&self, res: &Resource, login: &str, identity: &str) -> Result<Upstream, String> {
        let fe = &self.fe;
        let err = |reason: &str, e: &UpstreamError| {
            fe.gk
                .metrics()
                .upstream_errors_total
                .with_label_values(&["ssh", reason])
                .inc();
            e.to_string()
        };
        let trust = upstream::host_trust(
            res.host_key.as_deref(),
            &res.host_ca,
            res.known_hosts_file.as_deref(),
            &res.address,
        )
        .map(Arc::new)
        .map_err(|e| {
            tracing::error!(resource = %res.name, error = %e, "ssh upstream configuration");
            err("config", &e);
            format!(
                "jitgate cannot log in to {}: gateway configuration problem (operators: see the gateway log)",
                res.name
            )
        })?;
        let cred = if res.upstream_ca {
            Credential::Ca(Arc::new(fe.keys.upstream_ca.clone()))
        } else if let Some(p) = &res.upstream_key_file {
            fe.key_file(p).map(Credential::Key).map_err(|e| {
                tracing::error!(resource = %res.name, error = %e, "ssh upstream key");
                err("config", &e);
                format!(
                    "jitgate cannot log in to {}: gateway configuration problem (operators: see the gateway log)",
                    res.name
                )
            })?
        } else {
            return Err(format!("jitgate has no credential for {}", res.name));
        };
        let timeout = Duration::from_secs(res.connect_timeout.secs().max(1));
        match upstream::connect(&res.address, trust, login, &cred, identity, timeout).await {
            Ok(u) => Ok(u),
            Err(e) => {
                let reason = match &e {
                    UpstreamError::HostKeyMismatch { .. } => "host_key_mismatch",
                    UpstreamError::Auth(..) => "login_refused",
                    UpstreamError::Connect(..) => "unreachable",
                    _ => "ssh",
                };
                tracing::error!(resource = %res.name, error = %e, "ssh upstream login failed");
                let text = err(reason, &e);
                if let UpstreamError::HostKeyMismatch { presented, why, .. } = &e {
                    let ev = Event::new(Kind::SshHostKeyMismatch, jiff::Timestamp::now())
                        .actor(identity)
                        .resource(&res.name)
                        .details(
                            serde_json::json!({"address": res.address, "presented": presented, "why": why.to_string()}),
                        );
                    let _ = fe.cfg.audit.emit(ev).await;
                    return Err(format!(
                        "jitgate refused to connect to {}: its host key does not match the pinned key (possible interception; operators have been alerted)",
                        res.name
                    ));
                }
                Err(format!("jitgate could not log in to {}: {text}", res.name))
            }
        }
    }

    fn ctx(&self, live: &Arc<Live>, slot: ChannelSlot, session: &Session) -> ChanCtx {
        ChanCtx {
            live: live.clone(),
            _slot: slot,
            server: session.handle(),
            audit: self.fe.cfg.audit.clone(),
            metrics: self.fe.gk.metrics().clone(),
            env_allow: self.fe.cfg.env_allow.clone(),
            record_dir: self.fe.cfg.record.then(|| self.fe.cfg.recordings_dir.clone()),
            max_text: self.fe.cfg.max_text,
        }
    }
}

impl<G: Gatekeeper> server::Handler for Conn<G> {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Certificates reach this callback as their inner key, indistinguishable from a plain
        // key: every key gets to prove possession, and the decision is in the next callbacks.
        Ok(Auth::Accept)
    }

    async fn auth_publickey(&mut self, user: &str, key: server::VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        match self.fe.identity_for(key.public_key) {
            Some(p) => {
                self.principal = Some(p);
                self.user = user.to_string();
                Ok(Auth::Accept)
            }
            None => {
                self.fail(user, "unknown_key");
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_openssh_certificate(&mut self, user: &str, cert: &Certificate) -> Result<Auth, Self::Error> {
        let now = u64::try_from(jiff::Timestamp::now().as_second()).unwrap_or(0);
        match keys::check_user_cert(cert, self.fe.user_ca(), now) {
            Ok(_)
                if cert
                    .extensions()
                    .get(crate::TOKEN_EXTENSION)
                    .is_some_and(|t| self.fe.gk.token_revoked(t)) =>
            {
                tracing::debug!(peer = %self.peer, "ssh certificate of a revoked login refused");
                self.fail(user, "revoked_cert");
                Ok(Auth::reject())
            }
            Ok(identity) => {
                let groups = cert
                    .extensions()
                    .get(crate::GROUPS_EXTENSION)
                    .map(|g| g.split(',').filter(|x| !x.is_empty()).map(str::to_string).collect())
                    .unwrap_or_default();
                self.principal = Some(Principal { name: identity, groups });
                self.user = user.to_string();
                Ok(Auth::Accept)
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "ssh certificate refused");
                self.fail(
                    user,
                    match e {
                        keys::CertRefusal::OutsideValidity => "cert_expired",
                        _ => "bad_cert",
                    },
                );
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        self.shared.authenticated.store(true, Ordering::Release);
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let user = self.user.clone();
        match self.ready(&user, session.handle()).await {
            Ready::Refused(msg) => {
                reply.accept().await;
                tokio::spawn(relay::refuse(channel, session.handle(), msg));
            }
            Ready::Live(live) => {
                let Some(slot) = live.slot(self.fe.cfg.max_channels) else {
                    reply.reject(ChannelOpenFailure::ResourceShortage).await;
                    return Ok(());
                };
                match live.upstream.channel_open_session().await {
                    Ok(up) => {
                        reply.accept().await;
                        let ctx = self.ctx(&live, slot, session);
                        tokio::spawn(relay::session_channel(ctx, channel, up));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "upstream refused a session channel");
                        reply.reject(ChannelOpenFailure::ConnectFailed).await;
                    }
                }
            }
        }
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        orig_addr: &str,
        orig_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let user = self.user.clone();
        let Ready::Live(live) = self.ready(&user, session.handle()).await else {
            reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        };
        let details = serde_json::json!({"host": host, "port": port});
        if !live.allow_forwarding {
            let _ = self
                .fe
                .cfg
                .audit
                .emit(live.event(Kind::SshForwardDenied).details(details))
                .await;
            reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        }
        let Some(slot) = live.slot(self.fe.cfg.max_channels) else {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        match live
            .upstream
            .channel_open_direct_tcpip(host, port, orig_addr, orig_port)
            .await
        {
            Ok(up) => {
                let _ = self
                    .fe
                    .cfg
                    .audit
                    .emit(live.event(Kind::SshForward).details(details))
                    .await;
                reply.accept().await;
                let ctx = self.ctx(&live, slot, session);
                tokio::spawn(relay::forward_channel(ctx, channel, up));
            }
            Err(e) => {
                tracing::debug!(error = %e, "upstream refused a direct-tcpip channel");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // Remote forwarding (`ssh -R`) would open a listener on the target for the user: refused.
        Ok(false)
    }
}
