//! One client connection from accept to close: TLS negotiation, startup, token authentication,
//! grant check, upstream login with injected credentials, then the relay, and the bookkeeping
//! when it ends (upstream query cancelled on a kill, session ended in the registry and audit).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dashmap::DashMap;
use jitgate_audit::AuditSink;
use jitgate_core::Gatekeeper;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::classify::Classifier;
use crate::io::Stream;
use crate::protocol::{self, MAX_STARTUP, Severity, Startup};
use crate::scram::SaltCache;
use crate::upstream::{self, Target};
use login::Started;

mod login;
mod session;
mod wait;

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
    /// after [`login::ROLE_CHECK_TTL`].
    role_checks: DashMap<String, std::time::Instant>,
    /// Fast-path function names, for the audit.
    function_names: Arc<crate::fastpath::FunctionNames>,
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
        while let Some((tcp, peer)) = jitgate_core::frontend::accept(&listener, &stop, "postgres").await {
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
            Ok(Ok(Started::Wait(aw, client))) => match self.wait_on_connect(aw.0, aw.1, client).await {
                Some(r) => r,
                None => return,
            },
        };
        self.run_session(ready.0, ready.1).await;
    }

    async fn startup(&self, mut tcp: TcpStream, peer: SocketAddr) -> std::io::Result<Started<G>> {
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
                        let r = self.login(&mut c, version, params, false, peer).await?;
                        return Ok(started(r, c));
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
                Ok(started(r, client))
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

    async fn cancel(&self, pid: i32, key: Vec<u8>) {
        let Some(t) = self.cancels.get(&(pid, key)).map(|c| c.clone()) else {
            tracing::debug!("cancel request with an unknown key ignored");
            return;
        };
        if let Err(e) = upstream::cancel(&t.target, t.pid, t.key).await {
            tracing::warn!(error = %e, "forwarding a cancel request failed");
        }
    }
}

fn started<G: Gatekeeper>(r: Option<login::Login<G>>, client: Stream) -> Started<G> {
    match r {
        Some(login::Login::Ready(ready)) => Started::Session(ready, client),
        Some(login::Login::Wait(aw)) => Started::Wait(aw, client),
        None => Started::Done,
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
