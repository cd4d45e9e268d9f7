//! Client → upstream: data (recorded, typed commands and SFTP operations audited) and channel
//! requests (pty, shell, exec, subsystem, env, window changes, signals) forwarded in order.

use std::sync::Mutex;

use bytes::Bytes;
use jitgate_audit::Kind;
use russh::{ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, client};

use super::{ChanCtx, Rec, Replies};
use crate::record::{Header, Recorder};
use crate::sftp::SftpWatch;

/// What the client's data showed, audited once the recording lock is let go.
enum Note {
    Lines(Vec<String>),
    Sftp(Vec<crate::sftp::SftpOp>),
}

pub(super) async fn client_to_upstream(
    ctx: &ChanCtx,
    id: ChannelId,
    crd: &mut ChannelReadHalf,
    uwr: &ChannelWriteHalf<client::Msg>,
    replies: &Replies,
    rec: &Mutex<Rec>,
    prelude: Vec<ChannelMsg>,
) {
    let bytes_in = ctx.metrics.bytes_total.with_label_values(&["ssh", "in"]);
    let mut prelude = prelude.into_iter();
    loop {
        let msg = match prelude.next() {
            Some(m) => m,
            None => match crd.wait().await {
                Some(m) => m,
                None => break,
            },
        };
        let ok = match msg {
            ChannelMsg::Data { data } => {
                bytes_in.inc_by(data.len() as u64);
                observe_input(ctx, rec, &data).await;
                uwr.data_bytes(data).await.is_ok()
            }
            ChannelMsg::ExtendedData { data, ext } => uwr.extended_data_bytes(ext, data).await.is_ok(),
            ChannelMsg::Eof => uwr.eof().await.is_ok(),
            ChannelMsg::Close => break,
            ChannelMsg::RequestPty {
                want_reply,
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
            } => {
                if let Ok(mut r) = rec.lock() {
                    r.pty = Some((term.clone(), col_width, row_height));
                }
                ctx.live.channels.set(id, true);
                if want_reply {
                    replies.push_upstream();
                }
                uwr.request_pty(
                    want_reply,
                    &term,
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                    &terminal_modes,
                )
                .await
                .is_ok()
            }
            ChannelMsg::RequestShell { want_reply } => {
                start_recording(ctx, rec);
                ctx.emit(
                    ctx.event(Kind::SshShell)
                        .detail(jitgate_audit::details::Shell { login: &ctx.live.login }),
                )
                .await;
                if want_reply {
                    replies.push_upstream();
                }
                uwr.request_shell(want_reply).await.is_ok()
            }
            ChannelMsg::Exec { want_reply, command } => {
                exec(ctx, rec, &command).await;
                if want_reply {
                    replies.push_upstream();
                }
                uwr.exec(want_reply, command).await.is_ok()
            }
            ChannelMsg::RequestSubsystem { want_reply, name } => {
                subsystem(ctx, rec, &name).await;
                if want_reply {
                    replies.push_upstream();
                }
                uwr.request_subsystem(want_reply, &name).await.is_ok()
            }
            // russh reports every env request as wanting a reply (it keeps only the latest
            // request's flag); OpenSSH never asks for one, so env is forwarded without a reply
            // and refused silently, as sshd does for names outside AcceptEnv.
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } if env_allowed(&ctx.env_allow, &variable_name) => {
                uwr.set_env(false, variable_name, variable_value).await.is_ok()
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } => {
                if let Ok(mut r) = rec.lock() {
                    if let Some(rc) = r.recorder.as_mut() {
                        rc.resize(col_width, row_height);
                    }
                    if let Some(p) = r.pty.as_mut() {
                        p.1 = col_width;
                        p.2 = row_height;
                    }
                }
                uwr.window_change(col_width, row_height, pix_width, pix_height)
                    .await
                    .is_ok()
            }
            ChannelMsg::Signal { signal } => uwr.signal(signal).await.is_ok(),
            // Agent forwarding is refused by russh itself (the handler says no).
            ChannelMsg::RequestX11 { want_reply: true, .. } => {
                if replies.push_local_failure() {
                    let _ = ctx.server.channel_failure(id).await;
                }
                true
            }
            _ => true,
        };
        if !ok {
            break;
        }
    }
}

