//! The login: negotiate, name the resource, read the token, authenticate, find the grant,
//! resolve the credential, log in upstream (and check a read-only credential), each step with
//! its own refusal. `login_inner` reads as the list of steps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use jitgate_audit::{Event, Kind};
use jitgate_core::catalog::{Catalog, Credential, READ_ONLY, READ_WRITE, Resource};
use jitgate_core::config::schema::{ResourceKind, UpstreamTlsMode};
use jitgate_core::onconnect::{Ask, AskError, Waiter};
use jitgate_core::sessions::new_session_id;
use jitgate_core::{Admission, AuthFailure, Gatekeeper, LiveGrant, SessionInfo, Want};
use tokio::io::AsyncWriteExt;

use super::{CancelKey, PgFrontend, send_error};
use crate::io::{Stream, read_message};
use crate::protocol::{self, MAX_STARTUP};
use crate::upstream::{self, Target, UpstreamError};

/// How long a read-only credential's privilege check is trusted.
pub(super) const ROLE_CHECK_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// The privilege check of a read-only credential, run on its session before the client is in.
const ROLE_CHECK_SQL: &str = "SELECT r.rolsuper, pg_has_role(current_user, 'pg_execute_server_program', 'USAGE'), \
     pg_has_role(current_user, 'pg_write_server_files', 'USAGE'), current_setting('default_transaction_read_only'), \
     (SELECT count(*) FROM pg_user_mappings m WHERE m.umuser IN (r.oid, 0)) \
     FROM pg_roles r WHERE r.rolname = current_user";

/// What the startup phase produced.
pub(super) enum Started<G: Gatekeeper> {
    Session(Box<Ready>, Stream),
    /// Authenticated without a grant, and a request on connect waits for its decision.
    Wait(Box<(Authed, Waiter<G>)>, Stream),
    Done,
}

/// What the login had established when it found no grant and made a request on connect.
pub(super) struct Authed {
    spoken: i32,
    params: Vec<(String, String)>,
    resource_name: String,
    dbname: Option<String>,
    principal: jitgate_core::model::Principal,
    pub(super) client_leftover: BytesMut,
    want_access: Option<String>,
    peer: SocketAddr,
}

/// What the login produced: a session ready to start, or a wait for a decision.
pub(super) enum Login<G: Gatekeeper> {
    Ready(Box<Ready>),
    Wait(Box<(Authed, Waiter<G>)>),
}

pub(super) struct Ready {
    pub(super) upstream: upstream::Upstream,
    pub(super) info: SessionInfo,
    pub(super) read_only: bool,
    pub(super) target: Target,
    pub(super) our_key: CancelKey,
    /// Bytes the client pipelined after its PasswordMessage.
    pub(super) client_leftover: BytesMut,
    /// The upstream role the session runs as.
    pub(super) upstream_user: String,
    /// Names fast-path function OIDs for the audit.
    pub(super) functions: Arc<crate::fastpath::Resolver>,
    /// AuthenticationOk was sent already (before a request on connect's wait).
    pub(super) greeted: bool,
    /// Lines for the client as NoticeResponses right after AuthenticationOk.
    pub(super) notices: Vec<String>,
}

/// A refusal sent to the client as an ErrorResponse.
struct Refuse {
    code: &'static str,
    message: String,
    hint: Option<String>,
    metric: &'static str,
}

/// The protocol version spoken, the startup parameters left, and what to send before asking
/// for the password (NegotiateProtocolVersion, when needed).
type Negotiated = (i32, Vec<(String, String)>, BytesMut);

/// Why a login did not produce a session: the client is told (a refusal, as an ErrorResponse),
/// or the connection broke (nothing to tell).
enum LoginError {
    Refused(Refuse),
    Io(std::io::Error),
}

impl From<Refuse> for LoginError {
    fn from(r: Refuse) -> Self {
        Self::Refused(r)
    }
}

