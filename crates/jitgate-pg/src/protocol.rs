//! Postgres wire protocol v3: frame parsing, the startup packets, and the messages the gateway
//! itself sends to clients.
//!
//! The relay never decodes a message it does not need to: a frame is a type byte and a 4-byte
//! big-endian length that includes itself, walked here on byte slices (refusing malformed input
//! with an error, never a panic). The messages the gateway originates (ErrorResponse,
//! NoticeResponse, Authentication, ParameterStatus, BackendKeyData, ReadyForQuery,
//! NegotiateProtocolVersion) are `pgwire`'s message types; the upstream leg's frontend messages
//! are `postgres-protocol`'s (see `upstream.rs`). docs/decisions.md says why
//! the frame walker stays our own.

use bytes::{BufMut, BytesMut};
use pgwire::messages::response::{ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey};

/// SSLRequest code.
pub const SSL_REQUEST: i32 = 80_877_103;
/// GSSENCRequest code.
pub const GSSENC_REQUEST: i32 = 80_877_104;
/// CancelRequest code.
pub const CANCEL_REQUEST: i32 = 80_877_102;
/// Protocol 3.0.
pub const PROTOCOL_3: i32 = 196_608;
/// Protocol 3.2 (PostgreSQL 18: cancel keys of up to 256 bytes).
pub const PROTOCOL_3_2: i32 = 196_610;
/// The newest protocol the gateway speaks to clients.
pub const PROTOCOL_LATEST: i32 = PROTOCOL_3_2;
/// Largest startup packet accepted (same bound as PostgreSQL).
pub const MAX_STARTUP: usize = 10_000;

/// Protocol violations found in client or server bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// A length outside what the message type allows.
    #[error("invalid message length {0}")]
    Length(i64),
    /// A message with missing or malformed fields.
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

/// A frame header: type and the length of the body (without the 4 length bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type byte.
    pub tag: u8,
    /// Body length.
    pub body_len: usize,
}

/// Read a frame header from the start of `buf` (needs 5 bytes). `max` bounds the body.
pub fn header(buf: &[u8], max: usize) -> Result<Option<Header>, ProtoError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || usize::try_from(len - 4).map_or(true, |l| l > max) {
        return Err(ProtoError::Length(i64::from(len)));
    }
    Ok(Some(Header {
        tag: buf[0],
        body_len: usize::try_from(len - 4).unwrap_or(0),
    }))
}

/// The first packet a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// Wants TLS.
    Ssl,
    /// Wants GSS encryption.
    GssEnc,
    /// Cancels a running query.
    Cancel {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret key: 4 bytes (protocol 3.0), up to 256 (3.2).
        key: Vec<u8>,
    },
    /// Starts a session.
    Start {
        /// Protocol version.
        version: i32,
        /// Parameters (`user`, `database`, ...).
        params: Vec<(String, String)>,
    },
}

/// Parse a startup-phase packet body (after the 4-byte length).
pub fn parse_startup(body: &[u8]) -> Result<Startup, ProtoError> {
    if body.len() < 4 {
        return Err(ProtoError::Malformed("startup"));
    }
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    match code {
        SSL_REQUEST => Ok(Startup::Ssl),
        GSSENC_REQUEST => Ok(Startup::GssEnc),
        CANCEL_REQUEST => {
            // Protocol 3.2 lets the key be 4 to 256 bytes long.
            if !(12..=8 + 256).contains(&body.len()) {
                return Err(ProtoError::Malformed("CancelRequest"));
            }
            Ok(Startup::Cancel {
                pid: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                key: body[8..].to_vec(),
            })
        }
        v => {
            let mut params = Vec::new();
            let mut rest = &body[4..];
            loop {
                let (k, r) = cstr(rest).ok_or(ProtoError::Malformed("startup"))?;
                if k.is_empty() {
                    break;
                }
                let (v, r) = cstr(r).ok_or(ProtoError::Malformed("startup"))?;
                params.push((k.to_string(), v.to_string()));
                rest = r;
            }
            Ok(Startup::Start { version: v, params })
        }
    }
}

/// Split a NUL-terminated UTF-8 string off the front of `b`.
pub fn cstr(b: &[u8]) -> Option<(&str, &[u8])> {
    let nul = b.iter().position(|c| *c == 0)?;
    let s = std::str::from_utf8(&b[..nul]).ok()?;
    Some((s, &b[nul + 1..]))
}

fn begin(out: &mut BytesMut, tag: u8) -> usize {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    at
}

