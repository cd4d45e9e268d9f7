//! The gateway's own connection to the real database: TCP (with a connect timeout), TLS per
//! resource, the startup message, and password authentication as a client (SCRAM-SHA-256, md5,
//! cleartext, trust). The user never sees these credentials; errors that could reveal them are
//! replaced by a message for operators.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use jitgate_core::config::schema::UpstreamTlsMode;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::io::{ReadError, Stream, read_message};
use crate::protocol::{self, error_fields};
use crate::scram::{SaltCache, ScramClient, md5_password};

/// Where and how to reach an upstream.
#[derive(Clone)]
pub struct Target {
    /// `host:port`.
    pub address: String,
    /// TLS, if any: config and mode.
    pub tls: Option<(UpstreamTlsMode, Arc<ClientConfig>)>,
    /// Connect timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({}, tls={:?})", self.address, self.tls.as_ref().map(|t| t.0))
    }
}

/// Why the upstream could not be used.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed or timed out.
    #[error("cannot connect to the database at {0}: {1}")]
    Connect(String, String),
    /// TLS negotiation failed.
    #[error("TLS to the database failed: {0}")]
    Tls(String),
    /// The database refused the gateway's credentials (details logged, not shown).
    #[error("the database refused the gateway's credentials")]
    Auth(String),
    /// The database answered with an error (passed to the client).
    #[error("{1}")]
    Server(String, String),
    /// Protocol trouble.
    #[error("database protocol error: {0}")]
    Protocol(String),
}

impl From<ReadError> for UpstreamError {
    fn from(e: ReadError) -> Self {
        Self::Protocol(e.to_string())
    }
}

impl From<std::io::Error> for UpstreamError {
    fn from(e: std::io::Error) -> Self {
        Self::Protocol(e.to_string())
    }
}

/// A ready upstream session.
pub struct Upstream {
    /// The stream, past ReadyForQuery.
    pub io: Stream,
    /// ParameterStatus values to repeat to the client.
    pub params: Vec<(String, String)>,
    /// Upstream BackendKeyData.
    pub pid: i32,
    /// Upstream secret key.
    pub key: i32,
    /// Bytes read past ReadyForQuery (normally none).
    pub leftover: BytesMut,
}

/// Open a raw stream (TCP + TLS per target).
pub async fn open(t: &Target) -> Result<Stream, UpstreamError> {
    let tcp = tokio::time::timeout(t.timeout, TcpStream::connect(&t.address))
        .await
        .map_err(|_| UpstreamError::Connect(t.address.clone(), format!("timed out after {:?}", t.timeout)))?
        .map_err(|e| UpstreamError::Connect(t.address.clone(), e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let Some((mode, cfg)) = &t.tls else {
        return Ok(tcp.into());
    };
    if *mode == UpstreamTlsMode::Disable {
        return Ok(tcp.into());
    }
    let mut tcp = tcp;
    tcp.write_all(&ssl_request()).await?;
    let mut b = [0u8; 1];
    tcp.read_exact(&mut b).await?;
    if b[0] != b'S' {
        return Err(UpstreamError::Tls(format!(
            "the database at {} does not offer TLS but the resource requires it",
            t.address
        )));
    }
    let host = t.address.rsplit_once(':').map_or(t.address.as_str(), |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = crate::tls::server_name(host).map_err(|e| UpstreamError::Tls(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| UpstreamError::Tls(format!("{}: {e}", t.address)))?;
    Ok(tls.into())
}

fn ssl_request() -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&8i32.to_be_bytes());
    b[4..].copy_from_slice(&protocol::SSL_REQUEST.to_be_bytes());
    b
}

/// Connect and log in.
pub async fn connect(
    t: &Target,
    user: &str,
    password: Option<&str>,
    database: Option<&str>,
    extra: &[(String, String)],
    salts: &SaltCache,
) -> Result<Upstream, UpstreamError> {
    let io = open(t).await?;
    login(io, user, password, database, extra, salts).await
}

/// Log in on an open stream: the startup message, then whatever authentication the server asks
/// for (cleartext, md5, SCRAM-SHA-256), up to ReadyForQuery. Every server message is bounded
/// (1 MiB) and anything unexpected is an error, never a panic.
pub async fn login(
    mut io: Stream,
    user: &str,
    password: Option<&str>,
    database: Option<&str>,
    extra: &[(String, String)],
    salts: &SaltCache,
) -> Result<Upstream, UpstreamError> {
    let mut out = BytesMut::new();
    let mut params: Vec<(&str, &str)> = vec![("user", user)];
    if let Some(db) = database {
        params.push(("database", db));
    }
    for (k, v) in extra {
        params.push((k, v));
    }
    protocol::startup_message(&mut out, &params);
    io.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(8192);
    let mut scram: Option<ScramClient> = None;
    let pw = || {
        password.ok_or_else(|| UpstreamError::Auth("the database asks for a password but none is configured".into()))
    };
    let mut got_params = Vec::new();
    let (mut pid, mut key) = (0, 0);
    loop {
        let (tag, body) = read_message(&mut io, &mut buf, 1 << 20).await?;
        match tag {
            b'R' => {
                let code = body
                    .get(..4)
                    .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or_else(|| UpstreamError::Protocol("short auth message".into()))?;
                let mut reply = BytesMut::new();
                match code {
                    0 => continue,
                    3 => {
                        let mut p = pw()?.as_bytes().to_vec();
                        p.push(0);
                        protocol::message(&mut reply, b'p', &p);
                    }
                    5 => {
                        let salt: [u8; 4] = body
                            .get(4..8)
                            .and_then(|s| s.try_into().ok())
                            .ok_or_else(|| UpstreamError::Protocol("short md5 salt".into()))?;
                        let mut p = md5_password(user, pw()?, &salt).into_bytes();
                        p.push(0);
                        protocol::message(&mut reply, b'p', &p);
                    }
                    10 => {
                        let mechs = String::from_utf8_lossy(&body[4..]);
                        if !mechs.split('\0').any(|m| m == "SCRAM-SHA-256") {
                            return Err(UpstreamError::Auth(format!("unsupported SASL mechanisms: {mechs}")));
                        }
                        pw()?;
                        let (c, first) = ScramClient::start();
                        scram = Some(c);
                        let mut p = b"SCRAM-SHA-256\0".to_vec();
                        p.extend_from_slice(&i32::try_from(first.len()).unwrap_or(0).to_be_bytes());
                        p.extend_from_slice(first.as_bytes());
                        protocol::message(&mut reply, b'p', &p);
                    }
                    11 => {
                        let c = scram
                            .as_mut()
                            .ok_or_else(|| UpstreamError::Protocol("SASL continue without start".into()))?;
                        let server_first = std::str::from_utf8(&body[4..])
                            .map_err(|_| UpstreamError::Protocol("non-UTF-8 SCRAM".into()))?;
                        let fin = c
                            .respond(server_first, pw()?, salts)
                            .map_err(|e| UpstreamError::Auth(e.to_string()))?;
                        protocol::message(&mut reply, b'p', fin.as_bytes());
                    }
                    12 => {
                        let c = scram
                            .as_ref()
                            .ok_or_else(|| UpstreamError::Protocol("SASL final without start".into()))?;
                        let server_final = std::str::from_utf8(&body[4..])
                            .map_err(|_| UpstreamError::Protocol("non-UTF-8 SCRAM".into()))?;
                        c.verify(server_final).map_err(|e| UpstreamError::Auth(e.to_string()))?;
                        continue;
                    }
                    other => {
                        return Err(UpstreamError::Auth(format!(
                            "unsupported authentication method {other}"
                        )));
                    }
                }
                io.write_all(&reply).await?;
            }
            b'S' => {
                if let Some((k, rest)) = protocol::cstr(&body)
                    && let Some((v, _)) = protocol::cstr(rest)
                {
                    got_params.push((k.to_string(), v.to_string()));
                }
            }
            b'K' => {
                if body.len() >= 8 {
                    pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    key = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                }
            }
            b'Z' => {
                return Ok(Upstream {
                    io,
                    params: got_params,
                    pid,
                    key,
                    leftover: buf,
                });
            }
            b'E' => {
                let (code, msg) = error_fields(&body);
                if code.starts_with("28") {
                    return Err(UpstreamError::Auth(format!("{code}: {msg}")));
                }
                return Err(UpstreamError::Server(code, msg));
            }
            b'N' => {}
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message {:?} during startup",
                    char::from(other)
                )));
            }
        }
    }
}

