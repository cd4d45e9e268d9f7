//! Serving the API router with the limits axum's `serve` does not offer: a deadline for request
//! headers (a client that opens a connection and trickles bytes is cut off), a cap on concurrent
//! connections, and graceful shutdown. Works for plain TCP and for the TLS listener alike.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;

/// Time a client has to send a request's headers (also bounds idle keep-alive connections).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent API connections.
pub const MAX_CONNECTIONS: usize = 1024;

/// Serve `app` on `listener` until `stop`, then let in-flight requests finish.
pub async fn serve<L: Listener>(mut listener: L, app: Router, stop: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let (io, _) = tokio::select! {
            c = listener.accept() => c,
            () = stop.cancelled() => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Over the limit: drop the connection at once rather than queue it.
            drop(io);
            continue;
        };
        let (app, stop) = (app.clone(), stop.clone());
        tracker.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "API connection ended with an error");
                    }
                }
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
            drop(permit);
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
}
