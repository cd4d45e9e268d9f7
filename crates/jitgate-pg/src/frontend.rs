//! One client connection from accept to close: TLS negotiation, startup, token authentication,
//! grant check, upstream login with injected credentials, then the relay, and the bookkeeping
//! when it ends (upstream query cancelled on a kill, session ended in the registry and audit).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dashmap::DashMap;
use jitgate_audit::{AuditSink, Event, Kind};
use jitgate_core::catalog::{READ_ONLY, READ_WRITE, Resource};
use jitgate_core::config::schema::{ResourceKind, UpstreamTlsMode};
use jitgate_core::sessions::new_session_id;
use jitgate_core::{Admission, AuthFailure, Gatekeeper, KillReason, SessionInfo, SessionRefused, Want};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::classify::Classifier;
use crate::io::{Stream, read_message};
use crate::protocol::{self, MAX_STARTUP, Severity, Startup};
use crate::relay::{self, End, RelayCtx};
use crate::scram::SaltCache;
use crate::upstream::{self, Target, UpstreamError};

/// Front-end settings.
#[derive(Clone)]
pub struct PgConfig {
    /// TLS for clients.
    pub tls: Arc<rustls::ServerConfig>,
    /// Accept plaintext clients (loopback tests only).
    pub allow_plaintext: bool,
    /// Startup + auth deadline.
    pub startup_timeout: Duration,
    /// Connection limit.
    pub max_connections: usize,
    /// Largest client message.
    pub max_message: usize,
    /// Audit text bound.
    pub max_text: usize,
    /// Audit sink.
    pub audit: AuditSink,
    /// `[audit] statements`.
    pub audit_statements: bool,
    /// `[postgres] max_scram_iterations`.
    pub max_scram_iterations: u32,
}

#[derive(Clone)]
struct CancelTarget {
    target: Target,
    pid: i32,
    key: i32,
}

/// The cancel key the gateway gives a client: its own process id and secret, 4 bytes for
/// protocol 3.0 and 32 for 3.2 (PostgreSQL 18's length), mapped to the upstream's key.
type CancelKey = (i32, Vec<u8>);

/// The Postgres front end.
pub struct PgFrontend<G: Gatekeeper> {
    gk: Arc<G>,
    cfg: PgConfig,
    acceptor: TlsAcceptor,
    classifier: Arc<Classifier>,
    salts: SaltCache,
    cancels: DashMap<CancelKey, CancelTarget>,
    upstream_tls: DashMap<String, Arc<rustls::ClientConfig>>,
    slots: Arc<tokio::sync::Semaphore>,
    /// Upstream cancels after kills in flight at once.
    kill_cancels: Arc<tokio::sync::Semaphore>,
    /// Read-only credentials found to be plain roles ("resource|user" → when), re-checked
    /// after [`ROLE_CHECK_TTL`].
    role_checks: DashMap<String, std::time::Instant>,
    /// Fast-path function names, for the audit.
    function_names: Arc<crate::fastpath::FunctionNames>,
}

/// How long a read-only credential's privilege check is trusted.
const ROLE_CHECK_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// The privilege check of a read-only credential, run on its session before the client is in.
const ROLE_CHECK_SQL: &str = "SELECT r.rolsuper, pg_has_role(current_user, 'pg_execute_server_program', 'USAGE'), \
     pg_has_role(current_user, 'pg_write_server_files', 'USAGE'), current_setting('default_transaction_read_only'), \
     (SELECT count(*) FROM pg_user_mappings m WHERE m.umuser IN (r.oid, 0)) \
     FROM pg_roles r WHERE r.rolname = current_user";

/// What the startup phase produced.
enum Started {
    Session(Box<Ready>, Stream),
    Done,
}