impl From<std::io::Error> for LoginError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// Step 2: who (`user`) and what (`database` = `RESOURCE` or `RESOURCE/DBNAME`).
fn names(params: &[(String, String)]) -> Result<(String, String, Option<String>), LoginError> {
    let need = |k: &str, refusal: Refuse| {
        params
            .iter()
            .find(|(a, _)| a == k)
            .filter(|(_, v)| !v.is_empty())
            .map(|(_, v)| v.clone())
            .ok_or(LoginError::Refused(refusal))
    };
    let user = need(
        "user",
        refuse(
            "28000",
            "no user name given",
            Some("set user to your identity, e.g. user=alice@example.com".into()),
            "no_user",
        ),
    )?;
    let db = need(
        "database",
        refuse(
            "3D000",
            "no database given: name the resource as the database",
            Some("e.g. dbname=prod-db (or prod-db/otherdb)".into()),
            "no_database",
        ),
    )?;
    let (resource_name, dbname) = match db.split_once('/') {
        Some((r, d)) => (r.to_string(), Some(d.to_string())),
        None => (db.clone(), None),
    };
    Ok((user, resource_name, dbname))
}

/// Step 3a: ask for the password (the gateway token) and read it; whatever the client pipelined
/// after it is its first traffic, returned to be replayed.
async fn read_password(client: &mut Stream, mut out: BytesMut) -> Result<(String, BytesMut), LoginError> {
    // Password = gateway token.
    protocol::auth_cleartext(&mut out);
    client.write_all(&out).await?;
    let mut buf = BytesMut::new();
    let (tag, body) = read_message(client, &mut buf, MAX_STARTUP)
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    if tag != b'p' {
        return Err(LoginError::Refused(refuse(
            "08P01",
            "expected a password message",
            None,
            "protocol",
        )));
    }
    let token = protocol::cstr(&body).map_or("", |x| x.0);
    // Whatever the client pipelined after its password is its first traffic: kept.
    let client_leftover = buf;
    Ok((token.to_string(), client_leftover))
}

fn refuse(code: &'static str, message: impl Into<String>, hint: Option<String>, metric: &'static str) -> Refuse {
    Refuse {
        code,
        message: message.into(),
        hint,
        metric,
    }
}

impl<G: Gatekeeper> PgFrontend<G> {
    /// Authenticate, check the grant, log in upstream. `Ok(None)`: refused (already told).
    pub(super) async fn login(
        &self,
        client: &mut Stream,
        version: i32,
        params: Vec<(String, String)>,
        tls: bool,
        peer: SocketAddr,
    ) -> std::io::Result<Option<Login<G>>> {
        let r = self.login_inner(client, version, params, tls, peer).await;
        self.told(client, r).await
    }

    /// A login step's result: a refusal is counted and sent to the client.
    async fn told<T>(&self, client: &mut Stream, r: Result<T, LoginError>) -> std::io::Result<Option<T>> {
        match r {
            Ok(r) => Ok(Some(r)),
            Err(LoginError::Refused(r)) => {
                self.gk
                    .metrics()
                    .auth_failures_total
                    .with_label_values(&["postgres", r.metric])
                    .inc();
                send_error(client, r.code, &r.message, r.hint.as_deref()).await;
                Ok(None)
            }
            Err(LoginError::Io(e)) => Err(e),
        }
    }

    /// The login after a request on connect was approved: the grant, then the upstream,
    /// under the startup deadline again.
    pub(super) async fn login_after_wait(&self, client: &mut Stream, a: Authed) -> std::io::Result<Option<Ready>> {
        let r = async {
            let grant = self
                .grant_for(&a.principal.name, &a.resource_name, a.want_access.as_deref())
                .await?
                .ok_or_else(|| {
                    refuse(
                        "28000",
                        format!(
                            "the request was approved but no grant for {} on {} is live now",
                            a.principal.name, a.resource_name
                        ),
                        None,
                        "no_grant",
                    )
                })?;
            let mut ready = self.open_upstream(a, grant).await?;
            ready.greeted = true;
            Ok(ready)
        }
        .await;
        self.told(client, r).await
    }

