//! The per-connection russh handler: authentication (identity keys, gateway certificates),
//! the target from the user name, the grant, the upstream login, and channels handed to the
//! relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jitgate_audit::{Event, Kind};
use jitgate_core::catalog::Resource;
use jitgate_core::config::schema::ResourceKind;
use jitgate_core::model::Principal;
use jitgate_core::sessions::new_session_id;
use jitgate_core::{Admission, Gatekeeper, SessionInfo, Want};
use russh::keys::Certificate;
use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelOpenFailure, Disconnect};
use tokio_util::sync::CancellationToken;

use super::{ConnShared, SshFrontend};
use crate::conn::{self, ChannelSlot, Live, OpenChannels, UpstreamEnd};
use crate::keys::{self};
use crate::relay::{self, ChanCtx};
use crate::target::{self, TargetName};
use crate::upstream::{self, Credential, Upstream, UpstreamError};

impl Live {
    /// End the session: let killed channels finish, close the upstream, record the end.
    pub(super) async fn finish<G: Gatekeeper>(&self, fe: &SshFrontend<G>, result: Result<(), String>) {
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
        fe.gk.session_ended(info, &outcome, &reason, upstream_end).await;
    }
}

/// Per-connection russh handler.
pub(super) struct Conn<G: Gatekeeper> {
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
    /// No grant: a request on connect may ask for one.
    NoGrant(NoGrant),
}

/// Why a connection's target could not be reached.
pub(super) enum NoGo {
    Refused(String),
    NoGrant(NoGrant),
}

/// A target the caller holds no grant for.
pub(super) struct NoGrant {
    pub(super) resource: String,
    pub(super) login: String,
    /// The refusal, when nothing is asked.
    pub(super) message: String,
    /// `LOGIN@RESOURCE+DURATION`'s duration.
    pub(super) duration: Option<jitgate_core::HumanDuration>,
}

/// Resolves a connection's target, grant and upstream: the handler's first channel, and a
/// request on connect's task once approved.
pub(super) struct Connector<G: Gatekeeper> {
    pub(super) fe: Arc<SshFrontend<G>>,
    pub(super) peer: SocketAddr,
    pub(super) shared: Arc<ConnShared>,
}

impl<G: Gatekeeper> Connector<G> {
    /// The connection's live session, when a channel has opened it already.
    pub(super) fn live(&self) -> Option<Arc<Live>> {
        self.shared.live.lock().ok().and_then(|g| g.clone())
    }

    /// Keep `live` as the connection's session and watch its kill switch.
    pub(super) fn install(&self, live: &Arc<Live>, server: server::Handle) {
        if let Ok(mut g) = self.shared.live.lock() {
            *g = Some(live.clone());
        }
        tokio::spawn(conn::watch(live.clone(), server));
    }
}

impl<G: Gatekeeper> Conn<G> {
    pub(super) fn new(fe: Arc<SshFrontend<G>>, peer: SocketAddr, shared: Arc<ConnShared>) -> Self {
        Self {
            fe,
            peer,
            shared,
            principal: None,
            user: String::new(),
            failures: Vec::new(),
        }
    }

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
            let ev = Event::new(Kind::AuthFailed, jiff::Timestamp::now()).actor(user).detail(
                jitgate_audit::details::AuthFailed {
                    protocol: "ssh",
                    client: &self.peer.to_string(),
                    reason,
                },
            );
            let audit = self.fe.cfg.audit.clone();
            tokio::spawn(async move {
                let _ = audit.emit(ev).await;
            });
        }
        self.failures.push(reason);
    }

    fn connector(&self) -> Connector<G> {
        Connector {
            fe: self.fe.clone(),
            peer: self.peer,
            shared: self.shared.clone(),
        }
    }

    /// Resolve target, grant and upstream once per connection.
    async fn ready(&mut self, user_target: &str, server: server::Handle) -> Ready {
        let c = self.connector();
        if let Some(live) = c.live() {
            return Ready::Live(live);
        }
        let Some(principal) = self.principal.clone() else {
            return Ready::Refused("not authenticated".into());
        };
        match c.connect(&principal, user_target).await {
            Ok(live) => {
                c.install(&live, server);
                Ready::Live(live)
            }
            Err(NoGo::Refused(msg)) => Ready::Refused(msg),
            Err(NoGo::NoGrant(n)) => Ready::NoGrant(n),
        }
    }
}

