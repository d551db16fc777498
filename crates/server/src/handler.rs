//! The application's side: [`Handler`] callbacks and the [`Context`] they act through.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use iocp_driver::Io;

use crate::error::Result;
use crate::handle::ServerHandle;
use crate::local::{Local, Payload};
use crate::session::{CloseReason, SessionId};
use crate::stats::Stats;
use crate::timer::TimerId;

/// What the server calls when something happens to a session (the seed's `ProcessPacket`).
///
/// All callbacks of one session run on the worker thread that owns it, one at a time and in
/// order: `on_connect`, then `on_receive` for each arrival of bytes (and `on_timer` for each of
/// its timers), then `on_close` exactly once. Callbacks of different sessions run on several
/// workers at once, so the handler is `Sync`.
///
/// Bytes arrive as the network delivers them: a message may be split across calls, and one call
/// may hold several messages (frame them with `iocp-wire`).
///
/// Each session has a value of [`Handler::Session`], the handler's own state of it: made with
/// `Default` when the session opens, reached with [`Context::state`] from every callback of the
/// worker (`&mut`, no lock: only that worker touches it), dropped after `on_close`.
pub trait Handler: Send + Sync + 'static {
    /// The handler's state of one session (`()` if it keeps none).
    type Session: Default + Send + 'static;

    /// A client connected and was given `session`.
    fn on_connect(
        &self,
        ctx: &mut Context<'_, Self::Session>,
        session: SessionId,
        peer: SocketAddr,
    ) {
        let _ = (ctx, session, peer);
    }

    /// Bytes arrived on `session`. They are lent for the call; copy what you keep.
    fn on_receive(&self, ctx: &mut Context<'_, Self::Session>, session: SessionId, data: &[u8]);

    /// The peer finished sending (it half-closed, or closed): no more bytes will arrive on
    /// `session`, but it can still be sent to.
    ///
    /// By default the session is closed once what is queued for it has been sent
    /// ([`CloseReason::PeerClosed`]). A handler whose replies are produced later (on a logic
    /// thread, say) can keep the session open and close it itself when its last reply is queued.
    fn on_read_closed(&self, ctx: &mut Context<'_, Self::Session>, session: SessionId) {
        let _ = ctx.close_with(session, CloseReason::PeerClosed);
    }

    /// A timer set with [`Context::set_timer`] for `session` fired, with the token it was set
    /// with. It never fires once the session is closing or closed.
    fn on_timer(&self, ctx: &mut Context<'_, Self::Session>, session: SessionId, token: u64) {
        let _ = (ctx, session, token);
    }

    /// The worker's tick, every [`crate::Config::tick`] (when set), on every worker: timed work
    /// that is not any one session's.
    fn on_tick(&self, ctx: &mut Context<'_, Self::Session>) {
        let _ = ctx;
    }

    /// `session` ended; its id is stale from now on. Its state is still reachable here, for the
    /// last time.
    fn on_close(
        &self,
        ctx: &mut Context<'_, Self::Session>,
        session: SessionId,
        reason: CloseReason,
    ) {
        let _ = (ctx, session, reason);
    }
}

/// Where a [`Context`] finds the sessions' states: the worker's table, or a part of each
/// state ([`Context::with_state`]).
pub(crate) trait States<S> {
    /// The state in local slot `index` (the caller checked that a session is there).
    fn at(&mut self, index: usize) -> &mut S;
}

impl<S> States<S> for Vec<S> {
    fn at(&mut self, index: usize) -> &mut S {
        &mut self[index]
    }
}

/// A part of each state of another table.
struct Part<'a, S, T> {
    inner: &'a mut dyn States<S>,
    part: fn(&mut S) -> &mut T,
}

impl<S, T> States<T> for Part<'_, S, T> {
    fn at(&mut self, index: usize) -> &mut T {
        (self.part)(self.inner.at(index))
    }
}

/// What a callback can do: send, close, set timers, reach session states, read statistics.
/// Sessions of the calling worker are served directly; others through their worker's queue.
///
/// `S` is the handler's [`Handler::Session`] type.
pub struct Context<'a, S = ()> {
    pub(crate) io: &'a mut Io,
    pub(crate) local: &'a mut Local,
    pub(crate) states: &'a mut dyn States<S>,
    pub(crate) handle: &'a ServerHandle,
}

impl<S> Context<'_, S> {
    /// Queues a copy of `data` for `session` (the seed's `SendMsg`). Small messages are copied
    /// into shared blocks, not allocated one by one.
    ///
    /// For a session of this worker: fails with [`crate::Error::SessionClosed`] for a closed
    /// session, and with [`crate::Error::SendQueueFull`] when this send took the session past its
    /// queue limit (it is then disconnected). For a session of another worker the bytes go to
    /// that worker as with [`ServerHandle::send`]: only a session already closed is refused here;
    /// what happens there (the queue limit) is not reported back.
    pub fn send(&mut self, session: SessionId, data: &[u8]) -> Result<()> {
        if self.local.owns(session) {
            self.local.send(self.io, session, Payload::Copy(data))
        } else {
            self.handle.send(session, data)
        }
    }

    /// Queues shared bytes for `session` without copying them: encode a broadcast once and send
    /// the same `Bytes` to every member. Errors as for [`Context::send`].
    pub fn send_bytes(&mut self, session: SessionId, data: Bytes) -> Result<()> {
        if self.local.owns(session) {
            self.local.send(self.io, session, Payload::Shared(data))
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

    /// The state of `session` ([`Handler::Session`]), if it is a session of this worker, open
    /// or in its `on_close`. `None` for a stale id or a session of another worker.
    pub fn state(&mut self, session: SessionId) -> Option<&mut S> {
        let index = self.local.live(session)?;
        Some(self.states.at(index))
    }

    /// Runs `f` with a context whose states are a part of these ones (`part` picks it out of
    /// each state): a framework that keeps its own state per session hands its users a context
    /// with theirs.
    pub fn with_state<T, R>(
        &mut self,
        part: fn(&mut S) -> &mut T,
        f: impl FnOnce(&mut Context<'_, T>) -> R,
    ) -> R {
        let mut states = Part {
            inner: &mut *self.states,
            part,
        };
        let mut ctx = Context {
            io: &mut *self.io,
            local: &mut *self.local,
            states: &mut states,
            handle: self.handle,
        };
        f(&mut ctx)
    }

    /// Calls [`Handler::on_timer`] for `session` with `token` once `after` has passed (the
    /// worker's clock; a timer is never early, and late by at most the worker's current work).
    ///
    /// Timers live on the worker that owns the session: a session of another worker is refused
    /// ([`crate::Error::NotOwned`]), as is a session that is closed or closing, or a stale id
    /// ([`crate::Error::SessionClosed`]). A session's timers never fire once it is closing.
    pub fn set_timer(
        &mut self,
        session: SessionId,
        after: Duration,
        token: u64,
    ) -> Result<TimerId> {
        self.local.set_timer(self.io, session, after, token)
    }

    /// Disarms a timer; returns whether it was still armed (it will then never fire).
    pub fn cancel_timer(&mut self, timer: TimerId) -> bool {
        self.local.cancel_timer(timer)
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
        self.local.worker
    }

    /// Every open session of this worker.
    pub fn worker_sessions(&self) -> Vec<SessionId> {
        self.local.open_sessions(self.io)
    }

    /// Timers armed on this worker now (the application's and the server's own: idle checks,
    /// linger, ticks).
    pub fn timers_armed(&self) -> usize {
        self.local.timers_armed()
    }
}
