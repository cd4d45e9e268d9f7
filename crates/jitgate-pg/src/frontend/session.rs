//! A logged-in session: admitted by the gatekeeper, told it is in, relayed, and ended in the
//! registry and audit with the reason it ended.

use bytes::BytesMut;
use jitgate_core::{Admission, Gatekeeper, KillReason, SessionInfo, SessionRefused};
use tokio::io::AsyncWriteExt;

use super::login::Ready;
use super::{CancelTarget, PgFrontend, send_error};
use crate::io::Stream;
use crate::protocol;
use crate::relay::{self, End, RelayCtx};
use crate::upstream::{self, Target};

impl<G: Gatekeeper> PgFrontend<G> {
    /// Admit, greet, relay, and record how it ended.
    pub(super) async fn run_session(&self, r: Ready, mut client: Stream) {
        let Ready {
            upstream,
            info,
            read_only,
            target,
            our_key,
            client_leftover,
            upstream_user,
            functions,
            greeted,
            notices,
        } = r;
        // Admitted (registered, re-checked, recorded) before the client is told it is in.
        let guard = match self.gk.open_session(info.clone()).await {
            Ok(g) => g,
            Err(refused) => {
                let (code, hint) = match &refused {
                    SessionRefused::GrantEnded(_) => ("57P01", None),
                    SessionRefused::StoreUnavailable(_) => ("57P03", Some("operators: see the gateway log")),
                    SessionRefused::AuditUnavailable(_) => ("58030", Some("operators: see the gateway log")),
                    SessionRefused::ShuttingDown => ("57P03", Some("live sessions continue until the drain ends")),
                };
                send_error(&mut client, code, &refused.message(), hint).await;
                return;
            }
        };
        let mut hello = BytesMut::new();
        if !greeted {
            protocol::auth_ok(&mut hello);
        }
        for n in &notices {
            protocol::error_response(&mut hello, protocol::Severity::Notice, "00000", n, None);
        }
        for (k, v) in &upstream.params {
            protocol::parameter_status(&mut hello, k, v);
        }
        protocol::backend_key(&mut hello, our_key.0, &our_key.1);
        protocol::ready(&mut hello, b'I');
        if client.write_all(&hello).await.is_err() {
            self.gk.session_ended(&info, "error", "client went away", None).await;
            return;
        }
        self.cancels.insert(
            our_key.clone(),
            CancelTarget {
                target: target.clone(),
                pid: upstream.pid,
                key: upstream.key,
            },
        );
        tracing::info!(session_id = %info.id, identity = %info.identity, resource = %info.resource, access = %info.access, grant_id = info.grant_id, "postgres session started");
        let ctx = RelayCtx {
            guard,
            read_only,
            classifier: self.classifier.clone(),
            audit: self.cfg.audit.clone(),
            metrics: self.gk.metrics().clone(),
            max_text: self.cfg.max_text,
            max_message: self.cfg.max_message,
            audit_statements: self.cfg.audit_statements,
            upstream_user,
            functions: (!read_only).then_some(functions),
            refusal_hint: format!(
                "this session runs under a read-only grant; ask for write access: jitgate request {} --access read-write --reason \"...\"",
                info.resource
            ),
        };
        let end = relay::run(&ctx, client, upstream.io, upstream.leftover, client_leftover).await;
        self.cancels.remove(&our_key);
        let (outcome, reason) = self.ended(&end, &info, &target, upstream.pid, upstream.key);
        if let End::Killed(KillReason::Expired { at }) = &end {
            let lag = jiff::Timestamp::now().duration_since(*at).as_secs_f64().max(0.0);
            tracing::info!(session_id = %info.id, lag_ms = lag * 1000.0, "postgres session killed at grant expiry");
        }
        tracing::info!(session_id = %info.id, outcome = %outcome, reason = %reason, "postgres session ended");
        self.gk.session_ended(&info, &outcome, &reason, None).await;
        // Only now does the session leave the registry (see `relay::run`).
        drop(ctx);
    }

    /// What a session's end is called in the registry and audit. A session the gateway ended
    /// also has its backend's query cancelled.
    fn ended(&self, end: &End, info: &SessionInfo, target: &Target, pid: i32, key: i32) -> (String, String) {
        match end {
            End::Client => ("ok".to_string(), "client disconnected".to_string()),
            End::Server => (
                "server_closed".to_string(),
                "the database closed the connection".to_string(),
            ),
            End::Killed(_) | End::Breach(_) | End::Violation(_) => {
                // Interrupt whatever the backend is running, so it exits now rather than at its
                // next write; the socket is already closed behind it. In the background and a
                // few at a time: when a grant held by hundreds of sessions ends, the goodbyes go
                // out first and the cancel connections (a backend fork each) do not crowd them.
                let (target, permits) = (target.clone(), self.kill_cancels.clone());
                tokio::spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    if let Err(e) = upstream::cancel(&target, pid, key).await {
                        tracing::warn!(error = %e, "cancelling the upstream query after a kill failed");
                    }
                });
                match end {
                    End::Killed(k) => (k.label().to_string(), k.message(&info.resource)),
                    End::Breach(why) => ("breach".to_string(), why.clone()),
                    End::Violation(why) => ("protocol_violation".to_string(), why.clone()),
                    _ => ("error".to_string(), String::new()),
                }
            }
            End::Error(e) => ("error".to_string(), e.clone()),
        }
    }
}
