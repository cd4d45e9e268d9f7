//! Request on connect over SSH. A session channel opened without a grant is held here: its
//! requests (pty, env, shell or exec) are read and answered, the reason comes from
//! `JITGATE_REASON` (`ssh -o SetEnv=...`) or, on an interactive terminal, from a prompt (and
//! the duration from `JITGATE_FOR`, `LOGIN@RESOURCE+DURATION` or a second prompt), the
//! request is made and followed with status lines. Approved: the session opens upstream and
//! the held requests are forwarded first, as if they had just arrived. Ctrl-C or closing the
//! channel withdraws the request.

use std::time::Duration;

use bytes::Bytes;
use jitgate_core::HumanDuration;
use jitgate_core::model::Principal;
use jitgate_core::onconnect::{Ask, Step, Waiter};
use jitgate_core::{Gatekeeper, engine};
use russh::server::{self, Msg};
use russh::{Channel, ChannelMsg};

use super::handler::{Connector, NoGo, NoGrant};
use crate::relay;

/// How long the prompts wait for the user's answers.
const PROMPT_LIMIT: Duration = Duration::from_secs(300);
/// The longest reason typed at the prompt.
const MAX_REASON: usize = 500;
/// Input of a command without a terminal held while it waits (`tar c . | ssh ... tar x`), to
/// be sent once the session opens.
const MAX_HELD_INPUT: usize = 1 << 20;

/// A channel waiting for a request on connect.
pub(super) struct Asking<G: Gatekeeper> {
    pub(super) c: Connector<G>,
    pub(super) principal: Principal,
    /// The SSH user name (the target).
    pub(super) user: String,
    pub(super) no_grant: NoGrant,
    pub(super) server: server::Handle,
    /// `[gateway] wait_on_connect`.
    pub(super) limit: Duration,
}

/// The channel's requests up to its shell, exec or subsystem.
#[derive(Default)]
struct Held {
    prelude: Vec<ChannelMsg>,
    pty: bool,
    shell: bool,
    reason: Option<String>,
    duration: Option<String>,
    ticket: Option<String>,
    /// Bytes of input held.
    input: usize,
}

/// A line from the gateway on the channel: on the terminal with a pty, else on stderr.
async fn say(ch: &Channel<Msg>, pty: bool, text: &str) {
    if pty {
        let _ = ch.data_bytes(Bytes::from(format!("{text}\r\n"))).await;
    } else {
        let _ = ch.extended_data_bytes(1, Bytes::from(format!("{text}\n"))).await;
    }
}

async fn raw(ch: &Channel<Msg>, b: &[u8]) {
    let _ = ch.data_bytes(Bytes::copy_from_slice(b)).await;
}

/// The goodbye: the message, exit status 1, close.
async fn fail(ch: &Channel<Msg>, pty: bool, text: &str) {
    let t = if pty {
        format!("\r\njitgate: {text}\r\n")
    } else {
        format!("jitgate: {text}\n")
    };
    let _ = ch.extended_data_bytes(1, Bytes::from(t)).await;
    let _ = ch.exit_status(1).await;
    let _ = ch.eof().await;
    let _ = ch.close().await;
}

/// A line typed on the terminal (raw mode: the gateway echoes), `None` on Ctrl-C, Ctrl-D on
/// an empty line, or the channel closing. Window changes are kept for the upstream.
async fn read_line(ch: &mut Channel<Msg>, held: &mut Held, prompt: &str) -> Option<String> {
    raw(ch, prompt.as_bytes()).await;
    let mut line: Vec<u8> = Vec::new();
    loop {
        match ch.wait().await? {
            ChannelMsg::Data { data } => {
                for &b in data.iter() {
                    match b {
                        b'\r' | b'\n' => {
                            raw(ch, b"\r\n").await;
                            return Some(String::from_utf8_lossy(&line).trim().to_string());
                        }
                        0x03 => {
                            raw(ch, b"^C\r\n").await;
                            return None;
                        }
                        0x04 if line.is_empty() => return None,
                        0x7f | 0x08 => {
                            // One character back (its UTF-8 continuation bytes with it).
                            while let Some(last) = line.pop() {
                                if last & 0xC0 != 0x80 {
                                    break;
                                }
                            }
                            raw(ch, b"\x08 \x08").await;
                        }
                        0x15 => {
                            for _ in 0..String::from_utf8_lossy(&line).chars().count() {
                                raw(ch, b"\x08 \x08").await;
                            }
                            line.clear();
                        }
                        b if b >= 0x20 && line.len() < MAX_REASON => {
                            line.push(b);
                            raw(ch, &[b]).await;
                        }
                        _ => {}
                    }
                }
            }
            m @ ChannelMsg::WindowChange { .. } => held.prelude.push(m),
            ChannelMsg::Close => return None,
            _ => {}
        }
    }
}

