//! Request on connect: the client is authenticated (AuthenticationOk sent, so libpq shows the
//! NoticeResponses that follow) and waits, told how its request stands, until the decision.
//! Approved: the login goes on (grant, upstream) and the session starts on the same
//! connection. Denied, cancelled, expired or waited too long: FATAL 28000 naming it. The
//! client closing the connection (Ctrl-C in psql) withdraws the request it made.

use bytes::BytesMut;
use jitgate_core::Gatekeeper;
use jitgate_core::onconnect::{Step, Waiter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::login::{Authed, Ready};
use super::{PgFrontend, send_error};
use crate::io::Stream;
use crate::protocol::{self, MAX_STARTUP, Severity};

/// What happened while waiting, decided outside the `select!` that found it.
enum Woke {
    Step(Step),
    ClientSent,
    ClientGone,
}

impl<G: Gatekeeper> PgFrontend<G> {
    /// Wait for the decision on the request `w` follows; `Some` once the session can start.
    pub(super) async fn wait_on_connect(
        &self,
        mut a: Authed,
        mut w: Waiter<G>,
        mut client: Stream,
    ) -> Option<(Ready, Stream)> {
        let mut hello = BytesMut::new();
        protocol::auth_ok(&mut hello);
        if client.write_all(&hello).await.is_err() {
            w.withdraw().await;
            return None;
        }
        // Whatever the client sends meanwhile is its first traffic (kept, bounded); its end
        // is the user giving up.
        let mut pending = std::mem::take(&mut a.client_leftover);
        loop {
            let woke = tokio::select! {
                s = w.next() => Woke::Step(s),
                r = client.read_buf(&mut pending) => match r {
                    Ok(0) | Err(_) => Woke::ClientGone,
                    Ok(_) => Woke::ClientSent,
                },
            };
            match woke {
                Woke::ClientGone => {
                    w.withdraw().await;
                    return None;
                }
                Woke::ClientSent if pending.len() > MAX_STARTUP => {
                    w.withdraw().await;
                    send_error(
                        &mut client,
                        "08P01",
                        "the client sent too much before its session started",
                        None,
                    )
                    .await;
                    return None;
                }
                Woke::ClientSent => {}
                Woke::Step(Step::Say(line)) => {
                    let mut n = BytesMut::new();
                    protocol::error_response(&mut n, Severity::Notice, "00000", &line, None);
                    if client.write_all(&n).await.is_err() {
                        w.withdraw().await;
                        return None;
                    }
                }
                Woke::Step(Step::Refuse(message)) => {
                    self.gk
                        .metrics()
                        .auth_failures_total
                        .with_label_values(&["postgres", "no_grant"])
                        .inc();
                    send_error(&mut client, "28000", &message, None).await;
                    return None;
                }
                Woke::Step(Step::Proceed) => break,
            }
        }
        a.client_leftover = pending;
        let r = tokio::time::timeout(self.cfg.startup_timeout, self.login_after_wait(&mut client, a)).await;
        match r {
            Ok(Ok(Some(ready))) => Some((ready, client)),
            Ok(Ok(None) | Err(_)) => None,
            Err(_) => {
                send_error(
                    &mut client,
                    "08006",
                    "jitgate could not log in to the database in time after the approval",
                    Some("connect again: the grant is live"),
                )
                .await;
                None
            }
        }
    }
}
