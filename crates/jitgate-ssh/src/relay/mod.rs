//! Channel relay between the client and the upstream, one task per channel with both directions
//! running concurrently.
//!
//! Flow control: each direction is its own pump (`client_to_upstream`, `upstream_to_client`),
//! waiting only for the SSH window of the side it writes to. The patched russh (vendor/README.md)
//! grants a sender window only for data its pump has read and never blocks its session loop on
//! a pump, so per channel and direction, window still usable + data waiting ≤ the target window
//! (2 MiB): memory is bounded by the window, never by the transfer, and neither direction waits
//! on the other (no deadlock with traffic both ways on one channel).
//!
//! Requests that want a reply (pty-req, exec, shell, subsystem, env) are forwarded upstream with
//! the same `want_reply`, and the upstream's success/failure is relayed back in order; requests
//! the gateway refuses itself (X11) are answered in their place in that order. Agent forwarding
//! is refused by russh (the handler's default); env requests never get a reply (see below).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use jitgate_audit::{AuditSink, Event, Kind};
use jitgate_core::{KillReason, Metrics};
use russh::{ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Disconnect, Sig, client, server};

use crate::conn::{ChannelSlot, Live, UpstreamEnd};

mod inbound;
mod outbound;
use crate::record::{LineAssembler, Recorder};
use crate::sftp::SftpWatch;

/// What a channel task needs.
pub(crate) struct ChanCtx {
    pub(crate) live: Arc<Live>,
    /// This channel's place among the connection's `max_channels`, held until the task ends.
    pub(crate) _slot: ChannelSlot,
    pub(crate) server: server::Handle,
    pub(crate) audit: AuditSink,
    pub(crate) metrics: Metrics,
    pub(crate) env_allow: Vec<String>,
    pub(crate) record_dir: Option<PathBuf>,
    pub(crate) max_text: usize,
}

impl ChanCtx {
    fn event(&self, kind: Kind) -> Event {
        self.live.event(kind)
    }

    async fn emit(&self, ev: Event) {
        if self.audit.emit(ev).await.is_err() {
            tracing::error!(session_id = %self.live.guard.info.id, "audit sink closed; ending the ssh session");
            self.live.guard.kill.cancel();
        }
    }

    fn clip(&self, s: &str) -> String {
        if s.len() <= self.max_text {
            return s.to_string();
        }
        format!("{}…", &s[..s.floor_char_boundary(self.max_text)])
    }
}

/// How the gateway says goodbye on a channel.
fn banner(pty: bool, text: &str) -> Bytes {
    if pty {
        Bytes::from(format!("\r\n[jitgate] {text}\r\n"))
    } else {
        Bytes::from(format!("[jitgate] {text}\n"))
    }
}

/// A channel opened on a connection that may not proceed (no grant, unknown target, upstream
/// refused): answer the first requests, print why on stderr, exit 1.
pub(crate) async fn refuse(channel: russh::Channel<server::Msg>, server: server::Handle, message: String) {
    let id = channel.id();
    let (mut rd, wr) = channel.split();
    let mut pty = false;
    let work = async {
        while let Some(msg) = rd.wait().await {
            match msg {
                ChannelMsg::RequestPty { want_reply, .. } => {
                    pty = true;
                    if want_reply {
                        let _ = server.channel_success(id).await;
                    }
                }
                ChannelMsg::RequestShell { want_reply }
                | ChannelMsg::Exec { want_reply, .. }
                | ChannelMsg::RequestSubsystem { want_reply, .. } => {
                    if want_reply {
                        let _ = server.channel_success(id).await;
                    }
                    break;
                }
                ChannelMsg::Close | ChannelMsg::Eof => return,
                _ => {}
            }
        }
        let text = if pty {
            format!("\r\njitgate: {message}\r\n")
        } else {
            format!("jitgate: {message}\n")
        };
        let _ = wr.extended_data_bytes(1, Bytes::from(text)).await;
        let _ = wr.exit_status(1).await;
        let _ = wr.eof().await;
        let _ = wr.close().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), work).await;
}

/// Reply bookkeeping: `true` = waiting for the upstream's answer, `false` = refused locally.
#[derive(Default)]
struct Replies(Mutex<VecDeque<bool>>);

