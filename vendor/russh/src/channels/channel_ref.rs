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
}

/// (jitgate patch) Above this many held messages (a peer flooding requests or one-byte packets)
/// the session waits for the application again, as upstream russh always did.
const MAX_BACKLOG: usize = 4096;

/// (jitgate patch) What became of a message handed to a channel.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// Queued for the application, now or later.
    Queued,
    /// The application dropped its reader: nobody will read it.
    Dropped,
}

impl ChannelRef {
    pub fn new(sender: Sender<ChannelMsg>) -> Self {
        Self {
            sender,
            window_size: WindowSizeRef::new(0),
            backlog: VecDeque::new(),
        }
    }

    /// (jitgate patch) Hand a message to the application without waiting while the backlog
    /// is small.
    pub(crate) async fn deliver(&mut self, msg: ChannelMsg) -> Delivered {
        if self.backlog.is_empty() {
            match self.sender.try_send(msg) {
                Ok(()) => return Delivered::Queued,
                Err(TrySendError::Closed(_)) => return Delivered::Dropped,
                Err(TrySendError::Full(m)) => self.backlog.push_back(m),
            }
        } else {
            self.backlog.push_back(msg);
        }
        while self.backlog.len() > MAX_BACKLOG {
            let Some(m) = self.backlog.pop_front() else { break };
            if self.sender.send(m).await.is_err() {
                self.backlog.clear();
                return Delivered::Dropped;
            }
        }
        Delivered::Queued
    }

    /// (jitgate patch) Nothing is held back.
    pub(crate) fn is_drained(&self) -> bool {
        self.backlog.is_empty()
    }

    /// (jitgate patch) Move held messages into the application's queue as far as it has room.
    pub(crate) fn drain(&mut self) {
        while let Some(m) = self.backlog.pop_front() {
            match self.sender.try_send(m) {
                Ok(()) => {}
                Err(TrySendError::Full(m)) => {
                    self.backlog.push_front(m);
                    return;
                }
                Err(TrySendError::Closed(_)) => {
                    self.backlog.clear();
                    return;
                }
            }
        }
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
