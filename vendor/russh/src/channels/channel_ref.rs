use std::collections::VecDeque;

use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;

use super::WindowSizeRef;
use crate::ChannelMsg;

/// A handle to the [`super::Channel`]'s to be able to transmit messages
/// to it and update it's `window_size`.
#[derive(Debug)]
pub struct ChannelRef {
    pub(super) sender: Sender<ChannelMsg>,
    pub(super) window_size: WindowSizeRef,
    /// (jitgate patch) Messages for the application that did not fit its queue. The session
    /// loop never waits on a full queue (that would stop it reading the peer's window
    /// adjustments for every other channel and direction: the relay deadlock); it keeps them
    /// here, in order, and moves them on when the reader reports progress. Data held here is
    /// bounded by the window granted to the peer, which grows only as the application reads.
    pub(super) backlog: VecDeque<ChannelMsg>,
    /// (jitgate patch) How many of the held messages are not data.
    pub(super) held_other: usize,
}

/// (jitgate patch) Above this many held messages other than data (a peer flooding requests)
/// the session waits for the application again, as upstream russh always did. Data held is
/// bounded by the window granted to the peer, so it does not count.
const MAX_BACKLOG: usize = 4096;

/// (jitgate patch) What became of a message handed to a channel.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// Queued for the application, now or later.
    Queued,
    /// The application dropped its reader: nobody will read this (or anything held before it);
    /// this many bytes of data were thrown away and may be granted back to the peer.
    Dropped(u32),
}

fn data_len(m: &ChannelMsg) -> u32 {
    match m {
        ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => data.len() as u32,
        _ => 0,
    }
}

fn is_data(m: &ChannelMsg) -> bool {
    matches!(m, ChannelMsg::Data { .. } | ChannelMsg::ExtendedData { .. })
}

impl ChannelRef {
    pub fn new(sender: Sender<ChannelMsg>) -> Self {
        Self {
            sender,
            window_size: WindowSizeRef::new(0),
            backlog: VecDeque::new(),
            held_other: 0,
        }
    }

    /// (jitgate patch) Hand a message to the application without waiting while few non-data
    /// messages are held.
    pub(crate) async fn deliver(&mut self, msg: ChannelMsg) -> Delivered {
        if self.sender.is_closed() {
            return Delivered::Dropped(data_len(&msg).saturating_add(self.discard()));
        }
        if self.backlog.is_empty() {
            match self.sender.try_send(msg) {
                Ok(()) => return Delivered::Queued,
                Err(TrySendError::Closed(m)) => return Delivered::Dropped(data_len(&m)),
                Err(TrySendError::Full(m)) => self.hold(m),
            }
        } else {
            self.hold(msg);
        }
        while self.held_other > MAX_BACKLOG {
            let Some(m) = self.take() else { break };
            if let Err(e) = self.sender.send(m).await {
                return Delivered::Dropped(data_len(&e.0).saturating_add(self.discard()));
            }
        }
        Delivered::Queued
    }

    fn hold(&mut self, m: ChannelMsg) {
        self.held_other += usize::from(!is_data(&m));
        self.backlog.push_back(m);
    }

    fn take(&mut self) -> Option<ChannelMsg> {
        let m = self.backlog.pop_front()?;
        self.held_other -= usize::from(!is_data(&m));
        Some(m)
    }

    /// Throw the backlog away (its reader is gone); the bytes of data in it.
    fn discard(&mut self) -> u32 {
        self.held_other = 0;
        self.backlog.drain(..).map(|m| data_len(&m)).fold(0, u32::saturating_add)
    }

    /// (jitgate patch) Move held messages into the application's queue as far as it has room;
    /// returns the bytes of data thrown away because the reader is gone.
    pub(crate) fn drain(&mut self) -> u32 {
        while let Some(m) = self.take() {
            match self.sender.try_send(m) {
                Ok(()) => {}
                Err(TrySendError::Full(m)) => {
                    self.held_other += usize::from(!is_data(&m));
                    self.backlog.push_front(m);
                    return 0;
                }
                Err(TrySendError::Closed(m)) => return data_len(&m).saturating_add(self.discard()),
            }
        }
        0
    }

    /// (jitgate patch) Nothing is held back.
    pub(crate) fn is_drained(&self) -> bool {
        self.backlog.is_empty()
    }


    pub(crate) fn window_size(&self) -> &WindowSizeRef {
        &self.window_size
    }
}

impl std::ops::Deref for ChannelRef {
    type Target = Sender<ChannelMsg>;

    fn deref(&self) -> &Self::Target {
        &self.sender
    }
}