/// Read the channel's requests up to its shell, exec or subsystem, answering each; the
/// `JITGATE_*` variables are taken, not forwarded.
async fn hold(ch: &mut Channel<Msg>, server: &server::Handle) -> Option<Held> {
    let id = ch.id();
    let mut h = Held::default();
    while let Some(msg) = ch.wait().await {
        let done = match msg {
            ChannelMsg::RequestPty {
                want_reply,
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
            } => {
                h.pty = true;
                if want_reply {
                    let _ = server.channel_success(id).await;
                }
                h.prelude.push(ChannelMsg::RequestPty {
                    want_reply: false,
                    term,
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                    terminal_modes,
                });
                false
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } if variable_name == "JITGATE_REASON" => {
                h.reason = Some(variable_value);
                false
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } if variable_name == "JITGATE_FOR" => {
                h.duration = Some(variable_value);
                false
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } if variable_name == "JITGATE_TICKET" => {
                h.ticket = Some(variable_value);
                false
            }
            m @ (ChannelMsg::SetEnv { .. } | ChannelMsg::WindowChange { .. }) => {
                h.prelude.push(m);
                false
            }
            ChannelMsg::RequestShell { want_reply } => {
                if want_reply {
                    let _ = server.channel_success(id).await;
                }
                h.shell = true;
                h.prelude.push(ChannelMsg::RequestShell { want_reply: false });
                true
            }
            ChannelMsg::Exec { want_reply, command } => {
                if want_reply {
                    let _ = server.channel_success(id).await;
                }
                h.prelude.push(ChannelMsg::Exec {
                    want_reply: false,
                    command,
                });
                true
            }
            ChannelMsg::RequestSubsystem { want_reply, name } => {
                if want_reply {
                    let _ = server.channel_success(id).await;
                }
                h.prelude.push(ChannelMsg::RequestSubsystem {
                    want_reply: false,
                    name,
                });
                true
            }
            ChannelMsg::Close => return None,
            m @ ChannelMsg::Eof => {
                h.prelude.push(m);
                false
            }
            _ => false,
        };
        if done {
            return Some(h);
        }
    }
    None
}

impl<G: Gatekeeper> Asking<G> {
    pub(super) async fn run(self, mut ch: Channel<Msg>) {
        let Ok(Some(mut held)) = tokio::time::timeout(Duration::from_secs(10), hold(&mut ch, &self.server)).await
        else {
            let _ = ch.close().await;
            return;
        };
        let Some(ask) = self.ask(&mut ch, &mut held).await else {
            return;
        };
        if !self.wait(&mut ch, &mut held, &ask).await {
            return;
        }
        self.relay(ch, held).await;
    }

