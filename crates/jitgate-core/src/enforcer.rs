//! The enforcer: grant cache + session registry + expiry scheduler, as one unit.
//!
//! Activating a grant puts it in the cache and schedules its warning and its end. One task
//! ([`Enforcer::run`]) sleeps until the earliest scheduled instant (or until a new grant makes an
//! earlier one), then removes due grants from the cache and fires the kill switches of their
//! sessions *before* telling the control plane, which persists and audits the change. Stale
//! schedule entries (a grant extended, revoked or released meanwhile) are skipped, so extension
//! never needs to unschedule anything.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::grants::{GrantCache, LiveGrant};
use crate::metrics::Metrics;
use crate::sessions::{KillReason, SessionRegistry};

/// What the scheduler reports to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveEvent {
    /// The grant reached its end; `sessions` were killed.
    Expired {
        /// The grant.
        grant: LiveGrant,
        /// Sessions killed.
        sessions: usize,
    },
    /// The grant ends within the warning lead.
    Expiring {
        /// The grant.
        grant: LiveGrant,
    },
    /// An `idle_end` grant has had no session here for its idle time since `since`. The
    /// control plane ends it (after checking other replicas' sessions on a shared store).
    Idle {
        /// The grant.
        grant: LiveGrant,
        /// When its last session ended (or it was activated).
        since: Timestamp,
    },
}

/// A scheduled instant: (when, what, grant id, the grant's `expires_at` when scheduled).
type Slot = Reverse<(Timestamp, Due, i64, Timestamp)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Expire,
    Warn,
    /// The 4th field is then the instant the grant became idle, not its `expires_at`.
    Idle,
}

/// Grant cache, sessions and the expiry schedule.
#[derive(Debug)]
pub struct Enforcer {
    /// Live grants.
    pub grants: GrantCache,
    /// Live sessions.
    pub sessions: Arc<SessionRegistry>,
    clock: SharedClock,
    metrics: Metrics,
    queue: Mutex<BinaryHeap<Slot>>,
    wake: Notify,
    warning_lead_secs: AtomicU64,
    /// Grants revoked or released here (ids → when), so that a snapshot read before the end
    /// (a store read racing the revocation, a resync) cannot bring them back. Those ends are
    /// final; expiry is not recorded (an extension approved just before it may arrive after).
    /// Held across the check and the insert in `activate`, and across the remove in `end`.
    final_ends: Mutex<HashMap<i64, Timestamp>>,
    /// `idle_end` grants with no session here: since when.
    idle_since: Mutex<HashMap<i64, Timestamp>>,
}

/// How long a final end is remembered: far longer than any snapshot can be old (store reads
/// time out after seconds).
const FINAL_END_MEMORY: jiff::SignedDuration = jiff::SignedDuration::from_mins(10);

impl Enforcer {
    /// A new enforcer.
    pub fn new(clock: SharedClock, metrics: Metrics, warning_lead_secs: u64) -> Arc<Self> {
        Arc::new(Self {
            grants: GrantCache::new(),
            sessions: SessionRegistry::new(),
            clock,
            metrics,
            queue: Mutex::new(BinaryHeap::new()),
            wake: Notify::new(),
            warning_lead_secs: AtomicU64::new(warning_lead_secs),
            final_ends: Mutex::new(HashMap::new()),
            idle_since: Mutex::new(HashMap::new()),
        })
    }

    /// The clock everything here runs on.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Change the warning lead (config reload).
    pub fn set_warning_lead(&self, secs: u64) {
        self.warning_lead_secs.store(secs, Ordering::Relaxed);
    }

