//! A socket with a hard stop, for SSH connections whose client stopped reading.

use std::pin::Pin;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The client's socket, with a hard stop: once `cut` is cancelled every read and write fails,
/// also those already waiting (a peer that stopped reading keeps a write pending forever), so
/// the session ends and the socket is closed.
pub(crate) struct CutStream {
    inner: TcpStream,
    cut: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl CutStream {
    pub(crate) fn new(inner: TcpStream, cut: CancellationToken) -> Self {
        Self {
            inner,
            cut: Box::pin(cut.cancelled_owned()),
        }
    }

    fn check(&mut self, cx: &mut std::task::Context<'_>) -> std::io::Result<()> {
        match self.cut.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "connection cut by jitgate",
            )),
            std::task::Poll::Pending => Ok(()),
        }
    }
}

impl tokio::io::AsyncRead for CutStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CutStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