    /// Step 1: the protocol version, `_pq_.` options (answered with NegotiateProtocolVersion in
    /// `out`) and TLS. Returns the version spoken and the startup parameters left.
    fn negotiate(&self, version: i32, params: Vec<(String, String)>, tls: bool) -> Result<Negotiated, LoginError> {
        if version >> 16 != 3 {
            return Err(LoginError::Refused(refuse(
                "0A000",
                format!(
                    "unsupported frontend protocol {}.{}: jitgate speaks 3.0 to 3.2",
                    version >> 16,
                    version & 0xffff
                ),
                None,
                "protocol",
            )));
        }
        // Protocol options (`_pq_.name`) are for the protocol layer, here the gateway's: none is
        // supported, so they are named back in NegotiateProtocolVersion (never sent upstream),
        // as is a newer minor version than 3.2. The client then speaks what is answered.
        let (pq, params): (Vec<_>, Vec<_>) = params.into_iter().partition(|(k, _)| k.starts_with("_pq_."));
        let spoken = version.min(protocol::PROTOCOL_LATEST);
        let mut out = BytesMut::new();
        if version > protocol::PROTOCOL_LATEST || !pq.is_empty() {
            let names: Vec<String> = pq.into_iter().map(|(k, _)| k).collect();
            protocol::negotiate_protocol_version(&mut out, spoken, &names);
        }
        if !tls && !self.cfg.allow_plaintext {
            return Err(LoginError::Refused(refuse(
                "08P01",
                "jitgate requires TLS: the password is an access token",
                Some(
                    "connect over TLS that checks it is the gateway: sslmode=verify-full with the gateway's CA as sslrootcert; `jitgate pg-service` writes such entries (then psql service=NAME), `jitgate connect NAME` runs psql with them"
                        .into(),
                ),
                "plaintext",
            )));
        }
        Ok((spoken, params, out))
    }

    /// Step 3: the token names the user it claims to be. A store that cannot check it is said
    /// so (57P03, audited as `auth.unavailable`), never called a wrong password.
    async fn authenticated_as(
        &self,
        token: &str,
        user: &str,
        resource_name: &str,
        peer: SocketAddr,
    ) -> Result<jitgate_core::model::Principal, LoginError> {
        match self.gk.authenticate(token).await {
            Ok(p) if p.name == user => Ok(p),
            Err(AuthFailure::Unavailable(message)) => {
                self.audit_auth(Kind::AuthUnavailable, user, resource_name, peer, &message)
                    .await;
                Err(LoginError::Refused(refuse(
                    "57P03",
                    message,
                    Some("the gateway could not check your token; this is not a wrong password".into()),
                    "unavailable",
                )))
            }
            _ => {
                self.audit_auth(
                    Kind::AuthFailed,
                    user,
                    resource_name,
                    peer,
                    "invalid token for this user",
                )
                .await;
                Err(LoginError::Refused(refuse(
                    "28P01",
                    format!("password authentication failed for user \"{user}\""),
                    Some(
                        "the password is your jitgate token (`jitgate login`; machine identities use their token)"
                            .into(),
                    ),
                    "bad_token",
                )))
            }
        }
    }

    /// Audit a failed or impossible token check (`auth.failed`, `auth.unavailable`).
    async fn audit_auth(&self, kind: Kind, user: &str, resource: &str, peer: SocketAddr, reason: &str) {
        let ev = Event::new(kind, jiff::Timestamp::now())
            .actor(user)
            .resource(resource)
            .detail(jitgate_audit::details::AuthFailed {
                protocol: "postgres",
                client: &peer.to_string(),
                reason,
            });
        let _ = self.cfg.audit.emit(ev).await;
    }