impl Replies {
    fn push_upstream(&self) {
        if let Ok(mut q) = self.0.lock() {
            q.push_back(true);
        }
    }
    /// Returns true when the local failure can be sent now.
    fn push_local_failure(&self) -> bool {
        match self.0.lock() {
            Ok(mut q) if !q.is_empty() => {
                q.push_back(false);
                false
            }
            _ => true,
        }
    }
    /// The upstream answered: how many local failures follow it.
    fn upstream_answered(&self) -> usize {
        let Ok(mut q) = self.0.lock() else { return 0 };
        q.pop_front();
        let mut n = 0;
        while q.front() == Some(&false) {
            q.pop_front();
            n += 1;
        }
        n
    }
}

/// Sending one message to the upstream on a kill.
const SEND_LIMIT: Duration = Duration::from_millis(100);
/// How long a killed channel's upstream process has to exit after SIGTERM.
pub(crate) const TERM_GRACE: Duration = Duration::from_millis(300);
/// And after SIGKILL, before the upstream connection is closed.
pub(crate) const KILL_GRACE: Duration = Duration::from_millis(200);

/// Until the upstream reports the channel's process gone (exit-status, exit-signal, close),
/// within `limit`. Output still arriving is read and dropped (it also keeps the upstream's
/// window open, so the process is not stuck writing).
async fn exited(urd: &mut ChannelReadHalf, limit: Duration) -> bool {
    tokio::time::timeout(limit, async {
        while let Some(m) = urd.wait().await {
            match m {
                ChannelMsg::ExitStatus { .. } | ChannelMsg::ExitSignal { .. } => return true,
                // Closed without saying how the process ended: not a reported exit.
                ChannelMsg::Close => return false,
                _ => {}
            }
        }
        false
    })
    .await
    .unwrap_or(false)
}

/// Per-channel recording state.
struct Rec {
    pty: Option<(String, u32, u32)>,
    recorder: Option<Recorder>,
    lines: LineAssembler,
    sftp: Option<SftpWatch>,
    kind: &'static str,
    command: Option<String>,
    exit: Option<String>,
    bytes_up: u64,
    bytes_down: u64,
    upstream_end: Option<UpstreamEnd>,
}

impl Rec {
    fn new(max_text: usize) -> Self {
        Self {
            pty: None,
            recorder: None,
            lines: LineAssembler::new(max_text),
            sftp: None,
            kind: "session",
            command: None,
            exit: None,
            bytes_up: 0,
            bytes_down: 0,
            upstream_end: None,
        }
    }
}

/// Relay one session channel. `prelude`: the client's requests already read (and answered) by
/// a request on connect, forwarded first as if they had just arrived.
pub(crate) async fn session_channel(
    ctx: ChanCtx,
    client_ch: russh::Channel<server::Msg>,
    up_ch: russh::Channel<client::Msg>,
    prelude: Vec<ChannelMsg>,
) {
    let id = client_ch.id();
    ctx.live.channels.set(id, false);
    let (crd, cwr) = client_ch.split();
    let (urd, uwr) = up_ch.split();
    let mut h = Halves { crd, cwr, urd, uwr };
    let replies = Replies::default();
    let rec = Mutex::new(Rec::new(ctx.max_text));
    let (killed, u_done) = pump(&ctx, id, &mut h, &replies, &rec, prelude).await;
    if killed {
        end_killed(&ctx, id, &mut h, u_done, &rec).await;
    } else {
        let _ = h.uwr.close().await;
        let _ = h.cwr.close().await;
    }
    ctx.live.channels.remove(id);
    wrap_up(&ctx, &rec).await;
}

/// Both ends of a relayed session channel.
struct Halves {
    crd: ChannelReadHalf,
    cwr: ChannelWriteHalf<server::Msg>,
    urd: ChannelReadHalf,
    uwr: ChannelWriteHalf<client::Msg>,
}

