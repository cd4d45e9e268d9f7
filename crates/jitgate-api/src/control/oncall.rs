//! `[[oncall]]` sources: read every `poll_every` (an HTTP GET, or a file), parsed into who is
//! on call, and offered to the engine as a snapshot when a request is planned. Data older than
//! a source's `max_age` (a source that stopped answering, a file nobody refreshes) is stale:
//! its on-call conditions admit nobody, so requests go to the approvers. Nothing here can make
//! a request auto-approved that the policy's other conditions refuse.

use std::collections::HashMap;

use super::*;
use jitgate_core::catalog::{OnCallLocation, OnCallSource};
use jitgate_core::oncall::{self, OnCallView, Roster, SourceView};

/// The most of an answer read.
const MAX_ANSWER: u64 = 1 << 20;

/// What is known of each source, by name.
#[derive(Debug, Default)]
pub(crate) struct OnCallState {
    sources: HashMap<String, Polled>,
}

#[derive(Debug, Default, Clone)]
struct Polled {
    /// When the data was current (the read, the file's mtime, or the answer's generated_at).
    as_of: Option<Timestamp>,
    levels: oncall::Shifts,
    last_try: Option<Timestamp>,
    error: Option<String>,
}

impl ControlPlane {
    /// Who is on call, as the engine sees it now.
    pub fn oncall_view(&self) -> OnCallView {
        let now = self.now();
        let cat = self.catalog();
        let state = self.oncall.lock().unwrap_or_else(|e| e.into_inner());
        let sources = cat
            .oncall
            .iter()
            .map(|s| {
                let view = match state.sources.get(&s.name) {
                    Some(p) if fresh(p, s, now) => SourceView::Fresh(p.levels.clone()),
                    _ => SourceView::Stale,
                };
                (s.name.clone(), view)
            })
            .collect();
        OnCallView { sources }
    }

    /// Each source's state, for `GET /v1/oncall` (admins and auditors).
    pub fn oncall_status(&self, who: &Principal) -> ControlResult<Vec<crate::wire::OnCallStatus>> {
        let cat = self.catalog();
        if !cat.is_auditor(&who.groups) {
            return Err(ControlError::forbidden(
                "only admins and auditors may see the on-call sources",
                None,
            ));
        }
        let now = self.now();
        let state = self.oncall.lock().unwrap_or_else(|e| e.into_inner());
        Ok(cat
            .oncall
            .iter()
            .map(|s| {
                let p = state.sources.get(&s.name).cloned().unwrap_or_default();
                let mut on_call: Vec<(String, u32)> = p
                    .levels
                    .iter()
                    .filter_map(|(k, v)| oncall::level_at(v, now).map(|l| (k.clone(), l)))
                    .collect();
                on_call.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
                crate::wire::OnCallStatus {
                    name: s.name.clone(),
                    format: s.format.as_str().into(),
                    fresh: fresh(&p, s, now),
                    as_of: p.as_of,
                    age_secs: p.as_of.map(|t| now.duration_since(t).as_secs().max(0)),
                    max_age: s.max_age.to_string(),
                    last_error: p.error.clone(),
                    on_call: on_call
                        .into_iter()
                        .map(|(identity, level)| crate::wire::OnCallEntry { identity, level })
                        .collect(),
                }
            })
            .collect())
    }

