//! One SSH connection's state once it is a jitgate session: its registration and kill switch
//! ([`Live`]), its channel places and open channels, how killed upstream processes ended, and
//! the watcher that turns a kill into goodbyes and a disconnect. The SSH handler
//! ([`crate::server`]) creates it; the channel pumps ([`crate::relay`]) use it; it uses neither.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jitgate_audit::{Event, Kind};
use jitgate_core::{KillReason, SessionGuard};
use russh::{ChannelId, Disconnect, server};
use tokio_util::sync::CancellationToken;

use crate::upstream::Upstream;

/// A connection that passed the grant check and logged in upstream.
pub(crate) struct Live {
    pub(crate) guard: SessionGuard,
    pub(crate) upstream: Upstream,
    pub(crate) login: String,
    pub(crate) allow_forwarding: bool,
    pub(crate) channels: OpenChannels,
    pub(crate) channel_count: AtomicUsize,
    pub(crate) recordings: AtomicUsize,
    /// Cancelled when the connection is over (ends the watcher).
    pub(crate) closed: CancellationToken,
    /// The connection's hard stop (ConnShared::cut).
    pub(crate) cut: CancellationToken,
    /// How the upstream processes of killed channels ended, the worst of them (UpstreamEnd).
    pub(crate) upstream_end: std::sync::atomic::AtomicU8,
}

/// How a killed channel's upstream process ended, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum UpstreamEnd {
    /// Nothing was running (or no channel was killed).
    Nothing = 0,
    /// It exited on SIGTERM within the grace.
    Term = 1,
    /// It ignored SIGTERM and was sent SIGKILL, then exited.
    Kill = 2,
    /// No exit was reported after SIGKILL: the upstream connection was closed.
    Disconnected = 3,
}

impl UpstreamEnd {
    pub(crate) fn label(v: u8) -> Option<&'static str> {
        match v {
            1 => Some("exited on SIGTERM"),
            2 => Some("ignored SIGTERM; exited on SIGKILL"),
            3 => Some("no exit reported after SIGKILL; upstream connection closed"),
            _ => None,
        }
    }
}

/// One of a connection's `max_channels` places, given back when dropped (whatever way the
/// channel ends).
pub(crate) struct ChannelSlot(Arc<Live>);

impl Drop for ChannelSlot {
    fn drop(&mut self) {
        self.0.channel_count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Live {
    /// Note how a killed channel's upstream process ended.
    pub(crate) fn upstream_ended(&self, how: UpstreamEnd) {
        self.upstream_end.fetch_max(how as u8, Ordering::AcqRel);
    }

    /// Take a channel place; `None` when `max` are open.
    pub(crate) fn slot(self: &Arc<Self>, max: usize) -> Option<ChannelSlot> {
        let n = self.channel_count.fetch_add(1, Ordering::AcqRel);
        let slot = ChannelSlot(self.clone());
        (n < max).then_some(slot)
    }

    /// An audit event of this session (who, what, grant, session).
    pub(crate) fn event(&self, kind: Kind) -> Event {
        let info = &self.guard.info;
        Event::new(kind, jiff::Timestamp::now())
            .actor(&info.identity)
            .resource(&info.resource)
            .grant(info.grant_id)
            .session(&info.id)
    }
}

/// Open client channels of a connection and whether each has a pty (for messages).
#[derive(Default)]
pub(crate) struct OpenChannels(Mutex<HashMap<ChannelId, bool>>, tokio::sync::Notify);

impl OpenChannels {
    pub(crate) fn set(&self, id: ChannelId, pty: bool) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(id, pty);
        }
    }
    pub(crate) fn remove(&self, id: ChannelId) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&id);
            if m.is_empty() {
                // Wakes the watcher waiting to disconnect (notify_one keeps a permit if it is
                // not waiting yet).
                self.1.notify_one();
            }
        }
    }
    /// Until no channel is open.
    pub(crate) async fn emptied(&self) {
        while !self.is_empty() {
            self.1.notified().await;
        }
    }
    fn is_empty(&self) -> bool {
        self.0.lock().map(|m| m.is_empty()).unwrap_or(true)
    }
}

/// Watches the session's kill switch; on a kill, lets the channel tasks say goodbye, then
/// disconnects both legs.
pub(crate) async fn watch(live: Arc<Live>, server: server::Handle) {
    // Expiry warnings are written by each channel task on its own channel (through its window,
    // never around it).
    let kill = live.guard.kill.clone();
    tokio::select! {
        () = kill.cancelled() => {}
        () = live.closed.cancelled() => return,
    }
    // A client that stopped reading never takes the goodbye: whatever happens, the connection
    // is cut CUT_AFTER the kill (its socket then fails every read and write, which ends the
    // session task; a slow but healthy client may lose the last lines of the goodbye).
    let cut = live.cut.clone();
    tokio::spawn(async move {
        tokio::time::sleep(CUT_AFTER).await;
        cut.cancel();
    });
    // Each channel's goodbye is bounded (300 ms + 500 ms for the client's close); disconnecting
    // before they are done could overtake their last words.
    let _ = tokio::time::timeout(Duration::from_millis(800), live.channels.emptied()).await;
    let reason = live.guard.kill_reason().unwrap_or(KillReason::Shutdown);
    let text = reason.message(&live.guard.info.resource);
    let _ = tokio::join!(
        tokio::time::timeout(
            Duration::from_millis(100),
            server.disconnect(Disconnect::ByApplication, format!("jitgate: {text}"), "en".into())
        ),
        tokio::time::timeout(
            Duration::from_millis(100),
            live.upstream
                .disconnect(Disconnect::ByApplication, "session ended by jitgate", "en")
        ),
    );
}

/// From a kill to the connection being dropped, whether or not the client took the goodbye.
pub(crate) const CUT_AFTER: Duration = Duration::from_millis(900);