    fn push(&self, at: Timestamp, due: Due, id: i64, expires_at: Timestamp) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Reverse((at, due, id, expires_at)));
    }

    /// Put a live grant in the cache (or move its end) and schedule its warning and expiry.
    /// Returns `false` when it was not activated: already past its end, or revoked or
    /// released here before (a stale snapshot of it).
    pub fn activate(&self, g: LiveGrant) -> bool {
        let now = self.clock.now();
        if g.expires_at <= now {
            return false;
        }
        let ended = self.final_ends.lock().unwrap_or_else(|e| e.into_inner());
        if ended.contains_key(&g.id) {
            tracing::debug!(
                grant_id = g.id,
                "not re-activating a grant that was revoked or released"
            );
            return false;
        }
        let lead =
            jiff::SignedDuration::from_secs(i64::try_from(self.warning_lead_secs.load(Ordering::Relaxed)).unwrap_or(0));
        if let Ok(warn_at) = g.expires_at.checked_sub(lead)
            && warn_at > now
            && !lead.is_zero()
        {
            self.push(warn_at, Due::Warn, g.id, g.expires_at);
        }
        self.push(g.expires_at, Due::Expire, g.id, g.expires_at);
        if g.ends.idle_secs.is_some() && self.sessions.on_grant(g.id, None) == 0 {
            let fresh = !self
                .idle_since
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&g.id);
            if fresh {
                // A scheduled grant idles from its start, not from its approval.
                self.idle_from(&g, now.max(g.starts_at));
            }
        }
        self.grants.insert(g);
        drop(ended);
        self.metrics
            .grants_active
            .set(i64::try_from(self.grants.len()).unwrap_or(i64::MAX));
        self.wake.notify_one();
        true
    }

    /// The grant's idle clock starts now (its last session ended, or it was activated
    /// without one).
    fn idle_from(&self, g: &LiveGrant, now: Timestamp) {
        let Some(secs) = g.ends.idle_secs else { return };
        self.idle_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(g.id, now);
        let at = now
            .saturating_add(jiff::SignedDuration::from_secs(i64::try_from(secs).unwrap_or(i64::MAX)))
            .unwrap_or(now);
        self.push(at, Due::Idle, g.id, now);
        self.wake.notify_one();
    }

    /// A session on `grant_id` was admitted: an idle clock stops.
    pub fn session_joined(&self, grant_id: i64) {
        self.idle_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&grant_id);
    }

    /// Session `session_id` on `grant_id` is ending: the last one starts the grant's idle
    /// clock (for `idle_end` grants).
    pub fn session_leaving(&self, grant_id: i64, session_id: &str) {
        let Some(g) = self.grants.get(grant_id).filter(|g| g.ends.idle_secs.is_some()) else {
            return;
        };
        if self.sessions.on_grant(grant_id, Some(session_id)) == 0 {
            self.idle_from(&g, self.clock.now());
        }
    }

    /// End a grant now (revoke, release): remove it and kill its sessions.
    pub fn end(&self, grant_id: i64, reason: &KillReason) -> (Option<LiveGrant>, usize) {
        self.idle_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&grant_id);
        let g = if matches!(reason, KillReason::Revoked { .. } | KillReason::Released) {
            let now = self.clock.now();
            let mut ended = self.final_ends.lock().unwrap_or_else(|e| e.into_inner());
            if ended.len() >= 1024 {
                ended.retain(|_, at| now.duration_since(*at) < FINAL_END_MEMORY);
            }
            ended.insert(grant_id, now);
            self.grants.remove(grant_id)
        } else {
            self.grants.remove(grant_id)
        };
        self.metrics
            .grants_active
            .set(i64::try_from(self.grants.len()).unwrap_or(i64::MAX));
        let n = self.sessions.kill_grant(grant_id, reason);
        self.count_kills(reason, n);
        (g, n)
    }

    fn count_kills(&self, reason: &KillReason, n: usize) {
        if n > 0 {
            self.metrics
                .sessions_killed_total
                .with_label_values(&[reason.label()])
                .inc_by(u64::try_from(n).unwrap_or(0));
        }
    }

    /// Process everything due at `now`. Pure with respect to time: tests call it with a manual
    /// clock's instant.
    pub fn due(&self, now: Timestamp) -> Vec<LiveEvent> {
        let mut out = Vec::new();
        loop {
            let item = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                match q.peek() {
                    Some(Reverse((at, ..))) if *at <= now => q.pop(),
                    _ => None,
                }
            };
            let Some(Reverse((_, due, id, expires_at))) = item else {
                break;
            };
            if due == Due::Idle {
                // `expires_at` holds the idle start: stale when a session came (or went) since.
                let since = expires_at;
                let current = self
                    .idle_since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&id)
                    .copied();
                if current == Some(since)
                    && self.sessions.on_grant(id, None) == 0
                    && let Some(grant) = self.grants.get(id)
                {
                    out.push(LiveEvent::Idle { grant, since });
                }
                continue;
            }
            // Skip stale entries: the grant was ended or its end moved.
            let Some(live) = self.grants.get(id).filter(|g| g.expires_at == expires_at) else {
                continue;
            };
            match due {
                Due::Warn => {
                    let left = expires_at.duration_since(now);
                    let msg = format!(
                        "access grant for {} expires in {}s (at {}); run `jitgate extend {} --for 30m --reason ...` to ask for more time, or `jitgate done {}` if you are finished",
                        live.resource,
                        // Round up: 0.9 s left reads "1s", not "0s".
                        (left.as_secs_f64().ceil() as i64).max(0),
                        expires_at,
                        live.id,
                        live.id
                    );
                    self.sessions.warn_grant(id, &msg);
                    out.push(LiveEvent::Expiring { grant: live });
                }
                Due::Idle => {}
                Due::Expire => {
                    let reason = KillReason::Expired { at: expires_at };
                    let (g, n) = self.end(id, &reason);
                    let lag = now.duration_since(expires_at).as_secs_f64().max(0.0);
                    self.metrics.expiry_kill_lag_seconds.observe(lag);
                    if let Some(grant) = g {
                        out.push(LiveEvent::Expired { grant, sessions: n });
                    }
                }
            }
        }
        out
    }

    /// The next scheduled instant.
    pub fn next_wake(&self) -> Option<Timestamp> {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .peek()
            .map(|Reverse((at, ..))| *at)
    }

    /// Run the scheduler until `stop` is cancelled, reporting events on `events`.
    pub async fn run(self: Arc<Self>, events: mpsc::Sender<LiveEvent>, stop: CancellationToken) {
        loop {
            for ev in self.due(self.clock.now()) {
                if events.send(ev).await.is_err() {
                    return;
                }
            }
            let wait = match self.next_wake() {
                Some(at) => {
                    let d = at.duration_since(self.clock.now());
                    Duration::from_micros(u64::try_from(d.as_micros().max(0)).unwrap_or(0)).min(Duration::from_secs(60))
                }
                None => Duration::from_secs(60),
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified() => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::sessions::SessionInfo;
    use jiff::SignedDuration;

    fn live(id: i64, exp: Timestamp) -> LiveGrant {
        LiveGrant {
            id,
            identity: "alice".into(),
            resource: "prod-db".into(),
            access: "read-only".into(),
            expires_at: exp,
            starts_at: Timestamp::UNIX_EPOCH,
            policy: "p".into(),
            ends: Default::default(),
        }
    }

    fn setup() -> (ManualClock, Arc<Enforcer>) {
        let clock = ManualClock::new(Timestamp::from_second(1_000_000).unwrap_or(Timestamp::UNIX_EPOCH));
        let e = Enforcer::new(Arc::new(clock.clone()), Metrics::new(), 60);
        (clock, e)
    }

    #[test]
    fn expiry_removes_the_grant_and_kills_its_sessions() {
        let (clock, e) = setup();
        let exp = clock
            .now()
            .saturating_add(SignedDuration::from_secs(120))
            .unwrap_or(clock.now());
        e.activate(live(1, exp));
        let s = e.sessions.register(SessionInfo {
            id: "s-1".into(),
            protocol: "postgres".into(),
            identity: "alice".into(),
            resource: "prod-db".into(),
            access: "read-only".into(),
            grant_id: 1,
            client_addr: "x".into(),
            started_at: clock.now(),
        });
        assert!(e.due(clock.now()).is_empty());
        clock.advance(SignedDuration::from_secs(60));
        let ev = e.due(clock.now());
        assert!(matches!(ev.as_slice(), [LiveEvent::Expiring { .. }]));
        assert!(s.warnings.borrow().as_deref().unwrap_or("").contains("expires in 60s"));
        clock.advance(SignedDuration::from_secs(60));
        let ev = e.due(clock.now());
        assert!(
            matches!(ev.as_slice(), [LiveEvent::Expired { sessions: 1, .. }]),
            "{ev:?}"
        );
        assert!(s.kill.is_cancelled());
        assert!(matches!(s.kill_reason(), Some(KillReason::Expired { .. })));
        assert!(e.grants.is_empty());
    }

    #[test]
    fn extension_skips_the_stale_expiry() {
        let (clock, e) = setup();
        let exp = clock
            .now()
            .saturating_add(SignedDuration::from_secs(30))
            .unwrap_or(clock.now());
        e.activate(live(1, exp));
        let later = exp.saturating_add(SignedDuration::from_secs(600)).unwrap_or(exp);
        e.activate(live(1, later));
        clock.advance(SignedDuration::from_secs(31));
        assert!(e.due(clock.now()).is_empty(), "old expiry must not fire");
        assert!(e.grants.get(1).is_some());
        clock.set(later);
        let ev = e.due(clock.now());
        assert!(
            matches!(ev.as_slice(), [LiveEvent::Expiring { .. }, LiveEvent::Expired { .. }]),
            "{ev:?}"
        );
    }

    #[test]
    fn revoked_grant_does_not_expire_again() {
        let (clock, e) = setup();
        let exp = clock
            .now()
            .saturating_add(SignedDuration::from_secs(30))
            .unwrap_or(clock.now());
        e.activate(live(1, exp));
        let (g, n) = e.end(1, &KillReason::Revoked { by: "bob".into() });
        assert!(g.is_some() && n == 0);
        clock.advance(SignedDuration::from_secs(31));
        assert!(e.due(clock.now()).is_empty());
    }

    #[tokio::test]
    async fn the_task_fires_on_the_real_clock() {
        let e = Enforcer::new(Arc::new(crate::clock::SystemClock), Metrics::new(), 0);
        let (tx, mut rx) = mpsc::channel(4);
        let stop = CancellationToken::new();
        tokio::spawn(e.clone().run(tx, stop.clone()));
        let exp = Timestamp::now()
            .saturating_add(SignedDuration::from_millis(150))
            .unwrap_or(Timestamp::now());
        e.activate(live(9, exp));
        let ev = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
        let lag = Timestamp::now().duration_since(exp);
        assert!(matches!(ev, Ok(Some(LiveEvent::Expired { .. }))), "{ev:?}");
        assert!(lag < SignedDuration::from_millis(100), "lag {lag:?}");
        stop.cancel();
    }

    #[test]
    fn a_revoked_or_released_grant_is_never_brought_back_by_a_stale_snapshot() {
        let (clock, e) = setup();
        let end = clock.now() + SignedDuration::from_mins(60);
        assert!(e.activate(live(1, end)));
        e.end(1, &KillReason::Revoked { by: "bob".into() });
        // A store read taken before the revocation arrives after it.
        assert!(!e.activate(live(1, end)));
        assert!(e.grants.get(1).is_none());
        // Ended here without ever being cached (the feed's notice came first): still final.
        e.end(2, &KillReason::Released);
        assert!(!e.activate(live(2, end)));
        // Expiry is not final: an extension approved just before it may arrive just after.
        assert!(e.activate(live(3, clock.now() + SignedDuration::from_secs(1))));
        clock.advance(SignedDuration::from_secs(2));
        let _ = e.due(clock.now());
        assert!(e.grants.get(3).is_none());
        assert!(e.activate(live(3, clock.now() + SignedDuration::from_mins(30))));
    }
}