    /// The steps of a login, in order; each refuses with its own SQLSTATE and hint.
    async fn login_inner(
        &self,
        client: &mut Stream,
        version: i32,
        params: Vec<(String, String)>,
        tls: bool,
        peer: SocketAddr,
    ) -> Result<Login<G>, LoginError> {
        let (spoken, params, out) = self.negotiate(version, params, tls)?;
        let (user, resource_name, dbname) = names(&params)?;
        let ask = asked_in(&params)?;
        let (token, client_leftover) = read_password(client, out).await?;
        let principal = self.authenticated_as(&token, &user, &resource_name, peer).await?;
        let cat = self.gk.catalog();
        let res = postgres_resource(&cat, &resource_name)?;
        let a = Authed {
            spoken,
            params,
            resource_name: res.name.clone(),
            dbname,
            principal,
            client_leftover,
            want_access: ask.access.clone(),
            peer,
        };
        if let Some(grant) = self
            .grant_for(&a.principal.name, &res.name, ask.access.as_deref())
            .await?
        {
            return Ok(Login::Ready(Box::new(self.open_upstream(a, grant).await?)));
        }
        let now = self.gk.enforcer().clock().now();
        if let Some(g) = self
            .gk
            .enforcer()
            .grants
            .upcoming(&a.principal.name, &res.name, ask.access.as_deref(), now)
        {
            return Err(LoginError::Refused(refuse(
                "28000",
                g.not_yet(now),
                Some("a scheduled grant admits sessions from its start; `jitgate grants` shows it".into()),
                "no_grant",
            )));
        }
        let wait = cat.wait_on_connect;
        if ask.reason.is_none() || wait.secs() == 0 {
            return Err(no_grant(&a.principal.name, &res.name, wait.secs() > 0));
        }
        self.ask_on_connect(a, &ask, std::time::Duration::from_secs(wait.secs()))
            .await
    }

    /// No grant, and the startup options asked for one: make the request. Approved at once
    /// (a rule): go on with the login; otherwise the connection waits.
    async fn ask_on_connect(&self, a: Authed, ask: &Ask, limit: std::time::Duration) -> Result<Login<G>, LoginError> {
        let started = Waiter::start(self.gk.clone(), a.principal.clone(), ask, &a.resource_name, limit).await;
        match started {
            Ok(Ok(w)) => Ok(Login::Wait(Box::new((a, w)))),
            Ok(Err(lines)) => {
                let grant = self
                    .grant_for(&a.principal.name, &a.resource_name, a.want_access.as_deref())
                    .await?
                    .ok_or_else(|| no_grant(&a.principal.name, &a.resource_name, true))?;
                let mut ready = self.open_upstream(a, grant).await?;
                ready.notices = lines;
                Ok(Login::Ready(Box::new(ready)))
            }
            Err(AskError::Refused(m)) => Err(LoginError::Refused(refuse(
                "28000",
                format!("jitgate could not request access to {}: {m}", a.resource_name),
                None,
                "request_refused",
            ))),
            Err(AskError::Unavailable(m)) => Err(LoginError::Refused(refuse(
                "57P03",
                m,
                Some("operators: see the gateway log".into()),
                "unavailable",
            ))),
        }
    }