/// Run one query on a freshly logged-in connection (before the relay starts) and return its
/// first row as text columns (`None` for NULL); the connection is left at ReadyForQuery.
pub async fn query_row(up: &mut Upstream, sql: &str) -> Result<Vec<Option<String>>, UpstreamError> {
    let mut out = BytesMut::new();
    let mut q = sql.as_bytes().to_vec();
    q.push(0);
    protocol::message(&mut out, b'Q', &q);
    up.io.write_all(&out).await?;
    let mut buf = std::mem::take(&mut up.leftover);
    let mut row: Option<Vec<Option<String>>> = None;
    let mut error: Option<String> = None;
    loop {
        let (tag, body) = read_message(&mut up.io, &mut buf, 1 << 20).await?;
        match tag {
            b'D' if row.is_none() => {
                let mut cols = Vec::new();
                let n = body.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
                let mut rest = body.get(2..).unwrap_or(&[]);
                for _ in 0..n {
                    let Some(l) = rest.get(..4) else { break };
                    let len = i32::from_be_bytes([l[0], l[1], l[2], l[3]]);
                    rest = &rest[4..];
                    match usize::try_from(len) {
                        Ok(len) if len <= rest.len() => {
                            cols.push(Some(String::from_utf8_lossy(&rest[..len]).into_owned()));
                            rest = &rest[len..];
                        }
                        Ok(_) => break,
                        Err(_) => cols.push(None),
                    }
                }
                row = Some(cols);
            }
            b'E' => {
                let (code, msg) = error_fields(&body);
                error = Some(format!("{code}: {msg}"));
            }
            b'Z' => break,
            _ => {}
        }
    }
    up.leftover = buf;
    if let Some(e) = error {
        return Err(UpstreamError::Protocol(e));
    }
    row.ok_or_else(|| UpstreamError::Protocol("the query returned no row".into()))
}

/// Send a CancelRequest for (pid, key) to the upstream.
pub async fn cancel(t: &Target, pid: i32, key: i32) -> Result<(), UpstreamError> {
    let mut io = open(t).await?;
    io.write_all(&protocol::cancel_request(pid, key)).await?;
    io.flush().await?;
    // The server closes the connection without answering.
    let mut b = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(2), io.read(&mut b)).await;
    Ok(())
}