impl<G: Gatekeeper> Connector<G> {
    pub(super) async fn connect(&self, principal: &Principal, user_target: &str) -> Result<Arc<Live>, NoGo> {
        let fe = self.fe.clone();
        let Some(TargetName {
            login,
            resource,
            duration,
        }) = target::parse(user_target)
        else {
            return Err(NoGo::Refused(format!(
                "`{user_target}` is not a target: connect as LOGIN@RESOURCE or RESOURCE (ssh -p PORT ubuntu@web-1@GATEWAY)"
            )));
        };
        let cat = fe.gk.catalog();
        let Some(res) = cat.resources.get(&resource).filter(|r| r.kind == ResourceKind::Ssh) else {
            return Err(NoGo::Refused(format!(
                "resource {resource} does not exist or is not an SSH resource; `jitgate resources` lists them"
            )));
        };
        let login = match login {
            Some(l) => l,
            None => res.default_access().unwrap_or_default().to_string(),
        };
        if !res.access_levels.contains(&login) {
            return Err(NoGo::Refused(format!(
                "login {login} is not offered by {}; its logins: {}",
                res.name,
                res.access_levels.join(", ")
            )));
        }
        let grant = fe
            .gk
            .find_grant(&principal.name, &res.name, Want::Exactly(&login))
            .await
            .map_err(|r| NoGo::Refused(r.message()))?;
        let Some(grant) = grant else {
            fe.gk
                .metrics()
                .auth_failures_total
                .with_label_values(&["ssh", "no_grant"])
                .inc();
            let now = fe.gk.enforcer().clock().now();
            if let Some(g) = fe
                .gk
                .enforcer()
                .grants
                .upcoming(&principal.name, &res.name, Some(&login), now)
            {
                return Err(NoGo::Refused(g.not_yet(now)));
            }
            return Err(NoGo::NoGrant(NoGrant {
                message: format!(
                    "no active access grant for {} as {login} on {}; request one: jitgate request {} --access {login} --for 1h --reason \"...\"",
                    principal.name, res.name, res.name
                ),
                resource: res.name.clone(),
                login,
                duration,
            }));
        };
        let allow_forwarding = cat
            .policies
            .iter()
            .find(|p| p.name == grant.policy)
            .is_some_and(|p| p.allow_port_forwarding);
        let upstream = self
            .login_upstream(res, &login, &principal.name)
            .await
            .map_err(NoGo::Refused)?;
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
        let guard = fe
            .gk
            .open_session(info.clone())
            .await
            .map_err(|r| NoGo::Refused(r.message()))?;
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
                        .detail(jitgate_audit::details::HostKeyMismatch {
                            address: &res.address,
                            presented,
                            why: why.to_string(),
                        });
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

    pub(super) fn ctx(&self, live: &Arc<Live>, slot: ChannelSlot, server: server::Handle) -> ChanCtx {
        ChanCtx {
            live: live.clone(),
            _slot: slot,
            server,
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
                self.principal = Some(Principal::new(identity, groups));
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
            Ready::NoGrant(n) => {
                reply.accept().await;
                let wait = self.fe.gk.catalog().wait_on_connect;
                match self.principal.clone() {
                    Some(principal) if wait.secs() > 0 => {
                        let asking = super::ask::Asking {
                            c: self.connector(),
                            principal,
                            user,
                            no_grant: n,
                            server: session.handle(),
                            limit: Duration::from_secs(wait.secs()),
                        };
                        tokio::spawn(asking.run(channel));
                    }
                    _ => {
                        tokio::spawn(relay::refuse(channel, session.handle(), n.message));
                    }
                }
            }
            Ready::Live(live) => {
                let Some(slot) = live.slot(self.fe.cfg.max_channels) else {
                    reply.reject(ChannelOpenFailure::ResourceShortage).await;
                    return Ok(());
                };
                match live.upstream.channel_open_session().await {
                    Ok(up) => {
                        reply.accept().await;
                        let ctx = self.connector().ctx(&live, slot, session.handle());
                        tokio::spawn(relay::session_channel(ctx, channel, up, Vec::new()));
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
        let details = jitgate_audit::details::Forward { host, port };
        if !live.allow_forwarding {
            let _ = self
                .fe
                .cfg
                .audit
                .emit(live.event(Kind::SshForwardDenied).detail(&details))
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
                    .emit(live.event(Kind::SshForward).detail(&details))
                    .await;
                reply.accept().await;
                let ctx = self.connector().ctx(&live, slot, session.handle());
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