    /// Steps 5 to 7, on a live grant: the credential, the upstream login (and the read-only
    /// credential's check), the session's description.
    async fn open_upstream(&self, a: Authed, grant: LiveGrant) -> Result<Ready, LoginError> {
        let Authed {
            spoken,
            params,
            resource_name,
            dbname,
            principal,
            client_leftover,
            peer,
            ..
        } = a;
        let cat = self.gk.catalog();
        let res = postgres_resource(&cat, &resource_name)?;
        let (cred, password) = credentials(res, &grant.access)?;
        let target = self.target(res).map_err(|e| {
            tracing::error!(resource = %res.name, error = %e, "upstream TLS configuration");
            refuse(
                "08006",
                format!("jitgate cannot reach {}: TLS misconfiguration", res.name),
                Some("operators: see the gateway log".into()),
                "upstream_tls",
            )
        })?;
        let read_only = grant.access == READ_ONLY;
        let database = database_for(res, dbname)?;
        let mut up = self
            .log_in_upstream(
                res,
                &target,
                &cred.user,
                password.as_deref(),
                database.as_deref(),
                &upstream_params(&params, read_only),
            )
            .await?;
        if read_only && let Err(why) = self.check_read_only_role(&mut up, res, &cred.user).await {
            tracing::error!(resource = %res.name, user = %cred.user, why = %why, "read-only credential refused");
            return Err(LoginError::Refused(refuse(
                "28000",
                format!("jitgate will not open a read-only session on {}: {why}", res.name),
                Some(format!(
                    "operators: the read-only credential must be a plain role, e.g. `CREATE ROLE {0} LOGIN NOSUPERUSER; GRANT pg_read_all_data TO {0};` and neither superuser nor a member of pg_execute_server_program / pg_write_server_files (see docs/postgres.md, \"The read-only credential\")",
                    cred.user
                )),
                "read_only_role",
            )));
        }
        let functions = Arc::new(crate::fastpath::Resolver {
            names: self.function_names.clone(),
            scope: format!("{}/{}", res.name, database.as_deref().unwrap_or("")).into(),
            target: target.clone(),
            user: cred.user.clone(),
            password,
            database,
            salts: self.salts.clone(),
            left: crate::fastpath::PER_SESSION.into(),
        });
        let info = SessionInfo {
            id: new_session_id(),
            protocol: "postgres".into(),
            identity: principal.name.clone(),
            resource: res.name.clone(),
            access: grant.access.clone(),
            grant_id: grant.id,
            client_addr: peer.to_string(),
            started_at: jiff::Timestamp::now(),
        };
        Ok(Ready {
            upstream: up,
            info,
            read_only,
            target,
            our_key: cancel_key(spoken),
            client_leftover,
            upstream_user: cred.user.clone(),
            functions,
            greeted: false,
            notices: Vec::new(),
        })
    }

    /// Step 4: the live grant: of the access asked for (`jitgate.access`), else read-write
    /// when the holder has it, else read-only.
    async fn grant_for(
        &self,
        identity: &str,
        resource: &str,
        access: Option<&str>,
    ) -> Result<Option<LiveGrant>, LoginError> {
        let want = match access {
            Some(a) => Want::Exactly(a),
            None => Want::FirstOf(&[READ_WRITE, READ_ONLY]),
        };
        self.gk.find_grant(identity, resource, want).await.map_err(|r| {
            LoginError::Refused(refuse(
                "57P03",
                r.message(),
                Some("operators: see the gateway log".into()),
                "unavailable",
            ))
        })
    }

    /// Step 6: log in to the database with the injected credentials. The server's own
    /// refusals pass through with their SQLSTATE; the rest is the gateway's problem (08006).
    async fn log_in_upstream(
        &self,
        res: &Resource,
        target: &Target,
        user: &str,
        password: Option<&str>,
        database: Option<&str>,
        params: &[(String, String)],
    ) -> Result<upstream::Upstream, LoginError> {
        match upstream::connect(target, user, password, database, params, &self.salts).await {
            Ok(u) => Ok(u),
            Err(UpstreamError::Server(code, msg)) => Err(LoginError::Refused(Refuse {
                code: leak(code),
                message: msg,
                hint: None,
                metric: "upstream_error",
            })),
            Err(e) => {
                tracing::error!(resource = %res.name, error = %e, detail = ?e, "upstream login failed");
                let msg = match &e {
                    UpstreamError::Auth(_) => format!(
                        "jitgate could not log in to {}: the database refused the gateway's credentials",
                        res.name
                    ),
                    other => format!("jitgate could not reach {}: {other}", res.name),
                };
                Err(LoginError::Refused(refuse(
                    "08006",
                    msg,
                    Some("this is a gateway configuration problem; operators: see the gateway log".into()),
                    "upstream_login",
                )))
            }
        }
    }