/// Both directions until both are done (or one is and the other has had 5 s), or the kill.
/// Returns (killed, the upstream direction finished).
async fn pump(
    ctx: &ChanCtx,
    id: ChannelId,
    h: &mut Halves,
    replies: &Replies,
    rec: &Mutex<Rec>,
    prelude: Vec<ChannelMsg>,
) -> (bool, bool) {
    let Halves { crd, cwr, urd, uwr } = h;
    let (uwr, cwr) = (&*uwr, &*cwr);
    let kill = ctx.live.guard.kill.clone();
    let (mut c_done, mut u_done) = (false, false);
    let mut c2u = pin!(inbound::client_to_upstream(ctx, id, crd, uwr, replies, rec, prelude));
    let mut u2c = pin!(outbound::upstream_to_client(ctx, id, urd, cwr, replies, rec));
    let mut warnings = ctx.live.guard.warnings.clone();
    warnings.borrow_and_update();
    let mut warnings_open = true;
    loop {
        let grace = tokio::time::sleep(Duration::from_secs(5));
        // When one side closes, close the other at once: each peer waits for our CLOSE.
        tokio::select! {
            () = &mut c2u, if !c_done => {
                c_done = true;
                let _ = uwr.close().await;
            }
            () = &mut u2c, if !u_done => {
                u_done = true;
                let _ = cwr.close().await;
            }
            () = kill.cancelled() => return (true, u_done),
            r = warnings.changed(), if warnings_open => {
                // An expiry warning, written through the channel's window like its data.
                let text = match r {
                    Ok(()) => warnings.borrow_and_update().clone(),
                    Err(_) => { warnings_open = false; None }
                };
                if let Some(text) = text {
                    let pty = rec.lock().map(|r| r.pty.is_some()).unwrap_or(false);
                    let _ = tokio::time::timeout(Duration::from_millis(200), say(cwr, pty, &text)).await;
                }
            }
            () = grace, if c_done || u_done => break,
        }
        if c_done && u_done {
            break;
        }
    }
    (false, u_done)
}

/// A line from the gateway on the channel: on the terminal with a pty, else on stderr.
async fn say(cwr: &ChannelWriteHalf<server::Msg>, pty: bool, text: &str) {
    let b = banner(pty, text);
    if pty {
        let _ = cwr.data_bytes(b).await;
    } else {
        let _ = cwr.extended_data_bytes(1, b).await;
    }
}

/// A killed channel: the upstream process is ended and the client told why, at the same time.
async fn end_killed(ctx: &ChanCtx, id: ChannelId, h: &mut Halves, u_done: bool, rec: &Mutex<Rec>) {
    let reason = ctx.live.guard.kill_reason().unwrap_or(KillReason::Shutdown);
    let (pty, started) = rec
        .lock()
        .map(|r| (r.pty.is_some(), r.kind != "session"))
        .unwrap_or((false, true));
    let text = format!("{} — session closed", reason.message(&ctx.live.guard.info.resource));
    let Halves { crd, cwr, urd, uwr } = h;
    let upstream = end_upstream(ctx, urd, uwr, started && !u_done);
    let client = async {
        let goodbye = async {
            say(cwr, pty, &text).await;
            let _ = ctx
                .server
                .exit_signal_request(id, Sig::TERM, false, text.clone(), "en".into())
                .await;
            let _ = cwr.eof().await;
            let _ = cwr.close().await;
        };
        let _ = tokio::time::timeout(Duration::from_millis(300), goodbye).await;
        // Let the client close the channel (it has then printed our message and exits) before
        // the watcher disconnects: OpenSSH drops unwritten stderr when a disconnect arrives. A
        // client that stopped reading never does: the connection is cut.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(m) = crd.wait().await {
                if matches!(m, ChannelMsg::Close) {
                    break;
                }
            }
        })
        .await;
    };
    let (how, ()) = tokio::join!(upstream, client);
    ctx.live.upstream_ended(how);
    if let Ok(mut r) = rec.lock() {
        r.upstream_end = Some(how);
    }
}

/// The upstream process group (sshd turns `signal` into killpg) of a channel that runs one:
/// TERM, a short grace, KILL, another grace, and if no exit is reported still, the upstream
/// connection goes.
async fn end_upstream(
    ctx: &ChanCtx,
    urd: &mut ChannelReadHalf,
    uwr: &ChannelWriteHalf<client::Msg>,
    running: bool,
) -> UpstreamEnd {
    let how = if !running {
        UpstreamEnd::Nothing
    } else {
        let _ = tokio::time::timeout(SEND_LIMIT, uwr.signal(Sig::TERM)).await;
        if exited(urd, TERM_GRACE).await {
            UpstreamEnd::Term
        } else {
            let _ = tokio::time::timeout(SEND_LIMIT, uwr.signal(Sig::KILL)).await;
            if exited(urd, KILL_GRACE).await {
                UpstreamEnd::Kill
            } else {
                let _ = tokio::time::timeout(
                    SEND_LIMIT,
                    ctx.live
                        .upstream
                        .disconnect(Disconnect::ByApplication, "session ended by jitgate", "en"),
                )
                .await;
                UpstreamEnd::Disconnected
            }
        }
    };
    let _ = tokio::time::timeout(SEND_LIMIT, uwr.close()).await;
    how
}

