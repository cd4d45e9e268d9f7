//! Postgres wire protocol v3: the few messages the gateway builds or reads, and frame parsing.
//!
//! The relay never decodes a message it does not need to: a frame is a type byte and a 4-byte
//! big-endian length that includes itself. Everything here works on byte slices and refuses
//! malformed input with an error, never a panic.

use bytes::{BufMut, BytesMut};

/// SSLRequest code.
pub const SSL_REQUEST: i32 = 80_877_103;
/// GSSENCRequest code.
pub const GSSENC_REQUEST: i32 = 80_877_104;
/// CancelRequest code.
pub const CANCEL_REQUEST: i32 = 80_877_102;
/// Protocol 3.0.
pub const PROTOCOL_3: i32 = 196_608;
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
        /// Secret key.
        key: i32,
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
            if body.len() != 12 {
                return Err(ProtoError::Malformed("CancelRequest"));
            }
            Ok(Startup::Cancel {
                pid: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                key: i32::from_be_bytes([body[8], body[9], body[10], body[11]]),
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
    /// Informational.
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

/// Append an ErrorResponse (or NoticeResponse for Notice/Warning).
pub fn error_response(out: &mut BytesMut, sev: Severity, code: &str, message: &str, hint: Option<&str>) {
    let tag = if matches!(sev, Severity::Notice | Severity::Warning) {
        b'N'
    } else {
        b'E'
    };
    let at = begin(out, tag);
    for (f, v) in [
        (b'S', sev.as_str()),
        (b'V', sev.as_str()),
        (b'C', code),
        (b'M', message),
    ] {
        out.put_u8(f);
        put_cstr(out, v);
    }
    if let Some(h) = hint {
        out.put_u8(b'H');
        put_cstr(out, h);
    }
    out.put_u8(0);
    finish(out, at);
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    // NULs cannot appear in protocol strings; drop them rather than corrupt the frame.
    out.extend(s.bytes().filter(|b| *b != 0));
    out.put_u8(0);
}

/// AuthenticationRequest with a code and optional payload.
pub fn auth(out: &mut BytesMut, code: i32, payload: &[u8]) {
    let at = begin(out, b'R');
    out.put_i32(code);
    out.extend_from_slice(payload);
    finish(out, at);
}

/// ParameterStatus.
pub fn parameter_status(out: &mut BytesMut, k: &str, v: &str) {
    let at = begin(out, b'S');
    put_cstr(out, k);
    put_cstr(out, v);
    finish(out, at);
}

/// BackendKeyData.
pub fn backend_key(out: &mut BytesMut, pid: i32, key: i32) {
    let at = begin(out, b'K');
    out.put_i32(pid);
    out.put_i32(key);
    finish(out, at);
}

/// ReadyForQuery.
pub fn ready(out: &mut BytesMut, status: u8) {
    let at = begin(out, b'Z');
    out.put_u8(status);
    finish(out, at);
}

/// A startup message (frontend, no tag).
pub fn startup_message(out: &mut BytesMut, params: &[(&str, &str)]) {
    let at = out.len();
    out.put_i32(0);
    out.put_i32(PROTOCOL_3);
    for (k, v) in params {
        put_cstr(out, k);
        put_cstr(out, v);
    }
    out.put_u8(0);
    finish(out, at);
}

/// A frontend message with a tag and raw body.
pub fn message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    let at = begin(out, tag);
    out.extend_from_slice(body);
    finish(out, at);
}

/// A CancelRequest packet.
pub fn cancel_request(pid: i32, key: i32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&16i32.to_be_bytes());
    b[4..8].copy_from_slice(&CANCEL_REQUEST.to_be_bytes());
    b[8..12].copy_from_slice(&pid.to_be_bytes());
    b[12..].copy_from_slice(&key.to_be_bytes());
    b
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
        let mut b = BytesMut::new();
        startup_message(&mut b, &[("user", "alice"), ("database", "prod-db")]);
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
        let c = cancel_request(7, 9);
        assert_eq!(parse_startup(&c[4..]), Ok(Startup::Cancel { pid: 7, key: 9 }));
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