    /// A read-only credential must not be able to leave read-only mode or reach the server's
    /// files and programs: not a superuser, not a member of pg_execute_server_program or
    /// pg_write_server_files, and the session really read-only. Checked on the session itself
    /// (so nothing can change in between for a new credential) and trusted for a while.
    async fn check_read_only_role(
        &self,
        up: &mut upstream::Upstream,
        res: &Resource,
        user: &str,
    ) -> Result<(), String> {
        let key = format!("{}|{user}", res.name);
        if self.role_checks.get(&key).is_some_and(|t| t.elapsed() < ROLE_CHECK_TTL) {
            return Ok(());
        }
        let row = upstream::query_row(up, ROLE_CHECK_SQL)
            .await
            .map_err(|e| format!("checking the credential's privileges failed ({e})"))?;
        let col = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        if col(0) != "f" {
            return Err(format!("its read-only credential {user} is a superuser"));
        }
        if col(1) != "f" {
            return Err(format!(
                "its read-only credential {user} may run server programs (pg_execute_server_program)"
            ));
        }
        if col(2) != "f" {
            return Err(format!(
                "its read-only credential {user} may write server files (pg_write_server_files)"
            ));
        }
        if col(4) != "0" {
            return Err(format!(
                "its read-only credential {user} has user mappings to foreign servers (postgres_fdw and dblink would open read-write sessions elsewhere)"
            ));
        }
        if col(3) != "on" {
            return Err("the upstream session did not start read-only".into());
        }
        self.role_checks.insert(key, std::time::Instant::now());
        Ok(())
    }

    fn target(&self, res: &Resource) -> Result<Target, crate::tls::TlsError> {
        let tls = match &res.tls {
            None | Some((UpstreamTlsMode::Disable, _)) => None,
            Some((mode, ca)) => {
                let key = format!("{}|{mode:?}|{:?}", res.name, ca);
                let cfg = match self.upstream_tls.get(&key) {
                    Some(c) => c.clone(),
                    None => {
                        let c = match mode {
                            UpstreamTlsMode::VerifyFull => crate::tls::verify_full(ca.as_deref())?,
                            _ => crate::tls::require_only()?,
                        };
                        self.upstream_tls.insert(key, c.clone());
                        c
                    }
                };
                Some((*mode, cfg))
            }
        };
        Ok(Target {
            address: res.address.clone(),
            tls,
            timeout: Duration::from_secs(res.connect_timeout.secs().max(1)),
        })
    }
}

/// The refusal without a grant: how to request one, from the CLI or from here.
fn no_grant(identity: &str, resource: &str, on_connect: bool) -> LoginError {
    let here = if on_connect {
        ", or ask from here: PGOPTIONS=\"-c jitgate.reason='INC-123 why' -c jitgate.for=1h\" (add -c jitgate.access=read-write to write) and connect again; the connection waits for the decision".to_string()
    } else {
        String::new()
    };
    LoginError::Refused(refuse(
        "28000",
        format!("no active access grant for {identity} on {resource}"),
        Some(format!(
            "request one: jitgate request {resource} --for 1h --reason \"...\" (add --access read-write to write){here}"
        )),
        "no_grant",
    ))
}

/// Step 2b: what the startup `options` ask for (`-c jitgate.reason=...`), refused with the
/// fix when a `jitgate.` setting is not understood.
fn asked_in(params: &[(String, String)]) -> Result<Ask, LoginError> {
    let Some((_, options)) = params.iter().find(|(k, _)| k == "options") else {
        return Ok(Ask::default());
    };
    jitgate_core::onconnect::pg_ask(options).map_err(|m| LoginError::Refused(refuse("22023", m, None, "bad_options")))
}