    /// What is asked: from the variables, the target name or the prompts. `None`: the channel
    /// was ended (told why).
    async fn ask(&self, ch: &mut Channel<Msg>, held: &mut Held) -> Option<Ask> {
        let pty = held.pty;
        let resource = &self.no_grant.resource;
        let login = &self.no_grant.login;
        let mut duration = match held.duration.as_deref().map(str::parse::<HumanDuration>) {
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                fail(ch, pty, &format!("JITGATE_FOR: {e} (e.g. JITGATE_FOR=1h)")).await;
                return None;
            }
            None => self.no_grant.duration,
        };
        let mut reason = held
            .reason
            .clone()
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty());
        if reason.is_none() {
            if !(held.pty && held.shell) {
                fail(ch, pty, &format!(
                    "{}; or ask from here: ssh -o SetEnv=\"JITGATE_REASON=INC-123 why\" (and -o SetEnv=JITGATE_FOR=1h) ...",
                    self.no_grant.message
                ))
                .await;
                return None;
            }
            let cat = self.c.fe.gk.catalog();
            let default = cat
                .resources
                .get(resource)
                .and_then(|r| engine::policy_for(&cat, &self.principal, r).ok())
                .map(|p| p.default_duration);
            say(
                ch,
                pty,
                &format!(
                    "jitgate: {} holds no access grant as {login} on {resource}. Ask for one here (Ctrl-C to give up).",
                    self.principal.name
                ),
            )
            .await;
            let r = tokio::time::timeout(PROMPT_LIMIT, async {
                let mut r = String::new();
                while r.is_empty() {
                    r = read_line(ch, held, "Reason (ticket, incident, why): ").await?;
                }
                Some(r)
            })
            .await
            .ok()
            .flatten();
            let Some(r) = r else {
                fail(ch, true, "nothing requested").await;
                return None;
            };
            reason = Some(r);
            if duration.is_none() {
                let shown = default.map(|d| format!(" [{d}]")).unwrap_or_default();
                for _ in 0..3 {
                    let typed =
                        tokio::time::timeout(PROMPT_LIMIT, read_line(ch, held, &format!("For how long?{shown}: ")))
                            .await
                            .ok()
                            .flatten();
                    let Some(typed) = typed else {
                        fail(ch, true, "nothing requested").await;
                        return None;
                    };
                    if typed.is_empty() {
                        break;
                    }
                    match typed.parse::<HumanDuration>() {
                        Ok(d) => {
                            duration = Some(d);
                            break;
                        }
                        Err(e) => say(ch, true, &format!("{e} (e.g. 30m, 2h)")).await,
                    }
                }
            }
        }
        Some(Ask {
            reason,
            duration,
            access: Some(login.clone()),
            ticket: held.ticket.clone().filter(|t| !t.trim().is_empty()),
        })
    }

    /// Make the request and follow it. `true`: approved.
    async fn wait(&self, ch: &mut Channel<Msg>, held: &mut Held, ask: &Ask) -> bool {
        let pty = held.pty;
        let started = Waiter::start(
            self.c.fe.gk.clone(),
            self.principal.clone(),
            ask,
            &self.no_grant.resource,
            self.limit,
        )
        .await;
        let mut w = match started {
            Ok(Ok(w)) => w,
            Ok(Err(lines)) => {
                for l in lines {
                    say(ch, pty, &l).await;
                }
                return true;
            }
            Err(e) => {
                fail(
                    ch,
                    pty,
                    &format!(
                        "could not request access to {}: {}",
                        self.no_grant.resource,
                        e.message()
                    ),
                )
                .await;
                return false;
            }
        };
        enum Woke {
            Step(Step),
            Msg(Option<ChannelMsg>),
        }
        loop {
            let woke = tokio::select! {
                s = w.next() => Woke::Step(s),
                m = ch.wait() => Woke::Msg(m),
            };
            match woke {
                Woke::Step(Step::Say(line)) => say(ch, pty, &line).await,
                Woke::Step(Step::Proceed) => return true,
                Woke::Step(Step::Refuse(m)) => {
                    fail(ch, pty, &m).await;
                    return false;
                }
                Woke::Msg(Some(ChannelMsg::Data { data })) if pty && data.contains(&0x03) => {
                    let id = w.id();
                    w.withdraw().await;
                    fail(ch, pty, &format!("request {id} cancelled")).await;
                    return false;
                }
                Woke::Msg(Some(m @ (ChannelMsg::WindowChange { .. } | ChannelMsg::Eof))) => held.prelude.push(m),
                Woke::Msg(None | Some(ChannelMsg::Close)) => {
                    w.withdraw().await;
                    return false;
                }
                // A command's input (no terminal): held for it, bounded.
                Woke::Msg(Some(ChannelMsg::Data { data })) if !pty => {
                    held.input += data.len();
                    if held.input > MAX_HELD_INPUT {
                        w.withdraw().await;
                        fail(
                            ch,
                            pty,
                            "more than 1 MiB of input arrived before access was granted; request first, then send it",
                        )
                        .await;
                        return false;
                    }
                    held.prelude.push(ChannelMsg::Data { data });
                }
                // Typed ahead on a terminal while waiting: not sent to the target (the user
                // did not see what it would run on).
                Woke::Msg(Some(_)) => {}
            }
        }
    }

    /// Approved: open the session (the grant is live now), then relay the channel with the
    /// held requests first.
    async fn relay(self, ch: Channel<Msg>, held: Held) {
        let pty = held.pty;
        let live = match self.c.live() {
            Some(l) => l,
            None => match self.c.connect(&self.principal, &self.user).await {
                Ok(l) => {
                    self.c.install(&l, self.server.clone());
                    l
                }
                Err(NoGo::Refused(m)) => {
                    fail(&ch, pty, &m).await;
                    return;
                }
                Err(NoGo::NoGrant(n)) => {
                    fail(&ch, pty, &n.message).await;
                    return;
                }
            },
        };
        let Some(slot) = live.slot(self.c.fe.cfg.max_channels) else {
            fail(&ch, pty, "too many channels on this connection").await;
            return;
        };
        match live.upstream.channel_open_session().await {
            Ok(up) => {
                let ctx = self.c.ctx(&live, slot, self.server.clone());
                relay::session_channel(ctx, ch, up, held.prelude).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "upstream refused a session channel");
                fail(
                    &ch,
                    pty,
                    &format!("{} refused the session channel", self.no_grant.resource),
                )
                .await;
            }
        }
    }
}