    /// Read every source whose `poll_every` has passed, then refresh the freshness gauges.
    /// Called every second by the background task (and by tests).
    pub async fn poll_oncall(&self) {
        let cat = self.catalog();
        let now = self.now();
        for s in &cat.oncall {
            let due = {
                let mut state = self.oncall.lock().unwrap_or_else(|e| e.into_inner());
                let p = state.sources.entry(s.name.clone()).or_default();
                let due = p.last_try.is_none_or(|t| {
                    now.duration_since(t).as_secs() >= i64::try_from(s.poll_every.secs()).unwrap_or(i64::MAX)
                });
                if due {
                    p.last_try = Some(now);
                }
                due
            };
            if !due {
                continue;
            }
            let got = read_source(s, now).await;
            let mut state = self.oncall.lock().unwrap_or_else(|e| e.into_inner());
            let p = state.sources.entry(s.name.clone()).or_default();
            match got {
                Ok(roster) => {
                    self.metrics
                        .oncall_polls_total
                        .with_label_values(&[s.name.as_str(), "ok"])
                        .inc();
                    if p.error.take().is_some() {
                        tracing::info!(source = %s.name, on_call = roster.levels.len(), "on-call source answers again");
                    }
                    p.as_of = Some(roster.as_of.map_or(now, |t| t.min(now)));
                    p.levels = roster.levels;
                }
                Err(why) => {
                    self.metrics
                        .oncall_polls_total
                        .with_label_values(&[s.name.as_str(), "error"])
                        .inc();
                    if p.error.as_deref() != Some(why.as_str()) {
                        tracing::warn!(source = %s.name, error = %why, "on-call source could not be read; its data ages (stale after max_age: manual approval)");
                    }
                    p.error = Some(why);
                }
            }
        }
        self.oncall_gauges(&cat, now);
    }

    fn oncall_gauges(&self, cat: &Catalog, now: Timestamp) {
        let state = self.oncall.lock().unwrap_or_else(|e| e.into_inner());
        for s in &cat.oncall {
            let p = state.sources.get(&s.name);
            let is_fresh = p.is_some_and(|p| fresh(p, s, now));
            self.metrics
                .oncall_source_fresh
                .with_label_values(&[s.name.as_str()])
                .set(i64::from(is_fresh));
            if let Some(t) = p.and_then(|p| p.as_of) {
                self.metrics
                    .oncall_source_age_seconds
                    .with_label_values(&[s.name.as_str()])
                    .set(now.duration_since(t).as_secs().max(0));
            }
        }
    }
}

fn fresh(p: &Polled, s: &OnCallSource, now: Timestamp) -> bool {
    p.as_of
        .is_some_and(|t| now.duration_since(t).as_secs() <= i64::try_from(s.max_age.secs()).unwrap_or(i64::MAX))
}

/// One read of a source. Errors say what went wrong, never the credential.
async fn read_source(s: &OnCallSource, now: Timestamp) -> Result<Roster, String> {
    match &s.location {
        OnCallLocation::File(path) => {
            let meta = tokio::fs::metadata(path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if meta.len() > MAX_ANSWER {
                return Err(format!("{} is larger than 1 MiB", path.display()));
            }
            let body = tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let mut roster = oncall::parse(s.format, &body, now)?;
            // A file is as current as its last write (or its generated_at, if older).
            let written = meta
                .modified()
                .ok()
                .and_then(|m| Timestamp::try_from(m).ok())
                .unwrap_or(now)
                // A file dated in the future (a clock ahead, a copied mtime) is as current as
                // now, never fresher: it goes stale max_age after this read at the latest.
                .min(now);
            roster.as_of = Some(roster.as_of.map_or(written, |g| g.min(written)));
            Ok(roster)
        }
        OnCallLocation::Url(url) => {
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(std::time::Duration::from_secs(s.timeout.secs().max(1)))
                .build()
                .map_err(|e| e.to_string())?;
            let mut req = client
                .get(url)
                .header("accept", "application/vnd.pagerduty+json;version=2, application/json");
            if let Some(c) = &s.credential {
                let v = c
                    .resolve()
                    .map_err(|e| format!("its credential is not available ({e})"))?;
                req = req.header(s.header.as_str(), v);
            }
            let mut resp = req.send().await.map_err(|e| {
                if e.is_timeout() {
                    format!("no answer within {}", s.timeout)
                } else {
                    "it could not be reached".to_string()
                }
            })?;
            let status = resp.status();
            if !status.is_success() {
                return Err(format!("it answered HTTP {}", status.as_u16()));
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|_| "the answer was cut off".to_string())? {
                body.extend_from_slice(&chunk);
                if body.len() as u64 > MAX_ANSWER {
                    return Err("the answer is larger than 1 MiB".into());
                }
            }
            oncall::parse(s.format, &body, now)
        }
    }
}