/// Step 3b: the resource named as the database, if it is a Postgres resource.
fn postgres_resource<'c>(cat: &'c Catalog, name: &str) -> Result<&'c Resource, LoginError> {
    cat.resources
        .get(name)
        .filter(|r| r.kind == ResourceKind::Postgres)
        .ok_or_else(|| {
            LoginError::Refused(refuse(
                "3D000",
                format!("resource \"{name}\" does not exist or is not a Postgres resource"),
                Some("`jitgate resources` lists what you can request".into()),
                "unknown_resource",
            ))
        })
}

/// Step 5: the resource's credential for the granted access, with its password resolved.
fn credentials<'r>(res: &'r Resource, access: &str) -> Result<(&'r Credential, Option<String>), LoginError> {
    let Some(cred) = res.credentials.get(access) else {
        return Err(LoginError::Refused(refuse(
            "28000",
            format!("{} offers no {access} credentials", res.name),
            None,
            "no_credentials",
        )));
    };
    match cred.password.as_ref().map(|p| p.resolve()).transpose() {
        Ok(p) => Ok((cred, p)),
        Err(e) => {
            tracing::error!(resource = %res.name, error = %e, "upstream password unavailable");
            Err(LoginError::Refused(refuse(
                "08006",
                format!(
                    "jitgate cannot log in to {}: its credentials are not available on the gateway",
                    res.name
                ),
                Some("operators: see the gateway log".into()),
                "upstream_credentials",
            )))
        }
    }
}

/// Step 5b: the database asked for (`RESOURCE/DBNAME`) must be one the resource offers; none
/// means the resource's default.
fn database_for(res: &Resource, dbname: Option<String>) -> Result<Option<String>, LoginError> {
    if let Some(d) = &dbname
        && res.database.as_deref() != Some(d.as_str())
        && !res.databases.iter().any(|x| x == d)
    {
        return Err(LoginError::Refused(refuse(
            "3D000",
            format!("database \"{d}\" is not offered by resource {}", res.name),
            Some(format!(
                "connect to {} (its default database{}); operators list further databases in the resource's `databases = [...]`",
                res.name,
                res.database.as_deref().map(|x| format!(" {x}")).unwrap_or_default()
            )),
            "unknown_database",
        )));
    }
    Ok(dbname.or_else(|| res.database.clone()))
}

/// The startup parameters the upstream gets: the client's harmless ones, UTF8, and for a
/// read-only session the settings that make PostgreSQL itself refuse writes.
fn upstream_params(params: &[(String, String)], read_only: bool) -> Vec<(String, String)> {
    let mut passthrough: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "application_name" | "DateStyle" | "TimeZone" | "extra_float_digits" | "search_path" | "IntervalStyle"
            )
        })
        .cloned()
        .collect();
    // The gateway reads SQL as UTF-8, so the server must too (a client asking for another
    // encoding is told UTF8 in ParameterStatus, which drivers follow). A read-only session
    // starts read-only: PostgreSQL itself refuses writes, and `RESET ALL`/`DISCARD ALL`
    // return to these values.
    passthrough.push(("client_encoding".into(), "UTF8".into()));
    if read_only {
        passthrough.push((
            "options".into(),
            "-c default_transaction_read_only=on -c standard_conforming_strings=on".into(),
        ));
    }
    passthrough
}

/// The client's cancel key: a random process id and a secret of 4 bytes (protocol 3.0) or 32
/// (3.2, PostgreSQL 18's length).
fn cancel_key(spoken: i32) -> CancelKey {
    let secret: Vec<u8> = if spoken >= protocol::PROTOCOL_3_2 {
        rand::random::<[u8; 32]>().to_vec()
    } else {
        rand::random::<[u8; 4]>().to_vec()
    };
    (rand::random::<i32>() & 0x7fff_ffff, secret)
}

fn leak(code: String) -> &'static str {
    // SQLSTATEs passed through from the server; the set is small and fixed-size strings.
    match code.as_str() {
        "3D000" => "3D000",
        "53300" => "53300",
        "57P03" => "57P03",
        "42704" => "42704",
        _ => "08006",
    }
}
