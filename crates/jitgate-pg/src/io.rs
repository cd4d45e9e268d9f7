//! A boxed byte stream (plain TCP or TLS) and message reading during the startup phase.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::protocol::{self, ProtoError};

/// Any duplex byte stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A boxed stream.
pub type BoxIo = Box<dyn Io>;

/// Errors while reading a message.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Socket error or EOF.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Protocol violation.
    #[error("{0}")]
    Proto(#[from] ProtoError),
}

/// Read one tagged message (tag, body) into `buf`, bounded by `max` body bytes.
pub async fn read_message<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<(u8, BytesMut), ReadError> {
    loop {
        if let Some(h) = protocol::header(buf, max)? {
            let total = 5 + h.body_len;
            if buf.len() >= total {
                let mut frame = buf.split_to(total);
                let body = frame.split_off(5);
                return Ok((h.tag, body));
            }
            buf.reserve(total - buf.len());
        }
        if r.read_buf(buf).await? == 0 {
            return Err(ReadError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            )));
        }
    }
}