/// Wrap up: the recording, open sftp files, a channel summary for the audit log.
async fn wrap_up(ctx: &ChanCtx, rec: &Mutex<Rec>) {
    let (summary, ops) = {
        let Ok(mut r) = rec.lock() else { return };
        let ops = r.sftp.as_mut().map(SftpWatch::finish).unwrap_or_default();
        let recording = r.recorder.take().map(|rc| {
            let p = rc.path().display().to_string();
            rc.finish();
            p
        });
        (
            jitgate_audit::details::ChannelClosed {
                channel: r.kind,
                command: r.command.clone(),
                exit: r.exit.clone(),
                bytes_from_client: r.bytes_up,
                bytes_to_client: r.bytes_down,
                recording,
                upstream_end: r.upstream_end.map(|u| format!("{u:?}").to_lowercase()),
            },
            ops,
        )
    };
    inbound::emit_sftp(ctx, ops).await;
    ctx.emit(ctx.event(Kind::SshChannelClosed).detail(summary)).await;
}

/// Relay a `direct-tcpip` channel (`ssh -L`): bytes both ways, EOF and close.
pub(crate) async fn forward_channel(
    ctx: ChanCtx,
    client_ch: russh::Channel<server::Msg>,
    up_ch: russh::Channel<client::Msg>,
) {
    let (mut crd, cwr) = client_ch.split();
    let (mut urd, uwr) = up_ch.split();
    let kill = ctx.live.guard.kill.clone();
    let (mut up, mut down) = (0u64, 0u64);
    let c2u = async {
        while let Some(m) = crd.wait().await {
            let ok = match m {
                ChannelMsg::Data { data } => {
                    up += data.len() as u64;
                    uwr.data_bytes(data).await.is_ok()
                }
                ChannelMsg::Eof => uwr.eof().await.is_ok(),
                ChannelMsg::Close => break,
                _ => true,
            };
            if !ok {
                break;
            }
        }
        let _ = uwr.close().await;
    };
    let u2c = async {
        while let Some(m) = urd.wait().await {
            let ok = match m {
                ChannelMsg::Data { data } => {
                    down += data.len() as u64;
                    cwr.data_bytes(data).await.is_ok()
                }
                ChannelMsg::Eof => cwr.eof().await.is_ok(),
                ChannelMsg::Close => break,
                _ => true,
            };
            if !ok {
                break;
            }
        }
        let _ = cwr.close().await;
    };
    tokio::select! {
        _ = async { tokio::join!(c2u, u2c) } => {}
        () = kill.cancelled() => {
            let _ = uwr.close().await;
            let _ = cwr.close().await;
        }
    }
    ctx.metrics.bytes_total.with_label_values(&["ssh", "in"]).inc_by(up);
    ctx.metrics.bytes_total.with_label_values(&["ssh", "out"]).inc_by(down);
    ctx.emit(
        ctx.event(Kind::SshChannelClosed)
            .detail(jitgate_audit::details::ForwardClosed {
                channel: "direct-tcpip",
                bytes_from_client: up,
                bytes_to_client: down,
            }),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::inbound::env_allowed;
    use super::*;

    #[test]
    fn env_allow_list() {
        let allow = vec!["LANG".to_string(), "LC_*".to_string()];
        assert!(env_allowed(&allow, "LANG"));
        assert!(env_allowed(&allow, "LC_ALL"));
        assert!(!env_allowed(&allow, "LD_PRELOAD"));
        assert!(!env_allowed(&allow, "LANGUAGE"));
    }

    #[test]
    fn local_failures_keep_their_place_in_line() {
        let r = Replies::default();
        assert!(r.push_local_failure(), "nothing pending: answer now");
        r.push_upstream();
        assert!(!r.push_local_failure());
        assert!(!r.push_local_failure());
        r.push_upstream();
        assert_eq!(r.upstream_answered(), 2);
        assert_eq!(r.upstream_answered(), 0);
        assert!(r.push_local_failure());
    }
}
