//! The application's side: [`Handler`] callbacks and the [`Context`] they act through.

use std::net::SocketAddr;

use bytes::Bytes;
use iocp_driver::Io;

use crate::error::Result;
use crate::server::ServerHandle;
use crate::session::{CloseReason, SessionId};
use crate::stats::Stats;
use crate::worker::Local;

/// What the server calls when something happens to a session (the seed's `ProcessPacket`).
///
/// All callbacks of one session run on the worker thread that owns it, one at a time and in
/// order: `on_connect`, then `on_receive` for each arrival of bytes, then `on_close` exactly once.
/// Callbacks of different sessions run on several workers at once, so the handler is `Sync`.
///
/// Bytes arrive as the network delivers them: a message may be split across calls, and one call
/// may hold several messages (frame them with `iocp-wire`).
pub trait Handler: Send + Sync + 'static {
    /// A client connected and was given `session`.
    fn on_connect(&self, ctx: &mut Context<'_>, session: SessionId, peer: SocketAddr) {
        let _ = (ctx, session, peer);
    }

    /// Bytes arrived on `session`. They are lent for the call; copy what you keep.
    fn on_receive(&self, ctx: &mut Context<'_>, session: SessionId, data: &[u8]);

    /// The peer finished sending (it half-closed, or closed): no more bytes will arrive on
    /// `session`, but it can still be sent to.
    ///
    /// By default the session is closed once what is queued for it has been sent
    /// ([`CloseReason::PeerClosed`]). A handler whose replies are produced later (on a logic
    /// thread, say) can keep the session open and close it itself when its last reply is queued.
    fn on_read_closed(&self, ctx: &mut Context<'_>, session: SessionId) {
        let _ = ctx.close_with(session, CloseReason::PeerClosed);
    }

    /// `session` ended; its id is stale from now on.
    fn on_close(&self, ctx: &mut Context<'_>, session: SessionId, reason: CloseReason) {
        let _ = (ctx, session, reason);
    }
}

/// What a callback can do: send, close, read statistics. Sessions of the calling worker are
/// served directly; others through their worker's queue.
pub struct Context<'a> {
    pub(crate) io: &'a mut Io,
    pub(crate) local: &'a mut Local,
    pub(crate) handle: &'a ServerHandle,
}

impl Context<'_> {
    /// Queues a copy of `data` for `session` (the seed's `SendMsg`). Small messages are copied
    /// into shared blocks, not allocated one by one.
    ///
    /// Fails with [`crate::Error::SessionClosed`] for a closed session, and with
    /// [`crate::Error::SendQueueFull`] when this send took the session past its queue limit (it is
    /// then disconnected).
    pub fn send(&mut self, session: SessionId, data: &[u8]) -> Result<()> {
        if self.local.owns(session) {
            self.local
                .send(self.io, session, crate::worker::Payload::Copy(data))
        } else {
            self.handle.send(session, data)
        }
    }

    /// Queues shared bytes for `session` without copying them: encode a broadcast once and send
    /// the same `Bytes` to every member.
    pub fn send_bytes(&mut self, session: SessionId, data: Bytes) -> Result<()> {
        if self.local.owns(session) {
            self.local
                .send(self.io, session, crate::worker::Payload::Shared(data))
        } else {
            self.handle.send_bytes(session, data)
        }
    }

    /// Closes `session` after what is queued for it has been sent ([`CloseReason::Closed`]).
    pub fn close(&mut self, session: SessionId) -> Result<()> {
        self.close_with(session, CloseReason::Closed)
    }

    /// Closes `session` with `reason` (e.g. [`CloseReason::Protocol`]), after what is queued for
    /// it has been sent.
    pub fn close_with(&mut self, session: SessionId, reason: CloseReason) -> Result<()> {
        if self.local.owns(session) {
            self.local.close(self.io, session, reason)
        } else {
            self.handle.close_with(session, reason)
        }
    }

    /// Bytes queued for `session` and not yet sent, if it is open and served by this worker.
    pub fn queued(&self, session: SessionId) -> Option<usize> {
        if self.local.owns(session) {
            self.io.queued(self.local.conn(session))
        } else {
            None
        }
    }

    /// The server's counters.
    pub fn stats(&self) -> Stats {
        self.handle.stats()
    }

    /// A handle to the server, to keep or give to other threads.
    pub fn handle(&self) -> &ServerHandle {
        self.handle
    }

    /// Index of the worker thread running this callback.
    pub fn worker(&self) -> usize {
        self.local.worker()
    }
}
