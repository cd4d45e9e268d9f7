//! Upstream → client: data (recorded, read by the SFTP observer), exit status and signal, and
//! the upstream's answers to forwarded requests, with the gateway's own refusals in their place
//! in line.

use std::sync::Mutex;

use russh::{ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, server};

use super::{ChanCtx, Rec, Replies};

pub(super) async fn upstream_to_client(
    ctx: &ChanCtx,
    id: ChannelId,
    urd: &mut ChannelReadHalf,
    cwr: &ChannelWriteHalf<server::Msg>,
    replies: &Replies,
    rec: &Mutex<Rec>,
) {
    let bytes_out = ctx.metrics.bytes_total.with_label_values(&["ssh", "out"]);
    while let Some(msg) = urd.wait().await {
        let ok = match msg {
            ChannelMsg::Data { data } => {
                bytes_out.inc_by(data.len() as u64);
                if let Ok(mut r) = rec.lock() {
                    r.bytes_down += data.len() as u64;
                    if let Some(rc) = r.recorder.as_mut() {
                        rc.output(&data);
                    }
                    if let Some(w) = r.sftp.as_mut() {
                        w.server(&data);
                    }
                }
                cwr.data_bytes(data).await.is_ok()
            }
            ChannelMsg::ExtendedData { data, ext } => {
                bytes_out.inc_by(data.len() as u64);
                if let Ok(mut r) = rec.lock() {
                    r.bytes_down += data.len() as u64;
                    if let Some(rc) = r.recorder.as_mut() {
                        rc.output(&data);
                    }
                }
                cwr.extended_data_bytes(ext, data).await.is_ok()
            }
            ChannelMsg::Eof => cwr.eof().await.is_ok(),
            ChannelMsg::Close => break,
            ChannelMsg::ExitStatus { exit_status } => {
                if let Ok(mut r) = rec.lock() {
                    r.exit = Some(exit_status.to_string());
                }
                cwr.exit_status(exit_status).await.is_ok()
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            } => {
                if let Ok(mut r) = rec.lock() {
                    r.exit = Some(format!("signal {signal_name:?}"));
                }
                ctx.server
                    .exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag)
                    .await
                    .is_ok()
            }
            ChannelMsg::Success | ChannelMsg::Failure => {
                let ok = matches!(msg, ChannelMsg::Success);
                let locals = replies.upstream_answered();
                let r = if ok {
                    ctx.server.channel_success(id).await
                } else {
                    ctx.server.channel_failure(id).await
                };
                for _ in 0..locals {
                    let _ = ctx.server.channel_failure(id).await;
                }
                r.is_ok()
            }
            _ => true,
        };
        if !ok {
            break;
        }
    }
}