struct Ready {
    upstream: upstream::Upstream,
    info: SessionInfo,
    read_only: bool,
    target: Target,
    our_key: CancelKey,
    /// Bytes the client pipelined after its PasswordMessage.
    client_leftover: BytesMut,
    /// The upstream role the session runs as.
    upstream_user: String,
    /// Names fast-path function OIDs for the audit.
    functions: Arc<crate::fastpath::Resolver>,
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
    let get = |k: &str| params.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    let Some(user) = get("user").filter(|u| !u.is_empty()) else {
        return Err(LoginError::Refused(refuse(
            "28000",
            "no user name given",
            Some("set user to your identity, e.g. user=alice@example.com".into()),
            "no_user",
        )));
    };
    let Some(db) = get("database").filter(|d| !d.is_empty()) else {
        return Err(LoginError::Refused(refuse(
            "3D000",
            "no database given: name the resource as the database",
            Some("e.g. dbname=prod-db (or prod-db/otherdb)".into()),
            "no_database",
        )));
    };
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
    /// Build the front end.
    pub fn new(gk: Arc<G>, cfg: PgConfig) -> Arc<Self> {
        let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections));
        let salts = SaltCache::with_max_iterations(cfg.max_scram_iterations);
        Arc::new(Self {
            gk,
            acceptor: TlsAcceptor::from(cfg.tls.clone()),
            cfg,
            classifier: Arc::new(Classifier::new()),
            salts,
            cancels: DashMap::new(),
            upstream_tls: DashMap::new(),
            slots,
            kill_cancels: Arc::new(tokio::sync::Semaphore::new(8)),
            role_checks: DashMap::new(),
            function_names: Arc::default(),
        })
    }

    /// Accept connections until `stop`.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "postgres accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = stop.cancelled() => return,
            };
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                let me = self.clone();
                tokio::spawn(async move { me.reject_busy(tcp).await });
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let me = self.clone();
            tokio::spawn(async move {
                me.connection(tcp, peer).await;
                drop(permit);
            });
        }
    }

    async fn reject_busy(&self, mut tcp: TcpStream) {
        let mut b = BytesMut::new();
        protocol::error_response(
            &mut b,
            Severity::Fatal,
            "53300",
            "jitgate: too many connections",
            Some("try again later"),
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(&b)).await;
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let started = tokio::time::timeout(self.cfg.startup_timeout, self.startup(tcp, peer)).await;
        let ready = match started {
            Err(_) => {
                self.gk
                    .metrics()
                    .auth_failures_total
                    .with_label_values(&["postgres", "timeout"])
                    .inc();
                tracing::debug!(%peer, "postgres startup timed out");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "postgres startup failed");
                return;
            }
            Ok(Ok(Started::Done)) => return,
            Ok(Ok(Started::Session(r, client))) => (*r, client),
        };
        self.run_session(ready.0, ready.1).await;
    }

    async fn startup(&self, mut tcp: TcpStream, peer: SocketAddr) -> std::io::Result<Started> {
        // Direct TLS (PostgreSQL 17 `sslnegotiation=direct`): the first byte is a TLS record.
        let mut first = [0u8; 1];
        let direct = tcp.peek(&mut first).await? == 1 && first[0] == 0x16;
        let mut client: Stream;
        if direct {
            client = self.acceptor.accept(tcp).await?.into();
        } else {
            loop {
                let body = match read_startup(&mut tcp).await {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        send_error(&mut tcp, "08P01", &format!("invalid startup packet: {e}"), None).await;
                        return Ok(Started::Done);
                    }
                    Err(e) => return Err(e),
                };
                match protocol::parse_startup(&body) {
                    Ok(Startup::Ssl) => {
                        tcp.write_all(b"S").await?;
                        client = self.acceptor.accept(tcp).await?.into();
                        break;
                    }
                    Ok(Startup::GssEnc) => tcp.write_all(b"N").await?,
                    Ok(Startup::Cancel { pid, key }) => {
                        self.cancel(pid, key).await;
                        return Ok(Started::Done);
                    }
                    Ok(Startup::Start { version, params }) => {
                        let mut c: Stream = tcp.into();
                        return self.login(&mut c, version, params, false, peer).await.map(|r| match r {
                            Some(ready) => Started::Session(Box::new(ready), c),
                            None => Started::Done,
                        });
                    }
                    Err(e) => {
                        send_error(&mut tcp, "08P01", &format!("invalid startup packet: {e}"), None).await;
                        return Ok(Started::Done);
                    }
                }
            }
        }
        // After TLS: the startup message (a cancel over TLS is also possible).
        let body = read_startup(&mut client).await?;
        match protocol::parse_startup(&body) {
            Ok(Startup::Start { version, params }) => {
                let r = self.login(&mut client, version, params, true, peer).await?;
                Ok(match r {
                    Some(ready) => Started::Session(Box::new(ready), client),
                    None => Started::Done,
                })
            }
            Ok(Startup::Cancel { pid, key }) => {
                self.cancel(pid, key).await;
                // libpq 17+ (encrypted cancel) waits for a clean TLS close, as PostgreSQL gives.
                let _ = client.shutdown().await;
                Ok(Started::Done)
            }
            Ok(_) | Err(_) => {
                send_error(
                    &mut client,
                    "08P01",
                    "invalid startup packet after TLS negotiation",
                    None,
                )
                .await;
                Ok(Started::Done)
            }
        }
    }

    /// Authenticate, check the grant, log in upstream. `Ok(None)`: refused (already told).
    async fn login(
        &self,
        client: &mut Stream,
        version: i32,
        params: Vec<(String, String)>,
        tls: bool,
        peer: SocketAddr,
    ) -> std::io::Result<Option<Ready>> {
        match self.login_inner(client, version, params, tls, peer).await {
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
                let _ = self.cfg.audit.emit(Event::new(Kind::AuthUnavailable, jiff::Timestamp::now()).actor(user).resource(resource_name)
                    .details(serde_json::json!({"protocol": "postgres", "client": peer.to_string(), "reason": message}))).await;
                Err(LoginError::Refused(refuse(
                    "57P03",
                    message,
                    Some("the gateway could not check your token; this is not a wrong password".into()),
                    "unavailable",
                )))
            }
            _ => {
                let _ = self.cfg.audit.emit(Event::new(Kind::AuthFailed, jiff::Timestamp::now()).actor(user).resource(resource_name)
                    .details(serde_json::json!({"protocol": "postgres", "client": peer.to_string(), "reason": "invalid token for this user"}))).await;
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

    async fn login_inner(
        &self,
        client: &mut Stream,
        version: i32,
        params: Vec<(String, String)>,
        tls: bool,
        peer: SocketAddr,
    ) -> Result<Ready, LoginError> {
        let (spoken, params, out) = self.negotiate(version, params, tls)?;
        let (user, resource_name, dbname) = names(&params)?;
        let (token, client_leftover) = read_password(client, out).await?;
        let principal = self.authenticated_as(&token, &user, &resource_name, peer).await?;

        let cat = self.gk.catalog();
        let Some(res) = cat
            .resources
            .get(&resource_name)
            .filter(|r| r.kind == ResourceKind::Postgres)
        else {
            return Err(LoginError::Refused(refuse(
                "3D000",
                format!("resource \"{resource_name}\" does not exist or is not a Postgres resource"),
                Some("`jitgate resources` lists what you can request".into()),
                "unknown_resource",
            )));
        };
        // Read-write when the holder has it, else read-only.
        let grant = self
            .gk
            .find_grant(&principal.name, &res.name, Want::FirstOf(&[READ_WRITE, READ_ONLY]))
            .await
            .map_err(|r| {
                refuse(
                    "57P03",
                    r.message(),
                    Some("operators: see the gateway log".into()),
                    "unavailable",
                )
            })?;
        let Some(grant) = grant else {
            return Err(LoginError::Refused(refuse(
                "28000",
                format!("no active access grant for {} on {}", principal.name, res.name),
                Some(format!(
                    "request one: jitgate request {} --for 1h --reason \"...\" (add --access read-write to write)",
                    res.name
                )),
                "no_grant",
            )));
        };
        let Some(cred) = res.credentials.get(&grant.access) else {
            return Err(LoginError::Refused(refuse(
                "28000",
                format!("{} offers no {} credentials", res.name, grant.access),
                None,
                "no_credentials",
            )));
        };
        let password = match cred.password.as_ref().map(|p| p.resolve()).transpose() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(resource = %res.name, error = %e, "upstream password unavailable");
                return Err(LoginError::Refused(refuse(
                    "08006",
                    format!(
                        "jitgate cannot log in to {}: its credentials are not available on the gateway",
                        res.name
                    ),
                    Some("operators: see the gateway log".into()),
                    "upstream_credentials",
                )));
            }
        };
        let target = self.target(res).map_err(|e| {
            tracing::error!(resource = %res.name, error = %e, "upstream TLS configuration");
            LoginError::Refused(refuse(
                "08006",
                format!("jitgate cannot reach {}: TLS misconfiguration", res.name),
                Some("operators: see the gateway log".into()),
                "upstream_tls",
            ))
        })?;
        let read_only = grant.access == READ_ONLY;
        let mut passthrough: Vec<(String, String)> = params
            .iter()
            .filter(|(k, _)| {
                matches!(
                    k.as_str(),
                    "application_name"
                        | "DateStyle"
                        | "TimeZone"
                        | "extra_float_digits"
                        | "search_path"
                        | "IntervalStyle"
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
        let database = dbname.or_else(|| res.database.clone());
        let mut up = match upstream::connect(
            &target,
            &cred.user,
            password.as_deref(),
            database.as_deref(),
            &passthrough,
            &self.salts,
        )
        .await
        {
            Ok(u) => u,
            Err(UpstreamError::Server(code, msg)) => {
                return Err(LoginError::Refused(Refuse {
                    code: leak(code),
                    message: msg,
                    hint: None,
                    metric: "upstream_error",
                }));
            }
            Err(e) => {
                tracing::error!(resource = %res.name, error = %e, detail = ?e, "upstream login failed");
                let msg = match &e {
                    UpstreamError::Auth(_) => format!(
                        "jitgate could not log in to {}: the database refused the gateway's credentials",
                        res.name
                    ),
                    other => format!("jitgate could not reach {}: {other}", res.name),
                };
                return Err(LoginError::Refused(refuse(
                    "08006",
                    msg,
                    Some("this is a gateway configuration problem; operators: see the gateway log".into()),
                    "upstream_login",
                )));
            }
        };
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
        let secret: Vec<u8> = if spoken >= protocol::PROTOCOL_3_2 {
            rand::random::<[u8; 32]>().to_vec()
        } else {
            rand::random::<[u8; 4]>().to_vec()
        };
        let our_key = (rand::random::<i32>() & 0x7fff_ffff, secret);
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
            our_key,
            client_leftover,
            upstream_user: cred.user.clone(),
            functions,
        })
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

    async fn cancel(&self, pid: i32, key: Vec<u8>) {
        let Some(t) = self.cancels.get(&(pid, key)).map(|c| c.clone()) else {
            tracing::debug!("cancel request with an unknown key ignored");
            return;
        };
        if let Err(e) = upstream::cancel(&t.target, t.pid, t.key).await {
            tracing::warn!(error = %e, "forwarding a cancel request failed");
        }
    }

    async fn run_session(&self, r: Ready, mut client: Stream) {
        let Ready {
            upstream,
            info,
            read_only,
            target,
            our_key,
            client_leftover,
            upstream_user,
            functions,
        } = r;
        // Admitted (registered, re-checked, recorded) before the client is told it is in.
        let guard = match self.gk.open_session(info.clone()).await {
            Ok(g) => g,
            Err(refused) => {
                let (code, hint) = match &refused {
                    SessionRefused::GrantEnded(_) => ("57P01", None),
                    SessionRefused::StoreUnavailable(_) => ("57P03", Some("operators: see the gateway log")),
                    SessionRefused::AuditUnavailable(_) => ("58030", Some("operators: see the gateway log")),
                };
                send_error(&mut client, code, &refused.message(), hint).await;
                return;
            }
        };
        let mut hello = BytesMut::new();
        protocol::auth_ok(&mut hello);
        for (k, v) in &upstream.params {
            protocol::parameter_status(&mut hello, k, v);
        }
        protocol::backend_key(&mut hello, our_key.0, &our_key.1);
        protocol::ready(&mut hello, b'I');
        if client.write_all(&hello).await.is_err() {
            self.gk.session_ended(&info, "error", "client went away", None).await;
            return;
        }
        self.cancels.insert(
            our_key.clone(),
            CancelTarget {
                target: target.clone(),
                pid: upstream.pid,
                key: upstream.key,
            },
        );
        tracing::info!(session_id = %info.id, identity = %info.identity, resource = %info.resource, access = %info.access, grant_id = info.grant_id, "postgres session started");
        let ctx = RelayCtx {
            guard,
            read_only,
            classifier: self.classifier.clone(),
            audit: self.cfg.audit.clone(),
            metrics: self.gk.metrics().clone(),
            max_text: self.cfg.max_text,
            max_message: self.cfg.max_message,
            audit_statements: self.cfg.audit_statements,
            upstream_user,
            functions: (!read_only).then_some(functions),
            refusal_hint: format!(
                "this session runs under a read-only grant; ask for write access: jitgate request {} --access read-write --reason \"...\"",
                info.resource
            ),
        };
        let end = relay::run(ctx, client, upstream.io, upstream.leftover, client_leftover).await;
        self.cancels.remove(&our_key);
        let (outcome, reason) = match &end {
            End::Client => ("ok".to_string(), "client disconnected".to_string()),
            End::Server => (
                "server_closed".to_string(),
                "the database closed the connection".to_string(),
            ),
            End::Killed(_) | End::Breach(_) | End::Violation(_) => {
                // Interrupt whatever the backend is running, so it exits now rather than at its
                // next write; the socket is already closed behind it. In the background and a
                // few at a time: when a grant held by hundreds of sessions ends, the goodbyes go
                // out first and the cancel connections (a backend fork each) do not crowd them.
                let (pid, key, permits) = (upstream.pid, upstream.key, self.kill_cancels.clone());
                tokio::spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    if let Err(e) = upstream::cancel(&target, pid, key).await {
                        tracing::warn!(error = %e, "cancelling the upstream query after a kill failed");
                    }
                });
                match &end {
                    End::Killed(k) => (k.label().to_string(), k.message(&info.resource)),
                    End::Breach(why) => ("breach".to_string(), why.clone()),
                    End::Violation(why) => ("protocol_violation".to_string(), why.clone()),
                    _ => ("error".to_string(), String::new()),
                }
            }
            End::Error(e) => ("error".to_string(), e.clone()),
        };
        if let End::Killed(KillReason::Expired { at }) = &end {
            let lag = jiff::Timestamp::now().duration_since(*at).as_secs_f64().max(0.0);
            tracing::info!(session_id = %info.id, lag_ms = lag * 1000.0, "postgres session killed at grant expiry");
        }
        tracing::info!(session_id = %info.id, outcome = %outcome, reason = %reason, "postgres session ended");
        self.gk.session_ended(&info, &outcome, &reason, None).await;
    }
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

/// Read one startup-phase packet (length-prefixed, no tag), bounded; `InvalidData` when its
/// length is out of range.
pub async fn read_startup<R: tokio::io::AsyncRead + Unpin + ?Sized>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = i32::from_be_bytes(len);
    if !(8..=i32::try_from(MAX_STARTUP).unwrap_or(10_000)).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("startup packet length {len} out of range"),
        ));
    }
    let mut body = vec![0u8; usize::try_from(len - 4).unwrap_or(0)];
    r.read_exact(&mut body).await?;
    Ok(body)
}

async fn send_error<W: tokio::io::AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    code: &str,
    message: &str,
    hint: Option<&str>,
) {
    let mut b = BytesMut::new();
    protocol::error_response(&mut b, Severity::Fatal, code, message, hint);
    let _ = w.write_all(&b).await;
    let _ = w.shutdown().await;
}
