//! A session's byte stream (plain TCP or TLS, either side) and message reading during the
//! startup phase.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::protocol::{self, ProtoError};

/// A client's or an upstream's connection.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS from a client (the gateway is the server).
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS to an upstream (the gateway is the client).
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// An in-process pipe: drives the relay and the upstream login without sockets (fuzzing,
    /// tests); the gateway itself never makes one.
    Memory(Box<tokio::io::DuplexStream>),
}

impl From<tokio::io::DuplexStream> for Stream {
    fn from(s: tokio::io::DuplexStream) -> Self {
        Self::Memory(Box::new(s))
    }
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Self {
        Self::Plain(s)
    }
}

impl From<tokio_rustls::server::TlsStream<TcpStream>> for Stream {
    fn from(s: tokio_rustls::server::TlsStream<TcpStream>) -> Self {
        Self::ServerTls(Box::new(s))
    }
}

impl From<tokio_rustls::client::TlsStream<TcpStream>> for Stream {
    fn from(s: tokio_rustls::client::TlsStream<TcpStream>) -> Self {
        Self::ClientTls(Box::new(s))
    }
}

/// Run `$e` on whichever stream `$s` holds, pinned.
macro_rules! each {
    ($s:expr, $x:ident => $e:expr) => {
        match $s {
            Self::Plain(s) => {
                let $x = Pin::new(s);
                $e
            }
            Self::ServerTls(s) => {
                let $x = Pin::new(&mut **s);
                $e
            }
            Self::ClientTls(s) => {
                let $x = Pin::new(&mut **s);
                $e
            }
            Self::Memory(s) => {
                let $x = Pin::new(&mut **s);
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        each!(self.get_mut(), s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        each!(self.get_mut(), s => s.poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        each!(self.get_mut(), s => s.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::ServerTls(s) => s.is_write_vectored(),
            Self::ClientTls(s) => s.is_write_vectored(),
            Self::Memory(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self.get_mut(), s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self.get_mut(), s => s.poll_shutdown(cx))
    }
}

impl Stream {
    /// Read and write halves for the relay's two directions. Plain TCP splits into owned halves
    /// that share no lock (a read in one task never makes a write in the other wait); TLS state
    /// is shared, so it goes through `tokio::io::split`'s lock.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Self::Plain(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            tls => {
                let (r, w) = tokio::io::split(tls);
                (ReadHalf::Locked(r), WriteHalf::Locked(w))
            }
        }
    }
}

/// The read half of a [`Stream`].
pub enum ReadHalf {
    /// Plain TCP.
    Plain(OwnedReadHalf),
    /// Split through a lock: TLS streams cannot be split into owned halves.
    Locked(tokio::io::ReadHalf<Stream>),
}

/// The write half of a [`Stream`].
pub enum WriteHalf {
    /// Plain TCP.
    Plain(OwnedWriteHalf),
    /// Split through a lock: TLS streams cannot be split into owned halves.
    Locked(tokio::io::WriteHalf<Stream>),
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Locked(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Locked(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Locked(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Locked(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

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
    let mut frame = read_frame(r, buf, max).await?;
    let tag = frame[0];
    Ok((tag, frame.split_off(5)))
}

/// Read one whole tagged frame (type byte, length, body) into `buf`, bounded by `max` body
/// bytes: what a message parser that wants the frame (postgres-protocol's) is given.
pub async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<BytesMut, ReadError> {
    loop {
        if let Some(h) = protocol::header(buf, max)? {
            let total = 5 + h.body_len;
            if buf.len() >= total {
                return Ok(buf.split_to(total));
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