/// Client data: counted, recorded, and read for typed command lines (a shell) or SFTP
/// operations (the sftp subsystem), which are audited.
async fn observe_input(ctx: &ChanCtx, rec: &Mutex<Rec>, data: &Bytes) {
    let note = rec.lock().ok().and_then(|mut r| {
        r.bytes_up += data.len() as u64;
        if let Some(rc) = r.recorder.as_mut() {
            rc.input(data);
        }
        if r.kind == "shell" {
            let l = r.lines.feed(data);
            (!l.is_empty()).then_some(Note::Lines(l))
        } else if let Some(w) = r.sftp.as_mut() {
            let ops = w.client(data);
            (!ops.is_empty()).then_some(Note::Sftp(ops))
        } else {
            None
        }
    });
    match note {
        Some(Note::Lines(lines)) => {
            for l in lines {
                ctx.emit(ctx.event(Kind::SshCommand).detail(jitgate_audit::details::ShellLine {
                    line: ctx.clip(&l),
                    login: &ctx.live.login,
                }))
                .await;
            }
        }
        Some(Note::Sftp(ops)) => emit_sftp(ctx, ops).await,
        None => {}
    }
}

/// An exec request: audited with its command; recorded when it has a terminal.
async fn exec(ctx: &ChanCtx, rec: &Mutex<Rec>, command: &[u8]) {
    let text = String::from_utf8_lossy(command).into_owned();
    let pty = if let Ok(mut r) = rec.lock() {
        r.kind = "exec";
        r.command = Some(ctx.clip(&text));
        r.pty.is_some()
    } else {
        false
    };
    if pty {
        start_recording(ctx, rec);
    }
    ctx.emit(ctx.event(Kind::SshExec).detail(jitgate_audit::details::Exec {
        command: ctx.clip(&text),
        login: &ctx.live.login,
        pty,
    }))
    .await;
}

/// A subsystem request: audited; the sftp subsystem gets its observer.
async fn subsystem(ctx: &ChanCtx, rec: &Mutex<Rec>, name: &str) {
    if let Ok(mut r) = rec.lock() {
        r.kind = "subsystem";
        r.command = Some(ctx.clip(name));
        if name == "sftp" {
            r.sftp = Some(SftpWatch::default());
        }
    }
    ctx.emit(ctx.event(Kind::SshSubsystem).detail(jitgate_audit::details::Subsystem {
        name: ctx.clip(name),
        login: &ctx.live.login,
    }))
    .await;
}

pub(super) async fn emit_sftp(ctx: &ChanCtx, ops: Vec<crate::sftp::SftpOp>) {
    for op in ops {
        ctx.emit(ctx.event(Kind::SshSftp).detail(jitgate_audit::details::Sftp {
            op: op.op,
            path: ctx.clip(&op.path),
            path2: op.path2.as_deref().map(|p| ctx.clip(p)),
            bytes_read: op.bytes_read,
            bytes_written: op.bytes_written,
        }))
        .await;
    }
}

pub(super) fn env_allowed(allow: &[String], name: &str) -> bool {
    allow.iter().any(|a| match a.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => a == name,
    })
}

/// A shell, or an exec with a terminal: recorded (asciicast) when `[ssh] record_dir` is set.
fn start_recording(ctx: &ChanCtx, rec: &Mutex<Rec>) {
    let Ok(mut r) = rec.lock() else { return };
    // A shell whether or not it is recorded (its commands are audited, its process ended on a
    // kill).
    if r.kind == "session" {
        r.kind = "shell";
    }
    let Some(dir) = &ctx.record_dir else { return };
    if r.recorder.is_some() {
        return;
    }
    let Some((term, cols, rows)) = r.pty.clone() else {
        return;
    };
    let info = &ctx.live.guard.info;
    let n = ctx.live.recordings.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let name = if n == 0 {
        format!("{}.cast", info.id)
    } else {
        format!("{}.{n}.cast", info.id)
    };
    let title = format!("{} → {}@{}", info.identity, ctx.live.login, info.resource);
    match Recorder::create(
        &dir.join(&name),
        &Header {
            width: cols,
            height: rows,
            term: &term,
            title: &title,
        },
    ) {
        Ok(rc) => r.recorder = Some(rc),
        Err(e) => tracing::error!(session_id = %info.id, error = %e, "cannot create the session recording"),
    }
}
