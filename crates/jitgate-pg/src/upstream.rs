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

use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::SCRAM_SHA_256;
use postgres_protocol::message::backend::{DataRowBody, ErrorResponseBody, Message};
use postgres_protocol::message::frontend;

use crate::io::{ReadError, Stream, read_frame};
use crate::scram::{SaltCache, ScramClient};

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
    let mut req = BytesMut::new();
    frontend::ssl_request(&mut req);
    tcp.write_all(&req).await?;
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

/// Largest message the upstream may send during login and `query_row`.
const MAX_LOGIN_MESSAGE: usize = 1 << 20;
/// Most ParameterStatus messages kept from a login (PostgreSQL sends about 15).
const MAX_PARAMS: usize = 256;

fn proto(e: std::io::Error) -> UpstreamError {
    UpstreamError::Protocol(e.to_string())
}

/// The next backend message, framed with the gateway's bounded reader and parsed by
/// postgres-protocol.
async fn next(io: &mut Stream, buf: &mut BytesMut) -> Result<Message, UpstreamError> {
    let mut frame = read_frame(io, buf, MAX_LOGIN_MESSAGE).await?;
    match Message::parse(&mut frame).map_err(proto)? {
        Some(m) => Ok(m),
        None => Err(UpstreamError::Protocol("truncated message".into())),
    }
}

/// (SQLSTATE, message) of an ErrorResponse.
fn error_fields(body: &ErrorResponseBody) -> (String, String) {
    let (mut code, mut msg) = (String::new(), String::new());
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => msg = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    (code, msg)
}

/// Log in on an open stream: the startup message, then whatever authentication the server asks
/// for (cleartext, md5, SCRAM-SHA-256, answered by [`Authenticator`]), up to ReadyForQuery.
/// Messages are built and parsed by postgres-protocol; each is bounded (1 MiB) and anything
/// unexpected is an error, never a panic.
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
    frontend::startup_message(params.iter().copied(), &mut out).map_err(proto)?;
    io.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(8192);
    let mut auth = Authenticator {
        user,
        password,
        salts,
        scram: None,
        responded: false,
        verified: false,
    };
    let mut got_params = Vec::new();
    let (mut pid, mut key) = (0, 0);
    loop {
        match next(&mut io, &mut buf).await? {
            Message::ParameterStatus(b) => {
                if got_params.len() >= MAX_PARAMS {
                    return Err(UpstreamError::Protocol(format!(
                        "more than {MAX_PARAMS} ParameterStatus messages during startup"
                    )));
                }
                if let (Ok(k), Ok(v)) = (b.name(), b.value()) {
                    got_params.push((k.to_string(), v.to_string()));
                }
            }
            Message::BackendKeyData(b) => (pid, key) = (b.process_id(), b.secret_key()),
            Message::ReadyForQuery(_) => {
                return Ok(Upstream {
                    io,
                    params: got_params,
                    pid,
                    key,
                    leftover: buf,
                });
            }
            Message::ErrorResponse(b) => {
                let (code, msg) = error_fields(&b);
                if code.starts_with("28") {
                    return Err(UpstreamError::Auth(format!("{code}: {msg}")));
                }
                return Err(UpstreamError::Server(code, msg));
            }
            Message::NoticeResponse(_) => {}
            m => {
                let mut reply = BytesMut::new();
                if auth.answer(m, &mut reply)? {
                    io.write_all(&reply).await?;
                }
            }
        }
    }
}

/// The client side of the authentication exchange. SCRAM must run in order and end with the
/// server's proof checked: an impostor that says AuthenticationOk (or SASLFinal) early is
/// refused, not believed.
struct Authenticator<'a> {
    user: &'a str,
    password: Option<&'a str>,
    salts: &'a SaltCache,
    scram: Option<ScramClient>,
    /// The client-final message was sent.
    responded: bool,
    /// The server's signature was checked.
    verified: bool,
}

