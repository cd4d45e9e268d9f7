//! The change feed: one LISTEN connection per replica, kept up with back-off, turning
//! notices into [`Feed`] items (and a [`Change::Resync`] after every reconnect).

use super::*;

/// Keep one LISTEN connection up for as long as the store exists.
pub(super) async fn listen_forever(inner: std::sync::Weak<Inner>, ready: tokio::sync::oneshot::Sender<()>) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(me) = inner.upgrade() else { return };
        let reconnect = ready.is_none();
        let started = Instant::now();
        let err = listen_once(&me, &mut ready, reconnect).await;
        me.feed_up.store(false, Ordering::SeqCst);
        tracing::warn!(error = %err, "lost the store's change feed; reconnecting (new sessions are refused meanwhile)");
        drop(me);
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

pub(super) async fn listen_once(
    me: &Arc<Inner>,
    ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
    reconnect: bool,
) -> StoreError {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = match tokio::time::timeout(OP_TIMEOUT, me.connect("jitgate-feed", Some(tx))).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return e,
        Err(_) => return StoreError::Backend("connecting for LISTEN timed out".into()),
    };
    match tokio::time::timeout(OP_TIMEOUT, client.batch_execute(&format!("LISTEN {CHANNEL}"))).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return backend(e),
        Err(_) => return StoreError::Backend("LISTEN timed out".into()),
    }
    me.feed_up.store(true, Ordering::SeqCst);
    if let Some(r) = ready.take() {
        let _ = r.send(());
    }
    if reconnect {
        tracing::info!("store change feed reconnected; resynchronising");
        let _ = me.feed.send(Feed {
            change: Change::Resync {
                reason: "reconnect".into(),
            },
            origin: me.node.clone(),
            sent_ms: now_ms(),
        });
    }
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.tick().await;
    loop {
        tokio::select! {
            n = rx.recv() => {
                let Some(n) = n else {
                    return StoreError::Backend("the LISTEN connection closed".into());
                };
                match serde_json::from_str::<Feed>(n.payload()) {
                    Ok(f) if f.origin == me.node => {}
                    Ok(f) => {
                        let _ = me.feed.send(f);
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring an unreadable change notice"),
                }
            }
            _ = beat.tick() => {
                match tokio::time::timeout(Duration::from_secs(3), client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return backend(e),
                    Err(_) => return StoreError::Backend("the LISTEN connection stopped answering".into()),
                }
            }
        }
    }
}