fn finish(out: &mut BytesMut, at: usize) {
    let len = i32::try_from(out.len() - at).unwrap_or(i32::MAX);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Severity of an error or notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Statement failed, session continues.
    Error,
    /// Session ends.
    Fatal,
    /// NOTICE: informational, the session goes on.
    Notice,
    /// Warning notice.
    Warning,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Fatal => "FATAL",
            Self::Notice => "NOTICE",
            Self::Warning => "WARNING",
        }
    }
}

/// Encode a pgwire message whole or not at all (its encoder may fail after writing the type
/// byte, which would corrupt the stream).
fn put<M: pgwire::messages::Message>(out: &mut BytesMut, m: &M) {
    let mut one = BytesMut::with_capacity(m.message_length() + 1);
    match m.encode(&mut one) {
        Ok(()) => out.extend_from_slice(&one),
        Err(e) => tracing::error!(error = %e, "a protocol message could not be encoded; not sent"),
    }
}

/// A protocol string: NULs cannot appear in one, so they are dropped rather than corrupt the
/// frame.
fn text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "")
    } else {
        s.to_string()
    }
}

/// Append an ErrorResponse (or NoticeResponse for Notice/Warning).
pub fn error_response(out: &mut BytesMut, sev: Severity, code: &str, message: &str, hint: Option<&str>) {
    let mut fields = vec![
        (b'S', sev.as_str().to_string()),
        (b'V', sev.as_str().to_string()),
        (b'C', text(code)),
        (b'M', text(message)),
    ];
    if let Some(h) = hint {
        fields.push((b'H', text(h)));
    }
    if matches!(sev, Severity::Notice | Severity::Warning) {
        put(out, &NoticeResponse::new(fields));
    } else {
        put(out, &ErrorResponse::new(fields));
    }
}

/// Append AuthenticationOk (the client is in).
pub fn auth_ok(out: &mut BytesMut) {
    put(out, &Authentication::Ok);
}

/// AuthenticationCleartextPassword (the client's password is its gateway token).
pub fn auth_cleartext(out: &mut BytesMut) {
    put(out, &Authentication::CleartextPassword);
}

/// Append a ParameterStatus (`k` = `v`), as the upstream reported it.
pub fn parameter_status(out: &mut BytesMut, k: &str, v: &str) {
    put(out, &ParameterStatus::new(text(k), text(v)));
}

/// BackendKeyData: a 4-byte key for protocol 3.0, longer for 3.2.
pub fn backend_key(out: &mut BytesMut, pid: i32, key: &[u8]) {
    let secret = match <[u8; 4]>::try_from(key) {
        Ok(k) => SecretKey::I32(i32::from_be_bytes(k)),
        Err(_) => SecretKey::Bytes(bytes::Bytes::copy_from_slice(key)),
    };
    put(out, &BackendKeyData::new(pid, secret));
}

/// ReadyForQuery with a transaction status (`I`, `T` or `E`).
pub fn ready(out: &mut BytesMut, status: u8) {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    put(out, &ReadyForQuery::new(status));
}

/// NegotiateProtocolVersion: the newest version the gateway speaks (a full version number, as
/// PostgreSQL sends it) and the `_pq_.` options it does not support.
pub fn negotiate_protocol_version(out: &mut BytesMut, version: i32, unsupported: &[String]) {
    put(
        out,
        &NegotiateProtocolVersion::new(version, unsupported.iter().map(|o| text(o)).collect()),
    );
}

/// A frontend message with a tag and raw body.
pub fn message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    let at = begin(out, tag);
    out.extend_from_slice(body);
    finish(out, at);
}

/// Fields of an ErrorResponse/NoticeResponse body: (SQLSTATE, message).
pub fn error_fields(body: &[u8]) -> (String, String) {
    let (mut code, mut msg) = (String::new(), String::new());
    let mut rest = body;
    while let Some((&f, r)) = rest.split_first() {
        if f == 0 {
            break;
        }
        let Some((v, r)) = cstr(r) else { break };
        match f {
            b'C' => code = v.to_string(),
            b'M' => msg = v.to_string(),
            _ => {}
        }
        rest = r;
    }
    (code, msg)
}