impl<'a> Authenticator<'a> {
    fn password(&self) -> Result<&'a str, UpstreamError> {
        self.password
            .ok_or_else(|| UpstreamError::Auth("the database asks for a password but none is configured".into()))
    }

    /// Answer one authentication message into `reply`; whether there is a reply to send.
    fn answer(&mut self, m: Message, reply: &mut BytesMut) -> Result<bool, UpstreamError> {
        match m {
            Message::AuthenticationOk => {
                if self.scram.is_some() && !self.verified {
                    return Err(UpstreamError::Auth(
                        "the database ended SCRAM without proving it knows the password (possible impostor)".into(),
                    ));
                }
                Ok(false)
            }
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(self.password()?.as_bytes(), reply).map_err(proto)?;
                Ok(true)
            }
            Message::AuthenticationMd5Password(b) => {
                let hash = md5_hash(self.user.as_bytes(), self.password()?.as_bytes(), b.salt());
                frontend::password_message(hash.as_bytes(), reply).map_err(proto)?;
                Ok(true)
            }
            Message::AuthenticationSasl(b) => {
                let mechs: Vec<&str> = b.mechanisms().collect().map_err(proto)?;
                if !mechs.contains(&SCRAM_SHA_256) {
                    return Err(UpstreamError::Auth(format!(
                        "unsupported SASL mechanisms: {}",
                        mechs.join(", ")
                    )));
                }
                self.password()?;
                let (c, first) = ScramClient::start();
                self.scram = Some(c);
                frontend::sasl_initial_response(SCRAM_SHA_256, first.as_bytes(), reply).map_err(proto)?;
                Ok(true)
            }
            Message::AuthenticationSaslContinue(b) => {
                // Checked after the state, as the server sent it: the order of the errors matters.
                let (pw, salts) = (self.password(), self.salts);
                let c = self
                    .scram
                    .as_mut()
                    .ok_or_else(|| UpstreamError::Protocol("SASL continue without start".into()))?;
                let server_first =
                    std::str::from_utf8(b.data()).map_err(|_| UpstreamError::Protocol("non-UTF-8 SCRAM".into()))?;
                let fin = c
                    .respond(server_first, pw?, salts)
                    .map_err(|e| UpstreamError::Auth(e.to_string()))?;
                frontend::sasl_response(fin.as_bytes(), reply).map_err(proto)?;
                self.responded = true;
                Ok(true)
            }
            Message::AuthenticationSaslFinal(b) => {
                let c = self
                    .scram
                    .as_ref()
                    .ok_or_else(|| UpstreamError::Protocol("SASL final without start".into()))?;
                if !self.responded || self.verified {
                    return Err(UpstreamError::Protocol("SASL final out of order".into()));
                }
                let server_final =
                    std::str::from_utf8(b.data()).map_err(|_| UpstreamError::Protocol("non-UTF-8 SCRAM".into()))?;
                c.verify(server_final).map_err(|e| UpstreamError::Auth(e.to_string()))?;
                self.verified = true;
                Ok(false)
            }
            Message::AuthenticationGss
            | Message::AuthenticationGssContinue(_)
            | Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential
            | Message::AuthenticationSspi => Err(UpstreamError::Auth(
                "the database asks for GSSAPI/SSPI/Kerberos authentication, which jitgate does not do upstream; use scram-sha-256 for the gateway's role".into(),
            )),
            _ => Err(UpstreamError::Protocol("unexpected message during startup".into())),
        }
    }
}

/// Run one query on a freshly logged-in connection (before the relay starts) and return its
/// first row as text columns (`None` for NULL); the connection is left at ReadyForQuery.
pub async fn query_row(up: &mut Upstream, sql: &str) -> Result<Vec<Option<String>>, UpstreamError> {
    let mut out = BytesMut::new();
    frontend::query(sql, &mut out).map_err(proto)?;
    up.io.write_all(&out).await?;
    let mut buf = std::mem::take(&mut up.leftover);
    let mut row: Option<Vec<Option<String>>> = None;
    let mut error: Option<String> = None;
    loop {
        match next(&mut up.io, &mut buf).await? {
            Message::DataRow(body) if row.is_none() => row = Some(text_columns(&body)?),
            Message::ErrorResponse(b) => {
                let (code, msg) = error_fields(&b);
                error = Some(format!("{code}: {msg}"));
            }
            Message::ReadyForQuery(_) => break,
            _ => {}
        }
    }
    up.leftover = buf;
    if let Some(e) = error {
        return Err(UpstreamError::Protocol(e));
    }
    row.ok_or_else(|| UpstreamError::Protocol("the query returned no row".into()))
}

/// A DataRow's columns as text (`None` for NULL).
fn text_columns(body: &DataRowBody) -> Result<Vec<Option<String>>, UpstreamError> {
    let buf = body.buffer();
    let mut cols = Vec::new();
    let mut ranges = body.ranges();
    while let Some(r) = ranges.next().map_err(proto)? {
        cols.push(
            r.and_then(|r| buf.get(r))
                .map(|b| String::from_utf8_lossy(b).into_owned()),
        );
    }
    Ok(cols)
}

/// Send a CancelRequest for (pid, key) to the upstream.
pub async fn cancel(t: &Target, pid: i32, key: i32) -> Result<(), UpstreamError> {
    let mut io = open(t).await?;
    let mut req = BytesMut::new();
    frontend::cancel_request(pid, key, &mut req);
    io.write_all(&req).await?;
    io.flush().await?;
    // The server closes the connection without answering.
    let mut b = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(2), io.read(&mut b)).await;
    Ok(())
}
