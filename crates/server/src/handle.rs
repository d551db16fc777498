//! [`ServerHandle`]: reaching a running server from any thread.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::Result;
use crate::inbox::Command;
use crate::pool::Shared;
use crate::session::{CloseReason, SessionId};
use crate::stats::Stats;

/// A cloneable handle to a running server, usable from any thread (threads the server did not
/// create included).
#[derive(Clone)]
pub struct ServerHandle {
    pub(crate) shared: Arc<Shared>,
}

impl ServerHandle {
    /// Queues a copy of `data` for `session` (the seed's `SendMsg(client_index, size, data)`).
    ///
    /// A closed or stale session is refused with [`crate::Error::SessionClosed`]. The bytes are
    /// handed to the session's worker, which checks the id again before queueing them, so they
    /// never reach a later client of the same slot. What happens there (the session closing
    /// meanwhile, its queue passing the limit) is not reported back: the worker drops the bytes
    /// or disconnects the session, as [`crate::Context::send`] would.
    pub fn send(&self, session: SessionId, data: &[u8]) -> Result<()> {
        self.send_bytes(session, Bytes::copy_from_slice(data))
    }

    /// Queues shared bytes for `session`, without copying them.
    pub fn send_bytes(&self, session: SessionId, data: Bytes) -> Result<()> {
        self.shared
            .inbox_of(session)?
            .push(Command::Send(session, data));
        Ok(())
    }

    /// Sends the same bytes to every open session (one command per worker, no copy per session).
    pub fn broadcast(&self, data: Bytes) {
        for inbox in &self.shared.inboxes {
            inbox.push(Command::Broadcast(data.clone()));
        }
    }

    /// Closes `session` after what is queued for it has been sent.
    pub fn close(&self, session: SessionId) -> Result<()> {
        self.close_with(session, CloseReason::Closed)
    }

    /// Closes `session` with `reason`, after what is queued for it has been sent.
    pub fn close_with(&self, session: SessionId, reason: CloseReason) -> Result<()> {
        self.shared
            .inbox_of(session)?
            .push(Command::Close(session, reason));
        Ok(())
    }

    /// Whether `session` is open.
    pub fn is_open(&self, session: SessionId) -> bool {
        self.shared.slots.is_open(session)
    }

    /// Every open session, at this moment.
    pub fn sessions(&self) -> Vec<SessionId> {
        self.shared.slots.open_sessions()
    }

    /// The server's counters.
    pub fn stats(&self) -> Stats {
        Stats::sum(&self.shared.stats)
    }

    /// Each worker's counters, by worker number: what [`ServerHandle::stats`] sums.
    pub fn worker_stats(&self) -> Vec<Stats> {
        self.shared.stats.iter().map(Stats::of).collect()
    }

    /// Starts a graceful shutdown: stop accepting, flush every session's queue (up to
    /// [`crate::Config::linger`]), close every session (`on_close` is called for each), and end
    /// the worker threads. Returns at once; [`crate::Server::join`] waits for the end.
    pub fn shutdown(&self) {
        self.shared.begin_shutdown();
    }

    /// Whether shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.is_shutting_down()
    }

    /// Waits up to `timeout` for shutdown to be asked for; returns whether it was.
    pub fn wait_for_shutdown(&self, timeout: Duration) -> bool {
        self.shared.wait_for_shutdown(timeout)
    }
}