/// Rows from a CommandComplete tag (`SELECT 5`, `INSERT 0 3`, `COPY 10`).
pub fn command_rows(body: &[u8]) -> Option<u64> {
    let (tag, _) = cstr(body)?;
    tag.rsplit(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_refuses_bad_and_huge_lengths() {
        assert_eq!(
            header(b"Q\0\0\0\x05x", 100),
            Ok(Some(Header { tag: b'Q', body_len: 1 }))
        );
        assert_eq!(header(b"Q\0\0", 100), Ok(None));
        assert!(header(b"Q\0\0\0\x03", 100).is_err());
        assert!(header(b"Q\x40\0\0\0", 1 << 20).is_err(), "1 GiB length refused");
        assert!(
            header(b"Q\xff\xff\xff\xff", usize::MAX).is_err(),
            "negative length refused"
        );
    }

    #[test]
    fn startup_parsing() {
        use postgres_protocol::message::frontend;
        let mut b = BytesMut::new();
        frontend::startup_message([("user", "alice"), ("database", "prod-db")], &mut b).unwrap();
        let s = parse_startup(&b[4..]);
        assert_eq!(
            s,
            Ok(Startup::Start {
                version: PROTOCOL_3,
                params: vec![("user".into(), "alice".into()), ("database".into(), "prod-db".into())]
            })
        );
        assert_eq!(parse_startup(&80_877_103i32.to_be_bytes()), Ok(Startup::Ssl));
        assert!(parse_startup(&[0, 3, 0, 0, b'u', b's']).is_err(), "unterminated");
        assert!(parse_startup(&[1, 2]).is_err());
        let mut c = BytesMut::new();
        frontend::cancel_request(7, 9, &mut c);
        assert_eq!(
            parse_startup(&c[4..]),
            Ok(Startup::Cancel {
                pid: 7,
                key: 9i32.to_be_bytes().to_vec()
            })
        );
        // Protocol 3.2: keys of 4..=256 bytes; longer or shorter is malformed.
        let cancel = |n: usize| {
            let mut v = CANCEL_REQUEST.to_be_bytes().to_vec();
            v.extend_from_slice(&7i32.to_be_bytes());
            v.extend(std::iter::repeat_n(0xab, n));
            parse_startup(&v)
        };
        assert_eq!(
            cancel(32),
            Ok(Startup::Cancel {
                pid: 7,
                key: vec![0xab; 32]
            })
        );
        assert!(cancel(256).is_ok());
        assert!(cancel(257).is_err());
        assert!(cancel(3).is_err());
    }

    #[test]
    fn messages_the_gateway_sends_parse_with_postgres_protocol() {
        use postgres_protocol::message::backend::Message;
        let mut b = BytesMut::new();
        auth_cleartext(&mut b);
        auth_ok(&mut b);
        parameter_status(&mut b, "server_version", "15.1\0x");
        backend_key(&mut b, 42, &7i32.to_be_bytes());
        ready(&mut b, b'T');
        error_response(&mut b, Severity::Warning, "01000", "with\0nul", Some("h"));
        assert!(matches!(
            Message::parse(&mut b),
            Ok(Some(Message::AuthenticationCleartextPassword))
        ));
        assert!(matches!(Message::parse(&mut b), Ok(Some(Message::AuthenticationOk))));
        match Message::parse(&mut b) {
            Ok(Some(Message::ParameterStatus(p))) => {
                assert_eq!(p.name().unwrap(), "server_version");
                assert_eq!(p.value().unwrap(), "15.1x", "NUL dropped, frame intact");
            }
            _ => panic!("ParameterStatus"),
        }
        match Message::parse(&mut b) {
            Ok(Some(Message::BackendKeyData(k))) => assert_eq!((k.process_id(), k.secret_key()), (42, 7)),
            _ => panic!("BackendKeyData"),
        }
        assert!(matches!(Message::parse(&mut b), Ok(Some(Message::ReadyForQuery(r))) if r.status() == b'T'));
        assert!(matches!(Message::parse(&mut b), Ok(Some(Message::NoticeResponse(_)))));
        assert!(b.is_empty());
        // 3.2: a 32-byte key; NegotiateProtocolVersion carries the full version number.
        let mut k = BytesMut::new();
        backend_key(&mut k, 1, &[9u8; 32]);
        assert_eq!(&k[..9], b"K\0\0\0\x28\0\0\0\x01");
        let mut n = BytesMut::new();
        negotiate_protocol_version(&mut n, PROTOCOL_3_2, &["_pq_.x".to_string()]);
        let mut want = b"v\0\0\0\x13".to_vec();
        want.extend_from_slice(&PROTOCOL_3_2.to_be_bytes());
        want.extend_from_slice(&1i32.to_be_bytes());
        want.extend_from_slice(b"_pq_.x\0");
        assert_eq!(&n[..], &want[..]);
    }

    #[test]
    fn error_round_trip_and_rows() {
        let mut b = BytesMut::new();
        error_response(&mut b, Severity::Fatal, "28000", "no grant", Some("run it"));
        assert_eq!(b[0], b'E');
        assert_eq!(error_fields(&b[5..]), ("28000".into(), "no grant".into()));
        assert_eq!(command_rows(b"SELECT 5\0"), Some(5));
        assert_eq!(command_rows(b"INSERT 0 3\0"), Some(3));
        assert_eq!(command_rows(b"BEGIN\0"), None);
    }
}
